//! What the HTTP/2 parser reports: request heads, response ends, resets and desyncs.

use crate::Dir;

/// `error_code` of a [`H2Event::Reset`] when none was seen: the connection closed, the stream
/// was dropped from tracking, or an RST_STREAM's payload was in a capture gap.
pub const UNKNOWN_ERROR: u32 = u32::MAX;

/// A decoded request head. The first occurrence of each header wins.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct H2Request {
    /// `:method`.
    pub method: String,
    /// `:path` ("" when absent, as for CONNECT).
    pub path: String,
    /// `:authority`, else a `host` header.
    pub authority: Option<String>,
    /// `:scheme`.
    pub scheme: Option<String>,
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    /// Every `tracestate` field, joined with commas.
    pub tracestate: Option<String>,
    pub user_agent: Option<String>,
}

/// What was decoded of a response: the final head (1xx heads are skipped) and the trailers.
/// Every field is `None` when the block that carries it could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct H2Response {
    /// `:status` of the final head.
    pub status: Option<u16>,
    /// `grpc-status`, from the trailers or a trailers-only response (trailers win).
    pub grpc_status: Option<i32>,
    /// `grpc-message`, percent-decoded (invalid UTF-8 replaced).
    pub grpc_message: Option<String>,
    /// `content-type` of the final head.
    pub content_type: Option<String>,
}

/// What the parser found, in stream order within each direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Event {
    /// The request head of `stream` was decoded (its first HEADERS frame, + CONTINUATION);
    /// `start` = offset of that HEADERS frame in the Request stream. Emitted only when the
    /// block decoded completely and has a `:method`.
    Request {
        stream: u32,
        start: u64,
        head: H2Request,
    },
    /// The response of `stream` ended (END_STREAM on the response side, trailers included):
    /// `end` = one past the frame that ended it, `start` = offset of the response's first
    /// HEADERS frame (1xx included; the ending frame's own offset if no HEADERS was seen),
    /// both in the Response stream.
    Response {
        stream: u32,
        start: u64,
        end: u64,
        head: H2Response,
    },
    /// `stream` ended before its response did: an RST_STREAM sent in `dir` (`end` = one past
    /// it), a GOAWAY from the server excluding it (`dir` = Response, `end` = one past the
    /// GOAWAY), the connection's close (`dir` = Response, `end` = the Response stream's offset,
    /// `error_code` = [`UNKNOWN_ERROR`]), or its eviction from tracking (`end` = offset of the
    /// frame that opened a newer stream, in `dir`; [`UNKNOWN_ERROR`]).
    Reset {
        stream: u32,
        dir: Dir,
        end: u64,
        error_code: u32,
    },
    /// Framing was lost in `dir` from `offset` on (a frame header or the preface in a capture
    /// gap, or bytes that are not a valid frame header); that direction's HPACK table is
    /// forgotten and it resynchronises at the next chunk that starts like frames.
    Desync { dir: Dir, offset: u64 },
}
