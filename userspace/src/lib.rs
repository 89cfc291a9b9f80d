//! ztrace: zero-instrumentation tracing of running processes with eBPF.
//!
//! The folders are the stages of the data path, in the order data flows:
//! `app` (command line) → `runtime` (live capture, record, replay, the pipeline, telemetry) →
//! `capture` (kernel probes, ring buffer, /proc) → `decode` → `conntrack` → `assemble`
//! (exchanges, over the parsers of `ztrace-protocols`) → `link` (causality) → `processors`
//! (sampling) → `signals` (metrics, logs) → `export` (queues, OTLP, console, JSON).
//! `config`, `model` and `semconv` are leaves every stage may use. Which stage may import which
//! is checked by `cargo xtask lint` (xtask/src/layers.rs).

pub mod app;
pub mod assemble;
pub mod capture;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod decode;
pub mod export;
pub mod link;
pub mod model;
pub mod peer;
pub mod processors;
pub mod runtime;
pub mod semconv;
pub mod signals;
#[cfg(test)]
mod testkit;

/// Unit tests and their benchmarks (`processors::ottl::bench`) allocate as the shipped binary
/// does (main.rs).
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
