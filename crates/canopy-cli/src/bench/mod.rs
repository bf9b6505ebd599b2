//! `canopy bench`: load generation in the style of `nats bench`.
//!
//! Modes: pub/sub throughput (`--pub N --sub M`, every client on its own connection),
//! request/reply latency (`--request --clients C`), and idle-connection memory
//! (`--idle N --server-pid P`). Clients are async-nats by default or the lean raw-protocol
//! ones with `--raw` ([`raw`]). Every run reports this process's CPU time (and the
//! server's with `--server-pid`) so a reader can tell when the load generator, not the
//! server, was the bottleneck. `--json` prints one [`Report`] object.

mod idle;
mod js;
mod jsraw;
mod nats;
pub mod raw;
mod rawfetch;

use crate::conn::ConnArgs;
use crate::procstat;
use crate::util::{commas, parse_duration};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Subject to publish and subscribe on.
    #[arg(default_value = "canopy.bench")]
    pub subject: String,
    /// Number of publishers (each on its own connection).
    #[arg(long = "pub", default_value_t = 1)]
    pub pubs: usize,
    /// Number of subscribers (each on its own connection; each receives every message).
    #[arg(long = "sub", default_value_t = 0)]
    pub subs: usize,
    /// Total messages published (split across publishers), or requests sent.
    #[arg(long, default_value_t = 100_000)]
    pub msgs: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Use the lean raw-protocol publisher/subscriber instead of async-nats (with
    /// `--js pub`: the raw JetStream publisher, acks read from the socket; with `--js fetch`:
    /// the raw pull consumer).
    #[arg(long, conflicts_with = "request")]
    pub raw: bool,
    /// Request/reply latency mode: a responder on its own connection, `--clients` requesters.
    #[arg(long)]
    pub request: bool,
    /// Concurrent requesters in `--request` mode.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Idle-connection mode: open this many raw connections (CONNECT + PING) and hold them.
    #[arg(long, conflicts_with_all = ["request", "raw"])]
    pub idle: Option<usize>,
    /// Idle mode: after the connections are measured, each subscribes to this many
    /// distinct subjects and the server's RSS growth per subscription is reported.
    #[arg(long, default_value_t = 0, requires = "idle")]
    pub idle_subs: usize,
    /// How long idle connections are held before the server's RSS is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// PID of the server process, to report its CPU time and memory (Linux /proc).
    /// Several (comma-separated, e.g. a cluster's members): CPU time is their sum, memory
    /// the first one's.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Give up on a subscriber after this long without a message (or a request's reply).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// JetStream mode: async publish with acks (pub), sync publish latency (sync), pull
    /// fetch with acks (fetch), KV put or get latency (kvput, kvget). Uses a fresh stream
    /// or bucket CANOPY_BENCH on SUBJECT, deleted afterwards.
    #[arg(long, value_enum, conflicts_with_all = ["request", "idle"])]
    pub js: Option<js::JsMode>,
    /// Replicas (`num_replicas`) of the JetStream bench stream or bucket; above 1 the run
    /// waits until the stream has a leader and its replicas before measuring.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Storage of the JetStream bench stream or bucket.
    #[arg(long, value_enum, default_value = "file")]
    pub storage: crate::js::Storage,
    /// `--js pub`: unacknowledged publishes allowed in flight.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// `--js fetch`: messages per fetch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
}

/// One client's run: messages and payload bytes moved between `start` and `end`.
#[derive(Debug, Clone, Copy)]
pub struct ClientRun {
    pub msgs: u64,
    pub bytes: u64,
    pub start: Instant,
    pub end: Instant,
}

/// Throughput of one side (all publishers or all subscribers).
#[derive(Debug, Serialize)]
pub struct SideStats {
    /// Messages moved by all clients of this side together.
    pub msgs: u64,
    /// Messages this side should have moved (subscribers: per-sub total × subs).
    pub expected: u64,
    pub bytes: u64,
    /// From the earliest client start to the latest client end.
    pub secs: f64,
    pub msgs_per_sec: f64,
    pub mib_per_sec: f64,
    /// Per-client rates (msgs/s): min, average, max.
    pub min_rate: f64,
    pub avg_rate: f64,
    pub max_rate: f64,
    pub clients: Vec<ClientStats>,
}

#[derive(Debug, Serialize)]
pub struct ClientStats {
    pub msgs: u64,
    pub secs: f64,
    pub msgs_per_sec: f64,
}

/// Request/reply latency distribution.
#[derive(Debug, Serialize)]
pub struct LatencyStats {
    pub requests: u64,
    pub secs: f64,
    pub reqs_per_sec: f64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Idle-connection memory.
#[derive(Debug, Serialize)]
pub struct IdleStats {
    pub conns: usize,
    pub connect_secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub delta_kib: Option<i64>,
    pub bytes_per_conn: Option<f64>,
    /// With `--idle-subs`: subscriptions made and the RSS growth per subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sub: Option<f64>,
}

/// CPU time of a process over the measured window.
#[derive(Debug, Serialize)]
pub struct CpuStats {
    pub secs: f64,
    pub wall_secs: f64,
    /// `secs / wall_secs`: 1.0 is one core fully busy.
    pub share: f64,
    pub cores: usize,
    /// CPU nanoseconds per delivered message (per published one when nothing is
    /// delivered; per request in request mode).
    pub ns_per_msg: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub client: &'static str,
    pub subject: String,
    pub msgs: u64,
    pub size: usize,
    pub pubs: usize,
    pub subs: usize,
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub pub_stats: Option<SideStats>,
    #[serde(rename = "sub", skip_serializing_if = "Option::is_none")]
    pub sub_stats: Option<SideStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<LatencyStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleStats>,
    pub client_cpu: CpuStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<CpuStats>,
    /// JetStream modes: the server the client is connected to and the bench stream's
    /// cluster state (leader, replicas) when the run started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub js_cluster: Option<serde_json::Value>,
}

/// CPU readings of this process and optionally the servers, taken at window start.
pub struct CpuWindow {
    wall: Instant,
    me: Duration,
    server: Option<(Vec<u32>, Duration)>,
}

/// CPU time of the given processes together.
fn servers_cpu(pids: &[u32]) -> Result<Duration> {
    let mut sum = Duration::ZERO;
    for &p in pids {
        sum += procstat::cpu_time(Some(p)).with_context(|| format!("server {p} CPU time"))?;
    }
    Ok(sum)
}

impl CpuWindow {
    pub fn start(server_pids: &[u32]) -> Result<CpuWindow> {
        let server = if server_pids.is_empty() {
            None
        } else {
            Some((server_pids.to_vec(), servers_cpu(server_pids)?))
        };
        Ok(CpuWindow {
            wall: Instant::now(),
            me: procstat::cpu_time(None)?,
            server,
        })
    }

    /// Close the window; `per` is the message count CPU is divided by.
    pub fn finish(self, per: u64) -> Result<(CpuStats, Option<CpuStats>)> {
        let wall = self.wall.elapsed().as_secs_f64();
        let stats = |cpu: Duration| {
            let secs = cpu.as_secs_f64();
            CpuStats {
                secs,
                wall_secs: wall,
                share: if wall > 0.0 { secs / wall } else { 0.0 },
                cores: procstat::cores(),
                ns_per_msg: (per > 0).then(|| secs * 1e9 / per as f64),
            }
        };
        let me = stats(procstat::cpu_time(None)?.saturating_sub(self.me));
        let server = match self.server {
            Some((pids, before)) => Some(stats(servers_cpu(&pids)?.saturating_sub(before))),
            None => None,
        };
        Ok((me, server))
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Aggregate per-client runs.
pub fn side_stats(runs: &[ClientRun], expected: u64) -> SideStats {
    let msgs: u64 = runs.iter().map(|r| r.msgs).sum();
    let bytes: u64 = runs.iter().map(|r| r.bytes).sum();
    let secs = match (
        runs.iter().map(|r| r.start).min(),
        runs.iter().map(|r| r.end).max(),
    ) {
        (Some(s), Some(e)) => e.saturating_duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let clients: Vec<ClientStats> = runs
        .iter()
        .map(|r| {
            let s = r.end.saturating_duration_since(r.start).as_secs_f64();
            ClientStats {
                msgs: r.msgs,
                secs: s,
                msgs_per_sec: rate(r.msgs, s),
            }
        })
        .collect();
    let rates = clients.iter().map(|c| c.msgs_per_sec);
    let n = clients.len().max(1) as f64;
    SideStats {
        msgs,
        expected,
        bytes,
        secs,
        msgs_per_sec: rate(msgs, secs),
        mib_per_sec: if secs > 0.0 {
            bytes as f64 / secs / MIB
        } else {
            0.0
        },
        min_rate: if clients.is_empty() {
            0.0
        } else {
            rates.clone().fold(f64::INFINITY, f64::min)
        },
        avg_rate: rates.clone().sum::<f64>() / n,
        max_rate: rates.fold(0.0, f64::max),
        clients,
    }
}

/// Nearest-rank percentiles over sorted latencies.
pub fn latency_stats(mut lat: Vec<Duration>, secs: f64) -> LatencyStats {
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        us(lat[rank.clamp(1, lat.len()) - 1])
    };
    let n = lat.len() as u64;
    LatencyStats {
        requests: n,
        secs,
        reqs_per_sec: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        min_us: lat.first().map_or(0.0, |d| us(*d)),
        mean_us: if n > 0 {
            lat.iter().map(|d| us(*d)).sum::<f64>() / n as f64
        } else {
            0.0
        },
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        max_us: lat.last().map_or(0.0, |d| us(*d)),
    }
}

/// Split `total` into `parts` near-equal shares (the first ones get the remainder).
pub fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

pub async fn run(conn: &ConnArgs, a: BenchArgs) -> Result<()> {
    let report = if let Some(mode) = a.js {
        js::run(conn, &a, mode).await?
    } else if let Some(n) = a.idle {
        idle::run(conn, &a, n).await?
    } else if a.request {
        if a.clients == 0 {
            bail!("--clients must be at least 1");
        }
        nats::run_request(conn, &a).await?
    } else {
        if a.pubs == 0 {
            bail!("--pub must be at least 1");
        }
        run_pubsub(conn, &a).await?
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Pub/sub throughput: connect every subscriber and publisher first, then start the
/// clock and let the publishers go.
async fn run_pubsub(conn: &ConnArgs, a: &BenchArgs) -> Result<Report> {
    let payload: Vec<u8> = (0..a.size).map(|i| b'a' + (i % 26) as u8).collect();
    let shares = split(a.msgs, a.pubs);
    let (pubs, subs, window) = if a.raw {
        let addr = conn.socket_addr()?;
        let mut subs = Vec::new();
        for i in 0..a.subs {
            let json = conn.connect_json(&format!("canopy bench sub {i}"))?;
            let s = raw::RawSubscriber::connect(&addr, &json, &a.subject, None).await?;
            subs.push(tokio::spawn(s.run(a.msgs, a.timeout)));
        }
        let mut pubs = Vec::new();
        for i in 0..a.pubs {
            let json = conn.connect_json(&format!("canopy bench pub {i}"))?;
            pubs.push(raw::RawPublisher::connect(&addr, &json).await?);
        }
        let window = CpuWindow::start(&a.server_pid)?;
        let handles: Vec<_> = pubs
            .into_iter()
            .zip(&shares)
            .map(|(p, &n)| {
                let (subject, payload) = (a.subject.clone(), payload.clone());
                tokio::spawn(async move { p.run(&subject, &payload, n).await })
            })
            .collect();
        (join_all(handles).await?, join_all(subs).await?, window)
    } else {
        nats::pubsub(conn, a, &payload, &shares).await?
    };
    let delivered: u64 = subs.iter().map(|r| r.msgs).sum();
    let (client_cpu, server_cpu) = window.finish(if a.subs > 0 { delivered } else { a.msgs })?;
    Ok(Report {
        mode: "pubsub",
        client: if a.raw { "raw" } else { "async-nats" },
        subject: a.subject.clone(),
        msgs: a.msgs,
        size: a.size,
        pubs: a.pubs,
        subs: a.subs,
        pub_stats: Some(side_stats(&pubs, a.msgs)),
        sub_stats: (a.subs > 0).then(|| side_stats(&subs, a.msgs * a.subs as u64)),
        request: None,
        idle: None,
        client_cpu,
        server_cpu,
        js_cluster: None,
    })
}

/// Await spawned client tasks, surfacing the first error.
pub async fn join_all(
    handles: Vec<tokio::task::JoinHandle<Result<ClientRun>>>,
) -> Result<Vec<ClientRun>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("bench task panicked")??);
    }
    Ok(out)
}

fn print_side(name: &str, s: &SideStats) {
    println!(
        "{name} stats: {} msgs/sec ~ {:.2} MiB/sec ({} msgs in {:.3}s)",
        commas(s.msgs_per_sec),
        s.mib_per_sec,
        commas(s.msgs as f64),
        s.secs
    );
    if s.msgs < s.expected {
        println!(
            "  WARNING: received {} of {} expected messages ({} lost)",
            commas(s.msgs as f64),
            commas(s.expected as f64),
            commas((s.expected - s.msgs) as f64)
        );
    }
    if s.clients.len() > 1 {
        for (i, c) in s.clients.iter().enumerate() {
            println!(
                " [{}] {} msgs/sec ({} msgs)",
                i + 1,
                commas(c.msgs_per_sec),
                commas(c.msgs as f64)
            );
        }
        println!(
            " min {} | avg {} | max {} msgs/sec",
            commas(s.min_rate),
            commas(s.avg_rate),
            commas(s.max_rate)
        );
    }
}

fn print_cpu(who: &str, c: &CpuStats) {
    let per = c
        .ns_per_msg
        .map(|n| format!(", {n:.0} ns/msg"))
        .unwrap_or_default();
    println!(
        "{who} CPU: {:.3}s over {:.3}s wall = {:.0}% of one core ({} cores){per}",
        c.secs,
        c.wall_secs,
        c.share * 100.0,
        c.cores
    );
}

fn print_report(r: &Report) {
    match r.mode {
        "idle" => println!(
            "Idle-connection benchmark [conns={}]",
            r.idle.as_ref().map_or(0, |i| i.conns)
        ),
        "request" => println!(
            "Request/reply benchmark [subject={}, requests={}, size={} B, clients={}]",
            r.subject,
            commas(r.msgs as f64),
            r.size,
            r.pubs
        ),
        "js-pub" | "js-sync" | "js-fetch" | "kv-put" | "kv-get" => println!(
            "JetStream benchmark [mode={}, subject={}, msgs={}, size={} B]",
            r.mode,
            r.subject,
            commas(r.msgs as f64),
            r.size
        ),
        _ => println!(
            "Pub/sub benchmark [subject={}, msgs={}, size={} B, pubs={}, subs={}, client={}]",
            r.subject,
            commas(r.msgs as f64),
            r.size,
            r.pubs,
            r.subs,
            r.client
        ),
    }
    if let Some(p) = &r.pub_stats {
        print_side("Pub", p);
    }
    if let Some(s) = &r.sub_stats {
        print_side("Sub", s);
    }
    if let Some(l) = &r.request {
        println!(
            "Requests: {} in {:.3}s = {} req/sec",
            commas(l.requests as f64),
            l.secs,
            commas(l.reqs_per_sec)
        );
        println!(
            "Latency (us): min {:.1} | mean {:.1} | p50 {:.1} | p90 {:.1} | p99 {:.1} | max {:.1}",
            l.min_us, l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.max_us
        );
    }
    if let Some(i) = &r.idle {
        println!("Opened {} connections in {:.3}s", i.conns, i.connect_secs);
        match (
            i.rss_before_kib,
            i.rss_after_kib,
            i.delta_kib,
            i.bytes_per_conn,
        ) {
            (Some(b), Some(a), Some(d), Some(per)) => println!(
                "Server RSS: {b} KiB -> {a} KiB (+{d} KiB) = {:.0} bytes/connection",
                per
            ),
            _ => println!("Server RSS: unknown (pass --server-pid)"),
        }
        if let (Some(n), Some(per)) = (i.subs, i.bytes_per_sub) {
            println!("Subscriptions: {n}, server RSS growth {per:.0} bytes/subscription");
        }
    }
    if let Some(c) = r.js_cluster.as_ref().filter(|c| {
        c["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    }) {
        println!(
            "Stream leader: {} (client connected to {}; replicas: {})",
            c["cluster"]["leader"].as_str().unwrap_or("-"),
            c["connected"].as_str().unwrap_or("-"),
            c["cluster"]["replicas"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    print_cpu("Client", &r.client_cpu);
    if let Some(s) = &r.server_cpu {
        print_cpu("Server", s);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(5, 0), vec![5]);
    }

    #[test]
    fn percentiles() {
        let lat: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = latency_stats(lat, 2.0);
        assert_eq!(
            (s.p50_us.round(), s.p90_us.round(), s.p99_us.round()),
            (50.0, 90.0, 99.0)
        );
        assert_eq!((s.min_us.round(), s.max_us.round()), (1.0, 100.0));
        assert_eq!(s.reqs_per_sec, 50.0);
        assert_eq!(latency_stats(vec![], 1.0).p99_us, 0.0);
    }

    #[test]
    fn side_aggregates() {
        let t0 = Instant::now();
        let run = |msgs, from, to| ClientRun {
            msgs,
            bytes: msgs * 10,
            start: t0 + Duration::from_millis(from),
            end: t0 + Duration::from_millis(to),
        };
        let s = side_stats(&[run(100, 0, 1000), run(300, 500, 2000)], 400);
        assert_eq!((s.msgs, s.bytes), (400, 4000));
        assert!((s.secs - 2.0).abs() < 1e-9);
        assert!((s.msgs_per_sec - 200.0).abs() < 1e-6);
        assert!((s.min_rate - 100.0).abs() < 1e-6 && (s.max_rate - 200.0).abs() < 1e-6);
        assert!((s.avg_rate - 150.0).abs() < 1e-6);
    }
}
