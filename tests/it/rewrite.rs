//! `rewrite` end to end against a real server: copy under the slot's
//! snapshot, then the stream applied while writers run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pg_rekey::pg::QualifiedName;
use pg_rekey::progress::JobProgress;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::state;
use pg_rekey::workload::{self, Workload, WorkloadOptions, REFERENCING_TABLES};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::support::{compare_translated, wait_for, TestDb};

/// A rewrite of `tables` of the example schema (parent `users`, uuid column `uuid_id`).
pub fn example_config(db: &TestDb, tables: &[&str]) -> RewriteConfig {
    RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        tables
            .iter()
            .map(|t| QualifiedName::new("public", *t))
            .collect(),
    )
}

/// Wait until every job row of the tables is in `phase`.
pub async fn wait_phase(c: &Client, tables: &[&str], phase: &str) {
    wait_for(
        &format!("{tables:?} to be {phase}"),
        Duration::from_secs(120),
        || async {
            let jobs = state::list_jobs(c).await.ok()?;
            let ok = tables
                .iter()
                .all(|t| jobs.iter().any(|j| j.source.name == *t && j.phase == phase));
            if let Some(failed) = jobs.iter().find(|j| j.phase == "failed") {
                panic!("job failed: {:?}", failed.error);
            }
            ok.then_some(())
        },
    )
    .await
}

/// Fence through the stream and wait until the jobs applied past it.
pub async fn catch_up(c: &Client) {
    let jobs = state::list_jobs(c).await.unwrap();
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.job_id).collect();
    let fence = pg_rekey::fence::emit(c, "test").await.unwrap();
    let drained =
        pg_rekey::fence::wait_drained(c, &ids, fence, Instant::now() + Duration::from_secs(120))
            .await
            .unwrap();
    assert!(drained, "jobs did not apply past the fence");
}

/// The reference columns of the example schema's tables.
pub fn refs_of(table: &str) -> &'static [&'static str] {
    match table {
        "sessions" | "api_access_tokens" => &["user_id"],
        "partner_applications" => &["created_by_user_id"],
        "chat_messages" => &["sender_id"],
        _ => &["reader_id"],
    }
}

async fn assert_no_leftovers(c: &Client) {
    let slots = crate::support::slots_in_database(c).await;
    let pubs: i64 = c
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    let shadows: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rekey\\_%' AND relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (slots, pubs, shadows),
        (0, 0, 0),
        "slots, publications, shadows left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_equal_sources_under_concurrent_writes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 500, 5_000).await.unwrap();

    // Writers run through the copy and the streaming.
    let load = Workload::start(&db.spec, WorkloadOptions::default())
        .await
        .unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let config = example_config(&db, REFERENCING_TABLES);
    let progress = JobProgress::new();
    let job = tokio::spawn({
        let progress = progress.clone();
        async move { rewrite::run(&config, stop_rx, progress).await }
    });
    wait_phase(&c, REFERENCING_TABLES, "streaming").await;
    // Keep writing while streaming.
    let stats = load.stats.clone();
    let at_streaming = stats.commits.load(Ordering::Relaxed);
    wait_for("writes while streaming", Duration::from_secs(60), || {
        let s = stats.clone();
        async move { (s.commits.load(Ordering::Relaxed) > at_streaming + 300).then_some(()) }
    })
    .await;
    let stats = load.stop().await;
    catch_up(&c).await;

    for t in REFERENCING_TABLES {
        let shadow = format!("public._rekey_new_{t}");
        let (missing, extra) = compare_translated(
            &c,
            &format!("public.{t}"),
            &shadow,
            refs_of(t),
            "users",
            "id",
            "uuid_id",
        )
        .await;
        assert_eq!(
            (missing, extra),
            (0, 0),
            "{t}: shadow differs from the translated source; {}",
            stats.summary()
        );
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {shadow}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(n > 0, "{t} shadow is empty");
    }
    // The TOASTed payload survived updates that left it unchanged.
    let big: i64 = c
        .query_one(
            "SELECT count(*) FROM public._rekey_new_sessions WHERE length(payload) > 5000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(big > 0);
    assert!(
        progress
            .tables()
            .iter()
            .map(|t| t.changes_applied())
            .sum::<u64>()
            > 0
            || stats.commits.load(Ordering::Relaxed) > 0
    );

    // Ctrl-C: everything the job created is removed.
    stop_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Aborted);
    assert_no_leftovers(&c).await;
    assert!(state::list_jobs(&c).await.unwrap().is_empty());
}
