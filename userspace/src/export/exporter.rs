//! The export stage: everything between a finished [`Span`] and the outside world.
//!
//! This module owns
//! - the public API ([`Exporter`], [`ExportHandle`], [`ExportConfig`], [`ExportStats`]);
//! - the bounded span queue and the background task that drains it in batches (up to
//!   `max_batch` spans or `batch_delay`, whichever comes first), including shutdown/flush;
//! - the table of traced processes that becomes each span's Resource;
//! - the mapping of model types onto OpenTelemetry semantic-convention attributes
//!   ([`span_attributes`], [`resource_attributes`]), shared by every output so that OTLP, console
//!   and JSON all say the same thing. Attribute names come from `opentelemetry-semantic-conventions`.
//!
//! The outputs themselves live in [`otlp`] (OTLP with retries, for spans, metrics and logs, over
//! the gRPC or HTTP transports of `transport`) and [`console`] (console lines and JSON lines on
//! stdout). [`crate::processors::sampler`] decides which finished spans are exported at all.
//!
//! Capture must never wait on export: [`Exporter::submit`], [`Exporter::process`],
//! [`Exporter::export_metrics`] and [`Exporter::export_logs`] only ever `try_send` into bounded
//! channels; a full queue drops the item and counts it. Metrics and logs requests are built by
//! their producers; without an OTLP target for their signal (terminal output) they are discarded
//! and not printed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use opentelemetry_semantic_conventions::attribute as semconv;
use opentelemetry_semantic_conventions::resource as res;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{console, otlp, wire};
use crate::config::{Batching, Config, OtlpTarget, Sampler, Temporality};
use crate::model::{
    DbExchange, DnsExchange, Exchange, HttpExchange, ProcessInfo, RpcExchange, Span, SpanKind,
    SpanStatus,
};

/// Instrumentation scope name and `telemetry.sdk.name`.
pub const SCOPE_NAME: &str = "ztrace";
/// Instrumentation scope version and `telemetry.sdk.version`.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where finished spans go.
#[derive(Clone, Debug)]
pub enum Output {
    /// OTLP (gRPC or HTTP/protobuf) to a collector.
    Otlp(Box<OtlpTarget>),
    /// One readable line per span on stdout.
    Console,
    /// One JSON object per span per line on stdout.
    Json,
}

/// Tuning of the export stage.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub output: Output,
    /// Spans waiting for export; beyond this, `submit` drops (and counts) new spans.
    pub max_queue: usize,
    /// Spans per export call.
    pub max_batch: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_delay: Duration,
    /// Which finished spans are exported.
    pub sampler: Sampler,
    /// Added to (and overriding) the Resource of every process, for every signal.
    pub resource_attributes: Vec<(String, String)>,
    /// Where metrics go (None: discarded).
    pub metrics: Option<OtlpTarget>,
    /// Where logs go (None: discarded).
    pub logs: Option<OtlpTarget>,
    /// Queue bound (in log records), batch size and delay of logs.
    pub log_batching: Batching,
    /// Queue bound of metrics, in data points.
    pub metrics_max_queue: usize,
    /// For the metrics producer (the exporter only ships what it is given): how often to export
    /// (`OTEL_METRIC_EXPORT_INTERVAL`), and the temporality the collector prefers.
    pub metric_export_interval: Duration,
    pub temporality: Temporality,
}

impl Default for ExportConfig {
    fn default() -> Self {
        let spans = crate::config::DEFAULT_SPAN_BATCHING;
        ExportConfig {
            output: Output::Console,
            max_queue: spans.max_queue,
            max_batch: spans.max_batch,
            batch_delay: spans.delay,
            sampler: Sampler::ParentBased(crate::config::RootSampler::AlwaysOn),
            resource_attributes: Vec::new(),
            metrics: None,
            logs: None,
            log_batching: crate::config::DEFAULT_LOG_BATCHING,
            metrics_max_queue: 64 * 1024,
            metric_export_interval: Duration::from_secs(60),
            temporality: Temporality::Cumulative,
        }
    }
}

impl ExportConfig {
    /// The export stage as `config` says; `terminal` is where spans go without a collector.
    pub fn from_config(config: &Config, terminal: Output) -> ExportConfig {
        ExportConfig {
            output: config
                .traces
                .clone()
                .map_or(terminal, |t| Output::Otlp(Box::new(t))),
            max_queue: config.span_batching.max_queue,
            max_batch: config.span_batching.max_batch,
            batch_delay: config.span_batching.delay,
            sampler: config.sampler,
            resource_attributes: config.resource_attributes.clone(),
            metrics: config.metrics.clone(),
            logs: config.logs.clone(),
            log_batching: config.log_batching,
            metric_export_interval: config.metric_export_interval,
            temporality: config.temporality,
            ..ExportConfig::default()
        }
    }

    /// The OTLP target of spans, if they go to a collector.
    fn trace_target(&self) -> Option<&OtlpTarget> {
        match &self.output {
            Output::Otlp(t) => Some(t),
            _ => None,
        }
    }

    /// The longest single export attempt of any signal (the grace of an unannounced shutdown).
    fn longest_timeout(&self) -> Duration {
        [
            self.trace_target(),
            self.metrics.as_ref(),
            self.logs.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.timeout)
        .max()
        .unwrap_or(crate::config::DEFAULT_TIMEOUT)
    }
}

/// Counters of the export stage (a snapshot).
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the output accepted (collector acknowledged / line written).
    pub spans_exported: u64,
    /// Spans refused by `submit` because the queue was full (or the exporter had shut down).
    pub spans_dropped_queue_full: u64,
    /// Spans given up on: failed batches, spans the collector rejected, spans unsent at the
    /// shutdown deadline.
    pub spans_dropped_failed: u64,
    /// Batches given up on.
    pub batches_failed: u64,
    /// Export attempts that were retries.
    pub retries: u64,
    /// Spans the sampler decided not to export (not a loss).
    pub spans_sampled_out: u64,
    /// Metrics, counted in data points.
    pub metrics: SignalStats,
    /// Logs, counted in log records.
    pub logs: SignalStats,
}

/// Counters of the metrics or logs export (a snapshot), in data points or log records.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct SignalStats {
    /// Acknowledged by the collector.
    pub exported: u64,
    /// Refused because the queue was full (or the exporter had shut down).
    pub dropped_queue_full: u64,
    /// Given up on: failed batches, rejected items, unsent at the shutdown deadline.
    pub dropped_failed: u64,
    pub batches_failed: u64,
    pub retries: u64,
    /// Discarded because the signal has no OTLP target (terminal output).
    pub not_exported: u64,
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_failed: AtomicU64,
    batches_failed: AtomicU64,
    retries: AtomicU64,
    sampled_out: AtomicU64,
    not_exported: AtomicU64,
    /// Items waiting in a request queue (metrics, logs), whose channel counts requests.
    queued: AtomicUsize,
    /// Items queued (metrics, logs) and not yet accounted for as exported or failed: queued,
    /// held for a batch or in flight. Zero means everything submitted so far was settled.
    outstanding: AtomicUsize,
}

impl Counters {
    fn snapshot(&self) -> ExportStats {
        ExportStats {
            spans_exported: self.exported.load(Ordering::Relaxed),
            spans_dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            spans_dropped_failed: self.dropped_failed.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            spans_sampled_out: self.sampled_out.load(Ordering::Relaxed),
            ..ExportStats::default()
        }
    }
    fn signal_snapshot(&self) -> SignalStats {
        SignalStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_failed: self.dropped_failed.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            not_exported: self.not_exported.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn dequeued(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
    /// `n` items taken off a request queue were accounted for (exported, failed or lost).
    pub(crate) fn settled(&self, n: usize) {
        self.outstanding.fetch_sub(n, Ordering::Relaxed);
    }
    pub(crate) fn exported(&self, n: usize) {
        self.exported.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// `n` spans were given up on; `batch` says whether that counts as a failed batch.
    pub(crate) fn failed(&self, n: usize, batch: bool) {
        self.dropped_failed.fetch_add(n as u64, Ordering::Relaxed);
        if batch {
            self.batches_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The submitting side of one request signal (metrics or logs).
#[derive(Debug)]
struct RequestQueue<R> {
    /// None when the signal is not exported.
    tx: Option<mpsc::Sender<otlp::Queued<R>>>,
    counters: Arc<Counters>,
    max_items: usize,
}

impl<R> Clone for RequestQueue<R> {
    fn clone(&self) -> Self {
        RequestQueue {
            tx: self.tx.clone(),
            counters: Arc::clone(&self.counters),
            max_items: self.max_items,
        }
    }
}

impl<R: otlp::OtlpRequest> RequestQueue<R> {
    fn new(tx: Option<mpsc::Sender<otlp::Queued<R>>>, max_items: usize) -> Self {
        RequestQueue {
            tx,
            counters: Arc::new(Counters::default()),
            max_items: max_items.max(1),
        }
    }

    /// Never blocks: beyond `max_items` queued items the request is dropped and counted.
    fn submit(&self, request: R) {
        let items = request.items();
        let Some(tx) = &self.tx else {
            self.counters
                .not_exported
                .fetch_add(items as u64, Ordering::Relaxed);
            return;
        };
        if items == 0 {
            return;
        }
        let queued = self.counters.queued.fetch_add(items, Ordering::Relaxed);
        self.counters
            .outstanding
            .fetch_add(items, Ordering::Relaxed);
        // One request larger than the whole bound still goes through an empty queue.
        let fits = queued == 0 || queued + items <= self.max_items;
        if !fits || tx.try_send(otlp::Queued { request, items }).is_err() {
            self.counters.queued.fetch_sub(items, Ordering::Relaxed);
            self.counters
                .outstanding
                .fetch_sub(items, Ordering::Relaxed);
            self.counters
                .dropped_queue_full
                .fetch_add(items as u64, Ordering::Relaxed);
        }
    }
}

/// The cheap, cloneable side of an [`Exporter`] for code that only submits (e.g. one per
/// capture thread). It works from any thread, inside a tokio runtime or not.
#[derive(Clone, Debug)]
pub struct ExportHandle {
    spans: mpsc::Sender<Span>,
    processes: mpsc::UnboundedSender<Arc<ProcessInfo>>,
    counters: Arc<Counters>,
    sampler: Sampler,
    metrics: RequestQueue<ExportMetricsServiceRequest>,
    logs: RequestQueue<ExportLogsServiceRequest>,
}

impl ExportHandle {
    /// Registers or refreshes the Resource of `info.pid`. Never blocks.
    pub fn process(&self, info: Arc<ProcessInfo>) {
        // Fails only once the export task is gone, when there is nothing left to describe.
        let _ = self.processes.send(info);
    }

    /// Queues a finished span. Never blocks: when the queue is full, or the exporter has shut
    /// down, the span is dropped and counted in `spans_dropped_queue_full`. Spans the sampler
    /// rejects are counted in `spans_sampled_out` and take no queue slot.
    pub fn submit(&self, span: Span) {
        if self.sampled(&span) && self.spans.try_send(span).is_err() {
            self.queue_drop();
        }
    }

    /// Queues a finished span, waiting for room in the queue instead of dropping it: for replay,
    /// which produces spans faster than any output takes them and must lose none. Counted as
    /// dropped only when the exporter has already shut down.
    pub async fn submit_waiting(&self, span: Span) {
        if self.sampled(&span) && self.spans.send(span).await.is_err() {
            self.queue_drop();
        }
    }

    /// The sampler's decision; a span it rejects is counted in `spans_sampled_out`.
    fn sampled(&self, span: &Span) -> bool {
        let keep = crate::processors::sampler::sampled(&self.sampler, span);
        if !keep {
            self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
        }
        keep
    }

    fn queue_drop(&self) {
        self.counters
            .dropped_queue_full
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a metrics request for export. Never blocks; counted in data points in
    /// `ExportStats::metrics` (dropped when the queue is full; discarded, as `not_exported`,
    /// when metrics have no OTLP target). The configured resource attributes are added to
    /// every Resource in it.
    pub fn export_metrics(&self, req: ExportMetricsServiceRequest) {
        self.metrics.submit(req);
    }

    /// Queues a logs request for export: like [`ExportHandle::export_metrics`], counted in log
    /// records in `ExportStats::logs`; queued requests are merged into batches.
    pub fn export_logs(&self, req: ExportLogsServiceRequest) {
        self.logs.submit(req);
    }

    /// Live counters.
    pub fn stats(&self) -> ExportStats {
        ExportStats {
            metrics: self.metrics.counters.signal_snapshot(),
            logs: self.logs.counters.signal_snapshot(),
            ..self.counters.snapshot()
        }
    }

    /// What waits in the export queues now.
    pub fn queue_depth(&self) -> QueueDepth {
        QueueDepth {
            spans: (self.spans.max_capacity() - self.spans.capacity()) as u64,
            metric_points: self.metrics.counters.queued.load(Ordering::Relaxed) as u64,
            log_records: self.logs.counters.queued.load(Ordering::Relaxed) as u64,
        }
    }

    /// Metrics and logs items submitted and not yet exported or given up on.
    fn signals_outstanding(&self) -> usize {
        self.metrics.counters.outstanding.load(Ordering::Relaxed)
            + self.logs.counters.outstanding.load(Ordering::Relaxed)
    }
}

/// Items waiting in the export queues (a snapshot).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    pub spans: u64,
    pub metric_points: u64,
    pub log_records: u64,
}

/// The export stage: a bounded queue and a background task that batches and ships spans.
#[derive(Debug)]
pub struct Exporter {
    handle: ExportHandle,
    shutdown: watch::Sender<Option<Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Exporter {
    /// Spawns the export task on the current tokio runtime (or, outside one, on a runtime of its
    /// own in a thread named `ztrace-export`). Never fails because the collector is down: the
    /// connection is made lazily and re-made as needed.
    pub fn spawn(cfg: ExportConfig) -> Exporter {
        Self::spawn_to(cfg, console::Destination::Stdout)
    }

    /// Like `spawn`, with console/JSON lines going to a buffer instead of stdout.
    #[cfg(test)]
    pub(crate) fn spawn_captured(cfg: ExportConfig) -> (Exporter, Arc<std::sync::Mutex<Vec<u8>>>) {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let exporter = Self::spawn_to(cfg, console::Destination::Buffer(Arc::clone(&buf)));
        (exporter, buf)
    }

    fn spawn_to(cfg: ExportConfig, destination: console::Destination) -> Exporter {
        let counters = Arc::new(Counters::default());
        let (span_tx, span_rx) = mpsc::channel(cfg.max_queue.max(1));
        let (proc_tx, proc_rx) = mpsc::unbounded_channel();
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let grace = cfg.longest_timeout().max(Duration::from_millis(1));
        let control = || Control {
            rx: shutdown_rx.clone(),
            fallback: None,
            grace,
        };
        let extra = resource_extra(&cfg.resource_attributes);
        let (metrics_tx, metrics_rx) = match cfg.metrics {
            Some(_) => {
                let (tx, rx) = mpsc::channel(cfg.metrics_max_queue.max(1));
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (logs_tx, logs_rx) = match cfg.logs {
            Some(_) => {
                let (tx, rx) = mpsc::channel(cfg.log_batching.max_queue.max(1));
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let handle = ExportHandle {
            spans: span_tx,
            processes: proc_tx,
            counters: Arc::clone(&counters),
            sampler: cfg.sampler,
            metrics: RequestQueue::new(metrics_tx, cfg.metrics_max_queue),
            logs: RequestQueue::new(logs_tx, cfg.log_batching.max_queue),
        };
        let mut table = ProcessTable::new(local_host_name());
        table.extra = extra
            .iter()
            .map(|(k, v)| (k.clone(), AttrValue::Str(Cow::Owned(v.clone()))))
            .collect();
        let worker = Worker {
            rx: span_rx,
            processes: proc_rx,
            table,
            output: cfg.output.clone(),
            destination,
            counters: Arc::clone(&counters),
            ctl: control(),
            batch: Vec::new(),
            max_batch: cfg.max_batch.max(1),
            batch_delay: cfg.batch_delay,
            queue_drops_reported: 0,
            queue_drops_reported_at: None,
        };
        let resource: Vec<KeyValue> = extra
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
            })
            .collect();
        let runner = Runner {
            spans: worker,
            metrics: cfg.metrics.zip(metrics_rx).map(|(target, rx)| Pending {
                target,
                rx,
                counters: Arc::clone(&handle.metrics.counters),
                ctl: control(),
                batching: Batching {
                    max_queue: cfg.metrics_max_queue,
                    max_batch: usize::MAX,
                    delay: Duration::ZERO,
                },
                merge: false,
                resource: resource.clone(),
            }),
            logs: cfg.logs.zip(logs_rx).map(|(target, rx)| Pending {
                target,
                rx,
                counters: Arc::clone(&handle.logs.counters),
                ctl: control(),
                batching: cfg.log_batching,
                merge: true,
                resource,
            }),
        };
        let tasks = match tokio::runtime::Handle::try_current() {
            Ok(rt) => runner.spawn_on(&rt),
            Err(_) => spawn_own_runtime(runner),
        };
        Exporter {
            handle,
            shutdown: shutdown_tx,
            tasks,
        }
    }

    /// A cloneable handle for submitting from elsewhere (other threads or tasks).
    pub fn handle(&self) -> ExportHandle {
        self.handle.clone()
    }

    /// Non-blocking: registers or refreshes what the Resource for `info.pid` says.
    pub fn process(&self, info: Arc<ProcessInfo>) {
        self.handle.process(info);
    }

    /// Non-blocking; when the bounded queue is full the span is dropped and counted.
    pub fn submit(&self, span: Span) {
        self.handle.submit(span);
    }

    /// Waits for queue room; see [`ExportHandle::submit_waiting`].
    pub async fn submit_waiting(&self, span: Span) {
        self.handle.submit_waiting(span).await;
    }

    /// Non-blocking; see [`ExportHandle::export_metrics`].
    pub fn export_metrics(&self, req: ExportMetricsServiceRequest) {
        self.handle.export_metrics(req);
    }

    /// Non-blocking; see [`ExportHandle::export_logs`].
    pub fn export_logs(&self, req: ExportLogsServiceRequest) {
        self.handle.export_logs(req);
    }

    /// Live snapshot of the counters.
    pub fn stats(&self) -> ExportStats {
        self.handle.stats()
    }

    /// What waits in the export queues now (see [`ExportHandle::queue_depth`]).
    pub fn queue_depth(&self) -> QueueDepth {
        self.handle.queue_depth()
    }

    /// Waits (at most `deadline`) until every metrics and logs request submitted so far was
    /// settled: exported, or given up on after its retries (and counted either way). Spans are
    /// not waited for; [`Exporter::shutdown`] flushes them. Used at exit, so that the summary
    /// reports what the collector accepted rather than what was still on its way.
    pub async fn flush_signals(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.handle.signals_outstanding() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting spans, flushes everything queued (retrying as needed) within `deadline`,
    /// and returns the final counters. Spans still unsent at the deadline count as
    /// `spans_dropped_failed`. Spans submitted through an [`ExportHandle`] afterwards are counted
    /// as `spans_dropped_queue_full`.
    pub async fn shutdown(mut self, deadline: Duration) -> ExportStats {
        let now = Instant::now();
        let at = now.checked_add(deadline).unwrap_or(now + FOREVER);
        // Fails only when the task is already gone, which the join below handles.
        let _ = self.shutdown.send(Some(at));
        for mut task in std::mem::take(&mut self.tasks) {
            // Each task bounds its own work by `at`; the grace covers a stdout that stopped
            // draining. On overrun, aborting drops the worker, whose Drop counts what it held.
            let grace = Duration::from_secs(1);
            if tokio::time::timeout_at(at + grace, &mut task)
                .await
                .is_err()
            {
                log::warn!(
                    "export task still busy {grace:?} after the shutdown deadline; abandoning it"
                );
                task.abort();
                let _ = tokio::time::timeout(grace, task).await;
            }
        }
        self.handle.stats()
    }
}

/// The `OTEL_RESOURCE_ATTRIBUTES` pairs, last one winning for a repeated key.
fn resource_extra(pairs: &[(String, String)]) -> Vec<(Cow<'static, str>, String)> {
    let mut out: Vec<(Cow<'static, str>, String)> = Vec::new();
    for (k, v) in pairs {
        match out.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((Cow::Owned(k.clone()), v.clone())),
        }
    }
    out
}

/// A metrics or logs worker, before its client exists (clients are made on the runtime).
struct Pending<R> {
    target: OtlpTarget,
    rx: mpsc::Receiver<otlp::Queued<R>>,
    counters: Arc<Counters>,
    ctl: Control,
    batching: Batching,
    merge: bool,
    resource: Vec<KeyValue>,
}

impl<R: otlp::OtlpRequest> Pending<R> {
    async fn run(self) {
        otlp::RequestWorker {
            rx: self.rx,
            client: otlp::OtlpClient::new(&self.target),
            counters: self.counters,
            ctl: self.ctl,
            batching: self.batching,
            merge: self.merge,
            resource: self.resource,
            held: Vec::new(),
        }
        .run()
        .await;
    }
}

/// Every export task, ready to run.
struct Runner {
    spans: Worker,
    metrics: Option<Pending<ExportMetricsServiceRequest>>,
    logs: Option<Pending<ExportLogsServiceRequest>>,
}

impl Runner {
    fn spawn_on(self, rt: &tokio::runtime::Handle) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![rt.spawn(self.spans.run())];
        if let Some(m) = self.metrics {
            tasks.push(rt.spawn(m.run()));
        }
        if let Some(l) = self.logs {
            tasks.push(rt.spawn(l.run()));
        }
        tasks
    }
}

/// Outside a tokio runtime: run the workers on a current-thread runtime in their own thread.
fn spawn_own_runtime(runner: Runner) -> Vec<JoinHandle<()>> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start a runtime for export ({e}); spans will be dropped");
            return Vec::new();
        }
    };
    let tasks = runner.spawn_on(rt.handle());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let handles: Vec<tokio::task::AbortHandle> = tasks.iter().map(|t| t.abort_handle()).collect();
    rt.spawn(async move {
        // Dropped when every worker has finished or was aborted, which ends the thread.
        let _done = done_tx;
        while handles.iter().any(|h| !h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let spawned = std::thread::Builder::new()
        .name("ztrace-export".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = done_rx.await;
            });
        });
    match spawned {
        Ok(_) => tasks,
        Err(e) => {
            log::error!("cannot start the export thread ({e}); spans will be dropped");
            Vec::new()
        }
    }
}

/// Reads the shutdown request (a deadline) for the worker and the outputs.
pub(crate) struct Control {
    rx: watch::Receiver<Option<Instant>>,
    /// Set when the [`Exporter`] was dropped without `shutdown`: flush for `grace`, then stop.
    fallback: Option<Instant>,
    grace: Duration,
}

impl Control {
    /// The shutdown deadline, once shutdown was requested.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (*self.rx.borrow()).or(self.fallback)
    }

    /// Completes once shutdown has been requested (immediately if it already was).
    pub(crate) async fn requested(&mut self) {
        while self.deadline().is_none() {
            if self.rx.changed().await.is_err() {
                self.fallback = Some(Instant::now() + self.grace);
            }
        }
    }
}

/// How long the span worker lets a partial batch gather before taking more off the queue.
const GATHER: Duration = Duration::from_millis(10);

/// Completes at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stands in for "never" where a deadline must be an [`Instant`].
pub const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How many processes' Resources are remembered; beyond this the least recently used are forgotten.
const MAX_PROCESSES: usize = 16 * 1024;

/// What the Resource of each traced process says.
pub(crate) struct ProcessTable {
    entries: HashMap<u32, (Arc<ProcessInfo>, u64)>,
    tick: u64,
    /// `host.name` for processes without (or with an empty) [`ProcessInfo::host_name`].
    host_fallback: Option<String>,
    /// Configured resource attributes, set on every Resource.
    pub(crate) extra: ResourceAttrs,
}

impl ProcessTable {
    pub(crate) fn new(host_fallback: Option<String>) -> Self {
        ProcessTable {
            entries: HashMap::new(),
            tick: 0,
            host_fallback,
            extra: Vec::new(),
        }
    }

    pub(crate) fn upsert(&mut self, info: Arc<ProcessInfo>) {
        self.tick += 1;
        self.entries.insert(info.pid, (info, self.tick));
        if self.entries.len() > MAX_PROCESSES {
            self.evict();
        }
    }

    /// Marks the processes of `spans` as recently used.
    fn touch(&mut self, spans: &[Span]) {
        self.tick += 1;
        for s in spans {
            if let Some(entry) = self.entries.get_mut(&s.pid) {
                entry.1 = self.tick;
            }
        }
    }

    /// Forgets the least recently used eighth.
    fn evict(&mut self) {
        let mut ticks: Vec<u64> = self.entries.values().map(|(_, t)| *t).collect();
        let k = ticks.len() / 8;
        if k == 0 {
            return;
        }
        let (_, cutoff, _) = ticks.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.entries.retain(|_, (_, t)| *t > cutoff);
    }

    pub(crate) fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid).map(|(info, _)| info.as_ref())
    }

    pub(crate) fn host_fallback(&self) -> Option<&str> {
        self.host_fallback.as_deref()
    }

    /// The Resource of `pid`: what was detected, then the configured attributes (which win).
    pub(crate) fn resource(&self, pid: u32) -> ResourceAttrs {
        let mut a: ResourceAttrs = resource_attributes(pid, self.get(pid), self.host_fallback())
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect();
        for (k, v) in &self.extra {
            match a.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.clone(),
                None => a.push((k.clone(), v.clone())),
            }
        }
        a
    }
}

/// This machine's host name (used when a process's own is unknown).
fn local_host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The export task's state.
struct Worker {
    rx: mpsc::Receiver<Span>,
    processes: mpsc::UnboundedReceiver<Arc<ProcessInfo>>,
    table: ProcessTable,
    output: Output,
    destination: console::Destination,
    counters: Arc<Counters>,
    ctl: Control,
    /// Spans taken off the queue and not yet accounted for.
    batch: Vec<Span>,
    max_batch: usize,
    batch_delay: Duration,
    queue_drops_reported: u64,
    queue_drops_reported_at: Option<Instant>,
}

enum Sink {
    Otlp(Box<otlp::OtlpSink>),
    Stdout(console::StdoutSink),
}

impl Worker {
    async fn run(mut self) {
        let mut sink = match &self.output {
            Output::Otlp(target) => Sink::Otlp(Box::new(otlp::OtlpSink::new(target))),
            Output::Console => Sink::Stdout(console::StdoutSink::new(
                console::Format::Console,
                self.destination.clone(),
            )),
            Output::Json => Sink::Stdout(console::StdoutSink::new(
                console::Format::Json,
                self.destination.clone(),
            )),
        };
        // When the oldest span of the batch arrived (None: the batch is empty).
        let mut oldest: Option<Instant> = None;
        while self.ctl.deadline().is_none() {
            let room = self.max_batch - self.batch.len();
            let flush_at = oldest.map(|t| t.checked_add(self.batch_delay).unwrap_or(t + FOREVER));
            let got = tokio::select! {
                biased;
                // The batch is completed from the queue and exported by `drain`: batch
                // boundaries then do not depend on when shutdown came (replay output is the
                // same on every run).
                _ = self.ctl.requested() => break,
                n = self.rx.recv_many(&mut self.batch, room) => n,
                _ = sleep_until(flush_at) => 0,
            };
            if got == 0 && flush_at.is_none_or(|at| Instant::now() < at) {
                // Closed and empty: every sender is gone, so the Exporter was dropped.
                break;
            }
            let now = Instant::now();
            oldest = oldest.or(Some(now));
            if self.batch.len() < self.max_batch && flush_at.is_none_or(|at| now < at) {
                // Not full yet: let spans gather for a moment instead of being woken by each
                // one (spans arrive in bursts; thousands of wake-ups a second, each taking a
                // core from the traced application for a moment, was what the loop cost).
                let pause = now + GATHER;
                let until = flush_at.map_or(pause, |at| at.min(pause));
                tokio::select! {
                    biased;
                    _ = self.ctl.requested() => break,
                    _ = tokio::time::sleep_until(until) => {}
                }
                if flush_at.is_none_or(|at| Instant::now() < at) {
                    continue;
                }
            }
            self.export_batch(&mut sink).await;
            oldest = None;
        }
        self.drain(&mut sink).await;
    }

    /// Shutdown: take no more spans, export what is queued until the deadline.
    async fn drain(&mut self, sink: &mut Sink) {
        self.rx.close();
        let deadline = self.ctl.deadline().unwrap_or_else(Instant::now);
        loop {
            while self.batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(span) => self.batch.push(span),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let mut unsent = self.batch.len();
                self.batch.clear();
                while self.rx.try_recv().is_ok() {
                    unsent += 1;
                }
                self.counters.failed(unsent, true);
                log::warn!("export shutdown deadline reached: {unsent} spans were not sent");
                break;
            }
            self.export_batch(sink).await;
        }
        self.report_queue_drops(true);
    }

    async fn export_batch(&mut self, sink: &mut Sink) {
        while let Ok(info) = self.processes.try_recv() {
            self.table.upsert(info);
        }
        self.table.touch(&self.batch);
        match sink {
            Sink::Otlp(s) => {
                s.export(&self.batch, &self.table, &self.counters, &mut self.ctl)
                    .await
            }
            Sink::Stdout(s) => s.export(&self.batch, &self.table, &self.counters).await,
        }
        // The sink accounted for every span; nothing can cancel us between that and this.
        self.batch.clear();
        self.report_queue_drops(false);
    }

    /// Warns about queue-full drops, at most every 10 s.
    fn report_queue_drops(&mut self, force: bool) {
        let total = self.counters.dropped_queue_full.load(Ordering::Relaxed);
        if total == self.queue_drops_reported {
            return;
        }
        let now = Instant::now();
        let due = self
            .queue_drops_reported_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10));
        if due || force {
            log::warn!(
                "export queue full: dropped {} spans ({total} in all)",
                total - self.queue_drops_reported
            );
            self.queue_drops_reported = total;
            self.queue_drops_reported_at = Some(now);
        }
    }
}

impl Drop for Worker {
    /// Aborted or torn down with its runtime: whatever it still held is lost; count it.
    fn drop(&mut self) {
        let lost = self.batch.len() + self.rx.len();
        if lost > 0 {
            self.counters.failed(lost, !self.batch.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Semantic conventions: one mapping for every output.

/// An attribute value, before it is written in an output's own format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttrValue<'a> {
    /// Borrowed from the span where it can be: building a span's attributes allocated a
    /// `String` for each one, a good part of the export thread's malloc/free.
    Str(Cow<'a, str>),
    Int(i64),
    StrArray(Vec<String>),
}

pub(crate) type Attrs<'a> = Vec<(&'static str, AttrValue<'a>)>;

/// Resource attributes: detected ones have static keys, configured ones do not.
pub(crate) type ResourceAttrs = Vec<(Cow<'static, str>, AttrValue<'static>)>;

fn str_attr<'a>(key: &'static str, v: impl Into<Cow<'a, str>>) -> (&'static str, AttrValue<'a>) {
    (key, AttrValue::Str(v.into()))
}

fn int_attr(key: &'static str, v: impl Into<i64>) -> (&'static str, AttrValue<'static>) {
    (key, AttrValue::Int(v.into()))
}

/// The methods HTTP semantic conventions know; anything else is reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

fn known_method(method: &str) -> bool {
    KNOWN_METHODS.contains(&method)
}

/// The HTTP side of a span (empty for other protocols, whose code paths do not ask).
pub(crate) fn http_of(span: &Span) -> &HttpExchange {
    static EMPTY: HttpExchange = HttpExchange {
        method: String::new(),
        target: String::new(),
        host: None,
        version: "",
        status: None,
        user_agent: None,
        request_body_size: None,
        response_body_size: None,
        tls: false,
    };
    span.http().unwrap_or(&EMPTY)
}

/// Span name per the semantic conventions: for HTTP the method, or `HTTP` for an unknown one.
pub(crate) fn span_name(span: &Span) -> Cow<'_, str> {
    if !matches!(span.exchange, Exchange::Http(_)) {
        return Cow::Borrowed(&span.name);
    }
    let method = http_of(span).method.as_str();
    if known_method(method) {
        Cow::Borrowed(method)
    } else if method.is_empty() && !span.name.is_empty() {
        Cow::Borrowed(&span.name)
    } else {
        Cow::Borrowed("HTTP")
    }
}

/// Query parameters whose values semantic conventions say to redact.
const SENSITIVE_QUERY_KEYS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

fn redact_query(query: &str) -> Cow<'_, str> {
    let sensitive = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        pair.contains('=') && SENSITIVE_QUERY_KEYS.contains(&key)
    };
    if !query.split('&').any(sensitive) {
        return Cow::Borrowed(query);
    }
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if sensitive(pair) => Cow::Owned(format!("{k}=REDACTED")),
            _ => Cow::Borrowed(pair),
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// `scheme://authority` prefix of an absolute-form request target.
fn absolute_prefix(target: &str) -> Option<(&str, &str, &str)> {
    if target.starts_with('/') {
        return None; // origin-form, nearly every request
    }
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

/// Splits a request target into path and query (fragment dropped; absolute-form reduced to its
/// path).
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    let t = match absolute_prefix(target) {
        Some((_, _, rest)) => rest,
        None => target,
    };
    let t = t.split('#').next().unwrap_or(t);
    let (path, query) = match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    };
    let path = if path.is_empty() && target != t {
        "/"
    } else {
        path
    };
    (path, query)
}

/// Host and optional port of a `Host` header value (`name`, `name:80`, `[::1]:80`).
pub(crate) fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let h = host.trim();
    if h.is_empty() {
        return None;
    }
    if let Some(rest) = h.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if inner.is_empty() {
            return None;
        }
        return Some((inner, after.strip_prefix(':').and_then(|p| p.parse().ok())));
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => {
            if name.is_empty() {
                None
            } else {
                Some((name, port.parse().ok()))
            }
        }
        // A bare IPv6 address: no port.
        Some(_) => Some((h, None)),
        None => Some((h, None)),
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) are reported as the IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// An address as text, in place: IPv4-mapped IPv6 shown as IPv4. Dotted quads are written digit
/// by digit: through `Display` they cost ~5 % of the export thread's time with nginx saturated
/// (2–3 addresses per span), and a `String` for each was one more allocation per address.
pub(crate) struct AddrText {
    /// IPv6 text takes at most 39 bytes (`ffff:…:ffff`; mapped IPv4 is shown as IPv4).
    buf: [u8; 48],
    len: usize,
}

impl AddrText {
    pub(crate) fn new(addr: IpAddr) -> Self {
        let mut t = AddrText {
            buf: [0; 48],
            len: 0,
        };
        match canonical(addr) {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        t.push(b'0' + o / 10 % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            v6 => {
                // Cannot overflow; an error would leave the text cut short.
                let _ = std::fmt::Write::write_fmt(&mut t, format_args!("{v6}"));
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `addr` as text, IPv4-mapped IPv6 shown as IPv4.
pub(crate) fn addr_text(addr: IpAddr) -> String {
    AddrText::new(addr).as_str().to_owned()
}

fn url_host(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// `server.address`/`server.port` as a client sees them: the `Host` header, else the peer.
pub(crate) fn client_side_server(span: &Span) -> (String, u16) {
    match http_of(span).host.as_deref().and_then(split_host) {
        Some((host, port)) => (host.to_string(), port.unwrap_or(span.peer.port)),
        None => (addr_text(span.peer.addr), span.peer.port),
    }
}

/// `url.full` of a client span: `http://{host}:{port}{target}`, credentials stripped and
/// sensitive query values redacted.
pub(crate) fn full_url(span: &Span) -> String {
    let target = http_of(span).target.as_str();
    let (base, rest) = match absolute_prefix(target) {
        Some((scheme, authority, rest)) => {
            let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
            (
                format!("{}://{authority}", scheme.to_ascii_lowercase()),
                rest,
            )
        }
        None => {
            let (host, port) = client_side_server(span);
            let rest = if target.starts_with('/') { target } else { "" };
            let scheme = if http_of(span).tls { "https" } else { "http" };
            (format!("{scheme}://{}:{port}", url_host(&host)), rest)
        }
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    match rest.split_once('?') {
        Some((path, query)) => format!("{base}{path}?{}", redact_query(query)),
        None => format!("{base}{rest}"),
    }
}

/// What the console shows as the request: the target for server spans, `url.full` for client
/// spans (query values redacted either way).
pub(crate) fn display_target(span: &Span) -> String {
    match span.kind {
        SpanKind::Client => full_url(span),
        SpanKind::Server => {
            let t = http_of(span).target.as_str();
            match t.split_once('?') {
                Some((path, query)) => format!("{path}?{}", redact_query(query)),
                None => t.to_string(),
            }
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Where a span's attributes go: a list ([`span_attributes`], for the console and the
/// reference encoder) or straight into an encoding (the OTLP writer, which so needs no list, no
/// `String` per address and no second pass).
pub(crate) trait AttrSink<'a> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>);
    fn int(&mut self, key: &'static str, value: impl Into<i64>);
    /// An address as text (IPv4-mapped IPv6 as IPv4).
    fn addr(&mut self, key: &'static str, addr: IpAddr);
}

impl<'a> AttrSink<'a> for Attrs<'a> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        self.push((key, AttrValue::Str(value.into())));
    }
    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        self.push((key, AttrValue::Int(value.into())));
    }
    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        self.str(key, addr_text(addr));
    }
}

/// The span's attributes per the OpenTelemetry semantic conventions of its protocol.
pub(crate) fn span_attributes(span: &Span) -> Attrs<'_> {
    let mut a = Vec::with_capacity(20);
    visit_attributes(span, &mut a);
    a
}

/// [`span_attributes`], each handed to `a` in order.
pub(crate) fn visit_attributes<'a>(span: &'a Span, a: &mut impl AttrSink<'a>) {
    match &span.exchange {
        Exchange::Http(http) => http_attributes(span, http, a),
        Exchange::Db(db) => db_attributes(span, db, a),
        Exchange::Rpc(rpc) => rpc_attributes(span, rpc, a),
        Exchange::Dns(dns) => dns_attributes(span, dns, a),
    }
}

/// `server.*`, `network.peer.*`, transport and thread: what every non-HTTP span carries.
fn endpoint_attributes<'a>(span: &'a Span, transport: &'static str, a: &mut impl AttrSink<'a>) {
    let server = match span.kind {
        SpanKind::Client => span.peer,
        SpanKind::Server => span.local,
    };
    a.addr(semconv::SERVER_ADDRESS, server.addr);
    a.int(semconv::SERVER_PORT, server.port);
    a.addr(semconv::NETWORK_PEER_ADDRESS, span.peer.addr);
    a.int(semconv::NETWORK_PEER_PORT, span.peer.port);
    a.str(semconv::NETWORK_TRANSPORT, transport);
    if span.tid != 0 {
        a.int(semconv::THREAD_ID, span.tid);
    }
}

/// gRPC spans (RPC semantic conventions).
fn rpc_attributes<'a>(span: &'a Span, rpc: &'a RpcExchange, a: &mut impl AttrSink<'a>) {
    a.str(semconv::RPC_SYSTEM, "grpc");
    a.str(semconv::RPC_SERVICE, rpc.service.as_str());
    a.str(semconv::RPC_METHOD, rpc.method.as_str());
    if let Some(code) = rpc.grpc_status {
        a.int(semconv::RPC_GRPC_STATUS_CODE, code);
    }
    a.str(semconv::NETWORK_PROTOCOL_NAME, "http");
    a.str(semconv::NETWORK_PROTOCOL_VERSION, "2");
    endpoint_attributes(span, "tcp", a);
    if let SpanStatus::Error(e) = &span.status {
        a.str(semconv::ERROR_TYPE, e.as_str());
    }
}

/// DNS spans: the question and, when it failed, the response code as `error.type`.
fn dns_attributes<'a>(span: &'a Span, dns: &'a DnsExchange, a: &mut impl AttrSink<'a>) {
    a.str(semconv::DNS_QUESTION_NAME, dns.name.as_str());
    endpoint_attributes(span, "udp", a);
    if let SpanStatus::Error(e) = &span.status {
        a.str(semconv::ERROR_TYPE, e.as_str());
    }
}

/// Database client/server spans (database semantic conventions).
fn db_attributes<'a>(span: &'a Span, db: &'a DbExchange, a: &mut impl AttrSink<'a>) {
    a.str(semconv::DB_SYSTEM_NAME, db.system.name());
    if let Some(op) = &db.operation {
        a.str(semconv::DB_OPERATION_NAME, op.as_str());
    }
    if let Some(coll) = &db.collection {
        a.str(semconv::DB_COLLECTION_NAME, coll.as_str());
    }
    if let Some(ns) = &db.namespace {
        a.str(semconv::DB_NAMESPACE, ns.as_str());
    }
    if let Some(q) = &db.query_text {
        a.str(semconv::DB_QUERY_TEXT, q.as_str());
    }
    if let Some((code, _)) = &db.error {
        a.str(semconv::DB_RESPONSE_STATUS_CODE, code.as_str());
        a.str(semconv::ERROR_TYPE, code.as_str());
    }
    if let Some(rows) = db.rows {
        a.int(semconv::DB_RESPONSE_RETURNED_ROWS, to_i64(rows));
    }
    let (server, peer) = match span.kind {
        SpanKind::Client => (span.peer, span.peer),
        SpanKind::Server => (span.local, span.peer),
    };
    a.addr(semconv::SERVER_ADDRESS, server.addr);
    a.int(semconv::SERVER_PORT, server.port);
    a.addr(semconv::NETWORK_PEER_ADDRESS, peer.addr);
    a.int(semconv::NETWORK_PEER_PORT, peer.port);
    a.str(semconv::NETWORK_TRANSPORT, "tcp");
    if span.tid != 0 {
        a.int(semconv::THREAD_ID, span.tid);
    }
}

/// HTTP spans (HTTP semantic conventions).
fn http_attributes<'a>(span: &'a Span, http: &'a HttpExchange, a: &mut impl AttrSink<'a>) {
    let method = http.method.as_str();
    if known_method(method) {
        a.str(semconv::HTTP_REQUEST_METHOD, method);
    } else {
        a.str(semconv::HTTP_REQUEST_METHOD, "_OTHER");
        if !method.is_empty() {
            a.str(semconv::HTTP_REQUEST_METHOD_ORIGINAL, method);
        }
    }
    if let Some(code) = http.status {
        a.int(semconv::HTTP_RESPONSE_STATUS_CODE, code);
    }
    let peer = canonical(span.peer.addr);
    match span.kind {
        SpanKind::Server => {
            let (path, query) = split_target(&http.target);
            a.str(semconv::URL_PATH, path);
            if let Some(q) = query.filter(|q| !q.is_empty()) {
                a.str(semconv::URL_QUERY, redact_query(q));
            }
            a.str(semconv::URL_SCHEME, if http.tls { "https" } else { "http" });
            let port = match http.host.as_deref().and_then(split_host) {
                Some((host, port)) => {
                    a.str(semconv::SERVER_ADDRESS, host);
                    port.unwrap_or(span.local.port)
                }
                None => {
                    a.addr(semconv::SERVER_ADDRESS, span.local.addr);
                    span.local.port
                }
            };
            a.int(semconv::SERVER_PORT, port);
            a.addr(semconv::CLIENT_ADDRESS, span.peer.addr);
            a.int(semconv::CLIENT_PORT, span.peer.port);
        }
        SpanKind::Client => {
            let full = full_url(span);
            let scheme = full
                .split_once("://")
                .map_or("http", |(s, _)| s)
                .to_string();
            a.str(semconv::URL_FULL, full);
            a.str(semconv::URL_SCHEME, scheme);
            let (address, port) = client_side_server(span);
            a.str(semconv::SERVER_ADDRESS, address);
            a.int(semconv::SERVER_PORT, port);
        }
    }
    a.addr(semconv::NETWORK_PEER_ADDRESS, peer);
    a.int(semconv::NETWORK_PEER_PORT, span.peer.port);
    let version = http.version.trim();
    let version = version.strip_prefix("HTTP/").unwrap_or(version);
    if !version.is_empty() {
        a.str(semconv::NETWORK_PROTOCOL_VERSION, version);
    }
    a.str(semconv::NETWORK_TRANSPORT, "tcp");
    let network_type = if peer.is_ipv4() { "ipv4" } else { "ipv6" };
    a.str(semconv::NETWORK_TYPE, network_type);
    if let Some(ua) = &http.user_agent {
        a.str(semconv::USER_AGENT_ORIGINAL, ua.as_str());
    }
    if let Some(n) = http.request_body_size {
        a.int(semconv::HTTP_REQUEST_BODY_SIZE, to_i64(n));
    }
    if let Some(n) = http.response_body_size {
        a.int(semconv::HTTP_RESPONSE_BODY_SIZE, to_i64(n));
    }
    if span.tid != 0 {
        a.int(semconv::THREAD_ID, span.tid);
    }
    if let SpanStatus::Error(msg) = &span.status {
        let error_type = match http.status {
            Some(code) => code.to_string(),
            None if !msg.is_empty() => msg.clone(),
            None => "_OTHER".to_string(),
        };
        a.str(semconv::ERROR_TYPE, error_type);
    }
}

/// `service.name` of a traced process.
pub(crate) fn service_name(pid: u32, info: Option<&ProcessInfo>) -> String {
    match info {
        Some(i) if !i.service_name.is_empty() => i.service_name.clone(),
        Some(i) if !i.executable_name.is_empty() => {
            format!("unknown_service:{}", i.executable_name)
        }
        _ => format!("unknown_service:pid{pid}"),
    }
}

/// The Resource of a traced process (`info` None: only what the pid tells).
pub(crate) fn resource_attributes(
    pid: u32,
    info: Option<&ProcessInfo>,
    host_fallback: Option<&str>,
) -> Attrs<'static> {
    let mut a: Attrs<'static> = Vec::with_capacity(11);
    a.push(str_attr(res::SERVICE_NAME, service_name(pid, info)));
    a.push(int_attr(res::PROCESS_PID, pid));
    let mut host = host_fallback;
    if let Some(i) = info {
        if let Some(ppid) = i.parent_pid {
            a.push(int_attr(res::PROCESS_PARENT_PID, ppid));
        }
        if !i.executable_name.is_empty() {
            a.push(str_attr(
                res::PROCESS_EXECUTABLE_NAME,
                i.executable_name.clone(),
            ));
        }
        if !i.executable_path.is_empty() {
            a.push(str_attr(
                res::PROCESS_EXECUTABLE_PATH,
                i.executable_path.clone(),
            ));
        }
        if !i.command_args.is_empty() {
            a.push((
                res::PROCESS_COMMAND_ARGS,
                AttrValue::StrArray(i.command_args.clone()),
            ));
        }
        if !i.host_name.is_empty() {
            host = Some(i.host_name.as_str());
        }
    }
    if let Some(h) = host {
        a.push(str_attr(res::HOST_NAME, h.to_string()));
    }
    a.push(str_attr(res::TELEMETRY_SDK_NAME, SCOPE_NAME));
    a.push(str_attr(res::TELEMETRY_SDK_LANGUAGE, "rust"));
    a.push(str_attr(res::TELEMETRY_SDK_VERSION, SCOPE_VERSION));
    a
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Spans and processes for the export tests.
    use std::net::{IpAddr, Ipv4Addr};

    use crate::model::*;

    pub fn server_span() -> Span {
        Span {
            trace_id: TraceId([
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ]),
            span_id: SpanId([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]),
            parent_span_id: Some(SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])),
            parent_is_remote: true,
            remote_sampled: Some(true),
            kind: SpanKind::Server,
            name: "GET".into(),
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_012_300_000,
            pid: 1234,
            tid: 1240,
            local: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                port: 8080,
            },
            peer: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                port: 51234,
            },
            exchange: Exchange::Http(HttpExchange {
                method: "GET".into(),
                target: "/api/orders?limit=10".into(),
                host: Some("shop.example:8080".into()),
                version: "1.1",
                status: Some(200),
                user_agent: Some("curl/8.5.0".into()),
                request_body_size: None,
                response_body_size: Some(512),
                tls: false,
            }),
            status: SpanStatus::Unset,
        }
    }

    pub fn client_span() -> Span {
        Span {
            span_id: SpanId([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]),
            parent_span_id: Some(server_span().span_id),
            parent_is_remote: false,
            remote_sampled: None,
            kind: SpanKind::Client,
            name: "POST".into(),
            start_unix_ns: 1_700_000_000_001_000_000,
            end_unix_ns: 1_700_000_000_010_000_000,
            local: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                port: 40000,
            },
            peer: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
                port: 5000,
            },
            exchange: Exchange::Http(HttpExchange {
                method: "POST".into(),
                target: "/charge".into(),
                host: Some("payments".into()),
                version: "1.1",
                status: Some(503),
                user_agent: Some("python-requests/2.31".into()),
                request_body_size: Some(42),
                response_body_size: Some(0),
                tls: false,
            }),
            status: SpanStatus::Error("503 Service Unavailable".into()),
            ..server_span()
        }
    }

    pub fn process(pid: u32, name: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            parent_pid: Some(1),
            service_name: format!("{name}-svc"),
            executable_name: name.into(),
            executable_path: format!("/usr/bin/{name}"),
            command_args: vec![name.into(), "app.py".into()],
            host_name: "node-1".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::test_support::*;
    use super::*;

    fn get<'a, 'b>(attrs: &'a Attrs<'b>, key: &str) -> Option<&'a AttrValue<'b>> {
        attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    fn s(v: &str) -> AttrValue<'static> {
        AttrValue::Str(v.to_string().into())
    }

    #[test]
    fn addresses_as_text_match_display() {
        for v4 in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(10, 0, 100, 9),
            Ipv4Addr::new(1, 20, 3, 199),
            Ipv4Addr::new(127, 0, 0, 1),
        ] {
            assert_eq!(addr_text(IpAddr::V4(v4)), v4.to_string());
            assert_eq!(addr_text(IpAddr::V6(v4.to_ipv6_mapped())), v4.to_string());
        }
        assert_eq!(addr_text(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::1");
        assert_eq!(
            addr_text(
                "2001:db8::1"
                    .parse()
                    .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            ),
            "2001:db8::1"
        );
        // The longest texts fit the in-place buffer whole.
        for v6 in [
            Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xfffe,
            ),
            Ipv6Addr::new(0x1, 0, 0, 0, 0, 0xffff, 0xffff, 0xffff),
            Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0xffff, 0xffff),
        ] {
            assert_eq!(addr_text(IpAddr::V6(v6)), v6.to_string());
        }
    }

    #[test]
    fn host_header_parsing() {
        assert_eq!(split_host("example.com"), Some(("example.com", None)));
        assert_eq!(
            split_host(" example.com:8080 "),
            Some(("example.com", Some(8080)))
        );
        assert_eq!(split_host("[::1]:80"), Some(("::1", Some(80))));
        assert_eq!(split_host("[::1]"), Some(("::1", None)));
        assert_eq!(split_host("::1"), Some(("::1", None)));
        assert_eq!(split_host("host:notaport"), Some(("host", None)));
        assert_eq!(split_host(""), None);
        assert_eq!(split_host("[]:80"), None);
        assert_eq!(split_host("[::1"), None);
        assert_eq!(split_host(":80"), None);
    }

    #[test]
    fn target_splitting() {
        assert_eq!(split_target("/a/b?x=1&y"), ("/a/b", Some("x=1&y")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(split_target("/a#frag"), ("/a", None));
        assert_eq!(split_target("http://h:1/p?q"), ("/p", Some("q")));
        assert_eq!(split_target("http://h:1"), ("/", None));
        assert_eq!(split_target("*"), ("*", None));
        assert_eq!(split_target(""), ("", None));
    }

    #[test]
    fn sensitive_query_values_are_redacted() {
        assert_eq!(redact_query("a=1&sig=abc&b"), "a=1&sig=REDACTED&b");
        assert_eq!(redact_query("a=1"), "a=1");
        assert_eq!(redact_query("sig"), "sig");
    }

    #[test]
    fn server_span_attributes() {
        let span = server_span();
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD), Some(&s("GET")));
        assert_eq!(
            get(&a, semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(&AttrValue::Int(200))
        );
        assert_eq!(get(&a, semconv::URL_PATH), Some(&s("/api/orders")));
        assert_eq!(get(&a, semconv::URL_QUERY), Some(&s("limit=10")));
        assert_eq!(get(&a, semconv::URL_SCHEME), Some(&s("http")));
        assert_eq!(get(&a, semconv::URL_FULL), None);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("shop.example")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(8080)));
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), Some(&s("10.0.0.2")));
        assert_eq!(get(&a, semconv::CLIENT_PORT), Some(&AttrValue::Int(51234)));
        assert_eq!(get(&a, semconv::NETWORK_PEER_ADDRESS), Some(&s("10.0.0.2")));
        assert_eq!(
            get(&a, semconv::NETWORK_PEER_PORT),
            Some(&AttrValue::Int(51234))
        );
        assert_eq!(get(&a, semconv::NETWORK_PROTOCOL_VERSION), Some(&s("1.1")));
        assert_eq!(get(&a, semconv::NETWORK_TRANSPORT), Some(&s("tcp")));
        assert_eq!(get(&a, semconv::NETWORK_TYPE), Some(&s("ipv4")));
        assert_eq!(
            get(&a, semconv::USER_AGENT_ORIGINAL),
            Some(&s("curl/8.5.0"))
        );
        assert_eq!(get(&a, semconv::HTTP_REQUEST_BODY_SIZE), None);
        assert_eq!(
            get(&a, semconv::HTTP_RESPONSE_BODY_SIZE),
            Some(&AttrValue::Int(512))
        );
        assert_eq!(get(&a, semconv::ERROR_TYPE), None);
        // No key twice.
        let mut keys: Vec<_> = a.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), a.len());
    }

    #[test]
    fn server_address_falls_back_to_local_socket() {
        let mut span = server_span();
        span.http_mut().unwrap().host = None;
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("10.0.0.1")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(8080)));
        span.http_mut().unwrap().host = Some("shop.example".into());
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("shop.example")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(8080)));
    }

    #[test]
    fn client_span_attributes() {
        let span = client_span();
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD), Some(&s("POST")));
        assert_eq!(
            get(&a, semconv::URL_FULL),
            Some(&s("http://payments:5000/charge"))
        );
        assert_eq!(get(&a, semconv::URL_PATH), None);
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), None);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("payments")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(5000)));
        assert_eq!(get(&a, semconv::NETWORK_PEER_ADDRESS), Some(&s("10.0.0.3")));
        assert_eq!(
            get(&a, semconv::HTTP_REQUEST_BODY_SIZE),
            Some(&AttrValue::Int(42))
        );
        assert_eq!(get(&a, semconv::ERROR_TYPE), Some(&s("503")));
    }

    #[test]
    fn client_url_from_peer_ipv6_and_absolute_targets() {
        let mut span = client_span();
        span.http_mut().unwrap().host = None;
        span.peer.addr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        span.http_mut().unwrap().target = "/x?sig=secret".into();
        let a = span_attributes(&span);
        assert_eq!(
            get(&a, semconv::URL_FULL),
            Some(&s("http://[::1]:5000/x?sig=REDACTED"))
        );
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("::1")));
        assert_eq!(get(&a, semconv::NETWORK_TYPE), Some(&s("ipv6")));
        span.http_mut().unwrap().target = "http://user:pw@proxy.example:3128/p?q=1".into();
        assert_eq!(full_url(&span), "http://proxy.example:3128/p?q=1");
        // v4-mapped peers are reported as IPv4.
        span.peer.addr = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let a = span_attributes(&span);
        assert_eq!(
            get(&a, semconv::NETWORK_PEER_ADDRESS),
            Some(&s("127.0.0.1"))
        );
        assert_eq!(get(&a, semconv::NETWORK_TYPE), Some(&s("ipv4")));
    }
    #[test]
    fn unknown_method_is_other() {
        let mut span = server_span();
        span.http_mut().unwrap().method = "PURGE".into();
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD), Some(&s("_OTHER")));
        assert_eq!(
            get(&a, semconv::HTTP_REQUEST_METHOD_ORIGINAL),
            Some(&s("PURGE"))
        );
        assert_eq!(span_name(&span), "HTTP");
        // Methods are case-sensitive.
        span.http_mut().unwrap().method = "get".into();
        assert_eq!(span_name(&span), "HTTP");
        span.http_mut().unwrap().method = "DELETE".into();
        assert_eq!(span_name(&span), "DELETE");
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD_ORIGINAL), None);
    }

    #[test]
    fn error_type_without_status_uses_message() {
        let mut span = client_span();
        span.http_mut().unwrap().status = None;
        span.status = SpanStatus::Error("connection reset".into());
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::ERROR_TYPE), Some(&s("connection reset")));
        assert_eq!(get(&a, semconv::HTTP_RESPONSE_STATUS_CODE), None);
    }

    #[test]
    fn resource_known_and_unknown() {
        let info = process(1234, "python3");
        let a = resource_attributes(1234, Some(&info), Some("fallback"));
        assert_eq!(get(&a, res::SERVICE_NAME), Some(&s("python3-svc")));
        assert_eq!(get(&a, res::PROCESS_PID), Some(&AttrValue::Int(1234)));
        assert_eq!(get(&a, res::PROCESS_PARENT_PID), Some(&AttrValue::Int(1)));
        assert_eq!(get(&a, res::PROCESS_EXECUTABLE_NAME), Some(&s("python3")));
        assert_eq!(
            get(&a, res::PROCESS_EXECUTABLE_PATH),
            Some(&s("/usr/bin/python3"))
        );
        assert_eq!(
            get(&a, res::PROCESS_COMMAND_ARGS),
            Some(&AttrValue::StrArray(vec![
                "python3".into(),
                "app.py".into()
            ]))
        );
        assert_eq!(get(&a, res::HOST_NAME), Some(&s("node-1")));
        assert_eq!(get(&a, res::TELEMETRY_SDK_NAME), Some(&s("ztrace")));
        assert_eq!(get(&a, res::TELEMETRY_SDK_LANGUAGE), Some(&s("rust")));
        assert_eq!(get(&a, res::TELEMETRY_SDK_VERSION), Some(&s(SCOPE_VERSION)));

        let a = resource_attributes(99, None, Some("fallback"));
        assert_eq!(
            get(&a, res::SERVICE_NAME),
            Some(&s("unknown_service:pid99"))
        );
        assert_eq!(get(&a, res::PROCESS_PID), Some(&AttrValue::Int(99)));
        assert_eq!(get(&a, res::PROCESS_PARENT_PID), None);
        assert_eq!(get(&a, res::HOST_NAME), Some(&s("fallback")));
    }

    #[test]
    fn process_table_evicts_least_recently_used() {
        let mut t = ProcessTable::new(None);
        t.upsert(Arc::new(process(1, "keep")));
        for pid in 2..=(MAX_PROCESSES as u32) {
            t.upsert(Arc::new(process(pid, "p")));
        }
        let mut span = server_span();
        span.pid = 1;
        t.touch(&[span]);
        t.upsert(Arc::new(process(u32::MAX, "new")));
        assert!(t.entries.len() <= MAX_PROCESSES);
        assert!(t.get(1).is_some());
        assert!(t.get(u32::MAX).is_some());
        assert!(t.get(2).is_none());
    }
}

/// Encodes spans as the OTLP request bytes the gRPC exporter would send, without sending them:
/// the last stage of the replay throughput benchmark.
pub struct OtlpEncoder {
    table: ProcessTable,
    buf: Vec<u8>,
}

impl OtlpEncoder {
    pub fn new() -> Self {
        Self {
            table: ProcessTable::new(None),
            buf: Vec::new(),
        }
    }

    pub fn process(&mut self, info: Arc<ProcessInfo>) {
        self.table.upsert(info);
    }

    /// Encodes one batch exactly as the gRPC exporter does; returns the encoded size in bytes.
    pub fn encode(&mut self, spans: &[Span]) -> usize {
        wire::encode_request(spans, &self.table, &mut self.buf);
        self.buf.len()
    }
}

impl Default for OtlpEncoder {
    fn default() -> Self {
        Self::new()
    }
}
