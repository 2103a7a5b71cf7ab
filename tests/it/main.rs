//! Integration tests against a real PostgreSQL server (see `support`).

mod support;

mod apply_pipeline;
mod apply_sets;
mod carry;
mod copy;
mod cutover;
mod cutover_deps;
mod ddl;
mod deferred;
mod demo;
mod django;
mod exit_codes;
mod harness;
mod observe;
mod observe_rewrite;
mod pgoutput;
mod plan;
mod replication;
mod rewrite;
mod rewrite_scenarios;
mod state;
mod swap;
mod verify;
mod verify_cmd;
mod workload;
