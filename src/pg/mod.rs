//! PostgreSQL plumbing shared by every phase: connection targets, ordinary
//! sessions, identifier quoting and WAL positions.

pub mod conn;
pub mod ident;
pub mod lsn;

pub use conn::{ConnSpec, Host};
pub use ident::{quote_ident, quote_literal, QualifiedName};
pub use lsn::Lsn;

use tokio_postgres::{Client, NoTls};

/// Open an ordinary session and drive its connection on a named task.
///
/// Session settings are pinned so that text values pg-rekey reads and writes
/// (and the text values the walsender sends) are unambiguous: ISO dates, UTC,
/// full float precision. Statement and idle timeouts are switched off; the
/// callers bound their own waits.
pub async fn connect(spec: &ConnSpec, purpose: &str) -> Result<Client, crate::error::Error> {
    let mut cfg = spec.to_tokio();
    cfg.options(SESSION_OPTIONS);
    let (client, connection) = match &spec.host {
        Host::Unix(_) | Host::Tcp(_) => cfg
            .connect(NoTls)
            .await
            .map_err(|e| crate::error::Error::connect(spec, e))?,
    };
    let purpose = purpose.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(purpose, error = %crate::error::chain(&e), "session connection ended");
        }
    });
    Ok(client)
}

/// `-c` options pinned on every session pg-rekey opens, replication included.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c statement_timeout=0 -c idle_in_transaction_session_timeout=0 -c lock_timeout=0";
