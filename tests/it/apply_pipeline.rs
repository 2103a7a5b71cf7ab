//! The applier pipelines row changes (sends without waiting for each answer).
//! These scenarios prove that a failing change is still caught, attributed to
//! its own LSN and table, and that nothing of its shadow transaction — not
//! even the changes sent before it — is committed or recorded as applied.

use std::time::Duration;

use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig};
use pg_rekey::state;
use pg_rekey::workload;
use tokio::sync::watch;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_finds_no_shadow_row_behind_many_changes_in_flight_stops_the_job() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 50, 500).await.unwrap();
    let table = QualifiedName::new("public", "chat_messages");
    let rcfg = RewriteConfig {
        spec: db.spec.clone(),
        parent: QualifiedName::new("public", "users"),
        uuid_column: "uuid_id".into(),
        tables: vec![table.clone()],
        batch: Default::default(),
        copy: Default::default(),
        copy_sessions: 1,
        throttle: Default::default(),
        reconnect_timeout: std::time::Duration::from_secs(300),
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, &["chat_messages"], "streaming").await;
    catch_up(&c).await;
    let job_id = state::get_job(&c, &table).await.unwrap().unwrap().job_id;
    let applied_before = state::applied_lsn(&c, job_id).await.unwrap();

    // A row disappears from the shadow behind the tool's back.
    let victim: i64 = c
        .query_one("SELECT min(id) FROM _rekey_new_chat_messages", &[])
        .await
        .unwrap()
        .get(0);
    c.execute(
        "DELETE FROM _rekey_new_chat_messages WHERE id = $1",
        &[&victim],
    )
    .await
    .unwrap();
    // One source transaction: 300 inserts (in flight when the update is
    // sent), the update of the missing row, then 50 more inserts.
    c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO chat_messages (sender_id, content) SELECT 1, 'before ' || g FROM generate_series(1, 300) g;
         UPDATE chat_messages SET content = 'changed' WHERE id = {victim};
         INSERT INTO chat_messages (sender_id, content) SELECT 1, 'after ' || g FROM generate_series(1, 50) g;
         COMMIT"
    ))
    .await
    .unwrap();

    let err = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the job should stop")
        .unwrap()
        .expect_err("the job must fail on the diverged row");
    let msg = err.to_string();
    assert!(msg.contains("UPDATE at LSN"), "{msg}");
    assert!(
        msg.contains("found no row in public._rekey_new_chat_messages"),
        "{msg}"
    );

    // Nothing of that transaction reached the shadow, not even the inserts
    // sent before the failing update, and the applied position did not move.
    let leaked: i64 = c
        .query_one(
            "SELECT count(*) FROM _rekey_new_chat_messages WHERE content LIKE 'before %' OR content LIKE 'after %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
    assert_eq!(
        state::applied_lsn(&c, job_id).await.unwrap(),
        applied_before
    );
    let j = state::get_job(&c, &table).await.unwrap().unwrap();
    assert_eq!(j.phase, "failed");
    assert!(j.error.unwrap_or_default().contains("found no row"));
    pg_rekey::abort::abort(&db.spec, &[table]).await.unwrap();
}
