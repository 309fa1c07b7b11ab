//! Framing of every file the agent persists: `[len: u32 LE][crc32: u32 LE][payload]`.
//!
//! The payload is JSON (serde forms of our and openraft's types). A frame whose length runs past
//! the end of the file, or whose checksum does not match, is reported with its offset so the
//! caller can decide between "torn tail after a crash" and "corruption".

use std::sync::OnceLock;

/// Frames larger than this are refused as corrupt (the group state is a few KiB).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

pub const HEADER_BYTES: usize = 8;

fn crc_table() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        table
    })
}

/// CRC-32 (IEEE 802.3), as used by zlib and gzip.
pub fn crc32(data: &[u8]) -> u32 {
    let table = crc_table();
    let mut c = 0xFFFF_FFFFu32;
    for b in data {
        c = table[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame runs past the end of the data (a write cut short).
    Truncated { offset: usize },
    /// Length out of range or checksum mismatch.
    Corrupt { offset: usize, reason: String },
}

/// Splits `data` into frame payloads. Stops at the first bad frame and returns the good ones
/// plus the error.
pub fn decode_frames(data: &[u8]) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    while offset < data.len() {
        let rest = &data[offset..];
        if rest.len() < HEADER_BYTES {
            return (frames, Some(FrameError::Truncated { offset }));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_FRAME_BYTES {
            return (
                frames,
                Some(FrameError::Corrupt {
                    offset,
                    reason: format!("frame length {len} exceeds {MAX_FRAME_BYTES}"),
                }),
            );
        }
        let Some(payload) = rest.get(HEADER_BYTES..HEADER_BYTES + len) else {
            return (frames, Some(FrameError::Truncated { offset }));
        };
        if crc32(payload) != crc {
            return (
                frames,
                Some(FrameError::Corrupt {
                    offset,
                    reason: "checksum mismatch".into(),
                }),
            );
        }
        frames.push(payload);
        offset += HEADER_BYTES + len;
    }
    (frames, None)
}

/// Decodes a file that must hold exactly one frame.
pub fn decode_single_frame(data: &[u8]) -> Result<&[u8], String> {
    match decode_frames(data) {
        (frames, None) if frames.len() == 1 => Ok(frames[0]),
        (frames, None) => Err(format!("expected one record, found {}", frames.len())),
        (_, Some(FrameError::Truncated { offset })) => {
            Err(format!("record at byte {offset} is cut short"))
        }
        (_, Some(FrameError::Corrupt { offset, reason })) => {
            Err(format!("record at byte {offset}: {reason}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn frames_round_trip_and_torn_tail_is_detected() {
        let mut buf = Vec::new();
        encode_frame(b"one", &mut buf);
        encode_frame(b"two", &mut buf);
        let (frames, err) = decode_frames(&buf);
        assert_eq!(frames, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(err, None);
        let cut = &buf[..buf.len() - 1];
        let (frames, err) = decode_frames(cut);
        assert_eq!(frames, vec![&b"one"[..]]);
        assert_eq!(err, Some(FrameError::Truncated { offset: 11 }));
        let mut flipped = buf.clone();
        flipped[9] ^= 1;
        let (frames, err) = decode_frames(&flipped);
        assert!(frames.is_empty());
        assert!(matches!(err, Some(FrameError::Corrupt { offset: 0, .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frames(&data);
            let _ = decode_single_frame(&data);
        }

        #[test]
        fn encoded_frames_decode(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut buf = Vec::new();
            for p in &payloads {
                encode_frame(p, &mut buf);
            }
            let (frames, err) = decode_frames(&buf);
            prop_assert_eq!(err, None);
            prop_assert_eq!(frames.len(), payloads.len());
            for (f, p) in frames.iter().zip(&payloads) {
                prop_assert_eq!(*f, p.as_slice());
            }
        }
    }
}
