//! The file store: a segmented append-only log per stream with sidecar indexes, tombstones,
//! a snapshot, compaction and crash recovery. Layout under the stream directory:
//!
//! ```text
//! LOCK                      exclusive lock (held while open)
//! state.bin                 snapshot: counters, deleted ranges, open segment index + watermark
//! msgs/<base:020>.seg       records of sequences >= base (the last segment takes appends)
//! msgs/<base:020>.idx       sidecar index of a sealed segment
//! obs/<consumer>/state.bin  consumer state (see consumer.rs)
//! ```
//!
//! Recovery never refuses to start over damaged data: a torn tail of the open segment is
//! truncated, corruption elsewhere is skipped to the next valid record and reported in the
//! [`RecoveryReport`] (and in `StreamState::lost`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::consumer::FileConsumerStore;
use crate::error::{IoContext, Result, StoreError};
use crate::fs::{lock_dir, Fs, FsFile, LockGuard, StdFs};
use crate::index::{Chunk, Index, Slot};
use crate::record::{self, flags, MsgFields};
use crate::sidecar::{Sidecar, Snapshot};
use crate::store::{Backend, Store};
use crate::{system_clock, Clock, LostStats, StoreConfig, StoredMsg, SyncPolicy};

/// A gap longer than this (mirror skips) starts a new segment instead of dead slots.
const MAX_GAP: u64 = 1024;
/// Staged bytes beyond this are written before the operation ends (bounds memory).
const MAX_STAGED: usize = 1 << 20;
/// Sealed segments at least this large whose live bytes fall under half get compacted.
const COMPACT_MIN: u64 = 64 * 1024;
/// Bytes read at once when reads go forward through a segment (consumers, replays).
const READ_AHEAD: usize = 64 * 1024;
/// A read that starts at most this far past the previous one's end counts as sequential.
const SEQUENTIAL_GAP: u64 = 4096;

/// Options of a [`FileStore`].
#[derive(Clone)]
pub struct FileStoreOptions {
    /// Segment size at which the log rolls (default 4 MiB; at most 1 GiB).
    pub segment_size: u64,
    pub sync: SyncPolicy,
    pub fs: Arc<dyn Fs>,
    pub clock: Clock,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            segment_size: 4 << 20,
            sync: SyncPolicy::default(),
            fs: Arc::new(StdFs),
            clock: system_clock(),
        }
    }
}

impl std::fmt::Debug for FileStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStoreOptions")
            .field("segment_size", &self.segment_size)
            .field("sync", &self.sync)
            .finish()
    }
}

/// Bytes that recovery could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// Sequences that may have been in the lost bytes (inclusive), when known.
    pub seqs: Option<(u64, u64)>,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub sidecars_used: usize,
    pub segments_scanned: usize,
    /// The snapshot matched the open segment's tail and was used.
    pub snapshot_used: bool,
    /// Bytes of a torn last write cut off the open segment.
    pub truncated_bytes: u64,
    /// Corrupt ranges skipped.
    pub lost: Vec<LostRange>,
}

/// The file-backed message store.
pub type FileStore = Store<FileBackend>;

/// Persistence of the file store.
pub struct FileBackend {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    msgs_dir: PathBuf,
    segment_size: u64,
    sync: SyncPolicy,
    open: Box<dyn FsFile>,
    open_base: u64,
    staged: Vec<u8>,
    /// Sealed segments written since the last sync.
    unsynced: BTreeSet<u64>,
    dir_dirty: bool,
    read_cache: Mutex<Option<(u64, Box<dyn FsFile>)>>,
    read_ahead: Mutex<ReadAhead>,
    _lock: LockGuard,
}

/// The bytes last read ahead from one segment, and where the previous read ended (to tell
/// a forward scan from random access, which reads only what it asks for).
#[derive(Default)]
struct ReadAhead {
    base: u64,
    off: u64,
    buf: Vec<u8>,
    last_end: Option<(u64, u64)>,
}

fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn idx_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

fn corrupt(path: &Path, offset: u64, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    }
}

impl FileStore {
    /// Opens (or creates) the stream store in `dir`, recovering whatever is there.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: StoreConfig,
        opts: FileStoreOptions,
    ) -> Result<(FileStore, RecoveryReport)> {
        let dir = dir.as_ref().to_path_buf();
        let fs = opts.fs.clone();
        let lock = lock_dir(fs.as_ref(), &dir)?;
        let msgs_dir = dir.join("msgs");
        fs.create_dir_all(&msgs_dir).ctx("create dir", &msgs_dir)?;
        let mut report = RecoveryReport::default();
        let (idx, lost) = recover(fs.as_ref(), &dir, &msgs_dir, &cfg, &mut report)?;
        let open_base = idx.open_chunk().map_or(1, |c| c.base);
        let p = seg_path(&msgs_dir, open_base);
        let open = fs.open_append(&p).ctx("open", &p)?;
        let be = FileBackend {
            fs,
            dir,
            msgs_dir,
            segment_size: opts.segment_size.clamp(1024, 1 << 30),
            sync: opts.sync,
            open,
            open_base,
            staged: Vec::new(),
            unsynced: BTreeSet::new(),
            dir_dirty: true,
            read_cache: Mutex::new(None),
            read_ahead: Mutex::new(ReadAhead::default()),
            _lock: lock,
        };
        let mut store = Store::from_parts(idx, be, cfg, opts.clock);
        store.lost = lost;
        // A crash between a message and the tombstone of the eviction it caused leaves a
        // limit exceeded: finish the eviction now.
        store.enforce_now()?;
        Ok((store, report))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.be.dir
    }

    /// Opens the state store of a consumer of this stream (`obs/<name>/`).
    pub fn consumer_store(&self, name: &str) -> Result<FileConsumerStore> {
        FileConsumerStore::open(
            self.be.fs.clone(),
            &self.be.dir.join("obs").join(name),
            self.be.sync,
        )
    }

    /// Approximate heap bytes of the index (slots and subjects), for memory reports.
    pub fn index_heap_bytes(&self) -> usize {
        let slots: usize = self
            .idx
            .chunks
            .values()
            .map(|c| c.slots.capacity() * std::mem::size_of::<Slot>())
            .sum();
        slots + self.idx.subjects.heap_bytes()
    }
}

impl FileBackend {
    fn seg(&self, base: u64) -> PathBuf {
        seg_path(&self.msgs_dir, base)
    }

    /// Writes staged bytes to the open segment.
    fn write_staged(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let r = self.open.append(&self.staged);
        self.staged.clear();
        // The path is formatted only on error: this runs once per append.
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e).ctx("write", &self.seg(self.open_base)),
        }
    }

    /// Seals the open segment (sidecar) and starts a new one at `base`.
    fn roll(&mut self, idx: &mut Index, base: u64) -> Result<()> {
        self.write_staged()?;
        let old = self.open_base;
        let empty = idx
            .open_chunk()
            .is_some_and(|c| c.slots.is_empty() && c.raw == 0);
        let p = self.seg(base);
        let f = self.fs.open_append(&p).ctx("create", &p)?;
        if empty {
            // Nothing to keep: the new segment replaces it.
            idx.chunks.remove(&old);
            let op = self.seg(old);
            self.fs.remove_file(&op).ctx("remove", &op)?;
        } else if let Some(c) = idx.open_chunk_mut() {
            c.slots.shrink_to_fit();
            let sc = Sidecar::from_chunk(&idx.chunks[&old], idx);
            let ip = idx_path(&self.msgs_dir, old);
            let always = self.sync == SyncPolicy::Always;
            self.fs
                .write_atomic(&ip, &sc.encode(), always)
                .ctx("write sidecar", &ip)?;
            self.unsynced.insert(old);
        }
        self.open = f;
        self.open_base = base;
        self.dir_dirty = true;
        idx.chunks.insert(base, Chunk::new(base));
        Ok(())
    }

    /// Stages a record in the open segment; returns its offset.
    fn stage_record(
        &mut self,
        idx: &mut Index,
        enc: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Result<(u32, u32)> {
        let start = self.staged.len();
        let len = enc(&mut self.staged);
        let crc = u32::from_le_bytes(
            self.staged[self.staged.len() - 4..]
                .try_into()
                .unwrap_or([0; 4]),
        );
        let c = idx
            .open_chunk_mut()
            .ok_or_else(|| corrupt(&self.msgs_dir, 0, "no open segment"))?;
        let off = c.raw;
        c.raw += len as u64;
        c.last_rec = Some((off, crc));
        debug_assert_eq!(self.staged.len() - start, len);
        if self.staged.len() >= MAX_STAGED {
            self.write_staged()?;
        }
        Ok((off as u32, len as u32))
    }

    /// Removes segments that hold nothing needed: dead segments at the head, and dead
    /// segments without tombstones anywhere (never the open one).
    fn drop_dead(&mut self, idx: &mut Index, candidates: &[u64]) -> Result<()> {
        let mut doomed = Vec::new();
        for (&base, c) in idx.chunks.iter() {
            if base == self.open_base || c.live > 0 {
                break;
            }
            doomed.push(base);
        }
        for &b in candidates {
            if let Some(c) = idx.chunks.get(&b) {
                if b != self.open_base && c.live == 0 && c.tombstones.is_empty() {
                    doomed.push(b);
                }
            }
        }
        for base in doomed {
            if idx.chunks.remove(&base).is_none() {
                continue;
            }
            for p in [self.seg(base), idx_path(&self.msgs_dir, base)] {
                self.fs.remove_file(&p).ctx("remove", &p)?;
            }
            self.unsynced.remove(&base);
            self.dir_dirty = true;
            self.invalidate_cache(base);
        }
        Ok(())
    }

    fn invalidate_cache(&self, base: u64) {
        if let Ok(mut g) = self.read_cache.lock() {
            if g.as_ref().is_some_and(|(b, _)| *b == base) {
                *g = None;
            }
        }
        if let Ok(mut ra) = self.read_ahead.lock() {
            if ra.base == base {
                *ra = ReadAhead::default();
            }
        }
    }

    /// [`FileBackend::read_at`] through the read-ahead buffer: a read inside it is a copy;
    /// a read just past the previous one fills it with up to [`READ_AHEAD`] bytes (never
    /// beyond `limit`, the bytes the segment holds); other reads go to the file alone.
    /// Segment bytes never change in place (appends only; compaction and removal
    /// invalidate), so the buffer cannot go stale.
    fn read_seq(&self, base: u64, off: u64, len: usize, limit: u64) -> Result<Vec<u8>> {
        let Ok(mut ra) = self.read_ahead.lock() else {
            return self.read_at(base, off, len);
        };
        let end = off + len as u64;
        if ra.base == base && off >= ra.off && end <= ra.off + ra.buf.len() as u64 {
            let at = (off - ra.off) as usize;
            ra.last_end = Some((base, end));
            return Ok(ra.buf[at..at + len].to_vec());
        }
        let sequential = ra
            .last_end
            .is_some_and(|(b, e)| b == base && off >= e && off - e <= SEQUENTIAL_GAP);
        ra.last_end = Some((base, end));
        let fill_end = limit.min(off + READ_AHEAD as u64);
        if !sequential || len >= READ_AHEAD / 2 || fill_end <= end {
            drop(ra);
            return self.read_at(base, off, len);
        }
        // The index's idea of the segment's size is only a bound: should the file be
        // shorter, the read falls back to what was asked.
        let Ok(buf) = self.read_at(base, off, (fill_end - off) as usize) else {
            return self.read_at(base, off, len);
        };
        let out = buf[..len].to_vec();
        ra.base = base;
        ra.off = off;
        ra.buf = buf;
        Ok(out)
    }

    /// The bytes segment `base` holds on disk (its staged tail excluded).
    fn segment_limit(&self, c: &Chunk) -> u64 {
        if c.base == self.open_base {
            c.raw.saturating_sub(self.staged.len() as u64)
        } else {
            c.raw
        }
    }

    fn read_at(&self, base: u64, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let p = self.seg(base);
        if base == self.open_base {
            self.open.read_exact_at(&mut buf, off).ctx("read", &p)?;
            return Ok(buf);
        }
        let mut g = self
            .read_cache
            .lock()
            .map_err(|_| corrupt(&p, off, "read cache poisoned"))?;
        if g.as_ref().is_none_or(|(b, _)| *b != base) {
            *g = Some((base, self.fs.open_read(&p).ctx("open", &p)?));
        }
        if let Some((_, f)) = g.as_ref() {
            f.read_exact_at(&mut buf, off).ctx("read", &p)?;
        }
        Ok(buf)
    }

    fn fsync_all(&mut self) -> Result<()> {
        if let Err(e) = self.open.sync_data() {
            return Err(e).ctx("fsync", &self.seg(self.open_base));
        }
        for base in std::mem::take(&mut self.unsynced) {
            let p = self.seg(base);
            match self.fs.open_read(&p) {
                Ok(f) => f.sync_data().ctx("fsync", &p)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("open", &p),
            }
        }
        if self.dir_dirty {
            self.fs
                .sync_dir(&self.msgs_dir)
                .ctx("fsync dir", &self.msgs_dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn write_snapshot(&mut self, idx: &Index, lost: LostStats) -> Result<()> {
        let Some(c) = idx.open_chunk() else {
            return Ok(());
        };
        let mut deleted = Vec::new();
        for ch in idx.chunks.values() {
            deleted.extend(ch.deleted_ranges());
        }
        let snap = Snapshot {
            first: idx.first,
            last: idx.last,
            last_ts: idx.last_ts,
            lost_msgs: lost.msgs,
            lost_bytes: lost.bytes,
            deleted,
            open: Sidecar::from_chunk(c, idx),
        };
        let p = self.dir.join("state.bin");
        self.fs
            .write_atomic(&p, &snap.encode(), true)
            .ctx("write snapshot", &p)
    }

    /// Rewrites sealed segments whose live bytes are under half of their size: write the
    /// new file, fsync, rename over the old, fsync the directory; then a new sidecar.
    fn compact_segments(&mut self, idx: &mut Index) -> Result<()> {
        let first_base = idx.chunks.keys().next().copied().unwrap_or(0);
        let targets: Vec<u64> = idx
            .chunks
            .iter()
            .filter(|(&b, c)| {
                b != self.open_base && c.raw >= COMPACT_MIN && c.live_bytes * 2 < c.raw
            })
            .map(|(&b, _)| b)
            .collect();
        for base in targets {
            let p = self.seg(base);
            let Some(old) = self.fs.read_file(&p).ctx("read", &p)? else {
                continue;
            };
            let Some(c) = idx.chunks.get_mut(&base) else {
                continue;
            };
            let mut out = Vec::with_capacity(c.live_bytes as usize);
            let mut tombs = Vec::new();
            let mut last_rec = None;
            let mut pos = 0usize;
            while pos < old.len() {
                let Ok(r) = record::decode(&old[pos..]) else {
                    return Err(corrupt(&p, pos as u64, "bad record during compaction"));
                };
                let keep = if r.is_msg() {
                    c.slot(r.seq)
                        .is_some_and(|s| s.live() && s.off as usize == pos)
                } else if r.flags & flags::TOMBSTONE != 0 {
                    // Still needed while an older segment may hold the deleted records.
                    r.ranges().any(|(_, e)| e >= first_base)
                } else {
                    true
                };
                if keep {
                    let off = out.len();
                    if r.is_msg() {
                        let i = (r.seq - c.base) as usize;
                        c.slots[i].off = off as u32;
                    } else if r.flags & flags::TOMBSTONE != 0 {
                        tombs.extend(r.ranges());
                    }
                    out.extend_from_slice(&old[pos..pos + r.len]);
                    last_rec = Some((off as u64, r.crc));
                }
                pos += r.len;
            }
            if out.len() >= old.len() {
                continue;
            }
            c.raw = out.len() as u64;
            c.last_rec = last_rec;
            c.tombstones = tombs;
            self.fs.write_atomic(&p, &out, true).ctx("compact", &p)?;
            self.invalidate_cache(base);
            let Some(c) = idx.chunks.get(&base) else {
                continue;
            };
            let sc = Sidecar::from_chunk(c, idx);
            let ip = idx_path(&self.msgs_dir, base);
            self.fs
                .write_atomic(&ip, &sc.encode(), true)
                .ctx("write sidecar", &ip)?;
        }
        let dead: Vec<u64> = idx.chunks.keys().copied().collect();
        self.drop_dead(idx, &dead)
    }
}

impl Backend for FileBackend {
    fn stage_msg(&mut self, idx: &mut Index, m: &MsgFields<'_>) -> Result<(u32, u32)> {
        let len = record::msg_len(
            m.subject.len(),
            m.hdr.len(),
            m.payload.len(),
            m.ttl.is_some(),
        ) as u64;
        let roll = match idx.open_chunk() {
            None => true,
            Some(c) if c.slots.is_empty() => c.base != m.seq,
            Some(c) => {
                c.raw + len > self.segment_size || m.seq < c.end() || m.seq - c.end() > MAX_GAP
            }
        };
        if roll {
            self.roll(idx, m.seq)?;
        }
        self.stage_record(idx, |b| record::encode_msg(b, m))
    }

    fn stage_skip(&mut self, idx: &mut Index, start: u64, end: u64, ts: i64) -> Result<()> {
        self.roll(idx, end + 1)?;
        self.stage_record(idx, |b| {
            record::encode_ranges(b, flags::SKIP, &[(start, end)], ts)
        })?;
        Ok(())
    }

    fn stage_delete(&mut self, idx: &mut Index, ranges: &[(u64, u64)], ts: i64) -> Result<()> {
        let touched: Vec<u64> = ranges
            .iter()
            .filter_map(|&(a, _)| idx.chunks.range(..=a).next_back().map(|(b, _)| *b))
            .collect();
        self.drop_dead(idx, &touched)?;
        // Tombstones only for ranges that still have a segment.
        let mut tombs: Vec<(u64, u64)> = Vec::new();
        for &(a, b) in ranges {
            for (_, c) in idx
                .chunks
                .range(..=b)
                .rev()
                .take_while(|(_, c)| c.end() > a)
            {
                let (lo, hi) = (a.max(c.base), b.min(c.end() - 1));
                tombs.push((lo, hi));
            }
        }
        tombs.sort_unstable();
        // One record per 4096 ranges: a purge is atomic unless it is enormous.
        for part in tombs.chunks(4096) {
            self.stage_record(idx, |buf| {
                record::encode_ranges(buf, flags::TOMBSTONE, part, ts)
            })?;
            if let Some(c) = idx.open_chunk_mut() {
                for &(a, b) in part {
                    match c.tombstones.last_mut() {
                        Some(r) if r.1 + 1 == a => r.1 = b,
                        _ => c.tombstones.push((a, b)),
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, _idx: &mut Index) -> Result<()> {
        self.write_staged()?;
        if self.sync == SyncPolicy::Always {
            self.fsync_all()?;
        }
        Ok(())
    }

    fn read(&self, idx: &Index, seq: u64, slot: Slot) -> Result<StoredMsg> {
        let c = idx.chunk_of(seq).ok_or(StoreError::NotFound)?;
        let limit = self.segment_limit(c);
        let buf = self.read_seq(c.base, u64::from(slot.off), slot.len as usize, limit)?;
        let m = StoredMsg::from_record(buf)
            .map_err(|e| corrupt(&self.seg(c.base), u64::from(slot.off), e))?;
        if m.seq != seq {
            return Err(corrupt(
                &self.seg(c.base),
                u64::from(slot.off),
                format!("record has seq {} not {seq}", m.seq),
            ));
        }
        Ok(m)
    }

    fn read_ts(&self, idx: &Index, seq: u64, slot: Slot) -> Result<i64> {
        let c = idx.chunk_of(seq).ok_or(StoreError::NotFound)?;
        let b = self.read_at(c.base, u64::from(slot.off) + 13, 8)?;
        let a: [u8; 8] = b.try_into().unwrap_or([0; 8]);
        Ok(i64::from_le_bytes(a))
    }

    fn sync(&mut self, idx: &mut Index) -> Result<()> {
        self.write_staged()?;
        self.compact_segments(idx)?;
        self.fsync_all()?;
        self.write_snapshot(idx, LostStats::default())
    }

    fn close(&mut self, idx: &mut Index) -> Result<()> {
        self.sync(idx)
    }
}

/// One record found by a scan.
struct Scanned {
    seq: u64,
    ts: i64,
    ttl: Option<i64>,
    subject: String,
    off: u32,
    len: u32,
}

#[derive(Default)]
struct ScanOut {
    msgs: Vec<Scanned>,
    tombstones: Vec<(u64, u64)>,
    max_skip: u64,
    last_rec: Option<(u64, u32)>,
    /// Length of the valid prefix (what to truncate to if the tail is torn).
    valid_len: u64,
    torn: bool,
}

/// Reads the records in `buf` (the segment's bytes from offset `at`), skipping corrupt
/// stretches (reported in `lost`).
fn scan(buf: &[u8], at: u64, base: u64, path: &Path, lost: &mut Vec<LostRange>) -> ScanOut {
    let mut out = ScanOut::default();
    let mut pos = 0usize;
    let abs = |pos: usize| at + pos as u64;
    let mut prev = base.saturating_sub(1);
    let accept = |r: &record::Record<'_>, prev: u64| !r.is_msg() || (r.seq > prev && r.seq >= base);
    while pos < buf.len() {
        match record::decode(&buf[pos..]) {
            Ok(r) if accept(&r, prev) => {
                if r.is_msg() {
                    out.msgs.push(Scanned {
                        seq: r.seq,
                        ts: r.ts,
                        ttl: r.ttl,
                        subject: r.subject.to_string(),
                        off: abs(pos) as u32,
                        len: r.len as u32,
                    });
                    prev = r.seq;
                } else if r.flags & flags::TOMBSTONE != 0 {
                    out.tombstones.extend(r.ranges());
                } else {
                    out.max_skip = r.ranges().fold(out.max_skip, |m, (_, e)| m.max(e));
                }
                out.last_rec = Some((abs(pos), r.crc));
                pos += r.len;
            }
            _ => {
                let next = (pos + 1..buf.len())
                    .find(|&q| record::decode(&buf[q..]).is_ok_and(|r| accept(&r, prev)));
                match next {
                    None => {
                        out.torn = true;
                        break;
                    }
                    Some(q) => {
                        let next_seq = record::decode(&buf[q..])
                            .ok()
                            .filter(|r| r.is_msg())
                            .map(|r| r.seq);
                        lost.push(LostRange {
                            segment: path.to_path_buf(),
                            offset: abs(pos),
                            bytes: (q - pos) as u64,
                            seqs: next_seq
                                .filter(|&n| n > prev + 1)
                                .map(|n| (prev + 1, n - 1)),
                        });
                        pos = q;
                    }
                }
            }
        }
    }
    out.valid_len = abs(pos);
    out
}

/// Adds scanned records to the open chunk of `idx`.
fn add_scanned(idx: &mut Index, s: &ScanOut, last_ts: &mut i64) {
    for m in &s.msgs {
        idx.push_slot(m.seq, &m.subject, m.len, m.off);
        if let Some(c) = idx.open_chunk_mut() {
            c.max_ts = c.max_ts.max(m.ts);
        }
        idx.add_msg_ttl(m.seq, m.ts, m.ttl);
        *last_ts = m.ts;
    }
    if let Some(c) = idx.open_chunk_mut() {
        c.tombstones.extend_from_slice(&s.tombstones);
        if s.last_rec.is_some() {
            c.last_rec = s.last_rec;
        }
    }
}

/// Adds a sidecar's slots to the open chunk of `idx`.
fn add_sidecar(idx: &mut Index, sc: &Sidecar) {
    for (i, &(off, len, l)) in sc.slots.iter().enumerate() {
        if let Some(s) = sc.subjects.get(l as usize) {
            idx.push_slot(sc.base + i as u64, &s.name, len, off);
        }
    }
    for &(seq, d) in &sc.ttls {
        idx.add_ttl(seq, d);
    }
    if let Some(c) = idx.open_chunk_mut() {
        while c.slots.len() < sc.slots.len() {
            c.slots.push(Slot::DEAD);
        }
        c.max_ts = c.max_ts.max(sc.max_ts);
        c.raw = sc.seg_len;
        c.last_rec = sc.last_rec;
        c.tombstones.extend_from_slice(&sc.tombstones);
    }
}

/// Does `file` end with the record `last_rec` at `len`? (The sidecar/snapshot watermark.)
fn watermark_ok(file: &dyn FsFile, len: u64, last_rec: Option<(u64, u32)>) -> bool {
    let Some((off, crc)) = last_rec else {
        return len == 0;
    };
    if off >= len {
        return false;
    }
    let mut buf = vec![0u8; (len - off) as usize];
    if file.read_exact_at(&mut buf, off).is_err() {
        return false;
    }
    record::decode(&buf).is_ok_and(|r| r.crc == crc && r.len == buf.len())
}

fn recover(
    fs: &dyn Fs,
    dir: &Path,
    msgs_dir: &Path,
    cfg: &StoreConfig,
    report: &mut RecoveryReport,
) -> Result<(Index, LostStats)> {
    let names = fs.list_dir(msgs_dir).ctx("list", msgs_dir)?;
    let mut bases: Vec<u64> = Vec::new();
    for n in &names {
        if n.ends_with(".tmp") {
            let p = msgs_dir.join(n);
            fs.remove_file(&p).ctx("remove", &p)?;
        } else if let Some(b) = n.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            bases.push(b);
        }
    }
    bases.sort_unstable();
    let snap = fs
        .read_file(&dir.join("state.bin"))
        .ctx("read", &dir.join("state.bin"))?
        .and_then(|b| Snapshot::decode(&b).ok());
    let mut lost = LostStats {
        msgs: snap.as_ref().map_or(0, |s| s.lost_msgs),
        bytes: snap.as_ref().map_or(0, |s| s.lost_bytes),
    };
    let fresh_base = snap.as_ref().map_or(cfg.first_seq.max(1), |s| s.last + 1);
    let mut idx = Index::new(bases.first().copied().unwrap_or(fresh_base));
    idx.chunks.clear();
    if bases.is_empty() {
        idx.chunks.insert(fresh_base, Chunk::new(fresh_base));
    }
    report.segments = bases.len();
    let mut last_ts = 0i64;
    let mut max_skip = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        let is_open = i + 1 == bases.len();
        let p = seg_path(msgs_dir, base);
        let file = fs.open_append(&p).ctx("open", &p)?;
        let flen = file.len().ctx("stat", &p)?;
        idx.chunks.insert(base, Chunk::new(base));
        // 1. The snapshot (open segment) or the sidecar (sealed), if it matches the file.
        let known: Option<Sidecar> = if is_open {
            snap.as_ref().map(|s| s.open.clone()).filter(|o| {
                o.base == base
                    && o.seg_len <= flen
                    && watermark_ok(file.as_ref(), o.seg_len, o.last_rec)
            })
        } else {
            let ip = idx_path(msgs_dir, base);
            fs.read_file(&ip)
                .ctx("read", &ip)?
                .and_then(|b| Sidecar::decode(&b).ok())
                .filter(|sc| {
                    sc.base == base
                        && sc.seg_len == flen
                        && watermark_ok(file.as_ref(), flen, sc.last_rec)
                })
        };
        let from = match &known {
            Some(sc) => {
                add_sidecar(&mut idx, sc);
                if is_open {
                    report.snapshot_used = true;
                } else {
                    report.sidecars_used += 1;
                }
                sc.seg_len
            }
            None => 0,
        };
        // 2. Scan whatever the index does not cover.
        if from < flen {
            report.segments_scanned += 1;
            let mut buf = vec![0u8; (flen - from) as usize];
            file.read_exact_at(&mut buf, from).ctx("read", &p)?;
            let mut found = Vec::new();
            let s = scan(&buf, from, base, &p, &mut found);
            add_scanned(&mut idx, &s, &mut last_ts);
            if let Some(c) = idx.open_chunk_mut() {
                c.raw = s.valid_len;
            }
            max_skip = max_skip.max(s.max_skip);
            if s.torn {
                let cut = flen - s.valid_len;
                if is_open {
                    let mut f = file;
                    f.set_len(s.valid_len).ctx("truncate", &p)?;
                    report.truncated_bytes += cut;
                } else {
                    found.push(LostRange {
                        segment: p.clone(),
                        offset: s.valid_len,
                        bytes: cut,
                        seqs: None,
                    });
                }
            }
            for l in &found {
                lost.bytes += l.bytes;
                lost.msgs += l.seqs.map_or(0, |(a, b)| b - a + 1);
            }
            report.lost.extend(found);
        }
    }
    for c in idx.chunks.values_mut() {
        c.slots.shrink_to_fit();
    }
    // 3. Deletes: sidecar deleted sets, tombstones anywhere, the snapshot's deleted ranges.
    let mut deletes: Vec<(u64, u64)> = idx
        .chunks
        .values()
        .flat_map(|c| c.tombstones.iter().copied())
        .collect();
    if let Some(s) = &snap {
        deletes.extend_from_slice(&s.deleted);
        deletes.extend_from_slice(&s.open.deleted);
    }
    for (a, b) in deletes {
        idx.remove_range(a, b);
    }
    // 4. Counters.
    let last_base = idx.chunks.keys().next_back().copied().unwrap_or(1);
    let mut last = idx.last.max(last_base - 1).max(max_skip);
    if let Some(s) = &snap {
        last = last.max(s.last);
        if s.last == last {
            last_ts = last_ts.max(s.last_ts);
        }
    }
    idx.last = last;
    idx.last_ts = last_ts;
    if idx.msgs == 0 {
        idx.first = last + 1;
    } else {
        idx.first = idx
            .next_live(0, &mut crate::subjects::Filter::All)
            .unwrap_or(last + 1);
    }
    Ok((idx, lost))
}
