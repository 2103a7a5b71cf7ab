//! Why `verify` could not compare ([`VerifyError`]): below both
//! [`crate::verify`], which returns it, and [`crate::error`], whose
//! [`crate::error::Error::Verify`] carries it typed (its fields and its
//! source kept). Here, and not in `verify`, because `verify::run` returns the
//! crate's `Error`: `error` importing `verify` would make the two import
//! each other. It imports only the plumbing (`pg::diag`) and the stored
//! phase (`state`).

use crate::state::StoredPhase;

/// Why a comparison could not run (a difference is not an error: it is a
/// verdict).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Nothing to chunk by.
    #[error("cannot verify {table}: it has no primary key or replica identity index to compare rows by; add a primary key")]
    NoKey {
        /// The table.
        table: String,
    },
    /// The table model does not fit the table.
    #[error("cannot verify {table}: {detail}; re-plan the table")]
    BadSpec {
        /// The table.
        table: String,
        /// What is wrong.
        detail: String,
    },
    /// A chunk size of 0.
    #[error(
        "cannot verify {table}: a chunk must hold at least 1 row; pass --chunk-rows 1 or more"
    )]
    ChunkRows {
        /// The table.
        table: String,
    },
    /// The two sides would not be read from one snapshot.
    #[error("cannot verify {table}: both sides must be read from one snapshot, but the session runs at isolation level {isolation:?}; run the comparison inside BEGIN ISOLATION LEVEL REPEATABLE READ")]
    NotRepeatableRead {
        /// The table.
        table: String,
        /// The session's `transaction_isolation`.
        isolation: String,
    },
    /// The table is in no pg-rekey job.
    #[error("cannot verify {table}: no pg-rekey job for it; start one with pg-rekey rewrite --table {table} (pg-rekey status lists the jobs)")]
    NoJob {
        /// The table.
        table: String,
    },
    /// The table's job stopped on an error.
    #[error("cannot verify {table}: its job failed: {error}; fix the cause and resume the rewrite, or run pg-rekey abort --table {table}")]
    JobFailed {
        /// The table.
        table: String,
        /// The job's recorded error.
        error: String,
    },
    /// The table's job is in a phase with nothing to compare.
    #[error("cannot verify {table}: its job is {phase}; verify once it is streaming or cut over (pg-rekey status)")]
    NotReady {
        /// The table.
        table: String,
        /// The job's phase.
        phase: StoredPhase,
    },
    /// The parent the references map to cannot be told from the catalogs.
    #[error("cannot verify {table}: cannot tell the parent table of its references: {detail}; pass --parent and --uuid-column")]
    Parent {
        /// The table.
        table: String,
        /// What is ambiguous or missing.
        detail: String,
    },
    /// The sources could not be read at one point of the stream.
    #[error("cannot verify {tables}: no consistent point after {attempts} attempts (last: {reason}); retry when long transactions on these tables are gone and the jobs keep up, or raise --lock-timeout / --max-hold")]
    NoConsistentPoint {
        /// The tables, comma-separated.
        tables: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last attempt gave up.
        reason: String,
    },
    /// The jobs did not catch up with the stream before the sources were locked.
    #[error("cannot verify {tables}: the rewrite did not apply the stream up to now within {waited_ms} ms; check that its pg-rekey rewrite process is running and keeping up (pg-rekey status)")]
    NotCaughtUp {
        /// The tables, comma-separated.
        tables: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A statement failed.
    #[error("verifying {table} ({step}): {}", crate::pg::diag::db_message(source))]
    Db {
        /// The table.
        table: String,
        /// What was being done.
        step: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl VerifyError {
    /// Whether the same verify may succeed if run again: only a failed
    /// statement, by the one rule ([`crate::pg::diag::is_transient_pg`]).
    /// No consistent point within the attempts already is the retries'
    /// end; the rest are facts about the jobs and the tables.
    pub fn is_transient(&self) -> bool {
        match self {
            VerifyError::Db { source, .. } => crate::pg::diag::is_transient_pg(source),
            _ => false,
        }
    }

    /// The SQLSTATE of the failed statement, if there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            VerifyError::Db { source, .. } => source.as_db_error().map(|d| d.code().code()),
            _ => None,
        }
    }

    /// Whether the comparison gave up with nothing harmed (no consistent
    /// point within the attempts: exit 1, like every retry exhausted)
    /// rather than failed (exit 2).
    pub fn gave_up(&self) -> bool {
        matches!(self, VerifyError::NoConsistentPoint { .. })
    }
}
