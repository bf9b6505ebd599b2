//! Small parsing and formatting helpers: durations (`500ms`, `2s`), `K:V` headers,
//! thousands separators.

use anyhow::{anyhow, bail, Result};
use std::time::Duration;

/// Parse `250us`, `500ms`, `2s`, `1.5s`, `1m`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration unit in {s:?} (use ns, us, ms, s, m, h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("invalid duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a `Key:Value` header flag.
pub fn parse_header(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("header {s:?} is not Key:Value"))?;
    let k = k.trim();
    if k.is_empty() {
        bail!("header {s:?} has an empty name");
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// `1234567.8` → `1,234,568`.
pub fn commas(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn headers_and_commas() {
        assert_eq!(parse_header("A: b:c").unwrap(), ("A".into(), "b:c".into()));
        assert!(parse_header("nocolon").is_err());
        assert_eq!(commas(1234567.4), "1,234,567");
        assert_eq!(commas(999.0), "999");
        assert_eq!(commas(0.0), "0");
    }
}
