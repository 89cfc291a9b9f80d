//! Direct reads of well-known span attributes. A span holds a typed exchange, not an attribute
//! map: `semconv::attributes::visit_own_attributes` derives its attributes, which costs a walk
//! over all of them (host split, target split, trims). The keys rules read most are resolved at
//! compile time to a [`Known`] and read here straight from the typed fields of an HTTP span
//! (`url.path` is the path part of `HttpExchange::target`), with the same results as the walk
//! (a differential test in `known_tests.rs` compares the two on random spans). Other exchanges,
//! and what is not cheap to derive here, answer "not handled" and take the walk.

use std::borrow::Cow;
use std::net::IpAddr;

use super::key::Known;
use crate::model::{Exchange, Span, SpanKind, SpanStatus};
use crate::semconv::attributes::{redact_query_with, split_host, split_target};
use crate::semconv::names::known_method;

/// One of the span's own attributes, addresses kept as addresses until read.
#[derive(Clone, Debug, PartialEq)]
pub enum Own<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Addr(IpAddr),
}

/// `split_target(target).0` without its `char` searches for an origin-form target (nearly
/// every request): the path ends at the first `?` or `#`.
fn url_path(target: &str) -> &str {
    if target.starts_with('/') {
        let b = target.as_bytes();
        // Most paths are short: eight bytes at a time costs less than setting up a vector search.
        let end = if b.len() <= 64 {
            query_or_fragment(b)
        } else {
            memchr::memchr2(b'?', b'#', b)
        };
        &target[..end.unwrap_or(b.len())]
    } else {
        split_target(target).0
    }
}

/// The first `?` or `#` of `b`, a word at a time: a byte of `x` is zero where it was one of
/// them, and the lowest flagged byte of `(x - 0x01…) & !x & 0x80…` is the first zero byte (borrows
/// only flag bytes above a zero one).
fn query_or_fragment(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        let m = zero(w ^ (ONES * u64::from(b'?'))) | zero(w ^ (ONES * u64::from(b'#')));
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'?' || c == b'#')
        .map(|p| at + p)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `k` of `span`: `Some(None)` when the span has no such attribute, `None` when this span is not
/// read directly (the caller walks the semantic-convention mapping instead).
#[inline]
pub fn read(span: &Span, k: Known) -> Option<Option<Own<'_>>> {
    let Exchange::Http(http) = &span.exchange else {
        return None;
    };
    let server = span.kind == SpanKind::Server;
    let str = |s: &'static str| Some(Own::Str(Cow::Borrowed(s)));
    Some(match k {
        Known::Method => {
            let m = http.method.as_str();
            if known_method(m) {
                Some(Own::Str(Cow::Borrowed(m)))
            } else {
                str("_OTHER")
            }
        }
        Known::MethodOriginal => {
            let m = http.method.as_str();
            (!known_method(m) && !m.is_empty()).then_some(Own::Str(Cow::Borrowed(m)))
        }
        Known::StatusCode => http.status.map(|c| Own::Int(i64::from(c))),
        Known::UrlPath if server => Some(Own::Str(Cow::Borrowed(url_path(&http.target)))),
        Known::UrlQuery if server => split_target(&http.target)
            .1
            .filter(|q| !q.is_empty())
            .map(|q| Own::Str(redact_query_with(q, &[]))),
        Known::UrlPath | Known::UrlQuery => None,
        Known::UrlScheme if server => str(if http.tls { "https" } else { "http" }),
        // A client span's scheme comes from its full URL: the walk builds it.
        Known::UrlScheme => return None,
        Known::UserAgent => http
            .user_agent
            .as_deref()
            .map(|u| Own::Str(Cow::Borrowed(u))),
        Known::RequestBodySize => http.request_body_size.map(|n| Own::Int(to_i64(n))),
        Known::ResponseBodySize => http.response_body_size.map(|n| Own::Int(to_i64(n))),
        Known::ThreadId => (span.tid != 0).then_some(Own::Int(i64::from(span.tid))),
        Known::ServerAddress | Known::ServerPort => {
            // The `Host` header, else the local (server) or peer (client) end.
            let end = if server { span.local } else { span.peer };
            let (addr, port) = match http.host.as_deref().and_then(split_host) {
                Some((host, port)) => (Own::Str(Cow::Borrowed(host)), port.unwrap_or(end.port)),
                None => (Own::Addr(end.addr), end.port),
            };
            Some(if k == Known::ServerAddress {
                addr
            } else {
                Own::Int(i64::from(port))
            })
        }
        // A PROXY header's client, else the peer (as `semconv::attributes`).
        Known::ClientAddress if server => {
            Some(Own::Addr(http.client.map_or(span.peer.addr, |c| c.ip())))
        }
        Known::ClientPort if server => Some(Own::Int(i64::from(
            http.client.map_or(span.peer.port, |c| c.port()),
        ))),
        Known::ClientAddress | Known::ClientPort => None,
        Known::PeerAddress => Some(Own::Addr(span.peer.addr)),
        Known::PeerPort => Some(Own::Int(i64::from(span.peer.port))),
        Known::ProtocolVersion => {
            let v = http.version.trim();
            let v = v.strip_prefix("HTTP/").unwrap_or(v);
            (!v.is_empty()).then_some(Own::Str(Cow::Borrowed(v)))
        }
        Known::Transport => str("tcp"),
        Known::NetworkType => str(if span.peer.addr.to_canonical().is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        }),
        Known::ErrorType => match &span.status {
            SpanStatus::Unset => None,
            SpanStatus::Error(msg) => Some(Own::Str(Cow::Owned(match http.status {
                Some(code) => code.to_string(),
                None if !msg.is_empty() => msg.clone(),
                None => "_OTHER".to_string(),
            }))),
        },
        Known::ClockSkew => span.clock_skew_ns.map(|s| Own::Int(to_i64(s.get()))),
    })
}
