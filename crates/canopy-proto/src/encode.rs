//! Encoders: append one protocol op to a `BytesMut` (an outbound buffer), with no
//! intermediate allocation. Integers are formatted on the stack with `itoa`.
//!
//! Layouts match what nats-server writes (`client.go` `msgHeader` and
//! `msgHeaderForRouteOrLeaf`, `route.go`/`leafnode.go` sub protocols):
//! - queue routing on RMSG/LMSG: `+ reply q1 q2` with a reply, `| q1 q2` without;
//! - the leaf-origin route `LMSG` always carries a header length, `0` when there are no
//!   headers;
//! - `-ERR` text is always single-quoted.
//!
//! Callers pass subjects, sids and queue names that are valid tokens (no whitespace);
//! the encoders do not validate them.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::types::ServerInfo;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";
pub const OK: &[u8] = b"+OK\r\n";
pub const CRLF: &[u8] = b"\r\n";

#[inline]
fn put_usize(buf: &mut BytesMut, n: usize) {
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(n).as_bytes());
}

#[inline]
fn put_tok(buf: &mut BytesMut, t: &[u8]) {
    buf.extend_from_slice(t);
    buf.put_u8(b' ');
}

/// The account token of a route op; none on a route dedicated to one account (empty
/// `account`, nats-server 2.10 `route_account`).
fn put_account(buf: &mut BytesMut, account: &[u8]) {
    if !account.is_empty() {
        put_tok(buf, account);
    }
}

/// `[reply | + reply q.. | | q..] ` — the optional reply/queue part of RMSG/LMSG,
/// including the trailing space.
fn put_reply_queues<I, T>(buf: &mut BytesMut, reply: Option<&[u8]>, queues: I)
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut queues = queues.into_iter().peekable();
    if queues.peek().is_some() {
        match reply {
            Some(r) => {
                buf.extend_from_slice(b"+ ");
                put_tok(buf, r);
            }
            None => buf.extend_from_slice(b"| "),
        }
        for q in queues {
            put_tok(buf, q.as_ref());
        }
    } else if let Some(r) = reply {
        put_tok(buf, r);
    }
}

/// `[hdr ]size\r\n<payload>\r\n`.
fn put_sizes_payload(buf: &mut BytesMut, header_len: Option<usize>, payload: &[u8]) {
    buf.reserve(payload.len() + 24);
    if let Some(h) = header_len {
        put_usize(buf, h);
        buf.put_u8(b' ');
    }
    put_usize(buf, payload.len());
    buf.extend_from_slice(CRLF);
    buf.extend_from_slice(payload);
    buf.extend_from_slice(CRLF);
}

/// `MSG subject sid [reply] size\r\n<payload>\r\n`.
pub fn encode_msg(
    buf: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    payload: &[u8],
) {
    buf.extend_from_slice(b"MSG ");
    put_tok(buf, subject);
    put_tok(buf, sid);
    if let Some(r) = reply {
        put_tok(buf, r);
    }
    put_sizes_payload(buf, None, payload);
}

/// `HMSG subject sid [reply] header_len total\r\n<headers+body>\r\n`; `payload` is the
/// whole block (headers then body) and `header_len <= payload.len()`.
pub fn encode_hmsg(
    buf: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    header_len: usize,
    payload: &[u8],
) {
    buf.extend_from_slice(b"HMSG ");
    put_tok(buf, subject);
    put_tok(buf, sid);
    if let Some(r) = reply {
        put_tok(buf, r);
    }
    put_sizes_payload(buf, Some(header_len), payload);
}

/// On a leaf link: `LMSG subject [..] size` without headers, or
/// `HMSG subject [..] header_len size` with them (no account token on leaf links).
pub fn encode_lmsg<I, T>(
    buf: &mut BytesMut,
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: I,
    header_len: Option<usize>,
    payload: &[u8],
) where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    buf.extend_from_slice(if header_len.is_some() {
        b"HMSG "
    } else {
        b"LMSG "
    });
    put_tok(buf, subject);
    put_reply_queues(buf, reply, queues);
    put_sizes_payload(buf, header_len, payload);
}

/// On a route: `RMSG account subject [..] size`, or `HMSG account subject [..] hdr size`
/// with headers (no account token when `account` is empty: a per-account route).
pub fn encode_rmsg<I, T>(
    buf: &mut BytesMut,
    account: &[u8],
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: I,
    header_len: Option<usize>,
    payload: &[u8],
) where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    buf.extend_from_slice(if header_len.is_some() {
        b"HMSG "
    } else {
        b"RMSG "
    });
    put_account(buf, account);
    put_tok(buf, subject);
    put_reply_queues(buf, reply, queues);
    put_sizes_payload(buf, header_len, payload);
}

/// On a route, for a message that came from a leaf of cluster `origin` (peer set
/// `lnoc`): `LMSG origin account subject [..] header_len size`, header length always
/// present (`0` without headers).
#[allow(clippy::too_many_arguments)]
pub fn encode_route_lmsg<I, T>(
    buf: &mut BytesMut,
    origin: &[u8],
    account: &[u8],
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: I,
    header_len: Option<usize>,
    payload: &[u8],
) where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    buf.extend_from_slice(b"LMSG ");
    put_tok(buf, origin);
    put_account(buf, account);
    put_tok(buf, subject);
    put_reply_queues(buf, reply, queues);
    put_sizes_payload(buf, Some(header_len.unwrap_or(0)), payload);
}

fn put_queue_weight(buf: &mut BytesMut, queue: Option<(&[u8], u32)>) {
    if let Some((q, w)) = queue {
        buf.put_u8(b' ');
        buf.extend_from_slice(q);
        buf.put_u8(b' ');
        let mut b = itoa::Buffer::new();
        buf.extend_from_slice(b.format(w).as_bytes());
    }
}

fn put_queue(buf: &mut BytesMut, queue: Option<&[u8]>) {
    if let Some(q) = queue {
        buf.put_u8(b' ');
        buf.extend_from_slice(q);
    }
}

/// Leaf link: `LS+ subject [queue weight]`.
pub fn encode_ls_plus(buf: &mut BytesMut, subject: &[u8], queue: Option<(&[u8], u32)>) {
    buf.extend_from_slice(b"LS+ ");
    buf.extend_from_slice(subject);
    put_queue_weight(buf, queue);
    buf.extend_from_slice(CRLF);
}

/// Leaf link: `LS- subject [queue]`.
pub fn encode_ls_minus(buf: &mut BytesMut, subject: &[u8], queue: Option<&[u8]>) {
    buf.extend_from_slice(b"LS- ");
    buf.extend_from_slice(subject);
    put_queue(buf, queue);
    buf.extend_from_slice(CRLF);
}

/// Route: `RS+ account subject [queue weight]`.
pub fn encode_rs_plus(
    buf: &mut BytesMut,
    account: &[u8],
    subject: &[u8],
    queue: Option<(&[u8], u32)>,
) {
    buf.extend_from_slice(b"RS+ ");
    put_account(buf, account);
    buf.extend_from_slice(subject);
    put_queue_weight(buf, queue);
    buf.extend_from_slice(CRLF);
}

/// Route: `RS- account subject [queue]`.
pub fn encode_rs_minus(buf: &mut BytesMut, account: &[u8], subject: &[u8], queue: Option<&[u8]>) {
    buf.extend_from_slice(b"RS- ");
    put_account(buf, account);
    buf.extend_from_slice(subject);
    put_queue(buf, queue);
    buf.extend_from_slice(CRLF);
}

/// Route, leaf interest (peer set `lnoc`): `LS+ origin account subject [queue weight]`.
pub fn encode_route_ls_plus(
    buf: &mut BytesMut,
    origin: &[u8],
    account: &[u8],
    subject: &[u8],
    queue: Option<(&[u8], u32)>,
) {
    buf.extend_from_slice(b"LS+ ");
    put_tok(buf, origin);
    put_account(buf, account);
    buf.extend_from_slice(subject);
    put_queue_weight(buf, queue);
    buf.extend_from_slice(CRLF);
}

/// Route, leaf interest removed: `LS- [origin] account subject [queue]`. Pass the origin
/// only to peers that advertised `lnocu`.
pub fn encode_route_ls_minus(
    buf: &mut BytesMut,
    origin: Option<&[u8]>,
    account: &[u8],
    subject: &[u8],
    queue: Option<&[u8]>,
) {
    buf.extend_from_slice(b"LS- ");
    if let Some(o) = origin {
        put_tok(buf, o);
    }
    put_account(buf, account);
    buf.extend_from_slice(subject);
    put_queue(buf, queue);
    buf.extend_from_slice(CRLF);
}

/// Client: `PUB subject [reply] size\r\n<payload>\r\n`.
pub fn encode_pub(buf: &mut BytesMut, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    buf.extend_from_slice(b"PUB ");
    put_tok(buf, subject);
    if let Some(r) = reply {
        put_tok(buf, r);
    }
    put_sizes_payload(buf, None, payload);
}

/// Client: `HPUB subject [reply] header_len total\r\n<headers+body>\r\n`.
pub fn encode_hpub(
    buf: &mut BytesMut,
    subject: &[u8],
    reply: Option<&[u8]>,
    header_len: usize,
    payload: &[u8],
) {
    buf.extend_from_slice(b"HPUB ");
    put_tok(buf, subject);
    if let Some(r) = reply {
        put_tok(buf, r);
    }
    put_sizes_payload(buf, Some(header_len), payload);
}

/// Client: `SUB subject [queue] sid`.
pub fn encode_sub(buf: &mut BytesMut, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
    buf.extend_from_slice(b"SUB ");
    put_tok(buf, subject);
    if let Some(q) = queue {
        put_tok(buf, q);
    }
    buf.extend_from_slice(sid);
    buf.extend_from_slice(CRLF);
}

/// Client: `UNSUB sid [max]`.
pub fn encode_unsub(buf: &mut BytesMut, sid: &[u8], max: Option<u64>) {
    buf.extend_from_slice(b"UNSUB ");
    buf.extend_from_slice(sid);
    if let Some(m) = max {
        buf.put_u8(b' ');
        let mut b = itoa::Buffer::new();
        buf.extend_from_slice(b.format(m).as_bytes());
    }
    buf.extend_from_slice(CRLF);
}

/// `-ERR 'text'\r\n`.
pub fn encode_err(buf: &mut BytesMut, text: &str) {
    buf.extend_from_slice(b"-ERR '");
    buf.extend_from_slice(text.as_bytes());
    buf.extend_from_slice(b"'\r\n");
}

/// `<verb> <json>\r\n`. Serializing the crate's own types cannot fail; should a
/// caller's `Serialize` impl fail, `{}` is written instead so the frame stays valid.
pub fn encode_json_op<T: Serialize + ?Sized>(buf: &mut BytesMut, verb: &str, value: &T) {
    buf.extend_from_slice(verb.as_bytes());
    buf.put_u8(b' ');
    let mark = buf.len();
    if serde_json::to_writer((&mut *buf).writer(), value).is_err() {
        buf.truncate(mark);
        buf.extend_from_slice(b"{}");
    }
    buf.extend_from_slice(CRLF);
}

/// `INFO {json}\r\n`.
pub fn encode_info(buf: &mut BytesMut, info: &ServerInfo) {
    encode_json_op(buf, "INFO", info);
}

/// `CONNECT {json}\r\n` for any of [`crate::ClientConnect`], [`crate::LeafConnect`],
/// [`crate::RouteConnect`].
pub fn encode_connect<T: Serialize + ?Sized>(buf: &mut BytesMut, connect: &T) {
    encode_json_op(buf, "CONNECT", connect);
}
