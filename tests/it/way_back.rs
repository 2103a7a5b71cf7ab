//! The way back after cutover (`cutover --way-back`, `rollback`, `finish`)
//! against a real server, under a workload that keeps writing through every
//! swap — switching from integers to uuids at the cutover and back at the
//! rollback, as a deployed application would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_rekey::cutover::{self, CutoverConfig, Direction};
use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::{compare_translated, connect, TestDb};

const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, uuid_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE, email text);
CREATE TABLE docs (
    id bigserial PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    n integer NOT NULL DEFAULT 0,
    body text,
    note text
);
-- Out of line and uncompressed: an update that leaves it alone streams it as unchanged TOAST.
ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
CREATE INDEX docs_owner ON docs (owner_id);
COMMENT ON TABLE docs IS 'documents';
COMMENT ON COLUMN docs.owner_id IS 'who owns it';
CREATE TABLE shares (
    doc_id bigint NOT NULL REFERENCES docs (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    level integer NOT NULL,
    PRIMARY KEY (doc_id, user_id)
);
-- As Django makes them: checked at commit.
CREATE TABLE comments (
    id bigserial PRIMARY KEY,
    author_id bigint REFERENCES users (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    doc_id bigint REFERENCES docs (id) ON DELETE CASCADE,
    body text
);
CREATE INDEX comments_author ON comments (author_id);
-- Outside the job: its key into docs is carried to the new table and back.
CREATE TABLE audit (id bigserial PRIMARY KEY, doc_id bigint REFERENCES docs (id) ON DELETE SET NULL, what text);
CREATE VIEW doc_notes AS SELECT id, owner_id, note FROM docs;
CREATE FUNCTION docs_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := coalesce(NEW.note, '') || ''; RETURN NEW; END $$;
CREATE TRIGGER docs_touch BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION docs_touch();
GRANT SELECT ON docs TO PUBLIC;
INSERT INTO users (email) SELECT 'u' || g FROM generate_series(1, 60) g;
INSERT INTO docs (owner_id, n, body, note)
    SELECT 1 + g % 60, 0, repeat(md5(g::text), 200), 'seed' FROM generate_series(1, 300) g;
INSERT INTO shares SELECT g, 1 + (g * 7) % 60, 1 FROM generate_series(1, 300) g;
INSERT INTO comments (author_id, doc_id, body) SELECT 1 + g % 60, 1 + g % 300, 'c' || g FROM generate_series(1, 300) g;
INSERT INTO audit (doc_id, what) SELECT g, 'seed' FROM generate_series(1, 50) g;
ANALYZE;";

const TABLES: &[&str] = &["comments", "docs", "shares"];

fn refs(table: &str) -> &'static [&'static str] {
    match table {
        "docs" => &["owner_id"],
        "shares" => &["user_id"],
        _ => &["author_id"],
    }
}

fn names(tables: &[&str]) -> Vec<QualifiedName> {
    tables
        .iter()
        .map(|t| QualifiedName::new("public", *t))
        .collect()
}

fn rewrite_cfg(db: &TestDb) -> RewriteConfig {
    RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        names(TABLES),
    )
}

fn swap_cfg(db: &TestDb, direction: Direction) -> CutoverConfig {
    CutoverConfig {
        lock_timeout: Duration::from_millis(300),
        max_hold: Duration::from_secs(3),
        attempts: 20,
        backoff: Duration::from_millis(100),
        max_lag_bytes: 64 * 1024 * 1024,
        skip_verify: true,
        way_back: direction == Direction::Forward,
        direction,
        ..CutoverConfig::new(db.spec.clone(), names(TABLES))
    }
}

/// Writes of every kind, one small transaction at a time, in whatever type
/// the reference columns have now (read before each transaction; a type
/// error from a swap that committed in between rolls the transaction back
/// and the next one reads again).
struct Writer {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    uuid_commits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(db: &TestDb) -> Writer {
        let c = connect(&db.spec).await;
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let uuid_commits = Arc::new(AtomicU64::new(0));
        let (s, n, u) = (stop.clone(), commits.clone(), uuid_commits.clone());
        let (p, id) = (paused.clone(), idle.clone());
        let task = tokio::spawn(async move {
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                if p.load(Ordering::SeqCst) {
                    id.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                id.store(false, Ordering::SeqCst);
                i += 1;
                let uuid_mode: bool = match c
                    .query_one(
                        "SELECT atttypid = 'uuid'::regtype FROM pg_attribute WHERE attrelid = 'public.docs'::regclass AND attname = 'owner_id'",
                        &[],
                    )
                    .await
                {
                    Ok(r) => r.get(0),
                    Err(_) => continue,
                };
                let k = if uuid_mode { "uuid_id" } else { "id" };
                let sql = match i % 8 {
                    0 => format!("INSERT INTO docs (owner_id, n, body, note) SELECT {k}, 1, repeat(md5(random()::text), 150), 'w{i}' FROM users ORDER BY random() LIMIT 1"),
                    1 => format!("UPDATE docs SET owner_id = (SELECT {k} FROM users ORDER BY random() LIMIT 1), note = 'moved{i}' WHERE id = (SELECT id FROM docs ORDER BY random() LIMIT 1)"),
                    2 => "UPDATE docs SET n = n + 1 WHERE id IN (SELECT id FROM docs ORDER BY random() LIMIT 3)".into(),
                    3 => "DELETE FROM docs WHERE id = (SELECT id FROM docs ORDER BY random() LIMIT 1)".into(),
                    4 => format!("INSERT INTO shares SELECT d.id, u.{k}, 2 FROM docs d, users u ORDER BY random() LIMIT 1 ON CONFLICT DO NOTHING"),
                    5 => {
                        // A new user, referenced before it is inserted (the
                        // key is checked at commit).
                        if uuid_mode {
                            let g = uuid::Uuid::new_v4();
                            format!("BEGIN; INSERT INTO comments (author_id, doc_id, body) SELECT '{g}', id, 'first{i}' FROM docs ORDER BY random() LIMIT 1; INSERT INTO users (uuid_id, email) VALUES ('{g}', 'new{i}'); COMMIT")
                        } else {
                            let id: i64 = match c.query_one("SELECT nextval('users_id_seq')", &[]).await {
                                Ok(r) => r.get(0),
                                Err(_) => continue,
                            };
                            format!("BEGIN; INSERT INTO comments (author_id, doc_id, body) SELECT {id}, id, 'first{i}' FROM docs ORDER BY random() LIMIT 1; INSERT INTO users (id, email) VALUES ({id}, 'new{i}'); COMMIT")
                        }
                    }
                    6 => "DELETE FROM users WHERE id = (SELECT id FROM users WHERE email LIKE 'new%' ORDER BY random() LIMIT 1)".into(),
                    _ => format!("UPDATE comments SET body = body || '.', author_id = (SELECT {k} FROM users ORDER BY random() LIMIT 1) WHERE id = (SELECT id FROM comments ORDER BY random() LIMIT 1)"),
                };
                match c.batch_execute(&sql).await {
                    Ok(()) => {
                        n.fetch_add(1, Ordering::Relaxed);
                        if uuid_mode {
                            u.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Writer {
            stop,
            paused,
            idle,
            commits,
            uuid_commits,
            task,
        }
    }

    /// Hold it between transactions (a comparison reads a quiet pair of
    /// tables: what commits after the catch-up's fence is still on its way).
    async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        crate::support::wait_for("the writer to pause", Duration::from_secs(30), || async {
            self.idle.load(Ordering::SeqCst).then_some(())
        })
        .await
    }

    fn resume(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Let it commit at least `n` more transactions.
    async fn more(&self, n: u64) {
        let start = self.commits.load(Ordering::Relaxed);
        crate::support::wait_for(
            &format!("{n} more writes"),
            Duration::from_secs(120),
            || async { (self.commits.load(Ordering::Relaxed) >= start + n).then_some(()) },
        )
        .await
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.commits.load(Ordering::Relaxed),
            self.uuid_commits.load(Ordering::Relaxed),
        )
    }
}

/// Every table's integer side equals its uuid side translated, row for row.
#[track_caller]
fn assert_equal<'a>(
    c: &'a Client,
    int_side: &'a dyn Fn(&str) -> String,
    uuid_side: &'a dyn Fn(&str) -> String,
) -> impl std::future::Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        catch_up(c).await;
        for t in TABLES {
            let (missing, extra) = compare_translated(
                c,
                &int_side(t),
                &uuid_side(t),
                refs(t),
                "public.users",
                "id",
                "uuid_id",
            )
            .await;
            assert_eq!(
                (missing, extra),
                (0, 0),
                "{t}: {} vs {} (checked at {caller})",
                int_side(t),
                uuid_side(t)
            );
        }
    }
}

/// What hangs off a table, as text that does not depend on OIDs.
async fn catalog_snapshot(c: &Client, table: &str) -> Vec<String> {
    let q = |sql: &'static str| sql;
    let mut out = Vec::new();
    for (what, sql) in [
        ("index", q("SELECT i.indexrelid::regclass::text || ' ' || pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::text::regclass")),
        ("constraint", q("SELECT conname || ' ' || pg_get_constraintdef(oid) || ' valid=' || convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass")),
        ("incoming", q("SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' valid=' || convalidated FROM pg_constraint WHERE confrelid = $1::text::regclass AND conrelid <> confrelid")),
        ("trigger", q("SELECT tgname || ' ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal")),
        ("table", q("SELECT coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(relacl) a), '-') || ' ' || pg_get_userbyid(relowner) || ' ' || coalesce(obj_description(oid, 'pg_class'), '-') || ' ' || relreplident::text || ' rls=' || relrowsecurity FROM pg_class WHERE oid = $1::text::regclass")),
        ("column", q("SELECT attname || ' ' || format_type(atttypid, atttypmod) || ' ' || coalesce(col_description(attrelid, attnum), '-') || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped")),
        ("sequence", q("SELECT coalesce(pg_get_serial_sequence($1::text, a.attname), '-') FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = 'id'")),
        ("view", q("SELECT 'doc_notes ' || pg_get_viewdef('public.doc_notes'::regclass) WHERE $1::text IS NOT NULL")),
        ("publication", q("SELECT pubname FROM pg_publication_tables WHERE schemaname || '.' || tablename = $1::text AND pubname NOT LIKE 'pg_rekey%'")),
    ] {
        let rows = c.query(sql, &[&table]).await.unwrap_or_else(|e| panic!("{what} of {table}: {}", pg_rekey::error::chain(&e)));
        for r in rows {
            out.push(format!("{what}: {}", r.get::<_, String>(0)));
        }
    }
    out.sort();
    out
}

async fn rewrite_task(
    db: &TestDb,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<RewriteOutcome, pg_rekey::Error>>,
) {
    let (tx, rx) = watch::channel(false);
    let cfg = rewrite_cfg(db);
    let task = tokio::spawn(async move {
        rewrite::run(&cfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    (tx, task)
}

async fn swap(db: &TestDb, direction: Direction) {
    let report = cutover::run(&swap_cfg(db, direction))
        .await
        .unwrap_or_else(|e| panic!("{direction:?}: {}", pg_rekey::error::chain(&e)));
    assert!(report.swapped, "{direction:?}: {report:?}");
    assert!(
        report.warnings.is_empty(),
        "{direction:?}: {:?}",
        report.warnings
    );
}

fn public(t: &str) -> String {
    format!("public.{t}")
}
fn old(t: &str) -> String {
    format!("public._rekey_old_{t}")
}
fn shadow(t: &str) -> String {
    format!("public._rekey_new_{t}")
}

#[tokio::test]
async fn rollback_after_writes_to_the_new_tables_loses_nothing_and_restores_every_object() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let mut before = Vec::new();
    for t in TABLES {
        before.push(catalog_snapshot(&c, &public(t)).await);
    }
    let (_stop, job) = rewrite_task(&db).await;
    wait_phase(&c, TABLES, "streaming").await;
    let writer = Writer::start(&db).await;
    writer.more(100).await;

    swap(&db, Direction::Forward).await;
    let old_oids: Vec<u32> = {
        let mut v = Vec::new();
        for t in TABLES {
            v.push(
                c.query_one("SELECT $1::text::regclass::oid", &[&old(t)])
                    .await
                    .unwrap()
                    .get(0),
            );
        }
        v
    };
    // The application keeps writing the new tables, in uuids.
    let at_swap = writer.uuid_commits.load(Ordering::Relaxed);
    writer.more(300).await;
    assert!(writer.uuid_commits.load(Ordering::Relaxed) > at_swap + 100);
    // The way back kept each old table equal to its new one, translated.
    writer.pause().await;
    assert_equal(&c, &old, &public).await;
    writer.resume();
    let status = pg_rekey::status::load(&c).await.unwrap();
    assert!(
        status.iter().all(|s| s.phase == "reverse_streaming"),
        "{status:?}"
    );
    // The old tables hold none of the application's foreign keys meanwhile.
    let held: i64 = c
        .query_one("SELECT count(*) FROM pgrekey.held_constraints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        held, 3,
        "docs→users, shares→users, comments→users; none between old tables"
    );

    swap(&db, Direction::Back).await;
    writer.more(200).await;
    let (commits, uuid_commits) = writer.stop().await;
    assert!(
        commits > 600 && uuid_commits > 100,
        "{commits} {uuid_commits}"
    );

    // The original tables are back (same OIDs), equal to the uuid tables,
    // which the forward stream keeps current again.
    for (t, oid) in TABLES.iter().zip(&old_oids) {
        let now: u32 = c
            .query_one("SELECT $1::text::regclass::oid", &[&public(t)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(now, *oid, "{t} holds its original table again");
    }
    assert_equal(&c, &public, &shadow).await;
    for (t, was) in TABLES.iter().zip(&before) {
        let now = catalog_snapshot(&c, &public(t)).await;
        let gone: Vec<&String> = was.iter().filter(|x| !now.contains(x)).collect();
        let new: Vec<&String> = now.iter().filter(|x| !was.contains(x)).collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "{t}: objects as before the first cutover; missing {gone:?}, new {new:?}"
        );
    }
    let held: i64 = c
        .query_one("SELECT count(*) FROM pgrekey.held_constraints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
    let jobs = pg_rekey::state::list_jobs(&c).await.unwrap();
    assert!(
        jobs.iter()
            .all(|j| j.phase == "streaming" && j.old_table.is_none()),
        "{jobs:?}"
    );
    assert!(!job.is_finished(), "the rewrite keeps streaming forward");
}

#[tokio::test]
async fn cutover_rollback_cutover_finish_copies_once_and_leaves_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let (_stop, job) = rewrite_task(&db).await;
    wait_phase(&c, TABLES, "streaming").await;
    let shadow_oids: Vec<u32> = {
        let mut v = Vec::new();
        for t in TABLES {
            v.push(
                c.query_one("SELECT $1::text::regclass::oid", &[&shadow(t)])
                    .await
                    .unwrap()
                    .get(0),
            );
        }
        v
    };
    let writer = Writer::start(&db).await;
    writer.more(50).await;
    swap(&db, Direction::Forward).await;
    writer.more(100).await;
    writer.pause().await;
    assert_equal(&c, &old, &public).await;
    writer.resume();
    swap(&db, Direction::Back).await;
    writer.more(100).await;
    writer.pause().await;
    assert_equal(&c, &public, &shadow).await;
    writer.resume();
    swap(&db, Direction::Forward).await;
    writer.more(100).await;
    writer.pause().await;
    assert_equal(&c, &old, &public).await;
    writer.resume();
    // Nothing was copied twice: the new tables are the shadows of the first copy.
    for (t, oid) in TABLES.iter().zip(&shadow_oids) {
        let now: u32 = c
            .query_one("SELECT $1::text::regclass::oid", &[&public(t)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(now, *oid, "{t}");
    }
    let report = pg_rekey::way_back::finish(&db.spec, &names(TABLES), &Default::default())
        .await
        .unwrap_or_else(|e| panic!("finish: {}", pg_rekey::error::chain(&e)));
    assert_eq!(report.verified, Some(true), "{report:?}");
    writer.more(50).await;
    writer.stop().await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the rewrite ends after finish")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Finished);
    let left: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()) + (SELECT count(*) FROM pg_publication)
                  + (SELECT count(*) FROM pgrekey.jobs) + (SELECT count(*) FROM pgrekey.held_constraints)
                  + (SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rekey\\_%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let what: Vec<String> = c
        .query(
            "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database() UNION ALL SELECT 'publication ' || pubname FROM pg_publication
             UNION ALL SELECT 'relation ' || oid::regclass::text FROM pg_class WHERE relname LIKE '\\_rekey\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        left, 0,
        "no slot, publication, job row, held key or old table left: {what:?}"
    );
    // The new tables' keys are validated and enforced.
    let invalid: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE NOT convalidated",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
}

#[tokio::test]
async fn a_uuid_without_a_parent_stops_the_way_back_and_rollback_says_why() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let (_stop, job) = rewrite_task(&db).await;
    wait_phase(&c, TABLES, "streaming").await;
    swap(&db, Direction::Forward).await;
    // An operator drops the new key and writes a uuid no user has.
    let ghost = uuid::Uuid::new_v4();
    c.batch_execute(&format!(
        "ALTER TABLE docs DROP CONSTRAINT docs_owner_id_fkey;
         INSERT INTO docs (owner_id, n, body, note) VALUES ('{ghost}', 0, 'x', 'ghost')"
    ))
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the way back stops")
        .unwrap()
        .expect_err("an orphaned uuid is an error");
    let text = pg_rekey::error::chain(&err);
    assert!(
        text.contains("docs") && text.contains("owner_id") && text.contains(&ghost.to_string()),
        "{text}"
    );
    // Nothing of that transaction reached the old table, nothing as NULL.
    let ghosts: i64 = c
        .query_one(
            "SELECT count(*) FROM _rekey_old_docs WHERE note = 'ghost' OR owner_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ghosts, 0);
    let e = cutover::run(&swap_cfg(&db, Direction::Back))
        .await
        .expect_err("rollback refuses");
    let text = pg_rekey::error::chain(&e);
    assert!(
        text.contains(&ghost.to_string()),
        "rollback names the reason: {text}"
    );
    // Still cut over: the application's tables were not touched.
    let t: String = c.query_one("SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'owner_id'", &[]).await.unwrap().get(0);
    assert_eq!(t, "uuid");
}
