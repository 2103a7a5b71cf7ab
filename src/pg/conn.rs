//! Where to connect, resolved the way libpq (and so psql) resolves it.
//!
//! A [`ConnSpec`] comes from `--dsn` or `DATABASE_URL` (a libpq URL or a
//! `key=value` string), with the standard `PG*` environment variables filling
//! what the string leaves out and `.pgpass` supplying a missing password. The
//! same spec opens ordinary `tokio-postgres` sessions and the replication
//! connection, so both always reach the same server as the same role, with the
//! same TLS settings ([`TlsSettings`]).
//!
//! The string is parsed here, not by tokio-postgres, so that every malformed
//! part gets its own error ([`ConnSpecError`]): a key without `=`, an
//! unterminated quote, an unknown option, a bad `sslmode`, a `%zz` escape in a
//! URL, more ports than hosts. Several hosts (`host=a,b port=1,2`,
//! `postgres://a:1,b:2/db`) are tried in order ([`ConnSpec::targets`]), each
//! checked against `target_session_attrs`.
//!
//! The password is kept out of `Debug` and [`ConnSpec::redacted`]; nothing in
//! pg-rekey logs a DSN any other way.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::spec::{ConnSpecError, Env, ProcessEnv};
pub use super::tls::{RootCert, SslMode, SslNegotiation, TlsSettings};

/// Host to connect to: a TCP host name or a Unix-socket directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// TCP host name or address.
    Tcp(String),
    /// Directory holding the server's `.s.PGSQL.<port>` socket.
    Unix(PathBuf),
}

/// A fully resolved connection target.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnSpec {
    /// Where the server listens (the first host of a list).
    pub host: Host,
    /// Port (also names the Unix socket).
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if any was given or found in `.pgpass` (for the first host).
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// `application_name` reported to the server.
    pub application_name: String,
    /// Give up connecting (to each host) after this long.
    pub connect_timeout: Duration,
    /// TLS, further hosts and `target_session_attrs`.
    pub options: ConnOptions,
}

/// The parts of a connection string beyond one host, role and database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnOptions {
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslnegotiation`.
    pub tls: TlsSettings,
    /// The second and later hosts of `host=a,b,c`, tried in order after the first.
    pub more_hosts: Vec<AltHost>,
    /// Which server of the list is acceptable.
    pub target_session_attrs: TargetSessionAttrs,
}

/// A further host of a host list, with the password `.pgpass` gives for it.
#[derive(Clone, PartialEq, Eq)]
pub struct AltHost {
    /// Where it listens.
    pub host: Host,
    /// Its port.
    pub port: u16,
    /// Password for it (the string's or `PGPASSWORD`, else `.pgpass`'s line for this host).
    pub password: Option<String>,
}

impl std::fmt::Debug for AltHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}:{}", self.host, self.port)
    }
}

/// `target_session_attrs`: which of several servers is acceptable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// Any server that accepts the connection.
    #[default]
    Any,
    /// A server that accepts writes (`transaction_read_only` is off).
    ReadWrite,
    /// A server that does not accept writes.
    ReadOnly,
    /// A server that is not in recovery.
    Primary,
    /// A server in recovery (a hot standby).
    Standby,
}

impl TargetSessionAttrs {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
        }
    }

    /// Whether a server with these settings is acceptable.
    pub fn accepts(self, read_only: bool, in_recovery: bool) -> bool {
        match self {
            Self::Any => true,
            Self::ReadWrite => !read_only,
            Self::ReadOnly => read_only,
            Self::Primary => !in_recovery,
            Self::Standby => in_recovery,
        }
    }
}

impl std::fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Options pg-rekey reads, with the environment variable that supplies each
/// when the string does not. `keepalives*` and `tcp_user_timeout` are
/// validated and otherwise left to pg-rekey's own choices (lock-holding
/// sessions set short keepalives, see [`crate::pg::connect_cutover`]).
const OPTIONS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("dbname", Some("PGDATABASE")),
    ("passfile", Some("PGPASSFILE")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslsni", Some("PGSSLSNI")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("sslcompression", None),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
];

/// libpq options pg-rekey refuses, with the reason.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("hostaddr", "give the address as host= (verify-full then checks the certificate against that address)"),
    ("service", "write the service's settings into the connection string"),
    ("options", "pg-rekey pins its own session settings; set server parameters with ALTER ROLE … SET instead"),
    ("replication", "pg-rekey opens its replication connection itself"),
    ("sslpassword", "decrypt the key file first (openssl pkey -in key.enc -out key.pem)"),
    ("sslcrl", "certificate revocation lists are not checked; remove the option"),
    ("sslcrldir", "certificate revocation lists are not checked; remove the option"),
    ("requirepeer", "connect over TCP or drop the option"),
    ("require_auth", "restrict the methods in pg_hba.conf instead"),
    ("krbsrvname", "GSSAPI/Kerberos is not supported"),
    ("gsslib", "GSSAPI/Kerberos is not supported"),
    ("gssdelegation", "GSSAPI/Kerberos is not supported"),
    ("load_balance_hosts", "hosts are tried in the order given"),
    ("sslcertmode", "a client certificate is sent when sslcert (or ~/.postgresql/postgresql.crt) exists"),
];

impl ConnSpec {
    /// Resolve a connection string against the process environment and `.pgpass`.
    pub fn parse(dsn: &str) -> Result<Self, ConnSpecError> {
        Self::parse_with(dsn, &ProcessEnv)
    }

    /// Resolve a connection string against a given environment.
    pub fn parse_with(dsn: &str, env: &dyn Env) -> Result<Self, ConnSpecError> {
        let trimmed = dsn.trim();
        let pairs = if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            parse_url(trimmed)?
        } else if trimmed.contains("://") {
            return Err(ConnSpecError::Url {
                reason: format!(
                    "unknown scheme {:?} (expected postgres:// or postgresql://)",
                    trimmed.split("://").next().unwrap_or_default()
                ),
            });
        } else {
            parse_keyvalue(trimmed)?
        };
        let mut given: std::collections::HashMap<&'static str, String> =
            std::collections::HashMap::new();
        for (k, v) in pairs {
            if let Some((name, _)) = OPTIONS.iter().find(|(n, _)| *n == k) {
                given.insert(name, v);
            } else if let Some((_, fix)) = UNSUPPORTED.iter().find(|(n, _)| *n == k) {
                return Err(ConnSpecError::Unsupported {
                    key: k,
                    value: v,
                    fix: (*fix).to_string(),
                });
            } else {
                return Err(ConnSpecError::UnknownOption(k));
            }
        }
        // A string value wins; the environment fills the rest.
        let get = |name: &str| -> Option<(String, String)> {
            if let Some(v) = given.get(name) {
                return Some((name.to_string(), v.clone()));
            }
            let var = OPTIONS.iter().find(|(n, _)| *n == name)?.1?;
            env.var(var).map(|v| (var.to_string(), v))
        };
        let bad = |key: &str, value: &str, expected: &str| ConnSpecError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        };

        let hosts: Vec<Host> = match get("host").filter(|(_, v)| !v.is_empty()) {
            Some((_, v)) => v
                .split(',')
                .map(|h| match h.trim() {
                    "" => default_host(),
                    h if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
                    h => Host::Tcp(h.to_string()),
                })
                .collect(),
            None => vec![default_host()],
        };
        let ports: Vec<u16> = match get("port").filter(|(_, v)| !v.is_empty()) {
            Some((key, v)) => v
                .split(',')
                .map(|p| match p.trim() {
                    "" => Ok(5432),
                    p => p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad(&key, p, "a port number from 1 to 65535")),
                })
                .collect::<Result<_, _>>()?,
            None => vec![5432],
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(ConnSpecError::PortCount {
                hosts: hosts.len(),
                ports: ports.len(),
            });
        }
        let port_of = |i: usize| ports.get(i).copied().unwrap_or(ports[0]);
        let user = get("user")
            .map(|(_, v)| v)
            .or_else(|| env.var("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        let dbname = get("dbname")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| user.clone());
        let explicit_password = get("password").map(|(_, v)| v);
        let passfile = get("passfile")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".pgpass")));
        let pgpass = match (&explicit_password, passfile) {
            (None, Some(file)) => read_pgpass(&file),
            _ => None,
        };
        let password_for = |host: &Host, port: u16| {
            explicit_password.clone().or_else(|| {
                let host_text = match host {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(_) => "localhost".to_string(),
                };
                pgpass
                    .as_deref()
                    .and_then(|text| pgpass_lookup(text, &host_text, port, &dbname, &user))
            })
        };
        let application_name = get("application_name")
            .or_else(|| get("fallback_application_name"))
            .map(|(_, v)| v)
            .unwrap_or_else(|| "pg-rekey".to_string());
        let connect_timeout = match get("connect_timeout") {
            Some((key, v)) => {
                let secs: i64 = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(&key, &v, "a whole number of seconds"))?;
                // libpq: 0 or negative waits forever; below 2 s counts as 2 s.
                if secs <= 0 {
                    Duration::from_secs(24 * 3600)
                } else {
                    Duration::from_secs(secs.max(2) as u64)
                }
            }
            None => Duration::from_secs(10),
        };
        let target_session_attrs = match get("target_session_attrs") {
            Some((key, v)) => TargetSessionAttrs::parse(&v)
                .ok_or_else(|| bad(&key, &v, "any, read-write, read-only, primary or standby"))?,
            None => TargetSessionAttrs::Any,
        };
        for (name, allowed, fix) in [(
            "gssencmode",
            &["disable", "prefer"][..],
            "GSSAPI encryption is not supported; use TLS (sslmode) instead",
        )] {
            if let Some((key, v)) = get(name) {
                if !allowed.contains(&v.as_str()) {
                    let known = ["require", "disable", "prefer"].contains(&v.as_str());
                    return Err(if known {
                        ConnSpecError::Unsupported {
                            key,
                            value: v,
                            fix: fix.to_string(),
                        }
                    } else {
                        bad(&key, &v, "disable, prefer or require")
                    });
                }
            }
        }
        for name in [
            "keepalives",
            "keepalives_idle",
            "keepalives_interval",
            "keepalives_count",
            "tcp_user_timeout",
        ] {
            if let Some((key, v)) = get(name) {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(&key, &v, "a whole number"))?;
            }
        }
        if let Some((key, v)) = get("client_encoding") {
            if !v.eq_ignore_ascii_case("utf8") && !v.eq_ignore_ascii_case("utf-8") {
                return Err(ConnSpecError::Unsupported {
                    key,
                    value: v,
                    fix: "pg-rekey always talks UTF8 to the server; remove the option".into(),
                });
            }
        }
        let tls = TlsSettings::resolve(&get, env)?;

        let mut targets = hosts
            .into_iter()
            .enumerate()
            .map(|(i, host)| AltHost {
                password: password_for(&host, port_of(i)),
                port: port_of(i),
                host,
            })
            .collect::<Vec<_>>()
            .into_iter();
        let first = targets.next().unwrap_or(AltHost {
            host: default_host(),
            port: 5432,
            password: None,
        });
        Ok(ConnSpec {
            host: first.host,
            port: first.port,
            password: first.password,
            user,
            dbname,
            application_name,
            connect_timeout,
            options: ConnOptions {
                tls,
                more_hosts: targets.collect(),
                target_session_attrs,
            },
        })
    }

    /// The hosts to try, in order, each as a single-host spec with its own password.
    pub fn targets(&self) -> Vec<ConnSpec> {
        let mut out = vec![ConnSpec {
            options: ConnOptions {
                more_hosts: Vec::new(),
                ..self.options.clone()
            },
            ..self.clone()
        }];
        for alt in &self.options.more_hosts {
            out.push(ConnSpec {
                host: alt.host.clone(),
                port: alt.port,
                password: alt.password.clone(),
                options: ConnOptions {
                    more_hosts: Vec::new(),
                    ..self.options.clone()
                },
                ..self.clone()
            });
        }
        out
    }

    /// The same target with another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        ConnSpec {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// The same target as another role (password cleared).
    pub fn with_user(&self, user: &str, password: Option<&str>) -> Self {
        let mut s = ConnSpec {
            user: user.to_string(),
            password: password.map(str::to_string),
            ..self.clone()
        };
        for alt in &mut s.options.more_hosts {
            alt.password = password.map(str::to_string);
        }
        s
    }

    /// `host:port/db as user`, without the password, for logs and errors.
    pub fn redacted(&self) -> String {
        let one = |host: &Host, port: u16| match host {
            Host::Tcp(h) => format!("{h}:{port}"),
            Host::Unix(p) => format!("{}/.s.PGSQL.{port}", p.display()),
        };
        let mut hosts = one(&self.host, self.port);
        for alt in &self.options.more_hosts {
            hosts.push(',');
            hosts.push_str(&one(&alt.host, alt.port));
        }
        format!("{hosts}/{} as {}", self.dbname, self.user)
    }

    /// A `key=value` string that libpq accepts, for the first host (TLS settings included).
    pub fn to_dsn(&self) -> String {
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        let mut s = format!(
            "host={} port={} user={} dbname={} application_name={}",
            kv_quote(&host),
            self.port,
            kv_quote(&self.user),
            kv_quote(&self.dbname),
            kv_quote(&self.application_name)
        );
        if let Some(p) = &self.password {
            s.push_str(&format!(" password={}", kv_quote(p)));
        }
        s.push_str(&self.options.tls.to_dsn_part());
        s
    }

    /// Configuration for an ordinary (non-replication) tokio-postgres
    /// session to the first host (TLS is set by [`crate::pg::connect`]).
    pub fn to_tokio(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => cfg.host(h),
            Host::Unix(p) => cfg.host_path(p),
        };
        cfg.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout);
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        cfg
    }
}

/// Split a `key=value` string into pairs, as libpq does: spaces around `=`
/// are allowed, values may be single-quoted, `\` escapes the next character.
fn parse_keyvalue(s: &str) -> Result<Vec<(String, String)>, ConnSpecError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    let syntax = |reason: String| ConnSpecError::Syntax { reason };
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(syntax(format!("missing \"=\" after {key:?}")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(syntax(format!(
                        "unterminated quoted value for {key:?} (a ' opens it and none closes it)"
                    )))
                    }
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(syntax(format!(
                                "unterminated quoted value for {key:?} (it ends in a backslash)"
                            )))
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(syntax(
                "a value without a key (\"=\" with nothing before it)".into(),
            ));
        }
        out.push((key, value));
    }
}

/// Decode `%XX` escapes; anything else after `%` is an error, as in libpq.
fn percent_decode(s: &str, part: &'static str) -> Result<String, ConnSpecError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| {
                std::str::from_utf8(h)
                    .ok()
                    .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            });
            match hex {
                Some(0) | None => {
                    return Err(ConnSpecError::Percent {
                        part,
                        token: s[i..].chars().take(3).collect(),
                    })
                }
                Some(v) => {
                    out.push(v);
                    i += 3;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnSpecError::Url {
        reason: format!("the {part} does not decode to UTF-8"),
    })
}

/// Split a `postgres://` URL into the same pairs a `key=value` string gives.
fn parse_url(s: &str) -> Result<Vec<(String, String)>, ConnSpecError> {
    let url_err = |reason: String| ConnSpecError::Url { reason };
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .unwrap_or(s);
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    let mut out = Vec::new();
    let hostlist = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), percent_decode(user, "user name")?));
            }
            if let Some(p) = password {
                out.push(("password".into(), percent_decode(p, "password")?));
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in hostlist.split(',') {
            let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
                let end = v6.find(']').ok_or_else(|| {
                    url_err(format!("missing \"]\" after the IPv6 address in {spec:?}"))
                })?;
                let after = &v6[end + 1..];
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        url_err(format!(
                            "unexpected {p:?} after the IPv6 address in {spec:?} (expected :port)"
                        ))
                    })?),
                };
                (&v6[..end], port)
            } else {
                match spec.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (spec, None),
                }
            };
            hosts.push(percent_decode(host, "host")?);
            ports.push(match port {
                Some(p) => percent_decode(p, "port")?,
                None => String::new(),
            });
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db, "database name")?));
    }
    if let Some(q) = query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| url_err(format!("query parameter {kv:?} has no \"=\"")))?;
            let k = percent_decode(k, "query parameter name")?;
            let v = percent_decode(v, "query parameter value")?;
            // libpq's URL alias.
            let k = if k == "ssl" && v == "true" {
                out.push(("sslmode".into(), "require".into()));
                continue;
            } else {
                k
            };
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Read a password file, refusing (with a warning, as libpq) one that group or
/// others may read, or that is not a plain file.
fn read_pgpass(file: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        tracing::warn!(file = %file.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less — ignoring it (chmod 600 {})",
            file.display()
        );
        return None;
    }
    std::fs::read_to_string(file).ok()
}

fn default_host() -> Host {
    for dir in ["/var/run/postgresql", "/tmp"] {
        if Path::new(dir).is_dir()
            && std::fs::read_dir(dir).is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL.")))
            })
        {
            return Host::Unix(PathBuf::from(dir));
        }
    }
    Host::Tcp("localhost".to_string())
}

fn kv_quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Find a password in `.pgpass` text: `host:port:db:user:password`, `*` matches
/// anything, `\:` and `\\` escape. The first matching line wins, as in libpq.
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], host) && m(&fields[1], &port) && m(&fields[2], db) && m(&fields[3], user) {
            return Some(fields[4].clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    #[test]
    fn url_and_keyvalue_agree() {
        let env = MapEnv(HashMap::new());
        let a = ConnSpec::parse_with("postgres://alice:s3cret@db.example:6543/app", &env).unwrap();
        let b = ConnSpec::parse_with(
            "host=db.example port=6543 user=alice password=s3cret dbname=app",
            &env,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.host, Host::Tcp("db.example".into()));
        assert_eq!(a.port, 6543);
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        assert!(!a.redacted().contains("s3cret"));
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn environment_fills_gaps() {
        let env = MapEnv(HashMap::from([
            ("PGHOST", "h1".to_string()),
            ("PGPORT", "7000".to_string()),
            ("PGUSER", "bob".to_string()),
            ("PGDATABASE", "shop".to_string()),
            ("PGPASSWORD", "pw".to_string()),
        ]));
        let s = ConnSpec::parse_with("", &env).unwrap();
        assert_eq!(
            (s.host.clone(), s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("h1".into()), 7000, "bob", "shop")
        );
        assert_eq!(s.password.as_deref(), Some("pw"));
        // The string wins over the environment.
        let s = ConnSpec::parse_with("dbname=other", &env).unwrap();
        assert_eq!(s.dbname, "other");
        let bad = MapEnv(HashMap::from([("PGPORT", "x".to_string())]));
        assert!(ConnSpec::parse_with("", &bad).is_err());
    }

    #[test]
    fn pgpass_matching() {
        let text = "# comment\nother:*:*:*:no\nh1:7000:shop:bob:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "h1", 7000, "shop", "bob").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            pgpass_lookup(text, "h2", 1, "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("h:1:d:u:p", "h", 2, "d", "u"), None);
    }

    fn pgpass_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgrekey-pgpass-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pgpass_file_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = pgpass_dir("ok");
        let file = dir.join("pgpass");
        std::fs::write(&file, "h9:5432:d:u:frompass\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = MapEnv(HashMap::from([("PGPASSFILE", file.display().to_string())]));
        let s = ConnSpec::parse_with("host=h9 dbname=d user=u", &env).unwrap();
        assert_eq!(s.password.as_deref(), Some("frompass"));
        // passfile= in the string works the same.
        let s = ConnSpec::parse_with(
            &format!("host=h9 dbname=d user=u passfile={}", file.display()),
            &MapEnv(HashMap::new()),
        )
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("frompass"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pgpass_readable_by_others_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = pgpass_dir("open");
        let file = dir.join("pgpass");
        std::fs::write(&file, "*:*:*:*:leaked\n").unwrap();
        let env = MapEnv(HashMap::from([("PGPASSFILE", file.display().to_string())]));
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let s = ConnSpec::parse_with("host=h dbname=d user=u", &env).unwrap();
            assert_eq!(s.password, None, "mode {mode:o}");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        let s = ConnSpec::parse_with("host=h dbname=d user=u", &env).unwrap();
        assert_eq!(s.password.as_deref(), Some("leaked"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pgpass_is_looked_up_per_host() {
        use std::os::unix::fs::PermissionsExt;
        let dir = pgpass_dir("hosts");
        let file = dir.join("pgpass");
        std::fs::write(&file, "a:1:d:u:pa\nb:2:d:u:pb\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = MapEnv(HashMap::from([("PGPASSFILE", file.display().to_string())]));
        let s = ConnSpec::parse_with("host=a,b port=1,2 dbname=d user=u", &env).unwrap();
        let pw: Vec<_> = s.targets().into_iter().map(|t| t.password).collect();
        assert_eq!(pw, vec![Some("pa".to_string()), Some("pb".to_string())]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn err(dsn: &str) -> ConnSpecError {
        ConnSpec::parse_with(dsn, &MapEnv(HashMap::new())).unwrap_err()
    }

    #[test]
    fn each_malformed_part_has_its_own_error() {
        let cases: &[(&str, &str)] = &[
            ("host=a dbname", "missing \"=\" after \"dbname\""),
            ("host='a", "unterminated quoted value for \"host\""),
            ("=x", "a value without a key"),
            ("hots=a", "invalid connection option \"hots\""),
            ("hostaddr=1.2.3.4", "hostaddr=\"1.2.3.4\" is not supported"),
            ("port=54x2", "invalid value \"54x2\" for port"),
            ("port=0", "invalid value \"0\" for port"),
            ("host=a,b,c port=1,2", "2 ports for 3 hosts"),
            ("sslmode=verify", "invalid value \"verify\" for sslmode"),
            (
                "sslnegotiation=fast",
                "invalid value \"fast\" for sslnegotiation",
            ),
            (
                "connect_timeout=soon",
                "invalid value \"soon\" for connect_timeout",
            ),
            (
                "target_session_attrs=rw",
                "invalid value \"rw\" for target_session_attrs",
            ),
            (
                "gssencmode=require",
                "gssencmode=\"require\" is not supported",
            ),
            (
                "channel_binding=always",
                "invalid value \"always\" for channel_binding",
            ),
            (
                "postgres://u:p%zz@h/d",
                "invalid percent-encoded token \"%zz\" in the password",
            ),
            (
                "postgres://h/d%2",
                "invalid percent-encoded token \"%2\" in the database name",
            ),
            ("postgres://h/d%00", "invalid percent-encoded token \"%00\""),
            ("postgres://[::1/d", "missing \"]\""),
            (
                "postgres://h/d?sslmode",
                "query parameter \"sslmode\" has no \"=\"",
            ),
            (
                "postgres://h/d?nope=1",
                "invalid connection option \"nope\"",
            ),
            ("mysql://h/d", "unknown scheme \"mysql\""),
        ];
        for (dsn, want) in cases {
            let e = err(dsn).to_string();
            assert!(e.contains(want), "{dsn}: got {e:?}, wanted {want:?}");
        }
    }

    #[test]
    fn urls_are_percent_decoded() {
        let env = MapEnv(HashMap::new());
        let s = ConnSpec::parse_with(
            "postgresql://us%40er:p%3Aw%2F%25@h%2Dx:6000/my%20db?application_name=a%26b",
            &env,
        )
        .unwrap();
        assert_eq!(s.user, "us@er");
        assert_eq!(s.password.as_deref(), Some("p:w/%"));
        assert_eq!(s.host, Host::Tcp("h-x".into()));
        assert_eq!(s.dbname, "my db");
        assert_eq!(s.application_name, "a&b");
        // A Unix-socket directory as an encoded host.
        let s = ConnSpec::parse_with("postgres://%2Fvar%2Frun%2Fpostgresql/d", &env).unwrap();
        assert_eq!(s.host, Host::Unix("/var/run/postgresql".into()));
        let s = ConnSpec::parse_with("postgres://[::1]:7/d", &env).unwrap();
        assert_eq!((s.host, s.port), (Host::Tcp("::1".into()), 7));
    }

    #[test]
    fn several_hosts_are_kept_in_order() {
        let env = MapEnv(HashMap::new());
        let a = ConnSpec::parse_with(
            "host=a,b,c port=1,2,3 dbname=d user=u target_session_attrs=read-write",
            &env,
        )
        .unwrap();
        let b = ConnSpec::parse_with(
            "postgres://u@a:1,b:2,c:3/d?target_session_attrs=read-write",
            &env,
        )
        .unwrap();
        assert_eq!(a, b);
        let t: Vec<_> = a
            .targets()
            .iter()
            .map(|t| (t.host.clone(), t.port))
            .collect();
        assert_eq!(
            t,
            vec![
                (Host::Tcp("a".into()), 1),
                (Host::Tcp("b".into()), 2),
                (Host::Tcp("c".into()), 3)
            ]
        );
        assert_eq!(
            a.options.target_session_attrs,
            TargetSessionAttrs::ReadWrite
        );
        assert!(a.redacted().starts_with("a:1,b:2,c:3/d"));
        // One port for every host; a missing URL port is the default.
        let s = ConnSpec::parse_with("host=a,b port=9", &env).unwrap();
        assert_eq!(s.targets()[1].port, 9);
        let s = ConnSpec::parse_with("postgres://a,b:9/d", &env).unwrap();
        assert_eq!((s.port, s.targets()[1].port), (5432, 9));
        // PGHOST/PGPORT lists too.
        let env = MapEnv(HashMap::from([
            ("PGHOST", "x,y".to_string()),
            ("PGPORT", "5,6".to_string()),
        ]));
        let s = ConnSpec::parse_with("", &env).unwrap();
        assert_eq!(s.targets()[1].host, Host::Tcp("y".into()));
    }

    #[test]
    fn tls_settings_like_libpq() {
        let none = MapEnv(HashMap::new());
        let s = ConnSpec::parse_with("host=h", &none).unwrap();
        assert_eq!(s.options.tls.mode, SslMode::Prefer, "libpq's default");
        let env = MapEnv(HashMap::from([("PGSSLMODE", "require".to_string())]));
        let s = ConnSpec::parse_with("host=h", &env).unwrap();
        assert_eq!(s.options.tls.mode, SslMode::Require);
        let s = ConnSpec::parse_with("host=h sslmode=disable", &env).unwrap();
        assert_eq!(s.options.tls.mode, SslMode::Disable, "the string wins");
        let s = ConnSpec::parse_with("postgres://h/d?ssl=true", &none).unwrap();
        assert_eq!(s.options.tls.mode, SslMode::Require);
        // Verifying modes need a root certificate that exists.
        let e = err("host=h sslmode=verify-full sslrootcert=/nonexistent/ca.crt").to_string();
        assert!(e.contains("\"/nonexistent/ca.crt\" does not exist"), "{e}");
        let e = err("host=h sslmode=verify-ca").to_string();
        assert!(e.contains("needs a root certificate"), "{e}");
        // ... but a missing default file is fine for require.
        let s =
            ConnSpec::parse_with("host=h sslmode=require sslrootcert=/nonexistent", &none).unwrap();
        assert_eq!(s.options.tls.root_cert, None);
        // sslrootcert=system: verify-full by default, weaker modes refused.
        let s = ConnSpec::parse_with("host=h sslrootcert=system", &none).unwrap();
        assert_eq!(s.options.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.options.tls.root_cert, Some(RootCert::System));
        let e = err("host=h sslrootcert=system sslmode=require").to_string();
        assert!(e.contains("weak sslmode \"require\""), "{e}");
        let e = err("host=h sslnegotiation=direct").to_string();
        assert!(e.contains("sslnegotiation=direct"), "{e}");
        let s =
            ConnSpec::parse_with("host=h sslnegotiation=direct sslmode=require", &none).unwrap();
        assert_eq!(s.options.tls.negotiation, SslNegotiation::Direct);
        // A client certificate without its key.
        let dir = pgpass_dir("cert");
        let cert = dir.join("c.crt");
        std::fs::write(&cert, "x").unwrap();
        let e = err(&format!(
            "host=h sslcert={} sslkey=/nonexistent.key",
            cert.display()
        ))
        .to_string();
        assert!(e.contains("not private key file"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
        // Settings survive to_dsn.
        let s =
            ConnSpec::parse_with("host=h sslmode=require sslnegotiation=direct", &none).unwrap();
        assert_eq!(ConnSpec::parse_with(&s.to_dsn(), &none).unwrap(), s);
    }

    #[test]
    fn dsn_round_trips() {
        let env = MapEnv(HashMap::new());
        let s = ConnSpec::parse_with("host=h user='a b' password=it\\'s dbname=d", &env).unwrap();
        let again = ConnSpec::parse_with(&s.to_dsn(), &env).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn target_session_attrs_decide() {
        use TargetSessionAttrs::*;
        assert!(Any.accepts(true, true));
        assert!(ReadWrite.accepts(false, false) && !ReadWrite.accepts(true, false));
        assert!(ReadOnly.accepts(true, true) && !ReadOnly.accepts(false, false));
        assert!(Primary.accepts(true, false) && !Primary.accepts(true, true));
        assert!(Standby.accepts(true, true) && !Standby.accepts(false, false));
    }
}
