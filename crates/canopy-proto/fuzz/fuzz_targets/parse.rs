//! Fuzz the protocol parser in every role: whole-buffer and chunked feeding must agree,
//! never panic, every `Ok(Some)` must consume bytes while `Ok(None)` consumes none, and
//! `next_ref` must agree with `next`.
#![no_main]

use bytes::{Bytes, BytesMut};
use canopy_proto::{Parser, ParserLimits, Role};
use libfuzzer_sys::fuzz_target;

fn drain(p: &mut Parser, buf: &mut BytesMut) -> (usize, bool) {
    let mut n = 0;
    loop {
        let before = buf.len();
        // The borrowing decoder must agree with the owning one.
        let mut q = p.clone();
        let borrowed = q
            .next_ref(buf)
            .map(|o| o.map(|(op, len)| (op.map(Bytes::copy_from_slice), len)));
        match p.next(buf) {
            Ok(Some(op)) => {
                assert!(buf.len() < before);
                assert_eq!(borrowed, Ok(Some((op, before - buf.len()))));
                n += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                assert_eq!(borrowed, Ok(None));
                return (n, false);
            }
            Err(_) => return (n, true),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the chunk size for the split-feed pass.
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    for role in [Role::Client, Role::Route, Role::Leaf, Role::ClientSide] {
        for lnocu in [false, true] {
            let limits = ParserLimits {
                max_control_line: 512,
                max_payload: 4096,
            };
            let mut p = Parser::new(role, limits);
            p.set_route_lnocu(lnocu);
            let mut whole = BytesMut::from(data);
            let (n_whole, err_whole) = drain(&mut p, &mut whole);

            let mut p = Parser::new(role, limits);
            p.set_route_lnocu(lnocu);
            let mut buf = BytesMut::new();
            let (mut n, mut err) = (0, false);
            for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                let (k, e) = drain(&mut p, &mut buf);
                n += k;
                if e {
                    err = true;
                    break;
                }
            }
            assert_eq!(n, n_whole);
            assert_eq!(err, err_whole);
        }
    }
});
