//! OTLP output for all three signals: the retry loop shared by every signal and transport
//! ([`OtlpClient`]), the span sink that encodes batches with the direct wire encoder
//! (`wire.rs`, one `ResourceSpans` per traced process, one `ScopeSpans` "ztrace"), and the worker
//! that queues, merges and ships metrics and logs requests built elsewhere.
//!
//! Failure policy, per the OTLP specification: retryable failures (gRPC UNAVAILABLE, CANCELLED,
//! DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS, RESOURCE_EXHAUSTED with `RetryInfo`;
//! HTTP 429, 502, 503, 504; connection errors and timeouts) are retried with exponential back-off
//! and jitter — or after exactly the delay the collector asked for (`RetryInfo`, `Retry-After`) —
//! for at most `3 × timeout` (metrics: `OTEL_METRIC_EXPORT_TIMEOUT`) or until the shutdown
//! deadline, then dropped; other failures drop the batch at once. Either way it is counted, and a
//! warning is logged once per failure streak (later drops in the streak go to debug) plus a note
//! when export recovers. A partial success (rejected items and a message) is logged and the
//! rejected items are counted as failed.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::control::Control;
use super::stats::Counters;
use super::transport::{Failure, Transport};
use crate::config::{Batching, OtlpTarget, Signal};
use crate::model::Span;
use crate::semconv::resource::ProcessTable;

/// First back-off; doubles per retry up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a batch is retried, in units of the export timeout.
const RETRY_BUDGET_FACTOR: u32 = 3;

/// A back-off of `base`, jittered to a uniform pick in `[base/2, base]`.
fn jittered(base: Duration) -> Duration {
    let half = base / 2;
    let extra_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::random_range(0..=extra_ns))
}

/// Batches dropped in the current failure streak.
struct Streak {
    batches: u64,
    items: u64,
}

/// What the items of a signal are called in logs.
fn items_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "spans",
        Signal::Metrics => "data points",
        Signal::Logs => "log records",
    }
}

/// One signal's exporter: transport plus retry policy plus accounting.
pub(crate) struct OtlpClient {
    signal: Signal,
    shown: String,
    transport: Result<Transport, String>,
    timeout: Duration,
    /// How long one request may be retried, counted from its first attempt.
    budget: Duration,
    streak: Option<Streak>,
}

impl OtlpClient {
    /// Must be called inside the tokio runtime that will drive it; connects lazily.
    pub(crate) fn new(target: &OtlpTarget) -> Self {
        let transport = Transport::new(target);
        if let Err(e) = &transport {
            log::error!(
                "cannot set up {}: {e}; {} will be dropped",
                target.describe(),
                items_name(target.signal)
            );
        }
        let timeout = target.timeout.max(Duration::from_millis(1));
        OtlpClient {
            signal: target.signal,
            shown: target.describe(),
            transport,
            timeout,
            budget: timeout.saturating_mul(RETRY_BUDGET_FACTOR),
            streak: None,
        }
    }

    /// The same client with `budget` as the limit of one request, retries included (each
    /// attempt stays bounded by the timeout too).
    pub(crate) fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget.max(Duration::from_millis(1));
        self
    }

    /// Sends one encoded request of `n` items, retrying as the policy says; accounts for every
    /// item in `counters`. `rejected` reads a partial success out of the response.
    pub(crate) async fn export<R: prost::Message + Default>(
        &mut self,
        body: Bytes,
        n: usize,
        counters: &Counters,
        ctl: &mut Control,
        rejected: impl Fn(&R) -> Option<(i64, String)>,
    ) {
        if n == 0 {
            return;
        }
        let started = Instant::now();
        let budget_end = started
            .checked_add(self.budget)
            .unwrap_or(started + Duration::from_secs(3600));
        // The batch's own budget, cut short by a shutdown deadline.
        let end = |ctl: &Control| ctl.deadline().map_or(budget_end, |d| d.min(budget_end));
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failure = match self.attempt(body.clone(), &end, ctl).await {
                Ok(response) => {
                    // An undecodable success body still means the collector took the data.
                    let partial = R::decode(response.as_ref()).ok().and_then(|r| rejected(&r));
                    self.succeeded(n, partial, counters);
                    return;
                }
                Err(f) => f,
            };
            if !failure.retryable() {
                self.give_up(n, &failure, attempts, counters);
                return;
            }
            // The collector's own delay is honoured as given; otherwise back off with jitter.
            let delay = failure.retry_after().unwrap_or_else(|| jittered(backoff));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // A delay no clock can hold (a broken or hostile collector) is beyond any budget.
            let Some(wake) = Instant::now().checked_add(delay) else {
                self.give_up(n, &failure, attempts, counters);
                return;
            };
            loop {
                if wake >= end(ctl) {
                    self.give_up(n, &failure, attempts, counters);
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    // A shutdown request may move the end closer: re-check.
                    _ = ctl.requested(), if ctl.deadline().is_none() => {}
                }
            }
            log::debug!("retrying {} after: {failure}", self.shown);
            counters.retried();
        }
    }

    /// One export call, bounded by the timeout and by the batch's end.
    async fn attempt(
        &mut self,
        body: Bytes,
        end: &impl Fn(&Control) -> Instant,
        ctl: &mut Control,
    ) -> Result<Bytes, Failure> {
        let started = Instant::now();
        let timeout = self.timeout;
        let transport = match &mut self.transport {
            Ok(t) => t,
            Err(e) => return Err(Failure::Setup(e.clone())),
        };
        let call = transport.send(body);
        tokio::pin!(call);
        loop {
            let stop = (started + timeout).min(end(ctl));
            tokio::select! {
                result = &mut call => return result,
                _ = tokio::time::sleep_until(stop) => {
                    return Err(Failure::TimedOut(stop.saturating_duration_since(started)));
                }
                _ = ctl.requested(), if ctl.deadline().is_none() => {}
            }
        }
    }

    fn succeeded(&mut self, n: usize, partial: Option<(i64, String)>, counters: &Counters) {
        let mut rejected = 0usize;
        if let Some((count, message)) = partial {
            rejected = usize::try_from(count.max(0)).unwrap_or(usize::MAX).min(n);
            if rejected > 0 || !message.is_empty() {
                log::warn!(
                    "collector at {} rejected {count} of {n} {}: {}",
                    self.shown,
                    items_name(self.signal),
                    if message.is_empty() {
                        "(no message)"
                    } else {
                        &message
                    }
                );
            }
        }
        counters.exported(n - rejected);
        if rejected > 0 {
            counters.failed(rejected, false);
        }
        if let Some(streak) = self.streak.take() {
            log::info!(
                "{} recovered; {} {} in {} batches were dropped meanwhile",
                self.shown,
                streak.items,
                items_name(self.signal),
                streak.batches
            );
        }
    }

    fn give_up(&mut self, n: usize, failure: &Failure, attempts: u32, counters: &Counters) {
        counters.failed(n, true);
        let what = items_name(self.signal);
        match &mut self.streak {
            None => {
                log::warn!(
                    "{} failed ({failure}); dropped a batch of {n} {what} after {attempts} attempt(s). \
                     Further failures are logged at debug level until export recovers",
                    self.shown
                );
                self.streak = Some(Streak {
                    batches: 1,
                    items: n as u64,
                });
            }
            Some(streak) => {
                streak.batches += 1;
                streak.items += n as u64;
                log::debug!(
                    "{} failed ({failure}); dropped a batch of {n} {what} after {attempts} attempt(s)",
                    self.shown
                );
            }
        }
    }
}

/// The span sink: direct wire encoding, then the shared client.
pub(crate) struct OtlpSink {
    client: OtlpClient,
    /// Encoding buffers whose requests are done (see [`Body`]).
    spare: BodyPool,
    /// What earlier batches left (see `wire::WireState`).
    endpoints: super::wire::WireState,
}

/// Request bodies' buffers, back from the HTTP/gRPC client once a request is done with them.
type BodyPool = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Buffers kept for reuse: one per request in flight and one being encoded is enough (the
/// worker sends one batch at a time); more would only hold memory.
const SPARE_BODIES: usize = 2;

/// A request body encoded in place, handed to the client without a copy (a batch is ~150 KiB),
/// its buffer going back to the pool when the client drops the last reference (retries share
/// it).
struct Body {
    buf: Vec<u8>,
    home: BodyPool,
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut pool = self.home.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < SPARE_BODIES {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

impl OtlpSink {
    pub(crate) fn new(target: &OtlpTarget) -> Self {
        OtlpSink {
            client: OtlpClient::new(target),
            spare: BodyPool::default(),
            endpoints: Default::default(),
        }
    }

    /// Sends one batch; accounts for every span of it in `counters`.
    pub(crate) async fn export(
        &mut self,
        spans: &[Span],
        table: &ProcessTable,
        counters: &Counters,
        ctl: &mut Control,
    ) {
        if spans.is_empty() {
            return;
        }
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_default();
        super::wire::encode_request_cached(spans, table, &mut self.endpoints, &mut buf);
        let body = Bytes::from_owner(Body {
            buf,
            home: self.spare.clone(),
        });
        self.client
            .export(
                body,
                spans.len(),
                counters,
                ctl,
                |r: &ExportTraceServiceResponse| {
                    r.partial_success
                        .as_ref()
                        .map(|p| (p.rejected_spans, p.error_message.clone()))
                },
            )
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and logs: requests built by their producers, queued, merged and shipped here.

/// An OTLP export request of a signal other than traces.
pub(crate) trait OtlpRequest: prost::Message + Default + Send + 'static {
    type Response: prost::Message + Default;
    /// Data points or log records in the request: the unit of counting and batching.
    fn items(&self) -> usize;
    /// Appends `other`'s resources.
    fn append(&mut self, other: Self);
    /// The Resources of the request, to add the configured resource attributes to.
    fn resources(&mut self) -> Vec<&mut Resource>;
    fn rejected(response: &Self::Response) -> Option<(i64, String)>;
}

impl OtlpRequest for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    fn items(&self) -> usize {
        self.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum()
    }
    fn append(&mut self, other: Self) {
        self.resource_metrics.extend(other.resource_metrics);
    }
    fn resources(&mut self) -> Vec<&mut Resource> {
        self.resource_metrics
            .iter_mut()
            .map(|rm| rm.resource.get_or_insert_with(Resource::default))
            .collect()
    }
    fn rejected(r: &Self::Response) -> Option<(i64, String)> {
        r.partial_success
            .as_ref()
            .map(|p| (p.rejected_data_points, p.error_message.clone()))
    }
}

impl OtlpRequest for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    fn items(&self) -> usize {
        self.resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum()
    }
    fn append(&mut self, other: Self) {
        self.resource_logs.extend(other.resource_logs);
    }
    fn resources(&mut self) -> Vec<&mut Resource> {
        self.resource_logs
            .iter_mut()
            .map(|rl| rl.resource.get_or_insert_with(Resource::default))
            .collect()
    }
    fn rejected(r: &Self::Response) -> Option<(i64, String)> {
        r.partial_success
            .as_ref()
            .map(|p| (p.rejected_log_records, p.error_message.clone()))
    }
}

/// Sets `extra` on a Resource: configured attributes override detected ones of the same key.
pub(crate) fn apply_resource_attributes(resource: &mut Resource, extra: &[KeyValue]) {
    for kv in extra {
        match resource.attributes.iter_mut().find(|a| a.key == kv.key) {
            Some(a) => a.value = kv.value.clone(),
            None => resource.attributes.push(kv.clone()),
        }
    }
}

/// A queued request and its item count.
pub(crate) struct Queued<R> {
    pub(crate) request: R,
    pub(crate) items: usize,
}

/// Drains one signal's request queue: merges requests up to the batch size (when merging is
/// on), adds the configured resource attributes and exports; on shutdown, flushes until the
/// deadline.
pub(crate) struct RequestWorker<R: OtlpRequest> {
    pub(crate) rx: mpsc::Receiver<Queued<R>>,
    pub(crate) client: OtlpClient,
    pub(crate) counters: std::sync::Arc<Counters>,
    pub(crate) ctl: Control,
    pub(crate) batching: Batching,
    /// Merge queued requests into one (logs) or send each as it is (metrics).
    pub(crate) merge: bool,
    pub(crate) resource: Vec<KeyValue>,
    /// Taken off the queue and not yet accounted for.
    pub(crate) held: Vec<Queued<R>>,
}

impl<R: OtlpRequest> RequestWorker<R> {
    pub(crate) async fn run(mut self) {
        while self.ctl.deadline().is_none() {
            let got = tokio::select! {
                biased;
                _ = self.ctl.requested() => break,
                got = self.rx.recv() => got,
            };
            let Some(first) = got else { break };
            self.counters.dequeued(first.items);
            let mut items = first.items;
            self.held.push(first);
            if self.merge {
                let flush_at = Instant::now() + self.batching.delay;
                while items < self.batching.max_batch {
                    tokio::select! {
                        biased;
                        _ = self.ctl.requested() => break,
                        got = self.rx.recv() => match got {
                            Some(q) => {
                                self.counters.dequeued(q.items);
                                items += q.items;
                                self.held.push(q);
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(flush_at) => break,
                    }
                }
            }
            self.send_held().await;
        }
        self.drain().await;
    }

    async fn send_held(&mut self) {
        let mut held = std::mem::take(&mut self.held).into_iter();
        let Some(first) = held.next() else { return };
        let mut items = first.items;
        let mut request = first.request;
        for q in held {
            items += q.items;
            request.append(q.request);
        }
        if !self.resource.is_empty() {
            for r in request.resources() {
                apply_resource_attributes(r, &self.resource);
            }
        }
        let body = Bytes::from(request.encode_to_vec());
        drop(request);
        self.client
            .export(body, items, &self.counters, &mut self.ctl, R::rejected)
            .await;
        self.counters.settled(items);
    }

    async fn drain(&mut self) {
        self.rx.close();
        let deadline = self.ctl.deadline().unwrap_or_else(Instant::now);
        loop {
            let mut items: usize = self.held.iter().map(|q| q.items).sum();
            if self.held.is_empty() {
                while let Ok(q) = self.rx.try_recv() {
                    self.counters.dequeued(q.items);
                    items += q.items;
                    self.held.push(q);
                    if !self.merge || items >= self.batching.max_batch {
                        break;
                    }
                }
            }
            if self.held.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let mut unsent = items;
                self.held.clear();
                while let Ok(q) = self.rx.try_recv() {
                    self.counters.dequeued(q.items);
                    unsent += q.items;
                }
                self.counters.failed(unsent, true);
                self.counters.settled(unsent);
                log::warn!(
                    "export shutdown deadline reached: {unsent} {} were not sent",
                    items_name(self.client.signal)
                );
                break;
            }
            self.send_held().await;
        }
    }
}

impl<R: OtlpRequest> Drop for RequestWorker<R> {
    /// Aborted or torn down with its runtime: whatever it still held is lost; count it.
    fn drop(&mut self) {
        let mut lost: usize = self.held.iter().map(|q| q.items).sum();
        while let Ok(q) = self.rx.try_recv() {
            lost += q.items;
        }
        if lost > 0 {
            self.counters.failed(lost, !self.held.is_empty());
            self.counters.settled(lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;
    use opentelemetry_semantic_conventions::attribute as semconv;
    use opentelemetry_semantic_conventions::resource as res;
    use ztrace_e2e::receiver::{ReceivedSpan, Receiver};

    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value};
    use opentelemetry_proto::tonic::trace::v1 as otlp;

    use super::*;
    use crate::config::Protocol;
    use crate::export::exporter::Exporter;
    use crate::export::reference::*;
    use crate::export::settings::{ExportConfig, Output};
    use crate::export::stats::ExportStats;
    use crate::model::{SpanId, TraceId};
    use crate::testkit::*;
    use tonic::Code;

    fn attr<'a>(span: &'a otlp::Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }
    fn str_v(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }
    fn int_v(v: i64) -> any_value::Value {
        any_value::Value::IntValue(v)
    }

    #[test]
    fn server_span_to_otlp() {
        let span = server_span();
        let o = to_otlp_span(&span);
        assert_eq!(o.trace_id, span.trace_id.0.to_vec());
        assert_eq!(o.span_id, span.span_id.0.to_vec());
        assert_eq!(
            o.parent_span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(o.kind, OtlpKind::Server as i32);
        assert_eq!(o.name, "GET");
        assert_eq!(
            o.flags,
            0x100 | 0x200,
            "remote parent: HAS_IS_REMOTE | IS_REMOTE"
        );
        assert_eq!(o.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(o.end_time_unix_nano, 1_700_000_000_012_300_000);
        assert_eq!(o.status, None);
        assert_eq!(attr(&o, semconv::HTTP_REQUEST_METHOD), Some(&str_v("GET")));
        assert_eq!(
            attr(&o, semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(&int_v(200))
        );
        assert_eq!(attr(&o, semconv::URL_PATH), Some(&str_v("/api/orders")));
        assert_eq!(attr(&o, semconv::URL_QUERY), Some(&str_v("limit=10")));
        assert_eq!(attr(&o, semconv::CLIENT_ADDRESS), Some(&str_v("10.0.0.2")));
        assert_eq!(attr(&o, semconv::SERVER_PORT), Some(&int_v(8080)));
        assert_eq!(
            attr(&o, semconv::NETWORK_PROTOCOL_VERSION),
            Some(&str_v("1.1"))
        );
    }

    #[test]
    fn client_span_to_otlp() {
        let span = client_span();
        let o = to_otlp_span(&span);
        assert_eq!(o.kind, OtlpKind::Client as i32);
        assert_eq!(o.name, "POST");
        assert_eq!(o.flags, 0x100, "local parent: HAS_IS_REMOTE only");
        assert_eq!(o.parent_span_id, server_span().span_id.0.to_vec());
        let status = o.status.clone().unwrap_or_default();
        assert_eq!(status.code, otlp::status::StatusCode::Error as i32);
        assert_eq!(status.message, "503 Service Unavailable");
        assert_eq!(
            attr(&o, semconv::URL_FULL),
            Some(&str_v("http://payments:5000/charge"))
        );
        assert_eq!(attr(&o, semconv::SERVER_ADDRESS), Some(&str_v("payments")));
        assert_eq!(attr(&o, semconv::ERROR_TYPE), Some(&str_v("503")));
        assert_eq!(
            attr(&o, semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(&int_v(503))
        );
        assert_eq!(attr(&o, semconv::URL_PATH), None);

        let mut root = client_span();
        root.parent_span_id = None;
        let o = to_otlp_span(&root);
        assert!(o.parent_span_id.is_empty());
        assert_eq!(o.flags, 0x100);
    }

    #[test]
    fn unknown_method_to_otlp() {
        let mut span = server_span();
        span.http_mut().unwrap().method = "PROPFIND".into();
        let o = to_otlp_span(&span);
        assert_eq!(o.name, "HTTP");
        assert_eq!(
            attr(&o, semconv::HTTP_REQUEST_METHOD),
            Some(&str_v("_OTHER"))
        );
        assert_eq!(
            attr(&o, semconv::HTTP_REQUEST_METHOD_ORIGINAL),
            Some(&str_v("PROPFIND"))
        );
    }

    #[test]
    fn resources_grouped_by_pid() {
        let mut table = ProcessTable::new(Some("fallback-host".into()));
        table.upsert(Arc::new(process(1234, "python3")));
        let a = server_span();
        let b = client_span();
        let mut c = server_span();
        c.pid = 77; // never registered
        let mut d = server_span();
        d.span_id = SpanId([9; 8]);
        let req = build_request(&[a, c, b, d], &table);
        assert_eq!(req.resource_spans.len(), 2);
        let rs0 = &req.resource_spans[0];
        let rs1 = &req.resource_spans[1];
        assert_eq!(rs0.scope_spans.len(), 1);
        assert_eq!(rs0.scope_spans[0].spans.len(), 3);
        assert_eq!(rs1.scope_spans[0].spans.len(), 1);
        let scope = rs0.scope_spans[0].scope.clone().unwrap_or_default();
        assert_eq!(scope.name, "ztrace");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        let res_attr = |rs: &otlp::ResourceSpans, key: &str| {
            rs.resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.clone())
        };
        assert_eq!(res_attr(rs0, res::SERVICE_NAME), Some(str_v("python3-svc")));
        assert_eq!(res_attr(rs0, res::PROCESS_PID), Some(int_v(1234)));
        assert_eq!(res_attr(rs0, res::HOST_NAME), Some(str_v("node-1")));
        assert_eq!(
            res_attr(rs0, res::PROCESS_COMMAND_ARGS),
            Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(str_v("python3"))
                    },
                    AnyValue {
                        value: Some(str_v("app.py"))
                    },
                ]
            }))
        );
        assert_eq!(
            res_attr(rs1, res::SERVICE_NAME),
            Some(str_v("unknown_service:pid77"))
        );
        assert_eq!(res_attr(rs1, res::PROCESS_PID), Some(int_v(77)));
        assert_eq!(res_attr(rs1, res::HOST_NAME), Some(str_v("fallback-host")));
        assert_eq!(
            res_attr(rs1, res::TELEMETRY_SDK_NAME),
            Some(str_v("ztrace"))
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    // ---- end to end, against the in-process receiver ----

    fn target(signal: Signal, protocol: Protocol, base: &str, timeout: Duration) -> OtlpTarget {
        let base: http::Uri = base.parse().unwrap_or_default();
        let endpoint = match protocol {
            Protocol::Grpc => base,
            Protocol::HttpProtobuf => format!(
                "{}://{}/{}",
                base.scheme_str().unwrap_or("http"),
                base.authority().map(|a| a.as_str()).unwrap_or(""),
                signal.http_path()
            )
            .parse()
            .unwrap_or_default(),
        };
        OtlpTarget {
            protocol,
            timeout,
            ..OtlpTarget::grpc(signal, endpoint)
        }
    }

    fn otlp_config_with(endpoint: &str, protocol: Protocol, timeout: Duration) -> ExportConfig {
        ExportConfig {
            output: Output::Otlp(Box::new(target(
                Signal::Traces,
                protocol,
                endpoint,
                timeout,
            ))),
            metrics: Some(target(Signal::Metrics, protocol, endpoint, timeout)),
            logs: Some(target(Signal::Logs, protocol, endpoint, timeout)),
            batch_delay: Duration::from_millis(50),
            log_batching: Batching {
                delay: Duration::from_millis(50),
                ..crate::config::DEFAULT_LOG_BATCHING
            },
            ..ExportConfig::default()
        }
    }

    fn otlp_config(endpoint: &str) -> ExportConfig {
        otlp_config_with(endpoint, Protocol::Grpc, Duration::from_secs(2))
    }

    fn numbered(i: u8, pid: u32) -> Span {
        let mut s = server_span();
        s.trace_id = TraceId([i; 16]);
        s.span_id = SpanId([i; 8]);
        s.parent_span_id = None;
        s.parent_is_remote = false;
        s.pid = pid;
        s
    }

    fn by_id(spans: &[ReceivedSpan], i: u8) -> Option<&ReceivedSpan> {
        spans.iter().find(|s| s.span.span_id == vec![i; 8])
    }

    /// A loopback port that nothing listens on (for now).
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0");
        let addr = l.and_then(|l| l.local_addr());
        addr.unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1)))
    }

    /// A batch's body goes to the client without a copy, and its buffer comes back once the
    /// request is done: the next batch is encoded into the same memory, and both arrive whole.
    #[tokio::test]
    async fn span_bodies_reuse_their_buffer() -> anyhow::Result<()> {
        use ztrace_e2e::receiver::{Options, Protocol as Wire};
        let receiver = Receiver::start_with(Options {
            protocol: Wire::Http,
            ..Options::default()
        })
        .await?;
        let timeout = Duration::from_secs(2);
        let endpoint = receiver.endpoint();
        let mut sink = OtlpSink::new(&target(
            Signal::Traces,
            Protocol::HttpProtobuf,
            &endpoint,
            timeout,
        ));
        let table = ProcessTable::new(None);
        let counters = Counters::default();
        let (_tx, rx) = tokio::sync::watch::channel(None);
        let mut ctl = Control {
            rx,
            fallback: None,
            grace: timeout,
        };
        let spare = |sink: &OtlpSink| {
            let pool = sink.spare.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter().map(|b| b.as_ptr()).collect::<Vec<_>>()
        };
        let batch = [numbered(1, 1234), numbered(2, 1234)];
        sink.export(&batch, &table, &counters, &mut ctl).await;
        let first = spare(&sink);
        assert_eq!(first.len(), 1, "the first body's buffer is back");
        sink.export(&[numbered(3, 1234)], &table, &counters, &mut ctl)
            .await;
        assert_eq!(spare(&sink), first, "the second batch used the same buffer");
        let got = receiver.wait_for_spans(3, timeout).await;
        let mut ids: Vec<_> = got.iter().map(|s| s.span.span_id.clone()).collect();
        ids.sort();
        assert_eq!(ids, [vec![1; 8], vec![2; 8], vec![3; 8]]);
        assert_eq!(counters.snapshot().spans_exported, 3);
        Ok(())
    }

    #[tokio::test]
    async fn round_trip_through_receiver() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        let exporter = Exporter::spawn(otlp_config(&receiver.endpoint()));
        exporter.process(Arc::new(process(1234, "python3")));
        exporter.process(Arc::new(process(4321, "node")));
        for i in 1..=5 {
            exporter.submit(numbered(i, 1234));
        }
        exporter.submit(numbered(6, 4321));
        exporter.submit(numbered(7, 999));
        let mut client = client_span();
        client.span_id = SpanId([8; 8]);
        exporter.submit(client);
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            stats,
            ExportStats {
                spans_exported: 8,
                ..ExportStats::default()
            }
        );
        let got = receiver.wait_for_spans(8, Duration::from_secs(2)).await;
        assert_eq!(got.len(), 8);
        let one = by_id(&got, 1).ok_or_else(|| anyhow::anyhow!("span 1 missing"))?;
        assert_eq!(one.span.name, "GET");
        assert_eq!(one.span.trace_id, vec![1; 16]);
        assert_eq!(
            one.attr_str(semconv::URL_PATH).as_deref(),
            Some("/api/orders")
        );
        assert_eq!(one.attr_int(semconv::HTTP_RESPONSE_STATUS_CODE), Some(200));
        assert_eq!(
            one.resource_str(res::SERVICE_NAME).as_deref(),
            Some("python3-svc")
        );
        assert_eq!(one.resource_int(res::PROCESS_PID), Some(1234));
        assert_eq!(one.resource_int(res::PROCESS_PARENT_PID), Some(1));
        assert_eq!(
            one.resource_str(res::PROCESS_EXECUTABLE_PATH).as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(
            one.resource_str_array(res::PROCESS_COMMAND_ARGS),
            Some(vec!["python3".to_string(), "app.py".to_string()])
        );
        assert_eq!(one.scope.as_ref().map(|s| s.name.as_str()), Some("ztrace"));
        let six = by_id(&got, 6).ok_or_else(|| anyhow::anyhow!("span 6 missing"))?;
        assert_eq!(
            six.resource_str(res::SERVICE_NAME).as_deref(),
            Some("node-svc")
        );
        let seven = by_id(&got, 7).ok_or_else(|| anyhow::anyhow!("span 7 missing"))?;
        assert_eq!(
            seven.resource_str(res::SERVICE_NAME).as_deref(),
            Some("unknown_service:pid999")
        );
        assert_eq!(seven.resource_int(res::PROCESS_PID), Some(999));
        let eight = by_id(&got, 8).ok_or_else(|| anyhow::anyhow!("span 8 missing"))?;
        assert_eq!(eight.span.kind, OtlpKind::Client as i32);
        assert_eq!(
            eight.attr_str(semconv::URL_FULL).as_deref(),
            Some("http://payments:5000/charge")
        );
        // One ResourceSpans per pid in every request.
        for req in receiver.requests() {
            let mut pids: Vec<_> = req
                .resource_spans
                .iter()
                .filter_map(|rs| rs.resource.as_ref())
                .filter_map(|r| r.attributes.iter().find(|kv| kv.key == res::PROCESS_PID))
                .map(|kv| format!("{:?}", kv.value))
                .collect();
            let n = pids.len();
            pids.sort();
            pids.dedup();
            assert_eq!(pids.len(), n);
        }
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn batches_are_split_at_max_batch() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        let exporter = Exporter::spawn(ExportConfig {
            max_batch: 4,
            batch_delay: Duration::from_secs(30),
            ..otlp_config(&receiver.endpoint())
        });
        // As the daemon submits: chunks of what each poll released, larger and smaller than
        // a batch.
        let mut chunk: Vec<_> = (1..=6).map(|i| numbered(i, 1)).collect();
        exporter.submit_all(&mut chunk);
        chunk.extend((7..=10).map(|i| numbered(i, 1)));
        exporter.submit_all(&mut chunk);
        // Two full batches go out without waiting for the (long) batch delay.
        let got = receiver.wait_for_spans(8, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 8);
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.spans_exported, 10);
        let sizes: Vec<usize> = receiver
            .requests()
            .iter()
            .map(|r| {
                r.resource_spans
                    .iter()
                    .map(|rs| rs.scope_spans[0].spans.len())
                    .sum()
            })
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        receiver.stop().await;
        Ok(())
    }

    /// Chunks larger than a batch are exported in place, a batch at a time, and what tops up a
    /// partial batch is moved: either way every span goes out once, in the order submitted, in
    /// full batches but for the last.
    #[tokio::test]
    async fn batches_keep_the_order_across_chunks_of_any_size() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        let exporter = Exporter::spawn(ExportConfig {
            max_batch: 4,
            batch_delay: Duration::from_secs(30),
            ..otlp_config(&receiver.endpoint())
        });
        let mut next = 1u8;
        for size in [9, 2, 7, 1, 13, 4] {
            let mut chunk: Vec<_> = (next..next + size).map(|i| numbered(i, 1)).collect();
            next += size;
            exporter.submit_all(&mut chunk);
        }
        let total = usize::from(next - 1);
        let got = receiver
            .wait_for_spans(total / 4 * 4, Duration::from_secs(5))
            .await;
        assert_eq!(got.len(), total / 4 * 4);
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.spans_exported, total as u64);
        let mut order = Vec::new();
        let mut sizes = Vec::new();
        for r in receiver.requests() {
            let spans: Vec<u8> = r
                .resource_spans
                .iter()
                .flat_map(|rs| rs.scope_spans[0].spans.iter().map(|s| s.span_id[0]))
                .collect();
            sizes.push(spans.len());
            order.extend(spans);
        }
        assert_eq!(order, (1..next).collect::<Vec<_>>());
        assert_eq!(sizes, vec![4, 4, 4, 4, 4, 4, 4, 4, 4]);
        receiver.stop().await;
        Ok(())
    }

    /// A chunk larger than the queue's room: what fits is queued, the rest dropped and counted;
    /// every span is accounted for once, and the caller's vector comes back empty.
    /// The head sampler says its threshold on every span it keeps (`ot=th:…`), composed with
    /// what tail sampling left (the larger threshold; unknown stays unknown), and a remote change
    /// of the sampler (OpAMP, `set_sampler`) applies to the spans submitted after it.
    #[tokio::test]
    async fn kept_spans_carry_the_head_threshold_and_a_sampler_change_applies_to_later_ones()
    -> anyhow::Result<()> {
        use crate::config::Sampler;
        use crate::model::Sampling;
        use crate::processors::tail::threshold::threshold;
        let receiver = Receiver::start().await?;
        let mut exporter = Exporter::spawn(ExportConfig {
            sampler: Sampler::TraceIdRatio(0.5),
            ..otlp_config(&receiver.endpoint())
        });
        // `numbered(i)` has randomness 0xii…: 0xd0… passes 50% and 25%, 0xa0… only 50%.
        let with = |i: u8, sampling: Sampling| {
            let mut s = numbered(i, 1);
            s.sampling = sampling;
            s
        };
        let mut chunk = vec![
            with(0xd0, Sampling::Unsampled),
            with(0xa0, Sampling::Unsampled),
            // Kept by tail sampling at 10% (threshold above 50%'s): stays 10%.
            with(0xf0, Sampling::Threshold(threshold(0.1))),
            // Kept by a deterministic policy: now 50%.
            with(0xd3, Sampling::Threshold(0)),
            // Kept by rate limiting alone: unknown.
            with(0xd4, Sampling::Unknown),
        ];
        exporter.submit_all(&mut chunk);
        exporter.set_sampler(Sampler::ParentBased(
            crate::config::RootSampler::TraceIdRatio(0.25),
        ));
        let mut chunk = vec![
            {
                let mut s = with(0xd1, Sampling::Unsampled);
                s.remote_sampled = None;
                s
            },
            {
                let mut s = with(0xa1, Sampling::Unsampled);
                s.remote_sampled = None;
                s
            },
            // Continued from an upstream that sampled it: follows it, no threshold.
            with(0xa2, Sampling::Threshold(0)),
        ];
        exporter.submit_all(&mut chunk);
        let got = receiver.wait_for_spans(7, Duration::from_secs(5)).await;
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        let state = |i: u8| by_id(&got, i).map(|s| s.span.trace_state.clone());
        assert_eq!(state(0xd0).as_deref(), Some("ot=th:8"));
        assert_eq!(state(0xa0).as_deref(), Some("ot=th:8"));
        assert_eq!(state(0xf0).as_deref(), Some("ot=th:e666"));
        assert_eq!(state(0xd3).as_deref(), Some("ot=th:8"));
        assert_eq!(state(0xd4).as_deref(), Some(""));
        assert_eq!(state(0xd1).as_deref(), Some("ot=th:c"));
        assert_eq!(state(0xa1), None, "sampled out by the new sampler");
        assert_eq!(state(0xa2).as_deref(), Some(""));
        assert_eq!((stats.spans_exported, stats.spans_sampled_out), (7, 1));
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_chunk_beyond_the_queue_room_is_cut_and_counted() {
        let exporter = Exporter::spawn(ExportConfig {
            max_queue: 10,
            max_batch: 5,
            batch_delay: Duration::from_millis(10),
            ..otlp_config(&format!("http://{}", closed_port()))
        });
        let mut chunk: Vec<_> = (0..25u8).map(|i| numbered(i, 1)).collect();
        exporter.submit_all(&mut chunk);
        assert!(chunk.is_empty());
        let live = exporter.stats();
        assert_eq!(live.spans_dropped_queue_full, 15, "{live:?}");
        let stats = exporter.shutdown(Duration::from_millis(300)).await;
        assert_eq!(stats.spans_exported, 0);
        assert_eq!(
            stats.spans_dropped_queue_full + stats.spans_dropped_failed,
            25,
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn queue_full_drops_without_blocking() {
        // Nothing listens: the first batch is stuck in retries while the queue overflows.
        let exporter = Exporter::spawn(ExportConfig {
            max_queue: 10,
            max_batch: 5,
            batch_delay: Duration::from_millis(10),
            ..otlp_config(&format!("http://{}", closed_port()))
        });
        let started = std::time::Instant::now();
        for i in 0..200u32 {
            exporter.submit(numbered((i % 250) as u8, 1));
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "submit blocked"
        );
        let live = exporter.stats();
        assert!(live.spans_dropped_queue_full >= 200 - 10 - 5, "{live:?}");
        let shutting_down = std::time::Instant::now();
        let stats = exporter.shutdown(Duration::from_millis(300)).await;
        assert!(
            shutting_down.elapsed() < Duration::from_millis(1000),
            "shutdown overran its deadline"
        );
        assert_eq!(stats.spans_exported, 0);
        assert_eq!(
            stats.spans_dropped_queue_full + stats.spans_dropped_failed,
            200,
            "{stats:?}"
        );
        assert!(stats.batches_failed >= 1);
    }

    #[tokio::test]
    async fn collector_started_late_gets_the_spans() -> anyhow::Result<()> {
        let addr = closed_port();
        let exporter = Exporter::spawn(otlp_config(&format!("http://{addr}")));
        exporter.process(Arc::new(process(1234, "python3")));
        for i in 1..=3 {
            exporter.submit(numbered(i, 1234));
        }
        // Let a few attempts fail.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(exporter.stats().retries >= 1, "{:?}", exporter.stats());
        assert_eq!(exporter.stats().spans_exported, 0);
        let receiver = Receiver::start_on(addr).await?;
        let got = receiver.wait_for_spans(3, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 3);
        assert!(
            got.iter()
                .all(|s| s.resource_str(res::SERVICE_NAME).as_deref() == Some("python3-svc"))
        );
        let stats = exporter.shutdown(Duration::from_secs(2)).await;
        assert_eq!(stats.spans_exported, 3);
        assert_eq!(stats.spans_dropped_failed, 0);
        assert_eq!(stats.batches_failed, 0);
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn retryable_status_is_retried() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.fail_next(2, Code::Unavailable);
        let exporter = Exporter::spawn(otlp_config(&receiver.endpoint()));
        exporter.submit(numbered(1, 1));
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.spans_exported, 1, "{stats:?}");
        assert_eq!(stats.retries, 2);
        assert_eq!(receiver.rejected_calls(), 2);
        assert_eq!(receiver.spans().len(), 1);
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn non_retryable_status_drops_the_batch() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.fail_next(1, Code::InvalidArgument);
        let exporter = Exporter::spawn(otlp_config(&receiver.endpoint()));
        exporter.submit(numbered(1, 1));
        exporter.submit(numbered(2, 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The next batch goes through.
        exporter.submit(numbered(3, 1));
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            stats,
            ExportStats {
                spans_exported: 1,
                spans_dropped_failed: 2,
                batches_failed: 1,
                ..ExportStats::default()
            }
        );
        assert_eq!(receiver.spans().len(), 1);
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn partial_success_counts_rejected_spans() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.partial_success_next(1, "span too old");
        let exporter = Exporter::spawn(otlp_config(&receiver.endpoint()));
        for i in 1..=3 {
            exporter.submit(numbered(i, 1));
        }
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            stats,
            ExportStats {
                spans_exported: 2,
                spans_dropped_failed: 1,
                ..ExportStats::default()
            }
        );
        assert_eq!(receiver.spans().len(), 3);
        receiver.stop().await;
        Ok(())
    }

    #[test]
    fn exporter_is_shareable_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<Exporter>();
        check::<crate::export::exporter::ExportHandle>();
    }

    #[tokio::test]
    async fn gives_up_after_retry_budget() {
        let exporter = Exporter::spawn(ExportConfig {
            batch_delay: Duration::from_millis(10),
            ..otlp_config_with(
                &format!("http://{}", closed_port()),
                Protocol::Grpc,
                Duration::from_millis(100),
            )
        });
        exporter.submit(numbered(1, 1));
        // Budget is 3 × 100 ms; then the batch is dropped while the exporter keeps running.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let live = exporter.stats();
        assert_eq!(live.batches_failed, 1, "{live:?}");
        assert_eq!(live.spans_dropped_failed, 1);
        assert!(live.retries >= 1);
        let stats = exporter.shutdown(Duration::from_millis(100)).await;
        assert_eq!(stats.spans_exported, 0);
    }

    #[test]
    fn spawn_outside_a_runtime() -> anyhow::Result<()> {
        let receiver_rt = tokio::runtime::Runtime::new()?;
        let receiver = receiver_rt.block_on(Receiver::start())?;
        // No runtime entered here: the exporter brings its own.
        let exporter = Exporter::spawn(otlp_config(&receiver.endpoint()));
        exporter.submit(numbered(1, 1));
        let stats = receiver_rt.block_on(exporter.shutdown(Duration::from_secs(5)));
        assert_eq!(stats.spans_exported, 1);
        receiver_rt.block_on(receiver.stop());
        Ok(())
    }

    // ---- transports, signals and faults ----

    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use ztrace_e2e::receiver::{self as rx, Options};

    fn metrics_request(points: usize) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(str_v("metrics-svc")),
                        }),
                    }],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "ztrace.test".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint::default(); points],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs_request(records: usize) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: None,
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); records],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn res_str(attrs: &[KeyValue], key: &str) -> Option<String> {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    }

    /// All three signals over one transport, with gzip, headers and resource attributes.
    async fn three_signals(protocol: Protocol, gzip: bool) -> anyhow::Result<()> {
        let receiver = Receiver::start_with(Options {
            protocol: match protocol {
                Protocol::Grpc => rx::Protocol::Grpc,
                Protocol::HttpProtobuf => rx::Protocol::Http,
            },
            ..Options::default()
        })
        .await?;
        let mut cfg = otlp_config_with(&receiver.endpoint(), protocol, Duration::from_secs(2));
        let compression = if gzip {
            crate::config::Compression::Gzip
        } else {
            crate::config::Compression::None
        };
        for t in [cfg.metrics.as_mut(), cfg.logs.as_mut()]
            .into_iter()
            .flatten()
            .chain(match &mut cfg.output {
                Output::Otlp(t) => Some(&mut **t),
                _ => None,
            })
        {
            t.compression = compression;
            t.headers = vec![("x-api-key".into(), "secret 1".into())];
        }
        cfg.resource_attributes = vec![("deployment.environment.name".into(), "test".into())];
        let exporter = Exporter::spawn(cfg);
        exporter.process(Arc::new(process(1234, "python3")));
        for i in 1..=3 {
            exporter.submit(numbered(i, 1234));
        }
        exporter.export_metrics(metrics_request(4));
        exporter.export_logs(logs_request(2));
        exporter.export_logs(logs_request(3));
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.spans_exported, 3, "{stats:?}");
        assert_eq!(stats.metrics.exported, 4, "{stats:?}");
        assert_eq!(stats.logs.exported, 5, "{stats:?}");
        let spans = receiver.spans();
        assert_eq!(spans.len(), 3);
        assert_eq!(
            spans[0]
                .resource_str("deployment.environment.name")
                .as_deref(),
            Some("test")
        );
        assert_eq!(
            spans[0].resource_str("service.name").as_deref(),
            Some("python3-svc")
        );
        let metrics = receiver.metrics_requests();
        let resource = metrics[0].resource_metrics[0]
            .resource
            .clone()
            .unwrap_or_default();
        assert_eq!(
            res_str(&resource.attributes, "deployment.environment.name").as_deref(),
            Some("test")
        );
        assert_eq!(
            res_str(&resource.attributes, "service.name").as_deref(),
            Some("metrics-svc")
        );
        assert_eq!(receiver.log_record_count(), 5);
        let calls = receiver.calls();
        assert!(!calls.is_empty());
        for call in &calls {
            assert_eq!(call.header("x-api-key"), Some("secret 1"), "{call:?}");
            assert_eq!(call.gzip, gzip, "{call:?}");
            assert!(
                call.header("user-agent")
                    .is_some_and(|ua| ua.contains("ztrace/")),
                "{call:?}"
            );
        }
        for signal in [rx::Signal::Traces, rx::Signal::Metrics, rx::Signal::Logs] {
            assert!(calls.iter().any(|c| c.signal == signal), "{signal:?}");
        }
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn http_protobuf_without_gzip() -> anyhow::Result<()> {
        three_signals(Protocol::HttpProtobuf, false).await
    }

    #[tokio::test]
    async fn http_protobuf_with_gzip() -> anyhow::Result<()> {
        three_signals(Protocol::HttpProtobuf, true).await
    }

    #[tokio::test]
    async fn grpc_with_gzip() -> anyhow::Result<()> {
        three_signals(Protocol::Grpc, true).await
    }

    #[tokio::test]
    async fn grpc_without_gzip() -> anyhow::Result<()> {
        three_signals(Protocol::Grpc, false).await
    }

    /// `flush_signals` returns once every metrics/logs request submitted so far was settled —
    /// exported or given up on — so the exit summary reports what the collector accepted; and
    /// within its deadline when the collector never answers.
    #[tokio::test]
    async fn flush_signals_waits_until_metrics_and_logs_are_settled() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.set_delay(Duration::from_millis(300));
        let exporter = Exporter::spawn(otlp_config_with(
            &receiver.endpoint(),
            Protocol::Grpc,
            Duration::from_secs(2),
        ));
        exporter.export_metrics(metrics_request(4));
        exporter.export_logs(logs_request(2));
        exporter.export_logs(logs_request(3));
        exporter.flush_signals(Duration::from_secs(5)).await;
        let stats = exporter.stats();
        assert_eq!(stats.metrics.exported, 4, "{stats:?}");
        assert_eq!(stats.logs.exported, 5, "{stats:?}");
        assert_eq!(
            exporter.queue_depth(),
            crate::export::exporter::QueueDepth::default()
        );
        // A refusal that is not retryable settles the request too (as failed).
        receiver.set_delay(Duration::ZERO);
        receiver.fail_next(1, Code::InvalidArgument);
        exporter.export_metrics(metrics_request(2));
        exporter.flush_signals(Duration::from_secs(5)).await;
        let stats = exporter.stats();
        assert_eq!(stats.metrics.dropped_failed, 2, "{stats:?}");
        assert_eq!(stats.metrics.exported, 4, "{stats:?}");
        exporter.shutdown(Duration::from_secs(1)).await;
        receiver.stop().await;

        // Nobody listening: the flush gives up at its deadline.
        let exporter = Exporter::spawn(otlp_config_with(
            &format!("http://{}", closed_port()),
            Protocol::Grpc,
            Duration::from_secs(2),
        ));
        exporter.export_logs(logs_request(1));
        let started = Instant::now();
        exporter.flush_signals(Duration::from_millis(300)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(exporter.stats().logs.exported, 0);
        exporter.shutdown(Duration::from_millis(100)).await;
        Ok(())
    }

    /// Replay's logs path: a logs request waits for room in a full queue instead of being
    /// dropped, so a slow collector gets every record; the daemon's path drops and counts them.
    #[tokio::test]
    async fn waiting_logs_are_queued_when_there_is_room_never_dropped() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        receiver.set_delay(Duration::from_millis(50));
        let small = || ExportConfig {
            log_batching: Batching {
                max_queue: 4,
                max_batch: 2,
                delay: Duration::from_millis(10),
            },
            ..otlp_config(&receiver.endpoint())
        };
        let exporter = Exporter::spawn(small());
        for _ in 0..20 {
            exporter.export_logs_waiting(logs_request(2)).await;
        }
        exporter.flush_signals(Duration::from_secs(10)).await;
        let stats = exporter.shutdown(Duration::from_secs(2)).await;
        assert_eq!(stats.logs.exported, 40, "{stats:?}");
        assert_eq!(stats.logs.dropped_queue_full, 0, "{stats:?}");
        // The same requests through the non-waiting path, as fast: most find the queue full.
        let exporter = Exporter::spawn(small());
        for _ in 0..20 {
            exporter.export_logs(logs_request(2));
        }
        exporter.flush_signals(Duration::from_secs(10)).await;
        let stats = exporter.shutdown(Duration::from_secs(2)).await;
        assert!(stats.logs.dropped_queue_full > 0, "{stats:?}");
        assert_eq!(
            stats.logs.exported + stats.logs.dropped_queue_full,
            40,
            "{stats:?}"
        );
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn grpc_retry_info_is_honoured() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        // RESOURCE_EXHAUSTED is retryable only because RetryInfo says when.
        receiver.fail_next_retry_after(1, Code::ResourceExhausted, Duration::from_millis(700));
        let exporter = Exporter::spawn(otlp_config(&receiver.endpoint()));
        let started = std::time::Instant::now();
        exporter.submit(numbered(1, 1));
        assert!(
            receiver
                .wait_until(Duration::from_secs(5), |r| r.span_count() == 1)
                .await
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(700), "{waited:?}");
        let stats = exporter.shutdown(Duration::from_secs(2)).await;
        assert_eq!((stats.spans_exported, stats.retries), (1, 1), "{stats:?}");
        receiver.stop().await;
        Ok(())
    }

    /// A collector asking to be retried after more time than a clock can hold: the batch is given
    /// up at once, counted, and the exporter goes on (it panicked adding the delay to `now`).
    #[tokio::test]
    async fn absurd_retry_delays_give_the_batch_up_without_a_panic() -> anyhow::Result<()> {
        for (receiver, protocol, delay) in [
            (
                Receiver::start().await?,
                Protocol::Grpc,
                Duration::from_secs(i64::MAX as u64),
            ),
            (
                Receiver::start_http().await?,
                Protocol::HttpProtobuf,
                Duration::from_secs(u64::MAX),
            ),
        ] {
            receiver.fail_next_retry_after(1, Code::Unavailable, delay);
            let exporter = Exporter::spawn(otlp_config_with(
                &receiver.endpoint(),
                protocol,
                Duration::from_secs(2),
            ));
            exporter.submit(numbered(1, 1));
            // The second span in a batch of its own, once the first batch was refused.
            let asked = std::time::Instant::now();
            while receiver.rejected_calls() == 0 && asked.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            exporter.submit(numbered(2, 1));
            assert!(
                receiver
                    .wait_until(Duration::from_secs(5), |r| r.span_count() == 1)
                    .await,
                "{protocol:?}: the exporter stopped after the absurd delay"
            );
            let stats = exporter.shutdown(Duration::from_secs(2)).await;
            assert_eq!(
                (
                    stats.spans_exported,
                    stats.spans_dropped_failed,
                    stats.retries,
                    receiver.rejected_calls()
                ),
                (1, 1, 0, 1),
                "{protocol:?}: {stats:?}"
            );
            receiver.stop().await;
        }
        Ok(())
    }

    #[tokio::test]
    async fn http_503_with_retry_after_is_retried_and_400_is_not() -> anyhow::Result<()> {
        let receiver = Receiver::start_http().await?;
        receiver.fail_next_retry_after(1, Code::Unavailable, Duration::from_secs(1));
        let exporter = Exporter::spawn(otlp_config_with(
            &receiver.endpoint(),
            Protocol::HttpProtobuf,
            Duration::from_secs(2),
        ));
        let started = std::time::Instant::now();
        exporter.submit(numbered(1, 1));
        assert!(
            receiver
                .wait_until(Duration::from_secs(5), |r| r.span_count() == 1)
                .await
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(exporter.stats().retries, 1);
        receiver.fail_next(1, Code::InvalidArgument);
        exporter.export_logs(logs_request(2));
        exporter.export_logs(logs_request(0));
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!(stats.spans_exported, 1);
        assert_eq!(stats.logs.dropped_failed, 2, "{stats:?}");
        assert_eq!(stats.logs.batches_failed, 1);
        assert_eq!(stats.logs.retries, 0);
        assert_eq!(receiver.rejected_calls(), 2);
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn http_partial_success_counts_rejected_log_records() -> anyhow::Result<()> {
        let receiver = Receiver::start_http().await?;
        receiver.partial_success_next(2, "too old");
        let exporter = Exporter::spawn(otlp_config_with(
            &receiver.endpoint(),
            Protocol::HttpProtobuf,
            Duration::from_secs(2),
        ));
        exporter.export_logs(logs_request(5));
        let stats = exporter.shutdown(Duration::from_secs(5)).await;
        assert_eq!((stats.logs.exported, stats.logs.dropped_failed), (3, 2));
        receiver.stop().await;
        Ok(())
    }

    /// A collector that answers more slowly than the timeout: capture never blocks, the queue
    /// stays bounded, attempts time out and are retried, every span is accounted for.
    #[tokio::test]
    async fn slow_collector_never_blocks_submit() -> anyhow::Result<()> {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let receiver = Receiver::start_with(Options {
                protocol: match protocol {
                    Protocol::Grpc => rx::Protocol::Grpc,
                    Protocol::HttpProtobuf => rx::Protocol::Http,
                },
                ..Options::default()
            })
            .await?;
            receiver.set_delay(Duration::from_secs(2));
            let exporter = Exporter::spawn(ExportConfig {
                max_queue: 50,
                max_batch: 10,
                batch_delay: Duration::from_millis(10),
                ..otlp_config_with(&receiver.endpoint(), protocol, Duration::from_millis(150))
            });
            let started = std::time::Instant::now();
            for i in 0..2000u32 {
                exporter.submit(numbered((i % 250) as u8, 1));
            }
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "submit blocked"
            );
            tokio::time::sleep(Duration::from_millis(600)).await;
            let live = exporter.stats();
            assert!(live.retries >= 1, "{protocol:?}: {live:?}");
            assert!(live.spans_dropped_queue_full >= 2000 - 50 - 10, "{live:?}");
            let stats = exporter.shutdown(Duration::from_millis(300)).await;
            assert_eq!(
                stats.spans_exported + stats.spans_dropped_queue_full + stats.spans_dropped_failed,
                2000,
                "{protocol:?}: {stats:?}"
            );
            receiver.stop().await;
        }
        Ok(())
    }

    /// Collector killed with spans in flight and restarted: what the queue held arrives, the
    /// rest is counted as dropped, and the counts add up.
    #[tokio::test]
    async fn collector_killed_and_restarted() -> anyhow::Result<()> {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut receiver = Receiver::start_with(Options {
                protocol: match protocol {
                    Protocol::Grpc => rx::Protocol::Grpc,
                    Protocol::HttpProtobuf => rx::Protocol::Http,
                },
                ..Options::default()
            })
            .await?;
            let exporter = Exporter::spawn(ExportConfig {
                max_queue: 20,
                max_batch: 5,
                batch_delay: Duration::from_millis(10),
                ..otlp_config_with(&receiver.endpoint(), protocol, Duration::from_secs(2))
            });
            for i in 0..5 {
                exporter.submit(numbered(i, 1));
            }
            assert!(
                receiver
                    .wait_until(Duration::from_secs(5), |r| r.span_count() == 5)
                    .await
            );
            receiver.kill().await;
            for i in 5..105u32 {
                exporter.submit(numbered(i as u8, 1));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(exporter.stats().retries >= 1, "{:?}", exporter.stats());
            receiver.restart().await?;
            let stats = exporter.shutdown(Duration::from_secs(5)).await;
            let received = receiver.span_count() as u64;
            assert_eq!(stats.spans_exported, received, "{protocol:?}: {stats:?}");
            assert_eq!(
                stats.spans_exported + stats.spans_dropped_queue_full + stats.spans_dropped_failed,
                105,
                "{protocol:?}: {stats:?}"
            );
            // The queue and the batch being retried made it through.
            assert!(received >= 5 + 20, "{protocol:?}: {stats:?}");
            assert!(stats.spans_dropped_queue_full >= 100 - 20 - 5, "{stats:?}");
            receiver.stop().await;
        }
        Ok(())
    }

    #[tokio::test]
    async fn tls_with_a_custom_ca() -> anyhow::Result<()> {
        let dir = ztrace_e2e::temp::TempDir::new("tls")?;
        let id = rx::test_certificates(&dir)?;
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let receiver = Receiver::start_with(Options {
                protocol: match protocol {
                    Protocol::Grpc => rx::Protocol::Grpc,
                    Protocol::HttpProtobuf => rx::Protocol::Http,
                },
                tls: Some(id.clone()),
                ..Options::default()
            })
            .await?;
            assert!(receiver.endpoint().starts_with("https://localhost:"));
            let mut cfg = otlp_config_with(&receiver.endpoint(), protocol, Duration::from_secs(2));
            if let Output::Otlp(t) = &mut cfg.output {
                t.tls.ca_pem = Some(id.ca_pem.clone());
            }
            let exporter = Exporter::spawn(cfg);
            exporter.submit(numbered(1, 1));
            let stats = exporter.shutdown(Duration::from_secs(5)).await;
            assert_eq!(stats.spans_exported, 1, "{protocol:?}: {stats:?}");
            // Without the CA (system roots only) the certificate is refused.
            let cfg = ExportConfig {
                max_batch: 1,
                ..otlp_config_with(&receiver.endpoint(), protocol, Duration::from_millis(300))
            };
            let exporter = Exporter::spawn(cfg);
            exporter.submit(numbered(2, 1));
            let stats = exporter.shutdown(Duration::from_secs(3)).await;
            assert_eq!(
                (stats.spans_exported, stats.spans_dropped_failed),
                (0, 1),
                "{protocol:?}: {stats:?}"
            );
            assert_eq!(receiver.span_count(), 1);
            receiver.stop().await;
        }
        Ok(())
    }

    #[tokio::test]
    async fn sampled_out_spans_are_counted_not_sent() -> anyhow::Result<()> {
        let receiver = Receiver::start().await?;
        let exporter = Exporter::spawn(ExportConfig {
            sampler: crate::config::Sampler::AlwaysOff,
            ..otlp_config(&receiver.endpoint())
        });
        for i in 1..=4 {
            exporter.submit(numbered(i, 1));
        }
        let stats = exporter.shutdown(Duration::from_secs(2)).await;
        assert_eq!((stats.spans_sampled_out, stats.spans_exported), (4, 0));
        assert_eq!(receiver.span_count(), 0);
        receiver.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn metric_export_timeout_bounds_one_metrics_export() {
        // Nothing listens and every attempt may take 10 s: without the bound the request would
        // be retried for 3 × 10 s; OTEL_METRIC_EXPORT_TIMEOUT = 300 ms gives up well before.
        let exporter = Exporter::spawn(ExportConfig {
            metric_export_timeout: Some(Duration::from_millis(300)),
            ..otlp_config_with(
                &format!("http://{}", closed_port()),
                Protocol::HttpProtobuf,
                Duration::from_secs(10),
            )
        });
        exporter.export_metrics(metrics_request(2));
        let started = Instant::now();
        while exporter.stats().metrics.dropped_failed < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                exporter.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = exporter.shutdown(Duration::from_millis(100)).await;
        assert_eq!(stats.metrics.dropped_failed, 2, "{stats:?}");
        assert_eq!(stats.metrics.exported, 0);
    }

    #[tokio::test]
    async fn request_queues_are_bounded_in_items() {
        // Nothing listens: the first request is stuck in retries while the queue overflows.
        let exporter = Exporter::spawn(ExportConfig {
            log_batching: Batching {
                max_queue: 10,
                max_batch: 10,
                delay: Duration::from_millis(10),
            },
            metrics_max_queue: 8,
            ..otlp_config_with(
                &format!("http://{}", closed_port()),
                Protocol::HttpProtobuf,
                Duration::from_millis(100),
            )
        });
        for _ in 0..20 {
            exporter.export_logs(logs_request(3));
            exporter.export_metrics(metrics_request(2));
        }
        let live = exporter.stats();
        assert!(live.logs.dropped_queue_full >= 60 - 10 - 3, "{live:?}");
        assert!(live.metrics.dropped_queue_full >= 40 - 8 - 2, "{live:?}");
        let stats = exporter.shutdown(Duration::from_millis(200)).await;
        assert_eq!(
            stats.logs.dropped_queue_full + stats.logs.dropped_failed,
            60,
            "{stats:?}"
        );
        assert_eq!(
            stats.metrics.dropped_queue_full + stats.metrics.dropped_failed,
            40,
            "{stats:?}"
        );
        // Without a target for the signal, requests are discarded and counted as such.
        let exporter = Exporter::spawn(ExportConfig::default());
        exporter.export_logs(logs_request(3));
        let stats = exporter.shutdown(Duration::from_millis(100)).await;
        assert_eq!(stats.logs.not_exported, 3);
    }
}
