//! Verification: prove that a table with integer references (the *left*
//! side) holds the same rows as its uuid twin (the *right* side).
//!
//! Before cutover the left side is the source and the right side its shadow;
//! after cutover the left side is the old table and the right side the new
//! one. A row of the left side is *translated* by replacing each reference
//! column's integer with the parent's uuid for that integer; the two sides are
//! equal when the translated left rows and the right rows are the same set.
//!
//! # How the comparison runs
//!
//! The left side is cut into chunks of `chunk_rows` rows by ranges of its
//! key — the primary key, else the replica identity index — of any
//! btree-ordered types (integers, `uuid`, `text`, timestamps, `numeric`, …):
//! row-value comparisons `(a, b) > ($1, $2)`, so composite keys work whatever
//! their first column, served by the key's index. Bounds travel as text
//! bound to parameters and are cast back to each column's type (never
//! interpolated). Each chunk ends at the `chunk_rows`-th key after the last
//! one in the key's order, so the chunks `(previous, this]` partition the
//! left rows exactly: the comparisons, the order that picks each bound and
//! the index all use the key index's collation (made explicit with `COLLATE`,
//! which also lets an index built under another collation than its column's
//! serve the ranges). For each chunk one query, run entirely
//! inside the server, walks the left rows of the range in key order and, per
//! row, looks up
//!
//! - the parent's uuid for each reference column (one probe of the parent's
//!   key index; an integer with no parent row, an *orphan*, is a difference,
//!   never a dropped row), and
//! - the right row with the *translated* key (one probe of the right side's
//!   key index),
//!
//! and compares the two rows exactly with `record_image_eq` (the binary image
//! of every value: `1.0` and `1.00` differ, as do `-0` and `0`; types without
//! an equality operator, such as `json`, compare too). The query returns three
//! numbers: left rows in the range, right rows matched, and rows that differ.
//! Only a differing chunk is drilled into: the same query, filtered to the
//! differing rows and capped, names each row by its key, whether the right row
//! is missing, which columns differ and which references are orphans.
//!
//! Right rows that no left row matches (*extra* rows) cannot be found from
//! the left side. Every right row is matched by at most one left row (the left
//! key is unique, the translation is injective because the parent's uuid
//! column is unique, and an orphan translates to NULL, which matches nothing),
//! so `count(right) − Σ matched` is exactly the number of extra rows. One
//! `count(*)` of the right side settles it; only when it is non-zero does an
//! anti-join list the extra rows.
//!
//! ## Why key ranges on the integer side, and probes rather than hashes
//!
//! When a reference column is part of the key (`user_roles(user_id,
//! role_id)`), the two sides order their keys differently: by integer on the
//! left, by uuid on the right. A key range on one side is scattered all over
//! the other side's index, so "the same range on both sides, hashed and
//! compared" is not possible without sorting one whole side. Probing the right
//! side by the translated key of each left row needs no common order at all,
//! touches each right row exactly once through its index, and works the same
//! for plain keys. It is also cheaper than hashing: measured on 1 M rows,
//! rendering and hashing every row (`md5` of its text) cost more than the
//! probe, and an exact comparison cannot collide. Nothing is held in memory
//! beyond one chunk's aggregate in the server and at most `max_rows` reported
//! rows in this process; no row values leave the server.
//!
//! Both lookups are written as correlated subqueries behind `OFFSET 0`, which
//! PostgreSQL never flattens into a join: whatever its estimates, the planner
//! cannot turn a 10 000-row chunk into a hash join over the whole parent or
//! right table (which would make the verify quadratic in the table size).
//!
//! ## Generated columns are not compared
//!
//! Stored generated columns are neither copied nor streamed: both sides
//! compute them from the columns that *are* compared. A generation expression
//! over a reference column cannot even be the same on both sides (the type
//! changed), so comparing them would report differences that are not data.
//! They still serve as key columns if the key contains one.
//!
//! [`fn@run`] (in [`mod@run`]) is the `pg-rekey verify` entry point: it finds each
//! table's job, takes a consistent point of the stream per lock set of
//! tables (one table per set by default) and calls [`verify_table`] per
//! table in its set's snapshot. [`run_loaded`] is the same run for a caller
//! that has just read the job rows and catalog details (cutover, before its
//! swap): it plans each table from them instead of reading them again.
//!
//! # Invariants the caller provides
//!
//! - Both sides are read in one `REPEATABLE READ` (or `SERIALIZABLE`)
//!   transaction that sees them at the same point of the stream; this module
//!   checks the isolation level and refuses otherwise.
//! - The session's settings are pg-rekey's pinned ones ([`crate::pg::connect`]):
//!   chunk boundaries travel as text and are cast back to the key's type, which
//!   is exact with ISO dates, UTC and full float precision.
//! - `TableSpec::key` lists the key columns in index order, and every column
//!   of `columns` exists under the same name on both sides; the reference
//!   columns are `uuid` on the right.
//!
//! The comparison switches JIT compilation off for the rest of the caller's
//! transaction (`SET LOCAL jit = off`): each chunk query is short, and
//! compiling it cost more than running it.

use std::fmt;
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};
use tracing::Instrument;

use crate::pg::{quote_ident, QualifiedName};
use crate::plan::model::{ParentSpec, TableSpec};

pub mod run;

pub use crate::verify_error::VerifyError;
pub use run::{
    run, run_loaded, ConsistentPoint, LoadedTable, ParentChoice, RunOptions, Stage, TableReport,
    VerifyReport,
};

/// Rows per chunk unless told otherwise.
pub const DEFAULT_CHUNK_ROWS: u64 = 10_000;

/// How to run a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Left rows per chunk (at least 1).
    pub chunk_rows: u64,
    /// At most this many differing rows are named in the verdict.
    pub max_rows: usize,
    /// At most this many differing chunks are named in the verdict.
    pub max_ranges: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            chunk_rows: DEFAULT_CHUNK_ROWS,
            max_rows: 20,
            max_ranges: 10,
        }
    }
}

/// One key column's value, as text, in the left side's terms (integers for
/// reference columns).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyValue {
    /// Column name, unquoted.
    pub column: String,
    /// The value as PostgreSQL prints it.
    pub value: String,
}

/// A chunk whose rows differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChunkDiff {
    /// Keys strictly greater than this (none: from the first key).
    pub after: Option<Vec<KeyValue>>,
    /// Keys up to and including this (none: to the last key).
    pub through: Option<Vec<KeyValue>>,
    /// Left rows in the range.
    pub left_rows: u64,
    /// Right rows found for them.
    pub matched_rows: u64,
    /// Left rows that are missing on the right, differ, or hold an orphan.
    pub differing_rows: u64,
}

/// How a row differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RowDiffKind {
    /// On the left side only.
    Missing,
    /// On the right side only. Key values of reference columns are the
    /// parent's integer key when the uuid has a parent row, else the uuid.
    Extra,
    /// On both sides with different values in these columns.
    Changed {
        /// Differing columns, in table order.
        columns: Vec<String>,
    },
}

/// One differing row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowDiff {
    /// The row's key.
    pub key: Vec<KeyValue>,
    /// What differs.
    #[serde(flatten)]
    pub kind: RowDiffKind,
    /// Reference columns of the left row whose integer has no parent row.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphaned: Vec<String>,
}

/// The outcome of comparing one table pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableVerdict {
    /// The integer side.
    pub left: QualifiedName,
    /// The uuid side.
    pub right: QualifiedName,
    /// No difference at all.
    pub equal: bool,
    /// Rows on the left side.
    pub left_rows: u64,
    /// Rows on the right side.
    pub right_rows: u64,
    /// Chunks compared.
    pub chunks: u64,
    /// Chunks with at least one differing left row.
    pub differing_chunks: u64,
    /// Differing rows: left rows missing or changed on the right, plus extra
    /// right rows.
    pub differing_rows: u64,
    /// The first differing chunks, in key order (at most `max_ranges`).
    pub ranges: Vec<ChunkDiff>,
    /// The first differing rows: left-side rows in key order, then extra rows
    /// (at most `max_rows`).
    pub rows: Vec<RowDiff>,
    /// Wall time of the comparison in milliseconds.
    pub elapsed_ms: u64,
}

/// Compare `left` (integer references) with `right` (uuid references), chunk
/// by chunk, inside the caller's transaction.
///
/// `client` must be inside a `REPEATABLE READ` transaction that sees both
/// sides at one point of the stream (a [`tokio_postgres::Transaction`] passes
/// `GenericClient::client(&tx)`). A difference is reported in the verdict; an
/// `Err` means the comparison itself could not run.
pub async fn verify_table(
    client: &Client,
    spec: &TableSpec,
    parent: &ParentSpec,
    left: &QualifiedName,
    right: &QualifiedName,
    opts: &VerifyOptions,
) -> Result<TableVerdict, VerifyError> {
    let started = Instant::now();
    let table = left.to_string();
    if opts.chunk_rows == 0 {
        return Err(VerifyError::ChunkRows { table });
    }
    let mut sql = CompareSql::new(spec, parent, left, right)?;
    let index = crate::copy::key_columns(client, spec)
        .await
        .map_err(|e| match e {
            crate::copy::CopyError::Db { source, .. } => VerifyError::Db {
                table: table.clone(),
                step: "reading the key index's collations",
                source,
            },
            other => VerifyError::BadSpec {
                table: table.clone(),
                detail: other.to_string(),
            },
        })?;
    sql.use_index_collations(&index);
    if crate::step_progress::verify_watched() {
        let estimate = crate::step_progress::row_estimate(client, &left.quoted()).await;
        crate::step_progress::verify_table_started(&table, estimate.div_ceil(opts.chunk_rows));
    }
    let span = tracing::info_span!("verify", left = %left, right = %right);
    compare(client, &sql, left, right, opts, started)
        .instrument(span)
        .await
}

/// The chunk loop of [`verify_table`], inside its span.
async fn compare(
    client: &Client,
    sql: &CompareSql,
    left: &QualifiedName,
    right: &QualifiedName,
    opts: &VerifyOptions,
    started: Instant,
) -> Result<TableVerdict, VerifyError> {
    let table = left.to_string();
    let db = |step: &'static str| {
        let table = table.clone();
        move |source| VerifyError::Db {
            table,
            step,
            source,
        }
    };

    let isolation: String = client
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db("reading the isolation level"))?;
    if isolation != "repeatable read" && isolation != "serializable" {
        return Err(VerifyError::NotRepeatableRead { table, isolation });
    }
    client
        .batch_execute("SET LOCAL jit = off")
        .await
        .map_err(db("switching JIT off"))?;

    // OFFSET of the chunk's last row; a chunk size beyond i64 is "everything".
    let offset = i64::try_from(opts.chunk_rows - 1).unwrap_or(i64::MAX);
    let mut verdict = TableVerdict {
        left: left.clone(),
        right: right.clone(),
        equal: false,
        left_rows: 0,
        right_rows: 0,
        chunks: 0,
        differing_chunks: 0,
        differing_rows: 0,
        ranges: Vec::new(),
        rows: Vec::new(),
        elapsed_ms: 0,
    };
    let mut matched_total: u64 = 0;
    let mut lower: Option<Vec<String>> = None;
    loop {
        // The chunk's upper bound: its `chunk_rows`-th key, if a key follows it;
        // otherwise this is the last chunk and stays open above.
        let bound_rows = {
            let mut params: Vec<&(dyn ToSql + Sync)> = bound_params(lower.as_deref());
            params.push(&offset);
            client
                .query(&sql.boundary(lower.is_some()), &params)
                .await
                .map_err(db("finding a chunk boundary"))?
        };
        let upper = match bound_rows.as_slice() {
            [first, _] => {
                Some(key_texts(first, sql.key.len()).map_err(db("reading a chunk boundary"))?)
            }
            _ => None,
        };

        let (has_lower, has_upper) = (lower.is_some(), upper.is_some());
        let mut params = bound_params(lower.as_deref());
        params.extend(bound_params(upper.as_deref()));
        let counts = client
            .query_one(&sql.chunk(has_lower, has_upper), &params)
            .await
            .map_err(db("comparing a chunk"))?;
        let left_rows = count(&counts, 0).map_err(db("reading chunk counts"))?;
        let matched = count(&counts, 1).map_err(db("reading chunk counts"))?;
        let differing = count(&counts, 2).map_err(db("reading chunk counts"))?;
        verdict.chunks += 1;
        crate::step_progress::verify_chunk(left_rows);
        verdict.left_rows += left_rows;
        verdict.differing_rows += differing;
        matched_total += matched;
        tracing::debug!(
            chunk = verdict.chunks,
            left_rows,
            matched,
            differing,
            "chunk compared"
        );

        if differing > 0 {
            verdict.differing_chunks += 1;
            if verdict.ranges.len() < opts.max_ranges {
                verdict.ranges.push(ChunkDiff {
                    after: lower.as_deref().map(|k| sql.key_values(k)),
                    through: upper.as_deref().map(|k| sql.key_values(k)),
                    left_rows,
                    matched_rows: matched,
                    differing_rows: differing,
                });
            }
            let room = opts.max_rows.saturating_sub(verdict.rows.len());
            if room > 0 {
                let limit = i64::try_from(room).unwrap_or(i64::MAX);
                let mut drill_params = params.clone();
                drill_params.push(&limit);
                let rows = client
                    .query(&sql.drill(has_lower, has_upper), &drill_params)
                    .await
                    .map_err(db("naming the differing rows of a chunk"))?;
                for row in &rows {
                    verdict
                        .rows
                        .push(sql.row_diff(row).map_err(db("reading a differing row"))?);
                }
            }
        }

        match upper {
            Some(u) => lower = Some(u),
            None => break,
        }
    }

    let right_rows: i64 = client
        .query_one(&sql.right_count(), &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db("counting the right side"))?;
    verdict.right_rows = u64::try_from(right_rows).unwrap_or(0);
    // Each right row is matched at most once (see the module docs), so the
    // rest are rows the left side does not have.
    let extra = verdict.right_rows.saturating_sub(matched_total);
    if extra > 0 {
        verdict.differing_rows += extra;
        let room = opts.max_rows.saturating_sub(verdict.rows.len());
        if room > 0 {
            let limit = i64::try_from(room).unwrap_or(i64::MAX);
            let rows = client
                .query(&sql.extras(), &[&limit])
                .await
                .map_err(db("naming the extra rows of the right side"))?;
            for row in &rows {
                let key = key_texts(row, sql.key.len()).map_err(db("reading an extra row"))?;
                verdict.rows.push(RowDiff {
                    key: sql.key_values(&key),
                    kind: RowDiffKind::Extra,
                    orphaned: Vec::new(),
                });
            }
        }
    }

    verdict.equal = verdict.differing_rows == 0 && verdict.left_rows == verdict.right_rows;
    verdict.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        equal = verdict.equal,
        left_rows = verdict.left_rows,
        right_rows = verdict.right_rows,
        chunks = verdict.chunks,
        differing_rows = verdict.differing_rows,
        elapsed_ms = verdict.elapsed_ms,
        "table verified"
    );
    Ok(verdict)
}

fn bound_params(bound: Option<&[String]>) -> Vec<&(dyn ToSql + Sync)> {
    bound
        .unwrap_or_default()
        .iter()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect()
}

fn count(row: &Row, idx: usize) -> Result<u64, tokio_postgres::Error> {
    let n: i64 = row.try_get(idx)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The first `n` columns of `row`, all text and non-NULL (key values).
fn key_texts(row: &Row, n: usize) -> Result<Vec<String>, tokio_postgres::Error> {
    (0..n).map(|i| row.try_get::<_, String>(i)).collect()
}

/// One key column as the comparison sees it.
#[derive(Debug, Clone)]
struct KeyCol {
    /// Position in `TableSpec::columns`.
    pos: usize,
    name: String,
    /// Left-side type, for casting text bounds back.
    type_sql: String,
    reference: bool,
    /// The key index's collation (quoted), when known: ranges and their
    /// order then use it, so the index serves them.
    collation: Option<String>,
}

impl KeyCol {
    fn collate(&self) -> String {
        self.collation
            .as_deref()
            .map(|c| format!(" COLLATE {c}"))
            .unwrap_or_default()
    }
}

/// The SQL of one comparison: pure text generation, unit-tested below.
///
/// Column values travel through derived tables under positional aliases
/// (`v3` = left column 3, `t3` = its parent uuid, `w3` = right column 3), so
/// user identifiers appear only once, quoted, where they are read.
#[derive(Debug, Clone)]
struct CompareSql {
    left: String,
    right: String,
    parent: String,
    parent_key: String,
    parent_uuid: String,
    key: Vec<KeyCol>,
    /// (position, quoted name, is reference) of every column read.
    read: Vec<(usize, String, bool)>,
    /// (position, name, is reference) of the compared (non-generated) columns.
    data: Vec<(usize, String, bool)>,
}

impl CompareSql {
    fn new(
        spec: &TableSpec,
        parent: &ParentSpec,
        left: &QualifiedName,
        right: &QualifiedName,
    ) -> Result<Self, VerifyError> {
        if spec.key.is_empty() {
            return Err(VerifyError::NoKey {
                table: left.to_string(),
            });
        }
        let mut key = Vec::with_capacity(spec.key.len());
        for &pos in &spec.key {
            let col = spec.columns.get(pos).ok_or_else(|| VerifyError::BadSpec {
                table: left.to_string(),
                detail: format!(
                    "key position {pos} is beyond its {} columns",
                    spec.columns.len()
                ),
            })?;
            key.push(KeyCol {
                pos,
                name: col.name.clone(),
                type_sql: col.type_sql.clone(),
                reference: col.reference.is_some(),
                collation: None,
            });
        }
        let data: Vec<(usize, String, bool)> = spec
            .data_columns()
            .map(|(i, c)| (i, c.name.clone(), c.reference.is_some()))
            .collect();
        let mut read: Vec<(usize, String, bool)> = spec
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.generated || spec.key.contains(i))
            .map(|(i, c)| (i, quote_ident(&c.name), c.reference.is_some()))
            .collect();
        read.sort_by_key(|(i, _, _)| *i);
        Ok(CompareSql {
            left: left.quoted(),
            right: right.quoted(),
            parent: parent.table.quoted(),
            parent_key: quote_ident(&parent.key_column),
            parent_uuid: quote_ident(&parent.uuid_column),
            key,
            read,
            data,
        })
    }

    /// Compare and order the key under the key index's collations (`index`
    /// lists the index's columns, [`crate::copy::key_columns`]); ignored
    /// unless it names the same columns in the same order.
    fn use_index_collations(&mut self, index: &[crate::copy::KeyColumn]) {
        let same = index.len() == self.key.len()
            && index.iter().zip(&self.key).all(|(i, k)| i.name == k.name);
        if same {
            for (k, i) in self.key.iter_mut().zip(index) {
                k.collation = i.collation.clone();
            }
        }
    }

    /// `(l."a", l."b")`
    fn left_key_tuple(&self) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("l.{}", quote_ident(&k.name)))
            .collect();
        format!("({})", cols.join(", "))
    }

    /// `($n::text::type, …)` starting at parameter `first`.
    fn param_tuple(&self, first: usize) -> String {
        let vals: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::text::{}{}", first + i, k.type_sql, k.collate()))
            .collect();
        format!("({})", vals.join(", "))
    }

    /// The WHERE clause of a range `(lower, upper]` over the left key, with
    /// lower bound parameters first.
    fn range(&self, lower: bool, upper: bool) -> String {
        let tuple = self.left_key_tuple();
        let mut conds = Vec::new();
        let mut next = 1;
        if lower {
            conds.push(format!("{tuple} > {}", self.param_tuple(next)));
            next += self.key.len();
        }
        if upper {
            conds.push(format!("{tuple} <= {}", self.param_tuple(next)));
        }
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    }

    fn order_by_left_key(&self) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("l.{}{}", quote_ident(&k.name), k.collate()))
            .collect();
        cols.join(", ")
    }

    /// The keys after `lower` (params first), skipping `offset` (last param):
    /// two rows back means a chunk ends at the first and another follows.
    fn boundary(&self, lower: bool) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("l.{}::text", quote_ident(&k.name)))
            .collect();
        let offset_param = if lower { self.key.len() + 1 } else { 1 };
        format!(
            "SELECT {} FROM {} l{} ORDER BY {} LIMIT 2 OFFSET ${offset_param}::int8",
            cols.join(", "),
            self.left,
            self.range(lower, false),
            self.order_by_left_key(),
        )
    }

    /// The per-row comparison of one range: left rows `s` (with parent uuids
    /// `t<i>`), each joined to the right row `r` with the translated key.
    fn compare_from(&self, lower: bool, upper: bool) -> String {
        let mut inner = Vec::new();
        for (i, q, reference) in &self.read {
            inner.push(format!("l.{q} AS v{i}"));
            if *reference {
                inner.push(format!(
                    "(SELECT p.{} FROM {} p WHERE p.{} = l.{q}) AS t{i}",
                    self.parent_uuid, self.parent, self.parent_key
                ));
            }
        }
        let mut outer = vec!["true AS found".to_string()];
        for (i, name, _) in &self.data {
            outer.push(format!("r.{} AS w{i}", quote_ident(name)));
        }
        let probe: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                let side = if k.reference { "t" } else { "v" };
                format!("r.{} = s.{side}{}", quote_ident(&k.name), k.pos)
            })
            .collect();
        format!(
            "FROM (SELECT {} FROM {} l{} OFFSET 0) s \
             LEFT JOIN LATERAL (SELECT {} FROM {} r WHERE {} OFFSET 0) r ON true",
            inner.join(", "),
            self.left,
            self.range(lower, upper),
            outer.join(", "),
            self.right,
            probe.join(" AND "),
        )
    }

    /// Left value of data column `i` in the right side's terms.
    fn left_value(&self, i: usize, reference: bool) -> String {
        if reference {
            format!("s.t{i}")
        } else {
            format!("s.v{i}")
        }
    }

    /// `(s.v2 IS NOT NULL AND s.t2 IS NULL)` per reference column read.
    fn orphan_terms(&self) -> Vec<String> {
        self.read
            .iter()
            .filter(|(_, _, r)| *r)
            .map(|(i, _, _)| format!("(s.v{i} IS NOT NULL AND s.t{i} IS NULL)"))
            .collect()
    }

    /// True for a left row that is missing, holds an orphan, or differs.
    fn differs(&self) -> String {
        let lrow: Vec<String> = self
            .data
            .iter()
            .map(|(i, _, r)| self.left_value(*i, *r))
            .collect();
        let rrow: Vec<String> = self
            .data
            .iter()
            .map(|(i, _, _)| format!("r.w{i}"))
            .collect();
        let mut terms = vec!["r.found IS NULL".to_string()];
        terms.extend(self.orphan_terms());
        terms.push(format!(
            "NOT record_image_eq(ROW({}), ROW({}))",
            lrow.join(", "),
            rrow.join(", ")
        ));
        format!("({})", terms.join(" OR "))
    }

    /// Left rows, matched right rows, differing left rows of one range.
    fn chunk(&self, lower: bool, upper: bool) -> String {
        format!(
            "SELECT count(*), count(r.found), count(*) FILTER (WHERE {}) {}",
            self.differs(),
            self.compare_from(lower, upper)
        )
    }

    /// The differing rows of one range in key order, capped by the last
    /// parameter: key texts, missing flag, per-column and per-reference flags.
    fn drill(&self, lower: bool, upper: bool) -> String {
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("s.v{}::text", k.pos))
            .collect();
        let changed: Vec<String> = self
            .data
            .iter()
            .map(|(i, _, r)| {
                let differs = format!(
                    "NOT record_image_eq(ROW({}), ROW(r.w{i}))",
                    self.left_value(*i, *r)
                );
                // An orphan translates to NULL, which may even equal the
                // right value; it is a difference in that column all the same.
                if *r {
                    format!("({differs} OR (s.v{i} IS NOT NULL AND s.t{i} IS NULL))")
                } else {
                    differs
                }
            })
            .collect();
        let mut orphans = self.orphan_terms();
        let order: Vec<String> = self.key.iter().map(|k| format!("s.v{}", k.pos)).collect();
        let nparams = self.key.len() * (usize::from(lower) + usize::from(upper)) + 1;
        // Empty ARRAY[] has no type; an always-false term keeps the shape.
        if orphans.is_empty() {
            orphans.push("false".to_string());
        }
        let changed = if changed.is_empty() {
            "ARRAY[]::bool[]".to_string()
        } else {
            format!("ARRAY[{}]", changed.join(", "))
        };
        format!(
            "SELECT {}, r.found IS NULL, {changed}, ARRAY[{}] {} WHERE {} ORDER BY {} LIMIT ${nparams}::int8",
            keys.join(", "),
            orphans.join(", "),
            self.compare_from(lower, upper),
            self.differs(),
            order.join(", "),
        )
    }

    /// Decode one row of [`Self::drill`].
    fn row_diff(&self, row: &Row) -> Result<RowDiff, tokio_postgres::Error> {
        let n = self.key.len();
        let key = key_texts(row, n)?;
        let missing: bool = row.try_get(n)?;
        let changed: Vec<bool> = row.try_get(n + 1)?;
        let orphan_flags: Vec<bool> = row.try_get(n + 2)?;
        let orphaned = self
            .read
            .iter()
            .filter(|(_, _, r)| *r)
            .zip(orphan_flags)
            .filter(|(_, flag)| *flag)
            .filter_map(|((i, _, _), _)| self.name_of(*i))
            .collect();
        let kind = if missing {
            RowDiffKind::Missing
        } else {
            RowDiffKind::Changed {
                columns: self
                    .data
                    .iter()
                    .zip(changed)
                    .filter(|(_, flag)| *flag)
                    .map(|((_, name, _), _)| name.clone())
                    .collect(),
            }
        };
        Ok(RowDiff {
            key: self.key_values(&key),
            kind,
            orphaned,
        })
    }

    /// Unquoted name of a read column (data or key).
    fn name_of(&self, pos: usize) -> Option<String> {
        self.data
            .iter()
            .find(|(i, _, _)| *i == pos)
            .map(|(_, n, _)| n.clone())
            .or_else(|| {
                self.key
                    .iter()
                    .find(|k| k.pos == pos)
                    .map(|k| k.name.clone())
            })
    }

    fn key_values(&self, values: &[String]) -> Vec<KeyValue> {
        self.key
            .iter()
            .zip(values)
            .map(|(k, v)| KeyValue {
                column: k.name.clone(),
                value: v.clone(),
            })
            .collect()
    }

    fn right_count(&self) -> String {
        format!("SELECT count(*) FROM {}", self.right)
    }

    /// Right rows no left row has, in the right key's order, capped by `$1`.
    /// Reference key values are shown as the parent's integer where one exists.
    fn extras(&self) -> String {
        let back = |k: &KeyCol| {
            format!(
                "(SELECT p.{} FROM {} p WHERE p.{} = r.{})",
                self.parent_key,
                self.parent,
                self.parent_uuid,
                quote_ident(&k.name)
            )
        };
        let shown: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                let q = quote_ident(&k.name);
                if k.reference {
                    format!("coalesce({}::text, r.{q}::text)", back(k))
                } else {
                    format!("r.{q}::text")
                }
            })
            .collect();
        let matches: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                let q = quote_ident(&k.name);
                if k.reference {
                    format!("l.{q} = {}", back(k))
                } else {
                    format!("l.{q} = r.{q}")
                }
            })
            .collect();
        let order: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("r.{}", quote_ident(&k.name)))
            .collect();
        format!(
            "SELECT {} FROM {} r WHERE NOT EXISTS (SELECT 1 FROM {} l WHERE {}) ORDER BY {} LIMIT $1::int8",
            shown.join(", "),
            self.right,
            self.left,
            matches.join(" AND "),
            order.join(", "),
        )
    }
}

fn fmt_key(key: &[KeyValue]) -> String {
    key.iter()
        .map(|k| format!("{}={}", k.column, k.value))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for TableVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.equal {
            return write!(
                f,
                "{} = {}: equal, {} rows in {} chunk{} ({} ms)",
                self.left,
                self.right,
                self.left_rows,
                self.chunks,
                if self.chunks == 1 { "" } else { "s" },
                self.elapsed_ms
            );
        }
        writeln!(
            f,
            "{} ≠ {}: DIFFERENT, {} vs {} rows, {} differing row{}, {} of {} chunks differ ({} ms)",
            self.left,
            self.right,
            self.left_rows,
            self.right_rows,
            self.differing_rows,
            if self.differing_rows == 1 { "" } else { "s" },
            self.differing_chunks,
            self.chunks,
            self.elapsed_ms
        )?;
        for r in &self.ranges {
            let after = r.after.as_deref().map_or("the first key".to_string(), |k| {
                format!("after ({})", fmt_key(k))
            });
            let through = r
                .through
                .as_deref()
                .map_or("the last key".to_string(), |k| {
                    format!("through ({})", fmt_key(k))
                });
            writeln!(
                f,
                "  keys {after} {through}: {} rows, {} found on the right, {} differ",
                r.left_rows, r.matched_rows, r.differing_rows
            )?;
        }
        for row in &self.rows {
            let what = match &row.kind {
                RowDiffKind::Missing => format!("missing from {}", self.right),
                RowDiffKind::Extra => format!("only in {}", self.right),
                RowDiffKind::Changed { columns } => format!("differs in {}", columns.join(", ")),
            };
            write!(f, "  row ({}): {what}", fmt_key(&row.key))?;
            if !row.orphaned.is_empty() {
                write!(
                    f,
                    "; orphaned reference in {} (no parent row)",
                    row.orphaned.join(", ")
                )?;
            }
            writeln!(f)?;
        }
        let listed = u64::try_from(self.rows.len()).unwrap_or(u64::MAX);
        if self.differing_rows > listed {
            writeln!(
                f,
                "  … {} more differing rows not listed",
                self.differing_rows - listed
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::model::{ColumnSpec, IntKind};

    fn col(name: &str, type_sql: &str, reference: bool) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            attnum: 0,
            type_sql: type_sql.into(),
            type_oid: 0,
            reference: reference.then_some(IntKind::Int4),
            not_null: true,
            generated: false,
            identity: None,
        }
    }

    fn spec(columns: Vec<ColumnSpec>, key: Vec<usize>) -> TableSpec {
        TableSpec {
            source: QualifiedName::new("public", "t"),
            oid: 1,
            shadow: QualifiedName::new("public", "t_new"),
            columns,
            key,
        }
    }

    fn parent() -> ParentSpec {
        ParentSpec {
            table: QualifiedName::new("public", "users"),
            oid: 2,
            key_column: "id".into(),
            key_kind: IntKind::Int8,
            uuid_column: "uuid_id".into(),
        }
    }

    fn sql(s: &TableSpec) -> CompareSql {
        CompareSql::new(
            s,
            &parent(),
            &QualifiedName::new("public", "t"),
            &QualifiedName::new("public", "t_new"),
        )
        .unwrap()
    }

    #[test]
    fn probes_the_right_side_by_the_translated_key() {
        let s = spec(
            vec![
                col("user_id", "integer", true),
                col("role_id", "integer", false),
                col("note", "text", false),
            ],
            vec![0, 1],
        );
        let q = sql(&s).chunk(true, true);
        assert!(q.contains(
            "WHERE (l.\"user_id\", l.\"role_id\") > ($1::text::integer, $2::text::integer) \
             AND (l.\"user_id\", l.\"role_id\") <= ($3::text::integer, $4::text::integer)"
        ));
        assert!(q.contains("(SELECT p.\"uuid_id\" FROM \"public\".\"users\" p WHERE p.\"id\" = l.\"user_id\") AS t0"));
        assert!(q.contains("WHERE r.\"user_id\" = s.t0 AND r.\"role_id\" = s.v1 OFFSET 0"));
        assert!(q.contains("record_image_eq(ROW(s.t0, s.v1, s.v2), ROW(r.w0, r.w1, r.w2))"));
        assert!(q.contains("(s.v0 IS NOT NULL AND s.t0 IS NULL)"));
    }

    #[test]
    fn parameters_are_numbered_by_the_bounds_present() {
        let s = spec(vec![col("id", "bigint", false)], vec![0]);
        let c = sql(&s);
        assert!(c
            .chunk(false, true)
            .contains("(l.\"id\") <= ($1::text::bigint)"));
        assert!(!c.chunk(false, false).contains("$1"));
        assert!(c.boundary(false).ends_with("LIMIT 2 OFFSET $1::int8"));
        assert!(c.boundary(true).ends_with("LIMIT 2 OFFSET $2::int8"));
        let d = c.drill(true, true);
        assert!(d.ends_with("ORDER BY s.v0 LIMIT $3::int8"), "{d}");
        assert!(d.contains(" ON true WHERE (r.found IS NULL"), "{d}");
        // No reference columns: the orphan flags are a constant.
        assert!(d.contains("ARRAY[false]"));
    }

    #[test]
    fn generated_columns_are_read_only_as_keys() {
        let mut g = col("total", "numeric", false);
        g.generated = true;
        let s = spec(vec![col("id", "bigint", false), g], vec![0]);
        let q = sql(&s).chunk(false, false);
        assert!(!q.contains("total"));
        assert!(q.contains("record_image_eq(ROW(s.v0), ROW(r.w0))"));
    }

    #[test]
    fn text_and_uuid_keys_range_under_the_index_collation() {
        let s = spec(
            vec![
                col("tenant", "text", false),
                col("id", "uuid", false),
                col("user_id", "integer", true),
            ],
            vec![0, 1],
        );
        let mut c = sql(&s);
        let kc = |name: &str, collation: Option<&str>| crate::copy::KeyColumn {
            name: name.into(),
            type_sql: "ignored".into(),
            collation: collation.map(str::to_string),
        };
        // Another index's columns: ignored.
        c.use_index_collations(&[kc("id", None), kc("tenant", None)]);
        assert!(!c.boundary(false).contains("COLLATE"));
        c.use_index_collations(&[kc("tenant", Some("pg_catalog.\"C\"")), kc("id", None)]);
        assert_eq!(
            c.range(true, true),
            " WHERE (l.\"tenant\", l.\"id\") > ($1::text::text COLLATE pg_catalog.\"C\", $2::text::uuid) \
             AND (l.\"tenant\", l.\"id\") <= ($3::text::text COLLATE pg_catalog.\"C\", $4::text::uuid)"
        );
        assert!(c
            .boundary(true)
            .contains("ORDER BY l.\"tenant\" COLLATE pg_catalog.\"C\", l.\"id\" LIMIT 2"));
    }

    #[test]
    fn identifiers_are_quoted() {
        let s = spec(
            vec![
                col("Odd \"Id\"", "bigint", false),
                col("User Ref", "integer", true),
            ],
            vec![0],
        );
        let c = CompareSql::new(
            &s,
            &parent(),
            &QualifiedName::new("My Schema", "T"),
            &QualifiedName::new("My Schema", "T new"),
        )
        .unwrap();
        let q = c.chunk(false, false);
        assert!(q.contains("l.\"Odd \"\"Id\"\"\" AS v0"));
        assert!(q.contains("FROM \"My Schema\".\"T new\" r"));
        assert!(c
            .extras()
            .contains("l.\"Odd \"\"Id\"\"\" = r.\"Odd \"\"Id\"\"\""));
    }

    #[test]
    fn extras_translate_reference_keys_back() {
        let s = spec(
            vec![
                col("user_id", "integer", true),
                col("role_id", "integer", false),
            ],
            vec![0, 1],
        );
        let e = sql(&s).extras();
        assert!(e.contains("l.\"user_id\" = (SELECT p.\"id\" FROM \"public\".\"users\" p WHERE p.\"uuid_id\" = r.\"user_id\")"));
        assert!(e.contains("AND l.\"role_id\" = r.\"role_id\""));
        assert!(e.ends_with("ORDER BY r.\"user_id\", r.\"role_id\" LIMIT $1::int8"));
    }

    #[test]
    fn refuses_a_table_without_key_or_with_a_bad_position() {
        let s = spec(vec![col("id", "bigint", false)], vec![]);
        let q = QualifiedName::new("public", "t");
        assert!(matches!(
            CompareSql::new(&s, &parent(), &q, &q),
            Err(VerifyError::NoKey { .. })
        ));
        let s = spec(vec![col("id", "bigint", false)], vec![3]);
        assert!(matches!(
            CompareSql::new(&s, &parent(), &q, &q),
            Err(VerifyError::BadSpec { .. })
        ));
    }

    #[test]
    fn displays_differences_by_key() {
        let v = TableVerdict {
            left: QualifiedName::new("public", "orders"),
            right: QualifiedName::new("public", "orders_new"),
            equal: false,
            left_rows: 3,
            right_rows: 3,
            chunks: 1,
            differing_chunks: 1,
            differing_rows: 3,
            ranges: vec![],
            rows: vec![
                RowDiff {
                    key: vec![KeyValue {
                        column: "id".into(),
                        value: "2".into(),
                    }],
                    kind: RowDiffKind::Changed {
                        columns: vec!["user_id".into()],
                    },
                    orphaned: vec![],
                },
                RowDiff {
                    key: vec![KeyValue {
                        column: "id".into(),
                        value: "3".into(),
                    }],
                    kind: RowDiffKind::Missing,
                    orphaned: vec!["user_id".into()],
                },
            ],
            elapsed_ms: 5,
        };
        let text = v.to_string();
        assert!(text.contains("row (id=2): differs in user_id"), "{text}");
        assert!(
            text.contains(
                "row (id=3): missing from public.orders_new; orphaned reference in user_id"
            ),
            "{text}"
        );
        assert!(text.contains("1 more differing rows not listed"), "{text}");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["rows"][0]["kind"], "changed");
        assert_eq!(json["rows"][0]["columns"][0], "user_id");
        assert_eq!(json["rows"][1]["orphaned"][0], "user_id");
    }
}
