//! Subject mappings, black box: account and top-level `mappings {}` applied to client
//! publishes (before permissions and interest), weighted destinations, mapping sources as
//! interest over leaf links (with Debian's nats-server on the other side where installed),
//! and the per-remote `account_mappings` extension.

#![allow(clippy::unwrap_used)]

mod client_sync;

use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use canopy_testkit::{hub_and_leaf, nats_server_bin, Impl, ServerProcess};
use client_sync::sync;
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
    sync(c).await;
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
http: 127.0.0.1:-1
accounts {
  A: {
    users: [
      { user: a, password: a }
      { user: b, password: b, permissions: { publish: { deny: ["orders.*.eu"] } } }
      { user: c, password: c, permissions: { publish: { allow: ["orders.*.eu", "_INBOX.>"] } } }
    ]
    mappings {
      "orders.*": "orders.{{wildcard(1)}}.eu"
      "w": [ { destination: "w1", weight: 40% }, { destination: "w2", weight: 60%, cluster: "C1" } ]
    }
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
    // `/accountz` shows them as nats-server 2.9.10 does (cumulative weights, remainders).
    let acz = accs.monitor("/accountz?acc=A").unwrap();
    assert_eq!(
        acz["account_detail"]["mappings"],
        serde_json::json!({
            "orders.*": [{"subject": "orders.{{wildcard(1)}}.eu", "weight": 100}],
            "w": [{"subject": "w1", "weight": 40}, {"subject": "w", "weight": 100},
                  {"subject": "w", "weight": 40, "cluster": "C1"},
                  {"subject": "w2", "weight": 100, "cluster": "C1"}]
        })
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
    let mapping = r#"mappings { "orders.*": "orders.{{wildcard(1)}}.eu" }"#;
    let (hub_map, leaf_map) = if mapping_on_hub {
        (mapping, "")
    } else {
        ("", mapping)
    };
    let (hub, leaf) = hub_and_leaf((hub_kind, hub_map, ""), (leaf_kind, leaf_map, "")).unwrap();
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

// ---------------------------------------------------------------------------------------
// Per-remote `account_mappings` (Canopy extension; all on the Canopy leaf side)
// ---------------------------------------------------------------------------------------

/// Sends a request until it is answered (bounded by [`SETTLE`]: interest may still be on
/// its way) and returns the answer.
async fn request(c: &Client, subject: &str, body: &'static str) -> String {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let fut = c.request(subject.to_string(), Bytes::from_static(body.as_bytes()));
        match tokio::time::timeout(PROBE * 4, fut).await {
            Ok(Ok(m)) => return String::from_utf8_lossy(&m.payload).into_owned(),
            _ if tokio::time::Instant::now() < deadline => continue,
            other => panic!("request {subject}: {other:?}"),
        }
    }
}

/// Answers requests on `subject` with `<tag>:<subject>:<payload>` until the test ends.
async fn responder(c: &Client, subject: &str, tag: &'static str) {
    let mut s = sub(c, subject).await;
    let c = c.clone();
    tokio::spawn(async move {
        while let Some(m) = s.next().await {
            if let Some(reply) = m.reply {
                let body = format!(
                    "{tag}:{}:{}",
                    m.subject,
                    String::from_utf8_lossy(&m.payload)
                );
                let _ = c.publish(reply, Bytes::from(body)).await;
            }
        }
    });
}

/// The next message's subject on `s`, or panics.
async fn next_subject(s: &mut Subscriber, what: &str) -> String {
    match next(s, SETTLE).await {
        Some(m) => m.subject.to_string(),
        None => panic!("{what}: nothing arrived"),
    }
}

async fn remap_across_leaf(hub_kind: Impl) {
    // Deny rules are written in the hub's names (the names on the wire).
    let remote = r#"account_mappings: { events: { to: "site-a.events" }, metrics: { to: "site-a.metrics" } }
    deny_exports: ["site-a.metrics.secret"]
    deny_imports: ["site-a.events.private"]"#;
    let (hub, leaf) = hub_and_leaf((hub_kind, "", ""), (Impl::Canopy, "", remote)).unwrap();
    let h = client(&hub).await;
    let l = client(&leaf).await;

    // Up: the leaf's events.x arrives at the hub as site-a.events.x.
    let mut hub_mapped = sub(&h, "site-a.events.>").await;
    let mut hub_plain = sub(&h, "events.>").await;
    let m = probe(&l, "events.x", &mut hub_mapped).await;
    assert_eq!(m.subject.as_str(), "site-a.events.x");
    assert!(
        quiet(&mut hub_plain).await,
        "the unmapped name reached the hub"
    );
    // A leaf subject that poses as a remapped one is not carried.
    l.publish("site-a.events.fake", Bytes::new()).await.unwrap();
    l.publish("events.real", Bytes::new()).await.unwrap();
    assert_eq!(
        next_subject(&mut hub_mapped, "up").await,
        "site-a.events.real"
    );
    // Subjects outside the mapping pass unchanged.
    let mut hub_other = sub(&h, "other.>").await;
    let m = probe(&l, "other.a", &mut hub_other).await;
    assert_eq!(m.subject.as_str(), "other.a");
    // deny_exports in hub names: metrics.secret is not sent, metrics.cpu is.
    let mut hub_metrics = sub(&h, "site-a.metrics.>").await;
    let m = probe(&l, "metrics.cpu", &mut hub_metrics).await;
    assert_eq!(m.subject.as_str(), "site-a.metrics.cpu");
    l.publish("metrics.secret", Bytes::new()).await.unwrap();
    l.publish("metrics.mem", Bytes::new()).await.unwrap();
    assert_eq!(
        next_subject(&mut hub_metrics, "deny_exports").await,
        "site-a.metrics.mem"
    );

    // Down: the hub's site-a.events.y arrives at the leaf as events.y; the hub's own
    // events.z (outside the remap, but a local name the remap owns) never does, even for
    // a leaf subscriber on `>` (whose interest reaches the hub as `>` and site-a.events.>).
    let mut leaf_events = sub(&l, "events.>").await;
    let mut leaf_all = sub(&l, ">").await;
    let m = probe(&h, "site-a.events.y", &mut leaf_events).await;
    assert_eq!(m.subject.as_str(), "events.y");
    while next(&mut leaf_all, QUIET).await.is_some() {}
    h.publish("events.z", Bytes::new()).await.unwrap();
    h.publish("site-a.events.private", Bytes::new())
        .await
        .unwrap();
    h.publish("site-a.events.w", Bytes::new()).await.unwrap();
    h.publish("other.b", Bytes::new()).await.unwrap();
    h.flush().await.unwrap();
    assert_eq!(next_subject(&mut leaf_events, "down").await, "events.w");
    assert!(
        quiet(&mut leaf_events).await,
        "events.z or a denied one leaked"
    );
    let mut seen = Vec::new();
    while let Some(m) = next(&mut leaf_all, QUIET).await {
        seen.push(m.subject.to_string());
    }
    assert_eq!(seen, ["events.w", "other.b"], "the leaf's `>` subscriber");

    // Queue interest crosses the remap too (with its group), both ways.
    let mut hub_q = h
        .queue_subscribe("site-a.events.qq", "g".to_string())
        .await
        .unwrap();
    h.flush().await.unwrap();
    let m = probe(&l, "events.qq", &mut hub_q).await;
    assert_eq!(m.subject.as_str(), "site-a.events.qq");
    let mut leaf_q = l
        .queue_subscribe("events.lq", "g".to_string())
        .await
        .unwrap();
    l.flush().await.unwrap();
    let m = probe(&h, "site-a.events.lq", &mut leaf_q).await;
    assert_eq!(m.subject.as_str(), "events.lq");

    // Request/reply through the remap, both ways.
    responder(&h, "site-a.events.svc", "hub").await;
    responder(&l, "events.echo", "leaf").await;
    assert_eq!(
        request(&l, "events.svc", "q1").await,
        "hub:site-a.events.svc:q1"
    );
    assert_eq!(
        request(&h, "site-a.events.echo", "q2").await,
        "leaf:events.echo:q2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_mappings_remap_a_remote_with_a_canopy_hub() {
    remap_across_leaf(Impl::Canopy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_mappings_remap_a_remote_with_a_nats_server_hub() {
    if nats_server_bin().is_none() {
        eprintln!("skipped: /usr/sbin/nats-server not installed");
        return;
    }
    remap_across_leaf(Impl::NatsServer).await;
}

#[test]
fn check_reports_overlapping_account_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("leaf.conf");
    std::fs::write(
        &conf,
        "leafnodes {\n  remotes: [ {\n    url: \"nats-leaf://127.0.0.1:7422\"\n    account_mappings: {\n      events: { to: \"site-a.events\" }\n      \"events.eu\": { to: \"site-a.eu\" }\n      metrics: { to: \"site-a.events.m\" }\n    }\n  } ]\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(canopy_testkit::canopy_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "-t accepted it: {text}");
    assert!(
        text.contains("leaf.conf:6:") && text.contains("overlaps \"events\""),
        "{text}"
    );
    assert!(
        text.contains("leaf.conf:7:")
            && text.contains("conflicts with \"events\" -> \"site-a.events\""),
        "{text}"
    );
}
