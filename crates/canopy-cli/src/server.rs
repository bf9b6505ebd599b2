//! `server info|ping|list`: system-account requests. `info` asks
//! `$SYS.REQ.SERVER.PING.VARZ`; `ping` and `list` publish to `$SYS.REQ.SERVER.PING` (the
//! statsz ping) and gather every server's reply for a short window.

use crate::conn::ConnArgs;
use crate::util::parse_duration;
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum ServerCmd {
    /// Show one server's /varz (via $SYS.REQ.SERVER.PING.VARZ).
    Info {
        /// Print the whole reply as JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for the reply.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Ping all servers and show their names and round-trip times.
    Ping {
        /// How long to gather replies.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        wait: Duration,
    },
    /// List all servers with connection, subscription and traffic counters.
    List {
        /// How long to gather replies.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        wait: Duration,
        /// Print the replies as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(conn: &ConnArgs, cmd: ServerCmd) -> Result<()> {
    match cmd {
        ServerCmd::Info { json, timeout } => info(conn, json, timeout).await,
        ServerCmd::Ping { wait } => {
            let replies = gather(conn, "$SYS.REQ.SERVER.PING", wait).await?;
            for (rtt, v) in &replies {
                let s = &v["server"];
                println!(
                    "{:<24} {:<56} rtt {:>10.3?}",
                    s["name"].as_str().unwrap_or("?"),
                    s["id"].as_str().unwrap_or("?"),
                    rtt
                );
            }
            println!("{} server(s) answered", replies.len());
            Ok(())
        }
        ServerCmd::List { wait, json } => {
            let replies = gather(conn, "$SYS.REQ.SERVER.PING", wait).await?;
            if json {
                let all: Vec<&Value> = replies.iter().map(|(_, v)| v).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<12} {:<10} {:>6} {:>6} {:>6} {:>6} {:>10} {:>5} {:>10}",
                "NAME",
                "CLUSTER",
                "VERSION",
                "CONNS",
                "SUBS",
                "ROUTES",
                "LEAFS",
                "MEM",
                "CPU",
                "RTT"
            );
            for (rtt, v) in &replies {
                let s = &v["server"];
                let z = &v["statsz"];
                let num = |x: &Value| x.as_u64().unwrap_or(0);
                println!(
                    "{:<20} {:<12} {:<10} {:>6} {:>6} {:>6} {:>6} {:>9}K {:>5.1} {:>10.3?}",
                    s["name"].as_str().unwrap_or("?"),
                    s["cluster"].as_str().unwrap_or(""),
                    s["ver"].as_str().unwrap_or("?"),
                    num(&z["connections"]),
                    num(&z["subscriptions"]),
                    z["routes"].as_array().map_or(0, |r| r.len()),
                    num(&z["leafnodes"]),
                    num(&z["mem"]) / 1024,
                    z["cpu"].as_f64().unwrap_or(0.0),
                    rtt
                );
            }
            println!("{} server(s)", replies.len());
            Ok(())
        }
    }
}

async fn info(conn: &ConnArgs, json: bool, timeout: Duration) -> Result<()> {
    let client = conn
        .connect_with("canopy server", |o| o.request_timeout(Some(timeout)))
        .await?;
    let m = client
        .request("$SYS.REQ.SERVER.PING.VARZ", "{}".into())
        .await
        .map_err(|e| {
            anyhow!("no reply to $SYS.REQ.SERVER.PING.VARZ ({e}); is this a system-account user?")
        })?;
    let v: Value = serde_json::from_slice(&m.payload).context("decoding VARZ reply")?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        bail!("server error: {err}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let d = &v["data"];
    let field = |k: &str| match &d[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    for (label, key) in [
        ("Server name", "server_name"),
        ("Server ID", "server_id"),
        ("Version", "version"),
        ("Host", "host"),
        ("Port", "port"),
        ("Uptime", "uptime"),
        ("Connections", "connections"),
        ("Total connections", "total_connections"),
        ("Subscriptions", "subscriptions"),
        ("Routes", "routes"),
        ("Leaf nodes", "leafnodes"),
        ("In msgs", "in_msgs"),
        ("Out msgs", "out_msgs"),
        ("In bytes", "in_bytes"),
        ("Out bytes", "out_bytes"),
        ("Slow consumers", "slow_consumers"),
        ("Memory (bytes)", "mem"),
        ("CPU (%)", "cpu"),
        ("Max payload", "max_payload"),
    ] {
        println!("{label:>18}: {}", field(key));
    }
    Ok(())
}

/// Publish one ping and collect every JSON reply that arrives within `wait`.
async fn gather(conn: &ConnArgs, subject: &str, wait: Duration) -> Result<Vec<(Duration, Value)>> {
    let client = conn.connect("canopy server").await?;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .context("subscribing to inbox")?;
    let start = Instant::now();
    client
        .publish_with_reply(subject.to_string(), inbox, "{}".into())
        .await
        .context("publishing ping")?;
    client.flush().await.context("flushing ping")?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        let rtt = start.elapsed();
        match serde_json::from_slice::<Value>(&m.payload) {
            Ok(v) => out.push((rtt, v)),
            Err(e) => eprintln!("ignoring undecodable reply: {e}"),
        }
    }
    if out.is_empty() {
        bail!("no server answered {subject} within {wait:?}; is this a system-account user?");
    }
    out.sort_by(|a, b| {
        a.1["server"]["name"]
            .as_str()
            .cmp(&b.1["server"]["name"].as_str())
    });
    Ok(out)
}
