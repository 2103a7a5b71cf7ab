//! The shared example schema and workload run against a real server.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pg_rekey::workload::{self, Workload, WorkloadOptions};

use crate::support::{wait_for, TestDb};

#[tokio::test]
async fn workload_writes_every_table_and_reads() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 200, 1000).await.unwrap();
    let before: i64 = c
        .query_one("SELECT count(*) FROM sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, 200);
    let toasted: i64 = c
        .query_one(
            "SELECT count(*) FROM sessions WHERE pg_column_size(payload) > 2000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        toasted > 0,
        "some payloads are large enough to be stored out of line"
    );

    let w = Workload::start(&db.spec, WorkloadOptions::default())
        .await
        .unwrap();
    let stats = w.stats.clone();
    wait_for(
        "300 committed writer transactions",
        Duration::from_secs(60),
        || {
            let s = stats.clone();
            async move { (s.commits.load(Ordering::Relaxed) >= 300).then_some(()) }
        },
    )
    .await;
    let stats = w.stop().await;
    assert_eq!(
        stats.type_switches.load(Ordering::Relaxed),
        0,
        "no swap happened: {}",
        stats.summary()
    );
    assert!(stats.reads.load(Ordering::Relaxed) > 0);
    // Every kind of change reached the tables.
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM users WHERE email LIKE 'new%'),
                    (SELECT count(*) FROM users WHERE email LIKE 'multi%'),
                    (SELECT count(*) FROM partner_applications WHERE id > 1000000000),
                    (SELECT count(*) FROM sessions WHERE payload = 'fresh')",
            &[],
        )
        .await
        .unwrap();
    for i in 0..4 {
        let n: i64 = row.get(i);
        assert!(
            n > 0,
            "workload operation kind {i} never committed; {}",
            stats.summary()
        );
    }
}

/// The seed's spreading arithmetic runs in 64 bits: above ~100 k rows a
/// 32-bit `g * 104729` overflowed and `demo --rows 200000` failed.
#[tokio::test]
async fn seed_takes_more_than_a_hundred_thousand_rows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 50, 110_000).await.unwrap();
    let counts: Vec<i64> = c
        .query_one(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM api_access_tokens),
                    (SELECT count(*) FROM chat_messages), (SELECT count(*) FROM message_reads),
                    (SELECT count(DISTINCT user_id) FROM api_access_tokens)",
            &[],
        )
        .await
        .map(|r| (0..5).map(|i| r.get(i)).collect())
        .unwrap();
    assert_eq!(counts, [22_000, 22_000, 22_000, 22_000, 50]);
}
