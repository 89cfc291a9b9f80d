//! Exchange assembler: detects each connection's protocol from its first bytes, feeds its byte
//! streams to that protocol's parser, and turns parsed messages into exchanges — request ↔
//! response pairs with their times, threads and TCP sequence numbers — handed to the linker as
//! they start and end. In-order protocols (HTTP/1, Redis) pair responses with the oldest open
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
use ztrace_protocols::{
    Dir, dns,
    http1::{self, Http1Conn, Http1Event},
    http2::{self, H2Conn, H2Event},
    mysql::{self, MySqlConn, MySqlEvent},
    postgres::{self, PgConn, PgEvent},
    redis::{self, RedisConn, RedisEvent},
    sql,
};

use crate::{
    conntrack::{Conn, ConnKey, ConnTable, Stream},
    link::{Cause, Handle, Io, Linker, SeqKey, Start, parse_traceparent},
    model::{DbExchange, DbSystem, DnsExchange, Exchange, HttpExchange, RpcExchange, SpanKind},
};

/// After this many chunks that look like no known protocol, a connection is ignored.
const MAX_UNKNOWN_CHUNKS: u32 = 4;
const IPPROTO_UDP: u16 = 17;

/// A connection's protocol parser.
pub enum Parser {
    Http(Box<Http1Conn>),
    Http2(Box<H2Conn>),
    Redis(Box<RedisConn>),
    Postgres(Box<PgConn>),
    Mysql(Box<MySqlConn>),
    Dns(DnsDatagrams),
}

/// DNS over UDP: every datagram is one message; only stream offsets need keeping.
#[derive(Default)]
pub struct DnsDatagrams {
    request_pos: u64,
    response_pos: u64,
}

/// What a parser found, in protocol-neutral terms. `key` names the exchange for protocols that
/// multiplex (HTTP/2 stream id, DNS id); None means "the oldest open one".
enum Step {
    /// A request whose first byte is at `start` of the request stream.
    Request {
        key: Option<u64>,
        start: u64,
        exchange: Exchange,
        traceparent: Option<String>,
    },
    /// Something learnt about an open exchange before it ends (e.g. an HTTP status line).
    Update { key: Option<u64>, update: Update },
    /// The exchange's response ended at `end` (one past its last byte in the response stream).
    End {
        key: Option<u64>,
        end: u64,
        update: Update,
    },
    /// The exchange was cut off (stream reset).
    Abort { key: u64, reason: String },
    /// The parser lost track of `dir`.
    Desync(Dir),
}

enum Update {
    HttpStatus(u16),
    HttpResponseBody(u64),
    Db {
        error: Option<(String, String)>,
        rows: Option<u64>,
    },
    Rpc {
        http_status: Option<u16>,
        grpc_status: Option<i32>,
        grpc_message: Option<String>,
    },
    Dns {
        rcode: String,
        answers: u16,
    },
}

impl Update {
    fn apply(self, exchange: &mut Exchange) {
        match (self, exchange) {
            (Update::HttpStatus(s), Exchange::Http(h)) => h.status = Some(s),
            (Update::HttpResponseBody(n), Exchange::Http(h)) => h.response_body_size = Some(n),
            (Update::Db { error, rows }, Exchange::Db(d)) => {
                d.error = error;
                d.rows = rows;
            }
            (Update::Rpc { http_status, .. }, Exchange::Http(h)) => h.status = http_status,
            (
                Update::Rpc {
                    http_status,
                    grpc_status,
                    grpc_message,
                },
                Exchange::Rpc(r),
            ) => {
                r.http_status = http_status;
                r.grpc_status = grpc_status;
                r.grpc_message = grpc_message;
            }
            (Update::Dns { rcode, answers }, Exchange::Dns(d)) => {
                d.rcode = Some(rcode);
                d.answers = Some(answers);
            }
            _ => {}
        }
    }
}

impl Parser {
    /// Picks a parser from the first bytes seen in either direction, with this process's role.
    fn detect(payload: &[u8], egress: bool, transport: u16) -> Option<(Parser, SpanKind)> {
        let (sends_requests, receives_requests) = if egress {
            (SpanKind::Client, SpanKind::Server)
        } else {
            (SpanKind::Server, SpanKind::Client)
        };
        if transport == IPPROTO_UDP {
            return dns::looks_like_query(payload)
                .then(|| (Parser::Dns(DnsDatagrams::default()), sends_requests));
        }
        if http2::looks_like_preface(payload) {
            return Some((Parser::Http2(Box::default()), sends_requests));
        }
        if http1::looks_like_request(payload) {
            return Some((Parser::Http(Box::default()), sends_requests));
        }
        if http1::looks_like_response(payload) {
            // We attached mid-exchange; parsing starts at the next request.
            return Some((Parser::Http(Box::default()), receives_requests));
        }
        if redis::looks_like_command(payload) {
            return Some((Parser::Redis(Box::default()), sends_requests));
        }
        if postgres::looks_like_startup(payload) || postgres::looks_like_query(payload) {
            return Some((Parser::Postgres(Box::default()), sends_requests));
        }
        // MySQL servers speak first: whoever sends the greeting is the server.
        if mysql::looks_like_greeting(payload) {
            return Some((Parser::Mysql(Box::default()), receives_requests));
        }
        if mysql::looks_like_command(payload) {
            return Some((Parser::Mysql(Box::default()), sends_requests));
        }
        None
    }

    /// `http_events`: scratch for the HTTP/1 parser's events (one `Vec` for every chunk was an
    /// allocation per captured read or write).
    fn push(
        &mut self,
        dir: Dir,
        payload: &[u8],
        len: u64,
        steps: &mut Vec<Step>,
        http_events: &mut Vec<Http1Event>,
    ) {
        match self {
            Parser::Http(p) => {
                http_events.clear();
                p.push(dir, payload, len, http_events);
                steps.extend(http_events.drain(..).filter_map(http_step));
            }
            Parser::Http2(p) => {
                let mut events = Vec::new();
                p.push(dir, payload, len, &mut events);
                steps.extend(events.into_iter().map(h2_step));
            }
            Parser::Redis(p) => {
                let mut events = Vec::new();
                p.push(dir, payload, len, &mut events);
                steps.extend(events.into_iter().map(redis_step));
            }
            Parser::Postgres(p) => {
                let mut events = Vec::new();
                p.push(dir, payload, len, &mut events);
                let db = p.database().map(str::to_string);
                steps.extend(events.into_iter().filter_map(|e| pg_step(e, db.as_deref())));
            }
            Parser::Mysql(p) => {
                let mut events = Vec::new();
                p.push(dir, payload, len, &mut events);
                let db = p.database().map(str::to_string);
                steps.extend(
                    events
                        .into_iter()
                        .filter_map(|e| mysql_step(e, db.as_deref())),
                );
            }
            Parser::Dns(d) => steps.extend(d.push(dir, payload, len)),
        }
    }

    /// Exchanges interleave on the connection (paired by key, not in order).
    fn multiplexed(&self) -> bool {
        matches!(self, Parser::Http2(_) | Parser::Dns(_))
    }

    fn close(&mut self, steps: &mut Vec<Step>) {
        match self {
            Parser::Http(p) => {
                let mut events = Vec::new();
                p.close(&mut events);
                steps.extend(events.into_iter().filter_map(http_step));
            }
            Parser::Http2(p) => {
                let mut events = Vec::new();
                p.close(&mut events);
                steps.extend(events.into_iter().map(h2_step));
            }
            Parser::Redis(p) => {
                let mut events = Vec::new();
                p.close(&mut events);
                steps.extend(events.into_iter().map(redis_step));
            }
            Parser::Postgres(p) => {
                let mut events = Vec::new();
                p.close(&mut events);
                steps.extend(events.into_iter().filter_map(|e| pg_step(e, None)));
            }
            Parser::Mysql(p) => {
                let mut events = Vec::new();
                p.close(&mut events);
                steps.extend(events.into_iter().filter_map(|e| mysql_step(e, None)));
            }
            Parser::Dns(_) => {}
        }
    }
}

/// A SQL statement as a database exchange: operation and table from the text, which itself is
/// kept only sanitised.
fn sql_request(system: DbSystem, start: u64, query: &str, database: Option<&str>) -> Step {
    let (operation, collection) = sql::summarize(query);
    Step::Request {
        key: None,
        start,
        traceparent: None,
        exchange: Exchange::Db(DbExchange {
            system,
            operation,
            collection,
            namespace: database.map(str::to_string),
            query_text: (!query.is_empty()).then(|| sql::sanitize(query)),
            error: None,
            rows: None,
        }),
    }
}

fn pg_step(e: PgEvent, database: Option<&str>) -> Option<Step> {
    Some(match e {
        PgEvent::Query { start, query, .. } => {
            sql_request(DbSystem::Postgresql, start, &query, database)
        }
        PgEvent::Result {
            end, error, rows, ..
        } => Step::End {
            key: None,
            end,
            update: Update::Db { error, rows },
        },
        PgEvent::Desync { dir, .. } => Step::Desync(dir),
        PgEvent::Startup { .. } => return None,
    })
}

fn mysql_step(e: MySqlEvent, database: Option<&str>) -> Option<Step> {
    Some(match e {
        MySqlEvent::Query { start, query, .. } => {
            sql_request(DbSystem::Mysql, start, &query, database)
        }
        MySqlEvent::Result {
            end, error, rows, ..
        } => Step::End {
            key: None,
            end,
            update: Update::Db {
                error: error.map(|(code, _state, message)| (code.to_string(), message)),
                rows,
            },
        },
        MySqlEvent::Desync { dir, .. } => Step::Desync(dir),
        MySqlEvent::Handshake { .. } => return None,
    })
}

impl DnsDatagrams {
    fn push(&mut self, dir: Dir, payload: &[u8], len: u64) -> Option<Step> {
        let pos = match dir {
            Dir::Request => &mut self.request_pos,
            Dir::Response => &mut self.response_pos,
        };
        let start = *pos;
        *pos = pos.saturating_add(len);
        let msg = dns::parse_message(payload)?;
        let key = Some(u64::from(msg.id));
        match (dir, msg.is_response) {
            (Dir::Request, false) => {
                let (name, qtype) = msg.question?;
                Some(Step::Request {
                    key,
                    start,
                    traceparent: None,
                    exchange: Exchange::Dns(DnsExchange {
                        id: msg.id,
                        name,
                        qtype: dns::qtype_name(qtype).into_owned(),
                        rcode: None,
                        answers: None,
                    }),
                })
            }
            (Dir::Response, true) => Some(Step::End {
                key,
                end: start.saturating_add(len),
                update: Update::Dns {
                    rcode: dns::rcode_name(msg.rcode).to_string(),
                    answers: msg.answers,
                },
            }),
            _ => None,
        }
    }
}

fn http_step(e: Http1Event) -> Option<Step> {
    Some(match e {
        Http1Event::Request { start, head } => Step::Request {
            key: None,
            start,
            traceparent: head.traceparent,
            exchange: Exchange::Http(HttpExchange {
                method: head.method,
                target: head.target,
                host: head.host,
                version: if head.version == 0 { "1.0" } else { "1.1" },
                status: None,
                user_agent: head.user_agent,
                request_body_size: head.content_length,
                response_body_size: None,
                tls: false,
            }),
        },
        Http1Event::Response {
            head,
            interim: false,
            ..
        } => Step::Update {
            key: None,
            update: Update::HttpStatus(head.status),
        },
        Http1Event::ResponseComplete { end, body_len, .. } => Step::End {
            key: None,
            end,
            update: Update::HttpResponseBody(body_len),
        },
        Http1Event::Desync { dir, .. } => Step::Desync(dir),
        Http1Event::RequestComplete { .. } | Http1Event::Response { interim: true, .. } => {
            return None;
        }
    })
}

fn h2_step(e: H2Event) -> Step {
    match e {
        H2Event::Request {
            stream,
            start,
            head,
        } => {
            let grpc = head
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/grpc"));
            let exchange = match head.path.trim_start_matches('/').split_once('/') {
                Some((service, method)) if grpc => Exchange::Rpc(RpcExchange {
                    service: service.to_string(),
                    method: method.to_string(),
                    authority: head.authority.clone(),
                    ..Default::default()
                }),
                _ => Exchange::Http(HttpExchange {
                    method: head.method,
                    target: head.path,
                    host: head.authority,
                    version: "2",
                    user_agent: head.user_agent,
                    ..Default::default()
                }),
            };
            Step::Request {
                key: Some(u64::from(stream)),
                start,
                exchange,
                traceparent: head.traceparent,
            }
        }
        H2Event::Response {
            stream, end, head, ..
        } => Step::End {
            key: Some(u64::from(stream)),
            end,
            update: Update::Rpc {
                http_status: head.status,
                grpc_status: head.grpc_status,
                grpc_message: head.grpc_message,
            },
        },
        H2Event::Reset {
            stream, error_code, ..
        } => Step::Abort {
            key: u64::from(stream),
            reason: format!("stream reset (HTTP/2 error code {error_code})"),
        },
        H2Event::Desync { dir, .. } => Step::Desync(dir),
    }
}

fn redis_step(e: RedisEvent) -> Step {
    match e {
        RedisEvent::Command { start, cmd, .. } => Step::Request {
            key: None,
            start,
            traceparent: None,
            exchange: Exchange::Db(DbExchange {
                system: DbSystem::Redis,
                operation: Some(cmd.name),
                collection: None,
                namespace: None,
                query_text: Some(cmd.sanitized),
                error: None,
                rows: None,
            }),
        },
        RedisEvent::Reply { end, error, .. } => Step::End {
            key: None,
            end,
            update: Update::Db {
                error: error.map(|e| {
                    let code = e.split_whitespace().next().unwrap_or("ERR").to_string();
                    (code, e)
                }),
                rows: None,
            },
        },
        RedisEvent::Desync { dir, .. } => Step::Desync(dir),
    }
}

#[derive(Default)]
pub enum Proto {
    #[default]
    Unknown,
    Known {
        role: SpanKind,
        parser: Parser,
        /// Open exchanges in request order, with their key for multiplexing protocols.
        pending: VecDeque<(Option<u64>, Handle)>,
    },
    Ignored,
}

#[derive(Default)]
pub struct ConnState {
    proto: Proto,
    unknown_chunks: u32,
    /// Plaintext from the TLS library (the connection is HTTPS, gRPC over TLS…).
    tls: bool,
    /// Stream offsets (request, response direction) where the parser started: bytes seen before
    /// the protocol was recognised never reached it, so parser offsets are shifted by these.
    base: (u64, u64),
    /// This process connected the socket and no request has gone over it yet: the connecting
    /// thread's cause at `connect()` (see the linker's module docs, rule 3).
    connect_cause: Option<Option<Cause>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssembleStats {
    pub data_events: u64,
    /// Connections whose protocol was recognised.
    pub http_connections: u64,
    pub ignored_connections: u64,
    pub desyncs: u64,
    pub aborted_exchanges: u64,
}

pub struct Assembler {
    pub conns: ConnTable<ConnState>,
    steps: Vec<Step>,
    http_events: Vec<Http1Event>,
    pub stats: AssembleStats,
    /// Keep (sanitised) database query text; off by default: queries stay home unless asked for.
    pub db_query_text: bool,
}

impl Assembler {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: ConnTable::new(max_conns),
            steps: Vec::new(),
            http_events: Vec::new(),
            stats: AssembleStats::default(),
            db_query_text: false,
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
        stream.advance(ev.bytes, ev.enter_ns, ev.header.ts_ns, ev.header.tid, seq);

        if matches!(conn.state.proto, Proto::Unknown) {
            match Parser::detect(payload, egress, ev.tuple.protocol) {
                Some((parser, role)) => {
                    self.stats.http_connections += 1;
                    conn.state.proto = Proto::Known {
                        role,
                        parser,
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
        if let Proto::Known { role, parser, .. } = &mut conn.state.proto {
            let dir = match (*role, egress) {
                (SpanKind::Client, true) | (SpanKind::Server, false) => Dir::Request,
                _ => Dir::Response,
            };
            let role = *role;
            let multiplexed = parser.multiplexed();
            self.steps.clear();
            parser.push(
                dir,
                payload,
                ev.bytes,
                &mut self.steps,
                &mut self.http_events,
            );
            let mut ended = None;
            for mut step in self.steps.drain(..) {
                if !self.db_query_text
                    && let Step::Request {
                        exchange: Exchange::Db(db),
                        ..
                    } = &mut step
                {
                    db.query_text = None;
                }
                ended = apply(key, conn, step, linker, &mut self.stats).or(ended);
            }
            if let Some(io) = thread_io(&conn.state.proto, role, egress, multiplexed, ended) {
                linker.io(key.tgid, ev.header.tid, io);
            }
        } else if !egress {
            linker.io(key.tgid, ev.header.tid, Io::UnknownInput);
        }
        if let Some((k, c)) = evicted {
            finish_conn(k, c, ev.header.ts_ns, linker, &mut self.stats);
        }
    }

    /// The traced process connected a socket: remember whom the connecting thread worked for.
    pub fn on_connect(&mut self, ev: &ConnEvent, linker: &mut Linker) {
        let key = ConnKey {
            tgid: ev.header.tgid,
            sock_id: ev.sock_id,
        };
        let (conn, evicted) = self.conns.entry(key, &ev.tuple, ev.header.ts_ns);
        conn.state.connect_cause = Some(linker.connect_cause(key.tgid, ev.header.tid));
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

/// What a socket read or write tells the linker about the thread's cause: which exchange the
/// bytes belonged to. Multiplexed protocols (HTTP/2, DNS) carry many exchanges per read, so
/// their inputs say nothing definite.
fn thread_io(
    proto: &Proto,
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
fn streams(conn: &Conn<ConnState>, role: SpanKind) -> (&Stream, &Stream) {
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
fn apply(
    key: ConnKey,
    conn: &mut Conn<ConnState>,
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
            traceparent,
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
            let h = linker.start(Start {
                kind: role,
                pid: key.tgid,
                tid: mark.tid,
                start_ns,
                local: conn.local,
                peer: conn.peer,
                exchange,
                traceparent: traceparent.as_deref().and_then(parse_traceparent),
                seq_key: seq.map(|seq| SeqKey {
                    client,
                    server,
                    seq,
                }),
                connect_cause: conn.state.connect_cause.take().flatten(),
            });
            if let Proto::Known { pending, .. } = &mut conn.state.proto {
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

fn finish_conn(
    key: ConnKey,
    mut conn: Conn<ConnState>,
    ts_ns: u64,
    linker: &mut Linker,
    stats: &mut AssembleStats,
) {
    let mut steps = Vec::new();
    if let Proto::Known { parser, .. } = &mut conn.state.proto {
        parser.close(&mut steps);
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
