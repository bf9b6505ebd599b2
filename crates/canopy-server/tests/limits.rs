//! Bounded resources, black box: link buffers (a stopped peer is cut as a slow consumer,
//! not buffered for without limit), floods of interest from a peer, and the listen
//! backlog under a connection storm.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use canopy_testkit::{assert_eventually, free_fixed_port, RawClient, ServerProcess};

/// A field of `/proc/<pid>/status` in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn leafz_count(s: &ServerProcess) -> u64 {
    s.monitor("/leafz")
        .ok()
        .and_then(|v| v["leafnodes"].as_u64())
        .unwrap_or(0)
}

/// Subscribes a raw client and waits until the server has processed the SUB.
fn raw_sub(addr: &str, subject: &str) -> RawClient {
    let (mut c, _) = RawClient::connect(addr).unwrap();
    c.send_str(&format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\nPING\r\n"
    ))
    .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    c
}

/// Proves that a message published on `hub` for `subject` reaches `sub` (interest has
/// propagated over the link), retrying with a bounded number of probes.
fn prove_path(pub_addr: &str, sub: &mut RawClient, subject: &str) {
    let (mut p, _) = RawClient::connect(pub_addr).unwrap();
    p.send_str("CONNECT {\"verbose\":false}\r\n").unwrap();
    sub.set_timeout(Duration::from_millis(200)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.send_str(&format!("PUB {subject} 5\r\nprobe\r\n"))
            .unwrap();
        if let Ok(l) = sub.read_op() {
            if l.starts_with("MSG") {
                let _ = sub.read_payload(5);
                break;
            }
        }
        assert!(Instant::now() < deadline, "no path for {subject}");
    }
    // Drain late probes.
    while let Ok(l) = sub.read_op() {
        if l.starts_with("MSG") {
            let _ = sub.read_payload(5);
        }
    }
    sub.set_timeout(Duration::from_secs(5)).unwrap();
}

/// A leaf that stops reading (SIGSTOP) while the hub forwards traffic to it: the hub cuts
/// the link as a slow consumer (counted under `slow_consumer_stats.leafs`, logged with the
/// leaf's name) instead of buffering for it without bound; the hub's other clients keep
/// moving messages meanwhile, and the leaf reconnects once it runs again.
#[test]
fn stopped_leaf_is_cut_as_slow_consumer() {
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "server_name: hub\nport: -1\nhttp: 127.0.0.1:-1\nmax_pending: 4MB\n\
         leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"
    ))
    .unwrap();
    let leaf = ServerProcess::canopy(&format!(
        "server_name: stopped_leaf\nport: -1\nhttp: 127.0.0.1:-1\n\
         leafnodes {{ reconnect: \"100ms\", remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n"
    ))
    .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        leafz_count(&hub) == 1,
        "leaf did not connect"
    );
    let mut leaf_sub = raw_sub(&leaf.addr(), "flood.>");
    prove_path(&hub.addr(), &mut leaf_sub, "flood.probe");

    let hub_pid = hub.pid().unwrap();
    let hwm_before = proc_kib(hub_pid, "VmHWM");
    leaf.signal("STOP").unwrap();

    // Flood the stopped leaf: 256 MB through the hub, far past max_pending (4 MB).
    let hub_addr = hub.addr();
    let flood = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&hub_addr).unwrap();
        let mut info = [0u8; 4096];
        let _ = s.read(&mut info).unwrap();
        s.write_all(b"CONNECT {\"verbose\":false}\r\n").unwrap();
        let payload = vec![b'x'; 32 * 1024];
        let mut chunk = Vec::new();
        for _ in 0..16 {
            chunk.extend_from_slice(format!("PUB flood.x {}\r\n", payload.len()).as_bytes());
            chunk.extend_from_slice(&payload);
            chunk.extend_from_slice(b"\r\n");
        }
        for _ in 0..512 {
            s.write_all(&chunk).unwrap();
        }
        s.write_all(b"PING\r\n").unwrap();
        let mut r = [0u8; 64];
        let _ = s.read(&mut r);
    });

    // Other clients of the hub keep their throughput while the flood goes on.
    let mut local = raw_sub(&hub.addr(), "local.x");
    let (mut lp, _) = RawClient::connect(&hub.addr()).unwrap();
    lp.send_str("CONNECT {\"verbose\":false}\r\n").unwrap();
    let n = 20_000;
    let t0 = Instant::now();
    let mut batch = String::new();
    for _ in 0..n {
        batch.push_str("PUB local.x 2\r\nhi\r\n");
    }
    lp.send_str(&batch).unwrap();
    for i in 0..n {
        let l = local
            .read_op()
            .unwrap_or_else(|e| panic!("local message {i}: {e}"));
        assert!(l.starts_with("MSG local.x"), "{l}");
        local.read_payload(2).unwrap();
    }
    let local_secs = t0.elapsed().as_secs_f64();
    assert!(
        local_secs < 10.0,
        "hub's local clients stalled: {n} messages took {local_secs:.1}s"
    );

    flood.join().unwrap();
    assert_eventually!(
        Duration::from_secs(20),
        hub.monitor("/varz").unwrap()["slow_consumer_stats"]["leafs"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "the stopped leaf was not cut as a slow consumer: {}",
        hub.monitor("/varz").unwrap()["slow_consumer_stats"]
    );
    let varz = hub.monitor("/varz").unwrap();
    assert!(varz["slow_consumers"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(varz["slow_consumer_stats"]["clients"].as_u64(), Some(0));
    let grown_mb = proc_kib(hub_pid, "VmHWM").saturating_sub(hwm_before) / 1024;
    assert!(
        grown_mb < 96,
        "hub peak RSS grew by {grown_mb} MB while the leaf was stopped (max_pending 4 MB)"
    );
    assert!(
        hub.log().contains("Slow Consumer Detected") && hub.log().contains("stopped_leaf"),
        "slow consumer log line does not name the leaf:\n{}",
        hub.log()
    );

    // Running again, the leaf reconnects and traffic flows.
    leaf.signal("CONT").unwrap();
    assert_eventually!(
        Duration::from_secs(15),
        leafz_count(&hub) == 1,
        "leaf did not reconnect"
    );
    let mut leaf_sub = raw_sub(&leaf.addr(), "after.>");
    prove_path(&hub.addr(), &mut leaf_sub, "after.x");
}

/// A leaf that sends more interest (LS+) than `max_subscriptions` allows: the excess is
/// ignored and the leaf told once with `-ERR 'maximum subscriptions exceeded'`, as
/// nats-server does; the hub's Sublist stays bounded and the link stays up.
#[test]
fn leaf_interest_flood_is_bounded() {
    let leaf_port = free_fixed_port();
    let hub = ServerProcess::canopy(&format!(
        "port: -1\nhttp: 127.0.0.1:-1\nmax_subscriptions: 100\n\
         leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"
    ))
    .unwrap();
    // A raw-protocol leaf: INFO from the hub, then CONNECT and 1,000 LS+.
    let (mut fake, _) = RawClient::connect(&format!("127.0.0.1:{leaf_port}")).unwrap();
    let mut ops = String::from(
        "CONNECT {\"name\":\"flooder\",\"server_id\":\"NFLOODER\",\"headers\":true}\r\nPING\r\n",
    );
    for i in 0..1000 {
        ops.push_str(&format!("LS+ flood.{i}\r\n"));
    }
    ops.push_str("PING\r\n");
    fake.send_str(&ops).unwrap();
    let mut errs = 0;
    let mut pongs = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pongs < 2 && Instant::now() < deadline {
        let l = fake.read_line().unwrap();
        if l.starts_with("-ERR") {
            assert!(l.contains("maximum subscriptions exceeded"), "{l}");
            errs += 1;
        } else if l == "PING" {
            fake.send_str("PONG\r\n").unwrap();
        } else if l == "PONG" {
            pongs += 1;
        }
    }
    assert_eq!(pongs, 2, "link did not stay up");
    assert_eq!(errs, 1, "expected one -ERR for the flood");
    let subs = hub.monitor("/subsz").unwrap()["num_subscriptions"]
        .as_u64()
        .unwrap();
    assert!(subs <= 110, "hub holds {subs} subscriptions for the flood");
    assert!(hub.log().contains("flooder"), "log does not name the leaf");
}

/// Memory per idle connection and per subscription stays small: read buffers start at
/// 512 bytes and grow only when reads fill them, outbound buffers are empty until used,
/// and a subscription is one lean record (its subject, queue and sid in one allocation).
/// `canopy bench idle --idle-subs` measures the same against a release build.
#[test]
fn idle_connections_and_subscriptions_are_lean() {
    const CONNS: usize = 500;
    const SUBS: usize = 20_000;
    let s = ServerProcess::canopy("port: -1\n").unwrap();
    let pid = s.pid().unwrap();
    let mut first = raw_sub(&s.addr(), "warmup");
    let rss0 = proc_kib(pid, "VmRSS");
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(raw_sub(&s.addr(), "idle"));
    }
    let rss1 = proc_kib(pid, "VmRSS");
    let per_conn = (rss1 - rss0) * 1024 / CONNS as u64;
    let mut ops = String::new();
    for i in 0..SUBS {
        // The shape of `canopy bench idle --idle-subs`: a prefix, then two tokens.
        ops.push_str(&format!("SUB lean.{}.{} {}\r\n", i / 100, i % 100, i + 2));
    }
    ops.push_str("PING\r\n");
    first.send_str(&ops).unwrap();
    assert_eq!(first.read_op().unwrap(), "PONG");
    let rss2 = proc_kib(pid, "VmRSS");
    let per_sub = (rss2 - rss1) * 1024 / SUBS as u64;
    eprintln!("idle connection: {per_conn} B, subscription: {per_sub} B");
    assert!(per_conn < 12 * 1024, "{per_conn} bytes per idle connection");
    assert!(per_sub < 450, "{per_sub} bytes per subscription");
}

/// Runs a fast raw publisher (8 MiB of 1 KiB messages, written as fast as the socket
/// takes them) against a subscriber that reads about 64 KiB every 2 ms, on a server with
/// `max_pending: 512KB` and the given extra config. Returns (bytes the subscriber read,
/// /varz after).
fn fast_producer_slow_reader(extra: &str) -> (usize, serde_json::Value) {
    let s = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nmax_pending: 512KB\nmax_payload: 64KB\n{extra}\n"
    ))
    .unwrap();
    let mut sub = TcpStream::connect(s.addr()).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sub.write_all(b"CONNECT {\"verbose\":false}\r\nSUB fast 1\r\nPING\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = sub.read(&mut b).unwrap();
        assert!(n > 0, "server closed the subscriber");
        seen.extend_from_slice(&b[..n]);
    }
    let reader = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match sub.read(&mut chunk) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let payload = vec![b'x'; 1024];
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(b"PUB fast 1024\r\n");
        batch.extend_from_slice(&payload);
        batch.extend_from_slice(b"\r\n");
    }
    let mut publisher = TcpStream::connect(s.addr()).unwrap();
    publisher
        .write_all(b"CONNECT {\"verbose\":false}\r\n")
        .unwrap();
    for _ in 0..128 {
        publisher.write_all(&batch).unwrap();
    }
    publisher.write_all(b"PING\r\n").unwrap();
    publisher
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut pong = Vec::new();
    while !String::from_utf8_lossy(&pong).contains("PONG") {
        let n = publisher.read(&mut b).unwrap();
        assert!(n > 0, "server closed the publisher");
        pong.extend_from_slice(&b[..n]);
    }
    // The reader ends when the server cuts it or after 3 s of silence.
    let got = reader.join().unwrap();
    let varz = s.monitor("/varz").unwrap();
    (got, varz)
}

/// Issue 11 item 9: without `producer_backoff` a subscriber that reads slower than its
/// publisher writes is cut as a slow consumer; with it the publisher is held back and the
/// subscriber gets every message.
#[test]
fn producer_backoff_holds_a_fast_publisher_instead_of_cutting_the_reader() {
    let msgs = 64 * 128;
    let (got, varz) = fast_producer_slow_reader("");
    assert_eq!(varz["slow_consumers"], 1, "{varz}");
    assert_eq!(varz["canopy_producer_stalls"], 0);
    assert!(got < msgs * 1024, "cut early, got {got} bytes");

    let (got, varz) = fast_producer_slow_reader("producer_backoff: 200ms");
    assert_eq!(varz["slow_consumers"], 0, "{varz}");
    assert!(
        varz["canopy_producer_stalls"].as_u64().unwrap() > 0,
        "{varz}"
    );
    assert!(got > msgs * 1024, "subscriber got {got} bytes");
}
