//! Server errors: which SQLSTATEs are worth a retry, the hints shown for
//! connection failures, and the rendering of an error's whole source chain
//! (tokio-postgres errors print only "db error" at the top level). Pure; the
//! crate's [`crate::Error`] and every module's own error type use these, so
//! the rules exist once.

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

/// Whether a driver error may go away on retry: a transient SQLSTATE, or
/// no server error at all (the connection itself broke).
pub fn is_transient_pg(e: &tokio_postgres::Error) -> bool {
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

/// A server error as `message (SQLSTATE x); detail; hint: h`, or the
/// driver's chain when there is no server error.
pub fn db_message(e: &tokio_postgres::Error) -> String {
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

/// What went wrong opening a session, and what to do about it.
pub fn connect_hint(e: &tokio_postgres::Error) -> String {
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
    if let Some(h) = super::tls::failure_hint(&text) {
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
    fn chain_skips_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
