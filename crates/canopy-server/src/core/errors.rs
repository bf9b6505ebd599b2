//! The one table of client-visible `-ERR` texts, with nats-server's exact wording.

pub const AUTH_VIOLATION: &str = "Authorization Violation";
pub const AUTH_TIMEOUT: &str = "Authentication Timeout";
pub const USER_AUTH_EXPIRED: &str = "User Authentication Expired";
pub const USER_AUTH_REVOKED: &str = "User Authentication Revoked";
pub const MAX_ACCOUNT_CONNECTIONS: &str = "maximum account active connections exceeded";
pub const MAX_PAYLOAD: &str = "Maximum Payload Violation";
pub const MAX_CONTROL_LINE: &str = "maximum control line exceeded";
pub const MAX_CONNECTIONS: &str = "maximum connections exceeded";
pub const MAX_SUBSCRIPTIONS: &str = "maximum subscriptions exceeded";
pub const UNKNOWN_OP: &str = "Unknown Protocol Operation";
pub const STALE_CONNECTION: &str = "Stale Connection";
pub const TLS_REQUIRED: &str = "Secure Connection - TLS Required";
pub const INVALID_PUB_SUBJECT: &str = "Invalid Publish Subject";
pub const INVALID_SUBJECT: &str = "Invalid Subject";
pub const LEAF_PORT_CLIENT: &str = "attempted to connect to leaf node port";
pub const NO_HEADERS_HPUB: &str = "Headers Not Supported";

/// `Permissions Violation for Publish to "subj"`.
pub fn pub_permission_violation(subject: &str) -> String {
    format!("Permissions Violation for Publish to \"{subject}\"")
}

/// `Permissions Violation for Subscription to "subj"` (with the queue when there is one).
pub fn sub_permission_violation(subject: &str, queue: Option<&str>) -> String {
    match queue {
        Some(q) => {
            format!("Permissions Violation for Subscription to \"{subject}\" using queue \"{q}\"")
        }
        None => format!("Permissions Violation for Subscription to \"{subject}\""),
    }
}
