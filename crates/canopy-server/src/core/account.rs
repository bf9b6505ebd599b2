//! Accounts: each owns its Sublist, so subjects never cross accounts except through
//! imports. `$G` is the default account when none are configured.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use canopy_subject::Sublist;

use crate::core::conn::ConnShared;
use crate::core::inbox::Sink;
use crate::core::interest::{InterestMap, Link};

/// The global account's name.
pub const GLOBAL_ACCOUNT: &str = "$G";
/// The default system account's name.
pub const SYSTEM_ACCOUNT: &str = "$SYS";

/// One subscription. Identity is the allocation: two subscriptions are equal only if they
/// are the same `Arc`.
///
/// Kept lean (a server may hold millions): subject, queue and sid share one allocation,
/// so a subscription costs two allocations (this record and its names) instead of four.
pub struct Subscription {
    pub conn: Arc<ConnShared>,
    /// Subject, queue (if any) and sid, back to back.
    names: Box<[u8]>,
    subject_len: u32,
    queue_len: u32,
    /// Auto-unsubscribe after this many messages (0 = never).
    pub max: AtomicU64,
    pub delivered: AtomicU64,
    /// An in-process receiver: messages go to it instead of the connection's buffer.
    /// Boxed: a thin pointer keeps the record at 56 bytes for the common case (no sink).
    pub sink: Option<Box<Arc<dyn Sink>>>,
}

// A server may hold millions of these: keep the record in the 80-byte allocation class.
const _: () = assert!(std::mem::size_of::<Subscription>() <= 56);

impl Subscription {
    /// A subscription of `conn` (a queue, when given, is never empty).
    pub fn new(
        conn: Arc<ConnShared>,
        subject: &[u8],
        queue: Option<&[u8]>,
        sid: &[u8],
        sink: Option<Arc<dyn Sink>>,
    ) -> Subscription {
        let queue = queue.unwrap_or_default();
        let mut names = Vec::with_capacity(subject.len() + queue.len() + sid.len());
        names.extend_from_slice(subject);
        names.extend_from_slice(queue);
        names.extend_from_slice(sid);
        Subscription {
            conn,
            names: names.into_boxed_slice(),
            // Subjects and queues are bounded by the control line (a u32 at most).
            subject_len: u32::try_from(subject.len()).unwrap_or(u32::MAX),
            queue_len: u32::try_from(queue.len()).unwrap_or(u32::MAX),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            sink: sink.map(Box::new),
        }
    }

    pub fn subject(&self) -> &[u8] {
        &self.names[..self.subject_len as usize]
    }
    pub fn queue(&self) -> Option<&[u8]> {
        let start = self.subject_len as usize;
        (self.queue_len > 0).then(|| &self.names[start..start + self.queue_len as usize])
    }
    pub fn sid(&self) -> &[u8] {
        &self.names[(self.subject_len + self.queue_len) as usize..]
    }
    pub fn subject_str(&self) -> &str {
        std::str::from_utf8(self.subject()).unwrap_or("")
    }
    pub fn queue_str(&self) -> Option<&str> {
        self.queue().map(|q| std::str::from_utf8(q).unwrap_or(""))
    }
}

/// What the Sublist stores.
#[derive(Clone)]
pub struct SubRef(pub Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for SubRef {
    type Target = Subscription;
    fn deref(&self) -> &Subscription {
        &self.0
    }
}

pub struct Account {
    pub name: String,
    /// The name again, shared: what the messages handed to services carry (no
    /// allocation per message).
    pub shared_name: Arc<str>,
    pub sublist: Sublist<SubRef>,
    pub num_conns: AtomicUsize,
    pub num_leafs: AtomicUsize,
    pub in_msgs: AtomicU64,
    pub out_msgs: AtomicU64,
    /// Payload bytes received from and sent to this account's clients (`/accstatz`).
    pub in_bytes: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Interest by (subject, queue) and source, for advertising to links.
    pub interest: parking_lot::Mutex<InterestMap>,
    /// The leaf links bound to this account (changed under the interest lock).
    pub links: parking_lot::RwLock<Vec<Arc<Link>>>,
    /// This account's loop-detection subject (`$LDS.<random>`), advertised to every link.
    pub lds: String,
    /// True when the server has leaf nodes configured: client interest is then tracked
    /// in `interest` for advertising.
    pub track_interest: bool,
    /// Subject mappings (`mappings {}`), set once at start; unset when there are none, so
    /// a publish in an account without mappings costs one branch.
    pub mappings: std::sync::OnceLock<crate::core::mapping::Mappings>,
    /// Store-and-forward spools of the leaf remotes bound to this account.
    pub spools: parking_lot::RwLock<Vec<Arc<crate::server::spool::Spool>>>,
    /// True while one of them captures: [`crate::core::deliver::deliver`] then offers
    /// every message to them (one relaxed load otherwise).
    pub spooling: std::sync::atomic::AtomicBool,
}

impl Account {
    pub fn new(name: &str, cache: bool, track_interest: bool) -> Arc<Self> {
        let lds = format!("$LDS.{}", crate::core::nuid());
        let acc = Arc::new(Account {
            track_interest,
            mappings: std::sync::OnceLock::new(),
            spools: parking_lot::RwLock::new(Vec::new()),
            spooling: std::sync::atomic::AtomicBool::new(false),
            lds,
            interest: parking_lot::Mutex::new(InterestMap::default()),
            links: parking_lot::RwLock::new(Vec::new()),
            name: name.to_string(),
            shared_name: Arc::from(name),
            sublist: Sublist::with_cache(cache),
            num_conns: AtomicUsize::new(0),
            num_leafs: AtomicUsize::new(0),
            in_msgs: AtomicU64::new(0),
            out_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            out_bytes: AtomicU64::new(0),
        });
        if track_interest {
            // The loop-detection subject is local interest of every account with links.
            let key = (Arc::from(acc.lds.as_str()), None);
            acc.interest_add(&key, 0, crate::core::interest::LinkClass::Client, 1);
        }
        acc
    }

    /// Installs the account's mappings (once; an empty set is not installed). Each source
    /// becomes interest of the account, so links bring publishes on it here to be mapped.
    pub fn set_mappings(&self, m: crate::core::mapping::Mappings) {
        if m.sources().next().is_none() {
            return;
        }
        if self.track_interest {
            for src in m.sources() {
                let key = (Arc::from(src), None);
                self.interest_add(&key, 0, crate::core::interest::LinkClass::Client, 1);
            }
        }
        let _ = self.mappings.set(m);
    }

    /// Subscribes an internal connection to `subject` (advertised to links like a client's
    /// interest). Returns false when the subject is not valid.
    pub fn subscribe_internal(&self, conn: &Arc<ConnShared>, subject: &str, sid: Bytes) -> bool {
        let sub = SubRef(Arc::new(Subscription::new(
            conn.clone(),
            subject.as_bytes(),
            None,
            &sid,
            None,
        )));
        if self.sublist.insert(subject, None, sub.clone()).is_err() {
            return false;
        }
        conn.num_subs.fetch_add(1, Ordering::Relaxed);
        if self.track_interest {
            let key = Account::key_of(&sub);
            self.interest_add(&key, conn.cid, crate::core::interest::LinkClass::Client, 1);
        }
        true
    }

    /// The interest key of a subscription.
    pub fn key_of(sub: &Subscription) -> crate::core::interest::Key {
        (Arc::from(sub.subject_str()), sub.queue_str().map(Arc::from))
    }

    pub fn client_connections(&self) -> usize {
        self.num_conns.load(Ordering::Relaxed)
    }
}
