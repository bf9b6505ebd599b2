//! Canopy's S2 codec against Go's (klauspost/compress/s2, what nats-server uses): streams
//! the Go reference writes the way nats-server flushes a leaf link decode to the same
//! bytes here, and streams Canopy writes decode to the same bytes in Go, at every level.
//! Compressed bytes may differ between implementations; decoded bytes may not.
//!
//! Needs Go and Debian's `golang-github-klauspost-compress-dev`; skipped without them. The
//! reference program is `tests/s2ref/main.go`, built in GOPATH mode into a temp dir.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::BytesMut;
use canopy_server::auth::s2::{encode_flush, Level, S2Decoder};

const GO_S2: &str = "/usr/share/gocode/src/github.com/klauspost/compress/s2";

/// Builds the Go reference; `None` when Go or the library is missing.
fn build_reference(dir: &Path) -> Option<PathBuf> {
    if !Path::new(GO_S2).exists() {
        return None;
    }
    let src = dir.join("src/s2ref");
    std::fs::create_dir_all(&src).unwrap();
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s2ref/main.go");
    std::fs::copy(main, src.join("main.go")).unwrap();
    let bin = dir.join("s2ref");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("s2ref")
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("/usr/share/gocode:{}", dir.display()))
        .status()
        .ok()?;
    status.success().then_some(bin)
}

fn run(bin: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "s2ref {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let text: Vec<u8> = (0..20_000)
        .flat_map(|i| {
            format!(
                "LMSG sensors.site-a.temp.{} _INBOX.x{} 40\r\n{{\"value\":{},\"unit\":\"celsius\"}}\r\n",
                i % 13,
                i % 5,
                i % 997
            )
            .into_bytes()
        })
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..(1 << 20) + 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    vec![
        ("one byte", b"x".to_vec()),
        ("nats text", text),
        ("random", random),
    ]
}

fn decode_all(wire: &[u8]) -> Vec<u8> {
    let mut dec = S2Decoder::default();
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    // Fed in uneven pieces, as reads split it.
    for piece in wire.chunks(7001) {
        src.extend_from_slice(piece);
        while let Some(b) = dec.decode(&mut src).unwrap_or_else(|e| panic!("{e}")) {
            out.extend_from_slice(&b);
        }
    }
    assert!(src.is_empty(), "{} bytes left undecoded", src.len());
    out
}

#[test]
fn codec_interoperates_with_go_s2_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = build_reference(dir.path()) else {
        eprintln!("skipped: Go or golang-github-klauspost-compress-dev not installed");
        return;
    };
    let levels = [
        ("uncompressed", Level::Uncompressed),
        ("fast", Level::Fast),
        ("better", Level::Better),
        ("best", Level::Best),
    ];
    for (name, input) in inputs() {
        for (go_level, level) in levels {
            // Go writes, we read.
            let wire = run(&bin, &["enc", go_level], &input);
            assert!(
                decode_all(&wire) == input,
                "{name} at {go_level}: Go -> Canopy differs"
            );
            // We write (one stream per flush, flushes of varied size), Go reads.
            let mut enc = minlz::Encoder::new();
            let mut ours = BytesMut::new();
            let mut rest = &input[..];
            for size in [1usize, 4096, 70_000, (1 << 20) + 5, 250].iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*size).min(rest.len());
                encode_flush(&mut enc, level, &rest[..n], &mut ours);
                rest = &rest[n..];
            }
            let back = run(&bin, &["dec"], &ours);
            assert!(back == input, "{name} at {go_level}: Canopy -> Go differs");
        }
    }
}
