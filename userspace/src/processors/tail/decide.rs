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

use std::net::IpAddr;
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::buffer::{Buffer, Limits, Offered, Ready, Verdict};
use super::policy::{AnomalyView, Outcome, Policy, TraceView};
use super::threshold::threshold;
use super::vote::{Local, VoteStats, Votes};
use crate::config::TailSampling;
use crate::model::{Span, TraceId, TraceVote};

/// What the tail sampler did (totals since start), for self-metrics and the exit summary.
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
    /// Traces each policy sampled, by policy name, in list order.
    pub by_policy: Vec<(String, u64)>,
    /// Time from a trace's first span to its decision: sum, count and max (ns).
    pub wait_sum_ns: u64,
    pub wait_max_ns: u64,
    /// Traces and spans held now.
    pub held_traces: u64,
    pub held_spans: u64,
    /// Votes with the agents on other hosts that share a trace.
    pub votes: VoteStats,
}

pub struct TailSampler {
    buffer: Buffer,
    policies: Vec<Policy>,
    stats: TailStats,
    /// `service.name` by pid, for attribute policies and the anomaly policy.
    services: FxHashMap<u32, String>,
    ready: Vec<Ready>,
    votes: Votes,
}

impl TailSampler {
    pub fn new(cfg: &TailSampling) -> TailSampler {
        let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        let policies: Vec<Policy> = cfg.policies.iter().map(Policy::new).collect();
        TailSampler {
            buffer: Buffer::new(Limits {
                decision_wait_ns: ns(cfg.decision_wait),
                max_hold_ns: ns(cfg.max_hold),
                num_traces: cfg.num_traces,
                max_spans: cfg.max_spans,
                remembered: cfg.num_traces.saturating_mul(2),
            }),
            stats: TailStats {
                by_policy: policies.iter().map(|p| (p.name.clone(), 0)).collect(),
                ..TailStats::default()
            },
            policies,
            services: FxHashMap::default(),
            ready: Vec::new(),
            votes: Votes::new(ns(cfg.vote_wait), cfg.num_traces),
        }
    }

    /// The `service.name` of a process, for policies that ask.
    pub fn service(&mut self, pid: u32, name: &str) {
        self.services.insert(pid, name.to_string());
    }

    /// Takes a released span at `now_ns` (monotonic); kept spans of decided traces go to `out`.
    pub fn offer(
        &mut self,
        span: Span,
        now_ns: u64,
        anomalies: &dyn AnomalyView,
        out: &mut Vec<Span>,
    ) {
        let Some(span) = self.votes.park_late(span) else {
            self.stats.late_spans += 1;
            return;
        };
        let mut ready = std::mem::take(&mut self.ready);
        match self.buffer.offer(span, now_ns, &mut ready) {
            Offered::Held => {}
            Offered::Late(mut span, verdict) => {
                self.stats.late_spans += 1;
                match verdict {
                    Verdict::Keep(th) => {
                        span.th = th;
                        self.stats.spans_kept += 1;
                        out.push(*span);
                    }
                    Verdict::Drop => self.stats.spans_dropped += 1,
                }
            }
        }
        self.decide_all(&mut ready, now_ns, anomalies, out);
        self.ready = ready;
    }

    /// Decides the traces that are due at `now_ns`.
    pub fn poll(&mut self, now_ns: u64, anomalies: &dyn AnomalyView, out: &mut Vec<Span>) {
        let mut ready = std::mem::take(&mut self.ready);
        self.buffer.poll(now_ns, &mut ready);
        self.decide_all(&mut ready, now_ns, anomalies, out);
        self.ready = ready;
        self.votes.poll(now_ns);
        self.count_vote_drops();
    }

    /// The agent at `agent` (another host) holds another part of `trace_id`.
    pub fn participant(&mut self, trace_id: TraceId, agent: IpAddr) {
        self.votes.participant(trace_id, agent);
        self.count_vote_drops();
    }

    /// A vote from the agent at `from`; the spans of a trace it keeps go to `out`.
    pub fn vote(&mut self, from: IpAddr, vote: TraceVote, out: &mut Vec<Span>) {
        if let Some(r) = self.votes.vote(from, vote) {
            self.buffer.remember(r.trace_id, Verdict::Keep(r.th));
            self.stats.traces_kept += 1;
            self.stats.spans_kept += r.spans.len() as u64;
            out.extend(r.spans.into_iter().map(|mut s| {
                s.th = r.th;
                s
            }));
        }
        self.count_vote_drops();
    }

    /// Votes to send to other agents, by address.
    pub fn take_votes(&mut self, out: &mut Vec<(IpAddr, TraceVote)>) {
        self.votes.take_outbox(out);
    }

    fn count_vote_drops(&mut self) {
        let d = self.votes.take_dropped();
        self.stats.traces_dropped += d.traces;
        self.stats.spans_dropped += d.spans;
    }

    /// Shutdown: decides everything held.
    pub fn drain(&mut self, now_ns: u64, anomalies: &dyn AnomalyView, out: &mut Vec<Span>) {
        let mut ready = std::mem::take(&mut self.ready);
        self.buffer.drain(&mut ready);
        self.decide_all(&mut ready, now_ns, anomalies, out);
        self.ready = ready;
        self.votes.drain();
        self.count_vote_drops();
    }

    pub fn stats(&self) -> TailStats {
        let (t, s) = self.buffer.held();
        TailStats {
            held_traces: t as u64,
            held_spans: s as u64,
            votes: self.votes.stats.clone(),
            ..self.stats.clone()
        }
    }

    fn decide_all(
        &mut self,
        ready: &mut Vec<Ready>,
        now_ns: u64,
        anomalies: &dyn AnomalyView,
        out: &mut Vec<Span>,
    ) {
        for mut r in ready.drain(..) {
            let local = match self.decide(&r.spans, now_ns, anomalies) {
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
            self.buffer.remember(r.trace_id, verdict);
            let st = &mut self.stats;
            let n = r.spans.len() as u64;
            match verdict {
                Verdict::Keep(th) => {
                    st.traces_kept += 1;
                    st.spans_kept += n;
                    out.extend(r.spans.into_iter().map(|mut s| {
                        s.th = th;
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

    /// The policy list's verdict on one trace.
    fn decide(&mut self, spans: &[Span], now_ns: u64, anomalies: &dyn AnomalyView) -> Verdict {
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
        for (i, policy) in self.policies.iter_mut().enumerate() {
            match policy.evaluate(&view) {
                Outcome::Sampled(q) => {
                    kept = true;
                    self.stats.by_policy[i].1 += 1;
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

    fn sampler(rules: Vec<PolicyRule>) -> TailSampler {
        TailSampler::new(&TailSampling {
            decision_wait: Duration::from_millis(100),
            max_hold: Duration::from_secs(1),
            num_traces: 1000,
            max_spans: 10_000,
            vote_wait: Duration::from_secs(2),
            policies: rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| PolicyConfig {
                    name: format!("p{i}"),
                    rule,
                })
                .collect(),
        })
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
                .all(|s| s.trace_id == out_b[0].trace_id && s.th == Some(0))
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
            out.iter().all(|s| s.th == Some(0)),
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
        assert_eq!(out[0].th, Some(0));
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
            assert_eq!(s.th, Some(want));
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
        assert!(out.iter().all(|s| s.th.is_none()));
    }
}
