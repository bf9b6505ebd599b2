//! `canopy bench --js pub --raw`: a lean raw-protocol JetStream publisher. async-nats needs
//! 70–76% of a core to publish with acks at the rates a server reaches here, so the
//! async-publish rows measured the client as much as the server; this one writes
//! `PUB subject reply size` frames on a plain TCP socket and reads the acks with a minimal
//! parser, in one task, with no allocation per message.
//!
//! Each message has its own reply subject `_INBOX.<token>.<i>` (as NATS clients make
//! them: the server cannot cache the reply's route), answered through one wildcard
//! subscription `_INBOX.<token>.*`. At most `window` publishes are unacknowledged at a
//! time. Every ack is checked: a negative PubAck (`"error"`), a duplicate, an ack for
//! another stream, an ack with no sequence, a second ack for one message or a sequence seen
//! twice or outside `1..=n` (the stream is fresh) fails the run, and so does an empty reply
//! or a status (the CONNECT asks for headers and no-responders statuses, so a publish
//! nothing answers comes back as `HMSG … NATS/1.0 503`); the run ends only when all `n`
//! messages are acknowledged, and fails when no ack arrives for `timeout`.

use super::raw::RawConn;
use super::ClientRun;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest control line accepted.
const MAX_LINE: usize = 4096;
/// Largest ack payload accepted (a PubAck is ~60 bytes; errors carry a description).
const MAX_ACK: usize = 64 * 1024;
/// Read buffer.
const READ_BUF: usize = 64 * 1024;

/// What one parsed server op asks of the publisher.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// The PubAck of message `index` (from its reply subject): stored as `seq`.
    Ack {
        index: u64,
        seq: u64,
    },
    Ping,
}

/// Incremental parser of the server→publisher stream: `MSG` acks on `_INBOX.<token>.<i>`,
/// `PING`, `PONG`, `+OK`, `INFO` (a cluster member sends updates); anything else, a
/// malformed ack or `-ERR` is an error.
pub struct AckParser {
    acks: Acks,
    buf: Vec<u8>,
}

/// What an ack must look like.
struct Acks {
    /// `_INBOX.<token>.`: the reply prefix every ack's subject must start with.
    prefix: Vec<u8>,
    stream: Vec<u8>,
}

impl AckParser {
    pub fn new(prefix: &str, stream: &str) -> AckParser {
        AckParser {
            acks: Acks {
                prefix: prefix.as_bytes().to_vec(),
                stream: format!("\"stream\":\"{stream}\"").into_bytes(),
            },
            buf: Vec::with_capacity(READ_BUF),
        }
    }

    /// Consume a chunk; calls `on` for every complete op, in order.
    pub fn feed(&mut self, data: &[u8], on: impl FnMut(Op) -> Result<()>) -> Result<()> {
        let acks = &self.acks;
        feed_ops(&mut self.buf, data, |rest| acks.one(rest), on)
    }
}

/// Appends `data` to `buf` and hands every complete op at its start to `on`, in order;
/// `one` parses an op at the start of a slice (`None`: not wholly buffered yet; else the
/// bytes it took and what it tells, if anything). What was parsed is dropped from `buf`.
pub(super) fn feed_ops<O>(
    buf: &mut Vec<u8>,
    data: &[u8],
    one: impl Fn(&[u8]) -> Result<Option<(usize, Option<O>)>>,
    mut on: impl FnMut(O) -> Result<()>,
) -> Result<()> {
    buf.extend_from_slice(data);
    let mut at = 0;
    let result = loop {
        match one(&buf[at..]) {
            Ok(Some((used, op))) => {
                at += used;
                if let Some(op) = op {
                    if let Err(e) = on(op) {
                        break Err(e);
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    buf.drain(..at);
    result
}

impl Acks {
    /// Parse one op at the start of `rest`: `None` when it is not wholly buffered yet, else
    /// the bytes it took and what it asks (nothing for PONG, +OK, INFO).
    fn one(&self, rest: &[u8]) -> Result<Option<(usize, Option<Op>)>> {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE && !rest.starts_with(b"INFO") {
                bail!("control line longer than {MAX_LINE} bytes");
            }
            return Ok(None);
        };
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let after = nl + 1;
        if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply] <size>
            let mut toks = args.split(|&b| b == b' ').filter(|t| !t.is_empty());
            let subject = toks.next().unwrap_or_default();
            let size = toks
                .next_back()
                .and_then(number)
                .ok_or_else(|| anyhow!("bad MSG line {:?}", String::from_utf8_lossy(line)))?
                as usize;
            if size > MAX_ACK {
                bail!(
                    "ack of {size} bytes on {}",
                    String::from_utf8_lossy(subject)
                );
            }
            if rest.len() < after + size + 2 {
                return Ok(None);
            }
            let payload = &rest[after..after + size];
            let index = subject
                .strip_prefix(self.prefix.as_slice())
                .and_then(number)
                .ok_or_else(|| {
                    anyhow!(
                        "message on unexpected subject {:?}",
                        String::from_utf8_lossy(subject)
                    )
                })?;
            let seq = self.ack_seq(index, payload)?;
            return Ok(Some((after + size + 2, Some(Op::Ack { index, seq }))));
        }
        if let Some(args) = line.strip_prefix(b"HMSG ") {
            // HMSG <subject> <sid> [reply] <hdr len> <total len>: a status (the publisher
            // asks for no-responders statuses) or an ack with headers; either way not a
            // plain PubAck, so the run fails, naming the status line.
            let mut toks = args.split(|&b| b == b' ').filter(|t| !t.is_empty());
            let subject = String::from_utf8_lossy(toks.next().unwrap_or_default()).into_owned();
            let total = toks.next_back().and_then(number);
            let hdr = toks.next_back().and_then(number);
            let (Some(total), Some(hdr)) = (total, hdr) else {
                bail!("bad HMSG line {:?}", String::from_utf8_lossy(line));
            };
            let (total, hdr) = (total as usize, hdr as usize);
            if hdr > total || total > MAX_ACK {
                bail!("bad HMSG sizes {hdr}/{total} on {subject}");
            }
            if rest.len() < after + total + 2 {
                return Ok(None);
            }
            let head = &rest[after..after + hdr];
            let status = head.split(|&b| b == b'\r').next().unwrap_or_default();
            bail!(
                "status reply on {subject} instead of a PubAck: {:?}",
                String::from_utf8_lossy(status)
            );
        }
        let op = match line {
            b"PING" => Some(Op::Ping),
            b"PONG" | b"+OK" | b"" => None,
            l if l.starts_with(b"INFO") => None,
            l if l.starts_with(b"-ERR") => {
                bail!("server said {}", String::from_utf8_lossy(l))
            }
            l => bail!("unexpected protocol line {:?}", String::from_utf8_lossy(l)),
        };
        Ok(Some((after, op)))
    }

    /// The sequence of a positive PubAck for `index`; every other answer is an error.
    fn ack_seq(&self, index: u64, payload: &[u8]) -> Result<u64> {
        let text = || String::from_utf8_lossy(payload);
        if payload.is_empty() {
            bail!("empty reply for message {index} instead of a PubAck");
        }
        if find(payload, b"\"error\"").is_some() {
            bail!("negative PubAck for message {index}: {}", text());
        }
        if find(payload, b"\"duplicate\":true").is_some() {
            bail!("PubAck for message {index} says duplicate: {}", text());
        }
        if find(payload, &self.stream).is_none() {
            bail!("PubAck for message {index} from another stream: {}", text());
        }
        let seq = find(payload, b"\"seq\":").and_then(|i| {
            let digits = &payload[i + 6..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            number(&digits[..end])
        });
        seq.ok_or_else(|| anyhow!("PubAck for message {index} without a sequence: {}", text()))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A non-empty run of ASCII digits as a number.
pub(super) fn number(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(t.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// One bit per message or sequence in `0..n`: set once, counted.
pub(super) struct Seen {
    bits: Vec<u64>,
    n: u64,
    pub(super) count: u64,
}

impl Seen {
    pub(super) fn new(n: u64) -> Seen {
        Seen {
            bits: vec![0; n.div_ceil(64) as usize],
            n,
            count: 0,
        }
    }

    /// Marks `i` (0-based); false when it is outside `0..n` or was marked already.
    pub(super) fn mark(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        let Some(word) = self.bits.get_mut(w).filter(|_| i < self.n) else {
            return false;
        };
        if *word & b != 0 {
            return false;
        }
        *word |= b;
        self.count += 1;
        true
    }
}

/// Connects asking for headers and status replies (a publish nothing answers comes back
/// as a `503`, the end of a pull as a `408`, rather than as silence) and subscribes
/// `<inbox><suffix>`, where the inbox `_INBOX.<token>` is this process's and moment's;
/// returns the connection and the inbox.
pub(super) async fn connect_with_inbox(
    addr: &str,
    connect_json: &str,
    suffix: &str,
) -> Result<(RawConn, String)> {
    let mut hello: serde_json::Value =
        serde_json::from_str(connect_json).context("CONNECT JSON")?;
    hello["headers"] = true.into();
    hello["no_responders"] = true.into();
    let mut conn = RawConn::connect(addr, &hello.to_string()).await?;
    let inbox = format!(
        "_INBOX.{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    conn.writer
        .write_all(format!("SUB {inbox}{suffix} 1\r\n").as_bytes())
        .await
        .context("sending SUB")?;
    conn.sync().await.context("SUB not acknowledged")?;
    Ok((conn, inbox))
}

/// A raw JetStream publisher, connected, with its reply subscription in place.
pub struct RawJsPublisher {
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::net::tcp::OwnedWriteHalf,
    prefix: String,
    stream: String,
}

impl RawJsPublisher {
    /// Connect to `addr` and subscribe to the reply subjects of the acks for `stream`.
    pub async fn connect(addr: &str, connect_json: &str, stream: &str) -> Result<Self> {
        let (conn, inbox) = connect_with_inbox(addr, connect_json, ".*").await?;
        Ok(RawJsPublisher {
            reader: conn.reader,
            writer: conn.writer,
            prefix: format!("{inbox}."),
            stream: stream.to_string(),
        })
    }

    /// Publish `n` messages of `payload` to `subject` (captured by the fresh stream) with
    /// at most `window` unacknowledged; returns when all `n` are acknowledged.
    pub async fn run(
        self,
        subject: &str,
        payload: &[u8],
        n: u64,
        window: usize,
        timeout: Duration,
    ) -> Result<ClientRun> {
        let RawJsPublisher {
            mut reader,
            mut writer,
            prefix,
            stream,
        } = self;
        let head = format!("PUB {subject} {prefix}").into_bytes();
        let tail = format!(" {}\r\n", payload.len()).into_bytes();
        let frame_len = head.len() + 20 + tail.len() + payload.len() + 2;
        let mut out: Vec<u8> = Vec::with_capacity(frame_len * window.min(4096));
        let mut rbuf = vec![0u8; READ_BUF];
        let mut parser = AckParser::new(&prefix, &stream);
        let (mut acked, mut seqs) = (Seen::new(n), Seen::new(n));
        let (mut sent, mut pings) = (0u64, 0u32);
        let start = Instant::now();
        while acked.count < n {
            // Top the window up in one write.
            out.clear();
            while sent < n && sent - acked.count < window as u64 {
                out.extend_from_slice(&head);
                write!(out, "{sent}").context("encoding")?;
                out.extend_from_slice(&tail);
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
                sent += 1;
            }
            for _ in 0..std::mem::take(&mut pings) {
                out.extend_from_slice(b"PONG\r\n");
            }
            if !out.is_empty() {
                writer.write_all(&out).await.context("publisher write")?;
            }
            let got = match tokio::time::timeout(timeout, reader.read(&mut rbuf)).await {
                Err(_) => bail!(
                    "no ack within {timeout:?}: {} of {n} acknowledged, {sent} sent",
                    acked.count
                ),
                Ok(r) => r.context("publisher read")?,
            };
            if got == 0 {
                bail!(
                    "connection closed by server after {} of {n} acks",
                    acked.count
                );
            }
            parser.feed(&rbuf[..got], |op| {
                match op {
                    Op::Ping => pings += 1,
                    Op::Ack { index, seq } => {
                        if index >= sent || !acked.mark(index) {
                            bail!("unexpected or second ack for message {index}");
                        }
                        if seq == 0 || !seqs.mark(seq - 1) {
                            bail!(
                                "ack for message {index} has sequence {seq}: outside 1..={n} of \
                                 the fresh stream, or given twice"
                            );
                        }
                    }
                }
                Ok(())
            })?;
        }
        let end = Instant::now();
        // Every message acknowledged once, and the stream holds sequences 1..=n.
        if seqs.count != n {
            return Err(anyhow!("{} distinct sequences for {n} acks", seqs.count));
        }
        Ok(ClientRun {
            msgs: n,
            bytes: n * payload.len() as u64,
            start,
            end,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P: &str = "_INBOX.t.";

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<Op>> {
        let mut p = AckParser::new(P, "S");
        let mut ops = Vec::new();
        for c in chunks {
            p.feed(c, |op| {
                ops.push(op);
                Ok(())
            })?;
        }
        Ok(ops)
    }

    /// A `MSG` frame on `subject` with `payload`.
    fn msg(subject: &str, payload: &str) -> Vec<u8> {
        format!("MSG {subject} 1 {}\r\n{payload}\r\n", payload.len()).into_bytes()
    }

    #[test]
    fn acks_in_any_split() {
        let mut stream = b"INFO {\"x\":1}\r\n".to_vec();
        stream.extend(msg("_INBOX.t.0", r#"{"stream":"S","seq":1}"#));
        stream.extend_from_slice(b"PING\r\n");
        stream.extend(msg(
            "_INBOX.t.1",
            r#"{"stream":"S","domain":"hub","seq":2}"#,
        ));
        stream.extend_from_slice(b"+OK\r\nPONG\r\n");
        let want = vec![
            Op::Ack { index: 0, seq: 1 },
            Op::Ping,
            Op::Ack { index: 1, seq: 2 },
        ];
        assert_eq!(parse_all(&[&stream]).unwrap(), want);
        for cut in 0..stream.len() {
            let got = parse_all(&[&stream[..cut], &stream[cut..]]).unwrap();
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn bad_answers_fail() {
        let neg = msg(
            "_INBOX.t.0",
            r#"{"error":{"code":503,"err_code":10077,"description":"too many msgs"}}"#,
        );
        let e = parse_all(&[&neg]).unwrap_err().to_string();
        assert!(e.contains("negative PubAck for message 0"), "{e}");
        for bad in [
            msg("_INBOX.t.3", r#"{"stream":"S","seq":1,"duplicate":true}"#),
            msg("_INBOX.t.0", r#"{"stream":"T","seq":1}"#),
            msg("_INBOX.t.0", r#"{"stream":"S"}"#),
            msg("other.0", r#"{"stream":"S","seq":1}"#),
            msg("_INBOX.t.x", r#"{"stream":"S","seq":1}"#),
            msg("_INBOX.t.0", ""),
            b"-ERR 'Permissions Violation'\r\n".to_vec(),
            b"MSG _INBOX.t.0 1 x\r\n".to_vec(),
        ] {
            assert!(
                parse_all(&[&bad]).is_err(),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn status_replies_fail_with_their_status() {
        let status = b"HMSG _INBOX.t.0 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n";
        // Incomplete: waits for the rest.
        assert!(parse_all(&[&status[..30]]).unwrap().is_empty());
        let e = parse_all(&[status]).unwrap_err().to_string();
        assert!(e.contains("NATS/1.0 503"), "{e}");
        assert!(parse_all(&[b"HMSG _INBOX.t.0 1 17 16\r\n"]).is_err());
    }

    #[test]
    fn seen_marks_once() {
        let mut s = Seen::new(65);
        assert!(s.mark(0) && s.mark(64) && !s.mark(64) && !s.mark(65));
        assert_eq!(s.count, 2);
    }
}
