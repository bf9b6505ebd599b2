//! openraft's network on the application's [`Transport`]: each RPC is one `Transport::call`
//! whose body is this crate's encoding (`codec`). The time of the last successful RPC to each
//! peer is kept for [`ReplicaStatus::last_seen`](crate::ReplicaStatus).
//!
//! An empty append (a heartbeat) that would tell a follower nothing it did not confirm a
//! moment ago is answered here, without a round trip: see [`Conn::append_entries`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId, RPCTypes, Vote};
use parking_lot::Mutex;

use crate::codec;
use crate::types::TC;
use crate::{NodeId, Peer, RpcKind, Transport, TransportError};

pub(crate) struct NetShared {
    pub(crate) group: String,
    pub(crate) me: NodeId,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) rpc_timeout: Duration,
    pub(crate) backoff: Duration,
    /// How recent a follower's confirmation must be for an empty append to be answered
    /// without a round trip (see [`Conn::append_entries`]); zero sends every one.
    pub(crate) quiet: Duration,
    pub(crate) last_seen: Mutex<HashMap<NodeId, Instant>>,
}

impl NetShared {
    pub(crate) async fn call(
        &self,
        to: &Peer,
        kind: RpcKind,
        body: Bytes,
        ttl: Duration,
    ) -> Result<Bytes, TransportError> {
        let timeout = ttl.min(self.rpc_timeout);
        let r = self
            .transport
            .call(to, &self.group, kind, body, timeout)
            .await;
        if r.is_ok() {
            self.last_seen.lock().insert(to.id, Instant::now());
        }
        r
    }
}

/// The factory openraft asks for a connection per peer.
#[derive(Clone)]
pub(crate) struct Net(pub(crate) Arc<NetShared>);

pub(crate) struct Conn {
    shared: Arc<NetShared>,
    peer: Peer,
    /// The last append the follower accepted on this connection: the leader's vote, the
    /// last log id the follower then held, and when the append was sent.
    confirmed: Option<(Vote<NodeId>, Option<LogId<NodeId>>, Instant)>,
}

impl RaftNetworkFactory<TC> for Net {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Conn {
        Conn {
            shared: self.0.clone(),
            peer: Peer {
                id: target,
                name: node.addr.clone(),
            },
            confirmed: None,
        }
    }
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl Conn {
    fn map_err<E: std::error::Error>(
        &self,
        e: TransportError,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<NodeId, BasicNode, E> {
        match e {
            TransportError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.shared.me,
                target: self.peer.id,
                timeout: ttl.min(self.shared.rpc_timeout),
            }),
            TransportError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&io_err(m))),
            TransportError::Remote { reason, .. } => {
                RPCError::Unreachable(Unreachable::new(&io_err(reason)))
            }
        }
    }

    async fn rpc<T: for<'de> serde::Deserialize<'de>, E: std::error::Error>(
        &self,
        kind: RpcKind,
        action: RPCTypes,
        body: Result<Bytes, String>,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, BasicNode, E>> {
        let body = body.map_err(|e| RPCError::Network(NetworkError::new(&io_err(e))))?;
        let ttl = option.hard_ttl();
        let reply = self
            .shared
            .call(&self.peer, kind, body, ttl)
            .await
            .map_err(|e| self.map_err(e, action, ttl))?;
        codec::from_json(&reply).map_err(|e| RPCError::Network(NetworkError::new(&io_err(e))))
    }
}

impl RaftNetwork<TC> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TC>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // openraft follows every commit with an empty append to each follower, carrying
        // only the new commit index: on a replicated stream written one message at a time
        // that doubles the RPCs (and thread wake-ups) per message. When the follower
        // accepted an append with the same vote, ending at the same log id, less than
        // `quiet` ago, the empty append tells it nothing but the commit index, which the
        // next append (or the next heartbeat past `quiet`) carries: it is answered here.
        // Entries are never answered here, so nothing counts towards a commit unsent; the
        // leader's view of this follower is at most `quiet` older than it believes (its
        // lease, far longer, is what that affects). A fresh connection (openraft's
        // leadership check opens one per check) always sends.
        if rpc.entries.is_empty() {
            if let Some((vote, last, at)) = &self.confirmed {
                if *vote == rpc.vote && *last == rpc.prev_log_id && at.elapsed() < self.shared.quiet
                {
                    return Ok(AppendEntriesResponse::Success);
                }
            }
        }
        let sent_at = Instant::now();
        let vote = rpc.vote;
        let mut rpc = rpc;
        let mut body = codec::encode_append(&rpc);
        // Too large for the transport (a follower catching up gets up to
        // `max_payload_entries` entries at once, each possibly a batch of messages): send
        // the largest halving of the entries that fits and report how far it got.
        let mut part = None;
        let max = self.shared.transport.max_body();
        while matches!(&body, Ok(b) if b.len() > max) && rpc.entries.len() > 1 {
            let n = rpc.entries.len() / 2;
            rpc.entries.truncate(n);
            part = rpc.entries.last().map(|e| e.log_id);
            body = codec::encode_append(&rpc);
        }
        let sent_last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        self.confirmed = None;
        let resp = self
            .rpc(
                RpcKind::AppendEntries,
                RPCTypes::AppendEntries,
                body,
                &option,
            )
            .await?;
        if matches!(resp, AppendEntriesResponse::Success) {
            self.confirmed = Some((vote, sent_last, sent_at));
        }
        Ok(match (resp, part) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (r, _) => r,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TC>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = codec::encode_install(&rpc);
        self.rpc(
            RpcKind::InstallSnapshot,
            RPCTypes::InstallSnapshot,
            body,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = codec::to_json(&rpc);
        self.rpc(RpcKind::Vote, RPCTypes::Vote, body, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.shared.backoff))
    }
}
