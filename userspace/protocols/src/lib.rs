//! Protocol parsers: pure functions over the byte streams ztrace captures (no I/O, no clocks, no
//! globals), fed one syscall's worth of bytes at a time.
//!
//! Common shape of every parser, so the assembler can drive them alike:
//! - one parser value per connection, fed both directions with `push(dir, data, len, out)`, where
//!   `data` is the captured head of a syscall's bytes and `len >= data.len()` the true count (the
//!   rest is a *gap* of unknown bytes); stream offsets count `len`;
//! - events name messages by the stream offset of their first byte (`start`) and one past their
//!   last (`end`), so the caller can map them back to the syscalls that moved them;
//! - unparseable input yields a `Desync` and the parser resynchronises; nothing panics and memory
//!   is bounded.

pub mod dns;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;

pub use http1::Dir;
