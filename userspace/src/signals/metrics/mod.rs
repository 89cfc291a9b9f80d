//! Metrics: RED, network and self metrics.

mod aggregate;
pub mod health;
pub mod net;
pub mod otlp;
pub mod red;
pub mod series;

pub use aggregate::*;
