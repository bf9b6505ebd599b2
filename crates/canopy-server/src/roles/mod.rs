//! Connection roles: clients ([`client`], also over WebSocket: [`websocket`]), leaf links
//! ([`leaf`]) and routes ([`route`]).
//! Each role drives a connection over [`crate::core::conn`] and routes through
//! [`crate::core::deliver`]; none depends on services or monitoring.

pub mod client;
pub mod leaf;
pub mod route;
pub mod websocket;
