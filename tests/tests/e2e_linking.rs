//! The ground-truth linking evaluation at CI scale, as root: every request shape of
//! tests/src/topology.rs — the sequential one (nginx → Node.js → tokio/hyper → Python (thread per
//! request, shared Redis pool) → Redis) and the concurrent fan-out ones (aiohttp `gather`,
//! Node.js `Promise.all`, a ThreadPoolExecutor hand-off, Java `sendAsync`, Go goroutines, and a
//! token-free `gather`) — traced by one ztrace, each driven by 16 concurrent keep-alive clients,
//! every end-user request with a unique id. Asserts the targets on the score (tests/src/eval.rs):
//! precision ≥ 0.99 on every edge type (the token-free one included), recall ≥ 0.95 and complete
//! traces ≥ 0.95 per shape whose calls carry a token, no well-formedness violation, no
//! unidentified or duplicate span. The table is printed either way, and is the failure message.
//!
//! `cargo xtask eval` runs the same topology at benchmark scale and only prints the numbers.

use anyhow::{Result, ensure};
use ztrace_e2e::{
    eval::Shape,
    harness::privileged_or_skip,
    topology::{Config, run},
};

/// Requests per shape and clients: about a minute on a 2-core VM, most of it start-up (the JVM
/// compiling the Java service, `go build`) and the thread-pool shape (~90 requests/s).
const CI: Config = Config {
    requests: 320,
    clients: 16,
    shapes: &Shape::ALL,
};

#[test]
fn linking_meets_the_targets_on_the_ground_truth_topology() -> Result<()> {
    if !privileged_or_skip("linking_meets_the_targets_on_the_ground_truth_topology") {
        return Ok(());
    }
    let run = run(CI)?;
    let score = run.score();
    let report = run.report(&score);
    ensure!(
        run.failed == 0,
        "{} end-user requests failed: the topology itself is broken\n{report}",
        run.failed
    );
    let misses = score.target_failures();
    ensure!(
        misses.is_empty(),
        "linking misses its targets:\n- {}\n\n{report}",
        misses.join("\n- ")
    );
    eprintln!("{report}");
    Ok(())
}
