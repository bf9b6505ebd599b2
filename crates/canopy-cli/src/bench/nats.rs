//! async-nats bench clients: publishers and subscribers for pub/sub throughput, and the
//! responder plus requesters of the request/reply latency mode.

use super::{join_all, latency_stats, split, BenchArgs, ClientRun, CpuWindow, Report};
use crate::conn::ConnArgs;
use anyhow::{bail, Context, Result};
use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Subscriber channel capacity: async-nats drops messages once a subscription's channel
/// is full, so give the bench consumer plenty of slack.
const SUB_CAPACITY: usize = 1 << 20;
/// How often a subscriber checks whether it has gone quiet.
const TICK: Duration = Duration::from_millis(100);

/// Connect subscribers and publishers, then run the publishers. Returns
/// (publisher runs, subscriber runs, the CPU window opened when publishing started).
pub async fn pubsub(
    conn: &ConnArgs,
    a: &BenchArgs,
    payload: &[u8],
    shares: &[u64],
) -> Result<(Vec<ClientRun>, Vec<ClientRun>, CpuWindow)> {
    let mut subs = Vec::new();
    for i in 0..a.subs {
        let client = conn
            .connect_with(&format!("canopy bench sub {i}"), |o| {
                o.subscription_capacity(SUB_CAPACITY)
            })
            .await?;
        let sub = client
            .subscribe(a.subject.clone())
            .await
            .context("subscribing")?;
        client.flush().await.context("flushing subscription")?;
        subs.push(tokio::spawn(receive(client, sub, a.msgs, a.timeout)));
    }
    let mut pubs = Vec::new();
    for i in 0..a.pubs {
        pubs.push(conn.connect(&format!("canopy bench pub {i}")).await?);
    }
    let window = CpuWindow::start(&a.server_pid)?;
    let payload = Bytes::copy_from_slice(payload);
    let subject = Subject::from(a.subject.clone());
    let handles: Vec<_> = pubs
        .into_iter()
        .zip(shares)
        .map(|(client, &n)| {
            let (subject, payload) = (subject.clone(), payload.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                for _ in 0..n {
                    client
                        .publish(subject.clone(), payload.clone())
                        .await
                        .context("publish")?;
                }
                client.flush().await.context("flushing publisher")?;
                Ok(ClientRun {
                    msgs: n,
                    bytes: n * payload.len() as u64,
                    start,
                    end: Instant::now(),
                })
            })
        })
        .collect();
    let pubs = join_all(handles).await?;
    let subs = join_all(subs).await?;
    Ok((pubs, subs, window))
}

/// Count messages until `expected` arrived or none arrived for `idle`.
async fn receive(
    _client: Client,
    mut sub: Subscriber,
    expected: u64,
    idle: Duration,
) -> Result<ClientRun> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut n, mut bytes, mut seen) = (0u64, 0u64, 0u64);
    let mut quiet = Duration::ZERO;
    let mut first = None;
    let mut last = Instant::now();
    while n < expected {
        tokio::select! {
            biased;
            m = sub.next() => {
                let Some(m) = m else { bail!("subscription closed after {n} messages") };
                n += 1;
                bytes += m.payload.len() as u64;
                last = Instant::now();
                first.get_or_insert(last);
            }
            _ = tick.tick() => {
                if n == seen {
                    quiet += TICK;
                    if quiet >= idle {
                        break;
                    }
                } else {
                    seen = n;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
    Ok(ClientRun {
        msgs: n,
        bytes,
        start: first.unwrap_or(last),
        end: last,
    })
}

/// Request/reply latency: one responder connection echoing payloads, `clients`
/// requester connections each sending its share of requests one at a time.
pub async fn run_request(conn: &ConnArgs, a: &BenchArgs) -> Result<Report> {
    let responder = conn.connect("canopy bench responder").await?;
    let mut sub = responder
        .subscribe(a.subject.clone())
        .await
        .context("subscribing responder")?;
    responder.flush().await.context("flushing responder")?;
    let echo = responder.clone();
    let serve = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                if echo.publish(reply, m.payload).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut clients = Vec::new();
    for i in 0..a.clients {
        let timeout = a.timeout;
        clients.push(
            conn.connect_with(&format!("canopy bench requester {i}"), |o| {
                o.request_timeout(Some(timeout))
            })
            .await?,
        );
    }
    let payload = Bytes::from(vec![b'r'; a.size]);
    let subject = Subject::from(a.subject.clone());
    let window = CpuWindow::start(&a.server_pid)?;
    let t0 = Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .zip(split(a.msgs, a.clients))
        .map(|(client, n)| {
            let (subject, payload) = (subject.clone(), payload.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let t = Instant::now();
                    client
                        .request(subject.clone(), payload.clone())
                        .await
                        .context("request")?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(a.msgs as usize);
    for h in handles {
        all.extend(h.await.context("requester panicked")??);
    }
    let secs = t0.elapsed().as_secs_f64();
    serve.abort();
    let (client_cpu, server_cpu) = window.finish(all.len() as u64)?;
    Ok(Report {
        mode: "request",
        client: "async-nats",
        subject: a.subject.clone(),
        msgs: a.msgs,
        size: a.size,
        pubs: a.clients,
        subs: 1,
        pub_stats: None,
        sub_stats: None,
        request: Some(latency_stats(all, secs)),
        idle: None,
        client_cpu,
        server_cpu,
        js_cluster: None,
    })
}
