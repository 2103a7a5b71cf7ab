//! `demo` and `soak` end to end against the harness's server: each creates
//! its own database next to the test's, runs the whole scenario under a
//! concurrent workload, and reports figures the test checks against the data.

use std::time::Duration;

use pg_rekey::demo::{self, DemoConfig, DemoSummary};
use pg_rekey::soak::{self, SoakConfig};
use pg_rekey::workload::REFERENCING_TABLES;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::support::TestDb;

async fn database_exists(c: &Client, name: &str) -> bool {
    c.query_one(
        "SELECT count(*) FROM pg_database WHERE datname = $1",
        &[&name],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

/// The verdict every successful run must carry.
fn assert_passed(s: &DemoSummary) {
    assert!(s.passed(), "{s}");
    assert!(s.cutover.swapped, "{s}");
    let last = s.cutover.attempts.last().expect("at least one attempt");
    assert_eq!(last.outcome, "swapped");
    assert!(last.lock_hold_ms.is_some());
    assert!(
        s.verification.passed && s.verification.error.is_none(),
        "{s}"
    );
    let before = s
        .verification
        .before_cutover
        .as_ref()
        .expect("verified before the swap");
    assert!(
        before.passed && before.error.is_none() && before.rows_compared > 0,
        "{s}"
    );
    assert_eq!(before.differing_rows, 0);
    assert_eq!(s.tables.len(), REFERENCING_TABLES.len());
    for t in &s.tables {
        assert!(t.rows_copied > 0, "{s}");
        let (old, new) = (t.old_rows.unwrap(), t.new_rows.unwrap());
        assert_eq!(old, new, "{}: {s}", t.table);
        assert_eq!(t.differing_rows, Some(0));
        assert_eq!(t.before_differing_rows, Some(0));
        // Both sides hold rows: the comparison was not vacuous.
        assert!(old > 0);
    }
    assert_eq!(
        s.verification.rows_compared,
        s.tables.iter().map(|t| t.old_rows.unwrap()).sum::<u64>()
    );
    assert!(s.rows_copied >= s.rows_seeded / 2, "{s}");
    assert!(
        s.workload.writes_committed > 0 && s.workload.reads > 0,
        "{s}"
    );
    // Measured from the jobs' recorded positions (the job's own change
    // counter is only published between stream messages).
    assert!(
        s.wal_applied_bytes > 0,
        "the stream was applied under load: {s}"
    );
    assert!(s.rewrite_outcome.starts_with("cut over"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rewrites_cuts_over_and_verifies_under_load_then_keeps_what_it_reports() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (_tx, rx) = watch::channel(false);
    let cfg = DemoConfig {
        server: Some(db.spec.clone()),
        users: 300,
        rows: 5_000,
        writers: 3,
        readers: 2,
        stream_for: Duration::from_secs(2),
        keep_database: true,
    };
    let s = demo::run(&cfg, rx).await.unwrap();
    eprintln!("{s}");
    assert_passed(&s);
    assert!(!s.database_dropped);

    // What the summary says matches the kept database: the old tables (frozen
    // at the swap) hold the rows it counted, the new tables have uuid
    // references, and the verification gate is gone.
    assert!(database_exists(&c, &s.database).await);
    let kept = db.spec.with_dbname(&s.database);
    let k = crate::support::connect(&kept).await;
    for t in &s.tables {
        let old = t.old_table.as_deref().expect("old table named");
        let n: i64 = k
            .query_one(&format!("SELECT count(*) FROM {old}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(Some(n as u64), t.old_rows, "{}", t.table);
    }
    let ty: String = k
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.sessions'::regclass AND attname = 'user_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "uuid");
    let gates: i64 = k
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'rekey_demo_gate'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gates, 0);
    drop(k);
    c.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", s.database))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_passes_and_drops_its_database() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (_tx, rx) = watch::channel(false);
    let cfg = SoakConfig {
        users: 200,
        rows: 3_000,
        writers: 2,
        readers: 1,
        ..SoakConfig::new(db.spec.clone(), Duration::from_secs(6))
    };
    let s = soak::run(&cfg, rx).await.unwrap();
    eprintln!("{s}");
    assert_passed(&s);
    assert_eq!(s.kind, "soak");
    assert!(s.database.starts_with("pg_rekey_soak_"));
    assert!(s.database_dropped);
    assert!(!database_exists(&c, &s.database).await);
    // No slot of the run is left on the server.
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
            &[&s.database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}
