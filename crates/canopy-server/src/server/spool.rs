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
/// Batches in flight (sent, PONG not received yet): the replay's pipeline depth. A Canopy
/// hub records how far it got ([`Marks`]), so a replay that was cut off resumes exactly
/// there; a Go hub cannot, and gets one batch in flight (the most it can receive twice).
const WINDOW: usize = 4;
const WINDOW_GO_HUB: usize = 1;
/// Control subjects between a Canopy leaf and a Canopy hub (never delivered, never sent to
/// a Go hub): `$LSPOOL.M.<epoch>.<seq>` (leaf → hub: the replay sent everything up to
/// `seq`), `$LSPOOL.Q.<epoch>` (leaf → hub: how far did you get?) and
/// `$LSPOOL.A.<epoch>.<seq>` (hub → leaf: the answer, 0 when unknown).
pub const CONTROL_PREFIX: &str = "$LSPOOL.";
/// Marks a hub server keeps (oldest forgotten first).
const MAX_MARKS: usize = 65_536;
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
    /// Messages a replay skipped because the hub had them already (a replay cut off after
    /// the hub got a batch and before its PONG reached us).
    pub resumed_skipped: AtomicU64,
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
    /// The spool's epoch: a random id naming its sequence space in hub marks. A new one is
    /// drawn whenever the store is (re)opened empty, since only then could sequences start
    /// over.
    epoch: String,
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
    /// The hub's answer to `$LSPOOL.Q`: (connection, sequence).
    hub_mark: Mutex<Option<(u64, u64)>>,
    /// The link's peer is a Canopy server (it keeps marks).
    canopy_hub: AtomicBool,
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

/// The epoch of a freshly opened store: the one on disk while the store holds messages
/// (their sequences go on), a new one (written before use) when it is empty.
fn load_epoch(label: &str, dir: &Path, store: Option<&FileStore>) -> String {
    let path = dir.with_extension("epoch");
    let empty = store.is_none_or(|s| s.totals().msgs == 0);
    if !empty {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let id = text.trim();
            if valid_epoch(id) {
                return id.to_string();
            }
        }
    }
    let id = format!("{:032x}", rand::random::<u128>());
    if let Err(e) = write_epoch(&path, &id) {
        // Without the file a restart draws a new epoch: only dedupe is lost, not data.
        tracing::warn!("{label}: cannot write {}: {e}", path.display());
    }
    id
}

fn write_epoch(path: &Path, id: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("epoch.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, id.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// An epoch as [`load_epoch`] draws it: 32 lowercase hex digits.
pub fn valid_epoch(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a hub server knows of the replays it received: per spool epoch, the last sequence
/// of that spool the hub took in, and the leaf link counting it. Sequences come from the
/// batch lists (`$LSPOOL.B`), counted off message by message as the link's reader hands
/// each replayed message on, and from the end-of-batch marks (`$LSPOOL.M`). Shared with the
/// other members of the hub's cluster through the system account, so a leaf that
/// reconnects elsewhere in the cluster resumes as precisely. Bounded: the oldest mark goes
/// first.
#[derive(Default)]
pub struct Marks {
    inner: Mutex<std::collections::HashMap<String, Mark>>,
    /// Replayed messages a stale link still carried after the leaf had come back on a new
    /// one (dropped: the new replay sends them). Counted by the link's reader.
    pub stale_dropped: AtomicU64,
}

struct Mark {
    seq: u64,
    /// The leaf link whose reader counts this spool's replay (0: none).
    owner: u64,
    used: std::time::Instant,
}

impl Marks {
    /// The entry of `epoch`, made room for.
    fn entry<'a>(m: &'a mut std::collections::HashMap<String, Mark>, epoch: &str) -> &'a mut Mark {
        if m.len() >= MAX_MARKS && !m.contains_key(epoch) {
            if let Some(oldest) = m.iter().min_by_key(|(_, v)| v.used).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        let e = m.entry(epoch.to_string()).or_insert(Mark {
            seq: 0,
            owner: 0,
            used: std::time::Instant::now(),
        });
        e.used = std::time::Instant::now();
        e
    }

    /// Records `seq` for `epoch` (marks only move forward).
    pub fn record(&self, epoch: &str, seq: u64) {
        if !valid_epoch(epoch) {
            return;
        }
        let mut m = self.inner.lock();
        let e = Self::entry(&mut m, epoch);
        e.seq = e.seq.max(seq);
    }

    /// The leaf asked on link `cid` where to resume: that link counts the replay from now
    /// on (an older link of the same spool still draining its socket counts no more: what
    /// it holds is dropped and sent again by the new replay). Returns the mark.
    pub fn take_over(&self, epoch: &str, cid: u64) -> u64 {
        if !valid_epoch(epoch) {
            return 0;
        }
        let mut m = self.inner.lock();
        let e = Self::entry(&mut m, epoch);
        e.owner = cid;
        e.seq
    }

    /// The reader of link `cid` is about to hand on the replayed message `seq` (or, with
    /// `$LSPOOL.M`, has handed on the batch up to `seq`): true when the link still counts
    /// this spool. The mark then covers `seq` before the message is delivered, so a
    /// question on a new link is never answered in between. False only when a newer link
    /// took the spool over: what the old one still carries is dropped (and counted), and
    /// the new replay sends it. A mark forgotten meanwhile (the bound) is made again.
    pub fn advance(&self, epoch: &str, cid: u64, seq: u64) -> bool {
        if !valid_epoch(epoch) {
            return false;
        }
        let mut m = self.inner.lock();
        if !m.contains_key(epoch) {
            Self::entry(&mut m, epoch).owner = cid;
        }
        let Some(e) = m.get_mut(epoch) else {
            return false;
        };
        if e.owner != cid && e.owner != 0 {
            return false;
        }
        e.owner = cid;
        e.seq = e.seq.max(seq);
        true
    }

    pub fn get(&self, epoch: &str) -> u64 {
        self.inner.lock().get(epoch).map_or(0, |v| v.seq)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A replayed message's fingerprint in a batch list: CRC-32C of its subject and payload
/// (headers included) as they cross the link. A hub counts a message off the list only
/// when it matches, so a message that is not part of the replay (one that reached the
/// link by another path while the replay ran) never advances the mark.
pub fn fingerprint(subject: &[u8], payload: &[u8]) -> u32 {
    // A space between (no subject holds one), so the split between them counts too.
    let head = crc32c::crc32c_append(crc32c::crc32c(subject), b" ");
    crc32c::crc32c_append(head, payload)
}

/// Bytes per entry of a batch list: the spool sequence (u64) and the fingerprint (u32),
/// little-endian.
const LIST_ENTRY: usize = 12;

/// Parses a batch list (`$LSPOOL.B` payload); `None` when malformed or longer than a
/// batch can be.
pub fn parse_batch_list(payload: &[u8]) -> Option<VecDeque<(u64, u32)>> {
    if !payload.len().is_multiple_of(LIST_ENTRY) || payload.len() / LIST_ENTRY > BATCH_MSGS {
        return None;
    }
    let mut out = VecDeque::with_capacity(payload.len() / LIST_ENTRY);
    for e in payload.chunks_exact(LIST_ENTRY) {
        let (seq, fp) = e.split_at(8);
        let seq = u64::from_le_bytes(seq.try_into().ok()?);
        let fp = u32::from_le_bytes(fp.try_into().ok()?);
        out.push_back((seq, fp));
    }
    Some(out)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. A disk error is logged and counted: the
    /// remote then works without a spool. The spool starts capturing (no link yet).
    pub fn open(label: String, dir: PathBuf, max_bytes: u64, deny: Vec<String>) -> Arc<Spool> {
        let stats = SpoolStats::default();
        let store = open_store(&label, &dir, max_bytes, &stats);
        let epoch = load_epoch(&label, &dir, store.as_ref());
        let sp = Spool {
            label,
            dir,
            max_bytes,
            deny,
            class: AtomicU8::new(LinkClass::Uplink as u8),
            held: AtomicU64::new(0),
            active: AtomicBool::new(true),
            hub_mark: Mutex::new(None),
            canopy_hub: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                broken: store.is_none(),
                store,
                epoch,
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
        if origin.imported
            || !msg_allowed(origin.class, class)
            || subject.starts_with(b"$LDS.")
            || subject.starts_with(CONTROL_PREFIX.as_bytes())
        {
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
    pub fn link_up(&self, conn: &ConnShared, class: LinkClass, canopy_hub: bool) {
        let _inner = self.inner.lock();
        self.class.store(class as u8, Ordering::Relaxed);
        self.canopy_hub.store(canopy_hub, Ordering::Relaxed);
        *self.hub_mark.lock() = None;
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
                inner.epoch = load_epoch(&self.label, &self.dir, inner.store.as_ref());
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
            "resumed_skipped": s.resumed_skipped.load(Ordering::Relaxed),
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
        let canopy_hub = self.canopy_hub.load(Ordering::Relaxed);
        let epoch = self.inner.lock().epoch.clone();
        let mut next = 0u64;
        if canopy_hub {
            // Ask the hub how far an earlier replay of this epoch got; its answer comes
            // before the PONG of the next barrier.
            let q = format!("{CONTROL_PREFIX}Q.{epoch}");
            if !send_control(&conn, &q) || !conn.ping_barrier(BARRIER_TIMEOUT).await {
                return;
            }
            let mark = match *self.hub_mark.lock() {
                Some((cid, seq)) if cid == conn.cid => seq,
                _ => 0,
            };
            if mark > 0 {
                next = self.skip_delivered(mark);
            }
        }
        let window = if canopy_hub { WINDOW } else { WINDOW_GO_HUB };
        // Never more than the link's outbound bound in flight (it would close the link).
        let batch_bytes = (conn.max_pending() / (window + 1)).clamp(4096, BATCH_BYTES);
        // Batches sent and not acknowledged yet: (PING number, first sequence after it).
        let mut in_flight: VecDeque<(u64, u64)> = VecDeque::with_capacity(window);
        let mut batch: Vec<canopy_store::StoredMsg> = Vec::with_capacity(BATCH_MSGS);
        loop {
            if in_flight.len() >= window {
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
                    let mut out = Vec::with_capacity(batch.len());
                    for m in &batch {
                        match self.prepare(&acc, &conn, m) {
                            Ok(p) => out.push(p),
                            Err(Sent::Unwanted) => inner.outage.unwanted += 1,
                            Err(Sent::StaleReply) => inner.outage.stale += 1,
                        }
                    }
                    // A Canopy hub gets the batch's list first and counts each message
                    // off it as it takes it in, so a cut inside the batch resumes after
                    // the last message the hub handed on.
                    if canopy_hub && !out.is_empty() {
                        let b = format!("{CONTROL_PREFIX}B.{epoch}");
                        if !send_control_with(&conn, &b, &batch_list(&out)) {
                            return;
                        }
                    }
                    for p in &out {
                        self.emit(&conn, p);
                    }
                    inner.outage.replayed += out.len() as u64;
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
            if canopy_hub {
                let m = format!("{CONTROL_PREFIX}M.{epoch}.{}", next.saturating_sub(1));
                if !send_control(&conn, &m) {
                    return;
                }
            }
            let Some(ping) = conn.queue_ping() else {
                return;
            };
            in_flight.push_back((ping, next));
        }
    }

    /// The hub has everything up to `mark` (an earlier replay of this epoch was cut off
    /// after the hub got it): drops it from the spool and returns where to go on.
    fn skip_delivered(&self, mark: u64) -> u64 {
        let mut inner = self.inner.lock();
        let Some(store) = inner.store.as_mut() else {
            return 0;
        };
        let t = store.totals();
        if mark < t.first_seq || mark > t.last_seq {
            return 0;
        }
        let before = t.msgs;
        if let Err(e) = store.compact(mark + 1) {
            self.disk_error("compact", &e);
            inner.broken = true;
            return 0;
        }
        let skipped = before.saturating_sub(store.totals().msgs);
        self.stats
            .resumed_skipped
            .fetch_add(skipped, Ordering::Relaxed);
        tracing::info!(
            "{}: the hub had the spool up to sequence {mark} already: {skipped} messages not \
             sent again",
            self.label
        );
        self.refresh(&inner);
        mark + 1
    }

    /// The hub answered `$LSPOOL.Q` on connection `cid`.
    pub fn hub_answered(&self, cid: u64, epoch: &str, seq: u64) {
        if self.inner.lock().epoch == epoch {
            *self.hub_mark.lock() = Some((cid, seq));
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

    /// Decides whether a spooled message goes to the hub now (the hub has interest in it,
    /// and a request's requester still waits) and how it is framed.
    fn prepare<'m>(
        &self,
        acc: &Account,
        conn: &ConnShared,
        m: &'m canopy_store::StoredMsg,
    ) -> Result<Prepared<'m>, Sent> {
        let subject = m.subject();
        let raw = m.payload();
        let Some((len, rest)) = raw.split_first_chunk::<2>() else {
            return Err(Sent::Unwanted);
        };
        let reply_len = usize::from(u16::from_le_bytes(*len));
        if rest.len() < reply_len {
            return Err(Sent::Unwanted);
        }
        let (reply, body) = rest.split_at(reply_len);
        if let Some(deny) = conn.deny_send.get() {
            if deny
                .iter()
                .any(|d| canopy_subject::subject_matches(d, subject))
            {
                return Err(Sent::Unwanted);
            }
        }
        let result = acc.sublist.matches(subject);
        let plain = result.psubs.iter().any(|s| s.conn.cid == conn.cid);
        // A group with a member here served the message when it was published (local
        // members are preferred): the hub's members of that group do not get it again.
        let queues: Vec<Arc<str>> = if plain {
            Vec::new()
        } else {
            result
                .qsubs
                .iter()
                .filter(|g| {
                    g.members.iter().any(|s| s.conn.cid == conn.cid)
                        && !g.members.iter().any(|s| s.conn.kind == ConnKind::Client)
                })
                .map(|g| g.name.clone())
                .collect()
        };
        if !plain && queues.is_empty() {
            return Err(Sent::Unwanted);
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
                return Err(Sent::StaleReply);
            }
        }
        let hdr = m.headers();
        let (hdr_len, payload) = if hdr.is_empty() {
            (None, std::borrow::Cow::Borrowed(body))
        } else {
            (
                Some(hdr.len()),
                std::borrow::Cow::Owned([hdr, body].concat()),
            )
        };
        Ok(Prepared {
            seq: m.seq,
            subject,
            reply,
            queues,
            hdr_len,
            payload,
        })
    }

    /// Queues a prepared message on the link.
    fn emit(&self, conn: &ConnShared, p: &Prepared<'_>) {
        let ok = conn.enqueue(|b| {
            canopy_proto::encode_lmsg(
                b,
                p.subject.as_bytes(),
                p.reply,
                p.queues.iter().map(|q| q.as_bytes()),
                p.hdr_len,
                &p.payload,
            )
        });
        if ok {
            conn.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
            conn.stats
                .out_bytes
                .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
        }
    }
}

/// A spooled message on its way to the hub.
struct Prepared<'m> {
    seq: u64,
    subject: &'m str,
    reply: Option<&'m [u8]>,
    queues: Vec<Arc<str>>,
    hdr_len: Option<usize>,
    payload: std::borrow::Cow<'m, [u8]>,
}

/// A batch list (`$LSPOOL.B`): each message's spool sequence and fingerprint, in the order
/// they are sent.
fn batch_list(msgs: &[Prepared<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msgs.len() * LIST_ENTRY);
    for p in msgs {
        out.extend_from_slice(&p.seq.to_le_bytes());
        out.extend_from_slice(&fingerprint(p.subject.as_bytes(), &p.payload).to_le_bytes());
    }
    out
}

/// Queues a control message on a leaf link.
pub fn send_control_with(conn: &ConnShared, subject: &str, payload: &[u8]) -> bool {
    conn.enqueue(|b| {
        canopy_proto::encode_lmsg(
            b,
            subject.as_bytes(),
            None,
            std::iter::empty::<&[u8]>(),
            None,
            payload,
        )
    })
}

/// Queues a control message (no payload) on a leaf link.
pub fn send_control(conn: &ConnShared, subject: &str) -> bool {
    send_control_with(conn, subject, b"")
}

enum Sent {
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

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_newer_link_takes_the_count_over() {
        let m = Marks::default();
        assert_eq!(m.take_over(EPOCH, 1), 0);
        assert!(m.advance(EPOCH, 1, 5));
        // The leaf came back on link 2 while link 1 still drains its socket.
        assert_eq!(m.take_over(EPOCH, 2), 5);
        assert!(
            !m.advance(EPOCH, 1, 6),
            "the stale link must not move the mark"
        );
        assert_eq!(m.get(EPOCH), 5);
        assert!(m.advance(EPOCH, 2, 6));
        // Marks shared by another member only move forward and take no link.
        m.record(EPOCH, 3);
        assert_eq!(m.get(EPOCH), 6);
        assert!(m.advance(EPOCH, 2, 7));
    }

    #[test]
    fn a_forgotten_mark_is_made_again() {
        let m = Marks::default();
        assert!(m.advance(EPOCH, 9, 40));
        assert_eq!(m.get(EPOCH), 40);
        assert!(!m.advance("not-an-epoch", 9, 1));
    }

    #[test]
    fn batch_lists_are_bounded() {
        let mut list = Vec::new();
        for seq in 1..=3u64 {
            list.extend_from_slice(&seq.to_le_bytes());
            list.extend_from_slice(&fingerprint(b"a.b", &seq.to_le_bytes()).to_le_bytes());
        }
        let parsed = parse_batch_list(&list).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[2].0, 3);
        assert_eq!(parsed[2].1, fingerprint(b"a.b", &3u64.to_le_bytes()));
        assert!(parse_batch_list(&list[..list.len() - 1]).is_none());
        assert!(parse_batch_list(&vec![0; LIST_ENTRY * (BATCH_MSGS + 1)]).is_none());
        assert_ne!(fingerprint(b"a.b", b"x"), fingerprint(b"a.bx", b""));
    }
}
