//! S2 compression of leaf and route links, as nats-server 2.10 puts it on the wire: every
//! flush of the writer is one complete S2 framed stream (the `S2sTwO` identifier, then blocks
//! of at most 1 MiB, each with the masked CRC-32C of its uncompressed bytes), and the reader
//! accepts any concatenation of such streams. The block codec is `minlz` (byte-compatible
//! with klauspost's S2); the framing and the bounds are ours (see
//! `../shared/reference/s2-notes.md`). Also here, shared by both link roles: nats-server's
//! negotiation (`selectCompressionMode`, `s2_auto` by RTT, what INFO announces), the
//! handshake reader that decodes once compression is on, and the counts of bytes on the
//! wire (`ConnStats::wire_in_bytes`/`wire_out_bytes`) next to the message bytes.
//!
//! The decoder runs before the peer has authenticated, so nothing it allocates is decided
//! by the peer beyond fixed bounds: a chunk's length is checked before it is buffered and a
//! block's decoded length before it is decoded.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use canopy_conf::{Compression, CompressionMode};
use canopy_proto::{Op, Parser, ServerInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::core::conn::ConnShared;

/// The writer's level (each side picks its own; every reader accepts all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Uncompressed,
    Fast,
    Better,
    Best,
}

impl Level {
    /// The level stored in [`crate::core::conn::ConnShared::compression`] (0: none).
    pub fn code(self) -> u8 {
        match self {
            Level::Uncompressed => 1,
            Level::Fast => 2,
            Level::Better => 3,
            Level::Best => 4,
        }
    }

    pub fn from_code(c: u8) -> Option<Level> {
        match c {
            1 => Some(Level::Uncompressed),
            2 => Some(Level::Fast),
            3 => Some(Level::Better),
            4 => Some(Level::Best),
            _ => None,
        }
    }

    /// nats-server's name for the level (`/leafz` `compression`, INFO `compression`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Uncompressed => "s2_uncompressed",
            Level::Fast => "s2_fast",
            Level::Better => "s2_better",
            Level::Best => "s2_best",
        }
    }
}

/// What we say in INFO `compression`: the configured mode before negotiation, then the
/// level chosen (`s2_auto` stays `s2_auto`, as nats-server says it).
pub fn announced(c: &Compression, chosen: Option<Level>) -> String {
    match (c.mode, chosen) {
        (CompressionMode::S2Auto | CompressionMode::On, _) => "s2_auto".into(),
        (_, Some(l)) => l.as_str().into(),
        (m, None) => m.as_str().into(),
    }
}

/// nats-server's `selectCompressionMode` and `s2_auto` level choice: the level this side
/// writes with, or `None` for no compression (a 2.9 peer announces nothing).
pub fn select_compression(ours: &Compression, theirs: &str, rtt: Duration) -> Option<Level> {
    use CompressionMode as M;
    let level_of = |m: M| match m {
        M::S2Uncompressed => Some(Level::Uncompressed),
        M::S2Fast => Some(Level::Fast),
        M::S2Better => Some(Level::Better),
        M::S2Best => Some(Level::Best),
        M::S2Auto | M::On => {
            Level::from_code(crate::core::conn::s2_auto_code(rtt, &auto_thresholds(ours)))
        }
        M::Off | M::Accept => None,
    };
    let theirs = match theirs {
        "" | "not supported" | "off" | "disabled" | "false" => return None,
        t => M::parse(t)?,
    };
    match (ours.mode, theirs) {
        (M::Off, _) | (M::Accept, M::Accept | M::Off) => None,
        (M::Accept, M::S2Auto | M::On) => level_of(M::S2Fast),
        (M::Accept, t) => level_of(t),
        (o, _) => level_of(o),
    }
}

/// `s2_auto`'s RTT thresholds: the configured ones, nats-server's defaults for the rest.
pub fn auto_thresholds(c: &Compression) -> [Duration; 3] {
    let at = |i: usize, ms: u64| {
        c.rtt_thresholds
            .get(i)
            .copied()
            .unwrap_or(Duration::from_millis(ms))
    };
    [at(0, 10), at(1, 50), at(2, 100)]
}

/// Our writer follows the RTT when our own mode is `s2_auto` (not when `accept` took
/// the peer's `s2_auto`: that becomes `s2_fast`, as in nats-server).
pub fn follow_rtt(conn: &ConnShared, c: &Compression) {
    if matches!(c.mode, CompressionMode::S2Auto | CompressionMode::On) {
        let _ = conn.s2_auto.set(auto_thresholds(c));
    }
}

/// True when our configuration asks for compression (so we take part in negotiating it).
pub fn wants_compression(c: Option<&Compression>) -> Option<&Compression> {
    c.filter(|c| c.mode != CompressionMode::Off)
}

/// Reads the next op of a handshake. With `s2` (once compression was negotiated) the
/// bytes read are compressed and decoded into `buf` first; what follows the op stays in
/// `buf` (decoded) and in the `s2` buffer (not yet decoded).
pub async fn read_op<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    parser: &mut Parser,
    mut s2: Option<(&mut BytesMut, &mut S2Decoder)>,
) -> Result<Op, String> {
    loop {
        if let Some((raw, dec)) = s2.as_mut() {
            while let Some(block) = dec.decode(raw).map_err(|e| e.to_string())? {
                buf.extend_from_slice(&block);
            }
        }
        match parser.next(buf) {
            Ok(Some(op)) => return Ok(op),
            Ok(None) => {}
            Err(e) => return Err(format!("protocol error: {e}")),
        }
        let read = match s2.as_mut() {
            Some((raw, _)) => rd.read_buf(*raw).await,
            None => rd.read_buf(buf).await,
        };
        match read {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Reads until the parser yields the peer's INFO (anything else first is an error).
pub async fn read_hub_info<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    parser: &mut Parser,
    s2: Option<(&mut BytesMut, &mut S2Decoder)>,
) -> Result<ServerInfo, String> {
    match read_op(rd, buf, parser, s2).await {
        Ok(Op::Info(json)) => {
            serde_json::from_slice::<ServerInfo>(&json).map_err(|e| format!("invalid INFO: {e}"))
        }
        Ok(op) => Err(format!("expected INFO, got {}", op.verb())),
        Err(e) => Err(format!("{e} before INFO")),
    }
}

/// A reader that counts what it reads from the socket (`wire_in_bytes`).
pub struct CountRead<R> {
    inner: R,
    conn: std::sync::Arc<ConnShared>,
}

impl<R> CountRead<R> {
    pub fn new(inner: R, conn: std::sync::Arc<ConnShared>) -> CountRead<R> {
        CountRead { inner, conn }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.conn
                .stats
                .wire_in_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

const IDENT: &[u8] = b"\xff\x06\x00\x00S2sTwO";
/// Go's default writer block size.
const WRITE_BLOCK: usize = 1 << 20;
/// Go's reader limit on a decoded block.
const MAX_BLOCK: usize = 4 << 20;
/// A Snappy-framed stream's limit on a decoded block.
const MAX_SNAPPY_BLOCK: usize = 64 << 10;

/// The masked CRC-32C of S2 (and Snappy) framing.
fn checksum(d: &[u8]) -> u32 {
    crc32c::crc32c(d).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_chunk(out: &mut BytesMut, typ: u8, sum: u32, body: &[u8]) {
    let len = body.len() + 4;
    out.extend_from_slice(&[typ, len as u8, (len >> 8) as u8, (len >> 16) as u8]);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(body);
}

/// Encodes one flush as one complete stream (what Go's `Reset`/`Write`/`Close` emits).
pub fn encode_flush(enc: &mut minlz::Encoder, level: Level, data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(IDENT);
    for block in data.chunks(WRITE_BLOCK) {
        let sum = checksum(block);
        let compressed = match level {
            Level::Uncompressed => None,
            Level::Fast => Some(enc.encode(block)),
            Level::Better => Some(enc.encode_better(block)),
            Level::Best => Some(enc.encode_best(block)),
        };
        // Go keeps a block compressed only when that saves enough.
        let limit = block
            .len()
            .saturating_sub(block.len() / 32)
            .saturating_sub(5);
        match compressed {
            Some(c) if c.len() <= limit => put_chunk(out, 0x00, sum, &c),
            _ => put_chunk(out, 0x01, sum, block),
        }
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("s2: {what}"))
}

/// Decodes a concatenation of S2 (or Snappy) framed streams, one block at a time.
#[derive(Default)]
pub struct S2Decoder {
    seen_ident: bool,
    snappy: bool,
    /// Bytes of a skippable chunk still to drop.
    skip: usize,
}

impl S2Decoder {
    /// The next decoded block, `None` when `src` holds no complete chunk yet.
    pub fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(src.len());
                src.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            if src.len() < 4 {
                return Ok(None);
            }
            let typ = src[0];
            let len = usize::from(src[1]) | usize::from(src[2]) << 8 | usize::from(src[3]) << 16;
            if !self.seen_ident && typ != 0xff {
                return Err(corrupt("stream does not start with an identifier"));
            }
            let max_block = if self.snappy {
                MAX_SNAPPY_BLOCK
            } else {
                MAX_BLOCK
            };
            let bound = match typ {
                0xff => 6,
                0x00 => minlz::max_encoded_len(max_block)
                    .map_err(|_| corrupt("bad block bound"))?
                    .saturating_add(4),
                0x01 => max_block + 4,
                0x80..=0xfe => {
                    src.advance(4);
                    self.skip = len;
                    continue;
                }
                _ => return Err(corrupt("unsupported chunk type")),
            };
            if (typ == 0xff && len != 6) || len > bound || (typ != 0xff && len < 4) {
                return Err(corrupt("bad chunk length"));
            }
            if src.len() < 4 + len {
                src.reserve(4 + len - src.len());
                return Ok(None);
            }
            src.advance(4);
            let body = src.split_to(len);
            match typ {
                0xff => {
                    match &body[..] {
                        b"S2sTwO" => self.snappy = false,
                        b"sNaPpY" => self.snappy = true,
                        _ => return Err(corrupt("bad stream identifier")),
                    }
                    self.seen_ident = true;
                }
                _ => {
                    let want = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    let block = if typ == 0x00 {
                        let (n, _) = minlz::decode_len(data).map_err(|_| corrupt("bad block"))?;
                        if n > max_block {
                            return Err(corrupt("block too large"));
                        }
                        Bytes::from(minlz::decode(data).map_err(|_| corrupt("bad block"))?)
                    } else {
                        if data.len() > max_block {
                            return Err(corrupt("block too large"));
                        }
                        body.freeze().slice(4..)
                    };
                    if checksum(&block) != want {
                        return Err(corrupt("checksum mismatch"));
                    }
                    if !block.is_empty() {
                        return Ok(Some(block));
                    }
                }
            }
        }
    }
}

/// A reader that decompresses what it reads from `inner`.
pub struct S2Read<R> {
    inner: R,
    raw: BytesMut,
    dec: S2Decoder,
    out: Bytes,
    eof: bool,
}

impl<R> S2Read<R> {
    /// `raw`: compressed bytes already read from `inner`, `dec`: the decoder that read
    /// what came before them (a fresh one at a stream's start).
    pub fn new(inner: R, raw: BytesMut, dec: S2Decoder) -> S2Read<R> {
        S2Read {
            inner,
            raw,
            dec,
            out: Bytes::new(),
            eof: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for S2Read<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if let Some(block) = this.dec.decode(&mut this.raw)? {
                this.out = block;
                continue;
            }
            if this.eof {
                if this.raw.is_empty() && this.dec.skip == 0 {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(corrupt("stream truncated")));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.raw.extend_from_slice(rb.filled()),
            }
        }
    }
}

/// A writer that, once the connection's `compression` is set, writes each `write` call (the
/// writer task writes one batch per call) as one complete S2 stream. Before that it passes
/// bytes through: the switch happens between batches, at the INFO exchange. Either way it
/// counts the bytes the socket took (`wire_out_bytes`).
pub struct S2Write<W> {
    inner: W,
    conn: std::sync::Arc<ConnShared>,
    enc: Option<minlz::Encoder>,
    pending: BytesMut,
}

impl<W> S2Write<W> {
    pub fn new(inner: W, conn: std::sync::Arc<ConnShared>) -> S2Write<W> {
        S2Write {
            inner,
            conn,
            enc: None,
            pending: BytesMut::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> S2Write<W> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)))
                }
                Poll::Ready(Ok(n)) => {
                    self.conn
                        .stats
                        .wire_out_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.pending.advance(n)
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for S2Write<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        let code = this.conn.compression.load(Ordering::Relaxed);
        let Some(level) = Level::from_code(code) else {
            let r = Pin::new(&mut this.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = &r {
                this.conn
                    .stats
                    .wire_out_bytes
                    .fetch_add(*n as u64, Ordering::Relaxed);
            }
            return r;
        };
        let enc = this.enc.get_or_insert_with(minlz::Encoder::new);
        encode_flush(enc, level, buf, &mut this.pending);
        // What the socket does not take now goes out on the next write or flush.
        let _ = this.drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_negotiation_follows_nats_server() {
        let c = |mode, t: &[u64]| Compression {
            mode,
            rtt_thresholds: t.iter().map(|ms| Duration::from_millis(*ms)).collect(),
            pos: Default::default(),
        };
        use CompressionMode as M;
        let ms = Duration::from_millis;
        let sel = |ours: &Compression, theirs: &str, rtt: u64| {
            select_compression(ours, theirs, ms(rtt)).map(Level::as_str)
        };
        // A 2.9 peer announces nothing; `off` anywhere; `accept` on both sides.
        assert_eq!(sel(&c(M::S2Fast, &[]), "", 1), None);
        assert_eq!(sel(&c(M::S2Fast, &[]), "off", 1), None);
        assert_eq!(sel(&c(M::Accept, &[]), "accept", 1), None);
        // `accept` takes the peer's level (its s2_auto as s2_fast); otherwise our own.
        assert_eq!(sel(&c(M::Accept, &[]), "s2_best", 1), Some("s2_best"));
        assert_eq!(sel(&c(M::Accept, &[]), "s2_auto", 1), Some("s2_fast"));
        assert_eq!(sel(&c(M::S2Better, &[]), "accept", 1), Some("s2_better"));
        assert_eq!(sel(&c(M::S2Better, &[]), "s2_fast", 1), Some("s2_better"));
        // s2_auto by RTT, default thresholds 10/50/100ms, or configured ones.
        let auto = c(M::S2Auto, &[]);
        assert_eq!(sel(&auto, "s2_auto", 5), Some("s2_uncompressed"));
        assert_eq!(sel(&auto, "s2_auto", 30), Some("s2_fast"));
        assert_eq!(sel(&auto, "s2_auto", 80), Some("s2_better"));
        assert_eq!(sel(&auto, "s2_auto", 500), Some("s2_best"));
        assert_eq!(sel(&c(M::S2Auto, &[0, 1000]), "accept", 5), Some("s2_fast"));
        assert_eq!(announced(&auto, Some(Level::Fast)), "s2_auto");
        assert_eq!(announced(&c(M::Accept, &[]), None), "accept");
    }

    fn roundtrip(level: Level, data: &[u8]) {
        let mut enc = minlz::Encoder::new();
        let mut wire = BytesMut::new();
        // Two flushes: two concatenated streams.
        encode_flush(&mut enc, level, data, &mut wire);
        encode_flush(&mut enc, level, data, &mut wire);
        let mut dec = S2Decoder::default();
        let mut got = Vec::new();
        // Fed in uneven pieces.
        let mut src = BytesMut::new();
        for piece in wire.chunks(7) {
            src.extend_from_slice(piece);
            while let Some(b) = dec.decode(&mut src).unwrap_or_else(|e| panic!("{e}")) {
                got.extend_from_slice(&b);
            }
        }
        assert_eq!(got.len(), 2 * data.len());
        assert!(got[..data.len()] == *data && got[data.len()..] == *data);
    }

    #[test]
    fn every_level_round_trips() {
        let text: Vec<u8> = b"LMSG foo.bar 5\r\nhello\r\n"
            .iter()
            .copied()
            .cycle()
            .take(3 << 20)
            .collect();
        for level in [Level::Uncompressed, Level::Fast, Level::Better, Level::Best] {
            roundtrip(level, b"x");
            roundtrip(level, &text[..5000]);
        }
        roundtrip(Level::Fast, &text);
        let mut enc = minlz::Encoder::new();
        let mut wire = BytesMut::new();
        encode_flush(&mut enc, Level::Fast, &text[..100_000], &mut wire);
        assert!(wire.len() < 20_000, "{} bytes", wire.len());
    }

    #[test]
    fn mutated_streams_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let text: Vec<u8> = b"LMSG a.b 11\r\nhello world\r\n"
            .iter()
            .copied()
            .cycle()
            .take(20_000)
            .collect();
        let mut enc = minlz::Encoder::new();
        let mut good = BytesMut::new();
        encode_flush(&mut enc, Level::Fast, &text, &mut good);
        encode_flush(&mut enc, Level::Uncompressed, &text[..300], &mut good);
        for _ in 0..3000 {
            let mut m = good.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..m.len());
                match rng.gen_range(0..3) {
                    0 => m[i] = rng.gen(),
                    1 => m.truncate(i),
                    _ => m.insert(i, rng.gen()),
                }
                if m.is_empty() {
                    break;
                }
            }
            let mut dec = S2Decoder::default();
            let mut src = BytesMut::from(&m[..]);
            while let Ok(Some(b)) = dec.decode(&mut src) {
                assert!(b.len() <= MAX_BLOCK);
            }
        }
    }

    #[test]
    fn hostile_input_is_refused_before_allocating() {
        let mut dec = S2Decoder::default();
        // No identifier first.
        let mut src = BytesMut::from(&b"\x00\x10\x00\x00abcd"[..]);
        assert!(dec.decode(&mut src).is_err());
        // A chunk claiming 16 MiB.
        let mut dec = S2Decoder::default();
        let mut src = BytesMut::from(IDENT);
        src.extend_from_slice(b"\x01\xff\xff\xff");
        assert!(dec.decode(&mut src).is_err());
        // A reserved chunk type.
        let mut dec = S2Decoder::default();
        let mut src = BytesMut::from(IDENT);
        src.extend_from_slice(b"\x02\x04\x00\x00\x00\x00\x00\x00");
        assert!(dec.decode(&mut src).is_err());
        // A bad checksum.
        let mut dec = S2Decoder::default();
        let mut src = BytesMut::from(IDENT);
        src.extend_from_slice(b"\x01\x05\x00\x00\x00\x00\x00\x00x");
        assert!(dec.decode(&mut src).is_err());
        // A compressed block whose header claims 200 MiB.
        let mut dec = S2Decoder::default();
        let mut src = BytesMut::from(IDENT);
        let body: &[u8] = &[0x80, 0x80, 0x80, 0x64, 0x00];
        put_chunk(&mut src, 0x00, 0, body);
        assert!(dec.decode(&mut src).is_err());
    }
}
