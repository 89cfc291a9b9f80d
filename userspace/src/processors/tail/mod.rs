//! Tail sampling: keep or drop each local trace after its outcome is known.
//! - [`buffer`]: spans held by trace until the trace is complete (bounded, counted);
//! - [`policy`]: the Collector-vocabulary policies and one policy's verdict;
//! - [`decide`]: the sampler — the policy list's verdict, applied to every span of the trace;
//! - [`threshold`]: the `th` (W3C `tracestate` `ot` entry) kept spans carry;
//! - [`vote`]: keep-if-any-keeps with the agents on other hosts that share a trace.

pub mod buffer;
pub mod decide;
pub mod policy;
pub mod threshold;
pub mod vote;

pub use decide::{TailSampler, TailStats};
pub use policy::{AnomalyView, NoAnomalies};
