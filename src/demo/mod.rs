//! `pg-rekey demo`: the whole tool on a throwaway database, under load, with
//! the figures an operator wants before trusting it.
//!
//! One scenario, shared with [`crate::soak`]:
//!
//! 1. A fresh database (`pg_rekey_demo_<random>`) on a throwaway cluster
//!    ([`crate::embedded::Cluster`]) or on the server given with `--dsn`. The
//!    scenario never touches any other database, and drops its own at the end
//!    (its slot first, should a failure have left one).
//! 2. The example schema of [`crate::workload`], seeded; the concurrent
//!    writers and readers start.
//! 3. [`crate::rewrite::run`] for every referencing table, as an in-process
//!    task; the scenario samples its progress until the tables stream, then
//!    keeps streaming under load for a while (the soak: most of its duration).
//! 4. [`crate::cutover::run`] with a small lock timeout and a few attempts.
//! 5. Old table against new table with [`crate::verify::verify_table`] in one
//!    `REPEATABLE READ` snapshot; then the workload stops and the summary is
//!    printed.
//!
//! # Why the verification is exact although the writers never stop
//!
//! After the swap the writers carry on against the new tables, so a
//! comparison of "old" with "new" taken at some later moment would show the
//! application's own post-swap writes as differences. The old table is frozen
//! at the swap (nothing can write to it: see [`crate::cutover`]); what is
//! needed is the new table *as of the swap*. The scenario gets exactly that
//! with a gate it installs for itself before the cutover:
//!
//! - a `BEFORE INSERT OR UPDATE OR DELETE … FOR EACH STATEMENT` trigger on
//!   every *shadow* that takes a shared transaction-level advisory lock, while
//!   a scenario session holds that advisory lock exclusively. The apply
//!   session runs with `session_replication_role = replica`, so the trigger
//!   never fires for the stream; it fires for the application once the shadow
//!   has become the table;
//! - the scenario polls the catalog for the old tables' names (the renames
//!   commit atomically with the swap); as soon as they exist it opens the
//!   `REPEATABLE READ` snapshot, and only then releases the lock.
//!
//! Every write to a new table after the swap therefore commits after the
//! snapshot, and the snapshot sees the new tables exactly as the swap left
//! them. The writers wait for the poll interval plus one query (the summary
//! reports how long); readers are never held. The gate is part of the
//! demonstration harness, not of the tool.

pub mod embedded;
pub mod soak;
pub mod workload;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{info, warn, Instrument};

use crate::cutover::{AttemptReport, CutoverConfig};
use crate::error::Error;
use crate::pg::{self, quote_ident, ConnSpec, Lsn, QualifiedName};
use crate::plan::catalog;
use crate::plan::model::{ParentSpec, TableSpec};
use crate::progress::JobProgress;
use crate::rewrite::{RewriteConfig, RewriteOutcome};
use crate::swap::SwapNames;
use crate::verify::{self, VerifyOptions};
use embedded::{Cluster, ClusterOptions};
use workload::{Workload, WorkloadOptions, WorkloadStats, REFERENCING_TABLES};

/// The example schema's parent table.
const PARENT: &str = "users";
/// The example schema's uuid column.
const UUID_COLUMN: &str = "uuid_id";
/// Advisory lock key of the verification gate (advisory locks are per database).
const GATE_KEY: i64 = 0x0070_6772_656b_6579; // "pgrekey"
/// How often the scenario looks for the committed swap while the cutover runs.
const SWAP_POLL: Duration = Duration::from_millis(2);
/// Longest wait for the rewrite to stream, and for it to exit after the swap.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// At most this many differing rows are named per table in the summary.
const DIFF_ROWS_SHOWN: usize = 5;

/// What `pg-rekey demo` runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// An existing server to create the demo database on; `None` starts a
    /// throwaway cluster from the machine's server binaries.
    pub server: Option<ConnSpec>,
    /// Users to seed.
    pub users: u64,
    /// Rows to seed, spread over the five referencing tables.
    pub rows: u64,
    /// Concurrent writer sessions.
    pub writers: usize,
    /// Concurrent reader sessions.
    pub readers: usize,
    /// How long to keep streaming under load before cutting over.
    pub stream_for: Duration,
    /// Leave the demo database in place (on `server`) instead of dropping it,
    /// for inspection. Ignored for a throwaway cluster.
    pub keep_database: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            server: None,
            users: 2_000,
            rows: 50_000,
            writers: 3,
            readers: 2,
            stream_for: Duration::from_secs(3),
            keep_database: false,
        }
    }
}

/// Run the demo: start (or use) a server, run the scenario, remove what was
/// started. `shutdown` turning `true` (Ctrl-C) stops it early, cleaning up.
///
/// `Ok` carries the summary whatever the verdict; check
/// [`DemoSummary::passed`]. `Err` means the scenario could not run.
pub async fn run(cfg: &DemoConfig, shutdown: watch::Receiver<bool>) -> Result<DemoSummary, Error> {
    let scenario = Scenario {
        kind: "demo",
        users: cfg.users,
        rows: cfg.rows,
        writers: cfg.writers,
        readers: cfg.readers,
        stream: StreamPlan::For(cfg.stream_for),
        report_every: Duration::from_secs(5),
        keep_database: cfg.keep_database && cfg.server.is_some(),
        planned: None,
    };
    match &cfg.server {
        Some(spec) => {
            let label = spec.redacted();
            run_scenario(spec, label, &scenario, shutdown).await
        }
        None => {
            info!("starting a throwaway PostgreSQL cluster");
            let cluster =
                tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
                    .await
                    .map_err(|e| {
                        Error::Precondition(format!("the cluster start-up task failed: {e}"))
                    })?
                    .map_err(|e| Error::Precondition(e.to_string()))?;
            let label = format!(
                "throwaway cluster on 127.0.0.1:{} (removed at the end)",
                cluster.port
            );
            let result = run_scenario(&cluster.spec("postgres"), label, &scenario, shutdown).await;
            // Stopping runs pg_ctl and removes the files: blocking work.
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
            result
        }
    }
}

/// How long the scenario streams under load before cutting over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamPlan {
    /// This long after the tables start streaming.
    For(Duration),
    /// Until this moment (the soak's budget), but at least [`MIN_STREAM`].
    Until(Instant),
}

/// The least streaming time before a cutover: the job measures its lag every
/// half second, and the lag gate needs a measurement.
pub(crate) const MIN_STREAM: Duration = Duration::from_secs(1);

impl StreamPlan {
    /// When streaming ends, given when it started.
    pub(crate) fn deadline(self, streaming_since: Instant) -> Instant {
        match self {
            StreamPlan::For(d) => streaming_since + d.max(MIN_STREAM),
            StreamPlan::Until(t) => t.max(streaming_since + MIN_STREAM),
        }
    }
}

/// One scenario's parameters (shared by demo and soak).
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// `demo` or `soak`: the database name prefix and the summary's title.
    pub kind: &'static str,
    pub users: u64,
    pub rows: u64,
    pub writers: usize,
    pub readers: usize,
    pub stream: StreamPlan,
    /// Interval of the progress log lines while streaming.
    pub report_every: Duration,
    pub keep_database: bool,
    /// The planned total duration (soak), for the summary.
    pub planned: Option<Duration>,
}

/// Everything the demo or a soak run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    /// `demo` or `soak`.
    pub kind: String,
    /// Where it ran (password never included).
    pub server: String,
    /// `server_version` of that server.
    pub server_version: String,
    /// The scenario's own database.
    pub database: String,
    /// Whether that database was dropped at the end.
    pub database_dropped: bool,
    /// Users seeded.
    pub users: u64,
    /// Rows seeded (over all referencing tables).
    pub rows_seeded: u64,
    /// Writer and reader sessions.
    pub writers: usize,
    /// Reader sessions.
    pub readers: usize,
    /// Schema and seed time.
    pub setup_seconds: f64,
    /// Per-table figures.
    pub tables: Vec<TableSummary>,
    /// Rows copied under the slot's snapshot (all tables).
    pub rows_copied: u64,
    /// From the rewrite's start until the last row was copied (sampled every 50 ms).
    pub copy_seconds: f64,
    /// `rows_copied / copy_seconds`.
    pub copy_rows_per_second: f64,
    /// From the rewrite's start until the tables were streaming (copy, indexes and constraints).
    pub seconds_to_streaming: f64,
    /// Time spent streaming under load before the cutover.
    pub streaming_seconds: f64,
    /// Changes applied to the shadows while streaming.
    pub changes_applied: u64,
    /// `changes_applied / streaming_seconds`.
    pub apply_changes_per_second: f64,
    /// WAL the jobs applied while streaming (their recorded position's advance), bytes.
    pub wal_applied_bytes: u64,
    /// `wal_applied_bytes / streaming_seconds`.
    pub apply_wal_bytes_per_second: f64,
    /// Largest lag seen while streaming, bytes of WAL.
    pub max_lag_bytes: u64,
    /// Lag when the cutover started, bytes of WAL (as the job last measured it).
    pub lag_at_cutover_bytes: u64,
    /// The cutover.
    pub cutover: CutoverSummary,
    /// The concurrent workload.
    pub workload: WorkloadSummary,
    /// Old against new.
    pub verification: VerificationSummary,
    /// How the in-process rewrite ended (`cut_over`, `aborted`, or its error).
    pub rewrite_outcome: String,
    /// Problems that did not decide the verdict (clean-up trouble, …).
    pub warnings: Vec<String>,
    /// Wall time of the whole scenario.
    pub total_seconds: f64,
    /// The planned duration (soak runs).
    pub planned_seconds: Option<f64>,
}

/// One table's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableSummary {
    /// The table.
    pub table: String,
    /// Rows copied under the snapshot.
    pub rows_copied: u64,
    /// Its old table after the swap.
    pub old_table: Option<String>,
    /// Before the cutover: rows differing between source and shadow.
    pub before_differing_rows: Option<u64>,
    /// Verification: rows of the old table (at the swap).
    pub old_rows: Option<u64>,
    /// Verification: rows of the new table (at the swap).
    pub new_rows: Option<u64>,
    /// Verification: differing rows.
    pub differing_rows: Option<u64>,
    /// Verification: the first differing rows, described.
    pub differences: Vec<String>,
}

/// What the cutover did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CutoverSummary {
    /// Whether the swap committed.
    pub swapped: bool,
    /// Each attempt with its lock wait and hold.
    pub attempts: Vec<AttemptReport>,
    /// Why it gave up, when it did.
    pub reason: Option<String>,
    /// Problems after commit.
    pub warnings: Vec<String>,
    /// Wall time of the cutover command (post-commit validation included).
    pub seconds: f64,
    /// How long writers were held at the verification gate after the swap
    /// was seen (see the module docs).
    pub writers_held_ms: Option<f64>,
}

/// What the workload saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkloadSummary {
    /// Writer transactions committed.
    pub writes_committed: u64,
    /// Writer transactions that failed because a reference had become `uuid`
    /// (the application's view of the swap; the writers then send uuids).
    pub writes_failed_at_swap: u64,
    /// Other failed writer transactions (conflicts between the writers
    /// themselves: unique violations, deadlocks).
    pub writes_failed_other: u64,
    /// Of all failed writer transactions, those before the cutover started.
    pub writes_failed_before_cutover: u64,
    /// Reader queries.
    pub reads: u64,
    /// Failed reader queries.
    pub reads_failed: u64,
    /// Worst reader latency from the start until the cutover, ms.
    pub worst_read_ms_before_cutover: f64,
    /// Worst reader latency during the cutover command, ms.
    pub worst_read_ms_around_cutover: f64,
    /// Worst writer transaction during the cutover command, ms.
    pub worst_write_ms_around_cutover: f64,
}

/// The tool's own `verify` (source against shadow) just before the cutover.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BeforeCutover {
    /// Every source equal to its shadow at the consistent point.
    pub passed: bool,
    /// Rows compared (sources, all tables).
    pub rows_compared: u64,
    /// Differing rows (all tables).
    pub differing_rows: u64,
    /// Attempts to reach the consistent point.
    pub attempts: u32,
    /// Waiting for the `SHARE` locks on the sources, ms.
    pub lock_wait_ms: u64,
    /// The sources' writers were held this long (lock, fence, drain, snapshot), ms.
    pub lock_hold_ms: u64,
    /// Wall time of the verification.
    pub seconds: f64,
    /// Why it could not run.
    pub error: Option<String>,
}

/// The verification verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerificationSummary {
    /// Source against shadow before the swap, with `pg-rekey verify`'s
    /// consistent point ([`crate::verify::run()`]); `None` when not reached.
    pub before_cutover: Option<BeforeCutover>,
    /// How the old-against-new comparison was made.
    pub method: String,
    /// Old and new equal at the swap in every table (and the comparison ran).
    pub passed: bool,
    /// Rows compared (old side, all tables).
    pub rows_compared: u64,
    /// Wall time of the comparison.
    pub seconds: f64,
    /// Why it did not run or failed to run.
    pub error: Option<String>,
}

impl DemoSummary {
    /// The verdict: source and shadow were equal before the swap, the swap
    /// committed, and old and new were equal at the swap.
    pub fn passed(&self) -> bool {
        self.verification
            .before_cutover
            .as_ref()
            .is_some_and(|b| b.passed && b.error.is_none())
            && self.cutover.swapped
            && self.verification.passed
            && self.verification.error.is_none()
    }

    fn empty(kind: &str, server: String, sc: &Scenario) -> DemoSummary {
        DemoSummary {
            kind: kind.to_string(),
            server,
            server_version: String::new(),
            database: String::new(),
            database_dropped: false,
            users: sc.users,
            rows_seeded: 0,
            writers: sc.writers,
            readers: sc.readers,
            setup_seconds: 0.0,
            tables: Vec::new(),
            rows_copied: 0,
            copy_seconds: 0.0,
            copy_rows_per_second: 0.0,
            seconds_to_streaming: 0.0,
            streaming_seconds: 0.0,
            changes_applied: 0,
            apply_changes_per_second: 0.0,
            wal_applied_bytes: 0,
            apply_wal_bytes_per_second: 0.0,
            max_lag_bytes: 0,
            lag_at_cutover_bytes: 0,
            cutover: CutoverSummary {
                swapped: false,
                attempts: Vec::new(),
                reason: None,
                warnings: Vec::new(),
                seconds: 0.0,
                writers_held_ms: None,
            },
            workload: WorkloadSummary::default(),
            verification: VerificationSummary {
                before_cutover: None,
                method: String::new(),
                passed: false,
                rows_compared: 0,
                seconds: 0.0,
                error: Some("not run".into()),
            },
            rewrite_outcome: String::new(),
            warnings: Vec::new(),
            total_seconds: 0.0,
            planned_seconds: sc.planned.map(|d| d.as_secs_f64()),
        }
    }
}

/// `count / seconds`, 0 when no time passed.
pub(crate) fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Bytes in the one format every command prints ([`crate::units::format_bytes`]).
pub(crate) use crate::units::format_bytes as human_bytes;

/// A count with thousands separators: `50,000` (the one formatter, [`crate::units::thousands`]).
pub(crate) use crate::units::thousands as grouped;

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pg-rekey {} summary", self.kind)?;
        writeln!(
            f,
            "  server:       {} (PostgreSQL {})",
            self.server, self.server_version
        )?;
        writeln!(
            f,
            "  database:     {} ({})",
            self.database,
            if self.database_dropped {
                "dropped at the end"
            } else {
                "kept"
            }
        )?;
        writeln!(
            f,
            "  seed:         {} users, {} rows in {} tables ({:.1} s)",
            grouped(self.users),
            grouped(self.rows_seeded),
            self.tables.len(),
            self.setup_seconds
        )?;
        writeln!(
            f,
            "  copy:         {} rows in {:.1} s ({} rows/s); streaming after {:.1} s (indexes and constraints built)",
            grouped(self.rows_copied),
            self.copy_seconds,
            grouped(self.copy_rows_per_second.round() as u64),
            self.seconds_to_streaming
        )?;
        writeln!(
            f,
            "  stream:       {} changes ({} of WAL) applied in {:.1} s under load ({} changes/s, {}/s); max lag {}, lag at cutover {}",
            grouped(self.changes_applied),
            human_bytes(self.wal_applied_bytes),
            self.streaming_seconds,
            grouped(self.apply_changes_per_second.round() as u64),
            human_bytes(self.apply_wal_bytes_per_second.round() as u64),
            human_bytes(self.max_lag_bytes),
            human_bytes(self.lag_at_cutover_bytes)
        )?;
        let c = &self.cutover;
        writeln!(
            f,
            "  cutover:      {} after {} attempt(s) in {:.2} s",
            if c.swapped { "swapped" } else { "NOT swapped" },
            c.attempts.len(),
            c.seconds
        )?;
        for a in &c.attempts {
            writeln!(
                f,
                "    attempt {}: {} — lock wait {:.1} ms, hold {}",
                a.attempt,
                a.outcome,
                a.lock_wait_ms,
                a.lock_hold_ms
                    .map(|h| format!("{h:.1} ms"))
                    .unwrap_or_else(|| "none (not granted)".into())
            )?;
        }
        if let Some(r) = &c.reason {
            writeln!(f, "    gave up: {r}")?;
        }
        for w in &c.warnings {
            writeln!(f, "    warning: {w}")?;
        }
        if let Some(h) = c.writers_held_ms {
            writeln!(
                f,
                "    writers held {h:.1} ms after the swap while the verification snapshot was taken"
            )?;
        }
        let w = &self.workload;
        writeln!(
            f,
            "  workload:     {} writers, {} readers; {} writes committed, {} failed at the swap (reference became uuid; the writers switched), {} other failures ({} of all failures before the cutover); {} reads ({} failed)",
            self.writers,
            self.readers,
            grouped(w.writes_committed),
            grouped(w.writes_failed_at_swap),
            grouped(w.writes_failed_other),
            grouped(w.writes_failed_before_cutover),
            grouped(w.reads),
            grouped(w.reads_failed)
        )?;
        writeln!(
            f,
            "    worst read latency: {:.1} ms before the cutover, {:.1} ms around it (worst write around it {:.1} ms)",
            w.worst_read_ms_before_cutover, w.worst_read_ms_around_cutover, w.worst_write_ms_around_cutover
        )?;
        writeln!(f, "  tables:")?;
        for t in &self.tables {
            let verdict = match (t.old_rows, t.new_rows, t.differing_rows) {
                (Some(o), Some(n), Some(0)) => {
                    format!("old {} = new {} rows", grouped(o), grouped(n))
                }
                (Some(o), Some(n), Some(d)) => format!(
                    "old {} / new {} rows, {} DIFFERING",
                    grouped(o),
                    grouped(n),
                    grouped(d)
                ),
                _ => "not verified".into(),
            };
            writeln!(
                f,
                "    {:<28} {:>9} copied   {}",
                t.table,
                grouped(t.rows_copied),
                verdict
            )?;
            for d in &t.differences {
                writeln!(f, "      {d}")?;
            }
        }
        writeln!(f, "  rewrite:      {}", self.rewrite_outcome)?;
        for w in &self.warnings {
            writeln!(f, "  warning:      {w}")?;
        }
        let v = &self.verification;
        match &v.before_cutover {
            None => writeln!(f, "  before swap:  NOT RUN")?,
            Some(b) => match &b.error {
                Some(e) => writeln!(f, "  before swap:  NOT RUN — {e}")?,
                None => writeln!(
                    f,
                    "  before swap:  {} — pg-rekey verify, source against shadow at one point of the stream ({} rows, {} differing; writers held {} ms after a {} ms lock wait, attempt {}; {:.1} s)",
                    if b.passed { "PASSED" } else { "FAILED" },
                    grouped(b.rows_compared),
                    grouped(b.differing_rows),
                    b.lock_hold_ms,
                    b.lock_wait_ms,
                    b.attempts,
                    b.seconds
                )?,
            },
        }
        match (&v.error, v.passed) {
            (Some(e), _) => writeln!(f, "  at the swap:  NOT RUN — {e}")?,
            (None, true) => writeln!(
                f,
                "  at the swap:  PASSED — {} ({} rows, {:.1} s)",
                v.method,
                grouped(v.rows_compared),
                v.seconds
            )?,
            (None, false) => writeln!(
                f,
                "  at the swap:  FAILED — old and new differ (see the tables above); {}",
                v.method
            )?,
        }
        write!(
            f,
            "  result:       {} in {:.1} s{}",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.total_seconds,
            self.planned_seconds
                .map(|p| format!(" (planned {p:.0} s)"))
                .unwrap_or_default()
        )
    }
}

/// Create the scenario's database on `server`, run it there, drop it.
pub(crate) async fn run_scenario(
    server: &ConnSpec,
    label: String,
    sc: &Scenario,
    shutdown: watch::Receiver<bool>,
) -> Result<DemoSummary, Error> {
    let started = Instant::now();
    let admin = pg::connect(server, "demo-admin").await?;
    let version: String = admin
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(Error::db("read the server version"))?
        .get(0);
    let name = format!(
        "pg_rekey_{}_{}",
        sc.kind,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&name)
        ))
        .await
        .map_err(|e| Error::Db {
            context: format!(
                "create the {} database {name} on {} (the role needs CREATEDB and REPLICATION, or superuser)",
                sc.kind,
                server.redacted()
            ),
            source: e,
        })?;
    info!(database = %name, server = %server.redacted(), "created the scenario's database");

    let mut summary = DemoSummary::empty(sc.kind, label, sc);
    summary.server_version = version;
    summary.database = name.clone();
    let spec = server.with_dbname(&name);
    let result = in_database(&spec, sc, shutdown, &mut summary).await;

    if sc.keep_database {
        info!(database = %name, "keeping the scenario's database as asked");
    } else {
        match drop_database(&admin, &name).await {
            Ok(()) => summary.database_dropped = true,
            Err(e) => {
                let msg = format!(
                    "could not drop {name}: {}; drop it by hand (DROP DATABASE {} WITH (FORCE))",
                    crate::error::chain(&e),
                    quote_ident(&name)
                );
                warn!(database = %name, error = %msg, "clean-up failed");
                summary.warnings.push(msg);
            }
        }
    }
    summary.total_seconds = started.elapsed().as_secs_f64();
    result.map(|()| summary)
}

/// Drop the scenario's database: its replication slots first (a logical slot
/// keeps a database from being dropped), then every remaining session, then
/// the database. Retried briefly, as closed sessions take a moment to go.
async fn drop_database(admin: &Client, name: &str) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..50 {
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL",
                &[&name],
            )
            .await;
        let _ = admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
                &[&name],
            )
            .await;
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await;
        match admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name)))
            .await
        {
            Ok(()) => {
                info!(database = %name, "dropped the scenario's database");
                return Ok(());
            }
            Err(e) => {
                // 55006: still in use (a session or slot going away); retry.
                let busy = e.as_db_error().is_some_and(|d| d.code().code() == "55006");
                last = Some(e);
                if !busy {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    match last {
        Some(e) => Err(Error::Db {
            context: format!("drop the database {name}"),
            source: e,
        }),
        None => Ok(()),
    }
}

/// What is running inside the scenario's database; always torn down.
struct Running {
    load: Option<Workload>,
    rewrite: Option<JoinHandle<Result<RewriteOutcome, Error>>>,
    stop_rewrite: watch::Sender<bool>,
}

async fn in_database(
    spec: &ConnSpec,
    sc: &Scenario,
    shutdown: watch::Receiver<bool>,
    summary: &mut DemoSummary,
) -> Result<(), Error> {
    let setup = pg::connect(spec, "demo-setup").await?;
    let t = Instant::now();
    workload::create_schema(&setup).await?;
    workload::seed(&setup, sc.users, sc.rows).await?;
    let mut seeded = 0u64;
    for table in REFERENCING_TABLES {
        let n: i64 = setup
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}",
                    QualifiedName::new("public", *table).quoted()
                ),
                &[],
            )
            .await
            .map_err(Error::db(format!("count the rows of {table}")))?
            .get(0);
        seeded += n.max(0) as u64;
    }
    summary.rows_seeded = seeded;
    summary.setup_seconds = t.elapsed().as_secs_f64();
    info!(
        users = sc.users,
        rows = seeded,
        seconds = summary.setup_seconds,
        "example schema seeded"
    );

    // The sources' table models, read now: each old table is its source
    // renamed, so the same model describes the left side of the comparison.
    let parent =
        catalog::load_parent(&setup, &QualifiedName::new("public", PARENT), UUID_COLUMN).await?;
    let mut specs = Vec::with_capacity(REFERENCING_TABLES.len());
    for table in REFERENCING_TABLES {
        specs.push(
            catalog::load_table(&setup, &QualifiedName::new("public", *table), &parent)
                .await?
                .spec,
        );
    }

    let load = Workload::start(
        spec,
        WorkloadOptions {
            writers: sc.writers,
            readers: sc.readers,
            ..WorkloadOptions::default()
        },
    )
    .await?;
    let (stop_rewrite, _) = watch::channel(false);
    let mut running = Running {
        load: Some(load),
        rewrite: None,
        stop_rewrite,
    };
    let result = drive(spec, sc, shutdown, &mut running, &specs, &parent, summary).await;

    // Tear down whatever is still running, on every path.
    if let Some(load) = running.load.take() {
        let stats = load.stop().await;
        fill_workload(&mut summary.workload, &stats);
    }
    if let Some(handle) = running.rewrite.take() {
        if !handle.is_finished() {
            let _ = running.stop_rewrite.send(true);
        }
        // The rewrite removes its objects when told to stop; when the whole
        // database is about to be dropped anyway, do not wait long for it.
        let wait = Duration::from_secs(if sc.keep_database { 60 } else { 10 });
        summary.rewrite_outcome = match tokio::time::timeout(wait, handle).await {
            Ok(Ok(Ok(o))) => outcome_name(&o).into(),
            Ok(Ok(Err(e))) => format!("failed: {}", crate::error::chain(&e)),
            Ok(Err(e)) => format!("task failed: {e}"),
            Err(_) => format!("did not stop within {} s", wait.as_secs()),
        };
    }
    if sc.keep_database {
        // Leave the kept database as the tool left it: without the gate.
        let _ = setup
            .batch_execute("DROP SCHEMA IF EXISTS rekey_demo CASCADE")
            .await;
    }
    result
}

fn outcome_name(o: &RewriteOutcome) -> &'static str {
    match o {
        RewriteOutcome::CutOver => "cut over; slot and publication dropped, exited",
        RewriteOutcome::Aborted => "aborted; its objects were removed",
        RewriteOutcome::Finished => "the way back was finished; slot and publication dropped",
        RewriteOutcome::Paused => "stopped serving the way back; everything kept",
    }
}

fn fill_workload(w: &mut WorkloadSummary, s: &WorkloadStats) {
    let failures = s.failures.load(Ordering::Relaxed);
    let switches = s.type_switches.load(Ordering::Relaxed);
    w.writes_committed = s.commits.load(Ordering::Relaxed);
    w.writes_failed_at_swap = switches;
    w.writes_failed_other = failures.saturating_sub(switches);
    w.reads = s.reads.load(Ordering::Relaxed);
    w.reads_failed = s.read_failures.load(Ordering::Relaxed);
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Resolves once `rx` says stop; never, if its sender is gone without saying so.
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn stopped() -> Error {
    Error::Stopped(
        "interrupted; the scenario's database and everything in it are being removed".into(),
    )
}

/// Rewrite, stream, cut over, verify.
#[allow(clippy::too_many_arguments)]
async fn drive(
    spec: &ConnSpec,
    sc: &Scenario,
    mut shutdown: watch::Receiver<bool>,
    running: &mut Running,
    specs: &[TableSpec],
    parent: &ParentSpec,
    summary: &mut DemoSummary,
) -> Result<(), Error> {
    let stats = match &running.load {
        Some(l) => l.stats.clone(),
        None => return Err(Error::Config("the workload is not running".into())),
    };
    let tables: Vec<QualifiedName> = specs.iter().map(|s| s.source.clone()).collect();
    let rcfg = RewriteConfig::new(
        spec.clone(),
        parent.table.clone(),
        UUID_COLUMN,
        tables.clone(),
    );
    let progress = JobProgress::new();
    let rewrite_started = Instant::now();
    {
        let progress = progress.clone();
        let stop = running.stop_rewrite.subscribe();
        running.rewrite = Some(crate::task::spawn(
            "demo-rewrite",
            async move { crate::rewrite::run(&rcfg, stop, progress).await }
                .instrument(tracing::info_span!("demo-rewrite")),
        ));
    }

    // Copy: sample the row counters until the tables stream.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_rows = 0u64;
    let mut last_increase = rewrite_started;
    loop {
        tokio::select! {
            biased;
            _ = stop_requested(&mut shutdown) => return Err(stopped()),
            _ = tick.tick() => {}
        }
        let rows = copied_rows(&progress);
        if rows > last_rows {
            last_rows = rows;
            last_increase = Instant::now();
        }
        let tables_now = progress.tables();
        if !tables_now.is_empty()
            && tables_now
                .iter()
                .all(|t| t.phase() == crate::progress::Phase::Streaming)
        {
            break;
        }
        if let Some(e) = rewrite_ended_early(running).await {
            return Err(e);
        }
        if rewrite_started.elapsed() > PHASE_TIMEOUT {
            return Err(Error::Precondition(format!(
                "the rewrite did not reach streaming within {} s; see the log above",
                PHASE_TIMEOUT.as_secs()
            )));
        }
    }
    let streaming_since = Instant::now();
    summary.seconds_to_streaming = rewrite_started.elapsed().as_secs_f64();
    summary.rows_copied = copied_rows(&progress);
    summary.copy_seconds = (last_increase - rewrite_started).as_secs_f64();
    summary.copy_rows_per_second = per_second(summary.rows_copied, summary.copy_seconds);
    summary.tables = per_table_copied(&progress, &tables);
    info!(
        rows = summary.rows_copied,
        seconds = summary.copy_seconds,
        "copied; streaming under load"
    );

    // Stream under load until the plan says so and the lag is small. The lag
    // and the applied WAL are measured here from the job's recorded position
    // (what `status` shows), independently of the job's own counters.
    let deadline = sc.stream.deadline(streaming_since);
    let applied_at_start = changes_applied(&progress);
    let monitor = pg::connect(spec, "demo-monitor").await?;
    let first = positions(&monitor, &tables).await?;
    let mut last: Positions;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_report = Instant::now();
    let lag_limit = cutover_config(spec, &tables).max_lag_bytes / 2;
    loop {
        tokio::select! {
            biased;
            _ = stop_requested(&mut shutdown) => return Err(stopped()),
            _ = tick.tick() => {}
        }
        last = positions(&monitor, &tables).await?;
        let lag = last.lag();
        summary.max_lag_bytes = summary.max_lag_bytes.max(lag);
        if let Some(e) = rewrite_ended_early(running).await {
            return Err(e);
        }
        if last_report.elapsed() >= sc.report_every {
            last_report = Instant::now();
            info!(
                lag_bytes = lag,
                changes_applied = changes_applied(&progress),
                writes = stats.commits.load(Ordering::Relaxed),
                reads = stats.reads.load(Ordering::Relaxed),
                "streaming under load"
            );
        }
        let now = Instant::now();
        if now >= deadline && (lag <= lag_limit || now >= deadline + PHASE_TIMEOUT) {
            break;
        }
    }
    summary.streaming_seconds = streaming_since.elapsed().as_secs_f64();
    summary.changes_applied = changes_applied(&progress).saturating_sub(applied_at_start);
    summary.apply_changes_per_second =
        per_second(summary.changes_applied, summary.streaming_seconds);
    summary.wal_applied_bytes = last.applied.bytes_since(first.applied);
    summary.apply_wal_bytes_per_second =
        per_second(summary.wal_applied_bytes, summary.streaming_seconds);
    summary.lag_at_cutover_bytes = last.lag();
    summary.workload.worst_read_ms_before_cutover = ms(stats.worst_read_us.load(Ordering::Relaxed));
    summary.workload.writes_failed_before_cutover = stats.failures.load(Ordering::Relaxed);

    // The tool's own verify, source against shadow, at a consistent point
    // under load; like `cutover` itself, refuse to swap on a difference.
    let before = verify_before_cutover(spec, &tables, parent, summary).await;
    let go = before.passed && before.error.is_none();
    summary.verification.before_cutover = Some(before);
    if !go {
        summary.cutover.reason = Some(
            "the verification before the swap did not pass; nothing was swapped (as `pg-rekey cutover` would refuse)".into(),
        );
        return Ok(());
    }

    // The verification gate (module docs), then the cutover with the swap watched.
    let gate = pg::connect(spec, "demo-gate").await?;
    install_gate(&gate, specs).await?;
    let verifier = pg::connect(spec, "demo-verify").await?;
    let old_tables: Vec<QualifiedName> = tables
        .iter()
        .map(|t| QualifiedName::new(t.schema.clone(), SwapNames::derive(t).old_table))
        .collect();
    let ccfg = cutover_config(spec, &tables);
    stats.reset_worst();
    let cut_started = Instant::now();
    let done = AtomicBool::new(false);
    let cut = async {
        let r = crate::cutover::run(&ccfg).await;
        done.store(true, Ordering::Release);
        r
    };
    let watch_swap = snapshot_at_swap(&verifier, &gate, &old_tables, &done);
    let (report, snapshot) = tokio::join!(cut, watch_swap);
    summary.cutover.seconds = cut_started.elapsed().as_secs_f64();
    summary.workload.worst_read_ms_around_cutover = ms(stats.worst_read_us.load(Ordering::Relaxed));
    summary.workload.worst_write_ms_around_cutover =
        ms(stats.worst_write_us.load(Ordering::Relaxed));
    drop(gate);
    let report = report?;
    summary.cutover.swapped = report.swapped;
    summary.cutover.attempts = report.attempts.clone();
    summary.cutover.reason = report.reason.clone();
    summary.cutover.warnings = report.warnings.clone();
    for (t, old) in tables.iter().zip(&old_tables) {
        if let Some(ts) = summary.tables.iter_mut().find(|s| s.table == t.to_string()) {
            ts.old_table = report.swapped.then(|| old.to_string());
        }
    }
    info!(
        swapped = report.swapped,
        attempts = report.attempts.len(),
        "cutover finished"
    );

    // Verify old against new in the snapshot taken at the swap.
    summary.verification.method =
        "old table against new table, row by row (verify::verify_table), in one REPEATABLE READ snapshot taken at the swap"
            .into();
    match snapshot {
        Ok(Some(held)) if report.swapped => {
            summary.cutover.writers_held_ms = Some(held.as_secs_f64() * 1000.0);
            let t = Instant::now();
            let r = verify_all(&verifier, specs, parent, &old_tables, summary).await;
            let _ = verifier.batch_execute("COMMIT").await;
            summary.verification.seconds = t.elapsed().as_secs_f64();
            match r {
                Ok(()) => summary.verification.error = None,
                Err(e) => summary.verification.error = Some(crate::error::chain(&e)),
            }
        }
        Ok(_) => {
            summary.verification.error =
                Some("the cutover did not swap the tables; nothing to compare".into())
        }
        Err(e) => {
            summary.verification.error = Some(format!(
                "could not take the snapshot at the swap: {}",
                crate::error::chain(&e)
            ))
        }
    }

    // After the swap the rewrite sees cut_over, drops its slot and exits.
    if report.swapped {
        if let Some(handle) = running.rewrite.as_mut() {
            let outcome = tokio::select! {
                biased;
                _ = stop_requested(&mut shutdown) => return Err(stopped()),
                r = tokio::time::timeout(PHASE_TIMEOUT, handle) => r,
            };
            if outcome.is_ok() {
                running.rewrite = None;
            }
            summary.rewrite_outcome = match outcome {
                Ok(Ok(Ok(o))) => outcome_name(&o).into(),
                Ok(Ok(Err(e))) => format!("failed: {}", crate::error::chain(&e)),
                Ok(Err(e)) => format!("task failed: {e}"),
                Err(_) => format!(
                    "did not exit within {} s of the swap",
                    PHASE_TIMEOUT.as_secs()
                ),
            };
        }
    }
    Ok(())
}

/// `pg-rekey verify` on every table while it streams (see [`crate::verify::run`]).
async fn verify_before_cutover(
    spec: &ConnSpec,
    tables: &[QualifiedName],
    parent: &ParentSpec,
    summary: &mut DemoSummary,
) -> BeforeCutover {
    let opts = verify::RunOptions {
        compare: VerifyOptions {
            max_rows: DIFF_ROWS_SHOWN,
            ..VerifyOptions::default()
        },
        parent: Some(verify::ParentChoice {
            table: parent.table.clone(),
            uuid_column: parent.uuid_column.clone(),
        }),
        ..verify::RunOptions::default()
    };
    let t = Instant::now();
    let mut b = BeforeCutover::default();
    match verify::run(spec, tables, &opts).await {
        Ok(report) => {
            b.passed = report.equal;
            if let Some(p) = &report.consistent_point {
                b.attempts = p.attempts;
                b.lock_wait_ms = p.lock_wait_ms;
                b.lock_hold_ms = p.lock_hold_ms;
            }
            for r in &report.tables {
                b.rows_compared += r.verdict.left_rows;
                b.differing_rows += r.verdict.differing_rows;
                if let Some(ts) = summary
                    .tables
                    .iter_mut()
                    .find(|s| s.table == r.table.to_string())
                {
                    ts.before_differing_rows = Some(r.verdict.differing_rows);
                    ts.differences.extend(
                        describe(&r.verdict)
                            .into_iter()
                            .map(|d| format!("before the swap: {d}")),
                    );
                }
            }
            info!(
                equal = report.equal,
                rows = b.rows_compared,
                "verified before the cutover"
            );
        }
        Err(e) => b.error = Some(crate::error::chain(&e)),
    }
    b.seconds = t.elapsed().as_secs_f64();
    b
}

/// The verdict's named rows, one line each.
fn describe(v: &verify::TableVerdict) -> Vec<String> {
    v.rows
        .iter()
        .map(|r| {
            let key: Vec<String> = r
                .key
                .iter()
                .map(|k| format!("{}={}", k.column, k.value))
                .collect();
            let what = match &r.kind {
                verify::RowDiffKind::Missing => "missing on the uuid side".to_string(),
                verify::RowDiffKind::Extra => "only on the uuid side".to_string(),
                verify::RowDiffKind::Changed { columns } => {
                    format!("differs in {}", columns.join(", "))
                }
            };
            format!("({}): {what}", key.join(", "))
        })
        .collect()
}

/// The server's WAL position and the least applied position of the jobs.
#[derive(Debug, Clone, Copy)]
struct Positions {
    current: Lsn,
    applied: Lsn,
}

impl Positions {
    fn lag(&self) -> u64 {
        self.current.bytes_since(self.applied)
    }
}

/// Read [`Positions`]: the applied position each job recorded with its
/// shadow writes (its consistent point before the first record).
async fn positions(client: &Client, tables: &[QualifiedName]) -> Result<Positions, Error> {
    let jobs = crate::state::list_jobs(client).await?;
    let applied = jobs
        .iter()
        .filter(|j| tables.contains(&j.source))
        .filter_map(|j| j.applied_lsn.or(j.consistent_lsn))
        .min()
        .unwrap_or_default();
    let current: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(Error::db("read the current WAL position"))?
        .get(0);
    let current = current
        .parse::<Lsn>()
        .map_err(|e| Error::Precondition(format!("the server's WAL position {current:?}: {e}")))?;
    Ok(Positions { current, applied })
}

/// Rows copied so far over all tables.
fn copied_rows(progress: &JobProgress) -> u64 {
    progress.tables().iter().map(|t| t.rows_copied()).sum()
}

/// Changes applied so far over all tables.
fn changes_applied(progress: &JobProgress) -> u64 {
    progress.tables().iter().map(|t| t.changes_applied()).sum()
}

fn per_table_copied(progress: &JobProgress, tables: &[QualifiedName]) -> Vec<TableSummary> {
    let copied: Vec<(QualifiedName, u64)> = progress
        .tables()
        .iter()
        .map(|t| (t.name().clone(), t.rows_copied()))
        .collect();
    tables
        .iter()
        .map(|t| TableSummary {
            table: t.to_string(),
            rows_copied: copied
                .iter()
                .find(|(n, _)| n == t)
                .map(|(_, r)| *r)
                .unwrap_or(0),
            old_table: None,
            before_differing_rows: None,
            old_rows: None,
            new_rows: None,
            differing_rows: None,
            differences: Vec::new(),
        })
        .collect()
}

/// When the rewrite task has ended before its time, its error.
async fn rewrite_ended_early(running: &mut Running) -> Option<Error> {
    if !running.rewrite.as_ref().is_some_and(|h| h.is_finished()) {
        return None;
    }
    let handle = running.rewrite.take()?;
    Some(match handle.await {
        Ok(Err(e)) => e,
        Ok(Ok(o)) => Error::Precondition(format!(
            "the rewrite ended before the cutover ({})",
            outcome_name(&o)
        )),
        Err(e) => Error::Precondition(format!("the rewrite task failed: {e}")),
    })
}

fn cutover_config(spec: &ConnSpec, tables: &[QualifiedName]) -> CutoverConfig {
    CutoverConfig {
        backoff: Duration::from_millis(100),
        // The scenario runs the same verify just before (to report it) and
        // compares old against new itself, exactly at the swap.
        skip_verify: true,
        ..CutoverConfig::new(spec.clone(), tables.to_vec())
    }
}

/// Hold the gate's advisory lock on `gate` and put the gate trigger on every shadow.
async fn install_gate(gate: &Client, specs: &[TableSpec]) -> Result<(), Error> {
    gate.query_one("SELECT pg_advisory_lock($1)", &[&GATE_KEY])
        .await
        .map_err(Error::db("take the verification gate's advisory lock"))?;
    gate.batch_execute(&format!(
        "CREATE SCHEMA rekey_demo;
         CREATE FUNCTION rekey_demo.gate() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_KEY}); RETURN NULL; END $f$;"
    ))
    .await
    .map_err(Error::db("create the verification gate's function"))?;
    // One shadow per transaction: the apply session's transactions lock
    // several shadows in any order, so taking two locks here could deadlock.
    for s in specs {
        gate.batch_execute(&format!(
            "CREATE TRIGGER rekey_demo_gate BEFORE INSERT OR UPDATE OR DELETE ON {} FOR EACH STATEMENT EXECUTE FUNCTION rekey_demo.gate()",
            s.shadow.quoted()
        ))
        .await
        .map_err(Error::db(format!(
            "install the verification gate on {}",
            s.shadow
        )))?;
    }
    Ok(())
}

/// Wait for the swap to commit, then open the `REPEATABLE READ` snapshot on
/// `verifier` and release the gate. `Ok(Some(held))` with how long writers
/// were held since the swap was seen; `Ok(None)` when the cutover ended
/// without a swap. The snapshot stays open on `verifier` (caller commits).
async fn snapshot_at_swap(
    verifier: &Client,
    gate: &Client,
    old_tables: &[QualifiedName],
    cutover_done: &AtomicBool,
) -> Result<Option<Duration>, Error> {
    let schemas: Vec<&str> = old_tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = old_tables.iter().map(|t| t.name.as_str()).collect();
    let want = old_tables.len() as i64;
    loop {
        // Read the flag first: a swap committed before the cutover returned
        // is then always seen by the query below.
        let finished = cutover_done.load(Ordering::Acquire);
        let present: i64 = verifier
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  JOIN unnest($1::text[], $2::text[]) AS w(s, r) ON n.nspname = w.s AND c.relname = w.r",
                &[&schemas, &names],
            )
            .await
            .map_err(Error::db("look for the old tables"))?
            .get(0);
        if present == want {
            let seen = Instant::now();
            verifier
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
                .await
                .map_err(Error::db("open the verification snapshot"))?;
            gate.query_one("SELECT pg_advisory_unlock($1)", &[&GATE_KEY])
                .await
                .map_err(Error::db("release the verification gate"))?;
            return Ok(Some(seen.elapsed()));
        }
        if finished {
            return Ok(None);
        }
        tokio::time::sleep(SWAP_POLL).await;
    }
}

/// Compare every old table with its new table inside the open snapshot.
async fn verify_all(
    verifier: &Client,
    specs: &[TableSpec],
    parent: &ParentSpec,
    old_tables: &[QualifiedName],
    summary: &mut DemoSummary,
) -> Result<(), Error> {
    let opts = VerifyOptions {
        max_rows: DIFF_ROWS_SHOWN,
        ..VerifyOptions::default()
    };
    let mut all_equal = true;
    for (s, old) in specs.iter().zip(old_tables) {
        let v = verify::verify_table(verifier, s, parent, old, &s.source, &opts).await?;
        tracing::debug!(table = %s.source, equal = v.equal, old_rows = v.left_rows, new_rows = v.right_rows, "verified");
        all_equal &= v.equal;
        summary.verification.rows_compared += v.left_rows;
        if let Some(ts) = summary
            .tables
            .iter_mut()
            .find(|t| t.table == s.source.to_string())
        {
            ts.old_rows = Some(v.left_rows);
            ts.new_rows = Some(v.right_rows);
            ts.differing_rows = Some(v.differing_rows);
            ts.differences.extend(describe(&v));
        }
    }
    summary.verification.passed = all_equal;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_plan_deadlines() {
        let t0 = Instant::now();
        assert_eq!(
            StreamPlan::For(Duration::from_secs(3)).deadline(t0),
            t0 + Duration::from_secs(3)
        );
        // Never less than the minimum, so the lag has been measured.
        assert_eq!(
            StreamPlan::For(Duration::ZERO).deadline(t0),
            t0 + MIN_STREAM
        );
        assert_eq!(
            StreamPlan::Until(t0 + Duration::from_secs(40)).deadline(t0),
            t0 + Duration::from_secs(40)
        );
        // A soak whose copy ate the budget still streams a little.
        assert_eq!(
            StreamPlan::Until(t0).deadline(t0 + Duration::from_secs(5)),
            t0 + Duration::from_secs(5) + MIN_STREAM
        );
    }

    #[test]
    fn rates_and_units() {
        assert_eq!(per_second(100, 2.0), 50.0);
        assert_eq!(per_second(100, 0.0), 0.0);
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345), "12.1 KiB");
        assert_eq!(human_bytes(4_000_000), "3.81 MiB");
        assert_eq!(human_bytes(1_200_000_000), "1.12 GiB");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(50_000), "50,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    fn sample() -> DemoSummary {
        let sc = Scenario {
            kind: "demo",
            users: 2000,
            rows: 50_000,
            writers: 3,
            readers: 2,
            stream: StreamPlan::For(Duration::from_secs(3)),
            report_every: Duration::from_secs(5),
            keep_database: false,
            planned: None,
        };
        let mut s = DemoSummary::empty("demo", "127.0.0.1:5432/postgres as postgres".into(), &sc);
        s.tables.push(TableSummary {
            table: "sessions".into(),
            rows_copied: 10_000,
            old_table: Some("_rekey_old_sessions".into()),
            before_differing_rows: Some(0),
            old_rows: Some(10_010),
            new_rows: Some(10_010),
            differing_rows: Some(0),
            differences: vec![],
        });
        s.cutover.swapped = true;
        s.cutover.attempts.push(AttemptReport {
            attempt: 1,
            lock_wait_ms: 0.4,
            lock_hold_ms: Some(23.1),
            outcome: crate::cutover::AttemptOutcome::Swapped,
            phases: vec![],
            lock_holders: vec![],
        });
        s.verification.error = None;
        s.verification.passed = true;
        s.verification.before_cutover = Some(BeforeCutover {
            passed: true,
            rows_compared: 10_000,
            attempts: 1,
            lock_hold_ms: 12,
            ..BeforeCutover::default()
        });
        s
    }

    #[test]
    fn verdict_needs_swap_and_equal_tables() {
        let mut s = sample();
        assert!(s.passed());
        s.verification.passed = false;
        assert!(!s.passed());
        let mut s = sample();
        s.cutover.swapped = false;
        assert!(!s.passed());
        let mut s = sample();
        s.verification.before_cutover = None;
        assert!(
            !s.passed(),
            "the check before the swap is part of the verdict"
        );
        let mut s = sample();
        if let Some(b) = s.verification.before_cutover.as_mut() {
            b.passed = false;
        }
        assert!(!s.passed());
        assert!(!DemoSummary::empty(
            "demo",
            String::new(),
            &Scenario {
                kind: "demo",
                users: 1,
                rows: 1,
                writers: 1,
                readers: 1,
                stream: StreamPlan::For(Duration::ZERO),
                report_every: Duration::from_secs(1),
                keep_database: false,
                planned: None,
            }
        )
        .passed());
    }

    #[test]
    fn display_names_every_figure() {
        let text = sample().to_string();
        for needle in [
            "copy:",
            "rows/s",
            "changes/s",
            "lag at cutover",
            "attempt 1: swapped — lock wait 0.4 ms, hold 23.1 ms",
            "worst read latency",
            "failed at the swap",
            "old 10,010 = new 10,010 rows",
            "at the swap:  PASSED",
            "before swap:  PASSED",
            "writers held 12 ms",
            "result:       PASSED",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        let mut s = sample();
        s.tables[0].differing_rows = Some(2);
        s.tables[0].differences = vec!["(id=7): missing in the new table".into()];
        s.verification.passed = false;
        let text = s.to_string();
        assert!(
            text.contains("2 DIFFERING")
                && text.contains("(id=7): missing")
                && text.contains("result:       FAILED"),
            "{text}"
        );
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["cutover"]["attempts"][0]["lock_hold_ms"], 23.1);
        assert_eq!(json["verification"]["passed"], true);
    }
}
