//! Cluster operations: leader step-downs, moving a stream's copies (`STREAM.PEER.REMOVE`,
//! `SERVER.REMOVE`), changing `num_replicas` through `STREAM.UPDATE`, and the "stream is
//! offline" answer.
//!
//! **Peer changes.** The meta leader decides a stream's new peer list and proposes it
//! (an `Update` entry). Each member then does its part from the reconciler: a new member
//! opens its copy without initialising the group (the leader brings it in), a removed one
//! deletes its copy (handing the group to the others first when it leads), and the
//! stream's leader makes the group's voters equal to the peers
//! ([`Cluster::sync_stream_peers`], checked every tick, so a leader change or a failed
//! attempt is simply retried).
//!
//! **R1 → R>1.** The single-server stream's host stops it and opens the same store as the
//! only member of a new group, which it leads; it then snapshots and drops the group's log
//! ([`canopy_raft::Group::compact`]), so the members added next receive the stream's data
//! (a snapshot), not a log that never held the messages stored before the group existed.
//! **R>1 → R1.** The meta leader keeps the copy of the stream's leader: that member closes
//! its group and reopens the store as a single-server stream; the others delete theirs.
//! Memory streams cannot cross between R1 and R>1 (their data would not survive the
//! reopening) and are refused with 10061.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_raft::{Group, Peer};
use serde::Deserialize;
use serde_json::{json, Value};

use super::meta::{Action, Entry, StreamAssignment};
use super::{short_hash, Cluster};
use crate::api::errors::E;
use crate::engine::{Account, Engine};
use crate::types::StorageType;

/// How long a scale answer waits for the change to be in effect.
const SCALE_WAIT: Duration = Duration::from_secs(20);
/// How long a converting member waits for its new group's leadership and snapshot.
const CONVERT_WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize, Default)]
struct StepdownReq {
    #[serde(default)]
    placement: Option<PlacementReq>,
}

#[derive(Deserialize, Default)]
struct PlacementReq {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    preferred: Option<String>,
}

#[derive(Deserialize, Default)]
struct PeerReq {
    #[serde(default)]
    peer: String,
    #[serde(default)]
    peer_id: String,
}

/// `STREAM.LEADER.STEPDOWN.<stream>` and `CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>`
/// on the stream's leader. Consumers are replicated through their stream's group (the
/// consumer leader is the stream leader), so a consumer step-down hands over the stream's
/// group. A stream without a group (R1) has nothing to hand over: success, as nats-server.
pub(crate) fn leader_stepdown(
    e: &Engine,
    acc: &Account,
    stream: &str,
    consumer: Option<&str>,
    body: &[u8],
) -> Result<Value, E> {
    let c = e.cluster().ok_or(E::ClusterRequired)?;
    let h = acc.stream(stream).ok_or(E::StreamNotFound)?;
    if let Some(name) = consumer {
        let name = name.to_string();
        if !h
            .call(move |core| core.consumers.contains_key(&name))
            .unwrap_or(false)
        {
            return Err(E::ConsumerNotFound);
        }
    }
    let Some(g) = e.raft_group(&acc.name, stream) else {
        return Ok(json!({"success": true}));
    };
    let req: StepdownReq = crate::api::parse_body(body)?;
    let to = c.preferred_leader(&g, req.placement.as_ref())?;
    if super::voters(&g).len() < 2 {
        return Err(E::RaftGeneral(
            "no other voter to hand leadership to".into(),
        ));
    }
    // Answered at once, as nats-server does: the hand-over takes an election.
    let (stream, account) = (stream.to_string(), acc.name.clone());
    c.rt.spawn(async move {
        if let Err(err) = g.step_down(to).await {
            tracing::warn!("JetStream: stream {account:?} > {stream:?}: leader step-down: {err}");
        }
    });
    Ok(json!({"success": true}))
}

/// The member to receive the stream's whole state on a scale down: the leader's copy.
fn pick_leader(info: Option<&Value>) -> Option<String> {
    info?["cluster"]["leader"].as_str().map(str::to_string)
}

impl Cluster {
    /// The voter a step-down's `placement` asks for (nats-server's rules and texts, 10005).
    fn preferred_leader(&self, g: &Group, p: Option<&PlacementReq>) -> Result<Option<Peer>, E> {
        let Some(p) = p else {
            return Ok(None);
        };
        let no_peers = |t: String| E::ClusterNoPeers(t);
        let voters = super::voters(g);
        if let Some(name) = p.preferred.as_deref().filter(|n| !n.is_empty()) {
            if name == self.me.name {
                return Err(no_peers(format!(
                    "preferred server {name:?} is already leader"
                )));
            }
            return match voters.into_iter().find(|v| v.name == name) {
                Some(v) => Ok(Some(v)),
                None => Err(no_peers(format!("preferred server {name:?} not known"))),
            };
        }
        let cluster_ok = p
            .cluster
            .as_deref()
            .is_none_or(|c| c.is_empty() || self.cluster_name().as_deref() == Some(c));
        let online = self.js_peers();
        let want: Vec<String> = p.tags.iter().map(|t| t.to_lowercase()).collect();
        let pick = voters.into_iter().find(|v| {
            let tags: Vec<String> = self
                .tags_of(&v.name)
                .iter()
                .map(|t| t.to_lowercase())
                .collect();
            cluster_ok
                && v.name != self.me.name
                && online.contains(&v.name)
                && want.iter().all(|t| tags.contains(t))
        });
        match pick {
            Some(v) => Ok(Some(v)),
            None => Err(no_peers("no replacement peer connected".into())),
        }
    }

    /// Is every server holding `sa` down (not this one, and not routed)? The meta leader
    /// then answers for the stream: 10118 "stream is offline".
    pub(crate) fn offline(&self, sa: &StreamAssignment) -> bool {
        let online = self.js_peers();
        sa.peers
            .iter()
            .all(|p| *p != self.me.name && !online.contains(p))
    }

    /// On every member, each tick: for the replicated streams this member leads, makes the
    /// group's voters the assignment's peers (new ones join as learners first).
    pub(crate) fn sync_stream_peers(&self) {
        let Some(e) = self.engine.upgrade() else {
            return;
        };
        let mine: Vec<StreamAssignment> = {
            let st = self.machine.state.lock();
            st.hosted_by(&self.me.name)
                .filter(|sa| !sa.group.is_empty())
                .cloned()
                .collect()
        };
        for sa in mine {
            let (account, name) = (sa.account.clone(), sa.name().to_string());
            if !e.is_stream_leader(&account, &name) {
                continue;
            }
            let Some(g) = e.raft_group(&account, &name) else {
                continue;
            };
            let st = g.status();
            let members: BTreeSet<(String, bool)> = st
                .replicas
                .iter()
                .map(|r| (r.peer.name.clone(), r.voter))
                .collect();
            let want: BTreeSet<(String, bool)> =
                sa.peers.iter().map(|p| (p.clone(), true)).collect();
            if members == want {
                continue;
            }
            let key = format!("{account}\u{0}{name}");
            if !self.busy.lock().insert(key.clone()) {
                continue;
            }
            let (busy, e) = (self.busy.clone(), e.clone());
            let peers: Vec<Peer> = sa.peers.iter().map(|p| Peer::new(p)).collect();
            self.rt.spawn(async move {
                tracing::info!(
                    "JetStream cluster: stream {account:?} > {name:?}: peers become {:?}",
                    peers.iter().map(|p| &p.name).collect::<Vec<_>>()
                );
                if let Err(err) = e.set_stream_peers(&account, &name, peers).await {
                    tracing::warn!(
                        "JetStream cluster: stream {account:?} > {name:?}: changing its peers: {err} (retried)"
                    );
                }
                busy.lock().remove(&key);
            });
        }
    }

    /// The stream's info as its leader (or host) answers it, `None` when nobody does.
    pub(crate) async fn ask_info(&self, acc: &Account, name: &str) -> Option<Value> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.host.request(
            &acc.name,
            &format!("$JS.API.STREAM.INFO.{name}"),
            None,
            b"",
            super::api::GATHER_TIMEOUT,
            Box::new(move |m| {
                let _ = tx.send(m.and_then(|m| serde_json::from_slice::<Value>(&m.payload).ok()));
            }),
        );
        rx.await.ok().flatten().filter(|v| v.get("error").is_none())
    }

    /// A stream that keeps everything but `removed`: a replacement chosen by placement,
    /// or (`shrink`, R>1) the others alone. `None`: neither is possible.
    fn remap(
        &self,
        sa: &StreamAssignment,
        removed: &str,
        shrink: bool,
    ) -> Option<StreamAssignment> {
        let keep: Vec<String> = sa.peers.iter().filter(|p| *p != removed).cloned().collect();
        let peers = match self.place_more(&sa.config, 1, &keep, &[removed.to_string()]) {
            Ok(more) => keep.into_iter().chain(more).collect(),
            Err(_) if shrink && !keep.is_empty() && !sa.group.is_empty() => keep,
            Err(_) => return None,
        };
        Some(StreamAssignment {
            founders: sa.founders().to_vec(),
            peers,
            ..sa.clone()
        })
    }

    /// `$JS.API.STREAM.PEER.REMOVE.<stream>` on the meta leader: the named server's copy is
    /// replaced by one on another eligible member. Without a replacement (or for an R1
    /// stream, whose copy cannot move without its data) the answer is 10075, and nothing
    /// changes (nats-server 2.12's rule; 2.11 answered the same error but shrank the group).
    pub(crate) async fn peer_remove(
        &self,
        acc: &Account,
        name: &str,
        body: &[u8],
    ) -> Result<Value, E> {
        if body.trim_ascii().is_empty() {
            return Err(E::BadRequest);
        }
        let req: PeerReq =
            serde_json::from_slice(body).map_err(|e| E::InvalidJson(e.to_string()))?;
        if req.peer.is_empty() {
            return Err(E::BadRequest);
        }
        let sa = self.assignment(acc, name)?;
        let peer = sa
            .peers
            .iter()
            .find(|p| **p == req.peer || short_hash(p) == req.peer)
            .cloned()
            .ok_or(E::ClusterPeerNotMember)?;
        if sa.group.is_empty() {
            return Err(E::PeerRemap);
        }
        let new = self.remap(&sa, &peer, false).ok_or(E::PeerRemap)?;
        self.propose(Entry::stream(Action::Update, new, None))
            .await?;
        Ok(json!({"success": true}))
    }

    /// `$JS.API.SERVER.REMOVE` (system account) on the meta leader: the server's replicated
    /// streams move to other members (or shrink when none is eligible; its R1 streams stay
    /// assigned to it, offline until it returns), then it leaves the meta group. That run
    /// of it is not admitted again by any leader; restarted, it is.
    pub(crate) async fn server_remove(&self, body: &[u8]) -> Result<Value, E> {
        if body.trim_ascii().is_empty() {
            return Err(E::BadRequest);
        }
        let req: PeerReq =
            serde_json::from_slice(body).map_err(|e| E::InvalidJson(e.to_string()))?;
        let g = self.meta_group().ok_or(E::ClusterNotAvail)?;
        let members = g.status().replicas;
        let found = members
            .iter()
            .find(|r| {
                if req.peer_id.is_empty() {
                    r.peer.name == req.peer
                } else {
                    short_hash(&r.peer.name) == req.peer_id
                }
            })
            .map(|r| r.peer.name.clone())
            .ok_or(E::ClusterServerNotMember)?;
        if self.removing.swap(true, Ordering::SeqCst) {
            return Err(E::ClusterServerMemberChangeInflight);
        }
        let res = self.remove_member(&g, &found).await;
        self.removing.store(false, Ordering::SeqCst);
        res.map(|()| json!({"success": true}))
    }

    async fn remove_member(&self, g: &Group, name: &str) -> Result<(), E> {
        // Remembered by the whole meta group (any later leader keeps this run out).
        let id = self
            .js_route_peers()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.id)
            .unwrap_or_default();
        self.propose(Entry::remove_server(name, id)).await?;
        let hosted: Vec<StreamAssignment> = {
            let st = self.machine.state.lock();
            st.hosted_by(name)
                .filter(|sa| !sa.group.is_empty())
                .cloned()
                .collect()
        };
        // Streams first: a leader removing itself can no longer propose afterwards.
        for sa in hosted {
            let Some(new) = self.remap(&sa, name, true) else {
                continue;
            };
            self.propose(Entry::stream(Action::Update, new, None))
                .await?;
        }
        let voters: Vec<Peer> = super::voters(g)
            .into_iter()
            .filter(|p| p.name != name)
            .collect();
        tracing::info!("JetStream cluster: removing {name:?} from the meta group");
        g.set_voters(voters)
            .await
            .map_err(|e| E::RaftGeneral(e.to_string()))
    }

    /// `STREAM.UPDATE` changing `num_replicas`, on the meta leader: the new peer list is
    /// proposed, and the answer (the stream's info) is sent once the change is in effect
    /// (bounded by [`SCALE_WAIT`]).
    pub(crate) async fn propose_scale(
        &self,
        e: &Arc<Engine>,
        acc: &Arc<Account>,
        old: StreamAssignment,
        cfg: crate::types::StreamConfig,
        reply: &str,
    ) -> Result<(), E> {
        let (from, to) = (
            old.config.num_replicas.max(1) as usize,
            cfg.num_replicas.max(1) as usize,
        );
        if cfg.storage == StorageType::Memory && (from == 1 || to == 1) {
            return Err(E::StreamReplicasNotUpdatable);
        }
        let mut new = StreamAssignment {
            config: cfg,
            founders: old.founders().to_vec(),
            ..old.clone()
        };
        if to > from {
            let more = self.place_more(&new.config, to - from, &old.peers, &[])?;
            new.peers.extend(more);
            if from == 1 {
                // The new group starts on the host, with its data.
                new.group = format!("S-R{to}-{}", crate::util::random_name(10));
                new.founders = old.peers.clone();
            }
        } else {
            // Keep the leader's copy (it holds everything committed), then the others.
            let leader = pick_leader(self.ask_info(acc, old.name()).await.as_ref());
            let online = self.js_peers();
            let mut order: Vec<String> = old.peers.clone();
            order.sort_by_key(|p| {
                (
                    Some(p) != leader.as_ref(),
                    *p != self.me.name && !online.contains(p),
                )
            });
            order.truncate(to);
            new.peers = order;
            if to == 1 {
                new.group = String::new();
                new.founders = Vec::new();
            }
        }
        self.propose(Entry::stream(Action::Update, new, None))
            .await?;
        let res = self.wait_scaled(acc, &old.config.name, to).await;
        crate::api::reply_to(e, acc, reply, "stream_update_response", res);
        Ok(())
    }

    /// The stream's info once it runs with `replicas` current copies and a leader.
    async fn wait_scaled(&self, acc: &Account, name: &str, replicas: usize) -> Result<Value, E> {
        let deadline = Instant::now() + SCALE_WAIT;
        let mut last = None;
        loop {
            if let Some(mut info) = self.ask_info(acc, name).await {
                let reps = info["cluster"]["replicas"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let done = info["config"]["num_replicas"].as_u64().unwrap_or(1).max(1)
                    == replicas as u64
                    && info["cluster"]["leader"].is_string()
                    && reps.len() + 1 == replicas
                    && reps
                        .iter()
                        .all(|r| r["current"] == true && r.get("observer").is_none());
                if let Some(o) = info.as_object_mut() {
                    o.remove("type");
                }
                if done {
                    return Ok(info);
                }
                last = Some(info);
            }
            if Instant::now() > deadline {
                return last.ok_or(E::ClusterNotAvail);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// On the host of a single-server stream that became replicated: its store becomes the
/// initial state of the new group (see the module doc). Runs on the reconciler thread.
pub(crate) fn to_replicated(e: &Arc<Engine>, c: &Cluster, sa: &StreamAssignment) -> Result<(), E> {
    let (account, name) = (sa.account.as_str(), sa.name());
    let acc = e
        .accounts
        .read()
        .get(account)
        .cloned()
        .ok_or(E::NotEnabledForAccount)?;
    let key = format!("{account}\u{0}{name}");
    // The leader must not add members before the snapshot exists.
    c.busy.lock().insert(key.clone());
    let res = convert_up(e, c, &acc, sa);
    c.busy.lock().remove(&key);
    res
}

fn convert_up(
    e: &Arc<Engine>,
    c: &Cluster,
    acc: &Arc<Account>,
    sa: &StreamAssignment,
) -> Result<(), E> {
    let name = sa.name();
    let h = acc.stream(name).ok_or(E::StreamNotFound)?;
    let (old, uid) = (h.cfg.read().clone(), h.uid.clone());
    drop(h);
    e.drop_stream(acc, name);
    let dir = acc.dir.join(name);
    // From now on the metadata is `replica.json` (written by the open below): the
    // single-server recovery must not open the stream on its own again.
    let opened = match std::fs::remove_file(dir.join("meta.json")) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(E::StreamUpdate(format!("{}: {err}", dir.display())))
        }
        _ => {
            let spec = crate::replica::GroupSpec {
                name: sa.group.clone(),
                dir: c.dir.join(&sa.group),
                me: c.me.clone(),
                peers: sa.founders().iter().map(|p| Peer::new(p)).collect(),
                bootstrap: true,
                tuning: None,
            };
            c.rt.block_on(e.open_replicated_stream(
                &acc.name,
                sa.config.clone(),
                sa.created,
                spec,
                c.transport(),
            ))
            .map_err(|err| E::StreamUpdate(err.to_string()))
        }
    };
    if let Err(err) = opened {
        // Serve the data as before rather than not at all.
        tracing::error!(
            "JetStream cluster: stream {:?} > {name:?} could not become replicated: {}",
            acc.name,
            crate::api::errors::ApiError::from(err.clone())
        );
        if let Err(e2) = e.open_stream(acc, old, sa.created, uid, false) {
            tracing::error!(
                "JetStream cluster: stream {:?} > {name:?} could not reopen either: {}",
                acc.name,
                crate::api::errors::ApiError::from(e2)
            );
        }
        return Err(err);
    }
    let g = e
        .raft_group(&acc.name, name)
        .ok_or_else(|| E::StreamUpdate("the stream's group did not open".into()))?;
    c.register_group(g.clone(), &sa.group);
    let deadline = Instant::now() + CONVERT_WAIT;
    while !e.is_stream_leader(&acc.name, name) {
        if Instant::now() > deadline {
            return Err(E::StreamUpdate(
                "the stream's new group elected no leader".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.rt.block_on(g.compact(CONVERT_WAIT))
        .map_err(|err| E::StreamUpdate(err.to_string()))?;
    tracing::info!(
        "JetStream cluster: stream {:?} > {name:?} is replicated now (group {})",
        acc.name,
        sa.group
    );
    Ok(())
}

/// On the member that keeps the only copy of a replicated stream scaled down to R1: the
/// group is closed and removed, the store reopened as a single-server stream.
pub(crate) fn to_single(e: &Arc<Engine>, c: &Cluster, sa: &StreamAssignment, prev_group: &str) {
    let (account, name) = (sa.account.as_str(), sa.name());
    let Some(acc) = e.accounts.read().get(account).cloned() else {
        return;
    };
    let uid = acc.stream(name).map(|h| h.uid.clone()).unwrap_or_default();
    c.rt.block_on(e.close_replicated_stream(account, name));
    c.unregister_group(prev_group);
    super::remove_group_dir(c, prev_group);
    match e.open_stream(&acc, sa.config.clone(), sa.created, uid, false) {
        Ok(_) => {
            let meta = acc.dir.join(name).join("replica.json");
            if let Err(err) = std::fs::remove_file(&meta) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("JetStream cluster: removing {}: {err}", meta.display());
                }
            }
            tracing::info!(
                "JetStream cluster: stream {account:?} > {name:?} is a single-server stream now"
            );
        }
        Err(err) => tracing::error!(
            "JetStream cluster: stream {account:?} > {name:?} could not reopen as a single-server stream: {}",
            crate::api::errors::ApiError::from(err)
        ),
    }
}
