//! The first seed's schema (`shared/seeds/uuid-migration-guide-alembic.md`):
//! nine tables that reference `users.id`, two of them keyed by `uuid`, with
//! the unique constraints the seed feared duplicating, foreign keys between
//! the referencing tables, a view that joins on the integer key and a
//! row-level-security policy that compares with an integer session setting.
//! Run as an operator would, through the binary: `plan` names the view and
//! the policy, `rewrite` with no `--table` takes all nine while a workload
//! writes (new users referenced in the same transaction, child rows before
//! their parent under a deferred key), `cutover --rewrite-dependents` swaps
//! them, and the old and new tables are compared row for row, translated.

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::{compare_translated, slots_in_database, wait_for, TestDb};

/// The nine tables of the seed and their reference column.
const SEED_TABLES: [(&str, &str); 9] = [
    ("chat_messages", "sender_id"),
    ("message_read_states", "user_id"),
    ("chat_read_monitors", "user_id"),
    ("user_sessions", "user_id"),
    ("service_requests", "requester_id"),
    ("user_roles", "user_id"),
    ("user_request_assigns", "user_id"),
    ("region_user_assigns", "user_id"),
    ("service_request_notes", "created_by"),
];

async fn seed_schema(c: &Client) {
    c.batch_execute(
        "CREATE TABLE users (id serial PRIMARY KEY, uuid uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
             email text NOT NULL UNIQUE);
         CREATE TABLE regions (id serial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE service_requests (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             requester_id integer NOT NULL REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED,
             title text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE user_sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
             refresh_token text NOT NULL UNIQUE, expires_at timestamptz NOT NULL);
         CREATE TABLE chat_messages (id serial PRIMARY KEY,
             request_id uuid NOT NULL REFERENCES service_requests(id) ON DELETE CASCADE,
             sender_id integer REFERENCES users(id) ON DELETE SET NULL, content text NOT NULL);
         CREATE TABLE message_read_states (id serial PRIMARY KEY,
             message_id integer NOT NULL REFERENCES chat_messages(id) ON DELETE CASCADE,
             user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
             read_at timestamptz NOT NULL DEFAULT now(),
             CONSTRAINT uq_message_read_state UNIQUE (message_id, user_id));
         CREATE TABLE chat_read_monitors (id serial PRIMARY KEY,
             request_id uuid NOT NULL REFERENCES service_requests(id) ON DELETE CASCADE,
             user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
             last_read timestamptz, CONSTRAINT uq_chat_read_monitor UNIQUE (request_id, user_id));
         CREATE TABLE user_roles (id serial PRIMARY KEY,
             user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE, role text NOT NULL,
             CONSTRAINT uq_user_role UNIQUE (user_id, role));
         CREATE TABLE user_request_assigns (id serial PRIMARY KEY,
             request_id uuid NOT NULL REFERENCES service_requests(id) ON DELETE CASCADE,
             user_id integer NOT NULL REFERENCES users(id), CONSTRAINT uq_user_request UNIQUE (request_id, user_id));
         CREATE TABLE region_user_assigns (id serial PRIMARY KEY,
             region_id integer NOT NULL REFERENCES regions(id),
             user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
             CONSTRAINT uq_region_user UNIQUE (region_id, user_id));
         CREATE TABLE service_request_notes (id serial PRIMARY KEY,
             request_id uuid NOT NULL REFERENCES service_requests(id) ON DELETE CASCADE,
             created_by integer REFERENCES users(id), body text NOT NULL);
         CREATE INDEX ix_chat_messages_sender ON chat_messages (sender_id);
         CREATE INDEX ix_notes_created_by ON service_request_notes (created_by);
         -- The application reads sessions with their user's email, and each
         -- user sees only their own requests (app.user_id is the integer id).
         CREATE VIEW active_sessions AS
             SELECT s.id, s.expires_at, u.email FROM user_sessions s JOIN users u ON u.id = s.user_id;
         ALTER TABLE service_requests ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_requests ON service_requests
             USING (requester_id = current_setting('app.user_id', true)::integer);
         INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 200) g;
         INSERT INTO regions (name) SELECT 'region ' || g FROM generate_series(1, 5) g;
         INSERT INTO service_requests (requester_id, title)
             SELECT 1 + g % 200, 'request ' || g FROM generate_series(1, 600) g;
         INSERT INTO user_sessions (user_id, refresh_token, expires_at)
             SELECT 1 + g % 200, md5(g::text), now() + interval '1 day' FROM generate_series(1, 800) g;
         INSERT INTO chat_messages (request_id, sender_id, content)
             SELECT r.id, CASE WHEN g % 10 = 0 THEN NULL ELSE r.requester_id END, 'hi ' || g
               FROM generate_series(1, 3) g, service_requests r;
         INSERT INTO message_read_states (message_id, user_id)
             SELECT m.id, 1 + (m.id * 7) % 200 FROM chat_messages m;
         INSERT INTO chat_read_monitors (request_id, user_id) SELECT id, requester_id FROM service_requests;
         INSERT INTO user_roles (user_id, role) SELECT id, r FROM users, unnest(ARRAY['agent', 'customer']) r
             WHERE id % 3 <> 0 OR r = 'customer';
         INSERT INTO user_request_assigns (request_id, user_id)
             SELECT id, 1 + (requester_id * 13) % 200 FROM service_requests;
         INSERT INTO region_user_assigns (region_id, user_id) SELECT 1 + id % 5, id FROM users;
         INSERT INTO service_request_notes (request_id, created_by, body)
             SELECT id, requester_id, 'note' FROM service_requests;
         ANALYZE;",
    )
    .await
    .expect("the seed's schema");
}

/// A writer as the seed's application would run one: a new user with a
/// request, its chat, its session and a role in one transaction — the
/// request written before the user (deferred key) — plus updates and deletes
/// of existing rows. Stops at `stop`.
struct Workload {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Workload {
    async fn start(db: &TestDb) -> Workload {
        let c = db.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn({
            let (stop, commits) = (stop.clone(), commits.clone());
            async move {
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sql = format!(
                        "BEGIN;
                         SELECT setval('users_id_seq', nextval('users_id_seq'));
                         INSERT INTO service_requests (id, requester_id, title)
                             VALUES (gen_random_uuid(), currval('users_id_seq')::int, 'new {i}');
                         INSERT INTO users (id, email) VALUES (currval('users_id_seq')::int, 'new{i}@example.com');
                         INSERT INTO chat_messages (request_id, sender_id, content)
                             SELECT id, requester_id, 'first' FROM service_requests WHERE title = 'new {i}';
                         INSERT INTO user_sessions (user_id, refresh_token, expires_at)
                             VALUES (currval('users_id_seq')::int, 'tok{i}', now());
                         INSERT INTO user_roles (user_id, role) VALUES (currval('users_id_seq')::int, 'customer');
                         UPDATE service_request_notes SET created_by = 1 + ({i} * 17) % 200, body = 'edited {i}'
                             WHERE id = 1 + ({i} * 31) % 600;
                         DELETE FROM user_sessions WHERE id = (SELECT id FROM user_sessions ORDER BY refresh_token LIMIT 1);
                         UPDATE region_user_assigns SET region_id = 1 + ({i} % 5) WHERE user_id = 1 + ({i} * 7) % 200
                             AND NOT EXISTS (SELECT 1 FROM region_user_assigns r2
                                 WHERE r2.region_id = 1 + ({i} % 5) AND r2.user_id = 1 + ({i} * 7) % 200);
                         COMMIT;"
                    );
                    match c.batch_execute(&sql).await {
                        Ok(()) => {
                            commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            panic!("workload transaction {i}: {}", pg_rekey::error::chain(&e));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Workload {
            stop,
            commits,
            handle,
        }
    }

    async fn wait_commits(&self, more: u64) {
        let target = self.commits.load(Ordering::Relaxed) + more;
        let commits = self.commits.clone();
        wait_for("workload commits", Duration::from_secs(120), || {
            let commits = commits.clone();
            async move { (commits.load(Ordering::Relaxed) >= target).then_some(()) }
        })
        .await;
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("the workload never failed");
        self.commits.load(Ordering::Relaxed)
    }
}

async fn pg_rekey(db: &TestDb, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .args(args)
        .args(["--dsn", &db.spec.to_dsn()])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run pg-rekey")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rows visible through the view and the policy as the application role,
/// for a few users: (view rows, requests seen per user).
async fn app_reads(c: &Client) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for user in [3, 77, 150] {
        c.batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE seed_app; SET LOCAL app.user_id = '{user}'"
        ))
        .await
        .unwrap();
        let seen: i64 = c
            .query_one("SELECT count(*) FROM service_requests", &[])
            .await
            .unwrap()
            .get(0);
        c.batch_execute("COMMIT").await.unwrap();
        out.push((format!("requests of user {user}"), seen));
    }
    let emails: i64 = c
        .query_one(
            "SELECT count(*) FROM active_sessions WHERE email = 'user77@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.push(("sessions of user77 through the view".into(), emails));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_seeds_nine_tables_rewritten_and_cut_over_through_the_binary() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_schema(&c).await;
    let role = "seed_app";
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ))
    .await
    .unwrap();

    // plan finds the nine tables and names the view and the policy, with the
    // definitions that keep their rows; without the flag they block.
    let plan = pg_rekey(&db, &["plan", "--parent", "users", "--uuid-column", "uuid"]).await;
    let out = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{out}");
    for (t, _) in SEED_TABLES {
        assert!(
            out.contains(&format!("public.{t}")),
            "plan names {t}\n{out}"
        );
    }
    assert!(
        out.contains("active_sessions") && out.contains("own_requests"),
        "{out}"
    );
    let plan = pg_rekey(
        &db,
        &[
            "plan",
            "--parent",
            "users",
            "--uuid-column",
            "uuid",
            "--rewrite-dependents",
        ],
    )
    .await;
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // rewrite with no --table, while the application writes.
    let workload = Workload::start(&db).await;
    workload.wait_commits(5).await;
    let rewrite = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .args([
            "rewrite",
            "--parent",
            "users",
            "--uuid-column",
            "uuid",
            "--dsn",
            &db.spec.to_dsn(),
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start rewrite");
    let names: Vec<&str> = SEED_TABLES.iter().map(|(t, _)| *t).collect();
    wait_phase(&c, &names, "streaming").await;
    workload.wait_commits(20).await;
    let commits = workload.stop().await;
    catch_up(&c).await;
    for (t, reference) in SEED_TABLES {
        let (missing, extra) = compare_translated(
            &c,
            &format!("public.{t}"),
            &format!("public._rekey_new_{t}"),
            &[reference],
            "users",
            "id",
            "uuid",
        )
        .await;
        assert_eq!((missing, extra), (0, 0), "{t} before cutover");
    }
    let before = app_reads(&c).await;
    assert!(before.iter().all(|(_, n)| *n > 0), "{before:?}");

    // Without --rewrite-dependents the cutover refuses and touches nothing;
    // with it, all nine swap in one transaction.
    let mut args = vec!["cutover", "--yes"];
    for (t, _) in SEED_TABLES {
        args.extend(["--table", t]);
    }
    let refused = pg_rekey(&db, &args).await;
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    assert!(
        text(&refused).contains("active_sessions"),
        "{}",
        text(&refused)
    );
    args.push("--rewrite-dependents");
    let cut = pg_rekey(&db, &args).await;
    assert_eq!(cut.status.code(), Some(0), "{}", text(&cut));
    let done = tokio::time::timeout(Duration::from_secs(120), rewrite.wait_with_output())
        .await
        .expect("rewrite exits after the cutover")
        .unwrap();
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));

    for (t, reference) in SEED_TABLES {
        let (missing, extra) = compare_translated(
            &c,
            &format!("public._rekey_old_{t}"),
            &format!("public.{t}"),
            &[reference],
            "users",
            "id",
            "uuid",
        )
        .await;
        assert_eq!((missing, extra), (0, 0), "{t} after cutover");
        let ty: String = c
            .query_one(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute
                  WHERE attrelid = $1::text::regclass AND attname = $2",
                &[&format!("public.{t}"), &reference],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ty, "uuid", "{t}.{reference}");
    }
    // Every key to users is a validated uuid key to users.uuid; the unique
    // constraints kept their names on the new tables, once each.
    let bad: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint
              WHERE contype = 'f' AND confrelid = 'users'::regclass
                AND conrelid::regclass::text NOT LIKE '\\_rekey\\_old\\_%'
                AND (NOT convalidated OR confkey <> ARRAY[(SELECT attnum FROM pg_attribute
                     WHERE attrelid = 'users'::regclass AND attname = 'uuid')])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "every key to users points at users.uuid, validated");
    for (name, table) in [
        ("uq_message_read_state", "message_read_states"),
        ("uq_chat_read_monitor", "chat_read_monitors"),
        ("uq_user_role", "user_roles"),
        ("uq_user_request", "user_request_assigns"),
        ("uq_region_user", "region_user_assigns"),
    ] {
        let on: Vec<String> = c
            .query(
                "SELECT conrelid::regclass::text FROM pg_constraint WHERE conname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(on, vec![table.to_string()], "{name}");
    }
    // The view and the policy return the same rows to the application.
    assert_eq!(app_reads(&c).await, before);
    assert_eq!(slots_in_database(&c).await, 0, "no slot left");
    eprintln!("{commits} workload transactions during the rewrite");
}
