//! Mirrors and sources (issue 14): local sources and a mirror through a restart, a hub
//! stream sourcing an edge's streams through `$JS.edge.API` across a leaf link while the hub
//! is down or the link flaps — a limits origin and a work-queue origin, with Canopy and
//! nats-server 2.9.10 on either side — each message exactly once, in order; a recreated
//! origin; a work-queue origin with a gap.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use canopy_testkit::{Impl, ServerProcess};
use serde_json::{json, Value};

/// One `$JS…API` request, answered with its JSON.
async fn api(nc: &async_nats::Client, subject: String, body: Value) -> Value {
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        nc.request(subject.clone(), body.to_string().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: timed out"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&m.payload).unwrap()
}

async fn create(nc: &async_nats::Client, prefix: &str, cfg: Value) {
    let name = cfg["name"].as_str().unwrap().to_string();
    let v = api(nc, format!("{prefix}.STREAM.CREATE.{name}"), cfg).await;
    assert!(v.get("error").is_none(), "create {name}: {v}");
}

/// Publishes with an acknowledgement (retried while the stream is not there yet).
async fn publish(nc: &async_nats::Client, subject: String, payload: String) {
    publish_with(nc, subject, payload, async_nats::HeaderMap::new()).await
}

async fn publish_with(
    nc: &async_nats::Client,
    subject: String,
    payload: String,
    headers: async_nats::HeaderMap,
) {
    for _ in 0..50 {
        if let Ok(Ok(m)) = tokio::time::timeout(
            Duration::from_secs(2),
            nc.request_with_headers(subject.clone(), headers.clone(), payload.clone().into()),
        )
        .await
        {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            if v.get("seq").is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publish to {subject} not acknowledged");
}

/// Every message of a stream: (subject, payload, the `Nats-Stream-Source` origin name).
async fn contents(nc: &async_nats::Client, prefix: &str, stream: &str) -> Vec<(String, String)> {
    let info = api(nc, format!("{prefix}.STREAM.INFO.{stream}"), json!({})).await;
    let (first, last) = (
        info["state"]["first_seq"].as_u64().unwrap_or(0),
        info["state"]["last_seq"].as_u64().unwrap_or(0),
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        let v = api(
            nc,
            format!("{prefix}.STREAM.MSG.GET.{stream}"),
            json!({ "seq": seq }),
        )
        .await;
        let Some(m) = v.get("message") else { continue };
        let data = m["data"]
            .as_str()
            .map(|d| String::from_utf8(b64.decode(d).unwrap()).unwrap())
            .unwrap_or_default();
        out.push((m["subject"].as_str().unwrap().to_string(), data));
    }
    out
}

async fn count(nc: &async_nats::Client, prefix: &str, stream: &str) -> u64 {
    let m = tokio::time::timeout(
        Duration::from_secs(2),
        nc.request(format!("{prefix}.STREAM.INFO.{stream}"), "{}".into()),
    )
    .await;
    let Ok(Ok(m)) = m else { return 0 };
    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
    v["state"]["messages"].as_u64().unwrap_or(0)
}

/// Waits (bounded) until `stream` holds `want` messages.
async fn wait_count(
    nc: &async_nats::Client,
    prefix: &str,
    stream: &str,
    want: u64,
    logs: &[&ServerProcess],
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let n = count(nc, prefix, stream).await;
        if n == want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let info = api(nc, format!("{prefix}.STREAM.INFO.{stream}"), json!({})).await;
            let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
            panic!(
                "{stream}: {n} messages, want {want}\n{info}\n{}",
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The payloads per subject prefix (first token), checking each is `0..n` in order.
fn check_each_once_in_order(msgs: &[(String, String)], want: &[(&str, usize)]) {
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (subject, data) in msgs {
        let head = subject.split('.').next().unwrap().to_string();
        by.entry(head).or_default().push(data.parse().unwrap());
    }
    for (head, n) in want {
        let got = by.remove(*head).unwrap_or_default();
        let expect: Vec<usize> = (0..*n).collect();
        assert_eq!(got, expect, "messages of {head}");
    }
    assert!(by.is_empty(), "unexpected subjects: {by:?}");
}

fn js_config(store: &Path, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\" }}\n{extra}",
        store.display()
    )
}

/// One JetStream server (its store, the process, a client).
async fn local_js() -> (tempfile::TempDir, ServerProcess, async_nats::Client) {
    let store = tempfile::tempdir().unwrap();
    let s = ServerProcess::canopy(&js_config(store.path(), "")).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    (store, s, nc)
}

/// A stream sourcing two local streams, and a mirror of one: each message once, in order,
/// before and after a kill and restart with publishing on both sides of it.
#[tokio::test]
async fn local_sources_and_mirror_survive_a_restart() {
    let store = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::canopy(&js_config(store.path(), "")).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let p = "$JS.API";
    create(&nc, p, json!({"name": "A", "subjects": ["a.>"]})).await;
    create(&nc, p, json!({"name": "B", "subjects": ["b.>"]})).await;
    create(
        &nc,
        p,
        json!({"name": "S", "sources": [{"name": "A"}, {"name": "B"}]}),
    )
    .await;
    create(&nc, p, json!({"name": "M", "mirror": {"name": "A"}})).await;
    // P's messages are purged: its positions must survive without them.
    create(&nc, p, json!({"name": "P", "sources": [{"name": "A"}]})).await;
    for i in 0..50 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
        publish(&nc, format!("b.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "S", 100, &[&s]).await;
    wait_count(&nc, p, "M", 50, &[&s]).await;
    check_each_once_in_order(&contents(&nc, p, "S").await, &[("a", 50), ("b", 50)]);
    let info = api(&nc, format!("{p}.STREAM.INFO.S"), json!({})).await;
    let sources = info["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2, "{info}");
    assert!(
        sources
            .iter()
            .all(|s| s["lag"] == 0 && s.get("error").is_none()),
        "{info}"
    );
    let minfo = api(&nc, format!("{p}.STREAM.INFO.M"), json!({})).await;
    assert_eq!(minfo["mirror"]["name"], "A", "{minfo}");
    wait_count(&nc, p, "P", 50, &[&s]).await;
    let v = api(&nc, format!("{p}.STREAM.PURGE.P"), json!({})).await;
    assert_eq!(v["purged"], 50, "{v}");

    drop(nc);
    s.kill();
    let s = ServerProcess::canopy(&js_config(store.path(), "")).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    // The origin's `Nats-Expected-Stream` is not applied again by the mirror and the
    // sources (nats-server #5240).
    let mut expect_a = async_nats::HeaderMap::new();
    expect_a.insert("Nats-Expected-Stream", "A");
    for i in 50..100 {
        publish_with(&nc, format!("a.{i}"), i.to_string(), expect_a.clone()).await;
        publish(&nc, format!("b.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "S", 200, &[&s]).await;
    wait_count(&nc, p, "M", 100, &[&s]).await;
    check_each_once_in_order(&contents(&nc, p, "S").await, &[("a", 100), ("b", 100)]);
    let mirror = contents(&nc, p, "M").await;
    check_each_once_in_order(&mirror, &[("a", 100)]);
    // The mirror keeps the origin's sequences.
    let minfo = api(&nc, format!("{p}.STREAM.INFO.M"), json!({})).await;
    assert_eq!(minfo["state"]["last_seq"], 100, "{minfo}");
    // P sourced only what came after its purge (its position is in sources.json).
    wait_count(&nc, p, "P", 50, &[&s]).await;
    let pinfo = api(&nc, format!("{p}.STREAM.INFO.P"), json!({})).await;
    assert_eq!(pinfo["state"]["last_seq"], 100, "{pinfo}");
    let first = &contents(&nc, p, "P").await[0];
    assert_eq!(first.1, "50", "{first:?}");
}

/// A hub (domain `hub`, a leaf listener on a fixed port so a restarted hub is found again)
/// and an edge (domain `edge`) that connects to it; the stores outlive restarts.
struct Topology {
    hub: String,
    edge: String,
    _stores: (tempfile::TempDir, tempfile::TempDir),
}

impl Topology {
    fn new() -> Topology {
        let lp = canopy_testkit::free_fixed_port();
        Topology::via(lp, lp)
    }

    /// The hub listens for leaves on `lp`; the edge dials `dial` (a proxy, say).
    fn via(lp: u16, dial: u16) -> Topology {
        let stores = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let js = |dir: &Path, domain: &str| {
            format!(
                "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n\
                 jetstream {{ store_dir: \"{}\", domain: {domain} }}\n",
                dir.display()
            )
        };
        Topology {
            hub: js(stores.0.path(), "hub") + &format!("leafnodes {{ listen: 127.0.0.1:{lp} }}\n"),
            edge: js(stores.1.path(), "edge")
                + &format!(
                    "leafnodes {{ remotes: [{{ url: \"nats-leaf://127.0.0.1:{dial}\" }}], reconnect: 1 }}\n"
                ),
            _stores: stores,
        }
    }
}

/// The edge's origins: ORDERS (limits) on `orders.>`, JOBS on `jobs.>` with `retention`.
async fn edge_origins(enc: &async_nats::Client, retention: &str) {
    create(
        enc,
        "$JS.API",
        json!({"name": "ORDERS", "subjects": ["orders.>"]}),
    )
    .await;
    let jobs = json!({"name": "JOBS", "subjects": ["jobs.>"], "retention": retention});
    create(enc, "$JS.API", jobs).await;
}

/// Edge → hub across a leaf link: the hub's stream sources a limits stream and a
/// work-queue stream of the edge through `domain: edge`. The hub is killed while the edge
/// keeps publishing; once it is back it holds every message exactly once and in order, and
/// the work queue on the edge is emptied only by what the hub stored.
async fn edge_to_hub(hub_kind: Impl, edge_kind: Impl, work_queue: bool) {
    let t = Topology::new();
    let mut hub = ServerProcess::start(hub_kind, &t.hub, &[]).unwrap();
    let edge = ServerProcess::start(edge_kind, &t.edge, &[]).unwrap();
    let enc = async_nats::connect(edge.url()).await.unwrap();
    edge_origins(&enc, if work_queue { "workqueue" } else { "limits" }).await;
    let sources = if hub_kind == Impl::Canopy {
        // The Canopy sugar.
        json!([{"name": "ORDERS", "domain": "edge"}, {"name": "JOBS", "domain": "edge"}])
    } else {
        json!([{"name": "ORDERS", "external": {"api": "$JS.edge.API"}},
               {"name": "JOBS", "external": {"api": "$JS.edge.API"}}])
    };
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    create(&hnc, "$JS.API", json!({"name": "AGG", "sources": sources})).await;
    for i in 0..100 {
        publish(&enc, format!("orders.{i}"), i.to_string()).await;
        publish(&enc, format!("jobs.{i}"), i.to_string()).await;
    }
    wait_count(&hnc, "$JS.API", "AGG", 200, &[&hub, &edge]).await;

    // The hub goes away; the edge keeps publishing into its own streams.
    drop(hnc);
    hub.kill();
    for i in 100..250 {
        publish(&enc, format!("orders.{i}"), i.to_string()).await;
        publish(&enc, format!("jobs.{i}"), i.to_string()).await;
    }
    let mut hub = ServerProcess::start(hub_kind, &t.hub, &[]).unwrap();
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    wait_count(&hnc, "$JS.API", "AGG", 500, &[&hub, &edge]).await;
    check_each_once_in_order(
        &contents(&hnc, "$JS.API", "AGG").await,
        &[("orders", 250), ("jobs", 250)],
    );
    if work_queue {
        // The work queue is drained by the hub's acknowledgements only.
        wait_count(&enc, "$JS.API", "JOBS", 0, &[&hub, &edge]).await;
    }
    // Nothing more arrived meanwhile (no duplicates from a late redelivery).
    assert_eq!(count(&hnc, "$JS.API", "AGG").await, 500);
    hub.kill();
}

#[tokio::test]
async fn hub_sources_edge_streams_through_an_outage() {
    edge_to_hub(Impl::Canopy, Impl::Canopy, true).await;
}

/// A Canopy hub sourcing the streams of a nats-server 2.9.10 edge: its durable,
/// explicit-ack sourcing consumer keeps even 2.9's work queue whole through the outage.
#[tokio::test]
async fn hub_sources_go_edge_streams_through_an_outage() {
    if canopy_testkit::nats_server_bin().is_none() {
        eprintln!("nats-server not installed; skipping");
        return;
    }
    edge_to_hub(Impl::Canopy, Impl::NatsServer, true).await;
}

/// Debian's nats-server 2.9.10 as the hub, sourcing two Canopy limits streams through
/// `$JS.edge.API` (its ack-none sourcing consumer would lose work-queue messages in flight,
/// nats-server #3207, so only limits origins here).
#[tokio::test]
async fn go_hub_sources_canopy_edge_streams_through_an_outage() {
    if canopy_testkit::nats_server_bin().is_none() {
        eprintln!("nats-server not installed; skipping");
        return;
    }
    edge_to_hub(Impl::NatsServer, Impl::Canopy, false).await;
}

/// An origin deleted and created again is sourced from its sequence 1 (nats-server #6206):
/// the silent consumer is noticed as a stall, and the new identity resets the position.
#[tokio::test]
async fn recreated_origin_is_sourced_from_its_start() {
    let (_store, s, nc) = local_js().await;
    let p = "$JS.API";
    create(&nc, p, json!({"name": "A", "subjects": ["a.>"]})).await;
    create(&nc, p, json!({"name": "S", "sources": [{"name": "A"}]})).await;
    create(&nc, p, json!({"name": "M", "mirror": {"name": "A"}})).await;
    for i in 0..5 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "S", 5, &[&s]).await;
    wait_count(&nc, p, "M", 5, &[&s]).await;
    let v = api(&nc, format!("{p}.STREAM.DELETE.A"), json!({})).await;
    assert_eq!(v["success"], true, "{v}");
    create(&nc, p, json!({"name": "A", "subjects": ["a.>"]})).await;
    for i in 5..8 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "S", 8, &[&s]).await;
    check_each_once_in_order(&contents(&nc, p, "S").await, &[("a", 8)]);
    // A mirror cannot go back to sequence 1: it says why it stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = api(&nc, format!("{p}.STREAM.INFO.M"), json!({})).await;
        let err = v["mirror"]["error"]["description"].as_str().unwrap_or("");
        if err.contains("recreated") {
            assert_eq!(v["state"]["messages"], 5, "{v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A mirror on the edge of a hub stream, through `domain: hub`: the hub is killed and
/// restarted (its consumer is gone; the mirror notices the silence and recreates it), and
/// the mirror ends identical to the origin.
#[tokio::test]
async fn edge_mirror_of_a_hub_stream_follows_a_hub_restart() {
    let t = Topology::new();
    let mut hub = ServerProcess::canopy(&t.hub).unwrap();
    let edge = ServerProcess::canopy(&t.edge).unwrap();
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    let enc = async_nats::connect(edge.url()).await.unwrap();
    create(
        &hnc,
        "$JS.API",
        json!({"name": "EVENTS", "subjects": ["ev.>"]}),
    )
    .await;
    create(
        &enc,
        "$JS.API",
        json!({"name": "EVENTS_M", "mirror": {"name": "EVENTS", "domain": "hub"}}),
    )
    .await;
    for i in 0..50 {
        publish(&hnc, format!("ev.{i}"), i.to_string()).await;
    }
    wait_count(&enc, "$JS.API", "EVENTS_M", 50, &[&hub, &edge]).await;
    drop(hnc);
    hub.kill();
    let hub = ServerProcess::canopy(&t.hub).unwrap();
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    for i in 50..100 {
        publish(&hnc, format!("ev.{i}"), i.to_string()).await;
    }
    wait_count(&enc, "$JS.API", "EVENTS_M", 100, &[&hub, &edge]).await;
    check_each_once_in_order(&contents(&enc, "$JS.API", "EVENTS_M").await, &[("ev", 100)]);
    // `mirror_direct`: a Direct Get for the origin on the edge, where the origin is not,
    // is answered by the mirror (503 before it has mirror_direct).
    let get = |nc: async_nats::Client| async move {
        // A 503 status reaches async-nats as "no responders".
        match nc
            .request(
                "$JS.API.DIRECT.GET.EVENTS",
                json!({"seq": 7}).to_string().into(),
            )
            .await
        {
            Ok(m) => (m.status.map(|s| s.as_u16()), m.payload),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                (Some(503), Default::default())
            }
            Err(e) => panic!("direct get: {e}"),
        }
    };
    assert_eq!(get(enc.clone()).await.0, Some(503));
    api(
        &enc,
        "$JS.API.STREAM.UPDATE.EVENTS_M".into(),
        json!({"name": "EVENTS_M", "mirror": {"name": "EVENTS", "domain": "hub"},
               "allow_direct": true, "mirror_direct": true}),
    )
    .await;
    let (status, payload) = get(enc.clone()).await;
    assert_eq!((status, &payload[..]), (None, &b"6"[..]));
}

/// A work-queue origin with a real gap (a deleted message): the durable sourcing consumer
/// holds what comes past the hole until its redelivery shows the gap is real, then takes
/// it — in order, nothing twice, and the origin is emptied by the acknowledgements.
#[tokio::test]
async fn work_queue_origin_with_a_gap() {
    let (_store, s, nc) = local_js().await;
    let p = "$JS.API";
    create(
        &nc,
        p,
        json!({"name": "W", "subjects": ["w.>"], "retention": "workqueue"}),
    )
    .await;
    for i in 0..6 {
        publish(&nc, format!("w.{i}"), i.to_string()).await;
    }
    let v = api(&nc, format!("{p}.STREAM.MSG.DELETE.W"), json!({"seq": 3})).await;
    assert_eq!(v["success"], true, "{v}");
    create(&nc, p, json!({"name": "S", "sources": [{"name": "W"}]})).await;
    wait_count(&nc, p, "S", 5, &[&s]).await;
    let got: Vec<String> = contents(&nc, p, "S")
        .await
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(got, ["0", "1", "3", "4", "5"]);
    wait_count(&nc, p, "W", 0, &[&s]).await;
}

/// A TCP proxy for the leaf link that can be cut (every connection dropped, new ones
/// refused) and healed.
struct LinkProxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl LinkProxy {
    async fn start(target: u16) -> LinkProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cuts, watch) = tokio::sync::watch::channel(0u64);
        let up2 = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let mut cut = watch.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        LinkProxy { port, up, cuts }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|g| *g += 1);
    }

    fn heal(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The leaf link flaps while the edge publishes without pause: three short cuts (the
/// sourcing consumers survive them) and one longer than the 10 s stall threshold (the
/// hub recreates them, and resumes as soon as the link is back rather than after a long
/// backoff). Afterwards the hub holds every message of both origins once, in order.
#[tokio::test]
async fn hub_sources_through_link_flaps_under_continuous_publishing() {
    let lp = canopy_testkit::free_fixed_port();
    let proxy = LinkProxy::start(lp).await;
    let t = Topology::via(lp, proxy.port);
    let hub = ServerProcess::canopy(&t.hub).unwrap();
    let edge = ServerProcess::canopy(&t.edge).unwrap();
    let enc = async_nats::connect(edge.url()).await.unwrap();
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    edge_origins(&enc, "workqueue").await;
    create(
        &hnc,
        "$JS.API",
        json!({"name": "AGG", "sources": [{"name": "ORDERS", "domain": "edge"},
                                          {"name": "JOBS", "domain": "edge"}]}),
    )
    .await;
    // The publisher runs until told to stop and says how many it sent of each.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn(async move {
        let mut n = 0;
        loop {
            publish(&enc, format!("orders.{n}"), n.to_string()).await;
            publish(&enc, format!("jobs.{n}"), n.to_string()).await;
            n += 1;
            if stop_rx.try_recv().is_ok() {
                return (enc, n);
            }
            // Paced, so that the outages below see traffic on both sides of them.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // The outages are the scenario (how long a link stays down), not waits for a state.
    for down in [500, 1500, 3000, 12_000] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(down)).await;
        proxy.heal();
    }
    let healed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop_tx.send(()).unwrap();
    let (enc, n) = publisher.await.unwrap();
    wait_count(&hnc, "$JS.API", "AGG", 2 * n as u64, &[&hub, &edge]).await;
    let took = healed.elapsed();
    check_each_once_in_order(
        &contents(&hnc, "$JS.API", "AGG").await,
        &[("orders", n), ("jobs", n)],
    );
    wait_count(&enc, "$JS.API", "JOBS", 0, &[&hub, &edge]).await;
    // Caught up within a couple of seconds of the link healing (a lost in-flight delivery
    // of the work queue may add one 5 s ack_wait), not after a long backoff.
    assert!(
        took < Duration::from_secs(10),
        "caught up {took:?} after the link healed"
    );
}

/// Sourcing a local stream through the server's own domain (`domain: hub` on the hub,
/// nats-server #6509): the own domain's API is answered here from start-up.
#[tokio::test]
async fn source_through_the_own_domain() {
    let store = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: hub }}\n",
        store.path().display()
    );
    let s = ServerProcess::canopy(&conf).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let p = "$JS.API";
    create(&nc, p, json!({"name": "A", "subjects": ["a.>"]})).await;
    let src = json!([{"name": "A", "domain": "hub"}]);
    create(&nc, p, json!({"name": "S", "sources": src})).await;
    for i in 0..10 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "S", 10, &[&s]).await;
    check_each_once_in_order(&contents(&nc, p, "S").await, &[("a", 10)]);
    let v = api(&nc, format!("{p}.STREAM.INFO.S"), json!({})).await;
    assert_eq!(
        v["config"]["sources"][0]["external"]["api"], "$JS.hub.API",
        "{v}"
    );
}

/// `filter_subject` with `opt_start_seq`, and `subject_transforms` (filters and renames).
#[tokio::test]
async fn source_filters_start_and_transforms() {
    let (_store, s, nc) = local_js().await;
    let p = "$JS.API";
    create(&nc, p, json!({"name": "A", "subjects": ["a.>", "b.>"]})).await;
    for i in 0..5 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
        publish(&nc, format!("b.{i}"), i.to_string()).await;
    }
    // b.i is A's sequence 2i+2: from sequence 5 on, b.2, b.3 and b.4.
    let s1 = json!([{"name": "A", "filter_subject": "b.>", "opt_start_seq": 5}]);
    create(&nc, p, json!({"name": "S1", "sources": s1})).await;
    let tr = json!([{"src": "a.*", "dest": "c.{{wildcard(1)}}"}]);
    let s2 = json!([{"name": "A", "subject_transforms": tr}]);
    create(&nc, p, json!({"name": "S2", "sources": s2})).await;
    wait_count(&nc, p, "S1", 3, &[&s]).await;
    wait_count(&nc, p, "S2", 5, &[&s]).await;
    let got: Vec<String> = contents(&nc, p, "S1")
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(got, ["b.2", "b.3", "b.4"]);
    check_each_once_in_order(&contents(&nc, p, "S2").await, &[("c", 5)]);
}

/// A work-queue stream that sources (the hub's aggregate that workers drain): once its
/// messages are consumed the headers are gone, yet after a kill and restart it sources
/// only what is new.
#[tokio::test]
async fn drained_work_queue_aggregate_survives_a_restart() {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;
    let store = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::canopy(&js_config(store.path(), "")).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let p = "$JS.API";
    create(&nc, p, json!({"name": "A", "subjects": ["a.>"]})).await;
    let agg = json!({"name": "AGG", "sources": [{"name": "A"}], "retention": "workqueue"});
    create(&nc, p, agg).await;
    for i in 0..20 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "AGG", 20, &[&s]).await;
    let c: consumer::PullConsumer = jetstream::new(nc.clone())
        .get_stream("AGG")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("w".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = c.fetch().max_messages(20).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    wait_count(&nc, p, "AGG", 0, &[&s]).await;
    drop(nc);
    s.kill();
    let s = ServerProcess::canopy(&js_config(store.path(), "")).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    for i in 20..25 {
        publish(&nc, format!("a.{i}"), i.to_string()).await;
    }
    wait_count(&nc, p, "AGG", 5, &[&s]).await;
    let got: Vec<String> = contents(&nc, p, "AGG")
        .await
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(got, ["20", "21", "22", "23", "24"]);
}

/// Cross-account sourcing as nats-server documents it: account ORIG exports its JetStream
/// API, the deliver subjects and the flow-control and ack replies; account AGG imports them
/// (the API under `$JS.ORIG.API`) and sources ORIG's streams with `external { api, deliver }`
/// — a limits stream and a work-queue stream (whose durable sourcing consumer acks across
/// the accounts, so ORIG's work queue is drained). Run against Canopy and, for the same
/// config, nats-server 2.9.10.
async fn cross_account(kind: Impl) {
    if kind == Impl::NatsServer && canopy_testkit::nats_server_bin().is_none() {
        eprintln!("nats-server not installed: skipped");
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let accounts = r#"
accounts {
  ORIG {
    jetstream: enabled
    users: [{ user: orig, password: orig }]
    exports: [
      { service: "$JS.API.>" }
      { service: "$JS.FC.>" }
      { service: "$JS.ACK.>" }
      { stream: "deliver.agg.>", accounts: [AGG] }
    ]
  }
  AGG {
    jetstream: enabled
    users: [{ user: agg, password: agg }]
    imports: [
      { service: { account: ORIG, subject: "$JS.API.>" }, to: "$JS.ORIG.API.>" }
      { service: { account: ORIG, subject: "$JS.FC.>" } }
      { service: { account: ORIG, subject: "$JS.ACK.>" } }
      { stream: { account: ORIG, subject: "deliver.agg.>" } }
    ]
  }
}
"#;
    let conf = js_config(store.path(), accounts);
    let s = ServerProcess::start(kind, &conf, &[]).unwrap();
    let orig = async_nats::ConnectOptions::with_user_and_password("orig".into(), "orig".into())
        .connect(s.url())
        .await
        .unwrap();
    let agg = async_nats::ConnectOptions::with_user_and_password("agg".into(), "agg".into())
        .connect(s.url())
        .await
        .unwrap();
    let p = "$JS.API";
    create(&orig, p, json!({"name": "L", "subjects": ["l.>"]})).await;
    create(
        &orig,
        p,
        json!({"name": "W", "subjects": ["w.>"], "retention": "workqueue"}),
    )
    .await;
    for i in 0..20 {
        publish(&orig, format!("l.{i}"), i.to_string()).await;
        publish(&orig, format!("w.{i}"), i.to_string()).await;
    }
    let ext = |deliver: &str| json!({"api": "$JS.ORIG.API", "deliver": deliver});
    let sources = json!([
        {"name": "L", "external": ext("deliver.agg.l")},
        {"name": "W", "external": ext("deliver.agg.w")},
    ]);
    create(&agg, p, json!({"name": "AGG", "sources": sources})).await;
    wait_count(&agg, p, "AGG", 40, &[&s]).await;
    for i in 20..30 {
        publish(&orig, format!("l.{i}"), i.to_string()).await;
        publish(&orig, format!("w.{i}"), i.to_string()).await;
    }
    wait_count(&agg, p, "AGG", 60, &[&s]).await;
    check_each_once_in_order(&contents(&agg, p, "AGG").await, &[("l", 30), ("w", 30)]);
    // The work queue was drained by the acks that crossed the accounts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(&orig, p, "W").await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "W not drained: {}\n{}",
            api(&orig, format!("{p}.STREAM.INFO.W"), json!({})).await,
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cross_account_sources() {
    cross_account(Impl::Canopy).await;
}

#[tokio::test]
async fn cross_account_sources_go() {
    cross_account(Impl::NatsServer).await;
}

/// The `$JS.API` requests an edge has served so far (its `/jsz` `api.total`).
fn api_total(s: &ServerProcess) -> u64 {
    s.monitor("/jsz").unwrap()["api"]["total"]
        .as_u64()
        .unwrap_or(0)
}

/// A hundred edges, each with its own domain and stream, sourced into one hub stream. The
/// hub is killed (-9) and restarted while the edges keep publishing: all hundred leaf links
/// come back at once, the hub's hundred sources resume, and each edge serves only a few
/// API requests for it (the sourcing consumer's recreation), not a storm of retries.
#[tokio::test]
async fn hundred_edges_reconnect_at_once() {
    const EDGES: usize = 100;
    let stores = tempfile::tempdir().unwrap();
    let lp = canopy_testkit::free_fixed_port();
    let hub_conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: hub }}\n\
         leafnodes {{ listen: 127.0.0.1:{lp} }}\n",
        stores.path().join("hub").display()
    );
    let mut hub = ServerProcess::canopy(&hub_conf).unwrap();
    let mut edges = Vec::with_capacity(EDGES);
    let mut clients = Vec::with_capacity(EDGES);
    for i in 0..EDGES {
        let conf = format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n\
             jetstream {{ store_dir: \"{}\", domain: edge{i}, max_mem: 1MB, max_file: 16MB }}\n\
             leafnodes {{ remotes: [{{ url: \"nats-leaf://127.0.0.1:{lp}\" }}], reconnect: 1 }}\n",
            stores.path().join(format!("e{i}")).display()
        );
        let e = ServerProcess::canopy(&conf).unwrap();
        let nc = async_nats::connect(e.url()).await.unwrap();
        create(
            &nc,
            "$JS.API",
            json!({"name": format!("E{i}"), "subjects": [format!("e{i}.>")]}),
        )
        .await;
        publish(&nc, format!("e{i}.0"), "0".into()).await;
        edges.push(e);
        clients.push(nc);
    }
    let sources: Vec<Value> = (0..EDGES)
        .map(|i| json!({"name": format!("E{i}"), "domain": format!("edge{i}")}))
        .collect();
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    create(&hnc, "$JS.API", json!({"name": "AGG", "sources": sources})).await;
    wait_count(&hnc, "$JS.API", "AGG", EDGES as u64, &[&hub]).await;

    drop(hnc);
    hub.kill();
    let before: Vec<u64> = edges.iter().map(api_total).collect();
    for (i, nc) in clients.iter().enumerate() {
        publish(nc, format!("e{i}.1"), "1".into()).await;
    }
    let hub = ServerProcess::canopy(&hub_conf).unwrap();
    let hnc = async_nats::connect(hub.url()).await.unwrap();
    wait_count(&hnc, "$JS.API", "AGG", 2 * EDGES as u64, &[&hub]).await;
    // Settled: more messages arrive promptly, and nothing else is being retried.
    for (i, nc) in clients.iter().enumerate() {
        publish(nc, format!("e{i}.2"), "2".into()).await;
    }
    wait_count(&hnc, "$JS.API", "AGG", 3 * EDGES as u64, &[&hub]).await;
    let served: Vec<u64> = edges
        .iter()
        .zip(&before)
        .map(|(e, b)| api_total(e) - b)
        .collect();
    let total: u64 = served.iter().sum();
    let max = served.iter().copied().max().unwrap_or(0);
    eprintln!("API requests served per edge for the reconnect: total {total}, max {max}");
    assert!(
        max <= 4,
        "an edge served {max} API requests for one source's reconnect: {served:?}"
    );
    let msgs: Vec<(String, String)> = contents(&hnc, "$JS.API", "AGG").await;
    let mut per_edge: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (subject, data) in msgs {
        let head = subject.split('.').next().unwrap().to_string();
        per_edge.entry(head).or_default().push(data);
    }
    assert_eq!(per_edge.len(), EDGES);
    for (edge, got) in per_edge {
        assert_eq!(got, ["0", "1", "2"], "messages of {edge}");
    }
}
