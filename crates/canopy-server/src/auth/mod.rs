//! Authentication and transports: configured users and permissions ([`users`]),
//! operator/JWT mode ([`jwt`]), TLS ([`tls`]) and the WebSocket transport
//! ([`websocket`]). Depends only on [`crate::core`].

pub mod jwt;
pub mod tls;
pub mod users;
pub mod websocket;
pub mod ws_frame;
