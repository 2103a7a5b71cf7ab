//! Errors.
//!
//! Every error that reaches the operator is one line that names the cause and
//! the fix. Errors split into two kinds ([`Error::is_transient`]): *definite*
//! errors are facts about the data or the setup (an orphaned reference, a
//! missing privilege, a TRUNCATE of a rewritten table) and stop the job;
//! *transient* errors (a dropped connection, a serialization failure, a lock
//! timeout) may be retried by reconnecting from the last confirmed position.
//!
//! tokio-postgres errors print only "db error" at the top level; [`chain`]
//! renders the whole source chain and is what logs and messages use.

pub use crate::pg::diag::{chain, hba_hint, is_transient_sqlstate};
use crate::pg::diag::{db_message, is_transient_pg};
use crate::pg::{ConnSpec, ConnectError};

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A top-level pg-rekey error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input or configuration; the message says what to change.
    #[error("{0}")]
    Config(String),

    /// Could not open a session.
    #[error("cannot connect to {target}: {hint}")]
    Connect {
        /// Redacted target (`host:port/db as user`).
        target: String,
        /// What went wrong and what to do.
        hint: String,
        /// The driver's error.
        #[source]
        source: Option<tokio_postgres::Error>,
    },

    /// A SQL statement failed.
    #[error("{context}: {}", db_message(source))]
    Db {
        /// What pg-rekey was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] crate::replication::ReplicationError),

    /// The state schema.
    #[error(transparent)]
    State(#[from] crate::state::StateError),

    /// Reading the catalogs or planning.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),

    /// The swap at cutover.
    #[error(transparent)]
    Swap(#[from] crate::swap::SwapError),

    /// The snapshot copy of a table (an orphaned reference at the snapshot,
    /// an unreadable stream, a failed statement).
    #[error(transparent)]
    Copy(#[from] crate::copy_format::CopyError),

    /// Verify could not compare: no job or a failed one, no consistent
    /// point within the attempts, a failed statement (a difference is not
    /// an error but a verdict).
    #[error(transparent)]
    Verify(#[from] crate::verify_error::VerifyError),

    /// A precondition on the server or the data does not hold.
    #[error("{0}")]
    Precondition(String),

    /// The data itself stops the job (orphaned reference, TRUNCATE, DDL …).
    #[error("{0}")]
    Data(String),

    /// Cancelled by the operator (Ctrl-C) or by `abort`.
    #[error("stopped: {0}")]
    Stopped(String),

    /// The preflight found blockers, so nothing was created; the message is
    /// the whole plan (printed once, by whoever reports the error).
    #[error("{0}")]
    Blocked(String),

    /// Every attempt ended without the result and nothing was changed (for
    /// example no consistent point for `verify` within its attempts).
    #[error("{0}")]
    GaveUp(String),

    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        /// What pg-rekey was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Connect {
                target,
                hint,
                source,
            } => Error::Connect {
                target,
                hint,
                source,
            },
            ConnectError::Db { context, source } => Error::Db { context, source },
        }
    }
}

impl Error {
    /// Wrap a connection failure with a hint chosen from its cause.
    pub fn connect(spec: &ConnSpec, e: tokio_postgres::Error) -> Self {
        ConnectError::connect(spec, e).into()
    }

    /// Wrap a statement failure with what was being done.
    pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Error::Db { context, source }
    }

    /// Whether retrying from the last confirmed position may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Db { source, .. } => is_transient_pg(source),
            Error::Replication(e) => e.is_transient(),
            Error::Swap(e) => e.is_transient(),
            Error::Copy(e) => e.is_transient(),
            Error::Verify(e) => e.is_transient(),
            Error::State(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The process exit code of a command that ended with this error, by
    /// the one rule every command follows: **1** when the command found
    /// something or gave up with nothing harmed — preflight blockers
    /// ([`Error::Blocked`]), the data stopping a rewrite (an orphaned
    /// reference, a `TRUNCATE`, DDL: [`Error::Data`], shadows kept for
    /// inspection, sources untouched), a swap that failed and rolled back
    /// ([`Error::Swap`], sources untouched and still streaming), retries
    /// exhausted ([`Error::GaveUp`], and verify's no consistent point in
    /// [`Error::Verify`]), an interruption ([`Error::Stopped`]);
    /// **2** for every other error (arguments, connection, privileges, a
    /// failed statement, the catalogs unreadable). Success is 0.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Blocked(_) | Error::Data(_) | Error::GaveUp(_) | Error::Stopped(_) => 1,
            // The data stops the copy; a failed statement is an error.
            Error::Copy(crate::copy_format::CopyError::Db { .. }) => 2,
            Error::Copy(_) => 1,
            Error::Swap(crate::swap::SwapError::Catalog { .. }) => 2,
            Error::Swap(_) => 1,
            Error::Verify(e) if e.gave_up() => 1,
            _ => 2,
        }
    }

    /// The SQLSTATE of the underlying server error, if there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. }
            | Error::Connect {
                source: Some(source),
                ..
            } => source.as_db_error().map(|d| d.code().code()),
            Error::Replication(e) => e.sqlstate(),
            Error::Verify(e) => e.sqlstate(),
            Error::Copy(crate::copy_format::CopyError::Db { source, .. }) => {
                source.as_db_error().map(|d| d.code().code())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_one_rule() {
        for found in [
            Error::Blocked("plan".into()),
            Error::Data("orphan".into()),
            Error::GaveUp("no consistent point".into()),
            Error::Stopped("ctrl-c".into()),
            Error::Swap(crate::swap::SwapError::Unsupported {
                table: crate::pg::QualifiedName::new("public", "t"),
                objects: vec![],
            }),
            Error::Copy(crate::copy_format::CopyError::MissingParent {
                table: "public.t".into(),
                column: "user_id".into(),
                value: 7,
                row: 1,
            }),
            Error::Verify(crate::verify_error::VerifyError::NoConsistentPoint {
                tables: "public.t".into(),
                attempts: 5,
                reason: "lock timeout".into(),
            }),
        ] {
            assert_eq!(found.exit_code(), 1, "{found}");
        }
        for error in [
            Error::Config("bad flag".into()),
            Error::Precondition("no snapshot".into()),
            Error::Verify(crate::verify_error::VerifyError::NoJob {
                table: "public.t".into(),
            }),
        ] {
            assert_eq!(error.exit_code(), 2, "{error}");
        }
    }
}
