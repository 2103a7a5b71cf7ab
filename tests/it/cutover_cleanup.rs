//! A cutover cleans up after itself: killed with `kill -9` while it holds
//! the parent's lock and queues for the table's, its backend gives every
//! lock back within about a second (`client_connection_check_interval`),
//! instead of blocking the application until `--lock-timeout`; a cutover
//! that finds the swap already done validates the keys a killed one left
//! `NOT VALID`.

use std::time::{Duration, Instant};

use pg_rekey::rewrite::{self, RewriteOutcome};
use pg_rekey::workload;
use tokio::sync::watch;

use crate::support::{wait_lock_queued, TestDb};

type RewriteJob = tokio::task::JoinHandle<Result<RewriteOutcome, pg_rekey::Error>>;

async fn streaming(
    db: &TestDb,
    c: &tokio_postgres::Client,
    tables: &[&str],
) -> (watch::Sender<bool>, RewriteJob) {
    workload::create_schema(c).await.unwrap();
    workload::seed(c, 50, 500).await.unwrap();
    let (tx, rx) = watch::channel(false);
    let cfg = crate::rewrite::example_config(db, tables);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    crate::rewrite::wait_phase(c, tables, "streaming").await;
    (tx, job)
}

async fn locks_of(c: &tokio_postgres::Client, pid: i32) -> i64 {
    c.query_one("SELECT count(*) FROM pg_locks WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cutover_gives_its_locks_back() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (stop, job) = streaming(&db, &c, &["sessions"]).await;

    // A reader holds ACCESS SHARE on sessions: the cutover takes the
    // parent's lock, then queues for the table's.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM sessions")
        .await
        .unwrap();
    let mut spec = db.spec.clone();
    spec.application_name = format!("killed-cutover-{}", db.name);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .args(["cutover", "--dsn", &spec.to_dsn(), "--table", "sessions"])
        .args(["--lock-timeout", "60s", "--attempts", "1", "--skip-verify"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pg-rekey cutover");
    wait_lock_queued(&c, "sessions").await;
    let pid: i32 = c
        .query_one(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
              WHERE NOT l.granted AND l.relation = 'sessions'::regclass AND a.application_name = $1",
            &[&spec.application_name],
        )
        .await
        .expect("the cutover's backend queues for sessions")
        .get(0);
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND granted AND relation = 'users'::regclass",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        held > 0,
        "the cutover should hold the parent's lock while it queues"
    );

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed = Instant::now();
    // Bounded wait, far below the cutover's 60 s lock_timeout: without the
    // connection check the backend keeps its locks that long.
    let mut left = locks_of(&c, pid).await;
    while left > 0 && killed.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = locks_of(&c, pid).await;
    }
    eprintln!(
        "killed cutover's backend {pid}: {left} locks left {:?} after kill -9",
        killed.elapsed()
    );
    assert_eq!(
        left, 0,
        "the killed cutover's backend still holds or awaits locks"
    );
    // The application's writes to the parent go through again.
    let writer = db.client().await;
    writer
        .batch_execute("SET lock_timeout = '5s'; UPDATE users SET id = id WHERE id = 1")
        .await
        .unwrap();

    blocker.batch_execute("COMMIT").await.unwrap();
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_after_an_interrupted_one_validates_its_keys() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (_stop, job) = streaming(&db, &c, &["sessions"]).await;
    let cfg = crate::cutover::cutover_cfg(&db, &["sessions"]);
    assert!(pg_rekey::cutover::run(&cfg).await.unwrap().swapped);
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);

    // What a cutover killed right after COMMIT leaves: the new key NOT VALID.
    let (name, def): (String, String) = {
        let r = c
            .query_one(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                  WHERE conrelid = 'sessions'::regclass AND contype = 'f'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    c.batch_execute(&format!(
        "ALTER TABLE sessions DROP CONSTRAINT \"{name}\";
         ALTER TABLE sessions ADD CONSTRAINT \"{name}\" {def} NOT VALID"
    ))
    .await
    .unwrap();
    let not_valid = || async {
        c.query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sessions'::regclass AND NOT convalidated",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(not_valid().await, 1);

    let report = pg_rekey::cutover::run(&cfg).await.unwrap();
    assert!(report.swapped, "{report:?}");
    assert_eq!(
        not_valid().await,
        0,
        "the key left NOT VALID was not validated"
    );
}
