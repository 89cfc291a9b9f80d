//! What the PostgreSQL parser reports: queries, their results, the startup and desyncs.

use crate::Dir;

/// What the parser found, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgEvent {
    /// The client started an exchange: a simple Query `[start, end)` of the Request stream,
    /// or an extended batch from its first message to its Sync (`prepared`). `query` is the
    /// raw text (at most [`MAX_QUERY`] bytes, lossy UTF-8; empty when the statement was
    /// prepared before the parser saw it).
    Query {
        start: u64,
        end: u64,
        query: String,
        prepared: bool,
    },
    /// The server ended the oldest unanswered exchange: `[start, end)` of the Response stream,
    /// ending with ReadyForQuery. `error`: the first ErrorResponse's (SQLSTATE, message),
    /// empty strings if unseen. `rows`: the sum of the row counts of the CommandComplete
    /// tags that carry one; `command_tag`: the last tag (e.g. "SELECT 5", "INSERT 0 1").
    Result {
        start: u64,
        end: u64,
        error: Option<(String, String)>,
        rows: Option<u64>,
        command_tag: Option<String>,
    },
    /// The client's StartupMessage: its `user` and `database` parameters.
    Startup {
        user: Option<String>,
        database: Option<String>,
    },
    /// Bytes in `dir` from `offset` on could not be framed; see the module docs.
    Desync { dir: Dir, offset: u64 },
}
