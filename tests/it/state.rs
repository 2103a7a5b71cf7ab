//! The job state store on a real server.

use pg_rekey::pg::{Lsn, QualifiedName};
use pg_rekey::state::{
    applied_lsn, delete_job, ensure_schema, get_job, list_jobs, record_applied, record_cutover,
    record_progress, record_snapshot, register_job, set_error, set_phase, NewJob, Phase,
    StateError,
};
use uuid::Uuid;

use crate::support::TestDb;

fn job(job_id: Uuid, table: &str) -> NewJob {
    let source = QualifiedName::new("public", table);
    NewJob {
        job_id,
        shadow: pg_rekey::ddl::shadow_name(&source),
        source,
        source_oid: 4242,
        slot_name: "pg_rekey_slot".into(),
        publication_name: "pg_rekey_pub".into(),
        rows_estimate: 1000,
        parent: QualifiedName::new("public", "users"),
        parent_uuid_column: "uuid_id".into(),
        spec: None,
    }
}

#[tokio::test]
async fn schema_creation_is_idempotent_and_safe_concurrently() {
    let db = TestDb::new().await;
    let c = db.client().await;
    assert!(
        list_jobs(&c).await.unwrap().is_empty(),
        "no schema yet: no jobs"
    );
    assert!(!delete_job(&c, &QualifiedName::new("public", "t"))
        .await
        .unwrap());

    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(db.client().await);
    }
    let results = futures_util::future::join_all(clients.iter().map(ensure_schema)).await;
    for r in results {
        r.unwrap();
    }
    ensure_schema(&c).await.unwrap();
    let tables: Vec<String> = c
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'pgrekey'::regnamespace AND relkind = 'r' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        ["held_constraints", "held_definitions", "jobs", "prepare"],
        "each table once"
    );
}

#[tokio::test]
async fn job_rows_round_trip() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    ensure_schema(&c).await.unwrap();
    let id = Uuid::new_v4();
    let sessions = QualifiedName::new("public", "sessions");
    let tokens = QualifiedName::new("public", "api_access_tokens");
    register_job(&c, &job(id, "sessions")).await.unwrap();
    register_job(&c, &job(id, "api_access_tokens"))
        .await
        .unwrap();

    // A second job for the same table is refused, naming the first.
    let e = register_job(&c, &job(Uuid::new_v4(), "sessions"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StateError::AlreadyRegistered { job_id, .. } if job_id == id),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("pg-rekey abort --table public.sessions"),
        "{e}"
    );

    let row = get_job(&c, &sessions).await.unwrap().unwrap();
    assert_eq!(row.phase(), Some(Phase::Copying));
    assert_eq!(row.shadow_table, "public._rekey_new_sessions");
    assert_eq!(row.owner_pid, Some(std::process::id() as i32));
    assert_eq!((row.rows_copied, row.rows_estimate), (0, 1000));
    assert_eq!(row.applied_lsn, None);

    record_snapshot(
        &c,
        id,
        "0/16B3748".parse().unwrap(),
        Some("00000003-00000002-1"),
    )
    .await
    .unwrap();
    record_progress(&c, &sessions, Some(500), None)
        .await
        .unwrap();
    record_progress(&c, &sessions, None, Some(4096))
        .await
        .unwrap();
    let row = get_job(&c, &sessions).await.unwrap().unwrap();
    assert_eq!((row.rows_copied, row.lag_bytes), (500, Some(4096)));
    assert_eq!(row.consistent_lsn, Some("0/16B3748".parse().unwrap()));

    // Phases follow the allowed transitions only.
    let e = set_phase(&c, &sessions, Phase::CutOver).await.unwrap_err();
    assert!(matches!(e, StateError::BadTransition { .. }), "{e}");
    set_phase(&c, &sessions, Phase::Streaming).await.unwrap();
    set_phase(&c, &tokens, Phase::Streaming).await.unwrap();

    // The applied LSN commits with the apply transaction, or not at all.
    let txn = c.transaction().await.unwrap();
    record_applied(&txn, id, Lsn(0x2000)).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(applied_lsn(&c, id).await.unwrap(), None);
    let txn = c.transaction().await.unwrap();
    record_applied(&txn, id, Lsn(0x3000)).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(applied_lsn(&c, id).await.unwrap(), Some(Lsn(0x3000)));
    let txn = c.transaction().await.unwrap();
    record_applied(&txn, id, Lsn(0x2500)).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(
        applied_lsn(&c, id).await.unwrap(),
        Some(Lsn(0x3000)),
        "never backwards"
    );

    set_phase(&c, &sessions, Phase::CuttingOver).await.unwrap();
    record_cutover(&c, &sessions, &pg_rekey::ddl::old_name(&sessions), false)
        .await
        .unwrap();
    set_error(
        &c,
        &tokens,
        "TRUNCATE of public.api_access_tokens at 0/3000",
    )
    .await
    .unwrap();

    let jobs = list_jobs(&c).await.unwrap();
    assert_eq!(jobs.len(), 2);
    let json = serde_json::to_value(&jobs).unwrap();
    assert_eq!(json[0]["table"], "public.api_access_tokens");
    assert_eq!(json[0]["phase"], "failed");
    assert_eq!(
        json[0]["error"],
        "TRUNCATE of public.api_access_tokens at 0/3000"
    );
    assert_eq!(json[1]["table"], "public.sessions");
    assert_eq!(json[1]["phase"], "cut_over");
    assert_eq!(json[1]["old_table"], "public._rekey_old_sessions");
    assert_eq!(json[1]["applied_lsn"], "0/3000");
    assert_eq!(json[1]["rows_copied"], 500);
    assert!(json[1]["created_at"].as_str().unwrap().ends_with('Z'));

    // Abort removes the rows; doing it twice is fine; the apply then stops.
    assert!(delete_job(&c, &sessions).await.unwrap());
    assert!(delete_job(&c, &tokens).await.unwrap());
    assert!(!delete_job(&c, &tokens).await.unwrap());
    let txn = c.transaction().await.unwrap();
    let e = record_applied(&txn, id, Lsn(0x4000)).await.unwrap_err();
    assert!(matches!(e, StateError::JobNotFound { .. }), "{e}");
    txn.rollback().await.unwrap();
    assert!(list_jobs(&c).await.unwrap().is_empty());
}
