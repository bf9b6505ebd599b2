//! Subject mappings, black box: account and top-level `mappings {}` applied to client
//! publishes (before permissions and interest), weighted destinations, mapping sources as
//! interest over leaf links (with Debian's nats-server on the other side where installed),
//! and the per-remote `account_mappings` extension.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use canopy_testkit::{free_fixed_port, nats_server_bin, Impl, ServerProcess};
use futures::StreamExt;

/// Upper bound for a link to form and interest to propagate.
const SETTLE: Duration = Duration::from_secs(10);
/// How long one probe waits for its echo before the next probe is sent.
const PROBE: Duration = Duration::from_millis(150);
/// How long "nothing arrives" is watched.
const QUIET: Duration = Duration::from_millis(300);

async fn client(s: &ServerProcess) -> Client {
    connect(s, None).await
}

async fn connect(s: &ServerProcess, user: Option<(&str, &str)>) -> Client {
    let mut o = async_nats::ConnectOptions::new();
    if let Some((u, p)) = user {
        o = o.user_and_password(u.into(), p.into());
    }
    o.connect(s.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", s.url()))
}

async fn sub(c: &Client, subject: &str) -> Subscriber {
    let s = c.subscribe(subject.to_string()).await.unwrap();
    c.flush().await.unwrap();
    s
}

async fn next(s: &mut Subscriber, within: Duration) -> Option<async_nats::Message> {
    tokio::time::timeout(within, s.next()).await.ok().flatten()
}

/// Publishes `subject` until `s` receives a message (bounded by [`SETTLE`]): proves that
/// interest reached the publisher's server. Returns the first message received.
async fn probe(p: &Client, subject: &str, s: &mut Subscriber) -> async_nats::Message {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        p.publish(subject.to_string(), Bytes::from_static(b"probe"))
            .await
            .unwrap();
        p.flush().await.unwrap();
        if let Some(m) = next(s, PROBE).await {
            // Later probes may still be in flight: drain them.
            while next(s, QUIET).await.is_some() {}
            return m;
        }
    }
    panic!("nothing arrived for {subject} within {SETTLE:?}");
}

async fn quiet(s: &mut Subscriber) -> bool {
    next(s, QUIET).await.is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_level_and_account_mappings_apply_to_client_publishes() {
    let global = ServerProcess::canopy(
        r#"
listen: 127.0.0.1:-1
mappings {
  "orders.*": "orders.{{wildcard(1)}}.eu"
  "w": [ { destination: "w.one", weight: 50% }, { destination: "w.two", weight: 50% } ]
}
"#,
    )
    .unwrap();
    let c = client(&global).await;
    let mut mapped = sub(&c, "orders.*.eu").await;
    let mut original = sub(&c, "orders.*").await;
    c.publish("orders.7", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let m = next(&mut mapped, SETTLE).await.expect("mapped message");
    assert_eq!(m.subject.as_str(), "orders.7.eu");
    assert!(quiet(&mut original).await, "the source subject got it too");

    // Weighted destinations: both are chosen, every message goes to exactly one.
    let mut one = sub(&c, "w.one").await;
    let mut two = sub(&c, "w.two").await;
    for _ in 0..200 {
        c.publish("w", Bytes::from_static(b"w")).await.unwrap();
    }
    c.flush().await.unwrap();
    let (mut n1, mut n2) = (0, 0);
    while n1 + n2 < 200 {
        tokio::select! {
            Some(_) = one.next() => n1 += 1,
            Some(_) = two.next() => n2 += 1,
            _ = tokio::time::sleep(SETTLE) => break,
        }
    }
    assert_eq!(n1 + n2, 200, "w.one {n1}, w.two {n2}");
    assert!(
        n1 > 20 && n2 > 20,
        "weights ignored: w.one {n1}, w.two {n2}"
    );

    // Per-account mappings; permissions are checked on the mapped subject.
    let accs = ServerProcess::canopy(
        r#"
listen: 127.0.0.1:-1
accounts {
  A: {
    users: [
      { user: a, password: a }
      { user: b, password: b, permissions: { publish: { deny: ["orders.*.eu"] } } }
      { user: c, password: c, permissions: { publish: { allow: ["orders.*.eu", "_INBOX.>"] } } }
    ]
    mappings { "orders.*": "orders.{{wildcard(1)}}.eu" }
  }
  B: { users: [ { user: x, password: x } ] }
}
"#,
    )
    .unwrap();
    let a = connect(&accs, Some(("a", "a"))).await;
    let b = connect(&accs, Some(("b", "b"))).await;
    let cc = connect(&accs, Some(("c", "c"))).await;
    let x = connect(&accs, Some(("x", "x"))).await;
    let mut mapped = sub(&a, "orders.>").await;
    let mut in_b = sub(&x, "orders.>").await;
    // Allowed only as the mapped name: delivered mapped.
    cc.publish("orders.1", Bytes::from_static(b"c"))
        .await
        .unwrap();
    cc.flush().await.unwrap();
    let m = next(&mut mapped, SETTLE).await.expect("mapped message");
    assert_eq!(m.subject.as_str(), "orders.1.eu");
    // Denied as the mapped name: dropped.
    b.publish("orders.2", Bytes::from_static(b"b"))
        .await
        .unwrap();
    b.flush().await.unwrap();
    a.publish("orders.3", Bytes::from_static(b"a"))
        .await
        .unwrap();
    a.flush().await.unwrap();
    let m = next(&mut mapped, SETTLE).await.expect("mapped message");
    assert_eq!(
        m.subject.as_str(),
        "orders.3.eu",
        "user b's publish got through"
    );
    // Account B has no mappings.
    x.publish("orders.4", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let m = next(&mut in_b, SETTLE).await.expect("unmapped message");
    assert_eq!(m.subject.as_str(), "orders.4");
}

/// A hub with a mapping and a leaf without: the hub advertises the mapping's source to the
/// leaf, so a leaf client's publish on it reaches the hub and is mapped there.
async fn mapping_across_leaf(hub_kind: Impl, leaf_kind: Impl, mapping_on_hub: bool) {
    let lp = free_fixed_port();
    let mapping = r#"mappings { "orders.*": "orders.{{wildcard(1)}}.eu" }"#;
    let (hub_map, leaf_map) = if mapping_on_hub {
        (mapping, "")
    } else {
        ("", mapping)
    };
    let hub = ServerProcess::start(
        hub_kind,
        &format!("listen: 127.0.0.1:-1\n{hub_map}\nleafnodes {{ listen: \"127.0.0.1:{lp}\" }}\n"),
        &[],
    )
    .unwrap();
    let leaf = ServerProcess::start(
        leaf_kind,
        &format!(
            "listen: 127.0.0.1:-1\n{leaf_map}\nleafnodes {{ reconnect_interval: 1\n remotes: [ {{ urls: [\"nats-leaf://127.0.0.1:{lp}\"] }} ] }}\n"
        ),
        &[],
    )
    .unwrap();
    // The mapping's server holds the subscriber; the other side publishes the source.
    let (subs_on, pubs_on) = if mapping_on_hub {
        (&hub, &leaf)
    } else {
        (&leaf, &hub)
    };
    let s = client(subs_on).await;
    let p = client(pubs_on).await;
    let mut mapped = sub(&s, "orders.*.eu").await;
    let m = probe(&p, "orders.9", &mut mapped).await;
    assert_eq!(m.subject.as_str(), "orders.9.eu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_source_is_interest_over_leaf_links() {
    mapping_across_leaf(Impl::Canopy, Impl::Canopy, true).await;
    mapping_across_leaf(Impl::Canopy, Impl::Canopy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_source_is_interest_over_leaf_links_with_nats_server() {
    if nats_server_bin().is_none() {
        eprintln!("skipped: /usr/sbin/nats-server not installed");
        return;
    }
    // Canopy hub maps what a Go leaf publishes; a Canopy leaf maps what a Go hub publishes.
    mapping_across_leaf(Impl::Canopy, Impl::NatsServer, true).await;
    mapping_across_leaf(Impl::NatsServer, Impl::Canopy, false).await;
}

#[test]
fn invalid_mapping_is_refused_with_its_position() {
    let err = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nmappings {\n  \"a.*\": \"b.{{wildcard(2)}}\"\n}\n",
    )
    .err()
    .expect("a mapping to a missing wildcard must be refused");
    let text = format!("{err:#}");
    assert!(text.contains(":3:"), "no line in {text}");
    assert!(
        text.contains("invalid mapping \"a.*\"") && text.contains("wildcard index out of range"),
        "mapping or reason not named in {text}"
    );
}
