//! The linker's store: the spans it holds until release (by handle), the finished spans
//! waiting to be due, and what stays of a released span (its tombstone). No linking decision
//! is made here.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    mem::MaybeUninit,
    sync::Arc,
};

use rustc_hash::FxHashMap as HashMap;

use crate::model::{Endpoint, Exchange, SpanId, SpanKind, TraceId, TraceState};

pub type Handle = u64;

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

/// Identity of one request's first byte on one TCP connection, the same on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub client: Endpoint,
    pub server: Endpoint,
    pub seq: u32,
}

impl SeqKey {
    /// A 64-bit fingerprint of the key: what the SERVER side's table is keyed by (8 bytes
    /// instead of the key's 40, so tens of thousands of entries held for the link grace take a
    /// third of the cache lines). A match is checked against the full key the span's record
    /// keeps, so two keys sharing a fingerprint never link wrongly; at worst the later entry
    /// replaces the earlier, whose span then finds no caller (a chance of about n²/2⁶⁵ for n
    /// entries held).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::BuildHasher;
        rustc_hash::FxBuildHasher.hash_one(self)
    }
}

#[derive(Debug)]
pub(super) struct Rec {
    pub(super) span_id: SpanId,
    pub(super) own_trace: TraceId,
    pub(super) parent: Parent,
    /// With a [`Parent::Remote`] from an incoming `traceparent`: the `tracestate` that came with
    /// it, which every span of the trace carries.
    pub(super) tracestate: Option<Arc<TraceState>>,
    /// The parent came from a thread's causal context (rules 3–5 apply).
    pub(super) inferred: bool,
    /// The CLIENT span whose continuation gave this one its parent (rule 4 undoes chains).
    pub(super) via: Option<Handle>,
    /// Calls linked to this span that have been answered: each explains a later response.
    pub(super) answered_calls: u32,
    /// A SERVER span's response has started going out.
    pub(super) responding: bool,
    /// The parent was chosen by content shared with it (rule 6): the response side does not
    /// overrule it.
    pub(super) by_content: bool,
    /// A SERVER span's request tokens (hashed), for content matching while it is in progress.
    pub(super) tokens: Vec<u64>,
    /// Some span took this SERVER span as its parent: it leaves a tombstone when released.
    /// (CLIENT spans always do: a server span may find its caller late by sequence match.)
    pub(super) parent_of: bool,
    /// The request's first byte on the wire (CLIENT spans: indexed for other agents, rule 7).
    pub(super) seq_key: Option<SeqKey>,
    pub(super) kind: SpanKind,
    pub(super) pid: u32,
    pub(super) tid: u32,
    pub(super) start_ns: u64,
    pub(super) end_ns: Option<u64>,
    pub(super) local: Endpoint,
    pub(super) peer: Endpoint,
    pub(super) exchange: Exchange,
    pub(super) error: Option<String>,
}

impl Rec {
    /// Moves the exchange out, leaving an empty one (no allocation): the record's box is then
    /// reused (`Recs::recycle`) without copying the whole record out of it.
    pub(super) fn take_exchange(&mut self) -> Exchange {
        std::mem::replace(&mut self.exchange, Exchange::Http(Default::default()))
    }
}

/// The spans held, by handle. Handles are handed out in increasing order and nearly every span is
/// released within a second of its start, so they live in a window indexed by handle: spans close
/// in time are close in memory (a hash table of them was the linker's costliest part, in cache
/// misses). A span still held far behind the newest moves to a map, so memory follows what is
/// held, not how old the oldest is. Records are boxed: a `Rec` carries its exchange (hundreds of
/// bytes) and is moved only as a pointer.
///
/// The boxes of released records are kept (up to `SPARE_RECS`) for the next ones. Spans are
/// released about in the order they started, so without that every allocator page of records
/// filled up, emptied as a whole, went back to the system and a fresh one was faulted in: the
/// allocator's slow path was a twentieth of the capture thread's CPU with nginx saturated.
#[derive(Default)]
pub(super) struct Recs {
    /// Handle of `window[0]`.
    base: Handle,
    window: VecDeque<Option<Box<Rec>>>,
    /// Held spans older than `base`.
    old: HashMap<Handle, Box<Rec>>,
    len: usize,
    /// Released records' boxes, what they owned dropped (see `Recs::recycle`).
    // The boxes themselves are what is kept: each becomes the next record's.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<MaybeUninit<Rec>>>,
}

/// Released records' boxes kept for reuse: more than are released between two polls at 100k
/// spans/s, ~0.5 MiB.
const SPARE_RECS: usize = 1024;

impl Recs {
    pub(super) fn get(&self, h: &Handle) -> Option<&Rec> {
        if *h < self.base {
            return self.old.get(h).map(|r| &**r);
        }
        self.window.get((*h - self.base) as usize)?.as_deref()
    }

    pub(super) fn get_mut(&mut self, h: &Handle) -> Option<&mut Rec> {
        if *h < self.base {
            return self.old.get_mut(h).map(|r| &mut **r);
        }
        self.window
            .get_mut((*h - self.base) as usize)?
            .as_deref_mut()
    }

    pub(super) fn contains_key(&self, h: &Handle) -> bool {
        self.get(h).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn insert(&mut self, h: Handle, rec: Rec) {
        let rec = match self.spare.pop() {
            // Written over, never read: no old record to drop here (see `recycle`).
            Some(spare) => Box::write(spare, rec),
            None => Box::new(rec),
        };
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

    pub(super) fn remove(&mut self, h: &Handle) -> Option<Box<Rec>> {
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

    /// Keeps a removed record's box for a later `insert`. The caller has taken what it needs
    /// (the exchange, moved out with [`Rec::take_exchange`]); what the record still owns is
    /// dropped now, while the caller has just read it. Dropped when the box was reused instead
    /// (a poll later, thousands of records on), reading the record's fields to find what it
    /// owned missed the cache: ~3 % of the daemon's CPU at nginx's request rate.
    pub(super) fn recycle(&mut self, rec: Box<Rec>) {
        if self.spare.len() < SPARE_RECS {
            let raw = Box::into_raw(rec);
            // SAFETY: `raw` is an owned, initialised `Rec` from `Box::into_raw`; it is dropped in
            // place once, and its allocation goes back into a box of `MaybeUninit<Rec>` (same
            // layout), which `insert` only ever writes a whole new record into.
            let spare = unsafe {
                std::ptr::drop_in_place(raw);
                Box::from_raw(raw.cast::<MaybeUninit<Rec>>())
            };
            self.spare.push(spare);
        }
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

    pub(super) fn iter(&self) -> impl Iterator<Item = (Handle, &Rec)> {
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
pub(super) struct DueQueue {
    in_order: VecDeque<(u64, Handle)>,
    others: BinaryHeap<Reverse<(u64, Handle)>>,
}

impl DueQueue {
    pub(super) fn push(&mut self, due: u64, h: Handle) {
        if self.in_order.back().is_none_or(|&last| last <= (due, h)) {
            self.in_order.push_back((due, h));
        } else {
            self.others.push(Reverse((due, h)));
        }
    }

    pub(super) fn peek(&self) -> Option<(u64, Handle)> {
        match (self.in_order.front(), self.others.peek()) {
            (Some(&a), Some(&Reverse(b))) => Some(a.min(b)),
            (Some(&a), None) => Some(a),
            (None, Some(&Reverse(b))) => Some(b),
            (None, None) => None,
        }
    }

    pub(super) fn pop(&mut self) -> Option<(u64, Handle)> {
        let first = self.peek()?;
        if self.in_order.front() == Some(&first) {
            self.in_order.pop_front()
        } else {
            self.others.pop().map(|Reverse(x)| x)
        }
    }
}

/// SERVER spans waiting for their caller's CLIENT span (rule 5), by the fingerprint of their
/// sequence-number key ([`SeqKey::fingerprint`]); the full key stays in the span's record and
/// is checked on a match.
///
/// Most SERVER spans never meet a traced caller (an edge service's callers are end users), and
/// the table holds every one of them for its grace period: tens of thousands of entries at a
/// busy server, so a hash insert per span was a cache miss or two per request. An entry is
/// therefore only appended to `pending`, in arrival order (sequential writes), and indexed when
/// a caller first looks: every pending entry then goes into `index` in that order, so a later
/// entry replaces an earlier one with the same fingerprint exactly as direct inserts did. A
/// server no traced client calls never indexes anything.
#[derive(Default)]
pub(super) struct ServerSeqs {
    /// Not yet indexed: (fingerprint, span, start), in arrival order.
    pending: VecDeque<(u64, Handle, u64)>,
    index: HashMap<u64, (Handle, u64)>,
    /// When `index` was last swept of expired entries.
    swept_ns: u64,
}

impl ServerSeqs {
    pub(super) fn insert(&mut self, fingerprint: u64, h: Handle, start_ns: u64) {
        self.pending.push_back((fingerprint, h, start_ns));
    }

    /// The entry under `fingerprint`, every pending entry indexed first.
    pub(super) fn entry(
        &mut self,
        fingerprint: u64,
    ) -> std::collections::hash_map::Entry<'_, u64, (Handle, u64)> {
        self.index_pending();
        self.index.entry(fingerprint)
    }

    fn index_pending(&mut self) {
        for (fp, h, t) in self.pending.drain(..) {
            self.index.insert(fp, (h, t));
        }
    }

    /// Drops what started before `cutoff`: pending entries from the front (arrival order is
    /// start order up to the reordering between CPUs: an entry behind a later one waits for
    /// it), the index in one pass every `sweep_every_ns` (expiring each entry in start order
    /// was a random probe of the table, a cache miss per span). An entry past its time but not
    /// yet dropped matches only a span still held with the very same key.
    pub(super) fn expire(&mut self, now_ns: u64, cutoff: u64, sweep_every_ns: u64) {
        while self.pending.front().is_some_and(|&(_, _, t)| t < cutoff) {
            self.pending.pop_front();
        }
        if now_ns >= self.swept_ns.saturating_add(sweep_every_ns) {
            self.swept_ns = now_ns;
            self.index.retain(|_, &mut (_, t)| t >= cutoff);
        }
    }

    /// Entries held, pending or indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pending.len() + self.index.len()
    }

    /// Every entry indexed, for tests that look at or rearrange them.
    #[cfg(test)]
    pub(super) fn indexed(&mut self) -> &mut HashMap<u64, (Handle, u64)> {
        self.index_pending();
        &mut self.index
    }
}

/// What stays of a released span so late children still find their parent and trace.
#[derive(Clone)]
pub(super) struct Tomb {
    pub(super) span_id: SpanId,
    pub(super) trace: TraceId,
    /// The `sampled` flag of the trace's remote root parent, if it has one.
    pub(super) remote_sampled: Option<bool>,
    /// The `tracestate` of the trace's remote root parent, if it has one.
    pub(super) tracestate: Option<Arc<TraceState>>,
    pub(super) end_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::linker::Linker;
    use crate::link::settle::LINK_GRACE_NS;
    use crate::link::testutil::*;

    /// Entries are indexed in arrival order when a caller looks (a later entry with the same
    /// fingerprint wins, as with direct inserts), and expire by their start: pending ones from
    /// the front, indexed ones at the sweep.
    #[test]
    fn server_entries_index_in_arrival_order_and_expire() {
        use std::collections::hash_map::Entry;
        let mut s = ServerSeqs::default();
        s.insert(7, 1, 100);
        s.insert(8, 2, 150);
        s.insert(7, 3, 200);
        assert_eq!(s.len(), 3, "nothing indexed before a caller looks");
        assert!(matches!(s.entry(7), Entry::Occupied(e) if *e.get() == (3, 200)));
        s.insert(9, 4, 300);
        s.insert(10, 5, 500);
        s.insert(11, 6, 400);
        s.expire(1_000, 160, 50);
        // Indexed 8 started before the cutoff: swept. Pending ones are all after it.
        assert!(matches!(s.entry(8), Entry::Vacant(_)));
        s.insert(12, 7, 600);
        s.expire(1_010, 450, 50);
        // Pending 12 is after the cutoff; nothing indexed is swept before the next sweep time.
        assert_eq!(s.len(), 5);
        s.expire(1_050, 450, 50);
        let left: Vec<_> = [7, 9, 10, 11, 12]
            .into_iter()
            .filter(|fp| matches!(s.entry(*fp), Entry::Occupied(_)))
            .collect();
        assert_eq!(left, [10, 12]);
    }

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

    /// A long-lived span behind many short ones: the handle-indexed window stays bounded (the
    /// old span moves to the map), every span stays reachable, and the old one is still exported.
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

    /// A released record's box is the next record's, and nothing of the first (its error, its
    /// exchange) comes along; at most `SPARE_RECS` boxes are kept.
    #[test]
    fn released_records_boxes_are_reused_and_carry_nothing_over() {
        use crate::model::SpanStatus;
        let mut l = Linker::new(0, 200_000, Some(1));
        let mut out = Vec::new();
        let a = serve(&mut l, 1, 1, 1_000);
        l.finish(a, 2_000, Some("first".into()));
        l.poll(10 * LINK_GRACE_NS, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(l.recs.spare.len(), 1);
        let spare: *const Rec = l.recs.spare[0].as_ptr();
        let t = 11 * LINK_GRACE_NS;
        let b = serve(&mut l, 1, 1, t);
        assert!(l.recs.spare.is_empty());
        assert!(std::ptr::eq(l.recs.get(&b).unwrap(), spare));
        reply(&mut l, 1, 1, b, t + 500);
        l.poll(30 * LINK_GRACE_NS, &mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0].status, SpanStatus::Error(e) if e.contains("first")));
        assert_eq!(out[1].status, SpanStatus::Unset);
        assert_ne!(out[0].span_id, out[1].span_id);
        // Many released at once: the spares stay bounded.
        let t = 40 * LINK_GRACE_NS;
        for i in 0..3 * SPARE_RECS as u64 {
            let h = serve(&mut l, 1, 1, t + i);
            reply(&mut l, 1, 1, h, t + i + 1);
        }
        l.poll(60 * LINK_GRACE_NS, &mut out);
        assert_eq!(out.len(), 2 + 3 * SPARE_RECS);
        assert_eq!(l.recs.spare.len(), SPARE_RECS);
    }
}
