//! `pg-rekey verify`: find each table's job, read both sides of each table at
//! one point of the stream (tables taken in lock sets, each set at its own
//! point), and compare them with [`super::verify_table`].
//!
//! # Which two tables
//!
//! | job phase                   | left (integer side)          | right (uuid side)                  |
//! |-----------------------------|------------------------------|------------------------------------|
//! | `streaming`, `cutting_over` | the source                   | the shadow                         |
//! | `cut_over`                  | the old table (`old_table`)  | the new table (the source's name)  |
//!
//! Any other phase is an error that names it; `failed` carries the job's
//! recorded error. A table without a job is an error too.
//!
//! # The consistent point before cutover, and why it is one
//!
//! The application writes the source; the job's applier writes the same
//! change to the shadow a little later. A snapshot taken at a random moment
//! sees the shadow behind the source, so every attempt does this (steps 2,
//! 3 and 5 through [`crate::quiesce`], the core cutover uses too):
//!
//! 1. **Catch up, unlocked.** A fence is written through the stream and the
//!    jobs drain to it, so the lag is small before anything is locked (this
//!    keeps step 3 short). A catch-up that took more than a quarter of
//!    `max_hold` is followed by another (at most three in all): what the
//!    application wrote meanwhile would otherwise be drained under the lock.
//!    A job that does not catch up within
//!    [`RunOptions::catch_up_timeout`] is an error: its `rewrite` process is
//!    probably not running.
//! 2. **Lock the sources of one lock set** (see below) on the *lock
//!    session*: `BEGIN; SET LOCAL
//!    lock_timeout = …; LOCK TABLE <sources> IN SHARE MODE`, sources in
//!    sorted name order (two verifies cannot deadlock each other). `SHARE`
//!    conflicts with the `ROW EXCLUSIVE` lock every `INSERT`, `UPDATE` and
//!    `DELETE` takes, not with the `ACCESS SHARE` of readers: the
//!    application's reads go on, its writes to these tables wait. `LOCK`
//!    returns only once every transaction that wrote a source has ended, so
//!    from then on the sources do not change, and every committed change to
//!    them committed *before* the lock was granted. The job rows are re-read
//!    under the lock: each source must still be the relation its job copies
//!    (same OID, phase still streaming); a cutover that won the race makes the
//!    attempt start over, and the table is then compared as cut over.
//! 3. **Drain to a fence.** On the *work session* a fence (a transactional
//!    logical message, [`crate::fence`]) commits. It commits after every
//!    change to the sources, and logical decoding delivers transactions in
//!    commit order, so once a job's applied position passes the fence its
//!    shadow holds every change to its source. The applied position is
//!    recorded in the same transaction as the shadow writes
//!    ([`crate::state::record_applied`]), so a session that sees the position
//!    also sees the rows. Transactions that commit after the fence cannot
//!    touch the sources (locked), so the applier has nothing more to write to
//!    these shadows while the lock is held.
//! 4. **Take the snapshot, still locked.** The work session runs `BEGIN
//!    ISOLATION LEVEL REPEATABLE READ` and a query, which fixes its
//!    snapshot: the sources as they are under the lock, the shadows with
//!    everything through the fence — the same point of the stream on both
//!    sides.
//! 5. **Release.** The lock session commits. The lock is held for steps 2–4
//!    only (at most `lock_timeout` waiting plus `max_hold` draining), never
//!    for the comparison.
//! 6. **Compare** in the snapshot of step 4, however long it takes and
//!    whatever the application writes meanwhile.
//!
//! A lock wait past `lock_timeout` (a long transaction holds a write lock on
//! a source) or a drain past `max_hold` gives the lock back at once, backs off
//! (doubling, capped: [`crate::quiesce::backoff`], the rule cutover follows
//! too) and tries again; after `attempts` the run fails with
//! [`VerifyError::NoConsistentPoint`]. While the lock request waits, later
//! writers of those tables queue behind it, so `lock_timeout` bounds what the
//! application can feel.
//!
//! # Lock sets
//!
//! Each table only needs *its* source and shadow at one point of the stream;
//! nothing requires one point for all tables. The tables are therefore taken
//! in *lock sets* of at most [`RunOptions::lock_set`] tables (default
//! [`DEFAULT_LOCK_SET`] = 1): steps 1–6 run once per set, and each set's
//! tables are compared in that set's snapshot. A failed attempt on a set of
//! several tables splits it in two halves, tried at once without counting
//! an attempt; `attempts` and the backoff apply to single tables. The
//! report's consistent point summarises the sets (their number, the most
//! attempts, the longest wait, drain and hold).
//!
//! Why one table per set by default: locking many tables at once deadlocks
//! with the application. `LOCK TABLE a, b, …` takes the locks one after the
//! other; holding `SHARE` on `a` it waits for a transaction that has written
//! `b`, and if that transaction's next statement writes `a` it waits for the
//! verify: a cycle that only `lock_timeout` breaks. ORM transactions write
//! several tables in no fixed order, so with many tables almost every attempt
//! meets one. A set of one table holds nothing while it waits, so it cannot be
//! part of a cycle: it waits only for the transactions that wrote that table.
//! Measured (`tests/it/verify_many.rs`: 17 tables of 300 rows, 4 sessions
//! writing 2–5 tables per transaction in random order as fast as they can,
//! on a 2-core machine shared with other builds; the figures move by ±50 %
//! between runs):
//!
//! | lock sets | outcome at the defaults (200 ms lock timeout, 2 s hold, 5 attempts) |
//! |---|---|
//! | all 17 at once (before) | **gave up**: 5 of 5 attempts timed out on the locks (the issue's error) |
//! | 17, halved on failure | equal; 3–7 failed attempts before the sets were small enough (each blocks every writer of the locked tables for up to 200 ms), 6.4–121 s in all; writers committed 187/s during it |
//! | 1 (default) | equal; every table on its first attempt, longest lock wait 7–27 ms, longest hold 0.5–1.4 s (the drain of the stream's backlog, see below), 6.5–11.9 s in all; writers committed 385/s during it |
//!
//! The hold is the drain of everything the stream carried before the fence —
//! all tables' changes, not only the locked one's — so it follows the job's
//! lag, not the number of tables. Repeating the catch-up (step 1) brought
//! the longest hold under that workload from 1.4 s to 0.65–0.7 s. The cost
//! of one set per table is one catch-up and one fence per table (about 0.4 s
//! each under that load, milliseconds when idle).
//!
//! # After cutover
//!
//! Nothing writes the old table any more (cutover renamed it away under
//! `ACCESS EXCLUSIVE`; blocked statements re-resolve the name and reach the
//! new table), so one `REPEATABLE READ` snapshot of old and new is enough: no
//! lock, no fence. The new table, however, takes the application's writes
//! from the swap on: "equal" proves the swap lost nothing only when it is
//! checked before anything else wrote the new table; later writes show up as
//! differences. A cut-over table in a lock set with tables not yet cut over is compared in
//! that set's snapshot; a set of cut-over tables only takes a plain snapshot.
//!
//! # The table model and the parent
//!
//! Which columns changed is read from the two tables, not trusted from a plan:
//! a column is a reference exactly when it is an integer on the left and
//! `uuid` on the right under the same name; every other column must have the
//! same type on both sides. The key and the generated columns come from the
//! left table's catalog entry ([`catalog::load_table`]).
//!
//! The parent is not rewritten: it is the same table with the same integer
//! key and uuid column before and after cutover. It is the one the job
//! recorded (the parent its rewrite translated through) unless the caller
//! names one ([`RunOptions::parent`]). For a job row without that record it
//! is found from the
//! reference columns' single-column foreign keys: an integer key on the left
//! (the source, or the old table, which keeps its keys) names the parent; a
//! uuid key on the right (the new table gets them at the swap) names the
//! parent *and* its uuid column. Before cutover the shadow has no foreign
//! keys, so the uuid column is the parent's only `NOT NULL` uuid column with a
//! unique index of its own; when there are several, the caller names it
//! ([`RunOptions::parent`]). [`catalog::load_parent`] then checks the choice.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use super::{verify_table, TableVerdict, VerifyError, VerifyOptions};
use crate::error::Error;
use crate::fence;
use crate::pg::{self, ConnSpec, QualifiedName};
use crate::plan::catalog;
use crate::plan::model::{IntKind, ParentSpec, TableSpec};
#[cfg(test)]
use crate::quiesce::MAX_BACKOFF;
use crate::quiesce::{self, backoff, Attempt, LockSet, Outcome};
use crate::state::{self, JobRow, Phase};
use crate::units::millis as ms;

/// Default of [`RunOptions::lock_set`] (see the module docs for the measurements).
pub const DEFAULT_LOCK_SET: usize = 1;

/// Most catch-up fences before the locks (see `consistent_point`).
const CATCH_UP_ROUNDS: u32 = 3;

/// `uuid`'s type OID.
const UUID_OID: u32 = 2950;

/// How [`run`] takes its consistent point and compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Chunking and reporting of each table's comparison.
    pub compare: VerifyOptions,
    /// How long one attempt waits for the `SHARE` locks on the sources.
    pub lock_timeout: Duration,
    /// Longest the locks are held while the jobs drain to the fence.
    pub max_hold: Duration,
    /// Attempts at a consistent point before giving up (at least 1), per
    /// table: a failed attempt on several tables splits them and does not
    /// count.
    pub attempts: u32,
    /// Most sources locked together for one consistent point (0 counts as
    /// 1); see the module docs, "Lock sets".
    pub lock_set: usize,
    /// Pause after the first failed attempt; doubles each time (capped at 10 s).
    pub backoff: Duration,
    /// How long the jobs may take to catch up before the lock is taken.
    pub catch_up_timeout: Duration,
    /// The parent and its uuid column; `None`: found from the catalogs (see
    /// the module docs).
    pub parent: Option<ParentChoice>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            compare: VerifyOptions::default(),
            lock_timeout: quiesce::DEFAULT_LOCK_TIMEOUT,
            max_hold: quiesce::DEFAULT_MAX_HOLD,
            attempts: 5,
            lock_set: DEFAULT_LOCK_SET,
            backoff: quiesce::DEFAULT_BACKOFF,
            catch_up_timeout: Duration::from_secs(60),
            parent: None,
        }
    }
}

/// The parent table and its uuid column, when the caller names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentChoice {
    /// The parent table.
    pub table: QualifiedName,
    /// Its uuid column.
    pub uuid_column: String,
}

/// Which pair of tables was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The source against its shadow.
    BeforeCutover,
    /// The old table against the new one.
    AfterCutover,
}

/// One table's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableReport {
    /// The table as named on the command line.
    pub table: QualifiedName,
    /// Source/shadow or old/new.
    pub stage: Stage,
    /// The table's job.
    pub job_id: Uuid,
    /// The comparison.
    pub verdict: TableVerdict,
}

/// How the before-cutover consistent point was reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsistentPoint {
    /// Attempts it took (1 = first try).
    pub attempts: u32,
    /// Waiting for the `SHARE` locks, in the successful attempt, ms.
    pub lock_wait_ms: u64,
    /// Draining to the fence under the locks, ms.
    pub drain_ms: u64,
    /// From the locks granted to their release, ms.
    pub lock_hold_ms: u64,
    /// The fence's position.
    pub fence: String,
    /// Consistent points taken, one per lock set ([`RunOptions::lock_set`]);
    /// the other fields are then the worst of them and the last fence.
    pub lock_sets: u32,
}

impl ConsistentPoint {
    /// One summary of several lock sets' points: the most attempts, the
    /// longest wait, drain and hold, the last fence. `None` for none.
    fn summary(points: &[ConsistentPoint]) -> Option<ConsistentPoint> {
        let last = points.last()?;
        Some(ConsistentPoint {
            attempts: points.iter().map(|p| p.attempts).max().unwrap_or(1),
            lock_wait_ms: points.iter().map(|p| p.lock_wait_ms).max().unwrap_or(0),
            drain_ms: points.iter().map(|p| p.drain_ms).max().unwrap_or(0),
            lock_hold_ms: points.iter().map(|p| p.lock_hold_ms).max().unwrap_or(0),
            fence: last.fence.clone(),
            lock_sets: u32::try_from(points.len()).unwrap_or(u32::MAX),
        })
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Every table equal.
    pub equal: bool,
    /// Per table, in the order asked.
    pub tables: Vec<TableReport>,
    /// Present when a table was compared before cutover.
    pub consistent_point: Option<ConsistentPoint>,
    /// Wall time, ms.
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// The command's exit code: 0 every table equal, 1 a difference.
    pub fn exit_code(&self) -> u8 {
        if self.equal {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            let stage = match t.stage {
                Stage::BeforeCutover => "before cutover",
                Stage::AfterCutover => "after cutover",
            };
            let text = t.verdict.to_string();
            writeln!(f, "{} ({stage}): {}", t.table, text.trim_end())?;
        }
        if let Some(p) = &self.consistent_point {
            writeln!(
                f,
                "consistent point{}: sources locked after {} ms, jobs drained to fence {} in {} ms, lock held {} ms (attempt {})",
                if p.lock_sets > 1 {
                    format!("s: {} lock sets, the longest", p.lock_sets)
                } else {
                    String::new()
                },
                p.lock_wait_ms, p.fence, p.drain_ms, p.lock_hold_ms, p.attempts
            )?;
        }
        let differ = self.tables.iter().filter(|t| !t.verdict.equal).count();
        if differ == 0 {
            writeln!(f, "verify: every table is equal ({} ms)", self.elapsed_ms)
        } else {
            writeln!(
                f,
                "verify: {differ} of {} tables DIFFER ({} ms)",
                self.tables.len(),
                self.elapsed_ms
            )
        }
    }
}

/// Which side of a table is which, from its job row (pure).
fn sides(
    table: &QualifiedName,
    job: Option<&JobRow>,
) -> Result<(Stage, QualifiedName, QualifiedName), VerifyError> {
    let job = job.ok_or_else(|| VerifyError::NoJob {
        table: table.to_string(),
    })?;
    match job.phase() {
        Some(Phase::Streaming | Phase::CuttingOver) => {
            Ok((Stage::BeforeCutover, job.source.clone(), job.shadow.clone()))
        }
        Some(Phase::CutOver) => {
            let old = job
                .old_table
                .as_deref()
                .ok_or_else(|| VerifyError::BadSpec {
                    table: table.to_string(),
                    detail: "the job is cut over but records no old table".into(),
                })?;
            let old = QualifiedName::parse(old, &job.source.schema).map_err(|e| {
                VerifyError::BadSpec {
                    table: table.to_string(),
                    detail: format!("the recorded old table is unreadable: {e}"),
                }
            })?;
            Ok((Stage::AfterCutover, old, job.source.clone()))
        }
        Some(Phase::Failed) => Err(VerifyError::JobFailed {
            table: table.to_string(),
            error: job
                .error
                .clone()
                .unwrap_or_else(|| "no error recorded".into()),
        }),
        _ => Err(VerifyError::NotReady {
            table: table.to_string(),
            phase: job.phase.clone(),
        }),
    }
}

/// One column as the pairing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Col {
    name: String,
    type_oid: u32,
    type_sql: String,
    generated: bool,
}

/// The reference columns of a pair: integer on the left, `uuid` on the right
/// (pure). Every other compared column must exist on both sides with the same
/// type; the error text says which does not.
fn references(
    left_name: &QualifiedName,
    right_name: &QualifiedName,
    left: &[Col],
    right: &[Col],
) -> Result<BTreeMap<String, IntKind>, String> {
    let mut refs = BTreeMap::new();
    for l in left.iter().filter(|c| !c.generated) {
        let r = right
            .iter()
            .find(|r| r.name == l.name && !r.generated)
            .ok_or_else(|| format!("column {:?} of {left_name} is not in {right_name}", l.name))?;
        match (IntKind::from_oid(l.type_oid), r.type_oid) {
            (Some(kind), UUID_OID) => {
                refs.insert(l.name.clone(), kind);
            }
            _ if l.type_oid == r.type_oid => {}
            _ => {
                return Err(format!(
                    "column {:?} is {} in {left_name} but {} in {right_name}",
                    l.name, l.type_sql, r.type_sql
                ))
            }
        }
    }
    if let Some(r) = right
        .iter()
        .filter(|r| !r.generated)
        .find(|r| !left.iter().any(|l| l.name == r.name && !l.generated))
    {
        return Err(format!(
            "column {:?} of {right_name} is not in {left_name}",
            r.name
        ));
    }
    if refs.is_empty() {
        return Err(format!(
            "no column is an integer in {left_name} and uuid in {right_name}"
        ));
    }
    Ok(refs)
}

/// A single-column foreign key of either side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefKey {
    /// Declared on the right (uuid) side.
    right_side: bool,
    column: String,
    target: QualifiedName,
    target_column: String,
}

/// The parent, and its uuid column where a right-side key names it, from the
/// reference columns' foreign keys (pure).
fn infer_parent(
    refs: &BTreeMap<String, IntKind>,
    keys: &[RefKey],
) -> Result<(QualifiedName, Option<String>), String> {
    let on_refs: Vec<&RefKey> = keys
        .iter()
        .filter(|k| refs.contains_key(&k.column))
        .collect();
    let mut targets: Vec<&QualifiedName> = on_refs.iter().map(|k| &k.target).collect();
    targets.sort();
    targets.dedup();
    let parent = match targets.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(format!(
                "none of the reference columns ({}) has a foreign key",
                refs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
        many => {
            return Err(format!(
                "the reference columns have foreign keys to several tables ({})",
                many.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let mut uuid_columns: Vec<&String> = on_refs
        .iter()
        .filter(|k| k.right_side)
        .map(|k| &k.target_column)
        .collect();
    uuid_columns.sort();
    uuid_columns.dedup();
    match uuid_columns.as_slice() {
        [] => Ok((parent, None)),
        [one] => Ok((parent, Some((*one).clone()))),
        many => Err(format!(
            "the uuid-side foreign keys reference several columns of {parent} ({})",
            many.iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One table, ready to compare.
#[derive(Debug, Clone)]
struct Pair {
    table: QualifiedName,
    job: JobRow,
    stage: Stage,
    left: QualifiedName,
    right: QualifiedName,
    spec: TableSpec,
    parent: ParentSpec,
}

const COLUMNS_SQL: &str = "
SELECT attrelid = $1 AS left_side, attname::text, atttypid, format_type(atttypid, atttypmod),
       attgenerated = 's' AS generated
  FROM pg_catalog.pg_attribute
 WHERE attrelid IN ($1, $2) AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum";

const KEYS_SQL: &str = "
SELECT c.conrelid = $1 AS left_side, a.attname::text, n.nspname::text, r.relname::text, fa.attname::text
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
  JOIN pg_catalog.pg_class r ON r.oid = c.confrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
  JOIN pg_catalog.pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]
 WHERE c.contype = 'f' AND c.conrelid IN ($1, $2) AND cardinality(c.conkey) = 1";

/// `NOT NULL` uuid columns of a table with a unique, non-partial,
/// single-column index of their own.
const UUID_COLUMNS_SQL: &str = "
SELECT a.attname::text
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = to_regclass($1) AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
   AND a.attnotnull AND a.attnum > 0 AND NOT a.attisdropped
   AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indpred IS NULL
                  AND i.indexprs IS NULL AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum)
 ORDER BY a.attnum";

/// A failed statement while planning `table`'s comparison.
fn db_failed(
    table: &QualifiedName,
    step: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> VerifyError {
    let table = table.to_string();
    move |source| VerifyError::Db {
        table,
        step,
        source,
    }
}

/// Build the comparison of one table: which sides, which columns are
/// references, the key, the parent.
async fn plan_pair(
    w: &Client,
    table: &QualifiedName,
    job: JobRow,
    choice: Option<&ParentChoice>,
    known: Option<&LoadedTable>,
) -> Result<Pair, Error> {
    let (stage, left, right) = sides(table, Some(&job))?;
    let db = |step: &'static str| db_failed(table, step);
    let bad = |detail: String| VerifyError::BadSpec {
        table: table.to_string(),
        detail,
    };
    let oids = w
        .query_one(
            "SELECT to_regclass($1)::oid, to_regclass($2)::oid",
            &[&left.quoted(), &right.quoted()],
        )
        .await
        .map_err(db("looking up both tables"))?;
    let left_oid: u32 = oids
        .try_get::<_, Option<u32>>(0)
        .map_err(db("looking up both tables"))?
        .ok_or_else(|| bad(format!("{left} does not exist")))?;
    let right_oid: u32 = oids
        .try_get::<_, Option<u32>>(1)
        .map_err(db("looking up both tables"))?
        .ok_or_else(|| bad(format!("{right} does not exist")))?;

    let (mut lcols, mut rcols) = (Vec::new(), Vec::new());
    for r in w
        .query(COLUMNS_SQL, &[&left_oid, &right_oid])
        .await
        .map_err(db("reading the columns"))?
    {
        let col = Col {
            name: r.try_get(1).map_err(db("reading the columns"))?,
            type_oid: r.try_get(2).map_err(db("reading the columns"))?,
            type_sql: r.try_get(3).map_err(db("reading the columns"))?,
            generated: r.try_get(4).map_err(db("reading the columns"))?,
        };
        if r.try_get::<_, bool>(0).map_err(db("reading the columns"))? {
            lcols.push(col);
        } else {
            rcols.push(col);
        }
    }
    let refs = references(&left, &right, &lcols, &rcols).map_err(bad)?;

    let (parent, mut spec) = match known {
        // What the caller read (cutover's targets) is what `read_model`
        // would read: the job's recorded parent, and the source's model,
        // the left side before cutover.
        Some(k) if stage == Stage::BeforeCutover && choice.is_none() && k.fits(&left) => {
            (k.parent.clone(), k.spec.clone())
        }
        _ => read_model(w, table, &job, choice, &left, (left_oid, right_oid), &refs).await?,
    };
    for c in &mut spec.columns {
        c.reference = refs.get(&c.name).copied();
    }
    Ok(Pair {
        table: table.clone(),
        job,
        stage,
        left,
        right,
        spec,
        parent,
    })
}

/// The parent and the left side's table model, read from the catalogs: the
/// parent the job recorded unless the caller names one, inferred from the
/// foreign keys for a job that predates the record.
async fn read_model(
    w: &Client,
    table: &QualifiedName,
    job: &JobRow,
    choice: Option<&ParentChoice>,
    left: &QualifiedName,
    (left_oid, right_oid): (u32, u32),
    refs: &BTreeMap<String, IntKind>,
) -> Result<(ParentSpec, TableSpec), Error> {
    let db = |step: &'static str| db_failed(table, step);
    // The parent the job recorded (the one its rewrite translated through)
    // unless the caller names one; inferred from the foreign keys only for
    // jobs that predate the record.
    let recorded = job.parent.as_ref().map(|(t, u)| ParentChoice {
        table: t.clone(),
        uuid_column: u.clone(),
    });
    let (parent_table, uuid_column) = match choice.or(recorded.as_ref()) {
        Some(c) => (c.table.clone(), c.uuid_column.clone()),
        None => {
            let mut keys = Vec::new();
            for r in w
                .query(KEYS_SQL, &[&left_oid, &right_oid])
                .await
                .map_err(db("reading the foreign keys"))?
            {
                let get = |i: usize| {
                    r.try_get::<_, String>(i)
                        .map_err(db("reading the foreign keys"))
                };
                keys.push(RefKey {
                    right_side: !r
                        .try_get::<_, bool>(0)
                        .map_err(db("reading the foreign keys"))?,
                    column: get(1)?,
                    target: QualifiedName::new(get(2)?, get(3)?),
                    target_column: get(4)?,
                });
            }
            let parent_err = |detail: String| VerifyError::Parent {
                table: table.to_string(),
                detail,
            };
            let (parent_table, uuid) = infer_parent(refs, &keys).map_err(parent_err)?;
            let uuid = match uuid {
                Some(u) => u,
                None => {
                    let found: Vec<String> = w
                        .query(UUID_COLUMNS_SQL, &[&parent_table.quoted()])
                        .await
                        .map_err(db("reading the parent's uuid columns"))?
                        .iter()
                        .map(|r| r.try_get::<_, String>(0))
                        .collect::<Result<_, _>>()
                        .map_err(db("reading the parent's uuid columns"))?;
                    match found.as_slice() {
                        [one] => one.clone(),
                        [] => {
                            return Err(parent_err(format!(
                                "{parent_table} has no NOT NULL uuid column with a unique index"
                            ))
                            .into())
                        }
                        many => {
                            return Err(parent_err(format!(
                                "{parent_table} has several unique uuid columns ({})",
                                many.join(", ")
                            ))
                            .into())
                        }
                    }
                }
            };
            (parent_table, uuid)
        }
    };
    let parent = catalog::load_parent(w, &parent_table, &uuid_column).await?;
    let spec = catalog::load_table(w, left, &parent).await?.spec;
    Ok((parent, spec))
}

/// Why an attempt at a consistent point gave up (it is retried).
type Retry = String;

/// A table whose job row and catalog details the caller has just read
/// (cutover, from its targets): [`run_loaded`] plans the comparison from
/// them instead of reading them again.
#[derive(Debug, Clone)]
pub struct LoadedTable {
    /// The table's job row.
    pub job: JobRow,
    /// The parent the job recorded, as read from the catalogs.
    pub parent: ParentSpec,
    /// The source's table model, as [`catalog::load_table`] gives it for
    /// `parent`.
    pub spec: TableSpec,
}

impl LoadedTable {
    /// Whether this is the model `read_model` would read for `left`: the
    /// job's source, its recorded parent.
    fn fits(&self, left: &QualifiedName) -> bool {
        self.job.source == *left
            && self.spec.source == *left
            && self.job.parent.as_ref().is_some_and(|(table, uuid)| {
                *table == self.parent.table && *uuid == self.parent.uuid_column
            })
    }
}

/// Compare each table's two sides, each table at one point of the stream
/// (one per lock set); see the module docs for the protocol and why it is
/// consistent.
///
/// A difference is a verdict ([`VerifyReport::equal`] false), not an error.
/// `Err` means the comparison could not run: a table without a job, a failed
/// job, no consistent point within the attempts, a broken session.
pub async fn run(
    spec: &ConnSpec,
    tables: &[QualifiedName],
    opts: &RunOptions,
) -> Result<VerifyReport, Error> {
    start(spec, tables.to_vec(), Vec::new(), opts).await
}

/// [`run`] on tables whose job rows and catalog details the caller has
/// just read (cutover's targets, in the order to report them): each table
/// is planned from them (only the pairing of the two sides' columns is
/// read), and read again only when an attempt at its consistent point has
/// to start over. The protocol and its argument are [`run`]'s.
pub async fn run_loaded(
    spec: &ConnSpec,
    loaded: Vec<LoadedTable>,
    opts: &RunOptions,
) -> Result<VerifyReport, Error> {
    let tables = loaded.iter().map(|l| l.job.source.clone()).collect();
    start(spec, tables, loaded, opts).await
}

/// Each table once, in the order asked; `loaded` is empty or parallel to
/// `tables`.
async fn start(
    spec: &ConnSpec,
    tables: Vec<QualifiedName>,
    loaded: Vec<LoadedTable>,
    opts: &RunOptions,
) -> Result<VerifyReport, Error> {
    let mut unique: Vec<QualifiedName> = Vec::with_capacity(tables.len());
    let mut given: Vec<LoadedTable> = Vec::with_capacity(loaded.len());
    let mut loaded = loaded.into_iter();
    for t in tables {
        let l = loaded.next();
        if !unique.contains(&t) {
            unique.push(t);
            given.extend(l);
        }
    }
    if unique.is_empty() {
        return Err(Error::Config(
            "verify: name at least one table with --table".into(),
        ));
    }
    let names = unique
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let span = tracing::info_span!("verify_run", tables = %names);
    run_inner(spec, &unique, given, &names, opts)
        .instrument(span)
        .await
}

/// Read `table`'s job row and plan its comparison.
async fn read_pair(
    w: &Client,
    table: &QualifiedName,
    choice: Option<&ParentChoice>,
) -> Result<Pair, Error> {
    let job = state::get_job(w, table)
        .await?
        .ok_or_else(|| VerifyError::NoJob {
            table: table.to_string(),
        })?;
    plan_pair(w, table, job, choice, None).await
}

/// `loaded` is empty (read every table) or parallel to `tables`.
async fn run_inner(
    spec: &ConnSpec,
    tables: &[QualifiedName],
    loaded: Vec<LoadedTable>,
    names: &str,
    opts: &RunOptions,
) -> Result<VerifyReport, Error> {
    let started = Instant::now();
    let w = pg::connect(spec, "verify").await?;
    let mut lock: Option<Client> = None;
    let attempts = opts.attempts.max(1);
    // Every table is planned (and every error reported) before anything is
    // locked. What the caller loaded is used once, for a set's first try;
    // what this run read itself is read again at the set (a cutover may
    // have won the race meanwhile).
    let mut given: Vec<Option<Pair>> = Vec::with_capacity(tables.len());
    let mut loaded = loaded.into_iter();
    for t in tables {
        match loaded.next() {
            Some(l) => {
                let job = l.job.clone();
                let pair = plan_pair(&w, t, job, opts.parent.as_ref(), Some(&l)).await?;
                given.push(Some(pair));
            }
            None => {
                read_pair(&w, t, opts.parent.as_ref()).await?;
                given.push(None);
            }
        }
    }
    let mut reports: Vec<Option<TableReport>> = vec![None; tables.len()];
    let mut points: Vec<ConsistentPoint> = Vec::new();
    // Lock sets still to do, as positions in `tables`, each with the attempt
    // it is at. The first sets hold up to `lock_set` tables each.
    let mut queue: VecDeque<(Vec<usize>, u32)> = lock_sets(tables.len(), opts.lock_set)
        .into_iter()
        .map(|set| (set, 1))
        .collect();
    while let Some((set, attempt)) = queue.pop_front() {
        // The job rows again (a cutover may have won the race meanwhile),
        // unless the caller's are still unused.
        let mut pairs = Vec::with_capacity(set.len());
        for &i in &set {
            let Some(t) = tables.get(i) else { continue };
            let pair = match given.get_mut(i).and_then(Option::take) {
                Some(p) => p,
                None => read_pair(&w, t, opts.parent.as_ref()).await?,
            };
            pairs.push((i, pair));
        }
        // Both sides take writes before cutover (the source, then the
        // shadow through the stream), and after a cutover with a way back
        // (the new table, then the old one through the way back): those
        // need a consistent point. The new table carries the source's name.
        let before: Vec<&Pair> = pairs
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.stage == Stage::BeforeCutover || p.job.way_back)
            .collect();
        if before.is_empty() {
            w.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(Error::db("opening the comparison snapshot"))?;
        } else {
            if lock.is_none() {
                lock = Some(pg::connect(spec, "verify-lock").await?);
            }
            let Some(l) = lock.as_ref() else {
                continue;
            };
            let set_names = before
                .iter()
                .map(|p| p.table.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            match consistent_point(&w, l, &before, &set_names, opts).await? {
                Ok(mut p) => {
                    p.attempts = attempt;
                    points.push(p);
                }
                Err(reason) => {
                    warn!(attempt, attempts, tables = %set_names, reason = %reason, "no consistent point in this attempt");
                    if set.len() > 1 {
                        // Fewer locks at once: two halves, each tried right
                        // away at the same attempt (see the module docs).
                        let (a, b) = set.split_at(set.len() / 2);
                        queue.push_front((b.to_vec(), attempt));
                        queue.push_front((a.to_vec(), attempt));
                        continue;
                    }
                    if attempt >= attempts {
                        return Err(VerifyError::NoConsistentPoint {
                            tables: set_names,
                            attempts,
                            reason,
                        }
                        .into());
                    }
                    tokio::time::sleep(backoff(opts.backoff, attempt)).await;
                    queue.push_front((set, attempt + 1));
                    continue;
                }
            }
        }
        for (i, p) in &pairs {
            let verdict =
                verify_table(&w, &p.spec, &p.parent, &p.left, &p.right, &opts.compare).await?;
            if let Some(slot) = reports.get_mut(*i) {
                *slot = Some(TableReport {
                    table: p.table.clone(),
                    stage: p.stage,
                    job_id: p.job.job_id,
                    verdict,
                });
            }
        }
        w.batch_execute("COMMIT")
            .await
            .map_err(Error::db("ending the comparison snapshot"))?;
    }
    let reports: Vec<TableReport> = reports.into_iter().flatten().collect();
    let equal = reports.iter().all(|r| r.verdict.equal);
    let elapsed_ms = ms(started.elapsed());
    info!(equal, elapsed_ms, lock_sets = points.len(), tables = %names, "verify done");
    Ok(VerifyReport {
        equal,
        tables: reports,
        consistent_point: ConsistentPoint::summary(&points),
        elapsed_ms,
    })
}

/// The first lock sets (pure): positions `0..n` in order, `size` at a time
/// (0 counts as 1).
fn lock_sets(n: usize, size: usize) -> Vec<Vec<usize>> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Steps 1–5 of the module docs. `Ok(Ok(point))`: the work session is inside
/// its repeatable-read snapshot and the lock is released. `Ok(Err(reason))`:
/// this attempt gave up, nothing is held. `Err`: stop.
async fn consistent_point(
    w: &Client,
    lock: &Client,
    before: &[&Pair],
    names: &str,
    opts: &RunOptions,
) -> Result<Result<ConsistentPoint, Retry>, Error> {
    let mut job_ids: Vec<Uuid> = before.iter().map(|p| p.job.job_id).collect();
    job_ids.sort();
    job_ids.dedup();

    // 1. Catch up without the lock, so the locked drain is short. What the
    //    application writes while a catch-up drains is the next drain's
    //    work: a long catch-up is followed by another (a few at most), so
    //    the drain under the lock starts from a small lag.
    let catch_up = Instant::now();
    for _ in 0..CATCH_UP_ROUNDS {
        let round = Instant::now();
        let f = fence::emit(w, "verify catch-up").await?;
        if !fence::wait_drained(w, &job_ids, f, catch_up + opts.catch_up_timeout).await? {
            return Err(VerifyError::NotCaughtUp {
                tables: names.to_string(),
                waited_ms: ms(catch_up.elapsed()),
            }
            .into());
        }
        if round.elapsed() < opts.max_hold / 4 {
            break;
        }
    }

    // 2. Lock the sources, in name order.
    let mut sources: Vec<&QualifiedName> = before.iter().map(|p| &p.job.source).collect();
    sources.sort();
    sources.dedup();
    let list = sources
        .iter()
        .map(|s| s.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    let set = LockSet {
        sql: format!("LOCK TABLE {list} IN SHARE MODE"),
        what: format!("locking {list} in SHARE mode"),
        // Lock timeout, deadlock, a source renamed away by a cutover.
        gives_up_on: &[quiesce::LOCK_NOT_AVAILABLE, "40P01", "42P01"],
    };
    let mut attempt = Attempt::lock(lock, &set, opts.lock_timeout).await?;
    let lock_wait = attempt.lock_wait();
    if let Some(e) = attempt.lock_error() {
        return Ok(Err(format!(
            "locking the sources: {}",
            crate::error::chain(e)
        )));
    }
    let held = locked_steps(w, &mut attempt, before, &job_ids, opts).await?;
    let (fence, drain) = match held {
        Ok(done) => done,
        Err(reason) => return Ok(Err(reason)),
    };
    let granted = attempt.granted().unwrap_or_else(Instant::now);
    let (outcome, error) = attempt.commit(|| async { false }).await;
    if let (Outcome::CommitLost, Some(e)) = (outcome, error) {
        return Err(Error::db("releasing the locks on the sources")(e));
    }
    let hold = granted.elapsed();
    info!(
        lock_wait_ms = ms(lock_wait),
        drain_ms = ms(drain),
        lock_hold_ms = ms(hold),
        fence = %fence,
        "consistent point taken"
    );
    Ok(Ok(ConsistentPoint {
        attempts: 0,
        lock_wait_ms: ms(lock_wait),
        drain_ms: ms(drain),
        lock_hold_ms: ms(hold),
        fence: fence.to_string(),
        lock_sets: 1,
    }))
}

/// Steps 2 (re-check), 3 and 4, with the locks held. On `Ok(Ok(_))` the
/// locks are still held (the caller releases them); otherwise `attempt` has
/// given them back.
async fn locked_steps(
    w: &Client,
    attempt: &mut Attempt<'_>,
    before: &[&Pair],
    job_ids: &[Uuid],
    opts: &RunOptions,
) -> Result<Result<(crate::pg::Lsn, Duration), Retry>, Error> {
    let granted = attempt.granted().unwrap_or_else(Instant::now);
    // The locked relations must be the ones the jobs copy, still streaming.
    let recheck = recheck_jobs(attempt.session(), before).await;
    let changed = match recheck {
        Ok(changed) => changed,
        Err(e) => {
            attempt.abandon().await;
            return Err(e);
        }
    };
    if attempt.check(changed.is_none()).await.gives_back() {
        return Ok(Err(changed.unwrap_or_default()));
    }
    // 3. Drain to a fence written after every change to the sources.
    let fence = attempt
        .fence(&quiesce::Fence {
            session: w,
            prepared: false,
            token: "verify",
        })
        .await?;
    let drain = quiesce::Drain {
        poll: w,
        job_ids,
        max_pause: fence::POLL_MAX_PAUSE,
    };
    if !attempt.drain(&drain, fence, opts.max_hold).await? {
        return Ok(Err(format!(
            "the jobs did not apply fence {fence} within {} ms of holding the locks",
            ms(opts.max_hold)
        )));
    }
    let drain = granted.elapsed();
    // 4. The snapshot, taken by the first query of the transaction.
    let snapshot = async {
        w.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(Error::db("opening the comparison snapshot"))?;
        if let Err(e) = w
            .query_one("SELECT pg_catalog.txid_current_snapshot()::text", &[])
            .await
        {
            let _ = w.batch_execute("ROLLBACK").await;
            return Err(Error::db("taking the comparison snapshot")(e));
        }
        Ok(())
    }
    .await;
    if let Err(e) = snapshot {
        attempt.abandon().await;
        return Err(e);
    }
    Ok(Ok((fence, drain)))
}

/// Under the lock: each source must still be the relation its job copies,
/// still streaming. `Some(reason)` when one is not.
async fn recheck_jobs(lock: &Client, before: &[&Pair]) -> Result<Option<Retry>, Error> {
    for p in before {
        let now = state::get_job(lock, &p.table).await?;
        let oid: Option<u32> = lock
            .query_one("SELECT to_regclass($1)::oid", &[&p.job.source.quoted()])
            .await
            .map_err(Error::db(format!("re-reading {} under the lock", p.table)))?
            .get(0);
        let same = now.as_ref().is_some_and(|j| {
            j.job_id == p.job.job_id
                && match p.stage {
                    Stage::BeforeCutover => {
                        matches!(j.phase(), Some(Phase::Streaming | Phase::CuttingOver))
                            && oid == Some(j.source_oid)
                    }
                    // The way back: still cut over, the name on the new table.
                    Stage::AfterCutover => {
                        j.phase() == Some(Phase::CutOver) && j.way_back && oid != Some(j.source_oid)
                    }
                }
        });
        if !same {
            return Ok(Some(format!(
                "{} changed while it was being locked (phase now {})",
                p.table,
                now.map_or_else(|| "gone".to_string(), |j| j.phase.to_string())
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(phase: &str) -> JobRow {
        JobRow::example(QualifiedName::new("app", "orders"), phase)
    }

    #[test]
    fn sides_follow_the_phase() {
        let t = QualifiedName::new("app", "orders");
        let (stage, l, r) = sides(&t, Some(&job("streaming"))).unwrap();
        assert_eq!(stage, Stage::BeforeCutover);
        assert_eq!(
            (l.name.as_str(), r.name.as_str()),
            ("orders", "_rekey_new_orders")
        );

        let mut j = job("cut_over");
        j.old_table = Some("app._rekey_old_orders".into());
        let (stage, l, r) = sides(&t, Some(&j)).unwrap();
        assert_eq!(stage, Stage::AfterCutover);
        assert_eq!(l, QualifiedName::new("app", "_rekey_old_orders"));
        assert_eq!(r, QualifiedName::new("app", "orders"));

        // A quoted old name (as JobRow prints it) comes back whole.
        j.old_table = Some("\"My App\".\"_rekey_old_Orders\"".into());
        let (_, l, _) = sides(&t, Some(&j)).unwrap();
        assert_eq!(l, QualifiedName::new("My App", "_rekey_old_Orders"));

        j.old_table = None;
        assert!(matches!(
            sides(&t, Some(&j)),
            Err(VerifyError::BadSpec { .. })
        ));
    }

    #[test]
    fn loaded_tables_stand_in_only_for_what_would_be_read() {
        let users = QualifiedName::new("app", "users");
        let parent = ParentSpec {
            table: users.clone(),
            oid: 2,
            key_column: "id".into(),
            key_kind: IntKind::Int8,
            uuid_column: "uuid".into(),
        };
        let mut j = job("streaming");
        j.parent = Some((users.clone(), "uuid".into()));
        let spec = TableSpec {
            source: j.source.clone(),
            oid: 1,
            shadow: j.shadow.clone(),
            columns: Vec::new(),
            key: Vec::new(),
        };
        let loaded = LoadedTable {
            job: j.clone(),
            parent: parent.clone(),
            spec,
        };
        assert!(loaded.fits(&j.source));
        // After cutover the left side is the old table, not the model read.
        assert!(!loaded.fits(&QualifiedName::new("app", "_rekey_old_orders")));
        // Another parent (or uuid column) than the job recorded.
        let mut other = loaded.clone();
        other.parent.uuid_column = "public_id".into();
        assert!(!other.fits(&j.source));
        let mut unrecorded = loaded;
        unrecorded.job.parent = None;
        assert!(!unrecorded.fits(&j.source));
    }

    #[test]
    fn no_job_failed_and_copying_are_errors() {
        let t = QualifiedName::new("app", "orders");
        let e = sides(&t, None).unwrap_err();
        assert!(e.to_string().contains("no pg-rekey job for it"), "{e}");
        let mut j = job("failed");
        j.error = Some("orphaned reference in user_id".into());
        let e = sides(&t, Some(&j)).unwrap_err();
        assert!(
            e.to_string()
                .contains("its job failed: orphaned reference in user_id"),
            "{e}"
        );
        let e = sides(&t, Some(&job("copying"))).unwrap_err();
        assert!(e.to_string().contains("its job is copying"), "{e}");
        assert!(matches!(
            sides(&t, Some(&job("aborted"))),
            Err(VerifyError::NotReady { .. })
        ));
    }

    fn col(name: &str, type_oid: u32, generated: bool) -> Col {
        Col {
            name: name.into(),
            type_oid,
            type_sql: format!("oid{type_oid}"),
            generated,
        }
    }

    #[test]
    fn references_are_integer_left_and_uuid_right() {
        let (l, r) = (QualifiedName::new("p", "l"), QualifiedName::new("p", "r"));
        let left = [
            col("id", 20, false),
            col("user_id", 23, false),
            col("note", 25, false),
            col("total", 1700, true),
        ];
        let right = [
            col("id", 20, false),
            col("user_id", UUID_OID, false),
            col("note", 25, false),
            col("total", 1700, true),
        ];
        let refs = references(&l, &r, &left, &right).unwrap();
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            vec![("user_id".to_string(), IntKind::Int4)]
        );

        let mut changed = right.clone();
        changed[2] = col("note", 1043, false);
        let e = references(&l, &r, &left, &changed).unwrap_err();
        assert!(
            e.contains("\"note\" is oid25 in p.l but oid1043 in p.r"),
            "{e}"
        );

        let e = references(&l, &r, &left, &right[..2]).unwrap_err();
        assert!(e.contains("column \"note\" of p.l is not in p.r"), "{e}");

        let mut extra = right.to_vec();
        extra.push(col("added", 25, false));
        assert!(references(&l, &r, &left, &extra)
            .unwrap_err()
            .contains("\"added\" of p.r is not in p.l"));

        let e = references(&l, &r, &left, &left).unwrap_err();
        assert!(e.contains("no column is an integer"), "{e}");
    }

    fn key(right_side: bool, column: &str, target: &str, target_column: &str) -> RefKey {
        RefKey {
            right_side,
            column: column.into(),
            target: QualifiedName::new("public", target),
            target_column: target_column.into(),
        }
    }

    #[test]
    fn the_parent_comes_from_the_reference_keys() {
        let refs: BTreeMap<String, IntKind> = [("user_id".to_string(), IntKind::Int8)]
            .into_iter()
            .collect();
        // Before cutover: only the source's integer key; other keys ignored.
        let keys = [
            key(false, "user_id", "users", "id"),
            key(false, "message_id", "chat_messages", "id"),
        ];
        assert_eq!(
            infer_parent(&refs, &keys).unwrap(),
            (QualifiedName::new("public", "users"), None)
        );
        // After cutover: the new table's uuid key names the column too.
        let keys = [
            key(false, "user_id", "users", "id"),
            key(true, "user_id", "users", "uuid_id"),
        ];
        assert_eq!(
            infer_parent(&refs, &keys).unwrap(),
            (
                QualifiedName::new("public", "users"),
                Some("uuid_id".into())
            )
        );
        assert!(infer_parent(&refs, &[])
            .unwrap_err()
            .contains("has a foreign key"));
        let refs2: BTreeMap<String, IntKind> = [
            ("user_id".to_string(), IntKind::Int8),
            ("owner_id".to_string(), IntKind::Int8),
        ]
        .into_iter()
        .collect();
        let keys = [
            key(false, "user_id", "users", "id"),
            key(false, "owner_id", "accounts", "id"),
        ];
        assert!(infer_parent(&refs2, &keys)
            .unwrap_err()
            .contains("several tables"));
    }

    #[test]
    fn lock_sets_cut_the_tables_in_order() {
        assert_eq!(lock_sets(3, 1), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(lock_sets(3, 0), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(lock_sets(5, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(lock_sets(2, 17), vec![vec![0, 1]]);
        assert!(lock_sets(0, 1).is_empty());
    }

    #[test]
    fn several_points_summarise_as_the_worst() {
        let p = |attempts, wait, drain, hold, fence: &str| ConsistentPoint {
            attempts,
            lock_wait_ms: wait,
            drain_ms: drain,
            lock_hold_ms: hold,
            fence: fence.into(),
            lock_sets: 1,
        };
        assert_eq!(ConsistentPoint::summary(&[]), None);
        let s =
            ConsistentPoint::summary(&[p(1, 5, 30, 40, "0/1"), p(3, 2, 50, 52, "0/2")]).unwrap();
        assert_eq!(
            s,
            ConsistentPoint {
                attempts: 3,
                lock_wait_ms: 5,
                drain_ms: 50,
                lock_hold_ms: 52,
                fence: "0/2".into(),
                lock_sets: 2
            }
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 3), Duration::from_secs(2));
        assert_eq!(backoff(b, 40), MAX_BACKOFF);
    }

    #[test]
    fn exit_code_follows_equality() {
        let mut r = VerifyReport {
            equal: true,
            tables: vec![],
            consistent_point: None,
            elapsed_ms: 1,
        };
        assert_eq!(r.exit_code(), 0);
        assert!(r.to_string().contains("every table is equal"));
        r.equal = false;
        assert_eq!(r.exit_code(), 1);
    }
}
