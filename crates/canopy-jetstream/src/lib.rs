//! canopy-jetstream: JetStream on one server — streams on canopy-store, consumers, the
//! `$JS.API` handlers, and the KV / Object Store conventions clients build on them.
//!
//! The engine talks to the server only through [`host::Host`] (implemented by
//! canopy-server on its internal service API).

pub mod host;
