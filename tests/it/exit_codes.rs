//! The built `pg-rekey` binary against the harness server: every command
//! exits by the one rule (0 done; 1 found something or gave up with nothing
//! harmed; 2 error), `rewrite` without `--table` takes what `plan` finds and
//! says so, a refused `rewrite` prints its plan once, and `plan` does not
//! claim `~0 rows` for a table that was never analyzed.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_postgres::Client;

use crate::rewrite::wait_phase;
use crate::support::TestDb;

/// `users` (uuid column `uuid`), `notes` (never analyzed, autovacuum off so
/// it stays that way) and `likes` (analyzed), both referencing `users`.
const SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, uuid uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
CREATE TABLE notes (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id), body text)
    WITH (autovacuum_enabled = false);
CREATE TABLE likes (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id));
INSERT INTO users (id) SELECT g FROM generate_series(1, 50) g;
INSERT INTO notes SELECT g, 1 + g % 50, 'n' || g FROM generate_series(1, 200) g;
INSERT INTO likes SELECT g, 1 + g % 50 FROM generate_series(1, 100) g;
ANALYZE users;
ANALYZE likes;";

/// An orphaned reference in `notes`, past the foreign key (as a bulk loader
/// with triggers off would leave it).
const ORPHAN: &str = "SET session_replication_role = replica;
    INSERT INTO notes VALUES (9999, 777, 'orphan');
    RESET session_replication_role;";

/// A server that is not there: every command's error case.
const NOWHERE: &str = "postgres://nobody@127.0.0.1:1/none?connect_timeout=5";

fn command(dsn: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg-rekey"));
    cmd.arg("--dsn")
        .arg(dsn)
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run the binary to its end: (exit code, stdout, stderr).
async fn run_dsn(dsn: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), command(dsn, args).output())
        .await
        .unwrap_or_else(|_| panic!("pg-rekey {args:?} did not finish"))
        .expect("run pg-rekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    run_dsn(&db.spec.to_dsn(), args).await
}

/// Start the binary in the background (killed if the test fails first).
fn spawn(db: &TestDb, args: &[&str]) -> Child {
    command(&db.spec.to_dsn(), args)
        .spawn()
        .expect("spawn pg-rekey")
}

/// Wait for a background run to end: (exit code, stdout, stderr).
async fn finish(child: Child) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the background pg-rekey ends")
        .expect("wait for pg-rekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn setup() -> (TestDb, Client) {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.expect("schema");
    (db, c)
}

async fn type_of(c: &Client, table: &str) -> String {
    c.query_one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'user_id'",
        &[&table],
    )
    .await
    .unwrap()
    .get(0)
}

const PARENT: [&str; 4] = ["--parent", "users", "--uuid-column", "uuid"];

fn with_parent<'a>(cmd: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd];
    v.extend(PARENT);
    v.extend(rest);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_exits_0_ready_1_blocked_2_error_and_tells_an_unanalyzed_table() {
    let (db, c) = setup().await;
    let (code, out, err) = run(&db, &with_parent("plan", &[])).await;
    assert_eq!(code, 0, "ready: {out}{err}");
    // Never analyzed: no made-up "~0 rows"; analyzed: the estimate.
    assert!(
        out.contains(
            "public.notes -> shadow public._rekey_new_notes (rows unknown: never analyzed, "
        ),
        "{out}"
    );
    assert!(!out.contains("~0 rows"), "{out}");
    assert!(
        out.contains("public.likes -> shadow public._rekey_new_likes (~100 rows"),
        "{out}"
    );
    let (code, out, _) = run(&db, &with_parent("plan", &["--json"])).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    let estimate = |name: &str| {
        json["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .map(|t| t["row_estimate"].clone())
            .unwrap()
    };
    assert_eq!(estimate("public.notes"), serde_json::Value::Null);
    assert_eq!(estimate("public.likes"), serde_json::json!(100));

    c.batch_execute(ORPHAN).await.unwrap();
    let (code, out, _) = run(&db, &with_parent("plan", &[])).await;
    assert_eq!(code, 1, "an orphaned reference blocks: {out}");

    // A missing parent is a finding too (with its fix), not an error.
    let (code, out, _) = run(
        &db,
        &["plan", "--parent", "no_such_table", "--uuid-column", "uuid"],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    // An error: nothing listens on port 1.
    let (code, _, err) = run_dsn(NOWHERE, &with_parent("plan", &[])).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rewrite_exits_1_and_prints_its_plan_once() {
    let (db, c) = setup().await;
    c.batch_execute(ORPHAN).await.unwrap();
    // No --table: the tables plan finds, named before anything starts.
    let (code, out, err) = run(&db, &with_parent("rewrite", &[])).await;
    assert_eq!(code, 1, "refused by the preflight: {out}{err}");
    assert!(
        out.contains("no --table given: rewriting the 2 table(s)")
            && out.contains("public.likes")
            && out.contains("public.notes"),
        "{out}"
    );
    let all = format!("{out}{err}");
    assert_eq!(
        all.matches("findings: ").count(),
        1,
        "the plan is printed once, not once per table:\n{all}"
    );
    assert!(all.contains("777"), "the blocker is shown: {all}");
    // Nothing was created.
    let shadows: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rekey\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(shadows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_stopped_by_its_data_exits_1() {
    let (db, c) = setup().await;
    let rewrite = spawn(&db, &with_parent("rewrite", &["--table", "notes"]));
    wait_phase(&c, &["notes"], "streaming").await;
    c.batch_execute(ORPHAN).await.unwrap();
    let (code, out, err) = finish(rewrite).await;
    assert_eq!(
        code, 1,
        "stopped by an orphan, sources untouched: {out}{err}"
    );
    assert!(err.contains("777"), "{err}");
    assert_eq!(type_of(&c, "public.notes").await, "bigint");
    let (code, out, err) = run(&db, &["abort", "--table", "notes"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_status_verify_cutover_and_abort_exit_by_the_same_rule() {
    let (db, c) = setup().await;
    // rewrite with no --table: every table plan finds.
    let rewrite = spawn(&db, &with_parent("rewrite", &[]));
    wait_phase(&c, &["notes", "likes"], "streaming").await;

    let (code, out, err) = run(&db, &["status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("notes") && out.contains("likes"),
        "both discovered tables are rewritten: {out}"
    );
    let (code, out, err) = run(&db, &["verify", "--table", "notes", "--table", "likes"]).await;
    assert_eq!(code, 0, "equal before cutover: {out}{err}");

    // A swap that fails (a view the new column type breaks) rolls back: 1.
    c.batch_execute("CREATE VIEW notes_of_3 AS SELECT id FROM notes WHERE user_id = 3")
        .await
        .unwrap();
    let cutover = [
        "cutover",
        "--table",
        "notes",
        "--table",
        "likes",
        "--skip-verify",
        "--lock-timeout",
        "1s",
    ];
    let (code, out, err) = run(&db, &cutover).await;
    assert_eq!(code, 1, "swap failed, nothing harmed: {out}{err}");
    assert_eq!(type_of(&c, "public.notes").await, "bigint");
    let phases: Vec<String> = pg_rekey::state::list_jobs(&c)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.phase.to_string())
        .collect();
    assert_eq!(phases, vec!["streaming", "streaming"], "still streaming");

    c.batch_execute("DROP VIEW notes_of_3").await.unwrap();
    let (code, out, err) = run(&db, &cutover).await;
    assert_eq!(code, 0, "swapped: {out}{err}");
    assert_eq!(type_of(&c, "public.notes").await, "uuid");
    let (code, out, err) = finish(rewrite).await;
    assert_eq!(
        code, 0,
        "the rewrite ends when its tables are cut over: {out}{err}"
    );
    assert!(
        out.contains("no --table given: rewriting the 2 table(s)"),
        "{out}"
    );

    let (code, _, err) = run(&db, &["cutover", "--table", "no_such_table"]).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = run(&db, &["verify", "--table", "notes"]).await;
    assert_eq!(code, 0, "old and new equal: {out}{err}");
    c.batch_execute("UPDATE notes SET body = 'tampered' WHERE id = 1")
        .await
        .unwrap();
    let (code, out, err) = run(&db, &["verify", "--table", "notes"]).await;
    assert_eq!(code, 1, "a difference: {out}{err}");

    let (code, out, err) = run(&db, &["abort", "--table", "notes"]).await;
    assert_eq!(code, 0, "nothing to abort after cutover: {out}{err}");

    // Errors: nothing listens on port 1.
    for args in [
        vec!["status"],
        vec!["abort", "--table", "notes"],
        vec!["verify", "--table", "notes"],
    ] {
        let (code, _, err) = run_dsn(NOWHERE, &args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}
