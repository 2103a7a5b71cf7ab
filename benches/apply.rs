//! Apply throughput: how fast a streaming `rewrite` job applies a burst of
//! small transactions to its shadow, and how its lag grows and drains.
//!
//! ```text
//! cargo bench --bench apply                         # 60k changes, 2 generator sessions
//! PGREKEY_BENCH_CHANGES=200000 cargo bench --bench apply
//! PGREKEY_BENCH_SESSIONS=1 PGREKEY_BENCH_REPEAT=5 cargo bench --bench apply
//! PGREKEY_BENCH_REVERSE=0 cargo bench --bench apply  # forward only, no cutover
//! ```
//!
//! One throwaway cluster (embedded defaults: fsync off), one database:
//! `users` (20k) and `events` (20k rows, a `bigint` reference to `users.id`).
//! A `rewrite` of `events` runs in-process until it streams and has caught up
//! (a fence). Then each round, generator sessions commit N changes in total as
//! fast as the server allows — a server-side loop (`DO` with `COMMIT`) so the
//! generator is never the bottleneck: every transaction inserts a row, updates
//! another one's reference and counter, and deletes a row it inserted earlier
//! (three changes). When the generator is done, a fence is written and the
//! round waits until the job applied past it.
//!
//! Reported per round: the generator's rate, the apply rate (N changes over the
//! time from the first generated change to the job's applied position passing
//! the fence), the tail (fence → applied: how far behind the job was when the
//! generator stopped), and the lag profile (WAL bytes between the server's
//! position and the job's recorded applied position, sampled every 250 ms).
//! The shadow is compared with the source (row count and a checksum of the
//! translated rows) after each round.
//!
//! The live rate above cannot exceed the generator's. So each round then
//! measures the apply on its own, from a backlog: a session locks the shadow
//! (`LOCK … IN SHARE MODE` in an open transaction), the generator commits the
//! same number of changes again (the job's first statement waits on the
//! lock; the stream queues), a fence is written, the lock is released, and
//! the drain is timed: backlog changes over the time from the release to the
//! job's applied position passing the fence ("apply capacity").
//!
//! CPU: the tool's (this process, which runs the job) and the server's (every
//! child of the cluster's postmaster alive at both ends of the round, which
//! includes the generator sessions, the apply session and the walsender).
//!
//! Then the way back (`PGREKEY_BENCH_REVERSE=0` leaves it out): the table is
//! cut over with a way back (`cutover::run` with `way_back: true`), so the
//! same job now streams the new (uuid) `events` table's changes, translated
//! back to integer keys, into `_rekey_old_events`. The same rounds run again
//! with the generator writing uuids (`(SELECT uuid_id FROM users WHERE id =
//! …)` where it wrote the key; the extra index lookup makes the generator
//! itself slower, which caps the live rate, not the backlog drain), the
//! backlog held by a lock on `_rekey_old_events`, and the old table compared
//! with the new one translated back. The summary puts the medians of both
//! directions side by side with the ratio reverse/forward, from the same run
//! (forward rounds first, then reverse: not interleaved, since the cutover
//! is the boundary; each round prints the load average). The bench ends with
//! `way_back::finish` (compare, drop the old table; the job ends itself).

#![allow(clippy::disallowed_methods)] // tests and benches spawn their own helpers bare

use std::time::{Duration, Instant};

use pg_rekey::cutover::{self, CutoverConfig};
use pg_rekey::embedded::Cluster;
use pg_rekey::pg::{connect, ConnSpec, QualifiedName};
use pg_rekey::progress::JobProgress;
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::{fence, state};
use tokio::sync::watch;
use tokio_postgres::Client;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

const SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, uuid_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE, email text NOT NULL);
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    n integer NOT NULL DEFAULT 0,
    note text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_user_id_idx ON events (user_id);
INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 20000) g;
INSERT INTO events (user_id, note) SELECT 1 + (g * 7919) % 20000, md5(g::text) FROM generate_series(1, 20000) g;
";

/// Which way the job applies: to the shadow (forward, the application writes
/// integers to `events`), or, after a cutover with a way back, to the old
/// table (the application writes uuids to the new `events`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Forward,
    Back,
}

impl Way {
    /// The reference as the application writes it, for the user whose key is
    /// the SQL expression `key`.
    fn reference(self, key: &str) -> String {
        match self {
            Way::Forward => key.to_string(),
            Way::Back => format!("(SELECT uuid_id FROM users WHERE id = {key})"),
        }
    }

    /// The table the job writes.
    fn target(self) -> &'static str {
        match self {
            Way::Forward => "_rekey_new_events",
            Way::Back => "_rekey_old_events",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Way::Forward => "forward",
            Way::Back => "reverse",
        }
    }
}

/// `txns` transactions of three changes each: insert, update another row's
/// reference, delete the row this loop inserted `lag` transactions ago.
fn generator_sql(way: Way, txns: u64, seed: u64) -> String {
    let inserted = way.reference(&format!("1 + ((i * 7919 + {seed}) % 20000)"));
    let updated = way.reference(&format!("1 + ((i * 104729 + {seed}) % 20000)"));
    format!(
        "DO $$
         DECLARE
           ids bigint[] := '{{}}';
           new_id bigint;
         BEGIN
           FOR i IN 1..{txns} LOOP
             INSERT INTO events (user_id, note)
               VALUES ({inserted}, md5(i::text)) RETURNING id INTO new_id;
             ids := ids || new_id;
             UPDATE events SET n = n + 1, user_id = {updated}
               WHERE id = 1 + ((i * 31 + {seed}) % 20000);
             IF i > 50 THEN
               DELETE FROM events WHERE id = ids[i - 50];
             ELSE
               UPDATE events SET n = n + 1 WHERE id = new_id;
             END IF;
             COMMIT;
           END LOOP;
         END $$"
    )
}

async fn job_ids(c: &Client) -> Vec<uuid::Uuid> {
    let mut ids: Vec<uuid::Uuid> = state::list_jobs(c)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id)
        .collect();
    ids.dedup();
    ids
}

async fn lag_bytes(c: &Client) -> i64 {
    c.query_one(
        "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(applied_lsn, consistent_lsn))), 0)::bigint FROM pgrekey.jobs",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or(-1)
}

/// The table the job writes agrees with the one the application writes:
/// same keys, same translated rows (missing, extra).
async fn compare(c: &Client, way: Way) -> (i64, i64) {
    if way == Way::Back {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM (
                           SELECT e.id, u.id, e.n, e.note FROM events e JOIN users u ON u.uuid_id = e.user_id
                           EXCEPT SELECT id, user_id, n, note FROM _rekey_old_events) d),
                        (SELECT count(*) FROM (
                           SELECT id, user_id, n, note FROM _rekey_old_events
                           EXCEPT SELECT e.id, u.id, e.n, e.note FROM events e JOIN users u ON u.uuid_id = e.user_id) d)",
                &[],
            )
            .await
            .unwrap();
        return (r.get(0), r.get(1));
    }
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM (
                       SELECT e.id, u.uuid_id, e.n, e.note FROM events e JOIN users u ON u.id = e.user_id
                       EXCEPT SELECT id, user_id, n, note FROM _rekey_new_events) d),
                    (SELECT count(*) FROM (
                       SELECT id, user_id, n, note FROM _rekey_new_events
                       EXCEPT SELECT e.id, u.uuid_id, e.n, e.note FROM events e JOIN users u ON u.id = e.user_id) d)",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

struct Round {
    changes: u64,
    generate_s: f64,
    apply_rate: f64,
    tail_ms: f64,
    max_lag: i64,
    backlog_rate: f64,
}

/// CPU seconds (user + system) of process `pid`, from /proc.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) and its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds of every child of `postmaster`, by pid.
fn server_cpu(postmaster: u32) -> std::collections::HashMap<u32, f64> {
    let mut out = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if proc_ppid(pid) == Some(postmaster) {
                if let Some(c) = proc_cpu(pid) {
                    out.insert(pid, c);
                }
            }
        }
    }
    out
}

/// Server CPU used between two samples, by processes present in both.
fn server_cpu_delta(
    a: &std::collections::HashMap<u32, f64>,
    b: &std::collections::HashMap<u32, f64>,
) -> f64 {
    b.iter()
        .filter_map(|(p, cb)| a.get(p).map(|ca| cb - ca))
        .sum()
}

async fn postmaster_pid(c: &Client) -> u32 {
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    proc_ppid(pid as u32).unwrap_or(0)
}

/// Commit `changes` changes from `sessions` generator sessions (already
/// connected), waiting for all of them.
async fn generate(way: Way, gens: Vec<Client>, changes: u64, seed: u64) {
    let txns_per_session = (changes / 3 / gens.len() as u64).max(1);
    let mut tasks = Vec::new();
    for (s, g) in gens.into_iter().enumerate() {
        let sql = generator_sql(way, txns_per_session, s as u64 * 1_000 + seed);
        tasks.push(tokio::spawn(async move {
            g.batch_execute(&sql).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The backlog part of a round: see the module docs.
async fn backlog(
    way: Way,
    c: &Client,
    spec: &ConnSpec,
    changes: u64,
    sessions: u64,
    n: u64,
) -> (u64, f64, f64, f64) {
    let txns_per_session = (changes / 3 / sessions).max(1);
    let total = txns_per_session * 3 * sessions;
    let locker = connect(spec, "bench locker").await.unwrap();
    locker
        .batch_execute(&format!("BEGIN; LOCK TABLE {} IN SHARE MODE", way.target()))
        .await
        .unwrap();
    let mut gens = Vec::new();
    for _ in 0..sessions {
        gens.push(connect(spec, "bench generator").await.unwrap());
    }
    generate(way, gens, total, 500_000 + n * 7).await;
    let ids = job_ids(c).await;
    let f = fence::emit(c, "bench-backlog").await.unwrap();
    let postmaster = postmaster_pid(c).await;
    let (cpu0, server0) = (proc_cpu(std::process::id()), server_cpu(postmaster));
    let released = Instant::now();
    locker.batch_execute("COMMIT").await.unwrap();
    assert!(
        fence::wait_drained_every(
            c,
            &ids,
            f,
            Instant::now() + Duration::from_secs(600),
            Duration::from_millis(1)
        )
        .await
        .unwrap(),
        "the job did not drain its backlog"
    );
    let drain = released.elapsed().as_secs_f64();
    let tool_cpu = proc_cpu(std::process::id())
        .zip(cpu0)
        .map_or(0.0, |(b, a)| b - a);
    let srv_cpu = server_cpu_delta(&server0, &server_cpu(postmaster));
    let (missing, extra) = compare(c, way).await;
    assert_eq!(
        (missing, extra),
        (0, 0),
        "{} differs from events",
        way.target()
    );
    (total, total as f64 / drain, tool_cpu, srv_cpu)
}

async fn round(
    way: Way,
    c: &Client,
    spec: &ConnSpec,
    progress: &JobProgress,
    changes: u64,
    sessions: u64,
    n: u64,
) -> Round {
    let txns_per_session = (changes / 3 / sessions).max(1);
    let total = txns_per_session * 3 * sessions;
    let applied_before = applied(progress);
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(connect(spec, "bench generator").await.unwrap());
    }
    let postmaster = postmaster_pid(c).await;
    let (cpu0, server0) = (proc_cpu(std::process::id()), server_cpu(postmaster));
    let started = Instant::now();
    let mut gens = Vec::new();
    for (s, g) in clients.into_iter().enumerate() {
        let sql = generator_sql(way, txns_per_session, s as u64 * 1_000 + n * 7);
        gens.push(tokio::spawn(async move {
            g.batch_execute(&sql).await.unwrap();
            g
        }));
    }
    // Lag profile while generating.
    // (seconds since the start, lag bytes, changes the job reported applied)
    let mut profile: Vec<(f64, i64, u64)> = Vec::new();
    let mut done = false;
    while !done {
        tokio::time::sleep(Duration::from_millis(250)).await;
        profile.push((
            started.elapsed().as_secs_f64(),
            lag_bytes(c).await,
            applied(progress) - applied_before,
        ));
        done = gens.iter().all(|g| g.is_finished());
    }
    let mut alive = Vec::new();
    for g in gens {
        alive.push(g.await.unwrap());
    }
    let generated = started.elapsed();
    let ids = job_ids(c).await;
    let f = fence::emit(c, "bench-apply").await.unwrap();
    let fenced = Instant::now();
    // Keep sampling the lag while the job drains.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let drained = fence::wait_drained_every(
            c,
            &ids,
            f,
            Instant::now() + Duration::from_millis(250),
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        if drained {
            break;
        }
        profile.push((
            started.elapsed().as_secs_f64(),
            lag_bytes(c).await,
            applied(progress) - applied_before,
        ));
        assert!(Instant::now() < deadline, "the job did not catch up");
    }
    let caught_up = started.elapsed();
    let tail = fenced.elapsed();
    let tool_cpu = proc_cpu(std::process::id())
        .zip(cpu0)
        .map_or(0.0, |(b, a)| b - a);
    let srv_cpu = server_cpu_delta(&server0, &server_cpu(postmaster));
    drop(alive);
    let (missing, extra) = compare(c, way).await;
    assert_eq!(
        (missing, extra),
        (0, 0),
        "{} differs from events",
        way.target()
    );
    // Progress counters are refreshed by the job every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let applied_by_job = applied(progress) - applied_before;
    let (backlog_changes, backlog_rate, drain_tool, drain_server) =
        backlog(way, c, spec, changes, sessions, n).await;
    let r = Round {
        changes: total,
        generate_s: generated.as_secs_f64(),
        apply_rate: total as f64 / caught_up.as_secs_f64(),
        tail_ms: tail.as_secs_f64() * 1000.0,
        max_lag: profile.iter().map(|p| p.1).max().unwrap_or(0),
        backlog_rate,
    };
    println!(
        "{} round {n}: {} changes in {:.2}s generated ({:.0}/s) | applied at {:.0} changes/s | tail after the generator {:.0} ms | max lag {:.1} MB | job counted {applied_by_job} changes | {} = events",
        way.name(),
        r.changes,
        r.generate_s,
        r.changes as f64 / r.generate_s,
        r.apply_rate,
        r.tail_ms,
        r.max_lag as f64 / 1e6,
        way.target(),
    );
    println!(
        "         cpu in the live part: tool {tool_cpu:.2} s, server {srv_cpu:.2} s | apply capacity: a backlog of {backlog_changes} changes drained at {:.0} changes/s, cpu tool {drain_tool:.2} s, server {drain_server:.2} s | load {}",
        r.backlog_rate,
        load_average()
    );
    println!(
        "         profile (s: lag MB / changes applied): {}",
        profile
            .iter()
            .map(|(t, l, a)| format!("{t:.2}: {:.1}/{a}", *l as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    r
}

/// Changes the job has applied, as its progress counters say.
fn applied(p: &JobProgress) -> u64 {
    p.tables().iter().map(|t| t.changes_applied()).sum()
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
    let changes = env_u64("PGREKEY_BENCH_CHANGES", 60_000);
    let sessions = env_u64("PGREKEY_BENCH_SESSIONS", 2).max(1);
    let repeat = env_u64("PGREKEY_BENCH_REPEAT", 3).max(1);
    let reverse = env_u64("PGREKEY_BENCH_REVERSE", 1) != 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
    println!("load average at start: {}", load_average());
    rt.block_on(async {
        let admin = connect(&cluster.spec("postgres"), "bench admin")
            .await
            .unwrap();
        admin
            .batch_execute("CREATE DATABASE bench_apply")
            .await
            .unwrap();
        let spec = cluster.spec("bench_apply");
        let c = connect(&spec, "bench").await.unwrap();
        c.batch_execute(SCHEMA).await.unwrap();
        // Not in the same batch: a multi-statement query is one transaction.
        c.batch_execute("VACUUM ANALYZE").await.unwrap();
        let rcfg = RewriteConfig {
            spec: spec.clone(),
            parent: QualifiedName::new("public", "users"),
            uuid_column: "uuid_id".into(),
            tables: vec![QualifiedName::new("public", "events")],
            batch: Default::default(),
            copy: Default::default(),
            copy_sessions: 1,
            throttle: Default::default(),
            reconnect_timeout: std::time::Duration::from_secs(300),
        };
        let progress = JobProgress::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let p = progress.clone();
        let job = tokio::spawn(async move { rewrite::run(&rcfg, stop_rx, p).await });
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let jobs = state::list_jobs(&c).await.unwrap();
            if let Some(f) = jobs.iter().find(|j| j.phase == "failed") {
                panic!("job failed: {:?}", f.error);
            }
            if !jobs.is_empty() && jobs.iter().all(|j| j.phase == "streaming") {
                break;
            }
            assert!(Instant::now() < deadline, "never streaming");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ids = job_ids(&c).await;
        let f = fence::emit(&c, "bench-start").await.unwrap();
        assert!(
            fence::wait_drained(&c, &ids, f, Instant::now() + Duration::from_secs(120))
                .await
                .unwrap()
        );

        let mut forward = Vec::new();
        for n in 1..=repeat {
            forward.push(round(Way::Forward, &c, &spec, &progress, changes, sessions, n).await);
        }
        println!("load average after the forward rounds: {}", load_average());
        let fwd = summarize(Way::Forward, &forward, changes, sessions);
        if !reverse {
            println!("load average at end: {}", load_average());
            let _ = stop_tx.send(true);
            let outcome = tokio::time::timeout(Duration::from_secs(60), job)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(outcome, RewriteOutcome::Aborted);
            return;
        }

        // The way back: cut over keeping the old table current, then the
        // same rounds against the new (uuid) table.
        let table = vec![QualifiedName::new("public", "events")];
        let report = cutover::run(&CutoverConfig {
            skip_verify: true,
            way_back: true,
            ..CutoverConfig::new(spec.clone(), table.clone())
        })
        .await
        .unwrap_or_else(|e| panic!("cutover: {}", pg_rekey::error::chain(&e)));
        assert!(
            report.swapped,
            "cutover --way-back did not swap: {report:?}"
        );
        let a = report.attempts.last().unwrap();
        println!(
            "\ncut over with a way back: attempts {}, lock wait {:.1} ms, hold {:.1} ms",
            report.attempts.len(),
            a.lock_wait_ms,
            a.lock_hold_ms.unwrap_or(0.0)
        );
        let ids = job_ids(&c).await;
        let f = fence::emit(&c, "bench-way-back").await.unwrap();
        assert!(
            fence::wait_drained(&c, &ids, f, Instant::now() + Duration::from_secs(120))
                .await
                .unwrap()
        );
        let (missing, extra) = compare(&c, Way::Back).await;
        assert_eq!(
            (missing, extra),
            (0, 0),
            "the old table differs from events after the swap"
        );
        let mut back = Vec::new();
        for n in 1..=repeat {
            back.push(round(Way::Back, &c, &spec, &progress, changes, sessions, n).await);
        }
        println!("load average after the reverse rounds: {}", load_average());
        let rev = summarize(Way::Back, &back, changes, sessions);
        let gen = |r: &[Round]| {
            let mut v: Vec<f64> = r.iter().map(|r| r.changes as f64 / r.generate_s).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!(
            "\n{:<34} {:>10} {:>10} {:>16}",
            "medians (changes/s)", "forward", "reverse", "reverse/forward"
        );
        for (what, f, r) in [
            ("generator", gen(&forward), gen(&back)),
            ("applied live (generator running)", fwd.0, rev.0),
            ("apply capacity (backlog drain)", fwd.1, rev.1),
        ] {
            println!("{what:<34} {f:>10.0} {r:>10.0} {:>16.2}", r / f);
        }

        // End the way back: compare old and new, drop the old table, the
        // job ends itself.
        let finished = pg_rekey::way_back::finish(&spec, &table, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("finish: {}", pg_rekey::error::chain(&e)));
        assert_eq!(finished.verified, Some(true), "{finished:?}");
        println!("load average at end: {}", load_average());
        let outcome = tokio::time::timeout(Duration::from_secs(60), job)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(outcome, RewriteOutcome::Finished);
        drop(stop_tx);
    });
}

/// Print one direction's rounds; returns the medians of the live apply rate
/// and of the backlog drain.
fn summarize(way: Way, rounds: &[Round], changes: u64, sessions: u64) -> (f64, f64) {
    let mut rates: Vec<f64> = rounds.iter().map(|r| r.apply_rate).collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "\n{} apply rate (changes/s) over {} rounds of {changes} changes, {sessions} generator sessions: min {:.0}, median {:.0}, max {:.0}; worst tail {:.0} ms; worst lag {:.1} MB",
        way.name(),
        rounds.len(),
        rates[0],
        rates[rates.len() / 2],
        rates[rates.len() - 1],
        rounds.iter().map(|r| r.tail_ms).fold(0.0, f64::max),
        rounds.iter().map(|r| r.max_lag).max().unwrap_or(0) as f64 / 1e6,
    );
    let mut caps: Vec<f64> = rounds.iter().map(|r| r.backlog_rate).collect();
    caps.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{} apply capacity (changes/s, draining a backlog): min {:.0}, median {:.0}, max {:.0}",
        way.name(),
        caps[0],
        caps[caps.len() / 2],
        caps[caps.len() - 1],
    );
    (rates[rates.len() / 2], caps[caps.len() / 2])
}
