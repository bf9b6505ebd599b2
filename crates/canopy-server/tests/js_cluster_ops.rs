//! Clustered JetStream operations: stream and consumer leader step-downs, moving a copy
//! with `STREAM.PEER.REMOVE`, `num_replicas` changes through `STREAM.UPDATE` (R1 → R3 →
//! R1), `SERVER.REMOVE`, and the "stream is offline" answer.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use serde_json::{json, Value};

mod js_cluster_common;
use js_cluster_common::*;

/// Creates a stream (`$JS.API.STREAM.CREATE`) and returns the answer.
async fn create(nc: &async_nats::Client, cfg: Value) -> Value {
    let name = cfg["name"].as_str().unwrap().to_string();
    let subject = format!("$JS.API.STREAM.CREATE.{name}");
    // Sent again when unanswered (a create of the same configuration is idempotent).
    let got = eventually(Duration::from_secs(30), "stream create", || async {
        request(nc, &subject, &cfg.to_string())
            .await
            .filter(|v| v["error"]["err_code"] != 10008)
            .ok_or_else(|| "no answer".to_string())
    })
    .await;
    assert!(got.get("error").is_none(), "{got}");
    got
}

/// Publishes `n` messages (payloads `m0`, `m1`, …), each acknowledged and stored once.
async fn publish(js: &async_nats::jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        publish_once(js, subject, &format!("m{i}")).await;
    }
}

/// The stream's info once its group has a leader and `replicas` other current voters.
async fn settled(nc: &async_nats::Client, stream: &str, replicas: usize) -> Value {
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    eventually(Duration::from_secs(30), "stream did not settle", || async {
        let info = request(nc, &subject, "").await.ok_or("no answer")?;
        let reps = info["cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ok = info["cluster"]["leader"].is_string()
            && reps.len() == replicas
            && reps
                .iter()
                .all(|r| r["current"] == true && r.get("observer").is_none());
        if ok {
            Ok(info)
        } else {
            Err(info.to_string())
        }
    })
    .await
}

/// A durable pull consumer `D` on `stream` that has fetched and acknowledged (double ack:
/// the ack is committed when it returns) its first `n` messages.
async fn durable_acking(
    js: &async_nats::jetstream::Context,
    stream: &str,
    n: usize,
) -> consumer::PullConsumer {
    let s = js.get_stream(stream).await.unwrap();
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("D".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = c.fetch().max_messages(n).messages().await.unwrap();
    while let Some(m) = got.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    c
}

/// Sends `$JS.API.<api>`: exactly one answer, `{"type": …<kind>_response, "success": true}`.
async fn succeeds(nc: &async_nats::Client, api: &str, body: &str, kind: &str) {
    let got = answers(nc, &format!("$JS.API.{api}"), body).await;
    assert_eq!(got.len(), 1, "{api}: {got:?}");
    let t = format!("io.nats.jetstream.api.v1.{kind}_response");
    assert_eq!(got[0]["type"], t.as_str(), "{api}: {got:?}");
    assert_eq!(got[0]["success"], true, "{api}: {got:?}");
}

/// Sends `<kind>.LEADER.STEPDOWN.<what>` (one success answer of the right type) and
/// returns the `info` answer (`$JS.API.<info>`) once it names another leader.
async fn stepdown(nc: &async_nats::Client, kind: &str, what: &str, info: &str) -> Value {
    let info = format!("$JS.API.{info}");
    let first = request(nc, &info, "").await.unwrap();
    let before = first["cluster"]["leader"].as_str().unwrap().to_string();
    let t = format!("{}_leader_stepdown", kind.to_lowercase());
    succeeds(nc, &format!("{kind}.LEADER.STEPDOWN.{what}"), "", &t).await;
    eventually(
        Duration::from_secs(20),
        "the leader did not move",
        || async {
            let i = request(nc, &info, "").await.ok_or("no answer")?;
            match i["cluster"]["leader"].as_str() {
                Some(l) if l != before => Ok(i),
                _ => Err(i.to_string()),
            }
        },
    )
    .await
}

/// Waits until only the stream's current hosts (per `info`) hold its directory.
async fn copies_only_on(ms: &[Member], stream: &str, info: &Value) {
    let hosts: Vec<String> = replica_names(info)
        .into_iter()
        .chain([leader_of(info)])
        .collect();
    for m in ms {
        let dir = m.store.path().join("jetstream/$G/streams").join(stream);
        let host = hosts.contains(&m.name);
        eventually(Duration::from_secs(10), "copies", || async {
            if dir.exists() == host {
                Ok(())
            } else {
                Err(format!("{}: {} exists: {}", m.name, dir.display(), !host))
            }
        })
        .await;
    }
}

fn leader_of(info: &Value) -> String {
    info["cluster"]["leader"].as_str().unwrap().to_string()
}

fn replica_names(info: &Value) -> Vec<String> {
    let mut v: Vec<String> = info["cluster"]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_stream_stepdown_moves_the_leader_and_keeps_every_acked_message() {
    let ms = cluster(3);
    let (nc, js) = js(ms[0].server()).await;
    create(
        &nc,
        json!({"name": "SD", "subjects": ["sd.>"], "num_replicas": 3}),
    )
    .await;
    publish(&js, "sd.a", 20).await;
    settled(&nc, "SD", 2).await;
    stepdown(&nc, "STREAM", "SD", "STREAM.INFO.SD").await;
    publish(&js, "sd.b", 5).await;
    let info = settled(&nc, "SD", 2).await;
    assert_eq!(info["state"]["messages"], 25, "{info}");
    assert_eq!(info["state"]["last_seq"], 25, "{info}");
    // An R1 stream has no group to hand over: success, as nats-server answers.
    create(&nc, json!({"name": "ONE", "subjects": ["one"]})).await;
    let one = request(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.ONE", "").await;
    assert_eq!(
        one.as_ref().map(|v| v["success"].clone()),
        Some(json!(true)),
        "{one:?}"
    );
    let none = request(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.NOPE", "").await;
    assert_eq!(none.unwrap()["error"]["err_code"], 10059);
    // A preferred leader that is not a member is refused (10005).
    let bad = request(
        &nc,
        "$JS.API.STREAM.LEADER.STEPDOWN.SD",
        r#"{"placement":{"preferred":"nobody"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(bad["error"]["err_code"], 10005, "{bad}");
}

#[tokio::test]
async fn a_consumer_stepdown_hands_the_stream_group_over_and_keeps_the_ack_floor() {
    let ms = cluster(3);
    let (nc, js) = js(ms[1].server()).await;
    create(
        &nc,
        json!({"name": "CS", "subjects": ["cs.>"], "num_replicas": 3}),
    )
    .await;
    publish(&js, "cs.x", 10).await;
    durable_acking(&js, "CS", 4).await;
    settled(&nc, "CS", 2).await;
    let info = stepdown(&nc, "CONSUMER", "CS.D", "CONSUMER.INFO.CS.D").await;
    assert_eq!(info["ack_floor"]["stream_seq"], 4, "{info}");
    assert_eq!(info["num_pending"], 6, "{info}");
    let none = request(&nc, "$JS.API.CONSUMER.LEADER.STEPDOWN.CS.NOPE", "").await;
    assert_eq!(none.unwrap()["error"]["err_code"], 10014);
}

/// `CONSUMER.PAUSE` on an R3 stream is committed with the group: the pause holds on the
/// next leader, and a resume does too.
#[tokio::test]
async fn a_consumer_pause_survives_a_leader_change() {
    let ms = cluster(3);
    let (nc, js) = js(ms[2].server()).await;
    create(
        &nc,
        json!({"name": "PZ", "subjects": ["pz.>"], "num_replicas": 3}),
    )
    .await;
    publish(&js, "pz.x", 3).await;
    durable_acking(&js, "PZ", 1).await;
    settled(&nc, "PZ", 2).await;
    let until = "2099-01-01T00:00:00Z";
    let p = request(
        &nc,
        "$JS.API.CONSUMER.PAUSE.PZ.D",
        &json!({ "pause_until": until }).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(p["paused"], true, "{p}");
    assert!(
        p["pause_until"].as_str().unwrap().starts_with("2099-01-01"),
        "{p}"
    );
    let info = stepdown(&nc, "STREAM", "PZ", "CONSUMER.INFO.PZ.D").await;
    assert_eq!(
        info["paused"], true,
        "the new leader lost the pause: {info}"
    );
    assert!(
        info["config"]["pause_until"]
            .as_str()
            .unwrap()
            .starts_with("2099-01-01"),
        "{info}"
    );
    // Resumed (no time) on this leader, and still resumed on the next one.
    let r = request(&nc, "$JS.API.CONSUMER.PAUSE.PZ.D", "{}")
        .await
        .unwrap();
    assert_eq!(r["paused"], false, "{r}");
    let info = stepdown(&nc, "STREAM", "PZ", "CONSUMER.INFO.PZ.D").await;
    assert_ne!(info["paused"], true, "{info}");
    assert!(info["config"].get("pause_until").is_none(), "{info}");
}

#[tokio::test]
async fn a_peer_remove_moves_the_copy_to_another_member() {
    let ms = cluster(4);
    let (nc, js) = js(ms[0].server()).await;
    let created = create(
        &nc,
        json!({"name": "PR", "subjects": ["pr"], "num_replicas": 3}),
    )
    .await;
    publish(&js, "pr", 10).await;
    let info = settled(&nc, "PR", 2).await;
    let mut peers = replica_names(&info);
    peers.push(leader_of(&info));
    let spare = ms
        .iter()
        .map(|m| m.name.clone())
        .find(|n| !peers.contains(n))
        .unwrap();
    // A follower leaves; the fourth member takes its place.
    let gone = replica_names(&info)[0].clone();
    // An R1 stream's copy cannot move without its data: 10075.
    let one = create(&nc, json!({"name": "ONE", "subjects": ["one"]})).await;
    let body = json!({"peer": leader_of(&one)}).to_string();
    let r = request(&nc, "$JS.API.STREAM.PEER.REMOVE.ONE", &body)
        .await
        .unwrap();
    assert_eq!(r["error"]["err_code"], 10075, "{r}");
    let errs = [
        ("", 10003),
        (r#"{"peer":"nobody"}"#, 10040),
        (r#"{"peer":""}"#, 10003),
    ];
    for (body, code) in errs {
        let r = request(&nc, "$JS.API.STREAM.PEER.REMOVE.PR", body)
            .await
            .unwrap();
        assert_eq!(r["error"]["err_code"], code, "{body}: {r}");
    }
    let body = json!({"peer": gone}).to_string();
    succeeds(&nc, "STREAM.PEER.REMOVE.PR", &body, "stream_remove_peer").await;
    let info = moved(&nc, "PR", &gone, &spare).await;
    assert_eq!(info["state"]["messages"], 10, "{info}");
    // The new copy holds the data: it can lead.
    let to = json!({"placement": {"preferred": spare}}).to_string();
    eventually(
        Duration::from_secs(30),
        "the new member did not lead",
        || async {
            let i = request(&nc, "$JS.API.STREAM.INFO.PR", "")
                .await
                .ok_or("no answer")?;
            if i["cluster"]["leader"] == spare.as_str() {
                return Ok(());
            }
            let r = request(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.PR", &to).await;
            Err(format!("{i} / {r:?}"))
        },
    )
    .await;
    let i = settled(&nc, "PR", 2).await;
    assert_eq!(i["state"]["messages"], 10, "{i}");
    assert!(created["cluster"]["leader"].is_string());
    // Removing the leader's copy: it hands the group over, then leaves.
    let body = json!({"peer": spare}).to_string();
    succeeds(&nc, "STREAM.PEER.REMOVE.PR", &body, "stream_remove_peer").await;
    let info = moved(&nc, "PR", &spare, &gone).await;
    assert_eq!(info["state"]["messages"], 10, "{info}");
    publish(&js, "pr", 1).await;
    let info = settled(&nc, "PR", 2).await;
    assert_eq!(info["state"]["messages"], 11, "{info}");
}

/// Waits until `stream`'s copies (leader and current replicas) include `to` and not `from`.
async fn moved(nc: &async_nats::Client, stream: &str, from: &str, to: &str) -> Value {
    eventually(Duration::from_secs(30), "the copy did not move", || async {
        let i = settled(nc, stream, 2).await;
        let mut all = replica_names(&i);
        all.push(leader_of(&i));
        if all.iter().any(|n| n == to) && !all.iter().any(|n| n == from) {
            Ok(i)
        } else {
            Err(i.to_string())
        }
    })
    .await
}

#[tokio::test]
async fn scaling_r1_to_r3_and_back_keeps_every_message_and_the_ack_floor() {
    let ms = cluster(3);
    let (nc, js) = js(ms[2].server()).await;
    let cfg = stream::Config {
        name: "SC".into(),
        subjects: vec!["sc.>".into()],
        ..Default::default()
    };
    js.create_stream(cfg.clone()).await.unwrap();
    publish(&js, "sc.a", 20).await;
    let c = durable_acking(&js, "SC", 5).await;
    // R1 → R3.
    let up = js
        .update_stream(stream::Config {
            num_replicas: 3,
            ..cfg.clone()
        })
        .await
        .unwrap();
    assert_eq!(up.config.num_replicas, 3);
    let info = settled(&nc, "SC", 2).await;
    assert_eq!(info["state"]["messages"], 20, "{info}");
    // Every copy holds the data: each new leader has all of it and the consumer's state.
    for round in 0..2 {
        settled(&nc, "SC", 2).await;
        let info = stepdown(&nc, "STREAM", "SC", "STREAM.INFO.SC").await;
        assert_eq!(info["state"]["messages"], 20, "round {round}: {info}");
        let ci = eventually(Duration::from_secs(10), "consumer info", || async {
            request(&nc, "$JS.API.CONSUMER.INFO.SC.D", "")
                .await
                .filter(|v| v.get("error").is_none())
                .ok_or_else(|| "no answer".to_string())
        })
        .await;
        assert_eq!(ci["ack_floor"]["stream_seq"], 5, "round {round}: {ci}");
    }
    publish(&js, "sc.b", 1).await;
    // R3 → R1: the leader's copy stays, as a single-server stream.
    let down = js.update_stream(cfg.clone()).await.unwrap();
    assert_eq!(down.config.num_replicas, 1);
    let info = settled(&nc, "SC", 0).await;
    assert_eq!(info["state"]["messages"], 21, "{info}");
    assert_eq!(info["config"]["num_replicas"], 1, "{info}");
    copies_only_on(&ms, "SC", &info).await;
    let ci = request(&nc, "$JS.API.CONSUMER.INFO.SC.D", "")
        .await
        .unwrap();
    assert_eq!(ci["ack_floor"]["stream_seq"], 5, "{ci}");
    assert_eq!(ci["num_pending"], 16, "{ci}");
    // The consumer goes on from its ack floor.
    let mut rest = c.fetch().max_messages(16).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = rest.next().await {
        let m = m.unwrap();
        m.ack().await.unwrap();
        n += 1;
    }
    assert_eq!(n, 16);
    // A memory stream cannot cross between R1 and R>1 (its data would not survive).
    let mem = json!({"name": "MEM", "subjects": ["mem"], "storage": "memory"});
    create(&nc, mem.clone()).await;
    let mut up = mem;
    up["num_replicas"] = json!(3);
    let r = request(&nc, "$JS.API.STREAM.UPDATE.MEM", &up.to_string())
        .await
        .unwrap();
    assert_eq!(r["error"]["err_code"], 10061, "{r}");
}

#[tokio::test]
async fn server_remove_drops_a_dead_member_and_moves_its_copies() {
    let (mut ms, ports) = members(4);
    let accounts = "accounts {\n  SYS { users: [{user: sys, password: sys}] }\n  \
                    APP { jetstream: enabled, users: [{user: app, password: app}] }\n}\n\
                    system_account: SYS\nno_auth_user: app\n";
    for m in &mut ms {
        m.extra = accounts.to_string();
        start(m, &ports);
    }
    let meta_leader = wait_formed(&ms, 4);
    let (nc, js) = js(ms[0].server()).await;
    create(
        &nc,
        json!({"name": "SR", "subjects": ["sr"], "num_replicas": 3}),
    )
    .await;
    publish(&js, "sr", 7).await;
    let info = settled(&nc, "SR", 2).await;
    // A follower of the stream that is not the meta leader dies.
    let victim = replica_names(&info)
        .into_iter()
        .find(|n| *n != meta_leader)
        .unwrap();
    let vi = ms.iter().position(|m| m.name == victim).unwrap();
    ms[vi].proc.as_mut().unwrap().kill();
    ms[vi].proc = None;
    let live = ms.iter().find(|m| m.proc.is_some()).unwrap();
    let sys = async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys".into())
        .connect(live.server().url())
        .await
        .unwrap();
    // Not from an ordinary account (nats-server stays silent), nor for a stranger.
    let app = answers(
        &nc,
        "$JS.API.SERVER.REMOVE",
        &json!({"peer": victim}).to_string(),
    )
    .await;
    assert!(app.is_empty(), "{app:?}");
    let unknown = request(&sys, "$JS.API.SERVER.REMOVE", r#"{"peer":"nobody"}"#)
        .await
        .unwrap();
    assert_eq!(unknown["error"]["err_code"], 10044, "{unknown}");
    let body = json!({"peer": victim}).to_string();
    succeeds(&sys, "SERVER.REMOVE", &body, "meta_server_remove").await;
    wait_formed(&ms, 3);
    let info = eventually(
        Duration::from_secs(30),
        "the dead member's copy did not move",
        || async {
            let i = settled(&nc, "SR", 2).await;
            let mut all = replica_names(&i);
            all.push(leader_of(&i));
            if all.contains(&victim) {
                Err(i.to_string())
            } else {
                Ok(i)
            }
        },
    )
    .await;
    assert_eq!(info["state"]["messages"], 7, "{info}");
    // The removal is in the meta group's state, with the server id of the removed run
    // (none: it was down); when the server comes back it is admitted again, as nats-server
    // re-adds a removed server that returns, and the stream stays where it moved.
    start(&mut ms[vi], &ports);
    wait_formed(&ms, 4);
    let info = settled(&nc, "SR", 2).await;
    assert!(!replica_names(&info).contains(&victim), "{info}");
    assert_eq!(info["state"]["messages"], 7, "{info}");
}

#[tokio::test]
async fn a_stream_whose_only_host_is_down_is_answered_offline() {
    let mut ms = cluster(3);
    let (nc, _js) = js(ms[0].server()).await;
    let created = create(&nc, json!({"name": "OFF", "subjects": ["off"]})).await;
    let c = request(
        &nc,
        "$JS.API.CONSUMER.DURABLE.CREATE.OFF.C",
        r#"{"stream_name":"OFF","config":{"durable_name":"C","ack_policy":"explicit"}}"#,
    )
    .await
    .unwrap();
    assert!(c.get("error").is_none(), "{c}");
    let host = leader_of(&created);
    // The meta leader answers for it: make sure that is another member.
    if wait_formed(&ms, 3) == host {
        let down = request(&nc, "$JS.API.META.LEADER.STEPDOWN", "").await;
        let m = &ms[0];
        eventually(
            Duration::from_secs(20),
            "the meta leader did not move",
            || async {
                match m.meta()["leader"].as_str() {
                    Some(l) if l != host => Ok(()),
                    _ => Err(format!("{} / {down:?}", m.meta())),
                }
            },
        )
        .await;
    }
    let hi = ms.iter().position(|m| m.name == host).unwrap();
    ms[hi].proc.as_mut().unwrap().kill();
    ms[hi].proc = None;
    let live = ms.iter().find(|m| m.proc.is_some()).unwrap();
    let (nc, _js) = js(live.server()).await;
    let got = eventually(Duration::from_secs(20), "no offline answer", || async {
        let got = answers(&nc, "$JS.API.STREAM.INFO.OFF", "").await;
        if got.len() == 1 && got[0]["error"]["err_code"] == 10118 {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!(
        got[0]["error"]["description"], "stream is offline",
        "{got:?}"
    );
    assert_eq!(got[0]["error"]["code"], 500, "{got:?}");
    // The consumers are not in the meta state (they live with the stream): whatever the
    // consumer, its info is offline too.
    let ci = answers(&nc, "$JS.API.CONSUMER.INFO.OFF.C", "").await;
    assert_eq!(ci.len(), 1, "{ci:?}");
    assert_eq!(ci[0]["error"]["err_code"], 10119, "{ci:?}");
}

#[tokio::test]
async fn scaling_r3_to_r5_and_back_keeps_every_message() {
    let ms = cluster(5);
    let (nc, js) = js(ms[3].server()).await;
    let cfg = json!({"name": "FIVE", "subjects": ["five"], "num_replicas": 3});
    create(&nc, cfg.clone()).await;
    publish(&js, "five", 12).await;
    settled(&nc, "FIVE", 2).await;
    let up = request(
        &nc,
        "$JS.API.STREAM.UPDATE.FIVE",
        &json!({"num_replicas": 5, "name": "FIVE", "subjects": ["five"]}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(up["config"]["num_replicas"], 5, "{up}");
    let info = settled(&nc, "FIVE", 4).await;
    assert_eq!(info["state"]["messages"], 12, "{info}");
    publish(&js, "five", 1).await;
    let down = request(&nc, "$JS.API.STREAM.UPDATE.FIVE", &cfg.to_string())
        .await
        .unwrap();
    assert_eq!(down["config"]["num_replicas"], 3, "{down}");
    let info = settled(&nc, "FIVE", 2).await;
    assert_eq!(info["state"]["messages"], 13, "{info}");
    // The copies of the two members that left are gone from their stores.
    copies_only_on(&ms, "FIVE", &info).await;
}

/// An R3 mirror's record of its origin's identity is replicated (`Op::SourceIdent`): the
/// origin is deleted, the mirror's leader steps down, and the origin is created again.
/// The new leader, which never ran the mirror, still knows the identity it mirrored and
/// says the origin was recreated instead of mirroring the new one from the old position.
#[tokio::test]
async fn an_r3_mirror_notices_an_origin_recreated_across_a_leader_change() {
    let ms = cluster(3);
    let (nc, js0) = js(ms[0].server()).await;
    create(&nc, json!({"name": "ORIG", "subjects": ["orig.>"]})).await;
    create(
        &nc,
        json!({"name": "MIR", "mirror": {"name": "ORIG"}, "num_replicas": 3}),
    )
    .await;
    publish(&js0, "orig.a", 5).await;
    let mir = eventually(Duration::from_secs(30), "mirror not filled", || async {
        let i = request(&nc, "$JS.API.STREAM.INFO.MIR", "")
            .await
            .ok_or("no answer")?;
        let current = i["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["current"] == true));
        if i["state"]["messages"] == 5 && current {
            Ok(i)
        } else {
            Err(i.to_string())
        }
    })
    .await;
    let first_leader = mir["cluster"]["leader"].as_str().unwrap().to_string();

    succeeds(&nc, "STREAM.DELETE.ORIG", "", "stream_delete").await;
    let moved = stepdown(&nc, "STREAM", "MIR", "STREAM.INFO.MIR").await;
    assert_ne!(
        moved["cluster"]["leader"].as_str(),
        Some(first_leader.as_str())
    );
    create(&nc, json!({"name": "ORIG", "subjects": ["orig.>"]})).await;
    publish(&js0, "orig.b", 3).await;

    eventually(
        Duration::from_secs(30),
        "the new leader did not notice the recreated origin",
        || async {
            let i = request(&nc, "$JS.API.STREAM.INFO.MIR", "")
                .await
                .ok_or("no answer")?;
            let err = i["mirror"]["error"]["description"].as_str().unwrap_or("");
            if err.contains("recreated") {
                assert_eq!(i["state"]["messages"], 5, "{i}");
                Ok(())
            } else {
                Err(i.to_string())
            }
        },
    )
    .await;
}
