//! Export configuration: flags, TOML file, OTEL_* variables.
//!
//! `defs` names every setting, `file` and `env` read the sources, `parse` types one value,
//! `resolve` applies the precedence, `error` says what was wrong and where.

mod defs;
mod env;
mod error;
mod file;
mod parse;
mod resolve;

pub use defs::*;
pub use env::process_env;
pub use error::*;
pub use file::*;
pub use parse::parse_duration;
pub use resolve::*;
