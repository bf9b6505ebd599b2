//! In-process services built on the internal service API ([`crate::server::service`]):
//! `$SYS` requests and claims ([`system`]) and the import agent ([`imports`]).

pub mod imports;
pub mod system;
