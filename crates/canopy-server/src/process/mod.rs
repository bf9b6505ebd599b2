//! The process: command-line flags ([`flags`]), binding listeners ([`listen`]), start-up and the run loop ([`run`]), signals
//! and reload ([`signal`]). The top of the dependency chain.

pub mod flags;
pub mod links;
pub mod listen;
pub mod run;
pub mod signal;
