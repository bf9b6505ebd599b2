//! The openraft type configuration: entries and responses are opaque application bytes.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An application entry or an `apply` answer: opaque bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Payload(pub Bytes);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<u8> = Vec::deserialize(d)?;
        Ok(Payload(Bytes::from(v)))
    }
}

openraft::declare_raft_types!(
    /// Canopy's Raft types.
    pub(crate) TC:
        D = Payload,
        R = Payload,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TC>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type Entry = openraft::Entry<TC>;
pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type Membership = openraft::Membership<u64, openraft::BasicNode>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub(crate) type StorageError = openraft::StorageError<u64>;

/// A storage error from any displayable cause (openraft shuts the group down on these).
pub(crate) fn sto_err(verb: openraft::ErrorVerb, what: impl std::fmt::Display) -> StorageError {
    let subject = openraft::ErrorSubject::Store;
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(what.to_string())).into()
}
