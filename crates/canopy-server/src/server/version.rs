//! Version identity. Clients gate features on the `version` field of INFO, so Canopy reports
//! the nats-server version whose behaviour it implements, and its own version separately.

/// The nats-server version whose client, route and leafnode behaviour Canopy implements.
pub const NATS_COMPAT_VERSION: &str = "2.10.0";
/// Canopy's own version (INFO `canopy_version`, `/varz` `canopy_version`).
pub const CANOPY_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Client protocol version announced in INFO (`proto`).
pub const CLIENT_PROTO: i32 = 1;
/// What INFO's `go` field says: the runtime, since there is no Go here.
pub const RUNTIME: &str = "rust";
