//! The linker's counters: what it linked, by which evidence, and what it left unlinked.

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
    /// Calls linked by content shared with one in-progress request (linker docs, rule 6) …
    pub content_links: u64,
    /// … of which the thread's context named the same request.
    pub content_confirmed: u64,
    /// … of which the thread's context named another request (content wins: the thread's
    /// context there is a pool thread's or a runtime worker's stale input).
    pub content_overrode_thread: u64,
    /// Cross-process links whose start or end was moved to fit the caller's window, by no more
    /// than [`MAX_STAMP_ADJUST_NS`](super::MAX_STAMP_ADJUST_NS) …
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
    /// In-process cases where the evidence was ambiguous and no link was made.
    pub fn ambiguous(&self) -> u64 {
        self.contradicted
            + self.outlived_parent
            + self.abstained_mixed_inputs
            + self.abstained_no_evidence
    }
}
