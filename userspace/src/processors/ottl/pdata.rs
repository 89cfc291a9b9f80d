//! The data point and log record contexts: OTLP messages as statements see them, just before
//! they are exported (as the Collector's `transform` and `filter` processors see theirs). The
//! Resource is read-only, as for spans.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;

use super::value::{Field, Map, Record, Value};

fn from_any(v: &AnyValue) -> Value<'_> {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::Str(Cow::Borrowed(s)),
        Some(any_value::Value::IntValue(i)) => Value::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::Float(*d),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::List(a.values.iter().map(from_any).collect())
        }
        _ => Value::Nil,
    }
}

fn to_any(v: Value<'_>) -> AnyValue {
    let value = match v {
        Value::Nil => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(b)),
        Value::Int(i) => Some(any_value::Value::IntValue(i)),
        Value::Float(f) => Some(any_value::Value::DoubleValue(f)),
        Value::Str(s) => Some(any_value::Value::StringValue(s.into_owned())),
        Value::List(l) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: l.into_iter().map(to_any).collect(),
        })),
    };
    AnyValue { value }
}

fn get<'a>(kvs: &'a [KeyValue], key: &str) -> Value<'a> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map_or(Value::Nil, from_any)
}

fn put(kvs: &mut Vec<KeyValue>, key: &str, v: Option<Value<'_>>) {
    match v {
        None => kvs.retain(|kv| kv.key != key),
        Some(v) => {
            let any = Some(to_any(v));
            match kvs.iter_mut().find(|kv| kv.key == key) {
                Some(kv) => kv.value = any,
                None => kvs.push(KeyValue {
                    key: key.to_string(),
                    value: any,
                }),
            }
        }
    }
}

fn each(kvs: &[KeyValue], f: &mut dyn FnMut(&str, Value<'_>)) {
    for kv in kvs {
        f(&kv.key, kv.value.as_ref().map_or(Value::Nil, from_any));
    }
}

fn resource_only(m: Map) -> Result<(), String> {
    match m {
        Map::Resource => Err("resource attributes are read-only in ztrace".into()),
        Map::Attributes => Ok(()),
    }
}

fn time(t: u64) -> Value<'static> {
    Value::Int(t.min(i64::MAX as u64) as i64)
}

/// The metric a data point belongs to, borrowed field by field next to the point.
pub struct MetricFields<'a> {
    pub name: &'a mut String,
    pub description: &'a mut String,
    pub unit: &'a mut String,
    /// `METRIC_DATA_TYPE_*` number.
    pub kind: i64,
}

/// One data point: its attributes and times, and its value when it is a number.
pub struct PointRecord<'a> {
    pub metric: MetricFields<'a>,
    pub attributes: &'a mut Vec<KeyValue>,
    pub value: Option<&'a mut Option<number_data_point::Value>>,
    pub time: u64,
    pub start_time: u64,
    pub resource: &'a [KeyValue],
}

impl Record for PointRecord<'_> {
    fn field(&self, f: Field) -> Value<'_> {
        let m = &self.metric;
        match f {
            Field::MetricName => Value::Str(Cow::Borrowed(m.name)),
            Field::MetricUnit => Value::Str(Cow::Borrowed(m.unit)),
            Field::MetricDescription => Value::Str(Cow::Borrowed(m.description)),
            Field::MetricType => Value::Int(m.kind),
            Field::ValueDouble => match self.value.as_deref() {
                Some(Some(number_data_point::Value::AsDouble(d))) => Value::Float(*d),
                _ => Value::Nil,
            },
            Field::ValueInt => match self.value.as_deref() {
                Some(Some(number_data_point::Value::AsInt(i))) => Value::Int(*i),
                _ => Value::Nil,
            },
            Field::Time => time(self.time),
            Field::StartTime => time(self.start_time),
            _ => Value::Nil,
        }
    }

    fn set_field(&mut self, f: Field, v: Value<'_>) -> Result<(), String> {
        let m = &mut self.metric;
        match (f, v) {
            (Field::MetricName, Value::Str(s)) => *m.name = s.into_owned(),
            (Field::MetricUnit, Value::Str(s)) => *m.unit = s.into_owned(),
            (Field::MetricDescription, Value::Str(s)) => *m.description = s.into_owned(),
            (Field::ValueDouble, Value::Float(d)) => match &mut self.value {
                Some(v) => **v = Some(number_data_point::Value::AsDouble(d)),
                None => return Err("value_double: this data point has no number value".into()),
            },
            (Field::ValueInt, Value::Int(i)) => match &mut self.value {
                Some(v) => **v = Some(number_data_point::Value::AsInt(i)),
                None => return Err("value_int: this data point has no number value".into()),
            },
            (f, v) => return Err(format!("{f:?} cannot be set to {}", v.type_name())),
        }
        Ok(())
    }

    fn attr(&self, m: Map, key: &str) -> Value<'_> {
        match m {
            Map::Attributes => get(self.attributes, key),
            Map::Resource => get(self.resource, key),
        }
    }

    fn set_attr(&mut self, m: Map, key: &str, v: Option<Value<'_>>) -> Result<(), String> {
        resource_only(m)?;
        put(self.attributes, key, v);
        Ok(())
    }

    fn attrs(&self, m: Map, f: &mut dyn FnMut(&str, Value<'_>)) {
        match m {
            Map::Attributes => each(self.attributes, f),
            Map::Resource => each(self.resource, f),
        }
    }
}

/// One log record with its process's Resource.
pub struct LogRecordRef<'a> {
    pub record: &'a mut LogRecord,
    pub resource: &'a [KeyValue],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Record for LogRecordRef<'_> {
    fn field(&self, f: Field) -> Value<'_> {
        let r = &*self.record;
        match f {
            Field::Body => r.body.as_ref().map_or(Value::Nil, from_any),
            Field::SeverityNumber => Value::Int(i64::from(r.severity_number)),
            Field::SeverityText => Value::Str(Cow::Borrowed(&r.severity_text)),
            Field::Time => time(r.time_unix_nano),
            Field::ObservedTime => time(r.observed_time_unix_nano),
            Field::TraceId => Value::Str(Cow::Owned(hex(&r.trace_id))),
            Field::SpanId => Value::Str(Cow::Owned(hex(&r.span_id))),
            Field::Flags => Value::Int(i64::from(r.flags)),
            _ => Value::Nil,
        }
    }

    fn set_field(&mut self, f: Field, v: Value<'_>) -> Result<(), String> {
        let r = &mut *self.record;
        match (f, v) {
            (Field::Body, v) => r.body = Some(to_any(v)),
            (Field::SeverityNumber, Value::Int(i)) => {
                r.severity_number = i32::try_from(i).map_err(|_| "severity_number out of range")?;
            }
            (Field::SeverityText, Value::Str(s)) => r.severity_text = s.into_owned(),
            (f, v) => return Err(format!("{f:?} cannot be set to {}", v.type_name())),
        }
        Ok(())
    }

    fn attr(&self, m: Map, key: &str) -> Value<'_> {
        match m {
            Map::Attributes => get(&self.record.attributes, key),
            Map::Resource => get(self.resource, key),
        }
    }

    fn set_attr(&mut self, m: Map, key: &str, v: Option<Value<'_>>) -> Result<(), String> {
        resource_only(m)?;
        put(&mut self.record.attributes, key, v);
        Ok(())
    }

    fn attrs(&self, m: Map, f: &mut dyn FnMut(&str, Value<'_>)) {
        match m {
            Map::Attributes => each(&self.record.attributes, f),
            Map::Resource => each(self.resource, f),
        }
    }
}
