//! The anomaly detector: every released span (before any sampling) is measured per service and
//! operation into fixed windows; when a window closes, its latency p95 and its error rate are
//! judged against their EWMA baselines ([`super::ewma`]), and changes come out as
//! [`AnomalyEvent`]s (start and end), each with exemplar trace ids of the window.
//!
//! Noise floors, so that quiet or naturally jittery operations do not flap:
//! - latency: the deviation must be at least `latency_min_change` of the baseline p95;
//! - error rate: at least the binomial noise of the window, `sqrt(p(1-p)/n)` with
//!   `p = max(baseline, 1/n)` (one error in a small window is never an anomaly);
//! - a window with fewer than `min_requests` requests is not judged at all.
//!
//! It also answers, for the tail sampler's `anomaly` policy, whether a span's operation is in an
//! anomalous window now: an alarm is on, or the window still open already crosses the threshold.
//! Memory: at most `max_operations` operations (more are ignored and counted), a bounded sample of
//! latencies per open window. It does no I/O; time is the caller's monotonic clock.

use std::collections::HashMap;

use super::ewma::{Change, Rules, Signal};
use super::operation::operation;
use crate::config::AnomalyConfig;
use crate::model::{Span, SpanStatus, TraceId};

/// Latencies sampled per window (for its p95).
const MAX_SAMPLES: usize = 2048;
/// Exemplar trace ids carried by an event.
pub const MAX_EXEMPLARS: usize = 5;
/// The latency quantile judged.
const QUANTILE: f64 = 0.95;
/// Spans above the alarm line an open window needs before the `anomaly` policy calls it slow: a
/// burst of one or two slow requests early in a window is not an anomaly yet (the evaluation
/// kept 1% extra healthy traces without this).
const MIN_OUTLIERS: u64 = 5;

/// Which signal of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// p95 of span durations in the window, seconds.
    LatencyP95,
    /// Error spans / spans in the window.
    ErrorRate,
}

impl SignalKind {
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::LatencyP95 => "latency.p95",
            SignalKind::ErrorRate => "error.rate",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            SignalKind::LatencyP95 => "s",
            SignalKind::ErrorRate => "1",
        }
    }
}

/// A signal leaving or returning to its baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyEvent {
    pub started: bool,
    pub service: String,
    pub operation: String,
    pub signal: SignalKind,
    /// The window's value and the baseline it was judged against.
    pub observed: f64,
    pub baseline: f64,
    pub score: f64,
    /// Traces of the window that show it: the slowest, or those with errors.
    pub exemplars: Vec<TraceId>,
    /// A process of the service (the Resource the record is exported under).
    pub pid: u32,
    /// When the window closed (monotonic ns).
    pub at_ns: u64,
}

/// A signal with an active alarm, for the `ztrace.anomaly.*` metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Active {
    pub service: String,
    pub operation: String,
    pub signal: SignalKind,
    pub score: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectorStats {
    pub operations: u64,
    /// Spans of operations beyond `max_operations`, not measured.
    pub untracked_spans: u64,
    pub started: u64,
    pub ended: u64,
}

#[derive(Default)]
struct Window {
    count: u64,
    errors: u64,
    samples: Vec<f64>,
    /// Spans above the latency alarm line of the open window.
    above: u64,
    slowest: Vec<(f64, TraceId)>,
    error_traces: Vec<TraceId>,
    /// Reservoir sampling state.
    seen: u64,
}

struct Op {
    pid: u32,
    window: Window,
    latency: Signal,
    errors: Signal,
    /// The latency above which a span counts towards an open window's p95 alarm.
    latency_line: f64,
    /// When the last alarm of either signal ended (monotonic ns).
    ended_ns: Option<u64>,
}

pub struct Detector {
    cfg: AnomalyConfig,
    rules: Rules,
    window_ns: u64,
    window_start: Option<u64>,
    /// The latest time seen.
    now_ns: u64,
    /// How long after an alarm ends its operation still counts as anomalous for the `anomaly`
    /// policy: the tail sampler's decision wait, so that traces that arrived while the alarm
    /// was on and are decided just after it ended are still kept.
    linger_ns: u64,
    ops: HashMap<(String, String), Op>,
    rng: u64,
    pub stats: DetectorStats,
}

impl Detector {
    pub fn new(cfg: &AnomalyConfig) -> Detector {
        Detector {
            rules: Rules {
                alpha: cfg.alpha,
                threshold: cfg.threshold,
                end_threshold: cfg.end_threshold,
                end_windows: cfg.end_windows,
                cold_start_windows: cfg.cold_start_windows,
                start_windows: cfg.start_windows,
            },
            window_ns: cfg.window.as_nanos().clamp(1, u128::from(u64::MAX)) as u64,
            cfg: cfg.clone(),
            window_start: None,
            now_ns: 0,
            linger_ns: 0,
            ops: HashMap::new(),
            rng: 0x2545_F491_4F6C_DD1D,
            stats: DetectorStats::default(),
        }
    }

    fn error_floor(base: f64, n: u64) -> f64 {
        let n = n.max(1) as f64;
        let p = base.max(1.0 / n).min(0.5);
        (p * (1.0 - p) / n).sqrt()
    }

    /// Measures one released span of `service` at `now_ns`; closes windows that are due first.
    pub fn observe(
        &mut self,
        span: &Span,
        service: &str,
        now_ns: u64,
        out: &mut Vec<AnomalyEvent>,
    ) {
        self.tick(now_ns, out);
        let Some(op_name) = operation(span) else {
            return;
        };
        let key = (service.to_string(), op_name);
        if !self.ops.contains_key(&key) {
            if self.ops.len() >= self.cfg.max_operations {
                self.stats.untracked_spans += 1;
                return;
            }
            self.stats.operations += 1;
        }
        let op = self.ops.entry(key).or_insert_with(|| Op {
            pid: span.pid,
            window: Window::default(),
            latency: Signal::default(),
            errors: Signal::default(),
            latency_line: f64::INFINITY,
            ended_ns: None,
        });
        let secs = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
        let w = &mut op.window;
        w.count += 1;
        w.seen += 1;
        if secs > op.latency_line {
            w.above += 1;
        }
        if w.samples.len() < MAX_SAMPLES {
            w.samples.push(secs);
        } else {
            // Reservoir: each of the `seen` values is kept with probability MAX_SAMPLES/seen.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let j = (self.rng % w.seen) as usize;
            if j < MAX_SAMPLES {
                w.samples[j] = secs;
            }
        }
        if matches!(span.status, SpanStatus::Error(_)) {
            w.errors += 1;
            if w.error_traces.len() < MAX_EXEMPLARS && !w.error_traces.contains(&span.trace_id) {
                w.error_traces.push(span.trace_id);
            }
        }
        if !w.slowest.iter().any(|(_, t)| *t == span.trace_id) {
            if w.slowest.len() < MAX_EXEMPLARS {
                w.slowest.push((secs, span.trace_id));
            } else if let Some(min) = w
                .slowest
                .iter_mut()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|m| m.0 < secs)
            {
                *min = (secs, span.trace_id);
            }
        }
    }

    /// Closes the window when it is due (call at least every window).
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<AnomalyEvent>) {
        self.now_ns = self.now_ns.max(now_ns);
        let start = *self.window_start.get_or_insert(now_ns);
        if now_ns < start.saturating_add(self.window_ns) {
            return;
        }
        self.close(now_ns, out);
        // Windows that passed with no span at all count as idle ones.
        let skipped = (now_ns - start) / self.window_ns;
        for _ in 1..skipped.min(u64::from(self.cfg.end_windows) + 1) {
            self.close(now_ns, out);
        }
        self.window_start = Some(start + skipped * self.window_ns);
    }

    fn close(&mut self, now_ns: u64, out: &mut Vec<AnomalyEvent>) {
        let from = out.len();
        let rules = self.rules;
        let min = self.cfg.min_requests;
        let (lat_change, threshold) = (self.cfg.latency_min_change, self.cfg.threshold);
        for ((service, operation), op) in self.ops.iter_mut() {
            let w = std::mem::take(&mut op.window);
            let mut changes = Vec::new();
            if w.count >= min {
                let p95 = quantile(w.samples, QUANTILE);
                let lat_floor = (lat_change * op.latency.base.mean / threshold).max(1e-6);
                let rate = w.errors as f64 / w.count as f64;
                let err_floor = Self::error_floor(op.errors.base.mean, w.count);
                if let Some(c) = op.latency.window(p95, lat_floor, &rules) {
                    changes.push((SignalKind::LatencyP95, c, p95));
                }
                if let Some(c) = op.errors.window(rate, err_floor, &rules) {
                    changes.push((SignalKind::ErrorRate, c, rate));
                }
            } else {
                if let Some(c) = op.latency.idle(&rules) {
                    changes.push((SignalKind::LatencyP95, c, f64::NAN));
                }
                if let Some(c) = op.errors.idle(&rules) {
                    changes.push((SignalKind::ErrorRate, c, f64::NAN));
                }
            }
            // The alarm line for the next window: where its p95 would cross the threshold.
            op.latency_line = if op.latency.base.n >= rules.cold_start_windows {
                let base = op.latency.base;
                let floor = (lat_change * base.mean / threshold).max(1e-6);
                base.mean + threshold * base.var.sqrt().max(floor)
            } else {
                f64::INFINITY
            };
            if changes
                .iter()
                .any(|(_, c, _)| matches!(c, Change::Ended { .. }))
            {
                op.ended_ns = Some(now_ns);
            }
            for (signal, change, observed) in changes {
                let (started, score, baseline) = match change {
                    Change::Started { z, baseline } => (true, z, baseline),
                    Change::Ended { z, baseline } => (false, z, baseline),
                };
                let exemplars = match signal {
                    SignalKind::ErrorRate => w.error_traces.clone(),
                    SignalKind::LatencyP95 => {
                        let mut s = w.slowest.clone();
                        s.sort_by(|a, b| b.0.total_cmp(&a.0));
                        s.into_iter().map(|(_, t)| t).collect()
                    }
                };
                out.push(AnomalyEvent {
                    started,
                    service: service.clone(),
                    operation: operation.clone(),
                    signal,
                    observed,
                    baseline,
                    score,
                    exemplars,
                    pid: op.pid,
                    at_ns: now_ns,
                });
            }
        }
        let (started, ended) = out[from..].iter().fold((0, 0), |(s, e), ev| {
            (s + u64::from(ev.started), e + u64::from(!ev.started))
        });
        self.stats.started += started;
        self.stats.ended += ended;
    }

    /// See `linger_ns`: the decision wait of the tail sampler asking.
    pub fn linger(&mut self, d: std::time::Duration) {
        self.linger_ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    }

    /// Whether `span`'s operation is anomalous now: an alarm is on (or ended less than the linger
    /// ago), or the open window already crosses the threshold (its p95 is above the alarm line,
    /// or its error rate scores high).
    pub fn anomalous(&self, span: &Span, service: &str) -> bool {
        let Some(op_name) = operation(span) else {
            return false;
        };
        let Some(op) = self.ops.get(&(service.to_string(), op_name)) else {
            return false;
        };
        let lingering = op
            .ended_ns
            .is_some_and(|t| self.now_ns < t.saturating_add(self.linger_ns));
        if op.latency.active || op.errors.active || lingering {
            return true;
        }
        let w = &op.window;
        if w.count < self.cfg.min_requests {
            return false;
        }
        let slow = w.above >= MIN_OUTLIERS && w.above as f64 > (1.0 - QUANTILE) * w.count as f64;
        let rate = w.errors as f64 / w.count as f64;
        let errors = op.errors.beyond(
            rate,
            Self::error_floor(op.errors.base.mean, w.count),
            &self.rules,
        );
        slow || errors
    }

    /// Signals with an alarm on now.
    pub fn active(&self) -> Vec<Active> {
        let mut out = Vec::new();
        for ((service, operation), op) in &self.ops {
            for (signal, s) in [
                (SignalKind::LatencyP95, &op.latency),
                (SignalKind::ErrorRate, &op.errors),
            ] {
                if s.active {
                    out.push(Active {
                        service: service.clone(),
                        operation: operation.clone(),
                        signal,
                        score: s.last_z,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.service, &a.operation).cmp(&(&b.service, &b.operation)));
        out
    }

    #[cfg(test)]
    fn line(&self, service: &str, op: &str) -> f64 {
        self.ops[&(service.to_string(), op.to_string())].latency_line
    }
}

/// The `q` quantile (nearest rank) of `v`; NaN when empty.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable_by(rank, f64::total_cmp);
    *x
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testkit::server_span;

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn cfg() -> AnomalyConfig {
        AnomalyConfig {
            window: Duration::from_secs(1),
            ..AnomalyConfig::default()
        }
    }

    /// Deterministic noise in [0, 1).
    fn noise(i: u64) -> f64 {
        (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64
    }

    struct Load {
        d: Detector,
        events: Vec<AnomalyEvent>,
        n: u64,
    }

    impl Load {
        fn new() -> Load {
            Load {
                d: Detector::new(&cfg()),
                events: Vec::new(),
                n: 0,
            }
        }

        /// One second of `rps` requests to `path`, `ms` ± 20% long, every `error_every`-th failing.
        fn second(&mut self, at: u64, path: &str, rps: u64, ms: f64, error_every: u64) {
            for i in 0..rps {
                self.n += 1;
                let mut s = server_span();
                s.http_mut().unwrap().target = path.into();
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&self.n.to_be_bytes());
                s.trace_id = TraceId(id);
                let dur = ms * (0.8 + 0.4 * noise(self.n)) * MS as f64;
                s.end_unix_ns = s.start_unix_ns + dur as u64;
                if error_every > 0 && self.n.is_multiple_of(error_every) {
                    s.status = SpanStatus::Error("500".into());
                }
                let now = at * SEC + i * SEC / rps;
                self.d.observe(&s, "shop", now, &mut self.events);
            }
        }
    }

    #[test]
    fn steady_load_never_alarms() {
        let mut l = Load::new();
        // An hour of 1 s windows, 50 rps at 20 ms with 1% errors, and a quiet route at 2 rps
        // with 50% errors (below min_requests: never judged).
        for t in 0..3600 {
            l.second(t, "/api/orders", 50, 20.0, 100);
            l.second(t, "/rare", 2, 300.0 * (1.0 + 3.0 * noise(t)), 2);
        }
        assert_eq!(l.events, vec![], "false alarms");
        assert_eq!(l.d.stats.operations, 2);
    }

    #[test]
    fn a_latency_fault_starts_and_ends_with_exemplars() {
        let mut l = Load::new();
        for t in 0..30 {
            l.second(t, "/api/orders", 50, 20.0, 0);
        }
        assert!(l.d.line("shop", "GET /api/orders").is_finite());
        for t in 30..40 {
            l.second(t, "/api/orders", 50, 200.0, 0);
            if t == 30 {
                // The open window already crosses the alarm line.
                let mut s = server_span();
                s.http_mut().unwrap().target = "/api/orders".into();
                assert!(l.d.anomalous(&s, "shop"));
                assert!(!l.d.anomalous(&s, "other"));
            }
        }
        for t in 40..60 {
            l.second(t, "/api/orders", 50, 20.0, 0);
        }
        let started: Vec<&AnomalyEvent> = l.events.iter().filter(|e| e.started).collect();
        assert_eq!(started.len(), 1, "{:#?}", l.events);
        let e = started[0];
        assert_eq!(
            (e.service.as_str(), e.operation.as_str(), e.signal),
            ("shop", "GET /api/orders", SignalKind::LatencyP95)
        );
        // Window 30 closes at 31 s.
        assert_eq!(e.at_ns, 31 * SEC);
        assert!(e.observed > 0.15 && e.baseline < 0.03, "{e:?}");
        assert!(e.score >= 4.0);
        assert_eq!(e.exemplars.len(), MAX_EXEMPLARS);
        let ended: Vec<&AnomalyEvent> = l.events.iter().filter(|e| !e.started).collect();
        assert_eq!(ended.len(), 1);
        // Recovery at 40 s; two quiet windows (40, 41) end it when 41 closes.
        assert_eq!(ended[0].at_ns, 42 * SEC);
        assert_eq!((l.d.stats.started, l.d.stats.ended), (1, 1));
        assert!(l.d.active().is_empty());
    }

    #[test]
    fn an_error_fault_of_a_few_percent_is_caught_and_one_error_is_not() {
        let mut l = Load::new();
        for t in 0..30 {
            l.second(t, "/pay", 100, 10.0, 0);
        }
        // One error in a window: noise.
        l.second(30, "/pay", 100, 10.0, 100);
        assert!(l.events.is_empty());
        // 5% errors.
        for t in 31..36 {
            l.second(t, "/pay", 100, 10.0, 20);
        }
        let e = l.events.iter().find(|e| e.started).expect("an alarm");
        assert_eq!(e.signal, SignalKind::ErrorRate);
        assert!((e.observed - 0.05).abs() < 0.011, "{e:?}");
        assert!(!e.exemplars.is_empty());
        assert_eq!(l.d.active().len(), 1);
    }

    #[test]
    fn operations_are_bounded() {
        let mut d = Detector::new(&AnomalyConfig {
            max_operations: 2,
            ..cfg()
        });
        let mut out = Vec::new();
        for p in ["/a", "/b", "/c", "/c"] {
            let mut s = server_span();
            s.http_mut().unwrap().target = p.into();
            d.observe(&s, "shop", 0, &mut out);
        }
        assert_eq!(d.stats.operations, 2);
        assert_eq!(d.stats.untracked_spans, 2);
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.95), 95.0);
        assert_eq!(quantile(v, 0.5), 50.0);
        assert!(quantile(vec![], 0.95).is_nan());
    }
}
