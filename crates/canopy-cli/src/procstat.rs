//! Linux /proc readings used by the bench: CPU time (utime+stime) of this process or of
//! a server process, and a process's resident set size (VmRSS).

use anyhow::{anyhow, Context, Result};
use std::time::Duration;

/// Kernel USER_HZ: the unit of utime/stime in /proc/*/stat. It is 100 on every Linux ABI
/// we target (the kernel fixes it for userspace independent of CONFIG_HZ).
const USER_HZ: f64 = 100.0;

/// Which process to read: `None` is this process.
fn stat_path(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    }
}

/// User + system CPU time consumed so far by a process.
pub fn cpu_time(pid: Option<u32>) -> Result<Duration> {
    let path = stat_path(pid);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu(&text).ok_or_else(|| anyhow!("unexpected format of {path}"))
}

/// Parse utime (field 14) and stime (field 15) from a /proc/PID/stat line. The command
/// name (field 2) is parenthesised and may hold spaces, so count from the last ')'.
fn parse_cpu(text: &str) -> Option<Duration> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state); utime is field 14 → index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

/// Resident set size of a process in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// Number of CPUs available, for reading CPU shares.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let line = "42 (my (odd) proc) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu(line), Some(Duration::from_secs(3)));
    }

    #[test]
    fn reads_self() {
        // Burn a little CPU so the counter is plausibly non-decreasing and readable.
        let a = cpu_time(None).unwrap();
        let b = cpu_time(None).unwrap();
        assert!(b >= a);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
