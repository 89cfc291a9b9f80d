//! Exchange assembler: feeds each connection's byte streams to the protocol parser and turns
//! parsed messages into exchanges — request ↔ response pairs with their times, threads and TCP
//! sequence numbers — handed to the linker as they start and end.
//!
//! Roles are decided from the bytes, not from connect/accept (which may predate attaching): the
//! side that sends an HTTP request is the client. Timing per exchange, chosen so a callee's span
//! always sits inside its caller's: SERVER spans run from the *exit* of the read that delivered
//! the first request byte to the *entry* of the write that sent the last response byte; CLIENT
//! spans from the *entry* of the first request write to the *exit* of the last response read.

use std::collections::VecDeque;

use ztrace_abi::{DataEvent, direction};

use crate::{
    conntrack::{Conn, ConnKey, ConnTable, Mark, Stream},
    link::{Handle, Linker, SeqKey, Start, parse_traceparent},
    model::{HttpExchange, SpanKind},
};
use ztrace_protocols::http1::{self, Dir, Http1Conn, Http1Event};

/// After this many chunks that look like no known protocol, a connection is ignored.
const MAX_UNKNOWN_CHUNKS: u32 = 4;

#[derive(Default)]
pub enum Proto {
    #[default]
    Unknown,
    Http {
        role: SpanKind,
        parser: Box<Http1Conn>,
        /// Exchanges in request order (HTTP/1.1 answers in order).
        pending: VecDeque<Handle>,
    },
    Ignored,
}

#[derive(Default)]
pub struct ConnState {
    proto: Proto,
    unknown_chunks: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssembleStats {
    pub data_events: u64,
    pub http_connections: u64,
    pub ignored_connections: u64,
    pub desyncs: u64,
    pub aborted_exchanges: u64,
}

pub struct Assembler {
    pub conns: ConnTable<ConnState>,
    events: Vec<Http1Event>,
    pub stats: AssembleStats,
}

impl Assembler {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: ConnTable::new(max_conns),
            events: Vec::new(),
            stats: AssembleStats::default(),
        }
    }

    pub fn on_data(&mut self, ev: &DataEvent, payload: &[u8], linker: &mut Linker) {
        self.stats.data_events += 1;
        let key = ConnKey {
            tgid: ev.header.tgid,
            sock_id: ev.sock_id,
        };
        let (conn, evicted) = self.conns.entry(key, &ev.tuple, ev.header.ts_ns);
        let egress = ev.direction == direction::EGRESS;
        let seq = (ev.has_seq != 0).then_some(ev.seq);
        let stream = if egress {
            &mut conn.egress
        } else {
            &mut conn.ingress
        };
        stream.advance(ev.bytes, ev.enter_ns, ev.header.ts_ns, ev.header.tid, seq);

        if matches!(conn.state.proto, Proto::Unknown) {
            let role = match (
                egress,
                http1::looks_like_request(payload),
                http1::looks_like_response(payload),
            ) {
                (true, true, _) | (false, _, true) => Some(SpanKind::Client),
                (false, true, _) | (true, _, true) => Some(SpanKind::Server),
                _ => None,
            };
            match role {
                // A response first means we attached mid-exchange; start parsing at the next request.
                Some(role) => {
                    self.stats.http_connections += 1;
                    conn.state.proto = Proto::Http {
                        role,
                        parser: Box::default(),
                        pending: VecDeque::new(),
                    };
                }
                None => {
                    conn.state.unknown_chunks += 1;
                    if conn.state.unknown_chunks >= MAX_UNKNOWN_CHUNKS {
                        conn.state.proto = Proto::Ignored;
                        self.stats.ignored_connections += 1;
                    }
                }
            }
        }
        if let Proto::Http { role, parser, .. } = &mut conn.state.proto {
            let dir = match (*role, egress) {
                (SpanKind::Client, true) | (SpanKind::Server, false) => Dir::Request,
                _ => Dir::Response,
            };
            self.events.clear();
            parser.push(dir, payload, ev.bytes, &mut self.events);
            let events = std::mem::take(&mut self.events);
            for e in &events {
                handle(key, conn, e, linker, &mut self.stats);
            }
            self.events = events;
        }
        if let Some((k, c)) = evicted {
            finish_conn(k, c, ev.header.ts_ns, linker, &mut self.stats);
        }
    }

    /// The traced process closed the socket.
    pub fn on_close(&mut self, tgid: u32, sock_id: u64, ts_ns: u64, linker: &mut Linker) {
        let key = ConnKey { tgid, sock_id };
        if let Some(conn) = self.conns.remove(&key) {
            finish_conn(key, conn, ts_ns, linker, &mut self.stats);
        }
    }

    /// The process exited: all its connections are gone.
    pub fn on_exit(&mut self, tgid: u32, ts_ns: u64, linker: &mut Linker) {
        for key in self.conns.keys_of(tgid) {
            self.on_close(key.tgid, key.sock_id, ts_ns, linker);
        }
    }

    /// Forget connections idle since `cutoff_ns` (their close was not seen, e.g. fd passed on).
    pub fn expire(&mut self, cutoff_ns: u64, linker: &mut Linker) {
        for key in self.conns.idle(cutoff_ns) {
            self.on_close(key.tgid, key.sock_id, cutoff_ns, linker);
        }
    }
}

fn streams(conn: &Conn<ConnState>, role: SpanKind) -> (&Stream, &Stream) {
    // (request stream, response stream) from this process's point of view.
    match role {
        SpanKind::Client => (&conn.egress, &conn.ingress),
        SpanKind::Server => (&conn.ingress, &conn.egress),
    }
}

fn handle(
    key: ConnKey,
    conn: &mut Conn<ConnState>,
    event: &Http1Event,
    linker: &mut Linker,
    stats: &mut AssembleStats,
) {
    let Proto::Http { role, pending, .. } = &conn.state.proto else {
        return;
    };
    let role = *role;
    let (req_stream, resp_stream) = streams(conn, role);
    match event {
        Http1Event::Request { start, head } => {
            let Some((mark, seq)) = req_stream.locate(*start) else {
                return;
            };
            let start_ns = match role {
                SpanKind::Server => mark.exit_ns,
                SpanKind::Client => mark.enter_ns,
            };
            let (client, server) = match role {
                SpanKind::Client => (conn.local, conn.peer),
                SpanKind::Server => (conn.peer, conn.local),
            };
            let start = Start {
                kind: role,
                pid: key.tgid,
                tid: mark.tid,
                start_ns,
                local: conn.local,
                peer: conn.peer,
                http: HttpExchange {
                    method: head.method.clone(),
                    target: head.target.clone(),
                    host: head.host.clone(),
                    version: format!("1.{}", head.version),
                    status: None,
                    user_agent: head.user_agent.clone(),
                    request_body_size: head.content_length,
                    response_body_size: None,
                },
                traceparent: head.traceparent.as_deref().and_then(parse_traceparent),
                seq_key: seq.map(|seq| SeqKey {
                    client,
                    server,
                    seq,
                }),
            };
            let h = linker.start(start);
            if let Proto::Http { pending, .. } = &mut conn.state.proto {
                pending.push_back(h);
            }
        }
        Http1Event::RequestComplete { .. } | Http1Event::Response { interim: true, .. } => {}
        Http1Event::Response {
            head,
            interim: false,
            ..
        } => {
            if let Some(&h) = pending.front() {
                linker.set_status(h, head.status);
            }
        }
        Http1Event::ResponseComplete { end, body_len, .. } => {
            let end_mark: Option<Mark> = resp_stream.locate(end.saturating_sub(1)).map(|(m, _)| m);
            let end_ns = match (role, end_mark) {
                (SpanKind::Server, Some(m)) => m.enter_ns,
                (SpanKind::Client, Some(m)) => m.exit_ns,
                (_, None) => conn.last_ns,
            };
            if let Proto::Http { pending, .. } = &mut conn.state.proto
                && let Some(h) = pending.pop_front()
            {
                linker.finish(h, end_ns, None, Some(*body_len), None);
            }
        }
        Http1Event::Desync { dir, .. } => {
            stats.desyncs += 1;
            // Lost track of a response: the exchanges waiting for it cannot be paired reliably.
            if *dir == Dir::Response
                && let Proto::Http { pending, .. } = &mut conn.state.proto
            {
                let ts = conn.last_ns;
                for h in pending.drain(..) {
                    stats.aborted_exchanges += 1;
                    linker.finish(h, ts, None, None, Some("unparseable response".into()));
                }
            }
        }
    }
}

fn finish_conn(
    key: ConnKey,
    mut conn: Conn<ConnState>,
    ts_ns: u64,
    linker: &mut Linker,
    stats: &mut AssembleStats,
) {
    if let Proto::Http { parser, .. } = &mut conn.state.proto {
        let mut events = Vec::new();
        parser.close(&mut events);
        for e in &events {
            handle(key, &mut conn, e, linker, stats);
        }
    }
    if let Proto::Http { pending, .. } = &mut conn.state.proto {
        for h in pending.drain(..) {
            stats.aborted_exchanges += 1;
            linker.finish(
                h,
                ts_ns,
                None,
                None,
                Some("connection closed before the response".into()),
            );
        }
    }
}
