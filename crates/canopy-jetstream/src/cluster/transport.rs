//! Raft RPCs over the route connections: requests in the system account.
//!
//! Subjects: `$CRG.<node>.<group>.<kind>`, where `<node>` is the receiving member's
//! [`canopy_raft::node_id`] in 16 hex digits (server names may hold characters a subject
//! token cannot), `<group>` the Raft group's name (a subject token by the raft contract) and
//! `<kind>` one of `AE`, `V`, `IS` ([`RpcKind::token`]) or `ST` (the cluster layer's own
//! status probe, answered without a group). Each JetStream member subscribes
//! `$CRG.<its node>.>` in the system account inline ([`Host::subscribe_inline`] with
//! [`Lane::Cluster`]'s counters): the route's reader hands each RPC straight to a task; the
//! request goes out through [`Host::request_future`] (its reply inbox is the service's).
//!
//! Reply bodies start with one byte: `0` and the group's reply, or `1` and an error text.
//! Incoming RPCs run on tasks of the server's runtime, at most [`MAX_INFLIGHT`] at a time;
//! beyond that an RPC is dropped and counted, and the caller sees a timeout, which Raft
//! treats as a lost message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use canopy_raft::{BoxFuture, Peer, RpcKind, Transport, TransportError};

use super::Cluster;
use crate::host::{Host, JsMsg};

/// The subject prefix of Canopy's Raft transport.
pub const PREFIX: &str = "$CRG";
/// RPCs handled concurrently on one server.
pub const MAX_INFLIGHT: usize = 256;
/// The status probe's kind token.
pub const STATUS: &str = "ST";

/// The transport counters (`/jsz` `meta_cluster` `transport`).
#[derive(Default, Debug)]
pub struct RpcStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
}

/// The subject of RPC `kind` for `group` at member `node`.
pub fn subject(node: u64, group: &str, kind: &str) -> String {
    format!("{PREFIX}.{node:016x}.{group}.{kind}")
}

/// How far a Raft RPC body may go past `max_payload`. A route between Canopy servers
/// accepts [`ROUTE_HEADROOM`] more than `max_payload` (canopy-server's route parser), so an
/// entry holding one message of the largest size travels with its framing and the
/// consumer updates riding with it.
pub const RPC_HEADROOM: usize = 128 << 10;
/// What canopy-server's route parser accepts beyond `max_payload` (Raft traffic only ever
/// comes from Canopy peers; a Go peer's messages stay within `max_payload`).
pub const ROUTE_HEADROOM: usize = 256 << 10;

/// The largest Raft RPC body for a server's `max_payload` (0: unknown, no bound).
pub fn max_body(max_payload: usize) -> usize {
    if max_payload == 0 {
        usize::MAX
    } else {
        max_payload + RPC_HEADROOM
    }
}

/// [`Transport`] over the routes.
pub struct RouteTransport {
    pub(super) host: Arc<dyn Host>,
    pub(super) system_account: String,
    pub(super) stats: Arc<RpcStats>,
    /// [`max_body`] of this server's `max_payload`.
    pub(super) max_body: usize,
}

impl RouteTransport {
    /// Sends a request to `to` and decodes the reply envelope.
    pub(super) fn send(
        &self,
        to: &Peer,
        group: &str,
        kind: &str,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<Result<Bytes, TransportError>> {
        let subject = subject(to.id, group, kind);
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        // Written by this task itself when the route is free (no writer wake-up on the
        // path of every replicated entry); see `Host::batch`.
        let mut reply: BoxFuture<Option<JsMsg>> = Box::pin(std::future::ready(None));
        self.host.batch(true, &mut || {
            reply = self
                .host
                .request_future(&self.system_account, &subject, None, &body, timeout);
        });
        let peer = to.name.clone();
        let stats = self.stats.clone();
        Box::pin(async move {
            let r = match reply.await {
                Some(m) => decode(&peer, m.payload),
                None => Err(TransportError::Unreachable(peer)),
            };
            if r.is_err() {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
    }
}

fn decode(peer: &str, b: Bytes) -> Result<Bytes, TransportError> {
    match b.first() {
        Some(0) => Ok(b.slice(1..)),
        Some(1) => Err(TransportError::Remote {
            peer: peer.to_string(),
            reason: String::from_utf8_lossy(&b[1..]).into_owned(),
        }),
        _ => Err(TransportError::Remote {
            peer: peer.to_string(),
            reason: "malformed reply".into(),
        }),
    }
}

impl Transport for RouteTransport {
    fn call(
        &self,
        to: &Peer,
        group: &str,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<Result<Bytes, TransportError>> {
        self.send(to, group, kind.token(), body, timeout)
    }

    fn max_body(&self) -> usize {
        self.max_body
    }
}

/// The reply envelope of a handled RPC.
fn encode(r: Result<Bytes, String>) -> Vec<u8> {
    match r {
        Ok(b) => {
            let mut v = Vec::with_capacity(b.len() + 1);
            v.push(0);
            v.extend_from_slice(&b);
            v
        }
        Err(e) => {
            let mut v = vec![1];
            v.extend_from_slice(e.as_bytes());
            v
        }
    }
}

/// Handles an incoming `$CRG.<me>.<group>.<kind>` request (on the delivering reader:
/// hands it to a task and returns).
pub(super) fn incoming(cluster: &Weak<Cluster>, m: JsMsg) {
    let Some(c) = cluster.upgrade() else {
        return;
    };
    c.rpc.received.fetch_add(1, Ordering::Relaxed);
    let Some(reply) = m.reply.clone() else {
        return;
    };
    let mut toks = m.subject.splitn(4, '.').skip(2);
    let (Some(group), Some(kind)) = (toks.next(), toks.next()) else {
        return;
    };
    let (group, kind) = (group.to_string(), kind.to_string());
    let Ok(permit) = c.inflight.clone().try_acquire_owned() else {
        c.rpc.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let c2 = c.clone();
    c.rt.spawn(async move {
        let _permit = permit;
        let r = if kind == STATUS {
            Ok(Bytes::from(c2.status_probe().to_string()))
        } else {
            match (RpcKind::from_token(&kind), registered(&c2, &group).await) {
                (Some(k), Some(g)) => g.handle_rpc(k, m.payload).await,
                (None, _) => Err(format!("unknown RPC kind {kind:?}")),
                (_, None) => Err(format!("no raft group {group:?} on this server")),
            }
        };
        let body = encode(r);
        c2.host.batch(true, &mut || {
            c2.host
                .publish(&c2.system_account, &reply, None, None, &body);
        });
    });
}

/// The group an RPC is for. A new stream's members open their group at about the same
/// time, and the first vote can arrive just before this member registered its own: it
/// waits a little (at most [`REGISTER_GRACE`]) rather than fail the vote (which openraft
/// logs as an error on every healthy create).
async fn registered(c: &Cluster, group: &str) -> Option<canopy_raft::Group> {
    let deadline = tokio::time::Instant::now() + REGISTER_GRACE;
    loop {
        if let Some(g) = c.group(group) {
            return Some(g);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long an RPC waits for its group to be registered here.
const REGISTER_GRACE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_valid_and_reply_envelopes_round_trip() {
        let s = subject(canopy_raft::node_id("a b.c"), "_meta_", "AE");
        assert!(s.starts_with("$CRG."));
        assert_eq!(s.split('.').count(), 4);
        assert_eq!(s.split('.').nth(1).map(str::len), Some(16));
        let ok = encode(Ok(Bytes::from_static(b"xyz")));
        assert_eq!(
            decode("p", Bytes::from(ok)).unwrap(),
            Bytes::from_static(b"xyz")
        );
        let err = encode(Err("boom".into()));
        match decode("p", Bytes::from(err)) {
            Err(TransportError::Remote { reason, .. }) => assert_eq!(reason, "boom"),
            other => panic!("{other:?}"),
        }
        assert!(decode("p", Bytes::new()).is_err());
    }
}
