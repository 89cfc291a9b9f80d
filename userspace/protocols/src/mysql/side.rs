//! One direction of the connection: packet framing, the payload window, resynchronisation.

use crate::Dir;

use crate::dbconn::db_side;

use super::*;

/// Most bytes of a packet's payload kept for parsing (a command's, at the client).
pub const MAX_WINDOW: usize = MAX_QUERY + 64;
pub(super) const SERVER_WINDOW: usize = 1024;
/// Payload length of a packet continued by the next one.
pub(super) const MORE: u64 = 0xFF_FFFF;

/// The server's first packet: protocol 10, a printable version string.
pub fn looks_like_greeting(data: &[u8]) -> bool {
    let Some(p) = data.get(4..) else {
        return false;
    };
    let len = u32::from_le_bytes([data[0], data[1], data[2], 0]);
    let version = p.get(1..).unwrap_or_default().split(|&b| b == 0).next();
    let version = version.filter(|v| (1..64).contains(&v.len()) && v.len() + 1 < p.len());
    (30..=1024).contains(&len)
        && data[3] == 0
        && p.first() == Some(&10)
        && version.is_some_and(|v| v[0].is_ascii_digit() && v.iter().all(u8::is_ascii_graphic))
}

/// A command packet (sequence id 0) with a known command byte and a sane length.
pub fn looks_like_command(data: &[u8]) -> bool {
    let [a, b, c, 0, cmd, ..] = *data else {
        return false;
    };
    let len = u32::from_le_bytes([a, b, c, 0]);
    let textual = match data[5..] {
        [0, 1, ..] | [] => true, // query attributes: no parameters, one set
        [t, ..] => t.is_ascii_graphic() || t.is_ascii_whitespace(),
    };
    match cmd {
        0x03 | 0x16 => len >= 2 && textual,
        0x02 => len >= 2,
        0x17 => len >= 10,
        0x19 | 0x1a => len == 5,
        0x1c => len == 9,
        0x01 | 0x09 | 0x0e | 0x1f => len == 1,
        _ => false,
    }
}

/// The first packet of an answer (sequence id 1): OK, ERR, or a column count followed by
/// a column definition.
pub(super) fn looks_like_answer(data: &[u8]) -> bool {
    let [a, b, c, 1, first, ..] = *data else {
        return false;
    };
    let len = u64::from(u32::from_le_bytes([a, b, c, 0]));
    match first {
        0x00 => (7..MORE).contains(&len),
        0xff => len >= 9 && data.get(7).is_none_or(|&c| c == b'#'),
        1..=0xfa => {
            let def = data.get(5..10);
            len == 1 && def.is_none_or(|d| d[3] == 2 && d[4] == 3)
        }
        _ => false,
    }
}

/// One direction of the connection.
#[derive(Default)]
pub struct Side {
    /// Stream offset of the next byte to arrive.
    pub(super) offset: u64,
    pub(super) state: State,
    pub(super) hdr: [u8; 4],
    pub(super) hdr_len: usize,
    /// Offset of the current packet's first byte, and one past its last.
    pub(super) pkt_start: u64,
    pub(super) end: u64,
    /// The current message: offset of its first byte, its first and last packets'
    /// sequence ids, its payload length so far, and whether a packet continues it.
    pub(super) start: u64,
    pub(super) seq: u8,
    pub(super) last_seq: u8,
    pub(super) plen: u64,
    pub(super) more: bool,
    /// Window size and payload bytes left in the current packet.
    pub(super) keep: usize,
    pub(super) left: u64,
    /// A window split across chunks or kept for a continued message (≤ `MAX_WINDOW`).
    pub(super) win: Vec<u8>,
}

impl Side {
    pub(super) fn desync(
        &mut self,
        dir: Dir,
        sh: &mut Shared,
        offset: u64,
        out: &mut Vec<MySqlEvent>,
    ) {
        if dir == Dir::Response {
            sh.pending.clear();
            sh.answer = Answer::default();
        }
        (self.state, self.hdr_len, self.more) = (State::Desync, 0, false);
        self.win.clear();
        out.push(MySqlEvent::Desync { dir, offset });
    }

    /// Hand the current message, with the window `w` (else the buffered one), to the
    /// protocol logic; desync if it makes no sense.
    pub(super) fn handle(&mut self, cx: Cx, w: Option<&[u8]>) -> bool {
        let (dir, sh, resp, out) = cx;
        let win = std::mem::take(&mut self.win);
        let (seq, last_seq, plen, start, end) =
            (self.seq, self.last_seq, self.plen, self.start, self.end);
        let m = Msg {
            w: w.unwrap_or(&win),
            plen,
            start,
            end,
            seq,
            last_seq,
        };
        let ok = match dir {
            Dir::Request => sh.client(m, resp, out),
            Dir::Response => sh.server(m, out),
        };
        self.win = win;
        self.win.clear();
        if !ok {
            self.desync(dir, sh, start, out);
        }
        ok
    }

    /// Consume one chunk of `dir`: `data`, then `gap` unknown bytes.
    pub(super) fn feed(&mut self, cx: Cx, data: &[u8], mut gap: u64) {
        let (dir, sh, resp, out) = cx;
        let mut at = self.offset; // stream offset of data[pos], then of the gap's next byte
        self.offset = self.offset.saturating_add(data.len() as u64 + gap);
        if self.state == State::Desync {
            let fresh = match dir {
                Dir::Request => looks_like_command(data),
                Dir::Response => looks_like_answer(data),
            };
            if !fresh {
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
                        self.pkt_start = at;
                    }
                    if rest.is_empty() {
                        if gap > 0 {
                            self.desync(dir, sh, self.pkt_start, out); // a header in the gap
                        }
                        return;
                    }
                    let take = (4 - self.hdr_len).min(rest.len());
                    self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&rest[..take]);
                    (self.hdr_len, pos, at) = (self.hdr_len + take, pos + take, at + take as u64);
                    if self.hdr_len < 4 {
                        continue;
                    }
                    self.hdr_len = 0;
                    let [a, b, c, seq] = self.hdr;
                    let len = u64::from(u32::from_le_bytes([a, b, c, 0]));
                    let cont = std::mem::replace(&mut self.more, len == MORE);
                    if cont && seq != self.last_seq.wrapping_add(1) {
                        return self.desync(dir, sh, self.pkt_start, out);
                    }
                    let end = self.pkt_start.saturating_add(4 + len);
                    (self.end, self.left, self.last_seq) = (end, len, seq);
                    if cont {
                        self.plen += len;
                        self.state = State::Skip;
                        if !self.more && !self.handle((dir, sh, resp, out), None) {
                            return;
                        }
                        continue;
                    }
                    let window = [MAX_WINDOW, SERVER_WINDOW][dir as usize];
                    (self.start, self.seq, self.plen) = (self.pkt_start, seq, len);
                    self.keep = window.min(len as usize);
                    self.win.clear();
                    self.state = State::Window;
                }
                State::Window => {
                    let keep = self.keep;
                    let ok = if !self.more && self.win.is_empty() && rest.len() >= keep {
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
                        // A continued message is handled with its last packet.
                        self.more || self.handle((dir, sh, resp, out), None)
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

/// What a side needs of the rest: its direction, the shared state, the Response stream's
/// offset, the events.
pub(super) type Cx<'a> = (Dir, &'a mut Shared, u64, &'a mut Vec<MySqlEvent>);

db_side!(Side, Shared, MySqlEvent);
