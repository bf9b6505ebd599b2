//! Lean raw-protocol bench clients: a publisher that writes pre-encoded `PUB` batches
//! over a plain `TcpStream`, a subscriber that only counts `MSG`/`HMSG` ops and bytes,
//! and the handshake both share (read INFO, send CONNECT + PING, wait for PONG). They
//! exist because async-nats spends more CPU per message than a fast server does, so on a
//! small machine it can be the bottleneck. The parser here is deliberately self-contained
//! (it does not use canopy-proto) and validates only what it needs to count.

use super::ClientRun;
use anyhow::{anyhow, bail, Context, Result};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Longest control line accepted (INFO can carry long URL lists).
const MAX_LINE: usize = 64 * 1024;
/// Target size of one pre-encoded publish batch.
const BATCH_BYTES: usize = 64 * 1024;
/// Read buffer of the raw subscriber.
const READ_BUF: usize = 256 * 1024;

/// Streaming counter of server→client ops. Feed it bytes in any split; it skips message
/// payloads without buffering them.
#[derive(Debug, Default)]
pub struct MsgCounter {
    partial: Vec<u8>,
    /// Payload bytes (plus the trailing CRLF) still to skip.
    skip: usize,
    pub msgs: u64,
    pub payload_bytes: u64,
    pub pings: u64,
    pub pongs: u64,
    pub infos: u64,
    /// Text of the last `-ERR`, if any.
    pub error: Option<String>,
}

impl MsgCounter {
    /// Consume a chunk of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<()> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
            }
            if data.is_empty() {
                return Ok(());
            }
            let Some(i) = data.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(data);
                if self.partial.len() > MAX_LINE {
                    bail!("control line longer than {MAX_LINE} bytes");
                }
                return Ok(());
            };
            let (line, rest) = data.split_at(i + 1);
            data = rest;
            if self.partial.is_empty() {
                self.control(line)?;
            } else {
                let mut full = std::mem::take(&mut self.partial);
                full.extend_from_slice(line);
                let r = self.control(&full);
                full.clear();
                self.partial = full; // keep the allocation
                r?;
            }
        }
    }

    fn control(&mut self, line: &[u8]) -> Result<()> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"MSG ") {
            let size = last_number(line, 0)?;
            self.msgs += 1;
            self.payload_bytes += size as u64;
            self.skip = size + 2;
        } else if line.starts_with(b"HMSG ") {
            // HMSG subj sid [reply] hdr_len total_len: skip headers and payload together.
            let total = last_number(line, 0)?;
            let hdr = last_number(line, 1)?;
            if hdr > total {
                bail!("HMSG header size {hdr} exceeds total {total}");
            }
            self.msgs += 1;
            self.payload_bytes += (total - hdr) as u64;
            self.skip = total + 2;
        } else if line == b"PING" {
            self.pings += 1;
        } else if line == b"PONG" {
            self.pongs += 1;
        } else if line.starts_with(b"INFO") {
            self.infos += 1;
        } else if line.starts_with(b"-ERR") {
            self.error = Some(String::from_utf8_lossy(line).into_owned());
        } else if !(line.is_empty() || line == b"+OK") {
            bail!(
                "unexpected protocol line {:?}",
                String::from_utf8_lossy(line)
            );
        }
        Ok(())
    }
}

/// The `nth_from_end` (0 = last) space-separated token of `line`, as a number.
fn last_number(line: &[u8], nth_from_end: usize) -> Result<usize> {
    let tok = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|t| !t.is_empty())
        .rev()
        .nth(nth_from_end)
        .ok_or_else(|| anyhow!("short op {:?}", String::from_utf8_lossy(line)))?;
    std::str::from_utf8(tok)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad size in {:?}", String::from_utf8_lossy(line)))
}

/// A connected, authenticated raw connection.
pub struct RawConn {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
    pub counter: MsgCounter,
}

impl RawConn {
    /// Connect, read INFO, send CONNECT and PING, and wait for PONG.
    pub async fn connect(addr: &str, connect_json: &str) -> Result<RawConn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (reader, writer) = stream.into_split();
        let mut c = RawConn {
            reader,
            writer,
            counter: MsgCounter::default(),
        };
        c.read_until(|k| k.infos > 0)
            .await
            .context("waiting for INFO")?;
        let hello = format!("CONNECT {connect_json}\r\nPING\r\n");
        c.writer
            .write_all(hello.as_bytes())
            .await
            .context("sending CONNECT")?;
        c.sync().await.context("CONNECT rejected")?;
        Ok(c)
    }

    /// Wait (reading and answering PINGs) until the predicate holds, failing on `-ERR`.
    async fn read_until(&mut self, done: impl Fn(&MsgCounter) -> bool) -> Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut answered = self.counter.pings;
        while !done(&self.counter) {
            let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read(&mut buf))
                .await
                .map_err(|_| anyhow!("timed out"))??;
            if n == 0 {
                bail!("connection closed by server{}", err_suffix(&self.counter));
            }
            self.counter.feed(&buf[..n])?;
            if let Some(e) = &self.counter.error {
                bail!("server said {e}");
            }
            while answered < self.counter.pings {
                self.writer.write_all(b"PONG\r\n").await?;
                answered += 1;
            }
        }
        Ok(())
    }

    /// Subscribes to `k` distinct subjects (`prefix.conn.j`) and waits until the server
    /// processed them.
    pub async fn subscribe_many(&mut self, prefix: &str, conn: usize, k: usize) -> Result<()> {
        let mut ops = String::with_capacity(k * (prefix.len() + 24));
        for j in 0..k {
            ops.push_str(&format!("SUB {prefix}.{conn}.{j} {}\r\n", j + 1));
        }
        self.writer.write_all(ops.as_bytes()).await?;
        self.sync().await
    }

    /// Send PING and wait for the matching PONG: everything sent before was processed.
    pub async fn sync(&mut self) -> Result<()> {
        let want = self.counter.pongs + 1;
        self.writer.write_all(b"PING\r\n").await?;
        self.read_until(|k| k.pongs >= want).await
    }
}

fn err_suffix(c: &MsgCounter) -> String {
    c.error
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

/// What a raw publisher's background reader reports.
enum Event {
    Ping,
    Pong,
    Closed(String),
}

/// A raw publisher, connected and ready to blast.
pub struct RawPublisher {
    writer: OwnedWriteHalf,
    events: mpsc::UnboundedReceiver<Event>,
}

impl RawPublisher {
    pub async fn connect(addr: &str, connect_json: &str) -> Result<RawPublisher> {
        let RawConn {
            mut reader,
            writer,
            mut counter,
        } = RawConn::connect(addr, connect_json).await?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (pings, pongs) = (counter.pings, counter.pongs);
                let why = match reader.read(&mut buf).await {
                    Ok(0) => format!("connection closed by server{}", err_suffix(&counter)),
                    Ok(n) => match counter.feed(&buf[..n]) {
                        Ok(()) => match &counter.error {
                            Some(e) => format!("server said {e}"),
                            None => {
                                for _ in pings..counter.pings {
                                    let _ = tx.send(Event::Ping);
                                }
                                for _ in pongs..counter.pongs {
                                    let _ = tx.send(Event::Pong);
                                }
                                continue;
                            }
                        },
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                let _ = tx.send(Event::Closed(why));
                return;
            }
        });
        Ok(RawPublisher { writer, events })
    }

    /// Answer pending PINGs; fail if the server closed the connection.
    async fn service(&mut self) -> Result<()> {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::Ping => self.writer.write_all(b"PONG\r\n").await?,
                Event::Pong => {}
                Event::Closed(why) => bail!("publisher: {why}"),
            }
        }
        Ok(())
    }

    /// Publish `count` messages of `payload` to `subject`, then PING/PONG so the server
    /// has read them all. Returns the timing from the first write to the PONG.
    pub async fn run(mut self, subject: &str, payload: &[u8], count: u64) -> Result<ClientRun> {
        let mut one = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        one.extend_from_slice(payload);
        one.extend_from_slice(b"\r\n");
        let per_batch = (BATCH_BYTES / one.len()).max(1);
        let batch: Vec<u8> = one.repeat(per_batch);
        let start = Instant::now();
        let mut left = count;
        while left > 0 {
            let n = left.min(per_batch as u64) as usize;
            self.writer
                .write_all(&batch[..n * one.len()])
                .await
                .context("publisher write")?;
            left -= n as u64;
            self.service().await?;
        }
        self.writer.write_all(b"PING\r\n").await?;
        loop {
            match self.events.recv().await {
                Some(Event::Pong) => break,
                Some(Event::Ping) => self.writer.write_all(b"PONG\r\n").await?,
                Some(Event::Closed(why)) => bail!("publisher: {why}"),
                None => bail!("publisher: reader task ended"),
            }
        }
        Ok(ClientRun {
            msgs: count,
            bytes: count * payload.len() as u64,
            start,
            end: Instant::now(),
        })
    }
}

/// A raw subscriber with its SUB in place.
pub struct RawSubscriber {
    conn: RawConn,
}

impl RawSubscriber {
    pub async fn connect(
        addr: &str,
        connect_json: &str,
        subject: &str,
        queue: Option<&str>,
    ) -> Result<RawSubscriber> {
        let mut conn = RawConn::connect(addr, connect_json).await?;
        let sub = match queue {
            Some(q) => format!("SUB {subject} {q} 1\r\n"),
            None => format!("SUB {subject} 1\r\n"),
        };
        conn.writer
            .write_all(sub.as_bytes())
            .await
            .context("sending SUB")?;
        conn.sync().await.context("SUB not acknowledged")?;
        Ok(RawSubscriber { conn })
    }

    /// Count messages until `expected` arrived or nothing arrived for `idle`.
    /// Timing runs from the first message to the last one counted.
    pub async fn run(mut self, expected: u64, idle: Duration) -> Result<ClientRun> {
        let mut buf = vec![0u8; READ_BUF];
        let c = &mut self.conn;
        let base_msgs = c.counter.msgs;
        let base_bytes = c.counter.payload_bytes;
        let mut answered = c.counter.pings;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        while c.counter.msgs - base_msgs < expected {
            let n = match tokio::time::timeout(idle, c.reader.read(&mut buf)).await {
                Err(_) => break, // idle: report what arrived
                Ok(r) => r.context("subscriber read")?,
            };
            if n == 0 {
                bail!(
                    "subscriber: connection closed by server{}",
                    err_suffix(&c.counter)
                );
            }
            let before = c.counter.msgs;
            c.counter.feed(&buf[..n])?;
            if let Some(e) = &c.counter.error {
                bail!("subscriber: server said {e}");
            }
            if c.counter.msgs > before {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
            }
            while answered < c.counter.pings {
                c.writer.write_all(b"PONG\r\n").await?;
                answered += 1;
            }
        }
        let start = first.unwrap_or(last);
        Ok(ClientRun {
            msgs: c.counter.msgs - base_msgs,
            bytes: c.counter.payload_bytes - base_bytes,
            start,
            end: last,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\n\
        MSG a.b 1 _INBOX.x 0\r\n\r\nHMSG a.b 1 12 15\r\nNATS/1.0\r\n\r\nabc\r\n+OK\r\nPONG\r\n";

    #[test]
    fn counts_whole_stream() {
        let mut c = MsgCounter::default();
        c.feed(STREAM).unwrap();
        assert_eq!(
            (c.msgs, c.payload_bytes, c.pings, c.pongs, c.infos),
            (3, 8, 1, 1, 1)
        );
    }

    #[test]
    fn counts_any_split() {
        // Every split point, and byte-at-a-time, must give the same answer.
        for cut in 0..STREAM.len() {
            let mut c = MsgCounter::default();
            c.feed(&STREAM[..cut]).unwrap();
            c.feed(&STREAM[cut..]).unwrap();
            assert_eq!(
                (c.msgs, c.payload_bytes, c.pongs),
                (3, 8, 1),
                "cut at {cut}"
            );
        }
        let mut c = MsgCounter::default();
        for b in STREAM {
            c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!((c.msgs, c.payload_bytes), (3, 8));
    }

    #[test]
    fn payload_that_looks_like_ops_is_skipped() {
        let mut c = MsgCounter::default();
        c.feed(b"MSG s 1 11\r\nMSG s 1 1\r\n\r\nPING\r\n").unwrap();
        assert_eq!((c.msgs, c.pings), (1, 1));
    }

    #[test]
    fn errors_and_garbage() {
        let mut c = MsgCounter::default();
        c.feed(b"-ERR 'Authorization Violation'\r\n").unwrap();
        assert_eq!(c.error.as_deref(), Some("-ERR 'Authorization Violation'"));
        assert!(MsgCounter::default().feed(b"WHAT\r\n").is_err());
        assert!(MsgCounter::default().feed(b"MSG a 1 x\r\n").is_err());
        assert!(MsgCounter::default().feed(b"HMSG a 1 9 3\r\n").is_err());
        assert!(MsgCounter::default()
            .feed(&vec![b'I'; MAX_LINE + 1])
            .is_err());
    }
}
