//! Helpers for the linker's unit tests: a thread of a process serves, calls, reads and replies.

use std::net::{IpAddr, Ipv4Addr};

use super::context::Io;
use super::held::{Handle, SeqKey};
use super::linker::{Linker, Start};
use super::settle::LINK_GRACE_NS;
use crate::model::{Endpoint, Exchange, HttpExchange, Span, SpanKind};

pub(super) fn ep(port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
    }
}

pub(super) fn start(kind: SpanKind, pid: u32, tid: u32, t: u64) -> Start {
    Start {
        kind,
        pid,
        tid,
        start_ns: t,
        local: ep(1),
        peer: ep(2),
        exchange: Exchange::Http(HttpExchange {
            method: "GET".into(),
            ..Default::default()
        }),
        traceparent: None,
        seq_key: None,
        connect_cause: None,
    }
}

/// Thread `tid` of `pid` reads a new request.
pub(super) fn serve(l: &mut Linker, pid: u32, tid: u32, t: u64) -> Handle {
    let h = l.start(start(SpanKind::Server, pid, tid, t));
    l.io(pid, tid, Io::ServerRequest(h));
    h
}

/// Thread `tid` writes a request.
pub(super) fn call(l: &mut Linker, pid: u32, tid: u32, t: u64) -> Handle {
    l.start(start(SpanKind::Client, pid, tid, t))
}

/// Thread `tid` reads the whole response of call `c`.
pub(super) fn returns(l: &mut Linker, pid: u32, tid: u32, c: Handle, t: u64) {
    l.finish(c, t, None);
    l.io(pid, tid, Io::ClientResponse(c));
}

/// Thread `tid` writes the whole response of request `h`.
pub(super) fn reply(l: &mut Linker, pid: u32, tid: u32, h: Handle, t: u64) {
    l.finish(h, t, None);
    l.io(pid, tid, Io::ServerResponse(h));
}

/// Every span, released; (span id by handle order, parent span ids).
pub(super) fn settle(l: &mut Linker) -> Vec<Span> {
    let mut out = Vec::new();
    l.poll(10 * LINK_GRACE_NS, &mut out);
    assert_eq!(l.open_spans(), 0, "everything finished must be released");
    out.sort_by_key(|s| s.start_unix_ns);
    out
}

/// Parent of each span (by start order) as an index into the same list.
pub(super) fn parents(spans: &[Span]) -> Vec<Option<usize>> {
    spans
        .iter()
        .map(|s| {
            s.parent_span_id
                .map(|p| spans.iter().position(|x| x.span_id == p).unwrap())
        })
        .collect()
}

pub(super) fn key(seq: u32) -> SeqKey {
    SeqKey {
        client: ep(40000),
        server: ep(8080),
        seq,
    }
}

pub(super) fn by_id(spans: &[Span], kind: SpanKind, pid: u32) -> &Span {
    spans
        .iter()
        .find(|s| s.kind == kind && s.pid == pid)
        .unwrap()
}
