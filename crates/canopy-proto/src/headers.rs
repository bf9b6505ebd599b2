//! NATS message header blocks: `NATS/1.0[ <status>[ <description>]]\r\n`, then
//! `Key: Value\r\n` lines, then an empty line. Read-side helpers (status, iteration,
//! lookup, validation) and a writer for status-only blocks such as no-responders.
//!
//! nats-server does not validate HPUB header blocks in the parser (2.9.10 accepts
//! `XATS/1.0`); [`is_valid`] is for callers that want to be stricter.

use bytes::BytesMut;

/// The version line every header block starts with.
pub const VERSION_LINE: &[u8] = b"NATS/1.0";

const NO_RESPONDERS: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// The 16-byte block nats-server 2.9 sends for no-responders: `NATS/1.0 503\r\n\r\n`.
pub fn no_responders_block() -> &'static [u8] {
    NO_RESPONDERS
}

/// True if `hdr` starts with `NATS/1.0` (followed by a space or `\r\n`) and ends with
/// the empty line `\r\n\r\n`.
pub fn is_valid(hdr: &[u8]) -> bool {
    let Some(rest) = hdr.strip_prefix(VERSION_LINE) else {
        return false;
    };
    (rest.starts_with(b" ") || rest.starts_with(b"\r\n")) && hdr.ends_with(b"\r\n\r\n")
}

fn first_line(hdr: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\n', hdr).unwrap_or(hdr.len());
    let line = &hdr[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The inline status of a header block: `NATS/1.0 503` → `(503, None)`,
/// `NATS/1.0 408 Request Timeout` → `(408, Some("Request Timeout"))`. `None` when the
/// block has no status or is not a NATS header block.
pub fn parse_status(hdr: &[u8]) -> Option<(u16, Option<&str>)> {
    let rest = first_line(hdr).strip_prefix(VERSION_LINE)?;
    let rest = rest.strip_prefix(b" ")?;
    let rest = trim(rest);
    let (code, desc) = match rest.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&rest[..i], Some(trim(&rest[i + 1..]))),
        None => (rest, None),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = code.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'));
    let desc = desc
        .filter(|d| !d.is_empty())
        .and_then(|d| std::str::from_utf8(d).ok());
    Some((code, desc))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Iterator over `(name, value)` pairs after the version line; values are trimmed.
/// Lines without a `:` are skipped; iteration stops at the first empty line.
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

/// Iterate the `Key: Value` lines of a header block.
pub fn iter(hdr: &[u8]) -> HeaderIter<'_> {
    let rest = match memchr::memchr(b'\n', hdr) {
        Some(i) => &hdr[i + 1..],
        None => &[],
    };
    HeaderIter { rest }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (line, rest) = match memchr::memchr(b'\n', self.rest) {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                self.rest = &[];
                return None;
            }
            if let Some(c) = memchr::memchr(b':', line) {
                return Some((trim(&line[..c]), trim(&line[c + 1..])));
            }
        }
    }
}

/// First value of header `name` (ASCII case-insensitive).
pub fn get<'a>(hdr: &'a [u8], name: &str) -> Option<&'a [u8]> {
    iter(hdr)
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// Append a status block: `NATS/1.0 <code>[ <desc>]\r\n[Key: Value\r\n...]\r\n`.
/// Returns the number of bytes written (the header length for HMSG).
pub fn encode_status_block(
    buf: &mut BytesMut,
    code: u16,
    desc: Option<&str>,
    extra: &[(&str, &str)],
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(VERSION_LINE);
    buf.extend_from_slice(b" ");
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(code).as_bytes());
    if let Some(d) = desc {
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(d.as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    for (k, v) in extra {
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.len() - start
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        assert_eq!(parse_status(no_responders_block()), Some((503, None)));
        assert_eq!(no_responders_block().len(), 16);
        assert_eq!(
            parse_status(b"NATS/1.0 408 Request Timeout\r\n\r\n"),
            Some((408, Some("Request Timeout")))
        );
        assert_eq!(parse_status(b"NATS/1.0\r\nFoo: bar\r\n\r\n"), None);
        assert_eq!(parse_status(b"NATS/1.0 50\r\n\r\n"), None);
        assert_eq!(parse_status(b"XATS/1.0 503\r\n\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn validation() {
        assert!(is_valid(b"NATS/1.0\r\n\r\n"));
        assert!(is_valid(b"NATS/1.0 503\r\n\r\n"));
        assert!(is_valid(b"NATS/1.0\r\nA: b\r\n\r\n"));
        assert!(!is_valid(b"NATS/1.0\r\nA: b\r\n"));
        assert!(!is_valid(b"NATS/1.1\r\n\r\n"));
        assert!(!is_valid(b"NATS/1.0x\r\n\r\n"));
        assert!(!is_valid(b""));
    }

    #[test]
    fn iteration_and_lookup() {
        let h = b"NATS/1.0\r\nA: 1\r\nNats-Subject:  foo.bar \r\nnocolon\r\nA: 2\r\n\r\nX: 9\r\n";
        let all: Vec<_> = iter(h).collect();
        assert_eq!(
            all,
            vec![
                (&b"A"[..], &b"1"[..]),
                (&b"Nats-Subject"[..], &b"foo.bar"[..]),
                (&b"A"[..], &b"2"[..])
            ]
        );
        assert_eq!(get(h, "nats-subject"), Some(&b"foo.bar"[..]));
        assert_eq!(get(h, "X"), None);
    }

    #[test]
    fn status_block_writer() {
        let mut b = BytesMut::new();
        let n = encode_status_block(&mut b, 503, None, &[]);
        assert_eq!(&b[..], no_responders_block());
        assert_eq!(n, 16);
        let mut b = BytesMut::new();
        let n = encode_status_block(&mut b, 503, None, &[("Nats-Subject", "foo")]);
        assert_eq!(&b[..n], b"NATS/1.0 503\r\nNats-Subject: foo\r\n\r\n");
        assert!(is_valid(&b));
        assert_eq!(get(&b, "Nats-Subject"), Some(&b"foo"[..]));
    }
}
