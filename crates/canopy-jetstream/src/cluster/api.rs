//! `$JS.API` in a cluster: exactly one member answers each request.
//!
//! Every member hears every request (each subscribes `$JS.API.>` in the account, and the
//! routes carry the request to all of them). [`Cluster::admit_api`] decides on each:
//! - **meta requests** (account `INFO`, `STREAM.CREATE/UPDATE/DELETE`, `STREAM.NAMES/LIST`,
//!   `STREAM.PEER.REMOVE`, `META.LEADER.STEPDOWN`, and anything unknown): the meta leader
//!   answers, here; `SERVER.REMOVE` only from the system account ([`super::ops`]);
//! - **stream requests** (stream info, purge, message get/delete, Direct Get, leader
//!   step-downs, every `CONSUMER.*` of the stream, `MSG.NEXT`): the member holding the
//!   stream answers with the ordinary single-server handlers; the meta leader answers
//!   "stream not found" when the cluster knows no such stream, and "stream is offline"
//!   (10118; consumer info: 10119 "consumer is offline") when all its hosts are down;
//! - with **no meta leader**, one member (the lowest server name among this server and its
//!   routed JetStream peers) answers `10008` "JetStream system temporarily unavailable"
//!   after half a second, for meta requests and for streams it knows nothing of (nats-server
//!   sends that answer, delayed, from every member; one answer is what clients expect).
//!
//! Stream create, update and delete are proposed to the meta group; the member that hosts
//! the stream answers the client once the entry is committed and applied there (so the
//! answer means the stream exists on its server, as in nats-server).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::meta::{Action, Entry, StreamAssignment};
use super::Cluster;
use crate::api::errors::E;
use crate::api::streams;
use crate::api::PageReq;
use crate::engine::{Account, Engine};
use crate::host::JsMsg;
use crate::stream::StreamCore;
use crate::types::StorageType;
use crate::util::now_ns;

/// How long the fallback member waits before answering `10008` (nats-server's
/// `errRespDelay`).
const UNAVAILABLE_DELAY: Duration = Duration::from_millis(500);
/// How long the meta leader waits for the stream infos of a list or account info.
pub(crate) const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// Stream list page size (as on one server).
const LIST_LIMIT: usize = 256;
const NAMES_LIMIT: usize = 1024;

/// What a request is about.
#[derive(Debug, PartialEq, Eq)]
enum Class<'a> {
    /// Answered by the meta leader.
    Meta(MetaOp<'a>),
    /// Answered where the stream lives (`direct`: a Direct Get, which mirrors also serve).
    Stream { name: &'a str, direct: bool },
}

#[derive(Debug, PartialEq, Eq)]
enum MetaOp<'a> {
    Info,
    Create(&'a str),
    Update(&'a str),
    Delete(&'a str),
    Names,
    List,
    Stepdown,
    PeerRemove(&'a str),
    /// `SERVER.REMOVE`: served from the system account only (see [`Cluster::server_remove`]).
    ServerRemove,
    /// Anything else: the leader runs the single-server handler (errors included).
    Local,
}

fn classify(rest: &str) -> Class<'_> {
    let toks: Vec<&str> = rest.split('.').collect();
    let stream = |i: usize| match toks.get(i) {
        Some(n) if !n.is_empty() => Class::Stream {
            name: n,
            direct: false,
        },
        _ => Class::Meta(MetaOp::Local),
    };
    match toks.as_slice() {
        ["INFO"] => Class::Meta(MetaOp::Info),
        ["STREAM", "CREATE", n] => Class::Meta(MetaOp::Create(n)),
        ["STREAM", "UPDATE", n] => Class::Meta(MetaOp::Update(n)),
        ["STREAM", "PEER", "REMOVE", n] => Class::Meta(MetaOp::PeerRemove(n)),
        ["SERVER", "REMOVE"] => Class::Meta(MetaOp::ServerRemove),
        ["STREAM", "DELETE", n] => Class::Meta(MetaOp::Delete(n)),
        ["STREAM", "NAMES"] => Class::Meta(MetaOp::Names),
        ["STREAM", "LIST"] => Class::Meta(MetaOp::List),
        ["META", "LEADER", "STEPDOWN"] => Class::Meta(MetaOp::Stepdown),
        ["STREAM", "MSG" | "LEADER" | "PEER", _, ..] => stream(3),
        ["STREAM", _, ..] => stream(2),
        ["DIRECT", "GET", n, ..] if !n.is_empty() => Class::Stream {
            name: n,
            direct: true,
        },
        ["CONSUMER", "DURABLE" | "MSG" | "LEADER", _, ..] => stream(3),
        ["CONSUMER", _, ..] => stream(2),
        _ => Class::Meta(MetaOp::Local),
    }
}

/// The response type of a request kind (for the answers the cluster layer makes itself).
fn kind_of(rest: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("INFO", "account_info_response"),
        ("STREAM.CREATE.", "stream_create_response"),
        ("STREAM.UPDATE.", "stream_update_response"),
        ("STREAM.DELETE.", "stream_delete_response"),
        ("STREAM.NAMES", "stream_names_response"),
        ("STREAM.LIST", "stream_list_response"),
        ("STREAM.INFO.", "stream_info_response"),
        ("STREAM.PURGE.", "stream_purge_response"),
        ("STREAM.MSG.GET.", "stream_msg_get_response"),
        ("STREAM.MSG.DELETE.", "stream_msg_delete_response"),
        ("META.LEADER.STEPDOWN", "meta_leader_stepdown_response"),
        ("STREAM.LEADER.STEPDOWN.", "stream_leader_stepdown_response"),
        (
            "CONSUMER.LEADER.STEPDOWN.",
            "consumer_leader_stepdown_response",
        ),
        ("STREAM.PEER.REMOVE.", "stream_remove_peer_response"),
        ("SERVER.REMOVE", "meta_server_remove_response"),
        ("CONSUMER.CREATE.", "consumer_create_response"),
        ("CONSUMER.DURABLE.CREATE.", "consumer_create_response"),
        ("CONSUMER.INFO.", "consumer_info_response"),
        ("CONSUMER.DELETE.", "consumer_delete_response"),
        ("CONSUMER.NAMES.", "consumer_names_response"),
        ("CONSUMER.LIST.", "consumer_list_response"),
    ];
    KINDS
        .iter()
        .find(|(p, _)| rest == p.trim_end_matches('.') || rest.starts_with(p))
        .map_or("error_response", |(_, k)| k)
}

impl Cluster {
    /// Is `stream` a replicated stream with `allow_direct` (its replicas answer direct
    /// gets through a queue group, not through the `$JS.API.>` handlers)?
    fn serves_direct_in_group(&self, acc: &Account, stream: &str) -> bool {
        self.machine
            .state
            .lock()
            .stream(&acc.name, stream)
            .is_some_and(|sa| !sa.group.is_empty() && sa.config.allow_direct)
    }

    /// Should this member handle `rest` with the single-server handlers? `false`: it stays
    /// silent, or the cluster layer answers (meta requests on the leader, `10008`).
    pub(crate) fn admit_api(self: &Arc<Self>, acc: &Arc<Account>, msg: &JsMsg, rest: &str) -> bool {
        let leader = self.meta_leader();
        let is_leader = leader.as_deref() == Some(self.me.name.as_str());
        match classify(rest) {
            Class::Stream { name, direct } => {
                if direct && self.serves_direct_in_group(acc, name) {
                    // Its replicas' queue subscriptions answer (replica::DirectSubs).
                    return false;
                }
                let local = if direct {
                    acc.direct_stream(name).is_some()
                } else {
                    acc.stream(name).is_some()
                };
                if local {
                    // A replicated stream: its ready leader answers, not the followers —
                    // nor a member whose copy is open but whose Raft member is not
                    // attached yet (it would answer for a stream nobody leads yet, and a
                    // create waiting for the leader's answer would be answered too early).
                    let replicated = self
                        .machine
                        .state
                        .lock()
                        .stream(&acc.name, name)
                        .is_some_and(|sa| !sa.group.is_empty());
                    return match self.engine.upgrade() {
                        Some(e) if replicated || e.raft_group(&acc.name, name).is_some() => {
                            e.is_stream_leader(&acc.name, name)
                        }
                        _ => true,
                    };
                }
                let assigned = self.machine.state.lock().stream(&acc.name, name).cloned();
                if let Some(sa) = assigned {
                    // Its hosts answer; when all of them are down, the meta leader answers
                    // the info requests (as nats-server: the others stay unanswered).
                    let offline = if rest.starts_with("STREAM.INFO.") {
                        Some(E::StreamOffline)
                    } else if rest.starts_with("CONSUMER.INFO.") {
                        Some(E::ConsumerOffline)
                    } else {
                        None
                    };
                    if let Some(err) = offline.filter(|_| is_leader && self.offline(&sa)) {
                        self.answer_later(acc, msg, rest, err);
                    }
                    return false;
                }
                if is_leader {
                    // Nobody has it: the ordinary handlers answer "not found".
                    return true;
                }
                if leader.is_none() && self.is_fallback() {
                    self.answer_later(acc, msg, rest, E::ClusterNotAvail);
                }
                false
            }
            // Not from an account: the system account's own subscription serves it
            // (nats-server ignores it from other accounts).
            Class::Meta(MetaOp::ServerRemove) => false,
            Class::Meta(op) => {
                if is_leader {
                    if op == MetaOp::Local {
                        return true;
                    }
                    self.meta_request(acc, msg, rest);
                } else if leader.is_none() && self.is_fallback() {
                    self.answer_later(acc, msg, rest, E::ClusterNotAvail);
                }
                false
            }
        }
    }

    /// An error answer (`10008`, `10118`) after [`UNAVAILABLE_DELAY`] (nats-server delays
    /// them too, giving a member that can answer properly the chance to be first).
    fn answer_later(self: &Arc<Self>, acc: &Arc<Account>, msg: &JsMsg, rest: &str, err: E) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let (me, acc, kind) = (self.clone(), acc.clone(), kind_of(rest));
        self.rt.spawn(async move {
            tokio::time::sleep(UNAVAILABLE_DELAY).await;
            if let Some(e) = me.engine.upgrade() {
                crate::api::reply_to(&e, &acc, &reply, kind, Err(err));
            }
        });
    }

    /// `$JS.API.SERVER.REMOVE` heard in the system account: the meta leader answers.
    pub(crate) fn server_remove_request(self: &Arc<Self>, msg: JsMsg) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        if !self.is_meta_leader() {
            return;
        }
        let me = self.clone();
        self.rt.spawn(async move {
            let res = me.server_remove(&msg.payload).await;
            if let Some(e) = me.engine.upgrade() {
                crate::api::reply_in(
                    &e,
                    &me.system_account,
                    &reply,
                    "meta_server_remove_response",
                    res,
                );
            }
        });
    }

    /// A meta request on the leader: answered on a task (proposals wait for a quorum).
    fn meta_request(self: &Arc<Self>, acc: &Arc<Account>, msg: &JsMsg, rest: &str) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let (me, acc, rest, body) = (
            self.clone(),
            acc.clone(),
            rest.to_string(),
            msg.payload.clone(),
        );
        self.rt.spawn(async move {
            let Some(engine) = me.engine.upgrade() else {
                return;
            };
            let kind = kind_of(&rest);
            let res = match classify(&rest) {
                Class::Meta(MetaOp::Info) => Ok(me.account_info(&engine, &acc).await),
                Class::Meta(MetaOp::Names) => me.names(&acc, &body),
                Class::Meta(MetaOp::List) => me.list(&acc, &body).await,
                Class::Meta(MetaOp::Stepdown) => me.stepdown(),
                Class::Meta(MetaOp::Create(n)) => {
                    match me.propose_create(&engine, &acc, n, &body, &reply).await {
                        Ok(()) => return,
                        Err(e) => Err(e),
                    }
                }
                Class::Meta(MetaOp::PeerRemove(n)) => me.peer_remove(&acc, n, &body).await,
                Class::Meta(MetaOp::Update(n)) => {
                    match me.propose_update(&engine, &acc, n, &body, &reply).await {
                        Ok(()) => return,
                        Err(e) => Err(e),
                    }
                }
                Class::Meta(MetaOp::Delete(n)) => match me.propose_delete(&acc, n, &reply).await {
                    Ok(()) => return,
                    Err(e) => Err(e),
                },
                Class::Meta(MetaOp::Local | MetaOp::ServerRemove) | Class::Stream { .. } => return,
            };
            crate::api::reply_to(&engine, &acc, &reply, kind, res);
        });
    }

    pub(super) async fn propose(&self, e: Entry) -> Result<(), E> {
        let g = self.meta_group().ok_or(E::ClusterNotAvail)?;
        let body = serde_json::to_vec(&e).map_err(|err| E::StreamGeneral(err.to_string()))?;
        g.propose(bytes::Bytes::from(body)).await.map_err(|err| {
            tracing::warn!("JetStream meta proposal failed: {err}");
            E::ClusterNotAvail
        })?;
        Ok(())
    }

    async fn propose_create(
        &self,
        engine: &Engine,
        acc: &Account,
        name: &str,
        body: &[u8],
        reply: &str,
    ) -> Result<(), E> {
        let cfg = streams::parse_config(Some(name), body)?;
        let existing = self.machine.state.lock().stream(&acc.name, name).cloned();
        let sa = match existing {
            Some(sa) if streams::same_config(&sa.config, &cfg) => sa,
            Some(_) => return Err(E::StreamNameExist),
            None => {
                self.check_cluster_limits(acc, &cfg, None)?;
                let peers = self.place(&cfg, engine)?;
                let group = if cfg.num_replicas > 1 {
                    format!("S-R{}-{}", cfg.num_replicas, crate::util::random_name(10))
                } else {
                    String::new()
                };
                StreamAssignment {
                    account: acc.name.to_string(),
                    config: cfg,
                    peers,
                    group,
                    created: now_ns(),
                    founders: Vec::new(),
                }
            }
        };
        self.propose(Entry::stream(Action::Create, sa, Some(reply.to_string())))
            .await
    }

    async fn propose_update(
        &self,
        engine: &Arc<Engine>,
        acc: &Arc<Account>,
        name: &str,
        body: &[u8],
        reply: &str,
    ) -> Result<(), E> {
        let cfg = streams::parse_config(Some(name), body)?;
        let old = self.assignment(acc, name)?;
        streams::check_update(&old.config, &cfg)?;
        self.check_cluster_limits(acc, &cfg, Some(&old.config))?;
        if cfg.num_replicas.max(1) != old.config.num_replicas.max(1) {
            return self.propose_scale(engine, acc, old, cfg, reply).await;
        }
        self.propose(Entry::stream(
            Action::Update,
            StreamAssignment { config: cfg, ..old },
            Some(reply.to_string()),
        ))
        .await
    }

    async fn propose_delete(&self, acc: &Account, name: &str, reply: &str) -> Result<(), E> {
        let mut sa = self.assignment(acc, name)?;
        // The first of the entry's peers answers once its copy is gone: put a member that
        // is up first (the order of a deleted assignment matters for nothing else). With
        // every host down, this member (the meta leader) answers once the entry commits.
        let online = self.js_peers();
        let up = sa
            .peers
            .iter()
            .position(|p| *p == self.me.name || online.contains(p));
        if let Some(i) = up {
            sa.peers.rotate_left(i);
        }
        self.propose(Entry::stream(
            Action::Delete,
            sa,
            up.map(|_| reply.to_string()),
        ))
        .await?;
        if up.is_none() {
            if let Some(e) = self.engine.upgrade() {
                let ok = Ok(serde_json::json!({"success": true}));
                crate::api::reply_to(&e, acc, reply, "stream_delete_response", ok);
            }
        }
        Ok(())
    }

    /// The assignment of stream `name` of the account (10059 without one).
    pub(super) fn assignment(&self, acc: &Account, name: &str) -> Result<StreamAssignment, E> {
        self.machine
            .state
            .lock()
            .stream(&acc.name, name)
            .cloned()
            .ok_or(E::StreamNotFound)
    }

    /// Subject overlap and the stream count, across the cluster.
    fn check_cluster_limits(
        &self,
        acc: &Account,
        cfg: &crate::types::StreamConfig,
        old: Option<&crate::types::StreamConfig>,
    ) -> Result<(), E> {
        let st = self.machine.state.lock();
        let mine = st.streams.get(acc.name.as_ref());
        let others = mine
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|sa| sa.name() != cfg.name);
        for sa in others {
            for a in &sa.config.subjects {
                if cfg
                    .subjects
                    .iter()
                    .any(|b| canopy_subject::subjects_collide(a, b))
                {
                    return Err(E::StreamSubjectOverlap);
                }
            }
        }
        let max = acc.limits.read().max_streams;
        let count = mine.map_or(0, |m| m.len()) as i64;
        if old.is_none() && max >= 0 && count >= max {
            return Err(E::MaximumStreams);
        }
        Ok(())
    }

    /// The account's assignments matching a subject filter, by name.
    fn assigned(&self, acc: &Account, subject: Option<&str>) -> Vec<StreamAssignment> {
        let st = self.machine.state.lock();
        st.streams
            .get(acc.name.as_ref())
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|sa| match subject.filter(|s| !s.is_empty()) {
                None => true,
                Some(f) => sa
                    .config
                    .subjects
                    .iter()
                    .any(|s| canopy_subject::subjects_collide(s, f)),
            })
            .cloned()
            .collect()
    }

    fn names(&self, acc: &Account, body: &[u8]) -> Result<Value, E> {
        let req: PageReq = crate::api::parse_body(body)?;
        let all = self.assigned(acc, req.subject.as_deref());
        let total = all.len();
        let page: Vec<&str> = all
            .iter()
            .skip(req.offset)
            .take(NAMES_LIMIT)
            .map(StreamAssignment::name)
            .collect();
        let streams = if page.is_empty() {
            Value::Null
        } else {
            json!(page)
        };
        Ok(json!({"total": total, "offset": req.offset, "limit": NAMES_LIMIT, "streams": streams}))
    }

    async fn list(&self, acc: &Arc<Account>, body: &[u8]) -> Result<Value, E> {
        let req: PageReq = crate::api::parse_body(body)?;
        let all = self.assigned(acc, req.subject.as_deref());
        let total = all.len();
        let page: Vec<StreamAssignment> =
            all.into_iter().skip(req.offset).take(LIST_LIMIT).collect();
        let (infos, missing) = self.gather(acc, &page).await;
        let mut v = json!({"total": total, "offset": req.offset, "limit": LIST_LIMIT,
                           "streams": infos});
        if !missing.is_empty() {
            v["missing"] = json!(missing);
        }
        Ok(v)
    }

    /// The stream infos of `streams`: local ones directly, the others asked of their
    /// hosts (`$JS.API.STREAM.INFO`, which only the host answers). Streams whose host does
    /// not answer in time are returned by name as missing.
    async fn gather(
        &self,
        acc: &Arc<Account>,
        streams: &[StreamAssignment],
    ) -> (Vec<Value>, Vec<String>) {
        let mut waiting = Vec::new();
        let mut infos = Vec::new();
        for sa in streams {
            if let Some(h) = acc.stream(sa.name()) {
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::task::spawn_blocking(move || {
                    let _ = tx.send(h.call(|c: &mut StreamCore| c.info(None, false)));
                });
                waiting.push((sa.name().to_string(), rx));
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.host.request(
                &acc.name,
                &format!("$JS.API.STREAM.INFO.{}", sa.name()),
                None,
                b"",
                GATHER_TIMEOUT,
                Box::new(move |m| {
                    let _ =
                        tx.send(m.and_then(|m| serde_json::from_slice::<Value>(&m.payload).ok()));
                }),
            );
            waiting.push((sa.name().to_string(), rx));
        }
        let deadline = tokio::time::Instant::now() + GATHER_TIMEOUT + Duration::from_millis(200);
        let mut missing = Vec::new();
        for (name, rx) in waiting {
            let got = tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            match got {
                Some(mut v) if v.get("error").is_none() => {
                    if let Some(o) = v.as_object_mut() {
                        for k in ["type", "total", "offset", "limit"] {
                            o.remove(k);
                        }
                    }
                    infos.push(v);
                }
                _ => missing.push(name),
            }
        }
        (infos, missing)
    }

    /// `$JS.API.INFO` over the cluster's streams of the account.
    async fn account_info(&self, engine: &Engine, acc: &Arc<Account>) -> Value {
        let all = self.assigned(acc, None);
        let (infos, _) = self.gather(acc, &all).await;
        let (mut mem, mut file, mut rmem, mut rfile, mut consumers) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for i in &infos {
            let bytes = i["state"]["bytes"].as_u64().unwrap_or(0);
            let reserved = i["config"]["max_bytes"].as_i64().unwrap_or(0).max(0) as u64;
            consumers += i["state"]["consumer_count"].as_u64().unwrap_or(0);
            if i["config"]["storage"] == json!(StorageType::Memory) {
                mem += bytes;
                rmem += reserved;
            } else {
                file += bytes;
                rfile += reserved;
            }
        }
        let mut v = crate::api::account_info(engine, acc);
        if let Some(o) = v.as_object_mut() {
            o.insert("memory".into(), json!(mem));
            o.insert("storage".into(), json!(file));
            o.insert("reserved_memory".into(), json!(rmem));
            o.insert("reserved_storage".into(), json!(rfile));
            o.insert("streams".into(), json!(all.len()));
            o.insert("consumers".into(), json!(consumers));
        }
        v
    }

    /// Hands the meta leadership over: answered at once, the transfer runs on its own
    /// (it takes an election).
    fn stepdown(&self) -> Result<Value, E> {
        let g = self.meta_group().ok_or(E::ClusterNotAvail)?;
        if g.status().replicas.iter().filter(|r| r.voter).count() < 2 {
            return Err(E::StreamGeneral(
                "no other meta group member to take over".into(),
            ));
        }
        self.rt.spawn(async move {
            if let Err(e) = g.step_down(None).await {
                tracing::warn!("JetStream cluster: meta leader stepdown failed: {e}");
            }
        });
        Ok(json!({"success": true}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_who_answers() {
        let s = |n| Class::Stream {
            name: n,
            direct: false,
        };
        assert_eq!(classify("INFO"), Class::Meta(MetaOp::Info));
        assert_eq!(
            classify("STREAM.CREATE.S"),
            Class::Meta(MetaOp::Create("S"))
        );
        assert_eq!(
            classify("STREAM.DELETE.S"),
            Class::Meta(MetaOp::Delete("S"))
        );
        assert_eq!(classify("STREAM.LIST"), Class::Meta(MetaOp::List));
        assert_eq!(
            classify("META.LEADER.STEPDOWN"),
            Class::Meta(MetaOp::Stepdown)
        );
        assert_eq!(classify("STREAM.INFO.S"), s("S"));
        assert_eq!(classify("STREAM.MSG.GET.S"), s("S"));
        assert_eq!(classify("STREAM.PURGE.S"), s("S"));
        assert_eq!(classify("STREAM.LEADER.STEPDOWN.S"), s("S"));
        assert_eq!(classify("CONSUMER.CREATE.S.C.f.>"), s("S"));
        assert_eq!(classify("CONSUMER.DURABLE.CREATE.S.C"), s("S"));
        assert_eq!(classify("CONSUMER.MSG.NEXT.S.C"), s("S"));
        assert_eq!(classify("CONSUMER.NAMES.S"), s("S"));
        assert_eq!(classify("CONSUMER.LEADER.STEPDOWN.S.C"), s("S"));
        assert_eq!(
            classify("DIRECT.GET.S.a.b"),
            Class::Stream {
                name: "S",
                direct: true
            }
        );
        assert_eq!(classify("SERVER.REMOVE"), Class::Meta(MetaOp::ServerRemove));
        assert_eq!(
            classify("STREAM.PEER.REMOVE.S"),
            Class::Meta(MetaOp::PeerRemove("S"))
        );
        assert_eq!(classify("SERVER.EVACUATE"), Class::Meta(MetaOp::Local));
        assert_eq!(
            kind_of("STREAM.LEADER.STEPDOWN.S"),
            "stream_leader_stepdown_response"
        );
        assert_eq!(classify("NOPE"), Class::Meta(MetaOp::Local));
        assert_eq!(kind_of("STREAM.CREATE.S"), "stream_create_response");
        assert_eq!(kind_of("INFO"), "account_info_response");
        assert_eq!(kind_of("STREAM.NAMES"), "stream_names_response");
        assert_eq!(kind_of("X"), "error_response");
    }
}
