//! JetStream on one server, driven by the official async-nats client: streams, publish
//! acknowledgements, pull consumers with acks, KV, restart and kill -9 recovery, the
//! configuration rules, and the monitoring surface.

#![allow(clippy::unwrap_used)]

mod client_sync;

use client_sync::sync;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use canopy_testkit::ServerProcess;
use futures::StreamExt;

fn config(store: &std::path::Path, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\" }}\n{extra}",
        store.display()
    )
}

fn start(store: &std::path::Path) -> ServerProcess {
    ServerProcess::canopy(&config(store, "")).expect("start")
}

async fn js(s: &ServerProcess) -> (async_nats::Client, jetstream::Context) {
    let nc = async_nats::connect(s.url()).await.unwrap();
    let js = jetstream::new(nc.clone());
    (nc, js)
}

async fn orders(js: &jetstream::Context) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Publishes `orders.<i>` for each `i` and waits for each acknowledgement.
async fn publish_orders(js: &jetstream::Context, range: std::ops::Range<u32>) {
    for i in range {
        js.publish(format!("orders.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn publish_acks_and_stream_info() {
    let store = tempfile::tempdir().unwrap();
    let s = start(store.path());
    let (_nc, js) = js(&s).await;
    let mut st = orders(&js).await;
    for i in 1..=10u64 {
        let ack = js
            .publish(format!("orders.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.stream, "ORDERS");
        assert_eq!(ack.sequence, i);
    }
    let info = st.info().await.unwrap();
    assert_eq!(info.state.messages, 10);
    assert_eq!(info.state.first_sequence, 1);
    assert_eq!(info.state.last_sequence, 10);
    assert_eq!(info.config.subjects, vec!["orders.>".to_string()]);
    // The same config again is fine; a different one is 10058.
    orders(&js).await;
    let err = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("10058"), "{err}");
}

#[tokio::test]
async fn pull_consumer_fetch_and_ack() {
    let store = tempfile::tempdir().unwrap();
    let s = start(store.path());
    let (_nc, js) = js(&s).await;
    let st = orders(&js).await;
    for i in 0..20 {
        js.publish(format!("orders.{i}"), format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = c.fetch().max_messages(20).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        assert_eq!(m.payload, format!("{n}").as_bytes());
        m.ack().await.unwrap();
        n += 1;
    }
    assert_eq!(n, 20);
    let mut c = c;
    let mut settled = false;
    for _ in 0..100 {
        let i = c.info().await.unwrap();
        if i.num_ack_pending == 0 && i.num_pending == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "acks not applied: {:?}", c.info().await.unwrap());
}

#[tokio::test]
async fn stream_and_consumer_survive_kill_9() {
    let store = tempfile::tempdir().unwrap();
    let mut s = start(store.path());
    {
        let (_nc, js) = js(&s).await;
        let st = orders(&js).await;
        publish_orders(&js, 0..50).await;
        let c: consumer::PullConsumer = st
            .create_consumer(consumer::pull::Config {
                durable_name: Some("worker".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = c.fetch().max_messages(10).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            m.unwrap().double_ack().await.unwrap();
        }
    }
    s.kill();
    let s = start(store.path());
    let (_nc, js) = js(&s).await;
    let mut st = js.get_stream("ORDERS").await.unwrap();
    assert_eq!(st.info().await.unwrap().state.messages, 50);
    let mut c: consumer::PullConsumer = st.get_consumer("worker").await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, 10);
    assert_eq!(info.num_pending, 40);
}

#[tokio::test]
async fn key_value_bucket() {
    let store = tempfile::tempdir().unwrap();
    let s = start(store.path());
    let (_nc, js) = js(&s).await;
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "config".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let r1 = kv.put("a", "1".into()).await.unwrap();
    let r2 = kv.put("a", "2".into()).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(kv.get("a").await.unwrap().unwrap(), "2".as_bytes());
    assert!(kv.update("a", "3".into(), r1).await.is_err());
    kv.update("a", "3".into(), r2).await.unwrap();
    assert!(kv.create("a", "x".into()).await.is_err());
    kv.put("b", "1".into()).await.unwrap();
    let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    assert_eq!(keys, vec!["a".to_string(), "b".to_string()]);
    let history: Vec<_> = kv.history("a").await.unwrap().collect().await;
    assert_eq!(history.len(), 3);
    kv.delete("b").await.unwrap();
    assert!(kv.get("b").await.unwrap().is_none());
}

#[tokio::test]
async fn errors_clients_branch_on() {
    let store = tempfile::tempdir().unwrap();
    let s = start(store.path());
    let (_nc, js) = js(&s).await;
    let err = js.get_stream("NOPE").await.unwrap_err();
    assert!(err.to_string().contains("10059"), "{err}");
    let info = js.query_account().await.unwrap();
    assert_eq!(info.streams, 0);
}

#[tokio::test]
async fn an_account_without_jetstream_gets_10039() {
    let store = tempfile::tempdir().unwrap();
    let accounts = "accounts { A { jetstream: enabled, users [{user: a, password: a}] }, \
                    B { users [{user: b, password: b}] } }";
    let s = ServerProcess::canopy(&config(store.path(), accounts)).expect("start");
    let user = |u: &str| {
        async_nats::ConnectOptions::with_user_and_password(u.into(), u.into()).connect(s.url())
    };
    let a = user("a").await.unwrap();
    jetstream::new(a).query_account().await.unwrap();
    let b = user("b").await.unwrap();
    let resp = b.request("$JS.API.INFO", "".into()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(v["error"]["err_code"], 10039, "{v}");
    assert_eq!(v["error"]["code"], 503, "{v}");
}

#[test]
fn monitoring_shows_jetstream() {
    let store = tempfile::tempdir().unwrap();
    let s = start(store.path());
    let v = s.monitor("/varz").unwrap();
    assert!(v["jetstream"]["config"]["store_dir"]
        .as_str()
        .unwrap()
        .starts_with(&store.path().display().to_string()));
    let j = s.monitor("/jsz").unwrap();
    assert_eq!(j["server_id"], v["server_id"]);
    assert!(s.monitor("/healthz?js-enabled-only=true").is_ok());
    assert!(s.log().contains("Store Directory:"), "{}", s.log());

    // Without JetStream in the config every probe passes, as with nats-server (the Helm
    // chart probes `js-enabled-only` on pods that have no JetStream).
    let plain = ServerProcess::canopy("listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n").unwrap();
    let (status, _) =
        canopy_testkit::http_get(plain.http_port.unwrap(), "/healthz?js-enabled-only=true")
            .unwrap();
    assert_eq!(status, 200);
}

/// The seed's leaf configs with `jetstream {}` and no cluster start and serve JetStream
/// (the hub they dial is not there; JetStream does not need it), and so does the regional
/// hub with `cluster {}` (routes to itself only: a meta group of one, tests/js_cluster.rs).
#[tokio::test]
async fn seed_jetstream_configs_start() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    for name in ["high-performance-leaf", "edge-leaf"] {
        let text = std::fs::read_to_string(seed.join(format!("{name}.conf"))).unwrap();
        let store = tempfile::tempdir().unwrap();
        let sd = store.path().display().to_string();
        let s = ServerProcess::start(
            canopy_testkit::Impl::Canopy,
            &text,
            &["-p", "-1", "-m", "-1", "-sd", &sd],
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let nc = async_nats::connect(s.url()).await.unwrap();
        let info = jetstream::new(nc).query_account().await.unwrap();
        assert_eq!(info.streams, 0, "{name}");
    }
    // Its fixed ports moved to free ones.
    let (cp, lp) = (
        canopy_testkit::free_fixed_port(),
        canopy_testkit::free_fixed_port(),
    );
    let text = std::fs::read_to_string(seed.join("us-regional-hub.conf"))
        .unwrap()
        .replace("6222", &cp.to_string())
        .replace("port: 7422", &format!("port: {lp}"));
    let store = tempfile::tempdir().unwrap();
    let sd = store.path().display().to_string();
    let s = ServerProcess::start(
        canopy_testkit::Impl::Canopy,
        &text,
        &["-p", "-1", "-m", "-1", "-sd", &sd],
    )
    .unwrap();
    // A meta group of one, formed at once (the only route leads to itself).
    canopy_testkit::assert_eventually!(
        Duration::from_secs(10),
        s.monitor("/jsz").unwrap()["meta_cluster"]["leader"] == "us-hub-1",
        "no meta leader: {}",
        s.monitor("/jsz").unwrap()
    );
    let nc = async_nats::connect(s.url()).await.unwrap();
    let js = jetstream::new(nc);
    let mut st = js
        .create_stream(stream::Config {
            name: "REGION".into(),
            subjects: vec!["region.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("region.a", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(st.info().await.unwrap().state.messages, 1);
    let info = js.query_account().await.unwrap();
    assert_eq!(info.domain.as_deref(), Some("us"));
    let meta = s.monitor("/jsz").unwrap()["meta_cluster"].clone();
    assert_eq!(meta["name"], "us-cluster", "{meta}");
    assert_eq!(meta["cluster_size"], 1, "{meta}");
}

/// A hub client uses a leaf's JetStream over the leaf link: API requests, publishes and
/// pull deliveries cross the link, and the consumed messages carry their own subjects (the
/// delivery travels as the pull inbox with the subject in the ack reply, split at the hub).
#[tokio::test]
async fn deliveries_across_a_leaf_link_keep_their_subject() {
    across_a_leaf_link(canopy_testkit::Impl::Canopy).await;
}

async fn across_a_leaf_link(hub_kind: canopy_testkit::Impl) {
    let lp = canopy_testkit::free_fixed_port();
    let hub = ServerProcess::start(
        hub_kind,
        &format!("listen: 127.0.0.1:-1\nleafnodes {{ listen: 127.0.0.1:{lp} }}\n"),
        &[],
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: edge }}\n\
         leafnodes {{ remotes: [{{ url: \"nats-leaf://127.0.0.1:{lp}\" }}] }}",
        store.path().display()
    ))
    .unwrap();
    let nc = async_nats::connect(hub.url()).await.unwrap();
    // `$JS.API` never crosses a leaf link: the hub's clients reach the leaf's JetStream
    // through its domain.
    let js = jetstream::with_domain(nc.clone(), "edge");
    // The leaf's domain API interest reaches the hub once the link is up.
    let mut st = None;
    for _ in 0..200 {
        if let Ok(s) = orders(&js).await.info().await.map(|_| ()) {
            st = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(st.is_some(), "the leaf's JetStream never answered");
    let st = js.get_stream("ORDERS").await.unwrap();
    publish_orders(&js, 0..5).await;
    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("hubside".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = c.fetch().max_messages(5).messages().await.unwrap();
    let mut subjects = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        subjects.push(m.subject.to_string());
        m.double_ack().await.unwrap();
    }
    assert_eq!(
        subjects,
        (0..5).map(|i| format!("orders.{i}")).collect::<Vec<_>>()
    );
    drop(leaf);
}

/// Issue 14 item 1, domains across a leaf link: `$JS.API`, `$KV.>` and `$OBJ.>` stay on
/// their own side (one answer per request, from the local JetStream), and each side's
/// JetStream — KV included — is reached from the other through `$JS.<domain>.API`.
#[tokio::test]
async fn domains_across_a_leaf_link() {
    domains_across_a_leaf_link_with(canopy_testkit::Impl::Canopy).await;
}

/// The same with Debian's nats-server 2.9.10 as the hub (`-js`, domain `hub`).
#[tokio::test]
async fn domains_across_a_leaf_link_with_a_go_hub() {
    if canopy_testkit::nats_server_bin().is_none() {
        eprintln!("nats-server not installed; skipping");
        return;
    }
    domains_across_a_leaf_link_with(canopy_testkit::Impl::NatsServer).await;
}

async fn domains_across_a_leaf_link_with(hub_kind: canopy_testkit::Impl) {
    let lp = canopy_testkit::free_fixed_port();
    let (hub_store, leaf_store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hub = ServerProcess::start(
        hub_kind,
        &format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: hub }}\n\
             leafnodes {{ listen: 127.0.0.1:{lp} }}\n",
            hub_store.path().display()
        ),
        &[],
    )
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: edge }}\n\
         leafnodes {{ remotes: [{{ url: \"nats-leaf://127.0.0.1:{lp}\" }}] }}\n",
        leaf_store.path().display()
    ))
    .unwrap();
    let hub_nc = async_nats::connect(hub.url()).await.unwrap();
    let leaf_nc = async_nats::connect(leaf.url()).await.unwrap();
    // Each side reaches the other's domain once the link's interest is in.
    let edge_from_hub = jetstream::with_domain(hub_nc.clone(), "edge");
    // (Raw requests: async-nats cannot parse 2.9.10's account info, which lacks fields
    // newer servers send.)
    let info = |nc: async_nats::Client, domain: &'static str| async move {
        let m = tokio::time::timeout(
            Duration::from_millis(500),
            nc.request(format!("$JS.{domain}.API.INFO"), "".into()),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice::<serde_json::Value>(&m.payload)
            .ok()
            .and_then(|v| v["domain"].as_str().map(String::from))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = info(hub_nc.clone(), "edge").await;
        let b = info(leaf_nc.clone(), "hub").await;
        if a.as_deref() == Some("edge") && b.as_deref() == Some("hub") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "domains not reachable across the link: edge from hub {a:?}, hub from edge {b:?}\nhub: {}\nleaf: {}",
            hub.log(),
            leaf.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `$JS.API.INFO` is answered once, by the requester's own server.
    for (nc, want) in [(&hub_nc, "hub"), (&leaf_nc, "edge")] {
        let inbox = nc.new_inbox();
        let mut replies = nc.subscribe(inbox.clone()).await.unwrap();
        nc.publish_with_reply("$JS.API.INFO", inbox, "".into())
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
        assert_eq!(v["domain"], want, "{v}");
        let second = tokio::time::timeout(Duration::from_millis(500), replies.next()).await;
        assert!(
            second.is_err(),
            "a second answer to $JS.API.INFO from {want}"
        );
    }
    // A KV bucket on the edge, written and read from the hub through the domain, is the
    // edge's alone: the hub's own JetStream does not know it.
    let kv = edge_from_hub
        .create_key_value(jetstream::kv::Config {
            bucket: "SENSORS".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    kv.put("t1", "21.5".into()).await.unwrap();
    let local = jetstream::new(leaf_nc.clone())
        .get_key_value("SENSORS")
        .await
        .unwrap();
    assert_eq!(local.get("t1").await.unwrap().unwrap(), "21.5");
    local.put("t2", "19.0".into()).await.unwrap();
    assert_eq!(kv.get("t2").await.unwrap().unwrap(), "19.0");
    // Watched from the hub: updates written on the edge arrive across the link.
    let mut watch = kv.watch("w.>").await.unwrap();
    for v in ["1", "2"] {
        local.put("w.k", v.into()).await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a watch update across the link")
            .unwrap()
            .unwrap();
        assert_eq!((e.key.as_str(), &e.value[..]), ("w.k", v.as_bytes()));
    }
    assert!(jetstream::new(hub_nc.clone())
        .get_key_value("SENSORS")
        .await
        .is_err());
    // A raw `$KV` publish on the hub does not cross to the edge's bucket.
    hub_nc.publish("$KV.SENSORS.t3", "99".into()).await.unwrap();
    hub_nc.flush().await.unwrap();
    local.put("t4", "1".into()).await.unwrap();
    assert!(local.get("t3").await.unwrap().is_none());
    drop(leaf);
}

/// A leaf link whose two sides share a JetStream domain is called out in the log (neither
/// side reaches the other's JetStream), as is a JetStream side without a domain facing a
/// peer that has one.
#[test]
fn leaf_domain_mistakes_are_logged() {
    let lp = canopy_testkit::free_fixed_port();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hub = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: same }}\nleafnodes {{ listen: 127.0.0.1:{lp} }}\n",
        a.path().display()
    ))
    .unwrap();
    let same = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", domain: same }}\n\
         leafnodes {{ remotes: [{{ url: \"nats-leaf://127.0.0.1:{lp}\" }}] }}\n",
        b.path().display()
    ))
    .unwrap();
    canopy_testkit::assert_eventually!(
        Duration::from_secs(10),
        same.log()
            .contains("both sides of this leaf link use JetStream domain \"same\""),
        "no warning: {}",
        same.log()
    );
    drop(same);
    let c = tempfile::tempdir().unwrap();
    let nodomain = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\" }}\n\
         leafnodes {{ remotes: [{{ url: \"nats-leaf://127.0.0.1:{lp}\" }}] }}\n",
        c.path().display()
    ))
    .unwrap();
    canopy_testkit::assert_eventually!(
        Duration::from_secs(10),
        nodomain
            .log()
            .contains("runs JetStream without a domain and the peer's domain is \"same\""),
        "no warning: {}",
        nodomain.log()
    );
    drop(hub);
}

/// `/metrics` carries JetStream's totals and per stream and consumer state.
#[tokio::test]
async fn prometheus_metrics_per_stream_and_consumer() {
    let store = tempfile::tempdir().unwrap();
    let s = start(store.path());
    let (_nc, js) = js(&s).await;
    let st = orders(&js).await;
    publish_orders(&js, 0..3).await;
    let _c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("billing".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, text) = canopy_testkit::http_get(s.http_port.unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200);
    for line in [
        "nats_jetstream_streams 1",
        "nats_jetstream_messages 3",
        "nats_jetstream_stream_messages{account=\"$G\",stream=\"ORDERS\"} 3",
        "nats_jetstream_stream_last_seq{account=\"$G\",stream=\"ORDERS\"} 3",
        "nats_jetstream_consumer_num_pending{account=\"$G\",stream=\"ORDERS\",consumer=\"billing\"} 3",
        "nats_jetstream_consumer_num_ack_pending{account=\"$G\",stream=\"ORDERS\",consumer=\"billing\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
}

/// A push consumer's deliveries cross a stream import as JetStream deliveries: matched and
/// mapped by their deliver subject, seen by the importer with the messages' own subjects.
#[tokio::test]
async fn push_deliveries_cross_a_stream_import() {
    let store = tempfile::tempdir().unwrap();
    let s = ServerProcess::canopy(&config(
        store.path(),
        "accounts {\n\
           A: { jetstream: enabled, users: [ { user: a, password: a } ], exports: [ { stream: \"deliver.>\" } ] }\n\
           B: { users: [ { user: b, password: b } ], imports: [ { stream: { account: A, subject: \"deliver.>\" }, to: \"from-a.>\" } ] }\n\
         }\n",
    ))
    .unwrap();
    let user =
        |u: &'static str| async_nats::ConnectOptions::with_user_and_password(u.into(), u.into());
    let a = user("a").connect(s.url()).await.unwrap();
    let b = user("b").connect(s.url()).await.unwrap();
    let mut sub = b.subscribe("from-a.b").await.unwrap();
    sync(&b).await;
    let js = jetstream::new(a.clone());
    let st = orders(&js).await;
    st.create_consumer(consumer::push::Config {
        durable_name: Some("to-b".into()),
        deliver_subject: "deliver.b".into(),
        ack_policy: consumer::AckPolicy::None,
        ..Default::default()
    })
    .await
    .unwrap();
    publish_orders(&js, 0..3).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a delivery across the import")
            .unwrap();
        if m.status.is_none() {
            got.push(m.subject.to_string());
        }
    }
    assert_eq!(got, ["orders.0", "orders.1", "orders.2"]);
}

/// nats-server 2.11's versioning metadata: the required API level is stored with each
/// stream and consumer, the server's version and level are added to every configuration
/// a response carries; sending a configuration back as it came (what `create_or_update`
/// style clients do) is still the same configuration, before and after a restart.
#[tokio::test]
async fn versioning_metadata() {
    let store = tempfile::tempdir().unwrap();
    let mut s = start(store.path());
    let (nc, js) = js(&s).await;
    let version = nc.server_info().version;
    let cfg = stream::Config {
        name: "META".into(),
        subjects: vec!["meta.>".into()],
        metadata: [("owner".to_string(), "me".to_string())].into(),
        ..Default::default()
    };
    let mut st = js.create_stream(cfg.clone()).await.unwrap();
    let info = st.info().await.unwrap();
    let md = &info.config.metadata;
    assert_eq!(md.get("owner").map(String::as_str), Some("me"));
    assert_eq!(md.get("_nats.req.level").map(String::as_str), Some("0"));
    assert_eq!(md.get("_nats.ver"), Some(&version));
    assert_eq!(md.get("_nats.level").map(String::as_str), Some("1"));
    let ttl = js
        .create_stream(stream::Config {
            name: "META_TTL".into(),
            subjects: vec!["ttl.>".into()],
            allow_message_ttl: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let md = &ttl.cached_info().config.metadata;
    assert_eq!(md.get("_nats.req.level").map(String::as_str), Some("1"));
    // The configuration as the server returned it is the same configuration.
    js.create_stream(info.config.clone()).await.unwrap();
    let ccfg = consumer::pull::Config {
        durable_name: Some("d".into()),
        ..Default::default()
    };
    let c: consumer::PullConsumer = st.create_consumer(ccfg.clone()).await.unwrap();
    let md = &c.cached_info().config.metadata;
    assert_eq!(md.get("_nats.req.level").map(String::as_str), Some("0"));
    assert_eq!(md.get("_nats.ver"), Some(&version));
    drop(nc);
    s.kill();
    s = start(store.path());
    let (_nc, js) = crate::js(&s).await;
    let st = js.get_stream("META").await.unwrap();
    js.create_stream(cfg).await.unwrap();
    let c: consumer::PullConsumer = st.create_consumer(ccfg).await.unwrap();
    let md = &c.cached_info().config.metadata;
    assert_eq!(md.get("_nats.level").map(String::as_str), Some("1"));
}

/// The seed's multi-region mesh with JetStream: three regional hubs, each a `cluster {}`
/// (routes to itself: a meta group of one) with `jetstream { domain }`, each soliciting the
/// other two as a leaf with `deny_imports/deny_exports: ["local.>"]`. Every region serves
/// its own JetStream, and a client in one region reaches another region's JetStream by its
/// domain across the mesh: streams, acknowledged publishes, KV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_mesh_serves_jetstream_in_each_region() {
    let regions = ["us", "eu", "ap"];
    let lps: Vec<u16> = regions
        .iter()
        .map(|_| canopy_testkit::free_fixed_port())
        .collect();
    let stores: Vec<tempfile::TempDir> = regions
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut hubs = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        let cp = canopy_testkit::free_fixed_port();
        let remotes: Vec<String> = lps
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, lp)| {
                format!(
                    "{{ urls: [\"nats-leaf://127.0.0.1:{lp}\"], deny_imports: [\"local.>\"], \
                     deny_exports: [\"local.>\"] }}"
                )
            })
            .collect();
        let cfg = format!(
            "server_name: {r}-hub-1\nlisten: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n\
             cluster {{ name: {r}-cluster, listen: 127.0.0.1:{cp}, routes: [\"nats-route://127.0.0.1:{cp}\"] }}\n\
             leafnodes {{ listen: 127.0.0.1:{}, remotes: [{}] }}\n\
             jetstream {{ store_dir: \"{}\", domain: {r} }}\n",
            lps[i],
            remotes.join(", "),
            stores[i].path().display()
        );
        hubs.push(ServerProcess::canopy(&cfg).unwrap_or_else(|e| panic!("{r}: {e}")));
    }
    for (h, r) in hubs.iter().zip(regions) {
        canopy_testkit::assert_eventually!(
            Duration::from_secs(20),
            h.monitor("/jsz").unwrap()["meta_cluster"]["leader"] == format!("{r}-hub-1").as_str()
                && h.monitor("/leafz").unwrap()["leafnodes"] == 4,
            "{r}: no meta leader or mesh links: {} {}",
            h.monitor("/jsz").unwrap()["meta_cluster"],
            h.monitor("/leafz").unwrap()["leafnodes"]
        );
    }
    // Each region's own JetStream, from its own clients.
    let mut clients = Vec::new();
    for (h, r) in hubs.iter().zip(regions) {
        let nc = async_nats::connect(h.url()).await.unwrap();
        let js = jetstream::new(nc.clone());
        let info = js.query_account().await.unwrap();
        assert_eq!(info.domain.as_deref(), Some(r));
        js.create_stream(stream::Config {
            name: format!("{}_EVENTS", r.to_uppercase()),
            subjects: vec![format!("{r}.events.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        clients.push(nc);
    }
    // From the US: the EU stream by its domain (the request crosses the mesh once its
    // interest has), publishes acknowledged by the EU stream, and a KV bucket in APAC.
    let us = clients[0].clone();
    let eu = jetstream::with_domain(us.clone(), "eu");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut st = loop {
        match eu.get_stream("EU_EVENTS").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "EU's JetStream not reachable from the US: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let us_js = jetstream::new(us.clone());
    for i in 0..10 {
        let ack = us_js
            .publish(format!("eu.events.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.stream, "EU_EVENTS");
        assert_eq!(ack.domain, "eu");
    }
    assert_eq!(st.info().await.unwrap().state.messages, 10);
    let ap = jetstream::with_domain(us, "ap");
    let kv = loop {
        match ap
            .create_key_value(jetstream::kv::Config {
                bucket: "settings".into(),
                ..Default::default()
            })
            .await
        {
            Ok(kv) => break kv,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "APAC's JetStream not reachable from the US: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    kv.put("mode", "edge".into()).await.unwrap();
    assert_eq!(kv.get("mode").await.unwrap().as_deref(), Some(&b"edge"[..]));
    // The bucket lives in APAC only.
    let ap_local = jetstream::new(clients[2].clone());
    let local = ap_local.get_key_value("settings").await.unwrap();
    assert_eq!(
        local.get("mode").await.unwrap().as_deref(),
        Some(&b"edge"[..])
    );
    assert!(jetstream::new(clients[0].clone())
        .get_key_value("settings")
        .await
        .is_err());
}

/// `max_buffered_msgs` bounds what waits for a stream's thread: a burst beyond it is
/// refused (a publish with a reply gets a 503 at once), every refusal is counted in `/varz`
/// `canopy_services`, and everything not refused is stored and acknowledged.
#[tokio::test]
async fn a_burst_beyond_max_buffered_msgs_is_refused_and_counted() {
    let store = tempfile::tempdir().unwrap();
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\", max_buffered_msgs: 1 }}\n",
        store.path().display()
    );
    let s = ServerProcess::canopy(&conf).expect("start");
    let (nc, js) = js(&s).await;
    let mut st = orders(&js).await;
    const N: usize = 5000;
    let mut replies = nc.subscribe("_INBOX.burst.>").await.unwrap();
    sync(&nc).await;
    for i in 0..N {
        nc.publish_with_reply(
            format!("orders.{i}"),
            format!("_INBOX.burst.{i}"),
            "x".into(),
        )
        .await
        .unwrap();
    }
    nc.flush().await.unwrap();
    let (mut acked, mut refused) = (0u64, 0u64);
    for _ in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("every publish is answered")
            .unwrap();
        match m.status {
            Some(code) if code.as_u16() == 503 => refused += 1,
            None => {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                assert_eq!(v["stream"], "ORDERS", "{v}");
                acked += 1;
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    // Nothing beyond one answer per publish (a refusal is not also a no-responders).
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), replies.next()).await {
        panic!("a second answer to {}: {:?}", m.subject, m.status);
    }
    assert!(refused > 0, "a burst of {N} never overflowed a queue of 1");
    assert_eq!(st.info().await.unwrap().state.messages, acked);
    let v = s.monitor("/varz").unwrap();
    assert_eq!(
        v["canopy_services"]["jetstream.ingest"]["dropped"].as_u64(),
        Some(refused),
        "{}",
        v["canopy_services"]
    );
}
