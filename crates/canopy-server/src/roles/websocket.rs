//! The WebSocket listener (`websocket {}`): each accepted connection gets its TLS
//! (`wss://`, with `websocket { tls {} }`) and HTTP upgrade
//! ([`crate::auth::websocket`]), then is served as an ordinary client over the
//! [`crate::auth::websocket::WsStream`] adapter; a leaf node's upgrade (path
//! `/leafnode`) is served by the leaf role instead, when a leafnode listener exists.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::auth::websocket::{self, Accepted, PeerKind, Upgrade, WsClient};
use crate::server::Server;

/// nats-server's default `handshake_timeout` (TLS and upgrade).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts WebSocket clients until the server stops accepting.
pub async fn accept_websocket(server: Arc<Server>, listener: TcpListener) {
    let until = server.accepting.clone();
    server
        .accept_loop(listener, until, "websocket", serve)
        .await;
}

async fn serve(server: Arc<Server>, stream: TcpStream, addr: SocketAddr) {
    let o = server.opts();
    let Some(w) = o.websocket.as_ref() else {
        return;
    };
    let timeout = w.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let rules = Upgrade {
        same_origin: w.same_origin,
        allowed_origins: w.allowed_origins.clone(),
        // A message carries at most one payload plus its protocol lines; outbound batches
        // are ours to size.
        max_message: (o.max_payload as usize).saturating_add(o.max_control_line as usize * 4),
        compression: w.compression,
        cookies: websocket::CookieNames::from_options(w),
        headers: w.headers.clone(),
        // nats-server: a leafnode port is configured.
        leafnodes: o.leafnodes.as_ref().is_some_and(|l| l.port != 0),
    };
    drop(o);
    let tls = server.tls().websocket.clone();
    let res: Result<(), String> = match tls {
        Some(tls) => {
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(timeout, crate::auth::tls::accept_first(&tls, stream)).await
            {
                Ok(Ok(s)) => {
                    let left = timeout.saturating_sub(started.elapsed());
                    let peer_cert = s.peer_cert().map(|c| Arc::from(c.as_ref()));
                    match websocket::accept(s, &rules, true, left).await {
                        Ok(up) => {
                            serve_accepted(server, up, addr, peer_cert).await;
                            return;
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Ok(Err(e)) => {
                    crate::auth::tls::count_failure(&server.stats);
                    Err(format!("TLS handshake error: {e}"))
                }
                Err(_) => Err("TLS handshake timed out".into()),
            }
        }
        None => match websocket::accept(stream, &rules, false, timeout).await {
            Ok(up) => {
                serve_accepted(server, up, addr, None).await;
                return;
            }
            Err(e) => Err(e.to_string()),
        },
    };
    if let Err(e) = res {
        tracing::error!("{addr} - {e}");
    }
}

/// Hands an upgraded connection to its role.
async fn serve_accepted<S>(
    server: Arc<Server>,
    up: Accepted<S>,
    addr: SocketAddr,
    peer_cert: Option<Arc<[u8]>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    // A message over the bound (compressed, or inflated: a decompression bomb) counts as
    // a max payload violation, as in nats-server.
    let compressed = up.stream.compressed();
    let counted = server.clone();
    let stream = up.stream.on_too_big(Arc::new(move || {
        counted
            .stats
            .max_payload_violations
            .fetch_add(1, Ordering::Relaxed);
    }));
    if up.kind == PeerKind::Leaf {
        tracing::debug!("{addr} - Leafnode connection over websocket, compression={compressed}");
        crate::roles::leaf::serve_websocket(server, stream, addr).await;
        return;
    }
    let ws = WsClient {
        credentials: up.credentials,
        peer_cert,
    };
    crate::roles::client::serve_upgraded(server, stream, addr, ws).await;
}
