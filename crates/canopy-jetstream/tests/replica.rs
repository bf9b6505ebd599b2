//! Replicated (R3) streams in one process: three engines, each with its own store
//! directory and a recording test host, whose stream groups talk through an in-memory
//! transport (canopy_raft::mem) that can cut a member off. A publish is handed to every member's stream
//! subscription (as routes would deliver it): only the leader may answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_jetstream::types::StreamConfig;
use canopy_jetstream::{AccountLimits, Config, Engine, GroupSpec};
use canopy_raft::mem::{MemNet, MemTransport};
use canopy_raft::{GroupConfig, Peer};
use parking_lot::Mutex;
use serde_json::{json, Value};

const ACC: &str = "A";
const STREAM: &str = "ORDERS";
const NODES: [&str; 3] = ["n1", "n2", "n3"];

mod common;
use common::{FakeHost, Out};

/// Live engines by server name: the in-memory network finds each stream's group in them.
type Engines = Arc<Mutex<HashMap<String, Arc<Engine>>>>;

fn network() -> (Engines, Arc<MemNet>) {
    let engines = Engines::default();
    let live = engines.clone();
    let net = MemNet::resolving(Box::new(move |node, group| {
        live.lock().get(node).and_then(|e| e.raft_group(ACC, group))
    }));
    (engines, Arc::new(net))
}

struct Node {
    host: Arc<FakeHost>,
    engine: Arc<Engine>,
}

struct Cluster {
    dir: tempfile::TempDir,
    engines: Engines,
    net: Arc<MemNet>,
    nodes: Mutex<HashMap<String, Node>>,
    inbox: AtomicU64,
    /// Raft snapshot interval (entries).
    snapshot_every: u64,
    /// Raft election timeouts (min, max).
    election: (Duration, Duration),
}

fn stream_cfg() -> StreamConfig {
    let mut c: StreamConfig = serde_json::from_value(json!({
        "name": STREAM, "subjects": ["orders.>"], "num_replicas": 3,
        "retention": "limits", "discard": "old", "storage": "file",
        "max_consumers": -1, "max_msgs": -1, "max_bytes": -1, "max_age": 0,
        "max_msgs_per_subject": -1, "max_msg_size": -1,
        "duplicate_window": 120_000_000_000i64,
    }))
    .unwrap();
    c.num_replicas = 3;
    c
}

fn peers() -> Vec<Peer> {
    NODES.iter().map(|n| Peer::new(n)).collect()
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(8_192).await
    }

    async fn start_with(snapshot_every: u64) -> Cluster {
        let e = (Duration::from_millis(300), Duration::from_millis(600));
        Cluster::start_tuned(snapshot_every, e).await
    }

    async fn start_tuned(snapshot_every: u64, election: (Duration, Duration)) -> Cluster {
        if std::env::var_os("JS_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_test_writer()
                .try_init();
        }
        let (engines, net) = network();
        let c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            engines,
            net,
            nodes: Mutex::new(HashMap::new()),
            inbox: AtomicU64::new(0),
            snapshot_every,
            election,
        };
        for n in NODES {
            c.open(n, true).await;
        }
        c
    }

    fn node_dir(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    /// Starts `n`'s engine and opens its member of the stream.
    async fn open(&self, n: &str, bootstrap: bool) {
        self.open_with(n, bootstrap, peers()).await;
    }

    async fn open_with(&self, n: &str, bootstrap: bool, peers: Vec<Peer>) {
        let host = Arc::new(FakeHost::new(n, Some("C")));
        let cfg = Config {
            store_dir: self.node_dir(n).join("jetstream"),
            max_memory: -1,
            max_store: -1,
            domain: None,
            sync: canopy_store::SyncPolicy::default(),
            strict: true,
            request_queue_limit: 100,
            ingest_queue_limit: 10_000,
        };
        let engine = Engine::start(cfg, host.clone()).unwrap();
        engine
            .enable_account(ACC, AccountLimits::default())
            .unwrap();
        self.engines.lock().insert(n.into(), engine.clone());
        let mut tuning = GroupConfig::new(STREAM, PathBuf::new(), Peer::new(n));
        tuning.heartbeat = Duration::from_millis(50);
        (tuning.election_timeout_min, tuning.election_timeout_max) = self.election;
        tuning.rpc_timeout = Duration::from_millis(500);
        tuning.snapshot_every = self.snapshot_every;
        let spec = GroupSpec {
            name: STREAM.into(),
            dir: self.node_dir(n).join("raft").join(STREAM),
            me: Peer::new(n),
            peers,
            bootstrap,
            tuning: Some(tuning),
        };
        let t = Arc::new(MemTransport {
            from: n.into(),
            net: self.net.clone(),
        });
        engine
            .open_replicated_stream(ACC, stream_cfg(), 1, spec, t)
            .await
            .unwrap();
        self.nodes.lock().insert(n.into(), Node { host, engine });
    }

    /// Shuts `n` down (its group, then its engine) and cuts it off.
    async fn kill(&self, n: &str) {
        self.net.cut(n);
        self.engines.lock().remove(n);
        let node = self.nodes.lock().remove(n).unwrap();
        node.engine.close_replicated_stream(ACC, STREAM).await;
        node.engine.shutdown();
    }

    fn engine(&self, n: &str) -> Arc<Engine> {
        self.nodes.lock()[n].engine.clone()
    }

    fn host(&self, n: &str) -> Arc<FakeHost> {
        self.nodes.lock()[n].host.clone()
    }

    fn live(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Waits for a member to be the ready leader.
    async fn leader(&self) -> String {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let nodes: Vec<(String, Arc<Engine>)> = self
                .nodes
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.engine.clone()))
                .collect();
            for (n, e) in nodes {
                if e.is_stream_leader(ACC, STREAM) {
                    return n;
                }
            }
            assert!(Instant::now() < end, "no stream leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn inbox(&self) -> String {
        format!("_INBOX.{}", self.inbox.fetch_add(1, Ordering::SeqCst))
    }

    /// Publishes as a client would: every member's subscription gets it.
    fn publish(&self, subject: &str, reply: &str, hdr: Option<&[u8]>, payload: &[u8]) {
        for n in self.live() {
            self.host(&n)
                .inject(ACC, subject, Some(reply), hdr, payload);
        }
    }

    /// Everything sent to `to` by any member, waiting until there are at least `n`.
    async fn wait_for(&self, to: &str, n: usize, secs: u64) -> Vec<Out> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let got: Vec<Out> = self
                .live()
                .iter()
                .flat_map(|m| self.host(m).sent_to(to))
                .collect();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An API request to member `n`.
    /// Creates the durable consumer `config.durable_name` through `n`'s API; the answer
    /// (an error fails the test).
    async fn create_durable(&self, n: &str, config: Value) -> Value {
        let name = config["durable_name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let r = self
            .api(
                n,
                &format!("CONSUMER.CREATE.{STREAM}.{name}"),
                json!({"stream_name": STREAM, "config": config}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
        r
    }

    async fn api(&self, n: &str, subject: &str, body: Value) -> Value {
        let inbox = self.inbox();
        let b = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.host(n)
            .inject(ACC, &format!("$JS.API.{subject}"), Some(&inbox), None, &b);
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(o) = self.host(n).sent_to(&inbox).first() {
                return serde_json::from_slice(&o.payload).unwrap();
            }
            assert!(Instant::now() < end, "no reply to {subject} from {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes `count` messages starting at `from` and returns their acks' sequences.
    async fn publish_acked(&self, from: usize, count: usize) -> Vec<u64> {
        let mut inboxes = Vec::new();
        for i in from..from + count {
            let inbox = self.inbox();
            self.publish(
                &format!("orders.{}", i % 3),
                &inbox,
                None,
                format!("m{i}").as_bytes(),
            );
            inboxes.push(inbox);
        }
        let mut seqs = Vec::new();
        for inbox in inboxes {
            let got = self.wait_for(&inbox, 1, 15).await;
            assert_eq!(got.len(), 1, "exactly one ack on {inbox}: {got:?}");
            let v: Value = serde_json::from_slice(&got[0].payload).unwrap();
            assert!(v.get("error").is_none(), "{v}");
            seqs.push(v["seq"].as_u64().unwrap());
        }
        seqs
    }

    /// Waits until member `n`'s stream has `last` as its last sequence.
    async fn wait_last(&self, n: &str, last: u64) -> Value {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let info = self
                .api(n, &format!("STREAM.INFO.{STREAM}"), Value::Null)
                .await;
            if info["state"]["last_seq"].as_u64() == Some(last) {
                return info;
            }
            assert!(Instant::now() < end, "{n} never reached {last}: {info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (seq, subject, payload, time) of every message `n` stores.
    async fn contents(&self, n: &str, last: u64) -> Vec<(u64, String, String, String)> {
        let mut v = Vec::new();
        for seq in 1..=last {
            let r = self
                .api(n, &format!("STREAM.MSG.GET.{STREAM}"), json!({"seq": seq}))
                .await;
            let m = &r["message"];
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["data"].as_str().unwrap_or(""))
                .unwrap();
            v.push((
                m["seq"].as_u64().unwrap_or(0),
                m["subject"].as_str().unwrap_or("").to_string(),
                String::from_utf8(data).unwrap(),
                m["time"].as_str().unwrap_or("").to_string(),
            ));
        }
        v
    }
}

/// Asks `leader` to hand the stream over. A handover can miss its election on a loaded
/// machine (the step-down then reports an error): asked again, as an operator would,
/// unless the leadership moved anyway.
async fn step_down(c: &Cluster, leader: &str) {
    let mut last = String::new();
    for _ in 0..3 {
        let e = c.engine(leader);
        if !e.is_stream_leader(ACC, STREAM) {
            return;
        }
        match e.stream_step_down(ACC, STREAM, None).await {
            Ok(()) => return,
            Err(err) => last = err.to_string(),
        }
    }
    panic!("the stream leader did not step down: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_replicates_survives_leader_loss_and_catches_up() {
    let c = Cluster::start().await;
    let leader = c.leader().await;
    let seqs = c.publish_acked(0, 40).await;
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    for n in NODES {
        c.wait_last(n, 40).await;
    }
    let want = c.contents(&leader, 40).await;
    assert_eq!(
        (want[7].0, want[7].1.as_str(), want[7].2.as_str()),
        (8, "orders.1", "m7")
    );
    for n in NODES {
        assert_eq!(c.contents(n, 40).await, want, "replica {n}");
    }
    // Followers never answered a publish: one ack per message (checked above) came from
    // the leader.
    let info = c
        .api(&leader, &format!("STREAM.INFO.{STREAM}"), Value::Null)
        .await;
    assert_eq!(info["cluster"]["leader"], json!(leader));
    assert_eq!(info["cluster"]["name"], json!("C"));
    assert_eq!(
        info["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2)
    );

    // The leader goes away: another takes over, nothing acknowledged is lost.
    c.kill(&leader).await;
    let second = c.leader().await;
    assert_ne!(second, leader);
    let seqs = c.publish_acked(40, 20).await;
    assert_eq!(seqs, (41..=60).collect::<Vec<u64>>());
    for n in c.live() {
        c.wait_last(&n, 60).await;
    }
    let want = c.contents(&second, 60).await;
    assert_eq!(&want[..40], &c.contents(&second, 40).await[..]);

    // The old leader restarts from its directory and catches up.
    c.net.heal(&leader);
    c.open(&leader, false).await;
    c.wait_last(&leader, 60).await;
    assert_eq!(c.contents(&leader, 60).await, want);
}

fn ack_fields(reply: &str) -> (u64, u64) {
    // $JS.ACK.<stream>.<consumer>.<dc>.<sseq>.<dseq>.<ts>.<pending>
    let t: Vec<&str> = reply.split('.').collect();
    (t[4].parse().unwrap(), t[5].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_consumer_resumes_on_the_new_leader() {
    let c = Cluster::start().await;
    let leader = c.leader().await;
    c.publish_acked(0, 10).await;
    let r = c
        .create_durable(
            &leader,
            json!({
                "durable_name": "C", "ack_policy": "explicit", "ack_wait": 1_000_000_000i64,
                "deliver_policy": "all",
            }),
        )
        .await;
    assert_eq!(r["cluster"]["leader"], json!(leader));
    // Every member knows the consumer.
    for n in NODES {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let i = c
                .api(n, &format!("CONSUMER.INFO.{STREAM}.C"), Value::Null)
                .await;
            if i.get("error").is_none() {
                break;
            }
            assert!(Instant::now() < end, "{n}: {i}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let pull = c.inbox();
    c.host(&leader).inject(
        ACC,
        &format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.C"),
        Some(&pull),
        None,
        b"{\"batch\":10}",
    );
    let got = c.wait_for(&pull, 10, 10).await;
    assert_eq!(got.len(), 10);
    assert_eq!(got[1].subject, "orders.1");
    // Acknowledge the first half with double acks: each is confirmed once committed.
    let mut confirms = Vec::new();
    for o in &got[..5] {
        let inbox = c.inbox();
        c.host(&leader).inject(
            ACC,
            o.reply.as_deref().unwrap(),
            Some(&inbox),
            None,
            b"+ACK",
        );
        confirms.push(inbox);
    }
    for inbox in &confirms {
        assert_eq!(c.wait_for(inbox, 1, 10).await.len(), 1, "ack confirmed");
    }
    // A pull waiting on the leader when it steps down ends with 409 Leadership Change
    // (on a consumer with nothing to deliver, so that nothing else answers it first).
    c.create_durable(
        &leader,
        json!({"durable_name": "E", "ack_policy": "explicit", "deliver_policy": "new"}),
    )
    .await;
    let waiting = c.inbox();
    c.host(&leader).inject(
        ACC,
        &format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.E"),
        Some(&waiting),
        None,
        b"{\"batch\":1,\"expires\":30000000000}",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    step_down(&c, &leader).await;
    let st = c.wait_for(&waiting, 1, 10).await;
    let line = st.first().map(|o| {
        String::from_utf8_lossy(&o.hdr)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    assert_eq!(line.as_deref(), Some("NATS/1.0 409 Leadership Change"));
    let second = c.leader().await;
    assert_ne!(second, leader);
    // The new leader redelivers the unacknowledged half (after ack_wait), never the rest.
    let pull2 = c.inbox();
    c.host(&second).inject(
        ACC,
        &format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.C"),
        Some(&pull2),
        None,
        b"{\"batch\":10,\"expires\":3000000000}",
    );
    let again = c.wait_for(&pull2, 5, 10).await;
    let msgs: Vec<u64> = again
        .iter()
        .filter_map(|o| o.reply.as_deref())
        .map(|r| ack_fields(r).1)
        .collect();
    assert_eq!(msgs, vec![6, 7, 8, 9, 10], "{again:?}");
    for o in &again {
        let (dc, _) = ack_fields(o.reply.as_deref().unwrap());
        assert_eq!(dc, 2, "a redelivery");
    }
    let info = c
        .api(&second, &format!("CONSUMER.INFO.{STREAM}.C"), Value::Null)
        .await;
    assert_eq!(info["ack_floor"]["stream_seq"], json!(5), "{info}");
    assert_eq!(info["cluster"]["leader"], json!(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_dedupe_survives_a_leader_change() {
    let c = Cluster::start().await;
    let leader = c.leader().await;
    let hdr = b"NATS/1.0\r\nNats-Msg-Id: one\r\n\r\n";
    let a = c.inbox();
    c.publish("orders.x", &a, Some(hdr), b"first");
    let ack = c.wait_for(&a, 1, 10).await;
    let v: Value = serde_json::from_slice(&ack[0].payload).unwrap();
    assert_eq!(v["seq"], json!(1), "{v}");
    step_down(&c, &leader).await;
    let end = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let l = c.leader().await;
        if l != leader {
            break l;
        }
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let b = c.inbox();
    c.publish("orders.x", &b, Some(hdr), b"again");
    let ack = c.wait_for(&b, 1, 10).await;
    assert_eq!(ack.len(), 1);
    let v: Value = serde_json::from_slice(&ack[0].payload).unwrap();
    assert_eq!(v["seq"], json!(1), "{v}");
    assert_eq!(v["duplicate"], json!(true), "{v}");
    let info = c.wait_last(&second, 1).await;
    assert_eq!(info["state"]["messages"], json!(1));
}

/// A proposal refused for lack of quorum stays in the leader's log and commits when the
/// followers are back. The leader must not prepare the next publishes against a state
/// without it: their sequences (and the duplicate window) would be reused, the entry
/// applied later skipped as "already stored", and its publishers acknowledged for
/// messages that are not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_publishes_after_a_lost_quorum_do_not_reuse_sequences() {
    // The defaults' proportions (election timeouts 1–2 s): a proposal fails after 5 s
    // (five maximum timeouts, at most 5 s), before the leader refuses proposals at once
    // (no quorum ack for three maximum timeouts, 6 s), so the next one is appended too.
    let e = (Duration::from_millis(1_000), Duration::from_millis(2_000));
    let c = Cluster::start_tuned(8_192, e).await;
    let leader = c.leader().await;
    assert_eq!(c.publish_acked(0, 5).await, (1..=5).collect::<Vec<u64>>());
    // Both followers stop (cut off instead, they would campaign meanwhile and depose the
    // leader when they are back, and its entries after the last commit with it).
    let followers: Vec<String> = c.live().into_iter().filter(|n| *n != leader).collect();
    for f in &followers {
        c.kill(f).await;
    }
    // x is proposed and fails; y, queued behind it, reaches the group after that. y has
    // a message id: sent again after a refusal, it is stored once.
    let (x, y) = (c.inbox(), c.inbox());
    let hdr = b"NATS/1.0\r\nNats-Msg-Id: y\r\n\r\n";
    c.publish("orders.x", &x, None, b"x");
    c.publish("orders.y", &y, Some(hdr), b"y");
    let got = c.wait_for(&x, 1, 20).await;
    assert_eq!(got.len(), 1, "no answer without quorum");
    let v: Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(v["error"]["err_code"], json!(10008), "{v}");
    // The followers are back while y waits; if y was refused too, it is sent again.
    for f in &followers {
        c.net.heal(f);
        c.open(f, false).await;
    }
    let end = Instant::now() + Duration::from_secs(30);
    let mut y = y;
    let seq = loop {
        let got = c.wait_for(&y, 1, 10).await;
        let v: Value = got
            .first()
            .and_then(|o| serde_json::from_slice(&o.payload).ok())
            .unwrap_or(Value::Null);
        if let Some(seq) = v["seq"].as_u64().filter(|s| *s > 0) {
            break seq;
        }
        assert!(Instant::now() < end, "y never acknowledged: {v}");
        y = c.inbox();
        c.publish("orders.y", &y, Some(hdr), b"y");
    };
    // y is where its ack says; x (its 10008 said "unavailable", not "not stored") is
    // at 6 if it committed after all; no hole, nothing twice.
    let leader = c.leader().await;
    let info = c.wait_last(&leader, seq).await;
    assert_eq!(info["state"]["messages"], json!(seq), "{info}");
    let stored: Vec<String> = c
        .contents(&leader, seq)
        .await
        .into_iter()
        .map(|m| m.2)
        .collect();
    let want: Vec<&str> = ["m0", "m1", "m2", "m3", "m4", "x", "y"]
        .into_iter()
        .filter(|p| seq == 7 || *p != "x")
        .collect();
    assert_eq!(stored, want, "y acknowledged at {seq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_wiped_member_catches_up_from_a_snapshot() {
    // Snapshots every 8 entries: the leader's log no longer holds what a member that lost
    // its directory needs, so it is sent the snapshot (messages and consumer states).
    let c = Cluster::start_with(8).await;
    let leader = c.leader().await;
    c.publish_acked(0, 30).await;
    c.create_durable(
        &leader,
        json!({"durable_name": "D", "ack_policy": "explicit", "deliver_policy": "all"}),
    )
    .await;
    let pull = c.inbox();
    c.host(&leader).inject(
        ACC,
        &format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.D"),
        Some(&pull),
        None,
        b"{\"batch\":4}",
    );
    let got = c.wait_for(&pull, 4, 10).await;
    for o in &got[..3] {
        let inbox = c.inbox();
        c.host(&leader).inject(
            ACC,
            o.reply.as_deref().unwrap(),
            Some(&inbox),
            None,
            b"+ACK",
        );
        assert_eq!(c.wait_for(&inbox, 1, 10).await.len(), 1);
    }
    let follower = NODES.iter().find(|n| **n != leader).unwrap().to_string();
    c.kill(&follower).await;
    std::fs::remove_dir_all(c.node_dir(&follower)).unwrap();
    c.publish_acked(30, 12).await;
    c.net.heal(&follower);
    c.open(&follower, false).await;
    c.wait_last(&follower, 42).await;
    assert_eq!(
        c.contents(&follower, 42).await,
        c.contents(&leader, 42).await
    );
    let info = c
        .api(&follower, &format!("CONSUMER.INFO.{STREAM}.D"), Value::Null)
        .await;
    assert_eq!(info["ack_floor"]["stream_seq"], json!(3), "{info}");
    assert_eq!(info["num_ack_pending"], json!(1), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_r1_to_r3_and_back() {
    let (engines, net) = network();
    let c = Cluster {
        dir: tempfile::tempdir().unwrap(),
        engines,
        net,
        nodes: Mutex::new(HashMap::new()),
        inbox: AtomicU64::new(0),
        snapshot_every: 8_192,
        election: (Duration::from_millis(300), Duration::from_millis(600)),
    };
    c.open_with("n1", true, vec![Peer::new("n1")]).await;
    assert_eq!(c.leader().await, "n1");
    c.publish_acked(0, 10).await;
    // Two members join (the meta layer opens them first), then the voters change.
    c.open_with("n2", false, peers()).await;
    c.open_with("n3", false, peers()).await;
    c.engine("n1")
        .set_stream_peers(ACC, STREAM, peers())
        .await
        .unwrap();
    for n in ["n2", "n3"] {
        c.wait_last(n, 10).await;
    }
    assert_eq!(c.contents("n3", 10).await, c.contents("n1", 10).await);
    let seqs = c.publish_acked(10, 5).await;
    assert_eq!(seqs, (11..=15).collect::<Vec<u64>>());
    let info = c.engine("n1").stream_cluster_info(ACC, STREAM).unwrap();
    assert_eq!(info["replicas"].as_array().map(Vec::len), Some(2), "{info}");
    // Back to one: the others leave the group and are closed.
    c.engine("n1")
        .set_stream_peers(ACC, STREAM, vec![Peer::new("n1")])
        .await
        .unwrap();
    for n in ["n2", "n3"] {
        c.kill(n).await;
    }
    let seqs = c.publish_acked(15, 5).await;
    assert_eq!(seqs, (16..=20).collect::<Vec<u64>>());
}
