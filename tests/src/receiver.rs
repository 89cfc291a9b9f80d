//! An in-process OTLP receiver for tests, for traces, metrics and logs, over gRPC or HTTP/protobuf
//! (plaintext or TLS), that decodes what it is sent with `opentelemetry-proto` and records it,
//! together with each call's headers and whether its body was gzip-compressed.
//!
//! It can misbehave on purpose, to exercise an exporter's retry and drop paths: fail the next
//! calls with a chosen status (gRPC code, mapped to the matching HTTP status for OTLP/HTTP),
//! optionally asking the client to come back later (gRPC `RetryInfo`, HTTP `Retry-After`); answer
//! with a partial success; answer slowly; and stop and restart on the same port (a collector that
//! is killed and comes back) while keeping what it has recorded. It knows nothing about ztrace.

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The OTLP transport a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

/// A server certificate and key (PEM), for a TLS receiver.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The CA that signed `cert_pem`: what a client must trust.
    pub ca_pem: Vec<u8>,
}

/// How to start a receiver.
#[derive(Clone, Debug)]
pub struct Options {
    pub protocol: Protocol,
    /// Port 0 picks a free one.
    pub addr: SocketAddr,
    pub tls: Option<TlsIdentity>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            protocol: Protocol::Grpc,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
        }
    }
}

/// Which signal a call carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

/// What the receiver saw of one call (accepted or failed on purpose).
#[derive(Clone, Debug)]
pub struct Call {
    pub signal: Signal,
    /// Request headers (gRPC metadata), lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body was gzip-compressed.
    pub gzip: bool,
    /// Answered with an injected failure.
    pub failed: bool,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A failure to inject.
#[derive(Clone, Copy, Debug)]
struct Fault {
    code: tonic::Code,
    retry_after: Option<Duration>,
}

/// What the receiver has seen, and the misbehaviour it still has to show.
#[derive(Default)]
struct State {
    requests: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    calls: Vec<Call>,
    /// Calls answered with an error (not recorded in `requests`).
    rejected_calls: usize,
    fail_next: usize,
    fault: Option<Fault>,
    /// `partial_success` (rejected items, message) for the next accepted call.
    partial_next: Option<(i64, String)>,
    /// How long every answer is held back.
    delay: Duration,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<State>>);

/// The decision about one call.
enum Verdict {
    Accept(Option<(i64, String)>),
    Fail(Fault),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide what was received from the others.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the call on arrival (so that calls a client gave up on while the answer was held
    /// back are seen too) and decides its answer after the configured delay.
    async fn admit(
        &self,
        signal: Signal,
        headers: Vec<(String, String)>,
        gzip: bool,
        record: impl FnOnce(&mut State),
    ) -> Verdict {
        let (index, delay) = {
            let mut state = self.lock();
            state.calls.push(Call {
                signal,
                headers,
                gzip,
                failed: false,
            });
            (state.calls.len() - 1, state.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.lock();
        if state.fail_next > 0 {
            state.fail_next -= 1;
            state.rejected_calls += 1;
            state.calls[index].failed = true;
            return Verdict::Fail(state.fault.unwrap_or(Fault {
                code: tonic::Code::Unavailable,
                retry_after: None,
            }));
        }
        record(&mut state);
        Verdict::Accept(state.partial_next.take())
    }
}

fn grpc_status(fault: Fault) -> tonic::Status {
    match fault.retry_after {
        Some(d) => tonic::Status::with_error_details(
            fault.code,
            "injected failure",
            ErrorDetails::with_retry_info(Some(d)),
        ),
        None => tonic::Status::new(fault.code, "injected failure"),
    }
}

fn metadata_headers(md: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    md.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn grpc_gzip(md: &tonic::metadata::MetadataMap) -> bool {
    md.get("grpc-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip")
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (headers, gzip) = (
            metadata_headers(request.metadata()),
            grpc_gzip(request.metadata()),
        );
        let req = request.into_inner();
        match self
            .admit(Signal::Traces, headers, gzip, |s| s.requests.push(req))
            .await
        {
            Verdict::Fail(f) => Err(grpc_status(f)),
            Verdict::Accept(partial) => Ok(tonic::Response::new(trace_response(partial))),
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let (headers, gzip) = (
            metadata_headers(request.metadata()),
            grpc_gzip(request.metadata()),
        );
        let req = request.into_inner();
        match self
            .admit(Signal::Metrics, headers, gzip, |s| s.metrics.push(req))
            .await
        {
            Verdict::Fail(f) => Err(grpc_status(f)),
            Verdict::Accept(partial) => Ok(tonic::Response::new(metrics_response(partial))),
        }
    }
}

#[tonic::async_trait]
impl LogsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let (headers, gzip) = (
            metadata_headers(request.metadata()),
            grpc_gzip(request.metadata()),
        );
        let req = request.into_inner();
        match self
            .admit(Signal::Logs, headers, gzip, |s| s.logs.push(req))
            .await
        {
            Verdict::Fail(f) => Err(grpc_status(f)),
            Verdict::Accept(partial) => Ok(tonic::Response::new(logs_response(partial))),
        }
    }
}

fn trace_response(partial: Option<(i64, String)>) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: partial.map(
            |(rejected_spans, error_message)| ExportTracePartialSuccess {
                rejected_spans,
                error_message,
            },
        ),
    }
}

fn metrics_response(partial: Option<(i64, String)>) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: partial.map(|(rejected_data_points, error_message)| {
            ExportMetricsPartialSuccess {
                rejected_data_points,
                error_message,
            }
        }),
    }
}

fn logs_response(partial: Option<(i64, String)>) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: partial.map(|(rejected_log_records, error_message)| {
            ExportLogsPartialSuccess {
                rejected_log_records,
                error_message,
            }
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP

/// The HTTP status of a gRPC code, as an OTLP/HTTP collector would answer.
fn http_status(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::Unavailable => 503,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::InvalidArgument => 400,
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::NotFound | tonic::Code::Unimplemented => 404,
        tonic::Code::DeadlineExceeded => 504,
        tonic::Code::Aborted => 502,
        _ => 500,
    }
}

type HttpResponse = hyper::Response<Full<Bytes>>;

fn respond(status: u16, body: Vec<u8>, retry_after: Option<Duration>) -> HttpResponse {
    let mut builder = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf");
    if let Some(d) = retry_after {
        builder = builder.header("retry-after", d.as_secs().max(1).to_string());
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

fn plain(status: u16, text: &str) -> HttpResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    r
}

async fn handle_http(
    shared: Shared,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<HttpResponse, Infallible> {
    let signal = match request.uri().path() {
        "/v1/traces" => Signal::Traces,
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        other => return Ok(plain(404, &format!("no OTLP endpoint at {other}"))),
    };
    if request.method() != hyper::Method::POST {
        return Ok(plain(405, "POST only"));
    }
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = request
        .headers()
        .get("content-type")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    if content_type != b"application/x-protobuf" {
        return Ok(plain(415, "want application/x-protobuf"));
    }
    let gzip = request
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(400, &format!("reading the body: {e}"))),
    };
    let body = if gzip {
        let mut out = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(body.as_ref()).read_to_end(&mut out) {
            return Ok(plain(400, &format!("bad gzip: {e}")));
        }
        Bytes::from(out)
    } else {
        body
    };
    let undecodable = |e: prost::DecodeError| Ok(plain(400, &format!("undecodable: {e}")));
    let verdict = match signal {
        Signal::Traces => match ExportTraceServiceRequest::decode(body) {
            Ok(req) => {
                shared
                    .admit(signal, headers, gzip, |s| s.requests.push(req))
                    .await
            }
            Err(e) => return undecodable(e),
        },
        Signal::Metrics => match ExportMetricsServiceRequest::decode(body) {
            Ok(req) => {
                shared
                    .admit(signal, headers, gzip, |s| s.metrics.push(req))
                    .await
            }
            Err(e) => return undecodable(e),
        },
        Signal::Logs => match ExportLogsServiceRequest::decode(body) {
            Ok(req) => {
                shared
                    .admit(signal, headers, gzip, |s| s.logs.push(req))
                    .await
            }
            Err(e) => return undecodable(e),
        },
    };
    Ok(match verdict {
        Verdict::Fail(f) => {
            let status = tonic_types::Status {
                code: f.code as i32,
                message: "injected failure".into(),
                details: Vec::new(),
            };
            respond(http_status(f.code), status.encode_to_vec(), f.retry_after)
        }
        Verdict::Accept(partial) => {
            let body = match signal {
                Signal::Traces => trace_response(partial).encode_to_vec(),
                Signal::Metrics => metrics_response(partial).encode_to_vec(),
                Signal::Logs => logs_response(partial).encode_to_vec(),
            };
            respond(200, body, None)
        }
    })
}

pub(crate) fn tls_acceptor(id: &TlsIdentity) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&id.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("receiver certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&id.key_pem).context("receiver key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves OTLP/HTTP until `stop` fires; then every open connection is dropped too (a killed
/// collector closes its connections).
async fn serve_http(
    listener: TcpListener,
    shared: Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle_http(shared.clone(), req));
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

// ---------------------------------------------------------------------------------------------

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

/// The running server of a receiver.
struct Server {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running OTLP receiver on a loopback port.
pub struct Receiver {
    addr: SocketAddr,
    options: Options,
    shared: Shared,
    server: Option<Server>,
}

impl Receiver {
    /// Starts an OTLP/gRPC receiver on 127.0.0.1 with a port picked by the kernel.
    pub async fn start() -> anyhow::Result<Receiver> {
        Self::start_with(Options::default()).await
    }

    /// Starts an OTLP/gRPC receiver on the given address (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Receiver> {
        Self::start_with(Options {
            addr,
            ..Options::default()
        })
        .await
    }

    /// Starts an OTLP/HTTP receiver on 127.0.0.1 with a port picked by the kernel.
    pub async fn start_http() -> anyhow::Result<Receiver> {
        Self::start_with(Options {
            protocol: Protocol::Http,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<Receiver> {
        let mut receiver = Receiver {
            addr: options.addr,
            options,
            shared: Shared::default(),
            server: None,
        };
        receiver.serve().await?;
        Ok(receiver)
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("binding OTLP test receiver on {}", self.addr))?;
        self.addr = listener.local_addr().context("receiver local address")?;
        let addr = self.addr;
        let (tx, rx) = oneshot::channel::<()>();
        let shared = self.shared.clone();
        let task = match self.options.protocol {
            Protocol::Http => {
                let tls = self.options.tls.as_ref().map(tls_acceptor).transpose()?;
                tokio::spawn(serve_http(listener, shared, tls, rx))
            }
            Protocol::Grpc => {
                let mut builder = tonic::transport::Server::builder();
                if let Some(id) = &self.options.tls {
                    builder = builder
                        .tls_config(tonic::transport::ServerTlsConfig::new().identity(
                            tonic::transport::Identity::from_pem(&id.cert_pem, &id.key_pem),
                        ))
                        .context("receiver TLS")?;
                }
                let router = builder
                    .add_service(
                        TraceServiceServer::new(shared.clone())
                            .accept_compressed(CompressionEncoding::Gzip),
                    )
                    .add_service(
                        MetricsServiceServer::new(shared.clone())
                            .accept_compressed(CompressionEncoding::Gzip),
                    )
                    .add_service(
                        LogsServiceServer::new(shared).accept_compressed(CompressionEncoding::Gzip),
                    );
                tokio::spawn(async move {
                    let served = router
                        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                            // Either an explicit stop or the Receiver being dropped ends it.
                            let _ = rx.await;
                        })
                        .await;
                    if let Err(e) = served {
                        eprintln!("OTLP test receiver on {addr} failed: {e}");
                    }
                })
            }
        };
        self.server = Some(Server { shutdown: tx, task });
        Ok(())
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base endpoint to point an exporter at, e.g. `http://127.0.0.1:43171`
    /// (`https://localhost:…` for a TLS receiver, whose certificate names localhost).
    pub fn endpoint(&self) -> String {
        match self.options.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// Makes the next `n` export calls fail with `code` (they are not recorded); over HTTP the
    /// matching status (UNAVAILABLE → 503, RESOURCE_EXHAUSTED → 429, INVALID_ARGUMENT → 400 …).
    pub fn fail_next(&self, n: usize, code: tonic::Code) {
        let mut state = self.shared.lock();
        state.fail_next = n;
        state.fault = Some(Fault {
            code,
            retry_after: None,
        });
    }

    /// Like [`Receiver::fail_next`], asking the client to retry after `delay` (gRPC
    /// `RetryInfo`; HTTP `Retry-After`, in whole seconds, at least 1).
    pub fn fail_next_retry_after(&self, n: usize, code: tonic::Code, delay: Duration) {
        let mut state = self.shared.lock();
        state.fail_next = n;
        state.fault = Some(Fault {
            code,
            retry_after: Some(delay),
        });
    }

    /// Holds every answer back by `delay` (a slow collector).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Makes the next accepted call answer with a partial success: `rejected` items refused
    /// with `message` (the request is still recorded whole).
    pub fn partial_success_next(&self, rejected: i64, message: &str) {
        self.shared.lock().partial_next = Some((rejected, message.to_string()));
    }

    /// How many calls were answered with an injected failure.
    pub fn rejected_calls(&self) -> usize {
        self.shared.lock().rejected_calls
    }

    /// Every call seen, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Every trace request accepted so far, in arrival order.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every metrics request accepted so far.
    pub fn metrics_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.shared.lock().metrics.clone()
    }

    /// Every logs request accepted so far.
    pub fn logs_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.shared.lock().logs.clone()
    }

    /// The metrics and logs accepted so far, with the helpers of [`crate::signals`].
    pub fn signals(&self) -> crate::signals::Received {
        let state = self.shared.lock();
        crate::signals::Received {
            metrics: state.metrics.clone(),
            logs: state.logs.clone(),
        }
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

    /// How many spans were accepted.
    pub fn span_count(&self) -> usize {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    /// How many log records were accepted.
    pub fn log_record_count(&self) -> usize {
        let state = self.shared.lock();
        state
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
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

    /// Polls until `check` holds or `timeout` passed; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, check: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops serving (a collector going down) but keeps what was recorded; [`Receiver::restart`]
    /// serves again on the same port.
    pub async fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            let mut task = server.task;
            // Open client connections can hold a graceful shutdown; don't let that hang a test.
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                eprintln!("OTLP test receiver on {} did not stop in 5s", self.addr);
                task.abort();
            }
        }
    }

    /// Serves again on the same address after [`Receiver::kill`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.serve().await
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.kill().await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            server.task.abort();
        }
    }
}

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, made with the
/// `openssl` command (TLS libraries refuse a CA certificate as a server's own, so a single
/// self-signed certificate will not do).
pub fn test_certificates(dir: &std::path::Path) -> anyhow::Result<TlsIdentity> {
    std::fs::create_dir_all(dir)?;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .context("running openssl (apt-get install openssl)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let (ca_key, ca_cert) = (path("ca.key"), path("ca.pem"));
    let (key, csr, cert, ext) = (
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("server.ext"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=ztrace test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca_cert,
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ])?;
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ])?;
    Ok(TlsIdentity {
        cert_pem: std::fs::read(&cert)?,
        key_pem: std::fs::read(&key)?,
        ca_pem: std::fs::read(&ca_cert)?,
    })
}
