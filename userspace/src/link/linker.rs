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
//!
//! # Where each part lives
//! `parent` chooses a span's parent when its request starts (rules 1, 2, 3, 6, 7); `thread`
//! keeps each thread's cause and lets the response side check the request side (rules 3, 4, 6);
//! `content` the content tokens (rule 6); `settle` holds finished spans until their trace
//! settles, releases them and forgets old state (rule 5); `stamps` fits a called server into
//! its caller's window; `held` is the span store, `context` the per-thread and per-process
//! state, `stats` the counters, `traceparent` rule 1's header. This file owns the [`Linker`]
//! and its small public API.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use rand::{SeedableRng, rngs::SmallRng};

use super::context::{Cause, ProcThreads, ThreadCtx};
use super::crosshost::{ClientSend, CrossHost, CrossHostConfig, CrossHostStats, Lookup, Outcome};
use super::held::{DueQueue, Handle, Parent, Recs, SeqKey, ServerSeqs, Tomb};
use super::stats::LinkStats;
use super::traceparent::Traceparent;
use crate::model::{Endpoint, Exchange, SpanKind};

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

pub struct Linker {
    /// Spans not yet released.
    pub(super) recs: Recs,
    /// Finished spans waiting to be released, by the earliest time they may be: a poll looks
    /// only at those that are due, not at everything waiting.
    pub(super) finished: DueQueue,
    /// Released spans, kept small, with their release times in order for expiry.
    pub(super) tombs: HashMap<Handle, Tomb>,
    pub(super) tomb_order: VecDeque<(u64, Handle)>,
    /// When each CLIENT (SERVER) seq-match entry was made, in order, for expiry.
    pub(super) seq_order: VecDeque<(u64, SeqKey)>,
    /// Spans in creation order, for eviction when the store is full (released ones are skipped
    /// lazily): eviction costs O(1) amortised instead of a scan of everything held.
    pub(super) live_order: VecDeque<Handle>,
    pub(super) next: Handle,
    /// Each thread's context, keyed by (pid, tid).
    pub(super) causes: HashMap<(u32, u32), ThreadCtx>,
    /// Per process: how its socket I/O is spread over threads (rule 6).
    pub(super) procs: HashMap<u32, ProcThreads>,
    /// Each process's SERVER spans, newest last, for content matching (pruned lazily).
    pub(super) open_servers: HashMap<u32, VecDeque<Handle>>,
    /// Size of `causes` after its last clean-up (stale entries are swept when it doubles).
    pub(super) causes_swept: usize,
    pub(super) clients_by_seq: HashMap<SeqKey, (Handle, u64)>,
    /// SERVER spans waiting for their caller, by key fingerprint.
    pub(super) servers_by_seq: ServerSeqs,
    /// Add to monotonic ns to get Unix ns.
    pub(super) mono_to_unix: i128,
    pub(super) max_spans: usize,
    /// Span and trace ids: seeded for replay, so a replay exports the same ids every time.
    /// A fast generator (xoshiro): ids must be unique and unpredictable enough to not collide,
    /// not secret; ChaCha (`StdRng`) cost ~400 instructions per span.
    pub(super) rng: SmallRng,
    pub stats: LinkStats,
    /// Content evidence (rule 6) on; off only to measure what it adds (see
    /// [`Linker::without_content_evidence`]).
    pub(super) content: bool,
    /// Cross-host links (rule 7): None unless configured.
    pub(super) crosshost: Option<CrossHost>,
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
            live_order: VecDeque::new(),
            next: 1,
            causes: HashMap::default(),
            procs: HashMap::default(),
            open_servers: HashMap::default(),
            causes_swept: 1024,
            clients_by_seq: HashMap::default(),
            servers_by_seq: ServerSeqs::default(),
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

    /// Adds what the response (or the rest of the request) told about the exchange.
    pub fn update(&mut self, h: Handle, f: impl FnOnce(&mut Exchange)) {
        if let Some(rec) = self.recs.get_mut(&h) {
            f(&mut rec.exchange);
        }
    }

    pub(super) fn evict_oldest(&mut self) {
        while let Some(h) = self.live_order.pop_front() {
            if self.recs.remove(&h).is_some() {
                self.stats.evicted += 1;
                return;
            }
        }
    }

    /// Spans held: not yet released.
    pub fn open_spans(&self) -> usize {
        self.recs.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::link::settle::LINK_GRACE_NS;
    use crate::link::testutil::*;

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

    #[test]
    fn store_is_bounded() {
        let mut l = Linker::new(0, 4, None);
        for i in 0..10 {
            l.start(start(SpanKind::Client, 1, 1, i));
        }
        assert!(l.open_spans() <= 4);
        assert_eq!(l.stats.evicted, 6);
    }
}
