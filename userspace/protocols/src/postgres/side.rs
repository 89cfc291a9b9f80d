//! One direction of the connection: message framing, the body window, resynchronisation.

use crate::Dir;

use crate::dbconn::db_side;

use super::*;

/// Most bytes of a message's body kept for parsing (a Parse: name + query).
pub const MAX_WINDOW: usize = MAX_QUERY + 256;
/// Largest message accepted (PostgreSQL's own limit is 1 GiB).
pub(super) const MAX_LEN: u64 = 0x4000_0000;
pub(super) const FRONTEND: &[u8] = b"QPBESDCHXFdcfp";
pub(super) const BACKEND: &[u8] = b"RSKZCDTEN123nstIAGHWdcVv";

pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Is a typed message header (`typ`, `len` counting itself) acceptable from `dir`?
pub(super) fn header_ok(dir: Dir, typ: u8, len: u64) -> bool {
    let min = match dir {
        Dir::Request => match typ {
            b'S' | b'H' | b'X' | b'c' => return len == 4,
            b'Q' | b'f' | b'p' => 5,
            b'D' | b'C' => 6,
            b'P' => 8,
            b'E' => 9,
            b'B' => 12,
            _ => 4,
        },
        Dir::Response => match typ {
            b'1' | b'2' | b'3' | b'n' | b's' | b'I' | b'c' => return len == 4,
            b'Z' => return len == 5,
            b'E' | b'N' | b'C' => 5,
            b'D' | b'T' | b'S' => 6,
            b'G' | b'H' | b'W' => 7,
            b'K' | b'R' => 8,
            _ => 4,
        },
    };
    let types = [FRONTEND, BACKEND][dir as usize];
    types.contains(&typ) && (min..=MAX_LEN).contains(&len)
}

/// Does `data` start with a plausible typed message from `dir`, followed (as far as `data`
/// goes) by more of them?
pub(super) fn plausible(dir: Dir, data: &[u8]) -> bool {
    let mut rest = data;
    while rest.len() >= 5 {
        let (typ, len) = (rest[0], u64::from(be32(&rest[1..])));
        if !header_ok(dir, typ, len) {
            return false;
        }
        let Some(msg) = usize::try_from(len + 1).ok().and_then(|n| rest.get(..n)) else {
            return true; // runs past the chunk
        };
        let ok = match (dir, typ) {
            (Dir::Request, b'Q') | (Dir::Response, b'C') => msg.ends_with(&[0]),
            (Dir::Response, b'Z') => matches!(msg[5], b'I' | b'T' | b'E'),
            _ => true,
        };
        if !ok {
            return false;
        }
        rest = &rest[msg.len()..];
    }
    rest.len() < data.len()
}

/// A StartupMessage or SSL/GSS encryption request from the first bytes of a connection.
pub fn looks_like_startup(data: &[u8]) -> bool {
    if data.len() < 8 {
        return false;
    }
    let (len, code) = (be32(data), be32(&data[4..]));
    match code {
        SSL_REQUEST | GSS_REQUEST => len == 8,
        _ => code >> 16 == 3 && (9..=10_000).contains(&len),
    }
}

/// A Query, Parse or Bind message with a sane length (and what follows it in `data` is
/// plausible too): for connections attached mid-stream.
pub fn looks_like_query(data: &[u8]) -> bool {
    matches!(data.first(), Some(b'Q' | b'P' | b'B')) && plausible(Dir::Request, data)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum State {
    /// Expecting a message header; `hdr_len` bytes of it are in `hdr`.
    #[default]
    Header,
    /// Collecting the message's window (its first `keep` body bytes).
    Window,
    /// Skipping the rest of the body: `left` bytes.
    Skip,
    /// Lost framing: skip chunks until one starts with a plausible message.
    Desync,
}

/// What a side needs of the rest: its direction, the shared state, the Response stream's
/// offset, the events.
pub(super) type Cx<'a> = (Dir, &'a mut Shared, u64, &'a mut Vec<PgEvent>);

/// A message: its type (0: untyped startup message), the window `w` of its body (`cut`
/// if the body goes on), its offsets.
pub(super) struct Msg<'w> {
    pub(super) typ: u8,
    pub(super) w: &'w [u8],
    pub(super) cut: bool,
    pub(super) start: u64,
    pub(super) end: u64,
}

/// One direction of the connection.
#[derive(Default)]
pub struct Side {
    /// Stream offset of the next byte to arrive.
    pub(super) offset: u64,
    pub(super) state: State,
    pub(super) hdr: [u8; 5],
    pub(super) hdr_len: usize,
    /// The current message: type (0: untyped startup message), offsets of its first byte
    /// and one past its last, window size, body bytes left.
    pub(super) typ: u8,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) keep: usize,
    pub(super) left: u64,
    /// A window split across chunks (never more than `MAX_WINDOW` bytes).
    pub(super) win: Vec<u8>,
}

impl Side {
    pub(super) fn desync(&mut self, cx: Cx, offset: u64) {
        let (dir, sh, resp, out) = cx;
        match dir {
            Dir::Request => {
                if sh.batch.start.is_some() {
                    sh.sync(offset, resp, out); // its Sync was probably lost
                    sh.flushed = true;
                }
                sh.typed = true;
            }
            Dir::Response => {
                sh.pending.clear();
                sh.answer = Answer::default();
            }
        }
        (self.state, self.hdr_len) = (State::Desync, 0);
        self.win.clear();
        out.push(PgEvent::Desync { dir, offset });
    }

    /// Hand the current message, with the window `w` (else the buffered one), to the
    /// protocol logic; desync if it makes no sense.
    pub(super) fn handle(&mut self, cx: Cx, w: Option<&[u8]>) -> bool {
        let (dir, sh, resp, out) = cx;
        let win = std::mem::take(&mut self.win);
        let w = w.unwrap_or(&win);
        let (typ, cut, start, end) = (self.typ, self.left > 0, self.start, self.end);
        let m = Msg {
            typ,
            w,
            cut,
            start,
            end,
        };
        let ok = match dir {
            Dir::Request => sh.frontend(m, resp, out),
            Dir::Response => sh.backend(m, out),
        };
        self.win = win;
        self.win.clear();
        if !ok {
            self.desync((dir, sh, resp, out), self.start);
        }
        ok
    }

    /// Consume one chunk of `dir`: `data`, then `gap` unknown bytes.
    pub(super) fn feed(&mut self, cx: Cx, data: &[u8], mut gap: u64) {
        let (dir, sh, resp, out) = cx;
        let mut at = self.offset; // stream offset of data[pos], then of the gap's next byte
        self.offset = self.offset.saturating_add(data.len() as u64 + gap);
        if self.state == State::Desync {
            if !plausible(dir, data) {
                return;
            }
            self.state = State::Header;
        }
        let mut pos = 0;
        while !sh.stopped {
            let rest = &data[pos..];
            match self.state {
                State::Desync => return,
                State::Header => {
                    if self.hdr_len == 0 {
                        self.start = at;
                    }
                    let Some(&first) = rest.first() else {
                        if gap > 0 {
                            self.desync((dir, sh, resp, out), self.start); // a header in the gap
                        }
                        return;
                    };
                    let fresh = self.hdr_len == 0;
                    if fresh && dir == Dir::Response && sh.encryption_asked.is_some() {
                        // The one-byte answer to an SSL/GSS request (or an ErrorResponse).
                        let yes = sh.encryption_asked.take() == Some(first);
                        if yes || first == b'N' {
                            (sh.stopped, pos, at) = (yes, pos + 1, at + 1);
                            continue;
                        }
                    }
                    if fresh && dir == Dir::Request && !sh.typed && first != 0 {
                        sh.typed = true; // attached after startup: typed messages
                    }
                    let untyped = dir == Dir::Request && !sh.typed;
                    let size = if untyped { 4 } else { 5 };
                    let take = (size - self.hdr_len).min(rest.len());
                    self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&rest[..take]);
                    (self.hdr_len, pos, at) = (self.hdr_len + take, pos + take, at + take as u64);
                    if self.hdr_len < size {
                        continue;
                    }
                    self.hdr_len = 0;
                    let (typ, len) = match untyped {
                        true => (0, u64::from(be32(&self.hdr))),
                        false => (self.hdr[0], u64::from(be32(&self.hdr[1..]))),
                    };
                    let ok = match untyped {
                        true => (8..=10_000).contains(&len),
                        false => header_ok(dir, typ, len),
                    };
                    if !ok {
                        return self.desync((dir, sh, resp, out), self.start);
                    }
                    let window = match (dir, typ) {
                        (Dir::Request, b'P') => MAX_WINDOW,
                        (Dir::Request, b'Q') => MAX_QUERY,
                        (Dir::Request, 0) => 2048,
                        (Dir::Request, b'B' | b'E' | b'C') | (Dir::Response, b'C') => 256,
                        (Dir::Response, b'E') => 2048,
                        _ => 0,
                    };
                    self.typ = typ;
                    self.end = self.start.saturating_add(size as u64 - 4 + len);
                    self.left = len - 4;
                    self.keep = window.min(self.left as usize);
                    self.state = State::Window;
                }
                State::Window => {
                    let keep = self.keep;
                    let ok = if self.win.is_empty() && rest.len() >= keep {
                        (pos, at, self.left) =
                            (pos + keep, at + keep as u64, self.left - keep as u64);
                        self.handle((dir, sh, resp, out), Some(&rest[..keep]))
                    } else {
                        let take = (keep - self.win.len()).min(rest.len());
                        self.win.extend_from_slice(&rest[..take]);
                        (pos, at, self.left) =
                            (pos + take, at + take as u64, self.left - take as u64);
                        if self.win.len() < keep && gap == 0 {
                            return; // more to come
                        }
                        self.handle((dir, sh, resp, out), None)
                    };
                    if !ok {
                        return;
                    }
                    self.state = State::Skip;
                }
                State::Skip => {
                    let (n, g) = crate::skip(&mut self.left, rest.len(), gap);
                    (pos, at, gap) = (pos + n, at + n as u64 + g, gap - g);
                    if self.left > 0 {
                        return;
                    }
                    self.state = State::Header;
                }
            }
        }
    }
}

db_side!(Side, Shared, PgEvent);
