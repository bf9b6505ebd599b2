//! Subject and queue-name validation, with the same acceptance rules as nats-server.
//!
//! A subject is a `.`-separated list of tokens. A token that is exactly `*` matches any one
//! token; a token that is exactly `>` matches one or more trailing tokens and must be last.
//! `*` or `>` inside a longer token (`foo*`, `a>b`) is an ordinary character.
//!
//! nats-server applies different checks in different places, and a drop-in replacement has to
//! accept and reject the same things, so each check here names where the server uses it:
//!
//! | function                           | nats-server equivalent            | used for                    |
//! |------------------------------------|-----------------------------------|-----------------------------|
//! | [`is_well_formed`]                 | the checks inside `Sublist.Insert` | SUB / RS+ / LS+ (via [`crate::Sublist::insert`]) |
//! | [`is_valid_subject`]               | `IsValidSubject`                  | config: permissions, exports, imports, mappings |
//! | [`is_valid_subject_strict`]        | `isValidSubject(s, checkRunes)`   | stored subjects (JetStream) |
//! | [`is_valid_literal_subject`]       | `IsValidPublishSubject`           | API-level publishes, config literals |
//! | [`is_valid_pedantic_publish`]      | `IsValidLiteralSubject`           | PUB/HPUB when the client is `pedantic` |
//!
//! Non-pedantic PUB is not validated at all by nats-server: a malformed subject simply matches
//! nothing (see [`crate::Sublist::matches`]). In pedantic mode the server sends
//! `-ERR 'Invalid Publish Subject'` but still processes the message.

/// Token separator.
pub const TSEP: u8 = b'.';
/// Single-token wildcard.
pub const PWC: &str = "*";
/// Multi-token (tail) wildcard.
pub const FWC: &str = ">";

/// The bytes nats-server treats as whitespace inside a subject.
#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// Splits a subject into its tokens. `"a..b"` yields an empty middle token; `""` yields one
/// empty token (as `str::split` does). It scans bytes for the ASCII separator (a `char`
/// pattern costs more per token, and subjects are split on every routed message).
#[inline]
pub fn tokens(s: &str) -> Tokens<'_> {
    Tokens { rest: Some(s) }
}

/// The iterator of [`tokens`].
#[derive(Clone, Debug)]
pub struct Tokens<'a> {
    /// What follows the tokens taken so far (`None`: no token left).
    pub(crate) rest: Option<&'a str>,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match s.bytes().position(|b| b == TSEP) {
            // The separator is ASCII: both sides of it are char boundaries.
            Some(i) => {
                self.rest = s.get(i + 1..);
                s.get(..i)
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// Number of tokens in `s` (an empty string counts as one empty token).
#[inline]
pub fn num_tokens(s: &str) -> usize {
    s.bytes().filter(|&b| b == TSEP).count() + 1
}

/// True if the token is exactly `*` or `>`.
#[inline]
pub fn is_wildcard_token(t: &str) -> bool {
    t == PWC || t == FWC
}

/// True if no token of `s` is a wildcard (`*` or `>` as a whole token). Says nothing about
/// whether `s` is otherwise valid.
pub fn is_literal(s: &str) -> bool {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if (c == b'*' || c == b'>')
            && (i == 0 || b[i - 1] == TSEP)
            && (i + 1 == b.len() || b[i + 1] == TSEP)
        {
            return false;
        }
    }
    true
}

/// Structural check only: non-empty, no empty token, nothing after a `>` token. This is exactly
/// what nats-server's Sublist enforces on insert, so a SUB it accepts we accept (whitespace is
/// not checked here: the protocol parser has already split on it).
pub fn is_well_formed(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let mut after_fwc = false;
    for t in tokens(s) {
        if t.is_empty() || after_fwc {
            return false;
        }
        if t == FWC {
            after_fwc = true;
        }
    }
    true
}

/// nats-server's `IsValidSubject`: well formed and no ASCII whitespace (space, tab, CR, LF,
/// form feed). Wildcards are allowed.
pub fn is_valid_subject(s: &str) -> bool {
    is_well_formed(s) && !s.bytes().any(is_ws)
}

/// [`is_valid_subject`] plus no NUL byte. (nats-server also rejects invalid UTF-8 here; a
/// `&str` is always valid UTF-8, so callers holding raw bytes must convert first.)
pub fn is_valid_subject_strict(s: &str) -> bool {
    !s.as_bytes().contains(&0) && is_valid_subject(s)
}

/// A valid subject with no wildcard token: what may be published to (nats-server's
/// `IsValidPublishSubject`).
pub fn is_valid_literal_subject(s: &str) -> bool {
    is_valid_subject(s) && is_literal(s)
}

/// The check nats-server applies to PUB/HPUB subjects from a `pedantic` client (its
/// `IsValidLiteralSubject`): non-empty tokens and no wildcard token. Unlike
/// [`is_valid_literal_subject`] it does not look for whitespace.
pub fn is_valid_pedantic_publish(s: &str) -> bool {
    tokens(s).all(|t| !t.is_empty() && !is_wildcard_token(t))
}

/// A queue group name: non-empty and free of whitespace (the protocol splits arguments on
/// whitespace, so nothing else can be carried). nats-server does not check queue names on SUB
/// beyond that; `.` and wildcard characters are ordinary characters in a queue name.
pub fn is_valid_queue_name(q: &str) -> bool {
    !q.is_empty() && !q.bytes().any(is_ws)
}

/// True if any token of `s` is a wildcard (the opposite of [`is_literal`]).
#[inline]
pub fn has_wildcard(s: &str) -> bool {
    !is_literal(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subject_table() {
        // (subject, is_valid_subject, is_valid_literal_subject)
        let table: &[(&str, bool, bool)] = &[
            ("", false, false),
            (".", false, false),
            ("foo", true, true),
            ("foo.bar", true, true),
            ("foo.bar.baz", true, true),
            ("foo.", false, false),
            (".foo", false, false),
            ("foo..bar", false, false),
            ("*", true, false),
            (">", true, false),
            ("foo.*", true, false),
            ("foo.>", true, false),
            ("*.bar", true, false),
            ("foo.*.bar", true, false),
            ("foo.>.bar", false, false),
            (">.bar", false, false),
            ("foo.>.>", false, false),
            ("foo*", true, true),
            ("foo.bar*", true, true),
            ("*foo", true, true),
            ("a>b", true, true),
            ("foo.>bar", true, true),
            ("foo>", true, true),
            ("**", true, true),
            (">>", true, true),
            ("foo.**.bar", true, true),
            ("foo bar", false, false),
            ("foo\tbar", false, false),
            ("foo\nbar", false, false),
            ("foo\rbar", false, false),
            ("foo\x0cbar", false, false),
            (" ", false, false),
            ("foo. .bar", false, false),
            ("foo.\t", false, false),
            ("$SYS.REQ.SERVER.PING", true, true),
            ("_INBOX.abc123", true, true),
            ("héllo.wörld", true, true),
            ("foo-bar_baz:1/2", true, true),
        ];
        for &(s, valid, literal) in table {
            assert_eq!(is_valid_subject(s), valid, "is_valid_subject({s:?})");
            assert_eq!(
                is_valid_literal_subject(s),
                literal,
                "is_valid_literal_subject({s:?})"
            );
            assert_eq!(is_valid_subject_strict(s), valid, "strict({s:?})");
        }
    }

    #[test]
    fn well_formed_ignores_whitespace() {
        assert!(is_well_formed("foo bar"));
        assert!(is_well_formed("foo.\x0c"));
        assert!(is_well_formed("foo.>"));
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("foo..bar"));
        assert!(!is_well_formed("foo.>.bar"));
        assert!(!is_well_formed("foo."));
    }

    #[test]
    fn strict_rejects_nul() {
        assert!(is_valid_subject("foo\0bar"));
        assert!(!is_valid_subject_strict("foo\0bar"));
        assert!(!is_valid_subject_strict("\0"));
    }

    #[test]
    fn pedantic_publish() {
        assert!(is_valid_pedantic_publish("foo.bar"));
        assert!(is_valid_pedantic_publish("foo.bar*"));
        assert!(is_valid_pedantic_publish("foo bar")); // server does not check whitespace here
        assert!(!is_valid_pedantic_publish(""));
        assert!(!is_valid_pedantic_publish("foo..bar"));
        assert!(!is_valid_pedantic_publish("foo.*"));
        assert!(!is_valid_pedantic_publish(">"));
        assert!(!is_valid_pedantic_publish("foo.>.bar"));
    }

    #[test]
    fn literal_and_tokens() {
        assert!(is_literal("foo.bar"));
        assert!(is_literal("foo*.b>"));
        assert!(is_literal(""));
        assert!(!is_literal("*"));
        assert!(!is_literal("foo.*"));
        assert!(!is_literal("*.foo"));
        assert!(!is_literal("foo.>"));
        assert!(!is_literal("a.*.b"));
        assert!(has_wildcard("a.>"));
        assert_eq!(tokens("a.b.c").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(tokens("a..c").collect::<Vec<_>>(), ["a", "", "c"]);
        assert_eq!(num_tokens("a.b.c"), 3);
        assert_eq!(num_tokens("a"), 1);
    }

    #[test]
    fn queue_names() {
        assert!(is_valid_queue_name("workers"));
        assert!(is_valid_queue_name("v1.*"));
        assert!(is_valid_queue_name("q>"));
        assert!(!is_valid_queue_name(""));
        assert!(!is_valid_queue_name("a b"));
        assert!(!is_valid_queue_name("a\tb"));
        assert!(!is_valid_queue_name("a\r\n"));
    }
}
