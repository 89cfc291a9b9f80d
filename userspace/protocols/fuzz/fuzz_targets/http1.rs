//! Fuzz the HTTP/1.x parser. The input is a sequence of chunks fed to one connection, each
//! introduced by two control bytes: `ctl` (bit 0: direction; bits 1-2: 2 = a gap after the data,
//! 3 = a huge gap, else none; bits 3-7: gap scale) and the data length. Then the connection is
//! closed. Nothing may panic, and each direction's events must name non-decreasing offsets.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::Dir;
use ztrace_protocols::http1::{Http1Conn, Http1Event};

fuzz_target!(|input: &[u8]| {
    let mut conn = Http1Conn::new();
    let mut out = Vec::new();
    let mut last = [0u64; 2];
    let mut check = |out: &mut Vec<Http1Event>| {
        for ev in out.drain(..) {
            let (dir, start, end) = match ev {
                Http1Event::Request { start, .. } => (Dir::Request, start, start),
                Http1Event::RequestComplete { start, end, .. } => (Dir::Request, start, end),
                Http1Event::Response { start, .. } => (Dir::Response, start, start),
                Http1Event::ResponseComplete { start, end, .. } => (Dir::Response, start, end),
                Http1Event::Desync { dir, offset } => (dir, offset, offset),
            };
            assert!(start <= end, "{dir:?} {start}-{end}");
            let last = &mut last[dir as usize];
            *last = (*last).max(end);
        }
    };
    for (dir, data, len) in common::chunks(input) {
        conn.push(dir, data, len, &mut out);
        check(&mut out);
    }
    conn.close(&mut out);
    check(&mut out);
});
