//! What the processors' decisions say outside: anomaly starts and ends as OTLP log records (an
//! event named `ztrace.anomaly`) and as console lines, and the self-metrics of tail sampling and
//! anomaly detection. Builds requests only; the exporter ships them through the same logs and
//! metrics queues as every other record.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum, metric::Data,
    number_data_point::Value as Num,
};
use opentelemetry_semantic_conventions::attribute as sc;

use crate::processors::anomaly::{Active, AnomalyEvent, DetectorStats};
use crate::processors::tail::TailStats;
use crate::semconv::resource::ProcessTable;
use crate::signals::logs::request_by_process;
use crate::signals::metrics::otlp::attr_key_values;
use crate::signals::metrics::series::{AttrSet, Val};

/// The event name of anomaly records.
pub const EVENT_NAME: &str = "ztrace.anomaly";
/// Attributes of anomaly records and metrics.
pub const STATE: &str = "ztrace.anomaly.state";
pub const OPERATION: &str = "ztrace.anomaly.operation";
pub const SIGNAL: &str = "ztrace.anomaly.signal";
pub const OBSERVED: &str = "ztrace.anomaly.observed";
pub const BASELINE: &str = "ztrace.anomaly.baseline";
pub const SCORE: &str = "ztrace.anomaly.score";
pub const EXEMPLARS: &str = "ztrace.anomaly.exemplar_trace_ids";
/// Attributes of the tail sampling self-metrics.
const DECISION: &str = "ztrace.tail.decision";
const POLICY: &str = "ztrace.tail.policy";
const VOTE: &str = "ztrace.tail.vote";
const SHARED: &str = "ztrace.tail.shared";

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn shown(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// One readable line per event, for the terminal.
pub fn console_line(e: &AnomalyEvent) -> String {
    let value = |v: f64| match e.signal.unit() {
        "s" => format!("{:.1} ms", v * 1000.0),
        _ => format!("{:.2}%", v * 100.0),
    };
    let traces: Vec<String> = e.exemplars.iter().map(|t| t.to_string()).collect();
    if e.started {
        format!(
            "anomaly START {} {} {}: {} vs baseline {} (z = {:.1}); traces {}",
            e.service,
            e.operation,
            e.signal.name(),
            value(e.observed),
            value(e.baseline),
            e.score,
            if traces.is_empty() {
                "-".into()
            } else {
                traces.join(" ")
            }
        )
    } else {
        format!(
            "anomaly END   {} {} {}: back near baseline {}",
            e.service,
            e.operation,
            e.signal.name(),
            value(e.baseline)
        )
    }
}

/// Events as one OTLP logs request, under the Resource of a process of the service.
pub(crate) fn to_request(
    events: &[AnomalyEvent],
    mono_to_unix: i128,
    table: &ProcessTable,
) -> ExportLogsServiceRequest {
    let mut records = Vec::with_capacity(events.len());
    for e in events {
        let ts = (e.at_ns as i128 + mono_to_unix).max(0) as u64;
        let exemplars = e
            .exemplars
            .iter()
            .map(|t| AnyValue {
                value: Some(Value::StringValue(t.to_string())),
            })
            .collect();
        let record = LogRecord {
            time_unix_nano: ts,
            observed_time_unix_nano: ts,
            event_name: EVENT_NAME.into(),
            severity_number: if e.started {
                SeverityNumber::Warn
            } else {
                SeverityNumber::Info
            } as i32,
            severity_text: if e.started { "WARN" } else { "INFO" }.into(),
            body: Some(AnyValue {
                value: Some(Value::StringValue(console_line(e))),
            }),
            attributes: vec![
                kv(
                    STATE,
                    Value::StringValue(if e.started { "start" } else { "end" }.into()),
                ),
                kv(sc::SERVICE_NAME, Value::StringValue(e.service.clone())),
                kv(OPERATION, Value::StringValue(e.operation.clone())),
                kv(SIGNAL, Value::StringValue(e.signal.name().into())),
                kv(OBSERVED, Value::DoubleValue(shown(e.observed))),
                kv(BASELINE, Value::DoubleValue(shown(e.baseline))),
                kv(SCORE, Value::DoubleValue(shown(e.score))),
                kv(
                    EXEMPLARS,
                    Value::ArrayValue(ArrayValue { values: exemplars }),
                ),
            ],
            // The first exemplar, so a backend links the record to a trace.
            trace_id: e
                .exemplars
                .first()
                .map(|t| t.0.to_vec())
                .unwrap_or_default(),
            ..Default::default()
        };
        records.push((e.pid, record));
    }
    request_by_process(records, table)
}

fn sum(
    name: &str,
    unit: &str,
    description: &str,
    points: Vec<(AttrSet, Num)>,
    at: (u64, u64),
) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(Data::Sum(Sum {
            data_points: points
                .into_iter()
                .map(|(attrs, value)| NumberDataPoint {
                    attributes: attr_key_values(&attrs),
                    start_time_unix_nano: at.0,
                    time_unix_nano: at.1,
                    value: Some(value),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn gauge(
    name: &str,
    unit: &str,
    description: &str,
    points: Vec<(AttrSet, Num)>,
    now: u64,
) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: points
                .into_iter()
                .map(|(attrs, value)| NumberDataPoint {
                    attributes: attr_key_values(&attrs),
                    time_unix_nano: now,
                    value: Some(value),
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    }
}

/// Self-metrics of tail sampling (cumulative since `start_ns`).
pub fn tail_metrics(t: &TailStats, start_ns: u64, now_ns: u64) -> Vec<Metric> {
    let on = |k: &'static str, v: &str| -> AttrSet { vec![(k, Val::from(v))] };
    let int = |v: u64| Num::AsInt(v as i64);
    let at = (start_ns, now_ns);
    let decided = t.traces_kept + t.traces_dropped;
    let v = &t.votes;
    vec![
        sum(
            "ztrace.tail.traces",
            "{trace}",
            "Local traces decided by tail sampling, kept or dropped.",
            vec![
                (on(DECISION, "kept"), int(t.traces_kept)),
                (on(DECISION, "dropped"), int(t.traces_dropped)),
            ],
            at,
        ),
        sum(
            "ztrace.tail.spans",
            "{span}",
            "Spans that followed their trace's tail decision.",
            vec![
                (on(DECISION, "kept"), int(t.spans_kept)),
                (on(DECISION, "dropped"), int(t.spans_dropped)),
            ],
            at,
        ),
        sum(
            "ztrace.tail.policy.sampled",
            "{trace}",
            "Traces each tail sampling policy voted to keep (a trace may be kept by several).",
            t.by_policy
                .iter()
                .map(|(name, n)| (on(POLICY, name), int(*n)))
                .collect(),
            at,
        ),
        sum(
            "ztrace.tail.overflow",
            "{trace}",
            "Traces decided before they were complete because the tail sampling buffer was full.",
            vec![(vec![], int(t.overflow))],
            at,
        ),
        sum(
            "ztrace.tail.changes",
            "{change}",
            "Remote changes of the tail sampling policies (switching it off included).",
            vec![(vec![], int(t.changes))],
            at,
        ),
        sum(
            "ztrace.tail.retired_early",
            "{trace}",
            "Traces decided before their due time because a tail sampling change came while the policies before the last change still held them.",
            vec![(vec![], int(t.retired_early))],
            at,
        ),
        sum(
            "ztrace.tail.late_spans",
            "{span}",
            "Spans that arrived after their trace was decided (they got its decision).",
            vec![(vec![], int(t.late_spans))],
            at,
        ),
        sum(
            "ztrace.tail.late_spans_off",
            "{span}",
            "Late spans that got their trace's remembered decision while tail sampling was switched off (also in ztrace.tail.late_spans).",
            vec![(vec![], int(t.late_spans_off))],
            at,
        ),
        sum(
            "ztrace.tail.verdicts_forgotten",
            "{trace}",
            "Remembered decisions forgotten while tail sampling was switched off (their remember window ended).",
            vec![(vec![], int(t.verdicts_forgotten))],
            at,
        ),
        sum(
            "ztrace.tail.decision.wait",
            "s",
            "Total time from a trace's first span to its decision (divide by ztrace.tail.traces for the mean).",
            vec![(vec![], Num::AsDouble(t.wait_sum_ns as f64 / 1e9))],
            at,
        ),
        gauge(
            "ztrace.tail.decision.wait.max",
            "s",
            "Longest time a trace waited for its decision.",
            vec![(
                vec![],
                Num::AsDouble(if decided == 0 {
                    0.0
                } else {
                    t.wait_max_ns as f64 / 1e9
                }),
            )],
            now_ns,
        ),
        gauge(
            "ztrace.tail.held",
            "{item}",
            "Traces and spans held for a tail decision now, and decisions remembered for late spans.",
            vec![
                (on("ztrace.tail.item", "traces"), int(t.held_traces)),
                (on("ztrace.tail.item", "spans"), int(t.held_spans)),
                (
                    on("ztrace.tail.item", "spans_awaiting_votes"),
                    int(v.parked_spans),
                ),
                (on("ztrace.tail.item", "verdicts"), int(t.remembered)),
            ],
            now_ns,
        ),
        sum(
            "ztrace.tail.votes",
            "{vote}",
            "Tail sampling votes exchanged with the agents on other hosts that share a trace.",
            vec![
                (on(VOTE, "sent"), int(v.votes_sent)),
                (on(VOTE, "received"), int(v.votes_received)),
                (on(VOTE, "refused"), int(v.refused)),
                (on(VOTE, "late_keep"), int(v.late_keeps)),
            ],
            at,
        ),
        sum(
            "ztrace.tail.shared_traces",
            "{trace}",
            "Traces shared with agents on other hosts, and what their votes did.",
            vec![
                (on(SHARED, "shared"), int(v.shared_traces)),
                (on(SHARED, "kept_by_peer"), int(v.kept_by_peer)),
                (on(SHARED, "wait_expired"), int(v.wait_expired)),
                (on(SHARED, "overflow"), int(v.overflow)),
            ],
            at,
        ),
    ]
}

/// Self-metrics of anomaly detection: anomalies started and ended, and the signals in anomaly now
/// (`ztrace.anomaly.active` = 1 with their score in `ztrace.anomaly.score`).
pub fn anomaly_metrics(
    s: &DetectorStats,
    active: &[Active],
    start_ns: u64,
    now_ns: u64,
) -> Vec<Metric> {
    let on = |k: &'static str, v: &str| -> AttrSet { vec![(k, Val::from(v))] };
    let int = |v: u64| Num::AsInt(v as i64);
    let key = |a: &Active| -> AttrSet {
        vec![
            (sc::SERVICE_NAME, Val::from(a.service.as_str())),
            (OPERATION, Val::from(a.operation.as_str())),
            (SIGNAL, Val::from(a.signal.name())),
        ]
    };
    vec![
        sum(
            "ztrace.anomalies",
            "{anomaly}",
            "Anomalies started and ended (a signal of an operation leaving or returning to its baseline).",
            vec![
                (on(STATE, "start"), int(s.started)),
                (on(STATE, "end"), int(s.ended)),
            ],
            (start_ns, now_ns),
        ),
        gauge(
            "ztrace.anomaly.active",
            "1",
            "Signals in anomaly now (1 each).",
            active.iter().map(|a| (key(a), Num::AsInt(1))).collect(),
            now_ns,
        ),
        gauge(
            "ztrace.anomaly.score",
            "1",
            "Z-score of the last judged window of each signal in anomaly.",
            active
                .iter()
                .map(|a| (key(a), Num::AsDouble(shown(a.score))))
                .collect(),
            now_ns,
        ),
        gauge(
            "ztrace.anomaly.operations",
            "{operation}",
            "Operations with a baseline; spans of operations beyond the limit are counted in ztrace.anomaly.untracked.",
            vec![(vec![], int(s.operations))],
            now_ns,
        ),
        sum(
            "ztrace.anomaly.untracked",
            "{span}",
            "Spans not measured because anomaly.max_operations was reached.",
            vec![(vec![], int(s.untracked_spans))],
            (start_ns, now_ns),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TraceId;
    use crate::processors::anomaly::SignalKind;
    use crate::testkit::process;
    use std::sync::Arc;

    fn event(started: bool) -> AnomalyEvent {
        AnomalyEvent {
            started,
            service: "shop".into(),
            operation: "GET /api/orders".into(),
            signal: SignalKind::LatencyP95,
            observed: 0.2,
            baseline: 0.02,
            score: 9.5,
            exemplars: vec![TraceId([1; 16]), TraceId([2; 16])],
            pid: 10,
            at_ns: 5,
        }
    }

    #[test]
    fn anomaly_records_carry_the_event_and_its_evidence() {
        let mut table = ProcessTable::new(Some("host".into()));
        table.upsert(Arc::new(process(10, "python3")));
        let req = to_request(&[event(true), event(false)], 100, &table);
        assert_eq!(req.resource_logs.len(), 1);
        let records = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!(r.event_name, "ztrace.anomaly");
        assert_eq!(r.time_unix_nano, 105);
        assert_eq!(r.trace_id, vec![1; 16]);
        let attr = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
                .unwrap()
        };
        assert_eq!(attr(STATE), Value::StringValue("start".into()));
        assert_eq!(attr(sc::SERVICE_NAME), Value::StringValue("shop".into()));
        assert_eq!(attr(SIGNAL), Value::StringValue("latency.p95".into()));
        assert_eq!(attr(OBSERVED), Value::DoubleValue(0.2));
        assert_eq!(attr(SCORE), Value::DoubleValue(9.5));
        let Value::ArrayValue(ids) = attr(EXEMPLARS) else {
            panic!("exemplars");
        };
        assert_eq!(ids.values.len(), 2);
        assert_eq!(
            console_line(&event(true)),
            format!(
                "anomaly START shop GET /api/orders latency.p95: 200.0 ms vs baseline 20.0 ms (z = 9.5); traces {} {}",
                TraceId([1; 16]),
                TraceId([2; 16])
            )
        );
        assert!(console_line(&event(false)).starts_with("anomaly END"));
    }

    #[test]
    fn self_metrics_name_policies_and_active_signals() {
        let t = TailStats {
            traces_kept: 3,
            traces_dropped: 7,
            by_policy: vec![("errors".into(), 3)],
            ..TailStats::default()
        };
        let m = tail_metrics(&t, 1, 2);
        let traces = m.iter().find(|m| m.name == "ztrace.tail.traces").unwrap();
        let Some(Data::Sum(s)) = &traces.data else {
            panic!()
        };
        assert_eq!(s.data_points[1].value, Some(Num::AsInt(7)));
        let active = vec![Active {
            service: "shop".into(),
            operation: "GET /".into(),
            signal: SignalKind::ErrorRate,
            score: 6.0,
        }];
        let a = anomaly_metrics(&DetectorStats::default(), &active, 1, 2);
        let g = a
            .iter()
            .find(|m| m.name == "ztrace.anomaly.active")
            .unwrap();
        let Some(Data::Gauge(g)) = &g.data else {
            panic!()
        };
        assert_eq!(g.data_points.len(), 1);
        assert_eq!(g.data_points[0].attributes.len(), 3);
    }
}
