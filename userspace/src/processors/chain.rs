//! The processor chain between the linker and the exporter: every released span is first
//! measured by the anomaly detector (so detection, like the metrics computed in the pipeline,
//! sees every span whatever is sampled), then rewritten or dropped by the rules (OTTL
//! `[transform]` and `[filter]`), then held by the tail sampler until its trace is decided. With
//! none configured, spans pass straight through at no cost.
//!
//! It owns the glue only: which stage sees a span first, the `service.name` and Resource of each
//! process the stages ask for, and the anomaly events waiting to be shipped. The head sampler
//! stays where it was, at the export queue. The rules also apply to metric data points and log
//! records, which the daemon hands over just before export ([`Processors::rules_metrics`],
//! [`Processors::rules_logs`]).
//! Tail sampling and rules can be replaced while running ([`Processors::set_tail`],
//! [`Processors::set_rules`]).

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use super::anomaly::{Active, AnomalyEvent, Detector, DetectorStats};
use super::ottl::{Program, RuleStats};
use super::tail::{AnomalyView, TailSampler, TailStats};
use crate::config::{AnomalyConfig, TailSampling};
use crate::model::{ProcessInfo, Span, TraceId, TraceVote};
use crate::semconv::attributes::AttrValue;
use crate::semconv::resource::resource_attributes;

/// The detector as the tail sampler's `anomaly` policy sees it.
struct View<'a>(Option<&'a Detector>);

impl AnomalyView for View<'_> {
    fn anomalous(&self, span: &Span, service: &str) -> bool {
        self.0.is_some_and(|d| d.anomalous(span, service))
    }
}

#[derive(Default)]
pub struct Processors {
    tail: Option<TailSampler>,
    anomaly: Option<Detector>,
    services: FxHashMap<u32, String>,
    events: Vec<AnomalyEvent>,
    rules: Program,
    /// Each process's Resource attributes, as rules read them (`resource.attributes[…]`).
    resources: FxHashMap<u32, Vec<(&'static str, AttrValue<'static>)>>,
}

impl Processors {
    pub fn new(tail: Option<&TailSampling>, anomaly: Option<&AnomalyConfig>) -> Processors {
        let mut detector = anomaly.map(Detector::new);
        if let (Some(d), Some(t)) = (&mut detector, tail) {
            d.linger(t.decision_wait);
        }
        Processors {
            tail: tail.map(TailSampler::new),
            anomaly: detector,
            ..Processors::default()
        }
    }

    /// Replaces the rules (at start, or from a remote configuration: the next batch runs
    /// the new program). Their counters carry over.
    pub fn set_rules(&mut self, mut rules: Program) {
        rules.stats = self.rules.stats;
        self.rules = rules;
    }

    pub fn rule_stats(&self) -> Option<RuleStats> {
        (!self.rules.is_empty() || self.rules.stats != RuleStats::default())
            .then_some(self.rules.stats)
    }

    /// A traced process: its `service.name`, and its Resource for the rules.
    pub fn process_info(&mut self, info: &ProcessInfo) {
        self.process(info.pid, &info.service_name);
        self.resources
            .insert(info.pid, resource_attributes(info.pid, Some(info), None));
    }

    /// The rules of the data point context, on a metrics request about to be exported.
    pub fn rules_metrics(&mut self, req: &mut ExportMetricsServiceRequest) {
        self.rules.metrics(req);
    }

    /// The rules of the log context, on a logs request about to be exported.
    pub fn rules_logs(&mut self, req: &mut ExportLogsServiceRequest) {
        self.rules.logs(req);
    }

    /// Changes tail sampling at run time (a remote configuration; None: off). The traces held
    /// now are decided by the old policies at their due time, and their votes with the agents on
    /// other hosts go on (see [`TailSampler::reconfigure`]); new traces get the new policies, or
    /// pass straight through when it is off. Spans a change decides at once go to `out`.
    pub fn set_tail(&mut self, tail: Option<&TailSampling>, now_ns: u64, out: &mut Vec<Span>) {
        match &mut self.tail {
            Some(t) => t.reconfigure(tail, now_ns, &View(self.anomaly.as_ref()), out),
            None => {
                self.tail = tail.map(TailSampler::new);
                if let Some(t) = &mut self.tail {
                    for (pid, name) in &self.services {
                        t.service(*pid, name);
                    }
                }
            }
        }
        if let (Some(d), Some(t)) = (&mut self.anomaly, tail) {
            d.linger(t.decision_wait);
        }
    }

    /// The `service.name` of a traced process (as its Resource says).
    pub fn process(&mut self, pid: u32, service_name: &str) {
        self.services.insert(pid, service_name.to_string());
        if let Some(t) = &mut self.tail {
            t.service(pid, service_name);
        }
    }

    /// Takes the spans the linker released at `now_ns` (monotonic) out of `released`; what may be
    /// exported goes to `out`. Decides the traces that are due.
    pub fn run(&mut self, released: &mut Vec<Span>, now_ns: u64, out: &mut Vec<Span>) {
        if let Some(d) = &mut self.anomaly {
            for s in released.iter() {
                let service = self.services.get(&s.pid).map_or("", String::as_str);
                d.observe(s, service, now_ns, &mut self.events);
            }
            d.tick(now_ns, &mut self.events);
        }
        let resources = &self.resources;
        self.rules.spans(released, &|pid| {
            resources.get(&pid).map_or(&[][..], |r| &r[..])
        });
        match &mut self.tail {
            Some(t) if !t.idle() => {
                let view = View(self.anomaly.as_ref());
                for s in released.drain(..) {
                    t.offer(s, now_ns, &view, out);
                }
                t.poll(now_ns, &view, out);
            }
            // The usual case without tail sampling (or once a remote change switched it off and
            // what it held is decided), `out` emptied by the exporter: the spans change hands
            // without a copy (376 bytes each), and `released` takes `out`'s room for the next poll.
            _ if out.is_empty() => std::mem::swap(out, released),
            _ => out.append(released),
        }
    }

    /// Shutdown: every held trace is decided.
    pub fn drain(&mut self, released: &mut Vec<Span>, now_ns: u64, out: &mut Vec<Span>) {
        self.run(released, now_ns, out);
        if let Some(t) = &mut self.tail {
            t.drain(now_ns, &View(self.anomaly.as_ref()), out);
        }
    }

    /// Cross-host votes: the agent at `agent` holds another part of `trace_id` (no-op without
    /// tail sampling).
    pub fn participant(&mut self, trace_id: TraceId, agent: IpAddr) {
        if let Some(t) = &mut self.tail {
            t.participant(trace_id, agent);
        }
    }

    /// A vote from the agent at `from`; spans it keeps go to `out`.
    pub fn vote(&mut self, from: IpAddr, vote: TraceVote, out: &mut Vec<Span>) {
        if let Some(t) = &mut self.tail {
            t.vote(from, vote, out);
        }
    }

    /// Votes to send to other agents.
    pub fn take_votes(&mut self, out: &mut Vec<(IpAddr, TraceVote)>) {
        if let Some(t) = &mut self.tail {
            t.take_votes(out);
        }
    }

    /// Anomaly starts and ends since the last call.
    pub fn take_events(&mut self, out: &mut Vec<AnomalyEvent>) {
        out.append(&mut self.events);
    }

    /// Tail sampling's totals, once configured (switched off remotely, its totals stay).
    pub fn tail_stats(&self) -> Option<TailStats> {
        self.tail.as_ref().map(TailSampler::stats)
    }

    pub fn anomaly_stats(&self) -> Option<(DetectorStats, Vec<Active>)> {
        self.anomaly.as_ref().map(|d| (d.stats, d.active()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{PolicyConfig, PolicyRule};
    use crate::model::TraceId;
    use crate::testkit::server_span;

    const SEC: u64 = 1_000_000_000;

    /// Rules run on released spans and can be swapped between two batches (what a remote
    /// configuration does); their counters carry over.
    #[test]
    fn rules_filter_spans_and_are_swapped_at_run_time() {
        use crate::config::{FilterList, Rules, Signal};
        let drop_get = |cond: &str| Rules {
            filters: vec![FilterList {
                signal: Signal::Traces,
                context: "span".into(),
                conditions: vec![cond.to_string()],
                origin: "test".into(),
            }],
            ..Rules::default()
        };
        let mut p = Processors::new(None, None);
        p.process_info(&crate::testkit::process(1234, "python3"));
        p.set_rules(
            Program::compile(&drop_get(
                r#"resource.attributes["service.name"] == "python3-svc""#,
            ))
            .unwrap(),
        );
        let mut out = Vec::new();
        p.run(&mut vec![server_span()], 0, &mut out);
        assert!(out.is_empty());
        p.set_rules(Program::compile(&drop_get(r#"name == "POST""#)).unwrap());
        p.run(&mut vec![server_span()], 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(p.rule_stats().unwrap().spans_dropped, 1);
    }

    /// Without tail sampling the released spans pass in order, whether `out` is empty (handed
    /// over whole) or already holds spans (appended after them); `released` is left empty.
    #[test]
    fn spans_pass_in_order_without_tail_sampling() {
        let mut p = Processors::new(None, None);
        let ids = |v: &[Span]| v.iter().map(|s| s.trace_id).collect::<Vec<_>>();
        let mut out = Vec::new();
        let mut released = vec![trace(1), trace(2)];
        p.run(&mut released, 0, &mut out);
        assert_eq!(ids(&out), [trace(1).trace_id, trace(2).trace_id]);
        assert!(released.is_empty());
        released.extend([trace(3), trace(4)]);
        p.run(&mut released, 1, &mut out);
        let all: Vec<_> = (1..=4).map(|n| trace(n).trace_id).collect();
        assert_eq!(ids(&out), all);
        assert!(released.is_empty());
    }

    fn tail(rule: PolicyRule) -> TailSampling {
        TailSampling {
            decision_wait: Duration::from_millis(100),
            max_hold: Duration::from_secs(5),
            num_traces: 1000,
            max_spans: 1000,
            vote_wait: crate::config::DEFAULT_VOTE_WAIT,
            policies: vec![PolicyConfig {
                name: "p".into(),
                rule,
            }],
        }
    }

    fn trace(n: u64) -> Span {
        let mut s = server_span();
        s.parent_span_id = None;
        s.parent_is_remote = false;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        s.trace_id = TraceId(id);
        s
    }

    /// A remote configuration changes tail sampling while traces are held: the held ones are
    /// decided by the old policy at their due time (none lost, none twice, none cut short), later
    /// ones by the new; switched off, spans pass straight through and the totals stay.
    #[test]
    fn tail_sampling_is_changed_without_cutting_held_traces_short() {
        let mut p = Processors::new(Some(&tail(PolicyRule::AlwaysSample)), None);
        p.process(1234, "shop");
        let mut out = Vec::new();
        p.run(&mut vec![trace(1), trace(2)], 0, &mut out);
        assert!(out.is_empty(), "held until decided");
        let drop_all = tail(PolicyRule::Probabilistic {
            sampling_percentage: 0.0,
        });
        p.set_tail(Some(&drop_all), SEC / 100, &mut out);
        assert!(out.is_empty(), "not decided before their due time");
        p.run(&mut vec![trace(3)], SEC / 20, &mut out);
        p.run(&mut Vec::new(), SEC / 10, &mut out);
        assert_eq!(
            out.len(),
            2,
            "the held traces, kept by the old policy when due"
        );
        out.clear();
        p.drain(&mut Vec::new(), 2 * SEC, &mut out);
        assert!(out.is_empty(), "the new policy drops everything");
        p.set_tail(None, 3 * SEC, &mut out);
        p.run(&mut vec![trace(4)], 3 * SEC, &mut out);
        assert_eq!(out.len(), 1, "no tail sampling: straight through");
        let st = p.tail_stats().unwrap();
        assert_eq!((st.traces_kept, st.traces_dropped, st.changes), (2, 1, 2));
    }

    /// Switched off, a late span of a trace the policies dropped is dropped while the verdict is
    /// remembered (`max_hold`, 5 s here, after the decision), though nothing else is held; new
    /// traces pass. Afterwards the sampler is idle and spans pass straight through.
    #[test]
    fn a_late_span_of_a_dropped_trace_stays_dropped_after_a_switch_off() {
        let drop_all = tail(PolicyRule::Probabilistic {
            sampling_percentage: 0.0,
        });
        let mut p = Processors::new(Some(&drop_all), None);
        let mut out = Vec::new();
        p.run(&mut vec![trace(1)], 0, &mut out);
        p.run(&mut Vec::new(), SEC / 10, &mut out);
        p.set_tail(None, SEC / 5, &mut out);
        let mut late = trace(1);
        late.span_id = crate::model::SpanId([9; 8]);
        p.run(&mut vec![late.clone(), trace(2)], SEC, &mut out);
        let ids: Vec<_> = out.iter().map(|s| s.trace_id).collect();
        assert_eq!(
            ids,
            [trace(2).trace_id],
            "the late span of trace 1 is dropped"
        );
        out.clear();
        p.run(&mut Vec::new(), 5 * SEC + SEC / 10 + 1, &mut out);
        p.run(&mut vec![late], 6 * SEC, &mut out);
        assert_eq!(out.len(), 1, "forgotten after the window");
        let st = p.tail_stats().unwrap();
        assert_eq!(
            (st.late_spans_off, st.verdicts_forgotten, st.remembered),
            (1, 1, 0)
        );
    }

    /// The anomaly policy keeps the traces of a latency fault, and only those, once the baseline
    /// is learnt; the detector saw every span (kept or not).
    #[test]
    fn the_anomaly_policy_keeps_the_traces_of_anomalous_windows() {
        let tail = TailSampling {
            decision_wait: Duration::from_millis(100),
            max_hold: Duration::from_secs(5),
            num_traces: 10_000,
            max_spans: 10_000,
            vote_wait: Duration::from_secs(2),
            policies: vec![PolicyConfig {
                name: "odd".into(),
                rule: PolicyRule::Anomaly,
            }],
        };
        let anomaly = AnomalyConfig {
            window: Duration::from_secs(1),
            ..AnomalyConfig::default()
        };
        let mut p = Processors::new(Some(&tail), Some(&anomaly));
        p.process(1234, "shop");
        let mut out = Vec::new();
        let mut n = 0u64;
        for t in 0..20u64 {
            let slow = t >= 15;
            for i in 0..40u64 {
                n += 1;
                let mut s = server_span();
                s.parent_span_id = None;
                s.parent_is_remote = false;
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&n.to_be_bytes());
                s.trace_id = TraceId(id);
                let ms = if slow { 200 } else { 20 + i % 3 };
                s.end_unix_ns = s.start_unix_ns + ms * 1_000_000;
                p.run(&mut vec![s], t * SEC + i * SEC / 40, &mut out);
            }
        }
        p.drain(&mut Vec::new(), 30 * SEC, &mut out);
        let kept_slow = out
            .iter()
            .filter(|s| s.end_unix_ns - s.start_unix_ns >= 200_000_000)
            .count();
        // Windows 16-19 whole (the alarm is on); of window 15, the traces decided once it had
        // min_requests spans (the open window could be judged), not the first ones.
        assert!(kept_slow >= 4 * 40 + 10, "{kept_slow}");
        assert_eq!(out.len(), kept_slow, "no healthy trace kept");
        let mut events = Vec::new();
        p.take_events(&mut events);
        assert!(events.iter().any(|e| e.started), "{events:?}");
        let st = p.tail_stats().unwrap();
        assert_eq!(st.traces_kept + st.traces_dropped, n);
    }
}
