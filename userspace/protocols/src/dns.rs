//! DNS message heads, over UDP (one datagram per syscall) and over TCP (2-byte length framing).
//!
//! This module owns ztrace's DNS parsing: [`parse_message`] reads a message's header and first
//! question from the captured head of a datagram (or of a TCP-framed message), [`looks_like_query`]
//! tells whether a socket's first bytes are a DNS query, [`qtype_name`] / [`rcode_name`] name the
//! numbers, and [`DnsTcpConn`] follows the length-prefixed framing of DNS over TCP (RFC 1035
//! §4.2.2, RFC 7766) in both directions of one connection.
//!
//! Only the header and the first question are read: answers, authority and additional records
//! (EDNS OPT included) are never parsed, so the rcode is the header's 4-bit one. Pairing a query
//! with its response (by id and question) is the caller's job.
//!
//! Pure: no I/O, no clocks, no globals; never panics; memory bounded (at most
//! [`MAX_TCP_HEAD`] buffered bytes per TCP direction).

use std::borrow::Cow;

use crate::Dir;
use crate::exchange::{DnsExchange, Exchange};
use crate::parser::{Opener, Parser, Protocol, Step, Transport, Update};

/// Size of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest domain name on the wire (RFC 1035 §2.3.4), length octets included.
pub const MAX_NAME: usize = 255;
/// Bytes of a TCP-framed message kept to parse its header and first question.
pub const MAX_TCP_HEAD: usize = 512;

/// The header and first question of a DNS message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DnsMessage {
    pub id: u16,
    /// QR bit.
    pub is_response: bool,
    /// 0 QUERY, 1 IQUERY, 2 STATUS, 4 NOTIFY, 5 UPDATE, 6 DSO.
    pub opcode: u8,
    /// The header's 4-bit RCODE (EDNS extended bits are not read).
    pub rcode: u8,
    /// Name and type of the first question. The name is in presentation form: lower-case, no
    /// trailing dot (the root is ""), with `.`, `\` and `"` inside labels escaped by a backslash,
    /// tab/CR/LF as `\t` `\r` `\n` and other bytes outside 0x20..=0x7e as `\DDD`. Its wire form is
    /// at most [`MAX_NAME`] octets (so the text is ≤ 253 bytes unless escapes were needed).
    /// `None` when the message has no question or the captured head ends inside it.
    pub question: Option<(String, u16)>,
    /// ANCOUNT.
    pub answers: u16,
    /// TC bit.
    pub truncated: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Why a name could not be read.
enum NameErr {
    /// The data ended inside it (a truncated capture).
    Short,
    /// Not a valid name: reserved label type, forward/looping pointer, longer than [`MAX_NAME`].
    Bad,
}

/// Append one label byte to `out` in presentation form.
fn push_label_byte(out: &mut String, b: u8) {
    match b {
        b'.' | b'\\' | b'"' => {
            out.push('\\');
            out.push(b as char);
        }
        b'\t' => out.push_str("\\t"),
        b'\r' => out.push_str("\\r"),
        b'\n' => out.push_str("\\n"),
        0x20..=0x7e => out.push(b.to_ascii_lowercase() as char),
        _ => {
            out.push('\\');
            for d in [b / 100, b / 10 % 10, b % 10] {
                out.push((b'0' + d) as char);
            }
        }
    }
}

/// Read the (possibly compressed) name at `msg[pos..]`. Returns it and the offset just past
/// it in `msg` (past the first pointer, if any). Loop-safe: every pointer must point strictly
/// before all bytes of the name seen so far.
fn read_name(msg: &[u8], pos: usize) -> Result<(String, usize), NameErr> {
    let mut out = String::new();
    let (mut p, mut lowest, mut after, mut wire) = (pos, pos, None, 1usize);
    loop {
        let b = *msg.get(p).ok_or(NameErr::Short)?;
        match b >> 6 {
            0 if b == 0 => return Ok((out, after.unwrap_or(p + 1))),
            0 => {
                let l = usize::from(b);
                wire += l + 1;
                if wire > MAX_NAME {
                    return Err(NameErr::Bad);
                }
                let label = msg.get(p + 1..p + 1 + l).ok_or(NameErr::Short)?;
                if !out.is_empty() {
                    out.push('.'); // labels are never empty: `out` is empty before the first
                }
                for &c in label {
                    push_label_byte(&mut out, c);
                }
                p += 1 + l;
            }
            3 => {
                let lo = *msg.get(p + 1).ok_or(NameErr::Short)?;
                let target = usize::from(b & 0x3f) << 8 | usize::from(lo);
                if target >= lowest {
                    return Err(NameErr::Bad);
                }
                after.get_or_insert(p + 2);
                (lowest, p) = (target, target);
            }
            _ => return Err(NameErr::Bad), // 0x40 / 0x80: extended / reserved label types
        }
    }
}

/// Parse the header and first question of a DNS message from its captured head. `None` when
/// it is not plausible DNS: shorter than the header, an unassigned opcode or header rcode,
/// Z bit set, more than one question, counts that cannot fit in a message, or a malformed
/// first question (bad label type, bad pointer, name too long, unknown class). A head that ends
/// inside the question gives `question: None`.
pub fn parse_message(data: &[u8]) -> Option<DnsMessage> {
    let h = data.get(..HEADER_LEN)?;
    let flags = be16(h, 2);
    let (qd, an, ns, ar) = (be16(h, 4), be16(h, 6), be16(h, 8), be16(h, 10));
    let opcode = ((flags >> 11) & 0xf) as u8;
    let rcode = (flags & 0xf) as u8;
    let z = flags & 0x0040 != 0;
    // Every record takes at least 11 bytes, and a message at most 65535.
    let records = u32::from(an) + u32::from(ns) + u32::from(ar);
    if !matches!(opcode, 0 | 1 | 2 | 4 | 5 | 6) || rcode > 11 || z || qd > 1 || records > 5_956 {
        return None;
    }
    let mut question = None;
    if qd == 1 {
        match read_name(data, HEADER_LEN) {
            Ok((name, at)) if data.len() >= at + 4 => {
                let class = be16(data, at + 2) & 0x7fff; // mDNS: top bit asks a unicast reply
                if !matches!(class, 1 | 3 | 4 | 254 | 255) {
                    return None;
                }
                question = Some((name, be16(data, at)));
            }
            Ok(_) | Err(NameErr::Short) => {}
            Err(NameErr::Bad) => return None,
        }
    }
    Some(DnsMessage {
        id: be16(h, 0),
        is_response: flags & 0x8000 != 0,
        opcode,
        rcode,
        question,
        answers: an,
        truncated: flags & 0x0200 != 0,
    })
}

/// Quick check on a datagram's (or a TCP message's) first bytes: a standard query (QR = 0,
/// opcode QUERY, TC = 0, RCODE = 0) with exactly one question, wholly present, no answer or
/// authority records and at most two additional ones (EDNS OPT, TSIG).
pub fn looks_like_query(data: &[u8]) -> bool {
    let Some(m) = parse_message(data) else {
        return false;
    };
    let (ns, ar) = (be16(data, 8), be16(data, 10));
    let plain = !m.is_response && m.opcode == 0 && m.rcode == 0 && !m.truncated;
    plain && m.question.is_some() && m.answers == 0 && ns == 0 && ar <= 2
}

/// The mnemonic of a query/record type, or `TYPE<n>` (RFC 3597) for others.
pub fn qtype_name(t: u16) -> Cow<'static, str> {
    Cow::Borrowed(match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        18 => "AFSDB",
        24 => "SIG",
        25 => "KEY",
        28 => "AAAA",
        29 => "LOC",
        33 => "SRV",
        35 => "NAPTR",
        36 => "KX",
        37 => "CERT",
        39 => "DNAME",
        41 => "OPT",
        42 => "APL",
        43 => "DS",
        44 => "SSHFP",
        45 => "IPSECKEY",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        49 => "DHCID",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        52 => "TLSA",
        53 => "SMIMEA",
        55 => "HIP",
        59 => "CDS",
        60 => "CDNSKEY",
        61 => "OPENPGPKEY",
        62 => "CSYNC",
        63 => "ZONEMD",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        108 => "EUI48",
        109 => "EUI64",
        249 => "TKEY",
        250 => "TSIG",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        _ => return Cow::Owned(format!("TYPE{t}")),
    })
}

/// The mnemonic of an RCODE (0..=23; the header carries 0..=15), `UNKNOWN` past that.
pub fn rcode_name(r: u8) -> &'static str {
    const NAMES: [&str; 24] = [
        "NOERROR",
        "FORMERR",
        "SERVFAIL",
        "NXDOMAIN",
        "NOTIMP",
        "REFUSED",
        "YXDOMAIN",
        "YXRRSET",
        "NXRRSET",
        "NOTAUTH",
        "NOTZONE",
        "DSOTYPENI",
        "RCODE12",
        "RCODE13",
        "RCODE14",
        "RCODE15",
        "BADVERS",
        "BADKEY",
        "BADTIME",
        "BADMODE",
        "BADNAME",
        "BADALG",
        "BADTRUNC",
        "BADCOOKIE",
    ];
    NAMES.get(usize::from(r)).copied().unwrap_or("UNKNOWN")
}

/// What [`DnsTcpConn`] found, in stream order within each direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsTcpEvent {
    /// A whole message: `start` = offset of its 2-byte length prefix, `end` = one past its last
    /// byte. `msg` is parsed from the captured head (its question is `None` if that head was cut
    /// by a capture gap).
    Message {
        dir: Dir,
        start: u64,
        end: u64,
        msg: DnsMessage,
    },
    /// Framing was lost in `dir` at `offset` (a length prefix in a capture gap, a length below
    /// the header size, or a message that is not plausible DNS). That direction resynchronises
    /// at the next chunk that starts with a length prefix and a plausible header.
    Desync { dir: Dir, offset: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a length prefix; `Some(hi)` once its first byte arrived.
    Len(Option<u8>),
    /// Inside a message: bytes left, of which the first `head_left` are collected.
    Body {
        left: u64,
        head_left: usize,
    },
    Desync,
}

struct Side {
    dir: Dir,
    offset: u64,
    state: State,
    /// The captured head of the current message (only when it spans chunks).
    buf: Vec<u8>,
    /// Offset of the current message's length prefix.
    start: u64,
    /// A capture gap cut the current message's head.
    gapped: bool,
}

impl Side {
    fn new(dir: Dir) -> Self {
        Side {
            dir,
            offset: 0,
            state: State::Len(None),
            buf: Vec::new(),
            start: 0,
            gapped: false,
        }
    }

    fn desync(&mut self, offset: u64, out: &mut Vec<DnsTcpEvent>) {
        self.state = State::Desync;
        self.buf.clear();
        let dir = self.dir;
        out.push(DnsTcpEvent::Desync { dir, offset });
    }

    /// The message that began at `self.start` ended at `end`; `head` is its captured head.
    fn message(&mut self, head: &[u8], end: u64, out: &mut Vec<DnsTcpEvent>) {
        let (dir, start) = (self.dir, self.start);
        match parse_message(head) {
            Some(msg) => out.push(DnsTcpEvent::Message {
                dir,
                start,
                end,
                msg,
            }),
            None if !self.gapped => return self.desync(start, out),
            None => {} // a head shorter than the header: nothing to report
        }
        self.state = State::Len(None);
    }

    fn feed(&mut self, data: &[u8], mut gap: u64, out: &mut Vec<DnsTcpEvent>) {
        let mut at = self.offset; // stream offset of data[pos]
        self.offset += data.len() as u64 + gap;
        if self.state == State::Desync {
            let fresh = data.len() >= 2 + HEADER_LEN
                && usize::from(be16(data, 0)) >= HEADER_LEN
                && parse_message(&data[2..]).is_some();
            if !fresh {
                return;
            }
            self.state = State::Len(None);
        }
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            match self.state {
                State::Desync => return,
                State::Len(hi) if rest.is_empty() => {
                    if gap > 0 {
                        let start = at - u64::from(hi.is_some());
                        self.desync(start, out);
                    }
                    return;
                }
                State::Len(None) if rest.len() == 1 => {
                    self.state = State::Len(Some(rest[0]));
                    pos += 1;
                    at += 1;
                }
                State::Len(hi) => {
                    let (n, len) = match hi {
                        Some(hi) => (1, u16::from_be_bytes([hi, rest[0]])),
                        None => (2, be16(rest, 0)),
                    };
                    self.start = at - u64::from(hi.is_some());
                    pos += n;
                    at += n as u64;
                    if usize::from(len) < HEADER_LEN {
                        return self.desync(self.start, out);
                    }
                    let head = usize::from(len).min(MAX_TCP_HEAD);
                    let body = &data[pos..];
                    if body.len() >= usize::from(len) {
                        // Fast path: the whole message is in this chunk.
                        self.gapped = false;
                        pos += usize::from(len);
                        at += u64::from(len);
                        self.message(&body[..head], at, out);
                        continue;
                    }
                    self.buf.clear();
                    self.gapped = false;
                    self.state = State::Body {
                        left: u64::from(len),
                        head_left: head,
                    };
                }
                State::Body { left, head_left } => {
                    let mut n = (rest.len() as u64).min(left);
                    let take = (n as usize).min(head_left);
                    self.buf.extend_from_slice(&rest[..take]);
                    pos += n as usize;
                    if pos == data.len() && n < left && gap > 0 {
                        let g = gap.min(left - n); // a gap inside a message is fine
                        gap -= g;
                        n += g;
                        self.gapped |= head_left > take;
                    }
                    at += n;
                    if n == left {
                        let head = std::mem::take(&mut self.buf);
                        self.message(&head, at, out);
                        self.buf = head;
                        self.buf.clear();
                    } else {
                        self.state = State::Body {
                            left: left - n,
                            head_left: head_left - take,
                        };
                        return;
                    }
                }
            }
        }
    }
}

/// DNS-over-TCP framing for one connection, both directions.
pub struct DnsTcpConn {
    req: Side,
    resp: Side,
    closed: bool,
}

impl Default for DnsTcpConn {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsTcpConn {
    pub fn new() -> Self {
        DnsTcpConn {
            req: Side::new(Dir::Request),
            resp: Side::new(Dir::Response),
            closed: false,
        }
    }

    /// Feed one syscall's worth of bytes. `len` >= data.len() is the true byte count;
    /// offsets count `len` bytes (if `len < data.len()`, only `data[..len]` is used).
    /// Ignored after [`close`](Self::close).
    pub fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<DnsTcpEvent>) {
        if self.closed {
            return;
        }
        let side = match dir {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        };
        let (data, gap) = crate::clamp(data, len, side.offset);
        side.feed(data, gap, out);
    }

    /// The connection closed. A message cut short gets no event; later pushes are ignored.
    pub fn close(&mut self, _out: &mut Vec<DnsTcpEvent>) {
        self.closed = true;
        self.req.buf = Vec::new();
        self.resp.buf = Vec::new();
    }
}

impl Parser for DnsTcpConn {
    type Event = DnsTcpEvent;
    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<DnsTcpEvent>) {
        DnsTcpConn::push(self, dir, data, len, out);
    }
    fn close(&mut self, out: &mut Vec<DnsTcpEvent>) {
        DnsTcpConn::close(self, out);
    }
    fn held(&self) -> usize {
        self.req.buf.capacity() + self.resp.buf.capacity()
    }
}

/// DNS over UDP: every datagram is one message, read as a step right away; only the stream
/// offsets need keeping. Queries and answers pair by message id.
#[derive(Default)]
pub struct DnsDatagrams {
    request_pos: u64,
    response_pos: u64,
}

impl Parser for DnsDatagrams {
    type Event = Step;

    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<Step>) {
        let pos = match dir {
            Dir::Request => &mut self.request_pos,
            Dir::Response => &mut self.response_pos,
        };
        let start = *pos;
        *pos = pos.saturating_add(len);
        out.extend(datagram_step(dir, data, start, len));
    }

    fn close(&mut self, _out: &mut Vec<Step>) {}

    /// Datagrams are read whole: nothing is buffered.
    fn held(&self) -> usize {
        0
    }
}

impl Protocol for DnsDatagrams {
    const TRANSPORT: Transport = Transport::Udp;
    const MULTIPLEXED: bool = true;

    fn detect(payload: &[u8]) -> Option<Opener> {
        looks_like_query(payload).then_some(Opener::Requester)
    }

    fn step(&self, step: Step) -> Option<Step> {
        Some(step)
    }
}

/// One datagram at stream offset `start`, `len` bytes long, as a query or an answer.
fn datagram_step(dir: Dir, data: &[u8], start: u64, len: u64) -> Option<Step> {
    let msg = parse_message(data)?;
    let key = Some(u64::from(msg.id));
    match (dir, msg.is_response) {
        (Dir::Request, false) => {
            let (name, qtype) = msg.question?;
            Some(Step::Request {
                key,
                start,
                context: None,
                exchange: Exchange::Dns(DnsExchange {
                    id: msg.id,
                    name,
                    qtype: qtype_name(qtype).into_owned(),
                    rcode: None,
                    answers: None,
                }),
            })
        }
        (Dir::Response, true) => Some(Step::End {
            key,
            end: start.saturating_add(len),
            update: Update::Dns {
                rcode: rcode_name(msg.rcode).to_string(),
                answers: msg.answers,
            },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, Rng};
    use Dir::{Request as Q, Response as R};

    /// A message: header fields, then `qname` (dotted, encoded as labels) with `qtype`/IN, then
    /// the raw `rest` (records).
    fn msg(id: u16, flags: u16, counts: [u16; 4], qname: &str, qtype: u16, rest: &[u8]) -> Vec<u8> {
        let mut m = [id, flags]
            .iter()
            .chain(&counts)
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<_>>();
        for label in qname.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(rest);
        m
    }

    /// EDNS(0) OPT pseudo-record: root name, type 41, UDP size 1232, no options.
    const OPT: &[u8] = &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        msg(id, 0x0100, [1, 0, 0, 1], name, qtype, OPT)
    }

    /// A response with one answer whose owner name is a pointer to the question (offset 12).
    fn answer(id: u16, name: &str, rcode: u16) -> Vec<u8> {
        let rr = [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1];
        msg(
            id,
            0x8180 | rcode,
            [1, 1, 0, 1],
            name,
            1,
            &[&rr[..], OPT].concat(),
        )
    }

    #[test]
    fn queries_and_responses() {
        let q = query(0xbeef, "www.Example.COM", 28);
        let m = parse_message(&q).unwrap();
        let want = DnsMessage {
            id: 0xbeef,
            question: Some(("www.example.com".into(), 28)),
            ..Default::default()
        };
        assert_eq!(m, want);
        assert!(looks_like_query(&q));
        let r = answer(0xbeef, "www.example.com", 0);
        let m = parse_message(&r).unwrap();
        assert!(m.is_response && m.answers == 1 && m.rcode == 0 && !m.truncated);
        assert_eq!(m.question, Some(("www.example.com".into(), 1)));
        assert!(!looks_like_query(&r));
        let nx = parse_message(&msg(7, 0x8183, [1, 0, 1, 0], "nope.test", 1, &[])).unwrap();
        assert_eq!((nx.rcode, nx.truncated, nx.answers), (3, false, 0));
        assert_eq!(rcode_name(nx.rcode), "NXDOMAIN");
        let tc = parse_message(&msg(7, 0x8380 | 0x0200, [1, 0, 0, 0], "big.test", 16, &[]));
        assert!(tc.unwrap().truncated);
        // The root name, and a response without a question (e.g. some FORMERR answers).
        let root = parse_message(&msg(1, 0, [1, 0, 0, 0], ".", 2, &[])).unwrap();
        assert_eq!(root.question, Some((String::new(), 2)));
        let none = parse_message(&(msg(1, 0x8001, [0, 0, 0, 0], "", 0, &[])[..12])).unwrap();
        assert_eq!((none.question, none.rcode), (None, 1));
        // mDNS sets the top bit of the class (unicast response wanted).
        let mut md = query(0, "printer.local", 12);
        md[12 + 15 + 2] |= 0x80;
        assert_eq!(parse_message(&md).unwrap().question.unwrap().1, 12);
    }

    #[test]
    fn names_follow_pointers_and_refuse_loops() {
        // "example.com" at 12; "www" + pointer to it at 25; "a" + pointer to 25 at 31.
        let mut m = msg(1, 0, [1, 0, 0, 0], "example.com", 1, &[]);
        m.truncate(25);
        m.extend_from_slice(&[3, b'w', b'w', b'w', 0xc0, 12, 1, b'a', 0xc0, 25]);
        let ok = |at| read_name(&m, at).ok();
        assert_eq!(ok(12), Some(("example.com".into(), 25)));
        assert_eq!(ok(25), Some(("www.example.com".into(), 31)));
        assert_eq!(ok(31), Some(("a.www.example.com".into(), 35)));
        let bad = |tail: &[u8]| {
            let m = [&m[..25], tail].concat();
            matches!(read_name(&m, 25), Err(NameErr::Bad))
        };
        assert!(bad(&[0xc0, 25]), "points at itself");
        assert!(bad(&[0xc0, 27, 0, 0]), "points forward");
        assert!(bad(&[1, b'x', 0xc0, 25]), "points back into its own labels");
        assert!(bad(&[0x40, 0]) && bad(&[0x80, 0]), "reserved label types");
        let cut = |tail: &[u8]| {
            matches!(
                read_name(&[&m[..25], tail].concat(), 25),
                Err(NameErr::Short)
            )
        };
        assert!(cut(&[]) && cut(&[3, b'w']) && cut(&[0xc0]));
        // A two-step chain (25 → 12 is fine, but 12 may not then jump forward to 25).
        let mut loopy = m.clone();
        loopy[12..14].copy_from_slice(&[0xc0, 25]);
        assert!(matches!(read_name(&loopy, 31), Err(NameErr::Bad)));
        // The first question pointing into the header: id = "\x01a", flags' high byte = 0.
        let mut hdr = msg(0x0161, 0x0000, [1, 0, 0, 0], "www", 1, &[]);
        hdr.splice(16..17, [0xc0, 0]);
        let q = parse_message(&hdr).unwrap().question.unwrap();
        assert_eq!(q, ("www.a".into(), 1));
    }

    #[test]
    fn names_are_bounded_and_escaped() {
        let long = |n: usize| (0..n).map(|_| "a".repeat(63)).collect::<Vec<_>>().join(".");
        // 3 × 64 + 62 + 1 + 1 = 256 octets is one too many; 255 is fine.
        let at_max = format!("{}.{}", long(3), "b".repeat(61));
        let name = parse_message(&query(1, &at_max, 1))
            .unwrap()
            .question
            .unwrap()
            .0;
        assert_eq!(name, at_max);
        assert!(parse_message(&query(1, &(at_max + "b"), 1)).is_none());
        let mut m = msg(1, 0, [1, 0, 0, 0], "", 1, &[]);
        m.splice(12..12, *b"\x07A.b\\\"\x00\t\x02\xff ");
        let name = parse_message(&m).unwrap().question.unwrap().0;
        assert_eq!(name, r#"a\.b\\\"\000\t.\255 "#);
    }

    #[test]
    fn implausible_messages_are_refused() {
        let q = query(9, "a.example", 1);
        let with = |at: usize, f: &dyn Fn(&mut u8)| {
            let mut m = q.clone();
            f(&mut m[at]);
            m
        };
        let bad = [
            with(2, &|b| *b |= 3 << 3),     // opcode 3
            with(2, &|b| *b |= 15 << 3),    // opcode 15
            with(3, &|b| *b |= 0x40),       // Z
            with(3, &|b| *b |= 12),         // rcode 12
            with(5, &|b| *b = 2),           // two questions
            with(6, &|b| *b = 0xff),        // 65280 answers
            with(12 + 11 + 3, &|b| *b = 2), // class 2
        ];
        for m in &bad {
            assert!(parse_message(m).is_none(), "{m:?}");
            assert!(!looks_like_query(m));
        }
        for m in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(!looks_like_query(m));
        }
        let r = answer(1, "x.y", 0);
        assert!(!looks_like_query(&r) && parse_message(&r).is_some());
    }

    #[test]
    fn truncated_datagrams() {
        let r = answer(0x4242, "cut.example.org", 2);
        for n in 0..r.len() {
            let m = parse_message(&r[..n]);
            let q_end = 12 + 17 + 4;
            match n {
                0..12 => assert_eq!(m, None),
                _ => {
                    let m = m.unwrap();
                    assert_eq!((m.id, m.rcode, m.answers), (0x4242, 2, 1));
                    assert_eq!(m.question.is_some(), n >= q_end, "{n}");
                }
            }
        }
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(65), "HTTPS");
        assert_eq!(qtype_name(64), "SVCB");
        assert_eq!(qtype_name(0xff), "ANY");
        assert_eq!(qtype_name(4242), "TYPE4242");
        assert_eq!(rcode_name(5), "REFUSED");
        assert_eq!(rcode_name(13), "RCODE13");
        assert_eq!(rcode_name(16), "BADVERS");
        assert_eq!(rcode_name(99), "UNKNOWN");
    }

    /// Events as a trace: `Mq0-35#7` query-direction message [0, 35) with id 7, `Dr@3` desync;
    /// `?` marks a message whose question was not read.
    fn show(ev: &[DnsTcpEvent]) -> String {
        let s = ev.iter().map(|e| match e {
            DnsTcpEvent::Message {
                dir,
                start,
                end,
                msg,
            } => {
                let d = ["q", "r"][*dir as usize];
                let q = if msg.question.is_some() { "" } else { "?" };
                format!("M{d}{start}-{end}#{}{q}", msg.id)
            }
            DnsTcpEvent::Desync { dir, offset } => {
                format!("D{}@{offset}", ["q", "r"][*dir as usize])
            }
        });
        s.collect::<Vec<_>>().join(" ")
    }

    fn feed(c: &mut DnsTcpConn, dir: Dir, data: &[u8], len: u64) -> String {
        show(&testutil::feed(c, dir, data, len))
    }

    fn push(c: &mut DnsTcpConn, dir: Dir, data: &[u8]) -> String {
        feed(c, dir, data, data.len() as u64)
    }

    fn framed(m: &[u8]) -> Vec<u8> {
        [&(m.len() as u16).to_be_bytes()[..], m].concat()
    }

    #[test]
    fn tcp_framing_split_anywhere() {
        let q1 = framed(&query(1, "a.test", 1)); // 2 + 35 bytes
        let q2 = framed(&query(2, "bb.test", 28)); // 2 + 36
        let stream = [q1.clone(), q2.clone()].concat();
        let mut c = DnsTcpConn::new();
        assert_eq!(push(&mut c, Q, &stream), "Mq0-37#1 Mq37-75#2");
        assert_eq!(c.req.buf.capacity(), 0, "whole messages: no copy");
        let r = framed(&answer(1, "a.test", 0));
        assert_eq!(push(&mut c, R, &r), "Mr0-53#1");
        let want = "Mq0-37#1 Mq37-75#2";
        let mut rng = Rng(7);
        for round in 0..500 {
            let mut c = DnsTcpConn::new();
            let (mut rest, mut ev) = (&stream[..], String::new());
            while !rest.is_empty() {
                let n = (1 + rng.below([2, 5, 40][round % 3])).min(rest.len());
                let e = push(&mut c, Q, &rest[..n]);
                ev += &e;
                if !e.is_empty() {
                    ev += " ";
                }
                rest = &rest[n..];
            }
            assert_eq!(ev.trim_end(), want);
        }
    }

    #[test]
    fn tcp_gaps_and_desyncs() {
        // A long response: the head is captured, most of the rest is in a gap.
        let mut big = answer(5, "big.test", 0);
        big.resize(3000, 0);
        let big = framed(&big);
        let mut c = DnsTcpConn::new();
        assert_eq!(feed(&mut c, R, &big[..100], 3002), "Mr0-3002#5");
        // A gap cutting into the question: the message still frames, its question is unknown.
        assert_eq!(feed(&mut c, R, &big[..20], 3002), "Mr3002-6004#5?");
        // The head split across chunks, then a gap.
        let ev = push(&mut c, R, &big[..30]) + &feed(&mut c, R, &big[30..60], 2972);
        assert_eq!(ev, "Mr6004-9006#5");
        // A head wholly in the gap: nothing to say, framing goes on.
        assert_eq!(
            feed(&mut c, R, &big[..2], 3002) + &push(&mut c, R, &framed(&answer(6, "x", 0))),
            "Mr12008-12056#6"
        );
        // A gap over a length prefix loses framing, until a chunk starts like a message.
        assert_eq!(feed(&mut c, R, &big, 3010), "Mr12056-15058#5 Dr@15058");
        assert_eq!(push(&mut c, R, &big[20..70]), "", "no resync on junk");
        assert_eq!(
            push(&mut c, R, &framed(&answer(8, "y", 0))),
            "Mr15116-15164#8"
        );
        // Half a prefix then a gap.
        assert_eq!(push(&mut c, R, &[0]) + &feed(&mut c, R, &[], 5), "Dr@15164");
        // Lengths below the header size, and implausible messages.
        let mut c = DnsTcpConn::new();
        assert_eq!(push(&mut c, Q, &[0, 5, 1, 2, 3, 4, 5]), "Dq@0");
        let mut c = DnsTcpConn::new();
        let junk = framed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(push(&mut c, Q, &junk), "Dq@0");
        assert_eq!(push(&mut c, Q, &framed(&query(3, "ok", 1))), "Mq29-62#3");
        // Offsets saturate; pushes after close are ignored.
        assert_eq!(feed(&mut c, Q, &[0, 12], u64::MAX), "Dq@76");
        assert_eq!(c.req.offset, u64::MAX);
        c.close(&mut Vec::new());
        assert_eq!(push(&mut c, R, &framed(&answer(3, "ok", 0))), "");
    }

    #[test]
    fn random_garbage_never_panics() {
        let bits: [&[u8]; 6] = [
            &query(1, "a.b", 1),
            &answer(2, "c.d", 3),
            &[0xc0, 12, 0xc0, 0],
            &[0, 12],
            &[0xff; 7],
            OPT,
        ];
        let mut rng = Rng(42);
        for _ in 0..5000 {
            let data = rng.garbage(&bits, 5, 3, 40, false);
            let _ = parse_message(&data);
            let _ = looks_like_query(&data);
            let mut c = DnsTcpConn::new();
            let mut out = Vec::new();
            for _ in 0..rng.below(8) {
                let n = rng.below(data.len() + 1);
                let len = rng.len(n, 3, 70_000);
                c.push([Q, R][rng.below(2)], &data[..n], len, &mut out);
                assert!(c.req.buf.len() <= MAX_TCP_HEAD && c.resp.buf.len() <= MAX_TCP_HEAD);
            }
            c.close(&mut out);
        }
    }
}
