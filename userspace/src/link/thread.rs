//! The thread's causal context (linker docs, rules 3, 4 and 6): what a thread's socket reads
//! and writes say about whom it works for, and the response side's check of the request side.

use super::content::MAX_CANDIDATES;
use super::context::{Cause, Io, ProcThreads, ThreadCtx, UNANSWERED};
use super::held::{Handle, Parent};
use super::linker::Linker;
use crate::model::{SpanId, SpanKind};

impl Linker {
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
    pub(super) fn other_unanswered(&self, ctx: &ThreadCtx, except: Option<Handle>) -> bool {
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
    pub(super) fn other_without_calls(&self, pid: u32, p: Handle, at_ns: u64) -> bool {
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

    /// The open SERVER span a cause stands for, in process `pid`, that began by `at_ns`; and the
    /// CLIENT span whose continuation it is.
    pub(super) fn cause_parent(
        &self,
        cause: Cause,
        pid: u32,
        at_ns: u64,
    ) -> Option<(Handle, Option<Handle>)> {
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

    /// A thread of process `pid` read or wrote socket data: updates its cause (linker docs,
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

    /// Log/trace correlation (`logs`): the span id of the open SERVER exchange thread (`pid`,
    /// `tid`) works for now — its cause, as for a call it would write (linker docs, rule 3).
    /// The trace id is final only at the span's release.
    pub fn serving_span(&self, pid: u32, tid: u32) -> Option<SpanId> {
        let cause = self.cause_of(pid, tid)?;
        let (server, _) = self.cause_parent(cause, pid, u64::MAX)?;
        self.recs.get(&server).map(|r| r.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::testutil::*;

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
}
