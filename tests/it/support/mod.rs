//! Test support: one real PostgreSQL server per test binary, a fresh database per test.
//!
//! With `PGREKEY_TEST_DSN` unset, the first test to ask starts a throwaway
//! cluster with [`pg_rekey::embedded::Cluster`] (initdb into a temp dir, run as
//! an unprivileged user when the tests run as root, `wal_level=logical`, many
//! slots and WAL senders, a short `wal_sender_timeout`). It is stopped and
//! removed when the test process exits (the cluster's watchdog sees to that).
//!
//! With `PGREKEY_TEST_DSN` set, the same tests run against that server; the
//! role needs CREATEDB and REPLICATION (or superuser).

#![allow(dead_code)]

pub mod physical;
pub mod proxy;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pg_rekey::embedded::{Cluster, ClusterOptions};
use pg_rekey::pg::ConnSpec;
use tokio_postgres::Client;

/// Roles the harness's pg_hba.conf authenticates with each method.
pub const MD5_ROLE: &str = "rekey_md5";
/// Role authenticated with SCRAM-SHA-256.
pub const SCRAM_ROLE: &str = "rekey_scram";
/// Role authenticated with a clear-text password.
pub const PASSWORD_ROLE: &str = "rekey_password";
/// The password of the three roles above.
pub const ROLE_PASSWORD: &str = "s3cret'pw";

struct Server {
    spec: ConnSpec,
    /// Present when the harness started the server itself.
    cluster: Option<Cluster>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        if let Ok(dsn) = std::env::var("PGREKEY_TEST_DSN") {
            let spec =
                ConnSpec::parse(&dsn).expect("PGREKEY_TEST_DSN is not a valid connection string");
            return Server {
                spec,
                cluster: None,
            };
        }
        let opts = ClusterOptions {
            hba_lines: vec![
                format!("host all {MD5_ROLE} 127.0.0.1/32 md5"),
                format!("host all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256"),
                format!("host all {PASSWORD_ROLE} 127.0.0.1/32 password"),
            ],
            extra_conf: vec!["wal_sender_timeout = '4s'".into()],
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(&opts)
            .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
        let spec = cluster.spec("postgres");
        Server {
            spec,
            cluster: Some(cluster),
        }
    })
}

/// Whether the server is the harness's own (so pg_hba auth roles exist).
pub fn own_cluster() -> bool {
    server().cluster.is_some()
}

/// The server's major version.
pub fn server_major() -> u32 {
    server()
        .cluster
        .as_ref()
        .map(|c| c.major_version)
        .unwrap_or(0)
}

/// A fresh database for one test.
pub struct TestDb {
    /// Connection spec for the test database as the admin role.
    pub spec: ConnSpec,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Create a fresh, empty database (and the auth-test roles on first use).
    pub async fn new() -> TestDb {
        init_logging();
        let srv = server();
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&srv.spec).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .expect("create test database");
        if srv.cluster.is_some() {
            ensure_auth_roles(&admin).await;
        }
        TestDb {
            spec: srv.spec.with_dbname(&name),
            name,
        }
    }

    /// An ordinary session on the test database.
    pub async fn client(&self) -> Client {
        connect(&self.spec).await
    }

    /// A unique name for a slot or publication (slots are cluster-wide).
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.name)
    }
}

async fn ensure_auth_roles(admin: &Client) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let pw = ROLE_PASSWORD.replace('\'', "''");
        let sql = format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MD5_ROLE}') THEN
                 SET LOCAL password_encryption = 'md5';
                 CREATE ROLE {MD5_ROLE} LOGIN REPLICATION PASSWORD '{pw}';
                 SET LOCAL password_encryption = 'scram-sha-256';
                 CREATE ROLE {SCRAM_ROLE} LOGIN REPLICATION PASSWORD '{pw}';
                 CREATE ROLE {PASSWORD_ROLE} LOGIN REPLICATION PASSWORD '{pw}';
               END IF;
             END $$"
        );
        admin
            .batch_execute(&sql)
            .await
            .expect("create auth-test roles");
    })
    .await;
}

/// Connect with tokio-postgres (test-side, plain session).
pub async fn connect(spec: &ConnSpec) -> Client {
    pg_rekey::pg::connect(spec, "test")
        .await
        .unwrap_or_else(|e| panic!("connect to test server: {}", pg_rekey::error::chain(&e)))
}

/// Poll `cond` until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replication slots of the current database.
pub async fn slots_in_database(c: &Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Wait until some session queues for a lock on `relation` (a name as
/// `regclass` reads it).
pub async fn wait_lock_queued(c: &Client, relation: &str) {
    wait_for(
        &format!("a session to queue for a lock on {relation}"),
        Duration::from_secs(30),
        || async {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::text::regclass",
                    &[&relation],
                )
                .await
                .unwrap()
                .get(0);
            (n > 0).then_some(())
        },
    )
    .await
}

/// Rows of `source` (integer references translated through `parent`) that are
/// not in `shadow`, and rows of `shadow` not in the translated source:
/// `(missing, extra)`. `refs` are the reference columns; every other column is
/// compared as it is. Generated columns are compared too (they are computed
/// from the same inputs).
pub async fn compare_translated(
    c: &Client,
    source: &str,
    shadow: &str,
    refs: &[&str],
    parent: &str,
    parent_key: &str,
    parent_uuid: &str,
) -> (i64, i64) {
    let cols: Vec<String> = c
        .query(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&source],
        )
        .await
        .expect("read columns")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let src_list: Vec<String> = cols
        .iter()
        .map(|col| {
            if refs.contains(&col.as_str()) {
                format!(
                    "(SELECT p.{} FROM {parent} p WHERE p.{} = s.{})",
                    quote(parent_uuid),
                    quote(parent_key),
                    quote(col)
                )
            } else {
                format!("s.{}", quote(col))
            }
        })
        .collect();
    let shadow_list: Vec<String> = cols.iter().map(|col| format!("t.{}", quote(col))).collect();
    let src_q = format!("SELECT {} FROM {source} s", src_list.join(", "));
    let sh_q = format!("SELECT {} FROM {shadow} t", shadow_list.join(", "));
    let missing: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM ({src_q} EXCEPT ALL {sh_q}) d"),
            &[],
        )
        .await
        .expect("compare source to shadow")
        .get(0);
    let extra: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM ({sh_q} EXCEPT ALL {src_q}) d"),
            &[],
        )
        .await
        .expect("compare shadow to source")
        .get(0);
    (missing, extra)
}

/// Route pg-rekey's logs to the test output (`RUST_LOG` filters; default warn).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Drops the slot when the test ends, even on panic (terminating a walsender
/// still holding it). A leftover slot would pin WAL on the shared server.
pub struct SlotGuard {
    spec: ConnSpec,
    name: String,
}

impl SlotGuard {
    /// Guard slot `name` on `spec`'s server.
    pub fn new(spec: &ConnSpec, name: &str) -> SlotGuard {
        SlotGuard {
            spec: spec.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let spec = self.spec.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(c) = pg_rekey::pg::connect(&spec, "slot-cleanup").await else {
                    return;
                };
                for _ in 0..100 {
                    let r = c
                        .query(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                             WHERE slot_name = $1 AND active_pid IS NOT NULL",
                            &[&name],
                        )
                        .await;
                    let d = c
                        .query(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                             WHERE slot_name = $1",
                            &[&name],
                        )
                        .await;
                    if r.is_ok() && d.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        })
        .join();
    }
}

/// Run the built `pg-rekey` binary with `--dsn dsn` and `args` (dying at
/// `failpoint` if one is given); `(exit code, stdout, stderr)`. Gives up
/// after five minutes.
pub async fn run_binary(
    dsn: &str,
    args: &[&str],
    failpoint: Option<&str>,
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"));
    cmd.arg("--dsn")
        .arg(dsn)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGREKEY_FAILPOINT")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(fp) = failpoint {
        cmd.env("PGREKEY_FAILPOINT", fp);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("pg-rekey {args:?} did not finish"))
        .expect("run pg-rekey");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What hangs off a table, as text that does not depend on OIDs.
pub async fn catalog_snapshot(c: &Client, table: &str) -> Vec<String> {
    let q = |sql: &'static str| sql;
    let mut out = Vec::new();
    for (what, sql) in [
        ("index", q("SELECT i.indexrelid::regclass::text || ' ' || pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::text::regclass")),
        ("constraint", q("SELECT conname || ' ' || pg_get_constraintdef(oid) || ' valid=' || convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass")),
        ("incoming", q("SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' valid=' || convalidated FROM pg_constraint WHERE confrelid = $1::text::regclass AND conrelid <> confrelid")),
        ("trigger", q("SELECT tgname || ' ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal")),
        ("table", q("SELECT coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(relacl) a), '-') || ' ' || pg_get_userbyid(relowner) || ' ' || coalesce(obj_description(oid, 'pg_class'), '-') || ' ' || relreplident::text || ' rls=' || relrowsecurity FROM pg_class WHERE oid = $1::text::regclass")),
        ("column", q("SELECT attname || ' ' || format_type(atttypid, atttypmod) || ' ' || coalesce(col_description(attrelid, attnum), '-') || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped")),
        ("sequence", q("SELECT coalesce(pg_get_serial_sequence($1::text, a.attname), '-') FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = 'id'")),
        ("statistics", q("SELECT stxname::text || ' ' || pg_get_statisticsobjdef(oid) FROM pg_statistic_ext WHERE stxrelid = $1::text::regclass")),
        ("identity", q("SELECT attname || ' ' || attidentity::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attidentity <> ''")),
        ("view", q("SELECT DISTINCT v.oid::regclass::text || ' ' || pg_get_viewdef(v.oid) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1::text::regclass AND v.oid <> d.refobjid")),
        ("publication", q("SELECT pubname FROM pg_publication_tables WHERE schemaname || '.' || tablename = $1::text AND pubname NOT LIKE 'pg_rekey%'")),
    ] {
        let rows = c.query(sql, &[&table]).await.unwrap_or_else(|e| panic!("{what} of {table}: {}", pg_rekey::error::chain(&e)));
        for r in rows {
            out.push(format!("{what}: {}", r.get::<_, String>(0)));
        }
    }
    out.sort();
    out
}
