//! TLS on every connection, as libpq does it: a server with `ssl = on` and a
//! certificate authority made here (rcgen), a rewrite and a cutover whose
//! every session — SQL sessions and the walsender — is encrypted, and the
//! refusals: a wrong CA, a wrong host name under `verify-full`, `require`
//! against a server without TLS, a `hostssl`-only role over plaintext, a
//! client certificate the server demands.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pg_rekey::embedded::{Cluster, ClusterOptions, ServerTls};
use pg_rekey::pg::conn::{RootCert, SslMode, SslNegotiation};
use pg_rekey::pg::tls::ChannelBindingMode;
use pg_rekey::pg::{ConnSpec, Host};
use pg_rekey::replication::wire::ReplicationClient;
use pg_rekey::rewrite::{self, RewriteOutcome};
use pg_rekey::workload;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::watch;

use crate::support::{self, TestDb};

/// Role that `pg_hba.conf` accepts only over TLS.
const TLS_ONLY_ROLE: &str = "rekey_tls_only";
/// Role that must present a client certificate.
const CERT_ROLE: &str = "rekey_cert";
/// Role that logs in with SCRAM-SHA-256 over TLS (the server offers channel binding).
const SCRAM_ROLE: &str = "rekey_tls_scram";
const SCRAM_PASSWORD: &str = "tls-pw";

/// Certificates made for this test binary.
struct Pki {
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
    /// A client certificate for [`CERT_ROLE`] and its key.
    client_cert: PathBuf,
    client_key: PathBuf,
    server: ServerTls,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgrekey-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_for = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(p, key))
        };
        let (ca_pem, ca) = ca_for("pg-rekey test CA");
        let (other_pem, _) = ca_for("some other CA");
        // The server's certificate names only the IP address: connecting as
        // "localhost" is a host-name mismatch.
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        sp.distinguished_name
            .push(DnType::CommonName, "pg-rekey test server");
        let skey = KeyPair::generate().unwrap();
        let scert = sp.signed_by(&skey, &ca).unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name.push(DnType::CommonName, CERT_ROLE);
        let ckey = KeyPair::generate().unwrap();
        let ccert = cp.signed_by(&ckey, &ca).unwrap();
        let write = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        Pki {
            ca: write("ca.crt", &ca_pem),
            other_ca: write("other_ca.crt", &other_pem),
            client_cert: write("client.crt", &ccert.pem()),
            client_key: write("client.key", &ckey.serialize_pem()),
            server: ServerTls {
                cert_pem: scert.pem(),
                key_pem: skey.serialize_pem(),
                client_ca_pem: Some(ca_pem),
            },
        }
    })
}

/// A second server of this binary's own, with `ssl = on`, connections logged.
fn tls_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let opts = ClusterOptions {
            tls: Some(pki().server.clone()),
            hba_lines: vec![
                format!("hostnossl all {TLS_ONLY_ROLE} 127.0.0.1/32 reject"),
                format!("hostssl all {CERT_ROLE} 127.0.0.1/32 cert"),
                format!("hostssl all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256"),
            ],
            extra_conf: vec![
                "log_connections = on".into(),
                "wal_sender_timeout = '4s'".into(),
            ],
            ..ClusterOptions::default()
        };
        Cluster::start(&opts).unwrap_or_else(|e| panic!("cannot start the TLS test server: {e}"))
    })
}

/// A fresh database on the TLS server, and a spec for it that demands TLS
/// verified against the test CA, host name included.
async fn tls_db() -> TestDb {
    support::init_logging();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let cluster = tokio::task::spawn_blocking(tls_cluster).await.unwrap();
    let name = format!(
        "tls{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut spec = cluster.spec("postgres");
    spec.options.tls.mode = SslMode::VerifyFull;
    spec.options.tls.root_cert = Some(RootCert::File(pki().ca.clone()));
    let admin = support::connect(&spec).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .await
        .expect("create database on the TLS server");
    static ROLES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ROLES
        .get_or_init(|| async {
            admin
                .batch_execute(&format!(
                    "CREATE ROLE {TLS_ONLY_ROLE} LOGIN REPLICATION; CREATE ROLE {CERT_ROLE} LOGIN REPLICATION;
                     SET password_encryption = 'scram-sha-256';
                     CREATE ROLE {SCRAM_ROLE} LOGIN REPLICATION PASSWORD '{SCRAM_PASSWORD}'"
                ))
                .await
                .expect("create roles on the TLS server");
        })
        .await;
    spec.application_name = format!("pgrekey-{name}");
    TestDb {
        spec: spec.with_dbname(&name),
        name,
    }
}

/// `(backend_type, ssl)` of every session with this application name.
async fn ssl_of_sessions(c: &tokio_postgres::Client, app: &str) -> Vec<(String, bool)> {
    c.query(
        "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name = $1 AND a.pid <> pg_backend_pid() ORDER BY 1",
        &[&app],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Whether our own session is encrypted.
async fn own_ssl(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    pg_rekey::error::chain(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_and_cutover_use_tls_on_every_session() {
    let db = tls_db().await;
    let app = db.spec.application_name.clone();
    // The test's own observer session has another name.
    let mut observer = db.spec.clone();
    observer.application_name = "observer".into();
    let c = support::connect(&observer).await;
    assert!(own_ssl(&c).await);
    workload::create_schema(&c).await.unwrap();
    workload::seed(&c, 100, 1_000).await.unwrap();

    let tables = ["sessions", "api_access_tokens"];
    let (stop, rx) = watch::channel(false);
    let cfg = crate::rewrite::example_config(&db, &tables);
    let job = tokio::spawn(async move {
        rewrite::run(&cfg, rx, pg_rekey::progress::JobProgress::new()).await
    });
    crate::rewrite::wait_phase(&c, &tables, "streaming").await;

    // Live sessions of the rewrite: the walsender and the SQL sessions.
    let live = ssl_of_sessions(&c, &app).await;
    assert!(
        live.iter().any(|(t, _)| t == "walsender"),
        "no walsender among {live:?}"
    );
    assert!(
        live.iter().any(|(t, _)| t == "client backend"),
        "no SQL session among {live:?}"
    );
    assert!(
        live.iter().all(|(_, ssl)| *ssl),
        "a session without TLS: {live:?}"
    );

    let report = pg_rekey::cutover::run(&crate::cutover::cutover_cfg(&db, &tables))
        .await
        .unwrap();
    assert!(report.swapped, "{report:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::CutOver);
    drop(stop);

    // Every session any of it ever opened (copy sessions included, long
    // gone): the server logged each authorization with its TLS state.
    let log = std::fs::read_to_string(tls_cluster().log_file()).unwrap();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authorized") && l.contains(&format!("application_name={app}")))
        .collect();
    assert!(
        ours.iter()
            .any(|l| l.contains("replication connection authorized")),
        "no replication connection logged: {ours:#?}"
    );
    assert!(ours.len() >= 5, "too few sessions logged: {ours:#?}");
    let plain: Vec<&&str> = ours.iter().filter(|l| !l.contains("SSL enabled")).collect();
    assert!(plain.is_empty(), "sessions without TLS: {plain:#?}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let db = tls_db().await;
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let mut spec = db.spec.clone();
        spec.options.tls.mode = mode;
        spec.options.tls.root_cert = Some(RootCert::File(pki().other_ca.clone()));
        let e = chain(&pg_rekey::pg::connect(&spec, "test").await.unwrap_err());
        assert!(
            e.contains("UnknownIssuer") && e.contains("sslrootcert"),
            "{mode:?}: {e}"
        );
        let e = ReplicationClient::connect(&spec)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("UnknownIssuer") && e.contains("sslrootcert"),
            "{mode:?}: {e}"
        );
    }
    // require with a root file given checks the chain too (libpq's rule).
    let mut spec = db.spec.clone();
    spec.options.tls.mode = SslMode::Require;
    spec.options.tls.root_cert = Some(RootCert::File(pki().other_ca.clone()));
    assert!(pg_rekey::pg::connect(&spec, "test").await.is_err());
    // require without one does not verify, but encrypts.
    spec.options.tls.root_cert = None;
    let c = pg_rekey::pg::connect(&spec, "test").await.unwrap();
    assert!(own_ssl(&c).await);
}

#[tokio::test]
async fn a_wrong_host_name_is_refused_under_verify_full_only() {
    let db = tls_db().await;
    // The certificate names 127.0.0.1, not localhost.
    let mut spec = db.spec.clone();
    spec.host = Host::Tcp("localhost".into());
    let e = chain(&pg_rekey::pg::connect(&spec, "test").await.unwrap_err());
    assert!(
        e.contains("not valid for name") && e.contains("does not name the host"),
        "{e}"
    );
    let e = ReplicationClient::connect(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not valid for name") && e.contains("does not name the host"),
        "{e}"
    );
    // verify-ca checks the chain only: the same host connects, encrypted.
    spec.options.tls.mode = SslMode::VerifyCa;
    let c = pg_rekey::pg::connect(&spec, "test").await.unwrap();
    assert!(own_ssl(&c).await);
    let mut r = ReplicationClient::connect(&spec).await.unwrap();
    r.identify_system().await.unwrap();
}

#[tokio::test]
async fn require_never_falls_back_to_plaintext() {
    if !support::own_cluster() {
        return; // a server given by PGREKEY_TEST_DSN may well have TLS
    }
    // The main harness server runs without TLS.
    let db = TestDb::new().await;
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let mut spec = db.spec.clone();
        spec.options.tls.mode = mode;
        spec.options.tls.root_cert = Some(RootCert::File(pki().ca.clone()));
        let e = chain(&pg_rekey::pg::connect(&spec, "test").await.unwrap_err());
        assert!(e.contains("does not support TLS"), "{mode:?}: {e}");
        let e = ReplicationClient::connect(&spec)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not support TLS") && e.contains("forbids a plaintext connection"),
            "{mode:?}: {e}"
        );
    }
    // PGSSLMODE reaches the binary as it reaches psql.
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        db.spec.port, db.name
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .args(["status", "--dsn", &dsn])
        .env("PGSSLMODE", "require")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not support TLS"), "{stderr}");
    // Direct negotiation cannot fall back either.
    let mut spec = db.spec.clone();
    spec.options.tls.mode = SslMode::Require;
    spec.options.tls.negotiation = SslNegotiation::Direct;
    assert!(pg_rekey::pg::connect(&spec, "test").await.is_err());
    assert!(ReplicationClient::connect(&spec).await.is_err());
    // prefer (the default) and allow connect in plaintext, as libpq does.
    for mode in [SslMode::Prefer, SslMode::Allow] {
        let mut spec = db.spec.clone();
        spec.options.tls.mode = mode;
        let c = pg_rekey::pg::connect(&spec, "test").await.unwrap();
        assert!(!own_ssl(&c).await, "{mode:?}");
        ReplicationClient::connect(&spec).await.unwrap();
    }
}

#[tokio::test]
async fn modes_below_require_take_tls_when_offered_and_allow_when_refused() {
    let db = tls_db().await;
    let mut spec = db.spec.clone();
    spec.options.tls.mode = SslMode::Prefer;
    spec.options.tls.root_cert = None;
    assert!(own_ssl(&pg_rekey::pg::connect(&spec, "test").await.unwrap()).await);
    spec.options.tls.mode = SslMode::Disable;
    assert!(!own_ssl(&pg_rekey::pg::connect(&spec, "test").await.unwrap()).await);
    // allow: plaintext first; the TLS-only role is refused in plaintext, so TLS.
    let tls_only = spec.with_user(TLS_ONLY_ROLE, None);
    let mut allow = tls_only.clone();
    allow.options.tls.mode = SslMode::Allow;
    assert!(own_ssl(&pg_rekey::pg::connect(&allow, "test").await.unwrap()).await);
    ReplicationClient::connect(&allow).await.unwrap();
}

#[tokio::test]
async fn a_hostssl_only_role_is_told_to_use_tls() {
    let db = tls_db().await;
    let mut spec = db.spec.with_user(TLS_ONLY_ROLE, None);
    spec.options.tls.mode = SslMode::Disable;
    let e = pg_rekey::pg::connect(&spec, "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("only over TLS") && e.contains("sslmode=require"),
        "{e}"
    );
    let e = ReplicationClient::connect(&spec)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("only over TLS") && e.contains("sslmode=require"),
        "{e}"
    );
    spec.options.tls.mode = SslMode::VerifyFull;
    assert!(own_ssl(&pg_rekey::pg::connect(&spec, "test").await.unwrap()).await);
}

#[tokio::test]
async fn client_certificates_are_sent() {
    let db = tls_db().await;
    let mut spec = db.spec.with_user(CERT_ROLE, None);
    let e = chain(&pg_rekey::pg::connect(&spec, "test").await.unwrap_err());
    assert!(e.contains("certificate"), "{e}");
    spec.options.tls.client_cert = Some(pki().client_cert.clone());
    spec.options.tls.client_key = Some(pki().client_key.clone());
    let c = pg_rekey::pg::connect(&spec, "test").await.unwrap();
    assert!(own_ssl(&c).await);
    let who: String = c
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, CERT_ROLE);
    let mut r = ReplicationClient::connect(&spec).await.unwrap();
    r.identify_system().await.unwrap();
    // The same through a connection string and the PGSSL* names.
    let dsn = format!(
        "host=127.0.0.1 port={} user={CERT_ROLE} dbname={} sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        tls_cluster().port,
        db.name,
        pki().ca.display(),
        pki().client_cert.display(),
        pki().client_key.display()
    );
    let parsed = ConnSpec::parse(&dsn).unwrap();
    assert!(own_ssl(&pg_rekey::pg::connect(&parsed, "test").await.unwrap()).await);
}

#[tokio::test]
async fn direct_negotiation_on_17_and_later() {
    let db = tls_db().await;
    let mut spec = db.spec.clone();
    spec.options.tls.negotiation = SslNegotiation::Direct;
    let r = pg_rekey::pg::connect(&spec, "test").await;
    if tls_cluster().major_version >= 17 {
        assert!(own_ssl(&r.unwrap()).await);
        let mut rc = ReplicationClient::connect(&spec).await.unwrap();
        rc.identify_system().await.unwrap();
    } else {
        // Older servers do not speak TLS before the startup packet: an
        // error, never a plaintext session.
        assert!(r.is_err());
        assert!(ReplicationClient::connect(&spec).await.is_err());
    }
}

#[tokio::test]
async fn scram_over_tls_logs_in() {
    let db = tls_db().await;
    let spec = db.spec.with_user(SCRAM_ROLE, Some(SCRAM_PASSWORD));
    let c = pg_rekey::pg::connect(&spec, "test")
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(own_ssl(&c).await);
    let mut r = ReplicationClient::connect(&spec)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    r.identify_system().await.unwrap();
    let wrong = db.spec.with_user(SCRAM_ROLE, Some("nope"));
    assert!(pg_rekey::pg::connect(&wrong, "test").await.is_err());
    assert!(ReplicationClient::connect(&wrong).await.is_err());
    // channel_binding=require succeeds only if SCRAM-SHA-256-PLUS was used:
    // the login above was bound to the TLS channel.
    let mut bound = spec.clone();
    bound.options.tls.channel_binding = ChannelBindingMode::Require;
    pg_rekey::pg::connect(&bound, "test")
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    ReplicationClient::connect(&bound)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .identify_system()
        .await
        .unwrap();
    // A role the server trusts without SCRAM cannot satisfy it.
    let mut trusted = db.spec.clone();
    trusted.options.tls.channel_binding = ChannelBindingMode::Require;
    assert!(pg_rekey::pg::connect(&trusted, "test").await.is_err());
    let e = ReplicationClient::connect(&trusted)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("channel_binding=require"), "{e}");
}
