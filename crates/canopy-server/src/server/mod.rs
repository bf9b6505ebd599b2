//! The server: identity, options (swapped on reload), accounts, the connection registry,
//! listeners, lame duck mode and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use canopy_conf::Options;
use canopy_proto::ServerInfo;
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod accounts;
pub mod events;
pub mod links;
pub mod logging;
pub mod service;
pub mod spool;
pub mod version;

use crate::auth::users::ClientAuth;
use crate::core::account::{Account, GLOBAL_ACCOUNT, SYSTEM_ACCOUNT};
use crate::core::conn::{conn_label, CloseReason, ConnKind, ConnShared, Liveness};
pub use crate::core::stats::{ClosedConn, ServerStats};

const CLOSED_RING: usize = 10_000;

pub struct Server {
    pub id: String,
    pub name: String,
    pub start: SystemTime,
    opts: RwLock<Arc<Options>>,
    auth: RwLock<Arc<ClientAuth>>,
    ws_auth: RwLock<Arc<ClientAuth>>,
    accounts: RwLock<HashMap<String, Arc<Account>>>,
    global: Arc<Account>,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
    /// Notified whenever a connection is forgotten (shutdown waits on it).
    conn_removed: tokio::sync::Notify,
    pub closed: Mutex<std::collections::VecDeque<ClosedConn>>,
    next_cid: AtomicU64,
    pub stats: ServerStats,
    /// Cancelled to stop accepting (lame duck mode, shutdown).
    pub accepting: CancellationToken,
    /// Cancelled when the server is shutting down.
    pub shutdown: CancellationToken,
    /// How far leaves' store-and-forward replays got here (see [`spool::Marks`]).
    pub spool_marks: spool::Marks,
    pub ldm: AtomicBool,
    pub client_addr: Mutex<Option<SocketAddr>>,
    pub http_addr: Mutex<Option<SocketAddr>>,
    /// The leafnode and route listeners' addresses once bound (`/varz` shows the real
    /// ports when the configuration asked for a random one).
    pub leaf_addr: Mutex<Option<SocketAddr>>,
    pub route_addr: Mutex<Option<SocketAddr>>,
    /// The websocket listener's address once bound.
    pub ws_addr: Mutex<Option<SocketAddr>>,
    pub config_load_time: Mutex<SystemTime>,
    pub system_account: String,
    remotes: Mutex<Vec<Arc<links::RemoteState>>>,
    pub cluster: links::Cluster,
    /// Our leafnode URL (`nats-leaf://host:port`) once listening.
    pub leaf_url: Mutex<Option<String>>,
    /// Operator (JWT) mode: trusted operators and the account resolver.
    trust: Option<Arc<crate::auth::jwt::Trust>>,
    /// TLS configurations built from the options (empty until [`Server::set_tls`]).
    tls: RwLock<Arc<crate::auth::tls::TlsSet>>,
    /// In-process services' counters, by name.
    services: Mutex<Vec<(String, Arc<service::ServiceStats>)>>,
    /// Code that runs when an account appears or goes away.
    account_hooks: RwLock<Vec<AccountHook>>,
    /// The JetStream engine, when JetStream is enabled.
    jetstream: std::sync::OnceLock<Arc<canopy_jetstream::Engine>>,
}

/// What happened to an account, for [`Server::on_account`] hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// The account exists now: from the configuration at start, or created at run time
    /// (operator mode resolves its JWT).
    Created,
    /// The account is going away (the server is shutting down).
    Removed,
}

/// A hook registered with [`Server::on_account`].
pub type AccountHook = Arc<dyn Fn(&Arc<Account>, AccountEvent) + Send + Sync>;

impl Server {
    /// Builds the server state from validated options.
    pub fn new(opts: Options) -> Arc<Server> {
        let id = nkeys::KeyPair::new_server().public_key();
        let name = opts.server_name.clone().unwrap_or_else(|| id.clone());
        let cache = !opts.disable_sublist_cache;
        let track = opts.leafnodes.is_some() || opts.cluster.is_some();
        let global = Account::new(GLOBAL_ACCOUNT, cache, track);
        let mut accounts = HashMap::new();
        accounts.insert(GLOBAL_ACCOUNT.to_string(), global.clone());
        for a in &opts.accounts {
            accounts.insert(a.name.clone(), Account::new(&a.name, cache, track));
        }
        let system_account = opts
            .system_account
            .clone()
            .unwrap_or_else(|| SYSTEM_ACCOUNT.to_string());
        accounts
            .entry(system_account.clone())
            .or_insert_with(|| Account::new(&system_account, cache, track));
        // Mappings were checked when the options were loaded (`mapping::validate`).
        let cluster = opts.cluster.as_ref().and_then(|c| c.name.as_deref());
        let configured = std::iter::once((GLOBAL_ACCOUNT, &opts.mappings))
            .chain(opts.accounts.iter().map(|a| (a.name.as_str(), &a.mappings)));
        for (name, ms) in configured {
            let Some(acc) = accounts.get(name).filter(|_| !ms.is_empty()) else {
                continue;
            };
            match crate::core::mapping::Mappings::new(ms, cluster) {
                Ok(m) => acc.set_mappings(m),
                Err(e) => tracing::error!("account {name}: {e}"),
            }
        }
        let trust = crate::auth::jwt::Trust::for_server(&opts);
        let auth = ClientAuth::from_options(&opts).with_trust(trust.clone());
        let ws_auth = ClientAuth::for_websocket(&opts).with_trust(trust.clone());
        Arc::new(Server {
            id,
            name,
            start: SystemTime::now(),
            opts: RwLock::new(Arc::new(opts)),
            auth: RwLock::new(Arc::new(auth)),
            ws_auth: RwLock::new(Arc::new(ws_auth)),
            accounts: RwLock::new(accounts),
            global,
            conns: Mutex::new(HashMap::new()),
            conn_removed: tokio::sync::Notify::new(),
            closed: Mutex::new(std::collections::VecDeque::new()),
            next_cid: AtomicU64::new(1),
            stats: ServerStats::default(),
            accepting: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            spool_marks: spool::Marks::default(),
            ldm: AtomicBool::new(false),
            client_addr: Mutex::new(None),
            http_addr: Mutex::new(None),
            leaf_addr: Mutex::new(None),
            route_addr: Mutex::new(None),
            ws_addr: Mutex::new(None),
            config_load_time: Mutex::new(SystemTime::now()),
            system_account,
            remotes: Mutex::new(Vec::new()),
            cluster: links::Cluster::default(),
            leaf_url: Mutex::new(None),
            trust,
            tls: RwLock::new(Arc::new(crate::auth::tls::TlsSet::default())),
            services: Mutex::new(Vec::new()),
            account_hooks: RwLock::new(Vec::new()),
            jetstream: std::sync::OnceLock::new(),
        })
    }

    pub fn opts(&self) -> Arc<Options> {
        self.opts.read().clone()
    }

    /// The TLS configurations in force.
    pub fn tls(&self) -> Arc<crate::auth::tls::TlsSet> {
        self.tls.read().clone()
    }

    /// Installs TLS configurations built (and checked) from the options.
    pub fn set_tls(&self, set: crate::auth::tls::TlsSet) {
        *self.tls.write() = Arc::new(set);
    }

    pub fn client_auth(&self) -> Arc<ClientAuth> {
        self.auth.read().clone()
    }

    /// The authentication table for websocket clients ([`ClientAuth::for_websocket`]).
    pub fn ws_client_auth(&self) -> Arc<ClientAuth> {
        self.ws_auth.read().clone()
    }

    pub fn global_account(&self) -> Arc<Account> {
        self.global.clone()
    }

    /// The operator-mode trust (`None` outside operator mode).
    pub fn trust(&self) -> Option<Arc<crate::auth::jwt::Trust>> {
        self.trust.clone()
    }

    /// Adds an account unless one with its name exists; returns the one in use. A new
    /// account runs the [`Server::on_account`] hooks.
    pub fn insert_account(&self, acc: Arc<Account>) -> Arc<Account> {
        let (acc, created) = {
            let mut map = self.accounts.write();
            match map.get(&acc.name) {
                Some(existing) => (existing.clone(), false),
                None => {
                    map.insert(acc.name.clone(), acc.clone());
                    (acc, true)
                }
            }
        };
        if created {
            let hooks = self.account_hooks.read().clone();
            for h in hooks {
                h(&acc, AccountEvent::Created);
            }
        }
        acc
    }

    /// Installs the JetStream engine (once, at start).
    pub fn set_jetstream(&self, engine: Arc<canopy_jetstream::Engine>) {
        let _ = self.jetstream.set(engine);
    }

    /// The JetStream engine, when JetStream is enabled.
    pub fn jetstream(&self) -> Option<&Arc<canopy_jetstream::Engine>> {
        self.jetstream.get()
    }

    /// The JetStream domain, when JetStream is on and has one.
    pub fn js_domain(&self) -> Option<String> {
        self.jetstream()?;
        self.opts()
            .jetstream
            .as_ref()
            .and_then(|j| j.domain.clone())
            .filter(|d| !d.is_empty())
    }

    /// Registers code to run for every account: at once for those that exist, then for
    /// each account created later and for each account removed.
    pub fn on_account(&self, hook: AccountHook) {
        // Registered first, so that an account created meanwhile is not missed; a hook
        // may then see `Created` twice for it, and must be idempotent.
        self.account_hooks.write().push(hook.clone());
        for acc in self.accounts() {
            hook(&acc, AccountEvent::Created);
        }
    }

    /// Runs the `Removed` hooks for every account (shutdown).
    fn accounts_removed(&self) {
        // Taken: the hooks run once, and no account is created after this.
        let hooks = std::mem::take(&mut *self.account_hooks.write());
        if hooks.is_empty() {
            return;
        }
        for acc in self.accounts() {
            for h in &hooks {
                h(&acc, AccountEvent::Removed);
            }
        }
    }

    pub fn account(&self, name: &str) -> Option<Arc<Account>> {
        self.accounts.read().get(name).cloned()
    }

    pub fn accounts(&self) -> Vec<Arc<Account>> {
        let mut v: Vec<_> = self.accounts.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn next_cid(&self) -> u64 {
        self.next_cid.fetch_add(1, Ordering::Relaxed)
    }

    pub fn liveness(&self) -> Liveness {
        let o = self.opts();
        Liveness {
            ping_interval: o.ping_interval.max(Duration::from_millis(10)),
            ping_max: o.ping_max,
            write_deadline: o.write_deadline.max(Duration::from_millis(10)),
        }
    }

    /// The outbound bound of a leaf or route connection: `max_pending`, as for clients
    /// (nats-server applies it to every kind).
    pub fn link_max_pending(&self) -> usize {
        usize::try_from(self.opts().max_pending)
            .unwrap_or(usize::MAX)
            .max(64 * 1024)
    }

    /// Interest entries a leaf link may give us: `max_subscriptions` (0 = unlimited), as
    /// nats-server bounds a leaf connection's subscriptions. Routes carry the whole
    /// cluster's interest and are not bounded by it (nor are they in nats-server).
    pub fn link_max_subs(&self) -> usize {
        usize::try_from(self.opts().max_subscriptions).unwrap_or(usize::MAX)
    }

    /// Registers a new client connection unless `max_connections` is reached.
    pub fn admit_client(&self, conn: &Arc<ConnShared>) -> bool {
        let max = self.opts().max_connections as usize;
        let mut conns = self.conns.lock();
        let clients = conns
            .values()
            .filter(|c| c.kind == ConnKind::Client)
            .count();
        if max > 0 && clients >= max {
            return false;
        }
        conns.insert(conn.cid, conn.clone());
        self.stats.total_connections.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Registers a non-client connection (leaf, route): no `max_connections` check.
    pub fn register_conn(&self, conn: &Arc<ConnShared>) {
        self.conns.lock().insert(conn.cid, conn.clone());
    }

    /// Records a configured remote's live state (for `/leafz` and metrics).
    pub fn add_remote_state(&self, state: Arc<links::RemoteState>) {
        self.remotes.lock().push(state);
    }

    pub fn remote_states(&self) -> Vec<Arc<links::RemoteState>> {
        self.remotes.lock().clone()
    }

    /// Forgets a closed connection, counting slow consumers and keeping it for `/connz`.
    pub fn remove_conn(&self, conn: &Arc<ConnShared>) {
        self.conns.lock().remove(&conn.cid);
        self.conn_removed.notify_waiters();
        let reason = conn.close_reason().unwrap_or(CloseReason::ClientClosed);
        match reason {
            CloseReason::SlowConsumerPendingBytes | CloseReason::SlowConsumerWriteDeadline => {
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                let (by_kind, what) = match conn.kind {
                    ConnKind::Client => (&self.stats.slow_consumers_clients, "client"),
                    ConnKind::Route => (&self.stats.slow_consumers_routes, "route"),
                    ConnKind::Leaf => (&self.stats.slow_consumers_leafs, "leafnode"),
                };
                by_kind.fetch_add(1, Ordering::Relaxed);
                let name = conn.meta.lock().name.clone();
                if conn.kind == ConnKind::Client {
                    tracing::warn!("{} - Slow Consumer Detected: {reason}", conn_label(conn));
                } else {
                    // Links reconnect (the soliciting side dials again); the name says
                    // which peer fell behind.
                    tracing::warn!(
                        "{} - Slow Consumer Detected: {what} {name:?} closed: {reason} (max_pending {} bytes, write_deadline {:?}); it will reconnect",
                        conn_label(conn),
                        conn.max_pending(),
                        self.liveness().write_deadline
                    );
                }
            }
            _ => tracing::debug!("{} - Client connection closed: {reason}", conn_label(conn)),
        }
        if conn.kind != ConnKind::Client {
            return;
        }
        let m = conn.meta.lock().clone();
        let mut closed = self.closed.lock();
        if closed.len() >= CLOSED_RING {
            closed.pop_front();
        }
        closed.push_back(ClosedConn {
            cid: conn.cid,
            addr: conn.addr,
            start: conn.start,
            stop: SystemTime::now(),
            reason: reason.to_string(),
            name: m.name,
            lang: m.lang,
            version: m.version,
            account: m.account,
            user: m.user,
            in_msgs: conn.stats.in_msgs.load(Ordering::Relaxed),
            out_msgs: conn.stats.out_msgs.load(Ordering::Relaxed),
            in_bytes: conn.stats.in_bytes.load(Ordering::Relaxed),
            out_bytes: conn.stats.out_bytes.load(Ordering::Relaxed),
        });
    }

    pub fn connections(&self) -> Vec<Arc<ConnShared>> {
        let mut v: Vec<_> = self.conns.lock().values().cloned().collect();
        v.sort_by_key(|c| c.cid);
        v
    }

    pub fn num_clients(&self) -> usize {
        self.conns
            .lock()
            .values()
            .filter(|c| c.kind == ConnKind::Client)
            .count()
    }

    /// The INFO a client sees on connect.
    pub fn client_info(
        &self,
        cid: u64,
        addr: SocketAddr,
        nonce: &str,
        auth_required: bool,
    ) -> ServerInfo {
        let o = self.opts();
        let (host, port) = self.advertised_client_hostport(&o);
        ServerInfo {
            server_id: self.id.clone(),
            server_name: self.name.clone(),
            version: version::NATS_COMPAT_VERSION.to_string(),
            proto: version::CLIENT_PROTO,
            go: version::RUNTIME.to_string(),
            host,
            port,
            headers: !o.no_header_support,
            auth_required,
            max_payload: o.max_payload as i64,
            client_id: cid,
            client_ip: addr.ip().to_string(),
            nonce: nonce.to_string(),
            tls_required: o.tls.is_some() && !o.allow_non_tls,
            tls_verify: o.tls.as_ref().is_some_and(|t| t.verify),
            tls_available: o.tls.is_some() && o.allow_non_tls,
            ldm: self.ldm.load(Ordering::Relaxed),
            canopy_version: version::CANOPY_VERSION.to_string(),
            jetstream: self.jetstream().is_some(),
            domain: self.js_domain().unwrap_or_default(),
            cluster: self.cluster_name(),
            // `cluster { no_advertise }`: clients are not told of the other members.
            connect_urls: if o.cluster.as_ref().is_some_and(|c| !c.no_advertise) {
                self.cluster_client_urls()
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn advertised_client_hostport(&self, o: &Options) -> (String, u16) {
        let addr = *self.client_addr.lock();
        let host = o.host.clone();
        let port = addr.map(|a| a.port()).unwrap_or(o.port.max(0) as u16);
        (host, port)
    }

    /// Counts a protocol error that nats-server would count (max payload violations).
    pub fn note_proto_error(&self, e: &canopy_proto::ProtoError) {
        if matches!(e, canopy_proto::ProtoError::MaxPayload { .. }) {
            self.stats
                .max_payload_violations
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Swaps in reloaded options (the caller has checked they may change live).
    pub fn apply_reload(&self, opts: Options) {
        let auth = ClientAuth::from_options(&opts).with_trust(self.trust.clone());
        let ws_auth = ClientAuth::for_websocket(&opts).with_trust(self.trust.clone());
        crate::server::logging::update(opts.debug, opts.trace, opts.logtime, opts.logtime_utc);
        *self.auth.write() = Arc::new(auth);
        *self.ws_auth.write() = Arc::new(ws_auth);
        *self.opts.write() = Arc::new(opts);
        *self.config_load_time.lock() = SystemTime::now();
    }

    /// Accepts connections on `listener` until `until` is cancelled, handing each to
    /// `serve` on a task of its own; `what` names the listener in errors.
    pub async fn accept_loop<F, Fut>(
        self: Arc<Self>,
        listener: TcpListener,
        until: CancellationToken,
        what: &'static str,
        serve: F,
    ) where
        F: Fn(Arc<Server>, tokio::net::TcpStream, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            let accepted = tokio::select! {
                _ = until.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    // Dual-stack listeners see IPv4 peers as `::ffff:a.b.c.d`; report
                    // them as IPv4, as nats-server does.
                    let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
                    tokio::spawn(serve(self.clone(), stream, addr));
                }
                Err(e) => {
                    tracing::error!("Error accepting {what} connection: {e}");
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Lame duck mode: stop accepting, tell clients (INFO `ldm`), then close them spread
    /// over `lame_duck_duration` after the grace period, then shut down.
    pub async fn lame_duck(self: Arc<Self>) {
        if self.ldm.swap(true, Ordering::SeqCst) {
            return;
        }
        let o = self.opts();
        tracing::info!("Entering lame duck mode, stop accepting new clients");
        self.accepting.cancel();
        let conns = self.connections();
        for c in conns.iter().filter(|c| c.kind == ConnKind::Client) {
            let info = ServerInfo {
                server_id: self.id.clone(),
                server_name: self.name.clone(),
                version: version::NATS_COMPAT_VERSION.to_string(),
                proto: version::CLIENT_PROTO,
                ldm: true,
                ..Default::default()
            };
            c.enqueue(|b| canopy_proto::encode_info(b, &info));
            c.flush_signal();
        }
        let grace = o.lame_duck_grace_period;
        let total = o.lame_duck_duration;
        tokio::select! {
            _ = self.shutdown.cancelled() => return,
            _ = tokio::time::sleep(grace.min(total)) => {}
        }
        let conns = self.connections();
        let spread = total.saturating_sub(grace);
        let n = conns.len().max(1) as u32;
        let step = spread / n;
        for c in conns {
            c.close(CloseReason::LameDuck);
            if !step.is_zero() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(step) => {}
                }
            }
        }
        self.accounts_removed();
        self.shutdown.cancel();
    }

    /// Waits until every registered connection has been forgotten (its writer flushed and
    /// shut the socket), at most `within`.
    pub async fn wait_connections_closed(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.conn_removed.notified();
            tokio::pin!(notified);
            // Registered before checking, so a removal in between is not missed.
            notified.as_mut().enable();
            if self.conns.lock().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Closes every connection and stops everything.
    pub fn shutdown_now(&self) {
        self.accepting.cancel();
        for c in self.connections() {
            c.close(CloseReason::ServerShutdown);
        }
        self.accounts_removed();
        self.shutdown.cancel();
    }
}
