//! Request ↔ response exchanges from per-connection byte streams: the stage between connection
//! tracking (which keeps each socket's streams) and the linker (which makes spans). It owns
//! protocol detection state and exchange pairing; the parsers themselves live in the
//! `ztrace-protocols` crate, and this stage must not grow protocol-specific code.

mod assembler;
mod budget;
mod redact;

pub use assembler::*;
pub use budget::Budget;
pub use redact::{Redaction, generic_db_error};
