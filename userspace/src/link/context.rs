//! What the linker knows of each thread and process: a thread's cause (whom it works for,
//! from its last socket input) and how a process spreads its socket I/O over threads (linker
//! docs, rules 3 and 6). Types only; the rules that read and update them are in `thread`.

use super::held::Handle;

/// How a process's socket I/O is spread over its threads (linker docs, rule 6).
#[derive(Clone, Copy, Debug)]
pub(super) struct ProcThreads {
    /// The first thread seen doing socket I/O …
    pub(super) first_tid: u32,
    /// … and whether another did too: a thread's context is then not the process's.
    pub(super) many: bool,
    /// A SERVER request was answered by another thread than read it: tasks move between
    /// threads (Go, tokio, executors), so what a thread read last need not be what it runs.
    pub(super) migrating: bool,
}

/// Whom a thread is working for, from its last socket input (see the linker docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It read this SERVER exchange's request.
    Serving(Handle),
    /// It read this CLIENT exchange's response: it continues the work the call was made for.
    After(Handle),
}

/// What a thread's inputs since its last write say (linker docs, rule 3).
#[derive(Clone, Copy, Debug)]
pub(super) struct ThreadCtx {
    /// The last input's cause (None: unknown).
    pub(super) cause: Option<Cause>,
    /// The SERVER span the last input stands for, when known.
    pub(super) server: Option<Handle>,
    /// The inputs since the last write stand for more than one request (or an unknown one).
    pub(super) mixed: bool,
    /// The thread wrote since its last input: the next input starts a new batch.
    pub(super) wrote: bool,
    /// Requests this thread read that no write of it has answered for yet (no call linked to
    /// them, no response): an event loop that defers work (asyncio runs a handler loop
    /// iterations after the read) may write for any of them later.
    pub(super) unanswered: [Option<Handle>; UNANSWERED],
}

/// How many unanswered request reads a thread remembers.
pub(super) const UNANSWERED: usize = 4;

impl ThreadCtx {
    pub(super) fn forget(&mut self, h: Handle) {
        for u in &mut self.unanswered {
            if *u == Some(h) {
                *u = None;
            }
        }
    }
}

/// One socket read or write of a thread, as far as causality is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Request bytes of this SERVER exchange read.
    ServerRequest(Handle),
    /// Response bytes of this SERVER exchange written.
    ServerResponse(Handle),
    /// Response bytes of this CLIENT exchange read.
    ClientResponse(Handle),
    /// An input that may have triggered anything: its exchange is unknown.
    UnknownInput,
}
