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
pub struct Subscription {
    pub conn: Arc<ConnShared>,
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    pub sid: Bytes,
    /// Auto-unsubscribe after this many messages (0 = never).
    pub max: AtomicU64,
    pub delivered: AtomicU64,
    /// An in-process receiver: messages go to it instead of the connection's buffer.
    pub sink: Option<Arc<dyn Sink>>,
}

impl Subscription {
    pub fn subject_str(&self) -> &str {
        std::str::from_utf8(&self.subject).unwrap_or("")
    }
    pub fn queue_str(&self) -> Option<&str> {
        self.queue
            .as_ref()
            .map(|q| std::str::from_utf8(q).unwrap_or(""))
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
}

impl Account {
    pub fn new(name: &str, cache: bool, track_interest: bool) -> Arc<Self> {
        let lds = format!("$LDS.{}", crate::core::nuid());
        let acc = Arc::new(Account {
            track_interest,
            lds,
            interest: parking_lot::Mutex::new(InterestMap::default()),
            links: parking_lot::RwLock::new(Vec::new()),
            name: name.to_string(),
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

    /// Subscribes an internal connection to `subject` (advertised to links like a client's
    /// interest). Returns false when the subject is not valid.
    pub fn subscribe_internal(&self, conn: &Arc<ConnShared>, subject: &str, sid: Bytes) -> bool {
        let sub = SubRef(Arc::new(Subscription {
            conn: conn.clone(),
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            queue: None,
            sid,
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            sink: None,
        }));
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
