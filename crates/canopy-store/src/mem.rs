//! The memory store (`storage: memory`): the shared store logic over a backend that keeps
//! each message's encoded record in a map. Same limits, filters and results as the file
//! store; nothing survives the process.

use std::collections::HashMap;

use crate::error::{Result, StoreError};
use crate::index::{Chunk, Index, Slot};
use crate::record::{self, MsgFields};
use crate::store::{Backend, Store};
use crate::{system_clock, Clock, StoreConfig, StoredMsg};

/// Slots per chunk: bounds the cost of scanning a chunk and of dropping emptied ones.
const CHUNK_SLOTS: usize = 1 << 14;
/// A gap longer than this (mirror skips) starts a new chunk instead of dead slots.
const MAX_GAP: u64 = 1024;

#[derive(Default)]
pub struct MemBackend {
    recs: HashMap<u64, Box<[u8]>>,
}

/// The in-memory message store.
pub type MemStore = Store<MemBackend>;

impl MemStore {
    pub fn new(cfg: StoreConfig) -> MemStore {
        Self::with_clock(cfg, system_clock())
    }

    pub fn with_clock(cfg: StoreConfig, clock: Clock) -> MemStore {
        let idx = Index::new(cfg.first_seq);
        Store::from_parts(idx, MemBackend::default(), cfg, clock)
    }
}

impl Backend for MemBackend {
    fn stage_msg(&mut self, idx: &mut Index, m: &MsgFields<'_>) -> Result<(u32, u32)> {
        let roll = idx.open_chunk().is_none_or(|c| {
            c.slots.len() >= CHUNK_SLOTS || m.seq < c.end() || m.seq - c.end() > MAX_GAP
        });
        if roll {
            idx.chunks.insert(m.seq, Chunk::new(m.seq));
        }
        let mut buf = Vec::new();
        let len = record::encode_msg(&mut buf, m);
        self.recs.insert(m.seq, buf.into_boxed_slice());
        Ok((0, len as u32))
    }

    fn stage_skip(&mut self, idx: &mut Index, _start: u64, end: u64, _ts: i64) -> Result<()> {
        idx.chunks.insert(end + 1, Chunk::new(end + 1));
        Ok(())
    }

    fn stage_delete(&mut self, idx: &mut Index, ranges: &[(u64, u64)], _ts: i64) -> Result<()> {
        for &(a, b) in ranges {
            for s in a..=b {
                self.recs.remove(&s);
            }
        }
        // Drop emptied chunks, keeping the open one (it takes the next append).
        let last = idx.chunks.keys().next_back().copied();
        idx.chunks
            .retain(|base, c| c.live > 0 || Some(*base) == last);
        Ok(())
    }

    fn commit(&mut self, _idx: &mut Index) -> Result<()> {
        Ok(())
    }

    fn read(&self, _idx: &Index, seq: u64, _slot: Slot) -> Result<StoredMsg> {
        let rec = self.recs.get(&seq).ok_or(StoreError::NotFound)?;
        StoredMsg::from_record(rec.to_vec()).map_err(|e| StoreError::Corrupt {
            path: "memory".into(),
            offset: seq,
            reason: e.to_string(),
        })
    }

    fn read_ts(&self, _idx: &Index, seq: u64, _slot: Slot) -> Result<i64> {
        let rec = self.recs.get(&seq).ok_or(StoreError::NotFound)?;
        record::decode(rec)
            .map(|r| r.ts)
            .map_err(|e| StoreError::Corrupt {
                path: "memory".into(),
                offset: seq,
                reason: e.to_string(),
            })
    }

    fn sync(&mut self, _idx: &mut Index) -> Result<()> {
        Ok(())
    }

    fn close(&mut self, _idx: &mut Index) -> Result<()> {
        Ok(())
    }
}
