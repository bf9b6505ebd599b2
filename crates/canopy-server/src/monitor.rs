//! HTTP monitoring with nats-server's endpoints and JSON field names: `/varz`, `/connz`,
//! `/routez`, `/gatewayz`, `/leafz`, `/subsz`, `/accountz`, `/accstatz`, `/healthz`, `/`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::conn::{ConnKind, ConnShared};
use crate::server::Server;
use crate::version;

/// Accepts monitoring connections until shutdown.
pub async fn serve(server: Arc<Server>, listener: TcpListener) {
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
            let svc = hyper::service::service_fn(move |req| {
                let s = s.clone();
                async move { Ok::<_, Infallible>(handle(&s, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn handle(server: &Arc<Server>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let q = query(&req);
    let base = server.opts().http_base_path.clone().unwrap_or_default();
    let path = req.uri().path();
    let path = path
        .strip_prefix(base.trim_end_matches('/'))
        .unwrap_or(path)
        .trim_end_matches('/');
    match path {
        "" => root(server),
        "/varz" => response(StatusCode::OK, varz(server)),
        "/connz" => response(StatusCode::OK, connz(server, &q)),
        "/routez" => response(StatusCode::OK, routez(server, &q)),
        "/gatewayz" => response(StatusCode::OK, gatewayz(server)),
        "/leafz" => response(StatusCode::OK, leafz(server, &q)),
        "/subsz" | "/subscriptionsz" => response(StatusCode::OK, subsz(server, &q)),
        "/accountz" => response(StatusCode::OK, accountz(server, &q)),
        "/accstatz" => response(StatusCode::OK, accstatz(server)),
        "/healthz" => response(StatusCode::OK, json!({"status": "ok"})),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"404 page not found\n")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
    }
}

fn root(server: &Arc<Server>) -> Response<Full<Bytes>> {
    let links = [
        "varz", "connz", "routez", "gatewayz", "leafz", "subsz", "accountz", "accstatz", "healthz",
    ];
    let mut html = format!(
        "<html><head><title>Canopy {}</title></head><body><h1>Canopy (nats-server {})</h1>\n",
        version::CANOPY_VERSION,
        version::NATS_COMPAT_VERSION
    );
    let base = server.opts().http_base_path.clone().unwrap_or_default();
    let base = base.trim_end_matches('/');
    for l in links {
        html.push_str(&format!("<a href=\"{base}/{l}\">{l}</a><br/>\n"));
    }
    html.push_str("</body></html>\n");
    Response::builder()
        .header("Content-Type", "text/html")
        .body(Full::new(Bytes::from(html)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// RFC 3339 with nanoseconds, as Go marshals `time.Time`.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// nats-server's uptime format: `1d2h3m4s`, leading zero units dropped.
pub fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60);
    if days > 0 {
        format!("{days}d{h}h{m}m{sec}s")
    } else if h > 0 {
        format!("{h}h{m}m{sec}s")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// Go's `time.Duration.String()` for the small values monitoring shows (rtt).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".into()
    } else if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}µs", trim_float(ns as f64 / 1e3))
    } else if ns < 1_000_000_000 {
        format!("{}ms", trim_float(ns as f64 / 1e6))
    } else {
        format!("{}s", trim_float(ns as f64 / 1e9))
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn mem_rss() -> u64 {
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
fn cpu_percent(start: SystemTime) -> f64 {
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
    json!({
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
        "https_port": 0,
        "auth_timeout": o.authorization.timeout.map(|d| d.as_secs_f64()).unwrap_or(2.0),
        "max_control_line": o.max_control_line,
        "max_payload": o.max_payload,
        "max_pending": o.max_pending,
        "cluster": {},
        "gateway": {},
        "leaf": {},
        "mqtt": {},
        "websocket": {},
        "jetstream": {},
        "tls_timeout": 2.0,
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
        "remotes": 0,
        "leafnodes": s.leaf_links().len(),
        "in_msgs": st.in_msgs.load(Ordering::Relaxed),
        "out_msgs": st.out_msgs.load(Ordering::Relaxed),
        "in_bytes": st.in_bytes.load(Ordering::Relaxed),
        "out_bytes": st.out_bytes.load(Ordering::Relaxed),
        "slow_consumers": st.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": subs,
        "http_req_stats": {},
        "config_load_time": rfc3339(*s.config_load_time.lock()),
        "system_account": s.system_account,
        "slow_consumer_stats": {
            "clients": st.slow_consumers.load(Ordering::Relaxed),
            "routes": 0, "gateways": 0, "leafs": 0
        },
        "auth_failures": st.auth_failures.load(Ordering::Relaxed),
        "permission_denials": st.permission_denials.load(Ordering::Relaxed),
    })
}

fn conn_json(c: &Arc<ConnShared>, now: SystemTime, subs: bool, auth: bool) -> Value {
    let m = c.meta.lock().clone();
    let last = *c.last_activity.lock();
    let mut v = json!({
        "cid": c.cid,
        "kind": "Client",
        "type": "nats",
        "ip": c.addr.ip().to_string(),
        "port": c.addr.port(),
        "start": rfc3339(c.start),
        "last_activity": rfc3339(last),
        "rtt": go_duration(Duration::from_nanos(c.rtt_ns.load(Ordering::Relaxed))),
        "uptime": uptime(now.duration_since(c.start).unwrap_or_default()),
        "idle": uptime(now.duration_since(last).unwrap_or_default()),
        "pending_bytes": c.pending_bytes(),
        "in_msgs": c.stats.in_msgs.load(Ordering::Relaxed),
        "out_msgs": c.stats.out_msgs.load(Ordering::Relaxed),
        "in_bytes": c.stats.in_bytes.load(Ordering::Relaxed),
        "out_bytes": c.stats.out_bytes.load(Ordering::Relaxed),
        "subscriptions": c.num_subs.load(Ordering::Relaxed),
    });
    let obj = v.as_object_mut();
    if let Some(obj) = obj {
        if !m.name.is_empty() {
            obj.insert("name".into(), json!(m.name));
        }
        if !m.lang.is_empty() {
            obj.insert("lang".into(), json!(m.lang));
        }
        if !m.version.is_empty() {
            obj.insert("version".into(), json!(m.version));
        }
        if auth {
            if !m.user.is_empty() {
                obj.insert("authorized_user".into(), json!(m.user));
            }
            obj.insert("account".into(), json!(m.account));
        }
        if subs {
            obj.insert("subscriptions_list".into(), json!([]));
        }
    }
    v
}

pub fn connz(s: &Arc<Server>, q: &HashMap<String, String>) -> Value {
    let now = SystemTime::now();
    let subs = q
        .get("subs")
        .map(|v| v == "1" || v == "true" || v == "detail")
        .unwrap_or(false);
    let auth = q
        .get("auth")
        .map(|v| v == "1" || v == "true")
        .unwrap_or(false);
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(1024);
    let state = q.get("state").map(String::as_str).unwrap_or("open");
    let cid_filter: Option<u64> = q.get("cid").and_then(|v| v.parse().ok());
    let acc_filter = q.get("acc").cloned();
    let sort = q.get("sort").map(String::as_str).unwrap_or("cid");

    let mut rows: Vec<(u64, Value, Vec<String>)> = Vec::new();
    if state == "open" || state == "any" || state == "all" {
        for c in s.connections() {
            if c.kind != ConnKind::Client || !c.registered.load(Ordering::Relaxed) {
                continue;
            }
            if cid_filter.is_some_and(|x| x != c.cid) {
                continue;
            }
            if acc_filter
                .as_ref()
                .is_some_and(|a| *a != c.meta.lock().account)
            {
                continue;
            }
            let mut v = conn_json(&c, now, false, auth);
            let list: Vec<String> = if subs { subs_of(s, c.cid) } else { Vec::new() };
            if subs {
                v["subscriptions_list"] = json!(list);
            }
            rows.push((c.cid, v, list));
        }
    }
    if state == "closed" || state == "any" || state == "all" {
        for c in s.closed.lock().iter() {
            if cid_filter.is_some_and(|x| x != c.cid) {
                continue;
            }
            let mut v = json!({
                "cid": c.cid, "kind": "Client", "type": "nats",
                "ip": c.addr.ip().to_string(), "port": c.addr.port(),
                "start": rfc3339(c.start), "stop": rfc3339(c.stop),
                "last_activity": rfc3339(c.stop), "reason": c.reason,
                "uptime": uptime(c.stop.duration_since(c.start).unwrap_or_default()),
                "idle": "0s", "pending_bytes": 0, "rtt": "0s",
                "in_msgs": c.in_msgs, "out_msgs": c.out_msgs,
                "in_bytes": c.in_bytes, "out_bytes": c.out_bytes, "subscriptions": 0,
                "name": c.name, "lang": c.lang, "version": c.version,
            });
            if auth {
                v["account"] = json!(c.account);
                if !c.user.is_empty() {
                    v["authorized_user"] = json!(c.user);
                }
            }
            rows.push((c.cid, v, Vec::new()));
        }
    }
    let key = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    match sort {
        "subs" => rows.sort_by_key(|r| std::cmp::Reverse(key(&r.1, "subscriptions"))),
        "pending" => rows.sort_by_key(|r| std::cmp::Reverse(key(&r.1, "pending_bytes"))),
        "msgs_to" => rows.sort_by_key(|r| std::cmp::Reverse(key(&r.1, "out_msgs"))),
        "msgs_from" => rows.sort_by_key(|r| std::cmp::Reverse(key(&r.1, "in_msgs"))),
        "bytes_to" => rows.sort_by_key(|r| std::cmp::Reverse(key(&r.1, "out_bytes"))),
        "bytes_from" => rows.sort_by_key(|r| std::cmp::Reverse(key(&r.1, "in_bytes"))),
        _ => rows.sort_by_key(|r| r.0),
    }
    let total = rows.len();
    let page: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| r.1)
        .collect();
    json!({
        "server_id": s.id,
        "now": rfc3339(now),
        "num_connections": page.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": page,
    })
}

fn subs_of(s: &Arc<Server>, cid: u64) -> Vec<String> {
    let mut out = Vec::new();
    for a in s.accounts() {
        for (subject, _q, sub) in a.sublist.all() {
            if sub.conn.cid == cid {
                out.push(subject);
            }
        }
    }
    out
}

pub fn routez(s: &Arc<Server>, q: &HashMap<String, String>) -> Value {
    let subs = q
        .get("subs")
        .is_some_and(|v| v == "1" || v == "true" || v == "detail");
    crate::route::routez(s, subs)
}

pub fn gatewayz(s: &Arc<Server>) -> Value {
    json!({
        "server_id": s.id, "now": rfc3339(SystemTime::now()), "name": "",
        "host": "", "port": 0, "outbound_gateways": {}, "inbound_gateways": {},
    })
}

pub fn leafz(s: &Arc<Server>, q: &HashMap<String, String>) -> Value {
    let subs = q
        .get("subs")
        .is_some_and(|v| v == "1" || v == "true" || v == "detail");
    crate::leaf::leafz(s, subs, q.get("acc").map(String::as_str))
}

pub fn subsz(s: &Arc<Server>, q: &HashMap<String, String>) -> Value {
    let with_subs = q
        .get("subs")
        .map(|v| v == "1" || v == "true" || v == "detail")
        .unwrap_or(false);
    let acc_filter = q.get("acc").cloned();
    let test = q.get("test").cloned();
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(1024);
    let (mut n, mut cache, mut ins, mut rem, mut matches, mut maxf) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut hit_w, mut fan_w) = (0.0f64, 0.0f64);
    let mut list = Vec::new();
    for a in s.accounts() {
        if acc_filter.as_ref().is_some_and(|f| *f != a.name) {
            continue;
        }
        let st = a.sublist.stats();
        n += st.num_subscriptions as u64;
        cache += st.num_cache as u64;
        ins += st.num_inserts;
        rem += st.num_removes;
        matches += st.num_matches;
        maxf = maxf.max(st.max_fanout as u64);
        hit_w += st.cache_hit_rate * st.num_matches as f64;
        fan_w += st.avg_fanout * st.num_cache as f64;
        if with_subs {
            for (subject, queue, sub) in a.sublist.all() {
                if let Some(t) = &test {
                    if !canopy_subject::subject_matches(&subject, t) {
                        continue;
                    }
                }
                let mut e = json!({
                    "account": a.name, "subject": subject,
                    "sid": String::from_utf8_lossy(&sub.sid),
                    "msgs": sub.delivered.load(Ordering::Relaxed), "cid": sub.conn.cid,
                });
                if let Some(q) = queue {
                    e["qgroup"] = json!(q);
                }
                list.push(e);
            }
        }
    }
    let mut v = json!({
        "server_id": s.id,
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": n,
        "num_cache": cache,
        "num_inserts": ins,
        "num_removes": rem,
        "num_matches": matches,
        "cache_hit_rate": if matches > 0 { hit_w / matches as f64 } else { 0.0 },
        "max_fanout": maxf,
        "avg_fanout": if cache > 0 { fan_w / cache as f64 } else { 0.0 },
    });
    if with_subs {
        let total = list.len();
        let page: Vec<Value> = list.into_iter().skip(offset).take(limit).collect();
        v["total"] = json!(total);
        v["offset"] = json!(offset);
        v["limit"] = json!(limit);
        v["subscriptions_list"] = json!(page);
    }
    v
}

pub fn accountz(s: &Arc<Server>, q: &HashMap<String, String>) -> Value {
    let now = SystemTime::now();
    if let Some(name) = q.get("acc") {
        let Some(a) = s.account(name) else {
            return json!({"server_id": s.id, "now": rfc3339(now), "system_account": s.system_account,
                "error": format!("Account {name} does not exist")});
        };
        return json!({
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
            }
        });
    }
    let names: Vec<String> = s.accounts().iter().map(|a| a.name.clone()).collect();
    json!({"server_id": s.id, "now": rfc3339(now), "system_account": s.system_account, "accounts": names})
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
                "sent": {"msgs": a.out_msgs.load(Ordering::Relaxed)},
                "received": {"msgs": a.in_msgs.load(Ordering::Relaxed)},
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
}
