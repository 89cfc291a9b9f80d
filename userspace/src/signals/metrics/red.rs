//! RED metrics from finished spans: one duration histogram per protocol and side, named and
//! attributed as the OpenTelemetry semantic conventions (v1.36, the version the span attributes
//! follow) say, restricted to their low-cardinality attributes.
//!
//! What is deliberately left out: the raw URL path (`http.route` would be right, but ztrace sees
//! bytes, not the application's route table, so it is omitted rather than guessed), client
//! addresses and ports, Redis keys (`db.collection.name` only for SQL tables), query text. What
//! is still unbounded in principle (`server.address` from a `Host` header, DNS names) is capped
//! by [`super::series`].

use opentelemetry_semantic_conventions::{attribute as sc, metric as m};

use super::series::{AttrSet, Descriptor, Shape, Val};
use crate::model::{DbSystem, Exchange, Span, SpanKind, SpanStatus};
use crate::semconv::attributes::client_side_server;
use crate::semconv::names::{span_name, static_method};

/// The conventions' advice for HTTP and DNS durations (seconds).
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The conventions' advice for `db.client.operation.duration` (seconds).
pub const DB_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// `rpc.*.duration` is in milliseconds in v1.36 and has no advice: the SDK's default boundaries.
pub const RPC_BUCKETS_MS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// The RED instruments, in the order of [`Red`] indexes.
pub const INSTRUMENTS: [Descriptor; 6] = [
    hist(
        m::HTTP_SERVER_REQUEST_DURATION,
        "s",
        "Duration of HTTP server requests.",
        HTTP_BUCKETS,
    ),
    hist(
        m::HTTP_CLIENT_REQUEST_DURATION,
        "s",
        "Duration of HTTP client requests.",
        HTTP_BUCKETS,
    ),
    hist(
        m::DB_CLIENT_OPERATION_DURATION,
        "s",
        "Duration of database client operations.",
        DB_BUCKETS,
    ),
    hist(
        m::RPC_SERVER_DURATION,
        "ms",
        "Measures the duration of inbound RPC.",
        RPC_BUCKETS_MS,
    ),
    hist(
        m::RPC_CLIENT_DURATION,
        "ms",
        "Measures the duration of outbound RPC.",
        RPC_BUCKETS_MS,
    ),
    hist(
        m::DNS_LOOKUP_DURATION,
        "s",
        "Measures the time taken to perform a DNS lookup.",
        HTTP_BUCKETS,
    ),
];

const fn hist(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    bounds: &'static [f64],
) -> Descriptor {
    Descriptor {
        name,
        unit,
        description,
        shape: Shape::Histogram(bounds),
    }
}

/// Index into [`INSTRUMENTS`].
pub type Red = usize;
pub const HTTP_SERVER: Red = 0;
pub const HTTP_CLIENT: Red = 1;
pub const DB_CLIENT: Red = 2;
pub const RPC_SERVER: Red = 3;
pub const RPC_CLIENT: Red = 4;
pub const DNS_LOOKUP: Red = 5;

/// Longest `error.type` taken from a span's status message.
const MAX_ERROR_TYPE: usize = 64;

fn error_type(span: &Span, code: Option<String>) -> Option<String> {
    match &span.status {
        SpanStatus::Unset => None,
        SpanStatus::Error(msg) => Some(code.unwrap_or_else(|| {
            if msg.is_empty() {
                "_OTHER".to_string()
            } else {
                msg.chars().take(MAX_ERROR_TYPE).collect()
            }
        })),
    }
}

/// The measurement a span contributes: instrument, attributes, value in the instrument's unit.
/// None for spans no convention covers (e.g. the server side of a database).
pub fn measure(span: &Span) -> Option<(Red, AttrSet, f64)> {
    let mut a: AttrSet = Vec::with_capacity(8);
    measure_into(span, &mut a).map(|(which, v)| (which, a, v))
}

/// [`measure`] into a reused attribute buffer (cleared first): an HTTP span's measurement then
/// allocates nothing.
pub fn measure_into(span: &Span, a: &mut AttrSet) -> Option<(Red, f64)> {
    a.clear();
    let secs = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
    let server_addr = |a: &mut AttrSet, span: &Span| {
        let (address, port) = client_side_server(span);
        a.push((sc::SERVER_ADDRESS, address.into()));
        a.push((sc::SERVER_PORT, i64::from(port).into()));
    };
    let which = match (&span.exchange, span.kind) {
        (Exchange::Http(h), kind) => {
            let method = if span_name(span) == h.method {
                static_method(&h.method).map_or_else(|| h.method.as_str().into(), Val::fixed)
            } else {
                Val::fixed("_OTHER")
            };
            a.push((sc::HTTP_REQUEST_METHOD, method));
            if let Some(code) = h.status {
                a.push((sc::HTTP_RESPONSE_STATUS_CODE, i64::from(code).into()));
            }
            a.push((
                sc::URL_SCHEME,
                Val::fixed(if h.tls { "https" } else { "http" }),
            ));
            let version = h.version.trim();
            let version = version.strip_prefix("HTTP/").unwrap_or(version);
            if !version.is_empty() {
                a.push((sc::NETWORK_PROTOCOL_VERSION, Val::fixed(version)));
            }
            if kind == SpanKind::Client {
                server_addr(a, span);
            }
            if let Some(e) = error_type(span, h.status.map(|c| c.to_string())) {
                a.push((sc::ERROR_TYPE, e.into()));
            }
            match kind {
                SpanKind::Server => HTTP_SERVER,
                SpanKind::Client => HTTP_CLIENT,
            }
        }
        (Exchange::Db(d), SpanKind::Client) => {
            a.push((sc::DB_SYSTEM_NAME, d.system.name().into()));
            if let Some(op) = &d.operation {
                a.push((sc::DB_OPERATION_NAME, op.as_str().into()));
            }
            // A Redis "collection" is the key: unbounded, so only SQL tables are kept.
            if d.system != DbSystem::Redis
                && let Some(c) = &d.collection
            {
                a.push((sc::DB_COLLECTION_NAME, c.as_str().into()));
            }
            if let Some(ns) = &d.namespace {
                a.push((sc::DB_NAMESPACE, ns.as_str().into()));
            }
            server_addr(a, span);
            if let Some((code, _)) = &d.error {
                a.push((sc::DB_RESPONSE_STATUS_CODE, code.as_str().into()));
                a.push((sc::ERROR_TYPE, code.as_str().into()));
            }
            DB_CLIENT
        }
        (Exchange::Rpc(r), kind) => {
            a.push((sc::RPC_SYSTEM, "grpc".into()));
            a.push((sc::RPC_SERVICE, r.service.as_str().into()));
            a.push((sc::RPC_METHOD, r.method.as_str().into()));
            if let Some(code) = r.grpc_status {
                a.push((sc::RPC_GRPC_STATUS_CODE, i64::from(code).into()));
            }
            a.push((sc::NETWORK_PROTOCOL_VERSION, "2".into()));
            if kind == SpanKind::Client {
                server_addr(a, span);
            }
            if let Some(e) = error_type(span, None) {
                a.push((sc::ERROR_TYPE, e.into()));
            }
            let ms = secs * 1e3;
            return Some((
                match kind {
                    SpanKind::Server => RPC_SERVER,
                    SpanKind::Client => RPC_CLIENT,
                },
                ms,
            ));
        }
        (Exchange::Dns(d), SpanKind::Client) => {
            a.push((sc::DNS_QUESTION_NAME, d.name.as_str().into()));
            if let Some(e) = error_type(span, None) {
                a.push((sc::ERROR_TYPE, e.into()));
            }
            DNS_LOOKUP
        }
        _ => return None,
    };
    Some((which, secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{client_span, server_span};

    fn get<'a>(a: &'a AttrSet, k: &str) -> Option<&'a Val> {
        a.iter().find(|(key, _)| *key == k).map(|(_, v)| v)
    }

    #[test]
    fn http_server_span_has_low_cardinality_attributes_only() {
        let span = server_span();
        let (which, a, v) = measure(&span).unwrap();
        assert_eq!(which, HTTP_SERVER);
        assert_eq!(
            v,
            (span.end_unix_ns - span.start_unix_ns) as f64 / 1e9,
            "seconds"
        );
        let keys: Vec<&str> = a.iter().map(|(k, _)| *k).collect();
        for forbidden in ["url.path", "url.query", "client.address", "http.route"] {
            assert!(!keys.contains(&forbidden), "{keys:?}");
        }
        assert_eq!(get(&a, "http.request.method"), Some(&"GET".into()));
        assert!(get(&a, "http.response.status_code").is_some());
        assert!(get(&a, "server.address").is_none(), "opt-in for servers");
    }

    #[test]
    fn http_client_span_names_the_server() {
        let span = client_span();
        let (which, a, _) = measure(&span).unwrap();
        assert_eq!(which, HTTP_CLIENT);
        assert!(get(&a, "server.address").is_some());
        assert!(get(&a, "server.port").is_some());
    }

    #[test]
    fn unknown_method_and_errors() {
        let mut span = server_span();
        span.http_mut().unwrap().method = "BREW".into();
        span.http_mut().unwrap().status = Some(503);
        span.status = SpanStatus::Error("503".into());
        let (_, a, _) = measure(&span).unwrap();
        assert_eq!(get(&a, "http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(get(&a, "error.type"), Some(&"503".into()));
    }

    #[test]
    fn database_and_rpc_spans() {
        use crate::model::{DbExchange, RpcExchange};
        let mut span = client_span();
        span.exchange = Exchange::Db(DbExchange {
            system: DbSystem::Redis,
            operation: Some("GET".into()),
            collection: Some("user:12345".into()),
            namespace: None,
            query_text: None,
            error: None,
            rows: None,
        });
        let (which, a, _) = measure(&span).unwrap();
        assert_eq!(which, DB_CLIENT);
        assert_eq!(get(&a, "db.system.name"), Some(&"redis".into()));
        assert!(
            get(&a, "db.collection.name").is_none(),
            "a Redis key is not a collection"
        );
        // The server side of a database has no convention: no measurement.
        span.kind = SpanKind::Server;
        assert!(measure(&span).is_none());
        span.kind = SpanKind::Client;
        span.exchange = Exchange::Rpc(RpcExchange {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            grpc_status: Some(0),
            ..Default::default()
        });
        let (which, a, v) = measure(&span).unwrap();
        assert_eq!(which, RPC_CLIENT);
        assert_eq!(INSTRUMENTS[which].unit, "ms");
        assert_eq!(v, (span.end_unix_ns - span.start_unix_ns) as f64 / 1e6);
        assert_eq!(get(&a, "rpc.grpc.status_code"), Some(&Val::Int(0)));
    }
}
