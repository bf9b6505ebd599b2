//! The JSON shapes of the `$JS.API`: stream and consumer configuration (with nats-server's
//! defaults applied by [`StreamConfig::normalize`] / [`ConsumerConfig::normalize`]) and the
//! state objects in info responses. Field names, order and `omitempty` follow nats-server so
//! responses diff cleanly against it; unknown fields are kept and echoed back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Nanoseconds in a second.
pub const NANOS: i64 = 1_000_000_000;
/// nats-server's default duplicate window (2 minutes).
pub const DEFAULT_DUPLICATE_WINDOW: i64 = 120 * NANOS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    #[serde(rename = "workqueue")]
    WorkQueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiscardPolicy {
    #[default]
    Old,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    #[default]
    File,
    Memory,
}

/// A stream's input subject transform: stored subjects matching `src` become `dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SubjectTransformConfig {
    pub src: String,
    pub dest: String,
}

/// Republish: each stored message whose subject matches `src` is published again on the
/// transformed `dest` with the stream's headers (only the headers with `headers_only`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RePublish {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub src: String,
    pub dest: String,
    #[serde(skip_serializing_if = "is_false")]
    pub headers_only: bool,
}

/// A stream's configuration (`StreamConfig` + `pedantic` of the create request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StreamConfig {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub max_consumers: i64,
    pub max_msgs: i64,
    pub max_bytes: i64,
    pub max_age: i64,
    pub max_msgs_per_subject: i64,
    pub max_msg_size: i64,
    pub discard: DiscardPolicy,
    pub storage: StorageType,
    pub num_replicas: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub no_ack: bool,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub duplicate_window: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub first_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_transform: Option<SubjectTransformConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub republish: Option<RePublish>,
    pub allow_direct: bool,
    pub mirror_direct: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub discard_new_per_subject: bool,
    pub sealed: bool,
    pub deny_delete: bool,
    pub deny_purge: bool,
    pub allow_rollup_hdrs: bool,
    pub consumer_limits: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "is_false")]
    pub allow_msg_ttl: bool,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub subject_delete_marker_ttl: i64,
    /// Request-only: strict validation (never echoed).
    #[serde(skip_serializing)]
    pub pedantic: bool,
    /// Fields we do not interpret, echoed back as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StreamConfig {
    /// Fills in nats-server's defaults (`checkStreamCfg`): 0 limits become -1, subjects
    /// default to the name, one replica, a duplicate window of 2 min capped by `max_age`.
    pub fn normalize(&mut self) {
        for v in [
            &mut self.max_consumers,
            &mut self.max_msgs,
            &mut self.max_bytes,
            &mut self.max_msgs_per_subject,
            &mut self.max_msg_size,
        ] {
            if *v == 0 {
                *v = -1;
            }
        }
        if self.num_replicas == 0 {
            self.num_replicas = 1;
        }
        if self.subjects.is_empty() && self.mirror.is_none() && self.sources.is_none() {
            self.subjects = vec![self.name.clone()];
        }
        if self.duplicate_window == 0 && self.mirror.is_none() {
            self.duplicate_window = if self.max_age != 0 && self.max_age < DEFAULT_DUPLICATE_WINDOW
            {
                self.max_age
            } else {
                DEFAULT_DUPLICATE_WINDOW
            };
        }
        if self.consumer_limits.is_null() {
            self.consumer_limits = Value::Object(Map::new());
        }
        if self.compression.is_none() {
            self.compression = Some("none".into());
        }
        // Per-message TTLs and delete markers came with API level 1 (2.11).
        let level = u32::from(self.allow_msg_ttl || self.subject_delete_marker_ttl > 0);
        set_static_metadata(&mut self.metadata, level);
    }

    /// The store limits this configuration asks for.
    pub fn store_config(&self) -> canopy_store::StoreConfig {
        let pos = |v: i64| if v > 0 { v as u64 } else { 0 };
        canopy_store::StoreConfig {
            max_msgs: pos(self.max_msgs),
            max_bytes: pos(self.max_bytes),
            max_age: std::time::Duration::from_nanos(pos(self.max_age)),
            max_msgs_per_subject: pos(self.max_msgs_per_subject),
            max_msg_size: 0,
            discard: match self.discard {
                DiscardPolicy::Old => canopy_store::Discard::Old,
                DiscardPolicy::New => canopy_store::Discard::New,
            },
            discard_new_per_subject: self.discard_new_per_subject,
            first_seq: self.first_seq,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    Last,
    New,
    #[serde(rename = "by_start_sequence")]
    ByStartSequence,
    #[serde(rename = "by_start_time")]
    ByStartTime,
    #[serde(rename = "last_per_subject")]
    LastPerSubject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    None,
    All,
    #[default]
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplayPolicy {
    #[default]
    Instant,
    Original,
}

/// nats-server's default `ack_wait` (30 s).
pub const DEFAULT_ACK_WAIT: i64 = 30 * NANOS;
/// nats-server's default `max_ack_pending` (`JsDefaultMaxAckPending`).
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1000;
/// Default pull queue length.
pub const DEFAULT_MAX_WAITING: i64 = 512;
/// Default inactive threshold of ephemeral consumers (5 s).
pub const DEFAULT_INACTIVE_THRESHOLD: i64 = 5 * NANOS;

/// A consumer's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConsumerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub deliver_policy: DeliverPolicy,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub opt_start_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    pub ack_policy: AckPolicy,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub ack_wait: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_deliver: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    pub replay_policy: ReplayPolicy,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub rate_limit_bps: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_freq: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_waiting: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_ack_pending: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub flow_control: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub headers_only: bool,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_batch: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_expires: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub max_bytes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_group: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub idle_heartbeat: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub inactive_threshold: i64,
    pub num_replicas: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub mem_storage: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub direct: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Paused (nothing delivered) until this time (RFC 3339; 2.11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_until: Option<String>,
    /// Priority groups (2.11): one group name, with `priority_policy`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub priority_groups: Vec<String>,
    /// `overflow` or `pinned_client` (`none` is stored as absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_policy: Option<String>,
    /// `pinned_client`: how long a pin lasts without a new pull from the pinned client (ns).
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub priority_timeout: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// nats-server 2.11's versioning metadata (ADR-44): the API level a stream or consumer
/// needs is stored with its configuration; the server's version and level are added to
/// every configuration a response carries, never stored.
pub const META_REQ_LEVEL: &str = "_nats.req.level";
pub const META_VERSION: &str = "_nats.ver";
pub const META_LEVEL: &str = "_nats.level";

/// Stores the required API level, dropping any response-only keys a client sent back.
fn set_static_metadata(md: &mut Option<Map<String, Value>>, level: u32) {
    let m = md.get_or_insert_with(Map::new);
    m.remove(META_VERSION);
    m.remove(META_LEVEL);
    m.insert(META_REQ_LEVEL.into(), Value::String(level.to_string()));
}

/// Removes every versioning key (for comparisons); an emptied map becomes absent.
pub fn strip_versioning(md: &mut Option<Map<String, Value>>) {
    if let Some(m) = md {
        for k in [META_REQ_LEVEL, META_VERSION, META_LEVEL] {
            m.remove(k);
        }
        if m.is_empty() {
            *md = None;
        }
    }
}

/// Adds the server's version and API level to a configuration on its way out.
pub fn add_dynamic_metadata(config: &mut Value, version: &str, level: u32) {
    let Some(c) = config.as_object_mut() else {
        return;
    };
    let md = c
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = md.as_object_mut() {
        m.insert(META_VERSION.into(), Value::String(version.into()));
        m.insert(META_LEVEL.into(), Value::String(level.to_string()));
    }
}

/// `priority_policy` values.
pub const PRIORITY_OVERFLOW: &str = "overflow";
pub const PRIORITY_PINNED: &str = "pinned_client";
/// nats-server's default `priority_timeout` for pinned clients (2 minutes).
pub const DEFAULT_PINNED_TTL: i64 = 120 * NANOS;

impl ConsumerConfig {
    /// When a pause ends (ns since the epoch), if `pause_until` is set and not the zero time.
    pub fn pause_end(&self) -> Option<i64> {
        self.pause_until
            .as_deref()
            .and_then(crate::util::parse_rfc3339)
            .filter(|&t| t > 0)
    }

    pub fn is_pull(&self) -> bool {
        self.deliver_subject.as_deref().is_none_or(str::is_empty)
    }

    /// The filters (empty: everything).
    pub fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> = match &self.filter_subject {
            Some(s) if !s.is_empty() => vec![s.clone()],
            _ => self.filter_subjects.clone(),
        };
        f.retain(|s| s != ">");
        f
    }

    /// nats-server's `setConsumerConfigDefaults`.
    pub fn normalize(&mut self, ephemeral: bool) {
        if matches!(self.priority_policy.as_deref(), Some("none" | "")) {
            self.priority_policy = None;
        }
        if self.priority_policy.as_deref() == Some(PRIORITY_PINNED) && self.priority_timeout == 0 {
            self.priority_timeout = DEFAULT_PINNED_TTL;
        }
        if self.filter_subject.as_deref() == Some("") {
            self.filter_subject = None;
        }
        if self.deliver_subject.as_deref() == Some("") {
            self.deliver_subject = None;
        }
        if self.deliver_group.as_deref() == Some("") {
            self.deliver_group = None;
        }
        if self.durable_name.as_deref() == Some("") {
            self.durable_name = None;
        }
        if self.name.as_deref() == Some("") {
            self.name = None;
        }
        if self.max_deliver == 0 {
            self.max_deliver = -1;
        }
        if self.ack_policy != AckPolicy::None && self.ack_wait == 0 {
            self.ack_wait = self.backoff.first().copied().unwrap_or(DEFAULT_ACK_WAIT);
        }
        if self.ack_policy != AckPolicy::None && self.max_ack_pending == 0 {
            self.max_ack_pending = DEFAULT_MAX_ACK_PENDING;
        }
        if self.is_pull() && self.max_waiting == 0 {
            self.max_waiting = DEFAULT_MAX_WAITING;
        }
        if ephemeral && self.inactive_threshold == 0 {
            self.inactive_threshold = DEFAULT_INACTIVE_THRESHOLD;
        }
        // Pause and priority groups came with API level 1 (2.11).
        let level = u32::from(
            self.pause_end().is_some()
                || self.priority_policy.is_some()
                || self.priority_timeout != 0
                || !self.priority_groups.is_empty(),
        );
        set_static_metadata(&mut self.metadata, level);
    }

    /// Equal configurations, the server's versioning metadata aside (a consumer stored
    /// before it was stamped compares equal to the same request now).
    pub fn same_as(&self, other: &ConsumerConfig) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        strip_versioning(&mut a.metadata);
        strip_versioning(&mut b.metadata);
        a == b
    }
}

/// A consumer create request.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct CreateConsumerRequest {
    pub stream_name: String,
    pub config: Option<ConsumerConfig>,
    pub action: String,
    pub pedantic: bool,
}

/// `{consumer_seq, stream_seq, last_active?}`.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceInfo {
    pub consumer_seq: u64,
    pub stream_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_active: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioning_metadata_is_stored_and_stamped() {
        let mut c: StreamConfig =
            serde_json::from_str(r#"{"name":"S","metadata":{"_nats.ver":"9.9.9","k":"v"}}"#)
                .unwrap();
        c.normalize();
        let md = c.metadata.clone().unwrap();
        assert_eq!(md["_nats.req.level"], "0");
        assert_eq!(md["k"], "v");
        assert!(
            !md.contains_key("_nats.ver"),
            "response-only keys are not stored"
        );
        c.allow_msg_ttl = true;
        c.normalize();
        assert_eq!(c.metadata.as_ref().unwrap()["_nats.req.level"], "1");
        let mut v = serde_json::to_value(&c).unwrap();
        add_dynamic_metadata(&mut v, "2.11.0", 1);
        assert_eq!(v["metadata"]["_nats.ver"], "2.11.0");
        assert_eq!(v["metadata"]["_nats.level"], "1");

        let mut a: ConsumerConfig = serde_json::from_str(r#"{"durable_name":"d"}"#).unwrap();
        a.normalize(false);
        assert_eq!(a.metadata.as_ref().unwrap()["_nats.req.level"], "0");
        let mut p = a.clone();
        p.priority_groups = vec!["g".into()];
        p.priority_policy = Some(PRIORITY_OVERFLOW.into());
        p.normalize(false);
        assert_eq!(p.metadata.as_ref().unwrap()["_nats.req.level"], "1");
        let mut stored = a.clone();
        stored.metadata = None;
        assert!(
            stored.same_as(&a),
            "a consumer stored unstamped is the same"
        );
    }
}
