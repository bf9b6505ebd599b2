//! Hub clusters: 3-server clusters (all Canopy, and mixed with Debian's nats-server),
//! gossip, cluster-wide delivery and queue semantics, leaves on different members, and a
//! member killed while a leaf is attached to it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use canopy_testkit::{assert_eventually, free_fixed_port, nats_server_bin, Impl, ServerProcess};
use futures::StreamExt;

struct Member {
    cfg: String,
}

/// Configs for an n-member cluster; every member lists every route (as the seed does).
fn cluster_configs(n: usize, leaf_ports: Option<&[u16]>) -> (Vec<Member>, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_fixed_port()).collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    let members = (0..n)
        .map(|i| {
            let leaf = leaf_ports
                .map(|lp| format!("leafnodes {{ listen: \"127.0.0.1:{}\" }}\n", lp[i]))
                .unwrap_or_default();
            Member {
                cfg: format!(
                    "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: hub-{i}\n\
                     cluster {{ name: hub, listen: \"127.0.0.1:{}\", routes: [{}] }}\n{leaf}",
                    ports[i],
                    routes.join(", ")
                ),
            }
        })
        .collect();
    (members, ports)
}

fn start(kinds: &[Impl], leaf_ports: Option<&[u16]>) -> Vec<ServerProcess> {
    let (members, _) = cluster_configs(kinds.len(), leaf_ports);
    members
        .iter()
        .zip(kinds)
        .map(|(m, k)| ServerProcess::start(*k, &m.cfg, &[]).unwrap())
        .collect()
}

fn wait_routes(servers: &[ServerProcess]) {
    let want = servers.len() as u64 - 1;
    for s in servers {
        assert_eventually!(
            Duration::from_secs(10),
            s.monitor("/routez")
                .map(|v| v["num_routes"].as_u64() == Some(want))
                .unwrap_or(false),
            "routes did not form on {}: {}",
            s.url(),
            s.log()
        );
    }
}

/// Publishes from every member and checks each subscriber gets every message once.
async fn full_mesh_delivery(urls: &[String]) {
    let mut subs = Vec::new();
    let mut conns = Vec::new();
    for url in urls {
        let nc = async_nats::connect(url.as_str()).await.unwrap();
        subs.push(nc.subscribe("c.>").await.unwrap());
        nc.flush().await.unwrap();
        conns.push(nc);
    }
    // Wait until every member's interest reached every other member.
    for nc in &conns {
        let probe = format!("c.probe.{}", rand_id());
        let mut seen = vec![false; subs.len()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.iter().any(|s| !s) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "interest did not propagate"
            );
            nc.publish(probe.clone(), "p".into()).await.unwrap();
            nc.flush().await.unwrap();
            for (i, sub) in subs.iter_mut().enumerate() {
                while let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(50), sub.next()).await
                {
                    if m.subject.as_str() == probe {
                        seen[i] = true;
                    }
                }
            }
        }
    }
    // Drain stragglers of the probes.
    for sub in subs.iter_mut() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        }
    }
    for (i, nc) in conns.iter().enumerate() {
        for k in 0..10 {
            nc.publish(format!("c.from{i}"), format!("{k}").into())
                .await
                .unwrap();
        }
        nc.flush().await.unwrap();
    }
    let expected = 10 * conns.len();
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            assert!(!m.subject.as_str().starts_with("c.probe"));
            got += 1;
        }
        assert_eq!(got, expected, "subscriber on member {i}");
    }
}

fn urls(servers: &[ServerProcess]) -> Vec<String> {
    servers.iter().map(ServerProcess::url).collect()
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test]
async fn three_canopy_members_gossip_and_deliver_once() {
    let servers = start(&[Impl::Canopy; 3], None);
    wait_routes(&servers);
    full_mesh_delivery(&urls(&servers)).await;
    // Clients learn the cluster's URLs.
    let (_c, info) = canopy_testkit::RawClient::connect(&servers[0].addr()).unwrap();
    assert_eq!(info["cluster"], "hub");
    assert_eq!(info["connect_urls"].as_array().unwrap().len(), 3);
    // Routes (and clustered JetStream's Raft) run on the links runtime: one worker.
    for s in &servers {
        let pid = s.pid().unwrap();
        assert_eq!(threads_named(pid, "canopy-links"), 1, "{}", s.log());
    }
}

/// The threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

#[tokio::test]
async fn mixed_cluster_with_nats_server() {
    if nats_server_bin().is_none() {
        eprintln!("nats-server not installed; skipping");
        return;
    }
    let servers = start(&[Impl::Canopy, Impl::NatsServer, Impl::Canopy], None);
    wait_routes(&servers);
    full_mesh_delivery(&urls(&servers)).await;
}

#[tokio::test]
async fn queue_group_once_across_cluster() {
    let servers = start(&[Impl::Canopy; 3], None);
    wait_routes(&servers);
    let mut members = Vec::new();
    for s in &servers[1..] {
        let nc = async_nats::connect(s.url()).await.unwrap();
        members.push((nc.queue_subscribe("work", "w".into()).await.unwrap(), nc));
    }
    for (_, nc) in &members {
        nc.flush().await.unwrap();
    }
    let p = async_nats::connect(servers[0].url()).await.unwrap();
    // Wait for queue interest from both members to reach the publisher's server.
    assert_eventually!(
        Duration::from_secs(10),
        servers[0]
            .monitor("/subsz?subs=1")
            .map(|v| v["subscriptions_list"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["subject"] == "work").count() == 2)
                .unwrap_or(false))
            .unwrap_or(false),
        "queue interest did not reach member 0"
    );
    for i in 0..100 {
        p.publish("work", format!("{i}").into()).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut total = 0;
    for (sub, _) in members.iter_mut() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            total += 1;
        }
    }
    assert_eq!(total, 100);
}

#[test]
fn cluster_name_mismatch_is_refused() {
    let p1 = free_fixed_port();
    let p2 = free_fixed_port();
    let a = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\ncluster {{ name: one, listen: \"127.0.0.1:{p1}\" }}\n"
    ))
    .unwrap();
    let b = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\ncluster {{ name: two, listen: \"127.0.0.1:{p2}\", routes: [\"nats-route://127.0.0.1:{p1}\"] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        a.log().contains("does not match") || b.log().contains("does not match"),
        "no mismatch logged:\n{}\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(a.monitor("/routez").unwrap()["num_routes"], 0);
}

/// A leaf on member 0 and a leaf on member 2 reach each other through the cluster; then
/// member 0 dies, the first leaf fails over and a stream of requests loses nothing after
/// the reconnection completes.
#[tokio::test]
async fn leaves_on_different_members_and_failover() {
    let leaf_ports: Vec<u16> = (0..3).map(|_| free_fixed_port()).collect();
    let mut servers = start(&[Impl::Canopy; 3], Some(&leaf_ports));
    wait_routes(&servers);
    let urls: Vec<String> = leaf_ports
        .iter()
        .map(|p| format!("\"nats-leaf://127.0.0.1:{p}\""))
        .collect();
    let leaf_a = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nserver_name: leaf-a\n\
         leafnodes {{ reconnect_interval: \"100ms\", remotes: [ {{ urls: [{}], no_randomize: true }} ] }}\n",
        urls.join(", ")
    ))
    .unwrap();
    let leaf_b = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nserver_name: leaf-b\nleafnodes {{ remotes: [ {{ urls: [{}] }} ] }}\n",
        urls[2]
    ))
    .unwrap();
    // A responder on leaf B; requests from a client on leaf A.
    let responder = async_nats::connect(leaf_b.url()).await.unwrap();
    let mut svc = responder.subscribe("svc.echo").await.unwrap();
    responder.flush().await.unwrap();
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, m.payload).await;
            }
        }
    });
    let requester = async_nats::connect(leaf_a.url()).await.unwrap();
    let ask = |i: u32| {
        let r = requester.clone();
        async move {
            tokio::time::timeout(
                Duration::from_millis(500),
                r.request("svc.echo", format!("{i}").into()),
            )
            .await
            .ok()
            .and_then(|x| x.ok())
            .map(|m| m.payload == format!("{i}").as_bytes())
            .unwrap_or(false)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ask(0).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no path leaf-a → leaf-b"
        );
    }
    for i in 1..=20 {
        assert!(ask(i).await, "request {i} lost before failover");
    }
    // Kill the member leaf A is attached to (the first URL: no_randomize).
    servers[0].kill();
    assert_eventually!(
        Duration::from_secs(10),
        leaf_a
            .monitor("/leafz")
            .map(|v| v["leafs"].as_array().is_some_and(
                |l| l.len() == 1 && l[0]["port"].as_u64() != Some(leaf_ports[0] as u64)
            ))
            .unwrap_or(false),
        "leaf-a did not fail over: {}",
        leaf_a.log()
    );
    // Interest reappears cluster-wide; once a request succeeds, none may be lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ask(1000).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no path after failover"
        );
    }
    let mut lost = 0;
    for i in 1001..=1100 {
        if !ask(i).await {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "requests lost after reconnection completed");
}

/// The seed's hub cluster as shipped in examples/seed (hub-cluster-{1,2,3}.conf and
/// hub-cluster-leaf.conf), with its fixed loopback ports swapped for free ones.
#[tokio::test]
async fn seed_hub_cluster_examples_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    let mut map: Vec<(String, String)> = Vec::new();
    for i in 1..=3 {
        for base in ["422", "822", "622", "742"] {
            map.push((format!("{base}{i}"), free_fixed_port().to_string()));
        }
    }
    map.push(("4230".into(), free_fixed_port().to_string()));
    map.push(("8230".into(), free_fixed_port().to_string()));
    let load = |name: &str| {
        let mut text = std::fs::read_to_string(dir.join(name)).unwrap();
        for (from, to) in &map {
            text = text.replace(&format!(":{from}"), &format!(":{to}"));
            text = text.replace(&format!(": {from}"), &format!(": {to}"));
        }
        // The ports file gives the test the client and monitoring ports.
        text
    };
    let hubs: Vec<ServerProcess> = (1..=3)
        .map(|i| ServerProcess::canopy(&load(&format!("hub-cluster-{i}.conf"))).unwrap())
        .collect();
    wait_routes(&hubs);
    let leaf = ServerProcess::canopy(&load("hub-cluster-leaf.conf")).unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        hubs.iter().any(|h| h
            .monitor("/leafz")
            .map(|v| v["leafnodes"] == 1)
            .unwrap_or(false)),
        "leaf did not attach: {}",
        leaf.log()
    );
    let mut all = urls(&hubs);
    all.push(leaf.url());
    full_mesh_delivery(&all).await;
}

/// A configured route that reaches this server under another address (`localhost`
/// instead of the listen IP) is recognised as ourselves and not dialled again (issue 11,
/// item 3: `self_urls` was never written and the route was redialled every second).
#[test]
fn configured_route_to_self_is_not_redialled() {
    let p = free_fixed_port();
    let s = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\ndebug: true\ncluster {{ name: c, listen: \"127.0.0.1:{p}\", routes: [\"nats-route://localhost:{p}\"] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        s.log().contains("is this server; not dialling it"),
        "the route to self was not given up: {}",
        s.log()
    );
}

/// A peer we pretend to be: a raw route connection to `port` that registers as server
/// `id` and can then gossip other members.
fn fake_route_peer(port: u16, id: &str) -> canopy_testkit::RawClient {
    let (mut c, info) = canopy_testkit::RawClient::connect(&format!("127.0.0.1:{port}")).unwrap();
    assert!(info["server_id"].is_string());
    c.send_str(&format!(
        "CONNECT {{\"echo\":true,\"headers\":true,\"name\":\"{id}\",\"cluster\":\"c\"}}\r\nINFO {{\"server_id\":\"{id}\",\"server_name\":\"fake\",\"cluster\":\"c\",\"ip\":\"\"}}\r\nPING\r\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        c.read_op().map(|l| l == "PONG").unwrap_or(false),
        "the fake route peer was not registered"
    );
    c
}

fn gossip(c: &mut canopy_testkit::RawClient, id: &str, url: &str) {
    c.send_str(&format!(
        "INFO {{\"server_id\":\"{id}\",\"server_name\":\"{id}\",\"cluster\":\"c\",\"ip\":\"{url}\"}}\r\n"
    ))
    .unwrap();
}

/// Gossiped (implicit) routes: one whose dial times out is given up after
/// `connect_retries` (nats-server gives up on implicit routes; it was retried forever),
/// and one that ends early (a bad URL) leaves `dialing`, so a later gossip of the same
/// server is dialled (it was ignored forever).
#[test]
fn gossiped_routes_give_up_and_can_be_relearned() {
    let p = free_fixed_port();
    let s = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\ndebug: true\ncluster {{ name: c, listen: \"127.0.0.1:{p}\" }}\n"
    ))
    .unwrap();
    let mut peer = fake_route_peer(p, "NFAKEPEER");
    // A listener whose accept queue is full: a connect to it times out.
    let blackhole = tokio::net::TcpSocket::new_v4().unwrap();
    blackhole.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let bh_addr = blackhole.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _bh = rt.block_on(async { blackhole.listen(0) }).unwrap();
    let _filler = std::net::TcpStream::connect(bh_addr).unwrap();
    // A listener that stands for the gossiped member once it is reachable.
    let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    good.set_nonblocking(true).unwrap();
    let good_url = format!("nats-route://{}", good.local_addr().unwrap());

    gossip(&mut peer, "NTIMEOUT", &format!("nats-route://{bh_addr}"));
    assert_eventually!(
        Duration::from_secs(10),
        s.log().contains("Giving up on implicit route"),
        "a gossiped route that times out was not given up: {}",
        s.log()
    );
    gossip(&mut peer, "NTIMEOUT", &good_url);
    assert_eventually!(
        Duration::from_secs(5),
        good.accept().is_ok(),
        "a gossiped member was not dialled after an earlier dial gave up: {}",
        s.log()
    );

    gossip(&mut peer, "NBADURL", "nats-route://[::1");
    gossip(&mut peer, "NBADURL", &good_url);
    assert_eventually!(
        Duration::from_secs(5),
        good.accept().is_ok(),
        "a gossiped member was not dialled after a dial with a bad URL: {}",
        s.log()
    );
}

/// `cluster { permissions }` as nats-server applies it (issue 11, item 5): `import`
/// limits the interest we advertise over routes (and what we accept), `export` the remote
/// interest we accept, and its deny list what we send to a permitted wildcard.
#[test]
fn cluster_permissions_import_export() {
    let (p1, p2) = (free_fixed_port(), free_fixed_port());
    let a = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\ncluster {{ name: c, listen: \"127.0.0.1:{p1}\", routes: [\"nats-route://127.0.0.1:{p2}\"]\n  permissions {{ import: {{ allow: [\"in.>\"] }}, export: {{ allow: [\"out.>\"], deny: [\"out.secret\"] }} }}\n}}\n"
    ))
    .unwrap();
    let b = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\ncluster {{ name: c, listen: \"127.0.0.1:{p2}\", routes: [\"nats-route://127.0.0.1:{p1}\"] }}\n"
    ))
    .unwrap();
    let servers = [a, b];
    wait_routes(&servers);
    let [a, b] = &servers;
    let client = |s: &ServerProcess, subs: &str| {
        let (mut c, _) = canopy_testkit::RawClient::connect(&s.addr()).unwrap();
        c.send_str(&format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n{subs}PING\r\n"
        ))
        .unwrap();
        assert_eq!(c.read_op().unwrap(), "PONG");
        c
    };
    let mut ca = client(a, "SUB in.> 1\r\nSUB other.> 2\r\n");
    let mut cb = client(b, "SUB out.> 1\r\nSUB nope.> 2\r\n");
    let route_subs = |s: &ServerProcess| -> Vec<String> {
        s.monitor("/routez?subs=1")
            .ok()
            .and_then(|v| v["routes"][0]["subscriptions_list"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    // b hears a's `in.>` only; a keeps b's `out.>` only.
    assert_eventually!(
        Duration::from_secs(10),
        route_subs(b).contains(&"in.>".to_string()) && route_subs(a).contains(&"out.>".to_string()),
        "interest did not cross: a {:?} b {:?}",
        route_subs(a),
        route_subs(b)
    );
    assert!(
        !route_subs(b).contains(&"other.>".to_string()),
        "{:?}",
        route_subs(b)
    );
    assert!(
        !route_subs(a).contains(&"nope.>".to_string()),
        "{:?}",
        route_subs(a)
    );
    cb.send_str("PUB other.x 1\r\n1\r\nPUB in.x 1\r\n2\r\nPING\r\n")
        .unwrap();
    assert_eq!(cb.read_op().unwrap(), "PONG");
    assert_eq!(ca.read_op().unwrap(), "MSG in.x 1 1");
    assert_eq!(ca.read_op().unwrap(), "2");
    ca.send_str("PUB nope.x 1\r\n1\r\nPUB out.secret 1\r\n2\r\nPUB out.ok 1\r\n3\r\nPING\r\n")
        .unwrap();
    assert_eq!(ca.read_op().unwrap(), "PONG");
    assert_eq!(cb.read_op().unwrap(), "MSG out.ok 1 1");
    assert_eq!(cb.read_op().unwrap(), "3");
}

/// bcrypt during a route CONNECT (unauthenticated peers can trigger it) runs off the
/// runtime workers: a client's PING is answered while several peers authenticate at
/// once (issue 11, item 8; before, every worker was busy hashing).
#[test]
fn route_bcrypt_does_not_stall_clients() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let p = free_fixed_port();
    let s = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\ncluster {{ name: c, listen: \"127.0.0.1:{p}\", authorization {{ user: ruser, password: \"$2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy\" }} }}\n"
    ))
    .unwrap();
    let (mut c, _) = canopy_testkit::RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    let start = Instant::now();
    let peers: Vec<_> = (0..2)
        .map(|_| {
            let mut r = std::net::TcpStream::connect(("127.0.0.1", p)).unwrap();
            r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            r.write_all(b"CONNECT {\"user\":\"ruser\",\"pass\":\"wrong\",\"name\":\"NPEER\",\"cluster\":\"c\"}\r\n")
                .unwrap();
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink);
                start.elapsed()
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    while !peers.iter().all(|t| t.is_finished()) {
        let t = Instant::now();
        c.send_str("PING\r\n").unwrap();
        assert_eq!(c.read_op().unwrap(), "PONG");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let hashing = peers.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    assert!(
        worst * 3 < hashing,
        "a client waited {worst:?} for PONG while peers' bcrypt took {hashing:?}"
    );
}
