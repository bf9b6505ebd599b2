//! Property tests: random operation sequences run against the memory store, the file store
//! (on the fake file system, with tiny segments so rolls, sidecars and compaction happen)
//! and the reference model; every observable is compared after each step, and the file
//! store is also reopened (clean and unclean) and compared again.

mod common;

use std::path::Path;
use std::sync::Arc;

use canopy_store::{
    FakeFs, FileStore, FileStoreOptions, MemStore, MessageStore, NewMsg, PurgeOpts, StoreConfig,
    SyncPolicy,
};
use common::{Model, TestClock};
use proptest::prelude::*;

const SUBJECTS: &[&str] = &["a.x", "a.y", "b.x", "b.y.z", "c"];
const FILTERS: &[&str] = &["a.*", "b.>", "c", "*.x", ">"];

#[derive(Debug, Clone)]
enum Op {
    Store(usize, usize),
    Batch(Vec<(usize, usize)>),
    Remove(u64),
    Purge(usize, Option<u64>, Option<u64>),
    Compact(u64),
    Skip(u64),
    Sync,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SUBJECTS.len(), 0..40usize).prop_map(|(s, n)| Op::Store(s, n)),
        2 => prop::collection::vec((0..SUBJECTS.len(), 0..40usize), 1..6).prop_map(Op::Batch),
        4 => (0..40u64).prop_map(Op::Remove),
        1 => (0..FILTERS.len() + 1, prop::option::of(0..40u64), prop::option::of(0..4u64))
            .prop_map(|(f, u, k)| Op::Purge(f, u, k)),
        1 => (0..45u64).prop_map(Op::Compact),
        1 => (1..5u64).prop_map(Op::Skip),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn cfg() -> impl Strategy<Value = StoreConfig> {
    (
        prop_oneof![Just(0u64), 3..12u64],
        prop_oneof![Just(0u64), 1..3u64],
        prop_oneof![Just(0u64), 400..1500u64],
    )
        .prop_map(|(max_msgs, mps, max_bytes)| StoreConfig {
            max_msgs,
            max_msgs_per_subject: mps,
            max_bytes,
            ..Default::default()
        })
}

fn open(fs: &FakeFs, cfg: &StoreConfig, clock: &TestClock) -> FileStore {
    let opts = FileStoreOptions {
        segment_size: 300,
        sync: SyncPolicy::Interval(std::time::Duration::from_secs(1)),
        fs: Arc::new(fs.clone()),
        clock: clock.clock(),
    };
    FileStore::open(Path::new("/s"), cfg.clone(), opts)
        .expect("open")
        .0
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

fn run(cfg: StoreConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = TestClock::new();
    let fs = FakeFs::new();
    let mut model = Model::new(cfg.clone());
    let mut mem = MemStore::with_clock(cfg.clone(), clock.clock());
    let mut file = Some(open(&fs, &cfg, &clock));
    for (i, op) in ops.into_iter().enumerate() {
        let Some(f) = file.as_mut() else {
            unreachable!()
        };
        let base = model.first();
        match &op {
            Op::Store(s, n) => {
                let want = model.store(SUBJECTS[*s], &payload(*n));
                for st in [&mut mem as &mut dyn MessageStore, f] {
                    let got = st
                        .store_msg(NewMsg::new(SUBJECTS[*s], &payload(*n)))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(got.0, want);
                }
            }
            Op::Batch(v) => {
                let ps: Vec<Vec<u8>> = v.iter().map(|(_, n)| payload(*n)).collect();
                let msgs: Vec<NewMsg<'_>> = v
                    .iter()
                    .zip(&ps)
                    .map(|((s, _), p)| NewMsg::new(SUBJECTS[*s], p))
                    .collect();
                let want: Vec<u64> = v
                    .iter()
                    .zip(&ps)
                    .map(|((s, _), p)| model.store(SUBJECTS[*s], p))
                    .collect();
                for st in [&mut mem as &mut dyn MessageStore, f] {
                    let got: Vec<u64> = st
                        .store_batch(&msgs)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .into_iter()
                        .map(|r| r.map(|x| x.0).unwrap_or(0))
                        .collect();
                    prop_assert_eq!(&got, &want);
                }
            }
            Op::Remove(d) => {
                let want = model.remove(base + d);
                prop_assert_eq!(mem.remove_msg(base + d).ok(), Some(want));
                prop_assert_eq!(f.remove_msg(base + d).ok(), Some(want));
            }
            Op::Purge(fi, up, keep) => {
                let filter = FILTERS.get(*fi).copied().unwrap_or("");
                let up_to = up.map(|u| base + u);
                let want = model.purge(filter, up_to, *keep);
                let opts = PurgeOpts {
                    filter: Some(filter.to_string()),
                    up_to_seq: up_to,
                    keep: *keep,
                };
                prop_assert_eq!(mem.purge(&opts).ok(), Some(want));
                prop_assert_eq!(f.purge(&opts).ok(), Some(want));
            }
            Op::Compact(d) => {
                let want = model.compact(base + d);
                prop_assert_eq!(mem.compact(base + d).ok(), Some(want));
                prop_assert_eq!(f.compact(base + d).ok(), Some(want));
            }
            Op::Skip(n) => {
                let seq = model.last + 1;
                model.skip(*n);
                mem.skip_msgs(seq, *n)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                f.skip_msgs(seq, *n)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Sync => f.sync().map_err(|e| TestCaseError::fail(e.to_string()))?,
            Op::Reopen => {
                f.close().map_err(|e| TestCaseError::fail(e.to_string()))?;
                drop(file.take());
                file = Some(open(&fs, &cfg, &clock));
            }
            Op::Crash => {
                // A kill -9: no close, no snapshot; everything written survives.
                drop(file.take());
                fs.restart();
                file = Some(open(&fs, &cfg, &clock));
            }
        }
        let Some(f) = file.as_ref() else {
            unreachable!()
        };
        model
            .check(&mem, FILTERS)
            .map_err(|e| TestCaseError::fail(format!("mem after op {i} {op:?}: {e}")))?;
        model
            .check(f, FILTERS)
            .map_err(|e| TestCaseError::fail(format!("file after op {i} {op:?}: {e}")))?;
    }
    drop(file);
    fs.restart();
    let f = open(&fs, &cfg, &clock);
    model
        .check(&f, FILTERS)
        .map_err(|e| TestCaseError::fail(format!("file after final reopen: {e}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn stores_match_model(cfg in cfg(), ops in prop::collection::vec(op(), 1..60)) {
        run(cfg, ops)?;
    }
}
