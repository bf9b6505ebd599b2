//! Unit-level behaviour of both stores through the `MessageStore` trait: appends, reads,
//! per-subject state, limits, purge variants, TTL and age, skips, the directory lock.

mod common;

use std::time::Duration;

use canopy_store::{
    Discard, FileStore, MessageStore, NewMsg, PurgeOpts, SimpleState, StoreConfig, StoreError,
};
use common::{each_store, file_opts};

fn put(s: &mut dyn MessageStore, subj: &str) -> u64 {
    s.store_msg(NewMsg::new(subj, b"data")).expect("store").0
}

#[test]
fn append_load_and_subject_state() {
    each_store(StoreConfig::default(), |s, _| {
        for subj in ["a.1", "a.2", "b.1", "a.1"] {
            put(s, subj);
        }
        let m = s.load_msg(2).expect("load");
        assert_eq!((m.seq, m.subject(), m.payload()), (2, "a.2", &b"data"[..]));
        assert_eq!(
            s.last_by_subject("a.1").expect("ok").map(|m| m.seq),
            Some(4)
        );
        assert_eq!(
            s.last_by_subject("a.*").expect("ok").map(|m| m.seq),
            Some(4)
        );
        assert_eq!(
            s.load_next_matching("b.>", 1).expect("ok").map(|m| m.seq),
            Some(3)
        );
        assert_eq!(s.load_next_matching("b.>", 4).expect("ok"), None);
        assert_eq!(
            s.filtered_state("a.*", 2),
            SimpleState {
                msgs: 2,
                first: 2,
                last: 4
            }
        );
        assert_eq!(s.num_pending(1, "a.>", true), 2);
        let st = s.state();
        assert_eq!(
            (st.msgs, st.first_seq, st.last_seq, st.num_subjects),
            (4, 1, 4, 3)
        );
        assert!(s.remove_msg(1).expect("rm"));
        assert!(!s.remove_msg(1).expect("rm again"));
        assert!(matches!(s.load_msg(1), Err(StoreError::NotFound)));
        assert_eq!(
            s.subjects_state("a.1"),
            vec![(
                "a.1".to_string(),
                SimpleState {
                    msgs: 1,
                    first: 4,
                    last: 4
                }
            )]
        );
        assert_eq!(s.state().first_seq, 2);
    });
}

#[test]
fn limits_discard_old_and_new() {
    let cfg = StoreConfig {
        max_msgs: 3,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        for _ in 0..5 {
            put(s, "x");
        }
        let st = s.state();
        assert_eq!((st.msgs, st.first_seq, st.last_seq), (3, 3, 5));
    });
    let cfg = StoreConfig {
        max_msgs: 2,
        discard: Discard::New,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        put(s, "x");
        put(s, "x");
        assert!(matches!(
            s.store_msg(NewMsg::new("x", b"d")),
            Err(StoreError::MaxMsgs)
        ));
        assert_eq!(s.state().last_seq, 2);
    });
    let cfg = StoreConfig {
        max_bytes: 200,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        for _ in 0..10 {
            put(s, "x");
        }
        assert!(s.state().bytes <= 200);
        assert!(matches!(
            s.store_msg(NewMsg::new("x", &[0u8; 300])),
            Err(StoreError::MaxBytes)
        ));
    });
    let cfg = StoreConfig {
        max_msg_size: 4,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        assert!(matches!(
            s.store_msg(NewMsg::new("x", b"12345")),
            Err(StoreError::MaxMsgSize { size: 5, max: 4 })
        ));
    });
}

#[test]
fn per_subject_limits() {
    let cfg = StoreConfig {
        max_msgs_per_subject: 2,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        for subj in ["k.a", "k.b", "k.a", "k.a", "k.b", "k.a"] {
            put(s, subj);
        }
        assert_eq!(
            s.subjects_state(">"),
            vec![
                (
                    "k.a".to_string(),
                    SimpleState {
                        msgs: 2,
                        first: 4,
                        last: 6
                    }
                ),
                (
                    "k.b".to_string(),
                    SimpleState {
                        msgs: 2,
                        first: 2,
                        last: 5
                    }
                ),
            ]
        );
    });
    let cfg = StoreConfig {
        max_msgs_per_subject: 1,
        discard: Discard::New,
        discard_new_per_subject: true,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        put(s, "k.a");
        assert!(matches!(
            s.store_msg(NewMsg::new("k.a", b"")),
            Err(StoreError::MaxMsgsPerSubject)
        ));
        put(s, "k.b");
    });
}

#[test]
fn purge_variants() {
    let fill = |s: &mut dyn MessageStore| {
        for i in 0..10 {
            put(s, if i % 2 == 0 { "p.even" } else { "p.odd" });
        }
    };
    each_store(StoreConfig::default(), |s, _| {
        fill(s);
        assert_eq!(
            s.purge(&PurgeOpts {
                filter: Some("p.even".into()),
                ..Default::default()
            })
            .expect("purge"),
            5
        );
        assert_eq!(s.state().msgs, 5);
        assert_eq!(s.deleted_ranges(), vec![(3, 3), (5, 5), (7, 7), (9, 9)]);
        assert_eq!(
            s.purge(&PurgeOpts {
                keep: Some(2),
                ..Default::default()
            })
            .expect("purge"),
            3
        );
        assert_eq!(s.state().first_seq, 8);
        assert_eq!(s.purge(&PurgeOpts::default()).expect("purge"), 2);
        let st = s.state();
        assert_eq!((st.msgs, st.first_seq, st.last_seq), (0, 11, 10));
        assert_eq!(put(s, "p.x"), 11);
    });
    each_store(StoreConfig::default(), |s, _| {
        fill(s);
        let n = s
            .purge(&PurgeOpts {
                filter: Some("p.*".into()),
                up_to_seq: Some(4),
                ..Default::default()
            })
            .expect("purge");
        assert_eq!(n, 3);
        assert_eq!(s.state().first_seq, 4);
        assert_eq!(s.compact(8).expect("compact"), 4);
        assert_eq!(s.state().first_seq, 8);
        assert_eq!(
            s.purge(&PurgeOpts {
                filter: Some("p.odd".into()),
                keep: Some(1),
                ..Default::default()
            })
            .expect("p"),
            1
        );
        assert_eq!(s.state().first_seq, 9);
    });
}

#[test]
fn ttl_and_max_age() {
    let cfg = StoreConfig {
        max_age: Duration::from_secs(10),
        ..Default::default()
    };
    each_store(cfg, |s, clock| {
        put(s, "a");
        clock.advance(Duration::from_secs(6));
        put(s, "a");
        s.store_msg(NewMsg {
            ttl: Some(2_000_000_000),
            ..NewMsg::new("t", b"x")
        })
        .expect("ttl");
        assert_eq!(s.next_expiry(), Some(clock.now() + 2_000_000_000));
        clock.advance(Duration::from_secs(3));
        assert_eq!(s.expire(clock.now()).expect("expire"), 1);
        assert_eq!(s.state().msgs, 2);
        clock.advance(Duration::from_secs(2));
        assert_eq!(s.expire(clock.now()).expect("expire"), 1);
        assert_eq!(s.state().first_seq, 2);
        clock.advance(Duration::from_secs(10));
        put(s, "b"); // expires the rest on the way in
        let st = s.state();
        assert_eq!((st.msgs, st.first_seq), (1, 4));
    });
}

/// `Nats-TTL: never` (a negative TTL): the message outlives `max_age`, the others around
/// it age out, and the expiry timer does not spin on it; the file store keeps it across a
/// reopen (with the index snapshot and from a record scan).
#[test]
fn never_ttl_outlives_max_age() {
    let cfg = StoreConfig {
        max_age: Duration::from_secs(10),
        ..Default::default()
    };
    each_store(cfg.clone(), |s, clock| {
        put(s, "a");
        s.store_msg(NewMsg {
            ttl: Some(-1),
            ..NewMsg::new("keep", b"x")
        })
        .expect("never");
        put(s, "b");
        assert_eq!(s.next_expiry(), Some(clock.now() + 10_000_000_000));
        clock.advance(Duration::from_secs(11));
        assert_eq!(s.expire(clock.now()).expect("expire"), 2);
        let st = s.state();
        assert_eq!((st.msgs, st.first_seq, st.last_seq), (1, 2, 3));
        assert_eq!(s.next_expiry(), None, "nothing left that expires");
        assert!(s.expiring(clock.now() + 1_000_000_000_000, 10).is_empty());
        put(s, "c");
        clock.advance(Duration::from_secs(11));
        put(s, "d"); // ages "c" out on the way in, keeps "keep"
        let st = s.state();
        assert_eq!((st.msgs, st.first_seq), (2, 2));
    });
}

#[test]
fn skip_and_raw() {
    each_store(StoreConfig::default(), |s, _| {
        put(s, "a");
        s.skip_msgs(2, 100).expect("skip");
        assert_eq!(put(s, "a"), 102);
        s.store_raw(5000, 7, NewMsg::new("m", b"")).expect("raw");
        assert!(matches!(
            s.store_raw(10, 7, NewMsg::new("m", b"")),
            Err(StoreError::SeqOutOfOrder { .. })
        ));
        let st = s.state();
        assert_eq!(
            (st.msgs, st.first_seq, st.last_seq, st.num_deleted),
            (3, 1, 5000, 4997)
        );
        assert_eq!(s.load_msg(5000).expect("load").ts, 7);
    });
}

#[test]
fn first_seq_config() {
    let cfg = StoreConfig {
        first_seq: 1000,
        ..Default::default()
    };
    each_store(cfg, |s, _| {
        assert_eq!(s.state().first_seq, 1000);
        assert_eq!(put(s, "a"), 1000);
    });
}

#[test]
fn directory_lock_is_exclusive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _) =
        FileStore::open(dir.path(), StoreConfig::default(), file_opts(None)).expect("open");
    match FileStore::open(dir.path(), StoreConfig::default(), file_opts(None)) {
        Err(StoreError::Locked { dir: d }) => {
            assert_eq!(d, dir.path());
            let msg = StoreError::Locked { dir: d }.to_string();
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
    drop(a);
    FileStore::open(dir.path(), StoreConfig::default(), file_opts(None))
        .expect("reopen after drop");
}

/// Forward reads go through the file store's read-ahead buffer: reads in order, a reader
/// following the tail as messages are appended, random reads in between, and reads after
/// removals compacted the sealed segments all return the message asked for.
#[test]
fn forward_reads_and_compaction_through_the_read_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = canopy_store::FileStoreOptions {
        segment_size: 128 * 1024,
        ..file_opts(None)
    };
    let (mut s, _) = FileStore::open(dir.path(), StoreConfig::default(), opts).expect("open");
    let body = |seq: u64| format!("{seq:0>40}").into_bytes();
    let check = |s: &FileStore, seq: u64| {
        let m = s
            .load_msg(seq)
            .unwrap_or_else(|e| panic!("load {seq}: {e}"));
        assert_eq!(m.seq, seq);
        assert_eq!(m.payload(), &body(seq)[..], "payload of {seq}");
    };
    for seq in 1..=4000u64 {
        let got = s.store_msg(NewMsg::new("a", &body(seq))).expect("store").0;
        assert_eq!(got, seq);
    }
    for seq in 1..=4000 {
        check(&s, seq);
        if seq % 97 == 0 {
            // Random access in the middle of a forward scan.
            check(&s, 4001 - seq);
        }
    }
    // A reader following the tail of the open segment.
    for seq in 4001..=4300 {
        s.store_msg(NewMsg::new("a", &body(seq))).expect("store");
        check(&s, seq);
    }
    // Removals, then compaction of the sealed segments (on sync), then a forward scan.
    for seq in (1..=4300).filter(|q| q % 3 != 0) {
        assert!(s.remove_msg(seq).expect("remove"));
    }
    // Two reads forward fill the buffer from the first segment's start; compaction then
    // moves the survivors down, under the buffered range: it must not be served stale.
    check(&s, 3);
    check(&s, 6);
    s.sync().expect("sync");
    check(&s, 600);
    for seq in (3..=4300).step_by(3) {
        check(&s, seq);
    }
}
