//! The cross-host variant of the ground-truth linking evaluation (`cargo xtask eval --cross-host`,
//! and at CI scale tests/tests/e2e_crosshost.rs): "hosts" as network namespaces
//! ([`crate::netns`]), one ztrace agent per host tracing that host's service and running inside
//! it, the agents linking through their authenticated peer channel, one OTLP receiver in the test
//! process.
//!
//! ```text
//! driver in A (untraced, C keep-alive clients, GET /<op>/<id>)
//!   → host A: Python ThreadingHTTPServer (thread per connection)         tests/apps/xhost.py
//!       thread  /t/<id> → GET /n/<id> on the handler thread's keep-alive connection to B
//!       pool    /p/<id> → GET /n/<id> through 4 keep-alive connections shared by all threads
//!       dnat    /v/<id> → GET /n/<id> to a service address that iptables in A DNATs to B
//!       masq    /m/<id> → the same through a second service address whose connections A also
//!               masquerades with random source ports (`--random-fully`, as CNI plugins do)
//!       nodeport /h/<id> → GET /n/<id> to B's node port, which B DNATs to its server and whose
//!               caller B rewrites to an address of its own (kube-proxy's node port); A
//!               masquerades these connections with random source ports too
//!       gateway /g/<id> → GET /n/<id> to B through a NAT gateway that runs no agent and
//!               masquerades A's connections; B asks A's agent as its fallback peer
//!       callback /c/<id> → GET /c/<id> to B, whose handling calls back GET /cb/<id> on A
//!   → host B: Node.js event loop, keep-alive agent for its calls back      tests/apps/xhost_node.js
//! driver in C (a host with no agent) → GET /x/<id> on B                    (shape `noagent`)
//! control /k/<id>: `thread` again with both agents' peer channel off        (what it costs)
//! ```
//!
//! Ground truth comes from the applications, never from ztrace: each request id is unique, the
//! driver prints the ids answered 200 with that id in the body, and every hop carries the id in
//! its URL path; so a span's request and hop are known from its process, kind and path alone.
//! Per shape the agents are started afresh and stopped after it, so the reasons they give for
//! lookups without a link (their exit summaries) belong to that shape.
//!
//! This module owns the truth, the score and the report, with no I/O (unit-tested on hand-built
//! span sets); [`crate::xtopology`] builds the hosts, runs the services, agents and driver.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
};

use crate::eval::{EdgeCounts, EvalSpan, Kind, WINDOW_TOLERANCE_NS};

/// A request shape of the cross-host evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XShape {
    /// Thread-per-request server on A → event-loop server on B, keep-alive per handler thread.
    Thread,
    /// The same through a connection pool shared by A's threads.
    Pool,
    /// The same through a service address DNAT'd in A.
    Dnat,
    /// The same through a service address DNAT'd in A whose connections leave with a new
    /// source port: B sees a port A's process never had.
    Masq,
    /// The same through a node port of B that B forwards to its server, the caller given one of
    /// B's own addresses (B's server sees a caller on its own host), and A's source ports
    /// rewritten: both hosts' NAT undone.
    NodePort,
    /// The same through a NAT gateway that runs no agent (a second path from A to B): B sees
    /// the gateway's address and asks A's agent as its fallback peer (`--peer-fallback`).
    Gateway,
    /// A → B → back to A in the same request.
    Callback,
    /// A client host without an agent → B: must stay roots.
    NoAgent,
    /// [`XShape::Thread`] with the peer channel off on both agents: what the channel costs,
    /// side by side (no links expected, none may be wrong).
    Control,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    A,
    B,
}

/// The evidence a true edge needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Edge {
    /// Local SERVER → CLIENT on A: the handler thread makes the call.
    ThreadPerRequest,
    /// Local SERVER → CLIENT on A: the handler thread makes the call on a pooled connection.
    SharedPool,
    /// Local SERVER → CLIENT on B's event loop.
    EventLoop,
    /// CLIENT on one host → SERVER on the other: the agents' peer channel.
    CrossHost,
}

/// One span of a shape's true tree.
#[derive(Clone, Copy, Debug)]
pub struct XHop {
    pub host: Host,
    pub kind: Kind,
    /// The URL path prefix followed by the request id.
    pub prefix: &'static str,
    pub parent: Option<(usize, Edge)>,
}

const fn hop(host: Host, kind: Kind, prefix: &'static str, parent: Option<(usize, Edge)>) -> XHop {
    XHop {
        host,
        kind,
        prefix,
        parent,
    }
}

const fn a_to_b(op: &'static str, local: Edge) -> [XHop; 3] {
    use {Edge::CrossHost, Host::*, Kind::*};
    [
        hop(A, Server, op, None),
        hop(A, Client, "/n/", Some((0, local))),
        hop(B, Server, "/n/", Some((1, CrossHost))),
    ]
}

const THREAD: [XHop; 3] = a_to_b("/t/", Edge::ThreadPerRequest);
const POOL: [XHop; 3] = a_to_b("/p/", Edge::SharedPool);
const DNAT: [XHop; 3] = a_to_b("/v/", Edge::ThreadPerRequest);
const MASQ: [XHop; 3] = a_to_b("/m/", Edge::ThreadPerRequest);
const NODE_PORT: [XHop; 3] = a_to_b("/h/", Edge::ThreadPerRequest);
const GATEWAY: [XHop; 3] = a_to_b("/g/", Edge::ThreadPerRequest);
const CALLBACK: [XHop; 5] = {
    use {Edge::*, Host::*, Kind::*};
    [
        hop(A, Server, "/c/", None),
        hop(A, Client, "/c/", Some((0, ThreadPerRequest))),
        hop(B, Server, "/c/", Some((1, CrossHost))),
        hop(B, Client, "/cb/", Some((2, EventLoop))),
        hop(A, Server, "/cb/", Some((3, CrossHost))),
    ]
};
/// Its caller is on host C, which runs no agent: a root, whatever happens.
const NO_AGENT: [XHop; 1] = [hop(Host::B, Kind::Server, "/x/", None)];
const CONTROL: [XHop; 3] = a_to_b("/k/", Edge::ThreadPerRequest);

impl XShape {
    pub const ALL: [XShape; 9] = [
        XShape::Thread,
        XShape::Pool,
        XShape::Dnat,
        XShape::Masq,
        XShape::NodePort,
        XShape::Gateway,
        XShape::Callback,
        XShape::NoAgent,
        XShape::Control,
    ];

    /// The name `ztrace-eval --cross-host --shape` takes.
    pub fn name(self) -> &'static str {
        match self {
            XShape::Thread => "thread",
            XShape::Pool => "pool",
            XShape::Dnat => "dnat",
            XShape::Masq => "masq",
            XShape::NodePort => "nodeport",
            XShape::Gateway => "gateway",
            XShape::Callback => "callback",
            XShape::NoAgent => "noagent",
            XShape::Control => "control",
        }
    }

    pub fn by_name(name: &str) -> Option<XShape> {
        XShape::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn describe(self) -> &'static str {
        match self {
            XShape::Thread => "thread-per-request (A, Python) → event loop (B, Node.js)",
            XShape::Pool => "connection pool shared by A's threads → event loop (B)",
            XShape::Dnat => "thread-per-request (A) → DNAT'd service address → B",
            XShape::Masq => {
                "thread-per-request (A) → DNAT'd service address, source ports rewritten → B"
            }
            XShape::NodePort => {
                "thread-per-request (A), source ports rewritten → B's node port, caller rewritten to B's address → B"
            }
            XShape::Gateway => {
                "thread-per-request (A) → NAT gateway without an agent (masquerade) → B"
            }
            XShape::Callback => "A → B → call back to A in the same request",
            XShape::NoAgent => "client host without an agent (C) → B",
            XShape::Control => "`thread` with the peer channel off (cost control)",
        }
    }

    /// The first letter of its request ids.
    pub fn tag(self) -> char {
        match self {
            XShape::Thread => 't',
            XShape::Pool => 'p',
            XShape::Dnat => 'v',
            XShape::Masq => 'm',
            XShape::NodePort => 'h',
            XShape::Gateway => 'g',
            XShape::Callback => 'c',
            XShape::NoAgent => 'x',
            XShape::Control => 'k',
        }
    }

    pub fn of_id(id: &str) -> Option<XShape> {
        let first = id.chars().next()?;
        XShape::ALL.into_iter().find(|s| s.tag() == first)
    }

    pub fn hops(self) -> &'static [XHop] {
        match self {
            XShape::Thread => &THREAD,
            XShape::Pool => &POOL,
            XShape::Dnat => &DNAT,
            XShape::Masq => &MASQ,
            XShape::NodePort => &NODE_PORT,
            XShape::Gateway => &GATEWAY,
            XShape::Callback => &CALLBACK,
            XShape::NoAgent => &NO_AGENT,
            XShape::Control => &CONTROL,
        }
    }

    /// Whether the shape has cross-host links to make (not without an agent or a channel).
    pub fn links(self) -> bool {
        !matches!(self, XShape::NoAgent | XShape::Control)
    }

    /// Whether the agents run their peer channel.
    pub fn peers(self) -> bool {
        self != XShape::Control
    }
}

/// The hop index and request id a span stands for, from its host, kind and URL path alone.
pub fn identify(host: Host, kind: Kind, path: &str) -> Option<(XShape, usize, String)> {
    for shape in XShape::ALL {
        for (i, h) in shape.hops().iter().enumerate() {
            if h.host != host || h.kind != kind {
                continue;
            }
            let Some(id) = path.strip_prefix(h.prefix) else {
                continue;
            };
            let id = id.split(['?', '#', '/']).next().unwrap_or_default();
            if XShape::of_id(id) == Some(shape) {
                return Some((shape, i, id.to_string()));
            }
        }
    }
    None
}

/// One agent's lookups by outcome, from its exit summary (`summary: cross-host links: …`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgentStats {
    pub sends: u64,
    pub lookups: u64,
    pub linked: u64,
    pub unknown: u64,
    pub no_agent: u64,
    pub timeout: u64,
    pub refused: u64,
    /// Two or more candidate callers from fallback peers: left a root.
    pub ambiguous: u64,
    /// Not asked: too many pending.
    pub overflow: u64,
    /// Linked outside the caller's window (clock skew or network delay), and by how much at most.
    pub skewed: u64,
    pub max_skew_us: f64,
    /// Questions of other agents this one answered by undoing its host's NAT (its peer-channel
    /// summary).
    pub via_nat: u64,
    /// Of its own lookups, those it asked about the caller as it was before its host's NAT.
    pub asked_via_nat: u64,
    /// CPU seconds the agent used (user + system) from attached to stopped.
    pub cpu_s: f64,
}

impl AgentStats {
    /// Parses the numbers of the summary line, in the order `CrossHostStats` prints them.
    pub fn parse(line: &str) -> Option<AgentStats> {
        let nums: Vec<f64> = line
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|t| !t.is_empty() && *t != ".")
            .filter_map(|t| t.parse().ok())
            .collect();
        let n = |i: usize| nums.get(i).copied();
        Some(AgentStats {
            sends: n(0)? as u64,
            lookups: n(1)? as u64,
            linked: n(2)? as u64,
            unknown: n(3)? as u64,
            no_agent: n(4)? as u64,
            timeout: n(5)? as u64,
            refused: n(6)? as u64,
            ambiguous: n(7)? as u64,
            overflow: n(8)? as u64,
            skewed: n(9)? as u64,
            max_skew_us: n(10)?,
            via_nat: 0,
            asked_via_nat: 0,
            cpu_s: 0.0,
        })
    }

    /// From an agent's whole log: [`AgentStats::parse`] of its cross-host summary line, and the
    /// questions its peer channel answered and asked through the host's NAT table.
    pub fn from_log(log: &str, crosshost_line: &str) -> AgentStats {
        let mut stats = AgentStats::parse(crosshost_line).unwrap_or_default();
        let peer = log.lines().find(|l| l.contains("summary (peer channel)"));
        // The number just before `marker` on the peer channel's summary line.
        let before = |marker: &str| -> Option<u64> {
            let l = peer?;
            let head = &l[..l.find(marker)?];
            head.rsplit(|c: char| !c.is_ascii_digit())
                .find(|t| !t.is_empty())?
                .parse()
                .ok()
        };
        stats.via_nat = before(" through this host's NAT table").unwrap_or(0);
        stats.asked_via_nat =
            before(" questions about the caller as it was before this host's NAT").unwrap_or(0);
        stats
    }
}

/// An exported span and the host whose agent exported it.
#[derive(Clone, Debug)]
pub struct XSpan {
    pub host: Option<Host>,
    pub span: EvalSpan,
    /// `ztrace.link.clock_skew_ns`: how far the agent found it outside its remote parent's window.
    pub clock_skew_ns: Option<i64>,
}

/// One shape's score.
#[derive(Clone, Debug, Default)]
pub struct ShapeScore {
    pub requests: usize,
    pub failed: usize,
    /// Cross-host parent edges.
    pub cross: EdgeCounts,
    /// Parent edges inside one host.
    pub local: EdgeCounts,
    /// Requests whose whole tree is there once, rightly linked, in one trace.
    pub complete: usize,
    /// Parent links that name the wrong span (true roots given a parent included).
    pub wrong: usize,
    pub wrong_examples: Vec<String>,
    /// Cross-host children further than [`WINDOW_TOLERANCE_NS`] outside their parent's window,
    /// and the largest overshoot (ns).
    pub outside_window: usize,
    pub max_overshoot_ns: u64,
    /// Spans of this shape the agents marked with `ztrace.link.clock_skew_ns`.
    pub marked_skew: usize,
    /// Per agent, its lookups by outcome.
    pub agents: Vec<(Host, AgentStats)>,
    pub drive_secs: f64,
}

/// Scores the spans of one shape's requests (`ids`, answered 200) among `spans` (everything
/// exported in the run).
pub fn score_shape(shape: XShape, spans: &[XSpan], ids: &[String]) -> ShapeScore {
    let truth: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let by_id: HashMap<&[u8], usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span.span_id.as_slice(), i))
        .collect();
    let ident: Vec<Option<(XShape, usize, String)>> = spans
        .iter()
        .map(|s| identify(s.host?, s.span.kind, &s.span.label))
        .collect();
    let mut found: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
    for (i, x) in ident.iter().enumerate() {
        if let Some((sh, hop, id)) = x
            && *sh == shape
            && truth.contains(id.as_str())
        {
            found.entry((id.as_str(), *hop)).or_default().push(i);
        }
    }
    let parent_of = |i: usize| -> Option<usize> {
        let p = &spans[i].span.parent_span_id;
        if p.is_empty() {
            None
        } else {
            by_id.get(p.as_slice()).copied()
        }
    };
    let is_right = |i: usize, parent_hop: usize, id: &str| -> bool {
        parent_of(i)
            .and_then(|p| ident[p].as_ref())
            .is_some_and(|(sh, h, pid)| *sh == shape && *h == parent_hop && pid == id)
    };
    let mut s = ShapeScore {
        requests: truth.len(),
        ..ShapeScore::default()
    };
    let describe = |i: usize| {
        let x = &spans[i];
        let host = x.host.map_or("?", |h| if h == Host::A { "A" } else { "B" });
        format!("{host} {} `{}`", x.span.kind.name(), x.span.label)
    };
    s.marked_skew = found
        .values()
        .flatten()
        .filter(|&&i| spans[i].clock_skew_ns.is_some())
        .count();
    // Predictions: every parent link on a span of this shape's requests.
    for (&(id, hop), list) in &found {
        let spec = shape.hops()[hop];
        for &i in list {
            if spans[i].span.parent_span_id.is_empty() {
                continue;
            }
            let (ok, counts) = match spec.parent {
                Some((p, edge)) => (
                    is_right(i, p, id),
                    if edge == Edge::CrossHost {
                        &mut s.cross
                    } else {
                        &mut s.local
                    },
                ),
                // A true root with a parent: for the agent-less host's server, a cross-host link
                // that must not exist.
                None if spec.kind == Kind::Server && shape == XShape::NoAgent => {
                    (false, &mut s.cross)
                }
                None => (false, &mut s.local),
            };
            counts.predicted += 1;
            counts.correct += usize::from(ok);
            if !ok {
                s.wrong += 1;
                if s.wrong_examples.len() < 5 {
                    let to = parent_of(i).map_or("a span not in the export".into(), describe);
                    s.wrong_examples.push(format!("{} → {to}", describe(i)));
                }
            }
            if ok && spec.parent.is_some_and(|(_, e)| e == Edge::CrossHost) {
                let (c, p) = (&spans[i].span, &spans[parent_of(i).expect("right")].span);
                let over = p
                    .start_ns
                    .saturating_sub(c.start_ns)
                    .max(c.end_ns.saturating_sub(p.end_ns));
                s.max_overshoot_ns = s.max_overshoot_ns.max(over);
                s.outside_window += usize::from(over > WINDOW_TOLERANCE_NS);
            }
        }
    }
    // Truth: request by request.
    for id in &truth {
        let mut whole = true;
        let mut traces = HashSet::new();
        for (hop, spec) in shape.hops().iter().enumerate() {
            let list = found.get(&(*id, hop)).map_or(&[][..], Vec::as_slice);
            whole &= list.len() == 1;
            for &i in list {
                traces.insert(spans[i].span.trace_id.as_slice());
            }
            match spec.parent {
                None => {
                    whole &= list
                        .iter()
                        .all(|&i| spans[i].span.parent_span_id.is_empty())
                }
                Some((p, edge)) => {
                    let c = if edge == Edge::CrossHost {
                        &mut s.cross
                    } else {
                        &mut s.local
                    };
                    c.truth += 1;
                    let ok = list.iter().any(|&i| is_right(i, p, id));
                    c.found += usize::from(ok);
                    whole &= ok;
                }
            }
        }
        s.complete += usize::from(whole && traces.len() == 1);
    }
    s
}

pub const TARGET_PRECISION: f64 = 0.99;
pub const TARGET_RECALL: f64 = 0.95;
pub const TARGET_COMPLETE: f64 = 0.95;

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.4}")
    }
}

impl ShapeScore {
    /// What misses the issue's targets, one line each.
    pub fn target_failures(&self, shape: XShape) -> Vec<String> {
        let mut out = Vec::new();
        let n = shape.name();
        if self.requests == 0 {
            out.push(format!(
                "{n}: no request completed ({} failed)",
                self.failed
            ));
            return out;
        }
        if !shape.links() {
            if self.wrong > 0 {
                out.push(format!("{n}: {} wrong links", self.wrong));
            }
            return out;
        }
        let below = |v: f64, t: f64| v.is_nan() || v < t;
        if below(self.cross.precision(), TARGET_PRECISION) {
            out.push(format!(
                "{n}: cross-host precision {} < {TARGET_PRECISION}",
                fmt(self.cross.precision())
            ));
        }
        if below(self.cross.recall(), TARGET_RECALL) {
            out.push(format!(
                "{n}: cross-host recall {} < {TARGET_RECALL}",
                fmt(self.cross.recall())
            ));
        }
        let complete = ratio(self.complete, self.requests);
        if below(complete, TARGET_COMPLETE) {
            out.push(format!(
                "{n}: complete traces {} < {TARGET_COMPLETE}",
                fmt(complete)
            ));
        }
        out
    }
}

/// How hard to drive the hosts.
#[derive(Clone, Debug)]
pub struct Config {
    /// End-user requests per shape.
    pub requests: usize,
    /// Concurrent keep-alive clients.
    pub clients: usize,
    pub shapes: Vec<XShape>,
}

/// A run: per shape its score.
pub struct Run {
    pub config: Config,
    pub shapes: Vec<(XShape, ShapeScore)>,
    /// Spans of the run's processes that belong to no completed request's hop.
    pub unidentified: usize,
    pub unidentified_examples: Vec<String>,
    pub spans: usize,
}

impl Run {
    pub fn target_failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .shapes
            .iter()
            .flat_map(|(sh, s)| s.target_failures(*sh))
            .collect();
        if self.unidentified > 0 {
            out.push(format!(
                "{} spans belong to no completed request",
                self.unidentified
            ));
        }
        out
    }

    /// The run as Markdown: one table row per shape, then abstentions by reason.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## ztrace cross-host linking evaluation\n\n\
             Hosts as network namespaces joined by veth pairs, one ztrace per host (inside it, \
             tracing that host's service), {} end-user requests per shape from {} concurrent \
             keep-alive clients; agents started afresh per shape. {} spans exported.\n",
            self.config.requests, self.config.clients, self.spans
        );
        t.push_str(
            "| shape | requests (failed) | req/s | cross-host edges true / found / predicted / correct | \
             recall | precision | local edges recall / precision | complete traces | wrong links | \
             outside window (> 1 ms) / max | marked skewed |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (shape, s) in &self.shapes {
            let c = &s.cross;
            let _ = writeln!(
                t,
                "| `{}`: {} | {} ({}) | {:.0} | {} / {} / {} / {} | **{}** | **{}** | {} / {} | {} = **{}** | **{}** | {} / {:.1} µs | {} |",
                shape.name(),
                shape.describe(),
                s.requests,
                s.failed,
                s.requests as f64 / s.drive_secs.max(1e-9),
                c.truth,
                c.found,
                c.predicted,
                c.correct,
                fmt(c.recall()),
                fmt(c.precision()),
                fmt(s.local.recall()),
                fmt(s.local.precision()),
                s.complete,
                fmt(ratio(s.complete, s.requests)),
                s.wrong,
                s.outside_window,
                s.max_overshoot_ns as f64 / 1e3,
                s.marked_skew,
            );
        }
        t.push_str(
            "\nLookups by outcome, per shape and agent (from each agent's exit summary); an \
             abstention leaves the server span a root:\n\n\
             | shape | agent | client sends indexed | lookups | linked | unknown | no agent | \
             timeout | refused | ambiguous | not asked (full) | linked outside the caller's window (max µs) | \
             questions answered / asked through the host's NAT table | agent CPU s | agent CPU µs per \
             request |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (shape, s) in &self.shapes {
            for (host, a) in &s.agents {
                let _ = writeln!(
                    t,
                    "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({:.1}) | {} / {} | {:.2} | {:.0} |",
                    shape.name(),
                    if *host == Host::A { "A" } else { "B" },
                    a.sends,
                    a.lookups,
                    a.linked,
                    a.unknown,
                    a.no_agent,
                    a.timeout,
                    a.refused,
                    a.ambiguous,
                    a.overflow,
                    a.skewed,
                    a.max_skew_us,
                    a.via_nat,
                    a.asked_via_nat,
                    a.cpu_s,
                    a.cpu_s * 1e6 / s.requests.max(1) as f64,
                );
            }
        }
        let cpu = |shape: XShape, host: Host| {
            let (_, s) = self.shapes.iter().find(|(x, _)| *x == shape)?;
            let (_, a) = s.agents.iter().find(|(h, _)| *h == host)?;
            Some(a.cpu_s * 1e6 / s.requests.max(1) as f64)
        };
        for (host, name) in [(Host::A, "A (client side)"), (Host::B, "B (server side)")] {
            if let (Some(on), Some(off)) = (cpu(XShape::Thread, host), cpu(XShape::Control, host)) {
                let _ = writeln!(
                    t,
                    "\nAgent {name}, CPU per request, `thread` with the peer channel vs \
                     `control` without: {on:.0} µs vs {off:.0} µs = {:.2}×",
                    on / off.max(1e-9)
                );
            }
        }
        for (shape, s) in &self.shapes {
            for e in &s.wrong_examples {
                let _ = writeln!(t, "- wrong ({}): {e}", shape.name());
            }
        }
        let _ = writeln!(t, "\nSpans of no completed request: {}", self.unidentified);
        for e in &self.unidentified_examples {
            let _ = writeln!(t, "- {e}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request `r`'s tree of `shape` as the agents would export it when every link is right;
    /// span ids: r × 16 + hop + 1, trace id: r.
    fn tree(shape: XShape, r: u8, id: &str) -> Vec<XSpan> {
        let sid = |h: usize| vec![r, h as u8 + 1];
        shape
            .hops()
            .iter()
            .enumerate()
            .map(|(i, h)| XSpan {
                host: Some(h.host),
                span: EvalSpan {
                    service: None,
                    kind: h.kind,
                    label: format!("{}{id}", h.prefix),
                    trace_id: vec![r; 16],
                    span_id: sid(i),
                    parent_span_id: h.parent.map_or(vec![], |(p, _)| sid(p)),
                    start_ns: 1_000 + i as u64 * 10,
                    end_ns: 10_000 - i as u64 * 10,
                },
                clock_skew_ns: None,
            })
            .collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_perfect_callback_scores_one() {
        let mut spans = tree(XShape::Callback, 1, "c0-0");
        spans.extend(tree(XShape::Callback, 2, "c0-1"));
        let s = score_shape(XShape::Callback, &spans, &ids(&["c0-0", "c0-1"]));
        assert_eq!((s.cross.truth, s.cross.found, s.cross.correct), (4, 4, 4));
        assert_eq!((s.local.truth, s.local.found), (4, 4));
        assert_eq!((s.complete, s.wrong), (2, 0));
        assert!(s.target_failures(XShape::Callback).is_empty());
    }

    #[test]
    fn a_cross_host_link_to_another_request_is_wrong_and_breaks_both_counts() {
        let mut spans = tree(XShape::Pool, 1, "p0-0");
        spans.extend(tree(XShape::Pool, 2, "p0-1"));
        // B's server span of p0-1 names A's call of p0-0 (the pool's connection carried both).
        spans[5].span.parent_span_id = spans[1].span.span_id.clone();
        let s = score_shape(XShape::Pool, &spans, &ids(&["p0-0", "p0-1"]));
        assert_eq!(
            (s.cross.predicted, s.cross.correct, s.cross.found),
            (2, 1, 1)
        );
        assert_eq!((s.complete, s.wrong), (1, 1));
        assert!(
            s.wrong_examples[0].contains("/n/p0-1"),
            "{:?}",
            s.wrong_examples
        );
        let fails = s.target_failures(XShape::Pool).join("\n");
        assert!(
            fails.contains("precision") && fails.contains("recall"),
            "{fails}"
        );
        // A missing link only costs recall; the other shapes' spans are not this shape's.
        let mut spans = tree(XShape::Pool, 1, "p0-0");
        spans[2].span.parent_span_id.clear();
        spans.extend(tree(XShape::Thread, 3, "t0-0"));
        let s = score_shape(XShape::Pool, &spans, &ids(&["p0-0"]));
        assert_eq!((s.cross.predicted, s.cross.found, s.wrong), (0, 0, 0));
        assert_eq!(s.complete, 0);
    }

    #[test]
    fn without_an_agent_any_parent_is_a_wrong_link() {
        let mut spans = tree(XShape::NoAgent, 1, "x0-0");
        spans.extend(tree(XShape::NoAgent, 2, "x0-1"));
        let s = score_shape(XShape::NoAgent, &spans, &ids(&["x0-0", "x0-1"]));
        assert_eq!((s.complete, s.wrong), (2, 0));
        assert!(s.target_failures(XShape::NoAgent).is_empty());
        spans[1].span.parent_span_id = vec![9, 9];
        let s = score_shape(XShape::NoAgent, &spans, &ids(&["x0-0", "x0-1"]));
        assert_eq!((s.cross.predicted, s.wrong, s.complete), (1, 1, 1));
        assert!(!s.target_failures(XShape::NoAgent).is_empty());
    }

    #[test]
    fn spans_are_identified_by_host_kind_and_path() {
        use Kind::*;
        assert_eq!(
            identify(Host::B, Server, "/n/t3-4"),
            Some((XShape::Thread, 2, "t3-4".into()))
        );
        assert_eq!(
            identify(Host::A, Client, "/n/p3-4"),
            Some((XShape::Pool, 1, "p3-4".into()))
        );
        assert_eq!(
            identify(Host::A, Server, "/cb/c1-2"),
            Some((XShape::Callback, 4, "c1-2".into()))
        );
        assert_eq!(
            identify(Host::B, Server, "/x/x0-0"),
            Some((XShape::NoAgent, 0, "x0-0".into()))
        );
        assert_eq!(identify(Host::A, Server, "/n/t3-4"), None);
        assert_eq!(identify(Host::B, Server, "/t/t3-4"), None);
        assert_eq!(identify(Host::B, Server, "/n/c3-4"), None);
    }

    #[test]
    fn agent_summaries_parse() {
        let line = "cross-host links: 1280 client sends indexed; 1290 server roots asked about: \
                    1280 linked, 3 unknown, 5 no agent, 2 timeout, 0 refused, 1 ambiguous; 0 not \
                    asked (too many pending); 12 linked outside the caller's window (by at most 85.3 µs)";
        let a = AgentStats::parse(line).unwrap();
        assert_eq!(
            (
                a.sends, a.lookups, a.linked, a.unknown, a.no_agent, a.timeout, a.refused
            ),
            (1280, 1290, 1280, 3, 5, 2, 0)
        );
        assert_eq!((a.ambiguous, a.overflow, a.skewed), (1, 0, 12));
        assert!((a.max_skew_us - 85.3).abs() < 1e-9);
        assert_eq!(AgentStats::parse(""), None);
        let log = format!(
            "[x INFO ] summary (peer channel): answered 320 questions in 40 frames (320 found, \
             312 through this host's NAT table (330 lookups, 16 translated, 0 failed); 9 unknown, \
             0 refused: another request), refused 0 frames; asked 17 questions about the caller \
             as it was before this host's NAT; …\n[x INFO ] summary: {line}"
        );
        let b = AgentStats::from_log(&log, line);
        assert_eq!((b.via_nat, b.asked_via_nat, b.linked), (312, 17, 1280));
        assert_eq!(AgentStats::from_log("", "").via_nat, 0);
    }
}
