//! The span context: a [`Span`] as statements see it. Its attributes are what the semantic
//! conventions derive from the span's typed exchange (`semconv::attributes`): the well-known
//! keys of HTTP spans are read straight from the typed fields (`known.rs`), the others gathered
//! once per span on the first read (borrowed from the span, addresses formatted only when
//! read); what rules write goes to the span's [`AttrEdits`], which every output applies. The
//! Resource is read-only here (all spans of a process share it).

use std::borrow::Cow;
use std::cell::{Cell, OnceCell};
use std::net::IpAddr;

use super::key::{Key, Known};
use super::known::{self, Own};
use super::value::{Field, Map, Record, Value, lit_attr};
use crate::model::{AttrEdits, AttrVal, Span, SpanKind, SpanStatus};
use crate::semconv::attributes::{AttrSink, AttrValue, addr_text, visit_own_attributes};

/// A span with its process's Resource attributes. The span is read-only while statements run:
/// what they change is staged here and applied by [`SpanRecord::finish`], so the span's own
/// attributes can be read once per span (on the first read) and borrowed from it after that.
pub struct SpanRecord<'s> {
    span: &'s Span,
    resource: &'s [(&'static str, AttrValue<'static>)],
    /// The attribute keys the program reads (the first [`WANTED`] are cached)...
    wanted: &'s [Box<str>],
    /// ...and their values, taken in one pass over the span's own attributes on the first read
    /// of a key that is not known (boxed: most programs read only known keys, and the record is
    /// built for every span).
    cache: OnceCell<Box<[Option<Own<'s>>; WANTED]>>,
    /// `url.path`, the key rules read most, once read.
    path: Cell<Option<&'s str>>,
    edits: Option<Box<AttrEdits>>,
    name: Option<String>,
    status: Option<SpanStatus>,
}

/// Staged changes of one span.
pub struct Changes {
    edits: Option<Box<AttrEdits>>,
    name: Option<String>,
    status: Option<SpanStatus>,
}

impl Changes {
    #[inline]
    pub fn apply(self, span: &mut Span) {
        span.edits = self.edits;
        if let Some(n) = self.name {
            span.name = Cow::Owned(n);
        }
        if let Some(s) = self.status {
            span.status = s;
        }
    }
}

impl<'s> SpanRecord<'s> {
    #[inline]
    pub fn new(
        span: &'s Span,
        resource: &'s [(&'static str, AttrValue<'static>)],
        wanted: &'s [Box<str>],
    ) -> Self {
        SpanRecord {
            span,
            resource,
            wanted,
            cache: OnceCell::new(),
            path: Cell::new(None),
            edits: span.edits.clone(),
            name: None,
            status: None,
        }
    }

    /// What the statements changed, to apply to the span.
    #[inline]
    pub fn finish(self) -> Changes {
        Changes {
            edits: self.edits,
            name: self.name,
            status: self.status,
        }
    }

    fn status(&self) -> &SpanStatus {
        self.status.as_ref().unwrap_or(&self.span.status)
    }

    /// Every own attribute (bulk editors: `keep_keys`, `limit` …).
    fn own(&self) -> Vec<(&'static str, Own<'s>)> {
        let mut all = Collect(Vec::with_capacity(24));
        visit_own_attributes(self.span, &mut all);
        all.0
    }

    /// A known own attribute, straight from the typed fields (None: not for this span).
    fn known_attr(&self, k: Known) -> Option<Option<Own<'s>>> {
        if k == Known::UrlPath
            && let Some(p) = self.path.get()
        {
            return Some(Some(Own::Str(Cow::Borrowed(p))));
        }
        let v = known::read(self.span, k)?;
        if let (Known::UrlPath, Some(Own::Str(Cow::Borrowed(p)))) = (k, &v) {
            self.path.set(Some(p));
        }
        Some(v)
    }

    /// One own attribute: from the cache when the program names it, else by a pass that builds
    /// only that key.
    fn own_attr(&self, key: &str) -> Option<Own<'s>> {
        let wanted = &self.wanted[..self.wanted.len().min(WANTED)];
        if let Some(i) = wanted.iter().position(|w| **w == *key) {
            let cache = self.cache.get_or_init(|| {
                let mut pick = Pick {
                    wanted,
                    found: std::array::from_fn(|_| None),
                };
                visit_own_attributes(self.span, &mut pick);
                Box::new(pick.found)
            });
            return cache[i].clone();
        }
        let mut pick = Pick {
            wanted: std::slice::from_ref(&key),
            found: std::array::from_fn(|_| None),
        };
        visit_own_attributes(self.span, &mut pick);
        pick.found[0].take()
    }
}

/// Attributes read per span that are cached.
const WANTED: usize = 8;

/// Takes the wanted keys' values out of a pass over the span's own attributes.
struct Pick<'w, 'a, K> {
    wanted: &'w [K],
    found: [Option<Own<'a>>; WANTED],
}

impl<K: AsRef<str>> Pick<'_, '_, K> {
    fn slot(&self, key: &str) -> Option<usize> {
        self.wanted.iter().position(|w| w.as_ref() == key)
    }
}

impl<'a, K: AsRef<str>> AttrSink<'a> for Pick<'_, 'a, K> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        if let Some(i) = self.slot(key) {
            self.found[i].get_or_insert(Own::Str(value.into()));
        }
    }
    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        if let Some(i) = self.slot(key) {
            self.found[i].get_or_insert(Own::Int(value.into()));
        }
    }
    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        if let Some(i) = self.slot(key) {
            self.found[i].get_or_insert(Own::Addr(addr));
        }
    }
    fn edited(&mut self, _: &'a str, _: &'a AttrVal) {}
    fn wants(&self, key: &'static str) -> bool {
        self.slot(key).is_some()
    }
}

struct Collect<'a>(Vec<(&'static str, Own<'a>)>);

impl<'a> AttrSink<'a> for Collect<'a> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        self.0.push((key, Own::Str(value.into())));
    }
    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        self.0.push((key, Own::Int(value.into())));
    }
    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        self.0.push((key, Own::Addr(addr)));
    }
    fn edited(&mut self, _: &'a str, _: &'a AttrVal) {}
}

fn own_value<'a>(v: &'a Own<'_>) -> Value<'a> {
    match v {
        Own::Str(s) => Value::Str(Cow::Borrowed(&**s)),
        Own::Int(i) => Value::Int(*i),
        Own::Addr(a) => Value::Str(Cow::Owned(addr_text(*a))),
    }
}

fn attr_value<'a>(v: &'a AttrValue<'_>) -> Value<'a> {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'s> SpanRecord<'s> {
    #[inline]
    fn attr_of(&self, m: Map, key: &str, known: Option<Known>) -> Value<'_> {
        match m {
            Map::Resource => self
                .resource
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Value::Nil, |(_, v)| attr_value(v)),
            Map::Attributes => {
                if let Some(edit) = self.edits.as_deref().and_then(|e| e.get(key)) {
                    return edit.map_or(Value::Nil, Value::from);
                }
                let own = match known.and_then(|k| self.known_attr(k)) {
                    Some(v) => v,
                    None => self.own_attr(key),
                };
                match own {
                    None => Value::Nil,
                    Some(Own::Str(Cow::Borrowed(s))) => Value::Str(Cow::Borrowed(s)),
                    Some(Own::Str(Cow::Owned(s))) => Value::Str(Cow::Owned(s)),
                    Some(Own::Int(i)) => Value::Int(i),
                    Some(Own::Addr(a)) => Value::Str(Cow::Owned(addr_text(a))),
                }
            }
        }
    }

    /// What a write of `v` to `key` stores (None deletes).
    fn attr_val(&self, m: Map, key: &str, v: Option<Value<'_>>) -> Result<Option<AttrVal>, String> {
        if m == Map::Resource {
            return Err(RESOURCE_READ_ONLY.into());
        }
        match v {
            Some(v) => Ok(Some(v.to_attr().ok_or_else(|| nil_error(key))?)),
            None => Ok(None),
        }
    }

    fn edits_mut(&mut self) -> &mut AttrEdits {
        self.edits.get_or_insert_with(Box::default)
    }
}

/// [`AttrEdits::put`] of a key the program names: the key is shared, not copied, when the
/// program interned it (`key::intern`).
fn put_shared(edits: &mut AttrEdits, key: &Key, value: Option<AttrVal>) {
    match edits.0.iter_mut().find(|(k, _)| *k == key.name) {
        Some(e) => e.1 = value,
        None => edits.0.push((key.name.clone(), value)),
    }
}

const RESOURCE_READ_ONLY: &str = "resource attributes cannot be changed from a span";

fn nil_error(key: &str) -> String {
    format!("attributes[\"{key}\"] cannot be set to nil")
}

impl Record for SpanRecord<'_> {
    fn field(&self, f: Field) -> Value<'_> {
        let s = self.span;
        match f {
            Field::Name => Value::Str(Cow::Borrowed(self.name.as_deref().unwrap_or(&s.name))),
            Field::Kind => Value::Int(match s.kind {
                SpanKind::Server => 2,
                SpanKind::Client => 3,
            }),
            Field::KindString => Value::Str(Cow::Borrowed(match s.kind {
                SpanKind::Server => "Server",
                SpanKind::Client => "Client",
            })),
            Field::StatusCode => Value::Int(match self.status() {
                SpanStatus::Unset => 0,
                SpanStatus::Error(_) => 2,
            }),
            Field::StatusMessage => match self.status() {
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
        match (f, v) {
            (Field::Name, Value::Str(n)) => self.name = Some(n.into_owned()),
            (Field::StatusCode, Value::Int(0)) => self.status = Some(SpanStatus::Unset),
            (Field::StatusCode, Value::Int(2)) => {
                if *self.status() == SpanStatus::Unset {
                    self.status = Some(SpanStatus::Error(String::new()));
                }
            }
            (Field::StatusCode, Value::Int(1)) => {
                return Err(
                    "status.code: ztrace's spans have no OK status (UNSET or ERROR)".into(),
                );
            }
            (Field::StatusMessage, Value::Str(m)) => {
                if let SpanStatus::Error(_) = self.status() {
                    self.status = Some(SpanStatus::Error(m.into_owned()));
                }
            }
            (f, v) => return Err(format!("{f:?} cannot be set to {}", v.type_name())),
        }
        Ok(())
    }

    fn attr(&self, m: Map, key: &str) -> Value<'_> {
        self.attr_of(m, key, Known::lookup(key).map(|(k, _)| k))
    }

    fn attr_key(&self, m: Map, key: &Key) -> Value<'_> {
        self.attr_of(m, &key.name, key.known)
    }

    fn set_attr(&mut self, m: Map, key: &str, v: Option<Value<'_>>) -> Result<(), String> {
        let v = self.attr_val(m, key, v)?;
        self.edits_mut().put(key, v);
        Ok(())
    }

    fn set_attr_key(&mut self, m: Map, key: &Key, v: Option<Value<'_>>) -> Result<(), String> {
        let v = self.attr_val(m, &key.name, v)?;
        put_shared(self.edits_mut(), key, v);
        Ok(())
    }

    fn set_attr_lit(&mut self, m: Map, key: &Key, v: &Value<'static>) -> Result<(), String> {
        if m == Map::Resource {
            return Err(RESOURCE_READ_ONLY.into());
        }
        let v = lit_attr(v).ok_or_else(|| nil_error(&key.name))?;
        put_shared(self.edits_mut(), key, Some(v));
        Ok(())
    }

    fn attrs(&self, m: Map, f: &mut dyn FnMut(&str, Value<'_>)) {
        match m {
            Map::Resource => self.resource.iter().for_each(|(k, v)| f(k, attr_value(v))),
            Map::Attributes => {
                let edits = self.edits.as_deref();
                for (k, v) in &self.own() {
                    if edits.is_none_or(|e| e.get(k).is_none()) {
                        f(k, own_value(v));
                    }
                }
                for (k, v) in edits.iter().flat_map(|e| e.0.iter()) {
                    if let Some(v) = v {
                        f(k, Value::from(v));
                    }
                }
            }
        }
    }
}
