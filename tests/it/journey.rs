//! The second seed's whole journey on a real server, under an application
//! that never stops signing users up: `users(id bigint primary key, email)`
//! with no uuid column, and `sessions.user_id`, `api_access_tokens.user_id`,
//! `partner_applications.created_by_user_id` (nullable) with foreign keys to
//! `users (id)`; then `prepare` → `rewrite` → `cutover --way-back` →
//! `finish` → `promote --rename`. The application reads the column types
//! before each write and writes integers or uuids accordingly, as a deployed
//! application switching at cutover would; a write that a swap in between
//! turns into a type error is retried, never counted. At the end `users.id`
//! is a uuid primary key, every reference a validated uuid key to it,
//! nothing of pg-rekey is left, and every committed write is there, each
//! pointing at its own user. `status`'s journey view is checked at each
//! stage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_rekey::cutover::{self, CutoverConfig, Direction};
use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use serde_json::Value;
use tokio_postgres::Client;

use crate::rewrite::wait_phase;
use crate::support::{connect, wait_for, TestDb};

const USERS: i64 = 5_000;

const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE sessions (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id), token text NOT NULL);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE TABLE api_access_tokens (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id), token text NOT NULL);
CREATE TABLE partner_applications (id bigserial PRIMARY KEY, created_by_user_id bigint REFERENCES users (id), name text NOT NULL);
INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 5000) g;
INSERT INTO sessions (user_id, token) SELECT 1 + g % 5000, 's' || g FROM generate_series(1, 6000) g;
INSERT INTO api_access_tokens (user_id, token) SELECT 1 + (g * 7) % 5000, 't' || g FROM generate_series(1, 3000) g;
INSERT INTO partner_applications (created_by_user_id, name)
    SELECT CASE WHEN g % 3 = 0 THEN NULL ELSE 1 + (g * 11) % 5000 END, 'p' || g FROM generate_series(1, 1500) g;
ANALYZE;";

const TABLES: &[&str] = &["api_access_tokens", "partner_applications", "sessions"];

fn names() -> Vec<QualifiedName> {
    TABLES
        .iter()
        .map(|t| QualifiedName::new("public", *t))
        .collect()
}

fn table_args() -> String {
    TABLES
        .iter()
        .map(|t| format!("--table public.{t}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(dsn: &str, args: &[&str]) -> (i32, String, String) {
    crate::support::run_binary(dsn, args, None).await
}

/// `status --json --journeys` (plus `extra`): the tables and the one journey.
async fn journey(dsn: &str, extra: &[&str]) -> (Vec<Value>, Value) {
    let mut args = vec!["status", "--json", "--journeys"];
    args.extend_from_slice(extra);
    let (code, out, err) = run(dsn, &args).await;
    assert_eq!(code, 0, "status: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let journeys = v["journeys"].as_array().expect("journeys").clone();
    assert_eq!(journeys.len(), 1, "one parent: {out}");
    (
        v["tables"].as_array().expect("tables").clone(),
        journeys[0].clone(),
    )
}

/// Each referencing table's stage in the journey, in name order.
fn stages(j: &Value) -> Vec<String> {
    j["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["table"].as_str().unwrap(),
                t["stage"].as_str().unwrap()
            )
        })
        .collect()
}

fn all(stage: &str) -> Vec<String> {
    TABLES
        .iter()
        .map(|t| format!("public.{t} {stage}"))
        .collect()
}

/// The application: one user and one row in each referencing table per
/// transaction (one statement), references in whatever type the columns
/// have now.
struct App {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    uuid_commits: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const TYPES_SQL: &str = "
SELECT (SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'public.sessions'::regclass AND attname = 'user_id'),
       (SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'public.api_access_tokens'::regclass AND attname = 'user_id'),
       (SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'public.partner_applications'::regclass AND attname = 'created_by_user_id'),
       (SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'public.users'::regclass AND attname = 'id')";

impl App {
    async fn start(db: &TestDb) -> App {
        let c = connect(&db.spec).await;
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let uuid_commits = Arc::new(AtomicU64::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let (s, n, u, r) = (
            stop.clone(),
            commits.clone(),
            uuid_commits.clone(),
            retries.clone(),
        );
        let task = tokio::spawn(async move {
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let types: Vec<String> = match c.query_one(TYPES_SQL, &[]).await {
                    Ok(row) => (0..4).map(|k| row.get(k)).collect(),
                    Err(_) => continue,
                };
                // The users' uuid: `uuid_id`, or `id` once promote renamed it.
                let uuid_of_user = if types[3] == "uuid" { "id" } else { "uuid_id" };
                let value = |t: &str| {
                    if t == "uuid" {
                        format!("u.{uuid_of_user}")
                    } else {
                        "u.id".to_string()
                    }
                };
                let sql = format!(
                    "WITH u AS (INSERT INTO users (email) VALUES ('w{i}@example.com') RETURNING *),
                          s AS (INSERT INTO sessions (user_id, token) SELECT {}, 'w{i}' FROM u),
                          t AS (INSERT INTO api_access_tokens (user_id, token) SELECT {}, 'w{i}' FROM u)
                     INSERT INTO partner_applications (created_by_user_id, name)
                     SELECT {}, 'w{i}' FROM u",
                    value(&types[0]),
                    value(&types[1]),
                    if i % 3 == 0 {
                        "NULL".to_string()
                    } else {
                        value(&types[2])
                    },
                );
                match c.batch_execute(&sql).await {
                    Ok(()) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        if types[0] == "uuid" {
                            u.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A swap (or the rename) between the read and the write:
                    // a type error or a missing column; nothing committed.
                    Err(_) => {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        App {
            stop,
            commits,
            uuid_commits,
            retries,
            task,
        }
    }

    /// Let it commit at least `n` more transactions.
    async fn more(&self, n: u64) {
        let start = self.commits.load(Ordering::Relaxed);
        wait_for(
            &format!("{n} more sign-ups"),
            Duration::from_secs(120),
            || async { (self.commits.load(Ordering::Relaxed) >= start + n).then_some(()) },
        )
        .await
    }

    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.commits.load(Ordering::Relaxed),
            self.uuid_commits.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}

async fn one(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_rekey::error::chain(&e)))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_whole_journey_under_sign_ups() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let app = App::start(&db).await;
    app.more(20).await;
    let started = Instant::now();
    let mut figures = Vec::new();

    // Before anything: the parent named on the command line.
    let (tables, j) = journey(&dsn, &["--parent", "users", "--uuid-column", "uuid_id"]).await;
    assert!(tables.is_empty());
    assert_eq!(j["stage"], "prepare", "{j}");
    assert_eq!(j["prepared"], false);
    assert_eq!(j["prepare_left"][0], "add_column", "{j}");
    assert_eq!(
        j["next_command"],
        "pg-rekey prepare --parent public.users --uuid-column uuid_id"
    );
    assert_eq!(stages(&j), all("not_started"));
    assert_eq!(j["integer_key"], "primary_key");

    // 1. prepare.
    let t = Instant::now();
    let (code, out, err) = run(
        &dsn,
        &[
            "prepare",
            "--parent",
            "users",
            "--uuid-column",
            "uuid_id",
            "--batch-rows",
            "1000",
        ],
    )
    .await;
    assert_eq!(code, 0, "prepare: {out}{err}");
    figures.push(format!("prepare {:?}", t.elapsed()));
    app.more(20).await;
    // The parent is found from pgrekey.prepare now.
    let (_, j) = journey(&dsn, &[]).await;
    assert_eq!(j["stage"], "rewrite", "{j}");
    assert_eq!(j["prepared"], true);
    assert_eq!(
        j["next_command"].as_str().unwrap(),
        format!(
            "pg-rekey rewrite --parent public.users --uuid-column uuid_id {}",
            table_args()
        )
    );
    assert_eq!(stages(&j), all("not_started"));

    // 2. rewrite (the library task, as the process would run it).
    let t = Instant::now();
    let (_stop, job) = {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let cfg = RewriteConfig::new(
            db.spec.clone(),
            QualifiedName::new("public", "users"),
            "uuid_id",
            names(),
        );
        let task = tokio::spawn(async move {
            rewrite::run(&cfg, rx, pg_rekey::progress::JobProgress::new()).await
        });
        (tx, task)
    };
    wait_phase(&c, TABLES, "streaming").await;
    figures.push(format!("rewrite to streaming {:?}", t.elapsed()));
    app.more(50).await;
    let (tables, j) = journey(&dsn, &[]).await;
    assert_eq!(tables.len(), 3);
    assert_eq!(j["stage"], "cutover", "{j}");
    assert_eq!(stages(&j), all("streaming"));
    assert_eq!(
        j["next_command"].as_str().unwrap(),
        format!("pg-rekey cutover {}", table_args())
    );
    // The text view says the same.
    let (_, text, _) = run(&dsn, &["status"]).await;
    assert!(
        text.contains("journey of public.users (uuid column uuid_id): ready to cut over")
            && text.contains(&format!("next: pg-rekey cutover {}", table_args())),
        "{text}"
    );

    // 3. cutover, keeping a way back; the application switches to uuids.
    let t = Instant::now();
    let report = cutover::run(&CutoverConfig {
        lock_timeout: Duration::from_millis(300),
        max_hold: Duration::from_secs(3),
        attempts: 20,
        backoff: Duration::from_millis(100),
        max_lag_bytes: 64 * 1024 * 1024,
        skip_verify: true,
        way_back: true,
        direction: Direction::Forward,
        ..CutoverConfig::new(db.spec.clone(), names())
    })
    .await
    .unwrap_or_else(|e| panic!("cutover: {}", pg_rekey::error::chain(&e)));
    assert!(report.swapped, "{report:?}");
    figures.push(format!("cutover {:?}", t.elapsed()));
    let at_swap = app.uuid_commits.load(Ordering::Relaxed);
    app.more(100).await;
    assert!(
        app.uuid_commits.load(Ordering::Relaxed) > at_swap,
        "the application writes uuids after the swap"
    );
    let (_, j) = journey(&dsn, &[]).await;
    assert_eq!(j["stage"], "finish", "{j}");
    assert_eq!(stages(&j), all("reverse_streaming"));
    assert_eq!(
        j["next_command"].as_str().unwrap(),
        format!("pg-rekey finish {}", table_args())
    );

    // 4. finish: compare, stop the way back, drop old tables, slot, rows.
    let t = Instant::now();
    let fin = pg_rekey::way_back::finish(&db.spec, &names(), &Default::default())
        .await
        .unwrap_or_else(|e| panic!("finish: {}", pg_rekey::error::chain(&e)));
    assert_eq!(fin.verified, Some(true), "{fin:?}");
    figures.push(format!("finish {:?}", t.elapsed()));
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the rewrite ends after finish")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Finished);
    app.more(50).await;
    let (tables, j) = journey(&dsn, &[]).await;
    assert!(tables.is_empty(), "no job rows: {tables:?}");
    assert_eq!(j["stage"], "promote", "{j}");
    assert_eq!(stages(&j), all("finished"));
    assert!(
        j["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["key_validated"] == true),
        "{j}"
    );
    assert_eq!(
        j["next_command"],
        "pg-rekey promote --parent public.users --uuid-column uuid_id"
    );

    // 5. promote, the uuid taking the name `id`.
    let t = Instant::now();
    let (code, out, err) = run(
        &dsn,
        &[
            "promote",
            "--parent",
            "users",
            "--uuid-column",
            "uuid_id",
            "--rename",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "promote: {out}{err}");
    figures.push(format!("promote {:?}", t.elapsed()));
    app.more(50).await;
    let (commits, uuid_commits, retries) = app.stop().await;
    figures.push(format!(
        "{commits} sign-ups committed ({uuid_commits} in uuids), {retries} retried, {:?} in all",
        started.elapsed()
    ));
    eprintln!("journey: {}", figures.join("; "));

    let (_, j) = journey(&dsn, &[]).await;
    assert_eq!(j["stage"], "done", "{j}");
    assert_eq!(j["next_command"], Value::Null);
    assert_eq!(j["promoted"], true);
    assert_eq!(j["uuid_column"], "id");
    assert_eq!(j["key_column"], "id");
    assert_eq!(
        (&j["integer_key"], &j["integer_column"]),
        (&Value::from("kept"), &Value::from("legacy_id"))
    );
    assert_eq!(stages(&j), all("finished"));
    let (_, text, _) = run(&dsn, &["status"]).await;
    eprintln!("{text}");
    assert!(
        text.starts_with("no pg-rekey jobs\njourney of public.users (uuid column id): done\n")
            && text.contains("  3. promote   done (primary key id)\n  integer key kept as legacy_id\n  next: nothing to run"),
        "{text}"
    );

    // users.id is a uuid primary key.
    let key: (String, Vec<String>, String) = {
        let r = c
            .query_one(
                "SELECT con.conname::text, array_agg(a.attname::text), min(format_type(a.atttypid, NULL))
                   FROM pg_constraint con
                   JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
                  WHERE con.conrelid = 'users'::regclass AND con.contype = 'p' GROUP BY 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(key, ("users_pkey".into(), vec!["id".into()], "uuid".into()));
    // Every reference: a validated uuid key to users.id; none to the integer.
    let fks: Vec<(String, String, String, String, bool)> = c
        .query(
            "SELECT con.conrelid::regclass::text, a.attname::text, format_type(a.atttypid, NULL),
                    pa.attname::text, con.convalidated
               FROM pg_constraint con
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
               JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = con.confkey[1]
              WHERE con.contype = 'f' AND con.confrelid = 'users'::regclass
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        fks,
        vec![
            (
                "api_access_tokens".into(),
                "user_id".into(),
                "uuid".into(),
                "id".into(),
                true
            ),
            (
                "partner_applications".into(),
                "created_by_user_id".into(),
                "uuid".into(),
                "id".into(),
                true
            ),
            (
                "sessions".into(),
                "user_id".into(),
                "uuid".into(),
                "id".into(),
                true
            ),
        ]
    );
    // Nothing of pg-rekey is left.
    let left = one(
        &c,
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
              + (SELECT count(*) FROM pg_publication)
              + (SELECT count(*) FROM pgrekey.jobs)
              + (SELECT count(*) FROM pgrekey.held_constraints)
              + (SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rekey\\_%')",
    )
    .await;
    assert_eq!(
        left, 0,
        "no slot, publication, job row, held key or rekey table"
    );

    // Every row is there: the seed's and each committed sign-up's.
    let n = commits as i64;
    let counts = (
        one(&c, "SELECT count(*) FROM users").await,
        one(&c, "SELECT count(*) FROM sessions").await,
        one(&c, "SELECT count(*) FROM api_access_tokens").await,
        one(&c, "SELECT count(*) FROM partner_applications").await,
    );
    assert_eq!(counts, (USERS + n, 6000 + n, 3000 + n, 1500 + n));
    // Each sign-up's rows point at its own user, whichever type they were
    // written in (a NULL stays NULL).
    let own = (
        one(&c, "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token LIKE 'w%' AND u.email = s.token || '@example.com'").await,
        one(&c, "SELECT count(*) FROM api_access_tokens s JOIN users u ON u.id = s.user_id WHERE s.token LIKE 'w%' AND u.email = s.token || '@example.com'").await,
        one(&c, "SELECT count(*) FROM partner_applications p JOIN users u ON u.id = p.created_by_user_id WHERE p.name LIKE 'w%' AND u.email = p.name || '@example.com'").await,
        one(&c, "SELECT count(*) FROM partner_applications WHERE name LIKE 'w%' AND created_by_user_id IS NULL").await,
    );
    let nulls = one(
        &c,
        "SELECT count(*) FROM users WHERE email LIKE 'w%' AND substr(split_part(email, '@', 1), 2)::int % 3 = 0",
    )
    .await;
    assert_eq!(own, (n, n, n - nulls, nulls));
    // The seed's rows still point at the users they did, through the kept integer.
    let seed = (
        one(&c, "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token LIKE 's%' AND u.legacy_id = 1 + substr(s.token, 2)::int % 5000").await,
        one(&c, "SELECT count(*) FROM api_access_tokens s JOIN users u ON u.id = s.user_id WHERE s.token LIKE 't%' AND u.legacy_id = 1 + (substr(s.token, 2)::int * 7) % 5000").await,
        one(&c, "SELECT count(*) FROM partner_applications p JOIN users u ON u.id = p.created_by_user_id WHERE p.name LIKE 'p%' AND u.legacy_id = 1 + (substr(p.name, 2)::int * 11) % 5000").await,
    );
    assert_eq!(seed, (6000, 3000, 1000));
    assert!(
        commits > 300 && uuid_commits > 150,
        "{commits} {uuid_commits}"
    );

    // The drop the done view suggests works as written.
    let (code, out, err) = run(
        &dsn,
        &[
            "promote",
            "--parent",
            "public.users",
            "--uuid-column",
            "id",
            "--integer-column",
            "legacy_id",
            "--drop-integer-key",
        ],
    )
    .await;
    assert_eq!(code, 0, "drop: {out}{err}");
    let (_, j) = journey(&dsn, &[]).await;
    assert_eq!(
        (&j["stage"], &j["integer_key"]),
        (&Value::from("done"), &Value::from("dropped"))
    );
}
