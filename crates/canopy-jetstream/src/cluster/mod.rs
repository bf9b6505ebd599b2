//! Clustered JetStream's meta layer: the meta group (one Raft group over every JetStream
//! member of a `cluster {}`), its state (which streams exist and where, [`meta`]), the
//! Raft transport over the routes ([`transport`]), placement ([`placement`]) and the
//! routing of `$JS.API` requests to the one member that answers ([`api`]).
//!
//! **Members.** A peer is a server this one has a route to whose route INFO says
//! `jetstream: true` and which is a Canopy server (a Go nats-server speaks its own `$NRG`
//! Raft, which Canopy does not: it is logged once and left out; core NATS over the route
//! is unaffected). Server names identify members, so clustered JetStream needs
//! `server_name` (as nats-server requires).
//!
//! **Forming the group.** A member with Raft state on disk resumes. A fresh member waits up
//! to [`BOOTSTRAP_GRACE`] for the other servers its configured routes name (a route to
//! itself does not count once it is recognised), then asks each peer for its
//! status (`$CRG.<node>._meta_.ST`). If any peer is already in a meta group it waits to be
//! admitted; otherwise the fresh member with the lowest server name bootstraps the group
//! with every fresh peer that answered. A member started alone (routes to servers that are
//! not up, as the seed's regional hubs) therefore forms a group of one after the grace
//! period and serves on its own. The leader admits every routed JetStream peer that is not
//! a member yet: as a learner, then as a voter. Members are never removed automatically;
//! `$JS.API.SERVER.REMOVE` removes one ([`ops`]).
//!
//! **Two groups meeting.** Two members bootstrapped apart (a network split during the very
//! first start) each lead their own group. When the routes join them, the leader sees a
//! peer that is initialised but not its member, logs it plainly once ("two JetStream meta
//! groups met"), does not admit it, and both keep serving their own streams. An operator
//! merges them by wiping one side's `$SYS/_js_` directory.
//!
//! State lives under `<store_dir>/$SYS/_js_/`: the Raft group in `_meta_/`, the applied
//! assignments in `meta_state.json`.

pub mod api;
pub mod meta;
pub mod ops;
pub mod placement;
pub mod transport;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use canopy_raft::{Group, GroupConfig, Peer};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::errors::E;
use crate::engine::{Engine, EngineError};
use crate::host::{Host, JsMsg, Lane};
use meta::{Action, Job, MetaMachine, StreamAssignment};
use transport::{RouteTransport, RpcStats};

/// The meta group's name.
pub const META_GROUP: &str = "_meta_";
/// How long a fresh member waits for its configured route peers before forming a group.
pub const BOOTSTRAP_GRACE: Duration = Duration::from_secs(3);
/// How often membership is checked (bootstrap, admission, peer tags).
const TICK: Duration = Duration::from_millis(500);
/// How long a status probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the server tells the cluster layer (beyond [`crate::host::HostInfo`]).
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// `jetstream { unique_tag }`.
    pub unique_tag: Option<String>,
}

/// A peer's answer to the status probe.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub initialized: bool,
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Stream assignments in its meta state.
    #[serde(default)]
    pub streams: usize,
}

/// The cluster layer of one server.
pub struct Cluster {
    pub(crate) engine: Weak<Engine>,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) me: Peer,
    pub(crate) system_account: String,
    pub(crate) tags: Vec<String>,
    pub(crate) unique_tag: Option<String>,
    dir: PathBuf,
    /// The meta group member (replaced when a lone, empty group yields to another).
    meta: RwLock<Option<Group>>,
    leader_rx: RwLock<Option<tokio::sync::watch::Receiver<Option<Peer>>>>,
    pub(crate) machine: Arc<MetaMachine>,
    groups: RwLock<HashMap<String, Group>>,
    pub(crate) peer_status: Mutex<HashMap<String, PeerStatus>>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) rpc: Arc<RpcStats>,
    pub(crate) inflight: Arc<tokio::sync::Semaphore>,
    transport: Arc<RouteTransport>,
    warned: Mutex<HashSet<String>>,
    started: Instant,
    shut: AtomicBool,
    /// Streams (`account\0name`) whose group membership is being changed here (or must
    /// not be yet: a conversion to replicated before its snapshot).
    pub(crate) busy: Arc<Mutex<HashSet<String>>>,
    /// A `SERVER.REMOVE` is in progress (one at a time).
    pub(crate) removing: AtomicBool,
}

impl Engine {
    /// Starts the cluster layer (the server calls it when JetStream runs in a cluster):
    /// subscribes the Raft transport, starts the reconciler and the membership task.
    /// Needs a tokio runtime (it is called from the server's).
    pub fn start_cluster(self: &Arc<Engine>, opts: ClusterOptions) -> Result<(), EngineError> {
        let info = self.host.info();
        let system_account = info
            .system_account
            .clone()
            .ok_or_else(|| EngineError::Subscribe {
                account: String::new(),
                subject: transport::PREFIX.into(),
                reason: "clustered JetStream needs a system account".into(),
            })?;
        let rt = tokio::runtime::Handle::try_current().map_err(|e| EngineError::Io {
            path: PathBuf::from("runtime"),
            source: std::io::Error::other(e),
        })?;
        let dir = self.cfg.store_dir.join("$SYS").join("_js_");
        std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
            path: dir.clone(),
            source,
        })?;
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let me = Peer::new(&info.server_name);
        let machine = Arc::new(MetaMachine::open(
            &me.name,
            dir.join("meta_state.json"),
            jobs_tx,
        ));
        let rpc = Arc::new(RpcStats::default());
        let cluster = Arc::new(Cluster {
            engine: Arc::downgrade(self),
            host: self.host.clone(),
            me: me.clone(),
            system_account: system_account.clone(),
            tags: info.tags.clone(),
            unique_tag: opts.unique_tag,
            dir,
            meta: RwLock::new(None),
            leader_rx: RwLock::new(None),
            machine,
            groups: RwLock::new(HashMap::new()),
            peer_status: Mutex::new(HashMap::new()),
            rt: rt.clone(),
            rpc: rpc.clone(),
            inflight: Arc::new(tokio::sync::Semaphore::new(transport::MAX_INFLIGHT)),
            transport: Arc::new(RouteTransport {
                host: self.host.clone(),
                system_account: system_account.clone(),
                stats: rpc,
                max_body: transport::max_body(self.host.info().max_payload),
            }),
            warned: Mutex::new(HashSet::new()),
            started: Instant::now(),
            shut: AtomicBool::new(false),
            busy: Arc::new(Mutex::new(HashSet::new())),
            removing: AtomicBool::new(false),
        });
        if self.cluster.set(cluster.clone()).is_err() {
            return Ok(());
        }
        let weak = Arc::downgrade(&cluster);
        let subject = format!("{}.{:016x}.>", transport::PREFIX, me.id);
        self.host
            .subscribe_inline(
                &system_account,
                &subject,
                None,
                Lane::Cluster,
                Arc::new(move |m: JsMsg| {
                    transport::incoming(&weak, m);
                    true
                }),
            )
            .map_err(|reason| EngineError::Subscribe {
                account: system_account.clone(),
                subject,
                reason,
            })?;
        // `SERVER.REMOVE` is the system account's (which need not have JetStream itself).
        let weak = Arc::downgrade(&cluster);
        self.host
            .subscribe(
                &system_account,
                "$JS.API.SERVER.REMOVE",
                None,
                Lane::Api,
                Arc::new(move |m: JsMsg| {
                    if let Some(c) = weak.upgrade() {
                        c.server_remove_request(m);
                    }
                }),
            )
            .map_err(|reason| EngineError::Subscribe {
                account: system_account.clone(),
                subject: "$JS.API.SERVER.REMOVE".into(),
                reason,
            })?;
        let (e, c) = (Arc::downgrade(self), Arc::downgrade(&cluster));
        std::thread::Builder::new()
            .name("js-cluster".into())
            .spawn(move || reconciler(jobs_rx, e, c))
            .map_err(|source| EngineError::Io {
                path: PathBuf::from("thread"),
                source,
            })?;
        tracing::info!(
            "JetStream cluster: server {:?} (node {:016x})",
            me.name,
            me.id
        );
        rt.spawn(cluster.run());
        Ok(())
    }

    /// The cluster layer, when JetStream runs in a cluster.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }
}

impl Cluster {
    /// The Raft transport, for the groups of replicated streams.
    pub fn transport(&self) -> Arc<dyn canopy_raft::Transport> {
        self.transport.clone()
    }

    /// The cluster's name (learned from the routes when not configured).
    pub(crate) fn cluster_name(&self) -> Option<String> {
        self.host.info().cluster
    }

    /// This member.
    pub fn me(&self) -> &Peer {
        &self.me
    }

    /// Makes a stream's Raft group reachable by its peers' RPCs.
    pub fn register_group(&self, g: Group, name: &str) {
        self.groups.write().insert(name.to_string(), g);
    }

    pub fn unregister_group(&self, name: &str) {
        self.groups.write().remove(name);
    }

    /// The group an RPC names.
    pub(crate) fn group(&self, name: &str) -> Option<Group> {
        if name == META_GROUP {
            return self.meta_group();
        }
        self.groups.read().get(name).cloned()
    }

    /// This server's member of the meta group, once opened.
    pub(crate) fn meta_group(&self) -> Option<Group> {
        self.meta.read().clone()
    }

    /// The meta leader's server name, when there is one.
    pub fn meta_leader(&self) -> Option<String> {
        self.leader_rx
            .read()
            .as_ref()
            .and_then(|rx| rx.borrow().as_ref().map(|p| p.name.clone()))
    }

    pub fn is_meta_leader(&self) -> bool {
        self.meta_leader().as_deref() == Some(self.me.name.as_str())
    }

    /// The stream assignments the meta layer knows (account, assignment).
    pub fn assignments(&self) -> Vec<StreamAssignment> {
        let st = self.machine.state.lock();
        st.streams
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// The routed JetStream peers that speak Canopy's transport (server names, sorted).
    pub(crate) fn js_peers(&self) -> Vec<String> {
        self.js_route_peers().into_iter().map(|p| p.name).collect()
    }

    /// [`Cluster::js_peers`] with their server ids (sorted by name).
    pub(crate) fn js_route_peers(&self) -> Vec<crate::host::RoutePeer> {
        let mut out: Vec<crate::host::RoutePeer> = Vec::new();
        for p in self.host.route_peers() {
            if !p.jetstream || p.name.is_empty() || p.name == self.me.name {
                continue;
            }
            if !p.canopy {
                if self.warned.lock().insert(format!("go:{}", p.name)) {
                    tracing::warn!(
                        "JetStream cluster: {:?} is a nats-server (Go) JetStream server; Canopy \
                         does not speak its Raft protocol, so it stays out of the meta group \
                         (core NATS over the route is unaffected)",
                        p.name
                    );
                }
                continue;
            }
            if !out.iter().any(|o| o.name == p.name) {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Is this the member that answers `10008` while there is no meta leader (the lowest
    /// server name among this server and its routed JetStream peers)?
    pub(crate) fn is_fallback(&self) -> bool {
        self.js_peers().first().is_none_or(|p| *p > self.me.name)
    }

    /// This member's answer to a status probe.
    pub(crate) fn status_probe(&self) -> Value {
        let (initialized, leader, members) = match self.meta_group() {
            Some(g) => {
                let st = g.status();
                (
                    g.initialized(),
                    st.leader.map(|p| p.name),
                    st.replicas.into_iter().map(|r| r.peer.name).collect(),
                )
            }
            None => (false, None, Vec::new()),
        };
        json!(PeerStatus {
            name: self.me.name.clone(),
            initialized,
            leader,
            members,
            tags: self.tags.clone(),
            streams: self.assignments().len(),
        })
    }

    async fn probe(&self, name: &str) -> Option<PeerStatus> {
        let r = self
            .transport
            .send(
                &Peer::new(name),
                META_GROUP,
                transport::STATUS,
                bytes::Bytes::new(),
                PROBE_TIMEOUT,
            )
            .await
            .ok()?;
        let st: PeerStatus = serde_json::from_slice(&r).ok()?;
        self.peer_status.lock().insert(name.to_string(), st.clone());
        Some(st)
    }

    /// Opens the meta group and keeps its membership: bootstrap, then admission. A group
    /// this member formed alone that never held a stream yields to another group it meets
    /// (see [`Cluster::should_yield`]): it is destroyed and opened fresh, to be admitted.
    async fn run(self: Arc<Self>) {
        loop {
            let Some(group) = self.open_meta().await else {
                return;
            };
            if !self.serve_meta(&group).await {
                return;
            }
            tracing::warn!(
                "JetStream cluster: this server formed a meta group alone and another one is \
                 up; leaving its own (it held no stream) to join the other"
            );
            *self.meta.write() = None;
            *self.leader_rx.write() = None;
            if let Err(e) = group.destroy().await {
                tracing::error!(
                    "JetStream cluster: cannot remove this server's meta group to join the \
                     other: {e}; clustered JetStream stays unavailable here"
                );
                return;
            }
            self.machine.reset();
        }
    }

    async fn open_meta(&self) -> Option<Group> {
        let mut cfg = GroupConfig::new(META_GROUP, self.dir.join(META_GROUP), self.me.clone());
        cfg.snapshot_every = 1024;
        let group = match Group::open(cfg, self.machine.clone(), self.transport.clone()).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("JetStream cluster: the meta group could not open: {e}");
                return None;
            }
        };
        *self.leader_rx.write() = Some(group.leader_watch());
        *self.meta.write() = Some(group.clone());
        Some(group)
    }

    /// Runs the meta group's membership until shutdown (false) or until it should yield
    /// to another group (true).
    async fn serve_meta(&self, group: &Group) -> bool {
        // Streams assigned here that a crash left uncreated.
        let st = self.machine.state.lock().clone();
        self.machine.reconcile(None, &st);
        let mut leader_rx = group.leader_watch();
        let mut last_leader: Option<String> = None;
        loop {
            if self.shut.load(Ordering::Relaxed) {
                return false;
            }
            let leader = leader_rx
                .borrow_and_update()
                .as_ref()
                .map(|p| p.name.clone());
            if leader != last_leader {
                match &leader {
                    Some(l) if *l == self.me.name => {
                        tracing::info!("JetStream cluster: this server is the meta leader")
                    }
                    Some(l) => tracing::info!("JetStream cluster: meta leader is {l:?}"),
                    None => tracing::info!("JetStream cluster: no meta leader"),
                }
                last_leader = leader.clone();
            }
            if !group.initialized() {
                self.try_bootstrap(group).await;
            } else {
                self.sync_stream_peers();
                if leader.as_deref() == Some(self.me.name.as_str()) {
                    if self.should_yield(group).await {
                        return true;
                    }
                    self.admit(group).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = leader_rx.changed() => {}
            }
        }
    }

    /// Two groups met. This member's gives way when it is alone in it, it never held a
    /// stream, and the other group is larger, holds streams, or (both alone and empty)
    /// its leader has the lower name: a server that formed its group alone because its
    /// routes were slow to come up then joins the cluster instead of splitting it.
    async fn should_yield(&self, group: &Group) -> bool {
        let st = group.status();
        if st.replicas.len() > 1 || !self.assignments().is_empty() {
            return false;
        }
        for p in self.js_peers() {
            let Some(other) = self.probe(&p).await else {
                continue;
            };
            if !other.initialized || other.members.contains(&self.me.name) {
                continue;
            }
            if other.members.len() > 1 || other.streams > 0 || p < self.me.name {
                return true;
            }
        }
        false
    }

    async fn try_bootstrap(&self, group: &Group) {
        let peers = self.js_peers();
        let expected = self.host.info().configured_routes;
        if self.started.elapsed() < BOOTSTRAP_GRACE && peers.len() < expected {
            return;
        }
        let mut fresh = vec![self.me.name.clone()];
        for p in &peers {
            match self.probe(p).await {
                Some(st) if st.initialized => {
                    if self.warned.lock().insert(format!("wait:{p}")) {
                        tracing::info!(
                            "JetStream cluster: {p:?} is in a meta group (leader {:?}); waiting to be admitted",
                            st.leader
                        );
                    }
                    return;
                }
                Some(_) => fresh.push(p.clone()),
                None => {}
            }
        }
        fresh.sort();
        if fresh[0] != self.me.name {
            return;
        }
        tracing::info!("JetStream cluster: forming the meta group with {fresh:?}");
        let members = fresh.iter().map(|n| Peer::new(n)).collect();
        if let Err(e) = group.bootstrap(members).await {
            tracing::warn!("JetStream cluster: meta group bootstrap failed: {e}");
        }
    }

    /// On the leader: routed JetStream peers that are not voters become voters.
    async fn admit(&self, group: &Group) {
        let st = group.status();
        let members: HashMap<String, bool> = st
            .replicas
            .iter()
            .map(|r| (r.peer.name.clone(), r.voter))
            .collect();
        for rp in self.js_route_peers() {
            // Removed by `SERVER.REMOVE` and still the same run of that server: kept out.
            // Once it restarts (a new server id) it is admitted again, as nats-server
            // re-adds a removed server that comes back.
            let removed = self.machine.state.lock().removed.get(&rp.name) == Some(&rp.id);
            if removed {
                continue;
            }
            let p = rp.name;
            let status = self.probe(&p).await;
            if members.get(&p) == Some(&true) {
                continue;
            }
            if !members.contains_key(&p) {
                match &status {
                    None => continue,
                    Some(s) if s.initialized && !s.members.contains(&self.me.name) => {
                        if self.warned.lock().insert(format!("foreign:{p}")) {
                            tracing::warn!(
                                "JetStream cluster: two JetStream meta groups met: {p:?} belongs to \
                                 another meta group (leader {:?}, members {:?}); it is not admitted \
                                 and each group keeps serving its own streams",
                                s.leader,
                                s.members
                            );
                        }
                        continue;
                    }
                    Some(_) => {}
                }
                tracing::info!("JetStream cluster: adding {p:?} to the meta group");
                if let Err(e) = group.add_learner(Peer::new(&p)).await {
                    tracing::warn!("JetStream cluster: adding {p:?} as learner: {e}");
                    continue;
                }
            }
            let mut voters = voters(group);
            voters.push(Peer::new(&p));
            if let Err(e) = group.set_voters(voters).await {
                tracing::warn!("JetStream cluster: promoting {p:?} to voter: {e}");
            }
        }
    }

    /// Stops the meta group (state stays on disk).
    pub(crate) fn shutdown(&self) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        let groups: Vec<Group> = self
            .meta_group()
            .into_iter()
            .chain(self.groups.read().values().cloned())
            .collect();
        for g in groups {
            self.rt.spawn(async move { g.shutdown().await });
        }
    }

    /// nats-server's `meta_cluster` (`/jsz`) and `/varz` `jetstream.meta`.
    pub fn meta_json(&self) -> Value {
        let online = self.js_peers();
        let Some(g) = self.meta_group() else {
            return json!({"name": self.cluster_name(), "cluster_size": 0, "pending": 0});
        };
        let st = g.status();
        let replicas: Vec<Value> = st
            .replicas
            .iter()
            .filter(|r| r.peer.name != self.me.name)
            .map(|r| {
                let offline = !online.contains(&r.peer.name);
                let mut v = json!({
                    "name": r.peer.name,
                    "current": !offline && (!st.is_leader || r.lag == 0),
                    "offline": offline,
                    "lag": r.lag,
                    "peer": short_hash(&r.peer.name),
                    "voter": r.voter,
                });
                if let Some(d) = r.last_seen {
                    v["active"] = json!(d.as_nanos() as u64);
                }
                v
            })
            .collect();
        let mut v = json!({
            "name": self.cluster_name(),
            "peer": short_hash(&self.me.name),
            "replicas": replicas,
            "cluster_size": st.replicas.len(),
            "pending": st.last_index.saturating_sub(st.applied),
            "transport": {
                "sent": self.rpc.sent.load(Ordering::Relaxed),
                "failed": self.rpc.failed.load(Ordering::Relaxed),
                "received": self.rpc.received.load(Ordering::Relaxed),
                "dropped": self.rpc.dropped.load(Ordering::Relaxed),
            },
        });
        if let Some(l) = st.leader {
            v["leader"] = json!(l.name);
        }
        if let Some(t) = st.leader_since {
            let ns = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64);
            v["leader_since"] = json!(crate::util::rfc3339(ns));
        }
        v
    }
}

/// A group's voters.
pub(crate) fn voters(g: &Group) -> Vec<Peer> {
    g.status()
        .replicas
        .into_iter()
        .filter(|r| r.voter)
        .map(|r| r.peer)
        .collect()
}

/// nats-server's 8-character peer id of a server name (here: of its node id).
pub(crate) fn short_hash(name: &str) -> String {
    format!("{:016x}", canopy_raft::node_id(name))[..8].to_string()
}

/// Runs the meta layer's jobs: brings the local streams to their assignments and answers
/// the clients of create, update and delete.
fn reconciler(rx: mpsc::Receiver<Job>, engine: Weak<Engine>, cluster: Weak<Cluster>) {
    while let Ok(job) = rx.recv() {
        let (Some(e), Some(c)) = (engine.upgrade(), cluster.upgrade()) else {
            return;
        };
        match job {
            Job::Ensure {
                action,
                stream,
                prev_group,
                reply,
            } if !stream.group.is_empty() => {
                ensure_replicated(&e, &c, action, &stream, &prev_group, reply.as_deref());
            }
            Job::Ensure {
                action,
                stream,
                prev_group,
                reply,
            } => {
                // Scaled down to R1 with this member's copy kept.
                if !prev_group.is_empty() && e.raft_group(&stream.account, stream.name()).is_some()
                {
                    ops::to_single(&e, &c, &stream, &prev_group);
                }
                ensure(&e, action, &stream, reply.as_deref());
            }
            Job::Remove {
                account,
                name,
                group,
                peers,
                reply,
            } => {
                if !group.is_empty() {
                    if !peers.is_empty() && e.is_stream_leader(&account, &name) {
                        // Leaving the group it leads: the others take it over first.
                        let to: Vec<Peer> = peers.iter().map(|p| Peer::new(p)).collect();
                        let done = c.rt.block_on(async {
                            tokio::time::timeout(
                                Duration::from_secs(10),
                                e.set_stream_peers(&account, &name, to),
                            )
                            .await
                        });
                        if !matches!(done, Ok(Ok(()))) {
                            tracing::warn!(
                                "JetStream cluster: stream {account:?} > {name:?}: handing the group over before leaving it failed"
                            );
                        }
                    }
                    if peers.is_empty() && e.is_stream_leader(&account, &name) {
                        // The stream is deleted: its leader deletes the durable sourcing
                        // consumers on their origins, as a single server does.
                        e.delete_remote_sources(&account, &name);
                    }
                    c.rt.block_on(e.delete_replicated_stream(&account, &name));
                    c.unregister_group(&group);
                    remove_group_dir(&c, &group);
                }
                remove(&e, &account, &name, reply.as_deref());
            }
        }
    }
}

/// Removes a stream group's directory (its log and vote) from this member.
pub(crate) fn remove_group_dir(c: &Cluster, group: &str) {
    let dir = c.dir.join(group);
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("JetStream cluster: removing {}: {err}", dir.display());
        }
    }
}

fn ensure(e: &Engine, action: Action, sa: &StreamAssignment, reply: Option<&str>) {
    let name = sa.name().to_string();
    let Some(acc) = e.accounts.read().get(&sa.account).cloned() else {
        tracing::warn!(
            "JetStream cluster: stream {name:?} is assigned here in account {:?}, which has no JetStream on this server",
            sa.account
        );
        return;
    };
    let body = match serde_json::to_vec(&sa.config) {
        Ok(b) => b,
        Err(err) => {
            tracing::error!("JetStream cluster: stream {name:?}: {err}");
            return;
        }
    };
    let existing = acc.stream(&name);
    let (kind, res) = match (action, existing) {
        (Action::Update, _) => (
            "stream_update_response",
            crate::api::streams::update(e, &acc, Some(&name), &body),
        ),
        (_, Some(h)) if reply.is_none() => {
            if crate::api::streams::same_config(&h.cfg.read(), &sa.config) {
                return;
            }
            (
                "stream_update_response",
                crate::api::streams::update(e, &acc, Some(&name), &body),
            )
        }
        _ => (
            "stream_create_response",
            crate::api::streams::create(e, &acc, Some(&name), &body),
        ),
    };
    match reply {
        Some(r) => crate::api::reply_to(e, &acc, r, kind, res),
        None => {
            if let Err(err) = res {
                tracing::error!(
                    "JetStream cluster: stream {:?} > {name:?} assigned here: {}",
                    sa.account,
                    crate::api::errors::ApiError::from(err)
                );
            }
        }
    }
}

/// A replicated stream assigned here: this member's copy and Raft member are opened (the
/// group bootstrapped by its peers together), or, for an update, the stream's leader
/// replicates the new configuration. The answer comes once the group has a leader.
fn ensure_replicated(
    e: &Arc<Engine>,
    c: &Cluster,
    action: Action,
    sa: &StreamAssignment,
    prev_group: &str,
    reply: Option<&str>,
) {
    let (account, name) = (sa.account.as_str(), sa.name());
    let Some(acc) = e.accounts.read().get(account).cloned() else {
        return;
    };
    let opened = e.raft_group(account, name).is_some();
    let res = if !opened && acc.stream(name).is_some() {
        // A single-server stream scaled up: its store seeds the new group.
        ops::to_replicated(e, c, sa)
    } else if !opened {
        // Only the founders initialise a group, and only when it is new (a create, a
        // scale-up, or a restart before the first contact); a member added to a running
        // group is brought in by its leader.
        let new_group = action == Action::Create || prev_group != sa.group;
        let spec = crate::replica::GroupSpec {
            name: sa.group.clone(),
            dir: c.dir.join(&sa.group),
            me: c.me.clone(),
            peers: sa.founders().iter().map(|p| Peer::new(p)).collect(),
            bootstrap: new_group && sa.founders().contains(&c.me.name),
            tuning: None,
        };
        let r = c.rt.block_on(e.open_replicated_stream(
            account,
            sa.config.clone(),
            sa.created,
            spec,
            c.transport(),
        ));
        if let Some(g) = e.raft_group(account, name) {
            c.register_group(g, &sa.group);
        }
        r.map_err(|err| E::StreamCreate(err.to_string()))
    } else if action == Action::Update {
        if !e.is_stream_leader(account, name) {
            return;
        }
        let current = acc.stream(name).map(|h| h.cfg.read().clone());
        if let Some(old) = current {
            if let Err(err) = crate::api::streams::check_update(&old, &sa.config) {
                if let Some(r) = reply {
                    crate::api::reply_to(e, &acc, r, "stream_update_response", Err(err));
                }
                return;
            }
        }
        c.rt.block_on(e.update_replicated_stream(account, sa.config.clone()))
            .map_err(|err| E::StreamUpdate(err.to_string()))
    } else {
        Ok(())
    };
    let first = sa.peers.first() == Some(&c.me.name);
    let reply = reply.filter(|_| action == Action::Update || first);
    let Some(r) = reply else {
        if let Err(err) = res {
            tracing::error!(
                "JetStream cluster: replicated stream {account:?} > {name:?}: {}",
                crate::api::errors::ApiError::from(err)
            );
        }
        return;
    };
    let kind = if action == Action::Update {
        "stream_update_response"
    } else {
        "stream_create_response"
    };
    if action == Action::Create && res.is_ok() {
        // Answer once the stream takes publishes: its STREAM.INFO is answered only by a
        // leader that ingests (its no-op applied), whichever member that is. Answering as
        // soon as some member was elected let the client's first publishes (or its info
        // request) arrive before the leader knew it led: they went unanswered.
        let res =
            c.rt.block_on(info_from_leader(e, account, name))
                .map(|mut info| {
                    info["did_create"] = json!(true);
                    info
                });
        crate::api::reply_to(e, &acc, r, kind, res);
        return;
    }
    let res = res.and_then(|()| {
        // Answer once the stream can take publishes (bounded: the client times out anyway).
        if let Some(g) = e.raft_group(account, name) {
            let mut rx = g.leader_watch();
            let _ = c.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some)).await
            });
        }
        let mut info = crate::api::on_stream(&acc, Some(name), |core| Ok(core.info(None, false)))?;
        // The stream's own `cluster` object is refreshed twice a second: the group's state
        // now, with the leader just elected.
        if let Some(cl) = e.stream_cluster_info(account, name) {
            info["cluster"] = cl;
        }
        Ok(info)
    });
    crate::api::reply_to(e, &acc, r, kind, res);
}

/// A new replicated stream's info as its ready leader answers it (`$JS.API.STREAM.INFO`
/// through this server, asked again every 300 ms for at most 10 s: no member answers it
/// until the leader ingests).
async fn info_from_leader(e: &Engine, account: &str, name: &str) -> Result<Value, E> {
    let subject = format!("$JS.API.STREAM.INFO.{name}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        e.host.request(
            account,
            &subject,
            None,
            b"",
            Duration::from_millis(300),
            Box::new(move |m| {
                let _ = tx.send(m);
            }),
        );
        if let Ok(Some(m)) = rx.await {
            if let Ok(mut v) = serde_json::from_slice::<Value>(&m.payload) {
                if v.get("error").is_none() {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("type");
                    }
                    return Ok(v);
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(E::ClusterNotAvail);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn remove(e: &Engine, account: &str, name: &str, reply: Option<&str>) {
    let Some(acc) = e.accounts.read().get(account).cloned() else {
        return;
    };
    let res = match crate::api::streams::delete(e, &acc, Some(name)) {
        // The assignment is gone either way.
        Err(E::StreamNotFound) => Ok(json!({"success": true})),
        r => r,
    };
    match reply {
        Some(r) => crate::api::reply_to(e, &acc, r, "stream_delete_response", res),
        None => {
            if let Err(err) = res {
                tracing::error!(
                    "JetStream cluster: removing stream {account:?} > {name:?}: {}",
                    crate::api::errors::ApiError::from(err)
                );
            }
        }
    }
}
