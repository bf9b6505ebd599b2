//! canopy-subject: NATS subjects — validation ([`validate`]), wildcard matching and filter
//! relations ([`matching`]), the subscription index with its result cache ([`sublist`]), and
//! subject transforms / mappings ([`transform`]).
//!
//! Pure: no I/O, no async. Rules follow nats-server so that Canopy accepts and rejects the
//! same subjects; see the table in [`validate`].

pub mod matching;
pub mod sublist;
pub mod transform;
pub mod validate;

pub use matching::{subject_is_subset_of, subject_matches, subjects_collide};
pub use sublist::{
    MatchResult, QueueGroup, Sublist, SublistError, SublistStats, CACHE_MAX, CACHE_SWEEP,
};
pub use transform::{
    partition_of, tokenize_wildcards, untokenize_wildcards, validate_mapping, MapDest, Mapped,
    Transform, TransformError, WeightedDestination, WeightedMapping,
};
pub use validate::{
    has_wildcard, is_literal, is_valid_literal_subject, is_valid_pedantic_publish,
    is_valid_queue_name, is_valid_subject, is_valid_subject_strict, is_well_formed, num_tokens,
    tokens,
};
