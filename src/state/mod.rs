//! Job state in the database: schema [`SCHEMA`] (`pgrekey`), table `pgrekey.jobs`.
//!
//! The schema is not called `pg_rekey`: PostgreSQL reserves the `pg_` prefix
//! for system schemas (`CREATE SCHEMA pg_rekey` fails with SQLSTATE 42939).
//!
//! One row per table being rewritten, keyed by the source table's name, so a
//! table can be in at most one job at a time and `status` works from any
//! machine that can connect. Tables rewritten by one process share a `job_id`
//! (one slot, one publication, one stream).
//!
//! Invariants:
//! - The schema is created idempotently and safely under concurrent first use
//!   ([`ensure_schema`]: an advisory transaction lock around `IF NOT EXISTS`).
//! - The applied LSN is written by [`record_applied`] inside the apply
//!   transaction that wrote the shadow rows, so it commits atomically with
//!   them: after a crash, the stream restarts after exactly the last applied
//!   commit. It never moves backwards (`GREATEST`).
//! - Phases move only along [`Phase::can_become`]; the check is in the UPDATE's
//!   WHERE clause, so two processes cannot race a row into an impossible phase.
//! - The phase names are the `status` output contract: `copying`, `streaming`,
//!   `cutting_over`, `cut_over`, `failed`, `aborted`.

use std::fmt;

use tokio_postgres::types::{PgLsn, Type};
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use crate::pg::{Lsn, QualifiedName};

const STATE_SQL: &str = include_str!("../../sql/state.sql");

/// The state schema's name.
pub const SCHEMA: &str = "pgrekey";

/// The phase of one table's job (stored in the job rows, shown by `status`,
/// used as the metrics' `phase` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Shadow created, bulk copy under the slot's snapshot running.
    Copying,
    /// Copy done; the stream is applied to the shadow.
    Streaming,
    /// Taking the lock, draining to the fence, swapping.
    CuttingOver,
    /// Swapped: the shadow carries the table's name.
    CutOver,
    /// Stopped on an error (see `last_error`); resumable.
    Failed,
    /// Abort in progress or done.
    Aborted,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 6] = [
        Phase::Copying,
        Phase::Streaming,
        Phase::CuttingOver,
        Phase::CutOver,
        Phase::Failed,
        Phase::Aborted,
    ];

    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Copying => "copying",
            Phase::Streaming => "streaming",
            Phase::CuttingOver => "cutting_over",
            Phase::CutOver => "cut_over",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }

    /// Whether the job for this table has ended (nothing more will change).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::CutOver | Phase::Failed | Phase::Aborted)
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether a job in `self` may move to `next`. Staying put is allowed
    /// (idempotent retries). `cutting_over → streaming` is a cutover that gave
    /// the lock back to let the stream catch up; `failed → copying|streaming`
    /// is a resume. `cut_over` and `aborted` are final.
    pub fn can_become(self, next: Phase) -> bool {
        use Phase::*;
        self == next
            || matches!(
                (self, next),
                (Copying, Streaming | Failed | Aborted)
                    | (Streaming, CuttingOver | Failed | Aborted)
                    | (CuttingOver, CutOver | Streaming | Failed | Aborted)
                    | (Failed, Copying | Streaming | Aborted)
            )
    }

    /// The phases from which `next` may be reached.
    pub fn predecessors(next: Phase) -> Vec<Phase> {
        Phase::ALL
            .into_iter()
            .filter(|p| p.can_become(next))
            .collect()
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job row's phase as read: parsed once, when the row is read
/// ([`StoredPhase::from_stored`]), so no caller parses it again. A name this
/// version does not know (a row written by a newer version) is kept as it
/// is, so it still prints and is still refused by every check that wants a
/// known phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoredPhase {
    /// A phase this version knows.
    Known(Phase),
    /// A name written by a newer version, verbatim.
    Unknown(String),
}

impl StoredPhase {
    /// Parse a stored name.
    pub fn from_stored(name: &str) -> StoredPhase {
        match Phase::parse(name) {
            Some(p) => StoredPhase::Known(p),
            None => StoredPhase::Unknown(name.to_string()),
        }
    }

    /// The phase, when this version knows it.
    pub fn known(&self) -> Option<Phase> {
        match self {
            StoredPhase::Known(p) => Some(*p),
            StoredPhase::Unknown(_) => None,
        }
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        match self {
            StoredPhase::Known(p) => p.as_str(),
            StoredPhase::Unknown(name) => name,
        }
    }
}

impl From<Phase> for StoredPhase {
    fn from(p: Phase) -> Self {
        StoredPhase::Known(p)
    }
}

impl From<&str> for StoredPhase {
    fn from(name: &str) -> Self {
        StoredPhase::from_stored(name)
    }
}

impl PartialEq<Phase> for StoredPhase {
    fn eq(&self, other: &Phase) -> bool {
        *self == StoredPhase::Known(*other)
    }
}

/// Compares the stored name (`phase == "streaming"`).
impl PartialEq<str> for StoredPhase {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Compares the stored name (`phase == "streaming"`).
impl PartialEq<&str> for StoredPhase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for StoredPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serialized as the stored name, known or not (the `--json` contract).
impl serde::Serialize for StoredPhase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A statement failed.
    #[error("{context}: {}", crate::pg::diag::chain(source))]
    Db {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table is already in a job.
    #[error("{table} is already being rewritten by a live process (job {job_id}, phase {phase}, owner {owner}, which holds the job's lock); wait for it, or run pg-rekey abort --table {table}")]
    AlreadyRegistered {
        /// The table.
        table: QualifiedName,
        /// The existing job.
        job_id: Uuid,
        /// Its phase.
        phase: StoredPhase,
        /// Its owner, `pid@host`.
        owner: String,
    },
    /// No job for the table.
    #[error(
        "no pg-rekey job for {table} (aborted meanwhile?); run pg-rekey status to see the jobs"
    )]
    NotFound {
        /// The table.
        table: QualifiedName,
    },
    /// No row of the job is left.
    #[error("pg-rekey job {job_id} has no tables left (aborted meanwhile?); stopping")]
    JobNotFound {
        /// The job.
        job_id: Uuid,
    },
    /// Another process took the job over (this one had lost its lock).
    #[error("pg-rekey job {job_id} was taken over by {owner} while this process had lost its connection; stopping without applying more (the new owner continues)")]
    OwnerChanged {
        /// The job.
        job_id: Uuid,
        /// The new owner, `pid@host`.
        owner: String,
    },
    /// The phase change is not allowed.
    #[error("{table} cannot go from phase {from} to {to}; run pg-rekey status, and abort the job if it is stuck")]
    BadTransition {
        /// The table.
        table: QualifiedName,
        /// Current phase.
        from: StoredPhase,
        /// Requested phase.
        to: Phase,
    },
}

impl StateError {
    /// Whether retrying may succeed: only a failed statement, by the one
    /// rule ([`crate::pg::diag::is_transient_pg`]; the state session lost
    /// in a server restart is as transient as any other).
    pub fn is_transient(&self) -> bool {
        match self {
            StateError::Db { source, .. } => crate::pg::diag::is_transient_pg(source),
            _ => false,
        }
    }
}

fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StateError {
    let context = context.into();
    move |source| StateError::Db { context, source }
}

/// Create schema `pgrekey` and its tables if missing. Safe to call from many
/// sessions at once; must not be called inside an open transaction (the script
/// runs as one implicit transaction of its own).
pub async fn ensure_schema(client: &Client) -> Result<(), StateError> {
    // A role without CREATE on the schema can still use an existing one,
    // when it has this version's newest column (an older version's table is
    // brought up to date by the script's `ADD COLUMN IF NOT EXISTS`).
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                 WHERE attrelid = pg_catalog.to_regclass('pgrekey.jobs')
                   AND attname = 'table_spec' AND NOT attisdropped)
                AND pg_catalog.to_regclass('pgrekey.held_constraints') IS NOT NULL
                AND pg_catalog.to_regclass('pgrekey.held_definitions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("looking for the pgrekey state schema"))?
        .get(0);
    if exists {
        return Ok(());
    }
    client.batch_execute(STATE_SQL).await.map_err(db(
        "creating the pgrekey state schema (needs CREATE on the database)",
    ))
}

/// A new job row, phase `copying`.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Shared by the tables of one rewrite process.
    pub job_id: Uuid,
    /// The source table.
    pub source: QualifiedName,
    /// Its OID.
    pub source_oid: u32,
    /// The shadow table.
    pub shadow: QualifiedName,
    /// Replication slot name.
    pub slot_name: String,
    /// Publication name.
    pub publication_name: String,
    /// Estimated rows to copy.
    pub rows_estimate: i64,
    /// The parent table the references point at.
    pub parent: QualifiedName,
    /// The parent's uuid column.
    pub parent_uuid_column: String,
    /// The table as planned (kept for the way back after cutover).
    pub spec: Option<crate::plan::model::TableSpec>,
}

/// Register a table's job (phase `copying`, owner = this process and host).
/// Fails with [`StateError::AlreadyRegistered`] when the table is in a job.
pub async fn register_job<C: GenericClient>(client: &C, job: &NewJob) -> Result<(), StateError> {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let host = hostname();
    let inserted = client
        .execute(
            "INSERT INTO pgrekey.jobs (source_schema, source_table, source_oid, job_id, phase, slot_name,
                 publication_name, shadow_table, rows_estimate, owner_pid, owner_host,
                 parent_schema, parent_table, parent_uuid_column, table_spec)
             VALUES ($1, $2, $3, $4, 'copying', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (source_schema, source_table) DO NOTHING",
            &[
                &job.source.schema,
                &job.source.name,
                &job.source_oid,
                &job.job_id,
                &job.slot_name,
                &job.publication_name,
                &job.shadow.name,
                &job.rows_estimate,
                &pid,
                &host,
                &job.parent.schema,
                &job.parent.name,
                &job.parent_uuid_column,
                &job.spec.as_ref().and_then(|s| serde_json::to_string(s).ok()),
            ],
        )
        .await
        .map_err(db(format!("registering the job for {}", job.source)))?;
    if inserted == 1 {
        return Ok(());
    }
    match get_job(client, &job.source).await? {
        Some(existing) => Err(StateError::AlreadyRegistered {
            table: job.source.clone(),
            job_id: existing.job_id,
            phase: existing.phase,
            owner: format!(
                "{}@{}",
                existing.owner_pid.unwrap_or_default(),
                existing.owner_host.unwrap_or_default()
            ),
        }),
        // Deleted between the two statements: try once more is the caller's call.
        None => Err(StateError::NotFound {
            table: job.source.clone(),
        }),
    }
}

/// Record the slot's consistent point (and the exported snapshot's name) for every table of the job.
pub async fn record_snapshot<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    consistent_lsn: Lsn,
    snapshot_name: Option<&str>,
) -> Result<(), StateError> {
    let n = client
        .execute(
            "UPDATE pgrekey.jobs SET consistent_lsn = $2, snapshot_name = $3, updated_at = now() WHERE job_id = $1",
            &[&job_id, &PgLsn::from(consistent_lsn.0), &snapshot_name],
        )
        .await
        .map_err(db(format!("recording the snapshot of job {job_id}")))?;
    if n == 0 {
        return Err(StateError::JobNotFound { job_id });
    }
    Ok(())
}

/// Record the size of the job's id map (parent rows and bytes) for `status`.
pub async fn record_id_map<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    users: i64,
    bytes: i64,
) -> Result<(), StateError> {
    client
        .execute(
            "UPDATE pgrekey.jobs SET id_map_users = $2, id_map_bytes = $3, updated_at = now() WHERE job_id = $1",
            &[&job_id, &users, &bytes],
        )
        .await
        .map_err(db(format!("recording the id map size of job {job_id}")))?;
    Ok(())
}

/// Record that `table`'s copy is complete and the stream applies to it from
/// `lsn` on (call it in the transaction that builds the shadow's key, so the
/// two commit together).
pub async fn record_synced<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
    lsn: Lsn,
) -> Result<(), StateError> {
    let n = client
        .execute(
            "UPDATE pgrekey.jobs SET synced_lsn = $3, updated_at = now()
             WHERE source_schema = $1 AND source_table = $2",
            &[&table.schema, &table.name, &PgLsn::from(lsn.0)],
        )
        .await
        .map_err(db(format!(
            "recording that the copy of {table} is complete"
        )))?;
    if n == 0 {
        return Err(StateError::NotFound {
            table: table.clone(),
        });
    }
    Ok(())
}

/// Move a table's job to `phase`, if [`Phase::can_become`] allows it.
pub async fn set_phase<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
    phase: Phase,
) -> Result<(), StateError> {
    let allowed: Vec<&str> = Phase::predecessors(phase)
        .into_iter()
        .map(Phase::as_str)
        .collect();
    let n = client
        .execute(
            "UPDATE pgrekey.jobs SET phase = $3, updated_at = now()
             WHERE source_schema = $1 AND source_table = $2 AND phase = ANY ($4)",
            &[&table.schema, &table.name, &phase.as_str(), &allowed],
        )
        .await
        .map_err(db(format!("setting the phase of {table} to {phase}")))?;
    if n == 1 {
        return Ok(());
    }
    match get_job(client, table).await? {
        Some(job) => Err(StateError::BadTransition {
            table: table.clone(),
            from: job.phase,
            to: phase,
        }),
        None => Err(StateError::NotFound {
            table: table.clone(),
        }),
    }
}

/// Record a stopping error: phase `failed`, `last_error` = `message` (one line,
/// no row values).
pub async fn set_error<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
    message: &str,
) -> Result<(), StateError> {
    // The message first: a table cut over with a way back stays `cut_over`
    // (a final phase) but its way back stopped, and `status` and `rollback`
    // must say why.
    client
        .execute(
            "UPDATE pgrekey.jobs SET last_error = $3, updated_at = now()
             WHERE source_schema = $1 AND source_table = $2",
            &[&table.schema, &table.name, &message],
        )
        .await
        .map_err(db(format!("recording the error of {table}")))?;
    set_phase(client, table, Phase::Failed).await
}

/// Update a table's progress; `None` leaves a value as it is.
pub async fn record_progress<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
    rows_copied: Option<i64>,
    lag_bytes: Option<i64>,
) -> Result<(), StateError> {
    let n = client
        .execute(
            "UPDATE pgrekey.jobs SET rows_copied = coalesce($3, rows_copied),
                 lag_bytes = coalesce($4, lag_bytes), updated_at = now()
             WHERE source_schema = $1 AND source_table = $2",
            &[&table.schema, &table.name, &rows_copied, &lag_bytes],
        )
        .await
        .map_err(db(format!("recording the progress of {table}")))?;
    if n == 0 {
        return Err(StateError::NotFound {
            table: table.clone(),
        });
    }
    Ok(())
}

/// Record the applied position of a job, inside the apply transaction that
/// wrote the shadow rows up to it. Fails with [`StateError::JobNotFound`] when
/// the job's rows are gone (aborted), which stops the apply before it commits.
///
/// Only the job's owner (`owner_pid`/`owner_host`, this process) may: a
/// process that was taken over (`crate::resume::record_owner` changed the
/// owner) while its apply session lived on fails with
/// [`StateError::OwnerChanged`] and its shadow transaction rolls back. Under
/// READ COMMITTED an UPDATE that waited for the take-over's row lock
/// re-checks the owner on the new row, so there is no window in which two
/// appliers both commit.
pub async fn record_applied<C: GenericClient>(
    txn: &C,
    job_id: Uuid,
    lsn: Lsn,
) -> Result<(), StateError> {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let n = txn
        .execute(
            "UPDATE pgrekey.jobs SET applied_lsn = GREATEST(applied_lsn, $2), updated_at = now()
             WHERE job_id = $1 AND owner_pid IS NOT DISTINCT FROM $3 AND owner_host IS NOT DISTINCT FROM $4",
            &[&job_id, &PgLsn::from(lsn.0), &pid, &hostname()],
        )
        .await
        .map_err(db(format!("recording applied LSN {lsn} of job {job_id}")))?;
    if n == 0 {
        let owner = txn
            .query_opt(
                "SELECT owner_pid, owner_host FROM pgrekey.jobs WHERE job_id = $1 LIMIT 1",
                &[&job_id],
            )
            .await
            .map_err(db(format!("reading the owner of job {job_id}")))?;
        return Err(match owner {
            Some(r) => StateError::OwnerChanged {
                job_id,
                owner: format!(
                    "{}@{}",
                    r.get::<_, Option<i32>>(0).unwrap_or_default(),
                    r.get::<_, Option<String>>(1).unwrap_or_default()
                ),
            },
            None => StateError::JobNotFound { job_id },
        });
    }
    Ok(())
}

/// The job's applied position (`None` before the first apply commit).
pub async fn applied_lsn<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<Option<Lsn>, StateError> {
    let row = client
        .query_one(
            "SELECT count(*), max(applied_lsn) FROM pgrekey.jobs WHERE job_id = $1",
            &[&job_id],
        )
        .await
        .map_err(db(format!("reading the applied LSN of job {job_id}")))?;
    if row.get::<_, i64>(0) == 0 {
        return Err(StateError::JobNotFound { job_id });
    }
    Ok(row.get::<_, Option<PgLsn>>(1).map(|l| Lsn(u64::from(l))))
}

/// Mark a table swapped: phase `cut_over` and where the old table went. Call it
/// inside the cutover transaction so it commits with the rename.
pub async fn record_cutover<C: GenericClient + Sync>(
    client: &C,
    table: &QualifiedName,
    old_table: &QualifiedName,
    way_back: bool,
) -> Result<(), StateError> {
    record_cutovers(client, &[(table.clone(), old_table.clone())], way_back).await
}

/// [`record_cutover`] for every table of one swap, in one statement: it runs
/// under the swap's locks, right behind the swap's statements, and is sent
/// without a separate prepare (an unnamed statement), so it costs the hold
/// no round trip of its own. Each pair is `(table, old table)`.
pub async fn record_cutovers<C: GenericClient + Sync>(
    client: &C,
    tables: &[(QualifiedName, QualifiedName)],
    way_back: bool,
) -> Result<(), StateError> {
    let allowed: Vec<&str> = Phase::predecessors(Phase::CutOver)
        .into_iter()
        .map(Phase::as_str)
        .collect();
    let schemas: Vec<&str> = tables.iter().map(|(t, _)| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|(t, _)| t.name.as_str()).collect();
    let olds: Vec<&str> = tables.iter().map(|(_, o)| o.name.as_str()).collect();
    let rows = client
        .query_typed(
            "UPDATE pgrekey.jobs j SET phase = 'cut_over', old_table = v.old, way_back = $4, lag_bytes = 0, updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::text[]) AS v(s, t, old)
             WHERE j.source_schema = v.s AND j.source_table = v.t AND j.phase = ANY ($5)
             RETURNING j.source_schema, j.source_table",
            &[
                (&schemas, Type::TEXT_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&olds, Type::TEXT_ARRAY),
                (&way_back, Type::BOOL),
                (&allowed, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(db(format!("recording the cutover of {}", list(tables))))?;
    for (table, _) in tables {
        if !updated(&rows, table) {
            return Err(match get_job(client, table).await? {
                Some(job) => StateError::BadTransition {
                    table: table.clone(),
                    from: job.phase,
                    to: Phase::CutOver,
                },
                None => StateError::NotFound {
                    table: table.clone(),
                },
            });
        }
    }
    Ok(())
}

/// Record a rollback in the swap's transaction: `table` holds the original
/// table again and the job streams forward (phase `streaming`, no old
/// table). The way back stays on: the next cutover may keep it again.
pub async fn record_rollback<C: GenericClient + Sync>(
    client: &C,
    table: &QualifiedName,
) -> Result<(), StateError> {
    record_rollbacks(client, std::slice::from_ref(table)).await
}

/// [`record_rollback`] for every table of one swap, in one statement (as
/// [`record_cutovers`]).
pub async fn record_rollbacks<C: GenericClient + Sync>(
    client: &C,
    tables: &[QualifiedName],
) -> Result<(), StateError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query_typed(
            "UPDATE pgrekey.jobs j SET phase = 'streaming', old_table = NULL, lag_bytes = 0, updated_at = now()
             FROM unnest($1::text[], $2::text[]) AS v(s, t)
             WHERE j.source_schema = v.s AND j.source_table = v.t AND j.phase = 'cut_over' AND j.way_back
             RETURNING j.source_schema, j.source_table",
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(db(format!(
            "recording the rollback of {}",
            tables.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
        )))?;
    match tables.iter().find(|t| !updated(&rows, t)) {
        Some(t) => Err(StateError::NotFound { table: t.clone() }),
        None => Ok(()),
    }
}

/// Whether `table` is among the rows an `UPDATE … RETURNING source_schema,
/// source_table` returned.
fn updated(rows: &[Row], table: &QualifiedName) -> bool {
    rows.iter()
        .any(|r| r.get::<_, &str>(0) == table.schema && r.get::<_, &str>(1) == table.name)
}

fn list(tables: &[(QualifiedName, QualifiedName)]) -> String {
    tables
        .iter()
        .map(|(t, _)| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A foreign key of an old table held aside while the way back runs (see
/// `sql/state.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldConstraint {
    /// The table it belongs on.
    pub table: QualifiedName,
    /// Constraint name.
    pub name: String,
    /// `pg_get_constraintdef` text, schema-qualified.
    pub definition: String,
    /// Its comment.
    pub comment: Option<String>,
}

/// The constraints held aside for `table` (by its current name).
pub async fn held_constraints<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
) -> Result<Vec<HeldConstraint>, StateError> {
    let rows = client
        .query(
            "SELECT name, definition, comment FROM pgrekey.held_constraints
              WHERE table_schema = $1 AND table_name = $2 ORDER BY name",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(db(format!("reading the constraints held for {table}")))?;
    Ok(rows
        .iter()
        .map(|r| HeldConstraint {
            table: table.clone(),
            name: r.get(0),
            definition: r.get(1),
            comment: r.get(2),
        })
        .collect())
}

/// The statement that records `c` as held (run in the swap's transaction).
pub fn hold_constraint_sql(c: &HeldConstraint) -> String {
    use crate::pg::quote_literal as q;
    format!(
        "INSERT INTO pgrekey.held_constraints (table_schema, table_name, name, definition, comment) VALUES ({}, {}, {}, {}, {}) \
         ON CONFLICT (table_schema, table_name, name) DO UPDATE SET definition = EXCLUDED.definition, comment = EXCLUDED.comment",
        q(&c.table.schema),
        q(&c.table.name),
        q(&c.name),
        q(&c.definition),
        c.comment.as_deref().map(q).unwrap_or_else(|| "NULL".into())
    )
}

/// The statement that forgets every constraint held for `table`.
pub fn release_constraints_sql(table: &QualifiedName) -> String {
    format!(
        "DELETE FROM pgrekey.held_constraints WHERE table_schema = {} AND table_name = {}",
        crate::pg::quote_literal(&table.schema),
        crate::pg::quote_literal(&table.name)
    )
}

/// What a held definition belongs to (see `sql/state.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldKind {
    /// A view (its query).
    View,
    /// A row-level-security policy (its `USING` and `WITH CHECK`).
    Policy,
}

impl HeldKind {
    fn as_str(self) -> &'static str {
        match self {
            HeldKind::View => "view",
            HeldKind::Policy => "policy",
        }
    }
}

/// A view's or policy's definition from before `--rewrite-dependents`
/// re-created it in uuid terms, kept for `rollback` by the job's source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDefinition {
    /// A view or a policy.
    pub kind: HeldKind,
    /// A view: its quoted, schema-qualified name; a policy: its name.
    pub name: String,
    /// A view's query, a policy's `USING`.
    pub definition: Option<String>,
    /// A policy's `WITH CHECK`.
    pub check: Option<String>,
}

/// The definitions held for the job of `source` (none when the state
/// schema is an older version's, which had no such table: its cutovers held
/// nothing).
pub async fn held_definitions<C: GenericClient>(
    client: &C,
    source: &QualifiedName,
) -> Result<Vec<HeldDefinition>, StateError> {
    let there: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgrekey.held_definitions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("looking for pgrekey.held_definitions"))?
        .get(0);
    if !there {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT kind, name, definition, check_definition FROM pgrekey.held_definitions
              WHERE table_schema = $1 AND table_name = $2 ORDER BY kind, name",
            &[&source.schema, &source.name],
        )
        .await
        .map_err(db(format!("reading the definitions held for {source}")))?;
    Ok(rows
        .iter()
        .map(|r| HeldDefinition {
            kind: if r.get::<_, &str>(0) == "view" {
                HeldKind::View
            } else {
                HeldKind::Policy
            },
            name: r.get(1),
            definition: r.get(2),
            check: r.get(3),
        })
        .collect())
}

/// The statement that holds `h` for the job of `source` (run in the swap's
/// transaction; a later cutover's replaces an earlier one's).
pub fn hold_definition_sql(source: &QualifiedName, h: &HeldDefinition) -> String {
    use crate::pg::quote_literal as q;
    let opt = |x: &Option<String>| x.as_deref().map(q).unwrap_or_else(|| "NULL".into());
    format!(
        "INSERT INTO pgrekey.held_definitions (table_schema, table_name, kind, name, definition, check_definition) VALUES ({}, {}, {}, {}, {}, {}) \
         ON CONFLICT (table_schema, table_name, kind, name) DO UPDATE SET definition = EXCLUDED.definition, check_definition = EXCLUDED.check_definition",
        q(&source.schema),
        q(&source.name),
        q(h.kind.as_str()),
        q(&h.name),
        opt(&h.definition),
        opt(&h.check)
    )
}

/// The statement that forgets the definitions held for the job of `source`
/// (nothing on an older version's state schema, which has no such table).
pub fn release_definitions_sql(source: &QualifiedName) -> String {
    format!(
        "DO $rekey$ BEGIN IF pg_catalog.to_regclass('pgrekey.held_definitions') IS NOT NULL THEN \
         DELETE FROM pgrekey.held_definitions WHERE table_schema = {} AND table_name = {}; END IF; END $rekey$",
        crate::pg::quote_literal(&source.schema),
        crate::pg::quote_literal(&source.name)
    )
}

/// Remove a table's job row. `true` when there was one (abort is idempotent).
pub async fn delete_job<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
) -> Result<bool, StateError> {
    let exists = state_exists(client).await?;
    if !exists {
        return Ok(false);
    }
    let n = client
        .execute(
            "DELETE FROM pgrekey.jobs WHERE source_schema = $1 AND source_table = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(db(format!("deleting the job of {table}")))?;
    Ok(n > 0)
}

/// One job row, as `status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRow {
    /// The source table, schema-qualified.
    pub table: String,
    /// The phase, parsed when the row was read; a newer version's phase
    /// is kept by name ([`StoredPhase::Unknown`]) so it still prints.
    pub phase: StoredPhase,
    /// The shadow table, schema-qualified.
    pub shadow_table: String,
    /// The old table after cutover, schema-qualified.
    pub old_table: Option<String>,
    /// Rows copied so far.
    pub rows_copied: i64,
    /// Estimated rows.
    pub rows_estimate: i64,
    /// WAL bytes between the server's position and the applied one.
    pub lag_bytes: Option<i64>,
    /// Last stopping error.
    pub error: Option<String>,
    /// The job (shared by the tables of one process).
    pub job_id: Uuid,
    /// Source OID.
    pub source_oid: u32,
    /// Slot name.
    pub slot_name: Option<String>,
    /// Publication name.
    pub publication_name: Option<String>,
    /// Slot consistent point.
    #[serde(serialize_with = "lsn_text")]
    pub consistent_lsn: Option<Lsn>,
    /// Applied position.
    #[serde(serialize_with = "lsn_text")]
    pub applied_lsn: Option<Lsn>,
    /// Owner process id.
    pub owner_pid: Option<i32>,
    /// Owner host name.
    pub owner_host: Option<String>,
    /// Parent rows in the id map of the job's process, as recorded at load.
    pub id_map_users: Option<i64>,
    /// Bytes that id map used, as recorded at load.
    pub id_map_bytes: Option<i64>,
    /// Where the stream starts applying to this table: set when its copy
    /// is complete (the snapshot's consistent point); `None` while it is
    /// not (see `crate::resume`).
    #[serde(serialize_with = "lsn_text")]
    pub synced_lsn: Option<Lsn>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The source table (structured).
    #[serde(skip)]
    pub source: QualifiedName,
    /// The shadow table (structured).
    #[serde(skip)]
    pub shadow: QualifiedName,
    /// The parent table and its uuid column, as the job was started with.
    #[serde(skip)]
    pub parent: Option<(QualifiedName, String)>,
    /// Cut over with a way back: the old table is kept current from the
    /// new one (`reverse_streaming` in `status`).
    pub way_back: bool,
    /// The table as planned (`None` for jobs registered by an older version).
    #[serde(skip)]
    pub spec: Option<crate::plan::model::TableSpec>,
}

impl JobRow {
    /// The phase, when it is one this version knows.
    pub fn phase(&self) -> Option<Phase> {
        self.phase.known()
    }
}

#[cfg(test)]
impl JobRow {
    /// A job row of `source` (shadow `_rekey_new_<name>`) in `phase`, every
    /// other field empty, for unit tests.
    pub(crate) fn example(source: QualifiedName, phase: &str) -> JobRow {
        let shadow =
            QualifiedName::new(source.schema.clone(), format!("_rekey_new_{}", source.name));
        JobRow {
            table: source.to_string(),
            phase: phase.into(),
            shadow_table: shadow.to_string(),
            old_table: None,
            rows_copied: 0,
            rows_estimate: 0,
            lag_bytes: None,
            error: None,
            job_id: Uuid::nil(),
            source_oid: 1,
            slot_name: None,
            publication_name: None,
            consistent_lsn: None,
            applied_lsn: None,
            owner_pid: None,
            owner_host: None,
            id_map_users: None,
            id_map_bytes: None,
            synced_lsn: None,
            way_back: false,
            spec: None,
            created_at: String::new(),
            updated_at: String::new(),
            source,
            shadow,
            parent: None,
        }
    }
}

fn lsn_text<S: serde::Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

const SELECT_JOBS: &str = "
SELECT source_schema, source_table, phase, shadow_table, old_table, rows_copied, rows_estimate,
       lag_bytes, last_error, job_id, source_oid, slot_name, publication_name, consistent_lsn,
       applied_lsn, owner_pid, owner_host, parent_schema, parent_table, parent_uuid_column,
       id_map_users, id_map_bytes, synced_lsn, way_back, table_spec,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_at,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS updated_at
FROM pgrekey.jobs";

fn job_row(r: &Row) -> JobRow {
    let source = QualifiedName::new(
        r.get::<_, String>("source_schema"),
        r.get::<_, String>("source_table"),
    );
    let shadow = QualifiedName::new(source.schema.clone(), r.get::<_, String>("shadow_table"));
    let old: Option<String> = r.get("old_table");
    let parent = match (
        r.get::<_, Option<String>>("parent_schema"),
        r.get::<_, Option<String>>("parent_table"),
        r.get::<_, Option<String>>("parent_uuid_column"),
    ) {
        (Some(s), Some(t), Some(u)) => Some((QualifiedName::new(s, t), u)),
        _ => None,
    };
    JobRow {
        parent,
        table: source.to_string(),
        phase: StoredPhase::from_stored(r.get("phase")),
        shadow_table: shadow.to_string(),
        old_table: old.map(|o| QualifiedName::new(source.schema.clone(), o).to_string()),
        rows_copied: r.get("rows_copied"),
        rows_estimate: r.get("rows_estimate"),
        lag_bytes: r.get("lag_bytes"),
        error: r.get("last_error"),
        job_id: r.get("job_id"),
        source_oid: r.get("source_oid"),
        slot_name: r.get("slot_name"),
        publication_name: r.get("publication_name"),
        consistent_lsn: r
            .get::<_, Option<PgLsn>>("consistent_lsn")
            .map(|l| Lsn(u64::from(l))),
        applied_lsn: r
            .get::<_, Option<PgLsn>>("applied_lsn")
            .map(|l| Lsn(u64::from(l))),
        owner_pid: r.get("owner_pid"),
        owner_host: r.get("owner_host"),
        id_map_users: r.get("id_map_users"),
        id_map_bytes: r.get("id_map_bytes"),
        synced_lsn: r
            .get::<_, Option<PgLsn>>("synced_lsn")
            .map(|l| Lsn(u64::from(l))),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        way_back: r.get("way_back"),
        spec: r
            .get::<_, Option<String>>("table_spec")
            .and_then(|s| serde_json::from_str(&s).ok()),
        source,
        shadow,
    }
}

async fn state_exists<C: GenericClient>(client: &C) -> Result<bool, StateError> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgrekey.jobs') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("looking for the pgrekey state schema"))?
        .get(0))
}

/// Every job row, by table; empty when the state schema does not exist.
pub async fn list_jobs<C: GenericClient>(client: &C) -> Result<Vec<JobRow>, StateError> {
    if !state_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            format!("{SELECT_JOBS} ORDER BY source_schema, source_table").as_str(),
            &[],
        )
        .await
        .map_err(db("listing pg-rekey jobs"))?;
    Ok(rows.iter().map(job_row).collect())
}

/// One table's job row.
pub async fn get_job<C: GenericClient>(
    client: &C,
    table: &QualifiedName,
) -> Result<Option<JobRow>, StateError> {
    if !state_exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            format!("{SELECT_JOBS} WHERE source_schema = $1 AND source_table = $2").as_str(),
            &[&table.schema, &table.name],
        )
        .await
        .map_err(db(format!("reading the job of {table}")))?;
    Ok(row.as_ref().map(job_row))
}

/// This machine's host name, for `owner_host` (empty when unknown).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that
    // many bytes and we stop at the first NUL (or the end) ourselves.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or(&[])).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_are_the_status_contract() {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
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
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(Phase::parse("done"), None);
    }

    #[test]
    fn stored_phases_keep_a_newer_versions_name() {
        for p in Phase::ALL {
            let stored = StoredPhase::from_stored(p.as_str());
            assert_eq!(stored, StoredPhase::Known(p));
            assert_eq!(stored, p);
            assert_eq!(stored.known(), Some(p));
            assert_eq!(stored.to_string(), p.as_str());
            assert_eq!(serde_json::to_value(&stored).unwrap(), p.as_str());
        }
        let newer = StoredPhase::from_stored("validating");
        assert_eq!(newer, StoredPhase::Unknown("validating".into()));
        assert_eq!(newer.known(), None);
        assert!(newer == "validating");
        assert_ne!(newer, Phase::Streaming);
        assert_eq!(newer.to_string(), "validating");
        assert_eq!(serde_json::to_value(&newer).unwrap(), "validating");
    }

    #[test]
    fn transitions() {
        use Phase::*;
        assert!(Copying.can_become(Streaming));
        assert!(
            CuttingOver.can_become(Streaming),
            "cutover may give the lock back"
        );
        assert!(Failed.can_become(Streaming), "resume");
        assert!(!Copying.can_become(CutOver), "no cutover before streaming");
        assert!(!CutOver.can_become(Aborted), "final");
        assert!(!Aborted.can_become(Copying), "final");
        assert!(Streaming.can_become(Streaming), "idempotent");
        assert_eq!(Phase::predecessors(CutOver), vec![CuttingOver, CutOver]);
    }

    #[test]
    fn host_name_is_printable() {
        assert!(!hostname().contains('\0'));
    }
}
