//! Per-remote prefix remapping (`account_mappings` on a leafnode remote, a Canopy
//! extension): on one leaf link, the local prefix `events` stands for the hub's prefix
//! `site-a.events`, both ways. Only the soliciting (leaf) side remaps; the hub sees an
//! ordinary leaf.
//!
//! The rule is a one-to-one translation between the subjects each side may carry
//! (validation makes keys and destinations non-overlapping prefixes):
//!
//! - leaving the leaf (messages, replies, our interest): a subject under a key `L` becomes
//!   the destination `R` plus the rest; a subject under some destination `R` but under no
//!   key is **not carried** (it would pose as a remapped one); anything else is unchanged;
//! - arriving from the hub (messages, replies, the hub's interest): under `R` becomes `L`
//!   plus the rest; under some `L` but under no `R` is not carried; anything else is
//!   unchanged.
//!
//! Interest with wildcards is translated to every form it covers: a pattern literally
//! under a prefix is translated; one under a blocked prefix is dropped; otherwise the
//! pattern is kept as it is (for the unchanged subjects) and, for every prefix it reaches
//! into (`>` or `site-a.*.x` reach into `site-a.events`), the part under the prefix is
//! added translated (`events.>`, `events.x`). A message is translated again when it is
//! sent, so a pattern kept as it is can never carry an untranslated subject across.

use std::borrow::Cow;

/// The prefix pairs of one remote, local → hub.
#[derive(Debug)]
pub struct Remap {
    pairs: Vec<(String, String)>,
}

/// Which way a subject crosses the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Local names to the hub's.
    ToHub,
    /// The hub's names to local ones.
    ToLocal,
}

/// The rest of `s` under the literal prefix `p`: `""` for `p` itself.
fn under<'a>(s: &'a str, p: &str) -> Option<&'a str> {
    if s == p {
        return Some("");
    }
    s.strip_prefix(p).and_then(|r| r.strip_prefix('.'))
}

fn join(prefix: &str, rest: &str) -> String {
    if rest.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

/// The part of the subjects a pattern matches that lies under `prefix`, as patterns of the
/// rest (`""` = the prefix itself), or `None` when they share nothing.
fn narrow(pattern: &str, prefix: &str) -> Option<Vec<String>> {
    let pt: Vec<&str> = pattern.split('.').collect();
    let rt: Vec<&str> = prefix.split('.').collect();
    for (i, r) in rt.iter().enumerate() {
        match pt.get(i) {
            None => return None,
            Some(&">") => return Some(vec![String::new(), ">".to_string()]),
            Some(&"*") => {}
            Some(t) if t == r => {}
            Some(_) => return None,
        }
    }
    Some(vec![pt[rt.len()..].join(".")])
}

impl Remap {
    /// From a remote's configured mappings (`events.>` → `site-a.events.>`).
    pub fn new(ms: &[canopy_conf::Mapping]) -> Option<Remap> {
        let strip = |s: &str| s.strip_suffix(".>").unwrap_or(s).to_string();
        let pairs: Vec<(String, String)> = ms
            .iter()
            .filter_map(|m| {
                let d = m.destinations.first()?;
                Some((strip(&m.source), strip(&d.subject)))
            })
            .collect();
        (!pairs.is_empty()).then_some(Remap { pairs })
    }

    fn sides(&self, dir: Dir) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(move |(l, h)| match dir {
            Dir::ToHub => (l.as_str(), h.as_str()),
            Dir::ToLocal => (h.as_str(), l.as_str()),
        })
    }

    /// Translates a subject crossing the link; `None`: not carried.
    pub fn subject<'a>(&self, s: &'a str, dir: Dir) -> Option<Cow<'a, str>> {
        for (from, to) in self.sides(dir) {
            if let Some(rest) = under(s, from) {
                return Some(Cow::Owned(join(to, rest)));
            }
        }
        if self.sides(dir).any(|(_, to)| under(s, to).is_some()) {
            return None;
        }
        Some(Cow::Borrowed(s))
    }

    /// Translates an interest pattern crossing the link: every pattern it stands for on
    /// the other side (none when it is not carried).
    pub fn interest(&self, p: &str, dir: Dir) -> Vec<String> {
        for (from, to) in self.sides(dir) {
            if let Some(rest) = under(p, from) {
                return vec![join(to, rest)];
            }
        }
        if self.sides(dir).any(|(_, to)| under(p, to).is_some()) {
            return Vec::new();
        }
        let mut out = vec![p.to_string()];
        for (from, to) in self.sides(dir) {
            for rest in narrow(p, from).unwrap_or_default() {
                let t = join(to, &rest);
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remap(pairs: &[(&str, &str)]) -> Remap {
        Remap {
            pairs: pairs
                .iter()
                .map(|(l, h)| (l.to_string(), h.to_string()))
                .collect(),
        }
    }

    #[test]
    fn subjects_translate_one_to_one() {
        let r = remap(&[("events", "site-a.events"), ("metrics", "site-a.metrics")]);
        let up = |s: &str| r.subject(s, Dir::ToHub).map(|c| c.into_owned());
        let down = |s: &str| r.subject(s, Dir::ToLocal).map(|c| c.into_owned());
        assert_eq!(up("events.x").as_deref(), Some("site-a.events.x"));
        assert_eq!(up("events").as_deref(), Some("site-a.events"));
        assert_eq!(up("eventsx.y").as_deref(), Some("eventsx.y"));
        assert_eq!(up("other.y").as_deref(), Some("other.y"));
        assert_eq!(up("site-a.events.x"), None);
        assert_eq!(up("site-a.other").as_deref(), Some("site-a.other"));
        assert_eq!(down("site-a.metrics.cpu").as_deref(), Some("metrics.cpu"));
        assert_eq!(down("events.x"), None);
        assert_eq!(down("_INBOX.abc").as_deref(), Some("_INBOX.abc"));
        for s in ["events.a.b", "metrics", "x.y", "site-a", "site-a.x"] {
            let h = up(s).unwrap_or_else(|| panic!("{s} not carried"));
            assert_eq!(down(&h).as_deref(), Some(s), "round trip of {s}");
        }
    }

    #[test]
    fn wildcard_interest() {
        let r = remap(&[("events", "site-a.events")]);
        let down = |p: &str| r.interest(p, Dir::ToLocal);
        assert_eq!(down("site-a.events.>"), ["events.>"]);
        assert_eq!(down("site-a.events.*.x"), ["events.*.x"]);
        assert_eq!(down(">"), [">", "events", "events.>"]);
        assert_eq!(down("site-a.*.x"), ["site-a.*.x", "events.x"]);
        assert_eq!(down("*.*"), ["*.*", "events"]);
        assert_eq!(down("events.>"), Vec::<String>::new());
        assert_eq!(down("foo.>"), ["foo.>"]);
        let up = |p: &str| r.interest(p, Dir::ToHub);
        assert_eq!(up("events.>"), ["site-a.events.>"]);
        assert_eq!(up("*.x"), ["*.x", "site-a.events.x"]);
        assert_eq!(up("site-a.events.x"), Vec::<String>::new());
    }
}
