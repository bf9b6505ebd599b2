//! Account exports and imports: the only way subjects cross accounts.
//!
//! One internal connection (the *import agent*) holds a subscription for every import:
//! in the exporting account for stream imports, in the importing account for service
//! imports, plus one `_R_.<id>.>` reply subscription per exporting account. Its outbound
//! buffer is parsed by a task (like the system client) that re-publishes each message into
//! the other account with the subject mapped (`prefix`/`to`), and for services with the
//! reply rewritten to a private `_R_` subject whose response is routed back to the
//! requester. The agent publishes with echo off, so a message it moved is never moved
//! again: imports never loop, even when two accounts import from each other.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use canopy_conf::{Export, Import, Options, ResponseType};
use canopy_proto::{Op, Parser, ParserLimits, Role};

use crate::core::account::Account;
use crate::core::conn::{ConnShared, FlushList};
use crate::core::deliver::{deliver, Msg, Origin, Scratch};
use crate::core::interest::LinkClass;
use crate::server::Server;

/// How long a service response route lives when the export sets no threshold.
const DEFAULT_RESPONSE_THRESHOLD: Duration = Duration::from_secs(120);

/// Maps `subject` (matched by `from`) onto `to`: wildcard tokens of `from` are filled into
/// the wildcard tokens of `to` in order; a trailing `>` carries the rest.
pub fn map_subject(from: &str, to: &str, subject: &str) -> String {
    if from == to {
        return subject.to_string();
    }
    let from_t: Vec<&str> = from.split('.').collect();
    let subj_t: Vec<&str> = subject.split('.').collect();
    let mut captured: Vec<String> = Vec::new();
    let mut rest = String::new();
    for (i, f) in from_t.iter().enumerate() {
        match *f {
            "*" => captured.push(subj_t.get(i).copied().unwrap_or("").to_string()),
            ">" => {
                rest = subj_t.get(i..).map(|r| r.join(".")).unwrap_or_default();
                break;
            }
            _ => {}
        }
    }
    let mut out: Vec<String> = Vec::new();
    let mut cap = captured.into_iter();
    for t in to.split('.') {
        match t {
            "*" => out.push(cap.next().unwrap_or_default()),
            ">" => out.push(rest.clone()),
            lit => out.push(lit.to_string()),
        }
    }
    out.join(".")
}

/// What each agent subscription does with a message.
#[derive(Clone)]
enum Route {
    /// Stream import: from the exporter into `to_account`, subject mapped `from` → `to`.
    Stream {
        to_account: Arc<Account>,
        from: String,
        to: String,
    },
    /// Service import: a request in the importer (`local` pattern) goes to the exporter
    /// (`remote` pattern) with a private reply subject.
    Service {
        exporter: Arc<Account>,
        importer: Arc<Account>,
        local: String,
        remote: String,
        response: ResponseType,
        threshold: Duration,
    },
    /// Responses arriving on an exporter's `_R_.<id>.>`.
    Replies,
}

struct Pending {
    importer: Arc<Account>,
    reply: Bytes,
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

fn service_export<'a>(o: &'a Options, exporter: &str, subject: &str) -> Option<&'a Export> {
    o.account(exporter)?.exports.iter().find(|e| {
        matches!(e, Export::Service { subject: es, .. } if canopy_subject::subject_is_subset_of(subject, es))
    })
}

/// Starts the import agent when any account imports something.
pub fn start(server: Arc<Server>) {
    let o = server.opts();
    if o.accounts.iter().all(|a| a.imports.is_empty()) {
        return;
    }
    let cid = server.next_cid();
    let conn = ConnShared::internal(cid, "imports", "", true);
    let reply_prefix = format!("_R_.{}", crate::core::nuid());
    let mut routes: Vec<Route> = Vec::new();
    let subscribe = |acc: &Arc<Account>, subject: &str, routes: &mut Vec<Route>, r: Route| {
        if acc.subscribe_internal(&conn, subject, Bytes::from(routes.len().to_string())) {
            routes.push(r);
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
                    let to = match (prefix, to) {
                        (Some(p), _) => format!("{p}.{subject}"),
                        (None, Some(t)) => t.clone(),
                        (None, None) => subject.clone(),
                    };
                    let r = Route::Stream {
                        to_account: importer.clone(),
                        from: subject.clone(),
                        to,
                    };
                    subscribe(&exporter, subject, &mut routes, r);
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
                    let r = Route::Service {
                        exporter: exporter.clone(),
                        importer: importer.clone(),
                        local: local.clone(),
                        remote: subject.clone(),
                        response,
                        threshold,
                    };
                    subscribe(&importer, &local, &mut routes, r);
                    if !reply_subscribed.contains(&exporter.name) {
                        reply_subscribed.push(exporter.name.clone());
                        let subj = format!("{reply_prefix}.>");
                        subscribe(&exporter, &subj, &mut routes, Route::Replies);
                    }
                }
            }
        }
    }
    drop(o);
    tracing::debug!("import agent: {} subscriptions", routes.len());
    let s = server.clone();
    tokio::spawn(async move {
        let mut parser = Parser::new(Role::ClientSide, ParserLimits::link(64 * 1024 * 1024));
        let mut buf = BytesMut::new();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next: u64 = 0;
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut flush = FlushList::default();
        let mut scratch = Scratch::default();
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = conn.output_ready() => {}
                _ = sweep.tick() => {
                    let now = Instant::now();
                    pending.retain(|_, p| p.expires > now);
                    continue;
                }
            }
            let mut out = BytesMut::new();
            conn.take_output(&mut out);
            buf.extend_from_slice(&out);
            while let Ok(Some(op)) = parser.next(&mut buf) {
                let Op::Msg {
                    subject,
                    sid,
                    reply,
                    header_len,
                    payload,
                } = op
                else {
                    continue;
                };
                let Some(route) = std::str::from_utf8(&sid)
                    .ok()
                    .and_then(|x| x.parse::<usize>().ok())
                    .and_then(|i| routes.get(i))
                else {
                    continue;
                };
                let subj = String::from_utf8_lossy(&subject).into_owned();
                let mut publish = |acc: &Account, subject: &str, reply: Option<&[u8]>| {
                    let result = acc.sublist.matches(subject);
                    let msg = Msg {
                        subject: subject.as_bytes(),
                        reply,
                        hdr_len: header_len,
                        payload: &payload,
                    };
                    let origin = Origin {
                        cid,
                        echo: false,
                        class: LinkClass::Client,
                        queues: None,
                        peer: None,
                    };
                    let d = deliver(acc, &result, &msg, &origin, &mut scratch, &mut flush);
                    s.stats.out_msgs.fetch_add(d.msgs, Ordering::Relaxed);
                    d.msgs
                };
                match route {
                    Route::Stream {
                        to_account,
                        from,
                        to,
                    } => {
                        let mapped = map_subject(from, to, &subj);
                        publish(to_account, &mapped, reply.as_deref());
                    }
                    Route::Service {
                        exporter,
                        importer,
                        local,
                        remote,
                        response,
                        threshold,
                    } => {
                        let mapped = map_subject(local, remote, &subj);
                        match &reply {
                            Some(r) => {
                                next += 1;
                                let private = format!("{reply_prefix}.{next}");
                                pending.insert(
                                    next,
                                    Pending {
                                        importer: importer.clone(),
                                        reply: r.clone(),
                                        response: *response,
                                        expires: Instant::now() + *threshold,
                                    },
                                );
                                if publish(exporter, &mapped, Some(private.as_bytes())) == 0 {
                                    pending.remove(&next);
                                }
                            }
                            None => {
                                publish(exporter, &mapped, None);
                            }
                        }
                    }
                    Route::Replies => {
                        let Some(n) = subj.rsplit('.').next().and_then(|x| x.parse::<u64>().ok())
                        else {
                            continue;
                        };
                        let Some(p) = pending.get(&n) else {
                            continue;
                        };
                        let target = String::from_utf8_lossy(&p.reply).into_owned();
                        let importer = p.importer.clone();
                        if p.response == ResponseType::Singleton {
                            pending.remove(&n);
                        }
                        publish(&importer, &target, None);
                    }
                }
            }
            flush.flush();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_mapping() {
        assert_eq!(map_subject("a.>", "b.a.>", "a.x.y"), "b.a.x.y");
        assert_eq!(map_subject("a.*.c", "z.*", "a.q.c"), "z.q");
        assert_eq!(map_subject("events.>", "events.>", "events.1"), "events.1");
        assert_eq!(map_subject("x", "y", "x"), "y");
    }
}
