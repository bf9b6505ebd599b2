//! The client connection role: INFO, CONNECT and authentication, PUB/HPUB routing,
//! SUB/UNSUB bookkeeping, verbose/pedantic/echo/no_responders, limits and errors.
//!
//! One reader task per connection parses and routes each op in place (no channel hop);
//! the writer task lives in [`crate::core::conn`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use canopy_proto::{ClientConnect, Op, OpRef, Parser, ParserLimits, Role};
use canopy_subject::MatchResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::auth::users::{Authenticated, Perms};
use crate::auth::websocket::{WsClient, WsCredentials};
use crate::core::account::{Account, SubRef, Subscription};
use crate::core::conn::{
    conn_label, next_read_size, read_room, writer_loop, CloseReason, ConnKind, ConnShared,
    FlushList, READ_MIN,
};
use crate::core::deliver::{deliver, no_responders, Msg, Origin, Scratch};
use crate::core::errors;
use crate::core::interest::LinkClass;
use crate::core::mapping::Mapped;
use crate::server::Server;

/// A read of at most this many bytes marks a connection as "conversational" (requests,
/// replies, sparse traffic), whose next read is awaited with [`spin_read`] first.
const SPIN_AFTER_MAX: usize = 4096;
/// How long [`spin_read`] keeps the worker awake before parking.
const SPIN_FOR: Duration = Duration::from_micros(50);
/// Entries in the per-connection subject → match-result cache before it is cleared.
const L1_CACHE_MAX: usize = 256;
/// Entries in the per-connection publish-permission cache before it is cleared.
const PERM_CACHE_MAX: usize = 1024;
/// The smallest size of a client's subscription map at which auto-unsubscribed entries
/// are swept out of it.
const SUBS_SWEEP_MIN: usize = 64;

/// True when a subscription reached its auto-unsubscribe limit: the delivering reader
/// took it out of the Sublist, and only the client's own map still holds it.
fn auto_unsubscribed(s: &Subscription) -> bool {
    let max = s.max.load(Ordering::Relaxed);
    max > 0 && s.delivered.load(Ordering::Relaxed) >= max
}

struct Client {
    /// A websocket client's cookie credentials (`None` for TCP clients).
    ws_credentials: Option<WsCredentials>,
    server: Arc<Server>,
    conn: Arc<ConnShared>,
    account: Arc<Account>,
    perms: Option<Arc<Perms>>,
    /// This connection's subscriptions by sid (the record holds the sid: no second copy).
    subs: HashSet<BySid>,
    /// `subs` is swept of auto-unsubscribed entries when it reaches this size (doubling,
    /// so the sweep costs O(1) per SUB amortized).
    subs_sweep_at: usize,
    connected: bool,
    auth_required: bool,
    nonce: String,
    verbose: bool,
    pedantic: bool,
    echo: bool,
    no_responders: bool,
    /// CONNECT `protocol`: 1 and up hear asynchronous INFO (cluster changes).
    protocol: i32,
    /// Subscriptions allowed (`None` = unlimited).
    max_subs: Option<usize>,
    l1: HashMap<Bytes, (u64, Arc<MatchResult<SubRef>>)>,
    perm_cache: HashMap<Bytes, bool>,
    last_pub: Option<LastPub>,
    flush: FlushList,
    scratch: Scratch,
    /// A user JWT's payload limit, applied to the parser after the op that set it.
    pending_limits: Option<u64>,
    batch_in_msgs: u64,
    batch_in_bytes: u64,
    batch_out_msgs: u64,
    batch_out_bytes: u64,
}

/// A subscription in its connection's set, hashed and compared by sid.
#[derive(Clone)]
struct BySid(SubRef);

impl PartialEq for BySid {
    fn eq(&self, other: &Self) -> bool {
        self.0.sid() == other.0.sid()
    }
}

impl Eq for BySid {}

impl std::hash::Hash for BySid {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // Must hash as the `[u8]` it borrows as.
        self.0.sid().hash(h)
    }
}

impl std::borrow::Borrow<[u8]> for BySid {
    fn borrow(&self) -> &[u8] {
        self.0.sid()
    }
}

/// The subject this connection last published to, when it passed every check (valid
/// UTF-8, pedantic rules if asked, publish permission), with its match result. Publishers
/// usually repeat one subject: a hit costs one compare instead of UTF-8 validation, the
/// permission cache and the L1 hash. Valid while the Sublist generation is unchanged;
/// cleared on CONNECT (pedantic, permissions and account may change there).
struct LastPub {
    subject: Vec<u8>,
    generation: u64,
    result: Arc<MatchResult<SubRef>>,
}

/// Accepts client connections until the server stops accepting.
pub async fn accept_clients(server: Arc<Server>, listener: tokio::net::TcpListener) {
    let until = server.accepting.clone();
    server
        .accept_loop(listener, until, "client", serve_tcp)
        .await;
}

/// Serves one client connection until it closes.
pub async fn serve<S>(server: Arc<Server>, stream: S, addr: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_on(server, stream, addr, None, None).await
}

/// Serves one client on a TCP connection: without TLS, the threads that deliver to it
/// may write its output themselves ([`ConnShared::flush_direct`]).
async fn serve_tcp(server: Arc<Server>, stream: tokio::net::TcpStream, addr: SocketAddr) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    serve_on(server, stream, addr, None, Some(fd)).await
}

/// Serves a client whose transport is already set up (a WebSocket connection, after its
/// own TLS and upgrade): INFO is its first message, no client TLS applies.
pub async fn serve_upgraded<S>(server: Arc<Server>, stream: S, addr: SocketAddr, ws: WsClient)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_on(server, stream, addr, Some(ws), None).await
}

/// `fd`: the plain TCP socket under `stream`, when it is one.
async fn serve_on<S>(
    server: Arc<Server>,
    stream: S,
    addr: SocketAddr,
    ws: Option<WsClient>,
    fd: Option<std::os::fd::RawFd>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let upgraded = ws.is_some();
    let opts = server.opts();
    let cid = server.next_cid();
    let conn = Arc::new(ConnShared::new(
        cid,
        ConnKind::Client,
        addr,
        opts.max_pending as usize,
    ));
    if opts.producer_backoff.is_some() {
        conn.stall_at
            .store(opts.max_pending as usize / 4 * 3, Ordering::Relaxed);
    }
    if let Some(cert) = ws.as_ref().and_then(|w| w.peer_cert.clone()) {
        conn.meta.lock().peer_cert = Some(cert);
    }
    let auth = if upgraded {
        server.ws_client_auth()
    } else {
        server.client_auth()
    };
    let nonce = if auth.needs_nonce() {
        crate::auth::users::new_nonce()
    } else {
        String::new()
    };
    let mut info = server.client_info(cid, addr, &nonce, auth.required());
    if upgraded {
        // The transport's own TLS (if any) is done: nothing to negotiate in the protocol.
        info.tls_required = false;
        info.tls_verify = false;
        info.tls_available = false;
    }
    // INFO goes out here (plaintext before a TLS handshake, or queued).
    let tls = if upgraded {
        None
    } else {
        server.tls().client.clone()
    };
    let Some(stream) = crate::auth::tls::accept_conn(
        &server.stats,
        tls.as_deref(),
        stream,
        &conn,
        &info,
        opts.allow_non_tls || upgraded,
        "client listener",
    )
    .await
    else {
        return;
    };
    if let Some(fd) = fd.filter(|_| !stream.is_tls()) {
        // The socket stays open until the writer ends: both halves hold it.
        conn.enable_direct(fd);
    }
    let (rd, wr) = tokio::io::split(stream);
    let writer = tokio::spawn(writer_loop(conn.clone(), wr, server.liveness()));

    if !server.admit_client(&conn) {
        tracing::warn!("{} - Maximum connections exceeded", conn_label(&conn));
        conn.error_and_close(errors::MAX_CONNECTIONS, CloseReason::MaxConnections);
        let _ = writer.await;
        return;
    }
    tracing::debug!("{} - Client connection created", conn_label(&conn));

    let mut client = Client {
        account: server.global_account(),
        server: server.clone(),
        conn: conn.clone(),
        perms: None,
        subs: HashSet::new(),
        subs_sweep_at: SUBS_SWEEP_MIN,
        connected: false,
        auth_required: auth.required(),
        nonce,
        verbose: false,
        pedantic: false,
        echo: true,
        no_responders: false,
        protocol: 0,
        // The server option encodes "unlimited" as 0.
        max_subs: (opts.max_subscriptions > 0).then_some(opts.max_subscriptions as usize),
        l1: HashMap::new(),
        perm_cache: HashMap::new(),
        last_pub: None,
        flush: FlushList::default(),
        scratch: Scratch::default(),
        pending_limits: None,
        batch_in_msgs: 0,
        batch_in_bytes: 0,
        batch_out_msgs: 0,
        batch_out_bytes: 0,
        ws_credentials: ws.map(|w| w.credentials),
    };
    let limits = ParserLimits {
        max_control_line: opts.max_control_line as usize,
        max_payload: opts.max_payload as usize,
    };
    // `websocket { authorization { timeout } }` overrides the client one.
    let ws_timeout = opts
        .websocket
        .as_ref()
        .filter(|_| upgraded)
        .and_then(|w| w.authorization.as_ref())
        .and_then(|a| a.timeout);
    let auth_timeout = ws_timeout
        .or(opts.authorization.timeout)
        .unwrap_or(Duration::from_secs(2));
    drop(opts);
    client
        .read_loop(rd, Parser::new(Role::Client, limits), auth_timeout)
        .await;
    client.conn.close(CloseReason::ClientClosed);
    let _ = writer.await;
    client.cleanup();
}

impl Client {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        mut parser: Parser,
        auth_timeout: Duration,
    ) {
        // Starts small and grows on demand (see `next_read_size`): most connections are
        // idle most of the time.
        let mut want = READ_MIN;
        let mut buf = BytesMut::with_capacity(want);
        let auth_deadline = tokio::time::Instant::now() + auth_timeout;
        let mut last_len = usize::MAX;
        loop {
            let spare = read_room(&mut buf, want);
            let waiting_auth = self.auth_required && !self.connected;
            let early = if last_len <= SPIN_AFTER_MAX {
                spin_read(&mut rd, &mut buf, &self.conn).await
            } else {
                None
            };
            let res = if let Some(r) = early {
                r
            } else {
                tokio::select! {
                    biased;
                    _ = self.conn.cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(auth_deadline), if waiting_auth => {
                        tracing::error!("{} - Authentication Timeout", conn_label(&self.conn));
                        self.server.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                        self.conn.error_and_close(errors::AUTH_TIMEOUT, CloseReason::AuthTimeout);
                        return;
                    }
                    r = rd.read_buf(&mut buf) => r,
                }
            };
            if let Ok(n) = res {
                last_len = n;
            }
            match res {
                Ok(0) => {
                    self.conn.close(CloseReason::ClientClosed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn.close(CloseReason::ReadError(e.to_string()));
                    return;
                }
            }
            // Ops are decoded in place (`next_ref`: slices of `buf`, no reference counting)
            // and the consumed bytes dropped once per read.
            let mut pos = 0;
            let stop = loop {
                match parser.next_ref(&buf[pos..]) {
                    Ok(Some((op, len))) => {
                        pos += len;
                        if !self.dispatch(op).await {
                            break true;
                        }
                        if let Some(max) = self.pending_limits.take() {
                            let mut l = *parser.limits();
                            l.max_payload = l
                                .max_payload
                                .min(usize::try_from(max).unwrap_or(usize::MAX));
                            parser.set_limits(l);
                        }
                    }
                    Ok(None) => break false,
                    Err(e) => {
                        let text = e.client_error_text();
                        self.server.note_proto_error(&e);
                        tracing::error!("{} - Client parser ERROR: {e}", conn_label(&self.conn));
                        let reason = if text == Some(errors::MAX_PAYLOAD) {
                            CloseReason::MaxPayload
                        } else {
                            CloseReason::ProtocolViolation(e.to_string())
                        };
                        if let Some(text) = text {
                            self.conn.send_err(text);
                        }
                        if e.closes_connection() {
                            self.conn.close(reason);
                            break true;
                        }
                        break false;
                    }
                }
            };
            buf.advance(pos);
            self.end_batch();
            if stop {
                return;
            }
            if !self.flush.stalled.is_empty() {
                self.back_off().await;
            }
            self.conn.touch();
            want = next_read_size(&mut buf, want, last_len, spare);
        }
    }

    /// Routes a PUB/HPUB straight from the read buffer; every other op (rare) is copied
    /// out and goes through [`Client::handle`]. Returns false when reading must stop.
    async fn dispatch(&mut self, op: OpRef<'_>) -> bool {
        if crate::server::logging::trace_enabled() {
            crate::server::logging::trace_in(&conn_label(&self.conn), &op);
        }
        // Before CONNECT on a server that requires auth, `handle` refuses the PUB.
        let may_route = self.connected || !self.auth_required;
        match op {
            Op::Pub {
                subject,
                reply,
                payload,
            } if may_route => self.on_pub(subject, reply, None, payload),
            Op::HPub {
                subject,
                reply,
                header_len,
                payload,
            } if may_route => self.on_pub(subject, reply, Some(header_len), payload),
            other => return self.handle(other.map(Bytes::copy_from_slice)).await,
        }
        !self.conn.is_closed()
    }

    /// `producer_backoff`: holds this publisher back while the receivers its last batch
    /// filled past 75% of their `max_pending` drain, as nats-server stalls a fast
    /// producer: at most the configured time per batch, scaled as nats-server scales it
    /// (40% at the mark, all of it at `max_pending`). Without the option nothing waits.
    async fn back_off(&mut self) {
        let mut stalled = std::mem::take(&mut self.flush.stalled);
        if let Some(max) = self.server.opts().producer_backoff {
            let ttl = stalled
                .iter()
                .map(|c| stall_time(c.pending_bytes(), c.max_pending(), max))
                .max()
                .unwrap_or_default();
            let deadline = tokio::time::Instant::now() + ttl;
            self.server
                .stats
                .producer_stalls
                .fetch_add(1, Ordering::Relaxed);
            for c in &stalled {
                if c.cid == self.conn.cid {
                    continue; // its own echo: waiting would only stall itself
                }
                let drained = c.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if !c.stalled.load(Ordering::Relaxed) || c.is_closed() {
                    continue;
                }
                tokio::select! {
                    _ = drained => {}
                    _ = c.cancel.cancelled() => {}
                    _ = self.conn.cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        stalled.clear();
        self.flush.stalled = stalled;
    }

    /// Publishes the batch's counters and wakes every receiver once.
    fn end_batch(&mut self) {
        self.flush.flush_after_read(self.batch_in_msgs);
        let s = &self.server.stats;
        if self.batch_in_msgs > 0 {
            self.conn
                .stats
                .in_msgs
                .fetch_add(self.batch_in_msgs, Ordering::Relaxed);
            self.conn
                .stats
                .in_bytes
                .fetch_add(self.batch_in_bytes, Ordering::Relaxed);
            s.in_msgs.fetch_add(self.batch_in_msgs, Ordering::Relaxed);
            s.in_bytes.fetch_add(self.batch_in_bytes, Ordering::Relaxed);
            self.account
                .in_msgs
                .fetch_add(self.batch_in_msgs, Ordering::Relaxed);
            self.account
                .in_bytes
                .fetch_add(self.batch_in_bytes, Ordering::Relaxed);
            self.batch_in_msgs = 0;
            self.batch_in_bytes = 0;
        }
        if self.batch_out_msgs > 0 {
            s.out_msgs.fetch_add(self.batch_out_msgs, Ordering::Relaxed);
            s.out_bytes
                .fetch_add(self.batch_out_bytes, Ordering::Relaxed);
            self.account
                .out_msgs
                .fetch_add(self.batch_out_msgs, Ordering::Relaxed);
            self.account
                .out_bytes
                .fetch_add(self.batch_out_bytes, Ordering::Relaxed);
            self.batch_out_msgs = 0;
            self.batch_out_bytes = 0;
        }
    }

    fn ok(&self) {
        if self.verbose {
            self.conn.enqueue(|b| b.extend_from_slice(b"+OK\r\n"));
            self.conn.flush_signal();
        }
    }

    /// Handles one op. Returns false when the connection must stop reading.
    async fn handle(&mut self, op: Op) -> bool {
        if !self.connected && self.auth_required && !matches!(op, Op::Connect(_)) {
            tracing::error!(
                "{} - Authorization Violation: operation before CONNECT",
                conn_label(&self.conn)
            );
            self.server
                .stats
                .auth_failures
                .fetch_add(1, Ordering::Relaxed);
            self.conn
                .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
            return false;
        }
        match op {
            Op::Connect(json) => return self.on_connect(&json).await,
            Op::Ping => {
                // Counters and deliveries before this PING are visible once the PONG is.
                self.end_batch();
                self.conn.enqueue(|b| b.extend_from_slice(b"PONG\r\n"));
                self.conn.flush_signal();
                // From the first PONG on, as nats-server: cluster changes come as INFO.
                if self.connected && self.protocol >= 1 {
                    self.conn.async_info.store(true, Ordering::Relaxed);
                }
            }
            Op::Pong => self.conn.pong_received(),
            Op::Pub {
                subject,
                reply,
                payload,
            } => self.on_pub(&subject, reply.as_deref(), None, &payload),
            Op::HPub {
                subject,
                reply,
                header_len,
                payload,
            } => self.on_pub(&subject, reply.as_deref(), Some(header_len), &payload),
            Op::Sub {
                subject,
                queue,
                sid,
            } => self.on_sub(subject, queue, sid),
            Op::Unsub { sid, max } => self.on_unsub(sid, max),
            // Anything else a client may not send.
            _ => {
                self.conn.error_and_close(
                    errors::UNKNOWN_OP,
                    CloseReason::ProtocolViolation("unexpected op".into()),
                );
                return false;
            }
        }
        !self.conn.is_closed()
    }

    async fn on_connect(&mut self, json: &[u8]) -> bool {
        let c: ClientConnect = match serde_json::from_slice(json) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{} - Invalid CONNECT: {e}", conn_label(&self.conn));
                self.conn.error_and_close(
                    errors::UNKNOWN_OP,
                    CloseReason::ProtocolViolation(format!("invalid CONNECT: {e}")),
                );
                return false;
            }
        };
        let first = !self.connected;
        if !self.connected {
            let auth = match &self.ws_credentials {
                Some(_) => self.server.ws_client_auth(),
                None => self.server.client_auth(),
            };
            let nonce = self.nonce.clone();
            let mut c2 = c.clone();
            if let Some(cookies) = &self.ws_credentials {
                cookies.fill(&mut c2);
            }
            let cert = self.conn.meta.lock().peer_cert.clone();
            let result = if auth.required() {
                tokio::task::spawn_blocking(move || {
                    auth.authenticate_client(&c2, &nonce, cert.as_deref())
                })
                .await
                .unwrap_or_else(|_| Err(String::new()))
            } else {
                auth.authenticate_client(&c2, &nonce, cert.as_deref())
            };
            match result {
                Ok(a) => {
                    if !self.bind(a) {
                        return false;
                    }
                }
                Err(user) => {
                    tracing::error!(
                        "{} - authentication error - User {:?}",
                        conn_label(&self.conn),
                        user
                    );
                    self.server
                        .stats
                        .auth_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.conn
                        .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
                    return false;
                }
            }
        }
        let headers = c.headers && !self.server.opts().no_header_support;
        if c.no_responders && !headers {
            self.conn.error_and_close(
                "no responders requires headers support",
                CloseReason::ProtocolViolation("no_responders without headers".into()),
            );
            return false;
        }
        self.last_pub = None;
        self.verbose = c.verbose;
        self.pedantic = c.pedantic;
        self.echo = c.echo;
        self.no_responders = c.no_responders;
        self.protocol = c.protocol;
        self.conn.headers.store(headers, Ordering::Relaxed);
        self.conn.echo.store(c.echo, Ordering::Relaxed);
        {
            let mut m = self.conn.meta.lock();
            m.name = c.name.clone();
            m.lang = c.lang.clone();
            m.version = c.version.clone();
        }
        if first {
            crate::server::events::client_connected(&self.server, &self.conn, &self.account.name);
        }
        self.ok();
        true
    }

    /// Binds the connection to its authenticated account.
    fn bind(&mut self, a: Authenticated) -> bool {
        // Operator mode creates the JWT's account on first use and checks its limits.
        let acc = match self.server.bind_account(&self.conn, &a) {
            Ok(acc) => acc,
            Err(text) => {
                self.server
                    .stats
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.conn.error_and_close(text, CloseReason::AuthViolation);
                return false;
            }
        };
        if let Some(u) = &a.jwt {
            // JWT limits: negative is unlimited (`None`), 0 allows no subscription at all.
            if let Some(m) = u.max_subs {
                let m = usize::try_from(m).unwrap_or(usize::MAX);
                self.max_subs = Some(self.max_subs.map_or(m, |cur| cur.min(m)));
            }
            if self.max_subs == Some(0) {
                // As nats-server: a connection already at its subscription limit is
                // closed right after CONNECT.
                tracing::error!(
                    "{} - Maximum Subscriptions Exceeded (max 0)",
                    conn_label(&self.conn)
                );
                self.conn.error_and_close(
                    errors::MAX_SUBSCRIPTIONS,
                    CloseReason::Other("Maximum Subscriptions Exceeded".into()),
                );
                return false;
            }
            if let Some(p) = u.max_payload {
                self.pending_limits = Some(p);
            }
        }
        acc.num_conns.fetch_add(1, Ordering::Relaxed);
        {
            let mut m = self.conn.meta.lock();
            m.user = a.user;
            m.account = acc.name.clone();
        }
        self.account = acc;
        if let Some(ar) = a.perms.as_ref().and_then(|p| p.allow_responses) {
            let _ = self.conn.allow_responses.set(ar);
        }
        // Subscribe deny rules also filter what wildcard subscriptions receive (a
        // subscription to `a.*` with `a.secret` denied never gets `a.secret`).
        if let Some(deny) = a.perms.as_ref().map(|p| &p.subscribe.deny) {
            if !deny.is_empty() {
                let _ = self.conn.deny_send.set(deny.clone());
            }
        }
        self.perms = a.perms;
        self.connected = true;
        self.conn.registered.store(true, Ordering::Relaxed);
        true
    }

    fn may_publish(&mut self, subject: &[u8]) -> bool {
        let Some(perms) = &self.perms else {
            return true;
        };
        if let Some(&ok) = self.perm_cache.get(subject) {
            return ok;
        }
        let ok = std::str::from_utf8(subject)
            .map(|s| perms.publish.permits_publish(s))
            .unwrap_or(false);
        if self.perm_cache.len() >= PERM_CACHE_MAX {
            self.perm_cache.clear();
        }
        self.perm_cache.insert(Bytes::copy_from_slice(subject), ok);
        ok
    }

    fn lookup(&mut self, subject: &[u8], subject_str: &str) -> (u64, Arc<MatchResult<SubRef>>) {
        if crate::core::deliver::is_one_off(subject) {
            // Each ack or reply subject is used once: caching it costs more than it saves.
            let (r, generation) = self.account.sublist.match_once(subject_str);
            return (generation, r);
        }
        if let Some((g, r)) = self.l1.get(subject) {
            if *g == self.account.sublist.generation() {
                return (*g, r.clone());
            }
        }
        let (r, generation) = self.account.sublist.match_with_generation(subject_str);
        if self.l1.len() >= L1_CACHE_MAX {
            self.l1.clear();
        }
        self.l1
            .insert(Bytes::copy_from_slice(subject), (generation, r.clone()));
        (generation, r)
    }

    fn on_pub(
        &mut self,
        subject: &[u8],
        reply: Option<&[u8]>,
        hdr_len: Option<usize>,
        payload: &[u8],
    ) {
        self.batch_in_msgs += 1;
        self.batch_in_bytes += payload.len() as u64;
        // Mappings come before permissions and interest (one branch when there are none).
        let mapped;
        let subject = match self.account.mappings.get() {
            None => subject,
            Some(m) => match std::str::from_utf8(subject).map(|s| m.map(s)) {
                Ok(Mapped::To(s)) => {
                    mapped = s;
                    mapped.as_bytes()
                }
                Ok(Mapped::Drop) => return self.ok(),
                _ => subject,
            },
        };
        // Moved out and back rather than borrowed or cloned: routing needs `&mut self`,
        // and cloning the `Arc` costs two atomic read-modify-writes per message.
        if let Some(last) = self.last_pub.take() {
            let hit =
                last.subject == subject && last.generation == self.account.sublist.generation();
            if hit {
                self.route_pub(&last.result, subject, reply, hdr_len, payload);
            }
            self.last_pub = Some(last);
            if hit {
                return;
            }
        }
        if let Some(result) = self.check_and_lookup(subject) {
            self.route_pub(&result, subject, reply, hdr_len, payload);
        }
    }

    /// The checks a PUB subject must pass, then the lookup; remembers the subject in
    /// `last_pub` when it passed them all silently. `None`: refused (error already sent).
    fn check_and_lookup(&mut self, subject: &[u8]) -> Option<Arc<MatchResult<SubRef>>> {
        let Ok(subject_str) = std::str::from_utf8(subject) else {
            self.conn.send_err(errors::INVALID_PUB_SUBJECT);
            return None;
        };
        // Pedantic clients are told about a bad subject; like nats-server, the message
        // still goes out.
        let mut memo = true;
        if self.pedantic && !canopy_subject::is_valid_pedantic_publish(subject_str) {
            self.conn.send_err(errors::INVALID_PUB_SUBJECT);
            memo = false;
        }
        // A reply to a request this client received (`allow_responses`) is allowed
        // `max` times and never memoised.
        let allowed = self.may_publish(subject) || {
            let granted = self.conn.use_response(subject);
            memo &= !granted;
            granted
        };
        if !allowed {
            tracing::error!(
                "{} - Publish Violation - User {:?}, Subject {:?}",
                conn_label(&self.conn),
                self.conn.meta.lock().user,
                subject_str
            );
            self.server
                .stats
                .permission_denials
                .fetch_add(1, Ordering::Relaxed);
            self.conn
                .send_err(&errors::pub_permission_violation(subject_str));
            return None;
        }
        let (generation, result) = self.lookup(subject, subject_str);
        if memo {
            match &mut self.last_pub {
                Some(l) => {
                    l.subject.clear();
                    l.subject.extend_from_slice(subject);
                    l.generation = generation;
                    l.result = result.clone();
                }
                None => {
                    self.last_pub = Some(LastPub {
                        subject: subject.to_vec(),
                        generation,
                        result: result.clone(),
                    })
                }
            }
        }
        Some(result)
    }

    fn route_pub(
        &mut self,
        result: &MatchResult<SubRef>,
        subject: &[u8],
        reply: Option<&[u8]>,
        hdr_len: Option<usize>,
        payload: &[u8],
    ) {
        let msg = Msg {
            subject,
            reply,
            hdr_len,
            payload,
            link: None,
        };
        let origin = Origin {
            cid: self.conn.cid,
            echo: self.echo,
            class: LinkClass::Client,
            queues: None,
            peer: None,
            conn: Some(&self.conn),
            imported: false,
        };
        let d = deliver(
            &self.account,
            result,
            &msg,
            &origin,
            &mut self.scratch,
            &mut self.flush,
        );
        self.batch_out_msgs += d.msgs;
        self.batch_out_bytes += d.bytes;
        if d.msgs == 0 && !d.answered && self.no_responders {
            if let Some(r) = reply {
                no_responders(&self.account, r, self.conn.cid, &mut self.flush);
            }
        }
        self.ok();
    }

    fn on_sub(&mut self, subject: Bytes, queue: Option<Bytes>, sid: Bytes) {
        let Ok(subject_str) = std::str::from_utf8(&subject) else {
            self.conn.send_err(errors::INVALID_SUBJECT);
            return;
        };
        if !canopy_subject::is_well_formed(subject_str) {
            self.conn.send_err(errors::INVALID_SUBJECT);
            return;
        }
        let queue_str = match &queue {
            None => None,
            Some(q) => match std::str::from_utf8(q) {
                Ok(q) if canopy_subject::is_valid_queue_name(q) => Some(q),
                _ => {
                    self.conn.send_err(errors::INVALID_SUBJECT);
                    return;
                }
            },
        };
        if let Some(perms) = &self.perms {
            if !perms.subscribe.permits_subscribe(subject_str) {
                tracing::error!(
                    "{} - Subscription Violation - User {:?}, Subject {:?}",
                    conn_label(&self.conn),
                    self.conn.meta.lock().user,
                    subject_str
                );
                self.server
                    .stats
                    .permission_denials
                    .fetch_add(1, Ordering::Relaxed);
                self.conn
                    .send_err(&errors::sub_permission_violation(subject_str, queue_str));
                return;
            }
        }
        if let Some(BySid(old)) = self.subs.get(&sid[..]) {
            if !auto_unsubscribed(old) {
                // nats-server ignores a SUB that reuses a live sid.
                self.ok();
                return;
            }
            // The old subscription is gone (auto-unsubscribed): the sid is free again.
            self.subs.remove(&sid[..]);
        }
        if self.subs.len() >= self.subs_sweep_at {
            // Auto-unsubscribed entries (requests, mostly) would otherwise stay for the
            // life of the connection.
            self.subs.retain(|BySid(s)| !auto_unsubscribed(s));
            self.subs_sweep_at = (self.subs.len() * 2).max(SUBS_SWEEP_MIN);
        }
        if let Some(max) = self.max_subs.filter(|m| self.subs.len() >= *m) {
            // Drop subscriptions that hit their auto-unsubscribe limit before refusing.
            self.subs.retain(|BySid(s)| !auto_unsubscribed(s));
            if self.subs.len() >= max {
                tracing::error!(
                    "{} - Maximum Subscriptions Exceeded (max {max})",
                    conn_label(&self.conn)
                );
                self.conn.send_err(errors::MAX_SUBSCRIPTIONS);
                return;
            }
        }
        let sub = SubRef(Arc::new(Subscription::new(
            self.conn.clone(),
            &subject,
            queue.as_deref(),
            &sid,
            None,
        )));
        if let Err(e) = self
            .account
            .sublist
            .insert(subject_str, queue_str, sub.clone())
        {
            tracing::error!("{} - subscription refused: {e}", conn_label(&self.conn));
            self.conn.send_err(errors::INVALID_SUBJECT);
            return;
        }
        if self.account.track_interest {
            let key = Account::key_of(&sub);
            self.account
                .interest_add(&key, self.conn.cid, LinkClass::Client, 1);
        }
        self.subs.insert(BySid(sub));
        self.conn.num_subs.fetch_add(1, Ordering::Relaxed);
        self.ok();
    }

    fn on_unsub(&mut self, sid: Bytes, max: Option<u64>) {
        if let Some(BySid(sub)) = self.subs.get(&sid[..]).cloned() {
            match max {
                Some(m) if m > 0 && sub.delivered.load(Ordering::Relaxed) < m => {
                    sub.max.store(m, Ordering::Relaxed);
                    // A message may have been counted between the check and the store.
                    if sub.delivered.load(Ordering::Relaxed) >= m {
                        self.remove_sub(&sid);
                    }
                }
                _ => self.remove_sub(&sid),
            }
        }
        self.ok();
    }

    fn remove_sub(&mut self, sid: &Bytes) {
        if let Some(BySid(sub)) = self.subs.take(&sid[..]) {
            self.account.drop_subscription(&sub);
        }
    }

    fn cleanup(&mut self) {
        for BySid(sub) in self.subs.drain() {
            self.account.drop_subscription(&sub);
        }
        self.conn.num_subs.store(0, Ordering::Relaxed);
        if self.connected {
            self.account.num_conns.fetch_sub(1, Ordering::Relaxed);
            crate::server::events::client_disconnected(
                &self.server,
                &self.conn,
                &self.account.name,
            );
        }
        self.server.remove_conn(&self.conn);
    }
}

/// Waits up to [`SPIN_FOR`] for the next read without letting the worker thread park:
/// each round yields to the runtime (which polls the I/O driver without blocking, so
/// other connections' events are served too) and to the OS scheduler (so that, when the
/// cores are busy, the clients and other processes run rather than this loop). `None`
/// when nothing arrived; the caller then awaits the read normally.
///
/// Why: on an idle machine, and even more in a VM, a parked thread whose CPU went idle
/// takes tens of microseconds to wake, once per hop. A request/reply round trip through
/// the server is two hops, and the reply usually comes within the window: measured on
/// the 2-core VM, p50 went from ~140us (nats-server ~130us) to ~30us on an idle machine,
/// and stayed at ~17-19us on a busy one. The cost is up to `SPIN_FOR` of CPU after a
/// small read (nats-server's Go runtime spins similarly); big reads (streams) never spin.
async fn spin_read<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    conn: &ConnShared,
) -> Option<std::io::Result<usize>> {
    let until = std::time::Instant::now() + SPIN_FOR;
    loop {
        tokio::select! {
            biased;
            r = rd.read_buf(buf) => return Some(r),
            _ = tokio::task::yield_now() => {}
        }
        if conn.is_closed() || std::time::Instant::now() >= until {
            return None;
        }
        std::thread::yield_now();
    }
}

/// How long `producer_backoff` holds a publisher for a receiver with `pending` of
/// `max_pending` bytes queued: 40% of `max` at the 75% mark, growing linearly to all of
/// `max` at `max_pending` (nats-server: 2 ms to 5 ms).
fn stall_time(pending: usize, max_pending: usize, max: Duration) -> Duration {
    let mark = max_pending / 4 * 3;
    let span = (max_pending - mark).max(1) as f64;
    let over = pending.saturating_sub(mark).min(max_pending - mark) as f64;
    max.mul_f64(0.4 + 0.6 * over / span)
}

#[cfg(test)]
mod tests {
    use super::stall_time;
    use std::time::Duration;

    #[test]
    fn stall_time_grows_from_the_mark_to_max_pending() {
        let max = Duration::from_millis(5);
        assert_eq!(stall_time(750, 1000, max), Duration::from_millis(2));
        assert_eq!(stall_time(1000, 1000, max), max);
        assert_eq!(stall_time(5000, 1000, max), max);
        let mid = stall_time(875, 1000, max);
        assert!(
            mid > Duration::from_millis(3) && mid < Duration::from_millis(4),
            "{mid:?}"
        );
    }
}
