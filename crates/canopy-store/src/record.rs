//! The on-disk record: encoding and a two-phase decoder (is a whole record buffered? then
//! parse it) that never panics on arbitrary bytes.
//!
//! ```text
//! len u32 | flags u8 | seq u64 | ts i64 | subj_len u16 | hdr_len u32 | [ttl i64]
//! | subject | headers | payload | crc32c u32
//! ```
//! All integers are little-endian. `len` is the whole record including itself and the crc;
//! the crc32c covers every byte before it (so a torn length is caught too). Flags:
//! [`flags::HEADERS`], [`flags::TOMBSTONE`] (the payload is a list of inclusive
//! `(start u64, end u64)` sequence ranges deleted together, so a purge is one record and
//! atomic; `seq` is the first start), [`flags::SKIP`] (same payload: sequences that were
//! skipped), [`flags::TTL`] (the optional `ttl` field, nanoseconds, is present).

use crate::codec::{Put, Reader};

/// Record flag bits.
pub mod flags {
    /// The record carries a (possibly empty) NATS header block.
    pub const HEADERS: u8 = 1;
    /// The record deletes the sequence ranges in its payload; it is not a message.
    pub const TOMBSTONE: u8 = 2;
    /// The record marks the sequence ranges in its payload as skipped; not a message.
    pub const SKIP: u8 = 4;
    /// The record has a per-message TTL field.
    pub const TTL: u8 = 8;
    pub(crate) const KNOWN: u8 = HEADERS | TOMBSTONE | SKIP | TTL;
}

/// Fixed part before the variable fields: len, flags, seq, ts, subj_len, hdr_len.
pub const FIXED_LEN: usize = 4 + 1 + 8 + 8 + 2 + 4;
/// Trailing checksum.
pub const CRC_LEN: usize = 4;
/// The largest record accepted by the decoder (and so the largest message that can be stored).
pub const MAX_RECORD_LEN: usize = 1 << 28;

/// Encoded size of a message record.
pub fn msg_len(subject_len: usize, hdr_len: usize, payload_len: usize, ttl: bool) -> usize {
    FIXED_LEN + if ttl { 8 } else { 0 } + subject_len + hdr_len + payload_len + CRC_LEN
}

/// A message to encode.
#[derive(Debug, Clone, Copy)]
pub struct MsgFields<'a> {
    pub seq: u64,
    pub ts: i64,
    pub subject: &'a str,
    pub hdr: &'a [u8],
    pub payload: &'a [u8],
    pub ttl: Option<i64>,
}

/// Appends an encoded message record to `out`; returns its length. The caller has checked
/// that the subject fits in a u16 and the record in [`MAX_RECORD_LEN`].
pub fn encode_msg(out: &mut Vec<u8>, m: &MsgFields<'_>) -> usize {
    let mut fl = 0;
    if !m.hdr.is_empty() {
        fl |= flags::HEADERS;
    }
    if m.ttl.is_some() {
        fl |= flags::TTL;
    }
    let len = msg_len(
        m.subject.len(),
        m.hdr.len(),
        m.payload.len(),
        m.ttl.is_some(),
    );
    encode(
        out,
        fl,
        m.seq,
        m.ts,
        m.ttl,
        m.subject.as_bytes(),
        m.hdr,
        m.payload,
        len,
    );
    len
}

/// Appends a tombstone (`TOMBSTONE`) or skip (`SKIP`) record for non-empty `ranges`.
pub fn encode_ranges(out: &mut Vec<u8>, flag: u8, ranges: &[(u64, u64)], ts: i64) -> usize {
    let mut payload = Vec::with_capacity(ranges.len() * 16);
    for &(a, b) in ranges {
        payload.put_u64(a);
        payload.put_u64(b);
    }
    let first = ranges.first().map_or(0, |r| r.0);
    let len = msg_len(0, 0, payload.len(), false);
    encode(out, flag, first, ts, None, b"", b"", &payload, len);
    len
}

#[allow(clippy::too_many_arguments)]
fn encode(
    out: &mut Vec<u8>,
    fl: u8,
    seq: u64,
    ts: i64,
    ttl: Option<i64>,
    subject: &[u8],
    hdr: &[u8],
    payload: &[u8],
    len: usize,
) {
    let start = out.len();
    out.reserve(len);
    out.put_u32(len as u32);
    out.put_u8(fl);
    out.put_u64(seq);
    out.put_i64(ts);
    out.put_u16(subject.len() as u16);
    out.put_u32(hdr.len() as u32);
    if let Some(t) = ttl {
        out.put_i64(t);
    }
    out.extend_from_slice(subject);
    out.extend_from_slice(hdr);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.put_u32(crc);
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the record needs (`need` is the total, when the length is known).
    #[error("incomplete record (need {need} bytes)")]
    Incomplete { need: usize },
    #[error("impossible record length {0}")]
    BadLength(usize),
    #[error("checksum mismatch")]
    BadCrc,
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// A decoded record borrowing from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub flags: u8,
    pub seq: u64,
    pub ts: i64,
    pub ttl: Option<i64>,
    pub subject: &'a str,
    pub hdr: &'a [u8],
    pub payload: &'a [u8],
    /// Encoded length (the `len` field).
    pub len: usize,
    /// The stored checksum.
    pub crc: u32,
}

impl Record<'_> {
    pub fn is_msg(&self) -> bool {
        self.flags & (flags::TOMBSTONE | flags::SKIP) == 0
    }

    /// For tombstone and skip records, the inclusive ranges (empty for messages).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let n = if self.is_msg() {
            0
        } else {
            self.payload.len() / 16
        };
        (0..n).map(move |i| {
            let mut r = Reader::new(&self.payload[i * 16..i * 16 + 16]);
            (r.u64().unwrap_or(0), r.u64().unwrap_or(0))
        })
    }
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Incomplete { need: FIXED_LEN });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(FIXED_LEN + CRC_LEN..=MAX_RECORD_LEN).contains(&len) {
        return Err(DecodeError::BadLength(len));
    }
    if buf.len() < len {
        return Err(DecodeError::Incomplete { need: len });
    }
    let body = &buf[..len - CRC_LEN];
    let crc = u32::from_le_bytes([buf[len - 4], buf[len - 3], buf[len - 2], buf[len - 1]]);
    if crc32c::crc32c(body) != crc {
        return Err(DecodeError::BadCrc);
    }
    parse(body, len, crc).map_err(|e| DecodeError::Malformed(e.0))
}

fn parse(body: &[u8], len: usize, crc: u32) -> Result<Record<'_>, crate::codec::Malformed> {
    use crate::codec::Malformed;
    let mut r = Reader::new(body);
    r.u32()?;
    let fl = r.u8()?;
    if fl & !flags::KNOWN != 0 {
        return Err(Malformed("unknown flags"));
    }
    let seq = r.u64()?;
    let ts = r.i64()?;
    let slen = r.u16()? as usize;
    let hlen = r.u32()? as usize;
    let ttl = if fl & flags::TTL != 0 {
        Some(r.i64()?)
    } else {
        None
    };
    let subject =
        std::str::from_utf8(r.bytes(slen)?).map_err(|_| Malformed("subject not UTF-8"))?;
    let hdr = r.bytes(hlen)?;
    let payload = r.bytes(r.remaining())?;
    let is_range = fl & (flags::TOMBSTONE | flags::SKIP) != 0;
    if is_range {
        if !subject.is_empty() || !hdr.is_empty() || ttl.is_some() || fl & flags::HEADERS != 0 {
            return Err(Malformed("range record with message fields"));
        }
        if payload.is_empty() || payload.len() % 16 != 0 {
            return Err(Malformed("range record without ranges"));
        }
        let mut pr = Reader::new(payload);
        while pr.remaining() > 0 {
            if pr.u64()? > pr.u64()? {
                return Err(Malformed("inverted range"));
            }
        }
    }
    if !is_range && subject.is_empty() {
        return Err(Malformed("message without subject"));
    }
    Ok(Record {
        flags: fl,
        seq,
        ts,
        ttl,
        subject,
        hdr,
        payload,
        len,
        crc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_truncation_is_incomplete() {
        let mut buf = Vec::new();
        let m = MsgFields {
            seq: 7,
            ts: 99,
            subject: "a.b",
            hdr: b"NATS/1.0\r\n\r\n",
            payload: b"hello",
            ttl: Some(5),
        };
        let n = encode_msg(&mut buf, &m);
        assert_eq!(n, buf.len());
        let r = decode(&buf).expect("decodes");
        assert_eq!(
            (r.seq, r.ts, r.subject, r.payload, r.ttl),
            (7, 99, "a.b", &b"hello"[..], Some(5))
        );
        assert!(r.is_msg());
        for cut in 0..buf.len() {
            assert!(matches!(
                decode(&buf[..cut]),
                Err(DecodeError::Incomplete { .. })
            ));
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn tombstone_range() {
        let mut buf = Vec::new();
        encode_ranges(&mut buf, flags::TOMBSTONE, &[(3, 9), (12, 12)], 1);
        let r = decode(&buf).expect("decodes");
        assert!(!r.is_msg());
        assert_eq!(r.seq, 3);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(3, 9), (12, 12)]);
    }
}
