//! Built-in Prometheus metrics: renders the server's counters and gauges (and per-leaf
//! series) in the Prometheus text exposition format 0.0.4, served at `/metrics` on the
//! monitoring port and, with the Canopy `prometheus { host, port }` extension, alone on a
//! port of its own ([`serve_metrics`]).
//!
//! Naming: `nats_<area>_<what>`, where the area is `server` (what `/varz` shows), `account`
//! (what `/accstatz` shows, labelled by `account`), `leafnodes` (what `/leafz` shows,
//! labelled by `name`, `account`, `remote`) and `routes`. Counters keep the `/varz` field
//! names (no `_total` suffix, which the 0.0.4 format does not require) so that a metric
//! maps to the JSON field an operator already knows. docs/MONITORING.md lists them all.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::core::conn::ConnKind;
use crate::server::version;
use crate::server::Server;

/// The `Content-Type` of a scrape response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One leaf node connection (or configured leaf remote) as metrics see it;
/// [`leaf_metrics`] builds them and [`leaf_series`] turns them into `nats_leafnodes_*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeafMetric {
    /// The peer's server name (label `name`; empty while a configured remote is down).
    pub name: String,
    /// The local account the leaf is bound to (label `account`).
    pub account: String,
    /// The remote's `host:port`: the URL we dialled for a solicited remote (without
    /// credentials), the peer's address for an accepted leaf (label `remote`).
    pub remote: String,
    /// True while the connection is up (a configured remote may be down and retrying).
    pub connected: bool,
    /// Messages and bytes sent to the leaf.
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    /// Messages and bytes received from the leaf.
    pub recv_msgs: u64,
    pub recv_bytes: u64,
    /// Bytes that crossed the socket each way (compressed, framing included): with S2
    /// on, compare with the payload bytes above.
    pub wire_sent_bytes: u64,
    pub wire_recv_bytes: u64,
    /// Last measured round-trip time (zero when unknown).
    pub rtt: Duration,
    /// How many times this remote reconnected after its first connection.
    pub reconnects: u64,
    /// Store-and-forward: messages and bytes in the remote's spool, and the oldest
    /// discarded because it was full.
    pub buffered_msgs: u64,
    pub buffered_bytes: u64,
    pub buffer_dropped_msgs: u64,
}

impl LeafMetric {
    fn set_spool(&mut self, r: &crate::server::links::RemoteState) {
        if let Some(sp) = &r.spool {
            self.buffered_msgs = sp.stats.msgs.load(Ordering::Relaxed);
            self.buffered_bytes = sp.stats.bytes.load(Ordering::Relaxed);
            self.buffer_dropped_msgs = sp.stats.dropped.load(Ordering::Relaxed);
        }
    }
}

/// The leaf series to export: one per live leaf link, plus one per configured remote
/// that is down (so its `nats_leafnodes_up` reads 0 and its reconnects stay visible).
pub fn leaf_metrics(server: &Server) -> Vec<LeafMetric> {
    let mut states = server.remote_states();
    let mut out = Vec::new();
    for l in server.leaf_links() {
        let account = l.conn.meta.lock().account.clone();
        // A solicited link's reconnect count lives in its remote's state.
        let state = l.solicited.then(|| {
            states.iter().position(|r| {
                r.account == account
                    && r.connected.load(Ordering::Relaxed)
                    && r.connected_url.lock().as_deref() == Some(l.remote_url.as_str())
            })
        });
        let remote_state = state.flatten().map(|i| states.swap_remove(i));
        let reconnects = match &remote_state {
            Some(r) => r.reconnects.load(Ordering::Relaxed),
            None => l.reconnects.load(Ordering::Relaxed),
        };
        let st = &l.conn.stats;
        let mut m = LeafMetric {
            name: l.peer_name.clone(),
            account,
            remote: l.remote_url.clone(),
            connected: true,
            sent_msgs: st.out_msgs.load(Ordering::Relaxed),
            sent_bytes: st.out_bytes.load(Ordering::Relaxed),
            recv_msgs: st.in_msgs.load(Ordering::Relaxed),
            recv_bytes: st.in_bytes.load(Ordering::Relaxed),
            wire_sent_bytes: st.wire_out_bytes.load(Ordering::Relaxed),
            wire_recv_bytes: st.wire_in_bytes.load(Ordering::Relaxed),
            rtt: Duration::from_nanos(l.conn.rtt_ns.load(Ordering::Relaxed)),
            reconnects,
            ..LeafMetric::default()
        };
        if let Some(r) = &remote_state {
            m.set_spool(r);
        }
        out.push(m);
    }
    for r in states {
        // Down (or between attempts): the peer's name is unknown; the remote is named
        // by host:port only, never with the credentials a URL may carry.
        let remote = r
            .connected_url
            .lock()
            .clone()
            .or_else(|| {
                r.urls
                    .first()
                    .and_then(|u| crate::roles::leaf::LeafUrl::parse(u).ok())
                    .map(|u| u.hostport())
            })
            .unwrap_or_default();
        let mut m = LeafMetric {
            account: r.account.clone(),
            remote,
            connected: false,
            reconnects: r.reconnects.load(Ordering::Relaxed),
            ..LeafMetric::default()
        };
        m.set_spool(&r);
        out.push(m);
    }
    out
}

/// Metric type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A small writer for the text format: one `# HELP`/`# TYPE` header per family, then
/// its samples. Label values are escaped; names are our own constants.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// Writes one sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Renders every series for a scrape.
pub fn render(s: &Server, leafs: &[LeafMetric]) -> String {
    let mut e = Exposition::new();
    server_series(&mut e, s);
    account_series(&mut e, s);
    route_series(&mut e, s);
    leaf_series(&mut e, leafs);
    jetstream_series(&mut e, s);
    e.finish()
}

/// `nats_jetstream_*`: the server's JetStream totals, and per stream and per consumer the
/// state `/jsz?consumers=true` reports (labels `account`, `stream`, `consumer`). Nothing
/// when JetStream is off.
fn jetstream_series(e: &mut Exposition, s: &Server) {
    use Kind::{Counter, Gauge};
    let Some(js) = s.jetstream() else {
        return;
    };
    let v = js.jsz(true, true, true, false);
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    for (name, key, kind, help) in [
        (
            "nats_jetstream_memory_bytes",
            "memory",
            Gauge,
            "Memory used by JetStream streams",
        ),
        (
            "nats_jetstream_storage_bytes",
            "storage",
            Gauge,
            "Disk used by JetStream streams",
        ),
        ("nats_jetstream_streams", "streams", Gauge, "Streams"),
        ("nats_jetstream_consumers", "consumers", Gauge, "Consumers"),
        (
            "nats_jetstream_messages",
            "messages",
            Gauge,
            "Messages stored in all streams",
        ),
        (
            "nats_jetstream_bytes",
            "bytes",
            Gauge,
            "Bytes stored in all streams",
        ),
    ] {
        e.single(name, kind, help, num(&v, key));
    }
    e.single(
        "nats_jetstream_api_requests",
        Counter,
        "JetStream API requests answered",
        num(&v["api"], "total"),
    );
    e.single(
        "nats_jetstream_api_errors",
        Counter,
        "JetStream API requests answered with an error",
        num(&v["api"], "errors"),
    );
    let empty = Vec::new();
    let accounts = v["account_details"].as_array().unwrap_or(&empty);
    let streams = || {
        accounts.iter().flat_map(|a| {
            let acc = a["name"].as_str().unwrap_or("");
            a["stream_detail"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(move |st| (acc, st))
        })
    };
    let stream_families: [(&str, &str, &str); 5] = [
        (
            "nats_jetstream_stream_messages",
            "messages",
            "Messages in the stream",
        ),
        (
            "nats_jetstream_stream_bytes",
            "bytes",
            "Bytes in the stream",
        ),
        (
            "nats_jetstream_stream_first_seq",
            "first_seq",
            "First sequence in the stream",
        ),
        (
            "nats_jetstream_stream_last_seq",
            "last_seq",
            "Last sequence in the stream",
        ),
        (
            "nats_jetstream_stream_consumers",
            "consumer_count",
            "Consumers of the stream",
        ),
    ];
    for (name, key, help) in stream_families {
        e.family(name, Gauge, help);
        for (acc, st) in streams() {
            let sname = st["name"].as_str().unwrap_or("");
            e.sample(
                name,
                &[("account", acc), ("stream", sname)],
                num(&st["state"], key),
            );
        }
    }
    let consumer_families: [(&str, &str, &str); 6] = [
        (
            "nats_jetstream_consumer_num_pending",
            "num_pending",
            "Messages not yet delivered",
        ),
        (
            "nats_jetstream_consumer_num_ack_pending",
            "num_ack_pending",
            "Messages delivered and not acknowledged",
        ),
        (
            "nats_jetstream_consumer_num_redelivered",
            "num_redelivered",
            "Messages redelivered",
        ),
        (
            "nats_jetstream_consumer_num_waiting",
            "num_waiting",
            "Waiting pull requests",
        ),
        (
            "nats_jetstream_consumer_delivered_stream_seq",
            "delivered",
            "Last stream sequence delivered",
        ),
        (
            "nats_jetstream_consumer_ack_floor_stream_seq",
            "ack_floor",
            "Stream sequence acknowledged up to",
        ),
    ];
    for (name, key, help) in consumer_families {
        e.family(name, Gauge, help);
        for (acc, st) in streams() {
            let sname = st["name"].as_str().unwrap_or("");
            for c in st["consumer_detail"].as_array().unwrap_or(&empty) {
                let value = match key {
                    "delivered" | "ack_floor" => num(&c[key], "stream_seq"),
                    _ => num(c, key),
                };
                let cname = c["name"].as_str().unwrap_or("");
                e.sample(
                    name,
                    &[("account", acc), ("stream", sname), ("consumer", cname)],
                    value,
                );
            }
        }
    }
}

fn server_series(e: &mut Exposition, s: &Server) {
    use Kind::{Counter, Gauge};
    let st = &s.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let clients = s
        .connections()
        .iter()
        .filter(|c| c.kind == ConnKind::Client)
        .count();
    let subs: usize = s.accounts().iter().map(|a| a.sublist.count()).sum();
    let now = SystemTime::now();
    let start = s
        .start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let up = now
        .duration_since(s.start)
        .unwrap_or_default()
        .as_secs_f64();

    e.family(
        "nats_server_info",
        Gauge,
        "Server identity; the value is always 1",
    )
    .sample(
        "nats_server_info",
        &[
            ("server_id", &s.id),
            ("server_name", &s.name),
            ("version", version::NATS_COMPAT_VERSION),
            ("canopy_version", version::CANOPY_VERSION),
        ],
        1.0,
    );
    e.single(
        "nats_server_start_time_seconds",
        Gauge,
        "Start time of the server since the Unix epoch, in seconds",
        start,
    );
    e.single(
        "nats_server_uptime_seconds",
        Gauge,
        "Seconds since the server started",
        up,
    );
    e.single(
        "nats_server_connections",
        Gauge,
        "Client connections currently open (varz connections)",
        clients as f64,
    );
    e.single(
        "nats_server_total_connections",
        Counter,
        "Client connections accepted since start (varz total_connections)",
        load(&st.total_connections),
    );
    e.single(
        "nats_server_subscriptions",
        Gauge,
        "Subscriptions in all accounts (varz subscriptions)",
        subs as f64,
    );
    e.single(
        "nats_server_in_msgs",
        Counter,
        "Messages received from connections (varz in_msgs)",
        load(&st.in_msgs),
    );
    e.single(
        "nats_server_out_msgs",
        Counter,
        "Messages sent to connections (varz out_msgs)",
        load(&st.out_msgs),
    );
    e.single(
        "nats_server_in_bytes",
        Counter,
        "Payload bytes received from connections (varz in_bytes)",
        load(&st.in_bytes),
    );
    e.single(
        "nats_server_out_bytes",
        Counter,
        "Payload bytes sent to connections (varz out_bytes)",
        load(&st.out_bytes),
    );
    e.single(
        "nats_server_slow_consumers",
        Counter,
        "Connections closed as slow consumers (varz slow_consumers)",
        load(&st.slow_consumers),
    );
    e.single(
        "nats_server_auth_failures",
        Counter,
        "Failed client authentications (Canopy varz auth_failures)",
        load(&st.auth_failures),
    );
    e.single(
        "nats_server_tls_handshake_failures",
        Counter,
        "Failed TLS handshakes on any listener or outgoing connection (Canopy varz tls_handshake_failures)",
        load(&st.tls_handshake_failures),
    );
    e.single(
        "nats_server_permission_denials",
        Counter,
        "Publish or subscribe permission violations (Canopy varz permission_denials)",
        load(&st.permission_denials),
    );
    e.single(
        "nats_server_mem_bytes",
        Gauge,
        "Resident memory of the process (varz mem)",
        crate::monitor::mem_rss() as f64,
    );
    e.single(
        "nats_server_cpu_percent",
        Gauge,
        "Average CPU use since start, in percent of one core (varz cpu)",
        crate::monitor::cpu_percent(s.start),
    );
}

fn account_series(e: &mut Exposition, s: &Server) {
    use Kind::{Counter, Gauge};
    let accounts = s.accounts();
    let families: [(&str, Kind, &str); 5] = [
        (
            "nats_account_connections",
            Gauge,
            "Client connections bound to the account",
        ),
        (
            "nats_account_leafnodes",
            Gauge,
            "Leaf node connections bound to the account",
        ),
        (
            "nats_account_subscriptions",
            Gauge,
            "Subscriptions in the account's subject table",
        ),
        (
            "nats_account_in_msgs",
            Counter,
            "Messages published into the account",
        ),
        (
            "nats_account_out_msgs",
            Counter,
            "Messages delivered from the account",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        e.family(name, *kind, help);
        for a in &accounts {
            let v = match i {
                0 => a.client_connections() as f64,
                1 => a.num_leafs.load(Ordering::Relaxed) as f64,
                2 => a.sublist.count() as f64,
                3 => a.in_msgs.load(Ordering::Relaxed) as f64,
                _ => a.out_msgs.load(Ordering::Relaxed) as f64,
            };
            e.sample(name, &[("account", &a.name)], v);
        }
    }
}

/// The `nats_routes_*` series: a connection count plus per-connection series labelled by
/// the peer's `name`, and `pool` (the pool index, or `account:<name>` for a dedicated
/// route), with `compression` (what `/routez` shows).
fn route_series(e: &mut Exposition, s: &Server) {
    use Kind::Counter;
    let routes = s.routes();
    e.single(
        "nats_routes_connections",
        Kind::Gauge,
        "Route connections currently open (varz routes)",
        routes.len() as f64,
    );
    type Get = fn(&crate::core::conn::ConnStats) -> u64;
    let families: [(&str, &str, Get); 6] = [
        ("nats_routes_sent_msgs", "Messages sent on the route connection", |c| {
            c.out_msgs.load(Ordering::Relaxed)
        }),
        ("nats_routes_recv_msgs", "Messages received on the route connection", |c| {
            c.in_msgs.load(Ordering::Relaxed)
        }),
        ("nats_routes_sent_bytes", "Payload bytes sent on the route connection", |c| {
            c.out_bytes.load(Ordering::Relaxed)
        }),
        ("nats_routes_recv_bytes", "Payload bytes received on the route connection", |c| {
            c.in_bytes.load(Ordering::Relaxed)
        }),
        (
            "nats_routes_wire_sent_bytes",
            "Bytes written to the route connection's socket (after S2 compression, framing included)",
            |c| c.wire_out_bytes.load(Ordering::Relaxed),
        ),
        (
            "nats_routes_wire_recv_bytes",
            "Bytes read from the route connection's socket (before S2 decompression, framing included)",
            |c| c.wire_in_bytes.load(Ordering::Relaxed),
        ),
    ];
    let labels: Vec<(String, String)> = routes
        .iter()
        .map(|r| {
            let pool = match &r.account {
                Some(a) => format!("account:{a}"),
                None => r.pool_idx.to_string(),
            };
            (pool, r.compression_shown())
        })
        .collect();
    for (name, help, get) in families {
        e.family(name, Counter, help);
        for (r, (pool, compression)) in routes.iter().zip(&labels) {
            let l = [
                ("name", r.remote_name.as_str()),
                ("pool", pool.as_str()),
                ("compression", compression.as_str()),
            ];
            e.sample(name, &l, get(&r.conn.stats) as f64);
        }
    }
}

/// The `nats_leafnodes_*` series: a connection count plus per-leaf series labelled by
/// `name`, `account` and `remote`.
pub fn leaf_series(e: &mut Exposition, leafs: &[LeafMetric]) {
    use Kind::{Counter, Gauge};
    let up = leafs.iter().filter(|l| l.connected).count();
    e.single(
        "nats_leafnodes_connections",
        Gauge,
        "Leaf node connections currently open (varz leafnodes)",
        up as f64,
    );
    type Get = fn(&LeafMetric) -> f64;
    let families: [(&str, Kind, &str, Get); 12] = [
        (
            "nats_leafnodes_up",
            Gauge,
            "1 while the leaf connection is up, 0 while a configured remote is retrying",
            |l| if l.connected { 1.0 } else { 0.0 },
        ),
        (
            "nats_leafnodes_sent_msgs",
            Counter,
            "Messages sent to the leaf node",
            |l| l.sent_msgs as f64,
        ),
        (
            "nats_leafnodes_recv_msgs",
            Counter,
            "Messages received from the leaf node",
            |l| l.recv_msgs as f64,
        ),
        (
            "nats_leafnodes_sent_bytes",
            Counter,
            "Payload bytes sent to the leaf node",
            |l| l.sent_bytes as f64,
        ),
        (
            "nats_leafnodes_recv_bytes",
            Counter,
            "Payload bytes received from the leaf node",
            |l| l.recv_bytes as f64,
        ),
        (
            "nats_leafnodes_wire_sent_bytes",
            Counter,
            "Bytes written to the leaf connection's socket (after S2 compression, framing included)",
            |l| l.wire_sent_bytes as f64,
        ),
        (
            "nats_leafnodes_wire_recv_bytes",
            Counter,
            "Bytes read from the leaf connection's socket (before S2 decompression, framing included)",
            |l| l.wire_recv_bytes as f64,
        ),
        (
            "nats_leafnodes_rtt_seconds",
            Gauge,
            "Last measured round-trip time to the leaf node",
            |l| l.rtt.as_secs_f64(),
        ),
        (
            "nats_leafnodes_reconnects",
            Counter,
            "Reconnections of the leaf remote since the server started",
            |l| l.reconnects as f64,
        ),
        (
            "nats_leafnodes_buffered_msgs",
            Gauge,
            "Messages in the remote's store-and-forward spool",
            |l| l.buffered_msgs as f64,
        ),
        (
            "nats_leafnodes_buffered_bytes",
            Gauge,
            "Bytes (store records) in the remote's store-and-forward spool",
            |l| l.buffered_bytes as f64,
        ),
        (
            "nats_leafnodes_buffer_dropped_msgs",
            Counter,
            "Oldest messages discarded because the remote's spool was full",
            |l| l.buffer_dropped_msgs as f64,
        ),
    ];
    for (name, kind, help, get) in families {
        e.family(name, kind, help);
        for l in leafs {
            let labels = [
                ("name", l.name.as_str()),
                ("account", l.account.as_str()),
                ("remote", l.remote.as_str()),
            ];
            e.sample(name, &labels, get(l));
        }
    }
}

/// Serves `/metrics` alone (the `prometheus { host, port }` listener) until shutdown.
/// Every other path answers 404.
pub async fn serve_metrics(server: Arc<Server>, listener: TcpListener) {
    crate::monitor::serve_http(server, listener, crate::monitor::Endpoints::MetricsOnly).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "help with \\ and\nnewline")
            .sample("x_total", &[("a", "q\"uo\\te\nnl")], 3.0)
            .sample("x_total", &[], 0.25);
        let t = e.finish();
        assert_eq!(
            t,
            "# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\\nnl\"} 3\nx_total 0.25\n"
        );
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1e-7), "0.0000001");
    }

    #[test]
    fn leaf_series_per_leaf() {
        let leafs = vec![
            LeafMetric {
                name: "leaf-a".into(),
                account: "APP".into(),
                remote: "hub:7422".into(),
                connected: true,
                sent_msgs: 5,
                recv_msgs: 7,
                rtt: Duration::from_micros(1500),
                reconnects: 2,
                ..Default::default()
            },
            LeafMetric {
                name: "leaf-b".into(),
                account: "$G".into(),
                remote: "10.0.0.2:7422".into(),
                ..Default::default()
            },
        ];
        let mut e = Exposition::new();
        leaf_series(&mut e, &leafs);
        let t = e.finish();
        assert!(t.contains("\nnats_leafnodes_connections 1\n"), "{t}");
        assert!(t.contains(
            "nats_leafnodes_sent_msgs{name=\"leaf-a\",account=\"APP\",remote=\"hub:7422\"} 5\n"
        ));
        assert!(t.contains(
            "nats_leafnodes_rtt_seconds{name=\"leaf-a\",account=\"APP\",remote=\"hub:7422\"} 0.0015\n"
        ));
        assert!(t.contains(
            "nats_leafnodes_up{name=\"leaf-b\",account=\"$G\",remote=\"10.0.0.2:7422\"} 0\n"
        ));
        assert!(t.contains("# TYPE nats_leafnodes_reconnects counter\n"));
    }

    #[test]
    fn no_leafs_still_exports_the_count() {
        let mut e = Exposition::new();
        leaf_series(&mut e, &[]);
        let t = e.finish();
        assert!(t.contains("\nnats_leafnodes_connections 0\n"));
        assert!(t.contains("# TYPE nats_leafnodes_recv_msgs counter\n"));
    }
}
