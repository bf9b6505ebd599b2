//! Mirrors and sources: a stream that copies other streams, on this server or through
//! another JetStream's API (`external.api`, e.g. `$JS.edge.API` across a leaf link).
//!
//! Each origin is one [`Source`]: a single-flight state machine owned by the sourcing
//! stream's thread (no locks; replies and deliveries come back as [`Cmd::Call`]s):
//!
//! ```text
//! Wait ──(due, and the origin's API has interest)──► Info ──► Create ──► Active
//!   ▲                                                  │        │          │
//!   └──── fail: backoff 250 ms·2^n, capped at 2 s, jittered ◄───┴──────────┘
//! ```
//!
//! - **Info** asks `<api>.STREAM.INFO.<origin>` for the origin's retention. A limits origin
//!   gets an ephemeral push consumer (ack none, flow control, 1 s heartbeats, inactive
//!   threshold 10 s, starting at the last origin sequence stored + 1), as nats-server
//!   creates. A work-queue or interest origin gets a *durable* consumer with explicit acks:
//!   a message is acknowledged only after it was stored here, so nothing is removed from
//!   the origin before it is safe (nats-server #3207). A first delivery past a hole is
//!   left unacknowledged (what is missing was lost in flight and is redelivered first);
//!   its own redelivery is taken, the hole then being a real gap in the origin.
//! - **Active**: every delivery and heartbeat is contact. Ten seconds without contact is a
//!   stall: the consumer is recreated. An ephemeral consumer whose delivery sequence jumps
//!   (or whose heartbeat names another last delivery) lost something on the way: it is
//!   recreated from the last stored sequence + 1 at once.
//! - **Exactly once**: a delivery is stored only when its origin sequence is above the last
//!   one stored for that source, and that position is recovered from the stream itself
//!   after a restart (a mirror's last sequence; a source's newest `Nats-Stream-Source`
//!   header), so a reconnect, a recreate or a restart cannot store a message twice.
//! - **Identity**: every stream has a random identity, returned with consumer creates in a
//!   `Nats-Stream-Identity` header and recorded in `Nats-Stream-Source`. When an origin's
//!   identity changes (it was deleted and created again, nats-server #6206) a source starts
//!   again from the origin's sequence 1; a mirror reports the error (its sequences are the
//!   origin's and cannot go back).
//! - **Prompt retry**: while the origin's API has no interest (the leaf link is down) the
//!   state machine checks the interest every 250 ms, which costs a Sublist lookup, and asks
//!   as soon as the link is back.
//! - Sourced messages never go through the publish checks: `Nats-Expected-*`, `Nats-Msg-Id`
//!   and `Nats-TTL` of the origin are kept as headers and not applied again (#5240).

use std::time::{Duration, Instant};

use canopy_subject::Transform;
use rand::Rng;
use serde_json::{json, Value};

use crate::host::JsMsg;
use crate::stream::{Cmd, StreamCore};
use crate::util::{self, header, now_ns, random_name};

/// How long a source may go without a message or heartbeat before it is recreated.
const HEALTH: Duration = Duration::from_secs(10);
/// Heartbeat interval asked of the origin's consumer (ns).
const HEARTBEAT: i64 = 1_000_000_000;
/// How long the requests of one attempt may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay and the cap of the exponential backoff.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Most messages scanned backwards for `Nats-Stream-Source` headers after a restart.
const SCAN_LIMIT: usize = 1_000_000;
/// How often a mirror whose origin was recreated looks again.
const MIRROR_RECHECK: Duration = Duration::from_secs(30);
/// Most sources one stream may have.
pub(crate) const MAX_SOURCES: usize = 256;
/// `ack_wait` of a durable sourcing consumer (work-queue and interest origins).
const DURABLE_ACK_WAIT: i64 = 5_000_000_000;
/// Messages a durable sourcing consumer may have in flight.
const DURABLE_MAX_ACK_PENDING: i64 = 512;

/// A delivery the replicated leader stores through its group (see
/// [`crate::replica::queue_sourced`]).
pub(crate) struct Sourced {
    /// The source's index in `StreamCore::sources`.
    pub source: usize,
    /// The origin sequence.
    pub sseq: u64,
    /// A mirror's message keeps the origin's sequence and timestamp.
    pub mirror_ts: Option<i64>,
    /// Subject, headers and payload as stored; `None`: nothing to store (it came from
    /// this stream), only the position moves and the origin hears the ack.
    pub msg: Option<(String, Vec<u8>, bytes::Bytes)>,
    /// A durable origin's ack subject, answered once the message is committed.
    pub ack: Option<String>,
}

/// One entry of `mirror` or `sources`, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub name: String,
    opt_start_seq: u64,
    opt_start_time: Option<String>,
    filter: Option<String>,
    /// `subject_transforms`: (source filter, destination).
    transforms: Vec<(String, String)>,
    /// The API prefix (`$JS.API` or `external.api`).
    api: String,
    deliver_prefix: Option<String>,
    external: Option<Value>,
    /// nats-server's index name: `<name>[:<hash of the api>] <filters> <destinations>`.
    pub iname: String,
}

impl Spec {
    /// Parses and checks one `mirror`/`sources` entry (already normalised: see
    /// [`normalize`]).
    pub fn parse(v: &Value) -> Result<Spec, String> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let name = s("name").unwrap_or_default();
        if v.get("consumer").is_some_and(|c| !c.is_null()) {
            // 2.14's sourcing through a pre-existing durable: not implemented, so refused
            // rather than ignored.
            return Err("sourcing through a given consumer is not supported".into());
        }
        if !util::valid_name(&name) {
            return Err("sourced stream name is invalid".into());
        }
        let filter = s("filter_subject").filter(|f| !f.is_empty());
        if filter
            .as_deref()
            .is_some_and(|f| !canopy_subject::is_valid_subject(f))
        {
            return Err(format!("source filter subject {filter:?} is invalid"));
        }
        let mut transforms = Vec::new();
        for t in v
            .get("subject_transforms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let src = t.get("src").and_then(Value::as_str).unwrap_or(">");
            let src = if src.is_empty() { ">" } else { src };
            let dest = t.get("dest").and_then(Value::as_str).unwrap_or("");
            if !canopy_subject::is_valid_subject(src) {
                return Err(format!("source transform source {src:?} is invalid"));
            }
            if !dest.is_empty() {
                Transform::new(src, dest).map_err(|e| format!("source transform: {e}"))?;
            }
            transforms.push((src.to_string(), dest.to_string()));
        }
        if filter.is_some() && !transforms.is_empty() {
            return Err("source filter subject and subject transforms are exclusive".into());
        }
        let external = v.get("external").filter(|e| e.is_object()).cloned();
        let ext = |k: &str| {
            external
                .as_ref()
                .and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .map(|p| p.trim_end_matches('.').to_string())
                .filter(|p| !p.is_empty())
        };
        let api = ext("api").unwrap_or_else(|| "$JS.API".to_string());
        let deliver_prefix = ext("deliver");
        for p in std::iter::once(&api).chain(deliver_prefix.as_ref()) {
            if !canopy_subject::is_valid_literal_subject(p) {
                return Err(format!("external prefix {p:?} is invalid"));
            }
        }
        let mut iname = name.clone();
        if external.is_some() {
            iname = format!("{iname}:{:08x}", fnv(api.as_bytes()) as u32);
        }
        let (fs, ds) = if transforms.is_empty() {
            (filter.clone().unwrap_or_else(|| ">".into()), ">".into())
        } else {
            let f: Vec<&str> = transforms.iter().map(|t| t.0.as_str()).collect();
            let d: Vec<&str> = transforms
                .iter()
                .map(|t| if t.1.is_empty() { ">" } else { t.1.as_str() })
                .collect();
            (f.join("\x0c"), d.join("\x0c"))
        };
        let iname = format!("{iname} {fs} {ds}");
        Ok(Spec {
            name,
            opt_start_seq: v.get("opt_start_seq").and_then(Value::as_u64).unwrap_or(0),
            opt_start_time: s("opt_start_time").filter(|t| !t.is_empty()),
            filter,
            transforms,
            api,
            deliver_prefix,
            external,
            iname,
        })
    }

    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// The filters the origin's consumer uses.
    fn filters(&self) -> Vec<String> {
        match &self.filter {
            Some(f) => vec![f.clone()],
            None => self.transforms.iter().map(|t| t.0.clone()).collect(),
        }
    }

    /// `<api>.<rest>`.
    fn api(&self, rest: &str) -> String {
        format!("{}.{rest}", self.api)
    }
}

/// The Canopy sugar `domain: X` (on `mirror` and each source) becomes
/// `external: {api: "$JS.X.API"}`, as async-nats does on the client side.
pub(crate) fn normalize(v: &mut Value) -> Result<(), String> {
    let Some(o) = v.as_object_mut() else {
        return Err("stream source must be an object".into());
    };
    if let Some(d) = o.remove("domain") {
        let d = d.as_str().unwrap_or("");
        if d.is_empty() {
            return Ok(());
        }
        if !util::valid_name(d) {
            return Err(format!("source domain {d:?} is invalid"));
        }
        if o.get("external").is_some_and(|e| !e.is_null()) {
            return Err("source domain and external are exclusive".into());
        }
        o.insert("external".into(), json!({"api": format!("$JS.{d}.API")}));
    }
    Ok(())
}

/// 64-bit FNV-1a (stable names and index names; not a security boundary).
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting until then to try again.
    Wait(Instant),
    /// A request of the attempt is out (stream info or consumer create), due by then.
    Asking(Instant),
    /// The consumer exists; deliveries flow.
    Active,
}

/// One origin's state.
pub(crate) struct Source {
    pub spec: Spec,
    pub mirror: bool,
    /// The last origin sequence stored here.
    pub sseq: u64,
    /// The origin's identity as last seen (`None`: not known).
    pub ident: Option<String>,
    /// The last delivery sequence of the current consumer.
    dseq: u64,
    /// Attempt number: replies and deliveries of older attempts are ignored.
    gen: u64,
    phase: Phase,
    fails: u32,
    sub: Option<crate::host::SubId>,
    /// A durable consumer with explicit acks (work-queue and interest origins).
    durable: bool,
    durable_name: Option<String>,
    last_contact_ns: i64,
    last_contact: Option<Instant>,
    lag: u64,
    err: Option<String>,
    trs: Vec<(String, Option<Transform>)>,
    /// The position or identity changed since `sources.json` was written.
    dirty: bool,
    /// Heartbeats in a row saying the origin waits for a flow-control reply.
    fc_stalls: u32,
    /// This stream's sequence of the newest message stored from this source (0: none
    /// in this run).
    at: u64,
    /// A replicated stream's leader: the newest origin sequence handed to the proposal
    /// queue and not yet applied (0: none). Deliveries at or below it are not queued again.
    queued: u64,
}

impl Source {
    pub fn new(spec: Spec, mirror: bool) -> Source {
        let trs = spec
            .transforms
            .iter()
            .map(|(s, d)| {
                let t = (!d.is_empty()).then(|| Transform::new(s, d).ok()).flatten();
                (s.clone(), t)
            })
            .collect();
        Source {
            spec,
            mirror,
            sseq: 0,
            ident: None,
            dseq: 0,
            gen: 0,
            phase: Phase::Wait(Instant::now()),
            fails: 0,
            sub: None,
            durable: false,
            durable_name: None,
            last_contact_ns: 0,
            last_contact: None,
            lag: 0,
            err: None,
            trs,
            dirty: false,
            fc_stalls: 0,
            at: 0,
            queued: 0,
        }
    }

    /// The subject a sourced message is stored under (`subject_transforms`).
    fn transform(&self, subject: &str) -> String {
        for (src, tr) in &self.trs {
            if canopy_subject::subject_matches(src, subject) {
                return match tr.as_ref().map(|t| t.apply(subject)) {
                    Some(Ok(s)) => s.into_owned(),
                    _ => subject.to_string(),
                };
            }
        }
        subject.to_string()
    }

    /// Stream info's `mirror` / `sources[i]` object.
    pub fn info(&self) -> Value {
        let active = match self.last_contact_ns {
            0 => -1,
            t => (now_ns() - t).max(0),
        };
        let mut v = json!({"name": self.spec.name, "lag": self.lag, "active": active});
        if let Some(o) = v.as_object_mut() {
            if let Some(e) = &self.spec.external {
                o.insert("external".into(), e.clone());
            }
            if let Some(f) = &self.spec.filter {
                o.insert("filter_subject".into(), json!(f));
            }
            if !self.spec.transforms.is_empty() {
                let t: Vec<Value> = self
                    .spec
                    .transforms
                    .iter()
                    .map(|(s, d)| json!({"src": s, "dest": d}))
                    .collect();
                o.insert("subject_transforms".into(), json!(t));
            }
            if let Some(e) = &self.err {
                let code = if self.mirror { 10029 } else { 10045 };
                o.insert(
                    "error".into(),
                    json!({"code": 500, "err_code": code, "description": e}),
                );
            }
        }
        v
    }

    fn backoff(&self) -> Duration {
        let exp = RETRY_MIN.saturating_mul(1u32 << self.fails.min(8));
        let jitter = rand::thread_rng().gen_range(0..RETRY_MIN.as_millis() as u64);
        exp.min(RETRY_MAX) + Duration::from_millis(jitter)
    }
}

/// The ack reply's `(sseq, dseq, dc, ts, pending)`: `$JS.ACK.<stream>.<consumer>.<dc>.<sseq>.
/// <dseq>.<ts>.<pending>` or the longer form with domain and account hash first.
fn ack_info(reply: &str) -> Option<(u64, u64, u64, i64, u64)> {
    let t: Vec<&str> = reply.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let o = if t.len() >= 12 { 4 } else { 2 };
    let n = |i: usize| t.get(o + i).and_then(|s| s.parse::<u64>().ok());
    Some((n(3)?, n(4)?, n(2)?, n(5)? as i64, n(6)?))
}

/// A source's position as written to `sources.json` next to the stream's store.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Saved {
    /// The last origin sequence stored.
    seq: u64,
    ident: Option<String>,
    /// The stream's own last sequence when this was written (which of the file and the
    /// newest `Nats-Stream-Source` header is newer).
    at: u64,
}

fn saved_path(core: &StreamCore) -> Option<std::path::PathBuf> {
    core.dir.as_ref().map(|d| d.join("sources.json"))
}

/// A stored message's `Nats-Stream-Source` header, as this stream reads it back:
/// `<origin> <origin seq> <filters> <destinations> <original subject> [<identity>]`.
struct SourceHeader<'a> {
    /// The source's identity in `Spec::iname` form: `<origin> <filters> <destinations>`.
    key: [&'a str; 3],
    sseq: Option<u64>,
    ident: Option<&'a str>,
}

impl<'a> SourceHeader<'a> {
    /// The header of a stored message's header block, when it has one that parses.
    fn of(hdr: &'a [u8]) -> Option<SourceHeader<'a>> {
        let mut f = header(hdr, "Nats-Stream-Source")?.split(' ');
        let (origin, sseq, filters, dests) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let ident = f.nth(1);
        Some(SourceHeader {
            key: [origin, filters, dests],
            sseq: sseq.parse().ok(),
            ident,
        })
    }

    /// Is it from `spec`'s source (compared without building the name)?
    fn is_from(&self, spec: &Spec) -> bool {
        let mut parts = spec.iname.splitn(3, ' ');
        self.key.iter().all(|k| parts.next() == Some(*k))
    }
}

/// Recovers each source's position: a mirror's is the stream's last sequence; a source's
/// is the newer of its newest `Nats-Stream-Source` header (bounded scan backwards) and
/// `sources.json`, written when positions change (at most once per stream tick) and at
/// close. The file keeps positions whose messages are gone from the stream (a work-queue
/// or size-limited sourcing stream) and each origin's identity.
pub(crate) fn recover(core: &mut StreamCore) {
    let last = core.store.totals().last_seq;
    let saved: std::collections::HashMap<String, Saved> = saved_path(core)
        .and_then(|p| crate::engine::read_json(&p))
        .unwrap_or_default();
    let mut found: Vec<Option<u64>> = vec![None; core.sources.len()];
    let mut missing = core.sources.iter().filter(|s| !s.mirror).count();
    let mut seq = last;
    for _ in 0..SCAN_LIMIT {
        if missing == 0 || seq == 0 {
            break;
        }
        let Ok(Some(m)) = core.store.load_prev_matching(">", seq) else {
            break;
        };
        seq = m.seq.saturating_sub(1);
        let Some(h) = SourceHeader::of(m.headers()) else {
            continue;
        };
        let Some(k) = core
            .sources
            .iter()
            .enumerate()
            .position(|(k, s)| h.is_from(&s.spec) && found[k].is_none())
        else {
            continue;
        };
        found[k] = Some(m.seq);
        core.sources[k].sseq = h.sseq.unwrap_or(0);
        core.sources[k].ident = h.ident.map(str::to_string);
        missing -= 1;
    }
    for (k, s) in core.sources.iter_mut().enumerate() {
        let file = saved.get(&s.spec.iname);
        if s.mirror {
            s.sseq = last;
            s.ident = file.and_then(|f| f.ident.clone());
        } else if let Some(f) = file.filter(|f| found[k].is_none_or(|at| f.at >= at)) {
            s.sseq = f.seq;
            s.ident = f.ident.clone();
        }
    }
}

impl StreamCore {
    /// A replicated origin identity (`Op::SourceIdent`, or a snapshot's): recorded by
    /// every member, so that whoever leads next compares the origin with it.
    pub(crate) fn source_ident_applied(&mut self, source: &str, ident: String) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.spec.iname == source) {
            if s.ident.as_deref() != Some(ident.as_str()) {
                s.ident = Some(ident);
                s.dirty = true;
            }
        }
    }

    /// Before retention removes `seqs`: saves the positions if one of them holds a source's
    /// newest header (else the headers still tell).
    pub(crate) fn sources_save_before_removing(&mut self, seqs: &[u64]) {
        if self
            .sources
            .iter()
            .any(|s| !s.mirror && s.dirty && (s.at == 0 || seqs.contains(&s.at)))
        {
            self.sources_save();
        }
    }

    /// Writes `sources.json` when a position or identity changed since the last write.
    pub(crate) fn sources_save(&mut self) {
        if !self.sources.iter().any(|s| s.dirty) {
            return;
        }
        let Some(p) = saved_path(self) else {
            return;
        };
        let at = self.store.totals().last_seq;
        let map: std::collections::HashMap<&str, Saved> = self
            .sources
            .iter()
            .map(|s| {
                let v = Saved {
                    seq: s.sseq,
                    ident: s.ident.clone(),
                    at,
                };
                (s.spec.iname.as_str(), v)
            })
            .collect();
        // Written often (retention removals): no fsync, like the store's own appends.
        match crate::engine::write_json_with(&p, &map, false) {
            Ok(()) => self.sources.iter_mut().for_each(|s| s.dirty = false),
            Err(e) => tracing::warn!(stream = %self.name, "JetStream: {}: {e}", p.display()),
        }
    }
}

/// Builds the sources of a configuration (entries that do not parse were refused when the
/// config was accepted; they are logged and left out here).
pub(crate) fn build(core: &StreamCore) -> Vec<Source> {
    let cfg = &core.cfg;
    let entries = cfg
        .mirror
        .iter()
        .map(|m| (m, true))
        .chain(cfg.sources.iter().flatten().map(|s| (s, false)));
    entries
        .filter_map(|(v, mirror)| match Spec::parse(v) {
            Ok(s) => Some(Source::new(s, mirror)),
            Err(e) => {
                tracing::error!(stream = %core.name, "JetStream source: {e}");
                None
            }
        })
        .collect()
}

impl StreamCore {
    /// Starts or restarts the sources after a configuration change, keeping the position
    /// of those that stay.
    pub(crate) fn sources_configure(&mut self) {
        let mut new = build(self);
        for s in &mut new {
            if let Some(old) = self.sources.iter().find(|o| o.spec.iname == s.spec.iname) {
                s.sseq = old.sseq;
                s.ident = old.ident.clone();
            }
        }
        self.sources_stop();
        let recovered = self.sources.is_empty();
        self.sources = new;
        if recovered {
            recover(self);
        }
    }

    /// Stops every source's subscription (their origin consumers time out or, durable,
    /// wait for us).
    pub(crate) fn sources_stop(&mut self) {
        for i in 0..self.sources.len() {
            self.source_cancel(i);
        }
    }

    /// The stream is deleted: durable sourcing consumers are deleted on their origins.
    pub(crate) fn sources_delete_remote(&mut self) {
        for (i, s) in self.sources.iter().enumerate() {
            if s.mirror {
                continue;
            }
            // Asked even when this run has not learned the origin's retention yet: the
            // name is stable, and a limits origin answers "not found".
            let d = s
                .durable_name
                .clone()
                .unwrap_or_else(|| format!("JS_SRC_{}", self.source_hash(i)));
            let subj = s.spec.api(&format!("CONSUMER.DELETE.{}.{d}", s.spec.name));
            self.host.request(
                &self.account,
                &subj,
                None,
                b"",
                REQUEST_TIMEOUT,
                Box::new(|_| {}),
            );
        }
    }

    fn source_cancel(&mut self, i: usize) {
        let Some(s) = self.sources.get_mut(i) else {
            return;
        };
        s.gen += 1;
        s.dseq = 0;
        if let Some(id) = s.sub.take() {
            self.host.unsubscribe(id);
        }
    }

    /// Ends the current attempt; the next comes after the backoff when `count` (a failure),
    /// else at once (a restart with a new position).
    fn source_retry(&mut self, i: usize, err: Option<String>, count: bool) {
        self.source_cancel(i);
        let Some(s) = self.sources.get_mut(i) else {
            return;
        };
        if let Some(e) = &err {
            if s.err.as_ref() != Some(e) {
                tracing::warn!(stream = %self.name, source = %s.spec.name, "JetStream source: {e}");
            }
        }
        s.err = err;
        if count {
            s.fails = s.fails.saturating_add(1);
        }
        s.phase = Phase::Wait(Instant::now() + if count { s.backoff() } else { Duration::ZERO });
    }

    /// When the sources' timers next have work.
    pub(crate) fn sources_next(&self, now: Instant) -> Option<Instant> {
        if !crate::replica::delivers(self) {
            // A replicated stream's follower: its leader sources.
            return None;
        }
        self.sources
            .iter()
            .map(|s| match s.phase {
                Phase::Wait(at) | Phase::Asking(at) => at,
                Phase::Active => s.last_contact.map_or(now, |t| t + HEALTH),
            })
            .min()
    }

    /// The sources' timers: start due attempts, time out requests, detect stalls.
    pub(crate) fn sources_tick(&mut self, now: Instant) {
        if !crate::replica::delivers(self) {
            return;
        }
        for i in 0..self.sources.len() {
            let s = &self.sources[i];
            match s.phase {
                Phase::Wait(at) if at <= now => {
                    let probe = s.spec.api(&format!("STREAM.INFO.{}", s.spec.name));
                    if !self.host.has_interest(&self.account, &probe) {
                        // The origin's API is out of reach (a leaf link is down): look
                        // again soon, cheaply, and ask as soon as it is back.
                        let err = format!("no responders for {}", s.spec.api);
                        self.sources[i].phase = Phase::Wait(now + RETRY_MIN);
                        if self.sources[i].err.is_none() {
                            self.sources[i].err = Some(err);
                        }
                        continue;
                    }
                    self.source_start(i, probe);
                }
                Phase::Asking(at) if at <= now => {
                    self.source_retry(i, Some("sourcing consumer setup timed out".into()), true);
                }
                Phase::Active if s.last_contact.is_some_and(|t| now >= t + HEALTH) => {
                    self.source_retry(
                        i,
                        Some("stalled: no heartbeat from the origin".into()),
                        true,
                    );
                }
                _ => {}
            }
        }
    }

    /// A new attempt: ask for the origin's stream info.
    fn source_start(&mut self, i: usize, subject: String) {
        self.source_cancel(i);
        let s = &mut self.sources[i];
        s.phase = Phase::Asking(Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1));
        let gen = s.gen;
        let done = post_reply(self, move |c, r| c.source_info_reply(i, gen, r));
        self.host
            .request(&self.account, &subject, None, b"", REQUEST_TIMEOUT, done);
    }

    fn source_info_reply(&mut self, i: usize, gen: u64, r: Option<JsMsg>) {
        if self.sources.get(i).is_none_or(|s| s.gen != gen) {
            return;
        }
        let v = match parse_reply(r) {
            Ok(v) => v,
            Err(e) => return self.source_retry(i, Some(e), true),
        };
        let retention = v
            .pointer("/config/retention")
            .and_then(Value::as_str)
            .unwrap_or("limits");
        let durable = retention != "limits" && !self.sources[i].mirror;
        self.source_create(i, durable);
    }

    /// A stable hash of (account, stream, source): the durable's name and deliver token.
    fn source_hash(&self, i: usize) -> String {
        let key = format!(
            "{} {} {}",
            self.account, self.name, self.sources[i].spec.iname
        );
        format!("{:016x}", fnv(key.as_bytes()))
    }

    /// Subscribes the deliver subject and asks the origin for the consumer.
    fn source_create(&mut self, i: usize, durable: bool) {
        let hash = self.source_hash(i);
        let s = &mut self.sources[i];
        s.durable = durable;
        let kind = if s.mirror { "M" } else { "S" };
        let token = if durable {
            hash.clone()
        } else {
            random_name(16)
        };
        let deliver = match &s.spec.deliver_prefix {
            Some(p) => format!("{p}.{kind}.{token}"),
            None => format!("$JS.{kind}.{token}"),
        };
        let gen = s.gen;
        let me = self.me.clone();
        let handler: crate::host::Handler = std::sync::Arc::new(move |m: JsMsg| {
            if let Some(h) = me.upgrade() {
                h.send(Cmd::Call(Box::new(move |c| c.source_msg(i, gen, m))));
            }
        });
        match self.host.subscribe(
            &self.account,
            &deliver,
            None,
            crate::host::Lane::Ingest,
            handler,
        ) {
            Ok(id) => self.sources[i].sub = Some(id),
            Err(e) => return self.source_retry(i, Some(e), true),
        }
        let s = &mut self.sources[i];
        let mut cfg = json!({
            "deliver_subject": deliver,
            "idle_heartbeat": HEARTBEAT,
            "flow_control": true,
            "metadata": {"_nats.src.stream": self.name, "_nats.src.acc": self.account.as_ref()},
        });
        let filters = s.spec.filters();
        let start = if s.sseq > 0 {
            Some(s.sseq + 1)
        } else {
            (s.spec.opt_start_seq > 0).then_some(s.spec.opt_start_seq)
        };
        let (subject, o) = (
            if durable {
                let name = format!("JS_SRC_{hash}");
                let subj = s
                    .spec
                    .api(&format!("CONSUMER.DURABLE.CREATE.{}.{name}", s.spec.name));
                s.durable_name = Some(name);
                subj
            } else {
                s.spec.api(&format!("CONSUMER.CREATE.{}", s.spec.name))
            },
            cfg.as_object_mut(),
        );
        let Some(o) = o else { return };
        if durable {
            // The same config on every attempt: a create finds the existing durable, whose
            // own state says what is left to deliver (work queues require `all`).
            o.insert("durable_name".into(), json!(s.durable_name));
            o.insert("deliver_policy".into(), json!("all"));
            o.insert("ack_policy".into(), json!("explicit"));
            o.insert("ack_wait".into(), json!(DURABLE_ACK_WAIT));
            o.insert("max_ack_pending".into(), json!(DURABLE_MAX_ACK_PENDING));
        } else {
            o.insert("ack_policy".into(), json!("none"));
            o.insert("max_deliver".into(), json!(1));
            o.insert("direct".into(), json!(true));
            o.insert("inactive_threshold".into(), json!(HEALTH.as_nanos() as i64));
            match (start, &s.spec.opt_start_time) {
                (Some(seq), _) => {
                    o.insert("deliver_policy".into(), json!("by_start_sequence"));
                    o.insert("opt_start_seq".into(), json!(seq));
                }
                (None, Some(t)) => {
                    o.insert("deliver_policy".into(), json!("by_start_time"));
                    o.insert("opt_start_time".into(), json!(t));
                }
                (None, None) => {
                    o.insert("deliver_policy".into(), json!("all"));
                }
            }
        }
        match filters.as_slice() {
            [] => {}
            [f] => {
                o.insert("filter_subject".into(), json!(f));
            }
            fs => {
                o.insert("filter_subjects".into(), json!(fs));
            }
        }
        let body = json!({"stream_name": s.spec.name, "config": cfg}).to_string();
        let hdr = s
            .ident
            .as_ref()
            .map(|id| util::add_headers(b"", &[("Nats-Stream-Identity", id.clone())]));
        let done = post_reply(self, move |c, r| c.source_create_reply(i, gen, r));
        self.host.request(
            &self.account,
            &subject,
            hdr.as_deref(),
            body.as_bytes(),
            REQUEST_TIMEOUT,
            done,
        );
    }

    fn source_create_reply(&mut self, i: usize, gen: u64, r: Option<JsMsg>) {
        if self.sources.get(i).is_none_or(|s| s.gen != gen) {
            return;
        }
        let ident = r
            .as_ref()
            .and_then(|m| m.headers.as_deref())
            .and_then(|h| header(h, "Nats-Stream-Identity"))
            .map(str::to_string);
        if let Err(e) = parse_reply(r) {
            return self.source_retry(i, Some(e), true);
        }
        let name = self.name.clone();
        let s = &mut self.sources[i];
        let mut retry = false;
        if let (Some(old), Some(new)) = (&s.ident, &ident) {
            if old != new {
                if s.mirror {
                    let e = "the mirrored stream was recreated (its identity changed); \
                             recreate the mirror to follow it"
                        .to_string();
                    self.source_retry(i, Some(e), true);
                    // Nothing will change by asking often: check again now and then.
                    self.sources[i].phase = Phase::Wait(Instant::now() + MIRROR_RECHECK);
                    return;
                }
                tracing::warn!(stream = %name, source = %s.spec.name,
                    "JetStream source: the origin stream was recreated, sourcing again from its sequence 1");
                s.sseq = 0;
                // A durable consumer on the new stream is new too and starts at its
                // sequence 1; an ephemeral one was asked to start after the old position.
                retry = !s.durable;
            }
        }
        if let Some(new) = ident.filter(|id| s.ident.as_ref() != Some(id)) {
            s.ident = Some(new.clone());
            s.dirty = true;
            let iname = s.spec.iname.clone();
            crate::replica::source_ident(self, &iname, &new);
        }
        if retry {
            return self.source_retry(i, None, false);
        }
        let s = &mut self.sources[i];
        s.phase = Phase::Active;
        s.fails = 0;
        s.err = None;
        s.last_contact = Some(Instant::now());
        s.last_contact_ns = now_ns();
    }

    /// A delivery, heartbeat or flow-control request on a source's deliver subject.
    fn source_msg(&mut self, i: usize, gen: u64, m: JsMsg) {
        let Some(s) = self.sources.get_mut(i).filter(|s| s.gen == gen) else {
            return;
        };
        s.last_contact = Some(Instant::now());
        s.last_contact_ns = now_ns();
        let hdr = m.headers.as_deref().unwrap_or(&[]);
        if m.payload.is_empty() && hdr.starts_with(b"NATS/1.0 100") {
            if let Some(r) = &m.reply {
                // Flow control: answering lets the origin send on.
                self.host.publish(&self.account, r, None, None, &[]);
                return;
            }
            if let Some(fc) = header(hdr, "Nats-Consumer-Stalled") {
                self.host.publish(&self.account, fc, None, None, &[]);
                // Answered, yet still stalled: our replies do not reach the origin.
                s.fc_stalls += 1;
                if s.fc_stalls == 2 {
                    let e = format!(
                        "flow control stalled: replies to {fc} do not reach the origin \
                         (is $JS.FC.> exported to this account, or denied on a link?)"
                    );
                    tracing::warn!(stream = %self.name, source = %s.spec.name, "JetStream source: {e}");
                    s.err = Some(e);
                }
            } else {
                s.fc_stalls = 0;
            }
            let last = header(hdr, "Nats-Last-Consumer").and_then(|v| v.parse::<u64>().ok());
            if !s.durable && last.is_some_and(|l| l != s.dseq) {
                // Something sent was never received: start again after what is stored
                // (counted, so that a repeating cause cannot make a storm of creates).
                return self.source_retry(i, None, true);
            }
            return;
        }
        let Some((sseq, dseq, dc, ts, pending)) = m.reply.as_deref().and_then(ack_info) else {
            return;
        };
        if s.fc_stalls > 0 {
            s.fc_stalls = 0;
            s.err = None;
        }
        if !s.durable {
            if dc > 1 {
                return;
            }
            if dseq != s.dseq + 1 {
                return self.source_retry(i, None, true);
            }
            s.dseq = dseq;
        } else if sseq > s.sseq + 1 && dc == 1 {
            // A first delivery past a hole: what is missing was lost on the way (it comes
            // back first, redelivered in sequence order) or is gone from the origin. Left
            // unacknowledged, this one comes back after `ack_wait`; a redelivery past a
            // hole is taken (the hole was a real gap).
            return;
        }
        s.lag = pending;
        if self.repl.is_some() {
            // A replicated stream: the message is stored by the group; a durable origin
            // hears the ack once the entry holding it is committed.
            let newer = sseq > s.sseq.max(s.queued);
            if newer {
                s.queued = sseq;
            }
            let durable = s.durable;
            if newer {
                let item = self.sourced_item(i, sseq, ts, m);
                crate::replica::queue_sourced(self, item);
            } else if durable {
                if let Some(r) = &m.reply {
                    self.host.publish(&self.account, r, None, None, b"+ACK");
                }
            }
            return;
        }
        if sseq > s.sseq {
            let ok = if s.mirror {
                self.store_mirrored(sseq, ts, &m)
            } else {
                self.store_sourced(i, sseq, &m)
            };
            if !ok {
                let e =
                    "could not store a sourced message (a limit of this stream, or a store error)"
                        .to_string();
                if self.sources[i].durable {
                    // Not acknowledged: the origin keeps it and sends it again.
                    self.sources[i].err = Some(e);
                } else {
                    self.source_retry(i, Some(e), true);
                }
                return;
            }
            self.sources[i].sseq = sseq;
            self.sources[i].dirty = true;
            if self.cfg.retention == crate::types::Retention::Interest && self.consumers.is_empty()
            {
                // Nobody wants it: it was removed as soon as it was stored, header and all.
                self.sources_save();
            }
        }
        if self.sources[i].durable {
            if let Some(r) = &m.reply {
                self.host.publish(&self.account, r, None, None, b"+ACK");
            }
        }
    }

    /// Stores a mirrored message under its origin sequence (skipping what the origin no
    /// longer has).
    fn store_mirrored(&mut self, sseq: u64, ts: i64, m: &JsMsg) -> bool {
        let last = self.store.totals().last_seq;
        if sseq <= last {
            return true;
        }
        if sseq > last + 1 {
            if let Err(e) = self.store.skip_msgs(last + 1, sseq - last - 1) {
                tracing::error!(stream = %self.name, "JetStream mirror: {e}");
                return false;
            }
        }
        let hdr = m.headers.as_deref().unwrap_or(&[]);
        let msg = canopy_store::NewMsg {
            subject: &m.subject,
            hdr,
            payload: &m.payload,
            ttl: None,
        };
        if let Err(e) = self.store.store_raw(sseq, ts, msg) {
            tracing::error!(stream = %self.name, "JetStream mirror: {e}");
            return false;
        }
        self.stored_sourced(&m.subject.clone());
        true
    }

    /// Stores a sourced message under the stream's own next sequence, with the
    /// `Nats-Stream-Source` header (`<origin> <origin seq> <filters> <destinations>
    /// <original subject> <origin identity>`).
    fn store_sourced(&mut self, i: usize, sseq: u64, m: &JsMsg) -> bool {
        let Some((subject, hdr)) = self.sourced_as(i, sseq, m) else {
            return true;
        };
        let before = self.store.totals().last_seq;
        self.commit_one(subject, hdr, m.payload.clone());
        let last = self.store.totals().last_seq;
        let ok = last > before;
        if ok {
            self.sources[i].at = last;
        }
        if ok {
            self.update_stats();
            self.drive_consumers();
        }
        ok
    }

    /// The subject and headers a sourced message is stored with: the source's transform,
    /// and the `Nats-Stream-Source` header (`<origin> <origin seq> <filters> <destinations>
    /// <original subject> <origin identity>`). `None`: not to be stored (it came from this
    /// stream in the first place: two streams sourcing each other would send it round for
    /// ever).
    fn sourced_as(&self, i: usize, sseq: u64, m: &JsMsg) -> Option<(String, Vec<u8>)> {
        let s = &self.sources[i];
        let from = m
            .headers
            .as_deref()
            .and_then(|h| header(h, "Nats-Stream-Source"))
            .and_then(|h| h.split([' ', ':']).next());
        if !s.spec.is_external() && from == Some(self.name.as_str()) {
            return None;
        }
        let subject = s.transform(&m.subject);
        let mut parts: Vec<&str> = s.spec.iname.splitn(3, ' ').collect();
        parts.resize(3, ">");
        let mut value = format!(
            "{} {sseq} {} {} {}",
            parts[0], parts[1], parts[2], m.subject
        );
        if let Some(id) = &s.ident {
            value.push(' ');
            value.push_str(id);
        }
        let hdr = util::strip_headers(m.headers.as_deref().unwrap_or(&[]), &["Nats-Stream-Source"]);
        Some((
            subject,
            util::add_headers(&hdr, &[("Nats-Stream-Source", value)]),
        ))
    }

    /// A delivery of source `i` as the replicated leader proposes it.
    fn sourced_item(&self, i: usize, sseq: u64, ts: i64, m: JsMsg) -> Sourced {
        let s = &self.sources[i];
        let ack = s.durable.then(|| m.reply.clone()).flatten();
        if s.mirror {
            return Sourced {
                source: i,
                sseq,
                mirror_ts: Some(ts),
                msg: Some((
                    m.subject,
                    m.headers.map(|h| h.to_vec()).unwrap_or_default(),
                    m.payload,
                )),
                ack,
            };
        }
        let msg = self
            .sourced_as(i, sseq, &m)
            .map(|(subject, hdr)| (subject, hdr, m.payload));
        Sourced {
            source: i,
            sseq,
            mirror_ts: None,
            msg,
            ack,
        }
    }

    /// Is a queued delivery still new against the applied positions (the leader prepares
    /// its entry: after a failed proposal the sources restart from the applied state, and
    /// the failed entry may still commit)?
    pub(crate) fn sourced_is_new(&self, item: &Sourced) -> bool {
        self.sources
            .get(item.source)
            .is_some_and(|s| item.sseq > s.sseq)
    }

    /// An applied message (replicated streams, every member): the source positions follow
    /// the stream's contents, so that a new leader sources on from where the group is.
    pub(crate) fn sourced_applied(&mut self, seq: u64, hdr: &[u8]) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.mirror) {
            s.sseq = s.sseq.max(seq);
            s.dirty = true;
            return;
        }
        let Some(h) = SourceHeader::of(hdr) else {
            return;
        };
        let Some(s) = self.sources.iter_mut().find(|s| h.is_from(&s.spec)) else {
            return;
        };
        if let Some(sseq) = h.sseq.filter(|&q| q > s.sseq) {
            s.sseq = sseq;
        }
        s.at = seq;
        if let Some(id) = h.ident {
            if s.ident.as_deref() != Some(id) {
                s.ident = Some(id.to_string());
            }
        }
        s.dirty = true;
    }

    /// Leadership of a replicated stream began (its no-op applied) or ended, or a
    /// proposal failed: every source starts again from the applied positions (a leader) or
    /// stops (a follower).
    pub(crate) fn sources_restart(&mut self) {
        let leads = crate::replica::delivers(self);
        for i in 0..self.sources.len() {
            self.sources[i].queued = 0;
            if leads {
                self.source_retry(i, None, false);
            } else {
                self.source_cancel(i);
                self.sources[i].phase = Phase::Wait(Instant::now());
            }
        }
    }

    /// Stream info's `mirror` and `sources`.
    pub(crate) fn sources_info(&self, v: &mut serde_json::Map<String, Value>) {
        if let Some(m) = self.sources.iter().find(|s| s.mirror) {
            v.insert("mirror".into(), m.info());
        } else if !self.sources.is_empty() {
            let list: Vec<Value> = self.sources.iter().map(Source::info).collect();
            v.insert("sources".into(), json!(list));
        }
    }
}

/// A [`crate::host::ReplyFn`] that hands the reply to the stream's thread.
fn post_reply(
    core: &StreamCore,
    f: impl FnOnce(&mut StreamCore, Option<JsMsg>) + Send + 'static,
) -> crate::host::ReplyFn {
    let me = core.me.clone();
    Box::new(move |r| {
        if let Some(h) = me.upgrade() {
            h.send(Cmd::Call(Box::new(move |c| f(c, r))));
        }
    })
}

/// An API reply's JSON, or its error's description.
fn parse_reply(r: Option<JsMsg>) -> Result<Value, String> {
    let m = r.ok_or_else(|| "no responders or no reply from the origin's API".to_string())?;
    let v: Value = serde_json::from_slice(&m.payload).map_err(|e| format!("bad API reply: {e}"))?;
    if let Some(e) = v.get("error") {
        let d = e
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("error");
        return Err(d.to_string());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_reply_forms() {
        assert_eq!(
            ack_info("$JS.ACK.S.C.1.5.3.1700.2"),
            Some((5, 3, 1, 1700, 2))
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.hash.S.C.2.9.8.1700.0.rnd"),
            Some((9, 8, 2, 1700, 0))
        );
        assert_eq!(ack_info("_INBOX.x"), None);
    }

    #[test]
    fn sugar_and_index_names() {
        let mut v = json!({"name": "ORDERS", "domain": "edge"});
        normalize(&mut v).expect("normalize");
        assert_eq!(v["external"]["api"], "$JS.edge.API");
        let s = Spec::parse(&v).expect("parse");
        assert_eq!(
            s.api("STREAM.INFO.ORDERS"),
            "$JS.edge.API.STREAM.INFO.ORDERS"
        );
        assert!(s.iname.starts_with("ORDERS:") && s.iname.ends_with(" > >"));
        let local = Spec::parse(&json!({"name": "A", "filter_subject": "a.>"})).expect("parse");
        assert_eq!(local.iname, "A a.> >");
        assert!(Spec::parse(&json!({"name": "a.b"})).is_err());
        assert!(Spec::parse(&json!({"name": "A", "consumer": {"name": "C"}})).is_err());
    }
}
