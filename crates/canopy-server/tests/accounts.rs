//! Accounts: isolation, stream and service imports (two-sided: what must arrive arrives,
//! what must not does not), leaf account binding, and the system account's requests.

#![allow(clippy::unwrap_used)]

mod client_sync;

use client_sync::sync;
use std::time::Duration;

use canopy_testkit::{assert_eventually, free_fixed_port, ServerProcess};
use futures::StreamExt;

async fn connect(s: &ServerProcess, user: &str, pass: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(s.url())
        .await
        .unwrap()
}

/// Collects what arrives on `sub`: waits up to 5s for `expected` messages, then `quiet`
/// more to catch anything that must not arrive.
async fn collect(
    sub: &mut async_nats::Subscriber,
    expected: usize,
    quiet: Duration,
) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < expected {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) if m.subject.starts_with("_INBOX.") => {}
            Ok(Some(m)) => got.push(m.subject.to_string()),
            _ => break,
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
        if !m.subject.starts_with("_INBOX.") {
            got.push(m.subject.to_string());
        }
    }
    got
}

const SECURE: &str = r#"
listen: 127.0.0.1:-1
http: 127.0.0.1:-1
accounts {
  SYS: { users: [ { user: admin, password: adminpw } ] }
  US_WEST: {
    users: [ { user: us, password: uspw } ]
    exports: [ { stream: "events.>" }, { service: "api.>" } ]
    imports: [ { stream: { account: EU, subject: "eu.events.>" } } ]
  }
  EU: {
    users: [ { user: eu, password: eupw } ]
    exports: [ { stream: "eu.events.>" } ]
    imports: [
      { stream: { account: US_WEST, subject: "events.>" } }
      { service: { account: US_WEST, subject: "api.>" }, to: "us.api.>" }
    ]
  }
}
system_account: SYS
"#;

#[tokio::test]
async fn stream_imports_cross_only_what_is_imported() {
    let s = ServerProcess::canopy(SECURE).unwrap();
    let us = connect(&s, "us", "uspw").await;
    let eu = connect(&s, "eu", "eupw").await;
    let mut us_all = us.subscribe(">").await.unwrap();
    let mut eu_all = eu.subscribe(">").await.unwrap();
    sync(&us).await;
    sync(&eu).await;
    us.publish("events.login", "1".into()).await.unwrap();
    us.publish("private.x", "2".into()).await.unwrap();
    eu.publish("eu.events.signup", "3".into()).await.unwrap();
    eu.publish("eu.private", "4".into()).await.unwrap();
    us.flush().await.unwrap();
    eu.flush().await.unwrap();
    let mut us_got = collect(&mut us_all, 3, Duration::from_millis(300)).await;
    let mut eu_got = collect(&mut eu_all, 3, Duration::from_millis(300)).await;
    us_got.sort();
    eu_got.sort();
    // Each side sees its own traffic plus exactly the imported stream of the other.
    assert_eq!(
        us_got,
        vec!["eu.events.signup", "events.login", "private.x"]
    );
    assert_eq!(
        eu_got,
        vec!["eu.events.signup", "eu.private", "events.login"]
    );
}

#[tokio::test]
async fn service_import_routes_the_reply_back() {
    let s = ServerProcess::canopy(SECURE).unwrap();
    let us = connect(&s, "us", "uspw").await;
    let mut svc = us.subscribe("api.time").await.unwrap();
    sync(&us).await;
    let responder = us.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            // The requester's inbox is not visible in US_WEST: the reply is private.
            let reply = m.reply.unwrap();
            assert!(reply.starts_with("_R_."), "{reply}");
            responder.publish(reply, "noon".into()).await.unwrap();
        }
    });
    let eu = connect(&s, "eu", "eupw").await;
    let resp = eu.request("us.api.time", "?".into()).await.unwrap();
    assert_eq!(&resp.payload[..], b"noon");
    // The service is not reachable under its exporter's name from EU.
    let err = tokio::time::timeout(Duration::from_secs(2), eu.request("api.time", "?".into()))
        .await
        .unwrap();
    assert!(err.is_err());
}

#[test]
fn unauthorized_import_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.conf");
    std::fs::write(
        &p,
        "accounts {\n  A: { exports: [ { stream: \"a.>\" } ] }\n  B: { imports: [ { stream: { account: A, subject: \"secret.>\" } } ] }\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(canopy_testkit::canopy_bin())
        .args(["-c", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:3:"), "{err}");
    assert!(err.contains("not authorized"), "{err}");
}

#[tokio::test]
async fn mutual_imports_do_not_loop() {
    let s = ServerProcess::canopy(
        r#"
listen: 127.0.0.1:-1
accounts {
  A: { users: [{user: a, password: a}], exports: [{stream: "x.>"}], imports: [{stream: {account: B, subject: "x.>"}}] }
  B: { users: [{user: b, password: b}], exports: [{stream: "x.>"}], imports: [{stream: {account: A, subject: "x.>"}}] }
}
"#,
    )
    .unwrap();
    let a = connect(&s, "a", "a").await;
    let b = connect(&s, "b", "b").await;
    let mut sa = a.subscribe("x.>").await.unwrap();
    let mut sb = b.subscribe("x.>").await.unwrap();
    sync(&a).await;
    sync(&b).await;
    a.publish("x.1", "hi".into()).await.unwrap();
    a.flush().await.unwrap();
    assert_eq!(
        collect(&mut sa, 1, Duration::from_millis(300)).await.len(),
        1
    );
    assert_eq!(
        collect(&mut sb, 1, Duration::from_millis(300)).await.len(),
        1
    );
}

#[tokio::test]
async fn system_account_answers_server_ping() {
    let s = ServerProcess::canopy(SECURE).unwrap();
    let admin = connect(&s, "admin", "adminpw").await;
    let resp = admin
        .request("$SYS.REQ.SERVER.PING", "".into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap();
    assert!(v["server"]["id"].as_str().unwrap().starts_with('N'));
    assert!(v["statsz"]["connections"].as_u64().unwrap() >= 1);
    let resp = admin
        .request("$SYS.REQ.SERVER.PING.VARZ", "{\"server_name\":\"\"}".into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(v["data"]["server_id"], v["server"]["id"]);
    let id = v["server"]["id"].as_str().unwrap().to_string();
    let resp = admin
        .request(format!("$SYS.REQ.SERVER.{id}.CONNZ"), "".into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap();
    assert!(v["data"]["num_connections"].as_u64().unwrap() >= 1);
    // Other accounts cannot reach the system account's subjects.
    let us = connect(&s, "us", "uspw").await;
    let err = tokio::time::timeout(
        Duration::from_secs(2),
        us.request("$SYS.REQ.SERVER.PING", "".into()),
    )
    .await
    .unwrap();
    assert!(err.is_err());
}

/// The seed's hub-with-filtering: a leaf authenticated as `edge_leaf` lands in
/// EDGE_SENSORS and sees that account's subjects plus CORE's imported alerts, nothing else;
/// a leaf without credentials is refused rather than landing in `$G`.
#[tokio::test]
async fn leaf_bound_to_account() {
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        r#"
listen: 127.0.0.1:-1
http: 127.0.0.1:-1
accounts {{
  EDGE_SENSORS: {{
    users: [{{ user: edge_user, password: secret }}]
    exports: [ {{ stream: "sensors.>" }}, {{ stream: "commands.edge.>" }} ]
    imports: [ {{ stream: {{ account: CORE, subject: "alerts.critical.>" }} }} ]
  }}
  CORE: {{
    users: [{{ user: core_user, password: secret }}]
    exports: [ {{ stream: ">" }} ]
  }}
}}
leafnodes {{
  listen: "127.0.0.1:{lp}"
  authorization {{
    users: [
      {{ user: edge_leaf, password: edge_secret, account: EDGE_SENSORS }}
      {{ user: core_leaf, password: core_secret, account: CORE }}
    ]
  }}
}}
"#
    ))
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://edge_leaf:edge_secret@127.0.0.1:{lp}\" }} ] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        hub.monitor("/leafz")
            .map(|v| v["leafs"][0]["account"] == "EDGE_SENSORS")
            .unwrap_or(false),
        "leaf not bound to EDGE_SENSORS: {}",
        hub.log()
    );
    let lc = async_nats::connect(leaf.url()).await.unwrap();
    let mut all = lc.subscribe(">").await.unwrap();
    sync(&lc).await;
    let edge = connect(&hub, "edge_user", "secret").await;
    let core = connect(&hub, "core_user", "secret").await;
    // Wait until the leaf's interest reached the hub.
    assert_eventually!(
        Duration::from_secs(5),
        hub.monitor("/leafz?subs=1")
            .map(|v| v["leafs"][0]["subscriptions_list"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == ">")))
            .unwrap_or(false),
        "leaf interest missing"
    );
    edge.publish("sensors.t1", "21C".into()).await.unwrap();
    core.publish("alerts.critical.fire", "!".into())
        .await
        .unwrap();
    core.publish("core.internal", "no".into()).await.unwrap();
    edge.flush().await.unwrap();
    core.flush().await.unwrap();
    let mut got = collect(&mut all, 2, Duration::from_millis(300)).await;
    got.sort();
    assert_eq!(got, vec!["alerts.critical.fire", "sensors.t1"]);

    // No credentials: refused, never bound to $G.
    let anon = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{lp}\" }} ] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        hub.log().contains("authorization violation"),
        "anonymous leaf not refused: {}",
        hub.log()
    );
    assert_eq!(hub.monitor("/leafz").unwrap()["leafnodes"], 1);
    drop(anon);
}

#[tokio::test]
async fn system_events_and_account_requests() {
    let s = ServerProcess::canopy(SECURE).unwrap();
    let admin = connect(&s, "admin", "adminpw").await;
    let mut conns = admin.subscribe("$SYS.ACCOUNT.*.CONNECT").await.unwrap();
    let mut discs = admin.subscribe("$SYS.ACCOUNT.*.DISCONNECT").await.unwrap();
    sync(&admin).await;
    let us = async_nats::ConnectOptions::with_user_and_password("us".into(), "uspw".into())
        .name("events-test")
        .connect(s.url())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), conns.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject.as_str(), "$SYS.ACCOUNT.US_WEST.CONNECT");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["type"], "io.nats.server.advisory.v1.client_connect");
    assert_eq!(v["client"]["acc"], "US_WEST");
    assert_eq!(v["client"]["user"], "us");
    assert_eq!(v["client"]["name"], "events-test");

    let resp = admin
        .request("$SYS.REQ.ACCOUNT.US_WEST.CONNZ", "".into())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(v["data"]["num_connections"], 1, "{v}");

    drop(us);
    let m = tokio::time::timeout(Duration::from_secs(5), discs.next())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["type"], "io.nats.server.advisory.v1.client_disconnect");
    assert_eq!(v["client"]["acc"], "US_WEST");
}

/// leaf-secure.conf's shape: the leaf bridges only its LOCAL account (`account: LOCAL`),
/// the hub binds it to EU with a user from `leafnodes.authorization`, and a request from
/// the leaf reaches a service EU imports from US_WEST, with the reply coming back across
/// the leaf connection.
#[tokio::test]
async fn service_import_across_a_leaf_with_local_account() {
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "{SECURE}\nleafnodes {{ listen: \"127.0.0.1:{lp}\", authorization {{ users: [ {{ user: eu_leaf, password: leafpw, account: EU }} ] }} }}\n"
    ))
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        r#"
listen: 127.0.0.1:-1
accounts {{
  LOCAL: {{ users: [ {{ user: app_user, password: app_secret }} ] }}
  OTHER: {{ users: [ {{ user: other, password: other }} ] }}
}}
leafnodes {{
  remotes: [ {{ urls: ["nats-leaf://eu_leaf:leafpw@127.0.0.1:{lp}"], account: LOCAL }} ]
}}
"#
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        hub.monitor("/leafz")
            .map(|v| v["leafs"][0]["account"] == "EU")
            .unwrap_or(false),
        "leaf not bound to EU: {}",
        hub.log()
    );
    let us = connect(&hub, "us", "uspw").await;
    let mut svc = us.subscribe("api.time").await.unwrap();
    sync(&us).await;
    let r = us.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let _ = r.publish(m.reply.unwrap(), "noon".into()).await;
        }
    });
    let app = connect(&leaf, "app_user", "app_secret").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let resp = loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            app.request("us.api.time", "?".into()),
        )
        .await
        {
            Ok(Ok(m)) => break m,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no reply across the leaf"
            ),
        }
    };
    assert_eq!(&resp.payload[..], b"noon");
    // The leaf's other account is not bridged.
    let other = connect(&leaf, "other", "other").await;
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        other.request("us.api.time", "?".into()),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "OTHER must not reach the hub");
}

/// A leaf that authenticates as an ordinary client user gets that user's permissions on
/// the link: it may publish only where the user may publish, and receives only what the
/// user may subscribe to.
#[tokio::test]
async fn leaf_user_permissions_shape_the_link() {
    let lp = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        r#"
listen: 127.0.0.1:-1
http: 127.0.0.1:-1
authorization {{ users: [
  {{ user: leafuser, password: p, permissions: {{ publish: "up.>", subscribe: "down.>" }} }}
  {{ user: local, password: p }}
] }}
leafnodes {{ listen: "127.0.0.1:{lp}" }}
"#
    ))
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://leafuser:p@127.0.0.1:{lp}\" }} ] }}\n"
    ))
    .unwrap();
    let h = connect(&hub, "local", "p").await;
    let mut hub_all = h.subscribe(">").await.unwrap();
    sync(&h).await;
    let l = async_nats::connect(leaf.url()).await.unwrap();
    let mut leaf_down = l.subscribe("down.>").await.unwrap();
    let mut leaf_secret = l.subscribe("secret.>").await.unwrap();
    sync(&l).await;
    assert_eventually!(
        Duration::from_secs(5),
        hub.monitor("/leafz?subs=1")
            .map(|v| v["leafs"][0]["subscriptions_list"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s == "down.>")))
            .unwrap_or(false),
        "leaf interest missing: {}",
        hub.log()
    );
    // The denied interest never reached the hub.
    let subs = hub.monitor("/leafz?subs=1").unwrap();
    assert!(!subs["leafs"][0]["subscriptions_list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "secret.>"));
    h.publish("down.1", "a".into()).await.unwrap();
    h.publish("secret.1", "b".into()).await.unwrap();
    sync(&h).await;
    assert_eq!(
        collect(&mut leaf_down, 1, Duration::from_millis(300)).await,
        vec!["down.1"]
    );
    assert!(collect(&mut leaf_secret, 0, Duration::from_millis(300))
        .await
        .is_empty());
    l.publish("up.1", "c".into()).await.unwrap();
    l.publish("other.1", "d".into()).await.unwrap();
    sync(&l).await;
    let got = collect(&mut hub_all, 3, Duration::from_millis(300)).await;
    assert!(got.contains(&"up.1".to_string()), "{got:?}");
    assert!(!got.contains(&"other.1".to_string()), "{got:?}");
}

#[test]
fn unsupported_export_options_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lat.conf");
    std::fs::write(
        &p,
        "accounts {\n  A: { exports: [ { service: \"api.>\", latency: \"lat.api\" } ] }\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(canopy_testkit::canopy_bin())
        .args(["-c", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lat.conf:2:"), "{err}");
    assert!(
        err.contains("latency") && err.contains("not implemented yet"),
        "{err}"
    );
}

/// Imports across a cluster and a leaf happen once: every cluster member imports for its
/// own subscribers (imported copies never cross a route), a leaf that does not import for
/// itself gets the hub's imported copy, and a service import is forwarded only by the
/// requester's server, so the responder on another member hears each request once.
#[tokio::test]
async fn imports_across_a_cluster_and_a_leaf_happen_once() {
    let (r1, r2, lp) = (free_fixed_port(), free_fixed_port(), free_fixed_port());
    let hub1 = ServerProcess::canopy(&format!(
        "{SECURE}\ncluster {{ name: c, listen: \"127.0.0.1:{r1}\", routes: [\"nats-route://127.0.0.1:{r2}\"] }}\n\
         leafnodes {{ listen: \"127.0.0.1:{lp}\", authorization {{ users: [ {{ user: eu_leaf, password: leafpw, account: EU }} ] }} }}\n"
    ))
    .unwrap();
    let hub2 = ServerProcess::canopy(&format!(
        "{SECURE}\ncluster {{ name: c, listen: \"127.0.0.1:{r2}\", routes: [\"nats-route://127.0.0.1:{r1}\"] }}\n"
    ))
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\naccounts {{ LOCAL: {{ users: [ {{ user: app, password: app }} ] }} }}\n\
         leafnodes {{ remotes: [ {{ urls: [\"nats-leaf://eu_leaf:leafpw@127.0.0.1:{lp}\"], account: LOCAL }} ] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        hub1.monitor("/routez")
            .map(|v| v["num_routes"] == 1)
            .unwrap_or(false)
            && hub1
                .monitor("/leafz")
                .map(|v| v["leafnodes"] == 1)
                .unwrap_or(false),
        "topology did not form: {}",
        hub1.log()
    );
    // Stream import: US_WEST publishes events.* on hub2; EU subscribers everywhere.
    let eu1 = connect(&hub1, "eu", "eupw").await;
    let eu2 = connect(&hub2, "eu", "eupw").await;
    let app = async_nats::ConnectOptions::with_user_and_password("app".into(), "app".into())
        .connect(leaf.url())
        .await
        .unwrap();
    let mut subs = Vec::new();
    for nc in [&eu1, &eu2, &app] {
        subs.push(nc.subscribe("events.>").await.unwrap());
        sync(nc).await;
    }
    let us2 = connect(&hub2, "us", "uspw").await;
    // Interest crosses the route and the leaf asynchronously: publish until every
    // subscriber has seen one message, then count a numbered batch exactly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (i, sub) in subs.iter_mut().enumerate() {
        loop {
            us2.publish("events.warmup", "".into()).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(Some(_)) => break,
                _ => assert!(
                    tokio::time::Instant::now() < deadline,
                    "subscriber {i} never got an imported message"
                ),
            }
        }
    }
    sync(&us2).await;
    for sub in subs.iter_mut() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        }
    }
    for k in 0..20 {
        us2.publish(format!("events.n{k}"), "".into())
            .await
            .unwrap();
    }
    sync(&us2).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let got = collect(sub, 20, Duration::from_millis(300)).await;
        let want: Vec<String> = (0..20).map(|k| format!("events.n{k}")).collect();
        assert_eq!(got, want, "subscriber {i}");
    }
    // Service import: the responder is on hub2, the requester on hub1.
    let us2r = us2.clone();
    let mut svc = us2.subscribe("api.count").await.unwrap();
    sync(&us2).await;
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = heard.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(r) = m.reply {
                let _ = us2r.publish(r, "ok".into()).await;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            eu1.request("us.api.count", "?".into()),
        )
        .await
        {
            Ok(Ok(m)) => {
                assert_eq!(&m.payload[..], b"ok");
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no reply across the route"
            ),
        }
    }
    let before = heard.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        let m = eu1.request("us.api.count", "?".into()).await.unwrap();
        assert_eq!(&m.payload[..], b"ok");
    }
    sync(&us2).await;
    sync(&eu1).await;
    assert_eq!(
        heard.load(std::sync::atomic::Ordering::SeqCst) - before,
        10,
        "each request must reach the responder once"
    );
}
