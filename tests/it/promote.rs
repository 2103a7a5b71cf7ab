//! `pg-rekey promote` through the binary, on the second seed's schema after
//! `prepare` (`users(id bigserial primary key, email …, uuid_id uuid NOT NULL
//! UNIQUE)`): refused while `sessions` references `users.id` or a job row
//! remains; then the key moved under a live writer, the integer kept unique
//! and NOT NULL, a second run a no-op, the integer dropped later; `--rename`
//! with a view, a comment, a column grant and the sequence following the
//! integer; a busy table waited on and given up on without a change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use crate::support::TestDb;

const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);
CREATE TABLE sessions (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id), token text);
INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 50000) g;
INSERT INTO sessions (user_id, token) SELECT 1 + g % 50000, 't' || g FROM generate_series(1, 5000) g;
ANALYZE;";

/// `sessions` re-pointed to the uuid by hand (what rewrite + cutover +
/// finish leave): a uuid column with a key to `users (uuid_id)`, the integer
/// key dropped.
const REPOINT: &str = "
ALTER TABLE sessions ADD COLUMN user_uuid uuid;
UPDATE sessions s SET user_uuid = u.uuid_id FROM users u WHERE u.id = s.user_id;
ALTER TABLE sessions ADD CONSTRAINT sessions_user_uuid_fkey FOREIGN KEY (user_uuid) REFERENCES users (uuid_id);
ALTER TABLE sessions DROP CONSTRAINT sessions_user_id_fkey;";

async fn run(dsn: &str, args: &[&str]) -> (i32, String, String) {
    crate::support::run_binary(dsn, args, None).await
}

fn promote_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["promote", "--parent", "users", "--uuid-column", "uuid_id"];
    v.extend_from_slice(extra);
    v
}

/// The schema, prepared by `pg-rekey prepare`.
async fn prepared(db: &TestDb) -> Client {
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let (code, out, err) = run(
        &db.spec.to_dsn(),
        &["prepare", "--parent", "users", "--uuid-column", "uuid_id"],
    )
    .await;
    assert_eq!(code, 0, "prepare: {out}{err}");
    c
}

/// (primary key constraint, its index, its columns) of users.
async fn primary_key(c: &Client) -> (String, String, Vec<String>) {
    let r = c
        .query_one(
            "SELECT con.conname::text, i.relname::text,
                    array_agg(a.attname::text ORDER BY a.attnum)
               FROM pg_constraint con
               JOIN pg_class i ON i.oid = con.conindid
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
              WHERE con.conrelid = 'users'::regclass AND con.contype = 'p'
              GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// (type, NOT NULL, names of one-column UNIQUE constraints) of a users column.
async fn column(c: &Client, name: &str) -> Option<(String, bool, Vec<String>)> {
    c.query_opt(
        "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull,
                coalesce((SELECT array_agg(con.conname::text ORDER BY con.conname) FROM pg_constraint con
                           WHERE con.conrelid = a.attrelid AND con.contype = 'u'
                             AND con.conkey = ARRAY[a.attnum]), '{}')
           FROM pg_attribute a
          WHERE a.attrelid = 'users'::regclass AND a.attname = $1 AND NOT a.attisdropped",
        &[&name],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Every (id, uuid, email) of users, in id order.
async fn rows(c: &Client, id: &str, uuid: &str) -> Vec<(i64, uuid::Uuid, String)> {
    c.query(
        &format!("SELECT {id}, {uuid}, email FROM users ORDER BY {id}"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Sign-ups while promote runs: none may fail.
fn spawn_writer(
    db: &TestDb,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let spec = db.spec.clone();
    tokio::spawn(async move {
        let c = pg_rekey::pg::connect(&spec, "writer").await.unwrap();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            c.batch_execute(&format!(
                "INSERT INTO users (email) VALUES ('new{i}@example.com')"
            ))
            .await
            .unwrap_or_else(|e| panic!("the application's write {i} failed: {e}"));
            written.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// The hold of the locked step, from `--json`.
fn hold(json: &str) -> (usize, u64) {
    let v: serde_json::Value = serde_json::from_str(json).expect("promote --json");
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| !s["attempts"].as_array().unwrap().is_empty())
        .expect("a locked step");
    let attempts = step["attempts"].as_array().unwrap();
    (
        attempts.len(),
        attempts.last().unwrap()["held_ms"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_while_referenced_then_promoted_keeping_the_integer_then_dropped() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = prepared(&db).await;
    let before = rows(&c, "id", "uuid_id").await;

    // A key to users.id: refused, naming it; nothing changed.
    let (code, out, err) = run(&dsn, &promote_args(&[])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("public.sessions constraint sessions_user_id_fkey (user_id)")
            && err.contains("users.id"),
        "{err}"
    );
    assert_eq!(
        primary_key(&c).await,
        ("users_pkey".into(), "users_pkey".into(), vec!["id".into()])
    );

    // Re-pointed to the uuid by hand; a job row of sessions is left.
    c.batch_execute(REPOINT).await.unwrap();
    c.batch_execute(
        "INSERT INTO pgrekey.jobs (source_schema, source_table, source_oid, job_id, phase, shadow_table,
                                   parent_schema, parent_table, parent_uuid_column)
         VALUES ('public', 'sessions', 'sessions'::regclass, gen_random_uuid(), 'cut_over', 'sessions_rekey',
                 'public', 'users', 'uuid_id')",
    )
    .await
    .unwrap();
    let (code, out, err) = run(&dsn, &promote_args(&[])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("pg-rekey finish --table public.sessions") && err.contains("cut_over"),
        "{err}"
    );
    c.batch_execute("DELETE FROM pgrekey.jobs").await.unwrap();

    // The dry run prints the statements and changes nothing.
    let (code, out, err) = run(&dsn, &promote_args(&["--dry-run"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("PRIMARY KEY USING INDEX \"users_uuid_id_key\"")
            && out.contains("CREATE UNIQUE INDEX CONCURRENTLY \"users_id_key\""),
        "{out}"
    );
    assert_eq!(primary_key(&c).await.2, vec!["id".to_string()]);

    // Promoted while the application signs users up.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(&db, Arc::clone(&stop), Arc::clone(&written));
    while written.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, out, err) = run(&dsn, &promote_args(&["--json"])).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the application never failed");
    assert_eq!(code, 0, "{out}{err}");
    let (attempts, held_ms) = hold(&out);
    eprintln!(
        "promote (50,000 users, live sign-ups): {attempts} attempt(s), lock held {held_ms} ms"
    );

    assert_eq!(
        primary_key(&c).await,
        (
            "users_pkey".into(),
            "users_pkey".into(),
            vec!["uuid_id".into()]
        ),
        "the uuid is the key, under the key's old name"
    );
    assert_eq!(
        column(&c, "id").await,
        Some(("bigint".into(), true, vec!["users_id_key".into()])),
        "the integer stays NOT NULL and UNIQUE"
    );
    // Every row as it was, plus the sign-ups.
    let after = rows(&c, "id", "uuid_id").await;
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(
        after.len(),
        before.len() + written.load(Ordering::Relaxed) as usize
    );
    // The sequence feeds the integer; its uniqueness holds; the uuid key
    // and the sessions' key to it work.
    let next: i64 = c
        .query_one(
            "INSERT INTO users (email) VALUES ('after') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(next > after.last().unwrap().0);
    let dup = c
        .batch_execute("INSERT INTO users (id, email) VALUES (1, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(dup.code().unwrap().code(), "23505", "{dup:?}");
    let orphan = c
        .batch_execute("INSERT INTO sessions (user_id, user_uuid) VALUES (1, gen_random_uuid())")
        .await
        .unwrap_err();
    assert_eq!(orphan.code().unwrap().code(), "23503", "{orphan:?}");

    // A second run: nothing to do.
    let (code, out, err) = run(&dsn, &promote_args(&[])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("already its uuid column uuid_id") && out.contains("nothing to do"),
        "{out}"
    );

    // Later: the integer dropped, its sequence with it; every row kept.
    let (code, out, err) = run(&dsn, &promote_args(&["--drop-integer-key"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the integer key is dropped"), "{out}");
    assert_eq!(column(&c, "id").await, None);
    let seq: Option<String> = c
        .query_one("SELECT to_regclass('users_id_seq')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, None);
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, after.len() + 1);
    let (code, out, _) = run(&dsn, &promote_args(&["--drop-integer-key"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
}

#[tokio::test]
async fn rename_gives_the_uuid_the_name_and_the_integer_keeps_its_view_sequence_grant_and_comment()
{
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = prepared(&db).await;
    c.batch_execute(REPOINT).await.unwrap();
    c.batch_execute(
        "CREATE VIEW user_emails AS SELECT id, email FROM users WHERE id % 7 = 0;
         COMMENT ON COLUMN users.id IS 'the integer key';
         DROP ROLE IF EXISTS promote_reader;
         CREATE ROLE promote_reader;
         GRANT SELECT (id) ON users TO promote_reader;",
    )
    .await
    .unwrap();
    let view_before: Vec<(i64, String)> = c
        .query("SELECT * FROM user_emails ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let before = rows(&c, "id", "uuid_id").await;

    let (code, out, err) = run(&dsn, &promote_args(&["--rename"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("renamed: public.users.id is now the uuid"),
        "{out}"
    );
    assert_eq!(
        primary_key(&c).await,
        ("users_pkey".into(), "users_pkey".into(), vec!["id".into()])
    );
    assert_eq!(column(&c, "id").await.unwrap().0, "uuid");
    assert_eq!(
        column(&c, "legacy_id").await,
        Some(("bigint".into(), true, vec!["users_legacy_id_key".into()]))
    );
    assert_eq!(column(&c, "uuid_id").await, None);
    assert_eq!(rows(&c, "legacy_id", "id").await, before, "same rows");

    // The view binds by column number: it still selects the integer.
    let view_after: Vec<(i64, String)> = c
        .query("SELECT * FROM user_emails ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(view_after, view_before);
    let def: String = c
        .query_one("SELECT pg_get_viewdef('user_emails')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(def.contains("legacy_id"), "{def}");
    // The sequence, its ownership, the comment and the grant followed.
    let r = c
        .query_one(
            "SELECT pg_get_serial_sequence('users', 'legacy_id'),
                    col_description('users'::regclass,
                        (SELECT attnum FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'legacy_id')),
                    has_column_privilege('promote_reader', 'users', 'legacy_id', 'SELECT'),
                    has_column_privilege('promote_reader', 'users', 'id', 'SELECT')",
            &[],
        )
        .await
        .unwrap();
    let got: (Option<String>, Option<String>, bool, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!(
        got,
        (
            Some("public.users_id_seq".into()),
            Some("the integer key".into()),
            true,
            false
        )
    );
    let (legacy, id): (i64, uuid::Uuid) = {
        let r = c
            .query_one(
                "INSERT INTO users (email) VALUES ('after') RETURNING legacy_id, id",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        legacy > before.last().unwrap().0,
        "the sequence feeds legacy_id"
    );
    assert!(!id.is_nil(), "the uuid key's default");
    // The sessions' key now points at users.id, the uuid.
    let fk: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'sessions_user_uuid_fkey'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fk, "FOREIGN KEY (user_uuid) REFERENCES users(id)");

    let (code, out, err) = run(&dsn, &promote_args(&["--rename"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("already its uuid column id (the integer key is legacy_id)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_table_is_waited_on_then_given_up_on_untouched_or_promoted_once_released() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = prepared(&db).await;
    c.batch_execute(REPOINT).await.unwrap();
    // A long transaction holding a lock on users (a reader).
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE;")
        .await
        .unwrap();
    let busy = [
        "--lock-timeout",
        "100ms",
        "--attempts",
        "3",
        "--backoff",
        "50ms",
    ];
    let mut args = promote_args(&["--drop-integer-key"]);
    args.extend_from_slice(&busy);
    let (code, out, err) = run(&dsn, &args).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("could not lock")
            && err.contains("in 3 attempts")
            && err.contains("run promote again"),
        "{err}"
    );
    assert_eq!(primary_key(&c).await.2, vec!["id".to_string()], "untouched");
    assert!(column(&c, "id").await.is_some(), "untouched");

    // Waits, retries, and goes through once the holder ends.
    let child = tokio::spawn({
        let dsn = dsn.clone();
        async move {
            run(
                &dsn,
                &promote_args(&[
                    "--json",
                    "--lock-timeout",
                    "100ms",
                    "--attempts",
                    "50",
                    "--backoff",
                    "50ms",
                ]),
            )
            .await
        }
    });
    // Until promote's lock request has been seen waiting twice.
    let mut seen = 0;
    let mut was_waiting = false;
    for _ in 0..3000 {
        let waiting: bool = c
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 'users'::regclass
                                   AND mode = 'AccessExclusiveLock' AND NOT granted)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting && !was_waiting {
            seen += 1;
        }
        was_waiting = waiting;
        if seen >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen >= 2, "promote's lock request waited and came back");
    holder.batch_execute("COMMIT").await.unwrap();
    let (code, out, err) = child.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (attempts, _) = hold(&out);
    assert!(attempts >= 2, "retried: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let waits: Vec<u64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["attempts"].as_array().unwrap().clone())
        .map(|a| a["waited_ms"].as_u64().unwrap())
        .collect();
    assert!(
        waits[..waits.len() - 1].iter().all(|w| *w >= 90),
        "each failed attempt waited its lock_timeout: {waits:?}"
    );
    assert_eq!(primary_key(&c).await.2, vec!["uuid_id".to_string()]);
}

/// A uuid column unique through a `UNIQUE` constraint (whose index cannot
/// be handed to another constraint): promote builds its own index for the
/// key and leaves the constraint.
#[tokio::test]
async fn a_uuid_unique_through_a_constraint_gets_its_own_key_index() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, uuid uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(), email text);
         INSERT INTO users (id, email) SELECT g, 'u' || g FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let before = rows(&c, "id", "uuid").await;
    let (code, out, err) = run(&dsn, &["promote", "--parent", "users"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("build unique index users_uuid_promote"),
        "{out}"
    );
    assert_eq!(
        primary_key(&c).await,
        (
            "users_pkey".into(),
            "users_pkey".into(),
            vec!["uuid".into()]
        )
    );
    assert_eq!(
        column(&c, "uuid").await,
        Some(("uuid".into(), true, vec!["users_uuid_key".into()])),
        "the UNIQUE constraint is left as it was"
    );
    assert_eq!(rows(&c, "id", "uuid").await, before);
}

/// `--drop-integer-key` while a view still selects the integer: PostgreSQL
/// refuses the drop, and the whole locked step — the key's move with it —
/// rolls back; the error names the view.
#[tokio::test]
async fn a_drop_refused_by_a_dependent_view_rolls_the_whole_step_back() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = prepared(&db).await;
    c.batch_execute(REPOINT).await.unwrap();
    c.batch_execute("CREATE VIEW user_ids AS SELECT id FROM users")
        .await
        .unwrap();
    let (code, out, err) = run(&dsn, &promote_args(&["--drop-integer-key"])).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("DROP COLUMN") && err.contains("view user_ids") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(primary_key(&c).await.2, vec!["id".to_string()], "untouched");
    assert_eq!(column(&c, "id").await.unwrap().0, "bigint");
}
