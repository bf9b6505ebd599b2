//! The system account's internal client: answers `$SYS.REQ.SERVER.PING` (STATSZ),
//! `$SYS.REQ.SERVER.PING.<ENDPOINT>` and `$SYS.REQ.SERVER.<id>.<ENDPOINT>` with the same
//! JSON bodies as HTTP monitoring (nats-server's `{"server":…,"data":…}` envelope), and
//! publishes `$SYS.SERVER.<id>.STATSZ` periodically and connect/disconnect events.
//!
//! It is an ordinary subscriber in the system account whose "socket" is this task: the
//! delivery path encodes MSG into its outbound buffer like for any client, and this task
//! parses that buffer instead of writing it to the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use canopy_proto::{Op, Parser, ParserLimits, Role};
use serde_json::{json, Value};

use crate::core::account::Account;
use crate::core::conn::{ConnShared, FlushList};
use crate::core::deliver::{deliver, Msg, Origin, Scratch};
use crate::core::interest::LinkClass;
use crate::monitor;
use crate::server::version;
use crate::server::Server;

/// How often `$SYS.SERVER.<id>.STATSZ` is published.
const STATSZ_INTERVAL: Duration = Duration::from_secs(10);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The `server` part of every system message.
pub fn server_info(s: &Server) -> Value {
    json!({
        "name": s.name,
        "host": s.opts().host,
        "id": s.id,
        "cluster": s.cluster_name(),
        "ver": version::NATS_COMPAT_VERSION,
        "jetstream": false,
        "flags": 0,
        "seq": SEQ.fetch_add(1, Ordering::Relaxed) + 1,
        "time": monitor::rfc3339(SystemTime::now()),
    })
}

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

impl Server {
    /// Publishes a message from inside the server into an account.
    pub fn publish_internal(
        &self,
        acc: &Account,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) {
        let result = acc.sublist.matches(subject);
        let msg = Msg {
            subject: subject.as_bytes(),
            reply: reply.map(str::as_bytes),
            hdr_len: None,
            payload,
        };
        let origin = Origin {
            cid: 0,
            echo: true,
            class: LinkClass::Client,
            queues: None,
            peer: None,
        };
        let mut flush = FlushList::default();
        let mut scratch = Scratch::default();
        let d = deliver(acc, &result, &msg, &origin, &mut scratch, &mut flush);
        flush.flush();
        self.stats.out_msgs.fetch_add(d.msgs, Ordering::Relaxed);
        self.stats.out_bytes.fetch_add(d.bytes, Ordering::Relaxed);
    }

    /// Publishes a system event in the system account (no-op without subscribers).
    pub fn publish_event(&self, subject: &str, body: &Value) {
        if let Some(acc) = self.account(&self.system_account) {
            if acc.sublist.has_interest(subject) {
                let payload = serde_json::to_vec(body).unwrap_or_default();
                self.publish_internal(&acc, subject, None, &payload);
            }
        }
    }
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
        "HEALTHZ" => Ok(json!({"status": "ok"})),
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

/// Starts the internal system client (when the system account exists).
pub fn start(server: Arc<Server>) {
    let Some(acc) = server.account(&server.system_account) else {
        return;
    };
    let conn = ConnShared::internal(server.next_cid(), "system", &acc.name, true);
    let subjects = [
        "$SYS.REQ.SERVER.PING".to_string(),
        "$SYS.REQ.SERVER.PING.*".to_string(),
        format!("$SYS.REQ.SERVER.{}.*", server.id),
        "$SYS.REQ.ACCOUNT.*.*".to_string(),
    ];
    for (i, subj) in subjects.iter().enumerate() {
        acc.subscribe_internal(&conn, subj, Bytes::from((i + 1).to_string()));
    }
    let s = server.clone();
    tokio::spawn(async move {
        let mut parser = Parser::new(Role::ClientSide, ParserLimits::link(64 * 1024 * 1024));
        let mut buf = BytesMut::new();
        let mut tick = tokio::time::interval(STATSZ_INTERVAL);
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = conn.output_ready() => {}
                _ = tick.tick() => {
                    let subject = format!("$SYS.SERVER.{}.STATSZ", s.id);
                    s.publish_event(&subject, &json!({"server": server_info(&s), "statsz": statsz(&s)}));
                    continue;
                }
            }
            let mut out = BytesMut::new();
            conn.take_output(&mut out);
            buf.extend_from_slice(&out);
            while let Ok(Some(op)) = parser.next(&mut buf) {
                if let Op::Msg {
                    subject,
                    reply: Some(reply),
                    header_len,
                    payload,
                    ..
                } = op
                {
                    let body = match header_len {
                        Some(h) => payload.get(h..).unwrap_or(&[]),
                        None => &payload[..],
                    };
                    let subject = String::from_utf8_lossy(&subject);
                    if let Some(resp) = handle_request(&s, &subject, body) {
                        let payload = serde_json::to_vec(&resp).unwrap_or_default();
                        let reply = String::from_utf8_lossy(&reply);
                        s.publish_internal(&acc, &reply, None, &payload);
                    }
                }
            }
        }
    });
}

/// Operator mode: answers the account resolver's requests (`$SYS.REQ.CLAIMS.UPDATE|LIST`,
/// `$SYS.REQ.ACCOUNT.<acc>.CLAIMS.UPDATE|LOOKUP`, see [`Server::handle_claims_request`])
/// with its own internal subscriber in the system account.
pub fn start_claims(server: Arc<Server>) {
    if server.trust().is_none() {
        return;
    }
    let Some(acc) = server.account(&server.system_account) else {
        return;
    };
    let conn = ConnShared::internal(server.next_cid(), "resolver", &acc.name, false);
    let subjects = [
        "$SYS.REQ.CLAIMS.UPDATE",
        "$SYS.REQ.CLAIMS.LIST",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP",
    ];
    for (i, subj) in subjects.iter().enumerate() {
        acc.subscribe_internal(&conn, subj, Bytes::from((i + 1).to_string()));
    }
    tokio::spawn(async move {
        let mut parser = Parser::new(Role::ClientSide, ParserLimits::link(64 * 1024 * 1024));
        let mut buf = BytesMut::new();
        loop {
            tokio::select! {
                _ = server.shutdown.cancelled() => return,
                _ = conn.output_ready() => {}
            }
            let mut out = BytesMut::new();
            conn.take_output(&mut out);
            buf.extend_from_slice(&out);
            while let Ok(Some(op)) = parser.next(&mut buf) {
                if let Op::Msg {
                    subject,
                    reply: Some(reply),
                    payload,
                    ..
                } = op
                {
                    let subject = String::from_utf8_lossy(&subject);
                    if let Some(resp) = server.handle_claims_request(&subject, &payload) {
                        let reply = String::from_utf8_lossy(&reply);
                        server.publish_internal(&acc, &reply, None, &resp);
                    }
                }
            }
        }
    });
}

fn client_info(s: &Server, conn: &ConnShared) -> Value {
    let m = conn.meta.lock().clone();
    json!({
        "start": monitor::rfc3339(conn.start),
        "host": conn.addr.ip().to_string(),
        "id": conn.cid,
        "acc": m.account,
        "user": m.user,
        "name": m.name,
        "lang": m.lang,
        "ver": m.version,
        "server": s.name,
        "kind": "Client",
        "type": "nats",
    })
}

/// `$SYS.ACCOUNT.<acc>.CONNECT` (nats-server's `client_connect` advisory).
pub fn client_connected(s: &Server, conn: &ConnShared, account: &str) {
    let subject = format!("$SYS.ACCOUNT.{account}.CONNECT");
    s.publish_event(
        &subject,
        &json!({
            "type": "io.nats.server.advisory.v1.client_connect",
            "id": crate::core::nuid(),
            "timestamp": monitor::rfc3339(SystemTime::now()),
            "server": server_info(s),
            "client": client_info(s, conn),
        }),
    );
}

/// `$SYS.ACCOUNT.<acc>.DISCONNECT` (nats-server's `client_disconnect` advisory).
pub fn client_disconnected(s: &Server, conn: &ConnShared, account: &str) {
    let subject = format!("$SYS.ACCOUNT.{account}.DISCONNECT");
    let reason = conn
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let st = &conn.stats;
    s.publish_event(
        &subject,
        &json!({
            "type": "io.nats.server.advisory.v1.client_disconnect",
            "id": crate::core::nuid(),
            "timestamp": monitor::rfc3339(SystemTime::now()),
            "server": server_info(s),
            "client": client_info(s, conn),
            "sent": {"msgs": st.out_msgs.load(Ordering::Relaxed), "bytes": st.out_bytes.load(Ordering::Relaxed)},
            "received": {"msgs": st.in_msgs.load(Ordering::Relaxed), "bytes": st.in_bytes.load(Ordering::Relaxed)},
            "reason": reason,
        }),
    );
}
