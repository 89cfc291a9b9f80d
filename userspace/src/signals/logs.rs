//! The logs signal (`--capture-logs`): what traced processes write to their stdout and stderr
//! becomes OTLP log records, each stamped with the trace and span of the request the writing
//! thread was serving at that moment — log/trace correlation with no instrumentation.
//!
//! Input is the `kind::STDIO` records of the probes: the head (up to the payload cap) of every
//! write to fd 1 or 2 that is not a socket, whatever it points to (terminal, pipe, file).
//! - **Lines**: writes are split at `\n`; a line spread over several writes is carried per
//!   (process, fd) until its newline; a line longer than [`LogConfig::max_line`], or whose rest
//!   was beyond the capture cap, is cut and marked `ztrace.log.truncated`. Empty lines are skipped.
//! - **Correlation**: at the write, the linker says which SERVER span (if exactly one) the thread
//!   is serving ([`crate::link::Linker::serving_span`]). Its span id is fixed then, but its trace
//!   id is final only when the linker releases it (a root server span may still get a
//!   cross-process parent within `LINK_GRACE`). So a correlated line is held until that span is
//!   released ([`Logs::on_released`]) and then stamped with the final ids. A thread serving no
//!   span, or several at once (an event loop), gives an uncorrelated record, never a guess.
//! - **Bounds**: carried partial lines, held lines and their age are all capped; what the caps
//!   push out is emitted uncorrelated or counted as dropped, never kept.
//!
//! Severity is not guessed from the stream: many programs log everything to stderr. Records carry
//! `log.iostream` (`stdout`/`stderr`) per the semantic conventions and no severity.

use std::collections::VecDeque;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_semantic_conventions::attribute as sc;
use rustc_hash::FxHashMap as HashMap;
use ztrace_abi::DataEvent;

use crate::model::{Span, SpanId, TraceId};
use crate::semconv::resource::ProcessTable;
use crate::signals::metrics::otlp::{attr_key_values, resource, scope};
use crate::signals::metrics::series::Val;

/// Attribute set on a line that was cut.
pub const TRUNCATED: &str = "ztrace.log.truncated";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Longest line kept (bytes); longer ones are cut and marked.
    pub max_line: usize,
    /// Most lines held waiting for their span's release.
    pub max_held: usize,
    /// Longest a line waits for its span (monotonic ns) before it goes out uncorrelated.
    pub max_hold_ns: u64,
    /// Most (process, fd) streams with a partial line carried.
    pub max_streams: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_line: 4096,
            max_held: 4096,
            max_hold_ns: 120_000_000_000,
            max_streams: 4096,
        }
    }
}

/// One finished line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub pid: u32,
    pub tid: u32,
    /// 1 (stdout) or 2 (stderr).
    pub fd: i32,
    /// Monotonic time of the write that started the line.
    pub ts_ns: u64,
    pub body: String,
    pub truncated: bool,
    /// The span the thread was serving, and (once released) its trace.
    pub span: Option<(TraceId, SpanId)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    pub lines: u64,
    pub truncated: u64,
    pub correlated: u64,
    /// Lines whose span was never released in time (evicted, or the hold limits hit).
    pub correlation_lost: u64,
    /// Partial lines dropped because too many streams were open.
    pub dropped: u64,
}

/// A line being assembled from several writes.
struct Partial {
    bytes: Vec<u8>,
    truncated: bool,
    /// The rest of an over-long line is skipped up to its newline.
    skipping: bool,
    tid: u32,
    ts_ns: u64,
    span: Option<SpanId>,
}

pub struct Logs {
    cfg: LogConfig,
    partial: HashMap<(u32, i32), Partial>,
    /// Lines waiting for their span, by span id, and their arrival order for the age limit.
    held: HashMap<SpanId, Vec<LogLine>>,
    held_order: VecDeque<(u64, SpanId)>,
    held_count: usize,
    /// Lines ready to export.
    ready: Vec<LogLine>,
    pub stats: LogStats,
}

impl Logs {
    pub fn new(cfg: LogConfig) -> Self {
        Logs {
            cfg,
            partial: HashMap::default(),
            held: HashMap::default(),
            held_order: VecDeque::new(),
            held_count: 0,
            ready: Vec::new(),
            stats: LogStats::default(),
        }
    }

    /// One captured write. `serving`: the span the writing thread serves now (from the linker).
    pub fn on_write(&mut self, ev: &DataEvent, payload: &[u8], serving: Option<SpanId>) {
        let key = (ev.header.tgid, ev.fd);
        if !self.partial.contains_key(&key) && self.partial.len() >= self.cfg.max_streams {
            self.stats.dropped += 1;
            return;
        }
        let max_line = self.cfg.max_line.max(1);
        let mut finished = Vec::new();
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            bytes: Vec::new(),
            truncated: false,
            skipping: false,
            tid: ev.header.tid,
            ts_ns: ev.header.ts_ns,
            span: serving,
        });
        for (i, piece) in payload.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                // The previous piece ended at a newline: the line is complete.
                finished.push(take_line(p));
                p.skipping = false;
            }
            if p.bytes.is_empty() && !p.truncated {
                // A new line starts in this write.
                p.tid = ev.header.tid;
                p.ts_ns = ev.header.ts_ns;
                p.span = serving;
            }
            if p.skipping {
                continue;
            }
            let room = max_line - p.bytes.len();
            if piece.len() > room {
                p.bytes.extend_from_slice(&piece[..room]);
                p.truncated = true;
                p.skipping = true;
            } else {
                p.bytes.extend_from_slice(piece);
            }
        }
        // The write was longer than what was captured: where its lines end is unknown, so the
        // line in progress ends here, marked.
        if (payload.len() as u64) < ev.bytes && !p.bytes.is_empty() {
            p.truncated = true;
            finished.push(take_line(p));
            p.skipping = false;
        }
        if p.bytes.is_empty() && !p.truncated {
            self.partial.remove(&key);
        }
        for line in finished {
            self.line(ev.header.tgid, ev.fd, line);
        }
    }

    fn line(&mut self, pid: u32, fd: i32, taken: Taken) {
        let Taken {
            tid,
            ts_ns,
            bytes,
            truncated,
            span,
        } = taken;
        let mut body = String::from_utf8_lossy(&bytes).into_owned();
        if body.ends_with('\r') {
            body.pop();
        }
        if body.is_empty() && !truncated {
            return;
        }
        self.stats.lines += 1;
        self.stats.truncated += truncated as u64;
        let line = LogLine {
            pid,
            tid,
            fd,
            ts_ns,
            body,
            truncated,
            span: None,
        };
        match span {
            Some(id) => {
                if self.held_count >= self.cfg.max_held {
                    self.release_oldest();
                }
                self.held.entry(id).or_default().push(line);
                self.held_order.push_back((ts_ns, id));
                self.held_count += 1;
            }
            None => self.ready.push(line),
        }
    }

    /// Lets the oldest held group go out without ids.
    fn release_oldest(&mut self) {
        while let Some((_, id)) = self.held_order.pop_front() {
            if let Some(lines) = self.held.remove(&id) {
                self.held_count -= lines.len();
                self.stats.correlation_lost += lines.len() as u64;
                self.ready.extend(lines);
                return;
            }
        }
    }

    /// Spans the linker just released: their held lines get the final ids.
    pub fn on_released(&mut self, spans: &[Span]) {
        if self.held.is_empty() {
            return;
        }
        for s in spans {
            if let Some(lines) = self.held.remove(&s.span_id) {
                self.held_count -= lines.len();
                self.stats.correlated += lines.len() as u64;
                self.ready.extend(lines.into_iter().map(|mut l| {
                    l.span = Some((s.trace_id, s.span_id));
                    l
                }));
            }
        }
    }

    /// Lines held longer than the limit go out uncorrelated.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(ts, id)) = self.held_order.front() {
            if now_ns.saturating_sub(ts) < self.cfg.max_hold_ns {
                break;
            }
            self.held_order.pop_front();
            if let Some(lines) = self.held.remove(&id) {
                self.held_count -= lines.len();
                self.stats.correlation_lost += lines.len() as u64;
                self.ready.extend(lines);
            }
        }
    }

    /// The process exited: its unfinished lines are finished as they are.
    pub fn process_exited(&mut self, pid: u32) {
        let keys: Vec<(u32, i32)> = self
            .partial
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for key in keys {
            if let Some(mut p) = self.partial.remove(&key) {
                let line = take_line(&mut p);
                self.line(key.0, key.1, line);
            }
        }
    }

    /// Shutdown (after the linker released everything): every line goes out.
    pub fn drain(&mut self) {
        let pids: Vec<u32> = self.partial.keys().map(|(p, _)| *p).collect();
        for pid in pids {
            self.process_exited(pid);
        }
        while self.held_count > 0 {
            self.release_oldest();
        }
        self.held_order.clear();
    }

    /// Lines ready to export.
    pub fn take(&mut self, out: &mut Vec<LogLine>) {
        out.append(&mut self.ready);
    }
}

/// A line taken out of its stream, not yet a record.
struct Taken {
    tid: u32,
    ts_ns: u64,
    bytes: Vec<u8>,
    truncated: bool,
    span: Option<SpanId>,
}

fn take_line(p: &mut Partial) -> Taken {
    Taken {
        tid: p.tid,
        ts_ns: p.ts_ns,
        bytes: std::mem::take(&mut p.bytes),
        truncated: std::mem::take(&mut p.truncated),
        span: p.span,
    }
}

/// Lines as one OTLP request: one `ResourceLogs` per process (the Resource its spans carry).
pub(crate) fn to_request(
    lines: &[LogLine],
    mono_to_unix: i128,
    table: &ProcessTable,
) -> ExportLogsServiceRequest {
    let mut records = Vec::with_capacity(lines.len());
    for l in lines {
        let ts = (l.ts_ns as i128 + mono_to_unix).max(0) as u64;
        let mut attrs: Vec<(&'static str, Val)> = vec![
            (
                sc::LOG_IOSTREAM,
                if l.fd == 2 { "stderr" } else { "stdout" }.into(),
            ),
            (sc::THREAD_ID, i64::from(l.tid).into()),
        ];
        if l.truncated {
            attrs.push((TRUNCATED, Val::Bool(true)));
        }
        let (trace_id, span_id, flags) = match l.span {
            Some((t, s)) => (t.0.to_vec(), s.0.to_vec(), 1),
            None => (Vec::new(), Vec::new(), 0),
        };
        let record = LogRecord {
            time_unix_nano: ts,
            observed_time_unix_nano: ts,
            body: Some(AnyValue {
                value: Some(Value::StringValue(l.body.clone())),
            }),
            attributes: attr_key_values(&attrs),
            trace_id,
            span_id,
            flags,
            ..Default::default()
        };
        records.push((l.pid, record));
    }
    request_by_process(records, table)
}

/// Log records of traced processes as one OTLP request: one `ResourceLogs` per process, in the
/// order each process first appears, under the Resource its spans carry.
pub(crate) fn request_by_process(
    records: Vec<(u32, LogRecord)>,
    table: &ProcessTable,
) -> ExportLogsServiceRequest {
    let mut by_pid: Vec<(u32, Vec<LogRecord>)> = Vec::new();
    for (pid, record) in records {
        match by_pid.iter_mut().find(|(p, _)| *p == pid) {
            Some((_, v)) => v.push(record),
            None => by_pid.push((pid, vec![record])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: by_pid
            .into_iter()
            .map(|(pid, log_records)| ResourceLogs {
                resource: Some(resource(pid, table)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::testkit::{process, server_span, stdio_write as write};

    fn feed(logs: &mut Logs, tid: u32, fd: i32, ts: u64, payload: &[u8], span: Option<SpanId>) {
        let ev = write(7, tid, fd, ts, payload.len() as u64);
        logs.on_write(&ev, payload, span);
    }

    fn taken(logs: &mut Logs) -> Vec<LogLine> {
        let mut out = Vec::new();
        logs.take(&mut out);
        out
    }

    fn bodies(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.body.as_str()).collect()
    }

    #[test]
    fn writes_are_split_into_lines_and_partial_lines_carried_per_stream() {
        let mut logs = Logs::new(LogConfig::default());
        feed(&mut logs, 1, 1, 10, b"one\ntw", None);
        feed(&mut logs, 2, 2, 11, b"err line\r\n\n", None);
        feed(&mut logs, 1, 1, 12, b"o\nthree", None);
        let lines = taken(&mut logs);
        assert_eq!(bodies(&lines), vec!["one", "err line", "two"]);
        assert_eq!((lines[1].fd, lines[1].tid), (2, 2));
        // "two" started with the first write.
        assert_eq!(lines[2].ts_ns, 10);
        // "three" has no newline yet; the exit of the process finishes it.
        logs.process_exited(7);
        assert_eq!(bodies(&taken(&mut logs)), vec!["three"]);
        assert_eq!(logs.stats.lines, 4);
    }

    #[test]
    fn long_lines_are_cut_and_marked() {
        let mut logs = Logs::new(LogConfig {
            max_line: 8,
            ..Default::default()
        });
        feed(&mut logs, 1, 1, 1, b"0123456789abc", None);
        feed(&mut logs, 1, 1, 2, b"def\nok\n", None);
        let lines = taken(&mut logs);
        assert_eq!(bodies(&lines), vec!["01234567", "ok"]);
        assert!(lines[0].truncated && !lines[1].truncated);
        // A write longer than its captured head: the line in progress ends there, marked.
        let ev = write(7, 1, 1, 3, 1000);
        logs.on_write(&ev, b"head", None);
        let lines = taken(&mut logs);
        assert_eq!(bodies(&lines), vec!["head"]);
        assert!(lines[0].truncated);
        assert_eq!(logs.stats.truncated, 2);
    }

    #[test]
    fn lines_of_a_served_span_wait_for_its_release_and_get_its_final_ids() {
        let mut logs = Logs::new(LogConfig::default());
        let mut span = server_span();
        feed(&mut logs, 1, 1, 1, b"handling\n", Some(span.span_id));
        feed(&mut logs, 2, 1, 2, b"idle thread\n", None);
        // Only the uncorrelated line is ready; the other waits for its span.
        assert_eq!(bodies(&taken(&mut logs)), vec!["idle thread"]);
        // The trace id changed after the write (a cross-process parent was found): the line
        // gets the one the span is released with.
        span.trace_id = TraceId([9; 16]);
        let mut other = server_span();
        other.span_id = SpanId([1; 8]);
        logs.on_released(&[other, span.clone()]);
        let lines = taken(&mut logs);
        assert_eq!(bodies(&lines), vec!["handling"]);
        assert_eq!(lines[0].span, Some((TraceId([9; 16]), span.span_id)));
        assert_eq!(logs.stats.correlated, 1);
    }

    #[test]
    fn held_lines_are_bounded_in_number_and_age() {
        let mut logs = Logs::new(LogConfig {
            max_held: 2,
            max_hold_ns: 100,
            ..Default::default()
        });
        for (i, id) in [[1u8; 8], [2; 8], [3; 8]].into_iter().enumerate() {
            feed(&mut logs, 1, 1, i as u64, b"x\n", Some(SpanId(id)));
        }
        // The third pushed the oldest out, uncorrelated.
        let lines = taken(&mut logs);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].span, None);
        logs.expire(1_000);
        assert_eq!(taken(&mut logs).len(), 2);
        assert_eq!(logs.stats.correlation_lost, 3);
    }

    #[test]
    fn request_carries_ids_stream_and_resource() {
        let mut table = ProcessTable::new(None);
        table.upsert(std::sync::Arc::new(process(7, "app")));
        let span = server_span();
        let lines = vec![
            LogLine {
                pid: 7,
                tid: 8,
                fd: 2,
                ts_ns: 5,
                body: "boom".into(),
                truncated: true,
                span: Some((span.trace_id, span.span_id)),
            },
            LogLine {
                pid: 7,
                tid: 8,
                fd: 1,
                ts_ns: 6,
                body: "fine".into(),
                truncated: false,
                span: None,
            },
        ];
        let req = to_request(&lines, 1_000, &table);
        assert_eq!(req.resource_logs.len(), 1);
        let records = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(records[0].trace_id, span.trace_id.0.to_vec());
        assert_eq!(records[0].span_id, span.span_id.0.to_vec());
        assert_eq!(records[0].time_unix_nano, 1_005);
        let attr = |r: &LogRecord, k: &str| {
            r.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
        };
        assert_eq!(
            attr(&records[0], "log.iostream"),
            Some(AnyValue {
                value: Some(Value::StringValue("stderr".into()))
            })
        );
        assert!(attr(&records[0], TRUNCATED).is_some());
        assert!(records[1].trace_id.is_empty() && attr(&records[1], TRUNCATED).is_none());
    }
}
