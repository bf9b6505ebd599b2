//! Measures canopy-raft in one process on the in-memory transport (logs on disk, fsynced).
//!
//! `cargo run --release -p canopy-raft --example raft_bench -- propose [N] [CONCURRENCY]`
//!   one 3-member group; 128-byte entries: sequential latency, then concurrent throughput.
//! `cargo run --release -p canopy-raft --example raft_bench -- idle [GROUPS] [SECONDS]`
//!   GROUPS idle 3-member groups (default timings): memory and CPU while idle.
//!
//! The directory is a temporary one under $RAFT_BENCH_DIR (default: the system's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canopy_raft::mem::{MemNet, MemTransport};
use canopy_raft::{Group, GroupConfig, Peer, StateMachine};

#[derive(Default)]
struct CountSm {
    applied: AtomicU64,
}

impl StateMachine for CountSm {
    fn apply(&self, index: u64, _entry: &[u8]) -> Bytes {
        self.applied.store(index, Ordering::Relaxed);
        Bytes::new()
    }
    fn snapshot(&self) -> Result<Bytes, String> {
        Ok(Bytes::from(
            self.applied.load(Ordering::Relaxed).to_string(),
        ))
    }
    fn restore(&self, _index: u64, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

const MEMBERS: [&str; 3] = ["s1", "s2", "s3"];

async fn open_group(
    net: &Arc<MemNet>,
    root: &std::path::Path,
    name: &str,
    tune: impl Fn(&mut GroupConfig),
) -> Vec<Group> {
    let mut gs = Vec::new();
    for m in MEMBERS {
        let mut cfg = GroupConfig::new(name, root.join(m).join(name), Peer::new(m));
        tune(&mut cfg);
        let t = Arc::new(MemTransport {
            from: m.to_string(),
            net: net.clone(),
        });
        let g = match Group::open(cfg, Arc::new(CountSm::default()), t).await {
            Ok(g) => g,
            Err(e) => panic!("open: {e}"),
        };
        net.register(m, name, g.clone());
        gs.push(g);
    }
    let members: Vec<Peer> = MEMBERS.iter().map(|m| Peer::new(m)).collect();
    for g in &gs {
        if let Err(e) = g.bootstrap(members.clone()).await {
            panic!("bootstrap: {e}");
        }
    }
    gs
}

async fn leader_of(gs: &[Group], within: Duration) -> Option<Group> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(g) = gs.iter().find(|g| g.status().is_leader) {
            return Some(g.clone());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn propose(n: usize, conc: usize) {
    let dir = tempfile::Builder::new()
        .prefix("raft-bench")
        .tempdir_in(std::env::var("RAFT_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let net = Arc::new(MemNet::default());
    let gs = open_group(&net, dir.path(), "BENCH", |c| {
        c.heartbeat = Duration::from_millis(50);
        c.election_timeout_min = Duration::from_millis(300);
        c.election_timeout_max = Duration::from_millis(600);
    })
    .await;
    let Some(leader) = leader_of(&gs, Duration::from_secs(10)).await else {
        panic!("no leader");
    };
    let payload = Bytes::from(vec![b'x'; 128]);

    let seq = (n / 10).max(100);
    let mut lat = Vec::with_capacity(seq);
    let t0 = Instant::now();
    for _ in 0..seq {
        let t = Instant::now();
        if let Err(e) = leader.propose(payload.clone()).await {
            panic!("propose: {e}");
        }
        lat.push(t.elapsed());
    }
    let el = t0.elapsed();
    lat.sort();
    println!(
        "sequential: {seq} proposals in {:.2?}: {:.0}/s, p50 {:.2?}, p99 {:.2?}",
        el,
        seq as f64 / el.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let g = leader.clone();
        let p = payload.clone();
        let per = n / conc;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                if let Err(e) = g.propose(p.clone()).await {
                    panic!("propose: {e}");
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        match t.await {
            Ok(l) => lat.extend(l),
            Err(e) => panic!("task: {e}"),
        }
    }
    let el = t0.elapsed();
    lat.sort();
    println!(
        "concurrent ({conc} proposers): {} proposals in {:.2?}: {:.0}/s, p50 {:.2?}, p99 {:.2?}",
        lat.len(),
        el,
        lat.len() as f64 / el.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    println!("RPCs: {}", net.calls.load(Ordering::Relaxed));
    for g in &gs {
        g.shutdown().await;
    }
}

fn proc_stats() -> (u64, f64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let threads = status
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let cpu = (ticks(11) + ticks(12)) as f64 / 100.0;
    (rss_kb, cpu, threads)
}

async fn idle(groups: usize, secs: u64) {
    let dir = tempfile::Builder::new()
        .prefix("raft-idle")
        .tempdir_in(std::env::var("RAFT_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    let net = Arc::new(MemNet::default());
    let (rss0, _, _) = proc_stats();
    let t0 = Instant::now();
    let mut all = Vec::new();
    for i in 0..groups {
        all.push(open_group(&net, dir.path(), &format!("G{i}"), |_| {}).await);
    }
    println!("opened {groups} groups x 3 in {:.2?}", t0.elapsed());
    let mut led = 0;
    for gs in &all {
        if leader_of(gs, Duration::from_secs(30)).await.is_some() {
            led += 1;
        }
    }
    println!("{led}/{groups} have a leader after {:.2?}", t0.elapsed());
    // Settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, cpu1, threads) = proc_stats();
    let calls1 = net.calls.load(Ordering::Relaxed);
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (rss2, cpu2, _) = proc_stats();
    let calls2 = net.calls.load(Ordering::Relaxed);
    let el = t1.elapsed().as_secs_f64();
    let members = (groups * 3) as f64;
    println!(
        "idle: RSS {} MiB ({:.1} KiB per member, {} before), threads {threads}",
        rss2 / 1024,
        (rss2.saturating_sub(rss0)) as f64 / members,
        rss0 / 1024,
    );
    println!(
        "idle: CPU {:.1}% of one core over {el:.1}s ({:.3} ms CPU per group per second), {:.0} RPCs/s; RSS at start of window {} MiB",
        (cpu2 - cpu1) / el * 100.0,
        (cpu2 - cpu1) * 1000.0 / el / groups as f64,
        (calls2 - calls1) as f64 / el,
        rss1 / 1024
    );
    for gs in &all {
        for g in gs {
            g.shutdown().await;
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("idle") => idle(arg(2, 1000), arg(3, 10) as u64).await,
        _ => propose(arg(2, 20_000), arg(3, 64)).await,
    }
}
