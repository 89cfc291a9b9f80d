//! The span context: a [`Span`] as statements see it. Its attributes are what the semantic
//! conventions derive from the span's typed exchange (`semconv::attributes`), read one key at a
//! time without building the list; what rules write goes to the span's [`AttrEdits`], which every
//! output applies. The Resource is read-only here (all spans of a process share it).

use std::borrow::Cow;
use std::net::IpAddr;

use super::value::{Field, Map, Record, Value};
use crate::model::{AttrEdits, AttrVal, Span, SpanKind, SpanStatus};
use crate::semconv::attributes::{
    AttrSink, AttrValue, addr_text, span_attributes, visit_own_attributes,
};

/// A span with its process's Resource attributes.
pub struct SpanRecord<'s> {
    pub span: &'s mut Span,
    pub resource: &'s [(&'static str, AttrValue<'static>)],
}

pub(super) fn attr_value<'a>(v: &'a AttrValue<'_>) -> Value<'a> {
    match v {
        AttrValue::Str(s) => Value::Str(Cow::Borrowed(&**s)),
        AttrValue::Int(i) => Value::Int(*i),
        AttrValue::Double(d) => Value::Float(d.0),
        AttrValue::Bool(b) => Value::Bool(*b),
        AttrValue::StrArray(a) => Value::List(
            a.iter()
                .map(|s| Value::Str(Cow::Borrowed(s.as_str())))
                .collect(),
        ),
    }
}

/// Finds one of the span's own attributes while they are visited.
struct Find<'k, 'a> {
    key: &'k str,
    found: Option<Value<'a>>,
}

impl<'a> AttrSink<'a> for Find<'_, 'a> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        if self.found.is_none() && key == self.key {
            self.found = Some(Value::Str(value.into()));
        }
    }
    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        if self.found.is_none() && key == self.key {
            self.found = Some(Value::Int(value.into()));
        }
    }
    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        if self.found.is_none() && key == self.key {
            self.found = Some(Value::Str(Cow::Owned(addr_text(addr))));
        }
    }
    fn edited(&mut self, _: &'a str, _: &'a AttrVal) {}
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Record for SpanRecord<'_> {
    fn field(&self, f: Field) -> Value<'_> {
        let s = &*self.span;
        match f {
            Field::Name => Value::Str(Cow::Borrowed(&s.name)),
            Field::Kind => Value::Int(match s.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
            }),
            Field::KindString => Value::Str(Cow::Borrowed(match s.kind {
                SpanKind::Server => "Server",
                SpanKind::Client => "Client",
            })),
            Field::StatusCode => Value::Int(match s.status {
                SpanStatus::Unset => 0,
                SpanStatus::Error(_) => 2,
            }),
            Field::StatusMessage => match &s.status {
                SpanStatus::Error(m) => Value::Str(Cow::Borrowed(m)),
                SpanStatus::Unset => Value::Str(Cow::Borrowed("")),
            },
            Field::Duration => Value::Int(
                s.end_unix_ns
                    .saturating_sub(s.start_unix_ns)
                    .min(i64::MAX as u64) as i64,
            ),
            Field::StartTime => Value::Int(s.start_unix_ns as i64),
            Field::EndTime => Value::Int(s.end_unix_ns as i64),
            Field::TraceId => Value::Str(Cow::Owned(hex(&s.trace_id.0))),
            Field::SpanId => Value::Str(Cow::Owned(hex(&s.span_id.0))),
            Field::ParentSpanId => Value::Str(Cow::Owned(
                s.parent_span_id.map(|p| hex(&p.0)).unwrap_or_default(),
            )),
            _ => Value::Nil,
        }
    }

    fn set_field(&mut self, f: Field, v: Value<'_>) -> Result<(), String> {
        let s = &mut *self.span;
        match (f, v) {
            (Field::Name, Value::Str(n)) => s.name = Cow::Owned(n.into_owned()),
            (Field::StatusCode, Value::Int(0)) => s.status = SpanStatus::Unset,
            (Field::StatusCode, Value::Int(2)) => {
                if s.status == SpanStatus::Unset {
                    s.status = SpanStatus::Error(String::new());
                }
            }
            (Field::StatusCode, Value::Int(1)) => {
                return Err(
                    "status.code: ztrace's spans have no OK status (UNSET or ERROR)".into(),
                );
            }
            (Field::StatusMessage, Value::Str(m)) => {
                if let SpanStatus::Error(old) = &mut s.status {
                    *old = m.into_owned();
                }
            }
            (f, v) => return Err(format!("{f:?} cannot be set to {}", v.type_name())),
        }
        Ok(())
    }

    fn attr(&self, m: Map, key: &str) -> Value<'_> {
        match m {
            Map::Resource => self
                .resource
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Value::Nil, |(_, v)| attr_value(v)),
            Map::Attributes => {
                if let Some(edit) = self.span.edits.as_deref().and_then(|e| e.get(key)) {
                    return edit.map_or(Value::Nil, Value::from);
                }
                let mut find = Find { key, found: None };
                visit_own_attributes(self.span, &mut find);
                find.found.unwrap_or(Value::Nil)
            }
        }
    }

    fn set_attr(&mut self, m: Map, key: &str, v: Option<Value<'_>>) -> Result<(), String> {
        if m == Map::Resource {
            return Err("resource attributes cannot be changed from a span".into());
        }
        let v = match v {
            Some(v) => Some(
                v.to_attr()
                    .ok_or_else(|| format!("attributes[\"{key}\"] cannot be set to nil"))?,
            ),
            None => None,
        };
        self.span
            .edits
            .get_or_insert_with(|| Box::new(AttrEdits::default()))
            .put(key, v);
        Ok(())
    }

    fn attrs(&self, m: Map, f: &mut dyn FnMut(&str, Value<'_>)) {
        match m {
            Map::Resource => self.resource.iter().for_each(|(k, v)| f(k, attr_value(v))),
            Map::Attributes => span_attributes(self.span)
                .iter()
                .for_each(|(k, v)| f(k, attr_value(v))),
        }
    }
}
