//! `cutover` end to end: rewrite running under a workload, then the swap.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pg_rekey::cutover::{self, CutoverConfig};
use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::state;
use pg_rekey::workload::{self, Workload, WorkloadOptions, REFERENCING_TABLES};
use tokio::sync::watch;

use crate::rewrite::{refs_of, wait_phase};
use crate::support::{compare_translated, wait_for, TestDb};

fn rewrite_cfg(db: &TestDb, tables: &[&str]) -> RewriteConfig {
    crate::rewrite::example_config(db, tables)
}

/// A cutover of `tables` with test-friendly limits and no pre-swap verify.
pub fn cutover_cfg(db: &TestDb, tables: &[&str]) -> CutoverConfig {
    CutoverConfig {
        spec: db.spec.clone(),
        tables: tables
            .iter()
            .map(|t| QualifiedName::new("public", *t))
            .collect(),
        lock_timeout: Duration::from_millis(300),
        max_hold: Duration::from_secs(3),
        attempts: 10,
        backoff: Duration::from_millis(100),
        max_lag_bytes: 64 * 1024 * 1024,
        wait_for_lag: None,
        hooks: Default::default(),
        dry_run: false,
        skip_verify: true,
        verify_chunk_rows: 10_000,
        rewrite_dependents: false,
        way_back: false,
        direction: Default::default(),
    }
}

type RewriteJob = tokio::task::JoinHandle<Result<RewriteOutcome, pg_rekey::Error>>;

/// Start `rewrite` of `tables` in a task and wait until they stream. Keep
/// the sender: dropping it stops the rewrite.
async fn start_rewrite(
    db: &TestDb,
    c: &tokio_postgres::Client,
    tables: &[&str],
) -> (watch::Sender<bool>, RewriteJob) {
    let (tx, rx) = watch::channel(false);
    let rcfg = rewrite_cfg(db, tables);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(c, tables, "streaming").await;
    (tx, job)
}

/// A database with the example schema (50 users, 500 rows) and a rewrite of
/// `tables` streaming.
async fn small_streaming(
    tables: &[&str],
) -> (
    TestDb,
    tokio_postgres::Client,
    watch::Sender<bool>,
    RewriteJob,
) {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 50, 500).await.unwrap();
    let (stop, job) = start_rewrite(&db, &c, tables).await;
    (db, c, stop, job)
}

/// The rewrite exits on its own, reporting its tables cut over.
async fn assert_cut_over(job: RewriteJob) {
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the rewrite exits after the cutover")
        .expect("the rewrite task did not panic")
        .expect("the rewrite succeeded");
    assert_eq!(outcome, RewriteOutcome::CutOver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tables_swap_atomically_under_writes_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 300, 3_000).await.unwrap();
    let load = Workload::start(&db.spec, WorkloadOptions::default())
        .await
        .unwrap();

    let (_stop_tx, stop_rx) = watch::channel(false);
    let rcfg = rewrite_cfg(&db, REFERENCING_TABLES);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, REFERENCING_TABLES, "streaming").await;

    // Dry run prints the swap and changes nothing.
    let mut dry = cutover_cfg(&db, REFERENCING_TABLES);
    dry.dry_run = true;
    let report = cutover::run(&dry).await.unwrap();
    assert!(!report.swapped);
    let sql = report.dry_run_sql.join("\n");
    assert!(
        sql.contains("LOCK TABLE") && sql.contains("RENAME TO"),
        "{sql}"
    );
    assert!(state::list_jobs(&c)
        .await
        .unwrap()
        .iter()
        .all(|j| j.phase == "streaming"));

    load.stats.reset_worst();
    let report = cutover::run(&cutover_cfg(&db, REFERENCING_TABLES))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    let last = report.attempts.last().unwrap();
    eprintln!("cutover attempts: {:?}", report.attempts);
    assert_eq!(last.outcome, "swapped");
    assert!(last.lock_hold_ms.is_some());

    // The writers hit the swap, switch to uuids, and keep committing on the new tables.
    let stats = load.stats.clone();
    let after = stats.commits.load(Ordering::Relaxed);
    wait_for("writes on the new tables", Duration::from_secs(60), || {
        let s = stats.clone();
        async move { (s.commits.load(Ordering::Relaxed) > after + 200).then_some(()) }
    })
    .await;
    let stats = load.stop().await;
    eprintln!("workload: {}", stats.summary());

    // The rewrite process saw cut_over, dropped its slot and publication, and exited 0.
    assert_cut_over(job).await;
    let slots = crate::support::slots_in_database(&c).await;
    assert_eq!(slots, 0);

    for t in REFERENCING_TABLES {
        // The new table has uuid references.
        let ty: String = c
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2",
                &[&format!("public.{t}"), &refs_of(t)[0]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ty, "uuid", "{t}");
        let j = state::get_job(&c, &QualifiedName::new("public", *t))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(j.phase, "cut_over");
        let old = j.old_table.unwrap();
        // Nothing was written to the old table after the swap: every old row
        // is in the new table unless the workload changed it afterwards, so
        // compare the old table with the new one as of the swap: rows of the
        // old table missing from the new one can only be rows changed or
        // deleted after the swap. Here we check the converse strongly: the
        // old table has no row that the new table lacks *and* that was
        // inserted after the swap (old ids are all ≤ the max id at the swap).
        let (missing, _extra) = compare_translated(
            &c,
            &old,
            &format!("public.{t}"),
            refs_of(t),
            "users",
            "id",
            "uuid_id",
        )
        .await;
        let old_n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {old}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(old_n > 0);
        assert!(missing <= old_n, "{t}");
    }
    // Serial/identity continue: a fresh insert gets an id above every old one.
    let fresh: i64 = c
        .query_one("INSERT INTO sessions (user_id, token) SELECT uuid_id, 'after' FROM users LIMIT 1 RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    let old_max: i64 = c
        .query_one("SELECT max(id) FROM public._rekey_old_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(fresh > old_max);
    // The view works on the new table and returns uuids.
    let v: String = c
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'active_sessions'::regclass AND attname = 'user_id'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "uuid");
    // The incoming foreign key (message_reads → chat_messages) points at the new table and is valid.
    let (confrel, valid): (String, bool) = {
        let r = c
            .query_one(
                "SELECT confrelid::regclass::text, convalidated FROM pg_constraint WHERE conrelid = 'message_reads'::regclass AND contype = 'f' AND confrelid = 'chat_messages'::regclass",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((confrel.as_str(), valid), ("chat_messages", true));

    // A second cutover is a no-op.
    let again = cutover::run(&cutover_cfg(&db, REFERENCING_TABLES))
        .await
        .unwrap();
    assert!(again.swapped && again.attempts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_makes_cutover_give_up_then_succeed_later() {
    let (db, c, _stop, job) = small_streaming(&["sessions"]).await;

    // A long transaction holding a lock on the source.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE sessions IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let mut cfg = cutover_cfg(&db, &["sessions"]);
    cfg.attempts = 3;
    cfg.lock_timeout = Duration::from_millis(100);
    cfg.backoff = Duration::from_millis(50);
    let report = cutover::run(&cfg).await.unwrap();
    assert!(!report.swapped);
    assert_eq!(report.attempts.len(), 3);
    assert!(
        report
            .attempts
            .iter()
            .all(|a| a.outcome == "lock_timeout" && a.lock_hold_ms.is_none()),
        "{:?}",
        report.attempts
    );
    assert!(report.reason.as_deref().unwrap_or("").contains("untouched"));
    // The job keeps streaming: a write reaches the shadow.
    let j = state::get_job(&c, &QualifiedName::new("public", "sessions"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.phase, "streaming");
    blocker.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("INSERT INTO sessions (user_id, token) VALUES (1, 'while-blocked')")
        .await
        .unwrap();
    crate::rewrite::catch_up(&c).await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM public._rekey_new_sessions WHERE token = 'while-blocked'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    let report = cutover::run(&cutover_cfg(&db, &["sessions"]))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    assert_cut_over(job).await;
    let (missing, extra) = compare_translated(
        &c,
        "public._rekey_old_sessions",
        "public.sessions",
        &["user_id"],
        "users",
        "id",
        "uuid_id",
    )
    .await;
    assert_eq!(
        (missing, extra),
        (0, 0),
        "old and new agree (no writes since)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_cutover_swaps_once_streaming_and_status_follows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 50, 500).await.unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let rcfg = rewrite_cfg(&db, &["sessions", "chat_messages"]);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    // `status` sees the job while it runs.
    wait_phase(&c, &["sessions", "chat_messages"], "streaming").await;
    // The phase turns `streaming` just before the stream starts: wait for the slot.
    let rows = wait_for(
        "the slot to be streamed from",
        Duration::from_secs(30),
        || async {
            let rows = pg_rekey::status::load(&c).await.ok()?;
            rows.iter()
                .all(|r| r.slot_active == Some(true))
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.phase == "streaming"), "{rows:?}");
    let s = rows
        .iter()
        .find(|r| r.job.table == "public.sessions")
        .unwrap();
    assert_eq!(s.job.rows_copied, 100);
    assert!(pg_rekey::status::render(&rows).contains("public.sessions"));

    // What `rewrite --cutover auto` spawns: verify, then swap, by itself.
    let mut cfg = cutover_cfg(&db, &["sessions", "chat_messages"]);
    cfg.skip_verify = false;
    let auto = tokio::spawn(cutover::auto(cfg, stop_tx.subscribe()));
    tokio::time::timeout(Duration::from_secs(60), auto)
        .await
        .unwrap()
        .unwrap();
    assert_cut_over(job).await;
    let rows = pg_rekey::status::load(&c).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.phase == "cut_over" && r.job.old_table.is_some()),
        "{rows:?}"
    );
    let ty: String = c
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'chat_messages'::regclass AND attname = 'sender_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "uuid");
    drop(stop_tx);
}

/// The swap is built from a catalog read taken before the locks; DDL that
/// commits while the cutover waits for its locks must still be carried: the
/// fingerprint taken under the locks differs, the attempt gives the locks
/// back, and the next one builds the swap again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_committed_while_cutover_waits_for_its_lock_is_carried() {
    let (db, c, _stop, job) = small_streaming(&["sessions"]).await;
    let reader = format!("{}_late_reader", db.name);
    c.batch_execute(&format!("CREATE ROLE \"{reader}\""))
        .await
        .unwrap();

    // Hold the source (in a mode that lets the catalog read before the locks
    // through), let the cutover build its swap and queue for the lock.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE sessions IN SHARE MODE")
        .await
        .unwrap();
    let mut cfg = cutover_cfg(&db, &["sessions"]);
    cfg.attempts = 2;
    cfg.lock_timeout = Duration::from_secs(30);
    let cutover = tokio::spawn(async move { cutover::run(&cfg).await });
    crate::support::wait_lock_queued(&c, "public.sessions").await;
    // Then change what the swap must carry, and let it have the lock.
    blocker
        .batch_execute(&format!(
            "GRANT SELECT ON sessions TO \"{reader}\";
             COMMENT ON TABLE sessions IS 'added late';
             CREATE FUNCTION late_fn() RETURNS trigger LANGUAGE plpgsql AS
                 $$BEGIN NEW.token := NEW.token || '+late'; RETURN NEW; END$$;
             CREATE TRIGGER sessions_late BEFORE INSERT ON sessions
                 FOR EACH ROW EXECUTE FUNCTION late_fn();
             CREATE VIEW late_sessions AS SELECT id, user_id FROM sessions;
             COMMENT ON CONSTRAINT sessions_user_id_fkey ON sessions IS 'late key comment';
             ALTER TABLE sessions ADD CONSTRAINT sessions_late_fk
                 FOREIGN KEY (id) REFERENCES sessions (id) NOT VALID;
             COMMIT"
        ))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), cutover)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.swapped, "{report:?}");
    assert_cut_over(job).await;

    // Everything added in the window is on the new table.
    let row = c
        .query_one(
            &format!(
                "SELECT has_table_privilege('{reader}', 'public.sessions', 'SELECT'),
                        obj_description('public.sessions'::regclass, 'pg_class'),
                        (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.sessions'::regclass AND tgname = 'sessions_late'),
                        (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                          WHERE attrelid = 'public.late_sessions'::regclass AND attname = 'user_id')"
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the late grant");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("added late")
    );
    assert_eq!(row.get::<_, i64>(2), 1, "the late trigger");
    assert_eq!(
        row.get::<_, String>(3),
        "uuid",
        "the late view reads the new table"
    );
    let token: String = c
        .query_one(
            "INSERT INTO sessions (user_id, token) SELECT uuid_id, 't' FROM users WHERE id = 1 RETURNING token",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(token, "t+late", "the late trigger fires on the new table");
    // The new table's own keys as the source had them at the swap: the late
    // key (validated after commit) and the late comment on the user key.
    let keys: Vec<String> = c
        .query(
            "SELECT format('%s valid=%s comment=%s', conname, convalidated, obj_description(oid, 'pg_constraint'))
               FROM pg_constraint WHERE conrelid = 'public.sessions'::regclass AND contype = 'f' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        [
            "sessions_late_fk valid=t comment=",
            "sessions_user_id_fkey valid=t comment=late key comment",
        ]
    );
    let outcomes: Vec<&str> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["catalog_changed", "swapped"],
        "the catalog changed after the first attempt built the swap: {:?}",
        report.attempts
    );
    assert!(report.attempts[0].lock_hold_ms.is_some());
}

/// Old and new `sessions` hold the same rows (reference translated).
async fn old_equals_new_sessions(c: &tokio_postgres::Client) {
    let (missing, extra) = compare_translated(
        c,
        "public._rekey_old_sessions",
        "public.sessions",
        &["user_id"],
        "users",
        "id",
        "uuid_id",
    )
    .await;
    assert_eq!((missing, extra), (0, 0), "old and new agree");
}

/// The server commits the swap but the cutover's connection drops before
/// the answer arrives: the cutover must find out from the catalog and job
/// rows that the swap happened, report it, and never run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_after_the_swap_committed_is_reported_as_swapped_once() {
    let (db, c, _stop, job) = small_streaming(&["sessions"]).await;
    let source_oid: u32 = c
        .query_one("SELECT 'public.sessions'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);

    let proxy = crate::support::proxy::CommitDropProxy::start(&db.spec).await;
    let mut cfg = cutover_cfg(&db, &["sessions"]);
    cfg.spec = proxy.spec.clone();
    let report = cutover::run(&cfg).await.unwrap();
    assert_eq!(
        proxy.drops.load(Ordering::SeqCst),
        1,
        "the connection was dropped during COMMIT"
    );
    assert!(report.swapped, "{report:?}");
    assert_eq!(report.attempts.len(), 1, "{:?}", report.attempts);
    assert_eq!(report.attempts[0].outcome, "swapped");
    assert_eq!(
        report.tables,
        vec![(
            "public.sessions".to_string(),
            "public._rekey_old_sessions".to_string()
        )]
    );
    // The catalog agrees: the old table is the source, renamed once.
    let (old_oid, new_is_uuid): (u32, bool) = {
        let r = c
            .query_one(
                "SELECT 'public._rekey_old_sessions'::regclass::oid,
                        (SELECT atttypid = 'uuid'::regtype FROM pg_attribute
                          WHERE attrelid = 'public.sessions'::regclass AND attname = 'user_id')",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(old_oid, source_oid);
    assert!(new_is_uuid);
    // A second cutover finds it done and does nothing.
    let again = cutover::run(&cutover_cfg(&db, &["sessions"]))
        .await
        .unwrap();
    assert!(again.swapped && again.attempts.is_empty(), "{again:?}");
    assert_cut_over(job).await;
    old_equals_new_sessions(&c).await;
}

/// The connection drops during COMMIT *before* the swap commits (the backend
/// dies at commit time): nothing was swapped, the attempt counts as failed,
/// and the next attempt swaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_before_the_swap_committed_is_retried() {
    let (db, c, _stop, job) = small_streaming(&["sessions"]).await;
    // At COMMIT of the first transaction that records the cutover, the
    // backend terminates itself (a deferred trigger runs just before the
    // commit record is written). The sequence is not transactional, so it
    // happens once.
    c.batch_execute(
        "CREATE SEQUENCE public.kill_once;
         CREATE FUNCTION public.kill_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.phase = 'cut_over' AND nextval('public.kill_once') = 1 THEN
                 PERFORM pg_terminate_backend(pg_backend_pid());
             END IF;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER kill_at_commit AFTER UPDATE ON pgrekey.jobs
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.kill_at_commit();",
    )
    .await
    .unwrap();
    let report = cutover::run(&cutover_cfg(&db, &["sessions"]))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    assert_eq!(report.attempts.len(), 2, "{:?}", report.attempts);
    assert!(
        report.attempts[0].outcome.starts_with("error")
            && report.attempts[0].lock_hold_ms.is_some(),
        "{:?}",
        report.attempts[0]
    );
    assert_eq!(report.attempts[1].outcome, "swapped");
    let fired: i64 = c
        .query_one("SELECT last_value FROM public.kill_once", &[])
        .await
        .unwrap()
        .get(0);
    assert!(fired >= 1, "the backend was terminated at commit");
    c.batch_execute("DROP TRIGGER kill_at_commit ON pgrekey.jobs")
        .await
        .unwrap();
    assert_cut_over(job).await;
    old_equals_new_sessions(&c).await;
}

/// One cutover for tables served by two different `rewrite` processes: both
/// swap in the same transaction, and both processes see it and exit, their
/// slots gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_of_two_rewrite_processes_cut_over_together() {
    let (db, c, _stop_a, job_a) = small_streaming(&["sessions"]).await;
    let (_stop_b, job_b) = start_rewrite(&db, &c, &["chat_messages"]).await;
    let jobs = state::list_jobs(&c).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_ne!(jobs[0].job_id, jobs[1].job_id, "two separate jobs");

    let report = cutover::run(&cutover_cfg(&db, &["sessions", "chat_messages"]))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    assert_eq!(report.attempts.len(), 1, "{:?}", report.attempts);
    assert_eq!(
        report.tables,
        vec![
            (
                "public.chat_messages".to_string(),
                "public._rekey_old_chat_messages".to_string()
            ),
            (
                "public.sessions".to_string(),
                "public._rekey_old_sessions".to_string()
            ),
        ]
    );
    assert_cut_over(job_a).await;
    assert_cut_over(job_b).await;
    let slots = crate::support::slots_in_database(&c).await;
    assert_eq!(slots, 0, "both rewrites dropped their slots");
    old_equals_new_sessions(&c).await;
}
