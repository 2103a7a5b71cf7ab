//! Live progress of one rewrite process, and its rendering.
//!
//! [`JobProgress`] is shared (`Arc`) between the workers that make progress
//! (copy, apply, cutover, throttle) and the readers that show it (the
//! [`spawn_renderer`] task, the metrics endpoint in [`crate::metrics`], the
//! final summary).
//!
//! Invariants and why they hold:
//! - **The hot path only bumps atomics.** The copy calls
//!   [`TableProgress::add_rows_copied`] once per chunk: one relaxed
//!   `fetch_add`, no lock, no allocation, no formatting. Rates, ETAs and text
//!   are computed by the readers on their own schedule.
//! - **Readers see each value, not a consistent cut.** Counters are read one by
//!   one with relaxed ordering, so a snapshot may pair a row count with a lag
//!   from a few microseconds later. That is fine for display and metrics and is
//!   why nothing that decides correctness (the applied LSN, cutover go/no-go)
//!   reads from here.
//! - **Counters are monotonic** (rows copied, changes applied, cutover attempts);
//!   gauges (lag, WAL retained, estimate) are overwritten. Rates are computed
//!   from counters only.
//! - The few fields that are not numbers (copy start, last error, throttle
//!   reason, cutover history) sit behind short `std::sync::Mutex`es taken only
//!   on phase changes and by readers; a poisoned lock is recovered, since the
//!   data is display-only.

pub use crate::units::{format_bytes, format_count, format_duration, thousands};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::pg::QualifiedName;

/// Where a table's rewrite is: the same phases as the job rows (and their
/// names are the `phase` label values of the metrics).
pub use crate::state::Phase;

fn phase_to_u8(p: Phase) -> u8 {
    p as u8
}

fn phase_from_u8(v: u8) -> Phase {
    // Only `phase_to_u8` values are ever stored; fall back rather than panic.
    Phase::ALL
        .get(usize::from(v))
        .copied()
        .unwrap_or(Phase::Failed)
}

/// What the copy throttle currently asks of the copy (see [`crate::throttle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleState {
    /// Copy at full speed.
    Proceed,
    /// Copy with a pause between chunks.
    SlowDown,
    /// Copy paused until the pressure drops.
    Paused,
}

impl ThrottleState {
    fn from_u8(v: u8) -> ThrottleState {
        match v {
            1 => ThrottleState::SlowDown,
            2 => ThrottleState::Paused,
            _ => ThrottleState::Proceed,
        }
    }

    /// The serialized name (`proceed`, `slow_down`, `paused`).
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleState::Proceed => "proceed",
            ThrottleState::SlowDown => "slow_down",
            ThrottleState::Paused => "paused",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Display-only data: a panic elsewhere must not take the progress down.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn duration_from_us(us: u64) -> Duration {
    Duration::from_micros(us)
}

fn us_from_duration(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Live progress of one table's rewrite.
#[derive(Debug)]
pub struct TableProgress {
    name: QualifiedName,
    phase: AtomicU8,
    rows_copied: AtomicU64,
    rows_estimate: AtomicU64,
    changes_applied: AtomicU64,
    lag_bytes: AtomicU64,
    lag_us: AtomicU64,
    wal_retained_bytes: AtomicU64,
    way_back: std::sync::atomic::AtomicBool,
    copy_started: Mutex<Option<Instant>>,
    copy_finished: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl TableProgress {
    fn new(name: QualifiedName) -> Self {
        TableProgress {
            name,
            phase: AtomicU8::new(phase_to_u8(Phase::Copying)),
            rows_copied: AtomicU64::new(0),
            rows_estimate: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_us: AtomicU64::new(0),
            wal_retained_bytes: AtomicU64::new(0),
            way_back: std::sync::atomic::AtomicBool::new(false),
            copy_started: Mutex::new(None),
            copy_finished: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// The table (schema-qualified).
    pub fn name(&self) -> &QualifiedName {
        &self.name
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        phase_from_u8(self.phase.load(Relaxed))
    }

    /// Move to another phase. Any transition is accepted: a cutover attempt
    /// that gives its locks back returns to [`Phase::Streaming`].
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase_to_u8(phase), Relaxed);
    }

    /// Mark the start of the copy now (phase [`Phase::Copying`]); rates and
    /// the ETA count from here. `estimate` is the planner's row estimate
    /// (`reltuples`; 0 when unknown).
    pub fn start_copy(&self, estimate: u64) {
        self.set_rows_estimate(estimate);
        *lock(&self.copy_started) = Some(Instant::now());
        *lock(&self.copy_finished) = None;
        self.set_phase(Phase::Copying);
    }

    /// Mark the end of the copy now (the caller then moves to streaming).
    pub fn finish_copy(&self) {
        *lock(&self.copy_finished) = Some(Instant::now());
    }

    /// Count `n` more rows copied. The copy's only call per chunk: one atomic add.
    #[inline]
    pub fn add_rows_copied(&self, n: u64) {
        self.rows_copied.fetch_add(n, Relaxed);
    }

    /// Rows copied so far.
    pub fn rows_copied(&self) -> u64 {
        self.rows_copied.load(Relaxed)
    }

    /// Set the row estimate (0 = unknown).
    pub fn set_rows_estimate(&self, estimate: u64) {
        self.rows_estimate.store(estimate, Relaxed);
    }

    /// Count `n` more changes applied to the shadow.
    #[inline]
    pub fn add_changes_applied(&self, n: u64) {
        self.changes_applied.fetch_add(n, Relaxed);
    }

    /// Changes applied so far.
    pub fn changes_applied(&self) -> u64 {
        self.changes_applied.load(Relaxed)
    }

    /// Set the stream lag: bytes between the server's WAL end and the applied
    /// position, and time since the last applied commit was committed (see
    /// [`commit_lag`]).
    pub fn set_lag(&self, bytes: u64, time: Duration) {
        self.lag_bytes.store(bytes, Relaxed);
        self.lag_us.store(us_from_duration(time), Relaxed);
    }

    /// Set the WAL the job's slot retains (`pg_current_wal_lsn() - restart_lsn`).
    pub fn set_wal_retained(&self, bytes: u64) {
        self.wal_retained_bytes.store(bytes, Relaxed);
    }

    /// Remember the latest error (shown by the renderer and `status`); does
    /// not change the phase, since transient errors are retried.
    pub fn set_last_error(&self, message: impl Into<String>) {
        *lock(&self.last_error) = Some(message.into());
    }

    /// Record a definite error and move to [`Phase::Failed`].
    pub fn fail(&self, message: impl Into<String>) {
        self.set_last_error(message);
        self.set_phase(Phase::Failed);
    }

    /// Whether the job keeps this table's old table current from the new
    /// one (cut over with a way back): the direction of its stream.
    pub fn set_way_back(&self, on: bool) {
        self.way_back.store(on, Relaxed);
    }

    /// A copy of every value, for display.
    pub fn snapshot(&self) -> TableSnapshot {
        let started = *lock(&self.copy_started);
        let finished = *lock(&self.copy_finished);
        let copy_elapsed = started.map(|s| finished.unwrap_or_else(Instant::now).duration_since(s));
        TableSnapshot {
            table: self.name.to_string(),
            phase: self.phase(),
            rows_copied: self.rows_copied(),
            rows_estimate: self.rows_estimate.load(Relaxed),
            changes_applied: self.changes_applied(),
            lag_bytes: self.lag_bytes.load(Relaxed),
            lag_seconds: duration_from_us(self.lag_us.load(Relaxed)).as_secs_f64(),
            wal_retained_bytes: self.wal_retained_bytes.load(Relaxed),
            way_back: self.way_back.load(Relaxed),
            copy_seconds: copy_elapsed.map(|d| d.as_secs_f64()),
            copy_done: finished.is_some(),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// A point-in-time copy of one table's progress (serializable for `--json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableSnapshot {
    /// Schema-qualified name in its human form (quoted only where needed).
    pub table: String,
    /// Current phase.
    pub phase: Phase,
    /// Rows copied so far.
    pub rows_copied: u64,
    /// Planner's row estimate (0 = unknown).
    pub rows_estimate: u64,
    /// Stream changes applied to the shadow.
    pub changes_applied: u64,
    /// WAL bytes between the server's end and the applied position.
    pub lag_bytes: u64,
    /// Seconds since the last applied commit was committed.
    pub lag_seconds: f64,
    /// WAL retained by the job's slot, bytes.
    pub wal_retained_bytes: u64,
    /// The stream keeps the old table current from the new one (the way
    /// back after a cutover with `--way-back`).
    pub way_back: bool,
    /// Seconds the copy has run (or ran), if it started.
    pub copy_seconds: Option<f64>,
    /// Whether the copy has finished.
    pub copy_done: bool,
    /// The latest error, if any.
    pub last_error: Option<String>,
}

impl TableSnapshot {
    /// Average copy rate since the copy started, rows per second.
    pub fn average_copy_rate(&self) -> Option<f64> {
        let secs = self.copy_seconds?;
        (secs > 0.0).then(|| self.rows_copied as f64 / secs)
    }
}

/// One cutover attempt, as recorded by the cutover.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CutoverAttempt {
    /// 1-based attempt number within this job.
    pub attempt: u64,
    /// Time spent waiting for the locks, milliseconds.
    pub lock_wait_ms: f64,
    /// Time the locks were held, milliseconds (0 if they were never granted).
    pub lock_hold_ms: f64,
    /// Whether this attempt swapped the tables.
    pub swapped: bool,
}

/// The copy throttle's view, for display.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThrottleSnapshot {
    /// What the throttle asks of the copy.
    pub state: ThrottleState,
    /// Why it pauses or slows (None while proceeding).
    pub reason: Option<String>,
    /// Largest replay lag among physical replicas, seconds (None: none seen).
    pub replica_lag_seconds: Option<f64>,
    /// How many times the copy has been paused.
    pub pauses: u64,
}

/// A point-in-time copy of the whole job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSnapshot {
    /// Seconds since the job's progress was created.
    pub elapsed_seconds: f64,
    /// Per table, in registration order.
    pub tables: Vec<TableSnapshot>,
    /// Every cutover attempt so far.
    pub cutover_attempts: Vec<CutoverAttempt>,
    /// The copy throttle.
    pub throttle: ThrottleSnapshot,
}

/// Live progress of one rewrite process: its tables, cutover attempts and
/// copy throttle. Share it with `Arc`.
#[derive(Debug)]
pub struct JobProgress {
    started: Instant,
    tables: RwLock<Vec<Arc<TableProgress>>>,
    cutover_attempts: AtomicU64,
    last_lock_wait_us: AtomicU64,
    last_lock_hold_us: AtomicU64,
    attempts: Mutex<Vec<CutoverAttempt>>,
    throttle_state: AtomicU8,
    throttle_reason: Mutex<Option<String>>,
    /// Replica lag in µs plus one; 0 means "no replica seen".
    replica_lag_us1: AtomicU64,
    throttle_pauses: AtomicU64,
    id_map_users: AtomicU64,
    id_map_bytes: AtomicU64,
    /// 1 while this process holds its job's owner lock, 0 while it
    /// reconnects (see [`crate::resume`]).
    owner_held: AtomicU64,
    /// Times this process took a job over or resumed it after a lost connection.
    resumes: AtomicU64,
}

impl JobProgress {
    /// Empty progress, shared.
    pub fn new() -> Arc<JobProgress> {
        Arc::new(JobProgress {
            started: Instant::now(),
            tables: RwLock::new(Vec::new()),
            cutover_attempts: AtomicU64::new(0),
            last_lock_wait_us: AtomicU64::new(0),
            last_lock_hold_us: AtomicU64::new(0),
            attempts: Mutex::new(Vec::new()),
            id_map_users: AtomicU64::new(0),
            id_map_bytes: AtomicU64::new(0),
            owner_held: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            throttle_state: AtomicU8::new(0),
            throttle_reason: Mutex::new(None),
            replica_lag_us1: AtomicU64::new(0),
            throttle_pauses: AtomicU64::new(0),
        })
    }

    /// Register a table (phase [`Phase::Copying`]) and return its progress.
    /// Registering the same name again returns the existing entry, so a
    /// resumed job keeps one line per table.
    pub fn add_table(&self, name: QualifiedName) -> Arc<TableProgress> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tables.iter().find(|t| t.name == name) {
            return Arc::clone(t);
        }
        let t = Arc::new(TableProgress::new(name));
        tables.push(Arc::clone(&t));
        t
    }

    /// The progress of one table, if registered.
    pub fn table(&self, name: &QualifiedName) -> Option<Arc<TableProgress>> {
        self.tables().into_iter().find(|t| t.name() == name)
    }

    /// Every registered table, in registration order.
    pub fn tables(&self) -> Vec<Arc<TableProgress>> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set the WAL retained by the job's slot on every table (one rewrite
    /// process shares one slot among its tables).
    pub fn set_wal_retained(&self, bytes: u64) {
        for t in self.tables() {
            t.set_wal_retained(bytes);
        }
    }

    /// Record a cutover attempt and return its number (1-based).
    pub fn record_cutover_attempt(
        &self,
        lock_wait: Duration,
        lock_hold: Duration,
        swapped: bool,
    ) -> u64 {
        let mut attempts = lock(&self.attempts);
        let n = self.cutover_attempts.fetch_add(1, Relaxed) + 1;
        self.last_lock_wait_us
            .store(us_from_duration(lock_wait), Relaxed);
        self.last_lock_hold_us
            .store(us_from_duration(lock_hold), Relaxed);
        attempts.push(CutoverAttempt {
            attempt: n,
            lock_wait_ms: lock_wait.as_secs_f64() * 1000.0,
            lock_hold_ms: lock_hold.as_secs_f64() * 1000.0,
            swapped,
        });
        n
    }

    /// Cutover attempts so far.
    pub fn cutover_attempt_count(&self) -> u64 {
        self.cutover_attempts.load(Relaxed)
    }

    /// Record the id map's size (parent rows, bytes) after its load.
    pub fn set_id_map(&self, users: u64, bytes: u64) {
        self.id_map_users.store(users, Relaxed);
        self.id_map_bytes.store(bytes, Relaxed);
    }

    /// Whether this process holds its job's owner lock (`false` while it
    /// reconnects after losing its connections).
    pub fn set_owner_held(&self, held: bool) {
        self.owner_held.store(u64::from(held), Relaxed);
    }

    /// Count a take-over or a resume after lost connections.
    pub fn add_resume(&self) {
        self.resumes.fetch_add(1, Relaxed);
    }

    /// (owner lock held, resumes so far).
    pub fn ownership(&self) -> (bool, u64) {
        (
            self.owner_held.load(Relaxed) == 1,
            self.resumes.load(Relaxed),
        )
    }

    /// The id map's size as recorded: parent rows and bytes (zeros before the load).
    pub fn id_map(&self) -> (u64, u64) {
        (
            self.id_map_users.load(Relaxed),
            self.id_map_bytes.load(Relaxed),
        )
    }

    /// Lock wait and hold of the last cutover attempt (zero before any).
    pub fn last_cutover_lock(&self) -> (Duration, Duration) {
        (
            duration_from_us(self.last_lock_wait_us.load(Relaxed)),
            duration_from_us(self.last_lock_hold_us.load(Relaxed)),
        )
    }

    /// Every cutover attempt so far.
    pub fn cutover_attempts(&self) -> Vec<CutoverAttempt> {
        lock(&self.attempts).clone()
    }

    /// Publish the throttle's state. Entering [`ThrottleState::Paused`] counts
    /// a pause.
    pub fn set_throttle(&self, state: ThrottleState, reason: Option<String>) {
        let mut r = lock(&self.throttle_reason);
        let before = self.throttle_state.swap(state as u8, Relaxed);
        if state == ThrottleState::Paused && ThrottleState::from_u8(before) != ThrottleState::Paused
        {
            self.throttle_pauses.fetch_add(1, Relaxed);
        }
        *r = reason;
    }

    /// Publish the largest replay lag among physical replicas (None: none seen).
    pub fn set_replica_lag(&self, lag: Option<Duration>) {
        let v = lag.map_or(0, |d| us_from_duration(d).saturating_add(1));
        self.replica_lag_us1.store(v, Relaxed);
    }

    /// The throttle's current view.
    pub fn throttle(&self) -> ThrottleSnapshot {
        let reason = lock(&self.throttle_reason).clone();
        let lag = self.replica_lag_us1.load(Relaxed);
        ThrottleSnapshot {
            state: ThrottleState::from_u8(self.throttle_state.load(Relaxed)),
            reason,
            replica_lag_seconds: (lag > 0).then(|| duration_from_us(lag - 1).as_secs_f64()),
            pauses: self.throttle_pauses.load(Relaxed),
        }
    }

    /// A copy of everything, for display and `--json`.
    pub fn snapshot(&self) -> JobSnapshot {
        JobSnapshot {
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            tables: self.tables().iter().map(|t| t.snapshot()).collect(),
            cutover_attempts: self.cutover_attempts(),
            throttle: self.throttle(),
        }
    }
}

// ---------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------

/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Lag of an applied commit: `now` minus its commit time (µs since
/// 2000-01-01 UTC, as pgoutput sends it). Zero when the clocks disagree and
/// the commit appears to be in the future.
pub fn commit_lag(commit_time_pg_us: i64, now: SystemTime) -> Duration {
    let now_unix_us = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_micros()).unwrap_or(i128::MAX),
        Err(_) => return Duration::ZERO,
    };
    let now_pg_us = now_unix_us - i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000;
    let lag = now_pg_us - i128::from(commit_time_pg_us);
    if lag <= 0 {
        Duration::ZERO
    } else {
        Duration::from_micros(u64::try_from(lag).unwrap_or(u64::MAX))
    }
}

/// Rate of a monotonic counter over a sliding time window.
///
/// Samples older than the window are dropped, except the newest of them, so
/// the measured span always covers (at least) the window once it has filled.
/// A counter that goes backwards (a restarted job) restarts the window.
#[derive(Clone, Debug)]
pub struct RateWindow {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// A window of the given length.
    pub fn new(window: Duration) -> Self {
        RateWindow {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Record the counter's value `total` observed at `at` (non-decreasing times).
    pub fn record(&mut self, at: Instant, total: u64) {
        if let Some(&(last_at, last)) = self.samples.back() {
            if total < last || at < last_at {
                self.samples.clear();
            }
        }
        self.samples.push_back((at, total));
        let horizon = at.checked_sub(self.window);
        while let (Some(h), Some(&(second_at, _))) = (horizon, self.samples.get(1)) {
            if second_at <= h {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Units per second over the window; None until two samples span some time.
    pub fn rate(&self) -> Option<f64> {
        let (&(t0, c0), &(t1, c1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.checked_duration_since(t0)?.as_secs_f64();
        (secs > 0.0).then(|| c1.saturating_sub(c0) as f64 / secs)
    }
}

/// Time left to reach `total` from `done` at `rate` per second. None when the
/// total is unknown (0) or the rate is not positive; zero once done ≥ total.
pub fn eta(done: u64, total: u64, rate: f64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    let remaining = total.saturating_sub(done);
    if remaining == 0 {
        return Some(Duration::ZERO);
    }
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(remaining as f64 / rate).ok()
}

/// The message beside a copy bar: rate, ETA, and the throttle if it holds
/// the copy back.
pub fn copy_message(
    snap: &TableSnapshot,
    rate: Option<f64>,
    throttle: &ThrottleSnapshot,
) -> String {
    let mut parts = Vec::new();
    match rate {
        Some(r) => parts.push(format!("{} rows/s", format_count(r))),
        None => parts.push("– rows/s".into()),
    }
    if let Some(e) = rate.and_then(|r| eta(snap.rows_copied, snap.rows_estimate, r)) {
        parts.push(format!("ETA {}", format_duration(e)));
    }
    match (throttle.state, &throttle.reason) {
        (ThrottleState::Paused, Some(r)) => parts.push(format!("paused: {r}")),
        (ThrottleState::SlowDown, Some(r)) => parts.push(format!("slowed: {r}")),
        _ => {}
    }
    if let Some(e) = &snap.last_error {
        parts.push(format!("last error: {e}"));
    }
    parts.join(" · ")
}

/// The message of a streaming (or cutting-over) table: lag, changes, WAL retained.
pub fn stream_message(snap: &TableSnapshot) -> String {
    let mut s = format!(
        "{} · lag {} / {} · {} changes applied · {} rows copied · slot retains {}",
        snap.phase.as_str().replace('_', " "),
        format_bytes(snap.lag_bytes),
        format_duration(Duration::try_from_secs_f64(snap.lag_seconds).unwrap_or_default()),
        format_count(snap.changes_applied as f64),
        format_count(snap.rows_copied as f64),
        format_bytes(snap.wal_retained_bytes),
    );
    if let Some(e) = &snap.last_error {
        s.push_str(&format!(" · last error: {e}"));
    }
    s
}

/// The final message of a table whose job ended.
pub fn final_message(snap: &TableSnapshot) -> String {
    match snap.phase {
        Phase::CutOver => format!(
            "cut over · {} rows copied · {} changes applied",
            format_count(snap.rows_copied as f64),
            format_count(snap.changes_applied as f64)
        ),
        Phase::Aborted => "aborted".into(),
        _ => format!(
            "failed: {}",
            snap.last_error.as_deref().unwrap_or("see the log")
        ),
    }
}

// ---------------------------------------------------------------------------
// Renderer
// ---------------------------------------------------------------------------

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderMode {
    /// Bars if stderr is a terminal, log lines otherwise.
    Auto,
    /// One progress bar per table on stderr.
    Bars,
    /// A periodic `tracing` info line per table.
    Log,
}

/// Renderer settings.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Bars or log lines.
    pub mode: RenderMode,
    /// How often the bars are refreshed.
    pub bar_refresh: Duration,
    /// How often a log line per table is written.
    pub log_every: Duration,
    /// Window of the rate shown.
    pub rate_window: Duration,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            mode: RenderMode::Auto,
            bar_refresh: Duration::from_millis(250),
            log_every: Duration::from_secs(10),
            rate_window: Duration::from_secs(15),
        }
    }
}

/// Start the renderer with the default options (bars on a terminal, a log
/// line per table every 10 s otherwise). It stops, after a last update, when
/// `shutdown` resolves.
pub fn spawn_renderer(
    progress: Arc<JobProgress>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    spawn_renderer_with(progress, shutdown, RenderOptions::default())
}

/// Start the renderer with explicit options.
pub fn spawn_renderer_with(
    progress: Arc<JobProgress>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: RenderOptions,
) -> tokio::task::JoinHandle<()> {
    let bars = match options.mode {
        RenderMode::Auto => std::io::stderr().is_terminal(),
        RenderMode::Bars => true,
        RenderMode::Log => false,
    };
    crate::task::spawn("progress-renderer", async move {
        tracing::debug!(task = "progress renderer", bars, "started");
        if bars {
            let mut r = BarRenderer::new(
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
                options.rate_window,
            );
            set_active_bars(Some(r.multi.clone()));
            run_ticks(options.bar_refresh, shutdown, || r.tick(&progress)).await;
            r.tick(&progress);
            r.finish();
            set_active_bars(None);
        } else {
            let mut r = LogRenderer::new(options.rate_window);
            run_ticks(options.log_every, shutdown, || {
                r.tick(&progress, Instant::now())
            })
            .await;
            r.tick(&progress, Instant::now());
        }
        tracing::debug!(task = "progress renderer", "stopped");
    })
}

async fn run_ticks(every: Duration, shutdown: impl Future<Output = ()>, mut tick: impl FnMut()) {
    let mut interval = tokio::time::interval(every.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = interval.tick() => tick(),
        }
    }
}

/// Rate of a table's copy: over the window, else the average since the copy
/// started; None once the copy is done (the bar then shows streaming).
fn table_rate(window: &RateWindow, snap: &TableSnapshot) -> Option<f64> {
    window.rate().or_else(|| snap.average_copy_rate())
}

/// The bar template for a style (see `BarEntry::style`).
fn bar_template(style: u8) -> &'static str {
    match style {
        0 => "{prefix:28} [{bar:30}] {human_pos}/{human_len} {msg}",
        1 => "{prefix:28} {spinner} {human_pos} rows {msg}",
        _ => "{prefix:28} {msg}",
    }
}

struct BarEntry {
    bar: ProgressBar,
    window: RateWindow,
    /// 0 copy with a length, 1 copy without, 2 streaming, 3 finished.
    style: u8,
}

/// One bar per table, driven from snapshots (so it can be tested with a
/// hidden draw target).
struct BarRenderer {
    multi: MultiProgress,
    rate_window: Duration,
    entries: HashMap<String, BarEntry>,
}

impl BarRenderer {
    fn new(multi: MultiProgress, rate_window: Duration) -> Self {
        BarRenderer {
            multi,
            rate_window,
            entries: HashMap::new(),
        }
    }

    fn style(template: &str) -> ProgressStyle {
        // The templates are constants; a bad one falls back to the default
        // style instead of panicking.
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    fn tick(&mut self, progress: &JobProgress) {
        let now = Instant::now();
        let throttle = progress.throttle();
        for t in progress.tables() {
            let snap = t.snapshot();
            let entry = self.entries.entry(snap.table.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_prefix(snap.table.clone());
                BarEntry {
                    bar,
                    window: RateWindow::new(self.rate_window),
                    style: u8::MAX,
                }
            });
            if entry.style == 3 {
                continue;
            }
            entry.window.record(now, snap.rows_copied);
            let want = if snap.phase.is_final() {
                3
            } else if snap.phase != Phase::Copying || snap.copy_done {
                2
            } else if snap.rows_estimate > 0 {
                0
            } else {
                1
            };
            if want != entry.style {
                let template = bar_template(want);
                entry.bar.set_style(Self::style(template));
                entry.style = want;
            }
            match want {
                0 | 1 => {
                    // reltuples is an estimate: never show more than 100 %.
                    entry
                        .bar
                        .set_length(snap.rows_estimate.max(snap.rows_copied));
                    entry.bar.set_position(snap.rows_copied);
                    let rate = table_rate(&entry.window, &snap);
                    entry.bar.set_message(copy_message(&snap, rate, &throttle));
                }
                2 => entry.bar.set_message(stream_message(&snap)),
                _ => entry.bar.finish_with_message(final_message(&snap)),
            }
        }
    }

    fn finish(&mut self) {
        for e in self.entries.values() {
            if !e.bar.is_finished() {
                e.bar.abandon();
            }
        }
    }
}

/// A periodic info line per table. Tables whose job ended are logged once.
struct LogRenderer {
    rate_window: Duration,
    windows: HashMap<String, RateWindow>,
    final_logged: HashMap<String, Phase>,
}

impl LogRenderer {
    fn new(rate_window: Duration) -> Self {
        LogRenderer {
            rate_window,
            windows: HashMap::new(),
            final_logged: HashMap::new(),
        }
    }

    fn tick(&mut self, progress: &JobProgress, now: Instant) {
        let throttle = progress.throttle();
        for snap in progress.tables().iter().map(|t| t.snapshot()) {
            if snap.phase.is_final() {
                if self.final_logged.get(&snap.table) == Some(&snap.phase) {
                    continue;
                }
                self.final_logged.insert(snap.table.clone(), snap.phase);
            }
            let window = self
                .windows
                .entry(snap.table.clone())
                .or_insert_with(|| RateWindow::new(self.rate_window));
            window.record(now, snap.rows_copied);
            let copying = snap.phase == Phase::Copying && !snap.copy_done;
            let rate = if copying {
                table_rate(window, &snap)
            } else {
                None
            };
            let eta_seconds = rate
                .and_then(|r| eta(snap.rows_copied, snap.rows_estimate, r))
                .map(|d| d.as_secs());
            tracing::info!(
                table = %snap.table,
                phase = %snap.phase.as_str(),
                rows_copied = snap.rows_copied,
                rows_estimate = snap.rows_estimate,
                rate = rate.map(|r| r.round()).unwrap_or(0.0),
                eta_seconds,
                changes_applied = snap.changes_applied,
                lag_bytes = snap.lag_bytes,
                lag_seconds = (snap.lag_seconds * 1000.0).round() / 1000.0,
                wal_retained_bytes = snap.wal_retained_bytes,
                throttle = %throttle.state.as_str(),
                last_error = snap.last_error.as_deref().map(tracing::field::display),
                "progress"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Log output that does not tear the bars
// ---------------------------------------------------------------------------

static ACTIVE_BARS: RwLock<Option<MultiProgress>> = RwLock::new(None);

fn set_active_bars(multi: Option<MultiProgress>) {
    *ACTIVE_BARS.write().unwrap_or_else(|p| p.into_inner()) = multi;
}

/// A `tracing_subscriber` writer for stderr that hides the progress bars
/// while a log line is written, so lines and bars do not tear each other.
/// Install it with `fmt().with_writer(progress::BarAwareStderr)`; without
/// active bars it is plain stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct BarAwareStderr;

/// One log event's bytes, written on drop (see [`BarAwareStderr`]).
#[derive(Debug, Default)]
pub struct BarAwareLine {
    buf: Vec<u8>,
}

impl Write for BarAwareLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarAwareLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let write = move || {
            // Nothing sensible to do if stderr is gone.
            let _ = std::io::stderr().lock().write_all(&buf);
        };
        let active = ACTIVE_BARS
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match active {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BarAwareStderr {
    type Writer = BarAwareLine;

    fn make_writer(&'a self) -> Self::Writer {
        BarAwareLine::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(job: &JobProgress, name: &str) -> Arc<TableProgress> {
        job.add_table(QualifiedName::new("public", name))
    }

    #[test]
    fn phase_names_are_the_documented_strings() {
        let names: Vec<String> = Phase::ALL
            .iter()
            .map(|p| {
                serde_json::to_value(p)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "copying",
                "streaming",
                "cutting_over",
                "cut_over",
                "failed",
                "aborted"
            ]
        );
        for p in Phase::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(phase_from_u8(phase_to_u8(p)), p);
            let back: Phase = serde_json::from_value(p.as_str().into()).unwrap();
            assert_eq!(back, p);
        }
        assert!(Phase::CutOver.is_final() && !Phase::CuttingOver.is_final());
    }

    #[test]
    fn counters_and_snapshot() {
        let job = JobProgress::new();
        let t = table(&job, "Orders");
        assert!(
            Arc::ptr_eq(&t, &table(&job, "Orders")),
            "re-registering returns the same entry"
        );
        assert_eq!(job.tables().len(), 1);
        t.start_copy(1000);
        t.add_rows_copied(10);
        t.add_rows_copied(32);
        t.add_changes_applied(5);
        t.set_lag(4096, Duration::from_millis(1500));
        job.set_wal_retained(1 << 20);
        let s = t.snapshot();
        assert_eq!(s.table, "public.\"Orders\"");
        assert_eq!(s.phase, Phase::Copying);
        assert_eq!(
            (s.rows_copied, s.rows_estimate, s.changes_applied),
            (42, 1000, 5)
        );
        assert_eq!((s.lag_bytes, s.lag_seconds), (4096, 1.5));
        assert_eq!(s.wal_retained_bytes, 1 << 20);
        assert!(s.copy_seconds.is_some() && !s.copy_done);
        t.finish_copy();
        t.set_phase(Phase::Streaming);
        t.fail("orphaned reference 7 in public.\"Orders\".user_id");
        let s = t.snapshot();
        assert_eq!(s.phase, Phase::Failed);
        assert!(s.copy_done);
        assert_eq!(
            s.last_error.as_deref(),
            Some("orphaned reference 7 in public.\"Orders\".user_id")
        );
        let json = serde_json::to_value(job.snapshot()).unwrap();
        assert_eq!(json["tables"][0]["phase"], "failed");
        assert_eq!(json["tables"][0]["rows_copied"], 42);
    }

    #[test]
    fn cutover_attempts_are_numbered_and_last_is_kept() {
        let job = JobProgress::new();
        assert_eq!(job.last_cutover_lock(), (Duration::ZERO, Duration::ZERO));
        assert_eq!(
            job.record_cutover_attempt(Duration::from_millis(200), Duration::ZERO, false),
            1
        );
        assert_eq!(
            job.record_cutover_attempt(
                Duration::from_millis(12),
                Duration::from_micros(48_500),
                true
            ),
            2
        );
        assert_eq!(job.cutover_attempt_count(), 2);
        assert_eq!(
            job.last_cutover_lock(),
            (Duration::from_millis(12), Duration::from_micros(48_500))
        );
        let a = job.cutover_attempts();
        assert_eq!(a[0].lock_wait_ms, 200.0);
        assert!(!a[0].swapped);
        assert_eq!(
            (a[1].attempt, a[1].lock_hold_ms, a[1].swapped),
            (2, 48.5, true)
        );
    }

    #[test]
    fn throttle_state_counts_pauses_once_per_entry() {
        let job = JobProgress::new();
        assert_eq!(job.throttle().state, ThrottleState::Proceed);
        assert_eq!(job.throttle().replica_lag_seconds, None);
        job.set_throttle(ThrottleState::Paused, Some("slot".into()));
        job.set_throttle(ThrottleState::Paused, Some("slot".into()));
        job.set_throttle(ThrottleState::SlowDown, Some("x".into()));
        job.set_throttle(ThrottleState::Paused, Some("lag".into()));
        job.set_replica_lag(Some(Duration::from_millis(2500)));
        let t = job.throttle();
        assert_eq!((t.state, t.pauses), (ThrottleState::Paused, 2));
        assert_eq!(t.reason.as_deref(), Some("lag"));
        assert_eq!(t.replica_lag_seconds, Some(2.5));
        job.set_replica_lag(Some(Duration::ZERO));
        assert_eq!(
            job.throttle().replica_lag_seconds,
            Some(0.0),
            "zero lag is not 'no replica'"
        );
    }

    #[test]
    fn commit_lag_uses_the_postgres_epoch() {
        // 2024-01-01 00:00:00 UTC is 757_382_400 s after 2000-01-01.
        let commit = 757_382_400_000_000i64;
        let now = UNIX_EPOCH
            + Duration::from_secs(946_684_800 + 757_382_400)
            + Duration::from_millis(1250);
        assert_eq!(commit_lag(commit, now), Duration::from_millis(1250));
        let earlier = now - Duration::from_secs(5);
        assert_eq!(
            commit_lag(commit, earlier),
            Duration::ZERO,
            "clock skew clamps at zero"
        );
        assert!(commit_lag(i64::MIN, now) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn rate_window_slides_and_survives_resets() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = RateWindow::new(Duration::from_secs(10));
        assert_eq!(w.rate(), None);
        w.record(at(0), 0);
        assert_eq!(w.rate(), None, "one sample has no span");
        w.record(at(5), 500);
        assert_eq!(w.rate(), Some(100.0));
        // Fast for 10 s, then slower: the window forgets the old pace.
        w.record(at(10), 1000);
        w.record(at(20), 1200);
        w.record(at(30), 1400);
        assert_eq!(w.rate(), Some(20.0));
        // A counter reset (restarted job) starts over.
        w.record(at(31), 10);
        assert_eq!(w.rate(), None);
        w.record(at(33), 30);
        assert_eq!(w.rate(), Some(10.0));
    }

    #[test]
    fn eta_cases() {
        assert_eq!(eta(0, 1000, 100.0), Some(Duration::from_secs(10)));
        assert_eq!(eta(500, 1000, 50.0), Some(Duration::from_secs(10)));
        assert_eq!(
            eta(1200, 1000, 50.0),
            Some(Duration::ZERO),
            "estimate exceeded"
        );
        assert_eq!(eta(0, 0, 50.0), None, "unknown total");
        assert_eq!(eta(0, 1000, 0.0), None);
        assert_eq!(eta(0, 1000, f64::NAN), None);
        assert_eq!(
            eta(0, u64::MAX, 1e-300),
            None,
            "overflow is None, not a panic"
        );
    }

    #[test]
    fn messages_show_rate_eta_lag_and_throttle() {
        let job = JobProgress::new();
        let t = table(&job, "orders");
        t.start_copy(10_000);
        t.add_rows_copied(4_000);
        let proceed = job.throttle();
        assert_eq!(
            copy_message(&t.snapshot(), Some(2000.0), &proceed),
            "2.00k rows/s · ETA 3.0s"
        );
        job.set_throttle(ThrottleState::Paused, Some("slot retains 2.00 GiB".into()));
        assert_eq!(
            copy_message(&t.snapshot(), None, &job.throttle()),
            "– rows/s · paused: slot retains 2.00 GiB"
        );
        t.set_phase(Phase::Streaming);
        t.add_changes_applied(1500);
        t.set_lag(2048, Duration::from_millis(400));
        assert_eq!(
            stream_message(&t.snapshot()),
            "streaming · lag 2.00 KiB / 400ms · 1.50k changes applied · 4.00k rows copied · slot retains 0 B"
        );
        t.set_phase(Phase::CutOver);
        assert_eq!(
            final_message(&t.snapshot()),
            "cut over · 4.00k rows copied · 1.50k changes applied"
        );
    }

    #[test]
    fn bar_templates_parse() {
        for style in 0..=3 {
            assert!(
                ProgressStyle::with_template(bar_template(style)).is_ok(),
                "{style}"
            );
        }
    }

    #[test]
    fn bars_follow_the_phases() {
        let job = JobProgress::new();
        let t = table(&job, "orders");
        t.start_copy(100);
        t.add_rows_copied(40);
        let mut r = BarRenderer::new(
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            Duration::from_secs(10),
        );
        r.tick(&job);
        let bar = r.entries.get("public.orders").unwrap().bar.clone();
        assert_eq!((bar.position(), bar.length()), (40, Some(100)));
        assert_eq!(bar.prefix(), "public.orders");
        // The estimate was low: the bar grows instead of overflowing.
        t.add_rows_copied(80);
        r.tick(&job);
        assert_eq!((bar.position(), bar.length()), (120, Some(120)));
        t.finish_copy();
        t.set_phase(Phase::Streaming);
        t.set_lag(1024, Duration::from_secs(2));
        r.tick(&job);
        assert!(
            bar.message().starts_with("streaming · lag 1.00 KiB / 2.0s"),
            "{}",
            bar.message()
        );
        t.set_phase(Phase::CutOver);
        r.tick(&job);
        assert!(bar.is_finished());
        assert!(bar.message().starts_with("cut over"));
        // A second table appears later and gets its own bar.
        table(&job, "invoices").start_copy(0);
        r.tick(&job);
        assert_eq!(r.entries.len(), 2);
        r.finish();
        assert!(r.entries.values().all(|e| e.bar.is_finished()));
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn log_mode_writes_structured_lines_and_stops_on_shutdown() {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .finish();
        // current_thread runtime: the spawned renderer runs on this thread,
        // under this default subscriber.
        let _guard = tracing::subscriber::set_default(subscriber);
        let job = JobProgress::new();
        let t = table(&job, "orders");
        t.start_copy(100);
        t.add_rows_copied(42);
        let done = table(&job, "done");
        done.set_phase(Phase::Aborted);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = spawn_renderer_with(
            Arc::clone(&job),
            async move {
                let _ = stopped.await;
            },
            RenderOptions {
                mode: RenderMode::Log,
                log_every: Duration::from_millis(10),
                ..RenderOptions::default()
            },
        );
        let text = || String::from_utf8_lossy(&lock(&out.0)).into_owned();
        let lines_for = |t: &str, needle: &str| t.lines().filter(|l| l.contains(needle)).count();
        tokio::time::timeout(Duration::from_secs(20), async {
            while lines_for(&text(), "table=public.orders") < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("three progress lines");
        stop.send(()).unwrap();
        handle.await.unwrap();
        let text = text();
        let line = text
            .lines()
            .find(|l| l.contains("table=public.orders"))
            .unwrap();
        for field in [
            "progress",
            "phase=copying",
            "rows_copied=42",
            "rows_estimate=100",
            "lag_bytes=0",
            "throttle=proceed",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
        assert_eq!(
            lines_for(&text, "table=public.done"),
            1,
            "an ended table is logged once: {text}"
        );
    }
}
