//! HTTP monitoring with nats-server's endpoints, JSON field names and query parameters:
//! `/varz`, `/connz`, `/routez`, `/gatewayz`, `/leafz`, `/subsz`, `/accountz`,
//! `/accstatz`, `/healthz`, `/` — plus Canopy's built-in Prometheus `/metrics`
//! ([`crate::monitor::metrics`]) and the live topology view `/topologyz`, `/topology`
//! ([`crate::monitor::topology`]). docs/MONITORING.md describes every endpoint and the known
//! gaps.

pub mod metrics;
pub mod topology;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::core::account::GLOBAL_ACCOUNT;
use crate::core::conn::{ConnKind, ConnShared};
use crate::server::version;
use crate::server::Server;

/// Which paths a listener answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// The monitoring port: every endpoint, `/metrics` included.
    All,
    /// The Canopy `prometheus` port: `/metrics` only.
    MetricsOnly,
}

/// A bad query parameter; answered with HTTP 400 and this text, as nats-server does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("Error decoding {kind} for '{key}': invalid value \"{value}\"")]
    BadValue {
        kind: &'static str,
        key: String,
        value: String,
    },
    #[error("Error decoding state for {0}")]
    BadState(String),
    #[error("invalid sorting option: {0}")]
    BadSort(String),
    #[error("sort by {0} only valid on closed connections")]
    SortNeedsClosed(String),
    #[error("invalid test subject, must be valid publish subject: {0}")]
    BadTestSubject(String),
}

/// Accepts monitoring connections until shutdown.
pub async fn serve(server: Arc<Server>, listener: TcpListener) {
    serve_http(server, listener, Endpoints::All).await;
}

/// The HTTP accept loop shared by the monitoring and the metrics listeners.
pub(crate) async fn serve_http(server: Arc<Server>, listener: TcpListener, which: Endpoints) {
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let s = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let s = s.clone();
                async move { Ok::<_, Infallible>(handle_blocking(s, req.uri().clone(), which).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The HTTPS monitoring listener (`https_port`): TLS with the top-level certificate, then
/// the same endpoints as `http_port`.
pub async fn serve_https(server: Arc<Server>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((stream, addr)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let s = server.clone();
        tokio::spawn(async move {
            let Some(tls) = s.tls().https.clone() else {
                return;
            };
            let stream = match crate::auth::tls::accept_first(&tls, stream).await {
                Ok(st) => st,
                Err(e) => {
                    crate::auth::tls::count_failure(&s.stats);
                    tracing::error!(
                        "{addr} - TLS handshake error on the HTTPS monitoring port: {e}"
                    );
                    return;
                }
            };
            let s2 = s.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let s = s2.clone();
                async move {
                    Ok::<_, Infallible>(handle_blocking(s, req.uri().clone(), Endpoints::All).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Answers a request on the blocking pool: `/connz`, `/subsz` and the like walk every
/// connection or subscription, which must not hold a runtime worker (and the readers
/// queued on it) for that long.
async fn handle_blocking(
    server: Arc<Server>,
    uri: hyper::Uri,
    which: Endpoints,
) -> Response<Full<Bytes>> {
    tokio::task::spawn_blocking(move || handle(&server, &uri, which))
        .await
        .unwrap_or_else(|e| {
            tracing::error!("monitoring request failed: {e}");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "internal error".into(),
            )
        })
}

/// The status a monitoring request (`/connz?subs=1`, say) gets, as the monitoring port
/// would answer it; `None` when it is not a valid request target. For the fuzz target.
pub fn answer(server: &Arc<Server>, path_and_query: &str) -> Option<u16> {
    let uri: hyper::Uri = path_and_query.parse().ok()?;
    Some(handle(server, &uri, Endpoints::All).status().as_u16())
}

/// Decoded query parameters; the first occurrence of a key wins (Go's `Values.Get`).
pub type Query = HashMap<String, String>;

/// Parses a query string (`application/x-www-form-urlencoded`, as Go's `url.ParseQuery`);
/// the first value of a repeated key wins, as `r.URL.Query().Get` returns it.
pub fn parse_query(q: &str) -> Query {
    let mut out = Query::new();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// Go's `strconv.ParseBool`; absent or empty means false.
fn q_bool(q: &Query, key: &str) -> Result<bool, QueryError> {
    match q.get(key).map(String::as_str) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(QueryError::BadValue {
            kind: "boolean",
            key: key.into(),
            value: v.into(),
        }),
    }
}

/// A signed integer parameter; absent or empty means `None`.
fn q_int(q: &Query, key: &str) -> Result<Option<i64>, QueryError> {
    match q.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| QueryError::BadValue {
            kind: "int",
            key: key.into(),
            value: v.into(),
        }),
    }
}

/// `subs`: false, true, or `detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subs {
    None,
    List,
    Detail,
}

fn q_subs(q: &Query) -> Result<Subs, QueryError> {
    if q.get("subs").is_some_and(|v| v == "detail") {
        return Ok(Subs::Detail);
    }
    Ok(if q_bool(q, "subs")? {
        Subs::List
    } else {
        Subs::None
    })
}

/// Per-endpoint request counters (`/varz` `http_req_stats`), per server so that several
/// servers in one process (tests) keep their own.
fn http_req_stats() -> &'static Mutex<HashMap<String, BTreeMap<&'static str, u64>>> {
    static STATS: OnceLock<Mutex<HashMap<String, BTreeMap<&'static str, u64>>>> = OnceLock::new();
    STATS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn count_request(s: &Server, path: &'static str) {
    *http_req_stats()
        .lock()
        .entry(s.id.clone())
        .or_default()
        .entry(path)
        .or_insert(0) += 1;
}

fn text_response(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// JSON (pretty, as nats-server writes it), or JSONP when `callback` is given.
fn json_response(body: &Value, q: &Query) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(body).unwrap_or_else(|_| "{}".into());
    match q.get("callback").filter(|c| !c.is_empty()) {
        Some(cb) => text_response(
            StatusCode::OK,
            "application/javascript",
            format!("{cb}({text})"),
        ),
        None => text_response(StatusCode::OK, "application/json", text),
    }
}

fn result_response(r: Result<Value, QueryError>, q: &Query) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json_response(&v, q),
        Err(e) => text_response(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            e.to_string(),
        ),
    }
}

fn not_found() -> Response<Full<Bytes>> {
    text_response(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n".into(),
    )
}

fn handle(server: &Arc<Server>, uri: &hyper::Uri, which: Endpoints) -> Response<Full<Bytes>> {
    let q = parse_query(uri.query().unwrap_or(""));
    let path = uri.path();
    let path = if which == Endpoints::All {
        let base = server.opts().http_base_path.clone().unwrap_or_default();
        path.strip_prefix(base.trim_end_matches('/'))
            .unwrap_or(path)
    } else {
        path
    };
    let path = path.trim_end_matches('/');
    if which == Endpoints::MetricsOnly && path != "/metrics" {
        return not_found();
    }
    // Counted before the body is built, so `/varz` includes the request being served.
    let counted: &'static str = match path {
        "/varz" => "/varz",
        "/connz" => "/connz",
        "/routez" => "/routez",
        "/gatewayz" => "/gatewayz",
        "/leafz" => "/leafz",
        "/subsz" | "/subscriptionsz" => "/subsz",
        "/accountz" => "/accountz",
        "/accstatz" => "/accstatz",
        "/healthz" => "/healthz",
        "/jsz" => "/jsz",
        "/metrics" => "/metrics",
        "/topologyz" => "/topologyz",
        "/topology" => "/topology",
        "" => return root(server),
        _ => return not_found(),
    };
    count_request(server, counted);
    match counted {
        "/varz" => json_response(&varz(server), &q),
        "/connz" => result_response(connz(server, &q), &q),
        "/routez" => result_response(routez(server, &q), &q),
        "/gatewayz" => json_response(&gatewayz(server), &q),
        "/leafz" => result_response(leafz(server, &q), &q),
        "/subsz" => result_response(subsz(server, &q), &q),
        "/accountz" => json_response(&accountz(server, &q), &q),
        "/accstatz" => json_response(&accstatz(server), &q),
        "/healthz" => {
            let (ok, body) = healthz(server, &q);
            if ok {
                json_response(&body, &q)
            } else {
                tracing::warn!("Healthcheck failed: {}", body["error"]);
                let text = serde_json::to_string(&body).unwrap_or_default();
                text_response(StatusCode::SERVICE_UNAVAILABLE, "application/json", text)
            }
        }
        "/jsz" => result_response(jsz(server, &q), &q),
        "/topologyz" => json_response(&topology::topologyz(server), &q),
        "/topology" => {
            let base = server.opts().http_base_path.clone().unwrap_or_default();
            let page = topology::page(base.trim_end_matches('/'));
            text_response(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        _ => {
            let leafs = crate::monitor::metrics::leaf_metrics(server);
            let body = crate::monitor::metrics::render(server, &leafs);
            text_response(StatusCode::OK, crate::monitor::metrics::CONTENT_TYPE, body)
        }
    }
}

fn root(server: &Arc<Server>) -> Response<Full<Bytes>> {
    let links = [
        ("varz", "General"),
        ("connz", "Connections"),
        ("accountz", "Accounts"),
        ("accstatz", "Account Stats"),
        ("subsz", "Subscriptions"),
        ("routez", "Routes"),
        ("leafz", "LeafNodes"),
        ("gatewayz", "Gateways"),
        ("jsz", "JetStream"),
        ("healthz", "Health Probe"),
        ("metrics", "Prometheus Metrics"),
        ("topologyz", "Topology"),
        ("topology", "Topology (drawn)"),
    ];
    let mut html = format!(
        "<html><head><title>Canopy {}</title></head><body><h1>Canopy (nats-server {})</h1>\n",
        version::CANOPY_VERSION,
        version::NATS_COMPAT_VERSION
    );
    let base = server.opts().http_base_path.clone().unwrap_or_default();
    let base = base.trim_end_matches('/');
    for (l, title) in links {
        html.push_str(&format!("<a href=\"{base}/{l}\">{title}</a><br/>\n"));
    }
    html.push_str("</body></html>\n");
    text_response(StatusCode::OK, "text/html", html)
}

pub use crate::core::format::{go_duration, rfc3339, uptime};

pub(crate) fn mem_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU use since start, in percent of one core (as nats-server reports it).
pub(crate) fn cpu_percent(start: SystemTime) -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some(ut + st)
        })
        .unwrap_or(0.0);
    let secs = ticks / 100.0;
    let wall = start
        .elapsed()
        .map(|d| d.as_secs_f64())
        .unwrap_or(1.0)
        .max(0.001);
    ((secs / wall) * 1000.0).round() / 10.0
}

/// `/varz` `cluster`: name, listen address and port, configured route URLs (as
/// `host:port`, without credentials), timeouts; `{}` without a cluster.
fn varz_cluster(s: &Server, o: &canopy_conf::Options) -> Value {
    let Some(co) = &o.cluster else {
        return json!({});
    };
    let mut v = Map::new();
    let name = s.cluster_name();
    if !name.is_empty() {
        v.insert("name".into(), json!(name));
    }
    v.insert("addr".into(), json!(co.host));
    let port = s.route_addr.lock().map_or(co.port, |a| i32::from(a.port()));
    v.insert("cluster_port".into(), json!(port));
    let auth_timeout = co
        .authorization
        .as_ref()
        .and_then(|a| a.timeout)
        .map_or(2.0, |d| d.as_secs_f64());
    v.insert("auth_timeout".into(), json!(auth_timeout));
    let urls: Vec<&str> = co
        .routes
        .iter()
        .map(|u| {
            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            rest.trim_end_matches('/')
        })
        .collect();
    if !urls.is_empty() {
        v.insert("urls".into(), json!(urls));
    }
    // nats-server shows the pool size in effect (omitted when pooling is off).
    if let Some(p) = co.effective_pool_size() {
        v.insert("pool_size".into(), json!(p));
    }
    let tls_timeout = co
        .tls
        .as_ref()
        .and_then(|t| t.timeout)
        .map_or(2.0, |d| d.as_secs_f64());
    v.insert("tls_timeout".into(), json!(tls_timeout));
    if co.tls.is_some() {
        v.insert("tls_required".into(), json!(true));
    }
    Value::Object(v)
}

/// `/varz` `websocket`: the listener's settings with nats-server's omissions (only what
/// is set), and the bound port.
fn varz_websocket(s: &Server, o: &canopy_conf::Options) -> Value {
    let Some(w) = &o.websocket else {
        return json!({});
    };
    let mut v = Map::new();
    v.insert(
        "host".into(),
        json!(w.host.clone().unwrap_or_else(|| "0.0.0.0".into())),
    );
    let port = s.ws_addr.lock().map_or(w.port, |a| i32::from(a.port()));
    v.insert("port".into(), json!(port));
    if let Some(a) = &w.advertise {
        v.insert("advertise".into(), json!(a));
    }
    if let Some(t) = w.handshake_timeout {
        v.insert("handshake_timeout".into(), json!(t.as_nanos() as u64));
    }
    if w.no_tls {
        v.insert("no_tls".into(), json!(true));
    }
    if w.same_origin {
        v.insert("same_origin".into(), json!(true));
    }
    if !w.allowed_origins.is_empty() {
        v.insert("allowed_origins".into(), json!(w.allowed_origins));
    }
    if w.compression {
        v.insert("compression".into(), json!(true));
    }
    Value::Object(v)
}

/// `/varz` `leaf`: the listener's settings and the configured remotes (URLs shown as
/// `host:port`, never with credentials), with nats-server's omissions.
fn varz_leaf(s: &Server, o: &canopy_conf::Options) -> Value {
    let Some(lo) = &o.leafnodes else {
        return json!({});
    };
    let mut v = Map::new();
    if lo.port != 0 {
        v.insert("host".into(), json!(lo.host));
        let port = s.leaf_addr.lock().map_or(lo.port, |a| i32::from(a.port()));
        v.insert("port".into(), json!(port));
        let auth_timeout = lo
            .authorization
            .as_ref()
            .and_then(|a| a.timeout)
            .map_or(2.0, |d| d.as_secs_f64());
        v.insert("auth_timeout".into(), json!(auth_timeout));
        let tls_timeout = lo
            .tls
            .as_ref()
            .and_then(|t| t.timeout)
            .map_or(2.0, |d| d.as_secs_f64());
        v.insert("tls_timeout".into(), json!(tls_timeout));
        if lo.tls.is_some() {
            v.insert("tls_required".into(), json!(true));
        }
    }
    let remotes: Vec<Value> = lo
        .remotes
        .iter()
        .map(|r| {
            let urls: Vec<String> = r
                .urls
                .iter()
                .filter_map(|u| crate::roles::leaf::LeafUrl::parse(u).ok())
                .map(|u| u.hostport())
                .collect();
            let mut e = Map::new();
            e.insert(
                "local_account".into(),
                json!(r.account.as_deref().unwrap_or(GLOBAL_ACCOUNT)),
            );
            e.insert("urls".into(), json!(urls));
            let mut deny = Map::new();
            if !r.deny_imports.is_empty() {
                deny.insert("imports".into(), json!(r.deny_imports));
            }
            if !r.deny_exports.is_empty() {
                deny.insert("exports".into(), json!(r.deny_exports));
            }
            if !deny.is_empty() {
                e.insert("deny".into(), Value::Object(deny));
            }
            Value::Object(e)
        })
        .collect();
    if !remotes.is_empty() {
        v.insert("remotes".into(), json!(remotes));
    }
    Value::Object(v)
}

/// `/varz`.
pub fn varz(s: &Arc<Server>) -> Value {
    let o = s.opts();
    let now = SystemTime::now();
    let addr = *s.client_addr.lock();
    let http = *s.http_addr.lock();
    let conns = s.connections();
    let clients = conns.iter().filter(|c| c.kind == ConnKind::Client).count();
    let subs: usize = s.accounts().iter().map(|a| a.sublist.count()).sum();
    let st = &s.stats;
    let auth = s.client_auth();
    let mut v = json!({
        "server_id": s.id,
        "server_name": s.name,
        "version": version::NATS_COMPAT_VERSION,
        "canopy_version": version::CANOPY_VERSION,
        "proto": version::CLIENT_PROTO,
        "go": version::RUNTIME,
        "host": o.host,
        "port": addr.map(|a| a.port()).unwrap_or(0),
        "auth_required": auth.required(),
        "max_connections": o.max_connections,
        "ping_interval": o.ping_interval.as_nanos() as u64,
        "ping_max": o.ping_max,
        "http_host": o.http_host.clone().unwrap_or_else(|| o.host.clone()),
        "http_port": http.map(|a| a.port()).unwrap_or(0),
        "http_base_path": o.http_base_path.clone().unwrap_or_default(),
        "https_port": o.https_port.unwrap_or(0),
        "auth_timeout": o.authorization.timeout.map(|d| d.as_secs_f64()).unwrap_or(2.0),
        "max_control_line": o.max_control_line,
        "max_payload": o.max_payload,
        "max_pending": o.max_pending,
        "cluster": varz_cluster(s, &o),
        "gateway": {},
        "leaf": varz_leaf(s, &o),
        "mqtt": {},
        "websocket": varz_websocket(s, &o),
        "jetstream": s.jetstream().map_or(json!({}), |js| js.varz()),
        "tls_timeout": o.tls.as_ref().and_then(|t| t.timeout).map_or(2.0, |d| d.as_secs_f64()),
        "write_deadline": o.write_deadline.as_nanos() as u64,
        "start": rfc3339(s.start),
        "now": rfc3339(now),
        "uptime": uptime(now.duration_since(s.start).unwrap_or_default()),
        "mem": mem_rss(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "gomaxprocs": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu_percent(s.start),
        "connections": clients,
        "total_connections": st.total_connections.load(Ordering::Relaxed),
        "routes": s.routes().len(),
        "remotes": s
            .routes()
            .iter()
            .map(|r| r.remote_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        "leafnodes": s.leaf_links().len(),
        "in_msgs": st.in_msgs.load(Ordering::Relaxed),
        "out_msgs": st.out_msgs.load(Ordering::Relaxed),
        "in_bytes": st.in_bytes.load(Ordering::Relaxed),
        "out_bytes": st.out_bytes.load(Ordering::Relaxed),
        "slow_consumers": st.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": subs,
        "http_req_stats": http_req_stats().lock().get(&s.id).cloned().unwrap_or_default(),
        "config_load_time": rfc3339(*s.config_load_time.lock()),
        "system_account": s.system_account,

        "slow_consumer_stats": {
            "clients": st.slow_consumers_clients.load(Ordering::Relaxed),
            "routes": st.slow_consumers_routes.load(Ordering::Relaxed),
            "gateways": 0,
            "leafs": st.slow_consumers_leafs.load(Ordering::Relaxed)
        },
        "auth_failures": st.auth_failures.load(Ordering::Relaxed),
        "permission_denials": st.permission_denials.load(Ordering::Relaxed),
        "tls_handshake_failures": st.tls_handshake_failures.load(Ordering::Relaxed),
        "canopy_services": s.services_json(),
        "canopy_producer_stalls": st.producer_stalls.load(Ordering::Relaxed),
    });
    // The cluster's client URLs, as clients learn them in INFO `connect_urls`.
    let urls = if o.cluster.is_some() {
        s.cluster_client_urls()
    } else {
        Vec::new()
    };
    if !urls.is_empty() {
        v["connect_urls"] = json!(urls);
    }
    if let Some(t) = &o.tls {
        v["tls_required"] = json!(!o.allow_non_tls);
        v["tls_verify"] = json!(t.verify);
    }
    v
}

/// `/connz?sort=`: nats-server's sort options. Counters sort largest first, `cid` and
/// `start` oldest first, `uptime` shortest first, `last` most recent first, `idle` longest
/// first, `stop` (closed only) most recent first, `reason` (closed only) alphabetically;
/// `rtt` (largest first) is from nats-server 2.10. Ties keep cid order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Cid,
    Start,
    Subs,
    Pending,
    MsgsTo,
    MsgsFrom,
    BytesTo,
    BytesFrom,
    Last,
    Idle,
    Uptime,
    Stop,
    Reason,
    Rtt,
}

impl SortBy {
    /// Parses a `sort` value (empty means `cid`).
    pub fn parse(v: &str) -> Result<SortBy, QueryError> {
        Ok(match v {
            "" | "cid" => SortBy::Cid,
            "start" => SortBy::Start,
            "subs" => SortBy::Subs,
            "pending" => SortBy::Pending,
            "msgs_to" => SortBy::MsgsTo,
            "msgs_from" => SortBy::MsgsFrom,
            "bytes_to" => SortBy::BytesTo,
            "bytes_from" => SortBy::BytesFrom,
            "last" => SortBy::Last,
            "idle" => SortBy::Idle,
            "uptime" => SortBy::Uptime,
            "stop" => SortBy::Stop,
            "reason" => SortBy::Reason,
            "rtt" => SortBy::Rtt,
            other => return Err(QueryError::BadSort(other.to_string())),
        })
    }
}

/// `/connz?state=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Open,
    Closed,
    All,
}

impl ConnState {
    pub fn parse(v: &str) -> Result<ConnState, QueryError> {
        match v {
            "" | "open" => Ok(ConnState::Open),
            "closed" => Ok(ConnState::Closed),
            "any" | "all" => Ok(ConnState::All),
            other => Err(QueryError::BadState(other.to_string())),
        }
    }
}

/// nats-server's default and maximum-free page size for `/connz` and `/subsz`.
pub const DEFAULT_LIMIT: usize = 1024;

/// One connection, open or closed, as `/connz` sorts and shows it.
struct ConnRow {
    cid: u64,
    ip: String,
    port: u16,
    start: SystemTime,
    last: SystemTime,
    /// Set for closed connections.
    stop: Option<SystemTime>,
    reason: String,
    rtt_ns: u64,
    pending: u64,
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    out_bytes: u64,
    num_subs: u64,
    name: String,
    lang: String,
    version: String,
    tls_version: String,
    account: String,
    user: String,
}

impl ConnRow {
    fn open(c: &ConnShared) -> ConnRow {
        let m = c.meta.lock().clone();
        ConnRow {
            cid: c.cid,
            ip: c.addr.ip().to_string(),
            port: c.addr.port(),
            start: c.start,
            last: *c.last_activity.lock(),
            stop: None,
            reason: String::new(),
            rtt_ns: c.rtt_ns.load(Ordering::Relaxed),
            pending: c.pending_bytes() as u64,
            in_msgs: c.stats.in_msgs.load(Ordering::Relaxed),
            out_msgs: c.stats.out_msgs.load(Ordering::Relaxed),
            in_bytes: c.stats.in_bytes.load(Ordering::Relaxed),
            out_bytes: c.stats.out_bytes.load(Ordering::Relaxed),
            num_subs: c.num_subs.load(Ordering::Relaxed) as u64,
            name: m.name,
            lang: m.lang,
            version: m.version,
            tls_version: m.tls_version,
            account: m.account,
            user: m.user,
        }
    }

    fn closed(c: &crate::server::ClosedConn) -> ConnRow {
        ConnRow {
            cid: c.cid,
            ip: c.addr.ip().to_string(),
            port: c.addr.port(),
            start: c.start,
            // Closed records keep no last-activity time or rtt; the stop time stands in.
            last: c.stop,
            stop: Some(c.stop),
            reason: c.reason.clone(),
            rtt_ns: 0,
            pending: 0,
            in_msgs: c.in_msgs,
            out_msgs: c.out_msgs,
            in_bytes: c.in_bytes,
            out_bytes: c.out_bytes,
            num_subs: 0,
            name: c.name.clone(),
            lang: c.lang.clone(),
            version: c.version.clone(),
            tls_version: String::new(),
            account: c.account.clone(),
            user: c.user.clone(),
        }
    }

    fn end(&self, now: SystemTime) -> SystemTime {
        self.stop.unwrap_or(now)
    }

    fn uptime(&self, now: SystemTime) -> Duration {
        self.end(now).duration_since(self.start).unwrap_or_default()
    }

    fn idle(&self, now: SystemTime) -> Duration {
        self.end(now).duration_since(self.last).unwrap_or_default()
    }

    fn to_json(&self, now: SystemTime, auth: bool) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("cid".into(), json!(self.cid));
        o.insert("kind".into(), json!("Client"));
        o.insert("type".into(), json!("nats"));
        o.insert("ip".into(), json!(self.ip));
        o.insert("port".into(), json!(self.port));
        o.insert("start".into(), json!(rfc3339(self.start)));
        o.insert("last_activity".into(), json!(rfc3339(self.last)));
        if let Some(stop) = self.stop {
            o.insert("stop".into(), json!(rfc3339(stop)));
            o.insert("reason".into(), json!(self.reason));
        }
        o.insert(
            "rtt".into(),
            json!(go_duration(Duration::from_nanos(self.rtt_ns))),
        );
        o.insert("uptime".into(), json!(uptime(self.uptime(now))));
        o.insert("idle".into(), json!(uptime(self.idle(now))));
        o.insert("pending_bytes".into(), json!(self.pending));
        o.insert("in_msgs".into(), json!(self.in_msgs));
        o.insert("out_msgs".into(), json!(self.out_msgs));
        o.insert("in_bytes".into(), json!(self.in_bytes));
        o.insert("out_bytes".into(), json!(self.out_bytes));
        o.insert("subscriptions".into(), json!(self.num_subs));
        for (k, v) in [
            ("name", &self.name),
            ("lang", &self.lang),
            ("version", &self.version),
            ("tls_version", &self.tls_version),
        ] {
            if !v.is_empty() {
                o.insert(k.into(), json!(v));
            }
        }
        if auth {
            if !self.user.is_empty() {
                o.insert("authorized_user".into(), json!(self.user));
            }
            // As nats-server: the account is shown unless it is the global one.
            if !self.account.is_empty() && self.account != GLOBAL_ACCOUNT {
                o.insert("account".into(), json!(self.account));
            }
        }
        o
    }
}

/// One subscription as `/connz?subs=detail` and `/subsz?subs=1` show it.
fn sub_detail(
    account: &str,
    subject: &str,
    queue: Option<&str>,
    sid: &[u8],
    msgs: u64,
    cid: u64,
) -> Value {
    let mut e = Map::new();
    e.insert("account".into(), json!(account));
    e.insert("subject".into(), json!(subject));
    if let Some(q) = queue {
        e.insert("qgroup".into(), json!(q));
    }
    e.insert("sid".into(), json!(String::from_utf8_lossy(sid)));
    e.insert("msgs".into(), json!(msgs));
    e.insert("cid".into(), json!(cid));
    Value::Object(e)
}

/// The subscriptions of the given connections, by cid, in one pass over the Sublists.
fn subs_by_cid(s: &Server, cids: &HashSet<u64>) -> HashMap<u64, Vec<Value>> {
    let mut out: HashMap<u64, Vec<Value>> = HashMap::new();
    if cids.is_empty() {
        return out;
    }
    for a in s.accounts() {
        for (subject, queue, sub) in a.sublist.all() {
            let cid = sub.conn.cid;
            if cids.contains(&cid) {
                out.entry(cid).or_default().push(sub_detail(
                    &a.name,
                    &subject,
                    queue.as_deref(),
                    sub.sid(),
                    sub.delivered.load(Ordering::Relaxed),
                    cid,
                ));
            }
        }
    }
    out
}

/// `/connz`: client connections with paging (`offset`, `limit`), `sort`, `subs`
/// (`1` or `detail`), `auth`, `state`, `cid`, `acc` and `user` filters.
pub fn connz(s: &Arc<Server>, q: &Query) -> Result<Value, QueryError> {
    let now = SystemTime::now();
    let subs = q_subs(q)?;
    let auth = q_bool(q, "auth")?;
    let state = ConnState::parse(q.get("state").map(String::as_str).unwrap_or(""))?;
    let sort = SortBy::parse(q.get("sort").map(String::as_str).unwrap_or(""))?;
    if matches!(sort, SortBy::Stop | SortBy::Reason) && state != ConnState::Closed {
        let name = if sort == SortBy::Stop {
            "stop"
        } else {
            "reason"
        };
        return Err(QueryError::SortNeedsClosed(name.into()));
    }
    let offset = q_int(q, "offset")?.unwrap_or(0).max(0) as usize;
    let mut limit = match q_int(q, "limit")? {
        Some(l) if l > 0 => l as usize,
        _ => DEFAULT_LIMIT,
    };
    let cid_filter = match q.get("cid").filter(|v| !v.is_empty()) {
        Some(v) => Some(v.parse::<u64>().map_err(|_| QueryError::BadValue {
            kind: "uint64",
            key: "cid".into(),
            value: v.clone(),
        })?),
        None => None,
    };
    if cid_filter.is_some() {
        // One connection at most, as nats-server reports it.
        limit = 1;
    }
    let acc_filter = q.get("acc").filter(|v| !v.is_empty());
    let user_filter = q.get("user").filter(|v| !v.is_empty());
    let keep = |r: &ConnRow| {
        cid_filter.is_none_or(|c| c == r.cid)
            && acc_filter.is_none_or(|a| *a == r.account)
            && user_filter.is_none_or(|u| *u == r.user)
    };

    let mut rows: Vec<ConnRow> = Vec::new();
    if state != ConnState::Closed {
        rows.extend(
            s.connections()
                .iter()
                .filter(|c| c.kind == ConnKind::Client && c.registered.load(Ordering::Relaxed))
                .map(|c| ConnRow::open(c))
                .filter(|r| keep(r)),
        );
    }
    if state != ConnState::Open {
        let closed = s.closed.lock();
        rows.extend(closed.iter().map(ConnRow::closed).filter(|r| keep(r)));
    }
    sort_rows(&mut rows, sort, now);

    let total = rows.len();
    let page: Vec<ConnRow> = rows.into_iter().skip(offset).take(limit).collect();
    let details = if subs == Subs::None {
        HashMap::new()
    } else {
        let cids = page
            .iter()
            .filter(|r| r.stop.is_none())
            .map(|r| r.cid)
            .collect();
        subs_by_cid(s, &cids)
    };
    let conns: Vec<Value> = page
        .iter()
        .map(|r| {
            let mut o = r.to_json(now, auth);
            // Empty lists are left out, as nats-server's `omitempty` does.
            if let Some(list) = details.get(&r.cid).filter(|l| !l.is_empty()) {
                if subs == Subs::Detail {
                    o.insert("subscriptions_list_detail".into(), json!(list));
                } else {
                    let names: Vec<&Value> = list.iter().filter_map(|d| d.get("subject")).collect();
                    o.insert("subscriptions_list".into(), json!(names));
                }
            }
            Value::Object(o)
        })
        .collect();
    Ok(json!({
        "server_id": s.id,
        "now": rfc3339(now),
        "num_connections": conns.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": conns,
    }))
}

fn sort_rows(rows: &mut [ConnRow], sort: SortBy, now: SystemTime) {
    use std::cmp::Reverse;
    // Stable sorts over cid order, so ties stay in cid order.
    rows.sort_by_key(|r| r.cid);
    match sort {
        SortBy::Cid => {}
        SortBy::Start => rows.sort_by_key(|r| r.start),
        SortBy::Subs => rows.sort_by_key(|r| Reverse(r.num_subs)),
        SortBy::Pending => rows.sort_by_key(|r| Reverse(r.pending)),
        SortBy::MsgsTo => rows.sort_by_key(|r| Reverse(r.out_msgs)),
        SortBy::MsgsFrom => rows.sort_by_key(|r| Reverse(r.in_msgs)),
        SortBy::BytesTo => rows.sort_by_key(|r| Reverse(r.out_bytes)),
        SortBy::BytesFrom => rows.sort_by_key(|r| Reverse(r.in_bytes)),
        SortBy::Last => rows.sort_by_key(|r| Reverse(r.last)),
        SortBy::Idle => rows.sort_by_key(|r| Reverse(r.idle(now))),
        SortBy::Uptime => rows.sort_by_key(|r| r.uptime(now)),
        SortBy::Stop => rows.sort_by_key(|r| Reverse(r.stop)),
        SortBy::Reason => rows.sort_by(|a, b| a.reason.cmp(&b.reason)),
        SortBy::Rtt => rows.sort_by_key(|r| Reverse(r.rtt_ns)),
    }
}

/// `/routez`: the cluster's routes (see [`crate::roles::route::routez`]), with `subs`.
pub fn routez(s: &Arc<Server>, q: &Query) -> Result<Value, QueryError> {
    let subs = q_subs(q)? != Subs::None;
    Ok(crate::roles::route::routez(s, subs))
}

/// `/gatewayz` (gateways are not implemented: always empty).
pub fn gatewayz(s: &Arc<Server>) -> Value {
    json!({
        "server_id": s.id, "now": rfc3339(SystemTime::now()), "name": "",
        "host": "", "port": 0, "outbound_gateways": {}, "inbound_gateways": {},
    })
}

/// `/leafz`: the leaf connections (see [`crate::roles::leaf::leafz`]), with `subs` and `acc`.
pub fn leafz(s: &Arc<Server>, q: &Query) -> Result<Value, QueryError> {
    let subs = q_subs(q)? != Subs::None;
    let acc = q.get("acc").filter(|v| !v.is_empty());
    Ok(crate::roles::leaf::leafz(s, subs, acc.map(String::as_str)))
}

fn sublist_stats_json(st: &canopy_subject::SublistStats) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("num_subscriptions".into(), json!(st.num_subscriptions));
    o.insert("num_cache".into(), json!(st.num_cache));
    o.insert("num_inserts".into(), json!(st.num_inserts));
    o.insert("num_removes".into(), json!(st.num_removes));
    o.insert("num_matches".into(), json!(st.num_matches));
    o.insert("cache_hit_rate".into(), json!(st.cache_hit_rate));
    o.insert("max_fanout".into(), json!(st.max_fanout));
    o.insert("avg_fanout".into(), json!(st.avg_fanout));
    o
}

/// `/subsz`: Sublist statistics over all accounts (or `acc`), and with `subs=1` the
/// subscriptions, paged by `offset`/`limit` and filtered by `test` (a literal subject
/// the subscriptions must match).
pub fn subsz(s: &Arc<Server>, q: &Query) -> Result<Value, QueryError> {
    let with_subs = q_subs(q)? != Subs::None;
    let acc_filter = q.get("acc").filter(|v| !v.is_empty());
    let test = q.get("test").filter(|v| !v.is_empty());
    if let Some(t) = test {
        if !canopy_subject::is_valid_literal_subject(t) {
            return Err(QueryError::BadTestSubject(t.clone()));
        }
    }
    let offset = q_int(q, "offset")?.unwrap_or(0).max(0) as usize;
    let limit = match q_int(q, "limit")? {
        Some(l) if l > 0 => l as usize,
        _ => DEFAULT_LIMIT,
    };
    let mut stats = canopy_subject::SublistStats::default();
    let mut list = Vec::new();
    for a in s.accounts() {
        if acc_filter.is_some_and(|f| *f != a.name) {
            continue;
        }
        stats.add(&a.sublist.stats());
        if with_subs {
            for (subject, queue, sub) in a.sublist.all() {
                if test.is_some_and(|t| !canopy_subject::subject_matches(&subject, t)) {
                    continue;
                }
                list.push(sub_detail(
                    &a.name,
                    &subject,
                    queue.as_deref(),
                    sub.sid(),
                    sub.delivered.load(Ordering::Relaxed),
                    sub.conn.cid,
                ));
            }
        }
    }
    let mut v = Map::new();
    v.insert("server_id".into(), json!(s.id));
    v.insert("now".into(), json!(rfc3339(SystemTime::now())));
    v.extend(sublist_stats_json(&stats));
    if with_subs {
        let total = list.len();
        let page: Vec<Value> = list.into_iter().skip(offset).take(limit).collect();
        v.insert("total".into(), json!(total));
        v.insert("offset".into(), json!(offset));
        v.insert("limit".into(), json!(limit));
        v.insert("subscriptions_list".into(), json!(page));
    }
    Ok(Value::Object(v))
}

/// `/accountz`: the account names, or with `acc` one account's details.
pub fn accountz(s: &Arc<Server>, q: &Query) -> Value {
    let now = SystemTime::now();
    if let Some(name) = q.get("acc").filter(|v| !v.is_empty()) {
        let Some(a) = s.account(name) else {
            return json!({"server_id": s.id, "now": rfc3339(now), "system_account": s.system_account,
                "error": format!("Account {name} does not exist")});
        };
        let mut v = json!({
            "server_id": s.id, "now": rfc3339(now), "system_account": s.system_account,
            "account_detail": {
                "account_name": a.name,
                "update_time": rfc3339(s.start),
                "is_system": a.name == s.system_account,
                "expired": false,
                "complete": true,
                "jetstream_enabled": false,
                "leafnode_connections": a.num_leafs.load(Ordering::Relaxed),
                "client_connections": a.client_connections(),
                "subscriptions": a.sublist.count(),
                "sublist_stats": sublist_stats_json(&a.sublist.stats()),
            }
        });
        if let Some(m) = a.mappings.get() {
            v["account_detail"]["mappings"] = m.to_json();
        }
        return v;
    }
    let names: Vec<String> = s.accounts().iter().map(|a| a.name.clone()).collect();
    json!({"server_id": s.id, "now": rfc3339(now), "system_account": s.system_account, "accounts": names})
}

/// `/accstatz`: per-account counters for accounts with connections.
/// `/healthz`, as nats-server decides it: a server without JetStream in its config is
/// healthy whatever the query asks (the Helm chart probes `js-server-only` and
/// `js-enabled-only` on every pod, leaves without JetStream included). With JetStream
/// configured, `js-enabled-only` (2.9's `js-enabled`) asks only that it runs; plain
/// `/healthz` and `js-server-only` also ask that every stream answers (503 `unavailable`
/// otherwise). Returns whether the server is healthy, and the body.
pub fn healthz(s: &Arc<Server>, q: &Query) -> (bool, Value) {
    let enabled_only = ["js-enabled-only", "js-enabled"]
        .iter()
        .any(|k| q_bool(q, k).unwrap_or(false));
    let configured = s.opts().jetstream.as_ref().is_some_and(|j| j.enabled);
    let err = match s.jetstream() {
        _ if !configured => None,
        None => Some("JetStream not enabled".to_string()),
        Some(_) if enabled_only => None,
        Some(js) => js.healthy().err(),
    };
    match err {
        None => (true, json!({"status": "ok"})),
        Some(e) => (
            false,
            json!({"status": "unavailable", "status_code": 503, "error": e}),
        ),
    }
}

/// `/jsz`: the JetStream report (`accounts`, `streams`, `consumers`, `config` options).
pub fn jsz(s: &Arc<Server>, q: &Query) -> Result<Value, QueryError> {
    let consumers = q_bool(q, "consumers")?;
    let streams = q_bool(q, "streams")? || consumers;
    let accounts = q_bool(q, "accounts")? || streams;
    let config = q_bool(q, "config")?;
    Ok(match s.jetstream() {
        Some(js) => js.jsz(accounts, streams, consumers, config),
        None => json!({
            "server_id": s.id,
            "now": rfc3339(SystemTime::now()),
            "disabled": true,
        }),
    })
}

pub fn accstatz(s: &Arc<Server>) -> Value {
    let stats: Vec<Value> = s
        .accounts()
        .iter()
        .filter(|a| a.client_connections() > 0)
        .map(|a| {
            json!({
                "acc": a.name,
                "conns": a.client_connections(),
                "leafnodes": a.num_leafs.load(Ordering::Relaxed),
                "total_conns": a.client_connections() + a.num_leafs.load(Ordering::Relaxed),
                "num_subscriptions": a.sublist.count(),
                "sent": {"msgs": a.out_msgs.load(Ordering::Relaxed), "bytes": a.out_bytes.load(Ordering::Relaxed)},
                "received": {"msgs": a.in_msgs.load(Ordering::Relaxed), "bytes": a.in_bytes.load(Ordering::Relaxed)},
            })
        })
        .collect();
    json!({"server_id": s.id, "now": rfc3339(SystemTime::now()), "account_statz": stats})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(uptime(Duration::from_secs(5)), "5s");
        assert_eq!(uptime(Duration::from_secs(65)), "1m5s");
        assert_eq!(uptime(Duration::from_secs(3600 * 25 + 1)), "1d1h0m1s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("acc=%24G&subs=detail&x&acc=other&sp=a+b&bad=%zz");
        assert_eq!(q["acc"], "$G");
        assert_eq!(q["subs"], "detail");
        assert_eq!(q["x"], "");
        assert_eq!(q["sp"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q_subs(&q), Ok(Subs::Detail));
        let q = parse_query("subs=true&auth=0&limit=-3");
        assert_eq!(q_subs(&q), Ok(Subs::List));
        assert_eq!(q_bool(&q, "auth"), Ok(false));
        assert_eq!(q_int(&q, "limit"), Ok(Some(-3)));
        let q = parse_query("auth=yes&offset=x");
        assert!(matches!(
            q_bool(&q, "auth"),
            Err(QueryError::BadValue { .. })
        ));
        assert!(q_int(&q, "offset").is_err());
    }

    #[test]
    fn sort_and_state_names() {
        for (name, want) in [
            ("", SortBy::Cid),
            ("start", SortBy::Start),
            ("msgs_to", SortBy::MsgsTo),
            ("bytes_from", SortBy::BytesFrom),
            ("idle", SortBy::Idle),
            ("reason", SortBy::Reason),
        ] {
            assert_eq!(SortBy::parse(name), Ok(want));
        }
        assert_eq!(
            SortBy::parse("bogus").unwrap_err().to_string(),
            "invalid sorting option: bogus"
        );
        assert_eq!(ConnState::parse("any"), Ok(ConnState::All));
        assert!(ConnState::parse("xyz").is_err());
    }

    fn row(cid: u64, start_s: u64, last_s: u64, out_msgs: u64, reason: &str) -> ConnRow {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        ConnRow {
            cid,
            ip: "127.0.0.1".into(),
            port: 1,
            start: t(start_s),
            last: t(last_s),
            stop: None,
            reason: reason.into(),
            rtt_ns: cid * 10,
            pending: 0,
            in_msgs: 0,
            out_msgs,
            in_bytes: 0,
            out_bytes: 0,
            num_subs: 0,
            name: String::new(),
            lang: String::new(),
            version: String::new(),
            tls_version: String::new(),
            account: String::new(),
            user: String::new(),
        }
    }

    #[test]
    fn sort_directions() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let order = |sort| {
            let mut rows = vec![
                row(3, 30, 900, 5, "b"),
                row(1, 10, 500, 5, "c"),
                row(2, 20, 950, 9, "a"),
            ];
            sort_rows(&mut rows, sort, now);
            rows.iter().map(|r| r.cid).collect::<Vec<_>>()
        };
        assert_eq!(order(SortBy::Cid), [1, 2, 3]);
        assert_eq!(order(SortBy::MsgsTo), [2, 1, 3]); // largest first, ties by cid
        assert_eq!(order(SortBy::Last), [2, 3, 1]); // most recent first
        assert_eq!(order(SortBy::Idle), [1, 3, 2]); // longest idle first
        assert_eq!(order(SortBy::Uptime), [3, 2, 1]); // shortest first
        assert_eq!(order(SortBy::Reason), [2, 3, 1]);
        assert_eq!(order(SortBy::Rtt), [3, 2, 1]);
    }
}
