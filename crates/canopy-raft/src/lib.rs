//! Canopy's replicated log: one Raft group per replicated asset (the JetStream meta group,
//! one per R>1 stream), on openraft (pinned) hidden behind this crate's own API so that an
//! upgrade stays local. Nothing outside this crate names an openraft type.
//!
//! Contract (the API below is what canopy-jetstream codes against):
//! - **Peers** are servers, named by their server name; [`NodeId`] is a stable 64-bit hash of
//!   the name ([`node_id`]), so every member derives the same id without coordination.
//! - **Transport** is the server's: [`Transport::call`] carries an RPC (its kind, the group
//!   name and an opaque body) to a peer and returns the peer's reply body. The server sends it
//!   as a request over the route connections in the system account; the receiving server
//!   hands the body to [`Group::handle_rpc`] of the named group and replies with what it
//!   returns. The bodies are this crate's encoding; the server never looks inside.
//! - **State machine** is the application's: [`StateMachine::apply`] is called for each
//!   committed entry in log order. After a crash an entry may be applied again (the crate
//!   records the applied index after the application applied it), so `apply` must be
//!   idempotent by index (an application without durable state says so with
//!   [`StateMachine::durable`] and is rebuilt from the snapshot and the log on open).
//!   `apply`, `snapshot` and `restore` may block on disk I/O: the group calls them through
//!   `tokio::task::block_in_place` (so a multi-threaded runtime is expected), one at a time,
//!   never concurrently with each other. An application that applies on a thread of its
//!   own says so ([`StateMachine::applies_elsewhere`]) and gets each committed run of
//!   entries at once through [`StateMachine::apply_run`], awaited without blocking. They must not wait for this group's own proposals
//!   (a proposal waits for its `apply`). Snapshots are the application's bytes ([`StateMachine::snapshot`],
//!   [`StateMachine::restore`]); a stream's snapshot is its state plus what a follower needs
//!   to fetch the data from the leader's store, not the whole Raft log.
//! - **Durability**: the log, the vote and the applied index live under [`GroupConfig::dir`]
//!   and survive a restart; [`Group::open`] on an existing directory resumes the group.
//! - **Proposals** are made on the leader; elsewhere [`Group::propose`] fails with
//!   [`ProposeError::NotLeader`] naming the leader when known. A proposal returns after a
//!   quorum committed it *and* this member applied it, with `apply`'s result.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A member's id: [`node_id`] of its server name.
pub type NodeId = u64;

/// A boxed future, as the traits below return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The stable id of the server called `name` (FNV-1a 64 of the name; never 0).
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub id: NodeId,
    /// The server name.
    pub name: String,
}

impl Peer {
    pub fn new(name: &str) -> Peer {
        Peer {
            id: node_id(name),
            name: name.to_string(),
        }
    }
}

/// The RPCs a group sends to its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// Leadership transfer: the leader asks a voter to start an election now
    /// ([`Group::step_down`]).
    TimeoutNow,
}

impl RpcKind {
    /// A short token for subjects (`AE`, `V`, `IS`, `TN`).
    pub fn token(self) -> &'static str {
        match self {
            RpcKind::AppendEntries => "AE",
            RpcKind::Vote => "V",
            RpcKind::InstallSnapshot => "IS",
            RpcKind::TimeoutNow => "TN",
        }
    }

    pub fn from_token(t: &str) -> Option<RpcKind> {
        match t {
            "AE" => Some(RpcKind::AppendEntries),
            "V" => Some(RpcKind::Vote),
            "IS" => Some(RpcKind::InstallSnapshot),
            "TN" => Some(RpcKind::TimeoutNow),
            _ => None,
        }
    }
}

/// Why an RPC did not get a reply.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} unreachable")]
    Unreachable(String),
    #[error("RPC to {0} timed out")]
    Timeout(String),
    #[error("RPC to {peer} failed: {reason}")]
    Remote { peer: String, reason: String },
}

/// How RPCs reach peers: supplied by the server.
pub trait Transport: Send + Sync + 'static {
    /// Sends `body` as an RPC of `kind` for `group` to `to`; resolves with the reply body.
    fn call(
        &self,
        to: &Peer,
        group: &str,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<Result<Bytes, TransportError>>;

    /// The largest RPC body the transport carries, in bytes: an AppendEntries whose
    /// encoding is larger goes out in parts (a prefix of its entries at a time), snapshot
    /// chunks stay well below it. An entry larger than this on its own is sent whole.
    fn max_body(&self) -> usize {
        usize::MAX
    }
}

/// What a group replicates: supplied by the application.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the committed entry at `index` and returns the proposer's answer. Called in
    /// log order; may be called again for an index already applied before a crash.
    fn apply(&self, index: u64, entry: &[u8]) -> Bytes;
    /// The state as of the last applied entry, as bytes [`StateMachine::restore`] reads.
    fn snapshot(&self) -> Result<Bytes, String>;
    /// Replaces the state with a snapshot taken by a peer at log `index`.
    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String>;
    /// Does the application keep its applied state across a restart (the default)? Then
    /// [`Group::open`] resumes after the recorded applied index. An application whose state
    /// lives in memory returns `false`: on open the group hands it the last snapshot
    /// ([`StateMachine::restore`], when there is one) and applies the log after it again.
    fn durable(&self) -> bool {
        true
    }
    /// Does [`StateMachine::apply_run`] hand its entries to a thread of the application's
    /// own and return at once? Then the group awaits it on the runtime instead of calling
    /// [`StateMachine::apply`] per entry through `block_in_place` (which hands the
    /// runtime worker's queue to another thread on every applied batch).
    fn applies_elsewhere(&self) -> bool {
        false
    }
    /// Applies a run of consecutive committed entries `(index, entry)`, in order, and
    /// answers each (called only when [`StateMachine::applies_elsewhere`]; the same
    /// contract as [`StateMachine::apply`]). The default applies them here.
    fn apply_run(&self, entries: Vec<(u64, Bytes)>) -> BoxFuture<Vec<Bytes>> {
        let out: Vec<Bytes> = entries.iter().map(|(i, e)| self.apply(*i, e)).collect();
        Box::pin(async move { out })
    }
}

/// A group's tuning.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// The group's name (unique in the cluster; a subject token: no `.`, `*`, `>` or spaces).
    pub name: String,
    /// Where the log, vote and applied index live.
    pub dir: PathBuf,
    /// This member.
    pub me: Peer,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Take a snapshot (and drop the log before it) after this many applied entries.
    pub snapshot_every: u64,
    /// The time an RPC may take before the peer counts as unreachable for it.
    pub rpc_timeout: Duration,
    /// `None` (the default): log appends are fsynced (group commit) before openraft hears
    /// they are durable. `Some(d)`: they count as durable once written (the OS holds them,
    /// so a killed process loses nothing; a power loss on a majority can lose the last
    /// `d`), fsynced at most every `d` while appends come — JetStream's `sync_interval`.
    pub log_sync: Option<Duration>,
}

impl GroupConfig {
    /// Defaults for a group named `name` of member `me` under `dir`.
    pub fn new(name: &str, dir: PathBuf, me: Peer) -> GroupConfig {
        GroupConfig {
            name: name.to_string(),
            dir,
            me,
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1_000),
            election_timeout_max: Duration::from_millis(2_000),
            snapshot_every: 8_192,
            rpc_timeout: Duration::from_secs(2),
            log_sync: None,
        }
    }
}

/// Why a proposal (or a membership change) failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// This member is not the leader; `leader` is the current one when known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<Peer> },
    /// No quorum answered in time (nats-server's 10008 "temporarily unavailable").
    #[error("no quorum")]
    NoQuorum,
    #[error("group is shut down")]
    Shutdown,
    #[error("{0}")]
    Fatal(String),
}

/// One member as the leader sees it.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    pub peer: Peer,
    /// Voter (false: learner).
    pub voter: bool,
    /// Last log index known replicated to it.
    pub matched: u64,
    /// Committed entries it lacks: the leader's commit index minus `matched`. An entry
    /// still being replicated is not counted (nats-server counts the same way), so a
    /// follower under steady writes does not flap between current and behind.
    pub lag: u64,
    /// Time since the leader last heard from it (None: never, or not the leader).
    pub last_seen: Option<Duration>,
}

/// A group's state, for info and monitoring.
#[derive(Clone, Debug)]
pub struct Status {
    pub me: Peer,
    pub leader: Option<Peer>,
    pub is_leader: bool,
    /// When this member became leader (only while it is).
    pub leader_since: Option<SystemTime>,
    pub term: u64,
    pub last_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// Every member; `matched`/`lag`/`last_seen` are filled on the leader only.
    pub replicas: Vec<ReplicaStatus>,
}

/// Why a group could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("raft group {group}: {reason}")]
    Storage { group: String, reason: String },
}

mod codec;
mod fsutil;
mod group;
mod log;
pub mod mem;
mod net;
mod sm;
mod types;

pub use group::Group;
