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
/// How the linker decided a parent, or why it made none.
const LINK_OUTCOME: &str = "ztrace.link.outcome";
/// What the linker did with a cross-process timestamp disagreement.
const STAMP: &str = "ztrace.link.timestamp";

/// One self-metric counter and its points (attributes, total).
struct Counter {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    points: Vec<(AttrSet, u64)>,
}

/// A snapshot of every counter the self metrics report (totals since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Records read from the ring buffer.
    pub events_read: u64,
    /// Events lost in the kernel: ring buffer full.
    pub dropped_ring_full: u64,
    /// Events lost in the kernel: per-thread argument map full.
    pub dropped_args_full: u64,
    /// OpenSSL plaintext dropped in the kernel: no socket known for its `SSL *` (a memory-BIO
    /// stack before the evidence named one; wrong connections are not guessed).
    pub dropped_tls_no_socket: u64,
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
    /// Waiting in an export queue now, per signal (spans, metric data points, log records).
    pub spans_queued: u64,
    pub metrics_queued: u64,
    pub logs_queued: u64,
    /// Measurements folded into overflow series.
    pub metric_overflow: u64,
    /// Log records dropped before export (held-record buffer full).
    pub logs_dropped: u64,
    /// Connections no longer parsed because the parsers' memory budget was full.
    pub parser_shed: u64,
    /// Bytes the protocol parsers hold now (bounded by the budget).
    pub parser_bytes: u64,
    /// The linker's decisions (see `link::LinkStats`).
    pub links: LinkOutcomes,
    /// Leave out the exporter's counters (exported, queue full, failures, queue depth): a
    /// replay's, which tell how fast the replaying machine's collector took the output, not
    /// anything about the recording, and would differ run to run.
    pub omit_exporter: bool,
}

/// The self metrics that count the exporter's work (left out with `omit_exporter`).
const EXPORTER_METRICS: [&str; 6] = [
    "ztrace.queue.dropped",
    "ztrace.spans.exported",
    "ztrace.metrics.exported",
    "ztrace.logs.exported",
    "ztrace.export.failures",
    "ztrace.queue.depth",
];

/// Links made by the evidence that made them, cases left unlinked by reason, and cross-process
/// timestamp adjustments: the linker's counters, copied (this layer does not see the linker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkOutcomes {
    pub traceparent: u64,
    /// From the thread's causal context, request side.
    pub thread: u64,
    /// From the response side alone.
    pub response: u64,
    pub cross_process: u64,
    pub content: u64,
    pub contradicted: u64,
    pub outlived_parent: u64,
    pub mixed_inputs: u64,
    pub no_evidence: u64,
    pub stamps_adjusted: u64,
    pub stamps_left: u64,
    /// Cross-host links (`--peer-listen`), None when off: server spans linked to another host's
    /// call, and those left roots by why no answer matched.
    pub cross_host: Option<CrossHostOutcomes>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrossHostOutcomes {
    pub linked: u64,
    pub unknown: u64,
    pub no_agent: u64,
    pub timeout: u64,
    pub refused: u64,
    pub ambiguous: u64,
}

impl Health {
    pub fn any_loss(&self) -> u64 {
        self.dropped_ring_full
            + self.dropped_args_full
            + self.dropped_tls_no_socket
            + self.spans_queue_dropped
            + self.metrics_queue_dropped
            + self.logs_queue_dropped
            + self.spans_failed
            + self.metrics_failed
            + self.logs_failed
            + self.logs_dropped
            + self.parser_shed
    }

    /// Every counter, with its points.
    fn counters(&self) -> Vec<Counter> {
        let on = |k: &'static str, v: &str| -> AttrSet { vec![(k, Val::from(v))] };
        vec![
            Counter {
                name: "ztrace.events.read",
                unit: "{event}",
                description: "Kernel records read from the ring buffer.",
                points: vec![(vec![], self.events_read)],
            },
            Counter {
                name: "ztrace.events.dropped",
                unit: "{event}",
                description: "Kernel events lost before they reached ztrace.",
                points: vec![
                    (on(REASON, "ring_buffer_full"), self.dropped_ring_full),
                    (on(REASON, "arg_map_full"), self.dropped_args_full),
                    (on(REASON, "tls_no_socket"), self.dropped_tls_no_socket),
                ],
            },
            Counter {
                name: "ztrace.queue.dropped",
                unit: "{item}",
                description: "Items refused because an export queue was full.",
                points: vec![
                    (on(SIGNAL, "spans"), self.spans_queue_dropped),
                    (on(SIGNAL, "metrics"), self.metrics_queue_dropped),
                    (on(SIGNAL, "logs"), self.logs_queue_dropped),
                ],
            },
            Counter {
                name: "ztrace.spans.exported",
                unit: "{span}",
                description: "Spans the collector accepted.",
                points: vec![(vec![], self.spans_exported)],
            },
            Counter {
                name: "ztrace.metrics.exported",
                unit: "{data_point}",
                description: "Metric data points the collector accepted.",
                points: vec![(vec![], self.metric_points_exported)],
            },
            Counter {
                name: "ztrace.logs.exported",
                unit: "{log_record}",
                description: "Log records the collector accepted.",
                points: vec![(vec![], self.logs_exported)],
            },
            Counter {
                name: "ztrace.export.failures",
                unit: "{item}",
                description: "Items given up on after failed export attempts.",
                points: vec![
                    (on(SIGNAL, "spans"), self.spans_failed),
                    (on(SIGNAL, "metrics"), self.metrics_failed),
                    (on(SIGNAL, "logs"), self.logs_failed),
                ],
            },
            Counter {
                name: "ztrace.metrics.overflow",
                unit: "{measurement}",
                description: "Measurements folded into an overflow series (otel.metric.overflow) by the cardinality cap.",
                points: vec![(vec![], self.metric_overflow)],
            },
            Counter {
                name: "ztrace.links",
                unit: "{decision}",
                description: "Parent decisions of the linker: links by the evidence that made them, and calls or requests left unlinked (abstained_*) by the reason the evidence was ambiguous.",
                points: vec![
                    (on(LINK_OUTCOME, "traceparent"), self.links.traceparent),
                    (on(LINK_OUTCOME, "thread"), self.links.thread),
                    (on(LINK_OUTCOME, "response"), self.links.response),
                    (on(LINK_OUTCOME, "cross_process"), self.links.cross_process),
                    (on(LINK_OUTCOME, "content"), self.links.content),
                    (
                        on(LINK_OUTCOME, "abstained_contradicted"),
                        self.links.contradicted,
                    ),
                    (
                        on(LINK_OUTCOME, "abstained_outlived_parent"),
                        self.links.outlived_parent,
                    ),
                    (
                        on(LINK_OUTCOME, "abstained_mixed_inputs"),
                        self.links.mixed_inputs,
                    ),
                    (
                        on(LINK_OUTCOME, "abstained_no_evidence"),
                        self.links.no_evidence,
                    ),
                ]
                .into_iter()
                .chain(self.links.cross_host.into_iter().flat_map(|x| {
                    [
                        (on(LINK_OUTCOME, "cross_host"), x.linked),
                        (on(LINK_OUTCOME, "unlinked_peer_unknown"), x.unknown),
                        (on(LINK_OUTCOME, "unlinked_no_peer_agent"), x.no_agent),
                        (on(LINK_OUTCOME, "unlinked_peer_timeout"), x.timeout),
                        (on(LINK_OUTCOME, "unlinked_peer_refused"), x.refused),
                        (on(LINK_OUTCOME, "unlinked_peer_ambiguous"), x.ambiguous),
                    ]
                }))
                .collect(),
            },
            Counter {
                name: "ztrace.link.timestamps",
                unit: "{timestamp}",
                description: "Cross-process timestamp disagreements between a call and the request it reached: adjusted (within what the capture points explain) or left as captured.",
                points: vec![
                    (on(STAMP, "adjusted"), self.links.stamps_adjusted),
                    (on(STAMP, "left"), self.links.stamps_left),
                ],
            },
            Counter {
                name: "ztrace.logs.dropped",
                unit: "{log_record}",
                description: "Log lines dropped before export because the held-record buffer was full.",
                points: vec![(vec![], self.logs_dropped)],
            },
            Counter {
                name: "ztrace.connections.shed",
                unit: "{connection}",
                description: "Connections no longer parsed because the protocol parsers' memory budget (memory.parser_budget) was full: what they buffered was dropped and their open exchanges ended with an error.",
                points: vec![(on(REASON, "memory_budget"), self.parser_shed)],
            },
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
        for (i, c) in self.counters().into_iter().enumerate() {
            let data_points = c
                .points
                .into_iter()
                .enumerate()
                .map(|(j, (attrs, v))| {
                    let base = before.as_ref().map_or(0, |b| b[i].points[j].1);
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
                name: c.name.into(),
                unit: c.unit.into(),
                description: c.description.into(),
                data: Some(Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: temporality as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            });
        }
        let depth = [
            ("spans", self.spans_queued),
            ("metrics", self.metrics_queued),
            ("logs", self.logs_queued),
        ];
        out.push(Metric {
            name: "ztrace.parser.memory".into(),
            unit: "By".into(),
            description: "Bytes the protocol parsers hold for partial messages, header blocks and decoder tables, all connections together (bounded by memory.parser_budget).".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: now_ns,
                    value: Some(Value::AsInt(self.parser_bytes as i64)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        });
        out.push(Metric {
            name: "ztrace.queue.depth".into(),
            unit: "{item}".into(),
            description:
                "Items waiting in an export queue (spans, metric data points, log records).".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: depth
                    .into_iter()
                    .map(|(signal, n)| NumberDataPoint {
                        attributes: attr_key_values(&[(SIGNAL, Val::from(signal))]),
                        time_unix_nano: now_ns,
                        value: Some(Value::AsInt(n as i64)),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..Default::default()
        });
        if self.omit_exporter {
            out.retain(|m| !EXPORTER_METRICS.contains(&m.name.as_str()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(metrics: &[Metric], name: &str) -> Vec<(String, i64)> {
        let m = metrics.iter().find(|m| m.name == name).unwrap();
        let Some(Data::Sum(sum)) = &m.data else {
            panic!("{name} is not a sum");
        };
        sum.data_points
            .iter()
            .map(|p| {
                let attr = format!("{:?}", p.attributes[0].value);
                let Some(Value::AsInt(v)) = p.value else {
                    panic!("not an int")
                };
                (attr, v)
            })
            .collect()
    }

    #[test]
    fn link_outcomes_are_counted_by_reason() {
        let mut h = Health::default();
        h.links.cross_process = 7;
        h.links.content = 3;
        h.links.mixed_inputs = 2;
        h.links.stamps_left = 1;
        let before = h;
        h.links.mixed_inputs = 5;
        let cumulative = h.to_metrics(None, 1, 2);
        let links = points(&cumulative, "ztrace.links");
        assert_eq!(links.len(), 9);
        let value = |pts: &[(String, i64)], outcome: &str| {
            pts.iter()
                .find(|(a, _)| a.contains(&format!("\"{outcome}\"")))
                .unwrap()
                .1
        };
        assert_eq!(value(&links, "cross_process"), 7);
        assert_eq!(value(&links, "content"), 3);
        assert_eq!(value(&links, "abstained_mixed_inputs"), 5);
        assert_eq!(value(&links, "abstained_no_evidence"), 0);
        let stamps = points(&cumulative, "ztrace.link.timestamps");
        assert_eq!((value(&stamps, "adjusted"), value(&stamps, "left")), (0, 1));
        let delta = h.to_metrics(Some(&before), 1, 2);
        let links = points(&delta, "ztrace.links");
        assert_eq!(value(&links, "abstained_mixed_inputs"), 3);
        assert_eq!(value(&links, "cross_process"), 0);
        // Cross-host outcomes only when cross-host links are on.
        h.links.cross_host = Some(CrossHostOutcomes {
            linked: 4,
            no_agent: 2,
            ..Default::default()
        });
        let links = points(&h.to_metrics(None, 1, 2), "ztrace.links");
        assert_eq!(links.len(), 15);
        assert_eq!(value(&links, "cross_host"), 4);
        assert_eq!(value(&links, "unlinked_no_peer_agent"), 2);
    }

    #[test]
    fn connections_shed_by_the_parser_budget_are_counted_and_its_use_is_a_gauge() {
        let h = Health {
            parser_shed: 3,
            parser_bytes: 1234,
            ..Default::default()
        };
        assert_eq!(h.any_loss(), 3, "shed connections are a loss");
        let metrics = h.to_metrics(None, 1, 2);
        let shed = points(&metrics, "ztrace.connections.shed");
        assert_eq!(shed.len(), 1);
        assert!(shed[0].0.contains("memory_budget"), "{shed:?}");
        assert_eq!(shed[0].1, 3);
        let gauge = metrics
            .iter()
            .find(|m| m.name == "ztrace.parser.memory")
            .unwrap();
        let Some(Data::Gauge(g)) = &gauge.data else {
            panic!("ztrace.parser.memory is not a gauge");
        };
        assert_eq!(g.data_points[0].value, Some(Value::AsInt(1234)));
    }

    #[test]
    fn a_replay_leaves_the_exporter_counters_out() {
        let all = Health::default().to_metrics(None, 1, 2);
        for name in EXPORTER_METRICS {
            assert!(
                all.iter().any(|m| m.name == name),
                "{name} is a self metric"
            );
        }
        let replay = Health {
            events_read: 5,
            omit_exporter: true,
            ..Default::default()
        }
        .to_metrics(None, 1, 2);
        assert_eq!(replay.len(), all.len() - EXPORTER_METRICS.len());
        assert!(
            replay
                .iter()
                .all(|m| !EXPORTER_METRICS.contains(&m.name.as_str()))
        );
        let read = replay
            .iter()
            .find(|m| m.name == "ztrace.events.read")
            .unwrap();
        let Some(Data::Sum(sum)) = &read.data else {
            panic!("ztrace.events.read is not a sum");
        };
        assert_eq!(sum.data_points[0].value, Some(Value::AsInt(5)));
    }
}
