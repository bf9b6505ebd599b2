//! Replicated (R>1) streams: one Raft group ([`canopy_raft::Group`]) per stream; the
//! stream's consumers are replicated through the same group (consumer leader = stream
//! leader). See docs/ARCHITECTURE.md, "Replicated streams".
//!
//! # Entry points (for the meta layer, `crate::cluster`, and the server)
//!
//! - [`Engine::open_replicated_stream`]`(account, cfg, created, GroupSpec, transport)`
//!   (async): opens or recovers this member's copy of the stream (its store under
//!   `<store_dir>/<account>/streams/<name>/`, metadata in `replica.json` there, which the
//!   single-server recovery skips) and its Raft member (log under `GroupSpec::dir`). With
//!   `GroupSpec::bootstrap` (a new stream: every member calls it with the same `peers`) an
//!   uninitialised group is initialised — by the first of `peers` at once, by the others
//!   only if the group has not reached them after two election timeouts, so the first
//!   peer (placement's pick) usually leads; a member added by a scale-up or a restarted
//!   member passes `bootstrap: false` and is brought in by the leader. Leadership changes
//!   are wired inside: the leader ingests publishes, runs the consumers and answers acks and
//!   pulls; followers ignore them.
//! - [`Engine::raft_group`]`(account, stream)`: the member's group, so the server hands
//!   incoming RPCs (`$NRG`-like subjects carrying the group name) to
//!   [`canopy_raft::Group::handle_rpc`].
//! - [`Engine::set_stream_peers`]`(account, stream, peers)` (async, on the leader): scale
//!   (R1→R3→R1): new peers join as learners, then the voters become exactly `peers`. The
//!   meta layer opens the stream on an added member (`bootstrap: false`) and deletes it on
//!   a removed one (which, when it leads, makes this call first to hand the group over).
//! - [`Engine::stream_step_down`]`(account, stream, to)` (async, on the leader).
//! - [`Engine::update_replicated_stream`]`(account, cfg)` (async, on the leader): a config
//!   change replicated to every member.
//! - [`Engine::stream_cluster_info`]`(account, stream)`: nats-server's `cluster` object
//!   (`{name, leader, leader_since, replicas:[{name, current, active, lag, offline}]}`); the
//!   same object is in this member's stream and consumer info.
//! - [`Engine::is_stream_leader`]`(account, stream)`: whether this member answers for the
//!   stream (API routing).
//! - [`Engine::close_replicated_stream`] / [`Engine::delete_replicated_stream`] (async):
//!   stops the member (data stays) / and removes the stream's store directory (the group
//!   directory is the caller's).
//!
//! The `$JS.API` handlers for consumer create/update/delete, purge and message delete
//! propose through the group when the stream is replicated (hooks in `api/`); they must run
//! on the leader (elsewhere they answer 10008).
//!
//! # How it works
//!
//! Everything a stream does to its state is an [`entry::Op`] applied in log order by every
//! member on the stream's own thread (the Raft state machine hands each committed entry to
//! it and waits). The leader:
//! - queues publishes while one proposal is in flight; when it committed, it prepares the
//!   queued ones against the applied state (dedupe, `Nats-Expected-*`, limits), assigns
//!   sequences after the last one and one timestamp, and proposes them as one entry with its
//!   consumers' recorded delivery/ack updates and the double-ack replies waiting for them.
//!   The pub acks go out when the leader applies its own entry (quorum commit): the
//!   entry's epoch carries the proposal's number in its low bits, so `apply` recognises
//!   the proposal in flight and answers it there, without the hop back from the
//!   proposal's future (which then finds it done).
//! - runs the consumers; their state changes are recorded ([`RecStore`]) and replicated
//!   with the next entry; a follower applies them to its copy. The leader skips its own.
//! - after winning an election, proposes a no-op first: once it is applied, everything the
//!   old leader committed is in the store, and delivery resumes from the replicated state.

mod entry;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_raft::{Group, GroupConfig, Peer, ProposeError, StateMachine, Transport};
use canopy_store::{ConsumerState, ConsumerStore, NewMsg, PurgeOpts};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::api::errors::{ApiError, E};
use crate::consumer::Consumer;
use crate::engine::{Account, ConsumerMeta, Engine, StoreSettings, StreamMeta};
use crate::host::JsMsg;
use crate::source::Sourced;
use crate::stream::{ctx, Cmd, Prepared, StreamCore, StreamHandle};
use crate::types::{ConsumerConfig, StreamConfig};
use crate::util::{header, now_ns, rfc3339};
use entry::{COp, Entry, Op, OpAnswer, W};

/// Most publishes in one entry.
const MAX_BATCH: usize = 1024;
/// The low bits of an entry's epoch number the leader's proposal (0: an API proposal
/// outside the pump); the high bits are the leadership's.
const SERIAL_MASK: u64 = (1 << 20) - 1;
/// Message bytes in one entry (a message larger than this goes alone): an entry, and with
/// it every Raft RPC, stays within what the routes carry (`max_payload` and the cluster
/// transport's headroom); Raft splits AppendEntries by bytes, not inside an entry.
const MAX_BATCH_BYTES: usize = 256 << 10;
/// Publishes queued on the leader beyond this are refused (10008).
const MAX_QUEUE: usize = 65_536;
/// Most stream bytes a snapshot carries (see docs/ARCHITECTURE.md: catch-up limits).
const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;
/// How long an API request waits for its proposal.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a no-op failed for lack of quorum, the next waits this long.
const NOOP_RETRY: Duration = Duration::from_millis(200);
/// A replica not heard from for this long is `offline` in the cluster info.
const OFFLINE_AFTER: Duration = Duration::from_secs(10);

/// The Raft group of one stream, as the meta layer assigns it.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// The group's name (cluster-unique; also the stream's identity, `Nats-Stream-Identity`).
    pub name: String,
    /// Where this member's log, vote and applied index live.
    pub dir: PathBuf,
    pub me: Peer,
    /// The voters (this member among them).
    pub peers: Vec<Peer>,
    /// A new stream: initialise the group with `peers` when it has no state yet.
    pub bootstrap: bool,
    /// Raft timings (heartbeat, election timeouts, snapshot interval, RPC timeout) instead
    /// of [`GroupConfig::new`]'s; its name, dir and member are taken from this spec.
    pub tuning: Option<GroupConfig>,
}

/// Why a replicated stream could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("JetStream is not enabled for account {0}")]
    NoAccount(String),
    #[error("stream {0} is already open on this server")]
    Exists(String),
    #[error("no replicated stream {0}")]
    NotFound(String),
    #[error("not supported on a replicated stream yet: {0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    Open(String),
    #[error(transparent)]
    Raft(#[from] ProposeError),
}

/// The replicated side of a [`StreamCore`] (its `repl` field).
pub(crate) struct Repl {
    group: Option<Group>,
    rt: tokio::runtime::Handle,
    me: Peer,
    account: Arc<Account>,
    engine: std::sync::Weak<Engine>,
    settings: StoreSettings,
    /// Raft says this member leads.
    leading: bool,
    /// Leading, and the leadership's no-op is applied: ingest and deliver.
    ready: bool,
    /// A proposal failed without a verdict (no quorum in time): it stays in this leader's
    /// log and commits if a quorum comes back, so the applied state may lag what will be
    /// committed. Until a no-op proposed after it is applied, nothing is prepared against
    /// the applied state (sequences and the duplicate window would be reused: found by
    /// tests/js_cluster_faults.rs as a message stored twice and acks for messages that
    /// another entry's messages displaced).
    unsure: bool,
    /// A no-op failed for lack of quorum: the next is not proposed before this time (it
    /// would fail at once, and pump runs after every command: a busy loop otherwise).
    noop_retry: Option<std::time::Instant>,
    /// This leadership's identity (entries carry it; its low [`SERIAL_MASK`] bits are 0).
    epoch: u64,
    /// The last proposal's number within the leadership (wraps within the mask, never 0).
    serial: u64,
    /// Consumer state changes are recorded (leader, outside apply).
    recording: Arc<AtomicBool>,
    consumer_ops: HashMap<String, Arc<Mutex<Vec<COp>>>>,
    /// Double-ack replies waiting for the next entry.
    ack_replies: Vec<String>,
    /// Ops the leader decided on its own (inactive consumers deleted).
    admin: Vec<Op>,
    queue: Vec<JsMsg>,
    /// Deliveries of the stream's mirror or sources, in arrival order.
    sourced: Vec<Sourced>,
    inflight: Option<Inflight>,
    /// The epoch and serial of the last proposal finished by its own `apply` on this
    /// thread: its proposal's task then has nothing to bring back here.
    finished: Arc<std::sync::atomic::AtomicU64>,
}

impl Repl {
    /// A member that does not lead (yet) and has no group (yet).
    fn new(
        me: Peer,
        account: Arc<Account>,
        engine: std::sync::Weak<Engine>,
        settings: StoreSettings,
        rt: tokio::runtime::Handle,
    ) -> Repl {
        Repl {
            group: None,
            rt,
            me,
            account,
            engine,
            settings,
            leading: false,
            ready: false,
            unsure: false,
            noop_retry: None,
            epoch: 0,
            serial: 0,
            recording: Arc::new(AtomicBool::new(false)),
            consumer_ops: HashMap::new(),
            ack_replies: Vec::new(),
            admin: Vec::new(),
            queue: Vec::new(),
            sourced: Vec::new(),
            inflight: None,
            finished: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// Queues a double-ack reply: sent once the consumer's ack state is committed.
    pub(crate) fn defer_ack_reply(&mut self, _consumer: &str, reply: &str) {
        self.ack_replies.push(reply.to_string());
    }

    /// Records `c`'s state changes from now on (when leading).
    fn wrap(&mut self, c: &mut Consumer) {
        let ops = Arc::new(Mutex::new(Vec::new()));
        self.consumer_ops.insert(c.name.clone(), ops.clone());
        let on = self.recording.clone();
        c.map_store(|inner| Box::new(RecStore { inner, on, ops }));
    }
}

/// A proposal in flight and who waits for it.
struct Inflight {
    /// Its number (the low bits of the entry's epoch).
    serial: u64,
    /// A no-op: the leadership's first entry, or the one after a proposal that failed
    /// without a verdict ([`Repl::unsure`]).
    start: bool,
    /// Which op of the entry holds the messages.
    msgs_op: Option<usize>,
    pubs: Vec<PubWaiter>,
    acks: Vec<String>,
    /// Durable origins' ack subjects of sourced messages: (message of the entry, reply).
    source_acks: Vec<(usize, String)>,
    /// The entry carries sourced messages.
    sourced: bool,
}

enum PubWaiter {
    /// Message `i` of the entry, stored at `seq`.
    Stored {
        i: usize,
        seq: u64,
        reply: Option<String>,
    },
    /// A duplicate (`Nats-Msg-Id`) of message `seq` of the same entry.
    Dup { seq: u64, reply: Option<String> },
}

/// A consumer store that records every change the leader makes, for replication.
struct RecStore {
    inner: Box<dyn ConsumerStore>,
    on: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<COp>>>,
}

impl RecStore {
    fn rec(&self, op: COp) {
        if self.on.load(Ordering::Relaxed) {
            self.ops.lock().push(op);
        }
    }
}

impl ConsumerStore for RecStore {
    fn state(&self) -> &ConsumerState {
        self.inner.state()
    }
    fn set_state(&mut self, st: ConsumerState) {
        self.rec(COp::Set(st.clone()));
        self.inner.set_state(st);
    }
    fn update_delivered(&mut self, dseq: u64, sseq: u64, dc: u64, ts: i64) {
        self.rec(COp::Delivered { dseq, sseq, dc, ts });
        self.inner.update_delivered(dseq, sseq, dc, ts);
    }
    fn update_ack(&mut self, dseq: u64, sseq: u64) -> bool {
        self.rec(COp::Acked { dseq, sseq });
        self.inner.update_ack(dseq, sseq)
    }
    fn flush(&mut self) -> canopy_store::Result<()> {
        self.inner.flush()
    }
    fn sync(&mut self) -> canopy_store::Result<()> {
        self.inner.sync()
    }
    fn delete(&mut self) -> canopy_store::Result<()> {
        self.inner.delete()
    }
}

/// The direct-get subscriptions of one replicated stream on this member. As nats-server
/// does, every replica that is current (and the leader) subscribes
/// `$JS.API.DIRECT.GET.<stream>` (and `.>`, and the domain's prefix) in the queue group
/// `_sys_`: a request reaches exactly one of them, the one on the requester's server when
/// there is one. The `$JS.API.>` handlers leave these requests alone (`cluster/api.rs`).
struct DirectSubs {
    engine: std::sync::Weak<Engine>,
    account: Arc<Account>,
    subjects: Vec<(String, usize)>,
    ids: Vec<crate::host::SubId>,
}

impl DirectSubs {
    fn new(e: &Arc<Engine>, acc: &Arc<Account>, stream: &str) -> DirectSubs {
        let mut prefixes = vec!["$JS.API".to_string()];
        if let Some(d) = &e.cfg.domain {
            prefixes.push(format!("$JS.{d}.API"));
        }
        let subjects = prefixes
            .iter()
            .flat_map(|p| {
                let plen = p.len() + ".DIRECT.GET.".len();
                [
                    (format!("{p}.DIRECT.GET.{stream}"), plen),
                    (format!("{p}.DIRECT.GET.{stream}.>"), plen),
                ]
            })
            .collect();
        DirectSubs {
            engine: Arc::downgrade(e),
            account: acc.clone(),
            subjects,
            ids: Vec::new(),
        }
    }

    /// Subscribes (`serve`) or unsubscribes; `h` holds the ids too, so that stopping the
    /// stream removes them.
    fn set(&mut self, h: Option<&StreamHandle>, serve: bool) {
        let Some(e) = self.engine.upgrade() else {
            return;
        };
        if !serve {
            for id in self.ids.drain(..) {
                e.host.unsubscribe(id);
                if let Some(h) = h {
                    h.subs.lock().retain(|x| *x != id);
                }
            }
            return;
        }
        if !self.ids.is_empty() {
            return;
        }
        for (subject, plen) in &self.subjects {
            let (acc, plen) = (self.account.clone(), *plen);
            let weak = self.engine.clone();
            let handler: crate::host::Handler = Arc::new(move |m: JsMsg| {
                if let Some(e) = weak.upgrade() {
                    let rest = m.subject.get(plen..).unwrap_or("");
                    crate::api::direct_get(&acc, &m, rest, e.host.as_ref());
                }
            });
            let r = e.host.subscribe(
                &self.account.name,
                subject,
                Some("_sys_"),
                crate::host::Lane::Api,
                handler,
            );
            match r {
                Ok(id) => {
                    self.ids.push(id);
                    if let Some(h) = h {
                        h.subs.lock().push(id);
                    }
                }
                Err(err) => tracing::warn!("JetStream: subscribing {subject}: {err}"),
            }
        }
    }
}

/// A replicated stream's Raft member and the runtime it runs on (in its
/// [`StreamHandle`]).
pub(crate) struct Member {
    pub group: Group,
    pub rt: tokio::runtime::Handle,
}

/// Shuts a replicated stream's Raft member down before its thread stops: the group must
/// not apply entries to a stopped stream (it would count them applied). Blocks until done.
pub(crate) fn stop_member(h: &StreamHandle) {
    let Some(m) = h.raft.lock().take() else {
        return;
    };
    let Member { group, rt } = m;
    let t = std::thread::Builder::new()
        .name("js-raft-stop".into())
        .spawn(move || rt.block_on(group.shutdown()));
    if let Ok(t) = t {
        let _ = t.join();
    }
}

/// Does this stream run its consumers here (a local stream, or the ready leader)?
pub(crate) fn delivers(core: &StreamCore) -> bool {
    core.repl.as_ref().is_none_or(|r| r.ready)
}

/// Is this a replicated stream whose leader here is ready (its no-op applied)?
pub(crate) fn ready_leader(core: &StreamCore) -> bool {
    core.repl.as_ref().is_some_and(|r| r.leading && r.ready)
}

/// Publishes reached a replicated stream: the leader queues them; followers ignore them.
pub(crate) fn queue_pubs(core: &mut StreamCore, msgs: impl IntoIterator<Item = JsMsg>) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    if !r.leading {
        return;
    }
    let mut over = Vec::new();
    for m in msgs {
        if r.queue.len() < MAX_QUEUE {
            r.queue.push(m);
        } else {
            over.push(m);
        }
    }
    for m in over {
        core.err_reply(m.reply.as_deref(), E::ClusterNotAvail);
    }
}

/// A delivery of the stream's mirror or sources reached the leader: queued for the next
/// entry (a member that does not lead ignores it; a full queue restarts the sources from
/// the applied positions).
pub(crate) fn queue_sourced(core: &mut StreamCore, item: Sourced) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    if !r.leading {
        return;
    }
    if r.sourced.len() >= MAX_QUEUE {
        r.sourced.clear();
        core.sources_restart();
        return;
    }
    r.sourced.push(item);
}

/// A publish whose checks read the stream's last state: it starts a new entry.
fn needs_applied_state(m: &JsMsg) -> bool {
    m.headers.as_deref().is_some_and(|h| {
        header(h, "Nats-Expected-Last-Subject-Sequence").is_some()
            || header(h, "Nats-Expected-Last-Msg-Id").is_some()
    })
}

/// The leader's proposal loop: when nothing is in flight, proposes what accumulated (the
/// leadership's no-op first). Runs after every batch of commands on the stream's thread.
pub(crate) fn pump(core: &mut StreamCore) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    if !r.leading || r.inflight.is_some() || r.group.is_none() {
        return;
    }
    if !r.ready || r.unsure {
        if r.noop_retry.is_some_and(|t| std::time::Instant::now() < t) {
            return;
        }
        let serial = next_serial(r);
        let e = Entry {
            origin: r.me.id,
            epoch: r.epoch | serial,
            ops: vec![Op::Noop],
        };
        propose(
            core,
            e.encode(),
            Inflight {
                serial,
                start: true,
                msgs_op: None,
                pubs: Vec::new(),
                acks: Vec::new(),
                source_acks: Vec::new(),
                sourced: false,
            },
        );
        return;
    }
    let queue = std::mem::take(&mut r.queue);
    let sourced = std::mem::take(&mut r.sourced);
    let (origin, epoch) = (r.me.id, r.epoch);
    // Messages: prepared against the applied state, sequences after the last one.
    let mut last = core.store.totals().last_seq;
    let ts = now_ns();
    let mut batch: Vec<(u64, i64, Prepared)> = Vec::new();
    let mut pubs = Vec::new();
    let mut ids: HashMap<String, u64> = HashMap::new();
    let mut rest = Vec::new();
    let mut bytes = 0usize;
    for m in queue {
        let size = m.subject.len() + m.headers.as_ref().map_or(0, |h| h.len()) + m.payload.len();
        if !rest.is_empty()
            || batch.len() >= MAX_BATCH
            || (!batch.is_empty() && needs_applied_state(&m))
            || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES)
        {
            rest.push(m);
            continue;
        }
        let pending_last = last;
        match core.prepare(m, pending_last) {
            Ok(p) => {
                if let Some(&seq) = p.msg_id.as_ref().and_then(|id| ids.get(id)) {
                    pubs.push(PubWaiter::Dup {
                        seq,
                        reply: p.reply.clone(),
                    });
                    continue;
                }
                let seq = pending_last + 1;
                if let Some(id) = &p.msg_id {
                    ids.insert(id.clone(), seq);
                }
                pubs.push(PubWaiter::Stored {
                    i: batch.len(),
                    seq,
                    reply: p.reply.clone(),
                });
                bytes += size;
                last = seq;
                batch.push((seq, ts, p));
            }
            Err((reply, e)) => core.err_reply(reply.as_deref(), e),
        }
    }
    // Sourced messages: no publish checks; a mirror's keep the origin's sequences.
    let mut source_acks = Vec::new();
    let mut sourced_left = Vec::new();
    let has_sourced = !sourced.is_empty();
    for item in sourced {
        let size = item
            .msg
            .as_ref()
            .map_or(0, |(s, h, p)| s.len() + h.len() + p.len());
        if !sourced_left.is_empty()
            || batch.len() >= MAX_BATCH
            || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES)
        {
            sourced_left.push(item);
            continue;
        }
        let seq = match item.mirror_ts {
            Some(_) => item.sseq,
            None => last + 1,
        };
        let stored_already = !core.sourced_is_new(&item) || seq <= last;
        let Some((subject, hdr, payload)) = item.msg.filter(|_| !stored_already) else {
            // Stored already, or not to be stored: the origin may let it go.
            if let Some(a) = item.ack {
                core.host.publish(&core.account, &a, None, None, b"+ACK");
            }
            continue;
        };
        if let Some(a) = item.ack {
            source_acks.push((batch.len(), a));
        }
        bytes += size;
        last = seq;
        let p = Prepared::plain(subject, hdr, payload);
        batch.push((seq, item.mirror_ts.unwrap_or(ts), p));
    }
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    r.queue = rest;
    r.sourced = sourced_left;
    let mut cops: Vec<(String, Vec<COp>)> = Vec::new();
    for (name, ops) in &r.consumer_ops {
        let v = std::mem::take(&mut *ops.lock());
        if !v.is_empty() {
            cops.push((name.clone(), v));
        }
    }
    let admin = std::mem::take(&mut r.admin);
    let acks = std::mem::take(&mut r.ack_replies);
    let nops = usize::from(!batch.is_empty()) + cops.len() + admin.len();
    if nops == 0 {
        // Nothing in flight and nothing recorded: every earlier ack is committed.
        for a in acks {
            core.host.publish(&core.account, &a, None, None, &[]);
        }
        return;
    }
    let serial = next_serial(r);
    let mut w = entry::begin(origin, epoch | serial, nops);
    let msgs_op = (!batch.is_empty()).then_some(0);
    if !batch.is_empty() {
        w.u8(1);
        w.len(batch.len());
        for (seq, ts, p) in &batch {
            entry::put_msg(
                &mut w,
                &entry::MsgRef {
                    seq: *seq,
                    ts: *ts,
                    ttl: p.ttl,
                    rollup: p.rollup,
                    subject: &p.subject,
                    hdr: &p.hdr,
                    payload: &p.payload,
                },
            );
        }
    }
    for (name, ops) in &cops {
        w.u8(6);
        w.bytes(name.as_bytes());
        entry::put_cops(&mut w, ops);
    }
    for op in &admin {
        entry::put_op(&mut w, op);
    }
    propose(
        core,
        w.0,
        Inflight {
            serial,
            start: false,
            msgs_op,
            pubs,
            acks,
            source_acks,
            sourced: has_sourced,
        },
    );
}

/// The next proposal number of this leadership.
fn next_serial(r: &mut Repl) -> u64 {
    r.serial = (r.serial % SERIAL_MASK) + 1;
    r.serial
}

/// Proposes `bytes` on the group; the result comes back to the stream's thread.
fn propose(core: &mut StreamCore, bytes: Vec<u8>, inflight: Inflight) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    let Some(g) = r.group.clone() else {
        return;
    };
    let serial = inflight.serial;
    r.inflight = Some(inflight);
    let h = core.me.clone();
    let (finished, id) = (r.finished.clone(), r.epoch | serial);
    r.rt.spawn(async move {
        let res = g.propose(Bytes::from(bytes)).await;
        // Committed and finished by this member's apply already (which ran before the
        // proposal returned): no wake-up of the stream's thread for nothing.
        if res.is_ok() && finished.load(Ordering::Acquire) == id {
            return;
        }
        if let Some(h) = h.upgrade() {
            h.send(Cmd::Call(Box::new(move |c| committed(c, serial, res))));
        }
    });
}

/// The in-flight proposal's result: acks for what is committed (even when leadership was
/// lost meanwhile: it is committed), errors or silence for the rest.
fn committed(core: &mut StreamCore, serial: u64, res: Result<(u64, Bytes), ProposeError>) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    if r.inflight.as_ref().is_none_or(|i| i.serial != serial) {
        // Already finished when its entry was applied here (see `apply`).
        return;
    }
    let Some(inf) = r.inflight.take() else {
        return;
    };
    match res {
        Ok((_, answer)) => finish(core, inf, &answer),
        Err(e) => {
            tracing::debug!(stream = %core.name, "JetStream proposal failed: {e}");
            // Not the leader (any more) or shut down: no answer, the clients retry.
            if matches!(e, ProposeError::NoQuorum | ProposeError::Fatal(_)) {
                // The entry may still commit: a no-op comes next (see `Repl::unsure`).
                r.unsure = true;
                // A failed no-op: what waits for it would wait for the quorum too.
                let queued = if inf.start {
                    r.noop_retry = Some(std::time::Instant::now() + NOOP_RETRY);
                    std::mem::take(&mut r.queue)
                } else {
                    Vec::new()
                };
                for w in inf.pubs {
                    let (PubWaiter::Stored { reply, .. } | PubWaiter::Dup { reply, .. }) = w;
                    core.err_reply(reply.as_deref(), E::ClusterNotAvail);
                }
                for m in queued {
                    core.err_reply(m.reply.as_deref(), E::ClusterNotAvail);
                }
            }
            // Sourcing starts again from the applied positions (what the failed entry
            // carried is dropped when it is delivered again and the entry did commit).
            if let Some(r) = core.repl.as_mut() {
                if inf.sourced || !r.sourced.is_empty() {
                    r.sourced.clear();
                    core.sources_restart();
                }
            }
        }
    }
    core.update_stats();
    core.drive_consumers();
    pump(core);
}

/// A proposal of this leader committed (its entry applied here): answers what waited for
/// it — acks for what is stored, errors for what the store refused.
fn finish(core: &mut StreamCore, inf: Inflight, answer: &[u8]) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    if inf.start {
        // Everything this leader proposed before the no-op is applied now.
        r.unsure = false;
        r.noop_retry = None;
        if r.leading && !r.ready {
            become_ready(core);
        }
    }
    let answers = entry::decode_answers(answer).unwrap_or_default();
    let results = inf
        .msgs_op
        .and_then(|i| answers.get(i))
        .and_then(|a| a.as_ref().ok())
        .and_then(|b| entry::decode_msg_results(b).ok())
        .unwrap_or_default();
    for w in inf.pubs {
        match w {
            PubWaiter::Stored { i, seq, reply } => {
                let Some(reply) = reply else { continue };
                match results.get(i) {
                    Some(None) if !core.cfg.no_ack => core.ack_reply(&reply, seq, false),
                    Some(Some(e)) => {
                        core.err_reply(Some(&reply), E::StreamStoreFailed(e.clone()));
                    }
                    _ => {}
                }
            }
            PubWaiter::Dup { seq, reply } => {
                if let (Some(reply), false) = (reply, core.cfg.no_ack) {
                    core.ack_reply(&reply, seq, true);
                }
            }
        }
    }
    for a in inf.acks {
        core.host.publish(&core.account, &a, None, None, &[]);
    }
    let mut refused = false;
    for (i, reply) in inf.source_acks {
        match results.get(i) {
            Some(None) => {
                core.host
                    .publish(&core.account, &reply, None, None, b"+ACK");
            }
            // Not acknowledged: the origin sends it again.
            _ => refused = true,
        }
    }
    if refused || (inf.sourced && results.iter().any(Option::is_some)) {
        // A sourced message the store refused: its source's queued position is
        // past it; start again from what is applied.
        if let Some(r) = core.repl.as_mut() {
            r.sourced.clear();
        }
        core.sources_restart();
    }
}

/// The leadership's no-op is applied: the store holds everything committed before; the
/// consumers resume from the replicated state.
fn become_ready(core: &mut StreamCore) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    r.ready = true;
    // The `cluster` object may predate the group's own view of this leadership (it is
    // refreshed twice a second): answers from now on name this leader.
    let me = r.me.name.clone();
    if let Some(o) = core.cluster.as_object_mut() {
        if o.get("leader").and_then(Value::as_str) != Some(me.as_str())
            || !o.contains_key("leader_since")
        {
            o.insert("leader".into(), json!(me));
            o.insert("leader_since".into(), json!(rfc3339(now_ns())));
        }
        if let Some(Value::Array(reps)) = o.get_mut("replicas") {
            reps.retain(|x| x["name"] != me.as_str());
        }
    }
    if let Some(h) = core.me.upgrade() {
        h.leader.store(true, Ordering::SeqCst);
    }
    for ops in r.consumer_ops.values() {
        ops.lock().clear();
    }
    r.recording.store(true, Ordering::SeqCst);
    for c in core.consumers.values_mut() {
        c.resume();
    }
    core.sources_restart();
    tracing::info!(stream = %core.name, account = %core.account, "JetStream: now the stream leader");
}

/// The group's leader changed (from the group's leader watch, with the new `cluster`
/// object: the group's status is never read on the stream's thread, which the group may be
/// waiting for in `apply`).
fn on_leader(core: &mut StreamCore, leader: Option<Peer>, cluster: Value) {
    core.cluster = cluster;
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    let mine = leader.as_ref().is_some_and(|l| l.id == r.me.id);
    if mine && !r.leading {
        r.leading = true;
        r.ready = false;
        r.unsure = false;
        r.noop_retry = None;
        r.epoch = (rand::random::<u64>() | (1 << 63)) & !SERIAL_MASK;
        ingest(core, true);
    } else if !mine && r.leading {
        lose_leadership(core);
    }
    pump(core);
}

/// Subscribes the stream's subjects on this member (it leads) or removes them (it no longer
/// does). Only the leader ingests, so only the leader subscribes, as in nats-server: a
/// publish crosses one route to the leader and no follower receives it only to drop it.
/// Publishes sent while the new leader's interest travels get no responders or no answer,
/// as during any leader change (clients retry).
fn ingest(core: &StreamCore, on: bool) {
    let (Some(r), Some(h)) = (core.repl.as_ref(), core.me.upgrade()) else {
        return;
    };
    let Some(e) = r.engine.upgrade() else {
        return;
    };
    if !on {
        e.unsubscribe_stream(&h);
    } else if let Err(err) = e.subscribe_stream(&r.account, &h) {
        tracing::error!(stream = %core.name, account = %core.account, "{err}");
    }
}

/// Stops ingesting and delivering: queued publishes are dropped unanswered (clients
/// retry), waiting pulls get `409 Leadership Change`, unreplicated consumer changes are
/// forgotten (the new leader redelivers what they covered).
fn lose_leadership(core: &mut StreamCore) {
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    r.leading = false;
    r.ready = false;
    r.unsure = false;
    if let Some(h) = core.me.upgrade() {
        h.leader.store(false, Ordering::SeqCst);
    }
    ingest(core, false);
    let Some(r) = core.repl.as_mut() else {
        return;
    };
    r.recording.store(false, Ordering::SeqCst);
    r.queue.clear();
    r.sourced.clear();
    r.ack_replies.clear();
    r.admin.clear();
    for ops in r.consumer_ops.values() {
        ops.lock().clear();
    }
    let names: Vec<String> = core.consumers.keys().cloned().collect();
    for n in names {
        let ctx = ctx!(core);
        if let Some(c) = core.consumers.get_mut(&n) {
            c.leadership_lost(&ctx);
        }
    }
    core.sources_restart();
    tracing::info!(stream = %core.name, account = %core.account, "JetStream: no longer the stream leader");
}

/// An inactive consumer's deletion: replicated when the stream is.
pub(crate) fn delete_inactive(core: &mut StreamCore, name: &str) {
    match core.repl.as_mut() {
        Some(r) => r.admin.push(Op::ConsumerDelete {
            name: name.to_string(),
        }),
        None => {
            core.delete_consumer(name);
        }
    }
}

/// nats-server's `cluster` object of stream and consumer info, from the group's status.
fn cluster_json(g: &Group, cluster: Option<&str>) -> Value {
    let st = g.status();
    let mut v = serde_json::Map::new();
    if let Some(c) = cluster {
        v.insert("name".into(), json!(c));
    }
    if let Some(l) = &st.leader {
        v.insert("leader".into(), json!(l.name));
    }
    if let Some(t) = st.leader_since {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            v.insert("leader_since".into(), json!(rfc3339(d.as_nanos() as i64)));
        }
    }
    let reps: Vec<Value> = st
        .replicas
        .iter()
        .filter(|x| Some(&x.peer) != st.leader.as_ref())
        .map(|x| {
            let offline = st.is_leader && x.last_seen.is_none_or(|d| d > OFFLINE_AFTER);
            let mut r = json!({
                "name": x.peer.name,
                "current": st.is_leader && !offline && x.lag == 0,
                "active": x.last_seen.map_or(0, |d| d.as_nanos() as u64),
                "lag": x.lag,
            });
            if offline {
                r["offline"] = json!(true);
            }
            if !x.voter {
                r["observer"] = json!(true);
            }
            r
        })
        .collect();
    if !reps.is_empty() {
        v.insert("replicas".into(), Value::Array(reps));
    }
    Value::Object(v)
}

// ---- apply (every member, on the stream's thread) ----

/// Applies a committed entry; the answer is one [`OpAnswer`] per op.
fn apply(core: &mut StreamCore, index: u64, bytes: &[u8]) -> Bytes {
    let e = match Entry::decode(bytes) {
        Ok(e) => e,
        Err(err) => {
            tracing::error!(stream = %core.name, index, "JetStream: {err}; entry skipped");
            return Bytes::new();
        }
    };
    let Some(r) = core.repl.as_ref() else {
        return Bytes::new();
    };
    let own = r.leading && e.origin == r.me.id && e.epoch & !SERIAL_MASK == r.epoch;
    // This leader's proposal in flight: finished here, without waiting for the proposal's
    // future to come back to this thread (`committed` then finds it done).
    let serial = e.epoch & SERIAL_MASK;
    let mine = own && serial != 0 && r.inflight.as_ref().is_some_and(|i| i.serial == serial);
    let recording = r.recording.clone();
    recording.store(false, Ordering::SeqCst);
    let mut answers = Vec::with_capacity(e.ops.len());
    for op in e.ops {
        answers.push(apply_op(core, op, own));
    }
    let ready = core.repl.as_ref().is_some_and(|r| r.ready);
    recording.store(ready, Ordering::SeqCst);
    core.prune_dedupe(now_ns());
    core.update_stats();
    // The leader delivers what an entry made deliverable (a consumer created through
    // the API, messages of an entry it did not propose).
    core.drive_consumers();
    let answer = entry::encode_answers(&answers);
    if mine {
        if let Some(r) = core.repl.as_ref() {
            r.finished.store(e.epoch, Ordering::Release);
        }
        if let Some(inf) = core.repl.as_mut().and_then(|r| r.inflight.take()) {
            finish(core, inf, &answer);
            pump(core);
        }
    }
    Bytes::from(answer)
}

fn apply_op(core: &mut StreamCore, op: Op, own: bool) -> OpAnswer {
    match op {
        Op::Noop => Ok(Vec::new()),
        Op::Msgs(msgs) => Ok(apply_msgs(core, msgs)),
        Op::DeleteMsg { seq } => {
            let removed = core.store.remove_msg(seq).unwrap_or(false);
            core.consumers_purged();
            Ok(vec![u8::from(removed)])
        }
        Op::Purge {
            filter,
            seq,
            keep,
            bound,
        } => {
            // Bounded by what existed when it was asked: applied again, it spares later
            // messages (a `keep` purge counts from the newest and is not bounded).
            let up_to = if keep.is_some() {
                seq
            } else {
                Some(seq.unwrap_or(u64::MAX).min(bound.saturating_add(1)))
            };
            let opts = PurgeOpts {
                filter,
                up_to_seq: up_to,
                keep,
            };
            let n = core.store.purge(&opts).map_err(|e| e.to_string())?;
            core.consumers_purged();
            Ok(n.to_le_bytes().to_vec())
        }
        Op::ConsumerUpsert {
            name,
            created,
            config,
        } => consumer_upsert_apply(core, name, created, &config),
        Op::ConsumerDelete { name } => {
            let gone = core.delete_consumer(&name);
            if let Some(r) = core.repl.as_mut() {
                r.consumer_ops.remove(&name);
            }
            Ok(vec![u8::from(gone)])
        }
        Op::ConsumerOps { name, ops } => {
            if !own {
                apply_cops(core, &name, ops);
            }
            Ok(Vec::new())
        }
        Op::Config(c) => {
            let cfg: StreamConfig = serde_json::from_slice(&c).map_err(|e| e.to_string())?;
            set_config(core, cfg);
            Ok(Vec::new())
        }
        Op::SourceIdent { source, ident } => {
            core.source_ident_applied(&source, ident);
            Ok(Vec::new())
        }
    }
}

/// The leader learned an origin's identity (`source`: its `Spec::iname`): replicated, so
/// that a member leading later compares the origin with it.
pub(crate) fn source_ident(core: &mut StreamCore, source: &str, ident: &str) {
    if let Some(r) = core.repl.as_mut().filter(|r| r.leading) {
        r.admin.push(Op::SourceIdent {
            source: source.to_string(),
            ident: ident.to_string(),
        });
    }
}

/// Stores messages at the leader's sequences; one already stored (a replay after a crash)
/// is skipped; one the store refuses (discard-new limits) leaves its sequence skipped, so
/// that every member ends with the same sequences.
fn apply_msgs(core: &mut StreamCore, msgs: Vec<entry::RMsg>) -> Vec<u8> {
    let leader = core.repl.as_ref().is_some_and(|r| r.ready);
    let prepared: Vec<(u64, i64, Prepared)> = msgs
        .into_iter()
        .map(|m| {
            let msg_id = header(&m.hdr, "Nats-Msg-Id").map(str::to_string);
            (
                m.seq,
                m.ts,
                Prepared {
                    subject: m.subject,
                    hdr: m.hdr,
                    payload: Bytes::from(m.payload),
                    reply: None,
                    ttl: m.ttl,
                    msg_id,
                    rollup: m.rollup,
                },
            )
        })
        .collect();
    let mut plan = if leader {
        // Republishing is the leader's.
        let ps: Vec<Prepared> = prepared
            .iter()
            .map(|(_, _, p)| Prepared {
                subject: p.subject.clone(),
                hdr: Vec::new(),
                payload: Bytes::new(),
                reply: None,
                ttl: None,
                msg_id: None,
                rollup: None,
            })
            .collect();
        core.republish_plan(&ps)
    } else {
        None
    };
    let before = core.store.totals().msgs;
    let mut stored = 0u64;
    let mut results = Vec::with_capacity(prepared.len());
    for (i, (seq, ts, p)) in prepared.iter().enumerate() {
        let last = core.store.totals().last_seq;
        if *seq <= last {
            if let Some(all) = p.rollup {
                core.rollup(p, all, *seq);
            }
            results.push(None);
            continue;
        }
        if *seq > last + 1 {
            let _ = core.store.skip_msgs(last + 1, seq - last - 1);
        }
        let m = NewMsg {
            subject: &p.subject,
            hdr: &p.hdr,
            payload: &p.payload,
            ttl: p.ttl,
        };
        match core.store.store_raw(*seq, *ts, m) {
            Ok(()) => {
                stored += 1;
                if !core.sources.is_empty() {
                    core.sourced_applied(*seq, &p.hdr);
                }
                core.stored_effects(p, i, *seq, *ts, plan.as_mut());
                results.push(None);
            }
            Err(e) => {
                if let Err(e2) = core.store.skip_msgs(*seq, 1) {
                    tracing::error!(stream = %core.name, "JetStream: skipping {seq}: {e2}");
                }
                results.push(Some(e.to_string()));
            }
        }
    }
    if core.store.totals().msgs != before + stored {
        for c in core.consumers.values() {
            c.recount();
        }
    }
    entry::encode_msg_results(&results)
}

fn apply_cops(core: &mut StreamCore, name: &str, ops: Vec<COp>) {
    let Some(c) = core.consumers.get_mut(name) else {
        return;
    };
    let mut acked = Vec::new();
    {
        let st = c.store_mut();
        for o in ops {
            match o {
                COp::Delivered { dseq, sseq, dc, ts } => st.update_delivered(dseq, sseq, dc, ts),
                COp::Acked { dseq, sseq } => {
                    if st.update_ack(dseq, sseq) {
                        acked.push(sseq);
                    }
                }
                COp::Set(s) => st.set_state(s),
            }
        }
        if let Err(e) = st.flush() {
            tracing::error!(consumer = %name, "JetStream: consumer state not written: {e}");
        }
    }
    c.resync();
    core.retain(&acked);
}

fn consumer_upsert_apply(
    core: &mut StreamCore,
    name: String,
    created: i64,
    config: &[u8],
) -> OpAnswer {
    let cfg: ConsumerConfig = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    let leader = core.repl.as_ref().is_some_and(|r| r.ready);
    if let Some(existing) = core.consumers.get_mut(&name) {
        let ctx = ctx!(core);
        existing.set_config(&ctx, cfg, leader);
        core.persist_consumer(&name)
            .map_err(|e| ApiError::from(e).description)?;
    } else {
        let Some(r) = core.repl.as_ref() else {
            return Err("not replicated".into());
        };
        let durable = cfg.durable_name.as_ref().is_some_and(|d| !d.is_empty());
        let meta = ConsumerMeta {
            name: name.clone(),
            config: cfg.clone(),
            created,
        };
        let st = r
            .settings
            .consumer_store(core.dir.as_deref(), &meta, durable)?;
        let mut k = Consumer::new(name.clone(), cfg, created, st, core.store.as_ref(), true);
        if let Some(r) = core.repl.as_mut() {
            r.wrap(&mut k);
        }
        core.consumers.insert(name.clone(), k);
        core.update_stats();
        if leader {
            crate::advisory::consumer_action(
                core.host.as_ref(),
                &core.account,
                core.domain.as_deref(),
                &core.name,
                &name,
                "create",
            );
        }
    }
    let info = core
        .consumers
        .get(&name)
        .map(|k| {
            let ctx = ctx!(core);
            k.info(&ctx, &core.cluster)
        })
        .unwrap_or(Value::Null);
    Ok(info.to_string().into_bytes())
}

/// A new configuration on every member: the core, the store's limits, the handle, the
/// metadata file and (subjects may have changed) the subscriptions.
fn set_config(core: &mut StreamCore, cfg: StreamConfig) {
    core.set_config(cfg.clone());
    if let Err(e) = core.store.update_config(cfg.store_config()) {
        tracing::error!(stream = %core.name, "JetStream: stream limits: {e}");
    }
    core.consumers_purged();
    if let Some(d) = &core.dir {
        let meta = StreamMeta {
            config: cfg.clone(),
            created: core.created,
            uid: core.uid.clone(),
        };
        if let Err(e) = crate::engine::write_json(&d.join("replica.json"), &meta) {
            tracing::error!(stream = %core.name, "JetStream: {}: {e}", d.display());
        }
    }
    let Some(h) = core.me.upgrade() else {
        return;
    };
    *h.cfg.write() = cfg;
    // The subjects may have changed: the leader subscribes them again.
    if core.repl.as_ref().is_some_and(|r| r.leading) {
        ingest(core, true);
    }
}

// ---- snapshots ----

/// 2 adds the origins' identities after the messages; 1 is still read.
const SNAP_VERSION: u8 = 2;

/// The stream as of the last applied entry: its configuration, consumers (configuration
/// and state) and every live message, so that a follower that lacks them can restore.
fn snapshot(core: &mut StreamCore) -> Result<Bytes, String> {
    let st = core.store.totals();
    if st.bytes > MAX_SNAPSHOT_BYTES {
        return Err(format!(
            "stream {} holds {} bytes, more than a snapshot carries ({MAX_SNAPSHOT_BYTES})",
            core.name, st.bytes
        ));
    }
    let mut w = W::default();
    w.u8(SNAP_VERSION);
    w.bytes(&serde_json::to_vec(&core.cfg).map_err(|e| e.to_string())?);
    w.u64(st.first_seq);
    w.u64(st.last_seq);
    w.len(core.consumers.len());
    for (name, c) in core.consumers.iter_mut() {
        w.bytes(name.as_bytes());
        w.i64(c.created);
        w.bytes(&serde_json::to_vec(&c.cfg).map_err(|e| e.to_string())?);
        w.bytes(&c.store_mut().state().encode());
    }
    let mut msgs = W::default();
    let mut n = 0usize;
    let mut seq = st.first_seq.max(1);
    while let Ok(Some(m)) = core.store.load_next_matching(">", seq) {
        entry::put_msg(
            &mut msgs,
            &entry::MsgRef {
                seq: m.seq,
                ts: m.ts,
                ttl: m.ttl,
                rollup: None,
                subject: m.subject(),
                hdr: m.headers(),
                payload: m.payload(),
            },
        );
        n += 1;
        seq = m.seq + 1;
    }
    w.len(n);
    w.0.extend_from_slice(&msgs.0);
    let idents: Vec<(&str, &str)> = core
        .sources
        .iter()
        .filter_map(|s| Some((s.spec.iname.as_str(), s.ident.as_deref()?)))
        .collect();
    w.len(idents.len());
    for (source, ident) in idents {
        w.bytes(source.as_bytes());
        w.bytes(ident.as_bytes());
    }
    Ok(Bytes::from(w.0))
}

struct Snap {
    cfg: StreamConfig,
    first: u64,
    last: u64,
    consumers: Vec<(String, i64, Vec<u8>, ConsumerState)>,
    msgs: Vec<entry::RMsg>,
    /// Origins' identities: (`Spec::iname`, identity).
    idents: Vec<(String, String)>,
}

fn decode_snapshot(b: &[u8]) -> Result<Snap, entry::Malformed> {
    let mut r = entry::R::new(b);
    let version = r.u8()?;
    if version != 1 && version != SNAP_VERSION {
        return Err(entry::Malformed("unknown snapshot version"));
    }
    let cfg =
        serde_json::from_slice(r.bytes()?).map_err(|_| entry::Malformed("bad stream config"))?;
    let first = r.u64()?;
    let last = r.u64()?;
    let nc = r.count(20)?;
    let mut consumers = Vec::with_capacity(nc);
    for _ in 0..nc {
        let name = r.string()?;
        let created = r.i64()?;
        let cfg = r.bytes()?.to_vec();
        let st = ConsumerState::decode(r.bytes()?)
            .map_err(|_| entry::Malformed("bad consumer state"))?;
        consumers.push((name, created, cfg, st));
    }
    let nm = r.count(29)?;
    let mut msgs = Vec::with_capacity(nm);
    for _ in 0..nm {
        msgs.push(entry::get_msg(&mut r)?);
    }
    let mut idents = Vec::new();
    if version >= 2 {
        for _ in 0..r.count(8)? {
            idents.push((r.string()?, r.string()?));
        }
    }
    r.done()?;
    Ok(Snap {
        cfg,
        first,
        last,
        consumers,
        msgs,
        idents,
    })
}

/// Makes this member's stream what the snapshot describes: messages it lacks are stored
/// at their sequences, messages the snapshot no longer has are removed, consumers are
/// replaced.
fn restore(core: &mut StreamCore, index: u64, data: &[u8]) -> Result<(), String> {
    let s = decode_snapshot(data).map_err(|e| e.to_string())?;
    tracing::info!(stream = %core.name, index, msgs = s.msgs.len(), "JetStream: restoring a snapshot");
    if s.cfg != core.cfg {
        set_config(core, s.cfg);
    }
    let local = core.store.totals();
    if local.last_seq > s.last {
        tracing::warn!(stream = %core.name, "JetStream: local stream is ahead of the snapshot ({} > {})", local.last_seq, s.last);
    }
    if s.first > local.first_seq {
        core.store.compact(s.first).map_err(|e| e.to_string())?;
    }
    let have: BTreeSet<u64> = s.msgs.iter().map(|m| m.seq).collect();
    let mut seq = s.first.max(1);
    let mut gone = Vec::new();
    while let Ok(Some(m)) = core.store.load_next_matching(">", seq) {
        if m.seq > s.last {
            break;
        }
        if !have.contains(&m.seq) {
            gone.push(m.seq);
        }
        seq = m.seq + 1;
    }
    for g in gone {
        let _ = core.store.remove_msg(g);
    }
    for m in &s.msgs {
        let last = core.store.totals().last_seq;
        if m.seq <= last {
            continue;
        }
        if m.seq > last + 1 {
            core.store
                .skip_msgs(last + 1, m.seq - last - 1)
                .map_err(|e| e.to_string())?;
        }
        let n = NewMsg {
            subject: &m.subject,
            hdr: &m.hdr,
            payload: &m.payload,
            ttl: m.ttl,
        };
        core.store
            .store_raw(m.seq, m.ts, n)
            .map_err(|e| e.to_string())?;
    }
    let last = core.store.totals().last_seq;
    if s.last > last {
        core.store
            .skip_msgs(last + 1, s.last - last)
            .map_err(|e| e.to_string())?;
    }
    // Consumers.
    let keep: BTreeSet<&str> = s.consumers.iter().map(|c| c.0.as_str()).collect();
    let drop: Vec<String> = core
        .consumers
        .keys()
        .filter(|k| !keep.contains(k.as_str()))
        .cloned()
        .collect();
    for d in drop {
        core.delete_consumer(&d);
    }
    for (name, created, cfg, st) in s.consumers {
        consumer_upsert_apply(core, name.clone(), created, &cfg)?;
        if let Some(c) = core.consumers.get_mut(&name) {
            c.store_mut().set_state(st);
            let _ = c.store_mut().flush();
            c.resync();
        }
    }
    for (source, ident) in s.idents {
        core.source_ident_applied(&source, ident);
    }
    core.dedupe.clear();
    core.dedupe_q.clear();
    core.last_msg_id = None;
    core.rebuild_dedupe();
    core.consumers_purged();
    core.update_stats();
    Ok(())
}

/// The group's state machine: every call runs on the stream's thread.
struct StreamSm {
    h: std::sync::Weak<StreamHandle>,
    /// File storage (the state survives a restart); memory streams are rebuilt from the
    /// group's snapshot and log on open.
    durable: bool,
}

impl StateMachine for StreamSm {
    fn durable(&self) -> bool {
        self.durable
    }

    fn apply(&self, index: u64, entry: &[u8]) -> Bytes {
        let Some(h) = self.h.upgrade() else {
            return Bytes::new();
        };
        let e = entry.to_vec();
        h.call(move |c| apply(c, index, &e)).unwrap_or_default()
    }

    fn applies_elsewhere(&self) -> bool {
        true
    }

    /// The whole run applied by the calling task (the group's state machine task) when the
    /// stream is [`idle`](StreamHandle::idle) and its store does not fsync every write: on
    /// the leader, the publishers' acks leave from here, with no hop to the stream's thread
    /// on the path of every replicated publish. Otherwise the run goes to the stream's
    /// thread in one visit, answered through a oneshot the group awaits (no runtime worker
    /// blocks, no thread hop per entry).
    fn apply_run(&self, entries: Vec<(u64, Bytes)>) -> canopy_raft::BoxFuture<Vec<Bytes>> {
        let n = entries.len();
        let Some(h) = self.h.upgrade() else {
            return Box::pin(std::future::ready(vec![Bytes::new(); n]));
        };
        if let Some(mut idle) = h.idle() {
            if let Some(core) = idle.core().filter(|c| !c.fsyncs_every_write()) {
                let mut out = Vec::with_capacity(n);
                crate::stream::batched(core, true, |c| {
                    out.extend(entries.iter().map(|(i, e)| apply(c, *i, e)));
                });
                return Box::pin(std::future::ready(out));
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = h.send(Cmd::Call(Box::new(move |c| {
            let out = entries.iter().map(|(i, e)| apply(c, *i, e)).collect();
            let _ = tx.send(out);
        })));
        Box::pin(async move {
            if !sent {
                return vec![Bytes::new(); n];
            }
            // As `StreamHandle::call`: a thread that does not answer in 30 s is stopping.
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(out)) => out,
                _ => vec![Bytes::new(); n],
            }
        })
    }

    fn snapshot(&self) -> Result<Bytes, String> {
        let h = self.h.upgrade().ok_or("stream stopped")?;
        h.call(snapshot)
            .unwrap_or_else(|| Err("stream not responding".into()))
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let h = self.h.upgrade().ok_or("stream stopped")?;
        let d = data.to_vec();
        h.call(move |c| restore(c, index, &d))
            .unwrap_or_else(|| Err("stream not responding".into()))
    }
}

// ---- the API side (API worker threads) ----

/// The handle and group of `stream` when it is replicated.
pub(crate) fn group_of(acc: &Account, stream: &str) -> Option<(Arc<StreamHandle>, Group)> {
    let h = acc.stream(stream)?;
    let g = h.raft.lock().as_ref()?.group.clone();
    Some((h, g))
}

/// Proposes one op built (and checked) on the stream's thread by `build`, waits for its
/// commit and returns its answer. `build` answering `Ok(Err(v))` needs no proposal.
pub(crate) fn propose_admin(
    h: &StreamHandle,
    g: Group,
    build: impl FnOnce(&mut StreamCore) -> Result<Result<Op, Value>, E> + Send + 'static,
) -> Result<Result<Vec<u8>, Value>, E> {
    let built = h
        .call(move |c| {
            let Some(r) = c.repl.as_ref() else {
                return Err(E::ClusterNotAvail);
            };
            if !r.ready {
                return Err(E::ClusterNotAvail);
            }
            let (origin, epoch, rt) = (r.me.id, r.epoch, r.rt.clone());
            Ok(build(c)?.map(|op| {
                let e = Entry {
                    origin,
                    epoch,
                    ops: vec![op],
                };
                (e.encode(), rt)
            }))
        })
        .unwrap_or_else(|| Err(E::StreamGeneral("stream is not responding".into())))?;
    let (bytes, rt) = match built {
        Ok(x) => x,
        Err(v) => return Ok(Err(v)),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(g.propose(Bytes::from(bytes)).await);
    });
    let (_, answer) = rx
        .recv_timeout(ADMIN_TIMEOUT)
        .map_err(|_| E::ClusterNotAvail)?
        .map_err(|_| E::ClusterNotAvail)?;
    let first = entry::decode_answers(&answer)
        .ok()
        .and_then(|mut v| (!v.is_empty()).then(|| v.swap_remove(0)))
        .ok_or_else(|| E::StreamGeneral("no answer from the stream".into()))?;
    first.map(Ok).map_err(E::StreamGeneral)
}

/// Consumer create/update on a replicated stream. `check` runs on the stream's thread:
/// `Some(info)` means the consumer exists with this configuration (no proposal).
pub(crate) fn consumer_upsert(
    h: &StreamHandle,
    g: Group,
    name: String,
    cfg: ConsumerConfig,
    check: impl FnOnce(&StreamCore, &ConsumerConfig) -> Result<Option<Value>, E> + Send + 'static,
) -> Result<Value, E> {
    let config = serde_json::to_vec(&cfg).map_err(|e| E::StreamGeneral(e.to_string()))?;
    let r = propose_admin(h, g, move |c| {
        if let Some(v) = check(c, &cfg)? {
            return Ok(Err(v));
        }
        let created = c.consumers.get(&name).map_or_else(now_ns, |k| k.created);
        Ok(Ok(Op::ConsumerUpsert {
            name,
            created,
            config,
        }))
    })?;
    match r {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| E::StreamGeneral(e.to_string())),
        Err(v) => Ok(v),
    }
}

/// `CONSUMER.PAUSE` on a replicated stream: the new `pause_until` is committed as a
/// consumer update, so every member (and any later leader) holds the pause.
pub(crate) fn consumer_pause(
    h: &StreamHandle,
    g: Group,
    name: String,
    until: Option<String>,
) -> Result<Value, E> {
    let n = name.clone();
    propose_admin(h, g, move |c| {
        let k = c.consumers.get(&n).ok_or(E::ConsumerNotFound)?;
        let mut cfg = k.cfg.clone();
        cfg.pause_until = until;
        let config = serde_json::to_vec(&cfg).map_err(|e| E::StreamGeneral(e.to_string()))?;
        Ok(Ok(Op::ConsumerUpsert {
            name: n,
            created: k.created,
            config,
        }))
    })?
    .map_err(|_| E::ConsumerNotFound)?;
    h.call(move |c| c.consumers.get(&name).map(Consumer::pause_answer))
        .flatten()
        .ok_or(E::ConsumerNotFound)
}

/// Consumer delete on a replicated stream.
pub(crate) fn consumer_delete(h: &StreamHandle, g: Group, name: String) -> Result<Value, E> {
    let _answer = propose_admin(h, g, move |c| {
        if !c.consumers.contains_key(&name) {
            return Err(E::ConsumerNotFound);
        }
        Ok(Ok(Op::ConsumerDelete { name }))
    })?;
    Ok(json!({"success": true}))
}

/// Purge on a replicated stream; `check` refuses what the stream does not permit.
pub(crate) fn purge(
    h: &StreamHandle,
    g: Group,
    opts: PurgeOpts,
    check: impl FnOnce(&StreamCore) -> Result<(), E> + Send + 'static,
) -> Result<Value, E> {
    let r = propose_admin(h, g, move |c| {
        check(c)?;
        Ok(Ok(Op::Purge {
            filter: opts.filter,
            seq: opts.up_to_seq,
            keep: opts.keep,
            bound: c.store.totals().last_seq,
        }))
    })?;
    let n = r
        .ok()
        .and_then(|b| b.get(..8).and_then(|x| x.try_into().ok()))
        .map_or(0, u64::from_le_bytes);
    Ok(json!({"success": true, "purged": n}))
}

/// Message delete on a replicated stream.
pub(crate) fn msg_delete(
    h: &StreamHandle,
    g: Group,
    seq: u64,
    check: impl FnOnce(&StreamCore) -> Result<(), E> + Send + 'static,
) -> Result<Value, E> {
    let r = propose_admin(h, g, move |c| {
        check(c)?;
        if c.store.load_msg(seq).is_err() {
            return Err(E::StreamMsgDeleteFailed("no message found".into()));
        }
        Ok(Ok(Op::DeleteMsg { seq }))
    })?;
    match r {
        Ok(b) if b.first() == Some(&1) => Ok(json!({"success": true})),
        _ => Err(E::StreamMsgDeleteFailed("no message found".into())),
    }
}

// ---- the entry points ----

/// What a replicated stream cannot do yet.
fn supported(cfg: &StreamConfig) -> Result<(), ReplicaError> {
    if cfg.subject_delete_marker_ttl > 0 {
        return Err(ReplicaError::Unsupported("subject delete markers"));
    }
    Ok(())
}

impl Engine {
    /// Opens (or recovers) this member's copy of a replicated stream and its Raft member;
    /// see the module documentation.
    pub async fn open_replicated_stream(
        self: &Arc<Self>,
        account: &str,
        cfg: StreamConfig,
        created: i64,
        group: GroupSpec,
        transport: Arc<dyn Transport>,
    ) -> Result<(), ReplicaError> {
        let acc = self
            .accounts
            .read()
            .get(account)
            .cloned()
            .ok_or_else(|| ReplicaError::NoAccount(account.to_string()))?;
        supported(&cfg)?;
        if acc.stream(&cfg.name).is_some() {
            return Err(ReplicaError::Exists(cfg.name.clone()));
        }
        let name = cfg.name.clone();
        let storage = cfg.storage;
        let mut core = self
            .stream_core(&acc, cfg, created, group.name.clone(), Some("replica.json"))
            .map_err(|e| ReplicaError::Open(ApiError::from(e).description))?;
        let mut repl = Repl::new(
            group.me.clone(),
            acc.clone(),
            Arc::downgrade(self),
            self.store_settings(),
            tokio::runtime::Handle::current(),
        );
        for c in core.consumers.values_mut() {
            repl.wrap(c);
        }
        core.repl = Some(Box::new(repl));
        let h = self
            .start_stream(&acc, core)
            .map_err(|e| ReplicaError::Open(ApiError::from(e).description))?;
        let sm = Arc::new(StreamSm {
            h: Arc::downgrade(&h),
            durable: storage == crate::types::StorageType::File,
        });
        let mut gcfg = group
            .tuning
            .clone()
            .unwrap_or_else(|| GroupConfig::new(&group.name, group.dir.clone(), group.me.clone()));
        gcfg.name.clone_from(&group.name);
        gcfg.dir.clone_from(&group.dir);
        gcfg.me = group.me.clone();
        let election_max = gcfg.election_timeout_max;
        // The stream's log is as durable as a single-server stream: fsynced per append
        // with `sync_interval: always`, else every `sync_interval` (a killed process loses
        // nothing either way; the copies on the other members cover a lost machine).
        gcfg.log_sync = match self.cfg.sync {
            canopy_store::SyncPolicy::Always => None,
            canopy_store::SyncPolicy::Interval(d) => Some(d),
        };
        let g = match Group::open(gcfg, sm, transport).await {
            Ok(g) => g,
            Err(e) => {
                self.drop_stream(&acc, &name);
                return Err(ReplicaError::Open(e.to_string()));
            }
        };
        *h.raft.lock() = Some(Member {
            group: g.clone(),
            rt: tokio::runtime::Handle::current(),
        });
        let g2 = g.clone();
        h.call(move |c| {
            if let Some(r) = c.repl.as_mut() {
                r.group = Some(g2);
            }
        });
        // The first founder (placement's pick: the least loaded member, ties shuffled)
        // initialises the group, which starts its election at once, so it usually leads.
        // When every founder initialised at once, the member that applied the meta entry
        // first (the meta leader) won nearly every election and led most streams. The
        // others initialise only if the group has not reached them after two election
        // timeouts (the first founder failed), so the group forms without it too.
        let first = group.peers.first().is_none_or(|p| p.id == group.me.id);
        if group.bootstrap && first && !g.initialized() {
            if let Err(e) = g.bootstrap(group.peers.clone()).await {
                h.raft.lock().take();
                g.shutdown().await;
                self.drop_stream(&acc, &name);
                return Err(e.into());
            }
        } else if group.bootstrap && !g.initialized() {
            let (g2, peers) = (g.clone(), group.peers.clone());
            tokio::spawn(async move {
                tokio::time::sleep(election_max * 2).await;
                if !g2.initialized() {
                    if let Err(e) = g2.bootstrap(peers).await {
                        tracing::warn!(
                            "JetStream: a replicated stream's group could not be initialised: {e}"
                        );
                    }
                }
            });
        }
        // Leadership changes, and the `cluster` object refreshed twice a second; the
        // direct-get subscriptions follow whether this member is current.
        let mut rx = g.leader_watch();
        let weak = Arc::downgrade(&h);
        let cluster = self.host.info().cluster;
        let mut direct = DirectSubs::new(self, &acc, &name);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut last: Option<Option<Peer>> = None;
            loop {
                let leader = rx.borrow_and_update().clone();
                let Some(h) = weak.upgrade() else {
                    direct.set(None, false);
                    break;
                };
                let serve = h.cfg.read().allow_direct && (g.is_current() || g.leads());
                direct.set(Some(&h), serve);
                let info = cluster_json(&g, cluster.as_deref());
                if last.as_ref() != Some(&leader) {
                    last = Some(leader.clone());
                    h.send(Cmd::Call(Box::new(move |c| on_leader(c, leader, info))));
                } else {
                    h.send(Cmd::Call(Box::new(move |c| c.cluster = info)));
                }
                drop(h);
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = tick.tick() => {}
                }
            }
        });
        Ok(())
    }

    pub(crate) fn drop_stream(&self, acc: &Account, name: &str) {
        if let Some(h) = acc.streams.write().remove(name) {
            self.stop_stream(&h);
        }
    }

    /// The Raft member of a replicated stream (incoming RPCs go to its `handle_rpc`).
    pub fn raft_group(&self, account: &str, stream: &str) -> Option<Group> {
        let acc = self.accounts.read().get(account).cloned()?;
        let h = acc.stream(stream)?;
        let g = h.raft.lock().as_ref().map(|m| m.group.clone());
        g
    }

    /// Is this member the ready leader of `stream` (it ingests and answers its API)?
    pub fn is_stream_leader(&self, account: &str, stream: &str) -> bool {
        let Some(acc) = self.accounts.read().get(account).cloned() else {
            return false;
        };
        acc.stream(stream)
            .is_some_and(|h| h.leader.load(Ordering::SeqCst))
    }

    /// nats-server's `cluster` object for a replicated stream (and its consumers).
    pub fn stream_cluster_info(&self, account: &str, stream: &str) -> Option<Value> {
        let g = self.raft_group(account, stream)?;
        Some(cluster_json(&g, self.host.info().cluster.as_deref()))
    }

    /// Scales a replicated stream to exactly `peers` (on its leader): new ones join as
    /// learners and catch up, then the voters change.
    pub async fn set_stream_peers(
        &self,
        account: &str,
        stream: &str,
        peers: Vec<Peer>,
    ) -> Result<(), ReplicaError> {
        let g = self
            .raft_group(account, stream)
            .ok_or_else(|| ReplicaError::NotFound(stream.to_string()))?;
        let known: BTreeSet<u64> = g.status().replicas.iter().map(|r| r.peer.id).collect();
        for p in &peers {
            if !known.contains(&p.id) {
                g.add_learner(p.clone()).await?;
            }
        }
        g.set_voters(peers).await?;
        Ok(())
    }

    /// Hands the leadership of a replicated stream to another member (`to`, or any).
    pub async fn stream_step_down(
        &self,
        account: &str,
        stream: &str,
        to: Option<Peer>,
    ) -> Result<(), ReplicaError> {
        let g = self
            .raft_group(account, stream)
            .ok_or_else(|| ReplicaError::NotFound(stream.to_string()))?;
        g.step_down(to).await?;
        Ok(())
    }

    /// Replicates a new configuration of a stream (on its leader). The caller validated it
    /// as a stream update.
    pub async fn update_replicated_stream(
        &self,
        account: &str,
        cfg: StreamConfig,
    ) -> Result<(), ReplicaError> {
        supported(&cfg)?;
        let name = cfg.name.clone();
        let g = self
            .raft_group(account, &name)
            .ok_or_else(|| ReplicaError::NotFound(name.clone()))?;
        let c = serde_json::to_vec(&cfg).map_err(|e| ReplicaError::Open(e.to_string()))?;
        let me = g.status().me.id;
        let e = Entry {
            origin: me,
            epoch: 0,
            ops: vec![Op::Config(c)],
        };
        g.propose(Bytes::from(e.encode())).await?;
        Ok(())
    }

    /// Stops this member of a replicated stream (its group first, then the stream); the
    /// data and the log stay.
    pub async fn close_replicated_stream(&self, account: &str, stream: &str) {
        let Some(acc) = self.accounts.read().get(account).cloned() else {
            return;
        };
        let Some(h) = acc.stream(stream) else {
            return;
        };
        let m = h.raft.lock().take();
        if let Some(m) = m {
            m.group.shutdown().await;
        }
        self.drop_stream(&acc, stream);
    }

    /// A replicated stream is being deleted: its durable sourcing consumers are deleted on
    /// their origins (called on the leader, before [`Engine::delete_replicated_stream`]).
    pub fn delete_remote_sources(&self, account: &str, stream: &str) {
        let h = self
            .accounts
            .read()
            .get(account)
            .and_then(|acc| acc.stream(stream));
        if let Some(h) = h {
            h.call(|c: &mut StreamCore| c.sources_delete_remote());
        }
    }

    /// [`Engine::close_replicated_stream`], then removes the stream's store directory.
    pub async fn delete_replicated_stream(&self, account: &str, stream: &str) {
        self.close_replicated_stream(account, stream).await;
        let Some(acc) = self.accounts.read().get(account).cloned() else {
            return;
        };
        let dir = acc.dir.join(stream);
        if dir.join("replica.json").exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("JetStream: removing {}: {e}", dir.display());
            }
        }
    }
}
