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
//!   therefore always found: its insert precedes the reference in commit order
//!   (within a transaction, in statement order).
//! * A parent key change (UPDATE of `id`) is a `remove(old)` then an
//!   `upsert(new, uuid)`; a change of the uuid is an `upsert` of the same key.
//!
//! The map never invents a value: a key absent from the map is reported to the
//! caller, who stops with an error naming the table, column and value.
//!
//! # Cost
//!
//! One entry is an `i64` and a 16-byte uuid (24 bytes in the table) plus one
//! control byte; hashbrown keeps the load factor at or below 7/8 and grows in
//! powers of two, so expect 30–55 bytes per parent row (10 M users ≈ 0.3–0.55
//! GB). [`IdMap::memory_bytes`] reports the current figure.
//!
//! Keys are hashed with a seeded folded multiply rather than SipHash: the
//! keys are integers the database assigned, the lookup is on the copy's hot
//! path, and the per-process random seed still spreads crafted keys.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::pg::quote_ident;
use crate::plan::model::ParentSpec;

/// The parent key → uuid map. Cloning is cheap (the clones share one map).
#[derive(Clone, Debug)]
pub struct IdMap {
    inner: Arc<DashMap<i64, Uuid, KeyHasherBuilder>>,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap::with_capacity(0)
    }
}

impl IdMap {
    /// An empty map with room for `capacity` keys.
    pub fn with_capacity(capacity: usize) -> IdMap {
        IdMap {
            inner: Arc::new(DashMap::with_capacity_and_hasher(
                capacity,
                KeyHasherBuilder::random(),
            )),
        }
    }

    /// Load every parent row visible to `client`'s snapshot.
    ///
    /// `client` must already be inside the `REPEATABLE READ` transaction that
    /// imported the slot's snapshot (the caller does that), so the map and the
    /// copy see the same parent rows. Reads with binary `COPY … TO STDOUT` of
    /// `ONLY` the parent (a partition child or inheritor is not the parent).
    pub async fn load(client: &Client, parent: &ParentSpec) -> Result<IdMap> {
        let table = parent.table.quoted();
        let estimate: i64 = client
            .query_opt(
                "SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::text::regclass",
                &[&table],
            )
            .await
            .map_err(Error::db(format!("estimate the size of {}", parent.table)))?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let map = IdMap::with_capacity(usize::try_from(estimate).unwrap_or(0));

        // Casting the key to int8 gives one fixed layout whatever the key's
        // width; the cast of the uuid column is a no-op for a uuid column and
        // fails loudly for anything else.
        let sql = format!(
            "COPY (SELECT {key}::int8, {uuid}::uuid FROM ONLY {table}) TO STDOUT (FORMAT binary)",
            key = quote_ident(&parent.key_column),
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
                .feed(&chunk, |k, u| {
                    map.inner.insert(k, u);
                })
                .map_err(|e| Error::Data(format!("{}: {e}", context())))?;
        }
        parser
            .finish()
            .map_err(|e| Error::Data(format!("{}: {e}", context())))?;
        tracing::debug!(
            parent = %parent.table,
            rows = map.len(),
            bytes = map.memory_bytes(),
            "loaded key → uuid map"
        );
        Ok(map)
    }

    /// The uuid of parent key `key`, if the parent row exists.
    #[inline]
    pub fn get(&self, key: i64) -> Option<Uuid> {
        self.inner.get(&key).map(|r| *r.value())
    }

    /// Record a parent row (insert, or a changed uuid for an existing key).
    pub fn upsert(&self, key: i64, uuid: Uuid) {
        self.inner.insert(key, uuid);
    }

    /// Forget a parent row (delete, or the old side of a key change).
    pub fn remove(&self, key: i64) {
        self.inner.remove(&key);
    }

    /// Number of parent rows.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Estimated heap memory held by the map, in bytes.
    pub fn memory_bytes(&self) -> usize {
        // Buckets (key + value) plus one control byte each.
        let bucket = std::mem::size_of::<(i64, Uuid)>() + 1;
        self.inner.capacity() * bucket
    }
}

/// Seeded folded-multiply hasher for integer keys (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct KeyHasherBuilder {
    seed: u64,
}

impl KeyHasherBuilder {
    fn random() -> Self {
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
            if self.buf.len() < crate::copy::HEADER.len() {
                return Ok(());
            }
            let ext = crate::copy::check_header(&self.buf[..crate::copy::HEADER.len()])
                .map_err(|e| e.to_string())?;
            if ext != 0 {
                return Err("unexpected COPY header extension".into());
            }
            self.buf.advance(crate::copy::HEADER.len());
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
        let mut v = crate::copy::HEADER.to_vec();
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

        let mut bad = crate::copy::HEADER.to_vec();
        bad.extend_from_slice(&2i16.to_be_bytes());
        bad.extend_from_slice(&8i32.to_be_bytes());
        bad.extend_from_slice(&1i64.to_be_bytes());
        bad.extend_from_slice(&(-1i32).to_be_bytes());
        bad.extend_from_slice(&[0u8; 16]);
        let mut p = PairParser::default();
        assert!(p.feed(&bad, |_, _| {}).is_err());
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
