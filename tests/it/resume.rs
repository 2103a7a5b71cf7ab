//! Resume after anything: the built binary dies at each named failpoint
//! (`PGREKEY_FAILPOINT`, see `src/failpoint.rs`) or is killed with SIGKILL,
//! or the server restarts under it; the same command is run again and the
//! job goes on. Every test ends with a cutover and asserts that the new
//! table equals the old one translated through the parent's current uuids
//! (so no change was lost or applied twice, and the id map was right), that
//! the swap happened once, and that no slot, publication or durable map is
//! left. In between, `status` must show the dead owner and the next command.

use std::process::Stdio;
use std::time::{Duration, Instant};

use pg_rekey::embedded::{Cluster, ClusterOptions};
use tokio::process::{Child, Command};
use tokio_postgres::Client;

use crate::rewrite::{catch_up, wait_phase};
use crate::support::{compare_translated, connect, wait_for, TestDb};

const SCHEMA: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, uuid uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
CREATE TABLE notes (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id), body text);
CREATE TABLE likes (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id));
CREATE INDEX ON notes (user_id);
CREATE INDEX ON likes (user_id);
INSERT INTO users (id) SELECT g FROM generate_series(1, 50) g;
INSERT INTO notes SELECT g, 1 + g % 50, 'n' || g FROM generate_series(1, 3000) g;
INSERT INTO likes SELECT g, 1 + g % 50 FROM generate_series(1, 1000) g;
ANALYZE;";

const TABLES: &[&str] = &["notes", "likes"];

fn rewrite_args() -> Vec<&'static str> {
    vec![
        "rewrite",
        "--parent",
        "users",
        "--uuid-column",
        "uuid",
        "--table",
        "notes",
        "--table",
        "likes",
        "--reconnect-timeout",
        "2m",
    ]
}

fn command(dsn: &str, args: &[&str], failpoint: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pg-rekey"));
    cmd.arg("--dsn")
        .arg(dsn)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGREKEY_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(fp) = failpoint {
        cmd.env("PGREKEY_FAILPOINT", fp);
    }
    cmd
}

fn spawn(dsn: &str, args: &[&str], failpoint: Option<&str>) -> Child {
    command(dsn, args, failpoint)
        .spawn()
        .expect("spawn pg-rekey")
}

async fn finish(child: Child) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("pg-rekey ends")
        .expect("wait for pg-rekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run(dsn: &str, args: &[&str], failpoint: Option<&str>) -> (i32, String, String) {
    finish(spawn(dsn, args, failpoint)).await
}

/// Changes of every kind the stream must carry, in separate transactions:
/// a new user referenced in its own transaction, a parent uuid change
/// (re-pointing), updates, deletes, and a note for user 45, whom
/// [`while_dead`] deletes — replaying this note needs the map as of the
/// resume point, not the parent as it is now.
async fn writes(c: &Client, round: i64) {
    let u = 1000 + round;
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO users (id) VALUES ({u}); INSERT INTO notes VALUES ({}, {u}, 'new'); COMMIT;
         UPDATE users SET uuid = gen_random_uuid() WHERE id = {};
         UPDATE users SET uuid = gen_random_uuid() WHERE id = 3;
         UPDATE notes SET body = body || 'x' WHERE id <= 3000 AND id % 10 = {};
         DELETE FROM likes WHERE id <= 1000 AND id % 50 = {};
         INSERT INTO likes VALUES ({}, {u});
         INSERT INTO notes SELECT {}, id, 'for 45' FROM users WHERE id = 45;",
        100_000 + round,
        1 + round % 40,
        round % 10,
        round % 50,
        100_000 + round,
        200_000 + round,
    ))
    .await
    .expect("writes");
}

/// While no process applies the stream: user 45 and its rows go away, user
/// 3's uuid changes once more (see [`writes`]).
async fn while_dead(c: &Client) {
    c.batch_execute(
        "DELETE FROM notes WHERE user_id = 45; DELETE FROM likes WHERE user_id = 45;
         DELETE FROM users WHERE id = 45;
         UPDATE users SET uuid = gen_random_uuid() WHERE id = 3;
         INSERT INTO notes SELECT 300000 + g, 1 + g % 40, 'while dead' FROM generate_series(1, 200) g;",
    )
    .await
    .expect("writes while the owner is dead");
}

async fn status_json(dsn: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = run(dsn, &["status", "--json"], None).await;
    assert_eq!(code, 0, "status: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// Fence through the stream until the job applied past it (the resumed
/// owner is streaming).
async fn resumed(c: &Client) {
    wait_phase(c, TABLES, "streaming").await;
    catch_up(c).await;
}

/// Each old table equals its new one translated back.
async fn assert_old_follows_new(c: &Client) {
    for t in TABLES {
        let (missing, extra) = compare_translated(
            c,
            &format!("_rekey_old_{t}"),
            t,
            &["user_id"],
            "users",
            "id",
            "uuid",
        )
        .await;
        assert_eq!(
            (missing, extra),
            (0, 0),
            "{t}: rows missing/extra after resume"
        );
    }
}

/// New tables equal the old ones translated; swapped once; nothing left.
async fn assert_done(c: &Client) {
    assert_old_follows_new(c).await;
    for t in TABLES {
        let ty: String = c
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'user_id'",
                &[t],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ty, "uuid", "{t} swapped");
    }
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
                    (SELECT count(*) FROM pg_publication),
                    (SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rekey\\_old\\_\\_rekey%' OR relname LIKE '\\_rekey\\_new\\_%'),
                    (SELECT count(*) FROM pg_tables WHERE schemaname = 'pgrekey' AND tablename LIKE 'idmap\\_%')",
            &[],
        )
        .await
        .unwrap();
    let left: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        left,
        (0, 0, 0, 0),
        "slots, publications, double-swapped or shadow tables, durable maps left"
    );
}

/// The shadow of `table` as stored: its oid and its file (a TRUNCATE or a
/// new copy gives it a new file; dropped and created again, a new oid).
async fn shadow_storage(c: &Client, table: &str) -> Option<(u32, u32)> {
    c.query_opt(
        "SELECT c.oid, c.relfilenode FROM pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
        &[&format!("_rekey_new_{table}")],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// Kill the rewrite at `failpoint`, check `status`, write while it is dead,
/// run the same rewrite again, cut over, check.
async fn rewrite_dies_at(failpoint: &str) {
    rewrite_dies_keeping(failpoint, &[]).await
}

/// [`rewrite_dies_at`], and the shadows of `kept` (tables whose copy was
/// complete when the process died) are not copied again by the resume.
async fn rewrite_dies_keeping(failpoint: &str, kept: &[&str]) {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let args = rewrite_args();
    let child = spawn(&dsn, &args, Some(failpoint));
    if failpoint.starts_with("apply.") {
        wait_phase(&c, TABLES, "streaming").await;
        writes(&c, 1).await;
    }
    let (code, _, err) = finish(child).await;
    assert_eq!(code, 99, "died at {failpoint}: {err}");

    // Dead, and shown as such with the command that resumes it.
    let st = status_json(&dsn).await;
    assert_eq!(st.len(), 2, "{st:?}");
    for t in &st {
        assert_eq!(t["owner_alive"], false, "{t}");
        assert!(t["owner_gone_since"].is_string(), "{t}");
        let next = t["next_command"].as_str().unwrap_or_default();
        assert!(
            next.contains("pg-rekey rewrite --parent public.users --uuid-column uuid")
                && next.contains("--table public.notes")
                && next.contains("--table public.likes")
                && next.contains("pg-rekey abort --table"),
            "{next}"
        );
    }
    let (_, text, _) = run(&dsn, &["status"], None).await;
    assert!(
        text.contains("(owner gone)") && text.contains("OWNER GONE"),
        "{text}"
    );

    if failpoint.starts_with("apply.") || failpoint == "rewrite.after_copy" {
        // Streaming, but nobody applies the stream: cutover says so at once.
        let (code, _, err) = run(
            &dsn,
            &["cutover", "--table", "notes", "--table", "likes"],
            None,
        )
        .await;
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("is not running") && err.contains("resume it first"),
            "{err}"
        );
    }
    let mut before = Vec::new();
    for t in kept {
        let s = shadow_storage(&c, t).await;
        assert!(
            s.is_some(),
            "{t}: the copied shadow is kept while the job is dead"
        );
        before.push(s);
    }
    while_dead(&c).await;
    let child = spawn(&dsn, &args, None);
    resumed(&c).await;
    for (t, b) in kept.iter().zip(&before) {
        assert_eq!(
            &shadow_storage(&c, t).await,
            b,
            "{t}: copied before the kill, it must not be copied again by the resume"
        );
    }
    writes(&c, 2).await;
    cut_over_and_end(&dsn, child, "resumed rewrite ends at cutover").await;
    assert_done(&c).await;
}

#[tokio::test]
async fn dies_after_register() {
    rewrite_dies_at("rewrite.after_register").await;
}

#[tokio::test]
async fn dies_after_slot() {
    rewrite_dies_at("rewrite.after_slot").await;
}

/// Killed with one batch of the first table in its shadow: that copy is
/// not complete, so it is emptied and done again (with the other table);
/// the rows already there are not counted twice.
#[tokio::test]
async fn dies_during_a_tables_copy() {
    rewrite_dies_at("copy.after_batch").await;
}

/// Killed with the first table's indexes built (each committed on its own)
/// but its copy not recorded complete: the resume drops them, copies the
/// table again and builds them again.
#[tokio::test]
async fn dies_after_index_builds() {
    rewrite_dies_at("copy.after_index_builds").await;
}

#[tokio::test]
async fn dies_after_first_table_copied() {
    rewrite_dies_keeping("copy.after_first_table", &["notes"]).await;
}

#[tokio::test]
async fn dies_after_copy() {
    rewrite_dies_at("rewrite.after_copy").await;
}

#[tokio::test]
async fn dies_before_shadow_commit() {
    rewrite_dies_at("apply.before_commit").await;
}

#[tokio::test]
async fn dies_after_shadow_commit() {
    rewrite_dies_at("apply.after_commit").await;
}

/// Every failpoint compiled in has a test here.
#[test]
fn every_failpoint_is_tested() {
    let this = concat!(include_str!("resume.rs"), include_str!("prepare.rs"));
    for name in pg_rekey::failpoint::NAMES {
        assert!(
            this.contains(&format!("(\"{name}\"")),
            "no test dies at {name}"
        );
    }
}

/// Kill the cutover at `failpoint` while the rewrite streams; run it again.
async fn cutover_dies_at(failpoint: &str) {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let rewrite = spawn(&dsn, &rewrite_args(), None);
    wait_phase(&c, TABLES, "streaming").await;
    writes(&c, 1).await;
    let cut = ["cutover", "--table", "notes", "--table", "likes"];
    let (code, _, err) = run(&dsn, &cut, Some(failpoint)).await;
    assert_eq!(code, 99, "died at {failpoint}: {err}");
    let st = status_json(&dsn).await;
    if failpoint == "cutover.before_swap" {
        // Not swapped; shown as stuck, with the owner alive.
        for t in &st {
            assert_eq!(t["phase"], "cutting_over", "{t}");
            assert_eq!(t["stuck_cutover"], true, "{t}");
            assert_eq!(t["owner_alive"], true, "{t}");
        }
        let (_, text, _) = run(&dsn, &["status"], None).await;
        assert!(text.contains("STUCK in cutting_over"), "{text}");
        let ty: String = c
            .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'notes'::regclass AND attname = 'user_id'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ty, "bigint", "the killed swap did not commit");
        writes(&c, 2).await;
    } else {
        for t in &st {
            assert_eq!(t["phase"], "cut_over", "{t}");
        }
    }
    let (code, out, err) = run(&dsn, &cut, None).await;
    assert_eq!(code, 0, "cutover again: {out}{err}");
    let (code, _, err) = finish(rewrite).await;
    assert_eq!(code, 0, "rewrite ends at cutover: {err}");
    assert_done(&c).await;
}

#[tokio::test]
async fn cutover_dies_before_swap_commit() {
    cutover_dies_at("cutover.before_swap").await;
}

#[tokio::test]
async fn cutover_dies_after_swap_commit() {
    cutover_dies_at("cutover.after_commit").await;
}

/// SIGKILL while streaming under writes; a second rewrite is refused while
/// the first lives; after the kill the same command takes over. Prints the
/// WAL the dead job's slot retained and the time to resume (README figures;
/// `PGREKEY_RESUME_BENCH_USERS` adds users and notes for a bigger map,
/// `PGREKEY_RESUME_BENCH_DEAD_SECS` keeps writing that long while dead).
#[tokio::test]
async fn kill_9_while_streaming_resumes() {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let (extra_users, dead_secs) = (
        env("PGREKEY_RESUME_BENCH_USERS"),
        env("PGREKEY_RESUME_BENCH_DEAD_SECS"),
    );
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    if extra_users > 0 {
        c.batch_execute(&format!(
            "INSERT INTO users (id) SELECT 1000000 + g FROM generate_series(1, {extra_users}) g;
             INSERT INTO notes SELECT 1000000 + g, 1000000 + g, 'bench' FROM generate_series(1, {extra_users}) g;
             ANALYZE;"
        ))
        .await
        .unwrap();
    }
    let args = rewrite_args();
    let mut first = spawn(&dsn, &args, None);
    wait_phase(&c, TABLES, "streaming").await;
    writes(&c, 1).await;

    // A live owner is recognised by its lock, not its pid.
    let (code, _, err) = run(&dsn, &args, None).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("by a live process"), "{err}");

    catch_up(&c).await;
    if extra_users > 0 {
        // A job killed long after its copy: wait until the slot no longer
        // retains the copy's own WAL (the walsender moves its restart point
        // at the running-transactions records the server logs every 15 s).
        wait_for(
            "the slot to let go of the copy's WAL",
            Duration::from_secs(120),
            || async {
                c.batch_execute("UPDATE notes SET body = body WHERE id = 1")
                    .await
                    .unwrap();
                catch_up(&c).await;
                let r = status_json(&dsn).await[0]["wal_retained_bytes"]
                    .as_i64()
                    .unwrap_or(0);
                (r < 64 << 20).then_some(())
            },
        )
        .await;
    }
    let before = status_json(&dsn).await[0]["wal_retained_bytes"]
        .as_i64()
        .unwrap_or(0);
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let dead = Instant::now();
    let mut rounds = 0;
    while rounds < 20 || dead.elapsed() < Duration::from_secs(dead_secs as u64) {
        writes(&c, 10 + rounds).await;
        rounds += 1;
        if dead_secs > 0 {
            // About 300 transactions/s, as in the report.
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
    }
    eprintln!(
        "figure: {rounds} rounds of writes (10 transactions each) in {:.1} s while the owner was dead",
        dead.elapsed().as_secs_f64()
    );
    while_dead(&c).await;
    let st = status_json(&dsn).await;
    let retained = st[0]["wal_retained_bytes"].as_i64().unwrap_or(0);
    assert!(retained > 0, "the dead job's slot retains WAL: {st:?}");
    eprintln!(
        "figure: WAL retained by the dead job's slot: {retained} bytes ({} more than just before the kill)",
        retained - before
    );

    let started = Instant::now();
    let second = spawn(&dsn, &args, None);
    resumed(&c).await;
    eprintln!(
        "figure: resume after kill -9 (start to caught up): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    writes(&c, 9_000).await;
    let (code, out, err) = run(
        &dsn,
        &["cutover", "--table", "notes", "--table", "likes"],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = finish(second).await;
    if extra_users > 0 {
        eprintln!("resumed rewrite:\n{err}");
    }
    assert_eq!(code, 0, "{err}");
    assert_done(&c).await;
}

/// `pg_ctl restart -m fast` while streaming, on a cluster of its own (the
/// shared one serves the other tests): the same process reconnects, takes
/// its job back and finishes; nothing lost or doubled.
#[tokio::test]
async fn server_restart_while_streaming() {
    let (cluster, spec, c) = restartable(vec!["wal_sender_timeout = '4s'".into()]).await;
    let dsn = spec.to_dsn();
    let rewrite = spawn(&dsn, &rewrite_args(), None);
    wait_phase(&c, TABLES, "streaming").await;
    writes(&c, 1).await;
    drop(c);

    let (cluster, c, started) = restart(cluster, &spec).await;
    writes(&c, 2).await;
    while_dead(&c).await;
    resumed(&c).await;
    eprintln!(
        "figure: back to streaming after pg_ctl restart -m fast: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    cut_over_and_end(&dsn, rewrite, "the rewrite survived the restart").await;
    assert_done(&c).await;
    drop(c);
    drop(cluster);
}

/// An applier whose process was taken over (its state session lost, its
/// apply session not) cannot record a position any more: its shadow
/// transaction fails before COMMIT. One that waited on the take-over's row
/// lock re-checks the owner after it.
#[tokio::test]
async fn a_taken_over_applier_cannot_commit() {
    use pg_rekey::pg::{Lsn, QualifiedName};
    use pg_rekey::state::{self, NewJob, StateError};
    let db = TestDb::new().await;
    let c = db.client().await;
    state::ensure_schema(&c).await.unwrap();
    let job_id = uuid::Uuid::new_v4();
    let source = QualifiedName::new("public", "t");
    state::register_job(
        &c,
        &NewJob {
            job_id,
            shadow: pg_rekey::ddl::shadow_name(&source),
            source,
            source_oid: 1,
            slot_name: "s".into(),
            publication_name: "p".into(),
            rows_estimate: 0,
            parent: QualifiedName::new("public", "users"),
            parent_uuid_column: "uuid".into(),
            spec: None,
        },
    )
    .await
    .unwrap();
    // The owner (this process) records; meanwhile a take-over waits on the row.
    let mut apply = db.client().await;
    let txn = apply.transaction().await.unwrap();
    state::record_applied(&txn, job_id, Lsn(0x100))
        .await
        .unwrap();
    let other = db.client().await;
    let takeover = tokio::spawn(async move {
        other
            .execute(
                "UPDATE pgrekey.jobs SET owner_pid = 1, owner_host = 'elsewhere' WHERE job_id = $1",
                &[&job_id],
            )
            .await
            .unwrap()
    });
    crate::support::wait_for("the take-over to wait on the row", Duration::from_secs(30), || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()", &[])
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    txn.commit().await.unwrap();
    assert_eq!(takeover.await.unwrap(), 1);
    // The old owner's next shadow transaction.
    let txn = apply.transaction().await.unwrap();
    let e = state::record_applied(&txn, job_id, Lsn(0x200))
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::OwnerChanged { .. }), "{e}");
    drop(txn);
    assert_eq!(
        state::applied_lsn(&c, job_id).await.unwrap(),
        Some(Lsn(0x100)),
        "only the owner's position counts"
    );
}

/// `pg_ctl restart -m fast` while the second table is being copied: the
/// running process reconnects and goes on with the copy, keeping the first
/// table's complete copy (same file) and copying the second again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_during_copy() {
    let (cluster, spec, c) = restartable(Vec::new()).await;
    let dsn = spec.to_dsn();
    // Enough rows in the second table to restart the server while it copies.
    c.batch_execute(
        "INSERT INTO likes SELECT g, 1 + g % 50 FROM generate_series(1000001, 1800000) g; ANALYZE likes;",
    )
    .await
    .unwrap();
    let rewrite = spawn(&dsn, &rewrite_args(), None);
    wait_for(
        "the copy of likes to be under way, notes' copy complete",
        Duration::from_secs(120),
        || {
            let c = &c;
            async move {
                let row = c
                    .query_one(
                        "SELECT (SELECT synced_lsn IS NOT NULL FROM pgrekey.jobs WHERE source_table = 'notes'),
                                EXISTS (SELECT FROM pg_stat_progress_copy
                                         WHERE relid = pg_catalog.to_regclass('_rekey_new_likes')
                                           AND tuples_processed > 0)",
                        &[],
                    )
                    .await
                    .ok()?;
                (row.get::<_, Option<bool>>(0) == Some(true) && row.get::<_, bool>(1)).then_some(())
            }
        },
    )
    .await;
    let notes_before = shadow_storage(&c, "notes").await;
    assert!(notes_before.is_some());
    drop(c);
    let (cluster, c, _) = restart(cluster, &spec).await;
    while_dead(&c).await;
    resumed(&c).await;
    assert_eq!(
        shadow_storage(&c, "notes").await,
        notes_before,
        "notes was copied before the restart: not copied again"
    );
    writes(&c, 2).await;
    let err = cut_over_and_end(&dsn, rewrite, "the rewrite survived the restart").await;
    assert!(
        err.contains("resuming an interrupted copy"),
        "the copy was resumed, not finished before the restart: {err}"
    );
    assert_done(&c).await;
    drop(c);
    drop(cluster);
}

/// A cluster of the test's own (to restart it), a database in it with
/// [`SCHEMA`], and a session there.
async fn restartable(extra_conf: Vec<String>) -> (Cluster, pg_rekey::pg::ConnSpec, Client) {
    crate::support::init_logging();
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(&ClusterOptions {
            extra_conf,
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .expect("start a cluster of this test's own");
    let admin = connect(&cluster.spec("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE restart")
        .await
        .unwrap();
    drop(admin);
    let spec = cluster.spec("restart");
    let c = connect(&spec).await;
    c.batch_execute(SCHEMA).await.unwrap();
    (cluster, spec, c)
}

/// Cut over the job's tables; the rewrite (`child`) must end with 0.
/// Returns its stderr.
async fn cut_over_and_end(dsn: &str, child: Child, what: &str) -> String {
    let (code, out, err) = run(
        dsn,
        &["cutover", "--table", "notes", "--table", "likes"],
        None,
    )
    .await;
    assert_eq!(code, 0, "cutover ({what}): {out}{err}");
    let (code, _, err) = finish(child).await;
    assert_eq!(code, 0, "{what}: {err}");
    err
}

/// `pg_ctl restart -m fast`, then a session once the server accepts
/// connections again; also when the restart returned.
async fn restart(cluster: Cluster, spec: &pg_rekey::pg::ConnSpec) -> (Cluster, Client, Instant) {
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart_fast().expect("pg_ctl restart -m fast");
        cluster
    })
    .await
    .unwrap();
    let started = Instant::now();
    let c = wait_for(
        "the server to accept connections",
        Duration::from_secs(60),
        || {
            let spec = spec.clone();
            async move { pg_rekey::pg::connect(&spec, "test").await.ok() }
        },
    )
    .await;
    (cluster, c, started)
}

/// The way back: the process serving it dies with changes of the new
/// tables applied to the old ones but not committed, the application goes
/// on writing uuids while it is dead, and the same `rewrite` run again
/// resumes from the slot: nothing lost, nothing applied twice. `finish`
/// then ends the job and the resumed process with it.
#[tokio::test]
async fn way_back_dies_before_commit_and_resumes() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let rewrite = spawn(&dsn, &rewrite_args(), Some("way_back.before_commit"));
    wait_phase(&c, TABLES, "streaming").await;
    writes(&c, 1).await;
    let cut = [
        "cutover",
        "--table",
        "notes",
        "--table",
        "likes",
        "--way-back",
    ];
    let (code, out, err) = run(&dsn, &cut, None).await;
    assert_eq!(code, 0, "cutover --way-back: {out} {err}");
    // The application now sends uuids; the first shadow commit of the way
    // back kills the process.
    let uuid_writes = |round: i64| {
        format!(
            "BEGIN; INSERT INTO users (id) VALUES ({1}); INSERT INTO notes SELECT {0}, uuid, 'ahead' FROM users WHERE id = {1}; COMMIT;
             UPDATE notes SET body = body || 'y', user_id = (SELECT uuid FROM users WHERE id = {2}) WHERE id % 7 = {3};
             DELETE FROM likes WHERE id % 60 = {4};
             INSERT INTO likes SELECT {5}, uuid FROM users WHERE id = 7;",
            400_000 + round,
            5000 + round,
            1 + round % 40,
            round % 7,
            round % 60,
            410_000 + round,
        )
    };
    c.batch_execute(&uuid_writes(1)).await.unwrap();
    let (code, _, err) = finish(rewrite).await;
    assert_eq!(code, 99, "died at way_back.before_commit: {err}");
    for round in 2..6 {
        c.batch_execute(&uuid_writes(round)).await.unwrap();
    }
    let status = status_json(&dsn).await;
    for s in &status {
        assert_eq!(s["phase"], "reverse_streaming", "{s}");
        assert_eq!(s["owner_alive"], false, "{s}");
        assert!(
            s["next_command"]
                .as_str()
                .unwrap_or("")
                .contains("pg-rekey rewrite"),
            "{s}"
        );
    }
    let rewrite = spawn(&dsn, &rewrite_args(), None);
    for round in 6..9 {
        c.batch_execute(&uuid_writes(round)).await.unwrap();
    }
    catch_up(&c).await;
    assert_old_follows_new(&c).await;
    let ahead: i64 = c
        .query_one(
            "SELECT count(*) FROM _rekey_old_notes WHERE body = 'ahead' OR body LIKE '%y'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        ahead >= 8,
        "the writes made while the process was dead reached the old table: {ahead}"
    );
    let (code, out, err) = run(
        &dsn,
        &["finish", "--table", "notes", "--table", "likes", "--yes"],
        None,
    )
    .await;
    assert_eq!(code, 0, "finish: {out} {err}");
    let (code, out, err) = finish(rewrite).await;
    assert_eq!(code, 0, "the resumed rewrite ends with finish: {out} {err}");
    let left: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
                  + (SELECT count(*) FROM pg_publication)
                  + (SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rekey\\_%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "slot, publication or old table left");
}

/// `finish` cut off after its commit while the process serving the way back
/// dies too, before dropping its slot: slot, publication and durable id map
/// are left with no job row to describe them. `status` lists them, with the
/// WAL the slot retains and the fix; `status --prune` drops them; nothing is
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_cut_off_after_its_commit_leaves_what_status_lists_and_prune_drops() {
    let db = TestDb::new().await;
    let dsn = db.spec.to_dsn();
    let c = db.client().await;
    c.batch_execute(SCHEMA).await.unwrap();
    let rewrite = spawn(
        &dsn,
        &rewrite_args(),
        Some("rewrite.finished_before_cleanup"),
    );
    wait_phase(&c, TABLES, "streaming").await;
    writes(&c, 1).await;
    let (code, out, err) = run(
        &dsn,
        &[
            "cutover",
            "--table",
            "notes",
            "--table",
            "likes",
            "--way-back",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "cutover --way-back: {out} {err}");
    let (code, out, err) = run(
        &dsn,
        &["finish", "--table", "notes", "--table", "likes", "--yes"],
        Some("finish.after_commit"),
    )
    .await;
    assert_eq!(code, 99, "finish died after its commit: {out} {err}");
    let (code, _, err) = finish(rewrite).await;
    assert_eq!(
        code, 99,
        "the serving process saw its rows gone and died before dropping its slot: {err}"
    );
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM pgrekey.jobs").await, 0);
    let left = "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
                     + (SELECT count(*) FROM pg_publication)
                     + (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'pgrekey' AND c.relkind = 'r' AND c.relname LIKE 'idmap\\_%')";
    assert_eq!(count(left).await, 3, "slot, publication and map are left");

    let (code, out, err) = run(&dsn, &["status"], None).await;
    assert_eq!(code, 0, "status: {err}");
    assert!(out.contains("left over, no job describes them"), "{out}");
    let slot = out
        .lines()
        .find(|l| l.contains("replication slot pg_rekey_"))
        .unwrap_or_else(|| panic!("no leftover slot listed: {out}"));
    assert!(slot.contains("of WAL"), "{slot}");
    assert!(out.contains("publication pg_rekey_"), "{out}");
    assert!(out.contains("id map table pgrekey.idmap_"), "{out}");
    assert!(
        out.contains("`pg-rekey status --prune` drops them"),
        "{out}"
    );

    let (code, out, err) = run(&dsn, &["status", "--prune"], None).await;
    assert_eq!(code, 0, "status --prune: {err}");
    assert_eq!(out.matches("dropped the leftover").count(), 3, "{out}");
    assert_eq!(count(left).await, 0, "nothing left after prune");
    let (_, out, _) = run(&dsn, &["status"], None).await;
    assert!(!out.contains("left over"), "{out}");
}
