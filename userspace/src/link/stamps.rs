//! Timestamp bounding for cross-process links: both ends stamp the same bytes at slightly
//! different points, so a linked call and server are fitted into one window, by no more than
//! the capture points explain.

use super::held::{Handle, Parent, Rec};
use super::linker::Linker;
use super::stats::LinkStats;
use crate::model::SpanKind;

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

impl LinkStats {
    /// A call stamped `call_ns` began no later than `server_ns`, when its server read it: the
    /// call's start, moved back if the capture points explain the difference, else left.
    pub(super) fn adjust_stamp(&mut self, call_ns: u64, server_ns: u64) -> u64 {
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
}

impl Linker {
    /// See `start`: a call began no later than the server's first read of it.
    pub(super) fn call_began_by(&mut self, c: Handle, server_read_ns: u64) {
        if let Some(rec) = self.recs.get_mut(&c) {
            rec.start_ns = self.stats.adjust_stamp(rec.start_ns, server_read_ns);
        }
    }

    /// A span's (start, end); for a SERVER span called by a traced CLIENT, ending no later than
    /// the call. Socket-layer capture stamps a write when the kernel has taken the bytes, and on
    /// loopback the peer may have read them by then: the server's last write can be stamped
    /// after the client's read. (The start side is settled when the two are linked: the call
    /// is moved back to the server's first read, see `start`.) Reads are stamped after the data
    /// arrived, so the server's own calls still end before this end. Either move is bounded by
    /// [`MAX_STAMP_ADJUST_NS`]: a larger disagreement is not the capture points' and is left.
    pub(super) fn window_inside_caller(&mut self, rec: &Rec) -> (u64, u64) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::testutil::*;
    use crate::model::Span;

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
}
