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
fn ns_per_span(statements: &[&str], rounds: usize, batch: usize) -> f64 {
    let mut p = Program::compile(&rules(statements)).unwrap();
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
        ns_per_span(&FIVE, 10, batch);
        return;
    }
    // Warm up (page faults, caches).
    ns_per_span(&FIVE, 3, batch);
    let empty = ns_per_span(&[], rounds, batch);
    let five = ns_per_span(&FIVE, rounds, batch);
    let each: Vec<f64> = FIVE
        .iter()
        .map(|s| ns_per_span(&[s], rounds, batch))
        .collect();
    println!("ottl bench: {rounds} rounds of {batch} server spans, median ns per span");
    println!("  no statements: {empty:.1}");
    println!("  five statements: {five:.1}");
    for (s, ns) in FIVE.iter().zip(each) {
        println!("  {ns:7.1}  {s}");
    }
}
