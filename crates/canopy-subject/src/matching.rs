//! Wildcard matching between subjects and filters, and the relations between two filters
//! (subset, collision) that permissions and deny rules need.
//!
//! Semantics (the same as the Sublist's): a filter token `*` matches any one token, a final
//! `>` matches one or more tokens, any other token matches itself byte for byte. Wildcard
//! characters in the *subject* are not special: a published subject `foo.*` is matched by the
//! filters `foo.*`, `foo.>` and `*.*`, not by `foo.bar`. Anything with an empty token matches
//! nothing.

use crate::validate::{is_well_formed, tokens, FWC, PWC};

/// True if `subject` (treated literally) is matched by `filter`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = tokens(filter);
    let mut s = tokens(subject);
    loop {
        match (f.next(), s.next()) {
            (None, None) => return true,
            (Some(ft), Some(st)) => {
                if ft.is_empty() || st.is_empty() {
                    return false;
                }
                if ft == FWC {
                    // `>` must be the filter's last token and swallows the (well-formed) rest.
                    return f.next().is_none() && s.all(|t| !t.is_empty());
                }
                if ft != PWC && ft != st {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// True if every subject matched by `sub` is also matched by `of` (so a rule on `of` covers
/// `sub` entirely). Both must be well formed; otherwise false.
pub fn subject_is_subset_of(sub: &str, of: &str) -> bool {
    if !is_well_formed(sub) || !is_well_formed(of) {
        return false;
    }
    let mut a = tokens(sub);
    let mut b = tokens(of);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(at), Some(bt)) => {
                if bt == FWC {
                    // `of` accepts anything of one or more tokens from here; `sub` has at least one.
                    return true;
                }
                if at == FWC {
                    // `sub` reaches arbitrarily long subjects, `of` does not from here.
                    return false;
                }
                if bt == PWC {
                    continue;
                }
                if at == PWC || at != bt {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// True if at least one subject is matched by both filters. Both must be well formed;
/// otherwise false.
pub fn subjects_collide(a: &str, b: &str) -> bool {
    if !is_well_formed(a) || !is_well_formed(b) {
        return false;
    }
    let mut x = tokens(a);
    let mut y = tokens(b);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(at), Some(bt)) => {
                // Both have a token here, so whatever remains on the other side can be made
                // concrete (one or more tokens), which a `>` accepts.
                if at == FWC || bt == FWC {
                    return true;
                }
                if at != PWC && bt != PWC && at != bt {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_table() {
        let table: &[(&str, &str, bool)] = &[
            ("foo", "foo", true),
            ("foo", "bar", false),
            ("foo.bar", "foo.bar", true),
            ("foo.bar", "foo", false),
            ("foo", "foo.bar", false),
            ("*", "foo", true),
            ("*", "foo.bar", false),
            ("foo.*", "foo.bar", true),
            ("foo.*", "foo", false),
            ("foo.*", "foo.bar.baz", false),
            ("*.bar", "foo.bar", true),
            ("*.*", "foo.bar", true),
            ("foo.*.baz", "foo.bar.baz", true),
            ("foo.*.baz", "foo.bar.bax", false),
            (">", "foo", true),
            (">", "foo.bar.baz", true),
            ("foo.>", "foo", false),
            ("foo.>", "foo.bar", true),
            ("foo.>", "foo.bar.baz", true),
            ("foo.>", "fo.bar", false),
            ("*.>", "foo.bar", true),
            ("*.>", "foo", false),
            ("foo.*.>", "foo.bar.baz", true),
            ("foo.*.>", "foo.bar", false),
            // Wildcard characters in the subject are literal.
            ("foo.*", "foo.*", true),
            ("foo.bar", "foo.*", false),
            ("foo.>", "foo.>", true),
            ("foo.bar", "foo.>", false),
            ("foo.*", "foo.>", true),
            // Partial-token wildcards are literal characters.
            ("foo*", "foo*", true),
            ("foo*", "foox", false),
            ("f>", "f.x", false),
            // Malformed input matches nothing.
            ("", "", false),
            ("foo", "", false),
            ("", "foo", false),
            (">", "foo..bar", false),
            (">", "foo.", false),
            ("*.*", "foo.", false),
            ("foo..bar", "foo..bar", false),
            ("foo.>.bar", "foo.x.bar", false),
            ("foo.>.bar", "foo.>.bar", false),
        ];
        for &(f, s, want) in table {
            assert_eq!(subject_matches(f, s), want, "subject_matches({f:?}, {s:?})");
        }
    }

    #[test]
    fn subset_table() {
        let table: &[(&str, &str, bool)] = &[
            ("foo", "foo", true),
            ("foo", "bar", false),
            ("foo.bar", "foo.*", true),
            ("foo.bar", "foo.>", true),
            ("foo.bar", ">", true),
            ("foo.*", "foo.>", true),
            ("foo.>", "foo.>", true),
            ("foo.>", ">", true),
            ("foo.*.baz", "foo.>", true),
            ("foo.*.baz", "*.*.baz", true),
            ("foo.*", "foo.*", true),
            ("foo.*", "foo.bar", false),
            ("foo.>", "foo.*", false),
            ("foo.>", "foo.*.>", false),
            ("foo.*.>", "foo.>", true),
            (">", "foo.>", false),
            (">", "*.>", false), // ">" also matches one-token subjects
            ("*.>", ">", true),
            ("*", ">", true),
            (">", "*", false),
            ("foo", "foo.>", false),
            ("foo.bar", "foo", false),
            ("", "foo", false),
            ("foo", "", false),
        ];
        for &(a, b, want) in table {
            assert_eq!(subject_is_subset_of(a, b), want, "subset({a:?}, {b:?})");
        }
    }

    #[test]
    fn collide_table() {
        let table: &[(&str, &str, bool)] = &[
            ("foo", "foo", true),
            ("foo", "bar", false),
            ("foo.*", "foo.bar", true),
            ("foo.*", "*.bar", true),
            ("foo.*", "bar.*", false),
            ("foo.>", "foo", false),
            ("foo.>", "*.bar.baz", true),
            ("foo.>", "*", false),
            (">", "foo.bar", true),
            ("*.*", "foo.>", true),
            ("*.*", "*", false),
            ("foo.*.baz", "foo.bar.*", true),
            ("foo.*.baz", "foo.bar.bax", false),
            ("a.>", "b.>", false),
            ("", "foo", false),
            ("foo..bar", "foo..bar", false),
        ];
        for &(a, b, want) in table {
            assert_eq!(subjects_collide(a, b), want, "collide({a:?}, {b:?})");
            assert_eq!(subjects_collide(b, a), want, "collide({b:?}, {a:?})");
        }
    }

    /// All well-formed filters up to `max` tokens over the given token alphabet.
    fn filters(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        for _ in 0..max {
            out.extend(frontier.iter().cloned());
            let mut next = Vec::new();
            for f in &frontier {
                for t in alphabet {
                    next.push(format!("{f}.{t}"));
                }
            }
            frontier = next;
        }
        out.retain(|f| is_well_formed(f));
        out
    }

    /// Exhaustive check of subset and collide against their definitions over a universe of
    /// concrete subjects large enough to contain a witness whenever one exists (one token
    /// longer than the longest filter, plus a token no filter names).
    #[test]
    fn relations_agree_with_brute_force() {
        let fs = filters(&["a", "b", "*", ">"], 3);
        let universe = filters(&["a", "b", "c"], 4);
        for x in &fs {
            let mx: Vec<bool> = universe.iter().map(|s| subject_matches(x, s)).collect();
            for y in &fs {
                let my: Vec<bool> = universe.iter().map(|s| subject_matches(y, s)).collect();
                let subset = mx.iter().zip(&my).all(|(&a, &b)| !a || b);
                let collide = mx.iter().zip(&my).any(|(&a, &b)| a && b);
                assert_eq!(subject_is_subset_of(x, y), subset, "subset({x}, {y})");
                assert_eq!(subjects_collide(x, y), collide, "collide({x}, {y})");
            }
        }
    }
}
