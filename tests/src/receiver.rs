//! An in-process OTLP/gRPC trace receiver for tests: it binds a loopback port, records every
//! `ExportTraceServiceRequest` it is sent, and can be told to fail the next few calls with a chosen
//! gRPC status (to exercise an exporter's retry and drop paths). It knows nothing about ztrace.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// What the receiver has seen, and the failures it still has to inject.
#[derive(Default)]
struct State {
    requests: Vec<ExportTraceServiceRequest>,
    /// Calls answered with an error (not recorded in `requests`).
    rejected_calls: usize,
    fail_next: usize,
    fail_code: Option<tonic::Code>,
    /// `partial_success` (rejected spans, message) for the next accepted call.
    partial_next: Option<(i64, String)>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide what was received from the others.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut state = self.lock();
        if state.fail_next > 0 {
            state.fail_next -= 1;
            state.rejected_calls += 1;
            let code = state.fail_code.unwrap_or(tonic::Code::Unavailable);
            return Err(tonic::Status::new(code, "injected failure"));
        }
        state.requests.push(request.into_inner());
        let partial_success = state
            .partial_next
            .take()
            .map(
                |(rejected_spans, error_message)| ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                },
            );
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

/// One received span with the resource (and scope) it was sent under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub span: Span,
    pub resource: Vec<KeyValue>,
    pub scope: Option<InstrumentationScope>,
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn as_str(v: Option<&any_value::Value>) -> Option<String> {
    match v {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn as_int(v: Option<&any_value::Value>) -> Option<i64> {
    match v {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn as_str_array(v: Option<&any_value::Value>) -> Option<Vec<String>> {
    match v {
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v: &AnyValue| as_str(v.value.as_ref()))
            .collect(),
        _ => None,
    }
}

impl ReceivedSpan {
    /// A span attribute that is a string.
    pub fn attr_str(&self, key: &str) -> Option<String> {
        as_str(find(&self.span.attributes, key))
    }
    /// A span attribute that is an integer.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        as_int(find(&self.span.attributes, key))
    }
    /// Whether the span carries the attribute at all (whatever its type).
    pub fn has_attr(&self, key: &str) -> bool {
        self.span.attributes.iter().any(|kv| kv.key == key)
    }
    /// A resource attribute that is a string.
    pub fn resource_str(&self, key: &str) -> Option<String> {
        as_str(find(&self.resource, key))
    }
    /// A resource attribute that is an integer.
    pub fn resource_int(&self, key: &str) -> Option<i64> {
        as_int(find(&self.resource, key))
    }
    /// A resource attribute that is an array of strings.
    pub fn resource_str_array(&self, key: &str) -> Option<Vec<String>> {
        as_str_array(find(&self.resource, key))
    }
    /// Lower-case hex of the trace id, as `traceparent` writes it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }
    /// Lower-case hex of the span id.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }
    /// Lower-case hex of the parent span id ("" for a root span).
    pub fn parent_span_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running OTLP/gRPC trace receiver on a loopback port.
pub struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Metrics and logs received (see `crate::signals`).
    signals: crate::signals::SignalStore,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 with a port picked by the kernel.
    pub async fn start() -> anyhow::Result<Receiver> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a receiver on the given address (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding OTLP test receiver on {addr}"))?;
        let addr = listener.local_addr().context("receiver local address")?;
        let shared = Shared::default();
        let (tx, rx) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(shared.clone());
        let signals = crate::signals::SignalStore::default();
        let (metrics, logs) = (signals.clone(), signals.clone());
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(MetricsServiceServer::new(metrics))
                .add_service(LogsServiceServer::new(logs))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    // Either an explicit stop or the Receiver being dropped ends the server.
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("OTLP test receiver on {addr} failed: {e}");
            }
        });
        Ok(Receiver {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
            signals,
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC endpoint to point an exporter at, e.g. `http://127.0.0.1:43171`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the next `n` export calls fail with `code` (they are not recorded).
    pub fn fail_next(&self, n: usize, code: tonic::Code) {
        let mut state = self.shared.lock();
        state.fail_next = n;
        state.fail_code = Some(code);
    }

    /// Makes the next accepted call answer with a partial success: `rejected` spans refused
    /// with `message` (the request is still recorded whole).
    pub fn partial_success_next(&self, rejected: i64, message: &str) {
        self.shared.lock().partial_next = Some((rejected, message.to_string()));
    }

    /// How many calls were answered with an injected failure.
    pub fn rejected_calls(&self) -> usize {
        self.shared.lock().rejected_calls
    }

    /// Every request accepted so far, in arrival order.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every span accepted so far, flattened, each with its resource attributes.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let state = self.shared.lock();
        let mut out = Vec::new();
        for req in &state.requests {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            span: span.clone(),
                            resource: resource.clone(),
                            scope: ss.scope.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    fn span_count(&self) -> usize {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    /// Polls until at least `n` spans arrived or `timeout` passed; returns what it has.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.span_count() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.spans()
    }

    /// Metrics and logs received so far.
    pub fn signals(&self) -> std::sync::MutexGuard<'_, crate::signals::Received> {
        self.signals.lock()
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Open client connections can hold a graceful shutdown; don't let that hang a test.
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(_) => {}
                Err(_) => eprintln!("OTLP test receiver on {} did not stop in 5s", self.addr),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
