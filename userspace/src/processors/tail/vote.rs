//! Keep-if-any-keeps across hosts: the votes of the agents that share a trace.
//!
//! When the peer channel links a server span on one host to its caller on another, both agents
//! hold a part of one trace and decide it on their own. A trace kept by any agent on its path must
//! be kept by all of them, so each agent sends its verdict to the others ([`TraceVote`]) and:
//! - **keeps at once** when its own policies, or a vote already received, keep the trace; the
//!   keep (with its threshold) goes to every agent on the path that has not kept it already;
//! - otherwise **parks** the trace's spans for `vote_wait`, having voted drop: a keep from any
//!   agent on the path releases them (and is passed on to the other agents, so a chain A → B → C
//!   is kept whole whichever end kept it); drops from every agent on the path, or the end of the
//!   wait, drop them;
//! - a keep that comes after the spans were dropped is counted late, never applied to them.
//!
//! Who shares a trace is learnt from the peer channel only (`participant`): the agent we asked
//! about a caller's send, and the agent that asked us about ours. A vote from an agent that is not
//! on the trace's path is refused and counted, so a peer can only widen what is kept of the traces
//! it takes part in. Everything is bounded: at most `max` shared traces (the oldest forgotten
//! first; a parked one is dropped then, counted), each with at most [`MAX_PEERS`] agents.
//!
//! The votes outlive a remote change of the tail sampling policies: one [`Votes`] serves the old
//! policy list's traces and the new one's, so participants learnt, parked traces and votes in
//! flight carry over (each trace parks for the `vote_wait` of the list that decided it).
//!
//! Kept spans carry the combined threshold: a deterministic keep (threshold 0) wins; otherwise the
//! smallest threshold (the largest probability) when every keep knows its own, none when one does
//! not (a keep by rate limiting has no known probability).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use crate::model::{Span, TraceId, TraceVote};

/// Most agents one trace is shared with (more are not voted with, counted).
pub const MAX_PEERS: usize = 16;

/// What the votes did (totals since start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoteStats {
    /// Traces this agent shares with agents on other hosts.
    pub shared_traces: u64,
    pub votes_sent: u64,
    pub votes_received: u64,
    /// Traces this agent's policies dropped that another agent's keep kept.
    pub kept_by_peer: u64,
    /// Parked traces dropped because the wait ended before every agent voted.
    pub wait_expired: u64,
    /// Keeps that came after this agent had dropped the trace's spans.
    pub late_keeps: u64,
    /// Votes from an agent not on the trace's path (or about a trace not shared), ignored.
    pub refused: u64,
    /// Agents beyond [`MAX_PEERS`] for one trace, and shared traces forgotten for room.
    pub overflow: u64,
    /// Spans held now while their trace waits for votes.
    pub parked_spans: u64,
}

/// Traces and spans the votes dropped for good since the sampler last asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub traces: u64,
    pub spans: u64,
}

/// A local decision the votes have the last word on.
pub enum Local {
    /// Kept (the combined threshold): export the spans now.
    Keep(Option<u64>),
    /// Dropped, and no agent can change that any more.
    Drop,
    /// Parked until the other agents vote or the wait ends.
    Parked,
}

enum State {
    /// Not decided here yet.
    Open,
    /// Dropped here; waiting for the other agents.
    Parked {
        spans: Vec<Span>,
        due_ns: u64,
    },
    /// Kept here, with this threshold.
    Kept(Option<u64>),
    Dropped,
}

struct Shared {
    peers: Vec<IpAddr>,
    /// Agents that voted drop, and that voted keep.
    dropped_by: Vec<IpAddr>,
    kept_by: Vec<IpAddr>,
    /// The combined threshold of the keeps received (`Some(x)` once any agent kept).
    remote_keep: Option<Option<u64>>,
    /// This agent's verdict so far (what it told the agents on the path).
    state: State,
}

/// The threshold of a trace kept by two deciders: see the module docs.
pub fn combine(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(0), _) | (_, Some(0)) => Some(0),
        (Some(x), Some(y)) => Some(x.min(y)),
        _ => None,
    }
}

pub struct Votes {
    wait_ns: u64,
    max: usize,
    traces: HashMap<TraceId, Shared>,
    order: VecDeque<TraceId>,
    parked_due: BTreeSet<(u64, TraceId)>,
    outbox: Vec<(IpAddr, TraceVote)>,
    dropped: Dropped,
    /// The traces behind `dropped`, for the sampler to remember the verdict of.
    dropped_ids: Vec<TraceId>,
    pub stats: VoteStats,
}

/// Spans a vote released, for the sampler to count and hand on.
pub struct Released {
    pub trace_id: TraceId,
    pub spans: Vec<Span>,
    pub th: Option<u64>,
}

impl Votes {
    pub fn new(wait_ns: u64, max: usize) -> Votes {
        Votes {
            wait_ns,
            max: max.max(1),
            traces: HashMap::new(),
            order: VecDeque::new(),
            parked_due: BTreeSet::new(),
            outbox: Vec::new(),
            dropped: Dropped::default(),
            dropped_ids: Vec::new(),
            stats: VoteStats::default(),
        }
    }

    /// How long the traces decided from now on wait for votes (the `vote_wait` of the policy list
    /// that decides them); traces parked already keep their end.
    pub fn set_wait(&mut self, wait_ns: u64) {
        self.wait_ns = wait_ns;
    }

    /// A new bound on shared traces (a changed configuration): the oldest beyond it are forgotten
    /// as more are learnt.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }

    /// Whether the trace is shared with another agent (learnt from the peer channel).
    pub fn knows(&self, trace_id: &TraceId) -> bool {
        self.traces.contains_key(trace_id)
    }

    /// The agent at `agent` holds another part of `trace_id`. When this agent has decided
    /// already, it is told the verdict at once.
    pub fn participant(&mut self, trace_id: TraceId, agent: IpAddr) {
        if !self.traces.contains_key(&trace_id) {
            while self.traces.len() >= self.max {
                match self.order.pop_front() {
                    Some(old) => self.forget(old),
                    None => break,
                }
            }
            self.traces.insert(
                trace_id,
                Shared {
                    peers: Vec::new(),
                    dropped_by: Vec::new(),
                    kept_by: Vec::new(),
                    remote_keep: None,
                    state: State::Open,
                },
            );
            self.order.push_back(trace_id);
            self.stats.shared_traces += 1;
        }
        let sh = self.traces.get_mut(&trace_id).expect("inserted");
        if sh.peers.contains(&agent) {
            return;
        }
        if sh.peers.len() >= MAX_PEERS {
            self.stats.overflow += 1;
            return;
        }
        sh.peers.push(agent);
        let told = match sh.state {
            State::Open => None,
            State::Kept(th) => Some((true, th)),
            State::Parked { .. } | State::Dropped => Some((false, None)),
        };
        if let Some((keep, th)) = told {
            self.outbox.push((agent, TraceVote { trace_id, keep, th }));
            self.stats.votes_sent += 1;
        }
    }

    /// Applies the votes to this agent's own verdict on a trace it decided (`keep`: its policies
    /// kept it, with that threshold). `spans` are parked when the result is [`Local::Parked`].
    pub fn decided(
        &mut self,
        trace_id: TraceId,
        keep: Option<Option<u64>>,
        spans: &mut Vec<Span>,
        now_ns: u64,
    ) -> Local {
        let Some(sh) = self.traces.get_mut(&trace_id) else {
            return match keep {
                Some(th) => Local::Keep(th),
                None => Local::Drop,
            };
        };
        if !matches!(sh.state, State::Open) {
            // Decided before (spans that came after the decision): the same verdict.
            return match sh.state {
                State::Kept(th) => Local::Keep(th),
                _ => Local::Drop,
            };
        }
        let kept = match (keep, sh.remote_keep) {
            (Some(a), Some(b)) => Some(combine(a, b)),
            (Some(a), None) => Some(a),
            (None, Some(b)) => {
                self.stats.kept_by_peer += 1;
                Some(b)
            }
            (None, None) => None,
        };
        match kept {
            Some(th) => {
                sh.state = State::Kept(th);
                let keep = TraceVote {
                    trace_id,
                    keep: true,
                    th,
                };
                send(&mut self.outbox, &mut self.stats, sh, keep, None);
                Local::Keep(th)
            }
            None => {
                let drop = TraceVote {
                    trace_id,
                    keep: false,
                    th: None,
                };
                send(&mut self.outbox, &mut self.stats, sh, drop, None);
                if sh.peers.iter().all(|p| sh.dropped_by.contains(p)) {
                    sh.state = State::Dropped;
                    return Local::Drop;
                }
                let due_ns = now_ns.saturating_add(self.wait_ns);
                self.stats.parked_spans += spans.len() as u64;
                sh.state = State::Parked {
                    spans: std::mem::take(spans),
                    due_ns,
                };
                self.parked_due.insert((due_ns, trace_id));
                Local::Parked
            }
        }
    }

    /// A span of a parked trace that arrived while it waits is parked with it (None); any other
    /// span is handed back.
    pub fn park_late(&mut self, span: Span) -> Option<Span> {
        match self.traces.get_mut(&span.trace_id).map(|s| &mut s.state) {
            Some(State::Parked { spans, .. }) => {
                spans.push(span);
                self.stats.parked_spans += 1;
                None
            }
            _ => Some(span),
        }
    }

    /// A vote from the agent at `from`. A keep releases a parked trace (returned).
    pub fn vote(&mut self, from: IpAddr, v: TraceVote) -> Option<Released> {
        self.stats.votes_received += 1;
        let Some(sh) = self.traces.get_mut(&v.trace_id) else {
            self.stats.refused += 1;
            return None;
        };
        if !sh.peers.contains(&from) {
            self.stats.refused += 1;
            return None;
        }
        if !v.keep {
            if !sh.dropped_by.contains(&from) {
                sh.dropped_by.push(from);
            }
            let all = sh.peers.iter().all(|p| sh.dropped_by.contains(p));
            if all && let State::Parked { due_ns, .. } = sh.state {
                self.parked_due.remove(&(due_ns, v.trace_id));
                self.finish_parked(v.trace_id);
            }
            return None;
        }
        if !sh.kept_by.contains(&from) {
            sh.kept_by.push(from);
        }
        sh.remote_keep = Some(match sh.remote_keep {
            Some(th) => combine(th, v.th),
            None => v.th,
        });
        match &mut sh.state {
            State::Open | State::Kept(_) => None,
            State::Dropped => {
                self.stats.late_keeps += 1;
                None
            }
            State::Parked { spans, due_ns } => {
                let spans = std::mem::take(spans);
                self.parked_due.remove(&(*due_ns, v.trace_id));
                self.stats.parked_spans -= spans.len() as u64;
                let th = sh.remote_keep.flatten();
                sh.state = State::Kept(th);
                self.stats.kept_by_peer += 1;
                // Passed on to the agents on the path that may not know.
                let keep = TraceVote {
                    trace_id: v.trace_id,
                    keep: true,
                    th,
                };
                send(&mut self.outbox, &mut self.stats, sh, keep, Some(from));
                Some(Released {
                    trace_id: v.trace_id,
                    spans,
                    th,
                })
            }
        }
    }

    /// Parked traces whose wait ended at `now_ns` are dropped.
    pub fn poll(&mut self, now_ns: u64) {
        while let Some(&(due, id)) = self.parked_due.first() {
            if due > now_ns {
                break;
            }
            self.parked_due.pop_first();
            self.stats.wait_expired += 1;
            self.finish_parked(id);
        }
    }

    /// Shutdown: no vote can come any more; every parked trace is dropped.
    pub fn drain(&mut self) {
        while let Some((_, id)) = self.parked_due.pop_first() {
            self.stats.wait_expired += 1;
            self.finish_parked(id);
        }
    }

    /// Forgets every shared trace and gives the memory back (tail sampling off, nothing parked
    /// any more); votes about them are refused from then on. Votes still to send stay.
    pub fn forget_all(&mut self) {
        debug_assert!(self.parked_due.is_empty());
        if self.traces.is_empty() {
            return;
        }
        self.traces = HashMap::new();
        self.order = VecDeque::new();
        self.parked_due = BTreeSet::new();
    }

    /// What was dropped for good since the last call.
    pub fn take_dropped(&mut self) -> Dropped {
        std::mem::take(&mut self.dropped)
    }

    /// The traces dropped for good since the last call (their late spans are dropped too).
    pub fn take_dropped_ids(&mut self, out: &mut Vec<TraceId>) {
        out.append(&mut self.dropped_ids);
    }

    /// Votes to send, by agent address.
    pub fn take_outbox(&mut self, out: &mut Vec<(IpAddr, TraceVote)>) {
        out.append(&mut self.outbox);
    }

    /// Drops a parked trace's spans for good.
    fn finish_parked(&mut self, id: TraceId) {
        let Some(sh) = self.traces.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut sh.state, State::Dropped) {
            State::Parked { spans, .. } => self.count_dropped(id, spans.len()),
            other => sh.state = other,
        }
    }

    fn count_dropped(&mut self, id: TraceId, spans: usize) {
        self.dropped_ids.push(id);
        self.stats.parked_spans -= spans as u64;
        self.dropped.traces += 1;
        self.dropped.spans += spans as u64;
    }

    /// Forgets a shared trace for room; a parked one is dropped.
    fn forget(&mut self, id: TraceId) {
        let Some(sh) = self.traces.remove(&id) else {
            return;
        };
        self.stats.overflow += 1;
        if let State::Parked { spans, due_ns } = sh.state {
            self.parked_due.remove(&(due_ns, id));
            self.count_dropped(id, spans.len());
        }
    }
}

/// Queues `vote` for every agent of `sh` except `skip` and, for a keep, those that kept.
fn send(
    outbox: &mut Vec<(IpAddr, TraceVote)>,
    stats: &mut VoteStats,
    sh: &Shared,
    vote: TraceVote,
    skip: Option<IpAddr>,
) {
    for &p in &sh.peers {
        if Some(p) == skip || (vote.keep && sh.kept_by.contains(&p)) {
            continue;
        }
        outbox.push((p, vote));
        stats.votes_sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::server_span;

    const S: u64 = 1_000_000_000;
    const T: TraceId = TraceId([7; 16]);

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn spans(n: usize) -> Vec<Span> {
        (0..n)
            .map(|_| {
                let mut s = server_span();
                s.trace_id = T;
                s
            })
            .collect()
    }

    fn vote(keep: bool, th: Option<u64>) -> TraceVote {
        TraceVote {
            trace_id: T,
            keep,
            th,
        }
    }

    fn outbox(v: &mut Votes) -> Vec<(IpAddr, TraceVote)> {
        let mut out = Vec::new();
        v.take_outbox(&mut out);
        out
    }

    #[test]
    fn a_trace_nobody_shares_is_decided_here_alone() {
        let mut v = Votes::new(2 * S, 100);
        assert!(matches!(v.decided(T, None, &mut spans(2), 0), Local::Drop));
        assert!(matches!(
            v.decided(TraceId([1; 16]), Some(Some(5)), &mut spans(1), 0),
            Local::Keep(Some(5))
        ));
        assert!(outbox(&mut v).is_empty());
    }

    #[test]
    fn a_drop_here_waits_and_a_keep_there_releases_it() {
        let mut v = Votes::new(2 * S, 100);
        v.participant(T, ip(2));
        let mut sp = spans(3);
        assert!(matches!(v.decided(T, None, &mut sp, 0), Local::Parked));
        assert!(sp.is_empty(), "the spans are parked");
        assert_eq!(outbox(&mut v), vec![(ip(2), vote(false, None))]);
        // A span of the trace that comes while it waits joins it.
        assert!(v.park_late(spans(1).pop().unwrap()).is_none());
        assert_eq!(v.stats.parked_spans, 4);
        let r = v.vote(ip(2), vote(true, Some(0))).expect("released");
        assert_eq!((r.spans.len(), r.th), (4, Some(0)));
        assert_eq!(v.stats.kept_by_peer, 1);
        assert_eq!(v.stats.parked_spans, 0);
        // Not echoed back to the agent that kept it.
        assert!(outbox(&mut v).is_empty());
        // Spans decided later for the same trace follow the keep.
        assert!(matches!(
            v.decided(T, None, &mut spans(1), S),
            Local::Keep(Some(0))
        ));
    }

    #[test]
    fn a_keep_here_is_sent_and_a_keep_received_first_wins_over_a_drop() {
        let mut v = Votes::new(2 * S, 100);
        v.participant(T, ip(2));
        assert!(matches!(
            v.decided(T, Some(Some(9)), &mut spans(1), 0),
            Local::Keep(Some(9))
        ));
        assert_eq!(outbox(&mut v), vec![(ip(2), vote(true, Some(9)))]);

        let u = TraceId([8; 16]);
        v.participant(u, ip(3));
        assert!(
            v.vote(
                ip(3),
                TraceVote {
                    trace_id: u,
                    keep: true,
                    th: Some(4)
                }
            )
            .is_none()
        );
        assert!(matches!(
            v.decided(u, None, &mut spans(1), 0),
            Local::Keep(Some(4))
        ));
        assert_eq!(v.stats.kept_by_peer, 1);
        assert!(
            outbox(&mut v).is_empty(),
            "the only agent on the path kept it"
        );
    }

    #[test]
    fn drops_from_every_agent_end_the_wait_early() {
        let mut v = Votes::new(2 * S, 100);
        v.participant(T, ip(2));
        v.participant(T, ip(3));
        assert!(matches!(
            v.decided(T, None, &mut spans(2), 0),
            Local::Parked
        ));
        assert!(v.vote(ip(2), vote(false, None)).is_none());
        assert_eq!(v.stats.parked_spans, 2, "one agent has not voted yet");
        assert!(v.vote(ip(3), vote(false, None)).is_none());
        assert_eq!(v.stats.parked_spans, 0);
        assert_eq!(
            v.take_dropped(),
            Dropped {
                traces: 1,
                spans: 2
            }
        );
        assert_eq!(v.stats.wait_expired, 0);
        // Both drops were in before: no wait at all.
        let u = TraceId([9; 16]);
        v.participant(u, ip(2));
        assert!(
            v.vote(
                ip(2),
                TraceVote {
                    trace_id: u,
                    keep: false,
                    th: None
                }
            )
            .is_none()
        );
        assert!(matches!(v.decided(u, None, &mut spans(1), 0), Local::Drop));
    }

    #[test]
    fn the_wait_ends_in_a_drop_and_a_later_keep_is_counted_late() {
        let mut v = Votes::new(2 * S, 100);
        v.participant(T, ip(2));
        assert!(matches!(
            v.decided(T, None, &mut spans(2), 0),
            Local::Parked
        ));
        v.poll(2 * S - 1);
        assert_eq!(v.stats.parked_spans, 2);
        v.poll(2 * S);
        assert_eq!(
            v.take_dropped(),
            Dropped {
                traces: 1,
                spans: 2
            }
        );
        assert_eq!(v.stats.wait_expired, 1);
        assert!(v.vote(ip(2), vote(true, Some(0))).is_none());
        assert_eq!(v.stats.late_keeps, 1);
        assert!(v.park_late(spans(1).pop().unwrap()).is_some());
    }

    #[test]
    fn votes_from_agents_off_the_path_are_refused() {
        let mut v = Votes::new(2 * S, 100);
        // Not shared at all.
        assert!(v.vote(ip(2), vote(true, Some(0))).is_none());
        v.participant(T, ip(2));
        assert!(matches!(
            v.decided(T, None, &mut spans(1), 0),
            Local::Parked
        ));
        // Shared, but not with this agent.
        assert!(v.vote(ip(9), vote(true, Some(0))).is_none());
        assert_eq!(v.stats.refused, 2);
        assert_eq!(v.stats.parked_spans, 1, "still waiting");
    }

    #[test]
    fn a_keep_is_passed_along_a_chain() {
        // B, in the middle of A → B → C: it asked A, and C asked it.
        let mut b = Votes::new(2 * S, 100);
        b.participant(T, ip(1));
        b.participant(T, ip(3));
        assert!(matches!(
            b.decided(T, None, &mut spans(1), 0),
            Local::Parked
        ));
        let mut sent = outbox(&mut b);
        sent.sort_by_key(|(to, _)| *to);
        assert_eq!(
            sent,
            vec![(ip(1), vote(false, None)), (ip(3), vote(false, None))]
        );
        // C keeps: B keeps and tells A, not C.
        assert!(b.vote(ip(3), vote(true, Some(0))).is_some());
        assert_eq!(outbox(&mut b), vec![(ip(1), vote(true, Some(0)))]);
    }

    #[test]
    fn an_agent_that_joins_after_the_decision_is_told_at_once() {
        let mut v = Votes::new(2 * S, 100);
        v.participant(T, ip(2));
        assert!(matches!(
            v.decided(T, Some(None), &mut spans(1), 0),
            Local::Keep(None)
        ));
        let _ = outbox(&mut v);
        v.participant(T, ip(4));
        assert_eq!(outbox(&mut v), vec![(ip(4), vote(true, None))]);
        v.participant(T, ip(4));
        assert!(outbox(&mut v).is_empty(), "told once");
    }

    #[test]
    fn shared_traces_and_agents_per_trace_are_bounded() {
        let mut v = Votes::new(2 * S, 2);
        v.participant(T, ip(2));
        assert!(matches!(
            v.decided(T, None, &mut spans(3), 0),
            Local::Parked
        ));
        v.participant(TraceId([1; 16]), ip(2));
        // A third shared trace pushes out the oldest, parked: dropped, counted.
        v.participant(TraceId([2; 16]), ip(2));
        assert_eq!(
            v.take_dropped(),
            Dropped {
                traces: 1,
                spans: 3
            }
        );
        assert_eq!(v.stats.overflow, 1);
        assert_eq!(v.stats.parked_spans, 0);
        let u = TraceId([1; 16]);
        for n in 0..(MAX_PEERS as u8 + 3) {
            v.participant(u, ip(10 + n));
        }
        assert_eq!(
            v.stats.overflow,
            1 + 3 + 1,
            "three agents over the bound (ip 2 was first)"
        );
    }

    #[test]
    fn thresholds_combine_to_the_largest_known_probability() {
        assert_eq!(combine(Some(0), None), Some(0));
        assert_eq!(combine(None, Some(0)), Some(0));
        assert_eq!(combine(Some(10), Some(3)), Some(3));
        assert_eq!(combine(Some(10), None), None);
        assert_eq!(combine(None, None), None);
    }
}
