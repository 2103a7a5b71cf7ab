//! pgoutput message types (protocol version 1), a pure decoder and its inverse encoder.
//!
//! [`decode`] is a function from one message's bytes to a [`LogicalMessage`]; it does
//! no I/O and keeps no state (relation metadata is the caller's business).
//!
//! Invariants and why they hold:
//! - **Never panics.** Every read goes through one bounds-checked reader, whose only access to the
//!   buffer is `slice::get` with a checked end; values are cut with `Bytes::slice`
//!   only after that check succeeded. Counts from the wire are never trusted for
//!   allocation: vectors are pre-sized to `min(count, bytes remaining)`, since each
//!   element needs at least one byte, so a short hostile frame cannot ask for a large
//!   allocation.
//! - **Exact.** A message must be consumed to its last byte: trailing bytes are an
//!   error, as are unknown tags, unknown tuple or replica identity kinds, negative
//!   lengths or counts, strings without a NUL terminator and names that are not
//!   UTF-8. Because the grammar is deterministic and every count is explicit, no
//!   strict prefix of a valid message is itself valid (the property tests check it).
//! - **Zero copy.** Tuple values and message contents are [`Bytes`] slices of the input
//!   (a reference count, no copy); only names are copied into `String`s.
//! - **Namespace.** The protocol sends `""` for `pg_catalog`; it is decoded as
//!   `"pg_catalog"`, and [`encode`] writes `"pg_catalog"` back as `""`.
//!
//! Errors carry the message tag, the byte offset (from the tag byte, which is
//! offset 0) and what was expected there.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::pg::Lsn;

/// A pgoutput message could not be decoded: which message, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pgoutput {} message, byte {offset}: {kind} — the stream is not pgoutput protocol version 1 \
     as expected; check that START_REPLICATION asks for proto_version '1', and report a bug if it does",
    TagName(*.tag)
)]
pub struct DecodeError {
    /// The message's tag byte (`b'I'`, `b'U'`, ...); `None` when the message was empty.
    pub tag: Option<u8>,
    /// Byte offset in the message where the problem starts (the tag is at 0).
    pub offset: usize,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// The cause of a [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The message has no bytes at all.
    #[error("empty message")]
    Empty,
    /// The tag byte names no protocol version 1 message.
    #[error("unknown message tag")]
    UnknownTag,
    /// The message ended before a field was complete.
    #[error("truncated: {expected} needs {needed} bytes, {remaining} remain")]
    Truncated {
        /// The field being read.
        expected: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        remaining: usize,
    },
    /// A string field has no NUL terminator before the end of the message.
    #[error("truncated: {field} has no NUL terminator")]
    UnterminatedString {
        /// The field being read.
        field: &'static str,
    },
    /// A name is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A length or count is negative.
    #[error("negative {field}: {value}")]
    Negative {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: i32,
    },
    /// A byte that selects what follows has a value the protocol does not define here.
    #[error("expected {expected}, found {}", ByteName(*.found))]
    UnexpectedByte {
        /// What the protocol allows at this point.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// Bytes follow the end of a complete message.
    #[error("{count} trailing bytes after the end of the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Displays a message tag as `'I'`, or `empty` when there is none.
struct TagName(Option<u8>);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(b) => ByteName(b).fmt(f),
            None => f.write_str("empty"),
        }
    }
}

/// Displays a byte as a quoted character when printable ASCII, else in hex.
struct ByteName(u8);

impl fmt::Display for ByteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`: a transaction begins.
    Begin(Begin),
    /// `C`: a transaction commits.
    Commit(Commit),
    /// `O`: the changes come from another origin.
    Origin(Origin),
    /// `R`: a relation's shape (sent before its first change, after DDL, after reconnect).
    Relation(Relation),
    /// `Y`: a data type's name.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(Message),
}

/// `B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (the transaction's final LSN).
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC; for a transaction
    /// replayed under a replication origin, the origin's commit time.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused, zero).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction: the position to confirm once applied.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// `O`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// Replica identity setting of a relation (`relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

/// `R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub oid: u32,
    /// Namespace; the protocol sends an empty string for `pg_catalog`, decoded here as `pg_catalog`.
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Columns in order (generated columns are not sent).
    pub columns: Vec<RelationColumn>,
}

/// One column of a `R` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity key (flag bit 1).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// `Y`: sent before a Relation for each column of a user-defined type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Type OID (the column's `atttypid`, a domain's own OID for a domain).
    pub oid: u32,
    /// Namespace (`pg_catalog` when sent empty). For a domain the server sends
    /// its base type's namespace and name, not the domain's.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an out-of-line (TOASTed) value that did not change; no data is sent.
    UnchangedToast,
    /// `t`: text representation.
    Text(Bytes),
    /// `b`: binary representation (protocol 2+ with `binary 'true'`).
    Binary(Bytes),
}

/// Column values of a row, in the relation's column order.
pub type Tuple = Vec<TupleValue>;

/// `I`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Relation OID.
    pub relation: u32,
    /// The new row.
    pub new: Tuple,
}

/// The old-row part of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// `K`: only the replica identity key columns are meaningful (others null).
    Key(Tuple),
    /// `O`: the whole old row (replica identity full).
    Full(Tuple),
}

impl OldRow {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldRow::Key(t) | OldRow::Full(t) => t,
        }
    }
}

/// `U`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Relation OID.
    pub relation: u32,
    /// Present when the key changed (`K`) or the identity is full (`O`).
    pub old: Option<OldRow>,
    /// The new row; unchanged TOAST values are [`TupleValue::UnchangedToast`].
    pub new: Tuple,
}

/// `D`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Relation OID.
    pub relation: u32,
    /// The deleted row's key (`K`) or whole row (`O`).
    pub old: OldRow,
}

/// `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
    pub options: u8,
    /// Truncated relation OIDs.
    pub relations: Vec<u32>,
}

/// `M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Emitted transactionally (delivered at its transaction's commit, in order).
    pub transactional: bool,
    /// End LSN of the message's WAL record: the value `pg_logical_emit_message`
    /// returned to the writer (the server sends the record's end, not its start).
    pub lsn: Lsn,
    /// Prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// Content.
    pub content: Bytes,
}

impl LogicalMessage {
    /// The message's tag byte on the wire (`b'B'`, `b'I'`, ...).
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => b'B',
            LogicalMessage::Commit(_) => b'C',
            LogicalMessage::Origin(_) => b'O',
            LogicalMessage::Relation(_) => b'R',
            LogicalMessage::Type(_) => b'Y',
            LogicalMessage::Insert(_) => b'I',
            LogicalMessage::Update(_) => b'U',
            LogicalMessage::Delete(_) => b'D',
            LogicalMessage::Truncate(_) => b'T',
            LogicalMessage::Message(_) => b'M',
        }
    }
}

/// The namespace the protocol abbreviates to an empty string.
const PG_CATALOG: &str = "pg_catalog";

/// Decodes one pgoutput (protocol version 1) message: the payload of one XLogData.
///
/// The whole buffer must be exactly one message. Tuple values and message contents
/// are slices of `buf` (no copy). Never panics; see the module docs.
pub fn decode(buf: Bytes) -> Result<LogicalMessage, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError {
            tag: None,
            offset: 0,
            kind: DecodeErrorKind::Empty,
        });
    };
    let mut r = Reader {
        buf: &buf,
        pos: 1,
        tag,
    };
    let msg = match tag {
        b'I' => LogicalMessage::Insert(Insert {
            relation: r.u32("relation OID")?,
            new: {
                r.expect(b'N', "'N' (new tuple)")?;
                r.tuple()?
            },
        }),
        b'U' => {
            let relation = r.u32("relation OID")?;
            let at = r.pos;
            let old = match r.u8("tuple marker")? {
                b'N' => None,
                marker @ (b'K' | b'O') => {
                    let tuple = r.tuple()?;
                    r.expect(b'N', "'N' (new tuple)")?;
                    Some(if marker == b'K' {
                        OldRow::Key(tuple)
                    } else {
                        OldRow::Full(tuple)
                    })
                }
                found => return Err(r.unexpected(at, "'K', 'O' or 'N' (tuple marker)", found)),
            };
            LogicalMessage::Update(Update {
                relation,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation = r.u32("relation OID")?;
            let at = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => OldRow::Key(r.tuple()?),
                b'O' => OldRow::Full(r.tuple()?),
                found => return Err(r.unexpected(at, "'K' or 'O' (tuple marker)", found)),
            };
            LogicalMessage::Delete(Delete { relation, old })
        }
        b'B' => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => LogicalMessage::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.i64("commit time")?,
        }),
        b'O' => LogicalMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => LogicalMessage::Relation(r.relation()?),
        b'Y' => LogicalMessage::Type(TypeMessage {
            oid: r.u32("type OID")?,
            namespace: r.namespace()?,
            name: r.string("type name")?,
        }),
        b'T' => {
            let count = r.count32("relation count")?;
            let options = r.u8("truncate options")?;
            // Each OID is 4 bytes: check the whole list fits before allocating for it.
            let needed = count.saturating_mul(4);
            if needed > r.remaining() {
                return Err(r.truncated("relation OIDs", needed));
            }
            let mut relations = Vec::with_capacity(count);
            for _ in 0..count {
                relations.push(r.u32("relation OID")?);
            }
            LogicalMessage::Truncate(Truncate { options, relations })
        }
        b'M' => {
            let flags = r.u8("flags")?;
            LogicalMessage::Message(Message {
                transactional: flags & 1 != 0,
                lsn: r.lsn("message LSN")?,
                prefix: r.string("message prefix")?,
                content: r.sized_bytes("message content length")?,
            })
        }
        _ => {
            return Err(DecodeError {
                tag: Some(tag),
                offset: 0,
                kind: DecodeErrorKind::UnknownTag,
            })
        }
    };
    if r.remaining() > 0 {
        return Err(r.error(
            r.pos,
            DecodeErrorKind::TrailingBytes {
                count: r.remaining(),
            },
        ));
    }
    Ok(msg)
}

/// A bounds-checked cursor over one message.
///
/// Invariant: `pos <= buf.len()`. Every method either advances `pos` by exactly the
/// bytes it read or leaves it and returns an error.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: u8,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn error(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            tag: Some(self.tag),
            offset,
            kind,
        }
    }

    fn truncated(&self, expected: &'static str, needed: usize) -> DecodeError {
        self.error(
            self.pos,
            DecodeErrorKind::Truncated {
                expected,
                needed,
                remaining: self.remaining(),
            },
        )
    }

    fn unexpected(&self, offset: usize, expected: &'static str, found: u8) -> DecodeError {
        self.error(offset, DecodeErrorKind::UnexpectedByte { expected, found })
    }

    /// The next `N` bytes as an array.
    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok());
        match bytes {
            Some(a) => {
                self.pos += N;
                Ok(a)
            }
            None => Err(self.truncated(what, N)),
        }
    }

    #[inline]
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array(what)?;
        Ok(b)
    }

    #[inline]
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.array(what).map(i16::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    #[inline]
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.array(what).map(|a| Lsn(u64::from_be_bytes(a)))
    }

    /// A non-negative Int32 count.
    fn count32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let v = self.i32(what)?;
        usize::try_from(v).map_err(|_| {
            self.error(
                at,
                DecodeErrorKind::Negative {
                    field: what,
                    value: v,
                },
            )
        })
    }

    /// A non-negative Int16 count.
    #[inline]
    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let v = self.i16(what)?;
        usize::try_from(v).map_err(|_| {
            self.error(
                at,
                DecodeErrorKind::Negative {
                    field: what,
                    value: i32::from(v),
                },
            )
        })
    }

    /// One byte that must equal `want`.
    #[inline]
    fn expect(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let at = self.pos;
        let found = self.u8(expected)?;
        if found == want {
            Ok(())
        } else {
            Err(self.unexpected(at, expected, found))
        }
    }

    /// An Int32 length followed by that many bytes, as a slice of the input.
    #[inline]
    fn sized_bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.count32(what)?;
        if len > self.remaining() {
            return Err(self.truncated(what, len));
        }
        let start = self.pos;
        self.pos += len;
        // In range: `len <= remaining` was checked above.
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(self.pos, DecodeErrorKind::UnterminatedString { field }));
        };
        let text = rest.get(..nul).unwrap_or_default();
        let s = std::str::from_utf8(text)
            .map_err(|_| self.error(self.pos, DecodeErrorKind::InvalidUtf8 { field }))?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    /// A namespace string, with the protocol's `""` for `pg_catalog` expanded.
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let ns = self.string("namespace")?;
        Ok(if ns.is_empty() {
            PG_CATALOG.to_owned()
        } else {
            ns
        })
    }

    /// TupleData: Int16 column count, then per column a kind byte and maybe a value.
    #[inline]
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count16("tuple column count")?;
        // Each column takes at least its kind byte: never allocate past the input.
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let at = self.pos;
            let value = match self.u8("tuple value kind")? {
                b't' => TupleValue::Text(self.sized_bytes("text value length")?),
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b'b' => TupleValue::Binary(self.sized_bytes("binary value length")?),
                found => {
                    return Err(self.unexpected(
                        at,
                        "'n', 'u', 't' or 'b' (tuple value kind)",
                        found,
                    ))
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation OID")?;
        let namespace = self.namespace()?;
        let name = self.string("relation name")?;
        let at = self.pos;
        let replica_identity = match self.u8("replica identity")? {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            found => {
                return Err(self.unexpected(at, "'d', 'n', 'f' or 'i' (replica identity)", found))
            }
        };
        let count = self.count16("column count")?;
        // A column takes at least 10 bytes (flags, empty name, type OID, typmod).
        let mut columns = Vec::with_capacity(count.min(self.remaining() / 10));
        for _ in 0..count {
            // Only bit 1 (key) is defined; other bits are ignored so that a future
            // flag does not make the stream undecodable.
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                is_key: flags & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }
}

/// Appends the wire form of `msg` to `out`: the inverse of [`decode`].
///
/// For tests and benchmarks (the replication client only decodes). For every message
/// that the protocol can represent, `decode(encode(m)) == m`. What it cannot represent
/// is written in the nearest form rather than panicking: a name is written up to its
/// first NUL (PostgreSQL names never contain one), a tuple keeps its first
/// `i16::MAX` values and a value or content its first `i32::MAX` bytes. A namespace
/// `pg_catalog` is written as `""`, as the server does.
pub fn encode(msg: &LogicalMessage, out: &mut BytesMut) {
    out.put_u8(msg.tag());
    match msg {
        LogicalMessage::Begin(m) => {
            out.put_u64(m.final_lsn.0);
            out.put_i64(m.commit_time);
            out.put_u32(m.xid);
        }
        LogicalMessage::Commit(m) => {
            out.put_u8(m.flags);
            out.put_u64(m.commit_lsn.0);
            out.put_u64(m.end_lsn.0);
            out.put_i64(m.commit_time);
        }
        LogicalMessage::Origin(m) => {
            out.put_u64(m.commit_lsn.0);
            put_string(out, &m.name);
        }
        LogicalMessage::Relation(m) => {
            out.put_u32(m.oid);
            put_namespace(out, &m.namespace);
            put_string(out, &m.name);
            out.put_u8(match m.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            let columns = m.columns.get(..MAX_COLUMNS).unwrap_or(&m.columns);
            out.put_i16(len_i16(columns.len()));
            for c in columns {
                out.put_u8(u8::from(c.is_key));
                put_string(out, &c.name);
                out.put_u32(c.type_oid);
                out.put_i32(c.type_modifier);
            }
        }
        LogicalMessage::Type(m) => {
            out.put_u32(m.oid);
            put_namespace(out, &m.namespace);
            put_string(out, &m.name);
        }
        LogicalMessage::Insert(m) => {
            out.put_u32(m.relation);
            out.put_u8(b'N');
            put_tuple(out, &m.new);
        }
        LogicalMessage::Update(m) => {
            out.put_u32(m.relation);
            match &m.old {
                Some(OldRow::Key(t)) => {
                    out.put_u8(b'K');
                    put_tuple(out, t);
                }
                Some(OldRow::Full(t)) => {
                    out.put_u8(b'O');
                    put_tuple(out, t);
                }
                None => {}
            }
            out.put_u8(b'N');
            put_tuple(out, &m.new);
        }
        LogicalMessage::Delete(m) => {
            out.put_u32(m.relation);
            let (marker, t) = match &m.old {
                OldRow::Key(t) => (b'K', t),
                OldRow::Full(t) => (b'O', t),
            };
            out.put_u8(marker);
            put_tuple(out, t);
        }
        LogicalMessage::Truncate(m) => {
            let relations = m.relations.get(..MAX_LEN).unwrap_or(&m.relations);
            out.put_i32(len_i32(relations.len()));
            out.put_u8(m.options);
            for oid in relations {
                out.put_u32(*oid);
            }
        }
        LogicalMessage::Message(m) => {
            out.put_u8(u8::from(m.transactional));
            out.put_u64(m.lsn.0);
            put_string(out, &m.prefix);
            put_sized(out, &m.content);
        }
    }
}

/// Most columns an Int16 count can announce.
const MAX_COLUMNS: usize = i16::MAX as usize;
/// Most bytes or items an Int32 length can announce.
const MAX_LEN: usize = i32::MAX as usize;

fn len_i16(n: usize) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn put_string(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.put_slice(bytes.get(..end).unwrap_or_default());
    out.put_u8(0);
}

fn put_namespace(out: &mut BytesMut, ns: &str) {
    put_string(out, if ns == PG_CATALOG { "" } else { ns });
}

fn put_sized(out: &mut BytesMut, bytes: &[u8]) {
    let bytes = bytes.get(..MAX_LEN).unwrap_or(bytes);
    out.put_i32(len_i32(bytes.len()));
    out.put_slice(bytes);
}

fn put_tuple(out: &mut BytesMut, tuple: &[TupleValue]) {
    let tuple = tuple.get(..MAX_COLUMNS).unwrap_or(tuple);
    out.put_i16(len_i16(tuple.len()));
    for value in tuple {
        match value {
            TupleValue::Null => out.put_u8(b'n'),
            TupleValue::UnchangedToast => out.put_u8(b'u'),
            TupleValue::Text(b) => {
                out.put_u8(b't');
                put_sized(out, b);
            }
            TupleValue::Binary(b) => {
                out.put_u8(b'b');
                put_sized(out, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Hand-written wire fixtures for every message kind (checked against the
    //! "Logical Replication Message Formats" chapter, not produced by [`encode`]),
    //! error cases with their offsets, and property tests.

    use super::*;
    use proptest::prelude::*;

    /// Concatenates fixture parts into one message.
    fn frame(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    const LSN_A: [u8; 8] = [0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48];
    const LSN_B: [u8; 8] = [0, 0, 0, 0x16, 0xB3, 0x74, 0xD9, 0x00];
    /// 2024-01-01 00:00:00 UTC in µs since 2000-01-01: 757_382_400_000_000.
    const TIME: [u8; 8] = 757_382_400_000_000_i64.to_be_bytes();
    const OID: [u8; 4] = [0, 0, 0x40, 0x00]; // 16384

    /// Decodes `wire`, checks the result, and checks that `encode` gives `wire` back.
    fn check(wire: Bytes, want: LogicalMessage) {
        let got = decode(wire.clone()).expect("fixture decodes");
        assert_eq!(got, want);
        let mut out = BytesMut::new();
        encode(&got, &mut out);
        assert_eq!(out.freeze(), wire, "encode is not the inverse of decode");
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin() {
        let wire = frame(&[b"B", &LSN_A, &TIME, &[0, 0, 0x03, 0xE8]]);
        check(
            wire,
            LogicalMessage::Begin(Begin {
                final_lsn: "16/B374D848".parse().unwrap(),
                commit_time: 757_382_400_000_000,
                xid: 1000,
            }),
        );
    }

    #[test]
    fn commit() {
        let wire = frame(&[b"C", &[0], &LSN_A, &LSN_B, &TIME]);
        check(
            wire,
            LogicalMessage::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D900),
                commit_time: 757_382_400_000_000,
            }),
        );
    }

    #[test]
    fn origin() {
        let wire = frame(&[b"O", &LSN_A, b"node_a\0"]);
        check(
            wire,
            LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(0x16_B374_D848),
                name: "node_a".into(),
            }),
        );
    }

    #[test]
    fn relation() {
        let wire = frame(&[
            b"R",
            &OID,
            b"public\0",
            b"orders\0",
            b"d",
            &[0, 2],
            // key column "id" bigint (20), typmod -1
            &[1],
            b"id\0",
            &[0, 0, 0, 20],
            &[0xFF, 0xFF, 0xFF, 0xFF],
            // "note" varchar(40): typmod 44
            &[0],
            b"note\0",
            &[0, 0, 0x04, 0x13],
            &[0, 0, 0, 44],
        ]);
        check(
            wire,
            LogicalMessage::Relation(Relation {
                oid: 16384,
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "note".into(),
                        type_oid: 1043,
                        type_modifier: 44,
                    },
                ],
            }),
        );
    }

    #[test]
    fn relation_replica_identities_and_pg_catalog() {
        for (byte, want) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let wire = frame(&[b"R", &OID, b"\0", b"t\xC3\xA9\0", &[byte], &[0, 0]]);
            check(
                wire,
                LogicalMessage::Relation(Relation {
                    oid: 16384,
                    namespace: "pg_catalog".into(),
                    name: "té".into(),
                    replica_identity: want,
                    columns: vec![],
                }),
            );
        }
    }

    #[test]
    fn type_message() {
        check(
            frame(&[b"Y", &[0, 0, 0x41, 0], b"public\0", b"mood\0"]),
            LogicalMessage::Type(TypeMessage {
                oid: 16640,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        );
        check(
            frame(&[b"Y", &[0, 0, 0, 25], b"\0", b"text\0"]),
            LogicalMessage::Type(TypeMessage {
                oid: 25,
                namespace: "pg_catalog".into(),
                name: "text".into(),
            }),
        );
    }

    #[test]
    fn insert_with_every_value_kind() {
        let wire = frame(&[
            b"I",
            &OID,
            b"N",
            &[0, 5],
            b"t",
            &[0, 0, 0, 2],
            b"42",
            b"n",
            b"u",
            b"b",
            &[0, 0, 0, 3],
            &[1, 0, 2],
            b"t",
            &[0, 0, 0, 0],
        ]);
        check(
            wire,
            LogicalMessage::Insert(Insert {
                relation: 16384,
                new: vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(&[1, 0, 2])),
                    text(""),
                ],
            }),
        );
    }

    #[test]
    fn values_are_slices_of_the_input() {
        let wire = frame(&[b"I", &OID, b"N", &[0, 1], b"t", &[0, 0, 0, 5], b"hello"]);
        let Ok(LogicalMessage::Insert(ins)) = decode(wire.clone()) else {
            panic!("insert expected");
        };
        let [TupleValue::Text(v)] = ins.new.as_slice() else {
            panic!("one text value expected");
        };
        assert_eq!(
            v.as_ptr(),
            wire[wire.len() - 5..].as_ptr(),
            "value was copied"
        );
    }

    #[test]
    fn update_without_old_tuple_keeps_unchanged_toast() {
        let wire = frame(&[b"U", &OID, b"N", &[0, 2], b"t", &[0, 0, 0, 1], b"7", b"u"]);
        check(
            wire,
            LogicalMessage::Update(Update {
                relation: 16384,
                old: None,
                new: vec![text("7"), TupleValue::UnchangedToast],
            }),
        );
    }

    #[test]
    fn update_with_key_and_with_old_row() {
        for (marker, wrap) in [
            (b"K", OldRow::Key as fn(Tuple) -> OldRow),
            (b"O", OldRow::Full as fn(Tuple) -> OldRow),
        ] {
            let wire = frame(&[
                b"U",
                &OID,
                marker,
                &[0, 2],
                b"t",
                &[0, 0, 0, 1],
                b"1",
                b"n",
                b"N",
                &[0, 2],
                b"t",
                &[0, 0, 0, 1],
                b"2",
                b"t",
                &[0, 0, 0, 1],
                b"x",
            ]);
            check(
                wire,
                LogicalMessage::Update(Update {
                    relation: 16384,
                    old: Some(wrap(vec![text("1"), TupleValue::Null])),
                    new: vec![text("2"), text("x")],
                }),
            );
        }
    }

    #[test]
    fn delete_with_key_and_with_old_row() {
        check(
            frame(&[b"D", &OID, b"K", &[0, 2], b"t", &[0, 0, 0, 2], b"99", b"n"]),
            LogicalMessage::Delete(Delete {
                relation: 16384,
                old: OldRow::Key(vec![text("99"), TupleValue::Null]),
            }),
        );
        check(
            frame(&[b"D", &OID, b"O", &[0, 1], b"t", &[0, 0, 0, 2], b"99"]),
            LogicalMessage::Delete(Delete {
                relation: 16384,
                old: OldRow::Full(vec![text("99")]),
            }),
        );
    }

    #[test]
    fn truncate() {
        check(
            frame(&[b"T", &[0, 0, 0, 2], &[3], &OID, &[0, 0, 0x40, 0x01]]),
            LogicalMessage::Truncate(Truncate {
                options: 3,
                relations: vec![16384, 16385],
            }),
        );
    }

    #[test]
    fn logical_message() {
        check(
            frame(&[b"M", &[1], &LSN_A, b"pg-rekey\0", &[0, 0, 0, 5], b"fence"]),
            LogicalMessage::Message(Message {
                transactional: true,
                lsn: Lsn(0x16_B374_D848),
                prefix: "pg-rekey".into(),
                content: Bytes::from_static(b"fence"),
            }),
        );
        check(
            frame(&[b"M", &[0], &LSN_A, b"\0", &[0, 0, 0, 0]]),
            LogicalMessage::Message(Message {
                transactional: false,
                lsn: Lsn(0x16_B374_D848),
                prefix: String::new(),
                content: Bytes::new(),
            }),
        );
    }

    /// Decodes `wire`, expecting an error of `kind` at `offset`.
    fn fails(wire: Bytes, offset: usize, kind: DecodeErrorKind) {
        let tag = wire.first().copied();
        assert_eq!(decode(wire), Err(DecodeError { tag, offset, kind }));
    }

    #[test]
    fn empty_and_unknown_tag() {
        fails(Bytes::new(), 0, DecodeErrorKind::Empty);
        // 'S' (stream start) is protocol version 2: not accepted here.
        fails(frame(&[b"S", &[0; 4]]), 0, DecodeErrorKind::UnknownTag);
        fails(frame(&[b"Z"]), 0, DecodeErrorKind::UnknownTag);
    }

    #[test]
    fn truncated_fields() {
        fails(
            frame(&[b"B", &LSN_A, &TIME, &[0, 0]]),
            17,
            DecodeErrorKind::Truncated {
                expected: "xid",
                needed: 4,
                remaining: 2,
            },
        );
        // Text value length beyond the buffer.
        fails(
            frame(&[b"I", &OID, b"N", &[0, 1], b"t", &[0, 0, 0, 9], b"short"]),
            13,
            DecodeErrorKind::Truncated {
                expected: "text value length",
                needed: 9,
                remaining: 5,
            },
        );
        // Fewer values than the count announces.
        fails(
            frame(&[b"I", &OID, b"N", &[0, 2], b"n"]),
            9,
            DecodeErrorKind::Truncated {
                expected: "tuple value kind",
                needed: 1,
                remaining: 0,
            },
        );
        fails(
            frame(&[b"O", &LSN_A, b"node"]),
            9,
            DecodeErrorKind::UnterminatedString {
                field: "origin name",
            },
        );
    }

    #[test]
    fn huge_counts_in_short_frames_fail_without_allocating() {
        fails(
            frame(&[b"T", &[0x7F, 0xFF, 0xFF, 0xFF], &[0], &OID]),
            6,
            DecodeErrorKind::Truncated {
                expected: "relation OIDs",
                needed: 4 * 0x7FFF_FFFF,
                remaining: 4,
            },
        );
        fails(
            frame(&[b"I", &OID, b"N", &[0x7F, 0xFF], b"n"]),
            9,
            DecodeErrorKind::Truncated {
                expected: "tuple value kind",
                needed: 1,
                remaining: 0,
            },
        );
    }

    #[test]
    fn negative_lengths_and_counts() {
        fails(
            frame(&[b"I", &OID, b"N", &[0, 1], b"t", &[0xFF, 0xFF, 0xFF, 0xFE]]),
            9,
            DecodeErrorKind::Negative {
                field: "text value length",
                value: -2,
            },
        );
        fails(
            frame(&[b"I", &OID, b"N", &[0xFF, 0xFF]]),
            6,
            DecodeErrorKind::Negative {
                field: "tuple column count",
                value: -1,
            },
        );
        fails(
            frame(&[b"T", &[0x80, 0, 0, 0], &[0]]),
            1,
            DecodeErrorKind::Negative {
                field: "relation count",
                value: i32::MIN,
            },
        );
        fails(
            frame(&[b"M", &[1], &LSN_A, b"p\0", &[0xFF, 0xFF, 0xFF, 0xFF]]),
            12,
            DecodeErrorKind::Negative {
                field: "message content length",
                value: -1,
            },
        );
    }

    #[test]
    fn bad_selector_bytes() {
        fails(
            frame(&[b"I", &OID, b"K", &[0, 0]]),
            5,
            DecodeErrorKind::UnexpectedByte {
                expected: "'N' (new tuple)",
                found: b'K',
            },
        );
        fails(
            frame(&[b"U", &OID, b"X"]),
            5,
            DecodeErrorKind::UnexpectedByte {
                expected: "'K', 'O' or 'N' (tuple marker)",
                found: b'X',
            },
        );
        // An update whose old tuple is not followed by 'N'.
        fails(
            frame(&[b"U", &OID, b"K", &[0, 0], b"K", &[0, 0]]),
            8,
            DecodeErrorKind::UnexpectedByte {
                expected: "'N' (new tuple)",
                found: b'K',
            },
        );
        fails(
            frame(&[b"D", &OID, b"N", &[0, 0]]),
            5,
            DecodeErrorKind::UnexpectedByte {
                expected: "'K' or 'O' (tuple marker)",
                found: b'N',
            },
        );
        fails(
            frame(&[b"I", &OID, b"N", &[0, 1], b"x"]),
            8,
            DecodeErrorKind::UnexpectedByte {
                expected: "'n', 'u', 't' or 'b' (tuple value kind)",
                found: b'x',
            },
        );
        fails(
            frame(&[b"R", &OID, b"s\0", b"t\0", b"z", &[0, 0]]),
            9,
            DecodeErrorKind::UnexpectedByte {
                expected: "'d', 'n', 'f' or 'i' (replica identity)",
                found: b'z',
            },
        );
    }

    #[test]
    fn non_utf8_names() {
        fails(
            frame(&[b"R", &OID, b"public\0", b"bad\xFF\0", b"d", &[0, 0]]),
            12,
            DecodeErrorKind::InvalidUtf8 {
                field: "relation name",
            },
        );
        fails(
            frame(&[b"M", &[0], &LSN_A, b"\xC3\0", &[0, 0, 0, 0]]),
            10,
            DecodeErrorKind::InvalidUtf8 {
                field: "message prefix",
            },
        );
    }

    #[test]
    fn trailing_garbage() {
        fails(
            frame(&[b"C", &[0], &LSN_A, &LSN_B, &TIME, b"x"]),
            26,
            DecodeErrorKind::TrailingBytes { count: 1 },
        );
        fails(
            frame(&[b"I", &OID, b"N", &[0, 0], &[0, 0, 0]]),
            8,
            DecodeErrorKind::TrailingBytes { count: 3 },
        );
    }

    #[test]
    fn error_display_is_one_line_naming_message_place_cause_and_fix() {
        let err = decode(frame(&[b"I", &OID, b"N", &[0, 1], b"\x01"])).unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            "pgoutput 'I' message, byte 8: expected 'n', 'u', 't' or 'b' (tuple value kind), \
             found 0x01 — the stream is not pgoutput protocol version 1 as expected; check \
             that START_REPLICATION asks for proto_version '1', and report a bug if it does"
        );
        assert!(!text.contains('\n'));
        assert!(decode(Bytes::new())
            .unwrap_err()
            .to_string()
            .starts_with("pgoutput empty message, byte 0: empty message"));
    }

    // ---- property tests ----

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
    }

    /// Names as PostgreSQL can send them: any UTF-8 without NUL.
    fn arb_name() -> impl Strategy<Value = String> {
        any::<String>().prop_map(|s| s.replace('\0', ""))
    }

    /// Namespaces: never empty (the wire's "" means pg_catalog).
    fn arb_namespace() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(PG_CATALOG.to_owned()),
            "[a-z_][a-z0-9_]{0,15}",
            arb_name()
        ]
        .prop_map(|s| {
            if s.is_empty() {
                PG_CATALOG.to_owned()
            } else {
                s
            }
        })
    }

    fn arb_lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    fn arb_tuple() -> impl Strategy<Value = Tuple> {
        let value = prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            arb_bytes().prop_map(TupleValue::Text),
            arb_bytes().prop_map(TupleValue::Binary),
        ];
        prop::collection::vec(value, 0..10)
    }

    fn arb_old_row() -> impl Strategy<Value = OldRow> {
        prop_oneof![
            arb_tuple().prop_map(OldRow::Key),
            arb_tuple().prop_map(OldRow::Full)
        ]
    }

    fn arb_message() -> impl Strategy<Value = LogicalMessage> {
        let identity = prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ];
        let column = (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
            |(is_key, name, type_oid, type_modifier)| RelationColumn {
                is_key,
                name,
                type_oid,
                type_modifier,
            },
        );
        prop_oneof![
            (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                LogicalMessage::Begin(Begin {
                    final_lsn,
                    commit_time,
                    xid,
                })
            }),
            (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| LogicalMessage::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            ),
            (arb_lsn(), arb_name())
                .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
            (
                any::<u32>(),
                arb_namespace(),
                arb_name(),
                identity,
                prop::collection::vec(column, 0..6)
            )
                .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                    LogicalMessage::Relation(Relation {
                        oid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), arb_namespace(), arb_name()).prop_map(|(oid, namespace, name)| {
                LogicalMessage::Type(TypeMessage {
                    oid,
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), arb_tuple())
                .prop_map(|(relation, new)| LogicalMessage::Insert(Insert { relation, new })),
            (any::<u32>(), prop::option::of(arb_old_row()), arb_tuple()).prop_map(
                |(relation, old, new)| LogicalMessage::Update(Update { relation, old, new })
            ),
            (any::<u32>(), arb_old_row())
                .prop_map(|(relation, old)| LogicalMessage::Delete(Delete { relation, old })),
            (any::<u8>(), prop::collection::vec(any::<u32>(), 0..8)).prop_map(
                |(options, relations)| LogicalMessage::Truncate(Truncate { options, relations })
            ),
            (any::<bool>(), arb_lsn(), arb_name(), arb_bytes()).prop_map(
                |(transactional, lsn, prefix, content)| LogicalMessage::Message(Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            ),
        ]
    }

    fn encoded(msg: &LogicalMessage) -> Bytes {
        let mut out = BytesMut::new();
        encode(msg, &mut out);
        out.freeze()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trips(msg in arb_message()) {
            let wire = encoded(&msg);
            prop_assert_eq!(decode(wire.clone()), Ok(msg));
        }

        #[test]
        fn every_strict_prefix_is_an_error(msg in arb_message()) {
            let wire = encoded(&msg);
            for len in 0..wire.len() {
                let err = decode(wire.slice(..len));
                prop_assert!(err.is_err(), "prefix of {} bytes of {:?} decoded", len, msg);
            }
        }

        #[test]
        fn trailing_bytes_are_an_error(
            msg in arb_message(),
            extra in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let wire = encoded(&msg);
            let end = wire.len();
            let mut longer = BytesMut::from(&wire[..]);
            longer.extend_from_slice(&extra);
            prop_assert_eq!(
                decode(longer.freeze()),
                Err(DecodeError {
                    tag: Some(msg.tag()),
                    offset: end,
                    kind: DecodeErrorKind::TrailingBytes { count: extra.len() },
                })
            );
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode(Bytes::from(bytes));
        }

        /// Random bodies behind every valid tag reach deeper than fully random bytes.
        #[test]
        fn random_bodies_behind_valid_tags_never_panic(
            tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
            body in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut wire = vec![tag];
            wire.extend_from_slice(&body);
            let _ = decode(Bytes::from(wire));
        }

        /// Valid messages with one byte changed: the nastiest near-valid input.
        #[test]
        fn mutated_messages_never_panic(
            msg in arb_message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut wire = encoded(&msg).to_vec();
            let i = at.index(wire.len());
            wire[i] = byte;
            let _ = decode(Bytes::from(wire));
        }
    }
}
