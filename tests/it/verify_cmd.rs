//! `pg-rekey verify` against a running rewrite on the real server: the
//! library entry point [`pg_rekey::verify::run`] and the binary's exit codes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pg_rekey::pg::QualifiedName;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::state::{self, NewJob, Phase};
use pg_rekey::verify::{self, RowDiffKind, RunOptions, Stage, VerifyReport};
use pg_rekey::workload::{self, Workload, WorkloadOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::{wait_for, TestDb};

fn names(tables: &[&str]) -> Vec<QualifiedName> {
    tables
        .iter()
        .map(|t| QualifiedName::new("public", *t))
        .collect()
}

/// Start `rewrite` for `tables` in a task; `true` on the sender stops it.
fn start_rewrite(
    db: &TestDb,
    tables: &[&str],
) -> (
    watch::Sender<bool>,
    JoinHandle<Result<RewriteOutcome, pg_rekey::Error>>,
) {
    let config = RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        names(tables),
    );
    let (tx, rx) = watch::channel(false);
    let job = tokio::spawn(async move {
        rewrite::run(&config, rx, pg_rekey::progress::JobProgress::new()).await
    });
    (tx, job)
}

async fn stop_rewrite(
    tx: watch::Sender<bool>,
    job: JoinHandle<Result<RewriteOutcome, pg_rekey::Error>>,
) -> Result<RewriteOutcome, pg_rekey::Error> {
    let _ = tx.send(true);
    tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("rewrite did not stop")
        .expect("rewrite task panicked")
}

/// Run the `pg-rekey` binary against the test database: (exit code, stdout, stderr).
async fn cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .arg("--dsn")
        .arg(db.spec.to_dsn())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("run pg-rekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn table<'a>(report: &'a VerifyReport, name: &str) -> &'a verify::TableReport {
    report
        .tables
        .iter()
        .find(|t| t.table.name == name)
        .unwrap_or_else(|| panic!("{name} not in the report"))
}

async fn one_id(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_cutover_equal_under_writes_and_names_a_tampered_shadow_row() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 300, 3_000).await.unwrap();
    let tables = ["sessions", "chat_messages", "message_reads"];

    let load = Workload::start(&db.spec, WorkloadOptions::default())
        .await
        .unwrap();
    let (stop_tx, job) = start_rewrite(&db, &tables);
    wait_phase(&c, &tables, "streaming").await;
    let stats = load.stats.clone();
    let at = stats.commits.load(Ordering::Relaxed);
    wait_for("writes while streaming", Duration::from_secs(60), || {
        let s = stats.clone();
        async move { (s.commits.load(Ordering::Relaxed) > at + 100).then_some(()) }
    })
    .await;

    // While the writers run: equal, every time, at a fenced point.
    let opts = RunOptions::default();
    for round in 0..3 {
        let before = stats.commits.load(Ordering::Relaxed);
        let report = verify::run(&db.spec, &names(&tables), &opts)
            .await
            .unwrap_or_else(|e| panic!("verify round {round}: {}", pg_rekey::error::chain(&e)));
        assert!(report.equal, "round {round} under writes:\n{report}");
        assert_eq!(report.exit_code(), 0);
        for t in &report.tables {
            assert_eq!(t.stage, Stage::BeforeCutover);
            assert!(t.verdict.left_rows > 0, "{}: nothing compared", t.table);
            assert_eq!(t.verdict.right.name, format!("_rekey_new_{}", t.table.name));
        }
        let point = report
            .consistent_point
            .expect("a consistent point was taken");
        assert!(point.attempts >= 1);
        // The writers kept going (the lock is brief and only for the drain).
        wait_for("writes after a verify", Duration::from_secs(60), || {
            let s = stats.clone();
            async move { (s.commits.load(Ordering::Relaxed) > before + 20).then_some(()) }
        })
        .await;
    }
    // The binary, under writes too: exit 0 and a JSON report.
    let (code, out, err) = cli(
        &db,
        &[
            "verify",
            "--table",
            "sessions",
            "--table",
            "message_reads",
            "--json",
            "--chunk-rows",
            "500",
        ],
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["equal"], true);
    assert_eq!(json["tables"][1]["stage"], "before_cutover");
    assert!(json["tables"][0]["verdict"]["chunks"].as_u64().unwrap() > 1);

    let stats = load.stop().await;
    assert!(stats.commits.load(Ordering::Relaxed) > 0);
    catch_up(&c).await;

    // A writer holding its transaction open: every attempt's lock times out,
    // and verify gives up with the reason; once it commits, verify succeeds.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; UPDATE chat_messages SET content = content WHERE id = (SELECT min(id) FROM chat_messages)")
        .await
        .unwrap();
    let impatient = RunOptions {
        lock_timeout: Duration::from_millis(100),
        attempts: 2,
        backoff: Duration::from_millis(10),
        ..RunOptions::default()
    };
    let err = verify::run(&db.spec, &names(&["chat_messages"]), &impatient)
        .await
        .expect_err("the open writer must block the consistent point");
    let text = err.to_string();
    assert!(
        text.contains("no consistent point after 2 attempts"),
        "{text}"
    );
    assert!(text.contains("lock timeout"), "{text}");
    blocker.batch_execute("COMMIT").await.unwrap();
    let report = verify::run(&db.spec, &names(&["chat_messages"]), &impatient)
        .await
        .unwrap();
    assert!(report.equal, "{report}");

    // Behind the tool's back: one shadow row gets another user, another a
    // different text.
    let session_id = one_id(
        &c,
        "UPDATE public._rekey_new_sessions t
            SET user_id = (SELECT u.uuid_id FROM users u WHERE u.uuid_id <> t.user_id ORDER BY u.id LIMIT 1)
          WHERE id = (SELECT min(id) FROM public._rekey_new_sessions) RETURNING id",
    )
    .await;
    let message_id = one_id(
        &c,
        "UPDATE public._rekey_new_chat_messages SET content = content || ' (edited)'
          WHERE id = (SELECT max(id) FROM public._rekey_new_chat_messages) RETURNING id",
    )
    .await;
    let report = verify::run(&db.spec, &names(&tables), &opts).await.unwrap();
    assert!(!report.equal, "{report}");
    assert_eq!(report.exit_code(), 1);
    for (name, id, column) in [
        ("sessions", session_id, "user_id"),
        ("chat_messages", message_id, "content"),
    ] {
        let v = &table(&report, name).verdict;
        assert!(!v.equal);
        assert_eq!(v.differing_rows, 1, "{name}:\n{v}");
        assert_eq!(v.rows.len(), 1, "{name}:\n{v}");
        let row = &v.rows[0];
        assert_eq!(row.key.len(), 1);
        assert_eq!(
            (row.key[0].column.as_str(), row.key[0].value.clone()),
            ("id", id.to_string())
        );
        assert_eq!(
            row.kind,
            RowDiffKind::Changed {
                columns: vec![column.to_string()]
            },
            "{name}"
        );
        assert_eq!(v.ranges.len(), 1, "{name}: the differing range is named");
    }
    assert!(table(&report, "message_reads").verdict.equal);

    // The binary: exit 1, naming the row and the column.
    let (code, out, err) = cli(
        &db,
        &["verify", "--table", "sessions", "--table", "message_reads"],
    )
    .await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("row (id={session_id}): differs in user_id")),
        "{out}"
    );
    assert!(out.contains("verify: 1 of 2 tables DIFFER"), "{out}");

    assert_eq!(
        stop_rewrite(stop_tx, job).await.unwrap(),
        RewriteOutcome::Aborted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_tables_without_a_usable_job() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    let sessions = QualifiedName::new("public", "sessions");

    // No state schema at all, then no row for the table.
    let err = verify::run(
        &db.spec,
        std::slice::from_ref(&sessions),
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot verify public.sessions: no pg-rekey job for it"),
        "{err}"
    );
    let (code, out, err) = cli(&db, &["verify", "--table", "sessions"]).await;
    assert_eq!(code, 2, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("no pg-rekey job"), "{err}");
    assert!(out.is_empty(), "{out}");

    // A job still copying, then failed: each said as such.
    state::ensure_schema(&c).await.unwrap();
    state::register_job(
        &c,
        &NewJob {
            job_id: uuid::Uuid::new_v4(),
            source: sessions.clone(),
            source_oid: 1,
            shadow: pg_rekey::ddl::shadow_name(&sessions),
            slot_name: "s".into(),
            publication_name: "p".into(),
            rows_estimate: 0,
            parent: QualifiedName::new("public", "users"),
            parent_uuid_column: "uuid_id".into(),
            spec: None,
        },
    )
    .await
    .unwrap();
    let err = verify::run(
        &db.spec,
        std::slice::from_ref(&sessions),
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("its job is copying"), "{err}");
    state::set_error(&c, &sessions, "orphaned reference in user_id = 7")
        .await
        .unwrap();
    let err = verify::run(
        &db.spec,
        std::slice::from_ref(&sessions),
        &RunOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("its job failed: orphaned reference in user_id = 7"),
        "{err}"
    );
    // Another table in the same run has no job: the run is refused.
    let err = verify::run(&db.spec, &names(&["chat_messages"]), &RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("public.chat_messages: no pg-rekey job"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_simulated_cutover_compares_old_and_new() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 100, 1_500).await.unwrap();
    let tables = ["sessions", "chat_messages"];
    let (stop_tx, job) = start_rewrite(&db, &tables);
    wait_phase(&c, &tables, "streaming").await;
    // A few streamed changes, then the stream drained.
    c.batch_execute(
        "UPDATE sessions SET user_id = user_id % 100 + 1 WHERE id % 97 = 0;
         DELETE FROM chat_messages WHERE id % 89 = 0;",
    )
    .await
    .unwrap();
    catch_up(&c).await;

    // The swap of `sessions` by hand: what cutover does to the names, the
    // uuid foreign key it adds, and the state it records.
    let sessions = QualifiedName::new("public", "sessions");
    let old = pg_rekey::ddl::old_name(&sessions);
    let tx = c.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "ALTER TABLE public.sessions RENAME TO {old};
         ALTER TABLE public._rekey_new_sessions RENAME TO sessions;
         ALTER TABLE public.sessions ADD FOREIGN KEY (user_id) REFERENCES users (uuid_id);",
        old = pg_rekey::pg::quote_ident(&old.name)
    ))
    .await
    .unwrap();
    state::set_phase(&tx, &sessions, Phase::CuttingOver)
        .await
        .unwrap();
    state::record_cutover(&tx, &sessions, &old, false)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // One run, both kinds: sessions old vs new, chat_messages source vs shadow.
    let report = verify::run(&db.spec, &names(&tables), &RunOptions::default())
        .await
        .unwrap();
    assert!(report.equal, "{report}");
    let s = table(&report, "sessions");
    assert_eq!(s.stage, Stage::AfterCutover);
    assert_eq!(s.verdict.left, old);
    assert_eq!(s.verdict.right, sessions);
    assert!(s.verdict.left_rows > 0);
    assert_eq!(table(&report, "chat_messages").stage, Stage::BeforeCutover);

    // Only sessions: no lock or fence is needed.
    let report = verify::run(
        &db.spec,
        std::slice::from_ref(&sessions),
        &RunOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        report.equal && report.consistent_point.is_none(),
        "{report}"
    );

    // A row lost from the new table is named as missing.
    let lost = one_id(
        &c,
        "DELETE FROM public.sessions WHERE id = (SELECT max(id) FROM public.sessions) RETURNING id",
    )
    .await;
    let report = verify::run(
        &db.spec,
        std::slice::from_ref(&sessions),
        &RunOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.exit_code(), 1, "{report}");
    let v = &table(&report, "sessions").verdict;
    assert_eq!(v.differing_rows, 1, "{v}");
    assert_eq!(v.rows[0].kind, RowDiffKind::Missing);
    assert_eq!(v.rows[0].key[0].value, lost.to_string());
    let (code, out, _) = cli(&db, &["verify", "--table", "sessions"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("row (id={lost}): missing from public.sessions")),
        "{out}"
    );
    assert!(out.contains("(after cutover)"), "{out}");

    let _ = stop_rewrite(stop_tx, job).await;
}

/// A parent with two unique uuid columns: the shadow's uuids could come from
/// either, and nothing in the catalog says which before cutover. verify uses
/// the one the job recorded (the one its rewrite translated through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uses_the_parent_uuid_column_the_job_recorded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    c.batch_execute(
        "ALTER TABLE users ADD COLUMN legacy_uuid uuid NOT NULL DEFAULT gen_random_uuid();
         CREATE UNIQUE INDEX users_legacy_uuid_key ON users (legacy_uuid);",
    )
    .await
    .unwrap();
    workload::seed(&c, 50, 500).await.unwrap();
    let (tx, job) = start_rewrite(&db, &["sessions"]);
    wait_phase(&c, &["sessions"], "streaming").await;
    catch_up(&c).await;
    let report = verify::run(&db.spec, &names(&["sessions"]), &RunOptions::default())
        .await
        .unwrap();
    assert!(report.equal, "{report}");
    let t = table(&report, "sessions");
    assert!(t.verdict.left_rows > 0, "{report}");
    // Translated through the other uuid column, every row would differ.
    let other = RunOptions {
        parent: Some(verify::ParentChoice {
            table: QualifiedName::new("public", "users"),
            uuid_column: "legacy_uuid".into(),
        }),
        ..RunOptions::default()
    };
    let report = verify::run(&db.spec, &names(&["sessions"]), &other)
        .await
        .unwrap();
    assert!(!report.equal, "{report}");
    stop_rewrite(tx, job).await.unwrap();
}
