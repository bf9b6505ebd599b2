//! The store logic shared by the file and memory stores: sequencing, limits, deletes,
//! purges, filtered reads and state, over the in-memory [`Index`]. A [`Backend`] persists
//! records and tombstones and reads them back; it decides where chunks (segments) begin.
//!
//! A mutation first updates the index, then stages records with the backend and commits
//! them with one write. If the backend fails part-way, the index may be ahead of the disk:
//! the store then refuses further mutations ([`StoreError::Failed`]) until reopened.

use std::collections::HashSet;

use crate::error::{Result, StoreError};
use crate::index::{to_ranges, Index, Slot};
use crate::record::{self, MsgFields};
use crate::subjects::Filter;
use crate::{
    Clock, Discard, LostStats, MessageStore, NewMsg, PurgeOpts, SimpleState, StoreConfig,
    StoredMsg, StreamState, Totals,
};

/// Persistence under a [`Store`].
pub(crate) trait Backend: Send {
    /// Stages a message record and returns `(offset, len)`. Before staging, it makes sure
    /// the index's open chunk accepts `m.seq` (rolling to a new chunk if it wants).
    fn stage_msg(&mut self, idx: &mut Index, m: &MsgFields<'_>) -> Result<(u32, u32)>;
    /// Starts a new chunk at `end + 1` after the skipped range `start..=end`.
    fn stage_skip(&mut self, idx: &mut Index, start: u64, end: u64, ts: i64) -> Result<()>;
    /// Persists deletes already applied to the index (tombstones, dropped chunks).
    fn stage_delete(&mut self, idx: &mut Index, ranges: &[(u64, u64)], ts: i64) -> Result<()>;
    /// Writes everything staged (one write), then fsyncs under `Always`.
    fn commit(&mut self, idx: &mut Index) -> Result<()>;
    fn read(&self, idx: &Index, seq: u64, slot: Slot) -> Result<StoredMsg>;
    fn read_ts(&self, idx: &Index, seq: u64, slot: Slot) -> Result<i64> {
        Ok(self.read(idx, seq, slot)?.ts)
    }
    fn sync(&mut self, idx: &mut Index) -> Result<()>;
    fn close(&mut self, idx: &mut Index) -> Result<()>;
}

/// A message store over a backend: [`crate::FileStore`] or [`crate::MemStore`].
pub struct Store<B> {
    pub(crate) idx: Index,
    pub(crate) be: B,
    cfg: StoreConfig,
    clock: Clock,
    failed: Option<String>,
    pub(crate) lost: LostStats,
}

// `Backend` is sealed (crate-private): the only backends are this crate's file and memory ones.
#[allow(private_bounds)]
impl<B: Backend> Store<B> {
    pub(crate) fn from_parts(idx: Index, be: B, cfg: StoreConfig, clock: Clock) -> Self {
        Store {
            idx,
            be,
            cfg,
            clock,
            failed: None,
            lost: LostStats::default(),
        }
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    fn check_ok(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Runs a mutation; a backend error poisons the store.
    fn mutate<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.check_ok()?;
        let r = f(self);
        if let Err(e) = &r {
            if matches!(e, StoreError::Io { .. } | StoreError::Corrupt { .. }) {
                self.failed = Some(e.to_string());
            }
        }
        r
    }

    fn read_slot(&self, seq: u64) -> Result<StoredMsg> {
        let slot = self.idx.slot(seq).ok_or(StoreError::NotFound)?;
        self.be.read(&self.idx, seq, slot)
    }

    /// Checks and stages one message; limit evictions go to `removed`.
    fn append_one(
        &mut self,
        m: &NewMsg<'_>,
        explicit: Option<(u64, i64)>,
        removed: &mut Vec<u64>,
    ) -> Result<(u64, i64)> {
        if m.subject.is_empty() || m.subject.len() > usize::from(u16::MAX) {
            return Err(StoreError::InvalidSubject(m.subject.to_string()));
        }
        let size = (m.hdr.len() + m.payload.len()) as u64;
        let rec_len = record::msg_len(
            m.subject.len(),
            m.hdr.len(),
            m.payload.len(),
            m.ttl.is_some(),
        );
        let cfg = &self.cfg;
        if cfg.max_msg_size > 0 && size > cfg.max_msg_size {
            return Err(StoreError::MaxMsgSize {
                size,
                max: cfg.max_msg_size,
            });
        }
        if rec_len > record::MAX_RECORD_LEN {
            return Err(StoreError::MaxMsgSize {
                size,
                max: (record::MAX_RECORD_LEN - record::FIXED_LEN - 12) as u64,
            });
        }
        if cfg.max_bytes > 0 && rec_len as u64 > cfg.max_bytes {
            return Err(StoreError::MaxBytes);
        }
        let (seq, ts) = match explicit {
            Some((seq, ts)) => {
                if seq <= self.idx.last {
                    return Err(StoreError::SeqOutOfOrder {
                        seq,
                        last: self.idx.last,
                    });
                }
                (seq, ts)
            }
            None => (self.idx.last + 1, self.now()),
        };
        let subj_msgs = || {
            self.idx
                .subjects
                .id(m.subject)
                .and_then(|id| self.idx.subjects.get(id))
                .map_or(0, |e| e.state.msgs)
        };
        if cfg.discard == Discard::New {
            if cfg.max_msgs > 0 && self.idx.msgs >= cfg.max_msgs {
                return Err(StoreError::MaxMsgs);
            }
            if cfg.max_bytes > 0 && self.idx.bytes + rec_len as u64 > cfg.max_bytes {
                return Err(StoreError::MaxBytes);
            }
            if cfg.discard_new_per_subject
                && cfg.max_msgs_per_subject > 0
                && subj_msgs() >= cfg.max_msgs_per_subject
            {
                return Err(StoreError::MaxMsgsPerSubject);
            }
        }
        let fields = MsgFields {
            seq,
            ts,
            subject: m.subject,
            hdr: m.hdr,
            payload: m.payload,
            ttl: m.ttl,
        };
        let (off, len) = self.be.stage_msg(&mut self.idx, &fields)?;
        self.idx.push(seq, ts, m.subject, len, off, m.ttl);
        self.enforce_limits(Some(m.subject), removed);
        Ok((seq, ts))
    }

    /// Evicts for `max_msgs_per_subject` (on `subject`, or every subject when `None`),
    /// and for `max_msgs`/`max_bytes` under discard-old.
    fn enforce_limits(&mut self, subject: Option<&str>, removed: &mut Vec<u64>) {
        let mps = self.cfg.max_msgs_per_subject;
        if mps > 0 {
            let ids: Vec<u32> = match subject {
                Some(s) => self.idx.subjects.id(s).into_iter().collect(),
                None => self.idx.subjects.iter().map(|(id, _)| id).collect(),
            };
            for id in ids {
                while let Some(st) = self.idx.resolve_subject(id).filter(|st| st.msgs > mps) {
                    self.idx.remove(st.first);
                    removed.push(st.first);
                }
            }
        }
        if self.cfg.discard == Discard::Old {
            let (mm, mb) = (self.cfg.max_msgs, self.cfg.max_bytes);
            while self.idx.msgs > 0
                && ((mm > 0 && self.idx.msgs > mm) || (mb > 0 && self.idx.bytes > mb))
            {
                let first = self.idx.first;
                self.idx.remove(first);
                removed.push(first);
            }
        }
    }

    /// Enforces the count and size limits now (after recovery or a config change).
    pub(crate) fn enforce_now(&mut self) -> Result<()> {
        self.mutate(|s| {
            let mut removed = Vec::new();
            s.enforce_limits(None, &mut removed);
            if removed.is_empty() {
                return Ok(());
            }
            s.finish(removed)
        })
    }

    /// Persists the deletes in `removed` and commits everything staged.
    fn finish(&mut self, mut removed: Vec<u64>) -> Result<()> {
        if !removed.is_empty() {
            removed.sort_unstable();
            removed.dedup();
            let ts = self.now();
            self.be
                .stage_delete(&mut self.idx, &to_ranges(removed), ts)?;
        }
        self.be.commit(&mut self.idx)
    }

    fn expire_before_append(&mut self, removed: &mut Vec<u64>) -> Result<()> {
        if let Some(due) = self.next_expiry() {
            let now = self.now();
            if due <= now {
                self.expire_into(now, removed)?;
            }
        }
        Ok(())
    }

    /// The oldest live messages past `cutoff` that may age out (messages with `Nats-TTL:
    /// never` are skipped), at most `limit`, by reading timestamps: the slow path, used
    /// only when such messages exist.
    fn aged_skipping_never(&self, cutoff: i64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut f = Filter::new("", &self.idx.subjects);
        self.idx.for_each_live(self.idx.first, &mut f, |seq, slot| {
            if self.idx.is_never(seq) {
                return true;
            }
            let ts = self.be.read_ts(&self.idx, seq, slot).unwrap_or(i64::MAX);
            if ts > cutoff || out.len() >= limit {
                return false;
            }
            out.push(seq);
            true
        });
        out
    }

    /// The timestamp of the oldest live message that may age out.
    fn oldest_ageing_ts(&self) -> Option<i64> {
        let mut f = Filter::new("", &self.idx.subjects);
        let mut ts = None;
        self.idx.for_each_live(self.idx.first, &mut f, |seq, slot| {
            if self.idx.is_never(seq) {
                return true;
            }
            ts = self.be.read_ts(&self.idx, seq, slot).ok();
            false
        });
        ts
    }

    fn expire_into(&mut self, now: i64, removed: &mut Vec<u64>) -> Result<()> {
        let max_age = i64::try_from(self.cfg.max_age.as_nanos()).unwrap_or(i64::MAX);
        if max_age > 0 && self.idx.has_never() {
            let cutoff = now.saturating_sub(max_age);
            for s in self.aged_skipping_never(cutoff, usize::MAX) {
                self.idx.remove(s);
                removed.push(s);
            }
        } else if max_age > 0 {
            let cutoff = now.saturating_sub(max_age);
            while self.idx.msgs > 0 {
                let first = self.idx.first;
                let Some(c) = self.idx.chunk_of(first) else {
                    break;
                };
                if c.max_ts <= cutoff {
                    // The whole chunk is older than max_age.
                    let seqs: Vec<u64> = (first..c.end())
                        .filter(|&s| c.slot(s).is_some_and(|sl| sl.live()))
                        .collect();
                    for s in seqs {
                        self.idx.remove(s);
                        removed.push(s);
                    }
                    continue;
                }
                let slot = self.idx.slot(first).ok_or(StoreError::NotFound)?;
                if self.be.read_ts(&self.idx, first, slot)? > cutoff {
                    break;
                }
                self.idx.remove(first);
                removed.push(first);
            }
        }
        while let Some(&(deadline, seq)) = self.idx.ttl.first() {
            if deadline > now {
                break;
            }
            self.idx.remove(seq);
            removed.push(seq);
        }
        Ok(())
    }

    fn remove_seqs(&mut self, seqs: Vec<u64>) -> Result<u64> {
        let mut removed = Vec::with_capacity(seqs.len());
        for s in seqs {
            if self.idx.remove(s).is_some() {
                removed.push(s);
            }
        }
        let n = removed.len() as u64;
        self.finish(removed)?;
        Ok(n)
    }

    fn matching(&self, filter: &str, from: u64, upto: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut f = Filter::new(filter, &self.idx.subjects);
        self.idx.for_each_live(from, &mut f, |seq, _| {
            if seq >= upto {
                return false;
            }
            out.push(seq);
            true
        });
        out
    }

    fn load_at(&self, seq: Option<u64>) -> Result<Option<StoredMsg>> {
        seq.map(|s| self.read_slot(s)).transpose()
    }
}

#[allow(private_bounds)]
impl<B: Backend> MessageStore for Store<B> {
    fn store_msg(&mut self, msg: NewMsg<'_>) -> Result<(u64, i64)> {
        self.mutate(|s| {
            let mut removed = Vec::new();
            s.expire_before_append(&mut removed)?;
            let r = s.append_one(&msg, None, &mut removed);
            s.finish(removed)?;
            r
        })
    }

    fn store_batch(&mut self, msgs: &[NewMsg<'_>]) -> Result<Vec<Result<(u64, i64)>>> {
        self.mutate(|s| {
            let mut removed = Vec::new();
            s.expire_before_append(&mut removed)?;
            let mut out = Vec::with_capacity(msgs.len());
            for m in msgs {
                let r = s.append_one(m, None, &mut removed);
                if let Err(e @ (StoreError::Io { .. } | StoreError::Corrupt { .. })) = r {
                    return Err(e);
                }
                out.push(r);
            }
            s.finish(removed)?;
            Ok(out)
        })
    }

    fn store_raw(&mut self, seq: u64, ts: i64, msg: NewMsg<'_>) -> Result<()> {
        self.mutate(|s| {
            let mut removed = Vec::new();
            let r = s.append_one(&msg, Some((seq, ts)), &mut removed);
            s.finish(removed)?;
            r.map(|_| ())
        })
    }

    fn skip_msgs(&mut self, seq: u64, n: u64) -> Result<()> {
        self.mutate(|s| {
            if seq != s.idx.last + 1 {
                return Err(StoreError::SeqOutOfOrder {
                    seq,
                    last: s.idx.last,
                });
            }
            if n == 0 {
                return Ok(());
            }
            let end = seq + n - 1;
            let ts = s.now();
            s.be.stage_skip(&mut s.idx, seq, end, ts)?;
            s.idx.last = end;
            if s.idx.msgs == 0 {
                s.idx.first = end + 1;
            }
            s.be.commit(&mut s.idx)
        })
    }

    fn load_msg(&self, seq: u64) -> Result<StoredMsg> {
        self.read_slot(seq)
    }

    fn load_next_matching(&self, filter: &str, start: u64) -> Result<Option<StoredMsg>> {
        let mut f = Filter::new(filter, &self.idx.subjects);
        self.load_at(self.idx.next_live(start, &mut f))
    }

    fn load_prev_matching(&self, filter: &str, start: u64) -> Result<Option<StoredMsg>> {
        let mut f = Filter::new(filter, &self.idx.subjects);
        self.load_at(self.idx.prev_live(start, &mut f))
    }

    fn last_by_subject(&self, filter: &str) -> Result<Option<StoredMsg>> {
        self.load_prev_matching(filter, u64::MAX)
    }

    fn remove_msg(&mut self, seq: u64) -> Result<bool> {
        self.mutate(|s| Ok(s.remove_seqs(vec![seq])? == 1))
    }

    fn purge(&mut self, opts: &PurgeOpts) -> Result<u64> {
        self.mutate(|s| {
            let filter = opts.filter.as_deref().unwrap_or("");
            let mut seqs = s.matching(filter, s.idx.first, u64::MAX);
            if let Some(k) = opts.keep {
                let keep = usize::try_from(k).unwrap_or(usize::MAX).min(seqs.len());
                seqs.truncate(seqs.len() - keep);
            }
            if let Some(up_to) = opts.up_to_seq {
                seqs.retain(|&q| q < up_to);
            }
            s.remove_seqs(seqs)
        })
    }

    fn compact(&mut self, seq: u64) -> Result<u64> {
        self.mutate(|s| {
            let seqs = s.matching("", s.idx.first, seq);
            let n = s.remove_seqs(seqs)?;
            if seq > s.idx.last + 1 {
                // nats-server: compacting past the end moves the stream's sequence forward.
                let ts = s.now();
                let (start, end) = (s.idx.last + 1, seq - 1);
                s.be.stage_skip(&mut s.idx, start, end, ts)?;
                s.idx.last = end;
                s.idx.first = seq;
                s.be.commit(&mut s.idx)?;
            }
            Ok(n)
        })
    }

    fn expire(&mut self, now: i64) -> Result<u64> {
        self.mutate(|s| {
            let mut removed = Vec::new();
            s.expire_into(now, &mut removed)?;
            let n = removed.len() as u64;
            s.finish(removed)?;
            Ok(n)
        })
    }

    fn expiring(&self, now: i64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let max_age = i64::try_from(self.cfg.max_age.as_nanos()).unwrap_or(i64::MAX);
        if max_age > 0 {
            out = self.aged_skipping_never(now.saturating_sub(max_age), limit);
        }
        for &(deadline, seq) in &self.idx.ttl {
            if deadline > now || out.len() >= limit {
                break;
            }
            out.push(seq);
        }
        out
    }

    fn next_expiry(&self) -> Option<i64> {
        let ttl = self.idx.ttl.first().map(|&(d, _)| d);
        let max_age = i64::try_from(self.cfg.max_age.as_nanos()).unwrap_or(i64::MAX);
        let age = if max_age > 0 && self.idx.has_never() {
            self.oldest_ageing_ts().map(|ts| ts.saturating_add(max_age))
        } else if max_age > 0 && self.idx.msgs > 0 {
            let first = self.idx.first;
            let ts = self
                .idx
                .slot(first)
                .and_then(|sl| self.be.read_ts(&self.idx, first, sl).ok())
                .unwrap_or(0);
            Some(ts.saturating_add(max_age))
        } else {
            None
        };
        // A never-expiring message's deadline is not an expiry.
        let ttl = ttl.filter(|&d| d != crate::index::NEVER);
        match (ttl, age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn update_config(&mut self, cfg: StoreConfig) -> Result<()> {
        self.mutate(|s| {
            s.cfg = cfg;
            let mut removed = Vec::new();
            s.enforce_limits(None, &mut removed);
            let now = s.now();
            s.expire_into(now, &mut removed)?;
            s.finish(removed)
        })
    }

    fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    fn state(&self) -> StreamState {
        let idx = &self.idx;
        let first_ts = idx
            .slot(idx.first)
            .and_then(|sl| self.be.read_ts(idx, idx.first, sl).ok())
            .unwrap_or(0);
        StreamState {
            msgs: idx.msgs,
            bytes: idx.bytes,
            first_seq: idx.first,
            first_ts,
            last_seq: idx.last,
            last_ts: idx.last_ts,
            num_subjects: idx.subjects.len() as u64,
            num_deleted: idx.num_deleted(),
            lost: self.lost,
        }
    }

    fn totals(&self) -> Totals {
        let idx = &self.idx;
        Totals {
            msgs: idx.msgs,
            bytes: idx.bytes,
            first_seq: idx.first,
            last_seq: idx.last,
        }
    }

    fn filtered_state(&self, filter: &str, start: u64) -> SimpleState {
        let idx = &self.idx;
        let f = Filter::new(filter, &idx.subjects);
        let ids = match f {
            Filter::All => None,
            _ => Some(f.matching_ids(&idx.subjects)),
        };
        let mut out = SimpleState::default();
        let mut add = |st: SimpleState| {
            if out.msgs == 0 {
                out = st;
            } else {
                out.msgs += st.msgs;
                out.first = out.first.min(st.first);
                out.last = out.last.max(st.last);
            }
        };
        match ids {
            // Whole subjects when every message is at or after `start`; else count by scan.
            Some(ids)
                if ids
                    .iter()
                    .all(|&id| idx.subjects.get(id).is_some_and(|e| e.state.first >= start)) =>
            {
                for id in ids {
                    if let Some(st) = idx.subject_state(id) {
                        add(st);
                    }
                }
            }
            Some(ids) => {
                let set: HashSet<u32> = ids.into_iter().collect();
                let mut f = Filter::new(filter, &idx.subjects);
                idx.for_each_live(start, &mut f, |seq, sl| {
                    if set.contains(&sl.sid) {
                        add(SimpleState {
                            msgs: 1,
                            first: seq,
                            last: seq,
                        });
                    }
                    true
                });
            }
            None if start <= idx.first => {
                if let Some(last) = idx.prev_live(idx.last, &mut Filter::All) {
                    add(SimpleState {
                        msgs: idx.msgs,
                        first: idx.first,
                        last,
                    });
                }
            }
            None => {
                idx.for_each_live(start, &mut Filter::All, |seq, _| {
                    add(SimpleState {
                        msgs: 1,
                        first: seq,
                        last: seq,
                    });
                    true
                });
            }
        }
        out
    }

    fn subjects_state(&self, filter: &str) -> Vec<(String, SimpleState)> {
        let f = Filter::new(filter, &self.idx.subjects);
        let mut out: Vec<(String, SimpleState)> = f
            .matching_ids(&self.idx.subjects)
            .into_iter()
            .filter_map(|id| {
                let name = self.idx.subjects.get(id)?.name.to_string();
                Some((name, self.idx.subject_state(id)?))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn num_pending(&self, start: u64, filter: &str, last_per_subject: bool) -> u64 {
        if !last_per_subject {
            return self.filtered_state(filter, start).msgs;
        }
        let f = Filter::new(filter, &self.idx.subjects);
        f.matching_ids(&self.idx.subjects)
            .into_iter()
            .filter_map(|id| self.idx.subject_state(id))
            .filter(|st| st.last >= start)
            .count() as u64
    }

    fn deleted_ranges(&self) -> Vec<(u64, u64)> {
        let idx = &self.idx;
        let mut out = Vec::new();
        if idx.msgs == 0 {
            return out;
        }
        let mut next = idx.first;
        idx.for_each_live(idx.first, &mut Filter::All, |seq, _| {
            if seq > next {
                out.push((next, seq - 1));
            }
            next = seq + 1;
            true
        });
        out
    }

    fn sync(&mut self) -> Result<()> {
        self.mutate(|s| s.be.sync(&mut s.idx))
    }

    fn close(&mut self) -> Result<()> {
        self.mutate(|s| s.be.close(&mut s.idx))
    }
}
