//! Causality: parents and traces.

mod linker;

pub use linker::*;
