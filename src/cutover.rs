//! `cutover`: swap shadows into place in one short, bounded, locked
//! transaction.
//!
//! # One attempt
//!
//! 1. `BEGIN; SET LOCAL lock_timeout = <per attempt>`, take `SHARE ROW
//!    EXCLUSIVE` on the tables the shadows' foreign keys will reference (the
//!    parent; see `referenced_first` for why first), then `ACCESS EXCLUSIVE`
//!    on every source table, each in a fixed (sorted) order so two cutovers
//!    can never deadlock each other. A lock request that waits is
//!    itself a queue head that blocks every later reader and writer of the
//!    table, which is why the wait is short and retried with backoff instead
//!    of long.
//! 2. With writers locked out, write a **fence** through the stream on a
//!    second session (a transactional logical message, see [`crate::fence`])
//!    and wait until every job involved has recorded an applied position past
//!    it. Nothing can commit to a source any more, so at that point each
//!    shadow holds exactly its source's rows. If this takes longer than the
//!    hold budget, roll back — the application gets its tables back — let the
//!    jobs catch up, back off, and try again.
//! 3. Lock the shadows, check that no source table's columns changed since
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
//! ([`swap::catalog::fingerprint`]: every catalog row that read depends on,
//! with its `xmin`). Under the locks the fingerprint is taken again, in the
//! same round trip as the column check. Equal: no transaction changed any of
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
//! sent, so each group costs one round trip (lock the shadows + column
//! re-check + fingerprint; swap statements + foreign keys + job rows).
//! Answers are checked in order and before `COMMIT`, so a failure is
//! attributed to its own statement and the transaction is rolled back as
//! before. The column re-check is one query over all sources (same fields as
//! [`catalog::load_table`] produces). The fence session is prepared once;
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

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::Error;
use crate::pg::{self, ConnSpec, QualifiedName};
use crate::plan::catalog::{self, TableDetail};
use crate::plan::model::{ColumnSpec, IntKind, ParentSpec};
use crate::quiesce;
use crate::state::{self, JobRow, Phase};
use crate::swap::{self, SwapNames, SwapSql};

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
}

/// What one attempt did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptReport {
    /// 1-based.
    pub attempt: u32,
    /// Time spent waiting for the locks, ms.
    pub lock_wait_ms: f64,
    /// Time the locks were held, ms (absent when they were never granted).
    pub lock_hold_ms: Option<f64>,
    /// `swapped`, `lock_timeout`, `drain_timeout`, `catalog_changed` (DDL
    /// committed after the swap was built; rolled back), or an error.
    pub outcome: String,
    /// Where the hold went, step by step, in order (empty when the locks
    /// were never granted).
    pub phases: Vec<PhaseTime>,
    /// On a lock timeout: the sessions that held locks on the tables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lock_holders: Vec<crate::cutover_gate::LockHolder>,
}

/// Time one step of an attempt took while the locks were held.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseTime {
    /// The step: `fence` (written), `drain` (every job applied past it),
    /// `checks` (shadows locked, columns and catalog fingerprint re-read),
    /// `swap_and_state` (swap statements, new foreign keys, job rows),
    /// `commit`.
    pub phase: &'static str,
    /// Milliseconds.
    pub ms: f64,
}

/// Splits the hold into [`PhaseTime`]s.
struct Phases {
    last: Instant,
    list: Vec<PhaseTime>,
}

impl Phases {
    fn new(start: Instant) -> Phases {
        Phases {
            last: start,
            list: Vec::new(),
        }
    }

    /// Close the current step under `phase`.
    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.list.push(PhaseTime {
            phase,
            ms: ms(now - self.last),
        });
        tracing::debug!(phase, ms = ms(now - self.last), "cutover step");
        self.last = now;
    }
}

/// The result of a cutover.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CutoverReport {
    /// Whether the swap committed (now or earlier).
    pub swapped: bool,
    /// `(table, old table)` for each swapped table.
    pub tables: Vec<(String, String)>,
    /// Every attempt.
    pub attempts: Vec<AttemptReport>,
    /// Why it gave up, when it did.
    pub reason: Option<String>,
    /// The SQL a dry run would execute.
    pub dry_run_sql: Vec<String>,
    /// Problems after commit (a constraint that did not validate…); the swap stands.
    pub warnings: Vec<String>,
}

struct Target {
    job: JobRow,
    detail: TableDetail,
    names: SwapNames,
}

/// Run a cutover. `Ok` with `swapped: false` means it gave up with the
/// sources untouched and still streaming.
pub async fn run(cfg: &CutoverConfig) -> Result<CutoverReport, Error> {
    if cfg.tables.is_empty() {
        return Err(Error::Config("cutover needs at least one --table".into()));
    }
    let admin = pg::connect_cutover(&cfg.spec, "cutover-admin").await?;
    let mut report = CutoverReport {
        swapped: false,
        tables: vec![],
        attempts: vec![],
        reason: None,
        dry_run_sql: vec![],
        warnings: vec![],
    };
    let jobs = load_jobs(&admin, &cfg.tables).await?;

    // Already done (this or an earlier cutover): confirm with the catalog, report, stop.
    if jobs.iter().all(|j| j.phase() == Some(Phase::CutOver)) {
        for j in &jobs {
            confirm_swapped_in_catalog(&admin, j).await?;
            report
                .tables
                .push((j.table.clone(), j.old_table.clone().unwrap_or_default()));
        }
        report.swapped = true;
        // A cutover cut off after its commit left validation or ANALYZE
        // undone: finish it now.
        let tables: Vec<QualifiedName> = jobs.iter().map(|j| j.source.clone()).collect();
        let pending = crate::cutover_finish::pending(&admin, &tables).await?;
        if pending.is_empty() || cfg.dry_run {
            info!("already cut over; nothing to do");
        } else {
            info!(
                constraints = pending.constraints.len(),
                tables = pending.analyze.len(),
                "already cut over; completing the validation and ANALYZE left pending"
            );
            report.warnings = crate::cutover_finish::complete(&admin, &pending).await;
        }
        return Ok(report);
    }
    if let Some(j) = jobs.iter().find(|j| j.phase() == Some(Phase::CutOver)) {
        return Err(Error::Config(format!(
            "{} is already cut over but other named tables are not; run cutover for the remaining tables only",
            j.table
        )));
    }
    for j in &jobs {
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
                "the rewrite of {} is not running (its process is gone), so nothing would apply the cutover's fence; resume it first: {}",
                j.table,
                crate::resume::resume_command(&members)
            )));
        }
    }
    // "A cutover is running" for `status` and a resuming `rewrite`: a shared
    // session lock, released by the server if this process dies.
    for j in &jobs {
        crate::resume::lock_shared(&admin, crate::resume::cutover_key(j.job_id)).await?;
    }
    let mut targets = load_targets(&admin, jobs).await?;
    let parent = load_parent_of(&admin, &targets).await?;
    dependents_gate(cfg, &targets, &parent).await?;

    if cfg.dry_run {
        report.dry_run_sql = dry_run_sql(&admin, cfg, &targets, &parent).await?;
        return Ok(report);
    }

    if !cfg.skip_verify {
        let opts = crate::verify::RunOptions {
            compare: crate::verify::VerifyOptions {
                chunk_rows: cfg.verify_chunk_rows.max(1),
                ..Default::default()
            },
            lock_timeout: cfg.lock_timeout,
            max_hold: cfg.max_hold,
            ..Default::default()
        };
        let verdict = crate::verify::run(&cfg.spec, &cfg.tables, &opts).await?;
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

    for t in &targets {
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
        let mut lag = crate::cutover_gate::max_lag(&admin, &job_ids).await?;
        if lag > cfg.max_lag_bytes {
            if let Some(deadline) = lag_deadline {
                lag = crate::cutover_gate::wait_for_lag(
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
            let r = AttemptReport {
                attempt,
                lock_wait_ms: 0.0,
                lock_hold_ms: None,
                outcome: crate::cutover_gate::LAG_ABOVE_LIMIT.into(),
                phases: vec![],
                lock_holders: vec![],
            };
            warn!(
                attempt,
                lag = %crate::progress::format_bytes(lag),
                max_lag = %crate::progress::format_bytes(cfg.max_lag_bytes),
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
            let r = attempt_once(
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
                    if a.outcome == "lock_timeout" {
                        a.lock_holders = crate::cutover_gate::lock_holders(
                            &admin,
                            &lock_relations(&targets, &parent),
                        )
                        .await
                        .unwrap_or_default();
                        holders = a.lock_holders.clone();
                        for h in &a.lock_holders {
                            warn!(attempt, holder = %h, "lock held by another session");
                        }
                    }
                    let swapped = a.outcome == "swapped";
                    info!(
                        attempt,
                        lock_wait_ms = a.lock_wait_ms,
                        lock_hold_ms = a.lock_hold_ms.unwrap_or(0.0),
                        outcome = %a.outcome,
                        "cutover attempt"
                    );
                    let changed = a.outcome == CATALOG_CHANGED;
                    if !swapped {
                        attempt_failed_hook(cfg, &a).await;
                    }
                    report.attempts.push(a);
                    if swapped {
                        report.swapped = true;
                        break;
                    }
                    if changed {
                        if let Err(e) = refresh_details(&admin, &mut targets, &parent).await {
                            for t in &targets {
                                let _ =
                                    state::set_phase(&admin, &t.job.source, Phase::Streaming).await;
                            }
                            return Err(e);
                        }
                    }
                }
                Err((a, e)) => {
                    report.attempts.push(a);
                    if !e.is_transient() {
                        for t in &targets {
                            let _ = state::set_phase(&admin, &t.job.source, Phase::Streaming).await;
                        }
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
        for t in &targets {
            let _ = state::set_phase(&admin, &t.job.source, Phase::Streaming).await;
        }
        let outcomes: Vec<&str> = report.attempts.iter().map(|a| a.outcome.as_str()).collect();
        report.reason = Some(crate::cutover_gate::give_up_reason(
            &outcomes,
            &holders,
            cfg.max_lag_bytes,
            last_lag,
        ));
        if cfg.hooks.any() {
            let facts = crate::hooks::Facts {
                outcome: report.attempts.last().map(|a| a.outcome.clone()),
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
    after_commit(&admin, &targets, &mut report).await;
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
    Some(AttemptReport {
        attempt,
        lock_wait_ms: 0.0,
        lock_hold_ms: None,
        outcome: crate::cutover_gate::VETOED_BY_HOOK.into(),
        phases: vec![],
        lock_holders: vec![],
    })
}

/// Run the `cutover-attempt-failed` hooks (failures are only logged).
async fn attempt_failed_hook(cfg: &CutoverConfig, a: &AttemptReport) {
    if cfg.hooks.any() {
        let facts = crate::hooks::Facts {
            attempt: Some(a.attempt),
            outcome: Some(a.outcome.clone()),
            ..crate::hooks::Facts::tables(&cfg.tables)
        };
        cfg.hooks
            .run(crate::hooks::Event::CutoverAttemptFailed, &facts)
            .await;
    }
}

async fn load_jobs(admin: &Client, tables: &[QualifiedName]) -> Result<Vec<JobRow>, Error> {
    let mut jobs = Vec::with_capacity(tables.len());
    for t in tables {
        match state::get_job(admin, t).await? {
            Some(j) => jobs.push(j),
            None => {
                return Err(Error::Config(format!(
                    "{t} has no pg-rekey job; start one with `pg-rekey rewrite --table {t}` and cut over once it streams"
                )))
            }
        }
    }
    Ok(jobs)
}

async fn load_targets(admin: &Client, jobs: Vec<JobRow>) -> Result<Vec<Target>, Error> {
    let mut targets = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (parent_table, uuid_column) = job.parent.clone().ok_or_else(|| {
            Error::Precondition(format!(
                "the job of {} does not record its parent table; abort and restart it",
                job.table
            ))
        })?;
        let parent = catalog::load_parent(admin, &parent_table, &uuid_column).await?;
        let detail = catalog::load_table(admin, &job.source, &parent).await?;
        let names = SwapNames::derive(&job.source);
        targets.push(Target { job, detail, names });
    }
    // Fixed lock order.
    targets.sort_by(|a, b| a.job.source.cmp(&b.job.source));
    Ok(targets)
}

/// After an attempt found the catalog changed: read each source's detail
/// again (its own foreign keys, created on the new table at the swap, may
/// have changed), keeping the check that its columns did not.
async fn refresh_details(
    admin: &Client,
    targets: &mut [Target],
    parent: &ParentSpec,
) -> Result<(), Error> {
    for t in targets.iter_mut() {
        let fresh = catalog::load_table(admin, &t.job.source, parent).await?;
        if fresh.spec.oid != t.detail.spec.oid || fresh.spec.columns != t.detail.spec.columns {
            return Err(columns_changed(&t.job.source));
        }
        t.detail = fresh;
    }
    Ok(())
}

fn columns_changed(table: &QualifiedName) -> Error {
    Error::Data(format!(
        "the columns of {table} changed since the job was planned; abort the job and start again"
    ))
}

async fn load_parent_of(admin: &Client, targets: &[Target]) -> Result<ParentSpec, Error> {
    let first = targets
        .first()
        .ok_or_else(|| Error::Config("no tables".into()))?;
    let (table, uuid) = first
        .job
        .parent
        .clone()
        .ok_or_else(|| Error::Precondition("job without a parent".into()))?;
    if targets
        .iter()
        .any(|t| t.job.parent.as_ref().map(|p| &p.0) != Some(&table))
    {
        return Err(Error::Config(
            "the named tables reference different parent tables; cut them over separately".into(),
        ));
    }
    Ok(catalog::load_parent(admin, &table, &uuid).await?)
}

/// The statements of the swap transaction, for `--dry-run` (catalog reads
/// only; nothing changes and no application table is locked).
async fn dry_run_sql(
    admin: &Client,
    cfg: &CutoverConfig,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<Vec<String>, Error> {
    let mut out = vec![
        "BEGIN".to_string(),
        format!("SET LOCAL lock_timeout = '{}ms'", cfg.lock_timeout.as_millis()),
        lock_statements(admin, targets, parent).await?,
        "-- on a second session: SELECT pg_logical_emit_message(true, 'pg_rekey.fence', '<token>'); then wait until every job applied past it".into(),
        format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", targets.iter().map(|t| t.job.shadow.quoted()).collect::<Vec<_>>().join(", ")),
    ];
    // Read-only: a dry run takes no lock on an application table. The
    // statements are the ones a real attempt runs under its locks when the
    // catalog has not changed since they were built.
    let swap = read_and_build(admin, targets, parent, true, cfg.rewrite_dependents).await?;
    out.extend(swap.sql());
    for t in targets {
        out.push(format!(
            "UPDATE pgrekey.jobs SET phase = 'cut_over', old_table = {} WHERE source_schema = {} AND source_table = {}",
            crate::pg::quote_literal(&t.names.old_table),
            crate::pg::quote_literal(&t.job.source.schema),
            crate::pg::quote_literal(&t.job.source.name)
        ));
    }
    out.push("COMMIT".into());
    out.push("-- after commit, outside the lock:".into());
    for v in &swap.validate {
        out.push(format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            v.table.quoted(),
            crate::pg::quote_ident(&v.name)
        ));
    }
    for a in &swap.analyze {
        out.push(format!("ANALYZE {}", a.quoted()));
    }
    Ok(out)
}

fn pairs(targets: &[Target]) -> Vec<(QualifiedName, QualifiedName)> {
    targets
        .iter()
        .map(|t| (t.job.source.clone(), t.job.shadow.clone()))
        .collect()
}

/// The swap built before the locks, and the catalog fingerprint taken just
/// before the read it was built from (see [`swap::catalog::fingerprint`]).
struct Prepared {
    fingerprint: String,
    swap: SwapSql,
}

/// Fingerprint the catalog, then read the dependents and build the swap —
/// in that order, so that an unchanged fingerprint later proves the read
/// current. Run before the locks; it also warms the session's catalog caches
/// for the same reads under the locks.
async fn prepare(
    c: &Client,
    fingerprinter: &swap::catalog::Fingerprinter,
    targets: &[Target],
    parent: &ParentSpec,
    report: bool,
    rewrite: bool,
) -> Result<Prepared, Error> {
    let fingerprint = fingerprinter
        .take(c, &pairs(targets))
        .await
        .map_err(Error::db("fingerprint the catalog"))?;
    let swap = read_and_build(c, targets, parent, report, rewrite).await?;
    Ok(Prepared { fingerprint, swap })
}

/// Read the dependents and build every statement of the locked part of the
/// swap ([`swap_plan`]); with `report`, warn about source indexes and
/// constraints that have no counterpart on the shadow (they stay on the old
/// table).
async fn read_and_build(
    c: &Client,
    targets: &[Target],
    parent: &ParentSpec,
    report: bool,
    rewrite: bool,
) -> Result<SwapSql, Error> {
    let mut deps = swap::catalog::load_dependents_many(c, &pairs(targets))
        .await
        .map_err(swap_err)?;
    if rewrite {
        let details: Vec<&TableDetail> = targets.iter().map(|t| &t.detail).collect();
        let ctx = crate::plan::dependents::rewrite_context(&details, parent);
        let changed = crate::plan::dependents::apply_rewrites(&mut deps, &ctx);
        if report && !changed.is_empty() {
            info!(objects = ?changed, "re-created with definitions that compare in uuid terms (--rewrite-dependents)");
        }
    }
    if report {
        for (d, t) in deps.iter().zip(targets) {
            let unmatched: Vec<&String> = d
                .unmatched
                .iter()
                .filter(|u| !t.detail.foreign_keys.iter().any(|fk| &fk.name == *u))
                .collect();
            if !unmatched.is_empty() {
                warn!(table = %t.job.source, objects = %unmatched.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", "),
                    "source indexes/constraints without a counterpart on the shadow stay on the old table");
            }
        }
    }
    Ok(swap_plan(targets, parent, &deps))
}

/// Refuse up front — before verify, before any lock — what the swap would
/// fail at or would change without being asked: the same per-object trial
/// `plan` runs ([`crate::plan::dependents::check`]), on a separate session
/// in a transaction that is rolled back. Any dependent that blocks is
/// refused with its reason and fix; views and policies that need the
/// behaviour-keeping rewrite are refused unless `--rewrite-dependents`.
/// The trial runs on this cutover's tables, so a cutover never meets a
/// breaker that this check (and `plan`) did not name.
async fn dependents_gate(
    cfg: &CutoverConfig,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<(), Error> {
    use crate::plan::dependents::{self, Verdict};
    let mut c = pg::connect(&cfg.spec, "cutover-dependents").await?;
    let details: Vec<&TableDetail> = targets.iter().map(|t| &t.detail).collect();
    let found = dependents::check(&mut c, &details, parent).await?;
    let blocking: Vec<String> = found
        .iter()
        .filter(|d| matches!(d.verdict, Verdict::Blocks { .. }))
        .map(|d| format!("{} {d}", d.kind))
        .collect();
    if !blocking.is_empty() {
        return Err(Error::Blocked(format!(
            "nothing was swapped: {} object(s) depending on the reference columns would break the swap — {}; `pg-rekey plan` lists them with the same fixes",
            blocking.len(),
            blocking.join(" | ")
        )));
    }
    let rewrites: Vec<String> = found
        .iter()
        .filter(|d| dependents::needs_rewrite(d))
        .map(|d| format!("{} {d}", d.kind))
        .collect();
    if !rewrites.is_empty() && !cfg.rewrite_dependents {
        return Err(Error::Blocked(format!(
            "nothing was swapped: {} view(s)/policy(ies) compare a reference column with an integer and would fail on uuid — {}; run cutover with --rewrite-dependents to re-create them with these definitions (same rows after the swap), or change them yourself first",
            rewrites.len(),
            rewrites.join(" | ")
        )));
    }
    Ok(())
}

/// The statements of the locked part, in order: the swap proper
/// ([`swap::swap_sql_many`]), then the new tables' foreign keys (`NOT
/// VALID`, by the names the sources' keys have, on the new tables by their
/// final names; see [`crate::ddl::foreign_keys_on`]) with the sources' comments
/// on them. Each key is validated after commit.
fn swap_plan(targets: &[Target], parent: &ParentSpec, deps: &[swap::Dependents]) -> SwapSql {
    let pairs: Vec<(&swap::Dependents, &SwapNames)> =
        deps.iter().zip(targets.iter().map(|t| &t.names)).collect();
    let mut sql = swap::swap_sql_many(&pairs);
    for (t, d) in targets.iter().zip(deps) {
        let table = &t.job.source;
        let statements = crate::ddl::foreign_keys_on(&t.detail, parent, table);
        for (fk, statement) in t.detail.foreign_keys.iter().zip(statements) {
            let object = format!("foreign key {} on {table}", fk.name);
            sql.steps.push(swap::SwapStep {
                sql: statement,
                object: object.clone(),
            });
            if let Some((_, comment)) = d.constraint_comments.iter().find(|(n, _)| *n == fk.name) {
                sql.steps.push(swap::SwapStep {
                    sql: format!(
                        "COMMENT ON CONSTRAINT {} ON {} IS {}",
                        crate::pg::quote_ident(&fk.name),
                        table.quoted(),
                        crate::pg::quote_literal(comment)
                    ),
                    object,
                });
            }
            sql.validate.push(swap::ValidateConstraint {
                table: table.clone(),
                name: fk.name.clone(),
            });
        }
    }
    sql
}

/// The sources' columns as the catalog has them now, in one query for all
/// targets, in the shape of [`ColumnSpec`] and built the way
/// [`catalog::load_table`] builds them (type text from `format_type` with an
/// empty `search_path`; a column is a reference when a single-column foreign
/// key ties it to the parent's key column). Returns `(oid, columns)` per
/// target, in target order; a table that is gone has no entry.
async fn current_columns<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<Vec<(usize, u32, Vec<ColumnSpec>)>, Error> {
    let schemas: Vec<&str> = targets
        .iter()
        .map(|t| t.job.source.schema.as_str())
        .collect();
    let names: Vec<&str> = targets.iter().map(|t| t.job.source.name.as_str()).collect();
    let rows = c
        .query_typed(
            CURRENT_COLUMNS_SQL,
            &[
                (&schemas, Type::TEXT_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&parent.oid, Type::OID),
                (&parent.key_column, Type::TEXT),
            ],
        )
        .await
        .map_err(Error::db("re-read the source tables' columns"))?;
    let mut out: Vec<(usize, u32, Vec<ColumnSpec>)> = Vec::new();
    for r in rows {
        let ord: i64 = r.get(0);
        let idx = usize::try_from(ord - 1).unwrap_or(usize::MAX);
        let oid: u32 = r.get(1);
        let type_oid: u32 = r.get(4);
        let is_reference: bool = r.get(9);
        let col = ColumnSpec {
            attnum: r.get(2),
            name: r.get(3),
            type_oid,
            type_sql: r.get(5),
            not_null: r.get(6),
            generated: r.get::<_, String>(7) == "s",
            identity: r.get::<_, String>(8).chars().next(),
            reference: if is_reference {
                IntKind::from_oid(type_oid)
            } else {
                None
            },
        };
        match out.last_mut() {
            Some((i, _, cols)) if *i == idx => cols.push(col),
            _ => out.push((idx, oid, vec![col])),
        }
    }
    Ok(out)
}

/// Every target's table must be the one the job planned (same OID) with the
/// same columns.
fn check_columns(targets: &[Target], now: Vec<(usize, u32, Vec<ColumnSpec>)>) -> Result<(), Error> {
    for (i, t) in targets.iter().enumerate() {
        let same = now
            .iter()
            .find(|(idx, _, _)| *idx == i)
            .is_some_and(|(_, oid, cols)| {
                *oid == t.detail.spec.oid && *cols == t.detail.spec.columns
            });
        if !same {
            return Err(columns_changed(&t.job.source));
        }
    }
    Ok(())
}

/// The columns of the named tables (`$1` schemas, `$2` names, `$3` the
/// parent's OID, `$4` its key column), ordered by target then `attnum`. Run
/// with an empty `search_path`, as [`catalog::load_table`] reads them
/// (`unnest` of two arrays is `FROM`-clause syntax and cannot be qualified).
const CURRENT_COLUMNS_SQL: &str = "
SELECT t.ord, c.oid, a.attnum, a.attname::text, a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated::text, a.attidentity::text,
       EXISTS (SELECT 1
                 FROM pg_catalog.pg_constraint k
                 JOIN pg_catalog.pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = k.confkey[1]
                WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid = $3
                  AND pg_catalog.cardinality(k.conkey) = 1 AND k.conkey[1] = a.attnum
                  AND pg_catalog.cardinality(k.confkey) = 1 AND pa.attname::text = $4)
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(schema_name, table_name, ord)
  JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name::pg_catalog.name
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name::pg_catalog.name
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY t.ord, a.attnum";

/// The outcome of an attempt that found the catalog changed under its locks
/// since it built the swap (it rolled back; the next attempt builds anew).
const CATALOG_CHANGED: &str = "catalog_changed";

/// Longest pause between two polls of the jobs' applied positions while the
/// locks are held (see [`crate::fence::wait_drained_every`]).
const HELD_POLL: Duration = Duration::from_millis(1);

fn swap_err(e: swap::SwapError) -> Error {
    Error::Swap(e)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// One attempt. `Ok` carries the attempt's report (swapped or gave the locks
/// back); `Err` a failure (transient ones are retried by the caller). The
/// lock, fence, drain and the decision to give the locks back are
/// [`crate::quiesce`]'s.
#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    cfg: &CutoverConfig,
    session: &Client,
    fence_session: &Client,
    admin: &Client,
    targets: &[Target],
    parent: &ParentSpec,
    job_ids: &[Uuid],
    attempt: u32,
) -> Result<AttemptReport, (AttemptReport, Error)> {
    let started = Instant::now();
    let report =
        |wait: Duration, hold: Option<Duration>, outcome: String, phases: &Phases| AttemptReport {
            attempt,
            lock_wait_ms: ms(wait),
            lock_hold_ms: hold.map(ms),
            outcome,
            phases: phases.list.clone(),
            lock_holders: vec![],
        };
    let no_phases = Phases::new(started);
    // Before any lock is requested: build the swap from a fingerprinted
    // catalog read, and warm this backend's catalog caches for the
    // statements it will run under the locks (a fresh backend spends most of
    // a catalog read loading its caches). Generic plans on this session: the
    // statements prepared here are planned once, before the locks, not again
    // under them. The empty `search_path` is the one the locked part sets (a
    // cached plan is made again when `search_path` differs from the one it
    // was made under).
    let before = async {
        session
            .batch_execute("SET plan_cache_mode = force_generic_plan; SET search_path = ''")
            .await
            .map_err(Error::db("configure the cutover session"))?;
        let fingerprinter = swap::catalog::Fingerprinter::prepare(session)
            .await
            .map_err(Error::db("prepare the catalog fingerprint"))?;
        let prepared = prepare(
            session,
            &fingerprinter,
            targets,
            parent,
            attempt == 1,
            cfg.rewrite_dependents,
        )
        .await?;
        let _ = lock_statements(session, targets, parent).await;
        let _ = current_columns(session, targets, parent).await;
        // Every lock the swap needs, in one fixed order (see `lock_statements`).
        let locks = quiesce::LockSet {
            sql: lock_statements(admin, targets, parent).await?,
            what: "lock the source tables".into(),
            gives_up_on: &[quiesce::LOCK_NOT_AVAILABLE],
        };
        Ok::<_, Error>((fingerprinter, prepared, locks))
    }
    .await;
    let (fingerprinter, prepared, locks) = match before {
        Ok(p) => p,
        Err(e) => {
            return Err((
                report(started.elapsed(), None, format!("error: {e}"), &no_phases),
                e,
            ))
        }
    };
    let lock_requested = Instant::now();
    let mut quiet = match quiesce::Attempt::lock(session, &locks, cfg.lock_timeout).await {
        Ok(q) => q,
        Err(e) => {
            return Err((
                report(
                    lock_requested.elapsed(),
                    None,
                    format!("error: {e}"),
                    &no_phases,
                ),
                e,
            ))
        }
    };
    let wait = quiet.lock_wait();
    let Some(locked) = quiet.granted() else {
        return Ok(report(wait, None, "lock_timeout".into(), &no_phases));
    };
    let mut phases = Phases::new(locked);
    let fail = |e: Error, phases: &Phases| {
        (
            report(wait, Some(locked.elapsed()), format!("error: {e}"), phases),
            e,
        )
    };

    // Drain to a fence, bounded by the hold budget.
    let token = format!("cutover-{}-{attempt}", Uuid::new_v4().simple());
    let fence = quiesce::Fence {
        session: fence_session,
        prepared: true,
        token: &token,
    };
    let lsn = match quiet.fence(&fence).await {
        Ok(f) => f,
        Err(e) => return Err(fail(e, &phases)),
    };
    phases.mark("fence");
    let drain = quiesce::Drain {
        poll: admin,
        job_ids,
        max_pause: HELD_POLL,
    };
    match quiet.drain(&drain, lsn, cfg.max_hold).await {
        Ok(true) => {}
        Ok(false) => {
            phases.mark("drain");
            return Ok(report(
                wait,
                Some(locked.elapsed()),
                "drain_timeout".into(),
                &phases,
            ));
        }
        Err(e) => return Err(fail(e, &phases)),
    }
    phases.mark("drain");

    // One round trip: lock the shadows, re-read the sources' columns, and
    // fingerprint the catalog again. The server runs them in this order.
    let checks = async {
        let shadows = targets
            .iter()
            .map(|t| t.job.shadow.quoted())
            .collect::<Vec<_>>()
            .join(", ");
        let lock_shadows =
            format!("SET LOCAL search_path = ''; LOCK TABLE {shadows} IN ACCESS EXCLUSIVE MODE");
        let pairs = pairs(targets);
        let (locked_shadows, columns, fingerprint) = futures_util::join!(
            session.batch_execute(&lock_shadows),
            current_columns(session, targets, parent),
            fingerprinter.take(session, &pairs),
        );
        locked_shadows.map_err(Error::db("lock the shadow tables"))?;
        // The columns must still be the ones the job planned (DDL under a
        // running job is refused by the stream too, but a DDL that sent no
        // row since would only show here).
        check_columns(targets, columns?)?;
        let fingerprint = fingerprint.map_err(Error::db("fingerprint the catalog"))?;
        phases.mark("checks");
        tracing::debug!(before = %prepared.fingerprint, under_lock = %fingerprint, "catalog fingerprints");
        Ok::<bool, Error>(fingerprint == prepared.fingerprint)
    }
    .await;
    let unchanged = match checks {
        Ok(u) => u,
        Err(e) => {
            quiet.abandon().await;
            return Err(fail(e, &phases));
        }
    };
    // Unchanged fingerprint: the swap built before the locks is the one a
    // read now would build (see `swap::catalog::fingerprint`). Otherwise
    // something changed in between: the attempt gives the locks back and the
    // next one builds the swap again.
    if quiet.check(unchanged).await == quiesce::Outcome::CatalogChanged {
        warn!(
            attempt,
            "the catalog changed since the swap was built (DDL on the tables or their dependents); \
             locks given back, the next attempt builds it again"
        );
        return Ok(report(
            wait,
            Some(locked.elapsed()),
            CATALOG_CHANGED.into(),
            &phases,
        ));
    }
    let swap = prepared.swap;
    let old_names: Vec<QualifiedName> = targets
        .iter()
        .map(|t| QualifiedName::new(t.job.source.schema.clone(), t.names.old_table.clone()))
        .collect();
    // The state rows are written right behind the swap statements, in the
    // same pipeline: if a swap statement fails, they fail too (the
    // transaction is aborted) and the swap's error is the one reported.
    let (swapped, recorded) = futures_util::join!(
        swap::execute_swap(session, &swap),
        futures_util::future::join_all(
            targets
                .iter()
                .zip(&old_names)
                .map(|(t, old)| state::record_cutover(session, &t.job.source, old))
        ),
    );
    let written = swapped.map_err(swap_err).and_then(|()| {
        recorded
            .into_iter()
            .try_for_each(|r| r.map_err(Error::from))
    });
    if let Err(e) = written {
        quiet.abandon().await;
        return Err(fail(e, &phases));
    }
    phases.mark("swap_and_state");
    crate::failpoint::hit("cutover.before_swap");
    // If the connection drops during COMMIT, ask the catalog before anything
    // else whether the commit happened.
    let (outcome, error) = quiet
        .commit(|| async {
            for t in targets {
                if let Ok(Some(j)) = state::get_job(admin, &t.job.source).await {
                    if j.phase() == Some(Phase::CutOver) {
                        return true;
                    }
                }
            }
            false
        })
        .await;
    phases.mark("commit");
    let hold = locked.elapsed();
    if outcome == quiesce::Outcome::CommitLost {
        let e = match error {
            Some(e) => Error::db("commit the swap")(e),
            None => Error::Precondition("the swap's commit was lost".into()),
        };
        return Err((report(wait, Some(hold), format!("error: {e}"), &phases), e));
    }
    if error.is_none() {
        crate::failpoint::hit("cutover.after_commit");
    }
    Ok(report(wait, Some(hold), "swapped".into(), &phases))
}

/// The lock statements of an attempt: every lock the swap will need, taken
/// before anything else, so that no lock is requested later while the sources
/// are held — a later request is what deadlocks with the application (a
/// transaction that wrote `users` and then waits for a source; a reader that
/// holds a view and waits for its base table). Order: the tables the new
/// foreign keys point at, the parent included (`SHARE ROW EXCLUSIVE`); the
/// tables whose keys into a source are re-pointed and the dependent views
/// (`ACCESS EXCLUSIVE`); then the sources. Taken together, under one `lock_timeout`, before anything else, so
/// an attempt either holds everything it needs or gives everything back.
async fn lock_statements(
    admin: &Client,
    targets: &[Target],
    parent: &ParentSpec,
) -> Result<String, Error> {
    let oids: Vec<u32> = targets.iter().map(|t| t.job.source_oid).collect();
    let views = admin
        .query(
            "WITH RECURSIVE deps(oid) AS (
                SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = ANY($1) AND r.ev_class <> d.refobjid
                UNION
                SELECT r.ev_class FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
                  JOIN pg_rewrite r ON r.oid = d.objid
                 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND r.ev_class <> deps.oid)
             SELECT n.nspname, c.relname FROM deps JOIN pg_class c ON c.oid = deps.oid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'v' ORDER BY 1, 2",
            &[&oids],
        )
        .await
        .map_err(Error::db("list the views over the source tables"))?;
    let referencing = admin
        .query(
            "SELECT DISTINCT n.nspname, c.relname FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.confrelid = ANY($1) AND NOT con.conrelid = ANY($1)
              ORDER BY 1, 2",
            &[&oids],
        )
        .await
        .map_err(Error::db("list the tables referencing the source tables"))?;
    let targets_of_keys = admin
        .query(
            "SELECT DISTINCT n.nspname, c.relname FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE con.contype = 'f' AND con.conrelid = ANY($1) AND NOT con.confrelid = ANY($1)
              ORDER BY 1, 2",
            &[&oids],
        )
        .await
        .map_err(Error::db("list the tables the source tables reference"))?;
    let name = |r: &tokio_postgres::Row| {
        QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).quoted()
    };
    let sources: Vec<String> = targets.iter().map(|t| t.job.source.quoted()).collect();
    // 1. Tables the new foreign keys will point at (the parent included): SHARE ROW EXCLUSIVE.
    let mut shared: Vec<String> = targets_of_keys.iter().map(name).collect();
    shared.push(parent.table.quoted());
    shared.retain(|t| !sources.contains(t));
    shared.sort();
    shared.dedup();
    let mut out = format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE; ",
        shared.join(", ")
    );
    // 2. Tables whose keys are re-pointed (dropping a constraint takes ACCESS
    //    EXCLUSIVE), then 3. views that are dropped and re-created.
    //    Materialized views cannot be named in LOCK TABLE (SQLSTATE 42809,
    //    which made every cutover with one fail): their DROP in the swap
    //    takes the lock, bounded by the same lock_timeout; their readers hold
    //    no lock on the sources, and a deadlock with one rolls the attempt
    //    back to be retried.
    let mut exclusive: Vec<String> = referencing
        .iter()
        .map(name)
        .filter(|t| !shared.contains(t))
        .collect();
    exclusive.extend(views.iter().map(name));
    if !exclusive.is_empty() {
        out.push_str(&format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE; ",
            exclusive.join(", ")
        ));
    }
    // 4. The sources.
    out.push_str(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        sources.join(", ")
    ));
    Ok(out)
}

/// Validate the `NOT VALID` keys, analyze, and see the slots go.
async fn after_commit(admin: &Client, targets: &[Target], report: &mut CutoverReport) {
    let new_tables: Vec<QualifiedName> = targets.iter().map(|t| t.job.source.clone()).collect();
    // Every constraint validated and every table analyzed, each on its own
    // (one that fails does not skip the others); see `cutover_finish`.
    match crate::cutover_finish::not_valid_constraints(admin, &new_tables).await {
        Ok(constraints) => {
            let pending = crate::cutover_finish::Pending {
                constraints,
                analyze: new_tables.clone(),
            };
            let warnings = crate::cutover_finish::complete(admin, &pending).await;
            report.warnings.extend(warnings);
        }
        Err(e) => report.warnings.push(format!(
            "could not list constraints to validate: {e}; run `pg-rekey cutover` for these tables again to finish"
        )),
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

async fn confirm_swapped_in_catalog(admin: &Client, job: &JobRow) -> Result<(), Error> {
    let row = admin
        .query_opt("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2", &[
            &job.source.schema,
            &job.source.name,
        ])
        .await
        .map_err(Error::db("read the catalog"))?;
    match row {
        Some(r) if r.get::<_, u32>(0) != job.source_oid => Ok(()),
        Some(_) => Err(Error::Precondition(format!(
            "{} is recorded as cut over but still holds the original table; inspect it before doing anything else",
            job.table
        ))),
        None => Err(Error::Precondition(format!("{} is recorded as cut over but no table has its name", job.table))),
    }
}

/// The relations whose locks an attempt waits for (the sources and the
/// parent), to name who holds them after a lock timeout.
fn lock_relations(targets: &[Target], parent: &ParentSpec) -> Vec<u32> {
    let mut oids: Vec<u32> = targets.iter().map(|t| t.job.source_oid).collect();
    oids.push(parent.oid);
    oids
}

/// `rewrite --cutover auto`: wait until every table of `cfg` is streaming
/// with a lag under `cfg.max_lag_bytes`, then cut over (verify included
/// unless `skip_verify`). A cutover that gives up (locks not granted) is
/// retried after a pause; one that finds differences or fails definitely
/// stops trying and logs why — the rewrite keeps streaming and an operator
/// can still run `pg-rekey cutover`. Ends when `shutdown` turns true.
pub async fn auto(cfg: CutoverConfig, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let admin = loop {
        match pg::connect(&cfg.spec, "auto-cutover").await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "auto cutover: cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let jobs = match load_jobs(&admin, &cfg.tables).await {
            Ok(j) => j,
            Err(_) => continue, // not registered yet
        };
        if jobs.iter().all(|j| j.phase() == Some(Phase::CutOver)) {
            // Cut over by someone else (a manual `cutover`), which ran the
            // post-commit steps itself.
            return;
        }
        if jobs.iter().any(|j| j.phase() != Some(Phase::Streaming)) {
            continue;
        }
        let mut ids: Vec<Uuid> = jobs.iter().map(|j| j.job_id).collect();
        ids.dedup();
        match crate::cutover_gate::max_lag(&admin, &ids).await {
            Ok(lag) if lag <= cfg.max_lag_bytes => {}
            _ => continue,
        }
        info!(
            tables = cfg.tables.len(),
            "auto cutover: every table streams with a small lag; cutting over"
        );
        match run(&cfg).await {
            Ok(r) if r.swapped => {
                for a in &r.attempts {
                    info!(attempt = a.attempt, lock_wait_ms = a.lock_wait_ms, lock_hold_ms = a.lock_hold_ms.unwrap_or(0.0), outcome = %a.outcome, "auto cutover attempt");
                }
                return;
            }
            Ok(r)
                if r.reason
                    .as_deref()
                    .is_some_and(|x| x.starts_with("verify found differences")) =>
            {
                warn!(
                    reason = r.reason.as_deref().unwrap_or(""),
                    "auto cutover stopped: the shadows differ; nothing was swapped"
                );
                return;
            }
            Ok(r) => {
                warn!(
                    reason = r.reason.as_deref().unwrap_or(""),
                    "auto cutover gave up this time; retrying in 30 s"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) if e.is_transient() => {
                warn!(error = %crate::error::chain(&e), "auto cutover failed; retrying")
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "auto cutover stopped; run `pg-rekey cutover` by hand once the cause is fixed");
                return;
            }
        }
    }
}
