//! JetStream bench modes (`canopy bench --js MODE`), all through async-nats' JetStream API
//! on one connection, against a fresh stream (or KV bucket) `CANOPY_BENCH` on the bench
//! subject, deleted before and after the run:
//!
//! - `pub`: async publish with acks, at most `--window` unacknowledged publishes in
//!   flight (a sliding window); reports publish msgs/s (all acks received). With `--raw`
//!   the publisher is the raw-protocol one of [`super::jsraw`] instead of async-nats.
//! - `sync`: publish and wait for the ack, one at a time; reports latency.
//! - `fetch`: fill the stream with `--msgs` messages (untimed), then drain it through a
//!   durable pull consumer (explicit acks) with sequential fetches of `--batch`
//!   messages, acking each message; reports delivered msgs/s. With `--raw` the consumer
//!   is the raw-protocol one of [`super::rawfetch`] (same pulls and acks, no async-nats).
//! - `kvput`: sequential KV puts (1000 keys round robin); reports latency.
//! - `kvget`: 1000 keys written (untimed), then sequential KV gets; reports latency.
//!
//! Latency modes run 100 untimed warm-up operations first. `--replicas N` creates the
//! stream (or bucket) with `num_replicas: N`; above 1 the run first waits until the stream
//! has a leader and N-1 current replicas, and the report says which server the client is
//! connected to and which one leads the stream (`js_cluster`).

use super::{latency_stats, side_stats, BenchArgs, ClientRun, CpuWindow, Report};
use crate::conn::ConnArgs;
use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Name of the bench stream, KV bucket and durable consumer.
pub const NAME: &str = "CANOPY_BENCH";
const WARMUP: u64 = 100;
const KEYS: u64 = 1000;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsMode {
    /// Async publish with acks (msgs/s).
    Pub,
    /// Synchronous publish (latency).
    Sync,
    /// Pull consumer fetch with explicit acks (msgs/s).
    Fetch,
    /// KV put (latency).
    Kvput,
    /// KV get (latency).
    Kvget,
}

impl JsMode {
    fn name(self) -> &'static str {
        match self {
            JsMode::Pub => "js-pub",
            JsMode::Sync => "js-sync",
            JsMode::Fetch => "js-fetch",
            JsMode::Kvput => "kv-put",
            JsMode::Kvget => "kv-get",
        }
    }
}

pub async fn run(conn: &ConnArgs, a: &BenchArgs, mode: JsMode) -> Result<Report> {
    if a.window == 0 || a.batch == 0 || a.replicas == 0 {
        bail!("--window, --batch and --replicas must be at least 1");
    }
    if a.raw && !matches!(mode, JsMode::Pub | JsMode::Fetch) {
        bail!("--raw goes with --js pub and --js fetch only");
    }
    let client = conn
        .connect_with("canopy bench js", |o| {
            o.request_timeout(Some(a.timeout))
                .subscription_capacity(1 << 16)
        })
        .await?;
    let js = jetstream::new(client);
    let payload = Bytes::from(
        (0..a.size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let storage = a.storage.kind();
    let mut report = Report {
        mode: mode.name(),
        client: if a.raw { "raw" } else { "async-nats" },
        subject: a.subject.clone(),
        msgs: a.msgs,
        size: a.size,
        pubs: 1,
        subs: usize::from(mode == JsMode::Fetch),
        pub_stats: None,
        sub_stats: None,
        request: None,
        idle: None,
        client_cpu: empty_cpu(),
        server_cpu: None,
        js_cluster: None,
    };
    remove(&js, mode).await;
    let result = measure(&js, conn, a, mode, &payload, storage, &mut report).await;
    // Leave nothing behind on the server, whatever happened (creation included).
    remove(&js, mode).await;
    result?;
    Ok(report)
}

/// Deletes the bench stream or bucket, if there is one.
async fn remove(js: &jetstream::Context, mode: JsMode) {
    match mode {
        JsMode::Kvput | JsMode::Kvget => {
            let _ = js.delete_key_value(NAME).await;
        }
        _ => {
            let _ = js.delete_stream(NAME).await;
        }
    }
}

async fn measure(
    js: &jetstream::Context,
    conn: &ConnArgs,
    a: &BenchArgs,
    mode: JsMode,
    payload: &Bytes,
    storage: stream::StorageType,
    report: &mut Report,
) -> Result<()> {
    let subject = async_nats::Subject::from(a.subject.clone());
    if matches!(mode, JsMode::Pub | JsMode::Sync | JsMode::Fetch) {
        create_stream(
            &js.client(),
            serde_json::json!({
                "name": NAME,
                "subjects": [a.subject],
                "storage": a.storage.as_str(),
                "num_replicas": a.replicas,
            }),
        )
        .await?;
        report.js_cluster = Some(ready(&js.client(), NAME, a.replicas).await?);
    }
    match mode {
        JsMode::Pub if a.raw => {
            let p = super::jsraw::RawJsPublisher::connect(
                &conn.socket_addr()?,
                &conn.connect_json("canopy bench js raw pub")?,
                NAME,
            )
            .await?;
            let window = CpuWindow::start(&a.server_pid)?;
            let run = p
                .run(&a.subject, payload, a.msgs, a.window, a.timeout)
                .await?;
            (report.client_cpu, report.server_cpu) = window.finish(a.msgs)?;
            report.pub_stats = Some(side_stats(&[run], a.msgs));
        }
        JsMode::Pub => {
            let window = CpuWindow::start(&a.server_pid)?;
            let run = publish_window(js, &subject, payload, a.msgs, a.window).await?;
            (report.client_cpu, report.server_cpu) = window.finish(a.msgs)?;
            report.pub_stats = Some(side_stats(&[run], a.msgs));
        }
        JsMode::Sync => {
            for _ in 0..WARMUP {
                sync_publish(js, &subject, payload).await?;
            }
            let window = CpuWindow::start(&a.server_pid)?;
            let mut lat = Vec::with_capacity(a.msgs as usize);
            let start = Instant::now();
            for _ in 0..a.msgs {
                let t = Instant::now();
                sync_publish(js, &subject, payload).await?;
                lat.push(t.elapsed());
            }
            let secs = start.elapsed().as_secs_f64();
            (report.client_cpu, report.server_cpu) = window.finish(a.msgs)?;
            report.request = Some(latency_stats(lat, secs));
        }
        JsMode::Fetch => {
            publish_window(js, &subject, payload, a.msgs, a.window).await?;
            let stream = js
                .get_stream(NAME)
                .await
                .map_err(|e| anyhow!("stream {NAME}: {e}"))?;
            let cons = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(NAME.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: 65_536,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("creating consumer {NAME}: {e}"))?;
            if a.raw {
                let f = super::rawfetch::RawFetcher::connect(
                    &conn.socket_addr()?,
                    &conn.connect_json("canopy bench js raw fetch")?,
                )
                .await?;
                let window = CpuWindow::start(&a.server_pid)?;
                let run = f
                    .run(NAME, NAME, a.msgs, a.size, a.batch, a.timeout)
                    .await?;
                (report.client_cpu, report.server_cpu) = window.finish(run.msgs)?;
                report.sub_stats = Some(side_stats(&[run], a.msgs));
                return Ok(());
            }
            let window = CpuWindow::start(&a.server_pid)?;
            let start = Instant::now();
            let (mut got, mut bytes, mut empty_since) = (0u64, 0u64, None::<Instant>);
            while got < a.msgs {
                let want = a.batch.min((a.msgs - got) as usize);
                let mut batch = cons
                    .fetch()
                    .max_messages(want)
                    .messages()
                    .await
                    .map_err(|e| anyhow!("fetch: {e}"))?;
                let before = got;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| anyhow!("fetch: {e}"))?;
                    got += 1;
                    bytes += m.payload.len() as u64;
                    m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
                }
                if got == before {
                    let since = *empty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > a.timeout {
                        break;
                    }
                } else {
                    empty_since = None;
                }
            }
            js.client().flush().await.context("flushing acks")?;
            let end = Instant::now();
            (report.client_cpu, report.server_cpu) = window.finish(got)?;
            let run = ClientRun {
                msgs: got,
                bytes,
                start,
                end,
            };
            report.sub_stats = Some(side_stats(&[run], a.msgs));
        }
        JsMode::Kvput | JsMode::Kvget => {
            // The bucket's stream as the clients make it (history 1, direct get), created
            // with a plain request: async-nats 0.46 cannot parse nats-server 2.9's reply
            // to its own KV create.
            create_stream(
                &js.client(),
                serde_json::json!({
                    "name": format!("KV_{NAME}"),
                    "subjects": [format!("$KV.{NAME}.>")],
                    "storage": storage_name(storage),
                    "num_replicas": a.replicas,
                    "max_msgs_per_subject": 1,
                    "discard": "new",
                    "allow_direct": true,
                    "allow_rollup_hdrs": true,
                    "deny_delete": true,
                    "duplicate_window": 120_000_000_000u64,
                }),
            )
            .await?;
            report.js_cluster = Some(ready(&js.client(), &format!("KV_{NAME}"), a.replicas).await?);
            let store = js
                .get_key_value(NAME)
                .await
                .map_err(|e| anyhow!("opening bucket {NAME}: {e}"))?;
            let key = |i: u64| format!("k{}", i % KEYS);
            if mode == JsMode::Kvget {
                for i in 0..KEYS {
                    store
                        .put(key(i), payload.clone())
                        .await
                        .map_err(|e| anyhow!("kv put: {e}"))?;
                }
            }
            let op = |i: u64| {
                let (store, k, p) = (&store, key(i), payload.clone());
                async move {
                    if mode == JsMode::Kvput {
                        store
                            .put(k, p)
                            .await
                            .map(|_| ())
                            .map_err(|e| anyhow!("kv put: {e}"))
                    } else {
                        match store.get(k.clone()).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(anyhow!("kv get {k}: not found")),
                            Err(e) => Err(anyhow!("kv get {k}: {e}")),
                        }
                    }
                }
            };
            for i in 0..WARMUP {
                op(i).await?;
            }
            let window = CpuWindow::start(&a.server_pid)?;
            let mut lat = Vec::with_capacity(a.msgs as usize);
            let start = Instant::now();
            for i in 0..a.msgs {
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
            }
            let secs = start.elapsed().as_secs_f64();
            (report.client_cpu, report.server_cpu) = window.finish(a.msgs)?;
            report.request = Some(latency_stats(lat, secs));
        }
    }
    Ok(())
}

fn storage_name(s: stream::StorageType) -> &'static str {
    match s {
        stream::StorageType::Memory => "memory",
        stream::StorageType::File => "file",
    }
}

/// `$JS.API.STREAM.CREATE` with a raw config (what every server version understands).
/// A replicated stream is asked for again for up to 10 s: a cluster whose meta leader
/// was just elected may not know every peer yet (nats-server answers "insufficient
/// resources" then).
async fn create_stream(client: &async_nats::Client, config: serde_json::Value) -> Result<()> {
    let replicated = config["num_replicas"].as_u64().is_some_and(|r| r > 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match create_stream_once(client, config.clone()).await {
            Err(e) if replicated && Instant::now() < deadline => {
                eprintln!("{e:#}; asking again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            r => return r,
        }
    }
}

async fn create_stream_once(client: &async_nats::Client, config: serde_json::Value) -> Result<()> {
    let name = config["name"].as_str().unwrap_or_default().to_string();
    let m = client
        .request(
            format!("$JS.API.STREAM.CREATE.{name}"),
            serde_json::to_vec(&config)?.into(),
        )
        .await
        .map_err(|e| anyhow!("creating stream {name}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&m.payload).context("decoding the stream create reply")?;
    crate::js::check(&v).with_context(|| format!("creating stream {name}"))
}

/// `$JS.API.STREAM.INFO` of `name` as JSON, waiting at most `wait` for the answer.
async fn stream_info(
    client: &async_nats::Client,
    name: &str,
    wait: Duration,
) -> Result<serde_json::Value> {
    let req = client.request(format!("$JS.API.STREAM.INFO.{name}"), Bytes::new());
    let m = tokio::time::timeout(wait, req)
        .await
        .map_err(|_| anyhow!("stream info {name}: no answer within {wait:?}"))?
        .map_err(|e| anyhow!("stream info {name}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&m.payload).context("decoding the stream info reply")?;
    crate::js::check(&v).with_context(|| format!("stream info {name}"))?;
    Ok(v)
}

/// With `replicas` above 1, waits (up to 20 s) until the stream has a leader and
/// `replicas - 1` replicas that say they are current, asking again when an answer takes
/// over a second (Canopy at 571a251 sometimes leaves a `STREAM.INFO` sent right after an
/// R3 create unanswered). Returns the server the client is connected to and the stream's
/// `cluster` object as last seen.
async fn ready(
    client: &async_nats::Client,
    name: &str,
    replicas: usize,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let cluster = loop {
        let info = match stream_info(client, name, Duration::from_secs(1)).await {
            // A new replicated stream answers once its group has a leader.
            Err(_) if replicas > 1 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            r => r?,
        };
        let cluster = info["cluster"].clone();
        let leader = cluster["leader"].as_str().is_some_and(|l| !l.is_empty());
        let current = cluster["replicas"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|p| p["current"] == true).count());
        if replicas <= 1 || (leader && current + 1 >= replicas) {
            break cluster;
        }
        if Instant::now() > deadline {
            bail!("stream {name} not ready with {replicas} replicas after 20 s: {cluster}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(serde_json::json!({
        "connected": client.server_info().server_name,
        "cluster": cluster,
    }))
}

async fn sync_publish(
    js: &jetstream::Context,
    subject: &async_nats::Subject,
    payload: &Bytes,
) -> Result<()> {
    js.publish(subject.clone(), payload.clone())
        .await
        .map_err(|e| anyhow!("publish: {e}"))?
        .await
        .map_err(|e| anyhow!("publish ack: {e}"))?;
    Ok(())
}

/// Publish `n` messages keeping at most `window` acks outstanding; returns when every
/// ack has arrived.
async fn publish_window(
    js: &jetstream::Context,
    subject: &async_nats::Subject,
    payload: &Bytes,
    n: u64,
    window: usize,
) -> Result<ClientRun> {
    let start = Instant::now();
    let mut inflight = VecDeque::with_capacity(window);
    for _ in 0..n {
        if inflight.len() >= window {
            if let Some(f) = inflight.pop_front() {
                wait_ack(f).await?;
            }
        }
        let f = js
            .publish(subject.clone(), payload.clone())
            .await
            .map_err(|e| anyhow!("publish: {e}"))?;
        inflight.push_back(f);
    }
    while let Some(f) = inflight.pop_front() {
        wait_ack(f).await?;
    }
    Ok(ClientRun {
        msgs: n,
        bytes: n * payload.len() as u64,
        start,
        end: Instant::now(),
    })
}

async fn wait_ack(f: jetstream::context::PublishAckFuture) -> Result<()> {
    f.await.map_err(|e| anyhow!("publish ack: {e}"))?;
    Ok(())
}

fn empty_cpu() -> super::CpuStats {
    super::CpuStats {
        secs: 0.0,
        wall_secs: 0.0,
        share: 0.0,
        cores: crate::procstat::cores(),
        ns_per_msg: None,
    }
}
