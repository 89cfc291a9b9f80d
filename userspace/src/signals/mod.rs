//! Signals beside spans: metrics and logs, and what the processors' decisions say (anomaly
//! records, tail sampling self-metrics).

pub mod anomaly;
pub mod logs;
pub mod metrics;
