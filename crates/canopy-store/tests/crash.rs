//! Crash tests: a fixed workload runs on the fake file system, which kills the "process"
//! after N written bytes, for N at every byte boundary of the last records (and a stride over
//! the rest). After each cut the store is reopened and must equal the reference model with
//! every acknowledged operation applied, plus at most the one operation in flight: nothing
//! acknowledged is lost, nothing deleted comes back. It must then accept new appends.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use canopy_store::{
    FakeFs, FileStore, FileStoreOptions, MessageStore, NewMsg, PurgeOpts, StoreConfig, SyncPolicy,
};
use common::{Model, TestClock};

const FILTERS: &[&str] = &["k.*", "z", ">"];

#[derive(Debug, Clone)]
enum Op {
    Store(&'static str, usize),
    Batch(&'static [&'static str]),
    Remove(u64),
    Purge(&'static str, Option<u64>),
    Sync,
}

fn workload() -> Vec<Op> {
    use Op::*;
    let mut v = Vec::new();
    for i in 0..12 {
        v.push(Store(["k.a", "k.b", "z"][i % 3], 10 + i * 7));
    }
    v.extend([
        Remove(3),
        Remove(7),
        Sync,
        Batch(&["k.a", "z", "k.c", "z"]),
        Remove(2),
    ]);
    for i in 0..8 {
        v.push(Store(["k.c", "z"][i % 2], 30));
    }
    v.extend([
        Purge("k.b", None),
        Remove(20),
        Store("k.d", 5),
        Purge("", Some(10)),
    ]);
    v.extend([
        Batch(&["z", "z", "k.a"]),
        Remove(25),
        Store("z", 60),
        Remove(27),
    ]);
    v
}

fn cfg() -> StoreConfig {
    StoreConfig {
        max_msgs: 18,
        max_msgs_per_subject: 4,
        ..Default::default()
    }
}

fn open(fs: &FakeFs, sync: SyncPolicy, clock: &TestClock) -> canopy_store::Result<FileStore> {
    let opts = FileStoreOptions {
        segment_size: 400,
        sync,
        fs: Arc::new(fs.clone()),
        clock: clock.clock(),
    };
    Ok(FileStore::open(Path::new("/c"), cfg(), opts)?.0)
}

fn apply_model(m: &mut Model, op: &Op) {
    match op {
        Op::Store(s, n) => {
            m.store(s, &vec![7u8; *n]);
        }
        Op::Batch(subjects) => {
            for s in subjects.iter() {
                m.store(s, b"batch");
            }
        }
        Op::Remove(seq) => {
            m.remove(*seq);
        }
        Op::Purge(f, up_to) => {
            m.purge(f, *up_to, None);
        }
        Op::Sync => {}
    }
}

fn apply_store(s: &mut FileStore, op: &Op) -> canopy_store::Result<()> {
    match op {
        Op::Store(subj, n) => s.store_msg(NewMsg::new(subj, &vec![7u8; *n])).map(|_| ()),
        Op::Batch(subjects) => {
            let msgs: Vec<NewMsg<'_>> = subjects.iter().map(|s| NewMsg::new(s, b"batch")).collect();
            for r in s.store_batch(&msgs)? {
                r?;
            }
            Ok(())
        }
        Op::Remove(seq) => s.remove_msg(*seq).map(|_| ()),
        Op::Purge(f, up_to) => s
            .purge(&PurgeOpts {
                filter: Some(f.to_string()),
                up_to_seq: *up_to,
                keep: None,
            })
            .map(|_| ()),
        Op::Sync => s.sync(),
    }
}

/// The states an unacknowledged operation may leave: applied, or for a batch any prefix
/// of it (each message of a batch is acknowledged on its own).
fn inflight_models(m: &Model, op: &Op) -> Vec<Model> {
    match op {
        Op::Batch(subjects) => (1..=subjects.len())
            .map(|k| {
                let mut n = m.clone();
                apply_model(&mut n, &Op::Batch(&subjects[..k]));
                n
            })
            .collect(),
        _ => {
            let mut n = m.clone();
            apply_model(&mut n, op);
            vec![n]
        }
    }
}

/// Runs the workload until the simulated crash; returns the model of acknowledged
/// operations and the models the operation in flight (if any) may have produced.
fn run(fs: &FakeFs, sync: SyncPolicy, clock: &TestClock) -> (Model, Vec<Model>) {
    let mut model = Model::new(cfg());
    let Ok(mut s) = open(fs, sync, clock) else {
        return (model, Vec::new());
    };
    for op in workload() {
        if apply_store(&mut s, &op).is_err() {
            let inflight = inflight_models(&model, &op);
            return (model, inflight);
        }
        apply_model(&mut model, &op);
    }
    (model, Vec::new())
}

fn check_cut(cut: u64, sync: SyncPolicy) {
    let fs = FakeFs::new();
    let clock = TestClock::new();
    fs.crash_after(cut);
    let (acked, inflight) = run(&fs, sync, &clock);
    fs.restart();
    let mut s = open(&fs, sync, &clock).unwrap_or_else(|e| panic!("cut {cut}: reopen failed: {e}"));
    let mut errors = Vec::new();
    let mut ok_model = None;
    for m in std::iter::once(&acked).chain(&inflight) {
        match m.check(&s, FILTERS) {
            Ok(()) => {
                ok_model = Some(m.clone());
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    let Some(ok_model) = ok_model else {
        panic!(
            "cut {cut}: matches no allowed state:\n{}",
            errors.join("\n")
        );
    };
    // The recovered store keeps working.
    let mut m = ok_model;
    let want = m.store("after", b"crash");
    let got = s
        .store_msg(NewMsg::new("after", b"crash"))
        .expect("append after recovery")
        .0;
    assert_eq!(got, want, "cut {cut}: sequence after recovery");
    m.check(&s, FILTERS)
        .unwrap_or_else(|e| panic!("cut {cut}: after append: {e}"));
}

fn total_bytes(sync: SyncPolicy) -> u64 {
    let fs = FakeFs::new();
    let (m, inflight) = run(&fs, sync, &TestClock::new());
    assert!(inflight.is_empty());
    assert!(
        m.msgs.len() > 5,
        "workload leaves {} messages",
        m.msgs.len()
    );
    fs.bytes_written()
}

#[test]
fn crash_at_every_byte_of_the_last_records() {
    let sync = SyncPolicy::Interval(Duration::from_secs(60));
    let total = total_bytes(sync);
    let tail = 1500.min(total);
    for cut in total - tail..=total {
        check_cut(cut, sync);
    }
}

#[test]
fn crash_anywhere_in_the_workload() {
    let sync = SyncPolicy::Always;
    let total = total_bytes(sync);
    for cut in (0..total).step_by(7) {
        check_cut(cut, sync);
    }
}

const SEG1: &str = "/c/msgs/00000000000000000001.seg";

/// Stores one message per subject, lets `damage` edit the first segment, and reopens.
fn damaged(
    subjects: &[&str],
    damage: impl FnOnce(&mut Vec<u8>, usize),
) -> (FileStore, canopy_store::RecoveryReport) {
    let fs = FakeFs::new();
    let clock = TestClock::new();
    let sync = SyncPolicy::Interval(Duration::from_secs(60));
    let mut s = open(&fs, sync, &clock).expect("open");
    for subj in subjects {
        s.store_msg(NewMsg::new(subj, b"0123456789"))
            .expect("store");
    }
    let rec = s.load_msg(1).expect("load").size() as usize;
    drop(s);
    let mut data = fs.file(Path::new(SEG1)).expect("segment");
    damage(&mut data, rec);
    fs.set_file(Path::new(SEG1), data);
    let opts = FileStoreOptions {
        segment_size: 400,
        sync,
        fs: Arc::new(fs.clone()),
        clock: clock.clock(),
    };
    FileStore::open(Path::new("/c"), cfg(), opts).expect("reopen never refuses")
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let (s, report) = damaged(&["t", "t", "t"], |d, _| d.truncate(d.len() - 5));
    assert_eq!(s.state().msgs, 2);
    assert_eq!(
        report.truncated_bytes,
        s.load_msg(1).expect("load").size() - 5
    );
    assert!(report.lost.is_empty());
}

#[test]
fn corruption_in_the_middle_is_skipped_and_reported() {
    let (s, report) = damaged(&["t1", "t2", "t3", "t4", "t5"], |d, rec| {
        d[rec + 10] ^= 0xff
    });
    assert_eq!(s.state().msgs, 4);
    assert!(s.load_msg(2).is_err());
    assert_eq!(report.lost.len(), 1);
    assert_eq!(report.lost[0].seqs, Some((2, 2)));
    assert_eq!(s.state().lost.msgs, 1);
}

#[test]
fn group_commit_fsyncs_once_per_batch() {
    let fs = FakeFs::new();
    let clock = TestClock::new();
    let mut s = open(&fs, SyncPolicy::Always, &clock).expect("open");
    s.store_msg(NewMsg::new("g", b"x")).expect("store");
    let before = fs.syncs();
    let msgs: Vec<NewMsg<'_>> = (0..5).map(|_| NewMsg::new("g", b"x")).collect();
    s.store_batch(&msgs).expect("batch");
    assert_eq!(fs.syncs() - before, 1);
}
