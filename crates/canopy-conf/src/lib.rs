//! canopy-conf: the nats-server configuration language and Canopy's typed options.
//!
//! Pipeline: text → [`parse_str`]/[`parse_file`] (a positioned [`Value`] tree) →
//! [`Options::from_map`] via [`from_str`]/[`load_file`] (typed options, every error
//! collected) → [`Options::validate`] (cross-field checks) and [`Options::warnings`].
//! Pure: no I/O besides reading config and include files, no async.

mod duration;
mod error;
mod lex;
mod load;
mod options;
mod parse;
mod validate;
mod value;

pub use duration::parse_duration;
pub use error::{ConfError, ConfErrors, Warning};
pub use load::{from_str, load_file};
pub use options::*;
pub use parse::{parse_file, parse_str};
pub use validate::{is_wellformed_bcrypt, looks_like_bcrypt};
pub use value::{Entry, Kind, Map, Pos, Value};
