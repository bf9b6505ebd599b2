//! Subject transforms: nats-server's subject mapping language (account `mappings`, stream
//! `subject_transform` and `republish`, import `to` subjects), its weighted destinations and the
//! reverse transform used to carry interest back across an import.
//!
//! Behaviour follows nats-server 2.10/2.11 (`server/subject_transform.go`, `ValidateMapping` and
//! `Account.AddWeightedMappings`), including its quirks, so that a mapping sends a message to the
//! same subject (and partition) on Canopy and on nats-server in one cluster. Where this module
//! departs from nats-server, the item says so; the differences are limited to inputs on which
//! nats-server panics or produces bytes that are not UTF-8.
//!
//! # The language
//!
//! A transform has a *source* filter (`*` and `>` allowed; empty means `>`) and a *destination*.
//! Destination tokens are literals, `>` (only when the source ends in `>`, and then the tail of
//! the subject from the source's `>` position is appended) or placeholders naming the source's
//! `*` wildcards by 1-based position:
//!
//! | token | result |
//! |---|---|
//! | `$n`, `{{wildcard(n)}}` | the token matched by the n-th `*` |
//! | `{{partition(p, n, m, ...)}}` | FNV-1a (32-bit) of the named tokens concatenated, mod `p` |
//! | `{{split(n, d)}}` | the token split on the delimiter `d`, empty pieces dropped |
//! | `{{splitfromleft(n, i)}}` / `{{splitfromright(n, i)}}` | the token cut in two, `i` bytes from the left / right |
//! | `{{slicefromleft(n, s)}}` / `{{slicefromright(n, s)}}` | the token cut into `s`-byte pieces from the left / right |
//! | `{{left(n, l)}}` / `{{right(n, l)}}` | the first / last `l` bytes of the token |
//!
//! Function names are matched as nats-server's regular expressions match them: the first letter
//! of each word may be either case (`wildcard`, `Wildcard`, `SplitFromLeft`, `splitfromleft`),
//! nothing else (`WILDCARD` is an unknown function); spaces are allowed around the name, the
//! parentheses and after commas.
//!
//! # Errors
//!
//! Every error text is nats-server's ([`TransformError`]); `mapping destination` errors name the
//! offending token the way nats-server does (`... in {{wildcard(2)}}: [2]`).

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::validate::{is_valid_subject, is_well_formed, FWC, PWC, TSEP};

/// Why a transform or a weighted mapping could not be built, or a subject not transformed.
/// The texts are nats-server's (`ErrBadSubject`, `ErrNoTransforms`, the
/// `ErrMappingDestination*` family, `AddWeightedMappings`'s weight errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The source or destination is not a valid subject, the destination has a `*`, only one
    /// side has `>`, or (when applying) the subject is not a valid literal subject.
    #[error("invalid subject")]
    BadSubject,
    /// [`Transform::apply`]: the subject does not match the transform's source.
    #[error("no matching transforms available")]
    NoMatch,
    /// [`validate_mapping`]: a destination token that is not a function contains whitespace.
    #[error("invalid mapping destination: invalid transform")]
    InvalidDestination,
    /// [`validate_mapping`]: an empty destination token or a token after `>`.
    #[error("invalid mapping destination: invalid transform in {token}")]
    InvalidDestinationToken { token: String },
    /// Strict mode: not every source wildcard is placed in the destination (`token` is the
    /// whole destination).
    #[error("invalid mapping destination: not using all of the token wildcard(s) in {token}")]
    NotUsingAllWildcards { token: String },
    /// `{{name(...)}}` with a name that is not a mapping function.
    #[error("invalid mapping destination: unknown function in {token}")]
    UnknownFunction { token: String },
    /// A placeholder names a wildcard the source does not have (or the source has no `*`).
    #[error("invalid mapping destination: wildcard index out of range in {token}")]
    IndexOutOfRange { token: String },
    #[error("invalid mapping destination: not enough arguments passed to the function in {token}")]
    NotEnoughArgs { token: String },
    #[error("invalid mapping destination: function argument is invalid or in the wrong format in {token}")]
    InvalidArg { token: String },
    #[error("invalid mapping destination: too many arguments passed to the function in {token}")]
    TooManyArgs { token: String },
    /// Strict mode allows only `$n` and `{{wildcard(n)}}`.
    #[error("invalid mapping destination: the only mapping function allowed for import transforms is {{{{Wildcard()}}}} in {token}")]
    NotSupportedForImport { token: String },
    /// Weighted mapping: the same destination subject twice.
    #[error("duplicate entry for {0:?}")]
    DuplicateEntry(String),
    /// Weighted mapping: one weight above 100.
    #[error("individual weights need to be <= 100")]
    WeightTooLarge,
    /// Weighted mapping: the weights of one cluster (or of the unscoped entries) above 100.
    #[error("total weight needs to be <= 100")]
    TotalWeightTooLarge,
    /// Canopy only: a byte-position function (`splitfromleft`, `slicefromright`, `left`, ...)
    /// would cut a multi-byte UTF-8 character of `token`. nats-server cuts the bytes and
    /// produces a subject that is not UTF-8; a `&str` subject cannot carry that.
    #[error("subject transform would cut a multi-byte character in token {token:?}")]
    NotCharBoundary { token: String },
}

impl TransformError {
    /// True for the `invalid mapping destination` family (nats-server's
    /// `errors.Is(err, ErrInvalidMappingDestination)`).
    pub fn is_invalid_mapping_destination(&self) -> bool {
        matches!(
            self,
            Self::InvalidDestination
                | Self::InvalidDestinationToken { .. }
                | Self::NotUsingAllWildcards { .. }
                | Self::UnknownFunction { .. }
                | Self::IndexOutOfRange { .. }
                | Self::NotEnoughArgs { .. }
                | Self::InvalidArg { .. }
                | Self::TooManyArgs { .. }
                | Self::NotSupportedForImport { .. }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing destination tokens (nats-server's `indexPlaceHolders`)
// ---------------------------------------------------------------------------------------------

/// The functions, in the order nats-server tries its regular expressions. Names are patterns:
/// an upper-case letter matches either case, a lower-case letter only itself.
const F_WILDCARD: &str = "Wildcard";
const F_PARTITION: &str = "Partition";
const F_SPLIT_FROM_LEFT: &str = "SplitFromLeft";
const F_SPLIT_FROM_RIGHT: &str = "SplitFromRight";
const F_SLICE_FROM_LEFT: &str = "SliceFromLeft";
const F_SLICE_FROM_RIGHT: &str = "SliceFromRight";
const F_SPLIT: &str = "Split";
const F_LEFT: &str = "Left";
const F_RIGHT: &str = "Right";

/// The functions [`validate_mapping`] recognises. nats-server's `ValidateMapping` does not list
/// `left` and `right`, so account mappings reject them while stream transforms accept them.
const VALIDATE_FUNCTIONS: [&str; 7] = [
    F_PARTITION,
    F_WILDCARD,
    F_SPLIT_FROM_LEFT,
    F_SPLIT_FROM_RIGHT,
    F_SLICE_FROM_LEFT,
    F_SLICE_FROM_RIGHT,
    F_SPLIT,
];

/// Go's regexp `\s`: `[\t\n\f\r ]`.
#[inline]
fn is_go_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0c | b'\r' | b' ')
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_go_space(b[i]) {
        i += 1;
    }
    i
}

/// Matches the name pattern at `b[i..]`, returning the index after it.
fn match_name(b: &[u8], i: usize, name: &str) -> Option<usize> {
    let n = name.as_bytes();
    let s = b.get(i..i + n.len())?;
    let ok = s.iter().zip(n).all(|(&c, &p)| {
        if p.is_ascii_uppercase() {
            c == p || c == p.to_ascii_lowercase()
        } else {
            c == p
        }
    });
    ok.then_some(i + n.len())
}

/// Emulates Go's `regexp.FindStringSubmatch` for `{{\s*NAME\s*\((.*)\)\s*}}` (unanchored,
/// leftmost-first, greedy `.*` that does not cross `\n`) and returns the capture.
fn find_function<'t>(token: &'t str, name: &str) -> Option<&'t str> {
    let b = token.as_bytes();
    for start in 0..b.len() {
        if !b[start..].starts_with(b"{{") {
            continue;
        }
        let Some(after_name) = match_name(b, skip_space(b, start + 2), name) else {
            continue;
        };
        let open = skip_space(b, after_name);
        if b.get(open) != Some(&b'(') {
            continue;
        }
        let from = open + 1;
        let limit = b[from..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |p| from + p);
        // Greedy: the last `)` (before any newline) that is followed by `\s*}}`.
        let mut q = limit;
        while q > from {
            q -= 1;
            if b[q] == b')' && b[skip_space(b, q + 1)..].starts_with(b"}}") {
                return Some(&token[from..q]);
            }
        }
    }
    None
}

/// Go's `regexp.MustCompile(`,\s*`).Split(s, -1)`: pieces after the first lose their leading
/// whitespace.
fn split_args(capture: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, piece) in capture.split(',').enumerate() {
        if i == 0 {
            out.push(piece);
        } else {
            out.push(piece.trim_start_matches(|c: char| c.is_ascii() && is_go_space(c as u8)));
        }
    }
    out
}

/// Go's `strconv.Atoi(strings.Trim(s, " "))` on a 64-bit platform.
fn atoi(s: &str) -> Option<i64> {
    s.trim_matches(' ').parse::<i64>().ok()
}

/// A destination token as nats-server's `indexPlaceHolders` reads it (indexes not yet resolved
/// against the source).
#[derive(Debug)]
enum Placeholder {
    None,
    Wildcard(i64),
    Partition(i32, Vec<i64>),
    IndexInt(IntFn, i64, i32),
    Split(i64, String),
}

/// The functions that take a wildcard index and an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntFn {
    SplitFromLeft,
    SplitFromRight,
    SliceFromLeft,
    SliceFromRight,
    Left,
    Right,
}

fn index_int_args(token: &str, args: &[&str], f: IntFn) -> Result<Placeholder, TransformError> {
    let t = || token.to_string();
    if args.len() < 2 {
        return Err(TransformError::NotEnoughArgs { token: t() });
    }
    if args.len() > 2 {
        return Err(TransformError::TooManyArgs { token: t() });
    }
    let i = atoi(args[0]).ok_or_else(|| TransformError::InvalidArg { token: t() })?;
    // 2.11 parses the integer argument with a 32-bit range (2.10 truncated it).
    let n = args[1]
        .trim_matches(' ')
        .parse::<i32>()
        .map_err(|_| TransformError::InvalidArg { token: t() })?;
    Ok(Placeholder::IndexInt(f, i, n))
}

fn parse_placeholder(token: &str) -> Result<Placeholder, TransformError> {
    let b = token.as_bytes();
    let t = || token.to_string();
    if b.len() <= 1 {
        return Ok(Placeholder::None);
    }
    if b[0] == b'$' {
        // Legacy `$n`; a `$` token that is not a number is a literal (other features use `$`).
        return Ok(match token[1..].parse::<i64>() {
            Ok(n) => Placeholder::Wildcard(n),
            Err(_) => Placeholder::None,
        });
    }
    if !(b.len() > 4 && b.starts_with(b"{{") && b.ends_with(b"}}")) {
        return Ok(Placeholder::None);
    }
    if let Some(c) = find_function(token, F_WILDCARD) {
        let args = split_args(c);
        return match args.as_slice() {
            [""] => Err(TransformError::NotEnoughArgs { token: t() }),
            [a] => atoi(a)
                .map(Placeholder::Wildcard)
                .ok_or_else(|| TransformError::InvalidArg { token: t() }),
            _ => Err(TransformError::TooManyArgs { token: t() }),
        };
    }
    if let Some(c) = find_function(token, F_PARTITION) {
        let args = split_args(c);
        if args.len() < 2 {
            return Err(TransformError::NotEnoughArgs { token: t() });
        }
        // Go converts the partition count with int32(...): it wraps.
        let n = atoi(args[0]).ok_or_else(|| TransformError::InvalidArg { token: t() })? as i32;
        let idx = args[1..]
            .iter()
            .map(|a| atoi(a).ok_or_else(|| TransformError::InvalidArg { token: t() }))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Placeholder::Partition(n, idx));
    }
    let int_fns = [
        (F_SPLIT_FROM_LEFT, IntFn::SplitFromLeft),
        (F_SPLIT_FROM_RIGHT, IntFn::SplitFromRight),
        (F_SLICE_FROM_LEFT, IntFn::SliceFromLeft),
        (F_SLICE_FROM_RIGHT, IntFn::SliceFromRight),
        (F_RIGHT, IntFn::Right),
        (F_LEFT, IntFn::Left),
    ];
    for (name, f) in int_fns {
        if let Some(c) = find_function(token, name) {
            return index_int_args(token, &split_args(c), f);
        }
    }
    if let Some(c) = find_function(token, F_SPLIT) {
        let args = split_args(c);
        if args.len() < 2 {
            return Err(TransformError::NotEnoughArgs { token: t() });
        }
        if args.len() > 2 {
            return Err(TransformError::TooManyArgs { token: t() });
        }
        let i = atoi(args[0]).ok_or_else(|| TransformError::InvalidArg { token: t() })?;
        if args[1].contains(' ') || args[1].contains('.') {
            return Err(TransformError::InvalidArg { token: t() });
        }
        return Ok(Placeholder::Split(i, args[1].to_string()));
    }
    Err(TransformError::UnknownFunction { token: t() })
}

// ---------------------------------------------------------------------------------------------
// The transform
// ---------------------------------------------------------------------------------------------

/// A source token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SrcTok {
    Lit(Box<str>),
    Pwc,
    Fwc,
}

/// What one destination token produces. Indexes are positions of source tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Func {
    /// The token text (a `>` token ends the loop and appends the tail instead).
    Literal,
    Wildcard(usize),
    /// Bucket count as Go's `uint32(int(int32(n)))`, and the hashed tokens.
    Partition(u32, Box<[usize]>),
    IndexInt(IntFn, usize, i32),
    Split(usize, Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DestTok {
    text: Box<str>,
    func: Func,
}

/// A compiled subject transform (nats-server's `subjectTransform`).
///
/// Build it once ([`Transform::new`], [`Transform::new_strict`], [`Transform::stream_import`],
/// [`Transform::service_import`]), then [`Transform::apply`] it per message: one pass over the
/// subject, no allocation beyond the output (none at all when the output is the subject itself
/// or a literal destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    source: String,
    dest: String,
    src: Vec<SrcTok>,
    /// Empty when the source has no wildcard: the output is then always `dest`.
    dtoks: Vec<DestTok>,
    /// The destination ends in `>`.
    dest_fwc: bool,
    /// The output is the input subject (empty destination, or `>` to `>`).
    identity: bool,
    /// The output is always `dest` (no placeholder, no `>`).
    literal: bool,
}

/// Number of token spans kept on the stack while applying a transform.
const INLINE_SPANS: usize = 32;

/// Byte spans of the first `need` tokens of a subject, on the stack unless `need` is large.
struct Spans {
    inline: [(usize, usize); INLINE_SPANS],
    heap: Vec<(usize, usize)>,
    len: usize,
    /// Tokens in the whole subject.
    total: usize,
}

impl Spans {
    /// Splits `subject` once. With `check`, fails as nats-server's `Match` does on a subject
    /// that is not a valid literal subject (an empty token, or a `*` or `>` token).
    fn scan(subject: &str, need: usize, check: bool) -> Result<Spans, TransformError> {
        let mut s = Spans {
            inline: [(0, 0); INLINE_SPANS],
            heap: if need > INLINE_SPANS {
                Vec::with_capacity(need)
            } else {
                Vec::new()
            },
            len: 0,
            total: 0,
        };
        let b = subject.as_bytes();
        let mut start = 0;
        loop {
            let end = b[start..]
                .iter()
                .position(|&c| c == TSEP)
                .map_or(b.len(), |p| start + p);
            if check {
                let t = &b[start..end];
                if t.is_empty() || t == b"*" || t == b">" {
                    return Err(TransformError::BadSubject);
                }
            }
            if s.len < need {
                if need > INLINE_SPANS {
                    s.heap.push((start, end));
                } else {
                    s.inline[s.len] = (start, end);
                }
                s.len += 1;
            }
            s.total += 1;
            if end == b.len() {
                return Ok(s);
            }
            start = end + 1;
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.len {
            None
        } else if self.heap.is_empty() {
            Some(self.inline[i])
        } else {
            self.heap.get(i).copied()
        }
    }

    /// Token `i` of `subject`, or `""` if the subject is shorter (nats-server panics there for
    /// all functions but `wildcard`; we write nothing).
    #[inline]
    fn token<'s>(&self, subject: &'s str, i: usize) -> &'s str {
        self.get(i).map_or("", |(a, b)| &subject[a..b])
    }
}

/// FNV-1a, 32 bit (Go's `hash/fnv.New32a`).
#[derive(Clone, Copy)]
struct Fnv32a(u32);

impl Fnv32a {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;

    fn new() -> Self {
        Fnv32a(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u32::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

/// FNV-1a (32-bit) hash of `key` modulo `buckets`, the value `{{partition(...)}}` writes.
/// `buckets == 0` gives 0 (nats-server 2.10/2.11 panic on it; later versions write `0`).
pub fn partition_of(key: &[u8], buckets: u32) -> u32 {
    let mut h = Fnv32a::new();
    h.write(key);
    h.0.checked_rem(buckets).unwrap_or(0)
}

fn cut(token: &str, at: usize) -> Result<(&str, &str), TransformError> {
    if token.is_char_boundary(at) {
        Ok(token.split_at(at))
    } else {
        Err(TransformError::NotCharBoundary {
            token: token.to_string(),
        })
    }
}

fn slice(token: &str, from: usize, to: usize) -> Result<&str, TransformError> {
    token
        .get(from..to)
        .ok_or_else(|| TransformError::NotCharBoundary {
            token: token.to_string(),
        })
}

/// Writes one byte-position function's output for `tok`.
fn write_int_fn(out: &mut String, f: IntFn, tok: &str, n: i32) -> Result<(), TransformError> {
    let len = tok.len();
    // Every function leaves the token whole unless 0 < n < len.
    let n = match usize::try_from(n) {
        Ok(n) if n > 0 && n < len => n,
        _ => {
            out.push_str(tok);
            return Ok(());
        }
    };
    match f {
        IntFn::SplitFromLeft | IntFn::SplitFromRight => {
            let at = if f == IntFn::SplitFromLeft {
                n
            } else {
                len - n
            };
            let (a, b) = cut(tok, at)?;
            out.push_str(a);
            out.push('.');
            out.push_str(b);
        }
        IntFn::SliceFromLeft => {
            let mut i = 0;
            while i + n <= len {
                if i != 0 {
                    out.push('.');
                }
                out.push_str(slice(tok, i, i + n)?);
                if i + n != len && i + n + n > len {
                    out.push('.');
                    out.push_str(slice(tok, i + n, len)?);
                    break;
                }
                i += n;
            }
        }
        IntFn::SliceFromRight => {
            let rem = len % n;
            if rem > 0 {
                out.push_str(slice(tok, 0, rem)?);
                out.push('.');
            }
            let mut i = rem;
            while i + n <= len {
                out.push_str(slice(tok, i, i + n)?);
                if i + n < len {
                    out.push('.');
                }
                i += n;
            }
        }
        IntFn::Left => out.push_str(slice(tok, 0, n)?),
        IntFn::Right => out.push_str(slice(tok, len - n, len)?),
    }
    Ok(())
}

/// `{{split(n, d)}}`: nats-server drops empty pieces but, quirk included, writes a separator
/// before a non-empty piece that follows an empty one unless the empty one is the first.
fn write_split(out: &mut String, tok: &str, delim: &str) {
    if delim.is_empty() {
        // Go's strings.Split with an empty separator cuts between characters.
        for (j, c) in tok.chars().enumerate() {
            if j > 0 {
                out.push('.');
            }
            out.push(c);
        }
        return;
    }
    let mut pieces = tok.split(delim).enumerate().peekable();
    while let Some((j, piece)) = pieces.next() {
        out.push_str(piece);
        if let Some((_, next)) = pieces.peek() {
            let after_leading_empty = j == 0 && piece.is_empty();
            if !next.is_empty() && !after_leading_empty {
                out.push('.');
            }
        }
    }
}

/// Structure check nats-server's `subjectInfo` makes: valid, number of `*`, has `>`.
fn subject_info(s: &str) -> Option<(usize, bool)> {
    if !is_well_formed(s) {
        return None;
    }
    let pwcs = s.split('.').filter(|&t| t == PWC).count();
    Some((pwcs, s.split('.').next_back() == Some(FWC)))
}

impl Transform {
    /// nats-server's `NewSubjectTransform`: a mapping from `source` (empty = `>`) to `dest`.
    /// An empty `dest` gives the identity on subjects matching `source` (nats-server returns no
    /// transform, which its callers treat the same way).
    pub fn new(source: &str, dest: &str) -> Result<Transform, TransformError> {
        Self::with_strict(source, dest, false)
    }

    /// nats-server's `NewSubjectTransformStrict`, used for imports: only `$n` and
    /// `{{wildcard(n)}}` are allowed, and there must be at least as many placeholders as source
    /// wildcards (nats-server counts placeholders, it does not check that each wildcard is
    /// named).
    pub fn new_strict(source: &str, dest: &str) -> Result<Transform, TransformError> {
        Self::with_strict(source, dest, true)
    }

    /// nats-server's `NewSubjectTransformWithStrict`.
    pub fn with_strict(
        source: &str,
        dest: &str,
        strict: bool,
    ) -> Result<Transform, TransformError> {
        let source = if source.is_empty() { FWC } else { source };
        if dest.is_empty() {
            // nats-server returns "no transform" here without looking at the source.
            return Ok(Transform {
                source: source.to_string(),
                dest: String::new(),
                src: src_tokens(source),
                dtoks: Vec::new(),
                dest_fwc: false,
                identity: true,
                literal: false,
            });
        }
        let (Some((npwcs, src_fwc)), Some((dest_pwcs, dest_fwc))) =
            (subject_info(source), subject_info(dest))
        else {
            return Err(TransformError::BadSubject);
        };
        if dest_pwcs > 0 || src_fwc != dest_fwc {
            return Err(TransformError::BadSubject);
        }
        let src = src_tokens(source);
        let mut dtoks = Vec::new();
        if npwcs > 0 || src_fwc {
            // Source position of the k-th `*` (1-based); any other index reads position 0
            // (Go looks it up in a map and gets the zero value).
            let pwc_pos: Vec<usize> = src
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == SrcTok::Pwc)
                .map(|(i, _)| i)
                .collect();
            let resolve = |token: &str, k: i64| -> Result<usize, TransformError> {
                if k > npwcs as i64 {
                    return Err(TransformError::IndexOutOfRange {
                        token: format!("{token}: [{k}]"),
                    });
                }
                Ok(usize::try_from(k - 1)
                    .ok()
                    .and_then(|i| pwc_pos.get(i).copied())
                    .unwrap_or(0))
            };
            let mut placed = 0usize;
            for token in dest.split('.') {
                let ph = parse_placeholder(token)?;
                let is_fn = !matches!(ph, Placeholder::None);
                if strict && is_fn && !matches!(ph, Placeholder::Wildcard(_)) {
                    return Err(TransformError::NotSupportedForImport {
                        token: token.to_string(),
                    });
                }
                if npwcs == 0 && is_fn {
                    return Err(TransformError::IndexOutOfRange {
                        token: token.to_string(),
                    });
                }
                let func = match ph {
                    Placeholder::None => Func::Literal,
                    Placeholder::Wildcard(k) => {
                        placed += 1;
                        Func::Wildcard(resolve(token, k)?)
                    }
                    Placeholder::Partition(n, idx) => {
                        placed += idx.len();
                        let pos = idx
                            .iter()
                            .map(|&k| resolve(token, k))
                            .collect::<Result<Vec<_>, _>>()?;
                        // Go: uint32(int(int32 n)).
                        Func::Partition(n as u32, pos.into_boxed_slice())
                    }
                    Placeholder::IndexInt(f, k, n) => {
                        placed += 1;
                        Func::IndexInt(f, resolve(token, k)?, n)
                    }
                    Placeholder::Split(k, d) => {
                        placed += 1;
                        Func::Split(resolve(token, k)?, d.into_boxed_str())
                    }
                };
                dtoks.push(DestTok {
                    text: token.into(),
                    func,
                });
            }
            if strict && placed < npwcs {
                return Err(TransformError::NotUsingAllWildcards {
                    token: dest.to_string(),
                });
            }
        } else {
            // No wildcard in the source: no function may be used.
            for token in dest.split('.') {
                if !matches!(parse_placeholder(token)?, Placeholder::None) {
                    return Err(TransformError::IndexOutOfRange {
                        token: token.to_string(),
                    });
                }
            }
        }
        let literal = dtoks.iter().all(|t| t.func == Func::Literal) && !dest_fwc;
        Ok(Transform {
            identity: source == FWC && dest == FWC,
            source: source.to_string(),
            dest: dest.to_string(),
            src,
            dtoks,
            dest_fwc,
            literal,
        })
    }

    /// The transform nats-server builds for a stream import (`AddStreamImport`): messages on
    /// the exporter's `from` are delivered to the importer as `to`. An empty `to` or
    /// `to == from` keeps the subject; with a literal `from`, every message goes to `to`
    /// verbatim; otherwise `*` tokens in `to` take `from`'s wildcards in order (`$1`, `$2`...)
    /// and the transform is strict. nats-server applies import transforms with
    /// [`Transform::transform`] (the subscription already matched).
    pub fn stream_import(from: &str, to: &str) -> Result<Transform, TransformError> {
        let to = if to.is_empty() { from } else { to };
        if !crate::validate::has_wildcard(from) {
            return Ok(Self::verbatim(from, to));
        }
        if to == from {
            return Self::new(from, "");
        }
        Self::new_strict(from, &tokenize_wildcards(to))
    }

    /// The transform nats-server builds for a service import (`AddServiceImport`): requests on
    /// the importer's `from` are sent to the exporter's `to`. A `to` without wildcard tokens
    /// is used verbatim (even if it contains `$1`); `to == from` keeps the subject; otherwise,
    /// like nats-server, the transform is built from `to` back to `from` and reversed, so
    /// `to`'s wildcards (`*`, `$n`, `{{wildcard(n)}}`) take `from`'s wildcards positionally,
    /// whatever numbers they carry.
    pub fn service_import(from: &str, to: &str) -> Result<Transform, TransformError> {
        let to = if to.is_empty() { from } else { to };
        if !crate::validate::has_wildcard(to) {
            return Ok(Self::verbatim(from, to));
        }
        if to == from {
            return Self::new(from, "");
        }
        let (to_filter, _) = untokenize_wildcards(to);
        let back = Self::new_strict(&to_filter, &tokenize_wildcards(from))?;
        back.reverse()
            .ok_or_else(|| TransformError::NotUsingAllWildcards {
                token: from.to_string(),
            })
    }

    /// Matches `source`, always outputs `dest` as given (nats-server's imports without a
    /// transform).
    fn verbatim(source: &str, dest: &str) -> Transform {
        Transform {
            source: source.to_string(),
            dest: dest.to_string(),
            src: src_tokens(source),
            dtoks: Vec::new(),
            dest_fwc: false,
            identity: false,
            literal: true,
        }
    }

    /// The source filter (`>` when built with an empty source).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The destination as given (empty for the identity built from an empty destination).
    pub fn destination(&self) -> &str {
        &self.dest
    }

    /// True if the output is always the input subject.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// True if `subject` is a valid literal subject that the source matches: exactly when
    /// [`Transform::apply`] transforms it.
    pub fn matches(&self, subject: &str) -> bool {
        if self.identity && self.source == FWC {
            return true;
        }
        match Spans::scan(subject, self.src.len(), true) {
            Ok(spans) => self.source_matches(subject, &spans),
            Err(_) => false,
        }
    }

    /// nats-server's `Match`: transforms a published subject if the source matches it.
    ///
    /// Errors: [`TransformError::BadSubject`] if `subject` has an empty or wildcard token,
    /// [`TransformError::NoMatch`] if the source does not match it, and
    /// [`TransformError::NotCharBoundary`] (Canopy only) for a byte cut inside a character.
    /// The result borrows `subject` or the destination when no new string is needed.
    pub fn apply<'a>(&'a self, subject: &'a str) -> Result<Cow<'a, str>, TransformError> {
        if self.identity && self.source == FWC {
            return Ok(Cow::Borrowed(subject));
        }
        let spans = Spans::scan(subject, self.src.len(), true)?;
        if !self.source_matches(subject, &spans) {
            return Err(TransformError::NoMatch);
        }
        self.render(subject, &spans)
    }

    /// nats-server's `TransformSubject`: transforms without checking that the source matches
    /// (for callers that already know, e.g. after a Sublist match). Missing tokens read as
    /// empty; never panics.
    pub fn transform<'a>(&'a self, subject: &'a str) -> Result<Cow<'a, str>, TransformError> {
        let spans = Spans::scan(subject, self.src.len(), false)?;
        self.render(subject, &spans)
    }

    /// nats-server's `isSubsetMatch` of a subject against the source, including its quirk: a
    /// source token that merely *starts* with `*` (`*x`, a literal) matches any token.
    fn source_matches(&self, subject: &str, spans: &Spans) -> bool {
        for (i, st) in self.src.iter().enumerate() {
            let Some((a, b)) = spans.get(i) else {
                return false;
            };
            if *st == SrcTok::Fwc {
                return true;
            }
            let t = &subject[a..b];
            if t.is_empty() || t == FWC {
                return false;
            }
            let ok = match st {
                // A `*` token in the subject is only matched by a `*` in the source.
                _ if t == PWC => *st == SrcTok::Pwc,
                SrcTok::Lit(l) => l.starts_with('*') || **l == *t,
                _ => true,
            };
            if !ok {
                return false;
            }
        }
        spans.total == self.src.len()
    }

    /// [`Transform::source_matches`] on an unchecked subject (nats-server's mapping lookup
    /// does not validate the published subject).
    fn subset_match(&self, subject: &str) -> bool {
        match Spans::scan(subject, self.src.len(), false) {
            Ok(spans) => self.source_matches(subject, &spans),
            Err(_) => false,
        }
    }

    fn render<'a>(
        &'a self,
        subject: &'a str,
        spans: &Spans,
    ) -> Result<Cow<'a, str>, TransformError> {
        if self.identity {
            return Ok(Cow::Borrowed(subject));
        }
        if self.dtoks.is_empty() || self.literal {
            return Ok(Cow::Borrowed(&self.dest));
        }
        let mut out = String::with_capacity(self.dest.len() + subject.len());
        let last = self.dtoks.len() - 1;
        for (i, dt) in self.dtoks.iter().enumerate() {
            match &dt.func {
                Func::Literal => {
                    if &*dt.text == FWC {
                        break;
                    }
                    out.push_str(&dt.text);
                }
                Func::Wildcard(p) => out.push_str(spans.token(subject, *p)),
                Func::Partition(n, pos) => {
                    let mut h = Fnv32a::new();
                    for &p in pos.iter() {
                        h.write(spans.token(subject, p).as_bytes());
                    }
                    let v = h.0.checked_rem(*n).unwrap_or(0);
                    let _ = write!(out, "{v}");
                }
                Func::IndexInt(f, p, n) => {
                    write_int_fn(&mut out, *f, spans.token(subject, *p), *n)?
                }
                Func::Split(p, d) => write_split(&mut out, spans.token(subject, *p), d),
            }
            if i < last {
                out.push('.');
            }
        }
        if self.dest_fwc {
            // The subject from the source's `>` position on.
            if let Some((start, _)) = spans.get(self.src.len() - 1) {
                out.push_str(&subject[start..]);
            }
        }
        Ok(Cow::Owned(out))
    }

    /// The transform that maps this one's outputs back to its inputs (nats-server's
    /// `reverse()`), used to carry interest across an import: subscriptions on the
    /// destination side become subscriptions on the source side.
    ///
    /// Placeholder tokens of the destination become `*` in the reversed source; other
    /// function tokens stay as literal tokens (as in nats-server). `None` when a source
    /// wildcard is not placed by a `$n`/`{{wildcard(n)}}` token, or is placed twice.
    ///
    /// Departure: nats-server fills the reversed destination with the placeholders in the
    /// order they appear, which is the inverse only when the wildcard permutation is its own
    /// inverse (`$2.$1`) — `foo.*.*.*` → `bar.$2.$3.$1` reverses wrongly there. Every
    /// transform nats-server itself reverses keeps wildcard order (imports build them with
    /// [`tokenize_wildcards`]), where both agree; here the result is always the inverse.
    pub fn reverse(&self) -> Option<Transform> {
        if self.identity {
            return Some(self.clone());
        }
        if self.dtoks.is_empty() {
            return Self::new_strict(&self.dest, &self.source).ok();
        }
        let pwc_pos: Vec<usize> = self
            .src
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == SrcTok::Pwc)
            .map(|(i, _)| i)
            .collect();
        // Reversed source: placeholders become `*`, numbered by their order here.
        let mut rsrc = Vec::with_capacity(self.dtoks.len());
        // For each source wildcard (by its order), the reversed placeholder number.
        let mut placed: Vec<Option<usize>> = vec![None; pwc_pos.len()];
        let mut n = 0usize;
        for dt in &self.dtoks {
            if let Func::Wildcard(p) = dt.func {
                n += 1;
                rsrc.push(PWC);
                let k = pwc_pos.iter().position(|&q| q == p)?;
                if placed[k].replace(n).is_some() {
                    return None;
                }
            } else {
                rsrc.push(&dt.text);
            }
        }
        let mut rdest = String::with_capacity(self.source.len() + 4 * pwc_pos.len());
        let mut k = 0usize;
        for (i, st) in self.src.iter().enumerate() {
            if i > 0 {
                rdest.push('.');
            }
            match st {
                SrcTok::Pwc => {
                    let j = placed.get(k).copied().flatten()?;
                    let _ = write!(rdest, "${j}");
                    k += 1;
                }
                SrcTok::Fwc => rdest.push_str(FWC),
                SrcTok::Lit(l) => rdest.push_str(l),
            }
        }
        Self::new_strict(&rsrc.join("."), &rdest).ok()
    }
}

fn src_tokens(source: &str) -> Vec<SrcTok> {
    source
        .split('.')
        .map(|t| match t {
            PWC => SrcTok::Pwc,
            FWC => SrcTok::Fwc,
            _ => SrcTok::Lit(t.into()),
        })
        .collect()
}

/// nats-server's `transformTokenize`: numbers the `*` tokens (`foo.*.*` → `foo.$1.$2`).
pub fn tokenize_wildcards(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len() + 4);
    let mut n = 0;
    for (i, t) in subject.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if t == PWC {
            n += 1;
            let _ = write!(out, "${n}");
        } else {
            out.push_str(t);
        }
    }
    out
}

/// nats-server's `transformUntokenize`: turns `$n` (n starting with 1-9) and
/// `{{wildcard(n)}}` tokens back into `*` and returns them in order
/// (`foo.$2.$1` → (`foo.*.*`, [`$2`, `$1`])).
pub fn untokenize_wildcards(dest: &str) -> (String, Vec<&str>) {
    let mut placeholders = Vec::new();
    let mut out = Vec::new();
    for t in dest.split('.') {
        let b = t.as_bytes();
        let dollar = b.len() > 1 && b[0] == b'$' && (b'1'..=b'9').contains(&b[1]);
        let wildcard = find_function(t, F_WILDCARD)
            .map(split_args)
            .is_some_and(|a| a.len() == 1 && !a[0].is_empty());
        if dollar || wildcard {
            placeholders.push(t);
            out.push(PWC);
        } else {
            out.push(t);
        }
    }
    (out.join("."), placeholders)
}

/// nats-server's `ValidateMapping`, the check account mappings and stream transforms get
/// before the transform is built: no empty token or token after `>`, no whitespace outside a
/// function token, every `{{...}}` token a known function (not `left`/`right`, which
/// nats-server's list lacks), then [`Transform::new`].
pub fn validate_mapping(source: &str, dest: &str) -> Result<(), TransformError> {
    if dest.is_empty() {
        return Ok(());
    }
    let mut after_fwc = false;
    for t in dest.split('.') {
        let b = t.as_bytes();
        if b.is_empty() || after_fwc {
            return Err(TransformError::InvalidDestinationToken {
                token: t.to_string(),
            });
        }
        if b.len() > 4 && b.starts_with(b"{{") && b.ends_with(b"}}") {
            if VALIDATE_FUNCTIONS
                .iter()
                .any(|f| find_function(t, f).is_some())
            {
                continue;
            }
            return Err(TransformError::UnknownFunction {
                token: t.to_string(),
            });
        }
        if t == FWC {
            after_fwc = true;
        } else if b.iter().any(|&c| is_go_space(c)) {
            return Err(TransformError::InvalidDestination);
        }
    }
    Transform::new(source, dest).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Weighted mappings
// ---------------------------------------------------------------------------------------------

/// One configured destination of a mapping (nats-server's `MapDest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDest {
    pub subject: String,
    /// Percent, 0-100.
    pub weight: u8,
    /// Only used by servers in this cluster; `None` (or empty) for every server.
    pub cluster: Option<String>,
}

impl MapDest {
    /// An unscoped destination.
    pub fn new(subject: impl Into<String>, weight: u8) -> MapDest {
        MapDest {
            subject: subject.into(),
            weight,
            cluster: None,
        }
    }
}

/// A destination of a [`WeightedMapping`], after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedDestination {
    pub transform: Transform,
    /// The configured weight (or, for the entry added for the remainder, the remainder).
    pub weight: u8,
    /// Upper bound (exclusive) of the rolls 0-99 that choose this entry: the running sum of
    /// weights in ascending weight order, as nats-server stores it.
    pub cumulative: u8,
}

/// A subject mapping with weighted (and optionally cluster-scoped) destinations
/// (nats-server's `Account.AddWeightedMappings` and `selectMappedSubject`).
///
/// When a set of destinations weighs less than 100 and the source itself is not one of them,
/// the source is added with the remainder (messages keep their subject that often); when the
/// source is listed explicitly, the remainder is dropped (nats-server: "they want loss").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedMapping {
    source: String,
    /// Identity transform on the source, for matching.
    matcher: Transform,
    /// Unscoped destinations, ascending by weight.
    pub destinations: Vec<WeightedDestination>,
    /// Cluster-scoped destinations, by cluster name in order of first appearance.
    pub cluster_destinations: Vec<(String, Vec<WeightedDestination>)>,
}

/// What [`WeightedMapping::map`] did with a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped<'a> {
    /// The source does not match: the subject is not mapped.
    NoMatch,
    /// The roll fell in the remainder of a mapping that lists its source explicitly: the
    /// message is dropped (nats-server maps it to an empty subject that matches nothing).
    Dropped,
    /// The new subject.
    Subject(Cow<'a, str>),
}

impl WeightedMapping {
    /// A mapping to one destination at weight 100 (nats-server's `AddMapping`).
    pub fn single(source: &str, dest: &str) -> Result<WeightedMapping, TransformError> {
        Self::new(source, &[MapDest::new(dest, 100)])
    }

    /// Validates and builds a mapping as nats-server's `AddWeightedMappings` does, with its
    /// errors in its order: invalid source, duplicate destination, weight over 100, total
    /// weight (per cluster) over 100, then [`validate_mapping`] and [`Transform::new`].
    pub fn new(source: &str, dests: &[MapDest]) -> Result<WeightedMapping, TransformError> {
        if !is_valid_subject(source) {
            return Err(TransformError::BadSubject);
        }
        let mut seen: Vec<&str> = Vec::with_capacity(dests.len());
        let mut totals: Vec<(&str, u32)> = Vec::new();
        let mut main = Vec::new();
        let mut scoped: Vec<(String, Vec<WeightedDestination>)> = Vec::new();
        for d in dests {
            if seen.contains(&d.subject.as_str()) {
                return Err(TransformError::DuplicateEntry(d.subject.clone()));
            }
            seen.push(&d.subject);
            if d.weight > 100 {
                return Err(TransformError::WeightTooLarge);
            }
            let cluster = d.cluster.as_deref().unwrap_or("");
            let total = match totals.iter_mut().find(|(c, _)| *c == cluster) {
                Some((_, t)) => t,
                None => {
                    totals.push((cluster, 0));
                    let last = totals.len() - 1;
                    &mut totals[last].1
                }
            };
            *total += u32::from(d.weight);
            if *total > 100 {
                return Err(TransformError::TotalWeightTooLarge);
            }
            validate_mapping(source, &d.subject)?;
            let wd = WeightedDestination {
                transform: Transform::new(source, &d.subject)?,
                weight: d.weight,
                cumulative: 0,
            };
            if cluster.is_empty() {
                main.push(wd);
            } else if let Some((_, v)) = scoped.iter_mut().find(|(c, _)| c == cluster) {
                v.push(wd);
            } else {
                scoped.push((cluster.to_string(), vec![wd]));
            }
        }
        let has_source = seen.contains(&source);
        let wildcard = crate::validate::has_wildcard(source);
        let finish = |mut v: Vec<WeightedDestination>| -> Result<_, TransformError> {
            let total: u32 = v.iter().map(|d| u32::from(d.weight)).sum();
            if total != 100 && !has_source {
                let dest = if wildcard {
                    tokenize_wildcards(source)
                } else {
                    source.to_string()
                };
                let weight = if v.is_empty() { 100 } else { 100 - total as u8 };
                v.push(WeightedDestination {
                    transform: Transform::new(source, &dest)?,
                    weight,
                    cumulative: 0,
                });
            }
            v.sort_by_key(|d| d.weight);
            let mut sum = 0u8;
            for d in &mut v {
                sum = sum.saturating_add(d.weight);
                d.cumulative = sum;
            }
            Ok(v)
        };
        let destinations = finish(main)?;
        let cluster_destinations = scoped
            .into_iter()
            .map(|(c, v)| Ok((c, finish(v)?)))
            .collect::<Result<Vec<_>, TransformError>>()?;
        Ok(WeightedMapping {
            source: source.to_string(),
            matcher: Transform::new(source, "")?,
            destinations,
            cluster_destinations,
        })
    }

    /// The mapping's source filter.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True if the mapping applies to `subject`: equality for a literal source, nats-server's
    /// subset match for a wildcard source.
    ///
    /// Like nats-server, the subject itself is not validated, and a literal source that
    /// differs from the subject still gets the subset match (so a source token `*x` matches
    /// any token).
    pub fn matches(&self, subject: &str) -> bool {
        self.source == subject || self.matcher.subset_match(subject)
    }

    /// The destinations used by a server in `cluster`: that cluster's scoped entries if any,
    /// else the unscoped ones.
    pub fn destinations_for(&self, cluster: Option<&str>) -> &[WeightedDestination] {
        if let Some(c) = cluster.filter(|c| !c.is_empty()) {
            if let Some((_, v)) = self.cluster_destinations.iter().find(|(n, _)| n == c) {
                return v;
            }
        }
        &self.destinations
    }

    /// Picks a destination with `roll` (taken modulo 100; pass a uniform random number): the
    /// first entry whose cumulative weight exceeds it. A lone entry of weight 100 is always
    /// chosen. `None` means the message is dropped (see [`Mapped::Dropped`]).
    pub fn select(&self, cluster: Option<&str>, roll: u32) -> Option<&Transform> {
        let dests = self.destinations_for(cluster);
        if let [only] = dests {
            if only.cumulative == 100 {
                return Some(&only.transform);
            }
        }
        let w = roll % 100;
        dests
            .iter()
            .find(|d| w < u32::from(d.cumulative))
            .map(|d| &d.transform)
    }

    /// [`WeightedMapping::select`] with a random roll from `rng`.
    pub fn select_with<R: rand::Rng + ?Sized>(
        &self,
        cluster: Option<&str>,
        rng: &mut R,
    ) -> Option<&Transform> {
        self.select(cluster, rng.gen_range(0..100))
    }

    /// Maps a published subject (nats-server's `selectMappedSubject` for this mapping).
    pub fn map<'a>(
        &'a self,
        subject: &'a str,
        cluster: Option<&str>,
        roll: u32,
    ) -> Result<Mapped<'a>, TransformError> {
        if !self.matches(subject) {
            return Ok(Mapped::NoMatch);
        }
        match self.select(cluster, roll) {
            None => Ok(Mapped::Dropped),
            Some(t) => Ok(Mapped::Subject(t.transform(subject)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str, dest: &str) -> Transform {
        match Transform::new(src, dest) {
            Ok(t) => t,
            Err(e) => panic!("{src:?} -> {dest:?}: {e}"),
        }
    }

    fn apply(src: &str, dest: &str, subject: &str) -> String {
        match ok(src, dest).apply(subject) {
            Ok(s) => s.into_owned(),
            Err(e) => panic!("{src:?} -> {dest:?} on {subject:?}: {e}"),
        }
    }

    #[test]
    fn placeholders_parse() {
        assert!(matches!(
            parse_placeholder("$1"),
            Ok(Placeholder::Wildcard(1))
        ));
        assert!(matches!(parse_placeholder("$foo"), Ok(Placeholder::None)));
        assert!(matches!(parse_placeholder("$"), Ok(Placeholder::None)));
        assert!(
            matches!(parse_placeholder("{{partition(10,1,2,3)}}"), Ok(Placeholder::Partition(10, ref v)) if v == &[1, 2, 3])
        );
        // Spaces around the name, the parentheses and after commas; first letters any case.
        assert!(
            matches!(parse_placeholder("{{ Partition (10, 1,2, 3) }}"), Ok(Placeholder::Partition(10, ref v)) if v == &[1, 2, 3])
        );
        assert!(matches!(
            parse_placeholder("{{wildcard(2)}}"),
            Ok(Placeholder::Wildcard(2))
        ));
        assert!(matches!(
            parse_placeholder("{{Wildcard( 2 )}}"),
            Ok(Placeholder::Wildcard(2))
        ));
        for (t, f, i, n) in [
            ("{{SplitFromLeft(2,1)}}", IntFn::SplitFromLeft, 2, 1),
            ("{{splitfromright(3,2)}}", IntFn::SplitFromRight, 3, 2),
            ("{{SliceFromLeft(2,2)}}", IntFn::SliceFromLeft, 2, 2),
            ("{{sliceFromRight(1, 4)}}", IntFn::SliceFromRight, 1, 4),
            ("{{Left(3,2)}}", IntFn::Left, 3, 2),
            ("{{right(3,2)}}", IntFn::Right, 3, 2),
        ] {
            match parse_placeholder(t) {
                Ok(Placeholder::IndexInt(g, j, m)) => assert_eq!((g, j, m), (f, i, n), "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        assert!(
            matches!(parse_placeholder("{{split(1,-)}}"), Ok(Placeholder::Split(1, ref d)) if d == "-")
        );
        // Only the first letter of each word may change case.
        assert!(matches!(
            parse_placeholder("{{WILDCARD(1)}}"),
            Err(TransformError::UnknownFunction { .. })
        ));
    }

    #[test]
    fn construction_errors() {
        let err = |src: &str, dest: &str, strict: bool| -> TransformError {
            match Transform::with_strict(src, dest, strict) {
                Ok(t) => panic!("{src:?} -> {dest:?} accepted: {t:?}"),
                Err(e) => {
                    assert!(
                        e == TransformError::BadSubject || e.is_invalid_mapping_destination(),
                        "{e:?}"
                    );
                    e
                }
            }
        };
        assert_eq!(err("foo..", "bar", false), TransformError::BadSubject);
        // A `*` in the destination, `>` on one side only.
        assert_eq!(err("foo.*", "bar.*", false), TransformError::BadSubject);
        assert_eq!(err("foo.*", "bar.$1.>", false), TransformError::BadSubject);
        assert_eq!(err("foo.>", "bar.baz", false), TransformError::BadSubject);
        assert_eq!(
            err("foo.*", "bar.$2", false).to_string(),
            "invalid mapping destination: wildcard index out of range in $2: [2]"
        );
        assert_eq!(
            err("foo.*.*", "bar.$2", true).to_string(),
            "invalid mapping destination: not using all of the token wildcard(s) in bar.$2"
        );
        // `$foo` is a literal, so the wildcard is unused.
        assert!(matches!(
            err("foo.*", "foo.$foo", true),
            TransformError::NotUsingAllWildcards { .. }
        ));
        assert_eq!(
            err("foo.*", "bar.{{Partition(2,1)}}", true).to_string(),
            "invalid mapping destination: the only mapping function allowed for import transforms is {{Wildcard()}} in {{Partition(2,1)}}"
        );
        assert_eq!(
            err("foo.*", "foo.{{wildcard(2)}}", false).to_string(),
            "invalid mapping destination: wildcard index out of range in {{wildcard(2)}}: [2]"
        );
        assert_eq!(
            err("foo.*", "foo.{{unimplemented(1)}}", false).to_string(),
            "invalid mapping destination: unknown function in {{unimplemented(1)}}"
        );
        assert_eq!(
            err("foo.*", "foo.{{partition(10)}}", false).to_string(),
            "invalid mapping destination: not enough arguments passed to the function in {{partition(10)}}"
        );
        assert_eq!(
            err("foo.*", "foo.{{wildcard(foo)}}", false).to_string(),
            "invalid mapping destination: function argument is invalid or in the wrong format in {{wildcard(foo)}}"
        );
        assert!(matches!(
            err("foo.*", "foo.{{wildcard()}}", false),
            TransformError::NotEnoughArgs { .. }
        ));
        assert_eq!(
            err("foo.*", "foo.{{wildcard(1,2)}}", false).to_string(),
            "invalid mapping destination: too many arguments passed to the function in {{wildcard(1,2)}}"
        );
        assert!(matches!(
            err("foo.*", "foo.{{ wildcard5) }}", false),
            TransformError::UnknownFunction { .. }
        ));
        assert!(matches!(
            err("foo.*", "foo.{{splitLeft(2,2}}", false),
            TransformError::UnknownFunction { .. }
        ));
        // No wildcard in the source: no function at all.
        assert_eq!(
            err("foo", "bla.{{wildcard(1)}}", false).to_string(),
            "invalid mapping destination: wildcard index out of range in {{wildcard(1)}}"
        );
        // A `>`-only source has no `*` to refer to.
        assert!(matches!(
            err("foo.>", "bar.$1.>", false),
            TransformError::IndexOutOfRange { .. }
        ));
        // The integer argument has a 32-bit range (2.11).
        assert!(matches!(
            err("*", "{{left(1,2147483648)}}", false),
            TransformError::InvalidArg { .. }
        ));
        assert!(matches!(
            err("*", "{{split(1,a b)}}", false),
            TransformError::InvalidArg { .. }
        ));
        assert!(matches!(
            err("*", "{{split(1,-,x)}}", false),
            TransformError::TooManyArgs { .. }
        ));
    }

    #[test]
    fn constructions_accepted() {
        assert!(Transform::new_strict("foo.*", "bar.{{Wildcard(1)}}").is_ok());
        for (src, dest) in [
            ("foo.*.*", "bar.$2"), // non-strict: not every wildcard needs placing
            ("foo.*.*", "bar.{{wildcard(1)}}"),
            ("foo", "bar"),
            ("foo.*.bar.*.baz", "req.$2.$1"),
            ("baz.>", "mybaz.>"),
            ("*", "{{splitfromleft(1,1)}}"),
            ("", "prefix.>"),
            ("*.*", "{{partition(10,1,2)}}"),
            (
                "foo.*.*",
                "foo.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(5,1,2)}}",
            ),
            ("foo.*", "bar.$x"), // `$x` is a literal token
            ("foo.*", "bar.{{"), // so is anything not shaped `{{...}}`
            ("foo.*", "bar.$0"), // index 0 (and below) read the first source token
        ] {
            ok(src, dest);
        }
        assert_eq!(ok("", "prefix.>").source(), ">");
    }

    #[test]
    fn apply_cases() {
        assert_eq!(apply("", "prefix.>", "foo"), "prefix.foo");
        assert_eq!(apply("foo", "bar", "foo"), "bar");
        assert_eq!(
            apply("foo.*.bar.*.baz", "req.$2.$1", "foo.A.bar.B.baz"),
            "req.B.A"
        );
        assert_eq!(
            apply(
                "foo.*.bar.*.baz",
                "req.{{wildcard(2)}}.{{wildcard(1)}}",
                "foo.A.bar.B.baz"
            ),
            "req.B.A"
        );
        assert_eq!(apply("baz.>", "my.pre.>", "baz.1.2.3"), "my.pre.1.2.3");
        assert_eq!(apply("baz.>", "foo.bar.>", "baz.1.2.3"), "foo.bar.1.2.3");
        assert_eq!(apply("*", "foo.bar.$1", "foo"), "foo.bar.foo");
        assert_eq!(apply("*", "{{splitfromleft(1,3)}}", "12345"), "123.45");
        assert_eq!(apply("*", "{{SplitFromRight(1,3)}}", "12345"), "12.345");
        assert_eq!(
            apply("*", "{{SliceFromLeft(1,3)}}", "1234567890"),
            "123.456.789.0"
        );
        assert_eq!(
            apply("*", "{{SliceFromRight(1,3)}}", "1234567890"),
            "1.234.567.890"
        );
        assert_eq!(
            apply("*", "{{split(1,-)}}", "-abc-def--ghi-"),
            "abc.def.ghi"
        );
        assert_eq!(apply("*", "{{split(1,-)}}", "abc-def--ghi-"), "abc.def.ghi");
        assert_eq!(
            apply(
                "*.*",
                "{{split(2,-)}}.{{splitfromleft(1,2)}}",
                "foo.-abc-def--ghij-"
            ),
            "abc.def.ghij.fo.o"
        );
        assert_eq!(apply("*", "{{right(1,1)}}", "1234"), "4");
        assert_eq!(apply("*", "{{right(1,3)}}", "1234"), "234");
        assert_eq!(apply("*", "{{right(1,6)}}", "1234"), "1234");
        assert_eq!(apply("*", "{{left(1,1)}}", "1234"), "1");
        assert_eq!(apply("*", "{{left(1,3)}}", "1234"), "123");
        assert_eq!(apply("*", "{{left(1,6)}}", "1234"), "1234");
        // Out-of-range sizes leave the token whole.
        assert_eq!(apply("*", "{{slicefromleft(1,0)}}", "abc"), "abc");
        assert_eq!(apply("*", "{{splitfromleft(1,-1)}}", "abc"), "abc");
        // nats-server quirks kept: `$0` reads the first source token, an empty piece after a
        // leading empty piece in split() yields an empty token, `*x` in a source matches any
        // token.
        assert_eq!(apply("foo.*", "bar.$0", "foo.x"), "bar.foo");
        assert_eq!(apply("*", "{{split(1,-)}}", "--a"), ".a");
        assert_eq!(apply("*", "{{split(1,)}}", "abc"), "a.b.c");
        assert_eq!(apply("a.*x", "b", "a.zzz"), "b");
        // Wildcard functions in the input subject are refused, mismatches reported.
        let t = ok("foo.*", "bar.$1");
        assert_eq!(t.apply("foo.*"), Err(TransformError::BadSubject));
        assert_eq!(t.apply("foo..x"), Err(TransformError::BadSubject));
        assert_eq!(t.apply("baz.x"), Err(TransformError::NoMatch));
        assert_eq!(t.apply("foo.x.y"), Err(TransformError::NoMatch));
        assert_eq!(
            TransformError::NoMatch.to_string(),
            "no matching transforms available"
        );
        assert_eq!(TransformError::BadSubject.to_string(), "invalid subject");
    }

    #[test]
    fn apply_borrows_when_it_can() {
        let lit = ok("foo.*", "bar");
        assert!(matches!(lit.apply("foo.x"), Ok(Cow::Borrowed("bar"))));
        let id = ok(">", ">");
        assert!(id.is_identity());
        assert!(matches!(id.apply("a.b"), Ok(Cow::Borrowed("a.b"))));
        let empty = ok("foo.*", "");
        assert!(empty.is_identity());
        assert!(matches!(empty.apply("foo.x"), Ok(Cow::Borrowed("foo.x"))));
        assert_eq!(empty.apply("bar.x"), Err(TransformError::NoMatch));
    }

    #[test]
    fn transform_never_panics_on_missing_tokens() {
        // nats-server: "one.two." for a missing wildcard token (its other functions panic).
        let t = ok("foo.*", "one.two.{{wildcard(1)}}");
        assert_eq!(t.transform("foo").as_deref(), Ok("one.two."));
        let t = ok("foo.*", "x.{{splitfromleft(1,1)}}.{{partition(3,1)}}");
        assert_eq!(t.transform("foo").as_deref(), Ok("x..1"));
        let t = ok("foo.*.>", "x.$1.>");
        assert_eq!(t.transform("foo").as_deref(), Ok("x.."));
    }

    #[test]
    fn partition_agrees_with_go() {
        // FNV-1a 32 reference values.
        let mut h = Fnv32a::new();
        h.write(b"");
        assert_eq!(h.0, 0x811c_9dc5);
        h.write(b"a");
        assert_eq!(h.0, 0xe40c_292c);
        // From nats-server's tests (whole-subject partitions of later versions hash the same
        // bytes): foo→3, baz→0, qux→9 of 10; foo.bar→6, foo.baz→4 of 10; test.subject→0 of 5.
        assert_eq!(apply("*", "bar.{{partition(10,1)}}", "foo"), "bar.3");
        assert_eq!(apply("*", "bar.{{partition(10,1)}}", "baz"), "bar.0");
        assert_eq!(apply("*", "bar.{{partition(10,1)}}", "qux"), "bar.9");
        assert_eq!(partition_of(b"foo.bar", 10), 6);
        assert_eq!(partition_of(b"foo.baz", 10), 4);
        assert_eq!(partition_of(b"test.subject", 5), 0);
        // The key is the named tokens concatenated without separators.
        assert_eq!(
            apply("*.*", "p.{{partition(10,1,2)}}", "fo.o"),
            format!("p.{}", partition_of(b"foo", 10))
        );
        // Zero buckets: 0 (nats-server 2.10/2.11 panic; later versions write 0).
        assert_eq!(apply("*", "{{partition(0,1)}}", "foo"), "0");
        // A negative count wraps as Go's uint32 conversion does.
        let n = (-3i32) as u32;
        assert_eq!(
            apply("*", "{{partition(-3,1)}}", "foo"),
            partition_of(b"foo", n).to_string()
        );
    }

    #[test]
    fn multibyte_cut_is_an_error_not_a_panic() {
        let t = ok("*", "{{splitfromleft(1,1)}}");
        assert!(matches!(
            t.apply("é1"),
            Err(TransformError::NotCharBoundary { .. })
        ));
        assert_eq!(t.apply("aé").as_deref(), Ok("a.é"));
        assert_eq!(apply("*", "{{split(1,é)}}", "aéb"), "a.b");
    }

    #[test]
    fn reverse_cases() {
        let tr = Transform::new_strict("foo.*.*", "bar.$2.{{Wildcard(1)}}")
            .unwrap_or_else(|e| panic!("{e}"));
        let out = tr.apply("foo.b.a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, "bar.a.b");
        let rev = tr.reverse().unwrap_or_else(|| panic!("no reverse"));
        assert_eq!(rev.source(), "bar.*.*");
        assert_eq!(rev.apply(&out).as_deref(), Ok("foo.b.a"));
        // A three-way rotation: the true inverse (nats-server's reverse gets this one wrong).
        let tr = ok("foo.*.*.*", "bar.$2.$3.$1");
        let out = tr.apply("foo.A.B.C").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, "bar.B.C.A");
        let rev = tr.reverse().unwrap_or_else(|| panic!("no reverse"));
        assert_eq!(rev.apply(&out).as_deref(), Ok("foo.A.B.C"));
        // `>` and literal sources.
        let tr = ok("a.>", "b.a.>");
        let rev = tr.reverse().unwrap_or_else(|| panic!("no reverse"));
        assert_eq!(rev.apply("b.a.x.y").as_deref(), Ok("a.x.y"));
        let rev = ok("x", "y")
            .reverse()
            .unwrap_or_else(|| panic!("no reverse"));
        assert_eq!(rev.apply("y").as_deref(), Ok("x"));
        // Not reversible: a wildcard dropped, placed twice, or only hashed.
        assert!(ok("foo.*.*", "bar.$1").reverse().is_none());
        assert!(ok("foo.*", "bar.$1.$1").reverse().is_none());
        assert!(ok("foo.*", "bar.{{partition(3,1)}}").reverse().is_none());
        // A function token next to a placeholder stays literal in the reverse (nats-server).
        let rev = ok("foo.*", "bar.$1.{{partition(3,1)}}").reverse();
        assert_eq!(
            rev.as_ref().map(|r| r.source()),
            Some("bar.*.{{partition(3,1)}}")
        );
    }

    #[test]
    fn import_helpers() {
        assert_eq!(tokenize_wildcards("foo.*.*"), "foo.$1.$2");
        assert_eq!(tokenize_wildcards("foo.*.>"), "foo.$1.>");
        assert_eq!(untokenize_wildcards("bar"), ("bar".to_string(), vec![]));
        assert_eq!(
            untokenize_wildcards("foo.$2.$1"),
            ("foo.*.*".to_string(), vec!["$2", "$1"])
        );
        assert_eq!(
            untokenize_wildcards("foo.{{wildcard(2)}}.{{wildcard(1)}}"),
            (
                "foo.*.*".to_string(),
                vec!["{{wildcard(2)}}", "{{wildcard(1)}}"]
            )
        );
        // What the server's import agent needs (its map_subject cases).
        let s = |from: &str, to: &str, subject: &str| -> String {
            let t = Transform::stream_import(from, to).unwrap_or_else(|e| panic!("{e}"));
            t.apply(subject)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_owned()
        };
        assert_eq!(s("a.>", "b.a.>", "a.x.y"), "b.a.x.y");
        assert_eq!(s("a.*.c", "z.*", "a.q.c"), "z.q");
        assert_eq!(s("a.*.c", "z.$1", "a.q.c"), "z.q");
        assert_eq!(s("events.>", "events.>", "events.1"), "events.1");
        assert_eq!(s("x", "y", "x"), "y");
        assert_eq!(s("x", "", "x"), "x");
        assert_eq!(s("a.*.*", "b.*.*", "a.1.2"), "b.1.2");
        assert!(Transform::stream_import("a.*", "b.*.*").is_err());
        assert!(Transform::service_import("req", "svc.*").is_err());
        // Service imports: positional, whatever numbers `to` carries (as nats-server).
        let v = |from: &str, to: &str, subject: &str| -> String {
            let t = Transform::service_import(from, to).unwrap_or_else(|e| panic!("{e}"));
            t.apply(subject)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_owned()
        };
        assert_eq!(v("a.*.*", "b.*.{{wildcard(1)}}", "a.1.2"), "b.1.2");
        // No wildcard token in `to`: nats-server makes no transform and uses `to` verbatim.
        assert_eq!(v("a.*.*", "b.$2.$1", "a.1.2"), "b.$2.$1");
        assert_eq!(s("a", "b.*", "a"), "b.*");
        assert_eq!(v("req.*", "svc.*", "req.x"), "svc.x");
        assert_eq!(v("req.>", "svc.>", "req.x.y"), "svc.x.y");
        assert_eq!(v("req.*", "svc", "req.x"), "svc");
        assert_eq!(v("req.*", "req.*", "req.x"), "req.x");
    }

    #[test]
    fn validate_mapping_cases() {
        for (src, dest) in [
            ("bar", "foo"),
            ("foo", "foo.bar"),
            ("*", "{{wildcard(1)}}"),
            ("foo.>", ">"),
            ("foo.*", "bar.{{wildcard(1)}}"),
            ("foo.>", "bar.>"),
            ("foo.*.>", "bar.{{wildcard(1)}}.>"),
            ("foo.*.bar", "bar.{{wildcard(1)}}.foo"),
            ("foo.bar.>", "foo.bar.foo.>"),
            ("*", "foo.{{ wildcard(1) }}"),
            ("*", "foo.{{wildcard( 1 )}}"),
            ("*", "foo.{{partition(2,1)}}"),
            ("*.*", "foo.{{SplitFromLeft(2,1)}}"),
            ("*.*", "foo.{{SplitFromRight(2,1)}}"),
            ("x", ""),
        ] {
            assert_eq!(validate_mapping(src, dest), Ok(()), "{src} -> {dest}");
        }
        assert_eq!(
            validate_mapping("*", "foo.{{unknown(1)}}"),
            Err(TransformError::UnknownFunction {
                token: "{{unknown(1)}}".into()
            })
        );
        assert_eq!(
            validate_mapping("foo", "foo..}"),
            Err(TransformError::InvalidDestinationToken { token: "".into() })
        );
        assert_eq!(
            validate_mapping("foo", "foo. bar}"),
            Err(TransformError::InvalidDestination)
        );
        assert_eq!(
            TransformError::InvalidDestination.to_string(),
            "invalid mapping destination: invalid transform"
        );
        // nats-server's list of functions here lacks left() and right().
        assert!(matches!(
            validate_mapping("*", "{{left(1,1)}}"),
            Err(TransformError::UnknownFunction { .. })
        ));
        assert!(Transform::new("*", "{{left(1,1)}}").is_ok());
    }

    fn md(subject: &str, weight: u8, cluster: Option<&str>) -> MapDest {
        MapDest {
            subject: subject.into(),
            weight,
            cluster: cluster.map(Into::into),
        }
    }

    fn subj(m: &Mapped<'_>) -> Option<String> {
        match m {
            Mapped::Subject(s) => Some(s.to_string()),
            _ => None,
        }
    }

    #[test]
    fn weighted_validation() {
        let e = |src: &str, d: &[MapDest]| WeightedMapping::new(src, d).err();
        assert_eq!(
            e("foo..x", &[md("a", 100, None)]),
            Some(TransformError::BadSubject)
        );
        assert_eq!(
            e("foo bar", &[md("a", 100, None)]),
            Some(TransformError::BadSubject)
        );
        assert_eq!(
            e("foo", &[md("a", 50, None), md("a", 50, None)]),
            Some(TransformError::DuplicateEntry("a".into()))
        );
        assert_eq!(
            TransformError::DuplicateEntry("a".into()).to_string(),
            "duplicate entry for \"a\""
        );
        assert_eq!(
            e("foo", &[md("a", 101, None)]),
            Some(TransformError::WeightTooLarge)
        );
        assert_eq!(
            TransformError::WeightTooLarge.to_string(),
            "individual weights need to be <= 100"
        );
        assert_eq!(
            e("foo", &[md("a", 60, None), md("b", 50, None)]),
            Some(TransformError::TotalWeightTooLarge)
        );
        assert_eq!(
            TransformError::TotalWeightTooLarge.to_string(),
            "total weight needs to be <= 100"
        );
        // Totals are per cluster.
        assert!(e(
            "foo",
            &[
                md("a", 60, None),
                md("b", 60, Some("east")),
                md("c", 60, Some("west"))
            ]
        )
        .is_none());
        assert!(matches!(
            e("foo.*", &[md("bar.{{left(1,1)}}", 100, None)]),
            Some(TransformError::UnknownFunction { .. })
        ));
        assert!(matches!(
            e("foo.*", &[md("bar.$2", 100, None)]),
            Some(TransformError::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn weighted_selection() {
        // 20 / 30, remainder 50 back to the source itself; ascending cumulative weights.
        let m = WeightedMapping::new("foo.*", &[md("a.$1", 30, None), md("b.$1", 20, None)])
            .unwrap_or_else(|e| panic!("{e}"));
        let cum: Vec<(u8, u8)> = m
            .destinations
            .iter()
            .map(|d| (d.weight, d.cumulative))
            .collect();
        assert_eq!(cum, [(20, 20), (30, 50), (50, 100)]);
        assert_eq!(m.destinations[2].transform.destination(), "foo.$1");
        let pick = |roll| subj(&m.map("foo.x", None, roll).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(pick(0).as_deref(), Some("b.x"));
        assert_eq!(pick(19).as_deref(), Some("b.x"));
        assert_eq!(pick(20).as_deref(), Some("a.x"));
        assert_eq!(pick(49).as_deref(), Some("a.x"));
        assert_eq!(pick(50).as_deref(), Some("foo.x"));
        assert_eq!(pick(99).as_deref(), Some("foo.x"));
        assert_eq!(pick(120).as_deref(), Some("a.x")); // modulo 100
        assert_eq!(m.map("bar.x", None, 0), Ok(Mapped::NoMatch));
        // Listing the source explicitly means the remainder is dropped.
        let m = WeightedMapping::new("foo", &[md("foo", 10, None), md("bar", 20, None)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.destinations.len(), 2);
        assert_eq!(
            m.map("foo", None, 5).map(|m| subj(&m)),
            Ok(Some("foo".into()))
        );
        assert_eq!(
            m.map("foo", None, 25).map(|m| subj(&m)),
            Ok(Some("bar".into()))
        );
        assert_eq!(m.map("foo", None, 30), Ok(Mapped::Dropped));
        // A lone full-weight destination ignores the roll.
        let m = WeightedMapping::single("foo.>", "bar.>").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.destinations.len(), 1);
        assert_eq!(
            m.map("foo.a.b", None, 99).map(|m| subj(&m)),
            Ok(Some("bar.a.b".into()))
        );
    }

    #[test]
    fn weighted_cluster_scoped() {
        let m = WeightedMapping::new(
            "orders.*",
            &[
                md("global.$1", 100, None),
                md("east.$1", 100, Some("east")),
                md("west.a.$1", 40, Some("west")),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let map = |cluster, roll| {
            subj(
                &m.map("orders.7", cluster, roll)
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        assert_eq!(map(None, 0).as_deref(), Some("global.7"));
        assert_eq!(map(Some("other"), 0).as_deref(), Some("global.7"));
        assert_eq!(map(Some(""), 0).as_deref(), Some("global.7"));
        assert_eq!(map(Some("east"), 99).as_deref(), Some("east.7"));
        assert_eq!(map(Some("west"), 10).as_deref(), Some("west.a.7"));
        // West weighs 40, the rest keeps the source subject.
        assert_eq!(map(Some("west"), 40).as_deref(), Some("orders.7"));
        assert_eq!(m.cluster_destinations.len(), 2);
        // Only scoped entries: unscoped servers keep the subject.
        let m = WeightedMapping::new("a", &[md("b", 100, Some("c1"))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.map("a", None, 3).map(|m| subj(&m)), Ok(Some("a".into())));
        assert_eq!(
            m.map("a", Some("c1"), 3).map(|m| subj(&m)),
            Ok(Some("b".into()))
        );
    }

    #[test]
    fn weighted_select_with_rng_is_in_range() {
        use rand::SeedableRng;
        let m = WeightedMapping::new("s", &[md("a", 50, None), md("b", 50, None)])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut a, mut b) = (0, 0);
        for _ in 0..1000 {
            match m.select_with(None, &mut rng).map(Transform::destination) {
                Some("a") => a += 1,
                Some("b") => b += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(a > 400 && b > 400, "{a} {b}");
    }
}
