//! One interest model for every link: per account, a reference count per (subject, queue)
//! and per source connection; each link is told the interest it should hear, computed by
//! one rule table, and only changes cross the wire (LS+/LS-).
//!
//! ## The forwarding rule (see docs/ARCHITECTURE.md)
//!
//! Every connection has a class: `Client`, `Downlink` (a leaf that connected to us: we are
//! its hub), `Uplink` (we connected to it: it is our hub) or `Mesh` (a link between two
//! *regional hubs*, servers that both accept leaf connections and solicit remotes).
//! [`msg_allowed`] says which class may forward to which; interest flows the opposite way,
//! so [`interest_allowed`]`(src, dst) == msg_allowed(dst, src)`, which keeps what we
//! advertise and what we forward consistent by construction:
//!
//! | from \ to | Client | Downlink | Uplink | Mesh | Route |
//! |-----------|--------|----------|--------|------|-------|
//! | Client    | yes    | yes      | yes    | yes  | yes   |
//! | Downlink  | yes    | yes*     | yes    | yes  | yes   |
//! | Uplink    | yes    | yes      | no     | no   | no    |
//! | Mesh      | yes    | yes      | no     | no   | no    |
//! | Route     | yes    | yes      | no     | no   | no    |
//!
//! (*never back to the link it came from.) Trees (hub and spoke, chains) work because
//! downlinks hear everything and uplinks hear only what is below us; meshes of regional
//! hubs work like gateways: one hop, split horizon, so every region gets a message once.
//! Two regional hubs that solicit each other have two connections: only one of them (the
//! one solicited by the server with the smaller id) carries our interest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::core::account::{Account, SubRef, Subscription};
use crate::core::conn::ConnShared;

/// What kind of peer a connection is, for forwarding decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkClass {
    Client = 0,
    Downlink = 1,
    Uplink = 2,
    Mesh = 3,
    Route = 4,
}

impl LinkClass {
    pub fn from_u8(v: u8) -> LinkClass {
        match v {
            1 => LinkClass::Downlink,
            2 => LinkClass::Uplink,
            3 => LinkClass::Mesh,
            4 => LinkClass::Route,
            _ => LinkClass::Client,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LinkClass::Client => "client",
            LinkClass::Downlink => "downlink",
            LinkClass::Uplink => "uplink",
            LinkClass::Mesh => "mesh",
            LinkClass::Route => "route",
        }
    }
}

/// May a message that arrived from `src` be forwarded to `dst`?
#[inline]
pub fn msg_allowed(src: LinkClass, dst: LinkClass) -> bool {
    use LinkClass::*;
    match dst {
        Client | Downlink => true,
        Uplink | Mesh | Route => matches!(src, Client | Downlink),
    }
}

/// May interest learned from `src` be advertised to `dst`?
#[inline]
pub fn interest_allowed(src: LinkClass, dst: LinkClass) -> bool {
    msg_allowed(dst, src)
}

/// An interest key: subject and optional queue group.
pub type Key = (Arc<str>, Option<Arc<str>>);

#[derive(Debug, Clone)]
struct Source {
    cid: u64,
    class: LinkClass,
    count: u32,
    /// The server behind a link source: interest is never advertised back to the server
    /// it came from, whichever connection to it (two servers that solicit each other have
    /// two).
    peer: Option<Arc<str>>,
}

/// Per-account interest: key → the sources that want it.
#[derive(Default)]
pub struct InterestMap {
    keys: HashMap<Key, Vec<Source>>,
}

/// A leaf connection as the interest model sees it.
pub struct Link {
    pub conn: Arc<ConnShared>,
    pub peer_id: String,
    pub peer_name: String,
    pub solicited: bool,
    /// The URL we dialled (solicited links) or the peer address.
    pub remote_url: String,
    /// Interest on these subjects is never advertised to this link (`deny_imports`).
    pub deny_advertise: Vec<String>,
    /// Messages on these subjects from this link are dropped (`deny_imports`); the peer's
    /// interest in them is kept (it asks for what we send, which `deny_exports` governs).
    pub deny_receive: Vec<String>,
    /// False for the standby connection of a mesh pair: it carries none of our interest.
    pub advertise: AtomicBool,
    /// What we advertised to this link (key → weight); changed only under the account's
    /// interest lock.
    smap: Mutex<HashMap<Key, u32>>,
    /// Interest this link gave us, as Sublist entries.
    pub remote_subs: Mutex<HashMap<Key, SubRef>>,
    pub reconnects: AtomicU64,
    /// Route links carry every account: interest lines name this one (`RS+ acc subj`).
    pub route_account: Option<Bytes>,
    /// A leaf that authenticated as a client user: that user's permissions (publish: what
    /// it may send us; subscribe: what it may receive).
    pub perms: Option<Arc<crate::core::perms::Perms>>,
    /// Only interest these rules permit is advertised to the peer (routes:
    /// `cluster.permissions.import`, nats-server's `canImport`).
    pub import: Option<Arc<crate::core::perms::SubjectRules>>,
    /// Interest entries this link may give us (0 = unlimited): a peer flooding LS+ is
    /// bounded like a client flooding SUB (`max_subscriptions`).
    pub max_subs: usize,
    /// Set once the peer went over `max_subs` (logged and answered once per link).
    pub subs_exceeded: AtomicBool,
    /// Remapped links (`account_mappings`): what is advertised under each name on the
    /// wire, summed over the local keys that translate to it (several can: `>` and
    /// `events.>` both advertise `site-a.events.>`).
    wire: Mutex<HashMap<Key, u32>>,
    /// Remapped links: the weight of each key the peer advertised (its names), and the
    /// sum of those weights per local key they translate to.
    pub remap_in: Mutex<RemapIn>,
}

/// Interest a remapped link gave us, in the peer's names and in ours.
#[derive(Default)]
pub struct RemapIn {
    pub theirs: HashMap<Key, u32>,
    pub ours: HashMap<Key, u32>,
}

impl Link {
    pub fn new(
        conn: Arc<ConnShared>,
        peer_id: String,
        peer_name: String,
        solicited: bool,
        remote_url: String,
        deny_advertise: Vec<String>,
        deny_receive: Vec<String>,
    ) -> Link {
        Link {
            conn,
            peer_id,
            peer_name,
            solicited,
            remote_url,
            deny_advertise,
            deny_receive,
            advertise: AtomicBool::new(true),
            smap: Mutex::new(HashMap::new()),
            remote_subs: Mutex::new(HashMap::new()),
            reconnects: AtomicU64::new(0),
            route_account: None,
            perms: None,
            import: None,
            max_subs: 0,
            subs_exceeded: AtomicBool::new(false),
            wire: Mutex::new(HashMap::new()),
            remap_in: Mutex::new(RemapIn::default()),
        }
    }

    fn plus(&self, b: &mut bytes::BytesMut, subject: &[u8], queue: Option<(&[u8], u32)>) {
        match &self.route_account {
            Some(acc) => canopy_proto::encode_rs_plus(b, acc, subject, queue),
            None => canopy_proto::encode_ls_plus(b, subject, queue),
        }
    }

    fn minus(&self, b: &mut bytes::BytesMut, subject: &[u8], queue: Option<&[u8]>) {
        match &self.route_account {
            Some(acc) => canopy_proto::encode_rs_minus(b, acc, subject, queue),
            None => canopy_proto::encode_ls_minus(b, subject, queue),
        }
    }

    pub fn class(&self) -> LinkClass {
        LinkClass::from_u8(self.conn.link_class.load(Ordering::Relaxed))
    }

    /// Number of keys advertised to the peer (for monitoring).
    pub fn advertised(&self) -> usize {
        self.smap.lock().len()
    }

    /// Subjects of the interest the peer gave us (for `/leafz?subs=1`).
    pub fn remote_subjects(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .remote_subs
            .lock()
            .keys()
            .map(|(s, q)| match q {
                Some(q) => format!("{s} {q}"),
                None => s.to_string(),
            })
            .collect();
        v.sort();
        v
    }
}

fn denied(list: &[String], subject: &str) -> bool {
    list.iter()
        .any(|d| canopy_subject::subject_is_subset_of(subject, d))
}

impl Account {
    /// Removes a client subscription from this account (UNSUB, auto-unsubscribe, close),
    /// once.
    pub fn drop_subscription(&self, sub: &crate::core::account::SubRef) {
        if self.sublist.remove(sub.subject_str(), sub.queue_str(), sub) {
            sub.conn
                .num_subs
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if self.track_interest {
                let key = Account::key_of(sub);
                self.interest_add(&key, sub.conn.cid, LinkClass::Client, -1);
            }
        }
    }

    /// Records a change of `delta` in one source's count for `key` and tells every link
    /// whose advertised weight changes.
    pub fn interest_add(&self, key: &Key, cid: u64, class: LinkClass, delta: i64) {
        let mut map = self.interest.lock();
        let sources = map.keys.entry(key.clone()).or_default();
        match sources.iter_mut().position(|s| s.cid == cid) {
            Some(i) => {
                let n = (sources[i].count as i64 + delta).max(0) as u32;
                if n == 0 {
                    sources.swap_remove(i);
                } else {
                    sources[i].count = n;
                }
            }
            None if delta > 0 => sources.push(Source {
                cid,
                class,
                count: delta as u32,
                peer: None,
            }),
            None => {}
        }
        self.propagate_key(&mut map, key, Some(cid));
    }

    /// Sets one link source's count for `key` (queue weights from a link are absolute).
    pub fn interest_set(&self, key: &Key, link: &Link, count: u32) {
        let cid = link.conn.cid;
        let class = link.class();
        let mut map = self.interest.lock();
        let sources = map.keys.entry(key.clone()).or_default();
        match sources.iter_mut().position(|s| s.cid == cid) {
            Some(i) if count == 0 => {
                sources.swap_remove(i);
            }
            Some(i) => sources[i].count = count,
            None if count > 0 => sources.push(Source {
                cid,
                class,
                count,
                peer: (!link.peer_id.is_empty()).then(|| Arc::from(link.peer_id.as_str())),
            }),
            None => {}
        }
        self.propagate_key(&mut map, key, Some(cid));
    }

    fn propagate_key(&self, map: &mut InterestMap, key: &Key, from: Option<u64>) {
        let links = self.links.read();
        let sources = map.keys.get(key).cloned().unwrap_or_default();
        for link in links.iter() {
            if Some(link.conn.cid) == from {
                continue;
            }
            sync_key(link, key, &sources);
        }
        if sources.is_empty() {
            map.keys.remove(key);
        }
    }

    /// Registers a link and sends it the whole interest it should hear.
    pub fn add_link(&self, link: Arc<Link>) {
        let map = self.interest.lock();
        self.links.write().push(link.clone());
        sync_link(&map, &link);
    }

    /// Re-sends what changed for every link (after a link changed class or standby state).
    pub fn resync_links(&self) {
        let map = self.interest.lock();
        for link in self.links.read().iter() {
            sync_link(&map, link);
        }
    }

    /// Forgets a closed link: its interest leaves the Sublist and the other links.
    pub fn remove_link(&self, link: &Arc<Link>) {
        let mut map = self.interest.lock();
        self.links.write().retain(|l| !Arc::ptr_eq(l, link));
        let subs: Vec<(Key, SubRef)> = link.remote_subs.lock().drain().collect();
        let cid = link.conn.cid;
        for (key, sub) in subs {
            self.sublist.remove(&key.0, key.1.as_deref(), &sub);
            if let Some(sources) = map.keys.get_mut(&key) {
                sources.retain(|s| s.cid != cid);
            }
            self.propagate_key(&mut map, &key, Some(cid));
        }
    }

    /// The links of this account.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.links.read().clone()
    }

    /// Updates the interest a link gave us (LS+ with `weight` for queues, LS-: 0).
    /// Returns false (and changes nothing) when the link is at its `max_subs`.
    pub fn link_interest(&self, link: &Arc<Link>, key: Key, weight: u32) -> bool {
        {
            let mut subs = link.remote_subs.lock();
            if weight == 0 {
                if let Some(sub) = subs.remove(&key) {
                    self.sublist.remove(&key.0, key.1.as_deref(), &sub);
                }
            } else if !subs.contains_key(&key) {
                if link.max_subs > 0 && subs.len() >= link.max_subs {
                    return false;
                }
                let sub = SubRef(Arc::new(Subscription::new(
                    link.conn.clone(),
                    key.0.as_bytes(),
                    key.1.as_deref().map(str::as_bytes),
                    b"",
                    None,
                )));
                if self
                    .sublist
                    .insert(&key.0, key.1.as_deref(), sub.clone())
                    .is_err()
                {
                    return true;
                }
                subs.insert(key.clone(), sub);
            }
        }
        self.interest_set(&key, link, weight);
        true
    }

    /// Total number of interest keys (for monitoring).
    pub fn interest_keys(&self) -> usize {
        self.interest.lock().keys.len()
    }
}

/// Brings one key's advertisement to `link` in line with the sources.
fn sync_key(link: &Link, key: &Key, sources: &[Source]) {
    let dst = link.class();
    let mut desired: u32 = 0;
    let imported = link
        .import
        .as_ref()
        .is_none_or(|r| r.permits_subscribe(&key.0));
    // A remapped link's deny rules are in the names on the wire: checked per wire name.
    let remap = link.conn.remap.get();
    let allowed = remap.is_some() || !denied(&link.deny_advertise, &key.0);
    if link.advertise.load(Ordering::Relaxed) && imported && allowed {
        for s in sources {
            let same_peer = s
                .peer
                .as_deref()
                .is_some_and(|p| p == link.peer_id.as_str());
            if s.cid != link.conn.cid && !same_peer && interest_allowed(s.class, dst) {
                desired += s.count;
            }
        }
    }
    let mut smap = link.smap.lock();
    let old = smap.get(key).copied().unwrap_or(0);
    if let Some(r) = remap {
        // Plain keys count once, queue keys by weight.
        let (old, desired) = match key.1 {
            None => (old.min(1), desired.min(1)),
            Some(_) => (old, desired),
        };
        if old == desired {
            return;
        }
        if desired > 0 {
            smap.insert(key.clone(), desired);
        } else {
            smap.remove(key);
        }
        for w in r.interest(&key.0, crate::core::remap::Dir::ToHub) {
            if !denied(&link.deny_advertise, &w) {
                wire_update(link, (Arc::from(w), key.1.clone()), old, desired);
            }
        }
        return;
    }
    let subject = key.0.as_bytes();
    match &key.1 {
        None => {
            if desired > 0 && old == 0 {
                smap.insert(key.clone(), 1);
                link.conn.enqueue(|b| link.plus(b, subject, None));
                link.conn.flush_signal();
            } else if desired == 0 && old > 0 {
                smap.remove(key);
                link.conn.enqueue(|b| link.minus(b, subject, None));
                link.conn.flush_signal();
            }
        }
        Some(q) => {
            if desired == old {
                return;
            }
            let q = q.as_bytes();
            if desired > 0 {
                smap.insert(key.clone(), desired);
                link.conn
                    .enqueue(|b| link.plus(b, subject, Some((q, desired))));
            } else {
                smap.remove(key);
                link.conn.enqueue(|b| link.minus(b, subject, Some(q)));
            }
            link.conn.flush_signal();
        }
    }
}

/// Moves one wire key of a remapped link from `old` to `new` contributed by one local
/// key, and tells the peer when the total changes as it must hear it.
fn wire_update(link: &Link, wkey: Key, old: u32, new: u32) {
    let mut wire = link.wire.lock();
    let before = wire.get(&wkey).copied().unwrap_or(0);
    let after = (before + new).saturating_sub(old);
    if after == 0 {
        wire.remove(&wkey);
    } else {
        wire.insert(wkey.clone(), after);
    }
    let subject = wkey.0.as_bytes();
    let send = match &wkey.1 {
        None => (before == 0) != (after == 0),
        Some(_) => before != after,
    };
    if !send {
        return;
    }
    let q = wkey.1.as_deref().map(str::as_bytes);
    if after > 0 {
        link.conn
            .enqueue(|b| link.plus(b, subject, q.map(|q| (q, after))));
    } else {
        link.conn.enqueue(|b| link.minus(b, subject, q));
    }
    link.conn.flush_signal();
}

fn sync_link(map: &InterestMap, link: &Link) {
    let mut keys: Vec<Key> = map.keys.keys().cloned().collect();
    for k in link.smap.lock().keys() {
        if !map.keys.contains_key(k) {
            keys.push(k.clone());
        }
    }
    for key in keys {
        let sources = map.keys.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        sync_key(link, &key, sources);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LinkClass::*;

    #[test]
    fn interest_mirrors_forwarding() {
        let all = [Client, Downlink, Uplink, Mesh, Route];
        for s in all {
            for d in all {
                assert_eq!(interest_allowed(s, d), msg_allowed(d, s));
            }
        }
        // Split horizon on the mesh, and nothing from a hub back up to another hub.
        assert!(!msg_allowed(Mesh, Mesh));
        assert!(!msg_allowed(Uplink, Uplink));
        assert!(!msg_allowed(Uplink, Mesh));
        assert!(msg_allowed(Downlink, Downlink));
        assert!(msg_allowed(Mesh, Downlink));
        // A cluster is a full mesh of routes: one hop.
        assert!(!msg_allowed(Route, Route));
        assert!(msg_allowed(Route, Downlink));
        assert!(!msg_allowed(Uplink, Route));
    }
}
