//! The in-memory index shared by the file and memory stores: chunks (one per segment for the
//! file store) of dense slots from a base sequence, the subject table, the stream counters and
//! the TTL deadlines. Everything here is pure bookkeeping; persisting is the backend's job.
//!
//! A slot is 12 bytes per sequence (subject id, record length, offset in the segment). A
//! deleted or skipped sequence keeps its slot with the subject id [`NO_SUBJECT`], so the dense
//! array doubles as the deleted set; on disk the deleted set is written as ranges.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::subjects::{Filter, SubjectTable, NO_SUBJECT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub sid: u32,
    pub len: u32,
    pub off: u32,
}

impl Slot {
    pub const DEAD: Slot = Slot {
        sid: NO_SUBJECT,
        len: 0,
        off: 0,
    };
    pub fn live(&self) -> bool {
        self.sid != NO_SUBJECT
    }
}

/// A run of consecutive sequences starting at `base`.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub base: u64,
    pub slots: Vec<Slot>,
    pub live: u64,
    pub live_bytes: u64,
    pub max_ts: i64,
    /// File store: bytes in the segment file (messages, dead records, tombstones).
    pub raw: u64,
    /// Tombstone ranges whose records live in this chunk's segment.
    pub tombstones: Vec<(u64, u64)>,
    /// File store: offset and crc of the last record written, for the snapshot watermark.
    pub last_rec: Option<(u64, u32)>,
}

impl Chunk {
    pub fn new(base: u64) -> Chunk {
        Chunk {
            base,
            slots: Vec::new(),
            live: 0,
            live_bytes: 0,
            max_ts: i64::MIN,
            raw: 0,
            tombstones: Vec::new(),
            last_rec: None,
        }
    }

    /// One past the last sequence with a slot.
    pub fn end(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    pub fn slot(&self, seq: u64) -> Option<Slot> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i).copied()
    }

    /// Deleted sequences of this chunk as inclusive ranges.
    pub fn deleted_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.live() {
                continue;
            }
            let seq = self.base + i as u64;
            match out.last_mut() {
                Some(r) if r.1 + 1 == seq => r.1 = seq,
                _ => out.push((seq, seq)),
            }
        }
        out
    }
}

/// Stream-wide index.
#[derive(Debug)]
pub(crate) struct Index {
    pub chunks: BTreeMap<u64, Chunk>,
    pub subjects: SubjectTable,
    pub msgs: u64,
    pub bytes: u64,
    /// First live sequence, or `last + 1` when empty.
    pub first: u64,
    pub last: u64,
    pub last_ts: i64,
    /// (deadline ns, seq) of messages with a TTL.
    pub ttl: BTreeSet<(i64, u64)>,
    pub ttl_of: HashMap<u64, i64>,
}

/// The TTL deadline of a message that never expires.
pub const NEVER: i64 = i64::MAX;

impl Index {
    pub fn new(first_seq: u64) -> Index {
        let first = first_seq.max(1);
        let mut chunks = BTreeMap::new();
        chunks.insert(first, Chunk::new(first));
        Index {
            chunks,
            subjects: SubjectTable::default(),
            msgs: 0,
            bytes: 0,
            first,
            last: first - 1,
            last_ts: 0,
            ttl: BTreeSet::new(),
            ttl_of: HashMap::new(),
        }
    }

    pub fn open_chunk(&self) -> Option<&Chunk> {
        self.chunks.values().next_back()
    }

    pub fn open_chunk_mut(&mut self) -> Option<&mut Chunk> {
        self.chunks.values_mut().next_back()
    }

    pub fn chunk_of(&self, seq: u64) -> Option<&Chunk> {
        let (_, c) = self.chunks.range(..=seq).next_back()?;
        (seq < c.end()).then_some(c)
    }

    pub fn slot(&self, seq: u64) -> Option<Slot> {
        self.chunk_of(seq)?.slot(seq).filter(Slot::live)
    }

    /// Adds a live message as the newest sequence of the open chunk (gaps become dead slots).
    pub fn push(&mut self, seq: u64, ts: i64, subject: &str, len: u32, off: u32, ttl: Option<i64>) {
        self.push_slot(seq, subject, len, off);
        if let Some(c) = self.chunks.values_mut().next_back() {
            c.max_ts = c.max_ts.max(ts);
        }
        self.last_ts = ts;
        self.add_msg_ttl(seq, ts, ttl);
    }

    /// Records a message's TTL from its record: positive = nanoseconds, negative = never
    /// expires (`Nats-TTL: never`, which also exempts it from `max_age`).
    pub fn add_msg_ttl(&mut self, seq: u64, ts: i64, ttl: Option<i64>) {
        match ttl {
            Some(t) if t > 0 => self.add_ttl(seq, ts.saturating_add(t)),
            Some(t) if t < 0 => self.add_ttl(seq, NEVER),
            _ => {}
        }
    }

    /// Does `seq` never expire (`Nats-TTL: never`)?
    pub fn is_never(&self, seq: u64) -> bool {
        self.ttl_of.get(&seq) == Some(&NEVER)
    }

    /// Are there messages that never expire?
    pub fn has_never(&self) -> bool {
        self.ttl.last().is_some_and(|&(d, _)| d == NEVER)
    }

    pub fn add_ttl(&mut self, seq: u64, deadline: i64) {
        self.ttl.insert((deadline, seq));
        self.ttl_of.insert(seq, deadline);
    }

    /// Recovery: adds a live slot to the open chunk without touching timestamps or TTLs.
    pub fn push_slot(&mut self, seq: u64, subject: &str, len: u32, off: u32) {
        let sid = self.subjects.add(subject, seq);
        let Some(c) = self.chunks.values_mut().next_back() else {
            return;
        };
        while c.end() < seq {
            c.slots.push(Slot::DEAD);
        }
        c.slots.push(Slot { sid, len, off });
        c.live += 1;
        c.live_bytes += u64::from(len);
        if self.msgs == 0 {
            self.first = seq;
        }
        self.msgs += 1;
        self.bytes += u64::from(len);
        self.last = self.last.max(seq);
    }

    /// Marks every live sequence in `a..=b` deleted (only chunks that overlap are visited).
    pub fn remove_range(&mut self, a: u64, b: u64) -> u64 {
        let starts: Vec<u64> = self
            .chunks
            .range(..=b)
            .rev()
            .take_while(|(_, c)| c.end() > a)
            .filter(|(_, c)| c.live > 0)
            .map(|(base, _)| *base)
            .collect();
        let mut n = 0;
        for base in starts.into_iter().rev() {
            let Some(c) = self.chunks.get(&base) else {
                continue;
            };
            let (lo, hi) = (a.max(c.base), b.min(c.end().saturating_sub(1)));
            let live: Vec<u64> = (lo..=hi)
                .filter(|&s| c.slot(s).is_some_and(|sl| sl.live()))
                .collect();
            for s in live {
                self.remove(s);
                n += 1;
            }
        }
        n
    }

    /// Marks `seq` deleted; returns its slot if it was live.
    pub fn remove(&mut self, seq: u64) -> Option<Slot> {
        let (&base, _) = self.chunks.range(..=seq).next_back()?;
        let c = self.chunks.get_mut(&base)?;
        let i = usize::try_from(seq - base).ok()?;
        let slot = *c.slots.get(i)?;
        if !slot.live() {
            return None;
        }
        c.slots[i] = Slot::DEAD;
        c.live -= 1;
        c.live_bytes -= u64::from(slot.len);
        self.msgs -= 1;
        self.bytes -= u64::from(slot.len);
        if let Some(d) = self.ttl_of.remove(&seq) {
            self.ttl.remove(&(d, seq));
        }
        self.unlink_subject(slot.sid, seq);
        if seq == self.first {
            self.first = if self.msgs == 0 {
                self.last + 1
            } else {
                self.next_live(seq + 1, &mut Filter::All)
                    .unwrap_or(self.last + 1)
            };
        }
        Some(slot)
    }

    fn unlink_subject(&mut self, sid: u32, seq: u64) {
        let Some(e) = self.subjects.get_mut(sid) else {
            return;
        };
        if e.state.msgs <= 1 {
            self.subjects.drop_id(sid);
            return;
        }
        e.state.msgs -= 1;
        if seq == e.state.first {
            e.state.first = seq + 1;
            e.stale_first = true;
        }
        if seq == e.state.last {
            e.state.last = seq - 1;
            e.stale_last = true;
        }
    }

    /// Exact state of a subject (scans for a stale first or last).
    pub fn subject_state(&self, sid: u32) -> Option<crate::SimpleState> {
        let e = self.subjects.get(sid)?;
        let mut st = e.state;
        if e.stale_first {
            st.first = self.next_live(st.first, &mut Filter::Literal(Some(sid)))?;
        }
        if e.stale_last {
            st.last = self.prev_live(st.last, &mut Filter::Literal(Some(sid)))?;
        }
        Some(st)
    }

    /// Like [`Index::subject_state`], and remembers the result.
    pub fn resolve_subject(&mut self, sid: u32) -> Option<crate::SimpleState> {
        let st = self.subject_state(sid)?;
        if let Some(e) = self.subjects.get_mut(sid) {
            e.state = st;
            e.stale_first = false;
            e.stale_last = false;
        }
        Some(st)
    }

    /// The first live sequence `>= from` matching the filter.
    pub fn next_live(&self, from: u64, filter: &mut Filter) -> Option<u64> {
        let mut found = None;
        self.for_each_live(from, filter, |seq, _| {
            found = Some(seq);
            false
        });
        found
    }

    /// The last live sequence `<= from` matching the filter.
    pub fn prev_live(&self, from: u64, filter: &mut Filter) -> Option<u64> {
        let mut from = from;
        let mut lo = 0;
        if let Filter::Literal(l) = filter {
            let st = l.and_then(|id| self.subjects.get(id)).map(|e| e.state)?;
            from = from.min(st.last);
            lo = st.first;
        }
        for (_, c) in self.chunks.range(..=from).rev() {
            if c.end() <= lo {
                return None;
            }
            if c.live == 0 {
                continue;
            }
            let hi = (from.min(c.end() - 1) - c.base) as usize;
            for i in (0..=hi).rev() {
                let s = c.slots[i];
                if s.live() && filter.matches(s.sid, &self.subjects) {
                    return Some(c.base + i as u64);
                }
            }
        }
        None
    }

    /// Calls `f(seq, slot)` for every live slot in `from..` matching the filter, in order,
    /// until `f` returns false.
    pub fn for_each_live(
        &self,
        from: u64,
        filter: &mut Filter,
        mut f: impl FnMut(u64, Slot) -> bool,
    ) {
        let mut from = from;
        let mut upto = u64::MAX;
        if let Filter::Literal(l) = filter {
            // The subject's first/last bound the scan even when they are stale.
            let Some(st) = l.and_then(|id| self.subjects.get(id)).map(|e| e.state) else {
                return;
            };
            from = from.max(st.first);
            upto = st.last;
        }
        let start = self
            .chunks
            .range(..=from)
            .next_back()
            .map_or(from, |(b, _)| *b);
        for (_, c) in self.chunks.range(start..) {
            if c.base > upto {
                return;
            }
            if c.live == 0 || c.end() <= from {
                continue;
            }
            let i0 = from.saturating_sub(c.base) as usize;
            for (i, s) in c.slots.iter().enumerate().skip(i0) {
                if s.live() && filter.matches(s.sid, &self.subjects) && !f(c.base + i as u64, *s) {
                    return;
                }
            }
        }
    }

    pub fn num_deleted(&self) -> u64 {
        if self.msgs == 0 {
            0
        } else {
            self.last - self.first + 1 - self.msgs
        }
    }
}

/// Coalesces sorted sequences into inclusive ranges.
pub(crate) fn to_ranges(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}
