//! Causality: parents and traces.

pub mod crosshost;
mod linker;

pub use linker::*;
