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
}

impl ReplicationError {
    /// Whether reconnecting from the last confirmed position may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Io { .. } | ReplicationError::Closed(_) => true,
            ReplicationError::Server { code, .. } => crate::error::is_transient_sqlstate(code),
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
