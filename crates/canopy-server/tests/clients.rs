//! The official async-nats client against the real binary.

#![allow(clippy::unwrap_used)]

mod client_sync;

use client_sync::sync;
use std::time::Duration;

use canopy_testkit::ServerProcess;
use futures::StreamExt;

fn server() -> ServerProcess {
    ServerProcess::canopy("listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n").expect("start")
}

#[tokio::test]
async fn publish_subscribe_request_reply() {
    let s = server();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let mut sub = nc.subscribe("greet.*").await.unwrap();
    nc.flush().await.unwrap();
    nc.publish("greet.joe", "hello".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject.as_str(), "greet.joe");
    assert_eq!(&m.payload[..], b"hello");

    let responder = async_nats::connect(s.url()).await.unwrap();
    let mut svc = responder.subscribe("svc.echo").await.unwrap();
    sync(&responder).await;
    tokio::spawn(async move {
        while let Some(req) = svc.next().await {
            if let Some(reply) = req.reply {
                let _ = responder.publish(reply, req.payload).await;
            }
        }
    });
    let resp = nc.request("svc.echo", "ping".into()).await.unwrap();
    assert_eq!(&resp.payload[..], b"ping");
}

#[tokio::test]
async fn no_responders_error() {
    let s = server();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let err = nc.request("nobody.home", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test]
async fn headers_round_trip() {
    let s = server();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let mut sub = nc.subscribe("h").await.unwrap();
    nc.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Trace", "abc");
    nc.publish_with_headers("h", headers, "body".into())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.headers.unwrap().get("X-Trace").unwrap().as_str(), "abc");
    assert_eq!(&m.payload[..], b"body");
}

#[tokio::test]
async fn queue_groups_share_work() {
    let s = server();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let mut a = nc.queue_subscribe("jobs", "w".into()).await.unwrap();
    let mut b = nc.queue_subscribe("jobs", "w".into()).await.unwrap();
    nc.flush().await.unwrap();
    for i in 0..200 {
        nc.publish("jobs", format!("{i}").into()).await.unwrap();
    }
    nc.flush().await.unwrap();
    let mut got = 0;
    let (mut na, mut nb) = (0, 0);
    while got < 200 {
        tokio::select! {
            Some(_) = a.next() => { na += 1; got += 1; }
            Some(_) = b.next() => { nb += 1; got += 1; }
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("timed out at {got}"),
        }
    }
    assert_eq!(na + nb, 200);
    assert!(
        na > 0 && nb > 0,
        "random choice should reach both members: {na}/{nb}"
    );
    // Nothing more arrives.
    let extra = tokio::time::timeout(Duration::from_millis(200), a.next()).await;
    assert!(extra.is_err());
}

#[tokio::test]
async fn monitoring_counts_move() {
    let s = server();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let _sub = nc.subscribe("m").await.unwrap();
    for _ in 0..10 {
        nc.publish("m", "12345".into()).await.unwrap();
    }
    sync(&nc).await;
    let s2 = s.http_port;
    let varz = tokio::task::spawn_blocking(move || {
        canopy_testkit::http_get(s2.unwrap(), "/varz").unwrap().1
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&varz).unwrap();
    assert!(v["in_msgs"].as_u64().unwrap() >= 10);
    assert!(v["in_bytes"].as_u64().unwrap() >= 50);
    assert_eq!(v["connections"], 1);
    // The system account's internal subscriptions count too, as in nats-server.
    assert!(v["subscriptions"].as_u64().unwrap() >= 1);
    let connz = s.monitor("/connz?subs=1").unwrap();
    assert_eq!(connz["num_connections"], 1);
    let c = &connz["connections"][0];
    // "m", and possibly the inbox `sync` used until its UNSUB is processed.
    assert!(c["subscriptions"].as_u64().unwrap() >= 1);
    let list = c["subscriptions_list"].as_array().unwrap();
    assert!(list.iter().any(|x| x == "m"), "{list:?}");
    assert!(c["in_msgs"].as_u64().unwrap() >= 10);
    assert_eq!(c["lang"], "rust");
    assert_eq!(s.monitor("/healthz").unwrap()["status"], "ok");
    let subsz = s.monitor("/subsz?subs=1&acc=%24G").unwrap();
    assert!(subsz["num_subscriptions"].as_u64().unwrap() >= 1);
    let list = subsz["subscriptions_list"].as_array().unwrap();
    assert!(list.iter().any(|x| x["subject"] == "m"), "{list:?}");
}
