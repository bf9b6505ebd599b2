//! Byte encodings: log records (on disk and in AppendEntries) and the RPC bodies.
//!
//! Entries are binary (`term, leader node, index, kind, length, bytes`) so that message
//! payloads travel and rest without inflation; the small, rare structures (votes, snapshot
//! metadata, membership, responses) are JSON. Decoding never trusts a length: every read is
//! bounded by the bytes actually present, and nothing is allocated ahead of them.

use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{CommittedLeaderId, EntryPayload};
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, Membership, Payload, SnapshotMeta, Vote, TC};

/// The smallest encoded entry: a log id (24), a kind (1) and a length (4).
pub(crate) const MIN_ENTRY: usize = 29;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

pub(crate) fn put_log_id(buf: &mut Vec<u8>, id: &LogId) {
    buf.extend_from_slice(&id.leader_id.term.to_le_bytes());
    buf.extend_from_slice(&id.leader_id.node_id.to_le_bytes());
    buf.extend_from_slice(&id.index.to_le_bytes());
}

/// Appends `e`'s encoding to `buf`.
pub(crate) fn encode_entry(e: &Entry, buf: &mut Vec<u8>) {
    put_log_id(buf, &e.log_id);
    match &e.payload {
        EntryPayload::Blank => {
            buf.push(KIND_BLANK);
            buf.extend_from_slice(&0u32.to_le_bytes());
        }
        EntryPayload::Normal(p) => {
            buf.push(KIND_NORMAL);
            buf.extend_from_slice(&(p.0.len() as u32).to_le_bytes());
            buf.extend_from_slice(&p.0);
        }
        EntryPayload::Membership(m) => {
            buf.push(KIND_MEMBERSHIP);
            // Serializing a membership (sets and maps of integers and strings) cannot fail.
            let j = serde_json::to_vec(m).unwrap_or_default();
            buf.extend_from_slice(&(j.len() as u32).to_le_bytes());
            buf.extend_from_slice(&j);
        }
    }
}

/// A bounded cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.remaining()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn log_id(&mut self) -> Result<LogId, String> {
        let term = self.u64()?;
        let node = self.u64()?;
        let index = self.u64()?;
        Ok(LogId::new(CommittedLeaderId::new(term, node), index))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }
}

/// Decodes one entry. `src` backs the payload without a copy when given (it must be the
/// buffer `r` reads).
pub(crate) fn decode_entry(r: &mut Reader<'_>, src: Option<&Bytes>) -> Result<Entry, String> {
    let log_id = r.log_id()?;
    let kind = r.u8()?;
    let len = r.u32()? as usize;
    let start = r.pos;
    let body = r.take(len)?;
    let payload = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(Payload(match src {
            Some(b) => b.slice(start..start + len),
            None => Bytes::copy_from_slice(body),
        })),
        KIND_MEMBERSHIP => {
            let m: Membership =
                serde_json::from_slice(body).map_err(|e| format!("membership entry: {e}"))?;
            EntryPayload::Membership(m)
        }
        k => return Err(format!("unknown entry kind {k}")),
    };
    Ok(Entry { log_id, payload })
}

#[derive(Serialize, Deserialize)]
struct AeHead {
    vote: Vote,
    prev_log_id: Option<LogId>,
    leader_commit: Option<LogId>,
    n: u64,
}

/// Writes a JSON head with its length in front.
fn put_head<T: Serialize>(buf: &mut Vec<u8>, head: &T) -> Result<(), String> {
    let j = serde_json::to_vec(head).map_err(|e| e.to_string())?;
    buf.extend_from_slice(&(j.len() as u32).to_le_bytes());
    buf.extend_from_slice(&j);
    Ok(())
}

fn get_head<'de, T: Deserialize<'de>>(r: &mut Reader<'de>) -> Result<T, String> {
    let n = r.u32()? as usize;
    serde_json::from_slice(r.take(n)?).map_err(|e| format!("bad header: {e}"))
}

pub(crate) fn encode_append(req: &AppendEntriesRequest<TC>) -> Result<Bytes, String> {
    let size: usize = req.entries.iter().map(entry_size_hint).sum();
    let mut buf = Vec::with_capacity(256 + size);
    let head = AeHead {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
        n: req.entries.len() as u64,
    };
    put_head(&mut buf, &head)?;
    for e in &req.entries {
        encode_entry(e, &mut buf);
    }
    Ok(Bytes::from(buf))
}

fn entry_size_hint(e: &Entry) -> usize {
    MIN_ENTRY
        + match &e.payload {
            EntryPayload::Normal(p) => p.0.len(),
            EntryPayload::Membership(_) => 256,
            EntryPayload::Blank => 0,
        }
}

pub(crate) fn decode_append(body: &Bytes) -> Result<AppendEntriesRequest<TC>, String> {
    let mut r = Reader::new(body);
    let head: AeHead = get_head(&mut r)?;
    if head.n > (r.remaining() / MIN_ENTRY) as u64 {
        return Err(format!("{} entries announced, too few bytes", head.n));
    }
    let mut entries = Vec::with_capacity(head.n as usize);
    for _ in 0..head.n {
        entries.push(decode_entry(&mut r, Some(body))?);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes after entries".into());
    }
    Ok(AppendEntriesRequest {
        vote: head.vote,
        prev_log_id: head.prev_log_id,
        leader_commit: head.leader_commit,
        entries,
    })
}

#[derive(Serialize, Deserialize)]
struct IsHead {
    vote: Vote,
    meta: SnapshotMeta,
    offset: u64,
    done: bool,
}

pub(crate) fn encode_install(req: &InstallSnapshotRequest<TC>) -> Result<Bytes, String> {
    let mut buf = Vec::with_capacity(512 + req.data.len());
    let head = IsHead {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        done: req.done,
    };
    put_head(&mut buf, &head)?;
    buf.extend_from_slice(&req.data);
    Ok(Bytes::from(buf))
}

pub(crate) fn decode_install(body: &[u8]) -> Result<InstallSnapshotRequest<TC>, String> {
    let mut r = Reader::new(body);
    let head: IsHead = get_head(&mut r)?;
    Ok(InstallSnapshotRequest {
        vote: head.vote,
        meta: head.meta,
        offset: head.offset,
        data: r.rest().to_vec(),
        done: head.done,
    })
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Bytes, String> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| format!("bad body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::BasicNode;
    use std::collections::{BTreeMap, BTreeSet};

    fn entries() -> Vec<Entry> {
        let mut nodes = BTreeMap::new();
        nodes.insert(7u64, BasicNode::new("s7"));
        let m = Membership::new(vec![BTreeSet::from([7u64])], nodes);
        vec![
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(0, 0), 0),
                payload: EntryPayload::Membership(m),
            },
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 7), 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 7), 2),
                payload: EntryPayload::Normal(Payload(Bytes::from_static(b"hello"))),
            },
        ]
    }

    #[test]
    fn append_round_trip_and_every_truncation_fails_cleanly() {
        let req = AppendEntriesRequest::<TC> {
            vote: Vote::new_committed(1, 7),
            prev_log_id: None,
            leader_commit: Some(LogId::new(CommittedLeaderId::new(1, 7), 1)),
            entries: entries(),
        };
        let b = encode_append(&req).expect("encode");
        let back = decode_append(&b).expect("decode");
        assert_eq!(back.entries, req.entries);
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.leader_commit, req.leader_commit);
        for cut in 0..b.len() {
            assert!(decode_append(&b.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_counts_and_lengths_do_not_allocate() {
        let mut buf = Vec::new();
        put_head(
            &mut buf,
            &AeHead {
                vote: Vote::new(1, 1),
                prev_log_id: None,
                leader_commit: None,
                n: u64::MAX,
            },
        )
        .expect("head");
        assert!(decode_append(&Bytes::from(buf)).is_err());
        let mut e = Vec::new();
        put_log_id(&mut e, &LogId::new(CommittedLeaderId::new(1, 1), 1));
        e.push(KIND_NORMAL);
        e.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(&mut Reader::new(&e), None).is_err());
        assert!(decode_install(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
