//! `stream add|info|ls|rm|purge|get`: raw `$JS.API.STREAM.*` requests with natscli's flag
//! names. Nothing prompts: unspecified options take the server's defaults (so
//! `--defaults` is accepted and changes nothing).

use crate::conn::ConnArgs;
use crate::js::{
    human_bytes, human_limit, human_nanos, nanos, parse_age, parse_size, rows, text, Api, JsOpts,
    Storage,
};
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug)]
pub enum StreamCmd {
    /// Create a stream.
    #[command(alias = "create")]
    Add(AddArgs),
    /// Show a stream's configuration and state.
    Info { stream: String },
    /// List the streams.
    #[command(alias = "list")]
    Ls {
        /// Only streams that listen on this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Names only.
        #[arg(short, long)]
        names: bool,
    },
    /// Delete a stream and its messages.
    #[command(alias = "delete", alias = "del")]
    Rm {
        stream: String,
        /// Accepted for natscli compatibility (canopy never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Remove messages from a stream.
    Purge {
        stream: String,
        /// Only messages on this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Remove messages below this sequence.
        #[arg(long)]
        seq: Option<u64>,
        /// Keep this many of the newest messages.
        #[arg(long)]
        keep: Option<u64>,
        /// Accepted for natscli compatibility (canopy never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Get one message by sequence, or the last one on a subject.
    Get {
        stream: String,
        /// Sequence number.
        #[arg(required_unless_present = "last_for")]
        seq: Option<u64>,
        /// The last message on this subject instead of a sequence.
        #[arg(long = "last-for", conflicts_with = "seq")]
        last_for: Option<String>,
        /// Print only the payload.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// Stream name.
    pub stream: String,
    /// Subjects the stream listens on (comma separated or repeated); default: the name.
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    #[arg(long, value_enum, default_value = "file")]
    pub storage: Storage,
    /// Retention policy.
    #[arg(long, value_enum, default_value = "limits")]
    pub retention: Retention,
    /// Which messages to discard when a limit is reached.
    #[arg(long, value_enum, default_value = "old")]
    pub discard: Discard,
    /// Maximum messages kept (-1: unlimited).
    #[arg(long = "max-msgs", default_value = "-1", allow_hyphen_values = true)]
    pub max_msgs: i64,
    /// Maximum messages per subject (-1: unlimited).
    #[arg(
        long = "max-msgs-per-subject",
        default_value = "-1",
        allow_hyphen_values = true
    )]
    pub max_msgs_per_subject: i64,
    /// Maximum total size, e.g. 1G (-1: unlimited).
    #[arg(long = "max-bytes", default_value = "-1", value_parser = parse_size, allow_hyphen_values = true)]
    pub max_bytes: i64,
    /// Maximum age of a message, e.g. 1h, 7d (0: unlimited).
    #[arg(long = "max-age", default_value = "0", value_parser = parse_age)]
    pub max_age: std::time::Duration,
    /// Maximum message size (-1: unlimited).
    #[arg(long = "max-msg-size", default_value = "-1", value_parser = parse_size, allow_hyphen_values = true)]
    pub max_msg_size: i64,
    /// Duplicate detection window (Nats-Msg-Id), e.g. 2m.
    #[arg(long = "dupe-window", value_parser = parse_age)]
    pub dupe_window: Option<std::time::Duration>,
    /// Replicas (a single server supports 1).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Allow Direct Get.
    #[arg(long = "allow-direct")]
    pub allow_direct: bool,
    /// Stream description.
    #[arg(long)]
    pub description: Option<String>,
    /// Accept the defaults for everything not given (canopy never prompts).
    #[arg(long)]
    pub defaults: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Retention {
    Limits,
    Interest,
    #[value(alias = "workq", alias = "workqueue")]
    Work,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Discard {
    Old,
    New,
}

impl AddArgs {
    pub fn config(&self) -> Value {
        let mut c = json!({
            "name": self.stream,
            "subjects": if self.subjects.is_empty() { vec![self.stream.clone()] } else { self.subjects.clone() },
            "retention": match self.retention { Retention::Limits => "limits", Retention::Interest => "interest", Retention::Work => "workqueue" },
            "storage": self.storage.as_str(),
            "discard": match self.discard { Discard::Old => "old", Discard::New => "new" },
            "max_consumers": -1,
            "max_msgs": self.max_msgs,
            "max_msgs_per_subject": self.max_msgs_per_subject,
            "max_bytes": self.max_bytes,
            "max_age": nanos(self.max_age),
            "max_msg_size": self.max_msg_size,
            "num_replicas": self.replicas,
            "allow_direct": self.allow_direct,
        });
        if let Some(d) = self.dupe_window {
            c["duplicate_window"] = nanos(d).into();
        }
        if let Some(d) = &self.description {
            c["description"] = d.clone().into();
        }
        c
    }
}

pub async fn run(conn: &ConnArgs, opts: &JsOpts, cmd: StreamCmd) -> Result<()> {
    let api = Api::connect(conn, opts, "canopy stream").await?;
    match cmd {
        StreamCmd::Add(a) => {
            let v = api
                .request(&format!("STREAM.CREATE.{}", a.stream), &a.config())
                .await?;
            if !api.json(&v)? {
                println!("Stream {} created", a.stream);
                print_info(&v);
            }
        }
        StreamCmd::Info { stream } => {
            let v = api
                .request(&format!("STREAM.INFO.{stream}"), &Value::Null)
                .await?;
            if !api.json(&v)? {
                print_info(&v);
            }
        }
        StreamCmd::Ls { subject, names } => {
            let list = api
                .list("STREAM.LIST", "streams", subject.as_deref())
                .await?;
            if api.json(&Value::Array(list.clone()))? {
                return Ok(());
            }
            if names {
                for s in &list {
                    println!("{}", text(&s["config"]["name"]));
                }
                return Ok(());
            }
            if list.is_empty() {
                println!("No streams defined");
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:>12} {:>12} {:>10} {:<30}",
                "NAME", "STORAGE", "MESSAGES", "BYTES", "CONSUMERS", "SUBJECTS"
            );
            for s in &list {
                let (c, st) = (&s["config"], &s["state"]);
                let subjects: Vec<String> = c["subjects"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<8} {:>12} {:>12} {:>10} {:<30}",
                    text(&c["name"]),
                    text(&c["storage"]),
                    human_limit(&st["messages"]),
                    human_bytes(&st["bytes"]),
                    text(&st["consumer_count"]),
                    subjects.join(", ")
                );
            }
        }
        StreamCmd::Rm { stream, force: _ } => {
            let v = api
                .request(&format!("STREAM.DELETE.{stream}"), &Value::Null)
                .await?;
            if !api.json(&v)? {
                println!("Stream {stream} deleted");
            }
        }
        StreamCmd::Purge {
            stream,
            subject,
            seq,
            keep,
            force: _,
        } => {
            let mut body = json!({});
            if let Some(s) = subject {
                body["filter"] = s.into();
            }
            if let Some(s) = seq {
                body["seq"] = s.into();
            }
            if let Some(k) = keep {
                body["keep"] = k.into();
            }
            let body = if body.as_object().is_some_and(|o| o.is_empty()) {
                Value::Null
            } else {
                body
            };
            let v = api
                .request(&format!("STREAM.PURGE.{stream}"), &body)
                .await?;
            if !api.json(&v)? {
                println!("Purged {} messages from {stream}", text(&v["purged"]));
            }
        }
        StreamCmd::Get {
            stream,
            seq,
            last_for,
            raw,
        } => {
            let body = match (seq, last_for) {
                (_, Some(s)) => json!({ "last_by_subj": s }),
                (Some(n), None) => json!({ "seq": n }),
                (None, None) => bail!("give a sequence or --last-for SUBJECT"),
            };
            let v = api
                .request(&format!("STREAM.MSG.GET.{stream}"), &body)
                .await?;
            if api.json(&v)? {
                return Ok(());
            }
            let m = &v["message"];
            let b64 = base64::engine::general_purpose::STANDARD;
            let data = match m["data"].as_str() {
                Some(d) => b64.decode(d).context("decoding the message data")?,
                None => Vec::new(),
            };
            if raw {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&data)?;
                out.flush()?;
                return Ok(());
            }
            println!(
                "Item: {}#{} received {} on Subject {}",
                stream,
                text(&m["seq"]),
                text(&m["time"]),
                text(&m["subject"])
            );
            if let Some(h) = m["hdrs"].as_str() {
                let h = b64.decode(h).context("decoding the message headers")?;
                println!();
                for line in String::from_utf8_lossy(&h).lines().skip(1) {
                    if !line.is_empty() {
                        println!("{line}");
                    }
                }
            }
            println!();
            println!("{}", String::from_utf8_lossy(&data));
        }
    }
    Ok(())
}

fn print_info(v: &Value) {
    let (c, s) = (&v["config"], &v["state"]);
    let subjects: Vec<String> = c["subjects"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    println!(
        "Information for Stream {} created {}",
        text(&c["name"]),
        text(&v["created"])
    );
    println!();
    println!("Configuration:");
    rows(&[
        ("Subjects", subjects.join(", ")),
        ("Replicas", text(&c["num_replicas"])),
        ("Storage", text(&c["storage"])),
        ("Retention", text(&c["retention"])),
        ("Discard policy", text(&c["discard"])),
        ("Duplicate window", human_nanos(&c["duplicate_window"])),
        ("Allow direct", text(&c["allow_direct"])),
        ("Maximum messages", human_limit(&c["max_msgs"])),
        (
            "Maximum per subject",
            human_limit(&c["max_msgs_per_subject"]),
        ),
        ("Maximum bytes", human_bytes(&c["max_bytes"])),
        ("Maximum age", human_nanos(&c["max_age"])),
        ("Maximum message size", human_bytes(&c["max_msg_size"])),
        ("Maximum consumers", human_limit(&c["max_consumers"])),
    ]);
    println!();
    println!("State:");
    rows(&[
        ("Messages", human_limit(&s["messages"])),
        ("Bytes", human_bytes(&s["bytes"])),
        (
            "First sequence",
            format!("{} @ {}", text(&s["first_seq"]), text(&s["first_ts"])),
        ),
        (
            "Last sequence",
            format!("{} @ {}", text(&s["last_seq"]), text(&s["last_ts"])),
        ),
        ("Active consumers", text(&s["consumer_count"])),
        ("Number of subjects", text(&s["num_subjects"])),
    ]);
}
