//! The core: accounts and their Sublists, the interest model shared by routes and leaf
//! links, message delivery, connection buffers and writer tasks, counters, permissions and
//! the client-visible error strings. Depends on nothing else in the crate.

pub mod account;
pub mod conn;
pub mod deliver;
pub mod errors;
pub mod format;
pub mod inbox;
pub mod interest;
pub mod mapping;
pub mod perms;
pub mod remap;
pub mod stats;
pub mod url;

/// A random 22-character identifier (like nats-server's NUIDs) for inboxes and `$LDS.`.
pub fn nuid() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
