//! The metrics signal: aggregation of finished spans and capture events into OTLP metrics.
//!
//! - [`red`] — request duration histograms per protocol (HTTP, database, gRPC, DNS) from spans;
//! - [`net`] — bytes, connections and retransmits per process and peer from capture events;
//! - [`health`] — ztrace's own counters (read, lost, exported, queued);
//! - [`series`] — the storage: explicit-bucket histograms and sums with a cardinality cap;
//! - [`otlp`] — model → `opentelemetry-proto` (shared with the logs signal).
//!
//! [`Metrics`] is fed by the pipeline (it does no I/O, reads no clock) and collected by the
//! daemon every export interval into one `ExportMetricsServiceRequest`: one `ResourceMetrics` per
//! traced process (the same Resource as its spans) plus one for ztrace itself (self metrics).
//!
//! Temporality follows `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `cumulative`
//! (default) keeps every series since start; `delta` reports what changed since the previous
//! collection and then forgets the series (memory stays proportional to one interval's traffic);
//! `lowmemory` is delta for the synchronous instruments (histograms, the network counters) and
//! cumulative for the observed self-metric counters, as the OTLP exporter specification says.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point::Value,
};
use rustc_hash::FxHashMap as HashMap;
use ztrace_abi::{ConnEvent, DataEvent, NetEvent};

use super::health::Health;
use super::series::{Instrument, Point, Shape};
use super::{net, otlp, red, series};
use crate::model::Span;
use crate::semconv::resource::ProcessTable;

/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`, resolved by [`crate::config`].
pub use crate::config::Temporality;

impl Temporality {
    /// Delta for synchronous instruments (histograms, counters fed by events)?
    fn sync_delta(self) -> bool {
        self != Temporality::Cumulative
    }
    /// Delta for observed counters (self metrics)?
    fn observed_delta(self) -> bool {
        self == Temporality::Delta
    }
}

/// Settings of the metrics signal, as [`crate::config`] resolved them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
    pub interval: Duration,
    pub temporality: Temporality,
    /// Most distinct series per instrument before new attribute sets fold into overflow.
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval: Duration::from_millis(60_000),
            temporality: Temporality::Cumulative,
            max_series: crate::config::DEFAULT_MAX_SERIES,
        }
    }
}

impl MetricsConfig {
    pub fn from_config(config: &crate::config::Config) -> MetricsConfig {
        MetricsConfig {
            interval: config.metric_export_interval,
            temporality: config.temporality,
            max_series: config.metric_max_series,
        }
    }
}

/// Aggregated metrics of every traced process.
pub struct Metrics {
    pub cfg: MetricsConfig,
    red: Vec<Instrument>,
    net: Vec<Instrument>,
    io: net::IoBytes,
    /// Start of cumulative series.
    start_unix_ns: u64,
    /// Start of the current delta interval.
    last_collect_unix_ns: u64,
    last_health: Health,
    /// Processes that exited: their series are reported once more, then forgotten.
    gone: Vec<u32>,
    /// The attribute buffer each span's RED measurement is built in (see `red::measure_into`).
    attrs: series::AttrSet,
}

impl Metrics {
    pub fn new(cfg: MetricsConfig, now_unix_ns: u64) -> Self {
        let make = |d: &[series::Descriptor]| -> Vec<Instrument> {
            d.iter()
                .map(|d| Instrument::new(*d, cfg.max_series))
                .collect()
        };
        Metrics {
            cfg,
            red: make(&red::INSTRUMENTS),
            net: make(&net::INSTRUMENTS),
            io: net::IoBytes::default(),
            start_unix_ns: now_unix_ns,
            last_collect_unix_ns: now_unix_ns,
            last_health: Health::default(),
            gone: Vec::new(),
            attrs: Vec::with_capacity(8),
        }
    }

    /// Moves the start of every series to `now_unix_ns`, before the first collection: a replay
    /// learns when its recording began from the first record that carries a time.
    pub fn set_start(&mut self, now_unix_ns: u64) {
        self.start_unix_ns = now_unix_ns;
        self.last_collect_unix_ns = now_unix_ns;
    }

    pub fn on_span(&mut self, span: &Span) {
        if let Some((which, v)) = red::measure_into(span, &mut self.attrs) {
            self.red[which].record_in(span.pid, &mut self.attrs, v);
        }
    }

    pub fn on_data(&mut self, ev: &DataEvent) {
        self.io.on_data(&mut self.net, ev);
    }

    pub fn on_conn(&mut self, ev: &ConnEvent) {
        net::on_conn(&mut self.net, ev);
    }

    pub fn on_net(&mut self, ev: &NetEvent) {
        net::on_net(&mut self.net, ev);
    }

    pub fn process_exited(&mut self, pid: u32) {
        if self.gone.len() < 4096 {
            self.gone.push(pid);
        }
    }

    /// Measurements folded into overflow series so far.
    pub fn folded(&self) -> u64 {
        self.red.iter().chain(&self.net).map(|i| i.folded).sum()
    }

    /// Series held now (all instruments).
    pub fn series(&self) -> usize {
        self.red.iter().chain(&self.net).map(Instrument::len).sum()
    }

    /// Everything to export now: traced processes' metrics under their Resources, self metrics
    /// under `self_pid`'s (ztrace's). Returns the request and its number of data points.
    pub(crate) fn collect(
        &mut self,
        now_unix_ns: u64,
        health: &Health,
        self_pid: u32,
        table: &ProcessTable,
    ) -> (ExportMetricsServiceRequest, usize) {
        self.io.flush(&mut self.net);
        let delta = self.cfg.temporality.sync_delta();
        let start = if delta {
            self.last_collect_unix_ns
        } else {
            self.start_unix_ns
        };
        let temporality = if delta {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        } as i32;
        let mut per_pid: HashMap<u32, Vec<Metric>> = HashMap::default();
        let mut points = 0usize;
        for inst in self.red.iter_mut().chain(self.net.iter_mut()) {
            let mut by_pid: HashMap<u32, Vec<(series::AttrSet, Point)>> = HashMap::default();
            for (pid, attrs, point) in inst.collect(delta) {
                by_pid.entry(pid).or_default().push((attrs, point));
            }
            for (pid, list) in by_pid {
                points += list.len();
                per_pid.entry(pid).or_default().push(to_metric(
                    inst,
                    list,
                    start,
                    now_unix_ns,
                    temporality,
                ));
            }
        }
        for pid in self.gone.drain(..) {
            for inst in self.red.iter_mut().chain(self.net.iter_mut()) {
                inst.retain_pids(|p| p != pid);
            }
        }
        let (self_start, previous) = if self.cfg.temporality.observed_delta() {
            (self.last_collect_unix_ns, Some(&self.last_health))
        } else {
            (self.start_unix_ns, None)
        };
        let own = health.to_metrics(previous, self_start, now_unix_ns);
        points += own
            .iter()
            .map(|m| match &m.data {
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Gauge(g)) => g.data_points.len(),
                _ => 0,
            })
            .sum::<usize>();
        self.last_health = *health;
        self.last_collect_unix_ns = now_unix_ns;
        let mut pids: Vec<u32> = per_pid.keys().copied().collect();
        pids.sort_unstable();
        let mut all: Vec<ResourceMetrics> = pids
            .into_iter()
            .map(|pid| resource_metrics(pid, per_pid.remove(&pid).unwrap_or_default(), table))
            .collect();
        all.push(resource_metrics(self_pid, own, table));
        (
            ExportMetricsServiceRequest {
                resource_metrics: all,
            },
            points,
        )
    }
}

fn resource_metrics(pid: u32, metrics: Vec<Metric>, table: &ProcessTable) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(otlp::resource(pid, table)),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(otlp::scope()),
            metrics,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn to_metric(
    inst: &Instrument,
    list: Vec<(series::AttrSet, Point)>,
    start: u64,
    now: u64,
    temporality: i32,
) -> Metric {
    let data = match inst.desc.shape {
        Shape::Histogram(bounds) => Data::Histogram(Histogram {
            data_points: list
                .into_iter()
                .filter_map(|(attrs, p)| match p {
                    Point::Hist(h) => Some(HistogramDataPoint {
                        attributes: otlp::attr_key_values(&attrs),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.count,
                        sum: Some(h.sum),
                        bucket_counts: h.buckets,
                        explicit_bounds: bounds.to_vec(),
                        min: (h.count > 0).then_some(h.min),
                        max: (h.count > 0).then_some(h.max),
                        ..Default::default()
                    }),
                    Point::Sum(_) => None,
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
        Shape::Sum => Data::Sum(Sum {
            data_points: list
                .into_iter()
                .filter_map(|(attrs, p)| match p {
                    Point::Sum(v) => Some(NumberDataPoint {
                        attributes: otlp::attr_key_values(&attrs),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        value: Some(Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX))),
                        ..Default::default()
                    }),
                    Point::Hist(_) => None,
                })
                .collect(),
            aggregation_temporality: temporality,
            is_monotonic: true,
        }),
    };
    Metric {
        name: inst.desc.name.to_string(),
        description: inst.desc.description.to_string(),
        unit: inst.desc.unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{process, server_span};

    fn table() -> ProcessTable {
        let mut t = ProcessTable::new(Some("host".into()));
        t.upsert(std::sync::Arc::new(process(1234, "shop")));
        t
    }

    fn hist_points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<HistogramDataPoint> {
        req.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == name)
            .flat_map(|m| match &m.data {
                Some(Data::Histogram(h)) => h.data_points.clone(),
                _ => vec![],
            })
            .collect()
    }

    fn sum_value(req: &ExportMetricsServiceRequest, name: &str) -> (i64, i32) {
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            if m.name == name
                && let Some(Data::Sum(s)) = &m.data
            {
                let v = s
                    .data_points
                    .iter()
                    .map(|p| match p.value {
                        Some(Value::AsInt(i)) => i,
                        _ => 0,
                    })
                    .sum();
                return (v, s.aggregation_temporality);
            }
        }
        (-1, 0)
    }

    fn run(temporality: Temporality) -> Vec<ExportMetricsServiceRequest> {
        let mut m = Metrics::new(
            MetricsConfig {
                temporality,
                ..Default::default()
            },
            1_000,
        );
        let t = table();
        let mut out = Vec::new();
        let mut health = Health::default();
        for round in 1..=2u64 {
            m.on_span(&server_span());
            health.events_read = 10 * round;
            out.push(m.collect(2_000 * round, &health, 99, &t).0);
        }
        out
    }

    #[test]
    fn cumulative_histograms_grow_and_keep_their_start() {
        let reqs = run(Temporality::Cumulative);
        let p = hist_points(&reqs[1], "http.server.request.duration");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].count, 2);
        assert_eq!(p[0].start_time_unix_nano, 1_000);
        assert_eq!(p[0].explicit_bounds, red::HTTP_BUCKETS);
        assert_eq!(p[0].bucket_counts.len(), red::HTTP_BUCKETS.len() + 1);
        // 12.3 ms lands in (0.01, 0.025].
        assert_eq!(p[0].bucket_counts[2], 2);
        assert_eq!(
            sum_value(&reqs[1], "ztrace.events.read"),
            (20, AggregationTemporality::Cumulative as i32)
        );
        // Resource: the traced process's, and ztrace's own for self metrics.
        let rm = &reqs[1].resource_metrics;
        assert_eq!(rm.len(), 2);
        let service = |r: &ResourceMetrics| {
            r.resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .cloned()
        };
        assert!(format!("{:?}", service(&rm[0])).contains("shop"));
    }

    #[test]
    fn delta_reports_each_interval_alone() {
        let reqs = run(Temporality::Delta);
        let p = hist_points(&reqs[1], "http.server.request.duration");
        assert_eq!((p[0].count, p[0].start_time_unix_nano), (1, 2_000));
        assert_eq!(
            sum_value(&reqs[1], "ztrace.events.read"),
            (10, AggregationTemporality::Delta as i32)
        );
    }

    #[test]
    fn lowmemory_is_delta_for_histograms_and_cumulative_for_self_counters() {
        let reqs = run(Temporality::LowMemory);
        assert_eq!(
            hist_points(&reqs[1], "http.server.request.duration")[0].count,
            1
        );
        assert_eq!(
            sum_value(&reqs[1], "ztrace.events.read"),
            (20, AggregationTemporality::Cumulative as i32)
        );
    }

    #[test]
    fn exited_processes_are_reported_once_more_then_forgotten() {
        let mut m = Metrics::new(MetricsConfig::default(), 0);
        let t = table();
        m.on_span(&server_span());
        m.process_exited(1234);
        let (req, _) = m.collect(1, &Health::default(), 99, &t);
        assert_eq!(hist_points(&req, "http.server.request.duration").len(), 1);
        let (req, _) = m.collect(2, &Health::default(), 99, &t);
        assert!(hist_points(&req, "http.server.request.duration").is_empty());
    }
}
