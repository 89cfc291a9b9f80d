//! Fuzz the Redis parser. The input is a sequence of chunks fed to one connection, each
//! introduced by two control bytes: `ctl` (bit 0: direction; bits 1-2: 2 = a gap of up to
//! ~30 KB after the data, 3 = a huge gap, else none; bits 3-7: gap scale) and the data
//! length. Then the connection is closed. Nothing may panic, and each direction's events
//! must name non-decreasing stream offsets.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::Dir;
use ztrace_protocols::redis::{RedisConn, RedisEvent};

fuzz_target!(|input: &[u8]| {
    let mut conn = RedisConn::new();
    let mut out = Vec::new();
    let mut offsets = common::Offsets::default();
    for (dir, data, len) in common::chunks(input) {
        conn.push(dir, data, len, &mut out);
        for ev in out.drain(..) {
            let (dir, start, end) = match ev {
                RedisEvent::Command { start, end, .. } => (Dir::Request, start, end),
                RedisEvent::Reply { start, end, .. } => (Dir::Response, start, end),
                RedisEvent::Desync { dir, offset } => (dir, offset, offset),
            };
            offsets.check(dir, start, end);
        }
    }
    conn.close(&mut out);
    assert!(out.is_empty());
});
