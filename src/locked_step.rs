//! One short `ACCESS EXCLUSIVE` step on one table, bounded: the helper
//! `prepare` and `promote` share.
//!
//! A step runs in a transaction of its own: `BEGIN; SET LOCAL lock_timeout`,
//! `LOCK TABLE … IN ACCESS EXCLUSIVE MODE`, the caller's work, `COMMIT`.
//! While the lock request waits it is a queue head that blocks every later
//! reader and writer of the table, so the wait is bounded by `lock_timeout`;
//! a timeout rolls back (nothing of the step happened), pauses
//! ([`crate::quiesce::backoff`]: doubling, at most 10 s) and tries again, up
//! to `attempts`. Every attempt's wait, and the hold of the one that got the
//! lock (grant to the end of `COMMIT`), is returned for the report. Any other
//! error — the caller's work refusing, a statement failing — rolls back at
//! once and is returned: the table is as it was.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;
use tracing::info;

use crate::error::Error;

/// How long one attempt waits, how many attempts, the first pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLimits {
    /// `lock_timeout` of one attempt.
    pub lock_timeout: Duration,
    /// Attempts before giving up (at least 1).
    pub attempts: u32,
    /// Pause after the first failed attempt (doubles, at most 10 s).
    pub backoff: Duration,
}

impl Default for LockLimits {
    /// 200 ms, 10 attempts, 500 ms.
    fn default() -> Self {
        LockLimits {
            lock_timeout: Duration::from_millis(200),
            attempts: 10,
            backoff: Duration::from_millis(500),
        }
    }
}

/// One attempt at a locked step.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Milliseconds spent waiting for the lock.
    pub waited_ms: u64,
    /// Milliseconds the lock was held (0 when it was not obtained).
    pub held_ms: u64,
    /// Whether the lock was obtained and the step committed.
    pub done: bool,
}

/// The waits of `attempts`, `12/200/201` (for messages).
pub fn waits(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| a.waited_ms.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Run `statements` in one locked step (see the module docs). `command`
/// names what to run again in the give-up message (`prepare`, `promote`).
pub async fn locked(
    client: &Client,
    limits: &LockLimits,
    table: &str,
    command: &str,
    statements: &[&str],
) -> Result<Vec<Attempt>, Error> {
    locked_with(client, limits, table, command, || async {
        for s in statements {
            client.batch_execute(s).await.map_err(|e| Error::Db {
                context: format!("{s} (rolled back)"),
                source: e,
            })?;
        }
        Ok(())
    })
    .await
}

/// A locked step whose work under the lock is `work` (run on `client`, once
/// per attempt that got the lock): it may check what it needs fresh under
/// the lock and refuse with an error, which rolls the step back.
pub async fn locked_with<F, Fut>(
    client: &Client,
    limits: &LockLimits,
    table: &str,
    command: &str,
    mut work: F,
) -> Result<Vec<Attempt>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let tries = limits.attempts.max(1);
    let mut attempts = Vec::new();
    for n in 1..=tries {
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                limits.lock_timeout.as_millis().max(1)
            ))
            .await
            .map_err(Error::db("begin a locked step"))?;
        let t0 = Instant::now();
        let lock = client
            .batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .await;
        let waited_ms = t0.elapsed().as_millis() as u64;
        match lock {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                let _ = client.batch_execute("ROLLBACK").await;
                attempts.push(Attempt {
                    waited_ms,
                    held_ms: 0,
                    done: false,
                });
                let pause = crate::quiesce::backoff(limits.backoff, n);
                info!(table, attempt = n, waited_ms, pause_ms = pause.as_millis() as u64,
                    "lock not granted within the lock timeout (the table is busy); retrying after a pause");
                if n < tries {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(Error::Db {
                    context: format!("lock {table}"),
                    source: e,
                });
            }
        }
        let t1 = Instant::now();
        if let Err(e) = work().await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(Error::db("commit a locked step"))?;
        attempts.push(Attempt {
            waited_ms,
            held_ms: t1.elapsed().as_millis() as u64,
            done: true,
        });
        return Ok(attempts);
    }
    Err(Error::GaveUp(format!(
        "could not lock {table} within {} ms in {} attempts (waits: {} ms); nothing of this step was changed — run {command} again when the table is less busy, or raise --lock-timeout / --attempts",
        limits.lock_timeout.as_millis(),
        attempts.len(),
        waits(&attempts)
    )))
}
