//! Fuzz the PostgreSQL parser. The input is a sequence of chunks fed to one connection, each
//! introduced by two control bytes: `ctl` (bit 0: direction; bits 1-2: 2 = a gap of up to
//! ~30 KB after the data, 3 = a huge gap, else none; bits 3-7: gap scale) and the data
//! length. Then the connection is closed. Nothing may panic, each direction's events must
//! name non-decreasing stream offsets, and the unanswered exchanges stay bounded.
#![no_main]

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
    let mut last = [0u64; 2]; // per direction: offset reached by the events so far
    let mut rest = input;
    while let [ctl, n, tail @ ..] = rest {
        let (data, tail) = tail.split_at(usize::from(*n).min(tail.len()));
        rest = tail;
        let dir = [Dir::Request, Dir::Response][usize::from(ctl & 1)];
        let gap = match (ctl >> 1) & 3 {
            2 => u64::from(ctl >> 3) * 977,
            3 => u64::MAX >> (ctl >> 3),
            _ => 0,
        };
        conn.push(dir, data, (data.len() as u64).saturating_add(gap), &mut out);
        assert!(conn.pending_queries() <= postgres::MAX_PENDING);
        for ev in out.drain(..) {
            let (dir, start, end) = match ev {
                PgEvent::Query { start, end, .. } => (Dir::Request, start, end),
                PgEvent::Result { start, end, .. } => (Dir::Response, start, end),
                PgEvent::Startup { .. } => continue,
                PgEvent::Desync { dir, offset } => (dir, offset, offset),
            };
            let last = &mut last[dir as usize];
            assert!(
                *last <= start && start <= end,
                "{dir:?} {start}-{end} {last}"
            );
            *last = end;
        }
    }
    conn.close(&mut out);
    assert!(out.is_empty());
});
