//! Authentication and transports: configured users and permissions ([`users`]),
//! operator/JWT mode ([`jwt`]), TLS ([`tls`]), the WebSocket transport ([`websocket`])
//! and S2 compression of leaf links ([`s2`]). Depends only on [`crate::core`].

pub mod jwt;
pub mod s2;
pub mod tls;
pub mod users;
pub mod websocket;
pub mod ws_frame;
