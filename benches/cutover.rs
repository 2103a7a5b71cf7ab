//! Cutover benchmark: swap the five referencing tables of the example schema
//! ([`pg_rekey::workload`]) while writers and readers keep running, and report
//! what the application felt.
//!
//! ```text
//! cargo bench --bench cutover                              # 5 runs, 200k rows, 20k users
//! PGREKEY_BENCH_RUNS=9 cargo bench --bench cutover
//! PGREKEY_BENCH_ROWS=1000000 PGREKEY_BENCH_USERS=100000 cargo bench --bench cutover
//! PGREKEY_BENCH_WRITERS=6 PGREKEY_BENCH_READERS=4 cargo bench --bench cutover
//! RUST_LOG=pg_rekey::cutover=debug cargo bench --bench cutover   # every step logged
//! ```
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

#![allow(clippy::disallowed_methods)] // tests and benches spawn their own helpers bare

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pg_rekey::cutover::{self, CutoverConfig, CutoverReport};
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
}

fn tables() -> Vec<QualifiedName> {
    REFERENCING_TABLES
        .iter()
        .map(|t| QualifiedName::new("public", *t))
        .collect()
}

async fn wait_streaming(c: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = state::list_jobs(c).await.unwrap();
        if let Some(f) = jobs.iter().find(|j| j.phase == "failed") {
            panic!("job failed: {:?}", f.error);
        }
        if jobs.len() == REFERENCING_TABLES.len() && jobs.iter().all(|j| j.phase == "streaming") {
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

async fn one_run(admin: &tokio_postgres::Client, cluster: &Cluster, n: u64) -> Run {
    let rows = env_u64("PGREKEY_BENCH_ROWS", 200_000);
    let users = env_u64("PGREKEY_BENCH_USERS", 20_000);
    let db = format!("bench_cutover_{n}");
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
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    eprintln!(
        "run {n}: seeded {rows} rows, {users} users in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let opts = WorkloadOptions {
        writers: env_u64("PGREKEY_BENCH_WRITERS", 3) as usize,
        readers: env_u64("PGREKEY_BENCH_READERS", 2) as usize,
        ..WorkloadOptions::default()
    };
    let load = Workload::start(&spec, opts).await.unwrap();

    let rcfg = RewriteConfig {
        spec: spec.clone(),
        parent: QualifiedName::new("public", "users"),
        uuid_column: "uuid_id".into(),
        tables: tables(),
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
    wait_streaming(&c).await;
    let streaming_after = t.elapsed();
    let caught_up = catch_up(&c).await;
    eprintln!(
        "run {n}: streaming after {:.1}s, caught up in {:.0} ms",
        streaming_after.as_secs_f64(),
        caught_up.as_secs_f64() * 1000.0
    );
    // Steady streaming under the workload before the swap.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cfg = CutoverConfig {
        spec: spec.clone(),
        tables: tables(),
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
    };
    let stats = load.stats.clone();
    let failures_before = stats.failures.load(Ordering::Relaxed);
    let types_before = stats.type_switches.load(Ordering::Relaxed);
    let read_failures_before = stats.read_failures.load(Ordering::Relaxed);
    stats.reset_worst();
    let report: CutoverReport = cutover::run(&cfg).await.unwrap();
    assert!(report.swapped, "run {n}: not swapped: {report:?}");
    // Let readers and writers that were queued behind the lock finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worst_read_ms = stats.worst_read_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let worst_write_ms = stats.worst_write_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let failed_writes = stats.failures.load(Ordering::Relaxed) - failures_before;
    let type_errors = stats.type_switches.load(Ordering::Relaxed) - types_before;
    let read_failures = stats.read_failures.load(Ordering::Relaxed) - read_failures_before;
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
    };
    for a in &report.attempts {
        if a.outcome != "swapped" {
            eprintln!("run {n}: attempt {} {}", a.attempt, a.outcome);
        }
    }
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

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let (Some(min), Some(max)) = (v.first(), v.last()) else {
        return;
    };
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    println!("{name:<16} {min:>8.1} {median:>8.1} {max:>8.1}");
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("load average at start: {}", load_average());
    let results: Vec<Run> = rt.block_on(async {
        let admin = connect(&cluster.spec("postgres"), "bench admin")
            .await
            .unwrap();
        let mut out = Vec::new();
        for n in 1..=runs {
            out.push(one_run(&admin, &cluster, n).await);
        }
        out
    });
    println!("load average at end: {}", load_average());
    println!(
        "\n{} runs, 5 tables        min   median      max (ms)",
        results.len()
    );
    summary("lock wait", results.iter().map(|r| r.wait_ms).collect());
    summary("lock hold", results.iter().map(|r| r.hold_ms).collect());
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
