//! Processors: decisions over finished spans (sampling today).

pub mod sampler;
