//! A real `rewrite` seen from outside: the binary's metrics endpoint and JSON
//! log lines, the lag in its progress while the apply is held and after a
//! fence, and the copy held by the throttle while another slot retains WAL.

use std::sync::Arc;
use std::time::Duration;

use pg_rekey::pg::QualifiedName;
use pg_rekey::progress::{JobProgress, Phase, TableProgress, ThrottleState};
use pg_rekey::rewrite::{self, RewriteConfig, RewriteOutcome};
use pg_rekey::throttle::ThrottleLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::rewrite::catch_up;
use crate::support::{wait_for, TestDb};

const WAIT: Duration = Duration::from_secs(120);

/// `users` (100) and `orders` (`rows`, referencing users), analyzed.
async fn schema(c: &Client, rows: i64) {
    c.batch_execute(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, uuid_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid());
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id), note text);
         INSERT INTO users (id) SELECT g FROM generate_series(1, 100) g;
         INSERT INTO orders SELECT g, 1 + g % 100, repeat('n', 50) FROM generate_series(1, {rows}) g;
         ANALYZE users, orders;"
    ))
    .await
    .expect("create the schema");
}

fn config(db: &TestDb) -> RewriteConfig {
    RewriteConfig::new(
        db.spec.clone(),
        QualifiedName::new("public", "users"),
        "uuid_id",
        vec![QualifiedName::new("public", "orders")],
    )
}

fn orders(job: &JobProgress) -> Arc<TableProgress> {
    job.table(&QualifiedName::new("public", "orders"))
        .expect("orders is registered")
}

/// `GET /metrics`, or None while nothing listens yet.
async fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics_and_logs_one_json_object_per_line() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(&c, 3000).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pg-rekey"))
        .args([
            "--log-format",
            "json",
            "rewrite",
            "--dsn",
            &db.spec.to_dsn(),
        ])
        .args([
            "--parent",
            "users",
            "--uuid-column",
            "uuid_id",
            "--table",
            "orders",
        ])
        .args([
            "--metrics-addr",
            &addr.to_string(),
            "--progress-interval",
            "200ms",
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pg-rekey rewrite");
    let stderr = child.stderr.take().unwrap();
    let err_lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let err_text = tokio::spawn({
        let lines = Arc::clone(&err_lines);
        async move {
            use tokio::io::AsyncBufReadExt;
            let mut r = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                lines.lock().unwrap().push(l);
            }
            lines.lock().unwrap().join("\n")
        }
    });

    let table = "{table=\"public.orders\"}";
    let body = wait_for(
        "metrics showing orders copied and streaming",
        WAIT,
        || async {
            let body = scrape(addr).await?;
            let streaming = sample(
                &body,
                "pg_rekey_phase{table=\"public.orders\",phase=\"streaming\"}",
            )?;
            (streaming == 1.0).then_some(body)
        },
    )
    .await;
    assert_eq!(
        sample(&body, &format!("pg_rekey_rows_copied_total{table}")),
        Some(3000.0),
        "rows copied equals the table's rows:\n{body}"
    );
    assert_eq!(
        sample(&body, &format!("pg_rekey_rows_estimate{table}")),
        Some(3000.0)
    );
    assert_eq!(
        sample(
            &body,
            "pg_rekey_phase{table=\"public.orders\",phase=\"copying\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&body, &format!("pg_rekey_lag_bytes{table}")).is_some());
    assert!(sample(&body, &format!("pg_rekey_wal_retained_bytes{table}")).is_some());
    // The id map's size: 100 users in a dense window, 16 bytes a user and
    // a bit (plus the bitset's rounding), in the metrics and in `status`.
    assert_eq!(
        sample(&body, "pg_rekey_id_map_users"),
        Some(100.0),
        "{body}"
    );
    let map_bytes = sample(&body, "pg_rekey_id_map_bytes").expect("id map bytes");
    assert!(
        (1600.0..=1700.0).contains(&map_bytes),
        "{map_bytes}\n{body}"
    );
    let rows = pg_rekey::status::load(&c).await.unwrap();
    assert_eq!(rows[0].job.id_map_users, Some(100));
    assert_eq!(rows[0].job.id_map_bytes, Some(map_bytes as i64));
    let text = pg_rekey::status::render(&rows);
    assert!(text.contains(": 100 users, "), "{text}");

    // Changes made now are applied and counted.
    c.batch_execute("UPDATE orders SET note = 'changed' WHERE id <= 10")
        .await
        .unwrap();
    wait_for("10 changes applied in the metrics", WAIT, || async {
        let body = scrape(addr).await?;
        (sample(&body, &format!("pg_rekey_changes_applied_total{table}"))? >= 10.0).then_some(())
    })
    .await;

    // Off a terminal, progress is a periodic log line.
    wait_for("a progress line while streaming", WAIT, || async {
        err_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| {
                l.contains(r#""message":"progress""#)
                    && l.contains(r#""phase":"streaming""#)
                    && l.contains(r#""rows_copied":3000"#)
            })
            .then_some(())
    })
    .await;

    // SIGTERM: the job stops and removes what it created.
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = match tokio::time::timeout(WAIT, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!(
            "the rewrite did not stop on SIGTERM:\n{}",
            err_text.await.unwrap()
        ),
    };
    let stderr = err_text.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "stopped is exit 1\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stopped:"));
    assert!(
        scrape(addr).await.is_none(),
        "the metrics end with the process"
    );

    // Every line of stderr is one JSON object; no bar drawing in between.
    assert!(!stderr.contains('\u{1b}'), "terminal codes off a terminal");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}"))
        })
        .collect();
    assert!(lines.iter().all(|v| v.is_object()));
    let progress: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["message"] == "progress" && v["table"] == "public.orders")
        .collect();
    assert!(
        progress
            .iter()
            .any(|v| v["phase"] == "streaming" && v["rows_copied"] == 3000),
        "periodic progress lines off a terminal:\n{stderr}"
    );
    assert!(
        progress.iter().any(|v| v["phase"] == "aborted"),
        "the final state is logged:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_grows_while_the_apply_is_held_and_drops_after_a_fence() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(&c, 500).await;
    let job = JobProgress::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn({
        let cfg = config(&db);
        let job = Arc::clone(&job);
        async move { rewrite::run(&cfg, stop_rx, job).await }
    });
    wait_for("orders streaming", WAIT, || async {
        let t = job.table(&QualifiedName::new("public", "orders"))?;
        (t.phase() == Phase::Streaming).then_some(())
    })
    .await;
    let t = orders(&job);
    assert_eq!(t.rows_copied(), 500);

    // Hold the apply on a lock on the shadow, and commit about 5 MB of WAL
    // the job must apply, in 200 transactions. (Lag in bytes is measured like
    // `pg_current_wal_lsn() - confirmed_flush_lsn`: WAL of a transaction
    // that has not committed yet is not lag, so one big transaction would
    // show only its commit record as lag until it commits.)
    let mut holder = db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE public._rekey_new_orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    c.batch_execute(
        "DO $$ BEGIN FOR i IN 0..199 LOOP
           INSERT INTO orders SELECT g, 1 + g % 100, repeat('w', 150)
             FROM generate_series(1001 + i * 100, 1000 + (i + 1) * 100) g;
           COMMIT;
         END LOOP; END $$",
    )
    .await
    .unwrap();
    let held = wait_for("the lag to show the held apply", WAIT, || async {
        let s = t.snapshot();
        (s.lag_bytes > 2 << 20 && s.lag_seconds >= 2.0).then_some(s)
    })
    .await;
    assert!(held.changes_applied < 20_000, "{held:?}");
    assert!(matches!(
        rewrite_phase(&c).await.as_deref(),
        Some("streaming")
    ));

    // Released and fenced: the lag falls back to about nothing.
    lock.rollback().await.unwrap();
    catch_up(&c).await;
    let after = wait_for("the lag to drop after the fence", WAIT, || async {
        let s = t.snapshot();
        (s.lag_bytes < 1 << 20 && s.lag_seconds < 1.5).then_some(s)
    })
    .await;
    assert!(after.changes_applied >= 20_000, "{after:?}");
    assert!(after.lag_bytes < held.lag_bytes);

    stop_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Aborted);
    assert_eq!(t.phase(), Phase::Aborted);
}

async fn rewrite_phase(c: &Client) -> Option<String> {
    c.query_opt(
        "SELECT phase FROM pgrekey.jobs WHERE source_table = 'orders'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_slot_over_the_limit_holds_the_copy_until_it_is_dropped() {
    let db = TestDb::new().await;
    let c = db.client().await;
    schema(&c, 2000).await;
    // Another consumer's slot, never read: it retains all WAL from here on.
    let slot = db.unique("laggard");
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .unwrap();
    c.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();

    let mut cfg = config(&db);
    cfg.copy_sessions = 1;
    cfg.copy.batch_rows = 100;
    cfg.throttle = ThrottleLimits {
        max_slot_wal_bytes: Some(64 * 1024),
        ..ThrottleLimits::default()
    };
    let job = JobProgress::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn({
        let job = Arc::clone(&job);
        async move { rewrite::run(&cfg, stop_rx, job).await }
    });
    wait_for("the copy to be paused", WAIT, || async {
        let th = job.throttle();
        (th.state == ThrottleState::Paused).then_some(())
    })
    .await;
    let reason = job.throttle().reason.unwrap_or_default();
    assert!(
        reason.contains(&slot),
        "the reason names the slot: {reason}"
    );
    let t = orders(&job);

    // While paused, more WAL is written and polled (the job's own slot's
    // retained WAL grows in the progress), and the copy does not move on.
    let before = t.snapshot().wal_retained_bytes;
    c.batch_execute("INSERT INTO filler SELECT g, 'y' FROM generate_series(1, 2000) g")
        .await
        .unwrap();
    wait_for("a poll after more WAL", WAIT, || async {
        (t.snapshot().wal_retained_bytes > before).then_some(())
    })
    .await;
    let paused = t.snapshot();
    assert!(paused.rows_copied < 2000, "{paused:?}");
    assert_eq!(paused.phase, Phase::Copying);
    assert!(!paused.copy_done);
    assert_eq!(job.throttle().state, ThrottleState::Paused);

    // Dropping the slot releases the copy, which then finishes.
    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    wait_for("orders streaming", WAIT, || async {
        (t.phase() == Phase::Streaming).then_some(())
    })
    .await;
    assert_eq!(t.rows_copied(), 2000);
    assert_eq!(job.throttle().pauses, 1);
    let shadow: i64 = c
        .query_one("SELECT count(*) FROM public._rekey_new_orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shadow, 2000);

    stop_tx.send(true).unwrap();
    let outcome = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RewriteOutcome::Aborted);
}
