//! Property tests for subject transforms: outputs keep the destination's shape, pure-wildcard
//! transforms reverse exactly, weighted selection honours the weights, and nothing panics.

use canopy_subject::{
    is_valid_literal_subject, num_tokens, subject_matches, untokenize_wildcards, MapDest,
    Transform, TransformError, WeightedMapping,
};
use proptest::prelude::*;

/// A source pattern: literal tokens and `*`, optionally ending in `>`.
#[derive(Debug, Clone)]
struct Source {
    tokens: Vec<String>,
    fwc: bool,
}

impl Source {
    fn pattern(&self) -> String {
        let mut t = self.tokens.clone();
        if self.fwc {
            t.push(">".into());
        }
        t.join(".")
    }

    fn wildcards(&self) -> usize {
        self.tokens.iter().filter(|t| *t == "*").count()
    }
}

fn literal_token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,4}",
        "[0-9]{1,6}",
        Just("$SYS".to_string()),
        Just("_INBOX".to_string()),
        "[a-zA-Z0-9_-]{1,8}",
    ]
}

fn source() -> impl Strategy<Value = Source> {
    (
        prop::collection::vec(
            prop_oneof![2 => literal_token(), 3 => Just("*".to_string())],
            1..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(tokens, fwc)| Source { tokens, fwc })
}

/// A subject the source matches.
fn subject_for(src: &Source) -> impl Strategy<Value = String> {
    let n = src.tokens.len();
    let fwc = src.fwc;
    let tokens = src.tokens.clone();
    (
        prop::collection::vec(literal_token(), n),
        prop::collection::vec(literal_token(), if fwc { 1..4 } else { 0..1 }),
    )
        .prop_map(move |(fill, tail)| {
            let mut out: Vec<String> = tokens
                .iter()
                .zip(fill)
                .map(|(t, f)| if t == "*" { f } else { t.clone() })
                .collect();
            if fwc {
                out.extend(tail);
            }
            out.join(".")
        })
}

fn placeholder(n: usize, style: u8) -> String {
    match style % 4 {
        0 => format!("${n}"),
        1 => format!("{{{{wildcard({n})}}}}"),
        2 => format!("{{{{ Wildcard( {n} ) }}}}"),
        _ => format!("{{{{wildcard ({n})}}}}"),
    }
}

/// A source with a destination that places every wildcard exactly once, in a random order,
/// between random literal tokens.
fn pure_wildcard_mapping() -> impl Strategy<Value = (Source, String)> {
    source().prop_flat_map(|src| {
        let k = src.wildcards();
        let order = Just((1..=k).collect::<Vec<_>>()).prop_shuffle();
        (
            Just(src),
            order,
            prop::collection::vec(any::<u8>(), k),
            prop::collection::vec(prop::option::of(literal_token()), k + 1),
        )
            .prop_map(move |(src, order, styles, lits)| {
                let mut d = Vec::new();
                for (i, n) in order.iter().enumerate() {
                    if let Some(l) = &lits[i] {
                        d.push(l.clone());
                    }
                    d.push(placeholder(*n, styles[i]));
                }
                if let Some(l) = &lits[k] {
                    d.push(l.clone());
                }
                if d.is_empty() {
                    d.push("x".into());
                }
                if src.fwc {
                    d.push(">".into());
                }
                (src, d.join("."))
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Pure-wildcard transforms: the output is a valid literal subject of the destination's
    /// shape, strict mode accepts them, and the reverse transform gives the input back.
    #[test]
    fn pure_wildcard_shape_and_roundtrip(
        (src, dest, subject) in pure_wildcard_mapping()
            .prop_flat_map(|(s, d)| { let subj = subject_for(&s); (Just(s), Just(d), subj) })
    ) {
        let pattern = src.pattern();
        let tr = Transform::new_strict(&pattern, &dest)
            .map_err(|e| TestCaseError::fail(format!("{pattern} -> {dest}: {e}")))?;
        let out = tr.apply(&subject)
            .map_err(|e| TestCaseError::fail(format!("{pattern} -> {dest} on {subject}: {e}")))?;
        prop_assert!(is_valid_literal_subject(&out), "{out:?}");
        let (shape, _) = untokenize_wildcards(&dest);
        prop_assert!(subject_matches(&shape, &out), "{out:?} !~ {shape:?}");
        // Unchecked transform agrees on matching subjects.
        prop_assert_eq!(tr.transform(&subject).map(|c| c.into_owned()), Ok(out.to_string()));
        let rev = tr.reverse();
        prop_assert!(rev.is_some(), "no reverse for {} -> {}", pattern, dest);
        let rev = rev.unwrap_or_else(|| unreachable!());
        prop_assert_eq!(rev.apply(&out).map(|c| c.into_owned()), Ok(subject.clone()));
    }

    /// Single-token functions keep the destination's token count; partitions stay in range.
    #[test]
    fn single_token_functions(
        (src, picks, subject) in source()
            .prop_filter("needs a wildcard", |s| s.wildcards() > 0)
            .prop_flat_map(|s| {
                let subj = subject_for(&s);
                (Just(s), prop::collection::vec((0u8..4, 1usize..8, -2i32..12), 1..5), subj)
            }),
    ) {
        let k = src.wildcards();
        let mut d: Vec<String> = picks.iter().map(|&(f, i, n)| {
            let i = (i % k) + 1;
            match f {
                0 => placeholder(i, n as u8),
                1 => format!("{{{{partition({}, {i})}}}}", n.max(1)),
                2 => format!("{{{{left({i},{n})}}}}"),
                _ => format!("{{{{Right({i}, {n})}}}}"),
            }
        }).collect();
        if src.fwc { d.push(">".into()); }
        let dest = d.join(".");
        let pattern = src.pattern();
        let tr = Transform::new(&pattern, &dest)
            .map_err(|e| TestCaseError::fail(format!("{pattern} -> {dest}: {e}")))?;
        let out = tr.apply(&subject)
            .map_err(|e| TestCaseError::fail(format!("{pattern} -> {dest} on {subject}: {e}")))?;
        prop_assert!(is_valid_literal_subject(&out), "{out:?}");
        let extra = if src.fwc { num_tokens(&subject) - src.tokens.len() } else { 0 };
        prop_assert_eq!(num_tokens(&out), picks.len() + extra);
        for (tok, &(f, _, n)) in out.split('.').zip(&picks) {
            if f == 1 {
                let v: u32 = tok.parse().map_err(|_| TestCaseError::fail(tok.to_string()))?;
                prop_assert!(v < n.max(1) as u32);
            }
        }
    }

    /// A subject the source does not match is refused, never transformed.
    #[test]
    fn non_matching_subjects_are_refused(
        (src, dest) in pure_wildcard_mapping(),
        other in "[a-z*>.]{0,12}",
    ) {
        let pattern = src.pattern();
        let tr = Transform::new(&pattern, &dest)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match tr.apply(&other) {
            Ok(_) => prop_assert!(tr.matches(&other)),
            Err(TransformError::BadSubject) => prop_assert!(!is_valid_literal_subject(&other)),
            Err(TransformError::NoMatch) => prop_assert!(!tr.matches(&other)),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Rolls 0..100 choose each destination exactly as often as its weight; the remainder goes
    /// to the source subject.
    #[test]
    fn weighted_rolls_follow_weights(weights in prop::collection::vec(0u8..=40, 1..5)) {
        let total: u32 = weights.iter().map(|&w| u32::from(w)).sum();
        prop_assume!(total <= 100);
        let dests: Vec<MapDest> = weights.iter().enumerate()
            .map(|(i, &w)| MapDest::new(format!("d{i}.$1"), w))
            .collect();
        let m = WeightedMapping::new("src.*", &dests)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut counts = vec![0u32; weights.len() + 1];
        for roll in 0..100 {
            let t = m.select(None, roll);
            prop_assert!(t.is_some());
            let out = t.map(|t| t.transform("src.x")).transpose()
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .unwrap_or_default();
            match out.strip_prefix('d').and_then(|r| r.split('.').next()) {
                Some(i) => counts[i.parse::<usize>().map_err(|_| TestCaseError::fail(out.to_string()))?] += 1,
                None => { prop_assert_eq!(&*out, "src.x"); counts[weights.len()] += 1 }
            }
        }
        for (i, &w) in weights.iter().enumerate() {
            prop_assert_eq!(counts[i], u32::from(w));
        }
        prop_assert_eq!(counts[weights.len()], 100 - total);
    }
}
