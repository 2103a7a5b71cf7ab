//! The binary COPY format's fixed parts, shared by the copy's rewriter
//! ([`crate::copy`]) and the id map's loader ([`crate::idmap`]) — pure, and
//! imported by both, so neither imports the other for them.

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
