//! An in-process [`Transport`]: a registry of groups by (server name, group name), with
//! servers that can be cut off. For tests and benchmarks of code built on this crate
//! (several "servers" in one process); a real server carries RPCs over its routes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::{BoxFuture, Group, Peer, RpcKind, Transport, TransportError};

/// Finds a server's group by (server name, group name) when it is not registered.
pub type Resolver = Box<dyn Fn(&str, &str) -> Option<Group> + Send + Sync>;

/// The network: who is registered, who is cut off.
#[derive(Default)]
pub struct MemNet {
    groups: Mutex<HashMap<(String, String), Group>>,
    /// Where groups live when the application opens them itself (e.g. canopy-jetstream's
    /// replicated streams, one group per stream inside an engine).
    resolve: Option<Resolver>,
    cut: Mutex<HashSet<String>>,
    /// RPCs attempted.
    pub calls: AtomicUsize,
    /// The largest RPC body carried (0: no limit); a larger one fails as unreachable, as a
    /// route closes on a message over its `max_payload`.
    pub max_body: AtomicUsize,
}

impl MemNet {
    /// A network whose groups are found by `resolve` (registered ones first).
    pub fn resolving(resolve: Resolver) -> MemNet {
        MemNet {
            resolve: Some(resolve),
            ..Default::default()
        }
    }

    /// Makes `g` reachable as group `group` on server `node`.
    pub fn register(&self, node: &str, group: &str, g: Group) {
        self.groups
            .lock()
            .insert((node.to_string(), group.to_string()), g);
    }
    /// Takes group `group` of server `node` off the network.
    pub fn unregister(&self, node: &str, group: &str) {
        self.groups
            .lock()
            .remove(&(node.to_string(), group.to_string()));
    }
    /// Cuts server `node` off: RPCs from and to it fail as unreachable.
    pub fn cut(&self, node: &str) {
        self.cut.lock().insert(node.to_string());
    }
    /// Reconnects server `node`.
    pub fn heal(&self, node: &str) {
        self.cut.lock().remove(node);
    }
}

/// One server's transport.
pub struct MemTransport {
    /// The server's name.
    pub from: String,
    pub net: Arc<MemNet>,
}

impl Transport for MemTransport {
    fn call(
        &self,
        to: &Peer,
        group: &str,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<Result<Bytes, TransportError>> {
        let net = self.net.clone();
        let from = self.from.clone();
        let to = to.name.clone();
        let group = group.to_string();
        Box::pin(async move {
            net.calls.fetch_add(1, Ordering::Relaxed);
            let max = net.max_body.load(Ordering::Relaxed);
            if max != 0 && body.len() > max {
                return Err(TransportError::Unreachable(to));
            }
            let blocked = {
                let cut = net.cut.lock();
                cut.contains(&from) || cut.contains(&to)
            };
            if blocked {
                // A cut link looks like a peer that does not answer.
                tokio::time::sleep(timeout.min(Duration::from_millis(20))).await;
                return Err(TransportError::Unreachable(to));
            }
            let registered = net.groups.lock().get(&(to.clone(), group.clone())).cloned();
            let g = registered.or_else(|| net.resolve.as_ref().and_then(|f| f(&to, &group)));
            let Some(g) = g else {
                // A server that is not there does not answer either.
                tokio::time::sleep(timeout.min(Duration::from_millis(20))).await;
                return Err(TransportError::Unreachable(to));
            };
            match tokio::time::timeout(timeout, g.handle_rpc(kind, body)).await {
                Ok(Ok(b)) => {
                    // The reply is lost if the caller was cut off meanwhile.
                    if net.cut.lock().contains(&from) {
                        return Err(TransportError::Unreachable(to));
                    }
                    Ok(b)
                }
                Ok(Err(reason)) => Err(TransportError::Remote { peer: to, reason }),
                Err(_) => Err(TransportError::Timeout(to)),
            }
        })
    }

    fn max_body(&self) -> usize {
        match self.net.max_body.load(Ordering::Relaxed) {
            0 => usize::MAX,
            n => n,
        }
    }
}
