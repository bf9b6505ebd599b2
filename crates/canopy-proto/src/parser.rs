//! The two-phase decoder: find a complete op at the front of a `BytesMut` (control line,
//! and for message ops the payload plus its `\r\n`), then split exactly those bytes off
//! and hand out zero-copy [`Bytes`] slices of them.
//!
//! Framing rules follow nats-server's `parser.go` (checked against 2.9.10 on loopback):
//! - verbs are case-insensitive; arguments are separated by runs of spaces or tabs;
//! - a line ends at `\n`, with an optional `\r` before it (a bare `\n` is accepted);
//! - verbs with arguments need at least one space/tab after the verb (`PUBfoo` is an
//!   unknown op), but `CONNECT{..}`/`INFO{..}` need none and anything after
//!   `PING`/`PONG`/`+OK` up to the newline is ignored;
//! - a payload must be followed by exactly `\r\n`;
//! - sizes are 1..=9 ASCII digits (nats-server's `parseSize`), anything else is a bad
//!   size.
//!
//! Unknown verbs are reported as soon as the first wrong byte is buffered, without
//! waiting for a newline. A control line still missing its newline after
//! `max_control_line` argument bytes is an error rather than an unbounded wait.

use bytes::BytesMut;

use crate::error::ProtoError;
use crate::op::{Op, OpRef, Role};

/// nats-server's `MAX_CONTROL_LINE_SIZE`.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// nats-server's default `max_payload` (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// A control-line bound suitable for route and leaf links. nats-server applies
/// `max_control_line` to client connections only; a routed message naming many queue
/// groups can legitimately exceed 4 KiB, so links get this memory guard instead.
pub const LINK_MAX_CONTROL_LINE: usize = 1024 * 1024;
/// Largest size nats-server's `parseSize` accepts (9 digits).
const MAX_SIZE_DIGITS: usize = 9;

/// Size limits enforced while parsing, in every role. For [`Role::Client`] use the
/// server's `max_control_line`/`max_payload`; for links see [`ParserLimits::link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Longest accepted argument part of a control line (after the verb), in bytes.
    pub max_control_line: usize,
    /// Largest accepted payload (headers + body). Checked on the control line, before
    /// any payload byte arrives.
    pub max_payload: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl ParserLimits {
    /// Limits for a route or leaf link: control lines up to [`LINK_MAX_CONTROL_LINE`]
    /// and the given payload bound (nats-server enforces `max_payload` on leaf links;
    /// on routes it does not, so pass a generous value there).
    pub fn link(max_payload: usize) -> Self {
        ParserLimits {
            max_control_line: LINK_MAX_CONTROL_LINE,
            max_payload,
        }
    }
}

/// Stateless decode: parse one op from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (the buffer is untouched), and
/// `Ok(Some(op))` after splitting exactly that op's bytes off `buf`. Route `LS-` is
/// parsed without an origin (pre-2.11 peers); use [`Parser`] to change that and to avoid
/// re-scanning a large partially received payload on every call.
pub fn parse(
    buf: &mut BytesMut,
    role: Role,
    limits: &ParserLimits,
) -> Result<Option<Op>, ProtoError> {
    let mut hint = Hint::default();
    parse_core(buf, role, limits, RouteForm::default(), &mut hint)
}

/// A per-connection decoder: role, limits and the progress made on a partially
/// received op, so that each call on a growing buffer costs O(new bytes).
///
/// Contract: between calls that returned `Ok(None)` the caller only *appends* to the
/// buffer (the usual read loop). Call [`Parser::reset`] if the buffer is replaced.
#[derive(Debug, Clone)]
pub struct Parser {
    role: Role,
    limits: ParserLimits,
    route_form: RouteForm,
    hint: Hint,
}

impl Parser {
    pub fn new(role: Role, limits: ParserLimits) -> Self {
        Parser {
            role,
            limits,
            route_form: RouteForm::default(),
            hint: Hint::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn limits(&self) -> &ParserLimits {
        &self.limits
    }

    /// Change limits (e.g. a client learning `max_payload` from INFO).
    pub fn set_limits(&mut self, limits: ParserLimits) {
        self.limits = limits;
        self.hint = Hint::default();
    }

    /// Route peers that advertised `lnocu` (nats-server 2.11+) send `LS-` with the
    /// origin cluster first; without it `LS- acc subj q` and `LS- origin acc subj`
    /// would be indistinguishable.
    pub fn set_route_lnocu(&mut self, on: bool) {
        self.route_form.lnocu = on;
    }

    /// A route dedicated to one account (nats-server 2.10 `route_account`): RS+, RS-,
    /// RMSG, HMSG, LS+, LS- and LMSG carry no account token; the ops come with an empty
    /// `account`.
    pub fn set_route_no_account(&mut self, on: bool) {
        self.route_form.no_account = on;
    }

    /// Decode the next op; see [`parse`] for the return convention.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Op>, ProtoError> {
        parse_core(
            buf,
            self.role,
            &self.limits,
            self.route_form,
            &mut self.hint,
        )
    }

    /// Borrowing variant of [`Parser::next`] for the hot path: decodes the op at the
    /// front of `buf` without touching it and returns it with its length in bytes. The
    /// caller handles the op, then consumes it (`buf.advance(len)`). No reference
    /// counting, no allocation (except `queues` of routed messages).
    pub fn next_ref<'a>(
        &mut self,
        buf: &'a [u8],
    ) -> Result<Option<(OpRef<'a>, usize)>, ProtoError> {
        let Some(d) = decode(
            buf,
            self.role,
            &self.limits,
            self.route_form,
            &mut self.hint,
        )?
        else {
            return Ok(None);
        };
        let payload = d.payload.map(|r| &buf[r.0..r.1]);
        let op = build(d.head, buf, |r| &buf[r.0..r.1], payload);
        Ok(Some((op, d.total)))
    }

    /// When the control line of a message op has been seen but its payload has not
    /// fully arrived: the total frame length needed, so the reader can reserve it.
    pub fn pending_frame_len(&self) -> Option<usize> {
        self.hint.frame_len
    }

    /// Forget progress on a partially received op.
    pub fn reset(&mut self) {
        self.hint = Hint::default();
    }
}

/// What we know about the partial op at the front of the buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Hint {
    /// Bytes from the start known to contain no `\n`.
    scanned: usize,
    /// Total frame length of a message op whose control line is complete.
    frame_len: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Pub,
    HPub,
    Sub,
    Unsub,
    Connect,
    Info,
    Ping,
    Pong,
    PlusOk,
    MinusErr,
    Msg,
    HMsg,
    RSubV,
    RUnsubV,
    RMsgV,
    LSubV,
    LUnsubV,
    LMsgV,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Pub => "PUB",
            Verb::HPub => "HPUB",
            Verb::Sub => "SUB",
            Verb::Unsub => "UNSUB",
            Verb::Connect => "CONNECT",
            Verb::Info => "INFO",
            Verb::Ping => "PING",
            Verb::Pong => "PONG",
            Verb::PlusOk => "+OK",
            Verb::MinusErr => "-ERR",
            Verb::Msg => "MSG",
            Verb::HMsg => "HMSG",
            Verb::RSubV => "RS+",
            Verb::RUnsubV => "RS-",
            Verb::RMsgV => "RMSG",
            Verb::LSubV => "LS+",
            Verb::LUnsubV => "LS-",
            Verb::LMsgV => "LMSG",
        }
    }
}

enum VerbMatch {
    Found(Verb),
    Incomplete,
    Unknown,
}

/// Candidate verbs by (upper-cased) first byte, filtered by role.
fn candidates(first: u8, role: Role) -> &'static [Verb] {
    use Role::*;
    match (first.to_ascii_uppercase(), role) {
        (b'P', Client) => &[Verb::Pub, Verb::Ping, Verb::Pong],
        (b'P', _) => &[Verb::Ping, Verb::Pong],
        (b'H', Client) => &[Verb::HPub],
        (b'H', _) => &[Verb::HMsg],
        (b'S', Client) => &[Verb::Sub],
        (b'U', Client) => &[Verb::Unsub],
        (b'C', Client | Route | Leaf) => &[Verb::Connect],
        (b'I', _) => &[Verb::Info],
        (b'M', ClientSide) => &[Verb::Msg],
        (b'R', Route) => &[Verb::RSubV, Verb::RUnsubV, Verb::RMsgV],
        (b'L', Route | Leaf) => &[Verb::LSubV, Verb::LUnsubV, Verb::LMsgV],
        (b'+', _) => &[Verb::PlusOk],
        (b'-', _) => &[Verb::MinusErr],
        _ => &[],
    }
}

fn match_verb(data: &[u8], role: Role) -> VerbMatch {
    // Fast path for the op that matters: an upper-case `PUB` from a client (the general
    // case-insensitive match below costs about 60 instructions per message).
    if role == Role::Client && data.starts_with(b"PUB") {
        return VerbMatch::Found(Verb::Pub);
    }
    let mut incomplete = false;
    for &v in candidates(data[0], role) {
        let name = v.name().as_bytes();
        let n = name.len().min(data.len());
        if data[..n].eq_ignore_ascii_case(&name[..n]) {
            if n == name.len() {
                return VerbMatch::Found(v);
            }
            incomplete = true;
        }
    }
    if incomplete {
        VerbMatch::Incomplete
    } else {
        VerbMatch::Unknown
    }
}

#[inline]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

#[inline]
fn is_sep(b: u8) -> bool {
    // Every separator is <= b' ': one compare settles the usual token byte.
    b <= b' ' && (b == b' ' || b == b'\t' || b == b'\r')
}

fn skip_ws(data: &[u8], mut i: usize) -> usize {
    while i < data.len() && is_ws(data[i]) {
        i += 1;
    }
    i
}

/// nats-server's `parseSize`: 1..=9 ASCII digits.
#[inline]
pub(crate) fn parse_size(d: &[u8]) -> Option<usize> {
    if d.is_empty() || d.len() > MAX_SIZE_DIGITS {
        return None;
    }
    let mut n = 0usize;
    for &b in d {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as usize;
    }
    Some(n)
}

/// A byte range within the frame.
type R = (usize, usize);

/// Tokens of an argument line: the first few, the last few and the count, so that
/// queue lists of any length can be located without allocating.
struct Toks<'a> {
    data: &'a [u8],
    // u32 offsets keep this small (it is built for every op); lines are far shorter.
    first: [(u32, u32); FIRST],
    last: [(u32, u32); LAST],
    n: usize,
}

const FIRST: usize = 8;
const LAST: usize = 3;

impl<'a> Toks<'a> {
    fn new(data: &'a [u8], start: usize, end: usize) -> Self {
        let mut t = Toks {
            data,
            first: [(0, 0); FIRST],
            last: [(0, 0); LAST],
            n: 0,
        };
        let mut i = start;
        while i < end {
            while i < end && is_sep(data[i]) {
                i += 1;
            }
            if i >= end {
                break;
            }
            let s = i;
            while i < end && !is_sep(data[i]) {
                i += 1;
            }
            let r = (s as u32, i as u32);
            if t.n < FIRST {
                t.first[t.n] = r;
            }
            t.last[t.n % LAST] = r;
            t.n += 1;
        }
        t
    }

    /// Range of token `i`; only the first `FIRST` and last `LAST` are kept.
    fn get(&self, i: usize) -> Option<R> {
        let (s, e) = if i >= self.n {
            return None;
        } else if i < FIRST {
            self.first[i]
        } else if i + LAST >= self.n {
            self.last[i % LAST]
        } else {
            return None;
        };
        Some((s as usize, e as usize))
    }

    fn bytes(&self, r: R) -> &'a [u8] {
        &self.data[r.0..r.1]
    }
}

/// Decoded control line, as ranges into the (future) frame.
enum Head {
    Info(R),
    Connect(R),
    Ping,
    Pong,
    Ok,
    Err(R),
    Pub {
        subject: R,
        reply: Option<R>,
    },
    HPub {
        subject: R,
        reply: Option<R>,
        hdr: usize,
    },
    Sub {
        subject: R,
        queue: Option<R>,
        sid: R,
    },
    Unsub {
        sid: R,
        max: Option<u64>,
    },
    Msg {
        subject: R,
        sid: R,
        reply: Option<R>,
        hdr: Option<usize>,
    },
    RSub {
        account: R,
        subject: R,
        queue: Option<(R, u32)>,
    },
    RUnsub {
        account: R,
        subject: R,
        queue: Option<R>,
    },
    RMsg {
        origin: Option<R>,
        account: R,
        subject: R,
        routed: Routed,
    },
    RLSub {
        origin: R,
        account: R,
        subject: R,
        queue: Option<(R, u32)>,
    },
    RLUnsub {
        origin: Option<R>,
        account: R,
        subject: R,
        queue: Option<R>,
    },
    LSub {
        subject: R,
        queue: Option<(R, u32)>,
    },
    LUnsub {
        subject: R,
        queue: Option<R>,
    },
    LMsg {
        subject: R,
        routed: Routed,
    },
}

/// The tail of a routed/leaf message line.
struct Routed {
    reply: Option<R>,
    /// Span covering all queue names (space separated), if any.
    queues: Option<R>,
    hdr: Option<usize>,
}

fn bad(op: &'static str, reason: &'static str) -> ProtoError {
    ProtoError::InvalidArgs { op, reason }
}

fn size_arg(t: &Toks<'_>, i: usize, op: &'static str) -> Result<usize, ProtoError> {
    t.get(i)
        .and_then(|r| parse_size(t.bytes(r)))
        .ok_or_else(|| bad(op, "bad or missing size"))
}

fn tok(t: &Toks<'_>, i: usize, op: &'static str) -> Result<R, ProtoError> {
    t.get(i).ok_or_else(|| bad(op, "missing argument"))
}

fn weight_arg(t: &Toks<'_>, i: usize, op: &'static str) -> Result<u32, ProtoError> {
    let w = size_arg(t, i, op).map_err(|_| bad(op, "bad queue weight"))?;
    u32::try_from(w).map_err(|_| bad(op, "bad queue weight"))
}

/// `[reply | + reply q.. | | q..] [hdr] size` after `fixed` leading tokens.
fn routed_tail(
    t: &Toks<'_>,
    fixed: usize,
    with_hdr: bool,
    op: &'static str,
) -> Result<(Routed, usize), ProtoError> {
    let sizes = if with_hdr { 2 } else { 1 };
    let n = t.n;
    if n < fixed + sizes {
        return Err(bad(op, "too few arguments"));
    }
    let size = size_arg(t, n - 1, op)?;
    let hdr = if with_hdr {
        let h = size_arg(t, n - 2, op).map_err(|_| bad(op, "bad or missing header size"))?;
        if h > size {
            return Err(bad(op, "header size larger than total size"));
        }
        Some(h)
    } else {
        None
    };
    let (reply, queues) = if n == fixed + sizes {
        (None, None)
    } else if n == fixed + sizes + 1 {
        (Some(tok(t, fixed, op)?), None)
    } else {
        let ind = t.bytes(tok(t, fixed, op)?);
        let (reply, first_q) = match ind {
            b"+" => (Some(tok(t, fixed + 1, op)?), fixed + 2),
            b"|" => (None, fixed + 1),
            _ => return Err(bad(op, "bad or missing reply indicator")),
        };
        let last_q = n - sizes - 1;
        let queues = if first_q <= last_q {
            Some((tok(t, first_q, op)?.0, tok(t, last_q, op)?.1))
        } else {
            None
        };
        (reply, queues)
    };
    Ok((Routed { reply, queues, hdr }, size))
}

/// How a route peer lays out its interest and message ops (see [`Parser::set_route_lnocu`]
/// and [`Parser::set_route_no_account`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RouteForm {
    lnocu: bool,
    no_account: bool,
}

/// The account token at `i`, or an empty one on a route dedicated to one account.
fn account_tok(t: &Toks<'_>, form: RouteForm, i: usize, op: &'static str) -> Result<R, ProtoError> {
    if form.no_account {
        Ok((0, 0))
    } else {
        tok(t, i, op)
    }
}

fn queue_weight(
    t: &Toks<'_>,
    subj_idx: usize,
    op: &'static str,
) -> Result<Option<(R, u32)>, ProtoError> {
    match t.n - subj_idx {
        1 => Ok(None),
        3 => Ok(Some((
            tok(t, subj_idx + 1, op)?,
            weight_arg(t, subj_idx + 2, op)?,
        ))),
        _ => Err(bad(op, "wrong number of arguments")),
    }
}

fn opt_queue(t: &Toks<'_>, subj_idx: usize, op: &'static str) -> Result<Option<R>, ProtoError> {
    match t.n.checked_sub(subj_idx) {
        Some(1) => Ok(None),
        Some(2) => Ok(Some(tok(t, subj_idx + 1, op)?)),
        _ => Err(bad(op, "wrong number of arguments")),
    }
}

/// Splits `data[start..end]` at runs of separators into at most `N` tokens: the tokens
/// and their count, or `None` when there are more than `N`. The PUB/HPUB fast path: this is
/// most of the per-message parsing work, and [`Toks`] (built for lines of any length)
/// costs about twice as much.
#[inline]
fn split_upto<const N: usize>(data: &[u8], start: usize, end: usize) -> Option<([R; N], usize)> {
    let mut out = [(0, 0); N];
    let mut n = 0;
    let mut i = start;
    loop {
        while i < end && is_sep(data[i]) {
            i += 1;
        }
        if i >= end {
            return Some((out, n));
        }
        if n == N {
            return None;
        }
        let s = i;
        i = token_end(data, i, end);
        out[n] = (s, i);
        n += 1;
    }
}

/// The index of the first separator in `data[i..end]`, or `end`. Looks at 8 bytes at a
/// time: a subject is typically 10-30 bytes and this loop was the largest single cost of
/// parsing a PUB.
#[inline]
fn token_end(data: &[u8], mut i: usize, end: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= end {
        let mut w = [0u8; 8];
        w.copy_from_slice(&data[i..i + 8]);
        let w = u64::from_le_bytes(w);
        // High bit set in each byte < 0x21 (every separator is), possibly also in bytes
        // right after one (borrows); the lowest flagged byte is always exact.
        let m = w.wrapping_sub(ONES * 0x21) & !w & HIGH;
        if m == 0 {
            i += 8;
            continue;
        }
        let j = i + (m.trailing_zeros() / 8) as usize;
        if is_sep(data[j]) {
            return j;
        }
        // A control byte inside the token: go on after it.
        i = j + 1;
    }
    while i < end && !is_sep(data[i]) {
        i += 1;
    }
    i
}

#[inline]
fn size_of(data: &[u8], r: R) -> Option<usize> {
    parse_size(&data[r.0..r.1])
}

/// Decode the arguments of `verb` in `data[start..end]`. Returns the head and, for
/// message ops, the announced payload size.
fn parse_head(
    verb: Verb,
    role: Role,
    form: RouteForm,
    data: &[u8],
    start: usize,
    end: usize,
) -> Result<(Head, Option<usize>), ProtoError> {
    let op = verb.name();
    // Message publishes first, without the general tokenizer (same checks, same errors).
    match verb {
        Verb::Pub => {
            let wrong = || bad(op, "wrong number of arguments");
            let (t, n) = split_upto::<3>(data, start, end).ok_or_else(wrong)?;
            let bad_size = || bad(op, "bad or missing size");
            let (reply, size) = match n {
                2 => (None, size_of(data, t[1]).ok_or_else(bad_size)?),
                3 => (Some(t[1]), size_of(data, t[2]).ok_or_else(bad_size)?),
                _ => return Err(wrong()),
            };
            return Ok((
                Head::Pub {
                    subject: t[0],
                    reply,
                },
                Some(size),
            ));
        }
        Verb::HPub => {
            let wrong = || bad(op, "wrong number of arguments");
            let (t, n) = split_upto::<4>(data, start, end).ok_or_else(wrong)?;
            let reply = match n {
                3 => None,
                4 => Some(t[1]),
                _ => return Err(wrong()),
            };
            let hdr =
                size_of(data, t[n - 2]).ok_or_else(|| bad(op, "bad or missing header size"))?;
            let size = size_of(data, t[n - 1]).ok_or_else(|| bad(op, "bad or missing size"))?;
            if hdr > size {
                return Err(bad(op, "header size larger than total size"));
            }
            return Ok((
                Head::HPub {
                    subject: t[0],
                    reply,
                    hdr,
                },
                Some(size),
            ));
        }
        _ => {}
    }
    let t = Toks::new(data, start, end);
    let n = t.n;
    let head = match verb {
        Verb::Info => return Ok((Head::Info((start, end)), None)),
        Verb::Connect => return Ok((Head::Connect((start, end)), None)),
        Verb::Ping => return Ok((Head::Ping, None)),
        Verb::Pong => return Ok((Head::Pong, None)),
        Verb::PlusOk => return Ok((Head::Ok, None)),
        Verb::MinusErr => {
            let (mut s, mut e) = (start, end);
            if e - s >= 2 && data[s] == b'\'' && data[e - 1] == b'\'' {
                s += 1;
                e -= 1;
            }
            return Ok((Head::Err((s, e)), None));
        }
        Verb::Sub => match n {
            2 => Head::Sub {
                subject: tok(&t, 0, op)?,
                queue: None,
                sid: tok(&t, 1, op)?,
            },
            3 => Head::Sub {
                subject: tok(&t, 0, op)?,
                queue: Some(tok(&t, 1, op)?),
                sid: tok(&t, 2, op)?,
            },
            _ => return Err(bad(op, "wrong number of arguments")),
        },
        Verb::Unsub => match n {
            1 => Head::Unsub {
                sid: tok(&t, 0, op)?,
                max: None,
            },
            // nats-server ignores a max that is not a number.
            2 => Head::Unsub {
                sid: tok(&t, 0, op)?,
                max: t
                    .get(1)
                    .and_then(|r| parse_size(t.bytes(r)))
                    .map(|m| m as u64),
            },
            _ => return Err(bad(op, "wrong number of arguments")),
        },
        Verb::Msg | Verb::HMsg if role == Role::ClientSide => {
            let with_hdr = verb == Verb::HMsg;
            let sizes = if with_hdr { 2 } else { 1 };
            let reply = match n.checked_sub(2 + sizes) {
                Some(0) => None,
                Some(1) => Some(tok(&t, 2, op)?),
                _ => return Err(bad(op, "wrong number of arguments")),
            };
            let size = size_arg(&t, n - 1, op)?;
            let hdr = if with_hdr {
                let h =
                    size_arg(&t, n - 2, op).map_err(|_| bad(op, "bad or missing header size"))?;
                if h > size {
                    return Err(bad(op, "header size larger than total size"));
                }
                Some(h)
            } else {
                None
            };
            let head = Head::Msg {
                subject: tok(&t, 0, op)?,
                sid: tok(&t, 1, op)?,
                reply,
                hdr,
            };
            return Ok((head, Some(size)));
        }
        Verb::RMsgV | Verb::HMsg if role == Role::Route => {
            let a = usize::from(!form.no_account);
            let (routed, size) = routed_tail(&t, 1 + a, verb == Verb::HMsg, op)?;
            let head = Head::RMsg {
                origin: None,
                account: account_tok(&t, form, 0, op)?,
                subject: tok(&t, a, op)?,
                routed,
            };
            return Ok((head, Some(size)));
        }
        Verb::LMsgV if role == Role::Route => {
            let a = usize::from(!form.no_account);
            let (mut routed, size) = routed_tail(&t, 2 + a, true, op)?;
            if routed.hdr == Some(0) {
                routed.hdr = None;
            }
            let head = Head::RMsg {
                origin: Some(tok(&t, 0, op)?),
                account: account_tok(&t, form, 1, op)?,
                subject: tok(&t, 1 + a, op)?,
                routed,
            };
            return Ok((head, Some(size)));
        }
        Verb::LMsgV | Verb::HMsg if role == Role::Leaf => {
            let (routed, size) = routed_tail(&t, 1, verb == Verb::HMsg, op)?;
            let head = Head::LMsg {
                subject: tok(&t, 0, op)?,
                routed,
            };
            return Ok((head, Some(size)));
        }
        Verb::RSubV => {
            let a = usize::from(!form.no_account);
            if n < 1 + a {
                return Err(bad(op, "wrong number of arguments"));
            }
            Head::RSub {
                account: account_tok(&t, form, 0, op)?,
                subject: tok(&t, a, op)?,
                queue: queue_weight(&t, a, op)?,
            }
        }
        Verb::RUnsubV => {
            let a = usize::from(!form.no_account);
            Head::RUnsub {
                account: account_tok(&t, form, 0, op)?,
                subject: tok(&t, a, op)?,
                queue: opt_queue(&t, a, op)?,
            }
        }
        Verb::LSubV if role == Role::Route => {
            let a = usize::from(!form.no_account);
            if n < 2 + a {
                return Err(bad(op, "wrong number of arguments"));
            }
            Head::RLSub {
                origin: tok(&t, 0, op)?,
                account: account_tok(&t, form, 1, op)?,
                subject: tok(&t, 1 + a, op)?,
                queue: queue_weight(&t, 1 + a, op)?,
            }
        }
        Verb::LUnsubV if role == Role::Route => {
            let o = usize::from(form.lnocu);
            let a = usize::from(!form.no_account);
            Head::RLUnsub {
                origin: if form.lnocu {
                    Some(tok(&t, 0, op)?)
                } else {
                    None
                },
                account: account_tok(&t, form, o, op)?,
                subject: tok(&t, o + a, op)?,
                queue: opt_queue(&t, o + a, op)?,
            }
        }
        Verb::LSubV => {
            if n < 1 {
                return Err(bad(op, "wrong number of arguments"));
            }
            Head::LSub {
                subject: tok(&t, 0, op)?,
                queue: queue_weight(&t, 0, op)?,
            }
        }
        Verb::LUnsubV => Head::LUnsub {
            subject: tok(&t, 0, op)?,
            queue: opt_queue(&t, 0, op)?,
        },
        // Role filtering in `candidates` makes the remaining combinations unreachable;
        // treat them as unknown rather than panicking.
        Verb::Pub | Verb::HPub | Verb::Msg | Verb::HMsg | Verb::RMsgV | Verb::LMsgV => {
            return Err(ProtoError::UnknownOp)
        }
    };
    Ok((head, None))
}

/// A complete op found at the front of the buffer.
struct Decoded {
    head: Head,
    payload: Option<R>,
    total: usize,
}

fn parse_core(
    buf: &mut BytesMut,
    role: Role,
    limits: &ParserLimits,
    form: RouteForm,
    hint: &mut Hint,
) -> Result<Option<Op>, ProtoError> {
    let Some(d) = decode(buf, role, limits, form, hint)? else {
        return Ok(None);
    };
    let frame = buf.split_to(d.total).freeze();
    let payload = d.payload.map(|r| frame.slice(r.0..r.1));
    Ok(Some(build(
        d.head,
        &frame,
        |r| frame.slice(r.0..r.1),
        payload,
    )))
}

fn decode(
    data: &[u8],
    role: Role,
    limits: &ParserLimits,
    form: RouteForm,
    hint: &mut Hint,
) -> Result<Option<Decoded>, ProtoError> {
    // Fast path while a large payload trickles in.
    if let Some(total) = hint.frame_len {
        if data.len() < total {
            let end = total - 2;
            if data.len() > end && data[end] != b'\r' {
                return Err(ProtoError::BadPayloadTrailer);
            }
            return Ok(None);
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    let verb = match match_verb(data, role) {
        VerbMatch::Found(v) => v,
        VerbMatch::Incomplete => return Ok(None),
        VerbMatch::Unknown => return Err(ProtoError::UnknownOp),
    };
    let vlen = verb.name().len();
    let args_start = match verb {
        Verb::Ping | Verb::Pong | Verb::PlusOk => vlen,
        Verb::Connect | Verb::Info => skip_ws(data, vlen),
        _ => {
            match data.get(vlen) {
                None => return Ok(None),
                Some(&b) if is_ws(b) => {}
                Some(_) => return Err(ProtoError::UnknownOp),
            }
            skip_ws(data, vlen)
        }
    };
    let from = hint.scanned.max(vlen).min(data.len());
    let nl = match memchr::memchr(b'\n', &data[from..]) {
        Some(i) => from + i,
        None => {
            hint.scanned = data.len();
            let mut len = data.len() - args_start.min(data.len());
            if data.last() == Some(&b'\r') {
                len = len.saturating_sub(1);
            }
            if len > limits.max_control_line {
                return Err(ProtoError::MaxControlLine {
                    len,
                    max: limits.max_control_line,
                });
            }
            return Ok(None);
        }
    };
    let line_end = if nl > args_start && data[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    // Also applied to the ignored tail of PING/PONG/+OK, so that the outcome does not
    // depend on whether the newline arrived in the same read. Token offsets are u32.
    let len = line_end.saturating_sub(args_start);
    if len > limits.max_control_line || nl > u32::MAX as usize {
        return Err(ProtoError::MaxControlLine {
            len,
            max: limits.max_control_line,
        });
    }
    let (head, size) = parse_head(verb, role, form, data, args_start, line_end.max(args_start))?;
    let total = match size {
        None => nl + 1,
        Some(size) => {
            if size > limits.max_payload {
                return Err(ProtoError::MaxPayload {
                    size,
                    max: limits.max_payload,
                });
            }
            let total = nl + 1 + size + 2;
            if data.len() < total {
                hint.frame_len = Some(total);
                let end = total - 2;
                if data.len() > end && data[end] != b'\r' {
                    return Err(ProtoError::BadPayloadTrailer);
                }
                return Ok(None);
            }
            if data[total - 2] != b'\r' || data[total - 1] != b'\n' {
                return Err(ProtoError::BadPayloadTrailer);
            }
            total
        }
    };
    *hint = Hint::default();
    Ok(Some(Decoded {
        head,
        payload: size.map(|s| (nl + 1, nl + 1 + s)),
        total,
    }))
}

/// Turn ranges into `B`s; `data` is the frame the ranges point into.
fn build<B>(head: Head, data: &[u8], s: impl Fn(R) -> B, payload: Option<B>) -> Op<B> {
    let so = |r: Option<R>| r.map(&s);
    let payload = payload.unwrap_or_else(|| s((0, 0)));
    match head {
        Head::Info(r) => Op::Info(s(r)),
        Head::Connect(r) => Op::Connect(s(r)),
        Head::Ping => Op::Ping,
        Head::Pong => Op::Pong,
        Head::Ok => Op::Ok,
        Head::Err(r) => Op::Err(s(r)),
        Head::Pub { subject, reply } => Op::Pub {
            subject: s(subject),
            reply: so(reply),
            payload,
        },
        Head::HPub {
            subject,
            reply,
            hdr,
        } => Op::HPub {
            subject: s(subject),
            reply: so(reply),
            header_len: hdr,
            payload,
        },
        Head::Sub {
            subject,
            queue,
            sid,
        } => Op::Sub {
            subject: s(subject),
            queue: so(queue),
            sid: s(sid),
        },
        Head::Unsub { sid, max } => Op::Unsub { sid: s(sid), max },
        Head::Msg {
            subject,
            sid,
            reply,
            hdr,
        } => Op::Msg {
            subject: s(subject),
            sid: s(sid),
            reply: so(reply),
            header_len: hdr,
            payload,
        },
        Head::RSub {
            account,
            subject,
            queue,
        } => Op::RSub {
            account: s(account),
            subject: s(subject),
            queue: queue.map(|(q, _)| s(q)),
            weight: queue.map(|(_, w)| w),
        },
        Head::RUnsub {
            account,
            subject,
            queue,
        } => Op::RUnsub {
            account: s(account),
            subject: s(subject),
            queue: so(queue),
        },
        Head::RMsg {
            origin,
            account,
            subject,
            routed,
        } => Op::RMsg {
            origin: so(origin),
            account: s(account),
            subject: s(subject),
            reply: so(routed.reply),
            queues: split_queues(data, &s, routed.queues),
            header_len: routed.hdr,
            payload,
        },
        Head::RLSub {
            origin,
            account,
            subject,
            queue,
        } => Op::RLSub {
            origin: s(origin),
            account: s(account),
            subject: s(subject),
            queue: queue.map(|(q, _)| s(q)),
            weight: queue.map(|(_, w)| w),
        },
        Head::RLUnsub {
            origin,
            account,
            subject,
            queue,
        } => Op::RLUnsub {
            origin: so(origin),
            account: s(account),
            subject: s(subject),
            queue: so(queue),
        },
        Head::LSub { subject, queue } => Op::LSub {
            subject: s(subject),
            queue: queue.map(|(q, _)| s(q)),
            weight: queue.map(|(_, w)| w),
        },
        Head::LUnsub { subject, queue } => Op::LUnsub {
            subject: s(subject),
            queue: so(queue),
        },
        Head::LMsg { subject, routed } => Op::LMsg {
            subject: s(subject),
            reply: so(routed.reply),
            queues: split_queues(data, &s, routed.queues),
            header_len: routed.hdr,
            payload,
        },
    }
}

fn split_queues<B>(data: &[u8], s: impl Fn(R) -> B, span: Option<R>) -> Vec<B> {
    let Some((start, end)) = span else {
        return Vec::new();
    };
    let t = &data[..end];
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        while i < end && is_sep(t[i]) {
            i += 1;
        }
        let st = i;
        while i < end && !is_sep(t[i]) {
            i += 1;
        }
        if i > st {
            out.push(s((st, i)));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_matches_nats() {
        assert_eq!(parse_size(b"0"), Some(0));
        assert_eq!(parse_size(b"00012"), Some(12));
        assert_eq!(parse_size(b"999999999"), Some(999_999_999));
        assert_eq!(parse_size(b"1000000000"), None);
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"+1"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"0x1"), None);
    }

    #[test]
    fn toks_keeps_first_and_last() {
        let line = b"a b c d e f g h i j k l";
        let t = Toks::new(line, 0, line.len());
        assert_eq!(t.n, 12);
        assert_eq!(t.bytes(t.get(0).unwrap()), b"a");
        assert_eq!(t.bytes(t.get(7).unwrap()), b"h");
        assert!(t.get(8).is_none());
        assert_eq!(t.bytes(t.get(9).unwrap()), b"j");
        assert_eq!(t.bytes(t.get(11).unwrap()), b"l");
        assert!(t.get(12).is_none());
    }
    #[test]
    fn token_end_agrees_with_a_byte_loop() {
        // Every byte class the word-at-a-time scan must tell apart, at every offset.
        let alphabet = [
            b'a', b' ', b'\t', b'\r', b'\n', 0u8, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let data: Vec<u8> = (0..len)
                .map(|k| {
                    let r = (seed >> (k % 60)) as usize ^ k.wrapping_mul(31);
                    // Mostly token bytes, so that long tokens occur.
                    if !r.is_multiple_of(3) {
                        b'x'
                    } else {
                        alphabet[r % alphabet.len()]
                    }
                })
                .collect();
            for start in 0..=len {
                let naive = (start..len).find(|&i| is_sep(data[i])).unwrap_or(len);
                assert_eq!(token_end(&data, start, len), naive, "{data:?} from {start}");
            }
        }
    }
}
