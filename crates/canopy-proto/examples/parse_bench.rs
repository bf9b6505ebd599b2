//! Rough throughput check for the hot path: `cargo run --release -p canopy-proto
//! --example parse_bench`. Parses pipelined 128-byte PUBs from 64 KiB reads and encodes
//! the matching MSG, like a 1:1 relay would.

use std::time::Instant;

use bytes::BytesMut;
use canopy_proto::{encode_msg, encode_pub, Op, Parser, ParserLimits, Role};

fn main() {
    let payload = [b'x'; 128];
    let mut one = BytesMut::new();
    encode_pub(&mut one, b"bench.subject.foo", None, &payload);
    let per_read = 65536 / one.len();
    let mut read = BytesMut::new();
    for _ in 0..per_read {
        read.extend_from_slice(&one);
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut parser = Parser::new(Role::Client, ParserLimits::default());
    let mut out = BytesMut::with_capacity(1 << 20);
    let mut n = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut buf = read.clone();
        while let Ok(Some(op)) = parser.next(&mut buf) {
            if let Op::Pub {
                subject, payload, ..
            } = op
            {
                encode_msg(&mut out, &subject, b"1", None, &payload);
                n += 1;
            }
        }
        out.clear();
    }
    let el = start.elapsed();
    println!(
        "{n} PUB parsed + MSG encoded in {el:?}: {:.1} ns/msg",
        el.as_nanos() as f64 / n as f64
    );

    // Parse only.
    let mut n = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut buf = read.clone();
        while let Ok(Some(op)) = parser.next(&mut buf) {
            std::hint::black_box(&op);
            n += 1;
        }
    }
    let el = start.elapsed();
    println!("parse only: {:.1} ns/msg", el.as_nanos() as f64 / n as f64);

    // Borrowed parse + encode.
    use bytes::Buf;
    let mut n = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut buf = read.clone();
        while let Ok(Some((op, len))) = parser.next_ref(&buf) {
            if let Op::Pub {
                subject, payload, ..
            } = op
            {
                encode_msg(&mut out, subject, b"1", None, payload);
                n += 1;
            }
            buf.advance(len);
        }
        out.clear();
    }
    let el = start.elapsed();
    println!(
        "next_ref + encode: {:.1} ns/msg",
        el.as_nanos() as f64 / n as f64
    );

    // Buffer copy only (the baseline included above).
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(read.clone());
    }
    let el = start.elapsed();
    println!("clone only: {:.1} ns/msg", el.as_nanos() as f64 / n as f64);
}
