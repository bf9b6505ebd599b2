//! `kv add|put|get|del|rm|ls|history|watch`: Key-Value buckets through async-nats' KV API
//! (the same conventions every official client uses: stream `KV_<bucket>`, subjects
//! `$KV.<bucket>.<key>`).

use crate::conn::ConnArgs;
use crate::js::{nanos, parse_age, parse_size, text, Api, JsOpts, Storage};
use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::Read;

#[derive(clap::Subcommand, Debug)]
pub enum KvCmd {
    /// Create a bucket.
    #[command(alias = "create", alias = "new")]
    Add {
        bucket: String,
        /// Values kept per key.
        #[arg(long, default_value_t = 1)]
        history: i64,
        /// How long values live, e.g. 1h (0: forever).
        #[arg(long, default_value = "0", value_parser = parse_age)]
        ttl: std::time::Duration,
        /// Maximum bucket size (-1: unlimited).
        #[arg(long = "max-bytes", default_value = "-1", value_parser = parse_size, allow_hyphen_values = true)]
        max_bytes: i64,
        /// Maximum value size (-1: unlimited).
        #[arg(long = "max-value-size", default_value = "-1", value_parser = parse_size, allow_hyphen_values = true)]
        max_value_size: i64,
        #[arg(long, value_enum, default_value = "file")]
        storage: Storage,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        #[arg(long)]
        description: Option<String>,
    },
    /// Put a value (VALUE, or stdin when omitted); prints the revision.
    Put {
        bucket: String,
        key: String,
        value: Option<String>,
    },
    /// Get a key's value (the latest, or --revision).
    Get {
        bucket: String,
        key: String,
        #[arg(long)]
        revision: Option<u64>,
        /// Print only the value.
        #[arg(long)]
        raw: bool,
    },
    /// Delete a key (a delete marker keeps history).
    #[command(alias = "delete")]
    Del { bucket: String, key: String },
    /// Delete a whole bucket.
    Rm {
        bucket: String,
        /// Accepted for natscli compatibility (canopy never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// List buckets, or the keys of BUCKET.
    #[command(alias = "list")]
    Ls { bucket: Option<String> },
    /// Show every kept revision of a key.
    History { bucket: String, key: String },
    /// Print changes as they happen (KEY may contain wildcards; default: all keys).
    Watch {
        bucket: String,
        key: Option<String>,
        /// Exit after this many entries.
        #[arg(long)]
        count: Option<u64>,
    },
}

pub async fn run(conn: &ConnArgs, opts: &JsOpts, cmd: KvCmd) -> Result<()> {
    let api = Api::connect(conn, opts, "canopy kv").await?;
    let js = api.context();
    let open = |b: &str| {
        let (js, b) = (js.clone(), b.to_string());
        async move {
            js.get_key_value(&b)
                .await
                .map_err(|e| anyhow!("bucket {b}: {e}"))
        }
    };
    match cmd {
        KvCmd::Add {
            bucket,
            history,
            ttl,
            max_bytes,
            max_value_size,
            storage,
            replicas,
            description,
        } => {
            // The bucket's stream as the official clients configure it, created with a
            // plain request (async-nats 0.46 cannot parse nats-server 2.9's reply to its
            // own KV create).
            let dupe = if ttl.is_zero() {
                std::time::Duration::from_secs(120)
            } else {
                ttl.min(std::time::Duration::from_secs(120))
            };
            let mut cfg = json!({
                "name": format!("KV_{bucket}"),
                "subjects": [format!("$KV.{bucket}.>")],
                "max_msgs_per_subject": history,
                "max_age": nanos(ttl),
                "max_bytes": max_bytes,
                "max_msg_size": max_value_size,
                "storage": storage.as_str(),
                "num_replicas": replicas,
                "discard": "new",
                "allow_rollup_hdrs": true,
                "deny_delete": true,
                "allow_direct": true,
                "duplicate_window": nanos(dupe),
            });
            if let Some(d) = description {
                cfg["description"] = d.into();
            }
            api.request(&format!("STREAM.CREATE.KV_{bucket}"), &cfg)
                .await
                .with_context(|| format!("creating bucket {bucket}"))?;
            let v = api
                .request(&format!("STREAM.INFO.KV_{bucket}"), &Value::Null)
                .await?;
            if !api.json(&v)? {
                println!("Bucket {bucket} created");
                print_status(&bucket, &v);
            }
        }
        KvCmd::Put { bucket, key, value } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the value from stdin")?;
                    buf
                }
            };
            let store = open(&bucket).await?;
            let rev = store
                .put(&key, value.into())
                .await
                .map_err(|e| anyhow!("put {bucket} > {key}: {e}"))?;
            if api.opts.json {
                println!(
                    "{}",
                    json!({ "bucket": bucket, "key": key, "revision": rev })
                );
            } else {
                println!("{bucket} > {key} revision {rev}");
            }
        }
        KvCmd::Get {
            bucket,
            key,
            revision,
            raw,
        } => {
            let store = open(&bucket).await?;
            let entry = match revision {
                Some(r) => store.entry_for_revision(&key, r).await,
                None => store.entry(&key).await,
            }
            .map_err(|e| anyhow!("get {bucket} > {key}: {e}"))?;
            let Some(e) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                bail!("{bucket} > {key}: key not found");
            };
            if api.opts.json {
                println!("{}", serde_json::to_string_pretty(&entry_json(&e))?);
            } else if raw {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&e.value)?;
                out.flush()?;
            } else {
                println!(
                    "{bucket} > {key} revision: {} created @ {}",
                    e.revision, e.created
                );
                println!();
                println!("{}", String::from_utf8_lossy(&e.value));
            }
        }
        KvCmd::Del { bucket, key } => {
            let store = open(&bucket).await?;
            store
                .delete(&key)
                .await
                .map_err(|e| anyhow!("delete {bucket} > {key}: {e}"))?;
            if !api.opts.json {
                println!("Deleted {bucket} > {key}");
            }
        }
        KvCmd::Rm { bucket, force: _ } => {
            let v = api
                .request(&format!("STREAM.DELETE.KV_{bucket}"), &Value::Null)
                .await?;
            if !api.json(&v)? {
                println!("Bucket {bucket} deleted");
            }
        }
        KvCmd::Ls { bucket: None } => {
            let buckets = api.buckets("KV_").await?;
            if api.opts.json {
                let names: Vec<&str> = buckets.iter().map(|(n, _)| n.as_str()).collect();
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else if buckets.is_empty() {
                println!("No Key-Value buckets found");
            } else {
                println!(
                    "{:<24} {:>10} {:>12} {:>12}",
                    "BUCKET", "HISTORY", "VALUES", "BYTES"
                );
                for (name, s) in &buckets {
                    println!(
                        "{:<24} {:>10} {:>12} {:>12}",
                        name,
                        text(&s["config"]["max_msgs_per_subject"]),
                        text(&s["state"]["messages"]),
                        crate::js::human_bytes(&s["state"]["bytes"])
                    );
                }
            }
        }
        KvCmd::Ls {
            bucket: Some(bucket),
        } => {
            let store = open(&bucket).await?;
            let mut keys = store
                .keys()
                .await
                .map_err(|e| anyhow!("listing keys of {bucket}: {e}"))?;
            let mut all = Vec::new();
            while let Some(k) = keys.next().await {
                all.push(k.map_err(|e| anyhow!("listing keys of {bucket}: {e}"))?);
            }
            all.sort();
            if api.opts.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("No keys found in bucket {bucket}");
            } else {
                for k in all {
                    println!("{k}");
                }
            }
        }
        KvCmd::History { bucket, key } => {
            let store = open(&bucket).await?;
            let mut h = store
                .history(&key)
                .await
                .map_err(|e| anyhow!("history of {bucket} > {key}: {e}"))?;
            let mut all = Vec::new();
            while let Some(e) = h.next().await {
                all.push(e.map_err(|e| anyhow!("history of {bucket} > {key}: {e}"))?);
            }
            if api.opts.json {
                let v: Vec<Value> = all.iter().map(entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<10} {:<8} {:<36} VALUE", "REVISION", "OP", "CREATED");
                for e in &all {
                    println!(
                        "{:<10} {:<8} {:<36} {}",
                        e.revision,
                        op_name(&e.operation),
                        e.created.to_string(),
                        String::from_utf8_lossy(&e.value)
                    );
                }
            }
        }
        KvCmd::Watch { bucket, key, count } => watch(&api, &bucket, key, count).await?,
    }
    Ok(())
}

/// Watch with our own push consumer (deliver last per subject, then every change) rather
/// than async-nats' watcher, so that it behaves the same on every server version.
async fn watch(api: &Api, bucket: &str, key: Option<String>, count: Option<u64>) -> Result<()> {
    let client = &api.client;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .context("subscribing to the watch inbox")?;
    let prefix = format!("$KV.{bucket}.");
    let filter = format!("{prefix}{}", key.as_deref().unwrap_or(">"));
    let stream = format!("KV_{bucket}");
    let body = json!({
        "stream_name": stream,
        "config": {
            "deliver_subject": inbox,
            "deliver_policy": "last_per_subject",
            "ack_policy": "none",
            "replay_policy": "instant",
            "filter_subject": filter,
            "inactive_threshold": 5_000_000_000u64,
            "num_replicas": 1,
            "mem_storage": true,
        }
    });
    let v = api
        .request(&format!("CONSUMER.CREATE.{stream}"), &body)
        .await
        .map_err(|e| anyhow!("watching {bucket}: {e}"))?;
    let name = text(&v["name"]);
    eprintln!(
        "Watching bucket {bucket} key {}",
        key.as_deref().unwrap_or(">")
    );
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let Some(m) = sub.next().await else { break };
        if m.status.is_some() {
            continue; // idle heartbeats and flow control have no entry
        }
        let op = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| "PUT".into());
        let meta = m.reply.as_deref().and_then(crate::consumer::AckMeta::parse);
        let k = m
            .subject
            .strip_prefix(prefix.as_str())
            .unwrap_or(&m.subject);
        seen += 1;
        if api.opts.json {
            println!(
                "{}",
                json!({
                    "bucket": bucket,
                    "key": k,
                    "value": String::from_utf8_lossy(&m.payload),
                    "revision": meta.as_ref().map(|x| x.stream_seq),
                    "delta": meta.as_ref().map(|x| x.pending),
                    "operation": op,
                })
            );
        } else {
            println!(
                "[#{}] {op} {bucket} > {k}: {}",
                meta.as_ref().map_or(0, |x| x.stream_seq),
                String::from_utf8_lossy(&m.payload)
            );
        }
    }
    let _ = api
        .request(&format!("CONSUMER.DELETE.{stream}.{name}"), &Value::Null)
        .await;
    Ok(())
}

fn op_name(op: &kv::Operation) -> &'static str {
    match op {
        kv::Operation::Put => "PUT",
        kv::Operation::Delete => "DEL",
        kv::Operation::Purge => "PURGE",
    }
}

fn entry_json(e: &kv::Entry) -> Value {
    json!({
        "bucket": e.bucket,
        "key": e.key,
        "value": String::from_utf8_lossy(&e.value),
        "revision": e.revision,
        "delta": e.delta,
        "created": e.created.to_string(),
        "operation": op_name(&e.operation),
    })
}

fn print_status(bucket: &str, v: &Value) {
    let (c, s) = (&v["config"], &v["state"]);
    crate::js::rows(&[
        ("Bucket", bucket.to_string()),
        ("History", text(&c["max_msgs_per_subject"])),
        ("TTL", crate::js::human_nanos(&c["max_age"])),
        ("Storage", text(&c["storage"])),
        ("Maximum size", crate::js::human_bytes(&c["max_bytes"])),
        ("Values stored", text(&s["messages"])),
        ("Backing stream", text(&c["name"])),
    ]);
}
