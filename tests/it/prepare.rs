//! `pg-rekey prepare` through the binary, on the second seed's starting
//! point (`users(id bigint primary key, email …)` with no uuid column): the
//! column made under concurrent inserts and updates, a kill in the middle of
//! the backfill, a half-filled column completed, an invalid index left by a
//! failed build, a busy table given up on without a change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::support::TestDb;

const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);
CREATE TABLE sessions (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id), token text);
INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 30000) g;
INSERT INTO sessions (user_id, token) SELECT 1 + g % 30000, 't' || g FROM generate_series(1, 5000) g;
ANALYZE;";

async fn run(dsn: &str, args: &[&str], failpoint: Option<&str>) -> (i32, String, String) {
    crate::support::run_binary(dsn, args, failpoint).await
}

fn prepare_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        "prepare",
        "--parent",
        "users",
        "--uuid-column",
        "uuid_id",
        "--batch-rows",
        "1000",
    ];
    v.extend_from_slice(extra);
    v
}

/// Every (id, uuid) of users, in key order.
async fn uuids(c: &Client) -> Vec<(i64, Option<uuid::Uuid>)> {
    c.query("SELECT id, uuid_id FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The column is what `rewrite` needs: uuid, NOT NULL, a default, a valid
/// unique index; no check left; every row has its own uuid.
async fn assert_prepared(c: &Client) {
    let r = c
        .query_one(
            "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid),
                    (SELECT count(*) FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
                      WHERE i.indrelid = 'users'::regclass AND i.indisunique AND i.indisvalid
                        AND i.indkey[0] = a.attnum AND i.indnkeyatts = 1),
                    (SELECT count(*) FROM pg_index i WHERE i.indrelid = 'users'::regclass AND NOT i.indisvalid),
                    (SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c'),
                    (SELECT count(*) FROM users WHERE uuid_id IS NULL),
                    (SELECT count(*) - count(DISTINCT uuid_id) FROM users)
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = 'users'::regclass AND a.attname = 'uuid_id'",
            &[],
        )
        .await
        .unwrap();
    let got: (String, bool, Option<String>, i64, i64, i64, i64, i64) = (
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get(7),
    );
    assert_eq!(
        got,
        (
            "uuid".into(),
            true,
            Some("gen_random_uuid()".into()),
            1,
            0,
            0,
            0,
            0
        ),
        "(type, not null, default, valid unique indexes, invalid indexes, checks, nulls, duplicates)"
    );
}

/// The application: new users (which never name the column) and their
/// sessions, and updates of existing users' email — rows the backfill has
/// not reached yet among them, which must never fail.
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
                "BEGIN;
                 WITH u AS (INSERT INTO users (email) VALUES ('new{i}@example.com') RETURNING id)
                 INSERT INTO sessions (user_id, token) SELECT id, 'w{i}' FROM u;
                 UPDATE users SET email = email || '.' WHERE id = {};
                 COMMIT;",
                30_000 - (i * 7) % 30_000
            ))
            .await
            .unwrap_or_else(|e| panic!("the application's write {i} failed: {e}"));
            written.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_under_writes_is_complete_and_a_second_run_changes_nothing() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(&db, Arc::clone(&stop), Arc::clone(&written));
    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the application never failed");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "the application wrote meanwhile"
    );
    assert!(out.contains("prepared public.users.uuid_id"), "{out}");
    assert!(
        out.contains("lock held"),
        "each locked step reports its hold: {out}"
    );
    assert_prepared(&c).await;
    // Written during prepare, by the default: present, with a uuid.
    let new: i64 = c
        .query_one("SELECT count(*) FROM users WHERE email LIKE 'new%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(new as u64, written.load(Ordering::Relaxed));

    let before = uuids(&c).await;
    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("already prepared") && out.contains("nothing to do"),
        "{out}"
    );
    assert_eq!(uuids(&c).await, before, "a second run changes nothing");

    // What `rewrite` needs of the parent is there.
    let (code, out, err) = run(
        &dsn,
        &[
            "plan",
            "--parent",
            "users",
            "--uuid-column",
            "uuid_id",
            "--table",
            "sessions",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "plan after prepare: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_midway_goes_on_and_keeps_every_uuid_given() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let (code, _, err) = run(&dsn, &prepare_args(&[]), Some("prepare.after_batch")).await;
    assert_eq!(code, 99, "died after the first batch: {err}");
    let given: Vec<(i64, uuid::Uuid)> = uuids(&c)
        .await
        .into_iter()
        .filter_map(|(id, u)| Some((id, u?)))
        .collect();
    assert_eq!(
        given.len(),
        1000,
        "one batch of 1000 committed before the kill"
    );
    let cursor: i64 = c
        .query_one("SELECT next_key FROM pgrekey.prepare", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cursor, 1001, "the cursor is just past the committed batch");

    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("add column"), "the column was there: {out}");
    assert!(
        out.contains("29,000 rows"),
        "the backfill did the 29,000 rows left: {out}"
    );
    assert_prepared(&c).await;
    let after = uuids(&c).await;
    for (id, u) in &given {
        assert_eq!(
            after.iter().find(|(i, _)| i == id).and_then(|(_, v)| *v),
            Some(*u),
            "user {id} was given a uuid before the kill: unchanged"
        );
    }
}

#[tokio::test]
async fn a_half_filled_column_is_completed_only_when_asked_and_keeps_its_values() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute(
        "ALTER TABLE users ADD COLUMN uuid_id uuid;
         UPDATE users SET uuid_id = gen_random_uuid() WHERE id % 3 = 0;",
    )
    .await
    .unwrap();
    let before = uuids(&c).await;
    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("exists already and was not added by pg-rekey prepare")
            && err.contains("--column-exists"),
        "{err}"
    );
    assert_eq!(uuids(&c).await, before, "refused: nothing changed");

    let (code, out, err) = run(&dsn, &prepare_args(&["--column-exists"]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_prepared(&c).await;
    let after = uuids(&c).await;
    for ((id, b), (_, a)) in before.iter().zip(&after) {
        if b.is_some() {
            assert_eq!(a, b, "user {id}: the uuid it had is kept");
        }
    }
}

#[tokio::test]
async fn an_invalid_index_left_by_a_failed_build_is_built_again() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute(
        "ALTER TABLE users ADD COLUMN uuid_id uuid DEFAULT gen_random_uuid();
         UPDATE users SET uuid_id = '00000000-0000-0000-0000-000000000001' WHERE id <= 2;",
    )
    .await
    .unwrap();
    // A concurrent build that fails (a duplicate) leaves an invalid index.
    let e = c
        .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY users_uuid_id_key ON users (uuid_id)")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("duplicate") || format!("{e:?}").contains("23505"),
        "{e:?}"
    );
    c.batch_execute("UPDATE users SET uuid_id = gen_random_uuid() WHERE id = 2")
        .await
        .unwrap();
    let (code, out, err) = run(&dsn, &prepare_args(&["--column-exists"]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("drop invalid index") && out.contains("build unique index"),
        "{out}"
    );
    assert_prepared(&c).await;
}

#[tokio::test]
async fn a_busy_table_is_given_up_on_without_a_change() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    // A long transaction that read the table holds ACCESS SHARE.
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .unwrap();
    let (code, out, err) = run(
        &dsn,
        &prepare_args(&[
            "--lock-timeout",
            "100ms",
            "--attempts",
            "3",
            "--backoff",
            "50ms",
        ]),
        None,
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("could not lock") && err.contains("in 3 attempts"),
        "{err}"
    );
    let has_column: bool = c
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'uuid_id')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!has_column, "nothing was changed");
    holder.batch_execute("COMMIT").await.unwrap();
    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_prepared(&c).await;
}

/// A column `prepare` made, dropped by hand, is made again from the start
/// (the old cursor says nothing of it).
#[tokio::test]
async fn a_dropped_column_is_made_again_from_the_start() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    c.batch_execute("ALTER TABLE users DROP COLUMN uuid_id")
        .await
        .unwrap();
    let (code, out, err) = run(&dsn, &prepare_args(&[]), None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("backfill") && l.contains("30,000 rows")),
        "the backfill did every row again: {out}"
    );
    assert_prepared(&c).await;
}
