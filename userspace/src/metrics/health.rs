//! ztrace's own health as metrics: what it read, lost, exported and holds. These are observed
//! from counters kept elsewhere (kernel per-CPU counters, pipeline and exporter statistics), so
//! they are asynchronous instruments: cumulative unless delta temporality was asked for.

use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum, metric::Data,
    number_data_point::Value,
};

use super::otlp::attr_key_values;
use super::series::{AttrSet, Val};

/// The attribute that says which signal or reason a self-metric point is about.
const SIGNAL: &str = "ztrace.signal";
const REASON: &str = "ztrace.drop.reason";

/// A snapshot of every counter the self metrics report (totals since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Records read from the ring buffer.
    pub events_read: u64,
    /// Events lost in the kernel: ring buffer full.
    pub dropped_ring_full: u64,
    /// Events lost in the kernel: per-thread argument map full.
    pub dropped_args_full: u64,
    pub spans_exported: u64,
    pub metric_points_exported: u64,
    pub logs_exported: u64,
    /// Refused because an export queue was full, per signal.
    pub spans_queue_dropped: u64,
    pub metrics_queue_dropped: u64,
    pub logs_queue_dropped: u64,
    /// Given up after failed export attempts, per signal (items).
    pub spans_failed: u64,
    pub metrics_failed: u64,
    pub logs_failed: u64,
    /// Spans waiting in the export queue now.
    pub queue_depth: u64,
    /// Measurements folded into overflow series.
    pub metric_overflow: u64,
    /// Log records dropped before export (held-record buffer full).
    pub logs_dropped: u64,
}

impl Health {
    pub fn any_loss(&self) -> u64 {
        self.dropped_ring_full
            + self.dropped_args_full
            + self.spans_queue_dropped
            + self.metrics_queue_dropped
            + self.logs_queue_dropped
            + self.spans_failed
            + self.metrics_failed
            + self.logs_failed
            + self.logs_dropped
    }

    /// (name, unit, description, [(attributes, value)]) of every counter.
    fn counters(
        &self,
    ) -> Vec<(
        &'static str,
        &'static str,
        &'static str,
        Vec<(AttrSet, u64)>,
    )> {
        let on = |k: &'static str, v: &str| -> AttrSet { vec![(k, Val::from(v))] };
        vec![
            (
                "ztrace.events.read",
                "{event}",
                "Kernel records read from the ring buffer.",
                vec![(vec![], self.events_read)],
            ),
            (
                "ztrace.events.dropped",
                "{event}",
                "Kernel events lost before they reached ztrace.",
                vec![
                    (on(REASON, "ring_buffer_full"), self.dropped_ring_full),
                    (on(REASON, "arg_map_full"), self.dropped_args_full),
                ],
            ),
            (
                "ztrace.queue.dropped",
                "{item}",
                "Items refused because an export queue was full.",
                vec![
                    (on(SIGNAL, "spans"), self.spans_queue_dropped),
                    (on(SIGNAL, "metrics"), self.metrics_queue_dropped),
                    (on(SIGNAL, "logs"), self.logs_queue_dropped),
                ],
            ),
            (
                "ztrace.spans.exported",
                "{span}",
                "Spans the collector accepted.",
                vec![(vec![], self.spans_exported)],
            ),
            (
                "ztrace.metrics.exported",
                "{data_point}",
                "Metric data points the collector accepted.",
                vec![(vec![], self.metric_points_exported)],
            ),
            (
                "ztrace.logs.exported",
                "{log_record}",
                "Log records the collector accepted.",
                vec![(vec![], self.logs_exported)],
            ),
            (
                "ztrace.export.failures",
                "{item}",
                "Items given up on after failed export attempts.",
                vec![
                    (on(SIGNAL, "spans"), self.spans_failed),
                    (on(SIGNAL, "metrics"), self.metrics_failed),
                    (on(SIGNAL, "logs"), self.logs_failed),
                ],
            ),
            (
                "ztrace.metrics.overflow",
                "{measurement}",
                "Measurements folded into an overflow series (otel.metric.overflow) by the cardinality cap.",
                vec![(vec![], self.metric_overflow)],
            ),
            (
                "ztrace.logs.dropped",
                "{log_record}",
                "Log lines dropped before export because the held-record buffer was full.",
                vec![(vec![], self.logs_dropped)],
            ),
        ]
    }

    /// The self metrics as OTLP. `previous` is set for delta temporality (report the change).
    pub fn to_metrics(&self, previous: Option<&Health>, start_ns: u64, now_ns: u64) -> Vec<Metric> {
        let temporality = if previous.is_some() {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        };
        let before = previous.map(Health::counters);
        let mut out = Vec::new();
        for (i, (name, unit, description, points)) in self.counters().into_iter().enumerate() {
            let data_points = points
                .into_iter()
                .enumerate()
                .map(|(j, (attrs, v))| {
                    let base = before.as_ref().map_or(0, |b| b[i].3[j].1);
                    NumberDataPoint {
                        attributes: attr_key_values(&attrs),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        value: Some(Value::AsInt(v.saturating_sub(base) as i64)),
                        ..Default::default()
                    }
                })
                .collect();
            out.push(Metric {
                name: name.into(),
                unit: unit.into(),
                description: description.into(),
                data: Some(Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: temporality as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            });
        }
        out.push(Metric {
            name: "ztrace.queue.depth".into(),
            unit: "{span}".into(),
            description: "Spans waiting in the export queue.".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: now_ns,
                    value: Some(Value::AsInt(self.queue_depth as i64)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        });
        out
    }
}
