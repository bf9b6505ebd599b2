//! The file layer: every file operation the store performs goes through [`Fs`], so tests can
//! swap the real file system ([`StdFs`]) for [`FakeFs`], an in-memory one that can cut the
//! process off after exactly N more written bytes (a `kill -9` in the middle of a write).
//!
//! Model of a process crash: bytes a `write` call handed to the kernel survive; nothing
//! after the cut point does, and every later operation fails.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{IoContext, Result, StoreError};

/// An open file: appended to at its end, read at offsets.
pub trait FsFile: Send + Sync {
    /// Appends the whole buffer with one `write(2)`-like call (or fails).
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `off`.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates (or extends) to `len`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A held directory lock; dropping it releases the lock.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// The file-system operations the store needs.
pub trait Fs: Send + Sync {
    fn create_dir_all(&self, p: &Path) -> io::Result<()>;
    /// Opens for reading and appending, creating the file if needed.
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn FsFile>>;
    fn open_read(&self, p: &Path) -> io::Result<Box<dyn FsFile>>;
    /// The whole file, or `None` if it does not exist.
    fn read_file(&self, p: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Writes `data` to `p` atomically: temp file, optional fsync, rename, optional dir fsync.
    fn write_atomic(&self, p: &Path, data: &[u8], sync: bool) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    fn remove_file(&self, p: &Path) -> io::Result<()>;
    /// File names (not paths) in a directory; empty if it does not exist.
    fn list_dir(&self, p: &Path) -> io::Result<Vec<String>>;
    fn sync_dir(&self, p: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir/LOCK`; `Ok(None)` if someone else holds it.
    fn try_lock(&self, dir: &Path) -> io::Result<Option<LockGuard>>;
}

/// Takes the exclusive lock on a store directory or returns [`StoreError::Locked`] naming it.
pub fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<LockGuard> {
    fs.create_dir_all(dir).ctx("create dir", dir)?;
    match fs.try_lock(dir).ctx("lock", dir)? {
        Some(g) => Ok(g),
        None => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        }),
    }
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The real file system (std I/O).
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(File);

impl FsFile for StdFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, off)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Fs for StdFs {
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        std::fs::create_dir_all(p)
    }
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(p)?;
        Ok(Box::new(StdFile(f)))
    }
    fn open_read(&self, p: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(StdFile(File::open(p)?)))
    }
    fn read_file(&self, p: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(p) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn write_atomic(&self, p: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        let tmp = tmp_path(p);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            if sync {
                f.sync_data()?;
            }
        }
        std::fs::rename(&tmp, p)?;
        if sync {
            if let Some(d) = p.parent() {
                self.sync_dir(d)?;
            }
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<String>> {
        let rd = match std::fs::read_dir(p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        File::open(p)?.sync_all()
    }
    fn try_lock(&self, dir: &Path) -> io::Result<Option<LockGuard>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Box::new(f))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[derive(Default)]
struct FakeState {
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Bytes that may still be written before the simulated crash; `None` = unlimited.
    budget: Option<u64>,
    crashed: bool,
    locks: HashSet<PathBuf>,
    written: u64,
    syncs: u64,
}

/// An in-memory file system whose "process" can be killed after a byte budget.
///
/// Directories are implicit (any path prefix). Handles address files by path, so a handle
/// opened before a rename sees the new file; the store never relies on either behaviour.
#[derive(Clone, Default)]
pub struct FakeFs(Arc<Mutex<FakeState>>);

impl FakeFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> MutexGuard<'_, FakeState> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// After `n` more bytes are written the process "dies": the write in progress is cut
    /// short and every later operation fails.
    pub fn crash_after(&self, n: u64) {
        self.st().budget = Some(n);
    }

    /// Starts a new "process" on the same files: no crash pending, locks released.
    pub fn restart(&self) {
        let mut s = self.st();
        s.budget = None;
        s.crashed = false;
        s.locks.clear();
    }

    pub fn crashed(&self) -> bool {
        self.st().crashed
    }

    /// Total bytes written so far (data files and atomic writes).
    pub fn bytes_written(&self) -> u64 {
        self.st().written
    }

    /// Number of fsync calls (files and directories).
    pub fn syncs(&self) -> u64 {
        self.st().syncs
    }

    /// A copy of one file's contents.
    pub fn file(&self, p: &Path) -> Option<Vec<u8>> {
        self.st().files.get(p).cloned()
    }

    /// Overwrites one file's contents (for corruption tests).
    pub fn set_file(&self, p: &Path, data: Vec<u8>) {
        self.st().files.insert(p.to_path_buf(), data);
    }

    /// Paths of every file.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.st().files.keys().cloned().collect()
    }
}

fn crashed_err() -> io::Error {
    io::Error::other("simulated crash")
}

impl FakeState {
    fn alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(crashed_err())
        } else {
            Ok(())
        }
    }

    /// Appends as much of `buf` as the budget allows.
    fn write(&mut self, p: &Path, buf: &[u8]) -> io::Result<()> {
        self.alive()?;
        let allowed = match self.budget {
            Some(b) => (b.min(buf.len() as u64)) as usize,
            None => buf.len(),
        };
        self.files
            .entry(p.to_path_buf())
            .or_default()
            .extend_from_slice(&buf[..allowed]);
        self.written += allowed as u64;
        if let Some(b) = self.budget.as_mut() {
            *b -= allowed as u64;
            if allowed < buf.len() {
                self.crashed = true;
                return Err(crashed_err());
            }
        }
        Ok(())
    }
}

struct FakeFile {
    fs: FakeFs,
    path: PathBuf,
}

impl FsFile for FakeFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.fs.st().write(&self.path, buf)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = self.fs.st();
        let f = s.files.get(&self.path).ok_or(io::ErrorKind::NotFound)?;
        let start = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = f
            .get(start..start.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let s = self.fs.st();
        Ok(s.files.get(&self.path).map_or(0, |f| f.len() as u64))
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.st();
        s.alive()?;
        s.syncs += 1;
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.fs.st();
        s.alive()?;
        let f = s.files.entry(self.path.clone()).or_default();
        f.resize(len as usize, 0);
        Ok(())
    }
}

struct FakeLock {
    fs: FakeFs,
    path: PathBuf,
}

impl Drop for FakeLock {
    fn drop(&mut self) {
        self.fs.st().locks.remove(&self.path);
    }
}

impl Fs for FakeFs {
    fn create_dir_all(&self, _p: &Path) -> io::Result<()> {
        self.st().alive()
    }
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut s = self.st();
        s.alive()?;
        s.files.entry(p.to_path_buf()).or_default();
        Ok(Box::new(FakeFile {
            fs: self.clone(),
            path: p.to_path_buf(),
        }))
    }
    fn open_read(&self, p: &Path) -> io::Result<Box<dyn FsFile>> {
        if !self.st().files.contains_key(p) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(Box::new(FakeFile {
            fs: self.clone(),
            path: p.to_path_buf(),
        }))
    }
    fn read_file(&self, p: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.st().files.get(p).cloned())
    }
    fn write_atomic(&self, p: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        let tmp = tmp_path(p);
        let mut s = self.st();
        s.alive()?;
        s.files.insert(tmp.clone(), Vec::new());
        s.write(&tmp, data)?;
        if sync {
            s.syncs += 2;
        }
        let v = s.files.remove(&tmp).unwrap_or_default();
        s.files.insert(p.to_path_buf(), v);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.alive()?;
        let v = s.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.files.insert(to.to_path_buf(), v);
        Ok(())
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.alive()?;
        s.files.remove(p);
        Ok(())
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<String>> {
        let s = self.st();
        Ok(s.files
            .keys()
            .filter(|k| k.parent() == Some(p))
            .filter_map(|k| k.file_name()?.to_str().map(str::to_string))
            .collect())
    }
    fn sync_dir(&self, _p: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.alive()?;
        s.syncs += 1;
        Ok(())
    }
    fn try_lock(&self, dir: &Path) -> io::Result<Option<LockGuard>> {
        let mut s = self.st();
        s.alive()?;
        if !s.locks.insert(dir.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(FakeLock {
            fs: self.clone(),
            path: dir.to_path_buf(),
        })))
    }
}
