//! Raw-protocol tests against the real binary: every op, every -ERR, split frames,
//! pipelining, and connections that vanish mid-payload.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use canopy_testkit::{assert_eventually, RawClient, ServerProcess};

fn server(extra: &str) -> ServerProcess {
    ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n{extra}\n"
    ))
    .expect("start canopy-server")
}

/// Connects with this CONNECT JSON; `verbose` and `pedantic` default to false here (a
/// bare `CONNECT {}` means both true, as in nats-server).
fn connected(s: &ServerProcess, connect: &str) -> RawClient {
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(connect).unwrap();
    for k in ["verbose", "pedantic"] {
        if v.get(k).is_none() {
            v[k] = serde_json::Value::Bool(false);
        }
    }
    c.send_str(&format!("CONNECT {v}\r\nPING\r\n")).unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    c
}

fn expect_err(c: &mut RawClient, text: &str) {
    let l = c.read_op().unwrap();
    assert_eq!(l, format!("-ERR '{text}'"));
}

#[test]
fn info_has_nats_server_fields() {
    let s = server("server_name: info-test");
    let (_c, info) = RawClient::connect(&s.addr()).unwrap();
    let id = info["server_id"].as_str().unwrap();
    assert_eq!(id.len(), 56);
    assert!(id.starts_with('N'));
    assert_eq!(info["server_name"], "info-test");
    assert_eq!(info["proto"], 1);
    assert_eq!(info["headers"], true);
    assert_eq!(info["max_payload"], 1048576);
    assert_eq!(info["port"], s.port);
    assert!(info["client_id"].as_u64().unwrap() > 0);
    assert_eq!(info["client_ip"], "127.0.0.1");
    assert!(info["version"].as_str().unwrap().starts_with("2."));
    assert!(info.get("canopy_version").is_some());
    assert!(info.get("auth_required").is_none());
}

#[test]
fn pub_sub_unsub_and_verbs_case_insensitive() {
    let s = server("");
    let mut sub = connected(&s, "{}");
    sub.send_str("sub foo.* 1\r\nSUB bar 2\r\nPING\r\n")
        .unwrap();
    assert_eq!(sub.read_op().unwrap(), "PONG");
    let mut p = connected(&s, "{}");
    p.send_str("pub foo.x reply.1 5\r\nhello\r\nPUB bar 0\r\n\r\nPING\r\n")
        .unwrap();
    assert_eq!(p.read_op().unwrap(), "PONG");
    assert_eq!(sub.read_op().unwrap(), "MSG foo.x 1 reply.1 5");
    assert_eq!(sub.read_payload(5).unwrap(), b"hello");
    assert_eq!(sub.read_op().unwrap(), "MSG bar 2 0");
    assert_eq!(sub.read_payload(0).unwrap(), b"");
    sub.send_str("UNSUB 1\r\nPING\r\n").unwrap();
    assert_eq!(sub.read_op().unwrap(), "PONG");
    p.send_str("PUB foo.y 1\r\na\r\nPUB bar 1\r\nb\r\n")
        .unwrap();
    assert_eq!(sub.read_op().unwrap(), "MSG bar 2 1");
}

#[test]
fn verbose_sends_ok() {
    let s = server("");
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":true}\r\n").unwrap();
    assert_eq!(c.read_op().unwrap(), "+OK");
    c.send_str("SUB a 1\r\nPUB a 1\r\nx\r\nUNSUB 1\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "+OK");
    // Our own message is queued before the +OK for the PUB that produced it.
    assert_eq!(c.read_op().unwrap(), "MSG a 1 1");
    assert_eq!(c.read_payload(1).unwrap(), b"x");
    assert_eq!(c.read_op().unwrap(), "+OK");
    assert_eq!(c.read_op().unwrap(), "+OK");
}

#[test]
fn unknown_op_closes() {
    let s = server("");
    let mut c = connected(&s, "{}");
    c.send_str("FOO bar\r\n").unwrap();
    expect_err(&mut c, "Unknown Protocol Operation");
    assert!(c.is_closed_by_server(Duration::from_secs(2)));
}

#[test]
fn max_payload_violation_closes() {
    let s = server("max_payload: 100");
    let (c0, info) = RawClient::connect(&s.addr()).unwrap();
    drop(c0);
    assert_eq!(info["max_payload"], 100);
    let mut c = connected(&s, "{}");
    c.send_str("PUB foo 200\r\n").unwrap();
    expect_err(&mut c, "Maximum Payload Violation");
    assert!(c.is_closed_by_server(Duration::from_secs(2)));
}

#[test]
fn max_control_line_closes() {
    let s = server("max_control_line: 64");
    let mut c = connected(&s, "{}");
    c.send_str(&format!("SUB {} 1\r\n", "a".repeat(100)))
        .unwrap();
    expect_err(&mut c, "maximum control line exceeded");
    assert!(c.is_closed_by_server(Duration::from_secs(2)));
}

#[test]
fn every_split_point_of_a_frame() {
    let s = server("");
    let mut sub = connected(&s, "{}");
    sub.send_str("SUB foo.bar 9\r\nPING\r\n").unwrap();
    assert_eq!(sub.read_op().unwrap(), "PONG");
    let frame = b"PUB foo.bar inbox.x 11\r\nhello world\r\n";
    let mut p = connected(&s, "{}");
    for cut in 1..frame.len() {
        p.send(&frame[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        p.send(&frame[cut..]).unwrap();
        assert_eq!(
            sub.read_op().unwrap(),
            "MSG foo.bar 9 inbox.x 11",
            "cut at {cut}"
        );
        assert_eq!(sub.read_payload(11).unwrap(), b"hello world");
    }
}

#[test]
fn pipelined_ops_in_one_write() {
    let s = server("");
    let mut c = connected(&s, "{}");
    let mut batch = String::from("SUB p 1\r\n");
    for i in 0..100 {
        batch.push_str(&format!("PUB p {}\r\n{}\r\n", i.to_string().len(), i));
    }
    batch.push_str("PING\r\n");
    c.send_str(&batch).unwrap();
    for i in 0..100 {
        let l = c.read_op().unwrap();
        let n = i.to_string().len();
        assert_eq!(l, format!("MSG p 1 {n}"));
        assert_eq!(c.read_payload(n).unwrap(), i.to_string().as_bytes());
    }
    assert_eq!(c.read_op().unwrap(), "PONG");
}

#[test]
fn vanishing_publisher_does_not_disturb_others() {
    let s = server("");
    let mut sub = connected(&s, "{}");
    sub.send_str("SUB x 1\r\nPING\r\n").unwrap();
    assert_eq!(sub.read_op().unwrap(), "PONG");
    {
        let mut bad = connected(&s, "{}");
        bad.send_str("PUB x 100\r\nonly part of it").unwrap();
        // dropped here, mid-payload
    }
    let mut p = connected(&s, "{}");
    p.send_str("PUB x 2\r\nok\r\n").unwrap();
    assert_eq!(sub.read_op().unwrap(), "MSG x 1 2");
    assert_eq!(sub.read_payload(2).unwrap(), b"ok");
}

#[test]
fn auth_violations_and_timeout() {
    let s = server("authorization { user: alice, password: s3cret, timeout: 0.5 }");
    let (mut c, info) = RawClient::connect(&s.addr()).unwrap();
    assert_eq!(info["auth_required"], true);
    c.send_str("PUB foo 0\r\n\r\n").unwrap();
    expect_err(&mut c, "Authorization Violation");

    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false,\"user\":\"alice\",\"pass\":\"wrong\"}\r\n")
        .unwrap();
    expect_err(&mut c, "Authorization Violation");
    assert!(c.is_closed_by_server(Duration::from_secs(2)));

    let mut ok = connected(&s, "{\"user\":\"alice\",\"pass\":\"s3cret\"}");
    ok.send_str("PING\r\n").unwrap();
    assert_eq!(ok.read_op().unwrap(), "PONG");

    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    expect_err(&mut c, "Authentication Timeout");
    let v = s.monitor("/varz").unwrap();
    assert!(v["auth_failures"].as_u64().unwrap() >= 3);
    assert!(s.log().contains("User \"alice\""), "{}", s.log());
    assert!(!s.log().contains("wrong"));
}

#[test]
fn max_connections_and_subscriptions() {
    let s = server("max_connections: 1\nmax_subscriptions: 1");
    let mut c = connected(&s, "{}");
    c.send_str("SUB a 1\r\nSUB b 2\r\n").unwrap();
    expect_err(&mut c, "maximum subscriptions exceeded");
    c.send_str("PING\r\n").unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    let (mut c2, _) = RawClient::connect(&s.addr()).unwrap();
    expect_err(&mut c2, "maximum connections exceeded");
}

#[test]
fn pedantic_publish_subject() {
    let s = server("");
    let mut c = connected(&s, "{\"pedantic\":true}");
    c.send_str("PUB foo.* 1\r\nx\r\n").unwrap();
    expect_err(&mut c, "Invalid Publish Subject");
    c.send_str("SUB foo..bar 1\r\n").unwrap();
    expect_err(&mut c, "Invalid Subject");
    c.send_str("PING\r\n").unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
}

#[test]
fn publish_and_subscribe_permissions() {
    let s = server(
        r#"authorization { users: [ { user: u, password: p, permissions: { publish: { allow: ["ok.>"], deny: ["ok.secret"] }, subscribe: "ok.>" } } ] }"#,
    );
    let mut c = connected(&s, "{\"user\":\"u\",\"pass\":\"p\"}");
    c.send_str("PUB ok.secret 0\r\n\r\n").unwrap();
    expect_err(&mut c, "Permissions Violation for Publish to \"ok.secret\"");
    c.send_str("PUB other 0\r\n\r\n").unwrap();
    expect_err(&mut c, "Permissions Violation for Publish to \"other\"");
    c.send_str("SUB other 1\r\n").unwrap();
    expect_err(
        &mut c,
        "Permissions Violation for Subscription to \"other\"",
    );
    c.send_str("SUB ok.x 1\r\nPUB ok.x 1\r\nz\r\n").unwrap();
    assert_eq!(c.read_op().unwrap(), "MSG ok.x 1 1");
    let v = s.monitor("/varz").unwrap();
    assert_eq!(v["permission_denials"], 3);
}

#[test]
fn stale_connection() {
    let s = server("ping_interval: \"100ms\"\nping_max: 2");
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false}\r\n").unwrap();
    let mut pings = 0;
    loop {
        let l = c.read_line().unwrap();
        if l == "PING" {
            pings += 1;
            continue;
        }
        assert_eq!(l, "-ERR 'Stale Connection'");
        break;
    }
    assert_eq!(pings, 2);
}

#[test]
fn headers_and_stripping() {
    let s = server("");
    let mut h = connected(&s, "{\"headers\":true}");
    let mut plain = connected(&s, "{}");
    h.send_str("SUB h 1\r\nPING\r\n").unwrap();
    assert_eq!(h.read_op().unwrap(), "PONG");
    plain.send_str("SUB h 2\r\nPING\r\n").unwrap();
    assert_eq!(plain.read_op().unwrap(), "PONG");
    let hdr = "NATS/1.0\r\nA: b\r\n\r\n";
    let total = hdr.len() + 3;
    h.send_str(&format!("HPUB h {} {}\r\n{}abc\r\n", hdr.len(), total, hdr))
        .unwrap();
    assert_eq!(
        h.read_op().unwrap(),
        format!("HMSG h 1 {} {}", hdr.len(), total)
    );
    let body = h.read_payload(total).unwrap();
    assert_eq!(&body[..hdr.len()], hdr.as_bytes());
    assert_eq!(plain.read_op().unwrap(), "MSG h 2 3");
    assert_eq!(plain.read_payload(3).unwrap(), b"abc");
}

#[test]
fn no_responders_status() {
    let s = server("");
    let mut c = connected(&s, "{\"headers\":true,\"no_responders\":true}");
    c.send_str("SUB _INBOX.1 7\r\nPUB nobody _INBOX.1 2\r\nhi\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "HMSG _INBOX.1 7 16 16");
    assert_eq!(c.read_payload(16).unwrap(), b"NATS/1.0 503\r\n\r\n");
    // Without no_responders nothing comes back.
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":false}\r\n")
        .unwrap();
    c.send_str("SUB _INBOX.2 7\r\nPUB nobody _INBOX.2 2\r\nhi\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
}

#[test]
fn auto_unsubscribe_and_echo() {
    let s = server("");
    let mut c = connected(&s, "{\"echo\":false}");
    let mut other = connected(&s, "{}");
    other.send_str("SUB e 1\r\nUNSUB 1 2\r\nPING\r\n").unwrap();
    assert_eq!(other.read_op().unwrap(), "PONG");
    c.send_str("SUB e 5\r\n").unwrap();
    for _ in 0..3 {
        c.send_str("PUB e 1\r\nx\r\n").unwrap();
    }
    c.send_str("PING\r\n").unwrap();
    // echo=false: the publisher gets none of its own messages.
    assert_eq!(c.read_op().unwrap(), "PONG");
    assert_eq!(other.read_op().unwrap(), "MSG e 1 1");
    let _ = other.read_payload(1);
    assert_eq!(other.read_op().unwrap(), "MSG e 1 1");
    let _ = other.read_payload(1);
    other.send_str("PING\r\n").unwrap();
    assert_eq!(other.read_op().unwrap(), "PONG");
}

#[test]
fn queue_group_delivers_once() {
    let s = server("");
    let mut members: Vec<RawClient> = (0..3)
        .map(|i| {
            let mut m = connected(&s, "{}");
            m.send_str(&format!("SUB q.work workers {i}\r\nPING\r\n"))
                .unwrap();
            assert_eq!(m.read_op().unwrap(), "PONG");
            m
        })
        .collect();
    let mut p = connected(&s, "{}");
    for _ in 0..60 {
        p.send_str("PUB q.work 1\r\nx\r\n").unwrap();
    }
    p.send_str("PING\r\n").unwrap();
    assert_eq!(p.read_op().unwrap(), "PONG");
    let mut total = 0;
    for m in members.iter_mut() {
        m.send_str("PING\r\n").unwrap();
        loop {
            let l = m.read_op().unwrap();
            if l == "PONG" {
                break;
            }
            assert!(l.starts_with("MSG q.work"));
            let _ = m.read_payload(1);
            total += 1;
        }
    }
    assert_eq!(total, 60);
}

#[test]
fn slow_consumer_is_cut_and_counted() {
    let s = server("max_payload: 1024\nmax_pending: 65536\nwrite_deadline: \"500ms\"");
    let mut lazy = connected(&s, "{}");
    lazy.send_str("SUB flood 1\r\nPING\r\n").unwrap();
    assert_eq!(lazy.read_op().unwrap(), "PONG");
    let mut p = connected(&s, "{}");
    let payload = "x".repeat(1000);
    let mut batch = String::new();
    for _ in 0..100 {
        batch.push_str(&format!("PUB flood 1000\r\n{payload}\r\n"));
    }
    // Far more than the socket buffers and max_pending hold, while `lazy` never reads.
    for _ in 0..400 {
        if p.send_str(&batch).is_err() {
            break;
        }
    }
    assert_eventually!(
        Duration::from_secs(10),
        s.monitor("/varz").unwrap()["slow_consumers"]
            .as_u64()
            .unwrap()
            >= 1,
        "slow consumer not counted"
    );
    // The publisher is unaffected.
    p.send_str("PING\r\n").unwrap();
    assert_eq!(p.read_op().unwrap(), "PONG");
    assert!(s.log().contains("Slow Consumer"));
}

#[test]
fn allow_responses_permits_one_reply() {
    let s = server(
        r#"authorization { users: [
            { user: svc, password: p, permissions: { subscribe: "req.>", allow_responses: true } }
            { user: cli, password: p }
        ] }"#,
    );
    let mut svc = connected(&s, "{\"user\":\"svc\",\"pass\":\"p\"}");
    svc.send_str("SUB req.> 1\r\nPING\r\n").unwrap();
    assert_eq!(svc.read_op().unwrap(), "PONG");
    let mut cli = connected(&s, "{\"user\":\"cli\",\"pass\":\"p\"}");
    cli.send_str("SUB inbox.1 9\r\nPUB req.x inbox.1 1\r\n?\r\nPING\r\n")
        .unwrap();
    assert_eq!(cli.read_op().unwrap(), "PONG");
    assert_eq!(svc.read_op().unwrap(), "MSG req.x 1 inbox.1 1");
    let _ = svc.read_payload(1);
    // The first reply goes through; the second is refused; other subjects always are.
    svc.send_str("PUB inbox.1 2\r\nok\r\nPUB inbox.1 2\r\nno\r\nPUB elsewhere 0\r\n\r\n")
        .unwrap();
    assert_eq!(cli.read_op().unwrap(), "MSG inbox.1 9 2");
    assert_eq!(cli.read_payload(2).unwrap(), b"ok");
    expect_err(&mut svc, "Permissions Violation for Publish to \"inbox.1\"");
    expect_err(
        &mut svc,
        "Permissions Violation for Publish to \"elsewhere\"",
    );
}

#[test]
fn nkey_user_authenticates_with_signed_nonce() {
    use base64::Engine as _;
    let kp = nkeys::KeyPair::new_user();
    let s = server(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        kp.public_key()
    ));
    let (mut c, info) = RawClient::connect(&s.addr()).unwrap();
    let nonce = info["nonce"].as_str().expect("nonce in INFO").to_string();
    let sig =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.sign(nonce.as_bytes()).unwrap());
    c.send_str(&format!(
        "CONNECT {{\"verbose\":false,\"nkey\":\"{}\",\"sig\":\"{sig}\"}}\r\nPING\r\n",
        kp.public_key()
    ))
    .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    // A signature over something else is refused.
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    let bad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.sign(b"other").unwrap());
    c.send_str(&format!(
        "CONNECT {{\"verbose\":false,\"nkey\":\"{}\",\"sig\":\"{bad}\"}}\r\n",
        kp.public_key()
    ))
    .unwrap();
    expect_err(&mut c, "Authorization Violation");
}

/// A sid reused after its subscription auto-unsubscribed is a new subscription (issue 11
/// item 1: the client's own map kept the dead entry and ignored the second SUB).
#[test]
fn sid_reused_after_auto_unsubscribe_is_live() {
    let s = server("");
    let mut c = connected(&s, "{}");
    c.send_str("SUB foo 1\r\nUNSUB 1 1\r\nPUB foo 2\r\nhi\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "MSG foo 1 2");
    assert_eq!(c.read_op().unwrap(), "hi");
    assert_eq!(c.read_op().unwrap(), "PONG");
    c.send_str("SUB foo 1\r\nPUB foo 3\r\nbye\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "MSG foo 1 3");
    assert_eq!(c.read_op().unwrap(), "bye");
    assert_eq!(c.read_op().unwrap(), "PONG");
    // Many auto-unsubscribed requests, each with its own sid, then the same sid again
    // many times: every SUB is live, and the connection's subscription count is right.
    let mut batch = String::new();
    for i in 0..500 {
        batch.push_str(&format!(
            "SUB r.{i} {}\r\nUNSUB {} 1\r\nPUB r.{i} 1\r\nx\r\n",
            10 + i,
            10 + i
        ));
    }
    batch.push_str("PING\r\n");
    c.send_str(&batch).unwrap();
    for i in 0..500 {
        assert_eq!(c.read_op().unwrap(), format!("MSG r.{i} {} 1", 10 + i));
        assert_eq!(c.read_op().unwrap(), "x");
    }
    assert_eq!(c.read_op().unwrap(), "PONG");
    for _ in 0..3 {
        c.send_str("SUB again 7\r\nUNSUB 7 1\r\nPUB again 1\r\ny\r\nPING\r\n")
            .unwrap();
        assert_eq!(c.read_op().unwrap(), "MSG again 7 1");
        assert_eq!(c.read_op().unwrap(), "y");
        assert_eq!(c.read_op().unwrap(), "PONG");
    }
    let connz = s.monitor("/connz").unwrap();
    // Only `SUB foo 1` (the second one) is still live.
    assert_eq!(connz["connections"][0]["subscriptions"], 1);
}
