//! Named failpoints for fault-injection tests.
//!
//! `PGREKEY_FAILPOINT=name[:action]` makes the process fail when it reaches
//! the failpoint `name`; every other failpoint (and every failpoint when the
//! variable is unset) does nothing. Actions:
//!
//! - `exit` (default): `std::process::exit(99)` — no destructors, no
//!   clean-up, the server sees the connections drop (as after `kill -9`).
//! - `abort`: `std::process::abort()` (a crash).
//!
//! The variable is read once ([`OnceLock`]); an unset variable costs one
//! atomic load per failpoint. Failpoints sit at phase boundaries and inside
//! copy, apply and swap; the names are listed in [`NAMES`] and the tests in
//! `tests/it/resume.rs` go through every one.

use std::sync::OnceLock;

/// Every failpoint compiled in, in the order a job reaches them.
pub const NAMES: &[&str] = &[
    "rewrite.after_register",
    "rewrite.after_slot",
    "copy.after_batch",
    "copy.after_index_builds",
    "copy.after_first_table",
    "rewrite.after_copy",
    "apply.before_commit",
    "apply.after_commit",
    "cutover.before_swap",
    "cutover.after_commit",
    "way_back.before_commit",
    "finish.after_commit",
    "rewrite.finished_before_cleanup",
    "prepare.after_batch",
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Armed {
    name: String,
    abort: bool,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| parse(&std::env::var("PGREKEY_FAILPOINT").ok()?))
        .as_ref()
}

fn parse(v: &str) -> Option<Armed> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    let (name, action) = v.split_once(':').unwrap_or((v, "exit"));
    Some(Armed {
        name: name.to_string(),
        abort: action == "abort",
    })
}

/// Fail here if `PGREKEY_FAILPOINT` names this failpoint.
pub fn hit(name: &str) {
    if let Some(a) = armed() {
        if a.name == name {
            eprintln!("pg-rekey: failpoint {name} reached; dying");
            if a.abort {
                std::process::abort();
            }
            std::process::exit(99);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_action() {
        assert_eq!(parse(""), None);
        assert_eq!(
            parse("apply.after_commit"),
            Some(Armed {
                name: "apply.after_commit".into(),
                abort: false
            })
        );
        assert_eq!(
            parse("copy.after_first_table:abort"),
            Some(Armed {
                name: "copy.after_first_table".into(),
                abort: true
            })
        );
    }

    #[test]
    fn unset_failpoints_do_nothing() {
        // The test process has no PGREKEY_FAILPOINT for these names.
        hit("no.such.failpoint");
    }
}
