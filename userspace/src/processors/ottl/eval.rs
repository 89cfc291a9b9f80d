//! Compiled statements and their execution. Everything that can be decided once is decided by
//! `compile.rs` (paths resolved to fields and maps, regular expressions compiled, literal values
//! built), so running a statement on a record is a walk over these enums: no parsing, no
//! lookup by name, and no allocation unless a value is written.

use std::borrow::Cow;

use super::grammar::{CmpOp, MathOp};
use super::key::Key;
use super::pattern::Pattern;
use super::value::{Field, Map, Record, Value};

/// Where a value comes from.
#[derive(Debug)]
pub enum Getter {
    Lit(Value<'static>),
    Field(Field),
    Attr(Map, Key),
    /// A converter's result indexed (`Split(s, ",")[0]`).
    Index(Box<Getter>, Vec<i64>),
    List(Vec<Getter>),
    Math(Box<Getter>, MathOp, Box<Getter>),
    IsMatch(Box<Getter>, Pattern),
    Concat(Vec<Getter>, Box<Getter>),
    Sha256(Box<Getter>),
    Int(Box<Getter>),
    String(Box<Getter>),
    Split(Box<Getter>, Box<Getter>),
}

/// Where a value is written.
#[derive(Clone, Debug)]
pub enum Setter {
    Field(Field),
    Attr(Map, Key),
}

#[derive(Debug)]
pub enum Editor {
    Set(Setter, Getter),
    /// `delete_key` with a literal key.
    Delete(Map, Key),
    DeleteKey(Map, Getter),
    DeleteMatchingKeys(Map, Pattern),
    KeepKeys(Map, Vec<Box<str>>),
    /// Target (as read and as written), pattern, replacement, hash the replacement.
    ReplacePattern(Getter, Setter, Pattern, Box<str>, bool),
    /// Map, on keys (else values), pattern, replacement, hash the replacement.
    ReplaceAllPatterns(Map, bool, Pattern, Box<str>, bool),
    TruncateAll(Map, usize),
    Limit(Map, usize, Vec<Box<str>>),
}

/// A compiled condition.
#[derive(Debug)]
pub enum Pred {
    Or(Vec<Pred>),
    And(Vec<Pred>),
    Not(Box<Pred>),
    Cmp(Getter, CmpOp, Getter),
    /// A comparison with a literal (no copy of the literal per record).
    CmpLit(Getter, CmpOp, Value<'static>),
    Value(Getter),
}

/// A compiled statement and its source text (for error messages).
#[derive(Debug)]
pub struct Statement {
    pub editor: Editor,
    pub condition: Option<Pred>,
    pub text: Box<str>,
}

/// An error while running a statement on one record.
pub type EvalError = String;

impl Getter {
    /// The attribute keys (of `attributes`) this getter reads, added to `out`.
    pub fn attr_keys(&self, out: &mut Vec<Box<str>>) {
        match self {
            Getter::Attr(Map::Attributes, k) => {
                if !out.iter().any(|o| **o == *k.name) {
                    out.push((*k.name).into());
                }
            }
            Getter::Lit(_) | Getter::Field(_) | Getter::Attr(..) => {}
            Getter::Index(g, _)
            | Getter::IsMatch(g, _)
            | Getter::Sha256(g)
            | Getter::Int(g)
            | Getter::String(g) => g.attr_keys(out),
            Getter::List(items) => items.iter().for_each(|g| g.attr_keys(out)),
            Getter::Concat(items, d) => {
                items.iter().for_each(|g| g.attr_keys(out));
                d.attr_keys(out);
            }
            Getter::Math(a, _, b) | Getter::Split(a, b) => {
                a.attr_keys(out);
                b.attr_keys(out);
            }
        }
    }

    /// The value on `r`. The common getters here, the converters out of line (their large
    /// frame would cost every read).
    #[inline]
    pub fn get<'r, R: Record + ?Sized>(&'r self, r: &'r R) -> Result<Value<'r>, EvalError> {
        match self {
            Getter::Lit(v) => Ok(borrowed(v)),
            Getter::Field(f) => Ok(r.field(*f)),
            Getter::Attr(m, k) => Ok(r.attr_key(*m, k)),
            _ => self.convert(r),
        }
    }

    #[inline(never)]
    fn convert<'r, R: Record + ?Sized>(&'r self, r: &'r R) -> Result<Value<'r>, EvalError> {
        Ok(match self {
            Getter::Lit(_) | Getter::Field(_) | Getter::Attr(..) => self.get(r)?,
            Getter::Index(g, idx) => {
                let mut v = g.get(r)?;
                for i in idx {
                    v = match v {
                        Value::List(mut l) => {
                            let n = l.len() as i64;
                            if *i < 0 || *i >= n {
                                return Err(format!("index {i} out of range (list of {n})"));
                            }
                            l.swap_remove(*i as usize)
                        }
                        Value::Nil => Value::Nil,
                        other => return Err(format!("cannot index {}", other.type_name())),
                    };
                }
                v
            }
            Getter::List(items) => {
                Value::List(items.iter().map(|g| g.get(r)).collect::<Result<_, _>>()?)
            }
            Getter::Math(a, op, b) => math(a.get(r)?, *op, b.get(r)?)?,
            Getter::IsMatch(g, re) => {
                let v = g.get(r)?;
                Value::Bool(v.to_text().is_some_and(|t| re.is_match(&t)))
            }
            Getter::Concat(items, delim) => {
                let delim = delim.get(r)?;
                let delim = delim.to_text().unwrap_or_default();
                let mut out = String::new();
                for (n, g) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(&delim);
                    }
                    if let Some(t) = g.get(r)?.to_text() {
                        out.push_str(&t);
                    }
                }
                Value::Str(Cow::Owned(out))
            }
            Getter::Sha256(g) => match g.get(r)?.to_text() {
                Some(t) => Value::Str(Cow::Owned(sha256_hex(&t))),
                None => Value::Nil,
            },
            Getter::Int(g) => match g.get(r)? {
                Value::Int(i) => Value::Int(i),
                Value::Float(f) => Value::Int(f as i64),
                Value::Bool(b) => Value::Int(i64::from(b)),
                Value::Str(s) => s.trim().parse().map_or(Value::Nil, Value::Int),
                _ => Value::Nil,
            },
            Getter::String(g) => match g.get(r)? {
                Value::Nil => Value::Nil,
                v @ Value::Str(_) => v,
                v => match v.to_text() {
                    Some(t) => Value::Str(Cow::Owned(t.into_owned())),
                    None => Value::Nil,
                },
            },
            Getter::Split(g, delim) => {
                let v = g.get(r)?;
                let d = delim.get(r)?;
                match (v, d.as_str()) {
                    (Value::Str(s), Some(d)) => Value::List(
                        s.split(d)
                            .map(|p| Value::Str(Cow::Owned(p.to_string())))
                            .collect(),
                    ),
                    (Value::Nil, _) => Value::Nil,
                    (v, _) => return Err(format!("Split: cannot split {}", v.type_name())),
                }
            }
        })
    }
}

fn borrowed<'a>(v: &'a Value<'_>) -> Value<'a> {
    v.borrow()
}

pub fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn math(a: Value<'_>, op: MathOp, b: Value<'_>) -> Result<Value<'static>, EvalError> {
    Ok(match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(match op {
            MathOp::Add => x.wrapping_add(y),
            MathOp::Sub => x.wrapping_sub(y),
            MathOp::Mul => x.wrapping_mul(y),
            MathOp::Div if y == 0 => return Err("division by zero".into()),
            MathOp::Div => x.wrapping_div(y),
        }),
        (Value::Float(x), Value::Float(y)) => Value::Float(match op {
            MathOp::Add => x + y,
            MathOp::Sub => x - y,
            MathOp::Mul => x * y,
            MathOp::Div if y == 0.0 => return Err("division by zero".into()),
            MathOp::Div => x / y,
        }),
        (a, b) => {
            return Err(format!(
                "cannot do math on {} and {} (both must be ints or both doubles)",
                a.type_name(),
                b.type_name()
            ));
        }
    })
}

/// OTTL comparison: values of different types are unequal and unordered (ints and doubles
/// compare as numbers); `nil` equals only `nil`.
#[inline]
pub fn compare(a: &Value<'_>, op: CmpOp, b: &Value<'_>) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Value::Nil, Value::Nil) => Some(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Float(y)) => (*x as f64).partial_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        // Equality first: lengths differ more often than not.
        (Value::Str(x), Value::Str(y)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
            return (x == y) == (op == CmpOp::Eq);
        }
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::List(x), Value::List(y)) => (x == y).then_some(Ordering::Equal),
        _ => None,
    };
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

impl Pred {
    /// See [`Getter::attr_keys`].
    pub fn attr_keys(&self, out: &mut Vec<Box<str>>) {
        match self {
            Pred::Or(items) | Pred::And(items) => items.iter().for_each(|p| p.attr_keys(out)),
            Pred::Not(p) => p.attr_keys(out),
            Pred::Cmp(a, _, b) => {
                a.attr_keys(out);
                b.attr_keys(out);
            }
            Pred::CmpLit(g, ..) | Pred::Value(g) => g.attr_keys(out),
        }
    }

    /// Whether `r` meets the condition: comparisons here, the rest out of line.
    #[inline]
    pub fn test<R: Record + ?Sized>(&self, r: &R) -> Result<bool, EvalError> {
        match self {
            Pred::CmpLit(a, op, b) => Ok(compare(&a.get(r)?, *op, b)),
            Pred::Cmp(a, op, b) => Ok(compare(&a.get(r)?, *op, &b.get(r)?)),
            _ => self.test_other(r),
        }
    }

    #[inline(never)]
    fn test_other<R: Record + ?Sized>(&self, r: &R) -> Result<bool, EvalError> {
        Ok(match self {
            Pred::Or(items) => {
                for p in items {
                    if p.test(r)? {
                        return Ok(true);
                    }
                }
                false
            }
            Pred::And(items) => {
                for p in items {
                    if !p.test(r)? {
                        return Ok(false);
                    }
                }
                true
            }
            Pred::Not(p) => !p.test(r)?,
            Pred::Cmp(a, op, b) => compare(&a.get(r)?, *op, &b.get(r)?),
            Pred::CmpLit(a, op, b) => compare(&a.get(r)?, *op, b),
            Pred::Value(g) => match g.get(r)? {
                Value::Bool(b) => b,
                other => {
                    return Err(format!(
                        "a condition must be a bool, this is {}",
                        other.type_name()
                    ));
                }
            },
        })
    }
}

fn write<R: Record + ?Sized>(r: &mut R, to: &Setter, v: Value<'_>) -> Result<(), EvalError> {
    match to {
        Setter::Field(f) => r.set_field(*f, v),
        Setter::Attr(m, k) => r.set_attr_key(*m, k, Some(v)),
    }
}

/// The replacement of a `replace_*` editor, hashed (SHA256 argument) when asked.
pub(super) fn replace(re: &Pattern, text: &str, with: &str, hash: bool) -> Option<String> {
    if !re.is_match(text) {
        return None;
    }
    let re = re.regex();
    if !hash {
        return Some(re.replace_all(text, with).into_owned());
    }
    Some(
        re.replace_all(text, |caps: &regex::Captures<'_>| {
            let mut expanded = String::new();
            caps.expand(with, &mut expanded);
            sha256_hex(&expanded)
        })
        .into_owned(),
    )
}

/// Keys of `m` for which `keep` says false are deleted.
fn retain<R: Record + ?Sized>(
    r: &mut R,
    m: Map,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<(), EvalError> {
    let mut gone: Vec<String> = Vec::new();
    r.attrs(m, &mut |k, _| {
        if !keep(k) {
            gone.push(k.to_string());
        }
    });
    for k in gone {
        r.set_attr(m, &k, None)?;
    }
    Ok(())
}

impl Editor {
    /// Runs the editor on `r`: the common editors here, the bulk ones out of line.
    #[inline]
    pub fn run<R: Record + ?Sized>(&self, r: &mut R) -> Result<(), EvalError> {
        match self {
            // A literal borrows from the program, not the record: no copy before the write.
            Editor::Set(to, Getter::Lit(v)) => {
                if !v.is_nil() {
                    match to {
                        Setter::Attr(m, k) => r.set_attr_lit(*m, k, v)?,
                        Setter::Field(_) => write(r, to, borrowed(v))?,
                    }
                }
            }
            Editor::Delete(m, k) => {
                if !r.attr_key(*m, k).is_nil() {
                    r.set_attr_key(*m, k, None)?;
                }
            }
            Editor::Set(to, from) => {
                let v = from.get(r)?.into_owned();
                // Setting nil leaves the target alone (as the Collector does).
                if !v.is_nil() {
                    write(r, to, v)?;
                }
            }
            Editor::ReplacePattern(from, to, re, with, hash) => {
                let new = match from.get(r)? {
                    Value::Str(s) => replace(re, &s, with, *hash),
                    _ => None,
                };
                if let Some(new) = new {
                    write(r, to, Value::Str(Cow::Owned(new)))?;
                }
            }
            _ => self.run_other(r)?,
        }
        Ok(())
    }

    #[inline(never)]
    fn run_other<R: Record + ?Sized>(&self, r: &mut R) -> Result<(), EvalError> {
        match self {
            Editor::Set(..) | Editor::Delete(..) | Editor::ReplacePattern(..) => self.run(r)?,
            Editor::DeleteKey(m, key) => {
                let key = key.get(r)?.into_owned();
                if let Some(k) = key.as_str()
                    && !r.attr(*m, k).is_nil()
                {
                    r.set_attr(*m, k, None)?;
                }
            }
            Editor::DeleteMatchingKeys(m, re) => retain(r, *m, |k| !re.is_match(k))?,
            Editor::KeepKeys(m, keys) => retain(r, *m, |k| keys.iter().any(|x| &**x == k))?,
            Editor::ReplaceAllPatterns(m, on_keys, re, with, hash) => {
                let mut changes: Vec<(String, Option<String>, Option<Value<'static>>)> = Vec::new();
                r.attrs(*m, &mut |k, v| {
                    if *on_keys {
                        if let Some(new) = replace(re, k, with, *hash) {
                            changes.push((k.to_string(), Some(new), Some(v.into_owned())));
                        }
                    } else if let Value::Str(s) = &v
                        && let Some(new) = replace(re, s, with, *hash)
                    {
                        changes.push((k.to_string(), None, Some(Value::Str(new.into()))));
                    }
                });
                for (k, new_key, v) in changes {
                    match new_key {
                        Some(nk) => {
                            r.set_attr(*m, &k, None)?;
                            r.set_attr(*m, &nk, v)?;
                        }
                        None => r.set_attr(*m, &k, v)?,
                    }
                }
            }
            Editor::TruncateAll(m, limit) => {
                let mut changes: Vec<(String, String)> = Vec::new();
                r.attrs(*m, &mut |k, v| {
                    if let Value::Str(s) = v
                        && s.len() > *limit
                    {
                        let mut end = *limit;
                        while !s.is_char_boundary(end) {
                            end -= 1;
                        }
                        changes.push((k.to_string(), s[..end].to_string()));
                    }
                });
                for (k, v) in changes {
                    r.set_attr(*m, &k, Some(Value::Str(v.into())))?;
                }
            }
            Editor::Limit(m, limit, priority) => {
                let mut keys: Vec<String> = Vec::new();
                r.attrs(*m, &mut |k, _| keys.push(k.to_string()));
                if keys.len() > *limit {
                    // Priority keys first (those present), then the others in order.
                    let mut kept = 0usize;
                    let mut keep: Vec<bool> = vec![false; keys.len()];
                    for p in priority {
                        if let Some(n) = keys.iter().position(|k| k == &**p)
                            && kept < *limit
                            && !keep[n]
                        {
                            keep[n] = true;
                            kept += 1;
                        }
                    }
                    for flag in keep.iter_mut() {
                        if kept < *limit && !*flag {
                            *flag = true;
                            kept += 1;
                        }
                    }
                    for (k, kept) in keys.iter().zip(keep) {
                        if !kept {
                            r.set_attr(*m, k, None)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Statement {
    /// The attribute keys the statement reads (see [`Getter::attr_keys`]).
    pub fn attr_keys(&self, out: &mut Vec<Box<str>>) {
        if let Some(c) = &self.condition {
            c.attr_keys(out);
        }
        match &self.editor {
            Editor::Set(_, g) | Editor::ReplacePattern(g, ..) => g.attr_keys(out),
            Editor::Delete(Map::Attributes, k) => {
                Getter::Attr(Map::Attributes, k.clone()).attr_keys(out)
            }
            _ => {}
        }
    }

    /// Runs the statement when its condition holds.
    pub fn run<R: Record + ?Sized>(&self, r: &mut R) -> Result<(), EvalError> {
        if let Some(c) = &self.condition
            && !c.test(r)?
        {
            return Ok(());
        }
        self.editor.run(r)
    }
}
