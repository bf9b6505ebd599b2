//! Round trips, split-buffer behaviour, pipelining and error mapping of the codec.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use canopy_proto::*;

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn ob(s: &'static str) -> Option<Bytes> {
    Some(b(s))
}

fn limits() -> ParserLimits {
    ParserLimits::default()
}

/// Every sample: (role, wire bytes as produced by our encoders, expected op).
fn samples() -> Vec<(Role, Vec<u8>, Op)> {
    let mut v = Vec::new();
    let mut e = |role: Role, f: &dyn Fn(&mut BytesMut), op: Op| {
        let mut buf = BytesMut::new();
        f(&mut buf);
        v.push((role, buf.to_vec(), op));
    };
    let info = ServerInfo {
        server_id: "NID".into(),
        version: "2.9.10".into(),
        proto: 1,
        max_payload: 1024,
        ..Default::default()
    };
    let info_json = serde_json::to_vec(&info).unwrap();
    for role in [Role::Client, Role::Route, Role::Leaf, Role::ClientSide] {
        let ij = Bytes::from(info_json.clone());
        e(role, &|buf| encode_info(buf, &info), Op::Info(ij));
        e(role, &|buf| buf.extend_from_slice(PING), Op::Ping);
        e(role, &|buf| buf.extend_from_slice(PONG), Op::Pong);
        e(role, &|buf| buf.extend_from_slice(OK), Op::Ok);
        e(
            role,
            &|buf| encode_err(buf, "Unknown Protocol Operation"),
            Op::Err(b("Unknown Protocol Operation")),
        );
    }
    let cc = ClientConnect {
        verbose: false,
        pedantic: false,
        name: "t".into(),
        ..Default::default()
    };
    let cj = Bytes::from(serde_json::to_vec(&cc).unwrap());
    e(
        Role::Client,
        &|buf| encode_connect(buf, &cc),
        Op::Connect(cj),
    );
    let lc = LeafConnect {
        name: "leafA".into(),
        headers: true,
        ..Default::default()
    };
    let lj = Bytes::from(serde_json::to_vec(&lc).unwrap());
    e(
        Role::Leaf,
        &|buf| encode_connect(buf, &lc),
        Op::Connect(lj.clone()),
    );
    e(
        Role::Route,
        &|buf| encode_connect(buf, &lc),
        Op::Connect(lj),
    );

    // Client -> server.
    e(
        Role::Client,
        &|buf| encode_pub(buf, b"foo.bar", None, b"hello"),
        Op::Pub {
            subject: b("foo.bar"),
            reply: None,
            payload: b("hello"),
        },
    );
    e(
        Role::Client,
        &|buf| encode_pub(buf, b"foo", Some(b"_INBOX.1"), b""),
        Op::Pub {
            subject: b("foo"),
            reply: ob("_INBOX.1"),
            payload: b(""),
        },
    );
    e(
        Role::Client,
        &|buf| encode_pub(buf, b"bin", None, b"a\r\nb\r\n"),
        Op::Pub {
            subject: b("bin"),
            reply: None,
            payload: b("a\r\nb\r\n"),
        },
    );
    e(
        Role::Client,
        &|buf| encode_hpub(buf, b"h", Some(b"r"), 12, b"NATS/1.0\r\n\r\nab"),
        Op::HPub {
            subject: b("h"),
            reply: ob("r"),
            header_len: 12,
            payload: b("NATS/1.0\r\n\r\nab"),
        },
    );
    e(
        Role::Client,
        &|buf| encode_hpub(buf, b"h", None, 12, b"NATS/1.0\r\n\r\n"),
        Op::HPub {
            subject: b("h"),
            reply: None,
            header_len: 12,
            payload: b("NATS/1.0\r\n\r\n"),
        },
    );
    e(
        Role::Client,
        &|buf| encode_sub(buf, b"foo.>", None, b"1"),
        Op::Sub {
            subject: b("foo.>"),
            queue: None,
            sid: b("1"),
        },
    );
    e(
        Role::Client,
        &|buf| encode_sub(buf, b"foo.*", Some(b"workers"), b"22"),
        Op::Sub {
            subject: b("foo.*"),
            queue: ob("workers"),
            sid: b("22"),
        },
    );
    e(
        Role::Client,
        &|buf| encode_unsub(buf, b"22", None),
        Op::Unsub {
            sid: b("22"),
            max: None,
        },
    );
    e(
        Role::Client,
        &|buf| encode_unsub(buf, b"22", Some(5)),
        Op::Unsub {
            sid: b("22"),
            max: Some(5),
        },
    );

    // Server -> client.
    e(
        Role::ClientSide,
        &|buf| encode_msg(buf, b"foo", b"1", None, b"hi"),
        Op::Msg {
            subject: b("foo"),
            sid: b("1"),
            reply: None,
            header_len: None,
            payload: b("hi"),
        },
    );
    e(
        Role::ClientSide,
        &|buf| encode_msg(buf, b"foo", b"1", Some(b"rep"), b"hi"),
        Op::Msg {
            subject: b("foo"),
            sid: b("1"),
            reply: ob("rep"),
            header_len: None,
            payload: b("hi"),
        },
    );
    e(
        Role::ClientSide,
        &|buf| {
            encode_hmsg(
                buf,
                b"_INBOX.x",
                b"3",
                None,
                16,
                headers::no_responders_block(),
            )
        },
        Op::Msg {
            subject: b("_INBOX.x"),
            sid: b("3"),
            reply: None,
            header_len: Some(16),
            payload: b("NATS/1.0 503\r\n\r\n"),
        },
    );
    e(
        Role::ClientSide,
        &|buf| encode_hmsg(buf, b"s", b"3", Some(b"r"), 12, b"NATS/1.0\r\n\r\nbody"),
        Op::Msg {
            subject: b("s"),
            sid: b("3"),
            reply: ob("r"),
            header_len: Some(12),
            payload: b("NATS/1.0\r\n\r\nbody"),
        },
    );

    // Routes.
    e(
        Role::Route,
        &|buf| encode_rs_plus(buf, b"$G", b"foo", None),
        Op::RSub {
            account: b("$G"),
            subject: b("foo"),
            queue: None,
            weight: None,
        },
    );
    e(
        Role::Route,
        &|buf| encode_rs_plus(buf, b"$G", b"bar", Some((b"q", 1))),
        Op::RSub {
            account: b("$G"),
            subject: b("bar"),
            queue: ob("q"),
            weight: Some(1),
        },
    );
    e(
        Role::Route,
        &|buf| encode_rs_minus(buf, b"ACC", b"bar", Some(b"q")),
        Op::RUnsub {
            account: b("ACC"),
            subject: b("bar"),
            queue: ob("q"),
        },
    );
    e(
        Role::Route,
        &|buf| encode_rs_minus(buf, b"ACC", b"bar", None),
        Op::RUnsub {
            account: b("ACC"),
            subject: b("bar"),
            queue: None,
        },
    );
    let no_q: [&[u8]; 0] = [];
    e(
        Role::Route,
        &|buf| encode_rmsg(buf, b"$G", b"foo", Some(b"r"), no_q, None, b"hi"),
        Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![],
            header_len: None,
            payload: b("hi"),
        },
    );
    e(
        Role::Route,
        &|buf| encode_rmsg(buf, b"$G", b"foo", None, no_q, None, b"hi"),
        Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("foo"),
            reply: None,
            queues: vec![],
            header_len: None,
            payload: b("hi"),
        },
    );
    e(
        Role::Route,
        &|buf| encode_rmsg(buf, b"$G", b"foo", Some(b"r"), [b"q1", b"q2"], None, b"hi"),
        Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![b("q1"), b("q2")],
            header_len: None,
            payload: b("hi"),
        },
    );
    e(
        Role::Route,
        &|buf| {
            encode_rmsg(
                buf,
                b"$G",
                b"bar",
                None,
                [b"q"],
                Some(12),
                b"NATS/1.0\r\n\r\nab",
            )
        },
        Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("bar"),
            reply: None,
            queues: vec![b("q")],
            header_len: Some(12),
            payload: b("NATS/1.0\r\n\r\nab"),
        },
    );
    e(
        Role::Route,
        &|buf| {
            encode_rmsg(
                buf,
                b"$G",
                b"bar",
                Some(b"r"),
                no_q,
                Some(12),
                b"NATS/1.0\r\n\r\n",
            )
        },
        Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("bar"),
            reply: ob("r"),
            queues: vec![],
            header_len: Some(12),
            payload: b("NATS/1.0\r\n\r\n"),
        },
    );
    let many: Vec<String> = (0..20).map(|i| format!("queue{i}")).collect();
    let many_b: Vec<Bytes> = many.iter().map(|q| Bytes::from(q.clone())).collect();
    {
        let many = many.clone();
        e(
            Role::Route,
            &move |buf| encode_route_lmsg(buf, b"C2", b"$G", b"s", Some(b"r"), &many, None, b"x"),
            Op::RMsg {
                origin: ob("C2"),
                account: b("$G"),
                subject: b("s"),
                reply: ob("r"),
                queues: many_b.clone(),
                header_len: None,
                payload: b("x"),
            },
        );
    }
    e(
        Role::Route,
        &|buf| {
            encode_route_lmsg(
                buf,
                b"C2",
                b"$G",
                b"s",
                None,
                no_q,
                Some(12),
                b"NATS/1.0\r\n\r\n",
            )
        },
        Op::RMsg {
            origin: ob("C2"),
            account: b("$G"),
            subject: b("s"),
            reply: None,
            queues: vec![],
            header_len: Some(12),
            payload: b("NATS/1.0\r\n\r\n"),
        },
    );
    e(
        Role::Route,
        &|buf| encode_route_ls_plus(buf, b"C2", b"$G", b"foo.>", Some((b"g", 3))),
        Op::RLSub {
            origin: b("C2"),
            account: b("$G"),
            subject: b("foo.>"),
            queue: ob("g"),
            weight: Some(3),
        },
    );
    e(
        Role::Route,
        &|buf| encode_route_ls_plus(buf, b"C2", b"$G", b"foo.>", None),
        Op::RLSub {
            origin: b("C2"),
            account: b("$G"),
            subject: b("foo.>"),
            queue: None,
            weight: None,
        },
    );
    e(
        Role::Route,
        &|buf| encode_route_ls_minus(buf, None, b"$G", b"foo.>", Some(b"g")),
        Op::RLUnsub {
            origin: None,
            account: b("$G"),
            subject: b("foo.>"),
            queue: ob("g"),
        },
    );

    // Leaf links.
    e(
        Role::Leaf,
        &|buf| encode_ls_plus(buf, b"foo.>", None),
        Op::LSub {
            subject: b("foo.>"),
            queue: None,
            weight: None,
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_ls_plus(buf, b"q.x", Some((b"grp", 1))),
        Op::LSub {
            subject: b("q.x"),
            queue: ob("grp"),
            weight: Some(1),
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_ls_minus(buf, b"q.x", Some(b"grp")),
        Op::LUnsub {
            subject: b("q.x"),
            queue: ob("grp"),
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_ls_minus(buf, b"foo.>", None),
        Op::LUnsub {
            subject: b("foo.>"),
            queue: None,
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_lmsg(buf, b"foo.bar", Some(b"rep"), no_q, None, b"hello"),
        Op::LMsg {
            subject: b("foo.bar"),
            reply: ob("rep"),
            queues: vec![],
            header_len: None,
            payload: b("hello"),
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_lmsg(buf, b"foo", None, no_q, None, b""),
        Op::LMsg {
            subject: b("foo"),
            reply: None,
            queues: vec![],
            header_len: None,
            payload: b(""),
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_lmsg(buf, b"foo", Some(b"r"), [b"q1", b"q2"], None, b"x"),
        Op::LMsg {
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![b("q1"), b("q2")],
            header_len: None,
            payload: b("x"),
        },
    );
    e(
        Role::Leaf,
        &|buf| encode_lmsg(buf, b"foo", None, [b"q1"], Some(12), b"NATS/1.0\r\n\r\nab"),
        Op::LMsg {
            subject: b("foo"),
            reply: None,
            queues: vec![b("q1")],
            header_len: Some(12),
            payload: b("NATS/1.0\r\n\r\nab"),
        },
    );
    e(
        Role::Leaf,
        &|buf| {
            encode_lmsg(
                buf,
                b"foo",
                Some(b"r"),
                no_q,
                Some(16),
                headers::no_responders_block(),
            )
        },
        Op::LMsg {
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![],
            header_len: Some(16),
            payload: b("NATS/1.0 503\r\n\r\n"),
        },
    );
    v
}

#[test]
fn every_op_round_trips() {
    for (role, wire, want) in samples() {
        let mut buf = BytesMut::from(&wire[..]);
        let got = parse(&mut buf, role, &limits())
            .unwrap_or_else(|e| panic!("{role:?} {:?}: {e}", String::from_utf8_lossy(&wire)));
        assert_eq!(
            got.as_ref(),
            Some(&want),
            "{:?}",
            String::from_utf8_lossy(&wire)
        );
        assert!(
            buf.is_empty(),
            "leftover after {:?}",
            String::from_utf8_lossy(&wire)
        );
    }
}

#[test]
fn split_at_every_byte_boundary() {
    for (role, wire, want) in samples() {
        for cut in 0..wire.len() {
            // Stateless.
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(
                parse(&mut buf, role, &limits()),
                Ok(None),
                "cut {cut} of {wire:?}"
            );
            assert_eq!(&buf[..], &wire[..cut], "buffer touched");
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(parse(&mut buf, role, &limits()), Ok(Some(want.clone())));
            assert!(buf.is_empty());
            // Stateful.
            let mut p = Parser::new(role, limits());
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(p.next(&mut buf), Ok(None));
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(p.next(&mut buf), Ok(Some(want.clone())));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn borrowed_decoding_matches_owned() {
    for (role, wire, want) in samples() {
        let mut p = Parser::new(role, limits());
        // Trailing bytes of a next op must not be counted.
        let mut buf = wire.clone();
        buf.extend_from_slice(b"PING\r\n");
        for cut in 0..wire.len() {
            assert_eq!(p.next_ref(&buf[..cut]), Ok(None));
        }
        let (op, len) = p.next_ref(&buf).unwrap().unwrap();
        assert_eq!(len, wire.len());
        assert_eq!(op.map(Bytes::copy_from_slice), want);
    }
}

#[test]
fn byte_by_byte_feed() {
    for (role, wire, want) in samples() {
        let mut p = Parser::new(role, limits());
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, &byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            match p.next(&mut buf).unwrap() {
                Some(op) => {
                    assert_eq!(i, wire.len() - 1, "op completed early");
                    got = Some(op);
                }
                None => assert!(i < wire.len() - 1),
            }
        }
        assert_eq!(got, Some(want));
    }
}

#[test]
fn pipelined_ops_in_one_buffer() {
    for role in [Role::Client, Role::Route, Role::Leaf, Role::ClientSide] {
        let all: Vec<_> = samples().into_iter().filter(|s| s.0 == role).collect();
        let mut buf = BytesMut::new();
        for (_, wire, _) in &all {
            buf.extend_from_slice(wire);
        }
        let mut p = Parser::new(role, limits());
        for (_, _, want) in &all {
            assert_eq!(p.next(&mut buf).unwrap().as_ref(), Some(want));
        }
        assert_eq!(p.next(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }
}

#[test]
fn large_payload_in_pieces_reports_pending_len() {
    let payload = vec![b'x'; 200_000];
    let mut wire = BytesMut::new();
    encode_pub(&mut wire, b"big", None, &payload);
    let mut p = Parser::new(Role::Client, limits());
    let mut buf = BytesMut::new();
    let mut chunks = wire.chunks(1000);
    buf.extend_from_slice(chunks.next().unwrap());
    assert_eq!(p.next(&mut buf), Ok(None));
    assert_eq!(p.pending_frame_len(), Some(wire.len()));
    let mut done = None;
    for c in chunks {
        buf.extend_from_slice(c);
        if let Some(op) = p.next(&mut buf).unwrap() {
            done = Some(op);
        }
    }
    match done {
        Some(Op::Pub { payload: got, .. }) => assert_eq!(&got[..], &payload[..]),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.pending_frame_len(), None);
}

fn parse_str(role: Role, s: &str) -> Result<Option<Op>, ProtoError> {
    let mut buf = BytesMut::from(s.as_bytes());
    parse(&mut buf, role, &limits())
}

#[test]
fn verbs_are_case_insensitive_and_whitespace_tolerant() {
    assert_eq!(
        parse_str(Role::Client, "pUb\t foo \tr  3 \r\nabc\r\n"),
        Ok(Some(Op::Pub {
            subject: b("foo"),
            reply: ob("r"),
            payload: b("abc"),
        }))
    );
    assert_eq!(parse_str(Role::Client, "ping\n"), Ok(Some(Op::Ping)));
    assert_eq!(
        parse_str(Role::Client, "PINGgarbage\r\n"),
        Ok(Some(Op::Ping))
    );
    assert_eq!(parse_str(Role::Client, "PING\r\r\n"), Ok(Some(Op::Ping)));
    assert_eq!(parse_str(Role::Client, "+okxyz\r\n"), Ok(Some(Op::Ok)));
    assert_eq!(
        parse_str(Role::Client, "connect{}\r\n"),
        Ok(Some(Op::Connect(b("{}"))))
    );
    assert_eq!(
        parse_str(Role::Client, "PUB\tfoo\t 2\nab\r\n")
            .unwrap()
            .map(|o| o.verb()),
        Some("PUB")
    );
    assert_eq!(
        parse_str(Role::Route, "rs+ $G bar q 1\r\n"),
        Ok(Some(Op::RSub {
            account: b("$G"),
            subject: b("bar"),
            queue: ob("q"),
            weight: Some(1),
        }))
    );
    assert_eq!(
        parse_str(Role::Leaf, "lmsg foo.bar rep 5\r\nhello\r\n"),
        Ok(Some(Op::LMsg {
            subject: b("foo.bar"),
            reply: ob("rep"),
            queues: vec![],
            header_len: None,
            payload: b("hello"),
        }))
    );
    assert_eq!(
        parse_str(Role::ClientSide, "-err  'Authorization Violation'\r\n"),
        Ok(Some(Op::Err(b("Authorization Violation"))))
    );
}

#[test]
fn observed_nats_server_lines() {
    // From 2.9.10 traces (see the reference notes).
    assert_eq!(
        parse_str(
            Role::Route,
            "HMSG $G bar | q 12 14\r\nNATS/1.0\r\n\r\nab\r\n"
        ),
        Ok(Some(Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("bar"),
            reply: None,
            queues: vec![b("q")],
            header_len: Some(12),
            payload: b("NATS/1.0\r\n\r\nab"),
        }))
    );
    assert_eq!(
        parse_str(Role::Route, "RMSG $G foo r 2\r\nhi\r\n"),
        Ok(Some(Op::RMsg {
            origin: None,
            account: b("$G"),
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![],
            header_len: None,
            payload: b("hi"),
        }))
    );
    // Route LMSG always has a header size, 0 means none.
    assert_eq!(
        parse_str(Role::Route, "LMSG C2 $G foo + r q1 q2 0 2\r\nhi\r\n"),
        Ok(Some(Op::RMsg {
            origin: ob("C2"),
            account: b("$G"),
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![b("q1"), b("q2")],
            header_len: None,
            payload: b("hi"),
        }))
    );
    assert_eq!(
        parse_str(
            Role::ClientSide,
            "HMSG _INBOX.a 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        ),
        Ok(Some(Op::Msg {
            subject: b("_INBOX.a"),
            sid: b("1"),
            reply: None,
            header_len: Some(16),
            payload: b("NATS/1.0 503\r\n\r\n"),
        }))
    );
    // HPUB with a zero-length header block is legal.
    assert_eq!(
        parse_str(Role::Client, "HPUB foo 0 2\r\nab\r\n"),
        Ok(Some(Op::HPub {
            subject: b("foo"),
            reply: None,
            header_len: 0,
            payload: b("ab"),
        }))
    );
    // Non-numeric UNSUB max is ignored, as nats-server does.
    assert_eq!(
        parse_str(Role::Client, "UNSUB 1 x\r\n"),
        Ok(Some(Op::Unsub {
            sid: b("1"),
            max: None,
        }))
    );
}

#[test]
fn route_ls_minus_with_lnocu() {
    let mut p = Parser::new(Role::Route, limits());
    p.set_route_lnocu(true);
    let mut buf = BytesMut::new();
    encode_route_ls_minus(&mut buf, Some(b"C2"), b"$G", b"foo", Some(b"q"));
    encode_route_ls_minus(&mut buf, Some(b"C2"), b"$G", b"foo", None);
    assert_eq!(
        p.next(&mut buf),
        Ok(Some(Op::RLUnsub {
            origin: ob("C2"),
            account: b("$G"),
            subject: b("foo"),
            queue: ob("q"),
        }))
    );
    assert_eq!(
        p.next(&mut buf),
        Ok(Some(Op::RLUnsub {
            origin: ob("C2"),
            account: b("$G"),
            subject: b("foo"),
            queue: None,
        }))
    );
    // Without lnocu the same 3 tokens mean account, subject, queue.
    assert_eq!(
        parse_str(Role::Route, "LS- C2 $G foo\r\n"),
        Ok(Some(Op::RLUnsub {
            origin: None,
            account: b("C2"),
            subject: b("$G"),
            queue: ob("foo"),
        }))
    );
}

#[test]
fn unknown_ops_per_role() {
    let unknown = Err(ProtoError::UnknownOp);
    // Route/leaf verbs from a client, detected before the newline arrives.
    assert_eq!(parse_str(Role::Client, "RS+ foo"), unknown);
    assert_eq!(parse_str(Role::Client, "LS+ foo\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, "MSG foo 1 2\r\nab\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, "HMSG foo 1 2 2\r\nab\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, "\r\nPING\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, " PING\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, "PUBfoo 1\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, "PUX"), unknown);
    assert_eq!(parse_str(Role::Client, "UNSUB\r\n"), unknown);
    assert_eq!(parse_str(Role::Client, "-ERR\r\n"), unknown);
    assert_eq!(parse_str(Role::Leaf, "RS+ $G foo\r\n"), unknown);
    assert_eq!(parse_str(Role::Leaf, "PUB foo 1\r\nx\r\n"), unknown);
    assert_eq!(parse_str(Role::Route, "SUB foo 1\r\n"), unknown);
    assert_eq!(parse_str(Role::ClientSide, "LMSG foo 1\r\nx\r\n"), unknown);
    assert_eq!(parse_str(Role::ClientSide, "CONNECT {}\r\n"), unknown);
    // Prefixes of valid verbs wait.
    assert_eq!(parse_str(Role::Client, "PU"), Ok(None));
    assert_eq!(parse_str(Role::Route, "RS"), Ok(None));
    assert_eq!(parse_str(Role::Client, "PUB"), Ok(None));
    assert_eq!(
        ProtoError::UnknownOp.client_error_text(),
        Some("Unknown Protocol Operation")
    );
}

#[test]
fn payload_must_end_in_crlf() {
    for s in [
        "PUB foo 3\r\nabcd\r\n",
        "PUB foo 3\r\nabc\nPING\r\n",
        "PUB foo 3\r\nab\r\n\r\n",
    ] {
        let err = parse_str(Role::Client, s).unwrap_err();
        assert_eq!(err, ProtoError::BadPayloadTrailer, "{s:?}");
        assert_eq!(err.client_error_text(), Some("Unknown Protocol Operation"));
    }
    // Reported as soon as the wrong byte is there.
    assert_eq!(
        parse_str(Role::Client, "PUB foo 3\r\nabcd"),
        Err(ProtoError::BadPayloadTrailer)
    );
    let mut p = Parser::new(Role::Client, limits());
    let mut buf = BytesMut::from(&b"PUB foo 3\r\nab"[..]);
    assert_eq!(p.next(&mut buf), Ok(None));
    buf.extend_from_slice(b"cX");
    assert_eq!(p.next(&mut buf), Err(ProtoError::BadPayloadTrailer));
    // Waiting for the final \n is fine.
    assert_eq!(parse_str(Role::Client, "PUB foo 2\r\nab\r"), Ok(None));
}

#[test]
fn max_payload_is_found_on_the_control_line() {
    let l = ParserLimits {
        max_control_line: 4096,
        max_payload: 1024,
    };
    for s in [
        "PUB foo 1025\r\n",
        "PUB foo 2000 \r\n",
        "HPUB foo 12 1025\r\n",
    ] {
        let mut buf = BytesMut::from(s.as_bytes());
        let err = parse(&mut buf, Role::Client, &l).unwrap_err();
        assert!(
            matches!(err, ProtoError::MaxPayload { max: 1024, .. }),
            "{s:?}"
        );
        assert_eq!(err.client_error_text(), Some("Maximum Payload Violation"));
    }
    let mut buf = BytesMut::new();
    encode_pub(&mut buf, b"foo", None, &[b'x'; 1024]);
    assert!(matches!(
        parse(&mut buf, Role::Client, &l),
        Ok(Some(Op::Pub { .. }))
    ));
    // Leaf links enforce it too.
    let mut buf = BytesMut::from(&b"LMSG foo 2000\r\n"[..]);
    assert!(matches!(
        parse(&mut buf, Role::Leaf, &l),
        Err(ProtoError::MaxPayload { size: 2000, .. })
    ));
}

#[test]
fn max_control_line() {
    let l = ParserLimits {
        max_control_line: 256,
        max_payload: 1 << 20,
    };
    let run = |s: String| {
        let mut buf = BytesMut::from(s.as_bytes());
        parse(&mut buf, Role::Client, &l)
    };
    // Exactly 256 argument bytes is fine; 257 is not (as 2.9.10 with mcl 256).
    let ok = format!("SUB foo {}\r\n", "1".repeat(256 - 4));
    assert!(matches!(run(ok), Ok(Some(Op::Sub { .. }))));
    let long = format!("SUB foo {}\r\n", "1".repeat(256 - 3));
    let err = run(long).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::MaxControlLine { len: 257, max: 256 }
    ));
    assert_eq!(
        err.client_error_text(),
        Some("maximum control line exceeded")
    );
    // Without a newline we do not wait forever.
    assert!(matches!(
        run(format!("PUB foo {}", "x".repeat(300))),
        Err(ProtoError::MaxControlLine { .. })
    ));
    // ...but a pending line at the limit (with its \r) still waits.
    assert_eq!(run(format!("SUB foo {}\r", "1".repeat(256 - 4))), Ok(None));
    assert!(matches!(
        run(format!("CONNECT {{{}}}\r\n", " ".repeat(300))),
        Err(ProtoError::MaxControlLine { .. })
    ));
    // The ignored tail of PING/+OK is bounded too, whether or not the newline has
    // arrived (found by fuzzing: outcome must not depend on read boundaries).
    for tail in ["", "\r\n"] {
        assert!(matches!(
            run(format!("+OK{}{tail}", "z".repeat(300))),
            Err(ProtoError::MaxControlLine { .. })
        ));
    }
}

#[test]
fn bad_arguments_close_without_err_text() {
    for s in [
        "PUB foo\r\n",
        "PUB foo bar baz 3\r\n",
        "PUB foo x\r\n",
        "PUB foo -1\r\n",
        "PUB foo +1\r\n",
        "PUB foo 0x1\r\n",
        "PUB foo 1000000000\r\n",
        "PUB \r\n",
        "HPUB foo 5 3\r\n",
        "HPUB foo 14\r\n",
        "SUB foo\r\n",
        "SUB a b c d\r\n",
        "UNSUB 1 2 3\r\n",
    ] {
        let err = parse_str(Role::Client, s).unwrap_err();
        assert!(
            matches!(err, ProtoError::InvalidArgs { .. }),
            "{s:?}: {err:?}"
        );
        assert_eq!(err.client_error_text(), None);
        assert!(err.closes_connection());
    }
    for (role, s) in [
        (Role::Route, "RS+ $G\r\n"),
        (Role::Route, "RS+ $G foo q\r\n"),
        (Role::Route, "RS+ $G foo q x\r\n"),
        (Role::Route, "RS- $G foo q extra\r\n"),
        (Role::Route, "RMSG $G 2\r\n"),
        (Role::Route, "RMSG $G foo * q 2\r\n"),
        (Role::Route, "HMSG $G foo 3 2\r\n"),
        (Role::Route, "LMSG C $G foo 2\r\n"),
        (Role::Route, "LS+ C $G\r\n"),
        (Role::Leaf, "LS+ foo q\r\n"),
        (Role::Leaf, "LS- foo q extra\r\n"),
        (Role::Leaf, "LMSG foo\r\n"),
        (Role::Leaf, "LMSG foo ++ r q 1\r\n"),
        (Role::Leaf, "HMSG foo 1\r\n"),
        (Role::ClientSide, "MSG foo 1\r\n"),
        (Role::ClientSide, "MSG foo 1 r x y 2\r\n"),
        (Role::ClientSide, "HMSG foo 1 3 2\r\n"),
    ] {
        let err = parse_str(role, s).unwrap_err();
        assert!(
            matches!(err, ProtoError::InvalidArgs { .. }),
            "{role:?} {s:?}: {err:?}"
        );
    }
}

#[test]
fn parsed_pub_shares_the_read_buffer() {
    let mut buf = BytesMut::with_capacity(4096);
    encode_pub(&mut buf, b"foo", Some(b"bar"), b"payload");
    encode_pub(&mut buf, b"foo", None, b"second");
    let base = buf.as_ptr() as usize;
    let Some(Op::Pub {
        subject, payload, ..
    }) = parse(&mut buf, Role::Client, &limits()).unwrap()
    else {
        panic!()
    };
    // Zero copy: both slices point into the original allocation.
    assert_eq!(subject.as_ptr() as usize, base + 4);
    assert_eq!(payload.as_ptr() as usize, base + "PUB foo bar 7\r\n".len());
    assert!(buf.starts_with(b"PUB foo 6"));
}

#[test]
fn info_json_decodes() {
    let line = "INFO {\"server_id\":\"N1\",\"server_name\":\"proto-test\",\"version\":\"2.9.10\",\"proto\":1,\"go\":\"go1.19.8\",\"host\":\"127.0.0.1\",\"port\":14300,\"headers\":true,\"auth_required\":true,\"max_payload\":1024,\"client_id\":4,\"client_ip\":\"127.0.0.1\",\"cluster\":\"C1\",\"connect_urls\":[\"127.0.0.1:4222\"],\"leafnode_urls\":[\"x:7422\"],\"info_on_connect\":true,\"some_future_field\":3} \r\n";
    let Some(Op::Info(json)) = parse_str(Role::ClientSide, line).unwrap() else {
        panic!()
    };
    let info: ServerInfo = serde_json::from_slice(json.trim_ascii_end()).unwrap();
    assert_eq!(info.max_payload, 1024);
    assert_eq!(info.client_id, 4);
    assert!(info.info_on_connect && info.auth_required);
    assert_eq!(info.leafnode_urls, vec!["x:7422".to_string()]);
}

/// A route dedicated to one account (nats-server 2.10 `route_account`) omits the account
/// in every interest and message op: our encoders write that form for an empty account,
/// and the parser told so reads it back (an empty account), queues and headers included.
#[test]
fn per_account_route_ops_carry_no_account() {
    let mut wire = BytesMut::new();
    let no_q: [&[u8]; 0] = [];
    encode_rs_plus(&mut wire, b"", b"foo", Some((b"q", 2)));
    encode_rs_minus(&mut wire, b"", b"foo", None);
    encode_rmsg(&mut wire, b"", b"foo", Some(b"r"), no_q, None, b"hi");
    encode_rmsg(
        &mut wire,
        b"",
        b"foo",
        None,
        [b"q".as_slice()],
        Some(2),
        b"\r\nab",
    );
    encode_route_ls_plus(&mut wire, b"C1", b"", b"bar", None);
    assert!(wire.starts_with(b"RS+ foo q 2\r\nRS- foo\r\nRMSG foo r 2\r\nhi\r\n"));
    let mut p = Parser::new(Role::Route, limits());
    p.set_route_no_account(true);
    let mut ops = Vec::new();
    while let Some(op) = p.next(&mut wire).unwrap() {
        ops.push(op);
    }
    assert_eq!(ops.len(), 5);
    assert_eq!(
        ops[0],
        Op::RSub {
            account: Bytes::new(),
            subject: b("foo"),
            queue: ob("q"),
            weight: Some(2),
        }
    );
    assert_eq!(
        ops[2],
        Op::RMsg {
            origin: None,
            account: Bytes::new(),
            subject: b("foo"),
            reply: ob("r"),
            queues: vec![],
            header_len: None,
            payload: b("hi"),
        }
    );
    assert!(
        matches!(&ops[3], Op::RMsg { queues, header_len: Some(2), .. } if queues == &vec![b("q")])
    );
    assert!(
        matches!(&ops[4], Op::RLSub { origin, subject, .. } if origin == &b("C1") && subject == &b("bar"))
    );
    // The same bytes on an ordinary route: the subject would be read as the account.
    let mut wire = BytesMut::from(&b"RS+ foo\r\n"[..]);
    assert!(Parser::new(Role::Route, limits()).next(&mut wire).is_err());
}
