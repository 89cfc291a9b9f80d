//! Protocol parsers: pure functions over the byte streams ztrace captures (no I/O, no clocks, no
//! globals), fed one syscall's worth of bytes at a time.
//!
//! Common shape of every parser, so the assembler can drive them alike (the traits are in
//! [`parser`]):
//! - one parser value per connection, fed both directions with `push(dir, data, len, out)`, where
//!   `data` is the captured head of a syscall's bytes and `len >= data.len()` the true count (the
//!   rest is a *gap* of unknown bytes); stream offsets count `len`;
//! - events name messages by the stream offset of their first byte (`start`) and one past their
//!   last (`end`), so the caller can map them back to the syscalls that moved them;
//! - unparseable input yields a `Desync` and the parser resynchronises; nothing panics and memory
//!   is bounded;
//! - each protocol says how it is recognised and what its events mean for an exchange
//!   ([`Protocol`]), in the types of [`exchange`]; the `registry!` in [`parser`] lists them.
//!
//! This crate must not do I/O, read clocks or know about spans, linking or attribute names.

mod dbconn;
pub mod dns;
pub mod exchange;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod parser;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod sql;
#[cfg(test)]
pub(crate) mod testutil;

pub use http1::Dir;
pub use parser::{
    AnyParser, Opener, Parser, ParserSet, Protocol, Step, TraceContext, Transport, Update,
};

/// Capacity a parser buffer keeps for reuse once it is emptied; a larger one is freed, so that
/// a connection which once buffered a large head does not keep holding it (and being charged
/// for it by the daemon's memory budget, see [`Parser::held`]) while it idles.
pub(crate) const KEEP_CAPACITY: usize = 4096;

/// Empties a parser buffer, freeing it when it grew beyond [`KEEP_CAPACITY`].
pub(crate) fn empty(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_CAPACITY {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// Heap bytes of a `VecDeque` or `Vec` of `T` with this capacity.
pub(crate) fn slots<T>(capacity: usize) -> usize {
    capacity.saturating_mul(std::mem::size_of::<T>())
}

/// One push's bytes for a stream now at `offset`: `len` cut so that offsets saturate instead
/// of wrapping, `data` cut to its first `len` bytes, and the gap (unknown bytes) after them.
pub(crate) fn clamp(data: &[u8], len: u64, offset: u64) -> (&[u8], u64) {
    let len = len.min(u64::MAX - offset); // offsets saturate instead of wrapping
    let data = &data[..data.len().min(usize::try_from(len).unwrap_or(usize::MAX))];
    (data, len - data.len() as u64)
}

/// Skip the rest of a length-delimited body, `*left` bytes: first of the `avail` captured
/// bytes at hand, then of the `gap` (unknown bytes) after them. Returns how many captured
/// bytes and how many gap bytes it took; `*left` keeps what is still to skip.
pub(crate) fn skip(left: &mut u64, avail: usize, gap: u64) -> (usize, u64) {
    let n = (avail as u64).min(*left);
    let g = gap.min(*left - n); // a gap inside a body is fine
    *left -= n + g;
    (n as usize, g)
}
