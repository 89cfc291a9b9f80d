//! What an "operation" is for anomaly detection: the unit a baseline is kept for, per service.
//! HTTP and RPC servers: the method and a path template (ztrace sees bytes, not the route table,
//! so identifiers in the path — numbers, long hex, UUIDs — become `{id}`, and only the first
//! segments count); database clients: the span name (`SELECT users`, `GET`). Other spans (HTTP
//! clients, DNS) are measured by the server they call, where that is traced.

use std::borrow::Cow;

use crate::model::{Exchange, Span, SpanKind};
use crate::semconv::names::span_name;

/// Path segments kept in an operation name.
const MAX_SEGMENTS: usize = 3;
/// Longest operation name.
const MAX_LEN: usize = 96;

/// The operation of a span, None when it is not measured.
pub fn operation(span: &Span) -> Option<String> {
    let name = match (&span.exchange, span.kind) {
        (Exchange::Http(h), SpanKind::Server) => {
            let path = h.target.split(['?', '#']).next().unwrap_or("");
            let mut t = String::with_capacity(path.len().min(MAX_LEN));
            t.push_str(&span_name(span));
            t.push(' ');
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            if segments.is_empty() {
                t.push('/');
            }
            for seg in segments.iter().take(MAX_SEGMENTS) {
                t.push('/');
                t.push_str(&template(seg));
            }
            if segments.len() > MAX_SEGMENTS {
                t.push_str("/…");
            }
            t
        }
        (Exchange::Rpc(_), SpanKind::Server) | (Exchange::Db(_), SpanKind::Client) => {
            span_name(span).into_owned()
        }
        _ => return None,
    };
    Some(truncate(name))
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_LEN {
        let mut cut = MAX_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A path segment, or `{id}` when it looks like an identifier.
fn template(seg: &str) -> Cow<'_, str> {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    let hex = seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let id = digits == seg.len()
        || (digits > 0 && seg.len() >= 8 && digits * 2 >= seg.len())
        || (hex && seg.len() >= 16);
    if id {
        Cow::Borrowed("{id}")
    } else {
        Cow::Borrowed(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{client_span, server_span};

    #[test]
    fn paths_become_templates() {
        let mut s = server_span();
        let cases = [
            ("/api/orders?limit=10", "GET /api/orders"),
            ("/users/12345/cart", "GET /users/{id}/cart"),
            ("/o/550e8400-e29b-41d4-a716-446655440000", "GET /o/{id}"),
            ("/a/b/c/d/e", "GET /a/b/c/…"),
            ("/", "GET /"),
            ("/v2/items", "GET /v2/items"),
        ];
        for (target, want) in cases {
            s.http_mut().unwrap().target = target.into();
            assert_eq!(operation(&s).as_deref(), Some(want), "{target}");
        }
        // HTTP clients are measured at the server they call.
        assert_eq!(operation(&client_span()), None);
    }
}
