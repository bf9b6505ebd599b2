//! Test harness: start real `canopy-server` (and Debian's `nats-server`) processes on
//! loopback with random ports, learn their ports from the ports file, read their logs,
//! and talk raw protocol to them. Processes and temp dirs are cleaned up on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Retries `$cond` (an expression yielding bool) until it holds or `$timeout` passes,
/// then panics with the message. Use instead of fixed sleeps.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }};
}

/// Which server implementation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Canopy,
    NatsServer,
}

/// The `canopy-server` binary of this build (next to the test executable's target dir),
/// or `$CANOPY_SERVER_BIN`.
pub fn canopy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CANOPY_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/test-xxxx → target/<profile>/canopy-server
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("canopy-server")
}

/// Debian's nats-server, when installed.
pub fn nats_server_bin() -> Option<PathBuf> {
    let p = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
    let p = PathBuf::from(p);
    p.exists().then_some(p)
}

/// A free loopback TCP port (bound and released; a tiny race, acceptable in tests that
/// must write a port into a config before start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// What [`ServerProcess::start_with`] prepares besides the config: environment variables
/// for the process, and files (path relative to the config's directory → contents).
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub env: Vec<(String, String)>,
    pub files: Vec<(String, String)>,
}

/// A running server process.
pub struct ServerProcess {
    child: Option<Child>,
    pub kind: Impl,
    pub port: u16,
    pub http_port: Option<u16>,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
}

impl ServerProcess {
    /// Starts canopy-server with this config text (ports may be -1; the real ones are
    /// read from the ports file).
    pub fn canopy(config: &str) -> Result<Self> {
        Self::start(Impl::Canopy, config, &[])
    }

    /// Starts Debian's nats-server with this config text.
    pub fn nats_server(config: &str) -> Result<Self> {
        Self::start(Impl::NatsServer, config, &[])
    }

    /// Starts a server; `extra` flags come after `-c`.
    pub fn start(kind: Impl, config: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with(kind, config, extra, &Setup::default())
    }

    /// Starts a server as [`ServerProcess::start`] does, with extra environment variables
    /// and extra files written next to the config first (for `include`s and `$VAR`s).
    pub fn start_with(kind: Impl, config: &str, extra: &[&str], setup: &Setup) -> Result<Self> {
        let bin = match kind {
            Impl::Canopy => canopy_bin(),
            Impl::NatsServer => {
                nats_server_bin().ok_or_else(|| anyhow!("nats-server not installed"))?
            }
        };
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("server.conf");
        std::fs::write(&config_path, config)?;
        for (name, text) in &setup.files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
        }
        let log_path = dir.path().join("server.log");
        let ports_dir = dir.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log_path)
            .args(extra)
            .envs(setup.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports = loop {
            if let Some(p) = read_ports(&ports_dir) {
                break p;
            }
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("server exited with {status} before ready:\n{err}\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("server did not become ready in 10s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(ServerProcess {
            child: Some(child),
            kind,
            port: ports.0,
            http_port: ports.1,
            dir,
            log_path,
            config_path,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// GETs a monitoring endpoint and parses the JSON.
    pub fn monitor(&self, path: &str) -> Result<serde_json::Value> {
        let port = self
            .http_port
            .ok_or_else(|| anyhow!("no monitoring port"))?;
        let (status, body) = http_get(port, path)?;
        if status != 200 {
            bail!("GET {path}: status {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (e.g. "HUP", "USR2", "TERM") with kill(1).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit (after a signal), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().ok_or_else(|| anyhow!("not running"))?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("process did not exit in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child process, e.g. to wait for its exit on another thread and time it.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The ports file's JSON (`nats`, `monitoring`, `leafnode`, `cluster` URL lists).
    pub fn ports_file(&self) -> Result<serde_json::Value> {
        let ent = std::fs::read_dir(self.dir.path().join("ports"))?
            .flatten()
            .next()
            .ok_or_else(|| anyhow!("no ports file"))?;
        Ok(serde_json::from_str(&std::fs::read_to_string(ent.path())?)?)
    }

    /// Kills the process now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_ports(dir: &Path) -> Option<(u16, Option<u16>)> {
    let ent = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let text = std::fs::read_to_string(ent.path()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port_of = |url: &str| url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let nats = v.get("nats")?.as_array()?.first()?.as_str()?;
    let http = v
        .get("monitoring")
        .and_then(|m| m.as_array())
        .and_then(|a| a.first())
        .and_then(|u| u.as_str())
        .and_then(|u| port_of(u.trim_end_matches('/')));
    Some((port_of(nats)?, http))
}

/// A minimal blocking HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line"))?;
    Ok((status, body.to_string()))
}

/// A raw protocol client for edge cases: write bytes, read lines and payloads.
pub struct RawClient {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawClient {
    /// Connects and consumes the INFO line, which is returned as JSON.
    pub fn connect(addr: &str) -> Result<(Self, serde_json::Value)> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = RawClient { stream, reader };
        let line = c.read_line()?;
        let json = line
            .strip_prefix("INFO ")
            .ok_or_else(|| anyhow!("expected INFO, got {line:?}"))?;
        Ok((c, serde_json::from_str(json)?))
    }

    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.stream.write_all(data)?;
        Ok(())
    }

    pub fn send_str(&mut self, data: &str) -> Result<()> {
        self.send(data.as_bytes())
    }

    /// Reads one line without its CRLF.
    pub fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Reads exactly n bytes plus the CRLF that follows a payload.
    pub fn read_payload(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n + 2];
        self.reader.read_exact(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads lines until one is not PING (answering PINGs), and returns it.
    pub fn read_op(&mut self) -> Result<String> {
        loop {
            let l = self.read_line()?;
            if l == "PING" {
                self.send_str("PONG\r\n")?;
                continue;
            }
            return Ok(l);
        }
    }

    /// Sets the read timeout (short ones check that nothing arrives).
    pub fn set_timeout(&mut self, d: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(d))?;
        Ok(())
    }

    /// True if the server closed the connection (reads EOF within the timeout).
    pub fn is_closed_by_server(&mut self, within: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(within));
        let mut sink = Vec::new();
        self.reader.read_to_end(&mut sink).is_ok()
    }
}

/// A free loopback port for a listener that a test must write into a config (leafnode or
/// cluster ports, or a client port that has to survive a restart). Unlike [`free_port`] it
/// lies below Linux's ephemeral range (32768+), so outgoing connections of other servers
/// cannot take it before the server binds it; successive calls in one process never
/// repeat a port, and different processes start at different offsets.
pub fn free_fixed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (offset.wrapping_add(n) % 12000);
        if let Ok(port) = u16::try_from(port) {
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    free_port()
}

/// One side of [`hub_and_leaf`]: the implementation, text for the top level of its config,
/// and text inside its `leafnodes {}` (the hub) or inside its one remote (the leaf).
pub type LeafSide<'a> = (Impl, &'a str, &'a str);

/// Starts a hub that accepts leaves on a fixed loopback port and a leaf with one remote to
/// it (both with a client port and monitoring on `-1`). The link may still be forming.
pub fn hub_and_leaf(
    hub: LeafSide<'_>,
    leaf: LeafSide<'_>,
) -> Result<(ServerProcess, ServerProcess)> {
    let lp = free_fixed_port();
    let hub = ServerProcess::start(
        hub.0,
        &format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n{}\nleafnodes {{\n listen: \"127.0.0.1:{lp}\"\n {}\n}}\n",
            hub.1, hub.2
        ),
        &[],
    )?;
    let leaf = ServerProcess::start(
        leaf.0,
        &format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n{}\nleafnodes {{\n reconnect_interval: 1\n remotes: [ {{\n  urls: [\"nats-leaf://127.0.0.1:{lp}\"]\n  {}\n }} ]\n}}\n",
            leaf.1, leaf.2
        ),
        &[],
    )?;
    Ok((hub, leaf))
}

/// A TCP proxy on a fixed loopback port that forwards every connection to `target` and
/// counts the bytes it forwards each way: `up` from the dialling side to `target`, `down`
/// back. Compression tests compare these with the payload bytes. Plain threads; it lives
/// until the test process ends.
pub struct CountingProxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    down: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingProxy {
    pub fn start(target: u16) -> Result<CountingProxy> {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        let port = free_fixed_port();
        let l = TcpListener::bind(("127.0.0.1", port))?;
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let (u, d) = (u.clone(), d.clone());
                std::thread::spawn(move || pipe(client, server, &u));
                std::thread::spawn(move || pipe(s2, c2, &d));
            }
        });
        Ok(CountingProxy { port, up, down })
    }

    /// Bytes forwarded so far: (up, down).
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, n: &std::sync::atomic::AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
                if to.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
