//! The WebSocket upgrade (RFC 6455 section 4) on both sides: the server's
//! [`accept`] (origin checks, permessage-deflate negotiation, cookies, extra headers, the
//! `/leafnode` path) and the leaf remote's [`connect`]. The frames after it are
//! [`crate::auth::ws_frame::WsStream`]'s. Like [`crate::auth::tls::MaybeTls`] this is an
//! adapter below the roles: they read and write bytes and never see a frame.
//!
//! The HTTP exchange is ours (httparse for the request line and headers, tungstenite's
//! accept-key helpers) so that the response carries exactly what nats-server's does:
//! `Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;
//! client_no_context_takeover` when the client offered deflate and `compression` is on,
//! `Nats-No-Masking: true` when a leaf asked for it, and the configured `headers`.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub use crate::auth::ws_frame::{FrameRole, WsStream};

/// The largest HTTP head (request or response) read; Go's default is 1 MB, browsers send
/// a few KB (cookies included).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// The request path a leaf node dials (nats-server's `leafNodeWSPath`).
pub const LEAF_PATH: &str = "/leafnode";
const DEFLATE: &str = "permessage-deflate";
const DEFLATE_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const NO_MASKING: &str = "Nats-No-Masking";

/// The upgrade's rules from the `websocket {}` block.
#[derive(Debug, Clone, Default)]
pub struct Upgrade {
    /// `same_origin`: the `Origin` header must name the host (and port) the client
    /// connected to.
    pub same_origin: bool,
    /// `allowed_origins`: if not empty, the `Origin` header must be one of these
    /// (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// The largest message accepted, inflated or not (nats-server bounds it by
    /// `max_payload`; we allow a few control lines more).
    pub max_message: usize,
    /// `compression`: permessage-deflate when the client offers it.
    pub compression: bool,
    /// Cookie names whose values stand in for missing CONNECT credentials.
    pub cookies: CookieNames,
    /// `headers`: extra headers of the upgrade response.
    pub headers: Vec<(String, String)>,
    /// Whether `/leafnode` upgrades are taken (a leafnode listener is configured).
    pub leafnodes: bool,
}

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("websocket handshake timed out")]
    Timeout,
    #[error("websocket handshake error: {0}")]
    Handshake(String),
    #[error("websocket handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Who asked for the upgrade, by request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Client,
    Leaf,
}

/// An accepted upgrade.
pub struct Accepted<S> {
    pub stream: WsStream<S>,
    pub kind: PeerKind,
    pub credentials: WsCredentials,
}

/// `jwt_cookie`, `user_cookie`, `pass_cookie`, `token_cookie`.
#[derive(Debug, Clone, Default)]
pub struct CookieNames {
    pub jwt: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
}

impl CookieNames {
    pub fn from_options(w: &canopy_conf::WebsocketOpts) -> CookieNames {
        CookieNames {
            jwt: w.jwt_cookie.clone(),
            user: w.user_cookie.clone(),
            pass: w.pass_cookie.clone(),
            token: w.token_cookie.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.jwt.is_none() && self.user.is_none() && self.pass.is_none() && self.token.is_none()
    }

    /// The configured cookies' values from the request's `Cookie` headers (the last
    /// occurrence of a name wins; surrounding double quotes are dropped, as Go's
    /// `http.Request.Cookies` does).
    fn extract<'a>(&self, cookie_headers: impl Iterator<Item = &'a str>) -> WsCredentials {
        let mut out = WsCredentials::default();
        if self.is_empty() {
            return out;
        }
        for pair in cookie_headers.flat_map(|h| h.split(';')) {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .to_string();
            let name = Some(name.trim());
            if self.jwt.as_deref() == name {
                out.jwt = value;
            } else if self.user.as_deref() == name {
                out.user = value;
            } else if self.pass.as_deref() == name {
                out.pass = value;
            } else if self.token.as_deref() == name {
                out.token = value;
            }
        }
        out
    }
}

/// Credentials a browser sent as cookies with the upgrade request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsCredentials {
    pub jwt: String,
    pub user: String,
    pub pass: String,
    pub token: String,
}

impl WsCredentials {
    /// Fills the credentials CONNECT left empty (nats-server's `processConnect`).
    pub fn fill(&self, c: &mut canopy_proto::ClientConnect) {
        for (field, cookie) in [
            (&mut c.jwt, &self.jwt),
            (&mut c.user, &self.user),
            (&mut c.pass, &self.pass),
            (&mut c.auth_token, &self.token),
        ] {
            if field.is_empty() {
                field.clone_from(cookie);
            }
        }
    }
}

/// What the client role needs from a websocket connection's setup.
#[derive(Debug, Clone, Default)]
pub struct WsClient {
    pub credentials: WsCredentials,
    /// The client certificate of `wss://` (for `verify_and_map`), DER.
    pub peer_cert: Option<std::sync::Arc<[u8]>>,
}

/// `scheme://host:port` with the default port filled in, lower case, for comparing
/// origins.
fn normalize_origin(o: &str) -> Option<(String, String, u16)> {
    let u = url::Url::parse(o.trim()).ok()?;
    let scheme = u.scheme().to_ascii_lowercase();
    let host = u.host_str()?.to_ascii_lowercase();
    let port = u
        .port_or_known_default()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some((scheme, host, port))
}

fn check_origin(rules: &Upgrade, req: &HttpRequest, tls: bool) -> Result<(), String> {
    if !rules.same_origin && rules.allowed_origins.is_empty() {
        return Ok(());
    }
    // nats-server: no Origin header (a non-browser client) is accepted.
    let Some(origin) = req.header("origin") else {
        return Ok(());
    };
    let Some((scheme, host, port)) = normalize_origin(origin) else {
        return Err(format!("invalid origin {origin:?}"));
    };
    if rules.same_origin {
        let req_host = req.header("host").unwrap_or("");
        let base = if tls { "https://" } else { "http://" };
        let same = normalize_origin(&format!("{base}{req_host}"))
            .is_some_and(|(_, h, p)| h == host && p == port);
        if !same {
            return Err(format!("origin {origin:?} is not the same as the host"));
        }
    }
    if !rules.allowed_origins.is_empty() {
        let allowed = rules
            .allowed_origins
            .iter()
            .filter_map(|a| normalize_origin(a))
            .any(|a| a == (scheme.clone(), host.clone(), port));
        if !allowed {
            return Err(format!("origin {origin:?} not allowed"));
        }
    }
    Ok(())
}

/// The parts of an HTTP request (or response) head the upgrade looks at.
struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// The first value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header `name` has the token `value` (any case).
    fn has_token(&self, name: &str, value: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(value))
    }

    /// Whether `Sec-WebSocket-Extensions` offers permessage-deflate.
    fn offers_deflate(&self) -> bool {
        self.deflate_params().is_some()
    }

    /// The parameters of the first permessage-deflate extension named, lower case.
    fn deflate_params(&self) -> Option<Vec<String>> {
        self.headers_named("sec-websocket-extensions")
            .flat_map(|v| v.split(','))
            .find_map(|ext| {
                let mut parts = ext.split(';').map(|p| p.trim().to_ascii_lowercase());
                (parts.next()? == DEFLATE).then(|| parts.collect())
            })
    }
}

fn collect_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    hs.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Reads an HTTP head (up to the blank line) into `buf`; returns its length. What follows
/// it stays in `buf`.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Result<usize, UpgradeError> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        if buf.len() > MAX_HEAD {
            return Err(UpgradeError::Handshake(format!(
                "HTTP head larger than {MAX_HEAD} bytes"
            )));
        }
        buf.reserve(4096);
        if io.read_buf(buf).await? == 0 {
            return Err(UpgradeError::Handshake(
                "connection closed during handshake".into(),
            ));
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, status: u16, reason: String) -> UpgradeError {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let body = format!("{text}\n");
    let resp = format!(
        "HTTP/1.1 {status} {text}\r\nSec-Websocket-Version: 13\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(resp.as_bytes()).await;
    let _ = io.flush().await;
    UpgradeError::Handshake(reason)
}

/// Checks the request as nats-server's `wsUpgrade` does; `Err((status, reason))`.
fn check_request(
    rules: &Upgrade,
    req: &HttpRequest,
    tls: bool,
) -> Result<(PeerKind, String), (u16, String)> {
    let path = req.path.split('?').next().unwrap_or("");
    let kind = if path.ends_with(LEAF_PATH) {
        PeerKind::Leaf
    } else if path.ends_with("/mqtt") {
        return Err((404, "mqtt websocket endpoint not enabled".into()));
    } else {
        PeerKind::Client
    };
    if req.method != "GET" {
        return Err((405, "request method must be GET".into()));
    }
    if req.header("host").is_none_or(str::is_empty) {
        return Err((400, "'Host' missing in request".into()));
    }
    if !req.has_token("upgrade", "websocket") {
        return Err((400, "invalid value for header 'Upgrade'".into()));
    }
    if !req.has_token("connection", "upgrade") {
        return Err((400, "invalid value for header 'Connection'".into()));
    }
    let Some(key) = req.header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return Err((400, "key missing".into()));
    };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.trim());
    if decoded.map(|d| d.len()) != Ok(16) {
        return Err((400, "invalid websocket key".into()));
    }
    if !req.has_token("sec-websocket-version", "13") {
        return Err((400, "invalid version".into()));
    }
    check_origin(rules, req, tls).map_err(|e| (403, format!("origin not allowed: {e}")))?;
    if kind == PeerKind::Leaf && !rules.leafnodes {
        return Err((
            400,
            "not configured to accept leaf node connections (no leafnodes listener)".into(),
        ));
    }
    Ok((kind, key.trim().to_string()))
}

/// Performs the server side of the upgrade on `io` within `timeout`. `tls` says whether
/// `io` is a TLS stream (for `same_origin`).
pub async fn accept<S>(
    mut io: S,
    rules: &Upgrade,
    tls: bool,
    timeout: Duration,
) -> Result<Accepted<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let head = tokio::time::timeout(timeout, read_head(&mut io, &mut buf))
        .await
        .map_err(|_| UpgradeError::Timeout)??;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut hs);
    let req = match parsed.parse(&buf[..head]) {
        Ok(httparse::Status::Complete(_)) => HttpRequest {
            method: parsed.method.unwrap_or("").to_string(),
            path: parsed.path.unwrap_or("").to_string(),
            headers: collect_headers(parsed.headers),
        },
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(refuse(&mut io, 400, "malformed HTTP request".into()).await);
        }
    };
    let _ = buf.split_to(head);
    let (kind, key) = match check_request(rules, &req, tls) {
        Ok(k) => k,
        Err((status, reason)) => return Err(refuse(&mut io, status, reason).await),
    };
    let compress = rules.compression && req.offers_deflate();
    let no_masking = req.header(NO_MASKING).is_some_and(|v| v.trim() == "true");
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if compress {
        resp.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_RESPONSE}\r\n"));
    }
    if no_masking {
        resp.push_str(&format!("{NO_MASKING}: true\r\n"));
    }
    for (k, v) in &rules.headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    tokio::time::timeout(timeout, async {
        io.write_all(resp.as_bytes()).await?;
        io.flush().await
    })
    .await
    .map_err(|_| UpgradeError::Timeout)??;
    let credentials = match kind {
        PeerKind::Client => rules.cookies.extract(req.headers_named("cookie")),
        PeerKind::Leaf => WsCredentials::default(),
    };
    let stream = WsStream::new(
        io,
        buf,
        FrameRole::server(no_masking),
        compress,
        rules.max_message,
    );
    Ok(Accepted {
        stream,
        kind,
        credentials,
    })
}

/// What a leaf remote asks for in its upgrade request (`ws://` and `wss://` URLs).
#[derive(Debug, Clone)]
pub struct ClientUpgrade {
    /// The `Host` header: the URL's `host:port`.
    pub host: String,
    /// The URL's path; the request asks for it followed by `leafnode`.
    pub url_path: String,
    /// `ws_compression`: offer permessage-deflate.
    pub compression: bool,
    /// `ws_no_masking`: ask the hub to take unmasked frames.
    pub no_masking: bool,
    /// The largest compressed or inflated message taken from the hub.
    pub max_message: usize,
}

/// The request path of a leaf's upgrade: the URL's path followed by `leafnode`
/// (`/leafnode` without one), as nats-server builds it.
pub fn leaf_request_path(url_path: &str) -> String {
    let base = url_path.trim_matches('/');
    if base.is_empty() {
        LEAF_PATH.to_string()
    } else {
        format!("/{base}{LEAF_PATH}")
    }
}

/// The client side of the upgrade on `io` (TCP, or TLS for `wss://`) within `timeout`:
/// the request to the leafnode path, then the response checked (status 101, `Upgrade`,
/// `Connection`, `Sec-WebSocket-Accept`). Compression is used when offered and the hub
/// agreed with no context takeover both ways (a hub that agreed to deflate with context
/// takeover is refused, a hub that did not answer it means none); writes stay masked
/// unless the hub echoed `Nats-No-Masking: true`.
pub async fn connect<S>(
    mut io: S,
    up: &ClientUpgrade,
    timeout: Duration,
) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        leaf_request_path(&up.url_path),
        up.host
    );
    if up.compression {
        req.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_RESPONSE}\r\n"));
    }
    if up.no_masking {
        req.push_str(&format!("{NO_MASKING}: true\r\n"));
    }
    req.push_str("\r\n");
    let mut buf = BytesMut::with_capacity(4096);
    let head = tokio::time::timeout(timeout, async {
        io.write_all(req.as_bytes()).await?;
        io.flush().await?;
        read_head(&mut io, &mut buf).await
    })
    .await
    .map_err(|_| UpgradeError::Timeout)??;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut hs);
    let (status, resp) = match parsed.parse(&buf[..head]) {
        Ok(httparse::Status::Complete(_)) => (
            parsed.code.unwrap_or(0),
            HttpRequest {
                method: String::new(),
                path: String::new(),
                headers: collect_headers(parsed.headers),
            },
        ),
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(UpgradeError::Handshake("malformed HTTP response".into()));
        }
    };
    let _ = buf.split_to(head);
    if status != 101 {
        return Err(UpgradeError::Handshake(format!(
            "invalid websocket connection: the hub answered HTTP {status}"
        )));
    }
    let accept_ok = resp
        .header("sec-websocket-accept")
        .is_some_and(|a| a.trim() == derive_accept_key(key.as_bytes()));
    if !resp.has_token("upgrade", "websocket")
        || !resp.has_token("connection", "upgrade")
        || !accept_ok
    {
        return Err(UpgradeError::Handshake(
            "invalid websocket connection (Upgrade, Connection or Sec-WebSocket-Accept)".into(),
        ));
    }
    let compress = match resp.deflate_params() {
        Some(p) if up.compression => {
            let has = |name: &str| p.iter().any(|x| x == name);
            if !has("server_no_context_takeover") || !has("client_no_context_takeover") {
                return Err(UpgradeError::Handshake(
                    "compression negotiation error: no context takeover not agreed".into(),
                ));
            }
            true
        }
        _ => false,
    };
    let no_masking = up.no_masking && resp.header(NO_MASKING).is_some_and(|v| v.trim() == "true");
    Ok(WsStream::new(
        io,
        buf,
        FrameRole::client(no_masking),
        compress,
        up.max_message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            normalize_origin("HTTP://Example.com"),
            Some(("http".into(), "example.com".into(), 80))
        );
        assert_eq!(
            normalize_origin("https://a.b:8443/"),
            Some(("https".into(), "a.b".into(), 8443))
        );
        assert_eq!(normalize_origin("not a url"), None);
    }

    #[test]
    fn leaf_paths_follow_the_url_path() {
        assert_eq!(leaf_request_path("/"), "/leafnode");
        assert_eq!(leaf_request_path(""), "/leafnode");
        assert_eq!(leaf_request_path("/nats/"), "/nats/leafnode");
    }

    /// Our client upgrade against our server upgrade, with and without deflate and no
    /// masking: both sides agree (frames written by the client are read by the server).
    #[tokio::test]
    async fn client_and_server_upgrades_agree() {
        for (compression, no_masking) in [(true, true), (false, false), (true, false)] {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let rules = Upgrade {
                compression: true,
                leafnodes: true,
                max_message: 1 << 20,
                ..Default::default()
            };
            let server = tokio::spawn(async move {
                let mut up = accept(b, &rules, false, Duration::from_secs(2)).await?;
                let mut got = vec![0u8; 200];
                up.stream.read_exact(&mut got).await?;
                Ok::<_, UpgradeError>((up.kind, up.stream.compressed(), got))
            });
            let up = ClientUpgrade {
                host: "hub:8080".into(),
                url_path: "/".into(),
                compression,
                no_masking,
                max_message: 1 << 20,
            };
            let mut client = connect(a, &up, Duration::from_secs(2)).await.unwrap();
            assert_eq!(client.compressed(), compression);
            client.write_all(&[b'x'; 200]).await.unwrap();
            client.flush().await.unwrap();
            let (kind, compressed, got) = server.await.unwrap().unwrap();
            assert_eq!(kind, PeerKind::Leaf);
            assert_eq!(compressed, compression);
            assert_eq!(got, vec![b'x'; 200]);
        }
    }

    /// A hub answering something else than 101 is refused with its status.
    #[tokio::test]
    async fn a_refused_upgrade_names_the_status() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            accept(b, &Upgrade::default(), false, Duration::from_secs(2))
                .await
                .err()
        });
        let up = ClientUpgrade {
            host: "hub:8080".into(),
            url_path: "/".into(),
            compression: false,
            no_masking: false,
            max_message: 1 << 20,
        };
        let err = connect(a, &up, Duration::from_secs(2)).await.err().unwrap();
        assert!(err.to_string().contains("400"), "{err}");
        assert!(server.await.unwrap().is_some());
    }
}
