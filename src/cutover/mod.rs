//! `cutover`: swap shadows into place in one short, bounded, locked
//! transaction.
//!
//! # One attempt
//!
//! Steps 1, 2 and the commit of step 4 are [`crate::quiesce`]'s (the core
//! verify uses too), which also decides when an attempt gives the locks back
//! and how long the next one waits; what is cutover's own is the lock set,
//! the checks and the swap.
//!
//! 1. `BEGIN; SET LOCAL lock_timeout = <per attempt>`, take `SHARE ROW
//!    EXCLUSIVE` on the tables the shadows' foreign keys will reference (the
//!    parent; see [`crate::swap::sql::lock_sql`] for why first), then `ACCESS EXCLUSIVE`
//!    on every source table, each in a fixed (sorted) order so two cutovers
//!    can never deadlock each other; last `SHARE UPDATE EXCLUSIVE` on the
//!    shadows (the job's writes go on, DDL on them waits). A lock request that waits is
//!    itself a queue head that blocks every later reader and writer of the
//!    table, which is why the wait is short and retried with backoff instead
//!    of long.
//! 2. With writers locked out, write a **fence** through the stream on a
//!    second session (a transactional logical message, see [`crate::fence`])
//!    and wait until every job involved has recorded an applied position past
//!    it. Nothing can commit to a source any more, so at that point each
//!    shadow holds exactly its source's rows. Meanwhile, on the locked
//!    session, the sources' columns and the catalog fingerprint are read
//!    again (step 3's checks): nothing they read can change from step 1 on.
//!    If this takes longer than the
//!    hold budget, roll back — the application gets its tables back — let the
//!    jobs catch up, back off, and try again.
//! 3. Lock the shadows (`ACCESS EXCLUSIVE`), check that no source table's columns changed since
//!    the job was planned, and check that the catalog is as it was when the
//!    swap was built (below); run the swap ([`crate::swap`]): rename each
//!    source out of the way and its shadow into place, and carry sequences,
//!    incoming foreign keys, views, grants, owner, row-level security,
//!    triggers, publications, replica identity, comments and index/constraint
//!    names across; then create the new tables' own foreign keys (`NOT
//!    VALID`, by their final names; see [`crate::ddl::foreign_keys`] for why
//!    only now).
//! 4. Record `cut_over` in the job rows **in the same transaction**, and
//!    commit.
//!
//! # Before the first attempt: the dependents gate
//!
//! The cutover first runs `plan`'s dependents trial on its own tables
//! ([`crate::plan::dependents::check`]: every object that depends on a
//! reference column re-created on a scratch copy with uuid columns, in a
//! transaction that is rolled back; no lock beyond `ACCESS SHARE` on what the
//! definitions read). Anything that blocks is refused with its reason and
//! fix before verify and before any lock; views and policies that compare a
//! reference column with an integer are refused unless `--rewrite-dependents`,
//! with which each attempt applies the behaviour-keeping definitions
//! ([`crate::plan::dependents::apply_rewrites`], the same pure function on
//! the same printed text as `plan`) to the dependents it read, before
//! building the swap. So a cutover does not meet, under its locks, a
//! dependent that the trial did not name.
//!
//! # Building the swap before the locks
//!
//! Reading what hangs off the tables (grants, triggers, policies, views,
//! incoming keys, …) is the slow part: a few dozen catalog queries, ~40 ms
//! for five tables on a busy two-core machine — most of the hold when it ran
//! under the locks. So each attempt reads them and builds every statement
//! *before* requesting any lock, after taking a catalog fingerprint
//! ([`crate::swap::catalog::fingerprint`]: every catalog row that read depends on,
//! with its `xmin`). Under the locks the fingerprint is taken again, in the
//! same round trip as the column check, while the jobs drain to the fence
//! (the locks of step 1 cover every table it describes: sources and
//! referencing tables and views in their locks, the shadows in `SHARE UPDATE
//! EXCLUSIVE`, which blocks DDL but not the job's writes). Equal: no transaction changed any of
//! that state since the read, so the statements are exactly what a read now
//! would produce, and they run as built. Different (DDL committed in
//! between, typically while the attempt waited for its locks): the attempt
//! rolls back and gives the locks back (outcome `catalog_changed`), the
//! sources' details are read again, and the next attempt builds the swap
//! anew. A stale build is never used, and the hold never includes the
//! catalog read. The new tables' foreign keys are created after the renames, on the
//! final names, so the read never has to account for keys that do not exist
//! yet, and `--dry-run` prints exactly the statements an attempt runs.
//!
//! # Keeping the hold short
//!
//! Every step under the locks is pipelined: statements that do not need an
//! earlier answer are sent together and the server runs them in the order
//! sent, so each group costs one round trip: the column re-check and the
//! fingerprint, sent while the fence is written and the drain polled on
//! other sessions (they overlap the drain instead of following it); the
//! shadows' lock; the swap statements with the new foreign keys, as **one**
//! simple-query message ([`crate::swap::execute_swap`]: the server pays no
//! per-message overhead, and the count of completed statements names a
//! failing one), followed by the job rows of all tables in one `UPDATE`
//! over arrays. Answers are checked in order and before `COMMIT`, so a
//! failure is attributed to its own statement and the transaction is rolled
//! back as before. The column re-check is one query over all sources (same fields as
//! [`crate::plan::catalog::load_table`] produces). The fence session is prepared once;
//! the fence is one exchange; the drain polls every millisecond while the
//! locks are held. The session that takes the locks runs the same catalog
//! queries before the lock, so its caches are warm. Each attempt reports
//! where the hold went ([`AttemptReport::phases`]).
//!
//! # Why the swap cannot lose a write
//!
//! Every write to a source either committed before the lock was granted — and
//! is then before the fence in commit order, so it was applied to the shadow
//! before the drain finished — or it is waiting on the lock. A statement
//! waiting on the lock resolves the table name again once it gets the lock,
//! which after the commit is the new table: it then either succeeds there or
//! fails (for example with a type error because it still sends an integer).
//! Nothing is written to the old table after the swap.
//!
//! # Never twice
//!
//! The phase change to `cut_over` commits atomically with the renames, so the
//! job rows and the catalog always agree. A new `cutover` (or a retry after a
//! connection dropped during COMMIT) reads the rows first and checks the
//! catalog — which relation holds the table's name — before doing anything.
//!
//! After commit, outside the lock: `VALIDATE CONSTRAINT` for every `NOT VALID`
//! foreign key, `ANALYZE` the new tables, and the `rewrite` processes see
//! `cut_over`, drop their slot and publication and exit. If a job's owner is
//! gone, `cutover` drops its slot and publication itself.
//!
//! # Where things are
//!
//! - this module: the options, the run loop (gates, attempts, give-up,
//!   after commit);
//! - `attempt`: one attempt — build the swap before the locks, then the
//!   [`crate::quiesce`] core (lock, fence, drain, give back) around the
//!   checks and the swap; and `--dry-run`'s statements;
//! - `targets`: the job rows and catalog details the attempts act on;
//! - [`gate`]: the lag gate, lock holders, the give-up summary;
//! - [`finish`]: validation and `ANALYZE` after commit;
//! - [`auto`]: `rewrite --cutover auto`;
//! - `report`: what is reported, outcomes as [`AttemptOutcome`].

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::Error;
use crate::pg::{self, ConnSpec, QualifiedName};
use crate::plan::model::ParentSpec;
use crate::quiesce;
use crate::state::{self, JobRow, Phase};

mod attempt;
mod auto;
pub mod finish;
pub mod gate;
mod report;
mod targets;

pub use auto::auto;
pub use report::{AttemptOutcome, AttemptReport, CutoverReport, PhaseTime};

use targets::Target;

/// A cutover's options.
#[derive(Debug, Clone)]
pub struct CutoverConfig {
    /// Where to connect.
    pub spec: ConnSpec,
    /// Tables to swap together.
    pub tables: Vec<QualifiedName>,
    /// How long one attempt waits for the locks.
    pub lock_timeout: Duration,
    /// Longest the locks may be held while draining.
    pub max_hold: Duration,
    /// Attempts before giving up.
    pub attempts: u32,
    /// First pause between attempts (doubles, capped at 10 s: see
    /// [`quiesce::backoff`]).
    pub backoff: Duration,
    /// Refuse to start an attempt while a job lags more than this.
    pub max_lag_bytes: u64,
    /// Wait up to this long for the lag to fall under `max_lag_bytes`
    /// instead of spending attempts on it (`None`: an attempt is spent).
    pub wait_for_lag: Option<Duration>,
    /// Hooks run before each attempt (a failure vetoes it) and at the end.
    pub hooks: crate::hooks::Hooks,
    /// Print the SQL instead of running it.
    pub dry_run: bool,
    /// Skip the verification before the swap.
    pub skip_verify: bool,
    /// Rows per verify chunk.
    pub verify_chunk_rows: u64,
    /// Re-create views and policies that compare a reference column with an
    /// integer with the behaviour-keeping definitions `plan` prints
    /// ([`crate::plan::dependents`]). Without it, cutover refuses up front
    /// when such objects exist.
    pub rewrite_dependents: bool,
    /// Keep a way back (`cutover --way-back`): the swap moves the old tables
    /// out of the job's publication and the new ones in, holds the old
    /// tables' foreign keys aside, and the job keeps each old table current
    /// from its new one until `rollback` or `finish` (see [`crate::way_back`]).
    pub way_back: bool,
    /// Which way the swap goes: a cutover, or a rollback.
    pub direction: Direction,
}

pub use crate::way_back::Direction;

/// Default `--attempts` of a cutover.
pub const DEFAULT_ATTEMPTS: u32 = 10;

/// Default `--max-lag-bytes` of a cutover.
pub const DEFAULT_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;

impl CutoverConfig {
    /// A cutover of `tables` with every default — the command line's
    /// (`cli::LockArgs`, checked against these by a test in `commands`): the
    /// lock budget of [`quiesce`], [`DEFAULT_ATTEMPTS`],
    /// [`DEFAULT_MAX_LAG_BYTES`], verify before the swap in chunks of
    /// [`crate::verify::DEFAULT_CHUNK_ROWS`], no hooks, no dry run.
    pub fn new(spec: ConnSpec, tables: Vec<QualifiedName>) -> CutoverConfig {
        CutoverConfig {
            spec,
            tables,
            lock_timeout: quiesce::DEFAULT_LOCK_TIMEOUT,
            max_hold: quiesce::DEFAULT_MAX_HOLD,
            attempts: DEFAULT_ATTEMPTS,
            backoff: quiesce::DEFAULT_BACKOFF,
            max_lag_bytes: DEFAULT_MAX_LAG_BYTES,
            wait_for_lag: None,
            hooks: Default::default(),
            dry_run: false,
            skip_verify: false,
            verify_chunk_rows: crate::verify::DEFAULT_CHUNK_ROWS,
            rewrite_dependents: false,
            way_back: false,
            direction: Direction::Forward,
        }
    }

    /// Refuse what no cutover can run with, before any session is opened.
    pub fn validate(&self) -> Result<(), Error> {
        if self.tables.is_empty() {
            return Err(Error::Config("cutover needs at least one --table".into()));
        }
        Ok(())
    }
}

/// Run a cutover. `Ok` with `swapped: false` means it gave up with the
/// sources untouched and still streaming.
pub async fn run(cfg: &CutoverConfig) -> Result<CutoverReport, Error> {
    cfg.validate()?;
    let admin = pg::connect_cutover(&cfg.spec, "cutover-admin").await?;
    let mut report = CutoverReport::default();
    let jobs = targets::load_jobs(&admin, &cfg.tables).await?;
    if cfg.direction == Direction::Back {
        if let Some(done) = targets::check_rollback(&admin, &jobs).await? {
            report.swapped = true;
            report.tables = done;
            info!("already rolled back: the original tables hold their names and the jobs stream forward");
            return Ok(report);
        }
    } else if jobs.iter().all(|j| j.phase() == Some(Phase::CutOver)) {
        // Already done (this or an earlier cutover): confirm with the catalog, report, stop.
        for j in &jobs {
            targets::confirm_swapped_in_catalog(&admin, j).await?;
            report
                .tables
                .push((j.table.clone(), j.old_table.clone().unwrap_or_default()));
        }
        report.swapped = true;
        // A cutover cut off after its commit left validation or ANALYZE
        // undone: finish it now.
        let tables: Vec<QualifiedName> = jobs.iter().map(|j| j.source.clone()).collect();
        let pending = finish::pending(&admin, &tables).await?;
        if pending.is_empty() || cfg.dry_run {
            info!("already cut over; nothing to do");
        } else {
            info!(
                constraints = pending.constraints.len(),
                tables = pending.analyze.len(),
                "already cut over; completing the validation and ANALYZE left pending"
            );
            report.warnings = finish::complete(&admin, &pending).await;
        }
        return Ok(report);
    }
    if cfg.direction == Direction::Back {
        // Checked by `check_rollback`.
    } else if let Some(j) = jobs.iter().find(|j| j.phase() == Some(Phase::CutOver)) {
        return Err(Error::Config(format!(
            "{} is already cut over but other named tables are not; run cutover for the remaining tables only",
            j.table
        )));
    }
    if cfg.way_back && cfg.direction == Direction::Forward {
        if let Some(j) = jobs.iter().find(|j| j.spec.is_none()) {
            return Err(Error::Precondition(format!(
                "the job of {} was started by an older pg-rekey that does not record the table's spec, which a way back needs to be served again after a restart; cut over without --way-back, or abort and start the rewrite again",
                j.table
            )));
        }
    }
    for j in jobs.iter().filter(|_| cfg.direction == Direction::Forward) {
        match j.phase() {
            Some(Phase::Streaming) | Some(Phase::CuttingOver) => {}
            _ => {
                return Err(Error::Precondition(format!(
                    "{} is {} — cutover needs every job streaming{}",
                    j.table,
                    j.phase,
                    j.error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                )))
            }
        }
    }
    // Nobody would apply the fence: say so instead of timing out.
    for j in &jobs {
        if !crate::resume::owner_alive(&admin, j.job_id).await? {
            let members: Vec<JobRow> = state::list_jobs(&admin)
                .await?
                .into_iter()
                .filter(|m| m.job_id == j.job_id)
                .collect();
            return Err(Error::Precondition(format!(
                "the rewrite of {} is not running (its process is gone), so nothing would apply the {}'s fence; resume it first: {}{}",
                j.table,
                match cfg.direction {
                    Direction::Forward => "cutover",
                    Direction::Back => "rollback",
                },
                crate::resume::resume_command(&members),
                j.error
                    .as_ref()
                    .map(|e| format!(" (it stopped with: {e})"))
                    .unwrap_or_default()
            )));
        }
    }
    // "A cutover is running" for `status` and a resuming `rewrite`: a shared
    // session lock, released by the server if this process dies.
    for j in &jobs {
        crate::resume::lock_shared(&admin, crate::resume::cutover_key(j.job_id)).await?;
    }
    let mut targets = match cfg.direction {
        Direction::Forward => targets::load_targets(&admin, jobs).await?,
        Direction::Back => targets::load_back_targets(&admin, jobs).await?,
    };
    let parent = targets::load_parent_of(&admin, &targets).await?;
    if cfg.direction == Direction::Forward {
        targets::dependents_gate(cfg, &targets, &parent).await?;
    }

    if cfg.dry_run {
        report.dry_run_sql = attempt::dry_run_sql(&admin, cfg, &targets, &parent).await?;
        return Ok(report);
    }

    // A rollback's fence drain is its equality argument; `verify` compares
    // sources with shadows by the forward rule only.
    if !cfg.skip_verify && cfg.direction == Direction::Forward {
        let opts = crate::verify::RunOptions {
            compare: crate::verify::VerifyOptions {
                chunk_rows: cfg.verify_chunk_rows.max(1),
                ..Default::default()
            },
            lock_timeout: cfg.lock_timeout,
            max_hold: cfg.max_hold,
            ..Default::default()
        };
        // The targets just loaded, in the order named (the report's order).
        let loaded = cfg
            .tables
            .iter()
            .filter_map(|t| targets.iter().find(|x| x.job.source == *t))
            .map(|x| crate::verify::LoadedTable {
                job: x.job.clone(),
                parent: parent.clone(),
                spec: x.detail.spec.clone(),
            })
            .collect();
        let verdict = crate::verify::run_loaded(&cfg.spec, loaded, &opts).await?;
        if !verdict.equal {
            report.reason = Some(format!(
                "verify found differences; nothing was swapped:\n{verdict}"
            ));
            return Ok(report);
        }
        info!(
            tables = cfg.tables.len(),
            "verified: every shadow equals its translated source"
        );
    }

    for t in targets
        .iter()
        .filter(|_| cfg.direction == Direction::Forward)
    {
        let _ = state::set_phase(&admin, &t.job.source, Phase::CuttingOver).await;
    }
    let fence_session = pg::connect_cutover(&cfg.spec, "cutover-fence").await?;
    crate::fence::prepare(&fence_session).await?;
    let job_ids: Vec<Uuid> = {
        let mut ids: Vec<Uuid> = targets.iter().map(|t| t.job.job_id).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let lag_deadline = cfg.wait_for_lag.map(|w| Instant::now() + w);
    let mut last_lag = None;
    let mut holders = Vec::new();
    for attempt in 1..=cfg.attempts.max(1) {
        // Gate: small lag, or the drain under the lock would be long. With
        // --wait-for-lag, wait for it (within one deadline for the whole
        // cutover) instead of spending the attempt.
        let mut lag = gate::max_lag(&admin, &job_ids).await?;
        if lag > cfg.max_lag_bytes {
            if let Some(deadline) = lag_deadline {
                lag = gate::wait_for_lag(
                    &admin,
                    &job_ids,
                    cfg.max_lag_bytes,
                    deadline,
                    Duration::from_millis(500),
                )
                .await?;
            }
        }
        last_lag = Some(lag);
        if lag > cfg.max_lag_bytes {
            let r = AttemptReport::not_started(attempt, AttemptOutcome::LagAboveLimit);
            warn!(
                attempt,
                lag = %crate::units::format_bytes(lag),
                max_lag = %crate::units::format_bytes(cfg.max_lag_bytes),
                "not attempting: the jobs are too far behind"
            );
            report.attempts.push(r);
            if lag_deadline.is_some() {
                // The wait is over and the lag is still high: more attempts
                // would only spend themselves the same way.
                break;
            }
        } else if let Some(veto) = before_cutover_hook(cfg, &job_ids, attempt, lag).await {
            report.attempts.push(veto);
        } else {
            let session = pg::connect_cutover(&cfg.spec, "cutover-lock").await?;
            let r = attempt::attempt_once(
                cfg,
                &session,
                &fence_session,
                &admin,
                &targets,
                &parent,
                &job_ids,
                attempt,
            )
            .await;
            match r {
                Ok(mut a) => {
                    if a.outcome == AttemptOutcome::LockTimeout {
                        a.lock_holders =
                            gate::lock_holders(&admin, &lock_relations(&targets, &parent))
                                .await
                                .unwrap_or_default();
                        holders = a.lock_holders.clone();
                        for h in &a.lock_holders {
                            warn!(attempt, holder = %h, "lock held by another session");
                        }
                    }
                    let swapped = a.outcome.is_swapped();
                    info!(
                        attempt,
                        lock_wait_ms = a.lock_wait_ms,
                        lock_hold_ms = a.lock_hold_ms.unwrap_or(0.0),
                        outcome = %a.outcome,
                        "cutover attempt"
                    );
                    let changed = a.outcome == AttemptOutcome::CatalogChanged;
                    if !swapped {
                        attempt_failed_hook(cfg, &a).await;
                    }
                    report.attempts.push(a);
                    if swapped {
                        report.swapped = true;
                        break;
                    }
                    if changed {
                        if let Err(e) =
                            targets::refresh_details(&admin, &mut targets, &parent).await
                        {
                            back_to_streaming(&admin, &targets, cfg.direction).await;
                            return Err(e);
                        }
                    }
                }
                Err((a, e)) => {
                    report.attempts.push(a);
                    if !e.is_transient() {
                        back_to_streaming(&admin, &targets, cfg.direction).await;
                        return Err(e);
                    }
                    warn!(attempt, error = %crate::error::chain(&e), "cutover attempt failed; retrying");
                }
            }
        }
        if attempt < cfg.attempts {
            tokio::time::sleep(quiesce::backoff(cfg.backoff, attempt)).await;
        }
    }
    if !report.swapped {
        back_to_streaming(&admin, &targets, cfg.direction).await;
        let outcomes: Vec<&str> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
        report.reason = Some(gate::give_up_reason(
            &outcomes,
            &holders,
            cfg.max_lag_bytes,
            last_lag,
        ));
        if cfg.hooks.any() {
            let facts = crate::hooks::Facts {
                outcome: report.attempts.last().map(|a| a.outcome.to_string()),
                error: report.reason.clone(),
                ..crate::hooks::Facts::tables(&cfg.tables)
            };
            cfg.hooks
                .run(crate::hooks::Event::CutoverGaveUp, &facts)
                .await;
        }
        return Ok(report);
    }
    for t in &targets {
        report.tables.push((
            t.job.table.clone(),
            QualifiedName::new(t.job.source.schema.clone(), t.names.old_table.clone()).to_string(),
        ));
    }
    after_commit(&admin, &targets, cfg, &mut report).await;
    if cfg.hooks.any() {
        let facts = crate::hooks::Facts {
            job_id: Some(
                job_ids
                    .iter()
                    .map(|j| j.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            attempt: report.attempts.last().map(|a| a.attempt),
            outcome: Some("swapped".into()),
            old_tables: report.tables.iter().map(|(_, o)| o.clone()).collect(),
            ..crate::hooks::Facts::tables(&cfg.tables)
        };
        cfg.hooks.run(crate::hooks::Event::Swapped, &facts).await;
    }
    Ok(report)
}

/// The cutover is over without a swap: the jobs go back from `cutting_over`
/// to `streaming` (best effort: a job row that cannot be written stays
/// `cutting_over`, which `status` shows and a next cutover accepts).
async fn back_to_streaming(admin: &Client, targets: &[Target], direction: Direction) {
    if direction == Direction::Back {
        // A rollback that did not swap leaves the rows `cut_over`.
        return;
    }
    for t in targets {
        let _ = state::set_phase(admin, &t.job.source, Phase::Streaming).await;
    }
}

/// Run the `before-cutover` hooks; `Some(report)` when one failed and so
/// vetoed this attempt.
async fn before_cutover_hook(
    cfg: &CutoverConfig,
    job_ids: &[Uuid],
    attempt: u32,
    lag: u64,
) -> Option<AttemptReport> {
    if !cfg.hooks.any() {
        return None;
    }
    let facts = crate::hooks::Facts {
        job_id: Some(
            job_ids
                .iter()
                .map(|j| j.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        attempt: Some(attempt),
        lag_bytes: Some(lag),
        ..crate::hooks::Facts::tables(&cfg.tables)
    };
    let failures = cfg
        .hooks
        .run(crate::hooks::Event::BeforeCutover, &facts)
        .await;
    let first = failures.first()?;
    warn!(
        attempt,
        "the before-cutover hook vetoed the attempt: {first}"
    );
    Some(AttemptReport::not_started(
        attempt,
        AttemptOutcome::VetoedByHook,
    ))
}

/// Run the `cutover-attempt-failed` hooks (failures are only logged).
async fn attempt_failed_hook(cfg: &CutoverConfig, a: &AttemptReport) {
    if cfg.hooks.any() {
        let facts = crate::hooks::Facts {
            attempt: Some(a.attempt),
            outcome: Some(a.outcome.to_string()),
            ..crate::hooks::Facts::tables(&cfg.tables)
        };
        cfg.hooks
            .run(crate::hooks::Event::CutoverAttemptFailed, &facts)
            .await;
    }
}

/// Validate the `NOT VALID` keys, analyze, and see the slots go.
async fn after_commit(
    admin: &Client,
    targets: &[Target],
    cfg: &CutoverConfig,
    report: &mut CutoverReport,
) {
    let new_tables: Vec<QualifiedName> = targets.iter().map(|t| t.job.source.clone()).collect();
    // Every constraint validated and every table analyzed, each on its own
    // (one that fails does not skip the others); see `cutover_finish`.
    match finish::not_valid_constraints(admin, &new_tables).await {
        Ok(constraints) => {
            let pending = finish::Pending {
                constraints,
                // The restored tables of a rollback keep their statistics.
                analyze: match cfg.direction {
                    Direction::Forward => new_tables.clone(),
                    Direction::Back => Vec::new(),
                },
            };
            let warnings = finish::complete(admin, &pending).await;
            report.warnings.extend(warnings);
        }
        Err(e) => report.warnings.push(format!(
            "could not list constraints to validate: {e}; run `pg-rekey cutover` for these tables again to finish"
        )),
    }
    if cfg.way_back || cfg.direction == Direction::Back {
        // The job keeps its slot: it serves the way back (or, after a
        // rollback, the forward stream again).
        return;
    }
    // The rewrite processes see cut_over and drop their slots; a job whose
    // owner is gone is cleaned here.
    let mut slots: Vec<(String, Option<String>, Uuid)> = targets
        .iter()
        .filter_map(|t| {
            t.job
                .slot_name
                .clone()
                .map(|s| (s, t.job.publication_name.clone(), t.job.job_id))
        })
        .collect();
    slots.sort();
    slots.dedup();
    for (slot, publication, job_id) in slots {
        // Only when every table of that job is cut over.
        let all_cut = match state::list_jobs(admin).await {
            Ok(rows) => rows
                .iter()
                .filter(|r| r.job_id == job_id)
                .all(|r| r.phase() == Some(Phase::CutOver)),
            Err(_) => false,
        };
        if !all_cut {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = admin
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await;
            match row {
                Ok(None) => break,
                Ok(Some(r)) if !r.get::<_, bool>(0) || Instant::now() >= deadline => {
                    crate::abort::drop_slot(admin, &slot).await;
                    if let Some(p) = &publication {
                        crate::abort::drop_publication(admin, p).await;
                    }
                    break;
                }
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => break,
            }
        }
    }
}

/// The relations whose locks an attempt waits for (the sources and the
/// parent), to name who holds them after a lock timeout.
fn lock_relations(targets: &[Target], parent: &ParentSpec) -> Vec<u32> {
    let mut oids: Vec<u32> = targets.iter().map(|t| t.job.source_oid).collect();
    oids.push(parent.oid);
    oids
}
