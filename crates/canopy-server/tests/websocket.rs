//! WebSocket clients, black box: the HTTP upgrade, the client protocol in binary frames,
//! messages between WebSocket and TCP clients, TLS (wss), origin checks, `/varz` and
//! `/connz`, the log line, the websocket auth override (cookies, headers),
//! permessage-deflate (a raw-frame client) and leaf nodes over websocket (Canopy and
//! Debian's nats-server on either side). The same client scripts run against Debian's
//! nats-server 2.9.10.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use canopy_testkit::{canopy_bin, free_fixed_port, nats_server_bin, Impl, ServerProcess};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Canopy, and Debian's nats-server where installed.
fn both_kinds() -> Vec<Impl> {
    let mut kinds = vec![Impl::Canopy];
    if nats_server_bin().is_some() {
        kinds.push(Impl::NatsServer);
    }
    kinds
}

fn ws_port(s: &ServerProcess) -> u16 {
    s.monitor("/varz").unwrap()["websocket"]["port"]
        .as_u64()
        .unwrap() as u16
}

/// Reads protocol lines from binary (or text) frames until one satisfies `want`.
struct Lines<S> {
    ws: WebSocketStream<S>,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return l;
            }
            let m = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("no frame in 5s")
                .expect("websocket ended")
                .unwrap();
            match m {
                Message::Binary(b) => self.buf.extend_from_slice(&b),
                Message::Text(t) => self.buf.extend_from_slice(t.as_bytes()),
                _ => {}
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Binary(text.as_bytes().to_vec().into()))
            .await
            .unwrap();
    }

    /// The next line that is not PING (PINGs are answered).
    async fn op(&mut self) -> String {
        loop {
            let l = self.line().await;
            if l == "PING" {
                self.send("PONG\r\n").await;
                continue;
            }
            return l;
        }
    }
}

/// A WebSocket client exchanging messages with a TCP client through `s`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &ServerProcess, ws: WebSocketStream<S>) {
    let mut c = Lines {
        ws,
        buf: Vec::new(),
    };
    let info = c.line().await;
    assert!(info.starts_with("INFO {"), "{info}");
    let info: serde_json::Value = serde_json::from_str(&info[5..]).unwrap();
    assert!(!info["tls_required"].as_bool().unwrap_or(false), "{info}");
    c.send("CONNECT {\"verbose\":false,\"protocol\":1,\"name\":\"wsclient\"}\r\nSUB ws.in 1\r\nPING\r\n")
        .await;
    assert_eq!(c.op().await, "PONG");
    let nc = async_nats::connect(s.url()).await.unwrap();
    let mut sub = nc.subscribe("ws.out").await.unwrap();
    nc.flush().await.unwrap();
    nc.publish("ws.in", "from tcp".into()).await.unwrap();
    nc.flush().await.unwrap();
    assert_eq!(c.op().await, "MSG ws.in 1 8");
    assert_eq!(c.op().await, "from tcp");
    // A PUB split over two frames.
    c.send("PUB ws.out 7\r\nfrom").await;
    c.send(" ws\r\n").await;
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"from ws");
    // /connz lists the websocket client like any client.
    let connz = s.monitor("/connz").unwrap();
    let names: Vec<&str> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"wsclient"), "{connz}");
}

async fn ws_connect(
    port: u16,
    origin: Option<&str>,
) -> Result<WebSocketStream<tokio::net::TcpStream>, String> {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    ws_upgrade(port, &headers).await.map(|(ws, _)| ws)
}

/// An upgrade with extra request headers; the response comes back for its headers.
async fn ws_upgrade(
    port: u16,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<tokio::net::TcpStream>, Response), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("ws://127.0.0.1:{port}/")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().append(name, v.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// Upgrades with `headers`, sends `connect` (a CONNECT JSON) and PING; returns the INFO
/// and the answer (`PONG` or the `-ERR` line).
async fn ws_login(
    port: u16,
    headers: &[(&str, &str)],
    connect: &str,
) -> (serde_json::Value, String) {
    let (ws, _) = ws_upgrade(port, headers).await.unwrap();
    let mut c = Lines {
        ws,
        buf: Vec::new(),
    };
    let info = c.line().await;
    let info: serde_json::Value = serde_json::from_str(&info[5..]).unwrap();
    c.send(&format!("CONNECT {connect}\r\nPING\r\n")).await;
    loop {
        let op = c.op().await;
        if op != "+OK" {
            return (info, op);
        }
    }
}

const WS_CONF: &str =
    "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n}\n";

#[tokio::test]
async fn websocket_clients_talk_to_tcp_clients() {
    for kind in both_kinds() {
        let s = ServerProcess::start(kind, WS_CONF, &[]).unwrap();
        let port = ws_port(&s);
        let ws = ws_connect(port, None).await.unwrap();
        exchange(&s, ws).await;
        let log = s.log();
        assert!(
            log.contains(&format!(
                "Listening for websocket clients on ws://127.0.0.1:{port}"
            )),
            "{kind:?}: {log}"
        );
        let varz = s.monitor("/varz").unwrap();
        assert_eq!(varz["websocket"]["no_tls"], true, "{kind:?}: {varz}");
        assert_eq!(varz["websocket"]["host"], "127.0.0.1", "{kind:?}: {varz}");
    }
}

#[tokio::test]
async fn origin_checks_refuse_foreign_pages() {
    let s = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  same_origin: true\n}\n",
    )
    .unwrap();
    let port = ws_port(&s);
    let refused = ws_connect(port, Some("http://evil.example"))
        .await
        .err()
        .unwrap();
    assert!(refused.contains("403"), "{refused}");
    // The page served from the same host and port, and non-browser clients (no Origin).
    assert!(ws_connect(port, Some(&format!("http://127.0.0.1:{port}")))
        .await
        .is_ok());
    assert!(ws_connect(port, None).await.is_ok());
    let s = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  allowed_origins: [\"https://app.example\"]\n}\n",
    )
    .unwrap();
    let port = ws_port(&s);
    assert!(ws_connect(port, Some("https://app.example")).await.is_ok());
    assert!(ws_connect(port, Some("https://app.example:8443"))
        .await
        .is_err());
}

/// A server whose websocket listener is `wss://` (a self-signed certificate for
/// `localhost`, its PEM at `cert.pem` in the returned directory), plus `extra` config.
fn wss_server(kind: Impl, extra: &str) -> (ServerProcess, rcgen::Certificate, tempfile::TempDir) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {{\n  listen: 127.0.0.1:-1\n  tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n}}\n{extra}",
        cert_path.display(),
        key_path.display()
    );
    let s = ServerProcess::start(kind, &conf, &[]).unwrap();
    (s, cert, dir)
}

#[tokio::test]
async fn wss_uses_the_websocket_tls_block() {
    let (s, cert, _dir) = wss_server(Impl::Canopy, "");
    let port = ws_port(&s);
    assert!(s.log().contains(&format!(
        "Listening for websocket clients on wss://127.0.0.1:{port}"
    )));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/"), tls)
        .await
        .unwrap();
    exchange(&s, ws).await;
    // A plain ws:// upgrade on the TLS port fails.
    assert!(ws_connect(port, None).await.is_err());
}

/// Runs canopy-server with `args` and `-c` on `conf` written to `ws.conf`.
fn run_with_conf(args: &[&str], conf: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ws.conf");
    std::fs::write(&p, conf).unwrap();
    std::process::Command::new(canopy_bin())
        .args(args)
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap()
}

/// `websocket { authorization {} }` overrides the client authorization for websocket
/// clients only: TCP clients still need none, websocket clients need the block's user
/// (INFO says `auth_required`), from CONNECT or, with `user_cookie`/`pass_cookie`, from
/// the upgrade request's cookies; `headers` go out with the upgrade response. The parts
/// nats-server 2.9.10 has (the user, no cookies or headers) run against it too.
#[tokio::test]
async fn websocket_authorization_overrides_the_client_one() {
    let base = "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  authorization { user: wsu, password: wsp, timeout: 2 }\n";
    let mut kinds = vec![(Impl::Canopy, format!("{base}  user_cookie: nu\n  pass_cookie: np\n  headers {{ X-Canopy-Test: \"yes\", Cache-Control: no-store }}\n}}\n"))];
    if nats_server_bin().is_some() {
        kinds.push((Impl::NatsServer, format!("{base}}}\n")));
    }
    for (kind, conf) in kinds {
        let s = ServerProcess::start(kind, &conf, &[]).unwrap();
        let port = ws_port(&s);
        // TCP clients are not affected.
        let nc = async_nats::connect(s.url()).await.unwrap();
        nc.flush().await.unwrap();
        let (info, answer) = ws_login(port, &[], "{\"verbose\":false}").await;
        assert_eq!(info["auth_required"], true, "{kind:?}: {info}");
        assert!(
            answer.starts_with("-ERR 'Authorization Violation'"),
            "{kind:?}: {answer}"
        );
        let (_, answer) = ws_login(port, &[], "{\"user\":\"wsu\",\"pass\":\"bad\"}").await;
        assert!(
            answer.starts_with("-ERR 'Authorization Violation'"),
            "{kind:?}: {answer}"
        );
        let (_, answer) = ws_login(port, &[], "{\"user\":\"wsu\",\"pass\":\"wsp\"}").await;
        assert_eq!(answer, "PONG", "{kind:?}");
        if kind != Impl::Canopy {
            continue;
        }
        // Cookies stand in for what CONNECT lacks; CONNECT's own values win.
        let cookie = [("cookie", "other=1; nu=wsu; np=\"wsp\"")];
        let (_, answer) = ws_login(port, &cookie, "{}").await;
        assert_eq!(answer, "PONG");
        let (_, answer) = ws_login(port, &cookie, "{\"pass\":\"bad\"}").await;
        assert!(
            answer.starts_with("-ERR 'Authorization Violation'"),
            "{answer}"
        );
        let (_, resp) = ws_upgrade(port, &[]).await.unwrap();
        assert_eq!(resp.headers()["x-canopy-test"], "yes");
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
}

/// `websocket { no_auth_user }` picks the user for websocket clients that send no
/// credentials (the top-level `no_auth_user` stays for TCP clients); `token` and
/// `token_cookie` work like the user.
#[tokio::test]
async fn websocket_no_auth_user_and_token() {
    let conf = "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\naccounts {\n  A { users: [{user: a, password: pa}] }\n  B { users: [{user: b, password: pb}] }\n}\nno_auth_user: a\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  no_auth_user: b\n}\n";
    for kind in both_kinds() {
        let s = ServerProcess::start(kind, conf, &[]).unwrap();
        let port = ws_port(&s);
        let (ws, _) = ws_upgrade(port, &[]).await.unwrap();
        let mut c = Lines {
            ws,
            buf: Vec::new(),
        };
        c.line().await;
        c.send("CONNECT {\"verbose\":false}\r\nSUB x 1\r\nPING\r\n")
            .await;
        assert_eq!(c.op().await, "PONG", "{kind:?}");
        // A TCP client without credentials is `a` (account A): it does not reach the
        // websocket client; `b` over TCP does.
        let na = async_nats::connect(s.url()).await.unwrap();
        na.publish("x", "from-a".into()).await.unwrap();
        na.flush().await.unwrap();
        let nb = async_nats::ConnectOptions::with_user_and_password("b".into(), "pb".into())
            .connect(s.url())
            .await
            .unwrap();
        nb.publish("x", "from-b".into()).await.unwrap();
        nb.flush().await.unwrap();
        assert_eq!(c.op().await, "MSG x 1 6", "{kind:?}");
        assert_eq!(c.op().await, "from-b", "{kind:?}");
        // Explicit credentials still work over websocket.
        let (_, answer) = ws_login(port, &[], "{\"user\":\"a\",\"pass\":\"pa\"}").await;
        assert_eq!(answer, "PONG", "{kind:?}");
    }
    let s = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  authorization { token: s3cret }\n  token_cookie: tok\n}\n",
    )
    .unwrap();
    let port = ws_port(&s);
    let (_, answer) = ws_login(port, &[], "{\"auth_token\":\"s3cret\"}").await;
    assert_eq!(answer, "PONG");
    let (_, answer) = ws_login(port, &[("cookie", "tok=s3cret")], "{}").await;
    assert_eq!(answer, "PONG");
    let (_, answer) = ws_login(port, &[("cookie", "tok=nope")], "{}").await;
    assert!(
        answer.starts_with("-ERR 'Authorization Violation'"),
        "{answer}"
    );
}

/// nats-server's checks of the websocket auth keys, with file:line.
#[test]
fn websocket_auth_options_are_validated() {
    let ws = "websocket {\n  port: -1\n  no_tls: true\n";
    for (conf, line, what) in [
        (
            format!("{ws}  authorization {{\n    users: [{{user: a}}]\n  }}\n}}\n"),
            5,
            "unknown field \"users\"",
        ),
        (
            format!("{ws}  no_auth_user: ghost\n}}\n"),
            4,
            "no_auth_user: \"ghost\"",
        ),
        (
            format!("authorization {{ users: [{{user: a}}] }}\n{ws}  authorization {{ user: w, password: p }}\n}}\n"),
            5,
            "username not compatible",
        ),
        (
            format!("{ws}  jwt_cookie: jwt\n}}\n"),
            4,
            "trusted operators",
        ),
        (
            format!("{ws}  headers {{ Sec-WebSocket-Protocol: x }}\n}}\n"),
            4,
            "prefix not allowed",
        ),
    ] {
        let out = run_with_conf(&["-t"], &conf);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{conf}");
        assert!(
            e.contains(&format!("ws.conf:{line}:")) && e.contains(what),
            "{e}"
        );
    }
}

/// A raw-frame WebSocket client that can negotiate permessage-deflate (tungstenite
/// cannot): masked frames out, compressed when asked; frames in, inflated when RSV1.
struct RawWs {
    tcp: tokio::net::TcpStream,
    rbuf: Vec<u8>,
    data: Vec<u8>,
    /// RSV1 was set on some data frame received.
    saw_compressed: bool,
}

const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert_eq!(c.total_in() as usize, data.len());
    assert!(out.ends_with(&SYNC_TAIL));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&SYNC_TAIL);
    let mut out = Vec::with_capacity(input.len() * 8 + 1024);
    loop {
        let at = d.total_in() as usize;
        d.decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

impl RawWs {
    /// Upgrades, offering permessage-deflate when `deflate`; returns the response head.
    async fn open(port: u16, deflate: bool) -> (RawWs, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let ext = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let req = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut rbuf = Vec::new();
        let head = loop {
            if let Some(i) = rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&rbuf[..i]).into_owned();
                rbuf.drain(..i + 4);
                break head;
            }
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during upgrade");
            rbuf.extend_from_slice(&b[..n]);
        };
        let ws = RawWs {
            tcp,
            rbuf,
            data: Vec::new(),
            saw_compressed: false,
        };
        (ws, head)
    }

    async fn send(&mut self, data: &[u8], compress: bool) {
        use tokio::io::AsyncWriteExt;
        let (payload, b0) = if compress {
            (deflate(data), 0xc2)
        } else {
            (data.to_vec(), 0x82)
        };
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.tcp.write_all(&f).await.unwrap();
    }

    /// The next frame: (first header byte, payload); `None` when the socket ended.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.rbuf.len() >= 2 {
                let len7 = (self.rbuf[1] & 0x7f) as usize;
                let (ext, len) = match len7 {
                    126 if self.rbuf.len() >= 4 => {
                        (2, u16::from_be_bytes([self.rbuf[2], self.rbuf[3]]) as usize)
                    }
                    127 if self.rbuf.len() >= 10 => (
                        8,
                        u64::from_be_bytes(self.rbuf[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX / 2, 0),
                    n => (0, n),
                };
                assert_eq!(self.rbuf[1] & 0x80, 0, "server frames are not masked");
                if self.rbuf.len() >= 2 + ext + len {
                    let b0 = self.rbuf[0];
                    let payload = self.rbuf[2 + ext..2 + ext + len].to_vec();
                    self.rbuf.drain(..2 + ext + len);
                    return Some((b0, payload));
                }
            }
            let mut b = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut b))
                .await
                .expect("no frame in 5s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.rbuf.extend_from_slice(&b[..n]);
        }
    }

    /// The next protocol line from data frames (PINGs answered).
    async fn op(&mut self) -> String {
        loop {
            if let Some(i) = self.data.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.data[..i]).into_owned();
                self.data.drain(..i + 2);
                if l == "PING" {
                    self.send(b"PONG\r\n", false).await;
                    continue;
                }
                return l;
            }
            let (b0, payload) = self.frame().await.expect("websocket ended");
            match b0 & 0x0f {
                0..=2 if b0 & 0x40 != 0 => {
                    self.saw_compressed = true;
                    self.data.extend(inflate(&payload));
                }
                0..=2 => self.data.extend(payload),
                op => panic!("unexpected frame opcode {op}"),
            }
        }
    }
}

/// permessage-deflate: negotiated in the upgrade response exactly as nats-server words
/// it when the client offers it and `compression: true`; compressed frames in and out
/// carry messages both ways (large ones compressed, PING/PONG-sized ones not); a client
/// that does not offer it gets plain frames. The same client runs against nats-server.
#[tokio::test]
async fn permessage_deflate_both_ways() {
    let conf = "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  compression: true\n}\n";
    for kind in both_kinds() {
        let s = ServerProcess::start(kind, conf, &[]).unwrap();
        let port = ws_port(&s);
        let (mut ws, head) = RawWs::open(port, true).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{kind:?}: {head}");
        assert!(
            head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            "{kind:?}: {head}"
        );
        let info = ws.op().await;
        assert!(info.starts_with("INFO {"), "{kind:?}: {info}");
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"protocol\":1,\"name\":\"{}\"}}\r\nSUB big 1\r\nPING\r\n",
            "z".repeat(80)
        );
        ws.send(connect.as_bytes(), true).await;
        assert_eq!(ws.op().await, "PONG", "{kind:?}");
        let nc = async_nats::connect(s.url()).await.unwrap();
        let mut sub = nc.subscribe("from.ws").await.unwrap();
        nc.flush().await.unwrap();
        let payload = "canopy ".repeat(300);
        nc.publish("big", payload.clone().into()).await.unwrap();
        nc.flush().await.unwrap();
        assert_eq!(
            ws.op().await,
            format!("MSG big 1 {}", payload.len()),
            "{kind:?}"
        );
        assert_eq!(ws.op().await, payload, "{kind:?}");
        assert!(ws.saw_compressed, "{kind:?}: nothing came compressed");
        // A PUB split over a compressed and a plain message.
        let body = "websocket ".repeat(500);
        let pubop = format!("PUB from.ws {}\r\n{body}", body.len());
        ws.send(pubop.as_bytes(), true).await;
        ws.send(b"\r\n", false).await;
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], body.as_bytes(), "{kind:?}");
        // Without the offer, nothing is negotiated and frames are plain.
        let (mut plain, head) = RawWs::open(port, false).await;
        assert!(!head.contains("permessage-deflate"), "{kind:?}: {head}");
        assert!(plain.op().await.starts_with("INFO {"));
        assert!(!plain.saw_compressed, "{kind:?}");
    }
}

/// A compressed message that inflates past max_payload (a decompression bomb: 8 MB of
/// zeros in a few KB) is refused with close status 1009 and counted; the server goes on.
#[tokio::test]
async fn a_decompression_bomb_is_refused_with_a_close() {
    let s = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nmax_payload: 64KB\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  compression: true\n}\n",
    )
    .unwrap();
    let port = ws_port(&s);
    let (mut ws, _) = RawWs::open(port, true).await;
    assert!(ws.op().await.starts_with("INFO"));
    ws.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n", false)
        .await;
    assert_eq!(ws.op().await, "PONG");
    let bomb = vec![0u8; 8 << 20];
    let z = deflate(&bomb);
    assert!(z.len() < 16 * 1024, "{}", z.len());
    ws.send(&bomb[..0], false).await; // an empty frame is fine
    let mut f = vec![0xc2u8];
    f.push(0x80 | 126);
    f.extend_from_slice(&(z.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&z);
    {
        use tokio::io::AsyncWriteExt;
        ws.tcp.write_all(&f).await.unwrap();
    }
    let mut close = None;
    while let Some((b0, payload)) = ws.frame().await {
        if b0 & 0x0f == 8 {
            close = Some(payload);
            break;
        }
    }
    let close = close.expect("no close frame");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009, "{close:?}");
    // The connection ends; others are served.
    assert!(ws.frame().await.is_none());
    let (mut again, _) = RawWs::open(port, true).await;
    assert!(again.op().await.starts_with("INFO"));
}

/// Waits (10 s at most) until `s` lists `n` leaf connections in `/leafz`.
fn wait_leafs(s: &ServerProcess, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count = s
            .monitor("/leafz")
            .map(|v| v["leafnodes"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        if count == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} leaf connection(s) expected, {count} listed\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (10 s at most) until `s`'s log contains `text`.
fn wait_log(s: &ServerProcess, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.log().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?} not logged\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes `payload` on `subject` from `from` until `sub` (on the other side of a leaf
/// link) receives it: interest crosses the link asynchronously. 10 s at most.
async fn cross(
    from: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    subject: &str,
    payload: &[u8],
) {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            from.publish(subject.to_string(), payload.to_vec().into())
                .await
                .unwrap();
            from.flush().await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing crossed the leaf link on {subject}"));
    assert_eq!(&got.payload[..], payload, "{subject}");
}

/// Messages both ways across a leaf link (a small one and a compressible 20 KB one), and
/// a request from the leaf side answered on the hub side.
async fn leaf_traffic(hub: &ServerProcess, leaf: &ServerProcess) {
    let hc = async_nats::connect(hub.url()).await.unwrap();
    let lc = async_nats::connect(leaf.url()).await.unwrap();
    let big = b"leaf over websocket ".repeat(1000);
    for (from, to, subject) in [(&hc, &lc, "to.leaf"), (&lc, &hc, "to.hub")] {
        let mut sub = to.subscribe(subject.to_string()).await.unwrap();
        to.flush().await.unwrap();
        cross(from, &mut sub, subject, b"hello").await;
        cross(from, &mut sub, subject, &big).await;
    }
    let mut svc = hc.subscribe("svc.echo").await.unwrap();
    hc.flush().await.unwrap();
    let responder = hc.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let mut answer = b"echo: ".to_vec();
                answer.extend_from_slice(&m.payload);
                let _ = responder.publish(reply, answer.into()).await;
            }
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let req = lc.request("svc.echo", "ping".into());
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), req).await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no answer across the leaf link");
    assert_eq!(&answer.payload[..], b"echo: ping");
}

/// A hub whose websocket port takes leaf nodes (it has a leafnode listener); `-D`: the
/// debug lines of both implementations say whether deflate was agreed
/// (`Leafnode compression=`).
fn ws_hub(kind: Impl, compression: bool) -> ServerProcess {
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {{\n  host: 127.0.0.1\n  port: {}\n  no_tls: true\n  compression: {compression}\n}}\nleafnodes {{\n  host: 127.0.0.1\n  port: -1\n}}\n",
        free_fixed_port()
    );
    ServerProcess::start(kind, &conf, &["-D"]).unwrap()
}

/// A leaf whose one remote dials `url` with the given websocket options.
fn ws_leaf(kind: Impl, url: &str, remote_opts: &str) -> ServerProcess {
    let conf = format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nleafnodes {{\n  remotes: [\n    {{ url: \"{url}\"{remote_opts} }}\n  ]\n}}\n"
    );
    ServerProcess::start(kind, &conf, &["-D"]).unwrap()
}

/// A `leaf_kind` leaf dials a `hub_kind` hub's websocket port (`ws://`): the link comes up
/// on the hub's `/leafnode` path and carries messages both ways and request/reply; once
/// plain, once with `ws_compression` (the hub allows it) and `ws_no_masking`. The hub's
/// debug line says whether deflate was agreed (`compression=`, both implementations);
/// the hub lists the leaf in `/leafz`, and its `/connz` only the test's own client.
async fn leaf_over_websocket(hub_kind: Impl, leaf_kind: Impl) {
    for remote_opts in ["", ", ws_compression: true, ws_no_masking: true"] {
        let hub = ws_hub(hub_kind, true);
        let url = format!("ws://127.0.0.1:{}", ws_port(&hub));
        let leaf = ws_leaf(leaf_kind, &url, remote_opts);
        wait_leafs(&hub, 1);
        wait_leafs(&leaf, 1);
        leaf_traffic(&hub, &leaf).await;
        let agreed = format!("compression={}", !remote_opts.is_empty());
        assert!(hub.log().contains(&agreed), "{agreed}: {}", hub.log());
        let connz = hub.monitor("/connz").unwrap();
        assert_eq!(connz["num_connections"], 1, "{remote_opts}: {connz}");
    }
}

#[tokio::test]
async fn canopy_leaf_to_canopy_hub_over_websocket() {
    leaf_over_websocket(Impl::Canopy, Impl::Canopy).await;
}

/// Against Debian's nats-server (2.9.10) on either side, where installed.
#[tokio::test]
async fn canopy_leaf_and_nats_server_hub_over_websocket() {
    if nats_server_bin().is_none() {
        eprintln!("nats-server not installed; skipped");
        return;
    }
    leaf_over_websocket(Impl::NatsServer, Impl::Canopy).await;
    leaf_over_websocket(Impl::Canopy, Impl::NatsServer).await;
}

/// `wss://`: the leaf does TLS with its remote's tls block (CA, SNI `localhost`) before
/// the upgrade, on a hub whose websocket block has TLS; Canopy on both sides, and with
/// Debian's nats-server as either side where installed.
#[tokio::test]
async fn leaf_over_wss() {
    let mut pairs = vec![(Impl::Canopy, Impl::Canopy)];
    if nats_server_bin().is_some() {
        pairs.push((Impl::NatsServer, Impl::Canopy));
        pairs.push((Impl::Canopy, Impl::NatsServer));
    }
    for (hub_kind, leaf_kind) in pairs {
        let (hub, _cert, dir) = wss_server(hub_kind, "leafnodes { listen: 127.0.0.1:-1 }\n");
        let url = format!("wss://localhost:{}", ws_port(&hub));
        let tls = format!(
            ", tls {{ ca_file: \"{}\" }}",
            dir.path().join("cert.pem").display()
        );
        let leaf = ws_leaf(leaf_kind, &url, &tls);
        wait_leafs(&hub, 1);
        wait_leafs(&leaf, 1);
        leaf_traffic(&hub, &leaf).await;
    }
}

/// A leaf arriving on the websocket port is authorized by `leafnodes { authorization }`
/// (user and password from the `ws://` URL), not by the websocket block's: the websocket
/// user is refused as a leaf, the leafnode user gets the link.
#[tokio::test]
async fn websocket_leafs_use_the_leafnodes_authorization() {
    let hub = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n  authorization { user: wsu, password: wsp }\n}\nleafnodes {\n  listen: 127.0.0.1:-1\n  authorization { user: lu, password: lp }\n}\n",
    )
    .unwrap();
    let port = ws_port(&hub);
    let wrong = ws_leaf(Impl::Canopy, &format!("ws://wsu:wsp@127.0.0.1:{port}"), "");
    wait_log(&hub, "rejected: authorization violation");
    wait_leafs(&hub, 0);
    drop(wrong);
    let leaf = ws_leaf(Impl::Canopy, &format!("ws://lu:lp@127.0.0.1:{port}"), "");
    wait_leafs(&hub, 1);
    leaf_traffic(&hub, &leaf).await;
}

/// Without a leafnode listener the `/leafnode` path is refused (400) and the leaf keeps
/// trying; the hub's log says why.
#[tokio::test]
async fn leafnode_upgrades_need_a_leafnode_listener() {
    let hub = ServerProcess::canopy(WS_CONF).unwrap();
    let port = ws_port(&hub);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let refused = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/leafnode"), tcp)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("400"), "{refused}");
    let leaf = ws_leaf(Impl::Canopy, &format!("ws://127.0.0.1:{port}"), "");
    wait_log(&leaf, "HTTP 400");
    assert!(hub
        .log()
        .contains("not configured to accept leaf node connections"));
}
