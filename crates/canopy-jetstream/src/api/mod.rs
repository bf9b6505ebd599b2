//! The `$JS.API` handlers: routing by subject, nats-server's response envelopes
//! (`type` plus the payload or an `error` object), and one handler per request kind.
//! Handlers run on the engine's API worker threads; work on a stream's data is sent to that
//! stream's thread ([`crate::stream::StreamHandle::call`]).

mod consumers;
mod direct;
pub mod errors;
pub(crate) mod streams;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::engine::{Account, ApiJob, Engine};
use crate::host::{Host, JsMsg};
use crate::stream::{Cmd, StreamCore};
use errors::{ApiError, E};

pub(crate) use direct::{direct_get, direct_get_inline};
pub(crate) use streams::stream_detail;

/// The JetStream API level we implement: 1, nats-server 2.11's (per-message TTL, subject
/// delete markers, consumer pause, priority groups).
pub const API_LEVEL: u32 = 1;

/// A handler's answer: the response `type` suffix and the payload or error.
pub(crate) type Reply = (&'static str, Result<Value, E>);

fn envelope(kind: &str, r: Result<Value, E>) -> (Value, bool) {
    let t = format!("io.nats.jetstream.api.v1.{kind}");
    match r {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                let mut out = serde_json::Map::with_capacity(o.len() + 1);
                out.insert("type".into(), Value::String(t));
                out.extend(std::mem::take(o));
                return (Value::Object(out), false);
            }
            (json!({"type": t}), false)
        }
        Err(e) => {
            let mut v = json!({"type": t, "error": ApiError::from(e)});
            // nats-server's paged responses carry their (zero) paging fields even on
            // errors, consumer pages an empty list too: the fields are not optional in
            // its response types.
            if let (Some(&(_, list)), Some(o)) =
                (PAGED.iter().find(|p| p.0 == kind), v.as_object_mut())
            {
                for k in ["total", "offset", "limit"] {
                    o.insert(k.into(), json!(0));
                }
                if let Some(list) = list {
                    o.insert(list.into(), json!([]));
                }
            }
            (v, true)
        }
    }
}

/// Adds the server's version and API level to the stream and consumer configurations a
/// response carries (`_nats.ver`, `_nats.level`, as nats-server 2.11).
fn stamped(engine: &Engine, kind: &str, mut r: Result<Value, E>) -> Result<Value, E> {
    let list = match kind {
        "stream_create_response"
        | "stream_update_response"
        | "stream_info_response"
        | "consumer_create_response"
        | "consumer_info_response" => None,
        "stream_list_response" => Some("streams"),
        "consumer_list_response" => Some("consumers"),
        _ => return r,
    };
    let Ok(v) = r.as_mut() else {
        return r;
    };
    let version = engine.host.info().version;
    let stamp = |item: &mut Value| {
        if let Some(c) = item.get_mut("config") {
            crate::types::add_dynamic_metadata(c, &version, API_LEVEL);
        }
    };
    match list {
        None => stamp(v),
        Some(l) => {
            if let Some(items) = v.get_mut(l).and_then(Value::as_array_mut) {
                items.iter_mut().for_each(stamp);
            }
        }
    }
    r
}

/// Response kinds with paging fields, and the list an error response still carries.
const PAGED: &[(&str, Option<&str>)] = &[
    ("stream_info_response", None),
    ("stream_names_response", None),
    ("stream_list_response", None),
    ("consumer_names_response", Some("consumers")),
    ("consumer_list_response", Some("consumers")),
];

/// Parses a JSON body (empty or `null`, as async-nats sends for "no options": the
/// default).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T, E> {
    let trimmed = b.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| E::InvalidJson(e.to_string()))
}

/// Handles one queued API request.
pub(crate) fn handle(engine: &Engine, job: ApiJob) {
    let ApiJob {
        account, msg, rest, ..
    } = job;
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    if let Some(r) = rest.strip_prefix("DIRECT.GET.") {
        direct_get(&account, &msg, r, engine.host.as_ref());
        return;
    }
    let (kind, res) = route(engine, &account, &msg, &rest);
    let (v, is_err) = envelope(kind, stamped(engine, kind, res));
    engine.api_total.fetch_add(1, Ordering::Relaxed);
    account.api_total.fetch_add(1, Ordering::Relaxed);
    if is_err {
        engine.api_errors.fetch_add(1, Ordering::Relaxed);
        account.api_errors.fetch_add(1, Ordering::Relaxed);
    }
    let response = v.to_string();
    // A consumer create names the stream's identity (sources notice a recreated origin).
    let hdr = (!is_err)
        .then(|| created_on(&rest))
        .flatten()
        .and_then(|s| account.stream(s))
        .map(|h| crate::util::add_headers(b"", &[("Nats-Stream-Identity", h.uid.clone())]));
    engine.host.publish(
        &account.name,
        &reply,
        None,
        hdr.as_deref(),
        response.as_bytes(),
    );
    audit(engine, &account, &msg, &response);
}

/// Answers `reply` with a response of `kind` (counted like any answered request); for
/// answers the cluster layer makes outside [`handle`].
pub(crate) fn reply_to(
    engine: &Engine,
    account: &Account,
    reply: &str,
    kind: &str,
    res: Result<Value, E>,
) {
    account.api_total.fetch_add(1, Ordering::Relaxed);
    if res.is_err() {
        account.api_errors.fetch_add(1, Ordering::Relaxed);
    }
    reply_in(engine, &account.name, reply, kind, res);
}

/// Answers `reply` in `account` (which need not have JetStream: the system account's
/// `SERVER.REMOVE`), counted on the engine only.
pub(crate) fn reply_in(
    engine: &Engine,
    account: &str,
    reply: &str,
    kind: &str,
    res: Result<Value, E>,
) {
    let (v, is_err) = envelope(kind, stamped(engine, kind, res));
    engine.api_total.fetch_add(1, Ordering::Relaxed);
    if is_err {
        engine.api_errors.fetch_add(1, Ordering::Relaxed);
    }
    engine
        .host
        .publish(account, reply, None, None, v.to_string().as_bytes());
}

/// The stream of a consumer create request (`CONSUMER.CREATE.<s>…`,
/// `CONSUMER.DURABLE.CREATE.<s>.<c>`).
fn created_on(rest: &str) -> Option<&str> {
    let r = rest
        .strip_prefix("CONSUMER.CREATE.")
        .or_else(|| rest.strip_prefix("CONSUMER.DURABLE.CREATE."))?;
    r.split('.').next()
}

/// The `api_audit` advisory on `$JS.EVENT.ADVISORY.API`, for each answered request.
fn audit(engine: &Engine, account: &Account, msg: &JsMsg, response: &str) {
    let subject = format!("{}.API", crate::advisory::PREFIX);
    if !engine.host.has_interest(&account.name, &subject) {
        return;
    }
    let info = engine.host.info();
    let mut client = json!({"acc": account.name.as_ref()});
    if let Some(o) = client.as_object_mut() {
        if msg.origin.cid > 0 {
            o.insert("id".into(), json!(msg.origin.cid));
        }
        if !msg.origin.user.is_empty() {
            o.insert("user".into(), json!(msg.origin.user));
        }
        let server = msg.origin.server.as_deref().unwrap_or(&info.server_name);
        o.insert("server".into(), json!(server));
    }
    let mut fields = json!({"server": info.server_name, "client": client, "subject": msg.subject});
    if !msg.payload.is_empty() {
        fields["request"] = Value::String(String::from_utf8_lossy(&msg.payload).into_owned());
    }
    fields["response"] = Value::String(response.to_string());
    crate::advisory::publish(
        engine.host.as_ref(),
        &account.name,
        engine.cfg.domain.as_deref(),
        &subject,
        "api_audit",
        fields,
    );
}

fn route(e: &Engine, acc: &Arc<Account>, m: &JsMsg, rest: &str) -> Reply {
    let body = &m.payload[..];
    let (head, arg) = split_last_name(rest);
    match head {
        "INFO" if arg.is_none() => ("account_info_response", Ok(account_info(e, acc))),
        "STREAM.CREATE" => ("stream_create_response", streams::create(e, acc, arg, body)),
        "STREAM.UPDATE" => ("stream_update_response", streams::update(e, acc, arg, body)),
        "STREAM.INFO" => ("stream_info_response", streams::info(acc, arg, body)),
        "STREAM.DELETE" => ("stream_delete_response", streams::delete(e, acc, arg)),
        "STREAM.PURGE" => ("stream_purge_response", streams::purge(acc, arg, body)),
        "STREAM.MSG.GET" => ("stream_msg_get_response", streams::msg_get(acc, arg, body)),
        "STREAM.MSG.DELETE" => (
            "stream_msg_delete_response",
            streams::msg_delete(acc, arg, body),
        ),
        "STREAM.NAMES" if arg.is_none() => ("stream_names_response", streams::names(acc, body)),
        "STREAM.LIST" if arg.is_none() => ("stream_list_response", streams::list(acc, body)),
        "CONSUMER.NAMES" => ("consumer_names_response", consumers::names(acc, arg, body)),
        "CONSUMER.LIST" => ("consumer_list_response", consumers::list(acc, arg, body)),
        _ => route_more(e, acc, rest, body),
    }
}

fn route_more(e: &Engine, acc: &Arc<Account>, rest: &str, body: &[u8]) -> Reply {
    let toks: Vec<&str> = rest.splitn(5, '.').collect();
    match toks.as_slice() {
        ["CONSUMER", "CREATE", s] => (
            "consumer_create_response",
            consumers::create(e, acc, s, None, None, false, body),
        ),
        ["CONSUMER", "CREATE", s, c] => (
            "consumer_create_response",
            consumers::create(e, acc, s, Some(c), None, false, body),
        ),
        ["CONSUMER", "CREATE", s, c, f] => (
            "consumer_create_response",
            consumers::create(e, acc, s, Some(c), Some(f), false, body),
        ),
        ["CONSUMER", "DURABLE", "CREATE", s, c] => (
            "consumer_create_response",
            consumers::create(e, acc, s, Some(c), None, true, body),
        ),
        ["CONSUMER", "INFO", s, c] => ("consumer_info_response", consumers::info(acc, s, c)),
        ["CONSUMER", "PAUSE", s, c] => {
            ("consumer_pause_response", consumers::pause(acc, s, c, body))
        }
        ["CONSUMER", "UNPIN", s, c] => {
            ("consumer_unpin_response", consumers::unpin(acc, s, c, body))
        }
        ["CONSUMER", "DELETE", s, c] => ("consumer_delete_response", consumers::delete(acc, s, c)),
        ["CONSUMER", "LEADER", "STEPDOWN", s, c] => (
            "consumer_leader_stepdown_response",
            crate::cluster::ops::leader_stepdown(e, acc, s, Some(c), body),
        ),
        ["STREAM", "LEADER", "STEPDOWN", s] => (
            "stream_leader_stepdown_response",
            crate::cluster::ops::leader_stepdown(e, acc, s, None, body),
        ),
        ["CONSUMER", "LEADER", "STEPDOWN", ..] => {
            ("consumer_leader_stepdown_response", Err(E::ClusterRequired))
        }
        ["STREAM", "LEADER", "STEPDOWN", ..] => {
            ("stream_leader_stepdown_response", Err(E::ClusterRequired))
        }
        ["STREAM", "PEER", "REMOVE", ..] => {
            ("stream_remove_peer_response", Err(E::ClusterRequired))
        }
        ["STREAM", "PEER", "EVACUATE", ..] | ["STREAM", "CANCEL_MOVE", ..] => {
            ("stream_update_response", Err(E::ClusterRequired))
        }
        ["META", ..] => ("meta_leader_stepdown_response", Err(E::ClusterRequired)),
        ["SERVER", ..] => ("meta_server_remove_response", Err(E::ClusterRequired)),
        ["ACCOUNT", ..] => ("account_purge_response", Err(E::ClusterRequired)),
        ["STREAM", "SNAPSHOT", ..] | ["STREAM", "RESTORE", ..] => (
            "stream_snapshot_response",
            Err(E::StreamGeneral(
                "stream snapshot and restore are not supported yet".into(),
            )),
        ),
        _ => ("error_response", Err(E::BadRequest)),
    }
}

/// Splits `STREAM.INFO.<name>` into (`STREAM.INFO`, Some(name)) for the known heads.
fn split_last_name(rest: &str) -> (&str, Option<&str>) {
    const HEADS: &[&str] = &[
        "STREAM.MSG.DELETE",
        "STREAM.MSG.GET",
        "STREAM.CREATE",
        "STREAM.UPDATE",
        "STREAM.INFO",
        "STREAM.DELETE",
        "STREAM.PURGE",
        "CONSUMER.NAMES",
        "CONSUMER.LIST",
    ];
    for h in HEADS {
        if let Some(r) = rest.strip_prefix(h) {
            if let Some(name) = r.strip_prefix('.') {
                if !name.contains('.') && !name.is_empty() {
                    return (h, Some(name));
                }
                return ("", None);
            }
        }
    }
    (rest, None)
}

/// `$JS.API.INFO`.
pub(crate) fn account_info(e: &Engine, acc: &Account) -> Value {
    let (mem, file, rmem, rfile) = acc.usage();
    let limits = acc.limits.read().to_json();
    let mut v = json!({
        "memory": mem, "storage": file,
        "reserved_memory": rmem, "reserved_storage": rfile,
        "streams": acc.streams.read().len(),
        "consumers": acc.consumer_count(),
        "limits": limits,
        "api": {
            "level": API_LEVEL,
            "total": acc.api_total.load(Ordering::Relaxed),
            "errors": acc.api_errors.load(Ordering::Relaxed),
        },
    });
    if let (Some(d), Some(o)) = (&e.cfg.domain, v.as_object_mut()) {
        o.insert("domain".into(), json!(d));
    }
    v
}

/// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`: straight to the stream's thread.
pub(crate) fn msg_next(acc: &Account, m: &JsMsg, rest: &str, host: &dyn Host) {
    if !msg_next_inline(acc, m, rest) {
        if let Some(reply) = &m.reply {
            // No such consumer: what a client would see with nobody subscribed.
            let h = crate::util::status(503, "", &[]);
            host.publish(&acc.name, reply, None, Some(&h), &[]);
        }
    }
}

/// As [`msg_next`] where it only hands the request on (a delivering reader): `false` when
/// `rest` names no stream here (nothing is done then).
pub(crate) fn msg_next_inline(acc: &Account, m: &JsMsg, rest: &str) -> bool {
    let Some(reply) = m.reply.clone() else {
        return true;
    };
    let (s, c) = rest.split_once('.').unwrap_or((rest, ""));
    let Some(h) = acc.stream(s) else {
        return false;
    };
    h.next(Cmd::Next {
        consumer: c.to_string(),
        reply,
        body: m.payload.to_vec(),
    });
    true
}

/// Runs `f` on stream `name`'s thread.
pub(crate) fn on_stream<R: Send + 'static>(
    acc: &Account,
    name: Option<&str>,
    f: impl FnOnce(&mut StreamCore) -> Result<R, E> + Send + 'static,
) -> Result<R, E> {
    let h = name.and_then(|n| acc.stream(n)).ok_or(E::StreamNotFound)?;
    h.call(f)
        .unwrap_or_else(|| Err(E::StreamGeneral("stream is not responding".into())))
}

/// Paging request `{offset, subject}`.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct PageReq {
    pub offset: usize,
    pub subject: Option<String>,
}
