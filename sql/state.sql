-- pg-rekey's state: one row per table being rewritten.
-- Run as one simple-protocol query string, which PostgreSQL executes as one
-- implicit transaction: the advisory lock serializes concurrent first uses
-- (CREATE ... IF NOT EXISTS alone can still fail with a unique violation when
-- two sessions race), and an error rolls everything back.
-- Later versions add columns with ADD COLUMN IF NOT EXISTS at the end.
SELECT pg_catalog.pg_advisory_xact_lock(8099568234768201984);
CREATE SCHEMA IF NOT EXISTS pgrekey;
CREATE TABLE IF NOT EXISTS pgrekey.jobs (
    source_schema    text        NOT NULL,
    source_table     text        NOT NULL,
    source_oid       oid         NOT NULL,
    job_id           uuid        NOT NULL,
    phase            text        NOT NULL
        CHECK (phase IN ('copying', 'streaming', 'cutting_over', 'cut_over', 'failed', 'aborted')),
    slot_name        text,
    publication_name text,
    shadow_table     text        NOT NULL,
    old_table        text,
    snapshot_name    text,
    consistent_lsn   pg_lsn,
    applied_lsn      pg_lsn,
    rows_copied      bigint      NOT NULL DEFAULT 0,
    rows_estimate    bigint      NOT NULL DEFAULT 0,
    lag_bytes        bigint,
    last_error       text,
    owner_pid        integer,
    owner_host       text,
    parent_schema    text,
    parent_table     text,
    parent_uuid_column text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_schema, source_table)
);
CREATE INDEX IF NOT EXISTS jobs_job_id ON pgrekey.jobs (job_id);
-- Added after the first release of the table; a no-op on new installs.
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS parent_schema text;
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS parent_table text;
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS parent_uuid_column text;
-- The id map of the job's process: parent rows held and bytes used.
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS id_map_users bigint;
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS id_map_bytes bigint;
-- Per table: the position from which the stream applies to it. A table
-- copied under a later snapshot than the slot's (a copy resumed after its
-- process died) skips the changes its copy already holds. NULL while its
-- copy is not complete; the slot's consistent point for a first copy.
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS synced_lsn pg_lsn;
-- `pg-rekey prepare`: one row per uuid column it makes or completes; the
-- backfill's cursor (every key below next_key is done), written in the
-- transaction of each batch.
CREATE TABLE IF NOT EXISTS pgrekey.prepare (
    parent_schema text        NOT NULL,
    parent_table  text        NOT NULL,
    uuid_column   text        NOT NULL,
    next_key      bigint      NOT NULL DEFAULT -9223372036854775808,
    rows_filled   bigint      NOT NULL DEFAULT 0,
    done          boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parent_schema, parent_table, uuid_column)
);
-- The way back after cutover (`cutover --way-back`): set in the swap's
-- transaction; the job keeps the old table current from the new one until
-- `rollback` or `finish`.
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS way_back boolean NOT NULL DEFAULT false;
-- The table's spec as planned (JSON of plan::model::TableSpec): after a
-- cutover the table's name holds the new table, so a process that serves
-- the way back after a restart reads the original shape from here.
ALTER TABLE pgrekey.jobs ADD COLUMN IF NOT EXISTS table_spec text;
-- Foreign keys of an old table (to tables outside its swap) dropped by a
-- cutover with a way back, so that no write of the application is checked
-- against, or cascades into, the old table; `rollback` re-creates them.
CREATE TABLE IF NOT EXISTS pgrekey.held_constraints (
    table_schema  text NOT NULL,
    table_name    text NOT NULL,
    name          text NOT NULL,
    definition    text NOT NULL,
    comment       text,
    PRIMARY KEY (table_schema, table_name, name)
);

-- Views and policies that a cutover with `--rewrite-dependents` and a way
-- back re-created in uuid terms, with the definitions they had before, by
-- the job's source table; `rollback` re-creates them with these (the
-- integer columns would refuse the uuid ones), `finish` forgets them.
CREATE TABLE IF NOT EXISTS pgrekey.held_definitions (
    table_schema      text NOT NULL,
    table_name        text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('view', 'policy')),
    -- A view: its schema-qualified, quoted name; a policy: its name.
    name              text NOT NULL,
    -- A view: its query; a policy: its USING expression.
    definition        text,
    -- A policy: its WITH CHECK expression.
    check_definition  text,
    PRIMARY KEY (table_schema, table_name, kind, name)
);
