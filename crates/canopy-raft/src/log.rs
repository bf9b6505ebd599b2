//! The Raft log and vote on disk.
//!
//! Layout under the group's directory:
//! - `vote.json`: the vote, replaced atomically (temporary file, fsync, rename, fsync dir).
//! - `purged.json`: the last log id dropped after a snapshot (same atomic replacement).
//! - `log/<first index, 20 digits>.seg`: segments of records `[len u32][crc32c u32][entry]`
//!   (entry encoding in `codec`). A segment rolls over past [`SEGMENT_MAX`] bytes.
//!
//! Appends are written and fsynced once per `append` call before openraft is told they are
//! durable. On open, records are read back in order; a short, corrupt (CRC) or out-of-order
//! record ends the log: the segment is cut there and later segments are removed (a torn tail
//! after a crash). Conflicting entries are cut with `truncate`; entries covered by a snapshot
//! are dropped whole segments at a time with `purge`.
//!
//! Memory: a position (40 bytes) per live entry plus a bounded cache of the newest entries,
//! which is what replication reads; older entries are read back from their segment.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{CommittedLeaderId, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use parking_lot::Mutex;

use crate::codec::{decode_entry, encode_entry, Reader, MIN_ENTRY};
use crate::fsutil::{atomic_write, blocking, read_opt, sync_dir};
use crate::types::{sto_err, Entry, LogId, StorageError, Vote, TC};

/// A segment rolls over once it is this large.
pub(crate) const SEGMENT_MAX: u64 = 64 << 20;
/// No record may be larger (a bound on what a corrupt length can make us allocate).
const RECORD_MAX: usize = 256 << 20;
/// The newest entries kept in memory for replication: at most this many…
const CACHE_ENTRIES: usize = 4096;
/// …and at most this many payload bytes.
const CACHE_BYTES: usize = 8 << 20;

#[derive(Clone, Copy, Debug)]
struct Loc {
    seg: u64,
    off: u64,
    /// Record length including its 8-byte header.
    len: u32,
    term: u64,
    node: u64,
}

struct Segment {
    file: File,
    size: u64,
}

struct LogInner {
    dir: PathBuf,
    segs: BTreeMap<u64, Segment>,
    /// Index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    /// The last committed log id openraft told us (memory only).
    committed: Option<LogId>,
    cache: VecDeque<Entry>,
    cache_bytes: usize,
}

/// The log store (and, cloned, its reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    group_dir: PathBuf,
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn entry_bytes(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(p) => p.0.len() + 64,
        _ => 256,
    }
}

impl LogInner {
    fn last_index(&self) -> Option<u64> {
        if self.locs.is_empty() {
            None
        } else {
            Some(self.first + self.locs.len() as u64 - 1)
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        match self.locs.back() {
            Some(l) => Some(LogId::new(
                CommittedLeaderId::new(l.term, l.node),
                self.first + self.locs.len() as u64 - 1,
            )),
            None => self.purged,
        }
    }

    fn open_seg(dir: &Path, first: u64) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(seg_path(dir, first))
    }

    fn append(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut active: Option<u64> = self.segs.keys().next_back().copied();
        let mut new_locs = Vec::with_capacity(entries.len());
        for e in &entries {
            body.clear();
            encode_entry(e, &mut body);
            let rec_len = 8 + body.len() as u64;
            let size = active
                .and_then(|a| self.segs.get(&a))
                .map(|s| s.size + buf.len() as u64);
            let roll = match size {
                None => true,
                Some(sz) => sz > 0 && sz + rec_len > SEGMENT_MAX,
            };
            if roll {
                if let Some(a) = active {
                    self.flush_into(a, &mut buf)?;
                }
                let first = e.log_id.index;
                let file = Self::open_seg(&self.dir, first)?;
                sync_dir(&self.dir)?;
                self.segs.insert(first, Segment { file, size: 0 });
                active = Some(first);
            }
            let seg = active.unwrap_or(0);
            let off = self.segs.get(&seg).map(|s| s.size).unwrap_or(0) + buf.len() as u64;
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            new_locs.push(Loc {
                seg,
                off,
                len: rec_len as u32,
                term: e.log_id.leader_id.term,
                node: e.log_id.leader_id.node_id,
            });
        }
        if let Some(a) = active {
            self.flush_into(a, &mut buf)?;
            if let Some(s) = self.segs.get(&a) {
                s.file.sync_data()?;
            }
        }
        for (e, loc) in entries.into_iter().zip(new_locs) {
            if self.locs.is_empty() {
                self.first = e.log_id.index;
                self.cache.clear();
                self.cache_bytes = 0;
            }
            self.locs.push_back(loc);
            self.cache_bytes += entry_bytes(&e);
            self.cache.push_back(e);
        }
        while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
            match self.cache.pop_front() {
                Some(e) => self.cache_bytes -= entry_bytes(&e),
                None => break,
            }
        }
        Ok(())
    }

    /// Writes `buf` to segment `seg` (syncing it when it is not the last one written).
    fn flush_into(&mut self, seg: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let last = self.segs.keys().next_back().copied();
        if let Some(s) = self.segs.get_mut(&seg) {
            if !buf.is_empty() {
                s.file.write_all(buf)?;
                s.size += buf.len() as u64;
                buf.clear();
            }
            if Some(seg) != last {
                s.file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        let keep = index.saturating_sub(self.first) as usize;
        let (seg, off) = match self.locs.get(keep) {
            Some(l) => (l.seg, l.off),
            None => return Ok(()),
        };
        let later: Vec<u64> = self.segs.range(seg + 1..).map(|(k, _)| *k).collect();
        for k in later {
            self.segs.remove(&k);
            fs::remove_file(seg_path(&self.dir, k))?;
        }
        if off == 0 {
            self.segs.remove(&seg);
            fs::remove_file(seg_path(&self.dir, seg))?;
        } else if let Some(s) = self.segs.get_mut(&seg) {
            s.file.set_len(off)?;
            s.file.sync_all()?;
            s.size = off;
        }
        sync_dir(&self.dir)?;
        self.locs.truncate(keep);
        while self.cache.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        Ok(())
    }

    /// Drops the entries up to `upto` (inclusive) after recording it.
    fn purge(&mut self, upto: LogId, group_dir: &Path) -> io::Result<()> {
        if self.purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let j = serde_json::to_vec(&upto).map_err(io::Error::other)?;
        atomic_write(&group_dir.join("purged.json"), &j, true)?;
        self.purged = Some(upto);
        match self.last_index() {
            Some(last) if upto.index < last => {
                let n = (upto.index + 1).saturating_sub(self.first) as usize;
                self.locs.drain(..n.min(self.locs.len()));
                self.first = upto.index + 1;
            }
            _ => {
                self.locs.clear();
                self.first = upto.index + 1;
            }
        }
        while self
            .cache
            .front()
            .is_some_and(|e| e.log_id.index <= upto.index)
        {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        let min_live = self.locs.front().map(|l| l.seg).unwrap_or(u64::MAX);
        let dead: Vec<u64> = self.segs.range(..min_live).map(|(k, _)| *k).collect();
        for k in &dead {
            self.segs.remove(k);
            fs::remove_file(seg_path(&self.dir, *k))?;
        }
        if !dead.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, String> {
        let Some(last) = self.last_index() else {
            return Ok(Vec::new());
        };
        let start = start.max(self.first);
        let end = end.min(last + 1);
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let cache_first = self
            .cache
            .front()
            .map(|e| e.log_id.index)
            .unwrap_or(u64::MAX);
        let disk_end = end.min(cache_first);
        let mut i = start;
        while i < disk_end {
            // One read for the run of records in the same segment.
            let first_loc = self.locs[(i - self.first) as usize];
            let mut j = i;
            let mut total = 0u64;
            while j < disk_end {
                let l = self.locs[(j - self.first) as usize];
                if l.seg != first_loc.seg || total > (4 << 20) {
                    break;
                }
                total += u64::from(l.len);
                j += 1;
            }
            let seg = self
                .segs
                .get(&first_loc.seg)
                .ok_or_else(|| format!("segment {} missing", first_loc.seg))?;
            let mut buf = vec![0u8; total as usize];
            seg.file
                .read_exact_at(&mut buf, first_loc.off)
                .map_err(|e| format!("reading segment {}: {e}", first_loc.seg))?;
            let buf = bytes::Bytes::from(buf);
            let mut r = Reader::new(&buf);
            for idx in i..j {
                let len = r.u32()? as usize;
                let crc = r.u32()?;
                let body = r.take(len)?;
                if crc32c::crc32c(body) != crc {
                    return Err(format!("log entry {idx}: checksum mismatch"));
                }
                let e = decode_entry(&mut Reader::new(body), None)?;
                if e.log_id.index != idx {
                    return Err(format!("log entry {idx}: found index {}", e.log_id.index));
                }
                out.push(e);
            }
            i = j;
        }
        for e in self.cache.iter() {
            let idx = e.log_id.index;
            if idx >= i && idx < end {
                out.push(e.clone());
            }
        }
        Ok(out)
    }
}

/// What a record scan found in one segment.
enum Scan {
    Record {
        len: u32,
        body_head: Vec<u8>,
        ok: bool,
    },
    End,
    Torn,
}

fn scan_record(r: &mut BufReader<File>, body: &mut Vec<u8>) -> io::Result<Scan> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            return Ok(if got == 0 { Scan::End } else { Scan::Torn });
        }
        got += n;
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(MIN_ENTRY..=RECORD_MAX).contains(&len) {
        return Ok(Scan::Torn);
    }
    body.clear();
    let n = r.by_ref().take(len as u64).read_to_end(body)?;
    if n < len {
        return Ok(Scan::Torn);
    }
    let ok = crc32c::crc32c(body) == crc;
    Ok(Scan::Record {
        len: len as u32,
        body_head: body[..24].to_vec(),
        ok,
    })
}

impl LogStore {
    /// Opens (creating) the log under `group_dir`, recovering from a torn tail.
    pub(crate) fn open(group_dir: &Path) -> Result<LogStore, String> {
        let dir = group_dir.join("log");
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let vote = match read_opt(&group_dir.join("vote.json")).map_err(|e| e.to_string())? {
            Some(b) => {
                Some(serde_json::from_slice::<Vote>(&b).map_err(|e| format!("vote.json: {e}"))?)
            }
            None => None,
        };
        let purged = match read_opt(&group_dir.join("purged.json")).map_err(|e| e.to_string())? {
            Some(b) => {
                Some(serde_json::from_slice::<LogId>(&b).map_err(|e| format!("purged.json: {e}"))?)
            }
            None => None,
        };
        let mut names = Vec::new();
        for ent in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let ent = ent.map_err(|e| e.to_string())?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".seg") {
                if let Ok(n) = stem.parse::<u64>() {
                    names.push(n);
                }
            }
        }
        names.sort_unstable();
        let mut inner = LogInner {
            dir: dir.clone(),
            segs: BTreeMap::new(),
            first: purged.map(|p| p.index + 1).unwrap_or(0),
            locs: VecDeque::new(),
            purged,
            vote,
            committed: None,
            cache: VecDeque::new(),
            cache_bytes: 0,
        };
        let mut torn_at: Option<(u64, u64)> = None;
        let mut body = Vec::new();
        'segs: for &name in &names {
            let path = seg_path(&dir, name);
            let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut r = BufReader::with_capacity(256 << 10, file);
            let mut off = 0u64;
            loop {
                match scan_record(&mut r, &mut body)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                {
                    Scan::End => break,
                    Scan::Torn | Scan::Record { ok: false, .. } => {
                        torn_at = Some((name, off));
                        break 'segs;
                    }
                    Scan::Record {
                        len,
                        body_head,
                        ok: true,
                    } => {
                        let id = Reader::new(&body_head).log_id()?;
                        let expected = match inner.last_index() {
                            Some(l) => Some(l + 1),
                            None => purged.map(|p| p.index + 1),
                        };
                        if purged.is_some_and(|p| id.index <= p.index) {
                            off += 8 + u64::from(len);
                            continue;
                        }
                        if expected.is_some_and(|x| x != id.index) {
                            torn_at = Some((name, off));
                            break 'segs;
                        }
                        if inner.locs.is_empty() {
                            inner.first = id.index;
                        }
                        inner.locs.push_back(Loc {
                            seg: name,
                            off,
                            len: len + 8,
                            term: id.leader_id.term,
                            node: id.leader_id.node_id,
                        });
                        off += 8 + u64::from(len);
                    }
                }
            }
        }
        let mut changed = false;
        for &name in &names {
            let path = seg_path(&dir, name);
            let cut = match torn_at {
                Some((t, off)) if name == t => Some(off),
                Some((t, _)) if name > t => Some(0),
                _ => None,
            };
            let live = inner.locs.iter().any(|l| l.seg == name);
            match cut {
                Some(0) => {
                    tracing::warn!(segment = %path.display(), "raft log: dropping segment after a torn record");
                    fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    changed = true;
                    continue;
                }
                Some(off) => {
                    tracing::warn!(segment = %path.display(), offset = off, "raft log: torn tail dropped");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    f.set_len(off)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    f.sync_all()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                None => {}
            }
            if !live {
                // Only purged entries: obsolete.
                fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                changed = true;
                continue;
            }
            let file =
                LogInner::open_seg(&dir, name).map_err(|e| format!("{}: {e}", path.display()))?;
            let size = file.metadata().map_err(|e| e.to_string())?.len();
            inner.segs.insert(name, Segment { file, size });
        }
        if changed {
            sync_dir(&dir).map_err(|e| e.to_string())?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            group_dir: group_dir.to_path_buf(),
        })
    }

    pub(crate) fn has_state(&self) -> bool {
        let g = self.inner.lock();
        g.vote.is_some() || g.last_log_id().is_some()
    }

    pub(crate) fn last_log_index(&self) -> Option<u64> {
        self.inner.lock().last_log_id().map(|l| l.index)
    }

    pub(crate) fn committed(&self) -> Option<u64> {
        self.inner.lock().committed.map(|l| l.index)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TC> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        let inner = self.inner.clone();
        blocking(move || inner.lock().read(start, end)).map_err(|e| sto_err(ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TC> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TC>, StorageError> {
        let g = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: g.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let j = serde_json::to_vec(vote).map_err(|e| sto_err(ErrorVerb::Write, e))?;
        let path = self.group_dir.join("vote.json");
        blocking(|| atomic_write(&path, &j, true)).map_err(|e| sto_err(ErrorVerb::Write, e))?;
        self.inner.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner.lock().committed = committed;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TC>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let inner = self.inner.clone();
        match blocking(move || inner.lock().append(entries)) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(sto_err(ErrorVerb::Write, msg))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.lock().truncate(log_id.index))
            .map_err(|e| sto_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let dir = self.group_dir.clone();
        blocking(move || inner.lock().purge(log_id, &dir))
            .map_err(|e| sto_err(ErrorVerb::Delete, e))
    }
}
