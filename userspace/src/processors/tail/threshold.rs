//! The sampling probability a kept span carries, the standard way: the OpenTelemetry
//! probability-sampling `th` key of the W3C `tracestate` `ot` entry. `th` is the rejection
//! threshold `T = (1 - p) · 2^56` in up to 14 hex digits with trailing zeros removed (`0` for
//! p = 1); a backend re-weights each kept span by `1/p = 2^56 / (2^56 - T)`. It is the same
//! randomness/threshold arithmetic the `traceidratio` head sampler uses (it decides with
//! [`threshold`] and says the same `th`), so a trace kept at probability p here is one that
//! sampler would also keep at ratio p.

/// 2^56.
const RANGE: u64 = 1 << 56;

/// The rejection threshold of keep-probability `p` (clamped to 0..=1). p = 0 has no threshold
/// (nothing is kept), shown as `RANGE`.
pub fn threshold(p: f64) -> u64 {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    // `p · 2^56` first: below 2^53 it is exact to the fraction, so small probabilities keep
    // their precision (computing `(1 - p) · 2^56` loses the low bits).
    RANGE - ((p * RANGE as f64).round() as u64).min(RANGE)
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

/// The probability a threshold stands for (for re-weighting and tests).
pub fn probability(t: u64) -> f64 {
    (RANGE - t.min(RANGE)) as f64 / RANGE as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_specification_examples() {
        // Probability 1: threshold 0. 50%: 2^55. 25%: 0xc0…. 1% and 10% at full precision.
        let cases = [
            (1.0, "0"),
            (0.5, "8"),
            (0.25, "c"),
            (0.75, "4"),
            (0.1, "e6666666666666"),
            (0.01, "fd70a3d70a3d71"),
        ];
        for (p, want) in cases {
            assert_eq!(th_value(threshold(p)), want, "p = {p}");
        }
        assert_eq!(tracestate(threshold(0.5)), "ot=th:8");
        assert_eq!(tracestate(threshold(1.0)), "ot=th:0");
        // Round trip of the adjusted count.
        for p in [1.0, 0.5, 0.1, 0.01, 0.001] {
            assert!((probability(threshold(p)) - p).abs() < 1e-12, "{p}");
        }
        // 0 is clamped to the largest encodable threshold (never emitted: nothing is kept).
        assert_eq!(th_value(threshold(0.0)), "ffffffffffffff");
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
            assert!(crate::processors::sampler::ratio_sampled(p, &id(t)));
            assert!(!crate::processors::sampler::ratio_sampled(p, &id(t - 1)));
        }
    }
}
