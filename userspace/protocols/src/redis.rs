//! Streaming Redis (RESP2/RESP3) parser over captured syscall chunks.
//!
//! This module owns ztrace's Redis framing: it turns the read/write chunks captured on one
//! connection (both directions) into [`RedisEvent`]s — commands (name, key, argument count,
//! sanitized text), their replies paired in FIFO order, and desyncs — with stream offsets.
//! It is pure (no I/O, no clocks, no globals), never panics, and its memory is bounded: at most
//! [`MAX_LINE`] buffered bytes of a partial line per direction, [`MAX_DEPTH`] nested aggregates
//! and [`MAX_PENDING`] outstanding commands. Bulk payloads are never buffered: they are skipped
//! by length (a capture gap inside one is fine), only a bounded head of a command's name and
//! first argument and of an error reply is copied. A gap over a line (a length line, a simple
//! value, an inline command) loses framing and yields [`RedisEvent::Desync`].
//!
//! Pairing: commands are expected to be answered in order; RESP3 push messages (`>`) are
//! out-of-band and skipped; replies without an outstanding command are dropped. After
//! (P|S)SUBSCRIBE or MONITOR the connection no longer carries request/reply traffic: once the
//! replies to earlier commands are in, it becomes a tunnel (no more events).

use crate::Dir;
use crate::exchange::{DbExchange, DbSystem, Exchange};
use crate::parser::{Opener, Parser, Protocol, Step, Update};
use std::collections::VecDeque;

type Out = Vec<RedisEvent>;

/// Longest line (type byte + header or simple value, or an inline command, CRLF included).
pub const MAX_LINE: usize = 64 * 1024;
/// Most outstanding commands remembered to pair replies (oldest dropped first).
pub const MAX_PENDING: usize = 1024;
/// Deepest nesting of aggregates; deeper is treated as malformed.
pub const MAX_DEPTH: usize = 32;
/// Longest key reported (bytes, before lossy UTF-8 decoding).
pub const MAX_KEY: usize = 128;
/// Longest sanitized command text (bytes).
pub const MAX_SANITIZED: usize = 256;
/// Longest error text reported (bytes, before lossy UTF-8 decoding).
pub const MAX_ERROR: usize = 256;
/// Longest command name kept.
const MAX_NAME: usize = 64;

/// Commands whose first argument is a key.
const KEYED: &str = "APPEND BITCOUNT BITFIELD BITFIELD_RO BITPOS BLMOVE BLPOP BRPOP BRPOPLPUSH \
    BZPOPMAX BZPOPMIN COPY DECR DECRBY DEL DUMP EXISTS EXPIRE EXPIREAT EXPIRETIME GEOADD GEODIST \
    GEOHASH GEOPOS GEORADIUS GEORADIUSBYMEMBER GEOSEARCH GEOSEARCHSTORE GET GETBIT GETDEL GETEX \
    GETRANGE GETSET HDEL HEXISTS HEXPIRE HGET HGETALL HINCRBY HINCRBYFLOAT HKEYS HLEN HMGET HMSET \
    HRANDFIELD HSCAN HSET HSETNX HSTRLEN HTTL HVALS INCR INCRBY INCRBYFLOAT JSON.DEL JSON.GET \
    JSON.SET LINDEX LINSERT LLEN LMOVE LPOP LPOS LPUSH LPUSHX LRANGE LREM LSET LTRIM MGET MSET \
    MSETNX PERSIST PEXPIRE PEXPIREAT PEXPIRETIME PFADD PFCOUNT PFMERGE PSETEX PTTL RENAME RENAMENX \
    RESTORE RPOP RPOPLPUSH RPUSH RPUSHX SADD SCARD SDIFF SDIFFSTORE SET SETBIT SETEX SETNX SETRANGE \
    SINTER SINTERSTORE SISMEMBER SMEMBERS SMISMEMBER SMOVE SORT SORT_RO SPOP SRANDMEMBER SREM SSCAN \
    STRLEN SUBSTR SUNION SUNIONSTORE TOUCH TTL TYPE UNLINK WATCH XACK XADD XAUTOCLAIM XCLAIM XDEL \
    XLEN XPENDING XRANGE XREVRANGE XSETID XTRIM ZADD ZCARD ZCOUNT ZDIFFSTORE ZINCRBY ZINTERSTORE \
    ZLEXCOUNT ZMSCORE ZPOPMAX ZPOPMIN ZRANDMEMBER ZRANGE ZRANGEBYLEX ZRANGEBYSCORE ZRANGESTORE \
    ZRANK ZREM ZREMRANGEBYLEX ZREMRANGEBYRANK ZREMRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX \
    ZREVRANGEBYSCORE ZREVRANK ZSCAN ZSCORE ZUNIONSTORE";
/// Two-word commands: the subcommand is kept in the sanitized text.
const CONTAINERS: &str = "ACL CLIENT CLUSTER COMMAND CONFIG DEBUG FUNCTION LATENCY MEMORY \
    MODULE OBJECT PUBSUB SCRIPT SLOWLOG XGROUP XINFO";
/// Commands after which the connection stops carrying request/reply pairs.
const TUNNELS: &str = "SUBSCRIBE PSUBSCRIBE SSUBSCRIBE MONITOR";
/// Other commands that start an inline command for [`looks_like_command`].
const OTHERS: &str = "PING ECHO INFO AUTH HELLO SELECT QUIT RESET DBSIZE FLUSHALL FLUSHDB KEYS \
    SCAN RANDOMKEY MULTI EXEC DISCARD UNWATCH PUBLISH UNSUBSCRIBE EVAL EVALSHA FCALL TIME SAVE \
    BGSAVE LASTSAVE ROLE WAIT SWAPDB";

fn listed(list: &str, name: &[u8]) -> bool {
    let mut words = list.split_ascii_whitespace();
    words.any(|w| w.as_bytes().eq_ignore_ascii_case(name))
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RedisCommand {
    /// Upper-cased command name; for two-word commands (CONFIG GET, CLIENT SETNAME…) the first word.
    pub name: String,
    /// The first argument, for commands that take a key there (GET, SET, HGET, DEL, MGET…):
    /// at most [`MAX_KEY`] bytes, lossy UTF-8.
    pub key: Option<String>,
    /// Arguments after the name.
    pub args: usize,
    /// Name, key (or upper-cased subcommand) and a `?` for every other argument, e.g.
    /// `SET mykey ?` or `CONFIG GET ?`; at most [`MAX_SANITIZED`] bytes.
    pub sanitized: String,
}

/// What the parser found, in stream order within each direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisEvent {
    /// A command (array of bulk strings, or inline command) was fully parsed: bytes
    /// `[start, end)` of the Request stream.
    Command {
        start: u64,
        end: u64,
        cmd: RedisCommand,
    },
    /// The reply to the oldest outstanding command: bytes `[start, end)` of the Response
    /// stream. `error`: the text of a top-level error reply (`-` or `!`), e.g. `ERR unknown
    /// command`, at most [`MAX_ERROR`] bytes, lossy UTF-8.
    Reply {
        start: u64,
        end: u64,
        error: Option<String>,
    },
    /// Bytes in `dir` from `offset` on could not be parsed (garbage, a line in a capture gap,
    /// an oversized line, too deep nesting…); that direction's partial state was dropped and it
    /// resynchronises at the next chunk that starts like a command (`*N\r\n$`, or a known
    /// inline command) or a reply.
    Desync { dir: Dir, offset: u64 },
}

/// Quick check on a Request stream's first bytes: `*` digits CRLF `$`, or an inline command
/// whose first word is a well-known command (case-insensitive) followed by a space or line
/// end, and which is not an HTTP/1 request line.
pub fn looks_like_command(data: &[u8]) -> bool {
    if let Some(rest) = data.strip_prefix(b"*") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        return digits > 0 && rest[digits..].starts_with(b"\r\n$");
    }
    let Some(end) = data.iter().take(32).position(|&b| b" \r\n".contains(&b)) else {
        return false;
    };
    let word = &data[..end];
    let known = [KEYED, CONTAINERS, TUNNELS, OTHERS]
        .iter()
        .any(|l| listed(l, word));
    known && !crate::http1::looks_like_request(data)
}

/// Quick check on a Response stream's first bytes: a whole first line (CRLF-terminated) that
/// is a valid RESP2/RESP3 header or simple value.
pub fn looks_like_reply(data: &[u8]) -> bool {
    let line = &data[..data.len().min(MAX_LINE)];
    let Some(nl) = line.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let head = line[..nl].strip_suffix(b"\r").and_then(head);
    head.is_some_and(|h| !matches!(h, Head::Chunk(_) | Head::End))
}

/// Bytes that start a RESP line.
const TYPES: &[u8] = b"+-:$*_,#!=(%~>|;.";

/// An aggregate being parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Elements still due (> 0; maps and attributes count keys and values). An attribute is
    /// followed by the value it annotates, which its end does not complete.
    Agg { left: u64, attr: bool },
    /// A streamed aggregate (`*?`…), ended by `.`.
    Streamed,
    /// A streamed string (`$?`): `;` chunks, ended by `;0`.
    Chunks,
}

/// What one RESP line (CRLF stripped) announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// A whole value: simple string, integer, double, big number, boolean, nulls.
    Scalar,
    /// A simple error (`-`).
    Error,
    /// A bulk string, verbatim string or bulk error (`true`): payload + CRLF bytes.
    Bulk(u64, bool),
    /// A streamed string's chunk: payload + CRLF bytes, or 0 for the last one.
    Chunk(u64),
    /// An aggregate begins; `true` for a push (`>`).
    Open(Frame, bool),
    /// A streamed aggregate ends (`.`).
    End,
}

/// A decimal length.
fn digits(s: &[u8]) -> Option<u64> {
    let first = s.first().filter(|b| b.is_ascii_digit())?;
    s[1..].iter().try_fold(u64::from(first - b'0'), |n, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

fn head(line: &[u8]) -> Option<Head> {
    let (&t, s) = line.split_first()?;
    let signed = s.strip_prefix(b"-").or(s.strip_prefix(b"+")).unwrap_or(s);
    let agg = |n: u64, attr| Frame::Agg { left: n, attr };
    Some(match (t, s) {
        (b'+', _) | (b',', [_, ..]) | (b'#', b"t" | b"f") | (b'_', b"") => Head::Scalar,
        (b':' | b'(', _) if !signed.is_empty() && signed.iter().all(u8::is_ascii_digit) => {
            Head::Scalar
        }
        (b'$' | b'*', b"-1") => Head::Scalar,
        (b'-', _) => Head::Error,
        (b'$', b"?") => Head::Open(Frame::Chunks, false),
        (b'*' | b'~' | b'%' | b'>', b"?") => Head::Open(Frame::Streamed, t == b'>'),
        (b'$' | b'=' | b'!', _) => Head::Bulk(digits(s)?.checked_add(2)?, t == b'!'),
        (b';', b"0") => Head::Chunk(0),
        (b';', _) => Head::Chunk(digits(s)?.checked_add(2)?),
        (b'*' | b'~' | b'>', _) => Head::Open(agg(digits(s)?, false), t == b'>'),
        (b'%' | b'|', _) => Head::Open(agg(digits(s)?.checked_mul(2)?, t == b'|'), false),
        (b'.', b"") => Head::End,
        _ => return None,
    })
}

/// Build the command from its (truncated) name and first argument.
fn command(name: &[u8], arg1: &[u8], args: u64) -> RedisCommand {
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let keyed = args > 0 && listed(KEYED, name.as_bytes());
    let key = keyed.then(|| String::from_utf8_lossy(arg1).into_owned());
    let mut sanitized = name.clone();
    let word = |b: &u8| b.is_ascii_alphanumeric() || b"-_".contains(b);
    let sub = args > 0 && listed(CONTAINERS, name.as_bytes());
    let shown = if let Some(key) = &key {
        sanitized.push(' ');
        sanitized.push_str(key);
        1
    } else if sub && (1..=32).contains(&arg1.len()) && arg1.iter().all(word) {
        sanitized.push(' ');
        sanitized.extend(arg1.iter().map(|b| char::from(b.to_ascii_uppercase())));
        1
    } else {
        0
    };
    for _ in shown..args.min(MAX_SANITIZED as u64) {
        sanitized.push_str(" ?");
    }
    sanitized.truncate(sanitized.floor_char_boundary(MAX_SANITIZED));
    let args = usize::try_from(args).unwrap_or(usize::MAX);
    RedisCommand {
        name,
        key,
        args,
        sanitized,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a line; the bytes of a partial one are in `Side::buf`.
    Line,
    /// Inside a bulk payload: bytes left, its CRLF included.
    Payload(u64),
    /// Lost framing: skip chunks until one starts like a message.
    Desync,
}

/// State shared by both directions.
struct Shared {
    /// Outstanding commands, oldest first: `true` for one lost in a request-side desync,
    /// whose reply is dropped.
    pending: VecDeque<bool>,
    /// A subscribe command or MONITOR was seen: no more commands.
    subscribed: bool,
}

impl Shared {
    fn expect(&mut self, lost: bool) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(lost);
    }

    fn tunnel(&self) -> bool {
        self.subscribed && self.pending.is_empty()
    }

    fn stopped(&self, dir: Dir) -> bool {
        match dir {
            Dir::Request => self.subscribed,
            Dir::Response => self.tunnel(),
        }
    }
}

/// One direction of the connection.
struct Side {
    dir: Dir,
    /// Stream offset of the next byte to arrive.
    offset: u64,
    state: State,
    /// A partial line only (less than `MAX_LINE` bytes).
    buf: Vec<u8>,
    /// Offset of the line being parsed (the first byte of `buf`, if any).
    buf_start: u64,
    /// Open aggregates, outermost first (at most `MAX_DEPTH`).
    stack: Vec<Frame>,
    /// Offset of the first byte of the top-level value being parsed.
    msg: Option<u64>,
    /// Request: elements of the command array (name included).
    argc: u64,
    /// Response: the top-level value is a push / an error.
    push: bool,
    error: bool,
    /// The current payload's head goes to `caps[i]`: a command's name (0) and first
    /// argument (1); an error reply's text (0).
    cap: Option<usize>,
    caps: [Vec<u8>; 2],
}

impl Side {
    fn new(dir: Dir) -> Self {
        Side {
            dir,
            offset: 0,
            state: State::Line,
            buf: Vec::new(),
            buf_start: 0,
            stack: Vec::new(),
            msg: None,
            argc: 0,
            push: false,
            error: false,
            cap: None,
            caps: [Vec::new(), Vec::new()],
        }
    }

    /// Give up on framing at `offset`. A request-side desync stands for one lost command,
    /// whose reply is dropped. After a response-side desync the replies still due cannot be
    /// told apart: all outstanding commands are forgotten.
    fn desync(&mut self, sh: &mut Shared, offset: u64, out: &mut Out) {
        match self.dir {
            Dir::Request => sh.expect(true),
            Dir::Response => sh.pending.clear(),
        }
        (self.state, self.msg, self.cap) = (State::Desync, None, None);
        crate::empty(&mut self.buf);
        self.stack.clear();
        out.push(RedisEvent::Desync {
            dir: self.dir,
            offset,
        });
    }

    fn capture(&mut self, bytes: &[u8]) {
        if let Some(i) = self.cap {
            let max = match (self.dir, i) {
                (Dir::Response, _) => MAX_ERROR,
                (_, 0) => MAX_NAME,
                _ => MAX_KEY,
            };
            let cap = &mut self.caps[i];
            cap.extend_from_slice(&bytes[..bytes.len().min(max.saturating_sub(cap.len()))]);
        }
    }

    /// Whether `b` may start the next line.
    fn starts_line(&self, b: u8) -> bool {
        match (self.dir, self.stack.is_empty()) {
            (Dir::Request, true) => {
                b == b'*' || b.is_ascii_alphanumeric() || b.is_ascii_whitespace()
            }
            (Dir::Request, false) => b == b'$',
            (Dir::Response, _) => TYPES.contains(&b),
        }
    }

    /// A value ended at `end`: count it in its aggregate, or end the message.
    fn value_done(&mut self, sh: &mut Shared, end: u64, out: &mut Out) {
        while let Some(frame) = self.stack.last_mut() {
            let Frame::Agg { left, attr } = frame else {
                return; // streamed: until `.` or `;0`
            };
            *left -= 1;
            if *left > 0 {
                return;
            }
            let attr = *attr;
            self.stack.pop();
            if attr {
                return; // the annotated value is still due
            }
        }
        let start = self.msg.take().unwrap_or(end);
        match self.dir {
            Dir::Request => {
                let [name, arg1] = &self.caps;
                let cmd = command(name, arg1, self.argc - 1);
                match listed(TUNNELS, cmd.name.as_bytes()) {
                    true => sh.subscribed = true,
                    false => sh.expect(false),
                }
                out.push(RedisEvent::Command { start, end, cmd });
            }
            Dir::Response if self.push => {}
            Dir::Response => {
                if sh.pending.pop_front() == Some(false) {
                    let text = || String::from_utf8_lossy(&self.caps[0]).into_owned();
                    let error = self.error.then(text);
                    out.push(RedisEvent::Reply { start, end, error });
                }
            }
        }
    }

    /// An inline command: words separated by whitespace (quotes are not interpreted).
    fn inline(&mut self, sh: &mut Shared, line: &[u8], end: u64, out: &mut Out) -> Option<()> {
        let mut words = line
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty());
        let Some(name) = words.next() else {
            self.msg = None; // a blank line: ignored, as Redis does
            return Some(());
        };
        if !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
        {
            return None;
        }
        let arg1 = words.next().unwrap_or_default();
        self.caps[0].extend_from_slice(&name[..name.len().min(MAX_NAME)]);
        self.caps[1].extend_from_slice(&arg1[..arg1.len().min(MAX_KEY)]);
        self.argc = 1 + u64::from(!arg1.is_empty()) + words.count() as u64;
        self.value_done(sh, end, out);
        Some(())
    }

    /// Act on the line `[start, end)` (line end included). `None`: malformed.
    fn line(&mut self, sh: &mut Shared, line: &[u8], at: (u64, u64), out: &mut Out) -> Option<()> {
        let (start, end) = at;
        if self.msg.is_none() {
            (self.msg, self.push, self.error) = (Some(start), false, false);
            self.caps.iter_mut().for_each(Vec::clear);
        }
        let top = self.stack.is_empty();
        if self.dir == Dir::Request && top && line[0] != b'*' {
            return self.inline(sh, line, end, out);
        }
        let head = head(line.strip_suffix(b"\r\n")?)?;
        if (self.stack.last() == Some(&Frame::Chunks)) != matches!(head, Head::Chunk(_)) {
            return None;
        }
        match (self.dir, head) {
            // A command: an array of bulk strings. `*0` and `*-1` are ignored, as Redis does.
            (Dir::Request, Head::Open(frame @ Frame::Agg { left, .. }, _)) if top => {
                self.argc = left;
                match left {
                    0 => self.msg = None,
                    _ => self.stack.push(frame),
                }
            }
            (Dir::Request, Head::Scalar) if top => self.msg = None,
            (Dir::Request, Head::Bulk(left, _)) if !top && line[0] == b'$' => {
                let due = match self.stack[0] {
                    Frame::Agg { left, .. } => left,
                    _ => return None,
                };
                let i = self.argc - due; // this element's index
                self.cap = (i < 2).then_some(i as usize);
                self.state = State::Payload(left);
            }
            (Dir::Request, _) => return None,
            (_, Head::Scalar) => self.value_done(sh, end, out),
            (_, Head::Error) => {
                if top {
                    (self.error, self.cap) = (true, Some(0));
                    self.capture(&line[1..line.len() - 2]);
                }
                self.value_done(sh, end, out);
            }
            (_, Head::Bulk(left, error)) => {
                self.error |= top && error;
                self.cap = (top && error).then_some(0);
                self.state = State::Payload(left);
            }
            (_, Head::Chunk(0)) => {
                self.stack.pop();
                self.value_done(sh, end, out);
            }
            (_, Head::Chunk(left)) => (self.cap, self.state) = (None, State::Payload(left)),
            (_, Head::Open(frame, push)) => {
                self.push |= top && push;
                match frame {
                    // An empty attribute: the annotated value follows.
                    Frame::Agg { left: 0, attr } if !attr => self.value_done(sh, end, out),
                    Frame::Agg { left: 0, .. } => {}
                    _ if self.stack.len() >= MAX_DEPTH => return None,
                    _ => self.stack.push(frame),
                }
            }
            (_, Head::End) if self.stack.last() == Some(&Frame::Streamed) => {
                self.stack.pop();
                self.value_done(sh, end, out);
            }
            (_, Head::End) => return None,
        }
        Some(())
    }

    /// Consume one chunk: `data`, then `gap` unknown bytes.
    fn feed(&mut self, sh: &mut Shared, data: &[u8], mut gap: u64, out: &mut Out) {
        let mut at = self.offset; // stream offset of data[pos], then of the gap's next byte
        self.offset += data.len() as u64 + gap;
        if self.state == State::Desync {
            let fresh = match self.dir {
                Dir::Request => looks_like_command(data),
                Dir::Response => looks_like_reply(data),
            };
            if !fresh {
                return;
            }
            self.state = State::Line;
        }
        let mut pos = 0usize;
        while !sh.stopped(self.dir) {
            let rest = &data[pos..];
            if self.buf.is_empty() {
                self.buf_start = at; // where the next line starts
            }
            match self.state {
                State::Line if rest.is_empty() => {
                    if gap > 0 {
                        self.desync(sh, self.buf_start, out);
                    }
                    return;
                }
                State::Line => {
                    let old = self.buf.len();
                    if old == 0 && !self.starts_line(rest[0]) {
                        return self.desync(sh, at, out);
                    }
                    let room = &rest[..rest.len().min(MAX_LINE - old)];
                    let Some(nl) = room.iter().position(|&b| b == b'\n') else {
                        if old + room.len() == MAX_LINE {
                            return self.desync(sh, self.buf_start, out); // too long
                        }
                        self.buf.extend_from_slice(room);
                        (pos, at) = (data.len(), at + room.len() as u64);
                        continue;
                    };
                    let line = &rest[..=nl];
                    let start = self.buf_start;
                    (pos, at) = (pos + line.len(), at + line.len() as u64);
                    let parsed = if old == 0 {
                        self.line(sh, line, (start, at), out)
                    } else {
                        let mut buf = std::mem::take(&mut self.buf);
                        buf.extend_from_slice(line);
                        let parsed = self.line(sh, &buf, (start, at), out);
                        crate::empty(&mut buf);
                        self.buf = buf;
                        parsed
                    };
                    if parsed.is_none() {
                        return self.desync(sh, start, out);
                    }
                }
                State::Payload(left) => {
                    let n = (rest.len() as u64).min(left);
                    let body = n.min(left.saturating_sub(2)) as usize;
                    let n = n as usize;
                    self.capture(&rest[..body]);
                    for (i, &b) in rest[body..n].iter().enumerate() {
                        // The payload's last two bytes are its CRLF.
                        let due = left - (body + i) as u64; // 2 or 1
                        if b != b"\r\n"[(2 - due) as usize] {
                            return self.desync(sh, at + (body + i) as u64, out);
                        }
                    }
                    let mut left = left - n as u64;
                    (pos, at) = (pos + n, at + n as u64);
                    if pos == data.len() {
                        let g = gap.min(left); // a gap inside a payload is fine
                        (gap, left, at) = (gap - g, left - g, at + g);
                    }
                    if left > 0 {
                        self.state = State::Payload(left);
                        return; // this chunk is used up
                    }
                    self.state = State::Line;
                    self.value_done(sh, at, out);
                }
                State::Desync => return,
            }
        }
    }
}

/// Redis parser state for one connection, both directions.
pub struct RedisConn {
    req: Side,
    resp: Side,
    shared: Shared,
    closed: bool,
}

impl Default for RedisConn {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisConn {
    pub fn new() -> Self {
        let shared = Shared {
            pending: VecDeque::new(),
            subscribed: false,
        };
        let (req, resp) = (Side::new(Dir::Request), Side::new(Dir::Response));
        RedisConn {
            req,
            resp,
            shared,
            closed: false,
        }
    }

    /// Feed one syscall's worth of bytes. `len` >= data.len() is the true byte count;
    /// offsets count `len` bytes (if `len < data.len()`, only `data[..len]` is used).
    /// Ignored after [`close`](Self::close) and once the connection became a tunnel.
    pub fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<RedisEvent>) {
        if self.closed || self.shared.tunnel() {
            return;
        }
        let side = match dir {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        };
        let (data, gap) = crate::clamp(data, len, side.offset);
        side.feed(&mut self.shared, data, gap, out);
    }

    /// The connection closed. RESP has no close-delimited messages, so nothing completes:
    /// partial messages get no event. Later pushes are ignored.
    pub fn close(&mut self, _out: &mut Vec<RedisEvent>) {
        self.closed = true;
        for side in [&mut self.req, &mut self.resp] {
            (side.buf, side.stack, side.caps) = (Vec::new(), Vec::new(), Default::default());
        }
        self.shared.pending.clear();
    }

    /// Commands whose reply was not seen yet, plus one per request-side desync, minus those
    /// forgotten at a response-side desync.
    pub fn pending_commands(&self) -> usize {
        self.shared.pending.len()
    }

    /// A subscribe command or MONITOR was answered up to it: no more events.
    pub fn is_tunnel(&self) -> bool {
        self.shared.tunnel()
    }
}

impl Parser for RedisConn {
    type Event = RedisEvent;
    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<RedisEvent>) {
        RedisConn::push(self, dir, data, len, out);
    }
    fn close(&mut self, out: &mut Vec<RedisEvent>) {
        RedisConn::close(self, out);
    }
    fn held(&self) -> usize {
        let side = |s: &Side| {
            s.buf.capacity()
                + crate::slots::<Frame>(s.stack.capacity())
                + s.caps.iter().map(Vec::capacity).sum::<usize>()
        };
        side(&self.req) + side(&self.resp) + crate::slots::<bool>(self.shared.pending.capacity())
    }
}

impl Protocol for RedisConn {
    fn detect(payload: &[u8]) -> Option<Opener> {
        looks_like_command(payload).then_some(Opener::Requester)
    }

    fn step(&self, event: RedisEvent) -> Option<Step> {
        Some(match event {
            RedisEvent::Command { start, cmd, .. } => Step::Request {
                key: None,
                start,
                context: None,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, Rng, split};
    use Dir::{Request as Q, Response as R};
    use RedisEvent as E;

    /// Events as a trace: `C0-24[GET k]` command [0, 24) with its sanitized text, `R0-5`
    /// reply, `E0-9[ERR x]` error reply, `Dq@5` desync.
    fn show(ev: &[E]) -> String {
        let s = ev.iter().map(|e| match e {
            E::Command { start, end, cmd } => format!("C{start}-{end}[{}]", cmd.sanitized),
            E::Reply { start, end, error } => match error {
                Some(e) => format!("E{start}-{end}[{e}]"),
                None => format!("R{start}-{end}"),
            },
            E::Desync { dir, offset } => format!("D{}@{offset}", ["q", "r"][*dir as usize]),
        });
        s.collect::<Vec<_>>().join(" ")
    }

    fn feed(c: &mut RedisConn, dir: Dir, data: &[u8], len: u64) -> String {
        show(&testutil::feed(c, dir, data, len))
    }

    fn push(c: &mut RedisConn, dir: Dir, data: &[u8]) -> String {
        feed(c, dir, data, data.len() as u64)
    }

    /// A command as RESP: an array of bulk strings.
    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
        v
    }

    fn parsed(data: &[u8]) -> RedisCommand {
        let mut out = Vec::new();
        RedisConn::new().push(Q, data, data.len() as u64, &mut out);
        match out.pop() {
            Some(E::Command { cmd, .. }) => cmd,
            ev => panic!("{ev:?}"),
        }
    }

    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$5\r\nmykey\r\n"; // 24 bytes
    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$5\r\nmykey\r\n$5\r\nhello\r\n"; // 35 bytes

    #[test]
    fn get_set_multi_and_pipelining() {
        let mut c = RedisConn::new();
        assert_eq!(push(&mut c, Q, SET), "C0-35[SET mykey ?]");
        assert_eq!(push(&mut c, R, b"+OK\r\n"), "R0-5");
        assert_eq!(push(&mut c, Q, GET), "C35-59[GET mykey]");
        assert_eq!(push(&mut c, R, b"$5\r\nhello\r\n"), "R5-16");
        let (ev, want) = (
            &[GET, SET, GET].concat(),
            "C59-83[GET mykey] C83-118[SET mykey ?]",
        );
        assert_eq!(push(&mut c, Q, ev), format!("{want} C118-142[GET mykey]"));
        assert_eq!(c.pending_commands(), 3);
        let three = push(&mut c, R, b"$-1\r\n+OK\r\n$5\r\nhello\r\n");
        assert_eq!(three, "R16-21 R21-26 R26-37");
        assert_eq!(push(&mut c, R, b"+OK\r\n"), "", "unmatched: dropped");
        let multi = [cmd(&["MULTI"]), cmd(&["INCR", "n"]), cmd(&["EXEC"])].concat();
        let ev = push(&mut c, Q, &multi);
        assert_eq!(ev, "C142-157[MULTI] C157-178[INCR n] C178-192[EXEC]");
        let r = push(&mut c, R, b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n");
        assert_eq!(r, "R42-47 R47-56 R56-64");
        let done = (c.pending_commands(), c.req.buf.capacity());
        assert_eq!(done, (0, 0), "whole lines: no copy");
    }

    /// One reply of every type; the push is skipped.
    const REPLIES: [&str; 21] = [
        "+OK\r\n",
        "-ERR bad\r\n",
        ":-42\r\n",
        "$-1\r\n",
        "*-1\r\n",
        "_\r\n",
        "#t\r\n",
        ",3.14\r\n",
        "(3492890328409238509324850943850943825024385\r\n",
        "!21\r\nSYNTAX invalid syntax\r\n",
        "=15\r\ntxt:Some string\r\n",
        "%2\r\n+first\r\n:1\r\n+second\r\n$-1\r\n",
        "~2\r\n+a\r\n#f\r\n",
        "|1\r\n+ttl\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,-inf\r\n*2\r\n:2039\r\n_\r\n",
        ">3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$2\r\nhi\r\n",
        "*0\r\n",
        "$0\r\n\r\n",
        "*?\r\n:1\r\n*1\r\n:2\r\n.\r\n",
        "$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n",
        "%?\r\n+a\r\n:1\r\n.\r\n",
        "*3\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n-ERR in array\r\n|0\r\n(-1\r\n",
    ];

    /// The events `REPLIES` should give.
    fn expected_replies() -> String {
        let mut at = 0;
        let mut ev = Vec::new();
        for r in REPLIES {
            let (start, end) = (at, at + r.len());
            at = end;
            ev.push(match r.as_bytes()[0] {
                b'>' => continue,
                b'-' => format!("E{start}-{end}[ERR bad]"),
                b'!' => format!("E{start}-{end}[SYNTAX invalid syntax]"),
                _ => format!("R{start}-{end}"),
            });
        }
        ev.join(" ")
    }

    #[test]
    fn every_resp_type() {
        let mut c = RedisConn::new();
        push(&mut c, Q, &b"PING\r\n".repeat(20));
        let ev = push(&mut c, R, REPLIES.concat().as_bytes());
        assert_eq!(ev, expected_replies());
        assert_eq!((c.pending_commands(), c.resp.stack.len()), (0, 0));
        let bad = "#x|_x|:|:1.5|(12a|,|$-2|*-2|%-1|!-1|=?|~-1|;3|.|$1x|*1x|%9999999999999999999999";
        for bad in bad.split('|') {
            let mut c = RedisConn::new();
            push(&mut c, Q, b"PING\r\n");
            let ev = push(&mut c, R, format!("{bad}\r\n").as_bytes());
            assert_eq!(ev, "Dr@0", "{bad}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n| format!("{}:1\r\n", "*1\r\n".repeat(n)).into_bytes();
        let mut c = RedisConn::new();
        push(&mut c, Q, &b"PING\r\nPING\r\n"[..]);
        assert_eq!(push(&mut c, R, &deep(MAX_DEPTH)), "R0-132");
        assert_eq!(push(&mut c, R, &deep(MAX_DEPTH + 1)), "Dr@260");
        assert_eq!(c.pending_commands(), 0, "a response desync forgets");
        let nested = push(&mut RedisConn::new(), Q, b"*2\r\n*1\r\n$1\r\na\r\n");
        assert_eq!(nested, "Dq@4", "commands are flat");
    }

    #[test]
    fn gaps_in_bulk_payloads() {
        let mut big = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n".to_vec();
        big.resize(500, b'v');
        let mut c = RedisConn::new();
        assert_eq!(feed(&mut c, Q, &big, 29 + 100_002), "C0-100031[SET k ?]");
        assert_eq!(push(&mut c, Q, GET), "C100031-100055[GET mykey]");
        // A reply whose payload is in a gap, then one split across a gap.
        let bulk = [&b"$70000\r\n"[..], &[b'x'; 1000]].concat();
        assert_eq!(feed(&mut c, R, &bulk, 70_010), "R0-70010");
        assert_eq!(feed(&mut c, R, &bulk, 30_000), "");
        assert_eq!(feed(&mut c, R, b"xx\r\n", 40_010), "R70010-140020");
        // A length line in a gap: desync; the lost command's reply is dropped.
        let ev = feed(&mut c, Q, &big[..19], 5000);
        assert_eq!(ev, "Dq@100075", "a gap over CRLF and the next line");
        assert_eq!(push(&mut c, Q, b"$3\r\nSET\r\n"), "", "no resync on junk");
        assert_eq!(push(&mut c, Q, GET), "C105064-105088[GET mykey]");
        assert_eq!(push(&mut c, R, b"+OK\r\n$1\r\nv\r\n"), "R140025-140032");
        // A gap past a payload's end hides the next line; a bad CRLF is garbage.
        push(&mut c, Q, &[GET, GET].concat());
        assert_eq!(feed(&mut c, R, b"$1\r\nv", 9), "R140032-140039 Dr@140039");
        assert_eq!(push(&mut c, R, b"$1\r\nv\r\n"), "", "forgotten");
        push(&mut c, Q, GET);
        assert_eq!(push(&mut c, R, b"$1\r\nvX\n"), "Dr@140053");
        // `len` < data.len(): only data[..len] counts. Offsets saturate.
        let mut c = RedisConn::new();
        let ev = feed(&mut c, Q, &[GET, b"junk"].concat(), 24);
        assert_eq!(ev, "C0-24[GET mykey]");
        let ev = feed(&mut c, Q, &big, u64::MAX) + &feed(&mut c, Q, GET, 24);
        assert_eq!(ev, "C24-100055[SET k ?] Dq@100055");
        assert_eq!(c.req.offset, u64::MAX);
    }

    #[test]
    fn error_replies() {
        let mut c = RedisConn::new();
        push(&mut c, Q, &b"FOO\r\nPING\r\nPING\r\nPING\r\nPING\r\n"[..]);
        let wrong = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        let want = format!("E0-68[{}]", &wrong[1..66]);
        assert_eq!(push(&mut c, R, wrong.as_bytes()), want);
        let long = format!("-ERR {}\r\n", "é".repeat(300));
        let mut out = Vec::new();
        c.push(R, long.as_bytes(), long.len() as u64, &mut out);
        let Some(E::Reply { error: Some(e), .. }) = out.pop() else {
            panic!("{out:?}")
        };
        assert_eq!((e.len(), &e[..6]), (256, "ERR é"), "bounded, lossy");
        let attr = b"|1\r\n+a\r\n+b\r\n!4\r\nOOPS\r\n*1\r\n!1\r\nX\r\n";
        let ev = push(&mut c, R, attr);
        assert_eq!(ev, "E675-697[OOPS] R697-708", "after an attribute; nested");
        assert_eq!(feed(&mut c, R, b"!300\r\nBIG", 308), "E708-1016[BIG]");
    }

    #[test]
    fn push_messages_are_skipped() {
        let mut c = RedisConn::new();
        let inval = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"; // 32 bytes
        assert_eq!(push(&mut c, R, inval), "");
        push(&mut c, Q, GET);
        let ev = push(&mut c, R, &[&inval[..], b"$1\r\nv\r\n", inval].concat());
        assert_eq!((ev.as_str(), c.pending_commands()), ("R64-71", 0));
    }

    #[test]
    fn subscribe_becomes_a_tunnel() {
        let mut c = RedisConn::new();
        let sub = [GET, &cmd(&["SUBSCRIBE", "ch"]), GET].concat();
        let ev = push(&mut c, Q, &sub);
        assert_eq!(ev, "C0-24[GET mykey] C24-51[SUBSCRIBE ?]");
        assert!(!c.is_tunnel());
        let confirm = b"$1\r\nv\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(push(&mut c, R, confirm), "R0-7");
        assert!(c.is_tunnel());
        let ev = push(&mut c, Q, GET) + &push(&mut c, R, b"+OK\r\n");
        assert_eq!(ev, "");
        let mut c = RedisConn::new();
        assert_eq!(push(&mut c, Q, b"monitor\r\nPING\r\n"), "C0-9[MONITOR]");
        assert!(c.is_tunnel());
    }

    #[test]
    fn command_fields_and_sanitized_text() {
        let (name, key, sanitized) = ("SET".into(), Some("mykey".into()), "SET mykey ?".into());
        let want = RedisCommand {
            name,
            key,
            args: 2,
            sanitized,
        };
        assert_eq!(parsed(SET), want);
        let cases = [
            (cmd(&["mset", "k1", "v1", "k2", "v2"]), "MSET k1 ? ? ?"),
            (cmd(&["CONFIG", "get", "maxmemory"]), "CONFIG GET ?"),
            (cmd(&["client", "setname", "a b"]), "CLIENT SETNAME ?"),
            (cmd(&["OBJECT", "a b", "k"]), "OBJECT ? ?"),
            (cmd(&["AUTH", "user", "secret"]), "AUTH ? ?"),
            (cmd(&["PING"]), "PING"),
            (cmd(&["GET"]), "GET"),
            (b"  set foo  bar\r\n".to_vec(), "SET foo ?"),
            (b"Json.Get doc $.a\n".to_vec(), "JSON.GET doc ?"),
        ];
        for (data, want) in cases {
            assert_eq!(parsed(&data).sanitized, want);
        }
        let cfg = parsed(&cmd(&["CONFIG", "GET", "x"]));
        assert_eq!((cfg.name.as_str(), cfg.key, cfg.args), ("CONFIG", None, 2));
        let long_key = "k".repeat(200);
        let c = parsed(&cmd(&["HGET", &long_key, "f"]));
        assert_eq!(c.key.as_deref(), Some(&long_key[..MAX_KEY]));
        assert_eq!(c.sanitized.len(), 4 + 1 + MAX_KEY + 2);
        let many: Vec<&str> = std::iter::once("DEL").chain(["x"; 500]).collect();
        let c = parsed(&cmd(&many));
        assert_eq!((c.args, c.sanitized.len()), (500, MAX_SANITIZED));
        let bin = parsed(b"*2\r\n$3\r\nGET\r\n$2\r\n\xff\x00\r\n");
        assert_eq!(bin.key.as_deref(), Some("\u{fffd}\0"));
        let ev = push(&mut RedisConn::new(), Q, b"\r\n*0\r\n*-1\r\n");
        assert_eq!(ev, "", "ignored");
    }

    #[test]
    fn malformed_input_desyncs_then_recovers() {
        let tls: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let cases: [(Dir, &[u8]); 7] = [
            (Q, tls),
            (R, tls),
            (Q, b"GET\x00 k\r\n"),
            (Q, b"*2\r\n$3\r\nGET\r\n:1\r\n"),
            (Q, b"*1\r\n$3\r\nGETX\r\n"),
            (R, b"HTTP/1.1 200 OK\r\n"),
            (R, b"+OK\n"),
        ];
        for (dir, bad) in cases {
            let mut c = RedisConn::new();
            push(&mut c, Q, b"PING\r\n");
            let ev = push(&mut c, dir, bad);
            let want = ["Dq@", "Dr@"][dir as usize];
            assert!(ev.starts_with(want), "{bad:?}: {ev}");
            assert_eq!(push(&mut c, dir, b"+OK"), "", "no resync on junk");
            let ev = push(&mut c, dir, [GET, b"+OK\r\n"][dir as usize]);
            assert!(ev.starts_with(["C", ""][dir as usize]), "{bad:?}: {ev}");
        }
        let mut big = b"+".to_vec();
        big.resize(MAX_LINE + 10, b'a');
        let mut c = RedisConn::new();
        let ev = show(&split(&mut c, R, &big, &[1000; 100]));
        assert_eq!(ev, "Dr@0", "too long");
        assert!(c.resp.buf.capacity() <= 2 * MAX_LINE);
        big[MAX_LINE - 2..MAX_LINE].copy_from_slice(b"\r\n");
        assert_eq!(show(&split(&mut c, R, &big[..MAX_LINE], &[1000; 100])), "");
        let mut c = RedisConn::new();
        for _ in 0..MAX_PENDING + 10 {
            push(&mut c, Q, b"PING\r\n");
        }
        assert_eq!(c.pending_commands(), MAX_PENDING);
    }

    #[test]
    fn looks_like_checks() {
        let yes = "*1\r\n$4\r\nPING|*12\r\n$|PING\r\n|get k\r\n|Ping\n|CONFIG GET x";
        for s in yes.split('|') {
            assert!(looks_like_command(s.as_bytes()), "{s:?}");
        }
        let no = "*\r\n$|*1\r\n|*x\r\n$|PINGX\r\n|GET / HTTP/1.1\r\n|PING|+OK\r\n|\r\n";
        for s in no.split('|') {
            assert!(!looks_like_command(s.as_bytes()), "{s:?}");
        }
        for s in ["-ERR x\r\n", "$5\r\nhe", "*2\r\n"].iter().chain(&REPLIES) {
            assert!(looks_like_reply(s.as_bytes()), "{s:?}");
        }
        let no = "+OK|+OK\n|;3\r\n|.\r\n|HTTP/1.1 200 OK\r\n|$x\r\n|*-2\r\n|:\r\n|";
        for s in no.split('|') {
            assert!(!looks_like_reply(s.as_bytes()), "{s:?}");
        }
    }

    fn exchange(req_sizes: &[usize], resp_sizes: &[usize]) -> Vec<E> {
        let mut c = RedisConn::new();
        let (hset, big) = (
            cmd(&["HSET", "h", "f", "v"]),
            cmd(&["SET", "big", &"x".repeat(300)]),
        );
        let pings = b"PING\r\n".repeat(14);
        let cmds = [
            SET,
            GET,
            b"PING\r\n",
            b"\r\n",
            &hset,
            &big,
            b"exists a b\r\n",
            &pings,
        ]
        .concat();
        let mut ev = split(&mut c, Q, &cmds, req_sizes);
        ev.extend(split(&mut c, R, REPLIES.concat().as_bytes(), resp_sizes));
        c.close(&mut ev);
        ev
    }

    #[test]
    fn random_splits_give_the_same_events_as_whole() {
        let all = show(&exchange(&[], &[]));
        let q = "C0-35[SET mykey ?] C35-59[GET mykey] C59-65[PING] C67-102[HSET h ? ?] \
            C102-432[SET big ?] C432-444[EXISTS a ?]";
        let pings: String = (0..14)
            .map(|i| format!(" C{}-{}[PING]", 444 + 6 * i, 450 + 6 * i))
            .collect();
        assert_eq!(all, format!("{q}{pings} {}", expected_replies()));
        let whole = exchange(&[], &[]);
        for i in 1..600 {
            assert_eq!(exchange(&[i], &[i]), whole, "split at {i}");
        }
        assert_eq!(exchange(&[1; 600], &[1; 600]), whole, "one byte at a time");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1000 {
            let sizes = rng.sizes([2, 5, 40, 400], 600);
            assert_eq!(exchange(&sizes, &sizes[rng.below(100)..]), whole);
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let bits = b"*2\r\n^$3\r\n^GET\r\n^PING\r\n^+OK\r\n^-ERR x\r\n^:1\r\n^$-1\r\n^*-1\r\n^%1\r\n\
            ^|1\r\n^>2\r\n^*?\r\n^.\r\n^$?\r\n^;2\r\n^;0\r\n^!3\r\n^_\r\n^\r\n^\xff\x00^SUBSCRIBE c\r\n\
            ^$99999999999999999999\r\n^*4294967296\r\n^=5\r\n^*1\r\n$4\r\nPING\r\n";
        let bits: Vec<&[u8]> = bits.split(|&b| b == b'^').collect();
        let mut rng = Rng(42);
        for round in 0..3000 {
            let (mut c, mut out, mut last) = (RedisConn::new(), Vec::new(), [0; 2]);
            for _ in 0..rng.below(40) {
                let mut data = rng.garbage(&bits, 8, 5, 64, false);
                if round % 7 == 0 && rng.below(3) == 0 {
                    data.resize(data.len() + MAX_LINE, b'x');
                }
                let len = rng.len(data.len(), 4, 100_000);
                c.push([Q, R][rng.below(2)], &data, len, &mut out);
                for ev in out.drain(..) {
                    let (dir, start, end) = match ev {
                        E::Command { start, end, .. } => (Q, start, end),
                        E::Reply { start, end, .. } => (R, start, end),
                        E::Desync { dir, offset } => (dir, offset, offset),
                    };
                    let last = &mut last[dir as usize]; // offsets never go back
                    assert!(
                        *last <= start && start <= end,
                        "{dir:?} {start}-{end} {last}"
                    );
                    *last = end;
                }
                assert!(c.req.buf.len() < MAX_LINE && c.resp.buf.len() < MAX_LINE);
                assert!(c.req.stack.len() <= MAX_DEPTH && c.resp.stack.len() <= MAX_DEPTH);
                assert!(c.pending_commands() <= MAX_PENDING);
            }
            c.close(&mut out);
        }
    }
}
