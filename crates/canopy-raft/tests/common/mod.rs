//! An in-process cluster on canopy_raft::mem's transport, and a state machine that records
//! what it applied.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use canopy_raft::mem::{MemNet, MemTransport};
use canopy_raft::{Group, GroupConfig, Peer, StateMachine};
use parking_lot::Mutex;

/// Records applied entries; `apply` is idempotent by index.
#[derive(Default)]
pub struct MemSm {
    pub applied: Mutex<Vec<(u64, Vec<u8>)>>,
    pub restores: AtomicUsize,
    /// State lost on restart (`durable() == false`).
    pub volatile: bool,
}

impl MemSm {
    pub fn entries(&self) -> Vec<Vec<u8>> {
        self.applied.lock().iter().map(|(_, e)| e.clone()).collect()
    }
}

impl StateMachine for MemSm {
    fn apply(&self, index: u64, entry: &[u8]) -> Bytes {
        let mut a = self.applied.lock();
        if a.last().is_none_or(|(i, _)| *i < index) {
            a.push((index, entry.to_vec()));
        }
        Bytes::from(format!("ok{index}"))
    }
    fn snapshot(&self) -> Result<Bytes, String> {
        serde_json::to_vec(&*self.applied.lock())
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }
    fn restore(&self, _index: u64, data: &[u8]) -> Result<(), String> {
        let v: Vec<(u64, Vec<u8>)> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        *self.applied.lock() = v;
        self.restores.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn durable(&self) -> bool {
        !self.volatile
    }
}

pub struct Node {
    pub group: Group,
    pub sm: Arc<MemSm>,
}

pub struct Cluster {
    pub net: Arc<MemNet>,
    pub dir: tempfile::TempDir,
    pub name: String,
    pub snapshot_every: u64,
    pub nodes: Mutex<HashMap<String, Node>>,
}

pub fn cfg(name: &str, dir: PathBuf, me: &str, snapshot_every: u64) -> GroupConfig {
    let mut c = GroupConfig::new(name, dir, Peer::new(me));
    c.heartbeat = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(150);
    c.election_timeout_max = Duration::from_millis(300);
    c.rpc_timeout = Duration::from_millis(500);
    c.snapshot_every = snapshot_every;
    c
}

impl Cluster {
    pub fn new(snapshot_every: u64) -> Cluster {
        Cluster {
            net: Arc::new(MemNet::default()),
            dir: tempfile::tempdir().expect("tempdir"),
            name: "G".into(),
            snapshot_every,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir_of(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    /// Opens (or reopens) `node` with `sm` (a fresh one when None).
    pub async fn open(&self, node: &str, sm: Option<Arc<MemSm>>) -> Group {
        let sm = sm.unwrap_or_default();
        let t = Arc::new(MemTransport {
            from: node.to_string(),
            net: self.net.clone(),
        });
        let g = Group::open(
            cfg(&self.name, self.dir_of(node), node, self.snapshot_every),
            sm.clone(),
            t,
        )
        .await
        .expect("open group");
        self.net.register(node, &self.name, g.clone());
        self.nodes.lock().insert(
            node.to_string(),
            Node {
                group: g.clone(),
                sm,
            },
        );
        g
    }

    /// Opens every node and bootstraps each with the same member list.
    pub async fn start(names: &[&str], snapshot_every: u64) -> Cluster {
        let c = Cluster::new(snapshot_every);
        let members: Vec<Peer> = names.iter().map(|n| Peer::new(n)).collect();
        for n in names {
            c.open(n, None).await;
        }
        for n in names {
            c.group(n)
                .bootstrap(members.clone())
                .await
                .expect("bootstrap");
        }
        c
    }

    /// Proposes `entry(i)` for each `i` of `range` on `node`, one after the other; returns
    /// the entries (what the members should then apply).
    pub async fn propose_range(&self, node: &str, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(range.len());
        for i in range {
            self.group(node)
                .propose(Bytes::from(entry(i)))
                .await
                .unwrap_or_else(|e| panic!("propose {i} on {node}: {e:?}"));
            out.push(entry(i));
        }
        out
    }

    pub fn group(&self, node: &str) -> Group {
        self.nodes.lock()[node].group.clone()
    }

    pub fn sm(&self, node: &str) -> Arc<MemSm> {
        self.nodes.lock()[node].sm.clone()
    }

    /// Shuts `node` down and takes it off the network; returns its state machine.
    pub async fn stop(&self, node: &str) -> Arc<MemSm> {
        self.net.unregister(node, &self.name);
        let n = self.nodes.lock().remove(node).expect("node");
        n.group.shutdown().await;
        n.sm
    }

    /// Waits until `among` agree on one leader among them; returns its name.
    pub async fn leader(&self, among: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut leaders = HashSet::new();
            let mut leading = Vec::new();
            for n in among {
                let s = self.group(n).status();
                leaders.insert(s.leader.map(|p| p.name));
                if s.is_leader {
                    leading.push(n.to_string());
                }
            }
            if leaders.len() == 1 && leading.len() == 1 {
                let l = leading.remove(0);
                if leaders.contains(&Some(l.clone())) {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until each of `nodes` applied exactly `want`.
    pub async fn wait_applied(&self, nodes: &[&str], want: &[Vec<u8>]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = nodes.iter().all(|n| self.sm(n).entries() == want);
            if ok {
                return;
            }
            if Instant::now() > deadline {
                for n in nodes {
                    eprintln!("{n}: {:?}", self.sm(n).entries().len());
                }
                panic!("not applied everywhere: want {} entries", want.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown_all(&self) {
        let all: Vec<Group> = self
            .nodes
            .lock()
            .values()
            .map(|n| n.group.clone())
            .collect();
        for g in all {
            g.shutdown().await;
        }
    }
}

pub fn entry(i: usize) -> Vec<u8> {
    format!("entry-{i}").into_bytes()
}
