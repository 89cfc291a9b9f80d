//! Streaming HTTP/1.x parser over captured syscall chunks.
//!
//! This module owns ztrace's HTTP/1.x framing: it turns the read/write chunks that the
//! eBPF probes capture on one TCP connection (both directions) into [`Http1Event`]s —
//! request/response heads, message completions and desyncs — with stream offsets.
//! It is pure: no I/O, no clocks, no globals; it never panics on any input, and its
//! memory is bounded (at most [`MAX_HEAD`] buffered bytes per direction, at most
//! [`MAX_PENDING`] remembered request methods).
//!
//! Each chunk carries the true byte count `len` of the syscall but only a bounded head
//! of its payload (`data`); the bytes past `data.len()` are a *gap*. A gap is fine
//! inside a Content-Length body, a chunk's payload or a close-delimited body; a gap
//! anywhere else (a head, a chunk-size line, bytes after a message) loses framing and
//! yields [`Http1Event::Desync`]. Heads, chunk-size lines and trailers are parsed
//! with `httparse`, straight from the chunk when they are wholly inside it; only a
//! partial one is copied into the direction's buffer.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::mem::MaybeUninit;

use crate::exchange::{Exchange, HttpExchange};
use crate::parser::{Opener, Parser, Protocol, Step, TraceContext, Update};

mod scan;

pub use crate::proxy::{ProxyHeader, proxy_header, proxy_source};

/// Largest head (request/status line + headers), chunk-size line or trailer section.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers a head may carry; more is treated as malformed.
pub const MAX_HEADERS: usize = 64;
/// Most outstanding requests remembered to frame responses (oldest dropped first).
pub const MAX_PENDING: usize = 256;
const METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

/// Which byte stream of the connection a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → server bytes.
    Request,
    /// Server → client bytes.
    Response,
}

/// A parsed request head. Header names are matched case-insensitively; for repeated
/// Host/User-Agent/traceparent headers the first one wins; repeated tracestate headers are one
/// list, joined with commas (W3C Trace Context).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version: 0 or 1.
    pub version: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    /// The final transfer coding is `chunked`.
    pub chunked: bool,
    pub expect_continue: bool,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    pub connection_close: bool,
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ResponseHead {
    pub status: u16,
    /// Minor version: 0 or 1.
    pub version: u8,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    pub connection_close: bool,
}

/// What the parser found, in stream order within each direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Http1Event {
    /// The head of the request whose first byte is at offset `start` of the Request stream was parsed.
    Request { start: u64, head: RequestHead },
    /// That request (head + body) ended; `end` = offset one past its last byte.
    /// `body_len` = `end` - end of head: body bytes on the wire, chunk framing included.
    RequestComplete { start: u64, end: u64, body_len: u64 },
    /// A response head at offset `start` of the Response stream. `interim` for 1xx
    /// other than 101: interim responses do not end an exchange and have no body.
    Response {
        start: u64,
        head: ResponseHead,
        interim: bool,
    },
    /// A final response (head + body) ended.
    ResponseComplete { start: u64, end: u64, body_len: u64 },
    /// Bytes in `dir` from `offset` on could not be parsed (garbage, an element split
    /// by a capture gap, an oversized head…); that direction's partial state was dropped
    /// and it resynchronises at the next chunk that starts like a message.
    Desync { dir: Dir, offset: u64 },
}

/// Quick check on a direction's first bytes: `METHOD SP target SP "HTTP/1."`, with a
/// common method (GET POST PUT DELETE HEAD OPTIONS PATCH CONNECT TRACE).
pub fn looks_like_request(data: &[u8]) -> bool {
    let Some(sp) = data.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &data[sp + 1..];
    let end = rest.iter().position(|&b| b <= b' ' || b == 0x7f);
    let end = end.unwrap_or(rest.len());
    METHODS.contains(&&data[..sp]) && end > 0 && rest[end..].starts_with(b" HTTP/1.")
}

/// Whether `data`, not yet a request line [`looks_like_request`] takes, is the start of one: a
/// method's first letters, or a method, a space and a target (and the start of ` HTTP/1.`) with
/// no line end yet.
pub fn incomplete_request(data: &[u8]) -> bool {
    let plain = |b: &[u8]| b.iter().all(|&c| c > b' ' && c != 0x7f);
    let Some(sp) = data.iter().position(|&b| b == b' ') else {
        return !data.is_empty() && METHODS.iter().any(|m| m.starts_with(data));
    };
    if !METHODS.contains(&&data[..sp]) {
        return false;
    }
    let rest = &data[sp + 1..];
    match rest.iter().position(|&b| b == b' ') {
        None => plain(rest),
        Some(end) => {
            let version = &rest[end..];
            end > 0
                && plain(&rest[..end])
                && version.len() < b" HTTP/1.".len()
                && b" HTTP/1.".starts_with(version)
        }
    }
}

/// Quick check on a direction's first bytes: `HTTP/1.x NNN`.
pub fn looks_like_response(data: &[u8]) -> bool {
    data.len() >= 12
        && data.starts_with(b"HTTP/1.")
        && data[7].is_ascii_digit()
        && data[8] == b' '
        && data[9..12].iter().all(u8::is_ascii_digit)
}

/// What an outstanding request means for the framing of its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Plain,
    Head,
    Connect,
}

/// A framing element that must be seen whole: parsed from the chunk, or buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Head,
    ChunkSize,
    /// The CRLF after a chunk's payload.
    ChunkEnd,
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting `Elem`; the bytes of a partial one are in `Side::buf`.
    At(Elem),
    /// Inside a Content-Length body: bytes left.
    Body(u64),
    /// Inside a chunk's payload: bytes left.
    ChunkData(u64),
    /// Response body delimited by the connection's close.
    UntilClose,
    /// Lost framing: skip chunks until one starts like a message.
    Desync,
}

/// The state after a head without body (it completes at once).
const NO_BODY: State = State::Body(0);

/// A parsed element and the state it leads to (the body's framing, for a head).
#[cfg_attr(test, derive(Debug, PartialEq))]
enum Found {
    Request(RequestHead, State),
    Response(ResponseHead, State),
    /// A chunk-size line or the CRLF after a chunk's payload.
    Next(State),
    /// The trailer section, which ends a chunked body.
    Trailers,
}

/// Why an element could not be parsed (yet).
#[cfg_attr(test, derive(Debug, PartialEq))]
enum Miss {
    Partial,
    Invalid,
}

/// A header this parser reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Host,
    UserAgent,
    Traceparent,
    Tracestate,
}

/// `s.eq_ignore_ascii_case(lower)` for a `lower` without upper-case letters, in a few
/// word-sized operations: a letter of `lower` matches either case of it (`b | 0x20`),
/// any other byte only itself.
#[inline(always)]
fn eq_lower<const N: usize>(s: &[u8], lower: &[u8; N]) -> bool {
    let Ok(s) = <&[u8; N]>::try_from(s) else {
        return false;
    };
    let case = lower.map(|l| u8::from(l.is_ascii_lowercase()) << 5);
    // Overlapping 8-byte (or, when shorter, 4-byte) words cover all N bytes.
    let differs = |at: usize, w: usize| {
        let word = |b: &[u8; N]| {
            let mut x = [0; 8];
            x[..w].copy_from_slice(&b[at..at + w]);
            u64::from_le_bytes(x)
        };
        (word(s) | word(&case)) != word(lower)
    };
    match N {
        0..4 => s
            .iter()
            .zip(&case)
            .zip(lower)
            .all(|((b, c), l)| b | c == *l),
        4..8 => !differs(0, 4) && !differs(N - 4, 4),
        _ => (0..N - 8).step_by(8).all(|at| !differs(at, 8)) && !differs(N - 8, 8),
    }
}

/// Which known header `name` is (case-insensitive): its length picks the one candidate.
fn known(n: &[u8]) -> Option<Known> {
    let (is, known) = match n.len() {
        4 => (eq_lower(n, b"host"), Known::Host),
        6 => (eq_lower(n, b"expect"), Known::Expect),
        10 => match n[0] | 0x20 {
            b'c' => (eq_lower(n, b"connection"), Known::Connection),
            b't' => (eq_lower(n, b"tracestate"), Known::Tracestate),
            _ => (eq_lower(n, b"user-agent"), Known::UserAgent),
        },
        11 => (eq_lower(n, b"traceparent"), Known::Traceparent),
        14 => (eq_lower(n, b"content-length"), Known::ContentLength),
        17 => (eq_lower(n, b"transfer-encoding"), Known::TransferEncoding),
        _ => return None,
    };
    is.then_some(known)
}

/// Non-empty trimmed elements of a comma-separated list.
fn elements(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    let elements = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
    elements.filter(|t| !t.is_empty())
}

/// What a head's headers say, gathered in one pass over them. Values are trimmed.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Fields<'b> {
    /// The value of all Content-Length elements (they must agree).
    content_length: Option<u64>,
    /// The last element of all Transfer-Encoding lists: the final transfer coding.
    coding: Option<&'b [u8]>,
    /// Connection lists hold `close` / `keep-alive`.
    close: bool,
    keep_alive: bool,
    /// The first Expect, Host, User-Agent and traceparent values.
    expect: Option<&'b [u8]>,
    host: Option<&'b [u8]>,
    user_agent: Option<&'b [u8]>,
    traceparent: Option<&'b [u8]>,
    /// Every tracestate value, joined with commas (a copy only when there are several).
    tracestate: Option<Cow<'b, [u8]>>,
}

/// `Err` when Content-Length is malformed or ambiguous.
fn fields<'b>(headers: &[httparse::Header<'b>]) -> Result<Fields<'b>, Miss> {
    let mut f = Fields::default();
    for h in headers {
        f.add(h.name.as_bytes(), h.value)?;
    }
    Ok(f)
}

impl<'b> Fields<'b> {
    /// Takes in the next header. `Err` when Content-Length is malformed or ambiguous.
    fn add(&mut self, name: &[u8], value: &'b [u8]) -> Result<(), Miss> {
        let f = self;
        let Some(known) = known(name) else {
            return Ok(());
        };
        let value = value.trim_ascii();
        match known {
            Known::ContentLength => {
                for t in elements(value) {
                    let n = t.iter().try_fold(0u64, |n, &b| {
                        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
                        n.checked_mul(10)?.checked_add(digit)
                    });
                    match n {
                        Some(n) if f.content_length.is_none_or(|c| c == n) => {
                            f.content_length = Some(n)
                        }
                        _ => return Err(Miss::Invalid),
                    }
                }
            }
            Known::TransferEncoding => f.coding = elements(value).next_back().or(f.coding),
            Known::Connection => {
                for t in elements(value) {
                    f.close |= eq_lower(t, b"close");
                    f.keep_alive |= eq_lower(t, b"keep-alive");
                }
            }
            Known::Expect => _ = f.expect.get_or_insert(value),
            Known::Host => _ = f.host.get_or_insert(value),
            Known::UserAgent => _ = f.user_agent.get_or_insert(value),
            Known::Traceparent => _ = f.traceparent.get_or_insert(value),
            Known::Tracestate => match &mut f.tracestate {
                None => f.tracestate = Some(Cow::Borrowed(value)),
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.push(b',');
                    joined.extend_from_slice(value);
                }
            },
        }
        Ok(())
    }
}

/// A header value as text (invalid UTF-8 replaced).
fn text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) => s.to_owned(), // the usual case, checked faster than by `from_utf8_lossy`
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

/// What the headers say about framing (RFC 9112 §6.3, request method and status aside).
struct Framed {
    /// `Body`, `At(ChunkSize)` or `UntilClose`.
    framing: State,
    /// Transfer-Encoding is present (its final coding may not be chunked).
    coded: bool,
    chunked: bool,
    close: bool,
}

fn framed(f: &Fields, version: u8) -> Framed {
    let chunked = f.coding.is_some_and(|c| eq_lower(c, b"chunked"));
    let close = f.close || (version == 0 && !f.keep_alive);
    let framing = match (f.coding, f.content_length) {
        (Some(_), _) if chunked => State::At(Elem::ChunkSize),
        (None, Some(n)) => State::Body(n),
        _ => State::UntilClose,
    };
    let coded = f.coding.is_some();
    Framed {
        framing,
        coded,
        chunked,
        close,
    }
}

fn done<T, E>(r: Result<httparse::Status<T>, E>) -> Result<T, Miss> {
    match r {
        Ok(httparse::Status::Complete(t)) => Ok(t),
        Ok(httparse::Status::Partial) => Err(Miss::Partial),
        Err(_) => Err(Miss::Invalid),
    }
}

/// What [`scan::request`] gives, of the request head at the start of `buf`, by httparse: any
/// head the scanner does not take.
fn request_httparse(buf: &[u8]) -> Result<RequestParts<'_>, Miss> {
    // httparse fills the headers it finds; nothing needs initialising.
    let mut headers = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = done(req.parse_with_uninit_headers(buf, &mut headers))?;
    let (method, target) = (req.method.unwrap_or_default(), req.path.unwrap_or_default());
    Ok((
        n,
        method,
        target,
        req.version.unwrap_or(1),
        fields(req.headers),
    ))
}

/// A request head's (bytes used, method, target, minor version, what the headers say).
type RequestParts<'b> = (usize, &'b str, &'b str, u8, Result<Fields<'b>, Miss>);

/// (bytes used, minor version, status code, what the headers say) of the response head at the
/// start of `buf`, by httparse: any head `scan::response` does not take.
fn response_httparse(buf: &[u8]) -> Result<(usize, u8, u16, Result<Fields<'_>, Miss>), Miss> {
    let mut headers = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default(); // what `Response::parse` uses
    let n = done(config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers))?;
    let (version, status) = (resp.version.unwrap_or(1), resp.code.unwrap_or_default());
    Ok((n, version, status, fields(resp.headers)))
}

/// Parse the element `elem` at the start of `buf` (not empty).
fn parse(dir: Dir, elem: Elem, buf: &[u8]) -> Result<(usize, Found), Miss> {
    match (elem, dir) {
        (Elem::Head, Dir::Request) => {
            let (n, method, target, version, fields) = match scan::request(buf) {
                Some(plain) => plain,
                None => request_httparse(buf)?,
            };
            let fields = fields?;
            let f = framed(&fields, version);
            let framing = match f.framing {
                State::UntilClose if f.coded => return Err(Miss::Invalid), // RFC 9112 §6.3
                State::UntilClose => NO_BODY,
                framing => framing,
            };
            let expect = fields.expect;
            let head = RequestHead {
                method: method.to_owned(),
                target: target.to_owned(),
                version,
                host: fields.host.map(text),
                user_agent: fields.user_agent.map(text),
                traceparent: fields.traceparent.map(text),
                tracestate: fields.tracestate.as_deref().map(text),
                content_length: fields.content_length,
                chunked: f.chunked,
                expect_continue: expect.is_some_and(|v| eq_lower(v, b"100-continue")),
                connection_close: f.close,
            };
            Ok((n, Found::Request(head, framing)))
        }
        (Elem::Head, Dir::Response) => {
            let (n, version, status, fields) = match scan::response(buf) {
                Some(plain) => plain,
                None => response_httparse(buf)?,
            };
            let fields = fields?;
            let f = framed(&fields, version);
            let head = ResponseHead {
                status,
                version,
                content_length: fields.content_length,
                chunked: f.chunked,
                connection_close: f.close,
            };
            Ok((n, Found::Response(head, f.framing)))
        }
        // httparse reads an empty line as size 0: insist on a leading hex digit.
        (Elem::ChunkSize, _) if !buf.first().is_some_and(u8::is_ascii_hexdigit) => {
            Err(Miss::Invalid)
        }
        (Elem::ChunkSize, _) => match done(httparse::parse_chunk_size(buf))? {
            (n, 0) => Ok((n, Found::Next(State::At(Elem::Trailers)))), // last chunk
            (n, size) => Ok((n, Found::Next(State::ChunkData(size)))),
        },
        (Elem::ChunkEnd, _) => match buf {
            [b'\r', b'\n', ..] => Ok((2, Found::Next(State::At(Elem::ChunkSize)))),
            [b'\r'] => Err(Miss::Partial),
            _ => Err(Miss::Invalid),
        },
        (Elem::Trailers, _) => {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let (n, _) = done(httparse::parse_headers(buf, &mut headers))?;
            Ok((n, Found::Trailers))
        }
    }
}

/// State shared by both directions.
struct Shared {
    /// Outstanding requests, oldest first, to frame their responses (HEAD, CONNECT).
    pending: VecDeque<Pending>,
    /// CONNECT 2xx or 101 seen: the connection no longer carries HTTP/1.
    tunnel: bool,
}

impl Shared {
    fn expect(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(p);
    }
}

/// One direction of the connection.
struct Side {
    dir: Dir,
    /// Stream offset of the next byte to arrive.
    offset: u64,
    state: State,
    /// A partial element only (never more than `MAX_HEAD` bytes).
    buf: Vec<u8>,
    /// Offset of the element being parsed (the first byte of `buf`, if any).
    buf_start: u64,
    /// Offsets of the current message's first byte and of its body's first byte.
    start: u64,
    body_start: u64,
}

impl Side {
    fn new(dir: Dir) -> Self {
        let state = State::At(Elem::Head);
        Side {
            dir,
            offset: 0,
            state,
            buf: Vec::new(),
            buf_start: 0,
            start: 0,
            body_start: 0,
        }
    }

    /// Give up on framing at `offset`. A request-side desync where a head was expected
    /// stands for one lost request, which still awaits its response. After a
    /// response-side desync, the responses still due cannot be told apart: all
    /// outstanding requests are forgotten (later responses are framed as if to a GET).
    fn desync(&mut self, sh: &mut Shared, offset: u64, out: &mut Vec<Http1Event>) {
        match (self.state, self.dir) {
            (State::At(Elem::Head), Dir::Request) => sh.expect(Pending::Plain),
            (_, Dir::Request) => {}
            (_, Dir::Response) => sh.pending.clear(),
        }
        self.state = State::Desync;
        crate::empty(&mut self.buf);
        let dir = self.dir;
        out.push(Http1Event::Desync { dir, offset });
    }

    fn complete(&mut self, end: u64, out: &mut Vec<Http1Event>) {
        let (start, body_len) = (self.start, end - self.body_start);
        out.push(match self.dir {
            Dir::Request => Http1Event::RequestComplete {
                start,
                end,
                body_len,
            },
            Dir::Response => Http1Event::ResponseComplete {
                start,
                end,
                body_len,
            },
        });
        self.state = State::At(Elem::Head);
    }

    /// The element `[start, end)` was parsed: act on it.
    fn found(
        &mut self,
        sh: &mut Shared,
        start: u64,
        end: u64,
        found: Found,
        out: &mut Vec<Http1Event>,
    ) {
        let next = match found {
            Found::Next(state) => state,
            Found::Trailers => return self.complete(end, out),
            Found::Request(head, framing) => {
                sh.expect(match head.method.as_str() {
                    "HEAD" => Pending::Head,
                    "CONNECT" => Pending::Connect,
                    _ => Pending::Plain,
                });
                out.push(Http1Event::Request { start, head });
                (self.start, self.body_start) = (start, end);
                framing
            }
            Found::Response(head, framing) => {
                let code = head.status;
                let interim = (100..200).contains(&code) && code != 101;
                out.push(Http1Event::Response {
                    start,
                    head,
                    interim,
                });
                if interim {
                    return; // still expecting the final head
                }
                let asked = sh.pending.pop_front().unwrap_or(Pending::Plain);
                sh.tunnel = code == 101 || (asked == Pending::Connect && code / 100 == 2);
                (self.start, self.body_start) = (start, end);
                match asked == Pending::Head || sh.tunnel || code == 204 || code == 304 {
                    true => NO_BODY,
                    false => framing,
                }
            }
        };
        match next {
            NO_BODY => self.complete(end, out),
            next => self.state = next,
        }
    }

    /// Consume one chunk: `data`, then `gap` unknown bytes.
    fn feed(&mut self, sh: &mut Shared, data: &[u8], mut gap: u64, out: &mut Vec<Http1Event>) {
        let mut at = self.offset; // stream offset of data[pos], then of the gap's next byte
        self.offset += data.len() as u64 + gap;
        if self.state == State::Desync {
            let fresh = match self.dir {
                Dir::Request => looks_like_request(data),
                Dir::Response => looks_like_response(data),
            };
            if !fresh {
                return;
            }
            self.state = State::At(Elem::Head);
        }
        let mut pos = 0usize;
        while !sh.tunnel {
            let rest = &data[pos..];
            if self.buf.is_empty() {
                self.buf_start = at; // where the next element starts
            }
            match self.state {
                State::At(_) if rest.is_empty() => {
                    if gap > 0 {
                        self.desync(sh, self.buf_start, out);
                    }
                    return;
                }
                State::At(elem) => {
                    let old = self.buf.len();
                    let take = rest.len().min(MAX_HEAD - old);
                    let parsed = if old == 0 {
                        parse(self.dir, elem, &rest[..take])
                    } else {
                        self.buf.extend_from_slice(&rest[..take]);
                        // Every element ends with '\n': don't re-parse before one arrives.
                        match rest[..take].contains(&b'\n') {
                            true => parse(self.dir, elem, &self.buf),
                            false => Err(Miss::Partial),
                        }
                    };
                    match parsed {
                        Err(Miss::Partial) if old + take < MAX_HEAD => {
                            if old == 0 {
                                self.buf.extend_from_slice(rest); // keep the partial element
                            }
                            pos += take;
                            at += take as u64;
                        }
                        Err(_) => return self.desync(sh, self.buf_start, out),
                        Ok((n, found)) => {
                            let used = n.saturating_sub(old); // > 0: `old` bytes were partial
                            pos += used;
                            at += used as u64;
                            crate::empty(&mut self.buf);
                            self.found(sh, self.buf_start, at, found, out);
                        }
                    }
                }
                State::Body(left) | State::ChunkData(left) => {
                    let mut n = (rest.len() as u64).min(left);
                    pos += n as usize;
                    if pos == data.len() {
                        let g = gap.min(left - n); // a gap inside a body is fine
                        gap -= g;
                        n += g;
                    }
                    at += n;
                    let (chunked, left) = (matches!(self.state, State::ChunkData(_)), left - n);
                    match (chunked, left) {
                        (false, 0) => self.complete(at, out),
                        (true, 0) => self.state = State::At(Elem::ChunkEnd),
                        _ => {
                            self.state = if chunked {
                                State::ChunkData(left)
                            } else {
                                State::Body(left)
                            };
                            return; // this chunk is used up
                        }
                    }
                }
                State::UntilClose | State::Desync => return,
            }
        }
    }
}

/// HTTP/1.x parser state for one TCP connection, both directions.
pub struct Http1Conn {
    req: Side,
    resp: Side,
    shared: Shared,
    closed: bool,
    /// The client a PROXY protocol header at the start named (`proxy`).
    proxied: Option<std::net::SocketAddr>,
}

impl Default for Http1Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Conn {
    pub fn new() -> Self {
        let shared = Shared {
            pending: VecDeque::new(),
            tunnel: false,
        };
        let (req, resp) = (Side::new(Dir::Request), Side::new(Dir::Response));
        Http1Conn {
            req,
            resp,
            shared,
            closed: false,
            proxied: None,
        }
    }

    /// Feed one syscall's worth of bytes. `len` >= data.len() is the true byte count;
    /// offsets count `len` bytes (if `len < data.len()`, only `data[..len]` is used).
    /// Ignored after [`close`](Self::close) and once the connection became a tunnel.
    pub fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<Http1Event>) {
        if self.closed || self.shared.tunnel {
            return;
        }
        let side = match dir {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        };
        let (mut data, mut len) = (data, len);
        // A PROXY protocol header before the first request is skipped.
        if dir == Dir::Request
            && let Some(client) = crate::proxy::skip_leading(&mut side.offset, &mut data, &mut len)
        {
            self.proxied = client;
        }
        let (data, gap) = crate::clamp(data, len, side.offset);
        side.feed(&mut self.shared, data, gap, out);
    }

    /// The connection closed: a response delimited by connection close completes now.
    /// Messages cut short get no completion event. Later pushes are ignored.
    pub fn close(&mut self, out: &mut Vec<Http1Event>) {
        if !self.closed && !self.shared.tunnel && self.resp.state == State::UntilClose {
            self.resp.complete(self.resp.offset, out);
        }
        self.closed = true;
        self.req.buf = Vec::new();
        self.resp.buf = Vec::new();
        self.shared.pending = VecDeque::new();
    }

    /// Requests whose final response was not seen yet: request heads, plus one for each
    /// request-side desync where a head was expected, minus those forgotten at a
    /// response-side desync.
    pub fn pending_requests(&self) -> usize {
        self.shared.pending.len()
    }

    /// The connection switched protocols (CONNECT 2xx or 101): no more events.
    pub fn is_tunnel(&self) -> bool {
        self.shared.tunnel
    }
}

impl Parser for Http1Conn {
    type Event = Http1Event;
    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<Http1Event>) {
        Http1Conn::push(self, dir, data, len, out);
    }
    fn close(&mut self, out: &mut Vec<Http1Event>) {
        Http1Conn::close(self, out);
    }
    fn held(&self) -> usize {
        self.req.buf.capacity()
            + self.resp.buf.capacity()
            + crate::slots::<Pending>(self.shared.pending.capacity())
    }
}

impl Protocol for Http1Conn {
    fn detect(payload: &[u8]) -> Option<Opener> {
        if let ProxyHeader::Whole(n) = proxy_header(payload) {
            // A load balancer's header, then the client's first request.
            return looks_like_request(&payload[n..]).then_some(Opener::Requester);
        }
        if looks_like_request(payload) {
            Some(Opener::Requester)
        } else if looks_like_response(payload) {
            // Tracing began mid-exchange; parsing starts at the next request.
            Some(Opener::Responder)
        } else {
            None
        }
    }

    fn incomplete(prefix: &[u8]) -> bool {
        match proxy_header(prefix) {
            ProxyHeader::Partial => true,
            ProxyHeader::Whole(n) => n == prefix.len() || incomplete_request(&prefix[n..]),
            ProxyHeader::Absent => incomplete_request(prefix),
        }
    }

    fn step(&self, event: Http1Event) -> Option<Step> {
        Some(match event {
            Http1Event::Request { start, head } => Step::Request {
                key: None,
                start,
                context: TraceContext::of(head.traceparent, head.tracestate),
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
                    client: self.proxied,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_protocol_header_is_skipped() {
        const V1: &[u8] = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n"; // 45 bytes
        assert_eq!(V1.len(), 45);
        // With the request, in one piece.
        let mut c = Http1Conn::new();
        assert_eq!(push(&mut c, Q, &[V1, GET].concat()), "Q45 q45-64/0");
        assert_eq!(c.proxied, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(push(&mut c, R, OK5), "R0 r0-43/5");
        // Alone (a load balancer writes it at connect), then the requests.
        let mut c = Http1Conn::new();
        assert_eq!(push(&mut c, Q, V1), "");
        assert_eq!(push(&mut c, Q, GET), "Q45 q45-64/0");
        assert_eq!(push(&mut c, Q, GET), "Q64 q64-83/0");
        // Only at the start: later, it is not HTTP.
        let mut c = Http1Conn::new();
        assert_eq!(push(&mut c, Q, GET), "Q0 q0-19/0");
        assert_eq!(push(&mut c, Q, V1), "Dq@19");
        // Detection and the kept prefix look past it.
        assert_eq!(
            <Http1Conn as Protocol>::detect(&[V1, GET].concat()),
            Some(Opener::Requester)
        );
        assert_eq!(<Http1Conn as Protocol>::detect(V1), None);
        assert_eq!(
            <Http1Conn as Protocol>::detect(&[V1, b"\x16\x03\x01"].concat()),
            None
        );
        for cut in 1..V1.len() {
            assert!(<Http1Conn as Protocol>::incomplete(&V1[..cut]), "{cut}");
        }
        assert!(<Http1Conn as Protocol>::incomplete(V1));
        assert!(<Http1Conn as Protocol>::incomplete(
            &[V1, b"GET /a"].concat()
        ));
        assert!(!<Http1Conn as Protocol>::incomplete(
            &[V1, b"\x16\x03"].concat()
        ));
        // A length below the header's (a capture shorter than claimed cannot happen; a count
        // that is) does not underflow.
        let mut c = Http1Conn::new();
        let _ = feed(&mut c, Q, V1, 10);
    }

    #[test]
    fn incomplete_request_lines() {
        for yes in [
            &b"G"[..],
            b"GE",
            b"GET",
            b"GET ",
            b"GET /a",
            b"GET /a ",
            b"GET /a HTTP/1",
            b"OPTIONS *",
            b"DELETE /x?y=1 HT",
        ] {
            assert!(
                incomplete_request(yes),
                "{:?}",
                String::from_utf8_lossy(yes)
            );
            assert!(!looks_like_request(yes));
        }
        for no in [
            &b""[..],
            b"X",
            b"GETX",
            b"get /a",
            b"GET  /a",
            b"GET /a\r\n",
            b"GET /a HTTP/2",
            b"GET /a HTTP/1.1\r\n", // whole: detection takes it
            b"\x16\x03\x01",
        ] {
            assert!(!incomplete_request(no), "{:?}", String::from_utf8_lossy(no));
        }
    }
    use crate::testutil::{self, Rng, split};
    use Dir::{Request as Q, Response as R};
    use Http1Event as E;

    /// Events as a trace: `Q0` request head at 0, `q0-19/0` request [0, 19) with a
    /// 0-byte body, `R`/`r` likewise for responses, `I0` interim response, `Dq@5` desync.
    fn show(ev: &[E]) -> String {
        let s = ev.iter().map(|e| match e.clone() {
            E::Request { start, .. } => format!("Q{start}"),
            E::Response { start, interim, .. } => {
                format!("{}{start}", ["R", "I"][interim as usize])
            }
            E::RequestComplete {
                start: s,
                end: e,
                body_len: b,
            } => format!("q{s}-{e}/{b}"),
            E::ResponseComplete {
                start: s,
                end: e,
                body_len: b,
            } => format!("r{s}-{e}/{b}"),
            E::Desync { dir, offset } => format!("D{}@{offset}", ["q", "r"][dir as usize]),
        });
        s.collect::<Vec<_>>().join(" ")
    }

    fn feed(c: &mut Http1Conn, dir: Dir, data: &[u8], len: u64) -> String {
        show(&testutil::feed(c, dir, data, len))
    }

    fn push(c: &mut Http1Conn, dir: Dir, data: &[u8]) -> String {
        feed(c, dir, data, data.len() as u64)
    }

    fn close(c: &mut Http1Conn) -> String {
        let mut out = Vec::new();
        c.close(&mut out);
        show(&out)
    }

    fn whole(dir: Dir, data: &[u8]) -> Vec<E> {
        split(&mut Http1Conn::new(), dir, data, &[])
    }

    const GET: &[u8] = b"GET /x HTTP/1.1\r\n\r\n"; // 19 bytes
    const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"; // 43 bytes
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
        4;name=\"v\"\r\nWiki\r\n1a \t;x\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";

    #[test]
    fn keep_alive_and_pipelining() {
        let mut c = Http1Conn::new();
        assert_eq!(push(&mut c, Q, GET), "Q0 q0-19/0");
        assert_eq!(push(&mut c, R, OK5), "R0 r0-43/5");
        assert_eq!(push(&mut c, Q, GET), "Q19 q19-38/0");
        assert_eq!(push(&mut c, R, OK5), "R43 r43-86/5");
        let three = push(&mut c, Q, &[GET, GET, GET].concat());
        assert_eq!(three, "Q38 q38-57/0 Q57 q57-76/0 Q76 q76-95/0");
        let three = push(&mut c, R, &[OK5, OK5, OK5].concat());
        assert_eq!(three, "R86 r86-129/5 R129 r129-172/5 R172 r172-215/5");
        assert_eq!(c.pending_requests(), 0);
        assert_eq!(c.req.buf.capacity(), 0, "whole heads: no copy");
    }

    #[test]
    fn content_length_body_in_capture_gap() {
        // A 44-byte head, then the first 468 bytes of its body; the rest is in the gap.
        let mut data = b"POST /up HTTP/1.1\r\nContent-Length: 99950\r\n\r\n".to_vec();
        data.resize(512, b'z');
        let mut c = Http1Conn::new();
        assert_eq!(feed(&mut c, Q, &data, 99_994), "Q0 q0-99994/99950");
        assert_eq!(push(&mut c, Q, GET), "Q99994 q99994-100013/0");
        // A gap, then a captured tail of the same body.
        assert_eq!(feed(&mut c, Q, &data[..300], 60_000), "Q100013");
        assert_eq!(feed(&mut c, Q, b"zzzz", 39_994), "q100013-200007/99950");
        // A gap running past the body's end hides the next head.
        let ev = feed(&mut c, Q, &data, 100_000);
        assert_eq!(ev, "Q200007 q200007-300001/99950 Dq@300001");
        assert_eq!(push(&mut c, Q, GET), "Q300007 q300007-300026/0");
        // `len` < data.len(): only data[..len] counts. Offsets saturate.
        assert_eq!(
            feed(&mut c, Q, &[GET, b"junk"].concat(), 19),
            "Q300026 q300026-300045/0"
        );
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert_eq!(
            feed(&mut c, Q, huge, u64::MAX) + &feed(&mut c, Q, GET, 9),
            "Q300045"
        );
        assert_eq!(c.req.offset, u64::MAX);
    }

    #[test]
    fn chunked_bodies_split_anywhere() {
        let stream = [CHUNKED, OK5].concat();
        let all = whole(R, &stream);
        assert_eq!(show(&all), "R0 r0-128/75 R128 r128-171/5");
        assert!(matches!(&all[0], E::Response { head, .. } if head.chunked));
        for i in 1..stream.len() {
            let mut c = Http1Conn::new();
            assert_eq!(split(&mut c, R, &stream, &[i]), all, "split at {i}");
        }
        let mut c = Http1Conn::new();
        assert_eq!(split(&mut c, R, &stream, &[1; 200]), all);
        let put = b"PUT /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(show(&whole(Q, put)), "Q0 q0-60/13");
    }

    #[test]
    fn chunked_framing_errors_desync() {
        let mut c = Http1Conn::new();
        // The 4-byte chunk's payload ends in the gap, and so does the next size line.
        assert_eq!(feed(&mut c, R, &CHUNKED[..67], 75), "R0 Dr@69");
        let mut c = Http1Conn::new(); // a gap inside a chunk payload is fine
        assert_eq!(feed(&mut c, R, &CHUNKED[..66], 68), "R0");
        assert_eq!(push(&mut c, R, &CHUNKED[68..]), "r0-128/75");
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"; // 47 bytes
        let bad = "zz\r\n|\r\n|4 4\r\n|11111111111111111\r\n|4\rX|3\nabc\n|1\r\naXX";
        for bad in bad.split('|') {
            let mut c = Http1Conn::new();
            let at = if bad.starts_with("1\r") { 51 } else { 47 };
            let ev = push(&mut c, R, (head.to_owned() + bad).as_bytes());
            assert_eq!(ev, format!("R0 Dr@{at}"), "{bad:?}");
            assert_eq!(push(&mut c, R, b"x\r\n"), "", "no resync on junk");
            assert!(push(&mut c, R, OK5).starts_with('R'), "{bad:?}");
        }
    }

    #[test]
    fn responses_without_body() {
        let mut c = Http1Conn::new();
        let reqs = [b"HEAD /h HTTP/1.1\r\n\r\n", GET, GET, GET].concat();
        let ev = push(&mut c, Q, &reqs);
        assert_eq!(ev, "Q0 q0-20/0 Q20 q20-39/0 Q39 q39-58/0 Q58 q58-77/0");
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(push(&mut c, R, head), "R0 r0-69/0");
        let s = b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n\
            HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n";
        assert_eq!(push(&mut c, R, s), "R69 r69-115/0 I115 R142 r142-190/0");
        assert_eq!(push(&mut c, R, OK5), "R190 r190-233/5");
        assert_eq!(push(&mut c, R, OK5), "R233 r233-276/5", "unmatched");
    }

    #[test]
    fn connect_2xx_and_101_become_tunnels() {
        let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
        let mut c = Http1Conn::new();
        assert_eq!(push(&mut c, Q, connect), "Q0 q0-59/0");
        let ok = b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x01";
        assert_eq!(push(&mut c, R, ok), "R0 r0-39/0");
        assert!(c.is_tunnel());
        let ev = push(&mut c, Q, GET) + &push(&mut c, R, OK5) + &close(&mut c);
        assert_eq!(ev, "");
        let mut c = Http1Conn::new(); // a refused CONNECT keeps parsing
        push(&mut c, Q, connect);
        let no = b"HTTP/1.1 407 No\r\nContent-Length: 0\r\n\r\n";
        let ev = push(&mut c, R, no) + " " + &push(&mut c, Q, GET);
        assert_eq!(ev, "R0 r0-38/0 Q59 q59-78/0");
        let mut c = Http1Conn::new();
        let ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        push(&mut c, Q, ws);
        let sw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05";
        assert_eq!(push(&mut c, R, sw) + &push(&mut c, Q, GET), "R0 r0-56/0");
    }

    #[test]
    fn expect_100_continue() {
        let mut c = Http1Conn::new();
        let head = b"POST /u HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"; // 61
        let ev = split(&mut c, Q, head, &[]);
        assert!(matches!(&ev[..], [E::Request { head, .. }] if head.expect_continue));
        assert_eq!(push(&mut c, R, b"HTTP/1.1 100 Continue\r\n\r\n"), "I0");
        assert_eq!(push(&mut c, Q, b"abc"), "q0-64/3");
        assert_eq!(push(&mut c, R, OK5), "R25 r25-68/5");
    }

    #[test]
    fn response_until_close() {
        let mut c = Http1Conn::new();
        push(&mut c, Q, b"GET / HTTP/1.0\r\n\r\n");
        let ev = split(&mut c, R, b"HTTP/1.0 200 OK\r\n\r\nsome body", &[]);
        let E::Response { head, .. } = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (ev.len(), head.version, head.connection_close),
            (1, 0, true)
        );
        let ev = feed(&mut c, R, b"HTTP/1.1 200 OK\r\n\r\n", 5000);
        assert_eq!(ev, "", "still body");
        assert_eq!(close(&mut c), "r0-5028/5009");
        assert_eq!(close(&mut c) + &push(&mut c, Q, GET), "", "closed");
        let mut c = Http1Conn::new(); // an unfinished Content-Length body never completes
        assert_eq!(push(&mut c, R, &OK5[..40]) + &close(&mut c), "R0");
    }

    #[test]
    fn malformed_input_desyncs_then_recovers() {
        let tls: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let cases: [(Dir, &[u8]); 7] = [
            (Q, tls),
            (R, tls),
            (Q, b"GET /\r\n\r\n"),
            (Q, b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"),
            (
                Q,
                b"GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-length: 3\r\n\r\n",
            ),
            (Q, b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            (R, b"HTTP/2 200\r\n\r\n"),
        ];
        for (dir, bad) in cases {
            let mut c = Http1Conn::new();
            let ev = push(&mut c, dir, bad);
            assert_eq!(ev, ["Dq@0", "Dr@0"][dir as usize], "{bad:?}");
            assert_eq!(push(&mut c, dir, b"GET"), "", "no resync on junk");
            let (good, want) = [(GET, "Q"), (OK5, "R")][dir as usize];
            let want = format!("{want}{} ", bad.len() + 3); // the head after "GET"
            assert!(push(&mut c, dir, good).starts_with(&want), "{bad:?}");
        }
    }

    #[test]
    fn oversized_crowded_or_gapped_heads_desync() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(show(&whole(Q, &big)), "Dq@0");
        let mut c = Http1Conn::new();
        assert_eq!(show(&split(&mut c, Q, &big, &[1000; 20])), "Dq@0");
        assert!(c.req.buf.capacity() <= 2 * MAX_HEAD);
        let many: String = (0..65).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(show(&whole(Q, many.as_bytes())), "Dq@0");
        let cut = b"GET /long HTTP/1.1\r\nHost: ";
        assert_eq!(feed(&mut Http1Conn::new(), Q, cut, 4000), "Dq@0");
        let mut c = Http1Conn::new(); // also when part of it was buffered
        let ev = push(&mut c, Q, &cut[..9]) + &feed(&mut c, Q, &cut[9..], 40);
        assert_eq!((ev.as_str(), c.req.buf.len()), ("Dq@0", 0));
    }

    /// What a connection holds is its partial head: charged while it waits (a slowloris head
    /// grows it), freed once the head completes or the side desyncs.
    #[test]
    fn held_bytes_follow_the_partial_head() {
        let mut c = Http1Conn::new();
        assert_eq!(Parser::held(&c), 0);
        push(&mut c, Dir::Request, b"GET /slow HTTP/1.1\r\nX-Pad: ");
        let pad = [b'a'; 500];
        let mut last = 0;
        for _ in 0..20 {
            push(&mut c, Dir::Request, &pad);
            let held = Parser::held(&c);
            assert!(held >= last && held <= 2 * MAX_HEAD, "{held}");
            last = held;
        }
        assert!(last >= 10_000, "a 10 KB partial head holds {last} bytes");
        let ev = push(&mut c, Dir::Request, b"\r\n\r\n");
        assert!(ev.starts_with("Q0 "), "{ev}");
        assert!(Parser::held(&c) <= 64, "a completed head frees its buffer");
        // A head that desyncs (over MAX_HEAD) frees it too.
        for _ in 0..40 {
            push(&mut c, Dir::Request, &pad);
        }
        assert!(Parser::held(&c) <= 64);
        close(&mut c);
        assert_eq!(Parser::held(&c), 0);
    }

    #[test]
    fn head_fields() {
        let r =
            b"OPTIONS * HTTP/1.1\r\nhOsT: a.b\r\nUSER-AGENT:  curl/8 \r\ntraceparent: 00-ab-01\r\n\
            TraceState: a=1 ,b=2\r\ncontent-length: 0\r\nconnection: TE, Close\r\nHost: second\r\n\
            tracestate:  c=3\r\n\r\n";
        let want = RequestHead {
            method: "OPTIONS".into(),
            target: "*".into(),
            version: 1,
            host: Some("a.b".into()),
            user_agent: Some("curl/8".into()),
            traceparent: Some("00-ab-01".into()),
            // Repeated tracestate headers are one list.
            tracestate: Some("a=1 ,b=2,c=3".into()),
            content_length: Some(0),
            connection_close: true,
            ..Default::default()
        };
        assert_eq!(
            whole(Q, r)[0],
            E::Request {
                start: 0,
                head: want
            }
        );
        let ev = whole(Q, b"BREW /pot HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(matches!(&ev[0], E::Request { head, .. } if !head.connection_close));
    }

    #[test]
    fn looks_like_checks() {
        let yes = "GET / HTTP/1.1\r\n|PATCH /a?b=c HTTP/1.0|CONNECT h:443 HTTP/1.1";
        assert!(yes.split('|').all(|s| looks_like_request(s.as_bytes())));
        let no = "GET /|GET / HTTP/2|get / HTTP/1.1|BREW / HTTP/1.1|GET  HTTP/1.1|";
        assert!(!no.split('|').any(|s| looks_like_request(s.as_bytes())));
        assert!(looks_like_response(b"HTTP/1.1 200 OK") && looks_like_response(b"HTTP/1.0 404"));
        let no = "HTTP/1.1 20|HTTP/2 200 OK|HTTP/1.1  200|http/1.1 200 OK";
        assert!(!no.split('|').any(|s| looks_like_response(s.as_bytes())));
    }

    #[test]
    fn desyncs_and_outstanding_requests() {
        let no_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"; // 38 bytes
        let mut c = Http1Conn::new();
        push(&mut c, Q, b"HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!(feed(&mut c, Q, b"GET /lost HTTP/1.1\r\nHo", 3000), "Dq@19");
        push(&mut c, Q, b"HEAD /2 HTTP/1.1\r\n\r\n");
        assert_eq!(c.pending_requests(), 3);
        assert_eq!(push(&mut c, R, no_body), "R0 r0-38/0");
        assert_eq!(push(&mut c, R, OK5), "R38 r38-81/5", "the lost GET");
        assert_eq!(push(&mut c, R, no_body), "R81 r81-119/0");
        // A response-side desync forgets all outstanding requests.
        push(&mut c, Q, &[GET, b"HEAD / HTTP/1.1\r\n\r\n"].concat());
        assert_eq!(push(&mut c, R, b"\x00garbage"), "Dr@119");
        assert_eq!(c.pending_requests(), 0);
        assert_eq!(push(&mut c, R, OK5), "R127 r127-170/5");
    }

    const REQS: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world\
        HEAD /c HTTP/1.1\r\n\r\n\
        PUT /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n\
        POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc\
        GET /f HTTP/1.0\r\n\r\n";
    const RESPS: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
        HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n\
        HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\
        HTTP/1.0 200 OK\r\n\r\nuntil close body";

    fn exchange(req_sizes: &[usize], resp_sizes: &[usize]) -> Vec<E> {
        let mut c = Http1Conn::new();
        let mut ev = split(&mut c, Q, REQS, req_sizes);
        ev.extend(split(&mut c, R, RESPS, resp_sizes));
        c.close(&mut ev);
        ev
    }

    #[test]
    fn random_splits_give_the_same_events_as_whole() {
        let all = show(&exchange(&[], &[]));
        let q = "Q0 q0-28/0 Q28 q28-79/11 Q79 q79-99/0 Q99 q99-171/25 Q171 q171-235/3 Q235";
        let r = "R0 r0-40/2 R40 r40-120/28 R120 r120-161/0 R161 r161-188/0 I188 R213 r213-251/0";
        assert_eq!(all, format!("{q} q235-254/0 {r} R251 r251-286/16"));
        assert_eq!(
            show(&exchange(&[1; 300], &[1; 300])),
            all,
            "one byte at a time"
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1000 {
            let sizes = rng.sizes([2, 5, 40, 400], 300);
            assert_eq!(show(&exchange(&sizes, &sizes[rng.below(100)..])), all);
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let bits = b"GET / HTTP/1.1\r\n|HTTP/1.1 200 OK\r\n|HTTP/1.1 100 Continue\r\n|HEAD / \
            HTTP/1.1\r\n|CONNECT a:1 HTTP/1.1\r\n|Content-Length: 3\r\n|Transfer-Encoding: chunked\r\n\
            |\r\n|5\r\n|0\r\n|abc|Expect: 100-continue\r\n|\xff\x00\x16|fffffffffffffffff\r\n|HTTP/1.1 101 S\r\n";
        let bits: Vec<&[u8]> = bits.split(|&b| b == b'|').collect();
        let mut rng = Rng(42);
        for round in 0..3000 {
            let (mut c, mut out) = (Http1Conn::new(), Vec::new());
            for _ in 0..rng.below(40) {
                let mut data = rng.garbage(&bits, 6, 4, 64, false);
                if round % 7 == 0 && rng.below(3) == 0 {
                    data.resize(data.len() + MAX_HEAD, b'x');
                }
                let len = rng.len(data.len(), 4, 100_000);
                c.push([Q, R][rng.below(2)], &data, len, &mut out);
                assert!(c.req.buf.len() <= MAX_HEAD && c.resp.buf.len() <= MAX_HEAD);
                assert!(c.pending_requests() <= MAX_PENDING);
            }
            c.close(&mut out);
        }
    }

    /// The request head `head` parses to, or why not ("partial"/"invalid").
    fn request_head(head: &str) -> Result<(RequestHead, State), &'static str> {
        match parse(Q, Elem::Head, head.as_bytes()) {
            Ok((_, Found::Request(head, framing))) => Ok((head, framing)),
            Ok(_) => unreachable!(),
            Err(Miss::Partial) => Err("partial"),
            Err(Miss::Invalid) => Err("invalid"),
        }
    }

    #[test]
    fn repeated_and_look_alike_headers() {
        let req = |headers: &str| request_head(&format!("POST / HTTP/1.1\r\n{headers}\r\n"));
        let head = |headers: &str| req(headers).unwrap().0;
        let framing = |headers: &str| req(headers).unwrap().1;
        // Content-Length: every element of every header must agree.
        let agree = "Content-Length: 5\r\ncontent-LENGTH: 5, 5 ,,\r\nContent-Length:\r\n";
        assert_eq!(framing(agree), State::Body(5));
        assert_eq!(head(agree).content_length, Some(5));
        for bad in [
            "5, 6",
            "5\r\nContent-Length: 6",
            "+5",
            "5 5",
            "18446744073709551616",
        ] {
            assert_eq!(req(&format!("Content-Length: {bad}\r\n")), Err("invalid"));
        }
        let max = head("Content-Length: 18446744073709551615\r\n");
        assert_eq!(max.content_length, Some(u64::MAX));
        // The last coding of all Transfer-Encoding lists decides; empty lists don't count.
        let te = |lists: &[&str]| {
            let h: String = lists
                .iter()
                .map(|l| format!("Transfer-Encoding: {l}\r\n"))
                .collect();
            req(&format!("{h}Content-Length: 3\r\n")).map(|(h, f)| (h.chunked, f))
        };
        let chunked = Ok((true, State::At(Elem::ChunkSize)));
        assert_eq!(te(&["gzip", " , CHUNKED ,", ""]), chunked);
        assert_eq!(te(&["chunked", ","]), chunked);
        assert_eq!(
            te(&["chunked", "gzip"]),
            Err("invalid"),
            "coded, not chunked"
        );
        assert_eq!(te(&["chunked, gzip"]), Err("invalid"));
        assert_eq!(te(&["", " "]), Ok((false, State::Body(3))), "no coding");
        // Names that are prefixes, extensions or same-length neighbours of known ones.
        let others = "Content-Length-X: 1\r\nContent-Lengt: 2\r\nHosts: a\r\nHos: b\r\n\
            Cser-Agent: c\r\nUonnection: close\r\nTransfer-Encodings: chunked\r\n\
            traceparents: d\r\nExpects: 100-continue\r\nX-Host: e\r\nTracestates: f\r\n\
            Uracestate: g\r\n";
        let plain = RequestHead {
            method: "POST".into(),
            target: "/".into(),
            version: 1,
            ..Default::default()
        };
        assert_eq!(req(others), Ok((plain, NO_BODY)));
        // First Host / User-Agent / traceparent / Expect wins, even when empty.
        let firsts = "hOST:  \r\nHost: b\r\nuser-agent: \tua 1 \r\nUser-Agent: ua2\r\n\
            TRACEPARENT: 00-x\r\ntraceparent: 00-y\r\nExpect: nope\r\nExpect: 100-continue\r\n";
        let h = head(firsts);
        assert_eq!(
            (h.host, h.user_agent, h.traceparent, h.expect_continue),
            (
                Some("".into()),
                Some("ua 1".into()),
                Some("00-x".into()),
                false
            )
        );
        assert!(head("EXPECT:  100-CONTINUE \r\n").expect_continue);
        assert_eq!(
            head("Host: \u{e9}t\u{e9}\r\n").host,
            Some("\u{e9}t\u{e9}".into())
        );
        let raw = b"GET / HTTP/1.1\r\nUser-Agent: a\xffb\r\n\r\n";
        let Ok((_, Found::Request(h, _))) = parse(Q, Elem::Head, raw) else {
            panic!()
        };
        assert_eq!(h.user_agent, Some("a\u{fffd}b".into()));
    }

    #[test]
    fn connection_tokens() {
        let close = |version: u8, headers: &str| {
            let raw = format!("GET / HTTP/1.{version}\r\n{headers}\r\n");
            request_head(&raw).unwrap().0.connection_close
        };
        assert!(close(0, ""));
        assert!(close(0, "Connection: TE\r\n"));
        assert!(!close(0, "Connection: TE\r\nconnection: Keep-Alive\r\n"));
        assert!(!close(0, "Connection: ,keep-alive,\r\n"));
        assert!(close(0, "Connection: keep-alive, close\r\n"));
        assert!(close(0, "Connection: keep-alives\r\n"));
        assert!(!close(1, ""));
        assert!(!close(
            1,
            "Connection: keep-alive\r\nConnection: upgrade\r\n"
        ));
        assert!(close(1, "Connection: upgrade\r\nCONNECTION: x, CLOSE\r\n"));
        assert!(!close(1, "Connection: closed\r\n"));
        let resp = |raw: &[u8]| match parse(R, Elem::Head, raw) {
            Ok((_, Found::Response(head, framing))) => (head.connection_close, framing),
            _ => panic!("{raw:?}"),
        };
        let ka = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(resp(ka), (false, State::Body(2)));
        let c = b"HTTP/1.1 200 OK\r\nconnection: Close\r\n\r\n";
        assert_eq!(resp(c), (true, State::UntilClose));
    }

    #[test]
    fn eq_lower_is_eq_ignore_ascii_case() {
        fn check<const N: usize>(lower: &[u8; N]) {
            assert!(!lower.iter().any(u8::is_ascii_uppercase));
            let mut s = *lower;
            for i in 0..N {
                for b in 0..=255 {
                    s[i] = b;
                    assert_eq!(eq_lower(&s, lower), s.eq_ignore_ascii_case(lower), "{s:?}");
                }
                s[i] = lower[i].to_ascii_uppercase();
            }
            assert!(eq_lower(&s, lower), "all upper case");
            assert!(!eq_lower(&s[1..], lower) && !eq_lower(&[s, s].concat(), lower));
        }
        check(b"host");
        check(b"expect");
        check(b"connection");
        check(b"user-agent");
        check(b"traceparent");
        check(b"content-length");
        check(b"transfer-encoding");
        check(b"close");
        check(b"keep-alive");
        check(b"chunked");
        check(b"100-continue");
        check(b"te");
        check(b"x");
    }

    /// The header walks `parse` did before they became one pass, kept verbatim to check
    /// the one pass against.
    mod reference {
        use super::super::*;

        type Headers<'h, 'b> = &'h [httparse::Header<'b>];

        fn values<'h>(headers: Headers<'h, '_>, name: &'h str) -> impl Iterator<Item = &'h [u8]> {
            let named = headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name));
            named.map(|h| h.value.trim_ascii())
        }

        fn tokens<'h>(headers: Headers<'h, '_>, name: &'h str) -> impl Iterator<Item = &'h [u8]> {
            let elements = values(headers, name).flat_map(|v| v.split(|&b| b == b','));
            elements.map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
        }

        fn first(headers: Headers, name: &str) -> Option<String> {
            values(headers, name)
                .next()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        }

        fn joined(headers: Headers, name: &str) -> Option<String> {
            let all: Vec<&[u8]> = values(headers, name).collect();
            (!all.is_empty()).then(|| String::from_utf8_lossy(&all.join(&b',')).into_owned())
        }

        struct Framed {
            framing: State,
            content_length: Option<u64>,
            coded: bool,
            chunked: bool,
            close: bool,
        }

        fn framed(headers: Headers, version: u8) -> Result<Framed, Miss> {
            let mut content_length = None;
            for t in tokens(headers, "content-length") {
                let n = t.iter().try_fold(0u64, |n, &b| {
                    let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
                    n.checked_mul(10)?.checked_add(digit)
                });
                match n {
                    Some(n) if content_length.is_none_or(|c| c == n) => content_length = Some(n),
                    _ => return Err(Miss::Invalid),
                }
            }
            let coding = tokens(headers, "transfer-encoding").last();
            let chunked = coding.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            let has = |t: &[u8]| tokens(headers, "connection").any(|c| c.eq_ignore_ascii_case(t));
            let close = has(b"close") || (version == 0 && !has(b"keep-alive"));
            let framing = match (coding, content_length) {
                (Some(_), _) if chunked => State::At(Elem::ChunkSize),
                (None, Some(n)) => State::Body(n),
                _ => State::UntilClose,
            };
            let coded = coding.is_some();
            Ok(Framed {
                framing,
                content_length,
                coded,
                chunked,
                close,
            })
        }

        /// `parse` of a head, as it was.
        pub(super) fn parse_head(dir: Dir, buf: &[u8]) -> Result<(usize, Found), Miss> {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match dir {
                Dir::Request => {
                    let mut req = httparse::Request::new(&mut headers);
                    let n = done(req.parse(buf))?;
                    let version = req.version.unwrap_or(1);
                    let f = framed(req.headers, version)?;
                    let framing = match f.framing {
                        State::UntilClose if f.coded => return Err(Miss::Invalid),
                        State::UntilClose => NO_BODY,
                        framing => framing,
                    };
                    let expect = values(req.headers, "expect").next();
                    let head = RequestHead {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: req.path.unwrap_or_default().to_owned(),
                        version,
                        host: first(req.headers, "host"),
                        user_agent: first(req.headers, "user-agent"),
                        traceparent: first(req.headers, "traceparent"),
                        tracestate: joined(req.headers, "tracestate"),
                        content_length: f.content_length,
                        chunked: f.chunked,
                        expect_continue: expect
                            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")),
                        connection_close: f.close,
                    };
                    Ok((n, Found::Request(head, framing)))
                }
                Dir::Response => {
                    let mut resp = httparse::Response::new(&mut headers);
                    let n = done(resp.parse(buf))?;
                    let version = resp.version.unwrap_or(1);
                    let f = framed(resp.headers, version)?;
                    let head = ResponseHead {
                        status: resp.code.unwrap_or_default(),
                        version,
                        content_length: f.content_length,
                        chunked: f.chunked,
                        connection_close: f.close,
                    };
                    Ok((n, Found::Response(head, f.framing)))
                }
            }
        }
    }

    #[test]
    fn one_pass_over_headers_matches_the_old_walks() {
        let names = "content-length|transfer-encoding|connection|expect|host|user-agent|\
            traceparent|content-length-x|hosts|hos|cser-agent|uonnection|expects|x-a|server|\
            tracestate|uracestate|date|accept|content-type|etag|transfer-encodin|traceparents|\
            ontent-length";
        let names: Vec<&str> = names.split('|').collect();
        let values = "5|5,5| 5 , ,5|6|5, 6||,|x|+5|18446744073709551615|18446744073709551616|\
            chunked|gzip|gzip, chunked|chunked, gzip| Chunked |close|keep-alive|Keep-Alive, TE|\
            CLOSE,|100-continue|100-Continue |a b|\u{e9}t\u{e9}|00-ab-01";
        let values: Vec<&str> = values.split('|').collect();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut counts = [0usize; 3]; // ok requests, ok responses, invalid
        for round in 0..20_000 {
            let dir = [Q, R][round % 2];
            let mut raw = match dir {
                Q => format!("GET /{round} HTTP/1.{}\r\n", rng.below(2)).into_bytes(),
                R => format!("HTTP/1.{} 200 OK\r\n", rng.below(2)).into_bytes(),
            };
            for _ in 0..rng.below(9) {
                // Mixed case names; values from the list, at times with a stray byte.
                let name = names[rng.below(names.len())].bytes();
                let flip = rng.below(4);
                raw.extend(name.map(|b| match rng.below(4) < flip {
                    true => b.to_ascii_uppercase(),
                    false => b,
                }));
                raw.extend_from_slice(b": ");
                raw.extend_from_slice(values[rng.below(values.len())].as_bytes());
                if rng.below(8) == 0 {
                    raw.push([b'\xff', b' ', b'\t', b','][rng.below(4)]);
                }
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            let want = reference::parse_head(dir, &raw);
            let got = parse(dir, Elem::Head, &raw);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&raw));
            counts[match got {
                Ok((_, Found::Request(..))) => 0,
                Ok(_) => 1,
                Err(_) => 2,
            }] += 1;
            let partial = &raw[..rng.below(raw.len())];
            assert_eq!(
                parse(dir, Elem::Head, partial),
                reference::parse_head(dir, partial)
            );
        }
        assert!(counts.iter().all(|&n| n > 2000), "{counts:?}");
    }
}
