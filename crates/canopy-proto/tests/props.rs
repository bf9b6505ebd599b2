//! Property tests: arbitrary input never panics, chunking never changes the result,

#![allow(clippy::unwrap_used)]
//! and generated messages round-trip.

use bytes::{Bytes, BytesMut};
use canopy_proto::*;
use proptest::prelude::*;

const ROLES: [Role; 4] = [Role::Client, Role::Route, Role::Leaf, Role::ClientSide];

/// Parse everything in `buf` until None or an error.
fn drain(p: &mut Parser, buf: &mut BytesMut) -> (Vec<Op>, Option<ProtoError>) {
    let mut ops = Vec::new();
    loop {
        let before = buf.len();
        match p.next(buf) {
            Ok(Some(op)) => {
                assert!(buf.len() < before, "an op must consume bytes");
                ops.push(op);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "None must not consume");
                return (ops, None);
            }
            Err(e) => return (ops, Some(e)),
        }
    }
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![b'a'..=b'z', b'0'..=b'9', Just(b'.'), Just(b'>'), Just(b'$')],
        1..12,
    )
}

/// Verb-heavy noise so that the fuzzing reaches argument parsing.
fn noisy_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"PUB ".to_vec()),
        Just(b"HPUB ".to_vec()),
        Just(b"SUB ".to_vec()),
        Just(b"UNSUB ".to_vec()),
        Just(b"MSG ".to_vec()),
        Just(b"HMSG ".to_vec()),
        Just(b"RMSG ".to_vec()),
        Just(b"LMSG ".to_vec()),
        Just(b"RS+ ".to_vec()),
        Just(b"LS- ".to_vec()),
        Just(b"LS+ ".to_vec()),
        Just(b"PING\r\n".to_vec()),
        Just(b"INFO {}\r\n".to_vec()),
        Just(b"-ERR 'x'\r\n".to_vec()),
        Just(b"+ ".to_vec()),
        Just(b"| ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"12 ".to_vec()),
        Just(b"2 ".to_vec()),
        Just(b"0 ".to_vec()),
        token(),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        for role in ROLES {
            for limits in [ParserLimits::default(), ParserLimits { max_control_line: 8, max_payload: 4 }] {
                let mut p = Parser::new(role, limits);
                let mut buf = BytesMut::from(&data[..]);
                let _ = drain(&mut p, &mut buf);
                let mut buf = BytesMut::from(&data[..]);
                let _ = parse(&mut buf, role, &limits);
            }
        }
    }

    #[test]
    fn chunking_does_not_change_results(data in noisy_input(), cuts in proptest::collection::vec(0usize..64, 0..8)) {
        for role in ROLES {
            let limits = ParserLimits::default();
            let mut whole = BytesMut::from(&data[..]);
            let expected = drain(&mut Parser::new(role, limits), &mut whole);

            let mut p = Parser::new(role, limits);
            let mut buf = BytesMut::new();
            let mut ops = Vec::new();
            let mut err = None;
            let mut rest = &data[..];
            let mut cuts = cuts.clone();
            loop {
                let n = cuts.pop().unwrap_or(rest.len()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                let (mut got, e) = drain(&mut p, &mut buf);
                ops.append(&mut got);
                if e.is_some() {
                    err = e;
                    break;
                }
                if rest.is_empty() {
                    break;
                }
            }
            prop_assert_eq!(&ops, &expected.0);
            // The same error (variant) is found, possibly earlier than with the whole
            // buffer only for limits, which depend on what is buffered.
            prop_assert_eq!(
                err.as_ref().map(std::mem::discriminant),
                expected.1.as_ref().map(std::mem::discriminant)
            );
        }
    }

    #[test]
    fn generated_messages_round_trip(
        subject in token(),
        reply in proptest::option::of(token()),
        queues in proptest::collection::vec(token(), 0..5),
        origin in token(),
        hdr in proptest::option::of(0usize..8),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let hdr = hdr.map(|h| h.min(payload.len()));
        let sb = Bytes::from(subject.clone());
        let rb = reply.clone().map(Bytes::from);
        let qb: Vec<Bytes> = queues.iter().cloned().map(Bytes::from).collect();
        let pb = Bytes::from(payload.clone());

        let mut buf = BytesMut::new();
        encode_lmsg(&mut buf, &subject, reply.as_deref(), &queues, hdr, &payload);
        let got = parse(&mut buf, Role::Leaf, &ParserLimits::default());
        prop_assert_eq!(got, Ok(Some(Op::LMsg {
            subject: sb.clone(), reply: rb.clone(), queues: qb.clone(), header_len: hdr, payload: pb.clone(),
        })));

        let mut buf = BytesMut::new();
        encode_rmsg(&mut buf, b"ACC", &subject, reply.as_deref(), &queues, hdr, &payload);
        let got = parse(&mut buf, Role::Route, &ParserLimits::default());
        prop_assert_eq!(got, Ok(Some(Op::RMsg {
            origin: None, account: Bytes::from_static(b"ACC"), subject: sb.clone(), reply: rb.clone(),
            queues: qb.clone(), header_len: hdr, payload: pb.clone(),
        })));

        let mut buf = BytesMut::new();
        encode_route_lmsg(&mut buf, &origin, b"ACC", &subject, reply.as_deref(), &queues, hdr, &payload);
        let got = parse(&mut buf, Role::Route, &ParserLimits::default());
        prop_assert_eq!(got, Ok(Some(Op::RMsg {
            origin: Some(Bytes::from(origin.clone())), account: Bytes::from_static(b"ACC"), subject: sb.clone(),
            reply: rb.clone(), queues: qb.clone(), header_len: hdr.filter(|&h| h > 0), payload: pb.clone(),
        })));

        let mut buf = BytesMut::new();
        encode_pub(&mut buf, &subject, reply.as_deref(), &payload);
        let got = parse(&mut buf, Role::Client, &ParserLimits::default());
        prop_assert_eq!(got, Ok(Some(Op::Pub { subject: sb.clone(), reply: rb.clone(), payload: pb.clone() })));

        let mut buf = BytesMut::new();
        encode_msg(&mut buf, &subject, b"7", reply.as_deref(), &payload);
        let got = parse(&mut buf, Role::ClientSide, &ParserLimits::default());
        prop_assert_eq!(got, Ok(Some(Op::Msg {
            subject: sb, sid: Bytes::from_static(b"7"), reply: rb, header_len: None, payload: pb,
        })));
    }
}
