//! Causality: parents and traces. `linker` holds the span store's owner and the rules' docs;
//! each rule family has a file of its own.

mod content;
mod context;
pub mod crosshost;
mod held;
mod linker;
mod parent;
mod settle;
mod stamps;
mod stats;
#[cfg(test)]
mod testutil;
mod thread;
mod traceparent;
mod tracestate;

pub use content::content_tokens;
pub use context::{Cause, Io};
pub use held::{Handle, Parent, SeqKey};
pub use linker::{Linker, Start};
pub use settle::LINK_GRACE_NS;
pub use stamps::MAX_STAMP_ADJUST_NS;
pub use stats::LinkStats;
pub use traceparent::{Traceparent, parse_trace_context, parse_traceparent};
pub use tracestate::parse_tracestate;
