//! Stream lag and slot WAL of a running rewrite, measured off the apply path.
//!
//! The apply loop publishes two facts into a [`Watermark`] (plain atomics, no
//! lock, no I/O): the position it has applied and the commit time of the last
//! transaction it applied. A separate task ([`spawn_poller`], named "lag
//! poller") asks the server once a second for its WAL position and for the WAL
//! the job's slot retains, and turns the three into the lag shown in
//! [`JobProgress`]. Why a separate task: the apply loop awaits each statement,
//! so while one waits on a lock nothing in that loop runs — and that is exactly
//! when the lag must keep growing on screen and in the metrics.
//!
//! # What the lag means
//!
//! - **Bytes**: the server's WAL position (`pg_current_wal_lsn()`) minus the
//!   applied position. The applied position includes the keepalive's WAL end
//!   when nothing received is unapplied (the same rule that lets the slot be
//!   confirmed there), so an idle job reaches 0 even though unrelated WAL is
//!   written (see [`crate::replication::stream`]). This is the measure
//!   operators know as `pg_current_wal_lsn() - confirmed_flush_lsn`; note
//!   that the WAL of a transaction that has not committed yet is not lag (a
//!   keepalive may pass it), so a single huge transaction shows as lag in
//!   bytes only from its commit on — the time lag still grows meanwhile.
//! - **Time**: an upper bound on how long ago the oldest unapplied commit
//!   happened, computed by [`LagTracker`] as `now` minus the latest instant
//!   before which *everything* committed is known to be applied. Two witnesses
//!   give such instants: the commit time of the last applied transaction
//!   (commit order is WAL order), and the time of any poll whose server
//!   position the applied position has since passed. The later one wins; when
//!   the applied position has reached the current server position the lag is
//!   zero. So an idle job shows 0 s, not the age of its last commit, and a
//!   stuck job shows its lag growing from the moment it fell behind.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::error::{chain, Error};
use crate::pg::{ConnSpec, Lsn};
use crate::progress::{commit_lag, JobProgress};

/// What the apply loop has applied, shared with the lag poller.
#[derive(Debug)]
pub struct Watermark {
    applied: AtomicU64,
    /// Commit time of the last applied transaction (µs since 2000-01-01),
    /// `i64::MIN` before any.
    commit_time: AtomicI64,
    streaming: AtomicBool,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            applied: AtomicU64::new(0),
            commit_time: AtomicI64::new(i64::MIN),
            streaming: AtomicBool::new(false),
        }
    }
}

impl Watermark {
    /// A fresh watermark, shared.
    pub fn new() -> Arc<Watermark> {
        Arc::new(Watermark::default())
    }

    /// The stream is being applied from `start` on (lag is measured from now).
    pub fn start_streaming(&self, start: Lsn) {
        self.set_applied(start);
        self.streaming.store(true, Relaxed);
    }

    /// Whether the stream is being applied.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Relaxed)
    }

    /// Everything up to `lsn` is applied (only ever grows).
    pub fn set_applied(&self, lsn: Lsn) {
        self.applied.fetch_max(lsn.0, Relaxed);
    }

    /// The applied position.
    pub fn applied(&self) -> Lsn {
        Lsn(self.applied.load(Relaxed))
    }

    /// A transaction committed at `commit_time` (µs since 2000-01-01, as
    /// pgoutput sends it) was applied.
    pub fn set_commit_time(&self, commit_time: i64) {
        self.commit_time.fetch_max(commit_time, Relaxed);
    }

    /// Commit time of the last applied transaction, if any.
    pub fn commit_time(&self) -> Option<i64> {
        let t = self.commit_time.load(Relaxed);
        (t != i64::MIN).then_some(t)
    }
}

/// Most polls remembered while behind; older ones are forgotten, which only
/// makes the time lag a looser upper bound, never a wrong one.
const MAX_POLLS: usize = 4096;

/// Turns polls of the server's position into lag in bytes and time (see the
/// module docs). Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct LagTracker {
    /// Polls (time, server position) the applied position has not passed yet.
    behind: VecDeque<(Instant, Lsn)>,
    /// Latest instant before which everything committed is applied.
    caught_up_at: Instant,
}

impl LagTracker {
    /// Start with everything committed before `since` applied (for a rewrite:
    /// the slot's snapshot, which the copy covered).
    pub fn new(since: Instant) -> Self {
        LagTracker {
            behind: VecDeque::new(),
            caught_up_at: since,
        }
    }

    /// One poll at `now` (`wall` is the same instant on the wall clock): the
    /// server is at `server`, the job has applied up to `applied`, and the
    /// last applied transaction committed at `commit_time`. Returns the lag
    /// in bytes and time.
    pub fn observe(
        &mut self,
        now: Instant,
        wall: SystemTime,
        server: Lsn,
        applied: Lsn,
        commit_time: Option<i64>,
    ) -> (u64, Duration) {
        while let Some(&(at, lsn)) = self.behind.front() {
            if lsn > applied {
                break;
            }
            self.caught_up_at = self.caught_up_at.max(at);
            self.behind.pop_front();
        }
        let bytes = server.bytes_since(applied);
        if bytes == 0 {
            self.behind.clear();
            self.caught_up_at = now;
            return (0, Duration::ZERO);
        }
        if self.behind.len() >= MAX_POLLS {
            self.behind.pop_front();
        }
        self.behind.push_back((now, server));
        let by_poll = now.saturating_duration_since(self.caught_up_at);
        let time = match commit_time {
            Some(c) => by_poll.min(commit_lag(c, wall)),
            None => by_poll,
        };
        (bytes, time)
    }
}

/// Where a job stands in the stream: the furthest of the positions it is
/// known to have reached — the applied position recorded with the shadows,
/// the slot's confirmed position (which keepalives move on while only
/// unpublished tables change, so a job whose tables had no writes still
/// advances), and the slot's consistent point (before anything was applied).
/// `None` when none is known. Every lag figure of pg-rekey — the progress
/// bar, the metrics, `status` and the cutover's go/no-go — is the server's
/// WAL position minus this.
pub fn stands_at<I: IntoIterator<Item = Option<Lsn>>>(positions: I) -> Option<Lsn> {
    positions.into_iter().flatten().max()
}

/// The lag of one job as seen from any session (`status`, `cutover`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct JobLag {
    /// The job.
    pub job_id: uuid::Uuid,
    /// Server WAL position minus [`stands_at`].
    pub bytes: u64,
    /// How far behind in time: 0 when caught up in bytes, otherwise the
    /// WAL sender's `flush_lag` for the slot (the time between a WAL record
    /// being written and the job confirming it applied), `None` while no WAL
    /// sender serves the slot or the server has no measurement yet.
    pub seconds: Option<f64>,
}

/// One row per job: its positions, the server's, and the WAL sender's lag.
const JOB_LAG_SQL: &str = "\
SELECT j.job_id, pg_current_wal_lsn()::text, max(j.applied_lsn)::text, max(j.consistent_lsn)::text,
       max(s.confirmed_flush_lsn)::text, max(extract(epoch FROM r.flush_lag))::float8
  FROM pgrekey.jobs j
  LEFT JOIN pg_replication_slots s ON s.slot_name = j.slot_name
  LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
 WHERE $1::uuid[] IS NULL OR j.job_id = ANY($1)
 GROUP BY j.job_id";

/// The lag of each job (all jobs when `job_ids` is `None`), from the same
/// positions the rewrite process measures (see [`stands_at`]). Reads the
/// primary's WAL position: call it on the primary.
pub async fn job_lags(
    client: &Client,
    job_ids: Option<&[uuid::Uuid]>,
) -> Result<Vec<JobLag>, Error> {
    let ids: Option<Vec<uuid::Uuid>> = job_ids.map(|i| i.to_vec());
    let rows = client
        .query(JOB_LAG_SQL, &[&ids])
        .await
        .map_err(Error::db("read the jobs' positions and lag"))?;
    let lsn = |r: &tokio_postgres::Row, i: usize| -> Option<Lsn> {
        r.get::<_, Option<String>>(i).and_then(|l| l.parse().ok())
    };
    Ok(rows
        .iter()
        .map(|r| {
            let server = lsn(r, 1).unwrap_or_default();
            let at = stands_at([lsn(r, 2), lsn(r, 3), lsn(r, 4)]);
            let bytes = at.map_or(0, |a| server.bytes_since(a));
            JobLag {
                job_id: r.get(0),
                bytes,
                seconds: lag_seconds(bytes, r.get::<_, Option<f64>>(5)),
            }
        })
        .collect())
}

/// Time lag from the byte lag and the WAL sender's measurement: caught up
/// in bytes is caught up in time (the server keeps showing its last
/// measurement for a while after).
pub fn lag_seconds(bytes: u64, flush_lag: Option<f64>) -> Option<f64> {
    if bytes == 0 {
        Some(0.0)
    } else {
        flush_lag.map(|s| s.max(0.0))
    }
}

/// The poller's query: the server's WAL position and the WAL the job's slot
/// retains (NULL before the slot exists).
const POLL_SQL: &str = "\
SELECT pg_current_wal_lsn()::text,
       (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8
          FROM pg_replication_slots WHERE slot_name = $1::text),
       (SELECT confirmed_flush_lsn::text
          FROM pg_replication_slots WHERE slot_name = $1::text)";

/// One poll: the server's position, the WAL the slot retains and the slot's
/// confirmed position (both `None` before the slot exists).
struct Polled {
    server: Lsn,
    retained: Option<u64>,
    confirmed: Option<Lsn>,
}

async fn poll(client: &Client, slot: &str) -> Result<Polled, Error> {
    let row = client
        .query_one(POLL_SQL, &[&slot])
        .await
        .map_err(Error::db(
            "read the WAL position and the slot's retained WAL",
        ))?;
    let lsn: String = row
        .try_get(0)
        .map_err(Error::db("decode the WAL position"))?;
    let retained: Option<i64> = row
        .try_get(1)
        .map_err(Error::db("decode the slot's retained WAL"))?;
    let lsn = lsn.parse::<Lsn>().map_err(|e| {
        Error::Precondition(format!(
            "the server returned an unreadable WAL position: {e}"
        ))
    })?;
    let confirmed: Option<String> = row
        .try_get(2)
        .map_err(Error::db("decode the slot's confirmed position"))?;
    Ok(Polled {
        server: lsn,
        retained: retained.map(|b| u64::try_from(b).unwrap_or(0)),
        confirmed: confirmed.and_then(|c| c.parse::<Lsn>().ok()),
    })
}

/// Poll every `every` until `stop` resolves (or its sender is dropped),
/// publishing the job's slot's retained WAL and — once the watermark says
/// streaming — the lag of every table into `progress`. A failed poll is
/// logged once per outage and retried on a fresh session; it never stops the
/// job (this is display only).
pub fn spawn_poller(
    spec: ConnSpec,
    slot: String,
    progress: Arc<JobProgress>,
    watermark: Arc<Watermark>,
    every: Duration,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> JoinHandle<()> {
    crate::task::spawn("lag-tracker", async move {
        let mut stop = stop;
        let mut client: Option<Client> = None;
        let mut tracker: Option<LagTracker> = None;
        let mut failing = false;
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(10)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = interval.tick() => {}
            }
            let c = match client.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => match crate::pg::connect(&spec, "lag poller").await {
                    Ok(c) => c,
                    Err(e) => {
                        if !failing {
                            failing = true;
                            tracing::warn!(task = "lag poller", error = %chain(&e), "cannot poll the WAL position; lag is not updated");
                        }
                        continue;
                    }
                },
            };
            match poll(&c, &slot).await {
                Ok(p) => {
                    if failing {
                        failing = false;
                        tracing::info!(task = "lag poller", "polling the WAL position again");
                    }
                    if let Some(b) = p.retained {
                        progress.set_wal_retained(b);
                    }
                    // Measured from the moment the slot exists (its
                    // consistent point is where the stream must start), so
                    // the copy and index builds show the lag they build up,
                    // and bytes and time start together.
                    if p.confirmed.is_some() || watermark.is_streaming() {
                        let now = Instant::now();
                        let t = tracker.get_or_insert_with(|| LagTracker::new(now));
                        let applied =
                            stands_at([Some(watermark.applied()), p.confirmed]).unwrap_or_default();
                        let (bytes, time) = t.observe(
                            now,
                            SystemTime::now(),
                            p.server,
                            applied,
                            watermark.commit_time(),
                        );
                        for table in progress.tables() {
                            table.set_lag(bytes, time);
                        }
                    }
                    client = Some(c);
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(task = "lag poller", error = %chain(&e), "cannot poll the WAL position; lag is not updated");
                    }
                }
            }
        }
        tracing::debug!(task = "lag poller", "stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const PG_EPOCH: u64 = 946_684_800;

    /// A wall-clock instant as pgoutput's commit time.
    fn pg_us(wall: SystemTime) -> i64 {
        let unix = wall.duration_since(UNIX_EPOCH).unwrap();
        (unix.as_micros() as i64) - (PG_EPOCH as i64) * 1_000_000
    }

    #[test]
    fn caught_up_is_zero_even_long_after_the_last_commit() {
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let mut t = LagTracker::new(t0);
        let old_commit = pg_us(w0 - Duration::from_secs(3600));
        assert_eq!(
            t.observe(t0, w0, Lsn(500), Lsn(500), Some(old_commit)),
            (0, Duration::ZERO)
        );
        // Applied ahead of the polled position (a keepalive raced the poll).
        assert_eq!(
            t.observe(t0, w0, Lsn(400), Lsn(500), None),
            (0, Duration::ZERO)
        );
    }

    #[test]
    fn a_stuck_job_lags_from_when_it_fell_behind() {
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let at = |s: u64| (t0 + Duration::from_secs(s), w0 + Duration::from_secs(s));
        let mut t = LagTracker::new(t0);
        let commit = Some(pg_us(w0));
        // Caught up at 0 s.
        let (i, w) = at(0);
        assert_eq!(t.observe(i, w, Lsn(100), Lsn(100), commit).0, 0);
        // The server moves on; nothing more is applied.
        let (i, w) = at(1);
        assert_eq!(
            t.observe(i, w, Lsn(300), Lsn(100), commit),
            (200, Duration::from_secs(1))
        );
        let (i, w) = at(5);
        assert_eq!(
            t.observe(i, w, Lsn(900), Lsn(100), commit),
            (800, Duration::from_secs(5)),
            "grows while stuck"
        );
        // Apply passes the position polled at 1 s, but not the one at 5 s:
        // everything committed before 1 s is applied.
        let (i, w) = at(6);
        assert_eq!(
            t.observe(i, w, Lsn(950), Lsn(300), commit),
            (650, Duration::from_secs(5))
        );
        // A recent applied commit is the tighter witness.
        let (i, w) = at(7);
        let fresh = Some(pg_us(w - Duration::from_millis(300)));
        assert_eq!(
            t.observe(i, w, Lsn(1000), Lsn(960), fresh),
            (40, Duration::from_millis(300))
        );
        // Caught up again.
        let (i, w) = at(8);
        assert_eq!(
            t.observe(i, w, Lsn(1000), Lsn(1000), fresh),
            (0, Duration::ZERO)
        );
    }

    #[test]
    fn no_commit_yet_counts_from_the_start() {
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let mut t = LagTracker::new(t0);
        let (b, d) = t.observe(
            t0 + Duration::from_secs(2),
            w0 + Duration::from_secs(2),
            Lsn(10),
            Lsn(0),
            None,
        );
        assert_eq!((b, d), (10, Duration::from_secs(2)));
    }

    #[test]
    fn remembered_polls_are_bounded() {
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let mut t = LagTracker::new(t0);
        for i in 0..(MAX_POLLS as u64 + 10) {
            t.observe(
                t0 + Duration::from_millis(i),
                w0,
                Lsn(100 + i),
                Lsn(1),
                None,
            );
        }
        assert_eq!(t.behind.len(), MAX_POLLS);
    }

    #[test]
    fn a_quiet_job_stands_at_its_confirmed_position() {
        // Applied never recorded (no writes to the tables), consistent point
        // far back, the slot confirmed by keepalives near the server.
        assert_eq!(
            stands_at([None, Some(Lsn(100)), Some(Lsn(9_000))]),
            Some(Lsn(9_000))
        );
        assert_eq!(
            stands_at([Some(Lsn(9_100)), Some(Lsn(100)), Some(Lsn(9_000))]),
            Some(Lsn(9_100))
        );
        assert_eq!(stands_at([None, None]), None);
        assert_eq!(lag_seconds(0, Some(3.0)), Some(0.0));
        assert_eq!(lag_seconds(10, Some(3.0)), Some(3.0));
        assert_eq!(lag_seconds(10, None), None);
    }

    #[test]
    fn watermark_only_grows() {
        let w = Watermark::new();
        assert_eq!((w.applied(), w.commit_time()), (Lsn(0), None));
        assert!(!w.is_streaming());
        w.start_streaming(Lsn(50));
        w.set_applied(Lsn(40));
        w.set_commit_time(7);
        w.set_commit_time(3);
        assert_eq!((w.applied(), w.commit_time()), (Lsn(50), Some(7)));
        assert!(w.is_streaming());
    }
}
