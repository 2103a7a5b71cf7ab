//! The walsender client: a logical-replication connection spoken directly on
//! top of `postgres-protocol`'s message builders.
//!
//! tokio-postgres cannot open a replication connection (it sends no
//! `replication=database` startup parameter and has no CopyBoth mode), so this
//! module does the little that is needed itself:
//!
//! - **Startup** over TCP or a Unix socket with `user`, `database`,
//!   `replication=database`, `application_name`, `client_encoding=UTF8` and
//!   the pinned [`SESSION_OPTIONS`](crate::pg::SESSION_OPTIONS) (ISO dates, UTC,
//!   full float precision, statement/idle/lock timeouts off). The walsender
//!   formats pgoutput text values with these settings, so they are part of the
//!   data contract, not a nicety. On 14+ `idle_session_timeout` is switched off
//!   too (the parameter does not exist on 13, hence a `SET` after startup).
//!   The whole handshake is bounded by `ConnSpec::connect_timeout`.
//! - **TLS** as libpq negotiates it: an SSLRequest (code 80877103) answered
//!   `S` is followed by the rustls handshake on the same socket; `N` is
//!   accepted only when `sslmode` allows plaintext; `sslnegotiation=direct`
//!   starts TLS at once with ALPN `postgresql`. The socket is a boxed
//!   `AsyncRead + AsyncWrite` ([`BoxedStream`]), so the protocol code is the
//!   same over TCP, Unix sockets and TLS.
//! - **Authentication**: trust, clear-text password, md5 and SCRAM-SHA-256,
//!   bound to the TLS channel (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`)
//!   when the server offers it, as `channel_binding` asks.
//! - **Simple-query commands** (the only protocol a walsender speaks):
//!   `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT`,
//!   `SHOW`, plain SQL, and `START_REPLICATION`, which turns the connection
//!   into a [`LogicalStream`](super::stream::LogicalStream).
//!
//! Messages are framed by hand with [`Header::parse`]: `backend::Message`
//! does not know CopyBothResponse (`'W'`), and owning the framing also means
//! bytes that arrive right behind `'W'` are carried into the stream, never lost.
//!
//! Nothing here panics on server input: every field is read through a
//! bounds-checked cursor and a short or malformed message is a
//! [`ReplicationError::Protocol`]. Server errors become
//! [`ReplicationError::Server`] with the SQLSTATE and, where pg-rekey knows it,
//! a one-line fix ([`fix_for`]).
//!
//! # Slot creation syntax
//! PostgreSQL 15 introduced the option-list form
//! `CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'export')`; 10–14 only
//! understand the keyword form `… LOGICAL pgoutput EXPORT_SNAPSHOT`
//! (`USE_SNAPSHOT`, `NOEXPORT_SNAPSHOT`). The form is chosen from the
//! `server_version` the server reports at startup ([`create_slot_sql`]).

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Header;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ReplicationError;
use crate::pg::conn::TargetSessionAttrs;
use crate::pg::tls::{ChannelBindingMode, SslMode, SslNegotiation};
use crate::pg::{quote_ident, quote_literal, ConnSpec, Host, Lsn};

/// A byte stream the client can run over: TCP, a Unix socket, later TLS.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// The socket type of a replication connection.
pub type BoxedStream = Box<dyn AsyncStream>;

/// Largest backend message accepted (1 GiB of payload plus headers, the
/// server's own limit on a single value), so a corrupt length cannot make the
/// client allocate without bound.
const MAX_MESSAGE: usize = (1 << 30) + 1024;

/// One backend message: tag byte and body (without the length word).
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) tag: u8,
    pub(crate) body: Bytes,
}

/// Reads whole backend messages from any byte source.
///
/// Cancel-safe: partial input stays in `buf`, so dropping a pending
/// [`FrameReader::read_frame`] loses nothing.
pub(crate) struct FrameReader<R> {
    pub(crate) io: R,
    pub(crate) buf: BytesMut,
    pub(crate) target: String,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            let header = Header::parse(&self.buf).map_err(|e| {
                ReplicationError::Protocol(format!("bad message header from {}: {e}", self.target))
            })?;
            if let Some(h) = header {
                // len >= 4 is checked by Header::parse.
                let total = usize::try_from(h.len())
                    .unwrap_or(usize::MAX)
                    .saturating_add(1);
                if total > MAX_MESSAGE {
                    return Err(ReplicationError::Protocol(format!(
                        "message of {total} bytes from {} exceeds the 1 GiB limit",
                        self.target
                    )));
                }
                if self.buf.len() >= total {
                    let mut body = self.buf.split_to(total).freeze();
                    body.advance(5);
                    return Ok(Frame { tag: h.tag(), body });
                }
                self.buf.reserve(total - self.buf.len());
            } else {
                self.buf.reserve(8192);
            }
            let n =
                self.io
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|source| ReplicationError::Io {
                        target: self.target.clone(),
                        context: "reading from the server".into(),
                        source,
                    })?;
            if n == 0 {
                return Err(ReplicationError::Closed(format!(
                    "{} closed the connection without an error message (server crash, restart or network failure); reconnect and resume from the last confirmed position",
                    self.target
                )));
            }
        }
    }
}

/// Bounds-checked reader over a message body. Every accessor returns a
/// protocol error instead of panicking on short input.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    fn short(&self) -> ReplicationError {
        ReplicationError::Protocol(format!("{} message is truncated", self.what))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ReplicationError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ReplicationError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ReplicationError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| self.short())?;
        Ok(i16::from_be_bytes(b))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ReplicationError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| self.short())?;
        Ok(i32::from_be_bytes(b))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ReplicationError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| self.short())?;
        Ok(i64::from_be_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ReplicationError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| self.short())?;
        Ok(u64::from_be_bytes(b))
    }

    pub(crate) fn cstr(&mut self) -> Result<&'a str, ReplicationError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.short())?;
        let s = self.take(end)?;
        self.take(1)?;
        std::str::from_utf8(s).map_err(|_| {
            ReplicationError::Protocol(format!("{} message holds invalid UTF-8", self.what))
        })
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ServerMessage {
    pub(crate) severity: String,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

pub(crate) fn parse_server_message(body: &[u8]) -> Result<ServerMessage, ReplicationError> {
    let mut c = Cursor::new(body, "ErrorResponse");
    let mut m = ServerMessage::default();
    loop {
        let t = c.u8()?;
        if t == 0 {
            break;
        }
        let v = c.cstr()?.to_string();
        match t {
            b'V' => m.severity = v,
            b'S' if m.severity.is_empty() => m.severity = v,
            b'C' => m.code = v,
            b'M' => m.message = v,
            b'D' => m.detail = Some(v),
            b'H' => m.hint = Some(v),
            _ => {}
        }
    }
    Ok(m)
}

/// Turn an ErrorResponse into a typed error with a fix where one is known.
pub(crate) fn server_error(body: &[u8]) -> ReplicationError {
    match parse_server_message(body) {
        Ok(m) => {
            let fix = fix_for(&m.code, &m.message).or(m.hint.clone());
            let message = match &m.detail {
                Some(d) => format!("{}; {d}", m.message),
                None => m.message,
            };
            ReplicationError::Server {
                code: m.code,
                message,
                fix,
            }
        }
        Err(e) => e,
    }
}

/// The operator's fix for a server error, chosen by SQLSTATE (and the message
/// where one SQLSTATE covers several causes).
pub fn fix_for(code: &str, message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    let fix = match code {
        "28P01" => "check the password in --dsn, PGPASSWORD or ~/.pgpass",
        "28000" if m.contains("pg_hba") => crate::pg::diag::hba_hint(message),
        "42501" if m.contains("replication") || m.contains("wal sender") || m.contains("walsender") => "give the role the REPLICATION attribute (ALTER ROLE … REPLICATION; on Amazon RDS GRANT rds_replication) or connect as a role that has it",
        "55000" if m.contains("wal_level") => "set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart the server",
        "53400" if m.contains("replication slot") => "drop unused slots (see pg_replication_slots) or raise max_replication_slots and restart the server",
        "53300" if m.contains("max_wal_senders") || m.contains("wal sender") => "raise max_wal_senders and restart the server, or stop another replication client",
        "53300" => "too many connections; raise max_connections or close idle sessions",
        "42710" if m.contains("replication slot") => "a slot of that name exists: if it is left over from an earlier run drop it (SELECT pg_drop_replication_slot('name')), otherwise choose another name",
        "42704" if m.contains("replication slot") => "the slot does not exist (dropped, or never created): create it, or start the job over",
        "55006" if m.contains("replication slot") => "another process is using the slot; stop it (see active_pid in pg_replication_slots) or wait for it to exit",
        "57P01" => "the server terminated this connection (pg_terminate_backend or shutdown); reconnect and resume from the last confirmed position",
        "3D000" => "create the database or fix dbname in --dsn",
        _ => return None,
    };
    Some(fix.to_string())
}

/// Options for `START_REPLICATION` and the stream.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// pgoutput `proto_version` (1 is supported by every server since 10).
    pub proto_version: u32,
    /// Ask for logical decoding messages (`messages 'true'`; the option
    /// exists on 14+, so set this to false on 13).
    pub messages: bool,
    /// Events buffered between the reader and the consumer.
    pub buffer: usize,
    /// Status update interval; default a third of `wal_sender_timeout`.
    pub status_interval: Option<Duration>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            proto_version: 1,
            messages: true,
            buffer: 1024,
            status_interval: None,
        }
    }
}

/// What `CREATE_REPLICATION_SLOT` does with the slot's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it; the name in [`SlotInfo::snapshot_name`] can be imported by
    /// other sessions with `SET TRANSACTION SNAPSHOT` until the next command
    /// on this connection.
    Export,
    /// Use it in the current transaction of this connection, which must be a
    /// `REPEATABLE READ` transaction in which this is the first command.
    Use,
    /// Neither.
    NoExport,
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot name.
    pub slot_name: String,
    /// The consistent point: changes committed after it are streamed, those
    /// before it are in the snapshot.
    pub consistent_point: Lsn,
    /// Exported snapshot name ([`SnapshotAction::Export`] only).
    pub snapshot_name: Option<String>,
    /// Output plugin (`pgoutput`).
    pub output_plugin: String,
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// Cluster system identifier.
    pub systemid: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// Database this connection is bound to.
    pub dbname: Option<String>,
}

/// One result set of a simple query.
#[derive(Debug, Default, Clone)]
struct ResultSet {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

/// A replication connection (`replication=database`), ready for commands.
pub struct ReplicationClient {
    pub(crate) reader: FrameReader<BoxedStream>,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    server_major: u32,
    backend_pid: i32,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.reader.target)
            .field("server_major", &self.server_major)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

impl ReplicationClient {
    /// Open a replication connection and authenticate, within
    /// `spec.connect_timeout` per host. TLS follows the spec's `sslmode`
    /// exactly as ordinary sessions do ([`crate::pg::tls`]); several hosts
    /// are tried in order, each checked against `target_session_attrs`.
    pub async fn connect(spec: &ConnSpec) -> Result<ReplicationClient, ReplicationError> {
        let targets = spec.targets();
        let attrs = spec.options.target_session_attrs;
        let mut failures = Vec::new();
        for t in &targets {
            let result = match Self::connect_host(t, false).await {
                // `allow`: plaintext first, TLS if the server refuses plaintext.
                Err(ReplicationError::Server { .. } | ReplicationError::Closed(_))
                    if t.options.tls.mode == SslMode::Allow && matches!(t.host, Host::Tcp(_)) =>
                {
                    Self::connect_host(t, true).await
                }
                other => other,
            };
            let mut client = match result {
                Ok(c) => c,
                Err(e) if targets.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::debug!(target = %t.redacted(), error = %e, "host failed; trying the next");
                    failures.push(e.to_string());
                    continue;
                }
            };
            if attrs == TargetSessionAttrs::Any {
                return Ok(client);
            }
            let sets = client
                .query(
                    "SELECT current_setting('transaction_read_only') = 'on', pg_is_in_recovery()",
                )
                .await?;
            let row = sets
                .first()
                .and_then(|s| s.rows.first())
                .cloned()
                .unwrap_or_default();
            let flag = |i: usize| row.get(i).cloned().flatten().as_deref() == Some("t");
            let (read_only, in_recovery) = (flag(0), flag(1));
            if attrs.accepts(read_only, in_recovery) {
                return Ok(client);
            }
            failures.push(format!(
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
            ));
        }
        Err(ReplicationError::Unusable {
            target: spec.redacted(),
            tried: failures.join("; "),
        })
    }

    async fn connect_host(
        spec: &ConnSpec,
        force_tls: bool,
    ) -> Result<ReplicationClient, ReplicationError> {
        let target = spec.redacted();
        match tokio::time::timeout(spec.connect_timeout, Self::connect_inner(spec, force_tls)).await
        {
            Ok(r) => r,
            Err(_) => Err(ReplicationError::Timeout {
                target,
                after: spec.connect_timeout,
            }),
        }
    }

    /// Open the socket and negotiate TLS as `sslmode` says: never plaintext
    /// when the mode forbids it.
    /// Returns the socket and, over TLS, the channel binding data.
    async fn open_socket(
        spec: &ConnSpec,
        force_tls: bool,
    ) -> Result<(BoxedStream, Option<Vec<u8>>), ReplicationError> {
        let target = spec.redacted();
        let unreachable = |source| ReplicationError::Unreachable {
            target: target.clone(),
            source,
        };
        let host = match &spec.host {
            Host::Tcp(h) => h,
            // libpq never uses TLS on Unix-domain sockets.
            Host::Unix(dir) => {
                return Ok((
                    Box::new(
                        tokio::net::UnixStream::connect(
                            dir.join(format!(".s.PGSQL.{}", spec.port)),
                        )
                        .await
                        .map_err(unreachable)?,
                    ),
                    None,
                ))
            }
        };
        let mut s = tokio::net::TcpStream::connect((host.as_str(), spec.port))
            .await
            .map_err(unreachable)?;
        // Status updates are tiny and latency-sensitive.
        let _ = s.set_nodelay(true);
        let tls = &spec.options.tls;
        let mode = if force_tls {
            SslMode::Require.max(tls.mode)
        } else {
            tls.mode
        };
        if mode == SslMode::Disable || (mode == SslMode::Allow && !force_tls) {
            return Ok((Box::new(s), None));
        }
        let tls_err = |reason: String| ReplicationError::Tls {
            target: target.clone(),
            reason,
        };
        let config = tls.client_config().map_err(|e| tls_err(e.to_string()))?;
        if tls.negotiation == SslNegotiation::Postgres {
            // SSLRequest: length 8, code 80877103.
            let mut req = BytesMut::new();
            frontend::ssl_request(&mut req);
            s.write_all(&req)
                .await
                .map_err(|e| tls_err(format!("sending SSLRequest: {e}")))?;
            let answer = s
                .read_u8()
                .await
                .map_err(|e| tls_err(format!("reading the answer to SSLRequest: {e}")))?;
            match answer {
                b'S' => {}
                b'N' if mode.allows_plaintext() => return Ok((Box::new(s), None)),
                b'N' => {
                    return Err(tls_err(format!(
                        "the server does not support TLS, and sslmode={} forbids a plaintext connection; enable ssl on the server, or lower sslmode (prefer, allow, disable) if plaintext is acceptable",
                        mode.as_str()
                    )))
                }
                other => {
                    return Err(tls_err(format!(
                        "unexpected answer {:?} to SSLRequest",
                        char::from(other)
                    )))
                }
            }
        }
        let stream = crate::pg::tls::handshake(config, host, s)
            .await
            .map_err(|e| {
                let text = e.to_string();
                match crate::pg::tls::failure_hint(&text) {
                    Some(h) => tls_err(format!("TLS handshake failed: {text} — {h}")),
                    None => tls_err(format!("TLS handshake failed: {text}")),
                }
            })?;
        let end_point = crate::pg::tls::end_point_of(stream.get_ref().1);
        Ok((Box::new(stream), end_point))
    }

    async fn connect_inner(
        spec: &ConnSpec,
        force_tls: bool,
    ) -> Result<ReplicationClient, ReplicationError> {
        let target = spec.redacted();
        let (io, end_point) = Self::open_socket(spec, force_tls).await?;
        let mut client = ReplicationClient {
            reader: FrameReader {
                io,
                buf: BytesMut::with_capacity(16 * 1024),
                target,
            },
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            server_major: 0,
            backend_pid: 0,
        };
        client.startup(spec, end_point).await?;
        tracing::debug!(target = %client.reader.target, server_major = client.server_major, pid = client.backend_pid, "replication connection open");
        if client.server_major < 10 {
            return Err(ReplicationError::Unsupported(format!(
                "{} runs PostgreSQL {}; logical replication with pgoutput needs 10 or later (pg-rekey is tested on 15)",
                client.reader.target,
                client.params.get("server_version").map(String::as_str).unwrap_or("?")
            )));
        }
        if client.server_major >= 14 {
            client.query("SET idle_session_timeout = 0").await?;
        }
        Ok(client)
    }

    async fn startup(
        &mut self,
        spec: &ConnSpec,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let binding = spec.options.tls.channel_binding;
        let mut bound = false;
        let params = [
            ("user", spec.user.as_str()),
            ("database", spec.dbname.as_str()),
            ("replication", "database"),
            ("application_name", spec.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("options", crate::pg::SESSION_OPTIONS),
        ];
        frontend::startup_message(params, &mut self.wbuf).map_err(|e| self.io_err("startup", e))?;
        self.send().await?;
        let mut scram: Option<ScramSha256> = None;
        let need_password = |this: &Self| {
            spec.password.clone().ok_or_else(|| {
                ReplicationError::Auth(format!(
                    "{} asks for a password for role {:?} and none was given — set it in --dsn, PGPASSWORD or ~/.pgpass",
                    this.reader.target, spec.user
                ))
            })
        };
        loop {
            let f = self.reader.read_frame().await?;
            match f.tag {
                b'R' => {
                    let mut c = Cursor::new(&f.body, "Authentication");
                    match c.i32()? {
                        0 if binding == ChannelBindingMode::Require && !bound => {
                            return Err(ReplicationError::Auth(format!(
                                "channel_binding=require, but {} authenticated this connection without channel binding (it needs TLS and scram-sha-256 in pg_hba.conf); lower channel_binding or change the server's method",
                                self.reader.target
                            )));
                        }
                        0 => {}
                        3 => {
                            let pw = need_password(self)?;
                            frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                                .map_err(|e| self.io_err("password", e))?;
                            self.send().await?;
                        }
                        5 => {
                            let pw = need_password(self)?;
                            let salt: [u8; 4] = c.take(4)?.try_into().map_err(|_| {
                                ReplicationError::Protocol("md5 salt is truncated".into())
                            })?;
                            let hash = md5_hash(spec.user.as_bytes(), pw.as_bytes(), salt);
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                                .map_err(|e| self.io_err("password", e))?;
                            self.send().await?;
                        }
                        10 => {
                            let mut offered = Vec::new();
                            while !c.is_empty() {
                                let m = c.cstr()?;
                                if m.is_empty() {
                                    break;
                                }
                                offered.push(m.to_string());
                            }
                            if !offered.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(ReplicationError::Auth(format!(
                                    "the server offers SASL mechanisms {offered:?}; pg-rekey supports SCRAM-SHA-256 — use scram-sha-256 or md5 in pg_hba.conf"
                                )));
                            }
                            let pw = need_password(self)?;
                            // Bind to the TLS channel when both sides can
                            // (tls-server-end-point), as libpq's default
                            // channel_binding=prefer does.
                            let plus = offered.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                            let (mechanism, cb) = match (&end_point, binding) {
                                (Some(h), ChannelBindingMode::Prefer | ChannelBindingMode::Require) if plus => {
                                    bound = true;
                                    ("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(h.clone()))
                                }
                                (_, ChannelBindingMode::Require) => {
                                    return Err(ReplicationError::Auth(format!(
                                        "channel_binding=require, but {} offers no SCRAM-SHA-256-PLUS on this connection (it needs TLS, and a certificate signed with RSA or ECDSA with SHA-2)",
                                        self.reader.target
                                    )))
                                }
                                (Some(_), ChannelBindingMode::Prefer) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                                _ => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                            };
                            let s = ScramSha256::new(pw.as_bytes(), cb);
                            frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
                                .map_err(|e| self.io_err("SASL", e))?;
                            scram = Some(s);
                            self.send().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASLContinue before SASL start".into())
                            })?;
                            s.update(c.rest()).map_err(|e| {
                                ReplicationError::Auth(format!("SCRAM exchange failed: {e}"))
                            })?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)
                                .map_err(|e| self.io_err("SASL", e))?;
                            self.send().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplicationError::Protocol("SASLFinal before SASL start".into())
                            })?;
                            // Verifies the server's signature: a server that does not know
                            // the password cannot pass this.
                            s.finish(c.rest()).map_err(|e| {
                                ReplicationError::Auth(format!(
                                    "the server's SCRAM signature does not verify ({e}); the server may not be who it claims"
                                ))
                            })?;
                        }
                        other => {
                            let name = match other {
                                2 => "Kerberos V5",
                                6 => "SCM credentials",
                                7 | 8 => "GSSAPI",
                                9 => "SSPI",
                                _ => "an unknown method",
                            };
                            return Err(ReplicationError::Auth(format!(
                                "the server asks for {name} (code {other}), which pg-rekey does not support — use trust, password, md5 or scram-sha-256 for this role in pg_hba.conf"
                            )));
                        }
                    }
                }
                b'K' => {
                    let mut c = Cursor::new(&f.body, "BackendKeyData");
                    self.backend_pid = c.i32()?;
                }
                b'Z' => return Ok(()),
                other => self.common(other, &f.body)?,
            }
        }
    }

    /// Messages that may arrive at any time: ParameterStatus, NoticeResponse,
    /// ErrorResponse. Anything else here is a protocol violation.
    fn common(&mut self, tag: u8, body: &[u8]) -> Result<(), ReplicationError> {
        match tag {
            b'S' => {
                let mut c = Cursor::new(body, "ParameterStatus");
                let k = c.cstr()?.to_string();
                let v = c.cstr()?.to_string();
                if k == "server_version" {
                    self.server_major = parse_major(&v);
                }
                self.params.insert(k, v);
                Ok(())
            }
            b'N' => {
                log_notice(body);
                Ok(())
            }
            b'E' => Err(server_error(body)),
            other => Err(ReplicationError::Protocol(format!(
                "unexpected message {:?} from {}",
                char::from(other),
                self.reader.target
            ))),
        }
    }

    fn io_err(&self, context: &str, source: std::io::Error) -> ReplicationError {
        ReplicationError::Io {
            target: self.reader.target.clone(),
            context: context.to_string(),
            source,
        }
    }

    async fn send(&mut self) -> Result<(), ReplicationError> {
        let buf = self.wbuf.split();
        let io = &mut self.reader.io;
        let r = async {
            io.write_all(&buf).await?;
            io.flush().await
        }
        .await;
        r.map_err(|e| self.io_err("writing to the server", e))
    }

    /// Run a simple query and collect every result set, until ReadyForQuery.
    /// An ErrorResponse is returned after ReadyForQuery, so the connection
    /// stays usable.
    async fn query(&mut self, sql: &str) -> Result<Vec<ResultSet>, ReplicationError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.io_err("query", e))?;
        self.send().await?;
        let mut sets = Vec::new();
        let mut cur: Option<ResultSet> = None;
        let mut error = None;
        loop {
            let f = self.reader.read_frame().await?;
            match f.tag {
                b'T' => {
                    let mut c = Cursor::new(&f.body, "RowDescription");
                    let n = c.i16()?;
                    let mut columns = Vec::new();
                    for _ in 0..n {
                        columns.push(c.cstr()?.to_string());
                        c.take(18)?; // table oid, attnum, type oid, typlen, typmod, format
                    }
                    cur = Some(ResultSet {
                        columns,
                        rows: Vec::new(),
                    });
                }
                b'D' => {
                    let mut c = Cursor::new(&f.body, "DataRow");
                    let n = c.i16()?;
                    let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                    for _ in 0..n {
                        let len = c.i32()?;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = c.take(usize::try_from(len).unwrap_or(usize::MAX))?;
                            row.push(Some(String::from_utf8_lossy(v).into_owned()));
                        }
                    }
                    cur.get_or_insert_with(ResultSet::default).rows.push(row);
                }
                b'C' | b'I' => {
                    if let Some(set) = cur.take() {
                        sets.push(set);
                    }
                }
                b'E' => error = Some(server_error(&f.body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(sets),
                    }
                }
                b'G' | b'H' | b'W' => {
                    return Err(ReplicationError::Protocol(format!(
                        "{sql:?} started a COPY, which simple_query does not support; use start_replication"
                    )))
                }
                other => self.common(other, &f.body)?,
            }
        }
    }

    /// Run SQL (or a replication command) with the simple query protocol and
    /// return the rows of every result set, as text.
    ///
    /// On a `replication=database` connection this runs ordinary SQL too, so
    /// `BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ`, then
    /// [`create_slot`](Self::create_slot) with [`SnapshotAction::Use`], then a
    /// `SELECT` read the slot's snapshot on this one connection.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        Ok(self
            .query(sql)
            .await?
            .into_iter()
            .flat_map(|s| s.rows)
            .collect())
    }

    async fn query_row(&mut self, sql: &str, what: &str) -> Result<ResultSet, ReplicationError> {
        let set = self
            .query(sql)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        if set.rows.is_empty() {
            return Err(ReplicationError::Protocol(format!(
                "{what} returned no row"
            )));
        }
        Ok(set)
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let set = self.query_row("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM").await?;
        let bad = |f: &str| ReplicationError::Protocol(format!("IDENTIFY_SYSTEM: bad {f}"));
        Ok(SystemInfo {
            systemid: set
                .get(0, "systemid")
                .ok_or_else(|| bad("systemid"))?
                .to_string(),
            timeline: set
                .get(0, "timeline")
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("timeline"))?,
            xlogpos: set
                .get(0, "xlogpos")
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("xlogpos"))?,
            dbname: set.get(0, "dbname").map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput` with a snapshot action.
    ///
    /// Waits for every transaction that holds an xid to finish (statement
    /// timeouts are off on this connection, so a long writer delays it rather
    /// than failing it).
    pub async fn create_slot(
        &mut self,
        name: &str,
        snapshot: SnapshotAction,
    ) -> Result<SlotInfo, ReplicationError> {
        self.create_slot_as(name, snapshot, Lifetime::Persistent)
            .await
    }

    /// [`ReplicationClient::create_slot`] with a `TEMPORARY` slot: the
    /// server drops it when this connection ends, whatever ends it (a
    /// killed process leaves nothing behind). For a snapshot and its
    /// consistent point only; nothing is streamed from it.
    pub async fn create_temporary_slot(
        &mut self,
        name: &str,
        snapshot: SnapshotAction,
    ) -> Result<SlotInfo, ReplicationError> {
        self.create_slot_as(name, snapshot, Lifetime::Temporary)
            .await
    }

    async fn create_slot_as(
        &mut self,
        name: &str,
        snapshot: SnapshotAction,
        lifetime: Lifetime,
    ) -> Result<SlotInfo, ReplicationError> {
        validate_slot_name(name)?;
        let sql = slot_sql(name, lifetime, snapshot, self.server_major);
        let set = self.query_row(&sql, "CREATE_REPLICATION_SLOT").await?;
        let bad = |f: &str| ReplicationError::Protocol(format!("CREATE_REPLICATION_SLOT: bad {f}"));
        let info = SlotInfo {
            slot_name: set
                .get(0, "slot_name")
                .ok_or_else(|| bad("slot_name"))?
                .to_string(),
            consistent_point: set
                .get(0, "consistent_point")
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("consistent_point"))?,
            snapshot_name: set.get(0, "snapshot_name").map(str::to_string),
            output_plugin: set
                .get(0, "output_plugin")
                .unwrap_or("pgoutput")
                .to_string(),
        };
        tracing::debug!(slot = %info.slot_name, consistent_point = %info.consistent_point, snapshot = ?snapshot, "replication slot created");
        Ok(info)
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`: with `wait`, wait for a walsender
    /// still using the slot to exit instead of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), ReplicationError> {
        validate_slot_name(name)?;
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(name),
            if wait { " WAIT" } else { "" }
        );
        self.query(&sql).await?;
        tracing::debug!(slot = name, "replication slot dropped");
        Ok(())
    }

    /// `SHOW param` (the replication command), as text.
    pub async fn show(&mut self, param: &str) -> Result<String, ReplicationError> {
        if param.is_empty()
            || !param
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(ReplicationError::InvalidName {
                what: "parameter",
                name: param.to_string(),
                reason: "use a configuration parameter name (letters, digits, _ and .)".into(),
            });
        }
        let set = self.query_row(&format!("SHOW {param}"), "SHOW").await?;
        Ok(set
            .rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .unwrap_or_default())
    }

    /// Server major version reported at startup (e.g. 15).
    pub fn server_major(&self) -> u32 {
        self.server_major
    }

    /// A parameter the server reported at startup (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// PID of the walsender serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Redacted target, for logs.
    pub fn target(&self) -> &str {
        &self.reader.target
    }

    /// Send Terminate and close the socket.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.wbuf);
        self.send().await?;
        let _ = self.reader.io.shutdown().await;
        Ok(())
    }

    /// Send `START_REPLICATION` (see [`super::stream`]'s
    /// `ReplicationClient::start_replication`, which hands the connection to
    /// a stream) and wait for CopyBothResponse. Returns the position the
    /// server starts from (the later of `start` and the slot's
    /// `confirmed_flush_lsn`) and `wal_sender_timeout`.
    pub(crate) async fn start_copy_both(
        &mut self,
        slot: &str,
        start: Lsn,
        publications: &[String],
        options: &StartOptions,
    ) -> Result<(Lsn, Option<Duration>), ReplicationError> {
        validate_slot_name(slot)?;
        let sql = start_replication_sql(slot, start, publications, options)?;
        let timeout = parse_pg_interval(&self.show("wal_sender_timeout").await?);
        let rows = self
            .simple_query(&format!(
                "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        let confirmed: Option<Lsn> = rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok());
        let effective = confirmed.map_or(start, |c| c.max(start));
        frontend::query(&sql, &mut self.wbuf).map_err(|e| self.io_err("query", e))?;
        self.send().await?;
        loop {
            let f = self.reader.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'E' => {
                    let e = server_error(&f.body);
                    // Drain to ReadyForQuery so the error is the whole story.
                    while let Ok(f) = self.reader.read_frame().await {
                        if f.tag == b'Z' {
                            break;
                        }
                    }
                    return Err(e);
                }
                other => self.common(other, &f.body)?,
            }
        }
        tracing::debug!(slot, start = %effective, publications = %publications.join(","), wal_sender_timeout = %timeout.map(crate::units::format_duration).unwrap_or_else(|| "off".into()), "logical replication started");
        Ok((effective, timeout))
    }

    /// Take the connection apart for streaming: framed reader (with any
    /// buffered bytes) and its write buffer.
    pub(crate) fn into_parts(
        self,
    ) -> (FrameReader<BoxedStream>, HashMap<String, String>, u32, i32) {
        (
            self.reader,
            self.params,
            self.server_major,
            self.backend_pid,
        )
    }

    /// Reassemble after streaming stopped cleanly.
    pub(crate) fn from_parts(
        reader: FrameReader<BoxedStream>,
        params: HashMap<String, String>,
        server_major: u32,
        backend_pid: i32,
    ) -> Self {
        ReplicationClient {
            reader,
            wbuf: BytesMut::with_capacity(1024),
            params,
            server_major,
            backend_pid,
        }
    }
}

pub(crate) fn log_notice(body: &[u8]) {
    if let Ok(m) = parse_server_message(body) {
        tracing::info!(severity = %m.severity, code = %m.code, message = %m.message, "server notice");
    }
}

/// Major version from `server_version` text such as `15.8 (Debian 15.8-1)` or `9.6.2`.
pub fn parse_major(version: &str) -> u32 {
    version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// Check a slot name the way the server does (lower-case letters, digits and
/// underscores, at most 63 bytes), so a bad name fails here with a clear
/// message instead of as a syntax error.
pub fn validate_slot_name(name: &str) -> Result<(), ReplicationError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > 63 {
        "it is longer than 63 bytes"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        "slot names may contain only lower-case letters, digits and underscores"
    } else {
        return Ok(());
    };
    Err(ReplicationError::InvalidName {
        what: "replication slot",
        name: name.to_string(),
        reason: reason.to_string(),
    })
}

/// The `CREATE_REPLICATION_SLOT` command for a server major version: the
/// option-list syntax on 15+, the keyword syntax before.
pub fn create_slot_sql(name: &str, snapshot: SnapshotAction, server_major: u32) -> String {
    slot_sql(name, Lifetime::Persistent, snapshot, server_major)
}

/// Whether a slot outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Kept until dropped.
    Persistent,
    /// Dropped by the server when the connection that made it ends.
    Temporary,
}

/// The `CREATE_REPLICATION_SLOT` command for a slot of `lifetime`.
pub fn slot_sql(
    name: &str,
    lifetime: Lifetime,
    snapshot: SnapshotAction,
    server_major: u32,
) -> String {
    let slot = match lifetime {
        Lifetime::Persistent => quote_ident(name),
        Lifetime::Temporary => format!("{} TEMPORARY", quote_ident(name)),
    };
    if server_major >= 15 {
        let s = match snapshot {
            SnapshotAction::Export => "export",
            SnapshotAction::Use => "use",
            SnapshotAction::NoExport => "nothing",
        };
        format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT '{s}')")
    } else {
        let s = match snapshot {
            SnapshotAction::Export => "EXPORT_SNAPSHOT",
            SnapshotAction::Use => "USE_SNAPSHOT",
            SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
        };
        format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput {s}")
    }
}

/// The `START_REPLICATION` command. Publication names are double-quoted
/// identifiers joined by commas inside one string literal, which is how the
/// server's `SplitIdentifierString` reads `publication_names`.
pub fn start_replication_sql(
    slot: &str,
    start: Lsn,
    publications: &[String],
    options: &StartOptions,
) -> Result<String, ReplicationError> {
    if publications.is_empty() {
        return Err(ReplicationError::InvalidName {
            what: "publication",
            name: String::new(),
            reason: "at least one publication is needed".into(),
        });
    }
    for p in publications {
        if p.is_empty() || p.contains('\0') {
            return Err(ReplicationError::InvalidName {
                what: "publication",
                name: p.clone(),
                reason: "publication names must be non-empty and hold no NUL".into(),
            });
        }
    }
    let list = publications
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join(",");
    // `messages` is unknown before 14: leave it out unless asked for.
    Ok(format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '{}', publication_names {}{})",
        quote_ident(slot),
        options.proto_version,
        quote_literal(&list),
        if options.messages {
            ", messages 'true'"
        } else {
            ""
        }
    ))
}

/// Parse a duration as `SHOW` prints it (`4s`, `1min`, `500ms`, `0`); `None`
/// when zero (disabled) or unreadable. A bare number is in milliseconds, the
/// base unit of `wal_sender_timeout`.
pub fn parse_pg_interval(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sql_by_version() {
        assert_eq!(
            create_slot_sql("s1", SnapshotAction::Export, 15),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_slot_sql("s1", SnapshotAction::NoExport, 16),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            create_slot_sql("s1", SnapshotAction::Use, 14),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput USE_SNAPSHOT"
        );
        assert_eq!(
            create_slot_sql("s1", SnapshotAction::Export, 13),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            slot_sql("s1", Lifetime::Temporary, SnapshotAction::Export, 14),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            slot_sql("s1", Lifetime::Temporary, SnapshotAction::Export, 17),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        );
    }

    #[test]
    fn start_sql_quotes_publications() {
        let sql = start_replication_sql(
            "s",
            Lsn(0x16_B374_D848),
            &["p1".into(), "We\"ird'pub".into()],
            &StartOptions::default(),
        )
        .unwrap();
        assert_eq!(
            sql,
            "START_REPLICATION SLOT \"s\" LOGICAL 16/B374D848 (proto_version '1', publication_names '\"p1\",\"We\"\"ird''pub\"', messages 'true')"
        );
        assert!(start_replication_sql("s", Lsn(0), &[], &StartOptions::default()).is_err());
        let quiet = StartOptions {
            messages: false,
            ..StartOptions::default()
        };
        assert_eq!(
            start_replication_sql("s", Lsn(1), &["p".into()], &quiet).unwrap(),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/1 (proto_version '1', publication_names '\"p\"')"
        );
    }

    #[test]
    fn slot_names_are_checked() {
        assert!(validate_slot_name("pgrekey_01").is_ok());
        for bad in ["", "Upper", "a-b", "a b", "x\"", &"a".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_pg_interval("4s"), Some(Duration::from_secs(4)));
        assert_eq!(parse_pg_interval("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_interval("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_interval("2500"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_pg_interval("0"), None);
        assert_eq!(parse_pg_interval("soon"), None);
        assert_eq!(parse_pg_interval("3 fortnights"), None);
    }

    #[test]
    fn majors() {
        assert_eq!(parse_major("15.8 (Debian 15.8-1.pgdg120+1)"), 15);
        assert_eq!(parse_major("9.6.2"), 9);
        assert_eq!(parse_major("17devel"), 17);
        assert_eq!(parse_major("?"), 0);
    }

    #[test]
    fn error_response_parses_and_gets_a_fix() {
        let mut body = Vec::new();
        for (t, v) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "55000"),
            (b'M', "logical decoding requires wal_level >= logical"),
        ] {
            body.push(t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let e = server_error(&body);
        let text = e.to_string();
        assert_eq!(e.sqlstate(), Some("55000"));
        assert!(
            text.contains("wal_level = logical") && text.contains("restart"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        // Truncated input is an error, not a panic.
        for n in 0..body.len() - 1 {
            let _ = server_error(&body[..n]);
        }
        assert!(matches!(server_error(b"Cx"), ReplicationError::Protocol(_)));
    }

    #[test]
    fn fixes_by_sqlstate() {
        assert!(fix_for(
            "42501",
            "must be superuser or replication role to start walsender"
        )
        .unwrap()
        .contains("REPLICATION"));
        assert!(fix_for("53400", "all replication slots are in use")
            .unwrap()
            .contains("max_replication_slots"));
        assert!(fix_for(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 1)"
        )
        .unwrap()
        .contains("max_wal_senders"));
        assert!(fix_for("42710", "replication slot \"x\" already exists").is_some());
        assert!(fix_for("28P01", "password authentication failed").is_some());
        assert_eq!(fix_for("42501", "permission denied for table t"), None);
        assert_eq!(fix_for("XX000", "boom"), None);
    }

    #[test]
    fn cursor_never_panics() {
        let mut c = Cursor::new(&[1, 2, 3], "test");
        assert!(c.i32().is_err());
        assert_eq!(c.i16().unwrap(), 0x0102);
        assert!(c.cstr().is_err());
        assert_eq!(c.u8().unwrap(), 3);
        assert!(c.u8().is_err());
        assert!(c.i64().is_err());
    }

    #[tokio::test]
    async fn frames_split_and_join() {
        // Two messages delivered in awkward pieces, and EOF afterwards.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        bytes.extend_from_slice(&[b'c', 0, 0, 0, 4]);
        let (mut a, b) = tokio::io::duplex(3);
        let writer = crate::task::spawn("test-writer", async move {
            for chunk in bytes.chunks(2) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = FrameReader {
            io: b,
            buf: BytesMut::new(),
            target: "test".into(),
        };
        let f = r.read_frame().await.unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        let f = r.read_frame().await.unwrap();
        assert_eq!((f.tag, f.body.len()), (b'c', 0));
        writer.await.unwrap();
        assert!(matches!(
            r.read_frame().await,
            Err(ReplicationError::Closed(_))
        ));
    }
}
