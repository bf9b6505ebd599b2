//! What every connection kind shares: the outbound buffer that other readers append into,
//! the writer task that drains it, liveness (PING/PONG), counters and closing.
//!
//! Delivery never blocks the publisher: a reader appends an encoded message into the
//! receiver's buffer under a short lock and remembers the receiver; after its read batch it
//! wakes each receiver's writer once. The writer swaps the whole buffer out and writes it
//! with one syscall where the kernel allows.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The kinds of connection, as `/connz` and `/varz` count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKind {
    Client,
    Route,
    Leaf,
}

/// Why a connection closed (`/connz?state=closed` `reason`, and the log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ReadError(String),
    WriteError(String),
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    StaleConnection,
    ProtocolViolation(String),
    AuthViolation,
    AuthTimeout,
    MaxPayload,
    MaxConnections,
    ServerShutdown,
    LameDuck,
    Other(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("Client Closed"),
            CloseReason::ReadError(e) => write!(f, "Read Error: {e}"),
            CloseReason::WriteError(e) => write!(f, "Write Error: {e}"),
            CloseReason::SlowConsumerPendingBytes => f.write_str("Slow Consumer (Pending Bytes)"),
            CloseReason::SlowConsumerWriteDeadline => f.write_str("Slow Consumer (Write Deadline)"),
            CloseReason::StaleConnection => f.write_str("Stale Connection"),
            CloseReason::ProtocolViolation(e) => write!(f, "Protocol Violation: {e}"),
            CloseReason::AuthViolation => f.write_str("Authentication Failure"),
            CloseReason::AuthTimeout => f.write_str("Authentication Timeout"),
            CloseReason::MaxPayload => f.write_str("Maximum Payload Exceeded"),
            CloseReason::MaxConnections => f.write_str("Maximum Connections Exceeded"),
            CloseReason::ServerShutdown => f.write_str("Server Shutdown"),
            CloseReason::LameDuck => f.write_str("Lame Duck Mode"),
            CloseReason::Other(e) => f.write_str(e),
        }
    }
}

/// Per-connection counters, read by monitoring. As nats-server's: messages and their
/// payload bytes (headers included), not protocol framing.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_msgs: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Link connections (routes, leafs): bytes read from and written to the socket, to
    /// compare with the message bytes when the link is compressed.
    pub wire_in_bytes: AtomicU64,
    pub wire_out_bytes: AtomicU64,
}

/// Descriptive fields filled in after CONNECT (for `/connz` and logs).
#[derive(Debug, Default, Clone)]
pub struct ConnMeta {
    pub name: String,
    pub lang: String,
    pub version: String,
    pub user: String,
    pub account: String,
    pub tls_version: String,
    /// The peer's TLS certificate (DER), for `verify_and_map`.
    pub peer_cert: Option<Arc<[u8]>>,
}

struct Out {
    buf: BytesMut,
    closed: bool,
}

/// Reply subject → (uses left, deadline) for `allow_responses`.
pub type ResponseGrants = std::collections::HashMap<Box<[u8]>, (u64, Option<Instant>)>;

/// The part of a connection other tasks can see and deliver into.
pub struct ConnShared {
    pub cid: u64,
    pub kind: ConnKind,
    pub addr: SocketAddr,
    pub start: SystemTime,
    out: Mutex<Out>,
    wake: Notify,
    /// The plain TCP socket's descriptor, for [`ConnShared::flush_direct`]; -1 when the
    /// connection has none (TLS, WebSocket, links) or its writer has ended.
    direct_fd: AtomicI32,
    /// Held by whoever writes to the socket: the writer task for each of its writes, a
    /// direct writer for one non-blocking send. Keeps the bytes in order.
    writing: AtomicBool,
    /// Cancelled when the connection is closing; reader and writer both watch it.
    pub cancel: CancellationToken,
    /// Set with `cancel`: readers check it after every op, and a plain atomic load is
    /// much cheaper than `CancellationToken::is_cancelled` (which takes a lock).
    closing: AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
    pub stats: ConnStats,
    pub meta: Mutex<ConnMeta>,
    /// Receiver capabilities other readers need when encoding for us.
    pub headers: AtomicBool,
    pub echo: AtomicBool,
    /// Outstanding server PINGs without a PONG.
    pub pings_out: AtomicU32,
    /// Round-trip time of the last server PING, in nanoseconds (0 = unknown).
    pub rtt_ns: AtomicU64,
    ping_sent_at: Mutex<Option<Instant>>,
    /// PINGs queued and PONGs received since the connection started: a peer answers PINGs
    /// in order, so PONG number n acknowledges everything sent before PING number n
    /// ([`ConnShared::ping_barrier`]).
    pub pings_sent: AtomicU64,
    pub pongs_received: AtomicU64,
    pong_wake: Notify,
    pub last_activity: Mutex<SystemTime>,
    pub num_subs: AtomicUsize,
    max_pending: usize,
    /// Set once the connection finished its handshake (CONNECT accepted).
    pub registered: AtomicBool,
    /// Hears asynchronous INFO updates (cluster membership): a client that sent
    /// `protocol` >= 1 and had its first PING answered, or a leaf that connected to us.
    pub async_info: AtomicBool,
    /// [`crate::core::interest::LinkClass`] as u8: how messages from and to this connection are
    /// forwarded.
    pub link_class: AtomicU8,
    /// Leaf links: subjects never sent over this link (`deny_exports`, the peer's
    /// `deny_pub`). Clients: subjects never delivered to them (their user's subscribe
    /// deny rules, which also bind wildcard subscriptions).
    pub deny_send: OnceLock<Vec<String>>,
    /// Links: the id of the server behind this connection; a message is never sent back
    /// to the server it came from, over any connection.
    pub peer_id: OnceLock<Arc<str>>,
    /// Leaf links of a remote with `account_mappings`: how subjects are translated on it
    /// (messages, replies and interest both ways; see `core/remap.rs`).
    pub remap: OnceLock<Arc<crate::core::remap::Remap>>,
    /// A route dedicated to one account (`cluster { accounts }`): the messages it carries
    /// name no account (`RMSG subj ...`).
    pub route_dedicated: AtomicBool,
    /// Leaf and route links: the S2 level this side writes with once negotiated (0: none;
    /// the codes of `auth::s2::Level`). Set once, between two writer batches.
    pub compression: AtomicU8,
    /// Links writing with `s2_auto`: its RTT thresholds; each new RTT measurement
    /// re-picks `compression` (see [`s2_auto_code`]).
    pub s2_auto: OnceLock<[Duration; 3]>,
    /// `producer_backoff`: past this many pending bytes (75% of `max_pending`) the
    /// connection is marked `stalled` and its publishers wait for `drained` (0 = off).
    pub stall_at: AtomicUsize,
    pub stalled: AtomicBool,
    /// Notified by the writer when it takes a stalled connection's buffer.
    pub drained: Notify,
    /// Leaf links: the peer does its own account imports (its CONNECT said
    /// `canopy_imports`); imported copies are not sent to it.
    pub peer_imports: AtomicBool,
    /// `allow_responses` (max, expires) of this client's user; when set, every reply
    /// subject delivered to it is remembered in `responses`.
    pub allow_responses: OnceLock<(u64, Duration)>,
    /// Reply subjects this client may publish to: remaining uses and deadline.
    pub responses: Mutex<ResponseGrants>,
}

/// nats-server's `s2_auto` choice from a round trip: up to the first threshold
/// uncompressed (code 1), up to the second fast (2), up to the third better (3), else
/// best (4); the codes of [`ConnShared::compression`].
pub fn s2_auto_code(rtt: Duration, thresholds: &[Duration; 3]) -> u8 {
    match thresholds.iter().position(|t| rtt <= *t) {
        Some(i) => i as u8 + 1,
        None => 4,
    }
}

impl ConnShared {
    pub fn new(cid: u64, kind: ConnKind, addr: SocketAddr, max_pending: usize) -> Self {
        let now = SystemTime::now();
        ConnShared {
            cid,
            kind,
            addr,
            start: now,
            // Empty until something is queued: an idle connection holds no buffer.
            out: Mutex::new(Out {
                buf: BytesMut::new(),
                closed: false,
            }),
            wake: Notify::new(),
            direct_fd: AtomicI32::new(-1),
            writing: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            closing: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            stats: ConnStats::default(),
            meta: Mutex::new(ConnMeta::default()),
            headers: AtomicBool::new(false),
            echo: AtomicBool::new(true),
            pings_out: AtomicU32::new(0),
            rtt_ns: AtomicU64::new(0),
            ping_sent_at: Mutex::new(None),
            pings_sent: AtomicU64::new(0),
            pongs_received: AtomicU64::new(0),
            pong_wake: Notify::new(),
            last_activity: Mutex::new(now),
            num_subs: AtomicUsize::new(0),
            max_pending,
            registered: AtomicBool::new(false),
            async_info: AtomicBool::new(false),
            link_class: AtomicU8::new(0),
            deny_send: OnceLock::new(),
            peer_id: OnceLock::new(),
            remap: OnceLock::new(),
            route_dedicated: AtomicBool::new(false),
            compression: AtomicU8::new(0),
            s2_auto: OnceLock::new(),
            stall_at: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
            drained: Notify::new(),
            peer_imports: AtomicBool::new(false),
            allow_responses: OnceLock::new(),
            responses: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Appends bytes produced by `f` to the outbound buffer. Returns false when the
    /// connection is closed (nothing appended) or just became a slow consumer.
    /// The caller must call [`ConnShared::flush_signal`] (directly or through a
    /// [`FlushList`]) once its batch is done.
    #[inline]
    pub fn enqueue(&self, f: impl FnOnce(&mut BytesMut)) -> bool {
        let over = {
            let mut out = self.out.lock();
            if out.closed {
                return false;
            }
            f(&mut out.buf);
            let len = out.buf.len();
            // The stall mark is 75% of `max_pending` when set: below that, nothing to read.
            if len > self.max_pending / 4 * 3 {
                let stall_at = self.stall_at.load(Ordering::Relaxed);
                if stall_at != 0 && len > stall_at {
                    self.stalled.store(true, Ordering::Relaxed);
                }
            }
            // Every kind is bounded, links too (as nats-server): a stopped or slow peer
            // must not grow our memory without limit.
            len > self.max_pending
        };
        if over {
            self.close(CloseReason::SlowConsumerPendingBytes);
            return false;
        }
        true
    }

    /// The outbound bound: past it the connection is closed as a slow consumer.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Wakes the writer.
    #[inline]
    pub fn flush_signal(&self) {
        self.wake.notify_one();
    }

    /// Lets threads that deliver to this connection write its output themselves
    /// ([`ConnShared::flush_direct`]). `fd` is its plain TCP socket: it must stay open
    /// until [`writer_loop`] ends, which turns direct writes off before it lets its half
    /// of the socket go.
    pub fn enable_direct(&self, fd: RawFd) {
        self.direct_fd.store(fd, Ordering::Release);
    }

    /// As [`ConnShared::flush_signal`], but when nothing is being written the calling
    /// thread writes what is queued itself, without blocking: no thread is woken for it.
    /// Falls back to waking the writer when the writer is busy, the socket would block
    /// (what is left stays queued, in order), or the connection has no direct writes.
    /// For a thread about to go idle with replies queued (a request's answer is on its
    /// way one wake-up sooner); a thread with more work waiting should leave the write to
    /// the writer, which runs beside it.
    pub fn flush_direct(&self) {
        if self.direct_fd.load(Ordering::Relaxed) < 0 || !self.try_write_direct() {
            self.wake.notify_one();
        }
    }

    /// `true`: nothing is left queued.
    fn try_write_direct(&self) -> bool {
        if self
            .writing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let done = self.write_direct();
        self.writing.store(false, Ordering::Release);
        done
    }

    /// Writes the outbound buffer with non-blocking sends; the caller holds `writing`.
    #[allow(unsafe_code)]
    fn write_direct(&self) -> bool {
        let fd = self.direct_fd.load(Ordering::Acquire);
        // A link switched to S2 frames its output in its writer.
        if fd < 0 || self.compression.load(Ordering::Relaxed) != 0 {
            return false;
        }
        {
            let mut out = self.out.lock();
            if out.closed {
                // The writer does the final flush.
                return false;
            }
            while !out.buf.is_empty() {
                // SAFETY: `fd` is the open socket of this connection: it was set by
                // `enable_direct`, whose caller keeps it open until `writer_loop` ends,
                // and `writer_loop` sets it to -1 (holding `writing`, as we do) before it
                // lets its half of the socket go. The buffer is valid for its length.
                let n = unsafe {
                    libc::send(
                        fd,
                        out.buf.as_ptr().cast(),
                        out.buf.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n > 0 {
                    out.buf.advance(n as usize);
                    if self.kind != ConnKind::Client {
                        // A link's writer counts what the socket took (its S2 layer);
                        // bytes written here bypass it.
                        self.stats
                            .wire_out_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    continue;
                }
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                // Would block, or an error the writer will meet and close on.
                return false;
            }
        }
        if self.stalled.load(Ordering::Relaxed) {
            self.stalled.store(false, Ordering::Relaxed);
            self.drained.notify_waiters();
        }
        true
    }

    /// Bytes waiting to be written (`/connz` `pending_bytes`).
    pub fn pending_bytes(&self) -> usize {
        self.out.lock().buf.len()
    }

    /// Starts closing: records the first reason, stops accepting output and wakes both
    /// tasks. What is already buffered (an `-ERR`, say) is still written.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut r = self.close_reason.lock();
            if r.is_some() {
                return;
            }
            *r = Some(reason);
        }
        self.out.lock().closed = true;
        self.closing.store(true, Ordering::Release);
        self.cancel.cancel();
        self.wake.notify_one();
    }

    #[inline]
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.lock().clone()
    }

    /// Sends `-ERR 'text'` and closes.
    pub fn error_and_close(&self, text: &str, reason: CloseReason) {
        self.send_err(text);
        self.close(reason);
    }

    /// Sends `-ERR 'text'` (the connection stays open).
    pub fn send_err(&self, text: &str) {
        self.enqueue(|b| canopy_proto::encode_err(b, text));
        self.flush_signal();
    }

    /// Answers a PING.
    pub fn pong(&self) {
        self.enqueue(|b| b.extend_from_slice(b"PONG\r\n"));
        self.flush_signal();
    }

    /// A link sent an op its role does not allow: `-ERR 'Unknown Protocol Operation'`,
    /// logged with the role, and close.
    pub fn unexpected_op(&self, role: &str, verb: &str) {
        tracing::error!("{} - Unexpected {role} operation {verb}", conn_label(self));
        self.error_and_close(
            crate::core::errors::UNKNOWN_OP,
            CloseReason::ProtocolViolation("unexpected op".into()),
        );
    }

    /// Records activity (for `/connz` `last_activity` and idle).
    pub fn touch(&self) {
        *self.last_activity.lock() = SystemTime::now();
    }

    /// Called when a PONG arrives.
    pub fn pong_received(&self) {
        self.pings_out.store(0, Ordering::Relaxed);
        self.pongs_received.fetch_add(1, Ordering::Release);
        self.pong_wake.notify_waiters();
        if let Some(at) = self.ping_sent_at.lock().take() {
            let rtt = at.elapsed();
            self.rtt_ns.store(rtt.as_nanos() as u64, Ordering::Relaxed);
            // The writer takes the new level at its next batch (each batch is a new
            // stream, so the switch is seamless for the peer).
            if let Some(t) = self.s2_auto.get() {
                self.compression
                    .store(s2_auto_code(rtt, t), Ordering::Relaxed);
            }
        }
    }

    /// Sends a PING to measure the round trip (`rtt` in monitoring).
    pub fn send_ping(&self) {
        *self.ping_sent_at.lock() = Some(Instant::now());
        self.enqueue(|b| {
            self.pings_sent.fetch_add(1, Ordering::Relaxed);
            b.extend_from_slice(b"PING\r\n")
        });
        self.flush_signal();
    }

    /// Queues a PING after everything queued so far and waits for its PONG: the peer has
    /// then processed all of it. False when the connection closed or `within` passed.
    pub async fn ping_barrier(&self, within: Duration) -> bool {
        match self.queue_ping() {
            Some(n) => self.wait_pong(n, within).await,
            None => false,
        }
    }

    /// Queues a PING after everything queued so far; returns its number for
    /// [`ConnShared::wait_pong`] (`None`: the connection is closed).
    pub fn queue_ping(&self) -> Option<u64> {
        let mut n = 0;
        let queued = self.enqueue(|b| {
            n = self.pings_sent.fetch_add(1, Ordering::Relaxed) + 1;
            b.extend_from_slice(b"PING\r\n")
        });
        self.flush_signal();
        queued.then_some(n)
    }

    /// Waits until PONG number `n` arrived. False when the connection closed or `within`
    /// passed.
    pub async fn wait_pong(&self, n: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let woken = self.pong_wake.notified();
            if self.pongs_received.load(Ordering::Acquire) >= n {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            tokio::select! {
                _ = woken => {}
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Remembers a reply subject delivered to a client with `allow_responses`.
    pub fn grant_response(&self, reply: &[u8]) {
        if let Some((max, expires)) = self.allow_responses.get() {
            let deadline = (!expires.is_zero()).then(|| Instant::now() + *expires);
            let mut r = self.responses.lock();
            // Bound the table: expired grants go first, then everything if still large.
            if r.len() >= 10_000 {
                let now = Instant::now();
                r.retain(|_, (_, d)| d.is_none_or(|d| d > now));
                if r.len() >= 10_000 {
                    r.clear();
                }
            }
            r.insert(reply.into(), (*max, deadline));
        }
    }

    /// Uses one response permission for `subject`, if one is granted and live.
    pub fn use_response(&self, subject: &[u8]) -> bool {
        if self.allow_responses.get().is_none() {
            return false;
        }
        let mut r = self.responses.lock();
        let Some((left, deadline)) = r.get_mut(subject) else {
            return false;
        };
        if deadline.is_some_and(|d| d <= Instant::now()) {
            r.remove(subject);
            return false;
        }
        *left -= 1;
        if *left == 0 {
            r.remove(subject);
        }
        true
    }

    /// A connection without a socket for an in-process service
    /// ([`crate::server::service`]): its identity and subscription count. Its
    /// subscriptions carry sinks, so nothing is ever encoded into its buffer; the buffer
    /// is bounded all the same.
    pub fn internal(cid: u64, name: &str, account: &str, headers: bool) -> Arc<ConnShared> {
        let addr: SocketAddr = ([0, 0, 0, 0], 0).into();
        let conn = Arc::new(ConnShared::new(
            cid,
            ConnKind::Client,
            addr,
            INTERNAL_MAX_PENDING,
        ));
        conn.headers.store(headers, Ordering::Relaxed);
        {
            let mut m = conn.meta.lock();
            m.name = name.to_string();
            m.account = account.to_string();
        }
        conn
    }

    fn take_into(&self, mine: &mut BytesMut) {
        let mut out = self.out.lock();
        std::mem::swap(&mut out.buf, mine);
    }
}

/// A write of at most this many bytes from a buffer larger than [`WRITE_KEEP_MAX`] ends a
/// burst: the writer lets the large buffer go.
const WRITE_SHRINK_AFTER: usize = 4096;
/// Outbound buffers up to this size are kept between writes.
const WRITE_KEEP_MAX: usize = 64 * 1024;

/// Read buffers start this small (an idle connection holds little more) …
pub const READ_MIN: usize = 512;
/// … and double, each time a read fills the free space, up to this size.
pub const READ_MAX: usize = 32 * 1024;

/// Makes room in `buf` for a read of `want` bytes; returns the free space offered.
#[inline]
pub fn read_room(buf: &mut BytesMut, want: usize) -> usize {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    buf.capacity() - buf.len()
}

/// The read size after a read of `n` bytes into `spare` free bytes, once the ops read were
/// handled: a read that filled the space doubles it; a short read that left nothing
/// pending after a burst (the size had grown) drops the buffer back to [`READ_MIN`].
/// Allocates only at those transitions, never per message.
#[inline]
pub fn next_read_size(buf: &mut BytesMut, want: usize, n: usize, spare: usize) -> usize {
    if n >= spare {
        return (want * 2).min(READ_MAX);
    }
    if want > READ_MIN && n < READ_MIN && buf.is_empty() {
        *buf = BytesMut::with_capacity(READ_MIN);
        return READ_MIN;
    }
    want
}

/// The outbound bound of an internal connection (which never receives encoded output).
const INTERNAL_MAX_PENDING: usize = 64 * 1024;

/// The most receivers a reader writes to directly ([`FlushList::flush_after_read`]).
pub const READER_DIRECT_MAX: usize = 4;

/// The receivers a reader delivered to during one read batch; each is woken once.
#[derive(Default)]
pub struct FlushList {
    conns: Vec<Arc<ConnShared>>,
    /// Receivers of the last flushed batch that passed their stall mark
    /// (`producer_backoff`); the publishing client waits for them.
    pub stalled: Vec<Arc<ConnShared>>,
}

impl FlushList {
    #[inline]
    pub fn add(&mut self, c: &Arc<ConnShared>) {
        // Small lists: a linear scan beats hashing for the usual handful of receivers.
        if !self.conns.iter().any(|x| Arc::ptr_eq(x, c)) {
            self.conns.push(c.clone());
        }
    }
    /// Takes `other`'s receivers (to be flushed with this list's).
    pub fn absorb(&mut self, other: &mut FlushList) {
        for c in other.conns.drain(..) {
            if !self.conns.iter().any(|x| Arc::ptr_eq(x, &c)) {
                self.conns.push(c);
            }
        }
    }

    pub fn flush(&mut self) {
        self.flush_with(ConnShared::flush_signal);
    }

    /// As [`FlushList::flush`], writing directly where it can ([`ConnShared::flush_direct`]).
    pub fn flush_direct(&mut self) {
        self.flush_with(ConnShared::flush_direct);
    }

    /// A reader's flush at the end of a read batch that held `msgs` messages. A batch of
    /// one message for at most [`READER_DIRECT_MAX`] receivers is written directly where
    /// it can: a reader that read one message is about to wait for the socket anyway, and
    /// the send costs it less than waking a writer thread (on a request's path, one
    /// wake-up fewer per hop). Busier batches wake the writers, which write beside the
    /// reader while it goes on reading.
    pub fn flush_after_read(&mut self, msgs: u64) {
        if msgs <= 1 && self.conns.len() <= READER_DIRECT_MAX {
            self.flush_direct();
        } else {
            self.flush();
        }
    }

    fn flush_with(&mut self, f: fn(&ConnShared)) {
        self.stalled.clear();
        for c in self.conns.drain(..) {
            f(&c);
            if c.stalled.load(Ordering::Relaxed) {
                self.stalled.push(c);
            }
        }
    }
}

/// Liveness settings for the writer's ping timer.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub ping_interval: Duration,
    pub ping_max: u32,
    pub write_deadline: Duration,
}

/// The writer's half of the socket, and its share of `writing` with direct writers.
/// Dropped (the loop ended, or its task was dropped mid-write), it turns direct writes off
/// before the half goes: after that nobody else touches the descriptor.
struct SocketWriter<W> {
    conn: Arc<ConnShared>,
    holding: bool,
    wr: W,
}

impl<W> SocketWriter<W> {
    /// Takes `writing`: a direct writer holds it for one non-blocking send at most.
    fn lock(&mut self) {
        if self.holding {
            return;
        }
        while self
            .conn
            .writing
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
        self.holding = true;
    }

    fn unlock(&mut self) {
        if self.holding {
            self.holding = false;
            self.conn.writing.store(false, Ordering::Release);
        }
    }
}

impl<W> Drop for SocketWriter<W> {
    /// No more direct writes on this connection (runs before `wr` itself drops).
    fn drop(&mut self) {
        self.lock();
        self.conn.direct_fd.store(-1, Ordering::Release);
        self.unlock();
    }
}

/// Drains the outbound buffer to the socket until the connection closes, sending PINGs on
/// the interval and closing stale connections. Returns after the final flush.
pub async fn writer_loop<W: AsyncWrite + Unpin>(conn: Arc<ConnShared>, wr: W, live: Liveness) {
    let mut sock = SocketWriter {
        conn: conn.clone(),
        holding: false,
        wr,
    };
    let mut mine = BytesMut::new();
    let start = tokio::time::Instant::now() + live.ping_interval;
    let mut ticker = tokio::time::interval_at(start, live.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closing = tokio::select! {
            biased;
            _ = conn.cancel.cancelled() => true,
            _ = conn.wake.notified() => false,
            _ = ticker.tick() => {
                if conn.pings_out.load(Ordering::Relaxed) + 1 > live.ping_max {
                    tracing::debug!("{} - Stale Client Connection - Closing", conn_label(&conn));
                    conn.error_and_close(crate::core::errors::STALE_CONNECTION, CloseReason::StaleConnection);
                    true
                } else {
                    conn.pings_out.fetch_add(1, Ordering::Relaxed);
                    conn.send_ping();
                    false
                }
            }
        };
        // Taken before the buffer, kept until it is written: a direct writer never sends
        // bytes queued after these ahead of them.
        sock.lock();
        conn.take_into(&mut mine);
        if conn.stalled.load(Ordering::Relaxed) {
            conn.stalled.store(false, Ordering::Relaxed);
            conn.drained.notify_waiters();
        }
        if !mine.is_empty() {
            let n = mine.len();
            let deadline = if closing {
                live.write_deadline.min(Duration::from_secs(2))
            } else {
                live.write_deadline
            };
            // The flush is free on TCP; on TLS it pushes out records rustls still holds
            // when the socket was full at the end of `write_all`.
            let wr = &mut sock.wr;
            let write = async {
                wr.write_all(&mine).await?;
                wr.flush().await
            };
            // `out_bytes` counts message payloads where they are delivered, not the
            // protocol written here (nats-server's meaning).
            match tokio::time::timeout(deadline, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    conn.close(CloseReason::WriteError(e.to_string()));
                    break;
                }
                Err(_) => {
                    conn.close(CloseReason::SlowConsumerWriteDeadline);
                    break;
                }
            }
            mine.clear();
            // Give memory back after a burst: a small write from a large buffer means the
            // burst is over (the other buffer of the pair follows on its next small write).
            if n <= WRITE_SHRINK_AFTER && mine.capacity() > WRITE_KEEP_MAX {
                mine = BytesMut::new();
            }
        }
        if closing {
            // Take what was queued between the swap and now (e.g. a final -ERR). Direct
            // writers stay out: the buffer is closed, and this loop still holds `writing`.
            conn.take_into(&mut mine);
            if !mine.is_empty() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), sock.wr.write_all(&mine)).await;
            }
            break;
        }
        sock.unlock();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sock.wr.shutdown()).await;
    // `sock` turns direct writes off as it drops, before its half of the socket.
}

/// `ip:port - cid:N` as nats-server prefixes its connection log lines.
pub fn conn_label(c: &ConnShared) -> String {
    let k = match c.kind {
        ConnKind::Client => "cid",
        ConnKind::Route => "rid",
        ConnKind::Leaf => "lid",
    };
    format!("{} - {}:{}", c.addr, k, c.cid)
}

/// Message counters of one read batch, published once per batch: the server-wide
/// counters are shared by every reader, so one update per batch instead of per message.
#[derive(Default)]
pub struct BatchCounters {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
}

impl BatchCounters {
    /// Counts one received message of `bytes` payload bytes.
    #[inline]
    pub fn received(&mut self, bytes: usize) {
        self.in_msgs += 1;
        self.in_bytes += bytes as u64;
    }

    /// Adds the connection's counts to its stats and the server's, then resets.
    pub fn publish(&mut self, conn: &ConnShared, server: &crate::core::stats::ServerStats) {
        if self.in_msgs > 0 {
            conn.stats
                .in_msgs
                .fetch_add(self.in_msgs, Ordering::Relaxed);
            conn.stats
                .in_bytes
                .fetch_add(self.in_bytes, Ordering::Relaxed);
            server.in_msgs.fetch_add(self.in_msgs, Ordering::Relaxed);
            server.in_bytes.fetch_add(self.in_bytes, Ordering::Relaxed);
        }
        if self.out_msgs > 0 {
            server.out_msgs.fetch_add(self.out_msgs, Ordering::Relaxed);
            server
                .out_bytes
                .fetch_add(self.out_bytes, Ordering::Relaxed);
        }
        *self = BatchCounters::default();
    }
}

/// A link role (leaf, route) as the shared read loop drives it.
pub trait OpHandler {
    /// Handles one op; false stops reading.
    fn on_op(&mut self, op: canopy_proto::Op) -> bool;
    /// False until the handshake completed: the handshake deadline applies until then.
    fn handshake_done(&self) -> bool;
    /// Called after each read batch (wakes the receivers written to).
    fn end_batch(&mut self);
}

/// The read loop of link connections: read, parse every complete op, hand each to the
/// role, end the batch; a handshake not done within `handshake` closes the connection
/// with `-ERR 'Authentication Timeout'`. `what` names the role in log lines.
pub async fn read_ops<R, H>(
    conn: &ConnShared,
    mut rd: R,
    mut parser: canopy_proto::Parser,
    handshake: Duration,
    what: &str,
    h: &mut H,
) where
    R: tokio::io::AsyncRead + Unpin,
    H: OpHandler,
{
    use tokio::io::AsyncReadExt;
    let mut want = READ_MIN;
    let mut buf = BytesMut::with_capacity(want);
    let deadline = tokio::time::Instant::now() + handshake;
    loop {
        let spare = read_room(&mut buf, want);
        let waiting = !h.handshake_done();
        let res = tokio::select! {
            biased;
            _ = conn.cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline), if waiting => {
                tracing::error!("{} - {what} handshake timed out (Authentication Timeout)", conn_label(conn));
                conn.error_and_close(crate::core::errors::AUTH_TIMEOUT, CloseReason::AuthTimeout);
                return;
            }
            r = rd.read_buf(&mut buf) => r,
        };
        let n = match res {
            Ok(0) => {
                conn.close(CloseReason::ClientClosed);
                return;
            }
            Ok(n) => n,
            Err(e) => {
                conn.close(CloseReason::ReadError(e.to_string()));
                return;
            }
        };
        loop {
            match parser.next(&mut buf) {
                Ok(Some(op)) => {
                    if !h.on_op(op) {
                        h.end_batch();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("{} - {what} parser ERROR: {e}", conn_label(conn));
                    if let Some(t) = e.client_error_text() {
                        conn.send_err(t);
                    }
                    conn.close(CloseReason::ProtocolViolation(e.to_string()));
                    h.end_batch();
                    return;
                }
            }
        }
        h.end_batch();
        conn.touch();
        want = next_read_size(&mut buf, want, n, spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    const LINE: usize = 100;

    /// Appends line number `n` (LINE bytes) to `b`.
    fn line(b: &mut BytesMut, n: u64) {
        let mut l = Vec::with_capacity(LINE);
        let _ = write!(l, "{n:09}");
        l.resize(LINE - 1, b'.');
        l.push(b'\n');
        b.extend_from_slice(&l);
    }

    async fn read_lines(rd: &mut tokio::net::TcpStream, from: u64, count: u64) {
        let mut buf = vec![0u8; (count as usize) * LINE];
        tokio::time::timeout(Duration::from_secs(30), rd.read_exact(&mut buf))
            .await
            .expect("every line arrives")
            .expect("reading");
        for (i, l) in buf.chunks(LINE).enumerate() {
            let n: u64 = std::str::from_utf8(&l[..9])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            assert_eq!(n, from + i as u64, "line {i} out of order");
        }
    }

    /// A connected socket pair: the far end, our end, and a connection of `kind` on our
    /// end with direct writes on.
    async fn direct_pair(
        kind: ConnKind,
        max_pending: usize,
    ) -> (
        tokio::net::TcpStream,
        tokio::net::TcpStream,
        Arc<ConnShared>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, peer) = listener.accept().await.unwrap();
        let conn = Arc::new(ConnShared::new(1, kind, peer, max_pending));
        conn.enable_direct(ours.as_raw_fd());
        (far, ours, conn)
    }

    /// Queues lines `from..from + count`, each flushed directly, and reads them at `far`.
    async fn direct_lines(
        conn: &ConnShared,
        far: &mut tokio::net::TcpStream,
        from: u64,
        count: u64,
    ) {
        for n in from..from + count {
            assert!(conn.enqueue(|b| line(b, n)));
            conn.flush_direct();
        }
        read_lines(far, from, count).await;
    }

    /// A reader that read one message writes its receivers' output itself; after a
    /// busier read (or for more receivers than `READER_DIRECT_MAX`) it wakes the writers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_writes_directly_only_after_a_one_message_read() {
        let (mut far, _ours, conn) = direct_pair(ConnKind::Client, 1 << 20).await;
        let mut list = FlushList::default();
        assert!(conn.enqueue(|b| line(b, 0)));
        list.add(&conn);
        list.flush_after_read(2);
        assert!(
            conn.pending_bytes() > 0,
            "a busy read leaves the write to the writer"
        );
        list.add(&conn);
        list.flush_after_read(1);
        assert_eq!(conn.pending_bytes(), 0);
        read_lines(&mut far, 0, 1).await;
        // Too many receivers for one reader: the writers are woken instead.
        assert!(conn.enqueue(|b| line(b, 1)));
        list.add(&conn);
        for cid in 0..READER_DIRECT_MAX as u64 {
            list.add(&Arc::new(ConnShared::new(
                cid + 2,
                ConnKind::Client,
                conn.addr,
                1 << 20,
            )));
        }
        list.flush_after_read(1);
        assert!(conn.pending_bytes() > 0);
    }

    /// A route's direct writes count the bytes the socket took (its writer's S2 layer,
    /// which counts them otherwise, is bypassed); once the link frames its output with S2,
    /// nothing is written directly and the output waits for the writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_on_a_link_count_wire_bytes_and_stop_for_s2() {
        let (mut peer_end, server, conn) = direct_pair(ConnKind::Route, 1 << 20).await;
        direct_lines(&conn, &mut peer_end, 0, 5).await;
        let sent = 5 * LINE as u64;
        assert_eq!(conn.stats.wire_out_bytes.load(Ordering::Relaxed), sent);
        assert_eq!(conn.pending_bytes(), 0);
        conn.compression.store(2, Ordering::Relaxed);
        assert!(conn.enqueue(|b| line(b, 5)));
        conn.flush_direct();
        assert!(
            conn.pending_bytes() > 0,
            "an S2 link's output waits for its writer"
        );
        assert_eq!(conn.stats.wire_out_bytes.load(Ordering::Relaxed), sent);
        drop(server);
    }

    /// A thread's direct writes reach the socket without the writer; with the writer
    /// running and the socket filling up, producers on several threads (direct and
    /// signalled flushes mixed) lose nothing and reorder nothing; once the writer has
    /// ended, nobody writes to the descriptor again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_writes_keep_every_byte_in_order_beside_the_writer() {
        let (mut client, server, conn) = direct_pair(ConnKind::Client, 256 << 20).await;

        // No writer yet: only a direct write can deliver these.
        direct_lines(&conn, &mut client, 0, 10).await;

        let (_rd, wr) = tokio::io::split(server);
        let live = Liveness {
            ping_interval: Duration::from_secs(3600),
            ping_max: 2,
            write_deadline: Duration::from_secs(30),
        };
        let writer = tokio::spawn(writer_loop(conn.clone(), wr, live));
        // Far more than the socket buffers hold while nobody reads: direct writes meet a
        // full socket and leave the rest to the writer.
        let (threads, per_thread) = (3u64, 40_000u64);
        let next = Arc::new(AtomicU64::new(10));
        let producers: Vec<_> = (0..threads)
            .map(|t| {
                let (conn, next) = (conn.clone(), next.clone());
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        // Numbered under the buffer's lock: the order lines are queued in.
                        assert!(conn.enqueue(|b| line(b, next.fetch_add(1, Ordering::Relaxed))));
                        if (i + t) % 3 == 0 {
                            conn.flush_signal();
                        } else {
                            conn.flush_direct();
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().expect("producer");
        }
        read_lines(&mut client, 10, threads * per_thread).await;

        conn.close(CloseReason::ClientClosed);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer ends")
            .expect("writer task");
        assert_eq!(conn.direct_fd.load(Ordering::Relaxed), -1);
        assert!(!conn.writing.load(Ordering::Relaxed));
    }
}
