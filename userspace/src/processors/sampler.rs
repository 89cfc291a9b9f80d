//! Head sampling of finished spans, with the OpenTelemetry SDK's samplers (`OTEL_TRACES_SAMPLER`),
//! applied where spans enter the export queue so that a dropped span costs no queue slot.
//!
//! `TraceIdRatioBased` follows the specification's current algorithm (W3C Trace Context level 2
//! randomness): the least-significant 56 bits of the trace id are the randomness `R`, the
//! rejection threshold is `T = (1 - ratio) · 2^56`, and a trace is sampled when `R >= T`. The
//! decision depends on the trace id alone, so every span of a trace — whichever process or
//! protocol it comes from — gets the same one, and a higher ratio keeps a superset of traces.
//!
//! `ParentBased`: a trace continued from an incoming `traceparent` follows that header's
//! `sampled` flag (the specification's defaults: remote parent sampled → keep, not sampled →
//! drop), for every span of the trace — the linker carries the flag from the trace's remote root
//! to all its descendants. Traces that start here follow the root sampler on the trace id, so
//! every span of one trace gets the same decision.

use crate::config::{RootSampler, Sampler};
use crate::model::{Span, TraceId};

/// 2^56, the range of the randomness value.
const RANDOMNESS_RANGE: f64 = (1u64 << 56) as f64;

/// The 56 random bits of a trace id (its last seven bytes, big-endian).
fn randomness(trace_id: &TraceId) -> u64 {
    let b = &trace_id.0;
    u64::from_be_bytes([0, b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

/// `TraceIdRatioBased(ratio)` on `trace_id`.
pub fn ratio_sampled(ratio: f64, trace_id: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let threshold = ((1.0 - ratio) * RANDOMNESS_RANGE).round() as u64;
    randomness(trace_id) >= threshold
}

fn root_sampled(root: RootSampler, trace_id: &TraceId) -> bool {
    match root {
        RootSampler::AlwaysOn => true,
        RootSampler::AlwaysOff => false,
        RootSampler::TraceIdRatio(r) => ratio_sampled(r, trace_id),
    }
}

/// Whether `span` is exported.
pub fn sampled(sampler: &Sampler, span: &Span) -> bool {
    match *sampler {
        Sampler::AlwaysOn => true,
        Sampler::AlwaysOff => false,
        Sampler::TraceIdRatio(r) => ratio_sampled(r, &span.trace_id),
        Sampler::ParentBased(root) => span
            .remote_sampled
            .unwrap_or_else(|| root_sampled(root, &span.trace_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::server_span;

    fn id(n: u64) -> TraceId {
        // Spread the counter over the random bits.
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&x.to_be_bytes());
        b[0] = 1;
        TraceId(b)
    }

    #[test]
    fn ratio_edges() {
        let max = TraceId([0xff; 16]);
        let min = TraceId([0; 16]);
        assert!(ratio_sampled(1.0, &min));
        assert!(!ratio_sampled(0.0, &max));
        // R = 2^56 - 1 is above any threshold below 1; R = 0 only passes ratio 1.
        assert!(ratio_sampled(1e-9, &max));
        assert!(!ratio_sampled(0.999_999, &min));
        // Only the low 56 bits count.
        let mut high = [0u8; 16];
        high[..9].fill(0xff);
        assert_eq!(randomness(&TraceId(high)), 0);
        // Ratio 0.5: T = 2^55.
        let mut half = [0u8; 16];
        half[9] = 0x80;
        assert!(ratio_sampled(0.5, &TraceId(half)));
        half[9] = 0x7f;
        half[10..].fill(0xff);
        assert!(!ratio_sampled(0.5, &TraceId(half)));
    }

    #[test]
    fn ratio_is_roughly_right_and_monotonic() {
        let n = 20_000u64;
        for ratio in [0.1, 0.25, 0.5, 0.9] {
            let kept = (0..n).filter(|&i| ratio_sampled(ratio, &id(i))).count() as f64;
            let got = kept / n as f64;
            assert!((got - ratio).abs() < 0.02, "ratio {ratio}: {got}");
        }
        for i in 0..2000 {
            if ratio_sampled(0.2, &id(i)) {
                assert!(ratio_sampled(0.3, &id(i)), "monotonicity broken for {i}");
            }
        }
    }

    #[test]
    fn samplers_decide_per_trace() {
        let mut root = server_span();
        root.parent_span_id = None;
        root.parent_is_remote = false;
        root.remote_sampled = None;
        let mut child = server_span();
        child.parent_is_remote = false;
        child.remote_sampled = None;
        assert!(sampled(&Sampler::AlwaysOn, &root));
        assert!(!sampled(&Sampler::AlwaysOff, &child));
        assert!(!sampled(
            &Sampler::ParentBased(RootSampler::AlwaysOff),
            &root
        ));
        for i in 0..500 {
            let tid = id(i);
            let decisions: Vec<bool> = [&root, &child]
                .iter()
                .map(|s| {
                    let mut s = (*s).clone();
                    s.trace_id = tid;
                    sampled(&Sampler::ParentBased(RootSampler::TraceIdRatio(0.3)), &s)
                })
                .collect();
            assert!(
                decisions.iter().all(|d| *d == decisions[0]),
                "spans of one trace disagree"
            );
        }
    }

    #[test]
    fn parent_based_follows_the_incoming_sampled_flag() {
        // Every span of a trace continued from a traceparent carries its flag (the linker
        // propagates it from the trace's remote root), whatever the root sampler says.
        let mut span = server_span();
        for root in [
            RootSampler::AlwaysOn,
            RootSampler::AlwaysOff,
            RootSampler::TraceIdRatio(0.5),
        ] {
            span.remote_sampled = Some(true);
            assert!(sampled(&Sampler::ParentBased(root), &span));
            span.remote_sampled = Some(false);
            assert!(!sampled(&Sampler::ParentBased(root), &span));
        }
        // Non-parent-based samplers ignore it.
        assert!(sampled(&Sampler::AlwaysOn, &span));
    }
}
