//! What a cutover decides before and after its attempts: whether the jobs
//! are close enough to start one (the lag gate, optionally waiting for the
//! lag to fall), who held the locks when an attempt timed out, and the
//! give-up summary naming the cause of each attempt.
//!
//! The lag is [`crate::lag::job_lags`]: the same positions `status`, the
//! progress bar and the metrics use, so a job `status` shows as caught up is
//! one the cutover accepts — a quiet job (no writes to its tables, so no
//! applied position recorded) stands at its slot's confirmed position.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::Error;
use crate::units::format_bytes;

/// Outcome of an attempt that was not started because the jobs lagged.
pub const LAG_ABOVE_LIMIT: &str = "lag_above_limit";

/// Outcome of an attempt a `before-cutover` hook vetoed.
pub const VETOED_BY_HOOK: &str = "vetoed_by_hook";

/// The largest byte lag among `job_ids`.
pub async fn max_lag(admin: &Client, job_ids: &[Uuid]) -> Result<u64, Error> {
    Ok(crate::lag::job_lags(admin, Some(job_ids))
        .await?
        .iter()
        .map(|l| l.bytes)
        .max()
        .unwrap_or(0))
}

/// Wait until the lag of `job_ids` is at most `limit` or `deadline` passes,
/// polling every `every`. Returns the last lag measured.
pub async fn wait_for_lag(
    admin: &Client,
    job_ids: &[Uuid],
    limit: u64,
    deadline: Instant,
    every: Duration,
) -> Result<u64, Error> {
    let mut logged = Instant::now() - Duration::from_secs(60);
    loop {
        let lag = max_lag(admin, job_ids).await?;
        if lag <= limit || Instant::now() >= deadline {
            return Ok(lag);
        }
        if logged.elapsed() >= Duration::from_secs(5) {
            logged = Instant::now();
            tracing::info!(
                lag = %format_bytes(lag),
                limit = %format_bytes(limit),
                "waiting for the lag to fall before the cutover"
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// A session holding a lock on one of the tables a cutover must lock.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LockHolder {
    /// Backend pid.
    pub pid: i32,
    /// `application_name`.
    pub application_name: String,
    /// `state` (`idle in transaction`, `active`, …).
    pub state: String,
    /// When its current (or last) query started, UTC.
    pub query_start: Option<String>,
    /// The table and lock mode held.
    pub lock: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}, {}{}) holds {}",
            self.pid,
            if self.application_name.is_empty() {
                "no application_name"
            } else {
                &self.application_name
            },
            if self.state.is_empty() {
                "state unknown"
            } else {
                &self.state
            },
            self.query_start
                .as_ref()
                .map(|q| format!(", query started {q}"))
                .unwrap_or_default(),
            self.lock
        )
    }
}

/// Sessions other than this one holding a lock on any of `relations` (OIDs)
/// in this database — what a lock timeout waited behind, as pg_repack lists
/// them.
pub async fn lock_holders(admin: &Client, relations: &[u32]) -> Result<Vec<LockHolder>, Error> {
    let rows = admin
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),
                    to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
                    string_agg(DISTINCT format('%s on %s', l.mode, l.relation::regclass), ', ')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.granted AND l.locktype = 'relation'
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.relation = ANY($1::oid[]) AND l.pid <> pg_backend_pid()
              GROUP BY 1, 2, 3, 4 ORDER BY 1",
            &[&relations],
        )
        .await
        .map_err(Error::db("list the sessions holding locks on the tables"))?;
    Ok(rows
        .iter()
        .map(|r| LockHolder {
            pid: r.get(0),
            application_name: r.get(1),
            state: r.get(2),
            query_start: r.get(3),
            lock: r.get(4),
        })
        .collect())
}

/// The give-up summary: how many attempts ended for each cause, and for
/// each cause what to do. `outcomes` are the attempts' outcomes in order;
/// `holders` the sessions that held locks at the last lock timeout.
pub fn give_up_reason(
    outcomes: &[&str],
    holders: &[LockHolder],
    max_lag_bytes: u64,
    last_lag: Option<u64>,
) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for o in outcomes {
        let class = if o.starts_with("error") { "error" } else { o };
        match counts.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n += 1,
            None => counts.push((class, 1)),
        }
    }
    let mut out = format!(
        "gave up after {} attempt{} ({}); the sources are untouched and still streaming.",
        outcomes.len(),
        if outcomes.len() == 1 { "" } else { "s" },
        counts
            .iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (class, _) in &counts {
        let advice = match *class {
            LAG_ABOVE_LIMIT => format!(
                "The jobs were further behind{} than --max-lag-bytes {}: wait until `pg-rekey status` shows a small lag, \
                 or run cutover with --wait-for-lag 5m (it waits instead of spending attempts), or raise --max-lag-bytes.",
                last_lag.map(|l| format!(" ({})", format_bytes(l))).unwrap_or_default(),
                format_bytes(max_lag_bytes)
            ),
            "lock_timeout" if holders.is_empty() => "Locks were not granted within --lock-timeout; no session held a lock on the tables when checked \
                 (the holders were short transactions): run cutover again, or raise --lock-timeout."
                .to_string(),
            "lock_timeout" => format!(
                "Locks were not granted within --lock-timeout. Sessions holding locks on the tables: {}. \
                 End them (SELECT pg_terminate_backend(pid)) or wait for them, or raise --lock-timeout.",
                holders
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            "drain_timeout" => "The jobs did not apply the fence within --max-hold while the locks were held: \
                 they are behind; wait for `pg-rekey status` to show a small lag, or raise --max-hold."
                .to_string(),
            VETOED_BY_HOOK => "The before-cutover hook failed and so vetoed the attempt (see its output in the log); \
                 fix what it checks, or run cutover without it."
                .to_string(),
            "catalog_changed" => "DDL on the tables or their dependents kept committing while the swap was built; \
                 stop the DDL and run cutover again."
                .to_string(),
            _ => "An attempt failed with an error (see the log); run cutover again once it is fixed.".to_string(),
        };
        out.push(' ');
        out.push_str(&advice);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> LockHolder {
        LockHolder {
            pid: 4242,
            application_name: "billing".into(),
            state: "idle in transaction".into(),
            query_start: Some("2026-12-04 17:00:00 UTC".into()),
            lock: "RowExclusiveLock on sessions".into(),
        }
    }

    #[test]
    fn the_summary_names_each_cause_and_its_remedy() {
        let r = give_up_reason(
            &[LAG_ABOVE_LIMIT, LAG_ABOVE_LIMIT],
            &[],
            16 << 20,
            Some(300 << 20),
        );
        assert!(
            r.starts_with("gave up after 2 attempts (2 lag_above_limit)"),
            "{r}"
        );
        assert!(r.contains("(300 MiB) than --max-lag-bytes 16.0 MiB"), "{r}");
        assert!(r.contains("--wait-for-lag"), "{r}");
        assert!(
            !r.contains("lock"),
            "a lag give-up does not send the operator after locks: {r}"
        );

        let r = give_up_reason(
            &["lock_timeout", "lock_timeout", "drain_timeout", "error: x"],
            &[holder()],
            1,
            None,
        );
        assert!(
            r.contains("(2 lock_timeout, 1 drain_timeout, 1 error)"),
            "{r}"
        );
        assert!(
            r.contains("pid 4242 (billing, idle in transaction, query started 2026-12-04 17:00:00 UTC) holds RowExclusiveLock on sessions"),
            "{r}"
        );
        assert!(r.contains("--max-hold"), "{r}");
    }
}
