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
pub mod imports;
pub mod interest;
pub mod jwt;
pub mod leaf;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod route;
pub mod run;
pub mod server;
pub mod signal;
pub mod system;
pub mod tls;
pub mod version;

/// A random 22-character identifier (like nats-server's NUIDs) for inboxes and `$LDS.`.
pub fn nuid() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
