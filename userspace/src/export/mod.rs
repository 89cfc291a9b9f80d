//! Exporters: OTLP over gRPC and HTTP, console, JSON.

pub mod console;
mod exporter;
pub mod otlp;
mod transport;
mod wire;

pub use exporter::*;
