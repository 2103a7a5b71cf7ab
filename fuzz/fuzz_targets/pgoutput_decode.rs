//! The pgoutput decoder on arbitrary bytes: never panics; what it accepts,
//! encoded again, decodes to the same message (`decode(encode(m)) == m`).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pg_rekey::replication::pgoutput;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = pgoutput::decode(Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        pgoutput::encode(&m, &mut out);
        let again = pgoutput::decode(out.freeze()).expect("an encoded message decodes");
        assert_eq!(again, m);
    }
});
