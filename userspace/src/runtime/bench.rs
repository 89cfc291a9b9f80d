//! `ztrace replay --throughput`: the userspace path's speed, measured on a record file held in
//! memory. It owns the benchmark loop only; it must not export anything or touch the kernel.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::runtime::{
    pipeline::Pipeline,
    record::{self, Frame},
};

/// Spans per encoded request: the exporter's default.
const EXPORT_BATCH: usize = crate::config::DEFAULT_SPAN_BATCHING.max_batch;

/// What `ztrace replay --throughput` measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub records: u64,
    pub spans: u64,
    pub otlp_bytes: u64,
    pub seconds: f64,
    pub passes: u32,
}

/// Replay benchmark: the whole userspace path — decode, connection tracking, parsing, assembly,
/// linking and OTLP encoding — over a record file held in memory, on the calling thread (one core),
/// repeated `passes` times. Nothing is sent anywhere.
pub fn replay_throughput(path: &std::path::Path, passes: u32) -> Result<Throughput> {
    let mut reader =
        record::Reader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut frames = Vec::new();
    while let Some(frame) = reader.next_frame()? {
        frames.push(frame);
    }
    let mono_to_unix = reader.header.mono_to_unix_ns as i128;
    let start = std::time::Instant::now();
    let (mut records, mut span_count, mut bytes) = (0u64, 0u64, 0u64);
    // Kept across passes, as the daemon keeps its own: only the first pass grows them.
    let (mut spans, mut changes) = (Vec::new(), Vec::new());
    for pass in 0..passes {
        let mut pipeline = Pipeline::new(mono_to_unix, Some(pass as u64));
        let mut encoder = crate::export::OtlpEncoder::new();
        for frame in &frames {
            if let Frame::Process(info) = frame {
                encoder.process(Arc::new((**info).clone()));
            }
        }
        // In batches of at most the exporter's default size, as the daemon sends them: the
        // spans still held at a pass's end (a third of a second's worth) are not one request.
        let mut flush = |spans: &mut Vec<crate::model::Span>| {
            for batch in spans.chunks(EXPORT_BATCH) {
                span_count += batch.len() as u64;
                bytes += encoder.encode(batch) as u64;
            }
            spans.clear();
        };
        for frame in &frames {
            if let Frame::Record(raw) = frame {
                pipeline.on_record(raw, &mut changes);
                changes.clear();
                records += 1;
                if records.is_multiple_of(512) {
                    pipeline.poll(0, &mut spans);
                    flush(&mut spans);
                }
            }
        }
        pipeline.drain(0, &mut spans);
        flush(&mut spans);
    }
    Ok(Throughput {
        records,
        spans: span_count,
        otlp_bytes: bytes,
        seconds: start.elapsed().as_secs_f64(),
        passes,
    })
}
