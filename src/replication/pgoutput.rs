//! pgoutput message types (protocol version 1) and a pure decoder.
//!
//! The decoder is a function from bytes to [`LogicalMessage`]; it does no I/O,
//! never panics, and reports truncated or malformed input as a [`DecodeError`].
//! Values are kept as [`Bytes`] slices of the input buffer (no copies).

use bytes::Bytes;

use crate::pg::Lsn;

/// A pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput: {0}")]
pub struct DecodeError(pub String);

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
    /// Commit time, microseconds since 2000-01-01 UTC.
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

/// `Y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Type OID.
    pub oid: u32,
    /// Namespace (`pg_catalog` when sent empty).
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
    /// LSN of the message record.
    pub lsn: Lsn,
    /// Prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// Content.
    pub content: Bytes,
}
