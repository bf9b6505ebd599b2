//! Per-subject state: every subject with live messages gets a small id (so the per-message
//! index holds a `u32`, not a string) and a `(msgs, first, last)` entry. Filters are matched
//! with canopy-subject's `subject_matches`, the same wildcard semantics as the Sublist.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_subject::{has_wildcard, subject_matches};

use crate::SimpleState;

/// Sentinel id of a deleted (or skipped) slot.
pub(crate) const NO_SUBJECT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct SubjectEntry {
    pub name: Arc<str>,
    /// `first` is a lower bound while `stale_first` (the exact value is found by a scan when
    /// someone asks), `last` an upper bound while `stale_last`: removing a subject's first
    /// message must not cost a scan, or purging interleaved subjects turns quadratic.
    pub state: SimpleState,
    pub stale_first: bool,
    pub stale_last: bool,
}

/// Interned subjects with their live-message state. Ids of subjects whose last message is
/// removed are recycled.
#[derive(Debug)]
pub(crate) struct SubjectTable {
    entries: Vec<Option<SubjectEntry>>,
    by_name: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
    /// The id `add` returned last (a hint, checked by name): consecutive appends to one
    /// subject skip hashing it.
    last_added: u32,
}

impl Default for SubjectTable {
    fn default() -> Self {
        SubjectTable {
            entries: Vec::new(),
            by_name: HashMap::new(),
            free: Vec::new(),
            last_added: NO_SUBJECT,
        }
    }
}

impl SubjectTable {
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: u32) -> Option<&SubjectEntry> {
        self.entries.get(id as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut SubjectEntry> {
        self.entries.get_mut(id as usize)?.as_mut()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Records a new live message `seq` on `name` (seq is the subject's newest unless the
    /// index is being rebuilt out of order, which `add` tolerates); returns the id.
    pub fn add(&mut self, name: &str, seq: u64) -> u32 {
        let hinted = self
            .get(self.last_added)
            .is_some_and(|e| &*e.name == name)
            .then_some(self.last_added);
        if let Some(id) = hinted.or_else(|| self.id(name)) {
            self.last_added = id;
            if let Some(e) = self.get_mut(id) {
                let s = &mut e.state;
                s.msgs += 1;
                s.first = s.first.min(seq);
                if seq >= s.last {
                    s.last = seq;
                    e.stale_last = false;
                }
            }
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let entry = SubjectEntry {
            name: name.clone(),
            state: SimpleState {
                msgs: 1,
                first: seq,
                last: seq,
            },
            stale_first: false,
            stale_last: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as u32
            }
        };
        self.by_name.insert(name, id);
        self.last_added = id;
        id
    }

    /// Forgets a subject that has no live messages left.
    pub fn drop_id(&mut self, id: u32) {
        if let Some(e) = self.entries.get_mut(id as usize).and_then(Option::take) {
            self.by_name.remove(&e.name);
            self.free.push(id);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &SubjectEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i as u32, e.as_ref()?)))
    }

    /// Approximate heap bytes used (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        let names: usize = self.iter().map(|(_, e)| e.name.len() + 16).sum();
        names
            + self.entries.capacity() * std::mem::size_of::<Option<SubjectEntry>>()
            + self.by_name.capacity() * (std::mem::size_of::<(Arc<str>, u32)>() + 1)
    }
}

/// A compiled subject filter: matches ids, memoizing wildcard results.
pub(crate) enum Filter {
    All,
    /// A literal subject (its id, or `None` if it has no live messages).
    Literal(Option<u32>),
    Wild {
        filter: String,
        memo: HashMap<u32, bool>,
    },
}

impl Filter {
    /// `""` and `">"` match everything.
    pub fn new(filter: &str, subjects: &SubjectTable) -> Filter {
        if filter.is_empty() || filter == ">" {
            Filter::All
        } else if has_wildcard(filter) {
            Filter::Wild {
                filter: filter.to_string(),
                memo: HashMap::new(),
            }
        } else {
            Filter::Literal(subjects.id(filter))
        }
    }

    pub fn matches(&mut self, id: u32, subjects: &SubjectTable) -> bool {
        if id == NO_SUBJECT {
            return false;
        }
        match self {
            Filter::All => true,
            Filter::Literal(l) => *l == Some(id),
            Filter::Wild { filter, memo } => *memo.entry(id).or_insert_with(|| {
                subjects
                    .get(id)
                    .is_some_and(|e| subject_matches(filter, &e.name))
            }),
        }
    }

    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Literal(_) => false,
            Filter::Wild { filter, .. } => subject_matches(filter, name),
        }
    }

    /// Ids of every matching subject.
    pub fn matching_ids(&self, subjects: &SubjectTable) -> Vec<u32> {
        match self {
            Filter::Literal(l) => l.iter().copied().collect(),
            _ => subjects
                .iter()
                .filter(|(_, e)| self.matches_name(&e.name))
                .map(|(id, _)| id)
                .collect(),
        }
    }
}
