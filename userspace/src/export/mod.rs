//! The export stage: everything between a finished span (or a built metrics/logs request) and the
//! outside world. `mod.rs` holds only wiring; each job has its file:
//! - [`settings`]: what to export where ([`ExportConfig`], [`Output`]);
//! - [`exporter`]: the public API and the bounded queues ([`Exporter`], [`ExportHandle`]);
//! - [`worker`]: the span worker that drains the span queue in batches, and hands emptied
//!   chunks back ([`spare`]);
//! - [`otlp`] (OTLP with retries for spans, metrics and logs) over [`transport`] (gRPC, HTTP),
//!   [`wire`] (hand-written span protobuf) and [`encoder`]; [`console`] (console and JSON lines);
//! - [`stats`] and [`control`]: counters, shutdown and deadlines.
//!
//! What a span says (attribute names, span names, the Resource) is `semconv`'s; export only
//! sends it. Export must not import any upstream stage but `processors` (the sampler).

pub mod console;
mod control;
mod encoder;
mod exporter;
pub mod otlp;
#[cfg(test)]
mod reference;
mod settings;
mod spare;
mod stats;
mod transport;
mod wire;
mod worker;

pub use control::{FOREVER, sleep_until};
pub use encoder::OtlpEncoder;
pub use exporter::{ExportHandle, Exporter, QueueDepth};
pub use settings::{ExportConfig, Output};
pub use stats::{ExportStats, SignalStats};
/// The OTLP/HTTP transport also carries OpAMP's plain-HTTP messages (`crate::control`).
pub(crate) use transport::Transport;
