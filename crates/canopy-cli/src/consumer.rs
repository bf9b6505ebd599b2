//! `consumer add|info|ls|rm|next`: raw `$JS.API.CONSUMER.*` requests with natscli's flag
//! names. `next` sends one `CONSUMER.MSG.NEXT` pull and acknowledges what it prints with
//! an ack that waits for the server's confirmation.

use crate::conn::ConnArgs;
use crate::js::{human_limit, human_nanos, nanos, parse_age, rows, text, Api, JsOpts};
use crate::util::parse_duration;
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum ConsumerCmd {
    /// Create a durable consumer (pull unless --target is given).
    #[command(alias = "create")]
    Add(AddArgs),
    /// Show a consumer's configuration and state.
    Info { stream: String, consumer: String },
    /// List a stream's consumers.
    #[command(alias = "list")]
    Ls {
        stream: String,
        /// Names only.
        #[arg(short, long)]
        names: bool,
    },
    /// Delete a consumer.
    #[command(alias = "delete", alias = "del")]
    Rm {
        stream: String,
        consumer: String,
        /// Accepted for natscli compatibility (canopy never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Fetch messages from a pull consumer and acknowledge them.
    Next {
        stream: String,
        consumer: String,
        /// How many messages to fetch.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Do not acknowledge the messages.
        #[arg(long = "no-ack")]
        no_ack: bool,
        /// How long the server waits for messages.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        wait: Duration,
        /// Print only the payloads.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    pub stream: String,
    /// Durable name.
    pub consumer: String,
    /// A pull consumer (the default; accepted for natscli compatibility).
    #[arg(long, conflicts_with = "target")]
    pub pull: bool,
    /// Push consumer: deliver to this subject.
    #[arg(long)]
    pub target: Option<String>,
    /// Push consumer queue group.
    #[arg(long = "deliver-group", requires = "target")]
    pub deliver_group: Option<String>,
    /// Where to start: all, last, new, last-per-subject, a sequence number, or an age
    /// such as 1h (messages newer than that).
    #[arg(long, default_value = "all")]
    pub deliver: String,
    /// Acknowledgement policy.
    #[arg(long, value_enum, default_value = "explicit")]
    pub ack: AckPolicy,
    /// Only messages on these subjects (comma separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub filter: Vec<String>,
    /// Replay policy.
    #[arg(long, value_enum, default_value = "instant")]
    pub replay: Replay,
    /// How long to wait for an ack before redelivering, e.g. 30s.
    #[arg(long, value_parser = parse_age)]
    pub wait: Option<Duration>,
    /// Maximum deliveries of one message (-1: unlimited).
    #[arg(long = "max-deliver", allow_hyphen_values = true)]
    pub max_deliver: Option<i64>,
    /// Maximum unacknowledged messages.
    #[arg(long = "max-pending")]
    pub max_pending: Option<i64>,
    /// Maximum waiting pull requests.
    #[arg(long = "max-waiting")]
    pub max_waiting: Option<i64>,
    /// Idle heartbeat interval of a push consumer.
    #[arg(long, value_parser = parse_age, requires = "target")]
    pub heartbeat: Option<Duration>,
    /// Flow control for a push consumer.
    #[arg(long = "flow-control", requires = "target")]
    pub flow_control: bool,
    /// Deliver headers only.
    #[arg(long = "headers-only")]
    pub headers_only: bool,
    /// Consumer description.
    #[arg(long)]
    pub description: Option<String>,
    /// Accept the defaults for everything not given (canopy never prompts).
    #[arg(long)]
    pub defaults: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AckPolicy {
    None,
    All,
    Explicit,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Replay {
    Instant,
    Original,
}

impl AddArgs {
    pub fn config(&self) -> Result<Value> {
        let mut c = json!({
            "durable_name": self.consumer,
            "ack_policy": match self.ack { AckPolicy::None => "none", AckPolicy::All => "all", AckPolicy::Explicit => "explicit" },
            "replay_policy": match self.replay { Replay::Instant => "instant", Replay::Original => "original" },
        });
        match self.deliver.as_str() {
            "all" => c["deliver_policy"] = "all".into(),
            "last" => c["deliver_policy"] = "last".into(),
            "new" => c["deliver_policy"] = "new".into(),
            "last-per-subject" | "last_per_subject" => {
                c["deliver_policy"] = "last_per_subject".into()
            }
            other => {
                if let Ok(seq) = other.parse::<u64>() {
                    c["deliver_policy"] = "by_start_sequence".into();
                    c["opt_start_seq"] = seq.into();
                } else {
                    let age = parse_age(other).map_err(|_| {
                        anyhow!("--deliver {other:?}: use all, last, new, last-per-subject, a sequence or an age like 1h")
                    })?;
                    let start = std::time::SystemTime::now()
                        .checked_sub(age)
                        .ok_or_else(|| anyhow!("--deliver {other:?} is too far back"))?;
                    c["deliver_policy"] = "by_start_time".into();
                    c["opt_start_time"] = rfc3339(start).into();
                }
            }
        }
        match self.filter.as_slice() {
            [] => {}
            [one] => c["filter_subject"] = one.clone().into(),
            many => c["filter_subjects"] = many.to_vec().into(),
        }
        if let Some(t) = &self.target {
            c["deliver_subject"] = t.clone().into();
        }
        if let Some(g) = &self.deliver_group {
            c["deliver_group"] = g.clone().into();
        }
        if let Some(w) = self.wait {
            c["ack_wait"] = nanos(w).into();
        }
        if let Some(m) = self.max_deliver {
            c["max_deliver"] = m.into();
        }
        if let Some(m) = self.max_pending {
            c["max_ack_pending"] = m.into();
        }
        if let Some(m) = self.max_waiting {
            c["max_waiting"] = m.into();
        }
        if let Some(h) = self.heartbeat {
            c["idle_heartbeat"] = nanos(h).into();
        }
        if self.flow_control {
            c["flow_control"] = true.into();
        }
        if self.headers_only {
            c["headers_only"] = true.into();
        }
        if let Some(d) = &self.description {
            c["description"] = d.clone().into();
        }
        Ok(c)
    }
}

/// A UTC RFC 3339 timestamp (civil-from-days, no time crate needed).
fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

pub async fn run(conn: &ConnArgs, opts: &JsOpts, cmd: ConsumerCmd) -> Result<()> {
    let api = Api::connect(conn, opts, "canopy consumer").await?;
    match cmd {
        ConsumerCmd::Add(a) => {
            let body =
                json!({ "stream_name": a.stream, "config": a.config()?, "action": "create" });
            let v = api
                .request(
                    &format!("CONSUMER.CREATE.{}.{}", a.stream, a.consumer),
                    &body,
                )
                .await?;
            if !api.json(&v)? {
                println!("Consumer {} > {} created", a.stream, a.consumer);
                print_info(&v);
            }
        }
        ConsumerCmd::Info { stream, consumer } => {
            let v = api
                .request(&format!("CONSUMER.INFO.{stream}.{consumer}"), &Value::Null)
                .await?;
            if !api.json(&v)? {
                print_info(&v);
            }
        }
        ConsumerCmd::Ls { stream, names } => {
            let list = api
                .list(&format!("CONSUMER.LIST.{stream}"), "consumers", None)
                .await?;
            if api.json(&Value::Array(list.clone()))? {
                return Ok(());
            }
            if names {
                for c in &list {
                    println!("{}", text(&c["name"]));
                }
                return Ok(());
            }
            if list.is_empty() {
                println!("No consumers defined on {stream}");
                return Ok(());
            }
            println!(
                "{:<24} {:<5} {:>12} {:>12} {:>12} {:>14}",
                "NAME", "KIND", "PENDING", "ACK PENDING", "REDELIVERED", "LAST DELIVERED"
            );
            for c in &list {
                let kind = if c["config"]["deliver_subject"].is_string() {
                    "push"
                } else {
                    "pull"
                };
                println!(
                    "{:<24} {:<5} {:>12} {:>12} {:>12} {:>14}",
                    text(&c["name"]),
                    kind,
                    human_limit(&c["num_pending"]),
                    human_limit(&c["num_ack_pending"]),
                    human_limit(&c["num_redelivered"]),
                    text(&c["delivered"]["stream_seq"])
                );
            }
        }
        ConsumerCmd::Rm {
            stream,
            consumer,
            force: _,
        } => {
            let v = api
                .request(
                    &format!("CONSUMER.DELETE.{stream}.{consumer}"),
                    &Value::Null,
                )
                .await?;
            if !api.json(&v)? {
                println!("Consumer {stream} > {consumer} deleted");
            }
        }
        ConsumerCmd::Next {
            stream,
            consumer,
            count,
            no_ack,
            wait,
            raw,
        } => next(&api, &stream, &consumer, count, !no_ack, wait, raw).await?,
    }
    Ok(())
}

/// One pull request for `count` messages; prints them and acks each (waiting for the
/// server's confirmation) unless told not to.
async fn next(
    api: &Api,
    stream: &str,
    consumer: &str,
    count: u64,
    ack: bool,
    wait: Duration,
    raw: bool,
) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let client = &api.client;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .context("subscribing to the reply inbox")?;
    let subject = format!("{}.CONSUMER.MSG.NEXT.{stream}.{consumer}", api.prefix);
    let body = json!({ "batch": count, "expires": nanos(wait) });
    client
        .publish_with_reply(subject, inbox, serde_json::to_vec(&body)?.into())
        .await
        .context("sending the pull request")?;
    client.flush().await.context("flushing the pull request")?;
    let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(1);
    let mut got = 0u64;
    let mut out = Vec::new();
    while got < count {
        let m = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        if let Some(status) = m.status {
            let code = status.as_u16();
            match code {
                100 => continue,
                404 | 408 => break,
                _ => bail!(
                    "pull request answered {code} {}",
                    m.description.as_deref().unwrap_or("")
                ),
            }
        }
        got += 1;
        let reply = m.reply.as_deref().unwrap_or("").to_string();
        let meta = AckMeta::parse(&reply);
        if api.opts.json {
            out.push(json!({
                "subject": m.subject.as_str(),
                "stream_seq": meta.as_ref().map(|x| x.stream_seq),
                "consumer_seq": meta.as_ref().map(|x| x.consumer_seq),
                "delivered": meta.as_ref().map(|x| x.delivered),
                "pending": meta.as_ref().map(|x| x.pending),
                "data": String::from_utf8_lossy(&m.payload),
            }));
        } else if raw {
            println!("{}", String::from_utf8_lossy(&m.payload));
        } else {
            match &meta {
                Some(x) => println!(
                    "[{stream} #{} / consumer #{}] subject: {} ({} bytes, pending {})",
                    x.stream_seq,
                    x.consumer_seq,
                    m.subject,
                    m.payload.len(),
                    x.pending
                ),
                None => println!("subject: {} ({} bytes)", m.subject, m.payload.len()),
            }
            if let Some(h) = &m.headers {
                for (k, vals) in h.iter() {
                    for v in vals {
                        println!("{k}: {v}");
                    }
                }
            }
            println!("{}", String::from_utf8_lossy(&m.payload));
        }
        if ack && !reply.is_empty() {
            client
                .request(reply.clone(), "+ACK".into())
                .await
                .map_err(|e| anyhow!("acknowledging {reply}: {e}"))?;
            if !api.opts.json && !raw {
                println!("Acknowledged message");
            }
        }
    }
    if api.opts.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if got == 0 {
        bail!("no message available on {stream} > {consumer} within {wait:?}");
    }
    Ok(())
}

/// The sequence numbers in a `$JS.ACK` reply subject (both the 9-token form and the
/// domain form with the account hash and a random token).
#[derive(Debug, PartialEq, Eq)]
pub struct AckMeta {
    pub delivered: u64,
    pub stream_seq: u64,
    pub consumer_seq: u64,
    pub pending: u64,
}

impl AckMeta {
    pub fn parse(reply: &str) -> Option<AckMeta> {
        let t: Vec<&str> = reply.split('.').collect();
        if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
            return None;
        }
        // v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        // v2: $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<rand>]
        let base = if t.len() == 9 { 4 } else { 6 };
        let num = |i: usize| t.get(i).and_then(|s| s.parse::<u64>().ok());
        Some(AckMeta {
            delivered: num(base)?,
            stream_seq: num(base + 1)?,
            consumer_seq: num(base + 2)?,
            pending: num(base + 4)?,
        })
    }
}

fn print_info(v: &Value) {
    let (c, d, a) = (&v["config"], &v["delivered"], &v["ack_floor"]);
    println!(
        "Information for Consumer {} > {} created {}",
        text(&v["stream_name"]),
        text(&v["name"]),
        text(&v["created"])
    );
    println!();
    println!("Configuration:");
    let mut cfg = vec![
        ("Name", text(&v["name"])),
        (
            "Kind",
            if c["deliver_subject"].is_string() {
                format!("push to {}", text(&c["deliver_subject"]))
            } else {
                "pull".into()
            },
        ),
        ("Deliver policy", text(&c["deliver_policy"])),
        ("Ack policy", text(&c["ack_policy"])),
        ("Ack wait", human_nanos(&c["ack_wait"])),
        ("Replay policy", text(&c["replay_policy"])),
        ("Max deliver", human_limit(&c["max_deliver"])),
        ("Max ack pending", human_limit(&c["max_ack_pending"])),
    ];
    if let Some(f) = c["filter_subject"].as_str() {
        cfg.push(("Filter subject", f.to_string()));
    }
    if let Some(fs) = c["filter_subjects"].as_array() {
        let fs: Vec<String> = fs.iter().map(text).collect();
        cfg.push(("Filter subjects", fs.join(", ")));
    }
    if c["deliver_subject"].is_null() {
        cfg.push(("Max waiting pulls", human_limit(&c["max_waiting"])));
    }
    rows(&cfg);
    println!();
    println!("State:");
    rows(&[
        (
            "Last delivered",
            format!(
                "consumer seq {} stream seq {}",
                text(&d["consumer_seq"]),
                text(&d["stream_seq"])
            ),
        ),
        (
            "Ack floor",
            format!(
                "consumer seq {} stream seq {}",
                text(&a["consumer_seq"]),
                text(&a["stream_seq"])
            ),
        ),
        ("Outstanding acks", human_limit(&v["num_ack_pending"])),
        ("Redelivered", human_limit(&v["num_redelivered"])),
        ("Waiting pulls", human_limit(&v["num_waiting"])),
        ("Unprocessed", human_limit(&v["num_pending"])),
    ]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects() {
        let v1 = AckMeta::parse("$JS.ACK.S.C.1.5.3.1700000000000000000.7").unwrap();
        assert_eq!(
            (v1.delivered, v1.stream_seq, v1.consumer_seq, v1.pending),
            (1, 5, 3, 7)
        );
        let v2 = AckMeta::parse("$JS.ACK.hub.ACCHASH.S.C.2.9.4.1700000000000000000.0.xyz").unwrap();
        assert_eq!((v2.delivered, v2.stream_seq, v2.consumer_seq), (2, 9, 4));
        assert!(AckMeta::parse("_INBOX.x").is_none());
    }

    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000000Z");
    }
}
