//! Span status per the semantic conventions: which answers count as errors, per protocol and
//! side. Decided once, where a span is finished (the linker); outputs only print it.

use crate::model::{Exchange, SpanKind, SpanStatus};

use super::names::grpc_code_name;

/// Span status per the conventions: HTTP servers fail on 5xx, clients on 4xx and 5xx; a database
/// call fails when the server answered with an error; any exchange fails when it was cut off.
pub fn status_of(exchange: &Exchange, kind: SpanKind, error: Option<&str>) -> SpanStatus {
    if let Some(e) = error {
        return SpanStatus::Error(e.to_string());
    }
    match exchange {
        Exchange::Http(h) => match (h.status, kind) {
            (Some(code), SpanKind::Server) if code >= 500 => SpanStatus::Error(code.to_string()),
            (Some(code), SpanKind::Client) if code >= 400 => SpanStatus::Error(code.to_string()),
            _ => SpanStatus::Unset,
        },
        Exchange::Rpc(r) => match (r.grpc_status, kind) {
            // Server side: only codes that mean the server failed (RPC conventions).
            (Some(code @ (2 | 4 | 12 | 13 | 14 | 15)), SpanKind::Server) => {
                SpanStatus::Error(grpc_code_name(code).to_string())
            }
            (Some(code), SpanKind::Client) if code != 0 => {
                SpanStatus::Error(grpc_code_name(code).to_string())
            }
            (None, _) if r.http_status.is_some_and(|s| s >= 400) => {
                SpanStatus::Error(format!("HTTP {}", r.http_status.unwrap_or_default()))
            }
            _ => SpanStatus::Unset,
        },
        Exchange::Dns(d) => match d.rcode.as_deref() {
            Some("NOERROR") | None => SpanStatus::Unset,
            Some(rcode) if kind == SpanKind::Client || rcode != "NXDOMAIN" => {
                SpanStatus::Error(rcode.to_string())
            }
            Some(_) => SpanStatus::Unset,
        },
        Exchange::Db(d) => match &d.error {
            Some((code, message)) => SpanStatus::Error(if message.is_empty() {
                code.clone()
            } else {
                format!("{code} {message}")
            }),
            None => SpanStatus::Unset,
        },
    }
}
