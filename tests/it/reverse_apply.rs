//! The way back after cutover ([`Applier::add_reverse`]): changes of a live
//! uuid table, streamed from a real logical replication slot, applied to
//! the old integer table with every uuid translated back to the parent's
//! key as of the source transaction's commit. No swap here: the live table
//! `t` (uuid references) and the old table `_rekey_old_t` (integer
//! references, the same rows translated) are made by hand, the publication
//! holds the parent and the live tables, and an `Applier` is driven from
//! the stream as `rewrite` drives it. Every test asserts on data: the old
//! tables equal the live ones translated back through `users` (a join),
//! row for row.

use std::time::Duration;

use pg_rekey::apply::{Applied, Applier, BatchLimits, FENCE_PREFIX};
use pg_rekey::error::Error;
use pg_rekey::idmap::IdMap;
use pg_rekey::pg::{Lsn, QualifiedName};
use pg_rekey::plan::model::{ColumnSpec, IntKind, ParentSpec, TableSpec};
use pg_rekey::replication::pgoutput;
use pg_rekey::replication::stream::LogicalStream;
use pg_rekey::replication::wire::{ReplicationClient, SnapshotAction, StartOptions};
use pg_rekey::replication::ReplicationError;
use pg_rekey::state;
use tokio_postgres::Client;

use crate::support::{SlotGuard, TestDb};

/// `users` keyed by `bigserial`, with a unique uuid; `t` and `m` reference
/// `users (uuid_id)` (some keys deferred, as Django makes them; `m` keyed by
/// its reference, replica identity full); their old tables hold the keys.
const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(), name text);
CREATE TABLE t (
    id bigint PRIMARY KEY,
    user_id uuid REFERENCES users (uuid_id) ON DELETE CASCADE ON UPDATE CASCADE,
    other_user uuid REFERENCES users (uuid_id) ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED,
    n integer NOT NULL DEFAULT 0,
    body text
);
-- Out of line and uncompressed: an update that leaves it alone streams it as unchanged TOAST.
ALTER TABLE t ALTER body SET STORAGE EXTERNAL;
CREATE TABLE m (
    user_id uuid NOT NULL REFERENCES users (uuid_id) ON DELETE CASCADE ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED,
    team text NOT NULL,
    role text,
    PRIMARY KEY (user_id, team)
);
ALTER TABLE m REPLICA IDENTITY FULL;
-- The old tables: integer references, no keys of their own to the parent
-- (a key there would cascade or refuse the live workload's deletes).
CREATE TABLE _rekey_old_t (id bigint PRIMARY KEY, user_id bigint, other_user integer, n integer NOT NULL DEFAULT 0, body text);
CREATE TABLE _rekey_old_m (user_id bigint NOT NULL, team text NOT NULL, role text, PRIMARY KEY (user_id, team));
INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 60) g;
INSERT INTO t SELECT g, (SELECT uuid_id FROM users WHERE id = 1 + g % 60),
                  CASE WHEN g % 3 = 0 THEN (SELECT uuid_id FROM users WHERE id = 1 + (g * 7) % 60) END,
                  0, repeat(md5(g::text), 200)
    FROM generate_series(1, 200) g;
INSERT INTO m SELECT uuid_id, 'team' || (id % 3), NULL FROM users;
INSERT INTO _rekey_old_t SELECT t.id, u.id, o.id, t.n, t.body
    FROM t LEFT JOIN users u ON u.uuid_id = t.user_id LEFT JOIN users o ON o.uuid_id = t.other_user;
INSERT INTO _rekey_old_m SELECT u.id, m.team, m.role FROM m JOIN users u ON u.uuid_id = m.user_id;
";

fn col(name: &str, attnum: i16, ty: &str, oid: u32, r: Option<IntKind>) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        attnum,
        type_sql: ty.into(),
        type_oid: oid,
        reference: r,
        not_null: false,
        generated: false,
        identity: None,
    }
}

/// One job's way back, ready to stream.
struct Setup {
    c: Client,
    job_id: uuid::Uuid,
    slot: String,
    publication: String,
    consistent: Lsn,
    repl: Option<ReplicationClient>,
    forward: Vec<TableSpec>,
    reverse: Vec<TableSpec>,
    parent: ParentSpec,
    map: IdMap,
    _guard: SlotGuard,
}

async fn oid(c: &Client, table: &str) -> u32 {
    c.query_one("SELECT $1::text::regclass::oid", &[&table])
        .await
        .unwrap()
        .get(0)
}

async fn setup(db: &TestDb) -> Setup {
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let publication = db.unique("rev_pub");
    let slot = db.unique("rev_slot");
    c.batch_execute(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE users, t, m"
    ))
    .await
    .unwrap();
    state::ensure_schema(&c).await.unwrap();
    let job_id = uuid::Uuid::new_v4();
    let name = |n: &str| QualifiedName::new("public", n);
    let parent = pg_rekey::plan::catalog::load_parent(&c, &name("users"), "uuid_id")
        .await
        .unwrap();
    // The forward specs as the rewrite had them: source = the original
    // table (now `_rekey_old_*`, whose oid it kept), shadow = `_rekey_new_*`.
    let forward = vec![
        TableSpec {
            source: name("t"),
            oid: oid(&c, "_rekey_old_t").await,
            shadow: name("_rekey_new_t"),
            columns: vec![
                col("id", 1, "bigint", 20, None),
                col("user_id", 2, "bigint", 20, Some(IntKind::Int8)),
                col("other_user", 3, "integer", 23, Some(IntKind::Int4)),
                col("n", 4, "integer", 23, None),
                col("body", 5, "text", 25, None),
            ],
            key: vec![0],
        },
        TableSpec {
            source: name("m"),
            oid: oid(&c, "_rekey_old_m").await,
            shadow: name("_rekey_new_m"),
            columns: vec![
                col("user_id", 1, "bigint", 20, Some(IntKind::Int8)),
                col("team", 2, "text", 25, None),
                col("role", 3, "text", 25, None),
            ],
            key: vec![0, 1],
        },
    ];
    let mut reverse = Vec::new();
    for f in &forward {
        let live = oid(&c, &f.source.name).await;
        let old = name(&format!("_rekey_old_{}", f.source.name));
        reverse.push(f.reversed(live, old));
    }
    for s in &reverse {
        state::register_job(
            &c,
            &state::NewJob {
                job_id,
                source: s.source.clone(),
                source_oid: s.oid,
                shadow: s.shadow.clone(),
                slot_name: slot.clone(),
                publication_name: publication.clone(),
                rows_estimate: 0,
                parent: parent.table.clone(),
                parent_uuid_column: parent.uuid_column.clone(),
                spec: None,
            },
        )
        .await
        .unwrap();
    }
    let guard = SlotGuard::new(&db.spec, &slot);
    let mut repl = ReplicationClient::connect(&db.spec).await.unwrap();
    let info = repl
        .create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    // Nothing writes between the slot and this read: the map as of the
    // consistent point.
    let map = IdMap::default();
    for r in c.query("SELECT id, uuid_id FROM users", &[]).await.unwrap() {
        map.upsert(r.get(0), r.get(1));
    }
    Setup {
        c,
        job_id,
        slot,
        publication,
        consistent: info.consistent_point,
        repl: Some(repl),
        forward,
        reverse,
        parent,
        map,
        _guard: guard,
    }
}

impl Setup {
    /// A stream from `from` (the setup's own connection the first time).
    async fn stream(&mut self, db: &TestDb, from: Lsn) -> LogicalStream {
        for _ in 0..100 {
            let client = match self.repl.take() {
                Some(c) => c,
                None => ReplicationClient::connect(&db.spec).await.unwrap(),
            };
            match client
                .start_replication(
                    &self.slot,
                    from,
                    std::slice::from_ref(&self.publication),
                    StartOptions::default(),
                )
                .await
            {
                Ok(s) => return s,
                // The previous walsender may still hold the slot for a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("cannot start replication on {}", self.slot);
    }

    /// An applier from `applied`, forward and reversed specs registered.
    async fn applier(&self, db: &TestDb, applied: Lsn) -> Applier {
        let session = pg_rekey::pg::connect(&db.spec, "apply").await.unwrap();
        let mut a = Applier::new(
            session,
            self.job_id,
            self.forward.clone(),
            self.parent.clone(),
            self.map.clone(),
            applied,
            BatchLimits::default(),
        )
        .await
        .unwrap();
        a.add_reverse(self.reverse.clone()).await.unwrap();
        a
    }

    async fn fence(&self, tag: &str) {
        self.c
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&FENCE_PREFIX, &tag],
            )
            .await
            .unwrap();
    }

    async fn applied(&self) -> Lsn {
        state::applied_lsn(&self.c, self.job_id)
            .await
            .unwrap()
            .unwrap_or(self.consistent)
    }
}

/// How the driver commits shadow transactions and when it stops.
#[derive(Clone, Copy)]
struct Drive<'a> {
    /// Stop after the commit of the transaction carrying this fence.
    fence: &'a str,
    /// Commit the shadow transaction after this many source commits.
    flush_every: usize,
    /// Stop (without flushing) after this many source commits.
    stop_after: Option<usize>,
}

/// Feed the stream to the applier as `rewrite` does.
async fn drive(
    applier: &mut Applier,
    stream: &mut LogicalStream,
    d: Drive<'_>,
) -> Result<(), Error> {
    let feedback = stream.feedback();
    let mut fence_seen = false;
    let mut commits = 0;
    loop {
        let data = tokio::time::timeout(Duration::from_secs(60), stream.recv())
            .await
            .expect("the stream went quiet before the fence")?;
        let msg = pgoutput::decode(data.payload).map_err(ReplicationError::from)?;
        match applier.handle(msg, data.wal_start).await? {
            Applied::Fence(f) if f == d.fence => fence_seen = true,
            Applied::Committed(_) => {
                commits += 1;
                if d.stop_after == Some(commits) {
                    return Ok(());
                }
                if fence_seen {
                    let at = applier.record_position().await?;
                    feedback.confirm(at);
                    return Ok(());
                }
                if commits % d.flush_every == 0 {
                    let at = applier.flush().await?;
                    feedback.confirm(at);
                }
            }
            _ => {}
        }
    }
}

/// Rows of the live tables (uuids translated back through `users`) not in
/// the old ones, and rows of the old tables not in the translated live
/// ones, per table.
async fn differences(c: &Client) -> Vec<(&'static str, i64, i64)> {
    let pairs = [
        (
            "t",
            "SELECT t.id, u.id, o.id, t.n, t.body FROM t
               LEFT JOIN users u ON u.uuid_id = t.user_id LEFT JOIN users o ON o.uuid_id = t.other_user",
            "SELECT id, user_id, other_user::bigint, n, body FROM _rekey_old_t",
        ),
        (
            "m",
            "SELECT u.id, m.team, m.role FROM m LEFT JOIN users u ON u.uuid_id = m.user_id",
            "SELECT user_id, team, role FROM _rekey_old_m",
        ),
    ];
    let mut out = Vec::new();
    for (table, live, old) in pairs {
        let row = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM ({live} EXCEPT ALL {old}) a),
                            (SELECT count(*) FROM ({old} EXCEPT ALL {live}) b)"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((table, row.get(0), row.get(1)));
    }
    out
}

async fn assert_equal(c: &Client) {
    for (table, missing, extra) in differences(c).await {
        assert_eq!(
            (missing, extra),
            (0, 0),
            "_rekey_old_{table} differs from {table} translated back (missing, extra)"
        );
    }
}

/// The workload: every kind of change the way back must carry, one
/// scenario per transaction.
async fn workload(c: &Client) {
    let uuid_of = |id: i64| async move {
        c.query_one("SELECT uuid_id FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get::<_, uuid::Uuid>(0)
    };
    let u14 = uuid_of(14).await;
    let steps: Vec<String> = vec![
        // Inserts, references changed, TOAST left alone, deletes, key changes.
        "INSERT INTO t SELECT g, (SELECT uuid_id FROM users WHERE id = 1 + g % 60), NULL, 1, 'new'
             FROM generate_series(201, 260) g".into(),
        "UPDATE t SET user_id = (SELECT uuid_id FROM users WHERE id = 1 + (t.id * 13) % 60), n = n + 1
             WHERE id % 5 = 0".into(),
        "UPDATE t SET n = n + 7 WHERE id <= 100".into(),
        "DELETE FROM t WHERE id % 11 = 0".into(),
        "UPDATE t SET id = id + 10000 WHERE id BETWEEN 20 AND 25".into(),
        // The reference is the key (identity full): updates and a key change.
        "UPDATE m SET role = 'admin' WHERE team = 'team1'".into(),
        "UPDATE m SET user_id = (SELECT uuid_id FROM users WHERE id = 60)
             WHERE user_id = (SELECT uuid_id FROM users WHERE id = 59)".into(),
        // Deferred keys: children name a user inserted later in the transaction.
        "BEGIN;
         INSERT INTO t VALUES (500, NULL, 'aaaaaaaa-0000-4000-8000-000000000001', 5, 'ahead');
         INSERT INTO m VALUES ('aaaaaaaa-0000-4000-8000-000000000001', 'late', 'x');
         UPDATE t SET n = 6 WHERE id = 500;
         INSERT INTO users (uuid_id, name) VALUES ('aaaaaaaa-0000-4000-8000-000000000001', 'late');
         INSERT INTO t VALUES (501, 'aaaaaaaa-0000-4000-8000-000000000001', NULL, 1, 'after');
         COMMIT".into(),
        // A parent's key changes (uuid kept): the old tables follow.
        "UPDATE users SET id = 5000 WHERE id = 5".into(),
        // Two keys exchanged through a third.
        "BEGIN;
         UPDATE users SET id = -10 WHERE id = 10;
         UPDATE users SET id = 10 WHERE id = 11;
         UPDATE users SET id = 11 WHERE id = -10;
         COMMIT".into(),
        // A key moves away and a new user takes it; both referenced.
        "BEGIN;
         UPDATE users SET id = 6000 WHERE id = 6;
         INSERT INTO users (id, name) VALUES (6, 'new six');
         INSERT INTO t VALUES (502, (SELECT uuid_id FROM users WHERE id = 6), NULL, 0, 'six');
         INSERT INTO t VALUES (503, (SELECT uuid_id FROM users WHERE id = 6000), NULL, 0, 'old six');
         COMMIT".into(),
        // Parents' uuids change (cascaded to the live rows; the keys stay).
        "UPDATE users SET uuid_id = gen_random_uuid() WHERE id IN (7, 8)".into(),
        // Users deleted with cascades.
        "BEGIN;
         UPDATE t SET other_user = NULL WHERE other_user IN (SELECT uuid_id FROM users WHERE id IN (12, 13));
         DELETE FROM users WHERE id IN (12, 13);
         COMMIT".into(),
        // Django's order: the parent first, its deferred children after.
        format!(
            "BEGIN;
             DELETE FROM users WHERE id = 14;
             DELETE FROM t WHERE other_user = '{u14}';
             COMMIT"
        ),
        // A key deleted and inserted again with a new uuid, referenced.
        "BEGIN;
         UPDATE t SET other_user = NULL WHERE other_user = (SELECT uuid_id FROM users WHERE id = 15);
         DELETE FROM users WHERE id = 15;
         INSERT INTO users (id, name) VALUES (15, 'reborn');
         INSERT INTO t VALUES (504, (SELECT uuid_id FROM users WHERE id = 15), NULL, 0, 'reborn');
         COMMIT".into(),
        // Many small transactions on few rows.
        "DO $$ BEGIN
           FOR i IN 1..30 LOOP
             UPDATE t SET n = n + i, user_id = (SELECT uuid_id FROM users WHERE id = 1 + (i * 7) % 4 + 30) WHERE id = 100 + i % 4;
             COMMIT;
           END LOOP;
         END $$".into(),
    ];
    for s in steps {
        c.batch_execute(&s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_the_old_tables_follow_the_live_ones_translated_back() {
    let db = TestDb::new().await;
    let mut s = setup(&db).await;
    assert_equal(&s.c).await;
    let mut stream = s.stream(&db, s.consistent).await;
    let mut applier = s.applier(&db, s.consistent).await;

    workload(&s.c).await;
    s.fence("end").await;
    let d = Drive {
        fence: "end",
        flush_every: 1,
        stop_after: None,
    };
    if let Err(e) = drive(&mut applier, &mut stream, d).await {
        panic!("the way back stopped: {}", pg_rekey::error::chain(&e));
    }
    assert_equal(&s.c).await;

    // The scenarios left their marks (not just equal: changed).
    let q = |sql: &'static str| {
        let c = &s.c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert!(
        q("SELECT count(*) FROM _rekey_old_t WHERE user_id = 5000 OR other_user = 5000").await > 0
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_t WHERE id = 500 AND other_user = 61 AND n = 6").await,
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_m WHERE user_id = 61 AND team = 'late'").await,
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_t WHERE id = 503 AND user_id = 6000").await,
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_t WHERE id = 502 AND user_id = 6").await,
        1
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_t WHERE user_id IN (12, 13, 14)").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_m WHERE user_id IN (12, 13, 14, 59)").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_t WHERE id BETWEEN 10020 AND 10025").await,
        5,
        "20..25 moved, 22 deleted before"
    );
    assert_eq!(
        q("SELECT count(*) FROM _rekey_old_t WHERE id <= 100 AND length(body) = 6400").await,
        q("SELECT count(*) FROM t WHERE id <= 100 AND length(body) = 6400").await,
        "unchanged TOAST values kept"
    );
    // Exactly once: the position is recorded with the applied changes.
    assert!(s.applied().await > s.consistent);
    let _ = stream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_a_uuid_with_no_parent_stops_the_job_and_writes_nothing_of_its_transaction() {
    let db = TestDb::new().await;
    let mut s = setup(&db).await;
    let mut stream = s.stream(&db, s.consistent).await;
    let mut applier = s.applier(&db, s.consistent).await;
    for sql in [
        "INSERT INTO t VALUES (898, (SELECT uuid_id FROM users WHERE id = 1), NULL, 0, 'before')",
        "ALTER TABLE t DROP CONSTRAINT t_user_id_fkey",
    ] {
        s.c.batch_execute(sql).await.unwrap();
    }
    s.fence("before").await;
    drive(
        &mut applier,
        &mut stream,
        Drive {
            fence: "before",
            flush_every: 1,
            stop_after: None,
        },
    )
    .await
    .unwrap();
    let applied_before = s.applied().await;
    let stranger = uuid::Uuid::new_v4();
    s.c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO t VALUES (900, (SELECT uuid_id FROM users WHERE id = 2), NULL, 0, 'same transaction');
         UPDATE t SET n = 99 WHERE id = 898;
         INSERT INTO t VALUES (901, '{stranger}', NULL, 0, 'orphan');
         COMMIT"
    ))
    .await
    .unwrap();
    s.fence("after").await;
    let e = drive(
        &mut applier,
        &mut stream,
        Drive {
            fence: "after",
            flush_every: 1,
            stop_after: None,
        },
    )
    .await
    .expect_err("an orphaned uuid must stop the way back");
    applier.rollback().await;
    let text = e.to_string();
    for part in ["public.t.user_id", &stranger.to_string(), "LSN "] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
    assert!(matches!(e, Error::Data(_)), "a definite error: {e:?}");
    let n: i64 =
        s.c.query_one(
            "SELECT count(*) FROM _rekey_old_t WHERE id IN (900, 901) OR (id = 898 AND n <> 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing of the orphan's transaction was written");
    let n: i64 =
        s.c.query_one("SELECT count(*) FROM _rekey_old_t WHERE id = 898", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 1, "the transactions before it were");
    assert_eq!(s.applied().await, applied_before, "no position past it");
    let _ = stream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_a_restart_resumes_from_the_recorded_position_without_doubling() {
    let db = TestDb::new().await;
    let mut s = setup(&db).await;
    let mut stream = s.stream(&db, s.consistent).await;
    let mut applier = s.applier(&db, s.consistent).await;
    workload(&s.c).await;
    s.fence("end").await;
    // Shadow transactions of four source transactions each; stop in the
    // middle of one (after parent key changes were applied, uncommitted).
    drive(
        &mut applier,
        &mut stream,
        Drive {
            fence: "end",
            flush_every: 4,
            stop_after: Some(11),
        },
    )
    .await
    .unwrap();
    assert!(applier.in_transaction(), "stopped with work not committed");
    applier.rollback().await;
    let resume = s.applied().await;
    assert!(
        resume > s.consistent,
        "something was committed before the stop"
    );
    applier.revert_map_after(resume);
    drop(applier);
    let _ = stream.stop().await;

    let mut stream = s.stream(&db, resume).await;
    let mut applier = s.applier(&db, resume).await;
    // A key change applied twice would find no row; a doubled re-pointing
    // or insert would show in the comparison.
    if let Err(e) = drive(
        &mut applier,
        &mut stream,
        Drive {
            fence: "end",
            flush_every: 3,
            stop_after: None,
        },
    )
    .await
    {
        panic!(
            "the resumed way back stopped: {}",
            pg_rekey::error::chain(&e)
        );
    }
    assert_equal(&s.c).await;
    let _ = stream.stop().await;
}
