//! Error and warning types: one [`ConfError`] per problem, [`ConfErrors`] for the collected
//! list that `canopy-server` prints (one `file:line:col: message` per line).

use std::fmt;

use crate::value::Pos;

/// A single configuration problem at a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct ConfError {
    pub pos: Pos,
    pub message: String,
}

impl ConfError {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        ConfError {
            pos,
            message: message.into(),
        }
    }
}

/// Every error found in a configuration, in source order of discovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfErrors(pub Vec<ConfError>);

impl ConfErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ConfError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfErrors {}

impl From<ConfError> for ConfErrors {
    fn from(e: ConfError) -> Self {
        ConfErrors(vec![e])
    }
}

/// A non-fatal note about the configuration (deprecated forms, fake bcrypt hashes, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}
