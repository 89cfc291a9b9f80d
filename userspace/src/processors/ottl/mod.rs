//! Rules: OTTL (the OpenTelemetry Transformation Language) statements and conditions over spans,
//! metric data points and log records, configured like the Collector's `transform` and `filter`
//! processors (`config::Rules`).
//!
//! `grammar` parses (with `winnow`: a parser-combinator library already in ztrace's dependency
//! tree through `toml`, so it adds no crate; it gives byte offsets for error columns and compiles
//! fast, where pest and lalrpop need a code generator and chumsky a heavier build), `compile`
//! resolves paths and functions for a context once at start, `eval` runs the compiled form,
//! `span` and `pdata` are the contexts, `program` the whole rule set and its error modes.
//! `defaults` is the built-in redaction written as rules, for the user to read and extend.
//! `fast` is the span rules compiled a second time, for the common forms only: flat operations
//! over the typed span, taken when a program has that form (the generic path otherwise, and for
//! the spans it cannot answer).
//!
//! What keeps a span cheap (docs/benchmarks.md, "Rules (OTTL)"): attribute keys are resolved
//! when compiled, and the well-known ones (`url.path`, `http.request.method`, `server.address`
//! …) are read straight from an HTTP span's typed exchange (`known`), not by deriving all its
//! attributes; keys and string literals are shared with what rules write (`key::intern`), so
//! a write allocates neither; patterns anchored at the start are prefiltered by their literal
//! prefix (`pattern`); the evaluator is generic over the record, so each context gets its own
//! inlined copy; span programs of the common forms run on the fast path (`fast`: keys numbered
//! per program, a read of a string attribute builds no value, the edit overlay is allocated
//! once per changed span, an empty group costs nothing).
//!
//! Interface for remote configuration: [`Program::compile`] turns the `rules` of a resolved
//! `config::Config` into a program (or a [`RuleError`] naming the statement and column), and
//! `processors::chain::Processors::set_rules` swaps the program the daemon runs, between two
//! batches, without a restart.
//!
//! It must not do I/O or know how records are sent.

mod compile;
pub mod defaults;
mod eval;
mod fast;
mod grammar;
mod key;
mod known;
mod pattern;
mod pdata;
mod program;
mod span;
mod value;

pub use compile::{CONVERTERS, EDITORS};
pub use program::{Program, RuleError, RuleStats};

#[cfg(test)]
mod bench;
#[cfg(test)]
mod known_tests;
#[cfg(test)]
mod tests;
