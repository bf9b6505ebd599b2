//! The binary encoding of a replicated stream's Raft entries, their answers and its
//! snapshots. Little-endian integers; byte strings and texts are a `u32` length and the
//! bytes. Every count read from an entry is checked against the bytes left, so a corrupt or
//! hostile entry cannot make the decoder allocate more than the entry's own size.
//!
//! An entry is `version u8 | origin u64 | epoch u64 | ops u32 | op…`; `origin` and `epoch`
//! name the leadership that proposed it (its consumer updates are already applied on that
//! leader). Each op is a tag byte and its fields:
//!
//! | tag | op | fields |
//! |---|---|---|
//! | 0 | noop (a new leader's first entry) | — |
//! | 1 | messages | `n u32`, then per message `seq u64, ts i64, flags u8 (1 ttl, 2 rollup sub, 4 rollup all), [ttl i64], subject, hdr, payload` |
//! | 2 | delete message | `seq u64` |
//! | 3 | purge | `filter (empty: none), flags u8 (1 seq, 2 keep), [seq u64], [keep u64], bound u64` |
//! | 4 | consumer create/update | `name, created i64, config (JSON)` |
//! | 5 | consumer delete | `name` |
//! | 6 | consumer updates | `name, n u32`, then `0 dseq sseq dc ts` delivered, `1 dseq sseq` acked, `2 state` replaced (canopy-store's encoding) |
//! | 7 | stream config | `config (JSON)` |

use canopy_store::ConsumerState;

/// The entry format's version.
const VERSION: u8 = 1;

/// A message as the leader stored it: its sequence, timestamp and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RMsg {
    pub seq: u64,
    pub ts: i64,
    pub ttl: Option<i64>,
    /// `Nats-Rollup`: `Some(true)` all, `Some(false)` the subject.
    pub rollup: Option<bool>,
    pub subject: String,
    pub hdr: Vec<u8>,
    pub payload: Vec<u8>,
}

/// One change to a consumer's state, as the leader made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum COp {
    Delivered {
        dseq: u64,
        sseq: u64,
        dc: u64,
        ts: i64,
    },
    Acked {
        dseq: u64,
        sseq: u64,
    },
    Set(ConsumerState),
}

/// One operation of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Noop,
    Msgs(Vec<RMsg>),
    DeleteMsg {
        seq: u64,
    },
    /// A purge; `bound` is the last sequence the leader had assigned when it was asked:
    /// applying the purge again (after a crash) never removes later messages.
    Purge {
        filter: Option<String>,
        seq: Option<u64>,
        keep: Option<u64>,
        bound: u64,
    },
    ConsumerUpsert {
        name: String,
        created: i64,
        config: Vec<u8>,
    },
    ConsumerDelete {
        name: String,
    },
    ConsumerOps {
        name: String,
        ops: Vec<COp>,
    },
    Config(Vec<u8>),
    /// The identity (`Nats-Stream-Identity`) the leader learned for one of the stream's
    /// origins (`source`: its `Spec::iname`). A mirror's messages do not carry it, so a
    /// member that leads later knows it this way and notices an origin recreated meanwhile.
    SourceIdent {
        source: String,
        ident: String,
    },
}

/// A Raft entry of a stream's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The proposing member's node id.
    pub origin: u64,
    /// The proposing leadership (random per leadership of `origin`).
    pub epoch: u64,
    pub ops: Vec<Op>,
}

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed replicated entry: {0}")]
pub(crate) struct Malformed(pub &'static str);

/// Appends little-endian fields.
#[derive(Default)]
pub(crate) struct W(pub Vec<u8>);

impl W {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn len(&mut self, n: usize) {
        self.u32(n as u32);
    }
}

/// Reads what [`W`] wrote.
pub(crate) struct R<'a> {
    b: &'a [u8],
}

impl<'a> R<'a> {
    pub fn new(b: &'a [u8]) -> R<'a> {
        R { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.b.len() < n {
            return Err(Malformed("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, Malformed> {
        Ok(self.u64()? as i64)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, Malformed> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_string)
            .map_err(|_| Malformed("text is not UTF-8"))
    }
    /// A count of items of at least `min` bytes each (bounded by what is left).
    pub fn count(&mut self, min: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min.max(1)) > self.b.len() {
            return Err(Malformed("count exceeds the entry"));
        }
        Ok(n)
    }
    pub fn done(&self) -> Result<(), Malformed> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

/// A message to encode, borrowed (the leader encodes its prepared batch directly).
pub(crate) struct MsgRef<'a> {
    pub seq: u64,
    pub ts: i64,
    pub ttl: Option<i64>,
    pub rollup: Option<bool>,
    pub subject: &'a str,
    pub hdr: &'a [u8],
    pub payload: &'a [u8],
}

/// Encodes one message.
pub(crate) fn put_msg(w: &mut W, m: &MsgRef<'_>) {
    w.u64(m.seq);
    w.i64(m.ts);
    let flags = u8::from(m.ttl.is_some())
        | match m.rollup {
            Some(false) => 2,
            Some(true) => 4,
            None => 0,
        };
    w.u8(flags);
    if let Some(t) = m.ttl {
        w.i64(t);
    }
    w.bytes(m.subject.as_bytes());
    w.bytes(m.hdr);
    w.bytes(m.payload);
}

/// Decodes one message.
pub(crate) fn get_msg(r: &mut R<'_>) -> Result<RMsg, Malformed> {
    let seq = r.u64()?;
    let ts = r.i64()?;
    let flags = r.u8()?;
    let ttl = if flags & 1 != 0 { Some(r.i64()?) } else { None };
    let rollup = match flags & 6 {
        0 => None,
        2 => Some(false),
        4 => Some(true),
        _ => return Err(Malformed("bad rollup flags")),
    };
    Ok(RMsg {
        seq,
        ts,
        ttl,
        rollup,
        subject: r.string()?,
        hdr: r.bytes()?.to_vec(),
        payload: r.bytes()?.to_vec(),
    })
}

/// Starts an entry of `ops` operations.
pub(crate) fn begin(origin: u64, epoch: u64, ops: usize) -> W {
    let mut w = W::default();
    w.u8(VERSION);
    w.u64(origin);
    w.u64(epoch);
    w.len(ops);
    w
}

/// Encodes one operation.
pub(crate) fn put_op(w: &mut W, op: &Op) {
    match op {
        Op::Noop => w.u8(0),
        Op::Msgs(msgs) => {
            w.u8(1);
            w.len(msgs.len());
            for m in msgs {
                put_msg(
                    w,
                    &MsgRef {
                        seq: m.seq,
                        ts: m.ts,
                        ttl: m.ttl,
                        rollup: m.rollup,
                        subject: &m.subject,
                        hdr: &m.hdr,
                        payload: &m.payload,
                    },
                );
            }
        }
        Op::DeleteMsg { seq } => {
            w.u8(2);
            w.u64(*seq);
        }
        Op::Purge {
            filter,
            seq,
            keep,
            bound,
        } => {
            w.u8(3);
            w.bytes(filter.as_deref().unwrap_or("").as_bytes());
            w.u8(u8::from(seq.is_some()) | (u8::from(keep.is_some()) << 1));
            if let Some(s) = seq {
                w.u64(*s);
            }
            if let Some(k) = keep {
                w.u64(*k);
            }
            w.u64(*bound);
        }
        Op::ConsumerUpsert {
            name,
            created,
            config,
        } => {
            w.u8(4);
            w.bytes(name.as_bytes());
            w.i64(*created);
            w.bytes(config);
        }
        Op::ConsumerDelete { name } => {
            w.u8(5);
            w.bytes(name.as_bytes());
        }
        Op::ConsumerOps { name, ops } => {
            w.u8(6);
            w.bytes(name.as_bytes());
            put_cops(w, ops);
        }
        Op::Config(c) => {
            w.u8(7);
            w.bytes(c);
        }
        Op::SourceIdent { source, ident } => {
            w.u8(8);
            w.bytes(source.as_bytes());
            w.bytes(ident.as_bytes());
        }
    }
}

/// Encodes a consumer's update list (the body of op 6 after the name).
pub(crate) fn put_cops(w: &mut W, ops: &[COp]) {
    w.len(ops.len());
    for o in ops {
        match o {
            COp::Delivered { dseq, sseq, dc, ts } => {
                w.u8(0);
                w.u64(*dseq);
                w.u64(*sseq);
                w.u64(*dc);
                w.i64(*ts);
            }
            COp::Acked { dseq, sseq } => {
                w.u8(1);
                w.u64(*dseq);
                w.u64(*sseq);
            }
            COp::Set(st) => {
                w.u8(2);
                w.bytes(&st.encode());
            }
        }
    }
}

fn get_op(r: &mut R<'_>) -> Result<Op, Malformed> {
    Ok(match r.u8()? {
        0 => Op::Noop,
        1 => {
            let n = r.count(29)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(get_msg(r)?);
            }
            Op::Msgs(v)
        }
        2 => Op::DeleteMsg { seq: r.u64()? },
        3 => {
            let f = r.string()?;
            let flags = r.u8()?;
            let seq = if flags & 1 != 0 { Some(r.u64()?) } else { None };
            let keep = if flags & 2 != 0 { Some(r.u64()?) } else { None };
            Op::Purge {
                filter: (!f.is_empty()).then_some(f),
                seq,
                keep,
                bound: r.u64()?,
            }
        }
        4 => Op::ConsumerUpsert {
            name: r.string()?,
            created: r.i64()?,
            config: r.bytes()?.to_vec(),
        },
        5 => Op::ConsumerDelete { name: r.string()? },
        6 => {
            let name = r.string()?;
            let n = r.count(17)?;
            let mut ops = Vec::with_capacity(n);
            for _ in 0..n {
                ops.push(match r.u8()? {
                    0 => COp::Delivered {
                        dseq: r.u64()?,
                        sseq: r.u64()?,
                        dc: r.u64()?,
                        ts: r.i64()?,
                    },
                    1 => COp::Acked {
                        dseq: r.u64()?,
                        sseq: r.u64()?,
                    },
                    2 => COp::Set(
                        ConsumerState::decode(r.bytes()?)
                            .map_err(|_| Malformed("bad consumer state"))?,
                    ),
                    _ => return Err(Malformed("unknown consumer update")),
                });
            }
            Op::ConsumerOps { name, ops }
        }
        7 => Op::Config(r.bytes()?.to_vec()),
        8 => Op::SourceIdent {
            source: r.string()?,
            ident: r.string()?,
        },
        _ => return Err(Malformed("unknown op")),
    })
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = begin(self.origin, self.epoch, self.ops.len());
        for op in &self.ops {
            put_op(&mut w, op);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Entry, Malformed> {
        let mut r = R::new(b);
        if r.u8()? != VERSION {
            return Err(Malformed("unknown version"));
        }
        let origin = r.u64()?;
        let epoch = r.u64()?;
        let n = r.count(1)?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            ops.push(get_op(&mut r)?);
        }
        r.done()?;
        Ok(Entry { origin, epoch, ops })
    }
}

/// What applying an op answered: `Ok(bytes)` or an error text. An entry's answer is one
/// per op, in order.
pub(crate) type OpAnswer = Result<Vec<u8>, String>;

pub(crate) fn encode_answers(a: &[OpAnswer]) -> Vec<u8> {
    let mut w = W::default();
    w.len(a.len());
    for x in a {
        match x {
            Ok(b) => {
                w.u8(0);
                w.bytes(b);
            }
            Err(e) => {
                w.u8(1);
                w.bytes(e.as_bytes());
            }
        }
    }
    w.0
}

pub(crate) fn decode_answers(b: &[u8]) -> Result<Vec<OpAnswer>, Malformed> {
    let mut r = R::new(b);
    let n = r.count(5)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(match r.u8()? {
            0 => Ok(r.bytes()?.to_vec()),
            _ => Err(r.string()?),
        });
    }
    r.done()?;
    Ok(v)
}

/// The answer to a messages op: per message, stored (`None`) or why not.
pub(crate) fn encode_msg_results(v: &[Option<String>]) -> Vec<u8> {
    let mut w = W::default();
    w.len(v.len());
    for x in v {
        match x {
            None => w.u8(0),
            Some(e) => {
                w.u8(1);
                w.bytes(e.as_bytes());
            }
        }
    }
    w.0
}

pub(crate) fn decode_msg_results(b: &[u8]) -> Result<Vec<Option<String>>, Malformed> {
    let mut r = R::new(b);
    let n = r.count(1)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        });
    }
    r.done()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use canopy_store::{Pending, SequencePair};

    fn sample() -> Entry {
        let mut st = ConsumerState {
            delivered: SequencePair {
                consumer: 3,
                stream: 9,
            },
            ..Default::default()
        };
        st.pending.insert(
            9,
            Pending {
                consumer_seq: 3,
                ts: 77,
            },
        );
        Entry {
            origin: 42,
            epoch: 7,
            ops: vec![
                Op::Noop,
                Op::Msgs(vec![
                    RMsg {
                        seq: 1,
                        ts: 100,
                        ttl: None,
                        rollup: None,
                        subject: "a.b".into(),
                        hdr: vec![],
                        payload: b"x".to_vec(),
                    },
                    RMsg {
                        seq: 2,
                        ts: -5,
                        ttl: Some(5_000_000_000),
                        rollup: Some(false),
                        subject: "a.c".into(),
                        hdr: b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n".to_vec(),
                        payload: vec![],
                    },
                ]),
                Op::DeleteMsg { seq: 5 },
                Op::Purge {
                    filter: Some("a.>".into()),
                    seq: None,
                    keep: Some(3),
                    bound: 99,
                },
                Op::Purge {
                    filter: None,
                    seq: Some(4),
                    keep: None,
                    bound: 2,
                },
                Op::ConsumerUpsert {
                    name: "C".into(),
                    created: 12,
                    config: b"{}".to_vec(),
                },
                Op::ConsumerDelete { name: "D".into() },
                Op::ConsumerOps {
                    name: "C".into(),
                    ops: vec![
                        COp::Delivered {
                            dseq: 1,
                            sseq: 2,
                            dc: 1,
                            ts: 3,
                        },
                        COp::Acked { dseq: 1, sseq: 2 },
                        COp::Set(st),
                    ],
                },
                Op::Config(b"{\"name\":\"S\"}".to_vec()),
                Op::SourceIdent {
                    source: "O > >".into(),
                    ident: "S1".into(),
                },
            ],
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = sample();
        let b = e.encode();
        assert_eq!(Entry::decode(&b).unwrap(), e);
    }

    #[test]
    fn truncated_or_padded_entries_are_refused() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert!(Entry::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Entry::decode(&long).is_err());
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        // Version, origin, epoch, then a message op claiming 2^32-1 messages.
        let mut w = begin(1, 1, 1);
        w.u8(1);
        w.u32(u32::MAX);
        assert_eq!(
            Entry::decode(&w.0),
            Err(Malformed("count exceeds the entry"))
        );
    }

    #[test]
    fn answers_round_trip() {
        let a = vec![Ok(b"{}".to_vec()), Err("nope".to_string()), Ok(vec![])];
        assert_eq!(decode_answers(&encode_answers(&a)).unwrap(), a);
        let m = vec![None, Some("maximum messages exceeded".to_string())];
        assert_eq!(decode_msg_results(&encode_msg_results(&m)).unwrap(), m);
    }
}
