//! A compiled rule set ([`Program`]): the transform statement groups and filter conditions of
//! each signal, compiled once from [`Rules`], run on spans (by the processor chain), on metric
//! data points and on log records (by the daemon, just before export).
//!
//! Per record: every transform group whose conditions hold runs its statements in order, then
//! the filter conditions decide whether the record is dropped (a rule can so filter on what a
//! transform wrote). Errors follow the group's `error_mode`. Span rules of the common forms also
//! have a fast form (`fast.rs`), which runs the spans it can answer; the generic evaluator runs
//! the others, with the same results.

use std::fmt;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

use super::compile::{self, CompileError, Context};
use super::eval::{Pred, Statement};
use super::fast;
use super::key::Known;
use super::pdata::{LogRecordRef, MetricFields, PointRecord};
use super::span::SpanRecord;
use super::value::Record;
use crate::config::{ErrorMode, Rules, Signal};
use crate::model::Span;
use crate::semconv::attributes::AttrValue;

/// A rule that does not compile: names the statement (its config key and file), the column,
/// what is wrong, and the statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError(pub String);

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

fn rule_error(origin: &str, text: &str, e: CompileError) -> RuleError {
    let column = text[..e.at.min(text.len())].chars().count() + 1;
    RuleError(format!("{origin}, column {column}: {}: {text}", e.message))
}

struct Group {
    /// Any must hold (none: always).
    conditions: Vec<Pred>,
    statements: Vec<Statement>,
    error_mode: ErrorMode,
    origin: String,
}

#[derive(Default)]
struct Signal1 {
    groups: Vec<Group>,
    /// A record any of these matches is dropped.
    filters: Vec<(Pred, String)>,
    filter_error_mode: ErrorMode,
    /// The attribute keys the statements and conditions read (cached per span).
    keys: Vec<Box<str>>,
    /// Spans only: the same rules on the fast path, when they have one (`fast.rs`).
    fast: Option<fast::Spans>,
}

impl Signal1 {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.filters.is_empty()
    }
}

/// What rules did, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub spans_dropped: u64,
    pub points_dropped: u64,
    pub logs_dropped: u64,
    /// Statements or conditions that failed on a record.
    pub errors: u64,
}

/// A compiled rule set. The empty program (the default) costs one branch per batch.
#[derive(Default)]
pub struct Program {
    spans: Signal1,
    points: Signal1,
    logs: Signal1,
    pub stats: RuleStats,
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |s: &Signal1| s.groups.iter().map(|g| g.statements.len()).sum::<usize>();
        write!(
            f,
            "Program {{ span statements: {}, span filters: {}, datapoint statements: {}, datapoint filters: {}, log statements: {}, log filters: {} }}",
            n(&self.spans),
            self.spans.filters.len(),
            n(&self.points),
            self.points.filters.len(),
            n(&self.logs),
            self.logs.filters.len()
        )
    }
}

fn context(signal: Signal, name: &str, origin: &str, filter: bool) -> Result<Context, RuleError> {
    let ctx = match (signal, name) {
        (Signal::Traces, "span") => Context::Span,
        (Signal::Metrics, "datapoint") => Context::DataPoint,
        (Signal::Logs, "log") if !filter => Context::Log,
        (Signal::Logs, "log_record") if filter => Context::Log,
        _ => {
            let supported = match (signal, filter) {
                (Signal::Traces, _) => "span",
                (Signal::Metrics, _) => "datapoint (metric.name is a path there)",
                (Signal::Logs, false) => "log",
                (Signal::Logs, true) => "log_record",
            };
            return Err(RuleError(format!(
                "{origin}: the context `{name}` is not supported by ztrace for {}; use {supported}",
                signal.key()
            )));
        }
    };
    Ok(ctx)
}

impl Program {
    /// Compiles every statement and condition; the first that does not compile is the error.
    pub fn compile(rules: &Rules) -> Result<Program, RuleError> {
        let mut p = Program::default();
        for (signal, g) in &rules.statements {
            let ctx = context(*signal, &g.context, &g.origin, false)?;
            let mut conditions = Vec::new();
            for (n, c) in g.conditions.iter().enumerate() {
                let origin = format!("{} condition {}", g.origin, n + 1);
                conditions.push(compile::condition(ctx, c).map_err(|e| rule_error(&origin, c, e))?);
            }
            let mut statements = Vec::new();
            for (n, s) in g.statements.iter().enumerate() {
                let origin = format!("{} statement {}", g.origin, n + 1);
                statements.push(compile::statement(ctx, s).map_err(|e| rule_error(&origin, s, e))?);
            }
            p.signal(*signal).groups.push(Group {
                conditions,
                statements,
                error_mode: g.error_mode.unwrap_or(rules.transform_error_mode),
                origin: g.origin.clone(),
            });
        }
        for f in &rules.filters {
            let ctx = context(f.signal, &f.context, &f.origin, true)?;
            let s = p.signal(f.signal);
            s.filter_error_mode = rules.filter_error_mode;
            for (n, c) in f.conditions.iter().enumerate() {
                let origin = format!("{} condition {}", f.origin, n + 1);
                let pred = compile::condition(ctx, c).map_err(|e| rule_error(&origin, c, e))?;
                s.filters.push((pred, origin));
            }
        }
        for s in [&mut p.spans, &mut p.points, &mut p.logs] {
            let mut keys = Vec::new();
            for g in &s.groups {
                g.conditions.iter().for_each(|c| c.attr_keys(&mut keys));
                g.statements.iter().for_each(|st| st.attr_keys(&mut keys));
            }
            s.filters.iter().for_each(|(c, _)| c.attr_keys(&mut keys));
            // Known keys last: spans answer them without the cache (see `known.rs`).
            keys.sort_by_key(|k| Known::lookup(k).is_some());
            s.keys = keys;
        }
        let s = &mut p.spans;
        s.fast = fast::Spans::compile(
            s.groups
                .iter()
                .map(|g| (&g.conditions[..], &g.statements[..])),
            s.filters.iter().map(|(c, _)| c),
        );
        Ok(p)
    }

    /// Whether the span rules have a fast form (`fast.rs`).
    #[cfg(test)]
    pub(super) fn has_fast(&self) -> bool {
        self.spans.fast.is_some()
    }

    /// Whether the fast path answers `span` (runs it on a copy).
    #[cfg(test)]
    pub(super) fn fast_answers(&self, span: &Span) -> bool {
        let f = self.spans.fast.as_ref();
        f.is_some_and(|f| f.run(&mut span.clone()).is_some())
    }

    fn signal(&mut self, s: Signal) -> &mut Signal1 {
        match s {
            Signal::Traces => &mut self.spans,
            Signal::Metrics => &mut self.points,
            Signal::Logs => &mut self.logs,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.points.is_empty() && self.logs.is_empty()
    }

    /// Runs the span rules on `spans`, removing those a filter drops. `resource` gives a
    /// process's Resource attributes.
    pub(crate) fn spans<'r>(
        &mut self,
        spans: &mut Vec<Span>,
        resource: &dyn Fn(u32) -> &'r [(&'static str, AttrValue<'static>)],
    ) {
        if self.spans.is_empty() {
            return;
        }
        let before = spans.len();
        let (rules, errors) = (&self.spans, &mut self.stats.errors);
        match &rules.fast {
            Some(fast) if fast.is_noop() => return,
            Some(fast) => spans.retain_mut(|s| match fast.run(s) {
                Some(keep) => keep,
                None => generic(rules, errors, s, resource),
            }),
            None => spans.retain_mut(|s| generic(rules, errors, s, resource)),
        }
        self.stats.spans_dropped += (before - spans.len()) as u64;
    }

    /// Runs the data point rules on a metrics request; metrics left without points are removed.
    pub fn metrics(&mut self, req: &mut ExportMetricsServiceRequest) {
        if self.points.is_empty() {
            return;
        }
        let (rules, errors) = (&self.points, &mut self.stats.errors);
        let mut dropped = 0u64;
        for rm in &mut req.resource_metrics {
            let resource = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
            for sm in &mut rm.scope_metrics {
                for m in &mut sm.metrics {
                    let Some(data) = &mut m.data else { continue };
                    let mut metric = MetricFields {
                        name: &mut m.name,
                        description: &mut m.description,
                        unit: &mut m.unit,
                        kind: 0,
                    };
                    macro_rules! points {
                        ($points:expr, $kind:expr, |$p:ident| $value:expr) => {{
                            metric.kind = $kind;
                            let before = $points.len();
                            $points.retain_mut(|$p| {
                                let mut rec = PointRecord {
                                    metric: MetricFields {
                                        name: &mut *metric.name,
                                        description: &mut *metric.description,
                                        unit: &mut *metric.unit,
                                        kind: metric.kind,
                                    },
                                    time: $p.time_unix_nano,
                                    start_time: $p.start_time_unix_nano,
                                    value: $value,
                                    attributes: &mut $p.attributes,
                                    resource,
                                };
                                judge(rules, errors, &mut rec)
                            });
                            dropped += (before - $points.len()) as u64;
                        }};
                    }
                    match data {
                        Data::Gauge(g) => points!(g.data_points, 1, |p| Some(&mut p.value)),
                        Data::Sum(s) => points!(s.data_points, 2, |p| Some(&mut p.value)),
                        Data::Histogram(h) => points!(h.data_points, 3, |p| None),
                        Data::ExponentialHistogram(h) => points!(h.data_points, 4, |p| None),
                        Data::Summary(s) => points!(s.data_points, 5, |p| None),
                    }
                }
                sm.metrics.retain(|m| match &m.data {
                    Some(Data::Gauge(g)) => !g.data_points.is_empty(),
                    Some(Data::Sum(s)) => !s.data_points.is_empty(),
                    Some(Data::Histogram(h)) => !h.data_points.is_empty(),
                    Some(Data::ExponentialHistogram(h)) => !h.data_points.is_empty(),
                    Some(Data::Summary(s)) => !s.data_points.is_empty(),
                    None => true,
                });
            }
        }
        self.stats.points_dropped += dropped;
    }

    /// Runs the log record rules on a logs request.
    pub fn logs(&mut self, req: &mut ExportLogsServiceRequest) {
        if self.logs.is_empty() {
            return;
        }
        let (rules, errors) = (&self.logs, &mut self.stats.errors);
        let mut dropped = 0u64;
        for rl in &mut req.resource_logs {
            let resource = rl.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
            for sl in &mut rl.scope_logs {
                let before = sl.log_records.len();
                sl.log_records.retain_mut(|record| {
                    judge(rules, errors, &mut LogRecordRef { record, resource })
                });
                dropped += (before - sl.log_records.len()) as u64;
            }
        }
        self.stats.logs_dropped += dropped;
    }
}

/// Runs the span rules on one span with the generic evaluator; false when it is dropped.
#[inline]
fn generic<'r>(
    rules: &Signal1,
    errors: &mut u64,
    s: &mut Span,
    resource: &dyn Fn(u32) -> &'r [(&'static str, AttrValue<'static>)],
) -> bool {
    let mut r = SpanRecord::new(s, resource(s.pid), &rules.keys);
    let keep = judge(rules, errors, &mut r);
    if keep {
        r.finish().apply(s);
    }
    keep
}

/// Logs a rule error (the first few, then every power of two) unless silenced.
fn report(errors: &mut u64, mode: ErrorMode, origin: &str, text: &str, e: &str) {
    *errors += 1;
    if mode != ErrorMode::Silent && (*errors <= 10 || errors.is_power_of_two()) {
        log::warn!(
            "rule error ({} so far): {origin}: `{text}`: {e}{}",
            errors,
            if mode == ErrorMode::Propagate {
                " (the record is dropped: error_mode = \"propagate\")"
            } else {
                ""
            }
        );
    }
}

/// Transforms one record; false when it is to be dropped (a filter matched, or an error with
/// `error_mode = "propagate"`).
fn judge<R: Record>(s: &Signal1, errors: &mut u64, r: &mut R) -> bool {
    for g in &s.groups {
        let mut applies = g.conditions.is_empty();
        for c in &g.conditions {
            match c.test(r) {
                Ok(true) => {
                    applies = true;
                    break;
                }
                Ok(false) => {}
                Err(e) => {
                    report(errors, g.error_mode, &g.origin, "conditions", &e);
                    if g.error_mode == ErrorMode::Propagate {
                        return false;
                    }
                }
            }
        }
        if !applies {
            continue;
        }
        for st in &g.statements {
            if let Err(e) = st.run(r) {
                report(errors, g.error_mode, &g.origin, &st.text, &e);
                if g.error_mode == ErrorMode::Propagate {
                    return false;
                }
            }
        }
    }
    for (c, origin) in &s.filters {
        match c.test(r) {
            Ok(true) => return false,
            Ok(false) => {}
            Err(e) => {
                report(errors, s.filter_error_mode, origin, "condition", &e);
                if s.filter_error_mode == ErrorMode::Propagate {
                    return false;
                }
            }
        }
    }
    true
}
