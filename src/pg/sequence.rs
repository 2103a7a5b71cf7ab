//! A sequence's options as `pg_sequence` holds them: the one type `plan`
//! (an identity column's sequence) and `swap` (the sequence carried to the
//! new table) both use.

/// Options of a sequence (`pg_sequence`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SequenceOptions {
    /// `START WITH`.
    pub start: i64,
    /// `INCREMENT BY`.
    pub increment: i64,
    /// `MINVALUE`.
    pub min: i64,
    /// `MAXVALUE`.
    pub max: i64,
    /// `CACHE`.
    pub cache: i64,
    /// `CYCLE`.
    pub cycle: bool,
}
