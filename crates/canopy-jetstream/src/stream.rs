//! A stream: its store (file or memory), its consumers, and the actor thread that owns them.
//!
//! Every stream runs one thread ([`StreamHandle::spawn`]). Publishes, acks, pull requests and
//! API calls reach it as [`Cmd`]s; publishes that arrive together are appended with one
//! `store_batch` (group commit: one write, one fsync under `sync_interval: always`) and only
//! then acknowledged. Timers (redelivery, request expiry, heartbeats, age and TTL expiry,
//! periodic sync) run on the same thread between commands, so the store and the consumers
//! need no locks; disk work never runs on a tokio worker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use canopy_store::{MessageStore, NewMsg, PurgeOpts, StoreError};
use canopy_subject::Transform;
use parking_lot::RwLock;
use serde_json::{json, Value};

use crate::api::errors::{ApiError, E};
use crate::consumer::{Consumer, Ctx};
use crate::host::{Host, JsMsg};
use crate::types::{Retention, StreamConfig};
use crate::util::{self, header, now_ns, rfc3339};

/// Most publishes appended in one batch.
const MAX_BATCH: usize = 1024;
/// Most expired messages handled per subject-delete-marker pass.
const MAX_EXPIRE_BATCH: usize = 10_000;
/// Largest header block a message may carry.
const MAX_HDR: usize = 64 * 1024;

/// Work for a stream's thread.
pub(crate) enum Cmd {
    Pub(JsMsg),
    Ack {
        consumer: String,
        sseq: u64,
        dseq: u64,
        body: bytes::Bytes,
        reply: Option<String>,
    },
    Next {
        consumer: String,
        reply: String,
        body: Vec<u8>,
    },
    Fc {
        consumer: String,
        subject: String,
    },
    Call(Box<dyn FnOnce(&mut StreamCore) + Send>),
    /// Wakes the thread to look at its timers again (a consumer command handled on
    /// another thread set an earlier deadline, [`StreamHandle::try_inline`]).
    Wake,
    Stop(mpsc::Sender<()>),
}

impl Cmd {
    /// A client's message counted in [`StreamStats::queued`] while it waits for the thread
    /// (sent with [`StreamHandle::offer`]).
    fn counted(&self) -> bool {
        matches!(self, Cmd::Pub(_) | Cmd::Ack { .. } | Cmd::Fc { .. })
    }

    /// Consumer traffic: an ack, a pull request or a flow-control reply.
    fn for_consumer(&self) -> bool {
        matches!(self, Cmd::Ack { .. } | Cmd::Next { .. } | Cmd::Fc { .. })
    }
}

/// Counters readable without asking the thread.
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    pub msgs: AtomicU64,
    pub bytes: AtomicU64,
    pub consumers: AtomicU64,
    /// Publishes, acks and flow-control replies sent to the thread and not taken yet
    /// ([`StreamHandle::offer`], bounded by [`crate::engine::Config::ingest_queue_limit`]).
    pub queued: std::sync::atomic::AtomicUsize,
}

impl StreamStats {
    /// The thread took one of the [`StreamStats::queued`] messages (never below zero: a
    /// message sent without [`StreamHandle::offer`] must not wrap the count and so shut
    /// the stream's ingest).
    fn taken(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_sub(1));
    }
}

/// The engine's handle on a running stream.
pub(crate) struct StreamHandle {
    pub name: String,
    /// The stream's identity ([`StreamCore::uid`]).
    pub uid: String,
    pub cfg: RwLock<StreamConfig>,
    pub stats: Arc<StreamStats>,
    tx: Sender<Cmd>,
    /// The subscriptions to the stream's subjects (a replicated stream's only while this
    /// member leads, as in nats-server: publishes go to the leader alone).
    pub ingest: parking_lot::Mutex<Vec<crate::host::SubId>>,
    /// Its other subscriptions (a replicated stream's direct gets).
    pub subs: parking_lot::Mutex<Vec<crate::host::SubId>>,
    /// A replicated stream's Raft member (readable without asking the thread).
    pub(crate) raft: parking_lot::Mutex<Option<crate::replica::Member>>,
    /// A replicated stream's member leads and ingests (readable without asking the thread).
    pub(crate) leader: std::sync::atomic::AtomicBool,
    shared: Arc<Shared>,
}

/// Whether a consumer command may run on its sender's thread (a connection's reader):
/// not when it may wait for the disk. An ack with a reply (AckSync) writes the consumer's
/// state before it answers, fsynced with `sync_interval: always`; with that setting, acks
/// and deliveries of an interest or work-queue stream remove messages, also fsynced.
fn may_inline(core: &StreamCore, cmd: &Cmd) -> bool {
    let fsyncs = core.fsyncs_every_write() && core.cfg.retention != Retention::Limits;
    !fsyncs && !matches!(cmd, Cmd::Ack { reply: Some(_), .. })
}

/// What a stream's thread shares with the threads that hand it work.
struct Shared {
    /// The stream's state: the thread holds it while it works through its commands; a
    /// consumer command finding it free and nothing queued is handled by its sender
    /// ([`StreamHandle::try_inline`]).
    state: parking_lot::Mutex<State>,
    /// Commands sent to the thread and not yet handled (taken and done).
    pending: std::sync::atomic::AtomicUsize,
}

struct State {
    /// `None` once the stream stopped.
    core: Option<StreamCore>,
    /// When the thread next wakes for its timers (set by the thread, under the lock).
    planned: Instant,
}

/// The state of an [`idle`](StreamHandle::idle) stream, held by the thread doing its
/// work. Released, it wakes the stream's thread when the work set an earlier deadline than
/// the one the thread sleeps towards.
pub(crate) struct Idle<'a> {
    h: &'a StreamHandle,
    guard: Option<parking_lot::MutexGuard<'a, State>>,
}

impl Idle<'_> {
    /// The stream's core (always there: [`StreamHandle::idle`] hands out a guard only
    /// over a running core).
    pub(crate) fn core(&mut self) -> Option<&mut StreamCore> {
        self.guard.as_mut().and_then(|g| g.core.as_mut())
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let early = guard
            .core
            .as_ref()
            .is_some_and(|c| c.next_at() < guard.planned);
        drop(guard);
        if early {
            self.h.send(Cmd::Wake);
        }
    }
}

impl StreamHandle {
    /// Starts the stream's thread over `core`.
    pub fn spawn(mut core: StreamCore) -> std::io::Result<Arc<StreamHandle>> {
        let (tx, rx) = mpsc::channel();
        let h = Arc::new_cyclic(|me| {
            core.me = me.clone();
            StreamHandle {
                name: core.name.clone(),
                uid: core.uid.clone(),
                cfg: RwLock::new(core.cfg.clone()),
                stats: core.stats.clone(),
                tx,
                ingest: parking_lot::Mutex::new(Vec::new()),
                subs: parking_lot::Mutex::new(Vec::new()),
                raft: parking_lot::Mutex::new(None),
                leader: std::sync::atomic::AtomicBool::new(false),
                shared: Arc::new(Shared {
                    state: parking_lot::Mutex::new(State {
                        core: None,
                        planned: Instant::now(),
                    }),
                    pending: std::sync::atomic::AtomicUsize::new(0),
                }),
            }
        });
        let name = format!("js-stream-{}", core.name);
        h.shared.state.lock().core = Some(core);
        let shared = h.shared.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || run(shared, rx))?;
        Ok(h)
    }

    pub fn send(&self, cmd: Cmd) -> bool {
        // Counted before it can be taken: the thread counts it off when it is done.
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(cmd).is_ok() {
            return true;
        }
        self.shared.pending.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Hands a pull request to the stream: handled on this thread when it can be
    /// ([`StreamHandle::try_inline`]), sent to the stream's thread otherwise.
    pub fn next(&self, cmd: Cmd) -> bool {
        match self.try_inline(cmd) {
            None => true,
            Some(cmd) => self.send(cmd),
        }
    }

    /// The stream's state, for work done on the calling thread, when the stream's thread
    /// is not working and has nothing queued (so nothing sent earlier is overtaken):
    /// waking the stream's thread on another core costs more than most of its work (on the
    /// two-core test machine a wake-up across cores takes 20-70 µs, one on the same core
    /// 1-2 µs). What the work publishes is written by this thread (see [`batched`]).
    /// `None`: the thread is busy, has work queued, or stopped.
    pub(crate) fn idle(&self) -> Option<Idle<'_>> {
        if self.shared.pending.load(Ordering::Acquire) != 0 {
            return None;
        }
        let guard = self.shared.state.try_lock()?;
        if guard.core.is_none() || self.shared.pending.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(Idle {
            h: self,
            guard: Some(guard),
        })
    }

    /// Handles a consumer command (an ack, a pull request, a flow-control reply) on the
    /// calling thread, as nats-server does on the client's reader, when the stream is
    /// [`idle`](StreamHandle::idle). Publishes to a stream that stores them itself,
    /// replicated streams and commands that may wait for the disk ([`may_inline`]) always
    /// go through the thread. Gives the command back when it cannot be handled here
    /// (`None`: done).
    pub(crate) fn try_inline(&self, cmd: Cmd) -> Option<Cmd> {
        if !cmd.for_consumer() {
            return Some(cmd);
        }
        let Some(mut idle) = self.idle() else {
            return Some(cmd);
        };
        let Some(core) = idle.core() else {
            return Some(cmd);
        };
        if core.repl.is_some() || !may_inline(core, &cmd) {
            return Some(cmd);
        }
        // Never stops the stream: only Stop does.
        batched(core, true, |c| {
            let _ = handle(c, cmd, true);
        });
        None
    }

    /// A publish to a replicated stream this member leads, queued and proposed on the
    /// calling thread (the publisher's reader) when the stream is
    /// [`idle`](StreamHandle::idle): the leader only checks it against the applied state
    /// and hands the entry to the Raft group; the disk is written by the group's log and
    /// by the apply. Gives the message back when it cannot be handled here.
    fn try_inline_pub(&self, m: JsMsg) -> Option<JsMsg> {
        if !self.leader.load(Ordering::Relaxed) {
            return Some(m);
        }
        let Some(mut idle) = self.idle() else {
            return Some(m);
        };
        let Some(core) = idle.core() else {
            return Some(m);
        };
        if !crate::replica::ready_leader(core) {
            return Some(m);
        }
        batched(core, true, |c| {
            crate::replica::queue_pubs(c, std::iter::once(m));
            crate::replica::pump(c);
        });
        None
    }

    /// Sends a client's publish, ack or flow-control reply unless `limit` of them wait for
    /// the thread already ([`StreamStats::queued`]; the thread counts them off as it takes
    /// them). `false`: refused.
    pub fn offer(&self, cmd: Cmd, limit: usize) -> bool {
        debug_assert!(cmd.counted());
        let cmd = match cmd {
            Cmd::Pub(m) => match self.try_inline_pub(m) {
                None => return true,
                Some(m) => Cmd::Pub(m),
            },
            cmd => match self.try_inline(cmd) {
                None => return true,
                Some(cmd) => cmd,
            },
        };
        if self.stats.queued.fetch_add(1, Ordering::AcqRel) >= limit.max(1) {
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if !self.send(cmd) {
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }

    /// Runs `f` on the stream's thread and waits for its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StreamCore) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::channel();
        let ok = self.send(Cmd::Call(Box::new(move |c| {
            let _ = tx.send(f(c));
        })));
        if !ok {
            return None;
        }
        rx.recv_timeout(Duration::from_secs(30)).ok()
    }

    /// Stops the thread after it closed the store (flushes consumers).
    pub fn stop(&self) {
        let (tx, rx) = mpsc::channel();
        if self.send(Cmd::Stop(tx)) {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }
}

/// A message being ingested, after its header checks.
pub(crate) struct Prepared {
    pub(crate) subject: String,
    pub(crate) hdr: Vec<u8>,
    pub(crate) payload: bytes::Bytes,
    pub(crate) reply: Option<String>,
    pub(crate) ttl: Option<i64>,
    pub(crate) msg_id: Option<String>,
    /// `Nats-Rollup`: `Some(true)` all, `Some(false)` the subject.
    pub(crate) rollup: Option<bool>,
}

impl Prepared {
    /// A message stored as it is, without publish checks (sourced messages).
    pub(crate) fn plain(subject: String, hdr: Vec<u8>, payload: bytes::Bytes) -> Prepared {
        Prepared {
            subject,
            hdr,
            payload,
            reply: None,
            ttl: None,
            msg_id: None,
            rollup: None,
        }
    }
}

/// Where a batch's messages are republished, and each subject's last sequence so far.
pub(crate) struct RepublishPlan {
    to: Vec<Option<String>>,
    last: HashMap<String, u64>,
}

/// Everything a stream's thread owns.
pub(crate) struct StreamCore {
    pub name: String,
    pub account: Arc<str>,
    pub cfg: StreamConfig,
    pub created: i64,
    /// The stream's identity ([`crate::engine::StreamMeta::uid`]).
    pub uid: String,
    pub store: Box<dyn MessageStore>,
    /// The stream directory (file storage), for consumer state and config.
    pub dir: Option<PathBuf>,
    pub consumers: BTreeMap<String, Consumer>,
    pub host: Arc<dyn Host>,
    pub domain: Option<String>,
    pub stats: Arc<StreamStats>,
    pub sync_every: Option<Duration>,
    pub cluster: Value,
    pub(crate) dedupe: HashMap<String, (u64, i64)>,
    pub(crate) dedupe_q: VecDeque<(i64, String)>,
    pub(crate) last_msg_id: Option<String>,
    next_sync: Instant,
    closed: bool,
    /// The input subject transform (`subject_transform`).
    itr: Option<Transform>,
    /// The republish transform (`republish`) and whether it sends headers only.
    rtr: Option<(Transform, bool)>,
    /// The mirror or the sources this stream copies ([`crate::source`]).
    pub sources: Vec<crate::source::Source>,
    /// The stream's own handle (replies and deliveries for the sources come back through it).
    pub me: Weak<StreamHandle>,
    /// A replicated (R>1) stream's Raft side ([`crate::replica`]); `None`: a local stream.
    pub(crate) repl: Option<Box<crate::replica::Repl>>,
}

impl StreamCore {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        account: Arc<str>,
        cfg: StreamConfig,
        created: i64,
        uid: String,
        store: Box<dyn MessageStore>,
        dir: Option<PathBuf>,
        host: Arc<dyn Host>,
        domain: Option<String>,
        sync_every: Option<Duration>,
    ) -> StreamCore {
        let info = host.info();
        let mut core = StreamCore {
            name,
            account,
            cfg,
            created,
            uid,
            store,
            dir,
            consumers: BTreeMap::new(),
            cluster: json!({"leader": info.server_name}),
            host,
            domain,
            stats: Arc::new(StreamStats::default()),
            sync_every,
            dedupe: HashMap::new(),
            dedupe_q: VecDeque::new(),
            last_msg_id: None,
            next_sync: Instant::now() + sync_every.unwrap_or(Duration::from_secs(120)),
            closed: false,
            itr: None,
            rtr: None,
            sources: Vec::new(),
            me: Weak::new(),
            repl: None,
        };
        core.sources_configure();
        core.build_transforms();
        core.rebuild_dedupe();
        core.update_stats();
        core
    }

    /// Takes a new configuration (stream update): rebuilds the transforms.
    pub fn set_config(&mut self, cfg: StreamConfig) {
        let sources_changed = cfg.mirror != self.cfg.mirror || cfg.sources != self.cfg.sources;
        self.cfg = cfg;
        self.build_transforms();
        if sources_changed {
            self.sources_configure();
        }
    }

    /// The transforms of `subject_transform` and `republish` (validated when the config
    /// was accepted; one that does not build is left out and logged).
    fn build_transforms(&mut self) {
        let build = |src: &str, dest: &str| match Transform::new(src, dest) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(stream = %self.name, "JetStream transform {src} -> {dest}: {e}");
                None
            }
        };
        self.itr = self
            .cfg
            .subject_transform
            .as_ref()
            .filter(|t| !t.dest.is_empty())
            .and_then(|t| build(&t.src, &t.dest));
        self.rtr = self.cfg.republish.as_ref().and_then(|r| {
            let src = if r.src.is_empty() { ">" } else { &r.src };
            let dest = if r.dest.is_empty() { ">" } else { &r.dest };
            build(src, dest).map(|t| (t, r.headers_only))
        });
    }

    /// Rebuilds the duplicate window from the newest messages after a restart.
    pub(crate) fn rebuild_dedupe(&mut self) {
        let window = self.cfg.duplicate_window;
        if window <= 0 {
            return;
        }
        let cutoff = now_ns() - window;
        let mut seq = self.store.totals().last_seq;
        let mut found = Vec::new();
        for _ in 0..100_000 {
            let Ok(Some(m)) = self.store.load_prev_matching(">", seq) else {
                break;
            };
            if m.ts < cutoff {
                break;
            }
            if let Some(id) = header(m.headers(), "Nats-Msg-Id") {
                found.push((m.ts, id.to_string(), m.seq));
            }
            if m.seq <= 1 {
                break;
            }
            seq = m.seq - 1;
        }
        for (ts, id, seq) in found.into_iter().rev() {
            self.last_msg_id = Some(id.clone());
            self.dedupe.insert(id.clone(), (seq, ts));
            self.dedupe_q.push_back((ts, id));
        }
    }

    pub fn update_stats(&self) {
        let st = self.store.totals();
        self.stats.msgs.store(st.msgs, Ordering::Relaxed);
        self.stats.bytes.store(st.bytes, Ordering::Relaxed);
        self.stats
            .consumers
            .store(self.consumers.len() as u64, Ordering::Relaxed);
    }

    /// The publish acknowledgement, `{"stream":…,"seq":N[,"domain":…][,"duplicate":true]}`,
    /// written straight into a buffer (one per ack; no JSON value is built).
    pub(crate) fn ack_reply(&self, reply: &str, seq: u64, duplicate: bool) {
        let mut b = String::with_capacity(48 + self.name.len());
        b.push_str("{\"stream\":");
        push_json_str(&mut b, &self.name);
        b.push_str(",\"seq\":");
        b.push_str(itoa::Buffer::new().format(seq));
        if let Some(d) = &self.domain {
            b.push_str(",\"domain\":");
            push_json_str(&mut b, d);
        }
        if duplicate {
            b.push_str(",\"duplicate\":true");
        }
        b.push('}');
        self.host
            .publish(&self.account, reply, None, None, b.as_bytes());
    }

    pub(crate) fn err_reply(&self, reply: Option<&str>, e: E) {
        let Some(reply) = reply else {
            return;
        };
        if self.cfg.no_ack {
            return;
        }
        let err = ApiError::from(e);
        let v = json!({"error": err, "stream": self.name, "seq": 0});
        self.host
            .publish(&self.account, reply, None, None, v.to_string().as_bytes());
    }

    /// Header checks of one publish (nats-server's order); `Err` is the reply to send.
    pub(crate) fn prepare(
        &mut self,
        m: JsMsg,
        pending_last: u64,
    ) -> Result<Prepared, (Option<String>, E)> {
        let reply = m.reply.clone();
        let fail = |e: E| Err((reply.clone(), e));
        // The input transform applies before anything else; a subject it does not match
        // is stored as published.
        let subject = match self.itr.as_ref().map(|t| t.apply(&m.subject)) {
            Some(Ok(s)) => s.into_owned(),
            _ => m.subject.clone(),
        };
        if self.cfg.sealed {
            return fail(E::StreamSealed);
        }
        let hdr: &[u8] = m.headers.as_deref().unwrap_or(&[]);
        if hdr.len() > MAX_HDR {
            return fail(E::StreamHeaderExceedsMaximum);
        }
        if self.cfg.max_msg_size > 0 && (hdr.len() + m.payload.len()) as i64 > self.cfg.max_msg_size
        {
            return fail(E::StreamMessageExceedsMaximum);
        }
        let mut p = Prepared {
            subject,
            hdr: Vec::new(),
            payload: m.payload.clone(),
            reply: m.reply.clone(),
            ttl: None,
            msg_id: None,
            rollup: None,
        };
        if hdr.is_empty() {
            return Ok(p);
        }
        if let Some(s) = header(hdr, "Nats-Expected-Stream") {
            if s != self.name {
                return fail(E::StreamNotMatch);
            }
        }
        if let Some(t) = header(hdr, "Nats-TTL") {
            if !self.cfg.allow_msg_ttl {
                return fail(E::MessageTtlDisabled);
            }
            let ttl = if t.eq_ignore_ascii_case("never") {
                -1
            } else if let Ok(secs) = t.parse::<i64>() {
                secs.saturating_mul(1_000_000_000)
            } else {
                util::parse_go_duration(t).unwrap_or(0)
            };
            if ttl != -1 && ttl < 1_000_000_000 {
                return fail(E::MessageTtlInvalid);
            }
            // Negative: never expires, not even by `max_age` (the store keeps it).
            p.ttl = (ttl != 0).then_some(ttl);
        }
        if let Some(v) = header(hdr, "Nats-Expected-Last-Subject-Sequence") {
            let want: u64 = v.parse().unwrap_or(u64::MAX);
            let subj =
                header(hdr, "Nats-Expected-Last-Subject-Sequence-Subject").unwrap_or(&p.subject);
            let have = self
                .store
                .last_by_subject(subj)
                .ok()
                .flatten()
                .map_or(0, |m| m.seq);
            if have != want {
                return fail(E::StreamWrongLastSequence(have));
            }
        }
        if let Some(v) = header(hdr, "Nats-Expected-Last-Sequence") {
            let want: u64 = v.parse().unwrap_or(u64::MAX);
            if want != pending_last {
                return fail(E::StreamWrongLastSequence(pending_last));
            }
        }
        if let Some(id) = header(hdr, "Nats-Msg-Id") {
            // Entries older than the window are pruned only when something is stored:
            // a run of duplicates must not keep an expired id alive.
            let cutoff = now_ns() - self.cfg.duplicate_window;
            if let Some(&(seq, _)) = self.dedupe.get(id).filter(|&&(_, ts)| ts >= cutoff) {
                if let Some(r) = &reply {
                    self.ack_reply(r, seq, true);
                }
                return Err((None, E::BadRequest));
            }
            p.msg_id = Some(id.to_string());
        }
        if let Some(id) = header(hdr, "Nats-Expected-Last-Msg-Id") {
            let last = self.last_msg_id.clone().unwrap_or_default();
            if id != last {
                return fail(E::StreamWrongLastMsgId(last));
            }
        }
        if let Some(r) = header(hdr, "Nats-Rollup") {
            if !self.cfg.allow_rollup_hdrs || self.cfg.deny_purge {
                return fail(E::StreamRollupFailed("rollup not permitted".into()));
            }
            p.rollup = match r {
                "sub" => Some(false),
                "all" => Some(true),
                _ => {
                    return fail(E::StreamRollupFailed(format!(
                        "rollup value invalid: {r:?}"
                    )))
                }
            };
        }
        p.hdr = util::strip_headers(hdr, &["Nats-Expected-"]);
        Ok(p)
    }

    /// Appends publishes (group commit for the plain ones) and acknowledges them.
    fn ingest(&mut self, msgs: Vec<JsMsg>) {
        if self.repl.is_some() {
            // Replicated: only the leader takes publishes, proposed to the group in batches.
            crate::replica::queue_pubs(self, msgs);
            return;
        }
        if self.cfg.subject_delete_marker_ttl > 0 {
            // Before the store expires messages itself on append.
            self.expire_with_markers();
        }
        let mut plain: Vec<Prepared> = Vec::new();
        for m in msgs {
            let pending_last = self.store.totals().last_seq + plain.len() as u64;
            match self.prepare(m, pending_last) {
                Ok(p) if p.msg_id.is_none() && p.rollup.is_none() && p.ttl.is_none() => {
                    plain.push(p);
                }
                Ok(p) => {
                    self.commit(std::mem::take(&mut plain));
                    self.commit(vec![p]);
                }
                Err((reply, e)) => {
                    // Later checks depend on earlier messages: store those first.
                    self.commit(std::mem::take(&mut plain));
                    self.err_reply(reply.as_deref(), e);
                }
            }
        }
        self.commit(plain);
        self.update_stats();
        self.drive_consumers();
    }

    /// Stores one message that needs no header checks (sourced messages).
    pub(crate) fn commit_one(&mut self, subject: String, hdr: Vec<u8>, payload: bytes::Bytes) {
        self.commit(vec![Prepared::plain(subject, hdr, payload)]);
    }

    /// After a mirrored message was stored under its own sequence: consumers hear of it.
    pub(crate) fn stored_sourced(&mut self, subject: &str) {
        for c in self.consumers.values() {
            c.stored(subject);
        }
        self.update_stats();
        self.drive_consumers();
    }

    fn commit(&mut self, batch: Vec<Prepared>) {
        if batch.is_empty() {
            return;
        }
        let news: Vec<NewMsg<'_>> = batch
            .iter()
            .map(|p| NewMsg {
                subject: &p.subject,
                hdr: &p.hdr,
                payload: &p.payload,
                ttl: p.ttl,
            })
            .collect();
        let before = self.store.totals().msgs;
        let mut republish = self.republish_plan(&batch);
        let results = match self.store.store_batch(&news) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(stream = %self.name, account = %self.account, "JetStream store failed: {e}");
                let msg = e.to_string();
                for p in &batch {
                    self.err_reply(p.reply.as_deref(), E::StreamStoreFailed(msg.clone()));
                }
                return;
            }
        };
        let now = now_ns();
        let stored = results.iter().filter(|r| r.is_ok()).count() as u64;
        if self.store.totals().msgs != before + stored {
            // Limits evicted messages: consumers recount what is pending.
            for c in self.consumers.values() {
                c.recount();
            }
        }
        for (i, (p, r)) in batch.iter().zip(results).enumerate() {
            match r {
                Ok((seq, ts)) => {
                    self.stored_effects(p, i, seq, ts, republish.as_mut());
                    if let (Some(r), false) = (&p.reply, self.cfg.no_ack) {
                        self.ack_reply(r, seq, false);
                    }
                }
                Err(e) => {
                    let err = match e {
                        StoreError::MaxMsgSize { .. } => E::StreamMessageExceedsMaximum,
                        other => E::StreamStoreFailed(other.to_string()),
                    };
                    self.err_reply(p.reply.as_deref(), err);
                }
            }
        }
        self.prune_dedupe(now);
    }

    /// What follows the store of message `i` of a batch at `seq`: consumers count it, its
    /// republish, the duplicate window, a rollup's purge, interest retention without
    /// interest. Deterministic (replicas run it in the same order), apart from the republish.
    pub(crate) fn stored_effects(
        &mut self,
        p: &Prepared,
        i: usize,
        seq: u64,
        ts: i64,
        republish: Option<&mut RepublishPlan>,
    ) {
        for c in self.consumers.values() {
            c.stored(&p.subject);
        }
        if let Some(plan) = republish {
            self.republish(plan, i, p, seq, ts);
        }
        if let Some(id) = &p.msg_id {
            self.dedupe.insert(id.clone(), (seq, ts));
            self.dedupe_q.push_back((ts, id.clone()));
            self.last_msg_id = Some(id.clone());
        }
        if let Some(all) = p.rollup {
            self.rollup(p, all, seq);
        }
        if self.cfg.retention == Retention::Interest
            && !self.consumers.values().any(|c| c.matches(&p.subject))
        {
            let _ = self.store.remove_msg(seq);
        }
    }

    /// `Nats-Rollup` of the message at `seq`: everything before it (on its subject, or
    /// in the stream) goes.
    pub(crate) fn rollup(&mut self, p: &Prepared, all: bool, seq: u64) {
        let opts = PurgeOpts {
            filter: (!all).then(|| p.subject.clone()),
            up_to_seq: Some(seq),
            keep: None,
        };
        if let Err(e) = self.store.purge(&opts) {
            tracing::warn!(stream = %self.name, "rollup purge failed: {e}");
        }
        self.consumers_purged();
    }

    /// For a batch about to be stored: each message's republish subject (when `republish`
    /// matches it), and the last sequence of each such subject before the batch.
    pub(crate) fn republish_plan(&self, batch: &[Prepared]) -> Option<RepublishPlan> {
        let (tr, _) = self.rtr.as_ref()?;
        let mut plan = RepublishPlan {
            to: Vec::with_capacity(batch.len()),
            last: HashMap::new(),
        };
        for p in batch {
            let to = match tr.apply(&p.subject) {
                Ok(s) if canopy_subject::is_valid_literal_subject(&s) => Some(s.into_owned()),
                Ok(s) => {
                    tracing::warn!(stream = %self.name, "suppressing republish with invalid subject {s:?}");
                    None
                }
                Err(_) => None,
            };
            if to.is_some() && !plan.last.contains_key(&p.subject) {
                let last = self.store.filtered_state(&p.subject, 0).last;
                plan.last.insert(p.subject.clone(), last);
            }
            plan.to.push(to);
        }
        Some(plan)
    }

    /// Republishes the `i`-th message of a stored batch (nats-server's headers, appended to
    /// the message's own).
    fn republish(&self, plan: &mut RepublishPlan, i: usize, p: &Prepared, seq: u64, ts: i64) {
        let Some(Some(to)) = plan.to.get(i) else {
            return;
        };
        let headers_only = self.rtr.as_ref().is_some_and(|(_, h)| *h);
        let last = plan.last.insert(p.subject.clone(), seq).unwrap_or(0);
        let mut kv = vec![
            ("Nats-Stream", self.name.clone()),
            ("Nats-Subject", p.subject.clone()),
            ("Nats-Sequence", seq.to_string()),
            ("Nats-Time-Stamp", rfc3339(ts)),
            ("Nats-Last-Sequence", last.to_string()),
        ];
        let payload: &[u8] = if headers_only {
            kv.push(("Nats-Msg-Size", p.payload.len().to_string()));
            &[]
        } else {
            &p.payload
        };
        let hdr = util::add_headers(&p.hdr, &kv);
        self.host
            .publish(&self.account, to, None, Some(&hdr), payload);
    }

    pub(crate) fn prune_dedupe(&mut self, now: i64) {
        let cutoff = now - self.cfg.duplicate_window;
        while let Some((ts, _)) = self.dedupe_q.front() {
            if *ts >= cutoff {
                break;
            }
            if let Some((ts, id)) = self.dedupe_q.pop_front() {
                if self.dedupe.get(&id).is_some_and(|&(_, t)| t == ts) {
                    self.dedupe.remove(&id);
                }
            }
        }
    }

    /// Lets every consumer deliver what it can; applies retention to what got acked.
    pub fn drive_consumers(&mut self) {
        if !crate::replica::delivers(self) {
            return;
        }
        let names: Vec<String> = self.consumers.keys().cloned().collect();
        for n in names {
            let acked = match self.consumers.get_mut(&n) {
                Some(c) => {
                    let ctx = ctx!(self);
                    c.drive(&ctx)
                }
                None => continue,
            };
            self.retain(&acked);
        }
    }

    /// Work-queue and interest retention: remove messages every consumer is done with.
    pub(crate) fn retain(&mut self, acked: &[u64]) {
        if acked.is_empty() || self.cfg.retention == Retention::Limits {
            return;
        }
        self.sources_save_before_removing(acked);
        let mut removed = false;
        for &s in acked {
            let remove = match self.cfg.retention {
                Retention::WorkQueue => true,
                Retention::Interest => match self.store.load_msg(s) {
                    Ok(m) => self.consumers.values().all(|c| c.done_with(s, m.subject())),
                    Err(_) => false,
                },
                Retention::Limits => false,
            };
            if remove {
                removed |= self.store.remove_msg(s).unwrap_or(false);
            }
        }
        if removed {
            self.update_stats();
        }
    }

    /// After a purge: consumers forget what is gone.
    pub fn consumers_purged(&mut self) {
        for c in self.consumers.values_mut() {
            c.stream_purged(self.store.as_ref());
        }
    }

    fn handle_ack(
        &mut self,
        consumer: &str,
        sseq: u64,
        dseq: u64,
        body: &[u8],
        reply: Option<&str>,
    ) {
        let Some(c) = self.consumers.get_mut(consumer) else {
            return;
        };
        // Replicated: a double ack (AckSync) is answered once the ack state is committed.
        let reply = match (&mut self.repl, reply) {
            (Some(r), Some(to)) if !body.trim_ascii_start().starts_with(b"+NXT") => {
                r.defer_ack_reply(consumer, to);
                None
            }
            (_, reply) => reply,
        };
        let ctx = ctx!(self);
        let out = c.ack(&ctx, sseq, dseq, body, reply);
        self.retain(&out.acked);
    }

    fn handle_next(&mut self, consumer: &str, reply: &str, body: &[u8]) {
        let Some(c) = self.consumers.get_mut(consumer) else {
            let h = util::status(404, "Consumer Not Found", &[]);
            self.host.publish(&self.account, reply, None, Some(&h), &[]);
            return;
        };
        let ctx = ctx!(self);
        c.pull_request(&ctx, reply, body);
    }

    /// A file store with `sync_interval: always`: every write waits for the disk.
    pub(crate) fn fsyncs_every_write(&self) -> bool {
        self.sync_every.is_none() && self.dir.is_some()
    }

    /// When the timers next have work.
    fn next_at(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + Duration::from_secs(1);
        for c in self.consumers.values() {
            at = at.min(c.next_deadline(now));
        }
        if let Some(t) = self.store.next_expiry() {
            let left = (t - now_ns()).max(0) as u64;
            at = at.min(now + Duration::from_nanos(left));
        }
        if let Some(t) = self.sources_next(now) {
            at = at.min(t.max(now));
        }
        at
    }

    /// Expiry with subject delete markers (`subject_delete_marker_ttl`): a message that
    /// ages out (or whose TTL ends) as the last one of its subject is replaced by a marker
    /// (`Nats-Marker-Reason: MaxAge`, `Nats-TTL` the marker TTL, a subject rollup that
    /// removes it), as nats-server does; other expired messages are removed.
    /// Returns true when it stored markers (consumers then have something to deliver).
    fn expire_with_markers(&mut self) -> bool {
        let now = now_ns();
        if self.store.next_expiry().is_none_or(|t| t > now) {
            return false;
        }
        let secs = self.cfg.subject_delete_marker_ttl / 1_000_000_000;
        let mut markers = Vec::new();
        for seq in self.store.expiring(now, MAX_EXPIRE_BATCH) {
            let Ok(m) = self.store.load_msg(seq) else {
                continue;
            };
            let is_marker = header(m.headers(), "Nats-Marker-Reason").is_some()
                || header(m.headers(), "KV-Operation") == Some("PURGE");
            let last = self.store.filtered_state(m.subject(), 0).msgs == 1;
            if last && !is_marker && secs > 0 {
                markers.push(m.subject().to_string());
            } else {
                let _ = self.store.remove_msg(seq);
            }
        }
        let hdr = util::add_headers(
            b"",
            &[
                ("Nats-Marker-Reason", "MaxAge".to_string()),
                ("Nats-TTL", util::go_duration_secs(secs)),
                ("Nats-Rollup", "sub".to_string()),
            ],
        );
        let stored = !markers.is_empty();
        for subject in markers {
            self.commit(vec![Prepared {
                subject,
                hdr: hdr.clone(),
                payload: bytes::Bytes::new(),
                reply: None,
                ttl: Some(secs.saturating_mul(1_000_000_000)),
                msg_id: None,
                rollup: Some(false),
            }]);
        }
        self.consumers_purged();
        self.update_stats();
        stored
    }

    /// Timers of the stream and its consumers.
    fn tick(&mut self) {
        let now = Instant::now();
        self.sources_tick(now);
        self.sources_save();
        let mut redeliver = false;
        if self.cfg.subject_delete_marker_ttl > 0 {
            // Markers are new messages: push consumers deliver them now, not on the next
            // publish.
            redeliver = self.expire_with_markers();
        } else if self.store.next_expiry().is_some_and(|t| t <= now_ns()) {
            if let Ok(n) = self.store.expire(now_ns()) {
                if n > 0 {
                    self.consumers_purged();
                    self.update_stats();
                }
            }
        }
        if !crate::replica::delivers(self) {
            // A follower: the leader runs the consumers.
            self.sync_tick(now);
            return;
        }
        let mut gone = Vec::new();
        for (n, c) in self.consumers.iter_mut() {
            let ctx = ctx!(self);
            if c.tick(&ctx, now) {
                gone.push(n.clone());
            }
            redeliver |= c.wants_drive();
        }
        for n in gone {
            tracing::debug!(stream = %self.name, consumer = %n, "deleting inactive consumer");
            crate::replica::delete_inactive(self, &n);
        }
        if redeliver || self.consumers.values().any(Consumer::is_pull) {
            self.drive_consumers();
        }
        self.sync_tick(now);
    }

    /// The periodic store sync (`sync_interval`).
    fn sync_tick(&mut self, now: Instant) {
        if let Some(every) = self.sync_every {
            if now >= self.next_sync {
                if let Err(e) = self.store.sync() {
                    tracing::error!(stream = %self.name, "JetStream sync failed: {e}");
                }
                self.next_sync = now + every;
            }
        }
    }

    /// Rewrites a durable consumer's metadata after its configuration changed (ephemeral
    /// consumers have none on disk).
    pub fn persist_consumer(&self, name: &str) -> Result<(), E> {
        let (Some(d), Some(c)) = (&self.dir, self.consumers.get(name)) else {
            return Ok(());
        };
        let cdir = d.join("obs").join(name);
        if !cdir.exists() {
            return Ok(());
        }
        let meta = crate::engine::ConsumerMeta {
            name: name.to_string(),
            config: c.cfg.clone(),
            created: c.created,
        };
        crate::engine::write_json(&cdir.join("meta.json"), &meta)
            .map_err(|e| E::ConsumerStoreFailed(e.to_string()))
    }

    /// Removes a consumer and its state.
    pub fn delete_consumer(&mut self, name: &str) -> bool {
        let Some(mut c) = self.consumers.remove(name) else {
            return false;
        };
        let ctx = ctx!(self);
        c.delete(&ctx);
        crate::advisory::consumer_action(
            self.host.as_ref(),
            &self.account,
            self.domain.as_deref(),
            &self.name,
            name,
            "delete",
        );
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d.join("obs").join(name));
        }
        self.update_stats();
        true
    }

    /// The stream info object (without `type`).
    pub fn info(&self, subjects_filter: Option<&str>, deleted_details: bool) -> Value {
        let st = self.store.state();
        let empty = st.msgs == 0;
        let mut state = json!({
            "messages": st.msgs,
            "bytes": st.bytes,
            "first_seq": if empty && st.last_seq == 0 { 0 } else { st.first_seq },
            "first_ts": rfc3339(if empty { 0 } else { st.first_ts }),
            "last_seq": st.last_seq,
            "last_ts": rfc3339(st.last_ts),
            "consumer_count": self.consumers.len(),
        });
        if let Some(o) = state.as_object_mut() {
            if st.num_subjects > 0 {
                o.insert("num_subjects".into(), json!(st.num_subjects));
            }
            if st.num_deleted > 0 {
                o.insert("num_deleted".into(), json!(st.num_deleted));
            }
            if deleted_details && st.num_deleted > 0 {
                let seqs: Vec<u64> = self
                    .store
                    .deleted_ranges()
                    .into_iter()
                    .flat_map(|(a, b)| a..=b)
                    .take(100_000)
                    .collect();
                o.insert("deleted".into(), json!(seqs));
            }
            if st.lost.msgs > 0 {
                o.insert(
                    "lost".into(),
                    json!({"msgs": st.lost.msgs, "bytes": st.lost.bytes}),
                );
            }
            if let Some(f) = subjects_filter.filter(|f| !f.is_empty()) {
                let m: serde_json::Map<String, Value> = self
                    .store
                    .subjects_state(f)
                    .into_iter()
                    .map(|(s, ss)| (s, json!(ss.msgs)))
                    .collect();
                if !m.is_empty() {
                    o.insert("subjects".into(), Value::Object(m));
                }
            }
        }
        let mut v = json!({
            "config": self.cfg,
            "created": rfc3339(self.created),
            "state": state,
            "cluster": self.cluster,
            "ts": rfc3339(now_ns()),
        });
        if let Some(o) = v.as_object_mut() {
            if let Some(d) = &self.domain {
                o.insert("domain".into(), json!(d));
            }
            self.sources_info(o);
        }
        v
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.sources_stop();
        self.sources_save();
        for c in self.consumers.values_mut() {
            c.close();
        }
        if let Err(e) = self.store.close() {
            tracing::error!(stream = %self.name, "JetStream: closing the store failed: {e}");
        }
    }
}

/// [`ctx_of`] over a [`StreamCore`]'s fields (a macro, so the borrows stay disjoint).
macro_rules! ctx {
    ($c:expr) => {
        $crate::stream::ctx_of(
            &$c.host,
            &$c.account,
            $c.domain.as_deref(),
            &$c.name,
            $c.store.as_ref(),
        )
    };
}
pub(crate) use ctx;

/// A consumer's view of its stream, built from disjoint fields of [`StreamCore`] so that a
/// consumer (another field) can be borrowed mutably at the same time.
pub(crate) fn ctx_of<'a>(
    host: &'a Arc<dyn Host>,
    account: &'a str,
    domain: Option<&'a str>,
    stream: &'a str,
    store: &'a dyn MessageStore,
) -> Ctx<'a> {
    Ctx {
        host: host.as_ref(),
        account,
        domain,
        stream,
        store,
    }
}

/// How long an idle stream thread keeps looking for the next command before it sleeps.
/// A publisher streaming messages hands one over every microsecond or two: a thread that
/// went to sleep after each would be woken (a futex call and a context switch on both
/// sides) per message, which cost more than the messages' storage did.
const SPIN: Duration = Duration::from_micros(20);

/// `rx.recv_timeout(wait)`, after looking for a command for up to [`SPIN`] (yielding the
/// core meanwhile, so that on a busy machine the spin costs others little) when the last
/// command came within that time. `streaming` is that state, updated here: requests one
/// at a time (a sync publish every round trip) do not pay for a spin that never finds one.
fn spin_recv(
    rx: &Receiver<Cmd>,
    wait: Duration,
    streaming: &mut bool,
) -> Result<Cmd, RecvTimeoutError> {
    let start = Instant::now();
    if *streaming {
        loop {
            match rx.try_recv() {
                Ok(c) => return Ok(c),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(RecvTimeoutError::Disconnected)
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let spent = start.elapsed();
            if spent >= SPIN || spent >= wait {
                break;
            }
            std::thread::yield_now();
        }
    }
    let r = rx.recv_timeout(wait.saturating_sub(start.elapsed()));
    // A timer's deadline coming up is not a command coming.
    *streaming = r.is_ok() && start.elapsed() < SPIN;
    r
}

fn run(shared: Arc<Shared>, rx: Receiver<Cmd>) {
    let mut next = Instant::now();
    let mut streaming = false;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        let first = match spin_recv(&rx, wait, &mut streaming) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut guard = shared.state.lock();
        let State { core, planned } = &mut *guard;
        let Some(core) = core.as_mut() else {
            break;
        };
        // Commands taken in this round: counted off `pending` once they are done.
        let mut taken = usize::from(first.is_some());
        let mut pubs = Vec::new();
        let mut cmd = first;
        while let Some(c) = cmd.take() {
            match c {
                Cmd::Pub(m) => {
                    core.stats.taken();
                    pubs.push(m);
                }
                other => {
                    if other.counted() {
                        core.stats.taken();
                    }
                    if !pubs.is_empty() {
                        ingest_batch(core, std::mem::take(&mut pubs), false);
                    }
                    // Looked for first: whether this command is the last one waiting.
                    let next = rx.try_recv().ok();
                    taken += usize::from(next.is_some());
                    if let Some(done) = handle(core, other, next.is_none()) {
                        core.close();
                        // Dropped before the stop is acknowledged: the store's directory
                        // lock is released, so a restart in the same process can open it.
                        guard.core = None;
                        drop(guard);
                        let _ = done.send(());
                        return;
                    }
                    cmd = next;
                    continue;
                }
            }
            if pubs.len() >= MAX_BATCH {
                break;
            }
            cmd = rx.try_recv().ok();
            taken += usize::from(cmd.is_some());
        }
        if !pubs.is_empty() {
            // The loop ended on an empty queue unless the batch filled up. A lone publish
            // is a request waiting for its ack (sync publish, KV put): this thread writes
            // the ack itself. Larger batches come from publishers streaming; there the
            // writer writes beside this thread, which goes on with the next batch.
            let last = pubs.len() == 1;
            ingest_batch(core, pubs, last);
        }
        if Instant::now() >= next {
            core.tick();
        }
        if core.repl.is_some() {
            crate::replica::pump(core);
        }
        next = core.next_at();
        // Planned while the core is held: a command handled elsewhere from here on sees
        // this deadline and wakes the thread if it needs an earlier one.
        *planned = next;
        drop(guard);
        shared.pending.fetch_sub(taken, Ordering::AcqRel);
    }
    if let Some(mut core) = shared.state.lock().core.take() {
        core.close();
    }
}

/// Ingests a batch of publishes with the host holding back its flushes until the batch's
/// acks (and any deliveries it makes) are all written: one writer wake-up per client.
/// `last`: nothing else is waiting for the thread, which then writes the acks itself where
/// it can (a sync publisher's ack leaves without waking its writer first).
fn ingest_batch(core: &mut StreamCore, pubs: Vec<JsMsg>, last: bool) {
    batched(core, last, |c| c.ingest(pubs));
}

/// Runs `f` inside [`Host::batch`]: the wake-ups of what it publishes are held back until
/// it returns; `direct`: nothing else waits, this thread may write them itself.
pub(crate) fn batched(core: &mut StreamCore, direct: bool, f: impl FnOnce(&mut StreamCore)) {
    let host = core.host.clone();
    let mut f = Some(f);
    host.batch(direct, &mut || {
        if let Some(f) = f.take() {
            f(core)
        }
    });
}

/// Handles one non-publish command; `Some` when the stream must stop. `last`: no other
/// command is waiting, so what a call or an ack answers may be written by this thread
/// itself ([`Host::batch`]). A pull request's deliveries are not held back that way: the
/// client starts on the first ones while the rest are still being read from the store.
fn handle(core: &mut StreamCore, cmd: Cmd, last: bool) -> Option<mpsc::Sender<()>> {
    if cmd.for_consumer() && !crate::replica::delivers(core) {
        // A replicated stream's follower: its leader answers consumer traffic.
        return None;
    }
    match cmd {
        Cmd::Pub(m) => core.ingest(vec![m]),
        Cmd::Ack {
            consumer,
            sseq,
            dseq,
            body,
            reply,
        } => {
            batched(core, last, |c| {
                c.handle_ack(&consumer, sseq, dseq, &body, reply.as_deref());
                c.drive_consumers();
            });
        }
        Cmd::Next {
            consumer,
            reply,
            body,
        } => {
            core.handle_next(&consumer, &reply, &body);
            core.drive_consumers();
        }
        Cmd::Fc { consumer, subject } => {
            if let Some(c) = core.consumers.get_mut(&consumer) {
                if c.flow_control_reply(&subject) {
                    core.drive_consumers();
                }
            }
        }
        Cmd::Call(f) => batched(core, last, f),
        Cmd::Wake => {}
        Cmd::Stop(done) => return Some(done),
    }
    None
}

/// Appends `v` as a JSON string (quoted and escaped).
fn push_json_str(out: &mut String, v: &str) {
    if v.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        out.push_str(&Value::String(v.to_string()).to_string());
    }
}

#[cfg(test)]
mod ack_json_tests {
    use super::push_json_str;

    #[test]
    fn strings_are_quoted_and_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "ORDERS");
        push_json_str(&mut s, "a\"b\\c");
        assert_eq!(s, "\"ORDERS\"\"a\\\"b\\\\c\"");
    }
}
