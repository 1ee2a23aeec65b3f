//! One WAL record and its framing on disk.
//!
//! ```text
//! frame   := len:u32le crc:u32le payload[len]          crc = CRC-32 (IEEE) of payload
//! payload := version:u8 (=1) seq:u64le received_at_us:i64le
//!            source_len:u16le source[source_len]
//!            has_range:u8 range_start:u64le range_end:u64le
//!            records:u32le data_len:u32le data[data_len]
//! ```
//!
//! `data` is the batch's lines, each terminated by `\n`, exactly as received (after gzip
//! decoding and after trimming any prefix that an earlier batch already delivered).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the frame header (length + CRC).
pub const FRAME_HEADER_BYTES: usize = 8;
const VERSION: u8 = 1;
/// Upper bound on one payload, so a corrupt length cannot make recovery allocate gigabytes.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 30;

/// One accepted batch as stored in the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// Sequence number, dense and increasing per stream, starting at 1.
    pub seq: u64,
    /// Collector wall-clock time of acceptance, microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The sender's source name (agent id + file identity), or `-` when none was given.
    pub source: String,
    /// Byte range `[start, end)` of `data` within the source, when the sender named one.
    pub range: Option<(u64, u64)>,
    /// Number of `\n`-terminated lines in `data`.
    pub records: u32,
    /// The lines.
    pub data: Bytes,
}

/// Why bytes could not be decoded as a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the frame announces: a torn write at the end of the log.
    #[error("frame truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The checksum does not match: the bytes were damaged.
    #[error("frame checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the payload read.
        computed: u32,
    },
    /// The payload is internally inconsistent.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

impl WalRecord {
    /// Appends this record's frame to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let source = &self.source.as_bytes()[..self.source.len().min(u16::MAX as usize)];
        let payload_len = 1 + 8 + 8 + 2 + source.len() + 1 + 16 + 4 + 4 + self.data.len();
        out.reserve(FRAME_HEADER_BYTES + payload_len);
        let header_at = out.len();
        out.put_u32_le(payload_len as u32);
        out.put_u32_le(0); // CRC placeholder, filled below once the payload is in place.
        let payload_at = out.len();
        out.put_u8(VERSION);
        out.put_u64_le(self.seq);
        out.put_i64_le(self.received_at_us);
        out.put_u16_le(source.len() as u16);
        out.put_slice(source);
        let (start, end) = self.range.unwrap_or((0, 0));
        out.put_u8(u8::from(self.range.is_some()));
        out.put_u64_le(start);
        out.put_u64_le(end);
        out.put_u32_le(self.records);
        out.put_u32_le(self.data.len() as u32);
        out.put_slice(&self.data);
        let crc = crc32fast::hash(&out[payload_at..]);
        out[header_at + 4..header_at + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Size of this record's frame on disk.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + 1 + 8 + 8 + 2 + self.source.len() + 1 + 16 + 4 + 4 + self.data.len()
    }

    /// Decodes one frame from the front of `buf`; returns the record and the frame's length.
    ///
    /// # Errors
    /// [`DecodeError`] when the frame is incomplete, damaged or malformed.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        if buf.len() < FRAME_HEADER_BYTES {
            return Err(DecodeError::Truncated {
                needed: FRAME_HEADER_BYTES,
                have: buf.len(),
            });
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if len > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::Malformed("payload length over 1 GiB"));
        }
        let needed = FRAME_HEADER_BYTES + len;
        if buf.len() < needed {
            return Err(DecodeError::Truncated {
                needed,
                have: buf.len(),
            });
        }
        let payload = &buf[FRAME_HEADER_BYTES..needed];
        let computed = crc32fast::hash(payload);
        if computed != stored {
            return Err(DecodeError::Checksum { stored, computed });
        }
        Ok((Self::decode_payload(payload)?, needed))
    }

    fn decode_payload(mut p: &[u8]) -> Result<Self, DecodeError> {
        const SHORT: DecodeError = DecodeError::Malformed("payload shorter than its fields");
        let need = |p: &[u8], n: usize| {
            if p.remaining() < n {
                Err(SHORT)
            } else {
                Ok(())
            }
        };
        need(p, 19)?;
        if p.get_u8() != VERSION {
            return Err(DecodeError::Malformed("unknown record version"));
        }
        let seq = p.get_u64_le();
        let received_at_us = p.get_i64_le();
        let source_len = p.get_u16_le() as usize;
        need(p, source_len + 25)?;
        let source = String::from_utf8(p[..source_len].to_vec())
            .map_err(|_| DecodeError::Malformed("source is not UTF-8"))?;
        p.advance(source_len);
        let has_range = p.get_u8() == 1;
        let (start, end) = (p.get_u64_le(), p.get_u64_le());
        let records = p.get_u32_le();
        let data_len = p.get_u32_le() as usize;
        if p.remaining() != data_len {
            return Err(DecodeError::Malformed(
                "data length disagrees with frame length",
            ));
        }
        Ok(Self {
            seq,
            received_at_us,
            source,
            range: has_range.then_some((start, end)),
            records,
            data: Bytes::copy_from_slice(p),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WalRecord {
        WalRecord {
            seq: 7,
            received_at_us: 1_764_000_000_000_000,
            source: "booth-017/1234-abcd".into(),
            range: Some((100, 120)),
            records: 2,
            data: Bytes::from_static(b"line one\nline two..\n"),
        }
    }

    #[test]
    fn record_round_trips() {
        let mut buf = BytesMut::new();
        sample().encode_into(&mut buf);
        assert_eq!(buf.len(), sample().frame_len());
        let (decoded, used) = WalRecord::decode(&buf).expect("decodes");
        assert_eq!(decoded, sample());
        assert_eq!(used, buf.len());
    }

    #[test]
    fn torn_frame_is_reported_as_truncated() {
        let mut buf = BytesMut::new();
        sample().encode_into(&mut buf);
        let err = WalRecord::decode(&buf[..buf.len() - 3]).expect_err("torn");
        assert!(matches!(err, DecodeError::Truncated { .. }));
    }

    #[test]
    fn flipped_bit_is_caught_by_the_checksum() {
        let mut buf = BytesMut::new();
        sample().encode_into(&mut buf);
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(
            WalRecord::decode(&buf),
            Err(DecodeError::Checksum { .. })
        ));
    }
}
