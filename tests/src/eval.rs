//! Ground-truth scoring of ztrace's links on the evaluation topology (see [`crate::topology`]).
//!
//! Every end-user request carries a unique id that every hop puts where ztrace exports it (the
//! URL path of each HTTP call, the key of each Redis command), so the true call tree of a request
//! is known without trusting a single parent link the tracer made. This module owns that truth
//! and the arithmetic on it, and nothing else: no processes, no I/O, so it is unit-tested on
//! hand-built span sets.
//!
//! Per request the truth is [`Hop::ALL`]: 13 spans, 12 parent edges, each edge of one
//! [`EdgeType`] (the kind of evidence a tracer needs to make it). The score:
//! - span recall per hop (each hop is one service and span kind);
//! - parent-edge precision and recall, overall and per edge type. A *predicted* edge is a span's
//!   `parent_span_id`; it is correct when the parent it names is the exported span of the true
//!   parent hop of the same request. A parent id that resolves to no exported span is a wrong
//!   edge; a span without a parent that should have one is a missed edge; a true root given a
//!   parent is a wrong edge;
//! - complete traces: requests whose 13 spans are all there once, with all 12 edges right, under
//!   one trace id;
//! - well-formedness of everything exported: dangling parents, children outside their parent's
//!   time window, parent cycles, duplicate span ids, parents in another trace;
//! - unidentified spans: spans that map to no request hop (there should be none).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
};

/// A process of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// nginx, one worker: event-loop reverse proxy with upstream keep-alive.
    Nginx,
    /// Node.js: single-threaded event-loop application server with a keep-alive agent.
    Node,
    /// hyper on a 4-worker tokio runtime, pooled client: tasks move between threads.
    Async,
    /// Python ThreadingHTTPServer with a Redis connection pool shared by its threads.
    Threaded,
    /// redis-server.
    Redis,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Nginx => "nginx",
            Service::Node => "node",
            Service::Async => "async (tokio)",
            Service::Threaded => "threaded (python)",
            Service::Redis => "redis",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Server,
    Client,
    /// Anything else ztrace might export (internal, producer, …): never part of the truth.
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
            Kind::Other => "other",
        }
    }
}

/// What kind of evidence a true parent edge needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeType {
    /// SERVER → CLIENT inside the Python service: the serving thread makes the call.
    ThreadPerRequest,
    /// SERVER → CLIENT inside nginx and Node: one thread serves every request.
    EventLoop,
    /// SERVER → CLIENT inside the tokio service: tasks hop between worker threads.
    AsyncRuntime,
    /// CLIENT → SERVER across processes (the two ends of one TCP connection).
    CrossProcess,
}

impl EdgeType {
    pub const ALL: [EdgeType; 4] = [
        EdgeType::ThreadPerRequest,
        EdgeType::EventLoop,
        EdgeType::AsyncRuntime,
        EdgeType::CrossProcess,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EdgeType::ThreadPerRequest => "thread-per-request",
            EdgeType::EventLoop => "event loop",
            EdgeType::AsyncRuntime => "async runtime",
            EdgeType::CrossProcess => "cross-process",
        }
    }
}

/// One span of a request's true call tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hop {
    NginxServer,
    NginxClient,
    NodeServer,
    NodeClientA,
    AsyncServer,
    AsyncClient,
    ThreadedServerB,
    ThreadedClientSet,
    RedisSet,
    NodeClientT,
    ThreadedServerT,
    ThreadedClientGet,
    RedisGet,
}

impl Hop {
    /// The tree of one request, parents before children.
    pub const ALL: [Hop; 13] = [
        Hop::NginxServer,
        Hop::NginxClient,
        Hop::NodeServer,
        Hop::NodeClientA,
        Hop::AsyncServer,
        Hop::AsyncClient,
        Hop::ThreadedServerB,
        Hop::ThreadedClientSet,
        Hop::RedisSet,
        Hop::NodeClientT,
        Hop::ThreadedServerT,
        Hop::ThreadedClientGet,
        Hop::RedisGet,
    ];

    /// Service, kind, and the prefix of the span's label that is followed by the request id.
    fn spec(self) -> (Service, Kind, &'static str) {
        use {Kind::*, Service::*};
        match self {
            Hop::NginxServer => (Nginx, Server, "/r/"),
            Hop::NginxClient => (Nginx, Client, "/r/"),
            Hop::NodeServer => (Node, Server, "/r/"),
            Hop::NodeClientA => (Node, Client, "/a/"),
            Hop::AsyncServer => (Async, Server, "/a/"),
            Hop::AsyncClient => (Async, Client, "/b/"),
            Hop::ThreadedServerB => (Threaded, Server, "/b/"),
            Hop::ThreadedClientSet => (Threaded, Client, "SET kb:"),
            Hop::RedisSet => (Redis, Server, "SET kb:"),
            Hop::NodeClientT => (Node, Client, "/t/"),
            Hop::ThreadedServerT => (Threaded, Server, "/t/"),
            Hop::ThreadedClientGet => (Threaded, Client, "GET kt:"),
            Hop::RedisGet => (Redis, Server, "GET kt:"),
        }
    }

    pub fn service(self) -> Service {
        self.spec().0
    }

    pub fn kind(self) -> Kind {
        self.spec().1
    }

    /// What the span carries, with `<id>` for the request id (`/r/<id>`, `SET kb:<id> ?`).
    pub fn label(self) -> String {
        let (_, _, prefix) = self.spec();
        if prefix.starts_with('/') {
            format!("{prefix}<id>")
        } else {
            format!("{prefix}<id> …")
        }
    }

    /// The true parent and the kind of edge to it (None: the request's root).
    pub fn parent(self) -> Option<(Hop, EdgeType)> {
        use EdgeType::*;
        Some(match self {
            Hop::NginxServer => return None,
            Hop::NginxClient => (Hop::NginxServer, EventLoop),
            Hop::NodeServer => (Hop::NginxClient, CrossProcess),
            Hop::NodeClientA => (Hop::NodeServer, EventLoop),
            Hop::AsyncServer => (Hop::NodeClientA, CrossProcess),
            Hop::AsyncClient => (Hop::AsyncServer, AsyncRuntime),
            Hop::ThreadedServerB => (Hop::AsyncClient, CrossProcess),
            Hop::ThreadedClientSet => (Hop::ThreadedServerB, ThreadPerRequest),
            Hop::RedisSet => (Hop::ThreadedClientSet, CrossProcess),
            Hop::NodeClientT => (Hop::NodeServer, EventLoop),
            Hop::ThreadedServerT => (Hop::NodeClientT, CrossProcess),
            Hop::ThreadedClientGet => (Hop::ThreadedServerT, ThreadPerRequest),
            Hop::RedisGet => (Hop::ThreadedClientGet, CrossProcess),
        })
    }

    /// The hop and request id a span stands for, from its service, kind and label alone.
    pub fn identify(service: Service, kind: Kind, label: &str) -> Option<(Hop, String)> {
        Hop::ALL.into_iter().find_map(|hop| {
            let (s, k, prefix) = hop.spec();
            if s != service || k != kind {
                return None;
            }
            let rest = label.strip_prefix(prefix)?;
            let id = rest.split([' ', '?', '#', '/']).next().unwrap_or_default();
            (!id.is_empty()).then(|| (hop, id.to_string()))
        })
    }
}

/// An exported span, reduced to what the scorer looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalSpan {
    /// The topology process that exported it (None: a process the topology does not know).
    pub service: Option<Service>,
    pub kind: Kind,
    /// `url.path` (SERVER) or the path of `url.full` (CLIENT) for HTTP; `db.query.text` for
    /// Redis; else the span name.
    pub label: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root.
    pub parent_span_id: Vec<u8>,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl EvalSpan {
    fn identity(&self) -> Option<(Hop, String)> {
        Hop::identify(self.service?, self.kind, &self.label)
    }

    fn describe(&self) -> String {
        format!(
            "{} {} `{}`",
            self.service.map_or("unknown process", Service::name),
            self.kind.name(),
            self.label
        )
    }
}

/// How far a child may stick out of its parent's time window before it counts as outside
/// (the two ends of a loopback connection timestamp the same bytes at slightly different
/// moments: a server can read a request before the client's write call has returned).
pub const WINDOW_TOLERANCE_NS: u64 = 1_000_000;

/// Edge counts of one edge type (or overall).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeCounts {
    /// True edges of the requests scored.
    pub truth: usize,
    /// True edges present in the export.
    pub found: usize,
    /// Parent links exported on spans of this type.
    pub predicted: usize,
    /// Of those, the correct ones.
    pub correct: usize,
}

impl EdgeCounts {
    pub fn recall(&self) -> f64 {
        ratio(self.found, self.truth)
    }

    /// NaN when nothing was predicted.
    pub fn precision(&self) -> f64 {
        ratio(self.correct, self.predicted)
    }

    fn add(&mut self, o: &EdgeCounts) {
        self.truth += o.truth;
        self.found += o.found;
        self.predicted += o.predicted;
        self.correct += o.correct;
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// Violations of well-formedness over every exported span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WellFormed {
    /// A parent span id that names no exported span (no incoming `traceparent` in this setup).
    pub dangling_parents: usize,
    /// Child starting before its parent or ending after it, beyond [`WINDOW_TOLERANCE_NS`].
    pub outside_parent_window: usize,
    /// Spans that are their own ancestor.
    pub in_cycle: usize,
    /// Extra spans sharing a span id with an earlier one.
    pub duplicate_span_ids: usize,
    /// Child and parent in different traces.
    pub trace_id_mismatch: usize,
    /// How far the worst child sticks out of its parent's window, tolerated or not (ns).
    pub max_window_overshoot_ns: u64,
}

impl WellFormed {
    pub fn total(&self) -> usize {
        self.dangling_parents
            + self.outside_parent_window
            + self.in_cycle
            + self.duplicate_span_ids
            + self.trace_id_mismatch
    }
}

/// Spans found for one hop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopCounts {
    /// Requests whose span for this hop was exported.
    pub found: usize,
    /// Extra spans claiming the same request and hop.
    pub duplicates: usize,
}

/// The score of one run.
#[derive(Clone, Debug, Default)]
pub struct Score {
    /// End-user requests that completed (the truth).
    pub requests: usize,
    pub spans: usize,
    pub per_hop: Vec<(Hop, HopCounts)>,
    pub per_type: Vec<(EdgeType, EdgeCounts)>,
    /// Every edge, plus parents on spans that should have none (true roots, unidentified spans).
    pub overall: EdgeCounts,
    /// True roots (nginx SERVER) given a parent.
    pub roots_with_parent: usize,
    /// Requests whose whole tree is present, correctly linked, under one trace id.
    pub complete: usize,
    /// Requests whose spans are all present but spread over more than one trace id.
    pub split: usize,
    pub well_formed: WellFormed,
    /// Spans that map to no hop of a completed request, by description (at most a few kept).
    pub unidentified: usize,
    pub unidentified_examples: Vec<String>,
    /// Unidentified spans that carry a parent (counted as wrong edges overall).
    pub unidentified_with_parent: usize,
    /// A few wrong parent links, child → the parent it was given, for whoever tunes the linker.
    pub wrong_examples: Vec<String>,
    /// A few well-formedness violations, described.
    pub violation_examples: Vec<String>,
}

/// The targets.
pub const TARGET_PRECISION: f64 = 0.99;
pub const TARGET_RECALL: f64 = 0.95;
pub const TARGET_COMPLETE: f64 = 0.95;
pub const TARGET_TYPE_RECALL: f64 = 0.90;
pub const TARGET_TYPE_PRECISION: f64 = 0.98;

const EXAMPLES: usize = 10;

/// Scores `spans` (every span exported for the topology's processes) against the requests with
/// ids `ids` (the end-user requests that completed).
pub fn score(spans: &[EvalSpan], ids: &[String]) -> Score {
    let truth: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut by_span_id: HashMap<&[u8], usize> = HashMap::new();
    let mut wf = WellFormed::default();
    for (i, s) in spans.iter().enumerate() {
        if by_span_id.insert(&s.span_id, i).is_some() {
            wf.duplicate_span_ids += 1;
        }
    }
    // Keep the first span of a duplicated id as the one parents resolve to.
    for (i, s) in spans.iter().enumerate().rev() {
        by_span_id.insert(&s.span_id, i);
    }
    let parent_of = |s: &EvalSpan| -> Option<usize> {
        if s.parent_span_id.is_empty() {
            None
        } else {
            by_span_id.get(s.parent_span_id.as_slice()).copied()
        }
    };

    let identity: Vec<Option<(Hop, String)>> = spans
        .iter()
        .map(|s| s.identity().filter(|(_, id)| truth.contains(id.as_str())))
        .collect();
    let mut index: HashMap<(&str, Hop), Vec<usize>> = HashMap::new();
    let mut score = Score {
        requests: truth.len(),
        spans: spans.len(),
        ..Score::default()
    };
    for (i, ident) in identity.iter().enumerate() {
        match ident {
            Some((hop, id)) => index.entry((id.as_str(), *hop)).or_default().push(i),
            None => {
                score.unidentified += 1;
                if score.unidentified_examples.len() < EXAMPLES {
                    score.unidentified_examples.push(spans[i].describe());
                }
                if !spans[i].parent_span_id.is_empty() {
                    score.unidentified_with_parent += 1;
                }
            }
        }
    }
    let describe_edge = |child: usize| -> String {
        let parent = match parent_of(&spans[child]) {
            Some(p) => format!(
                "{} (request {})",
                spans[p].describe(),
                match &identity[p] {
                    Some((_, id)) => id.as_str(),
                    None => "?",
                }
            ),
            None => "a span not in the export".into(),
        };
        format!("{} → {parent}", spans[child].describe())
    };
    let correct_parent = |child: usize, parent_hop: Hop, id: &str| -> bool {
        parent_of(&spans[child])
            .and_then(|p| identity[p].as_ref())
            .is_some_and(|(h, pid)| *h == parent_hop && pid == id)
    };

    // Predicted edges: every exported parent link.
    let mut per_type: HashMap<EdgeType, EdgeCounts> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if s.parent_span_id.is_empty() {
            continue;
        }
        score.overall.predicted += 1;
        let right = match &identity[i] {
            None => false,
            Some((hop, id)) => match hop.parent() {
                None => {
                    score.roots_with_parent += 1;
                    false
                }
                Some((parent_hop, ty)) => {
                    let c = per_type.entry(ty).or_default();
                    c.predicted += 1;
                    let ok = correct_parent(i, parent_hop, id);
                    c.correct += usize::from(ok);
                    ok
                }
            },
        };
        if !right && score.wrong_examples.len() < EXAMPLES {
            score.wrong_examples.push(describe_edge(i));
        }
    }
    // True edges and spans, request by request.
    let mut per_hop: HashMap<Hop, HopCounts> = HashMap::new();
    for id in &truth {
        let mut whole = true;
        let mut all_present = true;
        let mut traces = HashSet::new();
        for hop in Hop::ALL {
            let found = index.get(&(*id, hop)).map_or(&[][..], Vec::as_slice);
            let h = per_hop.entry(hop).or_default();
            if !found.is_empty() {
                h.found += 1;
                h.duplicates += found.len() - 1;
            }
            if found.len() != 1 {
                whole = false;
                all_present &= !found.is_empty();
            }
            for &i in found {
                traces.insert(spans[i].trace_id.as_slice());
            }
            match hop.parent() {
                None => whole &= found.len() == 1 && spans[found[0]].parent_span_id.is_empty(),
                Some((parent_hop, ty)) => {
                    let c = per_type.entry(ty).or_default();
                    c.truth += 1;
                    let ok = found.iter().any(|&i| correct_parent(i, parent_hop, id));
                    if ok {
                        c.found += 1;
                    }
                    whole &= ok;
                }
            }
        }
        let one_trace = traces.len() == 1 && traces.iter().all(|t| t.iter().any(|&b| b != 0));
        if whole && one_trace {
            score.complete += 1;
        }
        if all_present && traces.len() > 1 {
            score.split += 1;
        }
    }
    score.per_hop = Hop::ALL
        .into_iter()
        .map(|h| (h, per_hop.get(&h).copied().unwrap_or_default()))
        .collect();
    score.per_type = EdgeType::ALL
        .into_iter()
        .map(|t| (t, per_type.get(&t).copied().unwrap_or_default()))
        .collect();
    let predicted = score.overall.predicted;
    score.overall = EdgeCounts::default();
    for (_, c) in &score.per_type {
        score.overall.add(c);
    }
    // Links on roots and on unidentified spans are predictions too, all of them wrong.
    score.overall.predicted = predicted;

    // Well-formedness of the whole export.
    let mut violation = |what: String| {
        if score.violation_examples.len() < EXAMPLES {
            score.violation_examples.push(what);
        }
    };
    for (i, s) in spans.iter().enumerate() {
        if s.parent_span_id.is_empty() {
            continue;
        }
        let Some(p) = parent_of(s) else {
            wf.dangling_parents += 1;
            violation(format!("dangling parent: {}", s.describe()));
            continue;
        };
        let p = &spans[p];
        if p.trace_id != s.trace_id {
            wf.trace_id_mismatch += 1;
            violation(format!("parent in another trace: {}", describe_edge(i)));
        }
        let overshoot = p
            .start_ns
            .saturating_sub(s.start_ns)
            .max(s.end_ns.saturating_sub(p.end_ns));
        wf.max_window_overshoot_ns = wf.max_window_overshoot_ns.max(overshoot);
        if overshoot > WINDOW_TOLERANCE_NS {
            wf.outside_parent_window += 1;
            violation(format!(
                "outside the parent's window by {:.1} µs: {}",
                overshoot as f64 / 1000.0,
                describe_edge(i)
            ));
        }
    }
    for (i, _) in spans.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut at = i;
        while let Some(p) = parent_of(&spans[at]) {
            if p == i {
                wf.in_cycle += 1;
                violation(format!("in a cycle: {}", spans[i].describe()));
                break;
            }
            if !seen.insert(p) {
                break; // a cycle above this span, not through it
            }
            at = p;
        }
    }
    score.well_formed = wf;
    score
}

impl Score {
    /// Whether every target holds; else what misses, one line each.
    pub fn target_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let below = |v: f64, t: f64| v.is_nan() || v < t;
        if below(self.overall.precision(), TARGET_PRECISION) && self.overall.predicted > 0 {
            out.push(format!(
                "overall parent-edge precision {} < {TARGET_PRECISION}",
                fmt(self.overall.precision())
            ));
        }
        if below(self.overall.recall(), TARGET_RECALL) {
            out.push(format!(
                "overall parent-edge recall {} < {TARGET_RECALL}",
                fmt(self.overall.recall())
            ));
        }
        let complete = ratio(self.complete, self.requests);
        if below(complete, TARGET_COMPLETE) {
            out.push(format!(
                "complete traces {} < {TARGET_COMPLETE}",
                fmt(complete)
            ));
        }
        for (ty, c) in &self.per_type {
            if below(c.recall(), TARGET_TYPE_RECALL) {
                out.push(format!(
                    "{} recall {} < {TARGET_TYPE_RECALL}",
                    ty.name(),
                    fmt(c.recall())
                ));
            }
            if c.predicted > 0 && below(c.precision(), TARGET_TYPE_PRECISION) {
                out.push(format!(
                    "{} precision {} < {TARGET_TYPE_PRECISION}",
                    ty.name(),
                    fmt(c.precision())
                ));
            }
        }
        if self.well_formed.total() > 0 {
            out.push(format!(
                "{} well-formedness violations",
                self.well_formed.total()
            ));
        }
        out
    }

    /// The score as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let complete = ratio(self.complete, self.requests);
        let _ = writeln!(
            t,
            "{} end-user requests, {} spans exported; **complete traces {} / {} = {}** (target ≥ {TARGET_COMPLETE}) {}; \
             requests with every span present but split over several trace ids: {}\n",
            self.requests,
            self.spans,
            self.complete,
            self.requests,
            fmt(complete),
            mark(!complete.is_nan() && complete >= TARGET_COMPLETE),
            self.split,
        );
        t.push_str("| parent edges | true | found | recall | predicted | correct | precision | target (recall / precision) | meets |\n");
        t.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for (ty, c) in &self.per_type {
            let ok = c.recall() >= TARGET_TYPE_RECALL
                && (c.predicted == 0 || c.precision() >= TARGET_TYPE_PRECISION);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | ≥ {TARGET_TYPE_RECALL} / ≥ {TARGET_TYPE_PRECISION} | {} |",
                ty.name(),
                c.truth,
                c.found,
                fmt(c.recall()),
                c.predicted,
                c.correct,
                fmt(c.precision()),
                mark(ok)
            );
        }
        let o = &self.overall;
        let ok =
            o.recall() >= TARGET_RECALL && (o.predicted == 0 || o.precision() >= TARGET_PRECISION);
        let _ = writeln!(
            t,
            "| **overall** | {} | {} | **{}** | {} | {} | **{}** | ≥ {TARGET_RECALL} / ≥ {TARGET_PRECISION} | {} |\n",
            o.truth,
            o.found,
            fmt(o.recall()),
            o.predicted,
            o.correct,
            fmt(o.precision()),
            mark(ok)
        );
        let _ = writeln!(
            t,
            "Overall predictions include {} parent(s) on true roots and {} on unidentified spans (all wrong).\n",
            self.roots_with_parent, self.unidentified_with_parent
        );
        t.push_str("| hop | service | kind | spans expected | found | recall | duplicates |\n");
        t.push_str("|---|---|---|---|---|---|---|\n");
        for (hop, c) in &self.per_hop {
            let _ = writeln!(
                t,
                "| `{}` | {} | {} | {} | {} | {} | {} |",
                hop.label(),
                hop.service().name(),
                hop.kind().name(),
                self.requests,
                c.found,
                fmt(ratio(c.found, self.requests)),
                c.duplicates
            );
        }
        let w = &self.well_formed;
        t.push_str("\n| well-formedness (all exported spans) | count |\n|---|---|\n");
        for (what, n) in [
            ("parent not in the export (dangling)", w.dangling_parents),
            (
                "child outside its parent's time window (± 1 ms)",
                w.outside_parent_window,
            ),
            ("span in a parent cycle", w.in_cycle),
            ("duplicate span id", w.duplicate_span_ids),
            ("parent in another trace", w.trace_id_mismatch),
        ] {
            let _ = writeln!(t, "| {what} | {n} |");
        }
        let _ = writeln!(
            t,
            "| **total** (target 0) {} | **{}** |",
            mark(w.total() == 0),
            w.total()
        );
        for e in &self.violation_examples {
            let _ = writeln!(t, "- {e}");
        }
        let _ = writeln!(
            t,
            "\nLargest overshoot of a child past its parent's window: {:.1} µs.",
            w.max_window_overshoot_ns as f64 / 1000.0
        );
        let wrong = self.overall.predicted - self.overall.correct;
        let _ = writeln!(t, "\nWrong parent links: {wrong}");
        for e in &self.wrong_examples {
            let _ = writeln!(t, "- {e}");
        }
        let _ = writeln!(
            t,
            "\nUnidentified spans (no hop of a completed request): {}",
            self.unidentified
        );
        for e in &self.unidentified_examples {
            let _ = writeln!(t, "- {e}");
        }
        t
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.4}")
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "✅" } else { "❌" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Span ids: request number × 100 + hop index + 1; trace id: the request number.
    fn tree(ids: &[&str]) -> Vec<EvalSpan> {
        let mut out = Vec::new();
        for (r, id) in ids.iter().enumerate() {
            let sid = |h: Hop| {
                let i = Hop::ALL.iter().position(|x| *x == h).unwrap() as u64;
                ((r as u64 + 1) * 100 + i + 1).to_be_bytes().to_vec()
            };
            for (depth, hop) in Hop::ALL.into_iter().enumerate() {
                let (service, kind, prefix) = hop.spec();
                let label = if prefix.starts_with('/') {
                    format!("{prefix}{id}")
                } else {
                    format!("{prefix}{id} ?")
                };
                out.push(EvalSpan {
                    service: Some(service),
                    kind,
                    label,
                    trace_id: vec![r as u8 + 1; 16],
                    span_id: sid(hop),
                    parent_span_id: hop.parent().map_or(vec![], |(p, _)| sid(p)),
                    // Nested windows: deeper hops start later and end earlier.
                    start_ns: 1_000_000_000 + depth as u64 * 10_000_000,
                    end_ns: 3_000_000_000 - depth as u64 * 10_000_000,
                });
            }
        }
        out
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn find<'a>(spans: &'a mut [EvalSpan], label: &str, service: Service) -> &'a mut EvalSpan {
        spans
            .iter_mut()
            .find(|s| s.label == label && s.service == Some(service))
            .unwrap()
    }

    #[test]
    fn a_perfect_tree_scores_one_everywhere() {
        let spans = tree(&["0-1", "0-2", "1-1"]);
        let s = score(&spans, &ids(&["0-1", "0-2", "1-1"]));
        assert_eq!(s.complete, 3);
        assert_eq!(s.overall.truth, 36);
        assert_eq!(
            (s.overall.found, s.overall.correct, s.overall.predicted),
            (36, 36, 36)
        );
        for (ty, c) in &s.per_type {
            let per_request = match ty {
                EdgeType::ThreadPerRequest => 2,
                EdgeType::EventLoop => 3,
                EdgeType::AsyncRuntime => 1,
                EdgeType::CrossProcess => 6,
            };
            assert_eq!(c.truth, 3 * per_request, "{ty:?}");
            assert_eq!((c.recall(), c.precision()), (1.0, 1.0));
        }
        assert!(
            s.per_hop
                .iter()
                .all(|(_, c)| c.found == 3 && c.duplicates == 0)
        );
        assert_eq!(s.well_formed, WellFormed::default());
        assert_eq!(s.unidentified, 0);
        assert!(s.target_failures().is_empty(), "{:?}", s.target_failures());
        assert!(
            s.markdown()
                .contains("| **overall** | 36 | 36 | **1.0000**")
        );
    }

    #[test]
    fn a_wrong_event_loop_edge_costs_precision_recall_and_the_trace() {
        let mut spans = tree(&["0-1", "0-2"]);
        // Node's call for 0-1 attributed to the server span of 0-2 (the classic event-loop error).
        let other = find(&mut spans, "/r/0-2", Service::Node).clone();
        let c = find(&mut spans, "/a/0-1", Service::Node);
        c.parent_span_id = other.span_id;
        c.trace_id = other.trace_id;
        let s = score(&spans, &ids(&["0-1", "0-2"]));
        let el = s.per_type[1].1;
        assert_eq!(s.per_type[1].0, EdgeType::EventLoop);
        assert_eq!((el.truth, el.found, el.predicted, el.correct), (6, 5, 6, 5));
        assert_eq!((s.overall.found, s.overall.correct), (23, 23));
        assert_eq!(s.complete, 1);
        assert_eq!(
            s.wrong_examples,
            ["node CLIENT `/a/0-1` → node SERVER `/r/0-2` (request 0-2)"]
        );
        // The subtree under the wrongly linked span now sits in the other trace.
        assert_eq!(s.well_formed.trace_id_mismatch, 1);
        assert!(!s.target_failures().is_empty());
    }

    #[test]
    fn a_missing_span_is_a_span_and_two_edges_missed() {
        let mut spans = tree(&["0-1", "0-2"]);
        spans.retain(|s| !(s.label == "/b/0-1" && s.service == Some(Service::Threaded)));
        let s = score(&spans, &ids(&["0-1", "0-2"]));
        let hop = s
            .per_hop
            .iter()
            .find(|(h, _)| *h == Hop::ThreadedServerB)
            .unwrap()
            .1;
        assert_eq!(hop.found, 1);
        // Its own edge and its child's are gone; the child's parent now dangles.
        assert_eq!(s.overall.found, 22);
        assert_eq!(s.overall.predicted, 23);
        assert_eq!(s.overall.correct, 22);
        assert_eq!(s.well_formed.dangling_parents, 1);
        assert_eq!(s.complete, 1);
        assert_eq!(s.split, 0);
    }

    #[test]
    fn a_split_trace_is_not_complete() {
        let mut spans = tree(&["0-1"]);
        // Python's /t subtree is a trace of its own: the cross-process edge was not made.
        let t = vec![9; 16];
        for label in ["/t/0-1", "GET kt:0-1 ?"] {
            for s in spans.iter_mut().filter(|s| s.label == label) {
                if s.service != Some(Service::Node) {
                    s.trace_id = t.clone();
                }
            }
        }
        find(&mut spans, "/t/0-1", Service::Threaded)
            .parent_span_id
            .clear();
        let s = score(&spans, &ids(&["0-1"]));
        assert_eq!(s.complete, 0);
        assert_eq!(s.split, 1);
        let cross = s.per_type[3].1;
        assert_eq!((cross.truth, cross.found, cross.predicted), (6, 5, 5));
        assert_eq!(cross.precision(), 1.0);
        assert_eq!(s.well_formed, WellFormed::default());
    }

    #[test]
    fn cycles_duplicates_windows_and_strangers_are_counted() {
        let mut spans = tree(&["0-1"]);
        let root = find(&mut spans, "/r/0-1", Service::Nginx).span_id.clone();
        let leaf = find(&mut spans, "SET kb:0-1 ?", Service::Redis)
            .span_id
            .clone();
        // nginx's root points at the deepest span: every span above it is now in a cycle.
        find(&mut spans, "/r/0-1", Service::Nginx).parent_span_id = leaf;
        // A span that ends a second after its parent.
        find(&mut spans, "GET kt:0-1 ?", Service::Redis).end_ns += 1_000_000_000;
        // A duplicate span id and a span from a process outside the topology.
        let mut dup = spans[5].clone();
        dup.parent_span_id.clear();
        spans.push(dup);
        spans.push(EvalSpan {
            service: None,
            kind: Kind::Server,
            label: "/health".into(),
            trace_id: vec![7; 16],
            span_id: vec![7; 8],
            parent_span_id: root,
            start_ns: 0,
            end_ns: 1,
        });
        let s = score(&spans, &ids(&["0-1"]));
        assert_eq!(s.roots_with_parent, 1);
        assert_eq!(s.well_formed.in_cycle, 9);
        assert_eq!(s.well_formed.duplicate_span_ids, 1);
        // The root's window contains nothing of its own ancestor, the leaf: 1 + the redis one
        // + the stranger (which also sits in another trace).
        assert_eq!(s.well_formed.outside_parent_window, 3);
        assert_eq!(s.well_formed.trace_id_mismatch, 1);
        assert_eq!(s.well_formed.max_window_overshoot_ns, 1_000_000_000);
        assert_eq!(s.unidentified, 1);
        assert_eq!(s.unidentified_with_parent, 1);
        assert!(s.unidentified_examples[0].contains("/health"));
        // Hop 5 was duplicated; its copy has no parent.
        assert_eq!(s.per_hop[5].1.duplicates, 1);
        assert_eq!(s.complete, 0);
        // Predictions: 12 tree edges + root + stranger; correct: the 12.
        assert_eq!((s.overall.predicted, s.overall.correct), (14, 12));
        let fails = s.target_failures().join("\n");
        assert!(
            fails.contains("precision") && fails.contains("well-formedness"),
            "{fails}"
        );
    }

    #[test]
    fn hops_are_identified_from_service_kind_and_label_only() {
        use Kind::*;
        use Service::*;
        assert_eq!(
            Hop::identify(Nginx, Client, "/r/3-14"),
            Some((Hop::NginxClient, "3-14".into()))
        );
        assert_eq!(
            Hop::identify(Threaded, Client, "GET kt:3-14"),
            Some((Hop::ThreadedClientGet, "3-14".into()))
        );
        assert_eq!(
            Hop::identify(Redis, Server, "SET kb:3-14 ?"),
            Some((Hop::RedisSet, "3-14".into()))
        );
        assert_eq!(Hop::identify(Node, Server, "/a/3-14"), None);
        assert_eq!(Hop::identify(Node, Server, "/r/"), None);
        assert_eq!(Hop::identify(Redis, Server, "PING"), None);
    }
}
