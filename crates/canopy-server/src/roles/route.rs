//! Cluster routes, wire compatible with nats-server 2.10 and 2.9: route INFO/CONNECT,
//! RS+/RS- with queue weights, RMSG/HMSG, gossip of new members (implicit routes),
//! duplicate resolution, cluster-name checks and reconnects; and nats-server 2.10's
//! additions, each negotiated in the INFO exchange and absent with a 2.9 peer: S2
//! compression (`cluster { compression }`), route pooling (`pool_size`: several
//! connections per peer, each account pinned to one of them by the hash of its name) and
//! per-account routes (`accounts`: a dedicated connection whose ops name no account).
//!
//! A route connection appears in the interest model as one [`Link`] per account it
//! carries, with class [`LinkClass::Route`]: a cluster is a full mesh, one hop, and the
//! forwarding table in `interest.rs` never sends a routed message to another route. An
//! account's interest and messages all travel on the one connection it is pinned to, so
//! its messages keep their order.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use canopy_conf::{Compression, CompressionMode};
use canopy_proto::{Op, Parser, ParserLimits, Role, RouteConnect, ServerInfo};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::auth::s2::{
    announced, encode_flush, follow_rtt, read_op, select_compression, CountRead, Level, S2Decoder,
    S2Read, S2Write,
};
use crate::core::account::Account;
use crate::core::conn::{
    conn_label, read_ops, writer_loop, BatchCounters, CloseReason, ConnKind, ConnShared, FlushList,
    OpHandler,
};
use crate::core::deliver::{deliver, Msg, Origin, Scratch};
use crate::core::errors;
use crate::core::interest::{Link, LinkClass};
use crate::core::url::ServerUrl;
pub use crate::server::links::Cluster;
use crate::server::links::{Route, RoutePerms};
use crate::server::version;
use crate::server::Server;

/// Writes handshake bytes straight to the socket (the writer task starts after the
/// handshake).
async fn write_out<S: AsyncWrite + Unpin>(io: &mut S, out: &[u8]) -> Result<(), String> {
    io.write_all(out).await.map_err(|e| e.to_string())?;
    io.flush().await.map_err(|e| e.to_string())
}

/// Route protocol version announced in INFO (2.9 uses 2 on routes).
const ROUTE_PROTO: i32 = 2;
/// Delay between reconnect attempts of a route.
const ROUTE_RECONNECT: Duration = Duration::from_secs(1);

/// The schemes of route URLs.
const ROUTE_SCHEMES: &[&str] = &["nats-route", "nats", "tls", "route"];

/// `host:port` of a route URL, for comparing configured and advertised URLs (the URL as
/// written when it does not parse).
fn url_hostport(url: &str) -> String {
    ServerUrl::parse(url, ROUTE_SCHEMES, None)
        .map(|u| u.hostport())
        .unwrap_or_else(|_| url.to_string())
}

fn parse_route_url(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let u = ServerUrl::parse(url, ROUTE_SCHEMES, None)?;
    Ok((u.hostport(), u.user, u.pass))
}

impl Server {
    pub fn cluster_name(&self) -> String {
        self.cluster.name.lock().clone()
    }

    /// How many distinct configured route addresses are not known to be this server's own
    /// (the Helm chart lists every member, this one included; the route to self is found
    /// out when it connects).
    pub fn configured_route_peers(&self) -> usize {
        let o = self.opts();
        let mut own = self.cluster.self_urls.lock().clone();
        own.insert(url_hostport(&self.cluster.url.lock()));
        let mut seen = std::collections::HashSet::new();
        o.cluster
            .as_ref()
            .map(|c| c.routes.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|u| url_hostport(u))
            .filter(|hp| !own.contains(hp) && seen.insert(hp.clone()))
            .count()
    }

    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.cluster.routes.lock().clone()
    }

    /// Leafnode URLs the other members told us of (their route INFO `leafnode_urls`).
    pub fn cluster_leaf_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for r in self.routes() {
            for u in &r.leafnode_urls {
                if !urls.contains(u) {
                    urls.push(u.clone());
                }
            }
        }
        urls
    }

    /// Cluster membership changed (a route came or went): tell clients that asked for
    /// updates (`protocol` >= 1) the new `connect_urls`, unless `cluster { no_advertise }`,
    /// and leafs that connected to us the new `leafnode_urls`, as nats-server does.
    pub fn send_async_info(&self) {
        let o = self.opts();
        let advertise = !o.cluster.as_ref().is_some_and(|c| c.no_advertise);
        let auth_required = self.client_auth().required();
        let leaf_listen = *self.leaf_addr.lock();
        for c in self.connections() {
            if !c.async_info.load(Ordering::Relaxed) || c.is_closed() {
                continue;
            }
            let info = match c.kind {
                ConnKind::Client if advertise => self.client_info(c.cid, c.addr, "", auth_required),
                ConnKind::Leaf => match leaf_listen {
                    Some(listen) => {
                        let mut info = crate::roles::leaf::leaf_info(self, c.cid, "", listen);
                        info.client_id = 0;
                        info
                    }
                    None => continue,
                },
                _ => continue,
            };
            c.enqueue(|b| canopy_proto::encode_info(b, &info));
            c.flush_signal();
        }
    }

    /// Client URLs of the whole cluster (INFO `connect_urls`).
    pub fn cluster_client_urls(&self) -> Vec<String> {
        let mut urls = Vec::new();
        if let Some(a) = *self.client_addr.lock() {
            let o = self.opts();
            let host = o
                .client_advertise
                .clone()
                .unwrap_or_else(|| format!("{}:{}", advertise_host(&o.host), a.port()));
            urls.push(host);
        }
        for r in self.routes() {
            for u in &r.connect_urls {
                if !urls.contains(u) {
                    urls.push(u.clone());
                }
            }
        }
        urls
    }

    /// The route layout from `cluster {}`: the pool size (`None`: no pooling) and the
    /// accounts pinned to dedicated routes, with the system account added when pooling
    /// (as nats-server does, unless `no_system_account`).
    pub fn route_pool(&self) -> (Option<usize>, Vec<String>) {
        let o = self.opts();
        let Some(c) = o.cluster.as_ref() else {
            return (None, Vec::new());
        };
        let pool = c.effective_pool_size();
        let mut pinned = c.accounts.clone();
        if pool.is_some() && !o.no_system_account && !pinned.contains(&self.system_account) {
            pinned.push(self.system_account.clone());
        }
        (pool, pinned)
    }

    /// `cluster { compression }` for routes: nats-server's default `accept`, and `on`
    /// meaning `s2_fast` on routes.
    pub fn route_compression(&self) -> Compression {
        let o = self.opts();
        let mut c = o
            .cluster
            .as_ref()
            .and_then(|c| c.compression.clone())
            .unwrap_or(Compression {
                mode: CompressionMode::Accept,
                rtt_thresholds: Vec::new(),
                pos: Default::default(),
            });
        if c.mode == CompressionMode::On {
            c.mode = CompressionMode::S2Fast;
        }
        c
    }

    /// Our route INFO: `account` for a dedicated route, `compression` as negotiated so
    /// far, `pool_idx` the slot a solicited pooled connection took.
    fn route_info(
        &self,
        account: Option<&str>,
        compression: String,
        pool_idx: usize,
    ) -> ServerInfo {
        let o = self.opts();
        let c = o.cluster.clone();
        let port = c.as_ref().map(|c| c.port.max(0) as u16).unwrap_or(0);
        let leaf_urls = self
            .leaf_url
            .lock()
            .clone()
            .map(|u| vec![u.trim_start_matches("nats-leaf://").to_string()])
            .unwrap_or_default();
        let client_url = self.cluster_client_urls().into_iter().next();
        let (pool, _) = self.route_pool();
        ServerInfo {
            server_id: self.id.clone(),
            server_name: self.name.clone(),
            version: version::NATS_COMPAT_VERSION.to_string(),
            proto: ROUTE_PROTO,
            go: version::RUNTIME.to_string(),
            host: c.as_ref().map(|c| c.host.clone()).unwrap_or_default(),
            port,
            headers: true,
            max_payload: o.max_payload as i64,
            ip: self.cluster.url.lock().clone(),
            cluster: self.cluster_name(),
            connect_urls: if c.as_ref().is_some_and(|c| c.no_advertise) {
                Vec::new()
            } else {
                client_url.into_iter().collect()
            },
            leafnode_urls: leaf_urls,
            tls_required: c.as_ref().is_some_and(|c| c.tls.is_some()),
            tls_verify: c.as_ref().is_some_and(|c| c.tls.is_some()),
            canopy_version: version::CANOPY_VERSION.to_string(),
            compression,
            route_pool_size: pool.unwrap_or(0) as i64,
            route_pool_idx: pool_idx as i64,
            route_account: account.unwrap_or_default().to_string(),
            // nats-server announces JetStream on routes too; clustered JetStream finds its
            // peers by it.
            jetstream: o.jetstream.as_ref().is_some_and(|j| j.enabled),
            ..Default::default()
        }
    }

    /// Starts dialling the configured routes, and gives every account created later (a
    /// JWT resolved at run time) its link on each established route.
    pub fn start_routes(self: &Arc<Self>) {
        let o = self.opts();
        let Some(c) = &o.cluster else {
            return;
        };
        let weak = Arc::downgrade(self);
        self.on_account(Arc::new(move |acc, event| {
            let Some(server) = weak.upgrade() else {
                return;
            };
            if event == crate::server::AccountEvent::Created {
                for route in server.routes() {
                    add_route_link(&server, &route, acc);
                }
            }
        }));
        for url in &c.routes {
            self.clone().dial_all(url.clone(), None, true);
        }
    }

    /// Starts the dials one peer's URL needs: its first connection, the rest of the
    /// pool once that one is up (and pooled), and each pinned account's route.
    fn dial_all(self: Arc<Self>, url: String, expect_id: Option<String>, explicit: bool) {
        let (pool, pinned) = self.route_pool();
        let mut slots = vec![DialSlot::First];
        slots.extend((1..pool.unwrap_or(1)).map(|_| DialSlot::Pool));
        slots.extend(pinned.into_iter().map(DialSlot::Account));
        // The peer's id once a connection to this URL registered: the URL it advertises
        // may not be the one we dial (a proxy, NAT), so its routes are found by id.
        let peer_id = Arc::new(Mutex::new(expect_id.clone()));
        for slot in slots {
            let s = self.clone();
            crate::process::links::handle().spawn(s.dial_route(
                url.clone(),
                expect_id.clone(),
                explicit,
                slot,
                peer_id.clone(),
            ));
        }
    }

    /// Dials one route connection of a peer until it is established, and again after it
    /// drops (explicit routes: forever; implicit ones: `connect_retries` attempts, as
    /// nats-server gives up on implicit routes). `slot` says which connection: the first
    /// one, another of the pool (only once the first is up and pooled, as nats-server
    /// fills the pool after the first connection), or a pinned account's.
    async fn dial_route(
        self: Arc<Self>,
        url: String,
        expect_id: Option<String>,
        explicit: bool,
        slot: DialSlot,
        peer_id: Arc<Mutex<Option<String>>>,
    ) {
        // However this returns, the peer's id leaves `dialing`, so gossip can start
        // another dial later.
        let _dialing = DialingGuard {
            server: self.clone(),
            id: expect_id.clone().filter(|_| slot == DialSlot::First),
        };
        let (hostport, user, pass) = match parse_route_url(&url) {
            Ok(x) => x,
            Err(e) => {
                if slot == DialSlot::First {
                    tracing::error!("Route {e}");
                }
                return;
            }
        };
        let retries = self
            .opts()
            .cluster
            .as_ref()
            .map(|c| c.connect_retries)
            .unwrap_or(0);
        let (pool, _) = self.route_pool();
        let mut attempt: u32 = 0;
        let mut idle: u32 = 0;
        loop {
            if self.shutdown.is_cancelled() || self.accepting.is_cancelled() {
                return;
            }
            if self.cluster.self_urls.lock().contains(&hostport)
                || url_hostport(&self.cluster.url.lock()) == hostport
            {
                tracing::debug!("Route URL {url} is this server; not dialling it");
                return;
            }
            // What we hold to this peer already (connected to us, or learned by gossip):
            // a connection that would only be dropped as a duplicate, possibly the one
            // carrying traffic, is not dialled. We check again after it drops.
            let peer: Vec<Arc<Route>> = self
                .routes()
                .into_iter()
                .filter(|r| {
                    url_hostport(&r.url) == hostport
                        || peer_id.lock().as_ref().is_some_and(|id| &r.remote_id == id)
                })
                .collect();
            let pooled = peer.iter().filter(|r| r.account.is_none()).count();
            let no_pool = peer.iter().any(|r| r.no_pool);
            let wait = match &slot {
                DialSlot::First => pooled >= 1,
                DialSlot::Pool => pooled == 0 || no_pool || pooled >= pool.unwrap_or(1),
                DialSlot::Account(a) => {
                    pooled == 0
                        || no_pool
                        || peer
                            .iter()
                            .any(|r| r.account.as_deref() == Some(a.as_str()))
                }
            };
            if wait {
                if !explicit && (slot == DialSlot::First || idle > 30) {
                    return;
                }
                idle += 1;
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ROUTE_RECONNECT) => {}
                }
                continue;
            }
            idle = 0;
            attempt += 1;
            let failed =
                match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&hostport))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        let addr = stream
                            .peer_addr()
                            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                        if explicit {
                            attempt = 0;
                        }
                        let connect = RouteConnect {
                            echo: true,
                            headers: true,
                            name: self.id.clone(),
                            cluster: self.cluster_name(),
                            user: user.clone().unwrap_or_default(),
                            pass: pass.clone().unwrap_or_default(),
                            tls_required: self.tls().route_dial.is_some(),
                            ..Default::default()
                        };
                        let dial = Dial {
                            connect,
                            url: url.clone(),
                            explicit,
                            account: match &slot {
                                DialSlot::Account(a) => Some(a.clone()),
                                _ => None,
                            },
                            peer_id: peer_id.clone(),
                        };
                        serve_route(self.clone(), stream, addr, Some(dial)).await;
                        if !explicit && slot == DialSlot::First {
                            // Implicit routes are redialled only by the smaller id (as
                            // nats-server does), and only while no other route to the peer
                            // exists; `connect_retries` (at least 3) bounds the attempts.
                            let retry = expect_id.as_ref().is_some_and(|id| {
                                self.id.as_str() < id.as_str()
                                    && !self.routes().iter().any(|r| &r.remote_id == id)
                            });
                            if !retry || attempt > retries.max(3) {
                                return;
                            }
                        }
                        None
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("i/o timeout".to_string()),
                };
            if let Some(e) = failed {
                if slot == DialSlot::First && (attempt == 1 || attempt.is_multiple_of(30)) {
                    tracing::error!(
                        "Error trying to connect to route (attempt {attempt}): dial tcp {hostport}: {e}"
                    );
                }
                if !explicit && attempt > retries {
                    tracing::debug!("Giving up on implicit route {url} after {attempt} attempt(s)");
                    return;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(ROUTE_RECONNECT) => {}
            }
        }
    }
}

/// Which of a peer's route connections a dial task keeps up.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DialSlot {
    /// The first connection (the only one without pooling).
    First,
    /// One more connection of the pool, dialled once the first is up and pooled.
    Pool,
    /// The route dedicated to a pinned account.
    Account(String),
}

/// How we dialled a route connection.
struct Dial {
    connect: RouteConnect,
    url: String,
    explicit: bool,
    /// The account of a dedicated route.
    account: Option<String>,
    /// Shared by the dials of one URL: the peer's id, set when a connection registers.
    peer_id: Arc<Mutex<Option<String>>>,
}

/// Removes a server id from the cluster's `dialing` set when the dial that added it ends.
struct DialingGuard {
    server: Arc<Server>,
    id: Option<String>,
}

impl Drop for DialingGuard {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            self.server.cluster.dialing.lock().remove(id);
        }
    }
}

/// Gives `route` its link for `acc` if the account travels on it (see [`Route::serves`])
/// and it has none yet (`register` and the account hook may both see a new account). The
/// link's creation sends our interest in `acc` as RS+.
fn add_route_link(server: &Server, route: &Arc<Route>, acc: &Arc<Account>) {
    let (pool, pinned) = server.route_pool();
    if !route.serves(&acc.name, pool, &pinned) {
        return;
    }
    force_route_link(route, acc);
}

/// Gives `route` its link for `acc` unless it has one, whatever the pool layout says.
fn force_route_link(route: &Arc<Route>, acc: &Arc<Account>) {
    let link = {
        let mut links = route.links.lock();
        if route.conn.is_closed() || links.iter().any(|(a, _)| Arc::ptr_eq(a, acc)) {
            return;
        }
        let mut link = Link::new(
            route.conn.clone(),
            route.remote_id.clone(),
            route.remote_name.clone(),
            route.solicited,
            route.url.clone(),
            Vec::new(),
            Vec::new(),
        );
        // A dedicated route's ops name no account (the empty name encodes that form).
        link.route_account = Some(if route.account.is_some() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(acc.name.as_bytes())
        });
        link.import = route.perms.import.clone();
        let link = Arc::new(link);
        links.push((acc.clone(), link.clone()));
        link
    };
    acc.add_link(link);
    route.conn.flush_signal();
}

fn advertise_host(h: &str) -> String {
    if h == "0.0.0.0" || h == "::" || h.is_empty() {
        "127.0.0.1".into()
    } else {
        h.to_string()
    }
}

/// Accepts routes until the server stops accepting.
pub async fn accept_routes(server: Arc<Server>, listener: TcpListener) {
    let until = server.shutdown.clone();
    server
        .accept_loop(listener, until, "route", |s, stream, addr| {
            serve_route(s, stream, addr, None)
        })
        .await;
}

struct RouteSession {
    server: Arc<Server>,
    conn: Arc<ConnShared>,
    route: Option<Arc<Route>>,
    connected: bool,
    solicit: Option<(String, bool)>,
    /// The account of a dedicated route we dialled.
    dial_account: Option<String>,
    /// The peer id slot of the dials of this URL (see [`Dial::peer_id`]).
    dial_peer: Option<Arc<Mutex<Option<String>>>>,
    /// The level we write with, once compression was negotiated.
    level: Option<Level>,
    /// What `/routez` shows when we do not compress (`off`, `not supported`).
    compression: String,
    started: tokio::time::Instant,
    flush: FlushList,
    scratch: Scratch,
    batch: BatchCounters,
    /// The last account a route op named, with its link (see `link_for`).
    last_link: Option<(Arc<Account>, Arc<Link>)>,
}

/// What the handshake leaves to the read loop: the INFO that registers the route, the
/// decoded bytes read past it, and on a compressed link the raw bytes not yet decoded
/// with their decoder.
struct Handshook {
    info: ServerInfo,
    rest: BytesMut,
    s2: Option<(BytesMut, S2Decoder)>,
}

/// Serves one route connection; `dial` when we dialled it.
async fn serve_route(server: Arc<Server>, stream: TcpStream, addr: SocketAddr, dial: Option<Dial>) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let cid = server.next_cid();
    let conn = Arc::new(ConnShared::new(
        cid,
        ConnKind::Route,
        addr,
        server.link_max_pending(),
    ));
    conn.link_class
        .store(LinkClass::Route as u8, Ordering::Relaxed);
    // `cluster.permissions.export` deny rules: never sent, even to a permitted wildcard
    // subscription (nats-server checks them at delivery too).
    if let Some(export) = RoutePerms::from_options(&server.opts()).export {
        let _ = conn.deny_send.set(export.deny.clone());
    }
    // Cluster TLS: the handshake comes first on both sides, before CONNECT and INFO.
    let tls_dial = dial.as_ref().map(|d| {
        let hp = url_hostport(&d.url);
        let host = hp
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or(hp);
        (d.url.clone(), host)
    });
    let tls_dial = tls_dial.as_ref().map(|(u, h)| (u.as_str(), h.as_str()));
    let Some(mut stream) =
        crate::auth::tls::route_handshake(&server.tls(), &server.stats, stream, tls_dial, &conn)
            .await
    else {
        return;
    };
    server.register_conn(&conn);
    let mut s = RouteSession {
        server: server.clone(),
        connected: dial.is_some(),
        solicit: dial.as_ref().map(|d| (d.url.clone(), d.explicit)),
        dial_account: dial.as_ref().and_then(|d| d.account.clone()),
        dial_peer: dial.as_ref().map(|d| d.peer_id.clone()),
        level: None,
        compression: String::new(),
        started: tokio::time::Instant::now(),
        conn: conn.clone(),
        route: None,
        flush: FlushList::default(),
        scratch: Scratch::default(),
        batch: BatchCounters::default(),
        last_link: None,
    };
    let timeout = s.auth_timeout();
    let hs = tokio::select! {
        _ = conn.cancel.cancelled() => None,
        r = tokio::time::timeout(timeout, s.handshake(&mut stream, dial.as_ref())) => match r {
            Ok(Ok(hs)) => Some(hs),
            Ok(Err(e)) => {
                if !conn.is_closed() {
                    tracing::error!("{} - Route handshake failed: {e}", conn_label(&conn));
                    conn.close(CloseReason::ProtocolViolation(e));
                }
                None
            }
            Err(_) => {
                tracing::error!("{} - Route handshake timed out (Authentication Timeout)", conn_label(&conn));
                conn.error_and_close(errors::AUTH_TIMEOUT, CloseReason::AuthTimeout);
                None
            }
        },
    };
    // Without TLS and S2, threads that queue Raft RPCs and replies for this route may
    // write them themselves (`ConnShared::flush_direct`); only once the handshake, which
    // writes its own bytes, is over. The socket stays open until the writer ends.
    let direct = hs.as_ref().is_some_and(|h| h.s2.is_none()) && !stream.is_tls();
    let (rd, wr) = tokio::io::split(stream);
    // The writer starts after the handshake, which wrote its own bytes: from here on it
    // compresses if the handshake switched the connection to S2.
    let writer = tokio::spawn(writer_loop(
        conn.clone(),
        S2Write::new(wr, conn.clone()),
        server.liveness(),
    ));
    if direct {
        conn.enable_direct(fd);
    }
    if let Some(hs) = hs {
        if s.register(hs.info) {
            let max_payload = server.opts().max_payload as usize;
            let mut parser = Parser::new(
                Role::Route,
                ParserLimits::link(route_payload_limit(max_payload)),
            );
            parser.set_route_no_account(s.route.as_ref().is_some_and(|r| r.account.is_some()));
            let rd = CountRead::new(rd, conn.clone());
            let rest = Cursor::new(hs.rest.freeze());
            match hs.s2 {
                Some((raw, dec)) => {
                    let rd = rest.chain(S2Read::new(rd, raw, dec));
                    read_ops(&conn, rd, parser, timeout, "Route", &mut s).await
                }
                None => read_ops(&conn, rest.chain(rd), parser, timeout, "Route", &mut s).await,
            }
        }
    }
    conn.close(CloseReason::ClientClosed);
    let _ = writer.await;
    s.teardown();
}

impl OpHandler for RouteSession {
    fn on_op(&mut self, op: Op) -> bool {
        self.handle(op)
    }
    fn handshake_done(&self) -> bool {
        self.route.is_some()
    }
    fn end_batch(&mut self) {
        // Counters first: a receiver woken by the flush sees them already counted.
        let msgs = self.batch.in_msgs;
        self.batch.publish(&self.conn, &self.server.stats);
        self.flush.flush_after_read(msgs);
    }
}

impl RouteSession {
    fn auth_timeout(&self) -> Duration {
        self.server
            .opts()
            .cluster
            .as_ref()
            .and_then(|c| c.authorization.as_ref())
            .and_then(|a| a.timeout)
            .unwrap_or(Duration::from_secs(2))
    }

    /// The INFO exchange, as nats-server 2.10 runs it, up to the INFO that registers the
    /// route. The acceptor sends its INFO first. The solicitor sends CONNECT and holds its
    /// INFO back when compression is to be negotiated or the connection is pooled (its
    /// INFO then names the pool slot it took). Whoever wants compression negotiates on
    /// the first INFO it gets (`select_compression`): the solicitor answers with a plain
    /// INFO and switches, the acceptor switches and answers with a compressed INFO, and
    /// the solicitor's next INFO (compressed) registers the route. A 2.9 peer announces no
    /// compression and no pool, and the exchange is 2.9's.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        dial: Option<&Dial>,
    ) -> Result<Handshook, String> {
        let server = self.server.clone();
        let co = server.route_compression();
        let (pool, _) = server.route_pool();
        let account = dial.and_then(|d| d.account.clone());
        let negotiate = co.mode != CompressionMode::Off;
        let max_payload = server.opts().max_payload as usize;
        let mut parser = Parser::new(
            Role::Route,
            ParserLimits::link(route_payload_limit(max_payload)),
        );
        let mut buf = BytesMut::with_capacity(4096);
        let mut out = BytesMut::new();
        // A pooled solicitor's INFO waits for `register`, which picks its slot.
        let info_at_register = dial.is_some() && pool.is_some() && account.is_none();
        match dial {
            Some(d) => {
                canopy_proto::encode_connect(&mut out, &d.connect);
                if !negotiate && !info_at_register {
                    let info = server.route_info(account.as_deref(), co.mode.as_str().into(), 0);
                    canopy_proto::encode_info(&mut out, &info);
                }
            }
            None => {
                let info = server.route_info(None, announced(&co, None), 0);
                canopy_proto::encode_info(&mut out, &info);
            }
        }
        write_out(io, &out).await?;
        let first = self.read_info(io, &mut buf, &mut parser, None).await?;
        self.compression = if first.compression.is_empty() {
            "not supported".into()
        } else {
            "off".into()
        };
        if !negotiate {
            return Ok(Handshook {
                info: first,
                rest: buf,
                s2: None,
            });
        }
        let Some(level) = select_compression(&co, &first.compression, self.started.elapsed())
        else {
            if dial.is_some() && !info_at_register {
                let info = server.route_info(account.as_deref(), "off".into(), 0);
                out.clear();
                canopy_proto::encode_info(&mut out, &info);
                write_out(io, &out).await?;
            }
            return Ok(Handshook {
                info: first,
                rest: buf,
                s2: None,
            });
        };
        let info = server.route_info(account.as_deref(), announced(&co, Some(level)), 0);
        out.clear();
        canopy_proto::encode_info(&mut out, &info);
        if dial.is_some() {
            write_out(io, &out).await?;
        } else {
            let mut z = BytesMut::new();
            encode_flush(&mut minlz::Encoder::new(), level, &out, &mut z);
            write_out(io, &z).await?;
        }
        self.conn.compression.store(level.code(), Ordering::Relaxed);
        follow_rtt(&self.conn, &co);
        self.level = Some(level);
        tracing::debug!(
            "{} - Route compression: {}",
            conn_label(&self.conn),
            level.as_str()
        );
        let mut raw = buf.split();
        let mut dec = S2Decoder::default();
        let info = self
            .read_info(io, &mut buf, &mut parser, Some((&mut raw, &mut dec)))
            .await?;
        Ok(Handshook {
            info,
            rest: buf,
            s2: Some((raw, dec)),
        })
    }

    /// Reads handshake ops up to the next INFO: the acceptor authenticates the CONNECT
    /// that comes first; PING/PONG wait for the link (the peer pings again).
    async fn read_info<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        buf: &mut BytesMut,
        parser: &mut Parser,
        mut s2: Option<(&mut BytesMut, &mut S2Decoder)>,
    ) -> Result<ServerInfo, String> {
        loop {
            let s2_now = s2.as_mut().map(|(r, d)| (&mut **r, &mut **d));
            let op = read_op(io, buf, parser, s2_now).await?;
            if crate::server::logging::trace_enabled() {
                crate::server::logging::trace_in(&conn_label(&self.conn), &op);
            }
            match op {
                Op::Info(json) => {
                    if !self.connected {
                        self.conn
                            .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
                        return Err("route sent INFO before CONNECT".into());
                    }
                    return serde_json::from_slice(&json).map_err(|e| format!("invalid INFO: {e}"));
                }
                Op::Connect(json) if !self.connected => {
                    if !self.on_connect(&json) {
                        return Err("CONNECT rejected".into());
                    }
                }
                Op::Ping | Op::Pong => {}
                Op::Err(text) => {
                    let t = String::from_utf8_lossy(&text).to_string();
                    tracing::error!("{} - Route Error '{t}'", conn_label(&self.conn));
                    self.conn
                        .close(CloseReason::Other(format!("peer error: {t}")));
                    return Err(format!("peer error: {t}"));
                }
                other => {
                    self.conn
                        .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
                    return Err(format!("route sent {} before INFO", other.verb()));
                }
            }
        }
    }

    fn handle(&mut self, op: Op) -> bool {
        if crate::server::logging::trace_enabled() {
            crate::server::logging::trace_in(&conn_label(&self.conn), &op);
        }
        match op {
            Op::Ping => self.conn.pong(),
            Op::Pong => self.conn.pong_received(),
            Op::Connect(json) => return self.on_connect(&json),
            Op::Info(json) => return self.on_info(&json),
            Op::Err(text) => {
                let t = String::from_utf8_lossy(&text);
                tracing::error!("{} - Route Error '{t}'", conn_label(&self.conn));
                self.conn
                    .close(CloseReason::Other(format!("peer error: {t}")));
                return false;
            }
            _ if self.route.is_none() => {
                tracing::error!(
                    "{} - Route sent an operation before INFO",
                    conn_label(&self.conn)
                );
                self.conn
                    .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
                return false;
            }
            Op::RSub {
                account,
                subject,
                queue,
                weight,
            }
            | Op::RLSub {
                account,
                subject,
                queue,
                weight,
                ..
            } => self.on_rsub(&account, &subject, queue, weight.unwrap_or(1).max(1)),
            Op::RUnsub {
                account,
                subject,
                queue,
            }
            | Op::RLUnsub {
                account,
                subject,
                queue,
                ..
            } => self.on_rsub(&account, &subject, queue, 0),
            Op::RMsg {
                account,
                subject,
                reply,
                queues,
                header_len,
                payload,
                ..
            } => self.on_rmsg(&account, subject, reply, queues, header_len, payload),
            other => {
                self.conn.unexpected_op("route", other.verb());
                return false;
            }
        }
        !self.conn.is_closed()
    }

    fn on_connect(&mut self, json: &[u8]) -> bool {
        let c: RouteConnect = match serde_json::from_slice(json) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{} - Invalid route CONNECT: {e}", conn_label(&self.conn));
                self.conn
                    .close(CloseReason::ProtocolViolation(e.to_string()));
                return false;
            }
        };
        let o = self.server.opts();
        if let Some(a) = o.cluster.as_ref().and_then(|c| c.authorization.as_ref()) {
            if let Some(u) = &a.user {
                // bcrypt: an unauthenticated peer must not stall the worker.
                let ok = &c.user == u
                    && crate::auth::users::off_runtime(|| {
                        crate::auth::users::check_password(
                            a.password.as_deref().unwrap_or(""),
                            &c.pass,
                        )
                    });
                if !ok {
                    tracing::error!(
                        "{} - route from {:?} rejected: authorization violation for user {:?}",
                        conn_label(&self.conn),
                        c.name,
                        c.user
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
        self.connected = true;
        true
    }

    fn on_info(&mut self, json: &[u8]) -> bool {
        let info: ServerInfo = match serde_json::from_slice(json) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("{} - Invalid route INFO: {e}", conn_label(&self.conn));
                self.conn
                    .close(CloseReason::ProtocolViolation(e.to_string()));
                return false;
            }
        };
        if let Some(r) = &self.route {
            if info.server_id != r.remote_id {
                // Gossip: a member we may not know yet.
                self.server.clone().learn_route(&info);
            }
            return true;
        }
        if !self.connected {
            tracing::error!(
                "{} - Route sent INFO before CONNECT",
                conn_label(&self.conn)
            );
            self.conn
                .error_and_close(errors::AUTH_VIOLATION, CloseReason::AuthViolation);
            return false;
        }
        self.register(info)
    }

    fn register(&mut self, info: ServerInfo) -> bool {
        let server = self.server.clone();
        if info.server_id == server.id {
            tracing::debug!(
                "{} - Detected route to self, ignoring",
                conn_label(&self.conn)
            );
            if let Some((url, _)) = &self.solicit {
                // Another address of ours: never dialled again.
                server.cluster.self_urls.lock().insert(url_hostport(url));
            }
            self.conn.close(CloseReason::Other("route to self".into()));
            return false;
        }
        {
            let mut name = server.cluster.name.lock();
            if name.is_empty() {
                *name = info.cluster.clone();
            } else if !info.cluster.is_empty() && *name != info.cluster {
                tracing::error!(
                    "{} - Rejecting route from {:?}: cluster name {:?} does not match ours {:?}",
                    conn_label(&self.conn),
                    info.server_name,
                    info.cluster,
                    *name
                );
                self.conn.error_and_close(
                    "Cluster Name Mismatch",
                    CloseReason::Other("cluster name mismatch".into()),
                );
                return false;
            }
        }
        if !info.server_name.is_empty()
            && info.server_name == server.name
            && info.server_id != server.id
        {
            tracing::warn!(
                "{} - Remote server has the same server_name {:?} as this server",
                conn_label(&self.conn),
                info.server_name
            );
        }
        let solicited = self.solicit.is_some();
        // nats-server 2.10's `addRoute` rules for pools and dedicated routes.
        let (pool, pinned) = server.route_pool();
        let account = if solicited {
            self.dial_account.clone()
        } else {
            Some(info.route_account.clone()).filter(|a| !a.is_empty())
        };
        let no_pool = pool.is_none() || info.route_pool_size <= 0;
        let refuse = if no_pool {
            account.as_ref().map(|a| {
                format!(
                    "Not possible to have a dedicate route for account {a:?} between those servers"
                )
            })
        } else if pool != Some(info.route_pool_size as usize) {
            Some(format!(
                "Mismatch route pool size: {} vs {}",
                pool.unwrap_or(0),
                info.route_pool_size
            ))
        } else if solicited && info.route_pool_idx != 0 {
            Some(format!(
                "Route pool index should not be set but is set to {}",
                info.route_pool_idx
            ))
        } else if !solicited
            && account.is_none()
            && (info.route_pool_idx < 0 || info.route_pool_idx >= info.route_pool_size)
        {
            Some(format!(
                "Invalid route pool index: {} - pool size is {}",
                info.route_pool_idx, info.route_pool_size
            ))
        } else {
            account
                .as_ref()
                .filter(|a| !pinned.contains(a))
                .map(|a| format!("No route for account {a:?}"))
        };
        if let Some(e) = refuse {
            tracing::error!(
                "{} - Rejecting route from {:?}: {e}",
                conn_label(&self.conn),
                info.server_name
            );
            self.conn
                .error_and_close(&e, CloseReason::ProtocolViolation(e.clone()));
            return false;
        }
        let canopy_peer = !info.canopy_version.is_empty();
        if let Some(p) = &self.dial_peer {
            *p.lock() = Some(info.server_id.clone());
        }
        let mut route = Route {
            conn: self.conn.clone(),
            remote_id: info.server_id.clone(),
            remote_name: info.server_name.clone(),
            solicited,
            configured: self.solicit.as_ref().is_some_and(|(_, e)| *e),
            url: info.ip.clone(),
            connect_urls: info.connect_urls.clone(),
            leafnode_urls: info.leafnode_urls.clone(),
            pool_idx: 0,
            account: account.clone(),
            no_pool,
            compression: self
                .level
                .map(|l| l.as_str().to_string())
                .unwrap_or_else(|| self.compression.clone()),
            jetstream: info.jetstream,
            canopy: !info.canopy_version.is_empty(),
            links: Mutex::new(Vec::new()),
            perms: RoutePerms::from_options(&server.opts()),
        };
        let first_to_peer;
        let route = {
            let mut routes = server.cluster.routes.lock();
            let peer: Vec<Arc<Route>> = routes
                .iter()
                .filter(|r| r.remote_id == route.remote_id)
                .cloned()
                .collect();
            first_to_peer = peer.is_empty();
            // Between Canopy servers both sides keep, for each slot, the connection
            // solicited by the server with the smaller id. nats-server keeps the first one
            // registered and drops the newcomer (the smaller id redials if both get
            // dropped), so with a Go peer we do the same.
            let wins = |old: &Route| {
                canopy_peer
                    && old.solicited != solicited
                    && solicited == (server.id < route.remote_id)
            };
            let holder = match (&account, no_pool) {
                (Some(a), _) => peer
                    .iter()
                    .find(|r| r.account.as_deref() == Some(a.as_str()))
                    .cloned(),
                (None, true) => peer.iter().find(|r| r.account.is_none()).cloned(),
                (None, false) if solicited => {
                    // A solicited pooled connection takes the first free slot (its INFO
                    // tells the peer which), else one it wins.
                    let size = pool.unwrap_or(1);
                    let taken = |i: usize| {
                        peer.iter()
                            .find(|r| r.account.is_none() && r.pool_idx == i)
                            .cloned()
                    };
                    match (0..size).find(|i| taken(*i).is_none()) {
                        Some(i) => {
                            route.pool_idx = i;
                            None
                        }
                        None => match (0..size).find(|i| taken(*i).is_some_and(|r| wins(&r))) {
                            Some(i) => {
                                route.pool_idx = i;
                                taken(i)
                            }
                            None => {
                                drop(routes);
                                tracing::debug!(
                                    "{} - Route pool size reached, closing extra connection to {:?}",
                                    conn_label(&self.conn),
                                    route.remote_name
                                );
                                self.conn
                                    .close(CloseReason::Other("duplicate route".into()));
                                return false;
                            }
                        },
                    }
                }
                (None, false) => {
                    route.pool_idx = info.route_pool_idx as usize;
                    peer.iter()
                        .find(|r| r.account.is_none() && r.pool_idx == route.pool_idx)
                        .cloned()
                }
            };
            if let Some(old) = holder {
                if wins(&old) {
                    old.conn.close(CloseReason::Other("duplicate route".into()));
                    routes.retain(|r| !Arc::ptr_eq(r, &old));
                } else {
                    tracing::debug!(
                        "{} - Detected duplicate route to {:?}, closing",
                        conn_label(&self.conn),
                        route.remote_name
                    );
                    drop(routes);
                    self.conn
                        .close(CloseReason::Other("duplicate route".into()));
                    return false;
                }
            }
            self.conn
                .route_dedicated
                .store(route.account.is_some(), Ordering::Relaxed);
            let route = Arc::new(route);
            routes.push(route.clone());
            route
        };
        {
            let mut m = self.conn.meta.lock();
            m.name = route.remote_name.clone();
        }
        let _ = self.conn.peer_id.set(Arc::from(route.remote_id.as_str()));
        // One link per account: our interest (clients and downlinks) goes out as RS+.
        // Accounts created later get theirs from the hook `start_routes` installs.
        // The solicitor's held-back INFO: a pooled connection's names its slot; after a
        // compressed handshake it is the one the acceptor registers us with.
        if solicited && ((pool.is_some() && account.is_none()) || self.level.is_some()) {
            let co = server.route_compression();
            let mode = match self.level {
                Some(l) => announced(&co, Some(l)),
                None if co.mode == CompressionMode::Off => "off".into(),
                None => self.compression.clone(),
            };
            let ours = server.route_info(account.as_deref(), mode, route.pool_idx);
            self.conn.enqueue(|b| canopy_proto::encode_info(b, &ours));
        }
        // One link per account this connection carries: our interest (clients and
        // downlinks) goes out as RS+. Accounts created later get theirs from the hook
        // `start_routes` installs.
        for acc in server.accounts() {
            add_route_link(&server, &route, &acc);
        }
        self.conn.registered.store(true, Ordering::Relaxed);
        self.conn.send_ping();
        tracing::info!(
            "{} - Route connection created to {:?} ({}{})",
            conn_label(&self.conn),
            route.remote_name,
            if solicited { "solicited" } else { "accepted" },
            match (&route.account, route.no_pool) {
                (Some(a), _) => format!(", account {a:?}"),
                (None, true) => String::new(),
                (None, false) => format!(", pool index {}", route.pool_idx),
            }
        );
        if !first_to_peer {
            self.conn.flush_signal();
            self.route = Some(route);
            return true;
        }
        // Gossip: tell the other members about the new one, and the new one about them.
        let mut told = std::collections::HashSet::new();
        for other in server.routes() {
            // One connection per member (the first registered), not per pool slot.
            if other.remote_id == route.remote_id || !told.insert(other.remote_id.clone()) {
                continue;
            }
            if !info.ip.is_empty() {
                // What is about this connection stays out of the gossip.
                let mut fwd = info.clone();
                fwd.route_account.clear();
                fwd.route_pool_idx = 0;
                fwd.compression.clear();
                fwd.nonce.clear();
                other.conn.enqueue(|b| canopy_proto::encode_info(b, &fwd));
                other.conn.flush_signal();
            }
            if !other.url.is_empty() {
                let known = ServerInfo {
                    server_id: other.remote_id.clone(),
                    server_name: other.remote_name.clone(),
                    version: version::NATS_COMPAT_VERSION.to_string(),
                    proto: ROUTE_PROTO,
                    ip: other.url.clone(),
                    cluster: server.cluster_name(),
                    connect_urls: other.connect_urls.clone(),
                    leafnode_urls: other.leafnode_urls.clone(),
                    headers: true,
                    ..Default::default()
                };
                self.conn.enqueue(|b| canopy_proto::encode_info(b, &known));
            }
        }
        self.conn.flush_signal();
        self.route = Some(route);
        server.send_async_info();
        true
    }

    /// The account and link a route op names, moved out of the one-entry cache (put it
    /// back with `self.last_link = Some(..)`). Routed messages for one account usually come
    /// in runs, so a hit costs no lock and no reference counting.
    fn take_link(&mut self, account: &[u8]) -> Option<(Arc<Account>, Arc<Link>)> {
        let route = self.route.clone()?;
        // A dedicated route's ops name no account: they are its own.
        let account: &[u8] = match (&route.account, account.is_empty()) {
            (Some(a), true) => a.as_bytes(),
            _ => account,
        };
        if self
            .last_link
            .as_ref()
            .is_some_and(|(a, _)| a.name.as_bytes() == account)
        {
            return self.last_link.take();
        }
        if let Some(found) = find_link(&self.server, &route, account) {
            return Some(found);
        }
        let name = std::str::from_utf8(account).ok()?;
        let acc = match self.server.account(name) {
            Some(acc) => acc,
            None => {
                // Operator mode: an account the peer uses but we have not needed yet.
                // nats-server looks it up in its resolver here; ours holds the JWTs in
                // memory, so creating it costs no I/O. Its creation hook gives the route
                // that carries it its link.
                let trust = self.server.trust()?;
                trust.account(name)?;
                self.server.account_for_jwt(name)
            }
        };
        if let Some(found) = find_link(&self.server, &route, account) {
            return Some(found);
        }
        // The peer sends this account on a connection our layout does not pin it to (a
        // peer configured otherwise, or a dedicated route not up yet): the interest it
        // gives on this connection is kept here.
        force_route_link(&route, &acc);
        find_link(&self.server, &route, account)
    }

    fn on_rsub(&mut self, account: &[u8], subject: &[u8], queue: Option<Bytes>, weight: u32) {
        let export = self.route.as_ref().and_then(|r| r.perms.export.as_ref());
        if let Some(export) = export {
            let subj = String::from_utf8_lossy(subject);
            if !export.permits_subscribe(&subj) {
                tracing::debug!(
                    "{} - Can not export {subj:?}, ignoring remote subscription request",
                    conn_label(&self.conn)
                );
                return;
            }
        }
        let Some(entry) = self.take_link(account) else {
            return;
        };
        Self::apply_rsub(&entry.0, &entry.1, subject, queue, weight);
        self.last_link = Some(entry);
    }

    fn apply_rsub(
        acc: &Account,
        link: &Arc<Link>,
        subject: &[u8],
        queue: Option<Bytes>,
        weight: u32,
    ) {
        let Ok(subj) = std::str::from_utf8(subject) else {
            return;
        };
        if !canopy_subject::is_well_formed(subj) {
            return;
        }
        let q = match &queue {
            Some(q) => match std::str::from_utf8(q) {
                Ok(q) => Some(Arc::from(q)),
                Err(_) => return,
            },
            None => None,
        };
        let weight = if q.is_none() { weight.min(1) } else { weight };
        acc.link_interest(link, (Arc::from(subj), q), weight);
    }

    fn on_rmsg(
        &mut self,
        account: &[u8],
        subject: Bytes,
        reply: Option<Bytes>,
        queues: Vec<Bytes>,
        header_len: Option<usize>,
        payload: Bytes,
    ) {
        self.batch.received(payload.len());
        let Some(entry) = self.take_link(account) else {
            return;
        };
        let Ok(subj) = std::str::from_utf8(&subject) else {
            self.last_link = Some(entry);
            return;
        };
        let import = self.route.as_ref().and_then(|r| r.perms.import.as_ref());
        if import.is_some_and(|r| !r.permits_publish(subj)) {
            // `cluster.permissions.import`: we never asked for it.
            self.last_link = Some(entry);
            return;
        }
        let acc = &entry.0;
        let result = acc.sublist.matches(subj);
        let msg = Msg::from_link(&subject, reply.as_deref(), header_len, &payload);
        let origin = Origin {
            cid: self.conn.cid,
            echo: true,
            class: LinkClass::Route,
            queues: Some(&queues),
            peer: self.route.as_ref().map(|r| r.remote_id.as_str()),
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
        self.last_link = Some(entry);
    }

    fn teardown(&mut self) {
        self.last_link = None;
        if let Some(route) = self.route.take() {
            for (acc, link) in route.links.lock().drain(..) {
                acc.remove_link(&link);
            }
            self.server
                .cluster
                .routes
                .lock()
                .retain(|r| !Arc::ptr_eq(r, &route));
            self.server.send_async_info();
            let reason = self
                .conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default();
            tracing::info!(
                "{} - Route connection to {:?} closed: {reason}",
                conn_label(&self.conn),
                route.remote_name
            );
        }
        self.server.remove_conn(&self.conn);
    }
}

/// The link of `account` on `route`, or on another connection to the same peer (with a
/// pool, each account has its own connection; a peer may still send on another).
fn find_link(
    server: &Server,
    route: &Arc<Route>,
    account: &[u8],
) -> Option<(Arc<Account>, Arc<Link>)> {
    let mine = |r: &Route| {
        r.links
            .lock()
            .iter()
            .find(|(a, _)| a.name.as_bytes() == account)
            .cloned()
    };
    if let Some(found) = mine(route) {
        return Some(found);
    }
    server
        .routes()
        .iter()
        .filter(|r| r.remote_id == route.remote_id && !Arc::ptr_eq(r, route))
        .find_map(|r| mine(r))
}

impl Server {
    /// Gossip: connect to a member we heard of, unless we know it or are dialling it.
    fn learn_route(self: Arc<Self>, info: &ServerInfo) {
        if info.server_id == self.id || info.ip.is_empty() {
            return;
        }
        if self.routes().iter().any(|r| r.remote_id == info.server_id) {
            return;
        }
        // Both sides may dial after gossip (nats-server does too); duplicate resolution
        // in `register` keeps exactly one connection.
        if !self.cluster.dialing.lock().insert(info.server_id.clone()) {
            return;
        }
        tracing::debug!("Learned route {:?} at {}", info.server_name, info.ip);
        let url = info.ip.clone();
        let id = info.server_id.clone();
        self.dial_all(url, Some(id), false);
    }
}

/// `/routez` in nats-server's shape.
pub fn routez(server: &Server, subs: bool) -> Value {
    let now = std::time::SystemTime::now();
    let routes: Vec<Value> = server
        .routes()
        .iter()
        .map(|r| {
            let c = &r.conn;
            let subs_list: Vec<String> = r
                .links
                .lock()
                .iter()
                .flat_map(|(_, l)| l.remote_subjects())
                .collect();
            let mut v = json!({
                "rid": c.cid,
                "remote_id": r.remote_id,
                "remote_name": r.remote_name,
                "did_solicit": r.solicited,
                "is_configured": r.configured,
                "ip": c.addr.ip().to_string(),
                "port": c.addr.port(),
                "start": crate::core::format::rfc3339(c.start),
                "last_activity": crate::core::format::rfc3339(*c.last_activity.lock()),
                "rtt": crate::core::format::go_duration(Duration::from_nanos(c.rtt_ns.load(Ordering::Relaxed))),
                "uptime": crate::core::format::uptime(now.duration_since(c.start).unwrap_or_default()),
                "idle": crate::core::format::uptime(now.duration_since(*c.last_activity.lock()).unwrap_or_default()),
                "pending_size": c.pending_bytes(),
                "in_msgs": c.stats.in_msgs.load(Ordering::Relaxed),
                "out_msgs": c.stats.out_msgs.load(Ordering::Relaxed),
                "in_bytes": c.stats.in_bytes.load(Ordering::Relaxed),
                "out_bytes": c.stats.out_bytes.load(Ordering::Relaxed),
                "subscriptions": subs_list.len(),
                "compression": r.compression_shown(),
            });
            if let Some(a) = &r.account {
                v["account"] = json!(a);
            }
            if subs {
                v["subscriptions_list"] = json!(subs_list);
            }
            v
        })
        .collect();
    json!({
        "server_id": server.id,
        "server_name": server.name,
        "now": crate::core::format::rfc3339(now),
        "num_routes": routes.len(),
        "routes": routes,
    })
}

/// What a route accepts as one message's payload: `max_payload` and clustered JetStream's
/// headroom (a Raft entry can hold one message of the largest size plus its framing, see
/// canopy-jetstream `cluster::transport::ROUTE_HEADROOM`).
fn route_payload_limit(max_payload: usize) -> usize {
    max_payload.saturating_add(canopy_jetstream::cluster::transport::ROUTE_HEADROOM)
}
