//! Exchange assembler: detects each connection's protocol from its first bytes, feeds its byte
//! streams to that protocol's parser, and turns the parser's [`Step`]s into exchanges — request ↔
//! response pairs with their times, threads and TCP sequence numbers — handed to the linker as
//! they start and end. It is generic over [`ParserSet`] (by default every protocol registered in
//! `ztrace_protocols::parser`) and knows no protocol by name: adding one touches the protocols
//! crate only. It must not parse bytes itself nor build spans (that is the linker's job). In-order protocols (HTTP/1, Redis) pair responses with the oldest open
//! request; multiplexing ones (HTTP/2 streams, DNS ids) name the exchange by a key.
//!
//! Roles are decided from the bytes, not from connect/accept (which may predate attaching): the
//! side that sends a request is the client. Timing per exchange, chosen so a callee's span always
//! sits inside its caller's: SERVER spans run from the *exit* of the read that delivered the first
//! request byte to the *entry* of the write that sent the last response byte; CLIENT spans from the
//! *entry* of the first request write to the *exit* of the last response read. (Socket-layer
//! capture sees a call only once the kernel has taken the bytes, so there "entry" is that moment;
//! the linker keeps a called server inside its caller, see `link::Linker::start`.)

use std::collections::VecDeque;

use ztrace_abi::{ConnEvent, DataEvent, direction, syscall};
use ztrace_protocols::{AnyParser, Dir, Opener, ParserSet, Step, Transport};

use super::{budget::Budget, redact::Redaction};
use crate::{
    conntrack::{Conn, ConnKey, ConnTable, Evicted, Stream},
    link::{Cause, Handle, Io, Linker, SeqKey, Start, parse_trace_context},
    model::{Exchange, SpanKind},
};

/// After this many chunks that look like no known protocol, a connection is ignored.
const MAX_UNKNOWN_CHUNKS: u32 = 4;
/// Most bytes of a first message kept while it arrives in pieces (a request line written a
/// word at a time): beyond it the connection is recognised from whole chunks only, as before.
const FIRST_BYTES_CAP: usize = 1024;

/// The first bytes of one direction, kept while no protocol takes them but one may once more
/// arrive ([`ParserSet::incomplete`]).
struct FirstBytes {
    egress: bool,
    /// Stream offset of the first kept byte.
    start: u64,
    bytes: Vec<u8>,
}
/// Most exchanges open on one connection (requests without their response yet); beyond it the
/// oldest ends with an error and is counted in `AssembleStats::pending_dropped`.
pub const MAX_PENDING: usize = 1024;

#[derive(Default)]
pub enum Proto<P> {
    #[default]
    Unknown,
    Known {
        role: SpanKind,
        parser: P,
        /// Open exchanges in request order, with their key for multiplexing protocols.
        pending: VecDeque<(Option<u64>, Handle)>,
    },
    Ignored,
}

pub struct ConnState<P> {
    proto: Proto<P>,
    unknown_chunks: u32,
    /// Plaintext from the TLS library (the connection is HTTPS, gRPC over TLS…).
    tls: bool,
    /// Stream offsets (request, response direction) where the parser started: bytes seen before
    /// the protocol was recognised never reached it, so parser offsets are shifted by these.
    base: (u64, u64),
    /// This process connected the socket and no request has gone over it yet: the connecting
    /// thread's cause at `connect()` (see the linker's module docs, rule 3).
    connect_cause: Option<Option<Cause>>,
    /// What the parser memory budget charges this connection (its parser's held bytes after
    /// the last push, or the first bytes kept); given back when the connection goes or is shed.
    charged: usize,
    /// While the protocol is unknown: a first message's pieces so far.
    first: Option<Box<FirstBytes>>,
}

impl<P> Default for ConnState<P> {
    fn default() -> Self {
        ConnState {
            proto: Proto::default(),
            unknown_chunks: 0,
            tls: false,
            base: (0, 0),
            connect_cause: None,
            charged: 0,
            first: None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssembleStats {
    pub data_events: u64,
    /// Connections whose protocol was recognised.
    pub http_connections: u64,
    /// Of those, recognised from a first message that arrived in pieces (kept, then joined).
    pub first_bytes_joined: u64,
    pub ignored_connections: u64,
    pub desyncs: u64,
    pub aborted_exchanges: u64,
    /// Exchanges ended early because their connection had [`MAX_PENDING`] open.
    pub pending_dropped: u64,
    /// Incoming `tracestate` headers dropped as invalid (W3C Trace Context); their
    /// `traceparent` still holds.
    pub tracestates_dropped: u64,
    /// Connections tracked right now (filled in by the pipeline's `stats()`).
    pub open_connections: u64,
    /// Connections shed (no longer parsed) to keep the parsers within their memory budget.
    pub budget_shed: u64,
    /// Bytes the parsers hold now, the most they held, and the budget (filled in by
    /// [`Assembler::stats`]).
    pub parser_bytes: u64,
    pub parser_bytes_peak: u64,
    pub parser_budget: u64,
}

/// Assembles the exchanges of every connection, with the parsers of `P` (by default every
/// registered protocol).
pub struct Assembler<P: ParserSet = AnyParser> {
    pub conns: ConnTable<ConnState<P>>,
    steps: Vec<Step>,
    /// The parsers' event buffers, reused for every chunk.
    scratch: P::Scratch,
    pub stats: AssembleStats,
    /// What may leave of each exchange: query text, error messages, configured names (all kept
    /// home by default).
    pub redaction: Redaction,
    /// The bound on what all parsers hold together.
    pub budget: Budget,
}

impl<P: ParserSet> Assembler<P> {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: ConnTable::new(max_conns),
            steps: Vec::new(),
            scratch: P::Scratch::default(),
            stats: AssembleStats::default(),
            redaction: Redaction::default(),
            budget: Budget::default(),
        }
    }

    /// The counters, with the budget's numbers filled in.
    pub fn stats(&self) -> AssembleStats {
        AssembleStats {
            open_connections: self.conns.len() as u64,
            budget_shed: self.budget.shed,
            parser_bytes: self.budget.used() as u64,
            parser_bytes_peak: self.budget.peak as u64,
            parser_budget: self.budget.limit() as u64,
            ..self.stats
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
        conn.state.tls |= ev.syscall == syscall::SSL_READ || ev.syscall == syscall::SSL_WRITE;
        let stream = if egress {
            &mut conn.egress
        } else {
            &mut conn.ingress
        };
        let mark = stream.advance(ev.bytes, ev.enter_ns, ev.header.ts_ns, ev.header.tid, seq);

        // What the parser gets of this chunk: the payload, or (just recognised) the first
        // message's pieces kept so far with this one.
        let mut fed: Option<Box<FirstBytes>> = None;
        if matches!(conn.state.proto, Proto::Unknown) {
            let transport = Transport::from_ip_protocol(ev.tuple.protocol);
            let whole = payload.len() as u64 == ev.bytes;
            let incomplete = |b: &[u8]| b.len() <= FIRST_BYTES_CAP && P::incomplete(b, transport);
            let mut detected = None;
            // Pieces kept of the other direction stay kept: a server may speak before the
            // client's first message is whole (an HTTP/2 server's SETTINGS after a load
            // balancer's PROXY header, before the client's preface).
            let other_side = match &conn.state.first {
                Some(f) if f.egress != egress => conn.state.first.take(),
                _ => None,
            };
            // The kept pieces continue with this chunk: recognise them together once no
            // protocol waits for more (until then "GET /a" could be Redis or half of HTTP).
            let mut kept = conn.state.first.take().filter(|f| {
                whole && f.egress == egress && f.start + f.bytes.len() as u64 == mark.start
            });
            let mut consumed = false;
            if let Some(f) = &mut kept {
                f.bytes.extend_from_slice(payload);
                if incomplete(&f.bytes) {
                    consumed = true;
                } else {
                    detected = P::detect(&f.bytes, transport);
                    consumed = detected.is_some();
                    fed = kept.take().filter(|_| consumed);
                }
            }
            if !consumed {
                // This chunk alone, as ever, unless it is itself a message's first piece.
                if whole && incomplete(payload) {
                    kept = Some(Box::new(FirstBytes {
                        egress,
                        start: mark.start,
                        bytes: payload.to_vec(),
                    }));
                } else {
                    detected = P::detect(payload, transport);
                }
            }
            match detected {
                Some((parser, opener)) => {
                    // The side that sends requests is the client.
                    let role = match (opener, egress) {
                        (Opener::Requester, true) | (Opener::Responder, false) => SpanKind::Client,
                        (Opener::Requester, false) | (Opener::Responder, true) => SpanKind::Server,
                    };
                    // Parser offsets start here in this direction and at the other's current
                    // position: bytes before never reached the parser.
                    let here = fed.as_ref().map_or(mark.start, |f| f.start);
                    let other = if egress {
                        conn.ingress.pos
                    } else {
                        conn.egress.pos
                    };
                    conn.state.base = match dir_of(role, egress) {
                        Dir::Request => (here, other),
                        Dir::Response => (other, here),
                    };
                    if fed.is_some() {
                        self.stats.first_bytes_joined += 1;
                    }
                    self.stats.http_connections += 1;
                    conn.state.proto = Proto::Known {
                        role,
                        parser,
                        pending: VecDeque::new(),
                    };
                }
                None => {
                    // A piece of a first message kept is not a chunk of no known protocol.
                    if kept.is_none() {
                        conn.state.unknown_chunks += 1;
                    }
                    let mut kept = kept.or(other_side);
                    if conn.state.unknown_chunks >= MAX_UNKNOWN_CHUNKS {
                        conn.state.proto = Proto::Ignored;
                        self.stats.ignored_connections += 1;
                        kept = None;
                    }
                    // Kept bytes are parser memory too.
                    let held = kept.as_ref().map_or(0, |f| f.bytes.capacity());
                    if !self.budget.charge(&mut conn.state.charged, held) {
                        kept = None;
                        let _ = self.budget.charge(&mut conn.state.charged, 0);
                    }
                    conn.state.first = kept;
                }
            }
        }
        if let Proto::Known { role, parser, .. } = &mut conn.state.proto {
            let dir = dir_of(*role, egress);
            let role = *role;
            let multiplexed = parser.multiplexed();
            self.steps.clear();
            match &fed {
                Some(f) => {
                    let len = f.bytes.len() as u64;
                    parser.push(dir, &f.bytes, len, &mut self.scratch, &mut self.steps);
                }
                None => parser.push(dir, payload, ev.bytes, &mut self.scratch, &mut self.steps),
            }
            let mut ended = None;
            for mut step in self.steps.drain(..) {
                self.redaction.apply(&mut step);
                ended = apply(key, conn, step, linker, &mut self.stats).or(ended);
            }
            if let Some(io) = thread_io(&conn.state.proto, role, egress, multiplexed, ended) {
                linker.io(key.tgid, ev.header.tid, io);
            }
            let held = match &conn.state.proto {
                Proto::Known { parser, .. } => parser.held(),
                _ => 0,
            };
            if !self.budget.charge(&mut conn.state.charged, held) {
                shed(conn, &mut self.budget, linker, &mut self.stats);
            }
        } else if !egress {
            linker.io(key.tgid, ev.header.tid, Io::UnknownInput);
        }
        self.finish_evicted(evicted, ev.header.ts_ns, linker);
    }

    /// The traced process connected a socket: remember whom the connecting thread worked for.
    pub fn on_connect(&mut self, ev: &ConnEvent, linker: &mut Linker) {
        let key = ConnKey {
            tgid: ev.header.tgid,
            sock_id: ev.sock_id,
        };
        let (conn, evicted) = self.conns.entry(key, &ev.tuple, ev.header.ts_ns);
        conn.state.connect_cause = Some(linker.connect_cause(key.tgid, ev.header.tid));
        self.finish_evicted(evicted, ev.header.ts_ns, linker);
    }

    /// The traced process closed the socket.
    /// Ends the connection a full table gave up to make room for a new one.
    fn finish_evicted(&mut self, evicted: Evicted<ConnState<P>>, ts_ns: u64, linker: &mut Linker) {
        if let Some(evicted) = evicted {
            let (key, conn) = *evicted;
            let cx = (&mut self.scratch, &mut self.stats, &mut self.budget);
            finish_conn(key, conn, ts_ns, linker, cx);
        }
    }

    pub fn on_close(&mut self, tgid: u32, sock_id: u64, ts_ns: u64, linker: &mut Linker) {
        // A socket's TLS plaintext has a connection id of its own (the socket's | 1, see the
        // probes' tls.rs): it ends with the socket, or a new connection that gets the same
        // socket struct would continue its unanswered requests.
        let twin = (sock_id & 1 == 0).then_some(sock_id | 1);
        for sock_id in std::iter::once(sock_id).chain(twin) {
            let key = ConnKey { tgid, sock_id };
            if let Some(conn) = self.conns.remove(&key) {
                let cx = (&mut self.scratch, &mut self.stats, &mut self.budget);
                finish_conn(key, conn, ts_ns, linker, cx);
            }
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

/// What a socket read or write tells the linker about the thread's cause: which exchange the
/// bytes belonged to. Multiplexed protocols (HTTP/2, DNS) carry many exchanges per read, so
/// their inputs say nothing definite.
fn thread_io<P>(
    proto: &Proto<P>,
    role: SpanKind,
    egress: bool,
    multiplexed: bool,
    ended: Option<Handle>,
) -> Option<Io> {
    let Proto::Known { pending, .. } = proto else {
        return None;
    };
    if multiplexed {
        return (!egress).then_some(Io::UnknownInput);
    }
    let front = ended.or_else(|| pending.front().map(|(_, h)| *h));
    let io = match (role, egress) {
        (SpanKind::Server, false) => pending.back().map(|(_, h)| Io::ServerRequest(*h)),
        (SpanKind::Server, true) => front.map(Io::ServerResponse),
        (SpanKind::Client, false) => front.map(Io::ClientResponse),
        (SpanKind::Client, true) => return None,
    };
    // An input we cannot tie to an exchange may have triggered anything.
    io.or((!egress).then_some(Io::UnknownInput))
}

/// (request stream, response stream) from this process's point of view.
fn streams<P>(conn: &Conn<ConnState<P>>, role: SpanKind) -> (&Stream, &Stream) {
    match role {
        SpanKind::Client => (&conn.egress, &conn.ingress),
        SpanKind::Server => (&conn.ingress, &conn.egress),
    }
}

/// The open exchange a step is about: by key, or the oldest.
fn find(pending: &VecDeque<(Option<u64>, Handle)>, key: Option<u64>) -> Option<usize> {
    match key {
        None => (!pending.is_empty()).then_some(0),
        Some(k) => pending.iter().position(|(pk, _)| *pk == Some(k)),
    }
}

/// Applies one parser step; returns the exchange it finished, if any.
fn apply<P>(
    key: ConnKey,
    conn: &mut Conn<ConnState<P>>,
    step: Step,
    linker: &mut Linker,
    stats: &mut AssembleStats,
) -> Option<Handle> {
    let Proto::Known { role, .. } = &conn.state.proto else {
        return None;
    };
    let role = *role;
    let (req_stream, resp_stream) = streams(conn, role);
    let (req_base, resp_base) = conn.state.base;
    match step {
        Step::Request {
            key: exchange_key,
            start,
            mut exchange,
            context,
        } => {
            if conn.state.tls
                && let Exchange::Http(h) = &mut exchange
            {
                h.tls = true;
            }
            let (mark, seq) = req_stream.locate(req_base + start)?;
            let start_ns = match role {
                SpanKind::Server => mark.exit_ns,
                SpanKind::Client => mark.enter_ns,
            };
            let (client, server) = match role {
                SpanKind::Client => (conn.local, conn.peer),
                SpanKind::Server => (conn.peer, conn.local),
            };
            // Only a SERVER span follows an incoming context (linker rule 1): a request a traced
            // client sends is not read for one.
            let (traceparent, tracestate_dropped) = match role {
                SpanKind::Server => {
                    let (parent, state) = context.as_deref().map_or((None, None), |c| {
                        (Some(&*c.traceparent), c.tracestate.as_deref())
                    });
                    parse_trace_context(parent, state)
                }
                SpanKind::Client => (None, false),
            };
            stats.tracestates_dropped += u64::from(tracestate_dropped);
            let h = linker.start(Start {
                kind: role,
                pid: key.tgid,
                tid: mark.tid,
                start_ns,
                local: conn.local,
                peer: conn.peer,
                exchange,
                traceparent,
                seq_key: seq.map(|seq| SeqKey {
                    client,
                    server,
                    seq,
                }),
                connect_cause: conn.state.connect_cause.take().flatten(),
            });
            if let Proto::Known { pending, .. } = &mut conn.state.proto {
                if pending.len() >= MAX_PENDING
                    && let Some((_, oldest)) = pending.pop_front()
                {
                    // A peer that sends requests and never reads answers must not grow this.
                    stats.pending_dropped += 1;
                    stats.aborted_exchanges += 1;
                    let reason = "too many requests waiting for a response on the connection";
                    linker.finish(oldest, start_ns, Some(reason.into()));
                }
                pending.push_back((exchange_key, h));
            }
            None
        }
        Step::Update {
            key: exchange_key,
            update,
        } => {
            if let Proto::Known { pending, .. } = &conn.state.proto
                && let Some(i) = find(pending, exchange_key)
            {
                linker.update(pending[i].1, |x| update.apply(x));
            }
            None
        }
        Step::End {
            key: exchange_key,
            end,
            update,
        } => {
            let end_ns = match (
                role,
                resp_stream.locate((resp_base + end).saturating_sub(1)),
            ) {
                (SpanKind::Server, Some((m, _))) => m.enter_ns,
                (SpanKind::Client, Some((m, _))) => m.exit_ns,
                (_, None) => conn.last_ns,
            };
            if let Proto::Known { pending, .. } = &mut conn.state.proto
                && let Some(i) = find(pending, exchange_key)
                && let Some((_, h)) = pending.remove(i)
            {
                linker.update(h, |x| update.apply(x));
                linker.finish(h, end_ns, None);
                return Some(h);
            }
            None
        }
        Step::Abort {
            key: exchange_key,
            reason,
        } => {
            let ts = conn.last_ns;
            if let Proto::Known { pending, .. } = &mut conn.state.proto
                && let Some(i) = find(pending, Some(exchange_key))
                && let Some((_, h)) = pending.remove(i)
            {
                stats.aborted_exchanges += 1;
                linker.finish(h, ts, Some(reason));
            }
            None
        }
        Step::Desync(dir) => {
            stats.desyncs += 1;
            // Lost track of a response: the exchanges waiting for it cannot be paired reliably.
            if dir == Dir::Response
                && let Proto::Known { pending, .. } = &mut conn.state.proto
            {
                let ts = conn.last_ns;
                for (_, h) in pending.drain(..) {
                    stats.aborted_exchanges += 1;
                    linker.finish(h, ts, Some("unparseable response".into()));
                }
            }
            None
        }
    }
}

/// Which of a connection's directions a chunk is: a client sends requests, a server receives them.
fn dir_of(role: SpanKind, egress: bool) -> Dir {
    match (role, egress) {
        (SpanKind::Client, true) | (SpanKind::Server, false) => Dir::Request,
        _ => Dir::Response,
    }
}

/// The connection's parser took the parser memory budget over its limit: drop the parser and
/// all it buffered, end the connection's open exchanges with an error, and parse nothing more
/// of it (its protocol state, such as HPACK tables, cannot be rebuilt mid-stream).
fn shed<P>(
    conn: &mut Conn<ConnState<P>>,
    budget: &mut Budget,
    linker: &mut Linker,
    stats: &mut AssembleStats,
) {
    budget.release(&mut conn.state.charged);
    budget.shed += 1;
    let ts = conn.last_ns;
    if let Proto::Known { pending, .. } = &mut conn.state.proto {
        for (_, h) in pending.drain(..) {
            stats.aborted_exchanges += 1;
            linker.finish(h, ts, Some(SHED_REASON.into()));
        }
    }
    conn.state.proto = Proto::Ignored;
}

/// The error of exchanges a shed connection left open.
pub const SHED_REASON: &str = "connection no longer parsed: ztrace's parser memory budget is full";

fn finish_conn<P: ParserSet>(
    key: ConnKey,
    mut conn: Conn<ConnState<P>>,
    ts_ns: u64,
    linker: &mut Linker,
    (scratch, stats, budget): (&mut P::Scratch, &mut AssembleStats, &mut Budget),
) {
    budget.release(&mut conn.state.charged);
    let mut steps = Vec::new();
    if let Proto::Known { parser, .. } = &mut conn.state.proto {
        parser.close(scratch, &mut steps);
    }
    for step in steps {
        apply(key, &mut conn, step, linker, stats);
    }
    if let Proto::Known { pending, .. } = &mut conn.state.proto {
        for (_, h) in pending.drain(..) {
            stats.aborted_exchanges += 1;
            linker.finish(
                h,
                ts_ns,
                Some("connection closed before the response".into()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use ztrace_abi::{AF_INET, EventHeader, SockTuple, kind};
    use ztrace_protocols::redis::RedisConn;

    use super::*;
    use crate::model::{Span, SpanStatus};

    /// One socket of a traced process.
    #[derive(Clone, Copy)]
    struct Sock {
        pid: u32,
        tid: u32,
        sock: u64,
        local_port: u16,
        remote_port: u16,
        /// IP protocol: 6 TCP, 17 UDP.
        protocol: u16,
    }

    const SERVER: Sock = Sock {
        pid: 100,
        tid: 101,
        sock: 1,
        local_port: 8080,
        remote_port: 40000,
        protocol: 6,
    };
    const CLIENT: Sock = Sock {
        pid: 200,
        tid: 201,
        sock: 2,
        local_port: 40000,
        remote_port: 8080,
        protocol: 6,
    };

    fn data(s: Sock, egress: bool, ts: u64, bytes: u64, syscall: u8) -> DataEvent {
        let mut tuple = SockTuple {
            family: AF_INET,
            protocol: s.protocol,
            local_port: s.local_port,
            remote_port: s.remote_port,
            ..Default::default()
        };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                tgid: s.pid,
                tid: s.tid,
                _pad: 0,
                ts_ns: ts,
            },
            sock_id: s.sock,
            enter_ns: ts - 5,
            bytes,
            tuple,
            fd: 3,
            seq: 0,
            cap_len: 0,
            syscall,
            direction: if egress {
                direction::EGRESS
            } else {
                direction::INGRESS
            },
            has_seq: 0,
            _pad: 0,
        }
    }

    /// Drives an assembler and its linker; `spans` drains both.
    struct Rig<P: ParserSet = AnyParser> {
        asm: Assembler<P>,
        linker: Linker,
    }

    impl<P: ParserSet> Rig<P> {
        fn new() -> Self {
            Rig {
                asm: Assembler::new(16),
                linker: Linker::new(0, 1000, Some(7)),
            }
        }

        /// `s` sends (`egress`) or receives `payload` at `ts`.
        fn io(&mut self, s: Sock, egress: bool, ts: u64, payload: &[u8]) {
            self.io_as(s, egress, ts, payload, syscall::READ);
        }

        fn io_as(&mut self, s: Sock, egress: bool, ts: u64, payload: &[u8], sc: u8) {
            let ev = data(s, egress, ts, payload.len() as u64, sc);
            self.asm.on_data(&ev, payload, &mut self.linker);
        }

        fn close(&mut self, s: Sock, ts: u64) {
            self.asm.on_close(s.pid, s.sock, ts, &mut self.linker);
        }

        fn spans(&mut self) -> Vec<Span> {
            let mut out = Vec::new();
            self.linker.drain(1_000_000, &mut out);
            out.sort_by_key(|s| s.start_unix_ns);
            out
        }
    }

    fn http(span: &Span) -> &crate::model::HttpExchange {
        match &span.exchange {
            Exchange::Http(h) => h,
            other => panic!("not HTTP: {other:?}"),
        }
    }

    fn db(span: &Span) -> &crate::model::DbExchange {
        match &span.exchange {
            Exchange::Db(d) => d,
            other => panic!("not a database exchange: {other:?}"),
        }
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";

    #[test]
    fn requests_without_answers_are_bounded_per_connection() {
        let mut rig = Rig::<AnyParser> {
            asm: Assembler::new(16),
            linker: Linker::new(0, 10_000, Some(7)),
        };
        let extra = 100;
        for i in 0..(MAX_PENDING + extra) as u64 {
            rig.io(SERVER, false, 1_000 + i, GET);
        }
        let Some(conn) = rig.asm.conns.get(&ConnKey {
            tgid: SERVER.pid,
            sock_id: SERVER.sock,
        }) else {
            panic!("connection not tracked");
        };
        let Proto::Known { pending, .. } = &conn.state.proto else {
            panic!("protocol not recognised");
        };
        assert_eq!(pending.len(), MAX_PENDING);
        assert_eq!(rig.asm.stats.pending_dropped, extra as u64);
        // The oldest ones ended, with the reason.
        let spans = rig.spans();
        let dropped = spans
            .iter()
            .filter(
                |s| matches!(&s.status, SpanStatus::Error(e) if e.contains("too many requests")),
            )
            .count();
        assert_eq!(dropped, extra);
    }

    #[test]
    fn http1_server_span_runs_from_the_request_read_exit_to_the_response_write_entry() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(SERVER, false, 1_000, GET);
        rig.io(SERVER, true, 2_000, OK);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!((s.start_unix_ns, s.end_unix_ns), (1_000, 2_000 - 5));
        let h = http(s);
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a"));
        assert_eq!((h.status, h.response_body_size), (Some(200), Some(2)));
        assert!(!h.tls);
        assert_eq!(s.status, SpanStatus::Unset);
        assert_eq!(rig.asm.stats.http_connections, 1);
    }

    #[test]
    fn a_server_request_s_tracestate_reaches_its_span_and_an_invalid_one_is_counted() {
        let head = |state: &str| {
            format!(
                "GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: \
                 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
                 tracestate: {state}\r\nTraceState: v=2\r\n\r\n"
            )
        };
        let mut rig = Rig::<AnyParser>::new();
        rig.io(SERVER, false, 1_000, head("ot=th:8").as_bytes());
        rig.io(SERVER, true, 2_000, OK);
        rig.io(SERVER, false, 3_000, head("a=1,a=2").as_bytes());
        rig.io(SERVER, true, 4_000, OK);
        // A traced client's outgoing context is not read.
        rig.io(CLIENT, true, 5_000, head("a=1,a=2").as_bytes());
        rig.io(CLIENT, false, 6_000, OK);
        let spans = rig.spans();
        assert_eq!(spans.len(), 3);
        let state = spans[0]
            .tracestate
            .as_ref()
            .expect("the first request's tracestate");
        assert_eq!((&*state.members, state.th), ("ot=th:8,v=2", Some(1 << 55)));
        assert!(spans[1].parent_is_remote && spans[1].tracestate.is_none());
        assert_eq!(rig.asm.stats.tracestates_dropped, 1);
    }

    /// A client that writes its request line a word at a time (an unbuffered `write!`): the
    /// pieces are kept until the line is whole, the span starts at the first piece, and the
    /// request is parsed from its first byte; the server, which read it whole, agrees.
    #[test]
    fn a_request_line_written_in_pieces_is_recognised_from_its_first_piece() {
        let mut rig = Rig::<AnyParser>::new();
        let pieces: [&[u8]; 4] = [b"GE", b"T /a", b" HTTP/1.1\r\n", b"Host: x\r\n\r\n"];
        for (i, p) in pieces.iter().enumerate() {
            rig.io(CLIENT, true, 1_000 + 10 * i as u64, p);
        }
        rig.io(CLIENT, false, 2_000, OK);
        rig.close(CLIENT, 3_000);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let s = &spans[0];
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(
            s.start_unix_ns,
            1_000 - 5,
            "starts at the first piece's write"
        );
        let h = http(s);
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a"));
        assert_eq!(h.status, Some(200));
        assert_eq!(rig.asm.stats.first_bytes_joined, 1);
        assert_eq!(rig.asm.budget.used(), 0, "the kept bytes' charge came back");
    }

    /// Bytes that cannot start a request are not kept, and a connection whose protocol is found
    /// only at a later chunk maps the parser's offsets from that chunk (its start time is that
    /// chunk's, not the stream's first byte's).
    #[test]
    fn junk_is_not_kept_and_a_later_start_maps_from_its_own_chunk() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(SERVER, false, 500, b"\x16\x03\x01junk");
        let kept = |rig: &Rig| {
            let keys = rig.asm.conns.all_keys();
            keys.iter().any(|k| {
                rig.asm
                    .conns
                    .get(k)
                    .is_some_and(|c| c.state.first.is_some())
            })
        };
        assert!(!kept(&rig));
        rig.io(SERVER, false, 1_000, GET);
        rig.io(SERVER, true, 2_000, OK);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].start_unix_ns, 1_000);
        assert_eq!(rig.asm.stats.first_bytes_joined, 0);
        // A method's prefix is kept; a second piece that breaks the line drops it.
        let mut rig = Rig::<AnyParser>::new();
        rig.io(CLIENT, true, 1_000, b"POS");
        assert!(kept(&rig));
        assert!(rig.asm.budget.used() > 0);
        rig.io(CLIENT, true, 1_010, b"X\r\n");
        assert!(!kept(&rig));
        assert_eq!(rig.asm.budget.used(), 0);
    }

    #[test]
    fn http1_client_span_runs_from_the_request_write_entry_to_the_response_read_exit() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(CLIENT, true, 1_000, GET);
        rig.io(CLIENT, false, 2_000, OK);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind, SpanKind::Client);
        assert_eq!(
            (spans[0].start_unix_ns, spans[0].end_unix_ns),
            (1_000 - 5, 2_000)
        );
    }

    #[test]
    fn a_response_seen_first_makes_its_sender_the_server_and_parsing_starts_at_the_next_request() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(SERVER, true, 500, OK);
        rig.io(SERVER, false, 1_000, GET);
        rig.io(SERVER, true, 2_000, OK);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind, SpanKind::Server);
        assert_eq!(spans[0].start_unix_ns, 1_000);
    }

    #[test]
    fn tls_plaintext_marks_the_exchange() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io_as(SERVER, false, 1_000, GET, syscall::SSL_READ);
        rig.io_as(SERVER, true, 2_000, OK, syscall::SSL_WRITE);
        assert!(http(&rig.spans()[0]).tls);
    }

    #[test]
    fn closing_a_socket_ends_its_tls_plaintext_connection_too() {
        // A new connection on the same socket struct must not continue the old one's
        // unanswered request: its response answers its own request.
        let tls = Sock {
            sock: 0x1000 | 1,
            ..CLIENT
        };
        let mut rig = Rig::<AnyParser>::new();
        rig.io_as(tls, true, 1_000, GET, syscall::SSL_WRITE);
        rig.asm.on_close(tls.pid, 0x1000, 2_000, &mut rig.linker);
        rig.io_as(tls, true, 3_000, GET, syscall::SSL_WRITE);
        rig.io_as(tls, false, 4_000, OK, syscall::SSL_READ);
        let spans = rig.spans();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].end_unix_ns, 2_000);
        assert_eq!(
            (spans[1].start_unix_ns, spans[1].end_unix_ns),
            (3_000 - 5, 4_000)
        );
    }

    #[test]
    fn a_connection_closed_before_the_response_aborts_its_exchange() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(SERVER, false, 1_000, GET);
        rig.close(SERVER, 3_000);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end_unix_ns, 3_000);
        assert_eq!(
            spans[0].status,
            SpanStatus::Error("connection closed before the response".into())
        );
        assert_eq!(rig.asm.stats.aborted_exchanges, 1);
    }

    #[test]
    fn an_unparseable_response_aborts_the_waiting_exchanges() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(SERVER, false, 1_000, GET);
        rig.io(
            SERVER,
            true,
            2_000,
            b"\x00\x01garbage that is no status line\r\n\r\n",
        );
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].status,
            SpanStatus::Error("unparseable response".into())
        );
        assert_eq!(rig.asm.stats.desyncs, 1);
        assert_eq!(rig.asm.stats.aborted_exchanges, 1);
    }

    #[test]
    fn a_connection_that_never_looks_like_a_protocol_is_ignored() {
        let mut rig = Rig::<AnyParser>::new();
        for i in 0..MAX_UNKNOWN_CHUNKS {
            rig.io(SERVER, false, 1_000 + u64::from(i), b"\x16\x03\x01 opaque");
        }
        rig.io(SERVER, false, 2_000, GET);
        rig.io(SERVER, true, 3_000, OK);
        assert!(rig.spans().is_empty());
        assert_eq!(rig.asm.stats.ignored_connections, 1);
        assert_eq!(rig.asm.stats.http_connections, 0);
        assert_eq!(rig.asm.stats.data_events, u64::from(MAX_UNKNOWN_CHUNKS) + 2);
    }

    #[test]
    fn redis_errors_carry_their_prefix_as_the_code() {
        let mut rig = Rig::<AnyParser>::new();
        rig.io(CLIENT, true, 1_000, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        rig.io(CLIENT, false, 2_000, b"-WRONGTYPE bad\r\n");
        let spans = rig.spans();
        let d = db(&spans[0]);
        assert_eq!(d.system, crate::model::DbSystem::Redis);
        assert_eq!(d.operation.as_deref(), Some("GET"));
        // The message stays home by default (Redis echoes arguments in some).
        assert_eq!(d.error, Some(("WRONGTYPE".to_string(), String::new())));

        let mut rig = Rig::<AnyParser>::new();
        rig.asm.redaction.db_error_text = true;
        rig.io(CLIENT, true, 1_000, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        rig.io(CLIENT, false, 2_000, b"-WRONGTYPE bad\r\n");
        let spans = rig.spans();
        assert_eq!(
            db(&spans[0]).error,
            Some(("WRONGTYPE".to_string(), "WRONGTYPE bad".to_string()))
        );
    }

    /// A PostgreSQL simple query: `Q`, then CommandComplete and ReadyForQuery.
    fn pg_query(sql: &str) -> Vec<u8> {
        let mut m = vec![b'Q'];
        m.extend(((4 + sql.len() + 1) as u32).to_be_bytes());
        m.extend(sql.as_bytes());
        m.push(0);
        m
    }

    fn pg_done(tag: &str) -> Vec<u8> {
        let mut m = vec![b'C'];
        m.extend(((4 + tag.len() + 1) as u32).to_be_bytes());
        m.extend(tag.as_bytes());
        m.push(0);
        m.extend(b"Z\x00\x00\x00\x05I");
        m
    }

    #[test]
    fn sql_query_text_is_kept_only_when_asked_for() {
        for keep in [false, true] {
            let mut rig = Rig::<AnyParser>::new();
            rig.asm.redaction.db_query_text = keep;
            rig.io(
                CLIENT,
                true,
                1_000,
                &pg_query("SELECT * FROM users WHERE id = 42"),
            );
            rig.io(CLIENT, false, 2_000, &pg_done("SELECT 1"));
            let spans = rig.spans();
            let d = db(&spans[0]);
            assert_eq!(d.system, crate::model::DbSystem::Postgresql);
            assert_eq!(d.operation.as_deref(), Some("SELECT"));
            assert_eq!(d.collection.as_deref(), Some("users"));
            assert_eq!(d.rows, Some(1));
            assert_eq!(d.query_text.is_some(), keep, "keep = {keep}");
        }
    }

    /// A DNS message: header, then one question for `name` type A class IN.
    fn dns(id: u16, response: bool, name: &str) -> Vec<u8> {
        let flags: u16 = if response { 0x8180 } else { 0x0100 };
        let mut m = Vec::new();
        for v in [id, flags, 1, u16::from(response), 0, 0] {
            m.extend(v.to_be_bytes());
        }
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend(label.as_bytes());
        }
        m.extend([0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn dns_answers_pair_with_their_queries_by_id_in_any_order() {
        let udp = Sock {
            protocol: 17,
            ..CLIENT
        };
        let mut rig = Rig::<AnyParser>::new();
        rig.io(udp, true, 1_000, &dns(1, false, "a.example"));
        rig.io(udp, true, 1_100, &dns(2, false, "b.example"));
        rig.io(udp, false, 2_000, &dns(2, true, "b.example"));
        rig.io(udp, false, 3_000, &dns(1, true, "a.example"));
        let spans = rig.spans();
        let got: Vec<_> = spans
            .iter()
            .map(|s| match &s.exchange {
                Exchange::Dns(d) => (d.name.clone(), d.rcode.clone(), d.answers, s.end_unix_ns),
                other => panic!("not DNS: {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.example".into(), Some("NOERROR".into()), Some(1), 3_000),
                ("b.example".into(), Some("NOERROR".into()), Some(1), 2_000),
            ]
        );
    }

    #[test]
    fn dns_is_tried_on_udp_only_and_http_on_streams_only() {
        let mut rig = Rig::<AnyParser>::new();
        let udp = Sock {
            protocol: 17,
            ..SERVER
        };
        rig.io(udp, false, 1_000, GET);
        rig.io(CLIENT, true, 1_000, &dns(1, false, "a.example"));
        assert_eq!(rig.asm.stats.http_connections, 0);
    }

    #[test]
    fn an_assembler_of_one_protocol_recognises_only_that_one() {
        let mut rig = Rig::<RedisConn>::new();
        rig.io(SERVER, false, 1_000, GET);
        rig.io(CLIENT, true, 1_000, b"*1\r\n$4\r\nPING\r\n");
        rig.io(CLIENT, false, 2_000, b"+PONG\r\n");
        let spans = rig.spans();
        assert_eq!(rig.asm.stats.http_connections, 1);
        assert_eq!(spans.len(), 1);
        assert_eq!(db(&spans[0]).operation.as_deref(), Some("PING"));
    }

    // ---- the parser memory budget

    /// The budget's invariant: it holds exactly the sum of the connections' charges, and each
    /// charge is what the connection's parser holds (nothing for one without a parser).
    fn audit<P: ParserSet>(asm: &Assembler<P>) -> usize {
        let mut sum = 0;
        for key in asm.conns.all_keys() {
            let state = &asm.conns.get(&key).unwrap().state;
            let held = match &state.proto {
                Proto::Known { parser, .. } => parser.held(),
                _ => 0,
            };
            assert_eq!(
                state.charged, held,
                "{key:?} is charged what its parser holds"
            );
            sum += held;
        }
        assert_eq!(
            asm.budget.used(),
            sum,
            "the budget is the sum of the charges"
        );
        sum
    }

    fn sock(i: u64) -> Sock {
        Sock {
            pid: 100 + (i % 3) as u32,
            sock: 1000 + i,
            remote_port: 20_000 + i as u16,
            ..SERVER
        }
    }

    /// A slowloris head: most of a request head, sent in pieces.
    fn slow_head(rig: &mut Rig, s: Sock, ts: u64, pieces: usize) {
        rig.io(s, false, ts, b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: ");
        for i in 0..pieces {
            rig.io(s, false, ts + 1 + i as u64, &[b'a'; 1000]);
        }
    }

    #[test]
    fn slowloris_heads_over_many_connections_are_shed_at_the_budget_and_all_of_it_comes_back() {
        const LIMIT: usize = 1 << 20;
        let mut rig = Rig::<AnyParser> {
            asm: Assembler::new(4096),
            linker: Linker::new(0, 10_000, Some(7)),
        };
        rig.asm.budget.set_limit(LIMIT);
        // One request waiting on each connection, so that shedding has an exchange to end.
        let n = 300u64;
        for i in 0..n {
            rig.io(sock(i), false, 1_000 + i, GET);
            slow_head(&mut rig, sock(i), 10_000 + 100 * i, 12);
        }
        let used = audit(&rig.asm);
        let shed = rig.asm.budget.shed;
        // 300 heads of 12 KB would hold over 3.6 MB: most were shed, the rest fit.
        assert!(shed >= 150 && shed < n, "{shed} connections shed");
        // Over the limit by at most one push's growth of one buffer (doubling to 2 × 16 KiB).
        assert!(used <= LIMIT && rig.asm.budget.peak <= LIMIT + 2 * 16 * 1024);
        assert_eq!(rig.asm.stats().budget_shed, shed);
        assert_eq!(rig.asm.stats().parser_bytes, used as u64);
        // A shed connection's waiting request ends with the reason; its later bytes are not
        // parsed (and not charged).
        let spans = rig.spans();
        let ended = spans
            .iter()
            .filter(|s| matches!(&s.status, SpanStatus::Error(e) if e == SHED_REASON))
            .count();
        assert_eq!(ended as u64, shed);
        let shed_one = (0..n)
            .map(sock)
            .find(|s| {
                let key = ConnKey {
                    tgid: s.pid,
                    sock_id: s.sock,
                };
                matches!(rig.asm.conns.get(&key).unwrap().state.proto, Proto::Ignored)
            })
            .unwrap();
        rig.io(shed_one, false, 90_000, &[b'a'; 1000]);
        assert_eq!(audit(&rig.asm), used);
        // A whole request on a new connection needs no buffer: still traced while full.
        let fresh = sock(10_000);
        rig.io(fresh, false, 100_000, GET);
        rig.io(fresh, true, 100_100, OK);
        let spans = rig.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(http(&spans[0]).status, Some(200));
        // Closing half and expiring the rest gives every byte back.
        for i in (0..n).step_by(2) {
            rig.close(sock(i), 200_000);
        }
        audit(&rig.asm);
        rig.asm.expire(300_000, &mut rig.linker);
        assert_eq!((rig.asm.conns.len(), rig.asm.budget.used()), (0, 0));
    }

    /// Every way a connection goes, or its parser lets go of bytes, gives its charge back.
    #[test]
    fn every_path_gives_the_charge_back() {
        let mut rig = Rig::<AnyParser>::new();
        // Close.
        slow_head(&mut rig, sock(1), 1_000, 5);
        assert!(audit(&rig.asm) >= 5_000);
        rig.close(sock(1), 2_000);
        assert_eq!(audit(&rig.asm), 0);
        // Process exit (the TLS twin and every socket of the process).
        slow_head(&mut rig, sock(2), 3_000, 5);
        slow_head(&mut rig, sock(5), 3_000, 5);
        rig.asm.on_exit(sock(2).pid, 4_000, &mut rig.linker);
        assert_eq!(audit(&rig.asm), 0);
        // Idle expiry.
        slow_head(&mut rig, sock(3), 5_000, 5);
        rig.asm.expire(6_000, &mut rig.linker);
        assert_eq!(audit(&rig.asm), 0);
        // A parser error: a head over the parser's cap desyncs and frees the buffer.
        slow_head(&mut rig, sock(4), 7_000, 5);
        let held = audit(&rig.asm);
        slow_head(&mut rig, sock(4), 8_000, 20);
        assert!(audit(&rig.asm) < held, "the desync gave the head back");
        rig.close(sock(4), 9_000);
        assert_eq!(audit(&rig.asm), 0);
        // Eviction from a full table (16 connections).
        for i in 0..17 {
            slow_head(&mut rig, sock(100 + i), 10_000 + 100 * i, 2);
        }
        assert_eq!(rig.asm.conns.len(), 16);
        audit(&rig.asm);
        // HTTP/2: a CONTINUATION flood is charged while it lasts and given back when the block
        // ends; open streams are charged and given back when reset.
        let h2 = sock(200);
        let frame = |ty: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([ty, flags]);
            f.extend(stream.to_be_bytes());
            f.extend(payload);
            f
        };
        rig.io(h2, false, 20_000, ztrace_protocols::http2::PREFACE);
        // HEADERS (no END_HEADERS): :method GET, :path /.
        rig.io(h2, false, 20_001, &frame(1, 0, 1, &[0x82, 0x84]));
        let before = audit(&rig.asm);
        for i in 0..40 {
            rig.io(h2, false, 20_002 + i, &frame(9, 0, 1, &[0x40; 1000]));
        }
        let flooded = audit(&rig.asm);
        assert!(flooded >= before + 40_000, "{before} → {flooded}");
        rig.io(h2, false, 20_100, &frame(9, 4, 1, &[]));
        assert!(audit(&rig.asm) <= before + 8 * 1024);
        for id in (3..400).step_by(2) {
            rig.io(
                h2,
                false,
                20_200 + id as u64,
                &frame(1, 4, id, &[0x82, 0x84]),
            );
        }
        let streams = audit(&rig.asm);
        assert!(streams >= before + 100 * 32, "{before} → {streams}");
        for id in (1..400).step_by(2) {
            rig.io(
                h2,
                true,
                21_000 + id as u64,
                &frame(3, 0, id, &[0, 0, 0, 8]),
            );
        }
        assert!(audit(&rig.asm) < streams, "reset streams are given back");
        // Shutdown closes everything.
        for key in rig.asm.conns.all_keys() {
            rig.asm
                .on_close(key.tgid, key.sock_id, 30_000, &mut rig.linker);
        }
        assert_eq!((audit(&rig.asm), rig.asm.budget.used()), (0, 0));
    }

    /// Random traffic over a small table and a small budget — heads in pieces, whole requests,
    /// answers, garbage, HTTP/2 floods, closes, process exits, idle expiry, evictions, sheds —
    /// keeps the budget equal to the sum of the charges after every step, and ends at zero.
    #[test]
    fn random_traffic_keeps_the_accounting_exact_and_ends_at_zero() {
        let mut rig = Rig::<AnyParser> {
            asm: Assembler::new(32),
            linker: Linker::new(0, 100_000, Some(7)),
        };
        rig.asm.budget.set_limit(128 * 1024); // below what 32 connections can hold
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let h2_frame = |ty: u8, flags: u8, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([ty, flags, 0, 0, 0, 1]);
            f.extend(payload);
            f
        };
        let pad = vec![b'a'; 3000];
        let mut ts = 1_000;
        for _ in 0..20_000 {
            ts += 1 + next(1_000);
            let i = next(36);
            let (s, h2) = (sock(i), i % 2 == 1);
            let key = ConnKey {
                tgid: s.pid,
                sock_id: s.sock,
            };
            if rig.asm.conns.get(&key).is_none() {
                // A new connection starts like its protocol: an HTTP/1 head, or the HTTP/2
                // preface and a header block left open.
                let start = match h2 {
                    false => b"GET /slow HTTP/1.1\r\nX-Pad: ".to_vec(),
                    true => [
                        &ztrace_protocols::http2::PREFACE[..],
                        &h2_frame(1, 0, &[0x82]),
                    ]
                    .concat(),
                };
                rig.io(s, false, ts, &start);
                audit(&rig.asm);
                continue;
            }
            match (next(40), h2) {
                (0..=24, false) => rig.io(s, false, ts, &pad[..next(3000) as usize]),
                (0..=24, true) => {
                    rig.io(s, false, ts, &h2_frame(9, 0, &pad[..next(3000) as usize]))
                }
                (25..=28, false) => rig.io(s, false, ts, b"\r\n\r\n"),
                (25..=28, true) => rig.io(s, false, ts, &h2_frame(9, 4, &[0x84])),
                (29..=31, _) => rig.io(s, true, ts, OK),
                (32..=33, _) => rig.io(s, false, ts, b"\x00\x01\x02 garbage\r\n\r\n"),
                (34..=36, _) => rig.close(s, ts),
                (37, _) => rig.asm.on_exit(s.pid, ts, &mut rig.linker),
                (38, _) => rig.asm.expire(ts.saturating_sub(200_000), &mut rig.linker),
                (_, false) => rig.io(s, false, ts, GET),
                (_, true) => rig.io(s, false, ts, &h2_frame(1, 0, &[0x82])),
            }
            audit(&rig.asm);
            // Over the limit by at most one push: a buffer that doubles (≤ 2 × 64 KiB).
            assert!(rig.asm.budget.used() <= 128 * 1024 + 128 * 1024);
        }
        let (shed, evicted) = (rig.asm.budget.shed, rig.asm.conns.evicted);
        assert!(shed > 0 && evicted > 0, "shed {shed}, evicted {evicted}");
        for key in rig.asm.conns.all_keys() {
            rig.asm.on_close(key.tgid, key.sock_id, ts, &mut rig.linker);
        }
        assert_eq!((audit(&rig.asm), rig.asm.budget.used()), (0, 0));
    }
}
