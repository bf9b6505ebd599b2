//! Consumer requests: create (all subject forms, `action` create/update, nats-server's
//! defaults and checks), info, delete, names and list.

use std::sync::Arc;

use serde_json::{json, Value};

use super::errors::E;
use super::{on_stream, parse_body, PageReq};
use crate::consumer::Consumer;
use crate::engine::{Account, ConsumerMeta, Engine};
use crate::stream::{ctx, StreamCore};
use crate::types::{
    AckPolicy, ConsumerConfig, CreateConsumerRequest, DeliverPolicy, Retention, PRIORITY_OVERFLOW,
    PRIORITY_PINNED,
};
use crate::util::{now_ns, random_name, valid_name};

const NAMES_LIMIT: usize = 1024;
const LIST_LIMIT: usize = 256;

pub(super) fn info_of(c: &StreamCore, k: &Consumer) -> Value {
    let ctx = ctx!(c);
    k.info(&ctx, &c.cluster)
}

/// Checks of a consumer config against itself and its stream (`checkConsumerCfg`).
fn check(cfg: &ConsumerConfig, stream: &StreamCore, acc_max_ack: i64) -> Result<(), E> {
    if cfg.filter_subject.is_some() && !cfg.filter_subjects.is_empty() {
        return Err(E::ConsumerDuplicateFilterSubjects);
    }
    if cfg.filter_subjects.iter().any(String::is_empty) {
        return Err(E::ConsumerEmptyFilter);
    }
    let filters = cfg.filters();
    for (i, f) in filters.iter().enumerate() {
        if filters[..i]
            .iter()
            .any(|o| canopy_subject::subjects_collide(o, f))
        {
            return Err(E::ConsumerOverlappingSubjectFilters);
        }
        if !canopy_subject::is_valid_subject(f)
            || !stream
                .cfg
                .subjects
                .iter()
                .any(|s| canopy_subject::subjects_collide(s, f))
        {
            return Err(E::ConsumerFilterNotSubset);
        }
    }
    if let Some(d) = &cfg.deliver_subject {
        if !canopy_subject::is_valid_subject(d) {
            return Err(E::ConsumerInvalidDeliverSubject);
        }
        if canopy_subject::has_wildcard(d) {
            return Err(E::ConsumerDeliverToWildcards);
        }
        if cfg.max_waiting != 0 {
            return Err(E::ConsumerPushMaxWaiting);
        }
        if stream
            .cfg
            .subjects
            .iter()
            .any(|s| canopy_subject::subject_matches(s, d))
        {
            return Err(E::ConsumerDeliverCycle);
        }
    } else {
        if cfg.idle_heartbeat > 0 {
            return Err(E::ConsumerHbRequiresPush);
        }
        if cfg.flow_control {
            return Err(E::ConsumerFcRequiresPush);
        }
        if cfg.rate_limit_bps > 0 {
            return Err(E::ConsumerPullWithRateLimit);
        }
        if cfg.max_waiting < 0 {
            return Err(E::ConsumerMaxWaitingNegative);
        }
    }
    if cfg.flow_control && cfg.idle_heartbeat <= 0 {
        return Err(E::ConsumerFlowControlNeedsHeartbeats);
    }
    if cfg.idle_heartbeat > 0 && cfg.idle_heartbeat < 100_000_000 {
        return Err(E::ConsumerSmallHeartbeat);
    }
    if !cfg.backoff.is_empty() && cfg.max_deliver > 0 && cfg.max_deliver <= cfg.backoff.len() as i64
    {
        return Err(E::ConsumerMaxDeliverBackoff);
    }
    if cfg.max_batch < 0 {
        return Err(E::ConsumerMaxRequestBatchNegative);
    }
    if cfg.max_expires != 0 && cfg.max_expires < 1_000_000 {
        return Err(E::ConsumerMaxRequestExpiresTooSmall);
    }
    if cfg.description.as_ref().is_some_and(|d| d.len() > 4096) {
        return Err(E::ConsumerDescriptionTooLong(4096));
    }
    if acc_max_ack > 0 && cfg.max_ack_pending > acc_max_ack {
        return Err(E::ConsumerMaxPendingAckExcess(acc_max_ack));
    }
    if cfg.num_replicas > 1 {
        return Err(E::ConsumerReplicasExceedsStream);
    }
    check_priority(cfg)?;
    match (cfg.deliver_policy, cfg.opt_start_seq > 0, cfg.opt_start_time.is_some()) {
        (DeliverPolicy::ByStartSequence, false, _) => {
            return Err(E::ConsumerInvalidPolicy(
                "consumer delivery policy is deliver by start sequence, but optional start sequence is not set".into(),
            ))
        }
        (DeliverPolicy::ByStartTime, _, false) => {
            return Err(E::ConsumerInvalidPolicy(
                "consumer delivery policy is deliver by start time, but optional start time is not set".into(),
            ))
        }
        (p, true, _) if p != DeliverPolicy::ByStartSequence => {
            return Err(E::ConsumerInvalidPolicy(format!(
                "consumer delivery policy is deliver {}, but optional start sequence is also set",
                policy_name(p)
            )))
        }
        (p, _, true) if p != DeliverPolicy::ByStartTime => {
            return Err(E::ConsumerInvalidPolicy(format!(
                "consumer delivery policy is deliver {}, but optional start time is also set",
                policy_name(p)
            )))
        }
        _ => {}
    }
    // Sourcing consumers (`direct`, or 2.14's `sourcing`) are exempt, as in nats-server: an
    // ack-none sourcing consumer of a work queue removes what it sends.
    let sourcing = cfg.direct || cfg.extra.get("sourcing").is_some_and(|v| v == true);
    if stream.cfg.retention == Retention::WorkQueue && !sourcing {
        if cfg.ack_policy != AckPolicy::Explicit {
            return Err(E::ConsumerWqRequiresExplicitAck);
        }
        if cfg.deliver_policy != DeliverPolicy::All {
            return Err(E::ConsumerWqConsumerNotDeliverAll);
        }
        for other in stream.consumers.values() {
            if other.cfg.durable_name == cfg.durable_name && other.cfg.name == cfg.name {
                continue;
            }
            let of = other.cfg.filters();
            if of.is_empty() || filters.is_empty() {
                return Err(E::ConsumerWqMultipleUnfiltered);
            }
            if of.iter().any(|a| {
                filters
                    .iter()
                    .any(|b| canopy_subject::subjects_collide(a, b))
            }) {
                return Err(E::ConsumerWqConsumerNotUnique);
            }
        }
    }
    Ok(())
}

/// Priority groups (2.11, ADR-42): one group with `overflow` or `pinned_client`, on pull
/// consumers with explicit acks.
fn check_priority(cfg: &ConsumerConfig) -> Result<(), E> {
    let Some(policy) = cfg.priority_policy.as_deref() else {
        if !cfg.priority_groups.is_empty() {
            return Err(E::ConsumerPriorityGroupWithPolicyNone);
        }
        if cfg.priority_timeout != 0 {
            return Err(E::ConsumerPinnedTtlWithoutPriorityPolicyNone);
        }
        return Ok(());
    };
    if policy != PRIORITY_OVERFLOW && policy != PRIORITY_PINNED {
        // `prioritized` is 2.12 (API level 2).
        return Err(E::InvalidJson(format!("unknown priority policy: {policy}")));
    }
    if policy != PRIORITY_PINNED && cfg.priority_timeout != 0 {
        return Err(E::ConsumerPinnedTtlWithoutPriorityPolicyNone);
    }
    if !cfg.is_pull() {
        return Err(E::ConsumerPushWithPriorityGroup);
    }
    if cfg.priority_groups.is_empty() {
        return Err(E::ConsumerPriorityPolicyWithoutGroup);
    }
    if cfg.priority_groups.len() > 1 {
        return Err(E::ConsumerCreate(
            "multiple priority groups are not supported".into(),
        ));
    }
    let valid = |g: &str| {
        !g.is_empty()
            && g.len() <= 16
            && g.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '='))
    };
    if !cfg.priority_groups.iter().all(|g| valid(g)) {
        return Err(E::ConsumerInvalidGroupName);
    }
    if cfg.ack_policy != AckPolicy::Explicit {
        return Err(E::ConsumerCreate(format!(
            "priority policy {policy} requires ack policy explicit"
        )));
    }
    Ok(())
}

fn policy_name(p: DeliverPolicy) -> &'static str {
    match p {
        DeliverPolicy::All => "all",
        DeliverPolicy::Last => "last",
        DeliverPolicy::New => "new",
        DeliverPolicy::ByStartSequence => "by start sequence",
        DeliverPolicy::ByStartTime => "by start time",
        DeliverPolicy::LastPerSubject => "last per subject",
    }
}

/// Consumer create, for every subject form: `CREATE.<s>`, `CREATE.<s>.<c>[.<filter>]`,
/// `DURABLE.CREATE.<s>.<d>`.
pub(super) fn create(
    e: &Engine,
    acc: &Arc<Account>,
    stream: &str,
    name: Option<&str>,
    filter: Option<&str>,
    legacy_durable: bool,
    body: &[u8],
) -> Result<Value, E> {
    let req: CreateConsumerRequest = parse_body(body)?;
    if req.stream_name != stream {
        return Err(E::StreamMismatch);
    }
    let mut cfg = req.config.ok_or(E::ConsumerConfigRequired)?;
    if let (Some(d), Some(n)) = (&cfg.durable_name, &cfg.name) {
        if !d.is_empty() && !n.is_empty() && d != n {
            return Err(E::ConsumerCreateDurableAndNameMismatch);
        }
    }
    let durable_in = cfg.durable_name.clone().filter(|d| !d.is_empty());
    let name_in = cfg
        .name
        .clone()
        .filter(|d| !d.is_empty())
        .or(durable_in.clone());
    match name {
        Some(n) => {
            if legacy_durable && durable_in.as_deref() != Some(n) {
                return Err(if durable_in.is_none() {
                    E::ConsumerDurableNameNotSet
                } else {
                    E::ConsumerDurableNameNotMatchSubject
                });
            }
            if name_in.as_deref().is_some_and(|x| x != n) {
                return Err(E::ConsumerDurableNameNotMatchSubject);
            }
        }
        None => {
            if durable_in.is_some() {
                return Err(E::ConsumerEphemeralWithDurableName);
            }
        }
    }
    if let Some(f) = filter {
        if !cfg.filter_subjects.is_empty() {
            return Err(E::ConsumerMultipleFiltersNotAllowed);
        }
        if cfg.filter_subject.as_deref().is_some_and(|x| x != f) {
            return Err(E::ConsumerCreateFilterSubjectMismatch);
        }
        cfg.filter_subject = Some(f.to_string());
    }
    let cname = name
        .map(str::to_string)
        .or(name_in)
        .unwrap_or_else(|| random_name(8));
    if cname.contains(['/', '\\']) {
        return Err(E::ConsumerNameContainsPathSeparators);
    }
    if cname.len() > 255 {
        return Err(E::ConsumerNameTooLong(255));
    }
    if !valid_name(&cname) {
        return Err(E::ConsumerBadDurableName);
    }
    let durable = durable_in.is_some();
    if name.is_some() && cfg.name.is_none() && !durable {
        cfg.name = Some(cname.clone());
    }
    if cfg.name.is_none() {
        cfg.name = Some(cname.clone());
    }
    cfg.normalize(!durable);
    let limits = acc.limits.read().clone();
    let acc_consumers = acc.consumer_count() as i64;
    let action = req.action;
    let settings = e.store_settings();
    let precheck = move |c: &StreamCore, cfg: &ConsumerConfig, cname: &str| {
        precheck(c, cfg, cname, &action, &limits, acc_consumers)
    };
    if let Some((h, g)) = crate::replica::group_of(acc, stream) {
        let n = cname.clone();
        return crate::replica::consumer_upsert(&h, g, cname, cfg, move |c, cfg| {
            precheck(c, cfg, &n)
        });
    }
    on_stream(acc, Some(stream), move |c| {
        if let Some(v) = precheck(c, &cfg, &cname)? {
            return Ok(v);
        }
        if let Some(existing) = c.consumers.get_mut(&cname) {
            let ctx = ctx!(c);
            existing.set_config(&ctx, cfg, true);
            c.persist_consumer(&cname)?;
            return Ok(info_of(c, &c.consumers[&cname]));
        }
        let meta = ConsumerMeta {
            name: cname.clone(),
            config: cfg.clone(),
            created: now_ns(),
        };
        let st = settings
            .consumer_store(c.dir.as_deref(), &meta, durable)
            .map_err(E::ConsumerStoreFailed)?;
        let k = Consumer::new(cname.clone(), cfg, meta.created, st, c.store.as_ref(), true);
        c.consumers.insert(cname.clone(), k);
        c.update_stats();
        crate::advisory::consumer_action(
            c.host.as_ref(),
            &c.account,
            c.domain.as_deref(),
            &c.name,
            &cname,
            "create",
        );
        let v = info_of(c, &c.consumers[&cname]);
        c.drive_consumers();
        Ok(v)
    })
}

/// The checks of a consumer create or update against its stream: `Some(info)` when the
/// consumer exists with this configuration already (nothing to do), `None` to go ahead.
fn precheck(
    c: &StreamCore,
    cfg: &ConsumerConfig,
    cname: &str,
    action: &str,
    limits: &crate::engine::AccountLimits,
    acc_consumers: i64,
) -> Result<Option<Value>, E> {
    check(cfg, c, limits.max_ack_pending)?;
    if let Some(existing) = c.consumers.get(cname) {
        if existing.cfg.same_as(cfg) {
            return Ok(Some(info_of(c, existing)));
        }
        if action == "create" {
            return Err(E::ConsumerAlreadyExists);
        }
        if existing.cfg.deliver_policy != cfg.deliver_policy
            || existing.cfg.opt_start_seq != cfg.opt_start_seq
            || existing.cfg.ack_policy != cfg.ack_policy
            || existing.cfg.is_pull() != cfg.is_pull()
            || existing.cfg.priority_groups != cfg.priority_groups
            || existing.cfg.priority_policy != cfg.priority_policy
        {
            return Err(E::ConsumerCreate(
                "consumer configuration can not be updated".into(),
            ));
        }
        return Ok(None);
    }
    if action == "update" {
        return Err(E::ConsumerDoesNotExist);
    }
    if limits.max_consumers >= 0 && acc_consumers >= limits.max_consumers {
        return Err(E::MaximumConsumers);
    }
    if c.cfg.max_consumers >= 0 && c.consumers.len() as i64 >= c.cfg.max_consumers {
        return Err(E::MaximumConsumers);
    }
    Ok(None)
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PauseReq {
    pause_until: Option<String>,
}

/// `CONSUMER.PAUSE.<stream>.<consumer>` with `{pause_until}`: pauses until then, or resumes
/// (no time, or the zero time).
pub(super) fn pause(acc: &Account, stream: &str, name: &str, body: &[u8]) -> Result<Value, E> {
    let req: PauseReq = parse_body(body)?;
    let until = match req.pause_until.as_deref() {
        None => None,
        Some(t) => {
            let ns = crate::util::parse_rfc3339(t)
                .ok_or_else(|| E::InvalidJson(format!("parsing time {t:?}")))?;
            (ns > 0).then(|| crate::util::rfc3339(ns))
        }
    };
    let name = name.to_string();
    if let Some((h, g)) = crate::replica::group_of(acc, stream) {
        return crate::replica::consumer_pause(&h, g, name, until);
    }
    on_stream(acc, Some(stream), move |c| {
        let k = c.consumers.get_mut(&name).ok_or(E::ConsumerNotFound)?;
        let mut cfg = k.cfg.clone();
        cfg.pause_until = until;
        let ctx = ctx!(c);
        k.set_config(&ctx, cfg, true);
        c.persist_consumer(&name)?;
        Ok(c.consumers[&name].pause_answer())
    })
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct UnpinReq {
    group: String,
}

/// `CONSUMER.UNPIN.<stream>.<consumer>` with `{group}`: ends the pin of a `pinned_client`
/// consumer; the next waiting pull is pinned.
pub(super) fn unpin(acc: &Account, stream: &str, name: &str, body: &[u8]) -> Result<Value, E> {
    if body.trim_ascii().is_empty() {
        return Err(E::BadRequest);
    }
    let req: UnpinReq = parse_body(body)?;
    let name = name.to_string();
    on_stream(acc, Some(stream), move |c| {
        let k = c.consumers.get_mut(&name).ok_or(E::ConsumerNotFound)?;
        if k.cfg.priority_policy.as_deref() != Some(PRIORITY_PINNED)
            || !k.cfg.priority_groups.contains(&req.group)
        {
            return Err(E::ConsumerInvalidPriorityGroup);
        }
        let ctx = ctx!(c);
        k.unpin(&ctx, "admin");
        c.drive_consumers();
        Ok(json!({}))
    })
}

pub(super) fn info(acc: &Account, stream: &str, name: &str) -> Result<Value, E> {
    let name = name.to_string();
    on_stream(acc, Some(stream), move |c| {
        let k = c.consumers.get(&name).ok_or(E::ConsumerNotFound)?;
        Ok(info_of(c, k))
    })
}

pub(super) fn delete(acc: &Account, stream: &str, name: &str) -> Result<Value, E> {
    let name = name.to_string();
    if let Some((h, g)) = crate::replica::group_of(acc, stream) {
        return crate::replica::consumer_delete(&h, g, name);
    }
    on_stream(acc, Some(stream), move |c| {
        if !c.delete_consumer(&name) {
            return Err(E::ConsumerNotFound);
        }
        Ok(json!({"success": true}))
    })
}

pub(super) fn names(acc: &Account, stream: Option<&str>, body: &[u8]) -> Result<Value, E> {
    let req: PageReq = parse_body(body)?;
    on_stream(acc, stream, move |c| {
        let total = c.consumers.len();
        let page: Vec<&String> = c
            .consumers
            .keys()
            .skip(req.offset)
            .take(NAMES_LIMIT)
            .collect();
        Ok(json!({"total": total, "offset": req.offset, "limit": NAMES_LIMIT, "consumers": page}))
    })
}

pub(super) fn list(acc: &Account, stream: Option<&str>, body: &[u8]) -> Result<Value, E> {
    let req: PageReq = parse_body(body)?;
    on_stream(acc, stream, move |c| {
        let total = c.consumers.len();
        let page: Vec<Value> = c
            .consumers
            .values()
            .skip(req.offset)
            .take(LIST_LIMIT)
            .map(|k| info_of(c, k))
            .collect();
        Ok(json!({"total": total, "offset": req.offset, "limit": LIST_LIMIT, "consumers": page}))
    })
}
