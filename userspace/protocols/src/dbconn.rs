//! The connection shell the database parsers share (MySQL, PostgreSQL): one [`DbSide`] per
//! direction and the state both directions act on ([`DbShared`]). It cuts each push to the
//! stream's offsets, hands it to its direction's side, and stops for good when the connection
//! closes or the protocol stops parsing (encryption, compression, replication).
//!
//! What the bytes mean is the protocol's: its side frames messages, its shared state pairs
//! commands with answers. This module owns only the wiring both protocols had written alike.

use crate::{Dir, parser::Parser};

/// One direction of a database connection: its framer.
pub trait DbSide: Default {
    /// The state both directions act on.
    type Shared: DbShared;
    type Event;
    /// Stream offset of the next byte to arrive.
    fn offset(&self) -> u64;
    /// Consume one chunk of `dir`: `data`, then `gap` unknown bytes. `resp_offset` is the
    /// Response stream's offset before this push.
    fn feed(
        &mut self,
        cx: (Dir, &mut Self::Shared, u64, &mut Vec<Self::Event>),
        data: &[u8],
        gap: u64,
    );
    /// The connection closed: drop what is buffered.
    fn close(&mut self);
    /// Heap bytes buffered (see [`Parser::held`]).
    fn held(&self) -> usize;
}

/// The state a database connection's two directions share.
pub trait DbShared: Default {
    /// Parsing stopped for good: the rest of the connection is not this protocol in clear.
    fn stopped(&self) -> bool;
    /// Commands awaiting their answer, reported or not.
    fn pending(&self) -> usize;
    /// The connection closed: unanswered commands get no answer.
    fn forget_pending(&mut self);
    /// Prepared statements remembered.
    fn statements(&self) -> usize;
    fn user(&self) -> Option<&str>;
    fn database(&self) -> Option<&str>;
    /// Heap bytes of the unanswered commands and remembered statements (see [`Parser::held`]).
    fn held(&self) -> usize;
}

/// Implements [`DbSide`] for a protocol's side type with an `offset: u64` and a `win: Vec<u8>`
/// field and an inherent `feed(&mut self, cx, data, gap)`: `db_side!(Side, Shared, Event)`.
macro_rules! db_side {
    ($side:ty, $shared:ty, $event:ty) => {
        impl $crate::dbconn::DbSide for $side {
            type Shared = $shared;
            type Event = $event;
            fn offset(&self) -> u64 {
                self.offset
            }
            fn feed(
                &mut self,
                cx: ($crate::Dir, &mut $shared, u64, &mut Vec<$event>),
                data: &[u8],
                gap: u64,
            ) {
                <$side>::feed(self, cx, data, gap);
            }
            fn close(&mut self) {
                self.win = Vec::new();
            }
            fn held(&self) -> usize {
                self.win.capacity()
            }
        }
    };
}
pub(crate) use db_side;

/// Implements [`DbShared`] for a protocol's shared state with the fields `stopped: bool`,
/// `pending` (a `VecDeque`), `statements` (a `TextCache`), `user` and `database`
/// (`Option<String>`): `db_shared!(Shared)`.
macro_rules! db_shared {
    ($shared:ty) => {
        impl $crate::dbconn::DbShared for $shared {
            fn stopped(&self) -> bool {
                self.stopped
            }
            fn pending(&self) -> usize {
                self.pending.len()
            }
            fn forget_pending(&mut self) {
                self.pending.clear();
            }
            fn statements(&self) -> usize {
                self.statements.len()
            }
            fn user(&self) -> Option<&str> {
                self.user.as_deref()
            }
            fn database(&self) -> Option<&str> {
                self.database.as_deref()
            }
            fn held(&self) -> usize {
                self.statements.held() + self.pending.capacity() * 16
            }
        }
    };
}
pub(crate) use db_shared;

/// A database parser's state for one connection, both directions.
#[derive(Default)]
pub struct DbConn<S: DbSide> {
    // Crate-visible for the protocols' unit tests, which check what a side buffers.
    pub(crate) req: S,
    pub(crate) resp: S,
    pub(crate) shared: S::Shared,
    closed: bool,
}

impl<S: DbSide> DbConn<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one syscall's worth of bytes. `len` >= data.len() is the true byte count;
    /// offsets count `len` bytes (if `len < data.len()`, only `data[..len]` is used).
    /// Ignored after [`close`](Self::close) and once parsing stopped (encryption,
    /// compression…).
    pub fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<S::Event>) {
        let resp = self.resp.offset();
        let side = match dir {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        };
        let (data, gap) = crate::clamp(data, len, side.offset());
        if !self.closed && !self.shared.stopped() {
            let cx = (dir, &mut self.shared, resp, out);
            side.feed(cx, data, gap);
        }
    }

    /// The connection closed: unanswered commands get no Result. Later pushes are ignored.
    pub fn close(&mut self, _out: &mut Vec<S::Event>) {
        self.closed = true;
        self.shared.forget_pending();
        self.req.close();
        self.resp.close();
    }

    /// Commands awaiting their answer (reported or not).
    pub fn pending_queries(&self) -> usize {
        self.shared.pending()
    }

    /// Prepared statements remembered.
    pub fn prepared_statements(&self) -> usize {
        self.shared.statements()
    }

    /// The user the client logged in as, if its handshake (startup) was seen.
    pub fn user(&self) -> Option<&str> {
        self.shared.user()
    }

    /// The current database: the handshake's (startup's), as the protocol changed it since.
    pub fn database(&self) -> Option<&str> {
        self.shared.database()
    }

    /// Parsing stopped for good (see [`DbShared::stopped`]).
    pub(crate) fn stopped(&self) -> bool {
        self.shared.stopped()
    }
}

impl<S: DbSide> Parser for DbConn<S> {
    type Event = S::Event;
    fn push(&mut self, dir: Dir, data: &[u8], len: u64, out: &mut Vec<S::Event>) {
        DbConn::push(self, dir, data, len, out);
    }
    fn close(&mut self, out: &mut Vec<S::Event>) {
        DbConn::close(self, out);
    }
    fn held(&self) -> usize {
        self.req.held() + self.resp.held() + self.shared.held()
    }
}
