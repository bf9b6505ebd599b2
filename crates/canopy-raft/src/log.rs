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
use tokio::sync::oneshot;

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
    file: Arc<File>,
    /// Its size once the queued writes are done.
    size: u64,
}

/// File work run by the writer, in queue order.
type FileWork = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// The writer's queue: writes (fsynced together per drained batch, then acknowledged) and
/// other file work (run after the writes queued before it are durable).
enum Op {
    Write {
        file: Arc<File>,
        buf: Vec<u8>,
        new_seg: bool,
        /// The last index this write makes durable.
        upto: Option<u64>,
        cb: Option<LogFlushed<TC>>,
    },
    Run(FileWork, oneshot::Sender<io::Result<()>>),
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
    /// The writer's pending work, and whether a writer is draining it.
    queue: VecDeque<Op>,
    writing: bool,
    /// The last index known fsynced.
    durable: Option<u64>,
    /// A failed write: the log refuses further work (openraft stops the group).
    failed: Option<String>,
    /// Roll segments past this size ([`SEGMENT_MAX`]; smaller in tests).
    seg_max: u64,
    /// [`crate::GroupConfig::log_sync`]: `None` fsyncs every batch before acknowledging it.
    sync_every: Option<std::time::Duration>,
    /// The last fsync, and files written since without one (interval mode).
    last_sync: std::time::Instant,
    dirty: Vec<Arc<File>>,
    /// Batches fsynced (for tests and logs).
    syncs: u64,
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

    /// Encodes `entries` and queues their write; positions and the cache are updated at
    /// once (reads of entries not yet on disk are served from the cache, which never drops
    /// them before they are durable). Returns the write operations to queue.
    fn append(&mut self, entries: Vec<Entry>, cb: Option<LogFlushed<TC>>) -> io::Result<()> {
        if entries.is_empty() {
            // Nothing to write: durable already (no fsync for nothing).
            if let Some(cb) = cb {
                cb.log_io_completed(Ok(()));
            }
            return Ok(());
        }
        let mut body: Vec<u8> = Vec::new();
        let mut ops: Vec<Op> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut active: Option<u64> = self.segs.keys().next_back().copied();
        let mut new_seg = false;
        let mut upto = None;
        for e in entries {
            body.clear();
            encode_entry(&e, &mut body);
            let rec_len = 8 + body.len() as u64;
            let size = active.and_then(|a| self.segs.get(&a)).map(|s| s.size);
            let roll = match size {
                None => true,
                Some(sz) => sz > 0 && sz + rec_len > self.seg_max,
            };
            if roll {
                if let Some(a) = active {
                    if let Some(seg) = self.segs.get(&a) {
                        if !buf.is_empty() {
                            ops.push(Op::Write {
                                file: seg.file.clone(),
                                buf: std::mem::take(&mut buf),
                                new_seg,
                                upto: None,
                                cb: None,
                            });
                        }
                    }
                }
                let first = e.log_id.index;
                let file = Arc::new(Self::open_seg(&self.dir, first)?);
                self.segs.insert(first, Segment { file, size: 0 });
                active = Some(first);
                new_seg = true;
            }
            let seg = active.unwrap_or(0);
            let Some(s) = self.segs.get_mut(&seg) else {
                return Err(io::Error::other("active segment missing"));
            };
            let off = s.size;
            s.size += rec_len;
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            if self.locs.is_empty() {
                self.first = e.log_id.index;
                self.cache.clear();
                self.cache_bytes = 0;
            }
            self.locs.push_back(Loc {
                seg,
                off,
                len: rec_len as u32,
                term: e.log_id.leader_id.term,
                node: e.log_id.leader_id.node_id,
            });
            upto = Some(e.log_id.index);
            self.cache_bytes += entry_bytes(&e);
            self.cache.push_back(e);
        }
        match active.and_then(|a| self.segs.get(&a)) {
            Some(seg) => ops.push(Op::Write {
                file: seg.file.clone(),
                buf,
                new_seg,
                upto,
                cb,
            }),
            // Nothing to write (an empty append): durable already.
            None => {
                if let Some(cb) = cb {
                    cb.log_io_completed(Ok(()));
                }
            }
        }
        self.queue.extend(ops);
        Ok(())
    }

    /// Drops cached entries beyond the cache's bounds, never one not yet durable.
    fn evict(&mut self) {
        while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
            let front_durable = match (self.cache.front(), self.durable) {
                (Some(e), Some(d)) => e.log_id.index <= d,
                _ => false,
            };
            if !front_durable {
                break;
            }
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
    }

    /// Drops the entries from `index` on (in memory now); returns the file work.
    fn truncate(&mut self, index: u64) -> Option<FileWork> {
        let last = self.last_index()?;
        if index > last {
            return None;
        }
        let keep = index.saturating_sub(self.first) as usize;
        let (seg, off) = self.locs.get(keep).map(|l| (l.seg, l.off))?;
        let mut remove: Vec<PathBuf> = Vec::new();
        let later: Vec<u64> = self.segs.range(seg + 1..).map(|(k, _)| *k).collect();
        for k in later {
            self.segs.remove(&k);
            remove.push(seg_path(&self.dir, k));
        }
        let mut cut = None;
        if off == 0 {
            self.segs.remove(&seg);
            remove.push(seg_path(&self.dir, seg));
        } else if let Some(s) = self.segs.get_mut(&seg) {
            s.size = off;
            cut = Some((s.file.clone(), off));
        }
        self.locs.truncate(keep);
        while self.cache.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= entry_bytes(&e);
            }
        }
        if self.durable.is_some_and(|d| d >= index) {
            self.durable = index.checked_sub(1);
        }
        let dir = self.dir.clone();
        Some(Box::new(move || {
            for p in &remove {
                remove_if_exists(p)?;
            }
            if let Some((f, off)) = cut {
                f.set_len(off)?;
                f.sync_all()?;
            }
            sync_dir(&dir)
        }))
    }

    /// Drops the entries up to `upto` (inclusive) in memory; returns the file work, which
    /// records `upto` durably before deleting anything.
    fn purge(&mut self, upto: LogId, group_dir: &Path) -> io::Result<Option<FileWork>> {
        if self.purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(None);
        }
        let j = serde_json::to_vec(&upto).map_err(io::Error::other)?;
        self.purged = Some(upto);
        match self.last_index() {
            Some(last) if upto.index < last => {
                let n = (upto.index + 1).saturating_sub(self.first) as usize;
                self.locs.drain(..n.min(self.locs.len()));
            }
            _ => self.locs.clear(),
        }
        self.first = upto.index + 1;
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
        let mut remove = Vec::new();
        for k in dead {
            self.segs.remove(&k);
            remove.push(seg_path(&self.dir, k));
        }
        let dir = self.dir.clone();
        let purged_path = group_dir.join("purged.json");
        Ok(Some(Box::new(move || {
            atomic_write(&purged_path, &j, true)?;
            for p in &remove {
                remove_if_exists(p)?;
            }
            if !remove.is_empty() {
                sync_dir(&dir)?;
            }
            Ok(())
        })))
    }

    /// Does reading `start..end` need the disk (some of it is older than the cache)?
    fn reads_disk(&self, start: u64, end: u64) -> bool {
        let Some(last) = self.last_index() else {
            return false;
        };
        let (start, end) = (start.max(self.first), end.min(last + 1));
        let cache_first = self.cache.front().map_or(u64::MAX, |e| e.log_id.index);
        start < end && start < cache_first
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
        // The cache is in log order: start at the first wanted entry instead of walking
        // the whole cache (up to CACHE_ENTRIES) on each of the several reads per entry.
        let from = self.cache.partition_point(|e| e.log_id.index < i);
        for e in self.cache.range(from..) {
            if e.log_id.index >= end {
                break;
            }
            out.push(e.clone());
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
    /// Sets [`crate::GroupConfig::log_sync`].
    pub(crate) fn set_sync(&self, every: Option<std::time::Duration>) {
        self.inner.lock().sync_every = every;
    }

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
            queue: VecDeque::new(),
            writing: false,
            durable: None,
            failed: None,
            seg_max: SEGMENT_MAX,
            sync_every: None,
            last_sync: std::time::Instant::now(),
            dirty: Vec::new(),
            syncs: 0,
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
            inner.segs.insert(
                name,
                Segment {
                    file: Arc::new(file),
                    size,
                },
            );
        }
        if changed {
            sync_dir(&dir).map_err(|e| e.to_string())?;
        }
        inner.durable = inner.last_index();
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

impl LogStore {
    /// Starts a writer for the queue unless one is draining it.
    ///
    /// In interval mode, while no fsync is due, appends to existing segments only reach
    /// the page cache: they are written here, in the caller's context, rather than handed
    /// to a blocking thread (a thread wake-up and a hop per append on every member, on the
    /// path of every replicated entry). Their fsync, when it comes due, is left to the
    /// next batch, which goes to a blocking thread.
    fn kick(&self) {
        let inline = {
            let mut g = self.inner.lock();
            if g.writing || g.queue.is_empty() {
                return;
            }
            g.writing = true;
            g.sync_every.is_some_and(|d| g.last_sync.elapsed() < d)
                && g.queue
                    .iter()
                    .all(|op| matches!(op, Op::Write { new_seg: false, .. }))
        };
        let inner = self.inner.clone();
        if inline {
            return drain(&inner, true);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || drain(&inner, false));
            }
            Err(_) => drain(&inner, false),
        }
    }

    /// Queues file work behind the pending writes and waits for it.
    async fn run(&self, work: FileWork) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner.lock().queue.push_back(Op::Run(work, tx));
        self.kick();
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("raft log writer stopped")))
    }
}

/// The writer: drains the queue in order. Writes queued together share one fsync per
/// segment (group commit across appends), after which their callbacks are called. With
/// `inline` (interval mode, written in the caller's context) no fsync is made: the files
/// stay dirty for the next batch.
fn drain(inner: &Arc<Mutex<LogInner>>, inline: bool) {
    loop {
        let (ops, dir, failed) = {
            let mut g = inner.lock();
            if g.queue.is_empty() {
                g.writing = false;
                return;
            }
            (
                std::mem::take(&mut g.queue),
                g.dir.clone(),
                g.failed.clone(),
            )
        };
        let mut batch = Batch {
            failed,
            defer_sync: inline,
            ..Default::default()
        };
        for op in ops {
            match op {
                Op::Write {
                    file,
                    buf,
                    new_seg,
                    upto,
                    cb,
                } => {
                    if batch.failed.is_none() {
                        if let Err(e) = (&*file).write_all(&buf) {
                            batch.failed = Some(e.to_string());
                        }
                    }
                    if !batch.files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                        batch.files.push(file);
                    }
                    batch.new_seg |= new_seg;
                    if upto.is_some() {
                        batch.upto = upto;
                    }
                    batch.cbs.extend(cb);
                }
                Op::Run(work, tx) => {
                    batch.finish(inner, &dir);
                    let r = match &batch.failed {
                        Some(f) => Err(io::Error::other(f.clone())),
                        None => work(),
                    };
                    if let Err(e) = &r {
                        batch.failed = Some(e.to_string());
                        inner.lock().failed = Some(e.to_string());
                    }
                    let _ = tx.send(r);
                }
            }
        }
        batch.finish(inner, &dir);
    }
}

#[derive(Default)]
struct Batch {
    files: Vec<Arc<File>>,
    new_seg: bool,
    upto: Option<u64>,
    cbs: Vec<LogFlushed<TC>>,
    failed: Option<String>,
    /// Never fsync (an inline drain in interval mode): files written join the dirty ones.
    defer_sync: bool,
}

impl Batch {
    /// Makes the batch's writes durable and acknowledges them.
    fn finish(&mut self, inner: &Arc<Mutex<LogInner>>, dir: &Path) {
        let t = std::time::Instant::now();
        // Interval mode: written is acknowledged (the OS holds it; a process kill loses
        // nothing), and the files written meanwhile are fsynced once the interval is up.
        let sync = {
            let mut g = inner.lock();
            let due = !self.defer_sync && g.sync_every.is_none_or(|d| g.last_sync.elapsed() >= d);
            if due {
                g.last_sync = t;
                g.syncs += 1;
                for f in std::mem::take(&mut g.dirty) {
                    if !self.files.iter().any(|x| Arc::ptr_eq(x, &f)) {
                        self.files.push(f);
                    }
                }
            } else {
                for f in &self.files {
                    if !g.dirty.iter().any(|x| Arc::ptr_eq(x, f)) {
                        g.dirty.push(f.clone());
                    }
                }
            }
            due
        };
        if self.failed.is_none() && sync {
            for f in &self.files {
                if let Err(e) = f.sync_data() {
                    self.failed = Some(e.to_string());
                    break;
                }
            }
        }
        if t.elapsed() > std::time::Duration::from_secs(1) {
            tracing::warn!(dir = %dir.display(), "raft log fsync took {:?}", t.elapsed());
        }
        if self.failed.is_none() && self.new_seg {
            if let Err(e) = sync_dir(dir) {
                self.failed = Some(e.to_string());
            }
        }
        {
            let mut g = inner.lock();
            match &self.failed {
                Some(f) => {
                    tracing::error!(dir = %dir.display(), "raft log write failed: {f}");
                    g.failed = Some(f.clone());
                }
                None => {
                    if self.upto.is_some() && self.upto > g.durable {
                        g.durable = self.upto;
                    }
                    g.evict();
                }
            }
        }
        for cb in self.cbs.drain(..) {
            match &self.failed {
                None => cb.log_io_completed(Ok(())),
                Some(f) => cb.log_io_completed(Err(io::Error::other(f.clone()))),
            }
        }
        self.files.clear();
        self.new_seg = false;
        self.upto = None;
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
        {
            // The replication of a new entry reads it from the cache: served here, without
            // handing the runtime worker's tasks to another thread (`block_in_place`).
            let g = inner.lock();
            if !g.reads_disk(start, end) {
                return g.read(start, end).map_err(|e| sto_err(ErrorVerb::Read, e));
            }
        }
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
        {
            let mut g = self.inner.lock();
            if let Some(f) = &g.failed {
                let f = f.clone();
                callback.log_io_completed(Err(io::Error::other(f.clone())));
                return Err(sto_err(ErrorVerb::Write, f));
            }
            g.append(entries, Some(callback))
                .map_err(|e| sto_err(ErrorVerb::Write, e))?;
        }
        self.kick();
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let work = self.inner.lock().truncate(log_id.index);
        match work {
            Some(w) => self.run(w).await.map_err(|e| sto_err(ErrorVerb::Delete, e)),
            None => Ok(()),
        }
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let work = self
            .inner
            .lock()
            .purge(log_id, &self.group_dir)
            .map_err(|e| sto_err(ErrorVerb::Delete, e))?;
        match work {
            Some(w) => self.run(w).await.map_err(|e| sto_err(ErrorVerb::Delete, e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Payload;
    use bytes::Bytes;
    use openraft::EntryPayload;
    use std::time::{Duration, Instant};

    fn ent(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Payload(Bytes::from(format!("payload {term}/{index}")))),
        }
    }

    async fn append(st: &LogStore, es: Vec<Entry>) {
        let last = es.last().map(|e| e.log_id.index);
        st.inner.lock().append(es, None).expect("append");
        st.kick();
        let deadline = Instant::now() + Duration::from_secs(5);
        while st.inner.lock().durable < last {
            assert!(Instant::now() < deadline, "not durable");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn read_all(st: &LogStore) -> Vec<Entry> {
        st.inner.lock().read(0, u64::MAX).expect("read")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_truncate_purge_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = LogStore::open(dir.path()).expect("open");
        st.inner.lock().seg_max = 300;
        let mut want: Vec<Entry> = (0..40).map(|i| ent(1, i)).collect();
        for chunk in want.chunks(7) {
            append(&st, chunk.to_vec()).await;
        }
        assert_eq!(read_all(&st), want);
        // A range inside the cache.
        assert_eq!(st.inner.lock().read(10, 20).expect("read"), want[10..20]);
        let segs = fs::read_dir(dir.path().join("log")).expect("dir").count();
        assert!(segs > 3, "segments rolled: {segs}");

        // A conflicting suffix from index 25 is replaced by term 2 entries.
        let w = st.inner.lock().truncate(25).expect("work");
        st.run(w).await.expect("truncate");
        want.truncate(25);
        let more: Vec<Entry> = (25..45).map(|i| ent(2, i)).collect();
        append(&st, more.clone()).await;
        want.extend(more);
        assert_eq!(read_all(&st), want);

        // Drop everything up to 30 after a snapshot.
        let upto = want[30].log_id;
        let w = st
            .inner
            .lock()
            .purge(upto, dir.path())
            .expect("purge")
            .expect("work");
        st.run(w).await.expect("purge");
        want.drain(..31);
        assert_eq!(read_all(&st), want);
        // Reads beyond the cache come from the segments.
        st.inner.lock().cache.clear();
        st.inner.lock().cache_bytes = 0;
        assert_eq!(read_all(&st), want);

        let st2 = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(read_all(&st2), want);
        let g = st2.inner.lock();
        assert_eq!(g.purged, Some(upto));
        assert_eq!(g.last_log_id(), want.last().map(|e| e.log_id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interval_mode_acknowledges_written_appends_and_syncs_when_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = LogStore::open(dir.path()).expect("open");
        st.set_sync(Some(Duration::from_secs(3600)));
        let want: Vec<Entry> = (0..20).map(|i| ent(1, i)).collect();
        for e in &want {
            append(&st, vec![e.clone()]).await;
        }
        assert_eq!(
            st.inner.lock().syncs,
            0,
            "no fsync before the interval is up"
        );
        assert!(
            !st.inner.lock().dirty.is_empty(),
            "written files wait for their fsync"
        );
        // No fsync due and the segment exists: written in place, acknowledged on return.
        st.inner
            .lock()
            .append(vec![ent(1, 20)], None)
            .expect("append");
        st.kick();
        assert_eq!(st.inner.lock().durable, Some(20));
        assert!(!st.inner.lock().writing);
        // The interval is up: the next batch fsyncs what waited.
        st.set_sync(Some(Duration::ZERO));
        append(&st, vec![ent(1, 21)]).await;
        assert_eq!(st.inner.lock().syncs, 1);
        assert!(st.inner.lock().dirty.is_empty());
        // The default fsyncs every batch.
        st.set_sync(None);
        append(&st, vec![ent(1, 22)]).await;
        append(&st, vec![ent(1, 23)]).await;
        assert_eq!(st.inner.lock().syncs, 3);
        assert_eq!(
            read_all(&st),
            (0..24).map(|i| ent(1, i)).collect::<Vec<_>>()
        );
    }
}
