//! Processors: decisions over finished spans — head sampling, tail sampling and anomaly detection.

pub mod anomaly;
pub mod chain;
pub mod sampler;
pub mod tail;
