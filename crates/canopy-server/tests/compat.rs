//! What clients and launchers notice of the process beyond the protocol: start-up errors
//! in nats-server's words, shutdown order and timing, dual-stack listeners, and the
//! meaning of the message counters. Each is checked against Debian's nats-server 2.9.10
//! where it is installed.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use canopy_testkit::{canopy_bin, nats_server_bin, Impl, RawClient, ServerProcess};

fn kinds() -> Vec<Impl> {
    let mut k = vec![Impl::Canopy];
    if nats_server_bin().is_some() {
        k.push(Impl::NatsServer);
    }
    k
}

fn bin(kind: Impl) -> std::path::PathBuf {
    match kind {
        Impl::Canopy => canopy_bin(),
        Impl::NatsServer => nats_server_bin().unwrap(),
    }
}

/// `[pid] yyyy/mm/dd hh:mm:ss.uuuuuu [FTL] ` followed by the message.
fn fatal_line(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix('[')?;
        let (pid, rest) = rest.split_once("] ")?;
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid.is_empty() {
            return None;
        }
        // date and time: 2026/12/05 02:14:00.212644
        let (date, rest) = rest.split_once(' ')?;
        let (time, rest) = rest.split_once(' ')?;
        let date_ok = date.len() == 10 && date.chars().filter(|c| *c == '/').count() == 2;
        let time_ok = time.len() == 15 && time.as_bytes().get(8) == Some(&b'.');
        if !(date_ok && time_ok) {
            return None;
        }
        rest.strip_prefix("[FTL] ")
    })
}

/// Item 7: a busy client port is reported in nats-server's words, on a `[FTL]` line.
#[test]
fn busy_port_is_fatal_in_nats_server_words() {
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let want =
        format!("Error listening on port: 0.0.0.0:{port}, \"listen tcp 0.0.0.0:{port}: bind: address already in use\"");
    for kind in kinds() {
        let out = Command::new(bin(kind))
            .args(["-p", &port.to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{kind:?}: {err}");
        let line = fatal_line(&err);
        assert_eq!(line, Some(want.as_str()), "{kind:?}: {err}");
    }
    // The monitoring and route listeners too.
    for (flags, want) in [
        (
            vec!["-p".to_string(), "-1".into(), "-m".into(), port.to_string()],
            format!("Can't start monitoring: can't listen to the monitor port: listen tcp 0.0.0.0:{port}: bind: address already in use"),
        ),
        (
            vec![
                "-p".to_string(),
                "-1".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{port}"),
            ],
            format!("Error listening on router port: {port} - listen tcp 127.0.0.1:{port}: bind: address already in use"),
        ),
    ] {
        for kind in kinds() {
            let out = Command::new(bin(kind)).args(&flags).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{kind:?}: {err}");
            assert_eq!(fatal_line(&err), Some(want.as_str()), "{kind:?}: {err}");
        }
    }
    // With -l the fatal line is in the log file as well.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s.log");
    let out = Command::new(canopy_bin())
        .args(["-p", &port.to_string(), "-l", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(fatal_line(&text), Some(want.as_str()), "{text}");
    drop(held);
}

/// Reads until the server closes the connection; returns when it did.
fn wait_eof(s: &mut TcpStream, within: Duration) -> Instant {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// Item 4: on SIGTERM the listener closes before the clients, and the process exits right
/// after the client sockets close.
#[test]
fn sigterm_closes_listener_then_clients_then_exits_promptly() {
    for kind in kinds() {
        let mut s = ServerProcess::start(kind, "listen: 127.0.0.1:-1\n", &[]).unwrap();
        let addr = s.addr();
        let (mut c, _) = RawClient::connect(&addr).unwrap();
        c.send_str("CONNECT {\"verbose\":false}\r\nPING\r\n")
            .unwrap();
        assert_eq!(c.read_op().unwrap(), "PONG");
        let mut stream = c.stream.try_clone().unwrap();
        s.signal("TERM").unwrap();
        let child = s.child_mut().unwrap();
        let (eof, refused, exited) = std::thread::scope(|sc| {
            let waiter = sc.spawn(move || {
                let _ = child.wait();
                Instant::now()
            });
            let eof = wait_eof(&mut stream, Duration::from_secs(5));
            // Reconnecting at once must not reach the server that is going away.
            let refused = TcpStream::connect(&addr).is_err();
            (eof, refused, waiter.join().unwrap())
        });
        let gap = exited.saturating_duration_since(eof);
        eprintln!("{kind:?}: client socket closed -> process exited: {gap:?}");
        assert!(
            refused,
            "{kind:?}: listener still accepting after clients were closed"
        );
        assert!(
            gap < Duration::from_millis(20),
            "{kind:?}: exit came {gap:?} after the client socket closed"
        );
    }
}

fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn first_line(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Item 5: with the default host every listener is dual-stack and accepts `[::1]`.
#[test]
fn default_host_listeners_accept_ipv6() {
    if !ipv6_available() {
        eprintln!("no IPv6 on this host; skipped");
        return;
    }
    let conf = "port: -1\nhttp_port: -1\nleafnodes { port: -1 }\ncluster { name: six, port: -1 }\n";
    for kind in kinds() {
        let s = ServerProcess::start(kind, conf, &[]).unwrap();
        // nats-server 2.9.10's ports file has no leafnode entry: ask /varz.
        let varz = s.monitor("/varz").unwrap();
        let leaf_port = varz["leaf"]["port"].as_u64().unwrap();
        let route_port = varz["cluster"]["cluster_port"].as_u64().unwrap();
        assert_eq!(
            first_line(&format!("[::1]:{}", s.port)),
            "INFO ",
            "{kind:?} client"
        );
        assert_eq!(
            first_line(&format!("[::1]:{}", leaf_port)),
            "INFO ",
            "{kind:?} leaf"
        );
        assert_eq!(
            first_line(&format!("[::1]:{}", route_port)),
            "INFO ",
            "{kind:?} route"
        );
        let http = s.http_port.unwrap();
        let mut h = TcpStream::connect(format!("[::1]:{http}")).unwrap();
        h.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut h, b"GET /varz HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        let _ = h.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
            "{kind:?} http: {resp}"
        );
        // IPv4 still works on the same listener.
        assert_eq!(first_line(&format!("127.0.0.1:{}", s.port)), "INFO ");
    }
}

fn counters(v: &serde_json::Value) -> [u64; 4] {
    ["in_msgs", "out_msgs", "in_bytes", "out_bytes"].map(|k| v[k].as_u64().unwrap_or(u64::MAX))
}

/// What the counters say after a fixed exchange: a plain and a header message to two
/// subscribers (one without headers), and one message nobody hears.
/// Per-connection counters by name, the account's sent/received, and `/varz`'s.
type Observed = (Vec<(String, [u64; 4])>, serde_json::Value, [u64; 4]);

fn counters_after_exchange(kind: Impl) -> Observed {
    let s = ServerProcess::start(kind, "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n", &[]).unwrap();
    let connect = |name: &str, headers: bool| {
        let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
        c.send_str(&format!(
            "CONNECT {{\"verbose\":false,\"headers\":{headers},\"name\":\"{name}\",\"protocol\":1}}\r\nSUB foo 1\r\nPING\r\n"
        ))
        .unwrap();
        assert_eq!(c.read_op().unwrap(), "PONG");
        c
    };
    let mut sub = connect("sub", true);
    let mut nohdr = connect("nohdr", false);
    let mut publisher = connect("pub", true);
    publisher
        .send_str("PUB foo 5\r\nhello\r\nHPUB foo 12 17\r\nNATS/1.0\r\n\r\nhello\r\nPUB nobody 3\r\nabc\r\nPING\r\n")
        .unwrap();
    // Own SUB foo: the publisher hears its messages too (echo).
    for c in [&mut sub, &mut nohdr, &mut publisher] {
        let mut seen = 0;
        while seen < 2 {
            let l = c.read_op().unwrap();
            if l.starts_with("MSG ") || l.starts_with("HMSG ") {
                seen += 1;
                let n: usize = l.rsplit(' ').next().unwrap().parse().unwrap();
                c.read_payload(n).unwrap();
            }
        }
    }
    assert_eq!(publisher.read_op().unwrap(), "PONG");
    let connz = s.monitor("/connz").unwrap();
    let mut rows: Vec<(String, [u64; 4])> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or("").to_string(), counters(c)))
        .collect();
    rows.sort();
    let acc = s.monitor("/accstatz").unwrap()["account_statz"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["acc"] == "$G")
        .map(|a| serde_json::json!({"sent": a["sent"], "received": a["received"]}))
        .unwrap();
    let varz = counters(&s.monitor("/varz").unwrap());
    (rows, acc, varz)
}

/// Item 6: per-connection, per-account and server counters mean what nats-server's
/// mean: messages and payload bytes (headers included; a receiver without headers is
/// counted what it was sent), not protocol framing.
#[test]
fn message_counters_count_payload_bytes_as_nats_server() {
    let (rows, acc, varz) = counters_after_exchange(Impl::Canopy);
    // nohdr: 5 + 5 (headers stripped); sub: 5 + 17; pub: its own two plus 25 bytes in.
    assert_eq!(
        rows,
        vec![
            ("nohdr".to_string(), [0, 2, 0, 10]),
            ("pub".to_string(), [3, 2, 25, 22]),
            ("sub".to_string(), [0, 2, 0, 22]),
        ]
    );
    if nats_server_bin().is_some() {
        let theirs = counters_after_exchange(Impl::NatsServer);
        assert_eq!((&rows, &acc, varz), (&theirs.0, &theirs.1, theirs.2));
    }
}

fn num_routes(s: &ServerProcess) -> u64 {
    s.monitor("/routez")
        .ok()
        .and_then(|v| v["num_routes"].as_u64())
        .unwrap_or(0)
}

/// Reads ops (answering PINGs) until an INFO satisfies `want`; panics after the read
/// timeout.
fn info_until(c: &mut RawClient, what: &str, want: impl Fn(&serde_json::Value) -> bool) {
    loop {
        let l = c
            .read_op()
            .unwrap_or_else(|e| panic!("no INFO with {what}: {e}"));
        if let Some(json) = l.strip_prefix("INFO ") {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            if want(&v) {
                return;
            }
        }
    }
}

fn urls(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Item 3: when a route peer joins or leaves, clients that sent `protocol:1` get an INFO
/// with the new `connect_urls` (the peer's `client_advertise`), leafs one with the new
/// `leafnode_urls`; with `cluster { no_advertise }` clients hear nothing of the cluster.
#[test]
fn cluster_changes_reach_clients_and_leafs_as_async_info() {
    for kind in kinds() {
        for no_advertise in [false, true] {
            let cport = canopy_testkit::free_fixed_port();
            let a = ServerProcess::start(
                kind,
                &format!(
                    "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{ listen: 127.0.0.1:-1 }}\ncluster {{ name: disc, listen: 127.0.0.1:{cport}, no_advertise: {no_advertise} }}\n"
                ),
                &[],
            )
            .unwrap();
            let (mut client, info) = RawClient::connect(&a.addr()).unwrap();
            client
                .send_str("CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
                .unwrap();
            assert_eq!(client.read_op().unwrap(), "PONG");
            if no_advertise {
                assert!(urls(&info, "connect_urls").is_empty(), "{kind:?}: {info}");
            }
            let leaf_port = a.monitor("/varz").unwrap()["leaf"]["port"]
                .as_u64()
                .unwrap();
            let (mut leaf, linfo) = RawClient::connect(&format!("127.0.0.1:{leaf_port}")).unwrap();
            assert_eq!(urls(&linfo, "leafnode_urls").len(), 1, "{kind:?}: {linfo}");
            leaf.send_str("CONNECT {\"name\":\"rawleaf\",\"headers\":true}\r\nPING\r\n")
                .unwrap();
            info_until(&mut leaf, "connect_info", |_| true);

            let b = ServerProcess::start(
                kind,
                &format!(
                    "listen: 127.0.0.1:-1\nclient_advertise: \"b.example:4333\"\nleafnodes {{ listen: 127.0.0.1:-1 }}\ncluster {{ name: disc, listen: 127.0.0.1:-1, routes: [\"nats-route://127.0.0.1:{cport}\"] }}\n"
                ),
                &[],
            )
            .unwrap();
            canopy_testkit::assert_eventually!(
                Duration::from_secs(10),
                num_routes(&a) == 1,
                "{kind:?}: route did not come up"
            );
            info_until(&mut leaf, "the peer's leafnode URL", |v| {
                urls(v, "leafnode_urls").len() == 2
            });
            if no_advertise {
                client.send_str("PING\r\n").unwrap();
                assert_eq!(
                    client.read_op().unwrap(),
                    "PONG",
                    "{kind:?}: no_advertise client heard of the cluster"
                );
            } else {
                info_until(&mut client, "b.example:4333", |v| {
                    urls(v, "connect_urls").contains(&"b.example:4333".to_string())
                });
                drop(b);
                info_until(&mut client, "b.example:4333 gone", |v| {
                    !urls(v, "connect_urls").contains(&"b.example:4333".to_string())
                });
            }
        }
    }
}
