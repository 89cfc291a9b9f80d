//! Holding spans until their links settle (linker docs, "Settling traces"): when a finished
//! span may leave, the trace it resolves to, the tombstones late children look up, and the
//! expiry of everything kept for matching.

use std::sync::Arc;

use super::crosshost::{ClientSend, PeerContext, WireKey, request_digest};
use super::held::{Handle, Parent, Rec, Tomb};
use super::linker::Linker;
use crate::model::{Sampling, Span, SpanKind, TraceId, TraceState};
use crate::semconv::{names::exchange_name, status::status_of};

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
/// How often the SERVER spans' sequence-number table is swept of entries past their wait.
const SERVER_SWEEP_NS: u64 = 50_000_000;
/// How long after a CLIENT span's response the response side (rule 4) may still change its
/// parent: its trace is not settled before.
const RESPONSE_GRACE_NS: u64 = 50_000_000;

impl Linker {
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
                } => {
                    let mut trace = Resolved::new(trace_id, sampled);
                    trace.tracestate = cur.tracestate.clone();
                    return Some((trace, settles_at));
                }
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
                            let mut trace = Resolved::new(tomb.trace, tomb.remote_sampled);
                            trace.tracestate = tomb.tracestate.clone();
                            return Some((trace, settles_at));
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
            expire(&mut self.clients_by_seq, key, cutoff);
        }
        // Servers wait no longer than their grace period; most never get a traced client (the
        // end user's), so they expire on their own, sooner.
        self.servers_by_seq
            .expire(now_ns, server_cutoff, SERVER_SWEEP_NS);
    }

    fn release(&mut self, h: Handle, trace: Resolved, now_ns: u64, out: &mut Vec<Span>) {
        let Some(mut rec) = self.recs.remove(&h) else {
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
                    tracestate: trace.tracestate.clone(),
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
            clock_skew_ns = x
                .released(h, to_unix(start_ns), to_unix(end_ns))
                .and_then(std::num::NonZeroU64::new);
            if let (SpanKind::Client, Some(key)) = (rec.kind, rec.seq_key) {
                x.sent(ClientSend {
                    key: WireKey {
                        client: key.client,
                        seq: key.seq,
                    },
                    server: key.server,
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
            tracestate: trace.tracestate,
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
            exchange: rec.take_exchange(),
            status,
            sampling: Sampling::Unsampled,
            edits: None,
        });
        self.recs.recycle(rec);
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
}

/// Forgets `key`'s entry if it was made before `cutoff` (a newer one for the same key stays),
/// in one probe of the table (a lookup and then a removal searched twice).
fn expire<K: std::hash::Hash + Eq>(
    map: &mut rustc_hash::FxHashMap<K, (Handle, u64)>,
    key: K,
    cutoff: u64,
) {
    if let std::collections::hash_map::Entry::Occupied(e) = map.entry(key)
        && e.get().1 < cutoff
    {
        e.remove();
    }
}

/// The trace a span belongs to, as resolved at release.
#[derive(Clone, Debug)]
struct Resolved {
    trace_id: TraceId,
    remote_sampled: Option<bool>,
    tracestate: Option<Arc<TraceState>>,
}

impl Resolved {
    fn new(trace_id: TraceId, remote_sampled: Option<bool>) -> Self {
        Self {
            trace_id,
            remote_sampled,
            tracestate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::context::Io;
    use crate::link::testutil::*;
    use crate::model::SpanStatus;

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
    fn the_incoming_sampled_flag_reaches_every_span_of_the_trace() {
        let mut l = Linker::new(0, 100, None);
        let mut s = start(SpanKind::Server, 1, 1, 10);
        (s.traceparent, _) = crate::link::parse_trace_context(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            Some("v=1,ot=th:8"),
        );
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
        // The tracestate too, one copy shared by the trace's spans.
        let state = out[0].tracestate.as_ref().expect("the root's tracestate");
        assert_eq!((&*state.members, state.th), ("v=1,ot=th:8", Some(1 << 55)));
        assert!(
            out[1]
                .tracestate
                .as_ref()
                .is_some_and(|t| std::sync::Arc::ptr_eq(t, state))
        );
        assert_eq!(out[2].tracestate, None);
    }
}
