//! `prepare`: the parent's uuid column, made online (phase 1 of the seeds'
//! journey), so `rewrite` has a unique, not-null uuid to point at.
//!
//! # The steps, and the lock each takes
//!
//! 1. `ADD COLUMN c uuid` — nullable, **no default**: a volatile default
//!    (`gen_random_uuid()`) would rewrite the whole table under `ACCESS
//!    EXCLUSIVE`; without one it is a catalog change.
//! 2. `ALTER COLUMN c SET DEFAULT gen_random_uuid()`: rows inserted from
//!    now on get a uuid (catalog only).
//! 3. **Backfill** in key-ordered batches, one transaction each: the batch's
//!    upper key `hi` is read (`key >= cursor ORDER BY key LIMIT n`), then
//!    `UPDATE … SET c = gen_random_uuid() WHERE key BETWEEN cursor AND hi
//!    AND c IS NULL`, and the cursor (`pgrekey.prepare.next_key = hi + 1`)
//!    is written *in the same transaction*. So after a kill the cursor is
//!    exactly past the last committed batch: no batch is skipped, none is
//!    done twice, and `c IS NULL` keeps every uuid already given (by a
//!    batch, the default, or the application) as it is. Only row locks,
//!    batch by batch; the [`crate::throttle`] holds the backfill between
//!    batches while a replica or another slot falls behind.
//! 4. **Sweep** `WHERE c IS NULL` (one scan, row locks only): rows the
//!    cursor could not see — inserted with an explicit NULL, or with a key
//!    below the cursor after it passed.
//! 5. `ADD CONSTRAINT … CHECK (c IS NOT NULL) NOT VALID` (catalog only;
//!    from then on no write can store a NULL), then a second sweep for rows
//!    written between the first sweep and the constraint.
//! 6. `VALIDATE CONSTRAINT` — a full scan under `SHARE UPDATE EXCLUSIVE`,
//!    which does not block reads or writes.
//! 7. `SET NOT NULL`: with the validated check PostgreSQL (12+) skips the
//!    scan, so the `ACCESS EXCLUSIVE` lock is held for a catalog change;
//!    then the check is dropped.
//! 8. `CREATE UNIQUE INDEX CONCURRENTLY` (no lock that blocks writes). A
//!    failed concurrent build leaves an **invalid** index behind; it is
//!    found by name and dropped (`DROP INDEX CONCURRENTLY`) before the
//!    build is tried again.
//!
//! Every step that takes `ACCESS EXCLUSIVE` takes it first with `LOCK
//! TABLE` under a short `lock_timeout` (`--lock-timeout`), in a transaction
//! of its own, so while it waits it queues the application for at most that
//! long; on a timeout it rolls back, backs off (doubling, at most 10 s) and
//! tries again, up to `--attempts`. Each attempt's wait and the hold of the
//! successful one are reported.
//!
//! # Idempotent
//!
//! Which steps are left is decided from the catalog and the cursor alone
//! ([`remaining`], pure): a second run finds the work done and says so; a
//! run after a kill goes on where the first stopped. A column that exists
//! but was not added by `prepare` (no cursor row) is only completed with
//! `--column-exists` — the values it holds are kept.
//!
//! The parent's key must be one integer column (`smallint`, `integer`,
//! `bigint`): the batches are ranges of it.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::info;

use crate::error::Error;
use crate::locked_step::{locked, LockLimits};
use crate::pg::{self, quote_ident, quote_literal, ConnSpec, QualifiedName};
use crate::progress::{format_count, format_duration, thousands};
use crate::throttle::{Throttle, ThrottleConfig, ThrottleLimits};

/// Everything `prepare` needs, validated.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// Where to connect.
    pub spec: ConnSpec,
    /// The parent table.
    pub parent: QualifiedName,
    /// The uuid column to make.
    pub column: String,
    /// Complete a column that exists already (keeping its values).
    pub column_exists: bool,
    /// Rows per backfill batch.
    pub batch_rows: i64,
    /// How long one attempt at an `ACCESS EXCLUSIVE` step waits.
    pub lock_timeout: Duration,
    /// Attempts per such step.
    pub attempts: u32,
    /// Pause after the first failed attempt (doubles, at most 10 s).
    pub backoff: Duration,
    /// Limits of the backfill throttle (none: never held).
    pub throttle: ThrottleLimits,
    /// How often a progress line is logged (not on a terminal).
    pub progress_interval: Duration,
}

/// Default rows per backfill batch (one transaction each).
pub const DEFAULT_BATCH_ROWS: i64 = 10_000;

impl PrepareConfig {
    /// The limits of its locked steps.
    pub fn limits(&self) -> LockLimits {
        LockLimits {
            lock_timeout: self.lock_timeout,
            attempts: self.attempts,
            backoff: self.backoff,
        }
    }

    /// Defaults: [`DEFAULT_BATCH_ROWS`] rows per batch, 200 ms lock
    /// timeout, 10 attempts.
    pub fn new(spec: ConnSpec, parent: QualifiedName, column: impl Into<String>) -> Self {
        PrepareConfig {
            spec,
            parent,
            column: column.into(),
            column_exists: false,
            batch_rows: DEFAULT_BATCH_ROWS,
            lock_timeout: Duration::from_millis(200),
            attempts: 10,
            backoff: Duration::from_millis(500),
            throttle: ThrottleLimits::default(),
            progress_interval: Duration::from_secs(10),
        }
    }
}

/// What the catalog and the cursor say about the column (see [`observe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The parent's key column, when it is one integer column.
    pub key: Option<String>,
    /// The key's type, as `format_type` prints it.
    pub key_type: String,
    /// The column, when it exists.
    pub column: Option<ColumnFacts>,
    /// The cursor row of an earlier `prepare` of this column, if any.
    pub cursor: Option<Cursor>,
    /// The `CHECK (c IS NOT NULL)` constraint `prepare` adds, if present.
    pub check: Option<CheckFacts>,
    /// The unique index `prepare` builds, or any valid unique index on
    /// exactly this column.
    pub index: Option<IndexFacts>,
}

/// The column as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFacts {
    /// `format_type` of the column.
    pub type_name: String,
    /// `attnotnull`.
    pub not_null: bool,
    /// The default expression, if any.
    pub default: Option<String>,
}

/// The backfill's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Every key below this has been backfilled (`None`: the backfill is done).
    pub next_key: Option<i64>,
    /// Rows given a uuid by the backfill so far.
    pub rows_filled: i64,
}

/// The not-null check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFacts {
    /// Its name.
    pub name: String,
    /// Whether it is validated.
    pub validated: bool,
}

/// A unique index on the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFacts {
    /// Its name (in the parent's schema).
    pub name: String,
    /// `indisvalid`.
    pub valid: bool,
}

/// One step left to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// `ADD COLUMN c uuid`.
    AddColumn,
    /// `SET DEFAULT gen_random_uuid()`.
    SetDefault,
    /// Key-ordered batches from `from` on.
    Backfill {
        /// The first key not done.
        from: i64,
    },
    /// `UPDATE … WHERE c IS NULL`.
    Sweep,
    /// `ADD CONSTRAINT … CHECK (c IS NOT NULL) NOT VALID`, then a sweep.
    AddCheck,
    /// `VALIDATE CONSTRAINT`.
    ValidateCheck,
    /// `SET NOT NULL`.
    SetNotNull,
    /// `DROP CONSTRAINT` the check.
    DropCheck,
    /// `DROP INDEX CONCURRENTLY` an invalid index left by a failed build.
    DropInvalidIndex,
    /// `CREATE UNIQUE INDEX CONCURRENTLY`.
    BuildIndex,
}

/// Why `prepare` will not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key is not one integer column.
    #[error("the primary key of {parent} is not one integer column ({detail}); prepare backfills in ranges of an integer key")]
    KeyNotInteger {
        /// The parent.
        parent: String,
        /// What the key is.
        detail: String,
    },
    /// The column exists with another type.
    #[error("{parent}.{column} exists and is {type_name}, not uuid; choose another --uuid-column, or convert or drop that column first")]
    NotUuid {
        /// The parent.
        parent: String,
        /// The column.
        column: String,
        /// Its type.
        type_name: String,
    },
    /// The column exists and `prepare` did not add it.
    #[error("{parent}.{column} exists already and was not added by pg-rekey prepare; run again with --column-exists to complete it (uuids already in it are kept; rows without one get one)")]
    ColumnExists {
        /// The parent.
        parent: String,
        /// The column.
        column: String,
    },
}

/// The name of the not-null check `prepare` adds (at most 63 bytes).
pub fn check_name(table: &str, column: &str) -> String {
    crate::ddl::derived_name("", &format!("{table}_{column}_not_null"))
}

/// The name of the unique index `prepare` builds (PostgreSQL's own
/// `<table>_<column>_key` pattern, at most 63 bytes).
pub fn index_name(table: &str, column: &str) -> String {
    crate::ddl::derived_name("", &format!("{table}_{column}_key"))
}

/// The steps left, in order, from what [`observe`] saw (pure).
pub fn remaining(
    o: &Observed,
    parent: &str,
    column: &str,
    column_exists: bool,
) -> Result<Vec<Step>, Refusal> {
    if o.key.is_none() {
        return Err(Refusal::KeyNotInteger {
            parent: parent.into(),
            detail: o.key_type.clone(),
        });
    }
    let mut steps = Vec::new();
    let (not_null, has_default) = match &o.column {
        None => {
            steps.push(Step::AddColumn);
            (false, false)
        }
        Some(c) => {
            if c.type_name != "uuid" {
                return Err(Refusal::NotUuid {
                    parent: parent.into(),
                    column: column.into(),
                    type_name: c.type_name.clone(),
                });
            }
            (c.not_null, c.default.is_some())
        }
    };
    if !has_default {
        steps.push(Step::SetDefault);
    }
    if !not_null {
        // A cursor left from a column since dropped says nothing of a new one.
        let cursor = o.column.as_ref().and(o.cursor);
        match cursor.map(|c| c.next_key) {
            None => steps.push(Step::Backfill { from: i64::MIN }),
            Some(Some(from)) => steps.push(Step::Backfill { from }),
            Some(None) => {}
        }
        match &o.check {
            None => steps.extend([Step::Sweep, Step::AddCheck, Step::ValidateCheck]),
            Some(c) if !c.validated => steps.extend([Step::Sweep, Step::ValidateCheck]),
            Some(_) => {}
        }
        steps.push(Step::SetNotNull);
    }
    if o.check.is_some() || !not_null {
        steps.push(Step::DropCheck);
    }
    match &o.index {
        Some(i) if i.valid => {}
        Some(_) => steps.extend([Step::DropInvalidIndex, Step::BuildIndex]),
        None => steps.push(Step::BuildIndex),
    }
    let ours = o.cursor.is_some() || o.column.is_none();
    if !steps.is_empty() && !ours && !column_exists {
        return Err(Refusal::ColumnExists {
            parent: parent.into(),
            column: column.into(),
        });
    }
    Ok(steps)
}

pub use crate::locked_step::Attempt;
pub use crate::quiesce::backoff;

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step.
    #[serde(flatten)]
    pub step: Step,
    /// The SQL it ran (for the locked ones and the index).
    pub sql: Option<String>,
    /// Rows changed (backfill, sweeps).
    pub rows: Option<u64>,
    /// Its attempts (locked steps).
    pub attempts: Vec<Attempt>,
    /// How long it took, milliseconds.
    pub ms: u64,
}

/// What `prepare` did.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    /// The parent.
    pub parent: String,
    /// The column.
    pub column: String,
    /// Steps run, in order (empty: already prepared).
    pub steps: Vec<StepReport>,
    /// The unique index on the column.
    pub index: String,
    /// Rows in the parent given a uuid by this run (backfill and sweeps).
    pub rows_filled: u64,
    /// Backfill rows per second of this run (0 when it had nothing to do).
    pub backfill_rows_per_sec: f64,
    /// The longest time any step held a lock that blocks writes, ms.
    pub longest_hold_ms: u64,
}

impl PrepareReport {
    /// Whether the column was prepared already (nothing was run).
    pub fn already(&self) -> bool {
        self.steps.is_empty()
    }
}

impl std::fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = format!("{}.{}", self.parent, self.column);
        if self.already() {
            writeln!(
                f,
                "{target} is already prepared (uuid, NOT NULL, default gen_random_uuid() or the column's own, unique index {}); nothing to do",
                self.index
            )?;
        } else {
            writeln!(f, "prepared {target}:")?;
            for s in &self.steps {
                let mut line = format!("  {:<20} {:>8} ms", step_label(&s.step), s.ms);
                if let Some(r) = s.rows {
                    line.push_str(&format!("  {} rows", thousands(r)));
                }
                if !s.attempts.is_empty() {
                    let last = s.attempts.last().map(|a| a.held_ms).unwrap_or(0);
                    line.push_str(&format!(
                        "  {} attempt(s), waits {} ms, lock held {} ms",
                        s.attempts.len(),
                        s.attempts
                            .iter()
                            .map(|a| a.waited_ms.to_string())
                            .collect::<Vec<_>>()
                            .join("/"),
                        last
                    ));
                }
                writeln!(f, "{line}")?;
            }
            writeln!(
                f,
                "{} rows given a uuid; backfill {} rows/s; longest lock that blocks writes: {} ms",
                thousands(self.rows_filled),
                format_count(self.backfill_rows_per_sec),
                self.longest_hold_ms
            )?;
        }
        writeln!(
            f,
            "next: pg-rekey plan --parent {} --uuid-column {}",
            self.parent,
            quote_ident(&self.column)
        )
    }
}

fn step_label(s: &Step) -> &'static str {
    match s {
        Step::AddColumn => "add column",
        Step::SetDefault => "set default",
        Step::Backfill { .. } => "backfill",
        Step::Sweep => "sweep nulls",
        Step::AddCheck => "add check (not valid)",
        Step::ValidateCheck => "validate check",
        Step::SetNotNull => "set not null",
        Step::DropCheck => "drop check",
        Step::DropInvalidIndex => "drop invalid index",
        Step::BuildIndex => "build unique index",
    }
}

const KEY_SQL: &str = "
SELECT (SELECT array_agg(a.attname::text ORDER BY k.n)
          FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum),
       (SELECT array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY k.n)
          FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
  FROM pg_catalog.pg_index i
 WHERE i.indrelid = $1::text::regclass AND i.indisprimary";

const COLUMN_SQL: &str = "
SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid)
  FROM pg_catalog.pg_attribute a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

const CHECK_SQL: &str = "
SELECT convalidated FROM pg_catalog.pg_constraint
 WHERE conrelid = $1::text::regclass AND conname = $2 AND contype = 'c'";

/// Our index by name (valid or not), else any valid, non-partial unique
/// index on exactly the column.
const INDEX_SQL: &str = "
SELECT c.relname::text, i.indisvalid
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = $3
 WHERE i.indrelid = $1::text::regclass
   AND (c.relname = $2
        OR (i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
            AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum))
 ORDER BY (c.relname = $2) DESC, i.indisvalid DESC
 LIMIT 1";

const CURSOR_SQL: &str = "
SELECT next_key, rows_filled, done FROM pgrekey.prepare
 WHERE parent_schema = $1 AND parent_table = $2 AND uuid_column = $3";

/// Refuse a `--parent` that names no relation (shared with `promote`).
pub(crate) async fn require_parent(client: &Client, parent: &QualifiedName) -> Result<(), Error> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&parent.quoted()],
        )
        .await
        .map_err(Error::db("look for the parent"))?
        .get(0);
    if !exists {
        return Err(Error::Config(format!(
            "{parent} does not exist; check --parent (schema.table) and the database in --dsn"
        )));
    }
    Ok(())
}

/// Read the catalog and the cursor (see [`Observed`]).
pub async fn observe(
    client: &Client,
    parent: &QualifiedName,
    column: &str,
) -> Result<Observed, Error> {
    let rel = parent.quoted();
    require_parent(client, parent).await?;
    let mut o = Observed::default();
    match client
        .query_opt(KEY_SQL, &[&rel])
        .await
        .map_err(Error::db(format!("read the primary key of {parent}")))?
    {
        None => o.key_type = "no primary key".into(),
        Some(r) => {
            let names: Vec<String> = r.get::<_, Option<Vec<String>>>(0).unwrap_or_default();
            let types: Vec<String> = r.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
            o.key_type = types.join(", ");
            if names.len() == 1 && matches!(types[0].as_str(), "smallint" | "integer" | "bigint") {
                o.key = names.into_iter().next();
            }
        }
    }
    o.column = client
        .query_opt(COLUMN_SQL, &[&rel, &column])
        .await
        .map_err(Error::db(format!("read {parent}.{column}")))?
        .map(|r| ColumnFacts {
            type_name: r.get(0),
            not_null: r.get(1),
            default: r.get(2),
        });
    o.check = client
        .query_opt(CHECK_SQL, &[&rel, &check_name(&parent.name, column)])
        .await
        .map_err(Error::db("read the not-null check"))?
        .map(|r| CheckFacts {
            name: check_name(&parent.name, column),
            validated: r.get(0),
        });
    if o.column.is_some() {
        o.index = client
            .query_opt(
                INDEX_SQL,
                &[&rel, &index_name(&parent.name, column), &column],
            )
            .await
            .map_err(Error::db("read the column's unique index"))?
            .map(|r| IndexFacts {
                name: r.get(0),
                valid: r.get(1),
            });
    }
    let has_state: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgrekey.prepare') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::db("look for the pgrekey state schema"))?
        .get(0);
    if has_state {
        o.cursor = client
            .query_opt(CURSOR_SQL, &[&parent.schema, &parent.name, &column])
            .await
            .map_err(Error::db("read the backfill's cursor"))?
            .map(|r| Cursor {
                next_key: if r.get::<_, bool>(2) {
                    None
                } else {
                    Some(r.get(0))
                },
                rows_filled: r.get(1),
            });
    }
    Ok(o)
}

/// Run `prepare` to the end. `shutdown` turning `true` (Ctrl-C) stops it
/// between batches or steps; everything done so far stays done, and the
/// next run goes on from there.
pub async fn run(
    cfg: &PrepareConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<PrepareReport, Error> {
    if cfg.batch_rows < 1 {
        return Err(Error::Config("--batch-rows must be at least 1".into()));
    }
    let client = pg::connect(&cfg.spec, "prepare").await?;
    crate::state::ensure_schema(&client).await?;
    let parent = &cfg.parent;
    let col = &cfg.column;
    let observed = observe(&client, parent, col).await?;
    let steps = remaining(&observed, &parent.to_string(), col, cfg.column_exists)
        .map_err(|e| Error::Precondition(e.to_string()))?;
    let key = observed.key.clone().unwrap_or_default();
    let mut report = PrepareReport {
        parent: parent.to_string(),
        column: col.clone(),
        steps: Vec::new(),
        index: observed
            .index
            .as_ref()
            .filter(|i| i.valid)
            .map(|i| i.name.clone())
            .unwrap_or_else(|| index_name(&parent.name, col)),
        rows_filled: 0,
        backfill_rows_per_sec: 0.0,
        longest_hold_ms: 0,
    };
    if steps.is_empty() {
        info!(parent = %parent, column = %col, "already prepared; nothing to do");
        return Ok(report);
    }
    info!(parent = %parent, column = %col, steps = ?steps, "preparing");
    let (t, c) = (parent.quoted(), quote_ident(col));
    let check = quote_ident(&check_name(&parent.name, col));
    let index_schema = quote_ident(&parent.schema);
    for step in steps {
        if *shutdown.borrow() {
            return Err(Error::Stopped(format!(
                "prepare of {parent}.{col} stopped; run it again to go on where it stopped"
            )));
        }
        let started = Instant::now();
        let mut sr = StepReport {
            step: step.clone(),
            sql: None,
            rows: None,
            attempts: Vec::new(),
            ms: 0,
        };
        match &step {
            Step::AddColumn => {
                let sql = format!("ALTER TABLE {t} ADD COLUMN {c} uuid");
                // The cursor row says "prepare added this column" (for a
                // re-run), so it commits with the column; one left from a
                // column since dropped starts again.
                let cursor = format!(
                    "{} ; UPDATE pgrekey.prepare SET next_key = DEFAULT, rows_filled = 0, done = false, updated_at = now()
                      WHERE parent_schema = {} AND parent_table = {} AND uuid_column = {}",
                    cursor_insert(parent, col),
                    quote_literal(&parent.schema),
                    quote_literal(&parent.name),
                    quote_literal(col)
                );
                sr.attempts = locked(
                    &client,
                    &cfg.limits(),
                    &t,
                    "prepare",
                    &[sql.as_str(), cursor.as_str()],
                )
                .await?;
                sr.sql = Some(sql);
            }
            Step::SetDefault => {
                let sql = format!("ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT gen_random_uuid()");
                // A column completed with --column-exists gets its cursor
                // row here (its first step that changes anything).
                let cursor = cursor_insert(parent, col);
                sr.attempts = locked(
                    &client,
                    &cfg.limits(),
                    &t,
                    "prepare",
                    &[sql.as_str(), cursor.as_str()],
                )
                .await?;
                sr.sql = Some(sql);
            }
            Step::Backfill { from } => {
                client
                    .execute(cursor_insert(parent, col).as_str(), &[])
                    .await
                    .map_err(Error::db("record the backfill's cursor"))?;
                let rows = backfill(cfg, &client, &key, *from, &mut shutdown).await?;
                sr.rows = Some(rows);
                report.rows_filled += rows;
                let secs = started.elapsed().as_secs_f64();
                report.backfill_rows_per_sec = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
            }
            Step::Sweep => {
                let n = sweep(&client, &t, &c).await?;
                sr.rows = Some(n);
                report.rows_filled += n;
            }
            Step::AddCheck => {
                let sql = format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({c} IS NOT NULL) NOT VALID"
                );
                sr.attempts =
                    locked(&client, &cfg.limits(), &t, "prepare", &[sql.as_str()]).await?;
                // Rows written between the first sweep and the check.
                let n = sweep(&client, &t, &c).await?;
                sr.rows = Some(n);
                report.rows_filled += n;
                sr.sql = Some(sql);
            }
            Step::ValidateCheck => {
                // SHARE UPDATE EXCLUSIVE: reads and writes go on.
                let sql = format!("ALTER TABLE {t} VALIDATE CONSTRAINT {check}");
                client.batch_execute(&sql).await.map_err(Error::db(format!(
                    "validate the not-null check of {parent}.{col} (a NULL left means a write bypassed the check; run prepare again)"
                )))?;
                sr.sql = Some(sql);
            }
            Step::SetNotNull => {
                let sql = format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL");
                sr.attempts =
                    locked(&client, &cfg.limits(), &t, "prepare", &[sql.as_str()]).await?;
                sr.sql = Some(sql);
            }
            Step::DropCheck => {
                let sql = format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {check}");
                let done = cursor_done(parent, col);
                sr.attempts = locked(
                    &client,
                    &cfg.limits(),
                    &t,
                    "prepare",
                    &[sql.as_str(), done.as_str()],
                )
                .await?;
                sr.sql = Some(sql);
            }
            Step::DropInvalidIndex => {
                let name = observed
                    .index
                    .as_ref()
                    .map(|i| i.name.clone())
                    .unwrap_or_default();
                let sql = format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {index_schema}.{}",
                    quote_ident(&name)
                );
                info!(index = %name, "an invalid index left by an earlier build: dropping it to build it again");
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(Error::db(format!("drop the invalid index {name}")))?;
                sr.sql = Some(sql);
            }
            Step::BuildIndex => {
                let name = index_name(&parent.name, col);
                // Waits for transactions older than the build (no
                // lock_timeout: a timeout there would leave an invalid index).
                let sql = format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY {} ON {t} ({c})",
                    quote_ident(&name)
                );
                client.batch_execute(&sql).await.map_err(|e| Error::Db {
                    context: format!(
                        "build the unique index {name} on {parent}.{col} (if it failed halfway, the invalid index is dropped and built again by the next run)"
                    ),
                    source: e,
                })?;
                report.index = name;
                sr.sql = Some(sql);
            }
        }
        sr.ms = started.elapsed().as_millis() as u64;
        if let Some(a) = sr.attempts.last() {
            report.longest_hold_ms = report.longest_hold_ms.max(a.held_ms);
        }
        info!(step = step_label(&step), ms = sr.ms, rows = ?sr.rows, attempts = sr.attempts.len(), "step done");
        report.steps.push(sr);
    }
    Ok(report)
}

fn cursor_insert(parent: &QualifiedName, col: &str) -> String {
    format!(
        "INSERT INTO pgrekey.prepare (parent_schema, parent_table, uuid_column) VALUES ({}, {}, {})
         ON CONFLICT DO NOTHING",
        quote_literal(&parent.schema),
        quote_literal(&parent.name),
        quote_literal(col)
    )
}

fn cursor_done(parent: &QualifiedName, col: &str) -> String {
    format!(
        "UPDATE pgrekey.prepare SET done = true, updated_at = now()
          WHERE parent_schema = {} AND parent_table = {} AND uuid_column = {}",
        quote_literal(&parent.schema),
        quote_literal(&parent.name),
        quote_literal(col)
    )
}

/// `UPDATE … SET c = gen_random_uuid() WHERE c IS NULL`; rows changed.
async fn sweep(client: &Client, t: &str, c: &str) -> Result<u64, Error> {
    client
        .execute(
            format!("UPDATE {t} SET {c} = gen_random_uuid() WHERE {c} IS NULL").as_str(),
            &[],
        )
        .await
        .map_err(Error::db("give the remaining rows a uuid"))
}

/// The key-ordered batches (see the module docs). Returns rows given a uuid.
async fn backfill(
    cfg: &PrepareConfig,
    client: &Client,
    key: &str,
    from: i64,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, Error> {
    use std::io::IsTerminal;
    let parent = &cfg.parent;
    let (t, c, k) = (parent.quoted(), quote_ident(&cfg.column), quote_ident(key));
    let upper = client
        .prepare(&format!(
            "SELECT max(k)::int8 FROM (SELECT {k} AS k FROM {t} WHERE {k} >= $1::int8 ORDER BY {k} LIMIT $2::int8) s"
        ))
        .await
        .map_err(Error::db("prepare the backfill"))?;
    let fill = client
        .prepare(&format!(
            "UPDATE {t} SET {c} = gen_random_uuid() WHERE {k} >= $1::int8 AND {k} <= $2::int8 AND {c} IS NULL"
        ))
        .await
        .map_err(Error::db("prepare the backfill"))?;
    let advance = client
        .prepare(
            "UPDATE pgrekey.prepare SET next_key = $4, rows_filled = rows_filled + $5, updated_at = now()
              WHERE parent_schema = $1 AND parent_table = $2 AND uuid_column = $3",
        )
        .await
        .map_err(Error::db("prepare the backfill"))?;
    let estimate = crate::step_progress::row_estimate(client, &t).await;
    let (_stop_throttle, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let throttle = if cfg.throttle.any() {
        Some(
            Throttle::start(
                &cfg.spec,
                ThrottleConfig::new(cfg.throttle.clone(), None),
                crate::progress::JobProgress::new(),
                async move {
                    let _ = stop_rx.await;
                },
            )
            .await?,
        )
    } else {
        None
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut cursor = from;
    let mut rows = 0u64;
    let mut batches = 0u64;
    loop {
        if *shutdown.borrow() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Err(Error::Stopped(format!(
                "backfill of {parent}.{} stopped after {} rows; run prepare again to go on from key {cursor}",
                cfg.column,
                thousands(rows)
            )));
        }
        if let Some(th) = &throttle {
            th.wait_ready().await;
        }
        client
            .batch_execute("BEGIN")
            .await
            .map_err(Error::db("begin a backfill batch"))?;
        let batch = async {
            let hi: Option<i64> = client
                .query_one(&upper, &[&cursor, &cfg.batch_rows])
                .await
                .map_err(Error::db("find the batch's last key"))?
                .get(0);
            let Some(hi) = hi else {
                return Ok::<_, Error>(None);
            };
            let n = client
                .execute(&fill, &[&cursor, &hi])
                .await
                .map_err(Error::db(format!("backfill keys {cursor}..={hi}")))?;
            let next = hi.checked_add(1);
            client
                .execute(
                    &advance,
                    &[
                        &parent.schema,
                        &parent.name,
                        &cfg.column,
                        &next.unwrap_or(i64::MAX),
                        &i64::try_from(n).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(Error::db("advance the backfill's cursor"))?;
            Ok(Some((n, next)))
        };
        let result = batch.await;
        match result {
            Ok(Some((n, next))) => {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(Error::db("commit a backfill batch"))?;
                crate::failpoint::hit("prepare.after_batch");
                rows += n;
                batches += 1;
                let Some(next) = next else { break };
                cursor = next;
            }
            Ok(None) => {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(Error::db("end the backfill"))?;
                break;
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return Err(e);
            }
        }
        let line = backfill_line(parent, rows, batches, estimate, started.elapsed());
        match &bar {
            Some(b) => b.set_message(line),
            None if last_log.elapsed() >= cfg.progress_interval => {
                last_log = Instant::now();
                info!("{line}");
            }
            None => {}
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    info!(
        rows,
        batches,
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "backfill done"
    );
    Ok(rows)
}

/// The backfill's progress line (pure): rows, rate and an ETA from the
/// planner's estimate (approximate, `~`).
pub fn backfill_line(
    parent: &QualifiedName,
    rows: u64,
    batches: u64,
    estimate: u64,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
    let mut s = format!("backfill {parent}: {} rows", thousands(rows));
    if estimate > 0 {
        s.push_str(&format!(" of ~{}", thousands(estimate.max(rows))));
    }
    s.push_str(&format!(
        " in {} batches · {} rows/s",
        thousands(batches),
        format_count(rate)
    ));
    if estimate > rows && rate > 0.0 {
        let left = Duration::from_secs_f64((estimate - rows) as f64 / rate);
        s.push_str(&format!(" · ETA {}", format_duration(left)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_key() -> Observed {
        Observed {
            key: Some("id".into()),
            key_type: "bigint".into(),
            ..Observed::default()
        }
    }

    fn col(not_null: bool, default: bool) -> Option<ColumnFacts> {
        Some(ColumnFacts {
            type_name: "uuid".into(),
            not_null,
            default: default.then(|| "gen_random_uuid()".into()),
        })
    }

    #[test]
    fn a_fresh_parent_gets_every_step_in_order() {
        let steps = remaining(&ready_key(), "public.users", "uuid_id", false).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::AddColumn,
                Step::SetDefault,
                Step::Backfill { from: i64::MIN },
                Step::Sweep,
                Step::AddCheck,
                Step::ValidateCheck,
                Step::SetNotNull,
                Step::DropCheck,
                Step::BuildIndex,
            ]
        );
    }

    #[test]
    fn a_cursor_of_a_dropped_column_is_not_followed() {
        let o = Observed {
            cursor: Some(Cursor {
                next_key: None,
                rows_filled: 5,
            }),
            ..ready_key()
        };
        let steps = remaining(&o, "public.users", "uuid_id", false).unwrap();
        assert_eq!(
            &steps[..3],
            &[
                Step::AddColumn,
                Step::SetDefault,
                Step::Backfill { from: i64::MIN }
            ]
        );
    }

    #[test]
    fn a_killed_backfill_goes_on_from_its_cursor() {
        let o = Observed {
            column: col(false, true),
            cursor: Some(Cursor {
                next_key: Some(40_001),
                rows_filled: 40_000,
            }),
            ..ready_key()
        };
        let steps = remaining(&o, "public.users", "uuid_id", false).unwrap();
        assert_eq!(steps[0], Step::Backfill { from: 40_001 });
        assert!(!steps.contains(&Step::AddColumn) && !steps.contains(&Step::SetDefault));
    }

    #[test]
    fn a_prepared_column_needs_nothing_even_when_it_was_not_ours() {
        let o = Observed {
            column: col(true, true),
            index: Some(IndexFacts {
                name: "users_uuid_key".into(),
                valid: true,
            }),
            ..ready_key()
        };
        assert_eq!(remaining(&o, "public.users", "uuid", false), Ok(vec![]));
    }

    #[test]
    fn a_foreign_column_needs_the_flag_and_keeps_its_values() {
        let o = Observed {
            column: col(false, false),
            ..ready_key()
        };
        assert!(matches!(
            remaining(&o, "public.users", "uuid", false),
            Err(Refusal::ColumnExists { .. })
        ));
        let steps = remaining(&o, "public.users", "uuid", true).unwrap();
        assert_eq!(steps[0], Step::SetDefault);
        assert_eq!(steps[1], Step::Backfill { from: i64::MIN });
    }

    #[test]
    fn an_invalid_index_is_dropped_and_built_again() {
        let o = Observed {
            column: col(true, true),
            cursor: Some(Cursor {
                next_key: None,
                rows_filled: 10,
            }),
            index: Some(IndexFacts {
                name: "users_uuid_key".into(),
                valid: false,
            }),
            ..ready_key()
        };
        assert_eq!(
            remaining(&o, "public.users", "uuid", false).unwrap(),
            vec![Step::DropInvalidIndex, Step::BuildIndex]
        );
    }

    #[test]
    fn a_validated_check_left_by_a_kill_goes_on_to_not_null() {
        let o = Observed {
            column: col(false, true),
            cursor: Some(Cursor {
                next_key: None,
                rows_filled: 10,
            }),
            check: Some(CheckFacts {
                name: "users_uuid_not_null".into(),
                validated: true,
            }),
            ..ready_key()
        };
        assert_eq!(
            remaining(&o, "public.users", "uuid", false).unwrap(),
            vec![Step::SetNotNull, Step::DropCheck, Step::BuildIndex]
        );
    }

    #[test]
    fn refusals_name_the_cause() {
        let o = Observed {
            key: None,
            key_type: "uuid".into(),
            ..Observed::default()
        };
        assert!(remaining(&o, "public.t", "u", false)
            .unwrap_err()
            .to_string()
            .contains("not one integer column (uuid)"));
        let o = Observed {
            column: Some(ColumnFacts {
                type_name: "text".into(),
                not_null: false,
                default: None,
            }),
            ..ready_key()
        };
        assert!(remaining(&o, "public.t", "u", true)
            .unwrap_err()
            .to_string()
            .contains("is text, not uuid"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 2), Duration::from_secs(1));
        assert_eq!(backoff(b, 3), Duration::from_secs(2));
        assert_eq!(backoff(b, 30), Duration::from_secs(10));
    }

    #[test]
    fn progress_line_has_rate_and_eta() {
        let p = QualifiedName::new("public", "users");
        let l = backfill_line(&p, 50_000, 5, 100_000, Duration::from_secs(5));
        assert!(l.contains("50,000 rows of ~100,000"), "{l}");
        assert!(l.contains("ETA 5.0s"), "{l}");
    }
}
