//! Fuzz target for `ztrace_protocols::dns`: the input is both one datagram (for
//! `parse_message` / `looks_like_query`) and a script of DNS-over-TCP chunks fed to a
//! `DnsTcpConn`, then closed. Nothing may panic.
//!
//! Script: repeated `[ctl, size, bytes…]`: `ctl` bit 0 = direction, bits 1..=2 = how `len`
//! relates to the chunk (0 exact, 1 a small gap, 2 a large gap, 3 shorter than the data or
//! `u64::MAX`), bits 3..=7 scale the gap; `size` (+ 256 × bits 6..=7 of `ctl`) = chunk bytes.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
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
    for (dir, chunk, len) in common::sized_chunks(data) {
        conn.push(dir, chunk, len, &mut out);
        out.clear();
    }
    conn.close(&mut out);
});
