//! Where spans wait for their trace's decision: grouped by trace id, each local trace held until
//! it is complete — its local root span (no parent, or a remote one) has arrived and no new span
//! came for `decision_wait` — or until `max_hold` after its first span, whichever is first.
//!
//! Memory is bounded: at most `num_traces` traces and `max_spans` spans are held; beyond either,
//! the trace due first is handed out for an early decision (counted as overflow), never dropped
//! undecided. Decisions are remembered apart ([`Decided`], a bounded FIFO of trace ids) so that a
//! span arriving after its trace was decided gets the same decision, whichever buffer held it (a
//! remote change of the policies leaves two for a while). This module decides nothing itself.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::model::{Span, TraceId};

/// A trace's decision, remembered for late spans: keep (with its `th`) or drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep(Option<u64>),
    Drop,
}

struct Held {
    spans: Vec<Span>,
    first_ns: u64,
    last_ns: u64,
    root_seen: bool,
    due_ns: u64,
}

/// A trace handed out for a decision.
pub struct Ready {
    pub trace_id: TraceId,
    pub spans: Vec<Span>,
    /// When its first span arrived (monotonic ns): decision latency is measured from it.
    pub first_ns: u64,
    /// Handed out early because the buffer was full.
    pub overflow: bool,
}

/// Limits of the buffer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub decision_wait_ns: u64,
    pub max_hold_ns: u64,
    pub num_traces: usize,
    pub max_spans: usize,
}

pub struct Buffer {
    limits: Limits,
    traces: HashMap<TraceId, Held>,
    due: BTreeSet<(u64, TraceId)>,
    spans: usize,
}

/// The verdicts of decided traces, for their late spans: at most `cap`, the oldest forgotten
/// first. Once tail sampling is switched off no decision is made any more, so the traces that
/// pass undecided take the room decisions would have taken ([`Decided::passed`]), and verdicts
/// can be forgotten by age ([`Decided::forget_before`]).
pub struct Decided {
    cap: usize,
    verdicts: HashMap<TraceId, Verdict>,
    /// Oldest first, with the time each was decided (monotonic ns).
    order: VecDeque<(TraceId, u64)>,
    /// Traces that passed undecided since tail sampling was switched off (room taken, no memory).
    passed: usize,
}

impl Decided {
    pub fn new(cap: usize) -> Decided {
        Decided {
            cap,
            verdicts: HashMap::new(),
            order: VecDeque::new(),
            passed: 0,
        }
    }

    pub fn get(&self, id: &TraceId) -> Option<Verdict> {
        self.verdicts.get(id).copied()
    }

    /// Verdicts remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Remembers a decision made at `now_ns` for the trace's late spans (the oldest decision is
    /// forgotten first).
    pub fn remember(&mut self, id: TraceId, v: Verdict, now_ns: u64) {
        if self.verdicts.insert(id, v).is_none() {
            self.order.push_back((id, now_ns));
        }
        self.trim();
    }

    /// A new bound (a changed configuration); the oldest beyond it are forgotten.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
        self.trim();
    }

    /// A trace passed undecided (tail sampling off): it takes the room its decision would have
    /// taken, so the oldest verdict goes when the memory would have been full. How many were
    /// forgotten.
    pub fn passed(&mut self) -> usize {
        self.passed = self.passed.saturating_add(1);
        self.trim()
    }

    /// Tail sampling is on again: decisions take the room from now on.
    pub fn resume(&mut self) {
        self.passed = 0;
    }

    /// Forgets the verdicts decided before `before_ns`; how many.
    pub fn forget_before(&mut self, before_ns: u64) -> usize {
        let mut n = 0;
        while self.order.front().is_some_and(|(_, t)| *t < before_ns) {
            if let Some((old, _)) = self.order.pop_front() {
                self.verdicts.remove(&old);
                n += 1;
            }
        }
        if self.order.is_empty() {
            // Gives the memory back (a map keeps its largest size otherwise).
            self.verdicts = HashMap::new();
            self.order = VecDeque::new();
        }
        n
    }

    fn trim(&mut self) -> usize {
        let mut n = 0;
        while self.order.len() + self.passed > self.cap {
            match self.order.pop_front() {
                Some((old, _)) => {
                    self.verdicts.remove(&old);
                    n += 1;
                }
                None => {
                    self.passed = self.cap;
                    break;
                }
            }
        }
        n
    }
}

/// A local root: nothing above it in this agent's view.
pub fn is_local_root(s: &Span) -> bool {
    s.parent_span_id.is_none() || s.parent_is_remote
}

impl Buffer {
    pub fn new(limits: Limits) -> Buffer {
        Buffer {
            limits,
            traces: HashMap::new(),
            due: BTreeSet::new(),
            spans: 0,
        }
    }

    /// Whether spans of the trace are held here.
    pub fn holds(&self, id: &TraceId) -> bool {
        self.traces.contains_key(id)
    }

    /// Holds `span` (arrived at `now_ns`) until its trace is decided; traces pushed out by the
    /// limits go to `out`.
    pub fn offer(&mut self, span: Span, now_ns: u64, out: &mut Vec<Ready>) {
        let id = span.trace_id;
        let root = is_local_root(&span);
        let l = self.limits;
        let held = self.traces.entry(id).or_insert_with(|| Held {
            spans: Vec::new(),
            first_ns: now_ns,
            last_ns: now_ns,
            root_seen: false,
            due_ns: u64::MAX,
        });
        held.spans.push(span);
        held.last_ns = now_ns;
        held.root_seen |= root;
        let cap = held.first_ns.saturating_add(l.max_hold_ns);
        let due = if held.root_seen {
            now_ns.saturating_add(l.decision_wait_ns).min(cap)
        } else {
            cap
        };
        if due != held.due_ns {
            self.due.remove(&(held.due_ns, id));
            held.due_ns = due;
            self.due.insert((due, id));
        }
        self.spans += 1;
        while self.traces.len() > l.num_traces || self.spans > l.max_spans {
            match self.pop_first(true) {
                Some(r) => out.push(r),
                None => break,
            }
        }
    }

    /// Traces due at `now_ns`.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<Ready>) {
        while self.due.first().is_some_and(|(d, _)| *d <= now_ns) {
            out.extend(self.pop_first(false));
        }
    }

    /// Every trace still held (shutdown, or an early end of a retiring policy list).
    pub fn drain(&mut self, out: &mut Vec<Ready>) {
        while let Some(r) = self.pop_first(false) {
            out.push(r);
        }
    }

    fn pop_first(&mut self, overflow: bool) -> Option<Ready> {
        let (_, id) = self.due.pop_first()?;
        let held = self.traces.remove(&id)?;
        self.spans -= held.spans.len();
        Some(Ready {
            trace_id: id,
            spans: held.spans,
            first_ns: held.first_ns,
            overflow,
        })
    }

    /// (traces, spans) held now.
    pub fn held(&self) -> (usize, usize) {
        (self.traces.len(), self.spans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpanId;
    use crate::testkit::server_span;

    const MS: u64 = 1_000_000;

    fn limits() -> Limits {
        Limits {
            decision_wait_ns: 100 * MS,
            max_hold_ns: 1000 * MS,
            num_traces: 3,
            max_spans: 5,
        }
    }

    fn span(trace: u8, id: u8, root: bool) -> Span {
        let mut s = server_span();
        s.trace_id = TraceId([trace; 16]);
        s.span_id = SpanId([id; 8]);
        s.parent_is_remote = false;
        s.parent_span_id = (!root).then_some(SpanId([0xee; 8]));
        s
    }

    fn ids(r: &[Ready]) -> Vec<u8> {
        r.iter().map(|r| r.trace_id.0[0]).collect()
    }

    #[test]
    fn complete_traces_wait_for_quiet_incomplete_ones_for_max_hold() {
        let mut b = Buffer::new(limits());
        let mut out = Vec::new();
        b.offer(span(1, 1, false), 0, &mut out);
        b.offer(span(1, 2, true), 10 * MS, &mut out);
        b.offer(span(2, 3, false), 10 * MS, &mut out);
        b.poll(100 * MS, &mut out);
        assert!(out.is_empty(), "root seen at 10ms: due at 110ms");
        // A late child resets the wait.
        b.offer(span(1, 4, false), 50 * MS, &mut out);
        b.poll(149 * MS, &mut out);
        assert!(out.is_empty());
        b.poll(150 * MS, &mut out);
        assert_eq!(ids(&out), vec![1]);
        assert_eq!(out[0].spans.len(), 3);
        assert_eq!(out[0].first_ns, 0);
        out.clear();
        // No root: held until max_hold after its first span.
        b.poll(1009 * MS, &mut out);
        assert!(out.is_empty());
        b.poll(1010 * MS, &mut out);
        assert_eq!(ids(&out), vec![2]);
        assert_eq!(b.held(), (0, 0));
    }

    #[test]
    fn limits_force_early_decisions_in_due_order() {
        let mut b = Buffer::new(limits());
        let mut out = Vec::new();
        b.offer(span(1, 1, false), 0, &mut out);
        b.offer(span(2, 1, true), 1, &mut out);
        b.offer(span(3, 1, false), 2, &mut out);
        assert!(out.is_empty());
        // A fourth trace: the one due first (trace 2, rooted) goes early.
        b.offer(span(4, 1, false), 3, &mut out);
        assert_eq!(ids(&out), vec![2]);
        assert!(out[0].overflow);
        out.clear();
        // The span limit (5): two more spans of trace 1 push trace 1 itself (due first) out.
        b.offer(span(1, 2, false), 4, &mut out);
        b.offer(span(1, 3, false), 5, &mut out);
        assert!(out.is_empty());
        b.offer(span(3, 2, false), 6, &mut out);
        assert_eq!(ids(&out), vec![1]);
        assert_eq!(out[0].spans.len(), 3);
        assert_eq!(b.held(), (2, 3));
    }

    #[test]
    fn decisions_are_remembered_within_a_bound() {
        let mut d = Decided::new(2);
        d.remember(TraceId([1; 16]), Verdict::Keep(Some(0)), 0);
        d.remember(TraceId([2; 16]), Verdict::Drop, 1);
        assert_eq!(d.get(&TraceId([1; 16])), Some(Verdict::Keep(Some(0))));
        assert_eq!(d.get(&TraceId([2; 16])), Some(Verdict::Drop));
        // Bounded: a third decision forgets the first; a smaller bound the next.
        d.remember(TraceId([3; 16]), Verdict::Drop, 2);
        assert_eq!(d.get(&TraceId([1; 16])), None);
        d.set_cap(1);
        assert_eq!(d.get(&TraceId([2; 16])), None);
        assert_eq!(d.get(&TraceId([3; 16])), Some(Verdict::Drop));
    }

    /// Switched off: traces passing undecided push verdicts out as decisions would have, and
    /// verdicts are forgotten by age; on again, decisions take the room.
    #[test]
    fn passing_traces_and_age_forget_verdicts() {
        let mut d = Decided::new(3);
        for (i, t) in [(1u8, 10), (2, 20), (3, 30)] {
            d.remember(TraceId([i; 16]), Verdict::Drop, t);
        }
        assert_eq!(d.passed(), 1, "a fourth trace: the oldest verdict goes");
        assert_eq!(d.get(&TraceId([1; 16])), None);
        assert_eq!(d.forget_before(30), 1, "decided at 20");
        assert_eq!(
            (d.len(), d.get(&TraceId([3; 16]))),
            (1, Some(Verdict::Drop))
        );
        assert_eq!(d.passed() + d.passed(), 1);
        assert!(d.is_empty());
        assert_eq!(d.passed(), 0, "nothing left to forget");
        d.resume();
        d.remember(TraceId([4; 16]), Verdict::Keep(None), 40);
        d.remember(TraceId([5; 16]), Verdict::Drop, 50);
        assert_eq!(d.len(), 2);
    }
}
