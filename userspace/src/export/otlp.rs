//! OTLP/gRPC output: turns batches of spans into `ExportTraceServiceRequest`s (one
//! `ResourceSpans` per traced process, one `ScopeSpans` "ztrace") and sends them to a collector
//! with tonic, retrying transient failures with jittered exponential back-off.
//!
//! Failure policy: a batch is retried on UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
//! ABORTED, CANCELLED and transport/connect errors for at most `3 × export_timeout` (or until the
//! shutdown deadline), then dropped; other errors drop it at once. Either way it is counted, and a
//! warning is logged once per failure streak (later drops in the streak go to debug) plus a note
//! when export recovers.

use std::error::Error as _;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{Control, Counters, ProcessTable};
use crate::model::Span;

/// The gRPC method the OTLP trace exporter calls.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// First back-off; doubles per retry up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a batch is retried, in units of `export_timeout`.
const RETRY_BUDGET_FACTOR: u32 = 3;

/// `Span.flags`: whether the parent is remote is always known here.
pub(crate) fn span_flags(span: &Span) -> u32 {
    let has = otlp::SpanFlags::ContextHasIsRemoteMask as u32;
    if span.parent_is_remote {
        has | otlp::SpanFlags::ContextIsRemoteMask as u32
    } else {
        has
    }
}

/// Why an attempt failed.
enum Failure {
    Status(tonic::Status),
    TimedOut(Duration),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::TimedOut(_) => true,
            Failure::Status(s) => {
                matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::ResourceExhausted
                        | Code::DeadlineExceeded
                        | Code::Aborted
                        | Code::Cancelled
                ) || is_transport_error(s)
            }
        }
    }
}

/// Errors raised below gRPC (connect, I/O, HTTP/2) rather than sent by the collector.
fn is_transport_error(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::TimedOut(d) => write!(f, "no answer within {d:?}"),
            Failure::Status(s) => {
                write!(f, "{:?}", s.code())?;
                if !s.message().is_empty() {
                    write!(f, ": {}", s.message())?;
                }
                // Transport errors keep the useful part ("Connection refused") in the sources;
                // tonic repeats some of the chain in the message, so show each part once.
                let mut shown = s.message().to_string();
                let mut source = s.source();
                while let Some(e) = source {
                    let text = e.to_string();
                    if !text.is_empty() && text != "transport error" && !shown.contains(&text) {
                        write!(f, ": {text}")?;
                        shown.push_str(&text);
                    }
                    source = e.source();
                }
                Ok(())
            }
        }
    }
}

/// A back-off of `base`, jittered to a uniform pick in `[base/2, base]`.
fn jittered(base: Duration) -> Duration {
    let half = base / 2;
    let extra_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::random_range(0..=extra_ns))
}

/// Batches dropped in the current failure streak.
struct Streak {
    batches: u64,
    spans: u64,
}

pub(crate) struct OtlpSink {
    endpoint: String,
    client: tonic::client::Grpc<Channel>,
    export_timeout: Duration,
    streak: Option<Streak>,
}

/// A scheme-less endpoint (`127.0.0.1:4317`) means plaintext gRPC.
pub(crate) fn with_scheme(uri: Uri) -> Uri {
    if uri.scheme().is_some() {
        return uri;
    }
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(tonic::codegen::http::uri::Scheme::HTTP);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(tonic::codegen::http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or(uri)
}

impl OtlpSink {
    /// Must be called inside the tokio runtime that will drive it; connects lazily.
    pub(crate) fn new(endpoint: Uri, export_timeout: Duration) -> Self {
        let endpoint = with_scheme(endpoint);
        if endpoint.scheme_str() == Some("https") {
            log::warn!(
                "OTLP endpoint {endpoint} uses https, but this build has no TLS support; export will fail"
            );
        }
        let shown = endpoint.to_string();
        let shown = shown.strip_suffix('/').unwrap_or(&shown).to_string();
        let channel = Endpoint::from(endpoint)
            .connect_timeout(export_timeout)
            .timeout(export_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(export_timeout)
            .connect_lazy();
        OtlpSink {
            endpoint: shown,
            client: tonic::client::Grpc::new(channel),
            export_timeout,
            streak: None,
        }
    }

    /// Sends one batch, retrying as the policy says; accounts for every span of it in `counters`.
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
        let mut encoded = Vec::new();
        super::wire::encode_request(spans, table, &mut encoded);
        let request = bytes::Bytes::from(encoded);
        let n = spans.len();
        let started = Instant::now();
        let budget_end = started
            .checked_add(self.export_timeout * RETRY_BUDGET_FACTOR)
            .unwrap_or(started + Duration::from_secs(3600));
        // The batch's own budget, cut short by a shutdown deadline.
        let end = |ctl: &Control| ctl.deadline().map_or(budget_end, |d| d.min(budget_end));
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failure = match self.attempt(request.clone(), &end, ctl).await {
                Ok(response) => {
                    self.succeeded(n, response, counters);
                    return;
                }
                Err(f) => f,
            };
            if !failure.retryable() {
                self.give_up(n, &failure, attempts, counters);
                return;
            }
            let wake = Instant::now() + jittered(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
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
            log::debug!("retrying OTLP export to {} after: {failure}", self.endpoint);
            counters.retried();
        }
    }

    /// One export call, bounded by `export_timeout` and by the batch's end.
    async fn attempt(
        &self,
        request: bytes::Bytes,
        end: &impl Fn(&Control) -> Instant,
        ctl: &mut Control,
    ) -> Result<ExportTraceServiceResponse, Failure> {
        let started = Instant::now();
        let mut client = self.client.clone();
        let call = async move {
            client
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("collector not reachable: {e}")))?;
            client
                .unary(
                    tonic::Request::new(request),
                    tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH),
                    super::wire::RawCodec::<ExportTraceServiceResponse>::default(),
                )
                .await
        };
        tokio::pin!(call);
        loop {
            let stop = (started + self.export_timeout).min(end(ctl));
            tokio::select! {
                result = &mut call => {
                    return result.map(tonic::Response::into_inner).map_err(Failure::Status);
                }
                _ = tokio::time::sleep_until(stop) => {
                    return Err(Failure::TimedOut(stop.saturating_duration_since(started)));
                }
                _ = ctl.requested(), if ctl.deadline().is_none() => {}
            }
        }
    }

    fn succeeded(&mut self, n: usize, response: ExportTraceServiceResponse, counters: &Counters) {
        let mut rejected = 0usize;
        if let Some(partial) = response.partial_success {
            rejected = usize::try_from(partial.rejected_spans.max(0))
                .unwrap_or(usize::MAX)
                .min(n);
            if rejected > 0 || !partial.error_message.is_empty() {
                log::warn!(
                    "collector at {} rejected {} of {n} spans: {}",
                    self.endpoint,
                    partial.rejected_spans,
                    if partial.error_message.is_empty() {
                        "(no message)"
                    } else {
                        &partial.error_message
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
                "OTLP export to {} recovered; {} spans in {} batches were dropped meanwhile",
                self.endpoint,
                streak.spans,
                streak.batches
            );
        }
    }

    fn give_up(&mut self, n: usize, failure: &Failure, attempts: u32, counters: &Counters) {
        counters.failed(n, true);
        match &mut self.streak {
            None => {
                log::warn!(
                    "OTLP export to {} failed ({failure}); dropped a batch of {n} spans after {attempts} attempt(s). \
                     Further failures are logged at debug level until export recovers",
                    self.endpoint
                );
                self.streak = Some(Streak {
                    batches: 1,
                    spans: n as u64,
                });
            }
            Some(streak) => {
                streak.batches += 1;
                streak.spans += n as u64;
                log::debug!(
                    "OTLP export to {} failed ({failure}); dropped a batch of {n} spans after {attempts} attempt(s)",
                    self.endpoint
                );
            }
        }
    }
}

/// The request built from `opentelemetry-proto` structs: the reference the direct wire encoding
/// (`wire.rs`) is tested against.
#[cfg(test)]
pub(crate) mod reference {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1 as otlp;

    use super::span_flags;
    use crate::export::{
        AttrValue, Attrs, ProcessTable, SCOPE_NAME, SCOPE_VERSION, resource_attributes,
        span_attributes, span_name,
    };
    use crate::model::{Span, SpanKind, SpanStatus};

    fn any_value(v: AttrValue) -> AnyValue {
        let value = match v {
            AttrValue::Str(s) => any_value::Value::StringValue(s),
            AttrValue::Int(i) => any_value::Value::IntValue(i),
            AttrValue::StrArray(items) => any_value::Value::ArrayValue(ArrayValue {
                values: items
                    .into_iter()
                    .map(|s| AnyValue {
                        value: Some(any_value::Value::StringValue(s)),
                    })
                    .collect(),
            }),
        };
        AnyValue { value: Some(value) }
    }

    pub(crate) fn key_values(attrs: Attrs) -> Vec<KeyValue> {
        attrs
            .into_iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: Some(any_value(v)),
            })
            .collect()
    }

    /// One model span as an OTLP span.
    pub(crate) fn to_otlp_span(span: &Span) -> otlp::Span {
        let kind = match span.kind {
            SpanKind::Server => otlp::span::SpanKind::Server,
            SpanKind::Client => otlp::span::SpanKind::Client,
        };
        let status = match &span.status {
            SpanStatus::Unset => None,
            SpanStatus::Error(msg) => Some(otlp::Status {
                message: msg.clone(),
                code: otlp::status::StatusCode::Error as i32,
            }),
        };
        otlp::Span {
            trace_id: span.trace_id.0.to_vec(),
            span_id: span.span_id.0.to_vec(),
            parent_span_id: span
                .parent_span_id
                .map(|p| p.0.to_vec())
                .unwrap_or_default(),
            flags: span_flags(span),
            name: span_name(span),
            kind: kind as i32,
            start_time_unix_nano: span.start_unix_ns,
            end_time_unix_nano: span.end_unix_ns.max(span.start_unix_ns),
            attributes: key_values(span_attributes(span)),
            status,
            ..Default::default()
        }
    }

    /// A batch as one request: one `ResourceSpans` per pid, in order of first appearance.
    pub(crate) fn build_request(spans: &[Span], table: &ProcessTable) -> ExportTraceServiceRequest {
        let mut groups: Vec<(u32, Vec<otlp::Span>)> = Vec::new();
        for span in spans {
            let converted = to_otlp_span(span);
            match groups.iter_mut().find(|(pid, _)| *pid == span.pid) {
                Some((_, list)) => list.push(converted),
                None => groups.push((span.pid, vec![converted])),
            }
        }
        let resource_spans = groups
            .into_iter()
            .map(|(pid, spans)| otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes: key_values(resource_attributes(
                        pid,
                        table.get(pid),
                        table.host_fallback(),
                    )),
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE_NAME.to_string(),
                        version: SCOPE_VERSION.to_string(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
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

    use super::reference::*;
    use super::*;
    use crate::export::test_support::*;
    use crate::export::{ExportConfig, ExportStats, Exporter, Output};
    use crate::model::{SpanId, TraceId};

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
    fn failure_classification() {
        let retry = |c: Code| Failure::Status(tonic::Status::new(c, "x")).retryable();
        assert!(retry(Code::Unavailable));
        assert!(retry(Code::ResourceExhausted));
        assert!(retry(Code::DeadlineExceeded));
        assert!(retry(Code::Aborted));
        assert!(retry(Code::Cancelled));
        assert!(!retry(Code::InvalidArgument));
        assert!(!retry(Code::Unimplemented));
        assert!(!retry(Code::Unauthenticated));
        assert!(Failure::TimedOut(Duration::from_secs(1)).retryable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        let failure = Failure::Status(status);
        assert!(failure.retryable());
        assert_eq!(failure.to_string(), "Unknown: refused");
        let timed_out = Failure::TimedOut(Duration::from_millis(1500));
        assert_eq!(timed_out.to_string(), "no answer within 1.5s");
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn scheme_less_endpoint_means_http() {
        let uri: Uri = "127.0.0.1:4317".parse().unwrap_or_default();
        assert_eq!(with_scheme(uri).to_string(), "http://127.0.0.1:4317/");
    }

    // ---- end to end, against the in-process receiver ----

    fn otlp_config(endpoint: &str) -> ExportConfig {
        ExportConfig {
            output: Output::Otlp {
                endpoint: endpoint.parse().unwrap_or_default(),
            },
            batch_delay: Duration::from_millis(50),
            export_timeout: Duration::from_secs(2),
            ..ExportConfig::default()
        }
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
        for i in 1..=10 {
            exporter.submit(numbered(i, 1));
        }
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
        check::<crate::export::ExportHandle>();
    }

    #[tokio::test]
    async fn gives_up_after_retry_budget() {
        let exporter = Exporter::spawn(ExportConfig {
            export_timeout: Duration::from_millis(100),
            batch_delay: Duration::from_millis(10),
            ..otlp_config(&format!("http://{}", closed_port()))
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
}
