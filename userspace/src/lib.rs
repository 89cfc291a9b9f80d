//! ztrace: zero-instrumentation tracing of running processes with eBPF.
//!
//! The modules follow the data path:
//! `capture` (kernel probes, ring buffer) → `decode` → `conntrack` → `protocols` →
//! `assemble` (exchanges) → `link` (causality) → `export` (OTLP, console, JSON).
//! Beside the spans, `metrics` aggregates spans and events into RED/network/self metrics and
//! `logs` turns captured stdout/stderr into log records correlated with the spans.
//! Protocol parsers live in their own crate, `ztrace-protocols` (pure, fuzzable).
//! `pipeline` wires the I/O-free middle together; `daemon` runs it live; `cli` is the front door.

pub mod alloc;
pub mod assemble;
pub mod capture;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod decode;
pub mod export;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod process;
pub mod record;
pub mod telemetry;
