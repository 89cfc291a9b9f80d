//! The OTLP transports — gRPC (tonic, with requests that are already-encoded protobuf bytes) and
//! HTTP/1.1 with `application/x-protobuf` bodies (hyper) — behind one call: send these bytes to
//! this signal's endpoint, get the response's bytes back or a classified [`Failure`].
//!
//! Both carry the configured headers, gzip the body when asked, bound each attempt by the
//! configured timeout (the caller does), and speak TLS for `https` endpoints: the configured CA
//! file or else the system's roots, and an optional client certificate. This module decides
//! nothing about retries; it reports what the collector said in a form the retry loop in
//! [`super::otlp`] can act on: whether the failure is retryable per the OTLP specification, and
//! the delay the collector asked for (gRPC `RetryInfo` in `grpc-status-details-bin`, HTTP
//! `Retry-After`).

use std::error::Error as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use prost::Message as _;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{Compression, OtlpTarget, Protocol, Signal};

/// Largest response body read from a collector (responses are tiny; this bounds a misbehaving one).
const MAX_RESPONSE: usize = 1 << 20;

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The collector answered with a gRPC error status.
    Grpc(tonic::Status),
    /// The collector answered with an HTTP error status.
    Http {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Connecting or talking to the collector failed below OTLP (refused, reset, TLS).
    Connection(String),
    /// No answer within the attempt's time limit.
    TimedOut(Duration),
    /// A configuration the transport cannot use (bad TLS files): retrying will not help.
    Setup(String),
}

impl Failure {
    /// Retryable per the OTLP specification's tables (plus transport-level failures, which are
    /// what "collector down" looks like).
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Failure::TimedOut(_) | Failure::Connection(_) => true,
            Failure::Setup(_) => false,
            Failure::Http { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Failure::Grpc(s) => match s.code() {
                Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss => true,
                // Only when the server says when to come back.
                Code::ResourceExhausted => retry_info(s).is_some(),
                _ => is_transport_error(s),
            },
        }
    }

    /// The delay the collector asked for.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Grpc(s) => retry_info(s),
            Failure::Http { retry_after, .. } => *retry_after,
            _ => None,
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
            Failure::Connection(e) => write!(f, "{e}"),
            Failure::Setup(e) => write!(f, "{e}"),
            Failure::Http {
                status, message, ..
            } => {
                write!(f, "HTTP {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Failure::Grpc(s) => {
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

/// The `RetryInfo` delay in a status's details (`grpc-status-details-bin`), if any.
fn retry_info(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info()?.retry_delay
}

/// A `Retry-After` header: delay-seconds (an HTTP date is not honoured; back-off applies).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The gRPC method path of a signal's export call.
fn grpc_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

/// One signal's connection to its collector.
pub(crate) enum Transport {
    Grpc(Box<GrpcTransport>),
    Http(Box<HttpTransport>),
}

impl Transport {
    /// Must be called inside the tokio runtime that will drive it; connects lazily, so a
    /// collector that is down is not an error here.
    pub(crate) fn new(target: &OtlpTarget) -> Result<Transport, String> {
        Ok(match target.protocol {
            Protocol::Grpc => Transport::Grpc(Box::new(GrpcTransport::new(target)?)),
            Protocol::HttpProtobuf => Transport::Http(Box::new(HttpTransport::new(target)?)),
        })
    }

    /// Sends one encoded request; returns the encoded response.
    pub(crate) async fn send(&mut self, body: Bytes) -> Result<Bytes, Failure> {
        match self {
            Transport::Grpc(t) => t.send(body).await,
            Transport::Http(t) => t.send(body).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC

pub(crate) struct GrpcTransport {
    client: tonic::client::Grpc<Channel>,
    path: &'static str,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl GrpcTransport {
    fn new(target: &OtlpTarget) -> Result<Self, String> {
        let uri = &target.endpoint;
        let mut endpoint = Endpoint::from(uri.clone())
            .connect_timeout(target.timeout)
            .timeout(target.timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(target.timeout)
            .user_agent(concat!("ztrace/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| format!("user agent: {e}"))?;
        if uri.scheme_str() == Some("https") {
            let mut tls = ClientTlsConfig::new();
            tls = match &target.tls.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &target.tls.client_identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(host) = uri.host() {
                tls = tls.domain_name(host.trim_start_matches('[').trim_end_matches(']'));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS setup for {uri}: {e}"))?;
        }
        let mut client = tonic::client::Grpc::new(endpoint.connect_lazy());
        if target.compression == Compression::Gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let mut metadata = Vec::new();
        for (k, v) in &target.headers {
            // Validated by the config; skip rather than fail if tonic is stricter.
            match (
                AsciiMetadataKey::from_bytes(k.as_bytes()),
                AsciiMetadataValue::try_from(v.as_str()),
            ) {
                (Ok(k), Ok(v)) => metadata.push((k, v)),
                _ => log::warn!("header `{k}` cannot be sent as gRPC metadata; skipped"),
            }
        }
        Ok(GrpcTransport {
            client,
            path: grpc_path(target.signal),
            metadata,
        })
    }

    async fn send(&mut self, body: Bytes) -> Result<Bytes, Failure> {
        let mut client = self.client.clone();
        client.ready().await.map_err(|e| {
            let mut text = format!("collector not reachable: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                let t = s.to_string();
                if !text.contains(&t) {
                    text.push_str(": ");
                    text.push_str(&t);
                }
                source = s.source();
            }
            Failure::Connection(text)
        })?;
        let mut request = tonic::Request::new(body);
        for (k, v) in &self.metadata {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        client
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(self.path),
                super::wire::RawCodec,
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(Failure::Grpc)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A minimal OTLP/HTTP client: one kept-alive HTTP/1.1 connection per signal, re-made when it
/// breaks. Exports of one signal are sequential, so a pool would buy nothing.
pub(crate) struct HttpTransport {
    uri: http::Uri,
    host: String,
    port: u16,
    authority: String,
    tls: Option<tokio_rustls::TlsConnector>,
    headers: http::HeaderMap,
    gzip: bool,
    conn: Option<Sender>,
}

fn tls_connector(target: &OtlpTarget) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &target.tls.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("CA certificate: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A broken system certificate must not stop the others from working.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the collector with".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match &target.tls.client_identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl HttpTransport {
    fn new(target: &OtlpTarget) -> Result<Self, String> {
        let uri = target.endpoint.clone();
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| format!("{uri} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let tls = if https {
            Some(tls_connector(target)?)
        } else {
            None
        };
        let mut headers = http::HeaderMap::new();
        for (k, v) in &target.headers {
            match (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => {
                    headers.append(k, v);
                }
                _ => log::warn!("header `{k}` cannot be sent; skipped"),
            }
        }
        Ok(HttpTransport {
            uri,
            host,
            port,
            authority,
            tls,
            headers,
            gzip: target.compression == Compression::Gzip,
            conn: None,
        })
    }

    async fn connect(&self) -> Result<Sender, Failure> {
        let conn_err = |what: &str, e: &dyn std::fmt::Display| {
            Failure::Connection(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| conn_err("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| Failure::Setup(format!("TLS server name {}: {e}", self.host)))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| conn_err("TLS handshake with", &e))?;
                handshake(stream).await
            }
        }
    }

    async fn send(&mut self, body: Bytes) -> Result<Bytes, Failure> {
        let mut sender = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect().await?;
        }
        let body = if self.gzip { gzip(&body)? } else { body };
        let mut request = http::Request::post(self.uri.clone())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("ztrace/", env!("CARGO_PKG_VERSION")),
            );
        if self.gzip {
            request = request.header(http::header::CONTENT_ENCODING, "gzip");
        }
        let mut request = request
            .body(Full::new(body))
            .map_err(|e| Failure::Setup(format!("building the request: {e}")))?;
        // HTTP/1.1 wants origin-form: the path only.
        if let Some(pq) = self.uri.path_and_query() {
            *request.uri_mut() = pq.as_str().parse().unwrap_or_default();
        }
        request.headers_mut().extend(self.headers.clone());
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Connection(format!("HTTP exchange failed: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| Failure::Connection(format!("reading the response: {e}")))?
            .to_bytes();
        // Keep the connection for the next export unless the server is closing it.
        let closing = parts
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if !closing {
            self.conn = Some(sender);
        }
        let status = parts.status.as_u16();
        if parts.status.is_success() {
            return Ok(body);
        }
        let retry_after = parts
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Err(Failure::Http {
            status,
            message: error_message(&parts.headers, &body),
            retry_after,
        })
    }
}

async fn handshake<S>(io: S) -> Result<Sender, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| Failure::Connection(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("OTLP/HTTP connection ended: {e}");
        }
    });
    Ok(sender)
}

/// The message of an error response: a `google.rpc.Status` (protobuf) or the start of a text body.
fn error_message(headers: &http::HeaderMap, body: &[u8]) -> String {
    let protobuf = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    if protobuf && let Ok(status) = tonic_types::Status::decode(body) {
        return status.message;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn gzip(body: &[u8]) -> Result<Bytes, Failure> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(body)
        .and_then(|_| enc.finish())
        .map(Bytes::from)
        .map_err(|e| Failure::Setup(format!("gzip: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_retry(code: Code, delay: Option<Duration>) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt as _};
        match delay {
            Some(d) => tonic::Status::with_error_details(
                code,
                "busy",
                ErrorDetails::with_retry_info(Some(d)),
            ),
            None => tonic::Status::new(code, "busy"),
        }
    }

    #[test]
    fn grpc_classification_follows_the_specification() {
        let retry = |c: Code| Failure::Grpc(tonic::Status::new(c, "x")).retryable();
        for c in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(retry(c), "{c:?}");
        }
        for c in [
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
        ] {
            assert!(!retry(c), "{c:?}");
        }
        let with = Failure::Grpc(status_with_retry(
            Code::ResourceExhausted,
            Some(Duration::from_millis(1500)),
        ));
        assert!(with.retryable());
        assert_eq!(with.retry_after(), Some(Duration::from_millis(1500)));
        let without = Failure::Grpc(status_with_retry(Code::Unavailable, None));
        assert_eq!(without.retry_after(), None);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let failure = Failure::Grpc(tonic::Status::from_error(Box::new(io)));
        assert!(failure.retryable());
        assert_eq!(failure.to_string(), "Unknown: refused");
        assert!(Failure::TimedOut(Duration::from_secs(1)).retryable());
        assert_eq!(
            Failure::TimedOut(Duration::from_millis(1500)).to_string(),
            "no answer within 1.5s"
        );
    }

    #[test]
    fn http_classification_and_retry_after() {
        let http = |status: u16| Failure::Http {
            status,
            message: String::new(),
            retry_after: None,
        };
        for s in [429, 502, 503, 504] {
            assert!(http(s).retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(!http(s).retryable(), "{s}");
        }
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        let body = tonic_types::Status {
            code: 3,
            message: "bad spans".into(),
            details: vec![],
        }
        .encode_to_vec();
        assert_eq!(error_message(&headers, &body), "bad spans");
        assert_eq!(
            error_message(&http::HeaderMap::new(), b"  too\nmany   requests "),
            "too many requests"
        );
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let data = vec![7u8; 10_000];
        let packed = gzip(&data).unwrap();
        assert!(packed.len() < 200);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(packed.as_ref())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
