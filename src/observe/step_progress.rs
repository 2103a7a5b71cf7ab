//! Progress of the long steps that are not the copy: a verification's
//! chunks (in `verify` and in the cutover's verify) and the index builds
//! after the copy.
//!
//! The verify loop reports each compared chunk with [`verify_chunk`] — one
//! relaxed atomic add when nobody watches, so the library costs nothing
//! without a command that shows it. A command that shows progress calls
//! [`watch_verify`]: on a terminal a bar per table (`chunks of total, rate,
//! ETA`), otherwise a log line every `every`. The total is the planner's
//! row estimate divided by the chunk size, so it is approximate (`~`).
//!
//! Index builds are read from `pg_stat_progress_create_index` by
//! [`spawn_index_watch`], which logs each build of a shadow's index (phase,
//! blocks or tuples done of total) while it runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pg::ConnSpec;
use crate::progress::{format_count, format_duration, thousands};

/// The table being verified now, and its counters.
#[derive(Debug)]
struct VerifyState {
    table: Mutex<Option<(String, u64)>>,
    chunks: AtomicU64,
    rows: AtomicU64,
    watched: AtomicBool,
}

static VERIFY: VerifyState = VerifyState {
    table: Mutex::new(None),
    chunks: AtomicU64::new(0),
    rows: AtomicU64::new(0),
    watched: AtomicBool::new(false),
};

/// A verification of `table` starts, expected to take about
/// `estimated_chunks` chunks (0: unknown).
pub fn verify_table_started(table: &str, estimated_chunks: u64) {
    if let Ok(mut t) = VERIFY.table.lock() {
        *t = Some((table.to_string(), estimated_chunks));
    }
    VERIFY.chunks.store(0, Relaxed);
    VERIFY.rows.store(0, Relaxed);
}

/// One chunk of `rows` rows compared.
pub fn verify_chunk(rows: u64) {
    VERIFY.chunks.fetch_add(1, Relaxed);
    VERIFY.rows.fetch_add(rows, Relaxed);
}

/// Whether a command shows verify progress (the estimate query is only
/// worth running then).
pub fn verify_watched() -> bool {
    VERIFY.watched.load(Relaxed)
}

/// The line shown for a verification in progress (pure).
pub fn verify_line(
    table: &str,
    chunks: u64,
    estimated: u64,
    rows: u64,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
    let mut s = if estimated > 0 {
        format!(
            "verify {table}: chunk {} of ~{}",
            thousands(chunks),
            thousands(estimated.max(chunks))
        )
    } else {
        format!("verify {table}: chunk {}", thousands(chunks))
    };
    s.push_str(&format!(" · {} rows/s", format_count(rate)));
    if estimated > chunks && chunks > 0 && secs > 0.0 {
        let per_chunk = secs / chunks as f64;
        let left = Duration::from_secs_f64(per_chunk * (estimated - chunks) as f64);
        s.push_str(&format!(" · ETA {}", format_duration(left)));
    }
    s
}

/// Show verify progress until the returned guard is dropped: a bar on a
/// terminal (stderr), a log line every `every` otherwise.
pub fn watch_verify(every: Duration) -> WatchGuard {
    use std::io::IsTerminal;
    VERIFY.watched.store(true, Relaxed);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let terminal = std::io::stderr().is_terminal();
    let handle = crate::task::spawn("verify-progress", async move {
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let mut current: Option<(String, Instant)> = None;
        let mut last_log = Instant::now();
        let tick = if terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(500)
        };
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(tick) => {}
            }
            let Some((table, estimated)) = VERIFY.table.lock().ok().and_then(|t| t.clone()) else {
                continue;
            };
            let started = match &current {
                Some((t, at)) if *t == table => *at,
                _ => {
                    current = Some((table.clone(), Instant::now()));
                    Instant::now()
                }
            };
            let line = verify_line(
                &table,
                VERIFY.chunks.load(Relaxed),
                estimated,
                VERIFY.rows.load(Relaxed),
                started.elapsed(),
            );
            match &bar {
                Some(b) => b.set_message(line),
                None if last_log.elapsed() >= every => {
                    last_log = Instant::now();
                    tracing::info!("{line}");
                }
                None => {}
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    });
    WatchGuard {
        stop: Some(stop),
        handle: Some(handle),
    }
}

/// Stops the progress display when dropped (or [`WatchGuard::finish`]ed).
#[derive(Debug)]
pub struct WatchGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl WatchGuard {
    /// Stop and wait until the display is cleared.
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        VERIFY.watched.store(false, Relaxed);
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The planner's row estimate of `table` (a name `regclass` reads), for the
/// chunk total; 0 when unknown.
pub async fn row_estimate(client: &tokio_postgres::Client, table: &str) -> u64 {
    client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass($1)",
            &[&table],
        )
        .await
        .ok()
        .and_then(|r| r.try_get::<_, i64>(0).ok())
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

/// One index build in progress (pure formatting of a
/// `pg_stat_progress_create_index` row).
pub fn index_line(
    index: &str,
    table: &str,
    phase: &str,
    done: i64,
    total: i64,
    unit: &str,
) -> String {
    if total > 0 {
        let pct = (done as f64 / total as f64 * 100.0).clamp(0.0, 100.0);
        format!(
            "building {index} on {table}: {phase}, {} of {} {unit} ({pct:.0}%)",
            thousands(u64::try_from(done).unwrap_or(0)),
            thousands(u64::try_from(total).unwrap_or(0))
        )
    } else {
        format!("building {index} on {table}: {phase}")
    }
}

/// Log the progress of index builds on pg-rekey's shadow tables in this
/// database every `every` until `stop` resolves. Display only: errors end it
/// quietly.
pub fn spawn_index_watch(
    spec: ConnSpec,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    crate::task::spawn("index-progress", async move {
        tokio::pin!(stop);
        let Ok(client) = crate::pg::connect(&spec, "index progress").await else {
            return;
        };
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            let rows = client
                .query(
                    "SELECT p.index_relid::regclass::text, p.relid::regclass::text, p.phase,
                            CASE WHEN p.blocks_total > 0 THEN p.blocks_done ELSE p.tuples_done END,
                            CASE WHEN p.blocks_total > 0 THEN p.blocks_total ELSE p.tuples_total END,
                            CASE WHEN p.blocks_total > 0 THEN 'blocks' ELSE 'tuples' END
                       FROM pg_stat_progress_create_index p
                      WHERE p.datname = current_database()
                        AND p.relid::regclass::text LIKE '%\\_rekey\\_new\\_%'",
                    &[],
                )
                .await;
            let Ok(rows) = rows else { return };
            for r in rows {
                let index: Option<String> = r.get(0);
                tracing::info!(
                    "{}",
                    index_line(
                        index.as_deref().unwrap_or("an index"),
                        &r.get::<_, String>(1),
                        &r.get::<_, String>(2),
                        r.get(3),
                        r.get(4),
                        &r.get::<_, String>(5),
                    )
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_for_people() {
        assert_eq!(
            verify_line("public.s", 12, 40, 120_000, Duration::from_secs(2)),
            "verify public.s: chunk 12 of ~40 · 60.0k rows/s · ETA 4.7s"
        );
        assert_eq!(
            verify_line("public.s", 3, 0, 0, Duration::ZERO),
            "verify public.s: chunk 3 · 0 rows/s"
        );
        assert_eq!(
            verify_line("public.s", 50, 40, 10, Duration::from_secs(1)),
            "verify public.s: chunk 50 of ~50 · 10 rows/s",
            "an estimate passed grows, never shows 50 of 40"
        );
        assert_eq!(
            index_line(
                "i",
                "t",
                "building index: scanning table",
                500,
                2000,
                "blocks"
            ),
            "building i on t: building index: scanning table, 500 of 2,000 blocks (25%)"
        );
        assert_eq!(
            index_line("i", "t", "initializing", 0, 0, "tuples"),
            "building i on t: initializing"
        );
    }
}
