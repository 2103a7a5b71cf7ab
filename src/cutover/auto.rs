//! `rewrite --cutover auto`: the cutover a `rewrite` starts by itself once
//! its tables stream with a small lag.

use std::time::Duration;

use tracing::{info, warn};
use uuid::Uuid;

use super::{run, targets::load_jobs, CutoverConfig};
use crate::pg;
use crate::state::Phase;

/// `rewrite --cutover auto`: wait until every table of `cfg` is streaming
/// with a lag under `cfg.max_lag_bytes`, then cut over (verify included
/// unless `skip_verify`). A cutover that gives up (locks not granted) is
/// retried after a pause; one that finds differences or fails definitely
/// stops trying and logs why — the rewrite keeps streaming and an operator
/// can still run `pg-rekey cutover`. Ends when `shutdown` turns true.
pub async fn auto(cfg: CutoverConfig, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let admin = loop {
        match pg::connect(&cfg.spec, "auto-cutover").await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "auto cutover: cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let jobs = match load_jobs(&admin, &cfg.tables).await {
            Ok(j) => j,
            Err(_) => continue, // not registered yet
        };
        if jobs.iter().all(|j| j.phase() == Some(Phase::CutOver)) {
            // Cut over by someone else (a manual `cutover`), which ran the
            // post-commit steps itself.
            return;
        }
        if jobs.iter().any(|j| j.phase() != Some(Phase::Streaming)) {
            continue;
        }
        let mut ids: Vec<Uuid> = jobs.iter().map(|j| j.job_id).collect();
        ids.dedup();
        match super::gate::max_lag(&admin, &ids).await {
            Ok(lag) if lag <= cfg.max_lag_bytes => {}
            _ => continue,
        }
        info!(
            tables = cfg.tables.len(),
            "auto cutover: every table streams with a small lag; cutting over"
        );
        match run(&cfg).await {
            Ok(r) if r.swapped => {
                for a in &r.attempts {
                    info!(attempt = a.attempt, lock_wait_ms = a.lock_wait_ms, lock_hold_ms = a.lock_hold_ms.unwrap_or(0.0), outcome = %a.outcome, "auto cutover attempt");
                }
                return;
            }
            Ok(r)
                if r.reason
                    .as_deref()
                    .is_some_and(|x| x.starts_with("verify found differences")) =>
            {
                warn!(
                    reason = r.reason.as_deref().unwrap_or(""),
                    "auto cutover stopped: the shadows differ; nothing was swapped"
                );
                return;
            }
            Ok(r) => {
                warn!(
                    reason = r.reason.as_deref().unwrap_or(""),
                    "auto cutover gave up this time; retrying in 30 s"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) if e.is_transient() => {
                warn!(error = %crate::error::chain(&e), "auto cutover failed; retrying")
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "auto cutover stopped; run `pg-rekey cutover` by hand once the cause is fixed");
                return;
            }
        }
    }
}
