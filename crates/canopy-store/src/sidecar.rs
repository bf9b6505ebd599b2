//! Sidecar index of a sealed segment (`<base>.idx`) and the stream snapshot (`state.bin`).
//!
//! A sidecar lets a restart rebuild a segment's index without reading the segment:
//! dense slots (offset, length, segment-local subject id), the deleted ranges known when it
//! was written, per-subject `(first, last, count)` for the segment, the tombstone ranges
//! whose records live in the segment, TTL deadlines, and the segment's length and last
//! record crc (to tell whether the segment changed since). The snapshot adds the stream
//! counters, every deleted range, and the open segment's index up to a watermark.
//!
//! Both end with a crc32c over everything before it; decoding is bounds-checked and never
//! panics (a fuzz target checks that).

use std::collections::HashMap;

use crate::codec::{check_crc, seal_crc, Malformed, Put, Reader};
use crate::index::{Chunk, Index};
use crate::subjects::NO_SUBJECT;

const SIDECAR_MAGIC: u32 = 0x5849_5343; // "CSIX"
const SNAPSHOT_MAGIC: u32 = 0x504E_5343; // "CSNP"
const VERSION: u32 = 1;

/// One subject's messages within a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSummary {
    pub name: String,
    pub first: u64,
    pub last: u64,
    pub msgs: u64,
}

/// A segment's index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sidecar {
    pub base: u64,
    /// Segment bytes covered by this index.
    pub seg_len: u64,
    /// Offset and crc of the last record in the covered bytes.
    pub last_rec: Option<(u64, u32)>,
    pub max_ts: i64,
    pub subjects: Vec<SubjectSummary>,
    /// Dense from `base`: (offset, length, index into `subjects` or `u32::MAX` if deleted).
    pub slots: Vec<(u32, u32, u32)>,
    pub deleted: Vec<(u64, u64)>,
    pub tombstones: Vec<(u64, u64)>,
    /// (seq, deadline ns) of live messages with a TTL.
    pub ttls: Vec<(u64, i64)>,
}

fn put_ranges(out: &mut Vec<u8>, r: &[(u64, u64)]) {
    out.put_u32(r.len() as u32);
    for &(a, b) in r {
        out.put_u64(a);
        out.put_u64(b);
    }
}

fn get_ranges(r: &mut Reader<'_>) -> Result<Vec<(u64, u64)>, Malformed> {
    let n = r.count(16)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = (r.u64()?, r.u64()?);
        if a > b {
            return Err(Malformed("inverted range"));
        }
        v.push((a, b));
    }
    Ok(v)
}

impl Sidecar {
    /// The index of one chunk.
    pub(crate) fn from_chunk(c: &Chunk, idx: &Index) -> Sidecar {
        let mut local: HashMap<u32, u32> = HashMap::new();
        let mut subjects: Vec<SubjectSummary> = Vec::new();
        let mut slots = Vec::with_capacity(c.slots.len());
        let mut ttls = Vec::new();
        let has_ttls = !idx.ttl_of.is_empty();
        let mut last: Option<(u32, u32)> = None;
        for (i, s) in c.slots.iter().enumerate() {
            let seq = c.base + i as u64;
            if !s.live() {
                slots.push((0, 0, NO_SUBJECT));
                continue;
            }
            // Runs of one subject are common: only a change of subject costs a lookup.
            let l = match last {
                Some((sid, l)) if sid == s.sid => l,
                _ => *local.entry(s.sid).or_insert_with(|| {
                    let name = idx.subjects.get(s.sid).map_or("", |e| &e.name);
                    subjects.push(SubjectSummary {
                        name: name.to_string(),
                        first: seq,
                        last: seq,
                        msgs: 0,
                    });
                    (subjects.len() - 1) as u32
                }),
            };
            last = Some((s.sid, l));
            let sum = &mut subjects[l as usize];
            sum.last = seq;
            sum.msgs += 1;
            slots.push((s.off, s.len, l));
            if has_ttls {
                if let Some(&d) = idx.ttl_of.get(&seq) {
                    ttls.push((seq, d));
                }
            }
        }
        Sidecar {
            base: c.base,
            seg_len: c.raw,
            last_rec: c.last_rec,
            max_ts: c.max_ts,
            subjects,
            slots,
            deleted: c.deleted_ranges(),
            tombstones: c.tombstones.clone(),
            ttls,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.base);
        out.put_u64(self.seg_len);
        match self.last_rec {
            Some((off, crc)) => {
                out.put_u8(1);
                out.put_u64(off);
                out.put_u32(crc);
            }
            None => out.put_u8(0),
        }
        out.put_i64(self.max_ts);
        out.put_u32(self.subjects.len() as u32);
        for s in &self.subjects {
            out.put_u16(s.name.len() as u16);
            out.extend_from_slice(s.name.as_bytes());
            out.put_u64(s.first);
            out.put_u64(s.last);
            out.put_u64(s.msgs);
        }
        out.put_u32(self.slots.len() as u32);
        for &(off, len, sid) in &self.slots {
            out.put_u32(off);
            out.put_u32(len);
            out.put_u32(sid);
        }
        put_ranges(out, &self.deleted);
        put_ranges(out, &self.tombstones);
        out.put_u32(self.ttls.len() as u32);
        for &(seq, d) in &self.ttls {
            out.put_u64(seq);
            out.put_i64(d);
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Sidecar, Malformed> {
        let base = r.u64()?;
        let seg_len = r.u64()?;
        let last_rec = match r.u8()? {
            0 => None,
            1 => Some((r.u64()?, r.u32()?)),
            _ => return Err(Malformed("bad last_rec tag")),
        };
        let max_ts = r.i64()?;
        let n = r.count(26)?;
        let mut subjects = Vec::with_capacity(n);
        for _ in 0..n {
            let l = r.u16()? as usize;
            let name = std::str::from_utf8(r.bytes(l)?)
                .map_err(|_| Malformed("subject not UTF-8"))?
                .to_string();
            if name.is_empty() {
                return Err(Malformed("empty subject"));
            }
            subjects.push(SubjectSummary {
                name,
                first: r.u64()?,
                last: r.u64()?,
                msgs: r.u64()?,
            });
        }
        let n = r.count(12)?;
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let (off, len, sid) = (r.u32()?, r.u32()?, r.u32()?);
            if sid != NO_SUBJECT && sid as usize >= subjects.len() {
                return Err(Malformed("slot subject out of range"));
            }
            slots.push((off, len, sid));
        }
        let deleted = get_ranges(r)?;
        let tombstones = get_ranges(r)?;
        let n = r.count(16)?;
        let mut ttls = Vec::with_capacity(n);
        for _ in 0..n {
            ttls.push((r.u64()?, r.i64()?));
        }
        Ok(Sidecar {
            base,
            seg_len,
            last_rec,
            max_ts,
            subjects,
            slots,
            deleted,
            tombstones,
            ttls,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.slots.len() * 12);
        out.put_u32(SIDECAR_MAGIC);
        out.put_u32(VERSION);
        self.encode_body(&mut out);
        seal_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Sidecar, Malformed> {
        let body = check_crc(buf)?;
        let mut r = Reader::new(body);
        if r.u32()? != SIDECAR_MAGIC || r.u32()? != VERSION {
            return Err(Malformed("not a sidecar"));
        }
        let s = Self::decode_body(&mut r)?;
        if r.remaining() != 0 {
            return Err(Malformed("trailing bytes"));
        }
        Ok(s)
    }
}

/// The stream snapshot written at sync and close.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub first: u64,
    pub last: u64,
    pub last_ts: i64,
    pub lost_msgs: u64,
    pub lost_bytes: u64,
    /// Every deleted range known at the time (across all segments).
    pub deleted: Vec<(u64, u64)>,
    /// The open segment's index; its `seg_len`/`last_rec` are the watermark.
    pub open: Sidecar,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u32(SNAPSHOT_MAGIC);
        out.put_u32(VERSION);
        out.put_u64(self.first);
        out.put_u64(self.last);
        out.put_i64(self.last_ts);
        out.put_u64(self.lost_msgs);
        out.put_u64(self.lost_bytes);
        put_ranges(&mut out, &self.deleted);
        self.open.encode_body(&mut out);
        seal_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Snapshot, Malformed> {
        let body = check_crc(buf)?;
        let mut r = Reader::new(body);
        if r.u32()? != SNAPSHOT_MAGIC || r.u32()? != VERSION {
            return Err(Malformed("not a snapshot"));
        }
        let s = Snapshot {
            first: r.u64()?,
            last: r.u64()?,
            last_ts: r.i64()?,
            lost_msgs: r.u64()?,
            lost_bytes: r.u64()?,
            deleted: get_ranges(&mut r)?,
            open: Sidecar::decode_body(&mut r)?,
        };
        if r.remaining() != 0 {
            return Err(Malformed("trailing bytes"));
        }
        Ok(s)
    }
}
