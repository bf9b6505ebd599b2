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
