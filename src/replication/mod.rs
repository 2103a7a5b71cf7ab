//! Logical replication: the walsender client, the pgoutput decoder and the
//! feedback rules.
//!
//! Layers are kept apart: [`wire`] speaks the protocol over a socket,
//! [`pgoutput`] is a pure decoder of the plugin's messages, and [`stream`]
//! owns the rules for what position may be reported back to the server.

pub mod pgoutput;
pub mod stream;
pub mod wire;

/// An error from the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Socket I/O failed or the server closed the connection.
    #[error("replication connection to {target}: {context}: {source}")]
    Io {
        /// Redacted target.
        target: String,
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server sent an ErrorResponse.
    #[error("{message} (SQLSTATE {code}){}", fix.as_ref().map(|f| format!(" — {f}")).unwrap_or_default())]
    Server {
        /// SQLSTATE.
        code: String,
        /// Primary message, with detail appended when present.
        message: String,
        /// What the operator should do, when pg-rekey knows.
        fix: Option<String>,
    },
    /// The server said something the protocol does not allow here.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// Authentication could not proceed (unsupported method, bad SCRAM exchange).
    #[error("authentication: {0}")]
    Auth(String),
    /// A pgoutput message could not be decoded.
    #[error("{0}")]
    Decode(#[from] pgoutput::DecodeError),
    /// The connection was closed (by us, or the stream ended).
    #[error("replication connection closed: {0}")]
    Closed(String),
    /// Nothing listens at the target, or the host cannot be resolved.
    #[error("cannot reach PostgreSQL at {target}: {source} — check that the server is running and that host and port (--dsn, PGHOST, PGPORT) are right")]
    Unreachable {
        /// Redacted target.
        target: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not finish the startup handshake in time.
    #[error("no answer from {target} within {after:?} while connecting — check host, port and firewalls, or raise connect_timeout")]
    Timeout {
        /// Redacted target.
        target: String,
        /// The connect timeout that expired.
        after: std::time::Duration,
    },
    /// A slot, publication or parameter name pg-rekey refuses to send.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `replication slot`, `publication`, `parameter`.
        what: &'static str,
        /// The offending name.
        name: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// TLS could not be negotiated as `sslmode` demands.
    #[error("TLS with {target}: {reason}")]
    Tls {
        /// Redacted target.
        target: String,
        /// What failed and what to do.
        reason: String,
    },
    /// None of several hosts was usable.
    #[error("no host of {target} was usable, tried in order: {tried}")]
    Unusable {
        /// Redacted target (all hosts).
        target: String,
        /// Each host's failure.
        tried: String,
    },
    /// The server is too old or lacks a needed feature.
    #[error("{0}")]
    Unsupported(String),
}

impl ReplicationError {
    /// Whether reconnecting from the last confirmed position may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io { .. }
            | ReplicationError::Closed(_)
            | ReplicationError::Unreachable { .. }
            | ReplicationError::Timeout { .. }
            | ReplicationError::Unusable { .. } => true,
            ReplicationError::Server { code, .. } => crate::pg::diag::is_transient_sqlstate(code),
            _ => false,
        }
    }

    /// SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}
