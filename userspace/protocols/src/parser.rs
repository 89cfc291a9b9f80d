//! The shape every protocol parser shares, what it reports in protocol-neutral terms, and the
//! registry the daemon's assembler dispatches over.
//!
//! - [`Parser`] is the byte-stream half: one value per connection, fed both directions, emitting
//!   the protocol's own events. Every parser implements it (DNS over TCP included).
//! - [`Protocol`] adds what the assembler needs to run a parser on a connection: how to recognise
//!   the protocol from a connection's first bytes, and how each event reads as a [`Step`] of an
//!   exchange (request seen, response ended, …).
//! - [`ParserSet`] is what the assembler is generic over: any single [`Protocol`] is one, and the
//!   [`registry!`] below builds [`AnyParser`], an enum over every registered protocol (enum
//!   dispatch: no trait objects and no allocation per pushed chunk; each variant's parser is boxed
//!   once per connection to keep the connection table small).
//!
//! Adding a protocol: write its module (a parser implementing both traits), then add one line to
//! the `registry!` call at the end of this file. Its place in the list is its detection order.
//!
//! This module owns the traits and the dispatch; it must not parse bytes itself nor know about
//! spans, linking or attribute names.

use crate::exchange::Exchange;
use crate::{Dir, dns, http1, http2, mysql, postgres, redis};

/// The transport a connection runs on, which decides the protocols worth trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// From an IP protocol number (17 is UDP; everything else is treated as a byte stream).
    pub fn from_ip_protocol(protocol: u16) -> Self {
        if protocol == 17 {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }
}

/// Who sent the bytes a protocol was recognised from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// The side that sends requests (the client).
    Requester,
    /// The side that answers them: a server greeting, or a response seen because tracing began
    /// mid-exchange.
    Responder,
}

/// What a parser event means for an exchange. `key` names the exchange for protocols that
/// multiplex (HTTP/2 stream id, DNS id); None means "the oldest open one".
#[derive(Debug)]
pub enum Step {
    /// A request whose first byte is at `start` of the request stream.
    Request {
        key: Option<u64>,
        start: u64,
        exchange: Exchange,
        /// The trace context it carried, if any (boxed: most requests carry none, and a step
        /// is moved several times on its way to a span).
        context: Option<Box<TraceContext>>,
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

/// A request's W3C trace context, as text (the daemon checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    /// The `tracestate` that came with it (several fields joined with commas).
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// None without a `traceparent`: a `tracestate` alone means nothing (W3C Trace Context).
    #[inline]
    pub fn of(traceparent: Option<String>, tracestate: Option<String>) -> Option<Box<Self>> {
        traceparent.map(|traceparent| Self::boxed(traceparent, tracestate))
    }

    /// Out of line: most requests carry no context, and the parsers' hot paths stay small.
    #[cold]
    #[inline(never)]
    fn boxed(traceparent: String, tracestate: Option<String>) -> Box<Self> {
        Box::new(TraceContext {
            traceparent,
            tracestate,
        })
    }
}

/// What a response tells about its exchange.
#[derive(Debug)]
pub enum Update {
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
    /// Writes what was learnt into the exchange; an update of another protocol's kind is ignored.
    pub fn apply(self, exchange: &mut Exchange) {
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

/// A connection's parser, fed one syscall's worth of bytes at a time (see the crate docs for the
/// offsets and gaps contract).
pub trait Parser {
    type Event;
    /// `data` is the captured head of the syscall's bytes, `len >= data.len()` their true count.
    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<Self::Event>);
    /// The connection closed: whatever can still be concluded.
    fn close(&mut self, out: &mut Vec<Self::Event>);
    /// Heap bytes this parser holds that grow with its input (partial messages, header blocks,
    /// decoder tables, per-stream and prepared-statement state), capacities counted: what the
    /// daemon's global parser memory budget charges the connection. Cheap (no walk over
    /// entries): it is asked after every push.
    fn held(&self) -> usize;
}

/// A parser the assembler can run on a connection.
pub trait Protocol: Parser + Default {
    /// The transport the protocol runs on; detection is tried only there.
    const TRANSPORT: Transport = Transport::Tcp;
    /// Exchanges interleave on a connection and are paired by key, not in order.
    const MULTIPLEXED: bool = false;
    /// Whether a connection's first bytes (in either direction) are this protocol, and whose.
    fn detect(payload: &[u8]) -> Option<Opener>;
    /// Whether `prefix`, which [`Protocol::detect`] did not take, may be the start of a first
    /// message that more bytes would let it take (a request line written in pieces). The
    /// assembler then keeps the bytes and asks again with the next piece appended.
    fn incomplete(_prefix: &[u8]) -> bool {
        false
    }
    /// The event as a step of an exchange (None: nothing the assembler needs). Called after the
    /// push or close that produced it, so connection state (e.g. the database name) is current.
    fn step(&self, event: Self::Event) -> Option<Step>;
}

/// What the assembler is generic over: recognise a connection's protocol, then turn its bytes
/// into [`Step`]s. `Scratch` holds the reusable event buffers, one set per assembler.
pub trait ParserSet: Sized {
    type Scratch: Default;
    fn detect(payload: &[u8], transport: Transport) -> Option<(Self, Opener)>;
    /// See [`Protocol::incomplete`]: whether any protocol may still take these bytes.
    fn incomplete(prefix: &[u8], transport: Transport) -> bool;
    fn multiplexed(&self) -> bool;
    fn push(
        &mut self,
        dir: Dir,
        data: &[u8],
        len: u64,
        scratch: &mut Self::Scratch,
        steps: &mut Vec<Step>,
    );
    fn close(&mut self, scratch: &mut Self::Scratch, steps: &mut Vec<Step>);
    /// See [`Parser::held`].
    fn held(&self) -> usize;
}

/// Push, then read the events as steps; `events` is scratch, emptied.
fn push_steps<P: Protocol>(
    parser: &mut P,
    dir: Dir,
    data: &[u8],
    len: u64,
    events: &mut Vec<P::Event>,
    steps: &mut Vec<Step>,
) {
    events.clear();
    parser.push(dir, data, len, events);
    steps.extend(events.drain(..).filter_map(|e| parser.step(e)));
}

fn close_steps<P: Protocol>(parser: &mut P, events: &mut Vec<P::Event>, steps: &mut Vec<Step>) {
    events.clear();
    parser.close(events);
    steps.extend(events.drain(..).filter_map(|e| parser.step(e)));
}

/// A single protocol is a set of one.
impl<P: Protocol> ParserSet for P {
    type Scratch = Vec<P::Event>;

    fn detect(payload: &[u8], transport: Transport) -> Option<(Self, Opener)> {
        if transport != P::TRANSPORT {
            return None;
        }
        P::detect(payload).map(|opener| (P::default(), opener))
    }

    fn incomplete(prefix: &[u8], transport: Transport) -> bool {
        transport == P::TRANSPORT && P::incomplete(prefix)
    }

    fn multiplexed(&self) -> bool {
        P::MULTIPLEXED
    }

    fn push(
        &mut self,
        dir: Dir,
        data: &[u8],
        len: u64,
        scratch: &mut Self::Scratch,
        steps: &mut Vec<Step>,
    ) {
        push_steps(self, dir, data, len, scratch, steps);
    }

    fn close(&mut self, scratch: &mut Self::Scratch, steps: &mut Vec<Step>) {
        close_steps(self, scratch, steps);
    }

    fn held(&self) -> usize {
        Parser::held(self)
    }
}

/// Builds [`AnyParser`] (one variant per protocol) and [`AnyScratch`], and implements
/// [`ParserSet`] for them by enum dispatch. Detection tries the protocols in the order listed.
macro_rules! registry {
    ($($name:ident => $parser:ty,)*) => {
        /// A connection's parser, of any registered protocol.
        pub enum AnyParser {
            $($name(Box<$parser>),)*
        }

        /// Event buffers for every registered protocol, reused across pushes.
        #[derive(Default)]
        #[allow(non_snake_case)]
        pub struct AnyScratch {
            $($name: Vec<<$parser as Parser>::Event>,)*
        }

        impl ParserSet for AnyParser {
            type Scratch = AnyScratch;

            fn detect(payload: &[u8], transport: Transport) -> Option<(Self, Opener)> {
                $(
                    if transport == <$parser as Protocol>::TRANSPORT
                        && let Some(opener) = <$parser as Protocol>::detect(payload)
                    {
                        return Some((AnyParser::$name(Box::default()), opener));
                    }
                )*
                None
            }

            fn incomplete(prefix: &[u8], transport: Transport) -> bool {
                $(
                    (transport == <$parser as Protocol>::TRANSPORT
                        && <$parser as Protocol>::incomplete(prefix)) ||
                )* false
            }

            fn multiplexed(&self) -> bool {
                match self {
                    $(AnyParser::$name(_) => <$parser as Protocol>::MULTIPLEXED,)*
                }
            }

            fn push(
                &mut self,
                dir: Dir,
                data: &[u8],
                len: u64,
                scratch: &mut AnyScratch,
                steps: &mut Vec<Step>,
            ) {
                match self {
                    $(AnyParser::$name(p) => {
                        push_steps(&mut **p, dir, data, len, &mut scratch.$name, steps)
                    })*
                }
            }

            fn close(&mut self, scratch: &mut AnyScratch, steps: &mut Vec<Step>) {
                match self {
                    $(AnyParser::$name(p) => close_steps(&mut **p, &mut scratch.$name, steps),)*
                }
            }

            fn held(&self) -> usize {
                match self {
                    $(AnyParser::$name(p) => Parser::held(&**p),)*
                }
            }
        }
    };
}

// The registered protocols, in detection order. HTTP/2's preface comes before HTTP/1's request
// line; MySQL last, since a greeting or command packet is the loosest shape.
registry! {
    Http2 => http2::H2Conn,
    Http => http1::Http1Conn,
    Redis => redis::RedisConn,
    Postgres => postgres::PgConn,
    Mysql => mysql::MySqlConn,
    Dns => dns::DnsDatagrams,
}
