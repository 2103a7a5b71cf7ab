//! `cutover`: swap shadows into place in one short, bounded, locked
//! transaction.
//!
//! # One attempt
//!
//! 1. `BEGIN; SET LOCAL lock_timeout = <per attempt>` and take `ACCESS
//!    EXCLUSIVE` on every source table, in a fixed (sorted) order so two
//!    cutovers can never deadlock each other. A lock request that waits is
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
//!    the job was planned, create the shadows' foreign keys (`NOT VALID`; see
//!    [`crate::ddl::foreign_keys`] for why only now), and run the swap
//!    ([`crate::swap`]): rename each source out of the way and its shadow into
//!    place, and carry sequences, incoming foreign keys, views, grants,
//!    owner, row-level security, triggers, publications, replica identity,
//!    comments and index/constraint names across.
//! 4. Record `cut_over` in the job rows **in the same transaction**, and
//!    commit.
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

use tokio_postgres::Client;
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::Error;
use crate::pg::{self, ConnSpec, QualifiedName};
use crate::plan::catalog::{self, TableDetail};
use crate::plan::model::ParentSpec;
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
    /// First pause between attempts (doubles, capped at 10 s).
    pub backoff: Duration,
    /// Refuse to start an attempt while a job lags more than this.
    pub max_lag_bytes: u64,
    /// Print the SQL instead of running it.
    pub dry_run: bool,
    /// Skip the verification before the swap.
    pub skip_verify: bool,
    /// Rows per verify chunk.
    pub verify_chunk_rows: u64,
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
    /// `swapped`, `lock_timeout`, `drain_timeout`, or an error.
    pub outcome: String,
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
    let admin = pg::connect(&cfg.spec, "cutover-admin").await?;
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
        info!("already cut over; nothing to do");
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
    let targets = load_targets(&admin, jobs).await?;
    let parent = load_parent_of(&admin, &targets).await?;

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
    let fence_session = pg::connect(&cfg.spec, "cutover-fence").await?;
    let job_ids: Vec<Uuid> = {
        let mut ids: Vec<Uuid> = targets.iter().map(|t| t.job.job_id).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let mut backoff = cfg.backoff;
    for attempt in 1..=cfg.attempts.max(1) {
        // Gate: small lag, or the drain under the lock would be long.
        let lag = max_lag(&admin, &job_ids).await?;
        if lag > cfg.max_lag_bytes {
            let r = AttemptReport {
                attempt,
                lock_wait_ms: 0.0,
                lock_hold_ms: None,
                outcome: format!(
                    "lag {lag} bytes above --max-lag-bytes {}",
                    cfg.max_lag_bytes
                ),
            };
            warn!(
                attempt,
                lag_bytes = lag,
                "not attempting: the jobs are too far behind"
            );
            report.attempts.push(r);
        } else {
            let mut session = pg::connect(&cfg.spec, "cutover-lock").await?;
            let r = attempt_once(
                cfg,
                &mut session,
                &fence_session,
                &admin,
                &targets,
                &parent,
                &job_ids,
                attempt,
            )
            .await;
            match r {
                Ok(a) => {
                    let swapped = a.outcome == "swapped";
                    info!(
                        attempt,
                        lock_wait_ms = a.lock_wait_ms,
                        lock_hold_ms = a.lock_hold_ms.unwrap_or(0.0),
                        outcome = %a.outcome,
                        "cutover attempt"
                    );
                    report.attempts.push(a);
                    if swapped {
                        report.swapped = true;
                        break;
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
    if !report.swapped {
        for t in &targets {
            let _ = state::set_phase(&admin, &t.job.source, Phase::Streaming).await;
        }
        report.reason = Some(format!(
            "gave up after {} attempts; the sources are untouched and still streaming. Find what holds the locks \
             (SELECT pid, query FROM pg_stat_activity WHERE wait_event_type = 'Lock' OR state = 'idle in transaction') \
             or raise --lock-timeout / --max-hold, then run cutover again",
            report.attempts.len()
        ));
        return Ok(report);
    }
    for t in &targets {
        report.tables.push((
            t.job.table.clone(),
            QualifiedName::new(t.job.source.schema.clone(), t.names.old_table.clone()).to_string(),
        ));
    }
    after_commit(cfg, &admin, &targets, &mut report).await;
    Ok(report)
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

/// The statements of the swap transaction, for `--dry-run` (read in a
/// transaction that is rolled back; nothing changes).
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
    // The swap's SQL depends on the shadows' foreign keys, which only exist
    // inside the swap: create them in a transaction that is rolled back. That
    // takes brief locks on the tables they reference, so bound each wait and
    // retry a few times rather than queue behind the application.
    let mut result = Err(Error::Config("dry run did not run".into()));
    for _ in 0..5 {
        admin
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                cfg.lock_timeout.as_millis().max(1)
            ))
            .await
            .map_err(Error::db("begin the dry run"))?;
        result = async {
            let mut fks = Vec::new();
            for t in targets {
                for s in crate::ddl::foreign_keys(&t.detail, parent) {
                    admin
                        .batch_execute(&s)
                        .await
                        .map_err(Error::db(format!("dry run: {s}")))?;
                    fks.push(s);
                }
            }
            let swap = build_swap(admin, targets).await?;
            Ok::<_, Error>((fks, swap))
        }
        .await;
        let _ = admin.batch_execute("ROLLBACK").await;
        match &result {
            Err(e) if e.sqlstate() == Some("55P03") => tokio::time::sleep(cfg.backoff).await,
            _ => break,
        }
    }
    let (fks, swap) = result?;
    out.extend(fks);
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

async fn build_swap<C: tokio_postgres::GenericClient + Sync>(
    c: &C,
    targets: &[Target],
) -> Result<SwapSql, Error> {
    let mut deps = Vec::with_capacity(targets.len());
    for t in targets {
        deps.push(
            swap::load_dependents(c, &t.job.source, &t.job.shadow)
                .await
                .map_err(swap_err)?,
        );
    }
    let pairs: Vec<(&swap::Dependents, &SwapNames)> =
        deps.iter().zip(targets.iter().map(|t| &t.names)).collect();
    Ok(swap::swap_sql_many(&pairs))
}

fn swap_err(e: swap::SwapError) -> Error {
    Error::Swap(e)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// One attempt. `Ok` carries the attempt's report (swapped or gave the locks
/// back); `Err` a failure (transient ones are retried by the caller).
#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    cfg: &CutoverConfig,
    session: &mut Client,
    fence_session: &Client,
    admin: &Client,
    targets: &[Target],
    parent: &ParentSpec,
    job_ids: &[Uuid],
    attempt: u32,
) -> Result<AttemptReport, (AttemptReport, Error)> {
    let started = Instant::now();
    let fail = |wait: Duration, hold: Option<Duration>, e: Error| {
        (
            AttemptReport {
                attempt,
                lock_wait_ms: ms(wait),
                lock_hold_ms: hold.map(ms),
                outcome: format!("error: {e}"),
            },
            e,
        )
    };
    let txn = session.transaction().await.map_err(|e| {
        fail(
            started.elapsed(),
            None,
            Error::db("begin the swap transaction")(e),
        )
    })?;
    txn.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        cfg.lock_timeout.as_millis().max(1)
    ))
    .await
    .map_err(|e| fail(started.elapsed(), None, Error::db("set lock_timeout")(e)))?;
    let lock_sql = match lock_statements(admin, targets, parent).await {
        Ok(l) => l,
        Err(e) => {
            let _ = txn.rollback().await;
            return Err(fail(started.elapsed(), None, e));
        }
    };
    if let Err(e) = txn.batch_execute(&lock_sql).await {
        let wait = started.elapsed();
        let _ = txn.rollback().await;
        if e.as_db_error().is_some_and(|d| d.code().code() == "55P03") {
            return Ok(AttemptReport {
                attempt,
                lock_wait_ms: ms(wait),
                lock_hold_ms: None,
                outcome: "lock_timeout".into(),
            });
        }
        return Err(fail(wait, None, Error::db("lock the source tables")(e)));
    }
    let locked = Instant::now();
    let wait = locked - started;
    let hold = || Some(locked.elapsed());

    // Drain to a fence, bounded by the hold budget.
    let token = format!("cutover-{}-{attempt}", Uuid::new_v4().simple());
    let fence = match crate::fence::emit(fence_session, &token).await {
        Ok(f) => f,
        Err(e) => {
            let _ = txn.rollback().await;
            return Err(fail(wait, hold(), e));
        }
    };
    match crate::fence::wait_drained(admin, job_ids, fence, locked + cfg.max_hold).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = txn.rollback().await;
            return Ok(AttemptReport {
                attempt,
                lock_wait_ms: ms(wait),
                lock_hold_ms: hold().map(ms),
                outcome: "drain_timeout".into(),
            });
        }
        Err(e) => {
            let _ = txn.rollback().await;
            return Err(fail(wait, hold(), e));
        }
    }

    let body = async {
        let shadows = targets.iter().map(|t| t.job.shadow.quoted()).collect::<Vec<_>>().join(", ");
        txn.batch_execute(&format!("LOCK TABLE {shadows} IN ACCESS EXCLUSIVE MODE"))
            .await
            .map_err(Error::db("lock the shadow tables"))?;
        // The columns must still be the ones the job planned (DDL under a
        // running job is refused by the stream too, but a DDL that sent no
        // row since would only show here).
        for t in targets {
            let now = catalog::load_table(txn.client(), &t.job.source, parent).await?;
            if now.spec.columns != t.detail.spec.columns {
                return Err(Error::Data(format!(
                    "the columns of {} changed since the job was planned; abort the job and start again",
                    t.job.source
                )));
            }
        }
        for t in targets {
            for s in crate::ddl::foreign_keys(&t.detail, parent) {
                txn.batch_execute(&s).await.map_err(Error::db(format!("create the foreign keys of {}", t.job.shadow)))?;
            }
        }
        let swap = build_swap(&txn, targets).await?;
        swap::execute_swap(&txn, &swap).await.map_err(swap_err)?;
        for t in targets {
            state::record_cutover(&txn, &t.job.source, &QualifiedName::new(t.job.source.schema.clone(), t.names.old_table.clone())).await?;
        }
        Ok::<SwapSql, Error>(swap)
    }
    .await;
    let swap = match body {
        Ok(s) => s,
        Err(e) => {
            let _ = txn.rollback().await;
            return Err(fail(wait, hold(), e));
        }
    };
    if let Err(e) = txn.commit().await {
        // Did the commit happen? Ask the catalog before anything else.
        let h = hold();
        for t in targets {
            if let Ok(Some(j)) = state::get_job(admin, &t.job.source).await {
                if j.phase() == Some(Phase::CutOver) {
                    let _ = swap;
                    return Ok(AttemptReport {
                        attempt,
                        lock_wait_ms: ms(wait),
                        lock_hold_ms: h.map(ms),
                        outcome: "swapped".into(),
                    });
                }
            }
        }
        return Err(fail(wait, h, Error::db("commit the swap")(e)));
    }
    let h = hold();
    Ok(AttemptReport {
        attempt,
        lock_wait_ms: ms(wait),
        lock_hold_ms: h.map(ms),
        outcome: "swapped".into(),
    })
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
               JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2",
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
async fn after_commit(
    cfg: &CutoverConfig,
    admin: &Client,
    targets: &[Target],
    report: &mut CutoverReport,
) {
    let new_tables: Vec<QualifiedName> = targets.iter().map(|t| t.job.source.clone()).collect();
    match not_valid_constraints(admin, targets).await {
        Ok(list) => {
            if let Err(e) = swap::validate_after(admin, &list, &new_tables).await {
                report.warnings.push(format!(
                    "the swap is committed, but validating its foreign keys failed: {e}. Fix the offending rows, then run ALTER TABLE … VALIDATE CONSTRAINT"
                ));
            }
        }
        Err(e) => report
            .warnings
            .push(format!("could not list constraints to validate: {e}")),
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
                    crate::abort::drop_slot(&cfg.spec, admin, &slot).await;
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

/// Every `NOT VALID` foreign key on the new tables and on tables referencing them.
async fn not_valid_constraints(
    admin: &Client,
    targets: &[Target],
) -> Result<Vec<swap::ValidateConstraint>, Error> {
    let names: Vec<String> = targets.iter().map(|t| t.job.source.quoted()).collect();
    let rows = admin
        .query(
            "SELECT n.nspname, c.relname, con.conname
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT con.convalidated AND con.contype IN ('f', 'c')
                AND (con.conrelid = ANY (SELECT x::regclass FROM unnest($1::text[]) x)
                     OR con.confrelid = ANY (SELECT x::regclass FROM unnest($1::text[]) x))",
            &[&names],
        )
        .await
        .map_err(Error::db("list constraints to validate"))?;
    Ok(rows
        .iter()
        .map(|r| swap::ValidateConstraint {
            table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            name: r.get(2),
        })
        .collect())
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

async fn max_lag(admin: &Client, job_ids: &[Uuid]) -> Result<u64, Error> {
    let row = admin
        .query_one(
            "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(applied_lsn, consistent_lsn))), 0)::bigint
               FROM pgrekey.jobs WHERE job_id = ANY($1)",
            &[&job_ids],
        )
        .await
        .map_err(Error::db("read the jobs' lag"))?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
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
        if jobs.iter().any(|j| j.phase() != Some(Phase::Streaming)) {
            continue;
        }
        let mut ids: Vec<Uuid> = jobs.iter().map(|j| j.job_id).collect();
        ids.dedup();
        match max_lag(&admin, &ids).await {
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
