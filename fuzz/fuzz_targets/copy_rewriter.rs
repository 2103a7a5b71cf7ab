//! The binary-COPY rewriter on arbitrary bytes: it never panics, a stream
//! fed in two chunks gives the same output and the same verdict as the same
//! stream fed whole, and what it writes is never more tuples than it counted.
//!
//! Input: byte 0 picks the column count (1–8, low bits) and whether the
//! stream starts with a valid header (high bit: the fuzzer then spends its
//! time on the tuples rather than on finding the 11-byte signature), the
//! next bytes one layout entry each (passed through, int2, int4, int8), the
//! next two bytes where to cut the stream; the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pg_rekey::copy_format::Rewriter;
use pg_rekey::copy_format::HEADER;
use pg_rekey::plan::model::IntKind;
use uuid::Uuid;

fn lookup(key: i64) -> Option<Uuid> {
    // Odd keys have no user: the rewriter must report them, not invent one.
    (key % 2 == 0).then(|| Uuid::from_u128(key as u128))
}

fn run(layout: &[Option<IntKind>], chunks: &[&[u8]]) -> (Vec<u8>, Result<u64, String>) {
    let mut r = Rewriter::new(layout.to_vec());
    let mut out = BytesMut::new();
    for c in chunks {
        if let Err(e) = r.feed(c, &mut out, lookup) {
            return (out.to_vec(), Err(e.to_string()));
        }
    }
    (out.to_vec(), r.finish().map_err(|e| e.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let columns = usize::from(n % 8) + 1;
    if rest.len() < columns + 2 {
        return;
    }
    let (kinds, rest) = rest.split_at(columns);
    let layout: Vec<Option<IntKind>> = kinds
        .iter()
        .map(|k| match k % 4 {
            0 => None,
            1 => Some(IntKind::Int2),
            2 => Some(IntKind::Int4),
            _ => Some(IntKind::Int8),
        })
        .collect();
    let cut = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let stream: Vec<u8> = if n & 0x80 != 0 {
        HEADER.iter().chain(&rest[2..]).copied().collect()
    } else {
        rest[2..].to_vec()
    };
    let stream = &stream[..];
    let cut = cut.min(stream.len());
    let (whole_out, whole) = run(&layout, &[stream]);
    let (split_out, split) = run(&layout, &[&stream[..cut], &stream[cut..]]);
    assert_eq!(
        whole, split,
        "the verdict depends on where the stream was cut"
    );
    if whole.is_ok() {
        assert_eq!(
            whole_out, split_out,
            "the output depends on where the stream was cut"
        );
    }
});
