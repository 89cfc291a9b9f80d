//! What the fuzz targets share: decoding the input into a script of chunks fed to one
//! connection, and checking the stream offsets its events name. Included by each target with
//! `#[path = "common.rs"] mod common;` (it is not a target itself).
#![allow(dead_code)] // each target uses only part of it

use ztrace_protocols::Dir;

/// The chunks of `input`, each `(dir, data, len)` as `push` takes them. Each is introduced
/// by two control bytes: `ctl` (bit 0: direction; bits 1-2: 2 = a gap of up to ~30 KB after
/// the data, 3 = a huge gap, else none; bits 3-7: gap scale) and the data length.
pub fn chunks(input: &[u8]) -> impl Iterator<Item = (Dir, &[u8], u64)> {
    let mut rest = input;
    std::iter::from_fn(move || {
        let [ctl, n, tail @ ..] = rest else {
            return None;
        };
        let (data, tail) = tail.split_at(usize::from(*n).min(tail.len()));
        rest = tail;
        let dir = [Dir::Request, Dir::Response][usize::from(ctl & 1)];
        let gap = match (ctl >> 1) & 3 {
            2 => u64::from(ctl >> 3) * 977,
            3 => u64::MAX >> (ctl >> 3),
            _ => 0,
        };
        Some((dir, data, (data.len() as u64).saturating_add(gap)))
    })
}

/// The chunks of `script`, each `(dir, data, len)` as `push` takes them: repeated
/// `[ctl, size, bytes…]`: `ctl` bit 0 = direction, bits 1..=2 = how `len` relates to the
/// chunk (0 exact, 1 a small gap, 2 a large gap, 3 shorter than the data or `u64::MAX`),
/// bits 3..=7 scale the gap; `size` (+ 256 × bits 6..=7 of `ctl`) = chunk bytes.
pub fn sized_chunks(script: &[u8]) -> impl Iterator<Item = (Dir, &[u8], u64)> {
    let mut rest = script;
    std::iter::from_fn(move || {
        let [ctl, size, tail @ ..] = rest else {
            return None;
        };
        let dir = if ctl & 1 == 0 {
            Dir::Request
        } else {
            Dir::Response
        };
        let n = (usize::from(*size) | usize::from(ctl >> 6) << 8).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let scale = u64::from(ctl >> 3);
        let len = match ctl >> 1 & 3 {
            0 => n as u64,
            1 => n as u64 + scale * 7,
            2 => n as u64 + (scale << 12),
            _ if ctl & 0x80 != 0 => u64::MAX,
            _ => n as u64 / 2,
        };
        Some((dir, chunk, len))
    })
}

/// Per direction, the stream offset reached by the events so far.
#[derive(Default)]
pub struct Offsets([u64; 2]);

impl Offsets {
    /// An event spanning `[start, end)` of `dir`'s stream: it must not go back.
    pub fn check(&mut self, dir: Dir, start: u64, end: u64) {
        let last = &mut self.0[dir as usize];
        assert!(
            *last <= start && start <= end,
            "{dir:?} {start}-{end} {last}"
        );
        *last = end;
    }
}
