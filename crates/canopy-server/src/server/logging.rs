//! Logging in nats-server's shape: `[pid] 2026/11/26 23:23:26.577764 [INF] message`.
//!
//! A `tracing` layer formats every event; `debug`/`trace`/`logtime` live in atomics so a
//! config reload (SIGHUP) can change them without rebuilding the subscriber.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// The switches a reload may change.
#[derive(Debug, Default)]
pub struct LogSettings {
    pub debug: AtomicBool,
    pub trace: AtomicBool,
    pub logtime: AtomicBool,
    pub logtime_utc: AtomicBool,
}

enum Sink {
    Stderr,
    /// stderr is systemd-journald's stream (`JOURNAL_STREAM` names it): each line starts
    /// with its syslog priority, `<3>` for `[ERR]`/`[FTL]`, `<4>` `[WRN]`, `<6>` `[INF]`,
    /// `<7>` debug and trace, so `journalctl -p warning` filters (a Canopy extension).
    Journal,
    File {
        path: PathBuf,
        file: File,
        written: u64,
    },
}

/// `log_size_limit` (0 = none) and `log_max_files` (0 = keep all rotated files).
static ROTATION: OnceLock<Mutex<(u64, u64)>> = OnceLock::new();

/// Sets log rotation: rotate the log file past `limit` bytes, keep `max_files` old ones.
pub fn set_rotation(limit: u64, max_files: u64) {
    *ROTATION.get_or_init(|| Mutex::new((0, 0))).lock() = (limit, max_files);
}

fn rotation() -> (u64, u64) {
    ROTATION.get().map(|m| *m.lock()).unwrap_or((0, 0))
}

/// Renames the full log to `<path>.<timestamp>` (as nats-server does), drops the oldest
/// rotated files beyond `max_files`, and opens a fresh file.
fn rotate(path: &Path, max_files: u64) -> std::io::Result<File> {
    let stamp = chrono::Local::now().format("%Y.%m.%d.%H.%M.%S.%9f");
    let rotated = PathBuf::from(format!("{}.{stamp}", path.display()));
    std::fs::rename(path, &rotated)?;
    if max_files > 0 {
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let prefix = format!("{}.", name.to_string_lossy());
            let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .collect();
            old.sort();
            while old.len() as u64 > max_files {
                let _ = std::fs::remove_file(old.remove(0));
            }
        }
    }
    OpenOptions::new().create(true).append(true).open(path)
}

struct NatsLayer {
    settings: Arc<LogSettings>,
    sink: Arc<Mutex<Sink>>,
    pid: u32,
}

static GLOBAL: OnceLock<(Arc<LogSettings>, Arc<Mutex<Sink>>)> = OnceLock::new();

/// Installs the global logger. Later calls only update the settings (tests may start
/// several servers in one process).
pub fn init(
    debug: bool,
    trace: bool,
    logtime: bool,
    utc: bool,
    log_file: Option<&Path>,
) -> std::io::Result<()> {
    let sink = match log_file {
        Some(p) => {
            let file = OpenOptions::new().create(true).append(true).open(p)?;
            let written = file.metadata().map(|m| m.len()).unwrap_or(0);
            Sink::File {
                path: p.to_path_buf(),
                file,
                written,
            }
        }
        None if stderr_is_journal() => Sink::Journal,
        None => Sink::Stderr,
    };
    if let Some((s, k)) = GLOBAL.get() {
        apply(s, debug, trace, logtime, utc);
        *k.lock() = sink;
        return Ok(());
    }
    let settings = Arc::new(LogSettings::default());
    apply(&settings, debug, trace, logtime, utc);
    let sink = Arc::new(Mutex::new(sink));
    let _ = GLOBAL.set((settings.clone(), sink.clone()));
    let layer = NatsLayer {
        settings,
        sink,
        pid: std::process::id(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Ok(())
}

/// Changes the level switches (config reload).
pub fn update(debug: bool, trace: bool, logtime: bool, utc: bool) {
    if let Some((s, _)) = GLOBAL.get() {
        apply(s, debug, trace, logtime, utc);
    }
}

/// Reopens the log file (SIGUSR1, for log rotation).
pub fn reopen() {
    if let Some((_, sink)) = GLOBAL.get() {
        let mut g = sink.lock();
        if let Sink::File { path, .. } = &*g {
            if let Ok(f) = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.clone())
            {
                let path = path.clone();
                let written = f.metadata().map(|m| m.len()).unwrap_or(0);
                *g = Sink::File {
                    path,
                    file: f,
                    written,
                };
            }
        }
    }
}

fn apply(s: &LogSettings, debug: bool, trace: bool, logtime: bool, utc: bool) {
    s.debug.store(debug, Ordering::Relaxed);
    s.trace.store(trace, Ordering::Relaxed);
    s.logtime.store(logtime, Ordering::Relaxed);
    s.logtime_utc.store(utc, Ordering::Relaxed);
}

/// True when trace logging is on: the hot path checks this before formatting protocol traces.
pub fn trace_enabled() -> bool {
    GLOBAL
        .get()
        .map(|(s, _)| s.trace.load(Ordering::Relaxed))
        .unwrap_or(false)
}

struct MsgVisitor(String);

impl Visit for MsgVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }
}

impl NatsLayer {
    /// Could an event with this metadata be written now? What `on_event` prints: spans
    /// never, events up to WARN always, INFO from our own crates, DEBUG and TRACE from our
    /// own crates while switched on.
    fn wanted(&self, meta: &Metadata<'_>) -> bool {
        if meta.is_span() {
            return false;
        }
        let level = *meta.level();
        if level <= Level::WARN {
            return true;
        }
        meta.target().starts_with("canopy")
            && match level {
                Level::DEBUG => self.settings.debug.load(Ordering::Relaxed),
                Level::TRACE => self.settings.trace.load(Ordering::Relaxed),
                _ => true,
            }
    }
}

impl<S: Subscriber> Layer<S> for NatsLayer {
    /// Spans (nothing prints them) and events below WARN from other crates can never be
    /// written: disabled for good, so that openraft's per-call `instrument` spans and debug
    /// events are neither built nor registered (they were 3-5% of a replicated publish's
    /// CPU). The rest is decided per call, as the switches may change on reload.
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_span() || (*meta.level() > Level::WARN && !meta.target().starts_with("canopy")) {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        self.wanted(meta)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let tag = match level {
            Level::ERROR => "[ERR]",
            Level::WARN => "[WRN]",
            Level::INFO => "[INF]",
            Level::DEBUG => {
                if !self.settings.debug.load(Ordering::Relaxed) {
                    return;
                }
                "[DBG]"
            }
            Level::TRACE => {
                if !self.settings.trace.load(Ordering::Relaxed) {
                    return;
                }
                "[TRC]"
            }
        };
        // Only our own crates log below WARN; dependencies (openraft narrates every
        // election and start-up at INFO) stay quiet unless something is wrong.
        if level > Level::WARN && !event.metadata().target().starts_with("canopy") {
            return;
        }
        let mut v = MsgVisitor(String::new());
        event.record(&mut v);
        let line = format_line(self.pid, Some(&self.settings), tag, &v.0);
        write_line(&mut self.sink.lock(), &line, self.pid);
    }
}

/// `[pid] date [TAG] message\n`, with the date when `logtime` is on (always when the
/// logger is not installed yet).
fn format_line(pid: u32, settings: Option<&LogSettings>, tag: &str, msg: &str) -> String {
    let mut line = format!("[{pid}] ");
    let (logtime, utc) = settings
        .map(|s| {
            (
                s.logtime.load(Ordering::Relaxed),
                s.logtime_utc.load(Ordering::Relaxed),
            )
        })
        .unwrap_or((true, false));
    if logtime {
        if utc {
            let _ = write!(
                line,
                "{} ",
                chrono::Utc::now().format("%Y/%m/%d %H:%M:%S%.6f")
            );
        } else {
            let _ = write!(
                line,
                "{} ",
                chrono::Local::now().format("%Y/%m/%d %H:%M:%S%.6f")
            );
        }
    }
    line.push_str(tag);
    line.push(' ');
    line.push_str(msg);
    line.push('\n');
    line
}

/// True when systemd connected our stderr to the journal: `JOURNAL_STREAM` is
/// `<device>:<inode>` of that stream, and fd 2 is still it (not redirected since).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The syslog priority prefix for a formatted line, from its level tag (the first
/// bracketed tag after the pid and date).
fn journal_priority(line: &str) -> &'static str {
    let tag = line
        .match_indices(" [")
        .map(|(i, _)| &line[i + 1..])
        .find(|t| t.len() >= 5 && t.as_bytes()[4] == b']');
    match tag.map(|t| &t[..5]) {
        Some("[ERR]" | "[FTL]") => "<3>",
        Some("[WRN]") => "<4>",
        Some("[INF]") => "<6>",
        _ => "<7>",
    }
}

fn write_line(sink: &mut Sink, line: &str, pid: u32) {
    match sink {
        Sink::Stderr => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        Sink::Journal => {
            let line = format!("{}{line}", journal_priority(line));
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        Sink::File {
            path,
            file,
            written,
        } => {
            let _ = file.write_all(line.as_bytes());
            *written += line.len() as u64;
            let (limit, max_files) = rotation();
            if limit > 0 && *written >= limit {
                match rotate(path, max_files) {
                    Ok(f) => {
                        *file = f;
                        *written = 0;
                    }
                    Err(e) => {
                        let _ = writeln!(file, "[{pid}] [ERR] log rotation failed: {e}");
                        // Do not retry on every line.
                        *written = 0;
                    }
                }
            }
        }
    }
}

/// Logs a fatal error as nats-server's `Fatalf` does: `[pid] date [FTL] message`, to the
/// log (and to stderr as well when the log is a file, so that whoever started the
/// process sees why it stopped). The caller exits afterwards.
pub fn fatal(msg: &str) {
    let pid = std::process::id();
    match GLOBAL.get() {
        Some((settings, sink)) => {
            let line = format_line(pid, Some(settings), "[FTL]", msg);
            let mut sink = sink.lock();
            let to_file = matches!(&*sink, Sink::File { .. });
            write_line(&mut sink, &line, pid);
            if to_file {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
        None => {
            let line = format_line(pid, None, "[FTL]", msg);
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// `max_traced_msg_len`: payloads longer than this are cut in traces (0 = no limit).
static MAX_TRACED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets `max_traced_msg_len`.
pub fn set_max_traced(n: u64) {
    MAX_TRACED.store(n as usize, Ordering::Relaxed);
}

fn lossy<B: AsRef<[u8]>>(b: &B) -> String {
    String::from_utf8_lossy(b.as_ref()).into_owned()
}

fn opt<B: AsRef<[u8]>>(b: &Option<B>) -> String {
    b.as_ref()
        .map(|x| format!(" {}", lossy(x)))
        .unwrap_or_default()
}

/// Logs an inbound protocol op as nats-server's trace does:
/// `<label> - "<<- [PUB foo 5]"`, then `"<<- MSG_PAYLOAD: [...]"` for payloads.
pub fn trace_in<B: AsRef<[u8]>>(label: &str, op: &canopy_proto::Op<B>) {
    use canopy_proto::Op;
    let (line, payload): (String, Option<&[u8]>) = match op {
        Op::Info(j) => (format!("INFO {}", lossy(j)), None),
        Op::Connect(j) => (format!("CONNECT {}", lossy(j)), None),
        Op::Pub {
            subject,
            reply,
            payload,
        } => (
            format!(
                "PUB {}{} {}",
                lossy(subject),
                opt(reply),
                payload.as_ref().len()
            ),
            Some(payload.as_ref()),
        ),
        Op::HPub {
            subject,
            reply,
            header_len,
            payload,
        } => (
            format!(
                "HPUB {}{} {} {}",
                lossy(subject),
                opt(reply),
                header_len,
                payload.as_ref().len()
            ),
            Some(payload.as_ref()),
        ),
        Op::Sub {
            subject,
            queue,
            sid,
        } => (
            format!("SUB {}{} {}", lossy(subject), opt(queue), lossy(sid)),
            None,
        ),
        Op::Unsub { sid, max } => (
            format!(
                "UNSUB {}{}",
                lossy(sid),
                max.map(|m| format!(" {m}")).unwrap_or_default()
            ),
            None,
        ),
        Op::Err(t) => (format!("-ERR '{}'", lossy(t)), None),
        Op::LSub {
            subject,
            queue,
            weight,
        } => (
            format!(
                "LS+ {}{}{}",
                lossy(subject),
                opt(queue),
                weight.map(|w| format!(" {w}")).unwrap_or_default()
            ),
            None,
        ),
        Op::LUnsub { subject, queue } => (format!("LS- {}{}", lossy(subject), opt(queue)), None),
        Op::LMsg {
            subject,
            reply,
            payload,
            ..
        } => (
            format!(
                "LMSG {}{} {}",
                lossy(subject),
                opt(reply),
                payload.as_ref().len()
            ),
            Some(payload.as_ref()),
        ),
        Op::RSub {
            account,
            subject,
            queue,
            ..
        } => (
            format!("RS+ {} {}{}", lossy(account), lossy(subject), opt(queue)),
            None,
        ),
        Op::RUnsub {
            account,
            subject,
            queue,
        } => (
            format!("RS- {} {}{}", lossy(account), lossy(subject), opt(queue)),
            None,
        ),
        Op::RMsg {
            account,
            subject,
            reply,
            payload,
            ..
        } => (
            format!(
                "RMSG {} {}{} {}",
                lossy(account),
                lossy(subject),
                opt(reply),
                payload.as_ref().len()
            ),
            Some(payload.as_ref()),
        ),
        other => (other.verb().to_string(), None),
    };
    tracing::trace!("{label} - \"<<- [{line}]\"");
    if let Some(p) = payload {
        let max = MAX_TRACED.load(Ordering::Relaxed);
        let shown = if max > 0 && p.len() > max {
            &p[..max]
        } else {
            p
        };
        let more = if shown.len() < p.len() { "..." } else { "" };
        tracing::trace!(
            "{label} - \"<<- MSG_PAYLOAD: [{:?}{more}]\"",
            String::from_utf8_lossy(shown)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_priorities_follow_the_level_tag() {
        let l = |tag: &str, msg: &str| format_line(42, None, tag, msg);
        assert_eq!(journal_priority(&l("[ERR]", "x")), "<3>");
        assert_eq!(journal_priority(&l("[FTL]", "x")), "<3>");
        assert_eq!(journal_priority(&l("[WRN]", "a [ERR] b")), "<4>");
        assert_eq!(journal_priority(&l("[INF]", "x")), "<6>");
        assert_eq!(journal_priority(&l("[DBG]", "x")), "<7>");
        assert_eq!(journal_priority("[42] [INF] no date\n"), "<6>");
    }
}
