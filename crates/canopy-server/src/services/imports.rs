//! Account exports and imports: the only way subjects cross accounts.
//!
//! One service on the internal service API (the *import agent*) holds a subscription for
//! every import: in the exporting account for stream imports, in the importing account for
//! service imports, plus one `_R_.<id>.>` reply subscription per exporting account. Its
//! handler re-publishes each message into the other account with the subject mapped
//! (`prefix`/`to`), and for services with the reply rewritten to a private `_R_` subject
//! whose response is routed back to the requester. A service never hears its own
//! publishes, so a message the agent moved is never moved again: imports never loop, even
//! when two accounts import from each other.
//!
//! Every server imports for its own subscribers (docs/ARCHITECTURE.md, "Where imports
//! happen"): a stream copy goes to local clients and to leaf servers below that do not
//! import for themselves ([`Service::publish_imported`]), and a service request is
//! forwarded only by the server its requester is on, so nothing is imported twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_conf::{Export, Import, Options, ResponseType};
use canopy_subject::Transform;
use parking_lot::Mutex;

use crate::core::account::Account;
use crate::core::inbox::InMsg;
use crate::server::service::{sync_handler, Service, ServiceOpts};
use crate::server::Server;

/// How long a service response route lives when the export sets no threshold.
const DEFAULT_RESPONSE_THRESHOLD: Duration = Duration::from_secs(120);

/// What each agent subscription does with a message.
#[derive(Clone)]
enum Route {
    /// Stream import: from the exporter into `to_account`, subject mapped `from` → `to`.
    Stream {
        to_account: Arc<Account>,
        map: Transform,
    },
    /// Service import: a request in the importer (`local` pattern) goes to the exporter
    /// (`remote` pattern) with a private reply subject.
    Service {
        exporter: Arc<Account>,
        importer: Arc<Account>,
        map: Transform,
        response: ResponseType,
        threshold: Duration,
    },
    /// Responses arriving on an exporter's `_R_.<id>.>`.
    Replies,
}

struct Pending {
    importer: Arc<Account>,
    reply: String,
    response: ResponseType,
    expires: Instant,
}

/// Checks every import against the exporting account's exports (nats-server refuses to
/// start on an import that no export allows).
pub fn validate(o: &Options) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    for acc in &o.accounts {
        for imp in &acc.imports {
            let Some(exporter) = o.account(imp.account()) else {
                continue; // canopy-conf reports unknown accounts already
            };
            let (subject, is_stream) = match imp {
                Import::Stream { subject, .. } => (subject, true),
                Import::Service { subject, .. } => (subject, false),
            };
            let mapping = match imp {
                Import::Stream {
                    subject,
                    prefix,
                    to,
                    ..
                } => stream_transform(subject, prefix, to),
                Import::Service { subject, to, .. } => {
                    Transform::service_import(to.as_deref().unwrap_or(subject), subject)
                }
            };
            if let Err(e) = mapping {
                errs.push(format!(
                    "{}: import of \"{subject}\" from account \"{}\": {e}",
                    imp.pos(),
                    imp.account()
                ));
            }
            let allowed = exporter.exports.iter().any(|e| {
                let (es, accounts, stream) = match e {
                    Export::Stream {
                        subject, accounts, ..
                    } => (subject, accounts, true),
                    Export::Service {
                        subject, accounts, ..
                    } => (subject, accounts, false),
                };
                stream == is_stream
                    && canopy_subject::subject_is_subset_of(subject, es)
                    && (accounts.is_empty() || accounts.iter().any(|a| a == &acc.name))
            });
            if !allowed {
                errs.push(format!(
                    "{}: {} import of \"{}\" from account \"{}\" into \"{}\" is not authorized by any export",
                    imp.pos(),
                    if is_stream { "stream" } else { "service" },
                    subject,
                    imp.account(),
                    acc.name
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// The subject mapping of a stream import (`prefix` or `to`).
fn stream_transform(
    subject: &str,
    prefix: &Option<String>,
    to: &Option<String>,
) -> Result<Transform, canopy_subject::TransformError> {
    let to = match (prefix, to) {
        (Some(p), _) => format!("{p}.{subject}"),
        (None, Some(t)) => t.clone(),
        (None, None) => subject.to_string(),
    };
    Transform::stream_import(subject, &to)
}

fn service_export<'a>(o: &'a Options, exporter: &str, subject: &str) -> Option<&'a Export> {
    o.account(exporter)?.exports.iter().find(|e| {
        matches!(e, Export::Service { subject: es, .. } if canopy_subject::subject_is_subset_of(subject, es))
    })
}

/// The agent's state shared by its handlers (one worker: messages are handled in order).
struct Agent {
    server: Arc<Server>,
    svc: Arc<Service>,
    reply_prefix: String,
    pending: Mutex<(u64, HashMap<u64, Pending>)>,
}

impl Agent {
    fn handle(&self, route: &Route, m: &InMsg) {
        let hdr = m.headers.as_deref();
        match route {
            Route::Stream { to_account, map } => {
                // A JetStream delivery matched the import by its deliver subject: that is
                // what is mapped, and the importer's receivers see the message's own.
                let (routed, seen) = match &m.deliver_to {
                    Some(d) => (d.as_str(), Some(m.subject.as_str())),
                    None => (m.subject.as_str(), None),
                };
                let Ok(mapped) = map.transform(routed) else {
                    return;
                };
                self.svc.publish_imported(
                    to_account,
                    &mapped,
                    seen,
                    m.reply.as_deref(),
                    hdr,
                    m.origin.server.as_deref(),
                    &m.payload,
                );
            }
            Route::Service {
                exporter,
                importer,
                map,
                response,
                threshold,
            } => {
                if m.origin.peer_imports {
                    return; // the server it came from imports it (see `MsgOrigin`)
                }
                let Ok(mapped) = map.transform(&m.subject) else {
                    return;
                };
                let Some(reply) = &m.reply else {
                    self.svc.publish(exporter, &mapped, None, hdr, &m.payload);
                    return;
                };
                let n = {
                    let mut p = self.pending.lock();
                    p.0 += 1;
                    let n = p.0;
                    p.1.insert(
                        n,
                        Pending {
                            importer: importer.clone(),
                            reply: reply.clone(),
                            response: *response,
                            expires: Instant::now() + *threshold,
                        },
                    );
                    n
                };
                let private = format!("{}.{n}", self.reply_prefix);
                if self
                    .svc
                    .publish(exporter, &mapped, Some(&private), hdr, &m.payload)
                    == 0
                {
                    self.pending.lock().1.remove(&n);
                }
            }
            Route::Replies => {
                let Some(n) = m
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                else {
                    return;
                };
                let target = {
                    let mut p = self.pending.lock();
                    let Some(entry) = p.1.get(&n) else {
                        return;
                    };
                    let target = (entry.importer.clone(), entry.reply.clone());
                    if entry.response == ResponseType::Singleton {
                        p.1.remove(&n);
                    }
                    target
                };
                self.svc
                    .publish(&target.0, &target.1, None, hdr, &m.payload);
            }
        }
    }
}

/// Starts the import agent when any account imports something.
pub fn start(server: Arc<Server>) {
    let o = server.opts();
    if o.accounts.iter().all(|a| a.imports.is_empty()) {
        return;
    }
    let svc = Service::start(&server, "imports", ServiceOpts::default());
    let agent = Arc::new(Agent {
        server: server.clone(),
        svc: svc.clone(),
        reply_prefix: format!("_R_.{}", crate::core::nuid()),
        pending: Mutex::new((0, HashMap::new())),
    });
    let mut count = 0usize;
    let subscribe = |acc: &Arc<Account>, subject: &str, r: Route, count: &mut usize| {
        let a = agent.clone();
        let handler = sync_handler(move |m| {
            a.handle(&r, &m);
            Ok(())
        });
        match svc.subscribe(acc, subject, None, handler) {
            Ok(_) => *count += 1,
            Err(e) => tracing::error!("import agent: cannot subscribe to {subject}: {e}"),
        }
    };
    let mut reply_subscribed: Vec<String> = Vec::new();
    for acc_cfg in &o.accounts {
        let Some(importer) = server.account(&acc_cfg.name) else {
            continue;
        };
        for imp in &acc_cfg.imports {
            let Some(exporter) = server.account(imp.account()) else {
                continue;
            };
            match imp {
                Import::Stream {
                    subject,
                    prefix,
                    to,
                    ..
                } => {
                    let Ok(map) = stream_transform(subject, prefix, to) else {
                        continue; // refused at start by `validate`
                    };
                    let r = Route::Stream {
                        to_account: importer.clone(),
                        map,
                    };
                    subscribe(&exporter, subject, r, &mut count);
                }
                Import::Service { subject, to, .. } => {
                    let local = to.clone().unwrap_or_else(|| subject.clone());
                    let (response, threshold) = match service_export(&o, imp.account(), subject) {
                        Some(Export::Service {
                            response_type,
                            response_threshold,
                            ..
                        }) => (
                            *response_type,
                            response_threshold.unwrap_or(DEFAULT_RESPONSE_THRESHOLD),
                        ),
                        _ => (ResponseType::Singleton, DEFAULT_RESPONSE_THRESHOLD),
                    };
                    let Ok(map) = Transform::service_import(&local, subject) else {
                        continue; // refused at start by `validate`
                    };
                    let r = Route::Service {
                        exporter: exporter.clone(),
                        importer: importer.clone(),
                        map,
                        response,
                        threshold,
                    };
                    subscribe(&importer, &local, r, &mut count);
                    if !reply_subscribed.contains(&exporter.name) {
                        reply_subscribed.push(exporter.name.clone());
                        let subj = format!("{}.>", agent.reply_prefix);
                        subscribe(&exporter, &subj, Route::Replies, &mut count);
                    }
                }
            }
        }
    }
    drop(o);
    tracing::debug!("import agent: {count} subscriptions");
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = agent.server.shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    let now = Instant::now();
                    agent.pending.lock().1.retain(|_, p| p.expires > now);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(subject: &str, prefix: Option<&str>, to: Option<&str>, msg: &str) -> String {
        let t = stream_transform(subject, &prefix.map(String::from), &to.map(String::from))
            .expect("valid import");
        t.transform(msg).expect("maps").into_owned()
    }

    #[test]
    fn import_mappings() {
        assert_eq!(stream("a.>", Some("b"), None, "a.x.y"), "b.a.x.y");
        assert_eq!(stream("a.*.c", None, Some("z.*"), "a.q.c"), "z.q");
        assert_eq!(stream("events.>", None, None, "events.1"), "events.1");
        assert_eq!(stream("x", None, Some("y"), "x"), "y");
        let svc = Transform::service_import("local.*", "remote.*").expect("valid");
        assert_eq!(svc.transform("local.q").expect("maps"), "remote.q");
    }
}
