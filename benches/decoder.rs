//! pgoutput decoder throughput, single thread: `cargo bench --bench decoder`.
//!
//! Frames are Insert and Update messages of a 6-column row as the server sends
//! them in text form (bigint id, uuid, integer user id, ~40-byte text,
//! timestamptz, boolean), built with the crate's own encoder. Each kind is
//! decoded in a loop for a fixed time (`DECODER_BENCH_SECS`, default 2) and the
//! rate is printed as messages/s and MB/s of wire bytes. Decoding includes what
//! the stream consumer pays per message: cloning the frame's `Bytes` handle and
//! dropping the decoded message.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pg_rekey::replication::pgoutput::{
    decode, encode, Insert, LogicalMessage, OldRow, TupleValue, Update,
};

/// Distinct frames per kind, cycled through (varied ids and lengths, like a real stream).
const FRAMES: usize = 4096;

fn text(s: String) -> TupleValue {
    TupleValue::Text(Bytes::from(s))
}

/// The six column values of row `i`.
fn row(i: usize) -> Vec<TupleValue> {
    let id = 1_000_000_000 + i;
    vec![
        text(id.to_string()),
        text(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            i * 7919,
            i % 65536,
            i % 4096,
            (i * 3) % 4096,
            i * 104_729
        )),
        text((40_000 + i % 5000).to_string()),
        text(format!("order note {i:06}: deliver to the back door")),
        text(format!(
            "2024-05-{:02} 12:{:02}:{:02}.{:06}+00",
            1 + i % 28,
            i % 60,
            (i / 60) % 60,
            i % 1_000_000
        )),
        text(if i % 3 == 0 { "t" } else { "f" }.to_owned()),
    ]
}

fn frames(make: impl Fn(usize) -> LogicalMessage) -> Vec<Bytes> {
    (0..FRAMES)
        .map(|i| {
            let mut out = BytesMut::new();
            encode(&make(i), &mut out);
            out.freeze()
        })
        .collect()
}

fn run(name: &str, frames: &[Bytes], secs: f64) {
    for f in frames {
        assert!(
            decode(f.clone()).is_ok(),
            "{name}: a generated frame does not decode"
        );
    }
    let bytes_per_round: usize = frames.iter().map(Bytes::len).sum();
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < budget {
        for f in frames {
            black_box(decode(black_box(f.clone())).ok());
        }
        rounds += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let messages = rounds as f64 * frames.len() as f64;
    let bytes = rounds as f64 * bytes_per_round as f64;
    println!(
        "{name:<24} {:>6.1} bytes/msg  {:>7.2} M messages/s  {:>8.1} MB/s  ({:.0} ns/msg, {messages:.0} messages in {elapsed:.2} s)",
        bytes_per_round as f64 / frames.len() as f64,
        messages / elapsed / 1e6,
        bytes / elapsed / 1e6,
        elapsed * 1e9 / messages,
    );
}

fn main() {
    let secs = std::env::var("DECODER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    println!("pgoutput decoder, one thread, 6-column rows, {FRAMES} distinct frames per kind");
    let relation = 16_384;
    let inserts = frames(|i| {
        LogicalMessage::Insert(Insert {
            relation,
            new: row(i),
        })
    });
    let updates = frames(|i| {
        LogicalMessage::Update(Update {
            relation,
            old: None,
            new: row(i),
        })
    });
    let key_updates = frames(|i| {
        let mut old = vec![TupleValue::Null; 6];
        old[0] = text((999_000_000 + i).to_string());
        LogicalMessage::Update(Update {
            relation,
            old: Some(OldRow::Key(old)),
            new: row(i),
        })
    });
    run("insert", &inserts, secs);
    run("update", &updates, secs);
    run("update (key changed)", &key_updates, secs);
}
