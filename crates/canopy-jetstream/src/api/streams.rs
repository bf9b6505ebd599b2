//! Stream requests: create (with nats-server's defaults and checks), update, info, delete,
//! purge, names/list with paging, message get and delete.

use std::sync::Arc;

use base64::Engine as _;
use canopy_store::PurgeOpts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::E;
use super::{on_stream, parse_body, PageReq};
use crate::engine::{write_json, Account, Engine, StreamMeta};
use crate::source;
use crate::stream::StreamCore;
use crate::types::{DiscardPolicy, StorageType, StreamConfig};
use crate::util::{now_ns, random_name, rfc3339, valid_name};

const NAMES_LIMIT: usize = 1024;
const LIST_LIMIT: usize = 256;

fn invalid(s: &str) -> E {
    E::StreamInvalidConfig(s.to_string())
}

/// Parses and normalises a stream config from a create/update body.
pub(crate) fn parse_config(name: Option<&str>, body: &[u8]) -> Result<StreamConfig, E> {
    let name = name.ok_or(E::BadRequest)?;
    // A create or update needs a config: an empty body is invalid JSON, as in nats-server
    // (not a default config).
    if body.trim_ascii().is_empty() {
        return Err(E::InvalidJson("unexpected end of JSON input".into()));
    }
    let mut cfg: StreamConfig = parse_body(body)?;
    if cfg.name.is_empty() {
        cfg.name = name.to_string();
    }
    if cfg.name != name {
        return Err(E::StreamMismatch);
    }
    if cfg.name.contains(['/', '\\']) {
        return Err(E::StreamNameContainsPathSeparators);
    }
    if !valid_name(&cfg.name) {
        return Err(invalid("invalid stream name"));
    }
    if cfg.mirror.as_ref().is_some_and(Value::is_null) {
        cfg.mirror = None;
    }
    if cfg.sources.as_ref().is_some_and(Vec::is_empty) {
        cfg.sources = None;
    }
    for v in cfg
        .mirror
        .iter_mut()
        .chain(cfg.sources.iter_mut().flatten())
    {
        source::normalize(v).map_err(|e| invalid(&e))?;
    }
    cfg.normalize();
    check_config(&cfg)?;
    check_transforms(&mut cfg)?;
    Ok(cfg)
}

/// nats-server's checks of `subject_transform` and `republish` (the republish source
/// defaults to `>`; `>` to `>` with a transform of the stream's only subject republishes
/// the transformed subjects).
fn check_transforms(cfg: &mut StreamConfig) -> Result<(), E> {
    if let Some(t) = &cfg.subject_transform {
        if !t.src.is_empty() && !canopy_subject::is_valid_subject(&t.src) {
            return Err(E::StreamTransformInvalidSource(format!(
                "invalid subject {}",
                t.src
            )));
        }
        canopy_subject::transform::validate_mapping(&t.src, &t.dest)
            .map_err(|e| E::StreamTransformInvalidDestination(e.to_string()))?;
    }
    let Some(rp) = cfg.republish.as_mut() else {
        return Ok(());
    };
    if rp.src.is_empty() {
        if cfg.pedantic {
            return Err(E::Pedantic("republish source can not be empty".into()));
        }
        rp.src = ">".into();
    }
    if let Some(t) = &cfg.subject_transform {
        if rp.src == ">" && rp.dest == ">" && cfg.subjects.len() == 1 && cfg.subjects[0] == t.src {
            if cfg.pedantic {
                return Err(E::Pedantic(
                    "implicit republish based on subject transform".into(),
                ));
            }
            rp.src = t.dest.clone();
            rp.dest = t.dest.clone();
        }
    }
    if cfg
        .subjects
        .iter()
        .any(|s| canopy_subject::subjects_collide(&rp.dest, s))
    {
        return Err(invalid(
            "stream configuration for republish destination forms a cycle",
        ));
    }
    if canopy_subject::Transform::new(&rp.src, &rp.dest).is_err() {
        return Err(invalid(&format!(
            "stream configuration for republish with transform from '{}' to '{}' not valid",
            rp.src, rp.dest
        )));
    }
    Ok(())
}

/// nats-server's `checkStreamCfg` checks that apply to one server.
fn check_config(cfg: &StreamConfig) -> Result<(), E> {
    if cfg.num_replicas < 0 || cfg.num_replicas > 5 {
        return Err(invalid("replicas > 5 not supported"));
    }
    if cfg.description.as_ref().is_some_and(|d| d.len() > 4096) {
        return Err(invalid(
            "stream description is too long, maximum allowed is 4096",
        ));
    }
    if cfg.mirror.is_some() {
        if !cfg.subjects.is_empty() {
            return Err(E::MirrorWithSubjects);
        }
        if cfg.sources.is_some() {
            return Err(E::MirrorWithSources);
        }
        if cfg.first_seq > 0 {
            return Err(E::MirrorWithFirstSeq);
        }
    }
    check_sources(cfg)?;
    if cfg.max_age < 0 {
        return Err(invalid("max age needs to be >= 0"));
    }
    if cfg.max_age > 0 && cfg.max_age < 100_000_000 {
        return Err(invalid("max age needs to be >= 100ms"));
    }
    if cfg.duplicate_window > 0 && cfg.max_age > 0 && cfg.duplicate_window > cfg.max_age {
        return Err(invalid("duplicates window can not be larger then max age"));
    }
    if cfg.discard_new_per_subject {
        if cfg.discard != DiscardPolicy::New {
            return Err(invalid(
                "discard new per subject requires discard new policy to be set",
            ));
        }
        if cfg.max_msgs_per_subject <= 0 {
            return Err(invalid(
                "discard new per subject requires max msgs per subject > 0",
            ));
        }
    }
    if cfg.subject_delete_marker_ttl > 0 && !cfg.allow_msg_ttl {
        return Err(invalid(
            "subject marker delete cannot be set if message TTLs are disabled",
        ));
    }
    for (i, s) in cfg.subjects.iter().enumerate() {
        if !canopy_subject::is_valid_subject(s) {
            return Err(invalid("invalid subject"));
        }
        if cfg.subjects[..i]
            .iter()
            .any(|o| canopy_subject::subjects_collide(o, s))
        {
            return Err(invalid("duplicate subjects detected"));
        }
    }
    Ok(())
}

/// The mirror and sources must parse, name other streams (when local), and be distinct.
fn check_sources(cfg: &StreamConfig) -> Result<(), E> {
    let list = cfg.sources.as_deref().unwrap_or(&[]);
    if list.len() > source::MAX_SOURCES {
        return Err(invalid(&format!(
            "stream can have at most {} sources",
            source::MAX_SOURCES
        )));
    }
    let mut seen = Vec::new();
    for v in cfg.mirror.iter().chain(list) {
        let spec = source::Spec::parse(v).map_err(|e| invalid(&e))?;
        if spec.name == cfg.name && !spec.is_external() {
            return Err(invalid("stream can not source or mirror itself"));
        }
        if seen.contains(&spec.iname) {
            return Err(invalid("duplicate source configuration detected"));
        }
        seen.push(spec.iname);
    }
    Ok(())
}

/// The stream's config as comparable (server metadata ignored).
pub(crate) fn same_config(a: &StreamConfig, b: &StreamConfig) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    a.pedantic = false;
    b.pedantic = false;
    crate::types::strip_versioning(&mut a.metadata);
    crate::types::strip_versioning(&mut b.metadata);
    a == b
}

fn check_limits(
    e: &Engine,
    acc: &Account,
    cfg: &StreamConfig,
    old: Option<&StreamConfig>,
) -> Result<(), E> {
    let l = acc.limits.read().clone();
    if old.is_none() && l.max_streams >= 0 && acc.streams.read().len() as i64 >= l.max_streams {
        return Err(E::MaximumStreams);
    }
    if l.max_bytes_required && cfg.max_bytes <= 0 {
        return Err(E::StreamMaxBytesRequired);
    }
    let (max_stream, acc_max, srv_max) = match cfg.storage {
        StorageType::Memory => (l.memory_max_stream_bytes, l.max_memory, e.cfg.max_memory),
        StorageType::File => (l.store_max_stream_bytes, l.max_store, e.cfg.max_store),
    };
    if max_stream > 0 && cfg.max_bytes > max_stream {
        return Err(E::StreamMaxStreamBytesExceeded);
    }
    if cfg.max_bytes > 0 {
        let (_, _, rmem, rfile) = acc.usage();
        let reserved = match cfg.storage {
            StorageType::Memory => rmem,
            StorageType::File => rfile,
        } as i64
            - old.map_or(0, |o| o.max_bytes.max(0));
        for max in [acc_max, srv_max] {
            if max >= 0 && reserved + cfg.max_bytes > max {
                return Err(match cfg.storage {
                    StorageType::Memory => E::MemoryResourcesExceeded,
                    StorageType::File => E::StorageResourcesExceeded,
                });
            }
        }
    }
    Ok(())
}

fn check_overlap(acc: &Account, cfg: &StreamConfig) -> Result<(), E> {
    for (n, h) in acc.streams.read().iter() {
        if *n == cfg.name {
            continue;
        }
        let other = h.cfg.read();
        for a in &other.subjects {
            if cfg
                .subjects
                .iter()
                .any(|b| canopy_subject::subjects_collide(a, b))
            {
                return Err(E::StreamSubjectOverlap);
            }
        }
    }
    Ok(())
}

pub(crate) fn create(
    e: &Engine,
    acc: &Arc<Account>,
    name: Option<&str>,
    body: &[u8],
) -> Result<Value, E> {
    let cfg = parse_config(name, body)?;
    // Replicas live in a cluster (cluster/); this is the single-server create.
    if cfg.num_replicas > 1 {
        return Err(E::StreamReplicasNotSupported);
    }
    let _g = acc.admin.lock();
    if let Some(h) = acc.stream(&cfg.name) {
        if !same_config(&h.cfg.read(), &cfg) {
            return Err(E::StreamNameExist);
        }
        // nats-server answers an idempotent create with `did_create` too.
        return on_stream(acc, Some(&cfg.name), |c| Ok(c.info(None, false))).map(created);
    }
    check_limits(e, acc, &cfg, None)?;
    check_overlap(acc, &cfg)?;
    let h = e.open_stream(acc, cfg, now_ns(), random_name(16), false)?;
    let v = h
        .call(|c: &mut StreamCore| c.info(None, false))
        .ok_or_else(|| E::StreamCreate("stream is not responding".into()))
        .map(created)?;
    e.stream_advisory(acc, &h.name, "create");
    Ok(v)
}

fn created(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("did_create".into(), Value::Bool(true));
    }
    v
}

/// nats-server's rules for what an update may change.
pub(crate) fn check_update(old: &StreamConfig, cfg: &StreamConfig) -> Result<(), E> {
    if cfg.storage != old.storage {
        return Err(invalid(
            "stream configuration update can not change storage type",
        ));
    }
    if cfg.retention != old.retention {
        return Err(invalid(
            "stream configuration update can not change retention policy",
        ));
    }
    if cfg.mirror != old.mirror {
        return Err(E::StreamMirrorNotUpdatable);
    }
    if old.sealed && !cfg.sealed {
        return Err(invalid(
            "stream configuration update can not unseal a sealed stream",
        ));
    }
    if old.deny_delete && !cfg.deny_delete {
        return Err(invalid(
            "stream configuration update can not cancel deny message deletes",
        ));
    }
    if old.deny_purge && !cfg.deny_purge {
        return Err(invalid(
            "stream configuration update can not cancel deny purge",
        ));
    }
    Ok(())
}

pub(crate) fn update(
    e: &Engine,
    acc: &Arc<Account>,
    name: Option<&str>,
    body: &[u8],
) -> Result<Value, E> {
    let cfg = parse_config(name, body)?;
    if cfg.num_replicas > 1 {
        return Err(E::StreamReplicasNotSupported);
    }
    let _g = acc.admin.lock();
    let h = acc.stream(&cfg.name).ok_or(E::StreamNotFound)?;
    let old = h.cfg.read().clone();
    check_update(&old, &cfg)?;
    check_limits(e, acc, &cfg, Some(&old))?;
    check_overlap(acc, &cfg)?;
    let new = cfg.clone();
    let v = on_stream(acc, Some(&cfg.name), move |c| {
        c.store
            .update_config(new.store_config())
            .map_err(|e| E::StreamUpdate(e.to_string()))?;
        if let Some(d) = &c.dir {
            write_json(
                &d.join("meta.json"),
                &StreamMeta {
                    config: new.clone(),
                    created: c.created,
                    uid: c.uid.clone(),
                },
            )
            .map_err(|e| E::StreamUpdate(e.to_string()))?;
        }
        c.set_config(new);
        c.consumers_purged();
        c.update_stats();
        Ok(c.info(None, false))
    })?;
    let subjects_changed = old.subjects != cfg.subjects;
    *h.cfg.write() = cfg;
    if subjects_changed {
        if let Err(err) = e.subscribe_stream(acc, &h) {
            return Err(E::StreamUpdate(err.to_string()));
        }
    }
    e.stream_advisory(acc, &h.name, "modify");
    Ok(v)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InfoReq {
    deleted_details: bool,
    subjects_filter: Option<String>,
    offset: usize,
}

pub(super) fn info(acc: &Account, name: Option<&str>, body: &[u8]) -> Result<Value, E> {
    let req: InfoReq = parse_body(body)?;
    // nats-server's stream info is paged over `state.subjects` (total/offset/limit always
    // present; limit 0 when no subjects were asked for).
    let asked = req
        .subjects_filter
        .as_deref()
        .is_some_and(|f| !f.is_empty());
    let (filter, deleted) = (req.subjects_filter, req.deleted_details);
    let mut v = on_stream(acc, name, move |c| Ok(c.info(filter.as_deref(), deleted)))?;
    let mut total = 0;
    if let Some(state) = v.get_mut("state").and_then(Value::as_object_mut) {
        if let Some(Value::Object(subjects)) = state.remove("subjects") {
            total = subjects.len();
            let page: serde_json::Map<String, Value> = subjects
                .into_iter()
                .skip(req.offset)
                .take(SUBJECTS_LIMIT)
                .collect();
            if !page.is_empty() {
                state.insert("subjects".into(), Value::Object(page));
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("total".into(), json!(total));
        o.insert("offset".into(), json!(if asked { req.offset } else { 0 }));
        o.insert(
            "limit".into(),
            json!(if asked { SUBJECTS_LIMIT } else { 0 }),
        );
    }
    Ok(v)
}

/// Most subjects one stream info page lists (nats-server's `JSMaxSubjectDetails`).
const SUBJECTS_LIMIT: usize = 100_000;

pub(crate) fn delete(e: &Engine, acc: &Account, name: Option<&str>) -> Result<Value, E> {
    let _g = acc.admin.lock();
    let name = name.ok_or(E::StreamNotFound)?;
    let h = acc.streams.write().remove(name).ok_or(E::StreamNotFound)?;
    let dir = h.call(|c: &mut StreamCore| {
        c.sources_delete_remote();
        let names: Vec<String> = c.consumers.keys().cloned().collect();
        for n in names {
            c.delete_consumer(&n);
        }
        c.dir.clone()
    });
    e.stop_stream(&h);
    if let Some(Some(d)) = dir {
        if let Err(err) = std::fs::remove_dir_all(&d) {
            return Err(E::StreamDelete(err.to_string()));
        }
    }
    e.stream_advisory(acc, name, "delete");
    Ok(json!({"success": true}))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PurgeReq {
    filter: Option<String>,
    seq: Option<u64>,
    keep: Option<u64>,
}

pub(super) fn purge(acc: &Account, name: Option<&str>, body: &[u8]) -> Result<Value, E> {
    let req: PurgeReq = parse_body(body)?;
    if req.seq.is_some() && req.keep.is_some() {
        return Err(E::BadRequest);
    }
    let check = |c: &StreamCore| {
        if c.cfg.sealed {
            return Err(E::StreamSealed);
        }
        if c.cfg.deny_purge {
            return Err(E::StreamPurgeFailed("stream purge not permitted".into()));
        }
        Ok(())
    };
    let opts = PurgeOpts {
        filter: req.filter.filter(|f| !f.is_empty() && f != ">"),
        up_to_seq: req.seq,
        keep: req.keep,
    };
    if let Some((h, g)) = name.and_then(|n| crate::replica::group_of(acc, n)) {
        return crate::replica::purge(&h, g, opts, check);
    }
    on_stream(acc, name, move |c| {
        check(c)?;
        // Sources' positions first: the headers that hold them are about to go.
        c.sources_save();
        let n = c
            .store
            .purge(&opts)
            .map_err(|e| E::StreamPurgeFailed(e.to_string()))?;
        c.consumers_purged();
        c.update_stats();
        Ok(json!({"success": true, "purged": n}))
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MsgGetReq {
    seq: u64,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
}

pub(super) fn msg_get(acc: &Account, name: Option<&str>, body: &[u8]) -> Result<Value, E> {
    let req: MsgGetReq = parse_body(body)?;
    if req.seq > 0 && req.last_by_subj.is_some()
        || req.last_by_subj.is_some() && req.next_by_subj.is_some()
        || req.seq == 0 && req.last_by_subj.is_none() && req.next_by_subj.is_none()
    {
        return Err(E::BadRequest);
    }
    on_stream(acc, name, move |c| {
        let m = if let Some(s) = &req.last_by_subj {
            c.store.last_by_subject(s).ok().flatten()
        } else if let Some(s) = &req.next_by_subj {
            c.store.load_next_matching(s, req.seq.max(1)).ok().flatten()
        } else {
            c.store.load_msg(req.seq).ok()
        };
        let m = m.ok_or(E::NoMessageFound)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut msg = json!({"subject": m.subject(), "seq": m.seq, "time": rfc3339(m.ts)});
        if let Some(o) = msg.as_object_mut() {
            if !m.headers().is_empty() {
                o.insert("hdrs".into(), json!(b64.encode(m.headers())));
            }
            if !m.payload().is_empty() {
                o.insert("data".into(), json!(b64.encode(m.payload())));
            }
        }
        Ok(json!({"message": msg}))
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MsgDeleteReq {
    seq: u64,
    no_erase: bool,
}

pub(super) fn msg_delete(acc: &Account, name: Option<&str>, body: &[u8]) -> Result<Value, E> {
    let req: MsgDeleteReq = parse_body(body)?;
    let _ = req.no_erase;
    let check = |c: &StreamCore| {
        if c.cfg.sealed {
            return Err(E::StreamSealed);
        }
        if c.cfg.deny_delete {
            return Err(E::StreamMsgDeleteFailed(
                "message delete not permitted".into(),
            ));
        }
        Ok(())
    };
    if let Some((h, g)) = name.and_then(|n| crate::replica::group_of(acc, n)) {
        return crate::replica::msg_delete(&h, g, req.seq, check);
    }
    on_stream(acc, name, move |c| {
        check(c)?;
        c.sources_save();
        let removed = c
            .store
            .remove_msg(req.seq)
            .map_err(|e| E::StreamMsgDeleteFailed(e.to_string()))?;
        if !removed {
            // nats-server reports the store's "not found" as a failed delete (500/10057).
            return Err(E::StreamMsgDeleteFailed("no message found".into()));
        }
        c.consumers_purged();
        c.update_stats();
        Ok(json!({"success": true}))
    })
}

/// Stream names matching the request's subject filter.
fn matching_names(acc: &Account, subject: Option<&str>) -> Vec<String> {
    acc.streams
        .read()
        .iter()
        .filter(|(_, h)| match subject.filter(|s| !s.is_empty()) {
            None => true,
            Some(f) => h
                .cfg
                .read()
                .subjects
                .iter()
                .any(|s| canopy_subject::subjects_collide(s, f)),
        })
        .map(|(n, _)| n.clone())
        .collect()
}

pub(super) fn names(acc: &Account, body: &[u8]) -> Result<Value, E> {
    let req: PageReq = parse_body(body)?;
    let all = matching_names(acc, req.subject.as_deref());
    let total = all.len();
    let page: Vec<String> = all.into_iter().skip(req.offset).take(NAMES_LIMIT).collect();
    let streams = if page.is_empty() {
        Value::Null
    } else {
        json!(page)
    };
    Ok(json!({"total": total, "offset": req.offset, "limit": NAMES_LIMIT, "streams": streams}))
}

pub(super) fn list(acc: &Account, body: &[u8]) -> Result<Value, E> {
    let req: PageReq = parse_body(body)?;
    let all = matching_names(acc, req.subject.as_deref());
    let total = all.len();
    let infos: Vec<Value> = all
        .into_iter()
        .skip(req.offset)
        .take(LIST_LIMIT)
        .filter_map(|n| acc.stream(&n))
        .filter_map(|h| h.call(|c: &mut StreamCore| c.info(None, false)))
        .collect();
    Ok(json!({"total": total, "offset": req.offset, "limit": LIST_LIMIT, "streams": infos}))
}

/// A stream's entry in `/jsz` `stream_detail`.
pub(crate) fn stream_detail(c: &mut StreamCore, config: bool, consumers: bool) -> Value {
    let info = c.info(None, false);
    let mut v = json!({
        "name": c.name,
        "created": info.get("created"),
        "cluster": c.cluster,
        "state": info.get("state"),
    });
    if let Some(o) = v.as_object_mut() {
        if config {
            o.insert("config".into(), json!(c.cfg));
        }
        if consumers {
            let list: Vec<Value> = c
                .consumers
                .values()
                .map(|k| super::consumers::info_of(c, k))
                .collect();
            o.insert("consumer_detail".into(), Value::Array(list));
        }
    }
    v
}
