//! Streaming MySQL client/server protocol parser over captured syscall chunks.
//!
//! This module owns ztrace's MySQL framing: it turns the bytes of one connection (both
//! directions) into [`MySqlEvent`]s — one [`MySqlEvent::Query`] per COM_QUERY or
//! COM_STMT_EXECUTE and, in the same order, one [`MySqlEvent::Result`] per answer to them —
//! plus the handshake's user/database and desyncs. Like [`crate::http1`] it is pure, never
//! panics and is bounded: at most [`MAX_WINDOW`] bytes of a packet's payload are copied
//! (none when the part parsed is wholly inside the chunk), at most [`MAX_STATEMENTS`]
//! prepared statements and [`MAX_PENDING`] unanswered commands are kept.
//!
//! Packets: 3-byte length + sequence id; a 0xFFFFFF-byte packet continues in the next one.
//! The server's greeting (handshake v10) and the client's handshake response give the
//! capabilities (CLIENT_DEPRECATE_EOF, query attributes) and user/database; authentication
//! packets are skipped until the server's OK/ERR. A command is a packet with sequence id 0.
//! Other commands (COM_STMT_PREPARE, COM_INIT_DB, COM_PING…) are answered but not reported
//! (PREPARE only teaches the statement id → text map; INIT_DB and `USE db` update
//! [`MySqlConn::database`]); COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA and COM_QUIT get no
//! answer. An answer is OK, ERR, or a result set (column count, definitions, rows, EOF/OK;
//! more result sets follow while SERVER_MORE_RESULTS_EXISTS). Without the handshake,
//! classic EOFs are assumed and CLIENT_DEPRECATE_EOF is inferred from the packets (an EOF is
//! 5 bytes, a terminating OK at least 7); an answer whose end went unnoticed ends when the
//! next one starts (sequence id 1).
//!
//! Gaps: a gap inside a payload is skipped by its length; a gap holding a packet header
//! loses framing ([`MySqlEvent::Desync`]); that direction resumes at the next chunk starting
//! with a plausible command (client) or first packet of an answer (server). After a
//! Response-side desync no Result comes for the queries reported before it. An SSL request,
//! compression, or a binlog dump ends parsing.

mod conn;
mod events;
mod shared;
mod side;

pub use conn::MySqlConn;
pub use events::MySqlEvent;
pub use shared::{MAX_PENDING, MAX_QUERY, MAX_STATEMENTS};
pub use side::{MAX_WINDOW, looks_like_command, looks_like_greeting};
// The parts use each other's `pub(super)` items through `use super::*`.
use shared::*;
use side::*;
