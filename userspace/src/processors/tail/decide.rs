//! The tail sampler: spans the linker released go into the [`Buffer`]; each complete local trace
//! is judged by the policy list, and every span of it leaves with the same verdict — kept spans
//! carry the sampling threshold (`th`) of the rule that kept them.
//!
//! Combining the list (the Collector's rule): any "inverted not sampled" drops the trace; else any
//! "sampled" keeps it. The probability a kept trace carries is 1 when a deterministic policy kept
//! it (status, latency, attributes, anomaly, always), else the largest probability of the
//! probabilistic policies that kept it; a trace kept by rate limiting alone has no known
//! probability and carries no `th`.
//!
//! One agent sees every process of its host, so every span of a trace on this host gets the same
//! decision. Across hosts, the agents that share a trace vote ([`super::vote`]): a trace kept by
//! any agent on its path is kept by all of them.
//!
//! The policy list can change at run time (a remote configuration, [`TailSampler::reconfigure`]).
//! Each trace is decided by the list in force when its first span arrived, at its normal due time:
//! the traces held at the change *retire* with the old list (its limits, `decision_wait` and
//! `vote_wait`) while new traces go to the new one. The votes and the remembered verdicts are the
//! sampler's, not a list's, so participants, parked traces and votes in flight carry over, and so
//! do the totals. At most one list retires at a time: a further change while one still holds
//! traces decides those at once, under their own list, counted (`retired_early`).
//!
//! Switched off, the verdicts already made still hold: a late span of a trace dropped (or kept)
//! before goes the way of its trace, not out alone. Each verdict is honoured for as long as it
//! would have been remembered had the sampler stayed on — until as many traces have passed since
//! as the memory of verdicts holds (2 × `num_traces`; a trace is counted by its local root span)
//! — and at most `max_hold` (of the list switched off) after it was made; then it is forgotten
//! (`verdicts_forgotten`). Once nothing is held, parked or remembered, the sampler gives its
//! memory back, the votes' knowledge of shared traces included (a vote about one of them is
//! refused from then on), and spans pass straight through.

use std::net::IpAddr;
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::buffer::{Buffer, Decided, Limits, Ready, Verdict, is_local_root};
use super::policy::{AnomalyView, Outcome, Policy, TraceView};
use super::threshold::threshold;
use super::vote::{Local, VoteStats, Votes};
use crate::config::TailSampling;
use crate::model::{Sampling, Span, TraceId, TraceVote};

/// What the tail sampler did (totals since start, across configuration changes), for
/// self-metrics and the exit summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TailStats {
    pub traces_kept: u64,
    pub traces_dropped: u64,
    pub spans_kept: u64,
    pub spans_dropped: u64,
    /// Spans that arrived after their trace was decided (and got its verdict).
    pub late_spans: u64,
    /// Traces decided early because the buffer was full.
    pub overflow: u64,
    /// Traces each policy sampled, by policy name, in list order (the current list's, then those
    /// of a retiring list's that it does not have; switched off, the last ones' frozen).
    pub by_policy: Vec<(String, u64)>,
    /// Time from a trace's first span to its decision: sum, count and max (ns).
    pub wait_sum_ns: u64,
    pub wait_max_ns: u64,
    /// Traces and spans held now.
    pub held_traces: u64,
    pub held_spans: u64,
    /// Changes of the policy list at run time (switching off included).
    pub changes: u64,
    /// Traces decided before their due time because a change came while the list before the
    /// last change still held them.
    pub retired_early: u64,
    /// Late spans that got their trace's remembered verdict while tail sampling was off (also
    /// in `late_spans`).
    pub late_spans_off: u64,
    /// Verdicts forgotten while tail sampling was off (their remember window ended).
    pub verdicts_forgotten: u64,
    /// Verdicts remembered now, for late spans.
    pub remembered: u64,
    /// Votes with the agents on other hosts that share a trace.
    pub votes: VoteStats,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// One policy list with the buffer of the traces it decides.
struct Generation {
    buffer: Buffer,
    policies: Vec<Policy>,
    /// Where each policy's count is in [`TailStats::by_policy`].
    slots: Vec<usize>,
    vote_wait_ns: u64,
    max_hold_ns: u64,
}

impl Generation {
    fn new(cfg: &TailSampling) -> Generation {
        Generation {
            buffer: Buffer::new(Limits {
                decision_wait_ns: ns(cfg.decision_wait),
                max_hold_ns: ns(cfg.max_hold),
                num_traces: cfg.num_traces,
                max_spans: cfg.max_spans,
            }),
            policies: cfg.policies.iter().map(Policy::new).collect(),
            slots: Vec::new(),
            vote_wait_ns: ns(cfg.vote_wait),
            max_hold_ns: ns(cfg.max_hold),
        }
    }
}

/// What outlives a change of the policy list.
struct Core {
    decided: Decided,
    stats: TailStats,
    /// `service.name` by pid, for attribute policies and the anomaly policy.
    services: FxHashMap<u32, String>,
    votes: Votes,
    /// Switched off: how long a verdict is honoured after it was made (the `max_hold` of the
    /// list switched off).
    linger_ns: u64,
    /// The latest time the sampler was given (votes come without one).
    now_ns: u64,
}

pub struct TailSampler {
    /// The list new traces go to; None once switched off remotely (spans of traces no list holds
    /// pass through then).
    current: Option<Generation>,
    /// The list in force before the last change, until the traces it holds are decided.
    retiring: Option<Generation>,
    core: Core,
    ready: Vec<Ready>,
}

impl TailSampler {
    pub fn new(cfg: &TailSampling) -> TailSampler {
        let mut t = TailSampler {
            current: Some(Generation::new(cfg)),
            retiring: None,
            core: Core {
                decided: Decided::new(cfg.num_traces.saturating_mul(2)),
                stats: TailStats::default(),
                services: FxHashMap::default(),
                votes: Votes::new(ns(cfg.vote_wait), cfg.num_traces),
                linger_ns: ns(cfg.max_hold),
                now_ns: 0,
            },
            ready: Vec::new(),
        };
        t.relabel();
        t
    }

    /// A new policy list at `now_ns` (a remote configuration; None: tail sampling off). The
    /// traces held now stay with the old list and are decided by it at their due time; new
    /// traces go to the new list (or, switched off, pass through). A list still retiring from the
    /// change before has its traces decided now, into `out` (counted as retired early).
    pub fn reconfigure(
        &mut self,
        cfg: Option<&TailSampling>,
        now_ns: u64,
        anomalies: &dyn AnomalyView,
        out: &mut Vec<Span>,
    ) {
        self.core.stats.changes += 1;
        self.core.now_ns = self.core.now_ns.max(now_ns);
        if let Some(g) = &self.current {
            self.core.linger_ns = g.max_hold_ns;
        }
        if let Some(mut old) = self.retiring.take() {
            let mut ready = std::mem::take(&mut self.ready);
            old.buffer.drain(&mut ready);
            self.core.stats.retired_early += ready.len() as u64;
            self.core
                .decide_all(&mut old, &mut ready, now_ns, anomalies, out);
            self.ready = ready;
        }
        self.retiring = self.current.take().filter(|g| g.buffer.held().0 > 0);
        if let Some(cfg) = cfg {
            self.current = Some(Generation::new(cfg));
            self.core.votes.set_max(cfg.num_traces);
            self.core.decided.set_cap(cfg.num_traces.saturating_mul(2));
            self.core.decided.resume();
        }
        self.relabel();
    }

    /// Nothing to do: switched off, nothing held, no trace waiting for votes, no verdict
    /// remembered for late spans (spans may pass straight through).
    pub fn idle(&self) -> bool {
        self.current.is_none()
            && self.retiring.is_none()
            && self.core.votes.stats.parked_spans == 0
            && self.core.decided.is_empty()
    }

    /// Points each list's policies at their counters in `by_policy`, by name: the counts of a
    /// name carry over a change; names no list has any more are let go, unless tail sampling is
    /// off (nothing replaces them).
    fn relabel(&mut self) {
        let old = std::mem::take(&mut self.core.stats.by_policy);
        let mut by: Vec<(String, u64)> = Vec::new();
        for g in [self.current.as_mut(), self.retiring.as_mut()]
            .into_iter()
            .flatten()
        {
            g.slots = g
                .policies
                .iter()
                .map(|p| match by.iter().position(|(n, _)| *n == p.name) {
                    Some(i) => i,
                    None => {
                        let n = old.iter().find(|(n, _)| *n == p.name).map_or(0, |o| o.1);
                        by.push((p.name.clone(), n));
                        by.len() - 1
                    }
                })
                .collect();
        }
        if self.current.is_none() {
            // Switched off: the last counts stay, frozen.
            for (name, n) in old {
                if !by.iter().any(|(b, _)| *b == name) {
                    by.push((name, n));
                }
            }
        }
        self.core.stats.by_policy = by;
    }

    /// The `service.name` of a process, for policies that ask.
    pub fn service(&mut self, pid: u32, name: &str) {
        self.core.services.insert(pid, name.to_string());
    }

    /// Takes a released span at `now_ns` (monotonic); kept spans of decided traces go to `out`.
    pub fn offer(
        &mut self,
        span: Span,
        now_ns: u64,
        anomalies: &dyn AnomalyView,
        out: &mut Vec<Span>,
    ) {
        let c = &mut self.core;
        c.now_ns = c.now_ns.max(now_ns);
        let Some(mut span) = c.votes.park_late(span) else {
            c.stats.late_spans += 1;
            return;
        };
        if let Some(verdict) = c.decided.get(&span.trace_id) {
            c.stats.late_spans += 1;
            if self.current.is_none() {
                c.stats.late_spans_off += 1;
            }
            match verdict {
                Verdict::Keep(th) => {
                    span.sampling = Sampling::kept_after(th, span.upstream_th());
                    c.stats.spans_kept += 1;
                    out.push(span);
                }
                Verdict::Drop => c.stats.spans_dropped += 1,
            }
            return;
        }
        // A trace the retiring list holds stays with it; anything else is the current list's.
        let generation = match (&mut self.retiring, &mut self.current) {
            (Some(r), _) if r.buffer.holds(&span.trace_id) => r,
            (_, Some(g)) => g,
            (_, None) => {
                // Switched off: a new trace passes, taking the room its verdict would have.
                if is_local_root(&span) {
                    c.stats.verdicts_forgotten += c.decided.passed() as u64;
                }
                out.push(span);
                return;
            }
        };
        let mut ready = std::mem::take(&mut self.ready);
        generation.buffer.offer(span, now_ns, &mut ready);
        c.decide_all(generation, &mut ready, now_ns, anomalies, out);
        self.ready = ready;
    }

    /// Decides the traces that are due at `now_ns`.
    pub fn poll(&mut self, now_ns: u64, anomalies: &dyn AnomalyView, out: &mut Vec<Span>) {
        self.core.now_ns = self.core.now_ns.max(now_ns);
        let mut ready = std::mem::take(&mut self.ready);
        for g in [self.retiring.as_mut(), self.current.as_mut()]
            .into_iter()
            .flatten()
        {
            g.buffer.poll(now_ns, &mut ready);
            self.core.decide_all(g, &mut ready, now_ns, anomalies, out);
        }
        self.ready = ready;
        if self
            .retiring
            .as_ref()
            .is_some_and(|g| g.buffer.held().0 == 0)
        {
            self.retiring = None;
            self.relabel();
        }
        self.core.votes.poll(now_ns);
        self.core.count_vote_drops();
        if self.current.is_none() {
            let c = &mut self.core;
            let before = now_ns.saturating_sub(c.linger_ns);
            c.stats.verdicts_forgotten += c.decided.forget_before(before) as u64;
            if self.idle() {
                // Nothing left to honour: the shared traces' state goes too.
                self.core.votes.forget_all();
            }
        }
    }

    /// The agent at `agent` (another host) holds another part of `trace_id`. Switched off, only
    /// for a trace a retiring list still holds or one already shared.
    pub fn participant(&mut self, trace_id: TraceId, agent: IpAddr) {
        if self.current.is_none()
            && !self.core.votes.knows(&trace_id)
            && !self
                .retiring
                .as_ref()
                .is_some_and(|g| g.buffer.holds(&trace_id))
        {
            return;
        }
        self.core.votes.participant(trace_id, agent);
        self.core.count_vote_drops();
    }

    /// A vote from the agent at `from`; the spans of a trace it keeps go to `out`.
    pub fn vote(&mut self, from: IpAddr, vote: TraceVote, out: &mut Vec<Span>) {
        let c = &mut self.core;
        if let Some(r) = c.votes.vote(from, vote) {
            c.decided
                .remember(r.trace_id, Verdict::Keep(r.th), c.now_ns);
            c.stats.traces_kept += 1;
            c.stats.spans_kept += r.spans.len() as u64;
            out.extend(r.spans.into_iter().map(|mut s| {
                s.sampling = Sampling::kept_after(r.th, s.upstream_th());
                s
            }));
        }
        c.count_vote_drops();
    }

    /// Votes to send to other agents, by address.
    pub fn take_votes(&mut self, out: &mut Vec<(IpAddr, TraceVote)>) {
        self.core.votes.take_outbox(out);
    }

    /// Shutdown: decides everything held.
    pub fn drain(&mut self, now_ns: u64, anomalies: &dyn AnomalyView, out: &mut Vec<Span>) {
        let mut ready = std::mem::take(&mut self.ready);
        for g in [self.retiring.as_mut(), self.current.as_mut()]
            .into_iter()
            .flatten()
        {
            g.buffer.drain(&mut ready);
            self.core.decide_all(g, &mut ready, now_ns, anomalies, out);
        }
        self.ready = ready;
        self.core.votes.drain();
        self.core.count_vote_drops();
    }

    pub fn stats(&self) -> TailStats {
        let (mut t, mut s) = (0, 0);
        for g in [self.retiring.as_ref(), self.current.as_ref()]
            .into_iter()
            .flatten()
        {
            let (gt, gs) = g.buffer.held();
            t += gt;
            s += gs;
        }
        TailStats {
            held_traces: t as u64,
            held_spans: s as u64,
            remembered: self.core.decided.len() as u64,
            votes: self.core.votes.stats.clone(),
            ..self.core.stats.clone()
        }
    }
}

impl Core {
    fn count_vote_drops(&mut self) {
        let d = self.votes.take_dropped();
        self.stats.traces_dropped += d.traces;
        self.stats.spans_dropped += d.spans;
        // Remembered like any other verdict: a late span of the trace is dropped too.
        let mut ids = Vec::new();
        self.votes.take_dropped_ids(&mut ids);
        for id in ids {
            self.decided.remember(id, Verdict::Drop, self.now_ns);
        }
    }

    /// Decides the `ready` traces of `generation` with its policies (and its `vote_wait`).
    fn decide_all(
        &mut self,
        generation: &mut Generation,
        ready: &mut Vec<Ready>,
        now_ns: u64,
        anomalies: &dyn AnomalyView,
        out: &mut Vec<Span>,
    ) {
        if ready.is_empty() {
            return;
        }
        self.votes.set_wait(generation.vote_wait_ns);
        for mut r in ready.drain(..) {
            let local = match self.decide(generation, &r.spans, now_ns, anomalies) {
                Verdict::Keep(th) => Some(th),
                Verdict::Drop => None,
            };
            let st = &mut self.stats;
            st.overflow += u64::from(r.overflow);
            let waited = now_ns.saturating_sub(r.first_ns);
            st.wait_sum_ns = st.wait_sum_ns.saturating_add(waited);
            st.wait_max_ns = st.wait_max_ns.max(waited);
            // The votes of other agents sharing the trace have the last word (keep-if-any).
            let verdict = match self.votes.decided(r.trace_id, local, &mut r.spans, now_ns) {
                Local::Keep(th) => Verdict::Keep(th),
                Local::Drop => Verdict::Drop,
                Local::Parked => continue,
            };
            self.decided.remember(r.trace_id, verdict, now_ns);
            let st = &mut self.stats;
            let n = r.spans.len() as u64;
            match verdict {
                Verdict::Keep(th) => {
                    st.traces_kept += 1;
                    st.spans_kept += n;
                    out.extend(r.spans.into_iter().map(|mut s| {
                        s.sampling = Sampling::kept_after(th, s.upstream_th());
                        s
                    }));
                }
                Verdict::Drop => {
                    st.traces_dropped += 1;
                    st.spans_dropped += n;
                }
            }
        }
    }

    /// The verdict of `generation`'s policy list on one trace.
    fn decide(
        &mut self,
        generation: &mut Generation,
        spans: &[Span],
        now_ns: u64,
        anomalies: &dyn AnomalyView,
    ) -> Verdict {
        let services = &self.services;
        let service = |pid: u32| services.get(&pid).map_or("", String::as_str);
        let view = TraceView {
            spans,
            service: &service,
            now_ns,
            anomalies,
        };
        let mut veto = false;
        let mut kept = false;
        // The probability the trace was kept with: deterministic rules say 1.
        let mut p: Option<f64> = None;
        for (policy, &slot) in generation.policies.iter_mut().zip(&generation.slots) {
            match policy.evaluate(&view) {
                Outcome::Sampled(q) => {
                    kept = true;
                    self.stats.by_policy[slot].1 += 1;
                    if let Some(q) = q {
                        p = Some(p.map_or(q, |p| p.max(q)));
                    }
                }
                Outcome::NotSampled => {}
                Outcome::InvertNotSampled => veto = true,
            }
        }
        if veto || !kept {
            Verdict::Drop
        } else {
            Verdict::Keep(p.map(threshold))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyConfig, PolicyRule, StatusCodeName};
    use crate::model::{SpanId, SpanStatus, TraceId};
    use crate::processors::tail::policy::NoAnomalies;
    use crate::testkit::{client_span, server_span};

    const MS: u64 = 1_000_000;

    /// A sampler of `rules`, named p0, p1, … (see `named` for the limits).
    fn sampler(rules: Vec<PolicyRule>) -> TailSampler {
        let names: Vec<String> = (0..rules.len()).map(|i| format!("p{i}")).collect();
        TailSampler::new(&named(
            names.iter().map(String::as_str).zip(rules).collect(),
        ))
    }

    /// Root server span in pid 1, a client call and the called server span in pid 2.
    fn trace(n: u64, error: bool) -> Vec<Span> {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        let mut root = server_span();
        root.trace_id = TraceId(id);
        root.parent_span_id = None;
        root.parent_is_remote = false;
        root.pid = 1;
        let mut call = client_span();
        call.trace_id = TraceId(id);
        call.parent_span_id = Some(root.span_id);
        call.pid = 1;
        call.status = SpanStatus::Unset;
        let mut back = server_span();
        back.trace_id = TraceId(id);
        back.span_id = SpanId([7; 8]);
        back.parent_span_id = Some(call.span_id);
        back.parent_is_remote = false;
        back.pid = 2;
        if error {
            back.status = SpanStatus::Error("500".into());
        }
        // Children are released first (they end first).
        vec![back, call, root]
    }

    fn named(rules: Vec<(&str, PolicyRule)>) -> TailSampling {
        TailSampling {
            decision_wait: Duration::from_millis(100),
            max_hold: Duration::from_secs(1),
            num_traces: 1000,
            max_spans: 10_000,
            vote_wait: Duration::from_secs(2),
            policies: rules
                .into_iter()
                .map(|(name, rule)| PolicyConfig {
                    name: name.into(),
                    rule,
                })
                .collect(),
        }
    }

    fn errors_only() -> TailSampling {
        named(vec![(
            "errors",
            PolicyRule::StatusCode(vec![StatusCodeName::Error]),
        )])
    }

    fn none_kept() -> TailSampling {
        named(vec![(
            "none",
            PolicyRule::Probabilistic {
                sampling_percentage: 0.0,
            },
        )])
    }

    /// A change of the policy list while a trace is held: the trace stays with the list it came
    /// in under, gets its failing span that arrives after the change, and is decided at its due
    /// time — kept whole by the old list (errors), although the new one keeps nothing. A trace
    /// that starts after the change gets the new list. The totals carry over.
    #[test]
    fn a_trace_held_across_a_change_keeps_its_late_error_span() {
        let mut t = TailSampler::new(&errors_only());
        let mut out = Vec::new();
        let mut old = trace(1, true);
        let failing = old.remove(0);
        for s in old {
            t.offer(s, 0, &NoAnomalies, &mut out);
        }
        t.reconfigure(Some(&none_kept()), 50 * MS, &NoAnomalies, &mut out);
        assert!(out.is_empty(), "nothing is decided by the change");
        t.offer(failing, 90 * MS, &NoAnomalies, &mut out);
        for s in trace(2, true) {
            t.offer(s, 60 * MS, &NoAnomalies, &mut out);
        }
        assert_eq!(t.stats().held_traces, 2);
        assert_eq!(
            t.stats().by_policy,
            vec![("none".into(), 0), ("errors".into(), 0)]
        );
        t.poll(189 * MS, &NoAnomalies, &mut out);
        assert!(out.is_empty(), "the late span moved the due time to 190 ms");
        t.poll(190 * MS, &NoAnomalies, &mut out);
        assert_eq!(
            out.len(),
            3,
            "the whole failing trace, its late span included"
        );
        assert!(out.iter().all(|s| s.trace_id == trace(1, true)[0].trace_id));
        assert!(out.iter().any(|s| s.status != SpanStatus::Unset));
        assert!(out.iter().all(|s| s.sampling == Sampling::Threshold(0)));
        let st = t.stats();
        assert_eq!(
            (st.traces_kept, st.traces_dropped),
            (1, 1),
            "trace 2: new list"
        );
        assert_eq!((st.held_traces, st.changes, st.retired_early), (0, 1, 0));
        assert_eq!(st.wait_max_ns, 190 * MS);
        // The old list retired once its last trace was decided; its count went with it.
        assert_eq!(st.by_policy, vec![("none".into(), 0)]);
    }

    /// A trace this agent dropped waits for the other agents' votes; a change of the policy list
    /// (here: switched off) does not end that wait, and a keep arriving after it still releases
    /// the spans. Meanwhile new traces pass straight through, and once nothing waits and the
    /// keep is no longer remembered the sampler is idle.
    /// An errors-only agent that shares healthy trace 1 with the agent at `10.0.0.2`: decided
    /// (dropped) at 100 ms, its three spans parked for that agent's vote; then, at 200 ms, tail
    /// sampling switched off. The agent, the trace and the other agent's address.
    fn parked_then_switched_off() -> (TailSampler, TraceId, IpAddr) {
        let mut a = TailSampler::new(&errors_only());
        let b_ip: IpAddr = "10.0.0.2".parse().unwrap();
        let mut out = Vec::new();
        let spans = trace(1, false);
        let id = spans[0].trace_id;
        a.participant(id, b_ip);
        for s in spans {
            a.offer(s, 0, &NoAnomalies, &mut out);
        }
        a.poll(100 * MS, &NoAnomalies, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.stats().votes.parked_spans, 3);
        a.reconfigure(None, 200 * MS, &NoAnomalies, &mut out);
        assert!(out.is_empty(), "the change drops nothing");
        (a, id, b_ip)
    }

    #[test]
    fn a_parked_trace_is_saved_by_a_keep_that_comes_after_a_change() {
        let (mut a, id, b_ip) = parked_then_switched_off();
        let mut out = Vec::new();
        assert!(!a.idle(), "a trace still waits for votes");
        a.offer(trace(2, false).remove(2), 300 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 1, "switched off: a new trace passes");
        out.clear();
        a.poll(1500 * MS, &NoAnomalies, &mut out);
        let keep = TraceVote {
            trace_id: id,
            keep: true,
            th: Some(0),
        };
        a.vote(b_ip, keep, &mut out);
        assert_eq!(out.len(), 3, "B's keep released A's part");
        assert!(
            out.iter()
                .all(|s| s.trace_id == id && s.sampling == Sampling::Threshold(0))
        );
        let st = a.stats();
        assert_eq!((st.traces_kept, st.traces_dropped), (1, 0));
        assert_eq!(
            (
                st.votes.kept_by_peer,
                st.votes.votes_received,
                st.votes.votes_sent
            ),
            (1, 1, 1)
        );
        assert_eq!((st.votes.parked_spans, st.votes.wait_expired), (0, 0));
        assert_eq!(st.by_policy, vec![("errors".into(), 0)], "frozen when off");
        assert!(
            !a.idle(),
            "the keep is remembered for the trace's late spans"
        );
        a.poll(2501 * MS, &NoAnomalies, &mut out);
        assert!(a.idle(), "for max_hold (1 s) after the vote");
    }

    /// A late span of trace `n` (a new span id).
    fn late(n: u64) -> Span {
        let mut s = trace(n, false).remove(1);
        s.span_id = SpanId([0x42; 8]);
        s
    }

    /// Switched off, the verdicts made before still hold: a late span of a dropped trace is
    /// dropped and one of a kept trace kept, for `max_hold` (1 s here) after the decision, while
    /// new traces pass. Then the verdicts are forgotten, counted, the memory is given back and
    /// the sampler is idle.
    #[test]
    fn a_switched_off_sampler_honours_its_verdicts_then_forgets_them() {
        let mut t = TailSampler::new(&errors_only());
        let mut out = Vec::new();
        for s in trace(1, false).into_iter().chain(trace(2, true)) {
            t.offer(s, 0, &NoAnomalies, &mut out);
        }
        t.poll(100 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 3, "trace 2 kept, trace 1 dropped");
        out.clear();
        t.reconfigure(None, 200 * MS, &NoAnomalies, &mut out);
        assert!(!t.idle(), "verdicts to honour");
        assert_eq!(t.stats().remembered, 2);
        t.offer(late(1), 300 * MS, &NoAnomalies, &mut out);
        assert!(
            out.is_empty(),
            "a late span of the dropped trace stays dropped"
        );
        t.offer(late(2), 300 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 1, "a late span of the kept trace is kept");
        assert_eq!(out[0].sampling, Sampling::Threshold(0));
        for s in trace(3, false) {
            t.offer(s, 300 * MS, &NoAnomalies, &mut out);
        }
        assert_eq!(out.len(), 4, "a new trace passes");
        t.poll(1100 * MS, &NoAnomalies, &mut out);
        assert_eq!(
            t.stats().remembered,
            2,
            "decided at 100 ms: honoured until 1100 ms"
        );
        t.offer(late(1), 1100 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 4);
        t.poll(1101 * MS, &NoAnomalies, &mut out);
        let st = t.stats();
        assert_eq!((st.remembered, st.verdicts_forgotten), (0, 2));
        assert_eq!((st.late_spans, st.late_spans_off), (3, 3));
        assert_eq!((st.spans_kept, st.spans_dropped), (4, 5));
        assert!(t.idle(), "nothing left: spans pass straight through");
        t.offer(late(1), 1200 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 5, "forgotten: the late span passes");
    }

    /// Switched off, the traces that pass take the room their verdicts would have taken: with
    /// room for 4 verdicts (`num_traces` 2), a fifth trace pushes the oldest verdict out, as it
    /// would have had the sampler stayed on. On again, the remembered verdicts still hold.
    #[test]
    fn traces_passing_a_switched_off_sampler_push_out_verdicts_as_decisions_would() {
        let small = TailSampling {
            num_traces: 2,
            ..errors_only()
        };
        let mut t = TailSampler::new(&small);
        let mut out = Vec::new();
        for (n, at) in [(1, 0), (2, 0), (3, 200), (4, 200)] {
            for s in trace(n, false) {
                t.offer(s, at * MS, &NoAnomalies, &mut out);
            }
            t.poll((at + 100) * MS, &NoAnomalies, &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(t.stats().remembered, 4);
        t.reconfigure(None, 400 * MS, &NoAnomalies, &mut out);
        // Trace 5 passes: two spans without their local root do not count, the root does.
        for s in trace(5, false) {
            t.offer(s, 400 * MS, &NoAnomalies, &mut out);
            assert_eq!(t.stats().remembered, if out.len() < 3 { 4 } else { 3 });
        }
        assert_eq!(out.len(), 3);
        out.clear();
        t.offer(late(1), 400 * MS, &NoAnomalies, &mut out);
        assert_eq!(
            out.len(),
            1,
            "trace 1's verdict was pushed out: its late span passes"
        );
        t.offer(late(2), 400 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 1, "trace 2's is still honoured");
        assert_eq!(t.stats().verdicts_forgotten, 1);
        // On again: the remembered drops hold; a new trace gets the new list.
        let keep_all = named(vec![("all", PolicyRule::AlwaysSample)]);
        t.reconfigure(Some(&keep_all), 500 * MS, &NoAnomalies, &mut out);
        out.clear();
        t.offer(late(3), 500 * MS, &NoAnomalies, &mut out);
        assert!(out.is_empty(), "trace 3 stays dropped after the switch-on");
        for s in trace(6, false) {
            t.offer(s, 500 * MS, &NoAnomalies, &mut out);
        }
        t.poll(600 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 3, "the new trace kept by the new list");
        let st = t.stats();
        assert_eq!((st.late_spans, st.late_spans_off), (2, 1));
        assert!(!t.idle());
    }

    /// Cross-host votes around a switch-off: a trace this agent parked keeps waiting its
    /// `vote_wait` (2 s) and no longer; dropped then, a late span of it is dropped and a keep that
    /// comes after is counted late. Once the verdict is forgotten the shared traces are too, and
    /// a vote about one is refused: nothing waits for ever.
    #[test]
    fn votes_after_a_switch_off_end_within_their_wait() {
        let (mut a, id, b_ip) = parked_then_switched_off();
        let mut out = Vec::new();
        a.poll(2099 * MS, &NoAnomalies, &mut out);
        assert_eq!(a.stats().votes.parked_spans, 3, "parked until 2.1 s");
        a.poll(2100 * MS, &NoAnomalies, &mut out);
        let st = a.stats();
        assert_eq!((st.votes.parked_spans, st.votes.wait_expired), (0, 1));
        assert_eq!((st.traces_dropped, st.remembered), (1, 1));
        a.offer(late(1), 2200 * MS, &NoAnomalies, &mut out);
        assert!(
            out.is_empty(),
            "a late span of the trace the wait dropped is dropped"
        );
        let keep = TraceVote {
            trace_id: id,
            keep: true,
            th: Some(0),
        };
        a.vote(b_ip, keep, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.stats().votes.late_keeps, 1);
        assert!(!a.idle());
        a.poll(3101 * MS, &NoAnomalies, &mut out);
        assert!(a.idle(), "forgotten 1 s after the drop");
        a.vote(b_ip, keep, &mut out);
        let st = a.stats();
        assert_eq!((st.votes.refused, st.votes.late_keeps), (1, 1));
        assert!(out.is_empty());
    }

    /// Participants learnt before a change carry over: the trace held then (decided by the old
    /// list after the change) and the trace whose spans come only after it (the new list's) both
    /// send their verdict to the other agent.
    #[test]
    fn votes_learnt_before_a_change_are_sent_after_it() {
        let mut a = TailSampler::new(&errors_only());
        let b_ip: IpAddr = "10.0.0.2".parse().unwrap();
        let mut out = Vec::new();
        let (held, later) = (trace(1, true), trace(2, false));
        a.participant(held[0].trace_id, b_ip);
        a.participant(later[0].trace_id, b_ip);
        for s in held.clone() {
            a.offer(s, 0, &NoAnomalies, &mut out);
        }
        let keep_all = named(vec![("all", PolicyRule::AlwaysSample)]);
        a.reconfigure(Some(&keep_all), 10 * MS, &NoAnomalies, &mut out);
        for s in later.clone() {
            a.offer(s, 20 * MS, &NoAnomalies, &mut out);
        }
        a.poll(200 * MS, &NoAnomalies, &mut out);
        assert_eq!(
            out.len(),
            6,
            "the failing trace (old list), the healthy one (new list)"
        );
        let mut votes = Vec::new();
        a.take_votes(&mut votes);
        votes.sort_by_key(|(_, v)| v.trace_id.0);
        let want = |s: &[Span]| {
            (
                b_ip,
                TraceVote {
                    trace_id: s[0].trace_id,
                    keep: true,
                    th: Some(0),
                },
            )
        };
        let mut expect = vec![want(&held), want(&later)];
        expect.sort_by_key(|(_, v)| v.trace_id.0);
        assert_eq!(votes, expect);
        assert_eq!(a.stats().votes.votes_sent, 2);
    }

    /// At most one list retires at a time: a change while the list before the last one still
    /// holds traces decides those at once, by their own list, counted.
    #[test]
    fn a_third_change_decides_the_oldest_list_early() {
        let mut t = TailSampler::new(&errors_only());
        let mut out = Vec::new();
        for s in trace(1, true) {
            t.offer(s, 0, &NoAnomalies, &mut out);
        }
        t.reconfigure(Some(&none_kept()), 10 * MS, &NoAnomalies, &mut out);
        for s in trace(2, true) {
            t.offer(s, 20 * MS, &NoAnomalies, &mut out);
        }
        let keep_all = named(vec![("all", PolicyRule::AlwaysSample)]);
        t.reconfigure(Some(&keep_all), 30 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 3, "trace 1, kept early by the first list");
        assert!(out.iter().all(|s| s.trace_id == trace(1, true)[0].trace_id));
        let st = t.stats();
        assert_eq!((st.changes, st.retired_early, st.held_traces), (2, 1, 1));
        t.poll(120 * MS, &NoAnomalies, &mut out);
        assert_eq!(
            out.len(),
            3,
            "trace 2, dropped at its due time by the second list"
        );
        let st = t.stats();
        assert_eq!((st.traces_kept, st.traces_dropped), (1, 1));
        assert_eq!(
            st.by_policy,
            vec![("all".into(), 0)],
            "the retired lists' names are let go"
        );
    }

    /// Two agents, one trace across their hosts: A holds the root and the call, B the called
    /// server span, which fails. Only B's policies keep it; with the votes, A keeps its part too,
    /// and a trace neither keeps is dropped by both without waiting out the vote wait.
    #[test]
    fn a_trace_kept_on_one_host_is_kept_whole_on_both() {
        let errors = || {
            sampler(vec![
                PolicyRule::Probabilistic {
                    sampling_percentage: 0.0,
                },
                PolicyRule::StatusCode(vec![StatusCodeName::Error]),
            ])
        };
        let (mut a, mut b) = (errors(), errors());
        let (a_ip, b_ip): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        for (n, error) in [(1u64, true), (2, false)] {
            let mut spans = trace(n, error);
            let mut back = spans.remove(0);
            back.parent_is_remote = true;
            // The peer channel linked B's span to A's call: each side learns the other shares it.
            a.participant(back.trace_id, b_ip);
            b.participant(back.trace_id, a_ip);
            b.offer(back, 0, &NoAnomalies, &mut out_b);
            for s in spans {
                a.offer(s, 5 * MS, &NoAnomalies, &mut out_a);
            }
        }
        let exchange =
            |from: &mut TailSampler, from_ip, to: &mut TailSampler, out: &mut Vec<Span>| {
                let mut votes = Vec::new();
                from.take_votes(&mut votes);
                for (_, v) in votes {
                    to.vote(from_ip, v, out);
                }
            };
        // B decides first (its part ended first): keeps the failed trace, parks the other.
        b.poll(200 * MS, &NoAnomalies, &mut out_b);
        assert_eq!(out_b.len(), 1);
        assert_eq!(b.stats().votes.parked_spans, 1);
        exchange(&mut b, b_ip, &mut a, &mut out_a);
        assert!(out_a.is_empty(), "A has not decided yet");
        // A decides: its policies would drop both; B's keep keeps the failed one.
        a.poll(300 * MS, &NoAnomalies, &mut out_a);
        assert_eq!(out_a.len(), 2, "root and call of the failed trace");
        assert!(
            out_a
                .iter()
                .all(|s| s.trace_id == out_b[0].trace_id && s.sampling == Sampling::Threshold(0))
        );
        exchange(&mut a, a_ip, &mut b, &mut out_b);
        // A's drop of the other trace ends B's wait at once; A's own wait ended with B's drop.
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.traces_kept, sa.traces_dropped), (1, 1));
        assert_eq!((sb.traces_kept, sb.traces_dropped), (1, 1));
        assert_eq!(sa.votes.kept_by_peer, 1);
        assert_eq!((sa.votes.parked_spans, sb.votes.parked_spans), (0, 0));
        assert_eq!(sa.votes.wait_expired + sb.votes.wait_expired, 0);
        assert_eq!(out_b.len(), 1);
    }

    #[test]
    fn errors_are_kept_whole_and_nothing_else_with_probabilistic_zero() {
        let mut t = sampler(vec![
            PolicyRule::Probabilistic {
                sampling_percentage: 0.0,
            },
            PolicyRule::StatusCode(vec![StatusCodeName::Error]),
        ]);
        let mut out = Vec::new();
        for i in 0..100u64 {
            for s in trace(i, i % 10 == 0) {
                t.offer(s, i * MS, &NoAnomalies, &mut out);
            }
        }
        assert!(
            out.is_empty(),
            "nothing is decided before the decision wait"
        );
        t.poll(10_000 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 30, "10 error traces of 3 spans");
        let mut traces: Vec<TraceId> = out.iter().map(|s| s.trace_id).collect();
        traces.dedup();
        assert_eq!(traces.len(), 10);
        assert!(
            out.iter().all(|s| s.sampling == Sampling::Threshold(0)),
            "kept with probability 1"
        );
        let st = t.stats();
        assert_eq!((st.traces_kept, st.traces_dropped), (10, 90));
        assert_eq!((st.spans_kept, st.spans_dropped), (30, 270));
        assert_eq!(st.by_policy, vec![("p0".into(), 0), ("p1".into(), 10)]);
        assert_eq!((st.held_traces, st.held_spans), (0, 0));
        // A late span of a kept trace follows it; one of a dropped trace is dropped.
        let mut late = trace(0, false).remove(1);
        late.span_id = SpanId([0x42; 8]);
        out.clear();
        t.offer(late.clone(), 20_000 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sampling, Sampling::Threshold(0));
        late.trace_id = trace(1, false)[0].trace_id;
        t.offer(late, 20_000 * MS, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(t.stats().late_spans, 2);
    }

    #[test]
    fn probabilistic_keeps_carry_their_threshold() {
        let mut t = sampler(vec![
            PolicyRule::Probabilistic {
                sampling_percentage: 25.0,
            },
            PolicyRule::StatusCode(vec![StatusCodeName::Error]),
        ]);
        let mut out = Vec::new();
        for i in 0..2000u64 {
            for s in trace(i, i % 100 == 0) {
                t.offer(s, 0, &NoAnomalies, &mut out);
            }
        }
        t.drain(0, &NoAnomalies, &mut out);
        let errors = out.iter().filter(|s| s.status != SpanStatus::Unset).count();
        assert_eq!(errors, 20, "every error trace");
        for s in &out {
            let healthy_trace = !out
                .iter()
                .any(|o| o.trace_id == s.trace_id && o.status != SpanStatus::Unset);
            let want = if healthy_trace { threshold(0.25) } else { 0 };
            assert_eq!(s.sampling, Sampling::Threshold(want));
        }
        let kept = t.stats().traces_kept as f64;
        // 25% of the 1980 healthy traces, plus the 20 error traces.
        assert!((kept - 20.0 - 495.0).abs() < 50.0, "{kept}");
    }

    #[test]
    fn an_inverted_match_vetoes_and_rate_limits_carry_no_threshold() {
        let mut t = sampler(vec![
            PolicyRule::AlwaysSample,
            PolicyRule::StringAttribute {
                key: "url.path".into(),
                values: vec!["/api/orders".into()],
                enabled_regex_matching: false,
                invert_match: true,
            },
        ]);
        let mut out = Vec::new();
        for s in trace(1, true) {
            t.offer(s, 0, &NoAnomalies, &mut out);
        }
        t.drain(0, &NoAnomalies, &mut out);
        assert!(out.is_empty());
        let mut r = sampler(vec![PolicyRule::RateLimiting {
            spans_per_second: 6,
        }]);
        for i in 0..3 {
            for s in trace(i, false) {
                r.offer(s, 0, &NoAnomalies, &mut out);
            }
        }
        r.drain(0, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|s| s.sampling == Sampling::Unknown));
    }

    /// A trace continued from a sampled upstream whose `tracestate` says `th` and `rv`.
    fn continued(n: u64, error: bool, th: u64, rv: u64) -> Vec<Span> {
        let state = crate::testkit::tracestate("ot=th:-;rv:-", Some(th), Some(rv));
        let mut spans = trace(n, error);
        for s in &mut spans {
            s.remote_sampled = Some(true);
            s.tracestate = Some(state.clone());
        }
        spans
    }

    #[test]
    fn a_tail_keep_composes_with_the_upstream_threshold_and_decides_on_its_rv() {
        let mut t = sampler(vec![
            PolicyRule::Probabilistic {
                sampling_percentage: 50.0,
            },
            PolicyRule::StatusCode(vec![StatusCodeName::Error]),
        ]);
        let mut out = Vec::new();
        // Upstream at 25% (th:c) with an rv every 50% decision keeps: kept at the larger, c.
        // An error trace upstream at 50% (th:8), rv below 50%: kept by the errors policy (th 0),
        // and says the upstream's 8.
        // The same error-free trace with an rv below 50%: dropped, whatever its trace id says.
        let traces = [
            continued(1, false, 0xc << 52, 0xf << 52),
            continued(2, true, 1 << 55, 0x9 << 52),
            continued(3, false, 1 << 55, 1 << 52),
        ];
        for (i, spans) in traces.into_iter().enumerate() {
            for s in spans {
                t.offer(s, i as u64, &NoAnomalies, &mut out);
            }
        }
        t.drain(0, &NoAnomalies, &mut out);
        let by = |n: u64| {
            let id = trace(n, false)[0].trace_id;
            out.iter()
                .filter(|s| s.trace_id == id)
                .map(|s| s.sampling)
                .collect::<Vec<_>>()
        };
        assert_eq!(by(1), vec![Sampling::Threshold(threshold(0.25)); 3]);
        assert_eq!(by(2), vec![Sampling::Threshold(1 << 55); 3]);
        assert_eq!(by(3), vec![], "the rv decides, not the trace id");
        // Rate limiting keeps with an unknown probability, whatever the upstream said.
        let mut r = sampler(vec![PolicyRule::RateLimiting {
            spans_per_second: 6,
        }]);
        out.clear();
        for s in continued(4, false, 1 << 55, 0x9 << 52) {
            r.offer(s, 0, &NoAnomalies, &mut out);
        }
        r.drain(0, &NoAnomalies, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| s.sampling == Sampling::Unknown));
    }
}
