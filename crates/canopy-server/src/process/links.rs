//! The links runtime: one tokio worker thread for the route connections and clustered
//! JetStream's Raft groups, beside the main runtime that serves clients.
//!
//! Why: a replicated publish is a chain of small hand-offs (a route's reader, the Raft
//! core, its replication tasks, the RPC handlers, the state machine task, the routes
//! again), each a few microseconds of work. On a multi-worker runtime each hand-off may
//! wake the other worker and move the next task to another core, and on the two-core
//! test machine a wake-up across cores costs 20-70 µs. On one worker the chain runs on one
//! thread. Clients keep the main runtime's workers.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

static LINKS: OnceLock<Handle> = OnceLock::new();

/// Builds the links runtime and makes [`handle`] return it (once per process; a process
/// that does not call this, such as an in-process test server, keeps its links on the
/// runtime it runs on).
pub fn start() -> std::io::Result<Runtime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("canopy-links")
        .enable_all()
        .build()?;
    let _ = LINKS.set(rt.handle().clone());
    Ok(rt)
}

/// The runtime that runs routes and Raft groups: the links runtime when the process
/// started one, the calling task's runtime otherwise.
pub fn handle() -> Handle {
    LINKS.get().cloned().unwrap_or_else(Handle::current)
}
