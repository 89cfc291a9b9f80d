//! Causality linker: owns every span from the moment its request is seen until it is exported,
//! decides each span's parent and trace, and releases spans whose trace is settled.
//!
//! # Evidence
//! The linker sees what the kernel shows and nothing else: on each thread, the order of its
//! socket reads and writes and which exchange each belongs to; which thread connected which
//! socket; TCP sequence numbers on both ends of a connection; process and thread ids. From that,
//! strongest first:
//!
//! 1. **Incoming W3C `traceparent`** on a SERVER request: the span joins that trace, its parent is
//!    the remote span.
//! 2. **Same bytes on both ends of a TCP connection** (cross-process, one host): a CLIENT span's
//!    request starts at TCP sequence number S on the client socket; the SERVER span that reads the
//!    request starting at the same S on the other end of the same 4-tuple is its child. Exact even
//!    for keep-alive and pipelined connections, whatever order the two processes' events reach us.
//! 3. **The thread's causal context** (SERVER → CLIENT inside one process). Every model of serving
//!    requests — a thread per request, an event loop (nginx, Node.js, redis), an async runtime
//!    whose tasks hop between worker threads (tokio) — runs the code that reacts to an input on
//!    the thread that read the input, until it blocks or yields: a thread-per-request handler
//!    blocks on its own sockets; an event loop runs a callback to completion (Node.js drains
//!    `process.nextTick` and microtasks before the next I/O); tokio puts a task woken by a worker
//!    into that worker's LIFO slot, which runs next and which other workers do not steal. So each
//!    thread carries a *cause*, set by its last socket input:
//!    - it read (part of) SERVER exchange R's request → the thread now works for R;
//!    - it read CLIENT exchange C's response → the thread continues the work C was made for
//!      (C's parent) — sequential calls `await a(); await b();` in an event loop;
//!    - it read anything else (a protocol we do not parse, a multiplexed HTTP/2 or DNS socket
//!      where one read carries many exchanges) → cause unknown;
//!    - it wrote a SERVER response → that work is done, cause cleared.
//!
//!    A CLIENT request written by a thread is a child of the thread's cause, if that SERVER span
//!    is still open. One exception: a connection's first request is often written long after its
//!    `connect()` (non-blocking connect in Node.js and nginx: the write happens on the socket's
//!    first writable event, after the loop served other inputs). The thread that called
//!    `connect()` did so for its cause at that moment, so a fresh connection's first request
//!    takes the cause captured at `connect()`.
//! 4. **The response side checks the request side.** The same run-to-completion rule holds when
//!    the call returns: the thread that reads CLIENT C's response next writes the response of the
//!    SERVER span C was made for (or C's follow-up call). So when a thread whose cause is "after
//!    C" writes SERVER R's response:
//!    - C's parent is R: confirmed;
//!    - C has no parent and started inside R: C becomes R's child (the request side was unknown,
//!      e.g. the task ran on a thread that had just read an unparsed input);
//!    - C's parent is another span: the two sides disagree. No link — wrong links are worse than
//!      missing ones — and the calls that inherited that parent from C's continuation lose it too.
//!      Counted as `contradicted`.
//! 5. **A child lies inside its parent.** A call made for a request returns before the request is
//!    answered. A span linked through the thread's context is released only after its parent
//!    has finished, and loses the link (counted as `outlived_parent`) if it ended after it.
//!
//! 6. **Concurrency: several requests could have caused a call.** The candidates for a CLIENT
//!    call are the SERVER requests of its process in progress when it was written (request read
//!    before the call began, response not yet going out). Run-to-completion (rule 3) does not
//!    hold everywhere: asyncio reads a batch of ready sockets, then runs the handlers they woke,
//!    loop iterations later; a thread pool or a Go transport's writer goroutine writes on a
//!    thread whose last input answered another request's call. So the thread's context counts
//!    as evidence only when it names exactly one candidate:
//!    - every input the thread read since its last write stands for the same request, and
//!    - no other request the thread read is still in progress with nothing written for it yet
//!      (no call linked to it, no response): its handler may be the one running now;
//!    - in a process whose work migrates between threads (a request answered by another thread
//!      than read it: Go, tokio, executors), no other request *of the process* is in progress
//!      with nothing written for it yet: any thread may run that request's task next
//!      (`thread_causes_refused`).
//!
//!    The cause captured at `connect()` is held to the process-wide test in any process doing
//!    socket I/O on several threads (`connect_causes_refused`): Go's transport dials in a
//!    goroutine of its own, on whatever thread is free.
//!
//!    Otherwise the thread's context says nothing (counted `abstained_mixed_inputs` when no
//!    content decides). The response side (rule 4) is held to the same test.
//!
//!    **Content** separates candidates the thread cannot: the identifier-like tokens of the call
//!    (HTTP path and query segments, a Redis key, SQL statement words — three characters or more
//!    with a digit, or twelve or more: `a3-14`, a UUID, an order number; not `api` or `GET`) are
//!    looked up in the tokens each in-progress request kept (at most 8 hashed tokens, 64 bytes,
//!    dropped when the span is released; nothing is exported). The candidate sharing the most
//!    tokens wins if it shares strictly more than every other; a tie is no evidence. Content
//!    beats the thread's context when they disagree (`content_overrode_thread`: the stale
//!    input of a pool thread), and a content link is not undone by the response side. With
//!    neither, two or more candidates and no link: `abstained_no_evidence`. A wrong parent is
//!    worse than a missing one.
//!
//! 7. **Across hosts** (opt-in, `crate::link::crosshost` and `crate::peer`): the evidence of
//!    rule 2 is shared by two agents. A SERVER root whose client address is remote (private
//!    ranges, not this socket's own address) and that found no local caller in `LINK_GRACE_NS`
//!    is held while its agent asks the agent at the client's address about (client address,
//!    client port, first-byte sequence number, request digest); that agent answers from the
//!    CLIENT spans it released. A match becomes a remote parent, exactly like an incoming
//!    `traceparent` (the caller's trace id and sampled flag). No answer by the deadline: the
//!    span stays a root, counted by reason. Spans that lie outside the remote parent's window
//!    are kept linked and counted with the skew.
//!
//!    Why not something else: (a) TCP header options written by `sock_ops` programs carrying a
//!    span id — not tried on this kernel (cgroup `sock_ops` programs are reported available,
//!    never loaded here), it changes bytes on the wire (middleboxes drop or strip unknown
//!    options; MSS accounting), needs a cgroup attachment per host and a second program on every
//!    receiving host to parse the options; (b)
//!    `traceparent` injection into HTTP headers: changes application bytes and only works for
//!    HTTP — possible later as an opt-in extra; (c) joining at query time in a backend
//!    (DeepFlow): the exported OTLP stays unlinked. Agreeing on evidence both ends already see
//!    changes nothing, works through DNAT and for every request/response protocol with
//!    aligned requests, and fails safe to a root.
//!
//! What the kernel cannot show, this cannot see: work resumed by a timer, a pipe, an in-process
//! queue or a thread pool hand-off carries no socket input, so the thread's cause is whatever it
//! last read. Rules 4–6 catch most such mistakes; the rest are the residual error the evaluation
//! measures (tests/src/eval.rs, per request shape and edge type).
//!
//! # Settling traces
//! Trace ids are not fixed when a span starts: a SERVER span may learn of its cross-process CLIENT
//! parent a little later than its own request (two CPUs race into the ring buffer). So parents are
//! kept as handles and the trace id is resolved by walking to the root when a span is released. A
//! root SERVER span without a traceparent is *settled* once `LINK_GRACE` has passed since its
//! request; CLIENT roots and remote-parented roots are settled at once. A finished span is released
//! when its root is settled (and, when linked through a thread's context, its parent finished).
//! Released spans stay as tombstones for `RETAIN` so late children still find their trace;
//! everything is bounded by `max_spans`.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

use rustc_hash::FxHashMap as HashMap;

use rand::{SeedableRng, rngs::SmallRng};

use super::crosshost::{
    ClientSend, CrossHost, CrossHostConfig, CrossHostStats, Lookup, Outcome, PeerContext, WireKey,
    request_digest,
};
use crate::model::{Endpoint, Exchange, Span, SpanId, SpanKind, TraceId};
use crate::semconv::{names::exchange_name, status::status_of};

pub type Handle = u64;

/// How long a root SERVER span waits for evidence of a traced CLIENT parent.
pub const LINK_GRACE_NS: u64 = 300_000_000;
/// How long released spans stay resolvable for late children. A child starts before its parent
/// ends and a parent is released at the earliest 50 ms after it ends, so only reordering
/// between CPUs makes a child late: seconds are plenty. (Memory: ~70 bytes per span released
/// in this window — 10 s held 20 MiB at 30k spans/s.)
const RETAIN_NS: u64 = 2_000_000_000;
/// How long a request's first-byte sequence number waits for the other end of the connection.
/// A SERVER span stops waiting when it settles (`LINK_GRACE_NS`); a CLIENT request may wait for
/// a backlogged server to read it.
const SEQ_RETAIN_NS: u64 = 5_000_000_000;
/// How soon a finished span that could not be released is looked at again.
const RETRY_NS: u64 = 20_000_000;
const MAX_DEPTH: usize = 64;
/// How long after a CLIENT span's response the response side (rule 4) may still change its
/// parent: its trace is not settled before.
const RESPONSE_GRACE_NS: u64 = 50_000_000;
/// The most a cross-process link may move a span's start or end to fit the client's window
/// (see [`Linker::window_inside_caller`]). Both ends of a connection stamp the same bytes at
/// the socket layer and the syscall around it: the client's write is stamped when the kernel
/// has taken the bytes, and on loopback the server may have read them a few microseconds
/// before; symmetrically for the response. That explains microseconds (the largest
/// adjustment measured in the evaluation and e2e runs is reported in the exit summary as
/// `largest timestamp adjustment`), not milliseconds: a larger disagreement is left as
/// captured (counted `stamps_left`) so a wrong pairing or a clock problem shows as a child
/// outside its parent's window instead of being smoothed over.
pub const MAX_STAMP_ADJUST_NS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    None,
    Local(Handle),
    /// From an incoming `traceparent`, with its `sampled` flag; or from the agent of a remote
    /// caller's host (rule 7), whose trace may carry no flag (sampled on the trace id).
    Remote {
        trace_id: TraceId,
        span_id: SpanId,
        sampled: Option<bool>,
    },
}

/// How a process's socket I/O is spread over its threads (module docs, rule 6).
#[derive(Clone, Copy, Debug)]
struct ProcThreads {
    /// The first thread seen doing socket I/O …
    first_tid: u32,
    /// … and whether another did too: a thread's context is then not the process's.
    many: bool,
    /// A SERVER request was answered by another thread than read it: tasks move between
    /// threads (Go, tokio, executors), so what a thread read last need not be what it runs.
    migrating: bool,
}

/// Whom a thread is working for, from its last socket input (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It read this SERVER exchange's request.
    Serving(Handle),
    /// It read this CLIENT exchange's response: it continues the work the call was made for.
    After(Handle),
}

/// What a thread's inputs since its last write say (module docs, rule 3).
#[derive(Clone, Copy, Debug)]
struct ThreadCtx {
    /// The last input's cause (None: unknown).
    cause: Option<Cause>,
    /// The SERVER span the last input stands for, when known.
    server: Option<Handle>,
    /// The inputs since the last write stand for more than one request (or an unknown one).
    mixed: bool,
    /// The thread wrote since its last input: the next input starts a new batch.
    wrote: bool,
    /// Requests this thread read that no write of it has answered for yet (no call linked to
    /// them, no response): an event loop that defers work (asyncio runs a handler loop
    /// iterations after the read) may write for any of them later.
    unanswered: [Option<Handle>; UNANSWERED],
}

/// How many unanswered request reads a thread remembers.
const UNANSWERED: usize = 4;

impl ThreadCtx {
    fn forget(&mut self, h: Handle) {
        for u in &mut self.unanswered {
            if *u == Some(h) {
                *u = None;
            }
        }
    }
}

/// How many in-progress SERVER spans of a process content matching looks at (newest first).
const MAX_CANDIDATES: usize = 256;
/// How many content tokens a span keeps.
const MAX_TOKENS: usize = 8;

/// The content tokens of an exchange (rule 6), hashed: the segments of an HTTP target (path
/// and query, split at `/ ? & = ; , :` and blanks), the words of a database command's key or
/// statement. Only identifier-like segments count — three characters or more with a digit,
/// or twelve or more — so words every request shares (`api`, `users`, `GET`) do not.
pub fn content_tokens(exchange: &Exchange, out: &mut Vec<u64>) {
    let mut add = |text: &str| {
        for t in
            text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%')))
        {
            if out.len() >= MAX_TOKENS {
                return;
            }
            let digit = t.bytes().any(|b| b.is_ascii_digit());
            if (t.len() >= 3 && digit) || t.len() >= 12 {
                let h = {
                    use std::hash::{BuildHasher, BuildHasherDefault};
                    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(t)
                };
                if !out.contains(&h) {
                    out.push(h);
                }
            }
        }
    };
    match exchange {
        Exchange::Http(h) => add(&h.target),
        Exchange::Db(d) => {
            if let Some(c) = &d.collection {
                add(c);
            }
            if let Some(q) = &d.query_text {
                add(q);
            }
        }
        Exchange::Rpc(_) | Exchange::Dns(_) => {}
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

/// Identity of one request's first byte on one TCP connection, the same on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub client: Endpoint,
    pub server: Endpoint,
    pub seq: u32,
}

/// What is known when a request starts.
#[derive(Clone, Debug)]
pub struct Start {
    pub kind: SpanKind,
    pub pid: u32,
    pub tid: u32,
    /// Monotonic kernel time.
    pub start_ns: u64,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub exchange: Exchange,
    pub traceparent: Option<Traceparent>,
    pub seq_key: Option<SeqKey>,
    /// For the first request on a connection this process connected: the connecting thread's
    /// cause at `connect()` time.
    pub connect_cause: Option<Cause>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub spans_started: u64,
    pub spans_released: u64,
    pub traceparent_links: u64,
    /// In-process links from the thread's causal context (request side), including the two
    /// kinds below.
    pub thread_links: u64,
    /// … of which taken from the cause at `connect()`.
    pub connect_links: u64,
    /// In-process links learnt from the response side only.
    pub response_links: u64,
    /// Request-side links the response side confirmed.
    pub confirmed_links: u64,
    pub cross_process_links: u64,
    /// SERVER exchanges answered by another thread than the one that read the request (tasks
    /// that moved between a runtime's worker threads, or hand-offs to a thread pool).
    pub moved_threads: u64,
    /// Causes captured at `connect()` not taken: another request of the process was in
    /// progress with nothing written for it yet when the call was written (a runtime that
    /// dials on another thread than the handler's, e.g. Go's transport; rule 6).
    pub connect_causes_refused: u64,
    /// Thread contexts not taken in a process whose work migrates between threads (a SERVER
    /// request answered by another thread than read it): another request was in progress with
    /// nothing written for it yet, and its task may be the one running on this thread (rule 6).
    pub thread_causes_refused: u64,
    /// Request and response side disagreed: left unlinked.
    pub contradicted: u64,
    /// A child ended after its parent: left unlinked.
    pub outlived_parent: u64,
    /// Calls left unlinked because the writing thread had read inputs of two or more requests
    /// since its last write (an event loop that reads a batch of inputs before running the work
    /// they woke: asyncio), and content did not single one out.
    pub abstained_mixed_inputs: u64,
    /// Calls left unlinked because two or more requests of the process were in progress, the
    /// writing thread's context named none of them, and content did not single one out.
    pub abstained_no_evidence: u64,
    /// Calls linked by content shared with one in-progress request (module docs, rule 6) …
    pub content_links: u64,
    /// … of which the thread's context named the same request.
    pub content_confirmed: u64,
    /// … of which the thread's context named another request (content wins: the thread's
    /// context there is a pool thread's or a runtime worker's stale input).
    pub content_overrode_thread: u64,
    /// Cross-process links whose start or end was moved to fit the caller's window, by no more
    /// than [`MAX_STAMP_ADJUST_NS`] …
    pub stamps_adjusted: u64,
    /// … the largest such move (ns) …
    pub max_stamp_adjust_ns: u64,
    /// … and disagreements larger than that, left as captured (the child shows outside its
    /// parent's window).
    pub stamps_left: u64,
    /// Spans dropped because the store was full.
    pub evicted: u64,
    /// Parents that were gone when a child was released (child exported as a root).
    pub orphaned: u64,
    /// Spans still open at shutdown, exported with an error status.
    pub unfinished_at_shutdown: u64,
}

impl LinkStats {
    /// A call stamped `call_ns` began no later than `server_ns`, when its server read it: the
    /// call's start, moved back if the capture points explain the difference, else left.
    fn adjust_stamp(&mut self, call_ns: u64, server_ns: u64) -> u64 {
        self.fit(call_ns, server_ns, call_ns.saturating_sub(server_ns))
    }

    /// `at` moved to `to` if that moves it by `by` ≤ [`MAX_STAMP_ADJUST_NS`], counted.
    fn fit(&mut self, at: u64, to: u64, by: u64) -> u64 {
        if by == 0 {
            at
        } else if by <= MAX_STAMP_ADJUST_NS {
            self.stamps_adjusted += 1;
            self.max_stamp_adjust_ns = self.max_stamp_adjust_ns.max(by);
            to
        } else {
            self.stamps_left += 1;
            at
        }
    }

    /// In-process cases where the evidence was ambiguous and no link was made.
    pub fn ambiguous(&self) -> u64 {
        self.contradicted
            + self.outlived_parent
            + self.abstained_mixed_inputs
            + self.abstained_no_evidence
    }
}

#[derive(Debug)]
struct Rec {
    span_id: SpanId,
    own_trace: TraceId,
    parent: Parent,
    /// The parent came from a thread's causal context (rules 3–5 apply).
    inferred: bool,
    /// The CLIENT span whose continuation gave this one its parent (rule 4 undoes chains).
    via: Option<Handle>,
    /// Calls linked to this span that have been answered: each explains a later response.
    answered_calls: u32,
    /// A SERVER span's response has started going out.
    responding: bool,
    /// The parent was chosen by content shared with it (rule 6): the response side does not
    /// overrule it.
    by_content: bool,
    /// A SERVER span's request tokens (hashed), for content matching while it is in progress.
    tokens: Vec<u64>,
    /// Some span took this SERVER span as its parent: it leaves a tombstone when released.
    /// (CLIENT spans always do: a server span may find its caller late by sequence match.)
    parent_of: bool,
    /// The request's first byte on the wire (CLIENT spans: indexed for other agents, rule 7).
    seq_key: Option<SeqKey>,
    kind: SpanKind,
    pid: u32,
    tid: u32,
    start_ns: u64,
    end_ns: Option<u64>,
    local: Endpoint,
    peer: Endpoint,
    exchange: Exchange,
    error: Option<String>,
}

/// The spans held, by handle. Handles are handed out in increasing order and nearly every span is
/// released within a second of its start, so they live in a window indexed by handle: spans close
/// in time are close in memory (a hash table of them was the linker's costliest part, in cache
/// misses). A span still held far behind the newest moves to a map, so memory follows what is
/// held, not how old the oldest is. Records are boxed: a `Rec` carries its exchange (hundreds of
/// bytes) and is moved only as a pointer.
#[derive(Default)]
struct Recs {
    /// Handle of `window[0]`.
    base: Handle,
    window: VecDeque<Option<Box<Rec>>>,
    /// Held spans older than `base`.
    old: HashMap<Handle, Box<Rec>>,
    len: usize,
}

impl Recs {
    fn get(&self, h: &Handle) -> Option<&Rec> {
        if *h < self.base {
            return self.old.get(h).map(|r| &**r);
        }
        self.window.get((*h - self.base) as usize)?.as_deref()
    }

    fn get_mut(&mut self, h: &Handle) -> Option<&mut Rec> {
        if *h < self.base {
            return self.old.get_mut(h).map(|r| &mut **r);
        }
        self.window
            .get_mut((*h - self.base) as usize)?
            .as_deref_mut()
    }

    fn contains_key(&self, h: &Handle) -> bool {
        self.get(h).is_some()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn insert(&mut self, h: Handle, rec: Box<Rec>) {
        if self.window.is_empty() && h >= self.base {
            self.base = h;
        }
        if h < self.base {
            if self.old.insert(h, rec).is_none() {
                self.len += 1;
            }
            return;
        }
        let i = (h - self.base) as usize;
        while self.window.len() <= i {
            self.window.push_back(None);
        }
        if self.window[i].replace(rec).is_none() {
            self.len += 1;
        }
        self.bound();
    }

    fn remove(&mut self, h: &Handle) -> Option<Box<Rec>> {
        let rec = if *h < self.base {
            self.old.remove(h)
        } else {
            self.window.get_mut((*h - self.base) as usize)?.take()
        };
        if rec.is_some() {
            self.len -= 1;
        }
        self.trim();
        rec
    }

    /// Drops released slots at the front.
    fn trim(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// Keeps the window within a few times what it holds: the front half's spans move to `old`.
    fn bound(&mut self) {
        let held = self.len - self.old.len();
        if self.window.len() <= 4 * held.max(4096) {
            return;
        }
        for _ in 0..self.window.len() / 2 {
            if let Some(Some(rec)) = self.window.pop_front() {
                self.old.insert(self.base, rec);
            }
            self.base += 1;
        }
        self.trim();
    }

    fn iter(&self) -> impl Iterator<Item = (Handle, &Rec)> {
        let old = self.old.iter().map(|(h, r)| (*h, &**r));
        let window = self.window.iter().enumerate();
        old.chain(window.filter_map(|(i, r)| Some((self.base + i as u64, r.as_deref()?))))
    }
}

/// Finished spans by the time they are due, smallest `(due, handle)` first. Nearly every push
/// comes in order (a root's due time follows its start, a child's its end): those queue in a
/// deque, the few out of order in a heap, and a pop takes the smaller front — the order a heap
/// alone gives, without its O(log n) cache misses per pop on thousands of waiting spans.
#[derive(Default)]
struct DueQueue {
    in_order: VecDeque<(u64, Handle)>,
    others: BinaryHeap<Reverse<(u64, Handle)>>,
}

impl DueQueue {
    fn push(&mut self, due: u64, h: Handle) {
        if self.in_order.back().is_none_or(|&last| last <= (due, h)) {
            self.in_order.push_back((due, h));
        } else {
            self.others.push(Reverse((due, h)));
        }
    }

    fn peek(&self) -> Option<(u64, Handle)> {
        match (self.in_order.front(), self.others.peek()) {
            (Some(&a), Some(&Reverse(b))) => Some(a.min(b)),
            (Some(&a), None) => Some(a),
            (None, Some(&Reverse(b))) => Some(b),
            (None, None) => None,
        }
    }

    fn pop(&mut self) -> Option<(u64, Handle)> {
        let first = self.peek()?;
        if self.in_order.front() == Some(&first) {
            self.in_order.pop_front()
        } else {
            self.others.pop().map(|Reverse(x)| x)
        }
    }
}

/// What stays of a released span so late children still find their parent and trace.
#[derive(Clone, Copy)]
struct Tomb {
    span_id: SpanId,
    trace: TraceId,
    /// The `sampled` flag of the trace's remote root parent, if it has one.
    remote_sampled: Option<bool>,
    end_ns: u64,
}

pub struct Linker {
    /// Spans not yet released.
    recs: Recs,
    /// Finished spans waiting to be released, by the earliest time they may be: a poll looks
    /// only at those that are due, not at everything waiting.
    finished: DueQueue,
    /// Released spans, kept small, with their release times in order for expiry.
    tombs: HashMap<Handle, Tomb>,
    tomb_order: VecDeque<(u64, Handle)>,
    /// When each CLIENT (SERVER) seq-match entry was made, in order, for expiry.
    seq_order: VecDeque<(u64, SeqKey)>,
    server_seq_order: VecDeque<(u64, SeqKey)>,
    /// Spans in creation order, for eviction when the store is full (released ones are skipped
    /// lazily): eviction costs O(1) amortised instead of a scan of everything held.
    live_order: VecDeque<Handle>,
    next: Handle,
    /// Each thread's context, keyed by (pid, tid).
    causes: HashMap<(u32, u32), ThreadCtx>,
    /// Per process: how its socket I/O is spread over threads (rule 6).
    procs: HashMap<u32, ProcThreads>,
    /// Each process's SERVER spans, newest last, for content matching (pruned lazily).
    open_servers: HashMap<u32, VecDeque<Handle>>,
    /// Size of `causes` after its last clean-up (stale entries are swept when it doubles).
    causes_swept: usize,
    clients_by_seq: HashMap<SeqKey, (Handle, u64)>,
    servers_by_seq: HashMap<SeqKey, (Handle, u64)>,
    /// Add to monotonic ns to get Unix ns.
    mono_to_unix: i128,
    max_spans: usize,
    /// Span and trace ids: seeded for replay, so a replay exports the same ids every time.
    /// A fast generator (xoshiro): ids must be unique and unpredictable enough to not collide,
    /// not secret; ChaCha (`StdRng`) cost ~400 instructions per span.
    rng: SmallRng,
    pub stats: LinkStats,
    /// Content evidence (rule 6) on; off only to measure what it adds (see
    /// [`Linker::without_content_evidence`]).
    content: bool,
    /// Cross-host links (rule 7): None unless configured.
    crosshost: Option<CrossHost>,
}

impl Linker {
    /// `seed`: None for live capture (ids from OS entropy), Some for reproducible ids.
    pub fn new(mono_to_unix: i128, max_spans: usize, seed: Option<u64>) -> Self {
        Self {
            recs: Recs::default(),
            finished: DueQueue::default(),
            tombs: HashMap::default(),
            tomb_order: VecDeque::new(),
            seq_order: VecDeque::new(),
            server_seq_order: VecDeque::new(),
            live_order: VecDeque::new(),
            next: 1,
            causes: HashMap::default(),
            procs: HashMap::default(),
            open_servers: HashMap::default(),
            causes_swept: 1024,
            clients_by_seq: HashMap::default(),
            servers_by_seq: HashMap::default(),
            mono_to_unix,
            max_spans,
            rng: match seed {
                Some(seed) => SmallRng::seed_from_u64(seed),
                None => SmallRng::from_os_rng(),
            },
            stats: LinkStats::default(),
            content: true,
            crosshost: None,
        }
    }

    /// Turns on cross-host links (rule 7).
    pub fn enable_crosshost(&mut self, config: CrossHostConfig) {
        self.crosshost = Some(CrossHost::new(config));
    }

    pub fn crosshost_stats(&self) -> Option<CrossHostStats> {
        self.crosshost.as_ref().map(|x| x.stats)
    }

    /// What leaves for other agents: released CLIENT sends to index, lookups to ask.
    pub fn take_peer_io(&mut self, sends: &mut Vec<ClientSend>, lookups: &mut Vec<Lookup>) {
        if let Some(x) = &mut self.crosshost {
            x.take(sends, lookups);
        }
    }

    /// Another agent's answer about SERVER root `h` (rule 7): a match makes the remote CLIENT
    /// span its parent, as an incoming `traceparent` would; anything else leaves it a root.
    pub fn peer_answer(&mut self, h: Handle, outcome: Outcome) {
        let Some(x) = &mut self.crosshost else {
            return;
        };
        let Some((ctx, p_start, p_end)) = x.answer(h, outcome) else {
            return;
        };
        let Some(rec) = self.recs.get_mut(&h) else {
            return;
        };
        if rec.parent != Parent::None {
            return;
        }
        rec.parent = Parent::Remote {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            sampled: ctx.sampled,
        };
        // Clock skew is measured at release, on the span's final times (crosshost.rs).
        x.linked(h, p_start, p_end);
    }

    /// For evaluation only: no content evidence (rule 6's tokens are neither kept nor looked
    /// up), so its effect on precision, recall and cost can be measured. The thread's context
    /// and every other rule work as usual.
    pub fn without_content_evidence(mut self) -> Self {
        self.content = false;
        self
    }

    /// The thread's cause now: None when its inputs since its last write belong to more than
    /// one request.
    pub fn cause_of(&self, pid: u32, tid: u32) -> Option<Cause> {
        self.causes
            .get(&(pid, tid))
            .filter(|c| !c.mixed)
            .and_then(|c| c.cause)
    }

    /// The connecting thread's cause, captured by the assembler at `connect()` (rule 3's
    /// exception): as [`Linker::cause_of`], and, in a process doing socket I/O on several
    /// threads, None when another request of the process is in progress with nothing written
    /// for it yet — its handler may be the one connecting. A runtime that dials on whatever
    /// thread is free (Go's transport dials in a goroutine of its own) connects on a thread
    /// whose last input was another request's.
    pub fn connect_cause(&mut self, pid: u32, tid: u32) -> Option<Cause> {
        let cause = self.cause_of(pid, tid)?;
        let p = self.server_of(cause)?;
        let many = self.procs.get(&pid).is_some_and(|p| p.many);
        if many && self.other_without_calls(pid, p, u64::MAX) {
            self.stats.connect_causes_refused += 1;
            return None;
        }
        Some(cause)
    }

    /// Whether the thread read a request other than `except` that is still in progress and that
    /// no write of the thread has answered for yet.
    fn other_unanswered(&self, ctx: &ThreadCtx, except: Option<Handle>) -> bool {
        ctx.unanswered.iter().flatten().any(|&u| {
            Some(u) != except
                && self
                    .recs
                    .get(&u)
                    .is_some_and(|r| r.end_ns.is_none() && !r.responding)
        })
    }

    /// Whether a SERVER request of `pid` other than `p` was in progress at `at_ns` with nothing
    /// written for it yet (no call linked to it, no response going out): its handler may be the
    /// one that made a call (rule 6, process-wide).
    fn other_without_calls(&self, pid: u32, p: Handle, at_ns: u64) -> bool {
        self.open_servers.get(&pid).is_some_and(|list| {
            list.iter().rev().take(4 * MAX_CANDIDATES).any(|&h| {
                h != p
                    && self.recs.get(&h).is_some_and(|r| {
                        r.end_ns.is_none() && !r.responding && !r.parent_of && r.start_ns <= at_ns
                    })
            })
        })
    }

    /// The SERVER span an input's cause stands for right now, if known.
    fn server_of(&self, cause: Cause) -> Option<Handle> {
        match cause {
            Cause::Serving(h) => Some(h),
            Cause::After(c) => match self.recs.get(&c)?.parent {
                Parent::Local(p) => Some(p),
                _ => None,
            },
        }
    }

    /// Rule 6: the in-progress SERVER span of `pid` that shares the most content tokens with a
    /// call, if it shares strictly more than every other; and how many were in progress.
    fn by_content(&mut self, pid: u32, call: &[u64], at_ns: u64) -> (Option<Handle>, usize) {
        let Some(list) = self.open_servers.get_mut(&pid) else {
            return (None, 0);
        };
        let recs = &self.recs;
        list.retain(|h| {
            recs.get(h)
                .is_some_and(|r| r.end_ns.is_none() && !r.responding)
        });
        let (mut best, mut best_score, mut second, mut candidates) = (None, 0usize, 0usize, 0);
        for h in list.iter().rev().take(MAX_CANDIDATES) {
            let Some(r) = recs.get(h) else { continue };
            if r.start_ns > at_ns {
                continue;
            }
            candidates += 1;
            let score = call.iter().filter(|t| r.tokens.contains(t)).count();
            if score > best_score {
                second = best_score;
                best_score = score;
                best = Some(*h);
            } else if score > second {
                second = score;
            }
        }
        ((best_score > second).then_some(best).flatten(), candidates)
    }

    /// The open SERVER span a cause stands for, in process `pid`, that began by `at_ns`; and the
    /// CLIENT span whose continuation it is.
    fn cause_parent(&self, cause: Cause, pid: u32, at_ns: u64) -> Option<(Handle, Option<Handle>)> {
        let (server, via) = match cause {
            Cause::Serving(h) => (h, None),
            Cause::After(c) => match self.recs.get(&c)?.parent {
                Parent::Local(p) => (p, Some(c)),
                _ => return None,
            },
        };
        let r = self.recs.get(&server)?;
        (r.kind == SpanKind::Server
            && r.pid == pid
            && r.end_ns.is_none()
            && !r.responding
            && r.start_ns <= at_ns)
            .then_some((server, via))
    }

    pub fn start(&mut self, s: Start) -> Handle {
        let h = self.next;
        self.next += 1;
        self.stats.spans_started += 1;
        if self.recs.len() >= self.max_spans {
            self.evict_oldest();
        }
        let mut parent = Parent::None;
        // A call is stamped after the kernel took its bytes; the server it reaches may have read
        // them first (socket-layer capture, loopback): the call began no later than that read.
        let mut start_ns = s.start_ns;
        let mut inferred = false;
        let mut via = None;
        let mut by_content = false;
        let mut tokens = Vec::new();
        match s.kind {
            SpanKind::Server => {
                if let Some(Traceparent {
                    trace_id,
                    span_id,
                    sampled,
                }) = s.traceparent
                {
                    parent = Parent::Remote {
                        trace_id,
                        span_id,
                        sampled: Some(sampled),
                    };
                    self.stats.traceparent_links += 1;
                } else if let Some(key) = s.seq_key {
                    if let Some(&(c, _)) = self.clients_by_seq.get(&key) {
                        if self.recs.contains_key(&c) || self.tombs.contains_key(&c) {
                            parent = Parent::Local(c);
                            self.stats.cross_process_links += 1;
                            self.call_began_by(c, s.start_ns);
                        }
                    } else {
                        self.servers_by_seq.insert(key, (h, s.start_ns));
                        self.server_seq_order.push_back((s.start_ns, key));
                    }
                    if parent == Parent::None
                        && let Some(x) = &mut self.crosshost
                        && x.remote(&key.client, &key.server)
                    {
                        let wire = WireKey {
                            client: key.client,
                            seq: key.seq,
                        };
                        let digest = request_digest(&s.exchange);
                        x.hold(h, wire, digest, s.start_ns.saturating_add(LINK_GRACE_NS));
                    }
                }
            }
            SpanKind::Client => {
                let by_connect = s
                    .connect_cause
                    .and_then(|c| self.cause_parent(c, s.pid, s.start_ns));
                let ctx = self.causes.get(&(s.pid, s.tid)).copied();
                // Another request read by this thread, still unanswered and in progress, may be
                // the one this write is for.
                let other_unanswered = ctx.is_some_and(|c| self.other_unanswered(&c, c.server));
                let mixed = ctx.is_some_and(|c| c.mixed) || other_unanswered;
                let now = if mixed {
                    None
                } else {
                    self.cause_of(s.pid, s.tid)
                };
                let migrating = self.procs.get(&s.pid).is_some_and(|p| p.migrating);
                let by_thread = by_connect.or_else(|| {
                    let (p, via) = now.and_then(|c| self.cause_parent(c, s.pid, s.start_ns))?;
                    if migrating && self.other_without_calls(s.pid, p, s.start_ns) {
                        self.stats.thread_causes_refused += 1;
                        return None;
                    }
                    Some((p, via))
                });
                let mut call_tokens = Vec::new();
                if self.content {
                    content_tokens(&s.exchange, &mut call_tokens);
                }
                let (by_text, candidates) = if call_tokens.is_empty() {
                    (None, 0)
                } else {
                    self.by_content(s.pid, &call_tokens, s.start_ns)
                };
                let found = match (by_thread, by_text) {
                    (Some((t, through)), Some(w)) if t == w => {
                        self.stats.content_confirmed += 1;
                        Some((t, through, false))
                    }
                    (Some(_), Some(w)) => {
                        self.stats.content_overrode_thread += 1;
                        Some((w, None, true))
                    }
                    (Some((t, through)), None) => Some((t, through, false)),
                    (None, Some(w)) => Some((w, None, true)),
                    (None, None) => {
                        if mixed {
                            self.stats.abstained_mixed_inputs += 1;
                        } else if candidates > 1 {
                            self.stats.abstained_no_evidence += 1;
                        }
                        None
                    }
                };
                if let Some((p, through, content)) = found {
                    parent = Parent::Local(p);
                    if let Some(pr) = self.recs.get_mut(&p) {
                        pr.parent_of = true;
                    }
                    inferred = true;
                    via = through;
                    by_content = content;
                    if content {
                        self.stats.content_links += 1;
                    } else {
                        self.stats.thread_links += 1;
                        if by_connect.is_some() {
                            self.stats.connect_links += 1;
                        }
                    }
                }
                if let Some(c) = self.causes.get_mut(&(s.pid, s.tid)) {
                    c.wrote = true;
                    if let Parent::Local(p) = parent {
                        c.forget(p);
                    }
                }
                if let Some(key) = s.seq_key {
                    self.clients_by_seq.insert(key, (h, s.start_ns));
                    self.seq_order.push_back((s.start_ns, key));
                    // Only a span not yet released (still in `recs`) can take a parent.
                    if let Some((server, _)) = self.servers_by_seq.remove(&key)
                        && let Some(rec) = self.recs.get_mut(&server)
                        && rec.parent == Parent::None
                    {
                        rec.parent = Parent::Local(h);
                        self.stats.cross_process_links += 1;
                        start_ns = self.stats.adjust_stamp(start_ns, rec.start_ns);
                    }
                }
            }
        }
        if s.kind == SpanKind::Server {
            if self.content {
                content_tokens(&s.exchange, &mut tokens);
            }
            let list = self.open_servers.entry(s.pid).or_default();
            list.push_back(h);
            if list.len() > 4 * MAX_CANDIDATES {
                list.pop_front();
            }
        }
        self.live_order.push_back(h);
        self.recs.insert(
            h,
            Box::new(Rec {
                span_id: SpanId::random(&mut self.rng),
                own_trace: TraceId::random(&mut self.rng),
                parent,
                inferred,
                via,
                answered_calls: 0,
                responding: false,
                by_content,
                tokens,
                parent_of: false,
                seq_key: s.seq_key,
                kind: s.kind,
                pid: s.pid,
                tid: s.tid,
                start_ns,
                end_ns: None,
                local: s.local,
                peer: s.peer,
                exchange: s.exchange,
                error: None,
            }),
        );
        h
    }

    /// A thread of process `pid` read or wrote socket data: updates its cause (module docs,
    /// rules 3 and 4).
    pub fn io(&mut self, pid: u32, tid: u32, io: Io) {
        let key = (pid, tid);
        let proc = self.procs.entry(pid).or_insert(ProcThreads {
            first_tid: tid,
            many: false,
            migrating: false,
        });
        proc.many |= proc.first_tid != tid;
        let input = match io {
            Io::ServerRequest(h) => Some(Some(Cause::Serving(h))),
            Io::ClientResponse(c) => Some(Some(Cause::After(c))),
            Io::UnknownInput => Some(None),
            Io::ServerResponse(_) => None,
        };
        if let Some(cause) = input {
            let server = cause.and_then(|c| self.server_of(c));
            let ctx = self.causes.entry(key).or_insert(ThreadCtx {
                cause: None,
                server: None,
                mixed: false,
                wrote: true,
                unanswered: [None; UNANSWERED],
            });
            if let Some(Cause::Serving(h)) = cause
                && !ctx.unanswered.contains(&Some(h))
            {
                ctx.unanswered.rotate_right(1);
                ctx.unanswered[0] = Some(h);
            }
            if cause.is_none() {
                // An input that may have triggered anything (a partial request, a multiplexed
                // socket): no cause until the next known input, which starts afresh. Requests
                // read before it stay among the unanswered.
                ctx.cause = None;
                ctx.server = None;
                ctx.mixed = false;
                ctx.wrote = true;
            } else if ctx.wrote {
                // The first input since the thread last wrote: a new batch.
                ctx.cause = cause;
                ctx.server = server;
                ctx.mixed = false;
                ctx.wrote = false;
            } else {
                // Another input before any output: the work that follows may be for either.
                ctx.mixed |= server.is_none() || server != ctx.server;
                ctx.cause = cause;
                ctx.server = server;
            }
        }
        if let Io::ServerResponse(r) = io {
            if let Some(rec) = self.recs.get_mut(&r)
                && !rec.responding
            {
                rec.responding = true;
                self.stats.moved_threads += u64::from(rec.tid != tid);
                if rec.tid != tid
                    && let Some(p) = self.procs.get_mut(&pid)
                {
                    p.migrating = true;
                }
            }
            if let Some(mut ctx) = self.causes.get(&key).copied() {
                let (cause, mixed) = (ctx.cause.take(), ctx.mixed);
                ctx.wrote = true;
                ctx.forget(r);
                let others = self.other_unanswered(&ctx, Some(r));
                self.causes.insert(key, ctx);
                if let (Some(Cause::After(c)), false, false) = (cause, mixed, others) {
                    self.check_by_response(c, r);
                }
            }
        }
        if self.causes.len() > 2 * self.causes_swept {
            let recs = &self.recs;
            self.causes.retain(|_, c| match c.cause {
                Some(Cause::Serving(h) | Cause::After(h)) => recs.contains_key(&h),
                None => false,
            });
            self.causes_swept = self.causes.len().max(1024);
        }
    }

    /// See `start`: a call began no later than the server's first read of it.
    fn call_began_by(&mut self, c: Handle, server_read_ns: u64) {
        if let Some(rec) = self.recs.get_mut(&c) {
            rec.start_ns = self.stats.adjust_stamp(rec.start_ns, server_read_ns);
        }
    }

    /// Rule 4: the thread that read CLIENT `c`'s response went on to answer SERVER `r`. That is
    /// evidence about `c` only if nothing else explains why `r` was answered then: a multi-
    /// threaded runtime may run `r`'s task, woken earlier by `r`'s own answered call, before
    /// the task `c`'s answer woke.
    fn check_by_response(&mut self, c: Handle, r: Handle) {
        let Some((r_start, r_explained)) = self
            .recs
            .get(&r)
            .filter(|x| x.kind == SpanKind::Server)
            .map(|x| (x.start_ns, x.answered_calls > 0))
        else {
            return;
        };
        let Some(rec) = self.recs.get_mut(&c) else {
            return;
        };
        if rec.kind != SpanKind::Client {
            return;
        }
        match rec.parent {
            Parent::Local(p) if p == r => self.stats.confirmed_links += 1,
            _ if r_explained => {}
            Parent::None if rec.start_ns >= r_start => {
                rec.parent = Parent::Local(r);
                rec.inferred = true;
                self.stats.response_links += 1;
                if let Some(server) = self.recs.get_mut(&r) {
                    server.parent_of = true;
                }
            }
            Parent::Local(p) if rec.inferred && !rec.by_content => {
                log::debug!(
                    "contradicted: call {c} (tid {}, start {}) linked to {p}, answered with {r}",
                    rec.tid,
                    rec.start_ns
                );
                // Undo the link, and the links continuations of `c` inherited from it.
                let mut cur = Some(c);
                while let Some(h) = cur {
                    cur = None;
                    if let Some(x) = self.recs.get_mut(&h)
                        && x.inferred
                        && x.parent == Parent::Local(p)
                    {
                        x.parent = Parent::None;
                        x.inferred = false;
                        cur = x.via.take();
                        self.stats.contradicted += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds what the response (or the rest of the request) told about the exchange.
    pub fn update(&mut self, h: Handle, f: impl FnOnce(&mut Exchange)) {
        if let Some(rec) = self.recs.get_mut(&h) {
            f(&mut rec.exchange);
        }
    }

    /// The exchange ended (response complete, or aborted with `error`).
    pub fn finish(&mut self, h: Handle, end_ns: u64, error: Option<String>) {
        let Some(rec) = self.recs.get_mut(&h) else {
            return;
        };
        if rec.end_ns.is_some() {
            return;
        }
        rec.end_ns = Some(end_ns.max(rec.start_ns));
        rec.error = error;
        let parent = rec.parent;
        // The earliest a span can settle: a SERVER root after its grace, a CLIENT after its
        // response grace; others as soon as their root has.
        let due = match (rec.kind, parent) {
            (SpanKind::Server, Parent::None) => rec.start_ns.saturating_add(LINK_GRACE_NS),
            (SpanKind::Client, _) => end_ns.saturating_add(RESPONSE_GRACE_NS),
            _ => end_ns,
        };
        self.finished.push(due, h);
        if let Parent::Local(p) = parent
            && let Some(pr) = self.recs.get_mut(&p)
        {
            pr.answered_calls += 1;
        }
    }

    fn evict_oldest(&mut self) {
        while let Some(h) = self.live_order.pop_front() {
            if self.recs.remove(&h).is_some() {
                self.stats.evicted += 1;
                return;
            }
        }
    }

    /// Trace of `h` and the time from which it can no longer change (settled once that is not
    /// after `now_ns`).
    fn resolve(&self, h: Handle, now_ns: u64) -> Option<(Resolved, u64)> {
        let mut cur = self.recs.get(&h)?;
        let mut cur_h = h;
        // The earliest time the trace can be final: the latest grace period still running, or a
        // retry soon when waiting on an event (a parent to finish).
        let mut settles_at = 0u64;
        let retry = now_ns.saturating_add(RETRY_NS);
        let answered_at = |r: &Rec| {
            r.end_ns
                .map_or(retry, |e| e.saturating_add(RESPONSE_GRACE_NS))
        };
        for _ in 0..MAX_DEPTH {
            match cur.parent {
                Parent::Remote {
                    trace_id, sampled, ..
                } => return Some((Resolved::new(trace_id, sampled), settles_at)),
                Parent::Local(p) => {
                    // A link from a thread's context holds only once both sides were seen
                    // (rules 4 and 5): until then the trace below it may still split off.
                    if cur.inferred {
                        let parent_done = match self.recs.get(&p) {
                            Some(pr) => pr.end_ns.is_some(),
                            None => true,
                        };
                        if !parent_done {
                            settles_at = settles_at.max(retry);
                        }
                        settles_at = settles_at.max(answered_at(cur));
                    }
                    match (self.recs.get(&p), self.tombs.get(&p)) {
                        (Some(parent), _) => {
                            cur = parent;
                            cur_h = p;
                        }
                        (None, Some(tomb)) => {
                            return Some((
                                Resolved::new(tomb.trace, tomb.remote_sampled),
                                settles_at,
                            ));
                        }
                        // Parent evicted or forgotten: this subtree becomes its own trace.
                        (None, None) => {
                            return Some((Resolved::new(cur.own_trace, None), settles_at));
                        }
                    }
                }
                Parent::None => {
                    // A CLIENT root may still gain a parent from the response side (rule 4);
                    // a SERVER root from a traced client's request (seq match).
                    settles_at = settles_at.max(match cur.kind {
                        SpanKind::Client => answered_at(cur),
                        SpanKind::Server => cur.start_ns.saturating_add(LINK_GRACE_NS).max(
                            self.crosshost
                                .as_ref()
                                .map_or(0, |x| x.held_until(cur_h, now_ns)),
                        ),
                    });
                    return Some((Resolved::new(cur.own_trace, None), settles_at));
                }
            }
        }
        None
    }

    /// Rule 5 for a finished span linked through a thread's context: true when it may be
    /// released, false to wait for its parent to finish; the link is dropped if the child
    /// outlived its parent.
    fn inside_parent(&mut self, h: Handle) -> bool {
        let Some(rec) = self.recs.get(&h) else {
            return true;
        };
        let (Parent::Local(p), true, Some(end)) = (rec.parent, rec.inferred, rec.end_ns) else {
            return true;
        };
        let parent_end = match (self.recs.get(&p), self.tombs.get(&p)) {
            (Some(pr), _) => match pr.end_ns {
                Some(e) => e,
                None => return false,
            },
            (None, Some(t)) => t.end_ns,
            (None, None) => return true,
        };
        if end > parent_end
            && let Some(rec) = self.recs.get_mut(&h)
        {
            log::debug!("outlived: {h} ended {end}, its parent {p} at {parent_end}");
            rec.parent = Parent::None;
            rec.inferred = false;
            self.stats.outlived_parent += 1;
        }
        true
    }

    /// Releases finished spans whose trace is settled, and forgets old state. Costs time in
    /// proportion to the finished spans that are due, not to everything waiting or held. A
    /// child released before its parent finds the parent still held, and the parent's later
    /// release resolves the same (settled) trace.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        if let Some(x) = &mut self.crosshost {
            let recs = &self.recs;
            x.tick(now_ns, |h| {
                recs.get(&h).is_some_and(|r| r.parent == Parent::None)
            });
        }
        let mut later = Vec::new();
        let again = now_ns.saturating_add(RETRY_NS);
        while let Some((due, h)) = self.finished.peek() {
            if due > now_ns {
                break;
            }
            self.finished.pop();
            if !self.inside_parent(h) {
                // Waiting for the parent to finish: look again a little later.
                later.push((again, h));
                continue;
            }
            match self.resolve(h, now_ns) {
                Some((trace, at)) if at <= now_ns => self.release(h, trace, now_ns, out),
                // A grace period still runs: come back when it has passed, not every retry
                // (a SERVER root waits LINK_GRACE_NS; polling it every RETRY_NS cost more than
                // all the rest of the poll).
                Some((_, at)) => later.push((at, h)),
                // Evicted meanwhile (or a parent cycle, which cannot be settled).
                None => {}
            }
        }
        for (at, h) in later {
            self.finished.push(at, h);
        }
        while let Some(h) = self.live_order.front() {
            if self.recs.contains_key(h) {
                break;
            }
            self.live_order.pop_front();
        }
        // A long-lived span at the front keeps released handles queued behind it: compact now
        // and then, so the queue stays proportional to what is held.
        if self.live_order.len() > 4 * self.max_spans.max(1024) {
            let recs = &self.recs;
            self.live_order.retain(|h| recs.contains_key(h));
        }
        let cutoff = now_ns.saturating_sub(RETAIN_NS);
        while let Some(&(t, h)) = self.tomb_order.front() {
            if t >= cutoff {
                break;
            }
            self.tomb_order.pop_front();
            self.tombs.remove(&h);
        }
        let cutoff = now_ns.saturating_sub(SEQ_RETAIN_NS);
        let server_cutoff = now_ns.saturating_sub(LINK_GRACE_NS + RESPONSE_GRACE_NS);
        while let Some(&(t, key)) = self.seq_order.front() {
            if t >= cutoff {
                break;
            }
            self.seq_order.pop_front();
            if self
                .clients_by_seq
                .get(&key)
                .is_some_and(|(_, at)| *at < cutoff)
            {
                self.clients_by_seq.remove(&key);
            }
        }
        // Servers wait no longer than their grace period; most never get a traced client (the
        // end user's), so they are swept on their own, sooner.
        while let Some(&(t, key)) = self.server_seq_order.front() {
            if t >= server_cutoff {
                break;
            }
            self.server_seq_order.pop_front();
            if self
                .servers_by_seq
                .get(&key)
                .is_some_and(|(_, at)| *at < server_cutoff)
            {
                self.servers_by_seq.remove(&key);
            }
        }
    }

    /// A span's (start, end); for a SERVER span called by a traced CLIENT, ending no later than
    /// the call. Socket-layer capture stamps a write when the kernel has taken the bytes, and on
    /// loopback the peer may have read them by then: the server's last write can be stamped
    /// after the client's read. (The start side is settled when the two are linked: the call
    /// is moved back to the server's first read, see `start`.) Reads are stamped after the data
    /// arrived, so the server's own calls still end before this end. Either move is bounded by
    /// [`MAX_STAMP_ADJUST_NS`]: a larger disagreement is not the capture points' and is left.
    fn window_inside_caller(&mut self, rec: &Rec) -> (u64, u64) {
        let (start, end) = (rec.start_ns, rec.end_ns.unwrap_or(rec.start_ns));
        let Parent::Local(p) = rec.parent else {
            return (start, end);
        };
        if rec.kind != SpanKind::Server || rec.inferred {
            return (start, end);
        }
        let p_end = match (self.recs.get(&p), self.tombs.get(&p)) {
            (Some(pr), _) if pr.kind == SpanKind::Client => pr.end_ns,
            (None, Some(t)) => Some(t.end_ns),
            _ => return (start, end),
        };
        match p_end {
            Some(p_end) if p_end < end => {
                // Never before the span's own start: a window stays a window.
                let to = p_end.max(start);
                (start, self.stats.fit(end, to, end - p_end))
            }
            _ => (start, end),
        }
    }

    fn release(&mut self, h: Handle, trace: Resolved, now_ns: u64, out: &mut Vec<Span>) {
        let Some(rec) = self.recs.remove(&h).map(|b| *b) else {
            return;
        };
        let (parent_span_id, parent_is_remote) = match rec.parent {
            Parent::Local(p) => match (self.recs.get(&p), self.tombs.get(&p)) {
                (Some(pr), _) => (Some(pr.span_id), false),
                (None, Some(tomb)) => (Some(tomb.span_id), false),
                (None, None) => {
                    self.stats.orphaned += 1;
                    (None, false)
                }
            },
            Parent::Remote { span_id, .. } => (Some(span_id), true),
            Parent::None => (None, false),
        };
        let (start_ns, end_ns) = self.window_inside_caller(&rec);
        // Only a span that is or may become a parent is looked up after its release (a SERVER
        // span takes children only while held): most servers, leaves, leave nothing behind.
        if rec.kind == SpanKind::Client || rec.parent_of {
            self.tombs.insert(
                h,
                Tomb {
                    span_id: rec.span_id,
                    trace: trace.trace_id,
                    remote_sampled: trace.remote_sampled,
                    end_ns,
                },
            );
            self.tomb_order.push_back((now_ns, h));
        }
        self.stats.spans_released += 1;
        let status = status_of(&rec.exchange, rec.kind, rec.error.as_deref());
        let to_unix = |ns: u64| (ns as i128 + self.mono_to_unix).max(0) as u64;
        let mut clock_skew_ns = None;
        if let Some(x) = &mut self.crosshost {
            clock_skew_ns = x.released(h, to_unix(start_ns), to_unix(end_ns));
            if let (SpanKind::Client, Some(key)) = (rec.kind, rec.seq_key) {
                x.sent(ClientSend {
                    key: WireKey {
                        client: key.client,
                        seq: key.seq,
                    },
                    digest: request_digest(&rec.exchange),
                    ctx: PeerContext {
                        trace_id: trace.trace_id,
                        span_id: rec.span_id,
                        sampled: trace.remote_sampled,
                    },
                    start_unix_ns: to_unix(start_ns),
                    end_unix_ns: to_unix(end_ns),
                });
            }
        }
        out.push(Span {
            trace_id: trace.trace_id,
            remote_sampled: trace.remote_sampled,
            span_id: rec.span_id,
            parent_span_id,
            parent_is_remote,
            clock_skew_ns,
            kind: rec.kind,
            name: exchange_name(&rec.exchange),
            start_unix_ns: to_unix(start_ns),
            end_unix_ns: to_unix(end_ns),
            pid: rec.pid,
            tid: rec.tid,
            local: rec.local,
            peer: rec.peer,
            exchange: rec.exchange,
            status,
        });
    }

    /// Shutdown: finish what is open (so every parent is exported) and release everything.
    pub fn drain(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let open: Vec<Handle> = self
            .recs
            .iter()
            .filter(|(_, r)| r.end_ns.is_none())
            .map(|(h, _)| h)
            .collect();
        for h in open {
            self.stats.unfinished_at_shutdown += 1;
            self.finish(
                h,
                now_ns,
                Some("tracer stopped before the exchange ended".into()),
            );
        }
        self.poll(u64::MAX / 2, out);
    }

    /// Spans held: not yet released.
    pub fn open_spans(&self) -> usize {
        self.recs.len()
    }

    /// Log/trace correlation (`logs`): the span id of the open SERVER exchange thread (`pid`,
    /// `tid`) works for now — its cause, as for a call it would write (module docs, rule 3).
    /// The trace id is final only at the span's release.
    pub fn serving_span(&self, pid: u32, tid: u32) -> Option<SpanId> {
        let cause = self.cause_of(pid, tid)?;
        let (server, _) = self.cause_parent(cause, pid, u64::MAX)?;
        self.recs.get(&server).map(|r| r.span_id)
    }
}

/// The trace a span belongs to, as resolved at release.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    trace_id: TraceId,
    remote_sampled: Option<bool>,
}

impl Resolved {
    fn new(trace_id: TraceId, remote_sampled: Option<bool>) -> Self {
        Self {
            trace_id,
            remote_sampled,
        }
    }
}

/// An incoming W3C trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The `sampled` trace flag (bit 0): the upstream's sampling decision.
    pub sampled: bool,
}

/// Parses a W3C `traceparent` header (version 00 rules; future versions read leniently).
pub fn parse_traceparent(v: &str) -> Option<Traceparent> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    let (mut t, mut s) = ([0u8; 16], [0u8; 8]);
    hex(trace, &mut t)?;
    hex(span, &mut s)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if t == [0; 16] || s == [0; 8] {
        return None;
    }
    Some(Traceparent {
        trace_id: TraceId(t),
        span_id: SpanId(s),
        sampled: flags & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::{HttpExchange, SpanStatus};

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }
    }

    fn start(kind: SpanKind, pid: u32, tid: u32, t: u64) -> Start {
        Start {
            kind,
            pid,
            tid,
            start_ns: t,
            local: ep(1),
            peer: ep(2),
            exchange: Exchange::Http(HttpExchange {
                method: "GET".into(),
                ..Default::default()
            }),
            traceparent: None,
            seq_key: None,
            connect_cause: None,
        }
    }

    /// A long-lived span behind many short ones: the handle-indexed window stays bounded (the
    /// old span moves to the map), every span stays reachable, and the old one is still exported.
    #[test]
    fn due_queue_pops_in_the_order_a_heap_does() {
        let mut q = DueQueue::default();
        let mut heap = BinaryHeap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut h = 0;
        for round in 0..20_000u64 {
            // Mostly in order (a rising clock), sometimes earlier, sometimes a burst of pops.
            let r = next();
            if r % 5 < 3 {
                h += 1;
                let due = if r % 7 == 0 {
                    round * 10 - (r % 1000).min(round * 10)
                } else {
                    round * 10 + 300
                };
                q.push(due, h);
                heap.push(Reverse((due, h)));
            } else {
                assert_eq!(q.pop(), heap.pop().map(|Reverse(e)| e));
            }
            assert_eq!(q.peek(), heap.peek().map(|&Reverse(e)| e));
        }
        while let Some(Reverse(e)) = heap.pop() {
            assert_eq!(q.pop(), Some(e));
        }
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn only_spans_that_can_be_parents_leave_tombstones() {
        let mut l = Linker::new(0, 1000, Some(1));
        // A leaf server (nginx-like) and a server that made a call.
        let leaf = serve(&mut l, 1, 1, 1_000);
        reply(&mut l, 1, 1, leaf, 2_000);
        let parent = serve(&mut l, 2, 2, 1_000);
        let c = call(&mut l, 2, 2, 1_500);
        returns(&mut l, 2, 2, c, 1_800);
        reply(&mut l, 2, 2, parent, 2_000);
        let spans = settle(&mut l);
        assert_eq!(spans.len(), 3);
        assert!(!l.tombs.contains_key(&leaf), "a leaf server leaves nothing");
        assert!(l.tombs.contains_key(&parent), "a parent stays findable");
        assert!(
            l.tombs.contains_key(&c),
            "a call stays findable for its server"
        );
    }

    #[test]
    fn held_spans_window_stays_bounded_behind_a_long_lived_span() {
        let mut l = Linker::new(0, 200_000, Some(1));
        let long = serve(&mut l, 1, 1, 1_000);
        let mut out = Vec::new();
        let mut t = 2_000;
        for i in 0..50_000u32 {
            let h = serve(&mut l, 1, 2 + i % 7, t);
            reply(&mut l, 1, 2 + i % 7, h, t + 500);
            t += 1_000_000; // 1k spans/s: about 300 held at a time (the link grace)
            if i % 64 == 0 {
                l.poll(t, &mut out);
            }
            let (window, held) = (l.recs.window.len(), l.recs.len());
            assert!(
                window <= 4 * held.max(4096) + 1,
                "window {window}, {held} held"
            );
        }
        l.poll(t + 10 * LINK_GRACE_NS, &mut out);
        assert_eq!(out.len(), 50_000, "every short span released");
        assert_eq!(l.open_spans(), 1);
        assert!(l.recs.get(&long).is_some() && l.recs.window.is_empty());
        assert_eq!(l.recs.iter().map(|(h, _)| h).collect::<Vec<_>>(), [long]);
        reply(&mut l, 1, 1, long, t + 11 * LINK_GRACE_NS);
        l.drain(t + 12 * LINK_GRACE_NS, &mut out);
        assert_eq!(out.len(), 50_001);
        assert_eq!(l.open_spans(), 0);
    }

    /// Rule 7: host A's call and host B's server span become one trace through an answer that
    /// carries A's context; without an answer B's span stays a root, counted by reason.
    #[test]
    fn cross_host_answer_links_and_silence_does_not() {
        use super::super::crosshost::{ClientSend, Lookup, Outcome};
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let client = Endpoint {
            addr: ip("10.9.0.1"),
            port: 40000,
        };
        let vip = Endpoint {
            addr: ip("10.96.0.10"),
            port: 80,
        };
        let real = Endpoint {
            addr: ip("10.9.0.2"),
            port: 8080,
        };
        let mut a = Linker::new(0, 1000, Some(1));
        let mut b = Linker::new(0, 1000, Some(2));
        a.enable_crosshost(CrossHostConfig::default());
        b.enable_crosshost(CrossHostConfig::default());
        // A: a root call to a service address (DNAT'd on its way).
        let mut s = start(SpanKind::Client, 1, 1, 1_000);
        s.local = client;
        s.peer = vip;
        s.seq_key = Some(SeqKey {
            client,
            server: vip,
            seq: 77,
        });
        let c = a.start(s);
        // B: the server sees the real address, the same client port and sequence number; and a
        // second request from a host whose agent never answers.
        let mut srv = |seq: u32, t: u64| {
            let mut s = start(SpanKind::Server, 2, 2, t);
            s.local = real;
            s.peer = client;
            s.seq_key = Some(SeqKey {
                client,
                server: real,
                seq,
            });
            let h = b.start(s);
            b.finish(h, t + 1_000, None);
            h
        };
        let r = srv(77, 1_100);
        let lonely = srv(5_000, 1_200);
        a.finish(c, 3_000, None);
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let (mut sends, mut lookups): (Vec<ClientSend>, Vec<Lookup>) = (Vec::new(), Vec::new());
        // Before its grace B asks nothing and releases nothing.
        b.poll(LINK_GRACE_NS, &mut out_b);
        b.take_peer_io(&mut sends, &mut lookups);
        assert!(lookups.is_empty() && out_b.is_empty());
        a.poll(LINK_GRACE_NS + 10_000, &mut out_a);
        a.take_peer_io(&mut sends, &mut lookups);
        assert_eq!(out_a.len(), 1);
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].key.client, client);
        b.poll(LINK_GRACE_NS + 10_000, &mut out_b);
        b.take_peer_io(&mut Vec::new(), &mut lookups);
        assert_eq!(lookups.len(), 2, "both held roots asked about");
        assert!(out_b.is_empty(), "held while the answer is awaited");
        for l in &lookups {
            let s = &sends[0];
            let outcome = if l.key == s.key && l.digest == s.digest {
                Outcome::Found {
                    ctx: s.ctx,
                    start_unix_ns: s.start_unix_ns,
                    end_unix_ns: s.end_unix_ns,
                }
            } else {
                Outcome::NoAgent
            };
            b.peer_answer(l.handle, outcome);
        }
        b.poll(LINK_GRACE_NS + 100_000_000, &mut out_b);
        assert_eq!(out_b.len(), 2);
        let linked = out_b
            .iter()
            .find(|s| s.pid == 2 && s.start_unix_ns == 1_100);
        let linked = linked.expect("linked span");
        assert_eq!(linked.trace_id, out_a[0].trace_id);
        assert_eq!(linked.parent_span_id, Some(out_a[0].span_id));
        assert!(linked.parent_is_remote);
        let root = out_b.iter().find(|s| s.start_unix_ns == 1_200).unwrap();
        assert_eq!(root.parent_span_id, None);
        assert_ne!(root.trace_id, out_a[0].trace_id);
        let st = b.crosshost_stats().unwrap();
        assert_eq!((st.lookups, st.linked, st.no_agent), (2, 1, 1));
        let _ = (r, lonely);
    }

    /// No answer at all: the span is released as a root at the deadline, counted as a timeout.
    #[test]
    fn cross_host_deadline_releases_a_root() {
        let mut b = Linker::new(0, 1000, Some(2));
        b.enable_crosshost(CrossHostConfig {
            wait_ns: 1_000_000_000,
            ..Default::default()
        });
        let peer = Endpoint {
            addr: "192.168.7.7".parse().unwrap(),
            port: 5555,
        };
        let mut s = start(SpanKind::Server, 2, 2, 1_000);
        s.peer = peer;
        s.seq_key = Some(SeqKey {
            client: peer,
            server: ep(80),
            seq: 1,
        });
        let h = b.start(s);
        b.finish(h, 2_000, None);
        let mut out = Vec::new();
        b.poll(LINK_GRACE_NS + 1_000, &mut out);
        b.poll(LINK_GRACE_NS + 500_000_000, &mut out);
        assert!(out.is_empty());
        b.poll(LINK_GRACE_NS + 1_000_001_000, &mut out);
        b.poll(LINK_GRACE_NS + 1_100_000_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, None);
        assert_eq!(b.crosshost_stats().unwrap().timeout, 1);
    }

    /// Thread `tid` of `pid` reads a new request.
    fn serve(l: &mut Linker, pid: u32, tid: u32, t: u64) -> Handle {
        let h = l.start(start(SpanKind::Server, pid, tid, t));
        l.io(pid, tid, Io::ServerRequest(h));
        h
    }

    /// Thread `tid` writes a request.
    fn call(l: &mut Linker, pid: u32, tid: u32, t: u64) -> Handle {
        l.start(start(SpanKind::Client, pid, tid, t))
    }

    /// Thread `tid` reads the whole response of call `c`.
    fn returns(l: &mut Linker, pid: u32, tid: u32, c: Handle, t: u64) {
        l.finish(c, t, None);
        l.io(pid, tid, Io::ClientResponse(c));
    }

    /// Thread `tid` writes the whole response of request `h`.
    fn reply(l: &mut Linker, pid: u32, tid: u32, h: Handle, t: u64) {
        l.finish(h, t, None);
        l.io(pid, tid, Io::ServerResponse(h));
    }

    /// Every span, released; (span id by handle order, parent span ids).
    fn settle(l: &mut Linker) -> Vec<Span> {
        let mut out = Vec::new();
        l.poll(10 * LINK_GRACE_NS, &mut out);
        assert_eq!(l.open_spans(), 0, "everything finished must be released");
        out.sort_by_key(|s| s.start_unix_ns);
        out
    }

    /// Parent of each span (by start order) as an index into the same list.
    fn parents(spans: &[Span]) -> Vec<Option<usize>> {
        spans
            .iter()
            .map(|s| {
                s.parent_span_id
                    .map(|p| spans.iter().position(|x| x.span_id == p).unwrap())
            })
            .collect()
    }

    fn key(seq: u32) -> SeqKey {
        SeqKey {
            client: ep(40000),
            server: ep(8080),
            seq,
        }
    }

    fn by_id(spans: &[Span], kind: SpanKind, pid: u32) -> &Span {
        spans
            .iter()
            .find(|s| s.kind == kind && s.pid == pid)
            .unwrap()
    }

    #[test]
    fn thread_per_request_and_cross_process_in_either_order() {
        for server_first in [false, true] {
            let mut l = Linker::new(0, 1000, None);
            // Frontend (pid 1) serves a request on thread 11, calls the backend (pid 2).
            let front = serve(&mut l, 1, 11, 100);
            let mut back_start = start(SpanKind::Server, 2, 21, 210);
            back_start.seq_key = Some(key(777));
            let mut client_start = start(SpanKind::Client, 1, 11, 200);
            client_start.seq_key = Some(key(777));
            let (client, back) = if server_first {
                let b = l.start(back_start);
                (l.start(client_start), b)
            } else {
                let c = l.start(client_start);
                (c, l.start(back_start))
            };
            l.finish(back, 300, None);
            l.finish(client, 310, None);
            l.finish(front, 400, None);
            let mut out = Vec::new();
            l.poll(450, &mut out);
            assert!(out.is_empty(), "root must wait for the link grace period");
            l.poll(100 + LINK_GRACE_NS, &mut out);
            assert_eq!(out.len(), 3);
            let (f, c, b) = (
                by_id(&out, SpanKind::Server, 1),
                by_id(&out, SpanKind::Client, 1),
                by_id(&out, SpanKind::Server, 2),
            );
            assert_eq!(f.parent_span_id, None);
            assert_eq!(c.parent_span_id, Some(f.span_id));
            assert_eq!(b.parent_span_id, Some(c.span_id));
            assert!(out.iter().all(|s| s.trace_id == f.trace_id));
            assert_eq!(l.stats.thread_links, 1);
            assert_eq!(l.stats.cross_process_links, 1);
        }
    }

    /// A frontend call (pid 1) and the backend request it reached (pid 2), linked by sequence
    /// number, with the given stamps; returns (client, backend server) as exported.
    fn cross_process(
        call: (u64, u64),
        server: (u64, u64),
        server_first: bool,
    ) -> (Span, Span, LinkStats) {
        let mut l = Linker::new(0, 1000, None);
        let mut back_start = start(SpanKind::Server, 2, 21, server.0);
        back_start.seq_key = Some(key(9));
        let mut client_start = start(SpanKind::Client, 1, 11, call.0);
        client_start.seq_key = Some(key(9));
        let (c, b) = if server_first {
            let b = l.start(back_start);
            (l.start(client_start), b)
        } else {
            let c = l.start(client_start);
            (c, l.start(back_start))
        };
        l.finish(b, server.1, None);
        l.finish(c, call.1, None);
        let out = settle(&mut l);
        let c = by_id(&out, SpanKind::Client, 1).clone();
        let b = by_id(&out, SpanKind::Server, 2).clone();
        assert_eq!(b.parent_span_id, Some(c.span_id));
        (c, b, l.stats)
    }

    #[test]
    fn capture_skew_of_microseconds_is_adjusted_and_counted() {
        for server_first in [false, true] {
            // The server read the request 40 µs before the client's write was stamped, and
            // its response write was stamped 30 µs after the client read it.
            let (c, b, st) =
                cross_process((1_040_000, 9_000_000), (1_000_000, 9_030_000), server_first);
            assert_eq!((c.start_unix_ns, c.end_unix_ns), (1_000_000, 9_000_000));
            assert_eq!((b.start_unix_ns, b.end_unix_ns), (1_000_000, 9_000_000));
            assert_eq!((st.stamps_adjusted, st.stamps_left), (2, 0));
            assert_eq!(st.max_stamp_adjust_ns, 40_000);
        }
    }

    #[test]
    fn disagreements_beyond_the_capture_bound_are_left_showing() {
        for server_first in [false, true] {
            // The server's stamps stick out by 5 ms on both sides: not the capture points.
            let (c, b, st) = cross_process(
                (10_000_000, 20_000_000),
                (5_000_000, 25_000_000),
                server_first,
            );
            assert_eq!((c.start_unix_ns, c.end_unix_ns), (10_000_000, 20_000_000));
            assert_eq!((b.start_unix_ns, b.end_unix_ns), (5_000_000, 25_000_000));
            assert_eq!((st.stamps_adjusted, st.stamps_left), (0, 2));
            assert_eq!(st.max_stamp_adjust_ns, 0);
        }
        // Just inside and just outside the bound.
        let (c, _, st) = cross_process(
            (1_000 + MAX_STAMP_ADJUST_NS, 9 * MAX_STAMP_ADJUST_NS),
            (1_000, 9 * MAX_STAMP_ADJUST_NS),
            false,
        );
        assert_eq!(c.start_unix_ns, 1_000);
        assert_eq!((st.stamps_adjusted, st.stamps_left), (1, 0));
        let (c, _, st) = cross_process(
            (1_001 + MAX_STAMP_ADJUST_NS, 9 * MAX_STAMP_ADJUST_NS),
            (1_000, 9 * MAX_STAMP_ADJUST_NS),
            false,
        );
        assert_eq!(c.start_unix_ns, 1_001 + MAX_STAMP_ADJUST_NS);
        assert_eq!((st.stamps_adjusted, st.stamps_left), (0, 1));
    }

    #[test]
    fn traceparent_is_honoured() {
        let mut l = Linker::new(1_000, 10, None);
        let mut s = start(SpanKind::Server, 1, 1, 5);
        let tp =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        s.traceparent = Some(tp);
        let h = l.start(s);
        l.finish(h, 9, None);
        let mut out = Vec::new();
        l.poll(10, &mut out);
        assert_eq!(out.len(), 1, "remote-parented spans need no grace period");
        assert_eq!(out[0].trace_id, tp.trace_id);
        assert_eq!(out[0].parent_span_id, Some(tp.span_id));
        assert_eq!(out[0].remote_sampled, Some(true));
        assert!(out[0].parent_is_remote);
        assert_eq!((out[0].start_unix_ns, out[0].end_unix_ns), (1_005, 1_009));
    }

    #[test]
    fn event_loop_links_each_call_to_the_request_just_read() {
        // nginx: one thread reads request A, writes A's upstream call, reads request B, writes
        // B's call; the answers come back in the other order.
        let mut l = Linker::new(0, 100, None);
        let a = serve(&mut l, 1, 1, 10);
        let ca = call(&mut l, 1, 1, 11);
        let b = serve(&mut l, 1, 1, 12);
        let cb = call(&mut l, 1, 1, 13);
        returns(&mut l, 1, 1, cb, 20);
        reply(&mut l, 1, 1, b, 21);
        returns(&mut l, 1, 1, ca, 22);
        reply(&mut l, 1, 1, a, 23);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0), None, Some(2)]);
        assert_eq!(l.stats.thread_links, 2);
        assert_eq!(l.stats.confirmed_links, 2);
        assert_eq!(l.stats.ambiguous(), 0);
    }

    #[test]
    fn sequential_and_parallel_calls_continue_the_request() {
        // Node.js: `await a(); await Promise.all([b(), c()])` while another request is served.
        // The other request, read and not yet answered, may be the one the calls are for (an
        // event loop may defer its handler): without content evidence no link is made.
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        let ca = call(&mut l, 1, 1, 11);
        let other = serve(&mut l, 1, 1, 12);
        returns(&mut l, 1, 1, ca, 13);
        let cb = call(&mut l, 1, 1, 14);
        let cc = call(&mut l, 1, 1, 15);
        returns(&mut l, 1, 1, cb, 16);
        returns(&mut l, 1, 1, cc, 17);
        reply(&mut l, 1, 1, s, 18);
        reply(&mut l, 1, 1, other, 19);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0), None, None, None]);
        assert_eq!(l.stats.abstained_mixed_inputs, 2);
        // Once the other request has been answered, the continuation is unambiguous.
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        let ca = call(&mut l, 1, 1, 11);
        let other = serve(&mut l, 1, 1, 12);
        reply(&mut l, 1, 1, other, 13);
        returns(&mut l, 1, 1, ca, 14);
        let cb = call(&mut l, 1, 1, 15);
        let cc = call(&mut l, 1, 1, 16);
        returns(&mut l, 1, 1, cb, 17);
        returns(&mut l, 1, 1, cc, 18);
        reply(&mut l, 1, 1, s, 19);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0), None, Some(0), Some(0)]);
        assert_eq!(l.stats.ambiguous(), 0);
    }

    fn with_target(mut s: Start, target: &str) -> Start {
        s.exchange = Exchange::Http(HttpExchange {
            method: "GET".into(),
            target: target.into(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn deferred_handlers_of_an_event_loop_are_not_guessed() {
        // asyncio: the loop reads requests A and B, then runs their handlers, which write
        // their calls: the thread's last input (B) says nothing about which call is whose.
        let mut l = Linker::new(0, 100, None);
        let a = serve(&mut l, 1, 1, 10);
        let b = serve(&mut l, 1, 1, 11);
        let ca = call(&mut l, 1, 1, 12);
        let cb = call(&mut l, 1, 1, 13);
        for (c, t) in [(ca, 14), (cb, 15)] {
            returns(&mut l, 1, 1, c, t);
        }
        reply(&mut l, 1, 1, a, 16);
        reply(&mut l, 1, 1, b, 17);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None, None, None]);
        assert_eq!(l.stats.abstained_mixed_inputs, 2);
    }

    #[test]
    fn content_shared_with_one_request_separates_the_candidates() {
        // The same interleaving, but each call carries its request's id; a third call carries
        // a token both requests share (no margin) and stays unlinked. Without content evidence
        // (evaluation switch) all three abstain.
        for content in [true, false] {
            let mut l = Linker::new(0, 100, None);
            if !content {
                l = l.without_content_evidence();
            }
            let a = l.start(with_target(
                start(SpanKind::Server, 1, 1, 10),
                "/r/a1-7?v=2024",
            ));
            l.io(1, 1, Io::ServerRequest(a));
            let b = l.start(with_target(
                start(SpanKind::Server, 1, 1, 11),
                "/r/b2-9?v=2024",
            ));
            l.io(1, 1, Io::ServerRequest(b));
            let cb = l.start(with_target(start(SpanKind::Client, 1, 1, 12), "/x/b2-9"));
            let ca = l.start(with_target(start(SpanKind::Client, 1, 1, 13), "/y/a1-7"));
            let both = l.start(with_target(start(SpanKind::Client, 1, 1, 14), "/z?v=2024"));
            for (c, t) in [(cb, 15), (ca, 16), (both, 17)] {
                returns(&mut l, 1, 1, c, t);
            }
            reply(&mut l, 1, 1, a, 18);
            reply(&mut l, 1, 1, b, 19);
            let out = settle(&mut l);
            if content {
                assert_eq!(parents(&out), [None, None, Some(1), Some(0), None]);
                assert_eq!(l.stats.content_links, 2);
                assert_eq!(l.stats.abstained_mixed_inputs, 1);
            } else {
                assert_eq!(parents(&out), [None; 5]);
                assert_eq!(l.stats.content_links, 0);
                assert_eq!(l.stats.abstained_mixed_inputs, 3);
            }
        }
    }

    #[test]
    fn a_pool_threads_stale_input_is_not_the_cause() {
        // A handler thread hands its call to a pool thread whose last input answered another
        // request's call: content names the request, the stale input does not.
        let mut l = Linker::new(0, 100, None);
        let a = l.start(with_target(start(SpanKind::Server, 1, 1, 10), "/r/a1-7"));
        l.io(1, 1, Io::ServerRequest(a));
        let ca = l.start(with_target(start(SpanKind::Client, 1, 9, 11), "/b/a1-7"));
        returns(&mut l, 1, 9, ca, 12);
        let b = l.start(with_target(start(SpanKind::Server, 1, 2, 13), "/r/b2-9"));
        l.io(1, 2, Io::ServerRequest(b));
        let cb = l.start(with_target(start(SpanKind::Client, 1, 9, 14), "/b/b2-9"));
        returns(&mut l, 1, 9, cb, 15);
        reply(&mut l, 1, 2, b, 16);
        reply(&mut l, 1, 1, a, 17);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0), None, Some(2)]);
        assert_eq!(l.stats.content_overrode_thread, 1);
    }

    #[test]
    fn fresh_connection_takes_the_cause_at_connect() {
        // A non-blocking connect for request A; by the time the socket is writable the loop
        // has read request B.
        let mut l = Linker::new(0, 100, None);
        let a = serve(&mut l, 1, 1, 10);
        let at_connect = l.connect_cause(1, 1);
        let b = serve(&mut l, 1, 1, 12);
        let mut first = start(SpanKind::Client, 1, 1, 13);
        first.connect_cause = at_connect;
        let ca = l.start(first);
        returns(&mut l, 1, 1, ca, 20);
        reply(&mut l, 1, 1, a, 21);
        reply(&mut l, 1, 1, b, 22);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None, Some(0)]);
        assert_eq!(l.stats.connect_links, 1);
    }

    #[test]
    fn a_connect_made_while_other_requests_wait_names_no_cause() {
        // Go: requests A and B are read by two threads; the transport dials B's call in its own
        // goroutine on the thread whose last input was A. Nothing was written for B yet, so the
        // connecting thread's cause says nothing about whom the connection is for.
        let mut l = Linker::new(0, 100, None);
        let a = serve(&mut l, 1, 1, 10);
        let b = serve(&mut l, 1, 2, 11);
        let at_connect = l.connect_cause(1, 1);
        assert_eq!(at_connect, None);
        assert_eq!(l.stats.connect_causes_refused, 1);
        let mut first = start(SpanKind::Client, 1, 3, 13);
        first.connect_cause = at_connect;
        let cb = l.start(first);
        returns(&mut l, 1, 3, cb, 20);
        reply(&mut l, 1, 2, b, 21);
        reply(&mut l, 1, 1, a, 22);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None, None]);
        assert_eq!(l.stats.connect_links, 0);
    }

    #[test]
    fn in_a_migrating_runtime_a_threads_last_input_names_no_request_while_others_wait() {
        // Go: an earlier request was answered by another thread than read it (tasks migrate).
        // Then A is read on thread 1 and B on thread 2; B's call is written on thread 1 (its
        // goroutine ran there): thread 1's context (A) says nothing while B has nothing written.
        let mut l = Linker::new(0, 100, None);
        let warm = serve(&mut l, 1, 5, 1);
        reply(&mut l, 1, 6, warm, 2);
        let a = serve(&mut l, 1, 1, 10);
        let b = serve(&mut l, 1, 2, 11);
        let cb = call(&mut l, 1, 1, 12);
        returns(&mut l, 1, 3, cb, 13);
        reply(&mut l, 1, 2, b, 14);
        // Once B is answered, nothing else waits: A's call on thread 1 is A's.
        let ca = call(&mut l, 1, 1, 15);
        returns(&mut l, 1, 1, ca, 21);
        reply(&mut l, 1, 1, a, 23);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None, None, None, Some(1)]);
        assert_eq!(l.stats.thread_causes_refused, 1);
    }

    #[test]
    fn async_task_that_moved_threads_is_linked_and_checked() {
        // tokio: request read on worker 1, call written there, the answer read on worker 2,
        // which then writes the response.
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        let c = call(&mut l, 1, 1, 11);
        returns(&mut l, 1, 2, c, 20);
        reply(&mut l, 1, 2, s, 21);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0)]);
        assert_eq!(l.stats.confirmed_links, 1);
        assert_eq!(l.stats.moved_threads, 1);
    }

    #[test]
    fn response_side_alone_links_when_request_side_is_unknown() {
        // The call was written by a thread whose last input was not a parsed exchange.
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        l.io(1, 3, Io::UnknownInput);
        let c = call(&mut l, 1, 3, 11);
        returns(&mut l, 1, 2, c, 20);
        reply(&mut l, 1, 2, s, 21);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0)]);
        assert_eq!(l.stats.response_links, 1);
    }

    #[test]
    fn sides_that_disagree_leave_the_call_and_its_continuations_unlinked() {
        // A call resumed by something the kernel does not show (a timer) is written after
        // the loop read another request: the request side blames B; the response side then
        // answers A. Neither is trusted. The follow-up call inherited the wrong parent too.
        let mut l = Linker::new(0, 100, None);
        let a = serve(&mut l, 1, 1, 10);
        let b = serve(&mut l, 1, 1, 11);
        let c1 = call(&mut l, 1, 1, 12);
        returns(&mut l, 1, 1, c1, 13);
        let c2 = call(&mut l, 1, 1, 14);
        returns(&mut l, 1, 1, c2, 15);
        reply(&mut l, 1, 1, a, 16);
        reply(&mut l, 1, 1, b, 17);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None, None, None]);
        // Both requests were read and unanswered when the calls went out: no side is trusted.
        assert_eq!(l.stats.abstained_mixed_inputs, 2);
    }

    #[test]
    fn a_response_explained_by_its_own_answered_call_is_no_evidence() {
        // tokio: worker 2 reads call A's answer, but first runs request B's task, which its own
        // call's answer (read earlier elsewhere) had woken; B's response says nothing about A.
        let mut l = Linker::new(0, 100, None);
        let a = serve(&mut l, 1, 1, 10);
        let ca = call(&mut l, 1, 1, 11);
        let b = serve(&mut l, 1, 1, 12);
        let cb = call(&mut l, 1, 1, 13);
        returns(&mut l, 1, 3, cb, 14);
        returns(&mut l, 1, 2, ca, 15);
        reply(&mut l, 1, 2, b, 16);
        reply(&mut l, 1, 2, a, 17);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0), None, Some(2)]);
        assert_eq!(l.stats.ambiguous(), 0);
    }

    #[test]
    fn unknown_input_clears_the_cause() {
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        l.io(1, 1, Io::UnknownInput);
        let c = call(&mut l, 1, 1, 11);
        returns(&mut l, 1, 1, c, 12);
        reply(&mut l, 1, 1, s, 13);
        // The response side still ties them (rule 4): that is evidence, not a guess.
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, Some(0)]);
        assert_eq!((l.stats.thread_links, l.stats.response_links), (0, 1));
    }

    #[test]
    fn child_that_outlives_its_parent_is_unlinked() {
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        let c = call(&mut l, 1, 1, 11);
        reply(&mut l, 1, 1, s, 12);
        returns(&mut l, 1, 1, c, 13);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None]);
        assert_eq!(l.stats.outlived_parent, 1);
    }

    #[test]
    fn pool_connections_shared_by_threads_follow_the_writing_thread() {
        // Two request threads take whichever pooled connection is free: the call belongs to
        // the thread that writes it, not to the connection's history.
        let mut l = Linker::new(0, 100, None);
        let s1 = serve(&mut l, 1, 1, 10);
        let s2 = serve(&mut l, 1, 2, 11);
        let c2 = call(&mut l, 1, 2, 12);
        let c1 = call(&mut l, 1, 1, 13);
        returns(&mut l, 1, 1, c1, 14);
        returns(&mut l, 1, 2, c2, 15);
        reply(&mut l, 1, 2, s2, 16);
        reply(&mut l, 1, 1, s1, 17);
        let out = settle(&mut l);
        assert_eq!(parents(&out), [None, None, Some(1), Some(0)]);
        assert_eq!(l.stats.confirmed_links, 2);
    }

    #[test]
    fn finished_children_wait_for_their_parent() {
        let mut l = Linker::new(0, 100, None);
        let s = serve(&mut l, 1, 1, 10);
        let c = call(&mut l, 1, 1, 11);
        returns(&mut l, 1, 1, c, 12);
        let mut out = Vec::new();
        l.poll(10 * LINK_GRACE_NS, &mut out);
        assert!(
            out.is_empty(),
            "the child must wait: its parent may still contradict it"
        );
        reply(&mut l, 1, 1, s, 13);
        l.poll(10 * LINK_GRACE_NS + RETRY_NS, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn drain_exports_open_parents_with_error() {
        let mut l = Linker::new(0, 10, None);
        let a = serve(&mut l, 1, 1, 1);
        let c = l.start(start(SpanKind::Client, 1, 1, 3));
        l.finish(c, 4, None);
        let mut out = Vec::new();
        l.drain(5, &mut out);
        assert_eq!(out.len(), 2);
        let parent = out.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        assert!(matches!(parent.status, SpanStatus::Error(_)));
        let _ = a;
        assert_eq!(l.stats.unfinished_at_shutdown, 1);
    }

    #[test]
    fn store_is_bounded() {
        let mut l = Linker::new(0, 4, None);
        for i in 0..10 {
            l.start(start(SpanKind::Client, 1, 1, i));
        }
        assert!(l.open_spans() <= 4);
        assert_eq!(l.stats.evicted, 6);
    }

    #[test]
    fn the_incoming_sampled_flag_reaches_every_span_of_the_trace() {
        let mut l = Linker::new(0, 100, None);
        let mut s = start(SpanKind::Server, 1, 1, 10);
        s.traceparent =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let h = l.start(s);
        l.io(1, 1, Io::ServerRequest(h));
        let c = call(&mut l, 1, 1, 11);
        returns(&mut l, 1, 1, c, 12);
        reply(&mut l, 1, 1, h, 13);
        let own = call(&mut l, 1, 2, 14);
        returns(&mut l, 1, 2, own, 15);
        let out = settle(&mut l);
        assert!(out[0].parent_is_remote);
        assert_eq!(out[1].parent_span_id, Some(out[0].span_id));
        assert_eq!(out[2].parent_span_id, None);
        assert_eq!(out[0].remote_sampled, Some(false));
        assert_eq!(
            out[1].remote_sampled,
            Some(false),
            "inherited through the local parent"
        );
        assert_eq!(out[2].remote_sampled, None, "a trace that starts here");
    }

    #[test]
    fn a_called_server_is_kept_inside_its_callers_window() {
        // Socket-layer stamps on loopback: the server read the request 2 µs before the client's
        // write was stamped, and its response write was stamped after the client's read.
        let mut l = Linker::new(0, 100, None);
        let mut client = start(SpanKind::Client, 1, 1, 1000);
        client.seq_key = Some(key(5));
        let c = l.start(client);
        let mut server = start(SpanKind::Server, 2, 2, 998);
        server.seq_key = Some(key(5));
        let s = l.start(server);
        l.finish(s, 2010, None);
        l.finish(c, 2000, None);
        let out = settle(&mut l);
        let (cs, ss) = (
            by_id(&out, SpanKind::Client, 1),
            by_id(&out, SpanKind::Server, 2),
        );
        assert_eq!(ss.parent_span_id, Some(cs.span_id));
        assert_eq!((ss.start_unix_ns, ss.end_unix_ns), (998, 2000));
        assert_eq!(
            cs.start_unix_ns, 998,
            "the call began no later than its first read"
        );
    }

    #[test]
    fn traceparent_parsing() {
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
