//! canopy-proto: the NATS wire codec for the client, route and leafnode protocols.
//!
//! Pure: no I/O, no async. Decoding is two-phase and zero-copy over
//! [`bytes::BytesMut`]: [`Parser::next`] (or the stateless [`parse`]) checks that a
//! whole op is buffered, then splits exactly its bytes off the read buffer and returns
//! an [`Op`] whose fields are [`bytes::Bytes`] slices of that frame. Encoders in
//! [`encode`] append ops to an outbound `BytesMut`. [`types`] holds the INFO/CONNECT
//! JSON bodies, [`headers`] the message header block helpers, and [`ProtoError`] maps
//! each protocol violation to nats-server's exact `-ERR` text.

pub mod encode;
mod error;
pub mod headers;
mod op;
mod parser;
pub mod types;

pub use encode::*;
pub use error::{ProtoError, ERR_MAX_CONTROL_LINE, ERR_MAX_PAYLOAD, ERR_UNKNOWN_PROTOCOL};
pub use op::{Op, OpRef, Role};
pub use parser::{
    parse, Parser, ParserLimits, DEFAULT_MAX_CONTROL_LINE, DEFAULT_MAX_PAYLOAD,
    LINK_MAX_CONTROL_LINE,
};
pub use types::{ClientConnect, LeafConnect, RouteConnect, ServerInfo, SubjectPermission};
