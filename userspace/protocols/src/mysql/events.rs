//! What the MySQL parser reports: queries, their results, the handshake and desyncs.

use crate::Dir;

/// What the parser found, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MySqlEvent {
    /// A COM_QUERY, or a COM_STMT_EXECUTE (`prepared`, with the text its statement was
    /// prepared with; empty if that was not seen): `[start, end)` of the Request stream.
    /// `query`: at most [`MAX_QUERY`](super::MAX_QUERY) bytes, lossy UTF-8.
    Query {
        start: u64,
        end: u64,
        query: String,
        prepared: bool,
    },
    /// The answer to the oldest unanswered Query: `[start, end)` of the Response stream.
    /// `error`: ERR's (code, SQLSTATE, message). `rows`: rows of the result sets plus
    /// affected rows of the OKs.
    Result {
        start: u64,
        end: u64,
        error: Option<(u16, String, String)>,
        rows: Option<u64>,
    },
    /// The client's handshake response: its user name and initial database.
    Handshake {
        user: Option<String>,
        database: Option<String>,
    },
    /// Bytes in `dir` from `offset` on could not be framed; see the module docs.
    Desync { dir: Dir, offset: u64 },
}
