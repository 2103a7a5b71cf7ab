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
