//! canopy-jetstream: JetStream on one server — streams on canopy-store, consumers, the
//! `$JS.API` handlers, and the KV / Object Store conventions clients build on them.
//!
//! The engine talks to the server only through [`host::Host`] (implemented by
//! canopy-server on its internal service API). Modules:
//! - [`engine`]: configuration, accounts, API workers, monitoring views;
//! - `advisory`: the `$JS.EVENT.ADVISORY.*` events;
//! - [`api`]: request routing and handlers, the error table ([`api::errors`]);
//! - [`cluster`]: clustered JetStream's meta layer (meta group, Raft transport over routes,
//!   placement, which member answers which request);
//! - `stream`: a stream's thread (ingest with group commit, timers) and its store;
//! - `consumer`: delivery, acks, pull requests, push delivery;
//! - `source`: mirrors and sources (the sourcing consumer's state machine);
//! - [`replica`]: replicated (R>1) streams: a Raft group per stream, its entry points;
//! - [`types`]: the JSON configuration types; `util`: time, headers, names.

mod advisory;
pub mod api;
pub mod cluster;
mod consumer;
pub mod engine;
pub mod host;
pub mod replica;
mod source;
mod stream;
pub mod types;
mod util;

pub use engine::{AccountLimits, Config, Engine, EngineError};
pub use replica::{GroupSpec, ReplicaError};
