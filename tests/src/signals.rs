//! The metrics and logs side of the test receiver, as the metrics and logs tests read it: a
//! snapshot of the requests [`crate::receiver::Receiver`] accepted (over gRPC or HTTP; see
//! [`crate::receiver::Receiver::signals`]), flattened into metrics and log records with their
//! Resource, and small helpers to look into them. The services themselves live in the receiver.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data, number_data_point};

/// The metrics and logs requests accepted so far, in arrival order.
#[derive(Default, Clone)]
pub struct Received {
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub logs: Vec<ExportLogsServiceRequest>,
}

/// One received metric with the resource it was sent under.
#[derive(Clone, Debug)]
pub struct ReceivedMetric {
    pub metric: Metric,
    pub resource: Vec<KeyValue>,
}

/// One received log record with its resource.
#[derive(Clone, Debug)]
pub struct ReceivedLog {
    pub record: LogRecord,
    pub resource: Vec<KeyValue>,
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// A string attribute of `attrs`.
pub fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// An integer attribute of `attrs`.
pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match value(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

impl ReceivedLog {
    pub fn body(&self) -> String {
        match self.record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    }
    pub fn attr_str(&self, key: &str) -> Option<String> {
        attr_str(&self.record.attributes, key)
    }
    pub fn trace_id_hex(&self) -> String {
        self.record
            .trace_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
    pub fn span_id_hex(&self) -> String {
        self.record
            .span_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl ReceivedMetric {
    /// Sum of a counter's data points whose attributes satisfy `filter`.
    pub fn sum_where(&self, filter: impl Fn(&[KeyValue]) -> bool) -> i64 {
        match &self.metric.data {
            Some(Data::Sum(s)) => s
                .data_points
                .iter()
                .filter(|p| filter(&p.attributes))
                .map(|p| match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i,
                    Some(number_data_point::Value::AsDouble(d)) => d as i64,
                    None => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

impl Received {
    /// Every metric of every request, flattened, in arrival order.
    pub fn all_metrics(&self) -> Vec<ReceivedMetric> {
        let mut out = Vec::new();
        for req in &self.metrics {
            for rm in &req.resource_metrics {
                let resource = rm
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        out.push(ReceivedMetric {
                            metric: m.clone(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every log record, flattened, in arrival order.
    pub fn all_logs(&self) -> Vec<ReceivedLog> {
        let mut out = Vec::new();
        for req in &self.logs {
            for rl in &req.resource_logs {
                let resource = rl
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for sl in &rl.scope_logs {
                    for r in &sl.log_records {
                        out.push(ReceivedLog {
                            record: r.clone(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}
