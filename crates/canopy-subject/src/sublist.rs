//! The subscription index: a token trie with a bounded result cache, generic over the stored
//! item (the server stores its own subscription handles).
//!
//! Layout: each trie level maps literal tokens to nodes and has at most one `*` node and one
//! `>` node. A node holds plain items and queue items grouped by queue name, plus the next
//! level. Everything lives behind one `parking_lot::RwLock`.
//!
//! Cache invariant (a stale entry is a message-delivery bug): every cached entry equals what a
//! trie walk would return *now*. Insert keeps it by adding the new item to exactly the cached
//! entries its subject matches (one hash lookup for a literal subject, a walk of the cache for a
//! wildcard); remove evicts exactly those entries. A miss walks the trie under the read lock and
//! stores the result only if no insert/remove happened in between (checked with the
//! generation counter, which only changes under the write lock). The cache holds at most
//! [`CACHE_MAX`] entries and is cut down to [`CACHE_SWEEP`] when it grows past that.
//!
//! Duplicates are kept: inserting the same (subject, queue, item) twice stores it twice and
//! [`Sublist::remove`] takes one out. Results are multisets; their order is unspecified.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::matching::subject_matches;
use crate::validate::{is_literal, is_well_formed, tokens, FWC, PWC, TSEP};

/// Cache size above which the cache is trimmed.
pub const CACHE_MAX: usize = 1024;
/// Number of entries kept when the cache is trimmed.
pub const CACHE_SWEEP: usize = 256;

/// Why an insert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SublistError {
    /// Empty subject, empty token, or a token after `>`.
    #[error("invalid subject {subject:?}")]
    InvalidSubject { subject: String },
    /// An empty queue name (use `None` for a plain subscription).
    #[error("invalid queue name {queue:?} for subject {subject:?}")]
    InvalidQueue { subject: String, queue: String },
}

/// The items one queue group contributes to a match. The caller picks one member.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueGroup<T> {
    pub name: Arc<str>,
    pub members: Vec<T>,
}

/// Everything a subject matches: plain items, and queue items grouped by queue name (a group
/// gathers members from every matching filter, e.g. `foo.*` and `foo.bar` with queue `q`).
#[derive(Debug, Clone, PartialEq)]
pub struct MatchResult<T> {
    pub psubs: Vec<T>,
    pub qsubs: Vec<QueueGroup<T>>,
}

impl<T> Default for MatchResult<T> {
    fn default() -> Self {
        MatchResult {
            psubs: Vec::new(),
            qsubs: Vec::new(),
        }
    }
}

impl<T> MatchResult<T> {
    /// No plain items and no queue groups.
    pub fn is_empty(&self) -> bool {
        self.psubs.is_empty() && self.qsubs.is_empty()
    }

    /// Number of deliveries this result implies: one per plain item plus one per queue group
    /// (nats-server's fan-out count).
    pub fn len(&self) -> usize {
        self.psubs.len() + self.qsubs.len()
    }
}

impl<T: Clone> MatchResult<T> {
    fn add_node(&mut self, n: &Node<T>) {
        self.psubs.extend_from_slice(&n.psubs);
        for (name, members) in &n.qsubs {
            match self.qsubs.iter_mut().find(|g| g.name == *name) {
                Some(g) => g.members.extend_from_slice(members),
                None => self.qsubs.push(QueueGroup {
                    name: name.clone(),
                    members: members.clone(),
                }),
            }
        }
    }

    fn add_one(&mut self, queue: Option<&Arc<str>>, item: T) {
        match queue {
            None => self.psubs.push(item),
            Some(name) => match self.qsubs.iter_mut().find(|g| g.name == *name) {
                Some(g) => g.members.push(item),
                None => self.qsubs.push(QueueGroup {
                    name: name.clone(),
                    members: vec![item],
                }),
            },
        }
    }
}

/// Counters in the shape of nats-server's `SublistStats` (the `/subsz` fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SublistStats {
    pub num_subscriptions: u32,
    pub num_cache: u32,
    pub num_inserts: u64,
    pub num_removes: u64,
    pub num_matches: u64,
    pub cache_hit_rate: f64,
    pub max_fanout: u32,
    pub avg_fanout: f64,
    // Raw sums kept so that `add` can recompute the averages over several sublists.
    cache_hits: u64,
    total_fanout: u64,
    cache_entries: u64,
}

impl SublistStats {
    /// Folds another sublist's stats into this one (for `/subsz` summed over accounts).
    pub fn add(&mut self, other: &SublistStats) {
        self.num_subscriptions = self
            .num_subscriptions
            .saturating_add(other.num_subscriptions);
        self.num_cache = self.num_cache.saturating_add(other.num_cache);
        self.num_inserts += other.num_inserts;
        self.num_removes += other.num_removes;
        self.num_matches += other.num_matches;
        self.cache_hits += other.cache_hits;
        self.max_fanout = self.max_fanout.max(other.max_fanout);
        self.total_fanout += other.total_fanout;
        self.cache_entries += other.cache_entries;
        self.recompute();
    }

    fn recompute(&mut self) {
        self.cache_hit_rate = if self.num_matches > 0 {
            self.cache_hits as f64 / self.num_matches as f64
        } else {
            0.0
        };
        self.avg_fanout = if self.cache_entries > 0 {
            self.total_fanout as f64 / self.cache_entries as f64
        } else {
            0.0
        };
    }
}

struct Node<T> {
    next: Option<Box<Level<T>>>,
    psubs: Vec<T>,
    qsubs: Vec<(Arc<str>, Vec<T>)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            psubs: Vec::new(),
            qsubs: Vec::new(),
        }
    }
}

impl<T: PartialEq> Node<T> {
    fn has_subs(&self) -> bool {
        !self.psubs.is_empty() || !self.qsubs.is_empty()
    }

    /// Nothing stored here or below (`next` is reset to `None` when it empties).
    fn is_empty(&self) -> bool {
        !self.has_subs() && self.next.is_none()
    }

    /// Stores `item`; returns the queue name as stored, for the cache update.
    fn add(&mut self, queue: Option<&str>, item: T) -> Option<Arc<str>> {
        let Some(q) = queue else {
            // Most subjects have one subscriber: start with room for one, not four.
            if self.psubs.capacity() == 0 {
                self.psubs.reserve_exact(1);
            }
            self.psubs.push(item);
            return None;
        };
        if let Some((name, members)) = self.qsubs.iter_mut().find(|(n, _)| &**n == q) {
            members.push(item);
            return Some(name.clone());
        }
        let name: Arc<str> = Arc::from(q);
        self.qsubs.push((name.clone(), vec![item]));
        Some(name)
    }

    /// Removes one occurrence of `item`.
    fn remove(&mut self, queue: Option<&str>, item: &T) -> bool {
        match queue {
            None => match self.psubs.iter().position(|x| x == item) {
                Some(i) => {
                    self.psubs.swap_remove(i);
                    true
                }
                None => false,
            },
            Some(q) => {
                let Some(gi) = self.qsubs.iter().position(|(n, _)| &**n == q) else {
                    return false;
                };
                let members = &mut self.qsubs[gi].1;
                let Some(i) = members.iter().position(|x| x == item) else {
                    return false;
                };
                members.swap_remove(i);
                if members.is_empty() {
                    self.qsubs.swap_remove(gi);
                }
                true
            }
        }
    }
}

struct Level<T> {
    nodes: HashMap<Box<str>, Node<T>>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            nodes: HashMap::new(),
            pwc: None,
            fwc: None,
        }
    }
}

impl<T: PartialEq> Level<T> {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }

    fn child_mut(&mut self, tok: &str) -> Option<&mut Node<T>> {
        match tok {
            PWC => self.pwc.as_deref_mut(),
            FWC => self.fwc.as_deref_mut(),
            _ => self.nodes.get_mut(tok),
        }
    }

    fn child_or_insert(&mut self, tok: &str) -> &mut Node<T> {
        match tok {
            PWC => self.pwc.get_or_insert_with(Default::default),
            FWC => self.fwc.get_or_insert_with(Default::default),
            _ => {
                // Look up before inserting so an existing token costs no key allocation.
                if !self.nodes.contains_key(tok) {
                    self.nodes.insert(tok.into(), Node::default());
                }
                self.nodes
                    .get_mut(tok)
                    .expect("node was present or just inserted")
            }
        }
    }

    fn remove_child(&mut self, tok: &str) {
        match tok {
            PWC => self.pwc = None,
            FWC => self.fwc = None,
            _ => {
                self.nodes.remove(tok);
            }
        }
    }
}

/// Splits off the first token: `("a", Some("b.c"))` for `"a.b.c"`.
#[inline]
fn split_first(subject: &str) -> (&str, Option<&str>) {
    let mut t = tokens(subject);
    let first = t.next().unwrap_or(subject);
    (first, t.rest)
}

/// A published subject can match something only if it has no empty token: it is not
/// empty, neither starts nor ends with a separator and has no two in a row.
#[inline]
fn is_matchable(subject: &str) -> bool {
    let b = subject.as_bytes();
    b.first().is_some_and(|&c| c != TSEP)
        && b.last().is_some_and(|&c| c != TSEP)
        && !b.windows(2).any(|w| w[0] == TSEP && w[1] == TSEP)
}

/// Collects every node matching the (matchable) `subject` below `level`. Recursion happens
/// only on `*` branches; the literal path is a loop.
fn collect<T: Clone + PartialEq>(
    mut level: &Level<T>,
    mut subject: &str,
    out: &mut MatchResult<T>,
) {
    loop {
        let (tok, rest) = split_first(subject);
        if let Some(f) = &level.fwc {
            out.add_node(f);
        }
        if let Some(p) = &level.pwc {
            match rest {
                None => out.add_node(p),
                Some(r) => {
                    if let Some(next) = &p.next {
                        collect(next, r, out);
                    }
                }
            }
        }
        let Some(n) = level.nodes.get(tok) else {
            return;
        };
        match (rest, &n.next) {
            (None, _) => {
                out.add_node(n);
                return;
            }
            (Some(r), Some(next)) => {
                level = next;
                subject = r;
            }
            (Some(_), None) => return,
        }
    }
}

/// Like [`collect`] but stops at the first node with any subscription.
fn any_match<T: PartialEq>(mut level: &Level<T>, mut subject: &str) -> bool {
    loop {
        let (tok, rest) = split_first(subject);
        if level.fwc.as_ref().is_some_and(|f| f.has_subs()) {
            return true;
        }
        if let Some(p) = &level.pwc {
            let hit = match rest {
                None => p.has_subs(),
                Some(r) => p.next.as_ref().is_some_and(|next| any_match(next, r)),
            };
            if hit {
                return true;
            }
        }
        let Some(n) = level.nodes.get(tok) else {
            return false;
        };
        match (rest, &n.next) {
            (None, _) => return n.has_subs(),
            (Some(r), Some(next)) => {
                level = next;
                subject = r;
            }
            (Some(_), None) => return false,
        }
    }
}

/// Removes one occurrence under the (well-formed) filter `subject`, pruning emptied nodes.
fn remove_rec<T: PartialEq>(
    level: &mut Level<T>,
    subject: &str,
    queue: Option<&str>,
    item: &T,
) -> bool {
    let (tok, rest) = split_first(subject);
    let Some(node) = level.child_mut(tok) else {
        return false;
    };
    let found = match rest {
        None => node.remove(queue, item),
        Some(r) => match node.next.as_deref_mut() {
            Some(next) => {
                let found = remove_rec(next, r, queue, item);
                if found && next.is_empty() {
                    node.next = None;
                }
                found
            }
            None => false,
        },
    };
    if found && node.is_empty() {
        level.remove_child(tok);
    }
    found
}

type AllEntry<T> = (String, Option<String>, T);

fn collect_all<T: Clone>(level: &Level<T>, prefix: &mut String, out: &mut Vec<AllEntry<T>>) {
    let children = level
        .nodes
        .iter()
        .map(|(t, n)| (&**t, n))
        .chain(level.pwc.as_deref().map(|n| (PWC, n)))
        .chain(level.fwc.as_deref().map(|n| (FWC, n)));
    for (tok, node) in children {
        let len = prefix.len();
        if len > 0 {
            prefix.push('.');
        }
        prefix.push_str(tok);
        for item in &node.psubs {
            out.push((prefix.clone(), None, item.clone()));
        }
        for (name, members) in &node.qsubs {
            for item in members {
                out.push((prefix.clone(), Some(name.to_string()), item.clone()));
            }
        }
        if let Some(next) = &node.next {
            collect_all(next, prefix, out);
        }
        prefix.truncate(len);
    }
}

type Cache<T> = HashMap<Box<str>, Arc<MatchResult<T>>>;

struct Inner<T> {
    root: Level<T>,
    cache: Option<Cache<T>>,
    count: usize,
    inserts: u64,
    removes: u64,
}

/// The subscription index. See the module docs for the design and the cache invariant.
pub struct Sublist<T> {
    inner: RwLock<Inner<T>>,
    /// Shared result for "nothing matched", so misses with no interest do not allocate.
    empty: Arc<MatchResult<T>>,
    /// Bumped under the write lock by every successful insert and remove.
    genid: AtomicU64,
    matches: AtomicU64,
    misses: AtomicU64,
    cache_max: usize,
    cache_sweep: usize,
}

impl<T: Clone + PartialEq + Send + Sync> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for Sublist<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("Sublist")
            .field("count", &inner.count)
            .field("cache", &inner.cache.as_ref().map(HashMap::len))
            .field("generation", &self.genid.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Clone + PartialEq + Send + Sync> Sublist<T> {
    /// A sublist with the result cache enabled.
    pub fn new() -> Self {
        Self::with_cache(true)
    }

    /// A sublist with or without the result cache.
    pub fn with_cache(enabled: bool) -> Self {
        Self::with_cache_limits(enabled, CACHE_MAX, CACHE_SWEEP)
    }

    fn with_cache_limits(enabled: bool, cache_max: usize, cache_sweep: usize) -> Self {
        Sublist {
            inner: RwLock::new(Inner {
                root: Level::default(),
                cache: enabled.then(HashMap::new),
                count: 0,
                inserts: 0,
                removes: 0,
            }),
            empty: Arc::new(MatchResult::default()),
            genid: AtomicU64::new(0),
            matches: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            cache_max,
            cache_sweep: cache_sweep.min(cache_max),
        }
    }

    /// True if the result cache is enabled.
    pub fn cache_enabled(&self) -> bool {
        self.inner.read().cache.is_some()
    }

    /// Adds `item` under `subject` (wildcards allowed), in queue group `queue` if given.
    /// Accepts exactly what nats-server's Sublist accepts ([`crate::is_well_formed`]).
    pub fn insert(&self, subject: &str, queue: Option<&str>, item: T) -> Result<(), SublistError> {
        if !is_well_formed(subject) {
            return Err(SublistError::InvalidSubject {
                subject: subject.to_string(),
            });
        }
        if queue == Some("") {
            return Err(SublistError::InvalidQueue {
                subject: subject.to_string(),
                queue: String::new(),
            });
        }
        let literal = is_literal(subject);
        let mut guard = self.inner.write();
        let inner = &mut *guard;

        let mut level = &mut inner.root;
        let mut toks = tokens(subject);
        let mut tok = toks.next().unwrap_or_default();
        let node = loop {
            let node = level.child_or_insert(tok);
            match toks.next() {
                None => break node,
                Some(t) => {
                    tok = t;
                    level = node.next.get_or_insert_with(Default::default);
                }
            }
        };
        let cache_item = inner.cache.as_ref().map(|_| item.clone());
        let qname = node.add(queue, item);

        if let (Some(cache), Some(item)) = (inner.cache.as_mut(), cache_item) {
            if literal {
                if let Some(r) = cache.get_mut(subject) {
                    Arc::make_mut(r).add_one(qname.as_ref(), item);
                }
            } else {
                for (key, r) in cache.iter_mut() {
                    if subject_matches(subject, key) {
                        Arc::make_mut(r).add_one(qname.as_ref(), item.clone());
                    }
                }
            }
        }
        inner.count += 1;
        inner.inserts += 1;
        self.genid.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Removes one occurrence of `item` stored under exactly (`subject`, `queue`). Returns
    /// false if there was none.
    pub fn remove(&self, subject: &str, queue: Option<&str>, item: &T) -> bool {
        if !is_well_formed(subject) {
            return false;
        }
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        if !remove_rec(&mut inner.root, subject, queue, item) {
            return false;
        }
        if let Some(cache) = inner.cache.as_mut() {
            if is_literal(subject) {
                cache.remove(subject);
            } else {
                cache.retain(|key, _| !subject_matches(subject, key));
            }
        }
        inner.count -= 1;
        inner.removes += 1;
        self.genid.fetch_add(1, Ordering::Release);
        true
    }

    /// Everything that `subject` matches. The subject is taken literally (a `*` in it is just
    /// a character); a subject with an empty token matches nothing. On a cache hit this is a
    /// hash lookup under the read lock and an `Arc` clone.
    pub fn matches(&self, subject: &str) -> Arc<MatchResult<T>> {
        self.match_with_generation(subject).0
    }

    /// [`Sublist::matches`] plus the generation the result is valid for, read under the same
    /// lock: a caller-side cache keyed on it can never hold a result older than its key.
    pub fn match_with_generation(&self, subject: &str) -> (Arc<MatchResult<T>>, u64) {
        self.match_inner(subject, true)
    }

    /// [`Sublist::match_with_generation`] for a subject that is not expected again (a
    /// JetStream ack or a request's reply inbox): the cache is neither read (it would
    /// hash the whole subject for a miss) nor filled, which spares the write lock, the
    /// key's allocation and the sweeps. The answer is the same.
    pub fn match_once(&self, subject: &str) -> (Arc<MatchResult<T>>, u64) {
        self.match_inner(subject, false)
    }

    fn match_inner(&self, subject: &str, fill: bool) -> (Arc<MatchResult<T>>, u64) {
        self.matches.fetch_add(1, Ordering::Relaxed);
        let guard = self.inner.read();
        // Only changed under the write lock, so stable while we hold the read lock.
        let gen = self.genid.load(Ordering::Relaxed);
        if let Some(r) = guard
            .cache
            .as_ref()
            .filter(|_| fill)
            .and_then(|c| c.get(subject))
        {
            return (r.clone(), gen);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if !is_matchable(subject) {
            return (self.empty.clone(), gen);
        }
        let mut result = MatchResult::default();
        collect(&guard.root, subject, &mut result);
        let caching = fill && guard.cache.is_some();
        drop(guard);

        let result = if result.is_empty() {
            self.empty.clone()
        } else {
            Arc::new(result)
        };
        if caching {
            let mut guard = self.inner.write();
            // Store only if nothing changed since the walk; otherwise the result may be stale
            // for the cache (it is still a correct answer for this call at `gen`).
            if self.genid.load(Ordering::Relaxed) == gen {
                if let Some(cache) = guard.cache.as_mut() {
                    cache.insert(subject.into(), result.clone());
                    if cache.len() > self.cache_max {
                        let mut keep = self.cache_sweep;
                        cache.retain(|_, _| {
                            let k = keep > 0;
                            keep = keep.saturating_sub(1);
                            k
                        });
                    }
                }
            }
        }
        (result, gen)
    }

    /// True if `subject` would match anything. Never allocates; uses the cache when it has
    /// the subject and walks the trie (stopping at the first hit) otherwise.
    pub fn has_interest(&self, subject: &str) -> bool {
        let guard = self.inner.read();
        if let Some(r) = guard.cache.as_ref().and_then(|c| c.get(subject)) {
            return !r.is_empty();
        }
        is_matchable(subject) && any_match(&guard.root, subject)
    }

    /// Changes on every successful insert and remove.
    pub fn generation(&self) -> u64 {
        self.genid.load(Ordering::Acquire)
    }

    /// Number of stored items (each duplicate counts).
    pub fn count(&self) -> usize {
        self.inner.read().count
    }

    /// Every stored (subject, queue, item), one entry per stored occurrence.
    pub fn all(&self) -> Vec<(String, Option<String>, T)> {
        let guard = self.inner.read();
        let mut out = Vec::with_capacity(guard.count);
        let mut prefix = String::new();
        collect_all(&guard.root, &mut prefix, &mut out);
        out
    }

    /// Counters for `/subsz`. Fan-out figures are computed over the cached results, as
    /// nats-server does.
    pub fn stats(&self) -> SublistStats {
        // Misses first: a counted miss always has its match counted before it.
        let misses = self.misses.load(Ordering::Relaxed);
        let matches = self.matches.load(Ordering::Relaxed);
        let guard = self.inner.read();
        let mut st = SublistStats {
            num_subscriptions: u32::try_from(guard.count).unwrap_or(u32::MAX),
            num_inserts: guard.inserts,
            num_removes: guard.removes,
            num_matches: matches,
            cache_hits: matches.saturating_sub(misses),
            ..SublistStats::default()
        };
        if let Some(cache) = &guard.cache {
            st.num_cache = u32::try_from(cache.len()).unwrap_or(u32::MAX);
            let mut max = 0usize;
            for r in cache.values() {
                st.total_fanout += r.len() as u64;
                max = max.max(r.len());
            }
            st.max_fanout = u32::try_from(max).unwrap_or(u32::MAX);
            st.cache_entries = cache.len() as u64;
        }
        drop(guard);
        st.recompute();
        st
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    /// Normal form of a result: sorted plain items, groups sorted by name with sorted members.
    fn norm(r: &MatchResult<u32>) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
        let mut q: Vec<(String, Vec<u32>)> = r
            .qsubs
            .iter()
            .map(|g| (g.name.to_string(), sorted(&g.members)))
            .collect();
        q.sort();
        (sorted(&r.psubs), q)
    }

    #[test]
    fn match_once_answers_like_matches_without_filling_the_cache() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert("$JS.ACK.>", None, 1).unwrap();
        sl.insert("$JS.ACK.S.*.>", Some("q"), 2).unwrap();
        for i in 0..100 {
            let subject = format!("$JS.ACK.S.C.1.{i}.{i}.0.0");
            let (once, g1) = sl.match_once(&subject);
            let (full, g2) = sl.match_with_generation(&subject);
            assert_eq!(norm(&once), norm(&full));
            assert_eq!(g1, g2);
        }
        // Only the match_with_generation calls left entries behind.
        assert_eq!(sl.stats().num_cache, 100);
        sl.match_once("$JS.ACK.S.C.1.x.1.0.0");
        assert_eq!(sl.stats().num_cache, 100);
        // A subject in the cache gets the same answer.
        assert_eq!(norm(&sl.match_once("$JS.ACK.S.C.1.7.7.0.0").0).0, vec![1]);
    }

    type Model = Vec<(String, Option<String>, u32)>;

    fn brute(model: &Model, subject: &str) -> (Vec<u32>, Vec<(String, Vec<u32>)>) {
        let mut p = Vec::new();
        let mut q: Vec<(String, Vec<u32>)> = Vec::new();
        for (s, queue, item) in model {
            if !subject_matches(s, subject) {
                continue;
            }
            match queue {
                None => p.push(*item),
                Some(name) => match q.iter_mut().find(|(n, _)| n == name) {
                    Some((_, m)) => m.push(*item),
                    None => q.push((name.clone(), vec![*item])),
                },
            }
        }
        p.sort();
        for (_, m) in q.iter_mut() {
            m.sort();
        }
        q.sort();
        (p, q)
    }

    #[test]
    fn sublist_is_send_and_sync() {
        fn assert_send_sync<S: Send + Sync>() {}
        assert_send_sync::<Sublist<u32>>();
        assert_send_sync::<Sublist<Arc<String>>>();
        assert_send_sync::<Arc<MatchResult<Arc<String>>>>();
    }

    #[test]
    fn basic_literal_and_wildcards() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert("foo.bar", None, 1).unwrap();
        sl.insert("foo.*", None, 2).unwrap();
        sl.insert("foo.>", None, 3).unwrap();
        sl.insert(">", None, 4).unwrap();
        sl.insert("*.bar", Some("q"), 5).unwrap();
        sl.insert("foo.bar", Some("q"), 6).unwrap();
        sl.insert("foo.baz", None, 7).unwrap();
        assert_eq!(sl.count(), 7);

        let r = sl.matches("foo.bar");
        assert_eq!(sorted(&r.psubs), vec![1, 2, 3, 4]);
        assert_eq!(r.qsubs.len(), 1);
        assert_eq!(&*r.qsubs[0].name, "q");
        assert_eq!(sorted(&r.qsubs[0].members), vec![5, 6]);
        assert_eq!(r.len(), 5);

        assert_eq!(sorted(&sl.matches("foo.bar.baz").psubs), vec![3, 4]);
        assert_eq!(sorted(&sl.matches("foo").psubs), vec![4]);
        assert!(sl.matches("bar").qsubs.is_empty());
        assert!(sl.matches("foo..bar").is_empty());
        assert!(sl.matches("").is_empty());
        assert!(sl.matches("foo.").is_empty());
        assert!(sl.has_interest("foo.bar"));
        assert!(!sl.has_interest(""));
    }

    #[test]
    fn invalid_inserts_rejected() {
        let sl: Sublist<u32> = Sublist::new();
        for s in ["", ".", "foo.", ".foo", "foo..bar", "foo.>.bar", ">.>"] {
            assert!(
                matches!(
                    sl.insert(s, None, 1),
                    Err(SublistError::InvalidSubject { .. })
                ),
                "{s:?}"
            );
        }
        assert!(matches!(
            sl.insert("foo", Some(""), 1),
            Err(SublistError::InvalidQueue { .. })
        ));
        assert_eq!(sl.count(), 0);
        assert_eq!(sl.generation(), 0);
    }

    #[test]
    fn duplicates_and_remove() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert("a.b", None, 1).unwrap();
        sl.insert("a.b", None, 1).unwrap();
        assert_eq!(sl.matches("a.b").psubs, vec![1, 1]);
        assert!(sl.remove("a.b", None, &1));
        assert_eq!(sl.matches("a.b").psubs, vec![1]);
        assert!(!sl.remove("a.b", Some("q"), &1));
        assert!(!sl.remove("a.*", None, &1));
        assert!(!sl.remove("a.b", None, &2));
        assert!(sl.remove("a.b", None, &1));
        assert!(!sl.remove("a.b", None, &1));
        assert!(sl.matches("a.b").is_empty());
        assert_eq!(sl.count(), 0);
        // The trie is pruned back to nothing.
        assert!(sl.inner.read().root.is_empty());
    }

    #[test]
    fn wildcard_chars_in_published_subject_are_literal() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert("foo.bar", None, 1).unwrap();
        sl.insert("foo.*", None, 2).unwrap();
        sl.insert("foo.>", None, 3).unwrap();
        assert_eq!(sorted(&sl.matches("foo.*").psubs), vec![2, 3]);
        assert_eq!(sorted(&sl.matches("foo.>").psubs), vec![2, 3]);
        sl.insert("foo.*", None, 4).unwrap();
        assert_eq!(sorted(&sl.matches("foo.*").psubs), vec![2, 3, 4]);
    }

    #[test]
    fn cache_is_updated_and_evicted() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert("a.b", None, 1).unwrap();
        let r1 = sl.matches("a.b");
        assert_eq!(sl.stats().num_cache, 1);
        // Literal insert updates the cached entry.
        sl.insert("a.b", None, 2).unwrap();
        assert_eq!(sorted(&sl.matches("a.b").psubs), vec![1, 2]);
        // The caller's snapshot is not mutated.
        assert_eq!(r1.psubs, vec![1]);
        // Wildcard insert updates matching entries and leaves others alone.
        let _ = sl.matches("x.y");
        sl.insert("a.*", Some("g"), 3).unwrap();
        let r = sl.matches("a.b");
        assert_eq!(r.qsubs[0].members, vec![3]);
        assert!(sl.matches("x.y").is_empty());
        // Wildcard remove evicts matching entries.
        assert!(sl.remove("a.*", Some("g"), &3));
        assert!(sl.matches("a.b").qsubs.is_empty());
        let st = sl.stats();
        assert_eq!(st.num_inserts, 3);
        assert_eq!(st.num_removes, 1);
        assert_eq!(st.num_subscriptions, 2);
        assert!(st.num_matches >= 6);
        assert!(st.cache_hit_rate > 0.0 && st.cache_hit_rate < 1.0);
        assert_eq!(st.max_fanout, 2);
    }

    #[test]
    fn cache_is_bounded() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert(">", None, 1).unwrap();
        for i in 0..(CACHE_MAX * 3) {
            assert_eq!(sl.matches(&format!("s.{i}")).psubs, vec![1]);
        }
        let n = sl.stats().num_cache as usize;
        assert!(n <= CACHE_MAX, "{n}");
        assert!(n >= CACHE_SWEEP.min(CACHE_MAX), "{n}");
    }

    #[test]
    fn no_cache_mode() {
        let sl: Sublist<u32> = Sublist::with_cache(false);
        assert!(!sl.cache_enabled());
        sl.insert("a.*", None, 1).unwrap();
        assert_eq!(sl.matches("a.b").psubs, vec![1]);
        assert_eq!(sl.matches("a.b").psubs, vec![1]);
        let st = sl.stats();
        assert_eq!(st.num_cache, 0);
        assert_eq!(st.cache_hit_rate, 0.0);
        assert_eq!(st.num_matches, 2);
    }

    #[test]
    fn all_lists_everything() {
        let sl: Sublist<u32> = Sublist::new();
        sl.insert("a", None, 1).unwrap();
        sl.insert("a.b", None, 2).unwrap();
        sl.insert("a.*", Some("q"), 3).unwrap();
        sl.insert("a.*", Some("q"), 3).unwrap();
        sl.insert(">", None, 4).unwrap();
        sl.insert("*.>", Some("r"), 5).unwrap();
        let mut all = sl.all();
        all.sort();
        let want: Vec<(String, Option<String>, u32)> = vec![
            ("*.>".into(), Some("r".into()), 5),
            (">".into(), None, 4),
            ("a".into(), None, 1),
            ("a.*".into(), Some("q".into()), 3),
            ("a.*".into(), Some("q".into()), 3),
            ("a.b".into(), None, 2),
        ];
        assert_eq!(all, want);
    }

    #[test]
    fn generation_and_match_with_generation() {
        let sl: Sublist<u32> = Sublist::new();
        let g0 = sl.generation();
        sl.insert("a", None, 1).unwrap();
        let g1 = sl.generation();
        assert_ne!(g0, g1);
        let (r, g) = sl.match_with_generation("a");
        assert_eq!(g, g1);
        assert_eq!(r.psubs, vec![1]);
        assert!(!sl.remove("a", None, &9));
        assert_eq!(sl.generation(), g1);
        assert!(sl.remove("a", None, &1));
        assert_ne!(sl.generation(), g1);
    }

    #[test]
    fn stats_add() {
        let a: Sublist<u32> = Sublist::new();
        let b: Sublist<u32> = Sublist::new();
        a.insert("x", None, 1).unwrap();
        b.insert("y", None, 1).unwrap();
        b.insert("y", None, 2).unwrap();
        let _ = a.matches("x");
        let _ = a.matches("x");
        let _ = b.matches("y");
        let mut st = a.stats();
        st.add(&b.stats());
        assert_eq!(st.num_subscriptions, 3);
        assert_eq!(st.num_cache, 2);
        assert_eq!(st.num_matches, 3);
        assert_eq!(st.max_fanout, 2);
        assert!((st.avg_fanout - 1.5).abs() < 1e-9);
        assert!((st.cache_hit_rate - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn concurrent_insert_match_remove() {
        use std::thread;
        let sl: Arc<Sublist<u32>> = Arc::new(Sublist::new());
        sl.insert("stable.>", None, 0).unwrap();
        let mut handles = Vec::new();
        for w in 0..4u32 {
            let sl = sl.clone();
            handles.push(thread::spawn(move || {
                for i in 0..500u32 {
                    let subj = format!("w{w}.s{}", i % 16);
                    let item = w * 10_000 + i;
                    sl.insert(&subj, None, item).unwrap();
                    sl.insert(&format!("w{w}.*"), Some("q"), item).unwrap();
                    assert!(sl.matches(&subj).psubs.contains(&item));
                    assert!(sl.remove(&subj, None, &item));
                    assert!(sl.remove(&format!("w{w}.*"), Some("q"), &item));
                    assert!(!sl.matches(&subj).psubs.contains(&item));
                }
            }));
        }
        for _ in 0..2 {
            let sl = sl.clone();
            handles.push(thread::spawn(move || {
                for i in 0..5000u32 {
                    let r = sl.matches(&format!("stable.{}", i % 64));
                    assert_eq!(r.psubs, vec![0]);
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(sl.count(), 1);
        // Every cached entry agrees with a fresh walk after the dust settles.
        let fresh: Sublist<u32> = Sublist::with_cache(false);
        fresh.insert("stable.>", None, 0).unwrap();
        let keys: Vec<String> = sl
            .inner
            .read()
            .cache
            .as_ref()
            .map(|c| c.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        for k in keys {
            assert_eq!(norm(&sl.matches(&k)), norm(&fresh.matches(&k)), "{k}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, Option<String>, u32),
        Remove(String, Option<String>, u32),
        Match(String),
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*", ">"]), 1..4)
            .prop_map(|t| t.join("."))
    }

    fn subject_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..5)
                .prop_map(|t| t.join(".")),
            // Published subjects with wildcard characters or empty tokens.
            2 => prop::collection::vec(prop::sample::select(vec!["a", "b", "*", ">", ""]), 0..4)
                .prop_map(|t| t.join(".")),
        ]
    }

    fn queue_strategy() -> impl Strategy<Value = Option<String>> {
        prop::sample::select(vec![
            None,
            None,
            Some("q1".to_string()),
            Some("q2".to_string()),
        ])
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (filter_strategy(), queue_strategy(), 0u32..4).prop_map(|(s, q, i)| Op::Insert(s, q, i)),
            2 => (filter_strategy(), queue_strategy(), 0u32..4).prop_map(|(s, q, i)| Op::Remove(s, q, i)),
            4 => subject_strategy().prop_map(Op::Match),
        ]
    }

    fn run_ops(sl: &Sublist<u32>, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut model: Model = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(s, q, i) => {
                    let before = sl.generation();
                    let res = sl.insert(s, q.as_deref(), *i);
                    prop_assert_eq!(res.is_ok(), is_well_formed(s));
                    if res.is_ok() {
                        model.push((s.clone(), q.clone(), *i));
                        prop_assert_ne!(sl.generation(), before);
                    }
                }
                Op::Remove(s, q, i) => {
                    let pos = model
                        .iter()
                        .position(|(ms, mq, mi)| ms == s && mq == q && mi == i);
                    let removed = sl.remove(s, q.as_deref(), i);
                    prop_assert_eq!(removed, pos.is_some());
                    if let Some(p) = pos {
                        model.swap_remove(p);
                    }
                }
                Op::Match(s) => {
                    seen.push(s.clone());
                    let want = brute(&model, s);
                    prop_assert_eq!(norm(&sl.matches(s)), want.clone(), "subject {:?}", s);
                    prop_assert_eq!(
                        sl.has_interest(s),
                        !(want.0.is_empty() && want.1.is_empty())
                    );
                }
            }
            prop_assert_eq!(sl.count(), model.len());
            // Re-check every subject seen so far: catches stale cache entries.
            for s in &seen {
                prop_assert_eq!(norm(&sl.matches(s)), brute(&model, s), "recheck {:?}", s);
            }
        }
        let mut all = sl.all();
        all.sort();
        model.sort();
        prop_assert_eq!(all, model);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn sublist_matches_brute_force_cached(ops in prop::collection::vec(op_strategy(), 1..60)) {
            run_ops(&Sublist::new(), &ops)?;
        }

        #[test]
        fn sublist_matches_brute_force_uncached(ops in prop::collection::vec(op_strategy(), 1..60)) {
            run_ops(&Sublist::with_cache(false), &ops)?;
        }

        #[test]
        fn sublist_matches_brute_force_tiny_cache(ops in prop::collection::vec(op_strategy(), 1..60)) {
            // Trimming on nearly every miss.
            run_ops(&Sublist::with_cache_limits(true, 4, 2), &ops)?;
        }

        /// The byte scans agree with `str::split` on any text, separators and non-ASCII
        /// included.
        #[test]
        fn byte_scans_agree_with_str_split(s in "[a.é>*]{0,12}") {
            let want: Vec<&str> = s.split('.').collect();
            prop_assert_eq!(tokens(&s).collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(is_matchable(&s), want.iter().all(|t| !t.is_empty()));
            let (first, rest) = split_first(&s);
            prop_assert_eq!(first, want[0]);
            prop_assert_eq!(rest, s.split_once('.').map(|(_, r)| r));
        }
    }
}
