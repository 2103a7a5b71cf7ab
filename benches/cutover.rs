//! Cutover benchmark: swap the five referencing tables of the example schema
//! ([`pg_rekey::workload`]) — or more, with extra tables — while writers and
//! readers keep running, and report what the application felt.
//!
//! ```text
//! cargo bench --bench cutover                              # 5 runs, 200k rows, 20k users
//! PGREKEY_BENCH_RUNS=9 cargo bench --bench cutover
//! PGREKEY_BENCH_ROWS=1000000 PGREKEY_BENCH_USERS=100000 cargo bench --bench cutover
//! PGREKEY_BENCH_WRITERS=6 PGREKEY_BENCH_READERS=4 cargo bench --bench cutover
//! PGREKEY_BENCH_TABLE_COUNTS=5,9,17 cargo bench --bench cutover  # 5, 9 and 17 tables per run
//! PGREKEY_BENCH_SWAP_PROFILE=1 cargo bench --bench cutover  # also time each swap statement
//! PGREKEY_BENCH_ROLLBACK=0 cargo bench --bench cutover   # no way-back cutover and rollback first
//! RUST_LOG=pg_rekey::cutover=debug cargo bench --bench cutover   # every step logged
//! ```
//!
//! More than five tables (`PGREKEY_BENCH_TABLE_COUNTS`, a comma-separated
//! list of counts ≥ 5; default `5`): the example schema plus `extra_01`,
//! `extra_02`, … — each a `bigserial` key (its sequence is carried at the
//! swap), a `NOT NULL` reference to `users` with a foreign key and an index,
//! a second index, a comment, and `rows / 5` seeded rows like the example
//! tables. `PGREKEY_BENCH_EXTRA_WRITERS` sessions (default 1) write them
//! while the example workload runs: each transaction inserts a row into a
//! random extra table (its reference read from `users`, integer until that
//! table is swapped, then the uuid), updates and sometimes deletes one. The
//! counts run alternately within each run (run 1: 5, 9, 17; run 2: 5, 9,
//! 17; …), so each count sees the same load; the summary gives each count's
//! median hold against the 5-table median of the same run (the anchor) and
//! against the goal (≤ 50 ms for 5, ≤ 20 ms for 9, ≤ 40 ms for 17).
//!
//! With `PGREKEY_BENCH_SWAP_PROFILE=1`, before each real cutover the bench
//! asks `cutover --dry-run` for the swap's statements, runs them one at a
//! time in a transaction of its own (under the same locks, workload running)
//! and rolls back, and prints the time per kind of statement: where the
//! `swap_and_state` step of the hold goes. The real cutover sends the same
//! statements as one message, so the sum is an upper bound. Then the
//! statements after the locks are sent whole three ways, each under the
//! same locks and rolled back: pipelined one message each (as the cutover
//! sent them before), as one message (as it sends them now), and as one
//! message with each table's
//! combinable `ALTER TABLE` subcommands merged and one `UPDATE` of the job
//! rows — what batching the swap would save. The profile holds the locks
//! meanwhile, so the real cutover that follows it (and its hold) is
//! disturbed: take hold figures from runs without the profile.
//!
//! Each run gets its own database in one throwaway cluster (embedded defaults:
//! fsync off): schema, seed, workload (writers and readers with 2 ms pauses),
//! `rewrite` of all five tables in-process, wait until streaming and caught up
//! (a fence), two seconds of steady streaming, then `cutover` with the CLI's
//! default lock timeout and hold budget. Just before the cutover the
//! workload's latency maxima are reset, so "worst read" and "worst write" are
//! the worst the application saw while the cutover ran (and the readers that
//! were blocked by the lock finished).
//!
//! Per run: the number of attempts, lock wait (request → granted), lock hold
//! (granted → committed), blocked (Σ over attempts of wait + hold: the time
//! the application's statements on those tables could not proceed), the
//! readers' and writers' worst latency, the writes that failed at the swap
//! (of which: type errors, the expected "reference became uuid" that an
//! application sending integers sees once per table), and the hold split into
//! steps. The summary gives min / median / max.
//!
//! The way back (`PGREKEY_BENCH_ROLLBACK=0` leaves it out): before that
//! cutover, each run first cuts over with a way back (`way_back: true`: the
//! job keeps the old tables current from the new ones), lets the load run
//! on the new tables for two seconds (the writers switched to uuids at the
//! swap), then rolls back (`Direction::Back`) with the same lock budget,
//! measured the same way. The application then rolls back too: the writers
//! are restarted sending integers, the job (streaming forward again) catches
//! up, `verify` checks every shadow against its source (not timed), two
//! more seconds of load, and the cutover above runs as it always
//! did, on the same database, the same job and the same shadows. The
//! summary gives, per table count, the way-back cutover's and the
//! rollback's figures and the ratios of the medians from the same runs:
//! rollback / cutover with a way back, rollback / cutover, and cutover with
//! a way back / cutover. "Other failures" are failed writes that were not
//! the expected type error at a swap (the old writers keep sending uuids
//! after the rollback until they are stopped, so the raw failed-write count
//! of a rollback says little).

#![allow(clippy::disallowed_methods)] // tests and benches spawn their own helpers bare

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pg_rekey::cutover::{self, CutoverConfig, CutoverReport, Direction};
use pg_rekey::embedded::Cluster;
use pg_rekey::pg::{connect, ConnSpec, QualifiedName};
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::workload::{self, Workload, WorkloadOptions, REFERENCING_TABLES};
use pg_rekey::{fence, state};
use tokio::sync::watch;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// What one run measured.
struct Run {
    attempts: usize,
    wait_ms: f64,
    hold_ms: f64,
    blocked_ms: f64,
    worst_read_ms: f64,
    worst_write_ms: f64,
    failed_writes: u64,
    type_errors: u64,
    read_failures: u64,
    phases: Vec<(&'static str, f64)>,
    /// This process's CPU during `cutover::run` (the cutover, and the
    /// workload and applier running beside it), ms.
    tool_cpu_ms: f64,
    /// The whole server's CPU during `cutover::run`, ms.
    server_cpu_ms: f64,
    /// Statements in the swap's locked transaction (from a dry run).
    swap_statements: usize,
    /// Before the cutover above: a cutover with a way back and the rollback
    /// that followed (`PGREKEY_BENCH_ROLLBACK`, on by default).
    way_back: Option<(Swap, Swap)>,
}

fn extra_table(i: usize) -> String {
    format!("extra_{:02}", i + 1)
}

/// The tables one run swaps: the example's five, then `count - 5` extras.
fn tables(count: usize) -> Vec<QualifiedName> {
    REFERENCING_TABLES
        .iter()
        .map(|t| t.to_string())
        .chain((0..count.saturating_sub(REFERENCING_TABLES.len())).map(extra_table))
        .map(|t| QualifiedName::new("public", t))
        .collect()
}

/// Create and seed the extra tables (see the module doc).
async fn create_extras(c: &tokio_postgres::Client, extras: usize, users: u64, rows: u64) {
    let per = (rows / 5).max(1);
    for i in 0..extras {
        let t = extra_table(i);
        let step = [7919, 104_729, 31, 13, 17, 1_000_003, 65_537, 257][i % 8];
        c.batch_execute(&format!(
            "CREATE TABLE {t} (
               id bigserial PRIMARY KEY,
               user_id bigint NOT NULL REFERENCES users (id),
               kind smallint NOT NULL DEFAULT 0,
               note text,
               created_at timestamptz NOT NULL DEFAULT now()
             );
             CREATE INDEX {t}_user_id_idx ON {t} (user_id);
             CREATE INDEX {t}_created_at_idx ON {t} (created_at);
             COMMENT ON TABLE {t} IS 'bench extra table {i}';
             INSERT INTO {t} (user_id, kind, note)
               SELECT 1 + (g * {step}) % {users}, (g % 5)::smallint, 'note ' || g
               FROM generate_series(1::int8, {per}) g;
             ANALYZE {t};"
        ))
        .await
        .unwrap();
    }
}

/// Writers of the extra tables (see the module doc).
struct ExtraLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Of the failures: type errors (a table swapped under the writer).
    type_errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    worst_write_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ExtraLoad {
    async fn start(spec: &ConnSpec, extras: usize, writers: usize, users: u64) -> ExtraLoad {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let type_errors = Arc::new(AtomicU64::new(0));
        let worst_write_us = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..if extras == 0 { 0 } else { writers } {
            let c = connect(spec, "bench extra writer").await.unwrap();
            let (stop, commits, failures, types, worst) = (
                stop.clone(),
                commits.clone(),
                failures.clone(),
                type_errors.clone(),
                worst_write_us.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (w as u64 + 1);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                // Per table: write the uuid (the table was swapped).
                let mut uuid_mode = vec![false; extras];
                while !stop.load(Ordering::Relaxed) {
                    let i = (next() % extras as u64) as usize;
                    let t = extra_table(i);
                    let user = 1 + (next() % users.max(1)) as i64;
                    let expr = if uuid_mode[i] { "uuid_id" } else { "id" };
                    let delete = if next() % 4 == 0 {
                        format!("DELETE FROM {t} WHERE id = (SELECT id FROM {t} ORDER BY id DESC LIMIT 1 OFFSET 20);")
                    } else {
                        String::new()
                    };
                    let sql = format!(
                        "BEGIN;
                         INSERT INTO {t} (user_id, kind, note) SELECT {expr}, 1, 'live' FROM users WHERE id = {user};
                         UPDATE {t} SET note = note || '!', kind = kind + 1 WHERE id = (SELECT max(id) FROM {t});
                         {delete}
                         COMMIT"
                    );
                    let started = Instant::now();
                    match c.batch_execute(&sql).await {
                        Ok(()) => {
                            commits.fetch_add(1, Ordering::Relaxed);
                            worst.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            failures.fetch_add(1, Ordering::Relaxed);
                            // 42804: the column is uuid now (the table was swapped).
                            if e.as_db_error().map(|d| d.code().code()) == Some("42804") {
                                uuid_mode[i] = true;
                                types.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        ExtraLoad {
            stop,
            tasks,
            commits,
            failures,
            type_errors,
            worst_write_us,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `/proc/<pid>/stat` fields after the command name, as numbers.
fn proc_stat(pid: i32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect()
}

/// CPU of the whole server: the postmaster, its live children, and the
/// children it has reaped (its `cutime`/`cstime`).
fn server_cpu(postmaster: i32) -> Duration {
    let own = proc_stat(postmaster);
    // Fields after the name: ppid is index 1, utime 11, stime 12, cutime 13, cstime 14.
    let mut t: u64 = own.get(11..15).map(|f| f.iter().sum()).unwrap_or(0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let f = proc_stat(pid);
        if f.get(1).copied() == Some(postmaster as u64) {
            t += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        }
    }
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(t * 1000 / hz)
}

fn postmaster_pid(cluster: &Cluster) -> i32 {
    std::fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// The kind of a SQL statement: its first upper-case keywords (identifiers
/// and literals left out), e.g. `ALTER TABLE RENAME TO`.
fn statement_kind(sql: &str) -> String {
    let mut words = Vec::new();
    let (mut quoted, mut literal) = (false, false);
    let mut cur = String::new();
    for ch in sql.chars().chain(std::iter::once(' ')) {
        match ch {
            '"' if !literal => quoted = !quoted,
            '\'' if !quoted => literal = !literal,
            _ if quoted || literal => {}
            c if c.is_ascii_alphabetic() || c == '_' => cur.push(c),
            _ => {
                if cur.len() >= 2 && cur.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    words.push(std::mem::take(&mut cur));
                } else {
                    cur.clear();
                }
            }
        }
        if words.len() == 5 {
            break;
        }
    }
    words.join(" ")
}

/// The statements of the swap's locked transaction in a dry run's SQL
/// (between `BEGIN` and `COMMIT`, comments left out).
fn locked_statements(sql: &[String]) -> Vec<&String> {
    sql.iter()
        .skip_while(|s| s.as_str() != "BEGIN")
        .take_while(|s| s.as_str() != "COMMIT")
        .filter(|s| !s.starts_with("--"))
        .collect()
}

/// Run the swap's locked statements (from a dry run) one at a time in a
/// transaction, timed, then roll back; print the time per kind of statement.
/// `LOCK` statements include the wait for the locks; the round trip (the
/// fastest of 20 `SELECT 1`) is printed so that per-kind sums can be read
/// without it. `PGREKEY_BENCH_SWAP_PROFILE=2` prints every statement too.
async fn swap_profile(c: &tokio_postgres::Client, n: u64, count: usize, sql: &[String]) {
    let verbose = std::env::var("PGREKEY_BENCH_SWAP_PROFILE").as_deref() == Ok("2");
    let mut rtt = Duration::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        c.batch_execute("SELECT 1").await.unwrap();
        rtt = rtt.min(t.elapsed());
    }
    let rtt_ms = rtt.as_secs_f64() * 1000.0;
    // The dry run's short lock_timeout is the cutover's; the profile may
    // wait longer for its locks (it is not what is measured).
    let body: Vec<String> = locked_statements(sql)
        .into_iter()
        .map(|s| {
            if s.starts_with("SET LOCAL lock_timeout") {
                "SET LOCAL lock_timeout = '10s'".to_string()
            } else {
                s.clone()
            }
        })
        .collect();
    let mut by_kind: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    let mut total = 0.0;
    let mut failed = None;
    for s in &body {
        let t = Instant::now();
        if let Err(e) = c.batch_execute(s).await {
            failed = Some(format!("{}: {s}", db_message(&e)));
            break;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        total += ms;
        if verbose {
            println!("        {ms:>7.2} ms  {s}");
        }
        let e = by_kind.entry(statement_kind(s)).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    let _ = c.batch_execute("ROLLBACK").await;
    // The same statements pipelined one message each (as the cutover sent
    // them before), as one message (as it sends them now), and as one
    // message with fewer statements; each under the same locks, rolled back.
    let locks = body
        .iter()
        .rposition(|s| s.starts_with("LOCK TABLE"))
        .map_or(0, |i| i + 1);
    let (prefix, swap) = body.split_at(locks);
    let swap: Vec<String> = swap.iter().map(|s| s.to_string()).collect();
    let merged = merge_statements(&swap);
    let mut variants = Vec::new();
    for (name, stmts, one_message) in [
        (
            "pipelined, one message each (the cutover before)",
            &swap,
            false,
        ),
        ("one message (as the cutover)", &swap, true),
        (
            "one message, ALTER TABLEs merged per table, one UPDATE of the job rows",
            &merged,
            true,
        ),
    ] {
        let mut ok = true;
        for p in prefix {
            if let Err(e) = c.batch_execute(p).await {
                variants.push(format!(
                    "        {name}: could not lock: {}",
                    db_message(&e)
                ));
                ok = false;
                break;
            }
        }
        if ok {
            let t = Instant::now();
            let result = if one_message {
                c.batch_execute(&stmts.join(";\n")).await
            } else {
                futures_util::future::join_all(stmts.iter().map(|s| c.batch_execute(s)))
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, _>>()
                    .map(|_| ())
            };
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            variants.push(match result {
                Ok(()) => format!(
                    "        {ms:>7.1} ms  {:>4} statements  {name}",
                    stmts.len()
                ),
                Err(e) => format!("        {name}: failed: {}", db_message(&e)),
            });
        }
        let _ = c.batch_execute("ROLLBACK").await;
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!(
        "run {n}, {count} tables: swap profile: {} statements one at a time, {total:.1} ms (fastest round trip {rtt_ms:.2} ms); by kind (LOCK: with the wait; less round trips: the server's share):",
        body.len(),
    );
    for (k, (cnt, ms)) in kinds {
        println!(
            "        {ms:>7.1} ms  {cnt:>4}×  less round trips {:>6.1} ms  {k}",
            (ms - cnt as f64 * rtt_ms).max(0.0)
        );
    }
    if let Some(f) = failed {
        println!("        (stopped at a failed statement: {f})");
    }
    println!("run {n}, {count} tables: the swap statements (after the locks) sent whole:");
    for v in variants {
        println!("{v}");
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} ({})", d.message(), d.code().code()))
        .unwrap_or_else(|| e.to_string())
}

/// Fewer statements for the same swap (an experiment of the profile): each
/// table's `ALTER TABLE` subcommands that may share one statement (owner,
/// row-level security, replica identity, column defaults and identity,
/// `ADD CONSTRAINT`) merged into one at the place of the last of them, and
/// the job rows' `UPDATE`s into one.
fn merge_statements(swap: &[String]) -> Vec<String> {
    const MERGEABLE: [&str; 8] = [
        "OWNER TO ",
        "ENABLE ROW ",
        "DISABLE ROW ",
        "FORCE ROW ",
        "NO FORCE ROW ",
        "REPLICA IDENTITY ",
        "ALTER COLUMN ",
        "ADD CONSTRAINT ",
    ];
    let split = |s: &str| -> Option<(String, String)> {
        let rest = s.strip_prefix("ALTER TABLE ")?;
        let (table, sub) = rest.split_once(' ')?;
        MERGEABLE
            .iter()
            .any(|m| sub.starts_with(m))
            .then(|| (table.to_string(), sub.to_string()))
    };
    let mut last: std::collections::HashMap<String, usize> = Default::default();
    for (i, s) in swap.iter().enumerate() {
        if let Some((t, _)) = split(s) {
            last.insert(t, i);
        }
    }
    let mut subs: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut jobs = Vec::new();
    let mut out = Vec::new();
    for (i, s) in swap.iter().enumerate() {
        if let Some((t, sub)) = split(s) {
            subs.entry(t.clone()).or_default().push(sub);
            if last.get(&t) == Some(&i) {
                out.push(format!("ALTER TABLE {t} {}", subs[&t].join(", ")));
            }
        } else if let Some(v) = s
            .strip_prefix("UPDATE pgrekey.jobs SET phase = 'cut_over', old_table = ")
            .and_then(|r| r.split_once(" WHERE source_schema = "))
            .and_then(|(old, r)| {
                // `old_table = 'x', way_back = false` (the cutover records
                // whether it keeps a way back).
                let (old, way_back) = old.split_once(", way_back = ")?;
                let (schema, table) = r.split_once(" AND source_table = ")?;
                Some(format!("({schema}, {table}, {old}, {way_back})"))
            })
        {
            jobs.push(v);
        } else {
            out.push(s.clone());
        }
    }
    if !jobs.is_empty() {
        out.push(format!(
            "UPDATE pgrekey.jobs j SET phase = 'cut_over', old_table = v.o, way_back = v.w FROM (VALUES {}) v(s, t, o, w) \
             WHERE j.source_schema = v.s AND j.source_table = v.t",
            jobs.join(", ")
        ));
    }
    out
}

async fn wait_streaming(c: &tokio_postgres::Client, tables: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = state::list_jobs(c).await.unwrap();
        if let Some(f) = jobs.iter().find(|j| j.phase == "failed") {
            panic!("job failed: {:?}", f.error);
        }
        if jobs.len() == tables && jobs.iter().all(|j| j.phase == "streaming") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rewrite never reached streaming"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn catch_up(c: &tokio_postgres::Client) -> Duration {
    let jobs = state::list_jobs(c).await.unwrap();
    let mut ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.job_id).collect();
    ids.dedup();
    let t = Instant::now();
    let f = fence::emit(c, "bench").await.unwrap();
    let ok = fence::wait_drained(c, &ids, f, Instant::now() + Duration::from_secs(300))
        .await
        .unwrap();
    assert!(ok, "the rewrite did not catch up");
    t.elapsed()
}

/// What the application felt during one swap (a cutover or a rollback).
struct Swap {
    report: CutoverReport,
    worst_read_ms: f64,
    worst_write_ms: f64,
    failed_writes: u64,
    type_errors: u64,
    read_failures: u64,
    /// This process's CPU during `cutover::run` (the swap, and the workload
    /// and applier running beside it), ms.
    tool_cpu_ms: f64,
    /// The whole server's CPU during `cutover::run`, ms.
    server_cpu_ms: f64,
}

impl Swap {
    fn attempts(&self) -> usize {
        self.report.attempts.len()
    }
    fn wait_ms(&self) -> f64 {
        self.report.attempts.last().map_or(0.0, |a| a.lock_wait_ms)
    }
    fn hold_ms(&self) -> f64 {
        self.report
            .attempts
            .last()
            .and_then(|a| a.lock_hold_ms)
            .unwrap_or(0.0)
    }
    /// Σ over attempts of wait + hold: the time the application's statements
    /// on those tables could not proceed.
    fn blocked_ms(&self) -> f64 {
        self.report
            .attempts
            .iter()
            .map(|a| a.lock_wait_ms + a.lock_hold_ms.unwrap_or(0.0))
            .sum()
    }
}

/// Run one swap (`cfg`) while the workload runs, measuring what the
/// application felt: latency maxima are reset just before, and readers and
/// writers queued behind the lock are given 300 ms to finish after.
async fn timed_swap(
    cfg: &CutoverConfig,
    what: &str,
    stats: &workload::WorkloadStats,
    extra_load: &ExtraLoad,
    postmaster: i32,
) -> Swap {
    let extra_failures_before = extra_load.failures.load(Ordering::Relaxed);
    let extra_types_before = extra_load.type_errors.load(Ordering::Relaxed);
    extra_load.worst_write_us.store(0, Ordering::Relaxed);
    let failures_before = stats.failures.load(Ordering::Relaxed);
    let types_before = stats.type_switches.load(Ordering::Relaxed);
    let read_failures_before = stats.read_failures.load(Ordering::Relaxed);
    stats.reset_worst();
    let (tool0, server0) = (cpu_time(), server_cpu(postmaster));
    let report: CutoverReport = cutover::run(cfg)
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", pg_rekey::error::chain(&e)));
    let tool_cpu_ms = (cpu_time() - tool0).as_secs_f64() * 1000.0;
    let server_cpu_ms = (server_cpu(postmaster) - server0).as_secs_f64() * 1000.0;
    assert!(report.swapped, "{what}: not swapped: {report:?}");
    // Let readers and writers that were queued behind the lock finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Swap {
        worst_read_ms: stats.worst_read_us.load(Ordering::Relaxed) as f64 / 1000.0,
        worst_write_ms: stats
            .worst_write_us
            .load(Ordering::Relaxed)
            .max(extra_load.worst_write_us.load(Ordering::Relaxed)) as f64
            / 1000.0,
        failed_writes: stats.failures.load(Ordering::Relaxed) - failures_before
            + extra_load.failures.load(Ordering::Relaxed)
            - extra_failures_before,
        type_errors: stats.type_switches.load(Ordering::Relaxed) - types_before
            + extra_load.type_errors.load(Ordering::Relaxed)
            - extra_types_before,
        read_failures: stats.read_failures.load(Ordering::Relaxed) - read_failures_before,
        report,
        tool_cpu_ms,
        server_cpu_ms,
    }
}

async fn one_run(admin: &tokio_postgres::Client, cluster: &Cluster, n: u64, count: usize) -> Run {
    let rows = env_u64("PGREKEY_BENCH_ROWS", 200_000);
    let users = env_u64("PGREKEY_BENCH_USERS", 20_000);
    let extras = count.saturating_sub(REFERENCING_TABLES.len());
    let db = format!("bench_cutover_{n}_{count}");
    // Separate statements: a multi-statement query is one transaction.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let spec: ConnSpec = cluster.spec(&db);
    let c = connect(&spec, "bench").await.unwrap();
    workload::create_schema(&c).await.unwrap();
    let t = Instant::now();
    workload::seed(&c, users, rows).await.unwrap();
    create_extras(&c, extras, users, rows).await;
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    eprintln!(
        "run {n}, {count} tables: seeded {} rows, {users} users in {:.1}s",
        rows + extras as u64 * (rows / 5).max(1),
        t.elapsed().as_secs_f64()
    );
    let opts = WorkloadOptions {
        writers: env_u64("PGREKEY_BENCH_WRITERS", 3) as usize,
        readers: env_u64("PGREKEY_BENCH_READERS", 2) as usize,
        ..WorkloadOptions::default()
    };
    let mut load = Workload::start(&spec, opts).await.unwrap();
    let mut extra_load = ExtraLoad::start(
        &spec,
        extras,
        env_u64("PGREKEY_BENCH_EXTRA_WRITERS", 1) as usize,
        users,
    )
    .await;

    let rcfg = RewriteConfig {
        spec: spec.clone(),
        parent: QualifiedName::new("public", "users"),
        uuid_column: "uuid_id".into(),
        tables: tables(count),
        batch: Default::default(),
        copy: Default::default(),
        copy_sessions: 2,
        throttle: Default::default(),
        reconnect_timeout: std::time::Duration::from_secs(300),
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let t = Instant::now();
    let job = tokio::spawn(async move {
        rewrite::run(&rcfg, stop_rx, pg_rekey::progress::JobProgress::new()).await
    });
    wait_streaming(&c, count).await;
    let streaming_after = t.elapsed();
    let caught_up = catch_up(&c).await;
    eprintln!(
        "run {n}, {count} tables: streaming after {:.1}s, caught up in {:.0} ms",
        streaming_after.as_secs_f64(),
        caught_up.as_secs_f64() * 1000.0
    );
    // Steady streaming under the workload before the swap.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cfg = CutoverConfig {
        spec: spec.clone(),
        tables: tables(count),
        lock_timeout: Duration::from_millis(200),
        max_hold: Duration::from_secs(2),
        attempts: 10,
        backoff: Duration::from_millis(500),
        max_lag_bytes: 16 * 1024 * 1024,
        wait_for_lag: None,
        hooks: Default::default(),
        dry_run: false,
        skip_verify: true,
        verify_chunk_rows: 10_000,
        rewrite_dependents: false,
        way_back: false,
        direction: Default::default(),
    };
    // The swap's statements, from a dry run (catalog reads only).
    let dry = cutover::run(&CutoverConfig {
        dry_run: true,
        ..cfg.clone()
    })
    .await
    .unwrap();
    let swap_statements = locked_statements(&dry.dry_run_sql).len();
    if std::env::var("PGREKEY_BENCH_SWAP_PROFILE").is_ok_and(|v| v != "0") {
        swap_profile(&c, n, count, &dry.dry_run_sql).await;
        // Let the applier catch up on what queued behind the profile's locks.
        catch_up(&c).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let postmaster = postmaster_pid(cluster);
    let mut way = None;
    if env_u64("PGREKEY_BENCH_ROLLBACK", 1) != 0 {
        // The way back: cut over keeping the old tables current, let the
        // load run on the new tables (the writers switched to uuids at the
        // swap), then roll back under the same load.
        let forward = timed_swap(
            &CutoverConfig {
                way_back: true,
                ..cfg.clone()
            },
            "cutover --way-back",
            &load.stats,
            &extra_load,
            postmaster,
        )
        .await;
        catch_up(&c).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let back = timed_swap(
            &CutoverConfig {
                direction: Direction::Back,
                ..cfg.clone()
            },
            "rollback",
            &load.stats,
            &extra_load,
            postmaster,
        )
        .await;
        // The application rolled back too: writers that send integers again
        // (the old ones switched to uuids for good).
        extra_load.stop().await;
        load.stop().await;
        load = Workload::start(&spec, opts).await.unwrap();
        extra_load = ExtraLoad::start(
            &spec,
            extras,
            env_u64("PGREKEY_BENCH_EXTRA_WRITERS", 1) as usize,
            users,
        )
        .await;
        // Not measured: after the rollback every shadow must equal its
        // translated source again (the way back and the rollback lost
        // nothing the forward stream then relies on).
        let verdict = pg_rekey::verify::run(&spec, &tables(count), &Default::default())
            .await
            .unwrap_or_else(|e| {
                panic!("verify after the rollback: {}", pg_rekey::error::chain(&e))
            });
        assert!(
            verdict.equal,
            "run {n}: differences after the rollback:\n{verdict}"
        );
        catch_up(&c).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (what, s) in [("cutover --way-back", &forward), ("rollback", &back)] {
            println!(
                "run {n}, {count} tables: {what}: attempts {} | lock wait {:.1} ms | hold {:.1} ms | blocked {:.1} ms | worst read {:.1} ms | worst write {:.1} ms | failed writes {} ({} type errors) | failed reads {} | cpu tool {:.0} ms, server {:.0} ms",
                s.attempts(), s.wait_ms(), s.hold_ms(), s.blocked_ms(), s.worst_read_ms, s.worst_write_ms, s.failed_writes, s.type_errors, s.read_failures, s.tool_cpu_ms, s.server_cpu_ms
            );
            if let Some(a) = s.report.attempts.last() {
                println!(
                    "        hold: {}",
                    a.phases
                        .iter()
                        .map(|p| format!("{} {:.1}", p.phase, p.ms))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        way = Some((forward, back));
    }
    let swap = timed_swap(&cfg, "cutover", &load.stats, &extra_load, postmaster).await;
    let Swap {
        report,
        worst_read_ms,
        worst_write_ms,
        failed_writes,
        type_errors,
        read_failures,
        tool_cpu_ms,
        server_cpu_ms,
    } = swap;
    let extra_commits = extra_load.commits.load(Ordering::Relaxed);
    extra_load.stop().await;
    load.stop().await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("rewrite did not exit after the cutover")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);
    drop(c);

    let last = report.attempts.last().unwrap();
    let blocked_ms = report
        .attempts
        .iter()
        .map(|a| a.lock_wait_ms + a.lock_hold_ms.unwrap_or(0.0))
        .sum();
    let r = Run {
        attempts: report.attempts.len(),
        wait_ms: last.lock_wait_ms,
        hold_ms: last.lock_hold_ms.unwrap_or(0.0),
        blocked_ms,
        worst_read_ms,
        worst_write_ms,
        failed_writes,
        type_errors,
        read_failures,
        phases: last.phases.iter().map(|p| (p.phase, p.ms)).collect(),
        tool_cpu_ms,
        server_cpu_ms,
        swap_statements,
        way_back: way,
    };
    for a in &report.attempts {
        if a.outcome != "swapped" {
            eprintln!(
                "run {n}, {count} tables: attempt {} {}",
                a.attempt, a.outcome
            );
        }
    }
    println!(
        "run {n}, {count} tables (load average {}): swap of {} statements; cpu during the cutover: tool (with workload and applier) {:.0} ms, server {:.0} ms; extra tables' writer committed {extra_commits}",
        load_average(),
        r.swap_statements,
        r.tool_cpu_ms,
        r.server_cpu_ms
    );
    println!(
        "run {n}: attempts {} | lock wait {:.1} ms | hold {:.1} ms | blocked {:.1} ms | worst read {:.1} ms | worst write {:.1} ms | failed writes {} ({} type errors) | failed reads {}",
        r.attempts, r.wait_ms, r.hold_ms, r.blocked_ms, r.worst_read_ms, r.worst_write_ms, r.failed_writes, r.type_errors, r.read_failures
    );
    println!(
        "        hold: {}",
        r.phases
            .iter()
            .map(|(p, ms)| format!("{p} {ms:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    r
}

/// Print min / median / max of `v`; returns the median.
fn summary(name: &str, mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let (Some(min), Some(max)) = (v.first(), v.last()) else {
        return f64::NAN;
    };
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    println!("{name:<16} {min:>8.1} {median:>8.1} {max:>8.1}");
    median
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runs = env_u64("PGREKEY_BENCH_RUNS", 5).max(1);
    let counts: Vec<usize> = std::env::var("PGREKEY_BENCH_TABLE_COUNTS")
        .unwrap_or_else(|_| "5".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .ok()
                .filter(|&c| c >= REFERENCING_TABLES.len())
                .unwrap_or_else(|| {
                    panic!("PGREKEY_BENCH_TABLE_COUNTS: {c:?} is not a count of at least 5")
                })
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("load average at start: {}", load_average());
    let results: Vec<(usize, Run)> = rt.block_on(async {
        let admin = connect(&cluster.spec("postgres"), "bench admin")
            .await
            .unwrap();
        let mut out = Vec::new();
        for n in 1..=runs {
            for &count in &counts {
                out.push((count, one_run(&admin, &cluster, n, count).await));
            }
        }
        out
    });
    println!("load average at end: {}", load_average());
    let mut holds: Vec<(usize, f64)> = Vec::new();
    for &count in &counts {
        let results: Vec<&Run> = results
            .iter()
            .filter(|(c, _)| *c == count)
            .map(|(_, r)| r)
            .collect();
        println!(
            "\n{} runs, {count} tables       min   median      max (ms)",
            results.len()
        );
        summary("lock wait", results.iter().map(|r| r.wait_ms).collect());
        let hold = summary("lock hold", results.iter().map(|r| r.hold_ms).collect());
        holds.push((count, hold));
        summary("blocked", results.iter().map(|r| r.blocked_ms).collect());
        summary(
            "worst read",
            results.iter().map(|r| r.worst_read_ms).collect(),
        );
        summary(
            "worst write",
            results.iter().map(|r| r.worst_write_ms).collect(),
        );
        summary(
            "failed writes",
            results.iter().map(|r| r.failed_writes as f64).collect(),
        );
        summary(
            "attempts",
            results.iter().map(|r| r.attempts as f64).collect(),
        );
        summary(
            "swap statements",
            results.iter().map(|r| r.swap_statements as f64).collect(),
        );
        summary("tool cpu", results.iter().map(|r| r.tool_cpu_ms).collect());
        summary(
            "server cpu",
            results.iter().map(|r| r.server_cpu_ms).collect(),
        );
        if let Some(first) = results.first() {
            for (i, (phase, _)) in first.phases.iter().enumerate() {
                summary(
                    &format!("  {phase}"),
                    results
                        .iter()
                        .filter_map(|r| r.phases.get(i).map(|p| p.1))
                        .collect(),
                );
            }
        }
    }
    // The rollback against the cutovers of the same runs.
    for &count in &counts {
        let ways: Vec<&(Swap, Swap)> = results
            .iter()
            .filter(|(c, _)| *c == count)
            .filter_map(|(_, r)| r.way_back.as_ref())
            .collect();
        if ways.is_empty() {
            continue;
        }
        let plain: Vec<&Run> = results
            .iter()
            .filter(|(c, r)| *c == count && r.way_back.is_some())
            .map(|(_, r)| r)
            .collect();
        println!(
            "\n{} runs, {count} tables, way back   min   median      max (ms)",
            ways.len()
        );
        let mut medians = Vec::new();
        for (name, pick) in [("cutover --way-back", 0usize), ("rollback", 1)] {
            fn pick_of<'a>(w: &&'a (Swap, Swap), pick: usize) -> &'a Swap {
                if pick == 0 {
                    &w.0
                } else {
                    &w.1
                }
            }
            println!("{name}:");
            let wait = summary(
                "  lock wait",
                ways.iter().map(|w| pick_of(w, pick).wait_ms()).collect(),
            );
            let hold = summary(
                "  lock hold",
                ways.iter().map(|w| pick_of(w, pick).hold_ms()).collect(),
            );
            summary(
                "  blocked",
                ways.iter().map(|w| pick_of(w, pick).blocked_ms()).collect(),
            );
            summary(
                "  worst read",
                ways.iter()
                    .map(|w| pick_of(w, pick).worst_read_ms)
                    .collect(),
            );
            summary(
                "  worst write",
                ways.iter()
                    .map(|w| pick_of(w, pick).worst_write_ms)
                    .collect(),
            );
            summary(
                "  other failures",
                ways.iter()
                    .map(|w| {
                        pick_of(w, pick)
                            .failed_writes
                            .saturating_sub(pick_of(w, pick).type_errors)
                            as f64
                    })
                    .collect(),
            );
            summary(
                "  attempts",
                ways.iter()
                    .map(|w| pick_of(w, pick).attempts() as f64)
                    .collect(),
            );
            summary(
                "  server cpu",
                ways.iter()
                    .map(|w| pick_of(w, pick).server_cpu_ms)
                    .collect(),
            );
            if let Some(first) = ways.first() {
                let phases = &pick_of(first, pick).report.attempts.last().unwrap().phases;
                for (i, p) in phases.iter().enumerate() {
                    summary(
                        &format!("    {}", p.phase),
                        ways.iter()
                            .filter_map(|w| {
                                pick_of(w, pick)
                                    .report
                                    .attempts
                                    .last()
                                    .unwrap()
                                    .phases
                                    .get(i)
                                    .map(|p| p.ms)
                            })
                            .collect(),
                    );
                }
            }
            medians.push((wait, hold));
        }
        let plain_wait = summary(
            "cutover lock wait",
            plain.iter().map(|r| r.wait_ms).collect(),
        );
        let plain_hold = summary(
            "cutover lock hold",
            plain.iter().map(|r| r.hold_ms).collect(),
        );
        let (wb, rb) = (medians[0], medians[1]);
        println!(
            "{count} tables: median rollback / cutover --way-back: wait {:.2}, hold {:.2}; rollback / cutover: wait {:.2}, hold {:.2}; cutover --way-back / cutover: hold {:.2}",
            rb.0 / wb.0,
            rb.1 / wb.1,
            rb.0 / plain_wait,
            rb.1 / plain_hold,
            wb.1 / plain_hold,
        );
    }
    // Each count against the five tables of the same run (the anchor) and
    // against the goal.
    println!();
    let anchor = holds.iter().find(|(c, _)| *c == 5).map(|(_, h)| *h);
    for (count, hold) in &holds {
        let goal = match count {
            ..=5 => Some(50.0),
            9 => Some(20.0),
            17 => Some(40.0),
            _ => None,
        };
        let vs_anchor = anchor
            .filter(|_| *count != 5)
            .map(|a| format!("; ratio to 5 tables {:.2}", hold / a))
            .unwrap_or_default();
        let vs_goal = goal
            .map(|g| {
                format!(
                    "; goal ≤ {g:.0} ms {} (ratio {:.2})",
                    if *hold <= g { "met" } else { "NOT met" },
                    hold / g
                )
            })
            .unwrap_or_default();
        println!("{count} tables: median hold {hold:.1} ms{vs_anchor}{vs_goal}");
    }
}
