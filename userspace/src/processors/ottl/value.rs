//! What statements compute with: OTTL values, the fields and attribute maps a path can name,
//! and [`Record`], the one interface a context (a span, a metric data point, a log record)
//! offers the evaluator. Values borrow from the record where they can, so reading an attribute
//! to compare it allocates nothing.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::key::Key;
use crate::model::{AttrVal, F64};

#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    List(Vec<Value<'a>>),
}

impl Value<'_> {
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Nil => Value::Nil,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => Value::Float(f),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::List(l) => Value::List(l.into_iter().map(Value::into_owned).collect()),
        }
    }

    /// The value borrowing from `self` (no copy of a string).
    pub fn borrow(&self) -> Value<'_> {
        match self {
            Value::Str(s) => Value::Str(Cow::Borrowed(&**s)),
            other => other.clone(),
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as text, as OTTL's converters read a non-string (None for nil and lists).
    pub fn to_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::Str(s) => Cow::Borrowed(&**s),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Float(f) => Cow::Owned(float_text(*f)),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Nil | Value::List(_) => return None,
        })
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a double",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
        }
    }

    /// As an attribute value a span stores (lists: of their items' text).
    pub fn to_attr(&self) -> Option<AttrVal> {
        Some(match self {
            Value::Nil => return None,
            Value::Bool(b) => AttrVal::Bool(*b),
            Value::Int(i) => AttrVal::Int(*i),
            Value::Float(f) => AttrVal::Double(F64(*f)),
            Value::Str(s) => AttrVal::Str(Cow::Owned(s.to_string())),
            Value::List(l) => AttrVal::StrArray(
                l.iter()
                    .filter_map(|v| v.to_text().map(Cow::into_owned))
                    .collect(),
            ),
        })
    }
}

/// A literal of the program as an attribute value: its strings are shared (see `key::intern`),
/// so writing one allocates nothing.
pub fn lit_attr(v: &Value<'static>) -> Option<AttrVal> {
    match v {
        Value::Str(Cow::Borrowed(s)) => Some(AttrVal::Str(Cow::Borrowed(s))),
        v => v.to_attr(),
    }
}

/// Go's `%v` of a float64 for the common cases (`1.5`, `2`, `1e+21`).
fn float_text(f: f64) -> String {
    let mut s = String::new();
    if f.fract() == 0.0 && f.abs() < 1e21 {
        let _ = write!(s, "{}", f as i64);
    } else {
        let _ = write!(s, "{f}");
    }
    s
}

impl<'a> From<&'a AttrVal> for Value<'a> {
    fn from(v: &'a AttrVal) -> Self {
        match v {
            AttrVal::Str(s) => Value::Str(Cow::Borrowed(s)),
            AttrVal::Int(i) => Value::Int(*i),
            AttrVal::Double(d) => Value::Float(d.0),
            AttrVal::Bool(b) => Value::Bool(*b),
            AttrVal::StrArray(a) => Value::List(
                a.iter()
                    .map(|s| Value::Str(Cow::Borrowed(s.as_str())))
                    .collect(),
            ),
        }
    }
}

/// An attribute map a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// `attributes` of the span, data point or log record.
    Attributes,
    /// `resource.attributes` (read-only for spans: every span of a process shares it).
    Resource,
}

/// A field a path names (which exist depends on the context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    // Spans.
    Name,
    Kind,
    KindString,
    StatusCode,
    StatusMessage,
    /// ztrace's own: end minus start, in nanoseconds.
    Duration,
    StartTime,
    EndTime,
    TraceId,
    SpanId,
    ParentSpanId,
    // Data points.
    MetricName,
    MetricUnit,
    MetricDescription,
    MetricType,
    ValueDouble,
    ValueInt,
    Time,
    // Log records.
    Body,
    SeverityNumber,
    SeverityText,
    ObservedTime,
    Flags,
}

/// One span, data point or log record as statements see it.
pub trait Record {
    fn field(&self, f: Field) -> Value<'_>;
    /// Errors say why the value does not fit (`name` must be a string).
    fn set_field(&mut self, f: Field, v: Value<'_>) -> Result<(), String>;
    /// `Nil` when missing.
    fn attr(&self, m: Map, key: &str) -> Value<'_>;
    /// `None` deletes.
    fn set_attr(&mut self, m: Map, key: &str, v: Option<Value<'_>>) -> Result<(), String>;
    /// [`Record::attr`] of a key the program names.
    fn attr_key(&self, m: Map, key: &Key) -> Value<'_> {
        self.attr(m, &key.name)
    }
    /// [`Record::set_attr`] of a key the program names.
    fn set_attr_key(&mut self, m: Map, key: &Key, v: Option<Value<'_>>) -> Result<(), String> {
        self.set_attr(m, &key.name, v)
    }
    /// Writes a literal of the program (not nil).
    fn set_attr_lit(&mut self, m: Map, key: &Key, v: &Value<'static>) -> Result<(), String> {
        self.set_attr_key(m, key, Some(v.borrow()))
    }
    /// Every attribute of `m`, in order.
    fn attrs(&self, m: Map, f: &mut dyn FnMut(&str, Value<'_>));
}
