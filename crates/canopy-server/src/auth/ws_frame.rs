//! WebSocket frames (RFC 6455) with permessage-deflate (RFC 7692), below the roles:
//! [`WsStream`] turns a socket that finished its upgrade into a byte stream.
//!
//! Reading: data frames (binary or text, possibly fragmented) become the byte stream; an
//! uncompressed frame's payload is handed on as it arrives (no per-frame buffer), a
//! compressed message (RSV1 on its first frame) is collected and inflated when its final
//! frame is in. Both are bounded by `max_message`: a compressed message larger than that,
//! or one that inflates to more (a decompression bomb), ends the connection with close
//! status 1009 and is reported through `on_too_big`. Pings are answered, a close is
//! echoed and ends the stream. Protocol errors send close status 1002.
//!
//! Writing: each write (one outbound batch of the connection's writer, cut at 64 KiB)
//! becomes one binary frame, deflated when compression was negotiated and the piece is
//! over 64 bytes (as nats-server does), masked when this side is a client.
//!
//! Both sides use no context takeover (nats-server negotiates
//! `server_no_context_takeover; client_no_context_takeover`): each message is deflated
//! and inflated on its own, with the trailing `00 00 ff ff` of a sync flush removed on
//! write and put back on read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;

/// Batches this small are sent uncompressed (nats-server's `wsCompressThreshold`).
const COMPRESS_THRESHOLD: usize = 64;
/// What a sync flush ends with; stripped on write, appended on read (RFC 7692 7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const READ_CHUNK: usize = 16 * 1024;
/// The most of a write that goes into one frame. The peer bounds each (compressed)
/// message by its max payload, while an outbound batch may hold many messages: a burst
/// across a compressed leaf link must not exceed the peer's bound.
const MAX_FRAME: usize = 64 * 1024;

/// Which end of the connection this is: a server reads masked frames (unless the peer
/// asked for no masking) and writes unmasked ones; a client masks what it writes.
#[derive(Debug, Clone, Copy)]
pub struct FrameRole {
    pub mask_write: bool,
    pub require_masked_reads: bool,
}

impl FrameRole {
    pub fn server(no_masking: bool) -> FrameRole {
        FrameRole {
            mask_write: false,
            require_masked_reads: !no_masking,
        }
    }

    pub fn client(no_masking: bool) -> FrameRole {
        FrameRole {
            mask_write: !no_masking,
            require_masked_reads: false,
        }
    }
}

/// The frame being read.
struct InFrame {
    remaining: u64,
    key: Option<[u8; 4]>,
    key_pos: usize,
    fin: bool,
}

/// A WebSocket connection as a byte stream (see the module header).
pub struct WsStream<S> {
    io: S,
    role: FrameRole,
    compress: bool,
    max_message: usize,
    on_too_big: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Bytes read from the socket, not yet decoded.
    rbuf: BytesMut,
    /// Decoded bytes not yet handed to the reader.
    out: Bytes,
    frame: Option<InFrame>,
    /// A data message is open (its final frame not seen yet).
    in_message: bool,
    message_compressed: bool,
    /// The compressed message being collected.
    cbuf: Vec<u8>,
    inflater: Decompress,
    deflater: Compress,
    /// Framed bytes waiting for the socket (data, pongs, close).
    wbuf: BytesMut,
    /// The writer's last waker: a reader that flushes a pong wakes it too, so neither
    /// side's wake-up is lost when both poll the socket for writing.
    writer_waker: Option<Waker>,
    read_done: bool,
    close_sent: bool,
}

impl<S> WsStream<S> {
    /// `leftover`: bytes that arrived after the upgrade's HTTP head.
    pub fn new(
        io: S,
        leftover: BytesMut,
        role: FrameRole,
        compress: bool,
        max_message: usize,
    ) -> Self {
        WsStream {
            io,
            role,
            compress,
            max_message,
            on_too_big: None,
            rbuf: leftover,
            out: Bytes::new(),
            frame: None,
            in_message: false,
            message_compressed: false,
            cbuf: Vec::new(),
            inflater: Decompress::new(false),
            deflater: Compress::new(Compression::fast(), false),
            wbuf: BytesMut::new(),
            writer_waker: None,
            read_done: false,
            close_sent: false,
        }
    }

    /// Called once when a message over `max_message` (compressed or inflated) is refused.
    pub fn on_too_big(mut self, f: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.on_too_big = Some(f);
        self
    }

    /// The socket below the frames.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Whether permessage-deflate is in use.
    pub fn compressed(&self) -> bool {
        self.compress
    }

    fn frame_into_wbuf(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) {
        let mut b0 = 0x80 | opcode;
        if rsv1 {
            b0 |= 0x40;
        }
        self.wbuf.reserve(payload.len() + 14);
        self.wbuf.put_u8(b0);
        let mask_bit = if self.role.mask_write { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => self.wbuf.put_u8(mask_bit | n as u8),
            n if n <= u16::MAX as usize => {
                self.wbuf.put_u8(mask_bit | 126);
                self.wbuf.put_u16(n as u16);
            }
            n => {
                self.wbuf.put_u8(mask_bit | 127);
                self.wbuf.put_u64(n as u64);
            }
        }
        if self.role.mask_write {
            let key: [u8; 4] = rand::random();
            self.wbuf.put_slice(&key);
            let start = self.wbuf.len();
            self.wbuf.put_slice(payload);
            apply_mask(&mut self.wbuf[start..], key, 0);
        } else {
            self.wbuf.put_slice(payload);
        }
    }

    /// Queues a close frame (once).
    fn queue_close(&mut self, status: u16, reason: &str) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        let mut body = status.to_be_bytes().to_vec();
        // A control frame's payload is at most 125 bytes.
        body.extend(reason.as_bytes().iter().take(123));
        self.frame_into_wbuf(OP_CLOSE, false, &body);
    }

    fn protocol_error(&mut self, what: &str) -> io::Error {
        self.queue_close(CLOSE_PROTOCOL_ERROR, what);
        io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {what}"))
    }

    fn too_big(&mut self, what: &str) -> io::Error {
        if let Some(f) = &self.on_too_big {
            f();
        }
        self.queue_close(CLOSE_TOO_BIG, "Maximum Payload Violation");
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("websocket: {what} exceeds {} bytes", self.max_message),
        )
    }

    /// Compressed bytes a message may take: its inflated bound plus deflate's worst-case
    /// growth for incompressible data (5 bytes per 16 KiB stored block, and a margin).
    fn max_compressed(&self) -> usize {
        self.max_message + self.max_message / 1000 + 1024
    }

    /// Decodes what `rbuf` holds until some bytes are ready for the reader (`true`), more
    /// input is needed (`false`), or the peer closed (`read_done`).
    fn decode(&mut self) -> io::Result<bool> {
        loop {
            if self.frame.is_none() && !self.start_frame()? {
                return Ok(false);
            }
            if self.read_done {
                return Ok(false);
            }
            let Some(f) = self.frame.as_mut() else {
                continue;
            };
            if f.remaining > 0 && self.rbuf.is_empty() {
                return Ok(false);
            }
            let n = (f.remaining.min(self.rbuf.len() as u64)) as usize;
            let mut chunk = self.rbuf.split_to(n);
            if let Some(key) = f.key {
                apply_mask(&mut chunk, key, f.key_pos);
                f.key_pos = (f.key_pos + n) % 4;
            }
            f.remaining -= n as u64;
            let frame_done = f.remaining == 0;
            let fin = f.fin;
            if frame_done {
                self.frame = None;
            }
            if self.message_compressed {
                self.cbuf.extend_from_slice(&chunk);
                if frame_done && fin {
                    self.out = self.inflate()?;
                }
            } else {
                self.out = chunk.freeze();
            }
            if !self.out.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Parses a frame header from `rbuf`; `false` if more bytes are needed. Control
    /// frames are handled whole here.
    fn start_frame(&mut self) -> io::Result<bool> {
        if self.rbuf.len() < 2 {
            return Ok(false);
        }
        let (b0, b1) = (self.rbuf[0], self.rbuf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + ext + if masked { 4 } else { 0 };
        if self.rbuf.len() < head {
            return Ok(false);
        }
        if b0 & 0x30 != 0 {
            return Err(self.protocol_error("RSV2 and RSV3 must be clear"));
        }
        if self.role.require_masked_reads && !masked {
            return Err(self.protocol_error("mask bit missing"));
        }
        let len = match ext {
            2 => u16::from_be_bytes([self.rbuf[2], self.rbuf[3]]) as u64,
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.rbuf[2..10]);
                let l = u64::from_be_bytes(b);
                if l >> 63 != 0 {
                    return Err(self.protocol_error("invalid 64-bit payload length"));
                }
                l
            }
            _ => len7 as u64,
        };
        let key = masked.then(|| {
            let k = &self.rbuf[head - 4..head];
            [k[0], k[1], k[2], k[3]]
        });
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if len > 125 {
                    return Err(self.protocol_error("control frame length bigger than 125"));
                }
                if !fin {
                    return Err(self.protocol_error("control frame does not have final bit set"));
                }
                if rsv1 {
                    return Err(self.protocol_error("control frame must not be compressed"));
                }
                if self.rbuf.len() < head + len as usize {
                    return Ok(false);
                }
                self.rbuf.advance(head);
                let mut payload = self.rbuf.split_to(len as usize);
                if let Some(k) = key {
                    apply_mask(&mut payload, k, 0);
                }
                match opcode {
                    OP_PING => self.frame_into_wbuf(OP_PONG, false, &payload),
                    OP_CLOSE => {
                        // Echo the status (RFC 6455 5.5.1), then the stream ends.
                        let status = if payload.len() >= 2 {
                            u16::from_be_bytes([payload[0], payload[1]])
                        } else {
                            1000
                        };
                        self.queue_close(status, "");
                        self.read_done = true;
                    }
                    _ => {}
                }
                return Ok(true);
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(self.protocol_error(
                        "new message started before final frame for previous message was received",
                    ));
                }
                if rsv1 && !self.compress {
                    return Err(self.protocol_error(
                        "compressed frame received without negotiated permessage-deflate",
                    ));
                }
                self.message_compressed = rsv1;
                self.cbuf.clear();
            }
            OP_CONT => {
                if !self.in_message || rsv1 {
                    return Err(self.protocol_error("invalid continuation frame"));
                }
            }
            other => return Err(self.protocol_error(&format!("unknown opcode {other}"))),
        }
        self.in_message = !fin;
        if self.message_compressed
            && (self.cbuf.len() as u64).saturating_add(len) > self.max_compressed() as u64
        {
            return Err(self.too_big("compressed message"));
        }
        self.rbuf.advance(head);
        self.frame = Some(InFrame {
            remaining: len,
            key,
            key_pos: 0,
            fin,
        });
        Ok(true)
    }

    /// Inflates the collected message, refusing output over `max_message` without
    /// allocating more than that.
    fn inflate(&mut self) -> io::Result<Bytes> {
        self.cbuf.extend_from_slice(&SYNC_TAIL);
        let input = std::mem::take(&mut self.cbuf);
        self.inflater.reset(false);
        let limit = self.max_message;
        let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).clamp(1024, limit + 1));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(self.too_big("inflated message"));
                }
                let grow = out.len().max(4096).min(limit + 1 - out.len());
                out.reserve_exact(grow);
            }
            let (in0, out0) = (self.inflater.total_in(), out.len());
            let status = self
                .inflater
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                .map_err(|e| self.protocol_error(&format!("invalid compressed data: {e}")))?;
            pos += (self.inflater.total_in() - in0) as usize;
            if out.len() > limit {
                return Err(self.too_big("inflated message"));
            }
            let progressed = self.inflater.total_in() > in0 || out.len() > out0;
            let room = out.len() < out.capacity();
            if status == Status::StreamEnd || (pos >= input.len() && room) {
                break;
            }
            if !progressed && room {
                return Err(self.protocol_error("truncated compressed data"));
            }
        }
        self.cbuf = input;
        self.cbuf.clear();
        Ok(Bytes::from(out))
    }

    /// Deflates one message (a fresh context each time) without the sync tail.
    fn deflate(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.deflater.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(1024));
            }
            let in0 = self.deflater.total_in();
            self.deflater
                .compress_vec(&data[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| io::Error::other(format!("websocket compression: {e}")))?;
            pos += (self.deflater.total_in() - in0) as usize;
            if pos >= data.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        Ok(out)
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes `wbuf` out; `Ready(Ok)` once it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The reader's attempt to send queued control frames: it must not take the writer's
    /// place as the one woken when the socket becomes writable, so both are woken.
    fn drain_from_reader(&mut self, cx: &Context<'_>) {
        if self.wbuf.is_empty() {
            return;
        }
        let both = futures::task::waker(Arc::new(BothWakers {
            reader: cx.waker().clone(),
            writer: self.writer_waker.clone(),
        }));
        let mut cx2 = Context::from_waker(&both);
        if let Poll::Ready(Ok(())) = self.poll_drain(&mut cx2) {
            let _ = Pin::new(&mut self.io).poll_flush(&mut cx2);
        }
    }
}

struct BothWakers {
    reader: Waker,
    writer: Option<Waker>,
}

impl futures::task::ArcWake for BothWakers {
    fn wake_by_ref(arc: &Arc<Self>) {
        arc.reader.wake_by_ref();
        if let Some(w) = &arc.writer {
            w.wake_by_ref();
        }
    }
}

fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(i + offset) % 4];
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                this.drain_from_reader(cx);
                return Poll::Ready(Ok(()));
            }
            let decoded = this.decode();
            this.drain_from_reader(cx);
            match decoded {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(true) => continue,
                Ok(false) if this.read_done => return Poll::Ready(Ok(())),
                Ok(false) => {}
            }
            this.rbuf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The socket ended without a close frame: end of stream all the same.
                Poll::Ready(Ok(0)) => {
                    this.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.writer_waker = Some(cx.waker().clone());
        match this.poll_drain(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "websocket closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let buf = &buf[..buf.len().min(MAX_FRAME)];
        if this.compress && buf.len() > COMPRESS_THRESHOLD {
            let z = this.deflate(buf)?;
            this.frame_into_wbuf(OP_BINARY, true, &z);
        } else {
            this.frame_into_wbuf(OP_BINARY, false, buf);
        }
        // Start the frame towards the socket; `flush` completes it.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.writer_waker = Some(cx.waker().clone());
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.writer_waker = Some(cx.waker().clone());
        this.queue_close(CLOSE_GOING_AWAY, "");
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer's frame: masked like a client's, deflated when `compress`.
    fn client_frame(payload: &[u8], compress: bool) -> Vec<u8> {
        let mut s = WsStream::new(
            tokio::io::empty(),
            BytesMut::new(),
            FrameRole::client(false),
            compress,
            1 << 20,
        );
        if compress {
            let z = s.deflate(payload).unwrap();
            s.frame_into_wbuf(OP_BINARY, true, &z);
        } else {
            s.frame_into_wbuf(OP_BINARY, false, payload);
        }
        s.wbuf.to_vec()
    }

    async fn read_all(frames: Vec<u8>, compress: bool, max: usize) -> io::Result<Vec<u8>> {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&frames).await?;
        drop(a);
        let mut s = WsStream::new(b, BytesMut::new(), FrameRole::server(false), compress, max);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn compressed_and_plain_frames_round_trip() {
        let text = b"PUB a 300\r\n".repeat(40);
        let mut frames = client_frame(&text, true);
        frames.extend(client_frame(b"PING\r\n", false));
        let got = read_all(frames, true, 1 << 20).await.unwrap();
        assert_eq!(&got[..text.len()], &text[..]);
        assert_eq!(&got[text.len()..], b"PING\r\n");
    }

    /// A batch far larger than the reader's message bound (many messages queued at
    /// once) crosses a compressed, masked link in frames the reader takes.
    #[tokio::test]
    async fn large_batches_are_cut_into_frames_the_peer_takes() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let batch = b"LMSG a 5\r\nhello\r\n".repeat(30_000);
        let expect = batch.clone();
        let writer = tokio::spawn(async move {
            let mut w = WsStream::new(a, BytesMut::new(), FrameRole::client(false), true, 1 << 20);
            w.write_all(&batch).await.unwrap();
            w.shutdown().await.unwrap();
            // Keep the socket open until the reader is done (its close echo).
            let mut rest = Vec::new();
            let _ = w.read_to_end(&mut rest).await;
        });
        let mut r = WsStream::new(b, BytesMut::new(), FrameRole::server(false), true, 100_000);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
        drop(r);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_decompression_bomb_is_refused() {
        let bomb = vec![b'A'; 4 << 20];
        let frame = client_frame(&bomb, true);
        assert!(frame.len() < 64 * 1024);
        let err = read_all(frame, true, 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[tokio::test]
    async fn compressed_frames_need_negotiation_and_masks() {
        let err = read_all(
            client_frame(b"x".repeat(100).as_slice(), true),
            false,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("permessage-deflate"), "{err}");
        // An unmasked frame from a client.
        let err = read_all(vec![0x82, 0x01, b'x'], false, 1 << 20)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("mask"), "{err}");
    }
}
