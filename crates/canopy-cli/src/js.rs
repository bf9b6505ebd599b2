//! Shared plumbing of the JetStream commands (`stream`, `consumer`, `kv`, `object`,
//! `account`): the `--js-domain`/`--json`/`--timeout` flags, raw `$JS.API` requests that
//! return the server's JSON (so `--json` prints exactly what the server said), and
//! parsing/formatting of sizes, ages and times.

use crate::conn::ConnArgs;
use crate::util::parse_duration;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::time::Duration;

/// Flags every JetStream command takes (global, so they may follow the subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct JsOpts {
    /// JetStream domain: requests go to `$JS.<domain>.API` instead of `$JS.API`.
    #[arg(
        long = "js-domain",
        visible_alias = "domain",
        global = true,
        help_heading = "JetStream"
    )]
    pub domain: Option<String>,
    /// Print JSON (the server's replies) instead of text.
    #[arg(long, global = true, help_heading = "JetStream")]
    pub json: bool,
    /// How long to wait for each JetStream API reply.
    #[arg(long = "js-timeout", global = true, default_value = "5s", value_parser = parse_duration, help_heading = "JetStream")]
    pub timeout: Duration,
}

/// A connection plus the `$JS.API` prefix.
pub struct Api {
    pub client: async_nats::Client,
    pub prefix: String,
    pub opts: JsOpts,
}

impl Api {
    pub async fn connect(conn: &ConnArgs, opts: &JsOpts, name: &str) -> Result<Api> {
        let timeout = opts.timeout;
        let client = conn
            .connect_with(name, |o| o.request_timeout(Some(timeout)))
            .await?;
        let prefix = match opts.domain.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => format!("$JS.{d}.API"),
            None => "$JS.API".to_string(),
        };
        Ok(Api {
            client,
            prefix,
            opts: opts.clone(),
        })
    }

    /// The async-nats JetStream context for the same domain (KV, Object Store, publish).
    pub fn context(&self) -> async_nats::jetstream::Context {
        let mut ctx = match self.opts.domain.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => async_nats::jetstream::with_domain(self.client.clone(), d),
            None => async_nats::jetstream::new(self.client.clone()),
        };
        ctx.set_timeout(self.opts.timeout);
        ctx
    }

    /// Request `$JS.API.<what>` with a JSON body; an `error` in the reply is an error.
    pub async fn request(&self, what: &str, body: &Value) -> Result<Value> {
        let subject = format!("{}.{what}", self.prefix);
        let payload = if body.is_null() {
            bytes::Bytes::new()
        } else {
            serde_json::to_vec(body)?.into()
        };
        let m = self
            .client
            .request(subject.clone(), payload)
            .await
            .map_err(|e| anyhow!("{subject}: {e} (is JetStream enabled for this account?)"))?;
        let v: Value = serde_json::from_slice(&m.payload)
            .with_context(|| format!("decoding the reply to {subject}"))?;
        check(&v)?;
        Ok(v)
    }

    /// Every page of a paged list request (`STREAM.LIST`, `CONSUMER.LIST`, ...).
    pub async fn list(&self, what: &str, key: &str, filter: Option<&str>) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let mut body = serde_json::json!({ "offset": out.len() });
            if let Some(f) = filter {
                body["subject"] = f.into();
            }
            let v = self.request(what, &body).await?;
            let page = v[key].as_array().cloned().unwrap_or_default();
            let total = v["total"].as_u64().unwrap_or(0) as usize;
            let got = page.len();
            out.extend(page);
            if got == 0 || out.len() >= total {
                return Ok(out);
            }
        }
    }

    /// The streams backing buckets (`KV_`, `OBJ_`): (bucket name, stream info).
    pub async fn buckets(&self, prefix: &str) -> Result<Vec<(String, Value)>> {
        let list = self.list("STREAM.LIST", "streams", None).await?;
        Ok(list
            .into_iter()
            .filter_map(|s| {
                let name = s["config"]["name"]
                    .as_str()?
                    .strip_prefix(prefix)?
                    .to_string();
                Some((name, s))
            })
            .collect())
    }

    /// Print `v` as JSON when `--json` was given; returns whether it did.
    pub fn json(&self, v: &Value) -> Result<bool> {
        if self.opts.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(self.opts.json)
    }
}

/// An `{"error": {...}}` reply as an error: `description (code C, err_code E)`.
pub fn check(v: &Value) -> Result<()> {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        bail!(
            "{} (code {}, err_code {})",
            e["description"].as_str().unwrap_or("JetStream error"),
            e["code"],
            e["err_code"]
        );
    }
    Ok(())
}

/// `1024`, `1K`, `1KB`, `1KiB`, `512M`, `1.5G`, `1T` (powers of 1024 like natscli), or
/// `-1`/`unlimited` for no limit.
pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim();
    if t == "-1" || t.eq_ignore_ascii_case("unlimited") {
        return Ok(-1);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid size {s:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" | "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => bail!("invalid size unit in {s:?} (use K, M, G, T)"),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > i64::MAX as f64 {
        bail!("invalid size {s:?}");
    }
    Ok(v as i64)
}

/// Like [`parse_duration`] plus days, weeks and years (`1d`, `2w`, `1y`); `0` or
/// `unlimited` is no limit.
pub fn parse_age(s: &str) -> Result<Duration> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t == "-1" {
        return Ok(Duration::ZERO);
    }
    let day = 86_400.0;
    for (suffix, secs) in [("d", day), ("w", 7.0 * day), ("y", 365.0 * day)] {
        if let Some(num) = t.strip_suffix(suffix) {
            let n: f64 = num.parse().map_err(|_| anyhow!("invalid age {s:?}"))?;
            if !n.is_finite() || n < 0.0 {
                bail!("invalid age {s:?}");
            }
            return Ok(Duration::from_secs_f64(n * secs));
        }
    }
    parse_duration(t)
}

/// Nanoseconds as sent in JetStream configs.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `1536` → `1.5 KiB`; negative → `unlimited`.
pub fn human_bytes(v: &Value) -> String {
    let Some(n) = v.as_f64() else {
        return "-".into();
    };
    if n < 0.0 {
        return "unlimited".into();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < units.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n:.0} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

/// A nanosecond duration from a JetStream JSON field, human-readable (`0` → `unlimited`).
pub fn human_nanos(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(0) => "unlimited".into(),
        Some(ns) => format!("{:?}", Duration::from_nanos(ns)),
    }
}

/// A number, `-1` shown as `unlimited`.
pub fn human_limit(v: &Value) -> String {
    match v.as_i64() {
        Some(n) if n < 0 => "unlimited".into(),
        Some(n) => crate::util::commas(n as f64),
        None => "-".into(),
    }
}

/// A JSON value as plain text (strings without quotes, null as `-`).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Print aligned `label: value` rows.
pub fn rows(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (l, v) in rows {
        println!("{l:>w$}: {v}");
    }
}

/// `--storage file|memory`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

impl Storage {
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::File => "file",
            Storage::Memory => "memory",
        }
    }

    pub fn kind(self) -> async_nats::jetstream::stream::StorageType {
        match self {
            Storage::File => async_nats::jetstream::stream::StorageType::File,
            Storage::Memory => async_nats::jetstream::stream::StorageType::Memory,
        }
    }
}

/// `$JS.API.INFO`: the account's JetStream usage and limits.
pub async fn account_info(conn: &ConnArgs, opts: &JsOpts) -> Result<()> {
    let api = Api::connect(conn, opts, "canopy account").await?;
    let v = api.request("INFO", &Value::Null).await?;
    if api.json(&v)? {
        return Ok(());
    }
    let l = &v["limits"];
    println!("JetStream account information");
    if let Some(d) = v["domain"].as_str() {
        println!("  Domain: {d}");
    }
    rows(&[
        (
            "Memory",
            format!(
                "{} of {}",
                human_bytes(&v["memory"]),
                human_bytes(&l["max_memory"])
            ),
        ),
        (
            "Storage",
            format!(
                "{} of {}",
                human_bytes(&v["storage"]),
                human_bytes(&l["max_storage"])
            ),
        ),
        (
            "Streams",
            format!(
                "{} of {}",
                text(&v["streams"]),
                human_limit(&l["max_streams"])
            ),
        ),
        (
            "Consumers",
            format!(
                "{} of {}",
                text(&v["consumers"]),
                human_limit(&l["max_consumers"])
            ),
        ),
        ("Max ack pending", human_limit(&l["max_ack_pending"])),
        ("API requests", text(&v["api"]["total"])),
        ("API errors", text(&v["api"]["errors"])),
        ("API level", text(&v["api"]["level"])),
    ]);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("1.5MiB").unwrap(), 1_572_864);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert_eq!(parse_size("-1").unwrap(), -1);
        assert!(parse_size("1X").is_err());
        assert_eq!(parse_age("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_age("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_age("unlimited").unwrap(), Duration::ZERO);
        assert!(parse_age("xd").is_err());
        assert_eq!(human_bytes(&serde_json::json!(1536)), "1.5 KiB");
        assert_eq!(human_bytes(&serde_json::json!(-1)), "unlimited");
        assert_eq!(human_nanos(&serde_json::json!(2_000_000_000u64)), "2s");
    }
}
