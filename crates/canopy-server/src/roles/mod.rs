//! Connection roles: clients ([`client`]), leaf links ([`leaf`]) and routes ([`route`]).
//! Each role drives a connection over [`crate::core::conn`] and routes through
//! [`crate::core::deliver`]; none depends on services or monitoring.

pub mod client;
pub mod leaf;
pub mod route;
