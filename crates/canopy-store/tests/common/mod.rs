//! Test helpers: a controllable clock, store constructors, and a runner over both stores.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use canopy_store::{FileStore, FileStoreOptions, MemStore, MessageStore, StoreConfig, SyncPolicy};

/// A clock tests move by hand.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn new() -> Self {
        TestClock(Arc::new(AtomicI64::new(1_700_000_000_000_000_000)))
    }
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as i64, Ordering::SeqCst);
    }
    pub fn clock(&self) -> canopy_store::Clock {
        let c = self.0.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    }
}

pub fn file_opts(clock: Option<&TestClock>) -> FileStoreOptions {
    let mut o = FileStoreOptions {
        segment_size: 1024,
        sync: SyncPolicy::Interval(Duration::from_secs(120)),
        ..Default::default()
    };
    if let Some(c) = clock {
        o.clock = c.clock();
    }
    o
}

/// Runs `f` on a memory store and on a file store (small segments, so rolls happen), then
/// reopens the file store and checks its state survived.
pub fn each_store(cfg: StoreConfig, f: impl Fn(&mut dyn MessageStore, &TestClock)) {
    let clock = TestClock::new();
    let mut m = MemStore::with_clock(cfg.clone(), clock.clock());
    f(&mut m, &clock);

    let clock = TestClock::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _) =
        FileStore::open(dir.path(), cfg.clone(), file_opts(Some(&clock))).expect("open");
    f(&mut s, &clock);
    let before = s.state();
    let subjects = s.subjects_state(">");
    drop(s);
    let (s, _) = FileStore::open(dir.path(), cfg, file_opts(Some(&clock))).expect("reopen");
    assert_eq!(s.state(), before, "state after reopen");
    assert_eq!(s.subjects_state(">"), subjects, "subjects after reopen");
    assert_eq!(m.state().msgs, before.msgs, "memory and file stores agree");
}

/// The reference model: a map of live messages and the stream limits, nothing clever.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub cfg: StoreConfig,
    pub msgs: std::collections::BTreeMap<u64, (String, Vec<u8>)>,
    pub last: u64,
}

impl Model {
    pub fn new(cfg: StoreConfig) -> Self {
        Model {
            cfg,
            ..Default::default()
        }
    }

    fn size(subject: &str, payload: &[u8]) -> u64 {
        canopy_store::record::msg_len(subject.len(), 0, payload.len(), false) as u64
    }

    pub fn bytes(&self) -> u64 {
        self.msgs.values().map(|(s, p)| Self::size(s, p)).sum()
    }

    pub fn first(&self) -> u64 {
        self.msgs.keys().next().copied().unwrap_or(self.last + 1)
    }

    /// Appends with discard-old limits (max_msgs, max_bytes, max_msgs_per_subject).
    pub fn store(&mut self, subject: &str, payload: &[u8]) -> u64 {
        self.last += 1;
        let seq = self.last;
        self.msgs
            .insert(seq, (subject.to_string(), payload.to_vec()));
        let mps = self.cfg.max_msgs_per_subject;
        if mps > 0 {
            let same: Vec<u64> = self
                .msgs
                .iter()
                .filter(|(_, m)| m.0 == subject)
                .map(|(s, _)| *s)
                .collect();
            for s in same.iter().take(same.len().saturating_sub(mps as usize)) {
                self.msgs.remove(s);
            }
        }
        while (self.cfg.max_msgs > 0 && self.msgs.len() as u64 > self.cfg.max_msgs)
            || (self.cfg.max_bytes > 0 && self.bytes() > self.cfg.max_bytes)
        {
            let f = self.first();
            self.msgs.remove(&f);
        }
        seq
    }

    pub fn remove(&mut self, seq: u64) -> bool {
        self.msgs.remove(&seq).is_some()
    }

    pub fn purge(&mut self, filter: &str, up_to: Option<u64>, keep: Option<u64>) -> u64 {
        let mut m: Vec<u64> = self
            .msgs
            .iter()
            .filter(|(_, v)| filter.is_empty() || canopy_subject::subject_matches(filter, &v.0))
            .map(|(s, _)| *s)
            .collect();
        if let Some(k) = keep {
            m.truncate(m.len().saturating_sub(k as usize));
        }
        if let Some(u) = up_to {
            m.retain(|&s| s < u);
        }
        for s in &m {
            self.msgs.remove(s);
        }
        m.len() as u64
    }

    pub fn compact(&mut self, seq: u64) -> u64 {
        let n = self.purge("", Some(seq), None);
        if seq > self.last + 1 {
            self.last = seq - 1;
        }
        n
    }

    pub fn skip(&mut self, n: u64) {
        self.last += n;
    }

    /// Checks every observable of `s` against the model.
    pub fn check(&self, s: &dyn MessageStore, filters: &[&str]) -> Result<(), String> {
        let st = s.state();
        let want = (
            self.msgs.len() as u64,
            self.first(),
            self.last,
            self.bytes(),
        );
        let got = (st.msgs, st.first_seq, st.last_seq, st.bytes);
        if want != got {
            return Err(format!(
                "state (msgs, first, last, bytes): want {want:?} got {got:?}"
            ));
        }
        let t = s.totals();
        if (t.msgs, t.first_seq, t.last_seq, t.bytes) != got {
            return Err(format!("totals {t:?} disagree with state {got:?}"));
        }
        for (seq, (subj, p)) in &self.msgs {
            let m = s.load_msg(*seq).map_err(|e| format!("load {seq}: {e}"))?;
            if m.subject() != subj || m.payload() != &p[..] {
                return Err(format!("load {seq}: wrong message {m:?}"));
            }
        }
        for seq in self.first()..=self.last {
            if !self.msgs.contains_key(&seq) && s.load_msg(seq).is_ok() {
                return Err(format!("deleted {seq} is loadable"));
            }
        }
        let mut subjects: std::collections::BTreeMap<String, canopy_store::SimpleState> =
            Default::default();
        for (seq, (subj, _)) in &self.msgs {
            let e = subjects
                .entry(subj.clone())
                .or_insert(canopy_store::SimpleState {
                    msgs: 0,
                    first: *seq,
                    last: *seq,
                });
            e.msgs += 1;
            e.last = *seq;
        }
        let got: Vec<_> = s.subjects_state(">");
        let want: Vec<_> = subjects.clone().into_iter().collect();
        if got != want {
            return Err(format!("subjects_state: want {want:?} got {got:?}"));
        }
        for f in filters {
            for start in [0, self.first() + 1, self.last] {
                let matching: Vec<u64> = self
                    .msgs
                    .iter()
                    .filter(|(q, v)| **q >= start && canopy_subject::subject_matches(f, &v.0))
                    .map(|(q, _)| *q)
                    .collect();
                let want = canopy_store::SimpleState {
                    msgs: matching.len() as u64,
                    first: matching.first().copied().unwrap_or(0),
                    last: matching.last().copied().unwrap_or(0),
                };
                let got = s.filtered_state(f, start);
                if got != want {
                    return Err(format!(
                        "filtered_state({f}, {start}): want {want:?} got {got:?}"
                    ));
                }
                let next = s
                    .load_next_matching(f, start)
                    .map_err(|e| e.to_string())?
                    .map(|m| m.seq);
                if next != matching.first().copied() {
                    return Err(format!(
                        "load_next_matching({f}, {start}): want {:?} got {next:?}",
                        matching.first()
                    ));
                }
            }
            let last = self
                .msgs
                .iter()
                .rev()
                .find(|(_, v)| canopy_subject::subject_matches(f, &v.0))
                .map(|(q, _)| *q);
            let got = s
                .last_by_subject(f)
                .map_err(|e| e.to_string())?
                .map(|m| m.seq);
            if got != last {
                return Err(format!("last_by_subject({f}): want {last:?} got {got:?}"));
            }
        }
        Ok(())
    }
}
