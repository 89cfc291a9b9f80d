//! Fuzz the PostgreSQL parser. The input is a sequence of chunks fed to one connection, each
//! introduced by two control bytes: `ctl` (bit 0: direction; bits 1-2: 2 = a gap of up to
//! ~30 KB after the data, 3 = a huge gap, else none; bits 3-7: gap scale) and the data
//! length. Then the connection is closed. Nothing may panic, each direction's events must
//! name non-decreasing stream offsets, and the unanswered exchanges stay bounded.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::Dir;
use ztrace_protocols::postgres::{self, PgConn, PgEvent};

fuzz_target!(|input: &[u8]| {
    let _ = (
        postgres::looks_like_startup(input),
        postgres::looks_like_query(input),
    );
    let mut conn = PgConn::new();
    let mut out = Vec::new();
    let mut offsets = common::Offsets::default();
    for (dir, data, len) in common::chunks(input) {
        conn.push(dir, data, len, &mut out);
        assert!(conn.pending_queries() <= postgres::MAX_PENDING);
        for ev in out.drain(..) {
            let (dir, start, end) = match ev {
                PgEvent::Query { start, end, .. } => (Dir::Request, start, end),
                PgEvent::Result { start, end, .. } => (Dir::Response, start, end),
                PgEvent::Startup { .. } => continue,
                PgEvent::Desync { dir, offset } => (dir, offset, offset),
            };
            offsets.check(dir, start, end);
        }
    }
    conn.close(&mut out);
    assert!(out.is_empty());
});
