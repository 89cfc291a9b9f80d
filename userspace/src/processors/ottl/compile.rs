//! Syntax tree → compiled statements (`eval.rs`) for one context: paths become fields and maps
//! of that context, enums become their numbers, functions are checked for their arguments and
//! their regular expressions compiled. Everything a statement gets wrong that can be known
//! before a span arrives is an error here, with the byte offset it is about.

use super::eval::{Editor, Getter, Pred, Setter, Statement};
use super::grammar::{self, Call, Cond, Expr, Lit, Path};
use super::key::{Key, intern};
use super::pattern::Pattern;
use super::value::{Field, Map, Value};

/// What a statement runs on: the Collector's context names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Span,
    DataPoint,
    Log,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::Span => "span",
            Context::DataPoint => "datapoint",
            Context::Log => "log",
        }
    }
}

/// A statement that does not compile: what is wrong, and where (byte offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub at: usize,
    pub message: String,
}

type Res<T> = Result<T, CompileError>;

fn err<T>(at: usize, message: impl Into<String>) -> Res<T> {
    Err(CompileError {
        at,
        message: message.into(),
    })
}

impl From<grammar::SyntaxError> for CompileError {
    fn from(e: grammar::SyntaxError) -> Self {
        CompileError {
            at: e.at,
            message: e.message,
        }
    }
}

/// The editors and converters ztrace runs (the docs list them; the rest are refused by name).
pub const EDITORS: [&str; 8] = [
    "set",
    "delete_key",
    "delete_matching_keys",
    "keep_keys",
    "replace_pattern",
    "replace_all_patterns",
    "truncate_all",
    "limit",
];
pub const CONVERTERS: [&str; 6] = ["IsMatch", "Concat", "SHA256", "Int", "String", "Split"];

pub fn statement(ctx: Context, text: &str) -> Res<Statement> {
    let st = grammar::parse_statement(text)?;
    let editor = editor(ctx, &st.editor)?;
    let condition = st.condition.as_ref().map(|c| cond(ctx, c)).transpose()?;
    Ok(Statement {
        editor,
        condition,
        text: text.into(),
    })
}

pub fn condition(ctx: Context, text: &str) -> Res<Pred> {
    cond(ctx, &grammar::parse_condition(text)?)
}

fn cond(ctx: Context, c: &Cond) -> Res<Pred> {
    Ok(match c {
        Cond::Or(items) => Pred::Or(items.iter().map(|c| cond(ctx, c)).collect::<Res<_>>()?),
        Cond::And(items) => Pred::And(items.iter().map(|c| cond(ctx, c)).collect::<Res<_>>()?),
        Cond::Not(c, _) => Pred::Not(Box::new(cond(ctx, c)?)),
        Cond::Cmp(a, op, b) => match (getter(ctx, a)?, getter(ctx, b)?) {
            (a, Getter::Lit(b)) => Pred::CmpLit(a, *op, b),
            (a, b) => Pred::Cmp(a, *op, b),
        },
        Cond::Value(e) => Pred::Value(getter(ctx, e)?),
    })
}

/// What a path names.
enum Target {
    Field(Field),
    Map(Map),
    Attr(Map, Key),
}

fn path(ctx: Context, p: &Path) -> Res<Target> {
    let mut fields: Vec<&str> = p.fields.iter().map(String::as_str).collect();
    // Newer Collector versions prefix paths with their context (`span.name`, `log.body`).
    if fields.len() > 1 && fields[0] == ctx.name() {
        fields.remove(0);
    }
    let map = match fields.as_slice() {
        ["attributes"] => Some(Map::Attributes),
        ["resource", "attributes"] => Some(Map::Resource),
        _ => None,
    };
    if let Some(m) = map {
        return match p.keys.as_slice() {
            [] => Ok(Target::Map(m)),
            [Expr::Lit(Lit::Str(k), _)] => Ok(Target::Attr(
                m,
                Key::new(k, ctx == Context::Span && m == Map::Attributes),
            )),
            [k] => err(k.at(), "an attribute key must be a string literal here"),
            [_, k, ..] => err(
                k.at(),
                "nested keys are not supported: ztrace's attribute values are not maps",
            ),
        };
    }
    if let Some(k) = p.keys.first() {
        return err(k.at(), "this path cannot be indexed");
    }
    use Field::*;
    let field = match (ctx, fields.as_slice()) {
        (Context::Span, ["name"]) => Name,
        (Context::Span, ["kind"]) => Kind,
        (Context::Span, ["kind", "string"]) => KindString,
        (Context::Span, ["status", "code"]) => StatusCode,
        (Context::Span, ["status", "message"]) => StatusMessage,
        (Context::Span, ["duration"]) => Duration,
        (Context::Span, ["end_time_unix_nano"]) => EndTime,
        (Context::Span, ["parent_span_id", "string"]) => ParentSpanId,
        (Context::Span | Context::Log, ["trace_id", "string"]) => TraceId,
        (Context::Span | Context::Log, ["span_id", "string"]) => SpanId,
        (Context::Span | Context::DataPoint, ["start_time_unix_nano"]) => StartTime,
        (Context::DataPoint, ["metric", "name"]) => MetricName,
        (Context::DataPoint, ["metric", "unit"]) => MetricUnit,
        (Context::DataPoint, ["metric", "description"]) => MetricDescription,
        (Context::DataPoint, ["metric", "type"]) => MetricType,
        (Context::DataPoint, ["value_double"]) => ValueDouble,
        (Context::DataPoint, ["value_int"]) => ValueInt,
        (Context::DataPoint | Context::Log, ["time_unix_nano"]) => Time,
        (Context::Log, ["body"] | ["body", "string"]) => Body,
        (Context::Log, ["severity_number"]) => SeverityNumber,
        (Context::Log, ["severity_text"]) => SeverityText,
        (Context::Log, ["observed_time_unix_nano"]) => ObservedTime,
        (Context::Log, ["flags"]) => Flags,
        _ => {
            return err(
                p.at,
                format!(
                    "unknown path `{}` in the {} context (see the supported paths in the docs)",
                    p.fields.join("."),
                    ctx.name()
                ),
            );
        }
    };
    Ok(Target::Field(field))
}

fn writable(ctx: Context, t: &Target) -> bool {
    use Field::*;
    match (ctx, t) {
        (_, Target::Attr(Map::Resource, _) | Target::Map(Map::Resource)) => false,
        (_, Target::Attr(..) | Target::Map(_)) => true,
        (Context::Span, Target::Field(f)) => matches!(f, Name | StatusCode | StatusMessage),
        (Context::DataPoint, Target::Field(f)) => matches!(
            f,
            MetricName | MetricUnit | MetricDescription | ValueDouble | ValueInt
        ),
        (Context::Log, Target::Field(f)) => matches!(f, Body | SeverityNumber | SeverityText),
    }
}

fn setter(ctx: Context, e: &Expr) -> Res<Setter> {
    let Expr::Path(p) = e else {
        return err(
            e.at(),
            "expected a path to write to, such as attributes[\"key\"]",
        );
    };
    let t = path(ctx, p)?;
    if !writable(ctx, &t) {
        let why = if p.fields.first().is_some_and(|f| f == "resource") {
            "the Resource of a process is shared by all its records; set resource attributes with OTEL_RESOURCE_ATTRIBUTES"
        } else {
            "it is read-only in ztrace"
        };
        return err(
            p.at,
            format!("`{}` cannot be set: {why}", p.fields.join(".")),
        );
    }
    match t {
        Target::Field(f) => Ok(Setter::Field(f)),
        Target::Attr(m, k) => Ok(Setter::Attr(m, k)),
        Target::Map(_) => err(p.at, "a whole map cannot be set; set one key"),
    }
}

fn map_target(ctx: Context, e: &Expr) -> Res<Map> {
    let Expr::Path(p) = e else {
        return err(e.at(), "expected a map such as attributes");
    };
    let t = path(ctx, p)?;
    if !writable(ctx, &t) {
        return err(
            p.at,
            "resource attributes cannot be changed: every record of a process shares them",
        );
    }
    match t {
        Target::Map(m) => Ok(m),
        _ => err(p.at, "expected a map such as attributes"),
    }
}

fn enum_value(name: &str) -> Option<i64> {
    const SEVERITIES: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        "METRIC_DATA_TYPE_NONE" => 0,
        "METRIC_DATA_TYPE_GAUGE" => 1,
        "METRIC_DATA_TYPE_SUM" => 2,
        "METRIC_DATA_TYPE_HISTOGRAM" => 3,
        "METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM" => 4,
        "METRIC_DATA_TYPE_SUMMARY" => 5,
        "AGGREGATION_TEMPORALITY_UNSPECIFIED" => 0,
        "AGGREGATION_TEMPORALITY_DELTA" => 1,
        "AGGREGATION_TEMPORALITY_CUMULATIVE" => 2,
        "SEVERITY_NUMBER_UNSPECIFIED" => 0,
        _ => {
            // SEVERITY_NUMBER_INFO = 9, SEVERITY_NUMBER_INFO2 = 10 … (4 per level, from 1).
            let rest = name.strip_prefix("SEVERITY_NUMBER_")?;
            let (level, n) = match rest.char_indices().find(|(_, c)| c.is_ascii_digit()) {
                Some((i, _)) => (&rest[..i], rest[i..].parse::<i64>().ok()?),
                None => (rest, 1),
            };
            let base = SEVERITIES.iter().position(|s| *s == level)? as i64 * 4 + 1;
            if !(1..=4).contains(&n) {
                return None;
            }
            base + n - 1
        }
    })
}

fn literal(l: &Lit) -> Value<'static> {
    match l {
        Lit::Nil => Value::Nil,
        Lit::Bool(b) => Value::Bool(*b),
        Lit::Int(i) => Value::Int(*i),
        Lit::Float(f) => Value::Float(*f),
        Lit::Str(s) => Value::Str(intern(s)),
    }
}

fn getter(ctx: Context, e: &Expr) -> Res<Getter> {
    Ok(match e {
        Expr::Lit(l, _) => Getter::Lit(literal(l)),
        Expr::Enum(name, at) => match enum_value(name) {
            Some(v) => Getter::Lit(Value::Int(v)),
            None => return err(*at, format!("unknown enum `{name}`")),
        },
        Expr::Path(p) => match path(ctx, p)? {
            Target::Field(f) => Getter::Field(f),
            Target::Attr(m, k) => Getter::Attr(m, k),
            Target::Map(_) => {
                return err(
                    p.at,
                    "a whole map cannot be used as a value here; name a key",
                );
            }
        },
        Expr::List(items, _) => {
            Getter::List(items.iter().map(|e| getter(ctx, e)).collect::<Res<_>>()?)
        }
        Expr::Map(_, at) => return err(*at, "map literals are not supported by ztrace"),
        Expr::Math(a, op, b, _) => {
            Getter::Math(Box::new(getter(ctx, a)?), *op, Box::new(getter(ctx, b)?))
        }
        Expr::Call(call, keys) => {
            let g = converter(ctx, call)?;
            if keys.is_empty() {
                g
            } else {
                let mut idx = Vec::new();
                for k in keys {
                    match k {
                        Expr::Lit(Lit::Int(i), _) => idx.push(*i),
                        other => return err(other.at(), "an index must be an int literal"),
                    }
                }
                Getter::Index(Box::new(g), idx)
            }
        }
    })
}

/// A call's arguments in parameter order (named ones put in place), checked for number.
fn args<'c>(call: &'c Call, params: &[&str], required: usize) -> Res<Vec<Option<&'c Expr>>> {
    let mut out: Vec<Option<&Expr>> = vec![None; params.len()];
    let mut next = 0;
    for a in &call.args {
        let slot = match &a.name {
            Some(n) => match params.iter().position(|p| p == n) {
                Some(i) => i,
                None => {
                    return err(
                        a.value.at(),
                        format!(
                            "{} has no parameter `{n}` (it takes {})",
                            call.name,
                            params.join(", ")
                        ),
                    );
                }
            },
            None => next,
        };
        if slot >= params.len() {
            return err(
                a.value.at(),
                format!(
                    "{} takes at most {} arguments ({})",
                    call.name,
                    params.len(),
                    params.join(", ")
                ),
            );
        }
        out[slot] = Some(&a.value);
        next = slot + 1;
    }
    if let Some(missing) = (0..required).find(|i| out[*i].is_none()) {
        return err(
            call.at,
            format!("{} needs the argument `{}`", call.name, params[missing]),
        );
    }
    Ok(out)
}

fn string_lit<'e>(e: &'e Expr, what: &str) -> Res<&'e str> {
    match e {
        Expr::Lit(Lit::Str(s), _) => Ok(s),
        other => err(other.at(), format!("{what} must be a string literal")),
    }
}

fn regex(e: &Expr) -> Res<Pattern> {
    let s = string_lit(e, "a pattern")?;
    Pattern::new(s).or_else(|r| err(e.at(), format!("invalid regular expression: {r}")))
}

fn int_lit(e: &Expr, what: &str) -> Res<usize> {
    match e {
        Expr::Lit(Lit::Int(i), _) if *i >= 0 => Ok(*i as usize),
        other => err(other.at(), format!("{what} must be a non-negative int")),
    }
}

fn key_list(e: &Expr) -> Res<Vec<Box<str>>> {
    match e {
        Expr::List(items, _) => items
            .iter()
            .map(|i| string_lit(i, "a key").map(Into::into))
            .collect(),
        other => err(other.at(), "expected a list of keys such as [\"a\", \"b\"]"),
    }
}

/// The optional `function` (a hash of the replacement) and `replacementFormat` arguments.
fn hash_arg(function: Option<&Expr>, format: Option<&Expr>) -> Res<bool> {
    if let Some(f) = format
        && string_lit(f, "replacementFormat")? != "%s"
    {
        return err(
            f.at(),
            "replacementFormat other than \"%s\" is not supported",
        );
    }
    match function {
        None => Ok(false),
        Some(Expr::Enum(n, _)) if n == "SHA256" => Ok(true),
        Some(other) => err(
            other.at(),
            "the only replacement function supported is SHA256",
        ),
    }
}

fn converter(ctx: Context, call: &Call) -> Res<Getter> {
    let g = |e: Option<&Expr>| -> Res<Box<Getter>> {
        Ok(Box::new(getter(ctx, e.expect("checked by args"))?))
    };
    Ok(match call.name.as_str() {
        "IsMatch" => {
            let a = args(call, &["target", "pattern"], 2)?;
            Getter::IsMatch(g(a[0])?, regex(a[1].expect("required"))?)
        }
        "Concat" => {
            let a = args(call, &["vals", "delimiter"], 2)?;
            let Some(Expr::List(items, _)) = a[0] else {
                return err(call.at, "Concat: `vals` must be a list such as [a, b]");
            };
            let items = items.iter().map(|e| getter(ctx, e)).collect::<Res<_>>()?;
            Getter::Concat(items, g(a[1])?)
        }
        "SHA256" => Getter::Sha256(g(args(call, &["value"], 1)?[0])?),
        "Int" => Getter::Int(g(args(call, &["value"], 1)?[0])?),
        "String" => Getter::String(g(args(call, &["value"], 1)?[0])?),
        "Split" => {
            let a = args(call, &["target", "delimiter"], 2)?;
            Getter::Split(g(a[0])?, g(a[1])?)
        }
        other => {
            return err(
                call.at,
                format!(
                    "the converter `{other}` is not supported by ztrace (supported: {})",
                    CONVERTERS.join(", ")
                ),
            );
        }
    })
}

fn editor(ctx: Context, call: &Call) -> Res<Editor> {
    fn req(e: Option<&Expr>) -> &Expr {
        e.expect("checked by args")
    }
    Ok(match call.name.as_str() {
        "set" => {
            let a = args(call, &["target", "value"], 2)?;
            Editor::Set(setter(ctx, req(a[0]))?, getter(ctx, req(a[1]))?)
        }
        "delete_key" => {
            let a = args(call, &["target", "key"], 2)?;
            let m = map_target(ctx, req(a[0]))?;
            match getter(ctx, req(a[1]))? {
                Getter::Lit(Value::Str(k)) => Editor::Delete(
                    m,
                    Key::new(&k, ctx == Context::Span && m == Map::Attributes),
                ),
                key => Editor::DeleteKey(m, key),
            }
        }
        "delete_matching_keys" => {
            let a = args(call, &["target", "pattern"], 2)?;
            Editor::DeleteMatchingKeys(map_target(ctx, req(a[0]))?, regex(req(a[1]))?)
        }
        "keep_keys" => {
            let a = args(call, &["target", "keys"], 2)?;
            Editor::KeepKeys(map_target(ctx, req(a[0]))?, key_list(req(a[1]))?)
        }
        "replace_pattern" => {
            let a = args(
                call,
                &[
                    "target",
                    "regex",
                    "replacement",
                    "function",
                    "replacementFormat",
                ],
                3,
            )?;
            let target = req(a[0]);
            Editor::ReplacePattern(
                getter(ctx, target)?,
                setter(ctx, target)?,
                regex(req(a[1]))?,
                string_lit(req(a[2]), "the replacement")?.into(),
                hash_arg(a[3], a[4])?,
            )
        }
        "replace_all_patterns" => {
            let a = args(
                call,
                &[
                    "target",
                    "mode",
                    "regex",
                    "replacement",
                    "function",
                    "replacementFormat",
                ],
                4,
            )?;
            let on_keys = match string_lit(req(a[1]), "mode")? {
                "key" => true,
                "value" => false,
                _ => return err(req(a[1]).at(), "mode must be \"key\" or \"value\""),
            };
            Editor::ReplaceAllPatterns(
                map_target(ctx, req(a[0]))?,
                on_keys,
                regex(req(a[2]))?,
                string_lit(req(a[3]), "the replacement")?.into(),
                hash_arg(a[4], a[5])?,
            )
        }
        "truncate_all" => {
            let a = args(call, &["target", "limit"], 2)?;
            Editor::TruncateAll(map_target(ctx, req(a[0]))?, int_lit(req(a[1]), "limit")?)
        }
        "limit" => {
            let a = args(call, &["target", "limit", "priority_keys"], 2)?;
            Editor::Limit(
                map_target(ctx, req(a[0]))?,
                int_lit(req(a[1]), "limit")?,
                a[2].map(key_list).transpose()?.unwrap_or_default(),
            )
        }
        other => {
            return err(
                call.at,
                format!(
                    "the editor `{other}` is not supported by ztrace (supported: {})",
                    EDITORS.join(", ")
                ),
            );
        }
    })
}
