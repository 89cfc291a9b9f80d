//! Signals beside spans: metrics and logs.

pub mod logs;
pub mod metrics;
