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
//!
//! A kept span says its probability (OpenTelemetry probability sampling, `th` in the
//! `tracestate`; [`Sampling`]). The head sampler runs after tail sampling, on the same
//! randomness, so it is a further consistent stage: a span a ratio decision keeps carries the
//! larger of the threshold it has and the ratio's (a later stage raises a threshold, never lowers
//! it); one kept with an unknown probability stays unknown; `always_on` (and a ratio of 1)
//! changes nothing.
//!
//! The upstream's probability: a trace continued from an incoming `traceparent` whose
//! `tracestate` says `ot=th:X` (and whose `sampled` flag agrees with it: randomness at least X,
//! else X is not believed) was kept upstream at threshold X. A span following that upstream's
//! flag carries X, raised by what an earlier stage said; a ratio keep carries the larger of X
//! and the ratio's threshold. Without a `th` from upstream the probability is not known here,
//! so a span following the flag carries none and whatever an earlier stage said becomes unknown
//! — the specification's rule for a parent-based sampler without a parent threshold.
//!
//! Randomness: the upstream's explicit `rv` when its `tracestate` has one (the specification:
//! it replaces the trace id's), else the trace id's last 56 bits ([`Span::randomness`]); tail
//! sampling's probabilistic rule decides on the same.

use super::tail::threshold::threshold;
use crate::config::{RootSampler, Sampler};
use crate::model::{Sampling, Span};

/// `TraceIdRatioBased(ratio)` on a trace of this `randomness` ([`Span::randomness`]): kept when
/// it is at least the rejection threshold of `ratio` (the one a kept span carries as `th`; none
/// passes ratio 0, all ratio 1).
pub fn ratio_sampled(ratio: f64, randomness: u64) -> bool {
    randomness >= threshold(ratio)
}

/// What a root sampler decides on a trace: keep (with the threshold of a ratio below 1) or not.
enum Decision {
    Drop,
    Keep,
    KeepAt(u64),
}

fn ratio(r: f64, span: &Span) -> Decision {
    if r >= 1.0 {
        Decision::Keep
    } else if ratio_sampled(r, span.randomness()) {
        Decision::KeepAt(threshold(r))
    } else {
        Decision::Drop
    }
}

fn root(root: RootSampler, span: &Span) -> Decision {
    match root {
        RootSampler::AlwaysOn => Decision::Keep,
        RootSampler::AlwaysOff => Decision::Drop,
        RootSampler::TraceIdRatio(r) => ratio(r, span),
    }
}

/// Whether `span` is exported; a kept span's [`Sampling`] then says what this sampler did.
pub fn sample(sampler: &Sampler, span: &mut Span) -> bool {
    let decision = match *sampler {
        Sampler::AlwaysOn => Decision::Keep,
        Sampler::AlwaysOff => Decision::Drop,
        Sampler::TraceIdRatio(r) => match ratio(r, span) {
            // Kept here and upstream: the larger threshold (the upstream's flag aside, a ratio
            // decides alone, but the trace around the span was kept at the upstream's).
            Decision::KeepAt(t) => Decision::KeepAt(span.upstream_th().map_or(t, |x| x.max(t))),
            Decision::Keep => span.upstream_th().map_or(Decision::Keep, Decision::KeepAt),
            Decision::Drop => Decision::Drop,
        },
        Sampler::ParentBased(r) => match span.remote_sampled {
            Some(upstream) => {
                if upstream {
                    span.sampling = match span.upstream_th() {
                        Some(x) => span.sampling.raised(x),
                        None => Sampling::Unknown,
                    };
                }
                return upstream;
            }
            None => root(r, span),
        },
    };
    match decision {
        Decision::Drop => false,
        Decision::Keep => true,
        Decision::KeepAt(t) => {
            span.sampling = span.sampling.raised(t);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TraceId;
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
        assert!(ratio_sampled(1.0, min.randomness()));
        assert!(!ratio_sampled(0.0, max.randomness()));
        // R = 2^56 - 1 is above any threshold below 1; R = 0 only passes ratio 1.
        assert!(ratio_sampled(1e-9, max.randomness()));
        assert!(!ratio_sampled(0.99, min.randomness()));
        // Only the low 56 bits count.
        let mut high = [0u8; 16];
        high[..9].fill(0xff);
        assert_eq!(TraceId(high).randomness(), 0);
        // Ratio 0.5: T = 2^55.
        let mut half = [0u8; 16];
        half[9] = 0x80;
        assert!(ratio_sampled(0.5, TraceId(half).randomness()));
        half[9] = 0x7f;
        half[10..].fill(0xff);
        assert!(!ratio_sampled(0.5, TraceId(half).randomness()));
    }

    #[test]
    fn ratio_is_roughly_right_and_monotonic() {
        let n = 20_000u64;
        for ratio in [0.1, 0.25, 0.5, 0.9] {
            let kept = (0..n)
                .filter(|&i| ratio_sampled(ratio, id(i).randomness()))
                .count() as f64;
            let got = kept / n as f64;
            assert!((got - ratio).abs() < 0.02, "ratio {ratio}: {got}");
        }
        for i in 0..2000 {
            if ratio_sampled(0.2, id(i).randomness()) {
                assert!(
                    ratio_sampled(0.3, id(i).randomness()),
                    "monotonicity broken for {i}"
                );
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
        assert!(sample(&Sampler::AlwaysOn, &mut root.clone()));
        assert!(!sample(&Sampler::AlwaysOff, &mut child.clone()));
        assert!(!sample(
            &Sampler::ParentBased(RootSampler::AlwaysOff),
            &mut root.clone()
        ));
        for i in 0..500 {
            let tid = id(i);
            let decisions: Vec<bool> = [&root, &child]
                .iter()
                .map(|s| {
                    let mut s = (*s).clone();
                    s.trace_id = tid;
                    sample(
                        &Sampler::ParentBased(RootSampler::TraceIdRatio(0.3)),
                        &mut s,
                    )
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
            assert!(sample(&Sampler::ParentBased(root), &mut span.clone()));
            span.remote_sampled = Some(false);
            assert!(!sample(&Sampler::ParentBased(root), &mut span.clone()));
        }
        // Non-parent-based samplers ignore it.
        assert!(sample(&Sampler::AlwaysOn, &mut span));
    }

    /// A trace id whose randomness is `r`.
    fn with_randomness(r: u64) -> TraceId {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&r.to_be_bytes());
        b[8] = 0x42; // not part of the randomness
        TraceId(b)
    }

    /// A span of a trace that starts here, with randomness `r`, as a tail stage left it.
    fn local(r: u64, sampling: Sampling) -> Span {
        let mut s = server_span();
        s.remote_sampled = None;
        s.trace_id = with_randomness(r);
        s.sampling = sampling;
        s
    }

    /// The sampler's answer and the span's sampling after it.
    fn run(sampler: Sampler, mut span: Span) -> (bool, Sampling) {
        let keep = sample(&sampler, &mut span);
        (keep, span.sampling)
    }

    const HIGH: u64 = (1 << 56) - 1;

    #[test]
    fn a_ratio_keep_carries_the_ratio_threshold_exactly_where_it_decides() {
        for r in [0.5, 0.25, 0.1, 0.01, 0.3] {
            let t = threshold(r);
            for sampler in [
                Sampler::TraceIdRatio(r),
                Sampler::ParentBased(RootSampler::TraceIdRatio(r)),
            ] {
                // Kept from R = T on, with th = T; dropped just below, untouched.
                assert_eq!(
                    run(sampler, local(t, Sampling::Unsampled)),
                    (true, Sampling::Threshold(t)),
                    "{r}"
                );
                assert_eq!(
                    run(sampler, local(t - 1, Sampling::Unsampled)),
                    (false, Sampling::Unsampled),
                    "{r}"
                );
            }
        }
        // The exported text is the tail sampler's encoding: 10% is `e666` (4 digits).
        let (_, s) = run(Sampler::TraceIdRatio(0.1), local(HIGH, Sampling::Unsampled));
        let th = s.th().map(super::super::tail::threshold::tracestate);
        assert_eq!(th.as_deref(), Some("ot=th:e666"));
    }

    #[test]
    fn a_tail_keep_with_probability_one_takes_the_head_threshold() {
        // Kept by a deterministic policy (th:0), then head-sampled at 10%: 10%, not 100%.
        let t = threshold(0.1);
        assert_eq!(
            run(
                Sampler::TraceIdRatio(0.1),
                local(HIGH, Sampling::Threshold(0))
            ),
            (true, Sampling::Threshold(t))
        );
        assert_eq!(
            run(
                Sampler::TraceIdRatio(0.1),
                local(t - 1, Sampling::Threshold(0))
            ),
            (false, Sampling::Threshold(0))
        );
    }

    #[test]
    fn a_tail_probabilistic_keep_and_a_head_ratio_compose_by_the_larger_threshold() {
        let tail = threshold(0.25);
        // A smaller head ratio (larger threshold) wins…
        let head = threshold(0.1);
        assert_eq!(
            run(
                Sampler::TraceIdRatio(0.1),
                local(head, Sampling::Threshold(tail))
            ),
            (true, Sampling::Threshold(head))
        );
        // …and drops what the tail kept below it.
        assert!(
            !run(
                Sampler::TraceIdRatio(0.1),
                local(tail, Sampling::Threshold(tail))
            )
            .0
        );
        // A larger head ratio keeps every tail-kept trace (R >= tail > head) and lowers nothing.
        assert_eq!(
            run(
                Sampler::TraceIdRatio(0.5),
                local(tail, Sampling::Threshold(tail))
            ),
            (true, Sampling::Threshold(tail))
        );
        assert_eq!(
            run(
                Sampler::ParentBased(RootSampler::TraceIdRatio(0.5)),
                local(HIGH, Sampling::Threshold(tail))
            ),
            (true, Sampling::Threshold(tail))
        );
    }

    #[test]
    fn an_unknown_probability_stays_unknown() {
        // Kept by rate limiting alone: the head ratio still decides, but cannot make the
        // probability known.
        let t = threshold(0.1);
        assert_eq!(
            run(Sampler::TraceIdRatio(0.1), local(HIGH, Sampling::Unknown)),
            (true, Sampling::Unknown)
        );
        assert!(!run(Sampler::TraceIdRatio(0.1), local(t - 1, Sampling::Unknown)).0);
        let (_, s) = run(Sampler::TraceIdRatio(0.1), local(HIGH, Sampling::Unknown));
        assert_eq!(s.th(), None);
    }

    #[test]
    fn always_on_and_ratio_one_add_nothing() {
        for sampling in [
            Sampling::Unsampled,
            Sampling::Threshold(0),
            Sampling::Threshold(threshold(0.3)),
            Sampling::Unknown,
        ] {
            for sampler in [
                Sampler::AlwaysOn,
                Sampler::TraceIdRatio(1.0),
                Sampler::ParentBased(RootSampler::AlwaysOn),
                Sampler::ParentBased(RootSampler::TraceIdRatio(1.0)),
            ] {
                assert_eq!(
                    run(sampler, local(0, sampling)),
                    (true, sampling),
                    "{sampler:?}"
                );
            }
        }
        assert_eq!(
            run(Sampler::AlwaysOff, local(HIGH, Sampling::Threshold(0))),
            (false, Sampling::Threshold(0))
        );
    }

    #[test]
    fn a_trace_continued_from_upstream_follows_its_flag_and_gets_no_threshold() {
        // Whatever the root ratio and the randomness: the upstream decided, at a probability
        // not known here, so nothing is invented and an earlier threshold no longer holds.
        for sampling in [
            Sampling::Unsampled,
            Sampling::Threshold(0),
            Sampling::Threshold(threshold(0.25)),
            Sampling::Unknown,
        ] {
            for r in [0, HIGH] {
                let mut span = local(r, sampling);
                span.remote_sampled = Some(true);
                let sampler = Sampler::ParentBased(RootSampler::TraceIdRatio(0.1));
                let (keep, after) = run(sampler, span.clone());
                assert!(keep);
                assert_eq!(after, Sampling::Unknown);
                assert_eq!(after.th(), None);
                span.remote_sampled = Some(false);
                assert!(!run(sampler, span).0);
            }
        }
        // A non-parent-based ratio ignores the flag and says its own threshold.
        let mut span = local(HIGH, Sampling::Unsampled);
        span.remote_sampled = Some(true);
        assert_eq!(
            run(Sampler::TraceIdRatio(0.5), span),
            (true, Sampling::Threshold(threshold(0.5)))
        );
    }

    /// A span of a trace continued from a sampled upstream whose `tracestate` is `state` (its
    /// `ot` entry's `th` and `rv` read here, as the linker's parser does).
    fn continued(r: u64, state: &str, sampling: Sampling) -> Span {
        let mut s = local(r, sampling);
        s.remote_sampled = Some(true);
        let sub = |key: &str| {
            let ot = state.split(',').find_map(|m| m.strip_prefix("ot="))?;
            let v = ot.split(';').find_map(|kv| kv.strip_prefix(key))?;
            Some(u64::from_str_radix(&format!("{v:0<14}"), 16).unwrap())
        };
        s.tracestate = Some(crate::testkit::tracestate(state, sub("th:"), sub("rv:")));
        s
    }

    #[test]
    fn a_parent_based_sampler_passes_the_upstream_threshold_on() {
        let x = 1u64 << 55; // th:8, 50%
        let sampler = Sampler::ParentBased(RootSampler::AlwaysOn);
        // Nothing before: the upstream's threshold.
        assert_eq!(
            run(sampler, continued(HIGH, "ot=th:8,v=1", Sampling::Unsampled)),
            (true, Sampling::Threshold(x))
        );
        // After a tail keep: the larger of the two; unknown stays unknown.
        assert_eq!(
            run(sampler, continued(HIGH, "ot=th:8", Sampling::Threshold(0))),
            (true, Sampling::Threshold(x))
        );
        let t10 = threshold(0.1);
        assert_eq!(
            run(
                sampler,
                continued(HIGH, "ot=th:8", Sampling::Threshold(t10))
            ),
            (true, Sampling::Threshold(t10))
        );
        assert_eq!(
            run(sampler, continued(HIGH, "ot=th:8", Sampling::Unknown)),
            (true, Sampling::Unknown)
        );
        // No `th` upstream: unknown, as before.
        assert_eq!(
            run(sampler, continued(HIGH, "v=1", Sampling::Unsampled)),
            (true, Sampling::Unknown)
        );
        // A `th` the randomness does not pass contradicts the `sampled` flag: not believed.
        assert_eq!(
            run(sampler, continued(x - 1, "ot=th:8", Sampling::Unsampled)),
            (true, Sampling::Unknown)
        );
        // A not-sampled upstream is dropped whatever its tracestate says.
        let mut dropped = continued(HIGH, "ot=th:8", Sampling::Unsampled);
        dropped.remote_sampled = Some(false);
        assert!(!run(sampler, dropped).0);
    }

    #[test]
    fn the_upstream_rv_is_the_randomness_of_every_ratio_decision() {
        let t = threshold(0.5);
        // The trace id says keep (R = HIGH), the upstream's rv says drop: rv wins, both ways.
        let low_rv = continued(HIGH, "ot=rv:10000000000000", Sampling::Unsampled);
        assert_eq!(low_rv.randomness(), 1 << 52);
        assert!(!run(Sampler::TraceIdRatio(0.5), low_rv.clone()).0);
        let high_rv = continued(0, "ot=rv:ffffffffffffff", Sampling::Unsampled);
        assert_eq!(
            run(Sampler::TraceIdRatio(0.5), high_rv.clone()),
            (true, Sampling::Threshold(t))
        );
        // The upstream's th is checked against its rv: th:8 with rv below it is not believed.
        let mut s = continued(HIGH, "ot=th:8;rv:10000000000000", Sampling::Unsampled);
        assert_eq!(s.upstream_th(), None);
        s.tracestate = continued(0, "ot=th:8;rv:80000000000000", Sampling::Unsampled).tracestate;
        assert_eq!(s.upstream_th(), Some(1 << 55));
    }

    #[test]
    fn a_ratio_sampler_takes_the_larger_of_its_threshold_and_the_upstream_s() {
        let (t25, t75) = (threshold(0.25), threshold(0.75));
        // Upstream 50% (th:8), ratio 25%: the ratio's, larger.
        assert_eq!(
            run(
                Sampler::TraceIdRatio(0.25),
                continued(HIGH, "ot=th:8", Sampling::Unsampled)
            ),
            (true, Sampling::Threshold(t25))
        );
        // Ratio 75%: the upstream's 50%; ratio 1 too.
        for r in [0.75, 1.0] {
            assert_eq!(
                run(
                    Sampler::TraceIdRatio(r),
                    continued(HIGH, "ot=th:8", Sampling::Unsampled)
                ),
                (true, Sampling::Threshold(1 << 55)),
                "{r}"
            );
        }
        // The ratio still decides alone: a trace between the two thresholds is kept at 75%
        // only when its upstream is not taken into account — here it is, so it says 50%.
        assert!(t75 < (1 << 55));
        // No upstream `th`: the ratio's own, as before.
        assert_eq!(
            run(
                Sampler::TraceIdRatio(0.25),
                continued(HIGH, "v=1", Sampling::Unsampled)
            ),
            (true, Sampling::Threshold(t25))
        );
    }
}
