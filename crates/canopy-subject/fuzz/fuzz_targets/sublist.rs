//! Fuzz target: drives a Sublist (cached and uncached) with insert/remove/match sequences
//! decoded from the input and checks both against a brute-force model built on
//! `subject_matches`; also checks the validators and filter relations against each other
//! on arbitrary strings.
//!
//! Run from crates/canopy-subject: `cargo +nightly fuzz run sublist`.
#![no_main]

use canopy_subject::{
    is_literal, is_valid_literal_subject, is_valid_pedantic_publish, is_valid_queue_name,
    is_valid_subject, is_valid_subject_strict, is_well_formed, subject_is_subset_of,
    subject_matches, subjects_collide, Sublist,
};
use libfuzzer_sys::fuzz_target;

const TOKENS: &[&str] = &["a", "b", "c", "*", ">", "", "a*", ">b", " "];
const QUEUES: &[Option<&str>] = &[None, None, Some("q1"), Some("q2")];

#[path = "input.rs"]
mod input;
use input::Input;

impl Input<'_> {
    fn subject(&mut self) -> String {
        let n = usize::from(self.byte() % 5);
        (0..n)
            .map(|_| TOKENS[usize::from(self.byte()) % TOKENS.len()])
            .collect::<Vec<_>>()
            .join(".")
    }

    fn raw(&mut self) -> String {
        let n = usize::from(self.byte() % 16).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

type Model = Vec<(String, Option<String>, u8)>;

fn normalize(p: &[u8], q: &[(String, Vec<u8>)]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut p = p.to_vec();
    p.sort_unstable();
    let mut q: Vec<(String, Vec<u8>)> = q
        .iter()
        .map(|(n, m)| {
            let mut m = m.clone();
            m.sort_unstable();
            (n.clone(), m)
        })
        .collect();
    q.sort();
    (p, q)
}

fn brute(model: &Model, subject: &str) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut p = Vec::new();
    let mut q: Vec<(String, Vec<u8>)> = Vec::new();
    for (f, queue, item) in model {
        if !subject_matches(f, subject) {
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
    normalize(&p, &q)
}

fn check_relations(a: &str, b: &str, s: &str) {
    assert!(!is_valid_literal_subject(a) || is_valid_subject(a));
    assert!(!is_valid_subject(a) || is_well_formed(a));
    assert!(!is_valid_subject_strict(a) || is_valid_subject(a));
    assert!(!is_valid_literal_subject(a) || is_valid_pedantic_publish(a));
    assert!(!is_valid_literal_subject(a) || is_literal(a));
    let _ = is_valid_queue_name(a);
    assert_eq!(subjects_collide(a, b), subjects_collide(b, a));
    if subject_is_subset_of(a, b) && subject_matches(a, s) {
        assert!(subject_matches(b, s), "{a:?} <= {b:?} but {s:?}");
    }
    if subject_matches(a, s) && subject_matches(b, s) && is_well_formed(s) {
        assert!(subjects_collide(a, b), "{a:?} {b:?} share {s:?}");
    }
    if is_well_formed(a) {
        assert!(subject_is_subset_of(a, a));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cached: Sublist<u8> = Sublist::new();
    let uncached: Sublist<u8> = Sublist::with_cache(false);
    let mut model: Model = Vec::new();

    while !input.0.is_empty() {
        match input.byte() % 5 {
            0 => {
                let s = input.subject();
                let q = QUEUES[usize::from(input.byte()) % QUEUES.len()];
                let item = input.byte() % 8;
                let ok = cached.insert(&s, q, item).is_ok();
                assert_eq!(ok, uncached.insert(&s, q, item).is_ok());
                assert_eq!(ok, is_well_formed(&s));
                if ok {
                    model.push((s, q.map(str::to_string), item));
                }
            }
            1 => {
                let s = input.subject();
                let q = QUEUES[usize::from(input.byte()) % QUEUES.len()];
                let item = input.byte() % 8;
                let pos = model
                    .iter()
                    .position(|(ms, mq, mi)| *ms == s && mq.as_deref() == q && *mi == item);
                assert_eq!(cached.remove(&s, q, &item), pos.is_some());
                assert_eq!(uncached.remove(&s, q, &item), pos.is_some());
                if let Some(p) = pos {
                    model.swap_remove(p);
                }
            }
            2 | 3 => {
                let s = if input.byte() % 4 == 0 {
                    input.raw()
                } else {
                    input.subject()
                };
                let want = brute(&model, &s);
                for sl in [&cached, &uncached] {
                    let r = sl.matches(&s);
                    let q: Vec<(String, Vec<u8>)> = r
                        .qsubs
                        .iter()
                        .map(|g| (g.name.to_string(), g.members.clone()))
                        .collect();
                    assert_eq!(normalize(&r.psubs, &q), want, "subject {s:?}");
                    assert_eq!(sl.has_interest(&s), !r.is_empty());
                }
            }
            _ => {
                let (a, b, s) = (input.raw(), input.raw(), input.raw());
                check_relations(&a, &b, &s);
                let (a, b, s) = (input.subject(), input.subject(), input.subject());
                check_relations(&a, &b, &s);
            }
        }
        assert_eq!(cached.count(), model.len());
        assert_eq!(uncached.count(), model.len());
    }
});
