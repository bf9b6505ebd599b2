//! In-process services built on the internal service API ([`crate::server::service`]):
//! `$SYS` requests and claims ([`system`]), the import agent ([`imports`]) and JetStream's
//! host ([`jetstream`]).

pub mod imports;
pub mod jetstream;
pub mod system;
