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
    /// Reports gathered from every server.
    Report {
        #[command(subcommand)]
        cmd: ReportCmd,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ReportCmd {
    /// JetStream usage per server: `$SYS.REQ.SERVER.PING.JSZ` (needs a system-account
    /// user, like natscli), or with --monitor the /jsz of one server's monitoring port.
    #[command(alias = "js")]
    Jetstream {
        /// How long to gather replies.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        wait: Duration,
        /// Read http://HOST:PORT/jsz of one server instead (no system account needed).
        #[arg(long)]
        monitor: Option<String>,
        /// Print the replies as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(conn: &ConnArgs, cmd: ServerCmd) -> Result<()> {
    match cmd {
        ServerCmd::Report {
            cmd:
                ReportCmd::Jetstream {
                    wait,
                    monitor,
                    json,
                },
        } => report_jetstream(conn, wait, monitor.as_deref(), json).await,
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

/// `server report jetstream`: one row per server from JSZ replies (`{server, data}`), or
/// from one server's /jsz (`data` only, the server named by `server_name`).
async fn report_jetstream(
    conn: &ConnArgs,
    wait: Duration,
    monitor: Option<&str>,
    json: bool,
) -> Result<()> {
    let replies: Vec<Value> = match monitor {
        Some(url) => {
            let body = http_get(url, "/jsz").await?;
            let data: Value = serde_json::from_str(&body).context("decoding /jsz")?;
            // /jsz carries only the server id; /varz has the name.
            let name = match http_get(url, "/varz").await {
                Ok(b) => serde_json::from_str::<Value>(&b)
                    .map(|v| v["server_name"].clone())
                    .unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let id = data["server_id"].clone();
            vec![serde_json::json!({ "server": { "name": name, "id": id }, "data": data })]
        }
        None => gather(conn, "$SYS.REQ.SERVER.PING.JSZ", wait)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&replies)?);
        return Ok(());
    }
    let num = |x: &Value| x.as_u64().unwrap_or(0);
    println!(
        "{:<20} {:<10} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>10} {:>8}",
        "SERVER",
        "DOMAIN",
        "STREAMS",
        "CONSUMERS",
        "MESSAGES",
        "BYTES",
        "MEMORY",
        "FILE",
        "API REQS",
        "API ERR"
    );
    let mut tot = [0u64; 8];
    for v in &replies {
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            eprintln!("{}: {err}", v["server"]["name"].as_str().unwrap_or("?"));
            continue;
        }
        let d = &v["data"];
        let row = [
            num(&d["streams"]),
            num(&d["consumers"]),
            num(&d["messages"]),
            num(&d["bytes"]),
            num(&d["memory"]),
            num(&d["storage"]),
            num(&d["api"]["total"]),
            num(&d["api"]["errors"]),
        ];
        for (t, x) in tot.iter_mut().zip(row) {
            *t += x;
        }
        let name = v["server"]["name"]
            .as_str()
            .or_else(|| d["server_name"].as_str())
            .unwrap_or("?");
        print_js_row(name, d["config"]["domain"].as_str().unwrap_or(""), &row);
    }
    if replies.len() > 1 {
        print_js_row("TOTAL", "", &tot);
    }
    Ok(())
}

fn print_js_row(name: &str, domain: &str, r: &[u64; 8]) {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    println!(
        "{:<20} {:<10} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>10} {:>8}",
        name,
        domain,
        r[0],
        r[1],
        crate::util::commas(r[2] as f64),
        mib(r[3]),
        mib(r[4]),
        mib(r[5]),
        r[6],
        r[7]
    );
}

/// A plain HTTP/1.0 GET of `path` on `http://host:port` (monitoring ports are plain HTTP).
async fn http_get(url: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = url
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        bail!("--monitor takes http://HOST:PORT, not {url:?}");
    }
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(hostport)
            .await
            .with_context(|| format!("connecting to {hostport}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, anyhow::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET {url}{path} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {url}{path}: malformed HTTP reply"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("GET {url}{path}: HTTP status {status}");
    }
    Ok(body.to_string())
}
