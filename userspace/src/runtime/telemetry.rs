//! The daemon's side of the metrics and logs signals: every turn of the capture loop it ships the
//! log lines the pipeline has ready; every export interval it collects the metrics (the traced
//! processes' and ztrace's own health) and ships them; it warns when ztrace loses data and sums
//! both signals up on exit. It owns the Resource table these two signals use.
//!
//! Its clock is the wall clock in the daemon; in a replay it is the recording's own (the latest
//! record's time, converted to Unix time as span times are), so the same file gives the same
//! collections, timestamps included.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::time::Instant;

use crate::{
    capture::KernelCounters,
    export::{ExportStats, Exporter},
    model::ProcessInfo,
    processors::anomaly::AnomalyEvent,
    processors::chain::Processors,
    runtime::pipeline::Pipeline,
    semconv::resource::ProcessTable,
    signals::anomaly::{anomaly_metrics, console_line, tail_metrics},
    signals::logs::{LogLine, to_request},
    signals::metrics::health::{CrossHostOutcomes, Health, LinkOutcomes},
};

fn link_outcomes(
    l: &crate::link::LinkStats,
    x: Option<crate::link::crosshost::CrossHostStats>,
) -> LinkOutcomes {
    LinkOutcomes {
        traceparent: l.traceparent_links,
        thread: l.thread_links,
        response: l.response_links,
        cross_process: l.cross_process_links,
        content: l.content_links,
        contradicted: l.contradicted,
        outlived_parent: l.outlived_parent,
        mixed_inputs: l.abstained_mixed_inputs,
        no_evidence: l.abstained_no_evidence,
        stamps_adjusted: l.stamps_adjusted,
        stamps_left: l.stamps_left,
        cross_host: x.map(|x| CrossHostOutcomes {
            linked: x.linked,
            unknown: x.unknown,
            no_agent: x.no_agent,
            timeout: x.timeout,
            refused: x.refused,
            ambiguous: x.ambiguous,
        }),
    }
}

/// Most log lines per logs request.
const LOG_BATCH: usize = 512;
/// Losses are warned about at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// When metrics are collected, and the time they carry.
enum Clock {
    /// The daemon: every interval of wall-clock time, stamped with the wall clock.
    Wall { next: Instant },
    /// A replay: every interval of the recording's time ([`Pipeline::clock_ns`], monotonic),
    /// stamped with it. `next` is None until the first record that carries a time, whose time
    /// starts the series.
    Recording { next: Option<u64> },
}

pub struct Telemetry {
    table: ProcessTable,
    interval: Duration,
    clock: Clock,
    mono_to_unix: i128,
    self_pid: u32,
    lines: Vec<LogLine>,
    anomalies: Vec<AnomalyEvent>,
    start_unix_ns: u64,
    kernel: KernelCounters,
    collections: u64,
    warned_losses: u64,
    warned_at: Option<Instant>,
}

impl Telemetry {
    pub fn new(interval: Duration, mono_to_unix: i128, host_name: &str) -> Self {
        let self_pid = std::process::id();
        let mut table = ProcessTable::new(Some(host_name.to_string()).filter(|h| !h.is_empty()));
        let mut own = crate::capture::process::info(self_pid, Some("ztrace"), host_name);
        // ztrace's own command line holds its settings, collector headers (API keys) among them.
        own.command_args.clear();
        table.upsert(Arc::new(own));
        let interval = interval.max(Duration::from_millis(100));
        Telemetry {
            table,
            interval,
            clock: Clock::Wall {
                next: Instant::now() + interval,
            },
            mono_to_unix,
            self_pid,
            lines: Vec::new(),
            anomalies: Vec::new(),
            start_unix_ns: unix_now_ns(),
            kernel: KernelCounters::default(),
            collections: 0,
            warned_losses: 0,
            warned_at: None,
        }
    }

    /// A replay's: collections fall every `interval` of the recording's own time (see
    /// [`Telemetry::poll_waiting`]).
    pub fn on_recording(interval: Duration, mono_to_unix: i128, host_name: &str) -> Self {
        Telemetry {
            clock: Clock::Recording { next: None },
            // The recording's clock at 0 until its first record says when it began.
            start_unix_ns: mono_to_unix.clamp(0, u64::MAX as i128) as u64,
            ..Telemetry::new(interval, mono_to_unix, host_name)
        }
    }

    pub fn process(&mut self, info: Arc<ProcessInfo>) {
        self.table.upsert(info);
    }

    /// The latest kernel counters (the daemon reads them once a second).
    pub fn kernel(&mut self, counters: KernelCounters) {
        self.kernel = counters;
    }

    /// Ships ready log lines and anomaly records (and shows anomalies on the terminal); collects
    /// and ships metrics when due (or when `force`d, at exit).
    pub fn poll(
        &mut self,
        pipeline: &mut Pipeline,
        processors: &mut Processors,
        exporter: &Exporter,
        force: bool,
    ) {
        for req in self.logs(pipeline, processors) {
            exporter.export_logs(req);
        }
        if let Some(req) = self.collect(pipeline, processors, exporter, force) {
            exporter.export_metrics(req);
        }
    }

    /// A replay's turn: as [`Telemetry::poll`], but log records and metrics wait for room in the
    /// export queue rather than being dropped, so every line, anomaly record and collection
    /// reaches the collector however fast it is.
    pub async fn poll_waiting(
        &mut self,
        pipeline: &mut Pipeline,
        processors: &mut Processors,
        exporter: &Exporter,
        force: bool,
    ) {
        for req in self.logs(pipeline, processors) {
            exporter.export_logs_waiting(req).await;
        }
        if let Some(req) = self.collect(pipeline, processors, exporter, force) {
            exporter.export_metrics_waiting(req).await;
        }
    }

    /// The logs requests ready now, the log rules applied: the captured lines the pipeline has
    /// ready (at most [`LOG_BATCH`] a request), then the processors' anomaly records (shown on
    /// the terminal too).
    pub(crate) fn logs(
        &mut self,
        pipeline: &mut Pipeline,
        processors: &mut Processors,
    ) -> Vec<ExportLogsServiceRequest> {
        let mut out = Vec::new();
        pipeline.take_logs(&mut self.lines);
        for chunk in self.lines.chunks(LOG_BATCH) {
            let mut req = to_request(chunk, self.mono_to_unix, &self.table);
            processors.rules_logs(&mut req);
            out.push(req);
        }
        self.lines.clear();
        processors.take_events(&mut self.anomalies);
        if !self.anomalies.is_empty() {
            // On stderr with the daemon's other messages: stdout carries the spans (JSON lines
            // must stay parseable).
            for e in &self.anomalies {
                if e.started {
                    log::warn!("{}", console_line(e));
                } else {
                    log::info!("{}", console_line(e));
                }
            }
            let mut req = crate::signals::anomaly::to_request(
                &self.anomalies,
                self.mono_to_unix,
                &self.table,
            );
            processors.rules_logs(&mut req);
            out.push(req);
            self.anomalies.clear();
        }
        out
    }

    /// The time of a collection due now by this telemetry's clock (or `force`d), in Unix ns.
    fn due(&mut self, pipeline: &mut Pipeline, force: bool) -> Option<u64> {
        match &mut self.clock {
            Clock::Wall { next } => {
                let now = Instant::now();
                if !force && now < *next {
                    return None;
                }
                *next = now + self.interval;
                Some(unix_now_ns())
            }
            Clock::Recording { next } => {
                let now = pipeline.clock_ns();
                let unix = (now as i128 + self.mono_to_unix).clamp(0, u64::MAX as i128) as u64;
                let interval = self.interval.as_nanos() as u64;
                if next.is_none() && now > 0 {
                    // The first record with a time: the series start here.
                    self.start_unix_ns = unix;
                    if let Some(m) = &mut pipeline.metrics {
                        m.set_start(unix);
                    }
                    *next = Some(now.saturating_add(interval));
                }
                if !force && next.is_none_or(|n| now < n) {
                    return None;
                }
                if now > 0 {
                    *next = Some(now.saturating_add(interval));
                }
                Some(unix)
            }
        }
    }

    /// The metrics request due now (or `force`d), the processors' self metrics and the metric
    /// rules applied; None when none is due or the metrics signal is off.
    pub(crate) fn collect(
        &mut self,
        pipeline: &mut Pipeline,
        processors: &mut Processors,
        exporter: &Exporter,
        force: bool,
    ) -> Option<ExportMetricsServiceRequest> {
        let now = self.due(pipeline, force)?;
        let health = self.health(pipeline, exporter);
        self.warn_losses(&health, force);
        let metrics = pipeline.metrics.as_mut()?;
        let (mut req, _) = metrics.collect(now, &health, self.self_pid, &self.table);
        // The processors' self-metrics join ztrace's own Resource (collected last).
        let mut extra = Vec::new();
        if let Some(t) = processors.tail_stats() {
            extra.extend(tail_metrics(&t, self.start_unix_ns, now));
        }
        if let Some((stats, active)) = processors.anomaly_stats() {
            extra.extend(anomaly_metrics(&stats, &active, self.start_unix_ns, now));
        }
        if let Some(own) = req
            .resource_metrics
            .last_mut()
            .and_then(|r| r.scope_metrics.first_mut())
        {
            own.metrics.extend(extra);
        }
        processors.rules_metrics(&mut req);
        self.collections += 1;
        Some(req)
    }

    fn health(&self, pipeline: &Pipeline, exporter: &Exporter) -> Health {
        // A replay's exporter counters depend on the replaying machine, not the recording.
        let replay = matches!(self.clock, Clock::Recording { .. });
        let (e, depth) = if replay {
            Default::default()
        } else {
            (exporter.stats(), exporter.queue_depth())
        };
        let logs = pipeline.logs.as_ref().map(|l| l.stats).unwrap_or_default();
        Health {
            events_read: pipeline.stats().records,
            dropped_ring_full: self.kernel.ringbuf_full,
            dropped_args_full: self.kernel.args_full,
            dropped_tls_no_socket: self.kernel.tls_unattributed,
            spans_exported: e.spans_exported,
            metric_points_exported: e.metrics.exported,
            logs_exported: e.logs.exported,
            spans_queue_dropped: e.spans_dropped_queue_full,
            metrics_queue_dropped: e.metrics.dropped_queue_full,
            logs_queue_dropped: e.logs.dropped_queue_full,
            spans_failed: e.spans_dropped_failed,
            metrics_failed: e.metrics.dropped_failed,
            logs_failed: e.logs.dropped_failed,
            spans_queued: depth.spans,
            metrics_queued: depth.metric_points,
            logs_queued: depth.log_records,
            metric_overflow: pipeline.metrics.as_ref().map_or(0, |m| m.folded()),
            logs_dropped: logs.dropped,
            parser_shed: pipeline.stats().assemble.budget_shed,
            parser_bytes: pipeline.stats().assemble.parser_bytes,
            links: link_outcomes(&pipeline.stats().link, pipeline.crosshost_stats()),
            omit_exporter: replay,
        }
    }

    /// Warns (at most every 10 s) when anything was lost since the last warning.
    fn warn_losses(&mut self, h: &Health, force: bool) {
        let total = h.any_loss();
        let due = self.warned_at.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if total > self.warned_losses && (due || force) {
            log::warn!(
                "ztrace lost data (totals): kernel {} (ring buffer full {}, arg map full {}); TLS plaintext with no socket known {}; export queue full: spans {}, metric points {}, log records {}; export failed: spans {}, metric points {}, log records {}; log lines dropped {}; connections shed by the parser memory budget {}",
                h.dropped_ring_full + h.dropped_args_full,
                h.dropped_ring_full,
                h.dropped_args_full,
                h.dropped_tls_no_socket,
                h.spans_queue_dropped,
                h.metrics_queue_dropped,
                h.logs_queue_dropped,
                h.spans_failed,
                h.metrics_failed,
                h.logs_failed,
                h.logs_dropped,
                h.parser_shed,
            );
            self.warned_losses = total;
            self.warned_at = Some(Instant::now());
        }
    }

    /// The exit summary of both signals, with the exporter's final counters.
    pub fn summary(&self, pipeline: &Pipeline, processors: &Processors, e: &ExportStats) {
        if let Some(r) = processors.rule_stats() {
            log::info!(
                "summary (rules): dropped by filters or errors: {} spans, {} data points, {} log records; {} rule errors",
                r.spans_dropped,
                r.points_dropped,
                r.logs_dropped,
                r.errors,
            );
        }
        if let Some(t) = processors.tail_stats() {
            let decided = (t.traces_kept + t.traces_dropped).max(1);
            log::info!(
                "summary (tail sampling): {} traces kept, {} dropped ({} spans kept, {} dropped; {} late spans); by policy: {}; {} decided early (buffer full); decision wait mean {:.0} ms, max {:.0} ms; {} remote changes ({} traces decided early by a change); switched off, {} late spans followed their trace's decision and {} decisions were forgotten",
                t.traces_kept,
                t.traces_dropped,
                t.spans_kept,
                t.spans_dropped,
                t.late_spans,
                t.by_policy
                    .iter()
                    .map(|(n, k)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.overflow,
                t.wait_sum_ns as f64 / decided as f64 / 1e6,
                t.wait_max_ns as f64 / 1e6,
                t.changes,
                t.retired_early,
                t.late_spans_off,
                t.verdicts_forgotten,
            );
        }
        if let Some(v) = processors.tail_stats().map(|t| t.votes)
            && (v.shared_traces > 0 || v.votes_received > 0)
        {
            log::info!(
                "summary (tail sampling votes): {} traces shared with agents on other hosts, {} kept here because another agent kept them; {} votes sent, {} received ({} refused: not from an agent on the trace's path); {} waits ended without every vote, {} keeps came after the spans were dropped, {} shared traces forgotten for room",
                v.shared_traces,
                v.kept_by_peer,
                v.votes_sent,
                v.votes_received,
                v.refused,
                v.wait_expired,
                v.late_keeps,
                v.overflow,
            );
        }
        if let Some((s, active)) = processors.anomaly_stats() {
            log::info!(
                "summary (anomalies): {} started, {} ended, {} still active; {} operations with a baseline, {} spans of untracked operations",
                s.started,
                s.ended,
                active.len(),
                s.operations,
                s.untracked_spans,
            );
        }
        let (m, l) = (&e.metrics, &e.logs);
        if let Some(metrics) = &pipeline.metrics {
            log::info!(
                "summary (metrics): {} collections, {} series held, {} measurements folded into overflow series; {} data points exported ({} failed, {} dropped: queue full, {} not exported: no metrics endpoint)",
                self.collections,
                metrics.series(),
                metrics.folded(),
                m.exported,
                m.dropped_failed,
                m.dropped_queue_full,
                m.not_exported,
            );
        }
        if let Some(logs) = &pipeline.logs {
            let st = logs.stats;
            log::info!(
                "summary (logs): {} lines captured ({} correlated with a span, {} whose span was not released in time, {} truncated, {} dropped); {} log records exported ({} failed, {} dropped: queue full, {} not exported: no logs endpoint)",
                st.lines,
                st.correlated,
                st.correlation_lost,
                st.truncated,
                st.dropped,
                l.exported,
                l.dropped_failed,
                l.dropped_queue_full,
                l.not_exported,
            );
        }
    }
}
