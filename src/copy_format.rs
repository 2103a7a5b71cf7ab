//! The binary COPY format's fixed parts, shared by the copy's rewriter
//! ([`crate::copy`]) and the id map's loader ([`crate::idmap`]) — pure, and
//! imported by both, so neither imports the other for them; and the copy's
//! error types, which [`crate::error::Error::Copy`] carries (here, below the
//! copy, so that `error` imports nothing that imports it).

/// Binary COPY signature.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A complete binary COPY header: signature, flags 0, no extension.
pub const HEADER: [u8; 19] = *b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The binary COPY trailer (a field count of -1).
pub const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The stream does not start with the binary COPY signature.
    #[error("not a binary COPY stream (bad signature)")]
    BadSignature,
    /// Header flags this reader does not understand (e.g. OIDs included).
    #[error("unsupported binary COPY header flags {0:#x}")]
    UnsupportedFlags(u32),
}

/// Check the fixed 19-byte header; return the length of the header extension.
pub fn check_header(h: &[u8]) -> Result<u32, HeaderError> {
    let (Some(sig), Some(flags), Some(ext)) = (h.get(..11), h.get(11..15), h.get(15..19)) else {
        return Err(HeaderError::BadSignature);
    };
    if sig != SIGNATURE {
        return Err(HeaderError::BadSignature);
    }
    let flags = u32::from_be_bytes([flags[0], flags[1], flags[2], flags[3]]);
    // Bit 16: OIDs included. Bits 17–31 are critical: unknown ones must stop us.
    if flags & 0xFFFF_0000 != 0 {
        return Err(HeaderError::UnsupportedFlags(flags));
    }
    Ok(u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked() {
        assert_eq!(check_header(&HEADER), Ok(0));
        assert_eq!(check_header(b"short"), Err(HeaderError::BadSignature));
        let mut oids = HEADER;
        oids[12] = 1;
        assert_eq!(
            check_header(&oids),
            Err(HeaderError::UnsupportedFlags(0x10000))
        );
    }
}

/// Why a binary COPY stream could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The stream does not start with the binary COPY signature.
    #[error("not a binary COPY stream (bad signature)")]
    BadSignature,
    /// Header flags this rewriter does not understand (e.g. OIDs included).
    #[error("unsupported binary COPY header flags {0:#x}")]
    UnsupportedFlags(u32),
    /// A tuple has the wrong number of fields.
    #[error("row {row} has {found} fields, expected {expected}")]
    FieldCount {
        /// 1-based row number in the stream.
        row: u64,
        /// Fields the layout has.
        expected: usize,
        /// Fields the tuple says it has.
        found: i16,
    },
    /// A field length below -1.
    #[error("row {row} field {field} has invalid length {len}")]
    BadLength {
        /// 1-based row number.
        row: u64,
        /// 0-based field index.
        field: usize,
        /// The length found.
        len: i32,
    },
    /// A reference field whose length is not its integer width.
    #[error("row {row} field {field} is a reference of {expected} bytes but has {found}")]
    ReferenceWidth {
        /// 1-based row number.
        row: u64,
        /// 0-based field index.
        field: usize,
        /// The integer width.
        expected: usize,
        /// The length found.
        found: i32,
    },
    /// A reference whose value is not in the map.
    #[error("row {row} field {field} references key {value}, which has no parent row")]
    MissingParent {
        /// 1-based row number.
        row: u64,
        /// 0-based field index.
        field: usize,
        /// The integer value.
        value: i64,
    },
    /// Bytes after the trailer.
    #[error("data after the end of the COPY stream")]
    TrailingData,
    /// The stream ended before its trailer.
    #[error("the COPY stream ended early (after {rows} rows, inside {state})")]
    Truncated {
        /// Complete rows seen.
        rows: u64,
        /// Where it stopped.
        state: &'static str,
    },
}

/// Why a table copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A reference to a parent key that does not exist at the snapshot.
    #[error("{table}.{column} holds {value}, which is not a key of the parent at the snapshot (orphaned reference, row {row} of the copy): delete or fix those rows (`pg-rekey plan` lists them), then start again")]
    MissingParent {
        /// Source table.
        table: String,
        /// Reference column.
        column: String,
        /// The integer value.
        value: i64,
        /// 1-based row number in the copy stream.
        row: u64,
    },
    /// The source's COPY stream could not be parsed.
    #[error("copy of {table} (column {column}): {source}; this is a bug or a column type pg-rekey does not expect — report it")]
    Stream {
        /// Source table.
        table: String,
        /// Column involved, or `-` when none is.
        column: String,
        /// What was wrong.
        #[source]
        source: RewriteError,
    },
    /// A statement on the source or the target failed.
    #[error("copy of {table}: {context}: {}", crate::pg::diag::chain(source))]
    Db {
        /// Source table.
        table: String,
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The spec does not describe a copyable table.
    #[error("copy of {table}: {reason}")]
    Spec {
        /// Source table.
        table: String,
        /// What is missing.
        reason: String,
    },
}

impl CopyError {
    /// Whether retrying the copy (from an empty shadow) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // The one rule every error uses (SQLSTATE classes, a closed
            // connection, an I/O failure).
            CopyError::Db { source, .. } => crate::pg::diag::is_transient_pg(source),
            _ => false,
        }
    }
}
