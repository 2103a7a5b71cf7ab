//! Copy throttling: slow down or pause the copy while physical replicas lag
//! or the job's slot retains too much WAL.
//!
//! Why: the copy writes the whole table into the shadow once, as fast as it
//! can. Every byte of it is WAL that physical replicas must replay (their lag
//! is what read replicas serve stale data from, and what a failover loses),
//! and WAL the job's own slot keeps until the stream has applied past it
//! (the disk fills, or `max_slot_wal_keep_size` invalidates the slot and the
//! job must start over). Only the copy is throttled: **applying the stream is
//! never throttled**, since holding it back would only make the slot retain
//! more and the lag grow, the opposite of what the throttle is for.
//!
//! Shape: [`decide`] is a pure function from an [`Observation`] and the
//! [`ThrottleLimits`] to a [`Decision`]; [`Throttle`] is a task that polls the
//! server about once a second ([`observe`]), publishes the decision on a
//! `watch` channel and into [`JobProgress`], and logs when the copy starts
//! and stops pausing. The copy calls [`Throttle::wait_ready`] between chunks.
//!
//! Decision rules (pressure = observed / limit, the largest over all limits):
//! - pressure > 1: **pause**;
//! - after a pause, keep pausing until the pressure falls to `slow_down_at`
//!   (hysteresis, so the copy does not flap around the limit);
//! - `slow_down_at` < pressure ≤ 1: **slow down**, sleeping between chunks in
//!   proportion to how far into that band the pressure is, up to
//!   `max_slow_down`;
//! - otherwise proceed. Unset limits and unobserved values exert no pressure.
//!
//! Which slots count, and why not the job's own: during the copy the job's
//! slot retains every byte written since its snapshot — the copy's own shadow
//! writes included — and it cannot release any of it before the stream
//! starts, which is after the copy. Pausing the copy never shrinks it, so a
//! limit on it would, once crossed, pause the copy forever. The same holds
//! for the slots of other pg-rekey jobs (a second `rewrite` copying at the
//! same time would hold this one, and this one that one: a deadlock). So the
//! slot limit ([`ThrottleLimits::max_slot_wal_bytes`]) measures the **other
//! consumers' slots**: the largest WAL retained by any slot that is physical
//! (a replica's) or logical on the job's database, excluding slots named with
//! [`JOB_SLOT_PREFIX`] and the job's own. Those are the slots the copy's WAL
//! burst really pushes back, and pausing lets their consumers catch up. A
//! slot nobody consumes therefore pauses the copy until it is dropped or the
//! limit raised; the pause reason names it. Logical slots of other databases
//! are left out: their consumers replicate other data, and one database's
//! rewrite should not wait on them. The job's own slot is still observed
//! ([`Observation::slot_wal_bytes`]) and shown as "WAL retained" in progress.
//!
//! Which replicas count: only physical ones. Logical walsenders (the job's
//! own stream, other subscribers) are excluded by being connected to a
//! database, otherwise the copy would throttle on its own stream's lag. Seeing other
//! roles' replication details needs `pg_read_all_stats` (or `pg_monitor`);
//! without it the replicas are counted as hidden and a warning says so.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::error::{chain, Error, Result};
use crate::pg::ConnSpec;
use crate::progress::{format_bytes, format_duration, JobProgress, ThrottleState};

/// Limits of the copy throttle. `None` disables a limit.
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleLimits {
    /// Pause the copy while a physical replica's replay lag exceeds this.
    pub max_replica_lag: Option<Duration>,
    /// Pause the copy while a physical replica's replay position is further
    /// than this many bytes behind the server's WAL.
    pub max_replica_lag_bytes: Option<u64>,
    /// Pause the copy while another consumer's slot (see the module docs:
    /// not the job's own, nor another pg-rekey job's) retains more WAL than this.
    pub max_slot_wal_bytes: Option<u64>,
    /// Fraction of a limit at which the copy starts slowing down (and below
    /// which a pause ends), in [0, 1).
    pub slow_down_at: f64,
    /// Longest sleep between chunks while slowing down.
    pub max_slow_down: Duration,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        ThrottleLimits {
            max_replica_lag: None,
            max_replica_lag_bytes: None,
            max_slot_wal_bytes: None,
            slow_down_at: 0.7,
            max_slow_down: Duration::from_millis(500),
        }
    }
}

impl ThrottleLimits {
    /// Whether any limit is set (otherwise the throttle need not run).
    pub fn any(&self) -> bool {
        self.max_replica_lag.is_some()
            || self.max_replica_lag_bytes.is_some()
            || self.max_slot_wal_bytes.is_some()
    }
}

/// What one poll of the server saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Largest `replay_lag` among physical replicas (None: none, or idle).
    pub replica_lag: Option<Duration>,
    /// Largest distance from the server's WAL position to a physical
    /// replica's replay position, bytes.
    pub replica_lag_bytes: Option<u64>,
    /// Physical replicas (walsenders without a logical slot) seen.
    pub replicas: u32,
    /// Of those, how many hide their details from this role.
    pub replicas_hidden: u32,
    /// WAL retained by the job's slot, bytes (None: no slot given, slot
    /// missing, or invalidated). Shown in progress; not a throttle input.
    pub slot_wal_bytes: Option<u64>,
    /// The most WAL retained by one of the other consumers' slots (physical,
    /// or logical on this database; neither the job's nor another pg-rekey
    /// job's), bytes. None when there is no such slot.
    pub other_slot_wal_bytes: Option<u64>,
    /// The name of that slot.
    pub other_slot: Option<String>,
}

/// Prefix of the slots pg-rekey's `rewrite` creates (`pg_rekey_<job>`); such
/// slots never count toward the slot limit (see the module docs).
pub const JOB_SLOT_PREFIX: &str = "pg_rekey_";

/// Why the copy is paused (or slowed).
#[derive(Clone, Debug, PartialEq)]
pub enum PauseReason {
    /// A physical replica replays too slowly.
    ReplicaLag {
        /// Observed lag.
        lag: Duration,
        /// The limit.
        limit: Duration,
    },
    /// A physical replica is too many WAL bytes behind.
    ReplicaLagBytes {
        /// Observed distance.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Another consumer's slot retains too much WAL.
    SlotWal {
        /// The slot.
        slot: String,
        /// Observed retained WAL.
        retained: u64,
        /// The limit.
        limit: u64,
    },
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PauseReason::ReplicaLag { lag, limit } => write!(
                f,
                "replica replay lag {} (limit {})",
                format_duration(*lag),
                format_duration(*limit)
            ),
            PauseReason::ReplicaLagBytes { bytes, limit } => write!(
                f,
                "replica replay {} behind (limit {})",
                format_bytes(*bytes),
                format_bytes(*limit)
            ),
            PauseReason::SlotWal {
                slot,
                retained,
                limit,
            } => write!(
                f,
                "slot {slot} retains {} of WAL (limit {})",
                format_bytes(*retained),
                format_bytes(*limit)
            ),
        }
    }
}

/// What the copy should do before its next chunk.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Copy at full speed.
    Proceed,
    /// Sleep this long, then copy the next chunk.
    SlowDown {
        /// The sleep.
        pause: Duration,
        /// The pressure behind it.
        reason: PauseReason,
    },
    /// Wait until the throttle says otherwise.
    Pause {
        /// Why.
        reason: PauseReason,
    },
}

impl Decision {
    /// The state shown in progress and metrics.
    pub fn state(&self) -> ThrottleState {
        match self {
            Decision::Proceed => ThrottleState::Proceed,
            Decision::SlowDown { .. } => ThrottleState::SlowDown,
            Decision::Pause { .. } => ThrottleState::Paused,
        }
    }

    /// The reason, unless proceeding.
    pub fn reason(&self) -> Option<&PauseReason> {
        match self {
            Decision::Proceed => None,
            Decision::SlowDown { reason, .. } | Decision::Pause { reason } => Some(reason),
        }
    }
}

fn ratio(value: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        value / limit
    } else if value > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Decide from one observation. `paused` says whether the previous decision
/// was a pause (for the hysteresis described in the module docs).
pub fn decide(obs: &Observation, limits: &ThrottleLimits, paused: bool) -> Decision {
    // (pressure, reason) for every limit that is set and observed.
    let mut pressures: Vec<(f64, PauseReason)> = Vec::with_capacity(3);
    if let (Some(lag), Some(limit)) = (obs.replica_lag, limits.max_replica_lag) {
        pressures.push((
            ratio(lag.as_secs_f64(), limit.as_secs_f64()),
            PauseReason::ReplicaLag { lag, limit },
        ));
    }
    if let (Some(bytes), Some(limit)) = (obs.replica_lag_bytes, limits.max_replica_lag_bytes) {
        pressures.push((
            ratio(bytes as f64, limit as f64),
            PauseReason::ReplicaLagBytes { bytes, limit },
        ));
    }
    if let (Some(retained), Some(limit)) = (obs.other_slot_wal_bytes, limits.max_slot_wal_bytes) {
        pressures.push((
            ratio(retained as f64, limit as f64),
            PauseReason::SlotWal {
                slot: obs.other_slot.clone().unwrap_or_else(|| "?".into()),
                retained,
                limit,
            },
        ));
    }
    // The largest pressure names the reason; ties keep the first (replicas
    // before the slot), so the reason is deterministic.
    let Some((pressure, reason)) = pressures
        .into_iter()
        .reduce(|a, b| if b.0 > a.0 { b } else { a })
    else {
        return Decision::Proceed;
    };
    let slow_at = if limits.slow_down_at.is_finite() {
        limits.slow_down_at.clamp(0.0, 1.0)
    } else {
        1.0
    };
    if pressure > 1.0 || (paused && pressure > slow_at) {
        return Decision::Pause { reason };
    }
    if pressure > slow_at && slow_at < 1.0 {
        let depth = ((pressure - slow_at) / (1.0 - slow_at)).clamp(0.0, 1.0);
        let pause = limits.max_slow_down.mul_f64(depth);
        if !pause.is_zero() {
            return Decision::SlowDown { pause, reason };
        }
    }
    Decision::Proceed
}

/// The one query of a poll: physical replicas' lag, the job's slot's
/// retained WAL, and the other consumers' slot retaining the most WAL (see
/// the module docs), in one round trip.
///
/// A walsender is physical when its session is connected to no database:
/// logical walsenders (`replication=database`) carry a `datid` from their
/// first moment, whereas "holds a logical slot" is only true after
/// `START_REPLICATION`. `datid` is visible to every role. Slots without a
/// `restart_lsn` (never reserved, or invalidated) retain nothing.
const OBSERVE_SQL: &str = "\
WITH physical AS (
  SELECT r.replay_lag, r.replay_lsn, r.state
    FROM pg_stat_replication r
   WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                      WHERE a.pid = r.pid AND a.datid IS NOT NULL)),
other AS (
  SELECT s.slot_name::text AS slot_name,
         pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::int8 AS retained
    FROM pg_replication_slots s
   WHERE s.restart_lsn IS NOT NULL
     AND (s.database IS NULL OR s.database = current_database())
     AND NOT starts_with(s.slot_name::text, $2::text)
     AND s.slot_name::text IS DISTINCT FROM $1::text
   ORDER BY retained DESC, slot_name
   LIMIT 1)
SELECT max(extract(epoch FROM replay_lag))::float8 AS replica_lag,
       max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::int8 AS replica_lag_bytes,
       count(*)::int4 AS replicas,
       (count(*) - count(state))::int4 AS replicas_hidden,
       (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8
          FROM pg_replication_slots WHERE slot_name = $1::text) AS slot_wal_bytes,
       (SELECT retained FROM other) AS other_slot_wal_bytes,
       (SELECT slot_name FROM other) AS other_slot
  FROM physical";

/// Poll the server once. `slot` is the job's slot name, if it has one yet.
pub async fn observe(client: &Client, slot: Option<&str>) -> Result<Observation> {
    let row = client
        .query_one(OBSERVE_SQL, &[&slot, &JOB_SLOT_PREFIX])
        .await
        .map_err(Error::db(
            "read replica lag and slot WAL for the copy throttle",
        ))?;
    let get = |e: tokio_postgres::Error| Error::db("decode the copy throttle's observation")(e);
    let lag: Option<f64> = row.try_get("replica_lag").map_err(get)?;
    let lag_bytes: Option<i64> = row.try_get("replica_lag_bytes").map_err(get)?;
    let replicas: i32 = row.try_get("replicas").map_err(get)?;
    let hidden: i32 = row.try_get("replicas_hidden").map_err(get)?;
    let slot_bytes: Option<i64> = row.try_get("slot_wal_bytes").map_err(get)?;
    let other_bytes: Option<i64> = row.try_get("other_slot_wal_bytes").map_err(get)?;
    let other_slot: Option<String> = row.try_get("other_slot").map_err(get)?;
    Ok(Observation {
        // Negative values (clock or LSN oddities) mean "no lag".
        replica_lag: lag.and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok()),
        replica_lag_bytes: lag_bytes.map(|b| u64::try_from(b).unwrap_or(0)),
        replicas: u32::try_from(replicas).unwrap_or(0),
        replicas_hidden: u32::try_from(hidden).unwrap_or(0),
        slot_wal_bytes: slot_bytes.map(|b| u64::try_from(b).unwrap_or(0)),
        other_slot_wal_bytes: other_bytes.map(|b| u64::try_from(b).unwrap_or(0)),
        other_slot,
    })
}

/// Settings of a running [`Throttle`].
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// The limits.
    pub limits: ThrottleLimits,
    /// The job's slot, whose retained WAL is watched.
    pub slot_name: Option<String>,
    /// How often the server is polled.
    pub poll_every: Duration,
}

impl ThrottleConfig {
    /// Poll once a second.
    pub fn new(limits: ThrottleLimits, slot_name: Option<String>) -> Self {
        ThrottleConfig {
            limits,
            slot_name,
            poll_every: Duration::from_secs(1),
        }
    }
}

/// Handle on the copy throttle. Cheap to clone: each copy worker may hold one.
/// The polling task ends when `shutdown` resolves or every handle is dropped.
#[derive(Clone, Debug)]
pub struct Throttle {
    rx: watch::Receiver<Decision>,
}

impl Throttle {
    /// A throttle that always proceeds and polls nothing (no limits set).
    pub fn disabled() -> Throttle {
        let (tx, rx) = watch::channel(Decision::Proceed);
        drop(tx);
        Throttle { rx }
    }

    /// Connect, poll once (so the first decision is real and a bad
    /// connection or missing privilege shows at start), then keep polling on
    /// a task named "copy throttle". With no limit set, returns
    /// [`Throttle::disabled`] without connecting.
    pub async fn start(
        spec: &ConnSpec,
        config: ThrottleConfig,
        progress: Arc<JobProgress>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Throttle> {
        if !config.limits.any() {
            return Ok(Throttle::disabled());
        }
        let client = crate::pg::connect(spec, "copy throttle").await?;
        let mut poller = Poller {
            spec: spec.clone(),
            client: Some(client),
            config,
            progress,
            current: Decision::Proceed,
            paused_since: None,
            failing: false,
            warned_hidden: false,
        };
        poller.poll().await?;
        let (tx, rx) = watch::channel(poller.current.clone());
        crate::task::spawn("throttle-poller", poller.run(tx, shutdown));
        Ok(Throttle { rx })
    }

    /// The current decision.
    pub fn decision(&self) -> Decision {
        self.rx.borrow().clone()
    }

    /// Call between copy chunks: returns at once when proceeding, after the
    /// pause when slowing down, and when the pause ends when paused. Returns
    /// too if the throttle's task has stopped (shutdown): the copy's own
    /// cancellation decides what happens next.
    pub async fn wait_ready(&self) {
        let mut rx = self.rx.clone();
        loop {
            let d = rx.borrow_and_update().clone();
            match d {
                Decision::Proceed => return,
                Decision::SlowDown { pause, .. } => {
                    tokio::time::sleep(pause).await;
                    return;
                }
                Decision::Pause { .. } => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

struct Poller {
    spec: ConnSpec,
    client: Option<Client>,
    config: ThrottleConfig,
    progress: Arc<JobProgress>,
    current: Decision,
    paused_since: Option<Instant>,
    failing: bool,
    warned_hidden: bool,
}

impl Poller {
    /// One poll: observe, decide, publish into progress, log transitions.
    /// On error the previous decision stays (a monitoring hiccup neither
    /// releases a pause nor starts one).
    async fn poll(&mut self) -> Result<Observation> {
        let client = match self.client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => crate::pg::connect(&self.spec, "copy throttle").await?,
        };
        let timeout = self.config.poll_every.max(Duration::from_secs(1)) * 5;
        let obs =
            match tokio::time::timeout(timeout, observe(&client, self.config.slot_name.as_deref()))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Precondition(format!(
                        "the copy throttle's poll took longer than {} — is the server overloaded?",
                        format_duration(timeout)
                    )))
                }
            };
        self.client = Some(client);
        if obs.replicas_hidden > 0 && !self.warned_hidden {
            self.warned_hidden = true;
            tracing::warn!(
                task = "copy throttle",
                replicas_hidden = obs.replicas_hidden,
                "cannot see the replay lag of some physical replicas; grant pg_monitor (or pg_read_all_stats) to this role so the copy can be throttled on them"
            );
        }
        let paused = matches!(self.current, Decision::Pause { .. });
        let next = decide(&obs, &self.config.limits, paused);
        self.transition(&next);
        if let Some(b) = obs.slot_wal_bytes {
            self.progress.set_wal_retained(b);
        }
        self.progress
            .set_replica_lag(if obs.replicas > obs.replicas_hidden {
                Some(obs.replica_lag.unwrap_or_default())
            } else {
                None
            });
        self.progress
            .set_throttle(next.state(), next.reason().map(|r| r.to_string()));
        self.current = next;
        Ok(obs)
    }

    fn transition(&mut self, next: &Decision) {
        let was_paused = matches!(self.current, Decision::Pause { .. });
        match (was_paused, next) {
            (false, Decision::Pause { reason }) => {
                self.paused_since = Some(Instant::now());
                tracing::info!(task = "copy throttle", reason = %reason, "copy paused");
            }
            (true, Decision::Pause { .. }) => {}
            (true, _) => {
                let paused_for = self
                    .paused_since
                    .take()
                    .map(|s| format_duration(s.elapsed()))
                    .unwrap_or_default();
                tracing::info!(task = "copy throttle", paused_for, "copy resumed");
            }
            (false, Decision::SlowDown { pause, reason }) => {
                if !matches!(self.current, Decision::SlowDown { .. }) {
                    tracing::debug!(task = "copy throttle", reason = %reason, pause_ms = pause.as_millis() as u64, "copy slowing down");
                }
            }
            (false, Decision::Proceed) => {}
        }
    }

    async fn run(mut self, tx: watch::Sender<Decision>, shutdown: impl Future<Output = ()>) {
        let mut interval = tokio::time::interval(self.config.poll_every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await; // the first tick is immediate; start() already polled
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tx.closed() => break,
                _ = interval.tick() => {}
            }
            match self.poll().await {
                Ok(_) => {
                    if self.failing {
                        self.failing = false;
                        tracing::info!(task = "copy throttle", "polling the server again");
                    }
                }
                Err(e) => {
                    // Warn once per outage; the previous decision stays.
                    if !self.failing {
                        self.failing = true;
                        tracing::warn!(task = "copy throttle", error = %chain(&e), decision = %self.current.state().as_str(), "cannot poll replica lag and slot WAL; keeping the last decision");
                    }
                }
            }
            tx.send_if_modified(|d| {
                if *d != self.current {
                    *d = self.current.clone();
                    true
                } else {
                    false
                }
            });
        }
        // Dropping the sender releases every waiter.
        if matches!(self.current, Decision::Pause { .. }) {
            tracing::info!(
                task = "copy throttle",
                "throttle stopped while paused; releasing the copy"
            );
        }
        self.progress.set_throttle(ThrottleState::Proceed, None);
        tracing::debug!(task = "copy throttle", "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn limits() -> ThrottleLimits {
        ThrottleLimits {
            max_replica_lag: Some(Duration::from_secs(10)),
            max_replica_lag_bytes: None,
            max_slot_wal_bytes: Some(100 * MIB),
            slow_down_at: 0.5,
            max_slow_down: Duration::from_millis(1000),
        }
    }

    fn obs(lag_s: Option<f64>, slot: Option<u64>) -> Observation {
        Observation {
            replica_lag: lag_s.map(Duration::from_secs_f64),
            replicas: u32::from(lag_s.is_some()),
            other_slot_wal_bytes: slot,
            other_slot: slot.map(|_| "standby_1".into()),
            ..Observation::default()
        }
    }

    #[test]
    fn proceeds_below_the_band_and_without_data_or_limits() {
        assert_eq!(
            decide(&obs(Some(1.0), Some(10 * MIB)), &limits(), false),
            Decision::Proceed
        );
        assert_eq!(
            decide(&obs(None, None), &limits(), false),
            Decision::Proceed
        );
        assert_eq!(
            decide(&obs(None, None), &limits(), true),
            Decision::Proceed,
            "nothing observed ends a pause"
        );
        let none = ThrottleLimits::default();
        assert!(!none.any());
        assert_eq!(
            decide(&obs(Some(1e6), Some(u64::MAX)), &none, false),
            Decision::Proceed
        );
    }

    #[test]
    fn pauses_over_a_limit_naming_the_worst_pressure() {
        let d = decide(&obs(Some(12.0), Some(10 * MIB)), &limits(), false);
        assert_eq!(
            d,
            Decision::Pause {
                reason: PauseReason::ReplicaLag {
                    lag: Duration::from_secs(12),
                    limit: Duration::from_secs(10)
                }
            }
        );
        // Slot at 3× its limit beats replica at 1.2×.
        let d = decide(&obs(Some(12.0), Some(300 * MIB)), &limits(), false);
        assert_eq!(
            d,
            Decision::Pause {
                reason: PauseReason::SlotWal {
                    slot: "standby_1".into(),
                    retained: 300 * MIB,
                    limit: 100 * MIB
                }
            }
        );
        assert_eq!(d.state(), ThrottleState::Paused);
        assert_eq!(
            d.reason().unwrap().to_string(),
            "slot standby_1 retains 300 MiB of WAL (limit 100 MiB)"
        );
    }

    #[test]
    fn slows_down_in_proportion_inside_the_band() {
        // Band is 50–100 MiB; 75 MiB is halfway: half of the 1 s maximum.
        match decide(&obs(None, Some(75 * MIB)), &limits(), false) {
            Decision::SlowDown { pause, reason } => {
                assert_eq!(pause, Duration::from_millis(500));
                assert!(matches!(reason, PauseReason::SlotWal { .. }));
            }
            d => panic!("expected a slow-down, got {d:?}"),
        }
        match decide(&obs(Some(10.0), None), &limits(), false) {
            Decision::SlowDown { pause, .. } => assert_eq!(
                pause,
                Duration::from_secs(1),
                "at the limit: the full pause"
            ),
            d => panic!("expected a slow-down, got {d:?}"),
        }
        // Exactly at the band's start: no pause yet.
        assert_eq!(
            decide(&obs(None, Some(50 * MIB)), &limits(), false),
            Decision::Proceed
        );
    }

    #[test]
    fn a_pause_holds_until_the_pressure_drops_below_the_band() {
        let l = limits();
        let at = |mib: u64, paused: bool| decide(&obs(None, Some(mib * MIB)), &l, paused);
        assert!(matches!(at(120, false), Decision::Pause { .. }));
        assert!(matches!(at(90, true), Decision::Pause { .. }), "hysteresis");
        assert!(
            matches!(at(90, false), Decision::SlowDown { .. }),
            "same pressure, not paused before"
        );
        assert_eq!(at(40, true), Decision::Proceed);
    }

    #[test]
    fn the_jobs_own_slot_never_pauses_the_copy() {
        // The job's slot retains the copy's own WAL until the stream starts:
        // pausing could never shrink it, so it exerts no pressure.
        let own = Observation {
            slot_wal_bytes: Some(1000 * MIB),
            ..Observation::default()
        };
        assert_eq!(decide(&own, &limits(), false), Decision::Proceed);
        assert_eq!(decide(&own, &limits(), true), Decision::Proceed);
        assert!(JOB_SLOT_PREFIX.starts_with("pg_rekey"));
    }

    #[test]
    fn zero_limits_and_odd_fractions_do_not_divide_by_zero() {
        let l = ThrottleLimits {
            max_slot_wal_bytes: Some(0),
            slow_down_at: 1.0,
            ..ThrottleLimits::default()
        };
        assert!(matches!(
            decide(&obs(None, Some(1)), &l, false),
            Decision::Pause { .. }
        ));
        assert_eq!(decide(&obs(None, Some(0)), &l, false), Decision::Proceed);
        let nan = ThrottleLimits {
            max_slot_wal_bytes: Some(100),
            slow_down_at: f64::NAN,
            ..ThrottleLimits::default()
        };
        assert_eq!(decide(&obs(None, Some(99)), &nan, false), Decision::Proceed);
        assert!(matches!(
            decide(&obs(None, Some(101)), &nan, false),
            Decision::Pause { .. }
        ));
    }

    #[test]
    fn replica_byte_distance_is_a_limit_too() {
        let l = ThrottleLimits {
            max_replica_lag_bytes: Some(MIB),
            ..ThrottleLimits::default()
        };
        let o = Observation {
            replica_lag_bytes: Some(3 * MIB),
            replicas: 1,
            ..Observation::default()
        };
        let d = decide(&o, &l, false);
        assert_eq!(
            d.reason().unwrap().to_string(),
            "replica replay 3.00 MiB behind (limit 1.00 MiB)"
        );
    }

    #[tokio::test]
    async fn disabled_throttle_never_waits() {
        let t = Throttle::disabled();
        assert_eq!(t.decision(), Decision::Proceed);
        t.wait_ready().await;
    }

    #[tokio::test]
    async fn wait_ready_follows_the_channel() {
        let (tx, rx) = watch::channel(Decision::Pause {
            reason: PauseReason::SlotWal {
                slot: "s".into(),
                retained: 2,
                limit: 1,
            },
        });
        let t = Throttle { rx };
        let waiter = crate::task::spawn("test-waiter", {
            let t = t.clone();
            async move { t.wait_ready().await }
        });
        // A slow-down with a zero-length pause (another pause reason) keeps it
        // out of the pause; any non-pause releases the waiter.
        tx.send(Decision::SlowDown {
            pause: Duration::ZERO,
            reason: PauseReason::SlotWal {
                slot: "s".into(),
                retained: 1,
                limit: 1,
            },
        })
        .unwrap();
        waiter.await.unwrap();
        // A dropped sender (throttle stopped) releases a paused waiter too.
        tx.send(Decision::Pause {
            reason: PauseReason::SlotWal {
                slot: "s".into(),
                retained: 2,
                limit: 1,
            },
        })
        .unwrap();
        let waiter = crate::task::spawn("test-waiter", {
            let t = t.clone();
            async move { t.wait_ready().await }
        });
        drop(tx);
        waiter.await.unwrap();
    }
}
