//! Streaming HTTP/2 parser (h2c with prior knowledge, h2 after TLS, gRPC) over captured
//! syscall chunks.
//!
//! This module owns ztrace's HTTP/2 framing and HPACK decoding: it turns the chunks captured on
//! one connection (both directions) into [`H2Event`]s — request heads, response ends (with
//! status and gRPC status from trailers), stream resets and desyncs — with stream offsets.
//! It parses the client preface, every RFC 9113 frame type (unknown types are skipped), and
//! header blocks (HEADERS + CONTINUATION, PUSH_PROMISE) with its own RFC 7541 decoder: one
//! per direction, static table, dynamic table and Huffman code.
//!
//! Pure: no I/O, no clocks, no globals; never panics. Memory is bounded: at most
//! [`MAX_STREAMS`] tracked streams, header blocks of at most [`MAX_HEADER_BLOCK`] bytes, dynamic
//! tables of at most [`MAX_TABLE_SIZE`] (RFC 7541 size), header values kept or reported cut at
//! [`MAX_FIELD`] bytes. DATA payloads are never copied; a frame is copied only when it spans
//! chunks and its payload matters (header blocks, SETTINGS, RST_STREAM, GOAWAY's first bytes).
//!
//! Capture gaps (`len > data.len()`): a gap inside a frame's payload is fine, the frame is
//! followed by its length. A gap in a DATA payload loses nothing. A gap in a header block
//! makes that block undecodable: its own event is not emitted (see below) and, since the block
//! may have added entries to the peer's dynamic table, that direction's table is forgotten. A
//! gap over a frame header (or the preface) loses framing: [`H2Event::Desync`], the table is
//! forgotten too, and the direction resynchronises at the next chunk that starts with a
//! plausible chain of frame headers (see [`looks_like_frames`]).
//!
//! HPACK after a loss (or when attached mid-connection): the decoder keeps *positional*
//! knowledge. Entries added after the loss are known and sit at known indexes (newest first),
//! whatever the table held before; a reference beyond them is unknown. A block with an unknown
//! reference is still walked to the end so that the table stays in step (an entry whose name
//! was unknown is kept as a placeholder), but yields no fields. Blocks using only static
//! entries, literals and known dynamic entries decode; a dynamic table size update to 0 or
//! enough new entries to fill the table bring full knowledge back.
//!
//! Streams: events are emitted for client-initiated (odd) streams only; server push is decoded
//! (to keep HPACK in step) and otherwise ignored. Every `Request` is followed by exactly one
//! `Response` or `Reset` for its stream (at the latest at [`H2Conn::close`]). A `Response` or
//! `Reset` may also come for a stream whose request head was not decoded (mid-stream attach,
//! gaps) when something is known about its response; a stream about which nothing was decoded
//! ends silently.

mod conn;
mod events;
mod fields;
mod frames;
mod hpack;
mod streams;

pub use conn::H2Conn;
pub use events::{H2Event, H2Request, H2Response, UNKNOWN_ERROR};
pub use fields::MAX_FIELD;
pub use frames::{MAX_HEADER_BLOCK, PREFACE, looks_like_frames, looks_like_preface};
pub use hpack::MAX_TABLE_SIZE;
pub use streams::MAX_STREAMS;
// The parts use each other's `pub(super)` items through `use super::*`.
use fields::*;
use frames::*;
use hpack::*;
use streams::*;
