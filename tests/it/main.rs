//! Integration tests against a real PostgreSQL server (see `support`).

mod support;

mod apply_pipeline;
mod copy;
mod cutover;
mod ddl;
mod harness;
mod observe;
mod pgoutput;
mod plan;
mod replication;
mod rewrite;
mod state;
mod swap;
mod verify;
mod workload;
