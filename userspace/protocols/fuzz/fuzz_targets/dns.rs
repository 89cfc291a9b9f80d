//! Fuzz target for `ztrace_protocols::dns`: the input is both one datagram (for
//! `parse_message` / `looks_like_query`) and a script of DNS-over-TCP chunks fed to a
//! `DnsTcpConn`, then closed. Nothing may panic.
//!
//! Script: repeated `[ctl, size, bytes…]`: `ctl` bit 0 = direction, bits 1..=2 = how `len`
//! relates to the chunk (0 exact, 1 a small gap, 2 a large gap, 3 shorter than the data or
//! `u64::MAX`), bits 3..=7 scale the gap; `size` (+ 256 × bits 6..=7 of `ctl`) = chunk bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::Dir;
use ztrace_protocols::dns::{self, DnsTcpConn};

fuzz_target!(|data: &[u8]| {
    if let Some(m) = dns::parse_message(data) {
        let _ = dns::rcode_name(m.rcode);
        if let Some((name, qtype)) = &m.question {
            assert!(name.len() <= 4 * dns::MAX_NAME);
            let _ = dns::qtype_name(*qtype);
        }
    }
    let _ = dns::looks_like_query(data);

    let mut conn = DnsTcpConn::new();
    let mut out = Vec::new();
    let mut rest = data;
    while let [ctl, size, tail @ ..] = rest {
        let dir = if ctl & 1 == 0 {
            Dir::Request
        } else {
            Dir::Response
        };
        let n = (usize::from(*size) | usize::from(ctl >> 6) << 8).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        let scale = u64::from(ctl >> 3);
        let len = match ctl >> 1 & 3 {
            0 => n as u64,
            1 => n as u64 + scale * 7,
            2 => n as u64 + (scale << 12),
            _ if ctl & 0x80 != 0 => u64::MAX,
            _ => n as u64 / 2,
        };
        conn.push(dir, chunk, len, &mut out);
        out.clear();
        rest = tail;
    }
    conn.close(&mut out);
});
