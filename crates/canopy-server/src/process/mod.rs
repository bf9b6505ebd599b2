//! The process: command-line flags ([`flags`]), start-up and the run loop ([`run`]), signals
//! and reload ([`signal`]). The top of the dependency chain.

pub mod flags;
pub mod run;
pub mod signal;
