//! PostgreSQL plumbing shared by every phase: connection targets, ordinary
//! sessions, TLS, identifier quoting and WAL positions.

pub mod conn;
pub mod diag;
pub mod ident;
pub mod lsn;
pub mod sequence;
pub mod spec;
pub mod tls;

pub use conn::{ConnSpec, Host};
pub use ident::{quote_ident, quote_literal, QualifiedName};
pub use lsn::Lsn;
pub use sequence::SequenceOptions;

use std::time::Duration;

use tokio_postgres::config::{SslMode as PgSslMode, SslNegotiation as PgSslNegotiation};
use tokio_postgres::Client;

use conn::TargetSessionAttrs;
use tls::{MakeRustls, SslMode, SslNegotiation};

/// Why a session could not be opened or set up. [`crate::Error`] takes it in
/// as `Error::Connect` or `Error::Db` with the same text, so callers use `?`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No host gave a usable session.
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
    /// A statement that sets the session up failed.
    #[error("{context}: {}", diag::db_message(source))]
    Db {
        /// What pg-rekey was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Wrap a connection failure with a hint chosen from its cause.
    pub fn connect(spec: &ConnSpec, e: tokio_postgres::Error) -> Self {
        ConnectError::Connect {
            target: spec.redacted(),
            hint: diag::connect_hint(&e),
            source: Some(e),
        }
    }

    fn db(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Self + '_ {
        move |source| ConnectError::Db {
            context: context.to_string(),
            source,
        }
    }

    /// Whether trying again may succeed (as [`crate::Error::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Connect { .. } => true,
            ConnectError::Db { source, .. } => diag::is_transient_pg(source),
        }
    }
}

/// Open an ordinary session and drive its connection on a named task.
///
/// Session settings are pinned so that text values pg-rekey reads and writes
/// (and the text values the walsender sends) are unambiguous: ISO dates, UTC,
/// full float precision. Statement and idle timeouts are switched off; the
/// callers bound their own waits.
///
/// TLS follows the spec's `sslmode` ([`tls`]); several hosts are tried in
/// order, each checked against `target_session_attrs`.
pub async fn connect(spec: &ConnSpec, purpose: &str) -> Result<Client, ConnectError> {
    connect_with(spec, purpose, &SessionKind::Ordinary).await
}

/// A session that may hold or wait for locks the application needs (the
/// cutover's): if pg-rekey dies, its backend must notice within about a
/// second and give the locks back.
///
/// - `client_connection_check_interval = 1s` (PostgreSQL 14+) makes a backend
///   that waits for a lock, or runs a statement, poll its socket and end
///   itself when the client is gone (a killed process closes its sockets, so
///   this covers `kill -9`).
/// - TCP keepalives on both ends (`tcp_keepalives_*` on the server, the
///   socket's own on this side) cover a client host or network that vanished
///   without closing anything: such a peer is declared dead after about 5 s
///   idle + 3 probes 1 s apart.
///
/// An idle backend (waiting for the client's next command inside the
/// transaction that holds the locks) notices a closed socket at once anyway.
pub async fn connect_cutover(spec: &ConnSpec, purpose: &str) -> Result<Client, ConnectError> {
    let client = connect_with(spec, purpose, &SessionKind::LockHolder).await?;
    let major: i32 = client
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .map_err(ConnectError::db("read the server version"))?
        .get(0);
    if major >= 14 {
        client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await
            .map_err(ConnectError::db("set client_connection_check_interval"))?;
    }
    Ok(client)
}

/// What a session is for, which decides its keepalive settings.
enum SessionKind {
    Ordinary,
    LockHolder,
}

/// Server-side keepalives of a lock-holding session (seconds): idle, interval, count.
const LOCK_HOLDER_KEEPALIVES: (u64, u64, u64) = (5, 1, 3);

async fn connect_with(
    spec: &ConnSpec,
    purpose: &str,
    kind: &SessionKind,
) -> Result<Client, ConnectError> {
    let targets = spec.targets();
    let attrs = spec.options.target_session_attrs;
    let mut failures = Vec::new();
    for t in &targets {
        let client = match connect_one(t, purpose, kind).await {
            Ok(c) => c,
            Err(e) if targets.len() == 1 => return Err(e),
            Err(e) => {
                tracing::debug!(target = %t.redacted(), error = %diag::chain(&e), "host failed; trying the next");
                failures.push(e.to_string());
                continue;
            }
        };
        if attrs == TargetSessionAttrs::Any {
            return Ok(client);
        }
        let row = client
            .query_one(
                "SELECT current_setting('transaction_read_only') = 'on', pg_is_in_recovery()",
                &[],
            )
            .await
            .map_err(ConnectError::db("check target_session_attrs"))?;
        let (read_only, in_recovery): (bool, bool) = (row.get(0), row.get(1));
        if attrs.accepts(read_only, in_recovery) {
            return Ok(client);
        }
        let why = format!(
            "{}: server is {}, target_session_attrs={} skips it",
            t.redacted(),
            if in_recovery {
                "in recovery"
            } else if read_only {
                "read-only"
            } else {
                "read-write"
            },
            attrs.as_str()
        );
        if targets.len() == 1 {
            return Err(ConnectError::Connect {
                target: spec.redacted(),
                hint: why,
                source: None,
            });
        }
        failures.push(why);
    }
    Err(ConnectError::Connect {
        target: spec.redacted(),
        hint: format!(
            "no host was usable, tried in order: {}",
            failures.join("; ")
        ),
        source: None,
    })
}

async fn connect_one(
    spec: &ConnSpec,
    purpose: &str,
    kind: &SessionKind,
) -> Result<Client, ConnectError> {
    let mut cfg = spec.to_tokio();
    let tls = &spec.options.tls;
    match kind {
        SessionKind::Ordinary => {
            cfg.options(SESSION_OPTIONS);
        }
        SessionKind::LockHolder => {
            let (idle, interval, count) = LOCK_HOLDER_KEEPALIVES;
            cfg.options(format!(
                "{SESSION_OPTIONS} -c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count={count}"
            ))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(idle))
            .keepalives_interval(Duration::from_secs(interval))
            .keepalives_retries(count as u32);
        }
    }
    // libpq never uses TLS on Unix-domain sockets.
    let mode = match spec.host {
        Host::Unix(_) => SslMode::Disable,
        Host::Tcp(_) => tls.mode,
    };
    cfg.channel_binding(match tls.channel_binding {
        tls::ChannelBindingMode::Disable => tokio_postgres::config::ChannelBinding::Disable,
        tls::ChannelBindingMode::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
        tls::ChannelBindingMode::Require => tokio_postgres::config::ChannelBinding::Require,
    });
    if tls.negotiation == SslNegotiation::Direct {
        cfg.ssl_negotiation(PgSslNegotiation::Direct);
    }
    let config = if mode == SslMode::Disable {
        tls::TlsSettings {
            mode: SslMode::Disable,
            ..Default::default()
        }
        .client_config()
    } else {
        tls.client_config()
    }
    .map_err(|e| ConnectError::Connect {
        target: spec.redacted(),
        hint: e.to_string(),
        source: None,
    })?;
    let make = MakeRustls::new(config);
    let attempt = |m: PgSslMode| {
        let mut cfg = cfg.clone();
        cfg.ssl_mode(m);
        let make = make.clone();
        async move { cfg.connect(make).await }
    };
    let result = match mode {
        SslMode::Disable => attempt(PgSslMode::Disable).await,
        // Plaintext first; TLS only if plaintext is refused.
        SslMode::Allow => match attempt(PgSslMode::Disable).await {
            Ok(c) => Ok(c),
            Err(_) => attempt(PgSslMode::Require).await,
        },
        SslMode::Prefer => attempt(PgSslMode::Prefer).await,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(PgSslMode::Require).await
        }
    };
    let (client, connection) = result.map_err(|e| ConnectError::connect(spec, e))?;
    let purpose = purpose.to_string();
    crate::task::spawn("session-connection", async move {
        if let Err(e) = connection.await {
            tracing::debug!(purpose, error = %diag::chain(&e), "session connection ended");
        }
    });
    Ok(client)
}

/// `-c` options pinned on every session pg-rekey opens, replication included.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c statement_timeout=0 -c idle_in_transaction_session_timeout=0 -c lock_timeout=0";
