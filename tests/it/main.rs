//! Integration tests against a real PostgreSQL server (see `support`).

mod support;

mod copy;
mod ddl;
mod harness;
mod observe;
mod observe_rewrite;
mod pgoutput;
mod plan;
mod replication;
mod rewrite;
mod state;
mod swap;
mod verify;
mod workload;
