//! Character-level scanning of the nats-server configuration language.
//!
//! The language is context sensitive (an unquoted value runs to the end of its token, a key
//! ends at a separator), so instead of a token stream this module offers a cursor with the
//! scanning primitives the parser needs, plus [`classify_bare`], which decides what an
//! unquoted scalar (`4222`, `64MB`, `true`, `10s`, `nats://h:4222`) is.

use std::sync::Arc;

use crate::error::ConfError;
use crate::value::{Kind, Pos};

/// A cursor over the source with line/column tracking.
pub(crate) struct Lexer {
    chars: Vec<char>,
    idx: usize,
    line: u32,
    col: u32,
    file: Arc<str>,
}

impl Lexer {
    pub(crate) fn new(src: &str, file: Arc<str>) -> Self {
        // A UTF-8 byte-order mark is not part of the text.
        let src = src.strip_prefix('\u{feff}').unwrap_or(src);
        Lexer {
            chars: src.chars().collect(),
            idx: 0,
            line: 1,
            col: 1,
            file,
        }
    }

    /// Starts a lexer whose positions are reported at `pos` (used for environment values).
    pub(crate) fn at(src: &str, pos: &Pos) -> Self {
        let mut lx = Lexer::new(src, pos.file.clone());
        lx.line = pos.line;
        lx.col = pos.col;
        lx
    }

    pub(crate) fn pos(&self) -> Pos {
        Pos::new(self.file.clone(), self.line, self.col)
    }

    pub(crate) fn err(&self, msg: impl AsRef<str>) -> ConfError {
        ConfError::new(self.pos(), format!("Parse error: {}", msg.as_ref()))
    }

    pub(crate) fn peek(&self) -> Option<char> {
        self.chars.get(self.idx).copied()
    }

    pub(crate) fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.idx + n).copied()
    }

    pub(crate) fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.idx += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    pub(crate) fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i) == Some(c))
    }

    /// True at `#` or `//`.
    pub(crate) fn at_comment(&self) -> bool {
        matches!(self.peek(), Some('#')) || self.starts_with("//")
    }

    /// Skips spaces and tabs (and the `\r` of CRLF), not newlines.
    pub(crate) fn skip_blank(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
        }
    }

    /// Skips to (not past) the end of the line.
    pub(crate) fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Skips blanks, newlines and comments.
    pub(crate) fn skip_ws(&mut self) {
        loop {
            self.skip_blank();
            if self.at_comment() {
                self.skip_comment();
            } else if self.peek() == Some('\n') {
                self.bump();
            } else {
                return;
            }
        }
    }

    /// True when the rest of the line is blank or a comment.
    pub(crate) fn at_line_end(&self) -> bool {
        self.peek().is_none() || self.peek() == Some('\n') || self.at_comment()
    }

    /// Reads a key: a quoted string or bare text up to a separator or whitespace.
    pub(crate) fn read_key(&mut self) -> Result<String, ConfError> {
        match self.peek() {
            Some('"') => self.read_double_quoted(),
            Some('\'') => self.read_single_quoted(),
            _ => {
                let start = self.pos();
                let mut key = String::new();
                while let Some(c) = self.peek() {
                    if c.is_whitespace()
                        || matches!(c, ':' | '=' | '{' | '[' | '}' | ']' | ',' | ';')
                    {
                        break;
                    }
                    key.push(c);
                    self.bump();
                }
                if key.is_empty() {
                    let found = self.peek().map_or("end of file".to_string(), describe);
                    return Err(ConfError::new(
                        start,
                        format!("Parse error: expected a key, found {found}"),
                    ));
                }
                Ok(key)
            }
        }
    }

    /// Reads `"..."` with escapes `\t \n \r \" \\ \/ \b \f \uXXXX \UXXXXXXXX`.
    pub(crate) fn read_double_quoted(&mut self) -> Result<String, ConfError> {
        let start = self.pos();
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err(ConfError::new(
                        start,
                        "Parse error: unterminated quoted string",
                    ))
                }
                Some('"') => return Ok(out),
                Some('\\') => {
                    let epos = self.pos();
                    match self.bump() {
                        Some('t') => out.push('\t'),
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('b') => out.push('\u{8}'),
                        Some('f') => out.push('\u{c}'),
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('/') => out.push('/'),
                        Some('u') => out.push(self.read_hex_escape(4, &epos)?),
                        Some('U') => out.push(self.read_hex_escape(8, &epos)?),
                        Some(c) => {
                            return Err(ConfError::new(
                                epos,
                                format!("Parse error: invalid escape character {}", describe(c)),
                            ))
                        }
                        None => {
                            return Err(ConfError::new(
                                start,
                                "Parse error: unterminated quoted string",
                            ))
                        }
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn read_hex_escape(&mut self, digits: usize, epos: &Pos) -> Result<char, ConfError> {
        let mut v: u32 = 0;
        for _ in 0..digits {
            let d = self.peek().and_then(|c| c.to_digit(16)).ok_or_else(|| {
                ConfError::new(
                    epos.clone(),
                    format!("Parse error: expected {digits} hexadecimal digits in escape"),
                )
            })?;
            self.bump();
            v = v * 16 + d;
        }
        char::from_u32(v).ok_or_else(|| {
            ConfError::new(
                epos.clone(),
                format!("Parse error: invalid unicode escape {v:#x}"),
            )
        })
    }

    /// Reads `'...'` verbatim (no escapes).
    pub(crate) fn read_single_quoted(&mut self) -> Result<String, ConfError> {
        let start = self.pos();
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    return Err(ConfError::new(
                        start,
                        "Parse error: unterminated quoted string",
                    ))
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    /// Reads a `( ... )` raw block: everything up to a `)` that is the first non-blank
    /// character of a line, or the last character of the opening line's text.
    pub(crate) fn read_raw_block(&mut self) -> Result<String, ConfError> {
        let start = self.pos();
        self.bump();
        let mut out = String::new();
        let mut line_blank = false;
        let mut first_line = true;
        loop {
            match self.peek() {
                None => return Err(ConfError::new(start, "Parse error: unterminated '(' block")),
                Some(')') if line_blank || (first_line && self.rest_of_line_blank_after(1)) => {
                    self.bump();
                    let trimmed = out.trim_matches(|c| c == '\n' || c == '\r');
                    return Ok(trimmed.to_string());
                }
                Some(c) => {
                    self.bump();
                    if c == '\n' {
                        line_blank = true;
                        first_line = false;
                    } else if !matches!(c, ' ' | '\t' | '\r') {
                        line_blank = false;
                    }
                    out.push(c);
                }
            }
        }
    }

    fn rest_of_line_blank_after(&self, n: usize) -> bool {
        let mut i = self.idx + n;
        while let Some(&c) = self.chars.get(i) {
            match c {
                '\n' => return true,
                ' ' | '\t' | '\r' | ',' | ';' => i += 1,
                _ => return false,
            }
        }
        true
    }

    /// Reads an unquoted value token: up to whitespace, `,`, `;`, `]`, `}` or end of file.
    pub(crate) fn read_bare(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, ',' | ';' | ']' | '}') {
                break;
            }
            out.push(c);
            self.bump();
        }
        out
    }
}

/// Describes a character for an error message.
pub(crate) fn describe(c: char) -> String {
    match c {
        '\n' => "a newline".to_string(),
        '\t' => "a tab".to_string(),
        c if c.is_control() => format!("character {:#x}", c as u32),
        c => format!("'{c}'"),
    }
}

/// The multiplier for a size suffix (case-insensitive): `k`=1000, `kb`/`ki`/`kib`=1024, and
/// likewise `m`, `g`, `t`, `p`, `e`.
fn size_multiplier(suffix: &str) -> Option<i64> {
    let s = suffix.to_ascii_lowercase();
    let mut chars = s.chars();
    let exp = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let binary = match chars.as_str() {
        "" => false,
        "b" | "i" | "ib" => true,
        _ => return None,
    };
    let base: i64 = if binary { 1024 } else { 1000 };
    base.checked_pow(exp)
}

fn is_datetime(s: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SSZ
    let b = s.as_bytes();
    if b.len() != 20 {
        return false;
    }
    let pattern = b"dddd-dd-ddTdd:dd:ddZ";
    b.iter().zip(pattern.iter()).all(|(&c, &p)| {
        if p == b'd' {
            c.is_ascii_digit()
        } else {
            c == p
        }
    })
}

fn is_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let Some((int, frac)) = mantissa.split_once('.') else {
        return false;
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return false;
    }
    match exp {
        None => true,
        Some(e) => digits(e.strip_prefix(['-', '+']).unwrap_or(e)),
    }
}

/// What an unquoted scalar is. `Ok(None)` means "a plain string"; `Err` is a malformed
/// number (overflow).
pub(crate) fn classify_bare(s: &str) -> Result<Option<Kind>, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => return Ok(Some(Kind::Bool(true))),
        "false" | "no" | "off" => return Ok(Some(Kind::Bool(false))),
        _ => {}
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let negative = s.starts_with('-');
    let ndigits = unsigned.bytes().take_while(|c| c.is_ascii_digit()).count();
    if ndigits > 0 {
        let (digits, suffix) = unsigned.split_at(ndigits);
        let mult = if suffix.is_empty() {
            Some(1)
        } else {
            size_multiplier(suffix)
        };
        if let Some(mult) = mult {
            let n: i64 = digits
                .parse()
                .map_err(|_| format!("integer '{s}' is out of range"))?;
            let n = n
                .checked_mul(mult)
                .ok_or_else(|| format!("integer '{s}' is out of range"))?;
            return Ok(Some(Kind::Integer(if negative { -n } else { n })));
        }
    }
    if is_float(s) {
        return s
            .parse::<f64>()
            .map(|f| Some(Kind::Float(f)))
            .map_err(|_| format!("invalid float '{s}'"));
    }
    if is_datetime(s) {
        return Ok(Some(Kind::Datetime(s.to_string())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(s: &str) -> i64 {
        match classify_bare(s) {
            Ok(Some(Kind::Integer(i))) => i,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(int("4222"), 4222);
        assert_eq!(int("-1"), -1);
        assert_eq!(int("1k"), 1000);
        assert_eq!(int("1K"), 1000);
        assert_eq!(int("1kb"), 1024);
        assert_eq!(int("1KB"), 1024);
        assert_eq!(int("2Ki"), 2048);
        assert_eq!(int("1kib"), 1024);
        assert_eq!(int("2MB"), 2 * 1024 * 1024);
        assert_eq!(int("64MiB"), 64 * 1024 * 1024);
        assert_eq!(int("1m"), 1_000_000);
        assert_eq!(int("1GB"), 1 << 30);
        assert_eq!(int("1Gb"), 1 << 30);
        assert_eq!(int("1g"), 1_000_000_000);
        assert_eq!(int("100GB"), 100 << 30);
        assert_eq!(int("1TB"), 1 << 40);
        assert_eq!(int("1t"), 1_000_000_000_000);
        assert_eq!(int("1PB"), 1 << 50);
        assert_eq!(int("1EB"), 1 << 60);
        assert_eq!(int("1e"), 1_000_000_000_000_000_000);
        assert!(classify_bare("9EB").is_err());
        assert!(classify_bare("99999999999999999999").is_err());
    }

    #[test]
    fn non_numbers() {
        for s in [
            "10s",
            "127.0.0.1:4222",
            "nats://h:1",
            "1.2.3",
            "2h",
            "1kbx",
            "abc",
        ] {
            assert_eq!(classify_bare(s), Ok(None), "{s}");
        }
        assert_eq!(classify_bare("1.5"), Ok(Some(Kind::Float(1.5))));
        assert_eq!(classify_bare("-0.25e1"), Ok(Some(Kind::Float(-2.5))));
        assert_eq!(
            classify_bare("2024-01-02T03:04:05Z"),
            Ok(Some(Kind::Datetime("2024-01-02T03:04:05Z".into())))
        );
        for (s, b) in [
            ("TRUE", true),
            ("yes", true),
            ("On", true),
            ("off", false),
            ("No", false),
        ] {
            assert_eq!(classify_bare(s), Ok(Some(Kind::Bool(b))));
        }
    }
}
