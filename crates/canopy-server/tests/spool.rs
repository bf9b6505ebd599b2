//! Store-and-forward at the leaf (`reconnect_buffer_size`, issue 15), black box: a Canopy
//! leaf whose hub is down publishes into its spool; the hub (Canopy or Debian's
//! nats-server) comes up with a subscriber and receives what was spooled, once, in order.
//!
//! The leaf dials the hub through a [`Gate`], a loopback TCP forwarder that refuses
//! connections until the test opens it: the hub's subscriber is in place before the leaf
//! can connect, so the replay's interest check sees it (a subscriber that appears after
//! the replay would not get the spooled messages, by design). Every wait is bounded.

#![allow(clippy::unwrap_used)]

mod client_sync;

use client_sync::sync;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use canopy_testkit::{free_fixed_port, Impl, ServerProcess};
use futures::StreamExt;
use serde_json::Value;

/// Upper bound for anything to happen (a connect, a replay, a delivery).
const WAIT: Duration = Duration::from_secs(20);
/// How long to keep listening after the last expected message, to catch duplicates.
const QUIET: Duration = Duration::from_millis(500);

/// A loopback forwarder to a hub's leafnode port, closed until [`Gate::open`].
struct Gate {
    port: u16,
    target: Arc<Mutex<Option<u16>>>,
}

impl Gate {
    fn new() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target: Arc<Mutex<Option<u16>>> = Arc::new(Mutex::new(None));
        let t = target.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(inbound) = conn else { continue };
                let Some(to) = *t.lock().unwrap() else {
                    drop(inbound);
                    continue;
                };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                // Without it Nagle and delayed ACKs put 40 ms into every PING barrier.
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                pipe(&inbound, &outbound);
                pipe(&outbound, &inbound);
            }
        });
        Gate { port, target }
    }

    fn open(&self, to: u16) {
        *self.target.lock().unwrap() = Some(to);
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut r), Ok(mut w)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut r, &mut w);
        let _ = w.shutdown(std::net::Shutdown::Both);
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    });
}

fn leaf_config(gate: &Gate, store: &Path, buffer: &str) -> String {
    leaf_config_with(gate, store, buffer, "")
}

/// [`leaf_config`] with more keys in the remote (`extra`).
fn leaf_config_with(gate: &Gate, store: &Path, buffer: &str, extra: &str) -> String {
    format!(
        r#"
server_name: leaf
port: -1
http: -1
leafnodes {{
  reconnect_buffer_size: {buffer}
  store_dir: "{}"
  remotes [ {{ url: "nats-leaf://127.0.0.1:{}", reconnect_interval: "200ms" {extra} }} ]
}}
"#,
        store.display(),
        gate.port
    )
}

fn hub_config(leaf_port: u16) -> String {
    format!("server_name: hub\nport: -1\nhttp: -1\nleafnodes {{ port: {leaf_port} }}\n")
}

async fn client(s: &ServerProcess) -> Client {
    // A replay can outpace the test's reading loop: async-nats drops what overflows a
    // subscription's channel (client side, the server sees no slow consumer), which would
    // look like a lost message. Room for a whole 1 M replay.
    async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(s.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", s.url()))
}

/// The leaf's only remote's spool counters (`/leafz` `canopy_remotes[0].spool`).
fn spool(leaf: &ServerProcess) -> Value {
    leaf.monitor("/leafz").unwrap()["canopy_remotes"][0]["spool"].clone()
}

/// Polls the spool counters until `ok` holds (bounded).
async fn wait_spool(leaf: &ServerProcess, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = spool(leaf);
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: spool is {s}\nleaf log:\n{}",
            leaf.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `n` messages `saf.<i % 7>` with payload `i` (and `pad` bytes of padding),
/// then one `sync.*` message (spooled too: the spool takes everything exportable, the
/// replay drops it since the hub has no interest in it).
async fn publish_n(leaf: &ServerProcess, n: usize, pad: usize) {
    let c = client(leaf).await;
    let padding = "x".repeat(pad);
    for i in 0..n {
        c.publish(
            format!("saf.{}", i % 7),
            Bytes::from(format!("{i} {padding}")),
        )
        .await
        .unwrap();
    }
    sync(&c).await;
}

/// Receives until `expected` messages arrived, then listens for [`QUIET`] for more.
async fn collect(sub: &mut Subscriber, expected: usize) -> Vec<usize> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < expected {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => got.push(index(&m.payload)),
            _ => break,
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
        got.push(index(&m.payload));
    }
    got
}

fn index(payload: &[u8]) -> usize {
    let s = std::str::from_utf8(payload).unwrap();
    s.split(' ').next().unwrap().parse().unwrap()
}

/// A leaf with a spool of `buffer` in a fresh directory, dialling a closed [`Gate`].
fn leaf_behind_gate(buffer: &str) -> (tempfile::TempDir, Gate, ServerProcess) {
    let store = tempfile::tempdir().unwrap();
    let gate = Gate::new();
    let leaf = ServerProcess::canopy(&leaf_config(&gate, store.path(), buffer)).unwrap();
    (store, gate, leaf)
}

/// Asserts that the payload indexes received are exactly `want`, in order.
fn assert_indexes(got: &[usize], range: std::ops::Range<usize>, leaf: &ServerProcess) {
    let want: Vec<usize> = range.clone().collect();
    assert!(
        got == want.as_slice(),
        "got {} messages, want {range:?}, first out of place at {:?}\nleaf log:\n{}",
        got.len(),
        got.iter().zip(&want).position(|(a, b)| a != b),
        leaf.log()
    );
}

/// Starts the hub, subscribes `saf.>` there, then lets the leaf in.
async fn hub_with_subscriber(kind: Impl, gate: &Gate) -> (ServerProcess, Client, Subscriber) {
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::start(kind, &hub_config(leaf_port), &[]).unwrap();
    let c = client(&hub).await;
    let sub = c.subscribe("saf.>").await.unwrap();
    sync(&c).await;
    gate.open(leaf_port);
    (hub, c, sub)
}

/// Two Canopy hubs in a cluster, each with a leafnode port: (a, b, a's leaf port, b's).
async fn hub_pair() -> (ServerProcess, ServerProcess, u16, u16) {
    let (la, lb, ca, cb) = (
        free_fixed_port(),
        free_fixed_port(),
        free_fixed_port(),
        free_fixed_port(),
    );
    let conf = |name: &str, leaf: u16, own: u16, other: u16| {
        format!(
            "server_name: {name}\nport: -1\nhttp: -1\nleafnodes {{ port: {leaf} }}\n\
             cluster {{ name: hubs, port: {own}, routes: [\"nats-route://127.0.0.1:{other}\"] }}\n"
        )
    };
    let a = ServerProcess::canopy(&conf("hub-a", la, ca, cb)).unwrap();
    let b = ServerProcess::canopy(&conf("hub-b", lb, cb, ca)).unwrap();
    (a, b, la, lb)
}

/// Every hub down at start-up; 1,000 messages published on the leaf (optionally a leaf
/// restart during the outage); the hub comes up with a subscriber and gets all of them,
/// once, in order; afterwards live traffic flows again.
async fn outage(kind: Impl, restart_leaf: bool) {
    if kind == Impl::NatsServer && canopy_testkit::nats_server_bin().is_none() {
        eprintln!("nats-server not installed: skipped");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let gate = Gate::new();
    let config = leaf_config(&gate, store.path(), "10MB");
    let mut leaf = ServerProcess::canopy(&config).unwrap();
    publish_n(&leaf, 1000, 0).await;
    wait_spool(&leaf, "1,000 spooled", |s| s["msgs"] == 1001).await;
    if restart_leaf {
        leaf.kill();
        leaf = ServerProcess::canopy(&config).unwrap();
        wait_spool(&leaf, "the spool survives a restart", |s| s["msgs"] == 1001).await;
    }
    let (_hub, hub_c, mut sub) = hub_with_subscriber(kind, &gate).await;
    let got = collect(&mut sub, 1000).await;
    assert_indexes(&got, 0..1000, &leaf);
    let s = wait_spool(&leaf, "replay done", |s| s["spooling"] == false).await;
    assert_eq!(s["msgs"], 0, "{s}");
    assert_eq!(s["replayed"], 1000, "{s}");
    assert_eq!(s["unwanted"], 1, "{s}");
    assert_eq!(s["dropped"], 0, "{s}");
    assert!(leaf.log().contains("spool replayed"), "{}", leaf.log());
    // Live traffic after the replay.
    let c = client(&leaf).await;
    c.publish("saf.live", Bytes::from("1000 live"))
        .await
        .unwrap();
    sync(&c).await;
    assert_eq!(collect(&mut sub, 1).await, vec![1000]);
    drop(hub_c);
}

#[tokio::test]
async fn outage_canopy_hub() {
    outage(Impl::Canopy, false).await;
}

#[tokio::test]
async fn outage_go_hub() {
    outage(Impl::NatsServer, false).await;
}

#[tokio::test]
async fn outage_leaf_restart_canopy_hub() {
    outage(Impl::Canopy, true).await;
}

#[tokio::test]
async fn outage_leaf_restart_go_hub() {
    outage(Impl::NatsServer, true).await;
}

/// A spool smaller than the outage's traffic keeps the newest messages, counts the
/// discarded ones, and replays what it kept in order.
#[tokio::test]
async fn small_buffer_keeps_newest() {
    let (_store, gate, leaf) = leaf_behind_gate("20000");
    publish_n(&leaf, 1000, 100).await;
    let s = wait_spool(&leaf, "1,001 offered", |s| s["spooled"] == 1001).await;
    let kept = s["msgs"].as_u64().unwrap() as usize;
    let dropped = s["dropped"].as_u64().unwrap() as usize;
    assert!(kept > 10 && kept < 1000, "{s}");
    assert_eq!(kept + dropped, 1001, "{s}");
    // The last one kept is the sync message, which the hub does not want.
    let kept = kept - 1;
    assert!(s["bytes"].as_u64().unwrap() <= 20000, "{s}");
    assert!(leaf.log().contains("spool full"), "{}", leaf.log());
    let (_, text) = canopy_testkit::http_get(leaf.http_port.unwrap(), "/metrics").unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("nats_leafnodes_buffer_dropped_msgs")
                && l.ends_with(&format!(" {dropped}"))),
        "{text}"
    );
    let (_hub, _c, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    let got = collect(&mut sub, kept).await;
    assert_indexes(&got, 1000 - kept..1000, &leaf);
}

/// A publisher that keeps publishing while the hub comes back: nothing published during
/// the replay overtakes what was spooled (the link is held until the spool is drained),
/// nothing is lost or repeated across the switch to live traffic.
#[tokio::test]
async fn publishing_through_the_replay() {
    let (_store, gate, leaf) = leaf_behind_gate("10MB");
    let c = client(&leaf).await;
    let total = 20_000;
    for i in 0..total / 2 {
        c.publish(format!("saf.{}", i % 7), Bytes::from(format!("{i}")))
            .await
            .unwrap();
    }
    sync(&c).await;
    let (_hub, _hc, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    // The second half goes out while the leaf connects and replays; small pauses spread
    // it over the reconnect.
    for i in total / 2..total {
        c.publish(format!("saf.{}", i % 7), Bytes::from(format!("{i}")))
            .await
            .unwrap();
        if i % 500 == 0 {
            c.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    sync(&c).await;
    let got = collect(&mut sub, total).await;
    assert_indexes(&got, 0..total, &leaf);
}

/// kill -9 of the leaf in the middle of a replay, then a restart on the same spool: the
/// replay resumes where the hub got to. Nothing spooled is lost, nothing comes out of
/// order. A Canopy hub counts each replayed message off the batch's list (`$LSPOOL.B`)
/// as it hands it on, so nothing comes twice; a Go hub cannot, and keeps one batch in
/// flight: at most that batch (1,024 messages) comes again.
/// With `failover`, the hub is a cluster of two Canopy servers, the subscriber is on the
/// second, and the leaf comes back to the second: the first shared its mark when the
/// killed leaf's link closed.
async fn kill_during_replay(kind: Impl, max_repeated: usize, failover: bool) {
    let store = tempfile::tempdir().unwrap();
    let gate = Gate::new();
    let config = leaf_config(&gate, store.path(), "100MB");
    let mut leaf = ServerProcess::canopy(&config).unwrap();
    let total = 200_000;
    publish_n(&leaf, total, 0).await;
    wait_spool(&leaf, "all spooled", |s| s["msgs"] == total + 1).await;
    let mut hubs = Vec::new();
    let mut sub = if failover {
        let (hub_a, hub_b, leaf_a, leaf_b) = hub_pair().await;
        let c = client(&hub_b).await;
        let sub = c.subscribe("saf.>").await.unwrap();
        sync(&c).await;
        // Interest reached the first hub (whose leaf will forward it).
        let ca = client(&hub_a).await;
        let mut probe_sub = c.subscribe("probe").await.unwrap();
        sync(&c).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            ca.publish("probe", Bytes::new()).await.unwrap();
            ca.flush().await.unwrap();
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), probe_sub.next()).await
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub cluster did not form"
            );
        }
        gate.open(leaf_a);
        hubs.push((hub_a, ca, leaf_a));
        hubs.push((hub_b, c, leaf_b));
        sub
    } else {
        let (hub, hc, sub) = hub_with_subscriber(kind, &gate).await;
        hubs.push((hub, hc, 0));
        sub
    };
    let mut got = Vec::with_capacity(total + 2048);
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 20_000 {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => got.push(index(&m.payload)),
            _ => panic!("replay did not start: {} received", got.len()),
        }
    }
    leaf.kill();
    let killed_at = got.len();
    if failover {
        gate.open(hubs[1].2);
    }
    leaf = ServerProcess::canopy(&config).unwrap();
    let left = spool(&leaf)["msgs"].as_u64().unwrap();
    assert!(
        left > 0,
        "the replay ended before the kill: make the outage larger"
    );
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while got.last() != Some(&(total - 1)) {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => got.push(index(&m.payload)),
            _ => break,
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
        got.push(index(&m.payload));
    }
    // 0..=k before the kill, then c.. after the restart with c <= k + 1.
    let k = got
        .windows(2)
        .position(|w| w[1] != w[0] + 1)
        .unwrap_or(got.len() - 1);
    assert!(k + 1 >= killed_at, "a gap before the kill point: {k}");
    let tail = &got[k + 1..];
    let c = tail.first().copied().unwrap_or(total);
    assert_indexes(tail, c..total, &leaf);
    assert!(c <= got[k] + 1, "lost {}..{c}", got[k] + 1);
    let repeated = got[k] + 1 - c;
    assert!(
        repeated <= max_repeated,
        "{repeated} repeated (at most {max_repeated} expected)"
    );
    eprintln!("kill after {killed_at} received, {left} left in the spool, {repeated} repeated");
}

#[tokio::test]
async fn kill_during_replay_canopy_hub() {
    kill_during_replay(Impl::Canopy, 0, false).await;
}

/// The leaf comes back to another member of the hub cluster: the mark was shared, so
/// nothing comes twice there either.
#[tokio::test]
async fn kill_during_replay_hub_failover() {
    kill_during_replay(Impl::Canopy, 0, true).await;
}

#[tokio::test]
async fn kill_during_replay_go_hub() {
    kill_during_replay(Impl::NatsServer, 1024, false).await;
}

/// The replay rate after an outage of 1 M messages of 128 B (a benchmark, not run by
/// default: `cargo test -p canopy-server --test spool replay_rate -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn replay_rate_1m() {
    let (_store, gate, leaf) = leaf_behind_gate("1GB");
    let total = 1_000_000;
    let started = std::time::Instant::now();
    // 128-byte payloads: the index, a space and padding.
    publish_n(&leaf, total, 120).await;
    wait_spool(&leaf, "all spooled", |s| s["msgs"] == total + 1).await;
    let spooled_in = started.elapsed();
    let (hub, _hc, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    let started = std::time::Instant::now();
    let mut n = 0;
    while n < total {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(_)) => n += 1,
            _ => panic!(
                "replay stalled after {n}: leaf spool {}, hub slow consumers {}, leafz {}",
                spool(&leaf),
                hub.monitor("/varz").unwrap()["slow_consumers"],
                hub.monitor("/leafz").unwrap()
            ),
        }
    }
    let replayed_in = started.elapsed();
    eprintln!(
        "spooled {total} in {spooled_in:?} ({:.0} msgs/s, publisher included); replayed in \
         {replayed_in:?} ({:.0} msgs/s, hub and subscriber included)",
        total as f64 / spooled_in.as_secs_f64(),
        total as f64 / replayed_in.as_secs_f64()
    );
}

/// What is not exportable is not spooled (`deny_exports`), and a request whose requester
/// has gone is not replayed; one whose requester still waits is, with its reply subject.
#[tokio::test]
async fn deny_exports_and_stale_requests() {
    let store = tempfile::tempdir().unwrap();
    let gate = Gate::new();
    let config = leaf_config_with(
        &gate,
        store.path(),
        "1MB",
        r#", deny_exports: ["saf.secret.>"]"#,
    );
    let leaf = ServerProcess::canopy(&config).unwrap();
    let waiting = client(&leaf).await;
    let mut replies = waiting.subscribe("reply.alive").await.unwrap();
    sync(&waiting).await;
    let c = client(&leaf).await;
    c.publish("saf.secret.x", Bytes::from("0")).await.unwrap();
    c.publish_with_reply("saf.req", "reply.alive", Bytes::from("1"))
        .await
        .unwrap();
    c.publish_with_reply("saf.req", "reply.gone", Bytes::from("2"))
        .await
        .unwrap();
    sync(&c).await;
    // saf.req twice and the two sync messages; not the denied one.
    let s = wait_spool(&leaf, "spooled", |s| s["spooled"] == 4).await;
    assert_eq!(s["msgs"], 4, "{s}");
    let (_hub, hc, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, Bytes::from("1"));
    assert_eq!(got.reply.as_deref(), Some("reply.alive"));
    // The hub side answers; the requester on the leaf gets it.
    hc.publish("reply.alive", Bytes::from("answer"))
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.payload, Bytes::from("answer"));
    let s = wait_spool(&leaf, "replay done", |s| s["spooling"] == false).await;
    assert_eq!(s["replayed"], 1, "{s}");
    assert_eq!(s["stale_replies"], 1, "{s}");
    assert_eq!(s["unwanted"], 2, "{s}");
    assert!(
        tokio::time::timeout(QUIET, sub.next()).await.is_err(),
        "nothing else arrives"
    );
}

/// After a replay the link carries live traffic; when the hub goes away again the remote
/// spools again, and the next hub gets that outage's messages.
#[tokio::test]
async fn second_outage() {
    let (_store, gate, leaf) = leaf_behind_gate("10MB");
    publish_n(&leaf, 10, 0).await;
    let (mut hub, _hc, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    assert_indexes(&collect(&mut sub, 10).await, 0..10, &leaf);
    wait_spool(&leaf, "first replay done", |s| s["spooling"] == false).await;
    hub.kill();
    wait_spool(&leaf, "spooling again", |s| s["spooling"] == true).await;
    publish_n(&leaf, 100, 0).await;
    let (_hub, _hc, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    assert_indexes(&collect(&mut sub, 100).await, 0..100, &leaf);
    let s = wait_spool(&leaf, "second replay done", |s| s["spooling"] == false).await;
    assert_eq!(s["replayed"], 110, "{s}");
    assert!(leaf.log().contains("link down, spooling"), "{}", leaf.log());
}

/// A spool that cannot be opened is logged and counted; the leaf runs without it.
#[tokio::test]
async fn unusable_store_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let gate = Gate::new();
    let leaf = ServerProcess::canopy(&leaf_config(&gate, &file, "1MB")).unwrap();
    publish_n(&leaf, 5, 0).await;
    let s = spool(&leaf);
    assert_eq!(s["errors"], 1, "{s}");
    assert_eq!(s["msgs"], 0, "{s}");
    assert!(
        leaf.log().contains("cannot open the spool"),
        "{}",
        leaf.log()
    );
    let (_hub, _hc, mut sub) = hub_with_subscriber(Impl::Canopy, &gate).await;
    let c = client(&leaf).await;
    // Live traffic once the link is up (the hub's interest takes a moment to arrive).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.publish("saf.live", Bytes::from("7")).await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            assert_eq!(index(&m.payload), 7);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", leaf.log());
    }
}

/// A member of queue group `workers` on `subject`, known to the server when this returns.
async fn workers(c: &Client, subject: &str) -> Subscriber {
    let s = c
        .queue_subscribe(subject.to_string(), "workers".to_string())
        .await
        .unwrap();
    sync(c).await;
    s
}

/// Queue groups: the hub's members of a group get the spooled messages, except those of a
/// group that has a member on the leaf (it served them when they were published).
#[tokio::test]
async fn queue_groups_served_once() {
    let (_store, gate, leaf) = leaf_behind_gate("1MB");
    let lc = client(&leaf).await;
    let mut local = workers(&lc, "saf.qa").await;
    for i in 0..5 {
        lc.publish("saf.qa", Bytes::from(format!("{i}")))
            .await
            .unwrap();
        lc.publish("saf.qb", Bytes::from(format!("{}", 5 + i)))
            .await
            .unwrap();
    }
    sync(&lc).await;
    assert_eq!(collect(&mut local, 5).await, vec![0, 1, 2, 3, 4]);
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&hub_config(leaf_port)).unwrap();
    let hc = client(&hub).await;
    let mut remote = workers(&hc, "saf.*").await;
    gate.open(leaf_port);
    assert_eq!(collect(&mut remote, 5).await, vec![5, 6, 7, 8, 9]);
    let s = wait_spool(&leaf, "replay done", |s| s["spooling"] == false).await;
    assert_eq!(s["replayed"], 5, "{s}");
}

/// A message larger than the whole spool is discarded and counted, not an error.
#[tokio::test]
async fn oversized_message_is_dropped() {
    let (_store, _gate, leaf) = leaf_behind_gate("1KB");
    publish_n(&leaf, 1, 2048).await;
    let s = wait_spool(&leaf, "sync spooled", |s| s["spooled"] == 1).await;
    assert_eq!(s["dropped"], 1, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
}
