//! Prometheus metrics over HTTP (`--metrics-addr`).
//!
//! [`render`] turns a [`JobProgress`] into the Prometheus text exposition
//! format (version 0.0.4); [`serve`] answers `GET /metrics` with it.
//!
//! The HTTP side is a deliberately tiny HTTP/1.1 responder rather than hyper
//! or axum: a scraper sends one small GET per interval, so the server reads
//! one request head (bounded in size and time), writes one response with a
//! `Content-Length` and closes the connection (`Connection: close` is valid
//! HTTP/1.1 and Prometheus handles it). That is about a hundred lines with
//! no new dependency tree, and nothing in it parses untrusted bytes beyond
//! the request line.
//!
//! Invariants: every metric family has `# HELP` and `# TYPE` lines and
//! appears even with no table yet (so dashboards see the series exist);
//! label values are escaped (`\\`, `\"`, `\n`); rendering reads only atomics
//! and short display locks, never the database.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::progress::{JobProgress, Phase, ThrottleState};

/// Largest request head accepted; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running metrics server.
#[derive(Debug)]
pub struct MetricsServer {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The accept loop; it ends when the shutdown future resolves.
    pub handle: JoinHandle<()>,
}

/// Listen on `addr` and serve `GET /metrics` until `shutdown` resolves.
///
/// Binding happens before this returns, so a busy port is reported at
/// startup rather than logged later.
pub async fn serve(
    addr: SocketAddr,
    progress: Arc<JobProgress>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
        context: format!(
            "cannot listen on {addr} for metrics (choose a free address with --metrics-addr)"
        ),
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Io {
        context: format!("metrics listener on {addr}"),
        source,
    })?;
    tracing::info!(task = "metrics server", addr = %local_addr, "serving Prometheus metrics on /metrics");
    let handle = crate::task::spawn("metrics-server", accept_loop(listener, progress, shutdown));
    Ok(MetricsServer { local_addr, handle })
}

async fn accept_loop(
    listener: TcpListener,
    progress: Arc<JobProgress>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let progress = Arc::clone(&progress);
                    crate::task::spawn("metrics-connection", async move {
                        if let Err(e) = handle_connection(stream, &progress).await {
                            tracing::debug!(task = "metrics connection", %peer, error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(task = "metrics server", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracing::debug!(task = "metrics server", "stopped");
}

async fn handle_connection(mut stream: TcpStream, progress: &JobProgress) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let response = match complete {
        Ok(Ok(true)) => respond(&head, progress),
        Ok(Ok(false)) if head.len() > MAX_HEAD => response(
            431,
            "Request Header Fields Too Large",
            "text/plain",
            b"request head too large\n",
            true,
        ),
        Ok(Ok(false)) => return Ok(()), // client went away
        Ok(Err(e)) => return Err(e),
        Err(_) => response(
            408,
            "Request Timeout",
            "text/plain",
            b"request timeout\n",
            true,
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The full HTTP response to a request head (`GET /metrics` → 200 with the
/// metrics; other paths 404; other methods 405; garbage 400).
pub fn respond(head: &[u8], progress: &JobProgress) -> Vec<u8> {
    let line = head
        .split(|&b| b == b'\n')
        .next()
        .map(|l| {
            String::from_utf8_lossy(l)
                .trim_end_matches('\r')
                .to_string()
        })
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return response(400, "Bad Request", "text/plain", b"bad request\n", true);
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return response(400, "Bad Request", "text/plain", b"bad request\n", true);
    }
    let path = target.split('?').next().unwrap_or(target);
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => response(
            200,
            "OK",
            CONTENT_TYPE,
            render(progress).as_bytes(),
            with_body,
        ),
        ("GET" | "HEAD", _) => response(
            404,
            "Not Found",
            "text/plain",
            b"not found; metrics are at /metrics\n",
            with_body,
        ),
        _ => response(
            405,
            "Method Not Allowed",
            "text/plain",
            b"method not allowed\n",
            true,
        ),
    }
}

fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

/// Escape a label value: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers as integers, NaN and infinities as Prometheus
/// spells them.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, val)| format!("{k}=\"{}\"", escape_label(val)))
                .collect();
            self.0.push('{');
            self.0.push_str(&inner.join(","));
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(&value(v));
        self.0.push('\n');
    }
}

/// The metrics of a job in the Prometheus text exposition format.
pub fn render(progress: &JobProgress) -> String {
    let snap = progress.snapshot();
    let mut o = Out(String::with_capacity(1024 + 512 * snap.tables.len()));
    type Field = fn(&crate::progress::TableSnapshot) -> f64;
    let per_table: [(&str, &str, &str, Field); 6] = [
        (
            "pg_rekey_rows_copied_total",
            "counter",
            "Rows copied from the source into the shadow table.",
            |t| t.rows_copied as f64,
        ),
        (
            "pg_rekey_rows_estimate",
            "gauge",
            "Planner's estimate of the source table's rows (0 when unknown).",
            |t| t.rows_estimate as f64,
        ),
        (
            "pg_rekey_changes_applied_total",
            "counter",
            "Replicated changes applied to the shadow table.",
            |t| t.changes_applied as f64,
        ),
        (
            "pg_rekey_lag_bytes",
            "gauge",
            "WAL bytes between the server's current position and the last applied change.",
            |t| t.lag_bytes as f64,
        ),
        (
            "pg_rekey_lag_seconds",
            "gauge",
            "Seconds since the last applied transaction was committed on the source.",
            |t| t.lag_seconds,
        ),
        (
            "pg_rekey_wal_retained_bytes",
            "gauge",
            "WAL bytes the job's replication slot keeps on the server.",
            |t| t.wal_retained_bytes as f64,
        ),
    ];
    for (name, kind, help, field) in per_table {
        o.family(name, kind, help);
        for t in &snap.tables {
            o.sample(name, &[("table", &t.table)], field(t));
        }
    }
    o.family(
        "pg_rekey_way_back",
        "gauge",
        "1 while the stream keeps the table's old table current from the new one (cut over with --way-back; the lag gauges are the way back's), 0 otherwise.",
    );
    for t in &snap.tables {
        o.sample(
            "pg_rekey_way_back",
            &[("table", &t.table)],
            if t.way_back { 1.0 } else { 0.0 },
        );
    }
    o.family(
        "pg_rekey_phase",
        "gauge",
        "Current phase of each table's rewrite (1 for the current phase, 0 otherwise).",
    );
    for t in &snap.tables {
        for p in Phase::ALL {
            let v = if p == t.phase { 1.0 } else { 0.0 };
            o.sample(
                "pg_rekey_phase",
                &[("table", &t.table), ("phase", p.as_str())],
                v,
            );
        }
    }
    let (wait, hold) = progress.last_cutover_lock();
    o.family(
        "pg_rekey_cutover_attempts_total",
        "counter",
        "Cutover attempts made by this job.",
    );
    o.sample(
        "pg_rekey_cutover_attempts_total",
        &[],
        progress.cutover_attempt_count() as f64,
    );
    o.family(
        "pg_rekey_cutover_lock_wait_ms",
        "gauge",
        "Milliseconds the last cutover attempt waited for its locks.",
    );
    o.sample(
        "pg_rekey_cutover_lock_wait_ms",
        &[],
        wait.as_secs_f64() * 1000.0,
    );
    o.family(
        "pg_rekey_cutover_lock_hold_ms",
        "gauge",
        "Milliseconds the last cutover attempt held its locks.",
    );
    o.sample(
        "pg_rekey_cutover_lock_hold_ms",
        &[],
        hold.as_secs_f64() * 1000.0,
    );
    let (map_users, map_bytes) = progress.id_map();
    o.family(
        "pg_rekey_id_map_users",
        "gauge",
        "Parent rows in the key → uuid map, as loaded under the snapshot.",
    );
    o.sample("pg_rekey_id_map_users", &[], map_users as f64);
    o.family(
        "pg_rekey_id_map_bytes",
        "gauge",
        "Heap bytes of the key → uuid map, as loaded under the snapshot.",
    );
    o.sample("pg_rekey_id_map_bytes", &[], map_bytes as f64);
    let (owner, resumes) = progress.ownership();
    o.family(
        "pg_rekey_owner_alive",
        "gauge",
        "1 while this process holds its job's owner lock; 0 while it reconnects after losing its connections (a dead owner has no endpoint: alert on its absence too, and see `pg-rekey status`).",
    );
    o.sample("pg_rekey_owner_alive", &[], if owner { 1.0 } else { 0.0 });
    o.family(
        "pg_rekey_resumes_total",
        "counter",
        "Times this process took a job over from a dead owner or resumed it after losing its connections.",
    );
    o.sample("pg_rekey_resumes_total", &[], resumes as f64);
    let th = &snap.throttle;
    o.family(
        "pg_rekey_copy_throttle",
        "gauge",
        "What the throttle asks of the copy (1 for the current state).",
    );
    for s in [
        ThrottleState::Proceed,
        ThrottleState::SlowDown,
        ThrottleState::Paused,
    ] {
        let v = if s == th.state { 1.0 } else { 0.0 };
        o.sample("pg_rekey_copy_throttle", &[("state", s.as_str())], v);
    }
    o.family(
        "pg_rekey_copy_pauses_total",
        "counter",
        "Times the copy was paused by the throttle.",
    );
    o.sample("pg_rekey_copy_pauses_total", &[], th.pauses as f64);
    if let Some(lag) = th.replica_lag_seconds {
        o.family(
            "pg_rekey_replica_lag_seconds",
            "gauge",
            "Largest replay lag among physical replicas, as seen by the throttle.",
        );
        o.sample("pg_rekey_replica_lag_seconds", &[], lag);
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::QualifiedName;

    fn sample_job() -> Arc<JobProgress> {
        let job = JobProgress::new();
        let t = job.add_table(QualifiedName::new("public", "orders"));
        t.start_copy(1000);
        t.add_rows_copied(250);
        t.set_lag(8192, Duration::from_millis(1500));
        let q = job.add_table(QualifiedName::new("My \"S\"", "a\\b\nc"));
        q.set_phase(Phase::Streaming);
        q.add_changes_applied(7);
        job.set_wal_retained(65536);
        job.record_cutover_attempt(Duration::from_millis(200), Duration::ZERO, false);
        job.record_cutover_attempt(
            Duration::from_micros(12_500),
            Duration::from_millis(40),
            true,
        );
        job
    }

    /// Every sample line parsed into (name, labels, value).
    fn parse(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, v) = l.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n.to_string(), rest.trim_end_matches('}').to_string()),
                    None => (series.to_string(), String::new()),
                };
                (name, labels, v.parse().unwrap())
            })
            .collect()
    }

    fn get(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
            .2
    }

    #[test]
    fn owner_lock_and_resumes() {
        let job = sample_job();
        assert_eq!(get(&parse(&render(&job)), "pg_rekey_owner_alive", ""), 0.0);
        job.set_owner_held(true);
        job.add_resume();
        let s = parse(&render(&job));
        assert_eq!(get(&s, "pg_rekey_owner_alive", ""), 1.0);
        assert_eq!(get(&s, "pg_rekey_resumes_total", ""), 1.0);
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("public.orders"), "public.orders");
    }

    #[test]
    fn renders_every_family_with_values() {
        let text = render(&sample_job());
        let s = parse(&text);
        let orders = "table=\"public.orders\"";
        assert_eq!(get(&s, "pg_rekey_rows_copied_total", orders), 250.0);
        assert_eq!(get(&s, "pg_rekey_rows_estimate", orders), 1000.0);
        assert_eq!(get(&s, "pg_rekey_lag_bytes", orders), 8192.0);
        assert_eq!(get(&s, "pg_rekey_lag_seconds", orders), 1.5);
        assert_eq!(get(&s, "pg_rekey_wal_retained_bytes", orders), 65536.0);
        assert_eq!(
            get(&s, "pg_rekey_phase", &format!("{orders},phase=\"copying\"")),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "pg_rekey_phase",
                &format!("{orders},phase=\"streaming\"")
            ),
            0.0
        );
        // The odd name: Display quotes it, and the label escapes \ " and \n.
        let odd = r#"table="\"My \"\"S\"\"\".\"a\\b\nc\"""#;
        assert_eq!(get(&s, "pg_rekey_changes_applied_total", odd), 7.0);
        assert_eq!(
            get(&s, "pg_rekey_phase", &format!("{odd},phase=\"streaming\"")),
            1.0
        );
        assert_eq!(get(&s, "pg_rekey_cutover_attempts_total", ""), 2.0);
        assert_eq!(get(&s, "pg_rekey_cutover_lock_wait_ms", ""), 12.5);
        assert_eq!(get(&s, "pg_rekey_cutover_lock_hold_ms", ""), 40.0);
        assert_eq!(get(&s, "pg_rekey_copy_throttle", "state=\"proceed\""), 1.0);
        assert_eq!(get(&s, "pg_rekey_way_back", orders), 0.0);
        // One phase sample per phase per table; exactly one is 1.
        let phases: Vec<_> = s.iter().filter(|(n, _, _)| n == "pg_rekey_phase").collect();
        assert_eq!(phases.len(), 2 * Phase::ALL.len());
        assert_eq!(phases.iter().filter(|(_, _, v)| *v == 1.0).count(), 2);
        assert!(
            !text.contains("replica_lag"),
            "no replica seen, no replica series"
        );
    }

    #[test]
    fn every_sample_has_help_and_type_first() {
        let text = render(&sample_job());
        let mut declared: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind));
                declared.push((name.to_string(), kind.to_string()));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(rest.split_once(' ').is_some_and(|(_, h)| !h.is_empty()));
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let (last, kind) = declared.last().expect("sample before any TYPE");
                assert_eq!(name, last, "sample outside its family: {line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            }
        }
        let help = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(help, declared.len());
        let mut names: Vec<_> = declared.iter().map(|(n, _)| n.clone()).collect();
        names.dedup();
        assert_eq!(names.len(), declared.len(), "each family declared once");
    }

    #[test]
    fn empty_job_still_declares_families() {
        let text = render(&JobProgress::new());
        assert!(text.contains("# TYPE pg_rekey_rows_copied_total counter\n"));
        assert!(text.contains("pg_rekey_cutover_attempts_total 0\n"));
    }

    #[test]
    fn special_values() {
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::INFINITY), "+Inf");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(3.0), "3");
        assert_eq!(value(0.25), "0.25");
    }

    #[test]
    fn routes_requests() {
        let job = sample_job();
        let text = |r: Vec<u8>| String::from_utf8(r).unwrap();
        let ok = text(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &job));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, render(&job));
        let q = text(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &job));
        assert!(q.starts_with("HTTP/1.1 200"));
        let head_only = text(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &job));
        assert!(head_only.starts_with("HTTP/1.1 200") && head_only.ends_with("\r\n\r\n"));
        assert!(text(respond(b"GET / HTTP/1.1\r\n\r\n", &job)).starts_with("HTTP/1.1 404"));
        assert!(text(respond(b"GET /metricsx HTTP/1.1\r\n\r\n", &job)).starts_with("HTTP/1.1 404"));
        let post = text(respond(b"POST /metrics HTTP/1.1\r\n\r\n", &job));
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
        for bad in [
            &b"\xff\xfe\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"",
        ] {
            assert!(
                text(respond(bad, &job)).starts_with("HTTP/1.1 400"),
                "{bad:?}"
            );
        }
    }
}
