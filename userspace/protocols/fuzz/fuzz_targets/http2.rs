//! Fuzz target for `ztrace_protocols::http2`: the input is a script of chunks fed to an
//! `H2Conn` (both directions), then closed. Nothing may panic.
//!
//! An odd first byte starts the Request direction with the client preface, so that the fuzzer
//! reaches frames sooner. Script: repeated `[ctl, size, bytes…]`: `ctl` bit 0 = direction,
//! bits 1..=2 = how `len` relates to the chunk (0 exact, 1 a small gap, 2 a large gap, 3
//! shorter than the data or `u64::MAX`), bits 3..=7 scale the gap; `size` (+ 256 × bits 6..=7
//! of `ctl`) = chunk bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::Dir;
use ztrace_protocols::http2::{self, H2Conn};

fuzz_target!(|data: &[u8]| {
    let _ = http2::looks_like_preface(data);
    let _ = http2::looks_like_frames(data);

    let mut conn = H2Conn::new();
    let mut out = Vec::new();
    let mut rest = data;
    if let [first, tail @ ..] = data {
        if first & 1 == 1 {
            conn.push(Dir::Request, http2::PREFACE, 24, &mut out);
        }
        rest = tail;
    }
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
        assert!(conn.open_streams() <= http2::MAX_STREAMS);
        out.clear();
        rest = tail;
    }
    conn.close(&mut out);
});
