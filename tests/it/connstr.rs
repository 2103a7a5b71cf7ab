//! Connection strings as libpq reads them, against a real server: several
//! hosts tried in order (the first a closed port), `target_session_attrs`,
//! and a missing password explained. Parsing itself is unit-tested in
//! `src/pg/conn.rs`.

use pg_rekey::pg::ConnSpec;
use pg_rekey::replication::wire::ReplicationClient;

use crate::support::{self, TestDb};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn server_port(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn several_hosts_are_tried_in_order() {
    if !support::own_cluster() {
        return; // needs the harness's loopback server
    }
    let db = TestDb::new().await;
    let port = db.spec.port;
    let closed = closed_port();
    for dsn in [
        format!(
            "host=127.0.0.1,127.0.0.1 port={closed},{port} user=postgres dbname={}",
            db.name
        ),
        format!(
            "postgres://postgres@127.0.0.1:{closed},127.0.0.1:{port}/{}?target_session_attrs=read-write",
            db.name
        ),
    ] {
        let spec = ConnSpec::parse(&dsn).unwrap();
        let c = pg_rekey::pg::connect(&spec, "test")
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {}", pg_rekey::error::chain(&e)));
        assert_eq!(server_port(&c).await, i32::from(port));
        let mut r = ReplicationClient::connect(&spec)
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {e}"));
        assert_eq!(
            r.identify_system().await.unwrap().dbname.as_deref(),
            Some(db.name.as_str())
        );
    }
    // Every host down: each is named.
    let other = closed_port();
    let spec = ConnSpec::parse(&format!(
        "host=127.0.0.1,127.0.0.1 port={closed},{other} user=postgres dbname={} connect_timeout=2",
        db.name
    ))
    .unwrap();
    let e = pg_rekey::pg::connect(&spec, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{closed}")) && e.contains(&format!("127.0.0.1:{other}")),
        "{e}"
    );
    let e = ReplicationClient::connect(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no host") && e.contains(&format!("127.0.0.1:{other}")),
        "{e}"
    );
}

#[tokio::test]
async fn target_session_attrs_skips_a_server_that_does_not_fit() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // This database opens read-only transactions by default, as a standby would.
    c.batch_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        db.name
    ))
    .await
    .unwrap();
    let mut spec = db.spec.clone();
    spec.options.target_session_attrs = pg_rekey::pg::conn::TargetSessionAttrs::ReadWrite;
    let e = pg_rekey::pg::connect(&spec, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("read-only") && e.contains("target_session_attrs=read-write"),
        "{e}"
    );
    let e = ReplicationClient::connect(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("target_session_attrs=read-write"), "{e}");
    spec.options.target_session_attrs = pg_rekey::pg::conn::TargetSessionAttrs::ReadOnly;
    pg_rekey::pg::connect(&spec, "test").await.unwrap();
    ReplicationClient::connect(&spec).await.unwrap();
}

#[tokio::test]
async fn a_missing_password_says_where_to_put_it() {
    if !support::own_cluster() {
        return; // the md5 role exists on the harness's server only
    }
    let db = TestDb::new().await;
    let spec = db.spec.with_user(support::MD5_ROLE, None);
    let e = pg_rekey::pg::connect(&spec, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("PGPASSWORD") && e.contains(".pgpass"), "{e}");
    let e = ReplicationClient::connect(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("PGPASSWORD") && e.contains(".pgpass"), "{e}");
}

/// A Unix-domain socket never carries TLS, as in libpq, whatever `sslmode`
/// says (`prefer` by default, `require` too): ordinary sessions and the
/// replication connection both connect, in plaintext.
#[tokio::test]
async fn unix_sockets_connect_without_tls_whatever_sslmode_says() {
    if !support::own_cluster() {
        return; // needs the harness's socket directory
    }
    let db = TestDb::new().await;
    let c = db.client().await;
    let dir: String = c
        .query_one(
            "SELECT split_part(current_setting('unix_socket_directories'), ',', 1)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for mode in ["", " sslmode=prefer", " sslmode=require"] {
        let dsn = format!(
            "host={dir} port={} user=postgres dbname={}{mode}",
            db.spec.port, db.name
        );
        let spec = ConnSpec::parse(&dsn).unwrap();
        let s = pg_rekey::pg::connect(&spec, "test")
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {}", pg_rekey::error::chain(&e)));
        let (ssl, via_socket): (bool, bool) = {
            let r = s
                .query_one(
                    "SELECT ssl, inet_client_addr() IS NULL FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((ssl, via_socket), (false, true), "{dsn}");
        let mut r = ReplicationClient::connect(&spec)
            .await
            .unwrap_or_else(|e| panic!("replication, {dsn}: {e}"));
        assert_eq!(
            r.identify_system().await.unwrap().dbname.as_deref(),
            Some(db.name.as_str()),
            "{dsn}"
        );
    }
}
