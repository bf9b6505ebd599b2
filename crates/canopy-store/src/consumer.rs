//! Consumer state: the delivered and ack-floor sequence pairs, the pending set with the
//! consumer sequence and delivery time of each unacknowledged message, and redelivery
//! counts (nats-server's `ConsumerState`).
//!
//! [`FileConsumerStore`] keeps the state in memory and persists it on [`ConsumerStore::flush`]
//! as one small file written atomically (temp file, rename; fsync under `SyncPolicy::Always`
//! or on [`ConsumerStore::sync`]). Only a dirty state is written, so the caller can flush
//! thousands of consumers ~10 times a second cheaply. Losing the last acks to a crash only
//! causes redelivery (at-least-once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{check_crc, seal_crc, Malformed, Put, Reader};
use crate::error::{IoContext, Result, StoreError};
use crate::fs::Fs;
use crate::SyncPolicy;

const MAGIC: u32 = 0x5343_5343; // "CSCS"
const VERSION: u32 = 1;

/// A consumer sequence and the stream sequence it corresponds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequencePair {
    pub consumer: u64,
    pub stream: u64,
}

/// An unacknowledged delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Consumer sequence of the latest delivery.
    pub consumer_seq: u64,
    /// Time of the latest delivery (ns).
    pub ts: i64,
}

/// Everything a consumer must remember across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerState {
    pub delivered: SequencePair,
    pub ack_floor: SequencePair,
    /// Stream sequence → pending delivery.
    pub pending: BTreeMap<u64, Pending>,
    /// Stream sequence → times redelivered (delivery count - 1).
    pub redelivered: BTreeMap<u64, u64>,
}

impl ConsumerState {
    /// Records a delivery of stream seq `sseq` as consumer seq `dseq`; `dc` is the delivery
    /// count (1 for the first delivery).
    pub fn delivered(&mut self, dseq: u64, sseq: u64, dc: u64, ts: i64) {
        self.delivered.consumer = self.delivered.consumer.max(dseq);
        self.delivered.stream = self.delivered.stream.max(sseq);
        if sseq > self.ack_floor.stream {
            self.pending.insert(
                sseq,
                Pending {
                    consumer_seq: dseq,
                    ts,
                },
            );
        }
        if dc > 1 {
            self.redelivered.insert(sseq, dc - 1);
        }
    }

    /// Acknowledges stream seq `sseq` (delivered as `dseq`). Returns false if it was not
    /// pending. The ack floor moves to just below the oldest pending message.
    pub fn ack(&mut self, dseq: u64, sseq: u64) -> bool {
        let was = self.pending.remove(&sseq).is_some();
        self.redelivered.remove(&sseq);
        let _ = dseq;
        match self.pending.iter().next() {
            None => self.ack_floor = self.delivered,
            Some((&s, p)) => {
                let floor = SequencePair {
                    consumer: p.consumer_seq.saturating_sub(1),
                    stream: s - 1,
                };
                if floor.stream > self.ack_floor.stream {
                    self.ack_floor = floor;
                }
            }
        }
        was
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.pending.len() * 24 + self.redelivered.len() * 16);
        out.put_u32(MAGIC);
        out.put_u32(VERSION);
        for p in [self.delivered, self.ack_floor] {
            out.put_u64(p.consumer);
            out.put_u64(p.stream);
        }
        out.put_u32(self.pending.len() as u32);
        for (&s, p) in &self.pending {
            out.put_u64(s);
            out.put_u64(p.consumer_seq);
            out.put_i64(p.ts);
        }
        out.put_u32(self.redelivered.len() as u32);
        for (&s, &n) in &self.redelivered {
            out.put_u64(s);
            out.put_u64(n);
        }
        seal_crc(&mut out);
        out
    }

    pub fn decode(buf: &[u8]) -> std::result::Result<ConsumerState, Malformed> {
        let body = check_crc(buf)?;
        let mut r = Reader::new(body);
        if r.u32()? != MAGIC || r.u32()? != VERSION {
            return Err(Malformed("not a consumer state"));
        }
        let mut st = ConsumerState::default();
        for p in [&mut st.delivered, &mut st.ack_floor] {
            p.consumer = r.u64()?;
            p.stream = r.u64()?;
        }
        for _ in 0..r.count(24)? {
            let s = r.u64()?;
            let consumer_seq = r.u64()?;
            let ts = r.i64()?;
            st.pending.insert(s, Pending { consumer_seq, ts });
        }
        for _ in 0..r.count(16)? {
            let s = r.u64()?;
            st.redelivered.insert(s, r.u64()?);
        }
        if r.remaining() != 0 {
            return Err(Malformed("trailing bytes"));
        }
        Ok(st)
    }
}

/// A consumer's persistent state.
pub trait ConsumerStore: Send {
    fn state(&self) -> &ConsumerState;
    /// Replaces the whole state (consumer reset, or state from a leader).
    fn set_state(&mut self, st: ConsumerState);
    /// See [`ConsumerState::delivered`].
    fn update_delivered(&mut self, dseq: u64, sseq: u64, dc: u64, ts: i64);
    /// See [`ConsumerState::ack`].
    fn update_ack(&mut self, dseq: u64, sseq: u64) -> bool;
    /// Persists the state if it changed (no fsync unless `SyncPolicy::Always`).
    fn flush(&mut self) -> Result<()>;
    /// Persists and fsyncs.
    fn sync(&mut self) -> Result<()>;
    /// Removes the persisted state (consumer deleted).
    fn delete(&mut self) -> Result<()>;
}

/// Consumer state in memory only (memory streams, ephemeral consumers).
#[derive(Debug, Default)]
pub struct MemConsumerStore {
    st: ConsumerState,
}

impl MemConsumerStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ConsumerStore for MemConsumerStore {
    fn state(&self) -> &ConsumerState {
        &self.st
    }
    fn set_state(&mut self, st: ConsumerState) {
        self.st = st;
    }
    fn update_delivered(&mut self, dseq: u64, sseq: u64, dc: u64, ts: i64) {
        self.st.delivered(dseq, sseq, dc, ts);
    }
    fn update_ack(&mut self, dseq: u64, sseq: u64) -> bool {
        self.st.ack(dseq, sseq)
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn delete(&mut self) -> Result<()> {
        self.st = ConsumerState::default();
        Ok(())
    }
}

/// Consumer state persisted in `<dir>/state.bin`.
pub struct FileConsumerStore {
    fs: Arc<dyn Fs>,
    path: PathBuf,
    sync: SyncPolicy,
    st: ConsumerState,
    dirty: bool,
}

impl FileConsumerStore {
    /// Opens (creating the directory) and loads the saved state; a missing or unreadable
    /// file starts empty (at-least-once: the consumer redelivers).
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, sync: SyncPolicy) -> Result<FileConsumerStore> {
        fs.create_dir_all(dir).ctx("create dir", dir)?;
        let path = dir.join("state.bin");
        let st = fs
            .read_file(&path)
            .ctx("read", &path)?
            .and_then(|b| ConsumerState::decode(&b).ok())
            .unwrap_or_default();
        Ok(FileConsumerStore {
            fs,
            path,
            sync,
            st,
            dirty: false,
        })
    }

    fn write(&mut self, fsync: bool) -> Result<()> {
        self.fs
            .write_atomic(&self.path, &self.st.encode(), fsync)
            .ctx("write consumer state", &self.path)?;
        self.dirty = false;
        Ok(())
    }
}

impl ConsumerStore for FileConsumerStore {
    fn state(&self) -> &ConsumerState {
        &self.st
    }
    fn set_state(&mut self, st: ConsumerState) {
        self.st = st;
        self.dirty = true;
    }
    fn update_delivered(&mut self, dseq: u64, sseq: u64, dc: u64, ts: i64) {
        self.st.delivered(dseq, sseq, dc, ts);
        self.dirty = true;
    }
    fn update_ack(&mut self, dseq: u64, sseq: u64) -> bool {
        self.dirty = true;
        self.st.ack(dseq, sseq)
    }
    fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.write(self.sync == SyncPolicy::Always)?;
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        self.write(true)
    }
    fn delete(&mut self) -> Result<()> {
        self.fs.remove_file(&self.path).ctx("remove", &self.path)?;
        self.st = ConsumerState::default();
        self.dirty = false;
        Ok(())
    }
}

impl From<Malformed> for StoreError {
    fn from(m: Malformed) -> Self {
        StoreError::Corrupt {
            path: PathBuf::new(),
            offset: 0,
            reason: m.to_string(),
        }
    }
}
