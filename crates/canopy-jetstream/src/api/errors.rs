//! The `$JS.API` error table: every error the engine returns, with nats-server's HTTP-like
//! `code`, its `err_code` and its description text (clients branch on `err_code`; legacy
//! clients on `code`). One table, so wording never drifts between handlers.

use serde::Serialize;

/// An API error as it appears in a response's `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{description} (code {code}, err_code {err_code})")]
pub struct ApiError {
    pub code: u16,
    pub err_code: u32,
    pub description: String,
}

/// The errors the engine uses. Variants with a field carry the text nats-server formats
/// into its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E {
    BadRequest,
    InvalidJson(String),
    NotEmptyRequest,
    NotEnabled,
    NotEnabledForAccount,
    ClusterRequired,
    /// 10008: no quorum, or no leader yet (`JSClusterNotAvailErr`).
    ClusterNotAvail,
    ClusterNoPeers(String),
    /// 10040: `STREAM.PEER.REMOVE` names a server that holds no copy of the stream.
    ClusterPeerNotMember,
    /// 10044: `SERVER.REMOVE` names a server that is not in the meta group.
    ClusterServerNotMember,
    /// 10202: another member change of the meta group is still in progress.
    ClusterServerMemberChangeInflight,
    /// 10075: no replacement for a removed peer.
    PeerRemap,
    /// 10041: a Raft operation (a leader step-down) failed.
    RaftGeneral(String),
    /// 10118: every server holding the stream is down.
    StreamOffline,
    /// 10119: every server holding the consumer (its stream's) is down.
    ConsumerOffline,
    ClusteredReplicasNotAvailable,
    InsufficientResources,
    AccountResourcesExceeded,
    StorageResourcesExceeded,
    MemoryResourcesExceeded,
    MaximumStreams,
    MaximumConsumers,
    StreamNotFound,
    StreamNameExist,
    StreamMismatch,
    StreamSubjectOverlap,
    StreamInvalidConfig(String),
    StreamReplicasNotSupported,
    StreamCreate(String),
    StreamUpdate(String),
    StreamDelete(String),
    StreamGeneral(String),
    StreamMsgDeleteFailed(String),
    StreamPurgeFailed(String),
    StreamStoreFailed(String),
    StreamRollupFailed(String),
    StreamSealed,
    StreamNotMatch,
    StreamWrongLastSequence(u64),
    StreamWrongLastMsgId(String),
    StreamMessageExceedsMaximum,
    StreamHeaderExceedsMaximum,
    StreamMaxBytesRequired,
    StreamMaxStreamBytesExceeded,
    StreamMirrorNotUpdatable,
    StreamReplicasNotUpdatable,
    MirrorWithSubjects,
    MirrorWithSources,
    MirrorWithFirstSeq,
    NoMessageFound,
    SequenceNotFound(u64),
    MessageTtlInvalid,
    MessageTtlDisabled,
    ConsumerNotFound,
    ConsumerCreate(String),
    ConsumerNameExist,
    ConsumerAlreadyExists,
    ConsumerDoesNotExist,
    ConsumerDurableNameNotInSubject,
    ConsumerDurableNameNotMatchSubject,
    ConsumerDurableNameNotSet,
    ConsumerEphemeralWithDurableInSubject,
    ConsumerEphemeralWithDurableName,
    ConsumerConfigRequired,
    ConsumerDeliverToWildcards,
    ConsumerPushMaxWaiting,
    ConsumerDeliverCycle,
    ConsumerMaxPendingAckPolicyRequired,
    ConsumerSmallHeartbeat,
    ConsumerPullRequiresAck,
    ConsumerPullWithRateLimit,
    ConsumerMaxWaitingNegative,
    ConsumerHbRequiresPush,
    ConsumerFcRequiresPush,
    ConsumerDirectRequiresPush,
    ConsumerFilterNotSubset,
    ConsumerInvalidPolicy(String),
    ConsumerWqRequiresExplicitAck,
    ConsumerWqMultipleUnfiltered,
    ConsumerWqConsumerNotUnique,
    ConsumerWqConsumerNotDeliverAll,
    ConsumerNameTooLong(usize),
    ConsumerBadDurableName,
    ConsumerStoreFailed(String),
    ConsumerExistingActive,
    ConsumerFlowControlNeedsHeartbeats,
    ConsumerInvalidDeliverSubject,
    ConsumerMaxRequestBatchNegative,
    ConsumerMaxRequestExpiresTooSmall,
    ConsumerMaxDeliverBackoff,
    ConsumerMaxPendingAckExcess(i64),
    ConsumerCreateFilterSubjectMismatch,
    ConsumerCreateDurableAndNameMismatch,
    ConsumerDuplicateFilterSubjects,
    ConsumerMultipleFiltersNotAllowed,
    ConsumerOverlappingSubjectFilters,
    ConsumerEmptyFilter,
    ConsumerNameContainsPathSeparators,
    StreamNameContainsPathSeparators,
    ConsumerReplicasExceedsStream,
    ConsumerDescriptionTooLong(usize),
    ConsumerMetadataLength(usize),
    TooManyRequests,
    Pedantic(String),
    StreamTransformInvalidSource(String),
    StreamTransformInvalidDestination(String),
    ConsumerPushWithPriorityGroup,
    ConsumerPriorityPolicyWithoutGroup,
    ConsumerInvalidPriorityGroup,
    ConsumerPriorityGroupWithPolicyNone,
    ConsumerPinnedTtlWithoutPriorityPolicyNone,
    ConsumerInvalidGroupName,
}

impl E {
    /// `(code, err_code, description)` as nats-server's `errors.json` has them.
    fn parts(&self) -> (u16, u32, String) {
        use E::*;
        let s = |t: &str| t.to_string();
        match self {
            BadRequest => (400, 10003, s("bad request")),
            InvalidJson(e) => (400, 10025, format!("invalid JSON: {e}")),
            NotEmptyRequest => (400, 10038, s("expected an empty request payload")),
            NotEnabled => (503, 10076, s("JetStream not enabled")),
            NotEnabledForAccount => (503, 10039, s("JetStream not enabled for account")),
            ClusterRequired => (503, 10010, s("JetStream clustering support required")),
            ClusterNoPeers(e) => (400, 10005, e.clone()),
            ClusterPeerNotMember => (400, 10040, s("peer not a member")),
            ClusterServerNotMember => (400, 10044, s("server is not a member of the cluster")),
            ClusterServerMemberChangeInflight => {
                (400, 10202, s("cluster member change is in progress"))
            }
            PeerRemap => (503, 10075, s("peer remap failed")),
            RaftGeneral(e) => (500, 10041, e.clone()),
            StreamOffline => (500, 10118, s("stream is offline")),
            ConsumerOffline => (500, 10119, s("consumer is offline")),
            ClusteredReplicasNotAvailable => (
                500,
                10074,
                s("replicated streams with mirrors or sources are not supported yet"),
            ),
            InsufficientResources => (503, 10023, s("insufficient resources")),
            AccountResourcesExceeded => (400, 10002, s("resource limits exceeded for account")),
            StorageResourcesExceeded => (500, 10047, s("insufficient storage resources available")),
            MemoryResourcesExceeded => (500, 10028, s("insufficient memory resources available")),
            MaximumStreams => (400, 10027, s("maximum number of streams reached")),
            MaximumConsumers => (400, 10026, s("maximum consumers limit reached")),
            ClusterNotAvail => (503, 10008, s("JetStream system temporarily unavailable")),
            StreamNotFound => (404, 10059, s("stream not found")),
            StreamNameExist => (
                400,
                10058,
                s("stream name already in use with a different configuration"),
            ),
            StreamMismatch => (
                400,
                10056,
                s("stream name in subject does not match request"),
            ),
            StreamSubjectOverlap => (400, 10065, s("subjects overlap with an existing stream")),
            StreamInvalidConfig(e) => (500, 10052, e.clone()),
            StreamReplicasNotSupported => (
                500,
                10074,
                s("replicas > 1 not supported in non-clustered mode"),
            ),
            StreamCreate(e) => (500, 10049, e.clone()),
            StreamUpdate(e) => (500, 10069, e.clone()),
            StreamDelete(e) => (500, 10050, e.clone()),
            StreamGeneral(e) => (500, 10051, e.clone()),
            StreamMsgDeleteFailed(e) => (500, 10057, e.clone()),
            StreamPurgeFailed(e) => (500, 10110, e.clone()),
            StreamStoreFailed(e) => (503, 10077, e.clone()),
            StreamRollupFailed(e) => (500, 10111, e.clone()),
            StreamSealed => (400, 10109, s("invalid operation on sealed stream")),
            StreamNotMatch => (400, 10060, s("expected stream does not match")),
            StreamWrongLastSequence(n) => (400, 10071, format!("wrong last sequence: {n}")),
            StreamWrongLastMsgId(id) => (400, 10070, format!("wrong last msg ID: {id}")),
            StreamMessageExceedsMaximum => (400, 10054, s("message size exceeds maximum allowed")),
            StreamHeaderExceedsMaximum => {
                (400, 10097, s("header size exceeds maximum allowed of 64k"))
            }
            StreamMaxBytesRequired => (
                400,
                10113,
                s("account requires a stream config to have max bytes set"),
            ),
            StreamMaxStreamBytesExceeded => (
                400,
                10122,
                s("stream max bytes exceeds account limit max stream bytes"),
            ),
            StreamMirrorNotUpdatable => (
                400,
                10055,
                s("stream mirror configuration can not be updated"),
            ),
            StreamReplicasNotUpdatable => {
                (400, 10061, s("Replicas configuration can not be updated"))
            }
            MirrorWithSubjects => (400, 10034, s("stream mirrors can not contain subjects")),
            MirrorWithSources => (
                400,
                10031,
                s("stream mirrors can not also contain other sources"),
            ),
            MirrorWithFirstSeq => (
                400,
                10143,
                s("stream mirrors can not have first sequence configured"),
            ),
            NoMessageFound => (404, 10037, s("no message found")),
            SequenceNotFound(n) => (400, 10043, format!("sequence {n} not found")),
            MessageTtlInvalid => (400, 10165, s("invalid per-message TTL")),
            MessageTtlDisabled => (400, 10166, s("per-message TTL is disabled")),
            ConsumerNotFound => (404, 10014, s("consumer not found")),
            ConsumerCreate(e) => (500, 10012, e.clone()),
            ConsumerNameExist => (400, 10013, s("consumer name already in use")),
            ConsumerAlreadyExists => (400, 10148, s("consumer already exists")),
            ConsumerDoesNotExist => (400, 10149, s("consumer does not exist")),
            ConsumerDurableNameNotInSubject => (
                400,
                10016,
                s("consumer expected to be durable but no durable name set in subject"),
            ),
            ConsumerDurableNameNotMatchSubject => (
                400,
                10017,
                s("consumer name in subject does not match durable name in request"),
            ),
            ConsumerDurableNameNotSet => (
                400,
                10018,
                s("consumer expected to be durable but a durable name was not set"),
            ),
            ConsumerEphemeralWithDurableInSubject => (
                400,
                10019,
                s("consumer expected to be ephemeral but detected a durable name set in subject"),
            ),
            ConsumerEphemeralWithDurableName => (
                400,
                10020,
                s("consumer expected to be ephemeral but a durable name was set in request"),
            ),
            ConsumerConfigRequired => (400, 10078, s("consumer config required")),
            ConsumerDeliverToWildcards => (400, 10079, s("consumer deliver subject has wildcards")),
            ConsumerPushMaxWaiting => (
                400,
                10080,
                s("consumer in push mode can not set max waiting"),
            ),
            ConsumerDeliverCycle => (400, 10081, s("consumer deliver subject forms a cycle")),
            ConsumerMaxPendingAckPolicyRequired => (
                400,
                10082,
                s("consumer requires ack policy for max ack pending"),
            ),
            ConsumerSmallHeartbeat => (
                400,
                10083,
                s("consumer idle heartbeat needs to be >= 100ms"),
            ),
            ConsumerPullRequiresAck => (
                400,
                10084,
                s("consumer in pull mode requires explicit ack policy on workqueue stream"),
            ),
            ConsumerPullWithRateLimit => (
                400,
                10086,
                s("consumer in pull mode can not have rate limit set"),
            ),
            ConsumerMaxWaitingNegative => {
                (400, 10087, s("consumer max waiting needs to be positive"))
            }
            ConsumerHbRequiresPush => (
                400,
                10088,
                s("consumer idle heartbeat requires a push based consumer"),
            ),
            ConsumerFcRequiresPush => (
                400,
                10089,
                s("consumer flow control requires a push based consumer"),
            ),
            ConsumerDirectRequiresPush => (
                400,
                10090,
                s("consumer direct requires a push based consumer"),
            ),
            ConsumerFilterNotSubset => (
                400,
                10093,
                s("consumer filter subject is not a valid subset of the interest subjects"),
            ),
            ConsumerInvalidPolicy(e) => (400, 10094, e.clone()),
            ConsumerWqRequiresExplicitAck => {
                (400, 10098, s("workqueue stream requires explicit ack"))
            }
            ConsumerWqMultipleUnfiltered => (
                400,
                10099,
                s("multiple non-filtered consumers not allowed on workqueue stream"),
            ),
            ConsumerWqConsumerNotUnique => (
                400,
                10100,
                s("filtered consumer not unique on workqueue stream"),
            ),
            ConsumerWqConsumerNotDeliverAll => (
                400,
                10101,
                s("consumer must be deliver all on workqueue stream"),
            ),
            ConsumerNameTooLong(m) => (
                400,
                10102,
                format!("consumer name is too long, maximum allowed is {m}"),
            ),
            ConsumerBadDurableName => (400, 10103, s("durable name can not contain '.', '*', '>'")),
            ConsumerStoreFailed(e) => (
                500,
                10104,
                format!("error creating store for consumer: {e}"),
            ),
            ConsumerExistingActive => {
                (400, 10105, s("consumer already exists and is still active"))
            }
            ConsumerFlowControlNeedsHeartbeats => (
                400,
                10108,
                s("consumer with flow control also needs heartbeats"),
            ),
            ConsumerInvalidDeliverSubject => {
                (400, 10112, s("invalid push consumer deliver subject"))
            }
            ConsumerMaxRequestBatchNegative => {
                (400, 10114, s("consumer max request batch needs to be > 0"))
            }
            ConsumerMaxRequestExpiresTooSmall => (
                400,
                10115,
                s("consumer max request expires needs to be >= 1ms"),
            ),
            ConsumerMaxDeliverBackoff => (
                400,
                10116,
                s("max deliver is required to be > length of backoff values"),
            ),
            ConsumerMaxPendingAckExcess(l) => (
                400,
                10121,
                format!("consumer max ack pending exceeds system limit of {l}"),
            ),
            ConsumerCreateFilterSubjectMismatch => (
                400,
                10131,
                s("Consumer create request did not match filtered subject from create subject"),
            ),
            ConsumerCreateDurableAndNameMismatch => (
                400,
                10132,
                s("Consumer Durable and Name have to be equal if both are provided"),
            ),
            ConsumerDuplicateFilterSubjects => (
                400,
                10136,
                s("consumer cannot have both FilterSubject and FilterSubjects specified"),
            ),
            ConsumerMultipleFiltersNotAllowed => (
                400,
                10137,
                s("consumer with multiple subject filters cannot use subject based API"),
            ),
            ConsumerOverlappingSubjectFilters => {
                (400, 10138, s("consumer subject filters cannot overlap"))
            }
            ConsumerEmptyFilter => (
                400,
                10139,
                s("consumer filter in FilterSubjects cannot be empty"),
            ),
            ConsumerNameContainsPathSeparators => (
                400,
                10127,
                s("Consumer name can not contain path separators"),
            ),
            StreamNameContainsPathSeparators => {
                (400, 10128, s("Stream name can not contain path separators"))
            }
            ConsumerReplicasExceedsStream => (
                400,
                10126,
                s("consumer config replica count exceeds parent stream"),
            ),
            ConsumerDescriptionTooLong(m) => (
                400,
                10107,
                format!("consumer description is too long, maximum allowed is {m}"),
            ),
            ConsumerMetadataLength(m) => (
                400,
                10135,
                format!("consumer metadata exceeds maximum size of {m}"),
            ),
            TooManyRequests => (429, 10167, s("too many requests")),
            Pedantic(e) => (400, 10157, format!("pedantic mode: {e}")),
            StreamTransformInvalidSource(e) => {
                (400, 10155, format!("stream transform source: {e}"))
            }
            StreamTransformInvalidDestination(e) => (400, 10156, format!("stream transform: {e}")),
            ConsumerPushWithPriorityGroup => (
                400,
                10178,
                s("priority groups can not be used with push consumers"),
            ),
            ConsumerPriorityPolicyWithoutGroup => (
                400,
                10159,
                s("Setting PriorityPolicy requires at least one PriorityGroup to be set"),
            ),
            ConsumerInvalidPriorityGroup => (
                400,
                10160,
                s("Provided priority group does not exist for this consumer"),
            ),
            ConsumerPriorityGroupWithPolicyNone => (
                400,
                10196,
                s("consumer can not have priority groups when policy is none"),
            ),
            ConsumerInvalidGroupName => (
                400,
                10162,
                s("Valid priority group name must match A-Z, a-z, 0-9, -_/=)+ and may not exceed 16 characters"),
            ),
            ConsumerPinnedTtlWithoutPriorityPolicyNone => (
                400,
                10197,
                s("PinnedTTL cannot be set when PriorityPolicy is none"),
            ),
        }
    }
}

impl From<E> for ApiError {
    fn from(e: E) -> Self {
        let (code, err_code, description) = e.parts();
        ApiError {
            code,
            err_code,
            description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_nats_server() {
        let e = ApiError::from(E::StreamNotFound);
        assert_eq!((e.code, e.err_code), (404, 10059));
        let e = ApiError::from(E::StreamWrongLastSequence(3));
        assert_eq!(e.description, "wrong last sequence: 3");
        assert_eq!(ApiError::from(E::ClusterRequired).err_code, 10010);
    }
}
