//! Cluster routes, wire compatible with nats-server 2.9 (no pooling, no compression): route
//! INFO/CONNECT, RS+/RS- with queue weights, RMSG/HMSG, gossip of new members (implicit
//! routes), duplicate resolution, cluster-name checks and reconnects.
//!
//! A route carries every account, so it appears as one [`Link`] per account in the
//! interest model, with class [`LinkClass::Route`]: a cluster is a full mesh, one hop, and
//! the forwarding table in `interest.rs` never sends a routed message to another route.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_proto::{Op, Parser, ParserLimits, Role, RouteConnect, ServerInfo};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};

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

    fn route_info(&self) -> ServerInfo {
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
                    add_route_link(&route, acc);
                }
            }
        }));
        for url in &c.routes {
            let s = self.clone();
            let url = url.clone();
            tokio::spawn(async move { s.dial_route(url, None, true).await });
        }
    }

    /// Dials a route until it is established (explicit routes: forever, reconnecting
    /// after drops; implicit ones: `connect_retries` attempts, as nats-server gives up
    /// on implicit routes).
    async fn dial_route(self: Arc<Self>, url: String, expect_id: Option<String>, explicit: bool) {
        // However this returns, the peer's id leaves `dialing`, so gossip can start
        // another dial later.
        let _dialing = DialingGuard {
            server: self.clone(),
            id: expect_id.clone(),
        };
        let (hostport, user, pass) = match parse_route_url(&url) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("Route {e}");
                return;
            }
        };
        let retries = self
            .opts()
            .cluster
            .as_ref()
            .map(|c| c.connect_retries)
            .unwrap_or(0);
        let mut attempt: u32 = 0;
        loop {
            if self.shutdown.is_cancelled() || self.accepting.is_cancelled() {
                return;
            }
            if let Some(id) = &expect_id {
                if self.routes().iter().any(|r| &r.remote_id == id) {
                    return;
                }
            }
            if self.cluster.self_urls.lock().contains(&hostport)
                || url_hostport(&self.cluster.url.lock()) == hostport
            {
                tracing::debug!("Route URL {url} is this server; not dialling it");
                return;
            }
            // An explicit route whose server already connected to us (or was learned by
            // gossip) is not dialled again: a second connection would only be dropped as
            // a duplicate, possibly the one carrying traffic. We check again after it
            // drops.
            if explicit
                && self
                    .routes()
                    .iter()
                    .any(|r| url_hostport(&r.url) == hostport)
            {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ROUTE_RECONNECT) => {}
                }
                continue;
            }
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
                        serve_route(
                            self.clone(),
                            stream,
                            addr,
                            Some((connect, url.clone(), explicit)),
                        )
                        .await;
                        if !explicit {
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
                if attempt == 1 || attempt.is_multiple_of(30) {
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

/// Gives `route` its link for `acc` unless it has one (`register` and the account hook
/// may both see a new account). The link's creation sends our interest in `acc` as RS+.
fn add_route_link(route: &Arc<Route>, acc: &Arc<Account>) {
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
        link.route_account = Some(Bytes::copy_from_slice(acc.name.as_bytes()));
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
    flush: FlushList,
    scratch: Scratch,
    batch: BatchCounters,
    /// The last account a route op named, with its link (see `link_for`).
    last_link: Option<(Arc<Account>, Arc<Link>)>,
}

/// Serves one route connection. `solicit` carries our CONNECT, the URL and whether it
/// was configured, when we dialled.
async fn serve_route(
    server: Arc<Server>,
    stream: TcpStream,
    addr: SocketAddr,
    solicit: Option<(RouteConnect, String, bool)>,
) {
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
    let dial = solicit.as_ref().map(|(_, u, _)| {
        let hp = url_hostport(u);
        let host = hp
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or(hp);
        (u.clone(), host)
    });
    let dial = dial.as_ref().map(|(u, h)| (u.as_str(), h.as_str()));
    let Some(stream) =
        crate::auth::tls::route_handshake(&server.tls(), &server.stats, stream, dial, &conn).await
    else {
        return;
    };
    let info = server.route_info();
    if let Some((connect, _, _)) = &solicit {
        conn.enqueue(|b| canopy_proto::encode_connect(b, connect));
    }
    conn.enqueue(|b| canopy_proto::encode_info(b, &info));
    conn.flush_signal();
    server.register_conn(&conn);
    let (rd, wr) = tokio::io::split(stream);
    let writer = tokio::spawn(writer_loop(conn.clone(), wr, server.liveness()));
    let mut s = RouteSession {
        server: server.clone(),
        connected: solicit.is_some(),
        solicit: solicit.map(|(_, u, e)| (u, e)),
        conn: conn.clone(),
        route: None,
        flush: FlushList::default(),
        scratch: Scratch::default(),
        batch: BatchCounters::default(),
        last_link: None,
    };
    s.read_loop(rd).await;
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
        self.batch.publish(&self.conn, &self.server.stats);
        self.flush.flush();
    }
}

impl RouteSession {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, rd: R) {
        let max_payload = self.server.opts().max_payload as usize;
        let parser = Parser::new(Role::Route, ParserLimits::link(max_payload));
        let auth_timeout = self
            .server
            .opts()
            .cluster
            .as_ref()
            .and_then(|c| c.authorization.as_ref())
            .and_then(|a| a.timeout)
            .unwrap_or(Duration::from_secs(2));
        let conn = self.conn.clone();
        read_ops(&conn, rd, parser, auth_timeout, "Route", self).await;
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
        let route = Arc::new(Route {
            conn: self.conn.clone(),
            remote_id: info.server_id.clone(),
            remote_name: info.server_name.clone(),
            solicited,
            configured: self.solicit.as_ref().is_some_and(|(_, e)| *e),
            url: info.ip.clone(),
            connect_urls: info.connect_urls.clone(),
            leafnode_urls: info.leafnode_urls.clone(),
            jetstream: info.jetstream,
            canopy: !info.canopy_version.is_empty(),
            links: Mutex::new(Vec::new()),
            perms: RoutePerms::from_options(&server.opts()),
        });
        {
            let mut routes = server.cluster.routes.lock();
            if let Some(old) = routes
                .iter()
                .find(|r| r.remote_id == route.remote_id)
                .cloned()
            {
                // Between Canopy servers both sides keep the connection solicited by the
                // server with the smaller id. nats-server keeps the first one registered
                // and drops the newcomer (the smaller id redials if both get dropped), so
                // with a Go peer we do the same.
                let keep_new = !info.canopy_version.is_empty()
                    && old.solicited != route.solicited
                    && route.solicited == (server.id < route.remote_id);
                if keep_new {
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
            routes.push(route.clone());
        }
        {
            let mut m = self.conn.meta.lock();
            m.name = route.remote_name.clone();
        }
        let _ = self.conn.peer_id.set(Arc::from(route.remote_id.as_str()));
        // One link per account: our interest (clients and downlinks) goes out as RS+.
        // Accounts created later get theirs from the hook `start_routes` installs.
        for acc in server.accounts() {
            add_route_link(&route, &acc);
        }
        self.conn.registered.store(true, Ordering::Relaxed);
        self.conn.send_ping();
        tracing::info!(
            "{} - Route connection created to {:?} ({})",
            conn_label(&self.conn),
            route.remote_name,
            if solicited { "solicited" } else { "accepted" }
        );
        // Gossip: tell the other members about the new one, and the new one about them.
        for other in server.routes() {
            if Arc::ptr_eq(&other, &route) {
                continue;
            }
            if !info.ip.is_empty() {
                let fwd = info.clone();
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
        if self
            .last_link
            .as_ref()
            .is_some_and(|(a, _)| a.name.as_bytes() == account)
        {
            return self.last_link.take();
        }
        let route = self.route.as_ref()?;
        let found = route
            .links
            .lock()
            .iter()
            .find(|(a, _)| a.name.as_bytes() == account)
            .cloned();
        if found.is_some() {
            return found;
        }
        // Operator mode: an account the peer uses but we have not needed yet. nats-server
        // looks it up in its resolver here; ours holds the JWTs in memory, so creating
        // it costs no I/O. Its creation hook gives this route its link.
        let name = std::str::from_utf8(account).ok()?;
        let trust = self.server.trust()?;
        trust.account(name)?;
        let acc = self.server.account_for_jwt(name);
        let route = self.route.as_ref()?;
        add_route_link(route, &acc);
        let found = route
            .links
            .lock()
            .iter()
            .find(|(a, _)| Arc::ptr_eq(a, &acc))
            .cloned();
        found
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
        tokio::spawn(self.dial_route(url, Some(id), false));
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
            });
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
