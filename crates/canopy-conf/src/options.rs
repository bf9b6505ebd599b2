//! Typed server options with nats-server's defaults, and the reports built on them:
//! which features a configuration uses ([`Options::features_used`]), which of those the
//! server does not implement yet ([`Options::unsupported`]), which Canopy extensions it
//! relies on ([`Options::extensions_used`]) and non-fatal warnings ([`Options::warnings`]).
//!
//! Every field is `pub` so command-line flags can override the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ConfError, ConfErrors, Warning};
use crate::value::{Pos, Value};

pub const DEFAULT_PORT: i32 = 4222;
pub const DEFAULT_HOST: &str = "0.0.0.0";
pub const DEFAULT_CLUSTER_PORT: i32 = 6222;
pub const DEFAULT_LEAFNODE_PORT: i32 = 7422;
pub const DEFAULT_HTTP_PORT: i32 = 8222;
pub const DEFAULT_PROMETHEUS_PORT: i32 = 7777;
pub const DEFAULT_MAX_PAYLOAD: u64 = 1024 * 1024;
/// nats-server refuses a `max_payload` above this.
pub const MAX_PAYLOAD_MAX_SIZE: u64 = 64 * 1024 * 1024;
/// nats-server warns about a `max_payload` above this.
pub const MAX_PAYLOAD_WARN_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAX_CONTROL_LINE: u64 = 4096;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 64 * 1024;
pub const DEFAULT_MAX_PENDING: u64 = 64 * 1024 * 1024;
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// `producer_backoff: true`: nats-server's longest stall of a fast producer (5 ms).
pub const PRODUCER_BACKOFF_DEFAULT: Duration = Duration::from_millis(5);
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(120);
pub const DEFAULT_PING_MAX: u32 = 2;
pub const DEFAULT_LAME_DUCK_DURATION: Duration = Duration::from_secs(120);
pub const DEFAULT_LAME_DUCK_GRACE_PERIOD: Duration = Duration::from_secs(10);
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_LEAF_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_CONNECT_ERROR_REPORTS: u64 = 3600;
pub const DEFAULT_RECONNECT_ERROR_REPORTS: u64 = 1;
pub const DEFAULT_ROUTE_CONNECT_RETRIES: u32 = 0;
pub const DEFAULT_RESPONSE_MAX_MSGS: usize = 1;
pub const DEFAULT_RESPONSE_EXPIRATION: Duration = Duration::from_secs(120);
pub const DEFAULT_GLOBAL_ACCOUNT: &str = "$G";
pub const DEFAULT_SYSTEM_ACCOUNT: &str = "$SYS";

/// All server options. Build with [`Options::default`], [`load_file`](crate::load_file) or
/// [`from_str`](crate::from_str).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub config_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub host: String,
    /// Client port; `-1` = pick a random free port.
    pub port: i32,
    pub client_advertise: Option<String>,
    pub http_host: Option<String>,
    pub http_port: Option<i32>,
    pub https_port: Option<i32>,
    pub http_base_path: Option<String>,
    pub max_payload: u64,
    pub max_control_line: u64,
    pub max_connections: u64,
    /// 0 = unlimited.
    pub max_subscriptions: u64,
    pub max_pending: u64,
    /// Canopy extension `producer_backoff`: the longest a publishing client is held back
    /// (per read batch) when a receiving client's pending bytes pass 75% of
    /// `max_pending`, as nats-server stalls fast producers. `None` (default): never held
    /// back; a receiver past `max_pending` is cut as a slow consumer.
    pub producer_backoff: Option<Duration>,
    pub write_deadline: Duration,
    pub ping_interval: Duration,
    pub ping_max: u32,
    pub lame_duck_duration: Duration,
    pub lame_duck_grace_period: Duration,
    pub debug: bool,
    pub trace: bool,
    pub trace_verbose: bool,
    pub logtime: bool,
    pub logtime_utc: bool,
    pub log_file: Option<PathBuf>,
    pub log_size_limit: u64,
    pub log_max_files: u64,
    pub max_traced_msg_len: u64,
    pub syslog: bool,
    pub remote_syslog: Option<String>,
    pub pid_file: Option<PathBuf>,
    pub ports_file_dir: Option<PathBuf>,
    pub no_header_support: bool,
    pub disable_sublist_cache: bool,
    pub no_system_account: bool,
    pub server_tags: Vec<String>,
    pub connect_error_reports: u64,
    pub reconnect_error_reports: u64,
    pub max_closed_clients: Option<u64>,
    pub authorization: Authorization,
    pub no_auth_user: Option<String>,
    pub accounts: Vec<AccountConfig>,
    pub system_account: Option<String>,
    /// Operator mode: `operator`/`operators`, each a JWT or a path to a file holding one
    /// (as written; the server reads and verifies them). Empty = not in operator mode.
    pub operators: Vec<String>,
    /// Operator mode account resolver (`resolver`).
    pub resolver: Option<ResolverOpts>,
    /// `resolver_preload { <account public key>: <account JWT> }`.
    pub resolver_preload: BTreeMap<String, String>,
    /// Top-level `mappings` (apply to the global account `$G`).
    pub mappings: Vec<Mapping>,
    pub tls: Option<TlsConfig>,
    pub allow_non_tls: bool,
    pub cluster: Option<ClusterOpts>,
    pub leafnodes: Option<LeafNodeOpts>,
    pub jetstream: Option<JetStreamOpts>,
    pub websocket: Option<WebsocketOpts>,
    pub mqtt: Option<RawBlock>,
    pub gateway: Option<RawBlock>,
    /// Canopy extension: built-in Prometheus `/metrics` listener.
    pub prometheus: Option<PrometheusOpts>,
    /// nats-server keys accepted as written but not modelled (resolver_tls,
    /// trusted keys, ocsp, profiling port, ...). All of them are reported by
    /// [`Options::unsupported`].
    pub unmodelled: Vec<RawBlock>,
    /// Where each top-level key was written (lowercased key → position of the key).
    pub key_pos: BTreeMap<String, Pos>,
    /// Warnings found while building (integer durations and the like).
    pub(crate) build_warnings: Vec<Warning>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_file: None,
            server_name: None,
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            client_advertise: None,
            http_host: None,
            http_port: None,
            https_port: None,
            http_base_path: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_subscriptions: 0,
            max_pending: DEFAULT_MAX_PENDING,
            producer_backoff: None,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_max: DEFAULT_PING_MAX,
            lame_duck_duration: DEFAULT_LAME_DUCK_DURATION,
            lame_duck_grace_period: DEFAULT_LAME_DUCK_GRACE_PERIOD,
            debug: false,
            trace: false,
            trace_verbose: false,
            logtime: true,
            logtime_utc: false,
            log_file: None,
            log_size_limit: 0,
            log_max_files: 0,
            max_traced_msg_len: 0,
            syslog: false,
            remote_syslog: None,
            pid_file: None,
            ports_file_dir: None,
            no_header_support: false,
            disable_sublist_cache: false,
            no_system_account: false,
            server_tags: Vec::new(),
            connect_error_reports: DEFAULT_CONNECT_ERROR_REPORTS,
            reconnect_error_reports: DEFAULT_RECONNECT_ERROR_REPORTS,
            max_closed_clients: None,
            authorization: Authorization::default(),
            no_auth_user: None,
            accounts: Vec::new(),
            system_account: None,
            operators: Vec::new(),
            resolver: None,
            resolver_preload: BTreeMap::new(),
            mappings: Vec::new(),
            tls: None,
            allow_non_tls: false,
            cluster: None,
            leafnodes: None,
            jetstream: None,
            websocket: None,
            mqtt: None,
            gateway: None,
            prometheus: None,
            unmodelled: Vec::new(),
            key_pos: BTreeMap::new(),
            build_warnings: Vec::new(),
        }
    }
}

/// A block or key kept as its raw [`Value`] (parsed, not modelled).
#[derive(Debug, Clone, PartialEq)]
pub struct RawBlock {
    /// The key as written.
    pub key: String,
    pub value: Value,
    /// Position of the key.
    pub pos: Pos,
}

/// The operator mode account resolver.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolverOpts {
    /// `resolver: MEMORY`: the accounts of `resolver_preload`, fixed at start.
    Memory { pos: Pos },
    /// `resolver: URL("http://…")`: an account server (not implemented).
    Url { url: String, pos: Pos },
    /// `resolver { type: full|cache, dir, … }`: account JWTs stored as `<dir>/<key>.jwt`.
    Dir(DirResolverOpts),
}

impl ResolverOpts {
    pub fn pos(&self) -> &Pos {
        match self {
            ResolverOpts::Memory { pos } | ResolverOpts::Url { pos, .. } => pos,
            ResolverOpts::Dir(d) => &d.pos,
        }
    }
}

/// Default `resolver.interval` (full resolver sync interval).
pub const DEFAULT_RESOLVER_INTERVAL: Duration = Duration::from_secs(120);
/// Default `resolver.limit` (number of account JWTs stored).
pub const DEFAULT_RESOLVER_LIMIT: u64 = 1000;
/// Default `resolver.timeout` (lookup timeout).
pub const DEFAULT_RESOLVER_TIMEOUT: Duration = Duration::from_millis(1900);

/// `resolver { type, dir, allow_delete, interval, limit, ttl, timeout }`.
#[derive(Debug, Clone, PartialEq)]
pub struct DirResolverOpts {
    /// `type: full` (true) or `type: cache` (false).
    pub full: bool,
    pub dir: PathBuf,
    /// Full resolver: honour `$SYS.REQ.CLAIMS.DELETE`.
    pub allow_delete: bool,
    pub interval: Duration,
    /// Most account JWTs kept.
    pub limit: u64,
    /// Cache resolver: how long a JWT is kept (zero = no expiry).
    pub ttl: Duration,
    pub timeout: Duration,
    pub pos: Pos,
}

/// Client authorization (top-level `authorization {}`), also used for `cluster.authorization`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Authorization {
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub users: Vec<User>,
    /// Authentication timeout; `None` = server default (2s). A number means seconds.
    pub timeout: Option<Duration>,
    pub default_permissions: Option<Permissions>,
    /// Position of the `authorization` key (default position when absent).
    pub pos: Pos,
}

impl Authorization {
    /// True when any form of authentication is configured in this block.
    pub fn is_set(&self) -> bool {
        self.user.is_some() || self.token.is_some() || !self.users.is_empty()
    }
}

/// A user in `authorization.users` or `accounts.X.users`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    /// Empty for nkey-only users.
    pub user: String,
    pub password: Option<String>,
    pub nkey: Option<String>,
    pub permissions: Option<Permissions>,
    /// The account the user belongs to (set for users declared inside `accounts`).
    pub account: Option<String>,
    pub allowed_connection_types: Vec<String>,
    pub pos: Pos,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    pub publish: Option<SubjectPermission>,
    pub subscribe: Option<SubjectPermission>,
    pub allow_responses: Option<ResponsePermission>,
    pub pos: Pos,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPermission {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePermission {
    pub max: usize,
    pub expires: Duration,
}

impl Default for ResponsePermission {
    fn default() -> Self {
        ResponsePermission {
            max: DEFAULT_RESPONSE_MAX_MSGS,
            expires: DEFAULT_RESPONSE_EXPIRATION,
        }
    }
}

/// One entry of `accounts {}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountConfig {
    pub name: String,
    pub users: Vec<User>,
    pub nkey: Option<String>,
    pub exports: Vec<Export>,
    pub imports: Vec<Import>,
    pub mappings: Vec<Mapping>,
    pub jetstream: Option<AccountJetStream>,
    pub default_permissions: Option<Permissions>,
    /// `limits {}` kept raw (not modelled yet).
    pub limits: Option<RawBlock>,
    pub pos: Pos,
}

/// Per-account JetStream: `enabled` or a limits map. `-1`/absent = unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountJetStream {
    pub enabled: bool,
    pub max_memory: Option<i64>,
    pub max_file: Option<i64>,
    pub max_streams: Option<i64>,
    pub max_consumers: Option<i64>,
    pub max_ack_pending: Option<i64>,
    pub max_bytes_required: bool,
    pub memory_max_stream_bytes: Option<i64>,
    pub store_max_stream_bytes: Option<i64>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Export {
    Stream {
        subject: String,
        /// Empty = public.
        accounts: Vec<String>,
        pos: Pos,
    },
    Service {
        subject: String,
        accounts: Vec<String>,
        response_type: ResponseType,
        response_threshold: Option<Duration>,
        latency: Option<ServiceLatency>,
        account_token_position: Option<u32>,
        allow_trace: bool,
        pos: Pos,
    },
}

impl Export {
    pub fn pos(&self) -> &Pos {
        match self {
            Export::Stream { pos, .. } | Export::Service { pos, .. } => pos,
        }
    }
    pub fn subject(&self) -> &str {
        match self {
            Export::Stream { subject, .. } | Export::Service { subject, .. } => subject,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResponseType {
    #[default]
    Singleton,
    Stream,
    Chunked,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLatency {
    /// Percentage 1-100, or 0 for "headers" (sampling driven by the request header).
    pub sampling: u8,
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Import {
    Stream {
        account: String,
        subject: String,
        prefix: Option<String>,
        to: Option<String>,
        pos: Pos,
    },
    Service {
        account: String,
        subject: String,
        to: Option<String>,
        share: bool,
        pos: Pos,
    },
}

impl Import {
    pub fn pos(&self) -> &Pos {
        match self {
            Import::Stream { pos, .. } | Import::Service { pos, .. } => pos,
        }
    }
    pub fn account(&self) -> &str {
        match self {
            Import::Stream { account, .. } | Import::Service { account, .. } => account,
        }
    }
}

/// A subject mapping: `source` → weighted destinations.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub source: String,
    pub destinations: Vec<MapDest>,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDest {
    pub subject: String,
    /// Percent, 1-100.
    pub weight: u8,
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFirst {
    /// `true`: TLS before INFO, no fallback.
    Always,
    /// `auto` or a duration: wait this long for a TLS ClientHello, else fall back to INFO.
    Fallback(Duration),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Additional certificate/key pairs (`certs: [{cert_file, key_file}]`).
    pub certs: Vec<(PathBuf, PathBuf)>,
    pub verify: bool,
    pub verify_and_map: bool,
    pub verify_cert_and_check_known_urls: bool,
    /// `None` = 2s default.
    pub timeout: Option<Duration>,
    pub insecure: bool,
    pub cipher_suites: Vec<String>,
    pub curve_preferences: Vec<String>,
    pub pinned_certs: Vec<String>,
    /// `None` = normal INFO-first handshake.
    pub handshake_first: Option<HandshakeFirst>,
    pub min_version: Option<String>,
    pub connection_rate_limit: Option<u64>,
    pub pos: Pos,
}

/// Compression mode for routes and leaf nodes (2.10+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionMode {
    Off,
    Accept,
    S2Uncompressed,
    S2Fast,
    S2Better,
    S2Best,
    S2Auto,
    /// `on`/`true`/`enabled`: `s2_auto` for leafs, `accept` for routes.
    On,
}

impl CompressionMode {
    /// The mode's canonical name as sent in INFO/CONNECT.
    pub fn as_str(&self) -> &'static str {
        match self {
            CompressionMode::Off => "off",
            CompressionMode::Accept => "accept",
            CompressionMode::S2Uncompressed => "s2_uncompressed",
            CompressionMode::S2Fast => "s2_fast",
            CompressionMode::S2Better => "s2_better",
            CompressionMode::S2Best => "s2_best",
            CompressionMode::S2Auto => "s2_auto",
            CompressionMode::On => "on",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "off" | "disabled" | "false" => CompressionMode::Off,
            "accept" => CompressionMode::Accept,
            "s2_uncompressed" => CompressionMode::S2Uncompressed,
            "s2_fast" | "fast" => CompressionMode::S2Fast,
            "s2_better" | "better" => CompressionMode::S2Better,
            "s2_best" | "best" => CompressionMode::S2Best,
            "s2_auto" | "auto" => CompressionMode::S2Auto,
            "on" | "enabled" | "true" => CompressionMode::On,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    pub mode: CompressionMode,
    /// `s2_auto` RTT thresholds; empty = defaults (10ms, 50ms, 100ms).
    pub rtt_thresholds: Vec<Duration>,
    pub pos: Pos,
}

/// nats-server's default route pool size (`cluster { pool_size }`).
pub const DEFAULT_ROUTE_POOL_SIZE: usize = 3;

/// `cluster {}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterOpts {
    pub name: Option<String>,
    pub host: String,
    /// 0 = no route listener (nats-server listens only when a port or listen is given).
    pub port: i32,
    /// `listen` as written (also split into host/port).
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub no_advertise: bool,
    pub routes: Vec<String>,
    pub authorization: Option<Authorization>,
    pub connect_retries: u32,
    pub pool_size: Option<i32>,
    /// Pinned accounts (`accounts: [...]`).
    pub accounts: Vec<String>,
    pub permissions: Option<RoutePermissions>,
    pub tls: Option<TlsConfig>,
    pub compression: Option<Compression>,
    pub pos: Pos,
}

impl ClusterOpts {
    /// The route pool size in effect: `pool_size` as written (0 means nats-server's
    /// default, 3); unset, no pooling (one route per peer, as 2.9 and nats-server's
    /// `pool_size: -1`) unless per-account routes are configured, which need the pooled
    /// protocol and then get nats-server's default. `None`: no pooling.
    pub fn effective_pool_size(&self) -> Option<usize> {
        match self.pool_size {
            Some(p) if p < 0 => None,
            Some(0) => Some(DEFAULT_ROUTE_POOL_SIZE),
            Some(p) => Some(p as usize),
            None if !self.accounts.is_empty() => Some(DEFAULT_ROUTE_POOL_SIZE),
            None => None,
        }
    }

    pub fn new(pos: Pos) -> Self {
        ClusterOpts {
            name: None,
            host: DEFAULT_HOST.to_string(),
            port: 0,
            listen: None,
            advertise: None,
            no_advertise: false,
            routes: Vec::new(),
            authorization: None,
            connect_retries: DEFAULT_ROUTE_CONNECT_RETRIES,
            pool_size: None,
            accounts: Vec::new(),
            permissions: None,
            tls: None,
            compression: None,
            pos,
        }
    }
}

/// Route import/export permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePermissions {
    pub import: Option<SubjectPermission>,
    pub export: Option<SubjectPermission>,
}

/// `leafnodes {}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafNodeOpts {
    pub host: String,
    /// 0 = no leafnode listener (the block may hold only `remotes`); -1 = random.
    pub port: i32,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub no_advertise: bool,
    pub authorization: Option<LeafAuthorization>,
    pub tls: Option<TlsConfig>,
    pub remotes: Vec<RemoteLeafOpts>,
    /// One interval for all remotes (`reconnect`/`reconnect_delay`/`reconnect_interval`).
    pub reconnect_interval: Duration,
    /// Canopy extension (seed): bytes spooled on disk per remote while its link is down
    /// (store-and-forward; docs/CONFIG.md, "Store-and-forward").
    pub reconnect_buffer_size: Option<u64>,
    /// Canopy extension: the directory of the remotes' spools (default: `leaf_spool`
    /// next to the JetStream store directory).
    pub store_dir: Option<PathBuf>,
    pub min_version: Option<String>,
    pub compression: Option<Compression>,
    pub isolate_leafnode_interest: bool,
    pub write_deadline: Option<Duration>,
    pub dial_timeout: Option<Duration>,
    /// Where each key of the block was written (lowercased key → position).
    pub key_pos: BTreeMap<String, Pos>,
    pub pos: Pos,
}

impl LeafNodeOpts {
    pub fn new(pos: Pos) -> Self {
        LeafNodeOpts {
            host: DEFAULT_HOST.to_string(),
            port: 0,
            listen: None,
            advertise: None,
            no_advertise: false,
            authorization: None,
            tls: None,
            remotes: Vec::new(),
            reconnect_interval: DEFAULT_LEAF_RECONNECT_INTERVAL,
            reconnect_buffer_size: None,
            store_dir: None,
            min_version: None,
            compression: None,
            isolate_leafnode_interest: false,
            write_deadline: None,
            dial_timeout: None,
            key_pos: BTreeMap::new(),
            pos,
        }
    }

    /// The spool size of remote `r` in bytes, `None` when it does not spool: its own
    /// `reconnect_buffer_size`, else the block's; `spool: true` without either takes
    /// [`DEFAULT_SPOOL_SIZE`], `spool: false` turns it off. A size of 0 is off.
    pub fn spool_size(&self, r: &RemoteLeafOpts) -> Option<u64> {
        let size = r.reconnect_buffer_size.or(self.reconnect_buffer_size);
        match r.spool {
            Some(false) => None,
            Some(true) => Some(size.unwrap_or(DEFAULT_SPOOL_SIZE)),
            None => size,
        }
        .filter(|&n| n > 0)
    }
}

/// Spool size of a remote with `spool: true` and no `reconnect_buffer_size` (64 MiB).
pub const DEFAULT_SPOOL_SIZE: u64 = 64 << 20;

/// `leafnodes.authorization {}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeafAuthorization {
    pub user: Option<String>,
    pub password: Option<String>,
    pub account: Option<String>,
    pub nkey: Option<String>,
    pub timeout: Option<Duration>,
    pub users: Vec<LeafUser>,
    pub pos: Pos,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeafUser {
    pub user: String,
    pub password: Option<String>,
    pub account: Option<String>,
    pub pos: Pos,
}

/// One entry of `leafnodes.remotes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteLeafOpts {
    pub urls: Vec<String>,
    /// Local account bridged (`account`/`local`); `None` = `$G`.
    pub account: Option<String>,
    pub credentials: Option<PathBuf>,
    /// User nkey seed (`nkey`/`seed`).
    pub nkey: Option<String>,
    pub tls: Option<TlsConfig>,
    pub deny_imports: Vec<String>,
    pub deny_exports: Vec<String>,
    pub hub: bool,
    pub no_randomize: bool,
    pub first_info_timeout: Option<Duration>,
    pub dial_timeout: Option<Duration>,
    pub compression: Option<Compression>,
    pub disabled: bool,
    pub ignore_discovered_servers: bool,
    pub isolate_leafnode_interest: bool,
    pub jetstream_cluster_migrate: bool,
    pub ws_compression: bool,
    pub ws_no_masking: bool,
    /// Canopy extension: per-remote reconnect interval.
    pub reconnect_interval: Option<Duration>,
    /// Canopy extension: `false` = do not reconnect after the link drops.
    pub reconnect: Option<bool>,
    /// Canopy extension: TCP connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Canopy extension: subject mappings applied on this remote.
    pub account_mappings: Vec<Mapping>,
    /// Canopy extension: this remote's spool size (overrides `leafnodes.reconnect_buffer_size`).
    pub reconnect_buffer_size: Option<u64>,
    /// Canopy extension: whether this remote spools while its link is down (default: when
    /// a `reconnect_buffer_size` applies to it).
    pub spool: Option<bool>,
    /// Where each key of the remote was written (lowercased key → position).
    pub key_pos: BTreeMap<String, Pos>,
    pub pos: Pos,
}

/// JetStream `sync_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    Always,
    Every(Duration),
}

/// `jetstream {}` (or `jetstream: enabled|true`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JetStreamOpts {
    pub enabled: bool,
    pub store_dir: Option<PathBuf>,
    pub max_memory_store: Option<i64>,
    pub max_file_store: Option<i64>,
    pub domain: Option<String>,
    pub sync_interval: Option<SyncInterval>,
    pub extension_hint: Option<String>,
    pub unique_tag: Option<String>,
    pub strict: Option<bool>,
    pub max_buffered_size: Option<i64>,
    pub max_buffered_msgs: Option<i64>,
    pub max_outstanding_catchup: Option<i64>,
    pub request_queue_limit: Option<i64>,
    pub cipher: Option<String>,
    pub key: Option<String>,
    pub limits: Option<RawBlock>,
    pub pos: Pos,
}

/// `websocket {}`: the WebSocket listener for clients. Keys the server does not act on
/// yet are refused at start ([`Options::unsupported`]), with their position in `key_pos`.
/// `authorization` (user, password, token, timeout), `no_auth_user` and the cookies
/// override the client authorization for websocket clients, as in nats-server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebsocketOpts {
    pub host: Option<String>,
    pub port: i32,
    pub advertise: Option<String>,
    pub no_tls: bool,
    pub compression: bool,
    pub tls: Option<TlsConfig>,
    pub same_origin: bool,
    pub allowed_origins: Vec<String>,
    pub handshake_timeout: Option<Duration>,
    pub no_auth_user: Option<String>,
    pub authorization: Option<Authorization>,
    pub jwt_cookie: Option<String>,
    /// Cookies of the upgrade request whose values stand in for CONNECT's `user`, `pass`
    /// and `auth_token` when CONNECT leaves them empty.
    pub user_cookie: Option<String>,
    pub pass_cookie: Option<String>,
    pub token_cookie: Option<String>,
    /// Extra HTTP headers of the upgrade response, in file order.
    pub headers: Vec<(String, String)>,
    /// Where each key was set (for errors about one key).
    pub key_pos: BTreeMap<String, Pos>,
    pub pos: Pos,
}

/// Canopy extension: `prometheus { host, port }` (or `prometheus: true` / a port number).
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusOpts {
    pub host: String,
    pub port: i32,
    pub pos: Pos,
}

/// A server feature a configuration can turn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    Cluster,
    ClusterTls,
    LeafnodeListener,
    LeafnodeRemotes,
    LeafnodeTls,
    LeafnodeCompression,
    Gateway,
    Websocket,
    Mqtt,
    JetStream,
    Tls,
    HttpsMonitor,
    Syslog,
    Accounts,
    AccountImports,
    AccountExports,
    AccountJetStream,
    Mappings,
    /// Operator (JWT) mode: `operator`, `resolver`.
    OperatorMode,
    /// `resolver: URL(...)` (an HTTP account server).
    UrlResolver,
    /// nats-server keys kept raw (trusted keys, resolver_tls, ocsp, ...).
    Unmodelled,
}

/// Features the server does not implement yet; [`Options::unsupported`] reports uses of
/// these. The server lead removes entries as features land.
pub const NOT_IMPLEMENTED: &[Feature] = &[
    Feature::Gateway,
    Feature::Mqtt,
    Feature::Syslog,
    Feature::UrlResolver,
    Feature::Unmodelled,
];

/// One use of a [`Feature`] in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureUse {
    pub feature: Feature,
    pub pos: Pos,
    pub what: String,
}

impl Options {
    /// Every feature this configuration turns on, with where.
    pub fn features_used(&self) -> Vec<FeatureUse> {
        let mut out = Vec::new();
        let mut add = |feature, pos: &Pos, what: String| {
            out.push(FeatureUse {
                feature,
                pos: pos.clone(),
                what,
            })
        };
        if let Some(c) = &self.cluster {
            add(Feature::Cluster, &c.pos, "cluster (routes)".into());
            if let Some(t) = &c.tls {
                add(Feature::ClusterTls, &t.pos, "cluster TLS".into());
            }
        }
        if let Some(l) = &self.leafnodes {
            if l.port != 0 {
                add(
                    Feature::LeafnodeListener,
                    &l.pos,
                    "leafnode listener".into(),
                );
            }
            for r in &l.remotes {
                add(
                    Feature::LeafnodeRemotes,
                    &r.pos,
                    format!("leafnode remote {}", r.urls.join(", ")),
                );
                if let Some(t) = &r.tls {
                    add(Feature::LeafnodeTls, &t.pos, "leafnode remote TLS".into());
                }
                if let Some(c) = &r.compression {
                    add(
                        Feature::LeafnodeCompression,
                        &c.pos,
                        "leafnode compression".into(),
                    );
                }
            }
            if let Some(t) = &l.tls {
                add(Feature::LeafnodeTls, &t.pos, "leafnode TLS".into());
            }
            if let Some(c) = &l.compression {
                add(
                    Feature::LeafnodeCompression,
                    &c.pos,
                    "leafnode compression".into(),
                );
            }
        }
        if let Some(g) = &self.gateway {
            add(Feature::Gateway, &g.pos, "gateway".into());
        }
        if let Some(w) = &self.websocket {
            add(Feature::Websocket, &w.pos, "websocket".into());
        }
        if let Some(m) = &self.mqtt {
            add(Feature::Mqtt, &m.pos, "mqtt".into());
        }
        if let Some(j) = &self.jetstream {
            if j.enabled {
                add(Feature::JetStream, &j.pos, "jetstream".into());
            }
        }
        if let Some(t) = &self.tls {
            add(Feature::Tls, &t.pos, "client TLS".into());
        }
        if let Some(p) = self.https_port {
            let pos = self.key_pos.get("https_port").or(self.key_pos.get("https"));
            add(
                Feature::HttpsMonitor,
                pos.unwrap_or(&Pos::default()),
                format!("HTTPS monitoring on port {p}"),
            );
        }
        if self.syslog || self.remote_syslog.is_some() {
            let pos = self
                .key_pos
                .get("syslog")
                .or(self.key_pos.get("remote_syslog"));
            add(
                Feature::Syslog,
                pos.unwrap_or(&Pos::default()),
                "syslog".into(),
            );
        }
        for a in &self.accounts {
            add(Feature::Accounts, &a.pos, format!("account {}", a.name));
            for i in &a.imports {
                add(
                    Feature::AccountImports,
                    i.pos(),
                    format!("import from account {} into {}", i.account(), a.name),
                );
            }
            for e in &a.exports {
                add(
                    Feature::AccountExports,
                    e.pos(),
                    format!("export of {} from account {}", e.subject(), a.name),
                );
            }
            for m in &a.mappings {
                add(
                    Feature::Mappings,
                    &m.pos,
                    format!("mapping of {} in account {}", m.source, a.name),
                );
            }
            if let Some(j) = &a.jetstream {
                if j.enabled {
                    add(
                        Feature::AccountJetStream,
                        &j.pos,
                        format!("jetstream in account {}", a.name),
                    );
                }
            }
        }
        for m in &self.mappings {
            add(
                Feature::Mappings,
                &m.pos,
                format!("mapping of {}", m.source),
            );
        }
        if !self.operators.is_empty() {
            let pos = self
                .key_pos
                .get("operator")
                .or(self.key_pos.get("operators"));
            add(
                Feature::OperatorMode,
                pos.unwrap_or(&Pos::default()),
                "operator (JWT) mode".into(),
            );
        }
        if let Some(ResolverOpts::Url { url, pos }) = &self.resolver {
            add(
                Feature::UrlResolver,
                pos,
                format!("URL account resolver {url}"),
            );
        }
        for r in &self.unmodelled {
            add(Feature::Unmodelled, &r.pos, format!("\"{}\"", r.key));
        }
        out
    }

    /// Set-but-not-yet-implemented features (those in [`NOT_IMPLEMENTED`]), as
    /// `(where, what)`. The server decides at start whether to refuse them.
    pub fn unsupported(&self) -> Vec<(Pos, String)> {
        self.features_used()
            .into_iter()
            .filter(|u| NOT_IMPLEMENTED.contains(&u.feature))
            .map(|u| (u.pos, format!("{} is not supported yet", u.what)))
            .collect()
    }

    /// Canopy extensions (keys nats-server would reject) used by this configuration.
    pub fn extensions_used(&self) -> Vec<(Pos, String)> {
        let mut out = Vec::new();
        if let Some(p) = &self.prometheus {
            out.push((p.pos.clone(), "prometheus (built-in /metrics)".to_string()));
        }
        if let Some(l) = &self.leafnodes {
            if l.reconnect_buffer_size.is_some() {
                let pos = l
                    .key_pos
                    .get("reconnect_buffer_size")
                    .unwrap_or(&l.pos)
                    .clone();
                out.push((pos, "leafnodes.reconnect_buffer_size".to_string()));
            }
            if let Some(pos) = l.key_pos.get("store_dir") {
                out.push((pos.clone(), "leafnodes.store_dir".to_string()));
            }
            for r in &l.remotes {
                for key in [
                    "reconnect_interval",
                    "reconnect",
                    "connect_timeout",
                    "account_mappings",
                    "reconnect_buffer_size",
                    "spool",
                ] {
                    if let Some(pos) = r.key_pos.get(key) {
                        out.push((pos.clone(), format!("leafnodes.remotes[].{key}")));
                    }
                }
            }
        }
        out
    }

    /// Non-fatal findings: deprecated forms, suspicious values, fake bcrypt hashes.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut out = self.build_warnings.clone();
        crate::validate::warnings(self, &mut out);
        out
    }

    /// Cross-field checks nats-server performs at start.
    pub fn validate(&self) -> Result<(), ConfErrors> {
        let mut errs: Vec<ConfError> = Vec::new();
        crate::validate::validate(self, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfErrors(errs))
        }
    }

    /// The account names defined in the configuration.
    pub fn account_names(&self) -> impl Iterator<Item = &str> {
        self.accounts.iter().map(|a| a.name.as_str())
    }

    /// Finds a configured account by (case-sensitive) name.
    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The config file's directory (for resolving relative paths), if loaded from a file.
    pub fn config_dir(&self) -> Option<&Path> {
        self.config_file.as_deref().and_then(Path::parent)
    }
}
