//! The observation wing: what a running job shows and how it is paced, kept
//! off the phases' paths (nothing here decides what is written where).
//!
//! - [`progress`]: live counters of one rewrite and their rendering (bars or
//!   log lines);
//! - [`step_progress`]: progress of the long steps that are not the copy
//!   (verification chunks, index builds);
//! - [`lag`]: the applied watermark and the lag in bytes and seconds,
//!   measured off the apply path;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`throttle`]: copy throttling on replica lag and slot WAL;
//! - [`telemetry`]: logging setup.
//!
//! The crate root re-exports each module under its old name
//! (`crate::progress`, …), so the phases' paths did not change.

pub mod lag;
pub mod metrics;
pub mod progress;
pub mod step_progress;
pub mod telemetry;
pub mod throttle;
