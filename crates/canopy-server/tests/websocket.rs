//! WebSocket clients, black box: the HTTP upgrade, the client protocol in binary frames,
//! messages between WebSocket and TCP clients, TLS (wss), origin checks, `/varz` and
//! `/connz`, the log line, and what is refused at start (compression, leaf remotes over
//! websocket). The same client script runs against Debian's nats-server 2.9.10.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use canopy_testkit::{canopy_bin, nats_server_bin, Impl, ServerProcess};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("ws://127.0.0.1:{port}/")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

const WS_CONF: &str =
    "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {\n  listen: 127.0.0.1:-1\n  no_tls: true\n}\n";

#[tokio::test]
async fn websocket_clients_talk_to_tcp_clients() {
    let mut kinds = vec![Impl::Canopy];
    if nats_server_bin().is_some() {
        kinds.push(Impl::NatsServer);
    }
    for kind in kinds {
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

#[tokio::test]
async fn wss_uses_the_websocket_tls_block() {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let s = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nwebsocket {{\n  listen: 127.0.0.1:-1\n  tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n}}\n",
        cert_path.display(),
        key_path.display()
    ))
    .unwrap();
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

fn refused_at_start(conf: &str, what: &str, line: usize) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ws.conf");
    std::fs::write(&p, conf).unwrap();
    let out = std::process::Command::new(canopy_bin())
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("ws.conf:{line}:")), "{err}");
    assert!(err.contains(what), "{err}");
    // `-t` names it too (and still accepts the file, as nats-server would).
    let out = std::process::Command::new(canopy_bin())
        .arg("-t")
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(what), "{text}");
}

/// permessage-deflate is not available (tungstenite has none): `compression: true` is
/// refused, never accepted and ignored; so are leaf remotes over websocket.
#[test]
fn unsupported_websocket_options_are_refused_at_start() {
    refused_at_start(
        "listen: 127.0.0.1:-1\nwebsocket {\n  port: -1\n  no_tls: true\n  compression: true\n}\n",
        "websocket compression",
        5,
    );
    refused_at_start(
        "listen: 127.0.0.1:-1\nleafnodes {\n  remotes: [\n    { url: \"ws://127.0.0.1:8080\" }\n  ]\n}\n",
        "over websocket",
        4,
    );
}
