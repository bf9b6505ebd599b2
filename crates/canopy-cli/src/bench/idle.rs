//! Idle-connection memory: open N raw connections (INFO, CONNECT, PING/PONG), hold them
//! for `--settle`, and report the server's VmRSS growth per connection; with
//! `--idle-subs K` each connection then subscribes to K distinct subjects and the growth
//! per subscription is reported too.

use super::raw::RawConn;
use super::{BenchArgs, CpuWindow, IdleStats, Report};
use crate::conn::ConnArgs;
use crate::procstat;
use anyhow::{Context, Result};
use futures::StreamExt;
use std::time::Instant;

/// Handshakes in flight at once (keeps the accept backlog from overflowing).
const PARALLEL: usize = 64;

pub async fn run(conn: &ConnArgs, a: &BenchArgs, n: usize) -> Result<Report> {
    let addr = conn.socket_addr()?;
    let json = conn.connect_json("canopy bench idle")?;
    // Memory is the first server's (the one the connections go to).
    let rss = || {
        a.server_pid
            .first()
            .map(|&p| procstat::rss_kib(p))
            .transpose()
    };
    let rss_before = rss()?;
    let window = CpuWindow::start(&a.server_pid)?;
    let t0 = Instant::now();
    let conns: Vec<RawConn> = futures::stream::iter(0..n)
        .map(|_| RawConn::connect(&addr, &json))
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("opening idle connections")?;
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let rss_after = rss()?;
    let (client_cpu, server_cpu) = window.finish(0)?;
    let mut conns = conns;
    let (subs, bytes_per_sub) = if a.idle_subs > 0 {
        let k = a.idle_subs;
        // Distinct subjects, as an application's inboxes or per-entity subjects are.
        futures::stream::iter(conns.iter_mut().enumerate())
            .map(|(i, c)| c.subscribe_many(&a.subject, i, k))
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()
            .context("subscribing")?;
        tokio::time::sleep(a.settle).await;
        let rss_subs = rss()?;
        let total = n * k;
        let per = rss_after
            .zip(rss_subs)
            .map(|(b, s)| (s as f64 - b as f64) * 1024.0 / total.max(1) as f64);
        (Some(total), per)
    } else {
        (None, None)
    };
    drop(conns);
    let delta = rss_before.zip(rss_after).map(|(b, a)| a as i64 - b as i64);
    Ok(Report {
        mode: "idle",
        client: "raw",
        subject: a.subject.clone(),
        msgs: 0,
        size: 0,
        pubs: 0,
        subs: 0,
        pub_stats: None,
        sub_stats: None,
        request: None,
        idle: Some(IdleStats {
            conns: n,
            connect_secs,
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            delta_kib: delta,
            bytes_per_conn: delta.map(|d| d as f64 * 1024.0 / n.max(1) as f64),
            subs,
            bytes_per_sub,
        }),
        client_cpu,
        server_cpu,
        js_cluster: None,
    })
}
