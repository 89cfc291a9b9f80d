//! Export configuration: flags, TOML file, OTEL_* variables.
//!
//! `defs` names every setting, `file` and `env` read the sources, `parse` types one value,
//! `resolve` applies the precedence, `error` says what was wrong and where.
//!
//! A new setting: its key in `defs.rs` (`GLOBAL_SETTINGS` with its `OTEL_*` variable,
//! `SIGNAL_SETTINGS` for a per-signal OTLP setting, or `NO_ENV_KEYS`), its flag in `FLAGS`
//! (string flags) or `CliFlags` (typed flags), its field in `Config` (or `Target`, `Peers`), and its
//! resolution in `resolve.rs`. The command line only declares the flag and hands it over; the
//! stage that uses the setting reads it from `Config`.

mod defs;
mod env;
mod error;
mod file;
mod opamp;
mod parse;
mod resolve;
mod rules;
mod tail;

pub use defs::*;
pub use env::process_env;
pub use error::*;
pub use file::*;
pub use opamp::*;
pub use parse::{parse_duration, parse_pid_spec, parse_size};
pub use resolve::*;
pub use rules::*;
pub use tail::*;
