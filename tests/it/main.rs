//! Integration tests against a real PostgreSQL server (see `support`).

#![allow(clippy::disallowed_methods)] // tests and benches spawn their own helpers bare

mod support;

mod anykey;
mod apply_pipeline;
mod apply_sets;
mod carry;
mod connstr;
mod copy;
mod cutover;
mod cutover_cleanup;
mod cutover_deps;
mod ddl;
mod deferred;
mod demo;
mod dependents;
mod django;
mod exit_codes;
mod harness;
mod journey;
mod least_privilege;
mod observe;
mod observe_rewrite;
mod operator;
mod pgoutput;
mod plan;
mod prepare;
mod promote;
mod replication;
mod resume;
mod reverse_apply;
mod rewrite;
mod rewrite_scenarios;
mod seed_alembic;
mod state;
mod swap;
mod tls;
mod verify;
mod verify_cmd;
mod verify_many;
mod way_back;
mod workload;
