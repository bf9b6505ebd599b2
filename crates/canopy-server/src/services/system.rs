//! The system account's internal client: answers `$SYS.REQ.SERVER.PING` (STATSZ),
//! `$SYS.REQ.SERVER.PING.<ENDPOINT>` and `$SYS.REQ.SERVER.<id>.<ENDPOINT>` with the same
//! JSON bodies as HTTP monitoring (nats-server's `{"server":…,"data":…}` envelope), and
//! publishes `$SYS.SERVER.<id>.STATSZ` periodically and connect/disconnect events.
//!
//! Both are services on the internal service API ([`crate::server::service`]); the
//! advisories themselves are published by [`crate::server::events`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::monitor;
pub use crate::server::events::server_info;
use crate::server::service::{sync_handler, Service, ServiceOpts};
use crate::server::Server;

/// How often `$SYS.SERVER.<id>.STATSZ` is published.
const STATSZ_INTERVAL: Duration = Duration::from_secs(10);

/// STATSZ in nats-server's shape.
pub fn statsz(s: &Arc<Server>) -> Value {
    let v = monitor::varz(s);
    json!({
        "start": v["start"],
        "mem": v["mem"],
        "cores": v["cores"],
        "cpu": v["cpu"],
        "connections": v["connections"],
        "total_connections": v["total_connections"],
        "active_accounts": s.accounts().iter().filter(|a| a.client_connections() > 0).count(),
        "subscriptions": v["subscriptions"],
        "sent": { "msgs": v["out_msgs"], "bytes": v["out_bytes"] },
        "received": { "msgs": v["in_msgs"], "bytes": v["in_bytes"] },
        "slow_consumers": v["slow_consumers"],
        "routes": s.routes().iter().map(|r| json!({
            "rid": r.conn.cid, "name": r.remote_name,
            "sent": {"msgs": r.conn.stats.out_msgs.load(Ordering::Relaxed), "bytes": r.conn.stats.out_bytes.load(Ordering::Relaxed)},
            "received": {"msgs": r.conn.stats.in_msgs.load(Ordering::Relaxed), "bytes": r.conn.stats.in_bytes.load(Ordering::Relaxed)},
            "pending": r.conn.pending_bytes(),
        })).collect::<Vec<_>>(),
    })
}

/// The filter natscli sends with PING requests (`EventFilterOptions`).
fn filter_matches(s: &Server, body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return true;
    };
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let name = str_of("server_name");
    let cluster = str_of("cluster");
    let host = str_of("host");
    (name.is_empty() || s.name.contains(name))
        && (cluster.is_empty() || s.cluster_name().contains(cluster))
        && (host.is_empty() || s.opts().host.contains(host))
}

/// Translates a JSON options body (`{"subscriptions":true,"limit":10}`) into the HTTP
/// query parameters the endpoint functions take.
fn options_query(body: &[u8]) -> monitor::Query {
    let mut q = monitor::Query::new();
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        for (k, v) in m {
            let key = match k.as_str() {
                "subscriptions" => "subs",
                "subscriptions_detail" => {
                    if v.as_bool() == Some(true) {
                        q.insert("subs".into(), "detail".into());
                    }
                    continue;
                }
                "account" => "acc",
                "accounts" => "acc",
                "username" => "user",
                other => other,
            };
            let val = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if !val.is_empty() && val != "false" && val != "0" {
                q.insert(key.to_string(), val);
            }
        }
    }
    q
}

fn endpoint(s: &Arc<Server>, name: &str, body: &[u8]) -> Option<Value> {
    let q = options_query(body);
    let r = match name {
        "VARZ" => Ok(monitor::varz(s)),
        "CONNZ" => monitor::connz(s, &q),
        "ROUTEZ" => monitor::routez(s, &q),
        "LEAFZ" => monitor::leafz(s, &q),
        "SUBSZ" => monitor::subsz(s, &q),
        "ACCOUNTZ" => Ok(monitor::accountz(s, &q)),
        "HEALTHZ" => Ok(monitor::healthz(s, &q).1),
        "JSZ" => monitor::jsz(s, &q),
        "GATEWAYZ" => Ok(
            json!({"server_id": s.id, "now": monitor::rfc3339(SystemTime::now()),
            "name": "", "host": "", "port": 0, "outbound_gateways": {}, "inbound_gateways": {}}),
        ),
        "STATSZ" => Ok(statsz(s)),
        "IDZ" => Ok(json!({"server_id": s.id, "server_name": s.name})),
        _ => return None,
    };
    Some(envelope(s, r))
}

/// nats-server's reply envelope: `{"server":…,"data":…}`, or `"error"` for bad options.
fn envelope(s: &Server, r: Result<Value, monitor::QueryError>) -> Value {
    match r {
        Ok(data) => json!({"server": server_info(s), "data": data}),
        Err(e) => {
            json!({"server": server_info(s), "error": {"code": 400, "description": e.to_string()}})
        }
    }
}

/// Answers one request. Returns the reply body, or `None` when we should stay silent.
pub fn handle_request(s: &Arc<Server>, subject: &str, body: &[u8]) -> Option<Value> {
    let tokens: Vec<&str> = subject.split('.').collect();
    match tokens.as_slice() {
        ["$SYS", "REQ", "SERVER", "PING"] => {
            filter_matches(s, body).then(|| json!({"server": server_info(s), "statsz": statsz(s)}))
        }
        ["$SYS", "REQ", "SERVER", "PING", ep] => {
            if !filter_matches(s, body) {
                return None;
            }
            endpoint(s, ep, body)
        }
        ["$SYS", "REQ", "SERVER", id, ep] if *id == s.id => endpoint(s, ep, body),
        ["$SYS", "REQ", "ACCOUNT", acc, ep] if *acc != "PING" => {
            s.account(acc)?;
            let mut q = options_query(body);
            q.insert("acc".into(), acc.to_string());
            let r = match *ep {
                "CONNZ" => monitor::connz(s, &q),
                "SUBSZ" => monitor::subsz(s, &q),
                "LEAFZ" => monitor::leafz(s, &q),
                "INFO" => Ok(monitor::accountz(s, &q)),
                "STATZ" => Ok(monitor::accstatz(s)),
                _ => return None,
            };
            Some(envelope(s, r))
        }
        _ => None,
    }
}

/// Starts the system service (when the system account exists): its request
/// subscriptions and the periodic STATSZ.
pub fn start(server: Arc<Server>) {
    let Some(acc) = server.account(&server.system_account) else {
        return;
    };
    let svc = Service::start(&server, "system", ServiceOpts::default());
    let subjects = [
        "$SYS.REQ.SERVER.PING".to_string(),
        "$SYS.REQ.SERVER.PING.*".to_string(),
        format!("$SYS.REQ.SERVER.{}.*", server.id),
        "$SYS.REQ.ACCOUNT.*.*".to_string(),
    ];
    for subj in &subjects {
        let (s, reply_acc) = (server.clone(), acc.clone());
        let handler = sync_handler(move |m| {
            let Some(reply) = &m.reply else {
                return Ok(());
            };
            if let Some(resp) = handle_request(&s, &m.subject, &m.payload) {
                let payload = serde_json::to_vec(&resp).map_err(|e| e.to_string())?;
                s.publish_internal(&reply_acc, reply, None, &payload);
            }
            Ok(())
        });
        if let Err(e) = svc.subscribe(&acc, subj, None, handler) {
            tracing::error!("system service: cannot subscribe to {subj}: {e}");
        }
    }
    // The live topology view: peers' views in, ours out (see monitor/topology.rs).
    let s = server.clone();
    let handler = sync_handler(move |m| {
        if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
            monitor::topology::record(&s, v);
        }
        Ok(())
    });
    if let Err(e) = svc.subscribe(&acc, "$SYS.SERVER.*.TOPOLOGY", None, handler) {
        tracing::error!("system service: cannot subscribe to topology events: {e}");
    }
    // Store-and-forward marks recorded by the other members of the cluster.
    let s = server.clone();
    let handler = sync_handler(move |m| {
        let epoch = m.subject.rsplit('.').next().unwrap_or("");
        if let Some(seq) = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
        {
            s.spool_marks.record(epoch, seq);
        }
        Ok(())
    });
    if let Err(e) = svc.subscribe(&acc, SPOOL_MARKS_SUBJECT, None, handler) {
        tracing::error!("system service: cannot subscribe to spool marks: {e}");
    }
    // Published by the service itself, which never hears its own publishes: the view goes
    // to the other servers only, and a server alone counts no message for it.
    let (s, topo_svc, topo_acc) = (server.clone(), svc.clone(), acc.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(monitor::topology::INTERVAL);
        let subject = format!("$SYS.SERVER.{}.TOPOLOGY", s.id);
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let body = serde_json::to_vec(&monitor::topology::local(&s)).unwrap_or_default();
                    topo_svc.publish(&topo_acc, &subject, None, None, &body);
                }
            }
        }
    });
    let s = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATSZ_INTERVAL);
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let subject = format!("$SYS.SERVER.{}.STATSZ", s.id);
                    s.publish_event(&subject, &json!({"server": server_info(&s), "statsz": statsz(&s)}));
                }
            }
        }
    });
}

/// Where hub servers share store-and-forward marks (server/spool.rs `Marks`).
const SPOOL_MARKS_SUBJECT: &str = "$SYS.CANOPY.LSPOOL.*";

/// Tells the other members of the cluster how far a leaf's replay got here, so the leaf
/// resumes as precisely when it reconnects to one of them.
pub fn share_spool_mark(server: &Server, epoch: &str, seq: u64) {
    if let Some(acc) = server.account(&server.system_account) {
        let subject = format!("$SYS.CANOPY.LSPOOL.{epoch}");
        if acc.sublist.has_interest(&subject) {
            server.publish_internal(&acc, &subject, None, seq.to_string().as_bytes());
        }
    }
}

/// Operator mode: answers the account resolver's requests (`$SYS.REQ.CLAIMS.UPDATE|LIST`,
/// `$SYS.REQ.ACCOUNT.<acc>.CLAIMS.UPDATE|LOOKUP`, see [`Server::handle_claims_request`])
/// as a service of its own in the system account.
pub fn start_claims(server: Arc<Server>) {
    if server.trust().is_none() {
        return;
    }
    let Some(acc) = server.account(&server.system_account) else {
        return;
    };
    let svc = Service::start(&server, "resolver", ServiceOpts::default());
    let subjects = [
        "$SYS.REQ.CLAIMS.UPDATE",
        "$SYS.REQ.CLAIMS.LIST",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP",
    ];
    for subj in subjects {
        let (s, reply_acc) = (server.clone(), acc.clone());
        let handler = sync_handler(move |m| {
            let Some(reply) = &m.reply else {
                return Ok(());
            };
            if let Some(resp) = s.handle_claims_request(&m.subject, &m.payload) {
                s.publish_internal(&reply_acc, reply, None, &resp);
            }
            Ok(())
        });
        if let Err(e) = svc.subscribe(&acc, subj, None, handler) {
            tracing::error!("resolver service: cannot subscribe to {subj}: {e}");
        }
    }
}
