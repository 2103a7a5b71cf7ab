//! What a cutover reports: each attempt's [`AttemptOutcome`], where its hold
//! went, and the result. Printed by `pg-rekey cutover` and serialised by
//! `--json` (an outcome serialises as its name, e.g. `"lock_timeout"`).

use std::fmt;
use std::ops::Deref;

use super::gate::{LockHolder, LAG_ABOVE_LIMIT, VETOED_BY_HOOK};
use crate::quiesce;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The swap committed.
    Swapped,
    /// The locks were not granted within `lock_timeout`.
    LockTimeout,
    /// The jobs did not drain past the fence within `max_hold`.
    DrainTimeout,
    /// DDL committed after the swap was built; rolled back, the next attempt
    /// builds it again.
    CatalogChanged,
    /// Not started: the jobs lagged more than `max_lag_bytes`.
    LagAboveLimit,
    /// Not started: a `before-cutover` hook failed.
    VetoedByHook,
    /// Failed with an error (the text, as reported: `error: …`).
    Error(String),
}

impl AttemptOutcome {
    /// The outcome of an attempt that failed with `e`.
    pub fn error(e: &impl fmt::Display) -> AttemptOutcome {
        AttemptOutcome::Error(format!("error: {e}"))
    }

    /// The report outcome of a [`quiesce::Outcome`] that ends an attempt
    /// without an error; `None` for the others.
    pub fn from_quiesce(o: quiesce::Outcome) -> Option<AttemptOutcome> {
        match o {
            quiesce::Outcome::Committed => Some(AttemptOutcome::Swapped),
            quiesce::Outcome::LockTimeout => Some(AttemptOutcome::LockTimeout),
            quiesce::Outcome::DrainTimeout => Some(AttemptOutcome::DrainTimeout),
            quiesce::Outcome::CatalogChanged => Some(AttemptOutcome::CatalogChanged),
            quiesce::Outcome::Proceed | quiesce::Outcome::CommitLost | quiesce::Outcome::Failed => {
                None
            }
        }
    }

    /// The name reports, hooks and `--json` use (an error's whole text).
    pub fn as_str(&self) -> &str {
        match self {
            AttemptOutcome::Swapped => "swapped",
            AttemptOutcome::LockTimeout => "lock_timeout",
            AttemptOutcome::DrainTimeout => "drain_timeout",
            AttemptOutcome::CatalogChanged => "catalog_changed",
            AttemptOutcome::LagAboveLimit => LAG_ABOVE_LIMIT,
            AttemptOutcome::VetoedByHook => VETOED_BY_HOOK,
            AttemptOutcome::Error(text) => text,
        }
    }

    /// Whether the swap committed.
    pub fn is_swapped(&self) -> bool {
        *self == AttemptOutcome::Swapped
    }
}

/// An outcome reads as its name (`outcome.starts_with("error")`).
impl Deref for AttemptOutcome {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for AttemptOutcome {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AttemptOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for AttemptOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What one attempt did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptReport {
    /// 1-based.
    pub attempt: u32,
    /// Time spent waiting for the locks, ms.
    pub lock_wait_ms: f64,
    /// Time the locks were held, ms (absent when they were never granted).
    pub lock_hold_ms: Option<f64>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Where the hold went, step by step, in order (empty when the locks
    /// were never granted).
    pub phases: Vec<PhaseTime>,
    /// On a lock timeout: the sessions that held locks on the tables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lock_holders: Vec<LockHolder>,
}

impl AttemptReport {
    /// An attempt that was not started (no lock requested).
    pub fn not_started(attempt: u32, outcome: AttemptOutcome) -> AttemptReport {
        AttemptReport {
            attempt,
            lock_wait_ms: 0.0,
            lock_hold_ms: None,
            outcome,
            phases: vec![],
            lock_holders: vec![],
        }
    }
}

/// Time one step of an attempt took while the locks were held.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseTime {
    /// The step: `fence` (written), `drain` (every job applied past it),
    /// `checks` (shadows locked, columns and catalog fingerprint re-read),
    /// `swap_and_state` (swap statements, new foreign keys, job rows),
    /// `commit`.
    pub phase: &'static str,
    /// Milliseconds.
    pub ms: f64,
}

/// The result of a cutover.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CutoverReport {
    /// Whether the swap committed (now or earlier).
    pub swapped: bool,
    /// `(table, old table)` for each swapped table.
    pub tables: Vec<(String, String)>,
    /// Every attempt.
    pub attempts: Vec<AttemptReport>,
    /// Why it gave up, when it did.
    pub reason: Option<String>,
    /// The SQL a dry run would execute.
    pub dry_run_sql: Vec<String>,
    /// Problems after commit (a constraint that did not validate…); the swap stands.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_and_serialise_as_their_names() {
        let all = [
            (AttemptOutcome::Swapped, "swapped"),
            (AttemptOutcome::LockTimeout, "lock_timeout"),
            (AttemptOutcome::DrainTimeout, "drain_timeout"),
            (AttemptOutcome::CatalogChanged, "catalog_changed"),
            (AttemptOutcome::LagAboveLimit, "lag_above_limit"),
            (AttemptOutcome::VetoedByHook, "vetoed_by_hook"),
        ];
        for (o, name) in all {
            assert_eq!(o, name);
            assert_eq!(o.to_string(), name);
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{name}\""));
        }
        let e = AttemptOutcome::error(&"commit the swap: connection closed");
        assert!(e.starts_with("error"));
        assert_eq!(e.as_str(), "error: commit the swap: connection closed");
    }

    #[test]
    fn quiesce_outcomes_map_to_report_outcomes() {
        use quiesce::Outcome as Q;
        assert_eq!(
            AttemptOutcome::from_quiesce(Q::Committed),
            Some(AttemptOutcome::Swapped)
        );
        assert_eq!(
            AttemptOutcome::from_quiesce(Q::LockTimeout),
            Some(AttemptOutcome::LockTimeout)
        );
        assert_eq!(
            AttemptOutcome::from_quiesce(Q::DrainTimeout),
            Some(AttemptOutcome::DrainTimeout)
        );
        assert_eq!(
            AttemptOutcome::from_quiesce(Q::CatalogChanged),
            Some(AttemptOutcome::CatalogChanged)
        );
        for o in [Q::Proceed, Q::CommitLost, Q::Failed] {
            assert_eq!(AttemptOutcome::from_quiesce(o), None);
        }
    }
}
