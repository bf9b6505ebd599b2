//! Consumer state: delivery/ack bookkeeping, atomic persistence, reload, and the fake-fs
//! crash behaviour of the write-temp-rename (the old state or the new one, never a mix).

use std::path::Path;
use std::sync::Arc;

use canopy_store::{
    ConsumerState, ConsumerStore, FakeFs, FileConsumerStore, MemConsumerStore, SequencePair,
    SyncPolicy,
};

#[test]
fn ack_floor_follows_the_oldest_pending() {
    let mut c = MemConsumerStore::new();
    for (d, s) in [(1, 10), (2, 11), (3, 12)] {
        c.update_delivered(d, s, 1, 5);
    }
    c.update_delivered(4, 10, 2, 6); // redelivery of stream seq 10
    assert_eq!(c.state().redelivered.get(&10), Some(&1));
    assert!(c.update_ack(2, 11));
    assert_eq!(
        c.state().ack_floor,
        SequencePair {
            consumer: 3,
            stream: 9
        }
    );
    assert!(c.update_ack(4, 10));
    assert_eq!(
        c.state().ack_floor,
        SequencePair {
            consumer: 2,
            stream: 11
        }
    );
    assert!(c.update_ack(3, 12));
    assert_eq!(
        c.state().ack_floor,
        SequencePair {
            consumer: 4,
            stream: 12
        }
    );
    assert!(c.state().pending.is_empty() && c.state().redelivered.is_empty());
    assert!(!c.update_ack(3, 12));
}

#[test]
fn persisted_atomically_and_reloaded() {
    let fs = FakeFs::new();
    let dir = Path::new("/s/obs/c1");
    let mut c =
        FileConsumerStore::open(Arc::new(fs.clone()), dir, SyncPolicy::Always).expect("open");
    c.update_delivered(1, 5, 1, 100);
    c.flush().expect("flush");
    let saved = c.state().clone();
    let writes = fs.bytes_written();
    c.flush().expect("clean flush writes nothing");
    assert_eq!(fs.bytes_written(), writes);
    c.update_delivered(2, 6, 1, 101);
    // Crash in the middle of writing the new state: the old one must load.
    fs.crash_after(10);
    assert!(c.flush().is_err());
    fs.restart();
    let c2 =
        FileConsumerStore::open(Arc::new(fs.clone()), dir, SyncPolicy::Always).expect("reopen");
    assert_eq!(c2.state(), &saved);
    let bytes = saved.encode();
    assert_eq!(ConsumerState::decode(&bytes).expect("decode"), saved);
    for cut in 0..bytes.len() {
        assert!(ConsumerState::decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn thousands_of_consumers_flush_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn canopy_store::Fs> = Arc::new(canopy_store::StdFs);
    let t0 = std::time::Instant::now();
    let mut cs: Vec<FileConsumerStore> = (0..1000)
        .map(|i| {
            FileConsumerStore::open(
                fs.clone(),
                &dir.path().join(format!("c{i}")),
                SyncPolicy::default(),
            )
            .expect("open")
        })
        .collect();
    let t = std::time::Instant::now();
    for (i, c) in cs.iter_mut().enumerate() {
        c.update_delivered(1, i as u64 + 1, 1, 0);
        c.flush().expect("flush");
    }
    let per = t.elapsed() / 1000;
    eprintln!(
        "open {:?}, flush {per:?} per consumer",
        t0.elapsed() - t.elapsed()
    );
    assert!(
        per < std::time::Duration::from_millis(5),
        "flush took {per:?} per consumer"
    );
}
