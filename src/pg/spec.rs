//! What reading a connection spec rests on: the environment it falls back
//! to ([`Env`]) and the ways it can be wrong ([`ConnSpecError`]). Shared by
//! [`super::conn`] (the spec) and [`super::tls`] (its TLS part), which
//! both import from here and not from each other's back.

/// Why a connection string could not be used. Each names the part at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnSpecError {
    /// A `key=value` string that does not follow the syntax.
    #[error("connection string: {reason}; write key=value pairs separated by spaces, quoting values that hold spaces with single quotes (host=db dbname='my db')")]
    Syntax {
        /// What is wrong and where.
        reason: String,
    },
    /// A URL that does not follow the syntax.
    #[error("connection URL: {reason}; the form is postgres://user:password@host:port,host2:port2/dbname?key=value")]
    Url {
        /// What is wrong and where.
        reason: String,
    },
    /// A `%` escape that is not `%` plus two hex digits.
    #[error("connection URL: invalid percent-encoded token {token:?} in the {part}; write a literal % as %25")]
    Percent {
        /// Which part of the URL.
        part: &'static str,
        /// The bad escape.
        token: String,
    },
    /// A key libpq does not know.
    #[error("invalid connection option {0:?}; see the libpq parameter list (host, port, dbname, user, password, sslmode, …)")]
    UnknownOption(String),
    /// A libpq option pg-rekey does not implement.
    #[error("connection option {key}={value:?} is not supported by pg-rekey: {fix}")]
    Unsupported {
        /// The option.
        key: String,
        /// Its value.
        value: String,
        /// What to do instead.
        fix: String,
    },
    /// A value outside the option's range.
    #[error("invalid value {value:?} for {key}: expected {expected}")]
    BadValue {
        /// The option (or environment variable).
        key: String,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// More or fewer ports than hosts.
    #[error("{ports} ports for {hosts} hosts: give one port for all hosts, or one per host (host=a,b port=5432,5433)")]
    PortCount {
        /// Number of hosts.
        hosts: usize,
        /// Number of ports.
        ports: usize,
    },
    /// TLS settings that contradict each other or name a missing file.
    #[error("{0}")]
    Tls(String),
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
