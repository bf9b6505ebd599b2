#![recursion_limit = "256"]
//! canopy-server: a NATS server built for leaf-node topologies.
//!
//! Layout: [`run`] (process, flags, config, signals) starts a [`server::Server`], whose
//! listeners hand connections to a role ([`client`]); every role shares [`conn`] (outbound
//! buffer, writer task, liveness) and routes through [`account`] Sublists with
//! [`deliver`]. [`monitor`] serves the HTTP endpoints.

pub mod account;
pub mod auth;
pub mod client;
pub mod conn;
pub mod deliver;
pub mod errors;
pub mod flags;
pub mod logging;
pub mod monitor;
pub mod run;
pub mod server;
pub mod signal;
pub mod version;
