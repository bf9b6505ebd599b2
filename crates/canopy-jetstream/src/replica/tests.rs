//! The replicated stream's state machine without a live group: entries applied to stream
//! cores directly (replays, refusals, purges, consumer updates, snapshots).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use canopy_store::{MemStore, SyncPolicy};
use parking_lot::RwLock;

use super::*;
use crate::engine::AccountLimits;
use crate::host::{Handler, Host, HostInfo, Lane, SubId};

struct NullHost;

impl Host for NullHost {
    fn subscribe(
        &self,
        _a: &str,
        _s: &str,
        _q: Option<&str>,
        _l: Lane,
        _h: Handler,
    ) -> Result<SubId, String> {
        Ok(SubId(0))
    }
    fn unsubscribe(&self, _id: SubId) {}
    fn publish(&self, _a: &str, _s: &str, _r: Option<&str>, _h: Option<&[u8]>, _p: &[u8]) -> u64 {
        0
    }
    fn deliver(
        &self,
        _a: &str,
        _t: &str,
        _s: &str,
        _r: Option<&str>,
        _h: Option<&[u8]>,
        _p: &[u8],
    ) -> u64 {
        0
    }
    fn has_interest(&self, _a: &str, _s: &str) -> bool {
        false
    }
    fn info(&self) -> HostInfo {
        HostInfo::default()
    }
}

fn cfg(extra: Value) -> StreamConfig {
    let mut v = json!({"name": "S", "subjects": ["s.>"], "num_replicas": 3,
        "max_msgs": -1, "max_bytes": -1, "max_msgs_per_subject": -1, "max_msg_size": -1,
        "max_consumers": -1, "duplicate_window": 120_000_000_000i64});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::from_value(v).unwrap()
}

/// A follower's core (memory store, no group).
fn core(rt: &tokio::runtime::Runtime, cfg: StreamConfig) -> StreamCore {
    let host: Arc<dyn Host> = Arc::new(NullHost);
    let store = Box::new(MemStore::new(cfg.store_config()));
    let mut c = StreamCore::new(
        "S".into(),
        Arc::from("A"),
        cfg,
        1,
        "uid".into(),
        store,
        None,
        host,
        None,
        None,
    );
    let account = Arc::new(Account {
        name: Arc::from("A"),
        limits: RwLock::new(AccountLimits::default()),
        dir: PathBuf::new(),
        streams: RwLock::new(BTreeMap::new()),
        subs: Mutex::new(Vec::new()),
        api_total: AtomicU64::new(0),
        api_errors: AtomicU64::new(0),
        admin: Mutex::new(()),
    });
    c.repl = Some(Box::new(Repl::new(
        Peer::new("me"),
        account,
        std::sync::Weak::new(),
        StoreSettings {
            sync: SyncPolicy::default(),
        },
        rt.handle().clone(),
    )));
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn msg(seq: u64, subject: &str, payload: &str) -> entry::RMsg {
    entry::RMsg {
        seq,
        ts: 1_000 + seq as i64,
        ttl: None,
        rollup: None,
        subject: subject.into(),
        hdr: Vec::new(),
        payload: payload.as_bytes().to_vec(),
    }
}

fn entry(ops: Vec<Op>) -> Vec<u8> {
    Entry {
        origin: 7,
        epoch: 1,
        ops,
    }
    .encode()
}

fn contents(c: &StreamCore) -> Vec<(u64, i64, String, Vec<u8>)> {
    let mut v = Vec::new();
    let mut seq = 1;
    while let Ok(Some(m)) = c.store.load_next_matching(">", seq) {
        v.push((m.seq, m.ts, m.subject().to_string(), m.payload().to_vec()));
        seq = m.seq + 1;
    }
    v
}

fn msg_results(answer: &[u8]) -> Vec<Option<String>> {
    let a = entry::decode_answers(answer).unwrap();
    entry::decode_msg_results(a[0].as_ref().unwrap()).unwrap()
}

#[test]
fn replayed_entries_store_once_and_refusals_keep_sequences_aligned() {
    let rt = rt();
    let mut a = core(
        &rt,
        cfg(json!({"discard": "new", "max_msgs_per_subject": 1, "discard_new_per_subject": true})),
    );
    let e1 = entry(vec![Op::Msgs(vec![
        msg(1, "s.a", "one"),
        msg(2, "s.a", "refused: s.a is full"),
        msg(3, "s.b", "three"),
    ])]);
    let ans = apply(&mut a, 1, &e1);
    let r = msg_results(&ans);
    assert!(r[0].is_none() && r[1].is_some() && r[2].is_none(), "{r:?}");
    // A replay after a crash: nothing is stored twice.
    apply(&mut a, 1, &e1);
    let e2 = entry(vec![Op::Msgs(vec![msg(4, "s.c", "four")])]);
    apply(&mut a, 2, &e2);
    let got = contents(&a);
    assert_eq!(
        got.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![1, 3, 4],
        "the refused message's sequence stays skipped"
    );
    assert_eq!(got[1], (3, 1_003, "s.b".to_string(), b"three".to_vec()));
    assert_eq!(a.store.totals().last_seq, 4);
    // Another member applying the same log holds the same stream.
    let mut b = core(
        &rt,
        cfg(json!({"discard": "new", "max_msgs_per_subject": 1, "discard_new_per_subject": true})),
    );
    apply(&mut b, 1, &e1);
    apply(&mut b, 2, &e2);
    assert_eq!(contents(&b), got);
}

#[test]
fn a_replayed_purge_spares_later_messages() {
    let rt = rt();
    let mut a = core(&rt, cfg(json!({})));
    apply(
        &mut a,
        1,
        &entry(vec![Op::Msgs(vec![msg(1, "s.a", "1"), msg(2, "s.a", "2")])]),
    );
    let purge = entry(vec![Op::Purge {
        filter: None,
        seq: None,
        keep: None,
        bound: 2,
    }]);
    apply(&mut a, 2, &purge);
    apply(
        &mut a,
        3,
        &entry(vec![Op::Msgs(vec![msg(3, "s.a", "3"), msg(4, "s.b", "4")])]),
    );
    apply(&mut a, 2, &purge);
    assert_eq!(
        contents(&a).iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[test]
fn followers_apply_consumer_updates_and_work_queue_removals() {
    let rt = rt();
    let mut a = core(&rt, cfg(json!({"retention": "workqueue"})));
    let msgs: Vec<_> = (1..=4).map(|i| msg(i, "s.a", "x")).collect();
    apply(&mut a, 1, &entry(vec![Op::Msgs(msgs)]));
    let ccfg = json!({"durable_name": "C", "ack_policy": "explicit", "deliver_policy": "all"});
    let ans = apply(
        &mut a,
        2,
        &entry(vec![Op::ConsumerUpsert {
            name: "C".into(),
            created: 5,
            config: ccfg.to_string().into_bytes(),
        }]),
    );
    let info: Value =
        serde_json::from_slice(entry::decode_answers(&ans).unwrap()[0].as_ref().unwrap()).unwrap();
    assert_eq!(info["name"], json!("C"));
    let ops = vec![
        COp::Delivered {
            dseq: 1,
            sseq: 1,
            dc: 1,
            ts: 10,
        },
        COp::Delivered {
            dseq: 2,
            sseq: 2,
            dc: 1,
            ts: 11,
        },
        COp::Acked { dseq: 1, sseq: 1 },
    ];
    apply(
        &mut a,
        3,
        &entry(vec![Op::ConsumerOps {
            name: "C".into(),
            ops,
        }]),
    );
    let c = a.consumers.get_mut("C").unwrap();
    let st = c.store_mut().state().clone();
    assert_eq!(st.delivered.stream, 2);
    assert_eq!(st.ack_floor.stream, 1);
    assert_eq!(st.pending.keys().copied().collect::<Vec<_>>(), vec![2]);
    // The acknowledged message left the work queue on this member too.
    assert_eq!(
        contents(&a).iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
}

#[test]
fn snapshots_restore_messages_deletes_and_consumers() {
    let rt = rt();
    let mut a = core(&rt, cfg(json!({})));
    let msgs: Vec<_> = (1..=6)
        .map(|i| msg(i, &format!("s.{}", i % 2), &format!("m{i}")))
        .collect();
    apply(&mut a, 1, &entry(vec![Op::Msgs(msgs.clone())]));
    apply(&mut a, 2, &entry(vec![Op::DeleteMsg { seq: 3 }]));
    let ccfg = json!({"durable_name": "C", "ack_policy": "explicit"});
    apply(
        &mut a,
        3,
        &entry(vec![
            Op::ConsumerUpsert {
                name: "C".into(),
                created: 5,
                config: ccfg.to_string().into_bytes(),
            },
            Op::ConsumerOps {
                name: "C".into(),
                ops: vec![COp::Delivered {
                    dseq: 1,
                    sseq: 1,
                    dc: 1,
                    ts: 10,
                }],
            },
        ]),
    );
    apply(
        &mut a,
        4,
        &entry(vec![Op::Purge {
            filter: None,
            seq: Some(2),
            keep: None,
            bound: 6,
        }]),
    );
    let snap = snapshot(&mut a).unwrap();
    // A member that has nothing, and one that has an old prefix (including the message
    // deleted since), both end up with the snapshot's stream.
    let mut b = core(&rt, cfg(json!({})));
    restore(&mut b, 4, &snap).unwrap();
    let mut c = core(&rt, cfg(json!({})));
    apply(&mut c, 1, &entry(vec![Op::Msgs(msgs[..4].to_vec())]));
    restore(&mut c, 4, &snap).unwrap();
    let want = contents(&a);
    assert_eq!(
        want.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![2, 4, 5, 6]
    );
    for x in [&mut b, &mut c] {
        assert_eq!(contents(x), want);
        assert_eq!(x.store.totals().last_seq, 6);
        let k = x.consumers.get_mut("C").unwrap();
        assert_eq!(k.store_mut().state().delivered.stream, 1);
    }
    assert!(restore(&mut b, 4, &snap[..snap.len() - 1]).is_err());
}

#[test]
fn origin_identities_are_applied_and_carried_by_snapshots() {
    let rt = rt();
    let mirror = || cfg(json!({"subjects": [], "mirror": {"name": "O"}}));
    let mut a = core(&rt, mirror());
    let iname = a.sources[0].spec.iname.clone();
    assert_eq!(a.sources[0].ident, None);
    apply(
        &mut a,
        1,
        &entry(vec![Op::SourceIdent {
            source: iname.clone(),
            ident: "ID1".into(),
        }]),
    );
    assert_eq!(a.sources[0].ident.as_deref(), Some("ID1"));
    let snap = snapshot(&mut a).unwrap();
    let mut b = core(&rt, mirror());
    restore(&mut b, 1, &snap).unwrap();
    assert_eq!(b.sources[0].ident.as_deref(), Some("ID1"));
}

/// Polls `f` once: `Some` when it is ready at once.
fn ready_now<T>(f: &mut canopy_raft::BoxFuture<T>) -> Option<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[test]
fn a_run_is_applied_by_its_caller_when_the_stream_is_idle_and_by_the_thread_when_busy() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    let h = StreamHandle::spawn(core(&rt, cfg(json!({})))).unwrap();
    let sm = StreamSm {
        h: Arc::downgrade(&h),
        durable: false,
    };
    let run = |from: u64| {
        (from..from + 2)
            .map(|i| {
                let e = entry(vec![Op::Msgs(vec![msg(i, "s.a", "x")])]);
                (i, Bytes::from(e))
            })
            .collect::<Vec<_>>()
    };
    // Idle: applied by the caller, the answers ready without waiting for the thread.
    let mut f = sm.apply_run(run(1));
    let out = ready_now(&mut f).expect("an idle stream's run is applied by its caller");
    assert_eq!(out.len(), 2);
    assert!(msg_results(&out[0])[0].is_none(), "stored");
    assert_eq!(h.stats.msgs.load(Ordering::Relaxed), 2);

    // Busy (the thread works on a command): the run waits its turn on the thread.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    assert!(h.send(Cmd::Call(Box::new(move |_| {
        let _ = started_tx.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
    }))));
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut f = sm.apply_run(run(3));
    assert!(
        ready_now(&mut f).is_none(),
        "a busy stream's run goes to its thread"
    );
    go_tx.send(()).unwrap();
    let out = rt.block_on(f);
    assert_eq!(out.len(), 2);
    assert!(msg_results(&out[1])[0].is_none(), "stored");
    let seqs = h
        .call(|c| contents(c).iter().map(|m| m.0).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    h.stop();
}
