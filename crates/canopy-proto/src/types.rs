//! The JSON bodies of `INFO` and `CONNECT`, with nats-server's field names.
//!
//! Serialization mirrors Go's `omitempty`: optional fields are left out when empty,
//! false or zero, so our INFO is byte-for-byte shaped like nats-server's. Field order
//! follows nats-server's structs (`server.go` `Info`, `client.go` `ClientOpts`,
//! `leafnode.go` `leafConnectInfo`, `route.go` `connectInfo`).
//!
//! Deserialization is as lenient as Go's `encoding/json`: unknown fields are ignored,
//! missing fields take their defaults and an explicit `null` (async-nats sends
//! `"jwt":null`) also means "default".

use serde::{Deserialize, Deserializer, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// `null` or absent → `T::default()`.
fn nd<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `null` → `true` (for ClientOpts' echo/verbose/pedantic, which default to true).
fn nd_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

fn yes() -> bool {
    true
}

/// `{"allow":[..],"deny":[..]}` — import/export permissions in INFO/CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubjectPermission {
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nd")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nd")]
    pub deny: Vec<String>,
}

/// The `INFO` a server sends to clients, routes and leafnodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    #[serde(deserialize_with = "nd")]
    pub server_id: String,
    #[serde(deserialize_with = "nd")]
    pub server_name: String,
    #[serde(deserialize_with = "nd")]
    pub version: String,
    #[serde(deserialize_with = "nd")]
    pub proto: i32,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub git_commit: String,
    #[serde(deserialize_with = "nd")]
    pub go: String,
    #[serde(deserialize_with = "nd")]
    pub host: String,
    #[serde(deserialize_with = "nd")]
    pub port: u16,
    #[serde(deserialize_with = "nd")]
    pub headers: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub tls_verify: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub tls_available: bool,
    #[serde(deserialize_with = "nd")]
    pub max_payload: i64,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub jetstream: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub ip: String,
    #[serde(skip_serializing_if = "is_zero_u64", deserialize_with = "nd")]
    pub client_id: u64,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub client_ip: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub nonce: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub cluster: String,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub cluster_dynamic: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub domain: String,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nd")]
    pub connect_urls: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nd")]
    pub ws_connect_urls: Vec<String>,
    /// Lame duck mode.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub ldm: bool,
    /// Compression mode (2.10+); leave empty to mean "not supported" to newer peers.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub compression: String,
    /// The INFO a leafnode accept side sends in response to CONNECT.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub connect_info: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub remote_account: String,
    #[serde(
        rename = "acc_is_sys",
        skip_serializing_if = "is_false",
        deserialize_with = "nd"
    )]
    pub is_system_account: bool,
    #[serde(skip_serializing_if = "is_zero_i64", deserialize_with = "nd")]
    pub api_lvl: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<SubjectPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<SubjectPermission>,
    /// Route: peer understands `LS+ origin ...` / leaf-origin `LMSG`.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub lnoc: bool,
    /// Route: peer sends/understands `LS-` with origin (2.11+).
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub lnocu: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub info_on_connect: bool,
    #[serde(skip_serializing_if = "is_zero_i64", deserialize_with = "nd")]
    pub route_pool_size: i64,
    #[serde(skip_serializing_if = "is_zero_i64", deserialize_with = "nd")]
    pub route_pool_idx: i64,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub route_account: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub gateway_url: String,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nd")]
    pub leafnode_urls: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub xkey: String,
    /// Canopy extension: our own version (nats-server ignores unknown fields).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub canopy_version: String,
    /// Canopy extension: this server both accepts leaf connections and solicits remotes
    /// (a regional hub); links between two regional hubs form a loop-free mesh.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub canopy_regional: bool,
}

/// A client's `CONNECT`. Like nats-server, `echo`, `verbose` and `pedantic` default to
/// **true** when absent (verified with 2.9.10: `CONNECT {}` then `SUB` gets `+OK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConnect {
    #[serde(deserialize_with = "nd_true")]
    pub echo: bool,
    #[serde(deserialize_with = "nd_true")]
    pub verbose: bool,
    #[serde(deserialize_with = "nd_true")]
    pub pedantic: bool,
    #[serde(deserialize_with = "nd")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub nkey: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub jwt: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub sig: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub auth_token: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub pass: String,
    #[serde(deserialize_with = "nd")]
    pub name: String,
    #[serde(deserialize_with = "nd")]
    pub lang: String,
    #[serde(deserialize_with = "nd")]
    pub version: String,
    #[serde(deserialize_with = "nd")]
    pub protocol: i32,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub account: String,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub new_account: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub headers: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub no_responders: bool,
}

impl Default for ClientConnect {
    fn default() -> Self {
        ClientConnect {
            echo: yes(),
            verbose: yes(),
            pedantic: yes(),
            tls_required: false,
            nkey: String::new(),
            jwt: String::new(),
            sig: String::new(),
            auth_token: String::new(),
            user: String::new(),
            pass: String::new(),
            name: String::new(),
            lang: String::new(),
            version: String::new(),
            protocol: 0,
            account: String::new(),
            new_account: false,
            headers: false,
            no_responders: false,
        }
    }
}

/// A leafnode's `CONNECT` (sent by the soliciting side).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeafConnect {
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub nkey: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub jwt: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub sig: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub pass: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub auth_token: String,
    /// Always written, as 2.9.10 does (`"tls_required":false`).
    #[serde(deserialize_with = "nd")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub server_id: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub domain: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub name: String,
    #[serde(
        rename = "is_hub",
        alias = "hub",
        skip_serializing_if = "is_false",
        deserialize_with = "nd"
    )]
    pub hub: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub cluster: String,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub headers: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub jetstream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nd")]
    pub deny_pub: Vec<String>,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub isolate: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub compress_mode: String,
    /// Set only when connecting to a gateway port by mistake; used to detect that.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub gateway: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub remote_account: String,
    #[serde(skip_serializing_if = "is_zero_i64", deserialize_with = "nd")]
    pub protocol: i64,
    /// A client library's CONNECT carries `lang`; on the leaf port that is rejected
    /// with `attempted to connect to leaf node port`. Never serialized.
    #[serde(skip_serializing, deserialize_with = "nd")]
    pub lang: String,
    /// Canopy extension: the soliciting server's Canopy version.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub canopy_version: String,
    /// Canopy extension: the soliciting server is a regional hub (see `ServerInfo`).
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub canopy_regional: bool,
    /// Canopy extension: the soliciting server imports streams and services into the
    /// account this link binds on its side, for its own subscribers. The hub then sends
    /// it no imported copies and answers none of its service requests (it does both
    /// itself), so nothing is imported twice.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub canopy_imports: bool,
}

/// A route's `CONNECT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteConnect {
    #[serde(deserialize_with = "nd")]
    pub echo: bool,
    #[serde(deserialize_with = "nd")]
    pub verbose: bool,
    #[serde(deserialize_with = "nd")]
    pub pedantic: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub pass: String,
    #[serde(deserialize_with = "nd")]
    pub tls_required: bool,
    #[serde(deserialize_with = "nd")]
    pub headers: bool,
    /// The soliciting server's id.
    #[serde(deserialize_with = "nd")]
    pub name: String,
    #[serde(deserialize_with = "nd")]
    pub cluster: String,
    #[serde(
        rename = "cluster_dynamic",
        skip_serializing_if = "is_false",
        deserialize_with = "nd"
    )]
    pub dynamic: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub lnoc: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nd")]
    pub lnocu: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nd")]
    pub gateway: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn info_omits_empty_like_nats() {
        let info = ServerInfo {
            server_id: "NABC".into(),
            server_name: "proto-test".into(),
            version: "2.9.10".into(),
            proto: 1,
            go: "go1.19.8".into(),
            host: "127.0.0.1".into(),
            port: 14300,
            headers: true,
            auth_required: true,
            max_payload: 1024,
            client_id: 4,
            client_ip: "127.0.0.1".into(),
            cluster: "C1".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"server_id":"NABC","server_name":"proto-test","version":"2.9.10","proto":1,"go":"go1.19.8","host":"127.0.0.1","port":14300,"headers":true,"auth_required":true,"max_payload":1024,"client_id":4,"client_ip":"127.0.0.1","cluster":"C1"}"#
        );
        let back: ServerInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn client_connect_defaults_and_nulls() {
        let c: ClientConnect = serde_json::from_str("{}").unwrap();
        assert!(c.echo && c.verbose && c.pedantic);
        let c: ClientConnect = serde_json::from_str(
            r#"{"verbose":false,"pedantic":false,"jwt":null,"nkey":null,"sig":null,"name":null,
            "echo":null,"lang":"rust","version":"0.46.0","protocol":1,"tls_required":false,
            "user":"u","pass":"p","auth_token":null,"headers":true,"no_responders":true,
            "unknown_field":{"x":1}}"#,
        )
        .unwrap();
        assert!(!c.verbose && !c.pedantic && c.echo && c.headers && c.no_responders);
        assert_eq!((c.user.as_str(), c.pass.as_str()), ("u", "p"));
        assert_eq!(c.protocol, 1);
        assert!(c.jwt.is_empty());
    }

    #[test]
    fn leaf_connect_observed_2_9_10() {
        let raw = r#"{"version":"2.9.10","tls_required":false,"server_id":"NXYZ","name":"leafA","cluster":"leafA","headers":true,"deny_pub":["secret.>"]}"#;
        let c: LeafConnect = serde_json::from_str(raw).unwrap();
        assert_eq!(c.deny_pub, vec!["secret.>".to_string()]);
        assert_eq!(serde_json::to_string(&c).unwrap(), raw);
        let hub: LeafConnect = serde_json::from_str(r#"{"hub":true}"#).unwrap();
        assert!(hub.hub);
        let hub: LeafConnect = serde_json::from_str(r#"{"is_hub":true}"#).unwrap();
        assert!(hub.hub);
    }

    #[test]
    fn route_connect_observed_2_9_10() {
        let raw = r#"{"echo":true,"verbose":false,"pedantic":false,"tls_required":false,"headers":true,"name":"NSRV","cluster":"RC","lnoc":true}"#;
        let c: RouteConnect = serde_json::from_str(raw).unwrap();
        assert!(c.lnoc && c.echo && c.headers);
        assert_eq!(serde_json::to_string(&c).unwrap(), raw);
    }
}
