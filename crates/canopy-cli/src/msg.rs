//! Message commands: `pub`, `sub`, `req`, `reply`. Output follows the nats CLI shape:
//! `[#n] Received on "subject"` (with ` with reply "..."`), header lines, then the body.

use crate::conn::ConnArgs;
use crate::util::{parse_duration, parse_header};
use anyhow::{Context, Result};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use std::io::{Read, Write};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct PubArgs {
    /// Subject to publish to.
    subject: String,
    /// Message body; read from stdin when omitted. `{{Count}}` is replaced by the message number.
    body: Option<String>,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Header `Key:Value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Reply subject to set on the message.
    #[arg(long)]
    reply: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct SubArgs {
    /// Subject (wildcards allowed).
    subject: String,
    /// Join this queue group.
    #[arg(long)]
    queue: Option<String>,
    /// Exit after this many messages (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(clap::Args, Debug)]
pub struct ReqArgs {
    /// Subject to send the request to.
    subject: String,
    /// Request body.
    #[arg(default_value = "")]
    body: String,
    /// How long to wait for the reply (e.g. 500ms, 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Header `Key:Value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ReplyArgs {
    /// Subject to serve.
    subject: String,
    /// Reply body. `{{Count}}` is replaced by the request number.
    body: String,
    /// Queue group to join (so several responders share the load).
    #[arg(long, default_value = "canopy-reply")]
    queue: String,
    /// Exit after answering this many requests (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

fn headers_from(flags: &[String]) -> Result<Option<HeaderMap>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::new();
    for h in flags {
        let (k, v) = parse_header(h)?;
        map.append(k.as_str(), v.as_str());
    }
    Ok(Some(map))
}

fn render(template: &str, n: u64) -> Bytes {
    if template.contains("{{Count}}") {
        Bytes::from(template.replace("{{Count}}", &n.to_string()))
    } else {
        Bytes::copy_from_slice(template.as_bytes())
    }
}

pub async fn publish(conn: &ConnArgs, a: PubArgs) -> Result<()> {
    let body = match a.body {
        Some(b) => b,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading body from stdin")?;
            s
        }
    };
    let headers = headers_from(&a.headers)?;
    let client = conn.connect("canopy pub").await?;
    for n in 1..=a.count {
        let payload = render(&body, n);
        let subject = a.subject.clone();
        match (&a.reply, &headers) {
            (Some(r), Some(h)) => {
                client
                    .publish_with_reply_and_headers(subject, r.clone(), h.clone(), payload)
                    .await
            }
            (Some(r), None) => client.publish_with_reply(subject, r.clone(), payload).await,
            (None, Some(h)) => {
                client
                    .publish_with_headers(subject, h.clone(), payload)
                    .await
            }
            (None, None) => client.publish(subject, payload).await,
        }
        .with_context(|| format!("publishing to {}", a.subject))?;
    }
    client.flush().await.context("flushing")?;
    eprintln!("Published {} message(s) to {:?}", a.count, a.subject);
    Ok(())
}

/// Write one received message in the nats CLI layout.
fn print_msg(out: &mut impl Write, n: u64, m: &Message) -> std::io::Result<()> {
    match &m.reply {
        Some(r) => writeln!(
            out,
            "[#{n}] Received on \"{}\" with reply \"{r}\"",
            m.subject
        )?,
        None => writeln!(out, "[#{n}] Received on \"{}\"", m.subject)?,
    }
    print_headers(out, m)?;
    out.write_all(&m.payload)?;
    writeln!(out)?;
    writeln!(out)?;
    out.flush()
}

fn print_headers(out: &mut impl Write, m: &Message) -> std::io::Result<()> {
    if let Some(status) = m.status {
        writeln!(
            out,
            "Status: {status} {}",
            m.description.as_deref().unwrap_or("")
        )?;
    }
    if let Some(h) = &m.headers {
        let mut lines: Vec<String> = h
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}: {v}")))
            .collect();
        lines.sort();
        for l in lines {
            writeln!(out, "{l}")?;
        }
        if !h.is_empty() {
            writeln!(out)?;
        }
    }
    Ok(())
}

pub async fn subscribe(conn: &ConnArgs, a: SubArgs) -> Result<()> {
    let client = conn.connect("canopy sub").await?;
    let mut sub = match &a.queue {
        Some(q) => client.queue_subscribe(a.subject.clone(), q.clone()).await,
        None => client.subscribe(a.subject.clone()).await,
    }
    .with_context(|| format!("subscribing to {}", a.subject))?;
    // Make sure the server has the interest before announcing readiness.
    client.flush().await.context("flushing subscription")?;
    eprintln!("Subscribing on {:?}", a.subject);
    let mut n = 0;
    let stdout = std::io::stdout();
    while let Some(m) = sub.next().await {
        n += 1;
        print_msg(&mut stdout.lock(), n, &m)?;
        if a.count > 0 && n >= a.count {
            break;
        }
    }
    Ok(())
}

pub async fn request(conn: &ConnArgs, a: ReqArgs) -> Result<()> {
    let client = conn.connect("canopy req").await?;
    let mut req = async_nats::Request::new()
        .payload(Bytes::from(a.body.clone()))
        .timeout(Some(a.timeout));
    if let Some(h) = headers_from(&a.headers)? {
        req = req.headers(h);
    }
    let start = Instant::now();
    let m = client
        .send_request(a.subject.clone(), req)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::Other => {
                anyhow::anyhow!("request on {:?} failed: {e}", a.subject)
            }
            kind => anyhow::anyhow!("request on {:?} failed: {kind}", a.subject),
        })?;
    eprintln!("Received with rtt {:?}", start.elapsed());
    let mut out = std::io::stdout().lock();
    print_headers(&mut out, &m)?;
    out.write_all(&m.payload)?;
    writeln!(out)?;
    Ok(())
}

pub async fn reply(conn: &ConnArgs, a: ReplyArgs) -> Result<()> {
    let client = conn.connect("canopy reply").await?;
    let mut sub = client
        .queue_subscribe(a.subject.clone(), a.queue.clone())
        .await
        .with_context(|| format!("subscribing to {}", a.subject))?;
    client.flush().await.context("flushing subscription")?;
    eprintln!("Listening on {:?} in group {:?}", a.subject, a.queue);
    let mut n = 0;
    let stdout = std::io::stdout();
    while let Some(m) = sub.next().await {
        n += 1;
        print_msg(&mut stdout.lock(), n, &m)?;
        match &m.reply {
            Some(r) => client
                .publish(r.clone(), render(&a.body, n))
                .await
                .context("publishing reply")?,
            None => eprintln!("message #{n} has no reply subject; not answered"),
        }
        if a.count > 0 && n >= a.count {
            break;
        }
    }
    client.flush().await.context("flushing replies")?;
    Ok(())
}
