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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::control::{Control, FOREVER};
use super::settings::ExportConfig;
use super::spare::SpareChunks;
use super::stats::{Counters, ExportStats};
use super::worker::Worker;
use super::{console, otlp};
use crate::config::{Batching, OtlpTarget, Sampler};
use crate::model::{ProcessInfo, Span};
use crate::semconv::attributes::AttrValue;
use crate::semconv::resource::{ProcessTable, local_host_name};

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

    /// A request counted as queued did not get in: it is dropped, and counted so.
    fn not_queued(&self, items: usize) {
        self.counters.queued.fetch_sub(items, Ordering::Relaxed);
        self.counters
            .outstanding
            .fetch_sub(items, Ordering::Relaxed);
        self.counters
            .dropped_queue_full
            .fetch_add(items as u64, Ordering::Relaxed);
    }

    /// The channel a request of `items` goes to; None when nothing is to be queued: no output
    /// for this signal (the items are counted as not exported), or an empty request.
    fn channel(&self, items: usize) -> Option<&mpsc::Sender<otlp::Queued<R>>> {
        let Some(tx) = &self.tx else {
            self.counters
                .not_exported
                .fetch_add(items as u64, Ordering::Relaxed);
            return None;
        };
        (items > 0).then_some(tx)
    }

    /// Never blocks: beyond `max_items` queued items the request is dropped and counted.
    fn submit(&self, request: R) {
        let items = request.items();
        let Some(tx) = self.channel(items) else {
            return;
        };
        let queued = self.counters.queued.fetch_add(items, Ordering::Relaxed);
        self.counters
            .outstanding
            .fetch_add(items, Ordering::Relaxed);
        // One request larger than the whole bound still goes through an empty queue.
        let fits = queued == 0 || queued + items <= self.max_items;
        if !fits || tx.try_send(otlp::Queued { request, items }).is_err() {
            self.not_queued(items);
        }
    }

    /// Like [`RequestQueue::submit`], but waits for room in the queue instead of dropping the
    /// request: for replay, whose output must not depend on how fast the collector takes it.
    /// Dropped (and counted) only when the exporter has already shut down.
    async fn submit_waiting(&self, request: R) {
        let items = request.items();
        let Some(tx) = self.channel(items) else {
            return;
        };
        // The bound counts items, the channel requests: wait until the worker has taken enough.
        loop {
            let queued = self.counters.queued.load(Ordering::Relaxed);
            if queued == 0 || queued + items <= self.max_items || tx.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.counters.queued.fetch_add(items, Ordering::Relaxed);
        self.counters
            .outstanding
            .fetch_add(items, Ordering::Relaxed);
        if tx.send(otlp::Queued { request, items }).await.is_err() {
            self.not_queued(items);
        }
    }
}

/// The cheap, cloneable side of an [`Exporter`] for code that only submits (e.g. one per
/// capture thread). It works from any thread, inside a tokio runtime or not.
#[derive(Clone, Debug)]
pub struct ExportHandle {
    /// Spans travel in chunks (all a poll released, one per message): a channel operation per
    /// span, with its atomics and the copy into the channel's slot, was a tenth of the
    /// daemon's CPU at 80k spans/s. The queue's bound counts spans (`queued`).
    spans: mpsc::Sender<Vec<Span>>,
    /// Chunks the worker emptied, for the next ones.
    spare: Arc<SpareChunks>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
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
        self.submit_all(&mut vec![span]);
    }

    /// Queues every span of `spans` (left empty) as one chunk, as [`ExportHandle::submit`]
    /// does each: what the sampler rejects is counted and left out, what finds no room in the
    /// queue is dropped and counted.
    pub fn submit_all(&self, spans: &mut Vec<Span>) {
        spans.retain_mut(|s| self.sampled(s));
        if spans.is_empty() {
            return;
        }
        let room = self
            .max_queue
            .saturating_sub(self.queued.load(Ordering::Relaxed));
        if spans.len() > room {
            self.queue_drops(spans.len() - room);
            spans.truncate(room);
        }
        if spans.is_empty() {
            return;
        }
        let n = spans.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        // The chunk leaves as it is (no copy of its spans); the caller gets an emptied one back
        // (or a new one of the same size) for its next.
        let chunk = std::mem::replace(spans, self.spare.take(n));
        if let Err(e) = self.spans.try_send(chunk) {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.queue_drops(n);
            drop(e);
        }
    }

    /// Queues a finished span, waiting for room in the queue instead of dropping it: for replay,
    /// which produces spans faster than any output takes them and must lose none. Counted as
    /// dropped only when the exporter has already shut down.
    pub async fn submit_waiting(&self, mut span: Span) {
        if !self.sampled(&mut span) {
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.spans.send(vec![span]).await.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.queue_drops(1);
        }
    }

    /// The sampler's decision; a span it rejects is counted in `spans_sampled_out`, one it keeps
    /// gets the sampler's threshold (`th`) where the sampler has one.
    fn sampled(&self, span: &mut Span) -> bool {
        let keep = crate::processors::sampler::sample(&self.sampler, span);
        if !keep {
            self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
        }
        keep
    }

    fn queue_drops(&self, n: usize) {
        self.counters
            .dropped_queue_full
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Queues a metrics request for export. Never blocks; counted in data points in
    /// `ExportStats::metrics` (dropped when the queue is full; discarded, as `not_exported`,
    /// when metrics have no OTLP target). The configured resource attributes are added to
    /// every Resource in it.
    pub fn export_metrics(&self, req: ExportMetricsServiceRequest) {
        self.metrics.submit(req);
    }

    /// Queues a metrics request as [`ExportHandle::export_metrics`] does, waiting for room in
    /// the queue instead of dropping it (replay).
    pub async fn export_metrics_waiting(&self, req: ExportMetricsServiceRequest) {
        self.metrics.submit_waiting(req).await;
    }

    /// Queues a logs request for export: like [`ExportHandle::export_metrics`], counted in log
    /// records in `ExportStats::logs`; queued requests are merged into batches.
    pub fn export_logs(&self, req: ExportLogsServiceRequest) {
        self.logs.submit(req);
    }

    /// Queues a logs request as [`ExportHandle::export_logs`] does, waiting for room in the
    /// queue instead of dropping it (replay).
    pub async fn export_logs_waiting(&self, req: ExportLogsServiceRequest) {
        self.logs.submit_waiting(req).await;
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
            spans: self.queued.load(Ordering::Relaxed) as u64,
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
        let queued = Arc::new(AtomicUsize::new(0));
        let spare = Arc::new(SpareChunks::default());
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
            spare: Arc::clone(&spare),
            queued: Arc::clone(&queued),
            max_queue: cfg.max_queue.max(1),
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
            spare,
            queued,
            chunks: Vec::new(),
            carry: std::collections::VecDeque::new(),
            carried: 0,
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
                budget: cfg.metric_export_timeout,
            }),
            logs: cfg.logs.zip(logs_rx).map(|(target, rx)| Pending {
                target,
                rx,
                counters: Arc::clone(&handle.logs.counters),
                ctl: control(),
                batching: cfg.log_batching,
                merge: true,
                resource,
                budget: None,
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

    /// Non-blocking; see [`ExportHandle::submit_all`].
    pub fn submit_all(&self, spans: &mut Vec<Span>) {
        self.handle.submit_all(spans);
    }

    /// Replaces the head sampler (a remote configuration) for the spans submitted from now on
    /// through this exporter. Handles taken earlier keep the sampler they were made with.
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.handle.sampler = sampler;
    }

    /// Waits for queue room; see [`ExportHandle::submit_waiting`].
    pub async fn submit_waiting(&self, span: Span) {
        self.handle.submit_waiting(span).await;
    }

    /// Non-blocking; see [`ExportHandle::export_metrics`].
    pub fn export_metrics(&self, req: ExportMetricsServiceRequest) {
        self.handle.export_metrics(req);
    }

    /// Waits for queue room; see [`ExportHandle::export_metrics_waiting`].
    pub async fn export_metrics_waiting(&self, req: ExportMetricsServiceRequest) {
        self.handle.export_metrics_waiting(req).await;
    }

    /// Non-blocking; see [`ExportHandle::export_logs`].
    pub fn export_logs(&self, req: ExportLogsServiceRequest) {
        self.handle.export_logs(req);
    }

    /// Waits for queue room; see [`ExportHandle::export_logs_waiting`].
    pub async fn export_logs_waiting(&self, req: ExportLogsServiceRequest) {
        self.handle.export_logs_waiting(req).await;
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
    /// One request's limit, retries included (else the client's default).
    budget: Option<Duration>,
}

impl<R: otlp::OtlpRequest> Pending<R> {
    async fn run(self) {
        let client = otlp::OtlpClient::new(&self.target);
        otlp::RequestWorker {
            rx: self.rx,
            client: match self.budget {
                Some(budget) => client.with_budget(budget),
                None => client,
            },
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
