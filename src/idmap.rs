//! The parent's key → uuid map (`users.id` → `users.uuid`).
//!
//! # Invariant
//!
//! At every point where a table row is translated, the map holds exactly the
//! parent rows visible at the slot's snapshot, plus every change to the parent
//! decoded from the stream up to (and including) the transaction being applied,
//! applied in commit order:
//!
//! * [`IdMap::load`] reads the parent under the same snapshot as the copy, so
//!   every reference a copied row can hold is in the map (or is an orphan,
//!   which the copy reports as an error).
//! * The parent is in the same publication as the rewritten tables, so its
//!   INSERT/UPDATE/DELETE arrive in the one commit-ordered stream. The apply
//!   engine calls [`IdMap::upsert`] / [`IdMap::remove`] for each parent change
//!   *before* translating the rows that follow it in the stream. A user
//!   inserted in a transaction and referenced in the same or a later one is
//!   therefore always found: its insert precedes the reference in commit order.
//!   Within one transaction a deferred foreign key lets the reference come
//!   first; the apply engine then resolves it at the transaction's commit
//!   (see [`crate::apply`], "References resolve at commit").
//! * A parent DELETE removes the key (the apply engine keeps its uuid for
//!   the rest of that transaction only, to find rows that still hold it).
//! * A parent key change (UPDATE of `id`) is a `remove(old)` then an
//!   `upsert(new, uuid)`; a change of the uuid is an `upsert` of the same key.
//!   Every such change is undone if its transaction is replayed after a
//!   failure ([`crate::apply::Applier::revert_map_after`]).
//!
//! The map never invents a value: a key absent from the map is reported to the
//! caller, who stops with an error naming the table, column and value.
//!
//! # Layout and cost
//!
//! Parent keys are usually dense: a `serial`/identity column hands out
//! consecutive integers, and only deleted users leave holes. So the map keeps
//! two parts behind one `RwLock`:
//!
//! * a **dense window**: the uuids of keys `base ..= base + n - 1` in one
//!   array of 16-byte values indexed by `key - base`, with a bitset saying
//!   which slots hold a parent row (a nil uuid is a legal value, so presence
//!   cannot be encoded in the value) — 16 bytes and one bit per slot;
//! * a **sparse part**: an open-addressed hash table (hashbrown, via
//!   `std::collections::HashMap`) for keys outside the window — 24-byte
//!   entries plus a control byte, at a load factor of at most 7/8.
//!
//! [`IdMap::load`] reads the key's `min`/`max` (two index probes) and the row
//! estimate under the snapshot and chooses the window: the whole span when at
//! least half of it is expected to be filled, no window otherwise. After the
//! load it checks the real fill (a stale estimate could have picked wrongly)
//! and moves a window that is less than half full into the sparse part. Keys
//! the stream adds just past the window's end (the sequence keeps counting)
//! extend the window; keys far outside it go to the sparse part. A dense key
//! space therefore costs about 16.1 bytes per user, a sparse one about 27–55;
//! [`IdMap::memory_bytes`] reports the current figure (`benches/idmap.rs`
//! measures both at 1 M and 10 M users, against the `DashMap` this replaced).
//!
//! On the way back after cutover ([`IdMap::enable_reverse`]) the map also
//! keeps a uuid → key index, maintained by the same `upsert` and `remove`
//! under the same lock (so it moves, and is undone, with the map): a
//! SipHash table of 24-byte entries plus a control byte — about 27–55 more
//! bytes per user, reported by [`IdMap::memory_bytes`]. SipHash, not the
//! folded multiply: uuids can be chosen by anyone who can insert a row.
//!
//! Lookups take the read lock (one uncontended atomic on the copy's hot
//! path) and index the array; only the apply engine writes. Keys in the
//! sparse part are hashed with a seeded folded multiply rather than SipHash:
//! they are integers the database assigned, and the per-process random seed
//! still spreads crafted keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pg::quote_ident;
use crate::plan::model::ParentSpec;

/// The parent key → uuid map. Cloning is cheap (the clones share one map).
#[derive(Clone, Debug)]
pub struct IdMap {
    inner: Arc<RwLock<Store>>,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap::with_capacity(0)
    }
}

/// Keys past the window's end that still extend it rather than going to the
/// sparse part: a gap of up to this many slots (or an eighth of the window,
/// whichever is larger) is cheaper to leave empty than to hash.
const WINDOW_SLACK: u64 = 1024;

/// The two parts of the map (see the module docs).
#[derive(Debug)]
struct Store {
    /// Key of `dense[0]`.
    base: i64,
    /// Values of keys `base ..`; meaningful where `present` says so.
    dense: Vec<[u8; 16]>,
    /// One bit per slot of `dense`.
    present: Vec<u64>,
    /// Entries of `dense` whose bit is set.
    dense_len: usize,
    /// Keys outside the window.
    sparse: HashMap<i64, Uuid, KeyHasherBuilder>,
    /// uuid → key, once [`IdMap::enable_reverse`] was called.
    reverse: Option<HashMap<Uuid, i64>>,
}

impl Store {
    fn new(sparse_capacity: usize) -> Store {
        Store {
            base: 0,
            dense: Vec::new(),
            present: Vec::new(),
            dense_len: 0,
            sparse: HashMap::with_capacity_and_hasher(sparse_capacity, KeyHasherBuilder::random()),
            reverse: None,
        }
    }

    /// A store whose window covers `min ..= max` (allocated, all absent).
    fn with_window(min: i64, max: i64) -> Store {
        let mut s = Store::new(0);
        let slots = window_slots(min, max).unwrap_or(0);
        s.base = min;
        s.dense = vec![[0u8; 16]; slots];
        s.present = vec![0u64; slots.div_ceil(64)];
        s
    }

    /// Slot of `key` in the window, if it lies inside it.
    #[inline]
    fn slot(&self, key: i64) -> Option<usize> {
        let off = (key as i128) - (self.base as i128);
        if off >= 0 && (off as u128) < self.dense.len() as u128 {
            Some(off as usize)
        } else {
            None
        }
    }

    #[inline]
    fn is_present(&self, slot: usize) -> bool {
        self.present[slot / 64] & (1u64 << (slot % 64)) != 0
    }

    #[inline]
    fn get(&self, key: i64) -> Option<Uuid> {
        match self.slot(key) {
            Some(i) if self.is_present(i) => Some(Uuid::from_bytes(self.dense[i])),
            Some(_) => None,
            None if self.sparse.is_empty() => None,
            None => self.sparse.get(&key).copied(),
        }
    }

    fn insert(&mut self, key: i64, uuid: Uuid) {
        let before = self.reverse.as_ref().and_then(|_| self.get(key));
        if let Some(rev) = self.reverse.as_mut() {
            if let Some(b) = before.filter(|b| *b != uuid) {
                if rev.get(&b) == Some(&key) {
                    rev.remove(&b);
                }
            }
            rev.insert(uuid, key);
        }
        if self.slot(key).is_none() && self.extends_window(key) {
            self.grow_to(key);
        }
        match self.slot(key) {
            Some(i) => {
                if !self.is_present(i) {
                    self.present[i / 64] |= 1u64 << (i % 64);
                    self.dense_len += 1;
                }
                self.dense[i] = *uuid.as_bytes();
            }
            None => {
                self.sparse.insert(key, uuid);
            }
        }
    }

    /// Extend the window so that it ends at `key` (which `extends_window`
    /// accepted, so the growth is bounded by the slack).
    fn grow_to(&mut self, key: i64) {
        if self.dense.is_empty() {
            self.base = key;
        }
        let new_len = (key as i128 - self.base as i128 + 1) as usize;
        // Grow by at least an eighth so a counting sequence costs amortised
        // O(1) without doubling the array's memory.
        let want = new_len.max(self.dense.len() + self.dense.len() / 8);
        self.dense
            .reserve_exact(want.saturating_sub(self.dense.len()));
        let old_len = self.dense.len();
        self.dense.resize(new_len, [0u8; 16]);
        self.present.resize(new_len.div_ceil(64), 0);
        // Keys of the new slots that were stored sparse move in, so a key
        // lives in exactly one part (one probe per new slot, usually one).
        if !self.sparse.is_empty() {
            for i in old_len..new_len {
                if let Some(v) = self.sparse.remove(&(self.base + i as i64)) {
                    self.present[i / 64] |= 1u64 << (i % 64);
                    self.dense_len += 1;
                    self.dense[i] = *v.as_bytes();
                }
            }
        }
    }

    /// Whether `key` (outside the window) should extend it: it lies just
    /// past the window's end, or the window is empty and nothing is sparse.
    fn extends_window(&self, key: i64) -> bool {
        if self.dense.is_empty() {
            return self.sparse.is_empty();
        }
        let end = self.base as i128 + self.dense.len() as i128;
        let gap = key as i128 - end;
        let slack = (self.dense.len() as u64 / 8).max(WINDOW_SLACK) as i128;
        (0..=slack).contains(&gap)
    }

    fn remove(&mut self, key: i64) {
        let before = self.reverse.as_ref().and_then(|_| self.get(key));
        if let (Some(rev), Some(b)) = (self.reverse.as_mut(), before) {
            // Only this key's entry: with a deferrable unique uuid another
            // key may hold the same uuid for a moment.
            if rev.get(&b) == Some(&key) {
                rev.remove(&b);
            }
        }
        match self.slot(key) {
            Some(i) => {
                if self.is_present(i) {
                    self.present[i / 64] &= !(1u64 << (i % 64));
                    self.dense_len -= 1;
                }
            }
            None => {
                self.sparse.remove(&key);
            }
        }
    }

    fn len(&self) -> usize {
        self.dense_len + self.sparse.len()
    }

    /// Move every entry of a window that is less than half full into the
    /// sparse part (a stale row estimate made `load` choose a window).
    fn settle(&mut self) {
        if self.dense.is_empty() || self.dense_len * 2 >= self.dense.len() {
            return;
        }
        self.sparse.reserve(self.dense_len);
        for i in 0..self.dense.len() {
            if self.is_present(i) {
                let key = self.base + i as i64;
                self.sparse.insert(key, Uuid::from_bytes(self.dense[i]));
            }
        }
        self.dense = Vec::new();
        self.present = Vec::new();
        self.dense_len = 0;
    }

    fn memory_bytes(&self) -> usize {
        // hashbrown: one (key, value) bucket plus one control byte each.
        let bucket = std::mem::size_of::<(i64, Uuid)>() + 1;
        let reverse = self.reverse.as_ref().map_or(0, |r| r.capacity() * bucket);
        self.dense.capacity() * 16
            + self.present.capacity() * 8
            + self.sparse.capacity() * bucket
            + reverse
    }

    /// Build the uuid → key index from every entry (once).
    fn enable_reverse(&mut self) {
        if self.reverse.is_some() {
            return;
        }
        let mut rev = HashMap::with_capacity(self.len());
        for i in 0..self.dense.len() {
            if self.is_present(i) {
                rev.insert(Uuid::from_bytes(self.dense[i]), self.base + i as i64);
            }
        }
        for (k, u) in &self.sparse {
            rev.insert(*u, *k);
        }
        self.reverse = Some(rev);
    }
}

/// Number of slots a window `min ..= max` needs, if it is a sane size.
fn window_slots(min: i64, max: i64) -> Option<usize> {
    let span = (max as i128) - (min as i128) + 1;
    if span <= 0 {
        return None;
    }
    usize::try_from(span)
        .ok()
        .filter(|&n| n <= (isize::MAX as usize) / 16)
}

/// Whether a key span `min ..= max` holding about `rows` keys is worth a
/// window: at least half of its slots expected to be filled.
fn dense_enough(min: i64, max: i64, rows: u64) -> bool {
    match window_slots(min, max) {
        Some(slots) => (slots as u64) <= rows.saturating_mul(2),
        None => false,
    }
}

impl IdMap {
    /// An empty map with room for `capacity` keys.
    pub fn with_capacity(capacity: usize) -> IdMap {
        IdMap::from_store(Store::new(capacity))
    }

    fn from_store(store: Store) -> IdMap {
        IdMap {
            inner: Arc::new(RwLock::new(store)),
        }
    }

    /// A poisoned lock only means a panic elsewhere while writing one entry;
    /// the map's own operations never leave it half-written.
    fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Load every parent row visible to `client`'s snapshot.
    ///
    /// `client` must already be inside the `REPEATABLE READ` transaction that
    /// imported the slot's snapshot (the caller does that), so the map and the
    /// copy see the same parent rows. Reads with binary `COPY … TO STDOUT` of
    /// `ONLY` the parent (a partition child or inheritor is not the parent).
    pub async fn load(client: &Client, parent: &ParentSpec) -> Result<IdMap> {
        let table = parent.table.quoted();
        let key = quote_ident(&parent.key_column);
        let started = std::time::Instant::now();
        // The estimate and the key's bounds choose the layout (module docs);
        // min/max are two probes of the key index under the snapshot.
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass), \
                            min({key})::int8, max({key})::int8 FROM ONLY {table}"
                ),
                &[&table],
            )
            .await
            .map_err(Error::db(format!("estimate the size of {}", parent.table)))?;
        let estimate = u64::try_from(row.get::<_, Option<i64>>(0).unwrap_or(0)).unwrap_or(0);
        let bounds: (Option<i64>, Option<i64>) = (row.get(1), row.get(2));
        let store = match bounds {
            (Some(min), Some(max)) if dense_enough(min, max, estimate) => {
                Store::with_window(min, max)
            }
            _ => Store::new(usize::try_from(estimate).unwrap_or(0)),
        };
        let mut store = store;

        // Casting the key to int8 gives one fixed layout whatever the key's
        // width; the cast of the uuid column is a no-op for a uuid column and
        // fails loudly for anything else.
        let sql = format!(
            "COPY (SELECT {key}::int8, {uuid}::uuid FROM ONLY {table}) TO STDOUT (FORMAT binary)",
            uuid = quote_ident(&parent.uuid_column),
        );
        let context = || format!("load the key → uuid map from {}", parent.table);
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(Error::db(context()))?;
        futures_util::pin_mut!(stream);
        let mut parser = PairParser::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::db(context()))?;
            parser
                .feed(&chunk, |k, u| store.insert(k, u))
                .map_err(|e| Error::Data(format!("{}: {e}", context())))?;
        }
        parser
            .finish()
            .map_err(|e| Error::Data(format!("{}: {e}", context())))?;
        store.settle();
        let map = IdMap::from_store(store);
        tracing::info!(
            parent = %parent.table,
            users = map.len(),
            memory = %crate::progress::format_bytes(map.memory_bytes() as u64),
            bytes_per_user = format!("{:.1}", map.bytes_per_user()),
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            "id map loaded"
        );
        Ok(map)
    }

    /// The uuid of parent key `key`, if the parent row exists.
    #[inline]
    pub fn get(&self, key: i64) -> Option<Uuid> {
        self.read().get(key)
    }

    /// Keep a uuid → key index from now on (built from the entries now;
    /// idempotent), for [`IdMap::key_of`]: the way back after cutover
    /// translates uuids to keys.
    pub fn enable_reverse(&self) {
        self.write().enable_reverse();
    }

    /// The key of the parent row holding `uuid` (`None` when absent, or
    /// when [`IdMap::enable_reverse`] was not called).
    #[inline]
    pub fn key_of(&self, uuid: Uuid) -> Option<i64> {
        self.read().reverse.as_ref()?.get(&uuid).copied()
    }

    /// Record a parent row (insert, or a changed uuid for an existing key).
    pub fn upsert(&self, key: i64, uuid: Uuid) {
        self.write().insert(key, uuid);
    }

    /// Forget a parent row (delete, or the old side of a key change).
    pub fn remove(&self, key: i64) {
        self.write().remove(key);
    }

    /// Number of parent rows.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated heap memory held by the map, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.read().memory_bytes()
    }

    /// [`memory_bytes`](Self::memory_bytes) per parent row (0 when empty).
    pub fn bytes_per_user(&self) -> f64 {
        let s = self.read();
        match s.len() {
            0 => 0.0,
            n => s.memory_bytes() as f64 / n as f64,
        }
    }
}

/// Seeded folded-multiply hasher for integer keys (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct KeyHasherBuilder {
    seed: u64,
}

impl KeyHasherBuilder {
    /// A builder with a per-process random seed.
    pub fn random() -> Self {
        KeyHasherBuilder {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.seed)
    }
}

/// Hasher built by [`KeyHasherBuilder`].
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher(u64);

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = folded_multiply(self.0 ^ u64::from(b), MULTIPLIER);
        }
    }
    #[inline]
    fn write_i64(&mut self, x: i64) {
        self.0 = folded_multiply(self.0 ^ (x as u64), MULTIPLIER);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Incremental parser of a binary COPY stream of `(int8 NOT NULL, uuid NOT NULL)`.
///
/// Tuples are small and fixed-size, so it keeps the unparsed tail of the
/// stream (less than one tuple) in a buffer; memory is bounded.
#[derive(Default)]
struct PairParser {
    buf: BytesMut,
    header_done: bool,
    trailer_seen: bool,
}

/// Length of one `(int8, uuid)` tuple: count, len, 8 bytes, len, 16 bytes.
const PAIR_TUPLE: usize = 2 + 4 + 8 + 4 + 16;

impl PairParser {
    fn feed(&mut self, chunk: &[u8], mut emit: impl FnMut(i64, Uuid)) -> Result<(), String> {
        if self.trailer_seen && !chunk.is_empty() {
            return Err("data after the end of the COPY stream".into());
        }
        self.buf.extend_from_slice(chunk);
        if !self.header_done {
            if self.buf.len() < crate::copy_format::HEADER.len() {
                return Ok(());
            }
            let ext =
                crate::copy_format::check_header(&self.buf[..crate::copy_format::HEADER.len()])
                    .map_err(|e| e.to_string())?;
            if ext != 0 {
                return Err("unexpected COPY header extension".into());
            }
            self.buf.advance(crate::copy_format::HEADER.len());
            self.header_done = true;
        }
        loop {
            if self.buf.len() < 2 {
                return Ok(());
            }
            let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
            if count == -1 {
                self.buf.advance(2);
                self.trailer_seen = true;
                if !self.buf.is_empty() {
                    return Err("data after the end of the COPY stream".into());
                }
                return Ok(());
            }
            if count != 2 {
                return Err(format!("expected 2 columns per row, got {count}"));
            }
            let Some(t) = self.buf.get(..PAIR_TUPLE) else {
                return Ok(());
            };
            let klen = i32::from_be_bytes([t[2], t[3], t[4], t[5]]);
            let ulen = i32::from_be_bytes([t[14], t[15], t[16], t[17]]);
            if klen != 8 || ulen != 16 {
                return Err(format!(
                    "a key or uuid is NULL or malformed (lengths {klen}, {ulen}); the uuid column must be NOT NULL"
                ));
            }
            let key = i64::from_be_bytes([t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13]]);
            let mut u = [0u8; 16];
            u.copy_from_slice(&t[18..34]);
            emit(key, Uuid::from_bytes(u));
            self.buf.advance(PAIR_TUPLE);
        }
    }

    fn finish(&self) -> Result<(), String> {
        if self.trailer_seen {
            Ok(())
        } else {
            Err("the COPY stream ended early".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[(i64, Uuid)]) -> Vec<u8> {
        let mut v = crate::copy_format::HEADER.to_vec();
        for (k, u) in rows {
            v.extend_from_slice(&2i16.to_be_bytes());
            v.extend_from_slice(&8i32.to_be_bytes());
            v.extend_from_slice(&k.to_be_bytes());
            v.extend_from_slice(&16i32.to_be_bytes());
            v.extend_from_slice(u.as_bytes());
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn parses_pairs_across_any_chunking() {
        let rows: Vec<(i64, Uuid)> = (0..50)
            .map(|i| (i * 7 - 100, Uuid::from_u128(i as u128 * 31 + 5)))
            .collect();
        let bytes = stream(&rows);
        for size in [1, 2, 3, 7, 34, 35, 1000] {
            let mut p = PairParser::default();
            let mut got = Vec::new();
            for c in bytes.chunks(size) {
                p.feed(c, |k, u| got.push((k, u))).unwrap();
            }
            p.finish().unwrap();
            assert_eq!(got, rows, "chunk size {size}");
        }
    }

    #[test]
    fn rejects_truncated_and_null() {
        let bytes = stream(&[(1, Uuid::nil())]);
        let mut p = PairParser::default();
        p.feed(&bytes[..bytes.len() - 1], |_, _| {}).unwrap();
        assert!(p.finish().is_err());

        let mut bad = crate::copy_format::HEADER.to_vec();
        bad.extend_from_slice(&2i16.to_be_bytes());
        bad.extend_from_slice(&8i32.to_be_bytes());
        bad.extend_from_slice(&1i64.to_be_bytes());
        bad.extend_from_slice(&(-1i32).to_be_bytes());
        bad.extend_from_slice(&[0u8; 16]);
        let mut p = PairParser::default();
        assert!(p.feed(&bad, |_, _| {}).is_err());
    }

    #[test]
    fn dense_window_counts_one_slot_per_key() {
        let mut s = Store::with_window(1, 1000);
        for k in 1..=1000 {
            s.insert(k, Uuid::from_u128(k as u128));
        }
        assert!(s.sparse.is_empty());
        assert_eq!(s.len(), 1000);
        assert_eq!(s.get(500), Some(Uuid::from_u128(500)));
        assert_eq!(s.get(0), None);
        assert_eq!(s.get(1001), None);
        // 16 bytes a slot plus the bitset.
        assert!(
            s.memory_bytes() <= 1000 * 16 + 16 * 8,
            "{}",
            s.memory_bytes()
        );
        // A nil uuid is a value, not an absence.
        s.insert(7, Uuid::nil());
        assert_eq!(s.get(7), Some(Uuid::nil()));
        s.remove(7);
        assert_eq!(s.get(7), None);
        assert_eq!(s.len(), 999);
        s.remove(7);
        assert_eq!(s.len(), 999);
    }

    #[test]
    fn counting_keys_extend_the_window_far_keys_go_sparse() {
        let mut s = Store::with_window(1, 10);
        for k in 1..=10 {
            s.insert(k, Uuid::from_u128(1));
        }
        // The sequence keeps counting (with a small gap): the window grows.
        s.insert(11, Uuid::from_u128(11));
        s.insert(15, Uuid::from_u128(15));
        assert!(s.sparse.is_empty());
        assert_eq!(s.get(15), Some(Uuid::from_u128(15)));
        assert_eq!(s.get(14), None);
        // Far away, below the base, or at the extremes: sparse.
        for k in [1_000_000, -3, i64::MIN, i64::MAX] {
            s.insert(k, Uuid::from_u128(k as u128));
        }
        assert_eq!(s.sparse.len(), 4);
        for k in [1_000_000, -3, i64::MIN, i64::MAX] {
            assert_eq!(s.get(k), Some(Uuid::from_u128(k as u128)));
        }
        assert_eq!(s.len(), 16);
    }

    #[test]
    fn a_mostly_empty_window_moves_to_the_sparse_part() {
        let mut s = Store::with_window(0, 9_999);
        for k in (0..10_000).step_by(10) {
            s.insert(k, Uuid::from_u128(k as u128 + 1));
        }
        s.settle();
        assert!(s.dense.is_empty());
        assert_eq!(s.len(), 1000);
        assert_eq!(s.get(990), Some(Uuid::from_u128(991)));
        assert_eq!(s.get(991), None);
    }

    #[test]
    fn layout_choice() {
        assert!(dense_enough(1, 1_000, 1_000));
        assert!(dense_enough(1, 2_000, 1_000));
        assert!(!dense_enough(1, 2_001, 1_000));
        assert!(!dense_enough(1, 10, 0));
        assert!(!dense_enough(i64::MIN, i64::MAX, u64::MAX));
        assert_eq!(window_slots(5, 4), None);
        assert_eq!(window_slots(-1, 1), Some(3));
    }

    proptest::proptest! {
        /// The store answers exactly like a plain map under any sequence of
        /// inserts and removes, whatever its layout.
        #[test]
        fn behaves_like_a_hash_map(
            window in proptest::option::of((-50i64..50, 0i64..200)),
            ops in proptest::collection::vec((proptest::bool::weighted(0.7), -300i64..3000, 0u128..5), 0..400),
        ) {
            let mut s = match window {
                Some((min, len)) => Store::with_window(min, min + len),
                None => Store::new(0),
            };
            let mut m = std::collections::HashMap::new();
            for (ins, k, v) in ops {
                if ins {
                    s.insert(k, Uuid::from_u128(v));
                    m.insert(k, Uuid::from_u128(v));
                } else {
                    s.remove(k);
                    m.remove(&k);
                }
                proptest::prop_assert_eq!(s.len(), m.len());
            }
            s.settle();
            proptest::prop_assert_eq!(s.len(), m.len());
            for k in -310i64..3010 {
                proptest::prop_assert_eq!(s.get(k), m.get(&k).copied());
            }
        }
    }

    proptest::proptest! {
        /// With the reverse index on, `key_of` answers like the inverse of
        /// a plain map (uuids unique, as the parent's column is).
        #[test]
        fn the_reverse_index_follows_upserts_and_removes(
            before in proptest::collection::vec((0i64..300, 0u128..40), 0..60),
            ops in proptest::collection::vec((proptest::bool::weighted(0.7), 0i64..300, 0u128..40), 0..300),
        ) {
            let m = IdMap::default();
            let mut plain: std::collections::HashMap<i64, Uuid> = Default::default();
            let mut apply = |m: &IdMap, ins: bool, k: i64, u: u128| {
                let u = Uuid::from_u128(u);
                if ins {
                    // Keep uuids unique: whoever holds u gives it up first.
                    if let Some((&other, _)) = plain.iter().find(|(_, v)| **v == u) {
                        m.remove(other);
                        plain.remove(&other);
                    }
                    m.upsert(k, u);
                    plain.insert(k, u);
                } else {
                    m.remove(k);
                    plain.remove(&k);
                }
            };
            for (k, u) in before {
                apply(&m, true, k, u);
            }
            m.enable_reverse();
            for (ins, k, u) in ops {
                apply(&m, ins, k, u);
            }
            for u in 0..40u128 {
                let want = plain.iter().find(|(_, v)| **v == Uuid::from_u128(u)).map(|(k, _)| *k);
                proptest::prop_assert_eq!(m.key_of(Uuid::from_u128(u)), want);
            }
        }
    }

    #[test]
    fn the_reverse_index_is_counted() {
        let m = IdMap::default();
        for k in 1..=1000 {
            m.upsert(k, Uuid::from_u128(k as u128));
        }
        assert_eq!(m.key_of(Uuid::from_u128(5)), None, "off until enabled");
        let before = m.memory_bytes();
        m.enable_reverse();
        assert_eq!(m.key_of(Uuid::from_u128(5)), Some(5));
        assert!(
            m.memory_bytes() >= before + 1000 * 24,
            "{}",
            m.memory_bytes()
        );
    }

    #[test]
    fn map_operations() {
        let m = IdMap::default();
        let n = m.clone();
        m.upsert(1, Uuid::from_u128(1));
        m.upsert(-5, Uuid::from_u128(2));
        assert_eq!(n.get(1), Some(Uuid::from_u128(1)));
        m.upsert(1, Uuid::from_u128(3));
        assert_eq!(n.get(1), Some(Uuid::from_u128(3)));
        n.remove(1);
        assert_eq!(m.get(1), None);
        assert_eq!(m.len(), 1);
        assert!(m.memory_bytes() > 0);
    }
}
