//! The parsed, untyped configuration tree: [`Value`], [`Map`] and source positions ([`Pos`]).
//!
//! Every value remembers where it was written so that typed-option errors (and later,
//! refusals by the server) can name `file:line:col`.

use std::fmt;
use std::sync::Arc;

/// A position in a configuration source: file name, 1-based line and 1-based column.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(file: Arc<str>, line: u32, col: u32) -> Self {
        Pos { file, line, col }
    }
}

impl Default for Pos {
    /// The position of a value that did not come from a file (defaults, flags).
    fn default() -> Self {
        Pos {
            file: Arc::from("<default>"),
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for Pos {
    /// `file:line:col`, or just `file` for positions without a line (whole-file errors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

impl fmt::Debug for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One configuration value with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub kind: Kind,
    pub pos: Pos,
    /// The token as written, kept only for integers that carried a size suffix (`2m`), so a
    /// duration option can read `2m` as two minutes rather than two million seconds.
    pub raw: Option<Box<str>>,
}

/// The shapes a configuration value can take.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    String(String),
    /// An integer, with any size suffix (`64MB`) already applied.
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// An ISO-8601 UTC date-time such as `2024-01-02T03:04:05Z`, kept as written.
    Datetime(String),
    Array(Vec<Value>),
    Map(Map),
}

impl Kind {
    /// The type name used in error messages (`expected a duration ..., got bool`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::String(_) => "string",
            Kind::Integer(_) => "integer",
            Kind::Float(_) => "float",
            Kind::Bool(_) => "bool",
            Kind::Datetime(_) => "datetime",
            Kind::Array(_) => "array",
            Kind::Map(_) => "map",
        }
    }
}

impl Value {
    pub fn new(kind: Kind, pos: Pos) -> Self {
        Value {
            kind,
            pos,
            raw: None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&Map> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match &self.kind {
            Kind::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self.kind {
            Kind::Integer(i) => Some(i),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self.kind {
            Kind::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
}

/// One `key: value` entry of a map.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key exactly as written (account names and subjects are case-sensitive); option
    /// lookups compare keys ASCII-case-insensitively.
    pub key: String,
    pub key_pos: Pos,
    pub value: Value,
    /// The key was referenced as a `$variable`; such keys are definitions, not options, and
    /// are skipped by the unknown-field check.
    pub used_as_variable: bool,
}

/// An insertion-ordered map. A repeated key replaces the earlier value (last one wins).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Map {
    pub entries: Vec<Entry>,
}

impl Map {
    pub fn new() -> Self {
        Map::default()
    }

    /// Inserts or replaces (exact key match) an entry.
    pub fn insert(&mut self, entry: Entry) {
        if let Some(old) = self.entries.iter_mut().find(|e| e.key == entry.key) {
            *old = entry;
        } else {
            self.entries.push(entry);
        }
    }

    /// Case-insensitive lookup.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entry(key).map(|e| &e.value)
    }

    /// Case-insensitive lookup of the whole entry.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}
