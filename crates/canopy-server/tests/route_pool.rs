//! nats-server 2.10 route features, black box: route pooling (`pool_size`), per-account
//! routes (`accounts`) and S2 compression (`compression`) in a 3-member Canopy cluster,
//! with a counting TCP proxy on one route to see the bytes that cross it; a Debian
//! nats-server 2.9.10 joining such a cluster (no pool, no compression: the 2.9 protocol);
//! and nats-server 2.10's refusal of mismatched pool sizes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Subscriber};
use bytes::Bytes;
use canopy_testkit::{
    assert_eventually, free_fixed_port, nats_server_bin, CountingProxy, Impl, ServerProcess,
};
use futures::StreamExt;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(15);

const ACCOUNTS: &str = "system_account: SYS\naccounts {\n A { users [{user: a, password: a}] }\n B { users [{user: b, password: b}] }\n C { users [{user: c, password: c}] }\n SYS { users [{user: sys, password: sys}] }\n}\n";

/// A cluster member: `extra` goes inside `cluster {}`.
fn member(kind: Impl, name: &str, port: u16, extra: &str) -> ServerProcess {
    ServerProcess::start(
        kind,
        &format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: {name}\n{ACCOUNTS}cluster {{\n name: C1\n listen: 127.0.0.1:{port}\n {extra}\n}}\n"
        ),
        &[],
    )
    .unwrap()
}

async fn client(s: &ServerProcess, user: &str) -> Client {
    ConnectOptions::with_user_and_password(user.into(), user.into())
        .connect(s.url())
        .await
        .unwrap()
}

fn routez(s: &ServerProcess) -> Vec<Value> {
    s.monitor("/routez?subs=1")
        .ok()
        .and_then(|v| v["routes"].as_array().cloned())
        .unwrap_or_default()
}

/// Route connections to the member named `peer`.
fn routes_to(s: &ServerProcess, peer: &str) -> Vec<Value> {
    routez(s)
        .into_iter()
        .filter(|r| r["remote_name"] == peer)
        .collect()
}

fn payload(i: usize, account: &str) -> Bytes {
    let line = format!(
        "{{\"seq\":{i},\"account\":\"{account}\",\"site\":\"site-a\",\"value\":21.5,\"unit\":\"celsius\"}}\n"
    );
    Bytes::from(line.repeat(1024 / line.len() + 1))
}

/// Publishes `probe` until `s` gets one (bounded): interest crossed the route.
async fn probe(p: &Client, subject: &str, s: &mut Subscriber) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        p.publish(subject.to_string(), Bytes::from_static(b"probe"))
            .await
            .unwrap();
        p.flush().await.unwrap();
        if tokio::time::timeout(Duration::from_millis(150), s.next())
            .await
            .is_ok()
        {
            while tokio::time::timeout(Duration::from_millis(300), s.next())
                .await
                .is_ok()
            {}
            return;
        }
    }
    panic!("nothing arrived on {subject} within {SETTLE:?}");
}

/// Sends `n` numbered compressible messages and checks they arrive intact and in order.
/// Returns the payload bytes sent.
async fn in_order(p: &Client, s: &mut Subscriber, subject: &str, account: &str, n: usize) -> u64 {
    let mut total = 0;
    for i in 0..n {
        let b = payload(i, account);
        total += b.len() as u64;
        p.publish(subject.to_string(), b).await.unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..n {
        let m = tokio::time::timeout(SETTLE, s.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{account}: message {i} of {n} did not arrive"));
        assert_eq!(
            m.payload,
            payload(i, account),
            "{account}: message {i} out of order or damaged"
        );
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_compressed_cluster_keeps_each_accounts_order() {
    let (p1, p2, p3) = (free_fixed_port(), free_fixed_port(), free_fixed_port());
    let pooled = "pool_size: 3\n accounts: [A]";
    let s1 = member(
        Impl::Canopy,
        "S1",
        p1,
        &format!("{pooled}\n compression: s2_fast"),
    );
    // S2 reaches S1 through the counting proxy; S3 dials S1 and learns S2 by gossip.
    let proxy = CountingProxy::start(p1).unwrap();
    let s2 = member(
        Impl::Canopy,
        "S2",
        p2,
        &format!(
            "{pooled}\n compression: s2_fast\n routes: [\"nats-route://127.0.0.1:{}\"]",
            proxy.port
        ),
    );
    let s3 = member(
        Impl::Canopy,
        "S3",
        p3,
        &format!(
            "{pooled}\n compression: {{ mode: s2_auto, rtt_thresholds: [\"0ms\", \"1s\"] }}\n routes: [\"nats-route://127.0.0.1:{p1}\"]"
        ),
    );
    // Per peer: 3 pool connections, A's and the system account's dedicated routes.
    for s in [&s1, &s2, &s3] {
        assert_eventually!(
            SETTLE,
            routez(s).len() == 10,
            "{:?}: /routez {:#?}",
            s.monitor("/varz").map(|v| v["server_name"].clone()),
            routez(s)
        );
    }
    let to_s1 = routes_to(&s2, "S1");
    assert_eq!(to_s1.len(), 5);
    assert!(
        to_s1.iter().all(|r| r["compression"] == "s2_fast"),
        "{to_s1:#?}"
    );
    let mut dedicated: Vec<&str> = to_s1.iter().filter_map(|r| r["account"].as_str()).collect();
    dedicated.sort();
    assert_eq!(dedicated, ["A", "SYS"]);
    // s2_auto with a 0ms first threshold: S3 writes s2_fast on loopback, S1 its own level.
    assert!(routes_to(&s3, "S1")
        .iter()
        .all(|r| r["compression"] == "s2_fast"));

    // Subscribers on S1 in three accounts; publishers on S2 (through the proxy) and S3.
    let mut subs = Vec::new();
    for acc in ["A", "B", "C"] {
        let c = client(&s1, &acc.to_lowercase()).await;
        let sub = c
            .subscribe(format!("{}.>", acc.to_lowercase()))
            .await
            .unwrap();
        c.flush().await.unwrap();
        subs.push((acc, c, sub));
    }
    let mut sent = 0;
    let (up0, _) = proxy.counts();
    for (acc, _, sub) in subs.iter_mut() {
        let acc: &str = acc;
        let p = client(&s2, &acc.to_lowercase()).await;
        let subject = format!("{}.data", acc.to_lowercase());
        probe(&p, &subject, sub).await;
        sent += in_order(&p, sub, &subject, acc, 600).await;
        let p3 = client(&s3, &acc.to_lowercase()).await;
        probe(&p3, &subject, sub).await;
        in_order(&p3, sub, &subject, acc, 200).await;
    }
    let (up1, _) = proxy.counts();
    let wire = up1 - up0;
    eprintln!("S2 to S1: {wire} bytes on the wire for {sent} payload bytes");
    assert!(
        wire * 4 < sent,
        "S2 to S1: {wire} bytes on the wire for {sent} payload bytes"
    );

    // A's interest travels on A's dedicated route only.
    let with_a: Vec<Value> = routes_to(&s2, "S1")
        .into_iter()
        .filter(|r| {
            r["subscriptions_list"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == "a.>"))
        })
        .collect();
    assert_eq!(with_a.len(), 1, "{with_a:#?}");
    assert_eq!(with_a[0]["account"], "A");

    // The system account travels on its own dedicated routes: a server ping from S2 is
    // answered by every member.
    let sys = client(&s2, "sys").await;
    let inbox = sys.new_inbox();
    let mut replies = sys.subscribe(inbox.clone()).await.unwrap();
    sys.publish_with_reply("$SYS.REQ.SERVER.PING", inbox, Bytes::new())
        .await
        .unwrap();
    sys.flush().await.unwrap();
    let mut names = Vec::new();
    while names.len() < 3 {
        let m = tokio::time::timeout(SETTLE, replies.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("server ping answered by {names:?} only"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        names.push(v["server"]["name"].as_str().unwrap_or_default().to_string());
    }
    names.sort();
    assert_eq!(names, ["S1", "S2", "S3"]);

    // The bytes on the wire are in the metrics next to the payload bytes.
    let (status, metrics) = canopy_testkit::http_get(s2.http_port.unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "nats_routes_wire_sent_bytes{name=\"S1\",pool=\"account:A\",compression=\"s2_fast\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_2_9_joins_a_pooled_compressed_cluster_uncompressed() {
    if nats_server_bin().is_none() {
        eprintln!("SKIP: /usr/sbin/nats-server is not installed");
        return;
    }
    let (pc, pg) = (free_fixed_port(), free_fixed_port());
    let canopy = member(
        Impl::Canopy,
        "CAN",
        pc,
        &format!("pool_size: 3\n accounts: [A]\n compression: s2_fast\n routes: [\"nats-route://127.0.0.1:{pg}\"]"),
    );
    let go = member(
        Impl::NatsServer,
        "GO",
        pg,
        &format!("routes: [\"nats-route://127.0.0.1:{pc}\"]"),
    );
    assert_eventually!(
        SETTLE,
        routes_to(&canopy, "GO").len() == 1,
        "routes to the 2.9 peer: {:#?}",
        routez(&canopy)
    );
    let r = &routes_to(&canopy, "GO")[0];
    assert_eq!(r["compression"], "not supported");
    assert!(r.get("account").is_none(), "{r:#?}");
    // Core traffic both ways, in a pinned account and in another.
    for acc in ["a", "b"] {
        let (cc, gc) = (client(&canopy, acc).await, client(&go, acc).await);
        let mut at_go = gc.subscribe(format!("{acc}.down")).await.unwrap();
        gc.flush().await.unwrap();
        let mut at_canopy = cc.subscribe(format!("{acc}.up")).await.unwrap();
        cc.flush().await.unwrap();
        probe(&cc, &format!("{acc}.down"), &mut at_go).await;
        probe(&gc, &format!("{acc}.up"), &mut at_canopy).await;
        in_order(&cc, &mut at_go, &format!("{acc}.down"), acc, 100).await;
        in_order(&gc, &mut at_canopy, &format!("{acc}.up"), acc, 100).await;
    }
    assert_eq!(routes_to(&canopy, "GO").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_pool_sizes_are_refused_as_nats_server_2_10_does() {
    let (p1, p2) = (free_fixed_port(), free_fixed_port());
    let s1 = member(Impl::Canopy, "S1", p1, "pool_size: 3");
    let s2 = member(
        Impl::Canopy,
        "S2",
        p2,
        &format!("pool_size: 2\n routes: [\"nats-route://127.0.0.1:{p1}\"]"),
    );
    assert_eventually!(
        SETTLE,
        // S2 dialled: it refuses S1's INFO and tells S1 why.
        s2.log().contains("Mismatch route pool size: 2 vs 3")
            && s1.log().contains("Mismatch route pool size: 2 vs 3"),
        "no refusal logged:\n{}\n{}",
        s1.log(),
        s2.log()
    );
    assert!(routez(&s1).is_empty() && routez(&s2).is_empty());
}
