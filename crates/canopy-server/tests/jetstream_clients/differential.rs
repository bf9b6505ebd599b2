//! The differential test of the `$JS.API` surface: the same raw request sequence against
//! Debian's nats-server 2.9.10 (`jetstream {}`) and Canopy. Responses must have the same
//! JSON key sets at every level, the same `type`, the same `error.code`/`error.err_code`,
//! and the same normalised stream and consumer configuration values, except for the
//! differences listed in [`ALLOWED`] with their reason.

use std::time::Duration;

use canopy_testkit::{Impl, ServerProcess};
use serde_json::Value;

/// Which side may have a key the other lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Only {
    Canopy,
    NatsServer,
}

/// Keys (by their path inside a response, `*` for any array index) one side may have
/// alone, and why.
const ALLOWED: &[(&str, Only, &str)] = &[
    // Canopy claims 2.10: stream config fields of 2.10 that 2.9.10 does not emit.
    ("config.compression", Only::Canopy, "2.10 stream field"),
    ("config.consumer_limits", Only::Canopy, "2.10 stream field"),
    (
        "streams.*.config.compression",
        Only::Canopy,
        "2.10 stream field",
    ),
    (
        "streams.*.config.consumer_limits",
        Only::Canopy,
        "2.10 stream field",
    ),
    // 2.11's versioning metadata (`_nats.req.level`, `_nats.ver`, `_nats.level`).
    ("config.metadata", Only::Canopy, "2.11 versioning metadata"),
    (
        "streams.*.config.metadata",
        Only::Canopy,
        "2.11 versioning metadata",
    ),
    (
        "consumers.*.config.metadata",
        Only::Canopy,
        "2.11 versioning metadata",
    ),
    // Account info fields of 2.10 (reserved_*) and 2.11 (api.level, 0 = what Canopy has).
    ("reserved_memory", Only::Canopy, "2.10 account info field"),
    ("reserved_storage", Only::Canopy, "2.10 account info field"),
    ("api.level", Only::Canopy, "2.11 account info field"),
    // Newer servers send the info timestamp and, in single-server mode too,
    // `cluster: {leader}` (async-nats reads the leader).
    ("ts", Only::Canopy, "2.10 info timestamp"),
    (
        "cluster",
        Only::Canopy,
        "single-server cluster info of newer servers",
    ),
    ("streams.*.ts", Only::Canopy, "2.10 info timestamp"),
    (
        "streams.*.cluster",
        Only::Canopy,
        "single-server cluster info",
    ),
    ("consumers.*.ts", Only::Canopy, "2.10 info timestamp"),
    (
        "consumers.*.cluster",
        Only::Canopy,
        "single-server cluster info",
    ),
    // The legacy DURABLE.CREATE: Canopy fills config.name from durable_name as
    // CONSUMER.CREATE does (clients read name as optional).
    ("config.name", Only::Canopy, "name filled from durable_name"),
    (
        "consumers.*.config.name",
        Only::Canopy,
        "name filled from durable_name",
    ),
];

/// One raw request: subject, body.
type Step = (&'static str, &'static str);

const STEPS: &[Step] = &[
    ("$JS.API.INFO", ""),
    ("$JS.API.STREAM.CREATE.S1", r#"{"name":"S1"}"#),
    ("$JS.API.STREAM.CREATE.S1", r#"{"name":"S1"}"#),
    (
        "$JS.API.STREAM.CREATE.S1",
        r#"{"name":"S1","subjects":["other"]}"#,
    ),
    (
        "$JS.API.STREAM.CREATE.S2",
        r#"{"name":"S2","subjects":["S1"]}"#,
    ),
    ("$JS.API.STREAM.CREATE.S2", r#"{"name":"S3"}"#),
    (
        "$JS.API.STREAM.CREATE.S2",
        r#"{"name":"S2","num_replicas":3}"#,
    ),
    ("$JS.API.STREAM.CREATE.S2", r#"{"name":"S2","max_age":-1}"#),
    (
        "$JS.API.STREAM.CREATE.S2",
        r#"{"name":"S2","retention":"nope"}"#,
    ),
    ("$JS.API.STREAM.CREATE.S2", "{"),
    ("$JS.API.STREAM.CREATE.S2", ""),
    (
        "$JS.API.STREAM.CREATE.S2",
        r#"{"name":"S2","subjects":["s2.>"],"storage":"memory","max_msgs":10,"max_age":60000000000,"discard":"new","allow_direct":true,"max_msgs_per_subject":3}"#,
    ),
    ("S1", "one"),
    ("S1", "two"),
    ("s2.a", "three"),
    ("$JS.API.STREAM.INFO.S1", ""),
    ("$JS.API.STREAM.INFO.S2", r#"{"subjects_filter":">"}"#),
    ("$JS.API.STREAM.INFO.NOPE", ""),
    ("$JS.API.STREAM.NAMES", ""),
    ("$JS.API.STREAM.NAMES", r#"{"subject":"s2.x"}"#),
    ("$JS.API.STREAM.LIST", ""),
    ("$JS.API.STREAM.MSG.GET.S1", r#"{"seq":1}"#),
    ("$JS.API.STREAM.MSG.GET.S1", r#"{"seq":99}"#),
    ("$JS.API.STREAM.MSG.GET.S1", r#"{"last_by_subj":"S1"}"#),
    ("$JS.API.STREAM.MSG.GET.NOPE", r#"{"seq":1}"#),
    (
        "$JS.API.CONSUMER.CREATE.S1.C1",
        r#"{"stream_name":"S1","config":{"durable_name":"C1","ack_policy":"explicit"}}"#,
    ),
    (
        "$JS.API.CONSUMER.DURABLE.CREATE.S1.D1",
        r#"{"stream_name":"S1","config":{"durable_name":"D1","deliver_subject":"push.d1","ack_policy":"none"}}"#,
    ),
    (
        "$JS.API.CONSUMER.DURABLE.CREATE.S1.D2",
        r#"{"stream_name":"S1","config":{"durable_name":"D2","filter_subject":"zzz"}}"#,
    ),
    (
        "$JS.API.CONSUMER.DURABLE.CREATE.S1.D2",
        r#"{"stream_name":"S1","config":{"durable_name":"D2","deliver_policy":"by_start_sequence"}}"#,
    ),
    (
        "$JS.API.CONSUMER.DURABLE.CREATE.S1.D2",
        r#"{"stream_name":"S1","config":{"durable_name":"D2","deliver_subject":"x","flow_control":true}}"#,
    ),
    (
        "$JS.API.CONSUMER.DURABLE.CREATE.S1.D2",
        r#"{"stream_name":"S9","config":{"durable_name":"D2"}}"#,
    ),
    (
        "$JS.API.CONSUMER.DURABLE.CREATE.NOPE.D2",
        r#"{"stream_name":"NOPE","config":{"durable_name":"D2"}}"#,
    ),
    ("$JS.API.CONSUMER.INFO.S1.C1", ""),
    ("$JS.API.CONSUMER.INFO.S1.NOPE", ""),
    ("$JS.API.CONSUMER.INFO.NOPE.C1", ""),
    ("$JS.API.CONSUMER.NAMES.S1", ""),
    ("$JS.API.CONSUMER.NAMES.NOPE", ""),
    ("$JS.API.CONSUMER.LIST.NOPE", ""),
    ("$JS.API.STREAM.NAMES", r#"{"subject":"nothing.here"}"#),
    ("$JS.API.CONSUMER.LIST.S1", ""),
    ("$JS.API.CONSUMER.DELETE.S1.D1", ""),
    ("$JS.API.CONSUMER.DELETE.S1.D1", ""),
    ("$JS.API.STREAM.MSG.DELETE.S1", r#"{"seq":1}"#),
    ("$JS.API.STREAM.MSG.DELETE.S1", r#"{"seq":1}"#),
    ("$JS.API.STREAM.MSG.DELETE.S1", r#"{"seq":99}"#),
    (
        "$JS.API.STREAM.INFO.S2",
        r#"{"subjects_filter":"s2.>","offset":1}"#,
    ),
    ("$JS.API.STREAM.PURGE.S1", ""),
    ("$JS.API.STREAM.PURGE.S2", r#"{"filter":"s2.a","keep":1}"#),
    ("$JS.API.STREAM.DELETE.S1", ""),
    ("$JS.API.STREAM.DELETE.S1", ""),
    ("$JS.API.STREAM.UPDATE.NOPE", r#"{"name":"NOPE"}"#),
    (
        "$JS.API.STREAM.UPDATE.S2",
        r#"{"name":"S2","storage":"file"}"#,
    ),
    ("$JS.API.INFO", ""),
];

/// Keys whose values differ by nature (times, ids, random names, counters of API calls,
/// the server's identity).
const VOLATILE: &[&str] = &[
    "created",
    "ts",
    "first_ts",
    "last_ts",
    "time",
    "last_active",
    "name",
    "leader",
    "description",
    "total",
    "errors",
    "memory",
    "storage",
    "bytes",
    "max_memory",
    "max_storage",
    "server_id",
    "level",
];

thread_local! {
    /// The allowances that were needed (each must be, or it goes from the list).
    static USED: std::cell::RefCell<std::collections::BTreeSet<&'static str>> =
        Default::default();
}

fn allowed(path: &str, only: Only) -> bool {
    match ALLOWED.iter().find(|&&(p, o, _)| p == path && o == only) {
        Some(&(p, _, _)) => {
            USED.with(|u| u.borrow_mut().insert(p));
            true
        }
        None => false,
    }
}

/// Compares `a` (nats-server) and `b` (Canopy) at `path`, pushing differences to `out`.
/// `values`: also compare scalar values (inside configs and errors).
fn compare(path: &str, a: &Value, b: &Value, values: bool, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().filter(|k| !y.contains_key(*k)) {
                if !allowed(&join(k), Only::NatsServer) {
                    out.push(format!("{}: only nats-server has it ({})", join(k), x[k]));
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                if !allowed(&join(k), Only::Canopy) {
                    out.push(format!("{}: only Canopy has it ({})", join(k), y[k]));
                }
            }
            // Maps keyed by data (subject counts) compare as maps of values.
            for (k, va) in x {
                if let Some(vb) = y.get(k) {
                    let inner = values || k == "config" || k == "error";
                    compare(&join(k), va, vb, inner, out);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.push(format!("{path}: {} vs {} elements", x.len(), y.len()));
            }
            for (va, vb) in x.iter().zip(y) {
                compare(&join("*"), va, vb, values, out);
            }
        }
        (x, y) => {
            let last = path.rsplit('.').next().unwrap_or("");
            let kind = |v: &Value| std::mem::discriminant(v);
            let comparable = !VOLATILE.contains(&last);
            if !x.is_null() && !y.is_null() && kind(x) != kind(y) {
                out.push(format!("{path}: {x} vs {y} (different JSON types)"));
            } else if (values || last == "type" || last == "code" || last == "err_code")
                && comparable
                && x != y
            {
                out.push(format!("{path}: nats-server {x}, Canopy {y}"));
            }
        }
    }
}

async fn run(kind: Impl) -> Vec<Value> {
    let store = tempfile::tempdir().unwrap();
    let cfg = format!(
        "listen: 127.0.0.1:-1\nserver_name: diff\njetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    );
    let s = ServerProcess::start(kind, &cfg, &[]).unwrap();
    let nc = async_nats::connect(s.url()).await.unwrap();
    let mut out = Vec::new();
    for (subject, body) in STEPS {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            nc.request(subject.to_string(), body.as_bytes().to_vec().into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{kind:?}: {subject} timed out"));
        // A publish nobody stores is compared as such.
        let v: Value = match r {
            Ok(r) => serde_json::from_slice(&r.payload)
                .unwrap_or_else(|e| panic!("{kind:?}: {subject}: {e}: {:?}", r.payload)),
            Err(e) => serde_json::json!({ "request_error": e.to_string() }),
        };
        out.push(v);
    }
    out
}

#[tokio::test]
async fn api_responses_match_nats_server() {
    if canopy_testkit::nats_server_bin().is_none() {
        eprintln!("nats-server not installed: skipped");
        return;
    }
    let (theirs, ours) = tokio::join!(run(Impl::NatsServer), run(Impl::Canopy));
    let mut report = Vec::new();
    for (i, ((subject, body), (a, b))) in STEPS.iter().zip(theirs.iter().zip(&ours)).enumerate() {
        let mut diffs = Vec::new();
        compare("", a, b, false, &mut diffs);
        if !diffs.is_empty() {
            report.push(format!(
                "step {i} {subject} {body}\n  nats-server: {a}\n  canopy:      {b}\n  - {}",
                diffs.join("\n  - ")
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n\n"));
    let unused: Vec<&str> = ALLOWED
        .iter()
        .map(|a| a.0)
        .filter(|p| !USED.with(|u| u.borrow().contains(p)))
        .collect();
    assert!(
        unused.is_empty(),
        "allowed differences never seen: {unused:?}"
    );
}
