//! The span program's fast path: when every statement, condition and filter of the span rules
//! is one of the common forms that cannot fail (writes of literals and of read values to
//! `attributes`, `delete_key` with a literal key, `replace_pattern` of an attribute, `name`
//! set to a string, comparisons of fields and attributes, `IsMatch` conditions), the program is also compiled into
//! [`Spans`]: flat operations over the typed span, attribute keys numbered per program. A span
//! runs there with its changes staged on the stack (keys by number: a read of a written key is
//! a byte comparison, not a string one), and the span's edit overlay is built once, at the end.
//!
//! Same results as the generic evaluator (`eval`, `span`): reads are the direct reads of
//! `known.rs`; a span it cannot answer that way (a key that is not known and not written yet,
//! an exchange that is not HTTP, a span that already has edits) is left untouched and handed to
//! the generic path. `known_tests.rs` runs random programs on random spans both ways.

use std::borrow::Cow;

use super::eval::{Editor, Getter, Pred, Setter, Statement, compare, replace};
use super::grammar::CmpOp;
use super::key::{Key, Known};
use super::known::{self, Own};
use super::pattern::Pattern;
use super::value::{Field, Map, Value, lit_attr};
use crate::model::{AttrEdits, AttrVal, Span, SpanKind, SpanStatus};
use crate::semconv::attributes::addr_text;

/// An attribute key of the program, by number.
type Slot = u8;

enum Get {
    Lit(Value<'static>),
    Field(Field),
    Attr(Slot),
}

enum Cond {
    /// An integer field against an integer literal.
    Int(Field, CmpOp, i64),
    /// An attribute equal (true) or unequal (false) to a string literal.
    Str(Slot, bool, Cow<'static, str>),
    Cmp(Get, CmpOp, Get),
    /// `IsMatch(value, pattern)` (a bool, so it cannot fail as a condition).
    IsMatch(Get, Pattern),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
}

enum Edit {
    SetLit(Slot, AttrVal),
    Set(Slot, Get),
    SetName(Cow<'static, str>),
    Delete(Slot),
    Replace(Slot, Slot, Pattern, Box<str>, bool),
}

struct Group {
    /// Any must hold (none: always).
    conditions: Vec<Cond>,
    statements: Vec<(Option<Cond>, Edit)>,
}

/// The span rules compiled for the fast path.
pub struct Spans {
    groups: Vec<Group>,
    filters: Vec<Cond>,
    /// Each slot's key.
    keys: Vec<Key>,
}

#[cfg(test)]
thread_local! {
    /// Programs compiled meanwhile have no fast path (the differential tests' reference).
    pub static OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The changes staged for one span.
struct State<'s> {
    span: &'s Span,
    /// The span's edit overlay, as it will be (allocated on the first write, as the generic
    /// path does)...
    edits: Option<Box<AttrEdits>>,
    /// ...and the slots written (bit `k`: slot `k` has an entry in `edits`).
    written: u64,
    name: Option<Cow<'static, str>>,
    /// `url.path`, once read.
    path: Option<&'s str>,
}

/// The span cannot be run here: the generic path runs it.
struct Bail;

impl Spans {
    /// The fast form of these groups and filters, when they have one.
    pub fn compile<'a>(
        groups: impl IntoIterator<Item = (&'a [Pred], &'a [Statement])>,
        filters: impl IntoIterator<Item = &'a Pred>,
    ) -> Option<Spans> {
        #[cfg(test)]
        if OFF.with(std::cell::Cell::get) {
            return None;
        }
        let mut s = Spans {
            groups: Vec::new(),
            filters: Vec::new(),
            keys: Vec::new(),
        };
        for (conditions, statements) in groups {
            let conditions = conditions
                .iter()
                .map(|c| s.cond(c))
                .collect::<Option<_>>()?;
            let mut out = Vec::new();
            for st in statements {
                let cond = match &st.condition {
                    Some(c) => Some(s.cond(c)?),
                    None => None,
                };
                if let Some(e) = s.edit(&st.editor)? {
                    out.push((cond, e));
                }
            }
            s.groups.push(Group {
                conditions,
                statements: out,
            });
        }
        for f in filters {
            let c = s.cond(f)?;
            s.filters.push(c);
        }
        Some(s)
    }

    /// True when running it changes nothing (no statement writes, no filter).
    pub fn is_noop(&self) -> bool {
        self.filters.is_empty() && self.groups.iter().all(|g| g.statements.is_empty())
    }

    fn slot(&mut self, key: &Key) -> Option<Slot> {
        if let Some(n) = self.keys.iter().position(|k| k.name == key.name) {
            return Slot::try_from(n).ok();
        }
        // A bit of `State::written` each.
        let n = Slot::try_from(self.keys.len()).ok().filter(|n| *n < 64)?;
        self.keys.push(key.clone());
        Some(n)
    }

    fn get(&mut self, g: &Getter) -> Option<Get> {
        Some(match g {
            Getter::Lit(v) => Get::Lit(v.clone()),
            Getter::Field(f) if readable(*f) => Get::Field(*f),
            Getter::Attr(Map::Attributes, k) => Get::Attr(self.slot(k)?),
            _ => return None,
        })
    }

    fn cond(&mut self, p: &Pred) -> Option<Cond> {
        let all = |s: &mut Self, items: &[Pred]| -> Option<Vec<Cond>> {
            items.iter().map(|p| s.cond(p)).collect()
        };
        Some(match p {
            Pred::And(items) => Cond::And(all(self, items)?),
            Pred::Or(items) => Cond::Or(all(self, items)?),
            Pred::Not(p) => Cond::Not(Box::new(self.cond(p)?)),
            Pred::CmpLit(Getter::Field(f), op, Value::Int(i)) if int_field(*f) => {
                Cond::Int(*f, *op, *i)
            }
            Pred::CmpLit(
                Getter::Attr(Map::Attributes, k),
                op @ (CmpOp::Eq | CmpOp::Ne),
                Value::Str(b),
            ) => Cond::Str(self.slot(k)?, *op == CmpOp::Eq, b.clone()),
            Pred::CmpLit(a, op, b) => Cond::Cmp(self.get(a)?, *op, Get::Lit(b.clone())),
            Pred::Cmp(a, op, b) => Cond::Cmp(self.get(a)?, *op, self.get(b)?),
            Pred::Value(Getter::IsMatch(g, re)) => Cond::IsMatch(self.get(g)?, re.clone()),
            // Other conditions that are not comparisons can fail (they must be a bool).
            Pred::Value(_) => return None,
        })
    }

    /// The fast form of an editor (`Some(None)`: it never changes anything).
    fn edit(&mut self, e: &Editor) -> Option<Option<Edit>> {
        Some(Some(match e {
            Editor::Set(_, Getter::Lit(v)) if v.is_nil() => return Some(None),
            Editor::Set(Setter::Attr(Map::Attributes, k), Getter::Lit(v)) => {
                Edit::SetLit(self.slot(k)?, lit_attr(v)?)
            }
            Editor::Set(Setter::Attr(Map::Attributes, k), g) => {
                let g = self.get(g)?;
                Edit::Set(self.slot(k)?, g)
            }
            Editor::Set(Setter::Field(Field::Name), Getter::Lit(Value::Str(s))) => {
                Edit::SetName(s.clone())
            }
            Editor::Delete(Map::Attributes, k) => Edit::Delete(self.slot(k)?),
            Editor::ReplacePattern(
                Getter::Attr(Map::Attributes, from),
                Setter::Attr(Map::Attributes, to),
                re,
                with,
                hash,
            ) => Edit::Replace(
                self.slot(from)?,
                self.slot(to)?,
                re.clone(),
                with.clone(),
                *hash,
            ),
            _ => return None,
        }))
    }

    /// Runs the rules on `span`: whether it is kept, or None when it is left to the generic
    /// path (untouched).
    #[inline]
    pub fn run(&self, span: &mut Span) -> Option<bool> {
        if span.edits.is_some() {
            return None;
        }
        let mut st = State {
            span: &*span,
            edits: None,
            written: 0,
            name: None,
            path: None,
        };
        let keep = self.judge(&mut st).ok()?;
        let State { edits, name, .. } = st;
        if keep {
            span.edits = edits;
            if let Some(n) = name {
                span.name = n;
            }
        }
        Some(keep)
    }

    #[inline]
    fn judge(&self, st: &mut State<'_>) -> Result<bool, Bail> {
        for g in &self.groups {
            let mut applies = g.conditions.is_empty();
            for c in &g.conditions {
                if self.test(st, c)? {
                    applies = true;
                    break;
                }
            }
            if !applies {
                continue;
            }
            for (c, e) in &g.statements {
                if let Some(c) = c
                    && !self.test(st, c)?
                {
                    continue;
                }
                self.edit_run(st, e)?;
            }
        }
        for c in &self.filters {
            if self.test(st, c)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    #[inline]
    fn edit_run(&self, st: &mut State<'_>, e: &Edit) -> Result<(), Bail> {
        match e {
            Edit::SetLit(k, v) => st.put(*k, Some(v.clone()), &self.keys),
            Edit::Delete(k) => {
                if self.is_set(st, *k)? {
                    st.put(*k, None, &self.keys);
                }
            }
            Edit::SetName(n) => st.name = Some(n.clone()),
            Edit::Set(k, g) => {
                let v = self.value(st, g)?.to_attr();
                // Setting nil leaves the target alone.
                if let Some(v) = v {
                    st.put(*k, Some(v), &self.keys);
                }
            }
            Edit::Replace(from, to, re, with, hash) => {
                let new = match self.text(st, *from)? {
                    Some(s) => replace(re, &s, with, *hash),
                    None => None,
                };
                if let Some(new) = new {
                    st.put(*to, Some(AttrVal::Str(Cow::Owned(new))), &self.keys);
                }
            }
        }
        Ok(())
    }

    fn test(&self, st: &mut State<'_>, c: &Cond) -> Result<bool, Bail> {
        Ok(match c {
            Cond::Int(f, op, b) => int_cmp(int_of(st.span, *f), *op, *b),
            // Values of other types are unequal to a string (`compare`).
            Cond::Str(k, eq, lit) => self.text(st, *k)?.is_some_and(|t| *t == **lit) == *eq,
            Cond::Cmp(a, op, b) => {
                // A read caches `url.path`: take it before borrowing the values.
                self.warm(st, a)?;
                self.warm(st, b)?;
                compare(&self.peek(st, a)?, *op, &self.peek(st, b)?)
            }
            Cond::IsMatch(g, re) => {
                let v = self.value(st, g)?;
                v.to_text().is_some_and(|t| re.is_match(&t))
            }
            Cond::And(items) => {
                for p in items {
                    if !self.test(st, p)? {
                        return Ok(false);
                    }
                }
                true
            }
            Cond::Or(items) => {
                for p in items {
                    if self.test(st, p)? {
                        return Ok(true);
                    }
                }
                false
            }
            Cond::Not(p) => !self.test(st, p)?,
        })
    }

    #[inline]
    fn warm(&self, st: &mut State<'_>, g: &Get) -> Result<(), Bail> {
        if let Get::Attr(k) = g
            && self.keys[usize::from(*k)].known == Some(Known::UrlPath)
            && st.path.is_none()
            && st.written(*k, &self.keys).is_none()
        {
            st.path = match known::read(st.span, Known::UrlPath) {
                Some(Some(Own::Str(Cow::Borrowed(p)))) => Some(p),
                _ => return Err(Bail),
            };
        }
        Ok(())
    }

    fn value<'v>(&self, st: &'v mut State<'_>, g: &'v Get) -> Result<Value<'v>, Bail> {
        self.warm(st, g)?;
        self.peek(st, g)
    }

    /// Whether `k` is set on the span as changed so far (no value built).
    #[inline]
    fn is_set(&self, st: &State<'_>, k: Slot) -> Result<bool, Bail> {
        if let Some(v) = st.written(k, &self.keys) {
            return Ok(v.is_some());
        }
        let known = self.keys[usize::from(k)].known.ok_or(Bail)?;
        Ok(known::read(st.span, known).ok_or(Bail)?.is_some())
    }

    /// `k` on the span as changed so far when it is a string (addresses are read as strings),
    /// None when it is not (nil, an int …).
    #[inline]
    fn text<'v>(&self, st: &'v mut State<'_>, k: Slot) -> Result<Option<Cow<'v, str>>, Bail> {
        if st.written & (1 << k) != 0 {
            return Ok(match st.written(k, &self.keys) {
                Some(Some(AttrVal::Str(s))) => Some(Cow::Borrowed(&**s)),
                _ => None,
            });
        }
        let known = self.keys[usize::from(k)].known.ok_or(Bail)?;
        if known == Known::UrlPath {
            let p = match st.path {
                Some(p) => p,
                None => match known::read(st.span, known) {
                    Some(Some(Own::Str(Cow::Borrowed(p)))) => *st.path.insert(p),
                    _ => return Err(Bail),
                },
            };
            return Ok(Some(Cow::Borrowed(p)));
        }
        Ok(match known::read(st.span, known).ok_or(Bail)? {
            Some(Own::Str(s)) => Some(s),
            Some(Own::Addr(a)) => Some(Cow::Owned(addr_text(a))),
            Some(Own::Int(_)) | None => None,
        })
    }

    /// A value, once `warm` has cached what it caches.
    #[inline]
    fn peek<'v>(&self, st: &'v State<'_>, g: &'v Get) -> Result<Value<'v>, Bail> {
        Ok(match g {
            Get::Lit(v) => v.borrow(),
            Get::Field(f) => field(st, *f),
            Get::Attr(k) => return self.peek_attr(st, *k),
        })
    }

    #[inline]
    fn peek_attr<'v>(&self, st: &'v State<'_>, k: Slot) -> Result<Value<'v>, Bail> {
        if let Some(v) = st.written(k, &self.keys) {
            return Ok(v.map_or(Value::Nil, Value::from));
        }
        let known = self.keys[usize::from(k)].known.ok_or(Bail)?;
        if known == Known::UrlPath
            && let Some(p) = st.path
        {
            return Ok(Value::Str(Cow::Borrowed(p)));
        }
        Ok(match known::read(st.span, known).ok_or(Bail)? {
            None => Value::Nil,
            Some(Own::Str(s)) => Value::Str(s),
            Some(Own::Int(i)) => Value::Int(i),
            Some(Own::Addr(a)) => Value::Str(Cow::Owned(addr_text(a))),
        })
    }
}

impl State<'_> {
    /// The change staged for `k`: None when untouched, `Some(None)` when deleted.
    #[inline]
    fn written(&self, k: Slot, keys: &[Key]) -> Option<Option<&AttrVal>> {
        if self.written & (1 << k) == 0 {
            return None;
        }
        let name = &*keys[usize::from(k)].name;
        self.edits.as_deref().and_then(|e| e.get(name))
    }

    #[inline]
    fn put(&mut self, k: Slot, v: Option<AttrVal>, keys: &[Key]) {
        let key = &keys[usize::from(k)].name;
        let edits = &mut self.edits.get_or_insert_with(Box::default).0;
        if self.written & (1 << k) != 0
            && let Some(e) = edits.iter_mut().find(|(n, _)| *n == *key)
        {
            e.1 = v;
            return;
        }
        self.written |= 1 << k;
        edits.push((key.clone(), v));
    }
}

/// Fields the fast path reads (the others allocate, or belong to other contexts).
fn readable(f: Field) -> bool {
    int_field(f) || matches!(f, Field::Name | Field::KindString | Field::StatusMessage)
}

fn int_field(f: Field) -> bool {
    matches!(
        f,
        Field::Kind | Field::StatusCode | Field::Duration | Field::StartTime | Field::EndTime
    )
}

/// As `SpanRecord::field` (the fast path never changes the status).
fn int_of(s: &Span, f: Field) -> i64 {
    match f {
        Field::Kind => match s.kind {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        },
        Field::StatusCode => match s.status {
            SpanStatus::Unset => 0,
            SpanStatus::Error(_) => 2,
        },
        Field::Duration => s
            .end_unix_ns
            .saturating_sub(s.start_unix_ns)
            .min(i64::MAX as u64) as i64,
        Field::StartTime => s.start_unix_ns as i64,
        Field::EndTime => s.end_unix_ns as i64,
        _ => 0,
    }
}

fn field<'v>(st: &'v State<'_>, f: Field) -> Value<'v> {
    let s = st.span;
    match f {
        Field::Name => Value::Str(Cow::Borrowed(st.name.as_deref().unwrap_or(&s.name))),
        Field::KindString => Value::Str(Cow::Borrowed(match s.kind {
            SpanKind::Server => "Server",
            SpanKind::Client => "Client",
        })),
        Field::StatusMessage => match &s.status {
            SpanStatus::Error(m) => Value::Str(Cow::Borrowed(m)),
            SpanStatus::Unset => Value::Str(Cow::Borrowed("")),
        },
        f => Value::Int(int_of(s, f)),
    }
}

/// `compare` of two integers.
#[inline]
fn int_cmp(a: i64, op: CmpOp, b: i64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}
