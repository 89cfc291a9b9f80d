//! Fuzz target for `ztrace_protocols::http2`: the input is a script of chunks fed to an
//! `H2Conn` (both directions), then closed. Nothing may panic.
//!
//! An odd first byte starts the Request direction with the client preface, so that the fuzzer
//! reaches frames sooner. Script: repeated `[ctl, size, bytes…]`: `ctl` bit 0 = direction,
//! bits 1..=2 = how `len` relates to the chunk (0 exact, 1 a small gap, 2 a large gap, 3
//! shorter than the data or `u64::MAX`), bits 3..=7 scale the gap; `size` (+ 256 × bits 6..=7
//! of `ctl`) = chunk bytes.

#![no_main]

#[path = "common.rs"]
mod common;

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
    for (dir, chunk, len) in common::sized_chunks(rest) {
        conn.push(dir, chunk, len, &mut out);
        assert!(conn.open_streams() <= http2::MAX_STREAMS);
        out.clear();
    }
    conn.close(&mut out);
});
