//! One instrument's time series: explicit-bucket histograms or monotonic sums, keyed by traced
//! process and attribute set, with a cap on how many distinct series it may hold.
//!
//! The cap follows the OpenTelemetry metrics SDK's cardinality limit: once an instrument holds
//! `max_series` series, a measurement for a new attribute set is folded into one overflow series
//! per process carrying only `otel.metric.overflow = true`, and counted, so that a burst of
//! distinct peers or URLs can neither exhaust memory nor drown the backend. Nothing here knows
//! about spans or events; `red` and `net` decide what is measured.

use std::borrow::Cow;

use rustc_hash::FxHashMap as HashMap;

/// The attribute `otel.metric.overflow` of the series that absorbs measurements beyond the cap.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

/// A metric attribute value (hashable, unlike the span attribute values). Strings the code
/// knows (`"http"`, a known method, a protocol version) are borrowed, not copied: the attribute
/// set of a span's measurement then allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Val {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl Val {
    /// A string that lives for the whole run (no copy).
    pub const fn fixed(s: &'static str) -> Self {
        Val::Str(Cow::Borrowed(s))
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Str(Cow::Owned(s.to_owned()))
    }
}
impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Str(Cow::Owned(s))
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Val::Int(i)
    }
}

/// An attribute set, in the order the mapping produced it (always the same for one instrument).
pub type AttrSet = Vec<(&'static str, Val)>;

/// One histogram series.
#[derive(Clone, Debug, PartialEq)]
pub struct HistPoint {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// `bounds.len() + 1` counts; bucket i holds values in `(bounds[i-1], bounds[i]]`.
    pub buckets: Vec<u64>,
}

impl HistPoint {
    fn new(bounds: &[f64]) -> Self {
        HistPoint {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            buckets: vec![0; bounds.len() + 1],
        }
    }

    fn record(&mut self, bounds: &[f64], v: f64) {
        // Upper bounds are inclusive, as the OTLP data model says.
        let i = bounds.partition_point(|b| *b < v);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// What an instrument aggregates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Explicit-bucket histogram with these upper bounds (ascending).
    Histogram(&'static [f64]),
    /// Monotonic sum (a counter).
    Sum,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Point {
    Hist(HistPoint),
    Sum(u64),
}

/// Static description of an instrument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Descriptor {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub shape: Shape,
}

/// One instrument's series.
pub struct Instrument {
    pub desc: Descriptor,
    series: HashMap<(u32, AttrSet), Point>,
    max_series: usize,
    /// Measurements folded into an overflow series since the start.
    pub folded: u64,
}

impl Instrument {
    pub fn new(desc: Descriptor, max_series: usize) -> Self {
        Instrument {
            desc,
            series: HashMap::default(),
            max_series: max_series.max(1),
            folded: 0,
        }
    }

    /// The series of (`pid`, `attrs`), or the process's overflow series when the cap is reached.
    fn point(&mut self, pid: u32, attrs: AttrSet) -> &mut Point {
        let mut key = (pid, attrs);
        if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
            self.folded += 1;
            key.1 = vec![(OVERFLOW_ATTRIBUTE, Val::Bool(true))];
        }
        let desc = self.desc;
        self.series.entry(key).or_insert_with(|| match desc.shape {
            Shape::Histogram(bounds) => Point::Hist(HistPoint::new(bounds)),
            Shape::Sum => Point::Sum(0),
        })
    }

    /// Records one histogram value (ignored by a sum, and when not finite).
    pub fn record(&mut self, pid: u32, attrs: AttrSet, v: f64) {
        let Shape::Histogram(bounds) = self.desc.shape else {
            return;
        };
        if !v.is_finite() {
            return;
        }
        if let Point::Hist(h) = self.point(pid, attrs) {
            h.record(bounds, v);
        }
    }

    /// Records one histogram value under the attribute set in `attrs`, a buffer the caller
    /// reuses: it is looked up as it is and copied only for a new series (no allocation per
    /// measurement).
    pub fn record_in(&mut self, pid: u32, attrs: &mut AttrSet, v: f64) {
        let Shape::Histogram(bounds) = self.desc.shape else {
            return;
        };
        if !v.is_finite() {
            return;
        }
        let key = (pid, std::mem::take(attrs));
        if let Some(Point::Hist(h)) = self.series.get_mut(&key) {
            h.record(bounds, v);
        } else {
            self.record(pid, key.1.clone(), v);
        }
        *attrs = key.1;
    }

    /// Adds to a sum (ignored by a histogram).
    pub fn add(&mut self, pid: u32, attrs: AttrSet, n: u64) {
        if self.desc.shape != Shape::Sum {
            return;
        }
        if let Point::Sum(s) = self.point(pid, attrs) {
            *s = s.saturating_add(n);
        }
    }

    /// Every series now, in a stable order. With `reset` (delta temporality) the series are
    /// forgotten afterwards: the next collection reports only what is measured meanwhile, and
    /// the cap applies per interval.
    pub fn collect(&mut self, reset: bool) -> Vec<(u32, AttrSet, Point)> {
        let mut out: Vec<(u32, AttrSet, Point)> = if reset {
            self.series.drain().map(|((p, a), v)| (p, a, v)).collect()
        } else {
            self.series
                .iter()
                .map(|((p, a), v)| (*p, a.clone(), v.clone()))
                .collect()
        };
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Forgets the series of processes that are gone (cumulative series would otherwise live
    /// for ever).
    pub fn retain_pids(&mut self, keep: impl Fn(u32) -> bool) {
        self.series.retain(|(pid, _), _| keep(*pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0];

    fn hist() -> Instrument {
        Instrument::new(
            Descriptor {
                name: "h",
                unit: "s",
                description: "",
                shape: Shape::Histogram(BOUNDS),
            },
            3,
        )
    }

    fn attrs(method: &str) -> AttrSet {
        vec![("http.request.method", method.into())]
    }

    #[test]
    fn values_land_in_inclusive_upper_bound_buckets() {
        let mut h = hist();
        for v in [0.001, 0.005, 0.0051, 0.1, 0.3, 1.0, 2.0, 50.0] {
            h.record(1, attrs("GET"), v);
        }
        h.record(1, attrs("GET"), f64::NAN);
        let out = h.collect(false);
        assert_eq!(out.len(), 1);
        let Point::Hist(p) = &out[0].2 else { panic!() };
        // 0.001 and 0.005 → ≤0.005; 0.0051 → ≤0.01; 0.1 → ≤0.1; 0.3 → ≤0.5; 1.0 → ≤1; 2, 50 → +Inf.
        assert_eq!(p.buckets, vec![2, 1, 0, 0, 0, 1, 0, 1, 0, 1, 2]);
        assert_eq!(p.count, 8);
        assert_eq!((p.min, p.max), (0.001, 50.0));
        assert!((p.sum - 53.4111).abs() < 1e-9);
    }

    #[test]
    fn cumulative_keeps_and_delta_resets() {
        let mut h = hist();
        h.record(1, attrs("GET"), 0.2);
        assert_eq!(h.collect(false).len(), 1);
        h.record(1, attrs("GET"), 0.2);
        let Point::Hist(p) = &h.collect(true)[0].2 else {
            panic!()
        };
        assert_eq!(p.count, 2);
        assert!(h.collect(true).is_empty());
        h.record(1, attrs("GET"), 0.2);
        let Point::Hist(p) = &h.collect(true)[0].2 else {
            panic!()
        };
        assert_eq!(p.count, 1);
    }

    #[test]
    fn series_beyond_the_cap_fold_into_one_overflow_series_per_process() {
        let mut h = hist();
        for m in ["GET", "PUT", "POST", "DELETE", "PATCH", "GET"] {
            h.record(1, attrs(m), 0.01);
        }
        h.record(2, attrs("HEAD"), 0.01);
        let out = h.collect(false);
        assert_eq!(h.folded, 3, "DELETE, PATCH (pid 1) and HEAD (pid 2)");
        assert_eq!(out.len(), 5, "three real series and two overflow series");
        let overflow: Vec<_> = out
            .iter()
            .filter(|(_, a, _)| a == &vec![(OVERFLOW_ATTRIBUTE, Val::Bool(true))])
            .collect();
        assert_eq!(overflow.len(), 2);
        let Point::Hist(p) = &overflow[0].2 else {
            panic!()
        };
        assert_eq!((overflow[0].0, p.count), (1, 2));
        // A series that exists keeps counting at the cap.
        let get = out.iter().find(|(_, a, _)| a == &attrs("GET")).unwrap();
        let Point::Hist(p) = &get.2 else { panic!() };
        assert_eq!(p.count, 2);
    }

    /// The reused-buffer path lands where `record` does, and keeps the buffer.
    #[test]
    fn record_in_matches_record() {
        let (mut a, mut b) = (hist(), hist());
        let mut buf = AttrSet::with_capacity(4);
        for (m, v) in [
            ("GET", 0.2),
            ("PUT", 0.01),
            ("GET", 3.0),
            ("POST", 0.3),
            ("X", 0.1),
        ] {
            a.record(1, attrs(m), v);
            buf.clear();
            buf.push(("http.request.method", Val::from(m)));
            b.record_in(1, &mut buf, v);
            assert_eq!(buf.len(), 1, "the buffer is handed back");
        }
        buf.clear();
        buf.push(("http.request.method", Val::fixed("GET")));
        b.record_in(1, &mut buf, f64::NAN);
        a.record(1, attrs("GET"), 0.5);
        b.record_in(1, &mut buf, 0.5);
        assert_eq!(a.collect(false), b.collect(false));
        assert_eq!((a.folded, b.folded), (1, 1));
    }

    #[test]
    fn sums_add_and_ignore_histogram_calls() {
        let mut s = Instrument::new(
            Descriptor {
                name: "c",
                unit: "1",
                description: "",
                shape: Shape::Sum,
            },
            10,
        );
        s.add(1, vec![], 3);
        s.add(1, vec![], 4);
        s.record(1, vec![], 1.0);
        assert_eq!(s.collect(false), vec![(1, vec![], Point::Sum(7))]);
    }
}
