//! The snapshot copy: binary `COPY … TO STDOUT` from the source under the
//! slot's snapshot, reference columns translated in Rust, binary
//! `COPY … FROM STDIN` into the shadow.
//!
//! # Correctness
//!
//! * **Same snapshot.** The caller hands in a source session already inside
//!   the `REPEATABLE READ` transaction that imported the slot's snapshot, and
//!   an [`IdMap`] loaded under that same snapshot. Every row the copy reads was
//!   committed before the slot's consistent point; every later change comes
//!   from the stream. So nothing is copied twice or missed, and every
//!   reference a copied row holds is either in the map or an orphan.
//! * **No silent NULL.** A reference whose value is not in the map stops the
//!   copy with [`CopyError::MissingParent`], naming table, column and value. A
//!   NULL reference stays NULL.
//! * **Exact bytes.** Non-reference columns pass through byte for byte: the
//!   shadow has the same types, so the binary representations agree (no text
//!   round trip, no DateStyle or float-precision traps). Generated columns are
//!   left out of both sides; the shadow computes its own.
//! * `FROM ONLY`: an inheritance child or partition is not the table.
//!
//! # Shadow transactions
//!
//! The shadow is written in batches, each its own `COPY … FROM STDIN`
//! statement and so its own transaction, cut at tuple boundaries of the one
//! source stream (see [`CopyOptions::batch_rows`], [`CopyOptions::batch_bytes`]).
//! Why: the walsender decodes the shadow's WAL too (it decodes the whole
//! database and only pgoutput filters by publication). One giant transaction
//! would be held in its reorder buffer until commit, spill to disk beyond
//! `logical_decoding_work_mem`, and then stall every later transaction in the
//! stream while it is replayed and discarded. Batches of moderate size stay in
//! memory and flow through. The price: a failed copy leaves the committed
//! batches in the shadow, so a retry must start from an empty shadow (the
//! snapshot is gone anyway; the caller truncates or recreates the shadow).
//!
//! # What was measured, and kept or rejected
//!
//! `benches/copy.rs`, 3M rows / 200k users, PostgreSQL 15, 2 shared cores
//! (CPU seconds per process, steadier than wall time on a loaded machine):
//!
//! * **Kept: the row key is built after the copy**
//!   ([`crate::ddl::create_shadow_for_copy`], then
//!   [`crate::ddl::key_after_copy`]). Maintaining the primary key row by row
//!   was the target backend's largest cost: server CPU during the copy fell
//!   from 8.3–10.1 s to 3.4–5.0 s, WAL written by the copy from 532 to 295 MB,
//!   and the stream's catch-up decode from 1.4–2.6 s to 0.7–1.7 s; the sorted
//!   key build afterwards is the same work the in-server rewrite does.
//! * **Kept: batches of 100k rows / 16 MiB.** One transaction, or 1M-row /
//!   128 MiB batches, cost the same to copy but 7–16 s to decode afterwards
//!   (the transaction outgrows `logical_decoding_work_mem`, spills to disk and
//!   is replayed only to be filtered out) against 1.3–2.6 s.
//! * **Rejected: an UNLOGGED shadow made `SET LOGGED` after the copy.** The
//!   copy itself writes no WAL and its server CPU drops by about a fifth, but
//!   `SET LOGGED` (PostgreSQL 15) rewrites the table tuple by tuple, each a
//!   WAL-logged insert, all in one transaction: 4–15 s for the statement, the
//!   same WAL volume as a logged copy (578 MB), and 9–14 s of catch-up decode
//!   (5–6 CPU-s) because the walsender must decode and spill that one giant
//!   transaction before discarding it. Worse on every count but the length
//!   of the snapshot.
//! * **Rejected: `COPY … FREEZE`.** It needs the shadow created or truncated
//!   in the same transaction as the COPY, hence the whole copy in one
//!   transaction (the decode cost above); with an UNLOGGED shadow that cost
//!   goes away but `SET LOGGED` re-inserts every tuple with a new xmin, so
//!   the frozen state is lost anyway. With `wal_level=logical` it saves no WAL.
//! * **Kept: the indexes built at the same time, on sessions of their own**
//!   ([`build_concurrently`], [`crate::ddl::after_copy`]; the key's index
//!   too, attached with `PRIMARY KEY USING INDEX` afterwards, since
//!   `ADD PRIMARY KEY` takes an `ACCESS EXCLUSIVE` lock that would wait for
//!   the others). The same 3M-row shadow (uuid reference) on a server of its
//!   own (already vacuumed), load 3.8–5.2 on the 2 shared cores: key + two
//!   indexes one after the other 4.2–5.9 s; all three at once 3.3–4.4 s
//!   (−20 to −25 %); the key first, then the two others at once,
//!   4.6–5.5 s. In the copy bench (`PGREKEY_BENCH_SEQUENTIAL=1`: both ways
//!   in the same rounds, load 3.0–5.5) the gain was smaller: index phase
//!   2.7–3.6 s against 3.1–4.4 s, the whole copy phase 0.89 / 0.96 (best)
//!   and 0.91 / 0.95 (median) of the sequential one for `events` /
//!   `events_uuid`, with the same server CPU. What completes the table is unchanged:
//!   the key attached, the constraints and `synced_lsn` in one transaction
//!   after every build committed (`rewrite::finish_table`); a resume drops
//!   the indexes an interrupted table kept before copying it again.
//! * **Not kept: `maintenance_work_mem` and
//!   `max_parallel_maintenance_workers` per session.** 64 MB (the default)
//!   against 256 and 512 MB, and 0, 1 or 2 workers, one after the other or
//!   at once: every difference within the noise (±10 %) on 2 cores. The
//!   build sessions run with the server's settings.
//! * **Not kept: the reader running ahead of the writer.** The copy's loop
//!   reads, rewrites and writes in turn, so while it waits for a batch's
//!   commit the source is not read (both driver channels hold one message;
//!   the sockets' buffers are all the slack there is). Split into a reading
//!   half and a writing half joined through a channel of 32 pieces (8 MiB),
//!   the same rounds against the reader held to one piece ahead (2026-12-05,
//!   3 M rows, load 1.4–2.6): copy part 0.96 best, 1.02 and 0.95 median
//!   (`events`, `events_uuid`), whole copy phase 0.95 / 1.00 best — within
//!   the noise. The copy used 1.65–1.85 of the 2 cores already (source
//!   1.2, target 1.9, tool 1.4–1.6 CPU-s in 2.4–2.9 s), so there was little
//!   idle time to take back.
//! * **Tool side:** the rewriter passes a tuple that arrived whole (the server
//!   sends one row per CopyData message) in one pass, copying each run of
//!   pass-through fields with one `extend_from_slice`; the per-field state
//!   machine only handles tuples split across chunks. Tool CPU went from
//!   2.5–3.0 s to 2.2–2.3 s (noisy). The [`IdMap`] lookup (an uncontended
//!   DashMap read, tens of ns) is a small share of that; a lock-free frozen
//!   copy of the map was not worth its memory or build time.
//!
//! # Streaming and memory
//!
//! The source stream is consumed one CopyData message at a time (the server
//! sends one per row; the rewriter accepts any chunking). The rewriter keeps at
//! most 19 bytes of a split fixed-size item; field bodies pass straight
//! through. Output is flushed to the target every [`FLUSH_BYTES`]. Both driver
//! channels are bounded, so a slow target back-pressures the source. Memory is
//! bounded by the largest row (the driver holds one whole CopyData message).
//!
//! # Order
//!
//! Rows are read in the source's physical order by default
//! ([`CopyOptions::order_by_key`] off): a sort of the whole table under the
//! open snapshot costs more than it saved in primary-key maintenance on the
//! shadow (`benches/copy.rs`, `PGREKEY_BENCH_VARIANTS=1`: 1M rows, the ordered
//! copy was 10–50% slower end to end on 2 cores), and with the key built after
//! the copy there is no key maintenance left to save. The same runs showed no gain
//! from [`copy_table_parallel`] on 2 shared cores (the two server backends and
//! the tool already keep both busy) and a loss from one single transaction,
//! so batching costs nothing measurable.
//!
//! # Parallel ranges over any key
//!
//! [`copy_table_parallel`] splits a table by its row identity — the primary
//! key, else the replica identity index — whatever the key's types: integers,
//! `uuid`, `text`, timestamps, `numeric`, composite keys whatever their first
//! column. Nothing about the split assumes an integer.
//!
//! * **Boundaries from the data, under the snapshot.** The first source
//!   session (already inside the slot's snapshot) reads a block sample of
//!   the key, `TABLESAMPLE SYSTEM (p)`, sorted by the server
//!   ([`sample_percent`] sizes it: about [`SAMPLE_ROWS_PER_RANGE`] keys per
//!   range, at least [`SAMPLE_BLOCKS_PER_RANGE`] blocks per range). The
//!   boundaries are the sample's quantiles ([`pick_boundaries`]), so a skewed
//!   key (ids 1–1000 then 10¹², a tenant holding 90 % of a composite key)
//!   splits by rows, not by value width. `pg_stats.histogram_bounds` was not
//!   used: it describes the last `ANALYZE`, not the snapshot, covers only the
//!   first column of a composite key, and is hidden from a role that cannot
//!   read every column. The sample is cheap (a few hundred blocks of a large
//!   table) and is what the snapshot holds.
//! * **Values bound, never interpolated.** A boundary travels as the text the
//!   server printed for it (pg-rekey's sessions pin DateStyle, TimeZone and
//!   `extra_float_digits`, so the text is exact). `COPY` takes no bind
//!   parameters, so each range's bounds are bound to `set_config(name, $1,
//!   true)` (transaction-local settings of the copy session) and the `COPY`
//!   query reads them back with an explicit cast to the column's type:
//!   `CAST(current_setting('pgrekey.copy_lo_1') AS uuid)`. No value is ever
//!   part of a statement's text.
//! * **Every row in exactly one range.** Ranges are half-open:
//!   `R₀ = {k < b₁}`, `Rᵢ = {bᵢ ≤ k < bᵢ₊₁}`, `Rₙ = {k ≥ bₙ}`, where `k` is the
//!   key compared as a row, `(a, b) >= (x, y)` (lexicographic, the order the
//!   key's btree index has). Key columns are never NULL (primary key or
//!   replica identity index), and a btree operator class orders its type
//!   totally, so for each `k` and `bᵢ` exactly one of `k < bᵢ`, `k ≥ bᵢ`
//!   holds. If `b₁ < b₂ < … < bₙ` in that same order, the boundaries `≤ k` are
//!   a prefix `b₁…bᵢ`, and `k` lies in `Rᵢ` and no other range. Two things
//!   make the boundaries increase in *exactly the order the comparisons use*:
//!   (1) each comparison and the sample's `ORDER BY` carry the key index's
//!   own collation explicitly (`COLLATE`), so a text key is ordered the same
//!   way by the sort that picked the boundaries, by the range conditions and
//!   by the index that serves them — an index built with `COLLATE "C"` on a
//!   column of another collation included; nondeterministic collations are a
//!   total preorder, which is enough (equal keys fall on the same side of
//!   every boundary); (2) after parsing the text back, the server is asked
//!   `(b_i) < (b_i+1)` for each neighbour pair, and a boundary that is not
//!   strictly greater than the one before is dropped (merging two ranges —
//!   never an overlap, never a gap), so even a type whose text form did not
//!   round-trip exactly could only make ranges fewer.
//! * **No split possible: one stream.** A table smaller than
//!   [`CopyOptions::min_split_pages`], a sample with too few keys, a key
//!   type without a default btree ordering (the sample runs under a
//!   savepoint, so its failure leaves the snapshot transaction usable), or no
//!   key at all: the table is copied whole by one session. A copy never
//!   fails for want of an integer key.
//! * **Measured** (`benches/copy.rs`, 1M rows, 2 shared cores, load 7–9):
//!   the same rows keyed by a random `uuid` copy in 6.15 s in one stream and
//!   6.88 s with two sessions over sampled ranges (`bigint` key: 4.11 s and
//!   4.38 s; the in-server rewrite 7.34 s and 4.75 s). A range of a random
//!   uuid key is scattered over the whole heap; the planner, which evaluates
//!   the stable `current_setting` bounds when it estimates, reads it with a
//!   sequential scan and a filter (checked with `EXPLAIN`), so each session
//!   reads every block: 1.1 CPU-s on the
//!   source against 0.4 s for one stream. Where the key follows the heap
//!   (serial ids, time-ordered keys) the ranges cost little extra (0.55 s).
//! * **Sessions pull ranges.** There are [`CopyOptions::ranges_per_session`]
//!   ranges per session; each session takes the next range when it finishes
//!   one, so a range with wider rows does not leave the other sessions idle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::{Client, CopyInSink};
use tracing::Instrument;

use crate::copy_format::Rewriter;
pub use crate::copy_format::{CopyError, RewriteError};
use crate::idmap::IdMap;
use crate::pg::quote_ident;
use crate::plan::model::{IntKind, TableSpec};

pub use crate::copy_format::{HEADER, SIGNATURE, TRAILER};

/// Output is handed to the target connection once this many bytes are ready.
pub const FLUSH_BYTES: usize = 256 * 1024;

/// Shared count of rows copied into shadows (committed), for `status` and logs.
/// Cloning shares the counter.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    /// A counter at zero.
    pub fn new() -> Progress {
        Progress::default()
    }
    /// Rows copied so far.
    pub fn rows(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Add `n` copied rows.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Tuning for [`copy_table_with`].
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Commit the shadow after about this many rows (0: no row limit).
    pub batch_rows: u64,
    /// Commit the shadow after about this many bytes of COPY data (0: no limit).
    pub batch_bytes: u64,
    /// Read the source in primary-key order (`ORDER BY` the key columns).
    pub order_by_key: bool,
    /// The copy throttle, waited on before the first batch and after each
    /// committed batch (never per row or per chunk: the hot loop has no
    /// extra await). While it pauses, the source's COPY stream simply stops
    /// being read (the server blocks on its socket) and no shadow transaction
    /// is open. `None`: never throttled.
    pub throttle: Option<crate::throttle::Throttle>,
    /// [`copy_table_parallel`] copies a table smaller than this many blocks
    /// (at the copy's start) in one stream: splitting it costs more than it
    /// saves. 0: always try to split.
    pub min_split_pages: u64,
    /// [`copy_table_parallel`] cuts a table into this many key ranges per
    /// session (at least 1); sessions take the next range as they finish one.
    pub ranges_per_session: usize,
    /// At most this many sessions build a copied table's indexes at the same
    /// time ([`build_concurrently`]; at least 1).
    pub build_sessions: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        // About 16 MiB keeps a batch's decoded changes well inside the default
        // 64 MB logical_decoding_work_mem even with per-change overhead.
        CopyOptions {
            batch_rows: 100_000,
            batch_bytes: 16 * 1024 * 1024,
            order_by_key: false,
            throttle: None,
            // 8 MiB: below that one stream copies the table in well under a second.
            min_split_pages: 1024,
            ranges_per_session: 1,
            // Three index builds at once were 20–25 % faster than one after
            // the other on 2 shared cores (module docs, "Index builds").
            build_sessions: 4,
        }
    }
}

/// The SQL both ends of a copy run, and the rewriter layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// `COPY (SELECT … FROM ONLY source …) TO STDOUT (FORMAT binary)`.
    pub copy_out: String,
    /// `COPY shadow (…) FROM STDIN (FORMAT binary)`.
    pub copy_in: String,
    /// Rewriter layout, one entry per copied column.
    pub layout: Vec<Option<IntKind>>,
    /// Copied column names, in order.
    pub columns: Vec<String>,
}

impl CopyPlan {
    /// Build the statements for `spec`. `range` is a condition on the key
    /// ([`range_condition`]) added as the `WHERE` clause, used by
    /// [`copy_table_parallel`].
    pub fn new(
        spec: &TableSpec,
        order_by_key: bool,
        range: Option<&str>,
    ) -> Result<CopyPlan, CopyError> {
        let cols: Vec<(usize, &crate::plan::model::ColumnSpec)> = spec.data_columns().collect();
        if cols.is_empty() {
            return Err(CopyError::Spec {
                table: spec.source.to_string(),
                reason: "the table has no columns to copy".into(),
            });
        }
        let list = cols
            .iter()
            .map(|(_, c)| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let key_cols = spec
            .key
            .iter()
            .map(|&i| {
                spec.columns
                    .get(i)
                    .map(|c| quote_ident(&c.name))
                    .ok_or_else(|| CopyError::Spec {
                        table: spec.source.to_string(),
                        reason: format!("key position {i} is not a column"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut select = format!("SELECT {list} FROM ONLY {}", spec.source.quoted());
        let range = range.filter(|r| !r.is_empty());
        if let Some(cond) = range {
            select.push_str(" WHERE ");
            select.push_str(cond);
        }
        if order_by_key && !key_cols.is_empty() {
            select.push_str(" ORDER BY ");
            select.push_str(&key_cols.join(", "));
        }
        // Without a range or an order, the table form of COPY skips the
        // executor's projection; like `FROM ONLY`, it never reads child tables.
        let copy_out = if range.is_none() && !order_by_key {
            format!(
                "COPY {} ({list}) TO STDOUT (FORMAT binary)",
                spec.source.quoted()
            )
        } else {
            format!("COPY ({select}) TO STDOUT (FORMAT binary)")
        };
        Ok(CopyPlan {
            copy_out,
            copy_in: format!(
                "COPY {} ({list}) FROM STDIN (FORMAT binary)",
                spec.shadow.quoted()
            ),
            layout: cols.iter().map(|(_, c)| c.reference).collect(),
            columns: cols.iter().map(|(_, c)| c.name.clone()).collect(),
        })
    }
}

/// Sample keys wanted per range (see the module docs, "Parallel ranges").
pub const SAMPLE_ROWS_PER_RANGE: f64 = 1000.0;

/// Fewest sampled blocks per range: a block sample of few blocks follows the
/// physical layout more than the key's distribution.
pub const SAMPLE_BLOCKS_PER_RANGE: f64 = 32.0;

/// One key column as a range comparison needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// Column name, unquoted.
    pub name: String,
    /// The column's type without modifier (`format_type(atttypid, NULL)`),
    /// to cast a boundary's text back to.
    pub type_sql: String,
    /// The key index's collation for this column, quoted and qualified;
    /// `None` for a type that is not collatable.
    pub collation: Option<String>,
}

impl KeyColumn {
    fn collate(&self) -> String {
        self.collation
            .as_deref()
            .map(|c| format!(" COLLATE {c}"))
            .unwrap_or_default()
    }
}

/// The transaction-local setting that carries bound `i` (0-based key column)
/// of the lower (`lo`) or upper (`hi`) end of a range.
fn setting_name(lower: bool, i: usize) -> String {
    format!("pgrekey.copy_{}_{}", if lower { "lo" } else { "hi" }, i + 1)
}

/// `(k1, k2)` or `k1`, quoted.
fn key_tuple(key: &[KeyColumn]) -> String {
    let cols: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    if cols.len() == 1 {
        cols.join("")
    } else {
        format!("({})", cols.join(", "))
    }
}

/// The bound read back from the session's settings, cast to each column's
/// type under the key index's collation.
fn bound_tuple(key: &[KeyColumn], lower: bool) -> String {
    let vals: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "CAST(pg_catalog.current_setting('{}') AS {}){}",
                setting_name(lower, i),
                k.type_sql,
                k.collate()
            )
        })
        .collect();
    if vals.len() == 1 {
        vals.join("")
    } else {
        format!("({})", vals.join(", "))
    }
}

/// The `WHERE` condition of a key range `[lower, upper)` (either end open),
/// reading its bounds from the session settings that [`copy_table_parallel`]
/// binds (pure; no value appears in the text). Empty when both ends are open.
pub fn range_condition(key: &[KeyColumn], lower: bool, upper: bool) -> String {
    let tuple = key_tuple(key);
    let mut conds = Vec::new();
    if lower {
        conds.push(format!("{tuple} >= {}", bound_tuple(key, true)));
    }
    if upper {
        conds.push(format!("{tuple} < {}", bound_tuple(key, false)));
    }
    conds.join(" AND ")
}

/// The key sample's query: key values as text, sorted the way the range
/// conditions compare (each column under the key index's collation). `$1`
/// is the percentage of blocks.
fn sample_sql(spec: &TableSpec, key: &[KeyColumn]) -> String {
    // Qualified: a bare name in ORDER BY would sort by the output column of
    // the same name, the text.
    let texts: Vec<String> = key
        .iter()
        .map(|k| format!("s.{}::text", quote_ident(&k.name)))
        .collect();
    let order: Vec<String> = key
        .iter()
        .map(|k| format!("s.{}{}", quote_ident(&k.name), k.collate()))
        .collect();
    format!(
        "SELECT {} FROM ONLY {} AS s TABLESAMPLE SYSTEM ($1::float4) ORDER BY {}",
        texts.join(", "),
        spec.source.quoted(),
        order.join(", ")
    )
}

/// `SELECT (b) < (b')` for two bounds bound as text, `$1…$n` and `$n+1…$2n`.
fn increasing_sql(key: &[KeyColumn]) -> String {
    let tuple = |first: usize| {
        let vals: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                format!(
                    "CAST(${}::text AS {}){}",
                    first + i,
                    k.type_sql,
                    k.collate()
                )
            })
            .collect();
        format!("ROW({})", vals.join(", "))
    };
    format!("SELECT {} < {}", tuple(1), tuple(key.len() + 1))
}

/// The percentage of blocks to sample (pure): about
/// [`SAMPLE_ROWS_PER_RANGE`] keys per range by the row estimate, and at
/// least [`SAMPLE_BLOCKS_PER_RANGE`] blocks per range; 100 for a small
/// table. `rows` is `None` when the table was never analyzed.
pub fn sample_percent(pages: u64, rows: Option<f64>, ranges: usize) -> f64 {
    if pages == 0 {
        return 100.0;
    }
    let ranges = ranges.max(1) as f64;
    let pages = pages as f64;
    let by_blocks = SAMPLE_BLOCKS_PER_RANGE * ranges / pages;
    let by_rows = match rows {
        Some(r) if r >= 1.0 => SAMPLE_ROWS_PER_RANGE * ranges / r,
        _ => 0.0,
    };
    (100.0 * by_blocks.max(by_rows)).clamp(0.000_1, 100.0)
}

/// The split points of `ranges` ranges holding about equal numbers of the
/// sampled keys (pure). `sorted` is the sample in the comparison order (the
/// server sorted it); the result is at most `ranges - 1` of its elements, in
/// order, without neighbours that are equal, and never the sample's first
/// element (a range below it would hold almost nothing). Fewer than two
/// distinct keys: no split points.
pub fn pick_boundaries<T: Clone + PartialEq>(sorted: &[T], ranges: usize) -> Vec<T> {
    let m = sorted.len();
    let mut out: Vec<T> = Vec::new();
    if ranges < 2 || m < 2 {
        return out;
    }
    let mut last_idx = 0usize;
    for i in 1..ranges {
        let idx = i * m / ranges;
        if idx == 0 || idx <= last_idx || idx >= m {
            continue;
        }
        let Some(v) = sorted.get(idx) else { continue };
        if out.last() == Some(v) || sorted.first() == Some(v) {
            continue;
        }
        out.push(v.clone());
        last_idx = idx;
    }
    out
}

/// The key of `spec` as its index orders it: the primary key's index, else
/// the replica identity index. Empty when the table has neither.
pub async fn key_columns(client: &Client, spec: &TableSpec) -> Result<Vec<KeyColumn>, CopyError> {
    let rows = client
        .query(
            "SELECT i.indexrelid, a.attname::text, pg_catalog.format_type(a.atttypid, NULL),
                    CASE WHEN co.oid IS NULL THEN NULL
                         ELSE pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END
               FROM pg_catalog.pg_index i
               CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               LEFT JOIN pg_catalog.pg_collation co ON co.oid = i.indcollation[k.n - 1]
               LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
              WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident) AND k.n <= i.indnkeyatts
              ORDER BY i.indisprimary DESC, i.indexrelid, k.n",
            &[&spec.oid],
        )
        .await
        .map_err(|source| CopyError::Db {
            table: spec.source.to_string(),
            context: "read the key's columns",
            source,
        })?;
    let mut out = Vec::new();
    let mut index: Option<u32> = None;
    for r in rows {
        let idx: u32 = r.get(0);
        if *index.get_or_insert(idx) != idx {
            break;
        }
        out.push(KeyColumn {
            name: r.get(1),
            type_sql: r.get(2),
            collation: r.get(3),
        });
    }
    Ok(out)
}

/// Split points of `spec`'s key into about `ranges` ranges of equal row
/// counts, from a sample read by `client` (inside the copy's snapshot; see
/// the module docs). Each point is one text value per key column. Empty:
/// copy the table in one stream.
pub async fn split_points(
    client: &Client,
    spec: &TableSpec,
    key: &[KeyColumn],
    ranges: usize,
    min_split_pages: u64,
) -> Result<Vec<Vec<String>>, CopyError> {
    let table = spec.source.to_string();
    let db = |context: &'static str| {
        let table = table.clone();
        move |source| CopyError::Db {
            table,
            context,
            source,
        }
    };
    if ranges < 2 || key.is_empty() {
        return Ok(Vec::new());
    }
    let size = client
        .query_one(
            "SELECT (pg_catalog.pg_relation_size($1::oid) / pg_catalog.current_setting('block_size')::int8)::int8,
                    reltuples::float8
               FROM pg_catalog.pg_class WHERE oid = $1::oid",
            &[&spec.oid],
        )
        .await
        .map_err(db("read the table's size"))?;
    let pages = u64::try_from(size.get::<_, i64>(0)).unwrap_or(0);
    let reltuples: f64 = size.get(1);
    if pages < min_split_pages.max(1) {
        return Ok(Vec::new());
    }
    let pct = sample_percent(pages, (reltuples >= 0.0).then_some(reltuples), ranges) as f32;
    // Under a savepoint: a key type without a default ordering fails the
    // sort, and must not take the snapshot transaction with it.
    client
        .batch_execute("SAVEPOINT pgrekey_split")
        .await
        .map_err(db("start the key sample"))?;
    let sample = match client.query(&sample_sql(spec, key), &[&pct]).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(table = %spec.source, error = %crate::pg::diag::chain(&e), "the key cannot be sampled; copying the table in one stream");
            client
                .batch_execute(
                    "ROLLBACK TO SAVEPOINT pgrekey_split; RELEASE SAVEPOINT pgrekey_split",
                )
                .await
                .map_err(db("end the key sample"))?;
            return Ok(Vec::new());
        }
    };
    client
        .batch_execute("RELEASE SAVEPOINT pgrekey_split")
        .await
        .map_err(db("end the key sample"))?;
    let keys: Vec<Vec<String>> = sample
        .iter()
        .map(|r| (0..key.len()).map(|i| r.get::<_, String>(i)).collect())
        .collect();
    let picked = pick_boundaries(&keys, ranges);
    // Keep only strictly increasing points, compared by the server exactly
    // as the range conditions will compare them.
    let check = increasing_sql(key);
    let mut points: Vec<Vec<String>> = Vec::with_capacity(picked.len());
    for p in picked {
        if let Some(prev) = points.last() {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = prev
                .iter()
                .chain(p.iter())
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let up: bool = client
                .query_one(&check, &params)
                .await
                .map_err(db("order the key's split points"))?
                .get(0);
            if !up {
                continue;
            }
        }
        points.push(p);
    }
    tracing::debug!(table = %spec.source, pages, sample = keys.len(), percent = pct, ranges = points.len() + 1, "key ranges from a sample");
    Ok(points)
}

/// Bind a range's bounds (text, one per key column; `None`: that end open)
/// to the transaction-local settings [`range_condition`] reads, on `client`.
pub async fn bind_range(
    client: &Client,
    spec: &TableSpec,
    lower: Option<&[String]>,
    upper: Option<&[String]>,
) -> Result<(), CopyError> {
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<&String> = Vec::new();
    for (is_lower, bound) in [(true, lower), (false, upper)] {
        for (i, v) in bound.unwrap_or_default().iter().enumerate() {
            names.push(setting_name(is_lower, i));
            values.push(v);
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let calls: Vec<String> = (0..names.len())
        .map(|i| {
            format!(
                "pg_catalog.set_config(${}, ${}, true)",
                2 * i + 1,
                2 * i + 2
            )
        })
        .collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    for (n, v) in names.iter().zip(values) {
        params.push(n);
        params.push(v);
    }
    client
        .query_one(&format!("SELECT {}", calls.join(", ")), &params)
        .await
        .map_err(|source| CopyError::Db {
            table: spec.source.to_string(),
            context: "bind a key range",
            source,
        })?;
    Ok(())
}

/// Copy `spec.source` (as `source` sees it) into `spec.shadow` on `target`,
/// with default [`CopyOptions`]. Returns the rows copied.
///
/// `source` must be inside the `REPEATABLE READ` transaction holding the
/// slot's snapshot; `target` must be outside any transaction (each batch
/// commits on its own). The shadow should be empty; on error, batches already
/// committed stay in it.
pub async fn copy_table(
    source: &Client,
    target: &Client,
    spec: &TableSpec,
    map: &IdMap,
    progress: &Progress,
) -> Result<u64, CopyError> {
    copy_table_with(source, target, spec, map, progress, &CopyOptions::default()).await
}

/// [`copy_table`] with explicit options.
pub async fn copy_table_with(
    source: &Client,
    target: &Client,
    spec: &TableSpec,
    map: &IdMap,
    progress: &Progress,
    opts: &CopyOptions,
) -> Result<u64, CopyError> {
    let plan = CopyPlan::new(spec, opts.order_by_key, None)?;
    let span = tracing::info_span!("copy", table = %spec.source, shadow = %spec.shadow);
    let started = std::time::Instant::now();
    let rows = run_copy(source, target, spec, &plan, map, progress, opts)
        .instrument(span)
        .await?;
    tracing::debug!(
        table = %spec.source,
        rows,
        secs = started.elapsed().as_secs_f64(),
        "table copied"
    );
    Ok(rows)
}

/// A range's lower and upper bound (`None`: open), one text per key column.
type Bounds<'a> = (Option<&'a [String]>, Option<&'a [String]>);

/// Copy one table on several connection pairs at once, in ranges of its key
/// (any btree-ordered types, composite or not) whose boundaries come from a
/// sample of the key under the snapshot; see the module docs ("Parallel
/// ranges over any key") for why every row is copied exactly once. A table
/// that cannot or need not be split is copied in one stream.
///
/// Every source session must be inside a `REPEATABLE READ` transaction that
/// imported the same snapshot (`SET TRANSACTION SNAPSHOT`); the ranges then
/// partition exactly the rows of that snapshot. Returns the total rows copied.
pub async fn copy_table_parallel(
    pairs: &[(&Client, &Client)],
    spec: &TableSpec,
    map: &IdMap,
    progress: &Progress,
    opts: &CopyOptions,
) -> Result<u64, CopyError> {
    let Some(&(first_source, first_target)) = pairs.first() else {
        return Err(CopyError::Spec {
            table: spec.source.to_string(),
            reason: "no connections given".into(),
        });
    };
    let key = key_columns(first_source, spec).await?;
    let wanted = pairs.len() * opts.ranges_per_session.max(1);
    let points = split_points(first_source, spec, &key, wanted, opts.min_split_pages).await?;
    if points.is_empty() {
        return copy_table_with(first_source, first_target, spec, map, progress, opts).await;
    }
    // Range i is [points[i-1], points[i]), open below for the first and
    // above for the last.
    let n = points.len() + 1;
    let ranges: Vec<Bounds<'_>> = (0..n)
        .map(|i| {
            let lo = i
                .checked_sub(1)
                .and_then(|j| points.get(j))
                .map(Vec::as_slice);
            (lo, points.get(i).map(Vec::as_slice))
        })
        .collect();
    let plans = ranges
        .iter()
        .map(|(lo, hi)| {
            let cond = range_condition(&key, lo.is_some(), hi.is_some());
            CopyPlan::new(spec, opts.order_by_key, Some(&cond))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next = AtomicUsize::new(0);
    let span = tracing::info_span!("copy", table = %spec.source, shadow = %spec.shadow, ranges = n);
    let started = std::time::Instant::now();
    let tasks = pairs.iter().map(|&(source, target)| {
        let (next, ranges, plans) = (&next, &ranges, &plans);
        async move {
            let mut rows = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (Some(&(lo, hi)), Some(plan)) = (ranges.get(i), plans.get(i)) else {
                    break;
                };
                bind_range(source, spec, lo, hi).await?;
                rows += run_copy(source, target, spec, plan, map, progress, opts).await?;
            }
            Ok::<u64, CopyError>(rows)
        }
    });
    let results = futures_util::future::join_all(tasks).instrument(span).await;
    let mut total = 0;
    for r in results {
        total += r?;
    }
    tracing::debug!(
        table = %spec.source,
        rows = total,
        ranges = n,
        secs = started.elapsed().as_secs_f64(),
        "table copied"
    );
    Ok(total)
}

/// Run independent statements (index builds) on several sessions at once,
/// each session outside any transaction, taking the next statement when it
/// finishes one; every statement is its own transaction. Returns each
/// statement's duration, in the statements' order, or the position of the
/// first that failed and its error (the others already running go on to
/// their end; the caller drops the sessions to stop them).
pub async fn build_concurrently(
    sessions: &[&Client],
    statements: &[String],
) -> Result<Vec<std::time::Duration>, (usize, tokio_postgres::Error)> {
    let next = AtomicUsize::new(0);
    let took = std::sync::Mutex::new(vec![std::time::Duration::ZERO; statements.len()]);
    let workers = sessions.iter().map(|&session| {
        let (next, took) = (&next, &took);
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(stmt) = statements.get(i) else {
                    return Ok(());
                };
                let started = std::time::Instant::now();
                session.batch_execute(stmt).await.map_err(|e| (i, e))?;
                if let Some(t) = took.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
                    *t = started.elapsed();
                }
            }
        }
    });
    futures_util::future::try_join_all(workers).await?;
    Ok(took.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// One open `COPY … FROM STDIN` batch on the target.
struct Batch {
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    rows: u64,
    bytes: u64,
}

async fn run_copy(
    source: &Client,
    target: &Client,
    spec: &TableSpec,
    plan: &CopyPlan,
    map: &IdMap,
    progress: &Progress,
    opts: &CopyOptions,
) -> Result<u64, CopyError> {
    let table = || spec.source.to_string();
    let db = |context: &'static str| {
        move |source| CopyError::Db {
            table: spec.source.to_string(),
            context,
            source,
        }
    };
    if let Some(t) = &opts.throttle {
        t.wait_ready().await;
    }
    let stream = source
        .copy_out(plan.copy_out.as_str())
        .await
        .map_err(db("start COPY TO on the source"))?;
    futures_util::pin_mut!(stream);
    let mut rw = Rewriter::new(plan.layout.clone());
    let mut out = BytesMut::with_capacity(FLUSH_BYTES * 2);
    let mut batch: Option<Batch> = None;
    let mut copied = 0u64;
    let lookup = |k: i64| map.get(k);

    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(db("read the source"))?;
        let before = out.len();
        let fed = rw.feed(&chunk, &mut out, lookup).map_err(|e| {
            let column = |field: usize| {
                plan.columns
                    .get(field)
                    .cloned()
                    .unwrap_or_else(|| "-".into())
            };
            match e {
                RewriteError::MissingParent { row, field, value } => CopyError::MissingParent {
                    table: table(),
                    column: column(field),
                    value,
                    row,
                },
                RewriteError::BadLength { field, .. }
                | RewriteError::ReferenceWidth { field, .. } => CopyError::Stream {
                    table: table(),
                    column: column(field),
                    source: e,
                },
                other => CopyError::Stream {
                    table: table(),
                    column: "-".into(),
                    source: other,
                },
            }
        })?;
        if out.is_empty() {
            continue;
        }
        let b = match batch.as_mut() {
            Some(b) => b,
            None => {
                let sink = target
                    .copy_in::<_, Bytes>(plan.copy_in.as_str())
                    .await
                    .map_err(db("start COPY FROM on the shadow"))?;
                let mut sink = Box::pin(sink);
                sink.feed(Bytes::from_static(&HEADER))
                    .await
                    .map_err(db("write the shadow"))?;
                batch.insert(Batch {
                    sink,
                    rows: 0,
                    bytes: 0,
                })
            }
        };
        b.rows += fed.rows;
        b.bytes += (out.len() - before) as u64;
        let full = (opts.batch_rows > 0 && b.rows >= opts.batch_rows)
            || (opts.batch_bytes > 0 && b.bytes >= opts.batch_bytes);
        if let (true, Some(boundary)) = (full, fed.boundary) {
            let head = out.split_to(boundary).freeze();
            // Rows past the boundary (a partial tuple) belong to the next batch.
            let mut done = batch.take().ok_or_else(|| CopyError::Spec {
                table: table(),
                reason: "internal: batch vanished".into(),
            })?;
            let n = close_batch(&mut done, head)
                .await
                .map_err(db("commit a shadow batch"))?;
            copied += n;
            progress.add(n);
            // Between batches, with no shadow transaction open: the one
            // place the copy may be held back.
            if let Some(t) = &opts.throttle {
                t.wait_ready().await;
            }
            if !out.is_empty() {
                // Start the next batch now so its header precedes the remainder.
                let sink = target
                    .copy_in::<_, Bytes>(plan.copy_in.as_str())
                    .await
                    .map_err(db("start COPY FROM on the shadow"))?;
                let mut sink = Box::pin(sink);
                sink.feed(Bytes::from_static(&HEADER))
                    .await
                    .map_err(db("write the shadow"))?;
                let rest = out.len() as u64;
                batch = Some(Batch {
                    sink,
                    rows: 0,
                    bytes: rest,
                });
            }
        } else if out.len() >= FLUSH_BYTES {
            b.sink
                .feed(out.split().freeze())
                .await
                .map_err(db("write the shadow"))?;
        }
    }
    rw.finish().map_err(|e| CopyError::Stream {
        table: table(),
        column: "-".into(),
        source: e,
    })?;
    if let Some(mut b) = batch.take() {
        let n = close_batch(&mut b, out.split().freeze())
            .await
            .map_err(db("commit a shadow batch"))?;
        copied += n;
        progress.add(n);
    }
    if copied != rw.rows() {
        return Err(CopyError::Spec {
            table: table(),
            reason: format!(
                "the shadow accepted {copied} rows but the source sent {}",
                rw.rows()
            ),
        });
    }
    Ok(copied)
}

/// Send the last bytes and the trailer, then end the COPY (which commits).
async fn close_batch(b: &mut Batch, last: Bytes) -> Result<u64, tokio_postgres::Error> {
    if !last.is_empty() {
        b.sink.feed(last).await?;
    }
    b.sink.feed(Bytes::from_static(&TRAILER)).await?;
    let n = b.sink.as_mut().finish().await?;
    // A batch is in the shadow, the table's copy is not complete.
    crate::failpoint::hit("copy.after_batch");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(name: &str, type_sql: &str, collation: Option<&str>) -> KeyColumn {
        KeyColumn {
            name: name.into(),
            type_sql: type_sql.into(),
            collation: collation.map(str::to_string),
        }
    }

    #[test]
    fn range_conditions_read_bound_settings_with_casts_and_collations() {
        let one = [kc("id", "uuid", None)];
        assert_eq!(
            range_condition(&one, true, true),
            "\"id\" >= CAST(pg_catalog.current_setting('pgrekey.copy_lo_1') AS uuid) \
             AND \"id\" < CAST(pg_catalog.current_setting('pgrekey.copy_hi_1') AS uuid)"
        );
        assert_eq!(range_condition(&one, false, false), "");
        let two = [
            kc("Tenant", "text", Some("pg_catalog.\"C\"")),
            kc("seq", "integer", None),
        ];
        assert_eq!(
            range_condition(&two, false, true),
            "(\"Tenant\", \"seq\") < (CAST(pg_catalog.current_setting('pgrekey.copy_hi_1') AS text) COLLATE pg_catalog.\"C\", \
             CAST(pg_catalog.current_setting('pgrekey.copy_hi_2') AS integer))"
        );
        // The sample is sorted under the same collations the ranges compare with.
        let spec = TableSpec {
            source: crate::pg::QualifiedName::new("public", "m"),
            oid: 1,
            shadow: crate::pg::QualifiedName::new("public", "_rekey_new_m"),
            columns: Vec::new(),
            key: Vec::new(),
        };
        assert_eq!(
            sample_sql(&spec, &two),
            "SELECT s.\"Tenant\"::text, s.\"seq\"::text FROM ONLY \"public\".\"m\" AS s TABLESAMPLE SYSTEM ($1::float4) \
             ORDER BY s.\"Tenant\" COLLATE pg_catalog.\"C\", s.\"seq\""
        );
        assert_eq!(
            increasing_sql(&two),
            "SELECT ROW(CAST($1::text AS text) COLLATE pg_catalog.\"C\", CAST($2::text AS integer)) \
             < ROW(CAST($3::text AS text) COLLATE pg_catalog.\"C\", CAST($4::text AS integer))"
        );
    }

    #[test]
    fn sample_size_follows_rows_and_blocks() {
        // Never analyzed: blocks decide. Small tables are read whole.
        assert_eq!(sample_percent(0, None, 4), 100.0);
        assert_eq!(sample_percent(100, None, 4), 100.0);
        assert!((sample_percent(12_800, None, 4) - 1.0).abs() < 1e-9);
        // 10 M rows in 100 k blocks, 4 ranges: 4000 rows wanted (0.04 %),
        // but at least 128 blocks (0.128 %).
        assert!((sample_percent(100_000, Some(1e7), 4) - 0.128).abs() < 1e-9);
        // Few rows per block: rows decide.
        assert!((sample_percent(100_000, Some(200_000.0), 2) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn boundaries_are_quantiles_of_the_sample() {
        let s: Vec<u32> = (0..100).collect();
        assert_eq!(pick_boundaries(&s, 4), vec![25, 50, 75]);
        assert_eq!(pick_boundaries(&s, 1), Vec::<u32>::new());
        assert_eq!(pick_boundaries(&[7u32], 4), Vec::<u32>::new());
        // More ranges than keys: each key at most once, never the first.
        assert_eq!(pick_boundaries(&[1u32, 2, 3], 8), vec![2, 3]);
        // Equal neighbours (a non-unique sample) are not repeated.
        assert_eq!(pick_boundaries(&[1u32, 1, 1, 1, 2, 2, 2, 2], 4), vec![2]);
    }

    /// Count `population` (sorted) per range `[b_{i-1}, b_i)`.
    fn range_sizes(population: &[u64], bounds: &[u64]) -> Vec<usize> {
        let mut sizes = vec![0usize; bounds.len() + 1];
        for k in population {
            let i = bounds.iter().take_while(|b| *b <= k).count();
            sizes[i] += 1;
        }
        sizes
    }

    #[test]
    fn skewed_keys_split_into_even_ranges() {
        // A key with three very different densities: 1–5000 dense, a sparse
        // stretch of 500 keys spread over 10⁹, then 50 000 keys from 10¹².
        let mut population: Vec<u64> = (1..=5_000).collect();
        population.extend((0..500u64).map(|i| 1_000_000 + i * 2_000_000));
        population.extend((0..50_000u64).map(|i| 1_000_000_000_000 + i));
        population.sort_unstable();
        // A sample of every 23rd key, as the block sample would give.
        let sample: Vec<u64> = population.iter().copied().step_by(23).collect();
        for ranges in [2usize, 3, 4, 8] {
            let bounds = pick_boundaries(&sample, ranges);
            assert_eq!(bounds.len(), ranges - 1);
            let sizes = range_sizes(&population, &bounds);
            assert_eq!(
                sizes.iter().sum::<usize>(),
                population.len(),
                "every key in one range"
            );
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(
                *max as f64 <= *min as f64 * 1.1,
                "{ranges} ranges: {sizes:?} are not even"
            );
        }
        // What equal-width splitting between min and max (the old integer
        // split) gives on the same key: everything in the last range.
        let (lo, hi) = (population[0], population[population.len() - 1]);
        let width: Vec<u64> = (1..4).map(|i| lo + (hi - lo) / 4 * i).collect();
        let sizes = range_sizes(&population, &width);
        assert!(sizes[3] > population.len() * 9 / 10, "{sizes:?}");
    }
}
