//! A bad value, said in one line that names where it came from.

use std::fmt;
use std::path::PathBuf;

use super::defs::Raw;

/// A bad value, said in one line that names its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where a value came from: what an error message names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    File { key: String, path: PathBuf },
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => f.write_str(name),
            Origin::File { key, path } => write!(f, "`{key}` in {}", path.display()),
            Origin::Env(name) => f.write_str(name),
        }
    }
}

pub(super) fn bad(origin: &Origin, raw: &Raw, why: &str) -> ConfigError {
    let shown = match raw {
        Raw::Str(s) => format!("`{s}`"),
        Raw::Int(i) => format!("`{i}`"),
        Raw::Float(f) => format!("`{f}`"),
        Raw::Bool(b) => format!("`{b}`"),
        Raw::Pairs(_) => "the table".to_string(),
    };
    ConfigError(format!("{origin}: {shown} {why}"))
}
