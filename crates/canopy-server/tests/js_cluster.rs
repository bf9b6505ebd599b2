//! Clustered JetStream: the meta group over the routes, R1 streams placed on one member and
//! served from every member, exactly one answer per API request, meta leader failover, a
//! member that starts alone and admits a later one.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer, stream};
use canopy_testkit::{assert_eventually, free_fixed_port, ServerProcess};
use futures::StreamExt;

mod js_cluster_common;
use js_cluster_common::*;

#[tokio::test]
async fn r1_streams_in_a_three_member_cluster() {
    let ms = cluster(3);
    let (nc_a, js_a) = js(ms[0].server()).await;
    let st = js_a
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let host = st
        .cached_info()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone());
    assert!(
        host.as_deref()
            .is_some_and(|h| ms.iter().any(|m| m.name == h)),
        "{host:?}"
    );
    // Publishes from clients on every member are stored once. A member learns the new
    // stream's subjects from its host over a route, which can come after the create's
    // answer reached the client: an early publish there may find no responders, and is
    // sent again (with the same message id).
    for m in &ms {
        let (_nc, js) = js(m.server()).await;
        for i in 0..3 {
            publish_once(&js, &format!("orders.{}.{i}", m.name), "x").await;
        }
    }
    // Stream info and a pull consumer from any member.
    for m in &ms {
        let (_nc, js) = js(m.server()).await;
        let mut s = js.get_stream("ORDERS").await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 9, "from {}", m.name);
    }
    let (_nc_c, js_c) = js(ms[2].server()).await;
    let s = js_c.get_stream("ORDERS").await.unwrap();
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("C".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = c.fetch().max_messages(20).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = msgs.next().await {
        m.unwrap().ack().await.unwrap();
        n += 1;
    }
    assert_eq!(n, 9);
    // Exactly one answer per request, whichever member the client is on.
    let (nc_b, _) = js(ms[1].server()).await;
    for (nc, subject) in [
        (&nc_a, "$JS.API.INFO"),
        (&nc_b, "$JS.API.STREAM.INFO.ORDERS"),
        (&nc_b, "$JS.API.STREAM.NAMES"),
        (&nc_a, "$JS.API.STREAM.LIST"),
        (&nc_b, "$JS.API.CONSUMER.INFO.ORDERS.C"),
        (&nc_a, "$JS.API.CONSUMER.NAMES.ORDERS"),
        (&nc_b, "$JS.API.STREAM.INFO.NOPE"),
    ] {
        let got = answers(nc, subject, "").await;
        assert_eq!(got.len(), 1, "{subject}: {got:?}");
        if subject.ends_with("NOPE") {
            assert_eq!(got[0]["error"]["err_code"], 10059, "{got:?}");
        } else {
            assert!(got[0].get("error").is_none(), "{subject}: {got:?}");
        }
    }
    let info = answers(&nc_b, "$JS.API.INFO", "").await;
    assert_eq!(info[0]["streams"], 1, "{info:?}");
    assert_eq!(info[0]["consumers"], 1, "{info:?}");
    let list = answers(&nc_b, "$JS.API.STREAM.LIST", "").await;
    assert_eq!(list[0]["streams"][0]["state"]["messages"], 9, "{list:?}");
    // A create with a different config is refused once; an identical one is idempotent.
    let dup = answers(
        &nc_b,
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["other.>"]}"#,
    )
    .await;
    assert_eq!(dup.len(), 1, "{dup:?}");
    assert_eq!(dup[0]["error"]["err_code"], 10058, "{dup:?}");
    let overlap = answers(
        &nc_a,
        "$JS.API.STREAM.CREATE.OTHER",
        r#"{"name":"OTHER","subjects":["orders.x.>"]}"#,
    )
    .await;
    assert_eq!(overlap[0]["error"]["err_code"], 10065, "{overlap:?}");
    let r3 = answers(
        &nc_a,
        "$JS.API.STREAM.CREATE.R3",
        r#"{"name":"R3","subjects":["r3"],"num_replicas":5}"#,
    )
    .await;
    assert_eq!(r3.len(), 1, "{r3:?}");
    assert!(r3[0]["error"]["err_code"].as_u64().is_some(), "{r3:?}");
    // Delete from another member: gone everywhere, answered once.
    let del = answers(&nc_b, "$JS.API.STREAM.DELETE.ORDERS", "").await;
    assert_eq!(del.len(), 1, "{del:?}");
    assert_eq!(del[0]["success"], true, "{del:?}");
    let gone = answers(&nc_a, "$JS.API.STREAM.INFO.ORDERS", "").await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["error"]["err_code"], 10059, "{gone:?}");
}

#[tokio::test]
async fn a_new_meta_leader_serves_after_the_old_one_is_killed() {
    let mut ms = cluster(3);
    let leader = wait_formed(&ms, 3);
    let li = ms.iter().position(|m| m.name == leader).unwrap();
    ms[li].proc.as_mut().unwrap().kill();
    ms[li].proc = None;
    let other = ms.iter().find(|m| m.proc.is_some()).unwrap();
    let started = Instant::now();
    assert_eventually!(
        Duration::from_secs(30),
        {
            let l = other.meta()["leader"].as_str().unwrap_or("").to_string();
            !l.is_empty() && l != leader
        },
        "no new meta leader: {}",
        other.meta()
    );
    let (nc, _js) = js(other.server()).await;
    // The first creates may meet the election; one answer each, then success.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = answers(
            &nc,
            "$JS.API.STREAM.CREATE.AFTER",
            r#"{"name":"AFTER","subjects":["after"]}"#,
        )
        .await;
        assert!(got.len() <= 1, "{got:?}");
        if got.first().is_some_and(|v| v.get("error").is_none()) {
            break;
        }
        assert!(Instant::now() < deadline, "stream create failed: {got:?}");
    }
    eprintln!("failover and create took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_member_alone_serves_and_admits_a_later_one() {
    let (mut ms, ports) = members(2);
    start(&mut ms[0], &ports);
    let alone = wait_formed(&ms[..1], 1);
    assert_eq!(alone, "m0");
    let (_nc, js0) = js(ms[0].server()).await;
    js0.create_stream(stream::Config {
        name: "EARLY".into(),
        subjects: vec!["early".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js0.publish("early", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    start(&mut ms[1], &ports);
    wait_formed(&ms, 2);
    let (_nc1, js1) = js(ms[1].server()).await;
    let mut s = js1.get_stream("EARLY").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    let names: Vec<String> = js1.stream_names().map(|n| n.unwrap()).collect().await;
    assert_eq!(names, vec!["EARLY".to_string()]);
}

#[test]
fn clustered_jetstream_needs_server_names() {
    let store = tempfile::tempdir().unwrap();
    let p = free_fixed_port();
    let cfg = format!(
        "listen: 127.0.0.1:-1\ncluster {{ name: c, listen: 127.0.0.1:{p} }}\n\
         jetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    );
    let err = ServerProcess::canopy(&cfg)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("server_name"), "{err}");
}

#[tokio::test]
async fn r3_stream_survives_the_kill_of_its_leader_and_the_meta_leader_steps_down() {
    let mut ms = cluster(3);
    let (nc_a, js_a) = js(ms[0].server()).await;
    let st = js_a
        .create_stream(stream::Config {
            name: "R3".into(),
            subjects: vec!["r3.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let cl = st.cached_info().cluster.clone().unwrap();
    assert!(cl.leader.is_some(), "{cl:?}");
    for i in 0..5 {
        js_a.publish(format!("r3.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let got = answers(&nc_a, "$JS.API.STREAM.INFO.R3", "").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["state"]["messages"], 5, "{got:?}");
    assert_eq!(
        got[0]["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2),
        "{got:?}"
    );
    // kill -9 the stream's leader; a new one takes publishes and has every acked message.
    let leader = got[0]["cluster"]["leader"].as_str().unwrap().to_string();
    let li = ms.iter().position(|m| m.name == leader).unwrap();
    ms[li].proc.as_mut().unwrap().kill();
    ms[li].proc = None;
    let other = ms.iter().find(|m| m.proc.is_some()).unwrap();
    let (nc, js_o) = js(other.server()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(f) = js_o.publish("r3.after", "y".into()).await {
            if f.await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no new stream leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = answers(&nc, "$JS.API.STREAM.INFO.R3", "").await;
        if info.len() == 1 && info[0]["state"]["messages"].as_u64() >= Some(6) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stream info after failover: {info:?}"
        );
    }
    // The meta leader hands over on request, answering once.
    let before = wait_formed(&ms, 3);
    let down = answers(&nc, "$JS.API.META.LEADER.STEPDOWN", "").await;
    assert_eq!(down.len(), 1, "{down:?}");
    if down[0]["success"] == true {
        assert_eventually!(
            Duration::from_secs(15),
            other.meta()["leader"].as_str().is_some_and(|l| l != before),
            "meta leader did not change: {}",
            other.meta()
        );
    }
}

/// A server that formed its meta group alone (here: its routes name only itself, as when
/// its peers' routes were slow to come up) and never held a stream joins the group it
/// meets instead of splitting the cluster in two; the cluster then serves one stream
/// list.
#[tokio::test]
async fn a_lone_empty_meta_group_joins_the_one_it_meets() {
    let (mut ms, ports) = members(2);
    // m0 names both routes; m1 names only itself and forms a group of one at once.
    start(&mut ms[0], &ports);
    assert_eq!(wait_formed(&ms[..1], 1), "m0");
    let cfg = member_config("m1", ms[1].port, &ports[1..], ms[1].store.path());
    ms[1].proc = Some(ServerProcess::canopy(&cfg).expect("start"));
    // m0 dials m1: the two groups meet, and m1's (lone, empty, higher name) gives way.
    assert_eq!(wait_formed(&ms, 2), "m0");
    let (_nc, js1) = js(ms[1].server()).await;
    js1.create_stream(stream::Config {
        name: "ONE".into(),
        subjects: vec!["one".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let (_nc0, js0) = js(ms[0].server()).await;
    let names: Vec<String> = js0.stream_names().map(|n| n.unwrap()).collect().await;
    assert_eq!(names, vec!["ONE".to_string()]);
}

/// A new R3 stream takes publishes as soon as its create is answered: the answer comes
/// from the group's leader once it ingests (it used to come once any member was elected,
/// and a publish arriving before the leader knew it led was dropped unanswered — seen as
/// an occasional pub-ack timeout on a loaded machine). Exactly one create answer.
#[tokio::test]
async fn an_r3_stream_takes_publishes_as_soon_as_its_create_is_answered() {
    let ms = cluster(3);
    let (nc, _) = js(ms[1].server()).await;
    for i in 0..8 {
        let inbox = nc.new_inbox();
        let mut sub = nc.subscribe(inbox.clone()).await.unwrap();
        nc.flush().await.unwrap();
        let body = format!(r#"{{"name":"NEW{i}","subjects":["new{i}.>"],"num_replicas":3}}"#);
        nc.publish_with_reply(format!("$JS.API.STREAM.CREATE.NEW{i}"), inbox, body.into())
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await
            .expect("no create answer")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
        assert!(v["error"].is_null(), "{v}");
        assert!(
            v["cluster"]["leader"].is_string() && v["cluster"]["leader_since"].is_string(),
            "the create answer names its leader: {v}"
        );
        // At once, no retry: the stream's leader must take it. Only a leadership change
        // after the create was answered excuses silence (a publish reaching a deposed
        // leader is dropped unanswered, and clients retry): then it is retried.
        let publish = || {
            tokio::time::timeout(
                Duration::from_secs(5),
                nc.request(format!("new{i}.x"), "x".into()),
            )
        };
        let ack = match publish().await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                let info = request(&nc, &format!("$JS.API.STREAM.INFO.NEW{i}"), "")
                    .await
                    .unwrap_or_default();
                let same = |k: &str| info["cluster"][k] == v["cluster"][k];
                assert!(
                    !(same("leader") && same("leader_since")),
                    "publish right after the create of NEW{i} unanswered, same leader: {info}"
                );
                publish()
                    .await
                    .unwrap_or_else(|_| panic!("NEW{i}: unanswered after a leader change"))
                    .unwrap()
            }
        };
        let a: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
        assert_eq!(a["seq"], 1, "{a}");
        // No second create answer arrived meanwhile.
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            panic!("a second create answer: {:?}", m.payload);
        }
    }
    // A healthy create logs no error (a vote arriving before its group was registered on a
    // member used to fail, and openraft logs that as an error).
    for m in &ms {
        let log = m.server().log();
        assert!(
            !log.contains("no raft group"),
            "{}: {}",
            m.name,
            log.lines()
                .filter(|l| l.contains("no raft group"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Stream leaders spread over the members: the first founder (placement's least loaded
/// pick, ties shuffled) starts the group's first election. When every founder started one
/// at once, the meta leader (which applies the create first) led nearly every stream.
/// Eight R3 streams on three members all led by one member happens by chance with
/// probability 3 × (1/3)^8 ≈ 0.05%.
#[tokio::test]
async fn stream_leaders_spread_over_the_members() {
    let ms = cluster(3);
    let (nc, js) = js(ms[0].server()).await;
    let mut leaders = std::collections::BTreeSet::new();
    for i in 0..8 {
        let st = eventually(Duration::from_secs(20), "create an R3 stream", || {
            let js = js.clone();
            async move {
                js.create_stream(stream::Config {
                    name: format!("SPREAD{i}"),
                    subjects: vec![format!("spread{i}.>")],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
            }
        })
        .await;
        let leader = st
            .cached_info()
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone());
        leaders.insert(leader.unwrap_or_default());
    }
    drop(nc);
    assert!(leaders.len() >= 2, "every stream led by {leaders:?}");
}

/// An R3 stream's `state` once it holds `msgs` messages (asked of whichever member
/// answers), within 60 s.
async fn holds(nc: &async_nats::Client, stream: &str, msgs: u64) -> serde_json::Value {
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    eventually(
        Duration::from_secs(60),
        "stream never held them",
        || async {
            let info = request(nc, &subject, "").await.ok_or("no answer")?;
            if info["state"]["messages"] == msgs {
                Ok(info)
            } else {
                Err(info.to_string())
            }
        },
    )
    .await
}

/// The subjects of a stream's first `n` messages, read through a pull consumer; fails on
/// a subject seen twice.
async fn subjects_once(
    js: &async_nats::jetstream::Context,
    stream: &str,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let c = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = c.messages().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{stream}: {} of {n} read back", seen.len()))
            .unwrap();
        assert!(seen.insert(m.subject.to_string()), "twice: {}", m.subject);
    }
    seen
}

/// R3 mirrors and sources (issue 19): the stream leader runs them and stores what arrives
/// through the group, the positions follow the replicated contents, so a new leader after
/// a `kill -9` of the old one sources on from where the group is: nothing missing, nothing
/// twice, from a limits origin and from a work-queue origin (whose messages go only once
/// they are stored).
#[tokio::test]
async fn r3_mirror_and_sources_continue_after_their_leader_is_killed() {
    let mut ms = cluster(3);
    let (nc, js0) = js(ms[0].server()).await;
    for (name, subjects, retention) in [
        ("ORIG", "orig.>", stream::RetentionPolicy::Limits),
        ("WQ", "wq.>", stream::RetentionPolicy::WorkQueue),
    ] {
        js0.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            retention,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let src = |n: &str| stream::Source {
        name: n.into(),
        ..Default::default()
    };
    js0.create_stream(stream::Config {
        name: "AGG".into(),
        sources: Some(vec![src("ORIG"), src("WQ")]),
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    js0.create_stream(stream::Config {
        name: "MIR".into(),
        mirror: Some(src("ORIG")),
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..100 {
        publish_once(&js0, &format!("orig.{i}"), "x").await;
        if i % 2 == 0 {
            publish_once(&js0, &format!("wq.{i}"), "x").await;
        }
    }
    holds(&nc, "AGG", 150).await;
    holds(&nc, "MIR", 100).await;
    holds(&nc, "WQ", 0).await;

    // kill -9 the member that leads AGG; the others go on.
    let agg = holds(&nc, "AGG", 150).await;
    let leader = agg["cluster"]["leader"].as_str().unwrap().to_string();
    let li = ms.iter().position(|m| m.name == leader).unwrap();
    ms[li].proc.as_mut().unwrap().kill();
    ms[li].proc = None;
    let other = ms.iter().find(|m| m.proc.is_some()).unwrap();
    let (nc, js1) = js(other.server()).await;
    for i in 100..200 {
        publish_once(&js1, &format!("orig.{i}"), "x").await;
        if i % 2 == 0 {
            publish_once(&js1, &format!("wq.{i}"), "x").await;
        }
    }
    let agg = holds(&nc, "AGG", 300).await;
    assert_eq!(agg["state"]["last_seq"], 300, "{agg}");
    let mir = holds(&nc, "MIR", 200).await;
    assert_eq!(mir["state"]["last_seq"], 200, "{mir}");
    holds(&nc, "WQ", 0).await;

    // Every origin message exactly once.
    let seen = subjects_once(&js1, "AGG", 300).await;
    for i in 0..200 {
        assert!(seen.contains(&format!("orig.{i}")), "orig.{i} missing");
        if i % 2 == 0 {
            assert!(seen.contains(&format!("wq.{i}")), "wq.{i} missing");
        }
    }
    // Deleting the aggregate deletes its durable sourcing consumer on the work queue.
    assert!(js1.delete_stream("AGG").await.unwrap().success);
    eventually(
        Duration::from_secs(15),
        "sourcing durable left behind",
        || async {
            let wq = request(&nc, "$JS.API.STREAM.INFO.WQ", "")
                .await
                .ok_or("no answer")?;
            match wq["state"]["consumer_count"].as_u64() {
                Some(0) => Ok(()),
                _ => Err(wq.to_string()),
            }
        },
    )
    .await;
}

/// The seed's hub cluster aggregating an edge (issue 19 with issue 14): an R3 stream on a
/// 3-member hub sources a limits stream and a work-queue stream of a leaf's JetStream
/// domain `edge`, the leaf linked to every hub member. The member leading the aggregate
/// is killed while the edge keeps publishing; a new leader sources on: every edge message
/// exactly once, and the work queue emptied only by what the hub stored.
#[tokio::test]
async fn r3_hub_stream_sources_an_edge_domain_through_a_leader_kill() {
    let (mut ms, ports) = members(3);
    let leaf_ports: Vec<u16> = (0..3).map(|_| free_fixed_port()).collect();
    for (m, lp) in ms.iter_mut().zip(&leaf_ports) {
        m.extra = format!("leafnodes {{ listen: 127.0.0.1:{lp} }}\n");
        start(m, &ports);
    }
    wait_formed(&ms, 3);
    let edge_store = tempfile::tempdir().unwrap();
    let urls: Vec<String> = leaf_ports
        .iter()
        .map(|p| format!("nats-leaf://127.0.0.1:{p}"))
        .collect();
    let edge = ServerProcess::canopy(&format!(
        "server_name: edge\nlisten: 127.0.0.1:-1\n\
         jetstream {{ store_dir: \"{}\", domain: edge }}\n\
         leafnodes {{ remotes: [ {{ urls: [{}] }} ] }}\n",
        edge_store.path().display(),
        urls.join(", ")
    ))
    .unwrap();
    let (enc, ejs) = js(&edge).await;
    for (name, subjects, retention) in [
        ("ORDERS", "orders.>", stream::RetentionPolicy::Limits),
        ("JOBS", "jobs.>", stream::RetentionPolicy::WorkQueue),
    ] {
        ejs.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            retention,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (hnc, hjs) = js(ms[0].server()).await;
    let ext = |n: &str| stream::Source {
        name: n.into(),
        external: Some(stream::External {
            api_prefix: "$JS.edge.API".into(),
            delivery_prefix: None,
        }),
        ..Default::default()
    };
    hjs.create_stream(stream::Config {
        name: "AGG".into(),
        sources: Some(vec![ext("ORDERS"), ext("JOBS")]),
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..50 {
        publish_once(&ejs, &format!("orders.{i}"), "x").await;
        publish_once(&ejs, &format!("jobs.{i}"), "x").await;
    }
    let agg = holds(&hnc, "AGG", 100).await;
    let leader = agg["cluster"]["leader"].as_str().unwrap().to_string();
    let li = ms.iter().position(|m| m.name == leader).unwrap();
    drop((hnc, hjs));
    ms[li].proc.as_mut().unwrap().kill();
    ms[li].proc = None;
    for i in 50..150 {
        publish_once(&ejs, &format!("orders.{i}"), "x").await;
        publish_once(&ejs, &format!("jobs.{i}"), "x").await;
    }
    let other = ms.iter().find(|m| m.proc.is_some()).unwrap();
    let (hnc, hjs) = js(other.server()).await;
    let agg = holds(&hnc, "AGG", 300).await;
    assert_eq!(agg["state"]["last_seq"], 300, "{agg}");
    let jobs = request(&enc, "$JS.API.STREAM.INFO.JOBS", "").await.unwrap();
    assert_eq!(jobs["state"]["messages"], 0, "{jobs}");
    let seen = subjects_once(&hjs, "AGG", 300).await;
    assert!((0..150)
        .all(|i| seen.contains(&format!("orders.{i}")) && seen.contains(&format!("jobs.{i}"))));
}

/// A field of each of this member's routes (`/routez`).
fn route_field(s: &ServerProcess, field: &str) -> Vec<u64> {
    let rz = s.monitor("/routez").unwrap();
    rz["routes"]
        .as_array()
        .map(|rs| rs.iter().filter_map(|r| r[field].as_u64()).collect())
        .unwrap_or_default()
}

/// The messages this member received over its routes so far.
fn route_in_msgs(s: &ServerProcess) -> u64 {
    route_field(s, "in_msgs").iter().sum()
}

/// Direct gets of an R3 stream with `allow_direct` (issue 19): every replica serves them
/// through a queue group, as nats-server's do, so a request is answered exactly once and
/// by the replica on the requester's own server (no answer crosses a route).
#[tokio::test]
async fn r3_direct_gets_are_answered_once_by_the_local_replica() {
    let ms = cluster(3);
    let (_, js0) = js(ms[0].server()).await;
    js0.create_stream(stream::Config {
        name: "DG".into(),
        subjects: vec!["dg.>".into()],
        num_replicas: 3,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 1..=10 {
        publish_once(&js0, &format!("dg.{i}"), "x").await;
    }
    for m in &ms {
        let (nc, _) = js(m.server()).await;
        // Every replica has applied the ten messages and subscribed (bounded wait).
        eventually(Duration::from_secs(15), "direct get not served", || async {
            let r = nc
                .request("$JS.API.DIRECT.GET.DG.dg.10", "".into())
                .await
                .map_err(|e| e.to_string())?;
            let seq = r
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE));
            match seq.map(|v| v.as_str()) {
                Some("10") => Ok(()),
                other => Err(format!("{other:?} {:?}", r.headers)),
            }
        })
        .await;
        let got = answers(&nc, "$JS.API.DIRECT.GET.DG", r#"{"seq":3}"#).await;
        assert_eq!(got.len(), 1, "{}: {got:?}", m.name);
        let before = route_in_msgs(m.server());
        for i in 0..300 {
            let seq = i % 10 + 1;
            let r = nc
                .request(
                    "$JS.API.DIRECT.GET.DG",
                    format!(r#"{{"seq":{seq}}}"#).into(),
                )
                .await
                .unwrap();
            let h = r.headers.unwrap();
            let got = h.get(async_nats::header::NATS_SEQUENCE).unwrap();
            assert_eq!(got.as_str(), seq.to_string());
            assert_eq!(r.payload.as_ref(), b"x");
        }
        let over_routes = route_in_msgs(m.server()) - before;
        assert!(
            over_routes < 150,
            "{}: {over_routes} messages came over routes during 300 direct gets",
            m.name
        );
    }
}

/// The subscriptions on `m` to `subject` that are its own, not a route's interest
/// (`/subsz?subs=1&test=`, less the cids `/routez` names).
fn own_subs_to(m: &Member, subject: &str) -> usize {
    let routes = route_field(m.server(), "rid");
    let z = m
        .server()
        .monitor(&format!("/subsz?subs=1&limit=1000&test={subject}"))
        .unwrap();
    z["subscriptions_list"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|s| s["cid"].as_u64().is_some_and(|c| !routes.contains(&c)))
                .count()
        })
        .unwrap_or(0)
}

/// Only an R3 stream's leader subscribes the stream's subjects (as nats-server's does): a
/// publish crosses one route, to the leader, and no follower is handed it only to drop it.
/// A new leader subscribes, the old one unsubscribes.
#[tokio::test]
async fn only_the_r3_leader_subscribes_the_streams_subjects() {
    let ms = cluster(3);
    let (nc0, js0) = js(ms[0].server()).await;
    js0.create_stream(stream::Config {
        name: "LS".into(),
        subjects: vec!["ls.>".into()],
        num_replicas: 3,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    for round in 0..2 {
        let info = request(&nc0, "$JS.API.STREAM.INFO.LS", "").await.unwrap();
        let leader = info["cluster"]["leader"].as_str().unwrap().to_string();
        // Publishes from a client on every member are stored.
        for m in &ms {
            let (_nc, jsm) = js(m.server()).await;
            publish_once(&jsm, &format!("ls.{round}.{}", m.name), "x").await;
        }
        let subject = format!("ls.{round}.x");
        for m in &ms {
            let own = own_subs_to(m, &subject);
            let want = usize::from(m.name == leader);
            assert_eq!(
                own, want,
                "{} (leader {leader}): {own} own subscriptions",
                m.name
            );
        }
        if round == 0 {
            let got = answers(&nc0, "$JS.API.STREAM.LEADER.STEPDOWN.LS", "").await;
            assert_eq!(got.len(), 1, "{got:?}");
            eventually(Duration::from_secs(20), "no new leader", || async {
                let i = request(&nc0, "$JS.API.STREAM.INFO.LS", "")
                    .await
                    .ok_or("no answer")?;
                match i["cluster"]["leader"].as_str() {
                    Some(l) if l != leader => Ok(()),
                    _ => Err(i.to_string()),
                }
            })
            .await;
        }
    }
    let info = request(&nc0, "$JS.API.STREAM.INFO.LS", "").await.unwrap();
    assert_eq!(info["state"]["messages"], 6, "{info}");
    // A new subject: the leader subscribes it; the direct gets (their own subscriptions)
    // are still served by every member after the update.
    let mut cfg = info["config"].clone();
    cfg["subjects"] = serde_json::json!(["ls.>", "lt.>"]);
    let got = answers(&nc0, "$JS.API.STREAM.UPDATE.LS", &cfg.to_string()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0]["error"].is_null(), "{got:?}");
    publish_once(&js0, "lt.1", "y").await;
    for m in &ms {
        let (nc, _) = js(m.server()).await;
        eventually(Duration::from_secs(15), "direct get not served", || async {
            let r = nc
                .request("$JS.API.DIRECT.GET.LS", r#"{"last_by_subj":"lt.1"}"#.into())
                .await
                .map_err(|e| format!("{}: {e}", m.name))?;
            match r.payload.as_ref() {
                b"y" => Ok(()),
                other => Err(format!("{}: {other:?} {:?}", m.name, r.headers)),
            }
        })
        .await;
    }
}
