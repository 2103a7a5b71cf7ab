//! Where to connect, resolved the way psql resolves it.
//!
//! A [`ConnSpec`] comes from `--dsn` or `DATABASE_URL` (a libpq URL or a
//! `key=value` string), with the standard `PG*` environment variables filling
//! what the string leaves out and `.pgpass` supplying a missing password. The
//! same spec opens ordinary `tokio-postgres` sessions and the replication
//! connection, so both always reach the same server as the same role.
//!
//! The password is kept out of `Debug` and [`ConnSpec::redacted`]; nothing in
//! pg-rekey logs a DSN any other way.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Where the server listens.
    pub host: Host,
    /// Port (also names the Unix socket).
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if any was given or found in `.pgpass`.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// `application_name` reported to the server.
    pub application_name: String,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Why a connection string could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnSpecError {
    /// The string is neither a valid URL nor a valid key=value list.
    #[error("cannot parse the connection string: {reason}; use a URL such as postgres://user@host:5432/db or key=value pairs such as \"host=localhost dbname=app\"")]
    Parse {
        /// What the parser objected to.
        reason: String,
    },
    /// A port value that is not a number.
    #[error("PGPORT={0:?} is not a port number; set it to a number such as 5432")]
    BadPort(String),
}

/// Environment lookups, injectable so tests need not touch the process environment.
pub trait Env {
    /// The value of a variable, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl ConnSpec {
    /// Resolve a connection string against the process environment and `.pgpass`.
    pub fn parse(dsn: &str) -> Result<Self, ConnSpecError> {
        Self::parse_with(dsn, &ProcessEnv)
    }

    /// Resolve a connection string against a given environment.
    pub fn parse_with(dsn: &str, env: &dyn Env) -> Result<Self, ConnSpecError> {
        let cfg: tokio_postgres::Config = if dsn.trim().is_empty() {
            tokio_postgres::Config::new()
        } else {
            dsn.parse()
                .map_err(|e: tokio_postgres::Error| ConnSpecError::Parse {
                    reason: e.to_string(),
                })?
        };
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
            Some(tokio_postgres::config::Host::Unix(p)) => Host::Unix(p.clone()),
            None => match env.var("PGHOST") {
                Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
                Some(h) => Host::Tcp(h),
                None => default_host(),
            },
        };
        let port = match cfg.get_ports().first() {
            Some(p) => *p,
            None => match env.var("PGPORT") {
                Some(p) => p.parse().map_err(|_| ConnSpecError::BadPort(p))?,
                None => 5432,
            },
        };
        let user = cfg
            .get_user()
            .map(str::to_string)
            .or_else(|| env.var("PGUSER"))
            .or_else(|| env.var("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        let dbname = cfg
            .get_dbname()
            .map(str::to_string)
            .or_else(|| env.var("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let mut password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .or_else(|| env.var("PGPASSWORD"));
        if password.is_none() {
            let file = env
                .var("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".pgpass")));
            if let Some(file) = file {
                if let Ok(text) = std::fs::read_to_string(&file) {
                    let host_text = match &host {
                        Host::Tcp(h) => h.clone(),
                        Host::Unix(_) => "localhost".to_string(),
                    };
                    password = pgpass_lookup(&text, &host_text, port, &dbname, &user);
                }
            }
        }
        let application_name = cfg
            .get_application_name()
            .map(str::to_string)
            .or_else(|| env.var("PGAPPNAME"))
            .unwrap_or_else(|| "pg-rekey".to_string());
        let connect_timeout = cfg
            .get_connect_timeout()
            .copied()
            .or_else(|| {
                env.var("PGCONNECT_TIMEOUT")
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_secs)
            })
            .unwrap_or(Duration::from_secs(10));
        Ok(ConnSpec {
            host,
            port,
            user,
            password,
            dbname,
            application_name,
            connect_timeout,
        })
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
        ConnSpec {
            user: user.to_string(),
            password: password.map(str::to_string),
            ..self.clone()
        }
    }

    /// `host:port/db as user`, without the password, for logs and errors.
    pub fn redacted(&self) -> String {
        let host = match &self.host {
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(p) => format!("{}/.s.PGSQL.{}", p.display(), self.port),
        };
        format!("{host}/{} as {}", self.dbname, self.user)
    }

    /// A `key=value` string that libpq and tokio-postgres both accept.
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
        s
    }

    /// Configuration for an ordinary (non-replication) tokio-postgres session.
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

    #[test]
    fn pgpass_file_is_read() {
        let dir = std::env::temp_dir().join(format!("pgrekey-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "h9:5432:d:u:frompass\n").unwrap();
        let env = MapEnv(HashMap::from([("PGPASSFILE", file.display().to_string())]));
        let s = ConnSpec::parse_with("host=h9 dbname=d user=u", &env).unwrap();
        assert_eq!(s.password.as_deref(), Some("frompass"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dsn_round_trips() {
        let env = MapEnv(HashMap::new());
        let s = ConnSpec::parse_with("host=h user='a b' password=it\\'s dbname=d", &env).unwrap();
        let again = ConnSpec::parse_with(&s.to_dsn(), &env).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let env = MapEnv(HashMap::new());
        let e = ConnSpec::parse_with("postgres://[::1", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot parse the connection string"), "{e}");
    }
}
