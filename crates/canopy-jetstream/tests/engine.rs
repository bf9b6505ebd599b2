//! End-to-end tests of the engine through a fake [`Host`]: it records what the engine
//! publishes and lets a test inject messages as if clients had published them.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_jetstream::{AccountLimits, Config, Engine};
use serde_json::{json, Value};

mod common;
use common::{FakeHost, Out};

struct T {
    host: Arc<FakeHost>,
    engine: Arc<Engine>,
    n: AtomicU64,
}

impl T {
    fn start(dir: &std::path::Path) -> T {
        let host = Arc::new(FakeHost::new("srv", None));
        let cfg = Config {
            store_dir: dir.to_path_buf(),
            max_memory: -1,
            max_store: -1,
            domain: None,
            sync: canopy_store::SyncPolicy::default(),
            strict: true,
            request_queue_limit: 100,
            ingest_queue_limit: 10_000,
        };
        let engine = Engine::start(cfg, host.clone()).expect("start");
        engine
            .enable_account("A", AccountLimits::default())
            .expect("enable");
        T {
            host,
            engine,
            n: AtomicU64::new(0),
        }
    }

    /// Injects a message as a client publish.
    fn publish(&self, subject: &str, reply: Option<&str>, hdr: Option<&[u8]>, payload: &[u8]) {
        self.host.inject("A", subject, reply, hdr, payload);
    }

    fn inbox(&self) -> String {
        format!("_INBOX.{}", self.n.fetch_add(1, Ordering::SeqCst))
    }

    /// Messages sent to `to`, waiting until there are at least `n`.
    fn wait_for(&self, to: &str, n: usize, timeout: Duration) -> Vec<Out> {
        let end = Instant::now() + timeout;
        loop {
            let got: Vec<Out> = self
                .host
                .out
                .lock()
                .iter()
                .filter(|o| o.to == to)
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn request(&self, subject: &str, body: &[u8]) -> Value {
        let inbox = self.inbox();
        self.publish(subject, Some(&inbox), None, body);
        let got = self.wait_for(&inbox, 1, Duration::from_secs(5));
        let first = got
            .first()
            .unwrap_or_else(|| panic!("no reply to {subject}"));
        serde_json::from_slice(&first.payload).expect("json reply")
    }

    /// Sends a pull request (`MSG.NEXT`) for `stream.consumer` and waits for `n` messages
    /// on its inbox.
    fn pull(&self, stream_consumer: &str, body: &[u8], n: usize) -> Vec<Out> {
        let inbox = self.inbox();
        self.publish(
            &format!("$JS.API.CONSUMER.MSG.NEXT.{stream_consumer}"),
            Some(&inbox),
            None,
            body,
        );
        self.wait_for(&inbox, n, Duration::from_secs(5))
    }

    fn api(&self, subject: &str, body: Value) -> Value {
        let b = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.request(&format!("$JS.API.{subject}"), &b)
    }
}

fn status_line(o: &Out) -> String {
    String::from_utf8_lossy(&o.hdr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn account_info_and_stream_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    let info = t.api("INFO", Value::Null);
    assert_eq!(
        info["type"],
        "io.nats.jetstream.api.v1.account_info_response"
    );
    for k in [
        "memory",
        "storage",
        "reserved_memory",
        "reserved_storage",
        "streams",
        "consumers",
    ] {
        assert!(info[k].is_u64(), "{k} missing: {info}");
    }
    assert_eq!(info["limits"]["max_memory"], -1);
    assert_eq!(info["limits"]["max_bytes_required"], false);
    assert!(info["api"]["total"].is_u64());

    let r = t.api(
        "STREAM.CREATE.ORDERS",
        json!({"name": "ORDERS", "subjects": ["orders.>"]}),
    );
    assert_eq!(r["did_create"], true, "{r}");
    assert_eq!(r["config"]["max_msgs"], -1);
    assert_eq!(r["config"]["duplicate_window"], 120_000_000_000i64);
    assert_eq!(r["config"]["retention"], "limits");
    assert_eq!(r["state"]["first_ts"], "0001-01-01T00:00:00Z");
    let again = t.api(
        "STREAM.CREATE.ORDERS",
        json!({"name": "ORDERS", "subjects": ["orders.>"]}),
    );
    assert!(again.get("error").is_none(), "{again}");
    // nats-server sets did_create on every successful create, the idempotent one too.
    assert_eq!(again["did_create"], true, "{again}");
    let diff = t.api(
        "STREAM.CREATE.ORDERS",
        json!({"name": "ORDERS", "subjects": ["orders.*"]}),
    );
    assert_eq!(diff["error"]["err_code"], 10058);
    let overlap = t.api(
        "STREAM.CREATE.O2",
        json!({"name": "O2", "subjects": ["orders.new"]}),
    );
    assert_eq!(overlap["error"]["err_code"], 10065);
    let mismatch = t.api("STREAM.CREATE.X", json!({"name": "Y"}));
    assert_eq!(mismatch["error"]["err_code"], 10056);
    let r3 = t.api("STREAM.CREATE.R3", json!({"name": "R3", "num_replicas": 3}));
    assert_eq!(r3["error"]["err_code"], 10074);

    for i in 1..=3u64 {
        let inbox = t.inbox();
        t.publish(&format!("orders.{i}"), Some(&inbox), None, b"hello");
        let ack = t.wait_for(&inbox, 1, Duration::from_secs(5));
        let v: Value = serde_json::from_slice(&ack[0].payload).unwrap();
        assert_eq!(v, json!({"stream": "ORDERS", "seq": i}));
    }
    let info = t.api("STREAM.INFO.ORDERS", json!({"subjects_filter": ">"}));
    assert_eq!(info["state"]["messages"], 3);
    assert_eq!(info["state"]["last_seq"], 3);
    assert_eq!(info["state"]["subjects"]["orders.2"], 1);
    let names = t.api("STREAM.NAMES", json!({"subject": "orders.x"}));
    assert_eq!(names["streams"], json!(["ORDERS"]));
    assert_eq!(names["total"], 1);

    let got = t.api("STREAM.MSG.GET.ORDERS", json!({"last_by_subj": "orders.2"}));
    assert_eq!(got["message"]["seq"], 2);
    assert_eq!(got["message"]["data"], "aGVsbG8=");
    let none = t.api("STREAM.MSG.GET.ORDERS", json!({"seq": 99}));
    assert_eq!(none["error"]["err_code"], 10037);
    let del = t.api("STREAM.MSG.DELETE.ORDERS", json!({"seq": 1}));
    assert_eq!(del["success"], true);
    let purge = t.api("STREAM.PURGE.ORDERS", json!({"filter": "orders.2"}));
    assert_eq!(purge["purged"], 1);
    let info = t.api("STREAM.INFO.ORDERS", Value::Null);
    assert_eq!(info["state"]["messages"], 1);

    assert_eq!(t.api("STREAM.DELETE.ORDERS", Value::Null)["success"], true);
    assert_eq!(
        t.api("STREAM.INFO.ORDERS", Value::Null)["error"]["err_code"],
        10059
    );
    assert_eq!(
        t.api("STREAM.LEADER.STEPDOWN.X", Value::Null)["error"]["err_code"],
        10010
    );
    let info = t.api("INFO", Value::Null);
    assert!(info["api"]["errors"].as_u64().unwrap() >= 5);
    t.engine.shutdown();
}

#[test]
fn publish_headers_dedupe_expected_and_rollup() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    let r = t.api("STREAM.CREATE.KV", json!({"name": "KV", "subjects": ["kv.>"], "allow_rollup_hdrs": true, "max_msgs_per_subject": 5}));
    assert!(r.get("error").is_none(), "{r}");
    let pubh = |subj: &str, hdr: &str| -> Value {
        let inbox = t.inbox();
        let h = format!("NATS/1.0\r\n{hdr}\r\n\r\n");
        t.publish(subj, Some(&inbox), Some(h.as_bytes()), b"v");
        let got = t.wait_for(&inbox, 1, Duration::from_secs(5));
        serde_json::from_slice(&got[0].payload).unwrap()
    };
    assert_eq!(pubh("kv.a", "Nats-Msg-Id: 1")["seq"], 1);
    let dup = pubh("kv.a", "Nats-Msg-Id: 1");
    assert_eq!(dup["seq"], 1);
    assert_eq!(dup["duplicate"], true);
    assert_eq!(
        pubh("kv.b", "Nats-Expected-Last-Subject-Sequence: 0")["seq"],
        2
    );
    let wrong = pubh("kv.b", "Nats-Expected-Last-Subject-Sequence: 0");
    assert_eq!(wrong["error"]["err_code"], 10071);
    assert_eq!(wrong["error"]["description"], "wrong last sequence: 2");
    assert_eq!(pubh("kv.b", "Nats-Expected-Last-Sequence: 2")["seq"], 3);
    assert_eq!(
        pubh("kv.b", "Nats-Expected-Stream: nope")["error"]["err_code"],
        10060
    );
    assert_eq!(pubh("kv.c", "Nats-Expected-Last-Msg-Id: 1")["seq"], 4);
    assert_eq!(
        pubh("kv.c", "Nats-Expected-Last-Msg-Id: zz")["error"]["err_code"],
        10070
    );
    assert_eq!(pubh("kv.b", "Nats-TTL: 5s")["error"]["err_code"], 10166);
    // Rollup of the subject leaves only the new message on kv.b.
    assert_eq!(pubh("kv.b", "Nats-Rollup: sub")["seq"], 5);
    let info = t.api("STREAM.INFO.KV", json!({"subjects_filter": "kv.b"}));
    assert_eq!(info["state"]["subjects"]["kv.b"], 1);
    // Expected-* headers are not stored.
    let got = t.api("STREAM.MSG.GET.KV", json!({"seq": 2}));
    assert!(got["message"].get("hdrs").is_none(), "{got}");

    // Direct Get by subject needs allow_direct.
    let inbox = t.inbox();
    t.publish("$JS.API.DIRECT.GET.KV.kv.b", Some(&inbox), None, b"");
    let got = t.wait_for(&inbox, 1, Duration::from_secs(5));
    assert_eq!(status_line(&got[0]), "NATS/1.0 503 ");
    let r = t.api("STREAM.UPDATE.KV", json!({"name": "KV", "subjects": ["kv.>"], "allow_rollup_hdrs": true, "max_msgs_per_subject": 5, "allow_direct": true}));
    assert_eq!(r["config"]["allow_direct"], true, "{r}");
    let inbox = t.inbox();
    t.publish("$JS.API.DIRECT.GET.KV.kv.b", Some(&inbox), None, b"");
    let got = t.wait_for(&inbox, 1, Duration::from_secs(5));
    let h = String::from_utf8_lossy(&got[0].hdr).to_string();
    assert!(h.contains("Nats-Sequence: 5"), "{h}");
    assert!(h.contains("Nats-Subject: kv.b"), "{h}");
    let inbox = t.inbox();
    t.publish(
        "$JS.API.DIRECT.GET.KV",
        Some(&inbox),
        None,
        br#"{"seq":1,"batch":10}"#,
    );
    let got = t.wait_for(&inbox, 5, Duration::from_secs(5));
    assert_eq!(status_line(got.last().unwrap()), "NATS/1.0 204 EOB");
    t.engine.shutdown();
}

fn ack_fields(reply: &str) -> (u64, u64, u64, u64) {
    let t: Vec<&str> = reply.split('.').collect();
    assert_eq!(t.len(), 9, "{reply}");
    (
        t[4].parse().unwrap(),
        t[5].parse().unwrap(),
        t[6].parse().unwrap(),
        t[8].parse().unwrap(),
    )
}

#[test]
fn pull_consumer_acks_redelivery_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = T::start(dir.path());
        t.api("STREAM.CREATE.S", json!({"name": "S", "subjects": ["s.*"]}));
        for i in 0..3 {
            t.publish(&format!("s.{i}"), None, None, format!("m{i}").as_bytes());
        }
        let c = t.api(
            "CONSUMER.CREATE.S.D",
            json!({"stream_name": "S", "config": {"durable_name": "D", "ack_policy": "explicit", "ack_wait": 300_000_000}}),
        );
        assert_eq!(c["name"], "D", "{c}");
        assert_eq!(c["num_pending"], 3);
        assert_eq!(c["config"]["max_ack_pending"], 1000);
        assert_eq!(c["config"]["max_waiting"], 512);
        let strict = t.api(
            "CONSUMER.CREATE.S.D",
            json!({"stream_name": "S", "action": "create", "config": {"durable_name": "D", "ack_wait": 1_000_000_000}}),
        );
        assert_eq!(strict["error"]["err_code"], 10148);
        let upd = t.api(
            "CONSUMER.CREATE.S.NOPE",
            json!({"stream_name": "S", "action": "update", "config": {"durable_name": "NOPE"}}),
        );
        assert_eq!(upd["error"]["err_code"], 10149);

        let got = t.pull("S.D", br#"{"batch":2}"#, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].subject, "s.0");
        assert_eq!(got[0].payload, b"m0");
        let (dc, sseq, dseq, pending) = ack_fields(got[0].reply.as_deref().unwrap());
        assert_eq!((dc, sseq, dseq, pending), (1, 1, 1, 2));
        // Ack the first with AckSync; let the second time out.
        let ack_inbox = t.inbox();
        t.publish(
            got[0].reply.as_deref().unwrap(),
            Some(&ack_inbox),
            None,
            b"+ACK",
        );
        assert_eq!(t.wait_for(&ack_inbox, 1, Duration::from_secs(5)).len(), 1);
        std::thread::sleep(Duration::from_millis(400));
        let got = t.pull("S.D", br#"{"batch":1,"expires":3000000000}"#, 1);
        let (dc, sseq, dseq, _) = ack_fields(got[0].reply.as_deref().unwrap());
        // The unacked s.1 comes back first (delivery 2) before the undelivered s.2.
        assert_eq!((dc, sseq, dseq), (2, 2, 3));
        let info = t.api("CONSUMER.INFO.S.D", Value::Null);
        assert_eq!(info["num_ack_pending"], 1, "{info}");
        assert_eq!(info["num_redelivered"], 1);
        assert_eq!(info["num_pending"], 1);
        assert_eq!(info["ack_floor"]["stream_seq"], 1);
        t.publish(got[0].reply.as_deref().unwrap(), None, None, b"+ACK");
        // no_wait with the last message pending delivery, then with nothing left.
        let got = t.pull("S.D", br#"{"batch":5,"no_wait":true}"#, 2);
        assert_eq!(got[0].subject, "s.2");
        assert_eq!(status_line(&got[1]), "NATS/1.0 408 Request Timeout");
        let got = t.pull("S.D", br#"{"batch":1,"no_wait":true}"#, 1);
        assert_eq!(status_line(&got[0]), "NATS/1.0 404 No Messages");
        // A request that expires gets a 408 with the pending counts.
        let got = t.pull("S.D", br#"{"batch":3,"expires":200000000}"#, 1);
        let h = String::from_utf8_lossy(&got[0].hdr).to_string();
        assert!(h.starts_with("NATS/1.0 408 Request Timeout\r\n"), "{h}");
        assert!(h.contains("Nats-Pending-Messages: 3"), "{h}");
        std::thread::sleep(Duration::from_millis(150));
        t.engine.shutdown();
    }
    // Restart: the stream, its messages and the consumer's state come back.
    let t = T::start(dir.path());
    let info = t.api("STREAM.INFO.S", Value::Null);
    assert_eq!(info["state"]["messages"], 3, "{info}");
    let c = t.api("CONSUMER.INFO.S.D", Value::Null);
    assert_eq!(c["delivered"]["stream_seq"], 3, "{c}");
    assert_eq!(c["num_ack_pending"], 1);
    assert_eq!(c["ack_floor"]["stream_seq"], 2);
    t.publish("s.9", None, None, b"new");
    let got = t.pull("S.D", br#"{"batch":2}"#, 2);
    // The message pending at shutdown is past its ack wait: redelivered first.
    assert_eq!(got[0].subject, "s.2");
    assert_eq!(ack_fields(got[0].reply.as_deref().unwrap()).0, 2);
    assert_eq!(got[1].subject, "s.9");
    // A second engine on the same directory is refused.
    let cfg = Config {
        store_dir: dir.path().to_path_buf(),
        max_memory: -1,
        max_store: -1,
        domain: None,
        sync: canopy_store::SyncPolicy::default(),
        strict: true,
        request_queue_limit: 10,
        ingest_queue_limit: 10_000,
    };
    assert!(Engine::start(cfg, Arc::new(FakeHost::new("srv", None))).is_err());
    t.engine.shutdown();
}

#[test]
fn push_consumer_heartbeats_and_ack_none() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    t.api(
        "STREAM.CREATE.P",
        json!({"name": "P", "subjects": ["p.>"], "storage": "memory"}),
    );
    for i in 0..3 {
        t.publish(&format!("p.{i}"), None, None, b"x");
    }
    t.host.interest.lock().push("deliver.here".into());
    let c = t.api(
        "CONSUMER.CREATE.P",
        json!({"stream_name": "P", "config": {"deliver_subject": "deliver.here", "ack_policy": "none",
            "flow_control": true, "idle_heartbeat": 200_000_000, "deliver_policy": "last_per_subject", "mem_storage": true}}),
    );
    assert!(c.get("error").is_none(), "{c}");
    assert_eq!(c["config"]["inactive_threshold"], 5_000_000_000i64);
    let got = t.wait_for("deliver.here", 4, Duration::from_secs(5));
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|o| o.reply.as_deref())
        .filter(|r| r.starts_with("$JS.ACK"))
        .map(|r| ack_fields(r).1)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let hb = got
        .iter()
        .find(|o| status_line(o) == "NATS/1.0 100 Idle Heartbeat")
        .expect("heartbeat");
    let h = String::from_utf8_lossy(&hb.hdr).to_string();
    assert!(h.contains("Nats-Last-Consumer: 3"), "{h}");
    assert!(h.contains("Nats-Last-Stream: 3"), "{h}");
    let name = c["name"].as_str().unwrap().to_string();
    let info = t.api(&format!("CONSUMER.INFO.P.{name}"), Value::Null);
    assert_eq!(info["num_pending"], 0);
    assert_eq!(info["ack_floor"]["stream_seq"], 3);
    assert_eq!(info["push_bound"], true);
    t.engine.shutdown();
}

#[test]
fn workqueue_retention_discard_new_and_exact_pending() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    let r = t.api(
        "STREAM.CREATE.WQ",
        json!({"name": "WQ", "subjects": ["wq.>"], "retention": "workqueue", "max_msgs": 3, "discard": "new"}),
    );
    assert!(r.get("error").is_none(), "{r}");
    let mut acks = Vec::new();
    for i in 0..4 {
        let inbox = t.inbox();
        t.publish(&format!("wq.{i}"), Some(&inbox), None, b"job");
        acks.push(t.wait_for(&inbox, 1, Duration::from_secs(5))[0].clone());
    }
    let last: Value = serde_json::from_slice(&acks[3].payload).unwrap();
    assert_eq!(last["error"]["err_code"], 10077, "{last}");
    assert_eq!(last["error"]["description"], "maximum messages exceeded");
    let bad = t.api(
        "CONSUMER.CREATE.WQ.W",
        json!({"stream_name": "WQ", "config": {"durable_name": "W", "ack_policy": "none"}}),
    );
    assert_eq!(bad["error"]["err_code"], 10098);
    let c = t.api(
        "CONSUMER.CREATE.WQ.W",
        json!({"stream_name": "WQ", "config": {"durable_name": "W", "ack_policy": "explicit"}}),
    );
    assert_eq!(c["num_pending"], 3, "{c}");
    let inbox = t.inbox();
    t.publish("$JS.API.CONSUMER.MSG.NEXT.WQ.W", Some(&inbox), None, b"3");
    let got = t.wait_for(&inbox, 3, Duration::from_secs(5));
    for m in &got {
        t.publish(m.reply.as_deref().unwrap(), None, None, b"");
    }
    // Acked work-queue messages are removed from the stream.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let info = t.api("STREAM.INFO.WQ", Value::Null);
        if info["state"]["messages"] == 0 || Instant::now() > end {
            assert_eq!(info["state"]["messages"], 0, "{info}");
            assert_eq!(info["state"]["first_seq"], 4);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // num_pending follows new messages exactly.
    for i in 0..5 {
        t.publish(&format!("wq.n{i}"), None, None, b"x");
    }
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let c = t.api("CONSUMER.INFO.WQ.W", Value::Null);
        if c["num_pending"] == 3 || Instant::now() > end {
            // Discard new: only 3 fit.
            assert_eq!(c["num_pending"], 3, "{c}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    t.engine.shutdown();
}

#[test]
fn subject_transform_and_republish() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    // Validation: a republish onto the stream's own subjects is a cycle, a bad transform
    // destination is 10156, an empty republish source is refused in pedantic mode.
    let r = t.api(
        "STREAM.CREATE.BAD",
        json!({"name": "BAD", "subjects": ["in.>"], "republish": {"src": ">", "dest": "in.x.>"}}),
    );
    assert_eq!(r["error"]["err_code"], 10052, "{r}");
    assert_eq!(
        r["error"]["description"],
        "stream configuration for republish destination forms a cycle"
    );
    let r = t.api(
        "STREAM.CREATE.BAD",
        json!({"name": "BAD", "subjects": ["in.>"], "subject_transform": {"src": "in.*.>", "dest": "out.$2.>"}}),
    );
    assert_eq!(r["error"]["err_code"], 10156, "{r}");
    let r = t.api(
        "STREAM.CREATE.BAD",
        json!({"name": "BAD", "subjects": ["in.>"], "pedantic": true, "republish": {"dest": "rp.>"}}),
    );
    assert_eq!(r["error"]["err_code"], 10157, "{r}");

    let r = t.api(
        "STREAM.CREATE.T",
        json!({"name": "T", "subjects": ["in.>"],
               "subject_transform": {"src": "in.*.>", "dest": "stored.$1.>"},
               "republish": {"src": "stored.a.>", "dest": "rp.>"}}),
    );
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        r["config"]["republish"],
        json!({"src": "stored.a.>", "dest": "rp.>"})
    );
    let ack = |subj: &str, hdr: Option<&str>, body: &[u8]| -> Value {
        let inbox = t.inbox();
        let h = hdr.map(|h| format!("NATS/1.0\r\n{h}\r\n\r\n"));
        t.publish(subj, Some(&inbox), h.as_deref().map(str::as_bytes), body);
        let got = t.wait_for(&inbox, 1, Duration::from_secs(5));
        serde_json::from_slice(&got[0].payload).unwrap()
    };
    assert_eq!(ack("in.a.x", Some("Foo: bar"), b"one")["seq"], 1);
    assert_eq!(ack("in.b.y", None, b"two")["seq"], 2);
    assert_eq!(ack("in.a.x", None, b"three")["seq"], 3);
    // Stored under the transformed subjects.
    let m = t.api("STREAM.MSG.GET.T", json!({"seq": 2}));
    assert_eq!(m["message"]["subject"], "stored.b.y", "{m}");
    // Only stored.a.> is republished, with the stream's headers after the message's own.
    let rp = t.wait_for("rp.x", 2, Duration::from_secs(5));
    assert_eq!(rp.len(), 2);
    let h0 = String::from_utf8_lossy(&rp[0].hdr).to_string();
    assert!(
        h0.starts_with("NATS/1.0\r\nFoo: bar\r\nNats-Stream: T\r\n"),
        "{h0}"
    );
    assert!(h0.contains("Nats-Subject: stored.a.x\r\n"), "{h0}");
    assert!(h0.contains("Nats-Sequence: 1\r\n"), "{h0}");
    assert!(h0.contains("Nats-Time-Stamp: "), "{h0}");
    assert!(h0.contains("Nats-Last-Sequence: 0\r\n"), "{h0}");
    assert_eq!(rp[0].payload, b"one");
    let h1 = String::from_utf8_lossy(&rp[1].hdr).to_string();
    assert!(h1.contains("Nats-Sequence: 3\r\n"), "{h1}");
    assert!(h1.contains("Nats-Last-Sequence: 1\r\n"), "{h1}");
    assert!(t.host.out.lock().iter().all(|o| o.to != "rp.y"));

    // Update to headers only: the body is dropped and its size reported.
    let r = t.api(
        "STREAM.UPDATE.T",
        json!({"name": "T", "subjects": ["in.>"],
               "subject_transform": {"src": "in.*.>", "dest": "stored.$1.>"},
               "republish": {"src": "stored.a.>", "dest": "rp.>", "headers_only": true}}),
    );
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(ack("in.a.x", None, b"four!")["seq"], 4);
    let rp = t.wait_for("rp.x", 3, Duration::from_secs(5));
    let h2 = String::from_utf8_lossy(&rp[2].hdr).to_string();
    assert!(h2.contains("Nats-Msg-Size: 5\r\n"), "{h2}");
    assert!(h2.contains("Nats-Last-Sequence: 3\r\n"), "{h2}");
    assert!(rp[2].payload.is_empty());
    t.engine.shutdown();
}

#[test]
fn subject_delete_markers_replace_the_last_expired_message() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    let r = t.api(
        "STREAM.CREATE.SDM",
        json!({"name": "SDM", "subjects": ["kv.>"], "storage": "memory",
               "max_age": 500_000_000i64, "allow_msg_ttl": true,
               "subject_delete_marker_ttl": 1_000_000_000i64}),
    );
    assert!(r.get("error").is_none(), "{r}");
    t.publish("kv.a", None, None, b"1");
    t.publish("kv.a", None, None, b"2");
    t.publish("kv.b", None, None, b"3");
    // Within a bound: both subjects end with a MaxAge marker, the older kv.a is gone.
    let end = Instant::now() + Duration::from_secs(5);
    let marker = |subj: &str| {
        let m = t.api("STREAM.MSG.GET.SDM", json!({"last_by_subj": subj}));
        let hdrs = m["message"]["hdrs"].as_str().map(|h| {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD.decode(h).unwrap();
            String::from_utf8(raw).unwrap()
        });
        hdrs.filter(|h| h.contains("Nats-Marker-Reason: MaxAge"))
    };
    let (a, b) = loop {
        if let (Some(a), Some(b)) = (marker("kv.a"), marker("kv.b")) {
            break (a, b);
        }
        assert!(Instant::now() < end, "no markers");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(a.contains("Nats-TTL: 1s\r\n"), "{a}");
    assert!(b.contains("Nats-Rollup: sub\r\n"), "{b}");
    let info = t.api("STREAM.INFO.SDM", Value::Null);
    assert_eq!(info["state"]["messages"], 2, "{info}");
    // The markers expire in turn, without new markers.
    loop {
        let info = t.api("STREAM.INFO.SDM", Value::Null);
        if info["state"]["messages"] == 0 {
            break;
        }
        assert!(Instant::now() < end + Duration::from_secs(3), "{info}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.engine.shutdown();
}

#[test]
fn consumer_commands_run_on_the_senders_thread_and_keep_the_timers() {
    let dir = tempfile::tempdir().unwrap();
    let t = T::start(dir.path());
    t.api("STREAM.CREATE.I", json!({"name": "I", "subjects": ["i.*"]}));
    for i in 0..20 {
        t.publish(&format!("i.{i}"), None, None, b"x");
    }
    let c = t.api(
        "CONSUMER.CREATE.I.C",
        json!({"stream_name": "I", "config": {"durable_name": "C", "ack_policy": "explicit"}}),
    );
    assert_eq!(c["num_pending"], 20, "{c}");
    // With the stream's thread idle, a pull request is served by the thread that sent it
    // (a connection's reader): the delivery is made before the publish returns. The
    // thread may still be counting off the consumer create for a moment: a few tries.
    let me = std::thread::current().id();
    let mut inline = None;
    for _ in 0..20 {
        let got = t.pull("I.C", br#"{"batch":1,"no_wait":true}"#, 1);
        assert_eq!(got.len(), 1, "no delivery");
        if got[0].thread == me {
            inline = Some(got[0].clone());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = inline.expect("no pull request was served on the sender's thread");
    // Its ack is taken the same way.
    t.publish(m.reply.as_deref().unwrap(), None, None, b"+ACK");
    let info = t.api("CONSUMER.INFO.I.C", Value::Null);
    assert!(
        info["ack_floor"]["stream_seq"].as_u64().unwrap() >= 1,
        "{info}"
    );
    // A request handled there that expires before the thread's next planned wake-up
    // (up to a second away on a stream whose consumers have nothing to write) still
    // expires on time: the thread is told to look at its timers again. First a probe
    // answered on this thread (so the stream's thread is idle), then the request.
    t.api("STREAM.CREATE.J", json!({"name": "J", "subjects": ["j.*"]}));
    t.api(
        "CONSUMER.CREATE.J.E",
        json!({"stream_name": "J", "config": {"durable_name": "E", "ack_policy": "explicit"}}),
    );
    let mut idle = false;
    for _ in 0..20 {
        let got = t.pull("J.E", br#"{"batch":1,"no_wait":true}"#, 1);
        assert_eq!(status_line(&got[0]), "NATS/1.0 404 No Messages");
        if got[0].thread == me {
            idle = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(idle, "no probe was answered on the sender's thread");
    let start = Instant::now();
    let got = t.pull("J.E", br#"{"batch":1,"expires":100000000}"#, 1);
    let took = start.elapsed();
    assert_eq!(status_line(&got[0]), "NATS/1.0 408 Request Timeout");
    assert!(took >= Duration::from_millis(90), "expired after {took:?}");
    assert!(took < Duration::from_millis(600), "expired after {took:?}");
    t.engine.shutdown();
}
