//! Delivery to in-process subscribers. A subscription may carry a [`Sink`] instead of a
//! socket: the delivery path hands it the message, parsed and with its origin, and the sink
//! decides what to do with it (queue it for a service's workers, complete a pending
//! request). A sink never blocks the delivering reader: it accepts or refuses at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::core::conn::ConnShared;
use crate::core::interest::LinkClass;

/// How a message reached this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Published by a client connected here.
    Client,
    /// Forwarded by a route peer.
    Route,
    /// Forwarded by a leaf link (either direction).
    Leaf,
    /// Published from inside the server (a service, the import agent).
    Internal,
}

impl Via {
    /// The way a message arrived from a connection of this link class.
    pub fn of(class: LinkClass, internal: bool) -> Via {
        match class {
            _ if internal => Via::Internal,
            LinkClass::Client => Via::Client,
            LinkClass::Route => Via::Route,
            LinkClass::Downlink | LinkClass::Uplink | LinkClass::Mesh => Via::Leaf,
        }
    }
}

/// Where a message delivered to a sink came from.
#[derive(Clone, Debug)]
pub struct MsgOrigin {
    /// The account the message was published in (the subscription's account).
    pub account: Arc<str>,
    /// The publishing connection (0 for the server itself).
    pub cid: u64,
    /// The publishing connection's user (empty for links and internal publishers).
    pub user: String,
    /// The server a link message came from (its id), `None` when published here.
    pub server: Option<Arc<str>>,
    pub via: Via,
    /// The server it came from does account imports for itself: a route peer (cluster
    /// members share one configuration), our hub or mesh peer, or a leaf whose CONNECT
    /// said so. The import agent leaves such a message's service imports to that server.
    pub peer_imports: bool,
}

/// A message handed to an in-process subscriber.
#[derive(Clone, Debug)]
pub struct InMsg {
    pub subject: String,
    pub reply: Option<String>,
    /// The header block (`NATS/1.0…\r\n\r\n`), when the message has one.
    pub headers: Option<Bytes>,
    pub payload: Bytes,
    pub origin: MsgOrigin,
    /// The subject the message was routed by when receivers see another one: a JetStream
    /// delivery is routed by its deliver subject and seen with the stream message's own.
    pub deliver_to: Option<String>,
}

impl InMsg {
    /// Builds the owned message from the wire parts (one copy of subject and payload).
    pub fn from_parts(
        subject: &[u8],
        reply: Option<&[u8]>,
        hdr_len: Option<usize>,
        payload: &[u8],
        origin: MsgOrigin,
    ) -> InMsg {
        let (headers, body) = match hdr_len {
            Some(h) if h <= payload.len() => {
                let (hd, b) = payload.split_at(h);
                (Some(Bytes::copy_from_slice(hd)), b)
            }
            _ => (None, payload),
        };
        InMsg {
            subject: owned_text(subject),
            reply: reply.map(owned_text),
            headers,
            payload: Bytes::copy_from_slice(body),
            origin,
            deliver_to: None,
        }
    }

    /// The value of a header, if the message has it (first occurrence, case-sensitive
    /// name as nats-server matches it).
    pub fn header(&self, name: &str) -> Option<&str> {
        let block = std::str::from_utf8(self.headers.as_deref()?).ok()?;
        block.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == name).then(|| v.trim())
        })
    }
}

/// What a sink did with an offered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Accepted,
    /// The sink's queue is full: the message was not taken (the sink counted it).
    Full,
}

/// An in-process receiver of messages. `offer` runs on the delivering reader: it must
/// not block or do more than constant work.
pub trait Sink: Send + Sync {
    fn offer(&self, msg: InMsg) -> Offer;
}

/// `b` as an owned string; invalid UTF-8 replaced (subjects from clients were checked
/// already, so the lossy path is the rare one).
fn owned_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Builds the origin of a message delivered in `account` from what the delivery path
/// knows of its publisher.
pub fn origin_of(
    account: &Arc<str>,
    cid: u64,
    conn: Option<&ConnShared>,
    class: LinkClass,
    peer: Option<&str>,
) -> MsgOrigin {
    let user = match (class, conn) {
        (LinkClass::Client, Some(c)) => c.meta.lock().user.clone(),
        _ => String::new(),
    };
    MsgOrigin {
        account: account.clone(),
        cid,
        user,
        server: peer.map(Arc::from),
        peer_imports: match class {
            LinkClass::Client => false,
            LinkClass::Downlink => conn.is_some_and(|c| c.peer_imports.load(Ordering::Relaxed)),
            LinkClass::Route | LinkClass::Uplink | LinkClass::Mesh => true,
        },
        via: Via::of(
            class,
            cid == 0 || conn.is_none() && class == LinkClass::Client,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> MsgOrigin {
        origin_of(&Arc::from("A"), 0, None, LinkClass::Client, None)
    }

    #[test]
    fn headers_are_split_from_the_payload() {
        let block = b"NATS/1.0\r\nNats-Msg-Id: 7\r\n\r\n";
        let mut payload = block.to_vec();
        payload.extend_from_slice(b"body");
        let m = InMsg::from_parts(b"s", Some(b"r"), Some(block.len()), &payload, origin());
        assert_eq!(&m.payload[..], b"body");
        assert_eq!(m.header("Nats-Msg-Id"), Some("7"));
        assert_eq!(m.header("Other"), None);
        assert_eq!(m.reply.as_deref(), Some("r"));
        assert_eq!(m.origin.via, Via::Internal);
    }

    #[test]
    fn a_bad_header_length_keeps_the_whole_payload() {
        let m = InMsg::from_parts(b"s", None, Some(99), b"abc", origin());
        assert!(m.headers.is_none());
        assert_eq!(&m.payload[..], b"abc");
    }
}
