//! Direct Get (`$JS.API.DIRECT.GET.<stream>` with a JSON body, and
//! `$JS.API.DIRECT.GET.<stream>.<subject>` for the last message on a subject): the reply is
//! the raw message with `Nats-Stream`, `Nats-Subject`, `Nats-Sequence`, `Nats-Time-Stamp`
//! headers, or a status-only message (`404 Message Not Found`, `408 …`). Batches and
//! `multi_last` add `Nats-Num-Pending` / `Nats-Last-Sequence` and end with `204 EOB`.

use serde::Deserialize;

use crate::engine::Account;
use crate::host::{Host, JsMsg};
use crate::stream::{Cmd, StreamCore, StreamHandle};
use crate::util::{self, rfc3339, status};
use canopy_store::StoredMsg;

#[derive(Deserialize, Default)]
#[serde(default)]
struct DirectReq {
    seq: u64,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
    batch: usize,
    max_bytes: usize,
    multi_last: Vec<String>,
    up_to_seq: u64,
    no_hdr: bool,
}

fn send(
    c: &StreamCore,
    reply: &str,
    m: &StoredMsg,
    extra: &[(&str, String)],
    no_hdr: bool,
) -> usize {
    let mut kv: Vec<(&str, String)> = vec![
        ("Nats-Stream", c.name.clone()),
        ("Nats-Subject", m.subject().to_string()),
        ("Nats-Sequence", m.seq.to_string()),
        ("Nats-Time-Stamp", rfc3339(m.ts)),
    ];
    kv.extend(extra.iter().cloned());
    let base: &[u8] = if no_hdr { &[] } else { m.headers() };
    let h = util::add_headers(base, &kv);
    c.host
        .publish(&c.account, reply, None, Some(&h), m.payload());
    h.len() + m.payload().len()
}

/// Answers a Direct Get; `rest` is what follows `DIRECT.GET.`.
pub(crate) fn direct_get(acc: &Account, m: &JsMsg, rest: &str, host: &dyn Host) {
    if !direct_get_inline(acc, m, rest) {
        if let Some(reply) = &m.reply {
            let st = status(503, "", &[]);
            host.publish(&acc.name, reply, None, Some(&st), &[]);
        }
    }
}

/// As [`direct_get`] where it only hands the request on (a delivering reader): `false`
/// when `rest` names no stream serving direct gets here (nothing is done then).
pub(crate) fn direct_get_inline(acc: &Account, m: &JsMsg, rest: &str) -> bool {
    let Some(reply) = m.reply.clone() else {
        return true;
    };
    let (stream, subject) = match rest.split_once('.') {
        Some((s, subj)) => (s, Some(subj.to_string())),
        None => (rest, None),
    };
    let Some(h) = acc.direct_stream(stream) else {
        return false;
    };
    send_direct_get(&h, m, reply, subject);
    true
}

/// Hands a direct get to stream `h`'s thread, which answers `reply` itself.
fn send_direct_get(h: &StreamHandle, m: &JsMsg, reply: String, subject: Option<String>) {
    let body = m.payload.clone();
    // Handed to the stream's thread without waiting: it answers the requester itself.
    h.send(Cmd::Call(Box::new(move |c: &mut StreamCore| {
        let fail = |code: u16, text: &str| {
            let st = status(code, text, &[]);
            c.host.publish(&c.account, &reply, None, Some(&st), &[]);
        };
        let req = if let Some(subj) = subject {
            if !body.is_empty() {
                return fail(408, "Bad Request");
            }
            DirectReq {
                last_by_subj: Some(subj),
                ..Default::default()
            }
        } else {
            if body.is_empty() {
                return fail(408, "Empty Request");
            }
            match serde_json::from_slice::<DirectReq>(&body) {
                Ok(r) => r,
                Err(_) => return fail(408, "Malformed Request"),
            }
        };
        if req.seq > 0 && req.last_by_subj.is_some()
            || req.last_by_subj.is_some() && req.next_by_subj.is_some()
        {
            return fail(408, "Bad Request");
        }
        if !req.multi_last.is_empty() {
            return multi_last(c, &reply, &req);
        }
        if req.batch > 0 {
            return batch(c, &reply, &req);
        }
        let found = if let Some(s) = &req.last_by_subj {
            c.store.last_by_subject(s).ok().flatten()
        } else if let Some(s) = &req.next_by_subj {
            c.store.load_next_matching(s, req.seq.max(1)).ok().flatten()
        } else {
            c.store.load_msg(req.seq).ok()
        };
        match found {
            Some(m) => {
                send(c, &reply, &m, &[], req.no_hdr);
            }
            None => fail(404, "Message Not Found"),
        }
    })));
}

fn eob(c: &StreamCore, reply: &str, pending: u64, last: u64) {
    let st = status(
        204,
        "EOB",
        &[
            ("Nats-Num-Pending", pending.to_string()),
            ("Nats-Last-Sequence", last.to_string()),
        ],
    );
    c.host.publish(&c.account, reply, None, Some(&st), &[]);
}

fn batch(c: &StreamCore, reply: &str, req: &DirectReq) {
    let filter = req.next_by_subj.clone().unwrap_or_else(|| ">".into());
    let mut seq = req.seq.max(1);
    let (mut sent, mut bytes, mut last) = (0usize, 0usize, 0u64);
    while sent < req.batch {
        let Ok(Some(m)) = c.store.load_next_matching(&filter, seq) else {
            break;
        };
        if req.up_to_seq > 0 && m.seq > req.up_to_seq {
            break;
        }
        if req.max_bytes > 0 && sent > 0 && bytes + m.payload().len() > req.max_bytes {
            break;
        }
        let pending = c.store.num_pending(m.seq + 1, &filter, false);
        bytes += send(
            c,
            reply,
            &m,
            &[
                ("Nats-Num-Pending", pending.to_string()),
                ("Nats-Last-Sequence", last.to_string()),
            ],
            req.no_hdr,
        );
        last = m.seq;
        seq = m.seq + 1;
        sent += 1;
    }
    if sent == 0 {
        let st = status(404, "Message Not Found", &[]);
        c.host.publish(&c.account, reply, None, Some(&st), &[]);
        return;
    }
    eob(c, reply, c.store.num_pending(seq, &filter, false), last);
}

fn multi_last(c: &StreamCore, reply: &str, req: &DirectReq) {
    let up_to = if req.up_to_seq > 0 {
        req.up_to_seq
    } else {
        c.store.state().last_seq
    };
    let mut seqs: Vec<u64> = Vec::new();
    for f in &req.multi_last {
        for (subj, _) in c.store.subjects_state(f) {
            if let Ok(Some(m)) = c.store.load_prev_matching(&subj, up_to) {
                seqs.push(m.seq);
            }
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    if req.batch > 0 {
        seqs.truncate(req.batch);
    }
    if seqs.is_empty() {
        let st = status(404, "Message Not Found", &[]);
        c.host.publish(&c.account, reply, None, Some(&st), &[]);
        return;
    }
    let n = seqs.len();
    let mut last = 0;
    for (i, s) in seqs.into_iter().enumerate() {
        if let Ok(m) = c.store.load_msg(s) {
            send(
                c,
                reply,
                &m,
                &[
                    ("Nats-Num-Pending", (n - i - 1).to_string()),
                    ("Nats-Last-Sequence", last.to_string()),
                ],
                req.no_hdr,
            );
            last = s;
        }
    }
    eob(c, reply, 0, last);
}
