//! The decoded protocol operations ([`Op`]) and the connection roles ([`Role`]) that
//! decide which verbs are legal and how `HMSG`/`LMSG`/`LS+`/`LS-` are laid out.
//!
//! Every byte field of an owned `Op` is a zero-copy [`Bytes`] slice of the frame split
//! off the read buffer, so holding it keeps that frame's memory alive (and nothing
//! else). [`OpRef`] borrows the read buffer instead and costs no reference counting.

use bytes::Bytes;

/// Who is parsing, i.e. which peer sent the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A server parsing what a client sends: CONNECT PUB HPUB SUB UNSUB PING PONG,
    /// plus INFO/+OK/-ERR which nats-server also accepts from clients.
    Client,
    /// A server parsing a route peer: RS+ RS- RMSG HMSG(acc) LS+/LS-/LMSG (with origin
    /// cluster), INFO CONNECT PING PONG +OK -ERR.
    Route,
    /// A server parsing a leafnode peer: LS+ LS- LMSG HMSG (no account), INFO CONNECT
    /// PING PONG +OK -ERR.
    Leaf,
    /// A client parsing what a server sends: INFO MSG HMSG +OK -ERR PING PONG.
    ClientSide,
}

/// One decoded protocol operation. `B` is [`Bytes`] for owned ops ([`crate::Parser::next`])
/// and `&[u8]` for borrowed ones ([`OpRef`], [`crate::Parser::next_ref`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<B = Bytes> {
    /// `INFO <json>`; the raw JSON (deserialize with `serde_json` into
    /// [`crate::ServerInfo`]).
    Info(B),
    /// `CONNECT <json>`; the raw JSON ([`crate::ClientConnect`], [`crate::LeafConnect`]
    /// or [`crate::RouteConnect`] depending on the role).
    Connect(B),
    /// `PUB subject [reply] size`.
    Pub {
        subject: B,
        reply: Option<B>,
        payload: B,
    },
    /// `HPUB subject [reply] header_len total_len`; `payload` is headers + body.
    HPub {
        subject: B,
        reply: Option<B>,
        header_len: usize,
        payload: B,
    },
    /// `SUB subject [queue] sid`.
    Sub {
        subject: B,
        queue: Option<B>,
        sid: B,
    },
    /// `UNSUB sid [max]`. A `max` that is not a number is ignored (`None`), as
    /// nats-server does.
    Unsub {
        sid: B,
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR 'text'`: the text with one pair of surrounding single quotes removed.
    Err(B),
    /// `MSG subject sid [reply] size` / `HMSG subject sid [reply] hdr total` as a client
    /// sees them (`header_len` is `Some` for HMSG).
    Msg {
        subject: B,
        sid: B,
        reply: Option<B>,
        header_len: Option<usize>,
        payload: B,
    },
    /// `RS+ account subject [queue weight]` on a route. `weight` is `Some` exactly when
    /// `queue` is.
    RSub {
        account: B,
        subject: B,
        queue: Option<B>,
        weight: Option<u32>,
    },
    /// `RS- account subject [queue]` on a route.
    RUnsub {
        account: B,
        subject: B,
        queue: Option<B>,
    },
    /// `RMSG account subject [reply | + reply q.. | | q..] size` (`header_len: None`),
    /// `HMSG account subject [...] hdr size` (`Some`), or, with `origin: Some`, the
    /// leaf-origin `LMSG origin account subject [...] hdr size`. LMSG always carries a
    /// header length on the wire; `0` is decoded as `None`.
    RMsg {
        origin: Option<B>,
        account: B,
        subject: B,
        reply: Option<B>,
        queues: Vec<B>,
        header_len: Option<usize>,
        payload: B,
    },
    /// `LS+ origin account subject [queue weight]` on a route (leaf interest, sent to
    /// peers that set `lnoc`).
    RLSub {
        origin: B,
        account: B,
        subject: B,
        queue: Option<B>,
        weight: Option<u32>,
    },
    /// `LS- [origin] account subject [queue]` on a route; the origin is present only
    /// when the peer negotiated `lnocu` (see [`crate::Parser::set_route_lnocu`]).
    RLUnsub {
        origin: Option<B>,
        account: B,
        subject: B,
        queue: Option<B>,
    },
    /// `LS+ subject [queue weight]` on a leaf link.
    LSub {
        subject: B,
        queue: Option<B>,
        weight: Option<u32>,
    },
    /// `LS- subject [queue]` on a leaf link.
    LUnsub {
        subject: B,
        queue: Option<B>,
    },
    /// `LMSG subject [reply | + reply q.. | | q..] size` (`header_len: None`) or
    /// `HMSG subject [...] hdr size` (`Some`) on a leaf link.
    LMsg {
        subject: B,
        reply: Option<B>,
        queues: Vec<B>,
        header_len: Option<usize>,
        payload: B,
    },
}

/// A borrowed op from [`crate::Parser::next_ref`]: slices of the read buffer, no
/// reference counting. Valid until the caller advances the buffer.
pub type OpRef<'a> = Op<&'a [u8]>;

impl<B> Op<B> {
    /// Convert every byte field, e.g. `op_ref.map(Bytes::copy_from_slice)` to keep a
    /// borrowed op beyond the read buffer's next advance.
    pub fn map<C>(self, mut f: impl FnMut(B) -> C) -> Op<C> {
        match self {
            Op::Info(j) => Op::Info(f(j)),
            Op::Connect(j) => Op::Connect(f(j)),
            Op::Pub {
                subject,
                reply,
                payload,
            } => Op::Pub {
                subject: f(subject),
                reply: reply.map(&mut f),
                payload: f(payload),
            },
            Op::HPub {
                subject,
                reply,
                header_len,
                payload,
            } => Op::HPub {
                subject: f(subject),
                reply: reply.map(&mut f),
                header_len,
                payload: f(payload),
            },
            Op::Sub {
                subject,
                queue,
                sid,
            } => Op::Sub {
                subject: f(subject),
                queue: queue.map(&mut f),
                sid: f(sid),
            },
            Op::Unsub { sid, max } => Op::Unsub { sid: f(sid), max },
            Op::Ping => Op::Ping,
            Op::Pong => Op::Pong,
            Op::Ok => Op::Ok,
            Op::Err(t) => Op::Err(f(t)),
            Op::Msg {
                subject,
                sid,
                reply,
                header_len,
                payload,
            } => Op::Msg {
                subject: f(subject),
                sid: f(sid),
                reply: reply.map(&mut f),
                header_len,
                payload: f(payload),
            },
            Op::RSub {
                account,
                subject,
                queue,
                weight,
            } => Op::RSub {
                account: f(account),
                subject: f(subject),
                queue: queue.map(&mut f),
                weight,
            },
            Op::RUnsub {
                account,
                subject,
                queue,
            } => Op::RUnsub {
                account: f(account),
                subject: f(subject),
                queue: queue.map(&mut f),
            },
            Op::RMsg {
                origin,
                account,
                subject,
                reply,
                queues,
                header_len,
                payload,
            } => Op::RMsg {
                origin: origin.map(&mut f),
                account: f(account),
                subject: f(subject),
                reply: reply.map(&mut f),
                queues: queues.into_iter().map(&mut f).collect(),
                header_len,
                payload: f(payload),
            },
            Op::RLSub {
                origin,
                account,
                subject,
                queue,
                weight,
            } => Op::RLSub {
                origin: f(origin),
                account: f(account),
                subject: f(subject),
                queue: queue.map(&mut f),
                weight,
            },
            Op::RLUnsub {
                origin,
                account,
                subject,
                queue,
            } => Op::RLUnsub {
                origin: origin.map(&mut f),
                account: f(account),
                subject: f(subject),
                queue: queue.map(&mut f),
            },
            Op::LSub {
                subject,
                queue,
                weight,
            } => Op::LSub {
                subject: f(subject),
                queue: queue.map(&mut f),
                weight,
            },
            Op::LUnsub { subject, queue } => Op::LUnsub {
                subject: f(subject),
                queue: queue.map(&mut f),
            },
            Op::LMsg {
                subject,
                reply,
                queues,
                header_len,
                payload,
            } => Op::LMsg {
                subject: f(subject),
                reply: reply.map(&mut f),
                queues: queues.into_iter().map(&mut f).collect(),
                header_len,
                payload: f(payload),
            },
        }
    }

    /// The verb as nats-server traces it (`"PUB"`, `"RS+"`, …), for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Info(_) => "INFO",
            Op::Connect(_) => "CONNECT",
            Op::Pub { .. } => "PUB",
            Op::HPub { .. } => "HPUB",
            Op::Sub { .. } => "SUB",
            Op::Unsub { .. } => "UNSUB",
            Op::Ping => "PING",
            Op::Pong => "PONG",
            Op::Ok => "+OK",
            Op::Err(_) => "-ERR",
            Op::Msg {
                header_len: None, ..
            } => "MSG",
            Op::Msg { .. } => "HMSG",
            Op::RSub { .. } => "RS+",
            Op::RUnsub { .. } => "RS-",
            Op::RMsg {
                origin: Some(_), ..
            } => "LMSG",
            Op::RMsg {
                header_len: None, ..
            } => "RMSG",
            Op::RMsg { .. } => "HMSG",
            Op::RLSub { .. } | Op::LSub { .. } => "LS+",
            Op::RLUnsub { .. } | Op::LUnsub { .. } => "LS-",
            Op::LMsg {
                header_len: None, ..
            } => "LMSG",
            Op::LMsg { .. } => "HMSG",
        }
    }
}
