//! Parser errors and how each one maps onto nats-server's client-visible `-ERR` text.
//!
//! nats-server distinguishes three outcomes of a bad inbound protocol line (verified
//! against nats-server 2.9.10 and its `parser.go`/`client.go`):
//! - an unknown verb, or a payload not followed by `\r\n`: `-ERR 'Unknown Protocol
//!   Operation'`, then close;
//! - a size above `max_payload` / a control line above `max_control_line`: their own
//!   `-ERR`, then close;
//! - a known verb with malformed arguments (`PUB foo`, `SUB a b c d`, `PUB foo x`): the
//!   connection is closed *without* any `-ERR` (the error is only logged).

use thiserror::Error;

/// -ERR text for an unknown verb or a broken frame.
pub const ERR_UNKNOWN_PROTOCOL: &str = "Unknown Protocol Operation";
/// -ERR text for a payload larger than `max_payload`.
pub const ERR_MAX_PAYLOAD: &str = "Maximum Payload Violation";
/// -ERR text for a control line longer than `max_control_line`.
pub const ERR_MAX_CONTROL_LINE: &str = "maximum control line exceeded";

/// A protocol violation found while parsing. Every variant is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The bytes at the start of an op are not a verb this role accepts.
    #[error("unknown protocol operation")]
    UnknownOp,
    /// A payload of the announced size was not followed by `\r\n`.
    #[error("payload not terminated by CRLF")]
    BadPayloadTrailer,
    /// The control line (the arguments after the verb) is longer than allowed.
    #[error("maximum control line exceeded: {len} > {max}")]
    MaxControlLine {
        /// Argument bytes seen so far.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The announced payload size is larger than allowed.
    #[error("maximum payload exceeded: {size} > {max}")]
    MaxPayload {
        /// Announced (total) payload size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A known verb with malformed arguments.
    #[error("{op} parse error: {reason}")]
    InvalidArgs {
        /// The verb, e.g. `"PUB"`.
        op: &'static str,
        /// What was wrong, e.g. `"bad or missing size"`.
        reason: &'static str,
    },
}

impl ProtoError {
    /// The text nats-server sends as `-ERR '<text>'` before closing, or `None` when
    /// nats-server closes without telling the peer (malformed arguments).
    pub fn client_error_text(&self) -> Option<&'static str> {
        match self {
            ProtoError::UnknownOp | ProtoError::BadPayloadTrailer => Some(ERR_UNKNOWN_PROTOCOL),
            ProtoError::MaxControlLine { .. } => Some(ERR_MAX_CONTROL_LINE),
            ProtoError::MaxPayload { .. } => Some(ERR_MAX_PAYLOAD),
            ProtoError::InvalidArgs { .. } => None,
        }
    }

    /// Whether the connection must be closed. Always true today: the parser cannot
    /// resynchronise after any of these, and nats-server closes on all of them.
    pub fn closes_connection(&self) -> bool {
        true
    }
}
