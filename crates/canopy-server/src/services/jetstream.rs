//! JetStream's place in the server: the [`Host`] that canopy-jetstream talks through (three
//! services on the internal service API, one per [`Lane`]), the start-up checks, and the
//! account hook that enables JetStream in the accounts that have it.
//!
//! Which accounts get JetStream (as nats-server decides): with no accounts configured, the
//! global account; with accounts, those whose `jetstream` is enabled (with their limits); in
//! operator mode, accounts whose JWT grants memory or disk storage. Never the system
//! account.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use canopy_conf::{Options, Pos, SyncInterval};
use canopy_jetstream::host::{
    Handler, Host, HostInfo, InlineHandler, JsMsg, Lane, Origin, ReplyFn, RoutePeer, SubId, Via,
};
use canopy_jetstream::{AccountLimits, Config, Engine};
use parking_lot::Mutex;

use crate::core::inbox::{self, InMsg, Offer, Sink};
use crate::server::service::{sync_handler, RequestError, Service, ServiceOpts, SubHandle};
use crate::server::version;
use crate::server::{AccountEvent, Server};

/// nats-server's default for queued API requests (`request_queue_limit`).
const DEFAULT_REQUEST_QUEUE: usize = 10_000;
/// nats-server's default for messages queued for a stream (`max_buffered_msgs`).
const DEFAULT_INGEST_QUEUE: usize = 10_000;
/// Acks and flow control replies waiting for the engine.
const ACK_QUEUE: usize = 65_536;
/// Raft RPCs waiting for the cluster layer (it hands each to its group at once).
const CLUSTER_QUEUE: usize = 8_192;

/// Options of a `jetstream {}` block the server does not act on, refused at start.
pub fn unsupported(o: &Options) -> Vec<(Pos, String)> {
    let mut out = Vec::new();
    let Some(j) = o.jetstream.as_ref().filter(|j| j.enabled) else {
        return out;
    };
    // nats-server's requirements for clustered JetStream: members are named.
    if clustered(o) {
        if o.server_name.as_deref().is_none_or(str::is_empty) {
            out.push((
                j.pos.clone(),
                "jetstream cluster requires `server_name` to be set".into(),
            ));
        }
        if o.cluster
            .as_ref()
            .is_none_or(|c| c.name.as_deref().is_none_or(str::is_empty))
        {
            out.push((
                j.pos.clone(),
                "jetstream cluster requires `cluster.name` to be set".into(),
            ));
        }
    }
    let refused = [
        ("cipher", j.cipher.is_some()),
        ("key", j.key.is_some()),
        ("limits", j.limits.is_some()),
        ("extension_hint", j.extension_hint.is_some()),
        ("max_buffered_size", j.max_buffered_size.is_some()),
        (
            "max_outstanding_catchup",
            j.max_outstanding_catchup.is_some(),
        ),
    ];
    for (key, set) in refused {
        if set {
            out.push((
                j.pos.clone(),
                format!("jetstream.{key} is not supported yet"),
            ));
        }
    }
    out
}

/// Does JetStream run clustered (a `cluster {}` that listens or has routes)?
fn clustered(o: &Options) -> bool {
    o.cluster
        .as_ref()
        .is_some_and(|c| c.port != 0 || !c.routes.is_empty())
}

/// The engine's configuration from the options.
fn config(o: &Options) -> Config {
    let j = o.jetstream.clone().unwrap_or_default();
    let store_dir = j
        .store_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("nats").join("jetstream"));
    // nats-server appends "jetstream" to the configured directory.
    let store_dir = if store_dir.ends_with("jetstream") {
        store_dir
    } else {
        store_dir.join("jetstream")
    };
    let sync = match j.sync_interval {
        Some(SyncInterval::Always) => canopy_store::SyncPolicy::Always,
        Some(SyncInterval::Every(d)) => canopy_store::SyncPolicy::Interval(d),
        None => canopy_store::SyncPolicy::default(),
    };
    Config {
        store_dir,
        max_memory: j.max_memory_store.unwrap_or(-1),
        max_store: j.max_file_store.unwrap_or(-1),
        domain: j.domain.clone().filter(|d| !d.is_empty()),
        sync,
        strict: true,
        request_queue_limit: positive(j.request_queue_limit).unwrap_or(DEFAULT_REQUEST_QUEUE),
        ingest_queue_limit: positive(j.max_buffered_msgs).unwrap_or(DEFAULT_INGEST_QUEUE),
    }
}

fn positive(v: Option<i64>) -> Option<usize> {
    v.filter(|n| *n > 0).map(|n| n as usize)
}

/// Starts JetStream when it is enabled: the engine, its services, and the account hook.
pub fn start(server: &Arc<Server>) -> anyhow::Result<Option<Arc<Engine>>> {
    let o = server.opts();
    let Some(j) = o.jetstream.as_ref().filter(|j| j.enabled) else {
        return Ok(None);
    };
    let cfg = config(&o);
    tracing::info!("Starting JetStream");
    log_config(&cfg);
    let host = JsHost::start(
        server,
        positive(j.max_buffered_msgs).unwrap_or(DEFAULT_INGEST_QUEUE),
        cfg.request_queue_limit,
    );
    let engine = Engine::start(cfg, host.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    server.set_jetstream(engine.clone());
    let (s, e) = (Arc::downgrade(server), engine.clone());
    server.on_account(Arc::new(move |acc, ev| {
        let Some(server) = s.upgrade() else {
            return;
        };
        match ev {
            AccountEvent::Created => match account_limits(&server, &acc.name) {
                Some(limits) => {
                    if let Err(err) = e.enable_account(&acc.name, limits) {
                        tracing::error!("JetStream: account {}: {err}", acc.name);
                    }
                }
                None if acc.name != server.system_account => not_enabled(&host, &acc.name),
                None => {}
            },
            AccountEvent::Removed => e.disable_account(&acc.name),
        }
    }));
    if clustered(&o) {
        let opts = canopy_jetstream::cluster::ClusterOptions {
            unique_tag: j.unique_tag.clone().filter(|t| !t.is_empty()),
        };
        // The cluster's Raft groups and RPC handlers run on the links runtime, with the
        // routes they travel on.
        let links = crate::process::links::handle();
        let _links = links.enter();
        engine
            .start_cluster(opts)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tracing::info!("JetStream started");
    Ok(Some(engine))
}

/// Answers the `$JS.API` of an account without JetStream with nats-server's
/// `503 / 10039` (the server has JetStream, the account does not).
fn not_enabled(host: &Arc<JsHost>, account: &str) {
    let h = Arc::downgrade(host);
    let handler: Handler = Arc::new(move |m: JsMsg| {
        let (Some(host), Some(reply)) = (h.upgrade(), m.reply.as_deref()) else {
            return;
        };
        let body = serde_json::json!({
            "type": "io.nats.jetstream.api.v1.account_info_response",
            "error": {"code": 503, "err_code": 10039,
                      "description": "jetstream not enabled for account"},
        });
        host.publish(&m.account, reply, None, None, body.to_string().as_bytes());
    });
    if let Err(e) = host.subscribe(account, "$JS.API.>", None, Lane::Api, handler) {
        tracing::error!("JetStream: account {account}: {e}");
    }
}

fn log_config(cfg: &Config) {
    let size = |v: i64| {
        if v < 0 {
            "unlimited".to_string()
        } else {
            format!("{v} B")
        }
    };
    tracing::info!("---------------- JETSTREAM ----------------");
    tracing::info!("  Max Memory:      {}", size(cfg.max_memory));
    tracing::info!("  Max Storage:     {}", size(cfg.max_store));
    tracing::info!("  Store Directory: \"{}\"", cfg.store_dir.display());
    if let Some(d) = &cfg.domain {
        tracing::info!("  Domain:          {d}");
    }
    tracing::info!("-------------------------------------------");
}

/// The JetStream limits of an account, or `None` when the account has no JetStream.
fn account_limits(server: &Server, account: &str) -> Option<AccountLimits> {
    if account == server.system_account {
        return None;
    }
    let o = server.opts();
    if let Some(trust) = server.trust() {
        let jwt = trust.account(account)?;
        let l = &jwt.claims.nats.limits;
        if l.mem_storage == 0 && l.disk_storage == 0 {
            return None;
        }
        return Some(AccountLimits {
            max_memory: l.mem_storage,
            max_store: l.disk_storage,
            max_streams: l.streams,
            max_consumers: l.consumer,
            max_ack_pending: l.max_ack_pending,
            memory_max_stream_bytes: l.mem_max_stream_bytes,
            store_max_stream_bytes: l.disk_max_stream_bytes,
            max_bytes_required: l.max_bytes_required,
        });
    }
    if o.accounts.is_empty() {
        return (account == crate::core::account::GLOBAL_ACCOUNT).then(AccountLimits::default);
    }
    let a = o.account(account)?.jetstream.as_ref()?;
    if !a.enabled {
        return None;
    }
    let v = |x: Option<i64>| x.unwrap_or(-1);
    Some(AccountLimits {
        max_memory: v(a.max_memory),
        max_store: v(a.max_file),
        max_streams: v(a.max_streams),
        max_consumers: v(a.max_consumers),
        max_ack_pending: v(a.max_ack_pending),
        memory_max_stream_bytes: v(a.memory_max_stream_bytes),
        store_max_stream_bytes: v(a.store_max_stream_bytes),
        max_bytes_required: a.max_bytes_required,
    })
}

/// A [`Host::subscribe_inline`] subscription: the handler runs on the delivering reader;
/// what it takes and refuses is counted in its lane's service stats.
struct InlineSink {
    handler: InlineHandler,
    stats: Arc<crate::server::service::ServiceStats>,
}

impl Sink for InlineSink {
    fn offer(&self, msg: InMsg) -> Offer {
        if (self.handler)(js_msg(msg)) {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            Offer::Accepted
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            Offer::Full
        }
    }
}

/// The server side of [`Host`].
pub struct JsHost {
    server: Arc<Server>,
    lanes: HashMap<Lane, Arc<Service>>,
    subs: Mutex<HashMap<u64, SubHandle>>,
    next_sub: AtomicU64,
    /// Where [`Host::request`] runs (engine threads are not tokio's).
    rt: Option<tokio::runtime::Handle>,
}

impl JsHost {
    /// Starts one service per lane.
    pub fn start(server: &Arc<Server>, ingest_queue: usize, api_queue: usize) -> Arc<JsHost> {
        let lane = |name: &str, queue_len: usize, workers: usize| {
            Service::start(server, name, ServiceOpts { queue_len, workers })
        };
        let lanes = HashMap::from([
            (Lane::Api, lane("jetstream.api", api_queue, 1)),
            (Lane::Ingest, lane("jetstream.ingest", ingest_queue, 1)),
            (Lane::Ack, lane("jetstream.ack", ACK_QUEUE, 1)),
            (Lane::Cluster, lane("jetstream.cluster", CLUSTER_QUEUE, 1)),
        ]);
        Arc::new(JsHost {
            server: server.clone(),
            lanes,
            subs: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(1),
            rt: tokio::runtime::Handle::try_current().ok(),
        })
    }
}

impl JsHost {
    /// Subscribes through `lane`'s service with `sub` and records the subscription.
    fn subscribe_with(
        &self,
        account: &str,
        lane: Lane,
        sub: impl FnOnce(
            &Service,
            &Arc<crate::core::account::Account>,
        ) -> Result<SubHandle, RequestError>,
    ) -> Result<SubId, String> {
        let acc = self
            .server
            .account(account)
            .ok_or_else(|| format!("account {account} does not exist"))?;
        let svc = self
            .lanes
            .get(&lane)
            .ok_or_else(|| format!("no service for lane {lane:?}"))?;
        let handle = sub(svc, &acc).map_err(|e| e.to_string())?;
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        self.subs.lock().insert(id, handle);
        Ok(SubId(id))
    }

    /// Runs `f` with the service that publishes for JetStream (the API lane's: its own
    /// subscriptions never hear it) and the account; 0 when the account is gone.
    fn with_sender(
        &self,
        account: &str,
        f: impl FnOnce(&Service, &crate::core::account::Account) -> u64,
    ) -> u64 {
        match (self.server.account(account), self.lanes.get(&Lane::Api)) {
            (Some(acc), Some(svc)) => f(svc, &acc),
            _ => 0,
        }
    }
}

fn js_msg(m: InMsg) -> JsMsg {
    let via = match m.origin.via {
        inbox::Via::Client => Via::Client,
        inbox::Via::Route => Via::Route,
        inbox::Via::Leaf => Via::Leaf,
        inbox::Via::Internal => Via::Internal,
    };
    JsMsg {
        account: m.origin.account,
        subject: m.subject,
        reply: m.reply,
        headers: m.headers,
        payload: m.payload,
        origin: Origin {
            cid: m.origin.cid,
            user: m.origin.user,
            server: m.origin.server,
            via,
        },
    }
}

impl Host for JsHost {
    fn subscribe(
        &self,
        account: &str,
        subject: &str,
        queue: Option<&str>,
        lane: Lane,
        handler: Handler,
    ) -> Result<SubId, String> {
        self.subscribe_with(account, lane, |svc, acc| {
            let h = sync_handler(move |m| {
                handler(js_msg(m));
                Ok(())
            });
            svc.subscribe(acc, subject, queue, h)
        })
    }

    fn subscribe_inline(
        &self,
        account: &str,
        subject: &str,
        queue: Option<&str>,
        lane: Lane,
        handler: InlineHandler,
    ) -> Result<SubId, String> {
        self.subscribe_with(account, lane, |svc, acc| {
            let sink = InlineSink {
                handler,
                stats: svc.stats.clone(),
            };
            svc.subscribe_sink(acc, subject, queue, Arc::new(sink))
        })
    }

    fn batch(&self, direct: bool, f: &mut dyn FnMut()) {
        crate::server::service::with_deferred_flush(direct, f)
    }

    fn unsubscribe(&self, id: SubId) {
        if let Some(h) = self.subs.lock().remove(&id.0) {
            if let Some(svc) = self.lanes.get(&Lane::Api) {
                svc.unsubscribe(&h);
            }
        }
    }

    fn publish(
        &self,
        account: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.with_sender(account, |svc, acc| {
            svc.publish(acc, subject, reply, headers, payload)
        })
    }

    fn deliver(
        &self,
        account: &str,
        deliver_to: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.with_sender(account, |svc, acc| {
            svc.deliver(acc, deliver_to, subject, reply, headers, payload)
        })
    }

    /// Sent by the ack lane's service: the API lane (which publishes the answers and
    /// subscribes `$JS.API.>`) hears it, so a stream can ask its own server.
    fn request(
        &self,
        account: &str,
        subject: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
        timeout: std::time::Duration,
        done: ReplyFn,
    ) {
        let (Some(acc), Some(svc), Some(rt)) = (
            self.server.account(account),
            self.lanes.get(&Lane::Ack).cloned(),
            self.rt.as_ref(),
        ) else {
            return done(None);
        };
        let (subject, headers, payload) = (
            subject.to_string(),
            headers.map(<[u8]>::to_vec),
            payload.to_vec(),
        );
        rt.spawn(async move {
            let r = svc
                .request(&acc, &subject, headers.as_deref(), &payload, timeout)
                .await;
            done(r.ok().map(js_msg));
        });
    }

    /// As [`Host::request`], but the request is published in the caller's context and
    /// the reply completes the returned future directly (no host task per request).
    fn request_future(
        &self,
        account: &str,
        subject: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
        timeout: std::time::Duration,
    ) -> Pin<Box<dyn Future<Output = Option<JsMsg>> + Send + 'static>> {
        let (Some(acc), Some(svc)) = (self.server.account(account), self.lanes.get(&Lane::Ack))
        else {
            return Box::pin(std::future::ready(None));
        };
        match svc.send_request(&acc, subject, headers, payload) {
            Ok(pending) => Box::pin(async move { pending.wait(timeout).await.ok().map(js_msg) }),
            Err(_) => Box::pin(std::future::ready(None)),
        }
    }

    fn has_interest(&self, account: &str, subject: &str) -> bool {
        self.server
            .account(account)
            .is_some_and(|a| a.sublist.has_interest(subject))
    }

    fn info(&self) -> HostInfo {
        let cluster = self.server.cluster_name();
        let o = self.server.opts();
        HostInfo {
            server_id: self.server.id.clone(),
            server_name: self.server.name.clone(),
            cluster: (!cluster.is_empty()).then_some(cluster),
            version: version::NATS_COMPAT_VERSION.to_string(),
            max_payload: usize::try_from(o.max_payload).unwrap_or(usize::MAX),
            system_account: Some(self.server.system_account.clone()),
            tags: o.server_tags.clone(),
            clustered: clustered(&o),
            configured_routes: self.server.configured_route_peers(),
        }
    }

    fn route_peers(&self) -> Vec<RoutePeer> {
        // A pooled peer has several route connections (pool slots, pinned accounts): one
        // entry per server.
        let mut seen = std::collections::HashSet::new();
        self.server
            .routes()
            .iter()
            .filter(|r| seen.insert(r.remote_id.clone()))
            .map(|r| RoutePeer {
                name: r.remote_name.clone(),
                id: r.remote_id.clone(),
                jetstream: r.jetstream,
                canopy: r.canopy,
            })
            .collect()
    }
}

/// The store directory a configuration would use (for `-t` output and docs).
pub fn store_dir(o: &Options) -> PathBuf {
    config(o).store_dir
}
