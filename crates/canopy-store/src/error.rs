//! The store's error type: one `thiserror` enum for every fallible operation, carrying the
//! path, sequence or limit a reader needs to act on it.

use std::io;
use std::path::PathBuf;

/// Errors of the message store and the consumer store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed; `op` names the call, `path` the file or directory.
    #[error("store I/O error: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process (or another store in this process) holds the directory lock.
    #[error("store directory {} is locked by another process (two servers on one store directory?)", dir.display())]
    Locked { dir: PathBuf },
    /// Discard-new: the stream holds `max_msgs` messages.
    #[error("maximum messages exceeded")]
    MaxMsgs,
    /// Discard-new: the message would take the stream over `max_bytes`.
    #[error("maximum bytes exceeded")]
    MaxBytes,
    /// Discard-new-per-subject: the subject holds `max_msgs_per_subject` messages.
    #[error("maximum messages per subject exceeded")]
    MaxMsgsPerSubject,
    /// Headers plus payload are larger than `max_msg_size` (or than a record can hold).
    #[error("message size {size} exceeds maximum {max}")]
    MaxMsgSize { size: u64, max: u64 },
    /// No live message with this sequence.
    #[error("no message found")]
    NotFound,
    /// An explicit sequence (mirror append, skip) is not after the stream's last sequence.
    #[error("sequence {seq} is not after the last sequence {last}")]
    SeqOutOfOrder { seq: u64, last: u64 },
    /// A subject that cannot be stored (empty, not UTF-8, longer than 65535 bytes).
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// A record on disk failed its checksum or could not be decoded when read.
    #[error("corrupt record at {}:{offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An earlier write failed part-way; the in-memory state may be ahead of the disk, so the
    /// store refuses further work until it is reopened (recovery repairs the tail).
    #[error("store failed earlier ({0}); reopen it to recover")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Adds the operation and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
