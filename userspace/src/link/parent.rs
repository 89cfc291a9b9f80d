//! Choosing a parent when a request starts (linker docs, rules 1, 2, 3, 6 and 7): an incoming
//! `traceparent`, the same sequence number on both ends of a connection, the thread's context
//! and content, in that order of strength; or holding a SERVER root for another agent's answer.

use std::collections::hash_map::Entry;

use super::content::{MAX_CANDIDATES, content_tokens};
use super::crosshost::{WireKey, request_digest};
use super::held::{Handle, Parent, Rec};
use super::linker::{Linker, Start};
use super::settle::LINK_GRACE_NS;
use super::traceparent::Traceparent;
use crate::model::{SpanId, SpanKind, TraceId};

impl Linker {
    /// A request was seen: the span gets its parent, as far as the evidence so far tells.
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
        let mut tracestate = None;
        match s.kind {
            SpanKind::Server => {
                if let Some(Traceparent {
                    trace_id,
                    span_id,
                    sampled,
                    tracestate: state,
                }) = s.traceparent
                {
                    tracestate = state;
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
                        self.servers_by_seq.insert(key.fingerprint(), h, s.start_ns);
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
                        x.hold(
                            h,
                            wire,
                            key.server,
                            digest,
                            s.start_ns.saturating_add(LINK_GRACE_NS),
                        );
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
                    // Only a span not yet released (still in `recs`) can take a parent, and
                    // only the one whose record holds this very key (the table is keyed by
                    // fingerprint: another key's entry is left alone).
                    if let Entry::Occupied(e) = self.servers_by_seq.entry(key.fingerprint()) {
                        let server = e.get().0;
                        let rec = self.recs.get_mut(&server);
                        if rec.as_ref().is_none_or(|r| r.seq_key == Some(key)) {
                            e.remove();
                        }
                        if let Some(rec) = rec
                            && rec.seq_key == Some(key)
                            && rec.parent == Parent::None
                        {
                            rec.parent = Parent::Local(h);
                            self.stats.cross_process_links += 1;
                            start_ns = self.stats.adjust_stamp(start_ns, rec.start_ns);
                        }
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
            Rec {
                span_id: SpanId::random(&mut self.rng),
                own_trace: TraceId::random(&mut self.rng),
                parent,
                tracestate,
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
            },
        );
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::testutil::*;
    use crate::link::traceparent::parse_traceparent;

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

    #[test]
    fn traceparent_is_honoured() {
        let mut l = Linker::new(1_000, 10, None);
        let mut s = start(SpanKind::Server, 1, 1, 5);
        let tp =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        s.traceparent = Some(tp.clone());
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

    /// The SERVER table is keyed by fingerprint: an entry found under a call's fingerprint
    /// whose span holds another key (a collision, forced here) is neither linked nor removed;
    /// its own caller still finds it.
    #[test]
    fn a_fingerprint_collision_never_links_another_request() {
        let mut l = Linker::new(0, 1000, None);
        let mut other = start(SpanKind::Server, 2, 21, 100);
        other.seq_key = Some(key(5));
        let other = l.start(other);
        // Pretend key 9 shares key 5's fingerprint: its entry points at the other request.
        let entry = l
            .servers_by_seq
            .indexed()
            .remove(&key(5).fingerprint())
            .unwrap();
        l.servers_by_seq
            .indexed()
            .insert(key(9).fingerprint(), entry);
        let mut c = start(SpanKind::Client, 1, 11, 90);
        c.seq_key = Some(key(9));
        l.start(c);
        assert_eq!(l.stats.cross_process_links, 0);
        assert!(
            l.servers_by_seq
                .indexed()
                .contains_key(&key(9).fingerprint())
        );
        assert_eq!(l.recs.get(&other).unwrap().parent, Parent::None);
        // Back under its own fingerprint, the right caller links it.
        let entry = l
            .servers_by_seq
            .indexed()
            .remove(&key(9).fingerprint())
            .unwrap();
        l.servers_by_seq
            .indexed()
            .insert(key(5).fingerprint(), entry);
        let mut c = start(SpanKind::Client, 1, 12, 95);
        c.seq_key = Some(key(5));
        let caller = l.start(c);
        assert_eq!(l.recs.get(&other).unwrap().parent, Parent::Local(caller));
        assert!((l.servers_by_seq.len() == 0));
    }

    /// SERVER entries leave the table in sweeps: one past its wait goes at the next sweep, one
    /// within it stays, and a caller that comes late but finds the server still held (with the
    /// same key) before the sweep links it.
    #[test]
    fn server_entries_are_swept_after_their_wait() {
        use crate::link::settle::LINK_GRACE_NS;
        let mut l = Linker::new(0, 1000, None);
        let mut out = Vec::new();
        let wait = LINK_GRACE_NS + 50_000_000;
        let mut old = start(SpanKind::Server, 2, 21, 1_000);
        old.seq_key = Some(key(5));
        l.start(old);
        let t = 1_000 + wait + 1;
        let mut new = start(SpanKind::Server, 2, 22, t);
        new.seq_key = Some(key(6));
        l.start(new);
        assert_eq!(l.servers_by_seq.len(), 2);
        l.poll(t, &mut out);
        assert!(
            !l.servers_by_seq
                .indexed()
                .contains_key(&key(5).fingerprint())
        );
        assert!(
            l.servers_by_seq
                .indexed()
                .contains_key(&key(6).fingerprint())
        );
        // At the very end of its wait it stays, and the held server still links.
        l.poll(t + wait, &mut out);
        assert!(
            l.servers_by_seq
                .indexed()
                .contains_key(&key(6).fingerprint())
        );
        let mut c = start(SpanKind::Client, 1, 11, t - 10);
        c.seq_key = Some(key(6));
        l.start(c);
        assert_eq!(l.stats.cross_process_links, 1);
        assert!((l.servers_by_seq.len() == 0));
    }
}
