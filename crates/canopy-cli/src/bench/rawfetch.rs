//! `canopy bench --js fetch --raw`: a lean raw-protocol pull consumer. With async-nats as
//! the consumer, a fetch costs the client two task hand-offs per message (the delivery
//! from its connection task, the ack back to it), and on a small machine the fetch rate
//! measured the client as much as the server. This one does what the async-nats loop does
//! (sequential pulls of `batch` messages, each message acknowledged) on a plain TCP socket
//! in one task: it sends `$JS.API.CONSUMER.MSG.NEXT` with `{"batch": B, "expires": …}`,
//! reads the deliveries with a minimal parser, and writes the acks of each read in one
//! write (the acks of a pull's last read go out together with the next pull).
//!
//! Every delivery is checked: its ack subject must name the stream and consumer, be a
//! first delivery, and carry a stream sequence in `1..=n` seen once; its size must be the
//! published one. A status other than the end of a pull (`404`, `408`) or a heartbeat
//! (`100`), a `-ERR`, or no delivery for `timeout` fails the run.

use super::jsraw::{connect_with_inbox, feed_ops, number, Seen};
use super::raw::RawConn;
use super::ClientRun;
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest control line accepted (INFO can carry long URL lists).
const MAX_LINE: usize = 64 * 1024;
/// Largest message accepted.
const MAX_MSG: usize = 8 * 1024 * 1024;
/// Read buffer.
const READ_BUF: usize = 256 * 1024;

/// What one parsed server op tells the consumer.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// A delivery: its ack subject and payload size (headers included).
    Msg {
        ack: Vec<u8>,
        size: usize,
    },
    /// The pull ended with this status (`404` no messages, `408` request expired).
    End(u16),
    Ping,
}

/// Incremental parser of the server→consumer stream on the pull inbox.
#[derive(Default)]
pub struct FetchParser {
    buf: Vec<u8>,
}

impl FetchParser {
    /// Consume a chunk; calls `on` for every complete op, in order.
    pub fn feed(&mut self, data: &[u8], on: impl FnMut(Op) -> Result<()>) -> Result<()> {
        feed_ops(&mut self.buf, data, one, on)
    }
}

/// Parses one op at the start of `rest`: `None` when it is not wholly buffered yet, else
/// the bytes it took and what it tells (nothing for PONG, +OK, INFO, a heartbeat).
fn one(rest: &[u8]) -> Result<Option<(usize, Option<Op>)>> {
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > MAX_LINE {
            bail!("control line longer than {MAX_LINE} bytes");
        }
        return Ok(None);
    };
    let line = &rest[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = || String::from_utf8_lossy(line).into_owned();
    let after = nl + 1;
    let (args, headers) = if let Some(a) = line.strip_prefix(b"MSG ") {
        (a, false)
    } else if let Some(a) = line.strip_prefix(b"HMSG ") {
        (a, true)
    } else {
        let op = if line.starts_with(b"PING") {
            Some(Op::Ping)
        } else if line.starts_with(b"PONG") || line.starts_with(b"+OK") || line.starts_with(b"INFO")
        {
            None
        } else if line.starts_with(b"-ERR") {
            bail!("server said {}", text());
        } else {
            bail!("unexpected line {:?}", text());
        };
        return Ok(Some((after, op)));
    };
    // MSG <subject> <sid> [reply] <size> | HMSG <subject> <sid> [reply] <hdr> <size>
    let toks: Vec<&[u8]> = args
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let fixed = if headers { 4 } else { 3 };
    if toks.len() != fixed && toks.len() != fixed + 1 {
        bail!("bad line {:?}", text());
    }
    let size = toks
        .last()
        .and_then(|t| number(t))
        .ok_or_else(|| anyhow!("bad size in {:?}", text()))? as usize;
    if size > MAX_MSG {
        bail!("message of {size} bytes");
    }
    if rest.len() < after + size + 2 {
        return Ok(None);
    }
    let reply = (toks.len() == fixed + 1).then(|| toks[2]);
    let used = after + size + 2;
    if let Some(ack) = reply.filter(|r| r.starts_with(b"$JS.ACK.")) {
        return Ok(Some((
            used,
            Some(Op::Msg {
                ack: ack.to_vec(),
                size,
            }),
        )));
    }
    // No ack subject: a status (`NATS/1.0 <code> <description>` heads the headers).
    let body = &rest[after..after + size];
    let code = headers
        .then(|| body.strip_prefix(b"NATS/1.0 "))
        .flatten()
        .and_then(|s| s.get(..3))
        .and_then(number);
    match code {
        Some(100) => Ok(Some((used, None))),
        Some(c @ (404 | 408)) => Ok(Some((used, Some(Op::End(c as u16))))),
        _ => bail!(
            "unexpected message {:?}: {:?}",
            text(),
            String::from_utf8_lossy(&body[..body.len().min(120)])
        ),
    }
}

/// The delivery count and stream sequence of an ack subject of `stream`/`consumer`:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`, or the form
/// with domain and account hash in front (12 tokens, nats-server 2.10+).
pub fn ack_info(ack: &[u8], stream: &str, consumer: &str) -> Result<(u64, u64)> {
    let toks: Vec<&[u8]> = ack.split(|&b| b == b'.').collect();
    let at = match toks.len() {
        9 => 2,
        n if n >= 11 => 4,
        _ => bail!("bad ack subject {:?}", String::from_utf8_lossy(ack)),
    };
    if toks[at] != stream.as_bytes() || toks[at + 1] != consumer.as_bytes() {
        bail!(
            "a delivery for another consumer: {:?}",
            String::from_utf8_lossy(ack)
        );
    }
    match (number(toks[at + 2]), number(toks[at + 3])) {
        (Some(d), Some(s)) => Ok((d, s)),
        _ => bail!("bad ack subject {:?}", String::from_utf8_lossy(ack)),
    }
}

/// A raw pull consumer with its inbox subscribed.
pub struct RawFetcher {
    conn: RawConn,
    inbox: String,
}

impl RawFetcher {
    pub async fn connect(addr: &str, connect_json: &str) -> Result<RawFetcher> {
        let (conn, inbox) = connect_with_inbox(addr, connect_json, "").await?;
        Ok(RawFetcher { conn, inbox })
    }

    /// Drains `n` messages of `size` bytes from `consumer` of `stream` (a fresh stream
    /// holding exactly them) with sequential pulls of `batch`, acknowledging each.
    pub async fn run(
        mut self,
        stream: &str,
        consumer: &str,
        n: u64,
        size: usize,
        batch: usize,
        timeout: Duration,
    ) -> Result<ClientRun> {
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
        let mut rbuf = vec![0u8; READ_BUF];
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut parser = FetchParser::default();
        let mut seen = Seen::new(n);
        let (mut bytes, mut pings) = (0u64, 0u32);
        let start = Instant::now();
        while seen.count < n {
            let want = (batch as u64).min(n - seen.count);
            let body = format!(
                "{{\"batch\":{want},\"expires\":{}}}",
                timeout.as_nanos().min(u64::MAX as u128)
            );
            write!(
                out,
                "PUB {next} {} {}\r\n{body}\r\n",
                self.inbox,
                body.len()
            )
            .context("encoding")?;
            let (mut got, mut ended) = (0u64, None);
            while got < want && ended.is_none() {
                for _ in 0..std::mem::take(&mut pings) {
                    out.extend_from_slice(b"PONG\r\n");
                }
                if !out.is_empty() {
                    self.conn
                        .writer
                        .write_all(&out)
                        .await
                        .context("consumer write")?;
                    out.clear();
                }
                let r = tokio::time::timeout(timeout, self.conn.reader.read(&mut rbuf)).await;
                let k = match r {
                    Err(_) => bail!(
                        "no delivery within {timeout:?}: {} of {n} received",
                        seen.count
                    ),
                    Ok(r) => r.context("consumer read")?,
                };
                if k == 0 {
                    bail!("connection closed by server after {} of {n}", seen.count);
                }
                parser.feed(&rbuf[..k], |op| {
                    match op {
                        Op::Ping => pings += 1,
                        Op::End(code) => ended = Some(code),
                        Op::Msg {
                            ack,
                            size: got_size,
                        } => {
                            let (delivered, seq) = ack_info(&ack, stream, consumer)?;
                            if delivered != 1 {
                                bail!("message {seq} delivered {delivered} times");
                            }
                            if got_size != size {
                                bail!("message {seq} has {got_size} bytes, {size} published");
                            }
                            if seq == 0 || !seen.mark(seq - 1) {
                                bail!("sequence {seq} twice or outside 1..={n}");
                            }
                            got += 1;
                            bytes += got_size as u64;
                            out.extend_from_slice(b"PUB ");
                            out.extend_from_slice(&ack);
                            out.extend_from_slice(b" 0\r\n\r\n");
                        }
                    }
                    Ok(())
                })?;
                if got > want {
                    bail!("a pull of {want} delivered {got}");
                }
            }
            if got < want {
                bail!(
                    "a pull of {want} ended with status {} after {got} ({} of {n} received)",
                    ended.unwrap_or(0),
                    seen.count
                );
            }
        }
        // The last acks, and a round trip so that the server has them all.
        if !out.is_empty() {
            self.conn.writer.write_all(&out).await?;
        }
        self.conn.sync().await.context("flushing acks")?;
        Ok(ClientRun {
            msgs: seen.count,
            bytes,
            start,
            end: Instant::now(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The ops of a stream fed in these chunks.
    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<Op>> {
        let (mut p, mut ops) = (FetchParser::default(), Vec::new());
        let mut keep = |op| {
            ops.push(op);
            Ok(())
        };
        chunks.iter().try_for_each(|c| p.feed(c, &mut keep))?;
        Ok(ops)
    }

    const ACK: &str = "$JS.ACK.S.C.1.7.7.1700000000000000000.3";

    /// An `HMSG` frame on the inbox with these headers and payload.
    fn hmsg(reply: &str, hdr: &str, payload: &str) -> String {
        let total = hdr.len() + payload.len();
        format!(
            "HMSG _INBOX.x 1 {reply} {} {total}\r\n{hdr}{payload}\r\n",
            hdr.len()
        )
    }

    #[test]
    fn deliveries_and_ends_in_any_split() {
        let wire = format!(
            "INFO {{}}\r\nMSG _INBOX.x 1 {ACK} 5\r\nhello\r\nPING\r\n{}{}{}",
            hmsg(ACK, "NATS/1.0\r\nA: bcdefghi\r\n\r\n", "hello"),
            hmsg("", "NATS/1.0 100 Idle Heartbeat\r\n\r\n", ""),
            hmsg("", "NATS/1.0 408 Request Timeout\r\n\r\n", ""),
        );
        let want = vec![
            Op::Msg {
                ack: ACK.as_bytes().to_vec(),
                size: 5,
            },
            Op::Ping,
            Op::Msg {
                ack: ACK.as_bytes().to_vec(),
                size: 30,
            },
            Op::End(408),
        ];
        let b = wire.as_bytes();
        assert_eq!(parse_all(&[b]).unwrap(), want);
        for cut in 1..b.len() {
            assert_eq!(parse_all(&[&b[..cut], &b[cut..]]).unwrap(), want, "{cut}");
        }
    }

    #[test]
    fn unexpected_statuses_and_errors_fail() {
        let conflict = hmsg("", "NATS/1.0 409 Consumer Deleted\r\n\r\n", "");
        let e = parse_all(&[conflict.as_bytes()]).unwrap_err().to_string();
        assert!(e.contains("409 Consumer Deleted"), "{e}");
        let e = parse_all(&[b"-ERR 'Authorization Violation'\r\n"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Authorization Violation"), "{e}");
        assert!(parse_all(&[b"MSG a 1 x y 5\r\nhello\r\n"]).is_err());
        assert!(parse_all(&[b"MSG a 1 99999999999\r\n"]).is_err());
    }

    #[test]
    fn ack_subjects_name_the_consumer_and_the_sequence() {
        assert_eq!(ack_info(ACK.as_bytes(), "S", "C").unwrap(), (1, 7));
        let v2 = b"$JS.ACK.hub.ACCHASH.S.C.2.9.4.1700000000000000000.0.tok";
        assert_eq!(ack_info(v2, "S", "C").unwrap(), (2, 9));
        assert!(ack_info(ACK.as_bytes(), "S", "D").is_err());
        assert!(ack_info(b"$JS.ACK.S.C.x.7.7.1.3", "S", "C").is_err());
        assert!(ack_info(b"$JS.ACK.S.C.1", "S", "C").is_err());
    }
}
