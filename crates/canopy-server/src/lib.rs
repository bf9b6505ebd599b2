#![recursion_limit = "256"]
//! canopy-server: a NATS server built for leaf-node topologies.
//!
//! The crate is split into subsystem folders whose dependencies point one way:
//!
//! ```text
//! core  <-  auth  <-  server  <-  roles  <-  monitor  <-  services  <-  process
//! ```
//!
//! [`core`] holds accounts, interest, delivery and connection buffers; [`auth`] users, JWTs
//! and TLS; [`server`] the server state, the internal service API and its events;
//! [`roles`] the client, leaf and route connections; [`monitor`] the HTTP endpoints and
//! metrics; [`services`] the in-process services (`$SYS`, imports); [`process`] flags,
//! start-up and signals. docs/ARCHITECTURE.md draws the picture.

pub mod auth;
pub mod core;
pub mod monitor;
pub mod process;
pub mod roles;
pub mod server;
pub mod services;
