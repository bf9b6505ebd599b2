//! Benchmark of the file store: append throughput (single appends and batches, with the
//! default interval sync and with `always`), and restart time and memory for 1 M messages
//! and for 1 M distinct subjects.
//!
//! ```text
//! cargo run --release -p canopy-store --example store_bench -- [DIR] [MSGS]
//! ```
//! DIR defaults to /tmp; MSGS (default 1000000) scales every phase. `--only TEXT` (anywhere
//! after the positional arguments, repeatable) runs only the scenarios whose label contains
//! one of the TEXTs, e.g. `--only "1024 B, interval sync, single"`.

use std::path::Path;
use std::time::{Duration, Instant};

use canopy_store::{FileStore, FileStoreOptions, MessageStore, NewMsg, StoreConfig, SyncPolicy};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn open(dir: &Path, sync: SyncPolicy) -> FileStore {
    let opts = FileStoreOptions {
        sync,
        ..Default::default()
    };
    FileStore::open(dir, StoreConfig::default(), opts)
        .expect("open")
        .0
}

/// Nanoseconds this thread has run on a CPU (user and system), from /proc; 0 if unknown.
/// Less sensitive than wall time to other work on a shared machine.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn report(label: &str, n: u64, bytes: u64, d: Duration, cpu: u64) {
    let s = d.as_secs_f64();
    println!(
        "{label:<44} {:>10.0} msgs/s {:>8.1} MB/s  ({n} msgs in {:.2} s, cpu {:.2} us/msg)",
        n as f64 / s,
        bytes as f64 / s / 1e6,
        s,
        cpu as f64 / 1e3 / n as f64
    );
}

/// Scenario filter from `--only` (empty: run everything).
fn selected(label: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    let only: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--only")
        .map(|w| w[1].as_str())
        .collect();
    only.is_empty() || only.iter().any(|o| label.contains(o))
}

/// Appends `n` messages of `size` bytes, `batch` per call.
fn append(dir: &Path, sync: SyncPolicy, n: u64, size: usize, batch: usize, label: &str) {
    if !selected(label) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let mut s = open(dir, sync);
    let payload = vec![b'x'; size];
    let t = Instant::now();
    let cpu0 = cpu_ns();
    let mut done = 0u64;
    while done < n {
        let k = batch.min((n - done) as usize);
        if k == 1 {
            s.store_msg(NewMsg::new("bench.subject", &payload))
                .expect("store");
        } else {
            let msgs: Vec<NewMsg<'_>> = (0..k)
                .map(|_| NewMsg::new("bench.subject", &payload))
                .collect();
            for r in s.store_batch(&msgs).expect("batch") {
                r.expect("stored");
            }
        }
        done += k as u64;
    }
    let d = t.elapsed();
    let cpu = cpu_ns().saturating_sub(cpu0);
    report(label, n, s.state().bytes, d, cpu);
    s.close().expect("close");
}

fn restart(dir: &Path, n: u64, subject: impl Fn(u64) -> String, label: &str) {
    if !selected(label) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let mut s = open(dir, SyncPolicy::default());
    let payload = vec![b'v'; 64];
    let names: Vec<String> = (0..n).map(&subject).collect();
    for chunk in names.chunks(1000) {
        let msgs: Vec<NewMsg<'_>> = chunk.iter().map(|n| NewMsg::new(n, &payload)).collect();
        s.store_batch(&msgs).expect("batch");
    }
    s.close().expect("close");
    drop(s);
    drop(names);
    for (how, clean) in [
        ("clean (snapshot)", true),
        ("after kill (no snapshot)", false),
    ] {
        if !clean {
            let _ = std::fs::remove_file(dir.join("state.bin"));
        }
        let before = rss_kib();
        let t = Instant::now();
        let (s, rep) = FileStore::open(dir, StoreConfig::default(), FileStoreOptions::default())
            .expect("reopen");
        let d = t.elapsed();
        let st = s.state();
        println!(
            "{label} restart {how}: {:.0} ms, {} msgs, {} subjects, {} segments ({} sidecars, {} scanned); index {:.1} MiB ({:.0} B/msg), RSS +{:.1} MiB",
            d.as_secs_f64() * 1e3,
            st.msgs,
            st.num_subjects,
            rep.segments,
            rep.sidecars_used,
            rep.segments_scanned,
            s.index_heap_bytes() as f64 / 1048576.0,
            s.index_heap_bytes() as f64 / st.msgs.max(1) as f64,
            (rss_kib().saturating_sub(before)) as f64 / 1024.0,
        );
        drop(s);
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .collect::<Vec<_>>()
        .split(|a| a == "--only")
        .next()
        .unwrap_or_default()
        .to_vec();
    let base = Path::new(args.get(1).map_or("/tmp", String::as_str)).join("canopy-store-bench");
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = base.join("s");
    let interval = SyncPolicy::default();
    println!("dir {}, {n} messages", dir.display());
    for size in [128usize, 1024] {
        append(
            &dir,
            interval,
            n,
            size,
            1,
            &format!("{size} B, interval sync, single appends"),
        );
        append(
            &dir,
            interval,
            n,
            size,
            256,
            &format!("{size} B, interval sync, batches of 256"),
        );
        append(
            &dir,
            SyncPolicy::Always,
            (n / 500).max(100),
            size,
            1,
            &format!("{size} B, always, single appends"),
        );
        for b in [16usize, 256] {
            append(
                &dir,
                SyncPolicy::Always,
                (n / 20).max(1000),
                size,
                b,
                &format!("{size} B, always, batches of {b}"),
            );
        }
    }
    restart(
        &dir,
        n,
        |i| format!("orders.region{}", i % 100),
        "1M msgs / 100 subjects:",
    );
    restart(
        &dir,
        n,
        |i| format!("$KV.bucket.key{i}"),
        "1M distinct subjects:",
    );
    let _ = std::fs::remove_dir_all(&base);
}
