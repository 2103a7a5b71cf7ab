//! Copy-phase benchmark: pg-rekey's copy (map load + binary COPY out →
//! translate → binary COPY in into a shadow without its key, then the primary
//! key and the secondary index builds, as `rewrite` does) against the
//! in-server rewrite (`CREATE TABLE … AS SELECT … JOIN users …` plus the same
//! primary key and index builds), on the same generated data in one run —
//! for a table keyed by `bigint` (`events`) and for the same rows keyed by a
//! random `uuid` (`events_uuid`), each copied in one stream and by two
//! sessions over key ranges sampled under the snapshot. When this machine
//! has `pg_repack` for the bench server's installation, `pg_repack --table`
//! of the same table (primary key and two indexes rebuilt, no type change)
//! runs in the same rounds and pg-rekey / pg_repack is printed beside
//! pg-rekey / in-server.
//!
//! `pg_repack` comes from Debian's `postgresql-<major>-repack` package
//! (`apt-get install postgresql-15-repack` for the 15 server the harness picks
//! from `/usr/lib/postgresql`); the extension must be installed in the same
//! installation as the server binaries (`PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`). The bench installs nothing: without it, it
//! prints `pg_repack: SKIPPED` and why, and measures the rest.
//!
//! ```text
//! cargo bench --bench copy                      # 3M rows, 200k users
//! PGREKEY_BENCH_ROWS=1000000 PGREKEY_BENCH_USERS=50000 cargo bench --bench copy
//! PGREKEY_BENCH_VARIANTS=1 cargo bench --bench copy   # also every variant (ordered, parallel2, …)
//! PGREKEY_BENCH_VARIANTS=unlogged,key-during-copy cargo bench --bench copy   # named variants
//! PGREKEY_BENCH_REPEAT=5 cargo bench --bench copy      # rounds (default 3; best round compared)
//! PGREKEY_BENCH_TABLES=events_uuid cargo bench --bench copy   # one table only (default both)
//! PGREKEY_BENCH_REPACK=0 cargo bench --bench copy     # leave pg_repack out
//! PGREKEY_BENCH_REPACK_JOBS=2 cargo bench --bench copy # pg_repack -j 2 (default 1)
//! PGREKEY_BENCH_SEQUENTIAL=1 cargo bench --bench copy  # also, each round, the index builds one after the other
//! ```
//!
//! pg-rekey's index builds run as `rewrite` runs them: the key's index and
//! the secondary indexes at the same time, each on a session of its own
//! (`copy::build_concurrently`), then the key attached (`PRIMARY KEY USING
//! INDEX`). Each line breaks the time down: map load, copy (COPY out,
//! rewrite and COPY in overlap: their CPU is given per process — source
//! backend, target backend, tool), and each index build's own wall time
//! (overlapping). The in-server rewrite and `pg_repack` build theirs one
//! after the other, as a user running them by default would.
//!
//! A throwaway cluster is started with the embedded defaults (fsync off, the
//! same settings for both contenders); the tool and the server share the
//! machine's cores, as they would on a small database host.
//!
//! Each pg-rekey run also has a logical slot (created before the copy) and
//! reports the WAL written and the time and CPU to decode it all afterwards
//! (`pg_logical_slot_get_binary_changes`, the walsender's decoding path):
//! the catch-up `rewrite`'s stream pays before its first change after the
//! copy. CPU figures come from /proc and getrusage; on a shared machine they
//! are steadier than the wall times.

use std::time::{Duration, Instant};

use pg_rekey::copy::{
    build_concurrently, copy_table_parallel, copy_table_with, CopyOptions, Progress,
};
use pg_rekey::embedded::Cluster;
use pg_rekey::idmap::IdMap;
use pg_rekey::pg::{connect, ConnSpec, QualifiedName};
use pg_rekey::plan::model::{ColumnSpec, IntKind, ParentSpec, TableSpec};
use tokio_postgres::Client;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn col(name: &str, attnum: i16, type_sql: &str, type_oid: u32, reference: bool) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        attnum,
        type_sql: type_sql.into(),
        type_oid,
        reference: if reference {
            IntKind::from_oid(type_oid)
        } else {
            None
        },
        not_null: false,
        generated: false,
        identity: None,
    }
}

/// The table a run copies: `events` (bigint key) or `events_uuid` (the same
/// rows keyed by a random uuid, as session and token tables are).
#[derive(Clone, Copy)]
struct Subject {
    table: &'static str,
    /// `bigint` or `uuid`.
    key_type: &'static str,
    key_oid: u32,
}

const EVENTS: Subject = Subject {
    table: "events",
    key_type: "bigint",
    key_oid: 20,
};

const EVENTS_UUID: Subject = Subject {
    table: "events_uuid",
    key_type: "uuid",
    key_oid: 2950,
};

impl Subject {
    fn shadow(&self) -> String {
        format!("{}_shadow", self.table)
    }
}

async fn spec(admin: &Client, s: Subject) -> TableSpec {
    let oid: u32 = admin
        .query_one("SELECT $1::text::regclass::oid", &[&s.table])
        .await
        .unwrap()
        .get(0);
    TableSpec {
        source: QualifiedName::new("public", s.table),
        oid,
        shadow: QualifiedName::new("public", s.shadow()),
        columns: vec![
            col("id", 1, s.key_type, s.key_oid, false),
            col("user_id", 2, "bigint", 20, true),
            col("kind", 3, "smallint", 21, false),
            col("title", 4, "text", 25, false),
            col("amount", 5, "numeric(12,2)", 1700, false),
            col("created_at", 6, "timestamp with time zone", 1184, false),
            col("active", 7, "boolean", 16, false),
        ],
        key: vec![0],
    }
}

fn shadow_ddl(s: Subject) -> String {
    format!(
        "DROP TABLE IF EXISTS {t};
         CREATE TABLE {t} (id {k} CONSTRAINT {t}_pkey PRIMARY KEY, user_id uuid, kind smallint, title text,
           amount numeric(12,2), created_at timestamptz, active boolean)",
        t = s.shadow(),
        k = s.key_type
    )
}

const SECONDARY: [&str; 2] = [
    "CREATE INDEX ON {t} (user_id)",
    "CREATE INDEX ON {t} (created_at)",
];

/// Names for the breakdown: the key, then `SECONDARY`.
const BUILD_NAMES: [&str; 3] = ["key index", "user_id index", "created_at index"];

/// What `rewrite` runs after the copy (`ddl::after_copy`): the key's index
/// and the secondary indexes, each a statement of its own for
/// `copy::build_concurrently`, then the key attached.
fn after_copy_builds(shadow: &str) -> (Vec<String>, String) {
    let mut builds = vec![format!(
        "CREATE UNIQUE INDEX {shadow}_pkey ON {shadow} (id)"
    )];
    builds.extend(SECONDARY.iter().map(|d| d.replace("{t}", shadow)));
    let attach = format!(
        "ALTER TABLE {shadow} ADD CONSTRAINT {shadow}_pkey PRIMARY KEY USING INDEX {shadow}_pkey"
    );
    (builds, attach)
}

async fn build_indexes(c: &Client, table: &str) {
    for ddl in SECONDARY {
        c.batch_execute(&ddl.replace("{t}", table)).await.unwrap();
    }
}

/// A measured figure: seconds or megabytes.
#[derive(Clone, Copy)]
enum Figure {
    Secs(Duration),
    Mb(i64),
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Figure::Secs(d) => write!(f, "{:.2}s", d.as_secs_f64()),
            Figure::Mb(b) => write!(f, "{:.0}MB", *b as f64 / 1e6),
        }
    }
}

struct Timing {
    name: String,
    total: Duration,
    parts: Vec<(&'static str, Figure)>,
}

async fn settle(admin: &Client) {
    // Land the previous contender's dirty pages before timing the next one.
    admin.batch_execute("CHECKPOINT").await.unwrap();
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time a server backend has used (from /proc; the bench runs on the
/// server's host). Load-independent, unlike wall time on a shared machine.
fn backend_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the command name: state is field 3, utime 14, stime 15.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

async fn pids(clients: &[&Client]) -> Vec<i32> {
    let mut v = Vec::new();
    for c in clients {
        v.push(
            c.query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0),
        );
    }
    v
}

fn total_cpu(pids: &[i32]) -> Duration {
    pids.iter().map(|&p| backend_cpu(p)).sum()
}

fn total_cpu_at(each: &[Duration], r: std::ops::RangeTo<usize>) -> Duration {
    each.get(r).unwrap_or_default().iter().sum()
}

/// One way of running pg-rekey's copy phase.
#[derive(Clone)]
struct Variant {
    name: &'static str,
    opts: CopyOptions,
    parallel: usize,
    pk_after: bool,
    /// Shadow created UNLOGGED, `SET LOGGED` after the copy.
    unlogged: bool,
    /// Index builds one after the other on one session (as before
    /// `build_concurrently`), not at the same time.
    sequential_builds: bool,
}

impl Variant {
    fn new(name: &'static str) -> Variant {
        Variant {
            name,
            opts: CopyOptions::default(),
            parallel: 1,
            // As `rewrite` does: `ddl::create_shadow_for_copy`, then
            // `ddl::key_after_copy` (the primary key) after the copy.
            pk_after: true,
            unlogged: false,
            sequential_builds: false,
        }
    }
}

/// WAL position as a byte count.
async fn wal_lsn(c: &Client) -> i64 {
    c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn rekey(spec_db: &ConnSpec, admin: &Client, v: &Variant, subject: Subject) -> Timing {
    let (name, opts, parallel, pk_after) = (v.name, &v.opts, v.parallel, v.pk_after);
    let shadow = subject.shadow();
    admin.batch_execute(&shadow_ddl(subject)).await.unwrap();
    if v.unlogged {
        admin
            .batch_execute(&format!("ALTER TABLE {shadow} SET UNLOGGED"))
            .await
            .unwrap();
    }
    if pk_after {
        admin
            .batch_execute(&format!(
                "ALTER TABLE {shadow} DROP CONSTRAINT {shadow}_pkey"
            ))
            .await
            .unwrap();
    }
    settle(admin).await;
    // A slot as `rewrite` has one: after the copy its walsender must decode
    // all the WAL the copy wrote before it reaches the first change to apply.
    admin
        .batch_execute("SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')")
        .await
        .unwrap();
    let parent = ParentSpec {
        table: QualifiedName::new("public", "users"),
        oid: 0,
        key_column: "id".into(),
        key_kind: IntKind::Int8,
        uuid_column: "uuid_id".into(),
    };
    let mut sources = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..parallel.max(1) {
        sources.push(connect(spec_db, "bench source").await.unwrap());
        targets.push(connect(spec_db, "bench target").await.unwrap());
    }
    let all: Vec<&Client> = sources.iter().chain(targets.iter()).collect();
    let backends = pids(&all).await;
    let server0 = total_cpu(&backends);
    let server_each: Vec<Duration> = backends.iter().map(|&p| backend_cpu(p)).collect();
    let wal0 = wal_lsn(admin).await;
    let t0 = Instant::now();
    let cpu0 = cpu_time();
    let snap: String = {
        let s = &sources[0];
        s.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        s.query_one("SELECT pg_export_snapshot()", &[])
            .await
            .unwrap()
            .get(0)
    };
    for s in &sources[1..] {
        s.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'"
        ))
        .await
        .unwrap();
    }
    let map = IdMap::load(&sources[0], &parent).await.unwrap();
    let t_map = t0.elapsed();
    let progress = Progress::new();
    let spec = spec(admin, subject).await;
    let rows = if parallel > 1 {
        let pairs: Vec<(&Client, &Client)> = sources.iter().zip(targets.iter()).collect();
        copy_table_parallel(&pairs, &spec, &map, &progress, opts).await
    } else {
        copy_table_with(&sources[0], &targets[0], &spec, &map, &progress, opts).await
    }
    .unwrap_or_else(|e| panic!("copy failed: {e}"));
    for s in &sources {
        s.batch_execute("COMMIT").await.unwrap();
    }
    let t_copy = t0.elapsed() - t_map;
    let cpu = cpu_time() - cpu0;
    let server_copy = total_cpu(&backends) - server0;
    let n = sources.len();
    let source_copy = total_cpu(&backends[..n]) - total_cpu_at(&server_each, ..n);
    assert_eq!(progress.rows(), rows);
    let wal_copy = wal_lsn(admin).await - wal0;
    let t_logged = Instant::now();
    if v.unlogged {
        targets[0]
            .batch_execute(&format!("ALTER TABLE {shadow} SET LOGGED"))
            .await
            .unwrap();
    }
    let t_logged = t_logged.elapsed();
    let t_builds = Instant::now();
    let mut each: Vec<(&'static str, Figure)> = Vec::new();
    // CPU of the build sessions (fresh backends: all of their CPU counts).
    let mut builds_cpu = Duration::ZERO;
    if !pk_after {
        build_indexes(&targets[0], &shadow).await;
    } else if v.sequential_builds {
        let t = Instant::now();
        targets[0]
            .batch_execute(&format!("ALTER TABLE {shadow} ADD PRIMARY KEY (id)"))
            .await
            .unwrap();
        each.push((BUILD_NAMES[0], Figure::Secs(t.elapsed())));
        for (i, ddl) in SECONDARY.iter().enumerate() {
            let t = Instant::now();
            targets[0]
                .batch_execute(&ddl.replace("{t}", &shadow))
                .await
                .unwrap();
            each.push((BUILD_NAMES[i + 1], Figure::Secs(t.elapsed())));
        }
    } else {
        // As `rewrite` does (`finish_table`): fresh sessions, one per build
        // (at most `build_sessions`), then the key attached on another.
        let (builds, attach) = after_copy_builds(&shadow);
        let n = builds.len().min(opts.build_sessions.max(1));
        let mut builders = Vec::new();
        for _ in 0..n {
            builders.push(connect(spec_db, "bench index").await.unwrap());
        }
        let sessions: Vec<&Client> = builders.iter().collect();
        let builder_pids = pids(&sessions).await;
        let took = copy_build(&sessions, &builds).await;
        builds_cpu = total_cpu(&builder_pids);
        for (name, t) in BUILD_NAMES.iter().zip(took) {
            each.push((name, Figure::Secs(t)));
        }
        let t = Instant::now();
        targets[0].batch_execute(&attach).await.unwrap();
        each.push(("key attached", Figure::Secs(t.elapsed())));
    }
    let t_builds = t_builds.elapsed();
    let total = t0.elapsed();
    let server_total = total_cpu(&backends) - server0 + builds_cpu;
    let wal_total = wal_lsn(admin).await - wal0;
    // Catch-up: decode everything written since the slot, as the walsender
    // must before it reaches the first change after the copy.
    let decoder = connect(spec_db, "bench decoder").await.unwrap();
    let dpid = pids(&[&decoder]).await;
    let d0 = total_cpu(&dpid);
    let td = Instant::now();
    decoder
        .batch_execute(
            "SELECT count(*) FROM pg_logical_slot_get_binary_changes('bench_slot', NULL, NULL,
               'proto_version', '1', 'publication_names', 'bench_pub')",
        )
        .await
        .unwrap();
    let t_decode = td.elapsed();
    let decode_cpu = total_cpu(&dpid) - d0;
    admin
        .batch_execute("SELECT pg_drop_replication_slot('bench_slot')")
        .await
        .unwrap();
    let mut parts = vec![
        ("map load", Figure::Secs(t_map)),
        ("copy", Figure::Secs(t_copy)),
        ("set logged", Figure::Secs(t_logged)),
        ("index builds", Figure::Secs(t_builds)),
        ("tool cpu in map+copy", Figure::Secs(cpu)),
        ("server cpu in map+copy", Figure::Secs(server_copy)),
        ("of which source", Figure::Secs(source_copy)),
        (
            "target",
            Figure::Secs(server_copy.saturating_sub(source_copy)),
        ),
        ("server cpu total", Figure::Secs(server_total)),
        ("WAL in copy", Figure::Mb(wal_copy)),
        ("WAL total", Figure::Mb(wal_total)),
        ("catch-up decode", Figure::Secs(t_decode)),
        ("decode cpu", Figure::Secs(decode_cpu)),
    ];
    // Where the index builds went: each build's own wall time (they overlap
    // when run at the same time).
    let at = parts
        .iter()
        .position(|(n, _)| *n == "index builds")
        .map_or(parts.len(), |i| i + 1);
    parts.splice(at..at, each);
    Timing {
        name: name.into(),
        total,
        parts,
    }
}

async fn copy_build(sessions: &[&Client], builds: &[String]) -> Vec<Duration> {
    build_concurrently(sessions, builds)
        .await
        .unwrap_or_else(|(i, e)| panic!("build {}: {e}", builds[i]))
}

async fn in_server(admin: &Client, subject: Subject) -> Timing {
    let (t, ctas) = (subject.table, format!("{}_ctas", subject.table));
    admin
        .batch_execute(&format!("DROP TABLE IF EXISTS {ctas}"))
        .await
        .unwrap();
    settle(admin).await;
    let backends = pids(&[admin]).await;
    let server0 = total_cpu(&backends);
    let t0 = Instant::now();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {ctas} AS
               SELECT e.id, u.uuid_id AS user_id, e.kind, e.title, e.amount, e.created_at, e.active
               FROM ONLY {t} e LEFT JOIN users u ON u.id = e.user_id"
        ))
        .await
        .unwrap();
    let t_ctas = t0.elapsed();
    let server_ctas = total_cpu(&backends) - server0;
    admin
        .batch_execute(&format!("ALTER TABLE {ctas} ADD PRIMARY KEY (id)"))
        .await
        .unwrap();
    let t_pk = t0.elapsed() - t_ctas;
    build_indexes(admin, &ctas).await;
    let total = t0.elapsed();
    Timing {
        name: format!("in-server CTAS + PK + indexes ({t})"),
        total,
        parts: vec![
            ("create table as", Figure::Secs(t_ctas)),
            ("primary key", Figure::Secs(t_pk)),
            ("indexes", Figure::Secs(total - t_ctas - t_pk)),
            ("server cpu in CTAS", Figure::Secs(server_ctas)),
            (
                "server cpu total",
                Figure::Secs(total_cpu(&backends) - server0),
            ),
        ],
    }
}

/// The `pg_repack` client and the extension, when this machine has both for
/// the bench server's own installation (the extension's files must be in the
/// share/lib folders of the server binaries the harness runs).
struct Repack {
    client: std::path::PathBuf,
    version: String,
    port: u16,
    /// `-j`: parallel index builds (`PGREKEY_BENCH_REPACK_JOBS`, default 1).
    jobs: u64,
    /// The postmaster, whose reaped children's CPU lands in its `cutime`.
    postmaster: i32,
}

/// Find `pg_repack` for the server behind `admin` and create the extension in
/// the bench database; `Err` says what is missing (the bench installs nothing).
async fn find_repack(admin: &Client, cluster: &Cluster) -> Result<Repack, String> {
    if std::env::var("PGREKEY_BENCH_REPACK").as_deref() == Ok("0") {
        return Err("PGREKEY_BENCH_REPACK=0".into());
    }
    let major = cluster.major_version;
    let hint = format!(
        "install Debian's postgresql-{major}-repack (apt-get install postgresql-{major}-repack) for the server the bench runs"
    );
    let dirs: Vec<(String, String)> = admin
        .query(
            "SELECT name, setting FROM pg_config WHERE name IN ('BINDIR', 'SHAREDIR', 'PKGLIBDIR')",
            &[],
        )
        .await
        .map_err(|e| format!("read pg_config: {e}"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let dir = |n: &str| {
        dirs.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (bindir, sharedir, libdir) = (dir("BINDIR"), dir("SHAREDIR"), dir("PKGLIBDIR"));
    let available: Option<String> = admin
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_repack'",
            &[],
        )
        .await
        .map_err(|e| format!("read pg_available_extensions: {e}"))?
        .map(|r| r.get(0));
    let Some(ext_version) = available else {
        return Err(format!(
            "the server's installation has no pg_repack extension ({sharedir}/extension/pg_repack.control, {libdir}/pg_repack.so); {hint}"
        ));
    };
    let in_bindir = std::path::Path::new(&bindir).join("pg_repack");
    let client = if in_bindir.is_file() {
        in_bindir
    } else {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| std::path::Path::new(d).join("pg_repack"))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("no pg_repack client in {bindir} or on PATH; {hint}"))?
    };
    let out = std::process::Command::new(&client)
        .arg("--version")
        .output()
        .map_err(|e| format!("run {} --version: {e}", client.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !version.ends_with(&ext_version) {
        return Err(format!(
            "{} is {version:?} but the server's extension is {ext_version}; pg_repack refuses a mismatch; {hint}",
            client.display()
        ));
    }
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_repack")
        .await
        .map_err(|e| format!("CREATE EXTENSION pg_repack: {e}"))?;
    let pid_file = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .map_err(|e| format!("read postmaster.pid: {e}"))?;
    let postmaster = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or("postmaster.pid has no pid")?;
    Ok(Repack {
        client,
        version,
        port: cluster.port,
        jobs: env_u64("PGREKEY_BENCH_REPACK_JOBS", 1).max(1),
        postmaster,
    })
}

/// `/proc/<pid>/stat` fields after the command name, as numbers.
fn proc_stat(pid: i32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect()
}

fn ticks(t: u64) -> Duration {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(t * 1000 / hz)
}

/// CPU of the whole server: the postmaster, its live children, and the
/// children it has reaped (its `cutime`/`cstime`: backends that exited).
/// `pg_repack`'s backends end before the figure is read, so only this sees
/// them; it also counts the background processes (checkpointer, WAL writer).
fn server_cpu_all(postmaster: i32) -> Duration {
    let own = proc_stat(postmaster);
    // Fields after the name: ppid is index 1, utime 11, stime 12, cutime 13, cstime 14.
    let mut t = own.get(11..15).map(|f| f.iter().sum()).unwrap_or(0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let f = proc_stat(pid);
        if f.get(1).copied() == Some(postmaster as u64) {
            t += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        }
    }
    ticks(t)
}

/// CPU of this process's waited-for children (the `pg_repack` client).
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `pg_repack --table` of the subject itself (it rewrites the table and
/// rebuilds its primary key and two indexes, then swaps the files): the
/// rebuild a user would weigh against pg-rekey, without the type change.
/// `--no-analyze`, as neither other contender analyzes.
async fn run_repack(admin: &Client, r: &Repack, subject: Subject) -> Timing {
    settle(admin).await;
    let wal0 = wal_lsn(admin).await;
    let server0 = server_cpu_all(r.postmaster);
    let client0 = children_cpu();
    let t0 = Instant::now();
    let out = tokio::process::Command::new(&r.client)
        .args(["-h", "127.0.0.1", "-p", &r.port.to_string(), "-U"])
        .arg(pg_rekey::embedded::SUPERUSER)
        .args([
            "-d",
            "bench",
            "--no-analyze",
            "-j",
            &r.jobs.to_string(),
            "-t",
        ])
        .arg(format!("public.{}", subject.table))
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", r.client.display()));
    let total = t0.elapsed();
    let client_cpu = children_cpu() - client0;
    assert!(
        out.status.success(),
        "pg_repack failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its backends exit after it does; the postmaster reaps them into its
    // cutime. Wait for that before reading the server's CPU.
    for _ in 0..100 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_repack'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = server_cpu_all(r.postmaster) - server0;
    let wal = wal_lsn(admin).await - wal0;
    Timing {
        name: format!("pg_repack -j {} ({})", r.jobs, subject.table),
        total,
        parts: vec![
            ("client cpu", Figure::Secs(client_cpu)),
            ("server cpu (all processes)", Figure::Secs(server)),
            ("WAL", Figure::Mb(wal)),
        ],
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn print(t: &Timing, rows: u64) {
    let parts = t
        .parts
        .iter()
        .map(|(n, d)| format!("{n} {d}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{:<40} {:>7.2}s  {:>10.0} rows/s  ({parts})",
        t.name,
        t.total.as_secs_f64(),
        rows as f64 / t.total.as_secs_f64()
    );
}

/// The variants `PGREKEY_BENCH_VARIANTS` can name (comma-separated; `1` for all).
fn all_variants() -> Vec<Variant> {
    let d = CopyOptions::default();
    vec![
        Variant {
            opts: CopyOptions {
                order_by_key: true,
                ..d.clone()
            },
            ..Variant::new("ordered")
        },
        Variant {
            parallel: 2,
            ..Variant::new("parallel2")
        },
        Variant {
            opts: CopyOptions {
                batch_rows: 0,
                batch_bytes: 0,
                ..d.clone()
            },
            ..Variant::new("one-tx")
        },
        Variant {
            opts: CopyOptions {
                batch_rows: 1_000_000,
                batch_bytes: 128 << 20,
                ..d.clone()
            },
            ..Variant::new("big-batches")
        },
        Variant {
            pk_after: false,
            ..Variant::new("key-during-copy")
        },
        Variant {
            unlogged: true,
            ..Variant::new("unlogged")
        },
        Variant {
            sequential_builds: true,
            ..Variant::new("sequential-builds")
        },
        Variant {
            unlogged: true,
            pk_after: false,
            ..Variant::new("unlogged-key-during-copy")
        },
    ]
}

fn main() {
    let rows = env_u64("PGREKEY_BENCH_ROWS", 3_000_000);
    let users = env_u64("PGREKEY_BENCH_USERS", 200_000);
    let variants = std::env::var("PGREKEY_BENCH_VARIANTS").unwrap_or_default();
    let repeat = env_u64("PGREKEY_BENCH_REPEAT", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let admin0 = connect(&cluster.spec("postgres"), "bench admin").await.unwrap();
        admin0.batch_execute("CREATE DATABASE bench").await.unwrap();
        let spec_db = cluster.spec("bench");
        let admin = connect(&spec_db, "bench admin").await.unwrap();
        let t = Instant::now();
        admin
            .batch_execute(&format!(
                "CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid UNIQUE NOT NULL, email text);
                 INSERT INTO users SELECT g, gen_random_uuid(), 'user' || g || '@example.com'
                   FROM generate_series(1, {users}) g;
                 CREATE TABLE events (id bigint PRIMARY KEY, user_id bigint REFERENCES users(id),
                   kind smallint NOT NULL, title text, amount numeric(12,2), created_at timestamptz NOT NULL,
                   active boolean NOT NULL);
                 ALTER TABLE events DROP CONSTRAINT events_user_id_fkey;
                 INSERT INTO events
                   SELECT g,
                          CASE WHEN g % 20 = 0 THEN NULL ELSE 1 + (hashint8(g) & 2147483647) % {users} END,
                          (g % 7)::smallint,
                          'event title ' || md5(g::text),
                          ((hashint8(g) & 65535) / 100.0)::numeric(12,2),
                          timestamptz '2020-01-01' + g * interval '1 second',
                          g % 3 = 0
                   FROM generate_series(1, {rows}) g;
                 ALTER TABLE events ADD FOREIGN KEY (user_id) REFERENCES users(id);
                 CREATE INDEX ON events (user_id);
                 CREATE INDEX ON events (created_at);
                 CREATE TABLE events_uuid (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                   user_id bigint REFERENCES users(id), kind smallint NOT NULL, title text,
                   amount numeric(12,2), created_at timestamptz NOT NULL, active boolean NOT NULL);
                 INSERT INTO events_uuid (user_id, kind, title, amount, created_at, active)
                   SELECT user_id, kind, title, amount, created_at, active FROM events ORDER BY id;
                 CREATE INDEX ON events_uuid (user_id);
                 CREATE INDEX ON events_uuid (created_at);
                 CREATE PUBLICATION bench_pub FOR TABLE users, events, events_uuid;"
            ))
            .await
            .unwrap();
        // VACUUM cannot share a multi-statement batch (implicit transaction).
        admin.batch_execute("VACUUM ANALYZE users").await.unwrap();
        admin.batch_execute("VACUUM ANALYZE events").await.unwrap();
        admin.batch_execute("VACUUM ANALYZE events_uuid").await.unwrap();
        let size: String = admin
            .query_one("SELECT pg_size_pretty(pg_table_size('events'))", &[])
            .await
            .unwrap()
            .get(0);
        println!(
            "generated {rows} rows ({size}), {users} users in {:.1}s; server {} on {} cores",
            t.elapsed().as_secs_f64(),
            cluster.major_version,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        println!("load average after generating: {}", loadavg());
        let repack = match find_repack(&admin, &cluster).await {
            Ok(r) => {
                println!(
                    "pg_repack: {} ({}), -j {}",
                    r.client.display(),
                    r.version,
                    r.jobs
                );
                Some(r)
            }
            Err(why) => {
                println!("pg_repack: SKIPPED, not measured: {why}");
                None
            }
        };
        // Warm the cache for both contenders alike.
        admin.batch_execute("SELECT count(*) FROM events; SELECT count(*) FROM events_uuid; SELECT count(*) FROM users").await.unwrap();

        // The machine is shared: run the contenders alternately, several
        // rounds, and compare the best round of each (least disturbed); the
        // median is printed too. Each table: one stream, two sessions over
        // key ranges sampled under the snapshot (what `rewrite` runs), and
        // the in-server rewrite.
        let subjects: Vec<Subject> = match std::env::var("PGREKEY_BENCH_TABLES").as_deref() {
            Ok("events") => vec![EVENTS],
            Ok("events_uuid") => vec![EVENTS_UUID],
            _ => vec![EVENTS, EVENTS_UUID],
        };
        for subject in subjects {
            let table = subject.table;
            println!("table {table} (key {}):", subject.key_type);
            let main = Variant::new("pg-rekey copy + key + indexes");
            let two = Variant {
                parallel: 2,
                ..Variant::new("pg-rekey, 2 sessions over sampled key ranges")
            };
            // PGREKEY_BENCH_SEQUENTIAL=1: also, in every round, the index
            // builds one after the other (as before `build_concurrently`).
            let seq = (std::env::var("PGREKEY_BENCH_SEQUENTIAL").as_deref() == Ok("1")).then(|| {
                Variant {
                    sequential_builds: true,
                    ..Variant::new("pg-rekey, index builds one after the other")
                }
            });
            let mut s_runs: Vec<Timing> = Vec::new();
            let mut a_runs: Vec<Timing> = Vec::new();
            let mut p_runs: Vec<Timing> = Vec::new();
            let mut b_runs: Vec<Timing> = Vec::new();
            let mut r_runs: Vec<Timing> = Vec::new();
            for round in 1..=repeat {
                let load0 = loadavg();
                let a = rekey(&spec_db, &admin, &main, subject).await;
                let p = rekey(&spec_db, &admin, &two, subject).await;
                let sq = match &seq {
                    Some(v) => Some(rekey(&spec_db, &admin, v, subject).await),
                    None => None,
                };
                let b = in_server(&admin, subject).await;
                let r = match &repack {
                    Some(r) => Some(run_repack(&admin, r, subject).await),
                    None => None,
                };
                println!(
                    "round {round} ({table}), load average {load0} before, {} after:",
                    loadavg()
                );
                print(&a, rows);
                print(&p, rows);
                if let Some(sq) = &sq {
                    print(sq, rows);
                }
                print(&b, rows);
                if let Some(r) = &r {
                    print(r, rows);
                }
                s_runs.extend(sq);
                a_runs.push(a);
                p_runs.push(p);
                b_runs.push(b);
                r_runs.extend(r);
            }
            a_runs.sort_by_key(|t| t.total);
            p_runs.sort_by_key(|t| t.total);
            b_runs.sort_by_key(|t| t.total);
            r_runs.sort_by_key(|t| t.total);
            s_runs.sort_by_key(|t| t.total);
            if let (Some(a), Some(p), Some(b)) = (a_runs.first(), p_runs.first(), b_runs.first()) {
                println!("best of {repeat} ({table}):");
                print(a, rows);
                print(p, rows);
                print(b, rows);
                if let Some(r) = r_runs.first() {
                    print(r, rows);
                }
                let median = |v: &[Timing]| v[v.len() / 2].total.as_secs_f64();
                println!(
                    "ratio pg-rekey / in-server ({table}): best {:.2}, median {:.2}; 2 sessions: best {:.2}, median {:.2}",
                    a.total.as_secs_f64() / b.total.as_secs_f64(),
                    median(&a_runs) / median(&b_runs),
                    p.total.as_secs_f64() / b.total.as_secs_f64(),
                    median(&p_runs) / median(&b_runs),
                );
                if let Some(sq) = s_runs.first() {
                    println!(
                        "ratio concurrent / sequential index builds ({table}): whole copy phase best {:.2}, median {:.2}",
                        a.total.as_secs_f64() / sq.total.as_secs_f64(),
                        median(&a_runs) / median(&s_runs),
                    );
                }
                match r_runs.first() {
                    Some(r) => println!(
                        "ratio pg-rekey / pg_repack ({table}): best {:.2}, median {:.2}; 2 sessions: best {:.2}, median {:.2}",
                        a.total.as_secs_f64() / r.total.as_secs_f64(),
                        median(&a_runs) / median(&r_runs),
                        p.total.as_secs_f64() / r.total.as_secs_f64(),
                        median(&p_runs) / median(&r_runs),
                    ),
                    None => println!("ratio pg-rekey / pg_repack ({table}): not measured (pg_repack skipped, see above)"),
                }
            }
        }
        let all = all_variants();
        let chosen: Vec<&Variant> = match variants.as_str() {
            "" | "0" => Vec::new(),
            "1" | "all" => all.iter().collect(),
            list => list
                .split(',')
                .filter_map(|n| all.iter().find(|v| v.name == n.trim()))
                .collect(),
        };
        for round in 1..=repeat {
            for v in &chosen {
                let t = rekey(&spec_db, &admin, v, EVENTS).await;
                print!("[{round}] ");
                print(&t, rows);
            }
        }
        println!("load average at end: {}", loadavg());
    });
}
