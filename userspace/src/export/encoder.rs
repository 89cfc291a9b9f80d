//! [`OtlpEncoder`]: spans to OTLP request bytes without a running exporter (the throughput
//! benchmark and tests use it).

use std::sync::Arc;

use super::wire;
use crate::model::{ProcessInfo, Span};
use crate::semconv::resource::ProcessTable;

/// Encodes spans as the OTLP request bytes the gRPC exporter would send, without sending them:
/// the last stage of the replay throughput benchmark.
pub struct OtlpEncoder {
    table: ProcessTable,
    buf: Vec<u8>,
    endpoints: wire::WireState,
}

impl OtlpEncoder {
    pub fn new() -> Self {
        Self {
            table: ProcessTable::new(None),
            buf: Vec::new(),
            endpoints: wire::WireState::default(),
        }
    }

    pub fn process(&mut self, info: Arc<ProcessInfo>) {
        self.table.upsert(info);
    }

    /// Encodes one batch exactly as the gRPC exporter does; returns the encoded size in bytes.
    pub fn encode(&mut self, spans: &[Span]) -> usize {
        wire::encode_request_cached(spans, &self.table, &mut self.endpoints, &mut self.buf);
        self.buf.len()
    }
}

impl Default for OtlpEncoder {
    fn default() -> Self {
        Self::new()
    }
}
