//! One direction of the connection: packet framing, the payload window, resynchronisation.

use super::*;

/// One direction of the connection.
#[derive(Default)]
pub(super) struct Side {
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
