//! A reference OTLP span encoder built from the `opentelemetry-proto` structs, to check the
//! hand-written wire encoder against (test builds only).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

use super::wire::span_flags;
use crate::model::{Span, SpanKind, SpanStatus};
use crate::semconv::attributes::{AttrValue, span_attributes};
use crate::semconv::names::span_name;
use crate::semconv::resource::{ProcessTable, SCOPE_NAME, SCOPE_VERSION};

fn any_value(v: AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.into_owned()),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Double(d) => any_value::Value::DoubleValue(d.0),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
        AttrValue::StrArray(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items
                .into_iter()
                .map(|s| AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                })
                .collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

pub(crate) fn key_values<K: AsRef<str>>(attrs: Vec<(K, AttrValue)>) -> Vec<KeyValue> {
    attrs
        .into_iter()
        .map(|(k, v)| KeyValue {
            key: k.as_ref().to_string(),
            value: Some(any_value(v)),
        })
        .collect()
}

/// One model span as an OTLP span.
pub(crate) fn to_otlp_span(span: &Span) -> otlp::Span {
    let kind = match span.kind {
        SpanKind::Server => otlp::span::SpanKind::Server,
        SpanKind::Client => otlp::span::SpanKind::Client,
    };
    let status = match &span.status {
        SpanStatus::Unset => None,
        SpanStatus::Error(msg) => Some(otlp::Status {
            message: msg.clone(),
            code: otlp::status::StatusCode::Error as i32,
        }),
    };
    otlp::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: crate::processors::tail::threshold::trace_state(
            span.tracestate.as_deref(),
            span.sampling,
        )
        .map(String::from)
        .unwrap_or_default(),
        parent_span_id: span
            .parent_span_id
            .map(|p| p.0.to_vec())
            .unwrap_or_default(),
        flags: span_flags(span),
        name: span_name(span).into_owned(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns.max(span.start_unix_ns),
        attributes: key_values(span_attributes(span)),
        status,
        ..Default::default()
    }
}

/// A batch as one request: one `ResourceSpans` per pid, in order of first appearance.
pub(crate) fn build_request(spans: &[Span], table: &ProcessTable) -> ExportTraceServiceRequest {
    let mut groups: Vec<(u32, Vec<otlp::Span>)> = Vec::new();
    for span in spans {
        let converted = to_otlp_span(span);
        match groups.iter_mut().find(|(pid, _)| *pid == span.pid) {
            Some((_, list)) => list.push(converted),
            None => groups.push((span.pid, vec![converted])),
        }
    }
    let resource_spans = groups
        .into_iter()
        .map(|(pid, spans)| otlp::ResourceSpans {
            resource: Some(Resource {
                attributes: key_values(table.resource(pid)),
                ..Default::default()
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_string(),
                    version: SCOPE_VERSION.to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}
