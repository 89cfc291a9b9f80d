//! Model → `opentelemetry-proto` structs for the metrics and logs signals: attributes, the
//! Resource of a traced process (the same [`resource_attributes`] the spans carry, so all three
//! signals of one process join up in a backend) and the instrumentation scope.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::series::Val;
use crate::semconv::attributes::AttrValue;
use crate::semconv::resource::{ProcessTable, SCOPE_NAME, SCOPE_VERSION, resource_attributes};

fn any(value: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

/// Span-style attributes as OTLP key-values.
pub(crate) fn key_values(attrs: Vec<(&'static str, AttrValue)>) -> Vec<KeyValue> {
    attrs
        .into_iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: any(match v {
                AttrValue::Str(s) => Value::StringValue(s.into_owned()),
                AttrValue::Int(i) => Value::IntValue(i),
                AttrValue::Double(d) => Value::DoubleValue(d.0),
                AttrValue::Bool(b) => Value::BoolValue(b),
                AttrValue::StrArray(items) => Value::ArrayValue(ArrayValue {
                    values: items
                        .into_iter()
                        .filter_map(|s| any(Value::StringValue(s)))
                        .collect(),
                }),
            }),
        })
        .collect()
}

/// Metric attribute sets as OTLP key-values.
pub(crate) fn attr_key_values(attrs: &[(&'static str, Val)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: any(match v {
                Val::Str(s) => Value::StringValue(s.to_string()),
                Val::Int(i) => Value::IntValue(*i),
                Val::Bool(b) => Value::BoolValue(*b),
            }),
        })
        .collect()
}

/// The Resource of process `pid`, as its spans have it.
pub(crate) fn resource(pid: u32, table: &ProcessTable) -> Resource {
    Resource {
        attributes: key_values(resource_attributes(
            pid,
            table.get(pid),
            table.host_fallback(),
        )),
        ..Default::default()
    }
}

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: SCOPE_VERSION.to_string(),
        ..Default::default()
    }
}
