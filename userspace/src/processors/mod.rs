//! Processors: decisions over finished spans — head sampling, tail sampling, anomaly detection
//! and rules (OTTL transforms and filters).

pub mod anomaly;
pub mod chain;
pub mod ottl;
pub mod sampler;
pub mod tail;
