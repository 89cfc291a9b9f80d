//! Anomaly detection on the live span stream (before sampling):
//! - [`operation`]: what an operation is (service × route template, db operation, rpc method);
//! - [`ewma`]: one signal's EWMA baseline, Z-score and alarm rules (cold start, hysteresis);
//! - [`detector`]: windows per operation, latency p95 and error rate, start/end events with
//!   exemplar trace ids, and the "anomalous now" answer the `anomaly` tail policy asks.

pub mod detector;
pub mod ewma;
pub mod operation;

pub use detector::{Active, AnomalyEvent, Detector, DetectorStats, SignalKind};
