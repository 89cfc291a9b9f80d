//! Spans and processes for the unit tests of every stage (test builds only).

use std::net::{IpAddr, Ipv4Addr};

use ztrace_abi::{DataEvent, EventHeader, kind};

use crate::model::*;

pub fn server_span() -> Span {
    Span {
        trace_id: TraceId([
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ]),
        span_id: SpanId([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]),
        parent_span_id: Some(SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])),
        parent_is_remote: true,
        clock_skew_ns: None,
        remote_sampled: Some(true),
        tracestate: None,
        kind: SpanKind::Server,
        name: "GET".into(),
        start_unix_ns: 1_700_000_000_000_000_000,
        end_unix_ns: 1_700_000_000_012_300_000,
        pid: 1234,
        tid: 1240,
        local: Endpoint {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            port: 8080,
        },
        peer: Endpoint {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            port: 51234,
        },
        exchange: Exchange::Http(HttpExchange {
            method: "GET".into(),
            target: "/api/orders?limit=10".into(),
            host: Some("shop.example:8080".into()),
            version: "1.1",
            status: Some(200),
            user_agent: Some("curl/8.5.0".into()),
            request_body_size: None,
            response_body_size: Some(512),
            tls: false,
            client: None,
        }),
        status: SpanStatus::Unset,
        sampling: crate::model::Sampling::Unsampled,
        edits: None,
    }
}

pub fn client_span() -> Span {
    Span {
        span_id: SpanId([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]),
        parent_span_id: Some(server_span().span_id),
        parent_is_remote: false,
        clock_skew_ns: None,
        remote_sampled: None,
        tracestate: None,
        kind: SpanKind::Client,
        name: "POST".into(),
        start_unix_ns: 1_700_000_000_001_000_000,
        end_unix_ns: 1_700_000_000_010_000_000,
        local: Endpoint {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            port: 40000,
        },
        peer: Endpoint {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
            port: 5000,
        },
        exchange: Exchange::Http(HttpExchange {
            method: "POST".into(),
            target: "/charge".into(),
            host: Some("payments".into()),
            version: "1.1",
            status: Some(503),
            user_agent: Some("python-requests/2.31".into()),
            request_body_size: Some(42),
            response_body_size: Some(0),
            tls: false,
            client: None,
        }),
        status: SpanStatus::Error("503 Service Unavailable".into()),
        ..server_span()
    }
}

pub fn process(pid: u32, name: &str) -> ProcessInfo {
    ProcessInfo {
        pid,
        parent_pid: Some(1),
        service_name: format!("{name}-svc"),
        executable_name: name.into(),
        executable_path: format!("/usr/bin/{name}"),
        command_args: vec![name.into(), "app.py".into()],
        host_name: "node-1".into(),
        ..ProcessInfo::default()
    }
}

/// A stdout/stderr write of `bytes` bytes by thread `tid` of `pid` on `fd`.
pub fn stdio_write(pid: u32, tid: u32, fd: i32, ts: u64, bytes: u64) -> DataEvent {
    DataEvent {
        header: EventHeader {
            kind: kind::STDIO,
            tgid: pid,
            tid,
            _pad: 0,
            ts_ns: ts,
        },
        fd,
        bytes,
        ..Default::default()
    }
}

/// An endpoint from `"ADDR:PORT"` (`"10.0.0.1:80"`, `"[::1]:80"`).
pub fn endpoint(s: &str) -> Endpoint {
    let sa: std::net::SocketAddr = s.parse().expect("ADDR:PORT");
    Endpoint {
        addr: sa.ip(),
        port: sa.port(),
    }
}

/// A checked `tracestate` as the linker hands it on (`link::parse_tracestate`), for the tests of
/// later stages: `members` already in its checked form (no white space), with the `ot` entry's
/// `th` and `rv` as given (56-bit values).
pub fn tracestate(members: &str, th: Option<u64>, rv: Option<u64>) -> std::sync::Arc<TraceState> {
    std::sync::Arc::new(TraceState {
        members: members.into(),
        th,
        rv,
    })
}
