//! Server-wide counters (`/varz`) and the record kept of closed connections.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

/// Server-wide counters (`/varz`).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_msgs: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Every slow consumer closed, of any kind (`/varz` `slow_consumers`).
    pub slow_consumers: AtomicU64,
    /// By kind (`/varz` `slow_consumer_stats`).
    pub slow_consumers_clients: AtomicU64,
    pub slow_consumers_routes: AtomicU64,
    pub slow_consumers_leafs: AtomicU64,
    /// `producer_backoff`: read batches after which a publisher was held back.
    pub producer_stalls: AtomicU64,
    pub total_connections: AtomicU64,
    pub auth_failures: AtomicU64,
    pub permission_denials: AtomicU64,
    pub max_payload_violations: AtomicU64,
    pub loops_detected: AtomicU64,
    /// Failed TLS handshakes, on any listener or outgoing connection.
    pub tls_handshake_failures: AtomicU64,
}

/// A connection that has closed, kept for `/connz?state=closed`.
#[derive(Debug, Clone)]
pub struct ClosedConn {
    pub cid: u64,
    pub addr: SocketAddr,
    pub start: SystemTime,
    pub stop: SystemTime,
    pub reason: String,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub account: String,
    pub user: String,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}
