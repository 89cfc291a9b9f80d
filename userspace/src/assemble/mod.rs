//! Request ↔ response exchanges from per-connection byte streams.

mod assembler;

pub use assembler::*;
