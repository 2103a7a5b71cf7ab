//! What the apply engine keeps about the source transaction being applied,
//! so that references resolve as of its commit (pure; see [`crate::apply`],
//! "References resolve at commit").
//!
//! - [`Tracked::deleted`]: parent keys this transaction deleted (removed
//!   from the id map), with the uuid each had. A later change of the same
//!   transaction may still name such a key — a child deleted after its
//!   parent, or a parent inserted again — and finds the rows by that uuid.
//! - [`Tracked::record_written`]: parent keys this transaction wrote
//!   references to; at commit, those among the deleted keys are checked for
//!   rows still holding them (an orphan at commit).
//! - The way back is the same with key and uuid exchanged
//!   ([`TxnState::uuids`]): references arrive as uuids and the old table
//!   holds keys, so what a transaction "deletes" is a uuid (its parent row
//!   deleted, or given another uuid), kept with the key it had; a uuid
//!   deleted and held again by a row with another key re-points the old
//!   table from that key to the new one.
//! - [`Buffer`]: after a reference to a key that exists neither in the map
//!   nor among the deleted keys, the rest of the transaction is held here
//!   until its `Commit`, then replayed with a [`Lookahead`] that knows every
//!   parent row image later in the transaction.
//!
//! # Memory
//!
//! `deleted` holds one entry per parent row deleted in the transaction. The
//! written keys are at most [`MAX_WRITTEN_KEYS`] (≈ 20 MB); past that the
//! set is dropped and every deleted key is checked at commit instead (the
//! same answer, more queries). The buffer holds the decoded rest of one
//! transaction, at most the configured number of bytes of row data
//! ([`crate::apply::BatchLimits::max_txn_buffer`]); a larger transaction stops
//! the job with an error that says so, never a wrong row. The lookahead
//! index is one entry per parent row image in the buffer.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::idmap::IdMap;
use crate::pg::Lsn;
use crate::replication::pgoutput::{LogicalMessage, Tuple, TupleValue};

use super::translate::{parent_entry, Lookup};

/// Written keys remembered per transaction, at most.
pub const MAX_WRITTEN_KEYS: usize = 1 << 20;

/// State of the source transaction being applied. Reset at each `Begin`.
#[derive(Debug, Default)]
pub struct TxnState {
    /// Forward: references arrive as keys, the shadow holds uuids.
    pub keys: Tracked<i64, Uuid>,
    /// The way back: references arrive as uuids, the old table holds keys
    /// (kept only while reverse tables are registered).
    pub uuids: Tracked<Uuid, i64>,
    /// The rest of the transaction, held after a reference that did not
    /// resolve yet.
    pub buffer: Option<Buffer>,
    /// While the buffer is replayed at commit: later parent row images.
    pub ahead: Option<Lookahead>,
}

/// What one transaction did to the parent, seen from one direction: `K` is
/// how a reference arrives (the parent's key forward, its uuid on the way
/// back), `V` what the written table holds for it.
#[derive(Debug)]
pub struct Tracked<K, V> {
    /// `K`s deleted in this transaction (and not inserted again), with the
    /// `V` each had when deleted.
    deleted: HashMap<K, V>,
    /// Every `V` a deleted `K` had.
    deleted_values: HashSet<V>,
    /// `K`s this transaction wrote references to; `None` once more than
    /// [`MAX_WRITTEN_KEYS`] (then every deleted one counts as written).
    written: Option<HashSet<K>>,
    /// Of the `V`s deleted `K`s had, those a parent row holds again now
    /// (forward: a key change moves the uuid to another key), with the `K`;
    /// and the reverse. Only such values are tracked, so this stays within
    /// the size of `deleted`.
    holders: HashMap<V, K>,
    held_by: HashMap<K, V>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            deleted: HashMap::new(),
            deleted_values: HashSet::new(),
            written: Some(HashSet::new()),
            holders: HashMap::new(),
            held_by: HashMap::new(),
        }
    }
}

impl<K, V> Tracked<K, V>
where
    K: std::hash::Hash + Eq + Copy + Ord,
    V: std::hash::Hash + Eq + Copy + Ord,
{
    /// Remember that a change of this transaction wrote a reference to `key`.
    pub fn record_written(&mut self, key: K) {
        if let Some(w) = &mut self.written {
            if w.len() >= MAX_WRITTEN_KEYS && !w.contains(&key) {
                self.written = None;
            } else {
                w.insert(key);
            }
        }
    }

    /// Parent keys deleted by this transaction, absent at its commit, that it
    /// wrote references to — with the uuid such references hold. A uuid
    /// another key holds now (a key change) is left out: rows holding it
    /// reference that key. Sorted by key (deterministic errors).
    pub fn orphan_candidates(&self) -> Vec<(K, V)> {
        let mut v: Vec<(K, V)> = self
            .deleted
            .iter()
            .filter(|(k, u)| {
                self.written.as_ref().is_none_or(|w| w.contains(k)) && !self.holders.contains_key(u)
            })
            .map(|(k, u)| (*k, *u))
            .collect();
        v.sort_unstable();
        v
    }

    /// Keys deleted in this transaction, with their uuids.
    pub fn deleted(&self) -> &HashMap<K, V> {
        &self.deleted
    }

    /// Parent key `key`, which had `uuid`, was deleted (or changed to
    /// another key; on the way back: a uuid whose row was deleted or given
    /// another uuid).
    pub fn delete(&mut self, key: K, uuid: V) {
        self.gone(key);
        self.deleted.insert(key, uuid);
        self.deleted_values.insert(uuid);
    }

    /// Parent key `key` exists again: the uuid it had when deleted, if it was.
    pub fn undelete(&mut self, key: K) -> Option<V> {
        self.deleted.remove(&key)
    }

    /// A parent row of this transaction now holds `uuid` under `key`.
    pub fn holds(&mut self, key: K, uuid: V) {
        self.gone(key);
        if self.deleted_values.contains(&uuid) {
            self.holders.insert(uuid, key);
            self.held_by.insert(key, uuid);
        }
    }

    /// Parent key `key` no longer holds the uuid recorded for it.
    fn gone(&mut self, key: K) {
        if let Some(u) = self.held_by.remove(&key) {
            if self.holders.get(&u) == Some(&key) {
                self.holders.remove(&u);
            }
        }
    }
}

/// The decoded rest of one transaction, in stream order, with the LSN of
/// each message.
#[derive(Debug)]
pub struct Buffer {
    msgs: Vec<(LogicalMessage, Lsn)>,
    bytes: usize,
    limit: usize,
}

impl Buffer {
    /// An empty buffer that refuses to grow past `limit` bytes.
    pub fn new(limit: usize) -> Buffer {
        Buffer {
            msgs: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Hold a message. `Err(bytes)` (the size it would have reached) when
    /// that would exceed the limit.
    pub fn push(&mut self, msg: LogicalMessage, lsn: Lsn) -> Result<(), usize> {
        let bytes = self.bytes + message_bytes(&msg);
        if bytes > self.limit {
            return Err(bytes);
        }
        self.bytes = bytes;
        self.msgs.push((msg, lsn));
        Ok(())
    }

    /// Bytes held (row data plus a fixed overhead per message and value).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The messages, in order.
    pub fn into_messages(self) -> Vec<(LogicalMessage, Lsn)> {
        self.msgs
    }
}

/// Memory a held message costs: its values' bytes plus the `Vec` slots.
pub fn message_bytes(msg: &LogicalMessage) -> usize {
    fn tuple(t: &Tuple) -> usize {
        t.iter()
            .map(|v| {
                std::mem::size_of::<TupleValue>()
                    + match v {
                        TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
                        _ => 0,
                    }
            })
            .sum()
    }
    let base = std::mem::size_of::<(LogicalMessage, Lsn)>();
    base + match msg {
        LogicalMessage::Insert(i) => tuple(&i.new),
        LogicalMessage::Update(u) => tuple(&u.new) + u.old.as_ref().map_or(0, |o| tuple(o.tuple())),
        LogicalMessage::Delete(d) => tuple(d.old.tuple()),
        LogicalMessage::Relation(r) => r.columns.iter().map(|c| 64 + c.name.len()).sum(),
        _ => 0,
    }
}

/// Every parent row image (insert, update) in a held transaction, by key:
/// the uuid a key will have at each later point; and by uuid: the key a
/// uuid will have (the way back).
#[derive(Debug, Default)]
pub struct Lookahead {
    images: HashMap<i64, Vec<(usize, Uuid)>>,
    by_uuid: HashMap<Uuid, Vec<(usize, i64)>>,
    /// Index of the held message being replayed.
    pub pos: usize,
}

impl Lookahead {
    /// Index the parent's inserts and updates among `msgs`. `cols` are the
    /// positions of the parent's key and uuid columns as bound so far; a
    /// parent `Relation` among the held messages (the parent's first change
    /// on this connection can come after the child's) rebinds them by the
    /// column names `names`.
    pub fn build(
        msgs: &[(LogicalMessage, Lsn)],
        parent_oid: u32,
        mut cols: Option<(usize, usize)>,
        names: (&str, &str),
    ) -> Lookahead {
        let mut images: HashMap<i64, Vec<(usize, Uuid)>> = HashMap::new();
        let mut by_uuid: HashMap<Uuid, Vec<(usize, i64)>> = HashMap::new();
        for (i, (msg, _)) in msgs.iter().enumerate() {
            let new = match msg {
                LogicalMessage::Relation(r) if r.oid == parent_oid => {
                    let find = |name: &str| r.columns.iter().position(|c| c.name == name);
                    // A relation without them is reported when it is replayed.
                    cols = find(names.0).zip(find(names.1));
                    continue;
                }
                LogicalMessage::Insert(m) if m.relation == parent_oid => &m.new,
                LogicalMessage::Update(m) if m.relation == parent_oid => &m.new,
                _ => continue,
            };
            // A malformed row is reported when it is replayed.
            if let Some(Ok(Some((key, uuid)))) = cols.map(|(k, u)| parent_entry(new, k, u)) {
                images.entry(key).or_default().push((i, uuid));
                by_uuid.entry(uuid).or_default().push((i, key));
            }
        }
        Lookahead {
            images,
            by_uuid,
            pos: 0,
        }
    }

    /// The uuid of the first row image of `key` after the message being replayed.
    pub fn next_image(&self, key: i64) -> Option<Uuid> {
        self.images
            .get(&key)?
            .iter()
            .find(|(i, _)| *i > self.pos)
            .map(|(_, u)| *u)
    }

    /// The key of the first row image holding `uuid` after the message
    /// being replayed (the way back).
    pub fn next_key(&self, uuid: Uuid) -> Option<i64> {
        self.by_uuid
            .get(&uuid)?
            .iter()
            .find(|(i, _)| *i > self.pos)
            .map(|(_, k)| *k)
    }
}

/// How a reference resolves inside a transaction: the map (parents as of
/// this point of the transaction), then keys this transaction deleted (rows
/// still holding them can be found), then — while replaying a held
/// transaction — the parent row this transaction inserts later. The way
/// back resolves a uuid the same way, in the same order.
pub struct TxnLookup<'a> {
    /// The id map.
    pub map: &'a IdMap,
    /// [`Tracked::deleted`] of [`TxnState::keys`].
    pub deleted: &'a HashMap<i64, Uuid>,
    /// [`Tracked::deleted`] of [`TxnState::uuids`].
    pub deleted_uuids: &'a HashMap<Uuid, i64>,
    /// [`TxnState::ahead`].
    pub ahead: Option<&'a Lookahead>,
}

impl Lookup for TxnLookup<'_> {
    fn lookup(&self, key: i64) -> Option<Uuid> {
        self.map
            .get(key)
            .or_else(|| self.deleted.get(&key).copied())
            .or_else(|| self.ahead.and_then(|a| a.next_image(key)))
    }

    fn key_of(&self, uuid: Uuid) -> Option<i64> {
        self.map
            .key_of(uuid)
            .or_else(|| self.deleted_uuids.get(&uuid).copied())
            .or_else(|| self.ahead.and_then(|a| a.next_key(uuid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{Delete, Insert, OldRow, Update};
    use bytes::Bytes;

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn ins(rel: u32, key: i64, u: u128) -> LogicalMessage {
        LogicalMessage::Insert(Insert {
            relation: rel,
            new: vec![t(&key.to_string()), t(&Uuid::from_u128(u).to_string())],
        })
    }

    #[test]
    fn lookahead_finds_the_first_later_image() {
        let msgs: Vec<(LogicalMessage, Lsn)> = vec![
            (ins(2, 7, 0), Lsn(1)), // a child (relation 2): not indexed
            (ins(1, 5, 50), Lsn(2)),
            (
                LogicalMessage::Delete(Delete {
                    relation: 1,
                    old: OldRow::Key(vec![t("5"), TupleValue::Null]),
                }),
                Lsn(3),
            ),
            (
                LogicalMessage::Update(Update {
                    relation: 1,
                    old: None,
                    new: vec![t("5"), t(&Uuid::from_u128(51).to_string())],
                }),
                Lsn(4),
            ),
        ];
        let mut a = Lookahead::build(&msgs, 1, Some((0, 1)), ("id", "uuid"));
        assert_eq!(a.next_image(5), Some(Uuid::from_u128(50)));
        a.pos = 1;
        assert_eq!(a.next_image(5), Some(Uuid::from_u128(51)));
        a.pos = 3;
        assert_eq!(a.next_image(5), None);
        assert_eq!(a.next_image(7), None, "only the parent's rows are images");
        assert!(Lookahead::build(&msgs, 1, None, ("id", "uuid"))
            .next_image(5)
            .is_none());
        // The parent's relation arrives among the held messages.
        let mut with_rel = vec![(
            LogicalMessage::Relation(crate::replication::pgoutput::Relation {
                oid: 1,
                namespace: "public".into(),
                name: "users".into(),
                replica_identity: crate::replication::pgoutput::ReplicaIdentity::Default,
                columns: ["uuid", "id"]
                    .iter()
                    .map(|n| crate::replication::pgoutput::RelationColumn {
                        is_key: *n == "id",
                        name: n.to_string(),
                        type_oid: 0,
                        type_modifier: -1,
                    })
                    .collect(),
            }),
            Lsn(0),
        )];
        with_rel.push((
            LogicalMessage::Insert(Insert {
                relation: 1,
                new: vec![t(&Uuid::from_u128(9).to_string()), t("8")],
            }),
            Lsn(1),
        ));
        assert_eq!(
            Lookahead::build(&with_rel, 1, None, ("id", "uuid")).next_image(8),
            Some(Uuid::from_u128(9))
        );
    }

    #[test]
    fn lookup_order_map_then_deleted_then_ahead() {
        let map = IdMap::default();
        map.upsert(1, Uuid::from_u128(1));
        let deleted = HashMap::from([(2, Uuid::from_u128(2))]);
        let msgs = vec![(ins(2, 3, 0), Lsn(1)), (ins(1, 3, 3), Lsn(2))];
        let mut ahead = Lookahead::build(&msgs, 1, Some((0, 1)), ("id", "uuid"));
        let none = HashMap::new();
        let l = TxnLookup {
            map: &map,
            deleted: &deleted,
            deleted_uuids: &none,
            ahead: None,
        };
        assert_eq!(l.lookup(1), Some(Uuid::from_u128(1)));
        assert_eq!(l.lookup(2), Some(Uuid::from_u128(2)));
        assert_eq!(l.lookup(3), None, "no lookahead outside a replay");
        ahead.pos = 0;
        let l = TxnLookup {
            map: &map,
            deleted: &deleted,
            deleted_uuids: &none,
            ahead: Some(&ahead),
        };
        assert_eq!(l.lookup(3), Some(Uuid::from_u128(3)));
        assert_eq!(l.lookup(4), None);
    }

    /// The way back: a uuid resolves through the reverse index, then the
    /// uuids this transaction deleted, then the first later image holding it.
    #[test]
    fn the_way_back_resolves_uuids_in_the_same_order() {
        let map = IdMap::default();
        map.upsert(1, Uuid::from_u128(1));
        map.enable_reverse();
        let deleted_uuids = HashMap::from([(Uuid::from_u128(2), 2)]);
        let none = HashMap::new();
        // A child first, then the parent (5, uuid 50), then its key changes to 6.
        let msgs = vec![
            (ins(2, 3, 0), Lsn(1)),
            (ins(1, 5, 50), Lsn(2)),
            (
                LogicalMessage::Update(Update {
                    relation: 1,
                    old: Some(OldRow::Key(vec![t("5"), TupleValue::Null])),
                    new: vec![t("6"), t(&Uuid::from_u128(50).to_string())],
                }),
                Lsn(3),
            ),
        ];
        let mut ahead = Lookahead::build(&msgs, 1, Some((0, 1)), ("id", "uuid"));
        let l = TxnLookup {
            map: &map,
            deleted: &none,
            deleted_uuids: &deleted_uuids,
            ahead: Some(&ahead),
        };
        assert_eq!(l.key_of(Uuid::from_u128(1)), Some(1), "the map");
        assert_eq!(l.key_of(Uuid::from_u128(2)), Some(2), "deleted here");
        assert_eq!(
            l.key_of(Uuid::from_u128(50)),
            Some(5),
            "the first later image"
        );
        assert_eq!(l.key_of(Uuid::from_u128(9)), None);
        ahead.pos = 1;
        assert_eq!(ahead.next_key(Uuid::from_u128(50)), Some(6));
        ahead.pos = 2;
        assert_eq!(ahead.next_key(Uuid::from_u128(50)), None);
    }

    /// The same bookkeeping with key and uuid exchanged: a uuid deleted
    /// (with the key it had) and written is a candidate unless another uuid
    /// holds that key now (a uuid change of the same row).
    #[test]
    fn the_way_back_tracks_deleted_uuids() {
        let (a, b) = (Uuid::from_u128(0xa), Uuid::from_u128(0xb));
        let mut s = Tracked::<Uuid, i64>::default();
        s.delete(a, 5);
        s.record_written(a);
        assert_eq!(s.orphan_candidates(), vec![(a, 5)]);
        // Key 5 now holds uuid b: rows holding 5 reference b.
        s.holds(b, 5);
        assert!(s.orphan_candidates().is_empty());
        // The uuid comes back under key 7: re-point 5 → 7.
        assert_eq!(s.undelete(a), Some(5));
        assert!(s.orphan_candidates().is_empty());
    }

    #[test]
    fn orphan_candidates_are_deleted_and_written() {
        let mut s = Tracked::<i64, Uuid>::default();
        s.delete(1, Uuid::from_u128(1));
        s.delete(2, Uuid::from_u128(2));
        s.record_written(2);
        s.record_written(3);
        assert_eq!(s.orphan_candidates(), vec![(2, Uuid::from_u128(2))]);
        // Another key took uuid 2: rows holding it are that key's.
        s.holds(9, Uuid::from_u128(2));
        assert!(s.orphan_candidates().is_empty());
        // Until that key is gone too.
        s.delete(9, Uuid::from_u128(2));
        assert_eq!(s.orphan_candidates(), vec![(2, Uuid::from_u128(2))]);
        assert_eq!(s.undelete(9), Some(Uuid::from_u128(2)));
        s.holds(9, Uuid::from_u128(2));
        assert!(s.orphan_candidates().is_empty());
        // Past the bound every deleted key is a candidate.
        s.written = Some((0..MAX_WRITTEN_KEYS as i64).map(|k| k + 100).collect());
        s.record_written(5);
        assert!(s.written.is_none());
        assert_eq!(s.orphan_candidates(), vec![(1, Uuid::from_u128(1))]);
    }

    #[test]
    fn buffer_refuses_past_its_limit() {
        let one = message_bytes(&ins(1, 1, 1));
        let mut b = Buffer::new(2 * one);
        b.push(ins(1, 1, 1), Lsn(1)).unwrap();
        b.push(ins(1, 2, 2), Lsn(2)).unwrap();
        assert_eq!(b.bytes(), 2 * one);
        assert_eq!(b.push(ins(1, 3, 3), Lsn(3)), Err(3 * one));
        assert_eq!(b.into_messages().len(), 2);
    }
}
