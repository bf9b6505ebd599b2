//! The state machine adaptor: feeds committed entries to the application's
//! [`StateMachine`](crate::StateMachine) and keeps the applied log id, the membership and the
//! last snapshot on disk.
//!
//! Files under the group's directory:
//! - `applied.json`: the last applied log id and the membership, replaced (rename) at most
//!   every 250 ms while entries are applied and with each membership change, *after* the
//!   application applied them. It is not fsynced: losing it (or its lag) to a
//!   crash only means re-applying entries (apply is idempotent by index), and the log, which
//!   is fsynced, still holds them (it is only purged up to a snapshot, whose own record wins).
//! - `snapshot.bin`: the last snapshot, `[meta length u32][meta JSON][data][crc32c u32]`,
//!   replaced atomically and fsynced.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec::Reader;
use crate::fsutil::{atomic_write, blocking, read_opt};
use crate::types::{
    sto_err, Entry, LogId, Payload, SnapshotMeta, StorageError, StoredMembership, TC,
};
use crate::StateMachine;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

struct State {
    applied: Applied,
    snapshot_seq: u64,
    /// When `applied.json` was last written.
    persisted: Option<std::time::Instant>,
}

/// How often `applied.json` is rewritten while entries are applied (and at once with a
/// membership change). Writing it after every applied batch cost an open and a rename per
/// replicated publish on every member; a stale record only means re-applying the entries
/// after it at the next start (apply is idempotent by index, and the log holds them).
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) struct SmShared {
    app: Arc<dyn StateMachine>,
    dir: PathBuf,
    /// Held while the application applies, snapshots or restores, so a snapshot's metadata
    /// always matches the state it was taken from.
    state: Mutex<State>,
    /// The applied index + 1 (0: nothing), readable without the lock (status() from
    /// inside `apply` must not deadlock).
    applied_next: AtomicU64,
    /// Held across an application's `apply_run` (awaited, so `state` cannot be held), a
    /// snapshot and an install: a snapshot never sees a run half applied.
    gate: tokio::sync::Mutex<()>,
}

/// The adaptor openraft drives.
#[derive(Clone)]
pub(crate) struct SmStore {
    shared: Arc<SmShared>,
}

fn read_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
    let path = dir.join("snapshot.bin");
    let Some(b) = read_opt(&path).map_err(|e| format!("{}: {e}", path.display()))? else {
        return Ok(None);
    };
    if b.len() < 8 {
        return Err(format!("{}: too short", path.display()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(format!("{}: checksum mismatch", path.display()));
    }
    let mut r = Reader::new(body);
    let n = r.u32()? as usize;
    let meta: SnapshotMeta =
        serde_json::from_slice(r.take(n)?).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((meta, r.rest().to_vec())))
}

fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), String> {
    let j = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
    let mut b = Vec::with_capacity(8 + j.len() + data.len());
    b.extend_from_slice(&(j.len() as u32).to_le_bytes());
    b.extend_from_slice(&j);
    b.extend_from_slice(data);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    atomic_write(&dir.join("snapshot.bin"), &b, true).map_err(|e| e.to_string())
}

fn next_of(l: Option<LogId>) -> u64 {
    l.map(|l| l.index + 1).unwrap_or(0)
}

impl SmShared {
    fn persist_applied(&self, a: &Applied) -> Result<(), String> {
        self.applied_next
            .store(next_of(a.last_applied), Ordering::Relaxed);
        let j = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        atomic_write(&self.dir.join("applied.json"), &j, false).map_err(|e| e.to_string())
    }
}

impl SmStore {
    /// Loads the applied state: the newer of `applied.json` and the snapshot's metadata.
    pub(crate) fn open(dir: &Path, app: Arc<dyn StateMachine>) -> Result<SmStore, String> {
        let mut applied: Applied = match read_opt(&dir.join("applied.json")) {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(dir = %dir.display(), "raft: applied.json unreadable ({e}); re-applying from the log");
                Applied::default()
            }),
            Ok(None) => Applied::default(),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let snap = read_snapshot_file(dir)?;
        if !app.durable() {
            // The application starts empty: give it the snapshot, then the log after it.
            applied = Applied::default();
            if let Some((meta, data)) = &snap {
                let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
                app.restore(index, data)
                    .map_err(|e| format!("restoring the snapshot at {index}: {e}"))?;
            }
        }
        if let Some((meta, _)) = snap {
            if meta.last_log_id > applied.last_applied {
                applied.last_applied = meta.last_log_id;
                applied.membership = meta.last_membership.clone();
            }
        }
        Ok(SmStore {
            shared: Arc::new(SmShared {
                app,
                dir: dir.to_path_buf(),
                applied_next: AtomicU64::new(next_of(applied.last_applied)),
                state: Mutex::new(State {
                    applied,
                    snapshot_seq: 0,
                    persisted: None,
                }),
                gate: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub(crate) fn applied_index(&self) -> Option<u64> {
        self.shared
            .state
            .lock()
            .applied
            .last_applied
            .map(|l| l.index)
    }
}

impl SmStore {
    /// `apply` for an application that applies on its own thread: the batch's normal
    /// entries go over as one run and are awaited; the applied record is updated after.
    async fn apply_elsewhere(&self, entries: Vec<Entry>) -> Result<Vec<Payload>, StorageError> {
        let shared = &self.shared;
        let _gate = shared.gate.lock().await;
        let mut run = Vec::new();
        let mut normal = Vec::with_capacity(entries.len());
        let mut last = None;
        let mut membership = None;
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Normal(p) => {
                    normal.push(true);
                    run.push((e.log_id.index, p.0));
                }
                EntryPayload::Membership(m) => {
                    normal.push(false);
                    membership = Some(StoredMembership::new(Some(e.log_id), m));
                }
                EntryPayload::Blank => normal.push(false),
            }
        }
        let n = run.len();
        let mut answers = if run.is_empty() {
            Vec::new()
        } else {
            shared.app.apply_run(run).await
        }
        .into_iter();
        if answers.len() != n {
            return Err(sto_err(
                ErrorVerb::Write,
                format!("the application answered {} of {n} entries", answers.len()),
            ));
        }
        let out = normal
            .into_iter()
            .map(|is| {
                Payload(if is {
                    answers.next().unwrap_or_default()
                } else {
                    Bytes::new()
                })
            })
            .collect();
        let persist = {
            let mut st = shared.state.lock();
            if last.is_some() {
                st.applied.last_applied = last;
            }
            let changed = membership.is_some();
            if let Some(m) = membership {
                st.applied.membership = m;
            }
            shared
                .applied_next
                .store(next_of(st.applied.last_applied), Ordering::Relaxed);
            changed || st.persisted.is_none_or(|t| t.elapsed() >= PERSIST_EVERY)
        };
        if persist {
            let shared = shared.clone();
            blocking(move || {
                let mut st = shared.state.lock();
                shared.persist_applied(&st.applied)?;
                st.persisted = Some(std::time::Instant::now());
                Ok::<_, String>(())
            })
            .map_err(|e| sto_err(ErrorVerb::Write, e))?;
        }
        Ok(out)
    }
}

impl RaftSnapshotBuilder<TC> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TC>, StorageError> {
        let shared = self.shared.clone();
        let _gate = self.shared.gate.lock().await;
        let (meta, data) = blocking(move || {
            let mut st = shared.state.lock();
            let data = shared.app.snapshot()?;
            st.snapshot_seq += 1;
            let last = st.applied.last_applied;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: st.applied.membership.clone(),
                snapshot_id: format!(
                    "{}-{}-{}",
                    last.map(|l| l.leader_id.term).unwrap_or(0),
                    last.map(|l| l.index).unwrap_or(0),
                    st.snapshot_seq
                ),
            };
            // Still under the lock: an install cannot interleave with this file write.
            write_snapshot_file(&shared.dir, &meta, &data)?;
            drop(st);
            Ok::<_, String>((meta, data))
        })
        .map_err(|e| sto_err(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        })
    }
}

impl RaftStateMachine<TC> for SmStore {
    type SnapshotBuilder = SmStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.shared.state.lock();
        Ok((st.applied.last_applied, st.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Payload>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let shared = self.shared.clone();
        if shared.app.applies_elsewhere() {
            return self.apply_elsewhere(entries).await;
        }
        blocking(move || {
            let mut st = shared.state.lock();
            let mut out = Vec::with_capacity(entries.len());
            let mut membership = false;
            for e in entries {
                let resp = match e.payload {
                    EntryPayload::Normal(p) => shared.app.apply(e.log_id.index, &p.0),
                    EntryPayload::Membership(m) => {
                        st.applied.membership = StoredMembership::new(Some(e.log_id), m);
                        membership = true;
                        Bytes::new()
                    }
                    EntryPayload::Blank => Bytes::new(),
                };
                st.applied.last_applied = Some(e.log_id);
                out.push(Payload(resp));
            }
            if membership || st.persisted.is_none_or(|t| t.elapsed() >= PERSIST_EVERY) {
                shared.persist_applied(&st.applied)?;
                st.persisted = Some(std::time::Instant::now());
            } else {
                shared
                    .applied_next
                    .store(next_of(st.applied.last_applied), Ordering::Relaxed);
            }
            Ok::<_, String>(out)
        })
        .map_err(|e| sto_err(ErrorVerb::Write, e))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let shared = self.shared.clone();
        let meta = meta.clone();
        let _gate = self.shared.gate.lock().await;
        blocking(move || {
            let mut st = shared.state.lock();
            let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            shared.app.restore(index, &data)?;
            write_snapshot_file(&shared.dir, &meta, &data)?;
            st.applied.last_applied = meta.last_log_id;
            st.applied.membership = meta.last_membership.clone();
            shared.persist_applied(&st.applied)
        })
        .map_err(|e| sto_err(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TC>>, StorageError> {
        let dir = self.shared.dir.clone();
        let snap =
            blocking(move || read_snapshot_file(&dir)).map_err(|e| sto_err(ErrorVerb::Read, e))?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
