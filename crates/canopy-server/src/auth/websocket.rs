//! The WebSocket transport: the HTTP upgrade (tokio-tungstenite), origin checks, and
//! [`WsStream`], which carries the ordinary client protocol in binary frames. Like
//! [`crate::auth::tls::MaybeTls`] it is an adapter below the client role: the role reads
//! and writes bytes and never sees a frame.
//!
//! Each write of the connection's writer (one outbound batch) becomes one binary
//! message; received binary (and text) messages are read as a byte stream, so a
//! protocol op may span frames. Control frames (ping, pong, close) are handled by
//! tungstenite. permessage-deflate is not available in tungstenite, so `compression` is
//! refused at start rather than ignored.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The upgrade's rules from the `websocket {}` block.
#[derive(Debug, Clone, Default)]
pub struct Upgrade {
    /// `same_origin`: the `Origin` header must name the host (and port) the client
    /// connected to.
    pub same_origin: bool,
    /// `allowed_origins`: if not empty, the `Origin` header must be one of these
    /// (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// The largest message accepted (nats-server bounds frames by `max_payload` plus
    /// protocol; we allow a few control lines more).
    pub max_message: usize,
    /// Cookie names whose values stand in for missing CONNECT credentials.
    pub cookies: CookieNames,
    /// `headers`: extra headers of the upgrade response.
    pub headers: Vec<(String, String)>,
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

/// Why an upgrade was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("websocket handshake timed out")]
    Timeout,
    #[error("websocket handshake: {0}")]
    Handshake(String),
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

fn check_origin(rules: &Upgrade, req: &Request, tls: bool) -> Result<(), String> {
    if !rules.same_origin && rules.allowed_origins.is_empty() {
        return Ok(());
    }
    // nats-server: no Origin header (a non-browser client) is accepted.
    let Some(origin) = req.headers().get("origin").and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let Some((scheme, host, port)) = normalize_origin(origin) else {
        return Err(format!("invalid origin {origin:?}"));
    };
    if rules.same_origin {
        let req_host = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
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

fn refuse(status: StatusCode, text: String) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(text));
    *r.status_mut() = status;
    r
}

/// Performs the HTTP upgrade on `io` within `timeout`. `tls` says whether `io` is a TLS
/// stream (for `same_origin`).
pub async fn accept<S>(
    io: S,
    rules: &Upgrade,
    tls: bool,
    timeout: Duration,
) -> Result<(WsStream<S>, WsCredentials), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut credentials = WsCredentials::default();
    // The callback's shape (an `ErrorResponse` as the error) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        // `/leafnode` is where nats-server takes leaf connections over websocket.
        if req.uri().path().trim_end_matches('/') == "/leafnode" {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "leafnode connections over websocket are not supported".into(),
            ));
        }
        check_origin(rules, req, tls).map_err(|e| refuse(StatusCode::FORBIDDEN, e))?;
        // The client protocol has no subprotocol name; echo none.
        resp.headers_mut()
            .insert("server", HeaderValue::from_static("canopy"));
        for (k, v) in &rules.headers {
            let name = HeaderName::from_bytes(k.as_bytes());
            if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(v)) {
                resp.headers_mut().append(name, value);
            }
        }
        credentials = rules.cookies.extract(
            req.headers()
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        Ok(resp)
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(rules.max_message.max(64 * 1024));
    config.max_frame_size = Some(rules.max_message.max(64 * 1024));
    let fut = tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(config));
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(UpgradeError::Timeout),
        Ok(Err(e)) => Err(UpgradeError::Handshake(e.to_string())),
        Ok(Ok(ws)) => Ok((WsStream::new(ws), credentials)),
    }
}

/// A WebSocket connection as a byte stream (see the module header).
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message read.
    pending: Bytes,
    closed: bool,
}

impl<S> WsStream<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsStream {
            ws,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // End of stream: EOF.
                Poll::Ready(None) => {
                    self.closed = true;
                }
                Poll::Ready(Some(Err(WsError::ConnectionClosed))) => {
                    self.closed = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(to_io(e))),
                Poll::Ready(Some(Ok(msg))) => match msg {
                    Message::Binary(b) => self.pending = b,
                    Message::Text(t) => self.pending = Bytes::copy_from_slice(t.as_bytes()),
                    Message::Close(_) => self.closed = true,
                    // Pings are answered by tungstenite on the next read or write.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                },
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(to_io(e))),
            Poll::Ready(Ok(())) => {}
        }
        let msg = Message::Binary(Bytes::copy_from_slice(buf));
        if let Err(e) = Pin::new(&mut self.ws).start_send(msg) {
            return Poll::Ready(Err(to_io(e)));
        }
        // Push the frame towards the socket now; `flush` completes it.
        let _ = Pin::new(&mut self.ws).poll_flush(cx);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.ws).poll_close(cx) {
            Poll::Ready(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                Poll::Ready(Ok(()))
            }
            other => other.map_err(to_io),
        }
    }
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
}
