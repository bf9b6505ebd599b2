//! Fan-out of one message to the subscriptions a Sublist lookup matched: encode straight
//! into each receiver's outbound buffer, pick one member per queue group (local clients
//! first), forward once per link with the queue names it must serve, honour echo,
//! auto-unsubscribe limits, header stripping and the forwarding rule of
//! [`crate::core::interest`]. No allocation per subscriber.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use canopy_subject::MatchResult;
use rand::Rng;

use crate::core::account::{Account, SubRef};
use crate::core::conn::{ConnKind, ConnShared, FlushList};
use crate::core::inbox::{origin_of, InMsg, Offer, Sink};
use crate::core::interest::{msg_allowed, LinkClass};
use crate::core::remap::{Dir, Remap};

/// One message on its way to subscribers.
pub struct Msg<'a> {
    /// The subject local subscribers see.
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// Length of the header block at the start of `payload`, when there is one.
    pub hdr_len: Option<usize>,
    pub payload: &'a [u8],
    /// How the message travels over routes and leaf links when that differs from what
    /// local subscribers see: a JetStream delivery is routed by its deliver subject while
    /// its receivers see the stream message's own subject (see [`LinkForm`]).
    pub link: Option<LinkForm<'a>>,
}

impl<'a> Msg<'a> {
    /// A message that arrived over a route or leaf link. A JetStream delivery (its reply
    /// carries `@<subject>`, [`LinkForm::split`]) is routed by the wire subject (the
    /// deliver subject) and seen by local subscribers with the stream message's own subject.
    #[inline]
    pub fn from_link(
        subject: &'a [u8],
        reply: Option<&'a [u8]>,
        hdr_len: Option<usize>,
        payload: &'a [u8],
    ) -> Msg<'a> {
        match LinkForm::split(reply) {
            Some((own_subject, ack_reply)) => Msg {
                subject: own_subject,
                reply: Some(ack_reply),
                hdr_len,
                payload,
                link: Some(LinkForm { subject, reply }),
            },
            None => Msg {
                subject,
                reply,
                hdr_len,
                payload,
                link: None,
            },
        }
    }
}

/// A JetStream delivery as it crosses a link: routed by the deliver subject, with the
/// message's own subject appended to the ack reply as `<reply>@<subject>` (nats-server's
/// encoding; the receiving server splits it again, [`LinkForm::split`]).
#[derive(Clone, Copy)]
pub struct LinkForm<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
}

impl<'a> LinkForm<'a> {
    /// The prefix of JetStream ack replies, the only replies that carry a subject.
    pub const ACK_PREFIX: &'static [u8] = b"$JS.ACK.";

    /// Splits a message that arrived over a link: when its reply is a JetStream ack reply
    /// carrying `@<subject>`, returns the subject and reply local subscribers see.
    #[inline]
    pub fn split(reply: Option<&'a [u8]>) -> Option<(&'a [u8], &'a [u8])> {
        let r = reply?;
        if !r.starts_with(Self::ACK_PREFIX) {
            return None;
        }
        let at = r.iter().rposition(|&b| b == b'@')?;
        let subject = r.get(at + 1..).filter(|s| !s.is_empty())?;
        Some((subject, &r[..at]))
    }
}

/// A subject published once: a JetStream ack (`$JS.ACK.…`, one per delivered message) or
/// a reply to a request inbox (`_INBOX.…`). Matched with `Sublist::match_once`: caching
/// it would cost the cache's write lock, a key and sweeps, for no later hit.
pub fn is_one_off(subject: &[u8]) -> bool {
    subject.starts_with(b"$JS.ACK.") || subject.starts_with(b"_INBOX.")
}

/// Delivery counters for one message.
#[derive(Default, Clone, Copy)]
pub struct Delivered {
    /// Local deliveries plus link forwards.
    pub msgs: u64,
    pub bytes: u64,
    /// Forwards over links.
    pub forwarded: u64,
    /// An in-process subscriber refused the message and its reply was answered with a
    /// 503 already (the publisher must not add a no-responders answer of its own).
    pub answered: bool,
}

/// Where a message came from.
pub struct Origin<'a> {
    pub cid: u64,
    pub echo: bool,
    pub class: LinkClass,
    /// `None`: serve every queue group (a client's publish). `Some(list)`: serve only
    /// these groups (a link forwarded the message for them).
    pub queues: Option<&'a [Bytes]>,
    /// The server a link message came from: it is never sent back there.
    pub peer: Option<&'a str>,
    /// The publishing connection, when there is one (in-process subscribers see its user).
    pub conn: Option<&'a ConnShared>,
    /// A copy the import agent made in the importing account. Every server imports for
    /// its own subscribers, so the copy goes only to local clients and to leaf servers
    /// below us that do not import for themselves ([`ConnShared::peer_imports`]): never
    /// over routes or up to a hub (see `services/imports.rs`).
    pub imported: bool,
}

impl<'a> Origin<'a> {
    /// A message published from inside the server.
    pub fn internal(cid: u64) -> Origin<'a> {
        Origin {
            cid,
            echo: true,
            class: LinkClass::Client,
            queues: None,
            peer: None,
            conn: None,
            imported: false,
        }
    }
}

/// A link that gets one copy of the message, with the queue groups it must serve.
pub struct LinkTarget {
    conn: Arc<ConnShared>,
    queues: Vec<Arc<str>>,
}

/// Reusable scratch space for [`deliver`] (one per reader).
#[derive(Default)]
pub struct Scratch {
    links: Vec<LinkTarget>,
    /// Links held by a spool replay: the message went into the spool instead.
    held: Vec<u64>,
}

#[inline]
fn link_may_receive(conn: &ConnShared, origin: &Origin<'_>, subject: &[u8]) -> bool {
    if conn.cid == origin.cid {
        return false;
    }
    if let (Some(from), Some(to)) = (origin.peer, conn.peer_id.get()) {
        if from == to.as_ref() {
            return false;
        }
    }
    let dst = LinkClass::from_u8(conn.link_class.load(Ordering::Relaxed));
    if !msg_allowed(origin.class, dst) {
        return false;
    }
    if origin.imported && (dst != LinkClass::Downlink || conn.peer_imports.load(Ordering::Relaxed))
    {
        return false;
    }
    let s = || std::str::from_utf8(subject).unwrap_or("");
    // A remapped link carries a subject under its translated name, or not at all; its
    // deny rules are written in the names on the wire (the hub's).
    let mapped = match conn.remap.get() {
        None => None,
        Some(r) => match r.subject(s(), Dir::ToHub) {
            None => return false,
            Some(m) => Some(m),
        },
    };
    match conn.deny_send.get() {
        Some(deny) if !deny.is_empty() => {
            let s = mapped.as_deref().unwrap_or_else(s);
            !deny.iter().any(|d| canopy_subject::subject_matches(d, s))
        }
        _ => true,
    }
}

/// A message's subject and reply as they cross a remapped link (`None`: not carried).
#[cold]
fn remapped<'a>(
    r: &Remap,
    subject: &'a [u8],
    reply: Option<&'a [u8]>,
) -> Option<(Cow<'a, str>, Option<Cow<'a, str>>)> {
    let s = r.subject(std::str::from_utf8(subject).ok()?, Dir::ToHub)?;
    let rep = match reply {
        Some(rep) => Some(r.subject(std::str::from_utf8(rep).ok()?, Dir::ToHub)?),
        None => None,
    };
    Some((s, rep))
}

/// Adds a link to the message's targets. One copy per *server*: two connections to the
/// same peer (servers that solicit each other) share one target.
fn add_target(scratch: &mut Scratch, conn: &Arc<ConnShared>, queue: Option<&Arc<str>>) {
    let peer = conn.peer_id.get();
    let t = match scratch.links.iter_mut().position(|t| {
        Arc::ptr_eq(&t.conn, conn) || (peer.is_some() && t.conn.peer_id.get() == peer)
    }) {
        Some(i) => &mut scratch.links[i],
        None => {
            scratch.links.push(LinkTarget {
                conn: conn.clone(),
                queues: Vec::new(),
            });
            let n = scratch.links.len() - 1;
            &mut scratch.links[n]
        }
    };
    if let Some(q) = queue {
        if !t.queues.iter().any(|x| x == q) {
            t.queues.push(q.clone());
        }
    }
}

/// Delivers to every plain subscription and one member of each queue group, and
/// forwards once per interested link.
pub fn deliver(
    acc: &Account,
    result: &MatchResult<SubRef>,
    msg: &Msg<'_>,
    origin: &Origin<'_>,
    scratch: &mut Scratch,
    flush: &mut FlushList,
) -> Delivered {
    let mut d = Delivered::default();
    // Links filter (deny rules) on what crosses them: a JetStream delivery crosses as its
    // deliver subject, not as the stream message's own subject.
    let wire_subject = msg.link.as_ref().map_or(msg.subject, |l| l.subject);
    for sub in &result.psubs {
        match sub.conn.kind {
            ConnKind::Client => {
                if !origin.echo && sub.conn.cid == origin.cid {
                    continue;
                }
                deliver_one(acc, sub, msg, origin, flush, &mut d);
            }
            _ => {
                if link_may_receive(&sub.conn, origin, wire_subject) {
                    add_target(scratch, &sub.conn, None);
                }
            }
        }
    }
    for group in &result.qsubs {
        if let Some(wanted) = origin.queues {
            if !wanted.iter().any(|q| q.as_ref() == group.name.as_bytes()) {
                continue;
            }
        }
        let n = group.members.len();
        if n == 0 {
            continue;
        }
        let start = if n == 1 {
            0
        } else {
            rand::thread_rng().gen_range(0..n)
        };
        // Local members first (nats-server prefers them), then one link.
        let mut done = false;
        for i in 0..n {
            let sub = &group.members[(start + i) % n];
            if sub.conn.kind != ConnKind::Client
                || sub.conn.is_closed()
                || (!origin.echo && sub.conn.cid == origin.cid)
            {
                continue;
            }
            if deliver_one(acc, sub, msg, origin, flush, &mut d) {
                done = true;
                break;
            }
        }
        if done {
            continue;
        }
        for i in 0..n {
            let sub = &group.members[(start + i) % n];
            if sub.conn.kind != ConnKind::Client
                && !sub.conn.is_closed()
                && link_may_receive(&sub.conn, origin, wire_subject)
            {
                add_target(scratch, &sub.conn, Some(&group.name));
                break;
            }
        }
    }
    let (link_subject, link_reply) = match &msg.link {
        Some(l) => (l.subject, l.reply),
        None => (msg.subject, msg.reply),
    };
    if acc.spooling.load(Ordering::Relaxed) {
        // Store-and-forward: the only cost on this path when no remote spools is the load.
        hold_for_spools(acc, msg, origin, scratch);
    }
    for t in scratch.links.drain(..) {
        let queues = t.queues.iter().map(|q| q.as_bytes());
        let remapped = match t.conn.remap.get() {
            None => None,
            Some(r) => match remapped(r, link_subject, link_reply) {
                Some(m) => Some(m),
                None => continue,
            },
        };
        let (link_subject, link_reply) = match &remapped {
            None => (link_subject, link_reply),
            Some((s, r)) => (s.as_bytes(), r.as_deref().map(str::as_bytes)),
        };
        let ok = t.conn.enqueue(|b| match t.conn.kind {
            ConnKind::Route => canopy_proto::encode_rmsg(
                b,
                if t.conn.route_dedicated.load(Ordering::Relaxed) {
                    b""
                } else {
                    acc.name.as_bytes()
                },
                link_subject,
                link_reply,
                queues,
                msg.hdr_len,
                msg.payload,
            ),
            _ => canopy_proto::encode_lmsg(
                b,
                link_subject,
                link_reply,
                queues,
                msg.hdr_len,
                msg.payload,
            ),
        });
        if ok {
            t.conn.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
            t.conn
                .stats
                .out_bytes
                .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
            flush.add(&t.conn);
            d.msgs += 1;
            d.forwarded += 1;
            d.bytes += msg.payload.len() as u64;
        }
    }
    d
}

/// Offers the message to the account's spools (`server/spool.rs`) and leaves the links
/// held by a replay out of its targets: it went into their spool instead.
#[cold]
fn hold_for_spools(acc: &Account, msg: &Msg<'_>, origin: &Origin<'_>, scratch: &mut Scratch) {
    crate::server::spool::capture(acc, msg, origin, &mut scratch.held);
    if !scratch.held.is_empty() {
        let held = std::mem::take(&mut scratch.held);
        scratch.links.retain(|t| !held.contains(&t.conn.cid));
        scratch.held = held;
        scratch.held.clear();
    }
}

/// Encodes the message for one client subscription. Returns false if it was not
/// delivered (auto-unsubscribe limit reached, receiver closed).
#[inline]
pub fn deliver_one(
    acc: &Account,
    sub: &SubRef,
    msg: &Msg<'_>,
    origin: &Origin<'_>,
    flush: &mut FlushList,
    d: &mut Delivered,
) -> bool {
    if let Some(deny) = sub.conn.deny_send.get() {
        // The receiver's subscribe deny rules (set only when it has some).
        let s = std::str::from_utf8(msg.subject).unwrap_or("");
        if deny.iter().any(|x| canopy_subject::subject_matches(x, s)) {
            return false;
        }
    }
    let max = sub.max.load(Ordering::Relaxed);
    if max > 0 {
        let n = sub.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        if n > max {
            return false;
        }
        if n == max {
            acc.drop_subscription(sub);
        }
    }
    if let Some(sink) = &sub.sink {
        return offer_to_sink(acc, sink.as_ref().as_ref(), msg, origin, flush, d);
    }
    let conn = &sub.conn;
    let headers_ok = conn.headers.load(Ordering::Relaxed);
    let (hdr, body) = match msg.hdr_len {
        Some(h) if headers_ok => (Some(h), msg.payload),
        // The receiver did not negotiate headers: strip them.
        Some(h) => (None, msg.payload.get(h..).unwrap_or(&[])),
        None => (None, msg.payload),
    };
    let ok = conn.enqueue(|b| match hdr {
        Some(h) => canopy_proto::encode_hmsg(b, msg.subject, sub.sid(), msg.reply, h, body),
        None => canopy_proto::encode_msg(b, msg.subject, sub.sid(), msg.reply, body),
    });
    if ok {
        // As nats-server counts: the connection's `out_bytes` is what it was sent (headers
        // stripped for a receiver without them), the server's and the account's the
        // message as published.
        conn.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
        conn.stats
            .out_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        flush.add(conn);
        d.msgs += 1;
        d.bytes += msg.payload.len() as u64;
        if let Some(r) = msg.reply {
            if conn.allow_responses.get().is_some() {
                conn.grant_response(r);
            }
        }
    }
    ok
}

/// Hands a message to an in-process subscriber. A full queue refuses it: a request is
/// then answered at once with a `503` status (as nats-server answers an overloaded
/// JetStream API), so the requester does not wait for a timeout.
#[cold]
fn offer_to_sink(
    acc: &Account,
    sink: &dyn Sink,
    msg: &Msg<'_>,
    origin: &Origin<'_>,
    flush: &mut FlushList,
    d: &mut Delivered,
) -> bool {
    let from = origin_of(
        &acc.shared_name,
        origin.cid,
        origin.conn,
        origin.class,
        origin.peer,
    );
    let mut m = InMsg::from_parts(msg.subject, msg.reply, msg.hdr_len, msg.payload, from);
    if let Some(l) = &msg.link {
        m.deliver_to = Some(String::from_utf8_lossy(l.subject).into_owned());
    }
    match sink.offer(m) {
        Offer::Accepted => {
            d.msgs += 1;
            d.bytes += msg.payload.len() as u64;
            true
        }
        Offer::Full => {
            if let Some(reply) = msg.reply {
                d.answered = true;
                answer_status(
                    acc,
                    reply,
                    canopy_proto::headers::no_responders_block(),
                    flush,
                );
            }
            false
        }
    }
}

/// Publishes a status-only message (`NATS/1.0 <code>`) to `reply` in `acc`, wherever its
/// subscriber is (local, over a route or a leaf link).
pub fn answer_status(acc: &Account, reply: &[u8], block: &[u8], flush: &mut FlushList) {
    let Ok(reply_str) = std::str::from_utf8(reply) else {
        return;
    };
    let result = acc.sublist.matches(reply_str);
    let msg = Msg {
        subject: reply,
        reply: None,
        hdr_len: Some(block.len()),
        payload: block,
        link: None,
    };
    let mut scratch = Scratch::default();
    deliver(
        acc,
        &result,
        &msg,
        &Origin::internal(0),
        &mut scratch,
        flush,
    );
}

/// The no-responders status message (`NATS/1.0 503`) sent to a requester whose request
/// reached no subscriber: an HMSG on the reply subject, to the requester's own subscription.
pub fn no_responders(acc: &Account, reply: &[u8], requester_cid: u64, flush: &mut FlushList) {
    let Ok(reply_str) = std::str::from_utf8(reply) else {
        return;
    };
    let result = acc.sublist.matches(reply_str);
    let block = canopy_proto::headers::no_responders_block();
    let own = result
        .psubs
        .iter()
        .chain(result.qsubs.iter().flat_map(|g| g.members.iter()))
        .find(|s| s.conn.cid == requester_cid);
    if let Some(sub) = own {
        let conn: &Arc<_> = &sub.conn;
        if conn
            .enqueue(|b| canopy_proto::encode_hmsg(b, reply, sub.sid(), None, block.len(), block))
        {
            flush.add(conn);
        }
    }
}
