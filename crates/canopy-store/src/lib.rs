//! canopy-store: the durable message store under JetStream streams and consumers and under
//! the leaf's store-and-forward spool.
//!
//! - [`MessageStore`] is the stream-level API (append, get, filtered reads, delete, purge,
//!   limits, state), implemented by [`FileStore`] (a segmented append-only log, see
//!   docs/STORE.md for the file format and the durability contract) and [`MemStore`].
//! - [`ConsumerStore`] keeps a consumer's delivered/ack floors and pending set
//!   ([`FileConsumerStore`], [`MemConsumerStore`]).
//! - Everything goes through the [`Fs`] file layer; [`FakeFs`] simulates a process crash
//!   after any number of written bytes.
//!
//! Pure and synchronous: std I/O only. The caller owns threads and timers (it calls
//! [`MessageStore::sync`] every `sync_interval` and [`MessageStore::expire`] when
//! [`MessageStore::next_expiry`] is due).

mod codec;
pub mod consumer;
mod error;
mod file;
pub mod fs;
mod index;
mod mem;
pub mod record;
pub mod sidecar;
mod store;
mod subjects;

use std::sync::Arc;
use std::time::Duration;

pub use consumer::{
    ConsumerState, ConsumerStore, FileConsumerStore, MemConsumerStore, Pending, SequencePair,
};
pub use error::{Result, StoreError};
pub use file::{FileStore, FileStoreOptions, LostRange, RecoveryReport};
pub use fs::{lock_dir, FakeFs, Fs, FsFile, LockGuard, StdFs};
pub use mem::MemStore;
pub use store::Store;

/// Nanoseconds since the Unix epoch; the store's only notion of time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    })
}

/// What happens when a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// Remove the oldest messages to make room.
    #[default]
    Old,
    /// Refuse the new message.
    New,
}

/// When appends reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// The caller calls `sync()` this often (nats-server's `sync_interval`, default 2 min);
    /// an append returns after `write(2)`.
    Interval(Duration),
    /// `fdatasync` before every append (or batch) returns.
    Always,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Interval(Duration::from_secs(120))
    }
}

/// Stream limits the store enforces. Zero means unlimited for every number.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreConfig {
    pub max_msgs: u64,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub max_msgs_per_subject: u64,
    /// Headers plus payload.
    pub max_msg_size: u64,
    pub discard: Discard,
    /// With `Discard::New` and `max_msgs_per_subject`: refuse instead of evicting per subject.
    pub discard_new_per_subject: bool,
    /// Sequence of the first message of a new stream (0 or 1: start at 1).
    pub first_seq: u64,
}

/// A message to append.
#[derive(Debug, Clone, Copy)]
pub struct NewMsg<'a> {
    pub subject: &'a str,
    pub hdr: &'a [u8],
    pub payload: &'a [u8],
    /// Per-message TTL in nanoseconds (`None`: only the stream limits apply).
    pub ttl: Option<i64>,
}

impl<'a> NewMsg<'a> {
    pub fn new(subject: &'a str, payload: &'a [u8]) -> Self {
        NewMsg {
            subject,
            hdr: &[],
            payload,
            ttl: None,
        }
    }
}

/// A stored message. One allocation holds the record; accessors borrow from it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub seq: u64,
    /// Nanoseconds since the Unix epoch.
    pub ts: i64,
    pub ttl: Option<i64>,
    buf: Vec<u8>,
    subject: (usize, usize),
    hdr: (usize, usize),
    payload: (usize, usize),
}

impl StoredMsg {
    /// Wraps an encoded message record.
    pub(crate) fn from_record(buf: Vec<u8>) -> std::result::Result<Self, record::DecodeError> {
        let r = record::decode(&buf)?;
        if !r.is_msg() {
            return Err(record::DecodeError::Malformed("not a message"));
        }
        let s0 = record::FIXED_LEN + if r.ttl.is_some() { 8 } else { 0 };
        let h0 = s0 + r.subject.len();
        let p0 = h0 + r.hdr.len();
        let (seq, ts, ttl, p1) = (r.seq, r.ts, r.ttl, p0 + r.payload.len());
        Ok(StoredMsg {
            seq,
            ts,
            ttl,
            buf,
            subject: (s0, h0),
            hdr: (h0, p0),
            payload: (p0, p1),
        })
    }

    pub fn subject(&self) -> &str {
        std::str::from_utf8(&self.buf[self.subject.0..self.subject.1]).unwrap_or("")
    }
    pub fn headers(&self) -> &[u8] {
        &self.buf[self.hdr.0..self.hdr.1]
    }
    pub fn payload(&self) -> &[u8] {
        &self.buf[self.payload.0..self.payload.1]
    }
    /// Stored size (the record length), the unit of `bytes` in [`StreamState`].
    pub fn size(&self) -> u64 {
        self.buf.len() as u64
    }
}

impl std::fmt::Debug for StoredMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMsg")
            .field("seq", &self.seq)
            .field("ts", &self.ts)
            .field("subject", &self.subject())
            .field("hdr_len", &self.headers().len())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

/// Messages, bytes, first and last sequence of a stream ([`MessageStore::totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub msgs: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Messages, first and last sequence of a subject or filter (zeros when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimpleState {
    pub msgs: u64,
    pub first: u64,
    pub last: u64,
}

/// Messages and bytes lost to corruption found at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LostStats {
    pub msgs: u64,
    pub bytes: u64,
}

/// A stream's counters (nats-server's `StreamState`). `bytes` counts encoded records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamState {
    pub msgs: u64,
    pub bytes: u64,
    /// First live sequence; `last_seq + 1` when empty.
    pub first_seq: u64,
    /// Timestamp of the first live message; 0 when empty.
    pub first_ts: i64,
    pub last_seq: u64,
    pub last_ts: i64,
    pub num_subjects: u64,
    /// Sequences between first and last that are not live.
    pub num_deleted: u64,
    pub lost: LostStats,
}

/// What to purge. The default purges everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeOpts {
    /// Only messages whose subject matches (wildcards allowed); `None`/`""`/`">"`: all.
    pub filter: Option<String>,
    /// Only messages with a sequence below this (JetStream's `seq`: "up to, not including").
    pub up_to_seq: Option<u64>,
    /// Keep the newest `keep` messages matching the filter.
    pub keep: Option<u64>,
}

/// The stream-level store API JetStream uses (nats-server's `StreamStore`).
///
/// Mutating calls return only after `write(2)` succeeded (and `fdatasync` under
/// [`SyncPolicy::Always`]). Sequence numbers are exact and never reused.
pub trait MessageStore: Send {
    /// Appends one message with the next sequence; returns `(seq, ts)`.
    fn store_msg(&mut self, msg: NewMsg<'_>) -> Result<(u64, i64)>;
    /// Appends several messages with one write (and one fsync under `Always`): group commit.
    /// Each message gets its own result; rejected ones (limits) take no sequence.
    fn store_batch(&mut self, msgs: &[NewMsg<'_>]) -> Result<Vec<Result<(u64, i64)>>>;
    /// Appends with an explicit sequence (> last) and timestamp: mirrors and sources.
    fn store_raw(&mut self, seq: u64, ts: i64, msg: NewMsg<'_>) -> Result<()>;
    /// Skips `n` sequences starting at `seq` (which must be `last + 1`).
    fn skip_msgs(&mut self, seq: u64, n: u64) -> Result<()>;
    /// The live message with this sequence.
    fn load_msg(&self, seq: u64) -> Result<StoredMsg>;
    /// The first live message with sequence >= `start` whose subject matches `filter`.
    fn load_next_matching(&self, filter: &str, start: u64) -> Result<Option<StoredMsg>>;
    /// The last live message with sequence <= `start` whose subject matches `filter`.
    fn load_prev_matching(&self, filter: &str, start: u64) -> Result<Option<StoredMsg>>;
    /// The newest message on a subject (a wildcard filter: the newest matching any).
    fn last_by_subject(&self, filter: &str) -> Result<Option<StoredMsg>>;
    /// Deletes one message; `Ok(false)` if it was not live.
    fn remove_msg(&mut self, seq: u64) -> Result<bool>;
    /// Purges messages; returns how many were removed.
    fn purge(&mut self, opts: &PurgeOpts) -> Result<u64>;
    /// Removes every message with a sequence below `seq`; returns how many.
    fn compact(&mut self, seq: u64) -> Result<u64>;
    /// Applies `max_age` and per-message TTLs at `now` (ns); returns how many were removed.
    fn expire(&mut self, now: i64) -> Result<u64>;
    /// When the next message expires (ns), if any does.
    fn next_expiry(&self) -> Option<i64>;
    /// Up to `limit` sequences that [`MessageStore::expire`] would remove at `now` (by age
    /// first, then by TTL; may repeat one), without removing them: JetStream's subject
    /// delete markers decide per message.
    fn expiring(&self, now: i64, limit: usize) -> Vec<u64>;
    /// Changes the limits and enforces them at once.
    fn update_config(&mut self, cfg: StoreConfig) -> Result<()>;
    fn config(&self) -> &StoreConfig;
    fn state(&self) -> StreamState;
    /// The counters of [`MessageStore::state`] that need no disk read (the first
    /// message's timestamp does): for callers on the append path.
    fn totals(&self) -> Totals {
        let st = self.state();
        Totals {
            msgs: st.msgs,
            bytes: st.bytes,
            first_seq: st.first_seq,
            last_seq: st.last_seq,
        }
    }
    /// Messages matching `filter` with sequence >= `start` (their count, first and last).
    fn filtered_state(&self, filter: &str, start: u64) -> SimpleState;
    /// Per-subject state of every subject matching `filter`, sorted by subject.
    fn subjects_state(&self, filter: &str) -> Vec<(String, SimpleState)>;
    /// Messages matching `filter` from `start`; with `last_per_subject`, at most one per
    /// subject (KV watchers' "last values only").
    fn num_pending(&self, start: u64, filter: &str, last_per_subject: bool) -> u64;
    /// Deleted sequences between first and last, as inclusive ranges.
    fn deleted_ranges(&self) -> Vec<(u64, u64)>;
    /// Makes everything written so far durable (fsync files and directories) and, for the
    /// file store, writes the state snapshot and compacts mostly-deleted segments.
    fn sync(&mut self) -> Result<()>;
    /// Syncs and writes the clean-shutdown snapshot. The store must not be used afterwards.
    fn close(&mut self) -> Result<()>;
}
