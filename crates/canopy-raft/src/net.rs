//! openraft's network on the application's [`Transport`]: each RPC is one `Transport::call`
//! whose body is this crate's encoding (`codec`). The time of the last successful RPC to each
//! peer is kept for [`ReplicaStatus::last_seen`](crate::ReplicaStatus).

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
use openraft::{BasicNode, RPCTypes};
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
        let resp = self
            .rpc(
                RpcKind::AppendEntries,
                RPCTypes::AppendEntries,
                body,
                &option,
            )
            .await?;
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
