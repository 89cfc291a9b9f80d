//! One connection's HTTP/2 parser ([`H2Conn`]): feeds each direction's bytes to its framer and
//! says what a stream means as an exchange.

use crate::Dir;
use crate::exchange::{Exchange, HttpExchange, RpcExchange};
use crate::parser::{Opener, Parser, Protocol, Step, TraceContext, Update};

use super::*;

/// HTTP/2 parser state for one connection, both directions.
pub struct H2Conn {
    framers: [Framer; 2],
    conn: Conn,
    closed: bool,
    /// The client a PROXY protocol header before the preface named (`crate::proxy`).
    proxied: Option<std::net::SocketAddr>,
}

impl Default for H2Conn {
    fn default() -> Self {
        Self::new()
    }
}

impl H2Conn {
    pub fn new() -> Self {
        let conn = Conn {
            hpack: [Hpack::new(), Hpack::new()],
            block: [None, None],
            block_buf: [Vec::new(), Vec::new()],
            max_frame: [None, None],
            streams: Streams::default(),
        };
        H2Conn {
            framers: [Framer::new(Dir::Request), Framer::new(Dir::Response)],
            conn,
            closed: false,
            proxied: None,
        }
    }

    /// Feed one syscall's worth of bytes. `len` >= data.len() is the true byte count;
    /// offsets count `len` bytes (if `len < data.len()`, only `data[..len]` is used).
    /// Ignored after [`close`](Self::close).
    pub fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<H2Event>) {
        if self.closed {
            return;
        }
        let framer = &mut self.framers[dir as usize];
        let (mut data, mut len) = (data, len);
        // A PROXY protocol header before the preface is skipped.
        if dir == Dir::Request
            && let Some(client) =
                crate::proxy::skip_leading(&mut framer.offset, &mut data, &mut len)
        {
            self.proxied = client;
        }
        let (data, gap) = crate::clamp(data, len, framer.offset);
        framer.feed(&mut self.conn, data, gap, out);
    }

    /// The connection closed: every stream still open is reset ([`UNKNOWN_ERROR`], at the
    /// Response stream's offset). Later pushes are ignored.
    pub fn close(&mut self, out: &mut Vec<H2Event>) {
        if !self.closed {
            let end = self.framers[Dir::Response as usize].offset;
            self.conn.streams.reset_above(0, end, UNKNOWN_ERROR, out);
        }
        self.closed = true;
        for f in &mut self.framers {
            f.buf = Vec::new();
        }
        self.conn.block_buf = [Vec::new(), Vec::new()];
        self.conn.hpack = [Hpack::new(), Hpack::new()];
    }

    /// Streams currently tracked (request or response seen, response not ended).
    pub fn open_streams(&self) -> usize {
        self.conn.streams.map.len()
    }
}

impl Parser for H2Conn {
    type Event = H2Event;
    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<H2Event>) {
        H2Conn::push(self, dir, data, len, out);
    }
    fn close(&mut self, out: &mut Vec<H2Event>) {
        H2Conn::close(self, out);
    }
    /// The framers' and header blocks' buffers, both HPACK decoders, and the tracked streams
    /// (their fixed part: a stream's response-head strings, at most 2 × [`MAX_FIELD`] bytes
    /// from the server, are not counted).
    fn held(&self) -> usize {
        let c = &self.conn;
        let buffers = self.framers.iter().map(|f| f.buf.capacity()).sum::<usize>()
            + c.block_buf.iter().map(Vec::capacity).sum::<usize>();
        // A B-tree node per ~11 entries: the entry plus a share of the node's overhead.
        let stream = std::mem::size_of::<(u32, Stream)>() + 16;
        buffers + c.hpack[0].held() + c.hpack[1].held() + c.streams.map.len() * stream
    }
}

/// HTTP/2 streams are exchanges; a stream whose content type is gRPC is a gRPC call.
impl Protocol for H2Conn {
    const MULTIPLEXED: bool = true;

    fn detect(payload: &[u8]) -> Option<Opener> {
        let preface = match crate::proxy::proxy_header(payload) {
            // A load balancer's header, then the client's preface.
            crate::proxy::ProxyHeader::Whole(n) => &payload[n..],
            _ => payload,
        };
        looks_like_preface(preface).then_some(Opener::Requester)
    }

    fn step(&self, event: H2Event) -> Option<Step> {
        Some(match event {
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
                        client: self.proxied,
                        ..Default::default()
                    }),
                    _ => Exchange::Http(HttpExchange {
                        method: head.method,
                        target: head.path,
                        host: head.authority,
                        version: "2",
                        user_agent: head.user_agent,
                        client: self.proxied,
                        ..Default::default()
                    }),
                };
                Step::Request {
                    key: Some(u64::from(stream)),
                    start,
                    exchange,
                    context: TraceContext::of(head.traceparent, head.tracestate),
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
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::testutil::{self, Rng};
    use Dir::{Request as Q, Response as R};
    use H2Event as E;

    // ---- building frames and header blocks

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn settings(params: &[(u16, u32)]) -> Vec<u8> {
        let p: Vec<u8> = params
            .iter()
            .flat_map(|&(k, v)| [&k.to_be_bytes()[..], &v.to_be_bytes()].concat())
            .collect();
        frame(SETTINGS, 0, 0, &p)
    }

    fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, flags | END_HEADERS, stream, block)
    }

    fn data(stream: u32, flags: u8, n: usize) -> Vec<u8> {
        frame(DATA, flags, stream, &vec![0x2a; n])
    }

    fn rst(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// The canonical Huffman code of `sym` and its length.
    fn huff_code(sym: usize) -> (u32, usize) {
        let len = HUFFMAN_LEN[sym] as usize;
        let rank = HUFFMAN
            .symbols
            .iter()
            .position(|&s| s as usize == sym)
            .unwrap() as u32;
        (HUFFMAN.first[len] + rank - HUFFMAN.offset[len], len)
    }

    fn huff(s: &[u8]) -> Vec<u8> {
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0);
        for &b in s {
            let (code, len) = huff_code(b as usize);
            (acc, bits) = (acc << len | u64::from(code), bits + len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push((acc << (8 - bits) | (0xff >> bits)) as u8);
        }
        out
    }

    fn int(v: usize, prefix: u32, pattern: u8) -> Vec<u8> {
        let mask = (1usize << prefix) - 1;
        if v < mask {
            return vec![pattern | v as u8];
        }
        let (mut out, mut v) = (vec![pattern | mask as u8], v - mask);
        while v >= 128 {
            out.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    /// Header field representations, Huffman-coded when `H` is set on the block.
    #[derive(Clone, Copy)]
    enum F<'a> {
        /// Indexed field.
        Idx(usize),
        /// Literal with incremental indexing, new name.
        Inc(&'a str, &'a str),
        /// Literal with incremental indexing, indexed name.
        IncN(usize, &'a str),
        /// Literal without indexing, new name.
        Lit(&'a str, &'a str),
        /// Literal never indexed, indexed name.
        NeverN(usize, &'a str),
        /// Dynamic table size update.
        Size(usize),
    }

    fn string(s: &str, h: bool) -> Vec<u8> {
        match h {
            true => {
                let b = huff(s.as_bytes());
                [int(b.len(), 7, 0x80), b].concat()
            }
            false => [int(s.len(), 7, 0), s.as_bytes().to_vec()].concat(),
        }
    }

    fn block(fields: &[F], h: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            let part = match *f {
                F::Idx(i) => int(i, 7, 0x80),
                F::Inc(n, v) => [vec![0x40], string(n, h), string(v, h)].concat(),
                F::IncN(i, v) => [int(i, 6, 0x40), string(v, h)].concat(),
                F::Lit(n, v) => [vec![0], string(n, h), string(v, h)].concat(),
                F::NeverN(i, v) => [int(i, 4, 0x10), string(v, h)].concat(),
                F::Size(s) => int(s, 5, 0x20),
            };
            out.extend(part);
        }
        out
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// A byte stream under construction: `add` returns the offset of what it appends.
    #[derive(Default, Clone)]
    struct Wire(Vec<u8>);
    impl Wire {
        fn add(&mut self, bytes: &[u8]) -> u64 {
            self.0.extend_from_slice(bytes);
            (self.0.len() - bytes.len()) as u64
        }
        fn at(&self) -> u64 {
            self.0.len() as u64
        }
    }

    /// Offset one past the frame at `at`.
    fn frame_end(b: &[u8], at: u64) -> u64 {
        let a = at as usize;
        at + 9 + u64::from(u32::from_be_bytes([0, b[a], b[a + 1], b[a + 2]]))
    }

    // ---- driving the parser

    /// Events as a trace: `Q1@24 POST /p` request head of stream 1 at 24, `R1@0-90 s200 g0`
    /// response [0, 90) with status and grpc-status (`-` when unknown), `X3r@120 e8` stream 3
    /// reset by a frame in the Response stream ending at 120 with error code 8 (`e?` unknown),
    /// `Dq@5` desync.
    fn show(ev: &[E]) -> String {
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        let s = ev.iter().map(|e| match e.clone() {
            E::Request {
                stream,
                start,
                head,
            } => {
                format!("Q{stream}@{start} {} {}", head.method, head.path)
            }
            E::Response {
                stream,
                start,
                end,
                head,
            } => format!(
                "R{stream}@{start}-{end} s{} g{}",
                opt(head.status.map(|s| s.to_string())),
                opt(head.grpc_status.map(|s| s.to_string()))
            ),
            E::Reset {
                stream,
                dir,
                end,
                error_code,
            } => {
                let code = match error_code {
                    UNKNOWN_ERROR => "?".to_string(),
                    c => c.to_string(),
                };
                format!("X{stream}{}@{end} e{code}", ["q", "r"][dir as usize])
            }
            E::Desync { dir, offset } => format!("D{}@{offset}", ["q", "r"][dir as usize]),
        });
        s.collect::<Vec<_>>().join(" ")
    }

    fn feed(c: &mut H2Conn, dir: Dir, data: &[u8], len: u64) -> String {
        show(&testutil::feed(c, dir, data, len))
    }

    fn push(c: &mut H2Conn, dir: Dir, data: &[u8]) -> String {
        feed(c, dir, data, data.len() as u64)
    }

    fn close(c: &mut H2Conn) -> String {
        let mut out = Vec::new();
        c.close(&mut out);
        show(&out)
    }

    /// Feed `data` in pieces of the given sizes, then the rest.
    fn split(c: &mut H2Conn, dir: Dir, data: &[u8], sizes: &[usize]) -> Vec<E> {
        let (mut out, mut rest) = (Vec::new(), data);
        for &n in sizes.iter().chain([&usize::MAX]) {
            let (a, b) = rest.split_at(n.max(1).min(rest.len()));
            c.push(dir, a, a.len() as u64, &mut out);
            rest = b;
            if rest.is_empty() {
                break;
            }
        }
        out
    }

    /// Decode one block with `d`, as (name, value) lines.
    fn decode(d: &mut Hpack, b: &[u8]) -> (Decoded, Vec<(String, String)>) {
        let mut got = Vec::new();
        let r = d.decode(b, &mut |n, v| got.push((text(n), text(v))));
        (r, got)
    }

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|&(n, v)| (n.into(), v.into())).collect()
    }

    fn table(d: &Hpack) -> Vec<(String, String)> {
        let e = d.table.iter();
        e.map(|e| {
            let (n, v) = e.buf.split_at(e.name_len.unwrap_or(0));
            match e.name_len {
                Some(_) => (text(n), text(v)),
                None => ("?".into(), text(v)),
            }
        })
        .collect()
    }

    // ---- HPACK

    #[test]
    fn huffman_code_is_rfc7541_appendix_b() {
        let want = [
            (0, 0x1ff8, 13),
            (b'0' as usize, 0x0, 5),
            (b'a' as usize, 0x3, 5),
            (b' ' as usize, 0x14, 6),
            (b'%' as usize, 0x15, 6),
            (b'&' as usize, 0xf8, 8),
            (b'z' as usize, 0x7b, 7),
            (10, 0x3ffffffc, 30),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ];
        for (sym, code, len) in want {
            assert_eq!(huff_code(sym), (code, len), "symbol {sym}");
        }
        // Prefix-free and complete: the Kraft sum is exactly 1.
        let kraft: f64 = HUFFMAN_LEN.iter().map(|&l| 0.5f64.powi(l.into())).sum();
        assert_eq!(kraft, 1.0);
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        assert_eq!(huffman_decode(&huff(&all), &mut out), Some(()));
        assert_eq!(out, all);
        // EOS inside a string, padding of 8+ bits or not all ones.
        for bad in [&[0xff, 0xff, 0xff, 0xff][..], &[0x1f, 0xff], &[0x00]] {
            assert_eq!(huffman_decode(bad, &mut Vec::new()), None, "{bad:?}");
        }
        assert_eq!(huffman_decode(&[0x07], &mut Vec::new()), Some(())); // "0" + 3 bits of 1
    }

    #[test]
    fn hpack_integers() {
        // RFC 7541 C.1.
        let (mut p, mut q) = (0, 0);
        assert_eq!(hpack_int(&[0x0a], &mut p, 5), Some(10));
        assert_eq!(hpack_int(&[0x1f, 0x9a, 0x0a], &mut q, 5), Some(1337));
        assert_eq!((p, q), (1, 3));
        let mut p = 0;
        assert_eq!(
            hpack_int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut p, 7),
            None
        );
        assert_eq!(hpack_int(&[0x1f, 0x9a], &mut 0, 5), None);
        for v in [0, 30, 31, 126, 127, 128, 4096, 65_536, 1 << 28] {
            assert_eq!(hpack_int(&int(v, 5, 0), &mut 0, 5), Some(v));
        }
    }

    #[test]
    fn hpack_rfc7541_request_examples() {
        let req1 = pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]);
        let mut req2 = req1.clone();
        req2.push(("cache-control".into(), "no-cache".into()));
        let req3 = pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        let c3 = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let c4 = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [c3, c4] {
            let mut d = Hpack::new();
            for (b, (want, size)) in blocks.iter().zip([(&req1, 57), (&req2, 110), (&req3, 164)]) {
                assert_eq!(decode(&mut d, &hex(b)), (Decoded::Ok, want.clone()));
                assert_eq!(d.size, size);
            }
            let t = pairs(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ]);
            assert_eq!(table(&d), t);
        }
    }

    #[test]
    fn hpack_rfc7541_response_examples_with_eviction() {
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let loc = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let c6 = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        let mut d = Hpack::new();
        d.set_limit(256);
        let resp = |s| {
            pairs(&[
                (":status", s),
                ("cache-control", "private"),
                ("date", date1),
                ("location", loc),
            ])
        };
        assert_eq!(decode(&mut d, &hex(c6[0])), (Decoded::Ok, resp("302")));
        assert_eq!(d.size, 222);
        assert_eq!(decode(&mut d, &hex(c6[1])), (Decoded::Ok, resp("307")));
        assert_eq!((d.size, d.table.len()), (222, 4));
        let (r, got) = decode(&mut d, &hex(c6[2]));
        assert_eq!(
            (r, &got[0].1, &got[5].1),
            (Decoded::Ok, &"200".into(), &cookie.into())
        );
        assert_eq!(got[2].1, "Mon, 21 Oct 2013 20:13:22 GMT");
        assert_eq!(d.size, 215);
        let t = table(&d);
        assert_eq!(
            (t.len(), t[0].1.as_str(), t[1].1.as_str()),
            (3, cookie, "gzip")
        );
    }

    #[test]
    fn hpack_keeps_positions_after_a_loss() {
        let mut d = Hpack::new();
        let seed = block(&[F::Inc("a", "1"), F::Inc("b", "2")], false);
        assert_eq!(decode(&mut d, &seed).0, Decoded::Ok);
        d.lose(); // a block was missed: it may have added entries
        // Static and literal fields still decode; dynamic references beyond what is known do not.
        let lit = block(&[F::Idx(2), F::Lit("x", "y"), F::NeverN(4, "/p")], true);
        assert_eq!(
            decode(&mut d, &lit),
            (
                Decoded::Ok,
                pairs(&[(":method", "GET"), ("x", "y"), (":path", "/p")])
            )
        );
        let (r, got) = decode(&mut d, &block(&[F::Idx(62), F::Idx(2)], false));
        assert_eq!((r, got), (Decoded::Unknown, pairs(&[(":method", "GET")])));
        // New entries are known at their positions; a name from an unknown entry makes a
        // placeholder that keeps the positions right.
        let b = block(
            &[F::Inc("c", "3"), F::IncN(63, "v"), F::Inc("d", "4")],
            false,
        );
        assert_eq!(decode(&mut d, &b).0, Decoded::Unknown, "63 was unknown");
        assert_eq!(table(&d), pairs(&[("d", "4"), ("?", "v"), ("c", "3")]));
        let b = block(&[F::Idx(62), F::Idx(64), F::IncN(64, "5")], false);
        assert_eq!(
            decode(&mut d, &b),
            (Decoded::Ok, pairs(&[("d", "4"), ("c", "3"), ("c", "5")]))
        );
        assert_eq!(
            decode(&mut d, &block(&[F::Idx(64)], false)).0,
            Decoded::Unknown
        );
        assert_eq!(
            decode(&mut d, &block(&[F::Idx(66)], false)).0,
            Decoded::Unknown
        );
        // A size update evicts; 0 empties the table.
        assert_eq!(
            decode(&mut d, &block(&[F::Size(70), F::Idx(62)], false)),
            (Decoded::Ok, pairs(&[("c", "5")]))
        );
        assert_eq!((d.table.len(), d.max), (2, 70));
        assert_eq!(
            decode(&mut d, &block(&[F::Size(0), F::Size(4096)], false)).0,
            Decoded::Ok
        );
        assert_eq!((d.table.len(), d.size, d.max), (0, 0, 4096));
        // Malformed blocks lose the table: index 0, a cut string, an overlong integer, bad
        // Huffman.
        for bad in [
            &[0x80][..],
            &[0x40, 0x05, b'a'],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[0x00, 0x81, 0x00, 0x00],
        ] {
            decode(&mut d, &seed);
            assert_eq!(decode(&mut d, bad).0, Decoded::Broken, "{bad:?}");
            assert_eq!(d.table.len(), 0);
        }
        // Limits: size updates are capped, and an entry larger than the table empties it.
        decode(&mut d, &block(&[F::Size(1 << 30)], false));
        assert_eq!(d.max, MAX_TABLE_SIZE);
        decode(
            &mut d,
            &block(
                &[
                    F::Size(40),
                    F::Inc("k", "v"),
                    F::Inc("big", &"x".repeat(50)),
                ],
                false,
            ),
        );
        assert_eq!((d.table.len(), d.size), (0, 0));
    }

    /// A reference encoder's table, to check that the decoder never decodes wrong fields
    /// after losses: whatever it calls `Ok` is the truth.
    #[test]
    fn hpack_never_misdecodes_after_losses() {
        let names = ["a", "bb", ":path", "content-type", "x-long-header-name"];
        let values = [
            "",
            "1",
            "/p",
            "application/grpc",
            "some longer value, 40 bytes long.......",
        ];
        let mut rng = Rng(0x5eed);
        let (mut ok, mut blocks) = (0, 0);
        for _ in 0..300 {
            let mut d = Hpack::new();
            let (mut table, mut max) = (VecDeque::<(String, String)>::new(), 4096usize);
            let size = |t: &VecDeque<(String, String)>| {
                t.iter().map(|(n, v)| n.len() + v.len() + 32).sum::<usize>()
            };
            for _ in 0..40 {
                let (mut fields, mut truth) = (Vec::new(), Vec::new());
                if rng.below(8) == 0 {
                    max = [0, 100, 200, 4096][rng.below(4)];
                    fields.push(F::Size(max));
                    while size(&table) > max {
                        table.pop_back();
                    }
                }
                for _ in 0..1 + rng.below(6) {
                    let (n, v) = (names[rng.below(5)], values[rng.below(5)]);
                    let pick = rng.below(5);
                    let (f, name) = match pick {
                        0 if !table.is_empty() => {
                            let i = rng.below(table.len());
                            truth.push(table[i].clone());
                            fields.push(F::Idx(62 + i));
                            continue;
                        }
                        1 if !table.is_empty() => {
                            let i = rng.below(table.len());
                            (F::IncN(62 + i, v), table[i].0.clone())
                        }
                        2 => (F::Lit(n, v), n.to_string()),
                        3 => (F::Idx(2), ":method".to_string()),
                        _ => (F::Inc(n, v), n.to_string()),
                    };
                    let value = match f {
                        F::Idx(_) => "GET".to_string(),
                        _ => v.to_string(),
                    };
                    fields.push(f);
                    truth.push((name.clone(), value.clone()));
                    if matches!(f, F::Inc(..) | F::IncN(..)) {
                        let e = name.len() + value.len() + 32;
                        while !table.is_empty() && size(&table) + e > max {
                            table.pop_back();
                        }
                        if e <= max {
                            table.push_front((name, value));
                        }
                    }
                }
                let b = block(&fields, rng.below(2) == 0);
                if rng.below(10) == 0 {
                    d.lose(); // this block is missed
                    continue;
                }
                blocks += 1;
                let (r, got) = decode(&mut d, &b);
                assert_ne!(r, Decoded::Broken);
                if r == Decoded::Ok {
                    ok += 1;
                    assert_eq!(got, truth);
                }
                // Entry i is the encoder's entry i; the decoder may keep more (see `Hpack`).
                for (e, truth) in d.table.iter().zip(&table) {
                    if let Some(n) = e.name_len {
                        let (name, value) = e.buf.split_at(n);
                        assert_eq!(&(text(name), text(value)), truth);
                    }
                }
            }
        }
        assert!(ok * 2 > blocks, "{ok} of {blocks} decoded");
    }

    // ---- a gRPC connection

    const PATH: &str = "/helloworld.Greeter/SayHello";
    const TP1: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// The client's bytes of a gRPC connection: preface, SETTINGS, then unary calls on
    /// streams 1 and 3 (the second one all from the dynamic table) and 5.
    fn grpc_client() -> (Wire, [u64; 3]) {
        let mut q = Wire::default();
        q.add(PREFACE);
        q.add(&settings(&[(2, 0), (4, 4_194_304)]));
        q.add(&frame(WINDOW_UPDATE, 0, 0, &[0, 0x3f, 0, 1]));
        let b1 = block(
            &[
                F::Idx(3),
                F::Idx(6),
                F::IncN(4, PATH),
                F::IncN(1, "localhost:50051"),
                F::IncN(31, "application/grpc"),
                F::Inc("te", "trailers"),
                F::IncN(58, "grpc-go/1.60.0"),
                F::Lit("traceparent", TP1),
                F::Lit("tracestate", "ot=th:8"),
                F::Lit("tracestate", "v=1"),
            ],
            true,
        );
        let s1 = q.add(&headers(1, 0, &b1));
        q.add(&data(1, END_STREAM, 12));
        let b3 = block(
            &[
                F::Idx(3),
                F::Idx(6),
                F::Idx(66),
                F::Idx(65),
                F::Idx(64),
                F::Idx(63),
                F::Idx(62),
            ],
            false,
        );
        let s3 = q.add(&headers(3, 0, &b3));
        q.add(&data(3, END_STREAM, 7));
        let s5 = q.add(&headers(5, END_STREAM, &b3));
        (q, [s1, s3, s5])
    }

    /// The server's bytes: SETTINGS, an OK answer on 1 (trailers grpc-status 0), NOT_FOUND on 3
    /// (grpc-status from a dynamic name), and a trailers-only UNAVAILABLE on 5.
    fn grpc_server() -> (Wire, Vec<(u64, u64)>) {
        let mut r = Wire::default();
        r.add(&settings(&[(5, 1 << 20)]));
        r.add(&frame(SETTINGS, ACK, 0, &[]));
        let h1 = r.add(&headers(
            1,
            0,
            &block(&[F::Idx(8), F::IncN(31, "application/grpc")], true),
        ));
        r.add(&data(1, 0, 20));
        r.add(&frame(PING, 0, 0, &[1; 8]));
        r.add(&headers(
            1,
            END_STREAM,
            &block(&[F::Inc("grpc-status", "0")], false),
        ));
        let e1 = r.at();
        let h3 = r.add(&headers(3, 0, &block(&[F::Idx(8), F::Idx(63)], false)));
        let trailers = block(
            &[F::IncN(62, "5"), F::Lit("grpc-message", "no%20such%20user")],
            false,
        );
        r.add(&headers(3, END_STREAM, &trailers));
        let e3 = r.at();
        let b5 = block(&[F::Idx(8), F::Idx(64), F::NeverN(15 + 47, "14")], false);
        let h5 = r.add(&headers(5, END_STREAM, &b5));
        let e5 = r.at();
        (r, vec![(h1, e1), (h3, e3), (h5, e5)])
    }

    fn grpc_trace() -> String {
        let ([s1, s3, s5], spans) = (grpc_client().1, grpc_server().1);
        let [(h1, e1), (h3, e3), (h5, e5)] = spans[..] else {
            unreachable!()
        };
        format!(
            "Q1@{s1} POST {PATH} Q3@{s3} POST {PATH} Q5@{s5} POST {PATH} \
             R1@{h1}-{e1} s200 g0 R3@{h3}-{e3} s200 g5 R5@{h5}-{e5} s200 g14"
        )
    }

    #[test]
    fn grpc_unary_calls() {
        let (q, r) = (grpc_client().0, grpc_server().0);
        let mut c = H2Conn::new();
        let mut ev = split(&mut c, Q, &q.0, &[]);
        assert_eq!(c.open_streams(), 3);
        ev.extend(split(&mut c, R, &r.0, &[]));
        assert_eq!(show(&ev), grpc_trace());
        assert_eq!(c.open_streams(), 0);
        let E::Request { head, .. } = &ev[0] else {
            panic!()
        };
        let want = H2Request {
            method: "POST".into(),
            path: PATH.into(),
            authority: Some("localhost:50051".into()),
            scheme: Some("http".into()),
            content_type: Some("application/grpc".into()),
            traceparent: Some(TP1.into()),
            // Two tracestate fields are one list.
            tracestate: Some("ot=th:8,v=1".into()),
            user_agent: Some("grpc-go/1.60.0".into()),
        };
        assert_eq!(head, &want);
        let E::Request { head, .. } = &ev[1] else {
            panic!()
        };
        assert_eq!(
            head,
            &H2Request {
                traceparent: None,
                tracestate: None,
                ..want
            }
        );
        let E::Response { head, .. } = &ev[4] else {
            panic!()
        };
        let want = H2Response {
            status: Some(200),
            grpc_status: Some(5),
            grpc_message: Some("no such user".into()),
            content_type: Some("application/grpc".into()),
        };
        assert_eq!(head, &want);
        let E::Response { head, .. } = &ev[5] else {
            panic!()
        };
        assert_eq!((head.grpc_status, &head.grpc_message), (Some(14), &None));
        assert_eq!(close(&mut c), "");
        // SETTINGS were applied: the client's HEADER_TABLE_SIZE 4 MiB (capped) does not grow
        // the server's table by itself; its MAX_FRAME_SIZE 1 MiB bounds client frames.
        assert_eq!(c.conn.max_frame, [Some(1 << 20), None]);
    }

    #[test]
    fn random_splits_give_the_same_events_as_whole() {
        let (q, r) = (grpc_client().0.0, grpc_server().0.0);
        let run = |qs: &[usize], rs: &[usize]| {
            let mut c = H2Conn::new();
            let mut ev = split(&mut c, Q, &q, qs);
            ev.extend(split(&mut c, R, &r, rs));
            c.close(&mut ev);
            (
                show(&ev),
                c.framers[0].buf.capacity().max(c.framers[1].buf.capacity()),
            )
        };
        let (all, copied) = run(&[], &[]);
        assert_eq!(
            (all.as_str(), copied),
            (grpc_trace().as_str(), 0),
            "whole frames: no copy"
        );
        assert_eq!(run(&[1; 1000], &[1; 1000]).0, all, "one byte at a time");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1000 {
            let sizes = rng.sizes([2, 5, 40, 400], 1000);
            assert_eq!(run(&sizes, &sizes[rng.below(100)..]).0, all);
        }
    }

    #[test]
    fn interleaved_streams_continuation_and_padding() {
        let mut q = Wire::default();
        q.add(PREFACE);
        q.add(&settings(&[]));
        let req = |path: &str| {
            block(
                &[F::Idx(2), F::Idx(7), F::Lit(":path", path), F::IncN(1, "h")],
                true,
            )
        };
        let s1 = q.add(&headers(1, END_STREAM, &req("/one")));
        // Stream 3: PADDED + PRIORITY, split over two CONTINUATION frames.
        let b = req("/three");
        let mut payload = vec![4]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight
        payload.extend_from_slice(&b[..3]);
        payload.extend_from_slice(&[0; 4]);
        let s3 = q.add(&frame(
            HEADERS,
            PADDED | PRIORITY_FLAG | END_STREAM,
            3,
            &payload,
        ));
        q.add(&frame(CONTINUATION, 0, 3, &b[3..5]));
        q.add(&frame(CONTINUATION, END_HEADERS, 3, &b[5..]));
        q.add(&frame(PRIORITY, 0, 5, &[0, 0, 0, 3, 16]));
        let s5 = q.add(&frame(
            HEADERS,
            PADDED | END_HEADERS,
            5,
            &[&[2][..], &req("/five"), &[0, 0]].concat(),
        ));
        let mut r = Wire::default();
        r.add(&settings(&[]));
        let ok = block(&[F::Idx(8)], false);
        let h5 = r.add(&headers(5, 0, &ok));
        let h1 = r.add(&frame(HEADERS, 0, 1, &[]));
        r.add(&frame(CONTINUATION, END_HEADERS, 1, &ok));
        r.add(&data(5, 0, 100));
        r.add(&data(1, PADDED, 30));
        let e1 = r.add(&data(1, END_STREAM, 0)) + 9;
        let h3 = r.add(&headers(3, 0, &block(&[F::Idx(13)], false)));
        r.add(&frame(WINDOW_UPDATE, 0, 3, &[0, 0, 1, 0]));
        let e3 = r.add(&headers(3, END_STREAM, &[])) + 9;
        let e5 = r.add(&frame(DATA, END_STREAM | PADDED, 5, &[3, 1, 2, 0, 0, 0])) + 15;
        let mut c = H2Conn::new();
        let ev = push(&mut c, Q, &q.0) + " " + &push(&mut c, R, &r.0);
        let want = format!(
            "Q1@{s1} GET /one Q3@{s3} GET /three Q5@{s5} GET /five \
             R1@{h1}-{e1} s200 g- R3@{h3}-{e3} s404 g- R5@{h5}-{e5} s200 g-"
        );
        assert_eq!(ev, want);
        // Padding longer than the payload, or a CONTINUATION on another stream: that block
        // is lost (and so is the table), framing goes on.
        let mut c = H2Conn::new();
        let mut w = Wire::default();
        let chunks = [
            frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82, 0x84]),
            headers(3, 0, &req("/ok")),
            frame(HEADERS, 0, 5, &req("/x")),
            frame(CONTINUATION, END_HEADERS, 7, &[0x82]),
            headers(9, 0, &block(&[F::Idx(62)], false)),
            headers(11, 0, &req("/y")),
        ];
        let at: Vec<u64> = chunks.iter().map(|f| w.add(f)).collect();
        let ev: Vec<String> = chunks.iter().map(|f| push(&mut c, Q, f)).collect();
        let want = format!("|Q3@{} GET /ok||||Q11@{} GET /y", at[1], at[5]);
        assert_eq!(
            ev.join("|"),
            want,
            "9 refers to an entry its lost block added"
        );
    }

    #[test]
    fn resets_goaway_and_close() {
        let (q, [s1, s3, s5]) = grpc_client();
        let mut c = H2Conn::new();
        push(&mut c, Q, &q.0);
        let mut r = Wire::default();
        r.add(&settings(&[]));
        let e3 = r.add(&rst(3, 0x7)) + 13;
        let g = [&[0, 0, 0, 1][..], &[0, 0, 0, 0], b"bye"].concat();
        let ge = r.add(&frame(GOAWAY, 0, 0, &g)) + 20;
        let ev = push(&mut c, R, &r.0);
        assert_eq!(ev, format!("X3r@{e3} e7 X5r@{ge} e0"));
        let _ = (s1, s3, s5);
        // Stream 1 (below the GOAWAY's last id) still completes; a client RST_STREAM resets.
        let h = r.add(&headers(1, END_STREAM, &block(&[F::Idx(8)], false)));
        assert_eq!(
            push(&mut c, R, &r.0[h as usize..]),
            format!("R1@{h}-{} s200 g-", r.at())
        );
        let at = q.at();
        let mut c2 = H2Conn::new();
        push(&mut c2, Q, &q.0);
        assert_eq!(push(&mut c2, Q, &rst(5, 8)), format!("X5q@{} e8", at + 13));
        // A reset on an unknown or finished stream says nothing; close resets the rest.
        assert_eq!(
            push(&mut c2, Q, &rst(5, 8)) + &push(&mut c2, R, &rst(41, 1)),
            ""
        );
        assert_eq!(close(&mut c2), "X1r@13 e? X3r@13 e?");
        assert_eq!(push(&mut c2, R, &rst(1, 1)) + &close(&mut c2), "", "closed");
        // An RST_STREAM whose payload is in a gap: the code is unknown.
        let mut c3 = H2Conn::new();
        push(&mut c3, Q, &q.0);
        assert_eq!(feed(&mut c3, R, &rst(1, 2)[..10], 13), "X1r@13 e?");
    }

    /// A PROXY protocol header before the preface (v1 with the preface in the same write, v2
    /// alone in a first write): the connection is recognised, offsets count the header, and
    /// the request's exchange carries the header's client.
    #[test]
    fn a_proxy_protocol_header_before_the_preface_is_skipped() {
        use crate::parser::{Opener, Protocol};
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n".to_vec();
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend([203, 0, 113, 8, 10, 0, 0, 1, 0xc8, 0x23, 0, 80]);
        let get = block(&[F::Idx(2), F::Idx(6), F::Idx(4)], false);
        let mut q = Wire::default();
        q.add(PREFACE);
        q.add(&settings(&[]));
        q.add(&headers(1, END_STREAM, &get));
        for (header, alone, port) in [(&v1, false, 51234), (&v2, true, 51235)] {
            let first = [&header[..], &q.0[..]].concat();
            assert_eq!(H2Conn::detect(&first), Some(Opener::Requester));
            let mut c = H2Conn::new();
            let n = header.len();
            let got = if alone {
                push(&mut c, Q, header) + &push(&mut c, Q, &q.0)
            } else {
                push(&mut c, Q, &first)
            };
            // The request starts where its HEADERS frame does, after the header's bytes.
            let at = n + PREFACE.len() + settings(&[]).len();
            assert_eq!(got, format!("Q1@{at} GET /"), "{header:?}");
            assert_eq!(
                c.proxied,
                Some(std::net::SocketAddr::from((
                    [203, 0, 113, 7 + u8::from(alone)],
                    port
                )))
            );
        }
        // Only at the start: a header later in the stream is not one.
        let mut c = H2Conn::new();
        push(&mut c, Q, &q.0);
        assert_eq!(c.proxied, None);
        assert_eq!(
            H2Conn::detect(&[&v1[..], b"GET / HTTP/1.1\r\n"].concat()),
            None
        );
    }

    /// Every exchange of a connection behind a PROXY protocol header carries the client it
    /// named, gRPC calls (`RpcExchange`) as HTTP requests (`HttpExchange`); without a header
    /// neither has one.
    #[test]
    fn exchanges_behind_a_proxy_protocol_header_carry_its_client() {
        let client = std::net::SocketAddr::from(([203, 0, 113, 7], 51234));
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n";
        let (grpc, _) = grpc_client();
        let get = block(&[F::Idx(2), F::Idx(6), F::Idx(4)], false);
        let mut plain = Wire::default();
        plain.add(PREFACE);
        plain.add(&settings(&[]));
        plain.add(&headers(1, END_STREAM, &get));
        for (wire, rpc) in [(&grpc.0, true), (&plain.0, false)] {
            for (header, want) in [(&v1[..], Some(client)), (&[][..], None)] {
                let mut c = H2Conn::new();
                let mut ev = Vec::new();
                c.push(Q, header, header.len() as u64, &mut ev);
                c.push(Q, wire, wire.len() as u64, &mut ev);
                let clients: Vec<_> = ev
                    .into_iter()
                    .filter_map(|e| match c.step(e)? {
                        Step::Request { exchange, .. } => Some(exchange),
                        _ => None,
                    })
                    .map(|x| match x {
                        Exchange::Rpc(r) if rpc => r.client,
                        Exchange::Http(h) if !rpc => h.client,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect();
                let n = if rpc { 3 } else { 1 };
                assert_eq!(clients, vec![want; n], "rpc {rpc}, header {header:?}");
            }
        }
    }

    #[test]
    fn interim_responses_push_promise_and_stream_limits() {
        let mut c = H2Conn::new();
        let get = block(&[F::Idx(2), F::Idx(6), F::Idx(4)], false);
        assert_eq!(push(&mut c, Q, &headers(1, END_STREAM, &get)), "Q1@0 GET /");
        let mut r = Wire::default();
        let h = r.add(&headers(
            1,
            0,
            &block(&[F::Lit(":status", "103"), F::Lit("link", "</a>")], false),
        ));
        // A pushed response: its header blocks feed the server's HPACK table.
        let promise = [
            &[0, 0, 0, 2][..],
            &block(&[F::Idx(2), F::Inc(":path", "/pushed")], false),
        ]
        .concat();
        r.add(&frame(PUSH_PROMISE, END_HEADERS, 1, &promise));
        r.add(&headers(2, 0, &block(&[F::IncN(8, "200")], false)));
        r.add(&headers(1, 0, &block(&[F::Idx(62), F::Idx(63)], false))); // :status 200, :path
        r.add(&data(2, END_STREAM, 3));
        r.add(&data(1, END_STREAM, 3));
        assert_eq!(push(&mut c, R, &r.0), format!("R1@{h}-{} s200 g-", r.at()));
        // Even (server-initiated) streams are never tracked; closed streams are not reopened.
        assert_eq!(
            push(&mut c, Q, &headers(1, END_STREAM, &get)) + &push(&mut c, Q, &headers(2, 0, &get)),
            ""
        );
        assert_eq!(c.open_streams(), 0);
        // More than MAX_STREAMS open: the oldest is dropped with a Reset.
        let mut q = Wire::default();
        let mut ev = Vec::new();
        for i in 0..MAX_STREAMS as u32 + 2 {
            let at = q.add(&headers(3 + 2 * i, 0, &get));
            c.push(Q, &q.0[at as usize..], q.at() - at, &mut ev);
            assert!(c.open_streams() <= MAX_STREAMS);
        }
        let resets = ev
            .iter()
            .filter(|e| matches!(e, E::Reset { .. }))
            .cloned()
            .collect::<Vec<_>>();
        let at = 36 + 12 * MAX_STREAMS as u64;
        assert_eq!(show(&resets), format!("X3q@{at} e? X5q@{} e?", at + 12));
    }

    #[test]
    fn gaps_in_data_are_skipped() {
        let (q, [s1, ..]) = grpc_client();
        let mut c = H2Conn::new();
        push(&mut c, Q, &q.0);
        let mut r = Wire::default();
        let h = r.add(&headers(1, 0, &block(&[F::Idx(8)], false)));
        let d = r.add(&data(1, 0, 16_000));
        r.add(&data(1, 0, 16_000));
        r.add(&headers(
            1,
            END_STREAM,
            &block(&[F::Lit("grpc-status", "0")], false),
        ));
        let (d, rb) = (d as usize, &r.0);
        // Headers + 100 bytes of the first DATA captured, the rest of it in the gap; then
        // 50 bytes of the second one; then the trailers.
        let d2 = d + 9 + 16_000;
        let t = d2 + 9 + 16_000;
        let ev = feed(&mut c, R, &rb[..d + 109], d2 as u64)
            + &feed(&mut c, R, &rb[d2..d2 + 50], 16_009)
            + &push(&mut c, R, &rb[t..]);
        assert_eq!(ev, format!("R1@{h}-{} s200 g0", r.at()));
        let _ = s1;
        // A gap running past a frame's end hides the next frame header: framing is lost. The
        // next chunk starting like frames resyncs (its header blocks decode when they use only
        // static entries, literals and entries added since).
        let mut c = H2Conn::new();
        push(&mut c, Q, &q.0);
        let ev = feed(&mut c, R, &rb[..d + 109], d2 as u64 + 4);
        assert_eq!(ev, format!("Dr@{d2}"));
        assert_eq!(push(&mut c, R, &rb[d2 + 4..t]), "", "mid-frame: no resync");
        let trailers = headers(
            3,
            END_STREAM,
            &block(&[F::Idx(13), F::Lit("grpc-status", "5")], false),
        );
        let at = t as u64;
        let end = at + trailers.len() as u64;
        assert_eq!(push(&mut c, R, &trailers), format!("R3@{at}-{end} s404 g5"));
        assert_eq!(close(&mut c), format!("X1r@{end} e? X5r@{end} e?"));
    }

    #[test]
    fn gaps_in_headers_degrade_gracefully() {
        let (q, [s1, _, s5]) = grpc_client();
        let (r, spans) = grpc_server();
        let qb = &q.0;
        // The request HEADERS of stream 1 cut by a gap: no Request for 1; stream 3 and 5 refer
        // to the entries it added: no Request either.
        let mut c = H2Conn::new();
        let cut = s1 as usize + 30;
        let ev = feed(&mut c, Q, &qb[..cut], frame_end(qb, s1))
            + &push(&mut c, Q, &qb[frame_end(qb, s1) as usize..]);
        assert_eq!(ev, "");
        assert_eq!(c.open_streams(), 3);
        // The responses decode (their table is fine): Responses without Requests are still told.
        let ev = push(&mut c, R, &r.0);
        let [(h1, e1), (h3, e3), (h5, e5)] = spans[..] else {
            unreachable!()
        };
        assert_eq!(
            ev,
            format!("R1@{h1}-{e1} s200 g0 R3@{h3}-{e3} s200 g5 R5@{h5}-{e5} s200 g14")
        );
        // A literal-only request decodes again; a size update to 0 restores full decoding.
        let lit = block(&[F::Idx(3), F::Lit(":path", "/lit")], false);
        let at = q.at();
        assert_eq!(
            push(&mut c, Q, &headers(7, 0, &lit)),
            format!("Q7@{at} POST /lit")
        );
        let at = at + 9 + lit.len() as u64;
        let fresh = block(
            &[F::Size(0), F::Size(4096), F::Idx(3), F::IncN(4, "/new")],
            false,
        );
        let again = block(&[F::Idx(3), F::Idx(62)], false);
        let ev = push(&mut c, Q, &headers(9, 0, &fresh))
            + " "
            + &push(&mut c, Q, &headers(11, 0, &again));
        let at2 = at + 9 + fresh.len() as u64;
        assert_eq!(ev, format!("Q9@{at} POST /new Q11@{at2} POST /new"));
        // The response trailers of stream 1 in a gap: its Response has no grpc-status, and
        // stream 3's response, which refers to the lost entry, decodes nothing: it ends with a
        // Response (its Request was told) without status. Trailers-only 5 refers to lost
        // entries too.
        let mut c = H2Conn::new();
        push(&mut c, Q, qb);
        let t1 = (e1 - 9 - 15) as usize; // the trailers frame: 9 + 15 bytes
        let ev = feed(&mut c, R, &r.0[..t1 + 12], e1) + " " + &push(&mut c, R, &r.0[e1 as usize..]);
        assert_eq!(
            ev,
            format!("R1@{h1}-{e1} s200 g- R3@{h3}-{e3} s- g- R5@{h5}-{e5} s- g-")
        );
        let _ = (s5, h5);
    }

    #[test]
    fn mid_stream_attach() {
        // Attach after the preface, SETTINGS and the first call: stream 3 and 5 refer to table
        // entries never seen; a later call with new literals decodes.
        let (q, [_, s3, _]) = grpc_client();
        let tail = &q.0[s3 as usize..];
        assert!(looks_like_frames(tail) && !looks_like_preface(tail));
        let mut c = H2Conn::new();
        assert_eq!(push(&mut c, Q, tail), "");
        let at = tail.len() as u64;
        let b7 = block(&[F::Idx(3), F::IncN(4, "/late")], true);
        assert_eq!(
            push(&mut c, Q, &headers(7, 0, &b7)),
            format!("Q7@{at} POST /late")
        );
        let at = at + 9 + b7.len() as u64;
        let b9 = block(&[F::Idx(3), F::Idx(62)], true);
        assert_eq!(
            push(&mut c, Q, &headers(9, 0, &b9)),
            format!("Q9@{at} POST /late")
        );
    }

    #[test]
    fn garbage_desyncs_and_never_panics() {
        // Not frames at all: a desync, no resync on junk, resync on frames.
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/1.1\r\n",
        ] {
            let mut c = H2Conn::new();
            assert_eq!(push(&mut c, Q, junk), "Dq@0", "{junk:?}");
            assert_eq!(push(&mut c, Q, b"more junk"), "");
            let get = headers(1, 0, &block(&[F::Idx(2), F::Idx(4)], false));
            assert_eq!(
                push(&mut c, Q, &get),
                format!("Q1@{} GET /", junk.len() + 9)
            );
            assert!(!looks_like_frames(junk));
        }
        let mut c = H2Conn::new();
        assert_eq!(
            push(&mut c, R, b"HTTP/1.1 200 OK\r\n\r\n"),
            "Dr@0",
            "not frames"
        );
        // Invalid frame headers: SETTINGS on a stream, a 3-byte RST_STREAM, DATA on stream 0.
        for bad in [
            frame(SETTINGS, 0, 1, &[]),
            frame(RST_STREAM, 0, 1, &[0; 3]),
            frame(DATA, 0, 0, &[]),
        ] {
            let mut c = H2Conn::new();
            assert_eq!(push(&mut c, R, &bad), "Dr@0");
            assert!(!looks_like_frames(&bad));
        }
        assert!(looks_like_preface(PREFACE) && looks_like_preface(&PREFACE[..10]));
        assert!(!looks_like_preface(b"PRI") && !looks_like_preface(b"PRI * HTTP/1.1\r\n"));
        assert!(
            looks_like_frames(&settings(&[(4, 65_535)]))
                && looks_like_frames(&frame(PING, 0, 0, &[0; 8])[..9])
        );
        let mut rng = Rng(42);
        let (q, r) = (grpc_client().0.0, grpc_server().0.0);
        for round in 0..3000 {
            let mut c = H2Conn::new();
            let mut out = Vec::new();
            for _ in 0..rng.below(30) {
                let dir = [Q, R][rng.below(2)];
                let src = [&q, &r][rng.below(2)];
                let mut data = Vec::new();
                for _ in 0..rng.below(5) {
                    match rng.below(4) {
                        0 => data.extend(rng.bytes(40)),
                        1 => {
                            let ty = rng.below(11) as u8;
                            let body = rng.bytes(30);
                            data.extend(frame(
                                ty,
                                rng.below(256) as u8,
                                rng.below(8) as u32,
                                &body,
                            ));
                        }
                        _ => {
                            let a = rng.below(src.len());
                            data.extend_from_slice(&src[a..(a + rng.below(200)).min(src.len())]);
                        }
                    }
                }
                let len = match rng.below(4) {
                    0 => (data.len() + rng.below(100_000)) as u64,
                    1 if round % 5 == 0 => u64::MAX >> rng.below(64),
                    _ => data.len() as u64,
                };
                c.push(dir, &data, len, &mut out);
                assert!(c.open_streams() <= MAX_STREAMS);
                for d in 0..2 {
                    assert!(c.conn.block_buf[d].len() <= MAX_HEADER_BLOCK);
                    assert!(c.conn.hpack[d].size <= MAX_TABLE_SIZE);
                }
            }
            c.close(&mut out);
        }
    }

    #[test]
    fn head_fields() {
        let mut c = H2Conn::new();
        let long = "a".repeat(MAX_FIELD + 10);
        let b = block(
            &[
                F::Lit(":method", "CONNECT"),
                F::NeverN(38, "example.com:443"),
                F::Lit("user-agent", &long),
                F::Lit("User-Agent", "second"),
            ],
            true,
        );
        let mut out = Vec::new();
        c.push(Q, &headers(1, 0, &b), 9 + b.len() as u64, &mut out);
        let want = H2Request {
            method: "CONNECT".into(),
            authority: Some("example.com:443".into()),
            user_agent: Some(long[..MAX_FIELD].into()),
            ..Default::default()
        };
        assert_eq!(
            out,
            [E::Request {
                stream: 1,
                start: 0,
                head: want
            }]
        );
        // No :method: not a request head (nor will its trailers be).
        assert_eq!(
            push(&mut c, Q, &headers(3, 0, &block(&[F::Idx(4)], false))),
            ""
        );
        assert_eq!(
            push(&mut c, Q, &headers(3, 0, &block(&[F::Idx(2)], false))),
            ""
        );
        // A malformed :status is no status; a percent-escape cut short stays as it is.
        let r = block(
            &[
                F::Lit(":status", "2xx"),
                F::Lit("grpc-status", "-1"),
                F::Lit("grpc-message", "50%"),
            ],
            false,
        );
        let mut out = Vec::new();
        c.push(R, &headers(1, END_STREAM, &r), 9 + r.len() as u64, &mut out);
        let E::Response { head, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            head,
            &H2Response {
                grpc_message: Some("50%".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn oversized_header_blocks_are_dropped() {
        let mut c = H2Conn::new();
        let big = block(
            &[F::Idx(2), F::Idx(4), F::Lit("x-big", &"v".repeat(40_000))],
            false,
        );
        let mut q = Wire::default();
        q.add(&frame(HEADERS, 0, 1, &big));
        q.add(&frame(CONTINUATION, 0, 1, &big));
        q.add(&frame(CONTINUATION, END_HEADERS, 1, &big));
        let next = q.add(&headers(3, 0, &block(&[F::Idx(2), F::Idx(4)], false)));
        assert_eq!(
            show(&split(&mut c, Q, &q.0, &[1000; 200])),
            format!("Q3@{next} GET /")
        );
        assert!(c.conn.block_buf[0].capacity() <= 2 * MAX_HEADER_BLOCK);
        // Offsets saturate; len < data.len() uses only data[..len].
        let mut c = H2Conn::new();
        let get = headers(1, 0, &block(&[F::Idx(2), F::Idx(4)], false));
        assert_eq!(
            feed(&mut c, Q, &[&get[..], b"junk"].concat(), get.len() as u64),
            "Q1@0 GET /"
        );
        assert_eq!(
            feed(&mut c, Q, &data(1, 0, 10), u64::MAX),
            "Dq@30",
            "a gap past a frame"
        );
        assert_eq!(c.framers[0].offset, u64::MAX);
    }

    /// A CONTINUATION flood (RFC 9113 §6.10 puts no limit on a header block's frames): a
    /// HEADERS without END_HEADERS, then megabytes of CONTINUATION frames, fed as captured
    /// heads of 512 bytes. What the parser holds (and is charged for) stays bounded during the
    /// flood, is given back once the block ends, and the connection's next request decodes.
    #[test]
    fn a_continuation_flood_holds_a_bounded_buffer_and_gives_it_back() {
        let mut c = H2Conn::new();
        assert_eq!(Parser::held(&c), 0);
        let mut q = Wire::default();
        q.add(PREFACE);
        q.add(&frame(
            HEADERS,
            0,
            1,
            &block(&[F::Idx(2), F::Idx(4)], false),
        ));
        let filler = vec![0x40u8; 4000];
        for _ in 0..2_000 {
            q.add(&frame(CONTINUATION, 0, 1, &filler)); // 8 MB in all
        }
        q.add(&frame(CONTINUATION, END_HEADERS, 1, &[]));
        let next = q.add(&headers(
            3,
            END_STREAM,
            &block(&[F::Idx(2), F::Idx(4)], false),
        ));
        let (mut out, mut peak) = (Vec::new(), 0);
        for chunk in q.0.chunks(512) {
            c.push(Q, chunk, chunk.len() as u64, &mut out);
            peak = peak.max(Parser::held(&c));
        }
        // The block buffer (at most MAX_HEADER_BLOCK, doubled by growth), one frame's payload
        // and two empty decoders.
        let bound = 2 * MAX_HEADER_BLOCK + 2 * filler.len() + 2 * 1024;
        assert!(
            peak <= bound,
            "held {peak} bytes during the flood (bound {bound})"
        );
        assert!(
            peak >= MAX_HEADER_BLOCK,
            "the flood was buffered up to the cap: {peak}"
        );
        let held = Parser::held(&c);
        assert!(
            held <= 2 * crate::KEEP_CAPACITY,
            "{held} bytes held after the flood"
        );
        assert_eq!(show(&out), format!("Q3@{next} GET /"));
        close(&mut c);
        assert_eq!(Parser::held(&c), 0);
    }
}
