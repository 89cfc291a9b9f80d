//! Streaming PostgreSQL wire-protocol (v3) parser over captured syscall chunks.
//!
//! This module owns ztrace's PostgreSQL framing: it turns the bytes of one connection (both
//! directions) into [`PgEvent`]s — one [`PgEvent::Query`] per exchange the client starts and,
//! in the same order, one [`PgEvent::Result`] per exchange the server ends — plus the
//! startup parameters and desyncs. Like [`crate::http1`] it is pure, never panics and is
//! bounded: a message's captured head is parsed straight from the chunk when it is wholly
//! inside it, else at most [`MAX_WINDOW`] bytes of it are copied; at most
//! [`MAX_STATEMENTS`] named statements and [`MAX_PENDING`] unanswered exchanges are kept.
//!
//! Exchanges: a simple Query `Q` is one exchange; extended-protocol messages (Parse, Bind,
//! Execute, Describe, Close) up to a Sync `S` are one exchange, reported with the text of
//! the statement its first Execute runs (else of its first Parse; batches with neither are
//! not reported). The server ends every exchange with ReadyForQuery `Z`; the `Z` ending
//! authentication answers nothing and is not reported. ErrorResponse and CommandComplete
//! between two `Z`s fill in the [`PgEvent::Result`].
//!
//! Gaps: a gap inside a message body is skipped by its length; a gap holding a message
//! header loses framing ([`PgEvent::Desync`]); that direction resumes at the next chunk
//! starting with a plausible message (checked message by message through the chunk). After
//! a Request-side desync inside an extended batch, the batch is reported at once, as if its
//! Sync was lost. After a Response-side desync no [`PgEvent::Result`] comes for the queries
//! reported before it (the caller should give up on them); later ones pair as usual.
//! An accepted SSL or GSS encryption request ends parsing: the rest is encrypted.

mod conn;
mod events;
mod shared;
mod side;

pub use conn::PgConn;
pub use events::PgEvent;
pub use shared::{MAX_PENDING, MAX_QUERY, MAX_STATEMENTS};
pub use side::{MAX_WINDOW, looks_like_query, looks_like_startup};
// The parts use each other's `pub(super)` items through `use super::*`.
use shared::*;
use side::*;
