//! Leaf nodes: the accepting side (`leafnodes { port }`, we are the hub) and the soliciting
//! side (`leafnodes { remotes }`, we are the spoke), wire compatible with nats-server 2.9+.
//!
//! A leaf connection is a [`Link`] in its account's interest model ([`crate::core::interest`]):
//! LS+/LS- from the peer become Sublist entries owned by the link; our interest is
//! advertised by the model; LMSG/HMSG are delivered with [`crate::core::deliver`] under the
//! forwarding rule. Loops through servers that do not follow that rule (a Go server in a
//! ring, say) are caught as nats-server does: our `$LDS.<random>` subject coming back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use canopy_conf::{Compression, RemoteLeafOpts};
use canopy_proto::{LeafConnect, Op, Parser, ParserLimits, Role, ServerInfo};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;

use crate::auth::s2::{
    announced, follow_rtt, read_hub_info, select_compression, wants_compression, CountRead, Level,
    S2Decoder, S2Read, S2Write,
};
use crate::core::account::{Account, GLOBAL_ACCOUNT};
use crate::core::conn::{
    conn_label, read_ops, writer_loop, BatchCounters, CloseReason, ConnKind, ConnShared, FlushList,
    OpHandler,
};
use crate::core::deliver::{deliver, Msg, Origin, Scratch};
use crate::core::errors;
use crate::core::interest::{Link, LinkClass};
use crate::core::mapping::Mapped;
use crate::core::url::ServerUrl;
pub use crate::server::links::RemoteState;
use crate::server::version;
use crate::server::Server;

/// How long a solicitor waits before retrying after the peer reported a loop.
pub const LOOP_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Default port of a leaf URL without one.
pub const DEFAULT_LEAF_PORT: u16 = 7422;

/// A parsed leaf URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
    /// TLS before anything else is said: `tls://`, or `wss://` (before the upgrade).
    pub tls: bool,
    /// `ws://` or `wss://`: through the hub's websocket port.
    pub ws: bool,
    /// The URL's path (a websocket upgrade asks for it followed by `leafnode`).
    pub path: String,
}

impl LeafUrl {
    pub fn parse(url: &str) -> Result<LeafUrl, String> {
        let u = ServerUrl::parse(
            url,
            &["nats-leaf", "nats", "tls", "leaf", "ws", "wss"],
            Some(DEFAULT_LEAF_PORT),
        )?;
        Ok(LeafUrl {
            tls: u.scheme == "tls" || u.scheme == "wss",
            ws: u.scheme == "ws" || u.scheme == "wss",
            path: u.path,
            host: u.host,
            port: u.port,
            user: u.user,
            pass: u.pass,
        })
    }

    pub fn hostport(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The user JWT and seed of a `.creds` file (CRLF tolerated).
pub fn parse_creds(text: &str) -> Result<(String, String), String> {
    let mut jwt = None;
    let mut seed = None;
    let mut lines = text.lines().map(|l| l.trim());
    while let Some(l) = lines.next() {
        if l.starts_with("---") && l.contains("BEGIN") {
            let body = lines.by_ref().find(|x| !x.is_empty()).unwrap_or("");
            if l.contains("JWT") {
                jwt = Some(body.to_string());
            } else if l.contains("SEED") {
                seed = Some(body.to_string());
            }
        }
    }
    match (jwt, seed) {
        (Some(j), Some(s)) if !j.is_empty() && s.starts_with('S') => Ok((j, s)),
        _ => Err("no user JWT and nkey seed blocks found".into()),
    }
}

fn sign_nonce(seed: &str, nonce: &str) -> Result<(String, String), String> {
    use base64::Engine as _;
    let kp = nkeys::KeyPair::from_seed(seed).map_err(|e| format!("invalid nkey seed: {e}"))?;
    let sig = kp
        .sign(nonce.as_bytes())
        .map_err(|e| format!("cannot sign nonce: {e}"))?;
    Ok((
        kp.public_key(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
    ))
}

impl Server {
    /// True when this server both accepts leaf connections and solicits remotes: links
    /// between two such regional hubs form a mesh (see `interest.rs`).
    pub fn is_regional(&self) -> bool {
        let o = self.opts();
        o.leafnodes
            .as_ref()
            .is_some_and(|l| l.port != 0 && !l.remotes.is_empty())
    }

    /// All live leaf links, across accounts.
    pub fn leaf_links(&self) -> Vec<Arc<Link>> {
        let mut v: Vec<Arc<Link>> = self
            .accounts()
            .iter()
            .flat_map(|a| a.links())
            .filter(|l| l.conn.kind == ConnKind::Leaf)
            .collect();
        v.sort_by_key(|l| l.conn.cid);
        v
    }

    /// Decides which of several leaf connections to the same server carries our interest
    /// (two servers that solicit each other have two): the one solicited by the server
    /// with the smaller id. The others stay up as standbys and take over when it drops.
    fn refresh_pair(&self, acc: &Account, peer_id: &str) {
        if peer_id.is_empty() {
            return;
        }
        let links: Vec<Arc<Link>> = acc
            .links()
            .into_iter()
            .filter(|l| l.peer_id == peer_id && l.conn.kind == ConnKind::Leaf)
            .collect();
        let mut changed = false;
        let prefer_solicited = self.id.as_str() < peer_id;
        let has_preferred = links.iter().any(|l| l.solicited == prefer_solicited);
        for l in &links {
            let want = !has_preferred || l.solicited == prefer_solicited;
            if l.advertise.swap(want, Ordering::Relaxed) != want {
                changed = true;
            }
        }
        if changed {
            acc.resync_links();
        }
    }
}

/// The INFO our leafnode listener sends.
pub(crate) fn leaf_info(server: &Server, cid: u64, nonce: &str, listen: SocketAddr) -> ServerInfo {
    let o = server.opts();
    let lo = o
        .leafnodes
        .clone()
        .unwrap_or_else(|| canopy_conf::LeafNodeOpts::new(Default::default()));
    let advertise = lo
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{}:{}", advertise_host(&lo.host), listen.port()));
    ServerInfo {
        server_id: server.id.clone(),
        server_name: server.name.clone(),
        version: version::NATS_COMPAT_VERSION.to_string(),
        proto: version::CLIENT_PROTO,
        go: version::RUNTIME.to_string(),
        host: lo.host.clone(),
        port: listen.port(),
        headers: true,
        auth_required: true,
        max_payload: o.max_payload as i64,
        client_id: cid,
        nonce: nonce.to_string(),
        tls_required: lo.tls.is_some(),
        tls_verify: lo.tls.as_ref().is_some_and(|t| t.verify),
        info_on_connect: true,
        leafnode_urls: if lo.no_advertise {
            Vec::new()
        } else {
            let mut urls = vec![advertise];
            for u in server.cluster_leaf_urls() {
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
            urls
        },
        canopy_version: version::CANOPY_VERSION.to_string(),
        canopy_regional: server.is_regional(),
        jetstream: server.jetstream().is_some(),
        domain: server.js_domain().unwrap_or_default(),
        compression: lo
            .compression
            .as_ref()
            .map(|c| announced(c, None))
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The JetStream subjects kept off one leaf link, as nats-server decides per link
/// (docs/ARCHITECTURE.md, "JetStream across leaf links").
struct JsDenies {
    /// Denied both ways: never advertised, sent or received.
    both: Vec<String>,
    /// Never sent: our own domain's API, which is answered here.
    outgoing: Vec<String>,
    local: String,
    remote: String,
    /// Either side runs JetStream (the decision is then worth an info line).
    jetstream: bool,
    /// This server runs JetStream.
    local_js: bool,
}

/// Each side's JetStream API, KV and object subjects are its own: `$JS.API.>`, `$KV.>`
/// and `$OBJ.>` cross a leaf link in neither direction (also `$JSC.>` and `$NRG.>` on
/// the system account), whatever the domains. nats-server lifts this only to extend one
/// JetStream over the system account with equal domains, which Canopy does not do.
/// Clients reach the other side's JetStream through `$JS.<domain>.API`, which crosses;
/// our own domain's API never leaves when the peer's domain differs (nats-server's guard
/// against two sides claiming one domain).
fn js_denies(server: &Server, account: &str, remote_js: bool, remote_domain: &str) -> JsDenies {
    let mut both: Vec<String> = ["$JS.API.>", "$KV.>", "$OBJ.>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if account == server.system_account {
        both.extend(["$JSC.>".to_string(), "$NRG.>".to_string()]);
    }
    let local = server.js_domain().unwrap_or_default();
    let outgoing = if !local.is_empty() && local != remote_domain {
        vec![format!("$JS.{local}.API.>")]
    } else {
        Vec::new()
    };
    JsDenies {
        both,
        outgoing,
        jetstream: remote_js || server.jetstream().is_some(),
        local_js: server.jetstream().is_some(),
        local,
        remote: remote_domain.to_string(),
    }
}

impl JsDenies {
    fn log(&self, conn: &ConnShared) {
        let line = format!(
            "{} - JetStream using domains: local {:?}, remote {:?} (denied both ways: {})",
            conn_label(conn),
            self.local,
            self.remote,
            self.both.join(" ")
        );
        if self.jetstream {
            tracing::info!("{line}");
        } else {
            tracing::debug!("{line}");
        }
        // The two ways nats-server users lose messages (issue 14, #4148).
        if self.local_js && !self.local.is_empty() && self.local == self.remote {
            tracing::warn!(
                "{} - both sides of this leaf link use JetStream domain {:?}: neither reaches the \
                 other's JetStream; give each side its own domain",
                conn_label(conn),
                self.local
            );
        } else if self.local_js && self.local.is_empty() && !self.remote.is_empty() {
            tracing::warn!(
                "{} - this server runs JetStream without a domain and the peer's domain is {:?}: \
                 set jetstream {{ domain }} so clients can address this side",
                conn_label(conn),
                self.remote
            );
        }
    }
}

fn advertise_host(h: &str) -> String {
    if h == "0.0.0.0" || h == "::" || h.is_empty() {
        "127.0.0.1".into()
    } else {
        h.to_string()
    }
}

/// Accepts leaf connections until the server stops accepting.
pub async fn accept_leafs(server: Arc<Server>, listener: TcpListener) {
    let Ok(listen) = listener.local_addr() else {
        return;
    };
    let until = server.accepting.clone();
    server
        .accept_loop(listener, until, "leafnode", move |s, stream, addr| {
            serve_accepted(s, stream, addr, listen)
        })
        .await;
}

/// Starts one task per configured leaf remote.
pub fn start_remotes(server: &Arc<Server>) {
    let o = server.opts();
    let Some(lo) = &o.leafnodes else {
        return;
    };
    for r in &lo.remotes {
        if r.disabled {
            tracing::info!("leafnode remote {:?} is disabled", r.urls);
            continue;
        }
        let account = r
            .account
            .clone()
            .unwrap_or_else(|| GLOBAL_ACCOUNT.to_string());
        let spool = lo
            .spool_size(r)
            .map(|size| open_spool(server, &o, lo, r, &account, size));
        let state = Arc::new(RemoteState {
            urls: r.urls.clone(),
            account,
            spool,
            ..Default::default()
        });
        server.add_remote_state(state.clone());
        tokio::spawn(run_remote(server.clone(), r.clone(), state));
    }
}

/// Opens a remote's store-and-forward spool (under `leafnodes.store_dir`, else
/// `leaf_spool` next to the JetStream store directory) and starts capturing: the link is
/// not up yet.
fn open_spool(
    server: &Server,
    o: &canopy_conf::Options,
    lo: &canopy_conf::LeafNodeOpts,
    r: &RemoteLeafOpts,
    account: &str,
    size: u64,
) -> Arc<crate::server::spool::Spool> {
    let base = lo.store_dir.clone().unwrap_or_else(|| {
        let js = crate::services::jetstream::store_dir(o);
        js.parent().unwrap_or(&js).join("leaf_spool")
    });
    let dir = crate::server::spool::spool_dir(&base, account, &r.urls);
    let label = format!("Leafnode remote {:?} (account {account})", r.urls);
    let mut deny = r.deny_exports.clone();
    deny.extend(js_denies(server, account, false, "").both);
    let sp = crate::server::spool::Spool::open(label, dir, size, deny);
    tokio::spawn(sp.clone().maintain(server.shutdown.clone()));
    if let Some(acc) = server.account(account) {
        attach_spool(&acc, &sp);
    }
    tracing::info!(
        "{}: spooling messages for the hub in {} until the link is up (up to {size} bytes)",
        sp.label,
        sp.dir.display()
    );
    sp
}

/// Binds a spool to its account (once): the account's deliveries are offered to it.
fn attach_spool(acc: &Account, sp: &Arc<crate::server::spool::Spool>) {
    {
        let mut spools = acc.spools.write();
        if !spools.iter().any(|s| Arc::ptr_eq(s, sp)) {
            spools.push(sp.clone());
        }
    }
    sp.link_down(acc);
}

/// What ended a link session.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed,
    LoopDetected,
}

struct Session {
    server: Arc<Server>,
    conn: Arc<ConnShared>,
    link: Option<Arc<Link>>,
    account: Option<Arc<Account>>,
    nonce: String,
    flush: FlushList,
    scratch: Scratch,
    batch: BatchCounters,
    ended: Ended,
    /// A spool replay this hub is counting off (`$LSPOOL.B`, server/spool.rs).
    replay: Option<ReplayCount>,
}

/// The batch list of a leaf's spool replay, counted off as its messages arrive; from the
/// batch's `$LSPOOL.B` to its `$LSPOOL.M`.
struct ReplayCount {
    epoch: String,
    /// (spool sequence, fingerprint) of the messages still to come, in order.
    pending: std::collections::VecDeque<(u64, u32)>,
    /// The last sequence counted (0: none yet).
    last: u64,
}

/// An accepted leaf connection's record, nonce and INFO.
fn accepted_conn(
    server: &Server,
    addr: SocketAddr,
    listen: SocketAddr,
) -> (Arc<ConnShared>, String, ServerInfo) {
    let cid = server.next_cid();
    let conn = Arc::new(ConnShared::new(
        cid,
        ConnKind::Leaf,
        addr,
        server.link_max_pending(),
    ));
    let nonce = crate::auth::users::new_nonce();
    let info = leaf_info(server, cid, &nonce, listen);
    (conn, nonce, info)
}

async fn serve_accepted(
    server: Arc<Server>,
    stream: TcpStream,
    addr: SocketAddr,
    listen: SocketAddr,
) {
    let (conn, nonce, info) = accepted_conn(&server, addr, listen);
    // INFO goes out here (plaintext before a TLS handshake, or queued).
    let tls = server.tls().leaf.clone();
    let listener = format!("leafnode listener {listen}");
    let Some(stream) = crate::auth::tls::accept_conn(
        &server.stats,
        tls.as_deref(),
        stream,
        &conn,
        &info,
        false,
        &listener,
    )
    .await
    else {
        return;
    };
    let started = tokio::time::Instant::now();
    let co = server
        .opts()
        .leafnodes
        .as_ref()
        .and_then(|l| wants_compression(l.compression.as_ref()).cloned());
    serve_session(
        server,
        conn,
        nonce,
        stream,
        co.map(|c| (c, listen, started)),
    )
    .await;
}

/// A leaf that dialled the websocket port (`/leafnode`): the leafnode protocol in its
/// frames, authorized by the `leafnodes {}` block. TLS, if any, was the websocket
/// listener's, so INFO asks for none; the websocket's own compression applies, not S2
/// (as in nats-server).
pub async fn serve_websocket<S>(server: Arc<Server>, stream: S, addr: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let listen = (*server.leaf_addr.lock()).unwrap_or(addr);
    let (conn, nonce, mut info) = accepted_conn(&server, addr, listen);
    info.tls_required = false;
    info.tls_verify = false;
    info.compression = String::new();
    conn.enqueue(|b| canopy_proto::encode_info(b, &info));
    conn.flush_signal();
    serve_session(server, conn, nonce, stream, None).await;
}

/// Serves an accepted leaf connection whose INFO is out or queued; `compress`: the
/// listener's compression, its address and when the connection started, to negotiate S2.
async fn serve_session<S>(
    server: Arc<Server>,
    conn: Arc<ConnShared>,
    nonce: String,
    stream: S,
    compress: Option<(Compression, SocketAddr, tokio::time::Instant)>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let rd = CountRead::new(rd, conn.clone());
    server.register_conn(&conn);
    let wr = S2Write::new(wr, conn.clone());
    let writer = tokio::spawn(writer_loop(conn.clone(), wr, server.liveness()));
    tracing::debug!("{} - Leafnode connection accepted", conn_label(&conn));
    let mut s = Session {
        server: server.clone(),
        conn: conn.clone(),
        link: None,
        account: None,
        nonce,
        flush: FlushList::default(),
        scratch: Scratch::default(),
        batch: BatchCounters::default(),
        ended: Ended::Closed,
        replay: None,
    };
    let timeout = server
        .opts()
        .leafnodes
        .as_ref()
        .and_then(|l| l.authorization.as_ref())
        .and_then(|a| a.timeout)
        .unwrap_or(Duration::from_secs(2));
    match compress {
        None => s.read_loop(rd, timeout).await,
        Some((co, listen, started)) => {
            let second = leaf_info(&server, conn.cid, &s.nonce, listen);
            s.read_negotiating(rd, timeout, &co, second, started).await
        }
    }
    conn.close(CloseReason::ClientClosed);
    let _ = writer.await;
    s.teardown();
}

impl OpHandler for Session {
    fn on_op(&mut self, op: Op) -> bool {
        self.handle(op)
    }
    fn handshake_done(&self) -> bool {
        self.link.is_some()
    }
    fn end_batch(&mut self) {
        // Counters first: a receiver woken by the flush sees them already counted.
        self.batch.publish(&self.conn, &self.server.stats);
        self.flush.flush();
    }
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, rd: R, auth_timeout: Duration) {
        let max_payload = self.server.opts().max_payload as usize;
        let parser = Parser::new(Role::Leaf, ParserLimits::link(max_payload));
        let conn = self.conn.clone();
        read_ops(&conn, rd, parser, auth_timeout, "Leafnode", self).await;
    }

    /// The accepting side with compression configured: a solicitor that wants it sends an
    /// INFO before its CONNECT (nats-server 2.10); when both agree, our answer (a second
    /// INFO, with the nonce) and everything after it is compressed both ways. A solicitor
    /// that sends CONNECT first (2.9, or compression off) gets an uncompressed link.
    async fn read_negotiating<R: AsyncRead + Unpin>(
        &mut self,
        mut rd: R,
        timeout: Duration,
        co: &Compression,
        mut info: ServerInfo,
        started: tokio::time::Instant,
    ) {
        let max_payload = self.server.opts().max_payload as usize;
        let mut parser = Parser::new(Role::Leaf, ParserLimits::link(max_payload));
        let mut buf = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout(timeout, async {
            loop {
                match parser.next(&mut buf) {
                    Ok(Some(op)) => return Ok(op),
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => return Err("connection closed".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        let op = match first {
            Ok(Ok(op)) => op,
            Ok(Err(e)) => {
                self.conn.close(CloseReason::ProtocolViolation(e));
                return;
            }
            Err(_) => {
                tracing::error!(
                    "{} - Leafnode handshake timed out (Authentication Timeout)",
                    conn_label(&self.conn)
                );
                self.conn
                    .error_and_close(errors::AUTH_TIMEOUT, CloseReason::AuthTimeout);
                return;
            }
        };
        if let Op::Info(json) = &op {
            let theirs: ServerInfo = serde_json::from_slice(json).unwrap_or_default();
            if let Some(level) = select_compression(co, &theirs.compression, started.elapsed()) {
                self.conn.compression.store(level.code(), Ordering::Relaxed);
                follow_rtt(&self.conn, co);
                info.compression = announced(co, Some(level));
                self.conn.enqueue(|b| canopy_proto::encode_info(b, &info));
                self.conn.flush_signal();
                tracing::debug!(
                    "{} - Leafnode compression: {}",
                    conn_label(&self.conn),
                    level.as_str()
                );
                let raw = buf.split();
                let rd = S2Read::new(rd, raw, S2Decoder::default());
                return self.read_loop(rd, timeout).await;
            }
        } else if !self.handle(op) {
            return;
        }
        loop {
            match parser.next(&mut buf) {
                Ok(Some(op)) => {
                    if !self.handle(op) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.conn
                        .close(CloseReason::ProtocolViolation(e.to_string()));
                    return;
                }
            }
        }
        self.end_batch();
        let rest = buf.split().freeze();
        let chained = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(rest), rd);
        self.read_loop(chained, timeout).await
    }

    /// Handles one op; false ends the session.
    fn handle(&mut self, op: Op) -> bool {
        if crate::server::logging::trace_enabled() {
            crate::server::logging::trace_in(&conn_label(&self.conn), &op);
        }
        match op {
            Op::Ping => self.conn.pong(),
            Op::Pong => self.conn.pong_received(),
            Op::Connect(json) if self.link.is_none() => return self.on_connect(&json),
            Op::Connect(_) => {}
            Op::Info(_) => {}
            Op::Err(text) => {
                let t = String::from_utf8_lossy(&text);
                tracing::error!("{} - Leafnode Error '{t}'", conn_label(&self.conn));
                if t.contains("Loop detected") {
                    self.ended = Ended::LoopDetected;
                }
                if t.eq_ignore_ascii_case(errors::MAX_SUBSCRIPTIONS) {
                    // The peer ignores our interest beyond its limit but keeps the link
                    // (nats-server does not close here either): reconnecting would only
                    // hit the same limit again.
                    return true;
                }
                self.conn
                    .close(CloseReason::Other(format!("peer error: {t}")));
                return false;
            }
            _ if self.link.is_none() => {
                tracing::error!(
                    "{} - Leafnode sent an operation before CONNECT",
                    conn_label(&self.conn)
                );
                self.conn
                    .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
                return false;
            }
            Op::LSub {
                subject,
                queue,
                weight,
            } => return self.on_lsub(subject, queue, weight.unwrap_or(1).max(1)),
            Op::LUnsub { subject, queue } => return self.on_lsub(subject, queue, 0),
            Op::LMsg {
                subject,
                reply,
                queues,
                header_len,
                payload,
            } => self.on_lmsg(subject, reply, queues, header_len, payload),
            other => {
                self.conn.unexpected_op("leafnode", other.verb());
                return false;
            }
        }
        !self.conn.is_closed()
    }

    /// The accepting side: authenticate the solicitor and bind its account.
    fn on_connect(&mut self, json: &[u8]) -> bool {
        let c: LeafConnect = match serde_json::from_slice(json) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{} - Invalid leafnode CONNECT: {e}", conn_label(&self.conn));
                self.conn.error_and_close(
                    errors::UNKNOWN_OP,
                    CloseReason::ProtocolViolation(format!("invalid CONNECT: {e}")),
                );
                return false;
            }
        };
        if !c.lang.is_empty() {
            tracing::error!(
                "{} - a client ({} {}) connected to the leafnode port",
                conn_label(&self.conn),
                c.lang,
                c.version
            );
            self.conn.error_and_close(
                errors::LEAF_PORT_CLIENT,
                CloseReason::ProtocolViolation("client on leaf port".into()),
            );
            return false;
        }
        // bcrypt and signature checks: an unauthenticated peer must not stall the worker.
        let server = &self.server;
        let nonce = &self.nonce;
        let authenticated =
            crate::auth::users::off_runtime(|| authenticate_leaf(server, &c, nonce));
        let (account, perms) = match authenticated {
            Ok(a) => a,
            Err(who) => {
                tracing::error!(
                    "{} - leafnode {:?} rejected: authorization violation for user {:?}",
                    conn_label(&self.conn),
                    c.name,
                    who
                );
                self.server
                    .stats
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.conn
                    .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
                return false;
            }
        };
        let Some(acc) = self.server.account(&account) else {
            tracing::error!(
                "{} - leafnode bound to unknown account {account:?}",
                conn_label(&self.conn)
            );
            self.conn
                .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
            return false;
        };
        let class = if self.server.is_regional() && c.canopy_regional {
            LinkClass::Mesh
        } else if c.hub {
            LinkClass::Uplink
        } else {
            LinkClass::Downlink
        };
        let js = js_denies(&self.server, &acc.name, c.jetstream, &c.domain);
        let mut deny_send = c.deny_pub.clone();
        deny_send.extend(js.both.iter().chain(&js.outgoing).cloned());
        let _ = self.conn.deny_send.set(deny_send);
        let _ = self.conn.peer_id.set(Arc::from(c.server_id.as_str()));
        self.conn
            .peer_imports
            .store(c.canopy_imports, Ordering::Relaxed);
        // A fast reconnect from the same server replaces the old connection.
        for old in acc.links() {
            if !old.solicited && !c.server_id.is_empty() && old.peer_id == c.server_id {
                tracing::warn!(
                    "{} - replacing leafnode connection from the same server {:?}",
                    conn_label(&old.conn),
                    c.name
                );
                old.conn
                    .close(CloseReason::Other("replaced by a new connection".into()));
            }
        }
        let peer_name = if c.name.is_empty() {
            c.server_id.clone()
        } else {
            c.name.clone()
        };
        js.log(&self.conn);
        let mut link = Link::new(
            self.conn.clone(),
            c.server_id.clone(),
            peer_name,
            false,
            self.conn.addr.to_string(),
            js.both.clone(),
            js.both,
        );
        link.perms = perms;
        link.max_subs = self.server.link_max_subs();
        self.establish(Arc::new(link), acc, class);
        true
    }

    fn establish(&mut self, link: Arc<Link>, acc: Arc<Account>, class: LinkClass) {
        self.conn.link_class.store(class as u8, Ordering::Relaxed);
        {
            let mut m = self.conn.meta.lock();
            m.account = acc.name.clone();
            m.name = link.peer_name.clone();
        }
        // Tell the solicitor which account it is bound to, then our interest, then PING.
        if !link.solicited {
            self.conn.async_info.store(true, Ordering::Relaxed);
            let info = ServerInfo {
                server_id: self.server.id.clone(),
                server_name: self.server.name.clone(),
                version: version::NATS_COMPAT_VERSION.to_string(),
                proto: version::CLIENT_PROTO,
                headers: true,
                max_payload: self.server.opts().max_payload as i64,
                connect_info: true,
                remote_account: acc.name.clone(),
                is_system_account: acc.name == self.server.system_account,
                canopy_version: version::CANOPY_VERSION.to_string(),
                ..Default::default()
            };
            self.conn.enqueue(|b| canopy_proto::encode_info(b, &info));
        }
        acc.num_leafs.fetch_add(1, Ordering::Relaxed);
        acc.add_link(link.clone());
        self.conn.registered.store(true, Ordering::Relaxed);
        self.conn.send_ping();
        tracing::info!(
            "{} - Leafnode connection created for account: {} (peer {:?}, {})",
            conn_label(&self.conn),
            acc.name,
            link.peer_name,
            class.as_str()
        );
        self.server.refresh_pair(&acc, &link.peer_id);
        self.link = Some(link);
        self.account = Some(acc);
    }

    fn on_lsub(&mut self, subject: Bytes, queue: Option<Bytes>, weight: u32) -> bool {
        let (Some(link), Some(acc)) = (self.link.clone(), self.account.clone()) else {
            return false;
        };
        let Ok(subj) = std::str::from_utf8(&subject) else {
            return true;
        };
        if weight > 0 && subj == acc.lds && self.has_twin(&acc, &link) {
            // Our loop-detection subject came back from a server we have two links with
            // (both sides solicit): that is the pair, not a loop through other servers.
            // Only one of the two carries our interest, and messages are never sent back
            // to the server they came from.
            tracing::debug!(
                "{} - loop-detection subject echoed by {:?} over a second link; not a loop",
                conn_label(&self.conn),
                link.peer_name
            );
            return true;
        }
        if weight > 0 && subj == acc.lds {
            tracing::error!(
                "{} - Loop detected for leafnode account=\"{}\" between this server {:?} and {:?}: our loop-detection subject came back; closing (retry in {}s)",
                conn_label(&self.conn),
                acc.name,
                self.server.name,
                link.peer_name,
                LOOP_RECONNECT_DELAY.as_secs()
            );
            self.server
                .stats
                .loops_detected
                .fetch_add(1, Ordering::Relaxed);
            let text = format!(
                "Loop detected for leafnode account=\"{}\". Delaying attempt to reconnect for {}s",
                acc.name,
                LOOP_RECONNECT_DELAY.as_secs()
            );
            self.ended = Ended::LoopDetected;
            self.conn
                .error_and_close(&text, CloseReason::Other("loop detected".into()));
            return false;
        }
        // Interest the peer gives us is a request for messages we send: only what we
        // never send over this link (our `deny_exports`, or the peer's `deny_pub`) may
        // be ignored. Our `deny_imports` (`deny_receive`) is about what we receive.
        if !canopy_subject::is_well_formed(subj)
            || self.conn.deny_send.get().is_some_and(|deny| {
                deny.iter()
                    .any(|d| canopy_subject::subject_is_subset_of(subj, d))
            })
        {
            return true;
        }
        if let Some(p) = &link.perms {
            if weight > 0 && !p.subscribe.permits_subscribe(subj) {
                tracing::debug!(
                    "{} - leafnode interest in {subj:?} ignored: not permitted to subscribe",
                    conn_label(&self.conn)
                );
                return true;
            }
        }
        let q = match &queue {
            Some(q) => match std::str::from_utf8(q) {
                Ok(q) => Some(Arc::from(q)),
                Err(_) => return true,
            },
            None => None,
        };
        let weight = if q.is_none() { weight.min(1) } else { weight };
        let exceeded = match self.conn.remap.get() {
            None => !acc.link_interest(&link, (Arc::from(subj), q), weight),
            Some(r) => {
                let ours = remap_interest(&link, r, (Arc::from(subj), q), weight);
                ours.into_iter()
                    .fold(false, |ex, (k, w)| !acc.link_interest(&link, k, w) || ex)
            }
        };
        if exceeded && !link.subs_exceeded.swap(true, Ordering::Relaxed) {
            // As nats-server: the interest is ignored and the peer told; the link stays.
            tracing::error!(
                "{} - leafnode {:?} (account {}): Maximum Subscriptions Exceeded (max {}); further interest from it is ignored",
                conn_label(&self.conn),
                link.peer_name,
                acc.name,
                link.max_subs
            );
            self.conn.send_err(errors::MAX_SUBSCRIPTIONS);
        }
        true
    }

    /// True when another live leaf link of this account goes to the same server.
    fn has_twin(&self, acc: &Account, link: &Arc<Link>) -> bool {
        !link.peer_id.is_empty()
            && acc.links().iter().any(|l| {
                !Arc::ptr_eq(l, link) && l.peer_id == link.peer_id && l.conn.kind == ConnKind::Leaf
            })
    }

    /// Store-and-forward control between Canopy servers (server/spool.rs): a hub records
    /// how far a leaf's replay got and answers its question; a leaf takes the answer.
    /// Never delivered.
    fn on_spool_control(&mut self, ctl: &str, payload: &[u8]) {
        use crate::server::spool;
        let mut it = ctl.split('.');
        let (kind, epoch, seq) = (it.next(), it.next().unwrap_or(""), it.next());
        let seq = seq.and_then(|s| s.parse::<u64>().ok());
        if !spool::valid_epoch(epoch) || it.next().is_some() {
            return;
        }
        match (kind, seq) {
            (Some("B"), None) => {
                // A malformed list counts nothing: the batch is then covered by its `M`.
                self.replay = spool::parse_batch_list(payload).map(|pending| ReplayCount {
                    epoch: epoch.to_string(),
                    pending,
                    last: 0,
                });
            }
            (Some("M"), Some(seq))
                if self.server.spool_marks.advance(epoch, self.conn.cid, seq) =>
            {
                // The batch is complete and its end shared: nothing left to count.
                crate::services::system::share_spool_mark(&self.server, epoch, seq);
                self.replay = None;
            }
            (Some("Q"), None) => {
                let seq = self.server.spool_marks.take_over(epoch, self.conn.cid);
                let a = format!("{}A.{epoch}.{seq}", spool::CONTROL_PREFIX);
                spool::send_control(&self.conn, &a);
            }
            (Some("A"), Some(seq)) => {
                let Some(acc) = self.account.as_ref() else {
                    return;
                };
                for sp in acc.spools.read().iter() {
                    sp.hub_answered(self.conn.cid, epoch, seq);
                }
            }
            _ => {}
        }
    }

    /// Counts a message off the replay's batch list when it is the next one there; false
    /// when it must be dropped (a newer link of the same spool took the replay over).
    fn count_replayed(&mut self, subject: &[u8], payload: &[u8]) -> bool {
        let Some(r) = self.replay.as_mut() else {
            return true;
        };
        let Some(&(seq, fp)) = r.pending.front() else {
            return true;
        };
        if crate::server::spool::fingerprint(subject, payload) != fp {
            // Not part of the replay.
            return true;
        }
        r.pending.pop_front();
        if self
            .server
            .spool_marks
            .advance(&r.epoch, self.conn.cid, seq)
        {
            r.last = r.last.max(seq);
            true
        } else {
            self.server
                .spool_marks
                .stale_dropped
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    fn on_lmsg(
        &mut self,
        subject: Bytes,
        reply: Option<Bytes>,
        queues: Vec<Bytes>,
        header_len: Option<usize>,
        payload: Bytes,
    ) {
        if self.link.is_none() {
            return;
        }
        self.batch.received(payload.len());
        let Ok(subj) = std::str::from_utf8(&subject) else {
            return;
        };
        if let Some(ctl) = subj.strip_prefix(crate::server::spool::CONTROL_PREFIX) {
            self.on_spool_control(ctl, &payload);
            return;
        }
        if self.replay.is_some() && !self.count_replayed(&subject, &payload) {
            return;
        }
        let (Some(link), Some(acc)) = (self.link.as_ref(), self.account.as_ref()) else {
            return;
        };
        // A remapped link: deny rules in the hub's names, then the local names.
        let (subject, reply) = match self.conn.remap.get() {
            None => (subject, reply),
            Some(r) => {
                if link
                    .deny_receive
                    .iter()
                    .any(|d| canopy_subject::subject_matches(d, subj))
                {
                    self.server
                        .stats
                        .permission_denials
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let Some((s, rep)) = remap_lmsg(r, subj, reply.as_deref()) else {
                    return;
                };
                (s, rep)
            }
        };
        let subj = std::str::from_utf8(&subject).unwrap_or_default();
        // Account mappings apply to leaf arrivals too (nats-server maps LEAF like CLIENT),
        // before permissions and interest. A mapped message is a new publish here: every
        // local queue group may take it, not only those the peer named.
        let mapped = match acc.mappings.get().map(|m| m.map(subj)) {
            Some(Mapped::Drop) => return,
            Some(Mapped::To(s)) => Some(Bytes::from(s)),
            _ => None,
        };
        let (subject, queues) = match mapped {
            Some(m) => (m, None),
            None => (subject, Some(queues)),
        };
        let subj = std::str::from_utf8(&subject).unwrap_or_default();
        let not_permitted = link
            .perms
            .as_ref()
            .is_some_and(|p| !p.publish.permits_publish(subj));
        if not_permitted
            || (self.conn.remap.get().is_none()
                && link
                    .deny_receive
                    .iter()
                    .any(|d| canopy_subject::subject_matches(d, subj)))
        {
            self.server
                .stats
                .permission_denials
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let result = acc.sublist.matches(subj);
        let msg = Msg::from_link(&subject, reply.as_deref(), header_len, &payload);
        let origin = Origin {
            cid: self.conn.cid,
            echo: true,
            class: link.class(),
            queues: queues.as_deref(),
            peer: Some(link.peer_id.as_str()),
            conn: Some(&self.conn),
            imported: false,
        };
        let d = deliver(
            acc,
            &result,
            &msg,
            &origin,
            &mut self.scratch,
            &mut self.flush,
        );
        self.batch.out_msgs += d.msgs;
        self.batch.out_bytes += d.bytes;
    }

    fn teardown(&mut self) {
        // How far a cut replay got here, for the members of the cluster the leaf may come
        // back to.
        if let Some(r) = self.replay.take().filter(|r| r.last > 0) {
            crate::services::system::share_spool_mark(&self.server, &r.epoch, r.last);
        }
        let reason = self
            .conn
            .close_reason()
            .map(|r| r.to_string())
            .unwrap_or_default();
        if let (Some(link), Some(acc)) = (self.link.take(), self.account.take()) {
            acc.remove_link(&link);
            acc.num_leafs.fetch_sub(1, Ordering::Relaxed);
            self.server.refresh_pair(&acc, &link.peer_id);
            tracing::info!(
                "{} - Leafnode connection closed: {reason} (account {}, peer {:?})",
                conn_label(&self.conn),
                acc.name,
                link.peer_name
            );
        }
        self.server.remove_conn(&self.conn);
    }
}

/// A message from the hub over a remapped link, in local names (`None`: not carried).
fn remap_lmsg(
    r: &crate::core::remap::Remap,
    subject: &str,
    reply: Option<&[u8]>,
) -> Option<(Bytes, Option<Bytes>)> {
    use crate::core::remap::Dir;
    let s = Bytes::from(r.subject(subject, Dir::ToLocal)?.into_owned());
    let rep = match reply {
        None => None,
        Some(rep) => {
            let rep = std::str::from_utf8(rep).ok()?;
            Some(Bytes::from(r.subject(rep, Dir::ToLocal)?.into_owned()))
        }
    };
    Some((s, rep))
}

/// Interest from the hub over a remapped link: records the weight of its key (the hub's
/// names) and returns the local keys it stands for with their new totals.
fn remap_interest(
    link: &Link,
    r: &crate::core::remap::Remap,
    key: crate::core::interest::Key,
    weight: u32,
) -> Vec<(crate::core::interest::Key, u32)> {
    let mut m = link.remap_in.lock();
    let old = if weight == 0 {
        m.theirs.remove(&key).unwrap_or(0)
    } else {
        m.theirs.insert(key.clone(), weight).unwrap_or(0)
    };
    let mut out = Vec::new();
    for l in r.interest(&key.0, crate::core::remap::Dir::ToLocal) {
        let lk = (Arc::from(l), key.1.clone());
        let total = m.ours.get(&lk).copied().unwrap_or(0);
        let total = (total + weight).saturating_sub(old);
        if total == 0 {
            m.ours.remove(&lk);
        } else {
            m.ours.insert(lk.clone(), total);
        }
        out.push((lk, total));
    }
    out
}

/// The accepting side's authentication: `leafnodes.authorization` users (bound to their
/// accounts), its single user, or else the client users. Returns the account name, or
/// the rejected user for the log. In operator mode a leaf presenting a user JWT (from its
/// `.creds`) is bound to the JWT's account, within the account's leaf limit.
/// The account a leaf binds to, and the permissions of the client user it authenticated
/// as (leafnode-specific users have none).
type LeafBinding = (String, Option<Arc<crate::auth::users::Perms>>);

fn authenticate_leaf(server: &Server, c: &LeafConnect, nonce: &str) -> Result<LeafBinding, String> {
    if let Some(trust) = server.trust().filter(|_| !c.jwt.is_empty()) {
        return server
            .authenticate_leaf_jwt(&trust, &c.jwt, &c.sig, nonce)
            .map(|a| (a, None));
    }
    leaf_user_account(server, c, nonce)
}

fn leaf_user_account(server: &Server, c: &LeafConnect, nonce: &str) -> Result<LeafBinding, String> {
    let plain = |a: String| (a, None);
    let o = server.opts();
    let auth = o.leafnodes.as_ref().and_then(|l| l.authorization.clone());
    if let Some(a) = auth.filter(|a| a.user.is_some() || !a.users.is_empty() || a.nkey.is_some()) {
        if let Some(nk) = &a.nkey {
            if &c.nkey == nk && crate::auth::users::verify_nonce_signature(nk, nonce, &c.sig) {
                return Ok(plain(
                    a.account.clone().unwrap_or_else(|| GLOBAL_ACCOUNT.into()),
                ));
            }
        }
        if let Some(u) = &a.user {
            if &c.user == u
                && crate::auth::users::check_password(a.password.as_deref().unwrap_or(""), &c.pass)
            {
                return Ok(plain(
                    a.account.clone().unwrap_or_else(|| GLOBAL_ACCOUNT.into()),
                ));
            }
        }
        for u in &a.users {
            if u.user == c.user
                && crate::auth::users::check_password(u.password.as_deref().unwrap_or(""), &c.pass)
            {
                return Ok(plain(
                    u.account.clone().unwrap_or_else(|| GLOBAL_ACCOUNT.into()),
                ));
            }
        }
        return Err(c.user.clone());
    }
    // No leaf-specific users: the client users apply, as in nats-server.
    let client_auth = server.client_auth();
    let cc = canopy_proto::ClientConnect {
        user: c.user.clone(),
        pass: c.pass.clone(),
        auth_token: c.auth_token.clone(),
        nkey: c.nkey.clone(),
        sig: c.sig.clone(),
        jwt: c.jwt.clone(),
        ..Default::default()
    };
    // A client user's permissions shape what crosses the link: what the leaf may publish
    // into the hub, and what it may subscribe to (receive).
    client_auth
        .authenticate(&cc, nonce)
        .map(|a| (a.account, a.perms))
}

/// Runs one configured remote forever: connect, serve, reconnect.
pub async fn run_remote(server: Arc<Server>, remote: RemoteLeafOpts, state: Arc<RemoteState>) {
    let o = server.opts();
    let lo = o.leafnodes.clone();
    let interval = remote
        .reconnect_interval
        .or(lo.as_ref().map(|l| l.reconnect_interval))
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(50));
    let dial_timeout = remote
        .connect_timeout
        .or(remote.dial_timeout)
        .or(lo.as_ref().and_then(|l| l.dial_timeout))
        .unwrap_or(Duration::from_secs(2));
    let account_name = remote
        .account
        .clone()
        .unwrap_or_else(|| GLOBAL_ACCOUNT.into());
    let mut urls = Vec::new();
    for u in &remote.urls {
        match LeafUrl::parse(u) {
            Ok(p) => urls.push(p),
            Err(e) => tracing::error!("leafnode remote: {e}"),
        }
    }
    drop(o);
    if urls.is_empty() {
        tracing::error!("leafnode remote has no usable URL; not connecting");
        return;
    }
    let mut attempt: u64 = 0;
    let mut connected_before = false;
    loop {
        let mut order = urls.clone();
        if !remote.no_randomize {
            order.shuffle(&mut rand::thread_rng());
        }
        let mut delay = interval;
        for url in &order {
            if server.shutdown.is_cancelled() {
                return;
            }
            attempt += 1;
            state.attempts.fetch_add(1, Ordering::Relaxed);
            let target = url.hostport();
            let stream = match tokio::time::timeout(dial_timeout, TcpStream::connect(&target)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    note_failure(&server, &state, &target, attempt, &e.to_string());
                    continue;
                }
                Err(_) => {
                    note_failure(&server, &state, &target, attempt, "connect timed out");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if connected_before {
                state.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            match solicit(&server, &remote, &account_name, url, stream, &state).await {
                Ok(Ended::LoopDetected) => {
                    delay = LOOP_RECONNECT_DELAY;
                    connected_before = true;
                    break;
                }
                Ok(Ended::Closed) => {
                    connected_before = true;
                    attempt = 0;
                    break;
                }
                Err(e) => {
                    note_failure(&server, &state, &target, attempt, &e);
                }
            }
        }
        if remote.reconnect == Some(false) && connected_before {
            tracing::warn!(
                "leafnode remote {:?}: reconnect disabled; not reconnecting",
                remote.urls
            );
            return;
        }
        // Jitter spreads the reconnects of many leaves after a hub restart.
        let jitter = rand::thread_rng().gen_range(0..=delay.as_millis() as u64 / 5 + 1);
        let wait = delay + Duration::from_millis(jitter);
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Logs a failed attempt as nats-server does (`shouldReportConnectErr`): as an error on the
/// first attempt and every `connect_error_reports`th (before the remote ever connected)
/// or `reconnect_error_reports`th (after), otherwise at debug level. A leaf with many
/// remotes started before its hub would otherwise log one error per remote per second.
fn note_failure(server: &Server, state: &RemoteState, target: &str, attempt: u64, err: &str) {
    let o = server.opts();
    let every = if state.ever_connected.load(Ordering::Relaxed) {
        o.reconnect_error_reports
    } else {
        o.connect_error_reports
    };
    if attempt == 1 || (every > 0 && attempt.is_multiple_of(every)) {
        tracing::error!(
            "Error trying to connect as leafnode to remote server \"{target}\" (attempt {attempt}): {err}"
        );
    } else {
        tracing::debug!(
            "Error trying to connect as leafnode to remote server \"{target}\" (attempt {attempt}): {err}"
        );
    }
    *state.last_error.lock() = Some(format!("{target}: {err}"));
}

/// The TLS client handshake of a remote (SNI and verification against the URL's host).
/// With `probe` (CONNECT and PING to send, the hub's INFO, the read buffer), the first
/// answer is read into the buffer so that a rejection of our certificate (a TLS 1.3 alert
/// after the handshake) is reported as a handshake failure. Failures are counted and
/// explained; the caller logs them with the URL.
async fn remote_tls_upgrade(
    server: &Server,
    remote: &RemoteLeafOpts,
    url: &LeafUrl,
    stream: TcpStream,
    probe: Option<(&[u8], &ServerInfo, &mut BytesMut)>,
) -> Result<crate::auth::tls::MaybeTls<TcpStream>, String> {
    use tokio::io::AsyncWriteExt;
    let hint = |info: Option<&ServerInfo>| {
        let mut h = String::new();
        let o = server.opts();
        let misplaced = o
            .leafnodes
            .as_ref()
            .is_some_and(|l| l.tls.is_some() && l.port == 0);
        if remote.tls.is_none() {
            h.push_str(" (this remote has no tls block: system CAs, no client certificate");
            if misplaced {
                h.push_str(
                    "; the tls block under leafnodes configures the leafnode listener, not the \
                     remotes: move it into this remote",
                );
            }
            h.push(')');
        } else if info.is_some_and(|i| i.tls_verify)
            && !remote
                .tls
                .as_ref()
                .is_some_and(|t| t.cert_file.is_some() && t.key_file.is_some())
        {
            h.push_str(" (the hub verifies client certificates: set cert_file and key_file in this remote's tls block)");
        }
        h
    };
    let fail = |e: String| {
        crate::auth::tls::count_failure(&server.stats);
        format!("TLS handshake error: {e}")
    };
    let tls = crate::auth::tls::ClientTls::new(remote.tls.as_ref(), "leafnode remote TLS")
        .map_err(|e| fail(e.to_string()))?;
    let info = probe.as_ref().map(|p| p.1);
    let mut s = crate::auth::tls::connect(&tls, stream, &url.host)
        .await
        .map_err(|e| fail(format!("{e}{}", hint(info))))?;
    if let Some((first, info, buf)) = probe {
        let wait = tls.timeout.max(Duration::from_secs(2));
        let res: std::io::Result<Option<usize>> = async {
            s.write_all(first).await?;
            s.flush().await?;
            match tokio::time::timeout(wait, s.read_buf(buf)).await {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            }
        }
        .await;
        match res {
            Ok(Some(0)) => {
                return Err(fail(format!(
                    "the hub closed the connection right after the handshake{}",
                    hint(Some(info))
                )))
            }
            Ok(Some(_)) => {}
            Err(e) => {
                let why = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .map(crate::auth::tls::explain)
                    .unwrap_or_else(|| e.to_string());
                return Err(fail(format!("{why}{}", hint(Some(info)))));
            }
            // A silent hub is not a TLS problem; the session's own timers deal with it.
            Ok(None) => {}
        }
    }
    Ok(s)
}

/// A solicited connection: TCP (maybe TLS), or a websocket over either.
type LeafIo = Either<
    crate::auth::tls::MaybeTls<TcpStream>,
    crate::auth::websocket::WsStream<crate::auth::tls::MaybeTls<TcpStream>>,
>;

fn leaf_io_is_tls(io: &LeafIo) -> bool {
    match io {
        Either::Left(s) => s.is_tls(),
        Either::Right(ws) => ws.get_ref().is_tls(),
    }
}

/// One solicited session: read INFO, send CONNECT, serve until it ends.
async fn solicit(
    server: &Arc<Server>,
    remote: &RemoteLeafOpts,
    account_name: &str,
    url: &LeafUrl,
    stream: TcpStream,
    state: &Arc<RemoteState>,
) -> Result<Ended, String> {
    let addr = stream.peer_addr().map_err(|e| e.to_string())?;
    let started = tokio::time::Instant::now();
    let first_info = remote.first_info_timeout.unwrap_or(Duration::from_secs(2));
    let max_payload = server.opts().max_payload as usize;
    // `handshake_first` on the remote: TLS before the hub's INFO. Through a websocket
    // port TLS (`wss://`, or a tls block) comes before the upgrade, and the leaf
    // protocol's own TLS upgrade is skipped.
    let tls_first = if url.ws {
        url.tls || remote.tls.is_some()
    } else {
        remote
            .tls
            .as_ref()
            .is_some_and(|t| t.handshake_first == Some(canopy_conf::HandshakeFirst::Always))
    };
    let base = if tls_first {
        remote_tls_upgrade(server, remote, url, stream, None).await?
    } else {
        crate::auth::tls::MaybeTls::plain(stream)
    };
    let mut rd: LeafIo = if url.ws {
        let up = crate::auth::websocket::ClientUpgrade {
            host: url.hostport(),
            url_path: url.path.clone(),
            compression: remote.ws_compression,
            no_masking: remote.ws_no_masking,
            max_message: max_payload.saturating_add(server.opts().max_control_line as usize * 4),
        };
        let ws = crate::auth::websocket::connect(base, &up, first_info)
            .await
            .map_err(|e| format!("Error soliciting websocket connection: {e}"))?;
        Either::Right(ws)
    } else {
        Either::Left(base)
    };
    // The first INFO tells us the peer is a leafnode listener and gives the nonce.
    let mut buf = BytesMut::with_capacity(32 * 1024);
    let mut parser = Parser::new(Role::Leaf, ParserLimits::link(max_payload));
    let mut info = tokio::time::timeout(
        first_info,
        read_hub_info(&mut rd, &mut buf, &mut parser, None),
    )
    .await
    .map_err(|_| "no INFO received in time (Stale Leaf Node Connection)".to_string())??;
    if !info.info_on_connect && info.leafnode_urls.is_empty() {
        return Err("attempted to connect to wrong port (not a leafnode port)".into());
    }
    let wants_tls = !url.ws && (info.tls_required || remote.tls.is_some() || url.tls);
    // Compression is negotiated before CONNECT (nats-server 2.10): our INFO goes out
    // plain, the hub's answer (a second INFO) and everything after it is compressed. Not
    // over a TLS upgrade still to come (left uncompressed), nor with a 2.9 hub, whose
    // INFO announces no compression.
    let mut s2: Option<(Level, BytesMut, S2Decoder)> = None;
    // Over a websocket the websocket's own compression applies (as in nats-server).
    let s2_wanted = if url.ws {
        None
    } else {
        wants_compression(remote.compression.as_ref())
    };
    if let Some(co) = s2_wanted {
        let tls_later = wants_tls && !leaf_io_is_tls(&rd);
        let level = select_compression(co, &info.compression, started.elapsed());
        if let Some(level) = level.filter(|_| !tls_later) {
            let ours = ServerInfo {
                server_id: server.id.clone(),
                server_name: server.name.clone(),
                version: version::NATS_COMPAT_VERSION.to_string(),
                proto: version::CLIENT_PROTO,
                headers: true,
                compression: announced(co, Some(level)),
                ..Default::default()
            };
            let mut out = BytesMut::new();
            canopy_proto::encode_info(&mut out, &ours);
            rd.write_all(&out).await.map_err(|e| e.to_string())?;
            rd.flush().await.map_err(|e| e.to_string())?;
            let mut raw = buf.split();
            let mut dec = S2Decoder::default();
            let s2_in = Some((&mut raw, &mut dec));
            info = tokio::time::timeout(
                first_info,
                read_hub_info(&mut rd, &mut buf, &mut parser, s2_in),
            )
            .await
            .map_err(|_| "no compressed INFO received in time".to_string())??;
            s2 = Some((level, raw, dec));
        }
    }
    if wants_tls && !buf.is_empty() && !leaf_io_is_tls(&rd) {
        return Err("unexpected data from the hub between INFO and the TLS handshake".into());
    }
    let mut c = LeafConnect {
        version: version::NATS_COMPAT_VERSION.to_string(),
        server_id: server.id.clone(),
        name: server.name.clone(),
        headers: true,
        deny_pub: remote.deny_imports.clone(),
        hub: remote.hub,
        canopy_version: version::CANOPY_VERSION.to_string(),
        canopy_regional: server.is_regional(),
        canopy_imports: server
            .opts()
            .account(account_name)
            .is_some_and(|a| !a.imports.is_empty()),
        jetstream: server.jetstream().is_some(),
        domain: server.js_domain().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(path) = &remote.credentials {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "LeafNode Remote Credentials file {:?} cannot be read: {e}",
                path.display()
            )
        })?;
        let (jwt, seed) = parse_creds(&text).map_err(|e| {
            format!(
                "LeafNode Remote Credentials file {:?} malformed: {e}",
                path.display()
            )
        })?;
        let (nkey, sig) = sign_nonce(&seed, &info.nonce)?;
        c.jwt = jwt;
        c.sig = sig;
        c.nkey = nkey;
    } else if let Some(seed) = &remote.nkey {
        let (nkey, sig) = sign_nonce(seed, &info.nonce)?;
        c.nkey = nkey;
        c.sig = sig;
    }
    match (&url.user, &url.pass) {
        (Some(u), Some(p)) => {
            c.user = u.clone();
            c.pass = p.clone();
        }
        (Some(u), None) => {
            c.user = u.clone();
            c.auth_token = u.clone();
        }
        _ => {}
    }
    let Some(acc) = server.account(account_name) else {
        return Err(format!(
            "cannot find local account {account_name:?} specified in leafnode remote"
        ));
    };
    c.tls_required = wants_tls || leaf_io_is_tls(&rd);
    let cid = server.next_cid();
    let conn = Arc::new(ConnShared::new(
        cid,
        ConnKind::Leaf,
        addr,
        server.link_max_pending(),
    ));
    if let Some((level, ..)) = &s2 {
        conn.compression.store(level.code(), Ordering::Relaxed);
        if let Some(co) = remote.compression.as_ref() {
            follow_rtt(&conn, co);
        }
    }
    match rd {
        Either::Left(tcp) if wants_tls && !tcp.is_tls() => {
            // Upgrade, send CONNECT and PING, and read the first answer: with TLS 1.3 a
            // hub that rejects our certificate says so only now, and that is a handshake
            // failure.
            let plain = tcp
                .into_plain()
                .ok_or("TLS upgrade of a non-plain stream")?;
            let mut first = BytesMut::new();
            canopy_proto::encode_connect(&mut first, &c);
            first.extend_from_slice(b"PING\r\n");
            conn.pings_sent.fetch_add(1, Ordering::Relaxed);
            let probe = Some((&first[..], &info, &mut buf));
            rd = Either::Left(remote_tls_upgrade(server, remote, url, plain, probe).await?);
        }
        _ => {
            conn.enqueue(|b| canopy_proto::encode_connect(b, &c));
        }
    }
    match &rd {
        Either::Left(s) => crate::auth::tls::note_established(&conn, s),
        Either::Right(ws) => crate::auth::tls::note_established(&conn, ws.get_ref()),
    }
    let (rd, wr) = tokio::io::split(rd);
    let rd = CountRead::new(rd, conn.clone());
    server.register_conn(&conn);
    let js = js_denies(server, &acc.name, info.jetstream, &info.domain);
    let mut deny_send = remote.deny_exports.clone();
    deny_send.extend(js.both.iter().chain(&js.outgoing).cloned());
    let _ = conn.deny_send.set(deny_send);
    let _ = conn.peer_id.set(Arc::from(info.server_id.as_str()));
    if let Some(r) = crate::core::remap::Remap::new(&remote.account_mappings) {
        let _ = conn.remap.set(Arc::new(r));
    }
    let wr = S2Write::new(wr, conn.clone());
    let writer = tokio::spawn(writer_loop(conn.clone(), wr, server.liveness()));
    let class = if server.is_regional() && info.canopy_regional {
        LinkClass::Mesh
    } else if remote.hub {
        LinkClass::Downlink
    } else {
        LinkClass::Uplink
    };
    let peer_name = if info.server_name.is_empty() {
        info.server_id.clone()
    } else {
        info.server_name.clone()
    };
    js.log(&conn);
    if let Some(sp) = &state.spool {
        attach_spool(&acc, sp);
        sp.link_up(&conn, class, !info.canopy_version.is_empty());
    }
    let mut deny_imports = remote.deny_imports.clone();
    deny_imports.extend(js.both);
    let mut link = Link::new(
        conn.clone(),
        info.server_id.clone(),
        peer_name.clone(),
        true,
        url.hostport(),
        deny_imports.clone(),
        deny_imports,
    );
    link.max_subs = server.link_max_subs();
    let link = Arc::new(link);
    let mut s = Session {
        server: server.clone(),
        conn: conn.clone(),
        link: None,
        account: None,
        nonce: String::new(),
        flush: FlushList::default(),
        scratch: Scratch::default(),
        batch: BatchCounters::default(),
        ended: Ended::Closed,
        replay: None,
    };
    s.establish(link, acc.clone(), class);
    tracing::info!(
        "Connected leafnode to {:?} at {} (account {account_name})",
        peer_name,
        url.hostport()
    );
    if let Some(sp) = &state.spool {
        tokio::spawn(sp.clone().replay(acc.clone(), conn.clone()));
    }
    state.connected.store(true, Ordering::Relaxed);
    state.ever_connected.store(true, Ordering::Relaxed);
    *state.connected_url.lock() = Some(url.hostport());
    // Ops already buffered after the INFO are handled first.
    let mut early_ok = true;
    loop {
        match parser.next(&mut buf) {
            Ok(Some(op)) => {
                if !s.handle(op) {
                    early_ok = false;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                conn.close(CloseReason::ProtocolViolation(e.to_string()));
                early_ok = false;
                break;
            }
        }
    }
    s.end_batch();
    if early_ok {
        // Continue with the same buffer contents: hand the leftover bytes to the loop.
        let rest = std::io::Cursor::new(buf.split().freeze());
        match s2 {
            Some((_, raw, dec)) => {
                let rd = tokio::io::AsyncReadExt::chain(rest, S2Read::new(rd, raw, dec));
                s.read_loop(rd, Duration::from_secs(3600)).await
            }
            None => {
                let rd = tokio::io::AsyncReadExt::chain(rest, rd);
                s.read_loop(rd, Duration::from_secs(3600)).await
            }
        }
    }
    if let Some(sp) = &state.spool {
        sp.link_down(&acc);
    }
    conn.close(CloseReason::ClientClosed);
    let _ = writer.await;
    state.connected.store(false, Ordering::Relaxed);
    *state.connected_url.lock() = None;
    let ended = std::mem::replace(&mut s.ended, Ended::Closed);
    s.teardown();
    Ok(ended)
}

/// `/leafz` in nats-server's shape, plus Canopy's per-remote state.
pub fn leafz(server: &Server, subs: bool, acc_filter: Option<&str>) -> Value {
    let links = server.leaf_links();
    let now = std::time::SystemTime::now();
    let mut leafs = Vec::new();
    for l in links.iter() {
        let m = l.conn.meta.lock().clone();
        if acc_filter.is_some_and(|a| a != m.account) {
            continue;
        }
        let rtt = Duration::from_nanos(l.conn.rtt_ns.load(Ordering::Relaxed));
        let mut v = json!({
            "name": l.peer_name,
            "is_spoke": l.class() == LinkClass::Uplink,
            "account": m.account,
            "ip": l.conn.addr.ip().to_string(),
            "port": l.conn.addr.port(),
            "rtt": crate::core::format::go_duration(rtt),
            "in_msgs": l.conn.stats.in_msgs.load(Ordering::Relaxed),
            "out_msgs": l.conn.stats.out_msgs.load(Ordering::Relaxed),
            "in_bytes": l.conn.stats.in_bytes.load(Ordering::Relaxed),
            "out_bytes": l.conn.stats.out_bytes.load(Ordering::Relaxed),
            "subscriptions": l.remote_subs.lock().len(),
            "compression": Level::from_code(l.conn.compression.load(Ordering::Relaxed))
                .map_or("off", Level::as_str),
            "canopy_link": l.class().as_str(),
            "canopy_solicited": l.solicited,
            "canopy_active": l.advertise.load(Ordering::Relaxed),
            "canopy_uptime": crate::core::format::uptime(now.duration_since(l.conn.start).unwrap_or_default()),
        });
        if subs {
            v["subscriptions_list"] = json!(l.remote_subjects());
        }
        leafs.push(v);
    }
    let remotes: Vec<Value> = server
        .remote_states()
        .iter()
        .map(|r| {
            json!({
                "urls": r.urls,
                "account": r.account,
                "connected": r.connected.load(Ordering::Relaxed),
                "connected_url": r.connected_url.lock().clone(),
                "last_error": r.last_error.lock().clone(),
                "attempts": r.attempts.load(Ordering::Relaxed),
                "reconnects": r.reconnects.load(Ordering::Relaxed),
                "spool": r.spool.as_ref().map(|sp| sp.to_json()),
            })
        })
        .collect();
    json!({
        "server_id": server.id,
        "now": crate::core::format::rfc3339(now),
        "leafnodes": leafs.len(),
        "leafs": leafs,
        "canopy_remotes": remotes,
        "canopy_spool_marks": {
            "spools": server.spool_marks.len(),
            "stale_dropped": server.spool_marks.stale_dropped.load(Ordering::Relaxed),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_urls() {
        let u = LeafUrl::parse("nats-leaf://a:b@hub-1:7433").unwrap();
        assert_eq!(u.hostport(), "hub-1:7433");
        assert_eq!(u.user.as_deref(), Some("a"));
        assert_eq!(u.pass.as_deref(), Some("b"));
        assert_eq!(LeafUrl::parse("nats://h").unwrap().port, 7422);
        assert_eq!(
            LeafUrl::parse("tls://[::1]:1").unwrap().hostport(),
            "[::1]:1"
        );
        assert!(LeafUrl::parse("http://h:1").is_err());
        assert!(LeafUrl::parse("nats-leaf://:1").is_err());
        let w = LeafUrl::parse("wss://hub/ws").unwrap();
        assert!(w.ws && w.tls);
        assert_eq!((w.port, w.path.as_str()), (443, "/ws"));
        let w = LeafUrl::parse("ws://hub:8080").unwrap();
        assert!(w.ws && !w.tls);
        assert_eq!(w.port, 8080);
    }

    #[test]
    fn creds_with_crlf() {
        let kp = nkeys::KeyPair::new_user();
        let seed = kp.seed().unwrap();
        let text = format!(
            "-----BEGIN NATS USER JWT-----\r\neyJhbGc.x.y\r\n------END NATS USER JWT------\r\n\r\n************************* IMPORTANT *************************\r\n\r\n-----BEGIN USER NKEY SEED-----\r\n{seed}\r\n------END USER NKEY SEED------\r\n"
        );
        let (jwt, s) = parse_creds(&text).unwrap();
        assert_eq!(jwt, "eyJhbGc.x.y");
        assert_eq!(s, seed);
        assert!(parse_creds("garbage").is_err());
        let (pk, sig) = sign_nonce(&seed, "nonce").unwrap();
        assert!(crate::auth::users::verify_nonce_signature(
            &pk, "nonce", &sig
        ));
    }
}
