//! S2 compression of leaf links, black box: two Canopy servers negotiate it (each side
//! writes at its own level), a counting TCP proxy between them shows that compressible
//! payloads cross as a fraction of their size both ways and arrive intact, `/leafz` shows
//! the level, and Debian's nats-server 2.9.10 (no compression) still links uncompressed
//! from either side.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use canopy_testkit::{
    free_fixed_port, hub_and_leaf, nats_server_bin, CountingProxy as Proxy, Impl, ServerProcess,
};
use futures::StreamExt;

const SETTLE: Duration = Duration::from_secs(10);
const PROBE: Duration = Duration::from_millis(150);

async fn client(s: &ServerProcess) -> Client {
    async_nats::connect(s.url()).await.unwrap()
}

async fn sub(c: &Client, subject: &str) -> Subscriber {
    let s = c.subscribe(subject.to_string()).await.unwrap();
    c.flush().await.unwrap();
    s
}

/// Publishes `subject` until `s` receives it (bounded): the path is up. Drains the rest.
async fn probe(p: &Client, subject: &str, s: &mut Subscriber) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        p.publish(subject.to_string(), Bytes::from_static(b"probe"))
            .await
            .unwrap();
        p.flush().await.unwrap();
        if tokio::time::timeout(PROBE, s.next()).await.is_ok() {
            while tokio::time::timeout(Duration::from_millis(300), s.next())
                .await
                .is_ok()
            {}
            return;
        }
    }
    panic!("nothing arrived for {subject} within {SETTLE:?}");
}

fn payload(i: usize) -> Bytes {
    let line = format!(
        "{{\"sensor\":\"temp-{}\",\"site\":\"site-a\",\"value\":21.5,\"unit\":\"celsius\"}}\n",
        i % 7
    );
    Bytes::from(line.repeat(1024 / line.len() + 1))
}

/// Sends `n` compressible messages from `p` to `s` and checks every one arrived intact.
/// Returns the payload bytes sent.
async fn transfer(p: &Client, s: &mut Subscriber, subject: &str, n: usize) -> u64 {
    let mut total = 0;
    for i in 0..n {
        let b = payload(i);
        total += b.len() as u64;
        p.publish(subject.to_string(), b).await.unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..n {
        let m = tokio::time::timeout(SETTLE, s.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("message {i} of {n} on {subject} did not arrive"));
        assert_eq!(m.payload, payload(i), "message {i} on {subject} damaged");
    }
    total
}

fn leafz_compression(s: &ServerProcess) -> Vec<String> {
    let v = s.monitor("/leafz").unwrap();
    v["leafs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l["compression"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A Canopy hub and a Canopy leaf linked through the counting proxy.
async fn compressed_link(hub_mode: &str, leaf_mode: &str) -> (ServerProcess, ServerProcess, Proxy) {
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{ listen: \"127.0.0.1:{lp}\"\n compression: {hub_mode} }}\n"
    ))
    .unwrap();
    let proxy = Proxy::start(lp).unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{ reconnect_interval: 1\n remotes: [ {{ urls: [\"nats-leaf://127.0.0.1:{}\"]\n compression: {leaf_mode} }} ] }}\n",
        proxy.port
    ))
    .unwrap();
    (hub, leaf, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_payloads_cross_a_leaf_link_compressed_both_ways() {
    let (hub, leaf, proxy) = compressed_link("s2_fast", "s2_better").await;
    let (h, l) = (client(&hub).await, client(&leaf).await);
    let mut at_hub = sub(&h, "up.>").await;
    let mut at_leaf = sub(&l, "down.>").await;
    probe(&l, "up.probe", &mut at_hub).await;
    probe(&h, "down.probe", &mut at_leaf).await;
    // Each side writes at its own level.
    assert_eq!(leafz_compression(&hub), ["s2_fast"]);
    assert_eq!(leafz_compression(&leaf), ["s2_better"]);

    let (up0, down0) = proxy.counts();
    let sent = transfer(&l, &mut at_hub, "up.data", 2000).await;
    let (up1, _) = proxy.counts();
    let wire_up = up1 - up0;
    eprintln!("leaf to hub: {wire_up} bytes on the wire for {sent} payload bytes");
    assert!(
        wire_up * 4 < sent,
        "leaf to hub: {wire_up} bytes on the wire for {sent} payload bytes"
    );
    let sent = transfer(&h, &mut at_leaf, "down.data", 2000).await;
    let (_, down1) = proxy.counts();
    let wire_down = down1 - down0;
    eprintln!("hub to leaf: {wire_down} bytes on the wire for {sent} payload bytes");
    assert!(
        wire_down * 4 < sent,
        "hub to leaf: {wire_down} bytes on the wire for {sent} payload bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_auto_follows_rtt_thresholds_and_off_stays_plain() {
    // On loopback the RTT is under every default threshold: s2_auto writes uncompressed
    // (framed), as nats-server does; with thresholds below the RTT it compresses.
    let (hub, leaf, _proxy) = compressed_link(
        "s2_auto",
        "{ mode: s2_auto, rtt_thresholds: [\"0s\", \"1h\", \"2h\"] }",
    )
    .await;
    let (h, l) = (client(&hub).await, client(&leaf).await);
    let mut at_hub = sub(&h, "up.>").await;
    probe(&l, "up.probe", &mut at_hub).await;
    assert_eq!(leafz_compression(&hub), ["s2_uncompressed"]);
    assert_eq!(leafz_compression(&leaf), ["s2_fast"]);
    transfer(&l, &mut at_hub, "up.data", 50).await;

    let (hub, leaf, proxy) = compressed_link("s2_fast", "off").await;
    let (h, l) = (client(&hub).await, client(&leaf).await);
    let mut at_hub = sub(&h, "up.>").await;
    probe(&l, "up.probe", &mut at_hub).await;
    assert_eq!(leafz_compression(&hub), ["off"]);
    assert_eq!(leafz_compression(&leaf), ["off"]);
    let (up0, _) = proxy.counts();
    let sent = transfer(&l, &mut at_hub, "up.data", 200).await;
    assert!(proxy.counts().0 - up0 > sent, "an `off` link compressed");
}

/// nats-server 2.9 has no compression: a Canopy side that wants it falls back to none.
async fn go_peer_links_uncompressed(hub_kind: Impl, leaf_kind: Impl) {
    let (hub_c, leaf_c) = match hub_kind {
        Impl::Canopy => ("compression: s2_fast", ""),
        Impl::NatsServer => ("", "compression: s2_fast"),
    };
    let (hub, leaf) = hub_and_leaf((hub_kind, "", hub_c), (leaf_kind, "", leaf_c)).unwrap();
    let (h, l) = (client(&hub).await, client(&leaf).await);
    let mut at_hub = sub(&h, "up.>").await;
    let mut at_leaf = sub(&l, "down.>").await;
    probe(&l, "up.probe", &mut at_hub).await;
    probe(&h, "down.probe", &mut at_leaf).await;
    transfer(&l, &mut at_hub, "up.data", 100).await;
    transfer(&h, &mut at_leaf, "down.data", 100).await;
    let canopy = if hub_kind == Impl::Canopy {
        &hub
    } else {
        &leaf
    };
    assert_eq!(leafz_compression(canopy), ["off"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_2_9_peers_link_uncompressed() {
    if nats_server_bin().is_none() {
        eprintln!("skipped: /usr/sbin/nats-server not installed");
        return;
    }
    go_peer_links_uncompressed(Impl::Canopy, Impl::NatsServer).await;
    go_peer_links_uncompressed(Impl::NatsServer, Impl::Canopy).await;
}
