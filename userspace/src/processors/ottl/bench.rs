//! Cost per span of a five-statement program (docs/benchmarks.md), run on demand:
//! `cargo +1.95.0 test --release -p ztrace --lib ottl::bench -- --ignored --nocapture`.
//! Batches of fresh server spans (cloned before the clock starts) go through
//! `Program::spans`; the median of several rounds is printed, with the empty program's cost.

use std::time::Instant;

use super::Program;
use super::known_tests::rules;
use crate::testkit::server_span;

/// The benchmarked program: a typical mix of writes, a delete, conditions on attributes and a
/// regular expression.
pub const FIVE: [&str; 5] = [
    r#"set(attributes["deployment.environment"], "prod")"#,
    r#"delete_key(attributes, "user_agent.original")"#,
    r#"set(attributes["slow"], true) where duration > 500000000"#,
    r#"replace_pattern(attributes["url.path"], "^/api/v[0-9]+/", "/api/")"#,
    r#"set(name, "health") where attributes["url.path"] == "/healthz""#,
];

/// Median ns per span over `rounds` rounds of `batch` spans.
/// `generic`: without the fast path (`fast.rs`), as before it.
fn ns_per_span(statements: &[&str], rounds: usize, batch: usize, generic: bool) -> f64 {
    super::fast::OFF.with(|o| o.set(generic));
    let p = Program::compile(&rules(statements));
    super::fast::OFF.with(|o| o.set(false));
    let mut p = p.unwrap();
    let template = server_span();
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut spans = vec![template.clone(); batch];
        let t = Instant::now();
        p.spans(&mut spans, &|_| &[]);
        samples.push(t.elapsed().as_nanos() as f64 / batch as f64);
        std::hint::black_box(&spans);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn five_statements_per_span() {
    // `ZTRACE_OTTL_BENCH_BATCH` changes the batch (a batch that fits the caches shows the
    // evaluation without the cost of reaching each span's memory).
    let batch = std::env::var("ZTRACE_OTTL_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(4096);
    let rounds = 41;
    // Under callgrind (`--toggle-collect='*ottl*Program*spans*'`): only the five statements,
    // 10 rounds, so instructions / 40960 is the count per span.
    if std::env::var_os("ZTRACE_OTTL_BENCH_CALLGRIND").is_some() {
        ns_per_span(&FIVE, 10, batch, false);
        return;
    }
    // Warm up (page faults, caches).
    ns_per_span(&FIVE, 3, batch, false);
    println!("ottl bench: {rounds} rounds of {batch} server spans, median ns per span");
    println!("  (fast path / generic path, alternating in the same binary)");
    let both = |s: &[&str]| {
        let fast = ns_per_span(s, rounds, batch, false);
        let generic = ns_per_span(s, rounds, batch, true);
        format!("{fast:7.1} / {generic:7.1}")
    };
    println!("  no statements: {}", both(&[]));
    println!("  five statements: {}", both(&FIVE));
    for s in FIVE {
        println!("  {}  {s}", both(&[s]));
    }
}
