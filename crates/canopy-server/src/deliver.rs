//! Fan-out of one message to the subscriptions a Sublist lookup matched: encode straight
//! into each receiver's outbound buffer, pick one member per queue group, honour echo,
//! auto-unsubscribe limits and header stripping. No allocation per subscriber.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use canopy_subject::MatchResult;
use rand::Rng;

use crate::account::{Account, SubRef};
use crate::conn::FlushList;

/// One message on its way to subscribers.
pub struct Msg<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// Length of the header block at the start of `payload`, when there is one.
    pub hdr_len: Option<usize>,
    pub payload: &'a [u8],
}

/// Delivery counters for one message.
#[derive(Default, Clone, Copy)]
pub struct Delivered {
    pub msgs: u64,
    pub bytes: u64,
}

/// Publisher identity for echo suppression.
pub struct Origin {
    pub cid: u64,
    pub echo: bool,
}

/// Delivers to every plain subscription and one member of each queue group.
pub fn deliver(
    acc: &Account,
    result: &MatchResult<SubRef>,
    msg: &Msg<'_>,
    origin: &Origin,
    flush: &mut FlushList,
) -> Delivered {
    let mut d = Delivered::default();
    for sub in &result.psubs {
        if !origin.echo && sub.conn.cid == origin.cid {
            continue;
        }
        deliver_one(acc, sub, msg, flush, &mut d);
    }
    for group in &result.qsubs {
        let n = group.members.len();
        if n == 0 {
            continue;
        }
        let start = if n == 1 {
            0
        } else {
            rand::thread_rng().gen_range(0..n)
        };
        for i in 0..n {
            let sub = &group.members[(start + i) % n];
            if !origin.echo && sub.conn.cid == origin.cid {
                continue;
            }
            if sub.conn.is_closed() {
                continue;
            }
            if deliver_one(acc, sub, msg, flush, &mut d) {
                break;
            }
        }
    }
    d
}

/// Encodes the message for one subscription. Returns false if it was not delivered
/// (auto-unsubscribe limit reached, receiver closed).
#[inline]
pub fn deliver_one(
    acc: &Account,
    sub: &SubRef,
    msg: &Msg<'_>,
    flush: &mut FlushList,
    d: &mut Delivered,
) -> bool {
    let max = sub.max.load(Ordering::Relaxed);
    if max > 0 {
        let n = sub.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        if n > max {
            return false;
        }
        if n == max {
            acc.sublist.remove(sub.subject_str(), sub.queue_str(), sub);
            sub.conn.num_subs.fetch_sub(1, Ordering::Relaxed);
        }
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
        Some(h) => canopy_proto::encode_hmsg(b, msg.subject, &sub.sid, msg.reply, h, body),
        None => canopy_proto::encode_msg(b, msg.subject, &sub.sid, msg.reply, body),
    });
    if ok {
        conn.stats.out_msgs.fetch_add(1, Ordering::Relaxed);
        flush.add(conn);
        d.msgs += 1;
        d.bytes += body.len() as u64;
    }
    ok
}

/// The no-responders status message (`NATS/1.0 503`) sent to a requester whose request
/// reached no subscriber: an HMSG on the reply subject, to the requester's own subscription.
pub fn no_responders(acc: &Account, reply: &Bytes, requester_cid: u64, flush: &mut FlushList) {
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
        if conn.enqueue(|b| canopy_proto::encode_hmsg(b, reply, &sub.sid, None, block.len(), block))
        {
            flush.add(conn);
        }
    }
}
