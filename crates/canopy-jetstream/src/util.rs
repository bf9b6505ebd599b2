//! Small helpers shared by the engine: wall-clock time in nanoseconds and its RFC 3339
//! rendering (as Go's `time.Time` marshals), NATS header blocks (read a value, drop keys,
//! append lines, status messages), Go duration parsing (`-NAK` delays, `Nats-TTL`), and
//! stream/consumer name rules.

use chrono::{DateTime, SecondsFormat, Utc};

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// RFC 3339 with nanoseconds, UTC (`0001-01-01T00:00:00Z` for 0, as Go's zero time).
pub fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    DateTime::<Utc>::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
    .map_or_else(
        || "0001-01-01T00:00:00Z".into(),
        |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

/// Parses an RFC 3339 time into nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    t.timestamp_nanos_opt()
}

/// Parses a Go duration (`"1h30m"`, `"500ms"`, `"2s"`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Some(total as i64)
}

/// Whole seconds as Go prints a `time.Duration` (`"1s"`, `"5m0s"`, `"1h0m0s"`).
pub fn go_duration_secs(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The value of header `key` (case-insensitive) in a `NATS/1.0` header block.
pub fn header<'a>(hdr: &'a [u8], key: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(hdr).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
    })
}

/// The header block without the lines whose key starts with one of `prefixes`; empty when
/// no header line is left.
pub fn strip_headers(hdr: &[u8], prefixes: &[&str]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(hdr) else {
        return hdr.to_vec();
    };
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("NATS/1.0");
    let kept: Vec<&str> = lines
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let k = l.split(':').next().unwrap_or("");
            !prefixes
                .iter()
                .any(|p| k.len() >= p.len() && k[..p.len()].eq_ignore_ascii_case(p))
        })
        .collect();
    if kept.is_empty() {
        return Vec::new();
    }
    let mut out = String::with_capacity(hdr.len());
    out.push_str(first);
    out.push_str("\r\n");
    for l in kept {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Appends `key: value` lines to a header block (creating `NATS/1.0` if empty).
pub fn add_headers(hdr: &[u8], kv: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hdr.len() + 64 * kv.len() + 12);
    if hdr.len() >= 4 && hdr.ends_with(b"\r\n\r\n") {
        out.extend_from_slice(&hdr[..hdr.len() - 2]);
    } else {
        out.extend_from_slice(b"NATS/1.0\r\n");
    }
    for (k, v) in kv {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A status-only header block: `NATS/1.0 <code> <text>` plus header lines.
pub fn status(code: u16, text: &str, kv: &[(&str, String)]) -> Vec<u8> {
    let mut out = format!("NATS/1.0 {code} {text}\r\n");
    for (k, v) in kv {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Is this a valid stream or consumer name (no `.`, `*`, `>`, path separators, whitespace;
/// at most 255 bytes)?
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n
            .chars()
            .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace())
}

/// A random name of `n` alphanumeric characters (ephemeral consumers, FC replies).
pub fn random_name(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[r.gen_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_durations() {
        let h = b"NATS/1.0\r\nNats-Msg-Id: a1\r\nNats-Expected-Stream: S\r\n\r\n";
        assert_eq!(header(h, "nats-msg-id"), Some("a1"));
        let s = strip_headers(h, &["Nats-Expected-"]);
        assert_eq!(s, b"NATS/1.0\r\nNats-Msg-Id: a1\r\n\r\n");
        assert!(strip_headers(
            b"NATS/1.0\r\nNats-Expected-Stream: S\r\n\r\n",
            &["Nats-Expected-"]
        )
        .is_empty());
        assert_eq!(parse_go_duration("1m30s"), Some(90 * 1_000_000_000));
        assert_eq!(parse_go_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        let t = 1_700_000_000_123_456_789;
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(
            add_headers(b"", &[("A", "1".into())]),
            b"NATS/1.0\r\nA: 1\r\n\r\n"
        );
    }
}
