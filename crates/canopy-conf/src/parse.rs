//! The parser: configuration text → a [`Map`] of positioned [`Value`]s.
//!
//! Owns the grammar (maps, arrays, separators, optional top-level braces), `$variable`
//! resolution (enclosing scopes, then the environment, with cycle detection) and
//! `include` (relative to the including file, parsed independently, merged into the
//! current map).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ConfError;
use crate::lex::{classify_bare, describe, Lexer};
use crate::value::{Entry, Kind, Map, Pos, Value};

/// Deepest map/array nesting accepted (keeps hostile input from overflowing the stack).
const MAX_NESTING: usize = 64;
/// Deepest include chain accepted (an include cycle hits this).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Parses configuration text. `file_name` is used in positions and as the base for
/// relative includes (its directory; the current directory when it has none).
pub fn parse_str(src: &str, file_name: &str) -> Result<Map, ConfError> {
    let base = Path::new(file_name)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Parser::new(src, Arc::from(file_name), base, 0, Vec::new()).parse_document()
}

/// Reads and parses a configuration file.
pub fn parse_file(path: &Path) -> Result<Map, ConfError> {
    parse_file_at(path, 0, None)
}

fn parse_file_at(path: &Path, depth: usize, from: Option<&Pos>) -> Result<Map, ConfError> {
    let name: Arc<str> = Arc::from(path.display().to_string());
    let src = std::fs::read_to_string(path).map_err(|e| {
        let (pos, what) = match from {
            Some(p) => (p.clone(), "include file"),
            None => (Pos::new(name.clone(), 0, 0), "configuration file"),
        };
        ConfError::new(
            pos,
            format!("error opening {what} {:?}: {e}", path.display()),
        )
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Parser::new(&src, name, base, depth, Vec::new()).parse_document()
}

struct Parser {
    lx: Lexer,
    base_dir: PathBuf,
    include_depth: usize,
    /// Maps under construction, outermost first: the variable scopes.
    scopes: Vec<Map>,
    /// Environment variables being expanded (cycle detection).
    env_stack: Vec<String>,
    nesting: usize,
}

impl Parser {
    fn new(
        src: &str,
        file: Arc<str>,
        base_dir: PathBuf,
        include_depth: usize,
        env_stack: Vec<String>,
    ) -> Self {
        Parser {
            lx: Lexer::new(src, file),
            base_dir,
            include_depth,
            scopes: Vec::new(),
            env_stack,
            nesting: 0,
        }
    }

    fn parse_document(mut self) -> Result<Map, ConfError> {
        self.lx.skip_ws();
        self.scopes.push(Map::new());
        if self.lx.peek() == Some('{') {
            // Optional top-level braces (this is also how JSON files parse).
            self.lx.bump();
            self.parse_map_body(true)?;
            self.lx.skip_ws();
            if let Some(c) = self.lx.peek() {
                return Err(self.lx.err(format!(
                    "unexpected {} after the closing '}}' of the top-level map",
                    describe(c)
                )));
            }
        } else {
            self.parse_map_body(false)?;
        }
        Ok(self.scopes.pop().unwrap_or_default())
    }

    fn current(&mut self) -> &mut Map {
        if self.scopes.is_empty() {
            self.scopes.push(Map::new());
        }
        let last = self.scopes.len() - 1;
        &mut self.scopes[last]
    }

    /// Parses `key value` entries into the innermost scope until `}` (when `braced`) or EOF.
    fn parse_map_body(&mut self, braced: bool) -> Result<(), ConfError> {
        loop {
            self.lx.skip_ws();
            match self.lx.peek() {
                None if braced => return Err(self.lx.err("unexpected end of file, expected '}'")),
                None => return Ok(()),
                Some('}') if braced => {
                    self.lx.bump();
                    return Ok(());
                }
                Some(',' | ';') => {
                    self.lx.bump();
                    continue;
                }
                Some(c @ ('}' | ']' | '{' | '[' | ':' | '=')) => {
                    return Err(self
                        .lx
                        .err(format!("expected a key, found {}", describe(c))));
                }
                Some(_) => {}
            }
            let key_pos = self.lx.pos();
            let key = self.lx.read_key()?;
            if key.eq_ignore_ascii_case("include") && self.include_follows() {
                self.parse_include(&key_pos)?;
            } else {
                self.parse_key_value(key, key_pos)?;
            }
            // After an entry: a separator, end of line, comment or the closing brace.
            self.lx.skip_blank();
            match self.lx.peek() {
                Some(',' | ';') => {
                    self.lx.bump();
                }
                Some('}') if braced => {}
                _ if self.lx.at_line_end() => {}
                Some(c) => {
                    return Err(self.lx.err(format!(
                        "expected a newline, ',' or '}}' after a value, found {}",
                        describe(c)
                    )))
                }
                None => {}
            }
        }
    }

    /// `include path` has no separator: `include: x` is an ordinary key.
    fn include_follows(&self) -> bool {
        matches!(self.lx.peek(), Some(' ' | '\t')) && {
            let mut i = 0;
            while matches!(self.lx.peek_at(i), Some(' ' | '\t')) {
                i += 1;
            }
            !matches!(self.lx.peek_at(i), Some(':' | '=') | None | Some('\n'))
        }
    }

    fn parse_key_value(&mut self, key: String, key_pos: Pos) -> Result<(), ConfError> {
        self.lx.skip_blank();
        if matches!(self.lx.peek(), Some(':' | '=')) {
            self.lx.bump();
            self.lx.skip_blank();
        }
        if self.lx.at_line_end() {
            // Only a map or array may start on the next line (`cluster\n{`).
            self.lx.skip_ws();
            if !matches!(self.lx.peek(), Some('{' | '[')) {
                return Err(ConfError::new(
                    key_pos,
                    format!("Parse error: expected a value for key \"{key}\""),
                ));
            }
        }
        let value = self.parse_value()?;
        self.current().insert(Entry {
            key,
            key_pos,
            value,
            used_as_variable: false,
        });
        Ok(())
    }

    fn parse_include(&mut self, key_pos: &Pos) -> Result<(), ConfError> {
        self.lx.skip_blank();
        let target = match self.lx.peek() {
            Some('"') => self.lx.read_double_quoted()?,
            Some('\'') => self.lx.read_single_quoted()?,
            _ => self.lx.read_bare(),
        };
        if target.is_empty() {
            return Err(ConfError::new(
                key_pos.clone(),
                "Parse error: expected a file name after include",
            ));
        }
        if self.include_depth >= MAX_INCLUDE_DEPTH {
            return Err(ConfError::new(
                key_pos.clone(),
                format!("include nesting deeper than {MAX_INCLUDE_DEPTH} (an include cycle?)"),
            ));
        }
        let path = self.base_dir.join(&target);
        let included = parse_file_at(&path, self.include_depth + 1, Some(key_pos))?;
        let cur = self.current();
        for entry in included.entries {
            cur.insert(entry);
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), ConfError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self
                .lx
                .err(format!("nesting deeper than {MAX_NESTING} levels")));
        }
        Ok(())
    }

    fn parse_value(&mut self) -> Result<Value, ConfError> {
        let pos = self.lx.pos();
        match self.lx.peek() {
            Some('{') => {
                self.enter()?;
                self.lx.bump();
                self.scopes.push(Map::new());
                let res = self.parse_map_body(true);
                let map = self.scopes.pop().unwrap_or_default();
                res?;
                self.nesting -= 1;
                Ok(Value::new(Kind::Map(map), pos))
            }
            Some('[') => {
                self.enter()?;
                let items = self.parse_array()?;
                self.nesting -= 1;
                Ok(Value::new(Kind::Array(items), pos))
            }
            Some('"') => Ok(Value::new(Kind::String(self.lx.read_double_quoted()?), pos)),
            Some('\'') => Ok(Value::new(Kind::String(self.lx.read_single_quoted()?), pos)),
            Some('(') => Ok(Value::new(Kind::String(self.lx.read_raw_block()?), pos)),
            // Only the `$2a$` bcrypt prefix may be written unquoted.
            Some('$') if self.lx.starts_with("$2a$") => {
                Ok(Value::new(Kind::String(self.lx.read_bare()), pos))
            }
            Some('$') => {
                self.lx.bump();
                let name = self.lx.read_bare();
                if name.is_empty() {
                    return Err(ConfError::new(
                        pos,
                        "Parse error: expected a variable name after '$'",
                    ));
                }
                self.resolve_variable(&name, pos)
            }
            Some(c) if c.is_whitespace() || matches!(c, ',' | ';' | ']' | '}') => Err(self
                .lx
                .err(format!("expected a value, found {}", describe(c)))),
            None => Err(self.lx.err("expected a value, found end of file")),
            Some(_) => {
                let text = self.lx.read_bare();
                match classify_bare(&text) {
                    Ok(Some(kind)) => {
                        let mut v = Value::new(kind, pos);
                        if matches!(v.kind, Kind::Integer(_))
                            && text.ends_with(|c: char| c.is_ascii_alphabetic())
                        {
                            v.raw = Some(text.into_boxed_str());
                        }
                        Ok(v)
                    }
                    Ok(None) => Ok(Value::new(Kind::String(text), pos)),
                    Err(msg) => Err(ConfError::new(pos, format!("Parse error: {msg}"))),
                }
            }
        }
    }

    fn parse_array(&mut self) -> Result<Vec<Value>, ConfError> {
        self.lx.bump(); // '['
        let mut items = Vec::new();
        loop {
            self.lx.skip_ws();
            match self.lx.peek() {
                None => return Err(self.lx.err("unexpected end of file, expected ']'")),
                Some(']') => {
                    self.lx.bump();
                    return Ok(items);
                }
                Some(',' | ';') => {
                    self.lx.bump();
                    continue;
                }
                Some(_) => {}
            }
            items.push(self.parse_value()?);
            self.lx.skip_blank();
            match self.lx.peek() {
                Some(',' | ';') => {
                    self.lx.bump();
                }
                Some(']') => {}
                _ if self.lx.at_line_end() => {}
                Some(c) => {
                    return Err(self.lx.err(format!(
                        "expected a newline, ',' or ']' after an array element, found {}",
                        describe(c)
                    )))
                }
                None => {}
            }
        }
    }

    /// `$name`: the nearest enclosing definition, else the environment (re-parsed as a value).
    fn resolve_variable(&mut self, name: &str, pos: Pos) -> Result<Value, ConfError> {
        for scope in self.scopes.iter_mut().rev() {
            if let Some(entry) = scope.entries.iter_mut().rev().find(|e| e.key == name) {
                entry.used_as_variable = true;
                let mut v = entry.value.clone();
                v.pos = pos;
                return Ok(v);
            }
        }
        let Ok(text) = std::env::var(name) else {
            return Err(ConfError::new(
                pos.clone(),
                format!(
                    "variable reference for '{name}' on line {} can not be found",
                    pos.line
                ),
            ));
        };
        if self.env_stack.iter().any(|n| n == name) {
            return Err(ConfError::new(
                pos,
                format!("variable reference cycle for '{name}' through the environment"),
            ));
        }
        let mut stack = self.env_stack.clone();
        stack.push(name.to_string());
        let mut sub = Parser {
            lx: Lexer::at(&text, &pos),
            base_dir: self.base_dir.clone(),
            include_depth: self.include_depth,
            scopes: Vec::new(),
            env_stack: stack,
            nesting: self.nesting,
        };
        sub.lx.skip_blank();
        let parsed = sub.parse_value().and_then(|v| {
            sub.lx.skip_ws();
            if sub.lx.peek().is_some() {
                Err(sub.lx.err("trailing text"))
            } else {
                Ok(v)
            }
        });
        match parsed {
            Ok(mut v) => {
                v.pos = pos;
                Ok(v)
            }
            // A cycle or a missing nested variable is a real error ...
            Err(e) if e.message.contains("variable reference") => Err(e),
            // ... anything else that is not a config value is taken as a plain string.
            Err(_) => Ok(Value::new(Kind::String(text), pos)),
        }
    }
}
