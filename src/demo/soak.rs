//! `pg-rekey soak`: the demo's scenario against any server, for a given
//! duration in total.
//!
//! The run creates its own database (`pg_rekey_soak_<random>`) on the server
//! and drops it at the end; no other database is touched. Seed, workload and
//! rewrite are the demo's ([`crate::demo`]); the difference is the time spent
//! streaming under load: everything left of the duration after the copy,
//! minus a reserve for the cutover and the verification
//! ([`cutover_reserve`]). A run longer than planned is reported, not cut
//! short: the copy and the verification always finish.
//!
//! The figures are the demo's [`DemoSummary`], so a soak's report and exit
//! code read the same way (exit 0 only when the verification passed).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{run_scenario, DemoSummary, Scenario, StreamPlan};
use crate::error::Error;
use crate::pg::ConnSpec;

/// What `pg-rekey soak` runs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The server; the run creates and drops its own database there.
    pub server: ConnSpec,
    /// Total duration of the run (seed, copy, streaming, cutover, verification).
    pub duration: Duration,
    /// Users to seed.
    pub users: u64,
    /// Rows to seed.
    pub rows: u64,
    /// Concurrent writer sessions.
    pub writers: usize,
    /// Concurrent reader sessions.
    pub readers: usize,
}

impl SoakConfig {
    /// A soak of `duration` on `server` with the demo's sizes.
    pub fn new(server: ConnSpec, duration: Duration) -> SoakConfig {
        SoakConfig {
            server,
            duration,
            users: 2_000,
            rows: 50_000,
            writers: 3,
            readers: 2,
        }
    }
}

/// Time kept back from the streaming phase for the cutover and the
/// verification: a fifth of the run, between 2 and 30 seconds.
pub fn cutover_reserve(duration: Duration) -> Duration {
    (duration / 5).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// Run a soak. `Ok` carries the summary whatever the verdict (see
/// [`DemoSummary::passed`]); `Err` means it could not run.
pub async fn run(cfg: &SoakConfig, shutdown: watch::Receiver<bool>) -> Result<DemoSummary, Error> {
    if cfg.duration.is_zero() {
        return Err(Error::Config(
            "--duration must be more than 0 (for example 60s or 10m)".into(),
        ));
    }
    let started = Instant::now();
    let stream_until = started + cfg.duration.saturating_sub(cutover_reserve(cfg.duration));
    let scenario = Scenario {
        kind: "soak",
        users: cfg.users,
        rows: cfg.rows,
        writers: cfg.writers,
        readers: cfg.readers,
        stream: StreamPlan::Until(stream_until),
        report_every: Duration::from_secs(10)
            .min(cfg.duration / 6)
            .max(Duration::from_secs(1)),
        keep_database: false,
        planned: Some(cfg.duration),
    };
    run_scenario(&cfg.server, cfg.server.redacted(), &scenario, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_a_fifth_within_bounds() {
        assert_eq!(
            cutover_reserve(Duration::from_secs(5)),
            Duration::from_secs(2)
        );
        assert_eq!(
            cutover_reserve(Duration::from_secs(60)),
            Duration::from_secs(12)
        );
        assert_eq!(
            cutover_reserve(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
    }
}
