//! The sampling probability a kept span carries, the standard way: the OpenTelemetry
//! probability-sampling `th` key of the W3C `tracestate` `ot` entry. `th` is the rejection
//! threshold `T = (1 - p) · 2^56` in up to 14 hex digits with trailing zeros removed (`0` for
//! p = 1); a backend re-weights each kept span by `1/p = 2^56 / (2^56 - T)`. It is the same
//! randomness/threshold arithmetic the `traceidratio` head sampler uses (it decides with
//! [`threshold`] and says the same `th`), so a trace kept at probability p here is one that
//! sampler would also keep at ratio p.
//!
//! Precision: a ratio's threshold is rounded to [`PRECISION`] significant hex digits, as the
//! specification recommends for SDKs and the Collector's `probabilistic_sampler` does by
//! default (`sampling_precision: 4`), with one more digit per four halvings of a small
//! probability (so 1% is `fd70a`, not `fd7`). The rounding is to the nearest, as the
//! specification's algorithm does, and the decision is made with the rounded threshold: the
//! `th` a span carries is then exactly the threshold it was kept with, never a larger or
//! smaller probability than was used, and the same ratio gives the same `th` here as in an SDK
//! or Collector configured with it (so their thresholds compose by the maximum without
//! near-equal pairs). 10% is `e666` (probability 0.100006…), 1% `fd70a` (0.0100002…).
//!
//! [`trace_state`] writes the whole `tracestate` a span is exported with: an upstream's list
//! (`link::tracestate`) with ztrace's `th` set in its `ot` entry.

use std::borrow::Cow;

use crate::model::{Sampling, TraceState};

/// 2^56.
const RANGE: u64 = 1 << 56;

/// Significant hex digits of a ratio's threshold (the specification's recommended default).
pub const PRECISION: u32 = 4;

/// Most members a W3C `tracestate` has.
const MAX_MEMBERS: usize = 32;
/// Longest value of a W3C `tracestate` member (the `ot` entry's included).
const MAX_VALUE: usize = 256;

/// The rejection threshold of keep-probability `p` (clamped to 0..=1), rounded to
/// [`PRECISION`] significant hex digits. p = 0 has no threshold (nothing is kept), shown as
/// `RANGE`.
pub fn threshold(p: f64) -> u64 {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    if p == 0.0 {
        return RANGE;
    }
    // `p · 2^56` first: below 2^53 it is exact to the fraction, so small probabilities keep
    // their precision (computing `(1 - p) · 2^56` loses the low bits).
    let exact = RANGE - ((p * RANGE as f64).round() as u64).min(RANGE);
    // The base-2 exponent e of p = m · 2^e, 0.5 <= m < 1: one more digit per 4 of -e.
    let e = p.log2().floor() as i32 + 1;
    let digits = (PRECISION as i32 + (-e).div_euclid(4)).clamp(1, 14) as u32;
    let unit = 1u64 << (4 * (14 - digits));
    let rounded = exact.saturating_add(unit / 2) / unit * unit;
    // A probability above 0 keeps something: at most the largest threshold.
    rounded.min(RANGE - 1)
}

/// `th` value text of a threshold: 14 hex digits, trailing zeros removed, `0` for zero.
pub fn th_value(t: u64) -> String {
    if t == 0 {
        return "0".into();
    }
    let s = format!("{:014x}", t.min(RANGE - 1));
    s.trim_end_matches('0').to_string()
}

/// The whole `tracestate` of a span kept with threshold `t`.
pub fn tracestate(t: u64) -> String {
    format!("ot=th:{}", th_value(t))
}

/// The `tracestate` a span is exported with, from the upstream's (if its trace came with one)
/// and what sampling did to it:
/// - nothing decided here ([`Sampling::Unsampled`]): the upstream's list as it came;
/// - kept with a known threshold: `th` set to it in the `ot` entry (other `ot` sub-keys, `rv`
///   among them, kept in order after it), and that entry moved to the front, as W3C asks of an
///   updated entry; other members stay in order (the last one goes if a new `ot` entry would
///   make 33);
/// - kept with an unknown probability: any `th` removed (an `ot` entry left empty goes), as
///   the specification asks of a stage that cannot say its probability.
///
/// None when there is nothing to say.
pub fn trace_state(upstream: Option<&TraceState>, sampling: Sampling) -> Option<Cow<'_, str>> {
    let Some(up) = upstream else {
        return sampling.th().map(|t| Cow::Owned(tracestate(t)));
    };
    let th = match sampling {
        Sampling::Unsampled => return Some(Cow::Borrowed(&up.members)),
        Sampling::Threshold(t) => Some(t),
        Sampling::Unknown if !has_th(&up.members) => {
            return Some(Cow::Borrowed(&up.members));
        }
        Sampling::Unknown => None,
    };
    let members: Vec<&str> = up.members.split(',').collect();
    let ot_value = members.iter().find_map(|m| m.strip_prefix("ot="));
    // The `ot` sub-keys other than `th`, in order.
    let others: Vec<&str> = ot_value
        .map(|v| v.split(';').filter(|kv| !kv.starts_with("th:")).collect())
        .unwrap_or_default();
    let mut ot = String::new();
    if let Some(t) = th {
        ot.push_str("th:");
        ot.push_str(&th_value(t));
    }
    for kv in others.iter().filter(|kv| !kv.is_empty()) {
        if !ot.is_empty() {
            ot.push(';');
        }
        ot.push_str(kv);
    }
    if ot.len() > MAX_VALUE {
        // Too long with the threshold: say no threshold rather than a wrong list.
        return trace_state(upstream, Sampling::Unknown);
    }
    let rest = members.iter().filter(|m| !m.starts_with("ot="));
    let room = if ot.is_empty() {
        MAX_MEMBERS
    } else {
        MAX_MEMBERS - 1
    };
    let mut out = String::with_capacity(up.members.len() + 24);
    if !ot.is_empty() {
        out.push_str("ot=");
        out.push_str(&ot);
    }
    for m in rest.take(room) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(m);
    }
    (!out.is_empty()).then_some(Cow::Owned(out))
}

/// Whether the `ot` entry of a checked list has a `th` sub-key (read or not).
fn has_th(members: &str) -> bool {
    members
        .split(',')
        .filter_map(|m| m.strip_prefix("ot="))
        .any(|v| v.split(';').any(|kv| kv.starts_with("th:")))
}

/// The probability a threshold stands for (for re-weighting and tests).
pub fn probability(t: u64) -> f64 {
    (RANGE - t.min(RANGE)) as f64 / RANGE as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_specification_examples() {
        // Probability 1: threshold 0. 50%: 2^55. 25%: 0xc0…. Powers of two are exact; the
        // others are the specification's table for precision 4 (1-in-N for N = 3, 5, 10, 100,
        // 1000, 10^4, 10^5, 10^6): rounded to the nearest, one more digit per four halvings.
        let cases = [
            (1.0, "0"),
            (0.5, "8"),
            (0.25, "c"),
            (0.75, "4"),
            (0.125, "e"),
            (0.0625, "f"),
            (1.0 / 3.0, "aaab"),
            (0.2, "cccd"),
            (0.1, "e666"),
            (0.01, "fd70a"),
            (0.001, "ffbe77"),
            (0.0001, "fff9724"),
            (0.00001, "ffff583a"),
            (0.000001, "ffffef39"),
        ];
        for (p, want) in cases {
            assert_eq!(th_value(threshold(p)), want, "p = {p}");
        }
        assert_eq!(tracestate(threshold(0.5)), "ot=th:8");
        assert_eq!(tracestate(threshold(1.0)), "ot=th:0");
        // The probability a threshold stands for is within the precision of the one asked for.
        for p in [1.0, 0.5, 1.0 / 3.0, 0.1, 0.01, 0.001, 1e-6, 1e-12] {
            let got = probability(threshold(p));
            assert!((got - p).abs() / p < 1e-4, "{p}: {got}");
        }
        // The smallest probability keeps something; 0 is clamped to the largest encodable
        // threshold (never emitted: nothing is kept).
        assert_eq!(threshold(2f64.powi(-56)), RANGE - 1);
        assert_eq!(th_value(threshold(0.0)), "ffffffffffffff");
        // Near 1 the precision is not raised (as in the specification): four digits from the
        // top, so 0.99999 is `0001` (0.999985) and 0.999999 rounds to 1.
        assert_eq!(th_value(threshold(0.99999)), "0001");
        assert_eq!(threshold(0.999_999), 0);
    }

    #[test]
    fn rounded_thresholds_stay_monotonic() {
        // A larger probability never gets a larger threshold, across the precision steps.
        let mut last = RANGE;
        for i in 1..=20_000 {
            let p = (i as f64 / 20_000.0).powi(3);
            let t = threshold(p);
            assert!(t <= last, "{p}: {t:x} after {last:x}");
            last = t;
        }
    }

    /// A checked upstream list (its `th`, read or not, does not matter to the merge).
    fn upstream(members: &str) -> TraceState {
        (*crate::testkit::tracestate(members, None, None)).clone()
    }

    #[test]
    fn the_exported_tracestate_merges_ztrace_s_th_into_the_upstream_s() {
        let t10 = threshold(0.1);
        // No upstream: ztrace's own entry, or nothing.
        assert_eq!(trace_state(None, Sampling::Unsampled), None);
        assert_eq!(trace_state(None, Sampling::Unknown), None);
        assert_eq!(
            trace_state(None, Sampling::Threshold(t10)).as_deref(),
            Some("ot=th:e666")
        );
        let up = upstream("vendor=x,ot=th:8;rv:0123456789abcd;zz:1,other=y");
        let ts = |s| trace_state(Some(&up), s).map(|c| c.into_owned());
        // Nothing decided here: as it came.
        assert_eq!(ts(Sampling::Unsampled).as_deref(), Some(&*up.members));
        // A threshold: set in place of the old one, ahead of the other sub-keys, the entry
        // moved to the front, the other vendors in order.
        assert_eq!(
            ts(Sampling::Threshold(t10)).as_deref(),
            Some("ot=th:e666;rv:0123456789abcd;zz:1,vendor=x,other=y")
        );
        // Unknown probability: the threshold is removed, the rest of the entry stays.
        assert_eq!(
            ts(Sampling::Unknown).as_deref(),
            Some("ot=rv:0123456789abcd;zz:1,vendor=x,other=y")
        );
        // An upstream without `ot`: one is added at the front; unknown leaves the list as is.
        let plain = upstream("a=1,b=2");
        assert_eq!(
            trace_state(Some(&plain), Sampling::Threshold(0)).as_deref(),
            Some("ot=th:0,a=1,b=2")
        );
        assert_eq!(
            trace_state(Some(&plain), Sampling::Unknown).as_deref(),
            Some("a=1,b=2")
        );
        // An `ot` entry with only `th`: gone when the probability is unknown.
        let only = upstream("ot=th:8,a=1");
        assert_eq!(
            trace_state(Some(&only), Sampling::Unknown).as_deref(),
            Some("a=1")
        );
        let alone = upstream("ot=th:8");
        assert_eq!(trace_state(Some(&alone), Sampling::Unknown), None);
        // A malformed `th` upstream counts as a `th` to replace or remove.
        let bad = upstream("ot=th:xyz;k:v");
        assert_eq!(
            trace_state(Some(&bad), Sampling::Unknown).as_deref(),
            Some("ot=k:v")
        );
        // 32 members and a new `ot` entry: the last member goes.
        let full: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        let full = upstream(&full.join(","));
        let merged = trace_state(Some(&full), Sampling::Threshold(0)).unwrap();
        assert_eq!(merged.split(',').count(), 32);
        assert!(merged.starts_with("ot=th:0,k0=v,") && merged.ends_with(",k30=v"));
        // An `ot` entry that would pass 256 characters with the threshold: no threshold.
        let long = upstream(&format!("ot=th:8;x:{}", "y".repeat(248)));
        assert_eq!(
            trace_state(Some(&long), Sampling::Threshold(threshold(0.3))).as_deref(),
            Some(format!("ot=x:{}", "y".repeat(248)).as_str())
        );
    }

    #[test]
    fn agrees_with_the_head_sampler() {
        // The head sampler decides with this very threshold: R = T is kept, R = T - 1 is not.
        for p in [0.5, 0.1, 0.01] {
            let t = threshold(p);
            let id = |r: u64| {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&r.to_be_bytes());
                crate::model::TraceId(b)
            };
            assert!(crate::processors::sampler::ratio_sampled(
                p,
                id(t).randomness()
            ));
            assert!(!crate::processors::sampler::ratio_sampled(
                p,
                id(t - 1).randomness()
            ));
        }
    }
}
