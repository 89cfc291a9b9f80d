//! Framing: the per-direction frame reader ([`Framer`]) and the connection state that frames
//! act on ([`Conn`]).

use crate::Dir;

use super::*;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest header block (HEADERS/PUSH_PROMISE + CONTINUATION fragments) decoded.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

pub(super) const FRAME_HEADER: usize = 9;
/// SETTINGS bytes read from one frame (more parameters are ignored).
pub(super) const MAX_SETTINGS: usize = 6 * 64;
/// Largest frame length [`looks_like_frames`] (and resync) believe in when no
/// SETTINGS_MAX_FRAME_SIZE is known.
pub(super) const PLAUSIBLE_FRAME: u32 = 1 << 20;

pub(super) const DATA: u8 = 0;
pub(super) const HEADERS: u8 = 1;
pub(super) const PRIORITY: u8 = 2;
pub(super) const RST_STREAM: u8 = 3;
pub(super) const SETTINGS: u8 = 4;
pub(super) const PUSH_PROMISE: u8 = 5;
pub(super) const PING: u8 = 6;
pub(super) const GOAWAY: u8 = 7;
pub(super) const WINDOW_UPDATE: u8 = 8;
pub(super) const CONTINUATION: u8 = 9;

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY_FLAG: u8 = 0x20;

pub(super) const SETTINGS_HEADER_TABLE_SIZE: u16 = 1;
pub(super) const SETTINGS_MAX_FRAME_SIZE: u16 = 5;

/// Whether `data` starts with the client preface (or, when shorter, is a prefix of it of at
/// least 4 bytes: `PRI `).
pub fn looks_like_preface(data: &[u8]) -> bool {
    match data.len() {
        0..4 => false,
        n if n < PREFACE.len() => PREFACE.starts_with(data),
        _ => data.starts_with(PREFACE),
    }
}

/// Whether `data` starts with a plausible chain of frame headers, for attaching to a
/// connection mid-stream: every frame header wholly inside `data` (following lengths) has a
/// known type (0..=9), a clear reserved bit, a length below 1 MiB, and the stream id / length
/// that its type requires (e.g. SETTINGS on stream 0 with a length multiple of 6). ASCII text
/// and TLS records never pass (their first bytes read as a length of over 1 MiB).
pub fn looks_like_frames(data: &[u8]) -> bool {
    frames_plausible(data, PLAUSIBLE_FRAME)
}

fn frames_plausible(data: &[u8], max_len: u32) -> bool {
    let (mut p, mut n) = (0usize, 0);
    while let Some(b) = data.get(p..p.saturating_add(FRAME_HEADER)) {
        let h = FrameHeader::parse(b);
        if h.reserved || h.ty > CONTINUATION || !h.valid(max_len) {
            return false;
        }
        n += 1;
        p = p.saturating_add(FRAME_HEADER + h.len as usize);
    }
    n > 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameHeader {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
    reserved: bool,
}

impl FrameHeader {
    /// `b` has at least 9 bytes.
    fn parse(b: &[u8]) -> Self {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
            reserved: b[5] & 0x80 != 0,
        }
    }

    /// The stream id and length rules of RFC 9113 §6 for known types, and `len <= max_len`.
    fn valid(&self, max_len: u32) -> bool {
        let (len, s) = (self.len, self.stream);
        let ok = match self.ty {
            DATA | HEADERS | CONTINUATION | PUSH_PROMISE => s != 0,
            PRIORITY => s != 0 && len == 5,
            RST_STREAM => s != 0 && len == 4,
            SETTINGS => s == 0 && len % 6 == 0 && (self.flags & ACK == 0 || len == 0),
            PING => s == 0 && len == 8,
            GOAWAY => s == 0 && len >= 8,
            WINDOW_UPDATE => len == 4,
            _ => true, // extension frames are skipped
        };
        ok && len <= max_len
    }
}

/// An open header block (HEADERS or PUSH_PROMISE, awaiting CONTINUATION).
#[derive(Clone, Copy)]
pub(super) struct Block {
    pub(super) stream: u32,
    /// Offsets of its first frame and one past its last frame so far.
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) end_stream: bool,
    pub(super) promise: bool,
    /// A fragment was lost (gap, oversize, malformed padding): not decodable.
    pub(super) broken: bool,
}

/// Connection state that frames of both directions act on.
pub(super) struct Conn {
    /// Decoders of the blocks sent in each direction (indexed by `Dir as usize`).
    pub(super) hpack: [Hpack; 2],
    pub(super) block: [Option<Block>; 2],
    /// Fragments of the open block, when it spans frames.
    pub(super) block_buf: [Vec<u8>; 2],
    /// Largest frame the receiver of each direction accepts, when it said so.
    pub(super) max_frame: [Option<u32>; 2],
    pub(super) streams: Streams,
}

/// The header block fragment of a HEADERS / PUSH_PROMISE payload (padding, priority and
/// promised stream id removed); `None` if the payload is incomplete or malformed.
pub(super) fn fragment<'a>(h: &FrameHeader, payload: &'a [u8], gapped: bool) -> Option<&'a [u8]> {
    if gapped || payload.len() != h.len as usize {
        return None;
    }
    let mut p = payload;
    let mut pad = 0;
    if h.flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        (pad, p) = (usize::from(n), rest);
    }
    if h.ty == HEADERS && h.flags & PRIORITY_FLAG != 0 {
        p = p.get(5..)?;
    }
    if h.ty == PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

pub(super) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Conn {
    /// Payload bytes of frame `h` to collect (the rest is skipped).
    pub(super) fn want(h: &FrameHeader) -> usize {
        let len = h.len as usize;
        match h.ty {
            HEADERS | PUSH_PROMISE | CONTINUATION if len <= MAX_HEADER_BLOCK => len,
            RST_STREAM => len.min(4),
            GOAWAY => len.min(8),
            SETTINGS => len.min(MAX_SETTINGS),
            _ => 0,
        }
    }

    /// Framing was lost in `dir`.
    pub(super) fn lost(&mut self, dir: Dir) {
        let d = dir as usize;
        self.hpack[d].lose();
        self.block[d] = None;
        crate::empty(&mut self.block_buf[d]);
    }

    /// The frame `h` occupying `[start, end)` in `dir` was read; `payload` holds its first
    /// [`Self::want`] bytes, or fewer when `gapped` (a capture gap hid some of them).
    pub(super) fn frame(
        &mut self,
        dir: Dir,
        h: &FrameHeader,
        payload: &[u8],
        gapped: bool,
        (start, end): (u64, u64),
        out: &mut Vec<H2Event>,
    ) {
        let d = dir as usize;
        if let Some(b) = self.block[d]
            && (h.ty != CONTINUATION || h.stream != b.stream)
        {
            // A header block cut short by another frame (a protocol error): lost.
            self.end_block(dir, None, out);
        }
        match h.ty {
            DATA if dir == Dir::Response && h.flags & END_STREAM != 0 => {
                self.streams.finish(h.stream, start, end, out);
            }
            HEADERS | PUSH_PROMISE => {
                let frag = fragment(h, payload, gapped);
                self.block[d] = Some(Block {
                    stream: h.stream,
                    start,
                    end,
                    end_stream: h.ty == HEADERS && h.flags & END_STREAM != 0,
                    promise: h.ty == PUSH_PROMISE,
                    broken: frag.is_none(),
                });
                if h.flags & END_HEADERS != 0 {
                    return self.end_block(dir, frag, out); // decoded in place
                }
                self.block_buf[d].clear();
                self.block_buf[d].extend_from_slice(frag.unwrap_or_default());
            }
            CONTINUATION => {
                let Some(b) = &mut self.block[d] else {
                    // The start of this block was missed: the table may have changed.
                    return self.hpack[d].lose();
                };
                b.end = end;
                let buf = &mut self.block_buf[d];
                let fits = buf.len() + payload.len() <= MAX_HEADER_BLOCK;
                if gapped || payload.len() != h.len as usize || !fits {
                    b.broken = true;
                }
                match b.broken {
                    true => crate::empty(buf),
                    false => buf.extend_from_slice(payload),
                }
                if h.flags & END_HEADERS != 0 {
                    let (broken, buf) = (b.broken, std::mem::take(&mut self.block_buf[d]));
                    self.end_block(dir, (!broken).then_some(&buf[..]), out);
                    self.block_buf[d] = buf;
                    crate::empty(&mut self.block_buf[d]);
                }
            }
            RST_STREAM => {
                let code = match payload.len() == 4 && !gapped {
                    true => be32(payload),
                    false => UNKNOWN_ERROR,
                };
                self.streams.reset(h.stream, dir, end, code, out);
            }
            SETTINGS if h.flags & ACK == 0 => {
                let peer = 1 - d; // settings govern what this endpoint receives
                for p in payload.chunks_exact(6) {
                    let value = be32(&p[2..]);
                    match u16::from_be_bytes([p[0], p[1]]) {
                        SETTINGS_HEADER_TABLE_SIZE => {
                            let limit = usize::try_from(value).unwrap_or(usize::MAX);
                            self.hpack[peer].set_limit(limit.min(MAX_TABLE_SIZE));
                        }
                        SETTINGS_MAX_FRAME_SIZE if (1 << 14..1 << 24).contains(&value) => {
                            self.max_frame[peer] = Some(value);
                        }
                        _ => {}
                    }
                }
                if gapped {
                    self.max_frame[1 - d] = None; // may have changed unseen
                }
            }
            // A client's GOAWAY concerns server-initiated streams, which are not tracked.
            GOAWAY if dir == Dir::Response && payload.len() >= 8 && !gapped => {
                let last = be32(payload) & 0x7fff_ffff;
                self.streams
                    .reset_above(last, end, be32(&payload[4..]), out);
            }
            _ => {}
        }
    }

    /// The open block of `dir` is complete (`bytes` = its fragments) or lost (`None`).
    pub(super) fn end_block(&mut self, dir: Dir, bytes: Option<&[u8]>, out: &mut Vec<H2Event>) {
        let d = dir as usize;
        let Some(b) = self.block[d].take() else {
            return;
        };
        let mut f = Fields::default();
        let decoded = match bytes {
            Some(bytes) if !b.broken => {
                self.hpack[d].decode(bytes, &mut |n, v| f.field(n, v)) == Decoded::Ok
            }
            _ => {
                self.hpack[d].lose();
                false
            }
        };
        if b.promise || b.stream % 2 == 0 {
            return; // server push: only HPACK state matters
        }
        let f = decoded.then_some(f);
        match dir {
            Dir::Request => self.streams.request(b.stream, b.start, f, out),
            Dir::Response => {
                let span = (b.start, b.end);
                self.streams.response(b.stream, span, b.end_stream, f, out);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Matched this many bytes of the client preface.
    Preface(usize),
    /// Reading a frame header: this many bytes of it are in `Framer::head`.
    Head(usize),
    /// Inside frame `h`'s payload: `collect` more bytes to keep, then `skip` to pass over.
    Payload {
        h: FrameHeader,
        collect: usize,
        skip: u64,
        gapped: bool,
    },
    /// Lost framing: skip chunks until one starts like frames.
    Desync,
}

/// One direction's framing.
pub(super) struct Framer {
    pub(super) dir: Dir,
    /// Stream offset of the next byte to arrive.
    pub(super) offset: u64,
    pub(super) state: State,
    pub(super) head: [u8; FRAME_HEADER],
    /// The collected part of a frame's payload, when it spans chunks.
    pub(super) buf: Vec<u8>,
    /// Offset of the current frame (or of the preface).
    pub(super) start: u64,
    /// The next frame header is the first since the start or a resync: it must also pass the
    /// checks of [`looks_like_frames`].
    pub(super) strict: bool,
}

impl Framer {
    pub(super) fn new(dir: Dir) -> Self {
        let state = match dir {
            Dir::Request => State::Preface(0),
            Dir::Response => State::Head(0),
        };
        Framer {
            dir,
            offset: 0,
            state,
            head: [0; FRAME_HEADER],
            buf: Vec::new(),
            start: 0,
            strict: true,
        }
    }

    pub(super) fn desync(&mut self, conn: &mut Conn, out: &mut Vec<H2Event>) {
        self.state = State::Desync;
        crate::empty(&mut self.buf);
        conn.lost(self.dir);
        let (dir, offset) = (self.dir, self.start);
        out.push(H2Event::Desync { dir, offset });
    }

    /// Consume one chunk: `data`, then `gap` unknown bytes.
    pub(super) fn feed(
        &mut self,
        conn: &mut Conn,
        data: &[u8],
        mut gap: u64,
        out: &mut Vec<H2Event>,
    ) {
        let d = self.dir as usize;
        let mut at = self.offset; // stream offset of data[pos], then of the gap's next byte
        self.offset += data.len() as u64 + gap;
        if self.state == State::Desync {
            let max = conn.max_frame[d].unwrap_or(PLAUSIBLE_FRAME);
            self.state = match self.dir {
                Dir::Request if data.starts_with(PREFACE) => State::Preface(0),
                _ if frames_plausible(data, max) => State::Head(0),
                _ => return,
            };
            self.start = at;
            self.strict = true;
        }
        let mut pos = 0usize;
        loop {
            let rest = &data[pos..];
            match self.state {
                State::Desync => return,
                State::Preface(_) | State::Head(_) if rest.is_empty() => {
                    if gap > 0 {
                        self.desync(conn, out);
                    }
                    return;
                }
                State::Preface(n) => {
                    let m = rest.len().min(PREFACE.len() - n);
                    if rest[..m] == PREFACE[n..n + m] {
                        pos += m;
                        at += m as u64;
                        self.state = match n + m {
                            24 => State::Head(0),
                            n => State::Preface(n),
                        };
                        if n + m == PREFACE.len() {
                            self.start = at;
                        }
                    } else if n == 0 {
                        self.state = State::Head(0); // no preface: attached mid-connection
                    } else {
                        return self.desync(conn, out);
                    }
                }
                State::Head(have) => {
                    let take = rest.len().min(FRAME_HEADER - have);
                    self.head[have..have + take].copy_from_slice(&rest[..take]);
                    pos += take;
                    at += take as u64;
                    if have + take < FRAME_HEADER {
                        self.state = State::Head(have + take);
                        continue;
                    }
                    let h = FrameHeader::parse(&self.head);
                    let max = match (conn.max_frame[d], self.strict) {
                        (Some(max), _) => max,
                        (None, true) => PLAUSIBLE_FRAME,
                        (None, false) => u32::MAX,
                    };
                    let odd = self.strict && (h.reserved || h.ty > CONTINUATION);
                    if odd || !h.valid(max) {
                        return self.desync(conn, out);
                    }
                    self.strict = false;
                    let (len, collect) = (h.len as usize, Conn::want(&h));
                    let body = &data[pos..];
                    if body.len() >= len {
                        // Fast path: the whole frame is in this chunk.
                        pos += len;
                        at += len as u64;
                        conn.frame(self.dir, &h, &body[..collect], false, (self.start, at), out);
                        self.state = State::Head(0);
                        self.start = at;
                        continue;
                    }
                    self.buf.clear();
                    let skip = (len - collect) as u64;
                    let gapped = false;
                    self.state = State::Payload {
                        h,
                        collect,
                        skip,
                        gapped,
                    };
                }
                State::Payload {
                    h,
                    mut collect,
                    mut skip,
                    mut gapped,
                } => {
                    // Bytes from the chunk, else from the gap (a gap inside a payload is fine).
                    let (n, from_gap) = match rest.len() {
                        0 => (gap.min(collect as u64 + skip), true),
                        r => ((r as u64).min(collect as u64 + skip), false),
                    };
                    if n == 0 {
                        return; // wait for more
                    }
                    let c = (n as usize).min(collect);
                    if from_gap {
                        gap -= n;
                        gapped |= c > 0;
                    } else {
                        self.buf.extend_from_slice(&rest[..c]);
                        pos += n as usize;
                    }
                    (collect, skip) = (collect - c, skip - (n - c as u64));
                    at += n;
                    if collect > 0 || skip > 0 {
                        self.state = State::Payload {
                            h,
                            collect,
                            skip,
                            gapped,
                        };
                        continue;
                    }
                    let buf = std::mem::take(&mut self.buf);
                    conn.frame(self.dir, &h, &buf, gapped, (self.start, at), out);
                    self.buf = buf;
                    crate::empty(&mut self.buf);
                    self.state = State::Head(0);
                    self.start = at;
                }
            }
        }
    }
}
