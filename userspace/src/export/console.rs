//! Stdout outputs: readable console lines (the default when no collector is configured) and
//! JSON lines. Both show a batch grouped by trace, parents before their children; the console
//! indents children whose parent is in the same batch. Each batch is written with one write and
//! a flush, off the async threads; a stdout that fails (closed pipe) costs the spans, counted,
//! never a panic. Text that came off the wire is escaped before it reaches a terminal.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use serde_json::{Map, Value, json};

use super::stats::Counters;
use crate::model::{Exchange, Span, SpanId, SpanKind, SpanStatus, TraceId};
use crate::semconv::attributes::{AttrValue, display_target, span_attributes};
use crate::semconv::names::span_name;
use crate::semconv::resource::{ProcessTable, service_name};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Console,
    Json,
}

/// Where the lines go: stdout, or (in tests) a buffer.
#[derive(Clone, Debug, Default)]
pub(crate) enum Destination {
    #[default]
    Stdout,
    #[cfg(test)]
    Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>),
}

impl Destination {
    /// Writes and flushes (blocking).
    fn write(&self, text: &str) -> std::io::Result<()> {
        match self {
            Destination::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()
            }
            #[cfg(test)]
            Destination::Buffer(buf) => {
                let mut buf = buf.lock().unwrap_or_else(|p| p.into_inner());
                buf.extend_from_slice(text.as_bytes());
                Ok(())
            }
        }
    }
}

pub(crate) struct StdoutSink {
    format: Format,
    destination: Destination,
    color: bool,
    /// A write already failed (logged once).
    broken: bool,
}

impl StdoutSink {
    pub(crate) fn new(format: Format, destination: Destination) -> Self {
        let color = format == Format::Console
            && matches!(destination, Destination::Stdout)
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        StdoutSink {
            format,
            destination,
            color,
            broken: false,
        }
    }

    /// Writes one batch; accounts for every span of it in `counters`.
    pub(crate) async fn export(
        &mut self,
        spans: &[Span],
        table: &ProcessTable,
        counters: &Counters,
    ) {
        if spans.is_empty() {
            return;
        }
        let text = match self.format {
            Format::Console => render_console(spans, table, self.color),
            Format::Json => render_json(spans, table),
        };
        let destination = self.destination.clone();
        let written = tokio::task::spawn_blocking(move || destination.write(&text)).await;
        let error = match written {
            Ok(Ok(())) => {
                counters.exported(spans.len());
                self.broken = false;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        counters.failed(spans.len(), true);
        if !self.broken {
            log::error!("writing spans to stdout failed: {error}");
            self.broken = true;
        }
    }
}

/// The batch in display order — traces in order of their first start, and within a trace each
/// span after its parent (children by start time) — with each span's depth below the nearest
/// ancestor in the batch.
pub(crate) fn display_order(spans: &[Span]) -> Vec<(usize, usize)> {
    let ids: HashMap<(TraceId, SpanId), usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.trace_id, s.span_id), i))
        .collect();
    let parent_of = |i: usize| -> Option<usize> {
        let s = &spans[i];
        let p = s.parent_span_id?;
        ids.get(&(s.trace_id, p)).copied().filter(|&j| j != i)
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots: Vec<usize> = Vec::new();
    for i in 0..spans.len() {
        match parent_of(i) {
            Some(p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let by_start = |a: &usize, b: &usize| {
        spans[*a]
            .start_unix_ns
            .cmp(&spans[*b].start_unix_ns)
            .then(a.cmp(b))
    };
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    // Traces ordered by their earliest span in the batch.
    let mut trace_start: HashMap<TraceId, (u64, usize)> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        let e = trace_start
            .entry(s.trace_id)
            .or_insert((s.start_unix_ns, i));
        *e = (*e).min((s.start_unix_ns, i));
    }
    let trace_key = |i: usize| {
        trace_start
            .get(&spans[i].trace_id)
            .copied()
            .unwrap_or((0, i))
    };
    roots.sort_by(|a, b| trace_key(*a).cmp(&trace_key(*b)).then(by_start(a, b)));

    let mut order = Vec::with_capacity(spans.len());
    let mut seen: HashSet<usize> = HashSet::with_capacity(spans.len());
    let mut visit = |root: usize, order: &mut Vec<(usize, usize)>| {
        let mut stack = vec![(root, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            order.push((i, depth));
            if let Some(kids) = children.get(&i) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
    };
    for &r in &roots {
        visit(r, &mut order);
    }
    // Spans caught in a parent cycle (bad data) have no root: show them flat at the end.
    for i in 0..spans.len() {
        visit(i, &mut order);
    }
    order
}

/// Text from the wire or /proc, made safe to print: control characters are escaped.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => {
            let keep = s[..cut]
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(cut, |(i, _)| i);
            format!("{}…", &s[..keep])
        }
        None => s.to_string(),
    }
}

/// `HH:MM:SS.mmm` in local time (UTC if the local time is unknown).
fn clock(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns / 1_000_000) % 1000;
    let (h, m, s) = local_hms(secs).unwrap_or(((secs / 3600) % 24, (secs / 60) % 60, secs % 60));
    format!("{h:02}:{m:02}:{s:02}.{millis:03}")
}

fn local_hms(secs: u64) -> Option<(u64, u64, u64)> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { libc::localtime_r(&t, &mut tm) };
    if filled.is_null() {
        return None;
    }
    Some((
        u64::try_from(tm.tm_hour).ok()?,
        u64::try_from(tm.tm_min).ok()?,
        u64::try_from(tm.tm_sec).ok()?,
    ))
}

/// `850µs`, `12.3ms`, `1.25s`.
fn duration(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}µs", ns / 1000)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
/// Trace id colours, picked by the id so that lines of one trace share one.
const TRACE_COLORS: [&str; 6] = [
    "\x1b[34m", "\x1b[35m", "\x1b[36m", "\x1b[32m", "\x1b[33m", "\x1b[94m",
];

struct Paint(bool);

impl Paint {
    fn wrap(&self, color: &str, text: &str) -> String {
        if self.0 {
            format!("{color}{text}{RESET}")
        } else {
            text.to_string()
        }
    }
}

/// Width of the `name[pid]` column.
const PROCESS_WIDTH: usize = 22;
/// Longest request target shown.
const TARGET_MAX: usize = 100;

/// The console lines of a batch, e.g.
/// `12:00:01.234  4bf92f35…  SERVER  python3[1234]          GET /api/orders -> 200  12.3ms  parent=00f067aa0ba902b7`.
pub(crate) fn render_console(spans: &[Span], table: &ProcessTable, color: bool) -> String {
    let paint = Paint(color);
    let mut out = String::new();
    for (i, depth) in display_order(spans) {
        let s = &spans[i];
        let trace = s.trace_id.to_string();
        let short = format!("{}…", &trace[..8]);
        let trace_color = TRACE_COLORS[usize::from(s.trace_id.0[0]) % TRACE_COLORS.len()];
        let kind = match s.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        };
        let name = table
            .get(s.pid)
            .map(|p| {
                if p.executable_name.is_empty() {
                    p.service_name.as_str()
                } else {
                    p.executable_name.as_str()
                }
            })
            .filter(|n| !n.is_empty())
            .unwrap_or("?");
        let process = format!("{}[{}]", truncate(&clean(name), 15), s.pid);
        let indent = if depth == 0 {
            String::new()
        } else {
            format!("{}└─ ", "   ".repeat(depth - 1))
        };
        let (method, target, status) = match &s.exchange {
            Exchange::Http(http) => {
                let method = if http.method.is_empty() {
                    span_name(s).into_owned()
                } else {
                    truncate(&clean(&http.method), 16)
                };
                let status = match (http.status, &s.status) {
                    (Some(code), st) => {
                        let c = match code {
                            _ if matches!(st, SpanStatus::Error(_)) || code >= 500 => RED,
                            400..=499 => YELLOW,
                            300..=399 => CYAN,
                            _ => GREEN,
                        };
                        paint.wrap(c, &code.to_string())
                    }
                    (None, _) => paint.wrap(RED, "(no response)"),
                };
                (
                    method,
                    truncate(&clean(&display_target(s)), TARGET_MAX),
                    status,
                )
            }
            Exchange::Rpc(_) | Exchange::Dns(_) => {
                let status = match &s.status {
                    SpanStatus::Error(e) => paint.wrap(RED, e),
                    SpanStatus::Unset => paint.wrap(GREEN, "OK"),
                };
                let name = span_name(s);
                let (proto, what) = name.split_once(' ').unwrap_or(("grpc", &name));
                let proto = if matches!(s.exchange, Exchange::Rpc(_)) {
                    "grpc"
                } else {
                    proto
                };
                let what = if matches!(s.exchange, Exchange::Rpc(_)) {
                    &name
                } else {
                    what
                };
                (
                    proto.to_string(),
                    truncate(&clean(what), TARGET_MAX),
                    status,
                )
            }
            Exchange::Db(db) => {
                let status = match (&db.error, &s.status) {
                    (Some((code, _)), _) => paint.wrap(RED, code),
                    (None, SpanStatus::Error(e)) => paint.wrap(RED, e),
                    (None, SpanStatus::Unset) => paint.wrap(GREEN, "OK"),
                };
                let what = db
                    .query_text
                    .as_deref()
                    .or(db.operation.as_deref())
                    .unwrap_or("");
                (
                    db.system.name().to_string(),
                    truncate(&clean(what), TARGET_MAX),
                    status,
                )
            }
        };
        let _ = write!(
            out,
            "{}  {}  {kind:<6}  {process:<PROCESS_WIDTH$}  {indent}{method} {target} -> {status}  {}",
            paint.wrap(DIM, &clock(s.start_unix_ns)),
            paint.wrap(trace_color, &short),
            duration(s.end_unix_ns.saturating_sub(s.start_unix_ns)),
        );
        if let Some(parent) = s.parent_span_id {
            let remote = if s.parent_is_remote { " (remote)" } else { "" };
            let _ = write!(
                out,
                "  {}",
                paint.wrap(DIM, &format!("parent={parent}{remote}"))
            );
        }
        if let SpanStatus::Error(msg) = &s.status
            && !msg.is_empty()
        {
            let _ = write!(
                out,
                "  {}",
                paint.wrap(RED, &format!("error: {}", truncate(&clean(msg), 200)))
            );
        }
        out.push('\n');
    }
    out
}

fn json_value(v: AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::String(s.into_owned()),
        AttrValue::Int(i) => Value::from(i),
        AttrValue::Double(d) => Value::from(d.0),
        AttrValue::Bool(b) => Value::from(b),
        AttrValue::StrArray(items) => Value::Array(items.into_iter().map(Value::String).collect()),
    }
}

/// One span as a JSON object (attribute names as in OTLP).
pub(crate) fn span_json(s: &Span, table: &ProcessTable) -> Value {
    let attributes: Map<String, Value> = span_attributes(s)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json_value(v)))
        .collect();
    let (status, message) = match &s.status {
        SpanStatus::Unset => ("UNSET", None),
        SpanStatus::Error(m) => ("ERROR", Some(m.as_str())),
    };
    let duration_ns = s.end_unix_ns.saturating_sub(s.start_unix_ns);
    json!({
        "trace_id": s.trace_id.to_string(),
        "span_id": s.span_id.to_string(),
        "parent_span_id": s.parent_span_id.map(|p| p.to_string()),
        "parent_is_remote": s.parent_is_remote,
        "kind": match s.kind { SpanKind::Server => "SERVER", SpanKind::Client => "CLIENT" },
        "name": span_name(s),
        "start_unix_ns": s.start_unix_ns,
        "end_unix_ns": s.end_unix_ns,
        // Microsecond precision, without float noise.
        "duration_ms": (duration_ns / 1000) as f64 / 1000.0,
        "pid": s.pid,
        "tid": s.tid,
        "service_name": service_name(s.pid, table.get(s.pid)),
        "status": status,
        "status_message": message,
        "attributes": attributes,
    })
}

/// The JSON lines of a batch, in display order.
pub(crate) fn render_json(spans: &[Span], table: &ProcessTable) -> String {
    let mut out = String::new();
    for (i, _) in display_order(spans) {
        out.push_str(&span_json(&spans[i], table).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_semantic_conventions::attribute as semconv;

    use super::*;
    use crate::export::exporter::Exporter;
    use crate::export::settings::{ExportConfig, Output};
    use crate::testkit::*;

    fn table() -> ProcessTable {
        let mut t = ProcessTable::new(None);
        t.upsert(Arc::new(process(1234, "python3")));
        t
    }

    /// Server span (root), its client child, and a grandchild server span in another trace-mate.
    fn family() -> Vec<Span> {
        let parent = server_span();
        let child = client_span();
        let mut grandchild = server_span();
        grandchild.span_id = SpanId([0xcc; 8]);
        grandchild.parent_span_id = Some(child.span_id);
        grandchild.parent_is_remote = true;
        grandchild.start_unix_ns = child.start_unix_ns + 1;
        grandchild.pid = 555;
        let mut other = server_span();
        other.trace_id = TraceId([0x01; 16]);
        other.span_id = SpanId([0x02; 8]);
        other.parent_span_id = None;
        other.start_unix_ns = parent.start_unix_ns + 5;
        // Finish order: children first, as they arrive from capture.
        vec![grandchild, other, child, parent]
    }

    #[test]
    fn order_puts_parents_first_and_groups_traces() {
        let spans = family();
        let order = display_order(&spans);
        assert_eq!(order, vec![(3, 0), (2, 1), (0, 2), (1, 0)]);
    }

    #[test]
    fn order_survives_cycles_and_self_parents() {
        let mut a = server_span();
        let mut b = server_span();
        a.span_id = SpanId([1; 8]);
        b.span_id = SpanId([2; 8]);
        a.parent_span_id = Some(b.span_id);
        b.parent_span_id = Some(a.span_id);
        let mut c = server_span();
        c.span_id = SpanId([3; 8]);
        c.parent_span_id = Some(c.span_id);
        let order = display_order(&[a, b, c]);
        let mut seen: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[test]
    fn console_lines() {
        let text = render_console(&family(), &table(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let first = lines[0];
        assert!(
            first.contains("  4bf92f35…  SERVER  python3[1234]"),
            "{first}"
        );
        assert!(
            first.contains(
                "  GET /api/orders?limit=10 -> 200  12.3ms  parent=00f067aa0ba902b7 (remote)"
            ),
            "{first}"
        );
        assert_eq!(first.as_bytes()[2], b':');
        assert_eq!(&first[8..9], ".");
        let second = lines[1];
        assert!(second.contains("CLIENT  python3[1234]"), "{second}");
        assert!(second.contains("└─ POST http://payments:5000/charge -> 503  9.0ms  parent=b7ad6b7169203331  error: 503 Service Unavailable"), "{second}");
        let third = lines[2];
        assert!(third.contains("?[555]"), "{third}");
        assert!(third.contains("   └─ GET /api/orders"), "{third}");
        assert!(lines[3].contains("01010101…"), "{}", lines[3]);
        // Columns line up: the method starts at the same place in unindented lines.
        assert_eq!(lines[0].find("GET"), lines[3].find("GET"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn console_escapes_wire_text_and_colors_on_request() {
        let mut s = server_span();
        s.http_mut().unwrap().target = "/evil\x1b[2J?x".into();
        s.http_mut().unwrap().status = None;
        let text = render_console(&[s], &table(), false);
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(
            text.contains("/evil\\u{1b}[2J?x -> (no response)"),
            "{text}"
        );
        let colored = render_console(&[server_span()], &table(), true);
        assert!(colored.contains("\x1b[32m200\x1b[0m"), "{colored:?}");
    }

    #[test]
    fn durations_and_truncation() {
        assert_eq!(duration(850_000), "850µs");
        assert_eq!(duration(12_300_000), "12.3ms");
        assert_eq!(duration(1_250_000_000), "1.25s");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(clock(1_700_000_000_123_000_000).len(), 12);
    }

    #[test]
    fn json_lines() -> anyhow::Result<()> {
        let text = render_json(&family(), &table());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let v: Value = serde_json::from_str(lines[0])?;
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "b7ad6b7169203331");
        assert_eq!(v["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(v["kind"], "SERVER");
        assert_eq!(v["name"], "GET");
        assert_eq!(v["start_unix_ns"], 1_700_000_000_000_000_000u64);
        assert_eq!(v["end_unix_ns"], 1_700_000_000_012_300_000u64);
        assert!((v["duration_ms"].as_f64().unwrap_or_default() - 12.3).abs() < 1e-9);
        assert_eq!(v["pid"], 1234);
        assert_eq!(v["service_name"], "python3-svc");
        assert_eq!(v["attributes"][semconv::URL_PATH], "/api/orders");
        assert_eq!(v["attributes"][semconv::HTTP_RESPONSE_STATUS_CODE], 200);
        let child: Value = serde_json::from_str(lines[1])?;
        assert_eq!(child["kind"], "CLIENT");
        assert_eq!(child["status"], "ERROR");
        assert_eq!(
            child["attributes"][semconv::URL_FULL],
            "http://payments:5000/charge"
        );
        let grandchild: Value = serde_json::from_str(lines[2])?;
        assert_eq!(grandchild["service_name"], "unknown_service:pid555");
        let root: Value = serde_json::from_str(lines[3])?;
        assert_eq!(root["parent_span_id"], Value::Null);
        Ok(())
    }

    /// Replay's exporter closes batches by size only and completes the last one from the queue at
    /// shutdown, so each batch — and with it the display order — is the same on every run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_by_size_alone_give_the_same_lines_every_time() {
        // Five unrelated spans submitted latest first; within a batch, display order sorts them.
        let spans: Vec<Span> = (0..5u8)
            .map(|i| {
                let mut s = server_span();
                s.trace_id = TraceId([i + 1; 16]);
                s.span_id = SpanId([i + 1; 8]);
                s.parent_span_id = None;
                s.start_unix_ns = 1_000 * (5 - u64::from(i));
                s
            })
            .collect();
        for _ in 0..200 {
            let (exporter, captured) = Exporter::spawn_captured(ExportConfig {
                output: Output::Json,
                max_batch: 3,
                batch_delay: crate::export::control::FOREVER,
                ..ExportConfig::default()
            });
            for s in spans.clone() {
                exporter.submit_waiting(s).await;
                tokio::task::yield_now().await;
            }
            let stats = exporter.shutdown(std::time::Duration::from_secs(2)).await;
            assert_eq!(stats.spans_exported, 5, "{stats:?}");
            let bytes = captured.lock().map(|b| b.clone()).unwrap_or_default();
            let order: Vec<u64> = String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["start_unix_ns"].as_u64())
                .collect();
            // Batches [5000, 4000, 3000] and [2000, 1000], each shown earliest first.
            assert_eq!(order, [3000, 4000, 5000, 1000, 2000]);
        }
    }

    #[tokio::test]
    async fn console_exporter_counts_spans() {
        for output in [Output::Console, Output::Json] {
            let json = matches!(output, Output::Json);
            let (exporter, captured) = Exporter::spawn_captured(ExportConfig {
                output,
                batch_delay: std::time::Duration::from_millis(5),
                ..ExportConfig::default()
            });
            exporter.process(Arc::new(process(1234, "python3")));
            for s in family() {
                exporter.submit(s);
            }
            let stats = exporter.shutdown(std::time::Duration::from_secs(2)).await;
            assert_eq!(stats.spans_exported, 4, "{stats:?}");
            assert_eq!(stats.spans_dropped_failed, 0);
            let bytes = captured.lock().map(|b| b.clone()).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(text.lines().count(), 4, "{text}");
            assert_eq!(text.starts_with('{'), json, "{text}");
            assert!(text.contains("python3"), "{text}");
        }
    }
}
