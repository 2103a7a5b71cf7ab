//! The operator's seat (issue 15): one lag figure for `status` and the
//! cutover's go/no-go, waiting for the lag instead of spending attempts,
//! naming lock holders, and the post-commit steps of a cutover.

use std::time::Duration;

use pg_rekey::cutover;
use pg_rekey::rewrite::{self, RewriteOutcome};
use pg_rekey::workload;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::{example_config, wait_phase};
use crate::support::{wait_for, TestDb};

type RewriteJob = tokio::task::JoinHandle<Result<RewriteOutcome, pg_rekey::Error>>;

/// The example schema with a few users and rows, and a rewrite of `tables`
/// streaming.
async fn streaming(tables: &[&str]) -> (TestDb, Client, watch::Sender<bool>, RewriteJob) {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 20, 200).await.unwrap();
    let (tx, rx) = watch::channel(false);
    let rcfg = example_config(&db, tables);
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_phase(&c, tables, "streaming").await;
    (db, c, tx, job)
}

async fn finish(tx: watch::Sender<bool>, job: RewriteJob) -> RewriteOutcome {
    let _ = tx.send(true);
    tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the rewrite ends")
        .expect("no panic")
        .expect("the rewrite succeeded")
}

/// `status`'s lag of `table`, bytes.
async fn status_lag(c: &Client, table: &str) -> Option<i64> {
    pg_rekey::status::load(c)
        .await
        .ok()?
        .into_iter()
        .find(|s| s.job.table == format!("public.{table}"))?
        .lag_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_job_is_caught_up_for_status_and_for_the_cutover() {
    let (db, c, _tx, job) = streaming(&["sessions"]).await;
    // Megabytes of WAL on a table the job does not stream: the job's tables
    // get no writes, so no applied position is ever recorded.
    c.batch_execute(
        "CREATE TABLE noise (id bigserial PRIMARY KEY, pad text);
         INSERT INTO noise (pad) SELECT repeat('x', 500) FROM generate_series(1, 20000)",
    )
    .await
    .unwrap();
    let applied: Option<String> = c
        .query_one(
            "SELECT max(applied_lsn)::text FROM pgrekey.jobs WHERE source_table = 'sessions'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, None, "the job applied nothing");
    wait_for(
        "status to show the quiet job caught up",
        Duration::from_secs(60),
        || async { status_lag(&c, "sessions").await.filter(|l| *l < 1 << 20) },
    )
    .await;
    // The cutover gates on the same figure: one attempt, no lag refusal.
    let mut cfg = crate::cutover::cutover_cfg(&db, &["sessions"]);
    cfg.max_lag_bytes = 1 << 20;
    cfg.attempts = 1;
    let report = cutover::run(&cfg).await.unwrap();
    assert!(report.swapped, "{:?} {:?}", report.reason, report.attempts);
    assert_eq!(report.attempts[0].outcome, "swapped");
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);

    // A post-commit step left pending (as by a process cut off after the
    // commit) is completed by the next cutover of the table.
    c.batch_execute("ALTER TABLE sessions ADD CONSTRAINT positive_id CHECK (id > 0) NOT VALID")
        .await
        .unwrap();
    let again = cutover::run(&cfg).await.unwrap();
    assert!(again.swapped && again.warnings.is_empty(), "{again:?}");
    let valid: bool = c
        .query_one(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'positive_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid, "the pending validation was completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_names_the_session_that_held_the_lock() {
    let (db, c, tx, job) = streaming(&["sessions"]).await;
    let blocker = db.client().await;
    blocker
        .batch_execute(
            "SET application_name = 'blocker-app'; BEGIN; LOCK TABLE sessions IN ROW EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mut cfg = crate::cutover::cutover_cfg(&db, &["sessions"]);
    cfg.attempts = 2;
    cfg.lock_timeout = Duration::from_millis(100);
    cfg.backoff = Duration::from_millis(10);
    let report = cutover::run(&cfg).await.unwrap();
    assert!(!report.swapped);
    assert!(
        report.attempts.iter().all(|a| a.outcome == "lock_timeout"),
        "{:?}",
        report.attempts
    );
    let holder = report.attempts[0]
        .lock_holders
        .iter()
        .find(|h| h.pid == pid)
        .unwrap_or_else(|| panic!("blocker not named: {:?}", report.attempts[0]));
    assert_eq!(holder.application_name, "blocker-app");
    assert_eq!(holder.state, "idle in transaction");
    assert!(holder.query_start.is_some());
    assert!(
        holder.lock.contains("RowExclusiveLock on sessions"),
        "{holder:?}"
    );
    let reason = report.reason.unwrap();
    assert!(reason.contains("(2 lock_timeout)"), "{reason}");
    assert!(
        reason.contains(&format!("pid {pid} (blocker-app, idle in transaction")),
        "{reason}"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    drop(c);
    assert_eq!(finish(tx, job).await, RewriteOutcome::Aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_lag_waits_instead_of_spending_attempts() {
    let (db, c, _tx, job) = streaming(&["sessions"]).await;
    // Hold the apply back: it needs the shadow, which this session locks.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE _rekey_new_sessions IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO sessions (user_id, token, payload)
         SELECT 1 + g % 20, md5(g::text), repeat('p', 200) FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    let limit = 64 * 1024;
    wait_for(
        "the job to fall behind",
        Duration::from_secs(60),
        || async { status_lag(&c, "sessions").await.filter(|l| *l > limit) },
    )
    .await;

    // Without --wait-for-lag the attempt is spent, and the summary says why.
    let mut cfg = crate::cutover::cutover_cfg(&db, &["sessions"]);
    cfg.max_lag_bytes = limit as u64;
    cfg.attempts = 1;
    let report = cutover::run(&cfg).await.unwrap();
    assert!(!report.swapped);
    assert_eq!(report.attempts[0].outcome, "lag_above_limit");
    let reason = report.reason.unwrap();
    assert!(reason.contains("--wait-for-lag"), "{reason}");
    assert!(!reason.contains("lock"), "not a lock problem: {reason}");

    // With it, the cutover waits for the apply to catch up and swaps on its
    // first attempt.
    cfg.wait_for_lag = Some(Duration::from_secs(120));
    let run = tokio::spawn(async move { cutover::run(&cfg).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let report = run.await.unwrap().unwrap();
    assert!(report.swapped, "{:?} {:?}", report.reason, report.attempts);
    assert_eq!(report.attempts.len(), 1, "{:?}", report.attempts);
    assert_eq!(report.attempts[0].outcome, "swapped");
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);
}

/// Run the `pg-rekey` binary against the test database: (exit code, stdout,
/// stderr). `stdin` is not a terminal, so nothing asks.
pub async fn cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    cli_env(db, args, &[]).await
}

/// [`cli`] with extra environment variables.
pub async fn cli_env(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"));
    cmd.arg("--dsn")
        .arg(db.spec.to_dsn())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("pg-rekey finished")
        .expect("run pg-rekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_cutover_auto_validates_and_analyzes_before_it_exits() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 20, 400).await.unwrap();
    let dir = scratch(&db);
    let events = dir.join("events");
    let hook = format!(
        "echo \"$PGREKEY_EVENT $PGREKEY_TABLES $PGREKEY_OLD_TABLES\" >> '{}'",
        events.display()
    );
    let (code, out, err) = cli(
        &db,
        &[
            "rewrite",
            "--parent",
            "users",
            "--uuid-column",
            "uuid_id",
            "--table",
            "sessions",
            "--table",
            "api_access_tokens",
            "--cutover",
            "auto",
            "--on-event",
            &hook,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    // The hooks saw each phase change, in order, with the tables.
    let seen = std::fs::read_to_string(&events).unwrap();
    let names: Vec<&str> = seen.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "copy-done",
            "streaming",
            "ready-for-cutover",
            "before-cutover",
            "swapped"
        ],
        "{seen}"
    );
    let swapped = seen.lines().last().unwrap();
    assert!(
        swapped.starts_with("swapped public.sessions,public.api_access_tokens ")
            && swapped.contains("public._rekey_old_sessions")
            && swapped.contains("public._rekey_old_api_access_tokens"),
        "{seen}"
    );
    assert!(out.contains("next:"), "{out}");
    let not_valid: Vec<String> = c
        .query(
            "SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint
              WHERE NOT convalidated
                AND conrelid IN ('sessions'::regclass, 'api_access_tokens'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        not_valid.is_empty(),
        "still NOT VALID: {not_valid:?}\n{err}"
    );
    let fks: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated
                AND conrelid IN ('sessions'::regclass, 'api_access_tokens'::regclass)
                AND confrelid = 'users'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fks, 2, "both new tables reference users, validated");
    // The statistics of the ANALYZE reach pg_stat_* asynchronously on 14.
    wait_for(
        "both new tables to show their ANALYZE",
        Duration::from_secs(30),
        || async {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_user_tables
                      WHERE relid IN ('sessions'::regclass, 'api_access_tokens'::regclass)
                        AND analyze_count > 0",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 2).then_some(())
        },
    )
    .await;
    assert!(err.contains("table analyzed"), "{err}");
}

/// A scratch directory for one test's files.
fn scratch(db: &TestDb) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgrekey-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_rewrite_and_cutover_are_one_quiet_line_per_event() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 20, 300).await.unwrap();
    let dir = scratch(&db);
    let rewrite_log = dir.join("rewrite.log");
    let cutover_log = dir.join("cutover.json");
    let mut rewrite = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .arg("--dsn")
        .arg(db.spec.to_dsn())
        .args(["rewrite", "--parent", "users", "--uuid-column", "uuid_id"])
        .args(["--table", "sessions", "--log-file"])
        .arg(&rewrite_log)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_phase(&c, &["sessions"], "streaming").await;
    c.batch_execute("UPDATE sessions SET token = token || 'x' WHERE id % 3 = 0")
        .await
        .unwrap();
    let log = cutover_log.to_str().unwrap();
    let (code, out, err) = cli(
        &db,
        &[
            "cutover",
            "--table",
            "sessions",
            "--log-format",
            "json",
            "--log-file",
            log,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.is_empty(), "the log went to the file: {err}");
    let status = tokio::time::timeout(Duration::from_secs(60), rewrite.wait())
        .await
        .expect("the rewrite exits after the cutover")
        .unwrap();
    assert!(status.success());

    let text = std::fs::read_to_string(&rewrite_log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 5, "{text}");
    for l in &lines {
        assert!(
            l.starts_with("20") && (l.contains(" INFO ") || l.contains("DEBUG")),
            "one event per line, no WARN at a normal end: {l}"
        );
        for noise in ["Some(", "None", "{tables=", "rewrite{", "\x1b["] {
            assert!(!l.contains(noise), "{noise:?} in {l}");
        }
    }
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("slot created"), 1, "said once: {text}");
    assert_eq!(count("replication slot created"), 0, "{text}");
    assert_eq!(count("id map loaded"), 1, "{text}");
    assert_eq!(count("loaded key"), 0, "{text}");
    assert_eq!(count("CopyDone"), 0, "{text}");
    assert!(
        lines
            .iter()
            .filter(|l| !l.contains(" progress table="))
            .all(|l| l.contains("job=")),
        "{text}"
    );

    let json = std::fs::read_to_string(&cutover_log).unwrap();
    let mut messages = Vec::new();
    for l in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("spans").is_none(), "no span list: {l}");
        assert_ne!(v["level"], "WARN", "{l}");
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    for m in ["cutover attempt", "table verified", "table analyzed"] {
        assert!(messages.iter().any(|x| x == m), "{m} missing: {json}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run `pg-rekey ARGS` on a pseudo-terminal (util-linux `script`), typing
/// `input`: (exit code, everything the terminal showed).
async fn on_terminal(db: &TestDb, args: &str, input: &str) -> (i32, String) {
    use tokio::io::AsyncWriteExt;
    let cmd = format!(
        "'{}' --dsn '{}' {args}",
        env!("CARGO_BIN_EXE_pg-rekey"),
        db.spec.to_dsn()
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the command ends")
        .unwrap();
    drop(stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_on_a_terminal_next_steps_and_prune() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 20, 200).await.unwrap();
    let start = |t: &'static str| {
        let (tx, rx) = watch::channel(false);
        let rcfg = example_config(&db, &[t]);
        let job = tokio::spawn(async move {
            rewrite::run(&rcfg, rx, pg_rekey::progress::JobProgress::new()).await
        });
        (tx, job)
    };
    let (_tx1, sessions_job) = start("sessions");
    let (_tx2, tokens_job) = start("api_access_tokens");
    wait_phase(&c, &["sessions", "api_access_tokens"], "streaming").await;

    // On a terminal, abort shows what it will remove and asks; "n" keeps all.
    let (code, shown) = on_terminal(&db, "abort --table api_access_tokens", "n\n").await;
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("abort will stop and remove"), "{shown}");
    assert!(
        shown.contains("shadow public._rekey_new_api_access_tokens"),
        "{shown}"
    );
    assert!(shown.contains("Proceed? [y/N]"), "{shown}");
    assert!(shown.contains("not confirmed; nothing was done"), "{shown}");
    let phase: String = c
        .query_one(
            "SELECT phase FROM pgrekey.jobs WHERE source_table = 'api_access_tokens'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "streaming");
    // "y" goes ahead, and the output ends with the next step.
    let (code, shown) = on_terminal(&db, "abort --table api_access_tokens", "y\n").await;
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("public.api_access_tokens: aborted"),
        "{shown}"
    );
    assert!(
        shown.contains("next: to start again, pg-rekey plan --table public.api_access_tokens"),
        "{shown}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), tokens_job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Aborted);

    // Off a terminal: no question (stdin is closed, so one would fail), and
    // the swap ends with what to do next.
    let (code, out, err) = cli(&db, &["cutover", "--table", "sessions", "--skip-verify"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("Proceed?") && !err.contains("Proceed?"));
    assert!(
        out.contains("pg-rekey verify --table public.sessions"),
        "{out}"
    );
    assert!(
        out.contains("DROP TABLE public._rekey_old_sessions"),
        "{out}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), sessions_job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);

    // The finished row stays listed, with a way to clear it; an old table
    // dropped by hand is said to be dropped.
    let (_, out, _) = cli(&db, &["status"]).await;
    assert!(out.contains("cut_over"), "{out}");
    assert!(out.contains("status --prune"), "{out}");
    c.batch_execute("DROP TABLE _rekey_old_sessions")
        .await
        .unwrap();
    let (_, out, _) = cli(&db, &["status"]).await;
    assert!(
        out.contains("public._rekey_old_sessions (dropped)"),
        "{out}"
    );
    let (code, out, _) = cli(&db, &["status", "--prune"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "cleared public.sessions (cut_over)\n");
    let (_, out, _) = cli(&db, &["status"]).await;
    assert_eq!(out, "no pg-rekey jobs\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_before_cutover_hook_vetoes_the_attempt() {
    use std::os::unix::fs::PermissionsExt;
    let (db, _c, _tx, job) = streaming(&["sessions"]).await;
    let dir = scratch(&db);
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let record = dir.join("record");
    let vetoed_once = dir.join("vetoed");
    let write = |name: &str, body: String| {
        let p = hooks.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // Vetoes the first attempt, allows the next.
    write(
        "on-before-cutover",
        format!(
            "echo \"$PGREKEY_EVENT attempt=$PGREKEY_ATTEMPT tables=$PGREKEY_TABLES lag=$PGREKEY_LAG_BYTES\" >> '{r}'\n\
             if [ ! -e '{v}' ]; then touch '{v}'; echo 'not now' >&2; exit 3; fi\n",
            r = record.display(),
            v = vetoed_once.display()
        ),
    );
    write(
        "on-swapped-record",
        format!(
            "echo \"$PGREKEY_EVENT attempt=$PGREKEY_ATTEMPT old=$PGREKEY_OLD_TABLES\" >> '{}'\n",
            record.display()
        ),
    );
    // Not executable: not run.
    std::fs::write(hooks.join("on-swapped-disabled"), "#!/bin/sh\nexit 1\n").unwrap();

    let mut cfg = crate::cutover::cutover_cfg(&db, &["sessions"]);
    cfg.attempts = 3;
    cfg.backoff = Duration::from_millis(10);
    cfg.hooks = pg_rekey::hooks::Hooks {
        dir: Some(hooks.clone()),
        command: None,
    };
    let report = cutover::run(&cfg).await.unwrap();
    assert!(report.swapped, "{:?}", report.attempts);
    let outcomes: Vec<&str> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["vetoed_by_hook", "swapped"]);
    let seen = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 3, "{seen}");
    assert!(
        lines[0].starts_with("before-cutover attempt=1 tables=public.sessions lag="),
        "{seen}"
    );
    assert!(lines[1].starts_with("before-cutover attempt=2 "), "{seen}");
    assert_eq!(lines[2], "swapped attempt=2 old=public._rekey_old_sessions");
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_conventions_color_help_completions_man_and_hints() {
    let (db, _c, tx, job) = streaming(&["sessions"]).await;

    // --color always colours the level; NO_COLOR on a terminal does not.
    let (code, out, err) = cli(&db, &["--color", "always", "verify", "--table", "sessions"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("\x1b[32m INFO\x1b[0m"), "{err}");
    let (code, _, err) = cli(&db, &["--color", "never", "verify", "--table", "sessions"]).await;
    assert_eq!(code, 0);
    assert!(err.contains(" INFO ") && !err.contains("\x1b["), "{err}");
    let (code, shown) = on_terminal(&db, "verify --table sessions", "").await;
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains(" INFO "), "{shown}");
    assert!(!shown.contains("\x1b[3"), "NO_COLOR is honoured: {shown:?}");

    // A table that does not exist is named as such, never offered a rewrite.
    let (code, out, err) = cli(&db, &["verify", "--table", "nosuch"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("no table public.nosuch in this database"),
        "{err}"
    );
    assert!(err.contains("public.sessions"), "lists the jobs: {err}");
    assert!(!err.contains("pg-rekey rewrite"), "{err}");
    let (code, _, err) = cli(&db, &["cutover", "--table", "nosuch", "--yes"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no table public.nosuch"), "{err}");

    // Help: examples everywhere, global flags grouped, --dsn not required.
    for sub in [
        "plan",
        "rewrite",
        "status",
        "abort",
        "cutover",
        "verify",
        "demo",
        "soak",
        "completions",
        "man",
    ] {
        let (code, out, _) = cli(&db, &[sub, "--help"]).await;
        assert_eq!(code, 0, "{sub}");
        assert!(out.contains("Examples:\n  pg-rekey"), "{sub}: {out}");
        assert!(out.contains("Global options:"), "{sub}: {out}");
        let usage = out.lines().find(|l| l.starts_with("Usage:")).unwrap();
        assert!(!usage.contains("--dsn"), "{sub}: {usage}");
    }
    let (_, out, _) = cli(&db, &["cutover", "--help"]).await;
    for flag in [
        "--wait-for-lag",
        "--yes",
        "--json",
        "--hook-dir",
        "--max-lag-bytes <SIZE>",
    ] {
        assert!(out.contains(flag), "{flag}: {out}");
    }

    // Completions and the man page come from the same definition.
    let (code, bash, _) = cli(&db, &["completions", "bash"]).await;
    assert_eq!(code, 0);
    assert!(
        bash.contains("complete -F _pg__rekey") && bash.contains("--wait-for-lag"),
        "{bash}"
    );
    let (code, zsh, _) = cli(&db, &["completions", "zsh"]).await;
    assert_eq!(code, 0);
    assert!(zsh.starts_with("#compdef pg-rekey"), "{zsh}");
    let (code, man, _) = cli(&db, &["man"]).await;
    assert_eq!(code, 0);
    assert!(man.contains(".TH pg-rekey 1"), "{man}");
    assert!(man.contains(".TH pg-rekey-cutover 1"), "{man}");

    drop(tx);
    let _ = job.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_shows_chunks_of_total_rate_and_eta_on_a_terminal() {
    let (db, c, tx, job) = streaming(&["sessions"]).await;
    c.batch_execute(
        "INSERT INTO sessions (user_id, token) SELECT 1 + g % 20, md5(g::text) FROM generate_series(1, 4000) g;
         ANALYZE sessions",
    )
    .await
    .unwrap();
    let (code, shown) = on_terminal(&db, "verify --table sessions --chunk-rows 5", "").await;
    assert_eq!(code, 0, "{shown}");
    let line = shown
        .split(['\r', '\n'])
        .find(|l| l.contains("verify public.sessions: chunk "))
        .unwrap_or_else(|| panic!("no progress shown: {shown:?}"));
    assert!(
        line.contains(" of ~8"),
        "the total from the estimate: {line}"
    );
    assert!(line.contains(" rows/s"), "{line}");
    drop(tx);
    let _ = job.await;
}
