//! Runs the data path: live capture, the record sink, replay, the I/O-free pipeline and the
//! daemon's own telemetry.

pub mod live;
pub mod pipeline;
pub mod record;
pub mod telemetry;
