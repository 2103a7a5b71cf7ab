//! Observability and throttling against real sockets and a real server:
//! the metrics endpoint over TCP, and the copy throttle reading slot WAL and
//! replica state from PostgreSQL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_rekey::metrics;
use pg_rekey::pg::{quote_ident, QualifiedName};
use pg_rekey::progress::{JobProgress, Phase, ThrottleState};
use pg_rekey::throttle::{
    observe, Decision, PauseReason, Throttle, ThrottleConfig, ThrottleLimits, JOB_SLOT_PREFIX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{wait_for, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// Send one raw HTTP request and return (status line, body).
async fn http(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to metrics");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let status = head.lines().next().unwrap().to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_endpoint_serves_live_values_over_tcp() {
    let job = JobProgress::new();
    let t = job.add_table(QualifiedName::new("public", "orders"));
    t.start_copy(5000);
    t.add_rows_copied(1234);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&job),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("bind an ephemeral port");
    let addr = server.local_addr;
    assert_ne!(addr.port(), 0);

    let get = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
    let (status, body) = http(addr, get).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let orders = "{table=\"public.orders\"}";
    assert_eq!(
        sample(&body, &format!("pg_rekey_rows_copied_total{orders}")),
        1234.0
    );
    assert_eq!(
        sample(&body, &format!("pg_rekey_rows_estimate{orders}")),
        5000.0
    );
    assert_eq!(
        sample(
            &body,
            "pg_rekey_phase{table=\"public.orders\",phase=\"copying\"}"
        ),
        1.0
    );
    assert_eq!(sample(&body, "pg_rekey_cutover_attempts_total"), 0.0);

    // The next scrape sees the job move on.
    t.add_rows_copied(766);
    t.finish_copy();
    t.set_phase(Phase::Streaming);
    t.add_changes_applied(42);
    t.set_lag(65536, Duration::from_millis(250));
    job.record_cutover_attempt(Duration::from_millis(3), Duration::from_millis(17), false);
    let (_, body) = http(addr, get).await;
    assert_eq!(
        sample(&body, &format!("pg_rekey_rows_copied_total{orders}")),
        2000.0
    );
    assert_eq!(
        sample(&body, &format!("pg_rekey_changes_applied_total{orders}")),
        42.0
    );
    assert_eq!(
        sample(&body, &format!("pg_rekey_lag_bytes{orders}")),
        65536.0
    );
    assert_eq!(
        sample(&body, &format!("pg_rekey_lag_seconds{orders}")),
        0.25
    );
    assert_eq!(
        sample(
            &body,
            "pg_rekey_phase{table=\"public.orders\",phase=\"streaming\"}"
        ),
        1.0
    );
    assert_eq!(sample(&body, "pg_rekey_cutover_attempts_total"), 1.0);
    assert_eq!(sample(&body, "pg_rekey_cutover_lock_hold_ms"), 17.0);

    let (status, _) = http(addr, "GET /other HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    stop.send(()).unwrap();
    server.handle.await.expect("accept loop ends cleanly");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test]
async fn metrics_bind_conflict_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = metrics::serve(addr, JobProgress::new(), std::future::pending())
        .await
        .expect_err("the port is taken");
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("--metrics-addr"),
        "{text}"
    );
}

async fn drop_slot(db: &TestDb, slot: &str) {
    db.client()
        .await
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("drop the test slot");
}

#[tokio::test]
async fn throttle_pauses_the_copy_while_the_slot_retains_too_much_wal() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let slot = db.unique("throttle");
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .expect("create a logical slot");
    // Nobody consumes the slot, so all WAL written from here on is retained.
    c.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let limit = 256 * 1024;
    let obs = observe(&c, Some(&slot)).await.expect("observe");
    let retained = obs.slot_wal_bytes.expect("the slot exists");
    assert!(
        retained > limit,
        "{retained} bytes retained, expected more than {limit}"
    );
    assert_eq!(
        observe(&c, Some("no_such_slot"))
            .await
            .unwrap()
            .slot_wal_bytes,
        None
    );
    assert_eq!(observe(&c, None).await.unwrap().slot_wal_bytes, None);
    // As another consumer's slot, it is what the slot limit measures …
    let other = observe(&c, None).await.unwrap();
    assert_eq!(other.other_slot.as_deref(), Some(slot.as_str()));
    assert!(other.other_slot_wal_bytes.unwrap() > limit);
    // … but never as the job's own slot.
    let own = observe(&c, Some(&slot)).await.unwrap();
    assert_eq!(own.other_slot, None, "{own:?}");

    let job = JobProgress::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let throttle = Throttle::start(
        &db.spec,
        ThrottleConfig {
            limits: ThrottleLimits {
                max_slot_wal_bytes: Some(limit),
                max_replica_lag: Some(Duration::from_secs(60)),
                ..ThrottleLimits::default()
            },
            // The job's own slot does not exist yet: the test's slot is another
            // consumer's.
            slot_name: Some(format!("{JOB_SLOT_PREFIX}{}", db.name)),
            poll_every: Duration::from_millis(100),
        },
        Arc::clone(&job),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("start the throttle");

    // The first poll happens inside start(): the decision is already a pause.
    match throttle.decision() {
        Decision::Pause {
            reason:
                PauseReason::SlotWal {
                    slot: s,
                    retained,
                    limit: l,
                },
        } => {
            assert_eq!(s, slot);
            assert!(retained > limit);
            assert_eq!(l, limit);
        }
        d => panic!("expected a pause for the slot, got {d:?}"),
    }
    let shown = job.throttle();
    assert_eq!(shown.state, ThrottleState::Paused);
    assert_eq!(shown.pauses, 1);
    assert!(shown
        .reason
        .unwrap()
        .starts_with(&format!("slot {slot} retains")));

    // A copy worker waiting between chunks stays held while the slot
    // keeps its WAL, across several polls …
    let released = Arc::new(AtomicBool::new(false));
    let waiter = tokio::spawn({
        let throttle = throttle.clone();
        let released = Arc::clone(&released);
        async move {
            throttle.wait_ready().await;
            released.store(true, Ordering::SeqCst);
        }
    });
    let retained_by = |d: Decision| match d {
        Decision::Pause {
            reason: PauseReason::SlotWal { retained, .. },
        } => retained,
        _ => 0,
    };
    let before = retained_by(throttle.decision());
    c.batch_execute("INSERT INTO filler SELECT g, 'y' FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    wait_for("a poll after more WAL", WAIT, || async {
        (retained_by(throttle.decision()) > before).then_some(())
    })
    .await;
    assert!(
        !released.load(Ordering::SeqCst),
        "the copy must stay paused"
    );
    assert!(matches!(throttle.decision(), Decision::Pause { .. }));

    // … and goes on once the pressure is gone.
    drop_slot(&db, &slot).await;
    wait_for("the copy to be released", WAIT, || async {
        released.load(Ordering::SeqCst).then_some(())
    })
    .await;
    waiter.await.unwrap();
    assert_eq!(throttle.decision(), Decision::Proceed);
    assert_eq!(job.throttle().state, ThrottleState::Proceed);
    assert_eq!(job.throttle().pauses, 1);
    stop.send(()).unwrap();
}

fn pg_bin(program: &str) -> PathBuf {
    let dirs = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin")),
        );
    dirs.map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found in $PG_BIN or /usr/lib/postgresql/*/bin"))
}

/// The major version a PostgreSQL client program reports
/// (`pg_receivewal (PostgreSQL) 15.18 …` → 15).
fn program_major(program: &std::path::Path) -> i32 {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .expect("run --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(')')
        .nth(1)
        .and_then(|v| v.trim().split(['.', ' ']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("cannot read a version from {text:?}"))
}

/// A child process killed (by its own handle) when the test ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn replica_lag_counts_physical_walsenders_and_not_logical_ones() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let slot = db.unique("recvlogical");
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .unwrap();
    // pgoutput wants a publication to exist once it decodes a change.
    c.batch_execute(&format!("CREATE PUBLICATION {}", quote_ident(&slot)))
        .await
        .unwrap();
    let mut spec = db.spec.clone();
    spec.application_name = db.unique("walsender");
    let app = spec.application_name.clone();
    let walsenders = || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        n
    };

    // A logical walsender (like pg-rekey's own stream) is not a replica.
    let logical = Kill(
        Command::new(pg_bin("pg_recvlogical"))
            .args([
                "-d",
                &spec.to_dsn(),
                "--slot",
                &slot,
                "--start",
                "-f",
                "/dev/null",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                &format!("publication_names={slot}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pg_recvlogical"),
    );
    wait_for(
        "the logical walsender to stream from its slot",
        WAIT,
        || async {
            let active: bool = c
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            (active && walsenders().await == 1).then_some(())
        },
    )
    .await;
    // (Only the test below starts physical walsenders on the shared server,
    // so the cluster-wide count is this test's own.)
    let obs = observe(&c, None).await.unwrap();
    assert_eq!(obs.replicas, 0, "logical walsenders are excluded: {obs:?}");
    drop(logical);
    wait_for("the logical walsender to go", WAIT, || async {
        (walsenders().await == 0).then_some(())
    })
    .await;

    // A physical WAL receiver is counted.
    let dir = std::env::temp_dir().join(db.unique("receivewal"));
    std::fs::create_dir_all(&dir).unwrap();
    // pg_receivewal when it can stream from this server (it refuses servers
    // newer than itself), else the tests' own minimal physical client.
    let receivewal = pg_bin("pg_receivewal");
    let client_major = program_major(&receivewal);
    let server_major: i32 = c
        .query_one(
            "SELECT current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut _receivewal = None;
    let mut _own_client = None;
    if client_major >= server_major {
        _receivewal = Some(Kill(
            Command::new(&receivewal)
                .args(["-d", &spec.to_dsn(), "-D"])
                .arg(&dir)
                .args(["--no-loop", "-s", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pg_receivewal"),
        ));
    } else {
        _own_client = Some(crate::support::physical::PhysicalStream::start(&spec).await);
    }
    wait_for("the physical walsender", WAIT, || async {
        (walsenders().await == 1).then_some(())
    })
    .await;
    let obs = observe(&c, None).await.unwrap();
    assert_eq!((obs.replicas, obs.replicas_hidden), (1, 0), "{obs:?}");
    drop(_receivewal);
    drop(_own_client);
    let _ = std::fs::remove_dir_all(&dir);
    drop_slot(&db, &slot).await;
}
