//! The replication client against a real server: authentication, commands,
//! snapshots, streaming, feedback, a killed walsender, and the environment
//! errors an operator can meet.
//!
//! pgoutput payloads are inspected by hand here (first byte, the Insert's
//! first text column, the Commit's end LSN) so these tests do not depend on
//! the decoder.

use std::time::Duration;

use pg_rekey::embedded::{Cluster, ClusterOptions};
use pg_rekey::pg::{quote_literal, ConnSpec, Lsn};
use pg_rekey::replication::stream::{commit_end_lsn, LogicalStream, StartOptions, XLogData};
use pg_rekey::replication::wire::{ReplicationClient, SnapshotAction};
use pg_rekey::replication::ReplicationError;
use tokio_postgres::Client;

use crate::support::{self, wait_for, SlotGuard, TestDb};

const LONG: Duration = Duration::from_secs(60);

async fn repl(spec: &ConnSpec) -> ReplicationClient {
    ReplicationClient::connect(spec)
        .await
        .unwrap_or_else(|e| panic!("replication connect: {e}"))
}

fn guard(db: &TestDb, name: &str) -> SlotGuard {
    SlotGuard::new(&db.spec, name)
}

async fn slot_count(c: &Client, slot: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

async fn confirmed_flush(c: &Client, slot: &str) -> Lsn {
    let s: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    s.parse().unwrap()
}

async fn current_wal(c: &Client) -> Lsn {
    let s: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    s.parse().unwrap()
}

/// The first column of a pgoutput Insert as text (`'I'`, relid, `'N'`,
/// column count, then `'t'`, length, bytes).
fn insert_first_text(payload: &[u8]) -> Option<String> {
    if payload.first() != Some(&b'I') || payload.get(5) != Some(&b'N') {
        return None;
    }
    if payload.get(8) != Some(&b't') {
        return None;
    }
    let len = u32::from_be_bytes(payload.get(9..13)?.try_into().ok()?) as usize;
    String::from_utf8(payload.get(13..13 + len)?.to_vec()).ok()
}

/// One received transaction: inserted first-column values and the commit's end LSN.
#[derive(Debug)]
struct Txn {
    ids: Vec<String>,
    end: Lsn,
}

async fn next_event(s: &mut LogicalStream) -> Result<XLogData, ReplicationError> {
    tokio::time::timeout(LONG, s.recv())
        .await
        .expect("no replication event within a minute")
}

async fn next_txn(s: &mut LogicalStream) -> Txn {
    let mut ids = Vec::new();
    let mut began = false;
    loop {
        let ev = next_event(s)
            .await
            .unwrap_or_else(|e| panic!("stream: {e}"));
        match ev.payload.first() {
            Some(b'B') => began = true,
            Some(b'I') => ids.extend(insert_first_text(&ev.payload)),
            Some(b'C') => {
                assert!(began, "commit without begin");
                let end = commit_end_lsn(&ev.payload).unwrap().unwrap();
                return Txn { ids, end };
            }
            _ => {}
        }
    }
}

/// A table `t(id int primary key)` in a publication; returns (client, publication).
async fn published_table(db: &TestDb) -> (Client, String) {
    let c = db.client().await;
    let publ = db.unique("pub");
    c.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE unpublished (v int); \
         CREATE PUBLICATION {publ} FOR TABLE t"
    ))
    .await
    .unwrap();
    (c, publ)
}

fn one_line(e: &ReplicationError) -> String {
    let text = e.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text}");
    text
}

#[tokio::test]
async fn authenticates_with_each_method() {
    let db = TestDb::new().await;
    // Trust (the harness superuser).
    let mut c = repl(&db.spec).await;
    assert_eq!(
        c.identify_system().await.unwrap().dbname.as_deref(),
        Some(&*db.name)
    );
    c.close().await.unwrap();
    if !support::own_cluster() {
        return;
    }
    for role in [
        support::MD5_ROLE,
        support::SCRAM_ROLE,
        support::PASSWORD_ROLE,
    ] {
        let spec = db.spec.with_user(role, Some(support::ROLE_PASSWORD));
        let mut c = ReplicationClient::connect(&spec)
            .await
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let who = c.simple_query("SELECT current_user").await.unwrap();
        assert_eq!(who, vec![vec![Some(role.to_string())]]);
        c.close().await.unwrap();

        let wrong = db.spec.with_user(role, Some("not the password"));
        let e = ReplicationClient::connect(&wrong).await.unwrap_err();
        let text = one_line(&e);
        assert_eq!(e.sqlstate(), Some("28P01"), "{role}: {text}");
        assert!(text.contains("PGPASSWORD"), "{text}");
        assert!(!e.is_transient());

        let none = db.spec.with_user(role, None);
        let e = ReplicationClient::connect(&none).await.unwrap_err();
        assert!(
            matches!(e, ReplicationError::Auth(_)) && one_line(&e).contains("password"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn identify_system_matches_the_server() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    let mut c = repl(&db.spec).await;
    let before = current_wal(&sql).await;
    let info = c.identify_system().await.unwrap();
    let sysid: String = sql
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(info.systemid, sysid);
    assert!(info.timeline >= 1);
    assert!(info.xlogpos >= before, "{} < {before}", info.xlogpos);
    if support::own_cluster() {
        assert_eq!(c.server_major(), support::server_major());
        assert_eq!(c.show("wal_sender_timeout").await.unwrap(), "4s");
    }
    assert!(c.parameter("server_version").is_some());
    // Session settings are pinned on the replication connection too.
    assert_eq!(c.show("TimeZone").await.unwrap(), "UTC");
    c.close().await.unwrap();
}

#[tokio::test]
async fn exported_snapshot_and_stream_meet_at_the_consistent_point() {
    let db = TestDb::new().await;
    let (sql, publ) = published_table(&db).await;
    sql.batch_execute("INSERT INTO t VALUES (1), (2), (3)")
        .await
        .unwrap();
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    let info = c.create_slot(&slot, SnapshotAction::Export).await.unwrap();
    assert_eq!(info.slot_name, slot);
    assert_eq!(info.output_plugin, "pgoutput");
    let snap = info.snapshot_name.clone().expect("exported snapshot name");
    // Committed after the consistent point: streamed, not in the snapshot.
    // Two statements, two transactions (one simple query would be one).
    sql.batch_execute("INSERT INTO t VALUES (4)").await.unwrap();
    sql.batch_execute("INSERT INTO t VALUES (5)").await.unwrap();
    let reader = db.client().await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snap)
        ))
        .await
        .unwrap();
    let ids: Vec<i32> = reader
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        ids,
        vec![1, 2, 3],
        "the snapshot holds exactly the rows before the slot"
    );

    let mut s = c
        .start_replication(
            &slot,
            info.consistent_point,
            &[publ],
            StartOptions::default(),
        )
        .await
        .unwrap();
    let a = next_txn(&mut s).await;
    let b = next_txn(&mut s).await;
    assert_eq!(
        (a.ids, b.ids),
        (vec!["4".to_string()], vec!["5".to_string()])
    );
    assert!(info.consistent_point < a.end && a.end < b.end);
    let mut c = s.stop().await.unwrap();
    c.drop_slot(&slot, true).await.unwrap();
    assert_eq!(slot_count(&sql, &slot).await, 0);
}

#[tokio::test]
async fn use_snapshot_inside_repeatable_read_on_the_replication_connection() {
    let db = TestDb::new().await;
    let (sql, _publ) = published_table(&db).await;
    sql.batch_execute("INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    c.simple_query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let info = c.create_slot(&slot, SnapshotAction::Use).await.unwrap();
    assert_eq!(info.snapshot_name, None);
    sql.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    let rows = c
        .simple_query("SELECT id FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![Some("1".to_string())], vec![Some("2".to_string())]]
    );
    c.simple_query("COMMIT").await.unwrap();
    // Outside the transaction the new row is visible.
    let rows = c.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows, vec![vec![Some("3".to_string())]]);
    c.drop_slot(&slot, true).await.unwrap();
    assert_eq!(slot_count(&sql, &slot).await, 0);
}

#[tokio::test]
async fn stream_survives_an_unread_consumer_past_wal_sender_timeout() {
    let db = TestDb::new().await;
    let (sql, publ) = published_table(&db).await;
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    let info = c
        .create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    let timeout = c.show("wal_sender_timeout").await.unwrap();
    // A one-event buffer: the reader task blocks as soon as the consumer
    // stops reading, so only the status writer keeps the walsender alive.
    let opts = StartOptions {
        buffer: 1,
        ..StartOptions::default()
    };
    let mut s = c
        .start_replication(&slot, info.consistent_point, &[publ], opts)
        .await
        .unwrap();
    let pid = s.backend_pid();
    for i in 1..=3 {
        sql.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    // Not reading. Wait until the walsender has lived through more than two
    // whole timeouts, checking each time that it is still there.
    let secs: f64 = wait_for("walsender to outlive 2 × wal_sender_timeout", LONG, || async {
        let row = sql
            .query_opt(
                "SELECT extract(epoch FROM now() - backend_start)::float8, \
                        extract(epoch FROM current_setting('wal_sender_timeout')::interval)::float8 \
                 FROM pg_stat_replication WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        let row = row.unwrap_or_else(|| panic!("walsender {pid} is gone (timeout {timeout})"));
        let (age, t): (f64, f64) = (row.get(0), row.get(1));
        (t > 0.0 && age > 2.0 * t).then_some(age)
    })
    .await;
    assert!(secs > 0.0);
    // The stream continues: all three transactions, in commit order.
    let mut ends = Vec::new();
    for i in 1..=3 {
        let t = next_txn(&mut s).await;
        assert_eq!(t.ids, vec![i.to_string()]);
        ends.push(t.end);
    }
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
    sql.execute("INSERT INTO t VALUES (4)", &[]).await.unwrap();
    let t = next_txn(&mut s).await;
    assert_eq!(t.ids, vec!["4"]);
    assert!(t.end > ends[2]);
    assert!(s.feedback().last_reported().is_some());
    let mut c = s.stop().await.unwrap();
    c.drop_slot(&slot, true).await.unwrap();
}

#[tokio::test]
async fn confirm_moves_the_slot_only_to_confirmed_commits() {
    let db = TestDb::new().await;
    let (sql, publ) = published_table(&db).await;
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    let info = c
        .create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    let mut s = c
        .start_replication(
            &slot,
            info.consistent_point,
            &[publ],
            StartOptions::default(),
        )
        .await
        .unwrap();
    let pid = s.backend_pid();
    for i in 1..=3 {
        sql.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let t1 = next_txn(&mut s).await;
    let t2 = next_txn(&mut s).await;
    let t3 = next_txn(&mut s).await;
    let fb = s.feedback();
    fb.confirm(t1.end);
    // Between two commits: only t1 is covered.
    fb.confirm(Lsn(t2.end.0 - 1));
    // Older confirms are ignored.
    fb.confirm(info.consistent_point);
    assert_eq!(fb.position(), t1.end);
    wait_for("slot at t1's end", LONG, || async {
        (confirmed_flush(&sql, &slot).await == t1.end).then_some(())
    })
    .await;
    // Unpublished writes and more statuses must not move it past t2.
    sql.batch_execute("INSERT INTO unpublished VALUES (1)")
        .await
        .unwrap();
    let target = current_wal(&sql).await;
    let first_reply = reply_time(&sql, pid).await;
    wait_for(
        "walsender past the unpublished write and a later status",
        LONG,
        || async {
            let sent: String = sql
                .query_one(
                    "SELECT sent_lsn::text FROM pg_stat_replication WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            let sent: Lsn = sent.parse().unwrap();
            (sent >= target && reply_time(&sql, pid).await > first_reply + 1.5).then_some(())
        },
    )
    .await;
    let flushed = confirmed_flush(&sql, &slot).await;
    assert_eq!(
        flushed, t1.end,
        "never past the unconfirmed t2 ({})",
        t2.end
    );
    fb.confirm(t3.end);
    wait_for("slot at or past t3's end", LONG, || async {
        (confirmed_flush(&sql, &slot).await >= t3.end).then_some(())
    })
    .await;
    let mut c = s.stop().await.unwrap();
    c.drop_slot(&slot, true).await.unwrap();
}

/// Seconds since the epoch of the walsender's last status from us.
async fn reply_time(sql: &Client, pid: i32) -> f64 {
    sql.query_one(
        "SELECT coalesce(extract(epoch FROM reply_time)::float8, 0) FROM pg_stat_replication WHERE pid = $1",
        &[&pid],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn idle_stream_advances_past_unpublished_writes() {
    let db = TestDb::new().await;
    let (sql, publ) = published_table(&db).await;
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    let info = c
        .create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    let mut s = c
        .start_replication(
            &slot,
            info.consistent_point,
            &[publ],
            StartOptions::default(),
        )
        .await
        .unwrap();
    // PostgreSQL 14 sends a transaction that changed nothing published as an
    // empty BEGIN/COMMIT (15 and later skip it); a consumer confirms it like
    // any other transaction.
    let server_num: i32 = sql
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let sends_empty = server_num < 150000;
    sql.batch_execute("INSERT INTO unpublished SELECT generate_series(1, 100)")
        .await
        .unwrap();
    let after = current_wal(&sql).await;
    if sends_empty {
        let empty = next_txn(&mut s).await;
        assert!(empty.ids.is_empty());
        s.feedback().confirm(empty.end);
    }
    // Nothing published changed and nothing is pending: the keepalive's WAL
    // end is reported, so the slot does not pin the WAL of unpublished writes.
    wait_for("slot past unpublished writes", LONG, || async {
        (confirmed_flush(&sql, &slot).await >= after).then_some(())
    })
    .await;
    // A published commit that is received but not confirmed holds it back.
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let t = next_txn(&mut s).await;
    // Status updates are sent from their own task: wait for one sent after t
    // arrived (one sent before may still land and move the slot up to t's
    // start), then take the position the slot is held at.
    let pid = s.backend_pid();
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    wait_for("a status sent after t arrived", LONG, || async {
        (reply_time(&sql, pid).await > received).then_some(())
    })
    .await;
    let held = confirmed_flush(&sql, &slot).await;
    assert!(held < t.end);
    sql.batch_execute("INSERT INTO unpublished SELECT generate_series(1, 100)")
        .await
        .unwrap();
    let later = current_wal(&sql).await;
    let r0 = reply_time(&sql, pid).await;
    wait_for(
        "walsender past the second batch and a later status",
        LONG,
        || async {
            let sent: String = sql
                .query_one(
                    "SELECT sent_lsn::text FROM pg_stat_replication WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            (sent.parse::<Lsn>().unwrap() >= later && reply_time(&sql, pid).await > r0 + 1.5)
                .then_some(())
        },
    )
    .await;
    assert_eq!(confirmed_flush(&sql, &slot).await, held);
    s.feedback().confirm(t.end);
    if sends_empty {
        let empty = next_txn(&mut s).await;
        assert!(empty.ids.is_empty());
        s.feedback().confirm(empty.end);
    }
    wait_for(
        "slot past the second batch once t is confirmed",
        LONG,
        || async { (confirmed_flush(&sql, &slot).await >= later).then_some(()) },
    )
    .await;
    let mut c = s.stop().await.unwrap();
    c.drop_slot(&slot, true).await.unwrap();
}

#[tokio::test]
async fn terminated_walsender_resumes_without_loss_or_redelivery() {
    let db = TestDb::new().await;
    let (sql, publ) = published_table(&db).await;
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    let info = c
        .create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    for i in 1..=5 {
        sql.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let mut s = c
        .start_replication(
            &slot,
            info.consistent_point,
            std::slice::from_ref(&publ),
            StartOptions::default(),
        )
        .await
        .unwrap();
    let mut txns = Vec::new();
    for _ in 1..=5 {
        txns.push(next_txn(&mut s).await);
    }
    let ids: Vec<_> = txns.iter().flat_map(|t| t.ids.clone()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    s.feedback().confirm(txns[1].end);
    wait_for("slot at txn 2's end", LONG, || async {
        (confirmed_flush(&sql, &slot).await == txns[1].end).then_some(())
    })
    .await;
    let pid = s.backend_pid();
    sql.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = loop {
        match next_event(&mut s).await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    let text = one_line(&e);
    assert!(e.is_transient(), "{text}");
    assert_eq!(e.sqlstate(), Some("57P01"), "{text}");
    assert!(text.contains("reconnect"), "{text}");
    assert!(s.recv().await.is_err(), "the stream stays ended");
    drop(s);

    // Committed while nobody was connected.
    sql.execute("INSERT INTO t VALUES (6)", &[]).await.unwrap();
    wait_for("slot released", LONG, || async {
        let active: bool = sql
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        (!active).then_some(())
    })
    .await;
    // Resume as a restarted job would: from its own checkpoint (txn 2's end).
    let c = repl(&db.spec).await;
    let mut s = c
        .start_replication(&slot, txns[1].end, &[publ], StartOptions::default())
        .await
        .unwrap();
    let mut again = Vec::new();
    for _ in 3..=6 {
        again.push(next_txn(&mut s).await);
    }
    let ids: Vec<_> = again.iter().flat_map(|t| t.ids.clone()).collect();
    assert_eq!(
        ids,
        ["3", "4", "5", "6"],
        "none lost, none before the confirmed point"
    );
    for (a, b) in again.iter().zip(&txns[2..]) {
        assert_eq!(a.end, b.end, "same commits, same positions");
    }
    let mut c = s.stop().await.unwrap();
    c.drop_slot(&slot, true).await.unwrap();
    assert_eq!(slot_count(&sql, &slot).await, 0);
}

#[tokio::test]
async fn drop_slot_leaves_no_slot_and_a_missing_slot_is_explained() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    c.create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    assert_eq!(slot_count(&sql, &slot).await, 1);
    c.drop_slot(&slot, true).await.unwrap();
    assert_eq!(slot_count(&sql, &slot).await, 0);
    let e = c.drop_slot(&slot, false).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"));
    assert!(one_line(&e).contains("does not exist"), "{e}");
    // The connection is still usable after an error.
    assert!(c.identify_system().await.is_ok());
    let e = c
        .create_slot("Bad-Name", SnapshotAction::NoExport)
        .await
        .unwrap_err();
    assert!(matches!(e, ReplicationError::InvalidName { .. }), "{e}");
}

#[tokio::test]
async fn existing_slot_name_is_explained() {
    let db = TestDb::new().await;
    let slot = db.unique("slot");
    let _g = guard(&db, &slot);
    let mut c = repl(&db.spec).await;
    c.create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap();
    let e = c
        .create_slot(&slot, SnapshotAction::NoExport)
        .await
        .unwrap_err();
    let text = one_line(&e);
    assert_eq!(e.sqlstate(), Some("42710"), "{text}");
    assert!(
        text.contains("already exists") && text.contains("pg_drop_replication_slot"),
        "{text}"
    );
    c.drop_slot(&slot, true).await.unwrap();
}

#[tokio::test]
async fn role_without_replication_is_explained() {
    let db = TestDb::new().await;
    let sql = db.client().await;
    let role = db.unique("norepl");
    sql.batch_execute(&format!("CREATE ROLE {role} LOGIN NOREPLICATION"))
        .await
        .unwrap();
    let e = ReplicationClient::connect(&db.spec.with_user(&role, None))
        .await
        .unwrap_err();
    sql.batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
    let text = one_line(&e);
    assert_eq!(e.sqlstate(), Some("42501"), "{text}");
    assert!(
        text.contains("ALTER ROLE") && text.contains("REPLICATION"),
        "{text}"
    );
    assert!(!e.is_transient());
}

#[tokio::test]
async fn unreachable_server_and_silent_server_are_explained() {
    let db = TestDb::new().await;
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spec = ConnSpec {
        port,
        ..db.spec.clone()
    };
    let e = ReplicationClient::connect(&spec).await.unwrap_err();
    let text = one_line(&e);
    assert!(matches!(e, ReplicationError::Unreachable { .. }), "{text}");
    assert!(
        text.contains("is the server running") || text.contains("check that the server is running"),
        "{text}"
    );
    assert!(e.is_transient());
    // A listener that never answers: connect_timeout applies.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spec = ConnSpec {
        port: silent.local_addr().unwrap().port(),
        connect_timeout: Duration::from_millis(300),
        ..db.spec.clone()
    };
    let e = ReplicationClient::connect(&spec).await.unwrap_err();
    assert!(matches!(e, ReplicationError::Timeout { .. }), "{e}");
    assert!(one_line(&e).contains("connect_timeout"));
}

async fn start_cluster(extra: Vec<String>) -> Cluster {
    tokio::task::spawn_blocking(move || {
        Cluster::start(&ClusterOptions {
            extra_conf: extra,
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("extra cluster: {e}"))
}

#[tokio::test]
async fn wal_level_replica_is_explained() {
    if std::env::var_os("PGREKEY_TEST_DSN").is_some() {
        return; // needs a cluster of our own
    }
    let cluster = start_cluster(vec!["wal_level = replica".into()]).await;
    // This cluster's Unix socket lives beside its data directory: connect there.
    let dir = cluster.data_dir().parent().unwrap().to_path_buf();
    let unix = ConnSpec {
        host: pg_rekey::pg::Host::Unix(dir),
        ..cluster.spec("postgres")
    };
    let mut c = repl(&unix).await;
    assert_eq!(
        c.identify_system().await.unwrap().dbname.as_deref(),
        Some("postgres")
    );
    let e = c
        .create_slot("rekey_walcheck", SnapshotAction::NoExport)
        .await
        .unwrap_err();
    let text = one_line(&e);
    assert_eq!(e.sqlstate(), Some("55000"), "{text}");
    assert!(
        text.contains("wal_level = logical") && text.contains("restart"),
        "{text}"
    );
    assert!(!e.is_transient());
}

#[tokio::test]
async fn no_free_slot_or_wal_sender_is_explained() {
    if std::env::var_os("PGREKEY_TEST_DSN").is_some() {
        return; // needs a cluster of our own
    }
    let cluster = start_cluster(vec![
        "max_replication_slots = 1".into(),
        "max_wal_senders = 1".into(),
    ])
    .await;
    let spec = cluster.spec("postgres");
    let mut c = repl(&spec).await;
    c.create_slot("rekey_one", SnapshotAction::NoExport)
        .await
        .unwrap();
    let e = c
        .create_slot("rekey_two", SnapshotAction::NoExport)
        .await
        .unwrap_err();
    let text = one_line(&e);
    assert_eq!(e.sqlstate(), Some("53400"), "{text}");
    assert!(text.contains("max_replication_slots"), "{text}");
    // The only WAL sender is taken by `c`.
    let e = ReplicationClient::connect(&spec).await.unwrap_err();
    let text = one_line(&e);
    assert_eq!(e.sqlstate(), Some("53300"), "{text}");
    assert!(text.contains("max_wal_senders"), "{text}");
    c.drop_slot("rekey_one", true).await.unwrap();
    c.close().await.unwrap();
}
