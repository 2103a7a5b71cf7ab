//! The apply engine: source transactions, in commit order, onto the shadows.
//!
//! # Invariants
//!
//! - **Commit order.** Changes are applied in the order the stream delivers
//!   them, which is the source's commit order (pgoutput, protocol 1 without
//!   streaming, sends a transaction's changes in execution order at its
//!   commit). The id map is updated from the parent's own changes in that
//!   same order; within a transaction, references resolve as of its commit
//!   (next point).
//! - **References resolve at commit.** What must hold is the source's state
//!   at each commit: a foreign key that is `DEFERRABLE INITIALLY DEFERRED`
//!   (Django creates every key so) is checked only then, so inside a
//!   transaction a child may name a parent inserted later, a parent may be
//!   deleted before its children, or deleted and inserted again. The
//!   argument, per source transaction `T`, assuming the shadow equals the
//!   source before `T` with every reference translated through the parent's
//!   uuid at that point (true after the copy, see [`crate::copy`]):
//!   1. *Every row image `T` writes is translated through the uuid its
//!      parent key has at `T`'s commit, or `T` stops the job.* A reference is
//!      resolved, at its change, through [`txn::TxnLookup`]: the map (the
//!      parent as of this point of `T`), else the keys `T` deleted so far,
//!      else nothing — and then nothing of the change is applied: the rest
//!      of `T` is held ([`txn::Buffer`]) until its `Commit`, when every
//!      parent row image of `T` is known, and replayed in order with a
//!      [`txn::Lookahead`] that also resolves a key to the *first* row image
//!      `T` gives it later. A key found nowhere is an orphan at commit
//!      (nothing in `T` creates it): the job stops, naming table, column,
//!      value and LSN. Whatever uuid a reference got, every later change of
//!      that key's uuid in `T` re-points it (next item), so at commit it
//!      holds the key's uuid at commit.
//!   2. *A parent key's uuid changing is followed, in order.* An UPDATE of a
//!      parent row's uuid (A → B), and an INSERT of a key `T` deleted
//!      earlier with another uuid (A → B: the children `T` still has of the
//!      key belong to the new row at commit), re-point every shadow row
//!      holding A to B ([`sql::follow_uuid_change`]) before the next change
//!      is applied. A reference resolved through the lookahead to the
//!      key's first later image is exactly what that image's INSERT then
//!      finds in the map: nothing to re-point, and later changes follow.
//!   3. *Rows are found by their current values.* An UPDATE or DELETE of a
//!      child finds its row by key; a key holding a reference is translated
//!      through the same lookup, so it names the uuid the shadow row holds
//!      now — including for a parent `T` already deleted (its uuid is kept
//!      for the rest of `T`), the order in which Django deletes.
//!   4. *No reference survives its parent.* A DELETE (or key change) of a
//!      parent removes the key from the map, so no later transaction
//!      resolves it. At `T`'s commit, for every key `T` deleted and did not
//!      insert again *and* wrote references to, the shadow is checked for
//!      rows still holding its uuid (`SELECT EXISTS … WHERE ref = uuid`,
//!      every reference column): one found is an orphan at commit — the
//!      source's key cannot have held — and the job stops, naming table,
//!      column, value and the commit's LSN. A valid source never trips it.
//!
//!   Hence after `T` the shadow equals the source at `T`'s commit,
//!   translated through the parent's uuids at that commit. All of it
//!   happens inside the shadow transaction, before the commit's position is
//!   recorded, so exactly-once, the undo of the map and pipelining are
//!   unchanged. Limits: a transaction is held only after its first
//!   unresolved reference, at most [`BatchLimits::max_txn_buffer`] bytes of
//!   row data (256 MiB by default; a larger one stops the job saying so);
//!   the commit check counts written keys up to [`txn::MAX_WRITTEN_KEYS`]
//!   and past that checks every deleted key. Not detected here: an orphan
//!   made by deleting a parent whose children were written by *earlier*
//!   transactions while the source's key is dropped or disabled (the
//!   shadow keeps the old uuid; `verify` reports the row and the new key's
//!   `VALIDATE CONSTRAINT` after cutover fails on it), and a uuid that moves
//!   from one parent key to another within one transaction while children
//!   of the first are written and kept (a key change of the parent whose
//!   children are neither cascaded nor checked, or a `DEFERRABLE` unique
//!   constraint on the uuid column).
//! - **Exactly once.** Several source transactions may share one shadow
//!   transaction. Before that shadow transaction commits, the end LSN of the
//!   last source commit in it is written to `pg_rekey.jobs.applied_lsn` *in the
//!   same transaction*. After a restart the stream is resumed from the slot,
//!   and every source transaction whose commit record lies before the recorded
//!   LSN is skipped, so nothing is applied twice and nothing is skipped (the
//!   slot never advances past what was confirmed, and only durably committed
//!   positions are confirmed — see [`crate::replication::stream`]).
//! - **No triggers, no FK checks on the shadow.** The apply session runs with
//!   `session_replication_role = replica`, as PostgreSQL's own apply workers
//!   do: the source already ran its triggers, and the shadow's foreign keys
//!   (created `NOT VALID`) must not be checked against the *current* parent
//!   while the stream replays the past. They are validated after cutover.
//! - **Parent uuid changes are followed.** The shadow must equal the source
//!   with every reference translated through the parent's *current* uuid
//!   (after cutover the shadow's foreign key points at `parent.uuid`, and a
//!   reference to a uuid that no longer exists would not validate). So when a
//!   parent UPDATE gives a key a new uuid, the rows already written with the
//!   old one are re-pointed (`UPDATE shadow SET ref = new WHERE ref = old`,
//!   every reference column of every table) in the same shadow transaction,
//!   before any later change is applied; references written afterwards carry
//!   the new uuid through the map. A parent INSERT of a key deleted by an
//!   *earlier* transaction re-points nothing: no row can still reference a
//!   parent deleted at an earlier commit while the source's foreign key
//!   holds (one deleted earlier in the *same* transaction is item 2 above).
//!   The parent's uuid column is unique and (unless the constraint is
//!   `DEFERRABLE`) checked row by row, so at each change the old uuid
//!   belonged to this key alone and the re-pointing cannot catch another
//!   user's rows.
//! - **The map moves with the shadow.** Map changes made since the last
//!   durable position are kept in an undo list, each tagged with its source
//!   transaction's commit LSN. After a transient failure the caller reads the
//!   recorded applied position (where the stream will resume) and calls
//!   [`Applier::revert_map_after`]: changes of transactions that will be
//!   replayed are undone, so the replay finds the map as it was — otherwise a
//!   uuid change would look like no change and its re-pointing (rolled back
//!   with the shadow transaction) would be lost. Changes of transactions that
//!   did commit (a COMMIT whose answer was lost still counts, because the
//!   position is read back from the state) are kept: those are not replayed.
//! - **The map is durable, at the applied position.** With
//!   [`Applier::persist_map_to`], the keys whose entry a source transaction
//!   changed are written to the job's map table at that transaction's
//!   COMMIT — an upsert of the entry the map now holds, or a delete of a key
//!   that left it (a parent deleted, or the old side of a key change) — in
//!   the same shadow transaction that records `applied_lsn` (a source
//!   transaction that only changes the parent opens one too). Only each
//!   key's final state is written, which is all the table must hold. A
//!   rolled-back shadow transaction takes its writes with it, as
//!   [`Applier::revert_map_after`] takes the in-memory changes back. So after
//!   a crash that table is the map exactly as of where the stream resumes; a
//!   new owner loads it from there (see [`crate::resume`]).
//! - **Pipelined, in order.** Row changes are sent without waiting for each
//!   answer (up to [`MAX_IN_FLIGHT`] outstanding on the one apply session):
//!   the server executes a session's requests strictly in the order they
//!   were sent, so the shadow sees the changes in commit order exactly as
//!   before; only the client's *checks* of the answers are deferred. Every
//!   outstanding change is settled — its result read, its "found a row"
//!   check done, its error attributed to its own LSN and table — before the
//!   shadow transaction commits ([`Applier::flush`]), so nothing is recorded
//!   as applied, and no position is confirmed, that was not checked. After a
//!   failed statement the server rejects the rest of the transaction (25P02)
//!   and the first error in order is the one reported; the caller rolls back.
//! - **Sets, not rows.** Row changes of a table whose only unique index is
//!   its integer or uuid row key are held in a [`batch::Window`] and sent as
//!   one set statement per run (`INSERT … SELECT … FROM unnest($1::text[],
//!   …) ON CONFLICT …`, `UPDATE … FROM unnest(…)`, `DELETE … USING
//!   unnest(…)`), level by level so that each row's changes keep their
//!   order (the argument is in [`batch`]). The window is sent before
//!   anything that must see the changes so far: a change sent alone (a key
//!   change, a table applied one by one), re-pointing a parent's changed
//!   uuid, the orphan check at commit, and the shadow transaction's commit
//!   with its applied position — so exactly-once and the commit-order
//!   argument above are unchanged: what a commit records is still every
//!   change before it, applied. A set statement's row count is checked like
//!   a single one's: every change of an update or delete run must touch its
//!   row, else the job stops naming the first LSN and the run's range.
//! - **The way back.** After cutover the live table `t` is the former
//!   shadow (uuid references) and the original is kept as `_rekey_old_t`
//!   (integer references). [`Applier::add_reverse`] registers, per table, the
//!   spec of the way back ([`TableSpec::reversed`]: the live table's oid,
//!   the old table as the one written) beside the forward one; the
//!   publication decides which of the two oids streams (the swap moves the
//!   table in it, so changes of the new `t` arrive from the swap's commit
//!   on). Every argument above holds with key and uuid exchanged:
//!   references arrive as uuids, the old table holds keys, and the map's
//!   uuid → key index ([`IdMap::enable_reverse`]) moves with the map (same
//!   upserts, same undo, same durable table — the map itself is kept from
//!   the parent's changes exactly as before).
//!   1. *Resolved at commit.* A uuid resolves through the index (the
//!      parent as of this point of `T`), else the uuids `T` deleted so far
//!      (with the key each had: rows still holding it are found), else the
//!      rest of `T` is held and replayed at its commit with the lookahead,
//!      which also knows the key of the first later row image holding a
//!      uuid. A uuid found nowhere stops the job
//!      ([`TranslateError::OrphanUuid`]: table, column, uuid, LSN); the
//!      open shadow transaction is rolled back, so nothing of `T` is
//!      written — never a NULL.
//!   2. *What "deleted" means.* Seen from the old table a parent's
//!      identity is its key, so a uuid leaves (as if deleted, with the key
//!      it had) when its row is deleted, when its key changes, and when the
//!      row gets another uuid. A uuid that comes back under another key —
//!      the same row after a key change (`UPDATE users SET id = …`), or a
//!      row deleted and inserted again with the same uuid and a new key —
//!      re-points every old-table row holding the old key to the new one
//!      ([`sql::follow_key_change`]) before the next change is applied:
//!      the reverse of following a uuid change. It is safe for the reason
//!      that one is: the key is the parent's primary key, unique and
//!      checked row by row, so at that change the old key belonged to this
//!      row alone and the old table's rows holding it are this row's (rows
//!      of an earlier holder of the key were deleted or re-pointed by that
//!      holder's own transaction, whose key held at its commit). Stopping
//!      instead would make every key change of a parent end the way back,
//!      which is the one change the old table cannot otherwise follow.
//!   3. *A uuid change needs no re-pointing.* The old table holds the key,
//!      which did not change; the live rows holding the old uuid are
//!      changed by the source itself (`ON UPDATE CASCADE`), or none is
//!      left at commit (the key holds), and either way arrive as their own
//!      changes, translated to the same key.
//!   4. *The orphan check at commit.* For every uuid `T` deleted, wrote
//!      references to and did not give back, and whose key no other uuid
//!      holds now, the old tables are checked for rows still holding that
//!      key (`SELECT EXISTS … WHERE ref = key`, every reference column):
//!      one found is an orphan at commit
//!      ([`TranslateError::OrphanUuidAtCommit`], naming the uuid).
//!   5. *Which tables the work spanning tables goes to.* Re-pointing and
//!      the orphan check go to the forward shadows until a table's swap
//!      has committed, to its old table after: a change or `Relation` of
//!      the live table says so (it is published only from the swap on);
//!      before one arrives, a parent change asks the catalog whether the
//!      old table exists and the forward shadow no longer does. That read
//!      is for the right point of the stream because the cutover holds the
//!      parent locked from before its fence until the swap ends: a parent
//!      change after the fence is applied only once the swap has
//!      committed or rolled back, and one before it was applied before the
//!      swap could commit (the drain waits for it).
//!
//!   The set-wise plan of a table of the way back (the live table's and
//!   the old table's unique indexes, the same rule as forward) is read at
//!   its first change, when the old table exists; statements are prepared
//!   lazily as always. Not detected, as forward: a live row left holding a
//!   uuid whose row's uuid changed in the same transaction while the
//!   source's key is dropped (the old table holds the key, now another
//!   uuid's: `verify`-style comparison finds it); a key deleted and reused
//!   by another uuid in one transaction whose old-uuid children are kept
//!   (a broken source only); and in one exotic valid order — a key
//!   deleted, inserted again with another uuid and then changed in the
//!   same transaction — a child of the deleted row that is kept until
//!   later in that transaction and found by a key holding its reference
//!   is re-pointed with the new row, so its later change finds no row and
//!   the job stops (never a wrong row).
//! - **Stop, don't guess.** An orphaned reference, a TRUNCATE of a rewritten
//!   table or the parent, a change of a source table's columns, or a change
//!   that finds no row in the shadow stops the job with an error naming the
//!   table, column, value and LSN; the open shadow transaction is rolled back
//!   and everything is left in place for inspection.
//!
//! # Measured (`cargo bench --bench apply`, 2 cores shared with other builds)
//!
//! Same session, old and new bench binaries back to back (the bench also
//! drains a backlog: the shadow locked while the generator commits, then
//! released, so the apply's own rate is seen and not the generator's):
//!
//! - One statement per change, pipelined (before): live 11.0–30.8 k
//!   changes/s (below the generator's rate), tail after the generator
//!   0.4–1.7 s, lag up to 14.9 MB; a backlog of 60 k changes drained at
//!   13.7–43.8 k changes/s using 1.0–1.5 tool CPU-s and 1.3–1.8 server
//!   CPU-s (load 3.1–4.9, two runs of three rounds each).
//! - Set statements (kept): live 33.4–47.2 k changes/s — the generator's
//!   own rate, the apply keeps up; tail 2–17 ms, lag ≤ 4.5 MB; the backlog
//!   drained at 55.6–168.5 k changes/s (median of the two runs 85.9 k and
//!   156.2 k) using 0.13–0.16 tool CPU-s and 0.42–0.59 server CPU-s: about
//!   4.5× less CPU per change. Under load 9–11 an earlier pair of runs gave
//!   29.6–54.8 k/s against 2.6–7.7 k/s before.
//!
//! Not done, and why: `COPY` for insert runs (it cannot carry the `ON
//! CONFLICT` upsert that keeps an insert idempotent where copy and stream
//! overlap; the unnest INSERT already runs at >100 k rows/s here); set
//! apply for tables with another unique index (reordering could free and
//! take a value out of order) or a key compared by value rather than bytes
//! (text, numeric): they are applied one by one as before. The window size
//! ([`batch::MAX_WINDOW`], 2 000) was not tuned: the shadow transaction
//! commits every 200 ms or 5 000 changes anyway, and a small-transaction
//! workload's window is mostly sent at those commits.

pub mod batch;
pub mod sql;
pub mod translate;
pub mod txn;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};

use crate::error::Error;
use crate::idmap::IdMap;
use crate::pg::Lsn;
use crate::plan::model::{ParentSpec, TableSpec};
use crate::replication::pgoutput::{LogicalMessage, Relation};

use sql::StatementShape;
use translate::{
    bind_relation, parent_entry, parent_key, BoundRelation, ParentRef, RowTranslator,
    TranslateError,
};
use txn::{Buffer, Lookahead, TxnLookup, TxnState};

/// Row changes sent to the shadow and not yet confirmed by the server, at
/// most. Enough to hide the round trip; small enough that an error is
/// reported soon after the change that caused it.
pub const MAX_IN_FLIGHT: usize = 256;

/// A change sent to the server whose answer has not been read yet.
struct InFlight {
    /// Resolves to the number of rows the statement touched.
    answer: Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>>,
    oid: u32,
    lsn: Lsn,
    /// `Some("UPDATE")` / `Some("DELETE")`: must touch a row.
    must_hit: Option<&'static str>,
    /// Changes the statement applies (a set statement's run; else 1), each
    /// of which must touch a row when `must_hit`, and the last one's LSN.
    rows: u64,
    last_lsn: Lsn,
}

/// Prefix of the logical messages that `cutover` writes through the stream.
pub const FENCE_PREFIX: &str = "pg_rekey.fence";

/// When to commit a shadow transaction.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Commit after this many applied changes.
    pub max_changes: usize,
    /// Commit when the open shadow transaction is this old.
    pub max_age: Duration,
    /// Bytes of row data held, at most, of one source transaction that
    /// references a parent row it inserts later (see [`txn`]).
    pub max_txn_buffer: usize,
}

/// Default [`BatchLimits::max_txn_buffer`]: 256 MiB.
pub const DEFAULT_MAX_TXN_BUFFER: usize = 256 << 20;

/// What [`Applier::change`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Applied (or nothing to apply).
    Done,
    /// A reference to a parent key not known yet: nothing applied.
    Unresolved,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_changes: 5_000,
            max_age: Duration::from_millis(200),
            max_txn_buffer: DEFAULT_MAX_TXN_BUFFER,
        }
    }
}

/// Counters for progress reporting.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyStats {
    /// Row changes applied to shadows.
    pub changes: u64,
    /// Source transactions seen (committed).
    pub transactions: u64,
    /// Shadow transactions committed.
    pub batches: u64,
}

/// What happened with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing to report.
    Nothing,
    /// A source transaction ended at this LSN (it is applied but maybe not yet durable).
    Committed(Lsn),
    /// A fence logical message was seen, with its content.
    Fence(String),
}

struct TableState {
    spec: TableSpec,
    bound: Option<BoundRelation>,
}

/// A table of the way back ([`Applier::add_reverse`]).
#[derive(Debug, Clone, Copy)]
struct Reverse {
    /// The forward spec of the same table (same source name), if registered.
    forward: Option<u32>,
    /// The swap has committed: the old table is written, the forward
    /// shadow no longer (see "The way back" in the module docs).
    active: bool,
}

/// Applies decoded pgoutput messages to the shadow tables of one job.
pub struct Applier {
    client: Arc<Client>,
    in_flight: VecDeque<InFlight>,
    job_id: uuid::Uuid,
    tables: HashMap<u32, TableState>,
    parent: ParentSpec,
    parent_cols: Option<(usize, usize)>,
    map: IdMap,
    stmts: HashMap<(u32, StatementShape), Statement>,
    limits: BatchLimits,
    /// Skip source transactions whose commit record is before this (already applied).
    skip_before: Lsn,
    skipping: bool,
    /// LSN of the message being applied (for errors).
    cur_lsn: Lsn,
    open_since: Option<Instant>,
    batch_changes: usize,
    last_end: Lsn,
    durable: Lsn,
    /// Last position written to the job's state.
    recorded: Lsn,
    in_source_txn: bool,
    stats: ApplyStats,
    /// Commit LSN (`final_lsn`) of the source transaction being received.
    txn_final: Lsn,
    /// Map entries as they were before the changes not yet durable, oldest
    /// first: (the change's `txn_final`, key, previous uuid or `None` when
    /// absent). See [`Applier::revert_map_after`].
    map_undo: Vec<(Lsn, i64, Option<uuid::Uuid>)>,
    /// The source transaction being received (see [`txn`]).
    txn: TxnState,
    /// The durable copy of the map (see [`Applier::persist_map_to`]) and
    /// its prepared upsert.
    durable_map: Option<(String, Option<Statement>)>,
    /// Keys whose map entry changed in the open shadow transaction and
    /// are not yet written to the durable map (see [`Applier::persist_dirty`]).
    map_dirty: Vec<i64>,
    /// Tables applied set-wise, and how ([`batch`]).
    batching: HashMap<u32, batch::TableBatching>,
    /// Changes held until the next barrier ([`batch::Window`]).
    window: batch::Window,
    /// Prepared set statements.
    set_stmts: HashMap<(u32, StatementShape), Statement>,
    /// Tables copied under a later snapshot than the stream's start, and
    /// the position from which the stream applies to each (see
    /// [`Applier::apply_from`]).
    synced: HashMap<u32, Lsn>,
    /// Tables of the way back, by their (live) oid ([`Applier::add_reverse`]).
    reverse: HashMap<u32, Reverse>,
    /// Tables of the way back whose set-wise plan is not read yet (their
    /// old table may not exist before the swap commits).
    unplanned: HashSet<u32>,
}

impl Applier {
    /// Prepare an applier on a dedicated session. `applied` is the job's
    /// recorded applied LSN (the consistent point for a fresh job).
    pub async fn new(
        client: Client,
        job_id: uuid::Uuid,
        tables: Vec<TableSpec>,
        parent: ParentSpec,
        map: IdMap,
        applied: Lsn,
        limits: BatchLimits,
    ) -> Result<Applier, Error> {
        client
            .batch_execute("SET session_replication_role = replica; SET synchronous_commit = on")
            .await
            .map_err(Error::db(
                "set session_replication_role = replica on the apply session (needs superuser, or on PostgreSQL 15+ GRANT SET ON PARAMETER session_replication_role TO <role>)",
            ))?;
        let batching = batch_plan(&client, &tables).await?;
        Ok(Applier {
            client: Arc::new(client),
            in_flight: VecDeque::new(),
            job_id,
            tables: tables
                .into_iter()
                .map(|s| {
                    (
                        s.oid,
                        TableState {
                            spec: s,
                            bound: None,
                        },
                    )
                })
                .collect(),
            parent,
            parent_cols: None,
            map,
            stmts: HashMap::new(),
            limits,
            skip_before: applied,
            skipping: false,
            cur_lsn: applied,
            open_since: None,
            batch_changes: 0,
            last_end: applied,
            durable: applied,
            recorded: applied,
            in_source_txn: false,
            stats: ApplyStats::default(),
            txn_final: applied,
            map_undo: Vec::new(),
            txn: TxnState::default(),
            durable_map: None,
            map_dirty: Vec::new(),
            batching,
            window: batch::Window::default(),
            set_stmts: HashMap::new(),
            synced: HashMap::new(),
            reverse: HashMap::new(),
            unplanned: HashSet::new(),
        })
    }

    /// Register the tables of the way back after cutover: each spec from
    /// [`TableSpec::reversed`] (keyed by the live table's oid, beside the
    /// forward specs, which stay registered — the publication decides which
    /// of a table's two oids streams). Changes of the live uuid table are
    /// then applied to the old integer table, every uuid reference
    /// translated back to the parent's key with the forward direction's
    /// guarantees (module docs, "The way back"). Turns on the map's uuid →
    /// key index. Nothing is read or prepared here: the old table may not
    /// exist before the swap commits; statements and the set-wise plan are
    /// made at first use.
    pub async fn add_reverse(&mut self, specs: Vec<TableSpec>) -> Result<(), Error> {
        for s in specs {
            if !s.is_reverse() || s.reference_columns().any(|c| !c.reads_uuid()) {
                return Err(Error::Config(format!(
                    "{} (oid {}): not a spec of the way back, its reference columns are not all uuid (build it with TableSpec::reversed)",
                    s.source, s.oid
                )));
            }
            if s.oid == self.parent.oid
                || self
                    .tables
                    .get(&s.oid)
                    .is_some_and(|t| !t.spec.is_reverse())
            {
                return Err(Error::Config(format!(
                    "{} (oid {}): that oid is already the parent or a forward table of this job",
                    s.source, s.oid
                )));
            }
            let forward = self
                .tables
                .values()
                .find(|t| !t.spec.is_reverse() && t.spec.source == s.source)
                .map(|t| t.spec.oid);
            self.reverse.insert(
                s.oid,
                Reverse {
                    forward,
                    active: false,
                },
            );
            self.unplanned.insert(s.oid);
            self.batching.remove(&s.oid);
            self.tables.insert(
                s.oid,
                TableState {
                    spec: s,
                    bound: None,
                },
            );
        }
        self.map.enable_reverse();
        Ok(())
    }

    /// Whether tables of the way back are registered.
    fn reversing(&self) -> bool {
        !self.reverse.is_empty()
    }

    /// Whether the table written for `spec` takes the work that spans
    /// tables at this point of the stream (re-pointing after a parent's
    /// change, the orphan check at commit): a table of the way back once
    /// the swap committed; a forward table until then (and from its own
    /// synchronisation point, see [`Applier::apply_from`]).
    fn writes(&self, spec: &TableSpec) -> bool {
        match self.reverse.get(&spec.oid) {
            Some(r) => r.active,
            None => {
                self.live(spec.oid)
                    && !self
                        .reverse
                        .values()
                        .any(|r| r.active && r.forward == Some(spec.oid))
            }
        }
    }

    /// Before work that spans tables: find out whether the swap of a table
    /// of the way back has committed, when no change of its live table said
    /// so yet. The parent is locked from before the cutover's fence until
    /// the swap ends, so a parent change after the fence is applied only
    /// once the swap has committed or rolled back, and one before it was
    /// applied before the swap could commit (the drain waits for it): the
    /// catalog read now answers for this point of the stream. Committed
    /// means the old table exists and the forward shadow (renamed to the
    /// live table) no longer does.
    async fn settle_directions(&mut self) -> Result<(), Error> {
        let pending: Vec<(u32, String, Option<String>)> = self
            .reverse
            .iter()
            .map(|(oid, r)| {
                (
                    *oid,
                    self.tables[oid].spec.shadow.quoted(),
                    r.forward
                        .and_then(|f| self.tables.get(&f))
                        .map(|t| t.spec.shadow.quoted()),
                )
            })
            .collect();
        for (oid, old, forward) in pending {
            let row = self
                .client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
                    &[&old, &forward],
                )
                .await
                .map_err(Error::db(format!(
                    "look for {old} (is the way back live yet?) at LSN {}",
                    self.cur_lsn
                )))?;
            let (old_exists, forward_exists): (bool, bool) = (row.get(0), row.get(1));
            if old_exists && !forward_exists {
                self.activate(oid);
            } else if forward_exists && !old_exists {
                // Rolled back: the old table holds its name again.
                self.set_back(oid, false);
            }
        }
        Ok(())
    }

    /// The swap of a table of the way back has committed (a change of its
    /// live table says so); or a rollback has (a change of its forward
    /// source does).
    fn activate(&mut self, oid: u32) {
        if self.reverse.contains_key(&oid) {
            self.set_back(oid, true);
        } else if let Some(live) = self
            .reverse
            .iter()
            .find(|(_, r)| r.active && r.forward == Some(oid))
            .map(|(l, _)| *l)
        {
            self.set_back(live, false);
        }
    }

    /// Which way the table whose live (uuid) table has OID `live_oid` goes
    /// from this point of the stream: `back` after a cutover with a way
    /// back, forward after a rollback (or before any cutover). The caller
    /// that sees the swap's own fence in the stream (see
    /// [`crate::way_back`]) sets it exactly; a row change of either table
    /// sets it too.
    pub fn set_back(&mut self, live_oid: u32, back: bool) {
        let lsn = self.cur_lsn;
        let Some(r) = self.reverse.get_mut(&live_oid) else {
            return;
        };
        if r.active != back {
            r.active = back;
            let table = self.tables[&live_oid].spec.source.clone();
            if back {
                tracing::info!(table = %table, lsn = %lsn,
                    "the way back is live: changes of the new table go to the old one");
            } else {
                tracing::info!(table = %table, lsn = %lsn,
                    "rolled back: changes of the original table go to the uuid table again");
            }
        }
    }

    /// Read the set-wise plan of a table of the way back at its first
    /// change (its old table exists by then; if not, nothing is decided and
    /// the statement's own prepare reports it).
    async fn plan_reverse(&mut self, oid: u32) -> Result<(), Error> {
        let spec = self.tables[&oid].spec.clone();
        let exists = self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&spec.shadow.quoted()],
            )
            .await;
        let plan = match exists {
            Ok(row) if row.get::<_, bool>(0) => batch_plan(&self.client, &[spec]).await,
            Ok(_) => return Ok(()),
            Err(e) => Err(Error::db(format!("look for {}", spec.shadow))(e)),
        };
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                // A change in flight may have failed first.
                self.settle_in_flight().await?;
                return Err(e);
            }
        };
        self.batching.extend(plan);
        self.unplanned.remove(&oid);
        Ok(())
    }

    /// Apply the changes of table `oid` only from source transactions that
    /// commit at or after `lsn`: the table was copied under a snapshot
    /// taken at `lsn` (a copy resumed after its process died, see
    /// [`crate::resume`]), which holds every transaction committed before
    /// it and none after — the rule PostgreSQL's own table synchronisation
    /// follows (a change is applied when the table's sync position is at
    /// most the transaction's commit LSN). Skipped for that table before
    /// `lsn`: its row changes, the re-pointing of a parent's uuid change
    /// (its copy translated every reference through the uuids at `lsn`) and
    /// the orphan check at commit. The parent's changes always go to the
    /// map.
    pub fn apply_from(&mut self, oid: u32, lsn: Lsn) {
        self.synced.insert(oid, lsn);
    }

    /// Whether the current source transaction applies to table `oid`
    /// (see [`Applier::apply_from`]).
    fn live(&self, oid: u32) -> bool {
        applies(self.synced.get(&oid).copied(), self.txn_final)
    }

    /// Write every change of the map into `table` (columns `key`, `uuid`)
    /// inside the shadow transaction that records the applied position, so
    /// the table is the map as of `applied_lsn` after any crash (see
    /// [`crate::resume`]).
    pub fn persist_map_to(&mut self, table: &crate::pg::QualifiedName) {
        self.durable_map = Some((table.quoted(), None));
    }

    /// Remember that `key`'s map entry changed in this shadow transaction
    /// (only when the map is persisted).
    fn mark_dirty(&mut self, key: i64) {
        if self.durable_map.is_some() {
            self.map_dirty.push(key);
        }
    }

    /// Write the entries of the keys changed since the last call into the
    /// durable map, as the in-memory map holds them now (an upsert, or a
    /// delete of a key that left the map), pipelined in the open shadow
    /// transaction (opened if need be: a source transaction that changed
    /// only the parent still records its map change with its position).
    /// Only the final state of each key matters, so the order is free.
    async fn persist_dirty(&mut self) -> Result<(), Error> {
        if self.map_dirty.is_empty() {
            return Ok(());
        }
        let mut keys = std::mem::take(&mut self.map_dirty);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let uuid = self.map.get(key);
            self.persist_map_change(key, uuid).await?;
        }
        Ok(())
    }

    /// Send one durable-map change (`Some`: upsert, `None`: delete),
    /// pipelined with the row changes of the open shadow transaction.
    async fn persist_map_change(
        &mut self,
        key: i64,
        uuid: Option<uuid::Uuid>,
    ) -> Result<(), Error> {
        let Some((table, stmt)) = self.durable_map.clone() else {
            return Ok(());
        };
        self.begin().await?;
        let stmt = match stmt {
            Some(s) => s,
            None => {
                let text = format!(
                    "WITH gone AS (DELETE FROM {table} WHERE key = $1 AND $2::uuid IS NULL)
                     INSERT INTO {table} (key, uuid) SELECT $1, $2 WHERE $2::uuid IS NOT NULL
                     ON CONFLICT (key) DO UPDATE SET uuid = EXCLUDED.uuid"
                );
                let s = match self.client.prepare(&text).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.settle().await?;
                        return Err(Error::db(format!("prepare the change of {table}"))(e));
                    }
                };
                self.durable_map = Some((table, Some(s.clone())));
                s
            }
        };
        let client = self.client.clone();
        let mut answer: Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>> =
            Box::pin(async move { client.execute(&stmt, &[&key, &uuid]).await });
        let waker = futures_util::task::noop_waker();
        let first = answer.as_mut().poll(&mut Context::from_waker(&waker));
        self.in_flight.push_back(InFlight {
            answer: match first {
                Poll::Ready(r) => Box::pin(std::future::ready(r)),
                Poll::Pending => answer,
            },
            oid: self.parent.oid,
            lsn: self.cur_lsn,
            must_hit: None,
            rows: 1,
            last_lsn: self.cur_lsn,
        });
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> ApplyStats {
        self.stats
    }

    /// End LSN of the last source commit that is durably applied (safe to confirm).
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Whether a shadow transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open_since.is_some()
    }

    /// Whether the open shadow transaction should be committed now.
    pub fn should_flush(&self) -> bool {
        match self.open_since {
            Some(t) => {
                self.batch_changes >= self.limits.max_changes || t.elapsed() >= self.limits.max_age
            }
            None => false,
        }
    }

    /// Apply one message. `lsn` is the XLogData start position (for errors).
    pub async fn handle(&mut self, msg: LogicalMessage, lsn: Lsn) -> Result<Applied, Error> {
        self.cur_lsn = lsn;
        match msg {
            LogicalMessage::Begin(b) => {
                // A transaction whose commit record precedes the recorded
                // applied position was committed to the shadow before a restart.
                self.skipping = b.final_lsn < self.skip_before;
                self.in_source_txn = true;
                self.txn_final = b.final_lsn;
                self.txn = TxnState::default();
                Ok(Applied::Nothing)
            }
            LogicalMessage::Commit(c) => {
                if !self.skipping {
                    self.resolve_at_commit(c.commit_lsn).await?;
                    // The map as of this commit goes into the same shadow
                    // transaction as the position that records it.
                    self.persist_dirty().await?;
                }
                self.txn = TxnState::default();
                self.stats.transactions += 1;
                self.in_source_txn = false;
                if c.end_lsn > self.last_end {
                    self.last_end = c.end_lsn;
                }
                if self.skipping {
                    self.skipping = false;
                } else if self.open_since.is_none() && self.last_end > self.durable {
                    // Nothing of ours was open: this commit needs no shadow write.
                    self.durable = self.last_end;
                    self.map_undo.clear();
                }
                Ok(Applied::Committed(c.end_lsn))
            }
            // Relations are bound even in a skipped transaction (later ones
            // need them); in a held one they keep their place in the order.
            LogicalMessage::Relation(r) if self.txn.buffer.is_none() => {
                self.relation(&r).map(|_| Applied::Nothing)
            }
            LogicalMessage::Message(m) if m.prefix == FENCE_PREFIX => Ok(Applied::Fence(
                String::from_utf8_lossy(&m.content).into_owned(),
            )),
            LogicalMessage::Message(_) | LogicalMessage::Origin(_) | LogicalMessage::Type(_) => {
                Ok(Applied::Nothing)
            }
            _ if self.skipping => Ok(Applied::Nothing),
            msg => {
                if self.txn.buffer.is_some() {
                    self.hold(msg, lsn)?;
                } else if self.change(&msg).await? == Step::Unresolved {
                    tracing::debug!(lsn = %lsn, commit = %self.txn_final,
                        "a reference to a parent not seen yet; holding the rest of the transaction until its commit");
                    self.txn.buffer = Some(Buffer::new(self.limits.max_txn_buffer));
                    self.hold(msg, lsn)?;
                }
                Ok(Applied::Nothing)
            }
        }
    }

    /// Keep a message of the held transaction for its commit.
    fn hold(&mut self, msg: LogicalMessage, lsn: Lsn) -> Result<(), Error> {
        let Some(buf) = self.txn.buffer.as_mut() else {
            return Ok(());
        };
        buf.push(msg, lsn).map_err(|bytes| {
            Error::Data(format!(
                "the transaction committing at LSN {} references a parent row it inserts later, and the rest of it ({} at LSN {lsn}) exceeds the {} pg-rekey holds in memory to resolve references at commit; load such data parents first or in smaller transactions, then `pg-rekey abort` and start the rewrite again (embedding pg-rekey as a library: BatchLimits::max_txn_buffer sets the bound)",
                self.txn_final,
                crate::progress::format_bytes(bytes as u64),
                crate::progress::format_bytes(self.limits.max_txn_buffer as u64),
            ))
        })
    }

    /// At a source transaction's commit: replay what was held (every parent
    /// row of the transaction is known now), then check that no reference
    /// it wrote points at a parent it deleted.
    async fn resolve_at_commit(&mut self, commit_lsn: Lsn) -> Result<(), Error> {
        if let Some(buf) = self.txn.buffer.take() {
            let held = buf.bytes();
            let msgs = buf.into_messages();
            tracing::debug!(messages = msgs.len(), bytes = held, commit = %commit_lsn, "replaying a held transaction at its commit");
            self.txn.ahead = Some(Lookahead::build(
                &msgs,
                self.parent.oid,
                self.parent_cols,
                (&self.parent.key_column, &self.parent.uuid_column),
            ));
            for (i, (msg, lsn)) in msgs.into_iter().enumerate() {
                self.cur_lsn = lsn;
                if let Some(a) = self.txn.ahead.as_mut() {
                    a.pos = i;
                }
                // With the lookahead every reference resolves or is an error.
                self.change(&msg).await?;
            }
            self.txn.ahead = None;
        }
        self.cur_lsn = commit_lsn;
        let candidates = self.txn.keys.orphan_candidates();
        let back = if self.reversing() {
            self.txn.uuids.orphan_candidates()
        } else {
            Vec::new()
        };
        if candidates.is_empty() && back.is_empty() {
            return Ok(());
        }
        // The checks read the shadow after every change of the transaction.
        self.settle().await?;
        self.settle_directions().await?;
        for (key, uuid) in candidates {
            let held = self
                .still_referenced(false, &translate::Param::Uuid(uuid), commit_lsn)
                .await?;
            if let Some((table, column)) = held {
                return Err(data(TranslateError::OrphanAtCommit {
                    table,
                    column,
                    value: key,
                    lsn: commit_lsn,
                }));
            }
        }
        // The way back: old-table rows still holding the key a uuid this
        // transaction deleted had (and no other uuid holds now).
        for (uuid, key) in back {
            let held = self
                .still_referenced(true, &translate::Param::Int(key), commit_lsn)
                .await?;
            if let Some((table, column)) = held {
                return Err(data(TranslateError::OrphanUuidAtCommit {
                    table,
                    column,
                    value: uuid,
                    lsn: commit_lsn,
                }));
            }
        }
        Ok(())
    }

    /// The first table and reference column (written in this direction:
    /// `back`, the old tables by key; else the shadows by uuid) with a row
    /// still holding `value`: the commit-time orphan check.
    async fn still_referenced(
        &mut self,
        back: bool,
        value: &translate::Param,
        commit_lsn: Lsn,
    ) -> Result<Option<(String, String)>, Error> {
        let mut checks = Vec::new();
        for t in self.tables.values() {
            if t.spec.is_reverse() != back || !self.writes(&t.spec) {
                continue;
            }
            for (pos, c) in t.spec.columns.iter().enumerate() {
                if c.reference.is_none() {
                    continue;
                }
                let text = if back {
                    sql::references_key(&t.spec, pos)
                } else {
                    sql::references_uuid(&t.spec, pos)
                };
                checks.push((
                    text,
                    t.spec.source.to_string(),
                    c.name.clone(),
                    t.spec.shadow.to_string(),
                ));
            }
        }
        for (text, table, column, written) in checks {
            let found: bool = self
                .client
                .query_one(text.as_str(), &[value])
                .await
                .map_err(Error::db(format!(
                    "check {written} for references to a deleted parent at LSN {commit_lsn}"
                )))?
                .get(0);
            if found {
                return Ok(Some((table, column)));
            }
        }
        Ok(None)
    }

    /// Apply one row change (or relation) of the current transaction.
    /// `Unresolved`: a reference to a parent key not known yet, outside a
    /// replay — nothing was applied; the caller holds the rest of the
    /// transaction.
    async fn change(&mut self, msg: &LogicalMessage) -> Result<Step, Error> {
        let lsn = self.cur_lsn;
        let parent = self.parent.oid;
        let row_of = match msg {
            LogicalMessage::Insert(i) => Some(i.relation),
            LogicalMessage::Update(u) => Some(u.relation),
            LogicalMessage::Delete(d) => Some(d.relation),
            _ => None,
        };
        if row_of.is_some_and(|oid| !self.live(oid)) {
            // In this table's copy already (see `apply_from`).
            return Ok(Step::Done);
        }
        if let Some(oid) = row_of {
            // A change of the live table: its swap has committed.
            self.activate(oid);
        }
        let (oid, translated, must_hit) = match msg {
            LogicalMessage::Relation(r) => {
                self.relation(r)?;
                return Ok(Step::Done);
            }
            LogicalMessage::Truncate(t) => {
                let names: Vec<String> = t
                    .relations
                    .iter()
                    .filter_map(|oid| {
                        if *oid == self.parent.oid {
                            Some(self.parent.table.to_string())
                        } else if self.live(*oid) {
                            self.tables.get(oid).map(|s| s.spec.source.to_string())
                        } else {
                            None
                        }
                    })
                    .collect();
                if names.is_empty() {
                    return Ok(Step::Done);
                }
                return Err(Error::Data(format!(
                    "TRUNCATE of {} at LSN {lsn}: pg-rekey never empties a shadow on its own; the job stopped with the shadow as it was. Run `pg-rekey abort` and start the rewrite again",
                    names.join(", ")
                )));
            }
            LogicalMessage::Insert(i) if i.relation == parent => {
                self.parent_row(None, &i.new, false).await?;
                return Ok(Step::Done);
            }
            LogicalMessage::Update(u) if u.relation == parent => {
                self.parent_row(u.old.as_ref(), &u.new, true).await?;
                return Ok(Step::Done);
            }
            LogicalMessage::Delete(d) if d.relation == parent => {
                self.parent_delete(d.old.tuple())?;
                return Ok(Step::Done);
            }
            LogicalMessage::Insert(i) => (
                i.relation,
                self.translate(i.relation, |tr| {
                    let (shape, params) = tr.insert(&i.new)?;
                    Ok((shape, params, tr.references(&i.new).collect::<Vec<_>>()))
                })?,
                false,
            ),
            LogicalMessage::Update(u) => (
                u.relation,
                self.translate(u.relation, |tr| {
                    let (shape, params) = tr.update(u.old.as_ref(), &u.new)?;
                    Ok((shape, params, tr.references(&u.new).collect::<Vec<_>>()))
                })?,
                true,
            ),
            LogicalMessage::Delete(d) => (
                d.relation,
                self.translate(d.relation, |tr| {
                    let (shape, params) = tr.delete(&d.old)?;
                    Ok((shape, params, Vec::new()))
                })?,
                true,
            ),
            _ => return Ok(Step::Done),
        };
        let (shape, params, written) = match translated {
            Ok(t) => t,
            Err(TranslateError::Orphan { .. } | TranslateError::OrphanUuid { .. })
                if self.txn.ahead.is_none() =>
            {
                return Ok(Step::Unresolved)
            }
            Err(e) => return Err(data(e)),
        };
        for r in written {
            match r {
                ParentRef::Key(key) => self.txn.keys.record_written(key),
                ParentRef::Uuid(uuid) => self.txn.uuids.record_written(uuid),
            }
        }
        self.exec(oid, shape, params, must_hit).await?;
        Ok(Step::Done)
    }

    fn relation(&mut self, r: &Relation) -> Result<(), Error> {
        let lsn = self.cur_lsn;
        if r.oid == self.parent.oid {
            let find = |name: &str| r.columns.iter().position(|c| c.name == name);
            match (
                find(&self.parent.key_column),
                find(&self.parent.uuid_column),
            ) {
                (Some(k), Some(u)) => self.parent_cols = Some((k, u)),
                _ => {
                    return Err(data(TranslateError::ShapeChanged {
                        table: self.parent.table.to_string(),
                        detail: format!(
                            "the stream no longer sends {:?} and {:?}",
                            self.parent.key_column, self.parent.uuid_column
                        ),
                        lsn,
                    }))
                }
            }
            return Ok(());
        }
        if let Some(t) = self.tables.get_mut(&r.oid) {
            let bound = bind_relation(&t.spec, r, lsn).map_err(data)?;
            t.bound = Some(bound);
            // Statements prepared for an older shape stay valid: the shape is the same.
            // The live table is published only from its swap's commit on.
            self.activate(r.oid);
        }
        Ok(())
    }

    /// Run `f` with the translator of table `oid`, references resolved as of
    /// this point of the transaction ([`TxnLookup`]). The outer error: the
    /// change cannot be attributed at all.
    fn translate<T>(
        &self,
        oid: u32,
        f: impl FnOnce(&RowTranslator<'_, TxnLookup<'_>>) -> Result<T, TranslateError>,
    ) -> Result<Result<T, TranslateError>, Error> {
        let t = self.tables.get(&oid).ok_or_else(|| {
            Error::Data(format!(
                "a change for relation oid {oid} at LSN {}, which this job does not rewrite; is another table in publication of this job?",
                self.cur_lsn
            ))
        })?;
        let bound = t.bound.as_ref().ok_or_else(|| {
            Error::Data(format!(
                "a change for {} at LSN {} before its Relation message",
                t.spec.source, self.cur_lsn
            ))
        })?;
        let lookup = TxnLookup {
            map: &self.map,
            deleted: self.txn.keys.deleted(),
            deleted_uuids: self.txn.uuids.deleted(),
            ahead: self.txn.ahead.as_ref(),
        };
        Ok(f(&RowTranslator {
            spec: &t.spec,
            bound,
            map: &lookup,
            lsn: self.cur_lsn,
        }))
    }

    fn parent_cols(&self) -> Result<(usize, usize), Error> {
        self.parent_cols.ok_or_else(|| {
            Error::Data(format!(
                "a change for {} at LSN {} before its Relation message",
                self.parent.table, self.cur_lsn
            ))
        })
    }

    /// Keep the map current from a parent row (insert or update; `old` is
    /// an update's old key or row). On a changed uuid, re-point the shadow
    /// rows written with the old one.
    async fn parent_row(
        &mut self,
        old: Option<&crate::replication::pgoutput::OldRow>,
        tuple: &crate::replication::pgoutput::Tuple,
        is_update: bool,
    ) -> Result<(), Error> {
        let (k, u) = self.parent_cols()?;
        let (key, uuid) = match parent_entry(tuple, k, u) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(()),
            Err(why) => {
                return Err(Error::Data(format!(
                    "{} at LSN {}: {why}",
                    self.parent.table, self.cur_lsn
                )))
            }
        };
        let before = self.map.get(key);
        // A key change: the old key is gone (as if deleted).
        if let Some(old_key) = old.and_then(|o| parent_key(o.tuple(), k)) {
            if old_key != key {
                self.parent_delete_key(old_key);
            }
        }
        // The way back, the same with key and uuid exchanged: a uuid change
        // takes the old uuid away (as if deleted, with this key); a uuid
        // deleted earlier in this transaction (its row deleted, or its key
        // changed just now) and held again under another key re-points the
        // old table's rows from the key it had to this one.
        let back = if self.reversing() {
            if let Some(prev) = before.filter(|p| *p != uuid) {
                self.txn.uuids.delete(prev, key);
            }
            self.txn.uuids.holds(uuid, key);
            self.txn.uuids.undelete(uuid).filter(|had| *had != key)
        } else {
            None
        };
        self.txn.keys.holds(key, uuid);
        // Deleted earlier in this transaction and back now: references the
        // transaction wrote to the key in between are the new row's at commit.
        let forward = if let Some(gone) = self.txn.keys.undelete(key) {
            self.map_set(key, uuid);
            (gone != uuid).then_some(gone)
        } else {
            if before != Some(uuid) {
                self.map_set(key, uuid);
            }
            match before {
                Some(old) if is_update && old != uuid => Some(old),
                _ => None,
            }
        };
        if let Some(old) = forward {
            self.follow_uuid_change(old, uuid).await?;
        }
        if let Some(had) = back {
            self.follow_key_change(had, key).await?;
        }
        Ok(())
    }

    /// A parent row was deleted: its key leaves the map (the uuid is kept
    /// for the rest of the transaction, see [`TxnState::deleted`]).
    fn parent_delete(&mut self, old: &crate::replication::pgoutput::Tuple) -> Result<(), Error> {
        let (k, _) = self.parent_cols()?;
        match parent_key(old, k) {
            Some(key) => self.parent_delete_key(key),
            // The replica identity does not carry the key: nothing to remove.
            None => tracing::debug!(parent = %self.parent.table, lsn = %self.cur_lsn,
                "a parent delete without its key column; the key stays in the map"),
        }
        Ok(())
    }

    fn parent_delete_key(&mut self, key: i64) {
        if let Some(uuid) = self.map.get(key) {
            self.map_undo.push((self.txn_final, key, Some(uuid)));
            self.map.remove(key);
            self.mark_dirty(key);
            self.txn.keys.delete(key, uuid);
            if self.reversing() {
                self.txn.uuids.delete(uuid, key);
            }
        }
    }

    /// Set a map entry, remembering the previous one (see [`Applier::revert_map_after`]).
    fn map_set(&mut self, key: i64, uuid: uuid::Uuid) {
        self.map_undo.push((self.txn_final, key, self.map.get(key)));
        self.map.upsert(key, uuid);
        self.mark_dirty(key);
    }

    /// `UPDATE shadow SET ref = new WHERE ref = old` for every reference
    /// column, inside the open shadow transaction. Rare (a parent's uuid
    /// changed), so the statements are not cached.
    async fn follow_uuid_change(&mut self, old: uuid::Uuid, new: uuid::Uuid) -> Result<(), Error> {
        self.begin().await?;
        // The rows written so far must be in the shadow to be re-pointed.
        self.send_window().await?;
        if self.reversing() {
            self.settle_directions().await?;
        }
        let (new, old) = (translate::Param::Uuid(new), translate::Param::Uuid(old));
        let rows = self.repoint(false, &new, &old).await?;
        tracing::debug!(parent = %self.parent.table, rows, lsn = %self.cur_lsn, "followed a parent uuid change");
        Ok(())
    }

    /// `UPDATE … SET ref = $1 WHERE ref = $2` for every reference column of
    /// every table written in this direction (`back`: the old tables, by
    /// key; else the shadows, by uuid) that takes the work spanning tables
    /// at this point (see [`Applier::writes`]). Returns the rows re-pointed.
    async fn repoint(
        &mut self,
        back: bool,
        new: &translate::Param,
        old: &translate::Param,
    ) -> Result<u64, Error> {
        let what = if back { "key" } else { "uuid" };
        let mut rows = 0;
        for t in self.tables.values() {
            if t.spec.is_reverse() != back || !self.writes(&t.spec) {
                continue;
            }
            for (pos, _) in t
                .spec
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.reference.is_some())
            {
                let text = if back {
                    sql::follow_key_change(&t.spec, pos)
                } else {
                    sql::follow_uuid_change(&t.spec, pos)
                };
                rows += self
                    .client
                    .execute(text.as_str(), &[new, old])
                    .await
                    .map_err(Error::db(format!(
                        "re-point {} to a changed {what} of {} at LSN {}",
                        t.spec.shadow, self.parent.table, self.cur_lsn
                    )))?;
            }
        }
        self.batch_changes += 1;
        self.stats.changes += rows;
        Ok(rows)
    }

    /// The way back: `UPDATE old SET ref = new WHERE ref = old` for every
    /// reference column of every table of the way back whose swap has
    /// committed — a parent row's key changed (its uuid kept), so the rows
    /// the old table holds with the old key are the new key's (see "The
    /// way back" in the module docs). Rare, so not cached.
    async fn follow_key_change(&mut self, old: i64, new: i64) -> Result<(), Error> {
        self.begin().await?;
        self.send_window().await?;
        self.settle_directions().await?;
        let (new, old) = (translate::Param::Int(new), translate::Param::Int(old));
        let rows = self.repoint(true, &new, &old).await?;
        tracing::debug!(parent = %self.parent.table, rows, lsn = %self.cur_lsn, "followed a parent key change on the way back");
        Ok(())
    }

    /// Open a shadow transaction if none is open.
    async fn begin(&mut self) -> Result<(), Error> {
        if self.open_since.is_none() {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(Error::db("begin a shadow transaction"))?;
            self.open_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Apply a translated change: held in the [`batch::Window`] when its
    /// table is applied set-wise and the change names one row, else sent
    /// alone after everything held.
    async fn exec(
        &mut self,
        oid: u32,
        shape: StatementShape,
        params: Vec<translate::Param>,
        must_hit: bool,
    ) -> Result<Applied, Error> {
        self.begin().await?;
        if self.unplanned.contains(&oid) {
            self.plan_reverse(oid).await?;
        }
        self.batch_changes += 1;
        self.stats.changes += 1;
        let lsn = self.cur_lsn;
        if let Some(key) = self
            .batching
            .get(&oid)
            .and_then(|b| b.row_key(&shape, &params))
        {
            self.window
                .push(oid, key, batch::Change { shape, params, lsn });
            if self.window.len() >= batch::MAX_WINDOW {
                self.send_window().await?;
            }
            return Ok(Applied::Nothing);
        }
        self.send_window().await?;
        self.send_single(oid, shape, params, must_hit, lsn).await?;
        Ok(Applied::Nothing)
    }

    /// Send everything the window holds, as runs ([`batch::Window::drain`]).
    /// Call before anything that must see the changes applied so far.
    async fn send_window(&mut self) -> Result<(), Error> {
        if self.window.is_empty() {
            return Ok(());
        }
        for mut run in self.window.drain() {
            let must_hit = !matches!(run.shape, StatementShape::Insert);
            if run.changes.len() == 1 {
                let c = run.changes.pop().expect("one change");
                self.send_single(run.oid, c.shape, c.params, must_hit, c.lsn)
                    .await?;
                continue;
            }
            let key = (run.oid, run.shape.clone());
            let stmt = match self.set_stmts.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let spec = &self.tables[&run.oid].spec;
                    let text = batch::set_statement(spec, &key.1);
                    let shadow = spec.shadow.to_string();
                    let s = match self.client.prepare(&text).await {
                        Ok(s) => s,
                        Err(e) => {
                            self.settle_in_flight().await?;
                            return Err(Error::db(format!(
                                "prepare the set apply statement for {shadow}"
                            ))(e));
                        }
                    };
                    self.set_stmts.insert(key, s.clone());
                    s
                }
            };
            let first = run.changes[0].lsn;
            let last = run.changes[run.changes.len() - 1].lsn;
            let rows = run.changes.len() as u64;
            let what = must_hit.then_some(if matches!(run.shape, StatementShape::Delete { .. }) {
                "DELETE"
            } else {
                "UPDATE"
            });
            self.send(
                stmt,
                batch::columns(&run),
                run.oid,
                (first, last),
                what,
                rows,
            )
            .await?;
        }
        Ok(())
    }

    /// Send one change as its own statement.
    async fn send_single(
        &mut self,
        oid: u32,
        shape: StatementShape,
        params: Vec<translate::Param>,
        must_hit: bool,
        lsn: Lsn,
    ) -> Result<(), Error> {
        let key = (oid, shape);
        let stmt = match self.stmts.get(&key) {
            Some(s) => s.clone(),
            None => {
                let spec = &self.tables[&oid].spec;
                let text = sql::statement(spec, &key.1);
                let shadow = spec.shadow.to_string();
                let s = match self.client.prepare(&text).await {
                    Ok(s) => s,
                    Err(e) => {
                        // A change in flight may have failed first (then the
                        // prepare only reports the aborted transaction).
                        self.settle_in_flight().await?;
                        return Err(Error::db(format!(
                            "prepare the apply statement for {shadow}"
                        ))(e));
                    }
                };
                self.stmts.insert(key.clone(), s.clone());
                s
            }
        };
        let must_hit = must_hit.then_some(if matches!(key.1, StatementShape::Delete { .. }) {
            "DELETE"
        } else {
            "UPDATE"
        });
        self.send(stmt, params, oid, (lsn, lsn), must_hit, 1).await
    }

    /// Send a prepared statement without waiting for its answer (read later
    /// by [`Applier::settle_one`], in order).
    async fn send<P>(
        &mut self,
        stmt: Statement,
        params: Vec<P>,
        oid: u32,
        (lsn, last_lsn): (Lsn, Lsn),
        must_hit: Option<&'static str>,
        rows: u64,
    ) -> Result<(), Error>
    where
        P: tokio_postgres::types::ToSql + Sync + Send + 'static,
    {
        let client = self.client.clone();
        let mut answer: Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>> =
            Box::pin(async move {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                client.execute(&stmt, &refs).await
            });
        // The first poll writes the request (tokio-postgres sends when a
        // query future is first polled) and then waits for the answer, which
        // is read later by `settle`, in order. A no-op waker is enough here:
        // `settle` polls again with the real one.
        let waker = futures_util::task::noop_waker();
        let first = answer.as_mut().poll(&mut Context::from_waker(&waker));
        let pending = InFlight {
            answer: match first {
                Poll::Ready(r) => Box::pin(std::future::ready(r)),
                Poll::Pending => answer,
            },
            oid,
            lsn,
            must_hit,
            rows,
            last_lsn,
        };
        self.in_flight.push_back(pending);
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Read the answer of the oldest change in flight and check it.
    async fn settle_one(&mut self) -> Result<(), Error> {
        let Some(p) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (shadow, source) = match self.tables.get(&p.oid) {
            Some(t) => (t.spec.shadow.to_string(), t.spec.source.to_string()),
            None => (format!("oid {}", p.oid), format!("oid {}", p.oid)),
        };
        let n = p.answer.await.map_err(|e| {
            // Later changes of the transaction were rejected because of this
            // one; they are dropped with it.
            self.in_flight.clear();
            self.window.clear();
            Error::Db {
                context: if p.rows == 1 {
                    format!("apply a change at LSN {} to {shadow}", p.lsn)
                } else {
                    format!(
                        "apply {} changes (LSN {} … {}, one set statement) to {shadow}",
                        p.rows, p.lsn, p.last_lsn
                    )
                },
                source: e,
            }
        })?;
        match p.must_hit {
            Some(what) if n < p.rows => {
                self.in_flight.clear();
                self.window.clear();
                let which = if p.rows == 1 {
                    String::new()
                } else {
                    format!(
                        " for {} of the {} changes sent as one statement (LSN {} … {})",
                        p.rows - n,
                        p.rows,
                        p.lsn,
                        p.last_lsn
                    )
                };
                Err(Error::Data(format!(
                    "{what} at LSN {} found no row in {shadow} (shadow of {source}){which}: the shadow has diverged from the source; run `pg-rekey verify`, then `pg-rekey abort` and start again",
                    p.lsn
                )))
            }
            _ => Ok(()),
        }
    }

    /// Send the window, then read and check the answers of every change in
    /// flight, in order.
    async fn settle(&mut self) -> Result<(), Error> {
        self.send_window().await?;
        self.settle_in_flight().await
    }

    /// Read and check the answers of every change in flight, in order.
    async fn settle_in_flight(&mut self) -> Result<(), Error> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Commit the open shadow transaction, recording the applied LSN in it.
    /// Returns the LSN that is now durable (and may be confirmed to the server).
    ///
    /// Call only between source transactions (after a `Commit`).
    pub async fn flush(&mut self) -> Result<Lsn, Error> {
        if self.open_since.is_some() {
            self.settle().await?;
            let end = self.last_end;
            crate::state::record_applied(self.client.as_ref(), self.job_id, end).await?;
            crate::failpoint::hit("apply.before_commit");
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(Error::db("commit a shadow transaction"))?;
            crate::failpoint::hit("apply.after_commit");
            self.open_since = None;
            self.batch_changes = 0;
            self.stats.batches += 1;
            self.durable = end;
            self.recorded = end;
            self.map_undo.clear();
        }
        Ok(self.durable)
    }

    /// Record the durable position in the job's state even when no shadow
    /// transaction is open (the last commits touched no shadow). `cutover`
    /// and `verify` wait on the recorded position after a fence.
    pub async fn record_position(&mut self) -> Result<Lsn, Error> {
        let durable = self.flush().await?;
        if durable > self.recorded {
            crate::state::record_applied(self.client(), self.job_id, durable).await?;
            self.recorded = durable;
        }
        Ok(durable)
    }

    /// Whether the last message ended a source transaction (a safe point to flush).
    pub fn between_transactions(&self) -> bool {
        !self.in_source_txn
    }

    /// Roll back an open shadow transaction (after an error).
    pub async fn rollback(&mut self) {
        // The durable map rolls back with the shadow transaction.
        self.map_dirty.clear();
        // Answers of changes still in flight are not needed any more; the
        // server runs ROLLBACK after them. Held changes are dropped with them.
        self.in_flight.clear();
        self.window.clear();
        if self.open_since.take().is_some() {
            let _ = self.client.batch_execute("ROLLBACK").await;
            self.batch_changes = 0;
        }
    }

    /// Before resuming the stream at `resume` (the applied position recorded
    /// in the job's state, read after the failure): undo the map changes of
    /// every source transaction that will be replayed (commit at or after
    /// `resume`), keep those of transactions that committed to the shadow.
    /// The same rule as the skip on `Begin`.
    pub fn revert_map_after(&mut self, resume: Lsn) {
        while let Some(&(txn, key, before)) = self.map_undo.last() {
            if txn < resume {
                break;
            }
            match before {
                Some(u) => self.map.upsert(key, u),
                None => self.map.remove(key),
            }
            self.map_undo.pop();
        }
        self.map_undo.clear();
    }

    /// The session (for the caller's own bookkeeping between batches).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn data(e: TranslateError) -> Error {
    Error::Data(e.to_string())
}

impl translate::Lookup for IdMap {
    fn lookup(&self, key: i64) -> Option<uuid::Uuid> {
        self.get(key)
    }
}

/// Which tables are applied set-wise ([`batch::TableBatching::for_table`]):
/// reads the unique and exclusion indexes of each source table and its shadow.
async fn batch_plan(
    client: &Client,
    tables: &[TableSpec],
) -> Result<HashMap<u32, batch::TableBatching>, Error> {
    let mut out = HashMap::new();
    for t in tables {
        let rows = client
            .query(
                "SELECT CASE WHEN i.indexprs IS NULL AND i.indpred IS NULL THEN
                        ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) END
                   FROM pg_index i
                  WHERE (i.indrelid = $1 OR i.indrelid = to_regclass($2))
                    AND (i.indisunique OR i.indisexclusion)",
                &[&t.oid, &t.shadow.quoted()],
            )
            .await
            .map_err(Error::db(format!(
                "read the unique indexes of {} and {}",
                t.source, t.shadow
            )))?;
        let indexes: Vec<Option<Vec<String>>> = rows.iter().map(|r| r.get(0)).collect();
        match batch::TableBatching::for_table(t, &indexes) {
            Some(b) => {
                out.insert(t.oid, b);
            }
            None => tracing::debug!(table = %t.source,
                "changes applied one by one (a unique index besides the key, or a key type compared by value)"),
        }
    }
    Ok(out)
}

/// Whether a source transaction committing at `commit` (its `final_lsn`,
/// the commit record's start) applies to a table whose copy holds every
/// transaction committed before `synced` (`None`: the stream's own start).
/// The copy's snapshot, exported at a slot's consistent point, sees exactly
/// the transactions whose commit record lies before that point; the slot
/// decodes the others (see [`Applier::apply_from`]).
fn applies(synced: Option<Lsn>, commit: Lsn) -> bool {
    synced.is_none_or(|from| from <= commit)
}

#[cfg(test)]
mod sync_tests {
    use super::*;

    #[test]
    fn a_resumed_copy_takes_the_stream_from_its_snapshot_on() {
        let at = Lsn(0x1_0000);
        assert!(applies(None, Lsn(1)), "no later copy: everything applies");
        assert!(
            !applies(Some(at), Lsn(0xffff)),
            "committed before: in the copy"
        );
        assert!(
            applies(Some(at), at),
            "committed at the point: decoded, not in the copy"
        );
        assert!(applies(Some(at), Lsn(0x1_0001)));
    }
}
