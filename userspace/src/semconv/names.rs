//! Span names per the semantic conventions: the HTTP method (or `HTTP`), `{service}/{method}`
//! for RPC, `{operation} {collection}` for databases, and the names of gRPC status codes. The
//! one home of the list of known HTTP methods; the linker and every output use it.

use std::borrow::Cow;

use crate::model::{Exchange, HttpExchange, Span};

/// The methods HTTP semantic conventions know; anything else is reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

pub(crate) fn known_method(method: &str) -> bool {
    KNOWN_METHODS.contains(&method)
}

/// The conventions' own spelling of a known method (a `'static` string, so metric attributes
/// need no copy of it).
pub(crate) fn static_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|m| *m == method)
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
        client: None,
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

/// Span name per the conventions: HTTP — the method; databases — "{operation} {collection}",
/// falling back to the operation, then the system.
pub fn exchange_name(exchange: &Exchange) -> Cow<'static, str> {
    match exchange {
        Exchange::Http(h) => Cow::Borrowed(method_span_name(&h.method)),
        Exchange::Rpc(r) => format!("{}/{}", r.service, r.method).into(),
        Exchange::Dns(d) => format!("DNS {} {}", d.qtype, d.name).into(),
        Exchange::Db(d) => match (&d.operation, &d.collection) {
            (Some(op), Some(coll)) => format!("{op} {coll}").into(),
            (Some(op), None) => op.clone().into(),
            _ => Cow::Borrowed(d.system.name()),
        },
    }
}

/// Name of a gRPC status code.
pub fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Span name per the HTTP conventions when no route is known: the method, or "HTTP".
pub fn method_span_name(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("HTTP")
}
