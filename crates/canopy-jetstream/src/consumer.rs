//! A consumer: which stream messages it delivers next (deliver policy, filters, redeliveries),
//! its pending set and ack handling (explicit / all / none, `-NAK` with delay, `+WPI`,
//! `+TERM`, `+NXT`), pull requests (`MSG.NEXT`) with their status messages, push delivery
//! with idle heartbeats and flow control, and its persisted state ([`ConsumerStore`]).
//!
//! A consumer lives inside its stream's actor thread ([`crate::stream`]): every method runs
//! there, with the stream's store at hand, so no locks are needed.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use canopy_store::{ConsumerState, ConsumerStore, MessageStore, SequencePair, StoredMsg};
use serde_json::{json, Value};

use crate::host::Host;
use crate::types::{
    AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy, SequenceInfo, PRIORITY_OVERFLOW,
    PRIORITY_PINNED,
};
use crate::util::{self, now_ns, rfc3339, status};

/// Bytes a push consumer sends before it asks for a flow-control reply.
const FC_WINDOW: u64 = 2 << 20;
/// How often consumer state is written when it changed.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How soon a push consumer without a subscriber looks again.
const INTEREST_POLL: Duration = Duration::from_millis(10);
/// The rate limiter's burst: nats-server uses the stream's `max_msg_size` or the account's
/// max payload; we use nats-server's default max payload.
const RATE_BURST: f64 = 1024.0 * 1024.0;
/// Gaps below this are not reproduced by `replay_policy: original` (nats-server's).
const REPLAY_MIN_GAP: i64 = 1_000_000;

/// `rate_limit_bps`: a token bucket in bytes that may go negative; a message waits until
/// the bucket is back at zero.
#[derive(Debug)]
struct RateLimit {
    bps: u64,
    tokens: f64,
    at: Instant,
}

/// `replay_policy: original` until the consumer caught up with the stream.
#[derive(Debug)]
struct Replay {
    /// The stream's last sequence when the consumer started: later messages go instantly.
    until: u64,
    /// Timestamp of the last message delivered, and when it was delivered.
    last: Option<(i64, Instant)>,
}

/// What the consumer needs from its stream while it works.
pub(crate) struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub account: &'a str,
    pub domain: Option<&'a str>,
    pub stream: &'a str,
    pub store: &'a dyn MessageStore,
}

/// A waiting pull request.
#[derive(Debug)]
struct PullReq {
    reply: String,
    batch: i64,
    max_bytes: i64,
    n: i64,
    bytes: i64,
    expires: Option<Instant>,
    no_wait: bool,
    hb: Option<Duration>,
    next_hb: Option<Instant>,
    /// Priority groups: served only while the consumer has at least this many messages
    /// pending or unacknowledged (`overflow`; 0 = no condition).
    min_pending: i64,
    min_ack_pending: i64,
    /// `pinned_client`: the pin this request holds (set when it is pinned or asked with
    /// the current pin's `id`).
    pin_id: Option<String>,
}

impl PullReq {
    fn pending_hdrs(&self) -> [(&'static str, String); 2] {
        [
            (
                "Nats-Pending-Messages",
                (self.batch - self.n).max(0).to_string(),
            ),
            (
                "Nats-Pending-Bytes",
                if self.max_bytes > 0 {
                    (self.max_bytes - self.bytes).max(0).to_string()
                } else {
                    "0".into()
                },
            ),
        ]
    }
}

/// The pin of a `pinned_client` consumer: who holds it, since when, and until when it
/// lasts without a new pull from its holder.
#[derive(Debug)]
struct Pin {
    id: String,
    ts: i64,
    deadline: Instant,
}

/// Where the next message came from (to put it back when it does not fit a request).
#[derive(Debug, Clone, Copy)]
enum Src {
    Redelivery,
    LastPerSubject,
    New,
}

/// What an ack did.
#[derive(Debug, Default)]
pub(crate) struct AckOutcome {
    /// Stream sequences no longer pending for this consumer (retention may remove them).
    pub acked: Vec<u64>,
}

pub(crate) struct Consumer {
    pub name: String,
    pub cfg: ConsumerConfig,
    pub created: i64,
    filters: Vec<String>,
    st: Box<dyn ConsumerStore>,
    /// Next stream sequence to look at for a first delivery.
    sseq: u64,
    /// `last_per_subject` start: the sequences still to deliver first.
    lss: VecDeque<u64>,
    /// Pending messages due for redelivery.
    rdq: BTreeSet<u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    deadline_of: HashMap<u64, Instant>,
    waiting: VecDeque<PullReq>,
    fc: Option<String>,
    fc_bytes: u64,
    last_delivery: Instant,
    last_activity: Instant,
    /// A push consumer whose deliver subject had no subscriber at the last try: it is
    /// retried soon (clients subscribe right after creating the consumer).
    awaiting_interest: bool,
    last_active_ns: i64,
    next_flush: Instant,
    /// `num_pending` when known: counting it is a scan of the stream in the store, so it is
    /// kept up to date per delivery and per append, and recounted after deletes.
    pending: Cell<Option<u64>>,
    replay: Option<Replay>,
    rate: Option<RateLimit>,
    /// Delivery waits until then (replay gap or rate limit).
    hold_until: Option<Instant>,
    /// A pause (`pause_until`) in force: it ends then (ns since the epoch).
    paused: Option<i64>,
    pin: Option<Pin>,
    /// Where each delivery's ack subject is written (kept: one allocation, not one per
    /// message).
    reply_buf: String,
}

impl Consumer {
    /// A new consumer (state fresh) or one restored from `st`. `fresh` computes the start
    /// sequence from the deliver policy and persists it.
    pub fn new(
        name: String,
        cfg: ConsumerConfig,
        created: i64,
        st: Box<dyn ConsumerStore>,
        store: &dyn MessageStore,
        fresh: bool,
    ) -> Consumer {
        let now = Instant::now();
        let filters = cfg.filters();
        let mut c = Consumer {
            name,
            cfg,
            created,
            filters,
            st,
            sseq: 1,
            lss: VecDeque::new(),
            rdq: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            waiting: VecDeque::new(),
            fc: None,
            fc_bytes: 0,
            last_delivery: now,
            last_activity: now,
            awaiting_interest: false,
            last_active_ns: 0,
            next_flush: now,
            pending: Cell::new(None),
            replay: None,
            rate: None,
            hold_until: None,
            paused: None,
            pin: None,
            reply_buf: String::new(),
        };
        c.paused = c.cfg.pause_end().filter(|&t| t > now_ns());
        if c.cfg.replay_policy == ReplayPolicy::Original {
            c.replay = Some(Replay {
                until: store.totals().last_seq,
                last: None,
            });
        }
        if fresh {
            let start = c.start_seq(store);
            let floor = SequencePair {
                consumer: 0,
                stream: start.saturating_sub(1),
            };
            c.st.set_state(ConsumerState {
                delivered: floor,
                ack_floor: floor,
                ..Default::default()
            });
            c.sseq = start;
            let _ = c.st.flush();
        } else {
            let s = c.st.state().clone();
            c.sseq = s.delivered.stream + 1;
            // Pending messages come due from their last delivery time.
            let now_ns = now_ns();
            for (&sseq, p) in &s.pending {
                let dc = 1 + s.redelivered.get(&sseq).copied().unwrap_or(0);
                let wait = c.ack_wait_for(dc);
                let left = (p.ts + wait - now_ns).max(0);
                c.set_deadline(sseq, now + Duration::from_nanos(left as u64));
            }
        }
        c
    }

    /// The state store (a replicated stream's follower applies the leader's updates to it).
    pub(crate) fn store_mut(&mut self) -> &mut dyn ConsumerStore {
        self.st.as_mut()
    }

    /// Replaces the state store with `f(old)` (a replicated stream wraps it to record the
    /// leader's updates).
    pub(crate) fn map_store(
        &mut self,
        f: impl FnOnce(Box<dyn ConsumerStore>) -> Box<dyn ConsumerStore>,
    ) {
        let old = std::mem::replace(
            &mut self.st,
            Box::new(canopy_store::MemConsumerStore::new()),
        );
        self.st = f(old);
    }

    /// After the state changed underneath (a follower applied updates, a snapshot was
    /// restored): the next new message follows the last delivered one.
    pub(crate) fn resync(&mut self) {
        self.sseq = self.st.state().delivered.stream + 1;
        self.lss.clear();
        self.recount();
    }

    /// This member became the leader of a replicated stream: delivery resumes from the
    /// replicated state (pending messages come due from their last delivery).
    pub(crate) fn resume(&mut self) {
        self.resync();
        self.rdq.clear();
        self.deadlines.clear();
        self.deadline_of.clear();
        self.fc = None;
        self.fc_bytes = 0;
        let now = Instant::now();
        self.last_activity = now;
        let s = self.st.state().clone();
        let now_ns = now_ns();
        for (&sseq, p) in &s.pending {
            let dc = 1 + s.redelivered.get(&sseq).copied().unwrap_or(0);
            let left = (p.ts + self.ack_wait_for(dc) - now_ns).max(0);
            self.set_deadline(sseq, now + Duration::from_nanos(left as u64));
        }
    }

    /// This member stopped leading a replicated stream: waiting pulls end with nats-server's
    /// `409 Leadership Change` (clients pull again from the new leader).
    pub(crate) fn leadership_lost(&mut self, ctx: &Ctx<'_>) {
        for r in self.waiting.drain(..) {
            let h = status(409, "Leadership Change", &r.pending_hdrs());
            ctx.host.publish(ctx.account, &r.reply, None, Some(&h), &[]);
        }
        self.rdq.clear();
        self.deadlines.clear();
        self.deadline_of.clear();
        self.pin = None;
        self.fc = None;
    }

    fn filter_iter(&self) -> Vec<&str> {
        if self.filters.is_empty() {
            vec![">"]
        } else {
            self.filters.iter().map(String::as_str).collect()
        }
    }

    /// The first stream sequence the deliver policy asks for (and, for
    /// `last_per_subject`, the per-subject starts in `lss`).
    fn start_seq(&mut self, store: &dyn MessageStore) -> u64 {
        let state = store.state();
        let after_last = state.last_seq + 1;
        match self.cfg.deliver_policy {
            DeliverPolicy::All => state.first_seq.max(1),
            DeliverPolicy::New => after_last,
            DeliverPolicy::ByStartSequence => self.cfg.opt_start_seq.max(1),
            DeliverPolicy::Last => self
                .filter_iter()
                .iter()
                .filter_map(|f| store.last_by_subject(f).ok().flatten().map(|m| m.seq))
                .max()
                .unwrap_or(after_last),
            DeliverPolicy::LastPerSubject => {
                let mut seqs: Vec<u64> = self
                    .filter_iter()
                    .iter()
                    .flat_map(|f| store.subjects_state(f))
                    .map(|(_, s)| s.last)
                    .collect();
                seqs.sort_unstable();
                self.lss = seqs.into();
                after_last
            }
            DeliverPolicy::ByStartTime => {
                let t = self
                    .cfg
                    .opt_start_time
                    .as_deref()
                    .and_then(util::parse_rfc3339)
                    .unwrap_or(0);
                seq_at_time(store, t)
            }
        }
    }

    fn ack_wait_for(&self, dc: u64) -> i64 {
        if self.cfg.backoff.is_empty() {
            return self.cfg.ack_wait.max(1);
        }
        let i = (dc.saturating_sub(1) as usize).min(self.cfg.backoff.len() - 1);
        self.cfg.backoff[i].max(1)
    }

    fn set_deadline(&mut self, sseq: u64, at: Instant) {
        if let Some(old) = self.deadline_of.insert(sseq, at) {
            self.deadlines.remove(&(old, sseq));
        }
        self.deadlines.insert((at, sseq));
    }

    fn clear_deadline(&mut self, sseq: u64) {
        if let Some(old) = self.deadline_of.remove(&sseq) {
            self.deadlines.remove(&(old, sseq));
        }
    }

    pub fn is_pull(&self) -> bool {
        self.cfg.is_pull()
    }

    /// Does this consumer deliver messages on `subject`?
    pub fn matches(&self, subject: &str) -> bool {
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| canopy_subject::subject_matches(f, subject))
    }

    /// Has this consumer finished with stream seq `sseq` (acked, or filtered out)?
    pub fn done_with(&self, sseq: u64, subject: &str) -> bool {
        if !self.matches(subject) {
            return true;
        }
        let st = self.st.state();
        sseq <= st.ack_floor.stream
            || (sseq < self.sseq && !st.pending.contains_key(&sseq) && !self.lss.contains(&sseq))
    }

    /// Messages not yet delivered (nats-server's `num_pending`).
    pub fn num_pending(&self, store: &dyn MessageStore) -> u64 {
        if let Some(n) = self.pending.get() {
            return n;
        }
        let lss = self.lss.len() as u64;
        let n = lss
            + self
                .filter_iter()
                .iter()
                .map(|f| store.num_pending(self.sseq, f, false))
                .sum::<u64>();
        self.pending.set(Some(n));
        n
    }

    /// A message was appended to the stream.
    pub fn stored(&self, subject: &str) {
        if let Some(n) = self.pending.get() {
            if self.matches(subject) {
                self.pending.set(Some(n + 1));
            }
        }
    }

    /// Messages were removed: recount `num_pending` when next asked.
    pub fn recount(&self) {
        self.pending.set(None);
    }

    fn pending_add(&self, d: i64) {
        if let Some(n) = self.pending.get() {
            self.pending.set(Some(n.saturating_add_signed(d)));
        }
    }

    /// The next message to deliver, if any may be delivered now.
    fn next_msg(&mut self, store: &dyn MessageStore) -> Option<(StoredMsg, u64, Src)> {
        while let Some(s) = self.rdq.pop_first() {
            if !self.st.state().pending.contains_key(&s) {
                continue;
            }
            match store.load_msg(s) {
                Ok(m) => {
                    let dc = 2 + self.st.state().redelivered.get(&s).copied().unwrap_or(0);
                    return Some((m, dc, Src::Redelivery));
                }
                Err(_) => {
                    self.clear_deadline(s);
                    self.st.update_ack(0, s);
                }
            }
        }
        if self.cfg.ack_policy != AckPolicy::None
            && self.cfg.max_ack_pending > 0
            && self.st.state().pending.len() as i64 >= self.cfg.max_ack_pending
        {
            return None;
        }
        while let Some(s) = self.lss.pop_front() {
            self.pending_add(-1);
            if let Ok(m) = store.load_msg(s) {
                return Some((m, 1, Src::LastPerSubject));
            }
        }
        let m = self
            .filter_iter()
            .iter()
            .filter_map(|f| store.load_next_matching(f, self.sseq).ok().flatten())
            .min_by_key(|m| m.seq)?;
        self.num_pending(store);
        self.sseq = m.seq + 1;
        self.pending_add(-1);
        Some((m, 1, Src::New))
    }

    fn unget(&mut self, src: Src, seq: u64) {
        match src {
            Src::Redelivery => {
                self.rdq.insert(seq);
            }
            Src::LastPerSubject => {
                self.lss.push_front(seq);
                self.pending_add(1);
            }
            Src::New => {
                self.sseq = seq;
                self.pending_add(1);
            }
        }
    }

    /// Takes a new configuration (update or `CONSUMER.PAUSE`); a pause starts or ends with
    /// it, announced by the `consumer_pause` advisory when it changed and `announce` (a
    /// replicated stream's followers apply the same change quietly).
    pub fn set_config(&mut self, ctx: &Ctx<'_>, cfg: ConsumerConfig, announce: bool) {
        let changed = cfg.pause_until != self.cfg.pause_until;
        self.cfg = cfg;
        self.paused = self.cfg.pause_end().filter(|&t| t > now_ns());
        if changed && announce {
            self.pause_advisory(ctx);
        }
    }

    /// `(paused, pause_until, remaining ns)` as the pause response and info report them.
    pub fn pause_state(&self) -> (bool, String, i64) {
        let end = self.cfg.pause_end().unwrap_or(0);
        let left = (end - now_ns()).max(0);
        (self.paused.is_some() && left > 0, rfc3339(end), left)
    }

    /// The `CONSUMER.PAUSE` answer as things are now.
    pub fn pause_answer(&self) -> Value {
        let (paused, pause_until, left) = self.pause_state();
        let mut v = json!({"paused": paused, "pause_until": pause_until});
        if paused {
            v["pause_remaining"] = json!(left);
        }
        v
    }

    fn pause_advisory(&self, ctx: &Ctx<'_>) {
        let (paused, until, _) = self.pause_state();
        let mut f = json!({ "paused": paused });
        if self.cfg.pause_end().is_some() {
            f["pause_until"] = Value::String(until);
        }
        self.advise(ctx, "PAUSE", "consumer_pause", f);
    }

    /// Publishes `$JS.EVENT.ADVISORY.CONSUMER.<event>.<stream>.<consumer>` (advisory `kind`
    /// with `fields` after `stream` and `consumer`).
    fn advise(&self, ctx: &Ctx<'_>, event: &str, kind: &str, fields: Value) {
        let mut v = json!({"stream": ctx.stream, "consumer": self.name});
        if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
            o.extend(f);
        }
        let subject = format!(
            "{}.CONSUMER.{event}.{}.{}",
            crate::advisory::PREFIX,
            ctx.stream,
            self.name
        );
        crate::advisory::publish(ctx.host, ctx.account, ctx.domain, &subject, kind, v);
    }

    /// Must `m` wait before it is delivered (`replay_policy: original`, `rate_limit_bps`)?
    /// Returns when it may go, or `None` to deliver it now (the rate limiter is charged).
    fn hold(&mut self, m: &StoredMsg, now: Instant) -> Option<Instant> {
        if let Some(r) = &mut self.replay {
            if m.seq > r.until {
                self.replay = None;
            } else if let Some((lts, at)) = r.last {
                let gap = m.ts - lts;
                if gap > REPLAY_MIN_GAP {
                    let due = at + Duration::from_nanos(gap as u64);
                    if due > now {
                        return Some(due);
                    }
                }
            }
        }
        let bps = self.cfg.rate_limit_bps;
        if bps == 0 || self.cfg.deliver_subject.is_none() {
            self.rate = None;
            return None;
        }
        let per_sec = (bps / 8).max(1) as f64;
        let rl = match &mut self.rate {
            Some(r) if r.bps == bps => r,
            _ => self.rate.insert(RateLimit {
                bps,
                tokens: RATE_BURST,
                at: now,
            }),
        };
        let dt = now.saturating_duration_since(rl.at).as_secs_f64();
        rl.tokens = (rl.tokens + dt * per_sec).min(RATE_BURST);
        rl.at = now;
        if rl.tokens < 0.0 {
            return Some(now + Duration::from_secs_f64(-rl.tokens / per_sec));
        }
        rl.tokens -= m.size() as f64;
        None
    }

    /// Takes the next message unless it has to wait ([`Consumer::hold`]); a message that
    /// waits is put back and the wait recorded.
    fn next_ready(&mut self, store: &dyn MessageStore) -> Option<(StoredMsg, u64, Src)> {
        let now = Instant::now();
        if self.hold_until.is_some_and(|t| t > now) {
            return None;
        }
        self.hold_until = None;
        let (m, dc, src) = self.next_msg(store)?;
        if let Some(until) = self.hold(&m, now) {
            self.unget(src, m.seq);
            self.hold_until = Some(until);
            return None;
        }
        if let Some(r) = &mut self.replay {
            r.last = Some((m.ts, now));
        }
        Some((m, dc, src))
    }

    /// Sends one message to `to` and records the delivery. Returns sequences that count as
    /// acked at once (ack policy none).
    fn send(
        &mut self,
        ctx: &Ctx<'_>,
        to: &str,
        m: &StoredMsg,
        dc: u64,
        pin: Option<&str>,
    ) -> Option<u64> {
        let dseq = self.st.state().delivered.consumer + 1;
        let pending = self.num_pending(ctx.store);
        // `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`, built
        // without the formatting machinery (one per delivered message).
        let mut reply = std::mem::take(&mut self.reply_buf);
        reply.clear();
        for part in ["$JS.ACK.", ctx.stream, ".", &self.name] {
            reply.push_str(part);
        }
        let mut digits = itoa::Buffer::new();
        for n in [dc, m.seq, dseq] {
            reply.push('.');
            reply.push_str(digits.format(n));
        }
        reply.push('.');
        reply.push_str(digits.format(m.ts));
        reply.push('.');
        reply.push_str(digits.format(pending));
        let (hdr, payload): (Vec<u8>, &[u8]) = if self.cfg.headers_only {
            (
                util::add_headers(
                    m.headers(),
                    &[("Nats-Msg-Size", m.payload().len().to_string())],
                ),
                &[],
            )
        } else {
            (m.headers().to_vec(), m.payload())
        };
        let hdr = match pin {
            Some(id) => util::add_headers(&hdr, &[("Nats-Pin-Id", id.to_string())]),
            None => hdr,
        };
        let hdr = (!hdr.is_empty()).then_some(hdr.as_slice());
        ctx.host
            .deliver(ctx.account, to, m.subject(), Some(&reply), hdr, payload);
        self.reply_buf = reply;
        let now = now_ns();
        let at = Instant::now();
        self.last_delivery = at;
        self.last_active_ns = now;
        self.st.update_delivered(dseq, m.seq, dc, now);
        if self.cfg.ack_policy == AckPolicy::None {
            self.st.update_ack(dseq, m.seq);
            return Some(m.seq);
        }
        let wait = self.ack_wait_for(dc);
        self.set_deadline(m.seq, at + Duration::from_nanos(wait.max(0) as u64));
        None
    }

    /// Delivers what can be delivered now. Returns sequences acked by delivery (ack none).
    pub fn drive(&mut self, ctx: &Ctx<'_>) -> Vec<u64> {
        let mut acked = Vec::new();
        if self.paused.is_some() {
            return acked;
        }
        if self.is_pull() {
            self.drive_pull(ctx, &mut acked);
        } else {
            self.drive_push(ctx, &mut acked);
        }
        acked
    }

    fn drive_pull(&mut self, ctx: &Ctx<'_>, acked: &mut Vec<u64>) {
        let mut eos = false;
        while !self.waiting.is_empty() {
            // Priority groups: the first request that may be served now.
            let Some(i) = (0..self.waiting.len()).find(|&i| self.eligible(&self.waiting[i], ctx))
            else {
                eos = true;
                break;
            };
            let Some((m, dc, src)) = self.next_ready(ctx.store) else {
                eos = self.hold_until.is_none();
                break;
            };
            let size = (m.subject().len() + m.headers().len() + m.payload().len()) as i64;
            if self.cfg.priority_policy.as_deref() == Some(PRIORITY_PINNED) && self.pin.is_none() {
                self.pin_request(ctx, i);
            }
            let Some(req) = self.waiting.get_mut(i) else {
                break;
            };
            if req.max_bytes > 0 && req.bytes + size > req.max_bytes {
                self.unget(src, m.seq);
                if let Some(r) = self.waiting.remove(i) {
                    let text = if r.n == 0 {
                        "Message Size Exceeds MaxBytes"
                    } else {
                        "Batch Completed"
                    };
                    let h = status(409, text, &r.pending_hdrs());
                    ctx.host.publish(ctx.account, &r.reply, None, Some(&h), &[]);
                }
                continue;
            }
            req.n += 1;
            req.bytes += size;
            if let Some(hb) = req.hb {
                req.next_hb = Some(Instant::now() + hb);
            }
            let to = req.reply.clone();
            let pin = req.pin_id.clone();
            let done = req.n >= req.batch;
            if done {
                self.waiting.remove(i);
            }
            acked.extend(self.send(ctx, &to, &m, dc, pin.as_deref()));
        }
        if eos {
            // Requests that asked not to wait end now.
            let mut keep = VecDeque::with_capacity(self.waiting.len());
            for r in self.waiting.drain(..) {
                if !r.no_wait {
                    keep.push_back(r);
                    continue;
                }
                let h = if r.n == 0 {
                    status(404, "No Messages", &[])
                } else {
                    status(408, "Request Timeout", &r.pending_hdrs())
                };
                ctx.host.publish(ctx.account, &r.reply, None, Some(&h), &[]);
            }
            self.waiting = keep;
        }
    }

    fn drive_push(&mut self, ctx: &Ctx<'_>, acked: &mut Vec<u64>) {
        let Some(to) = self.cfg.deliver_subject.clone() else {
            return;
        };
        if self.fc.is_some() {
            return;
        }
        self.awaiting_interest = !ctx.host.has_interest(ctx.account, &to);
        if self.awaiting_interest {
            return;
        }
        self.last_activity = Instant::now();
        while let Some((m, dc, _)) = self.next_ready(ctx.store) {
            acked.extend(self.send(ctx, &to, &m, dc, None));
            self.fc_bytes += m.size();
            if self.cfg.flow_control && self.fc_bytes >= FC_WINDOW {
                let fc = format!(
                    "$JS.FC.{}.{}.{}",
                    ctx.stream,
                    self.name,
                    util::random_name(4)
                );
                let h = status(100, "FlowControl Request", &[]);
                ctx.host.publish(ctx.account, &to, Some(&fc), Some(&h), &[]);
                self.fc = Some(fc);
                break;
            }
        }
    }

    /// May `r` be served now? `overflow`: when it sets no condition, or the consumer has
    /// at least `min_pending` messages pending or `min_ack_pending` unacknowledged (either
    /// suffices). `pinned_client`: when nobody is pinned, or it holds the pin.
    fn eligible(&self, r: &PullReq, ctx: &Ctx<'_>) -> bool {
        match self.cfg.priority_policy.as_deref() {
            Some(PRIORITY_OVERFLOW) => {
                (r.min_pending <= 0 && r.min_ack_pending <= 0)
                    || (r.min_pending > 0 && self.num_pending(ctx.store) as i64 >= r.min_pending)
                    || (r.min_ack_pending > 0
                        && self.st.state().pending.len() as i64 >= r.min_ack_pending)
            }
            Some(PRIORITY_PINNED) => match &self.pin {
                Some(p) => r.pin_id.as_deref() == Some(p.id.as_str()),
                None => true,
            },
            _ => true,
        }
    }

    fn pin_ttl(&self) -> Duration {
        Duration::from_nanos(self.cfg.priority_timeout.max(0) as u64)
    }

    /// Pins waiting request `i`: it and its client's later pulls (with the id) get the
    /// messages until the pin times out or is unpinned.
    fn pin_request(&mut self, ctx: &Ctx<'_>, i: usize) {
        let id = util::random_name(22);
        let Some(r) = self.waiting.get_mut(i) else {
            return;
        };
        r.pin_id = Some(id.clone());
        self.pin = Some(Pin {
            id: id.clone(),
            ts: now_ns(),
            deadline: Instant::now() + self.pin_ttl(),
        });
        let group = self
            .cfg
            .priority_groups
            .first()
            .cloned()
            .unwrap_or_default();
        self.advise(
            ctx,
            "PINNED",
            "consumer_group_pinned",
            json!({"group": group, "pinned_id": id}),
        );
    }

    /// Ends the pin (`reason`: `admin` for the UNPIN API, `timeout`): the holder's waiting
    /// pulls end with `423`, and the next waiting pull is pinned when a message comes.
    pub fn unpin(&mut self, ctx: &Ctx<'_>, reason: &str) {
        let Some(old) = self.pin.take() else {
            return;
        };
        let group = self
            .cfg
            .priority_groups
            .first()
            .cloned()
            .unwrap_or_default();
        self.advise(
            ctx,
            "UNPINNED",
            "consumer_group_unpinned",
            json!({"group": group, "reason": reason}),
        );
        let h = status(423, "Nats-Wrong-Pin-Id", &[]);
        self.waiting.retain(|r| {
            if r.pin_id.as_deref() == Some(old.id.as_str()) {
                ctx.host.publish(ctx.account, &r.reply, None, Some(&h), &[]);
                false
            } else {
                true
            }
        });
        self.hold_until = Some(Instant::now());
    }

    /// A flow-control reply arrived on `subject`.
    pub fn flow_control_reply(&mut self, subject: &str) -> bool {
        if self.fc.as_deref() == Some(subject) {
            self.fc = None;
            self.fc_bytes = 0;
            return true;
        }
        false
    }

    /// Handles a `MSG.NEXT` request (body: empty, a number, or JSON).
    pub fn pull_request(&mut self, ctx: &Ctx<'_>, reply: &str, body: &[u8]) {
        self.last_activity = Instant::now();
        let err = |code: u16, text: &str| {
            let h = status(code, text, &[]);
            ctx.host.publish(ctx.account, reply, None, Some(&h), &[]);
        };
        if !self.is_pull() {
            return err(409, "Consumer is push based");
        }
        let text = std::str::from_utf8(body).unwrap_or("").trim();
        let (mut batch, mut expires, mut no_wait, mut max_bytes, mut hb) =
            (1i64, 0i64, false, 0i64, 0i64);
        let (mut group, mut min_pending, mut min_ack_pending, mut pin_id) =
            (None::<String>, 0i64, 0i64, None::<String>);
        if text.starts_with('{') {
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                return err(400, "Bad Request");
            };
            let i = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
            let st = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
            };
            batch = i("batch");
            expires = i("expires");
            max_bytes = i("max_bytes");
            hb = i("idle_heartbeat");
            no_wait = v.get("no_wait").and_then(Value::as_bool).unwrap_or(false);
            group = st("group");
            min_pending = i("min_pending");
            min_ack_pending = i("min_ack_pending");
            pin_id = st("id");
        } else if !text.is_empty() {
            match text.parse::<i64>() {
                Ok(n) => batch = n,
                Err(_) => return err(400, "Bad Request"),
            }
        }
        if batch <= 0 {
            batch = 1;
        }
        if self.cfg.max_batch > 0 && batch > self.cfg.max_batch {
            return err(
                409,
                &format!("Exceeded MaxRequestBatch of {}", self.cfg.max_batch),
            );
        }
        if self.cfg.max_expires > 0 && expires > self.cfg.max_expires {
            return err(
                409,
                &format!(
                    "Exceeded MaxRequestExpires of {:?}",
                    Duration::from_nanos(self.cfg.max_expires as u64)
                ),
            );
        }
        if self.cfg.max_bytes > 0 && max_bytes > self.cfg.max_bytes {
            return err(
                409,
                &format!("Exceeded MaxRequestMaxBytes of {}", self.cfg.max_bytes),
            );
        }
        if hb > 0 && expires > 0 && hb * 2 > expires {
            return err(400, "Bad Request - heartbeat value too large");
        }
        if self.cfg.max_waiting > 0 && self.waiting.len() as i64 >= self.cfg.max_waiting {
            return err(409, "Exceeded MaxWaiting");
        }
        let now = Instant::now();
        if let Some(policy) = self.cfg.priority_policy.as_deref() {
            if !group
                .as_ref()
                .is_some_and(|g| self.cfg.priority_groups.contains(g))
            {
                return err(400, "Bad Request - Invalid Priority Group");
            }
            if policy == PRIORITY_PINNED {
                let ttl = self.pin_ttl();
                match (&pin_id, &mut self.pin) {
                    // The pinned client pulls again: its pin lasts another timeout.
                    (Some(id), Some(p)) if *id == p.id => p.deadline = now + ttl,
                    (Some(_), Some(_)) => return err(423, "Nats-Pin-Id mismatch"),
                    // An old id while nobody is pinned: a candidate like any other.
                    (Some(_), None) => pin_id = None,
                    (None, _) => {}
                }
            } else {
                pin_id = None;
            }
        } else {
            pin_id = None;
        }
        let hb = (hb > 0).then(|| Duration::from_nanos(hb as u64));
        self.waiting.push_back(PullReq {
            reply: reply.to_string(),
            batch,
            max_bytes,
            n: 0,
            bytes: 0,
            expires: (expires > 0).then(|| now + Duration::from_nanos(expires as u64)),
            no_wait,
            hb,
            next_hb: hb.map(|d| now + d),
            min_pending,
            min_ack_pending,
            pin_id,
        });
    }

    /// Handles an ack. `tokens` are the `$JS.ACK` reply's numbers: delivery count, stream
    /// seq, consumer seq. Returns what it acked and whether `+NXT` asked for more.
    pub fn ack(
        &mut self,
        ctx: &Ctx<'_>,
        sseq: u64,
        dseq: u64,
        body: &[u8],
        reply: Option<&str>,
    ) -> AckOutcome {
        self.last_activity = Instant::now();
        let mut out = AckOutcome::default();
        let text = std::str::from_utf8(body).unwrap_or("").trim_start();
        let (verb, rest) = match text.find(|c: char| c.is_whitespace()) {
            Some(i) => (&text[..i], text[i..].trim()),
            None => (text, ""),
        };
        let pending = self.st.state().pending.contains_key(&sseq);
        match verb {
            "" | "+ACK" | "+OK" => self.ack_seq(sseq, dseq, &mut out),
            "+NXT" => {
                self.ack_seq(sseq, dseq, &mut out);
                if let Some(r) = reply {
                    self.pull_request(ctx, r, rest.as_bytes());
                }
                return out;
            }
            "-NAK" if pending => {
                let dc = 1 + self.st.state().redelivered.get(&sseq).copied().unwrap_or(0);
                self.advise(
                    ctx,
                    "MSG_NAKED",
                    "nak",
                    json!({"consumer_seq": dseq, "stream_seq": sseq, "deliveries": dc}),
                );
                let delay = if rest.starts_with('{') {
                    serde_json::from_str::<Value>(rest)
                        .ok()
                        .and_then(|v| v.get("delay").and_then(Value::as_i64))
                        .unwrap_or(0)
                } else {
                    util::parse_go_duration(rest).unwrap_or(0)
                };
                self.clear_deadline(sseq);
                if delay > 0 {
                    self.set_deadline(sseq, Instant::now() + Duration::from_nanos(delay as u64));
                } else {
                    self.rdq.insert(sseq);
                }
            }
            "+WPI" if pending => {
                let dc = 1 + self.st.state().redelivered.get(&sseq).copied().unwrap_or(0);
                let wait = self.ack_wait_for(dc);
                self.set_deadline(sseq, Instant::now() + Duration::from_nanos(wait as u64));
            }
            "+TERM" if pending => {
                let dc = 1 + self.st.state().redelivered.get(&sseq).copied().unwrap_or(0);
                let mut f = json!({"consumer_seq": dseq, "stream_seq": sseq, "deliveries": dc});
                if !rest.is_empty() {
                    f["reason"] = Value::String(rest.to_string());
                }
                self.advise(ctx, "MSG_TERMINATED", "terminated", f);
                self.clear_deadline(sseq);
                self.rdq.remove(&sseq);
                self.st.update_ack(dseq, sseq);
                out.acked.push(sseq);
            }
            _ => {}
        }
        if let Some(r) = reply {
            // An acknowledged ack (AckSync) survives a killed process: the state is
            // written before the reply.
            if let Err(e) = self.st.flush() {
                tracing::error!("JetStream: consumer state not written: {e}");
            }
            ctx.host.publish(ctx.account, r, None, None, &[]);
        }
        out
    }

    fn ack_seq(&mut self, sseq: u64, dseq: u64, out: &mut AckOutcome) {
        match self.cfg.ack_policy {
            AckPolicy::None => {}
            AckPolicy::All => {
                let seqs: Vec<u64> = self
                    .st
                    .state()
                    .pending
                    .range(..=sseq)
                    .map(|(s, _)| *s)
                    .collect();
                for s in seqs {
                    self.clear_deadline(s);
                    self.rdq.remove(&s);
                    self.st.update_ack(dseq, s);
                    out.acked.push(s);
                }
            }
            AckPolicy::Explicit => {
                if self.st.state().pending.contains_key(&sseq) {
                    self.clear_deadline(sseq);
                    self.rdq.remove(&sseq);
                    self.st.update_ack(dseq, sseq);
                    out.acked.push(sseq);
                }
            }
        }
    }

    /// Messages below `first` are gone (purge, limits): forget them.
    pub fn stream_purged(&mut self, store: &dyn MessageStore) {
        self.recount();
        let first = store.state().first_seq;
        if self.sseq < first {
            self.sseq = first;
        }
        let gone: Vec<u64> = self
            .st
            .state()
            .pending
            .keys()
            .copied()
            .filter(|&s| s < first || store.load_msg(s).is_err())
            .collect();
        for s in gone {
            self.clear_deadline(s);
            self.rdq.remove(&s);
            self.st.update_ack(0, s);
        }
        self.lss.retain(|&s| s >= first);
        let st = self.st.state();
        if st.pending.is_empty() && st.ack_floor.stream + 1 < self.sseq {
            let mut s = st.clone();
            s.ack_floor.stream = self.sseq - 1;
            s.delivered.stream = s.delivered.stream.max(self.sseq - 1);
            self.st.set_state(s);
        }
    }

    /// Timers: redeliveries, request expiry, heartbeats, state flush. Returns true when the
    /// consumer has been inactive past its `inactive_threshold` and should be deleted.
    pub fn tick(&mut self, ctx: &Ctx<'_>, now: Instant) -> bool {
        if self.paused.is_some_and(|t| t <= now_ns()) {
            self.paused = None;
            self.pause_advisory(ctx);
            // Drive it at once: messages waited during the pause.
            self.hold_until = Some(now);
        }
        while let Some(&(at, s)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.deadline_of.remove(&s);
            let dc = 1 + self.st.state().redelivered.get(&s).copied().unwrap_or(0);
            if self.cfg.max_deliver > 0 && dc as i64 >= self.cfg.max_deliver {
                // Out of deliveries: nats-server stops redelivering and drops it.
                self.st.update_ack(0, s);
                self.advise(
                    ctx,
                    "MAX_DELIVERIES",
                    "max_deliver",
                    json!({"stream_seq": s, "deliveries": dc}),
                );
                continue;
            }
            self.rdq.insert(s);
        }
        if self.pin.as_ref().is_some_and(|p| p.deadline <= now) {
            self.unpin(ctx, "timeout");
        }
        // Pull requests that expired, and their heartbeats.
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        let hb_msg = self.heartbeat(None);
        for mut r in std::mem::take(&mut self.waiting) {
            if r.expires.is_some_and(|e| e <= now) {
                let h = status(408, "Request Timeout", &r.pending_hdrs());
                ctx.host.publish(ctx.account, &r.reply, None, Some(&h), &[]);
                continue;
            }
            if let (Some(hb), Some(at)) = (r.hb, r.next_hb) {
                if at <= now {
                    ctx.host
                        .publish(ctx.account, &r.reply, None, Some(&hb_msg), &[]);
                    r.next_hb = Some(now + hb);
                }
            }
            keep.push_back(r);
        }
        self.waiting = keep;
        if !self.waiting.is_empty() {
            self.last_activity = now;
        }
        // Push heartbeats.
        if let (Some(to), true) = (
            self.cfg.deliver_subject.clone(),
            self.cfg.idle_heartbeat > 0,
        ) {
            let hb = Duration::from_nanos(self.cfg.idle_heartbeat as u64);
            if now.duration_since(self.last_delivery) >= hb {
                if ctx.host.has_interest(ctx.account, &to) {
                    let h = self.heartbeat(self.fc.clone());
                    ctx.host.publish(ctx.account, &to, None, Some(&h), &[]);
                }
                self.last_delivery = now;
            }
        }
        if let Some(to) = &self.cfg.deliver_subject {
            if ctx.host.has_interest(ctx.account, to) {
                self.last_activity = now;
            }
        }
        if now >= self.next_flush {
            let _ = self.st.flush();
            self.next_flush = now + FLUSH_EVERY;
        }
        self.cfg.inactive_threshold > 0
            && now.duration_since(self.last_activity)
                >= Duration::from_nanos(self.cfg.inactive_threshold as u64)
    }

    fn heartbeat(&self, stalled: Option<String>) -> Vec<u8> {
        let st = self.st.state();
        let mut kv = vec![
            ("Nats-Last-Consumer", st.delivered.consumer.to_string()),
            ("Nats-Last-Stream", st.delivered.stream.to_string()),
        ];
        if let Some(s) = stalled {
            kv.push(("Nats-Consumer-Stalled", s));
        }
        status(100, "Idle Heartbeat", &kv)
    }

    /// When [`Consumer::tick`] next has work.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut at = now + Duration::from_secs(1);
        if let Some(&(d, _)) = self.deadlines.first() {
            at = at.min(d);
        }
        for r in &self.waiting {
            if let Some(e) = r.expires {
                at = at.min(e);
            }
            if let Some(h) = r.next_hb {
                at = at.min(h);
            }
        }
        if self.cfg.idle_heartbeat > 0 && self.cfg.deliver_subject.is_some() {
            at = at.min(self.last_delivery + Duration::from_nanos(self.cfg.idle_heartbeat as u64));
        }
        if self.awaiting_interest {
            at = at.min(now + INTEREST_POLL);
        }
        if let Some(h) = self.hold_until {
            at = at.min(h.max(now));
        }
        if let Some(end) = self.paused {
            let left = (end - now_ns()).max(0) as u64;
            at = at.min(now + Duration::from_nanos(left));
        }
        if let Some(p) = &self.pin {
            at = at.min(p.deadline.max(now));
        }
        if self.st.state() != &ConsumerState::default() {
            at = at.min(self.next_flush.max(now));
        }
        at
    }

    /// Should the stream's timer drive this consumer (a redelivery is waiting, or a push
    /// consumer waits for its subscriber)?
    pub fn wants_drive(&self) -> bool {
        self.paused.is_none() && !self.rdq.is_empty()
            || self.awaiting_interest
            || self.hold_until.is_some_and(|t| t <= Instant::now())
    }

    /// Ends every waiting pull request with `409 Consumer Deleted` and removes the state.
    pub fn delete(&mut self, ctx: &Ctx<'_>) {
        for r in self.waiting.drain(..) {
            let h = status(409, "Consumer Deleted", &[]);
            ctx.host.publish(ctx.account, &r.reply, None, Some(&h), &[]);
        }
        let _ = self.st.delete();
    }

    /// Writes the state (shutdown).
    pub fn close(&mut self) {
        let _ = self.st.flush();
        let _ = self.st.sync();
    }

    /// The consumer info object (without `type`).
    pub fn info(&self, ctx: &Ctx<'_>, cluster: &Value) -> Value {
        let st = self.st.state();
        let last = (self.last_active_ns > 0).then(|| rfc3339(self.last_active_ns));
        let mut v = json!({
            "stream_name": ctx.stream,
            "name": self.name,
            "created": rfc3339(self.created),
            "config": self.cfg,
            "delivered": SequenceInfo { consumer_seq: st.delivered.consumer, stream_seq: st.delivered.stream, last_active: last },
            "ack_floor": SequenceInfo { consumer_seq: st.ack_floor.consumer, stream_seq: st.ack_floor.stream, last_active: None },
            "num_ack_pending": st.pending.len(),
            "num_redelivered": st.redelivered.len(),
            "num_waiting": self.waiting.len(),
            "num_pending": self.num_pending(ctx.store),
            "cluster": cluster,
            "ts": rfc3339(now_ns()),
        });
        if let (Some(to), Some(obj)) = (&self.cfg.deliver_subject, v.as_object_mut()) {
            if ctx.host.has_interest(ctx.account, to) {
                obj.insert("push_bound".into(), Value::Bool(true));
            }
        }
        if let (Some(_), Some(obj)) = (&self.cfg.priority_policy, v.as_object_mut()) {
            let groups: Vec<Value> = self
                .cfg
                .priority_groups
                .iter()
                .map(|g| {
                    let mut e = json!({ "group": g });
                    if let Some(p) = &self.pin {
                        e["pinned_client_id"] = json!(p.id);
                        e["pinned_ts"] = json!(rfc3339(p.ts));
                    }
                    e
                })
                .collect();
            obj.insert("priority_groups".into(), Value::Array(groups));
        }
        let (paused, _, left) = self.pause_state();
        if let (true, Some(obj)) = (paused, v.as_object_mut()) {
            obj.insert("paused".into(), Value::Bool(true));
            obj.insert("pause_remaining".into(), json!(left));
        }
        v
    }
}

/// The first sequence whose message is at or after `t` (binary search over live messages).
fn seq_at_time(store: &dyn MessageStore, t: i64) -> u64 {
    let st = store.state();
    let (mut lo, mut hi) = (st.first_seq.max(1), st.last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match store.load_next_matching(">", mid).ok().flatten() {
            Some(m) if m.seq < hi => {
                if m.ts >= t {
                    hi = mid;
                } else {
                    lo = m.seq + 1;
                }
            }
            _ => hi = mid,
        }
    }
    lo
}
