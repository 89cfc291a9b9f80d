//! Export configuration: flags, TOML file, OTEL_* variables.

mod resolve;

pub use resolve::*;
