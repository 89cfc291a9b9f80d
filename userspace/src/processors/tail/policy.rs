//! The policies of tail sampling, compiled from their configuration, and how one of them judges
//! a whole local trace. Semantics follow the OpenTelemetry Collector's `tail_sampling` processor:
//! a policy says sampled or not; an `invert_match` attribute policy says "inverted not sampled"
//! on a match — a veto over every other policy — and "inverted sampled" otherwise; `and` samples
//! when every sub-policy does. Combining the policies of the list is `decide.rs`'s job.
//!
//! Policies see spans, not bytes: attribute policies look at the span's semantic-convention
//! attributes (`semconv`) and at `service.name` of its process. Nothing here does I/O.

use regex::Regex;

use crate::config::{PolicyConfig, PolicyRule, StatusCodeName};
use crate::model::{Span, SpanStatus};
use crate::semconv::attributes::{AttrValue, span_attributes};

/// What the anomaly policy asks: is this span's operation in an anomalous window now?
pub trait AnomalyView {
    fn anomalous(&self, span: &Span, service: &str) -> bool;
}

/// No anomaly detection: the anomaly policy never samples.
pub struct NoAnomalies;

impl AnomalyView for NoAnomalies {
    fn anomalous(&self, _: &Span, _: &str) -> bool {
        false
    }
}

/// One policy's verdict on a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Sampled, with the probability of the rule that sampled it (1 for deterministic rules;
    /// None when it has none, as for rate limiting).
    Sampled(Option<f64>),
    NotSampled,
    /// `invert_match` and the trace matched: dropped, whatever the other policies say.
    InvertNotSampled,
}

/// What a policy sees of a trace: its spans and their processes' service names.
pub struct TraceView<'a> {
    pub spans: &'a [Span],
    pub service: &'a dyn Fn(u32) -> &'a str,
    /// Decision time (monotonic ns), for rate limiting.
    pub now_ns: u64,
    pub anomalies: &'a dyn AnomalyView,
}

impl TraceView<'_> {
    /// Earliest start to latest end, as the Collector measures a trace.
    pub fn duration_ns(&self) -> u64 {
        let start = self
            .spans
            .iter()
            .map(|s| s.start_unix_ns)
            .min()
            .unwrap_or(0);
        let end = self.spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
        end.saturating_sub(start)
    }
}

enum Matcher {
    Exact(Vec<String>),
    Regex(Vec<Regex>),
}

impl Matcher {
    fn matches(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(vals) => vals.iter().any(|x| x == v),
            Matcher::Regex(res) => res.iter().any(|r| r.is_match(v)),
        }
    }
}

enum Rule {
    Always,
    Status(Vec<StatusCodeName>),
    Latency {
        min_ns: u64,
        max_ns: Option<u64>,
    },
    Probabilistic(f64),
    RateLimit {
        per_second: u64,
        second: u64,
        spent: u64,
    },
    Str {
        key: String,
        matcher: Matcher,
        invert: bool,
    },
    Num {
        key: String,
        min: i64,
        max: i64,
        invert: bool,
    },
    And(Vec<Policy>),
    Anomaly,
}

/// A compiled policy.
pub struct Policy {
    pub name: String,
    rule: Rule,
}

const SERVICE_NAME: &str = "service.name";

impl Policy {
    /// Compiles a validated configuration (regular expressions were checked at start-up).
    pub fn new(cfg: &PolicyConfig) -> Policy {
        let rule = match &cfg.rule {
            PolicyRule::AlwaysSample => Rule::Always,
            PolicyRule::StatusCode(codes) => Rule::Status(codes.clone()),
            PolicyRule::Latency {
                threshold_ms,
                upper_threshold_ms,
            } => Rule::Latency {
                min_ns: threshold_ms.saturating_mul(1_000_000),
                max_ns: upper_threshold_ms.map(|u| u.saturating_mul(1_000_000)),
            },
            PolicyRule::Probabilistic {
                sampling_percentage,
            } => Rule::Probabilistic(sampling_percentage / 100.0),
            PolicyRule::RateLimiting { spans_per_second } => Rule::RateLimit {
                per_second: *spans_per_second,
                second: u64::MAX,
                spent: 0,
            },
            PolicyRule::StringAttribute {
                key,
                values,
                enabled_regex_matching,
                invert_match,
            } => Rule::Str {
                key: key.clone(),
                matcher: if *enabled_regex_matching {
                    // Unanchored, as the Collector's (Go `regexp.MatchString`): anchor with ^…$.
                    Matcher::Regex(values.iter().filter_map(|v| Regex::new(v).ok()).collect())
                } else {
                    Matcher::Exact(values.clone())
                },
                invert: *invert_match,
            },
            PolicyRule::NumericAttribute {
                key,
                min_value,
                max_value,
                invert_match,
            } => Rule::Num {
                key: key.clone(),
                min: min_value.unwrap_or(i64::MIN),
                max: max_value.unwrap_or(i64::MAX),
                invert: *invert_match,
            },
            PolicyRule::And(subs) => Rule::And(subs.iter().map(Policy::new).collect()),
            PolicyRule::Anomaly => Rule::Anomaly,
        };
        Policy {
            name: cfg.name.clone(),
            rule,
        }
    }

    /// This policy's verdict on one trace.
    pub fn evaluate(&mut self, t: &TraceView<'_>) -> Outcome {
        let sampled = |yes: bool| {
            if yes {
                Outcome::Sampled(Some(1.0))
            } else {
                Outcome::NotSampled
            }
        };
        match &mut self.rule {
            Rule::Always => Outcome::Sampled(Some(1.0)),
            Rule::Status(codes) => sampled(t.spans.iter().any(|s| {
                let code = match s.status {
                    SpanStatus::Error(_) => StatusCodeName::Error,
                    // ztrace never sets OK: a span is an error or unset.
                    SpanStatus::Unset => StatusCodeName::Unset,
                };
                codes.contains(&code)
            })),
            Rule::Latency { min_ns, max_ns } => {
                let d = t.duration_ns();
                sampled(d >= *min_ns && max_ns.is_none_or(|m| d <= m))
            }
            Rule::Probabilistic(p) => {
                // The trace's randomness: an upstream's `rv`, else the trace id's.
                let r = t.spans.first().map_or(0, Span::randomness);
                if crate::processors::sampler::ratio_sampled(*p, r) {
                    Outcome::Sampled(Some(*p))
                } else {
                    Outcome::NotSampled
                }
            }
            Rule::RateLimit {
                per_second,
                second,
                spent,
            } => {
                let now_s = t.now_ns / 1_000_000_000;
                if *second != now_s {
                    *second = now_s;
                    *spent = 0;
                }
                let n = t.spans.len() as u64;
                if *spent + n <= *per_second {
                    *spent += n;
                    Outcome::Sampled(None)
                } else {
                    Outcome::NotSampled
                }
            }
            Rule::Str {
                key,
                matcher,
                invert,
            } => {
                let hit = t.spans.iter().any(|s| {
                    if key == SERVICE_NAME && matcher.matches((t.service)(s.pid)) {
                        return true;
                    }
                    span_attributes(s).iter().any(|(k, v)| {
                        *k == key.as_str() && matches!(v, AttrValue::Str(x) if matcher.matches(x))
                    })
                });
                invertible(hit, *invert)
            }
            Rule::Num {
                key,
                min,
                max,
                invert,
            } => {
                let hit = t.spans.iter().any(|s| {
                    span_attributes(s).iter().any(|(k, v)| {
                        *k == key.as_str()
                            && matches!(v, AttrValue::Int(i) if (*min..=*max).contains(i))
                    })
                });
                invertible(hit, *invert)
            }
            Rule::And(subs) => {
                let mut p: Option<f64> = Some(1.0);
                for sub in subs.iter_mut() {
                    match sub.evaluate(t) {
                        Outcome::Sampled(q) => p = p.zip(q).map(|(a, b)| a.min(b)),
                        Outcome::NotSampled => return Outcome::NotSampled,
                        Outcome::InvertNotSampled => return Outcome::InvertNotSampled,
                    }
                }
                Outcome::Sampled(p)
            }
            Rule::Anomaly => sampled(
                t.spans
                    .iter()
                    .any(|s| t.anomalies.anomalous(s, (t.service)(s.pid))),
            ),
        }
    }
}

/// An attribute policy's outcome: plain, or with `invert_match` (a match vetoes the trace, no
/// match counts as sampled).
fn invertible(hit: bool, invert: bool) -> Outcome {
    match (hit, invert) {
        (true, false) | (false, true) => Outcome::Sampled(Some(1.0)),
        (false, false) => Outcome::NotSampled,
        (true, true) => Outcome::InvertNotSampled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;
    use crate::model::{SpanId, TraceId};
    use crate::testkit::{client_span, server_span};

    fn policy(rule: PolicyRule) -> Policy {
        Policy::new(&PolicyConfig {
            name: "p".into(),
            rule,
        })
    }

    fn judge(p: &mut Policy, spans: &[Span], now_ns: u64) -> Outcome {
        let service = |_: u32| "shop";
        p.evaluate(&TraceView {
            spans,
            service: &service,
            now_ns,
            anomalies: &NoAnomalies,
        })
    }

    /// A root server span with `children` client spans, `ms` long, trace id from `n`.
    fn trace(n: u64, ms: u64, error: bool) -> Vec<Span> {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        let mut root = server_span();
        root.trace_id = TraceId(id);
        root.parent_span_id = None;
        root.end_unix_ns = root.start_unix_ns + ms * 1_000_000;
        let mut child = client_span();
        child.trace_id = TraceId(id);
        child.span_id = SpanId([9; 8]);
        child.parent_span_id = Some(root.span_id);
        child.start_unix_ns = root.start_unix_ns + 1;
        child.end_unix_ns = root.start_unix_ns + 2;
        // The test kit's client span failed; here it succeeds unless asked.
        child.status = SpanStatus::Unset;
        child.http_mut().unwrap().status = Some(200);
        if error {
            child.status = SpanStatus::Error("500".into());
        }
        vec![root, child]
    }

    const KEEP: Outcome = Outcome::Sampled(Some(1.0));

    #[test]
    fn always_sample() {
        assert_eq!(
            judge(
                &mut policy(PolicyRule::AlwaysSample),
                &trace(1, 1, false),
                0
            ),
            KEEP
        );
    }

    #[test]
    fn status_code_looks_at_every_span() {
        let mut p = policy(PolicyRule::StatusCode(vec![StatusCodeName::Error]));
        assert_eq!(judge(&mut p, &trace(1, 5, true), 0), KEEP);
        assert_eq!(judge(&mut p, &trace(1, 5, false), 0), Outcome::NotSampled);
        let mut unset = policy(PolicyRule::StatusCode(vec![StatusCodeName::Unset]));
        assert_eq!(judge(&mut unset, &trace(1, 5, false), 0), KEEP);
        let mut ok = policy(PolicyRule::StatusCode(vec![StatusCodeName::Ok]));
        assert_eq!(judge(&mut ok, &trace(1, 5, false), 0), Outcome::NotSampled);
    }

    #[test]
    fn latency_bounds_are_inclusive_and_span_the_trace() {
        let mut p = policy(PolicyRule::Latency {
            threshold_ms: 100,
            upper_threshold_ms: Some(200),
        });
        assert_eq!(judge(&mut p, &trace(1, 99, false), 0), Outcome::NotSampled);
        assert_eq!(judge(&mut p, &trace(1, 100, false), 0), KEEP);
        assert_eq!(judge(&mut p, &trace(1, 200, false), 0), KEEP);
        assert_eq!(judge(&mut p, &trace(1, 201, false), 0), Outcome::NotSampled);
        // The trace's extent, not one span's: a child ending after its parent stretches it.
        let mut t = trace(1, 50, false);
        t[1].end_unix_ns = t[0].start_unix_ns + 150_000_000;
        assert_eq!(judge(&mut p, &t, 0), KEEP);
    }

    #[test]
    fn probabilistic_keeps_the_rate_and_reports_it() {
        let mut p = policy(PolicyRule::Probabilistic {
            sampling_percentage: 10.0,
        });
        let n = 20_000;
        let kept = (0..n)
            .filter(|&i| judge(&mut p, &trace(i, 1, false), 0) == Outcome::Sampled(Some(0.1)))
            .count();
        let rate = kept as f64 / n as f64;
        assert!((rate - 0.1).abs() < 0.01, "{rate}");
        let mut none = policy(PolicyRule::Probabilistic {
            sampling_percentage: 0.0,
        });
        assert!((0..1000).all(|i| judge(&mut none, &trace(i, 1, false), 0) == Outcome::NotSampled));
    }

    #[test]
    fn rate_limiting_counts_spans_per_second() {
        let mut p = policy(PolicyRule::RateLimiting {
            spans_per_second: 5,
        });
        let second = 7_000_000_000;
        // Two-span traces: two fit in 5 spans, the third does not.
        let got: Vec<Outcome> = (0..3)
            .map(|i| judge(&mut p, &trace(i, 1, false), second))
            .collect();
        assert_eq!(
            got,
            vec![
                Outcome::Sampled(None),
                Outcome::Sampled(None),
                Outcome::NotSampled
            ]
        );
        // A new second, a new budget.
        assert_eq!(
            judge(&mut p, &trace(4, 1, false), second + 1_000_000_000),
            Outcome::Sampled(None)
        );
    }

    #[test]
    fn string_attribute_exact_regex_resource_and_invert() {
        let t = trace(1, 1, false);
        let mut exact = policy(PolicyRule::StringAttribute {
            key: "http.request.method".into(),
            values: vec!["POST".into()],
            enabled_regex_matching: false,
            invert_match: false,
        });
        // The client span is a POST.
        assert_eq!(judge(&mut exact, &t, 0), KEEP);
        let mut regex = policy(PolicyRule::StringAttribute {
            key: "url.path".into(),
            values: vec!["^/api/ord".into()],
            enabled_regex_matching: true,
            invert_match: false,
        });
        assert_eq!(judge(&mut regex, &t, 0), KEEP);
        let mut service = policy(PolicyRule::StringAttribute {
            key: "service.name".into(),
            values: vec!["other".into()],
            enabled_regex_matching: false,
            invert_match: false,
        });
        assert_eq!(judge(&mut service, &t, 0), Outcome::NotSampled);
        let mut health = policy(PolicyRule::StringAttribute {
            key: "url.path".into(),
            values: vec!["/api/orders".into()],
            enabled_regex_matching: false,
            invert_match: true,
        });
        assert_eq!(judge(&mut health, &t, 0), Outcome::InvertNotSampled);
        let mut t2 = t.clone();
        t2[0].http_mut().unwrap().target = "/other".into();
        assert_eq!(judge(&mut health, &t2, 0), KEEP);
    }

    #[test]
    fn numeric_attribute_range() {
        let mut p = policy(PolicyRule::NumericAttribute {
            key: "http.response.status_code".into(),
            min_value: Some(500),
            max_value: Some(599),
            invert_match: false,
        });
        let mut t = trace(1, 1, false);
        assert_eq!(judge(&mut p, &t, 0), Outcome::NotSampled);
        t[0].http_mut().unwrap().status = Some(503);
        assert_eq!(judge(&mut p, &t, 0), KEEP);
        let mut open = policy(PolicyRule::NumericAttribute {
            key: "http.response.status_code".into(),
            min_value: Some(200),
            max_value: None,
            invert_match: true,
        });
        assert_eq!(judge(&mut open, &t, 0), Outcome::InvertNotSampled);
    }

    #[test]
    fn and_needs_every_sub_policy_and_keeps_the_smallest_probability() {
        let sub = |name: &str, rule| PolicyConfig {
            name: name.into(),
            rule,
        };
        let mut p = policy(PolicyRule::And(vec![
            sub("err", PolicyRule::StatusCode(vec![StatusCodeName::Error])),
            sub(
                "half",
                PolicyRule::Probabilistic {
                    sampling_percentage: 100.0,
                },
            ),
        ]));
        assert_eq!(judge(&mut p, &trace(1, 1, true), 0), KEEP);
        assert_eq!(judge(&mut p, &trace(1, 1, false), 0), Outcome::NotSampled);
        let mut q = policy(PolicyRule::And(vec![
            sub("all", PolicyRule::AlwaysSample),
            sub(
                "some",
                PolicyRule::Probabilistic {
                    sampling_percentage: 50.0,
                },
            ),
        ]));
        let outcomes: Vec<Outcome> = (0..200)
            .map(|i| judge(&mut q, &trace(i, 1, false), 0))
            .collect();
        assert!(outcomes.contains(&Outcome::Sampled(Some(0.5))));
        assert!(outcomes.contains(&Outcome::NotSampled));
    }

    #[test]
    fn anomaly_asks_the_detector() {
        struct Slow;
        impl AnomalyView for Slow {
            fn anomalous(&self, span: &Span, service: &str) -> bool {
                service == "shop" && span.end_unix_ns - span.start_unix_ns > 100_000_000
            }
        }
        let mut p = policy(PolicyRule::Anomaly);
        let service = |_: u32| "shop";
        let view = |spans| TraceView {
            spans,
            service: &service,
            now_ns: 0,
            anomalies: &Slow,
        };
        let (slow, fast) = (trace(1, 200, false), trace(1, 20, false));
        assert_eq!(p.evaluate(&view(&slow)), KEEP);
        assert_eq!(p.evaluate(&view(&fast)), Outcome::NotSampled);
        assert_eq!(
            judge(&mut p, &trace(1, 200, false), 0),
            Outcome::NotSampled,
            "no detector, no anomaly"
        );
    }
}
