//! The `rewrite` job: shadows, slot, snapshot copy, then the stream applied
//! until the tables are cut over.
//!
//! # Order of operations, and why
//!
//! 1. **Plan and preflight** read the catalogs; any blocker stops the job
//!    before anything is created.
//! 2. **Jobs are registered** in `pgrekey.jobs` (one row per table, phase
//!    `copying`), and the process takes the job's owner lock (a session-level
//!    advisory lock, [`crate::resume`]) for its whole life. A table in a job
//!    whose owner holds that lock is refused, so two processes never rewrite
//!    the same table; a job whose owner is gone is taken over (below).
//! 3. **Shadows and the publication** are created *before* the slot, so their
//!    DDL lies before the slot's consistent point and is never decoded.
//! 4. **The slot is created with an exported snapshot.** The copy sessions
//!    import that snapshot (`SET TRANSACTION SNAPSHOT`) before anything else
//!    runs on the replication connection (the export lives only until the next
//!    command there). The id map is loaded in the same snapshot.
//! 5. **Copy**, table by table; after each, its indexes (the key's
//!    included) built at the same time on sessions of their own, then the
//!    rest of its post-copy DDL (the key attached, unique constraints,
//!    `NOT VALID` checks) and the record that its copy is complete, in one
//!    transaction on a session of its own ([`finish_table`]). The snapshot
//!    sessions end with the copy so the vacuum horizon moves on.
//! 6. **Stream** from the slot's consistent point: every change committed
//!    after the snapshot, in commit order (see [`crate::apply`] for the
//!    exactly-once argument). The stream is only started after the copy so
//!    an update never reaches a row the copy has not written yet; the slot
//!    retains the WAL meanwhile.
//! 7. **Until cut over**: the loop polls the job rows; when every table is
//!    `cut_over` it stops the stream, drops the slot and the publication, and
//!    returns. When a row says `aborted` (another process ran `abort`) it
//!    cleans up the same way and drops the shadows.
//!
//! A transient failure while streaming (dropped connection, terminated
//! walsender) reconnects with backoff and resumes from the slot: the server
//! restarts at the confirmed position and the applier skips what the state
//! says is already applied. A definite failure (orphaned reference, TRUNCATE,
//! DDL) marks the jobs `failed` with the error and leaves shadows, slot and
//! publication in place for inspection until `pg-rekey abort`.
//! Ctrl-C removes everything the job created; the sources are never touched.
//!
//! # Resume
//!
//! Re-running the same `rewrite` for a job whose owner is gone takes it
//! over ([`crate::resume`]): after the copy, it loads the id map from the
//! durable map table (exactly as of `applied_lsn`) and streams from the
//! slot; during the copy, it keeps every table whose copy was complete and
//! copies the others again under a temporary slot's snapshot, from whose
//! point on the stream applies to them (the argument is in
//! [`crate::resume`]). The same happens inside one process when
//! its connections are lost once the job is registered (a server restart, a
//! dropped state session): it reconnects with back-off and takes its own
//! job back, for at most `--reconnect-timeout`.
//!
//! # Progress
//!
//! The caller's [`JobProgress`] is the one live state of the process: every
//! table is registered at the start; the copy's batch counter is mirrored
//! into it four times a second (no per-row work); the apply loop counts
//! changes per table and publishes its applied position and last commit time
//! into a [`Watermark`], from which the lag poller ([`crate::lag`]) derives
//! the lag; phases follow the job rows; errors land as `failed` with the
//! message. The copy waits on the [`crate::throttle`] between batches;
//! applying the stream is never throttled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::apply::{Applied, Applier, BatchLimits};
use crate::copy::{CopyOptions, Progress};
use crate::error::Error;
use crate::idmap::IdMap;
use crate::lag::Watermark;
use crate::pg::{self, quote_ident, ConnSpec, Lsn, QualifiedName};
use crate::plan::catalog::{self, TableDetail};
use crate::plan::model::{ParentSpec, TableSpec};
use crate::progress::{self, JobProgress, TableProgress};
use crate::replication::pgoutput::{self, LogicalMessage};
use crate::replication::stream::{LogicalStream, StartOptions};
use crate::replication::wire::{ReplicationClient, SnapshotAction};
use crate::state::{self, NewJob, Phase};
use crate::throttle::{Throttle, ThrottleConfig, ThrottleLimits};

/// Everything a rewrite needs, validated.
#[derive(Debug, Clone)]
pub struct RewriteConfig {
    /// Where to connect.
    pub spec: ConnSpec,
    /// The parent table.
    pub parent: QualifiedName,
    /// The parent's uuid column.
    pub uuid_column: String,
    /// Tables to rewrite.
    pub tables: Vec<QualifiedName>,
    /// Shadow transaction sizing.
    pub batch: BatchLimits,
    /// Copy sizing.
    pub copy: CopyOptions,
    /// Snapshot sessions used to copy each table in parallel key ranges.
    pub copy_sessions: usize,
    /// Limits of the copy throttle (none set: never throttled).
    pub throttle: ThrottleLimits,
    /// How long a registered job keeps trying to reconnect after losing its
    /// connections (a server restart, a dropped state session) before it
    /// gives up; see [`crate::resume`].
    pub reconnect_timeout: Duration,
}

impl RewriteConfig {
    /// A configuration with default batch, copy and throttle settings.
    pub fn new(
        spec: ConnSpec,
        parent: QualifiedName,
        uuid_column: impl Into<String>,
        tables: Vec<QualifiedName>,
    ) -> Self {
        RewriteConfig {
            spec,
            parent,
            uuid_column: uuid_column.into(),
            tables,
            batch: BatchLimits::default(),
            copy: CopyOptions::default(),
            copy_sessions: 2,
            throttle: ThrottleLimits::default(),
            reconnect_timeout: Duration::from_secs(300),
        }
    }
}

/// How a rewrite ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteOutcome {
    /// Every table was cut over; slot and publication dropped.
    CutOver,
    /// Aborted (Ctrl-C here, or `pg-rekey abort` elsewhere); everything removed.
    Aborted,
    /// The way back was ended by `pg-rekey finish`; slot and publication dropped.
    Finished,
    /// Stopped (Ctrl-C) while serving a way back: everything is kept, and
    /// the next `rewrite` of the same tables resumes from the slot.
    Paused,
}

/// The objects a job created, for clean-up.
#[derive(Debug, Clone)]
struct JobObjects {
    job_id: Uuid,
    slot: String,
    publication: String,
    shadows: Vec<QualifiedName>,
    tables: Vec<QualifiedName>,
}

/// Run a rewrite to the end. `shutdown` turning `true` (Ctrl-C) stops it and
/// removes what it created. `progress` receives the live state (see the
/// module docs); when this returns, every table's phase in it is final.
pub async fn run(
    cfg: &RewriteConfig,
    shutdown: watch::Receiver<bool>,
    progress: Arc<JobProgress>,
) -> Result<RewriteOutcome, Error> {
    let tables: Vec<Arc<TableProgress>> = cfg
        .tables
        .iter()
        .map(|t| progress.add_table(t.clone()))
        .collect();
    let result = run_resuming(cfg, shutdown, &progress).await;
    for t in tables.iter().filter(|t| !t.phase().is_final()) {
        match &result {
            Ok(RewriteOutcome::CutOver) => t.set_phase(progress::Phase::CutOver),
            Ok(RewriteOutcome::Aborted) => t.set_phase(progress::Phase::Aborted),
            Ok(RewriteOutcome::Finished | RewriteOutcome::Paused) => {
                t.set_phase(progress::Phase::CutOver)
            }
            // The plan is the error's message, reported once by the caller;
            // not once per table.
            Err(Error::Blocked(_)) => {
                t.fail("refused: the preflight found blockers (see the plan); nothing was created")
            }
            Err(e) => t.fail(e.to_string()),
        }
    }
    result
}

/// [`run_job`], run again after a transient failure (lost connections, a
/// server restart) once the job is registered: the new run takes the job
/// over from the slot ([`crate::resume`]). Bounded by
/// [`RewriteConfig::reconnect_timeout`] from the first failure of a series.
async fn run_resuming(
    cfg: &RewriteConfig,
    mut shutdown: watch::Receiver<bool>,
    progress: &Arc<JobProgress>,
) -> Result<RewriteOutcome, Error> {
    let mut registered = false;
    let mut since: Option<Instant> = None;
    let mut pause = Duration::from_millis(500);
    loop {
        let result = run_job(cfg, shutdown.clone(), progress, &mut registered).await;
        match result {
            Err(e) if registered && e.is_transient() && !*shutdown.borrow() => {
                progress.set_owner_held(false);
                progress.add_resume();
                let first = *since.get_or_insert_with(Instant::now);
                if first.elapsed() >= cfg.reconnect_timeout {
                    warn!(error = %crate::error::chain(&e), "reconnect timeout reached; the job stays registered — re-run the same rewrite to resume it");
                    return Err(e);
                }
                warn!(error = %crate::error::chain(&e), pause_ms = pause.as_millis() as u64,
                    "the job lost its connections; reconnecting and resuming from the slot");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return Err(e),
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

async fn run_job(
    cfg: &RewriteConfig,
    mut shutdown: watch::Receiver<bool>,
    progress: &Arc<JobProgress>,
    registered: &mut bool,
) -> Result<RewriteOutcome, Error> {
    let admin = pg::connect(&cfg.spec, "rewrite-admin").await?;
    state::ensure_schema(&admin).await?;
    let parent = catalog::load_parent(&admin, &cfg.parent, &cfg.uuid_column).await?;
    let mut details = Vec::with_capacity(cfg.tables.len());
    for t in &cfg.tables {
        let d = catalog::load_table(&admin, t, &parent).await?;
        progress
            .add_table(t.clone())
            .set_rows_estimate(u64::try_from(d.row_estimate).unwrap_or(0));
        details.push(d);
    }
    match crate::resume::find(&admin, &cfg.tables, &parent).await? {
        crate::resume::Found::Nothing => {}
        crate::resume::Found::Resume(rows) => {
            if !*registered {
                // A take-over from another process (reconnects count themselves).
                progress.add_resume();
            }
            *registered = true;
            return resume_job(cfg, admin, rows, details, parent, shutdown, progress, false).await;
        }
        crate::resume::Found::ContinueCopy(rows) => {
            if !*registered {
                progress.add_resume();
            }
            *registered = true;
            return resume_job(cfg, admin, rows, details, parent, shutdown, progress, true).await;
        }
        crate::resume::Found::Restart(rows) => {
            let job_id = rows[0].job_id;
            if !crate::resume::try_lock(&admin, crate::resume::owner_key(job_id)).await? {
                return Err(Error::Precondition(format!(
                    "job {job_id} was taken over by another process meanwhile; see pg-rekey status"
                )));
            }
            warn!(job = %job_id, "the job's owner is gone and its copy was interrupted: removing its slot, publication and shadows and copying every table again");
            let old = JobObjects {
                job_id,
                slot: rows[0].slot_name.clone().unwrap_or_default(),
                publication: rows[0].publication_name.clone().unwrap_or_default(),
                shadows: rows.iter().map(|r| r.shadow.clone()).collect(),
                tables: rows.iter().map(|r| r.source.clone()).collect(),
            };
            cleanup(&admin, &old, Cleanup::Abort).await;
            crate::resume::unlock(&admin, crate::resume::owner_key(job_id)).await?;
        }
    }
    {
        let mut pf = pg::connect(&cfg.spec, "rewrite-preflight").await?;
        // Views and policies that need the behaviour-keeping rewrite do not
        // stop the rewrite: whether they are rewritten is the cutover's
        // choice (`--rewrite-dependents`), and it refuses up front without it.
        let report = crate::plan::preflight::preflight_with(
            &mut pf,
            &cfg.parent,
            &cfg.uuid_column,
            Some(&cfg.tables),
            crate::plan::preflight::PreflightOptions {
                rewrite_dependents: true,
            },
        )
        .await?;
        if report.has_blockers() {
            return Err(Error::Blocked(format!(
                "preflight found blockers; nothing was created:\n{report}"
            )));
        }
    }

    let job_id = Uuid::new_v4();
    let short = &job_id.simple().to_string()[..12];
    let objects = JobObjects {
        job_id,
        slot: format!("pg_rekey_{short}"),
        publication: format!("pg_rekey_{short}"),
        shadows: details.iter().map(|d| d.spec.shadow.clone()).collect(),
        tables: cfg.tables.clone(),
    };
    let span = tracing::info_span!("rewrite", job = %short);
    async move {
        register(&admin, &objects, &details, &parent).await?;
        // Held for the life of this session: "the owner is alive".
        crate::resume::try_lock(&admin, crate::resume::owner_key(objects.job_id)).await?;
        progress.set_owner_held(true);
        *registered = true;
        crate::failpoint::hit("rewrite.after_register");
        info!(tables = %cfg.tables.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "), slot = %objects.slot, "job registered");
        // Lag and slot WAL for the job's lifetime; the poller stops when
        // `_stop_poller` is dropped, however this block ends.
        let (watermark, _stop_poller) = start_lag_poller(cfg, &objects.slot, progress);
        let prepared = prepare_and_copy(cfg, &admin, &objects, &details, &parent, progress, &mut shutdown).await;
        let (repl, consistent, map) = match prepared {
            Ok(Some(v)) => v,
            Ok(None) => {
                cleanup(&admin, &objects, Cleanup::Abort).await;
                return Ok(RewriteOutcome::Aborted);
            }
            Err(e) => return Err(failed_before_streaming(&admin, &objects, e).await),
        };
        let specs: Vec<TableSpec> = details.iter().map(|d| d.spec.clone()).collect();
        let watch = Observed { progress, watermark: &watermark };
        stream_until_done(cfg, &admin, &objects, specs, parent, map, repl, consistent, &watch, &mut shutdown).await
    }
    .instrument(span)
    .await
}

/// Take over a job whose owner is gone and stream from its slot (see
/// [`crate::resume`]): the map comes from the durable map table, which is
/// exactly as of the job's applied position, where the stream resumes.
#[allow(clippy::too_many_arguments)]
async fn resume_job(
    cfg: &RewriteConfig,
    admin: Client,
    rows: Vec<state::JobRow>,
    details: Vec<TableDetail>,
    parent: ParentSpec,
    mut shutdown: watch::Receiver<bool>,
    progress: &Arc<JobProgress>,
    copy_first: bool,
) -> Result<RewriteOutcome, Error> {
    let job_id = rows[0].job_id;
    if !crate::resume::try_lock(&admin, crate::resume::owner_key(job_id)).await? {
        return Err(Error::Precondition(format!(
            "job {job_id} was taken over by another process meanwhile; see pg-rekey status"
        )));
    }
    let objects = JobObjects {
        job_id,
        slot: rows[0].slot_name.clone().unwrap_or_default(),
        publication: rows[0].publication_name.clone().unwrap_or_default(),
        shadows: details.iter().map(|d| d.spec.shadow.clone()).collect(),
        tables: cfg.tables.clone(),
    };
    let consistent = rows[0].consistent_lsn.ok_or_else(|| {
        Error::Precondition(format!("job {job_id} has no consistent point recorded; run pg-rekey abort --table {} and start again", rows[0].source))
    })?;
    let short = &job_id.simple().to_string()[..12];
    let span = tracing::info_span!("rewrite", job = %short);
    async move {
        crate::resume::record_owner(&admin, job_id).await?;
        progress.set_owner_held(true);
        let (watermark, _stop_poller) = start_lag_poller(cfg, &objects.slot, progress);
        if copy_first {
            match continue_copy(cfg, &admin, &objects, &rows, &details, &parent, progress, &mut shutdown).await {
                Ok(true) => {}
                Ok(false) => {
                    cleanup(&admin, &objects, Cleanup::Abort).await;
                    return Ok(RewriteOutcome::Aborted);
                }
                Err(e) => return Err(failed_before_streaming(&admin, &objects, e).await),
            }
            crate::failpoint::hit("rewrite.after_copy");
        }
        let cutover_running = crate::resume::cutover_alive(&admin, job_id).await?;
        for r in &rows {
            // A cutover that is still running waits on this stream: its phase
            // stays; so does a table cut over with a way back.
            let stays = (r.phase() == Some(Phase::CuttingOver) && cutover_running)
                || r.phase() == Some(Phase::CutOver);
            if !stays {
                state::set_phase(&admin, &r.source, Phase::Streaming).await?;
            }
            progress.add_table(r.source.clone()).set_phase(progress::Phase::Streaming);
        }
        let started = Instant::now();
        let map = crate::resume::load_map(&admin, job_id, &parent).await?;
        progress.set_id_map(map.len() as u64, map.memory_bytes() as u64);
        info!(slot = %objects.slot, applied = ?rows[0].applied_lsn.map(|l| l.to_string()), users = map.len(),
            seconds = started.elapsed().as_secs_f64(), "took over the job of a process that is gone; resuming from the slot");
        let repl = ReplicationClient::connect(&cfg.spec).await?;
        // A table cut over with a way back has the new table under its
        // name: its spec is the one the job was planned with.
        let specs: Vec<TableSpec> = details
            .iter()
            .map(|d| {
                rows.iter()
                    .find(|r| r.source == d.spec.source && r.phase() == Some(Phase::CutOver))
                    .and_then(|r| r.spec.clone())
                    .unwrap_or_else(|| d.spec.clone())
            })
            .collect();
        let watch = Observed { progress, watermark: &watermark };
        stream_until_done(cfg, &admin, &objects, specs, parent, map, repl, consistent, &watch, &mut shutdown).await
    }
    .instrument(span)
    .await
}

/// A failure before the stream started. A transient one (lost
/// connections, a server restart) leaves everything as it is: the job is
/// resumed from there by the retry in [`run_resuming`] or by the next
/// `rewrite`, keeping every table whose copy is complete. Any other marks
/// the tables `failed` with the error and removes what the job created.
async fn failed_before_streaming(admin: &Client, o: &JobObjects, e: Error) -> Error {
    if e.is_transient() {
        warn!(error = %crate::error::chain(&e), "rewrite interrupted before streaming; the tables whose copy is complete are kept for the resume");
        return e;
    }
    warn!(error = %crate::error::chain(&e), "rewrite failed before streaming; removing what it created");
    for t in &o.tables {
        let _ = state::set_error(admin, t, &e.to_string()).await;
    }
    cleanup(admin, o, Cleanup::Failed).await;
    e
}

/// The copy of a job whose owner died while copying (see
/// [`crate::resume`]): the tables whose copy is complete (`synced_lsn`
/// recorded) are kept; each other shadow is emptied and copied again under
/// the snapshot of a new, temporary slot, from whose consistent point on
/// the stream applies to it. `false` when stopped by the operator.
#[allow(clippy::too_many_arguments)]
async fn continue_copy(
    cfg: &RewriteConfig,
    admin: &Client,
    o: &JobObjects,
    rows: &[state::JobRow],
    details: &[TableDetail],
    parent: &ParentSpec,
    progress: &Arc<JobProgress>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, Error> {
    let complete = |d: &TableDetail| {
        rows.iter()
            .any(|r| r.source == d.spec.source && r.synced_lsn.is_some())
    };
    let todo: Vec<&TableDetail> = details.iter().filter(|d| !complete(d)).collect();
    info!(kept = %details.iter().filter(|d| complete(d)).map(|d| d.spec.source.to_string()).collect::<Vec<_>>().join(", "),
        to_copy = %todo.iter().map(|d| d.spec.source.to_string()).collect::<Vec<_>>().join(", "),
        "resuming an interrupted copy: tables whose copy was complete are kept");
    for d in &details.iter().filter(|d| complete(d)).collect::<Vec<_>>() {
        progress.add_table(d.spec.source.clone()).finish_copy();
    }
    if todo.is_empty() {
        return Ok(true);
    }
    for d in &todo {
        // Indexes the interrupted job built after its copy and before it
        // recorded the copy complete: built again after the new copy.
        drop_unsynced_indexes(admin, d).await?;
        // Rows of committed batches of the interrupted copy; the shadow is
        // the job's own, and has no key yet.
        admin
            .batch_execute(&format!("TRUNCATE {}", d.spec.shadow.quoted()))
            .await
            .map_err(Error::db(format!(
                "empty the interrupted copy {}",
                d.spec.shadow
            )))?;
    }
    let mut repl = ReplicationClient::connect(&cfg.spec).await?;
    let slot = repl
        .create_temporary_slot(&format!("{}_sync", o.slot), SnapshotAction::Export)
        .await?;
    let snapshot = slot.snapshot_name.clone().ok_or_else(|| {
        Error::Precondition("the server exported no snapshot with the temporary slot".into())
    })?;
    info!(consistent_point = %slot.consistent_point, tables = todo.len(), "copying again under a new snapshot");
    let under = Snapshot {
        name: &snapshot,
        at: slot.consistent_point,
        first: false,
    };
    let copied = copy_under(cfg, admin, o, &todo, under, parent, progress, shutdown).await?;
    // The temporary slot goes with its connection.
    drop(repl);
    Ok(copied.is_some())
}

async fn register(
    admin: &Client,
    o: &JobObjects,
    details: &[TableDetail],
    parent: &ParentSpec,
) -> Result<(), Error> {
    admin
        .batch_execute("BEGIN")
        .await
        .map_err(Error::db("begin job registration"))?;
    for d in details {
        let job = NewJob {
            job_id: o.job_id,
            source: d.spec.source.clone(),
            source_oid: d.spec.oid,
            shadow: d.spec.shadow.clone(),
            slot_name: o.slot.clone(),
            publication_name: o.publication.clone(),
            rows_estimate: d.row_estimate.max(0),
            parent: parent.table.clone(),
            parent_uuid_column: parent.uuid_column.clone(),
            spec: Some(d.spec.clone()),
        };
        if let Err(e) = state::register_job(admin, &job).await {
            let _ = admin.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    }
    admin
        .batch_execute("COMMIT")
        .await
        .map_err(Error::db("commit job registration"))
}

type Prepared = (ReplicationClient, Lsn, IdMap);

/// Shadows, publication, slot, map, copy, post-copy DDL. `Ok(None)` when
/// stopped by the operator.
async fn prepare_and_copy(
    cfg: &RewriteConfig,
    admin: &Client,
    o: &JobObjects,
    details: &[TableDetail],
    parent: &ParentSpec,
    progress: &Arc<JobProgress>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Prepared>, Error> {
    // Shadows first, then the publication: both before the slot, so their DDL
    // is never decoded.
    admin
        .batch_execute("BEGIN")
        .await
        .map_err(Error::db("begin shadow creation"))?;
    for d in details {
        // The key is built after the copy (faster: one sort instead of a
        // B-tree insert per row); see `ddl::create_shadow_for_copy`.
        for stmt in crate::ddl::create_shadow_for_copy(d, parent) {
            if let Err(e) = admin.batch_execute(&stmt).await {
                let _ = admin.batch_execute("ROLLBACK").await;
                let hint = if e.as_db_error().is_some_and(|d| d.code().code() == "42P07") {
                    format!(
                        "; a shadow named {} already exists — a previous job left it: run `pg-rekey abort --table {}`",
                        d.spec.shadow, d.spec.source
                    )
                } else {
                    String::new()
                };
                return Err(Error::Db {
                    context: format!("create the shadow of {}{hint}", d.spec.source),
                    source: e,
                });
            }
        }
    }
    let mut members = vec![parent.table.quoted()];
    members.extend(details.iter().map(|d| d.spec.source.quoted()));
    let create_pub = format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')",
        quote_ident(&o.publication),
        members.join(", ")
    );
    if let Err(e) = admin.batch_execute(&create_pub).await {
        let _ = admin.batch_execute("ROLLBACK").await;
        return Err(Error::Db {
            context: "create the publication".into(),
            source: e,
        });
    }
    admin
        .batch_execute("COMMIT")
        .await
        .map_err(Error::db("commit shadow creation"))?;

    let mut repl = ReplicationClient::connect(&cfg.spec).await?;
    let slot = repl.create_slot(&o.slot, SnapshotAction::Export).await?;
    let snapshot = slot.snapshot_name.clone().ok_or_else(|| {
        Error::Precondition("the server exported no snapshot with the slot".into())
    })?;
    state::record_snapshot(admin, o.job_id, slot.consistent_point, Some(&snapshot)).await?;
    crate::failpoint::hit("rewrite.after_slot");
    info!(slot = %o.slot, consistent_point = %slot.consistent_point, "slot created");

    let all: Vec<&TableDetail> = details.iter().collect();
    let under = Snapshot {
        name: &snapshot,
        at: slot.consistent_point,
        first: true,
    };
    let Some(map) = copy_under(cfg, admin, o, &all, under, parent, progress, shutdown).await?
    else {
        return Ok(None);
    };
    for d in details {
        state::set_phase(admin, &d.spec.source, Phase::Streaming).await?;
        progress
            .add_table(d.spec.source.clone())
            .set_phase(progress::Phase::Streaming);
    }
    crate::failpoint::hit("rewrite.after_copy");
    Ok(Some((repl, slot.consistent_point, map)))
}

/// The exported snapshot a copy runs under.
#[derive(Clone, Copy)]
struct Snapshot<'a> {
    /// Its name, for `SET TRANSACTION SNAPSHOT`.
    name: &'a str,
    /// The consistent point of the slot that exported it: the copy holds
    /// every transaction committed before it, the stream every one after.
    at: Lsn,
    /// The job's own slot's (its first copy): also fill the durable id map
    /// and record the map's size.
    first: bool,
}

/// Copy `tables` under `snap`, then build each one's key, indexes and
/// constraints and record, in the same transaction, that its copy is
/// complete and the stream applies to it from `snap.at`
/// ([`state::record_synced`]). Returns the id map as of the snapshot, or
/// `None` when stopped by the operator.
///
/// Call it before the replication connection that exported `snap` runs
/// anything else: the sessions import the snapshot first.
#[allow(clippy::too_many_arguments)]
async fn copy_under(
    cfg: &RewriteConfig,
    admin: &Client,
    o: &JobObjects,
    tables: &[&TableDetail],
    snap: Snapshot<'_>,
    parent: &ParentSpec,
    progress: &Arc<JobProgress>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<IdMap>, Error> {
    let n = cfg.copy_sessions.max(1);
    let mut sources = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        let s = pg::connect(&cfg.spec, "copy-source").await?;
        s.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            crate::pg::quote_literal(snap.name)
        ))
        .await
        .map_err(Error::db("import the slot's snapshot"))?;
        sources.push(s);
        targets.push(pg::connect(&cfg.spec, "copy-target").await?);
    }
    if snap.first {
        crate::resume::fill_map_table(&cfg.spec, o.job_id, snap.name, parent).await?;
    }
    let map = IdMap::load(&sources[0], parent)
        .await
        .map_err(|e| Error::Data(e.to_string()))?;
    if snap.first {
        let (users, bytes) = (map.len() as u64, map.memory_bytes() as u64);
        progress.set_id_map(users, bytes);
        // Also the sign that the durable map is complete (see `resume::find`).
        state::record_id_map(admin, o.job_id, users as i64, bytes as i64).await?;
    }

    // The throttle watches the server while the copy runs and holds the copy
    // between batches; it stops when `_stop_throttle` and the copy options
    // holding it are dropped, after the copy.
    let (_stop_throttle, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let throttle = Throttle::start(
        &cfg.spec,
        ThrottleConfig::new(cfg.throttle.clone(), Some(o.slot.clone())),
        Arc::clone(progress),
        async move {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let mut copy_opts = cfg.copy.clone();
    if cfg.throttle.any() {
        copy_opts.throttle = Some(throttle);
    }
    for d in tables {
        if *shutdown.borrow() {
            return Ok(None);
        }
        let table = progress.add_table(d.spec.source.clone());
        table.start_copy(u64::try_from(d.row_estimate).unwrap_or(0));
        let counter = Progress::new();
        let pairs: Vec<(&Client, &Client)> = sources.iter().zip(targets.iter()).collect();
        let started = Instant::now();
        let copy = crate::copy::copy_table_parallel(&pairs, &d.spec, &map, &counter, &copy_opts);
        tokio::pin!(copy);
        // The copy counts committed batches in `counter`; mirror it into the
        // progress on a timer rather than adding work to the copy.
        let mut mirrored = 0u64;
        let mut mirror = |table: &TableProgress| {
            let now = counter.rows();
            table.add_rows_copied(now.saturating_sub(mirrored));
            mirrored = mirrored.max(now);
            mirrored
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_record = Instant::now();
        let rows = loop {
            tokio::select! {
                r = &mut copy => break r.map_err(Error::from)?,
                _ = shutdown.changed() => return Ok(None),
                _ = tick.tick() => {
                    let rows = mirror(&table);
                    // `status` in other processes reads the job rows.
                    if last_record.elapsed() >= Duration::from_secs(5) {
                        last_record = Instant::now();
                        let _ = state::record_progress(admin, &d.spec.source, Some(i64::try_from(rows).unwrap_or(i64::MAX)), None).await;
                    }
                }
            }
        };
        mirror(&table);
        table.finish_copy();
        state::record_progress(admin, &d.spec.source, Some(rows as i64), None).await?;
        info!(table = %d.spec.source, rows, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "copied");
        let started = Instant::now();
        if !finish_table(cfg, d, snap.at, shutdown).await? {
            return Ok(None);
        }
        info!(table = %d.spec.source, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "indexes and constraints built");
        crate::failpoint::hit("copy.after_first_table");
    }
    drop(copy_opts);
    for s in &sources {
        let _ = s.batch_execute("COMMIT").await;
    }
    Ok(Some(map))
}

/// The shadow's indexes, then one transaction that completes the table.
///
/// The indexes (the row key's included) are built at the same time on
/// sessions of their own, each in its own transaction
/// ([`crate::ddl::after_copy`], [`crate::copy::build_concurrently`]):
/// `CREATE INDEX` takes a `SHARE` lock, which does not conflict with
/// itself. Then one transaction on another session attaches the key
/// (`PRIMARY KEY USING INDEX`; `post_copy` may CLUSTER ON it, and the
/// stream's upserts need it), adds the constraints, and records that the
/// copy is complete ([`state::record_synced`]) — so after a crash a shadow
/// is either complete with its key or is copied again; the indexes of an
/// incomplete one are dropped before it is ([`drop_unsynced_indexes`]).
/// `false` when stopped by the operator: the sessions are dropped, and
/// being lock holders' ([`pg::connect_cutover`]) their backends roll back
/// within about a second.
async fn finish_table(
    cfg: &RewriteConfig,
    d: &TableDetail,
    synced: Lsn,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, Error> {
    let plan = crate::ddl::after_copy(d);
    let n = plan.builds.len().min(cfg.copy.build_sessions.max(1));
    let mut builders = Vec::with_capacity(n);
    for _ in 0..n {
        builders.push(pg::connect_cutover(&cfg.spec, "shadow-index").await?);
    }
    let ddl = pg::connect_cutover(&cfg.spec, "shadow-ddl").await?;
    let work = async {
        let sessions: Vec<&Client> = builders.iter().collect();
        let took = crate::copy::build_concurrently(&sessions, &plan.builds)
            .await
            .map_err(|(i, e)| Error::Db {
                context: format!(
                    "build index {} of {}",
                    plan.built.get(i).map(String::as_str).unwrap_or("?"),
                    d.spec.shadow
                ),
                source: e,
            })?;
        for (name, t) in plan.built.iter().zip(&took) {
            tracing::debug!(table = %d.spec.source, index = %name, seconds = format!("{:.2}", t.as_secs_f64()), "index built");
        }
        // The indexes are committed, the copy not yet recorded complete.
        crate::failpoint::hit("copy.after_index_builds");
        ddl.batch_execute("BEGIN")
            .await
            .map_err(Error::db("begin the shadow's key and constraints"))?;
        for stmt in &plan.then {
            ddl.batch_execute(stmt).await.map_err(Error::db(format!(
                "build indexes and constraints of {}",
                d.spec.shadow
            )))?;
        }
        state::record_synced(&ddl, &d.spec.source, synced).await?;
        ddl.batch_execute("COMMIT")
            .await
            .map_err(Error::db("commit the shadow's indexes"))
    };
    tokio::select! {
        r = work => r.map(|()| true),
        _ = shutdown.changed() => Ok(false),
    }
}

/// Drop the indexes [`finish_table`] built on `d`'s shadow before the copy
/// was recorded complete (an interrupted job: they were committed, each in
/// its own transaction, and the shadow is about to be copied again). Only
/// indexes of that very shadow, with the names `after_copy` gives them,
/// backing no constraint (the constraints are only added in the
/// transaction that records the copy complete).
async fn drop_unsynced_indexes(admin: &Client, d: &TableDetail) -> Result<(), Error> {
    let names = crate::ddl::after_copy(d).built;
    if names.is_empty() {
        return Ok(());
    }
    let shadow = d.spec.shadow.quoted();
    let rows = admin
        .query(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE i.indrelid = $1::text::regclass AND c.relname = ANY($2)
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid)",
            &[&shadow, &names],
        )
        .await
        .map_err(Error::db(format!("list the indexes of {}", d.spec.shadow)))?;
    for r in rows {
        let index: String = r.get(0);
        admin
            .batch_execute(&format!("DROP INDEX {index}"))
            .await
            .map_err(Error::db(format!(
                "drop index {index} of the interrupted copy"
            )))?;
    }
    Ok(())
}

/// Lag and slot WAL for the job's lifetime: the poller stops when the
/// returned sender is dropped.
fn start_lag_poller(
    cfg: &RewriteConfig,
    slot: &str,
    progress: &Arc<JobProgress>,
) -> (Arc<Watermark>, tokio::sync::oneshot::Sender<()>) {
    let watermark = Watermark::new();
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    crate::lag::spawn_poller(
        cfg.spec.clone(),
        slot.to_string(),
        Arc::clone(progress),
        Arc::clone(&watermark),
        Duration::from_secs(1),
        stop_rx,
    );
    (watermark, stop)
}

/// Where the stream's progress goes.
struct Observed<'a> {
    progress: &'a Arc<JobProgress>,
    watermark: &'a Arc<Watermark>,
}

/// Why the apply loop ended.
enum LoopEnd {
    CutOver,
    Aborted,
    Stopped,
    /// The job rows went while the way back was served: `finish` ended it.
    Finished,
    /// Ctrl-C while the way back was served: keep everything.
    Paused,
}

#[allow(clippy::too_many_arguments)]
async fn stream_until_done(
    cfg: &RewriteConfig,
    admin: &Client,
    o: &JobObjects,
    specs: Vec<TableSpec>,
    parent: ParentSpec,
    map: IdMap,
    repl: ReplicationClient,
    consistent: Lsn,
    observed: &Observed<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<RewriteOutcome, Error> {
    let mut by_oid: HashMap<u32, Arc<TableProgress>> = specs
        .iter()
        .map(|s| (s.oid, observed.progress.add_table(s.source.clone())))
        .collect();
    // Tables copied under a later snapshot than the slot's (a resumed copy)
    // take the stream's changes from their own snapshot's point on.
    let synced: Vec<(u32, Lsn)> = state::list_jobs(admin)
        .await?
        .into_iter()
        .filter(|r| r.job_id == o.job_id)
        .filter_map(|r| Some((r.source_oid, r.synced_lsn?)))
        .filter(|(_, at)| *at > consistent)
        .collect();
    let mut repl = Some(repl);
    let mut attempt = 0u32;
    loop {
        let applied = state::applied_lsn(admin, o.job_id)
            .await?
            .unwrap_or(consistent);
        let client = match repl.take() {
            Some(c) => c,
            None => ReplicationClient::connect(&cfg.spec).await?,
        };
        let stream = client
            .start_replication(
                &o.slot,
                applied,
                std::slice::from_ref(&o.publication),
                StartOptions::default(),
            )
            .await?;
        info!(from = %applied, "streaming");
        observed.watermark.start_streaming(applied);
        let apply_session = pg::connect(&cfg.spec, "apply").await?;
        let mut applier = Applier::new(
            apply_session,
            o.job_id,
            specs.clone(),
            parent.clone(),
            map.clone(),
            applied,
            cfg.batch,
        )
        .await?;
        applier.persist_map_to(&crate::resume::map_table(o.job_id));
        for (oid, at) in &synced {
            applier.apply_from(*oid, *at);
        }
        let mut way = WayBackServed::default();
        register_way_back(admin, o, &mut applier, &specs, &mut by_oid, &mut way).await?;
        let result = apply_loop(
            admin,
            o,
            &mut applier,
            stream,
            observed,
            (&specs, &mut by_oid, &mut way),
            shutdown,
        )
        .await;
        match result {
            Ok((LoopEnd::CutOver, stream)) => {
                // Changes after the cutover's fence are of no table of the
                // job any more (the parent's go to the durable map, which is
                // dropped now): an open shadow transaction would make that
                // DROP wait forever.
                applier.rollback().await;
                finish_stream(stream).await;
                cleanup(admin, o, Cleanup::CutOver).await;
                info!("every table is cut over; slot and publication dropped");
                return Ok(RewriteOutcome::CutOver);
            }
            Ok((LoopEnd::Finished, stream)) => {
                applier.rollback().await;
                finish_stream(stream).await;
                crate::failpoint::hit("rewrite.finished_before_cleanup");
                crate::abort::drop_slot(admin, &o.slot).await;
                crate::abort::drop_publication(admin, &o.publication).await;
                crate::resume::drop_map_table(admin, o.job_id).await;
                info!("the way back was finished; slot and publication dropped");
                return Ok(RewriteOutcome::Finished);
            }
            Ok((LoopEnd::Paused, stream)) => {
                applier.rollback().await;
                finish_stream(stream).await;
                info!(slot = %o.slot, "stopped serving the way back; the slot, publication and tables are kept — run the same rewrite again to resume (the slot retains WAL meanwhile)");
                return Ok(RewriteOutcome::Paused);
            }
            Ok((LoopEnd::Aborted, stream)) | Ok((LoopEnd::Stopped, stream)) => {
                // An open shadow transaction holds a lock on the shadow that
                // would make dropping it wait forever.
                applier.rollback().await;
                finish_stream(stream).await;
                cleanup(admin, o, Cleanup::Abort).await;
                return Ok(RewriteOutcome::Aborted);
            }
            Err(_) if way.serving && job_rows_gone(admin, o.job_id).await => {
                // `finish` removed the rows between two looks (a position
                // could not be recorded for rows that are gone).
                applier.rollback().await;
                crate::failpoint::hit("rewrite.finished_before_cleanup");
                crate::abort::drop_slot(admin, &o.slot).await;
                crate::abort::drop_publication(admin, &o.publication).await;
                crate::resume::drop_map_table(admin, o.job_id).await;
                info!("the way back was finished; slot and publication dropped");
                return Ok(RewriteOutcome::Finished);
            }
            Err(e) if e.is_transient() && attempt < 8 => {
                applier.rollback().await;
                // The id map must be as of where the stream resumes (see
                // `Applier::revert_map_after`); the state says where that is.
                let resume = state::applied_lsn(admin, o.job_id)
                    .await?
                    .unwrap_or(consistent);
                applier.revert_map_after(resume);
                // The retry budget is for consecutive failures: a connection
                // that applied something was a success, however it ended.
                if applier.durable() > applied {
                    attempt = 0;
                }
                attempt += 1;
                let pause = Duration::from_millis(250 * (1 << attempt.min(5)));
                warn!(error = %crate::error::chain(&e), attempt, pause_ms = pause.as_millis() as u64, "stream interrupted; resuming from the slot");
                for t in by_oid.values() {
                    t.set_last_error(format!("stream interrupted, resuming: {e}"));
                }
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                applier.rollback().await;
                for t in by_oid.values() {
                    t.fail(e.to_string());
                }
                warn!(error = %crate::error::chain(&e), slot = %o.slot,
                    "rewrite stopped; shadows, slot and publication are left for inspection — the slot retains WAL until `pg-rekey abort`");
                for t in &o.tables {
                    let _ = state::set_error(admin, t, &e.to_string()).await;
                    let _ = state::set_phase(admin, t, Phase::Failed).await;
                }
                return Err(e);
            }
        }
    }
}

async fn finish_stream(stream: LogicalStream) {
    match tokio::time::timeout(Duration::from_secs(10), stream.stop()).await {
        Ok(Ok(client)) => {
            let _ = client.close().await;
        }
        Ok(Err(e)) => warn!(error = %e, "stopping the stream"),
        Err(_) => warn!("stopping the stream timed out"),
    }
}

/// Apply until cut over, aborted or stopped. Returns the stream for a clean stop.
///
/// Progress costs the loop a few atomic stores per message (changes per
/// table, the applied position, the last commit time); lag is computed by the
/// lag poller from those, so it keeps moving while a statement here waits.
async fn apply_loop(
    admin: &Client,
    o: &JobObjects,
    applier: &mut Applier,
    mut stream: LogicalStream,
    observed: &Observed<'_>,
    (specs, by_oid, way): (
        &[TableSpec],
        &mut HashMap<u32, Arc<TableProgress>>,
        &mut WayBackServed,
    ),
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(LoopEnd, LogicalStream), Error> {
    let watermark = observed.watermark;
    let applied_now = |applier: &Applier, feedback: &crate::replication::stream::FeedbackHandle| {
        // A keepalive's WAL end counts once nothing received is unapplied.
        applier.durable().max(feedback.position())
    };
    let feedback = stream.feedback();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll = Instant::now();
    let mut last_log = Instant::now();
    let mut fence_seen = false;
    let mut swap_seen = false;
    // Serving a way back (a table cut over with `--way-back`): Ctrl-C keeps
    // everything, and rows that go away were finished, not aborted.
    let mut serving = crate::state::list_jobs(admin)
        .await?
        .iter()
        .any(|r| r.job_id == o.job_id && r.way_back && r.phase() == Some(Phase::CutOver));
    loop {
        way.serving = serving;
        tokio::select! {
            // Priorities: the operator's stop first; then the periodic work,
            // which is due at most every 100 ms and short, so it cannot
            // starve the stream — while ranked below a busy stream it would
            // never run (no progress, no lag, a cut-over seen late); then the
            // stream.
            biased;
            _ = shutdown.changed() => {
                if serving {
                    return Ok((LoopEnd::Paused, stream));
                }
                info!("stop requested; removing the job's objects");
                return Ok((LoopEnd::Stopped, stream));
            }
            _ = tick.tick() => {
                if applier.between_transactions() && applier.should_flush() {
                    if serving {
                        crate::failpoint::hit("way_back.before_commit");
                    }
                    let d = applier.flush().await?;
                    feedback.confirm(d);
                }
                watermark.set_applied(applied_now(applier, &feedback));
                if last_poll.elapsed() >= Duration::from_millis(500) {
                    last_poll = Instant::now();
                    if let Some(end) = poll_jobs(admin, o, observed.progress, &mut serving).await? {
                        return Ok((end, stream));
                    }
                    if last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = Instant::now();
                        // `status` in other processes reads the job rows.
                        for t in &o.tables {
                            let lag = observed.progress.table(t).map(|p| p.snapshot().lag_bytes).unwrap_or(0);
                            let _ = state::record_progress(admin, t, None, Some(i64::try_from(lag).unwrap_or(i64::MAX))).await;
                        }
                        let s = applier.stats();
                        tracing::debug!(changes = s.changes, transactions = s.transactions, applied = %applier.durable(), "streaming");
                    }
                }
            }
            data = stream.recv() => {
                let data = data?;
                let msg = pgoutput::decode(data.payload).map_err(crate::replication::ReplicationError::from)?;
                let (relation, commit_time) = match &msg {
                    LogicalMessage::Insert(m) => (Some(m.relation), None),
                    LogicalMessage::Update(m) => (Some(m.relation), None),
                    LogicalMessage::Delete(m) => (Some(m.relation), None),
                    LogicalMessage::Commit(c) => (None, Some(c.commit_time)),
                    _ => (None, None),
                };
                let before = applier.stats().changes;
                let handled = applier.handle(msg, data.wal_start).await;
                if let Some(t) = relation.and_then(|r| by_oid.get(&r)) {
                    t.add_changes_applied(applier.stats().changes.saturating_sub(before));
                }
                match handled {
                    Ok(Applied::Fence(token)) => {
                        fence_seen = true;
                        swap_seen |= token == crate::way_back::SWAP_TOKEN;
                    }
                    Ok(Applied::Committed(_)) => {
                        if let Some(c) = commit_time {
                            watermark.set_commit_time(c);
                        }
                        if fence_seen {
                            // A cutover or verify waits on the recorded position.
                            let d = applier.record_position().await?;
                            feedback.confirm(d);
                            fence_seen = false;
                            if swap_seen {
                                // A swap with a way back (or a rollback)
                                // committed: the next transactions may
                                // change the new tables.
                                swap_seen = false;
                                serving = register_way_back(admin, o, applier, specs, by_oid, way).await?;
                            }
                        } else if applier.should_flush() || !applier.in_transaction() {
                            if serving && applier.in_transaction() {
                                crate::failpoint::hit("way_back.before_commit");
                            }
                            let d = applier.flush().await?;
                            feedback.confirm(d);
                        }
                        watermark.set_applied(applied_now(applier, &feedback));
                    }
                    Ok(Applied::Nothing) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Whether every row of the job is gone (`finish` or `abort` removed them).
async fn job_rows_gone(admin: &Client, job_id: Uuid) -> bool {
    state::list_jobs(admin)
        .await
        .is_ok_and(|rows| rows.iter().all(|r| r.job_id != job_id))
}

/// The tables whose way back the current applier serves (by the new
/// table's OID).
#[derive(Default)]
struct WayBackServed {
    /// The live (uuid) table's OID of each table whose way back is
    /// registered with the current applier.
    registered: HashMap<QualifiedName, u32>,
    /// A table of the job was cut over with a way back at the last look.
    serving: bool,
}

/// Register with the applier the way back of every table of the job that
/// is cut over with one — the changes of its new table (the former shadow,
/// by OID) are applied to its old table, references translated back (see
/// [`crate::way_back`]) — and set each registered table's direction from
/// the job rows (a rollback sets it forward again). Called when the
/// applier starts and at every swap's own fence, so the direction changes
/// exactly at the swap's place in the stream. Returns whether any table's
/// way back is served.
async fn register_way_back(
    admin: &Client,
    o: &JobObjects,
    applier: &mut Applier,
    specs: &[TableSpec],
    by_oid: &mut HashMap<u32, Arc<TableProgress>>,
    way: &mut WayBackServed,
) -> Result<bool, Error> {
    let rows = state::list_jobs(admin).await?;
    let mut serving = false;
    let mut add = Vec::new();
    let mut directions = Vec::new();
    for spec in specs {
        let Some(row) = rows
            .iter()
            .find(|r| r.job_id == o.job_id && r.source == spec.source)
        else {
            continue;
        };
        let back = row.way_back && row.phase() == Some(Phase::CutOver);
        serving |= back;
        if let Some(p) = by_oid.get(&spec.oid) {
            p.set_way_back(back);
        }
        if let Some(live) = way.registered.get(&spec.source) {
            directions.push((*live, back));
            continue;
        }
        if !back {
            continue;
        }
        // After the swap the new table holds the name; the old one has the
        // source's OID.
        let live: Option<u32> = admin
            .query_one(
                "SELECT pg_catalog.to_regclass($1)::oid",
                &[&spec.source.quoted()],
            )
            .await
            .map_err(Error::db("read the catalog"))?
            .get(0);
        let Some(live) = live.filter(|l| *l != spec.oid) else {
            return Err(Error::Precondition(format!(
                "{} is recorded as cut over with a way back but its name does not hold the new table; inspect it before doing anything else",
                spec.source
            )));
        };
        way.registered.insert(spec.source.clone(), live);
        let old = crate::naming::old_name(&spec.source);
        if let Some(p) = by_oid.get(&spec.oid).cloned() {
            by_oid.insert(live, p);
        }
        info!(table = %spec.source, old = %old, "serving the way back: the new table's changes go to the old one");
        add.push(spec.reversed(live, old));
        directions.push((live, true));
    }
    if !add.is_empty() {
        applier.add_reverse(add).await?;
    }
    for (live, back) in directions {
        applier.set_back(live, back);
    }
    Ok(serving)
}

/// `Some` when every table is cut over, or any was aborted. Mirrors the
/// phases the job rows show (a cutover runs in another process) into the
/// progress.
async fn poll_jobs(
    admin: &Client,
    o: &JobObjects,
    progress: &JobProgress,
    serving: &mut bool,
) -> Result<Option<LoopEnd>, Error> {
    let mut all_cut = true;
    let mut way_back = false;
    for t in &o.tables {
        let job = state::get_job(admin, t).await?;
        if let (Some(j), Some(p)) = (&job, progress.table(t)) {
            if j.job_id == o.job_id {
                // The same phases; the failed/aborted ends are set by `run`.
                if let Some(ph @ (Phase::CuttingOver | Phase::CutOver | Phase::Streaming)) =
                    j.phase()
                {
                    p.set_phase(ph);
                }
            }
        }
        match job {
            None if *serving => return Ok(Some(LoopEnd::Finished)),
            None => return Ok(Some(LoopEnd::Aborted)),
            Some(j) if j.job_id != o.job_id => return Ok(Some(LoopEnd::Aborted)),
            Some(j) => match j.phase() {
                Some(Phase::Aborted) => return Ok(Some(LoopEnd::Aborted)),
                Some(Phase::CutOver) => way_back |= j.way_back,
                _ => all_cut = false,
            },
        }
    }
    *serving = way_back;
    Ok((all_cut && !way_back).then_some(LoopEnd::CutOver))
}

/// What to remove when a job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleanup {
    /// Cut over: drop the slot and the publication; the rows stay (`cut_over`).
    CutOver,
    /// Failed before streaming: drop slot, publication and the half-filled
    /// shadows; the rows stay as `failed` with the error for `status`.
    Failed,
    /// Aborted or stopped: drop everything, rows included.
    Abort,
}

/// Best effort, each step logged.
async fn cleanup(admin: &Client, o: &JobObjects, mode: Cleanup) {
    crate::abort::drop_slot(admin, &o.slot).await;
    crate::abort::drop_publication(admin, &o.publication).await;
    crate::resume::drop_map_table(admin, o.job_id).await;
    if mode != Cleanup::CutOver {
        for s in &o.shadows {
            crate::abort::drop_shadow(admin, s).await;
        }
    }
    for t in &o.tables {
        match mode {
            Cleanup::Abort => {
                let _ = state::delete_job(admin, t).await;
            }
            Cleanup::Failed => {
                let _ = state::set_phase(admin, t, Phase::Failed).await;
            }
            Cleanup::CutOver => {}
        }
    }
}
