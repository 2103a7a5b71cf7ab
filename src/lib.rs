//! # pg-rekey
//!
//! Online rewrite of integer references to `users.id` into UUID references,
//! table by table, while the application keeps writing.
//!
//! ```text
//! plan ──► shadow DDL ──► slot + snapshot ──► copy (same snapshot) ──► stream/apply ──► cutover
//! ```
//!
//! The consistency argument, in one paragraph: the replication slot is created
//! with an exported snapshot. Every row committed before the slot's consistent
//! point is visible in that snapshot and is copied; every change committed after
//! it is decoded from the slot, which starts at the consistent point. The copy
//! and the id→uuid map both read under that one snapshot, and the stream is
//! applied in commit order, so each row is either copied or streamed, never both
//! and never neither. See the module docs of [`replication`] for why a position
//! may be acknowledged.

#![warn(missing_docs)]

pub mod abort;
pub mod apply;
pub mod cli;
pub mod commands;
pub mod console;
pub mod copy;
pub mod copy_format;
pub mod cutover;
pub mod ddl;
pub mod demo;
pub mod error;
pub mod failpoint;
pub mod fence;
pub mod guide;
pub mod hooks;
pub mod idmap;
pub mod locked_step;
pub mod model;
pub mod naming;
pub mod observe;
pub mod pg;
pub mod plan;
pub mod prepare;
pub mod promote;
pub mod quiesce;
pub mod replication;
pub mod resume;
pub mod rewrite;
pub mod state;
pub mod status;
pub mod swap;
pub mod task;
pub mod units;
pub mod verify;
pub mod verify_error;
pub mod way_back;

pub use error::{Error, Result};

// The demo and observation wings live in their folders; their modules keep
// their old paths at the root too (`crate::progress`, `pg_rekey::workload`).
pub use demo::{embedded, soak, workload};
pub use observe::{lag, metrics, progress, step_progress, telemetry, throttle};
