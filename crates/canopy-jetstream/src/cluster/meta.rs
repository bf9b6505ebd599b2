//! The meta group's state machine: which streams exist in the cluster and where they live.
//!
//! An entry is JSON ([`Entry`]); the state ([`MetaState`]) is the stream assignments by
//! account and name. The state is written to `meta_state.json` (atomically) after every
//! applied entry together with its index, so an entry applied again after a crash is
//! recognised by its index and skipped (the raft contract's idempotence), and a restarted
//! member has its assignments before its group has caught up.
//!
//! Applying an entry only changes the state; what a member must do about it (create,
//! update or delete a stream it hosts, answer the client) is queued as a [`Job`] for the
//! cluster layer's reconciler thread, so that disk work never runs on Raft's apply path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::StreamConfig;

/// Where a stream lives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StreamAssignment {
    pub account: String,
    pub config: StreamConfig,
    /// The servers holding it (server names; one for R1).
    pub peers: Vec<String>,
    /// Its Raft group (R>1), empty for R1.
    #[serde(default)]
    pub group: String,
    /// When the assignment was made (ns since the epoch).
    pub created: i64,
    /// The members that initialise the stream's Raft group (empty: every peer, a stream
    /// created replicated; one server: a single-server stream turned replicated, whose
    /// data only that server has). Members added later are brought in by the leader.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub founders: Vec<String>,
}

impl StreamAssignment {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The members that initialise the group (see [`StreamAssignment::founders`]).
    pub fn founders(&self) -> &[String] {
        if self.founders.is_empty() {
            &self.peers
        } else {
            &self.founders
        }
    }
}

/// What a stream entry asks for.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
    /// `SERVER.REMOVE`: [`Entry::server`] is kept out of the meta group (see
    /// [`MetaState::removed`]); `stream` is unused.
    RemoveServer,
}

/// A server removed by `SERVER.REMOVE`: its name and the server id of the run removed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RemovedServer {
    pub name: String,
    pub id: String,
}

/// A meta-group log entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub action: Action,
    pub stream: StreamAssignment,
    /// The client's reply subject: the member hosting the stream answers it.
    #[serde(default)]
    pub reply: Option<String>,
    /// The server of an [`Action::RemoveServer`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<RemovedServer>,
}

/// The replicated state, as persisted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetaState {
    pub applied: u64,
    pub streams: BTreeMap<String, BTreeMap<String, StreamAssignment>>,
    /// Servers removed by `SERVER.REMOVE`: name → the server id of the run that was
    /// removed (empty when it was not routed then). The meta leader does not admit that
    /// run again; a restarted server (a new id) is admitted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<String, String>,
}

impl Entry {
    /// A stream entry (create, update, delete), answered on `reply` by the member that
    /// applies it for the stream.
    pub fn stream(action: Action, stream: StreamAssignment, reply: Option<String>) -> Entry {
        Entry {
            action,
            stream,
            reply,
            server: None,
        }
    }

    /// `SERVER.REMOVE` of the run `id` of server `name` (see [`MetaState::removed`]).
    pub fn remove_server(name: &str, id: String) -> Entry {
        Entry {
            action: Action::RemoveServer,
            stream: StreamAssignment {
                account: String::new(),
                config: StreamConfig::default(),
                peers: Vec::new(),
                group: String::new(),
                created: 0,
                founders: Vec::new(),
            },
            reply: None,
            server: Some(RemovedServer {
                name: name.to_string(),
                id,
            }),
        }
    }
}

impl MetaState {
    pub fn stream(&self, account: &str, name: &str) -> Option<&StreamAssignment> {
        self.streams.get(account)?.get(name)
    }

    /// Streams assigned to `server`.
    pub fn hosted_by<'a>(&'a self, server: &'a str) -> impl Iterator<Item = &'a StreamAssignment> {
        self.streams
            .values()
            .flat_map(BTreeMap::values)
            .filter(move |sa| sa.peers.iter().any(|p| p == server))
    }

    /// How many streams each server holds.
    pub fn load(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for sa in self.streams.values().flat_map(BTreeMap::values) {
            for p in &sa.peers {
                *m.entry(p.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    pub fn total(&self) -> usize {
        self.streams.values().map(BTreeMap::len).sum()
    }

    fn apply(&mut self, e: &Entry) {
        if e.action == Action::RemoveServer {
            if let Some(s) = &e.server {
                self.removed.insert(s.name.clone(), s.id.clone());
            }
            return;
        }
        let acc = self.streams.entry(e.stream.account.clone()).or_default();
        match e.action {
            Action::Create | Action::Update => {
                acc.insert(e.stream.name().to_string(), e.stream.clone());
            }
            Action::Delete => {
                acc.remove(e.stream.name());
            }
            Action::RemoveServer => {}
        }
        if acc.is_empty() {
            self.streams.remove(&e.stream.account);
        }
    }
}

/// Work for this member after an applied entry.
#[derive(Debug)]
pub enum Job {
    /// Make the local copy of a stream match its assignment (create or update), answering
    /// `reply` when set.
    Ensure {
        action: Action,
        stream: Box<StreamAssignment>,
        /// The stream's Raft group before this entry (a scale between R1 and R>1 changes it).
        prev_group: String,
        reply: Option<String>,
    },
    /// Remove the local copy, answering `reply` when set.
    Remove {
        account: String,
        name: String,
        /// The stream's Raft group (R>1), empty for R1.
        group: String,
        /// The stream's peers from now on (empty: the stream is deleted). A member that
        /// leads the group hands it to them before leaving.
        peers: Vec<String>,
        reply: Option<String>,
    },
}

/// The state machine the meta group drives.
pub struct MetaMachine {
    me: String,
    file: PathBuf,
    pub(super) state: Mutex<MetaState>,
    jobs: Sender<Job>,
}

impl MetaMachine {
    /// Forgets the state (its group was left; a new one brings the state again).
    pub fn reset(&self) {
        let mut st = self.state.lock();
        *st = MetaState::default();
        self.persist(&st);
    }

    /// Loads the persisted state under `file` (empty when there is none).
    pub fn open(me: &str, file: PathBuf, jobs: Sender<Job>) -> MetaMachine {
        let state = crate::engine::read_json::<MetaState>(&file).unwrap_or_default();
        MetaMachine {
            me: me.to_string(),
            file,
            state: Mutex::new(state),
            jobs,
        }
    }

    fn persist(&self, st: &MetaState) {
        if let Err(e) = crate::engine::write_json(&self.file, st) {
            tracing::error!("JetStream meta state {}: {e}", self.file.display());
        }
    }

    /// Queues the jobs that bring this member's streams to `st` (at start, `before` being
    /// `None`: every stream it hosts; after a snapshot is installed, `before` being what
    /// the member had until then: what changed).
    pub fn reconcile(&self, before: Option<&MetaState>, st: &MetaState) {
        for sa in st.hosted_by(&self.me) {
            if before.is_none_or(|b| b.stream(&sa.account, sa.name()) != Some(sa)) {
                let _ = self.jobs.send(Job::Ensure {
                    action: Action::Create,
                    prev_group: sa.group.clone(),
                    stream: Box::new(sa.clone()),
                    reply: None,
                });
            }
        }
        for sa in before.iter().flat_map(|b| b.hosted_by(&self.me)) {
            let now = st.stream(&sa.account, sa.name());
            if !now.is_some_and(|n| n.peers.contains(&self.me)) {
                let _ = self.jobs.send(Job::Remove {
                    account: sa.account.clone(),
                    name: sa.name().to_string(),
                    group: sa.group.clone(),
                    peers: now.map(|n| n.peers.clone()).unwrap_or_default(),
                    reply: None,
                });
            }
        }
    }
}

impl canopy_raft::StateMachine for MetaMachine {
    fn apply(&self, index: u64, entry: &[u8]) -> Bytes {
        let e: Entry = match serde_json::from_slice(entry) {
            Ok(e) => e,
            Err(err) => {
                // Membership and blank entries may reach the application as empty bytes.
                if !entry.is_empty() {
                    tracing::error!("JetStream meta: undecodable entry {index}: {err}");
                }
                let mut st = self.state.lock();
                if index > st.applied {
                    st.applied = index;
                    self.persist(&st);
                }
                return Bytes::new();
            }
        };
        let mut st = self.state.lock();
        if index <= st.applied {
            return Bytes::from_static(b"ok");
        }
        let prev = st.stream(&e.stream.account, e.stream.name()).cloned();
        let was_mine = prev.as_ref().is_some_and(|sa| sa.peers.contains(&self.me));
        let prev_group = prev.map(|sa| sa.group).unwrap_or_default();
        st.apply(&e);
        st.applied = index;
        self.persist(&st);
        drop(st);
        let mine = e.stream.peers.contains(&self.me);
        // One member answers: the first of the stream's peers (an update of a replicated
        // stream: its leader, which applies it).
        let first = e.stream.peers.first() == Some(&self.me);
        let job = match e.action {
            Action::Create | Action::Update if mine => Some(Job::Ensure {
                action: e.action,
                reply: e.reply.filter(|_| {
                    first || (e.action == Action::Update && !e.stream.group.is_empty())
                }),
                stream: Box::new(e.stream),
                prev_group,
            }),
            // This member's copy moved elsewhere (peer removal, scale down).
            Action::Update if was_mine => Some(Job::Remove {
                account: e.stream.account,
                name: e.stream.config.name,
                group: prev_group,
                peers: e.stream.peers,
                reply: None,
            }),
            Action::Delete if mine || was_mine => Some(Job::Remove {
                account: e.stream.account,
                name: e.stream.config.name,
                group: e.stream.group,
                peers: Vec::new(),
                reply: e.reply.filter(|_| first),
            }),
            _ => None,
        };
        if let Some(j) = job {
            let _ = self.jobs.send(j);
        }
        Bytes::from_static(b"ok")
    }

    fn snapshot(&self) -> Result<Bytes, String> {
        serde_json::to_vec(&*self.state.lock())
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }

    fn restore(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let mut new: MetaState = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        new.applied = index;
        let before = std::mem::replace(&mut *self.state.lock(), new.clone());
        self.persist(&new);
        self.reconcile(Some(&before), &new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_raft::StateMachine;

    fn sa(name: &str, peer: &str) -> StreamAssignment {
        StreamAssignment {
            account: "$G".into(),
            config: serde_json::from_value(serde_json::json!({"name": name, "subjects": [name]}))
                .unwrap(),
            peers: vec![peer.into()],
            group: String::new(),
            created: 1,
            founders: Vec::new(),
        }
    }

    fn entry(action: Action, s: StreamAssignment, reply: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&Entry::stream(action, s, reply.map(String::from))).unwrap()
    }

    #[test]
    fn entries_apply_once_persist_and_queue_jobs_for_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meta_state.json");
        let (tx, rx) = std::sync::mpsc::channel();
        let m = MetaMachine::open("a", file.clone(), tx.clone());
        m.apply(1, &entry(Action::Create, sa("S", "a"), Some("r1")));
        m.apply(2, &entry(Action::Create, sa("T", "b"), Some("r2")));
        // Applied again after a "crash": skipped by index.
        m.apply(1, &entry(Action::Create, sa("S", "a"), Some("r1")));
        let jobs: Vec<Job> = rx.try_iter().collect();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert!(matches!(&jobs[0], Job::Ensure { reply: Some(r), .. } if r == "r1"));
        // A restarted member reads the state back.
        let m2 = MetaMachine::open("a", file, tx);
        assert_eq!(m2.state.lock().applied, 2);
        assert_eq!(m2.state.lock().total(), 2);
        assert_eq!(m2.state.lock().load().get("b"), Some(&1));
        m2.apply(3, &entry(Action::Delete, sa("S", "a"), Some("r3")));
        assert!(matches!(
            rx.try_recv(),
            Ok(Job::Remove { reply: Some(_), .. })
        ));
        assert!(m2.state.lock().stream("$G", "S").is_none());
    }

    #[test]
    fn a_removed_server_is_part_of_the_replicated_state() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meta_state.json");
        let (tx, rx) = std::sync::mpsc::channel();
        let m = MetaMachine::open("a", file.clone(), tx.clone());
        m.apply(1, &entry(Action::Create, sa("S", "b"), None));
        let _ = rx.try_iter().count();
        let removal = Entry::remove_server("b", "NB1".into());
        m.apply(2, &serde_json::to_vec(&removal).unwrap());
        assert_eq!(rx.try_iter().count(), 0, "a removal is no stream job");
        assert_eq!(
            m.state.lock().removed.get("b").map(String::as_str),
            Some("NB1")
        );
        assert_eq!(m.state.lock().total(), 1, "streams untouched");
        // Persisted (and in snapshots); a state written before the field reads as empty.
        let m2 = MetaMachine::open("a", file, tx);
        assert_eq!(m2.state.lock().removed.len(), 1);
        let old: MetaState = serde_json::from_str(r#"{"applied":3,"streams":{}}"#).unwrap();
        assert!(old.removed.is_empty());
    }

    #[test]
    fn a_copy_moved_away_is_removed_with_the_new_peers() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let m = MetaMachine::open("a", dir.path().join("s.json"), tx);
        let mut r3 = sa("S", "a");
        r3.peers = vec!["a".into(), "b".into(), "c".into()];
        r3.group = "S-R3-x".into();
        m.apply(1, &entry(Action::Create, r3.clone(), None));
        let _ = rx.try_iter().count();
        // `a` is replaced by `d`: it hands over and removes its copy and group.
        let mut moved = r3.clone();
        moved.peers = vec!["b".into(), "c".into(), "d".into()];
        moved.founders = r3.peers.clone();
        m.apply(2, &entry(Action::Update, moved, None));
        match rx.try_recv() {
            Ok(Job::Remove { group, peers, .. }) => {
                assert_eq!(group, "S-R3-x");
                assert_eq!(peers, vec!["b", "c", "d"]);
            }
            other => panic!("{other:?}"),
        }
        // Scaled down to R1 on `a`: it keeps its copy, leaving the group.
        let (tx, rx) = std::sync::mpsc::channel();
        let m = MetaMachine::open("a", dir.path().join("u.json"), tx);
        m.apply(1, &entry(Action::Create, r3.clone(), None));
        let _ = rx.try_iter().count();
        let mut r1 = r3;
        r1.peers = vec!["a".into()];
        r1.group = String::new();
        m.apply(2, &entry(Action::Update, r1, None));
        assert!(matches!(
            rx.try_recv(),
            Ok(Job::Ensure { prev_group, .. }) if prev_group == "S-R3-x"
        ));
    }

    #[test]
    fn a_restored_snapshot_reconciles_the_streams_this_member_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let m = MetaMachine::open("a", dir.path().join("s.json"), tx);
        m.apply(1, &entry(Action::Create, sa("OLD", "a"), None));
        let _ = rx.try_iter().count();
        let mut other = MetaState::default();
        other.apply(&Entry::stream(Action::Create, sa("NEW", "a"), None));
        let snap = serde_json::to_vec(&other).unwrap();
        m.restore(9, &snap).unwrap();
        let jobs: Vec<Job> = rx.try_iter().collect();
        assert!(jobs
            .iter()
            .any(|j| matches!(j, Job::Ensure { stream, .. } if stream.name() == "NEW")));
        assert!(jobs
            .iter()
            .any(|j| matches!(j, Job::Remove { name, .. } if name == "OLD")));
        assert_eq!(m.state.lock().applied, 9);
    }
}
