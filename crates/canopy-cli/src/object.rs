//! `object add|put|get|ls|rm|info`: Object Store buckets through async-nats' object store
//! API (stream `OBJ_<bucket>`, chunks on `$O.<bucket>.C.<nuid>`, metadata on
//! `$O.<bucket>.M.<name>`).

use crate::conn::ConnArgs;
use crate::js::{human_bytes, parse_age, parse_size, text, Api, JsOpts, Storage};
use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::object_store;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

#[derive(clap::Subcommand, Debug)]
pub enum ObjectCmd {
    /// Create a bucket.
    #[command(alias = "create")]
    Add {
        bucket: String,
        /// How long objects live, e.g. 7d (0: forever).
        #[arg(long, default_value = "0", value_parser = parse_age)]
        ttl: std::time::Duration,
        /// Maximum bucket size (-1: unlimited).
        #[arg(long = "max-bytes", default_value = "-1", value_parser = parse_size, allow_hyphen_values = true)]
        max_bytes: i64,
        #[arg(long, value_enum, default_value = "file")]
        storage: Storage,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        #[arg(long)]
        description: Option<String>,
    },
    /// Store a file (or stdin with `-`) in a bucket.
    Put {
        bucket: String,
        file: PathBuf,
        /// Object name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Fetch an object to --output (default: stdout).
    Get {
        bucket: String,
        name: String,
        #[arg(short = 'O', long)]
        output: Option<PathBuf>,
    },
    /// List buckets, or the objects of BUCKET.
    #[command(alias = "list")]
    Ls { bucket: Option<String> },
    /// Delete an object, or the whole bucket when NAME is omitted.
    #[command(alias = "delete", alias = "del")]
    Rm {
        bucket: String,
        name: Option<String>,
        /// Accepted for natscli compatibility (canopy never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Show an object's metadata, or the bucket's status when NAME is omitted.
    Info {
        bucket: String,
        name: Option<String>,
    },
}

pub async fn run(conn: &ConnArgs, opts: &JsOpts, cmd: ObjectCmd) -> Result<()> {
    let api = Api::connect(conn, opts, "canopy object").await?;
    let js = api.context();
    let open = |b: &str| {
        let (js, b) = (js.clone(), b.to_string());
        async move {
            js.get_object_store(&b)
                .await
                .map_err(|e| anyhow!("bucket {b}: {e}"))
        }
    };
    match cmd {
        ObjectCmd::Add {
            bucket,
            ttl,
            max_bytes,
            storage,
            replicas,
            description,
        } => {
            // The bucket's stream as the official clients configure it (plain request, as
            // for `kv add`).
            let mut cfg = json!({
                "name": format!("OBJ_{bucket}"),
                "subjects": [format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
                "max_age": crate::js::nanos(ttl),
                "max_bytes": max_bytes,
                "storage": storage.as_str(),
                "num_replicas": replicas,
                "discard": "new",
                "allow_rollup_hdrs": true,
                "allow_direct": true,
            });
            if let Some(d) = description {
                cfg["description"] = d.into();
            }
            api.request(&format!("STREAM.CREATE.OBJ_{bucket}"), &cfg)
                .await
                .with_context(|| format!("creating bucket {bucket}"))?;
            bucket_info(&api, &bucket, Some("created")).await?;
        }
        ObjectCmd::Put {
            bucket,
            file,
            name,
            description,
        } => {
            let store = open(&bucket).await?;
            let stdin = file.as_os_str() == "-";
            let name = match name {
                Some(n) => n,
                None if stdin => anyhow::bail!("--name is required when reading stdin"),
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow!("{} has no file name; use --name", file.display()))?,
            };
            let meta = object_store::ObjectMetadata {
                name: name.clone(),
                description,
                ..Default::default()
            };
            let info = if stdin {
                store.put(meta, &mut tokio::io::stdin()).await
            } else {
                let mut f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("opening {}", file.display()))?;
                store.put(meta, &mut f).await
            }
            .map_err(|e| anyhow!("put {bucket} > {name}: {e}"))?;
            if api.opts.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "Stored {bucket} > {name}: {} in {} chunk(s), digest {}",
                    human_bytes(&json!(info.size)),
                    info.chunks,
                    info.digest.as_deref().unwrap_or("-")
                );
            }
        }
        ObjectCmd::Get {
            bucket,
            name,
            output,
        } => {
            let store = open(&bucket).await?;
            let mut obj = store
                .get(&name)
                .await
                .map_err(|e| anyhow!("get {bucket} > {name}: {e}"))?;
            let n = match &output {
                Some(path) => {
                    let mut f = tokio::fs::File::create(path)
                        .await
                        .with_context(|| format!("creating {}", path.display()))?;
                    let n = tokio::io::copy(&mut obj, &mut f)
                        .await
                        .map_err(|e| anyhow!("reading {bucket} > {name}: {e}"))?;
                    f.flush().await?;
                    n
                }
                None => {
                    let mut out = tokio::io::stdout();
                    let n = tokio::io::copy(&mut obj, &mut out)
                        .await
                        .map_err(|e| anyhow!("reading {bucket} > {name}: {e}"))?;
                    out.flush().await?;
                    n
                }
            };
            if let Some(path) = output {
                eprintln!("Wrote {n} bytes to {}", path.display());
            }
        }
        ObjectCmd::Ls { bucket: None } => {
            let buckets = api.buckets("OBJ_").await?;
            if api.opts.json {
                let names: Vec<&str> = buckets.iter().map(|(n, _)| n.as_str()).collect();
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else if buckets.is_empty() {
                println!("No Object Store buckets found");
            } else {
                println!("{:<24} {:>12} {:>12}", "BUCKET", "CHUNKS+META", "BYTES");
                for (name, s) in &buckets {
                    println!(
                        "{:<24} {:>12} {:>12}",
                        name,
                        text(&s["state"]["messages"]),
                        human_bytes(&s["state"]["bytes"])
                    );
                }
            }
        }
        ObjectCmd::Ls {
            bucket: Some(bucket),
        } => {
            let store = open(&bucket).await?;
            let mut list = store
                .list()
                .await
                .map_err(|e| anyhow!("listing {bucket}: {e}"))?;
            let mut all = Vec::new();
            while let Some(i) = list.next().await {
                all.push(i.map_err(|e| anyhow!("listing {bucket}: {e}"))?);
            }
            all.sort_by(|a, b| a.name.cmp(&b.name));
            if api.opts.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("No objects in bucket {bucket}");
            } else {
                println!("{:<32} {:>12} {:<36}", "NAME", "SIZE", "MODIFIED");
                for i in &all {
                    println!(
                        "{:<32} {:>12} {:<36}",
                        i.name,
                        human_bytes(&json!(i.size)),
                        i.modified.map(|m| m.to_string()).unwrap_or_default()
                    );
                }
            }
        }
        ObjectCmd::Rm {
            bucket,
            name: Some(name),
            force: _,
        } => {
            let store = open(&bucket).await?;
            store
                .delete(&name)
                .await
                .map_err(|e| anyhow!("delete {bucket} > {name}: {e}"))?;
            if !api.opts.json {
                println!("Deleted {bucket} > {name}");
            }
        }
        ObjectCmd::Rm {
            bucket,
            name: None,
            force: _,
        } => {
            let v = api
                .request(&format!("STREAM.DELETE.OBJ_{bucket}"), &Value::Null)
                .await?;
            if !api.json(&v)? {
                println!("Bucket {bucket} deleted");
            }
        }
        ObjectCmd::Info {
            bucket,
            name: Some(name),
        } => {
            let store = open(&bucket).await?;
            let info = store
                .info(&name)
                .await
                .map_err(|e| anyhow!("info {bucket} > {name}: {e}"))?;
            if api.opts.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                crate::js::rows(&[
                    ("Bucket", info.bucket.clone()),
                    ("Name", info.name.clone()),
                    ("Description", info.description.clone().unwrap_or_default()),
                    ("Size", human_bytes(&json!(info.size))),
                    ("Chunks", info.chunks.to_string()),
                    ("Digest", info.digest.clone().unwrap_or_default()),
                    (
                        "Modified",
                        info.modified.map(|m| m.to_string()).unwrap_or_default(),
                    ),
                    ("NUID", info.nuid.clone()),
                ]);
            }
        }
        ObjectCmd::Info { bucket, name: None } => bucket_info(&api, &bucket, None).await?,
    }
    Ok(())
}

async fn bucket_info(api: &Api, bucket: &str, what: Option<&str>) -> Result<()> {
    let v = api
        .request(&format!("STREAM.INFO.OBJ_{bucket}"), &Value::Null)
        .await?;
    if api.json(&v)? {
        return Ok(());
    }
    if let Some(w) = what {
        println!("Bucket {bucket} {w}");
    }
    let (c, s) = (&v["config"], &v["state"]);
    crate::js::rows(&[
        ("Bucket", bucket.to_string()),
        ("Description", text(&c["description"])),
        ("TTL", crate::js::human_nanos(&c["max_age"])),
        ("Storage", text(&c["storage"])),
        ("Maximum size", human_bytes(&c["max_bytes"])),
        ("Size", human_bytes(&s["bytes"])),
        ("Backing stream", text(&c["name"])),
    ]);
    Ok(())
}
