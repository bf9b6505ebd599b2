//! The official async-nats JetStream, KV and Object Store APIs end to end against the
//! canopy-server binary: KV watch/history/delete/purge markers, object store with multi-chunk
//! objects and links, ordered consumers while the stream grows, push consumers with a
//! deliver group, flow control and heartbeats, continuous pull with heartbeats and expiry,
//! every ack kind with backoff redelivery, max_deliver, max_ack_pending, Direct Get, purge
//! by filter/keep, stream update, paged listings, work queues, the duplicate window and
//! expected-* publishes. Every wait is bounded.

#![allow(clippy::unwrap_used)]

#[path = "jetstream_clients/differential.rs"]
mod differential;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, message::PublishMessage, stream, AckKind};
use canopy_testkit::ServerProcess;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

/// Bound on any single wait for the server.
const WAIT: Duration = Duration::from_secs(5);

struct Srv {
    _store: tempfile::TempDir,
    s: ServerProcess,
}

fn start() -> Srv {
    let store = tempfile::tempdir().unwrap();
    let cfg = format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    );
    let s = ServerProcess::canopy(&cfg).expect("start");
    Srv { _store: store, s }
}

async fn connect(s: &Srv) -> (async_nats::Client, jetstream::Context) {
    let nc = async_nats::connect(s.s.url()).await.unwrap();
    (nc.clone(), jetstream::new(nc))
}

async fn mem_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn publish(js: &jetstream::Context, subject: &str, payload: impl Into<bytes::Bytes>) -> u64 {
    js.publish(subject.to_string(), payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// The next item of a stream, within [`WAIT`].
async fn next<S: futures::Stream + Unpin>(s: &mut S) -> S::Item {
    timeout(WAIT, s.next())
        .await
        .expect("timed out waiting for the next item")
        .expect("stream ended")
}

/// Polls `f` until it holds, within [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not reached in time: {what}");
}

/// A KV bucket keeping `history` values per key.
async fn bucket(js: &jetstream::Context, name: &str, history: i64) -> kv::Store {
    js.create_key_value(kv::Config {
        bucket: name.into(),
        history,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A durable pull consumer on `st` (all subjects when `filter` is empty).
async fn durable(
    st: &stream::Stream,
    name: &str,
    filter: &str,
) -> Result<consumer::PullConsumer, String> {
    st.create_consumer(consumer::pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// One pull request for up to `n` messages that waits `expires_ms` (0: no wait).
async fn pull_batch(
    c: &consumer::PullConsumer,
    n: usize,
    expires_ms: u64,
) -> Vec<jetstream::Message> {
    let res = if expires_ms == 0 {
        c.fetch().max_messages(n).messages().await
    } else {
        c.batch()
            .max_messages(n)
            .expires(Duration::from_millis(expires_ms))
            .messages()
            .await
    };
    timeout(WAIT, res.unwrap().try_collect())
        .await
        .unwrap()
        .unwrap()
}

/// An object's content.
async fn read_object(os: &jetstream::object_store::ObjectStore, name: &str) -> Vec<u8> {
    let mut obj = os.get(name).await.unwrap();
    let mut back = Vec::new();
    timeout(WAIT, obj.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}

#[tokio::test]
async fn kv_watch_variants() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let kv = bucket(&js, "watch", 5).await;
    kv.put("a", "a1".into()).await.unwrap();
    kv.put("b", "b1".into()).await.unwrap();
    kv.put("a", "a2".into()).await.unwrap();

    // With history: the latest value of each key first, then updates.
    let mut hist = kv.watch_with_history("a").await.unwrap();
    let e = next(&mut hist).await.unwrap();
    assert_eq!((e.key.as_str(), &e.value[..]), ("a", &b"a2"[..]));
    assert_eq!(e.revision, 3);
    assert!(e.seen_current, "the last pending entry is current");
    let mut all_hist = kv.watch_all_from_revision(1).await.unwrap();
    for (k, v, r) in [("a", "a1", 1), ("b", "b1", 2), ("a", "a2", 3)] {
        let e = next(&mut all_hist).await.unwrap();
        assert_eq!(
            (e.key.as_str(), &e.value[..], e.revision),
            (k, v.as_bytes(), r)
        );
    }
    let mut many = kv.watch_many_with_history(["a", "b"]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = next(&mut many).await.unwrap();
        seen.push((e.key, e.revision));
    }
    seen.sort();
    assert_eq!(seen, vec![("a".to_string(), 3), ("b".to_string(), 2)]);

    // Updates only: nothing from before, then every change including delete and purge.
    let mut upd = kv.watch("a").await.unwrap();
    let mut all = kv.watch_all().await.unwrap();
    let r4 = kv.put("a", "a3".into()).await.unwrap();
    kv.put("c", "c1".into()).await.unwrap();
    kv.delete("a").await.unwrap();
    kv.purge("c").await.unwrap();
    let e = next(&mut upd).await.unwrap();
    assert_eq!((&e.value[..], e.revision), (&b"a3"[..], r4));
    let e = next(&mut upd).await.unwrap();
    assert_eq!(e.operation, kv::Operation::Delete);
    let ops: Vec<(String, kv::Operation)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let e = next(&mut all).await.unwrap();
            v.push((e.key, e.operation));
        }
        v
    };
    assert_eq!(
        ops,
        vec![
            ("a".into(), kv::Operation::Put),
            ("c".into(), kv::Operation::Put),
            ("a".into(), kv::Operation::Delete),
            ("c".into(), kv::Operation::Purge),
        ]
    );
    let e = next(&mut hist).await.unwrap();
    assert_eq!((&e.value[..], e.revision), (&b"a3"[..], r4));

    // An empty bucket's watcher is current at once.
    let empty = bucket(&js, "empty", 1).await;
    let mut w = empty.watch_with_history("x").await.unwrap();
    empty.put("x", "1".into()).await.unwrap();
    let e = next(&mut w).await.unwrap();
    assert!(e.seen_current);
}

#[tokio::test]
async fn kv_delete_purge_markers_and_history() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let kv = bucket(&js, "hist", 10).await;
    let r1 = kv.put("k", "v1".into()).await.unwrap();
    let r2 = kv.put("k", "v2".into()).await.unwrap();
    kv.put("other", "o".into()).await.unwrap();
    assert_eq!(
        &kv.entry_for_revision("k", r1).await.unwrap().unwrap().value[..],
        b"v1"
    );
    assert!(kv.delete_expect_revision("k", Some(r1)).await.is_err());
    kv.delete_expect_revision("k", Some(r2)).await.unwrap();
    assert!(kv.get("k").await.unwrap().is_none());
    let e = kv.entry("k").await.unwrap();
    assert!(
        e.is_none() || e.unwrap().operation == kv::Operation::Delete,
        "a deleted key reads as gone"
    );
    let h: Vec<kv::Entry> = kv.history("k").await.unwrap().try_collect().await.unwrap();
    let ops: Vec<_> = h.iter().map(|e| e.operation).collect();
    assert_eq!(
        ops,
        vec![
            kv::Operation::Put,
            kv::Operation::Put,
            kv::Operation::Delete
        ]
    );
    // create over a delete marker succeeds (10071 then retry with the marker's revision).
    let r = kv.create("k", "v3".into()).await.unwrap();
    assert!(kv.create("k", "again".into()).await.is_err());
    assert_eq!(kv.get("k").await.unwrap().unwrap(), "v3".as_bytes());
    // Purge leaves one marker and nothing older.
    kv.purge_expect_revision("k", Some(r)).await.unwrap();
    let h: Vec<kv::Entry> = kv.history("k").await.unwrap().try_collect().await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].operation, kv::Operation::Purge);
    let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    assert_eq!(keys, vec!["other".to_string()]);
    kv.create("k", "v4".into()).await.unwrap();
    let st = js
        .get_key_value("hist")
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    assert_eq!(st.values(), 3, "other, the purge marker, v4");
    assert_eq!(st.history(), 10);

    // History limit: the oldest revisions fall off.
    for i in 0..15 {
        kv.put("many", format!("{i}").into()).await.unwrap();
    }
    let h: Vec<kv::Entry> = kv
        .history("many")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(h.len(), 10);
    assert_eq!(&h[0].value[..], b"5");

    // Limit markers need API level 1 (2.11), which the server reports (see
    // `kv_limit_markers_and_ttl`): the client asks for a stream with message TTLs.
    let ttl = js
        .create_key_value(kv::Config {
            bucket: "ttl".into(),
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    let cfg = &ttl.stream.cached_info().config;
    assert!(cfg.allow_message_ttl);
    assert_eq!(cfg.subject_delete_marker_ttl, Some(Duration::from_secs(1)));
    // Bucket TTL (max_age) expires values.
    let short = js
        .create_key_value(kv::Config {
            bucket: "short".into(),
            max_age: Duration::from_millis(300),
            ..Default::default()
        })
        .await
        .unwrap();
    short.put("x", "1".into()).await.unwrap();
    eventually("max_age expiry", || async {
        short.get("x").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn object_store_end_to_end() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let os = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "files".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // 1.3 MiB: eleven 128 KiB chunks, the last one partial.
    let data: Vec<u8> = (0..1_300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let info = os.put("big.bin", &mut data.as_slice()).await.unwrap();
    assert_eq!(info.size, data.len());
    assert_eq!(info.chunks, 10);
    let back = read_object(&os, "big.bin").await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "object content differs");

    // A second version replaces the first one's chunks.
    let small = b"small".to_vec();
    os.put("big.bin", &mut small.as_slice()).await.unwrap();
    let back = read_object(&os, "big.bin").await;
    assert_eq!(back, small);
    let st = js
        .get_stream("OBJ_files")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(
        st.state.messages, 2,
        "old chunks purged: one chunk, one meta"
    );

    os.put("b.txt", &mut &b"bee"[..]).await.unwrap();
    let i = os.info("b.txt").await.unwrap();
    assert_eq!((i.size, i.chunks), (3, 1));
    // Links resolve to their target.
    let target = os.info("b.txt").await.unwrap();
    os.add_link("link-to-b", &target).await.unwrap();
    let back = read_object(&os, "link-to-b").await;
    assert_eq!(back, b"bee");
    let mut names: Vec<String> = os
        .list()
        .await
        .unwrap()
        .map_ok(|i| i.name)
        .try_collect()
        .await
        .unwrap();
    names.sort();
    assert_eq!(names, vec!["b.txt", "big.bin", "link-to-b"]);
    os.delete("big.bin").await.unwrap();
    assert!(os.get("big.bin").await.is_err());
    let names: Vec<String> = os
        .list()
        .await
        .unwrap()
        .map_ok(|i| i.name)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    // The empty object.
    os.put("empty", &mut &b""[..]).await.unwrap();
    let back = read_object(&os, "empty").await;
    assert!(back.is_empty());
}

#[tokio::test]
async fn ordered_consumers_while_the_stream_grows() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let st = mem_stream(&js, "ORD", &["ord.>"]).await;
    for i in 0..300 {
        js.publish(format!("ord.{}", i % 7), format!("{i}").into())
            .await
            .unwrap();
    }
    js.wait_for_acks().await;
    let pub_js = js.clone();
    let publisher = tokio::spawn(async move {
        for i in 300..600 {
            pub_js
                .publish(format!("ord.{}", i % 7), format!("{i}").into())
                .await
                .unwrap();
        }
        pub_js.wait_for_acks().await;
    });
    let push = st
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut push_msgs = push.messages().await.unwrap();
    let pull = st
        .create_consumer(consumer::pull::OrderedConfig {
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pull_msgs = pull.messages().await.unwrap();
    for i in 0..600u64 {
        let m = next(&mut push_msgs).await.unwrap();
        assert_eq!(m.payload, format!("{i}").as_bytes());
        assert_eq!(m.info().unwrap().stream_sequence, i + 1);
        assert_eq!(m.subject.as_str(), format!("ord.{}", i % 7));
        let m = next(&mut pull_msgs).await.unwrap();
        assert_eq!(m.payload, format!("{i}").as_bytes());
    }
    publisher.await.unwrap();

    // Filtered and from a start sequence.
    let c = st
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: "ord.3".into(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: 500,
            },
            ..Default::default()
        })
        .await
        .unwrap();
    let expect: Vec<u64> = (500..=600).filter(|s| (s - 1) % 7 == 3).collect();
    assert_eq!(c.cached_info().num_pending, expect.len() as u64);
    let mut msgs = c.messages().await.unwrap();
    for seq in expect {
        let m = next(&mut msgs).await.unwrap();
        assert_eq!(m.info().unwrap().stream_sequence, seq);
    }
}

#[tokio::test]
async fn push_deliver_group_flow_control_and_heartbeats() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let st = mem_stream(&js, "PUSH", &["push.>"]).await;
    let cfg = consumer::push::Config {
        durable_name: Some("grp".into()),
        deliver_subject: "deliver.grp".into(),
        deliver_group: Some("workers".into()),
        flow_control: true,
        idle_heartbeat: Duration::from_millis(500),
        ..Default::default()
    };
    let c: consumer::PushConsumer = st.create_consumer(cfg).await.unwrap();
    let mut w1 = c.messages().await.unwrap();
    let c2: consumer::PushConsumer = st.get_consumer("grp").await.unwrap();
    let mut w2 = c2.messages().await.unwrap();
    // 6 MiB in 16 KiB messages: several flow-control rounds.
    let body = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
    for _ in 0..384 {
        js.publish("push.a", body.clone()).await.unwrap();
    }
    js.wait_for_acks().await;
    let (mut n1, mut n2) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while n1 + n2 < 384 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(m) = w1.next() => { m.unwrap().ack().await.unwrap(); n1 += 1; }
            Some(m) = w2.next() => { m.unwrap().ack().await.unwrap(); n2 += 1; }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(n1 + n2, 384, "delivered through flow control");
    let mut c = c;
    eventually("all acked", || {
        let mut c = c.clone();
        async move { c.info().await.unwrap().num_ack_pending == 0 }
    })
    .await;
    assert!(c.info().await.unwrap().push_bound);

    // Idle heartbeats as a raw subscriber sees them: status 100 with the last sequences.
    let _hb_consumer: consumer::PushConsumer = st
        .create_consumer(consumer::push::Config {
            durable_name: Some("hb".into()),
            deliver_subject: "deliver.hb".into(),
            idle_heartbeat: Duration::from_millis(200),
            ack_policy: consumer::AckPolicy::None,
            filter_subject: "push.a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut raw = nc.subscribe("deliver.hb").await.unwrap();
    let mut got_hb = false;
    let mut data = 0;
    while !got_hb {
        let m = next(&mut raw).await;
        if m.status == Some(async_nats::StatusCode::IDLE_HEARTBEAT) {
            let h = m.headers.clone().unwrap_or_else(|| panic!("{m:?}"));
            let get = |k| h.get(k).map(|v| v.as_str().to_string());
            assert_eq!(
                get(async_nats::header::NATS_LAST_CONSUMER).as_deref(),
                Some("384")
            );
            assert_eq!(
                get(async_nats::header::NATS_LAST_STREAM).as_deref(),
                Some("384")
            );
            got_hb = true;
        } else {
            data += 1;
        }
    }
    assert_eq!(data, 384);
}

#[tokio::test]
async fn pull_messages_with_heartbeats_and_expiry() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let st = mem_stream(&js, "PULL", &["pull.>"]).await;
    let c = durable(&st, "cont", "").await.unwrap();
    let mut msgs = c
        .stream()
        .max_messages_per_batch(10)
        .expires(Duration::from_millis(1000))
        .heartbeat(Duration::from_millis(300))
        .messages()
        .await
        .unwrap();
    let pub_js = js.clone();
    tokio::spawn(async move {
        for i in 0..45 {
            publish(&pub_js, "pull.x", format!("{i}")).await;
        }
    });
    for i in 0..45 {
        let m = next(&mut msgs).await.unwrap();
        assert_eq!(m.payload, format!("{i}").as_bytes());
        m.ack().await.unwrap();
    }
    // Idle past several expiries (408s) and heartbeats: the stream keeps pulling and
    // reports no missed heartbeat.
    let idle = timeout(Duration::from_millis(2500), msgs.next()).await;
    assert!(idle.is_err(), "nothing to deliver, got {idle:?}");
    publish(&js, "pull.x", "late").await;
    let m = next(&mut msgs).await.unwrap();
    assert_eq!(m.payload, "late".as_bytes());
    m.double_ack().await.unwrap();

    // fetch with no_wait semantics and batch with expiry.
    assert!(pull_batch(&c, 5, 0).await.is_empty());
    let t0 = std::time::Instant::now();
    assert!(pull_batch(&c, 5, 400).await.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn acks_nak_term_progress_backoff_and_max_deliver() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let st = mem_stream(&js, "ACKS", &["acks.>"]).await;
    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("acks".into()),
            ack_wait: Duration::from_millis(400),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 1..=4 {
        publish(&js, "acks.a", format!("{i}")).await;
    }
    let b = pull_batch(&c, 4, 1000).await;
    assert_eq!(b.len(), 4);
    b[0].ack_with(AckKind::Nak(None)).await.unwrap();
    b[1].ack_with(AckKind::Term).await.unwrap();
    b[2].ack_with(AckKind::Progress).await.unwrap();
    b[3].ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
        .await
        .unwrap();
    // The nak'd one comes back at once with delivered = 2.
    let again = pull_batch(&c, 1, 300).await;
    assert_eq!(again.len(), 1);
    let i = again[0].info().unwrap();
    assert_eq!((i.stream_sequence, i.delivered), (1, 2));
    again[0].double_ack().await.unwrap();
    // Seq 4 after its 200 ms delay, seq 3 after ack_wait; never seq 2 (terminated).
    let b = pull_batch(&c, 2, 1500).await;
    let seqs: Vec<u64> = b
        .iter()
        .map(|m| m.info().unwrap().stream_sequence)
        .collect();
    assert_eq!(seqs, vec![4, 3]);
    for m in &b {
        m.ack().await.unwrap();
    }
    let mut c2 = c.clone();
    eventually("all acked", || {
        let mut c = c2.clone();
        async move { c.info().await.unwrap().num_ack_pending == 0 }
    })
    .await;
    assert_eq!(c2.info().await.unwrap().ack_floor.stream_sequence, 4);

    // Backoff with max_deliver: deliveries at ~0, +150 ms, +300 ms and then no more.
    let bo: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("backoff".into()),
            filter_subject: "acks.b".into(),
            backoff: vec![Duration::from_millis(150), Duration::from_millis(300)],
            max_deliver: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&js, "acks.b", "retry").await;
    let t0 = std::time::Instant::now();
    let mut times = Vec::new();
    let mut msgs = bo
        .stream()
        .expires(Duration::from_millis(1000))
        .heartbeat(Duration::from_millis(300))
        .messages()
        .await
        .unwrap();
    for dc in 1..=3 {
        let m = next(&mut msgs).await.unwrap();
        assert_eq!(m.info().unwrap().delivered, dc);
        times.push(t0.elapsed());
    }
    assert!(
        times[1] - times[0] >= Duration::from_millis(120),
        "{times:?}"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(250),
        "{times:?}"
    );
    let none = timeout(Duration::from_millis(800), msgs.next()).await;
    assert!(none.is_err(), "max_deliver 3 exceeded: {none:?}");
    let info = st.consumer_info("backoff").await.unwrap();
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn max_ack_pending_limits_delivery() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let st = mem_stream(&js, "MAP", &["map"]).await;
    for i in 0..20 {
        js.publish("map", format!("{i}").into()).await.unwrap();
    }
    js.wait_for_acks().await;
    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("map".into()),
            max_ack_pending: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let first = pull_batch(&c, 20, 500).await;
    assert_eq!(first.len(), 5);
    let mut c2 = c.clone();
    let i = c2.info().await.unwrap();
    assert_eq!((i.num_ack_pending, i.num_pending), (5, 15));
    // Acking frees room for exactly as many more.
    for m in &first[..3] {
        m.double_ack().await.unwrap();
    }
    let more = pull_batch(&c, 20, 500).await;
    assert_eq!(more.len(), 3);
    assert_eq!(more[0].payload, "5".as_bytes());
}

#[tokio::test]
async fn direct_get_and_message_get() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let st = js
        .create_stream(stream::Config {
            name: "DG".into(),
            subjects: vec!["dg.>".into()],
            allow_direct: true,
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&js, "dg.a", "a1").await;
    publish(&js, "dg.b", "b1").await;
    publish(&js, "dg.a", "a2").await;
    let m = st.get_last_raw_message_by_subject("dg.a").await.unwrap();
    assert_eq!((m.sequence, &m.payload[..]), (3, &b"a2"[..]));
    let m = st.direct_get(2).await.unwrap();
    assert_eq!((m.subject.as_str(), &m.payload[..]), ("dg.b", &b"b1"[..]));
    let m = st.direct_get_last_for_subject("dg.a").await.unwrap();
    assert_eq!(m.sequence, 3);
    let m = st
        .direct_get_next_for_subject("dg.a", Some(2))
        .await
        .unwrap();
    assert_eq!(m.sequence, 3);
    let m = st.direct_get_first_for_subject("dg.a").await.unwrap();
    assert_eq!(m.sequence, 1);
    let m = st.get_raw_message(1).await.unwrap();
    assert_eq!(&m.payload[..], b"a1");
    let err = st.direct_get(99).await.unwrap_err();
    assert_eq!(err.kind(), stream::DirectGetErrorKind::NotFound);
    let err = st.direct_get_last_for_subject("dg.none").await.unwrap_err();
    assert_eq!(err.kind(), stream::DirectGetErrorKind::NotFound);
    let err = st.get_raw_message(99).await.unwrap_err();
    assert_eq!(err.kind(), stream::RawMessageErrorKind::NoMessageFound);
    assert!(st.delete_message(2).await.unwrap());
    let err = st.direct_get(2).await.unwrap_err();
    assert_eq!(err.kind(), stream::DirectGetErrorKind::NotFound);
}

#[tokio::test]
async fn purge_by_filter_keep_and_sequence() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let mut st = mem_stream(&js, "PRG", &["prg.>"]).await;
    for i in 0..10 {
        publish(&js, "prg.a", format!("{i}")).await;
        publish(&js, "prg.b", format!("{i}")).await;
    }
    let r = st.purge().filter("prg.a").keep(3).await.unwrap();
    assert_eq!(r.purged, 7);
    let info = st.info().await.unwrap();
    assert_eq!(info.state.messages, 13);
    let r = st.purge().filter("prg.b").sequence(11).await.unwrap();
    assert_eq!(r.purged, 5, "prg.b below seq 11");
    let r = st.purge().keep(2).await.unwrap();
    assert_eq!(r.purged, 6);
    let info = st.info().await.unwrap();
    assert_eq!(
        (info.state.messages, info.state.first_sequence),
        (2, 19),
        "{:?}",
        info.state
    );
    let r = st.purge().filter("prg.b").await.unwrap();
    assert_eq!(r.purged, 1);
    let r = st.purge().await.unwrap();
    assert_eq!(r.purged, 1);
    let info = st.info().await.unwrap();
    assert_eq!((info.state.messages, info.state.first_sequence), (0, 21));
    assert_eq!(publish(&js, "prg.a", "after").await, 21);
}

#[tokio::test]
async fn stream_update_and_errors() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    mem_stream(&js, "UPD", &["upd.a"]).await;
    for i in 0..10 {
        publish(&js, "upd.a", format!("{i}")).await;
    }
    let info = js
        .update_stream(stream::Config {
            name: "UPD".into(),
            subjects: vec!["upd.a".into(), "upd.b".into()],
            max_messages: 5,
            storage: stream::StorageType::Memory,
            description: Some("updated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.config.subjects.len(), 2);
    assert_eq!(info.config.max_messages, 5);
    assert_eq!(info.state.messages, 5, "the new limit applies at once");
    assert_eq!(publish(&js, "upd.b", "new subject").await, 11);
    // Storage cannot change (10052), an unknown stream cannot be updated (10059),
    // another stream's subjects overlap (10065).
    let cfg = |name: &str, subject: &str, storage| stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        storage,
        ..Default::default()
    };
    let err = js
        .update_stream(cfg("UPD", "upd.a", stream::StorageType::File))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("10052"), "{err}");
    let err = js
        .update_stream(cfg("NOPE", "nope", stream::StorageType::File))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let err = js
        .create_stream(cfg("OVER", "upd.*", stream::StorageType::File))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("10065"), "{err}");
    let found = js.stream_by_subject("upd.b").await.unwrap();
    assert_eq!(found, "UPD");
}

#[tokio::test]
async fn listing_streams_and_consumers_pages() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let n_streams = 300;
    futures::stream::iter(0..n_streams)
        .map(|i| {
            let js = js.clone();
            async move { mem_stream(&js, &format!("L{i:03}"), &[&format!("l.{i}")]).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    names.sort();
    assert_eq!(names.len(), n_streams);
    assert_eq!(names[299], "L299");
    let infos: Vec<stream::Info> = js.streams().try_collect().await.unwrap();
    assert_eq!(infos.len(), n_streams, "stream list pages of 256");
    let st = js.get_stream("L000").await.unwrap();
    let n_consumers = 270;
    futures::stream::iter(0..n_consumers)
        .map(|i| {
            let st = st.clone();
            async move { durable(&st, &format!("c{i:03}"), "").await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let names: Vec<String> = st.consumer_names().try_collect().await.unwrap();
    assert_eq!(names.len(), n_consumers);
    let infos: Vec<consumer::Info> = st.consumers().try_collect().await.unwrap();
    assert_eq!(infos.len(), n_consumers, "consumer list pages of 256");
    assert_eq!(js.query_account().await.unwrap().streams, n_streams);
}

#[tokio::test]
async fn work_queue_retention() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let mut st = js
        .create_stream(stream::Config {
            name: "WQ".into(),
            subjects: vec!["wq.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..10 {
        publish(&js, &format!("wq.{}", i % 2), format!("{i}")).await;
    }
    let even = durable(&st, "even", "wq.0").await.unwrap();
    // A second unfiltered consumer is 10099, overlapping filters 10100.
    let err = durable(&st, "all", "").await.unwrap_err();
    assert!(err.contains("10099"), "{err}");
    let err = durable(&st, "overlap", "wq.>").await.unwrap_err();
    assert!(err.contains("10100"), "{err}");
    let mut remaining = 10;
    for c in [even, durable(&st, "odd", "wq.1").await.unwrap()] {
        let b = pull_batch(&c, 10, 0).await;
        assert_eq!(b.len(), 5);
        for m in &b {
            m.double_ack().await.unwrap();
        }
        remaining -= 5;
        assert_eq!(st.info().await.unwrap().state.messages, remaining);
    }
    assert_eq!(st.info().await.unwrap().state.last_sequence, 10);
}

#[tokio::test]
async fn duplicates_window_and_expected_headers() {
    let s = start();
    let (_nc, js) = connect(&s).await;
    let mut st = js
        .create_stream(stream::Config {
            name: "DUP".into(),
            subjects: vec!["dup.>".into()],
            duplicate_window: Duration::from_millis(500),
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    let send = |subject: &'static str, m: PublishMessage| {
        let js = js.clone();
        async move { js.send_publish(subject, m).await.unwrap().await }
    };
    let a1 = send(
        "dup.a",
        PublishMessage::build()
            .payload("1".into())
            .message_id("id-1"),
    )
    .await
    .unwrap();
    let a2 = send(
        "dup.a",
        PublishMessage::build()
            .payload("2".into())
            .message_id("id-1"),
    )
    .await
    .unwrap();
    assert!(!a1.duplicate);
    assert!(a2.duplicate);
    assert_eq!(a1.sequence, a2.sequence);
    assert_eq!(st.info().await.unwrap().state.messages, 1);
    // After the window the id is new again.
    eventually("window passes", || async move {
        let a = send(
            "dup.a",
            PublishMessage::build()
                .payload("3".into())
                .message_id("id-1"),
        )
        .await
        .unwrap();
        !a.duplicate
    })
    .await;
    let last = st.info().await.unwrap().state.last_sequence;

    // Expected last sequence, last subject sequence (0: none yet) and stream.
    use async_nats::jetstream::context::PublishErrorKind as K;
    let x = || PublishMessage::build().payload("x".into());
    let cases = [
        ("dup.b", x().expected_last_sequence(last), None),
        (
            "dup.b",
            x().expected_last_sequence(last),
            Some(K::WrongLastSequence),
        ),
        ("dup.c", x().expected_last_subject_sequence(0), None),
        (
            "dup.c",
            x().expected_last_subject_sequence(0),
            Some(K::WrongLastSequence),
        ),
        ("dup.d", x().expected_stream("OTHER"), Some(K::Other)),
        ("dup.d", x().expected_stream("DUP"), None),
    ];
    for (i, (subject, m, want)) in cases.into_iter().enumerate() {
        match (send(subject, m).await, want) {
            (Ok(ack), None) => assert!(ack.sequence > last, "case {i}"),
            (Err(e), Some(k)) => {
                assert_eq!(e.kind(), k, "case {i}: {e}");
                if k == K::Other {
                    assert!(e.to_string().contains("10060"), "case {i}: {e}");
                }
            }
            (r, _) => panic!("case {i}: {r:?}"),
        }
    }
}

#[tokio::test]
async fn subject_transform_and_republish_through_the_client() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let mut rp = nc.subscribe("rp.>").await.unwrap();
    nc.flush().await.unwrap();
    let st = js
        .create_stream(stream::Config {
            name: "TR".into(),
            subjects: vec!["orders.>".into()],
            storage: stream::StorageType::Memory,
            subject_transform: Some(stream::SubjectTransform {
                source: "orders.*".into(),
                destination: "stored.{{wildcard(1)}}".into(),
            }),
            republish: Some(stream::Republish {
                source: "stored.>".into(),
                destination: "rp.>".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(publish(&js, "orders.eu", "x").await, 1);
    let m = st.get_raw_message(1).await.unwrap();
    assert_eq!(m.subject.as_str(), "stored.eu");
    let got = next(&mut rp).await;
    assert_eq!(got.subject.as_str(), "rp.eu");
    let h = got.headers.unwrap();
    let get = |k| {
        h.get(k)
            .map(|v: &async_nats::HeaderValue| v.as_str().to_string())
    };
    use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE, NATS_STREAM, NATS_SUBJECT};
    assert_eq!(get(NATS_STREAM).as_deref(), Some("TR"), "{h:?}");
    assert_eq!(get(NATS_SEQUENCE).as_deref(), Some("1"));
    assert_eq!(get(NATS_SUBJECT).as_deref(), Some("stored.eu"));
    assert_eq!(get(NATS_LAST_SEQUENCE).as_deref(), Some("0"));
    assert_eq!(got.payload.as_ref(), b"x");
}

/// Arrival times (from the first) of `n` messages of a push consumer.
async fn arrival_gaps(msgs: &mut consumer::push::Messages, n: usize) -> Vec<Duration> {
    let mut t0 = None;
    let mut out = Vec::new();
    for _ in 0..n {
        let m = next(msgs).await.unwrap();
        let now = tokio::time::Instant::now();
        out.push(now - *t0.get_or_insert(now));
        m.ack().await.unwrap();
    }
    out
}

#[tokio::test]
async fn replay_original_and_rate_limit() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let st = mem_stream(&js, "RP", &["rp.>"]).await;
    // Three messages stored 400 ms apart (the gaps are the data under test).
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        publish(&js, "rp.a", "x").await;
    }
    let push = |name: &str, replay: consumer::ReplayPolicy, rate: u64| consumer::push::Config {
        durable_name: Some(name.into()),
        deliver_subject: format!("deliver.{name}"),
        replay_policy: replay,
        rate_limit: rate,
        ..Default::default()
    };
    let c: consumer::PushConsumer = st
        .create_consumer(push("orig", consumer::ReplayPolicy::Original, 0))
        .await
        .unwrap();
    let gaps = arrival_gaps(&mut c.messages().await.unwrap(), 3).await;
    assert!(gaps[1] >= Duration::from_millis(300), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(700), "{gaps:?}");
    let c: consumer::PushConsumer = st
        .create_consumer(push("inst", consumer::ReplayPolicy::Instant, 0))
        .await
        .unwrap();
    let gaps = arrival_gaps(&mut c.messages().await.unwrap(), 3).await;
    assert!(gaps[2] < Duration::from_millis(300), "{gaps:?}");
    // After catching up, replay original delivers new messages at once.
    let pulled: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("pull-orig".into()),
            replay_policy: consumer::ReplayPolicy::Original,
            ..Default::default()
        })
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    assert_eq!(pull_batch(&pulled, 3, 3000).await.len(), 3);
    assert!(t0.elapsed() >= Duration::from_millis(700));

    // 3 MiB at 1 MB/s with a 1 MiB burst: the last message comes after about 2 s.
    // (async-nats sends its `rate_limit` field under that name, which nats-server does not
    // read either: the consumer is made with a raw request carrying `rate_limit_bps`.)
    let body = bytes::Bytes::from(vec![b'y'; 100 * 1024]);
    mem_stream(&js, "RATE", &["rate.>"]).await;
    for _ in 0..30 {
        js.publish("rate.a", body.clone()).await.unwrap();
    }
    js.wait_for_acks().await;
    let mut sub = nc.subscribe("deliver.slow").await.unwrap();
    let create = |name: &str, deliver: Option<&str>| {
        let mut cfg = serde_json::json!({"durable_name": name, "ack_policy": "none", "rate_limit_bps": 8_000_000});
        if let Some(d) = deliver {
            cfg["deliver_subject"] = d.into();
        }
        let body = serde_json::json!({"stream_name": "RATE", "config": cfg}).to_string();
        let nc = nc.clone();
        let subject = format!("$JS.API.CONSUMER.CREATE.RATE.{name}");
        async move {
            let r = nc.request(subject, body.into()).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()
        }
    };
    let r = create("slow", Some("deliver.slow")).await;
    assert_eq!(r["config"]["rate_limit_bps"], 8_000_000, "{r}");
    let t0 = tokio::time::Instant::now();
    for _ in 0..30 {
        next(&mut sub).await;
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    // A pull consumer may not have a rate limit (10086).
    let r = create("pr", None).await;
    assert_eq!(r["error"]["err_code"], 10086, "{r}");
}

/// The next advisory whose subject starts with `prefix` (others are skipped), as JSON.
async fn advisory(sub: &mut async_nats::Subscriber, prefix: &str) -> (String, serde_json::Value) {
    loop {
        let m = next(sub).await;
        if m.subject.as_str().starts_with(prefix) {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            return (m.subject.to_string(), v);
        }
    }
}

#[tokio::test]
async fn advisories() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let mut adv = nc.subscribe("$JS.EVENT.ADVISORY.>").await.unwrap();
    nc.flush().await.unwrap();
    let mut st = mem_stream(&js, "ADV", &["adv.>"]).await;
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.STREAM").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.STREAM.CREATED.ADV");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.stream_action");
    assert_eq!(v["action"], "create");
    assert_eq!(v["stream"], "ADV");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(v["timestamp"].as_str().is_some(), "{v}");
    // Every API request is audited, with the request and the response.
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.API").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.API");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.api_audit");
    assert_eq!(v["subject"], "$JS.API.STREAM.CREATE.ADV");
    assert!(v["request"].as_str().unwrap().contains("\"ADV\""), "{v}");
    assert!(
        v["response"]
            .as_str()
            .unwrap()
            .contains("stream_create_response"),
        "{v}"
    );

    js.update_stream(stream::Config {
        name: "ADV".into(),
        subjects: vec!["adv.>".into()],
        storage: stream::StorageType::Memory,
        max_messages: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.STREAM").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.STREAM.UPDATED.ADV");
    assert_eq!(v["action"], "modify");

    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("d".into()),
            max_deliver: 2,
            ack_wait: Duration::from_millis(200),
            ..Default::default()
        })
        .await
        .unwrap();
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.CONSUMER.CREATED.ADV.d");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.consumer_action");
    assert_eq!(v["consumer"], "d");

    publish(&js, "adv.1", "a").await;
    publish(&js, "adv.2", "b").await;
    let msgs = pull_batch(&c, 2, 0).await;
    msgs[0].ack_with(AckKind::Nak(None)).await.unwrap();
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.ADV.d");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.nak");
    assert_eq!(
        (v["stream_seq"].as_u64(), v["deliveries"].as_u64()),
        (Some(1), Some(1))
    );
    // +TERM with a reason (async-nats 0.46 sends none): raw, on the ack subject.
    let ack_subject = msgs[1].reply.clone().unwrap();
    nc.publish(ack_subject, "+TERM bad".into()).await.unwrap();
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.ADV.d");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.terminated");
    assert_eq!(
        (v["stream_seq"].as_u64(), v["reason"].as_str()),
        (Some(2), Some("bad"))
    );
    // Seq 1 is redelivered once (its second delivery), then runs out of deliveries.
    let again = pull_batch(&c, 1, 2000).await;
    assert_eq!(again[0].info().unwrap().stream_sequence, 1);
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ADV.d");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.max_deliver");
    assert_eq!(
        (v["stream_seq"].as_u64(), v["deliveries"].as_u64()),
        (Some(1), Some(2))
    );

    st.delete_consumer("d").await.unwrap();
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.CONSUMER.DELETED.ADV.d");
    assert_eq!(v["action"], "delete");
    let _ = st.info().await.unwrap();
    js.delete_stream("ADV").await.unwrap();
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.STREAM").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.STREAM.DELETED.ADV");
    assert_eq!(v["action"], "delete");
}

/// `$JS.API.CONSUMER.PAUSE.<s>.<c>` with `pause_until` `ms` from now (`None`: resume).
async fn pause(nc: &async_nats::Client, s: &str, c: &str, ms: Option<i64>) -> serde_json::Value {
    let body = match ms {
        Some(ms) => {
            let t = chrono::Utc::now() + chrono::Duration::milliseconds(ms);
            serde_json::json!({"pause_until": t.to_rfc3339()}).to_string()
        }
        None => String::new(),
    };
    let r = nc
        .request(format!("$JS.API.CONSUMER.PAUSE.{s}.{c}"), body.into())
        .await
        .unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

#[tokio::test]
async fn consumer_pause_and_resume() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let mut adv = nc
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.PAUSE.>")
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let st = mem_stream(&js, "PZ", &["pz.>"]).await;
    let mut c = durable(&st, "p", "").await.unwrap();
    let r = pause(&nc, "PZ", "p", Some(3_600_000)).await;
    assert_eq!(
        r["type"],
        "io.nats.jetstream.api.v1.consumer_pause_response"
    );
    assert_eq!(r["paused"], true, "{r}");
    assert!(
        r["pause_remaining"].as_i64().unwrap() > 3_500_000_000_000,
        "{r}"
    );
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER.PAUSE").await;
    assert_eq!(subj, "$JS.EVENT.ADVISORY.CONSUMER.PAUSE.PZ.p");
    assert_eq!(v["type"], "io.nats.jetstream.advisory.v1.consumer_pause");
    assert_eq!(v["paused"], true);
    let info = c.info().await.unwrap().clone();
    assert!(info.paused, "{info:?}");
    assert!(info.config.pause_until.is_some());
    // Nothing is delivered while paused.
    publish(&js, "pz.a", "x").await;
    assert!(pull_batch(&c, 1, 300).await.is_empty());
    let r = pause(&nc, "PZ", "p", None).await;
    assert_eq!(r["paused"], false, "{r}");
    let (_, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER.PAUSE").await;
    assert_eq!(v["paused"], false);
    assert_eq!(pull_batch(&c, 1, 2000).await.len(), 1);
    assert!(!c.info().await.unwrap().paused);

    // A short pause ends by itself.
    let t0 = tokio::time::Instant::now();
    pause(&nc, "PZ", "p", Some(300)).await;
    publish(&js, "pz.b", "y").await;
    assert_eq!(pull_batch(&c, 1, 3000).await.len(), 1);
    assert!(t0.elapsed() >= Duration::from_millis(250));
    let r = pause(&nc, "PZ", "nope", Some(300)).await;
    assert_eq!(r["error"]["err_code"], 10014, "{r}");
}

/// A raw `$JS.API` request; the JSON answer.
async fn api(nc: &async_nats::Client, subject: &str, body: serde_json::Value) -> serde_json::Value {
    let r = timeout(
        WAIT,
        nc.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .unwrap()
    .unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

/// One raw pull request with its own inbox; what came back within `wait`: (status code or
/// 0 for a message, `Nats-Pin-Id`, payload).
async fn raw_pull(
    nc: &async_nats::Client,
    stream: &str,
    consumer: &str,
    body: serde_json::Value,
    want: usize,
    wait: Duration,
) -> Vec<(u16, Option<String>, String)> {
    let inbox = nc.new_inbox();
    let mut sub = nc.subscribe(inbox.clone()).await.unwrap();
    nc.publish_with_reply(
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        inbox,
        body.to_string().into(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < want {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        let code = m.status.map(|s| s.as_u16()).unwrap_or(0);
        if code == 100 {
            continue;
        }
        let pin = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pin-Id"))
            .map(|v| v.to_string());
        out.push((code, pin, String::from_utf8_lossy(&m.payload).into_owned()));
    }
    out
}

/// One async-nats pull in group `jobs` with the overflow conditions (0: not set).
async fn overflow_pull(
    c: &consumer::PullConsumer,
    min_pending: usize,
    min_ack_pending: usize,
    n: usize,
    expires_ms: u64,
) -> Vec<jetstream::Message> {
    let mut b = c.batch().group("jobs").max_messages(n);
    if min_pending > 0 {
        b = b.min_pending(min_pending);
    }
    if min_ack_pending > 0 {
        b = b.min_ack_pending(min_ack_pending);
    }
    let msgs = b
        .expires(Duration::from_millis(expires_ms))
        .messages()
        .await
        .unwrap();
    timeout(WAIT, msgs.try_collect()).await.unwrap().unwrap()
}

/// Priority groups (2.11, API level 1): the config rules, and the `overflow` policy
/// through async-nats' own `group`/`min_pending`/`min_ack_pending` pull options.
#[tokio::test]
async fn priority_groups_overflow() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let st = mem_stream(&js, "PG", &["pg.>"]).await;
    let create = |cfg: serde_json::Value| {
        let nc = nc.clone();
        async move {
            api(
                &nc,
                "$JS.API.CONSUMER.CREATE.PG",
                serde_json::json!({"stream_name": "PG", "config": cfg}),
            )
            .await
        }
    };
    let code = |v: &serde_json::Value| v["error"]["err_code"].as_u64().unwrap_or(0);
    let push = create(
        serde_json::json!({"deliver_subject": "d.pg", "ack_policy": "explicit",
        "priority_groups": ["jobs"], "priority_policy": "overflow"}),
    )
    .await;
    assert_eq!(code(&push), 10178, "{push}");
    let no_group =
        create(serde_json::json!({"ack_policy": "explicit", "priority_policy": "overflow"})).await;
    assert_eq!(code(&no_group), 10159, "{no_group}");
    let no_policy =
        create(serde_json::json!({"ack_policy": "explicit", "priority_groups": ["jobs"]})).await;
    assert_eq!(code(&no_policy), 10196, "{no_policy}");
    let bad_name = create(serde_json::json!({"ack_policy": "explicit",
        "priority_groups": ["bad.name"], "priority_policy": "overflow"}))
    .await;
    assert_eq!(code(&bad_name), 10162, "{bad_name}");
    let two = create(serde_json::json!({"ack_policy": "explicit",
        "priority_groups": ["a", "b"], "priority_policy": "overflow"}))
    .await;
    assert!(two["error"].is_object(), "{two}");
    let unknown = create(serde_json::json!({"ack_policy": "explicit",
        "priority_groups": ["a"], "priority_policy": "bogus"}))
    .await;
    assert!(unknown["error"].is_object(), "{unknown}");

    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("work".into()),
            priority_groups: vec!["jobs".into()],
            priority_policy: consumer::PriorityPolicy::Overflow,
            ..Default::default()
        })
        .await
        .unwrap();
    let info = api(&nc, "$JS.API.CONSUMER.INFO.PG.work", serde_json::json!({})).await;
    assert_eq!(info["config"]["priority_policy"], "overflow", "{info}");
    assert_eq!(info["priority_groups"][0]["group"], "jobs", "{info}");
    // Groups and policy cannot change on update.
    let upd = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.PG.work",
        serde_json::json!({"stream_name": "PG", "config": {"durable_name": "work", "ack_policy": "explicit"}}),
    )
    .await;
    assert!(upd["error"].is_object(), "{upd}");

    for i in 0..5 {
        publish(&js, &format!("pg.{i}"), "x").await;
    }
    // A pull without a group (or with another group) is refused.
    let r = raw_pull(
        &nc,
        "PG",
        "work",
        serde_json::json!({"batch": 1, "expires": 500_000_000}),
        1,
        WAIT,
    )
    .await;
    assert_eq!(r.first().map(|x| x.0), Some(400), "{r:?}");
    let r = raw_pull(
        &nc,
        "PG",
        "work",
        serde_json::json!({"batch": 1, "group": "ghost", "expires": 500_000_000}),
        1,
        WAIT,
    )
    .await;
    assert_eq!(r.first().map(|x| x.0), Some(400), "{r:?}");
    // min_pending above what is pending: nothing, the request times out.
    let none = overflow_pull(&c, 1000, 0, 1, 400).await;
    assert!(none.is_empty(), "served below min_pending");
    // min_pending met: served.
    assert_eq!(overflow_pull(&c, 3, 0, 2, 2000).await.len(), 2);
    // 2 unacknowledged, 3 pending: min_pending 1000 fails but min_ack_pending 2 holds.
    let one = overflow_pull(&c, 1000, 2, 1, 2000).await;
    assert_eq!(one.len(), 1, "min_ack_pending alone must suffice");
}

/// `pinned_client`: the first pull is pinned and its messages carry `Nats-Pin-Id`; other
/// pulls wait as standby, a wrong id gets 423, the pin moves on timeout or UNPIN (with
/// advisories), and the old holder's id is then refused.
#[tokio::test]
async fn priority_groups_pinned_client() {
    let s = start();
    let (nc, js) = connect(&s).await;
    mem_stream(&js, "PIN", &["pin.>"]).await;
    let mut adv = nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.>").await.unwrap();
    nc.flush().await.unwrap();
    let created = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.PIN.w",
        serde_json::json!({"stream_name": "PIN", "config": {"durable_name": "w",
            "ack_policy": "explicit", "priority_groups": ["jobs"],
            "priority_policy": "pinned_client", "priority_timeout": 1_000_000_000i64}}),
    )
    .await;
    assert_eq!(
        created["config"]["priority_timeout"], 1_000_000_000i64,
        "{created}"
    );
    for i in 0..4 {
        publish(&js, &format!("pin.{i}"), format!("m{i}")).await;
    }
    let a = raw_pull(
        &nc,
        "PIN",
        "w",
        serde_json::json!({"batch": 1, "group": "jobs"}),
        1,
        WAIT,
    )
    .await;
    let pin = a[0]
        .1
        .clone()
        .expect("the first delivery carries Nats-Pin-Id");
    assert_eq!((a[0].0, a[0].2.as_str()), (0, "m0"));
    let (subj, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER.PINNED").await;
    assert!(subj.ends_with("PIN.w"));
    assert_eq!(
        v["type"],
        "io.nats.jetstream.advisory.v1.consumer_group_pinned"
    );
    assert_eq!(v["pinned_id"], pin.as_str());
    let info = api(&nc, "$JS.API.CONSUMER.INFO.PIN.w", serde_json::json!({})).await;
    assert_eq!(
        info["priority_groups"][0]["pinned_client_id"],
        pin.as_str(),
        "{info}"
    );
    // The holder pulls again with its id: served, same pin.
    let again = raw_pull(
        &nc,
        "PIN",
        "w",
        serde_json::json!({"batch": 1, "group": "jobs", "id": pin}),
        1,
        WAIT,
    )
    .await;
    assert_eq!((again[0].0, again[0].1.as_deref()), (0, Some(pin.as_str())));
    // A wrong id: 423.
    let wrong = raw_pull(
        &nc,
        "PIN",
        "w",
        serde_json::json!({"batch": 1, "group": "jobs", "id": "not-the-pin"}),
        1,
        WAIT,
    )
    .await;
    assert_eq!(wrong.first().map(|x| x.0), Some(423), "{wrong:?}");
    // A standby (no id) gets nothing while the pin holds; when the holder stops pulling
    // for the priority_timeout (1 s) the pin moves to it.
    let standby = raw_pull(
        &nc,
        "PIN",
        "w",
        serde_json::json!({"batch": 1, "group": "jobs", "expires": 4_000_000_000i64}),
        1,
        WAIT,
    )
    .await;
    let new_pin = standby[0]
        .1
        .clone()
        .expect("the standby is pinned after the timeout");
    assert_eq!(standby[0].0, 0);
    assert_ne!(new_pin, pin);
    let (_, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER.UNPINNED").await;
    assert_eq!(v["reason"], "timeout");
    let _ = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER.PINNED").await;
    let old = raw_pull(
        &nc,
        "PIN",
        "w",
        serde_json::json!({"batch": 1, "group": "jobs", "id": pin}),
        1,
        WAIT,
    )
    .await;
    assert_eq!(old.first().map(|x| x.0), Some(423), "{old:?}");
    // UNPIN: errors for an unknown group and an empty body, then the pin ends.
    let bad = api(
        &nc,
        "$JS.API.CONSUMER.UNPIN.PIN.w",
        serde_json::json!({"group": "ghost"}),
    )
    .await;
    assert_eq!(bad["error"]["err_code"], 10160, "{bad}");
    let r = nc
        .request("$JS.API.CONSUMER.UNPIN.PIN.w", "".into())
        .await
        .unwrap();
    let empty: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert!(empty["error"].is_object(), "{empty}");
    let ok = api(
        &nc,
        "$JS.API.CONSUMER.UNPIN.PIN.w",
        serde_json::json!({"group": "jobs"}),
    )
    .await;
    assert_eq!(
        ok["type"],
        "io.nats.jetstream.api.v1.consumer_unpin_response"
    );
    assert!(ok["error"].is_null(), "{ok}");
    let (_, v) = advisory(&mut adv, "$JS.EVENT.ADVISORY.CONSUMER.UNPINNED").await;
    assert_eq!(v["reason"], "admin");
    let info = api(&nc, "$JS.API.CONSUMER.INFO.PIN.w", serde_json::json!({})).await;
    assert!(
        info["priority_groups"][0]["pinned_client_id"].is_null(),
        "{info}"
    );
    let after = raw_pull(
        &nc,
        "PIN",
        "w",
        serde_json::json!({"batch": 1, "group": "jobs", "id": new_pin}),
        1,
        WAIT,
    )
    .await;
    assert_eq!(
        after.first().map(|x| x.0),
        Some(0),
        "an old id while nobody is pinned is a candidate: {after:?}"
    );
    assert_ne!(after[0].1.as_deref(), Some(new_pin.as_str()));
}

/// API level 1 lets async-nats create a KV bucket with `limit_markers`; a key created with
/// a TTL ages out into a purge marker (`Nats-Marker-Reason: MaxAge`) that a watcher sees.
#[tokio::test]
async fn kv_limit_markers_and_ttl() {
    let s = start();
    let (nc, js) = connect(&s).await;
    let info = api(&nc, "$JS.API.INFO", serde_json::json!({})).await;
    assert_eq!(info["api"]["level"], 1, "{info}");
    let kv = js
        .create_key_value(kv::Config {
            bucket: "MARK".into(),
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watch = kv.watch("k").await.unwrap();
    kv.create_with_ttl("k", "v".into(), Duration::from_secs(1))
        .await
        .unwrap();
    let first = next(&mut watch).await.unwrap();
    assert_eq!(first.operation, kv::Operation::Put);
    let marker = next(&mut watch).await.unwrap();
    assert_eq!(marker.operation, kv::Operation::Purge, "{marker:?}");
    assert!(kv.get("k").await.unwrap().is_none());
    // The key can be created again once it aged out.
    kv.create("k", "again".into()).await.unwrap();
}
