//! The engine: configuration, the store-directory lock, accounts (enable, recover, disable),
//! the bounded API worker pool, the subscriptions each account gets (`$JS.API.>` on
//! [`Lane::Api`]; stream subjects and `$JS.ACK.>`/`$JS.FC.>` inline, under the counters of
//! [`Lane::Ingest`] and [`Lane::Ack`]: the client's reader sends each publish or ack to the
//! stream's thread, at most `ingest_queue_limit` of them waiting there), and the
//! monitoring views (`/varz` `jetstream`, `/jsz`, health).
//!
//! Layout under `store_dir` (the server passes nats-server's `<store_dir>/jetstream`):
//! `<account>/streams/<stream>/meta.json` (config and creation time) next to the
//! canopy-store files, and `obs/<consumer>/meta.json` beside each consumer's state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, Weak};

use canopy_store::{
    FileConsumerStore, FileStore, FileStoreOptions, LockGuard, MemConsumerStore, MemStore, StdFs,
    SyncPolicy,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api;
use crate::consumer::Consumer;
use crate::host::{Host, JsMsg, Lane, SubId};
use crate::stream::{Cmd, StreamCore, StreamHandle};
use crate::types::{ConsumerConfig, StorageType, StreamConfig};
use crate::util::{now_ns, rfc3339};

/// API worker threads.
const API_WORKERS: usize = 2;

/// The engine's configuration (from the server's `jetstream {}` block).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where streams live (nats-server's `<store_dir>/jetstream`).
    pub store_dir: PathBuf,
    /// Bytes of memory storage; -1: unlimited.
    pub max_memory: i64,
    /// Bytes of file storage; -1: auto/unlimited.
    pub max_store: i64,
    pub domain: Option<String>,
    pub sync: SyncPolicy,
    pub strict: bool,
    /// API requests queued before new ones are refused with a 503.
    pub request_queue_limit: usize,
    /// Messages queued for one stream's thread before new ones are refused with a 503
    /// (nats-server's `max_buffered_msgs`).
    pub ingest_queue_limit: usize,
}

/// Per-account JetStream limits; -1 means unlimited.
#[derive(Debug, Clone)]
pub struct AccountLimits {
    pub max_memory: i64,
    pub max_store: i64,
    pub max_streams: i64,
    pub max_consumers: i64,
    pub max_ack_pending: i64,
    pub memory_max_stream_bytes: i64,
    pub store_max_stream_bytes: i64,
    pub max_bytes_required: bool,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            max_memory: -1,
            max_store: -1,
            max_streams: -1,
            max_consumers: -1,
            max_ack_pending: -1,
            memory_max_stream_bytes: -1,
            store_max_stream_bytes: -1,
            max_bytes_required: false,
        }
    }
}

impl AccountLimits {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "max_memory": self.max_memory,
            "max_storage": self.max_store,
            "max_streams": self.max_streams,
            "max_consumers": self.max_consumers,
            "max_ack_pending": self.max_ack_pending,
            "memory_max_stream_bytes": self.memory_max_stream_bytes,
            "storage_max_stream_bytes": self.store_max_stream_bytes,
            "max_bytes_required": self.max_bytes_required,
        })
    }
}

/// Why the engine could not start or enable an account.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("JetStream store directory {} is in use by another server: {source}", dir.display())]
    Locked {
        dir: PathBuf,
        #[source]
        source: canopy_store::StoreError,
    },
    #[error("JetStream store: {0}")]
    Store(#[from] canopy_store::StoreError),
    #[error("JetStream I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JetStream could not subscribe to {subject} in account {account}: {reason}")]
    Subscribe {
        account: String,
        subject: String,
        reason: String,
    },
}

/// A stream's persisted metadata.
#[derive(Serialize, Deserialize)]
pub(crate) struct StreamMeta {
    pub config: StreamConfig,
    pub created: i64,
    /// The stream's identity for its lifetime (random, made at creation; streams from
    /// before it existed get one when first recovered). Sources use it to notice that an
    /// origin was deleted and created again (nats-server #6206).
    #[serde(default)]
    pub uid: String,
}

/// A consumer's persisted metadata.
#[derive(Serialize, Deserialize)]
pub(crate) struct ConsumerMeta {
    pub name: String,
    pub config: ConsumerConfig,
    pub created: i64,
}

/// A JetStream-enabled account.
pub(crate) struct Account {
    pub name: Arc<str>,
    pub limits: RwLock<AccountLimits>,
    pub dir: PathBuf,
    pub streams: RwLock<BTreeMap<String, Arc<StreamHandle>>>,
    pub subs: Mutex<Vec<SubId>>,
    pub api_total: AtomicU64,
    pub api_errors: AtomicU64,
    /// Serialises stream create/update/delete in the account.
    pub admin: Mutex<()>,
}

impl Account {
    pub fn stream(&self, name: &str) -> Option<Arc<StreamHandle>> {
        self.streams.read().get(name).cloned()
    }

    /// The stream that answers Direct Gets for `name`: the stream itself when it allows
    /// them, else (the origin not being here, e.g. across a leaf link) a local mirror of it
    /// with `mirror_direct` and `allow_direct`.
    pub fn direct_stream(&self, name: &str) -> Option<Arc<StreamHandle>> {
        let streams = self.streams.read();
        if let Some(h) = streams.get(name) {
            return h.cfg.read().allow_direct.then(|| h.clone());
        }
        streams
            .values()
            .find(|h| {
                let c = h.cfg.read();
                c.mirror_direct
                    && c.allow_direct
                    && c.mirror.as_ref().and_then(|m| m["name"].as_str()) == Some(name)
            })
            .cloned()
    }

    /// (memory, storage, reserved memory, reserved storage) bytes of the account.
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        let (mut mem, mut file, mut rmem, mut rfile) = (0, 0, 0, 0);
        for s in self.streams.read().values() {
            let cfg = s.cfg.read();
            let b = s.stats.bytes.load(Ordering::Relaxed);
            let r = cfg.max_bytes.max(0) as u64;
            match cfg.storage {
                StorageType::Memory => {
                    mem += b;
                    rmem += r;
                }
                StorageType::File => {
                    file += b;
                    rfile += r;
                }
            }
        }
        (mem, file, rmem, rfile)
    }

    pub fn consumer_count(&self) -> u64 {
        self.streams
            .read()
            .values()
            .map(|s| s.stats.consumers.load(Ordering::Relaxed))
            .sum()
    }
}

/// An API request waiting for a worker.
pub(crate) struct ApiJob {
    pub account: Arc<Account>,
    pub msg: JsMsg,
    /// The subject after `$JS.API.` (or `$JS.<domain>.API.`).
    pub rest: String,
    /// Heard on `$JS.<domain>.API.>`.
    pub domain: bool,
}

/// The JetStream engine of one server.
pub struct Engine {
    pub(crate) cfg: Config,
    pub(crate) host: Arc<dyn Host>,
    _lock: LockGuard,
    pub(crate) accounts: RwLock<HashMap<String, Arc<Account>>>,
    api_tx: Mutex<Option<SyncSender<ApiJob>>>,
    pub(crate) api_total: AtomicU64,
    pub(crate) api_errors: AtomicU64,
    me: Weak<Engine>,
    shut: AtomicBool,
    /// Clustered JetStream's meta layer (`cluster/`), when the server runs in a cluster.
    pub(crate) cluster: OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Engine {
    /// Locks `store_dir` (a second server on it is refused), starts the API workers.
    pub fn start(cfg: Config, host: Arc<dyn Host>) -> Result<Arc<Engine>, EngineError> {
        std::fs::create_dir_all(&cfg.store_dir).map_err(|source| EngineError::Io {
            path: cfg.store_dir.clone(),
            source,
        })?;
        let lock = canopy_store::lock_dir(&StdFs, &cfg.store_dir).map_err(|source| {
            EngineError::Locked {
                dir: cfg.store_dir.clone(),
                source,
            }
        })?;
        let (tx, rx) = mpsc::sync_channel::<ApiJob>(cfg.request_queue_limit.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let engine = Arc::new_cyclic(|me| Engine {
            cfg,
            host,
            _lock: lock,
            accounts: RwLock::new(HashMap::new()),
            api_tx: Mutex::new(Some(tx)),
            api_total: AtomicU64::new(0),
            api_errors: AtomicU64::new(0),
            me: me.clone(),
            shut: AtomicBool::new(false),
            cluster: OnceLock::new(),
        });
        for i in 0..API_WORKERS {
            let (rx, me) = (rx.clone(), Arc::downgrade(&engine));
            std::thread::Builder::new()
                .name(format!("js-api-{i}"))
                .spawn(move || api_worker(rx, me))
                .map_err(|source| EngineError::Io {
                    path: PathBuf::from("thread"),
                    source,
                })?;
        }
        Ok(engine)
    }

    /// Enables JetStream in `account` (idempotent: a second call updates the limits),
    /// recovering its streams and consumers from disk.
    pub fn enable_account(&self, account: &str, limits: AccountLimits) -> Result<(), EngineError> {
        if let Some(a) = self.accounts.read().get(account) {
            *a.limits.write() = limits;
            return Ok(());
        }
        let dir = self.cfg.store_dir.join(account).join("streams");
        std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
            path: dir.clone(),
            source,
        })?;
        let acc = Arc::new(Account {
            name: Arc::from(account),
            limits: RwLock::new(limits),
            dir,
            streams: RwLock::new(BTreeMap::new()),
            subs: Mutex::new(Vec::new()),
            api_total: AtomicU64::new(0),
            api_errors: AtomicU64::new(0),
            admin: Mutex::new(()),
        });
        self.accounts
            .write()
            .insert(account.to_string(), acc.clone());
        self.recover(&acc);
        let mut prefixes = vec!["$JS.API".to_string()];
        if let Some(d) = &self.cfg.domain {
            prefixes.push(format!("$JS.{d}.API"));
        }
        for p in prefixes {
            let me = self.me.clone();
            let acc2 = acc.clone();
            let plen = p.len() + 1;
            let domain = p != "$JS.API";
            // Runs on the requester's reader: pull requests and direct gets of a server
            // without a cluster go straight to their stream's thread; everything else
            // waits for the API workers (a full queue is answered with a 503).
            let h: crate::host::InlineHandler = Arc::new(move |m: JsMsg| {
                let Some(e) = me.upgrade() else {
                    return true;
                };
                let rest = m.subject.get(plen..).unwrap_or("");
                if e.cluster.get().is_none() {
                    if let Some(r) = rest.strip_prefix("CONSUMER.MSG.NEXT.") {
                        if api::msg_next_inline(&acc2, &m, r) {
                            return true;
                        }
                    } else if let Some(r) = rest.strip_prefix("DIRECT.GET.") {
                        if api::direct_get_inline(&acc2, &m, r) {
                            return true;
                        }
                    }
                }
                let rest = rest.to_string();
                e.queue_api(ApiJob {
                    account: acc2.clone(),
                    msg: m,
                    rest,
                    domain,
                })
            });
            let r = self
                .host
                .subscribe_inline(&acc.name, &format!("{p}.>"), None, Lane::Api, h);
            record_sub(&acc, &format!("{p}.>"), r)?;
        }
        // Acks go from the client's reader straight to the stream's thread, bounded with
        // its publishes.
        let me = self.me.clone();
        let acc2 = acc.clone();
        let limit = self.cfg.ingest_queue_limit;
        let h: crate::host::InlineHandler =
            Arc::new(move |m: JsMsg| me.upgrade().is_none() || ack_msg(&acc2, m, limit));
        for subject in ["$JS.ACK.>", "$JS.FC.>"] {
            let r = self
                .host
                .subscribe_inline(&acc.name, subject, None, Lane::Ack, h.clone());
            record_sub(&acc, subject, r)?;
        }
        Ok(())
    }

    /// Recovers the account's file streams.
    fn recover(&self, acc: &Arc<Account>) {
        let Ok(rd) = std::fs::read_dir(&acc.dir) else {
            return;
        };
        for ent in rd.flatten() {
            let dir = ent.path();
            let meta = dir.join("meta.json");
            let Some(m) = read_json::<StreamMeta>(&meta) else {
                continue;
            };
            // A stream from before identities gets one now (written below with the meta).
            let fresh = m.uid.is_empty();
            let uid = if fresh {
                crate::util::random_name(16)
            } else {
                m.uid
            };
            if fresh {
                let meta = StreamMeta {
                    config: m.config.clone(),
                    created: m.created,
                    uid: uid.clone(),
                };
                if let Err(e) = write_json(&dir.join("meta.json"), &meta) {
                    tracing::warn!(account = %acc.name, "JetStream: {}: {e}", dir.display());
                }
            }
            match self.open_stream(acc, m.config, m.created, uid, true) {
                Ok(_) => {}
                Err(e) => tracing::error!(
                    account = %acc.name,
                    "JetStream: could not recover stream in {}: {e:?}",
                    dir.display()
                ),
            }
        }
    }

    /// Opens (or creates) a stream's store, its consumers, thread and subscriptions.
    pub(crate) fn open_stream(
        &self,
        acc: &Arc<Account>,
        cfg: StreamConfig,
        created: i64,
        uid: String,
        recovering: bool,
    ) -> Result<Arc<StreamHandle>, api::errors::E> {
        let meta = (!recovering).then_some("meta.json");
        let core = self.stream_core(acc, cfg, created, uid, meta)?;
        self.start_stream(acc, core)
    }

    /// A stream's store and consumers, ready for its thread; the metadata is written to
    /// `meta_file` (file storage) when given.
    pub(crate) fn stream_core(
        &self,
        acc: &Arc<Account>,
        cfg: StreamConfig,
        created: i64,
        uid: String,
        meta_file: Option<&str>,
    ) -> Result<StreamCore, api::errors::E> {
        use api::errors::E;
        let name = cfg.name.clone();
        let (store, dir): (Box<dyn canopy_store::MessageStore>, Option<PathBuf>) = match cfg.storage
        {
            StorageType::Memory => (Box::new(MemStore::new(cfg.store_config())), None),
            StorageType::File => {
                let dir = acc.dir.join(&name);
                if let Some(meta_file) = meta_file {
                    write_json(
                        &dir.join(meta_file),
                        &StreamMeta {
                            config: cfg.clone(),
                            created,
                            uid: uid.clone(),
                        },
                    )
                    .map_err(|e| E::StreamCreate(e.to_string()))?;
                }
                let opts = FileStoreOptions {
                    sync: self.cfg.sync,
                    ..Default::default()
                };
                let (fs, report) = FileStore::open(&dir, cfg.store_config(), opts)
                    .map_err(|e| E::StreamCreate(e.to_string()))?;
                if report.truncated_bytes > 0 || !report.lost.is_empty() {
                    tracing::warn!(
                        account = %acc.name, stream = %name,
                        "JetStream recovery: truncated {} bytes, {} corrupt ranges skipped",
                        report.truncated_bytes, report.lost.len()
                    );
                }
                (Box::new(fs), Some(dir))
            }
        };
        let sync_every = match self.cfg.sync {
            SyncPolicy::Interval(d) => Some(d),
            SyncPolicy::Always => None,
        };
        let mut core = StreamCore::new(
            name.clone(),
            acc.name.clone(),
            cfg.clone(),
            created,
            uid,
            store,
            dir.clone(),
            self.host.clone(),
            self.cfg.domain.clone(),
            sync_every,
        );
        if let Some(d) = &dir {
            self.recover_consumers(&mut core, d);
        }
        core.update_stats();
        Ok(core)
    }

    /// Starts a stream's thread over `core` and subscribes its subjects.
    pub(crate) fn start_stream(
        &self,
        acc: &Arc<Account>,
        core: StreamCore,
    ) -> Result<Arc<StreamHandle>, api::errors::E> {
        let name = core.name.clone();
        let replicated = core.repl.is_some();
        let h =
            StreamHandle::spawn(core).map_err(|e| api::errors::E::StreamCreate(e.to_string()))?;
        acc.streams.write().insert(name, h.clone());
        // A replicated stream's member subscribes when it becomes the leader.
        if !replicated {
            if let Err(e) = self.subscribe_stream(acc, &h) {
                tracing::error!(account = %acc.name, stream = %h.name, "{e}");
            }
        }
        Ok(h)
    }

    fn recover_consumers(&self, core: &mut StreamCore, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir.join("obs")) else {
            return;
        };
        for ent in rd.flatten() {
            let Some(m) = read_json::<ConsumerMeta>(&ent.path().join("meta.json")) else {
                continue;
            };
            let st = match FileConsumerStore::open(Arc::new(StdFs), &ent.path(), self.cfg.sync) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(stream = %core.name, consumer = %m.name, "JetStream: consumer state: {e}");
                    continue;
                }
            };
            let c = Consumer::new(
                m.name.clone(),
                m.config,
                m.created,
                Box::new(st),
                core.store.as_ref(),
                false,
            );
            core.consumers.insert(m.name, c);
        }
    }

    /// What a stream thread needs to make consumer stores.
    pub(crate) fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            sync: self.cfg.sync,
        }
    }
}

/// Consumer-store settings, sent into a stream's thread.
#[derive(Clone, Copy)]
pub(crate) struct StoreSettings {
    pub(crate) sync: SyncPolicy,
}

impl StoreSettings {
    /// Makes the consumer state store for a new consumer of a stream.
    pub(crate) fn consumer_store(
        &self,
        dir: Option<&Path>,
        meta: &ConsumerMeta,
        persist: bool,
    ) -> Result<Box<dyn canopy_store::ConsumerStore>, String> {
        match (dir, persist) {
            (Some(d), true) => {
                let cdir = d.join("obs").join(&meta.name);
                write_json(&cdir.join("meta.json"), meta).map_err(|e| e.to_string())?;
                FileConsumerStore::open(Arc::new(StdFs), &cdir, self.sync)
                    .map(|s| Box::new(s) as Box<dyn canopy_store::ConsumerStore>)
                    .map_err(|e| e.to_string())
            }
            _ => Ok(Box::new(MemConsumerStore::new())),
        }
    }
}

impl Engine {
    /// Subscribes a stream's subjects (replacing earlier subscriptions).
    pub(crate) fn subscribe_stream(
        &self,
        acc: &Account,
        h: &Arc<StreamHandle>,
    ) -> Result<(), EngineError> {
        self.unsubscribe_stream(h);
        let subjects = h.cfg.read().subjects.clone();
        let limit = self.cfg.ingest_queue_limit;
        for s in subjects {
            let weak = Arc::downgrade(h);
            // Straight from the publisher's reader to the stream's thread, bounded by the
            // messages the thread has not taken yet.
            let handler: crate::host::InlineHandler = Arc::new(move |m: JsMsg| {
                weak.upgrade().is_none_or(|h| h.offer(Cmd::Pub(m), limit))
            });
            let id = self
                .host
                .subscribe_inline(&acc.name, &s, None, Lane::Ingest, handler)
                .map_err(|reason| EngineError::Subscribe {
                    account: acc.name.to_string(),
                    subject: s.clone(),
                    reason,
                })?;
            h.ingest.lock().push(id);
        }
        Ok(())
    }

    /// Removes the subscriptions to a stream's subjects.
    pub(crate) fn unsubscribe_stream(&self, h: &StreamHandle) {
        for id in h.ingest.lock().drain(..) {
            self.host.unsubscribe(id);
        }
    }

    /// A stream's `stream_action` advisory (create, modify, delete).
    pub(crate) fn stream_advisory(&self, acc: &Account, stream: &str, action: &str) {
        crate::advisory::stream_action(
            self.host.as_ref(),
            &acc.name,
            self.cfg.domain.as_deref(),
            stream,
            action,
        );
    }

    /// Stops a stream: unsubscribes, stops its thread (closing the store).
    pub(crate) fn stop_stream(&self, h: &StreamHandle) {
        self.unsubscribe_stream(h);
        for id in h.subs.lock().drain(..) {
            self.host.unsubscribe(id);
        }
        crate::replica::stop_member(h);
        h.stop();
    }

    /// Disables JetStream in `account`: unsubscribes and closes its streams (data stays).
    pub fn disable_account(&self, account: &str) {
        let Some(acc) = self.accounts.write().remove(account) else {
            return;
        };
        for id in acc.subs.lock().drain(..) {
            self.host.unsubscribe(id);
        }
        let streams: Vec<_> = std::mem::take(&mut *acc.streams.write())
            .into_values()
            .collect();
        for s in streams {
            self.stop_stream(&s);
        }
    }

    /// Flushes and closes every store (clean-shutdown snapshot).
    pub fn shutdown(&self) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        self.api_tx.lock().take();
        if let Some(c) = self.cluster.get() {
            c.shutdown();
        }
        let names: Vec<String> = self.accounts.read().keys().cloned().collect();
        for n in names {
            self.disable_account(&n);
        }
    }

    /// Queues an API request for the workers; `false` when their queue is full.
    fn queue_api(&self, job: ApiJob) -> bool {
        let Some(tx) = self.api_tx.lock().clone() else {
            return true;
        };
        match tx.try_send(job) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => true,
            Err(TrySendError::Full(job)) => {
                tracing::warn!(account = %job.account.name, "JetStream API queue limit reached, dropping a request");
                false
            }
        }
    }

    /// Serves an API request on a worker.
    fn serve_api(&self, job: ApiJob) {
        let (acc, msg, rest) = (&job.account, &job.msg, job.rest.as_str());
        // nats-server's domain mapping also covers KV and object subjects
        // (`$JS.<d>.API.$KV.>` → `$KV.>`): clients of a domain put KV values that way.
        // They are published as written, for the streams.
        if job.domain && (rest.starts_with("$KV.") || rest.starts_with("$OBJ.")) {
            // In a cluster every member hears it: the one the client is on republishes
            // (not the ones it reached over a route).
            if self.cluster.get().is_some() && msg.origin.via == crate::host::Via::Route {
                return;
            }
            self.host.publish(
                &acc.name,
                rest,
                msg.reply.as_deref(),
                msg.headers.as_deref(),
                &msg.payload,
            );
            return;
        }
        // Clustered: one member answers (cluster/api.rs).
        if let Some(c) = self.cluster.get() {
            if !c.admit_api(acc, msg, rest) {
                return;
            }
        }
        if let Some(r) = rest.strip_prefix("CONSUMER.MSG.NEXT.") {
            api::msg_next(acc, msg, r, self.host.as_ref());
            return;
        }
        api::handle(self, job);
    }

    /// nats-server's `/varz` `jetstream` object.
    pub fn varz(&self) -> Value {
        let (mut mem, mut file, mut rmem, mut rfile) = (0, 0, 0, 0);
        let accounts = self.accounts.read();
        for a in accounts.values() {
            let (m, f, rm, rf) = a.usage();
            mem += m;
            file += f;
            rmem += rm;
            rfile += rf;
        }
        let mut v = json!({
            "config": self.config_json(),
            "stats": {
                "memory": mem, "storage": file,
                "reserved_memory": rmem, "reserved_storage": rfile,
                "accounts": accounts.len(), "ha_assets": 0,
                "api": {"total": self.api_total.load(Ordering::Relaxed), "errors": self.api_errors.load(Ordering::Relaxed)},
            }
        });
        if let Some(c) = self.cluster.get() {
            v["meta"] = c.meta_json();
        }
        v
    }

    fn config_json(&self) -> Value {
        let sync = match self.cfg.sync {
            SyncPolicy::Interval(d) => json!(d.as_nanos() as u64),
            SyncPolicy::Always => json!("always"),
        };
        let mut c = json!({
            "max_memory": self.cfg.max_memory,
            "max_storage": self.cfg.max_store,
            "store_dir": self.cfg.store_dir.display().to_string(),
            "sync_interval": sync,
            "strict": self.cfg.strict,
        });
        if let (Some(d), Some(o)) = (&self.cfg.domain, c.as_object_mut()) {
            o.insert("domain".into(), json!(d));
        }
        c
    }

    /// nats-server's `/jsz` shape.
    pub fn jsz(&self, accounts: bool, streams: bool, consumers: bool, config: bool) -> Value {
        let info = self.host.info();
        let accs = self.accounts.read();
        let (mut mem, mut file, mut rmem, mut rfile) = (0, 0, 0, 0);
        let (mut nstreams, mut ncons, mut msgs, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut details = Vec::new();
        for a in accs.values() {
            let (m, f, rm, rf) = a.usage();
            mem += m;
            file += f;
            rmem += rm;
            rfile += rf;
            let ss = a.streams.read();
            nstreams += ss.len() as u64;
            ncons += a.consumer_count();
            for s in ss.values() {
                msgs += s.stats.msgs.load(Ordering::Relaxed);
                bytes += s.stats.bytes.load(Ordering::Relaxed);
            }
            if accounts || streams || consumers {
                let (am, af, _, _) = a.usage();
                let mut d = json!({
                    "name": a.name.as_ref(), "id": a.name.as_ref(),
                    "memory": am, "storage": af,
                    "reserved_memory": 0, "reserved_storage": 0,
                    "accounts": 1, "ha_assets": 0,
                    "api": {"total": a.api_total.load(Ordering::Relaxed), "errors": a.api_errors.load(Ordering::Relaxed)},
                });
                if streams || consumers {
                    let list: Vec<Value> = ss
                        .values()
                        .filter_map(|h| {
                            let (cfgw, consw) = (config, consumers);
                            h.call(move |c: &mut StreamCore| api::stream_detail(c, cfgw, consw))
                        })
                        .collect();
                    if let Some(o) = d.as_object_mut() {
                        o.insert("stream_detail".into(), Value::Array(list));
                    }
                }
                details.push(d);
            }
        }
        let mut v = json!({
            "server_id": info.server_id,
            "now": rfc3339(now_ns()),
            "config": self.config_json(),
            "memory": mem, "storage": file,
            "reserved_memory": rmem, "reserved_storage": rfile,
            "accounts": accs.len(), "ha_assets": 0,
            "api": {"total": self.api_total.load(Ordering::Relaxed), "errors": self.api_errors.load(Ordering::Relaxed)},
            "streams": nstreams, "consumers": ncons, "messages": msgs, "bytes": bytes,
        });
        if !details.is_empty() {
            if let Some(o) = v.as_object_mut() {
                o.insert("account_details".into(), Value::Array(details));
            }
        }
        if let Some(c) = self.cluster.get() {
            v["meta_cluster"] = c.meta_json();
        }
        v
    }

    /// JetStream health: every stream thread answers.
    pub fn healthy(&self) -> Result<(), String> {
        if self.shut.load(Ordering::Relaxed) {
            return Err("JetStream is shut down".into());
        }
        let accs: Vec<_> = self.accounts.read().values().cloned().collect();
        for a in accs {
            let ss: Vec<_> = a.streams.read().values().cloned().collect();
            for s in ss {
                if s.call(|_| ()).is_none() {
                    return Err(format!(
                        "JetStream stream '{} > {}' is not current",
                        a.name, s.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn api_worker(rx: Arc<Mutex<Receiver<ApiJob>>>, me: Weak<Engine>) {
    loop {
        let job = {
            let rx = rx.lock();
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        let Some(engine) = me.upgrade() else {
            return;
        };
        engine.serve_api(job);
    }
}

/// Keeps an account subscription's id (dropped when the account's JetStream is disabled),
/// or names the subscription that failed.
fn record_sub(
    acc: &Account,
    subject: &str,
    r: Result<crate::host::SubId, String>,
) -> Result<(), EngineError> {
    let id = r.map_err(|reason| EngineError::Subscribe {
        account: acc.name.to_string(),
        subject: subject.to_string(),
        reason,
    })?;
    acc.subs.lock().push(id);
    Ok(())
}

/// Hands an ack (`$JS.ACK.<stream>.<consumer>.<dc>.<sseq>.<dseq>.<ts>.<pending>`) or
/// flow-control reply (`$JS.FC.<stream>.<consumer>.<x>`) to its stream's thread; `false`
/// when the thread has `limit` messages waiting already (refused). One that names no
/// stream is ignored.
fn ack_msg(acc: &Account, m: JsMsg, limit: usize) -> bool {
    // The first nine tokens, and how many there are: parsed without a vector, on every
    // ack of every pull and push consumer.
    let mut toks = [""; 9];
    let mut n = 0;
    for t in canopy_subject::validate::tokens(&m.subject) {
        if let Some(slot) = toks.get_mut(n) {
            *slot = t;
        }
        n += 1;
    }
    if n < 5 {
        return true;
    }
    let Some(h) = acc.stream(toks[2]) else {
        return true;
    };
    if toks[1] == "FC" {
        let consumer = toks[3].to_string();
        return h.offer(
            Cmd::Fc {
                consumer,
                subject: m.subject.clone(),
            },
            limit,
        );
    }
    if n < 9 {
        return true;
    }
    let (Ok(sseq), Ok(dseq)) = (toks[5].parse::<u64>(), toks[6].parse::<u64>()) else {
        return true;
    };
    // The consumer's name is cut out of the subject's own allocation: it follows the
    // first three tokens and their dots.
    let at = toks[..3].iter().map(|t| t.len() + 1).sum::<usize>();
    let end = at + toks[3].len();
    let mut consumer = m.subject;
    consumer.truncate(end);
    consumer.drain(..at);
    h.offer(
        Cmd::Ack {
            consumer,
            sseq,
            dseq,
            body: m.payload,
            reply: m.reply,
        },
        limit,
    )
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    let b = std::fs::read(p).ok()?;
    match serde_json::from_slice(&b) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!("JetStream: unreadable {}: {e}", p.display());
            None
        }
    }
}

/// Writes JSON atomically (temp file, fsync, rename).
pub(crate) fn write_json<T: Serialize>(p: &Path, v: &T) -> std::io::Result<()> {
    write_json_with(p, v, true)
}

/// [`write_json`], with the fsync left out when `!sync` (a process kill loses nothing;
/// power loss may, as with the store under `sync_interval`).
pub(crate) fn write_json_with<T: Serialize>(p: &Path, v: &T, sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("json.tmp");
    let data = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&data)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, p)?;
    Ok(())
}
