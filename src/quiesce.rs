//! `quiesce`: hold a set of tables still and bring every job level with
//! them — the core that `verify` (a consistent point) and `cutover` (the
//! swap) share, and that a later rollback reuses.
//!
//! # One attempt
//!
//! 1. **Lock.** On the *lock session*: `BEGIN; SET LOCAL lock_timeout = …`,
//!    then the caller's [`LockSet`] — every lock the attempt will need, in
//!    one fixed order, in one batch, before anything else. A request that
//!    waits is itself a queue head that blocks every later reader and writer
//!    of the table, so the wait is short (`lock_timeout`) and retried with
//!    [`backoff`] instead of long. A lock error whose SQLSTATE the set names
//!    in [`LockSet::gives_up_on`] ends the attempt as
//!    [`Outcome::LockTimeout`] (retried); any other is an error.
//! 2. **Fence.** With the writers locked out, a fence (a transactional
//!    logical message, [`crate::fence`]) commits on the caller's [`Fence`]
//!    session. It commits after every change to the locked tables, and
//!    logical decoding delivers transactions in commit order.
//! 3. **Drain.** Wait until every job of [`Drain::job_ids`] has recorded an
//!    applied position past the fence, within `max_hold` of the grant. Then
//!    each shadow holds every change to its source, and nothing more can
//!    reach the sources while the locks are held. Past `max_hold`:
//!    [`Outcome::DrainTimeout`].
//! 4. The caller's work under the locks (verify: take a snapshot; cutover:
//!    re-check the catalog — [`Outcome::CatalogChanged`] when it moved —
//!    and run the swap).
//! 5. **Commit** (cutover: the swap; verify: just the release). If the
//!    connection fails during `COMMIT`, the caller says whether the commit's
//!    effect is recorded anyway (cutover asks the job rows): recorded is
//!    [`Outcome::Committed`], not recorded [`Outcome::CommitLost`].
//!
//! # One rule for stopping
//!
//! What an attempt saw is an [`Observed`]; [`decide`] (pure) turns it into
//! an [`Outcome`]. Every outcome other than [`Outcome::Proceed`] and
//! [`Outcome::Committed`] gives the locks back at once — the [`Attempt`]
//! rolls back as soon as it observes it, so the application never waits on a
//! lock for an attempt that has already failed — and the next attempt waits
//! [`backoff`] first: the base pause, doubled after each failed attempt,
//! capped at [`MAX_BACKOFF`].
//!
//! The lock session holds nothing between attempts: the transaction is
//! either committed or rolled back before [`Attempt`] is given up, and a
//! session that is gone took its locks with it.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::warn;
use uuid::Uuid;

use crate::error::Error;
use crate::fence;
use crate::pg::Lsn;

/// Longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Default lock wait of one attempt (`--lock-timeout`), verify's and cutover's.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// Default hold budget of one attempt (`--max-hold`), verify's and cutover's.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(2);

/// Default first pause between attempts (`--backoff`), verify's and cutover's.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// SQLSTATE `lock_not_available`: `lock_timeout` ran out.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The pause after failed attempt `attempt` (1-based): `base`, doubled after
/// each further failure, capped at [`MAX_BACKOFF`].
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << doublings).min(MAX_BACKOFF)
}

/// The locks of an attempt, taken together, in order, before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSet {
    /// The `LOCK TABLE …` statements, `;`-separated, in the fixed order.
    pub sql: String,
    /// What is locked, for the error when the locks fail otherwise.
    pub what: String,
    /// SQLSTATEs of a lock failure that end the attempt as a
    /// [`Outcome::LockTimeout`] (given back, retried) instead of an error.
    pub gives_up_on: &'static [&'static str],
}

impl LockSet {
    /// How a failure of the lock statements with SQLSTATE `code` counts.
    pub fn classify(&self, code: Option<&str>) -> LockSeen {
        match code {
            Some(c) if self.gives_up_on.contains(&c) => LockSeen::GaveUp,
            _ => LockSeen::Failed,
        }
    }
}

/// Where the fence is written.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// The fence session (not the lock session: the fence must commit while
    /// the locks are held).
    pub session: &'a Client,
    /// The session went through [`fence::prepare`] already (one exchange per
    /// fence instead of two).
    pub prepared: bool,
    /// The fence message's content.
    pub token: &'a str,
}

/// Which jobs must drain past the fence, and how their positions are polled.
#[derive(Debug, Clone, Copy)]
pub struct Drain<'a> {
    /// The session that reads the jobs' applied positions.
    pub poll: &'a Client,
    /// Every job whose tables are locked.
    pub job_ids: &'a [Uuid],
    /// Longest pause between two polls (see [`fence::wait_drained_every`]).
    pub max_pause: Duration,
}

/// How the lock request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockSeen {
    /// Every lock is held.
    Granted,
    /// Refused with a SQLSTATE the lock set gives up on (lock timeout…).
    GaveUp,
    /// Refused otherwise.
    Failed,
}

/// How `COMMIT` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitSeen {
    /// Committed.
    Committed,
    /// The `COMMIT` failed (typically the connection dropped); `recorded`:
    /// the caller found the commit's effect in the catalog afterwards.
    Failed {
        /// The commit happened after all.
        recorded: bool,
    },
}

/// What one attempt observed so far; `None` is "not reached yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// The lock request.
    pub lock: Option<LockSeen>,
    /// Whether every job applied past the fence within the hold budget.
    pub drained: Option<bool>,
    /// Whether the caller's check under the locks found what it built on
    /// (cutover: the catalog fingerprint; verify: the job rows).
    pub unchanged: Option<bool>,
    /// The commit.
    pub commit: Option<CommitSeen>,
}

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing has stopped the attempt: take the next step.
    Proceed,
    /// The transaction committed (cutover: swapped).
    Committed,
    /// The locks were not granted within `lock_timeout` (retried).
    LockTimeout,
    /// The jobs did not drain past the fence within `max_hold` (retried).
    DrainTimeout,
    /// What the attempt built on changed under the locks (retried).
    CatalogChanged,
    /// `COMMIT` failed and its effect is not recorded: an error.
    CommitLost,
    /// A lock statement failed otherwise: an error.
    Failed,
}

impl Outcome {
    /// Whether the attempt is over with the locks given back.
    pub fn gives_back(self) -> bool {
        !matches!(self, Outcome::Proceed | Outcome::Committed)
    }

    /// Whether the next attempt may simply try again (after [`backoff`]);
    /// the error behind [`Outcome::CommitLost`] and [`Outcome::Failed`]
    /// decides for those.
    pub fn retried(self) -> bool {
        matches!(
            self,
            Outcome::LockTimeout | Outcome::DrainTimeout | Outcome::CatalogChanged
        )
    }
}

/// The one rule (pure): what an attempt's observations mean. A failed step
/// ends the attempt whatever comes after it; a commit whose connection
/// dropped counts as committed only when its effect is recorded.
pub fn decide(seen: &Observed) -> Outcome {
    match seen.lock {
        None => return Outcome::Proceed,
        Some(LockSeen::GaveUp) => return Outcome::LockTimeout,
        Some(LockSeen::Failed) => return Outcome::Failed,
        Some(LockSeen::Granted) => {}
    }
    if seen.unchanged == Some(false) {
        return Outcome::CatalogChanged;
    }
    if seen.drained == Some(false) {
        return Outcome::DrainTimeout;
    }
    match seen.commit {
        None => Outcome::Proceed,
        Some(CommitSeen::Committed) | Some(CommitSeen::Failed { recorded: true }) => {
            Outcome::Committed
        }
        Some(CommitSeen::Failed { recorded: false }) => Outcome::CommitLost,
    }
}

/// One attempt in progress on a lock session. Each step records what it saw
/// and, when [`decide`] says the attempt is over, rolls back before it
/// returns.
#[derive(Debug)]
pub struct Attempt<'a> {
    session: &'a Client,
    seen: Observed,
    lock_wait: Duration,
    granted: Option<Instant>,
    lock_error: Option<tokio_postgres::Error>,
}

impl<'a> Attempt<'a> {
    /// Step 1: `BEGIN`, `lock_timeout`, and the lock set. `Ok` with
    /// [`Outcome::LockTimeout`] when the set gave up (rolled back, see
    /// [`Attempt::lock_error`]); `Err` when anything else failed (rolled
    /// back).
    pub async fn lock(
        session: &'a Client,
        set: &LockSet,
        lock_timeout: Duration,
    ) -> Result<Attempt<'a>, Error> {
        let timeout_ms = lock_timeout.as_millis().max(1);
        if let Err(e) = session
            .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{timeout_ms}ms'"))
            .await
        {
            // BEGIN may have run: leave no transaction open on the session.
            rollback(session).await;
            return Err(Error::db("begin the lock transaction")(e));
        }
        let mut a = Attempt {
            session,
            seen: Observed::default(),
            lock_wait: Duration::ZERO,
            granted: None,
            lock_error: None,
        };
        let asked = Instant::now();
        let locked = session.batch_execute(&set.sql).await;
        a.lock_wait = asked.elapsed();
        match locked {
            Ok(()) => {
                a.granted = Some(Instant::now());
                a.seen.lock = Some(LockSeen::Granted);
            }
            Err(e) => {
                let code = e.as_db_error().map(|d| d.code().code());
                a.seen.lock = Some(set.classify(code));
                rollback(session).await;
                if a.outcome() != Outcome::LockTimeout {
                    return Err(Error::Db {
                        context: set.what.clone(),
                        source: e,
                    });
                }
                a.lock_error = Some(e);
            }
        }
        Ok(a)
    }

    /// Where the attempt stands ([`decide`] on what it saw).
    pub fn outcome(&self) -> Outcome {
        decide(&self.seen)
    }

    /// What it saw.
    pub fn observed(&self) -> Observed {
        self.seen
    }

    /// How long the lock request waited.
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// When the locks were granted.
    pub fn granted(&self) -> Option<Instant> {
        self.granted
    }

    /// How long the locks have been held (`None`: never granted).
    pub fn held(&self) -> Option<Duration> {
        self.granted.map(|g| g.elapsed())
    }

    /// The error that made the lock set give up.
    pub fn lock_error(&self) -> Option<&tokio_postgres::Error> {
        self.lock_error.as_ref()
    }

    /// Step 2: write the fence. On `Err` the attempt rolled back.
    pub async fn fence(&mut self, fence: &Fence<'_>) -> Result<Lsn, Error> {
        let written = if fence.prepared {
            fence::write(fence.session, fence.token).await
        } else {
            fence::emit(fence.session, fence.token).await
        };
        if written.is_err() {
            rollback(self.session).await;
        }
        written
    }

    /// Step 3: wait until every job applied past `lsn`, at most until
    /// `max_hold` after the grant. `Ok(true)`: drained; `Ok(false)`: the
    /// hold budget ran out ([`Outcome::DrainTimeout`], rolled back). On
    /// `Err` the attempt rolled back.
    pub async fn drain(
        &mut self,
        drain: &Drain<'_>,
        lsn: Lsn,
        max_hold: Duration,
    ) -> Result<bool, Error> {
        let deadline = self.granted.unwrap_or_else(Instant::now) + max_hold;
        match fence::wait_drained_every(drain.poll, drain.job_ids, lsn, deadline, drain.max_pause)
            .await
        {
            Ok(drained) => {
                self.seen.drained = Some(drained);
                if self.outcome().gives_back() {
                    rollback(self.session).await;
                }
                Ok(drained)
            }
            Err(e) => {
                rollback(self.session).await;
                Err(e)
            }
        }
    }

    /// Step 4's verdict: whether what the attempt built on is unchanged
    /// under the locks. Changed: [`Outcome::CatalogChanged`], rolled back.
    pub async fn check(&mut self, unchanged: bool) -> Outcome {
        self.seen.unchanged = Some(unchanged);
        let outcome = self.outcome();
        if outcome.gives_back() {
            rollback(self.session).await;
        }
        outcome
    }

    /// The lock session, for the caller's reads under the locks.
    pub fn session(&self) -> &'a Client {
        self.session
    }

    /// Give the locks back because the caller's work under them failed.
    /// The attempt is over: do not commit it.
    pub async fn abandon(&self) {
        rollback(self.session).await;
    }

    /// Step 5: `COMMIT`. When it fails, `recorded` is asked whether the
    /// commit's effect is there anyway (see [`CommitSeen::Failed`]). Returns
    /// [`Outcome::Committed`] or [`Outcome::CommitLost`], with the commit's
    /// error when there was one.
    pub async fn commit<F, Fut>(mut self, recorded: F) -> (Outcome, Option<tokio_postgres::Error>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        match self.session.batch_execute("COMMIT").await {
            Ok(()) => {
                self.seen.commit = Some(CommitSeen::Committed);
                (self.outcome(), None)
            }
            Err(e) => {
                let recorded = recorded().await;
                self.seen.commit = Some(CommitSeen::Failed { recorded });
                (self.outcome(), Some(e))
            }
        }
    }
}

/// Give the locks back; a failure here means the session is gone, and with
/// it the locks.
async fn rollback(session: &Client) {
    if let Err(e) = session.batch_execute("ROLLBACK").await {
        warn!(error = %crate::error::chain(&e), "rolling back the lock transaction failed; the session is gone, and its locks with it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> Observed {
        Observed {
            lock: Some(LockSeen::Granted),
            ..Observed::default()
        }
    }

    #[test]
    fn nothing_seen_or_all_well_so_far_proceeds() {
        assert_eq!(decide(&Observed::default()), Outcome::Proceed);
        assert_eq!(decide(&granted()), Outcome::Proceed);
        let drained = Observed {
            drained: Some(true),
            unchanged: Some(true),
            ..granted()
        };
        assert_eq!(decide(&drained), Outcome::Proceed);
        assert!(!Outcome::Proceed.gives_back());
    }

    #[test]
    fn lock_timeout() {
        let set = LockSet {
            sql: String::new(),
            what: String::new(),
            gives_up_on: &[LOCK_NOT_AVAILABLE],
        };
        assert_eq!(set.classify(Some("55P03")), LockSeen::GaveUp);
        assert_eq!(set.classify(Some("40P01")), LockSeen::Failed);
        assert_eq!(set.classify(None), LockSeen::Failed);
        let seen = Observed {
            lock: Some(set.classify(Some("55P03"))),
            ..Observed::default()
        };
        assert_eq!(decide(&seen), Outcome::LockTimeout);
        assert!(Outcome::LockTimeout.gives_back() && Outcome::LockTimeout.retried());
    }

    #[test]
    fn a_lock_failure_the_set_does_not_give_up_on_is_an_error() {
        let seen = Observed {
            lock: Some(LockSeen::Failed),
            ..Observed::default()
        };
        assert_eq!(decide(&seen), Outcome::Failed);
        assert!(Outcome::Failed.gives_back() && !Outcome::Failed.retried());
    }

    #[test]
    fn drain_timeout() {
        let seen = Observed {
            drained: Some(false),
            ..granted()
        };
        assert_eq!(decide(&seen), Outcome::DrainTimeout);
        assert!(Outcome::DrainTimeout.gives_back() && Outcome::DrainTimeout.retried());
    }

    #[test]
    fn catalog_changed() {
        let seen = Observed {
            drained: Some(true),
            unchanged: Some(false),
            ..granted()
        };
        assert_eq!(decide(&seen), Outcome::CatalogChanged);
        // A check before the fence (verify re-reads its job rows first).
        let early = Observed {
            unchanged: Some(false),
            ..granted()
        };
        assert_eq!(decide(&early), Outcome::CatalogChanged);
        assert!(Outcome::CatalogChanged.gives_back() && Outcome::CatalogChanged.retried());
    }

    #[test]
    fn swapped() {
        let seen = Observed {
            drained: Some(true),
            unchanged: Some(true),
            commit: Some(CommitSeen::Committed),
            ..granted()
        };
        assert_eq!(decide(&seen), Outcome::Committed);
        assert!(!Outcome::Committed.gives_back());
    }

    #[test]
    fn commit_lost_unless_recorded() {
        let lost = Observed {
            drained: Some(true),
            unchanged: Some(true),
            commit: Some(CommitSeen::Failed { recorded: false }),
            ..granted()
        };
        assert_eq!(decide(&lost), Outcome::CommitLost);
        assert!(!Outcome::CommitLost.retried());
        // The connection dropped during COMMIT but the commit happened.
        let recorded = Observed {
            commit: Some(CommitSeen::Failed { recorded: true }),
            ..lost
        };
        assert_eq!(decide(&recorded), Outcome::Committed);
    }

    #[test]
    fn the_first_failure_wins() {
        let seen = Observed {
            lock: Some(LockSeen::GaveUp),
            drained: Some(false),
            unchanged: Some(false),
            commit: Some(CommitSeen::Committed),
        };
        assert_eq!(decide(&seen), Outcome::LockTimeout);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), Duration::from_secs(1));
        assert_eq!(backoff(b, 3), Duration::from_secs(2));
        assert_eq!(backoff(b, 40), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(30), 1), MAX_BACKOFF);
    }
}
