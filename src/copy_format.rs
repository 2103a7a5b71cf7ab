//! The binary COPY format's fixed parts, shared by the copy's rewriter
//! ([`crate::copy`]) and the id map's loader ([`crate::idmap`]) — pure, and
//! imported by both, so neither imports the other for them; and the copy's
//! error types, which [`crate::error::Error::Copy`] carries (here, below the
//! copy, so that `error` imports nothing that imports it); and the
//! rewriter itself ([`Rewriter`]: tuple framing, reference fields swapped for
//! uuids), pure, unit- and property-tested here and fuzzed by
//! `fuzz/fuzz_targets/copy_rewriter.rs`. [`crate::copy`] is the I/O around it.

use bytes::BytesMut;
use uuid::Uuid;

use crate::model::IntKind;

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

/// [`check_header`] for the rewriter: its refusal as a [`RewriteError`].
fn header_of(h: &[u8]) -> Result<u32, RewriteError> {
    check_header(h).map_err(|e| match e {
        HeaderError::BadSignature => RewriteError::BadSignature,
        HeaderError::UnsupportedFlags(f) => RewriteError::UnsupportedFlags(f),
    })
}

/// What one [`Rewriter::feed`] call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fed {
    /// Tuples completed during this call.
    pub rows: u64,
    /// `out.len()` right after the last tuple completed during this call:
    /// `out[..boundary]` ends on a tuple boundary.
    pub boundary: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Gathering the fixed 19-byte header.
    Header,
    /// Skipping the header extension.
    HeaderExt(u32),
    /// Expecting a 2-byte field count (or the trailer).
    TupleStart,
    /// Expecting field `n`'s 4-byte length.
    FieldLen(usize),
    /// Passing `remaining` bytes of field `n` through.
    Data(usize, u32),
    /// Gathering the integer of reference field `n`.
    Reference(usize, IntKind),
    /// Trailer seen.
    Done,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Header => "the header",
            State::HeaderExt(_) => "the header extension",
            State::TupleStart => "a row's field count",
            State::FieldLen(_) => "a field length",
            State::Data(..) => "a field value",
            State::Reference(..) => "a reference value",
            State::Done => "the trailer",
        }
    }
}

/// Incremental, pure binary-COPY rewriter.
///
/// Consumes a binary COPY stream in chunks of any size and appends to an
/// output buffer the same tuples with each reference field (`Some(kind)` in the
/// layout) replaced by the 16-byte uuid the lookup returns. The header and
/// trailer are consumed, not copied: the caller frames each output batch with
/// [`HEADER`] and [`TRAILER`] itself, so it can cut batches at tuple
/// boundaries ([`Fed::boundary`]).
///
/// Never panics on input: every malformed stream is a [`RewriteError`].
#[derive(Debug, Clone)]
pub struct Rewriter {
    layout: Vec<Option<IntKind>>,
    state: State,
    pending: [u8; 19],
    pending_len: usize,
    rows: u64,
}

impl Rewriter {
    /// A rewriter for tuples with one entry per field: `Some(kind)` for a
    /// reference column, `None` for a column passed through.
    pub fn new(layout: Vec<Option<IntKind>>) -> Rewriter {
        Rewriter {
            layout,
            state: State::Header,
            pending: [0; 19],
            pending_len: 0,
            rows: 0,
        }
    }

    /// Complete tuples seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the trailer has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Check that the stream ended cleanly (trailer seen).
    pub fn finish(&self) -> Result<u64, RewriteError> {
        if self.state == State::Done {
            Ok(self.rows)
        } else {
            Err(RewriteError::Truncated {
                rows: self.rows,
                state: self.state.name(),
            })
        }
    }

    fn need(&self) -> usize {
        match self.state {
            State::Header => HEADER.len(),
            State::TupleStart => 2,
            State::FieldLen(_) => 4,
            State::Reference(_, kind) => kind.width(),
            State::HeaderExt(_) | State::Data(..) | State::Done => 0,
        }
    }

    /// Consume `input`, appending rewritten tuples to `out`.
    pub fn feed<F>(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        lookup: F,
    ) -> Result<Fed, RewriteError>
    where
        F: Fn(i64) -> Option<Uuid>,
    {
        let mut fed = Fed::default();
        while !input.is_empty() {
            // Fast path: a whole tuple at the front of the input (the usual
            // case: the server sends one row per CopyData message).
            if self.state == State::TupleStart && self.pending_len == 0 {
                if let Some(used) = self.whole_tuple(input, out, &mut fed, &lookup)? {
                    input = input.get(used..).unwrap_or_default();
                    continue;
                }
            }
            match self.state {
                State::Done => return Err(RewriteError::TrailingData),
                State::HeaderExt(remaining) => {
                    let n = input.len().min(remaining as usize);
                    input = input.get(n..).unwrap_or_default();
                    let left = remaining - n as u32;
                    self.state = if left == 0 {
                        State::TupleStart
                    } else {
                        State::HeaderExt(left)
                    };
                }
                State::Data(field, remaining) => {
                    let n = input.len().min(remaining as usize);
                    let (head, rest) = input.split_at(n);
                    out.extend_from_slice(head);
                    input = rest;
                    let left = remaining - n as u32;
                    if left == 0 {
                        self.end_field(field, out, &mut fed);
                    } else {
                        self.state = State::Data(field, left);
                    }
                }
                _ => {
                    let need = self.need();
                    let mut item = [0u8; 19];
                    if self.pending_len == 0 && input.len() >= need {
                        let (head, rest) = input.split_at(need);
                        item[..need].copy_from_slice(head);
                        input = rest;
                    } else {
                        let take = (need - self.pending_len).min(input.len());
                        let (head, rest) = input.split_at(take);
                        self.pending[self.pending_len..self.pending_len + take]
                            .copy_from_slice(head);
                        self.pending_len += take;
                        input = rest;
                        if self.pending_len < need {
                            continue;
                        }
                        item[..need].copy_from_slice(&self.pending[..need]);
                        self.pending_len = 0;
                    }
                    self.item(&item[..need], out, &mut fed, &lookup)?;
                }
            }
        }
        Ok(fed)
    }

    /// Rewrite the tuple (or trailer) at the front of `input` in one pass,
    /// copying each run of pass-through fields with one `extend_from_slice`.
    ///
    /// Returns the bytes consumed, or `None` (with `out` unchanged) when the
    /// input ends inside the tuple; the state machine then takes over from the
    /// tuple's start. The checks and their order are the state machine's, so
    /// a malformed stream gives the same error whichever path sees it (the
    /// chunking proptests compare both).
    #[inline]
    fn whole_tuple<F>(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        fed: &mut Fed,
        lookup: &F,
    ) -> Result<Option<usize>, RewriteError>
    where
        F: Fn(i64) -> Option<Uuid>,
    {
        let Some(&[c0, c1]) = input.get(..2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes([c0, c1]);
        if count == -1 {
            self.state = State::Done;
            return Ok(Some(2));
        }
        if usize::try_from(count).ok() != Some(self.layout.len()) {
            return Err(RewriteError::FieldCount {
                row: self.rows + 1,
                expected: self.layout.len(),
                found: count,
            });
        }
        let start = out.len();
        // `input[run..pos]` is pass-through output not yet written.
        let mut run = 0usize;
        let mut pos = 2usize;
        for (field, kind) in self.layout.iter().enumerate() {
            let Some(&[l0, l1, l2, l3]) = input.get(pos..pos.saturating_add(4)) else {
                out.truncate(start);
                return Ok(None);
            };
            let len = i32::from_be_bytes([l0, l1, l2, l3]);
            pos += 4;
            if len == -1 {
                continue;
            }
            if len < -1 {
                return Err(RewriteError::BadLength {
                    row: self.rows + 1,
                    field,
                    len,
                });
            }
            let Some(kind) = kind else {
                pos = pos.saturating_add(len as usize);
                continue;
            };
            if len as usize != kind.width() {
                return Err(RewriteError::ReferenceWidth {
                    row: self.rows + 1,
                    field,
                    expected: kind.width(),
                    found: len,
                });
            }
            let Some(item) = input.get(pos..pos.saturating_add(kind.width())) else {
                out.truncate(start);
                return Ok(None);
            };
            let value = read_int(*kind, item);
            let Some(uuid) = lookup(value) else {
                return Err(RewriteError::MissingParent {
                    row: self.rows + 1,
                    field,
                    value,
                });
            };
            // Everything before this field's length word passes through.
            out.extend_from_slice(input.get(run..pos - 4).unwrap_or_default());
            out.extend_from_slice(&16i32.to_be_bytes());
            out.extend_from_slice(uuid.as_bytes());
            pos += kind.width();
            run = pos;
        }
        let Some(rest) = input.get(run..pos) else {
            // The last pass-through field runs past the input.
            out.truncate(start);
            return Ok(None);
        };
        out.extend_from_slice(rest);
        self.end_tuple(out, fed);
        Ok(Some(pos))
    }

    /// Handle one complete fixed-size item for the current state.
    fn item<F>(
        &mut self,
        item: &[u8],
        out: &mut BytesMut,
        fed: &mut Fed,
        lookup: &F,
    ) -> Result<(), RewriteError>
    where
        F: Fn(i64) -> Option<Uuid>,
    {
        match self.state {
            State::Header => {
                let ext = header_of(item)?;
                self.state = if ext == 0 {
                    State::TupleStart
                } else {
                    State::HeaderExt(ext)
                };
            }
            State::TupleStart => {
                let count = i16::from_be_bytes([item[0], item[1]]);
                if count == -1 {
                    self.state = State::Done;
                    return Ok(());
                }
                if usize::try_from(count).ok() != Some(self.layout.len()) {
                    return Err(RewriteError::FieldCount {
                        row: self.rows + 1,
                        expected: self.layout.len(),
                        found: count,
                    });
                }
                out.extend_from_slice(&count.to_be_bytes());
                if self.layout.is_empty() {
                    self.end_tuple(out, fed);
                } else {
                    self.state = State::FieldLen(0);
                }
            }
            State::FieldLen(field) => {
                let len = i32::from_be_bytes([item[0], item[1], item[2], item[3]]);
                let kind = self.layout.get(field).copied().flatten();
                if len == -1 {
                    out.extend_from_slice(&len.to_be_bytes());
                    self.end_field(field, out, fed);
                } else if len < -1 {
                    return Err(RewriteError::BadLength {
                        row: self.rows + 1,
                        field,
                        len,
                    });
                } else if let Some(kind) = kind {
                    if len as usize != kind.width() {
                        return Err(RewriteError::ReferenceWidth {
                            row: self.rows + 1,
                            field,
                            expected: kind.width(),
                            found: len,
                        });
                    }
                    self.state = State::Reference(field, kind);
                } else {
                    out.extend_from_slice(&len.to_be_bytes());
                    if len == 0 {
                        self.end_field(field, out, fed);
                    } else {
                        self.state = State::Data(field, len as u32);
                    }
                }
            }
            State::Reference(field, kind) => {
                let value = read_int(kind, item);
                let Some(uuid) = lookup(value) else {
                    return Err(RewriteError::MissingParent {
                        row: self.rows + 1,
                        field,
                        value,
                    });
                };
                out.extend_from_slice(&16i32.to_be_bytes());
                out.extend_from_slice(uuid.as_bytes());
                self.end_field(field, out, fed);
            }
            State::HeaderExt(_) | State::Data(..) | State::Done => {}
        }
        Ok(())
    }

    fn end_field(&mut self, field: usize, out: &mut BytesMut, fed: &mut Fed) {
        if field + 1 >= self.layout.len() {
            self.end_tuple(out, fed);
        } else {
            self.state = State::FieldLen(field + 1);
        }
    }

    fn end_tuple(&mut self, out: &mut BytesMut, fed: &mut Fed) {
        self.rows += 1;
        fed.rows += 1;
        fed.boundary = Some(out.len());
        self.state = State::TupleStart;
    }
}

/// The big-endian integer of `kind`'s width at the start of `item` (which
/// the callers have checked is at least that long; shorter reads as 0).
#[inline]
fn read_int(kind: IntKind, item: &[u8]) -> i64 {
    match kind {
        IntKind::Int2 => item
            .first_chunk::<2>()
            .map_or(0, |b| i64::from(i16::from_be_bytes(*b))),
        IntKind::Int4 => item
            .first_chunk::<4>()
            .map_or(0, |b| i64::from(i32::from_be_bytes(*b))),
        IntKind::Int8 => item
            .first_chunk::<8>()
            .map_or(0, |b| i64::from_be_bytes(*b)),
    }
}

#[cfg(test)]
mod rewriter_tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    /// A field value for building streams.
    #[derive(Debug, Clone)]
    enum V {
        Null,
        Bytes(Vec<u8>),
        Ref(IntKind, i64),
    }

    fn encode(rows: &[Vec<V>]) -> Vec<u8> {
        let mut s = HEADER.to_vec();
        for r in rows {
            s.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for v in r {
                match v {
                    V::Null => s.extend_from_slice(&(-1i32).to_be_bytes()),
                    V::Bytes(b) => {
                        s.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        s.extend_from_slice(b);
                    }
                    V::Ref(k, x) => {
                        s.extend_from_slice(&(k.width() as i32).to_be_bytes());
                        match k {
                            IntKind::Int2 => s.extend_from_slice(&(*x as i16).to_be_bytes()),
                            IntKind::Int4 => s.extend_from_slice(&(*x as i32).to_be_bytes()),
                            IntKind::Int8 => s.extend_from_slice(&x.to_be_bytes()),
                        }
                    }
                }
            }
        }
        s.extend_from_slice(&TRAILER);
        s
    }

    fn uuid_of(k: i64) -> Uuid {
        Uuid::from_u128(0xABCD_0000_0000_0000_0000_0000_0000_0000 | (k as u64 as u128))
    }

    /// Expected output (tuples only) built independently of the rewriter.
    fn expected(rows: &[Vec<V>]) -> Vec<u8> {
        let mut s = Vec::new();
        for r in rows {
            s.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for v in r {
                match v {
                    V::Null => s.extend_from_slice(&(-1i32).to_be_bytes()),
                    V::Bytes(b) => {
                        s.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        s.extend_from_slice(b);
                    }
                    V::Ref(_, x) => {
                        s.extend_from_slice(&16i32.to_be_bytes());
                        s.extend_from_slice(uuid_of(*x).as_bytes());
                    }
                }
            }
        }
        s
    }

    fn run(
        layout: &[Option<IntKind>],
        input: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, u64), RewriteError> {
        let mut rw = Rewriter::new(layout.to_vec());
        let mut out = BytesMut::new();
        let mut at = 0;
        let mut boundaries = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort();
        for p in points {
            let fed = rw.feed(&input[at..p], &mut out, |k| Some(uuid_of(k)))?;
            if let Some(b) = fed.boundary {
                boundaries.push(b);
            }
            at = p;
        }
        let rows = rw.finish()?;
        // Every reported boundary is a real tuple end: what follows parses as tuples.
        for b in boundaries {
            assert!(b <= out.len());
        }
        Ok((out.to_vec(), rows))
    }

    const LAYOUT: [Option<IntKind>; 5] = [
        None,
        Some(IntKind::Int2),
        Some(IntKind::Int4),
        Some(IntKind::Int8),
        None,
    ];

    fn sample() -> Vec<Vec<V>> {
        vec![
            vec![
                V::Bytes(vec![1, 2, 3]),
                V::Ref(IntKind::Int2, -3),
                V::Ref(IntKind::Int4, 70000),
                V::Ref(IntKind::Int8, 1 << 40),
                V::Bytes(vec![]),
            ],
            vec![
                V::Null,
                V::Null,
                V::Ref(IntKind::Int4, 1),
                V::Null,
                V::Bytes(vec![9; 300]),
            ],
        ]
    }

    #[test]
    fn rewrites_references_and_keeps_the_rest() {
        let rows = sample();
        let (out, n) = run(&LAYOUT, &encode(&rows), &[]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(out, expected(&rows));
    }

    #[test]
    fn boundaries_mark_tuple_ends() {
        let rows = sample();
        let input = encode(&rows);
        let mut rw = Rewriter::new(LAYOUT.to_vec());
        let mut out = BytesMut::new();
        let fed = rw.feed(&input, &mut out, |k| Some(uuid_of(k))).unwrap();
        assert_eq!(fed.rows, 2);
        assert_eq!(fed.boundary, Some(out.len()));
        let first = expected(&rows[..1]).len();
        let mut rw = Rewriter::new(LAYOUT.to_vec());
        let mut out = BytesMut::new();
        // Feed up to one byte into the second tuple: the boundary is the first tuple's end.
        let cut = HEADER.len() + encode(&rows[..1]).len() - HEADER.len() - 2 + 1;
        let fed = rw
            .feed(&input[..cut], &mut out, |k| Some(uuid_of(k)))
            .unwrap();
        assert_eq!(fed.boundary, Some(first));
    }

    #[test]
    fn missing_parent_names_field_and_value() {
        let rows = sample();
        let mut rw = Rewriter::new(LAYOUT.to_vec());
        let mut out = BytesMut::new();
        let err = rw
            .feed(&encode(&rows), &mut out, |k| {
                (k != 70000).then(|| uuid_of(k))
            })
            .unwrap_err();
        assert_eq!(
            err,
            RewriteError::MissingParent {
                row: 1,
                field: 2,
                value: 70000
            }
        );
    }

    #[test]
    fn rejects_malformed_streams() {
        let good = encode(&sample());
        let check = |bytes: &[u8]| run(&LAYOUT, bytes, &[]).unwrap_err();
        let mut sig = good.clone();
        sig[10] = 1;
        assert_eq!(check(&sig), RewriteError::BadSignature);
        let mut oids = good.clone();
        oids[12] = 1;
        assert_eq!(check(&oids), RewriteError::UnsupportedFlags(0x10000));
        assert!(matches!(
            check(&good[..good.len() - 1]),
            RewriteError::Truncated { rows: 2, .. }
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(check(&trailing), RewriteError::TrailingData);
        let mut count = good.clone();
        count[20] = 4;
        assert!(matches!(
            check(&count),
            RewriteError::FieldCount { found: 4, .. }
        ));
        // Second field (int2 reference) declared 4 bytes wide.
        let mut width = good.clone();
        let at = HEADER.len() + 2 + 4 + 3;
        width[at..at + 4].copy_from_slice(&4i32.to_be_bytes());
        assert!(matches!(
            check(&width),
            RewriteError::ReferenceWidth {
                field: 1,
                expected: 2,
                found: 4,
                ..
            }
        ));
        let mut neg = good.clone();
        neg[HEADER.len() + 2..HEADER.len() + 6].copy_from_slice(&(-7i32).to_be_bytes());
        assert!(matches!(
            check(&neg),
            RewriteError::BadLength {
                len: -7,
                field: 0,
                ..
            }
        ));
    }

    #[test]
    fn skips_header_extension() {
        let rows = sample();
        let body = encode(&rows);
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&5u32.to_be_bytes());
        s.extend_from_slice(b"hello");
        s.extend_from_slice(&body[HEADER.len()..]);
        let (out, _) = run(&LAYOUT, &s, &[3, 20, 21]).unwrap();
        assert_eq!(out, expected(&rows));
    }

    fn value() -> impl Strategy<Value = (Option<IntKind>, V)> {
        prop_oneof![
            Just((None, V::Null)),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| (None, V::Bytes(b))),
            any::<i16>().prop_map(|x| (Some(IntKind::Int2), V::Ref(IntKind::Int2, i64::from(x)))),
            any::<i32>().prop_map(|x| (Some(IntKind::Int4), V::Ref(IntKind::Int4, i64::from(x)))),
            any::<i64>().prop_map(|x| (Some(IntKind::Int8), V::Ref(IntKind::Int8, x))),
        ]
    }

    fn table() -> impl Strategy<Value = (Vec<Option<IntKind>>, Vec<Vec<V>>)> {
        proptest::collection::vec(value(), 1..6).prop_flat_map(|cols| {
            let layout: Vec<Option<IntKind>> = cols.iter().map(|(k, _)| *k).collect();
            let l2 = layout.clone();
            let row = cols
                .into_iter()
                .map(|(k, _)| match k {
                    None => prop_oneof![
                        Just(V::Null),
                        proptest::collection::vec(any::<u8>(), 0..40).prop_map(V::Bytes)
                    ]
                    .boxed(),
                    Some(kind) => prop_oneof![
                        Just(V::Null),
                        any::<i64>().prop_map(move |x| V::Ref(
                            kind,
                            match kind {
                                IntKind::Int2 => i64::from(x as i16),
                                IntKind::Int4 => i64::from(x as i32),
                                IntKind::Int8 => x,
                            }
                        ))
                    ]
                    .boxed(),
                })
                .collect::<Vec<_>>();
            (Just(l2), proptest::collection::vec(row, 0..20))
        })
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_output(
            (layout, rows) in table(),
            cuts in proptest::collection::vec(any::<usize>(), 0..30),
        ) {
            let input = encode(&rows);
            let (whole, n) = run(&layout, &input, &[]).unwrap();
            prop_assert_eq!(&whole, &expected(&rows));
            prop_assert_eq!(n, rows.len() as u64);
            let (chunked, m) = run(&layout, &input, &cuts).unwrap();
            prop_assert_eq!(chunked, whole);
            prop_assert_eq!(m, n);
        }

        #[test]
        fn fast_and_slow_paths_agree(
            (layout, rows) in table(),
            flip in any::<usize>(),
            byte in any::<u8>(),
            corrupt in any::<bool>(),
        ) {
            // Whole input: every tuple takes the one-pass path. One byte at a
            // time: none can, the state machine does all the work. Same
            // output, same error, for good and corrupted streams alike.
            let mut input = encode(&rows);
            if corrupt {
                let at = flip % input.len();
                input[at] = byte;
            }
            let bytewise: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(run(&layout, &input, &[]), run(&layout, &input, &bytewise));
        }

        #[test]
        fn garbage_never_panics(
            layout in proptest::collection::vec(proptest::option::of(prop_oneof![
                Just(IntKind::Int2), Just(IntKind::Int4), Just(IntKind::Int8)]), 0..5),
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            prefix in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut input = if prefix { HEADER.to_vec() } else { Vec::new() };
            input.extend_from_slice(&bytes);
            let _ = run(&layout, &input, &cuts);
        }

        #[test]
        fn corrupted_streams_error_or_match(
            (layout, rows) in table(),
            flip in any::<usize>(),
            byte in any::<u8>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut input = encode(&rows);
            let at = flip % input.len();
            input[at] = byte;
            // Either an error or a well-formed rewrite; never a panic, and the
            // chunking never changes which.
            let a = run(&layout, &input, &[]);
            let b = run(&layout, &input, &cuts);
            prop_assert_eq!(a, b);
        }
    }
}
