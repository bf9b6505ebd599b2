//! [`Group`]: one member of one Raft group, on openraft.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, ChangeMembers, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec;
use crate::log::LogStore;
use crate::net::{Net, NetShared};
use crate::sm::SmStore;
use crate::types::{Payload, TC};
use crate::{
    GroupConfig, NodeId, OpenError, Peer, ProposeError, ReplicaStatus, RpcKind, StateMachine,
    Status, Transport,
};

/// How long a proposal or a leadership check may wait for a quorum before it fails with
/// [`ProposeError::NoQuorum`]: five maximum election timeouts, within 1..=5 s.
fn quorum_wait(cfg: &GroupConfig) -> Duration {
    (cfg.election_timeout_max * 5).clamp(Duration::from_secs(1), Duration::from_secs(5))
}
/// How long a membership change may wait to commit.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(30);

type Metrics = RaftMetrics<NodeId, BasicNode>;

struct Inner {
    cfg: GroupConfig,
    raft: Raft<TC>,
    log: LogStore,
    sm: SmStore,
    net: Arc<NetShared>,
    leader_tx: Arc<watch::Sender<Option<Peer>>>,
    leader_since: Arc<Mutex<Option<SystemTime>>>,
    bootstrapped: AtomicBool,
}

/// A member of one Raft group. Cheap to clone.
#[derive(Clone)]
pub struct Group {
    inner: Arc<Inner>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn peer_of(m: &Metrics, id: NodeId) -> Peer {
    peer_in(&m.membership_config, id)
}

fn peer_in(membership: &crate::types::StoredMembership, id: NodeId) -> Peer {
    match membership.membership().get_node(&id) {
        Some(n) => Peer {
            id,
            name: n.addr.clone(),
        },
        None => Peer {
            id,
            name: id.to_string(),
        },
    }
}

fn not_leader(f: &ForwardToLeader<NodeId, BasicNode>) -> ProposeError {
    ProposeError::NotLeader {
        leader: f.leader_id.map(|id| Peer {
            id,
            name: f
                .leader_node
                .as_ref()
                .map(|n| n.addr.clone())
                .unwrap_or_else(|| id.to_string()),
        }),
    }
}

fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ProposeError::Fatal(c.to_string())
        }
        RaftError::Fatal(_) => ProposeError::Shutdown,
    }
}

#[derive(Serialize, Deserialize)]
struct TimeoutNow {
    /// The leader asking.
    from: NodeId,
    term: u64,
}

impl Group {
    /// Opens (or resumes, when `cfg.dir` holds state) this member of the group.
    ///
    /// Must be called within a tokio runtime; a multi-threaded one is expected, as the
    /// state machine's `apply`/`snapshot`/`restore` and the log's disk I/O run through
    /// `tokio::task::block_in_place` there (inline on a current-thread runtime).
    pub async fn open(
        cfg: GroupConfig,
        sm: Arc<dyn StateMachine>,
        transport: Arc<dyn Transport>,
    ) -> Result<Group, OpenError> {
        let storage = |reason: String| OpenError::Storage {
            group: cfg.name.clone(),
            reason,
        };
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| storage(format!("{}: {e}", cfg.dir.display())))?;
        let dir = cfg.dir.clone();
        let app = sm.clone();
        let (log, smstore) = crate::fsutil::blocking(move || {
            Ok::<_, String>((LogStore::open(&dir)?, SmStore::open(&dir, app)?))
        })
        .map_err(storage)?;
        log.set_sync(cfg.log_sync);
        let max_body = transport.max_body();
        let config = Config {
            cluster_name: cfg.name.clone(),
            heartbeat_interval: ms(cfg.heartbeat),
            election_timeout_min: ms(cfg.election_timeout_min),
            election_timeout_max: ms(cfg.election_timeout_max)
                .max(ms(cfg.election_timeout_min) + 1),
            install_snapshot_timeout: ms(cfg.rpc_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: cfg.snapshot_every.clamp(1, 1000),
            // Chunks well below what the transport carries (the chunk travels with its
            // metadata; a route closes on a body over max_payload).
            snapshot_max_chunk_size: (max_body / 4).clamp(4 << 10, 1 << 20) as u64,
            max_payload_entries: 1024,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| storage(e.to_string()))?);
        let net = Arc::new(NetShared {
            group: cfg.name.clone(),
            me: cfg.me.id,
            transport,
            rpc_timeout: cfg.rpc_timeout,
            backoff: cfg.heartbeat.max(Duration::from_millis(10)) * 2,
            quiet: cfg.heartbeat / 5,
            last_seen: Mutex::new(Default::default()),
        });
        let bootstrapped = log.has_state();
        let raft = Raft::new(
            cfg.me.id,
            config,
            Net(net.clone()),
            log.clone(),
            smstore.clone(),
        )
        .await
        .map_err(|e| storage(e.to_string()))?;
        // The core publishes its loaded state (last index, membership) once it runs: wait for
        // it so that status() is right as soon as open returns.
        let last = log.last_log_index();
        let _ = raft
            .wait(Some(Duration::from_secs(2)))
            .metrics(|m| m.last_log_index == last, "log loaded")
            .await;
        let (leader_tx, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            cfg,
            raft,
            log,
            sm: smstore,
            net,
            leader_tx: Arc::new(leader_tx),
            leader_since: Arc::new(Mutex::new(None)),
            bootstrapped: AtomicBool::new(bootstrapped),
        });
        Self::spawn_watcher(&inner);
        Ok(Group { inner })
    }

    /// Follows the server metrics (state, leader, membership: openraft notifies them only
    /// when they change, unlike the full metrics, which change with every append, commit
    /// and apply, several wake-ups per replicated entry on every member): publishes leader
    /// changes and records when this member became leader. Ends when the Raft core stops.
    fn spawn_watcher(inner: &Arc<Inner>) {
        let mut rx = inner.raft.server_metrics();
        let tx = inner.leader_tx.clone();
        let since = inner.leader_since.clone();
        let me = inner.cfg.me.id;
        tokio::spawn(async move {
            loop {
                {
                    let m = rx.borrow_and_update();
                    let leader = m.current_leader.map(|id| peer_in(&m.membership_config, id));
                    let leading = m.state == ServerState::Leader && m.current_leader == Some(me);
                    {
                        let mut s = since.lock();
                        match (leading, s.is_some()) {
                            (true, false) => *s = Some(SystemTime::now()),
                            (false, true) => *s = None,
                            _ => {}
                        }
                    }
                    tx.send_if_modified(|cur| {
                        if *cur != leader {
                            *cur = leader;
                            true
                        } else {
                            false
                        }
                    });
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
            tx.send_replace(None);
        });
    }

    /// Does this member lead the group (as far as it knows)?
    pub fn leads(&self) -> bool {
        self.is_leader(&self.inner.raft.metrics().borrow())
    }

    /// Does this member know a leader and has it applied every entry it knows to be
    /// committed (a follower fit to serve reads, within an election timeout of staleness)?
    pub fn is_current(&self) -> bool {
        let leader = self.inner.raft.metrics().borrow().current_leader.is_some();
        leader
            && self.inner.sm.applied_index().unwrap_or(0) >= self.inner.log.committed().unwrap_or(0)
    }

    /// Has this member ever been part of an initialised group (state on disk)?
    pub fn initialized(&self) -> bool {
        self.inner.bootstrapped.load(Ordering::Relaxed) || self.inner.log.has_state()
    }

    /// Initialises a fresh group with `members` (this member among them). A no-op error-free
    /// call when the group is already initialised.
    ///
    /// Every member of a new group may call it with the same list (openraft writes the same
    /// first entry, the membership at log index 0, on each, so their logs agree); a member
    /// that already holds state (its own bootstrap, or entries from a leader) ignores it.
    /// Calling it with *different* lists on different members is a split brain: don't.
    pub async fn bootstrap(&self, members: Vec<Peer>) -> Result<(), ProposeError> {
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|p| (p.id, BasicNode::new(&p.name)))
            .collect();
        match self.inner.raft.initialize(nodes).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                self.inner.bootstrapped.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ProposeError::Fatal(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(ProposeError::Shutdown),
        }
    }

    /// Handles an RPC a peer sent through its [`Transport`]; the result is the reply body.
    /// Malformed bodies are an error, never a panic.
    pub async fn handle_rpc(&self, kind: RpcKind, body: Bytes) -> Result<Bytes, String> {
        let raft = &self.inner.raft;
        match kind {
            RpcKind::AppendEntries => {
                let req = codec::decode_append(&body)?;
                let resp = raft.append_entries(req).await.map_err(|e| e.to_string())?;
                codec::to_json(&resp)
            }
            RpcKind::Vote => {
                let req: VoteRequest<NodeId> = codec::from_json(&body)?;
                let resp = raft.vote(req).await.map_err(|e| e.to_string())?;
                codec::to_json(&resp)
            }
            RpcKind::InstallSnapshot => {
                let req = codec::decode_install(&body)?;
                let resp = raft
                    .install_snapshot(req)
                    .await
                    .map_err(|e| e.to_string())?;
                codec::to_json(&resp)
            }
            RpcKind::TimeoutNow => {
                let req: TimeoutNow = codec::from_json(&body)?;
                let m = self.metrics();
                // Only the current leader may hand over, and only for its own term. A member
                // that is between leaders after that leader's term (its own campaign for the
                // hand-off failed: the other voters' leases had not lapsed yet) campaigns again
                // at once rather than on its election timer; that disturbs no leader.
                let follows_sender =
                    m.current_leader == Some(req.from) && m.current_term == req.term;
                let between = m.current_leader.is_none()
                    && m.current_term >= req.term
                    && m.state != ServerState::Leader;
                if !follows_sender && !between {
                    return Err(format!(
                        "timeout-now from {} (term {}) ignored: leader {:?}, term {}",
                        req.from, req.term, m.current_leader, m.current_term
                    ));
                }
                raft.trigger().elect().await.map_err(|e| e.to_string())?;
                Ok(Bytes::from_static(b"{}"))
            }
        }
    }

    fn metrics(&self) -> Metrics {
        self.inner.raft.metrics().borrow().clone()
    }

    fn is_leader(&self, m: &Metrics) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.cfg.me.id)
    }

    /// Fails fast when this member leads but has not heard from a quorum for a while.
    fn check_quorum(&self) -> Result<(), ProposeError> {
        let m = self.metrics();
        if self.is_leader(&m) {
            let limit = ms(self.inner.cfg.election_timeout_max) * 3;
            if m.millis_since_quorum_ack.is_some_and(|t| t > limit) {
                return Err(ProposeError::NoQuorum);
            }
        }
        Ok(())
    }

    /// Replicates `entry`; returns its log index and `apply`'s answer on this member.
    ///
    /// Fails with [`ProposeError::NoQuorum`] when no quorum answered within five election
    /// timeouts (bounded to 1..=5 s; 5 s with the defaults), or at once
    /// when this leader has not heard from a quorum for three election timeouts). A proposal
    /// that timed out may still commit later, if a quorum comes back before another leader
    /// replaces the entry.
    pub async fn propose(&self, entry: Bytes) -> Result<(u64, Bytes), ProposeError> {
        self.check_quorum()?;
        match tokio::time::timeout(
            quorum_wait(&self.inner.cfg),
            self.inner.raft.client_write(Payload(entry)),
        )
        .await
        {
            Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data.0)),
            Ok(Err(e)) => Err(write_err(e)),
            Err(_) => Err(ProposeError::NoQuorum),
        }
    }

    /// Confirms with a quorum that this member is still the leader (linearizable reads).
    /// Bounded like [`Group::propose`].
    pub async fn ensure_leader(&self) -> Result<(), ProposeError> {
        self.check_quorum()?;
        match tokio::time::timeout(
            quorum_wait(&self.inner.cfg),
            self.inner.raft.ensure_linearizable(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(not_leader(&f))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ProposeError::NoQuorum)
            }
            Ok(Err(RaftError::Fatal(_))) => Err(ProposeError::Shutdown),
            Err(_) => Err(ProposeError::NoQuorum),
        }
    }

    async fn membership_write<F, Fut>(&self, f: F) -> Result<(), ProposeError>
    where
        F: FnOnce(Raft<TC>) -> Fut,
        Fut: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<TC>,
                RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
            >,
        >,
    {
        match tokio::time::timeout(MEMBERSHIP_WAIT, f(self.inner.raft.clone())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(write_err(e)),
            Err(_) => Err(ProposeError::NoQuorum),
        }
    }

    /// Adds `peer` as a learner (it catches up without voting). Returns once the change is
    /// committed, without waiting for the learner to catch up. A no-op for a member.
    pub async fn add_learner(&self, peer: Peer) -> Result<(), ProposeError> {
        let m = self.metrics();
        if !self.is_leader(&m) {
            return Err(ProposeError::NotLeader {
                leader: m.current_leader.map(|id| peer_of(&m, id)),
            });
        }
        if m.membership_config
            .membership()
            .get_node(&peer.id)
            .is_some()
        {
            return Ok(());
        }
        self.membership_write(|raft| async move {
            raft.add_learner(peer.id, BasicNode::new(&peer.name), false)
                .await
        })
        .await
    }

    /// Sets the voters to exactly `voters` (learners among them are promoted; members not
    /// listed are removed). Returns once the change is committed.
    pub async fn set_voters(&self, voters: Vec<Peer>) -> Result<(), ProposeError> {
        if voters.is_empty() {
            return Err(ProposeError::Fatal(
                "a group needs at least one voter".into(),
            ));
        }
        for p in &voters {
            self.add_learner(p.clone()).await?;
        }
        let ids: BTreeSet<NodeId> = voters.iter().map(|p| p.id).collect();
        let m = self.metrics();
        let current: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        if current != ids {
            self.membership_write(|raft| async move {
                raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), false)
                    .await
            })
            .await?;
        }
        let m = self.metrics();
        let stale: BTreeSet<NodeId> = m
            .membership_config
            .membership()
            .learner_ids()
            .filter(|id| !voters.iter().any(|p| p.id == *id))
            .collect();
        if !stale.is_empty() {
            self.membership_write(|raft| async move {
                raft.change_membership(ChangeMembers::RemoveNodes(stale), false)
                    .await
            })
            .await?;
        }
        Ok(())
    }

    /// Asks the leader (this member) to hand leadership to another voter; `to` picks one,
    /// otherwise the most up-to-date voter is chosen.
    ///
    /// openraft 0.9 has no leader transfer, so this is: wait (bounded) for the target to hold
    /// the whole log, pause this leader's heartbeats (so the other voters' leader leases
    /// lapse) and its election timer, and ask the target ([`RpcKind::TimeoutNow`]) to start an
    /// election, asking again every maximum election timeout until another member leads (at
    /// most six election timeouts plus an RPC timeout). Returns `Ok` once another member
    /// leads; with more than three voters an other voter than `to` may win.
    pub async fn step_down(&self, to: Option<Peer>) -> Result<(), ProposeError> {
        let me = self.inner.cfg.me.id;
        let m = self.metrics();
        if !self.is_leader(&m) {
            return Err(ProposeError::NotLeader {
                leader: m.current_leader.map(|id| peer_of(&m, id)),
            });
        }
        let voters: Vec<NodeId> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != me)
            .collect();
        let matched = |m: &Metrics, id: NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index)
        };
        let target = match &to {
            Some(p) if voters.contains(&p.id) => p.id,
            Some(p) => {
                return Err(ProposeError::Fatal(format!(
                    "{} is not a voter of group {}",
                    p.name, self.inner.cfg.name
                )))
            }
            None => match voters.iter().max_by_key(|id| matched(&m, **id)) {
                Some(id) => *id,
                None => {
                    return Err(ProposeError::Fatal(
                        "no other voter to hand leadership to".into(),
                    ))
                }
            },
        };
        let target_peer = peer_of(&m, target);
        let cfg = &self.inner.cfg;
        // Let the target catch up with the log first (bounded).
        let catch_up = Instant::now() + cfg.election_timeout_max;
        loop {
            let m = self.metrics();
            if matched(&m, target) >= m.last_log_index || Instant::now() > catch_up {
                break;
            }
            tokio::time::sleep(cfg.heartbeat / 2).await;
        }
        let raft = &self.inner.raft;
        // Pause this leader's heartbeats, and its own election timer: once it has granted
        // the target's vote it is between leaders, and must not campaign back into the
        // leadership it is handing over.
        raft.runtime_config().heartbeat(false);
        raft.runtime_config().elect(false);
        // Both come back however this ends (also when the caller drops the future).
        struct Resume<'a>(&'a Raft<TC>);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.runtime_config().heartbeat(true);
                self.0.runtime_config().elect(true);
            }
        }
        let resume = Resume(raft);
        let start_term = m.current_term;
        let deadline = Instant::now() + cfg.election_timeout_max * 6 + cfg.rpc_timeout;
        let mut watch = self.leader_watch();
        let mut asked = 0u32;
        let mut last_answer = String::from("not asked");
        // Done once another member is known to lead (not merely when this one stopped
        // leading: an election in between may bring it back).
        let moved_away = || self.metrics().current_leader.is_some_and(|l| l != me);
        let moved = loop {
            if moved_away() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            // Ask the target to campaign: for this leader's term while it leads, and again
            // while it is between leaders (the target's first campaign can fail on the other
            // voters' leases, which this leader's last heartbeats renewed).
            let body = codec::to_json(&TimeoutNow {
                from: me,
                term: self.metrics().current_term,
            })
            .map_err(ProposeError::Fatal)?;
            asked += 1;
            last_answer = match self
                .inner
                .net
                .call(&target_peer, RpcKind::TimeoutNow, body, cfg.rpc_timeout)
                .await
            {
                Ok(_) => "campaigning".into(),
                Err(e) => {
                    tracing::debug!(group = %cfg.name, "step down: timeout-now to {}: {e}", target_peer.name);
                    e.to_string()
                }
            };
            // Paced at the lease: a campaign asked for again restarts the one in progress.
            let next = Instant::now() + cfg.election_timeout_max;
            while Instant::now() < next.min(deadline) && !moved_away() {
                let _ = tokio::time::timeout(cfg.heartbeat, watch.changed()).await;
                watch.borrow_and_update();
            }
        };
        drop(resume);
        if moved {
            Ok(())
        } else {
            let m = self.metrics();
            Err(ProposeError::Fatal(format!(
                "leadership of group {} did not move to {} (term {} -> {}, {:?}; asked {} times, last answer: {})",
                cfg.name,
                target_peer.name,
                start_term,
                m.current_term,
                m.state,
                asked,
                last_answer
            )))
        }
    }

    /// Takes a snapshot of everything applied and drops the log it covers (bounded by
    /// `within`). Members added afterwards then receive the snapshot instead of replaying
    /// the log: needed when the state machine held data before the group existed (a
    /// single-server stream turned replicated), which no log entry carries.
    pub async fn compact(&self, within: Duration) -> Result<u64, ProposeError> {
        let raft = &self.inner.raft;
        let applied = self
            .metrics()
            .last_applied
            .map(|l| l.index)
            .ok_or_else(|| ProposeError::Fatal("nothing applied yet".into()))?;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|_| ProposeError::Shutdown)?;
        let snapshot = |m: &Metrics| m.snapshot.is_some_and(|s| s.index >= applied);
        self.wait_for(within, snapshot, "snapshot taken").await?;
        raft.trigger()
            .purge_log(applied)
            .await
            .map_err(|_| ProposeError::Shutdown)?;
        // A member added before the purge is done would be sent the log, not the snapshot.
        let purged = |m: &Metrics| m.purged.is_some_and(|p| p.index >= applied);
        self.wait_for(within, purged, "log purged").await?;
        Ok(applied)
    }

    /// Waits (at most `within`) until the metrics satisfy `pred`.
    async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&Metrics) -> bool + Send,
        what: &str,
    ) -> Result<(), ProposeError> {
        match self.inner.raft.wait(Some(within)).metrics(pred, what).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ProposeError::Fatal(format!(
                "group {}: not {what} within {within:?}",
                self.inner.cfg.name
            ))),
        }
    }

    /// The group's current state.
    pub fn status(&self) -> Status {
        let m = self.metrics();
        let me = self.inner.cfg.me.clone();
        let is_leader = self.is_leader(&m);
        let last_index = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_seen = self.inner.net.last_seen.lock().clone();
        let committed = self.inner.log.committed().unwrap_or(0);
        let replicas = membership
            .nodes()
            .map(|(id, n)| {
                let peer = Peer {
                    id: *id,
                    name: n.addr.clone(),
                };
                let (matched, seen) = if !is_leader {
                    (0, None)
                } else if *id == me.id {
                    (last_index, Some(Duration::ZERO))
                } else {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                        .unwrap_or(0);
                    (matched, last_seen.get(id).map(|t| t.elapsed()))
                };
                ReplicaStatus {
                    voter: voters.contains(id),
                    matched,
                    lag: if is_leader {
                        committed.saturating_sub(matched)
                    } else {
                        0
                    },
                    last_seen: seen,
                    peer,
                }
            })
            .collect();
        Status {
            me,
            leader: m.current_leader.map(|id| peer_of(&m, id)),
            is_leader,
            leader_since: if is_leader {
                *self.inner.leader_since.lock()
            } else {
                None
            },
            term: m.current_term,
            last_index,
            committed,
            applied: self.inner.sm.applied_index().unwrap_or(0),
            replicas,
        }
    }

    /// Watches the leader: the receiver changes whenever the known leader does.
    pub fn leader_watch(&self) -> watch::Receiver<Option<Peer>> {
        self.inner.leader_tx.subscribe()
    }

    /// Stops the member (the state stays on disk).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::debug!(group = %self.inner.cfg.name, "raft shutdown: {e}");
        }
    }

    /// Stops the member and deletes its directory (the group was removed from this server).
    pub async fn destroy(&self) -> Result<(), String> {
        self.shutdown().await;
        let dir = self.inner.cfg.dir.clone();
        crate::fsutil::blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        })
    }
}
