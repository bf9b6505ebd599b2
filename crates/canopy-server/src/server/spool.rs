//! Store-and-forward at the leaf (`reconnect_buffer_size`, docs/CONFIG.md and
//! docs/ARCHITECTURE.md, "Store-and-forward"): while a remote's link is down, what it would
//! have exported is appended to a per-remote canopy-store `FileStore`; when the link is back
//! the spool is replayed to the subjects the hub has interest in, in publish order, before
//! new traffic, batch by batch behind a PING barrier.
//!
//! Capture is a hook in [`crate::core::deliver::deliver`] (after local delivery, before the
//! link copies go out), taken only while an account has a spool capturing
//! ([`Account::spooling`]): one relaxed load otherwise. While a replay runs the link is
//! *held*: new messages go on into the spool (and not straight onto the link), so nothing
//! overtakes what was spooled. The capture decision and the hold are taken under the
//! spool's lock, and the replay switches capture off under that lock once it has read
//! everything, so each message is either spooled or forwarded live, never both.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use canopy_store::{
    Discard, FileStore, FileStoreOptions, MessageStore, NewMsg, StoreConfig, StoreError,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::core::account::Account;
use crate::core::conn::{CloseReason, ConnKind, ConnShared};
use crate::core::deliver::{Msg, Origin};
use crate::core::interest::{msg_allowed, LinkClass};

/// Messages and bytes sent between two PING barriers of a replay.
const BATCH_MSGS: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
/// Batches in flight (sent, PONG not received yet): the replay's pipeline depth, and the
/// most a crash in the middle of a replay can make the hub receive twice.
const WINDOW: usize = 4;
/// How often a spool is synced (when it took appends) or reopened (when it failed).
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);
/// How long a replay waits for the hub's PONG before giving the link up.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(30);

/// A spool's counters (since the server started).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Messages and bytes (store records) in the spool now.
    pub msgs: AtomicU64,
    pub bytes: AtomicU64,
    /// Messages appended.
    pub spooled: AtomicU64,
    /// Oldest messages discarded because the spool was full.
    pub dropped: AtomicU64,
    /// Messages sent to the hub by replays.
    pub replayed: AtomicU64,
    /// Messages dropped at replay: no interest on the hub.
    pub unwanted: AtomicU64,
    /// Requests dropped at replay: their reply subject has no subscriber any more.
    pub stale_replies: AtomicU64,
    /// Disk errors (open, append, compact).
    pub errors: AtomicU64,
}

impl SpoolStats {
    /// Counts a disk error; true when it should be logged (the first ten, then at powers
    /// of two: a failing disk must not flood the log).
    fn count_error(&self) -> bool {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        n < 10 || n.is_power_of_two()
    }
}

/// What one outage did, for the log line at the end of its replay.
#[derive(Default)]
struct Outage {
    spooled: u64,
    dropped: u64,
    replayed: u64,
    unwanted: u64,
    stale: u64,
    full_logged: bool,
}

struct Inner {
    store: Option<FileStore>,
    /// A write failed: the store refuses work until reopened ([`Spool::maintain`]).
    broken: bool,
    /// Appends since the last `sync()`.
    unsynced: u64,
    /// Messages are appended (the link is down, or held by a replay).
    capturing: bool,
    outage: Outage,
}

/// The spool of one leaf remote.
pub struct Spool {
    /// For logs: `leafnode remote [urls] (account X)`.
    pub label: String,
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Subjects never sent over this remote (`deny_exports`, JetStream's own subjects).
    deny: Vec<String>,
    /// The forwarding class of the remote's link ([`LinkClass`] as u8).
    class: AtomicU8,
    /// The connection a replay holds (0: none).
    held: AtomicU64,
    /// `Inner::capturing`, readable without the lock ([`refresh_spooling`]).
    active: AtomicBool,
    inner: Mutex<Inner>,
    pub stats: SpoolStats,
}

/// Opens the FileStore of a spool (byte limit, discard old). A failure is logged and
/// counted: the remote then has no spool until [`Spool::maintain`] opens it.
fn open_store(label: &str, dir: &Path, max_bytes: u64, stats: &SpoolStats) -> Option<FileStore> {
    let cfg = StoreConfig {
        max_bytes,
        discard: Discard::Old,
        ..Default::default()
    };
    match FileStore::open(dir, cfg, FileStoreOptions::default()) {
        Ok((store, report)) => {
            if report.truncated_bytes > 0 || !report.lost.is_empty() {
                tracing::warn!(
                    "{label}: spool {} recovered from damage: {} bytes of a torn write cut \
                     off, lost ranges {:?}",
                    dir.display(),
                    report.truncated_bytes,
                    report.lost
                );
            }
            Some(store)
        }
        Err(e) => {
            if stats.count_error() {
                tracing::error!(
                    "{label}: cannot open the spool {}: {e}; messages published while the \
                     link is down are not kept",
                    dir.display()
                );
            }
            None
        }
    }
}

/// The directory of one remote's spool: the account and URLs name it, so a restart with
/// the same configuration finds it again.
pub fn spool_dir(base: &Path, account: &str, urls: &[String]) -> PathBuf {
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in std::iter::once(account).chain(urls.iter().map(String::as_str)) {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let safe: String = account
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    base.join(format!("{safe}-{h:016x}"))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. A disk error is logged and counted: the
    /// remote then works without a spool. The spool starts capturing (no link yet).
    pub fn open(label: String, dir: PathBuf, max_bytes: u64, deny: Vec<String>) -> Arc<Spool> {
        let stats = SpoolStats::default();
        let store = open_store(&label, &dir, max_bytes, &stats);
        let sp = Spool {
            label,
            dir,
            max_bytes,
            deny,
            class: AtomicU8::new(LinkClass::Uplink as u8),
            held: AtomicU64::new(0),
            active: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                broken: store.is_none(),
                store,
                unsynced: 0,
                capturing: true,
                outage: Outage::default(),
            }),
            stats,
        };
        {
            let inner = sp.inner.lock();
            sp.refresh(&inner);
            let n = sp.stats.msgs.load(Ordering::Relaxed);
            if n > 0 {
                tracing::info!(
                    "{}: {n} messages ({} bytes) spooled before the restart wait for the hub",
                    sp.label,
                    sp.stats.bytes.load(Ordering::Relaxed)
                );
            }
        }
        Arc::new(sp)
    }

    fn refresh(&self, inner: &Inner) {
        if let Some(s) = &inner.store {
            let t = s.totals();
            self.stats.msgs.store(t.msgs, Ordering::Relaxed);
            self.stats.bytes.store(t.bytes, Ordering::Relaxed);
        }
    }

    fn disk_error(&self, op: &str, e: &dyn std::fmt::Display) {
        if self.stats.count_error() {
            let n = self.stats.errors.load(Ordering::Relaxed);
            tracing::error!("{}: spool {op} failed ({n} errors): {e}", self.label);
        }
    }

    /// Would this remote have forwarded the message (its class, its deny list)?
    fn exportable(&self, subject: &[u8], origin: &Origin<'_>) -> bool {
        let class = LinkClass::from_u8(self.class.load(Ordering::Relaxed));
        if origin.imported || !msg_allowed(origin.class, class) || subject.starts_with(b"$LDS.") {
            return false;
        }
        let s = std::str::from_utf8(subject).unwrap_or("");
        !self
            .deny
            .iter()
            .any(|d| canopy_subject::subject_matches(d, s))
    }

    /// Appends the message if the spool captures and the remote would export it. Returns
    /// the connection held by a replay (the message must not go onto it live), or 0.
    fn capture(&self, msg: &Msg<'_>, origin: &Origin<'_>) -> Option<u64> {
        let (subject, reply) = match &msg.link {
            Some(l) => (l.subject, l.reply),
            None => (msg.subject, msg.reply),
        };
        if !self.exportable(subject, origin) {
            return None;
        }
        let mut inner = self.inner.lock();
        if !inner.capturing {
            return None;
        }
        let held = self.held.load(Ordering::Relaxed);
        if inner.broken {
            return Some(held);
        }
        let Some(store) = inner.store.as_mut() else {
            return Some(held);
        };
        let (hdr, body) = match msg.hdr_len {
            Some(h) if h <= msg.payload.len() => msg.payload.split_at(h),
            _ => (&[][..], msg.payload),
        };
        let reply = reply.unwrap_or(b"");
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return Some(held);
        };
        let mut payload = Vec::with_capacity(2 + reply.len() + body.len());
        payload.extend_from_slice(&reply_len.to_le_bytes());
        payload.extend_from_slice(reply);
        payload.extend_from_slice(body);
        let subject = std::str::from_utf8(subject).unwrap_or("");
        let before = store.totals().msgs;
        match store.store_msg(NewMsg {
            subject,
            hdr,
            payload: &payload,
            ttl: None,
        }) {
            Ok(_) => {
                let after = store.totals().msgs;
                self.stats.spooled.fetch_add(1, Ordering::Relaxed);
                inner.outage.spooled += 1;
                let dropped = (before + 1).saturating_sub(after);
                if dropped > 0 {
                    self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
                    inner.outage.dropped += dropped;
                    if !inner.outage.full_logged {
                        inner.outage.full_logged = true;
                        tracing::warn!(
                            "{}: spool full ({} bytes): discarding the oldest messages",
                            self.label,
                            self.max_bytes
                        );
                    }
                }
                inner.unsynced += 1;
                self.refresh(&inner);
            }
            Err(StoreError::MaxBytes | StoreError::MaxMsgSize { .. }) => {
                // Larger than the whole spool: discarded like the oldest would be.
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                inner.outage.dropped += 1;
            }
            Err(e) => {
                self.disk_error("append", &e);
                inner.broken |= matches!(
                    e,
                    StoreError::Io { .. } | StoreError::Failed(_) | StoreError::Corrupt { .. }
                );
            }
        }
        Some(held)
    }

    /// The link is down (or not up yet): capture again.
    pub fn link_down(&self, acc: &Account) {
        {
            let mut inner = self.inner.lock();
            if !inner.capturing {
                inner.capturing = true;
                self.active.store(true, Ordering::Relaxed);
                tracing::info!(
                    "{}: link down, spooling messages for the hub in {} (up to {} bytes)",
                    self.label,
                    self.dir.display(),
                    self.max_bytes
                );
            }
        }
        refresh_spooling(acc);
    }

    /// A link came up: hold it (new messages keep going into the spool) until the replay
    /// has sent what was spooled.
    pub fn link_up(&self, conn: &ConnShared, class: LinkClass) {
        let _inner = self.inner.lock();
        self.class.store(class as u8, Ordering::Relaxed);
        self.held.store(conn.cid, Ordering::Relaxed);
    }

    /// Runs until `stop`: every [`MAINTAIN_EVERY`], reopens a spool whose store failed (the
    /// store refuses work after a failed write; reopening recovers its tail) and syncs one
    /// that took appends (fsync, so a power loss loses at most that interval).
    pub async fn maintain(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
            }
            let mut inner = self.inner.lock();
            if inner.broken {
                // Close what is left first: the directory lock is ours.
                inner.store = None;
                inner.store = open_store(&self.label, &self.dir, self.max_bytes, &self.stats);
                inner.broken = inner.store.is_none();
                if !inner.broken {
                    tracing::info!("{}: spool {} reopened", self.label, self.dir.display());
                    self.refresh(&inner);
                }
            } else if inner.unsynced > 0 {
                inner.unsynced = 0;
                if let Some(Err(e)) = inner.store.as_mut().map(|s| s.sync()) {
                    self.disk_error("sync", &e);
                    inner.broken = true;
                }
            }
        }
    }

    /// `/leafz` `canopy_remotes[].spool`.
    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let capturing = self.inner.lock().capturing;
        json!({
            "dir": self.dir.display().to_string(),
            "max_bytes": self.max_bytes,
            "spooling": capturing,
            "msgs": s.msgs.load(Ordering::Relaxed),
            "bytes": s.bytes.load(Ordering::Relaxed),
            "spooled": s.spooled.load(Ordering::Relaxed),
            "dropped": s.dropped.load(Ordering::Relaxed),
            "replayed": s.replayed.load(Ordering::Relaxed),
            "unwanted": s.unwanted.load(Ordering::Relaxed),
            "stale_replies": s.stale_replies.load(Ordering::Relaxed),
            "errors": s.errors.load(Ordering::Relaxed),
        })
    }

    /// Replays the spool over `conn` once the hub's interest is known: a PING barrier first
    /// (the hub sends its LS+ burst before answering it), then batches in sequence order,
    /// each followed by a PING; up to [`WINDOW`] batches are in flight, and when a batch's
    /// PONG arrives the acknowledged prefix is compacted away. When a read finds nothing
    /// left, capture stops under the lock and live traffic flows.
    pub async fn replay(self: Arc<Self>, acc: Arc<Account>, conn: Arc<ConnShared>) {
        if !conn.ping_barrier(BARRIER_TIMEOUT).await {
            return;
        }
        // Never more than the link's outbound bound in flight (it would close the link).
        let batch_bytes = (conn.max_pending() / (WINDOW + 1)).clamp(4096, BATCH_BYTES);
        // Batches sent and not acknowledged yet: (PING number, first sequence after it).
        let mut in_flight: VecDeque<(u64, u64)> = VecDeque::with_capacity(WINDOW);
        let mut batch: Vec<canopy_store::StoredMsg> = Vec::with_capacity(BATCH_MSGS);
        let mut next = 0u64;
        loop {
            if in_flight.len() >= WINDOW {
                if let Some((ping, upto)) = in_flight.pop_front() {
                    if !self.acknowledged(&conn, ping, upto).await {
                        return;
                    }
                }
            }
            let done = {
                let mut inner = self.inner.lock();
                if self.held.load(Ordering::Relaxed) != conn.cid || conn.is_closed() {
                    return;
                }
                match inner.store.as_ref().filter(|_| !inner.broken) {
                    Some(store) => {
                        next = next.max(store.totals().first_seq);
                        self.read_batch(store, &mut next, batch_bytes, &mut batch);
                    }
                    None => batch.clear(),
                }
                if batch.is_empty() {
                    self.finish(&mut inner);
                    true
                } else {
                    for m in &batch {
                        match self.send(&acc, &conn, m) {
                            Sent::Yes => inner.outage.replayed += 1,
                            Sent::Unwanted => inner.outage.unwanted += 1,
                            Sent::StaleReply => inner.outage.stale += 1,
                        }
                    }
                    false
                }
            };
            if done {
                refresh_spooling(&acc);
                for (ping, upto) in in_flight.drain(..) {
                    if !self.acknowledged(&conn, ping, upto).await {
                        return;
                    }
                }
                return;
            }
            batch.clear();
            let Some(ping) = conn.queue_ping() else {
                return;
            };
            in_flight.push_back((ping, next));
        }
    }

    /// Reads the next batch from `next` (at most [`BATCH_MSGS`] messages or `max_bytes`).
    fn read_batch(
        &self,
        store: &FileStore,
        next: &mut u64,
        max_bytes: usize,
        batch: &mut Vec<canopy_store::StoredMsg>,
    ) {
        let mut bytes = 0;
        while batch.len() < BATCH_MSGS && bytes < max_bytes {
            match store.load_next_matching(">", *next) {
                Ok(Some(m)) => {
                    *next = m.seq + 1;
                    bytes += m.size() as usize;
                    batch.push(m);
                }
                Ok(None) => break,
                Err(e) => {
                    self.disk_error("read", &e);
                    break;
                }
            }
        }
    }

    /// Waits for the PONG of a batch, then compacts the spool up to it. False when the
    /// link is gone (or silent: it is then closed, and the next link replays again).
    async fn acknowledged(&self, conn: &ConnShared, ping: u64, upto: u64) -> bool {
        if !conn.wait_pong(ping, BARRIER_TIMEOUT).await {
            if !conn.is_closed() {
                conn.close(CloseReason::Other(
                    "no PONG from the hub during the spool replay".into(),
                ));
            }
            return false;
        }
        let mut inner = self.inner.lock();
        if let Some(store) = inner.store.as_mut() {
            if let Err(e) = store.compact(upto) {
                self.disk_error("compact", &e);
                inner.broken = true;
            }
        }
        self.refresh(&inner);
        true
    }

    /// Capture stops: the link carries live traffic from now on.
    fn finish(&self, inner: &mut Inner) {
        inner.capturing = false;
        self.active.store(false, Ordering::Relaxed);
        self.held.store(0, Ordering::Relaxed);
        inner.unsynced = 0;
        if let Some(store) = inner.store.as_mut() {
            if let Err(e) = store.sync() {
                self.disk_error("sync", &e);
            }
        }
        self.refresh(inner);
        let o = std::mem::take(&mut inner.outage);
        self.stats.replayed.fetch_add(o.replayed, Ordering::Relaxed);
        self.stats.unwanted.fetch_add(o.unwanted, Ordering::Relaxed);
        self.stats
            .stale_replies
            .fetch_add(o.stale, Ordering::Relaxed);
        tracing::info!(
            "{}: spool replayed: {} spooled, {} sent to the hub, {} without interest there, \
             {} with a stale reply, {} discarded while the spool was full",
            self.label,
            o.spooled,
            o.replayed,
            o.unwanted,
            o.stale,
            o.dropped
        );
    }

    /// Sends one spooled message if the hub has interest in it now.
    fn send(&self, acc: &Account, conn: &ConnShared, m: &canopy_store::StoredMsg) -> Sent {
        let subject = m.subject();
        let raw = m.payload();
        let Some((len, rest)) = raw.split_first_chunk::<2>() else {
            return Sent::Unwanted;
        };
        let reply_len = usize::from(u16::from_le_bytes(*len));
        if rest.len() < reply_len {
            return Sent::Unwanted;
        }
        let (reply, body) = rest.split_at(reply_len);
        if let Some(deny) = conn.deny_send.get() {
            if deny
                .iter()
                .any(|d| canopy_subject::subject_matches(d, subject))
            {
                return Sent::Unwanted;
            }
        }
        let result = acc.sublist.matches(subject);
        let plain = result.psubs.iter().any(|s| s.conn.cid == conn.cid);
        // A group with a member here served the message when it was published (local
        // members are preferred): the hub's members of that group do not get it again.
        let queues: Vec<&str> = result
            .qsubs
            .iter()
            .filter(|g| {
                g.members.iter().any(|s| s.conn.cid == conn.cid)
                    && !g.members.iter().any(|s| s.conn.kind == ConnKind::Client)
            })
            .map(|g| g.name.as_ref())
            .collect();
        if !plain && queues.is_empty() {
            return Sent::Unwanted;
        }
        let reply = (!reply.is_empty()).then_some(reply);
        if let Some(r) = reply {
            // A request whose requester has gone (no subscriber on its reply subject but
            // the hub itself) would only produce an answer nobody reads.
            let alive = std::str::from_utf8(r).is_ok_and(|r| {
                let res = acc.sublist.matches(r);
                res.psubs.iter().any(|s| s.conn.cid != conn.cid)
                    || res
                        .qsubs
                        .iter()
                        .any(|g| g.members.iter().any(|s| s.conn.cid != conn.cid))
            });
            if !alive {
                return Sent::StaleReply;
            }
        }
        let hdr = m.headers();
        let joined;
        let (hdr_len, payload) = if hdr.is_empty() {
            (None, body)
        } else {
            joined = [hdr, body].concat();
            (Some(hdr.len()), &joined[..])
        };
        let queues = if plain { Vec::new() } else { queues };
        let ok = conn.enqueue(|b| {
            canopy_proto::encode_lmsg(
                b,
                subject.as_bytes(),
                reply,
                queues.iter().map(|q| q.as_bytes()),
                hdr_len,
                payload,
            )
        });
        if ok {
            conn.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
            conn.stats
                .out_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        Sent::Yes
    }
}

enum Sent {
    Yes,
    Unwanted,
    StaleReply,
}

/// Sets [`Account::spooling`] from its spools' `active` flags. Called after a flag changed,
/// with no spool lock held (the capture hook takes the account's list, then a spool's
/// lock); the write lock serializes the recomputations, so the last one sees every flag.
pub fn refresh_spooling(acc: &Account) {
    let spools = acc.spools.write();
    let any = spools.iter().any(|s| s.active.load(Ordering::Relaxed));
    acc.spooling.store(any, Ordering::Relaxed);
}

/// The capture hook of [`crate::core::deliver::deliver`] (called only while
/// [`Account::spooling`]): offers the message to the account's spools and collects the
/// connections held by replays in `held`.
pub fn capture(acc: &Account, msg: &Msg<'_>, origin: &Origin<'_>, held: &mut Vec<u64>) {
    for sp in acc.spools.read().iter() {
        if let Some(cid) = sp.capture(msg, origin) {
            if cid != 0 {
                held.push(cid);
            }
        }
    }
}
