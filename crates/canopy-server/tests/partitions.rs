//! Partitions in network namespaces: a 3-server hub cluster and 4 leaves, each server in a
//! namespace of its own (veth pairs into a bridge namespace, addresses 10.99.77.x that
//! exist only inside the namespaces this test makes). Links are cut with blackhole routes
//! inside the namespaces (one route = one direction of one server pair), a hub is killed
//! with SIGKILL, then everything heals; afterwards every core message reaches every
//! subscriber exactly once and interest is complete again.
//!
//! Needs root and `ip` (iproute2); skips with a printed reason otherwise.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use canopy_testkit::{RawClient, ServerProcess};

mod netns;
use netns::Lab;

const NET: &str = "10.99.77";

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it opens live
/// there (and can be used from any thread afterwards).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd affects only this thread.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .unwrap()
}

struct Node {
    ns: String,
    addr: String,
    http: u16,
    conf: String,
    proc: Option<ServerProcess>,
}

impl Node {
    fn start(&mut self, wrapper_dir: &std::path::Path, bin: &std::path::Path) {
        let wrapper = wrapper_dir.join(format!("{}.sh", self.ns));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
                self.ns,
                bin.display()
            ),
        )
        .unwrap();
        let mut perm = std::fs::metadata(&wrapper).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&wrapper, perm).unwrap();
        // Only this test runs in this file: the variable is not raced.
        std::env::set_var("CANOPY_SERVER_BIN", &wrapper);
        self.proc = Some(ServerProcess::canopy(&self.conf).unwrap());
    }

    fn monitor(&self, path: &str) -> serde_json::Value {
        let (port, path) = (self.http, path.to_string());
        let addr = self.addr.clone();
        in_ns(&self.ns, move || {
            let host = addr.split(':').next().unwrap_or("").to_string();
            let mut s = match std::net::TcpStream::connect((host.as_str(), port)) {
                Ok(s) => s,
                Err(_) => return serde_json::Value::Null,
            };
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            resp.split_once("\r\n\r\n")
                .and_then(|(_, b)| serde_json::from_str(b).ok())
                .unwrap_or(serde_json::Value::Null)
        })
    }

    fn client(&self, subject: Option<&str>) -> RawClient {
        let addr = self.addr.clone();
        let sub = subject.map(str::to_string);
        in_ns(&self.ns, move || {
            let (mut c, _) = RawClient::connect(&addr).unwrap();
            let mut ops = String::from("CONNECT {\"verbose\":false}\r\n");
            if let Some(s) = sub {
                ops.push_str(&format!("SUB {s} 1\r\n"));
            }
            ops.push_str("PING\r\n");
            c.send_str(&ops).unwrap();
            assert_eq!(c.read_op().unwrap(), "PONG");
            c
        })
    }
}

/// Reads every message until a PONG (PING sent first), by payload.
fn drain(c: &mut RawClient, into: &mut BTreeMap<String, usize>) {
    c.send_str("PING\r\n").unwrap();
    loop {
        let l = c.read_op().unwrap();
        if l == "PONG" {
            return;
        }
        if let Some(rest) = l.strip_prefix("MSG ") {
            let n: usize = rest.rsplit(' ').next().unwrap().parse().unwrap();
            let p = String::from_utf8(c.read_payload(n).unwrap()).unwrap();
            *into.entry(p).or_default() += 1;
        }
    }
}

/// Every publisher sends one message tagged `tag`; every subscriber must get each exactly
/// once. With `probe`, retries (new tags) until a round is complete, proving interest.
fn round(pubs: &mut [RawClient], subs: &mut [RawClient], tag: &str) -> Result<(), String> {
    for (i, p) in pubs.iter_mut().enumerate() {
        let payload = format!("{tag}-{i}");
        p.send_str(&format!("PUB p.{i} {}\r\n{payload}\r\n", payload.len()))
            .unwrap();
    }
    let want: BTreeMap<String, usize> =
        (0..pubs.len()).map(|i| (format!("{tag}-{i}"), 1)).collect();
    let mut got: Vec<BTreeMap<String, usize>> = subs.iter().map(|_| BTreeMap::new()).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        for (s, g) in subs.iter_mut().zip(got.iter_mut()) {
            drain(s, g);
        }
        // Publishers answer the servers' 1 s PINGs too: a round can wait 3 s, and a
        // publisher silent for two pings is closed as stale (CI once saw a broken pipe).
        for p in pubs.iter_mut() {
            drain(p, &mut BTreeMap::new());
        }
        if got.iter().all(|g| g.len() >= want.len()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Quiet window for duplicates.
    std::thread::sleep(Duration::from_millis(300));
    for (s, g) in subs.iter_mut().zip(got.iter_mut()) {
        drain(s, g);
    }
    let bad: Vec<String> = got
        .iter()
        .enumerate()
        .filter(|(_, g)| **g != want)
        .map(|(i, g)| format!("subscriber on server {i}: {g:?}"))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

#[test]
fn partitions_heal_to_exactly_once_delivery() {
    if !netns::root() {
        eprintln!("skipping: network namespaces need root");
        return;
    }
    let lab = match Lab::new("cy", NET, 7, false) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipping: cannot create network namespaces here: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // The real binary, before CANOPY_SERVER_BIN points at the namespace wrappers.
    let bin = canopy_testkit::canopy_bin();
    let (client, route, leaf, http) = (4222, 6222, 7422, 8222);
    let host = |i: usize| format!("{NET}.{}", i + 1);
    let live = "ping_interval: \"1s\"\nping_max: 2\n";
    // Server `i` in its namespace: name, client and monitoring listeners, fast pings.
    let node = |i: usize, name: &str, rest: &str| Node {
        ns: lab.ns(i),
        addr: format!("{}:{client}", host(i)),
        http,
        conf: format!(
            "server_name: {name}\nlisten: \"{h}:{client}\"\nhttp: \"{h}:{http}\"\n{live}{rest}",
            h = host(i)
        ),
        proc: None,
    };
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let routes: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("\"nats-route://{}:{route}\"", host(j)))
            .collect();
        nodes.push(node(
            i,
            &format!("hub{i}"),
            &format!(
                "cluster {{ name: hubs, listen: \"{h}:{route}\", routes: [{}] }}\n\
                 leafnodes {{ listen: \"{h}:{leaf}\" }}\n",
                routes.join(", "),
                h = host(i)
            ),
        ));
    }
    for l in 0..4 {
        let i = 3 + l;
        // Each leaf prefers one hub (listed first, no randomizing) and fails over.
        let first = l % 3;
        let urls: Vec<String> = (0..3)
            .map(|k| (first + k) % 3)
            .map(|j| format!("\"nats-leaf://{}:{leaf}\"", host(j)))
            .collect();
        nodes.push(node(
            i,
            &format!("leaf{l}"),
            &format!(
                "leafnodes {{ reconnect: \"200ms\", remotes: [ {{ urls: [{}], no_randomize: true }} ] }}\n",
                urls.join(", ")
            ),
        ));
    }
    for n in nodes.iter_mut() {
        n.start(dir.path(), &bin);
    }
    let formed = |nodes: &[Node]| {
        (0..3).all(|i| nodes[i].monitor("/routez")["num_routes"].as_u64() == Some(2))
            && (0..3)
                .map(|i| {
                    nodes[i].monitor("/leafz")["leafnodes"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .sum::<u64>()
                == 4
    };
    // Clients answer the servers' 1 s PINGs while the test waits (else they go stale).
    let keepalive = |cs: &mut [RawClient], skip: Option<usize>| {
        let mut sink = BTreeMap::new();
        for (i, c) in cs.iter_mut().enumerate() {
            if Some(i) != skip {
                drain(c, &mut sink);
            }
        }
    };
    let wait_formed = |nodes: &[Node], what: &str, tick: &mut dyn FnMut()| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !formed(nodes) {
            assert!(Instant::now() < deadline, "topology did not form ({what})");
            tick();
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_formed(&nodes, "start", &mut || {});
    let mut subs: Vec<RawClient> = nodes.iter().map(|n| n.client(Some("p.>"))).collect();
    let mut pubs: Vec<RawClient> = nodes.iter().map(|n| n.client(None)).collect();
    // Interest complete: a round where everyone gets everything (bounded retries).
    let settle = |pubs: &mut [RawClient], subs: &mut [RawClient], what: &str| {
        let mut last = String::new();
        for k in 0..40 {
            match round(pubs, subs, &format!("{what}{k}")) {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("{what}: interest never completed:\n{last}");
    };
    settle(&mut pubs, &mut subs, "start");

    // Partition: the route hub0–hub1, leaf0 (node 3, on hub0) from hub0, hub2 killed.
    lab.cut(0, 1, true);
    lab.cut(3, 0, true);
    if let Some(p) = nodes[2].proc.as_mut() {
        p.signal("KILL").unwrap();
        let _ = p.wait_exit(Duration::from_secs(5));
    }
    // Stale links are found by the 1 s pings (2 missed); let them be.
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes[0].monitor("/routez")["num_routes"].as_u64() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "hub0 did not notice the partition"
        );
        keepalive(&mut subs, Some(2));
        keepalive(&mut pubs, Some(2));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Heal: routes back, leaf back, hub2 restarted.
    lab.cut(0, 1, false);
    lab.cut(3, 0, false);
    nodes[2].proc = None;
    nodes[2].start(dir.path(), &bin);
    wait_formed(&nodes, "after healing", &mut || {
        keepalive(&mut subs, Some(2));
        keepalive(&mut pubs, Some(2));
    });
    subs[2] = nodes[2].client(Some("p.>"));
    pubs[2] = nodes[2].client(None);
    settle(&mut pubs, &mut subs, "healed");
    // And a few more rounds: exactly once, every time.
    for k in 0..3 {
        if let Err(e) = round(&mut pubs, &mut subs, &format!("final{k}")) {
            panic!("round {k} after healing:\n{e}");
        }
    }
    drop(subs);
    drop(pubs);
    drop(nodes);
    drop(lab);
}
