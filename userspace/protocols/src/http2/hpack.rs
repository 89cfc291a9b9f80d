//! HPACK (RFC 7541): static and dynamic tables, Huffman code, one decoder per direction, with
//! positional knowledge after a loss (see the parent module).

use std::collections::VecDeque;

/// Cap on a dynamic table's size (RFC 7541 §4.1 accounting), whatever the peers negotiated.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

/// RFC 7541 Appendix A.
pub(super) const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of RFC 7541 Appendix B, symbols 0..=255 then EOS (256). The code is canonical:
/// codes are assigned in order of (length, symbol), which [`HUFFMAN`] rebuilds.
pub(super) const HUFFMAN_LEN: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// Canonical-code decoding tables, indexed by code length (1..=30).
pub(super) struct Huffman {
    /// The first code of each length.
    pub(super) first: [u32; 31],
    /// How many codes have each length.
    pub(super) count: [u32; 31],
    /// Index in `symbols` of the first symbol of each length.
    pub(super) offset: [u32; 31],
    /// Symbols sorted by (code length, symbol).
    pub(super) symbols: [u16; 257],
}

pub(super) const HUFFMAN: Huffman = {
    let mut h = Huffman {
        first: [0; 31],
        count: [0; 31],
        offset: [0; 31],
        symbols: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        h.count[HUFFMAN_LEN[s] as usize] += 1;
        s += 1;
    }
    let (mut len, mut at) = (1, 0);
    while len <= 30 {
        h.first[len] = (h.first[len - 1] + h.count[len - 1]) << 1;
        h.offset[len] = at;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_LEN[s] as usize == len {
                h.symbols[at as usize] = s as u16;
                at += 1;
            }
            s += 1;
        }
        len += 1;
    }
    h
};

/// Decode a Huffman-coded string into `out`; `None` if it is invalid (EOS inside it, padding
/// longer than 7 bits or not all ones).
pub(super) fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let h = &HUFFMAN;
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in src {
        for bit in (0..8).rev() {
            code = code << 1 | u32::from(byte >> bit & 1);
            len += 1;
            let i = code.wrapping_sub(h.first[len]);
            if i < h.count[len] {
                let sym = h.symbols[(h.offset[len] + i) as usize];
                out.push(u8::try_from(sym).ok()?); // EOS (256) may not appear
                (code, len) = (0, 0);
            } else if len == 30 {
                return None;
            }
        }
    }
    (len <= 7 && code == (1 << len) - 1).then_some(())
}

/// An HPACK integer with a `prefix`-bit prefix at `b[*pos..]` (RFC 7541 §5.1).
pub(super) fn hpack_int(b: &[u8], pos: &mut usize, prefix: u32) -> Option<usize> {
    let mask = (1u8 << prefix) - 1;
    let first = *b.get(*pos)? & mask;
    *pos += 1;
    if first < mask {
        return Some(usize::from(first));
    }
    let mut v = u64::from(mask);
    for shift in [0, 7, 14, 21, 28] {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v += u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return usize::try_from(v).ok();
        }
    }
    None
}

/// An HPACK string literal at `b[*pos..]` (RFC 7541 §5.2): raw from `b`, or Huffman-decoded
/// into `scratch`.
pub(super) fn hpack_string<'a>(
    b: &'a [u8],
    pos: &mut usize,
    scratch: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    let huffman = *b.get(*pos)? & 0x80 != 0;
    let len = hpack_int(b, pos, 7)?;
    let raw = b.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    if !huffman {
        return Some(raw);
    }
    scratch.clear();
    huffman_decode(raw, scratch)?;
    Some(scratch)
}

/// A dynamic table entry: name then value in `buf`; `name_len` is `None` for a placeholder
/// whose name referred to an entry lost earlier (its `size` is then a lower bound).
pub(super) struct Entry {
    pub(super) buf: Vec<u8>,
    pub(super) name_len: Option<usize>,
    pub(super) size: usize,
}

/// Outcome of decoding a header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// Every field was decoded.
    Ok,
    /// Some field referred to a dynamic entry that is not known; the table is in step.
    Unknown,
    /// Malformed: the table's state is lost.
    Broken,
}

/// One direction's HPACK decoder. Its table holds, newest first, the entries added since the
/// last loss; entry `i` here is always entry `i` of the encoder's table (the encoder's may be
/// longer: those are unknown). Over-keeping entries is harmless, so a placeholder's lower-bound
/// size and a too-large assumed max size never misplace an index.
pub(super) struct Hpack {
    pub(super) table: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    pub(super) size: usize,
    /// Sum of the entries' buffer capacities (what they hold on the heap).
    pub(super) heap: usize,
    /// Current maximum size (last size update, capped).
    pub(super) max: usize,
    /// An evicted entry's buffer, reused for the next insertion.
    pub(super) spare: Vec<u8>,
    /// Huffman output for a name and a value.
    pub(super) name: Vec<u8>,
    pub(super) value: Vec<u8>,
}

impl Hpack {
    pub(super) fn new() -> Self {
        Hpack {
            table: VecDeque::new(),
            size: 0,
            heap: 0,
            max: 4096,
            spare: Vec::new(),
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// The table's contents are no longer known (a block was missed or cut).
    pub(super) fn lose(&mut self) {
        self.table.clear();
        self.size = 0;
        self.heap = 0;
    }

    /// Heap bytes held: the entries, the table's slots and the reused buffers.
    pub(super) fn held(&self) -> usize {
        self.heap
            + crate::slots::<Entry>(self.table.capacity())
            + self.spare.capacity()
            + self.name.capacity()
            + self.value.capacity()
    }

    /// The decoding endpoint advertised SETTINGS_HEADER_TABLE_SIZE = `limit`.
    pub(super) fn set_limit(&mut self, limit: usize) {
        if self.max > limit {
            self.max = limit;
            self.evict(0);
        }
    }

    /// Evict oldest entries until `room` more bytes fit.
    pub(super) fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some(e) = self.table.pop_back() else {
                break;
            };
            self.size -= e.size;
            self.heap -= e.buf.capacity();
            self.spare = e.buf;
        }
    }

    pub(super) fn insert(&mut self, e: Entry) {
        if e.size > self.max {
            self.evict(self.max + 1); // empties the table (RFC 7541 §4.4)
            self.spare = e.buf;
            return;
        }
        self.evict(e.size);
        self.size += e.size;
        self.heap += e.buf.capacity();
        self.table.push_front(e);
    }

    /// Entry `idx` (1-based over static then dynamic): `None` for index 0 (invalid), `Some(None)`
    /// when it is not known.
    pub(super) fn lookup(table: &VecDeque<Entry>, idx: usize) -> Option<Option<(&[u8], &[u8])>> {
        match idx {
            0 => None,
            1..=61 => {
                let (n, v) = STATIC_TABLE[idx - 1];
                Some(Some((n.as_bytes(), v.as_bytes())))
            }
            _ => Some(
                (table.get(idx - 62))
                    .and_then(|e| e.name_len.map(|n| e.buf.split_at(n.min(e.buf.len())))),
            ),
        }
    }

    /// Decode `block`, calling `f` with each field (in order; when the outcome is not `Ok` the
    /// fields passed are incomplete).
    pub(super) fn decode(&mut self, block: &[u8], f: &mut impl FnMut(&[u8], &[u8])) -> Decoded {
        match self.walk(block, f) {
            Some(false) => Decoded::Ok,
            Some(true) => Decoded::Unknown,
            None => {
                self.lose();
                Decoded::Broken
            }
        }
    }

    /// `Some(unknown)`, or `None` when malformed.
    pub(super) fn walk(&mut self, block: &[u8], f: &mut impl FnMut(&[u8], &[u8])) -> Option<bool> {
        let (mut pos, mut unknown) = (0, false);
        while let Some(&b) = block.get(pos) {
            if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let idx = hpack_int(block, &mut pos, 7)?;
                match Self::lookup(&self.table, idx)? {
                    Some((n, v)) => f(n, v),
                    None => unknown = true,
                }
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                self.max = hpack_int(block, &mut pos, 5)?.min(MAX_TABLE_SIZE);
                self.evict(0);
            } else {
                // Literal field with incremental indexing (§6.2.1), without indexing or never
                // indexed (§6.2.2, §6.2.3).
                let indexing = b & 0x40 != 0;
                let idx = hpack_int(block, &mut pos, if indexing { 6 } else { 4 })?;
                let Hpack {
                    table,
                    name: name_buf,
                    value: value_buf,
                    spare,
                    ..
                } = self;
                let name = match idx {
                    0 => Some(hpack_string(block, &mut pos, name_buf)?),
                    _ => Self::lookup(table, idx)?.map(|(n, _)| n),
                };
                let value = hpack_string(block, &mut pos, value_buf)?;
                match name {
                    Some(n) => f(n, value),
                    None => unknown = true,
                }
                if indexing {
                    let mut buf = std::mem::take(spare);
                    buf.clear();
                    buf.extend_from_slice(name.unwrap_or_default());
                    buf.extend_from_slice(value);
                    let name_len = name.map(<[u8]>::len);
                    let size = buf.len() + 32;
                    self.insert(Entry {
                        buf,
                        name_len,
                        size,
                    });
                }
            }
        }
        Some(unknown)
    }
}
