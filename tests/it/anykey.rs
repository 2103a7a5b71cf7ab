//! Tables keyed by anything but an integer: `uuid`, `text` (under a
//! non-default collation), `numeric`, a composite key whose first column is
//! text, a table with no primary key but a replica identity index, and one
//! whose replica identity index has another collation than its column —
//! rewritten, streamed, verified and cut over end to end, with data equality
//! checked at every step and writes running while the jobs stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_rekey::cutover::{self, CutoverConfig};
use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::verify::{self, RunOptions, Stage};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::{compare_translated, wait_for, TestDb};

/// The tables and their reference column.
pub const ANY_KEY_TABLES: [(&str, &str); 6] = [
    ("user_sessions", "user_id"),
    ("tags", "owner_id"),
    ("ledger", "user_id"),
    ("memberships", "user_id"),
    ("events", "actor_id"),
    ("codes", "owner_id"),
];

/// A collation that orders differently from the database's `C`: ICU's root
/// collation when the server has ICU, else `POSIX` (same order as `C`).
async fn other_collation(c: &Client) -> String {
    let icu: Option<String> = c
        .query_opt(
            "SELECT collname::text FROM pg_collation WHERE collname = 'und-x-icu'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    icu.unwrap_or_else(|| "POSIX".into())
}

/// `users` and the five tables, `rows` rows each (memberships skewed: one
/// tenant holds nine rows in ten).
pub async fn any_key_schema(c: &Client, users: i64, rows: i64) {
    let coll = other_collation(c).await;
    c.batch_execute(&format!(
        "CREATE TABLE users (id bigserial PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(), name text);
         INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, {users}) g;
         CREATE TABLE user_sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             user_id bigint REFERENCES users(id), note text);
         INSERT INTO user_sessions (user_id, note)
             SELECT g % {users} + 1, 's' || g FROM generate_series(1, {rows}) g;
         CREATE TABLE tags (code text COLLATE \"{coll}\" PRIMARY KEY, owner_id bigint REFERENCES users(id));
         INSERT INTO tags SELECT CASE WHEN g % 2 = 0 THEN 'Tag' ELSE 'tag' END || g, g % {users} + 1
             FROM generate_series(1, {rows}) g;
         CREATE TABLE ledger (entry numeric(20, 4) PRIMARY KEY, user_id bigint REFERENCES users(id), amount numeric);
         INSERT INTO ledger SELECT g * 1.0001, g % {users} + 1, g FROM generate_series(1, {rows}) g;
         CREATE TABLE memberships (tenant text NOT NULL, seq int NOT NULL, user_id bigint REFERENCES users(id),
             role text, PRIMARY KEY (tenant, seq));
         INSERT INTO memberships SELECT CASE WHEN g % 10 = 0 THEN 't' || (g % 7) ELSE 'big' END, g,
             g % {users} + 1, 'r' FROM generate_series(1, {rows}) g;
         CREATE TABLE events (at timestamptz NOT NULL, n int NOT NULL, actor_id bigint REFERENCES users(id),
             payload text);
         CREATE UNIQUE INDEX events_at_n ON events (at, n);
         ALTER TABLE events REPLICA IDENTITY USING INDEX events_at_n;
         INSERT INTO events SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', g,
             g % {users} + 1, 'e' || g FROM generate_series(1, {rows}) g;
         CREATE TABLE codes (code text COLLATE \"{coll}\" NOT NULL, owner_id bigint REFERENCES users(id));
         CREATE UNIQUE INDEX codes_code_c ON codes (code COLLATE \"C\");
         ALTER TABLE codes REPLICA IDENTITY USING INDEX codes_code_c;
         INSERT INTO codes SELECT CASE WHEN g % 3 = 0 THEN 'B' WHEN g % 3 = 1 THEN 'a' ELSE '_' END || g,
             g % {users} + 1 FROM generate_series(1, {rows}) g;
         ANALYZE;"
    ))
    .await
    .unwrap();
}

/// One transaction touching every table: inserts, updates (a key change on
/// `tags` and `memberships`), deletes.
async fn write_once(c: &Client, i: u64, users: i64) {
    let u = (i as i64 % users) + 1;
    let k = i % 50;
    c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO user_sessions (user_id, note) VALUES ({u}, 'w{i}');
         UPDATE user_sessions SET note = note || '+', user_id = {u}
             WHERE id = (SELECT id FROM user_sessions ORDER BY id LIMIT 1 OFFSET {k});
         INSERT INTO tags VALUES ('w{i}', {u});
         UPDATE tags SET code = code || 'x' WHERE code = (SELECT code FROM tags ORDER BY code LIMIT 1 OFFSET {k});
         INSERT INTO ledger VALUES (1000000 + {i} * 0.5, {u}, {i});
         DELETE FROM ledger WHERE entry = (SELECT entry FROM ledger ORDER BY entry LIMIT 1 OFFSET {k});
         INSERT INTO memberships VALUES ('big', 1000000 + {i}, {u}, 'w');
         UPDATE memberships SET seq = seq + 2000000
             WHERE (tenant, seq) = (SELECT tenant, seq FROM memberships WHERE seq < 1000000 ORDER BY tenant, seq LIMIT 1 OFFSET {k});
         INSERT INTO events VALUES (now(), {i}, {u}, 'w');
         INSERT INTO codes VALUES ('W{i}', {u});
         UPDATE codes SET owner_id = {u} WHERE code = (SELECT code FROM codes ORDER BY code COLLATE \"C\" LIMIT 1 OFFSET {k});
         UPDATE events SET actor_id = {u}, payload = payload || '+'
             WHERE (at, n) = (SELECT at, n FROM events ORDER BY at, n LIMIT 1 OFFSET {k});
         COMMIT;"
    ))
    .await
    .unwrap();
}

/// A writer running [`write_once`] until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(db: &TestDb, users: i64) -> Writer {
        let c = db.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn({
            let (stop, commits) = (stop.clone(), commits.clone());
            async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    write_once(&c, i, users).await;
                    commits.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Writer {
            stop,
            commits,
            handle,
        }
    }

    async fn wait_commits(&self, more: u64) {
        let target = self.commits.load(Ordering::Relaxed) + more;
        let commits = self.commits.clone();
        wait_for("writes", Duration::from_secs(120), || {
            let commits = commits.clone();
            async move { (commits.load(Ordering::Relaxed) >= target).then_some(()) }
        })
        .await;
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap();
        self.commits.load(Ordering::Relaxed)
    }
}

fn names() -> Vec<QualifiedName> {
    ANY_KEY_TABLES
        .iter()
        .map(|(t, _)| QualifiedName::new("public", *t))
        .collect()
}

async fn assert_translated_equal(c: &Client, left: &str, right: &str, t: &str, reference: &str) {
    let (missing, extra) =
        compare_translated(c, left, right, &[reference], "users", "id", "uuid_id").await;
    assert_eq!((missing, extra), (0, 0), "{t}: {right} differs from {left}");
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {right}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0, "{right} is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_key_tables_rewrite_stream_verify_and_cut_over() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let users = 100;
    any_key_schema(&c, users, 3_000).await;
    let tables: Vec<&str> = ANY_KEY_TABLES.iter().map(|(t, _)| *t).collect();

    // Writes run through the copy and the streaming.
    let writer = Writer::start(&db, users).await;
    let mut cfg = RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        names(),
    );
    // Split even these small tables: three sessions, two ranges each.
    cfg.copy_sessions = 3;
    cfg.copy.min_split_pages = 0;
    cfg.copy.ranges_per_session = 2;
    let (_stop_tx, stop_rx) = watch::channel(false);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, &tables, "streaming").await;
    writer.wait_commits(30).await;

    // Verify before cutover, under the writes.
    let report = verify::run(&db.spec, &names(), &RunOptions::default())
        .await
        .unwrap_or_else(|e| panic!("verify: {}", pg_rekey::error::chain(&e)));
    assert!(report.equal, "{report}");
    assert!(report
        .tables
        .iter()
        .all(|t| t.stage == Stage::BeforeCutover && t.verdict.left_rows > 0));

    writer.wait_commits(20).await;
    let commits = writer.stop().await;
    catch_up(&c).await;
    for (t, reference) in ANY_KEY_TABLES {
        assert_translated_equal(
            &c,
            &format!("public.{t}"),
            &format!("public._rekey_new_{t}"),
            t,
            reference,
        )
        .await;
    }

    // Cutover, with its own verify first.
    let report = cutover::run(&CutoverConfig {
        spec: db.spec.clone(),
        tables: names(),
        lock_timeout: Duration::from_millis(300),
        max_hold: Duration::from_secs(3),
        attempts: 10,
        backoff: Duration::from_millis(100),
        max_lag_bytes: 64 * 1024 * 1024,
        wait_for_lag: None,
        hooks: Default::default(),
        dry_run: false,
        skip_verify: false,
        verify_chunk_rows: 500,
        rewrite_dependents: false,
        way_back: false,
        direction: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("cutover: {}", pg_rekey::error::chain(&e)));
    assert!(report.swapped, "{report:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);

    // After cutover: old against new, by the tool and by the test.
    let report = verify::run(&db.spec, &names(), &RunOptions::default())
        .await
        .unwrap();
    assert!(report.equal, "{report}");
    assert!(report.tables.iter().all(|t| t.stage == Stage::AfterCutover));
    for (t, reference) in ANY_KEY_TABLES {
        assert_translated_equal(
            &c,
            &format!("public._rekey_old_{t}"),
            &format!("public.{t}"),
            t,
            reference,
        )
        .await;
        let ty: String = c
            .query_one(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2",
                &[&format!("public.{t}"), &reference],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ty, "uuid", "{t}.{reference}");
    }
    // The replica identity index came across with the table.
    let ri: String = c
        .query_one(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'public.events'::regclass AND indisreplident",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ri, "events_at_n");
    eprintln!("{commits} writer transactions during the rewrite");
}

/// A session inside a READ ONLY REPEATABLE READ transaction on snapshot `snap`.
async fn snapshot_session(db: &TestDb, snap: &str) -> Client {
    let c = db.client().await;
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snap}'"
    ))
    .await
    .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_key_splits_evenly_and_copies_every_row_once_under_the_snapshot() {
    use pg_rekey::copy::{
        bind_range, copy_table_parallel, key_columns, range_condition, split_points, CopyOptions,
        Progress,
    };
    use pg_rekey::idmap::IdMap;
    use pg_rekey::plan::catalog::{load_parent, load_table};

    let db = TestDb::new().await;
    let c = db.client().await;
    let users = 50;
    any_key_schema(&c, users, 4_000).await;
    // A skewed integer key: 1000 dense keys, then 3000 keys beyond 10¹².
    c.batch_execute(
        "CREATE TABLE skewed (id bigint PRIMARY KEY, user_id bigint REFERENCES users(id));
         INSERT INTO skewed SELECT g, g % 50 + 1 FROM generate_series(1, 1000) g;
         INSERT INTO skewed SELECT 1000000000000 + g, g % 50 + 1 FROM generate_series(1, 3000) g;
         ANALYZE skewed;",
    )
    .await
    .unwrap();
    let mut tables: Vec<(&str, &str)> = ANY_KEY_TABLES.to_vec();
    tables.push(("skewed", "user_id"));
    for (t, _) in &tables {
        c.batch_execute(&format!("CREATE TABLE expected_{t} AS SELECT * FROM {t}"))
            .await
            .unwrap();
    }
    let parent = load_parent(&c, &QualifiedName::new("public", "users"), "uuid_id")
        .await
        .unwrap();
    let mut details = Vec::new();
    for (t, _) in &tables {
        let d = load_table(&c, &QualifiedName::new("public", *t), &parent)
            .await
            .unwrap();
        for stmt in pg_rekey::ddl::create_shadow_for_copy(&d, &parent) {
            c.batch_execute(&stmt).await.unwrap();
        }
        details.push(d);
    }

    let exporter = db.client().await;
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snap: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let sources = [
        snapshot_session(&db, &snap).await,
        snapshot_session(&db, &snap).await,
    ];
    let targets = [db.client().await, db.client().await];
    // Written after the snapshot: must not be copied.
    for i in 1..=20 {
        write_once(&c, i, users).await;
    }
    c.batch_execute(
        "INSERT INTO skewed SELECT 500000 + g, 1 FROM generate_series(1, 500) g;
         DELETE FROM skewed WHERE id BETWEEN 100 AND 199;",
    )
    .await
    .unwrap();

    let map = IdMap::load(&sources[0], &parent).await.unwrap();
    let opts = CopyOptions {
        min_split_pages: 0,
        ranges_per_session: 2,
        ..CopyOptions::default()
    };
    let pairs: Vec<(&Client, &Client)> = sources.iter().zip(targets.iter()).collect();
    for ((t, _), d) in tables.iter().zip(&details) {
        // The split: four ranges of (nearly) equal row counts under the
        // snapshot, whatever the key's type and skew. The tables are small
        // enough to be sampled whole, so the quantiles are exact.
        let key = key_columns(&sources[0], &d.spec).await.unwrap();
        assert_eq!(key.len(), d.spec.key.len(), "{t}");
        let points = split_points(&sources[0], &d.spec, &key, 4, 0)
            .await
            .unwrap();
        assert_eq!(points.len(), 3, "{t}: {points:?}");
        let mut sizes = Vec::new();
        for i in 0..=points.len() {
            let lo = i.checked_sub(1).map(|j| points[j].as_slice());
            let hi = points.get(i).map(Vec::as_slice);
            bind_range(&sources[0], &d.spec, lo, hi).await.unwrap();
            let cond = range_condition(&key, lo.is_some(), hi.is_some());
            let n: i64 = sources[0]
                .query_one(
                    &format!(
                        "SELECT count(*) FROM ONLY {} WHERE {cond}",
                        d.spec.source.quoted()
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            sizes.push(n);
        }
        let total: i64 = sources[0]
            .query_one(
                &format!("SELECT count(*) FROM ONLY {}", d.spec.source.quoted()),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            sizes.iter().sum::<i64>(),
            total,
            "{t}: every row in one range"
        );
        let (min, max) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
        assert!(max - min <= 2, "{t}: ranges {sizes:?} are not even");

        let rows = copy_table_parallel(&pairs, &d.spec, &map, &Progress::new(), &opts)
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(rows as i64, total, "{t}");
    }
    for s in &sources {
        s.batch_execute("COMMIT").await.unwrap();
    }
    exporter.batch_execute("COMMIT").await.unwrap();
    // Every row of the snapshot exactly once (EXCEPT ALL counts duplicates),
    // nothing written after it.
    for (t, reference) in &tables {
        assert_translated_equal(
            &c,
            &format!("public.expected_{t}"),
            &format!("public._rekey_new_{t}"),
            t,
            reference,
        )
        .await;
    }
}

/// The key texts of the row `returning` returns.
async fn keys_of(c: &Client, stmt: &str) -> Vec<String> {
    let row = c.query_one(stmt, &[]).await.unwrap();
    (0..row.len()).map(|i| row.get::<_, String>(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_compares_any_key_in_chunks_and_names_each_difference() {
    use pg_rekey::verify::{RowDiffKind, VerifyOptions};

    let db = TestDb::new().await;
    let c = db.client().await;
    let users = 50;
    any_key_schema(&c, users, 1_500).await;
    let tables: Vec<&str> = ANY_KEY_TABLES.iter().map(|(t, _)| *t).collect();
    let mut cfg = RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        names(),
    );
    cfg.copy.min_split_pages = 0;
    let (stop_tx, stop_rx) = watch::channel(false);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, &tables, "streaming").await;
    for i in 1..=10 {
        write_once(&c, i, users).await;
    }

    let opts = RunOptions {
        compare: VerifyOptions {
            chunk_rows: 97,
            ..VerifyOptions::default()
        },
        ..RunOptions::default()
    };
    let report = verify::run(&db.spec, &names(), &opts).await.unwrap();
    assert!(report.equal, "{report}");
    for t in &report.tables {
        assert!(
            t.verdict.chunks >= 15 && t.verdict.left_rows >= 1_500,
            "{}: {} chunks, {} rows",
            t.table,
            t.verdict.chunks,
            t.verdict.left_rows
        );
    }

    // One difference per kind of key, in the middle of the key order.
    let session = keys_of(
        &c,
        "UPDATE _rekey_new_user_sessions SET note = 'tampered'
          WHERE id = (SELECT id FROM _rekey_new_user_sessions ORDER BY id OFFSET 700 LIMIT 1) RETURNING id::text",
    )
    .await;
    let code = keys_of(
        &c,
        "DELETE FROM _rekey_new_codes
          WHERE code = (SELECT code FROM _rekey_new_codes ORDER BY code COLLATE \"C\" OFFSET 800 LIMIT 1) RETURNING code",
    )
    .await;
    let membership = keys_of(
        &c,
        "UPDATE _rekey_new_memberships SET role = 'tampered'
          WHERE (tenant, seq) = (SELECT tenant, seq FROM _rekey_new_memberships ORDER BY tenant, seq OFFSET 900 LIMIT 1)
          RETURNING tenant, seq::text",
    )
    .await;
    let event = keys_of(
        &c,
        "UPDATE _rekey_new_events SET payload = 'tampered'
          WHERE (at, n) = (SELECT at, n FROM _rekey_new_events ORDER BY at, n OFFSET 1000 LIMIT 1)
          RETURNING at::text, n::text",
    )
    .await;
    let report = verify::run(&db.spec, &names(), &opts).await.unwrap();
    assert!(!report.equal);
    let expect: [(&str, Vec<String>, Option<&str>); 4] = [
        ("user_sessions", session, Some("note")),
        ("codes", code, None),
        ("memberships", membership, Some("role")),
        ("events", event, Some("payload")),
    ];
    for t in &report.tables {
        let found = expect.iter().find(|(name, _, _)| t.table.name == *name);
        let Some((name, key, column)) = found else {
            assert!(t.verdict.equal, "{}: {:?}", t.table, t.verdict.rows);
            continue;
        };
        assert_eq!(t.verdict.differing_rows, 1, "{name}: {:?}", t.verdict.rows);
        let row = &t.verdict.rows[0];
        let values: Vec<String> = row.key.iter().map(|k| k.value.clone()).collect();
        assert_eq!(&values, key, "{name}");
        match column {
            Some(col) => assert_eq!(
                row.kind,
                RowDiffKind::Changed {
                    columns: vec![col.to_string()]
                },
                "{name}"
            ),
            None => assert_eq!(row.kind, RowDiffKind::Missing, "{name}"),
        }
    }

    stop_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Aborted);
}
