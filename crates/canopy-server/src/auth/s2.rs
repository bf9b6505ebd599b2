//! S2 compression of leaf links, as nats-server 2.10 puts it on the wire: every flush of
//! the writer is one complete S2 framed stream (the `S2sTwO` identifier, then blocks of at
//! most 1 MiB, each with the masked CRC-32C of its uncompressed bytes), and the reader
//! accepts any concatenation of such streams. The block codec is `minlz` (byte-compatible
//! with klauspost's S2); the framing and the bounds are ours (see
//! `../shared/reference/s2-notes.md`).
//!
//! The decoder runs before the peer has authenticated, so nothing it allocates is decided
//! by the peer beyond fixed bounds: a chunk's length is checked before it is buffered and a
//! block's decoded length before it is decoded.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
/// bytes through: the switch happens between batches, at the INFO exchange.
pub struct S2Write<W> {
    inner: W,
    conn: std::sync::Arc<crate::core::conn::ConnShared>,
    enc: Option<minlz::Encoder>,
    pending: BytesMut,
}

impl<W> S2Write<W> {
    pub fn new(inner: W, conn: std::sync::Arc<crate::core::conn::ConnShared>) -> S2Write<W> {
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
                Poll::Ready(Ok(n)) => self.pending.advance(n),
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
        let code = this
            .conn
            .compression
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some(level) = Level::from_code(code) else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
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
