//! Fuzz target: parses mapping source/destination pairs (raw strings, or built from tokens of
//! the mapping language) and applies them to subjects, in plain and strict mode, reversed,
//! validated and as weighted mappings. Checks that nothing panics and that the entry points
//! agree with each other.
//!
//! Run from crates/canopy-subject: `cargo +nightly fuzz run transform`.
#![no_main]

use canopy_subject::{
    is_valid_pedantic_publish, validate_mapping, MapDest, Mapped, Transform, TransformError,
    WeightedMapping,
};
use libfuzzer_sys::fuzz_target;

const SRC_TOKENS: &[&str] = &["a", "b", "*", "*", ">", "", "*x", "a b", "$1"];
const DEST_TOKENS: &[&str] = &[
    "a",
    "b",
    ">",
    "*",
    "",
    "$1",
    "$2",
    "$0",
    "$-1",
    "$x",
    "{{wildcard(1)}}",
    "{{ Wildcard( 2 ) }}",
    "{{partition(3,1,2)}}",
    "{{partition(0,1)}}",
    "{{partition(-1,2)}}",
    "{{split(1,-)}}",
    "{{split(2,)}}",
    "{{splitfromleft(1,2)}}",
    "{{SplitFromRight(2,1)}}",
    "{{slicefromleft(1,2)}}",
    "{{SliceFromRight(2,3)}}",
    "{{left(1,1)}}",
    "{{right(2,9)}}",
    "{{wildcard()}}",
    "{{unknown(1)}}",
    "{{x}}{{wildcard(1)}}",
    "{{wildcard(1)",
];
const SUBJECT_TOKENS: &[&str] = &[
    "a", "b", "xyz", "-a--b-", "12345", "é1ü", "*", ">", "", "*x",
];

#[path = "input.rs"]
mod input;
use input::Input;

impl Input<'_> {
    fn from_tokens(&mut self, tokens: &[&str]) -> String {
        let n = usize::from(self.byte() % 6);
        (0..n)
            .map(|_| tokens[usize::from(self.byte()) % tokens.len()])
            .collect::<Vec<_>>()
            .join(".")
    }
}

fn check_transform(src: &str, dest: &str, subjects: &[&str]) {
    let plain = Transform::new(src, dest);
    let strict = Transform::new_strict(src, dest);
    if strict.is_ok() {
        assert!(
            plain.is_ok(),
            "strict accepted what plain refused: {src:?} -> {dest:?}"
        );
    }
    if validate_mapping(src, dest).is_ok() {
        assert!(
            plain.is_ok(),
            "validated but not buildable: {src:?} -> {dest:?}"
        );
    }
    if let Err(e) = &plain {
        let _ = e.to_string();
    }
    for tr in [plain, strict].into_iter().flatten() {
        for &s in subjects {
            match tr.apply(s) {
                Ok(out) => {
                    assert!(tr.matches(s), "applied without matching: {src:?} on {s:?}");
                    if tr.is_identity() {
                        assert_eq!(out, s);
                    }
                }
                Err(TransformError::BadSubject) => assert!(!is_valid_pedantic_publish(s)),
                Err(TransformError::NoMatch) => assert!(!tr.matches(s)),
                Err(TransformError::NotCharBoundary { .. }) => {}
                Err(e) => panic!("apply gave a construction error: {e}"),
            }
            let _ = tr.transform(s);
        }
        if let Some(rev) = tr.reverse() {
            for &s in subjects {
                if let Ok(out) = tr.apply(s) {
                    let _ = rev.apply(&out);
                    let _ = rev.transform(&out);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    let (src, dest, subjects): (String, String, Vec<String>) = if mode & 1 == 0 {
        // Raw strings: source, destination and subjects separated by newlines.
        let Ok(text) = std::str::from_utf8(input.0) else {
            return;
        };
        let mut parts = text.split('\n');
        let src = parts.next().unwrap_or_default().to_string();
        let dest = parts.next().unwrap_or_default().to_string();
        (src, dest, parts.take(8).map(str::to_string).collect())
    } else {
        let src = input.from_tokens(SRC_TOKENS);
        let dest = input.from_tokens(DEST_TOKENS);
        let subjects = (0..usize::from(input.byte() % 6))
            .map(|_| input.from_tokens(SUBJECT_TOKENS))
            .collect();
        (src, dest, subjects)
    };
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    check_transform(&src, &dest, &subjects);
    for s in [
        Transform::stream_import(&src, &dest),
        Transform::service_import(&src, &dest),
    ]
    .into_iter()
    .flatten()
    {
        for &subj in &subjects {
            let _ = s.apply(subj);
        }
    }

    // A weighted mapping with the destination and a second, scoped one.
    let w1 = input.byte();
    let w2 = input.byte();
    let dests = [
        MapDest::new(dest.clone(), w1 % 110),
        MapDest {
            subject: format!("{dest}.z"),
            weight: w2 % 110,
            cluster: (w2 & 1 == 1).then(|| "c1".to_string()),
        },
    ];
    if let Ok(m) = WeightedMapping::new(&src, &dests) {
        for d in
            std::iter::once(&m.destinations).chain(m.cluster_destinations.iter().map(|(_, v)| v))
        {
            let mut prev = 0;
            for e in d {
                assert!(e.cumulative >= prev && e.cumulative <= 100);
                prev = e.cumulative;
            }
        }
        for &subj in &subjects {
            for roll in [0, 37, 99] {
                for cluster in [None, Some("c1")] {
                    match m.map(subj, cluster, roll) {
                        Ok(Mapped::Subject(_)) | Ok(Mapped::Dropped) => assert!(m.matches(subj)),
                        Ok(Mapped::NoMatch) => assert!(!m.matches(subj)),
                        Err(_) => {}
                    }
                }
            }
        }
    }
});
