//! `$JS.EVENT.ADVISORY.*`: the advisories nats-server publishes in an account when its
//! JetStream assets change or a delivery ends badly (stream and consumer actions, API audit,
//! max deliveries, naks, terminations, pauses, priority-group pins). Each is a JSON object
//! with nats-server's `type` (`io.nats.jetstream.advisory.v1.<kind>`), a random `id`, a
//! `timestamp`, its own fields and the `domain` when there is one. Like nats-server, an
//! advisory nobody listens to is not built.

use serde_json::{Map, Value};

use crate::host::Host;
use crate::util::{now_ns, random_name, rfc3339};

/// The prefix of every advisory subject.
pub(crate) const PREFIX: &str = "$JS.EVENT.ADVISORY";

/// Publishes advisory `kind` on `subject` in `account` if anyone listens.
pub(crate) fn publish(
    host: &dyn Host,
    account: &str,
    domain: Option<&str>,
    subject: &str,
    kind: &str,
    fields: Value,
) {
    if !host.has_interest(account, subject) {
        return;
    }
    let mut v = Map::new();
    v.insert(
        "type".into(),
        Value::String(format!("io.nats.jetstream.advisory.v1.{kind}")),
    );
    v.insert("id".into(), Value::String(random_name(22)));
    v.insert("timestamp".into(), Value::String(rfc3339(now_ns())));
    if let Value::Object(f) = fields {
        v.extend(f);
    }
    if let Some(d) = domain {
        v.insert("domain".into(), Value::String(d.to_string()));
    }
    let body = Value::Object(v).to_string();
    host.publish(account, subject, None, None, body.as_bytes());
}

/// `STREAM.CREATED|UPDATED|DELETED.<stream>` (`stream_action`, action create/modify/delete).
pub(crate) fn stream_action(
    host: &dyn Host,
    account: &str,
    domain: Option<&str>,
    stream: &str,
    action: &str,
) {
    let event = match action {
        "create" => "CREATED",
        "delete" => "DELETED",
        _ => "UPDATED",
    };
    publish(
        host,
        account,
        domain,
        &format!("{PREFIX}.STREAM.{event}.{stream}"),
        "stream_action",
        serde_json::json!({"stream": stream, "action": action}),
    );
}

/// `CONSUMER.CREATED|DELETED.<stream>.<consumer>` (`consumer_action`).
pub(crate) fn consumer_action(
    host: &dyn Host,
    account: &str,
    domain: Option<&str>,
    stream: &str,
    consumer: &str,
    action: &str,
) {
    let event = if action == "create" {
        "CREATED"
    } else {
        "DELETED"
    };
    publish(
        host,
        account,
        domain,
        &format!("{PREFIX}.CONSUMER.{event}.{stream}.{consumer}"),
        "consumer_action",
        serde_json::json!({"stream": stream, "consumer": consumer, "action": action}),
    );
}
