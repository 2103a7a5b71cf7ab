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

use crate::pg::ConnSpec;

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

impl Error {
    /// Wrap a connection failure with a hint chosen from its cause.
    pub fn connect(spec: &ConnSpec, e: tokio_postgres::Error) -> Self {
        let hint = connect_hint(&e);
        Error::Connect {
            target: spec.redacted(),
            hint,
            source: Some(e),
        }
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
            // The state session lost (a server restart): as transient as any other.
            Error::State(crate::state::StateError::Db { source, .. }) => is_transient_pg(source),
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
    /// exhausted ([`Error::GaveUp`]), an interruption ([`Error::Stopped`]);
    /// **2** for every other error (arguments, connection, privileges, a
    /// failed statement, the catalogs unreadable). Success is 0.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Blocked(_) | Error::Data(_) | Error::GaveUp(_) | Error::Stopped(_) => 1,
            Error::Swap(crate::swap::SwapError::Catalog { .. }) => 2,
            Error::Swap(_) => 1,
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
            _ => None,
        }
    }
}

/// Classify a SQLSTATE: `true` when the same work may succeed if retried.
///
/// Class 08 (connection exception), 40001/40P01 (serialization failure,
/// deadlock), 55P03 (lock not available), 57P01–57P03 (admin shutdown, crash
/// shutdown, cannot connect now), 53300 (too many connections), 57014
/// (query cancelled, as by `lock_timeout`'s cousin `statement_timeout`) and
/// 55006 (object in use: after a dropped stream the old WAL sender can still
/// hold the replication slot for a moment).
pub fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "55006" | "57P01" | "57P02" | "57P03" | "53300" | "57014"
        )
}

fn is_transient_pg(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => is_transient_sqlstate(db.code().code()),
        // No server error: the connection itself broke (I/O, closed).
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

/// Render an error and all its sources as `a: b: c`, skipping repeats.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => chain(e),
    }
}

fn connect_hint(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.code().code() {
            "28P01" => format!(
                "{} — check the password in --dsn, PGPASSWORD or ~/.pgpass",
                db.message()
            ),
            "28000" => format!("{} — {}", db.message(), hba_hint(db.message())),
            "3D000" => format!(
                "{} — create the database or fix dbname in --dsn",
                db.message()
            ),
            "53300" => format!(
                "{} — too many connections; raise max_connections or close idle sessions",
                db.message()
            ),
            _ => db_message(e),
        };
    }
    let text = chain(e);
    if let Some(h) = crate::pg::tls::failure_hint(&text) {
        format!("{text} — {h}")
    } else if text.contains("password missing") {
        format!("{text} — the server asks for a password and none was given: set it in --dsn (password=… or postgres://user:password@host/db), PGPASSWORD, or ~/.pgpass (host:port:db:user:password, chmod 600)")
    } else if text.contains("Connection refused") || text.contains("No such file") {
        format!("{text} — is the server running and listening there? Check host and port in --dsn or PGHOST/PGPORT")
    } else if text.contains("timed out") || text.contains("timeout") {
        format!(
            "{text} — the server did not answer in time; check the host, the port and any firewall"
        )
    } else {
        text
    }
}

/// The fix for a pg_hba.conf rejection (SQLSTATE 28000): a role the server
/// accepts only over TLS (a `hostssl` line) is told to use TLS, not to edit
/// pg_hba.conf.
pub fn hba_hint(message: &str) -> &'static str {
    if message.contains("no encryption") || message.contains("SSL off") {
        "the server accepts this role here only over TLS (a hostssl line in pg_hba.conf); connect with sslmode=require, or verify-full with sslrootcert (PGSSLMODE/PGSSLROOTCERT)"
    } else if message.contains("SSL encryption") || message.contains("SSL on") {
        "the server accepts this role here only without TLS (a hostnossl line in pg_hba.conf); connect with sslmode=disable or add a hostssl line"
    } else if message.contains("pg_hba") {
        "add a pg_hba.conf line allowing this host, role and database (a replication=database connection matches the database name, not the `replication` keyword) and reload the server, or connect as a role that has one"
    } else {
        "check pg_hba.conf and the role's LOGIN attribute"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostssl_rejection_points_at_tls() {
        let m = "no pg_hba.conf entry for host \"127.0.0.1\", user \"u\", database \"d\", no encryption";
        assert!(hba_hint(m).contains("sslmode=require"), "{}", hba_hint(m));
        let m = "no pg_hba.conf entry for host \"127.0.0.1\", user \"u\", database \"d\", SSL encryption";
        assert!(hba_hint(m).contains("sslmode=disable"));
        let m = "no pg_hba.conf entry for host \"127.0.0.1\", user \"u\", database \"d\"";
        assert!(hba_hint(m).contains("add a pg_hba.conf line"));
    }

    #[test]
    fn classifies_sqlstates() {
        for c in [
            "08006", "08001", "40001", "40P01", "55P03", "55006", "57P01", "53300",
        ] {
            assert!(is_transient_sqlstate(c), "{c}");
        }
        for c in ["23505", "42P01", "42501", "55000", "22P02", "XX000"] {
            assert!(!is_transient_sqlstate(c), "{c}");
        }
    }

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
        ] {
            assert_eq!(found.exit_code(), 1, "{found}");
        }
        for error in [
            Error::Config("bad flag".into()),
            Error::Precondition("no snapshot".into()),
        ] {
            assert_eq!(error.exit_code(), 2, "{error}");
        }
    }

    #[test]
    fn chain_skips_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
