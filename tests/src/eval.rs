//! Ground-truth scoring of ztrace's links on the evaluation topology (see [`crate::topology`]).
//!
//! Every end-user request carries a unique id that every hop puts where ztrace exports it (the
//! URL path of each HTTP call, the key of each Redis command), so the true call tree of a request
//! is known without trusting a single parent link the tracer made. This module owns that truth
//! and the arithmetic on it, and nothing else: no processes, no I/O, so it is unit-tested on
//! hand-built span sets.
//!
//! Per request the truth is its [`Shape`]'s tree ([`Shape::hops`]; the shape is told by the
//! request id's first letter): 13 spans and 12 parent edges for the sequential shape, 11 and 10
//! for each concurrent fan-out shape, each edge of one [`EdgeType`] (the kind of evidence a tracer
//! needs to make it). The token-free shape's calls carry a nonce instead of the request id; the
//! service writes down which nonce went with which request, and the scorer reads that as
//! `aliases`. The score:
//! - span recall per hop (each hop is one service and span kind), per shape;
//! - parent-edge precision and recall, overall and per edge type. A *predicted* edge is a span's
//!   `parent_span_id`; it is correct when the parent it names is the exported span of the true
//!   parent hop of the same request. A parent id that resolves to no exported span is a wrong
//!   edge; a span without a parent that should have one is a missed edge; a true root given a
//!   parent is a wrong edge;
//! - complete traces: requests whose 13 spans are all there once, with all 12 edges right, under
//!   one trace id;
//! - well-formedness of everything exported: dangling parents, children outside their parent's
//!   time window, parent cycles, duplicate span ids, parents in another trace;
//! - unidentified spans: spans that map to no request hop (there should be none), and duplicates
//!   (a second span for one request's hop). Both fail the targets, as well-formedness does.

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
    /// Fan-out: aiohttp on asyncio's default loop, `gather` over one shared client pool.
    Asyncio,
    /// Fan-out: Node.js `Promise.all` on a keep-alive agent.
    NodeAll,
    /// Fan-out: Python ThreadingHTTPServer handing both calls to a shared ThreadPoolExecutor.
    Pool,
    /// Fan-out: Java HttpServer + `HttpClient.sendAsync`.
    Java,
    /// Fan-out: Go net/http, a goroutine per call, WaitGroup.
    Go,
    /// Fan-out: the asyncio service again, but its calls carry no token of their request.
    TokenFree,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Nginx => "nginx",
            Service::Node => "node",
            Service::Async => "async (tokio)",
            Service::Threaded => "threaded (python)",
            Service::Redis => "redis",
            Service::Asyncio => "asyncio gather (python)",
            Service::NodeAll => "Promise.all (node)",
            Service::Pool => "thread pool (python)",
            Service::Java => "sendAsync (java)",
            Service::Go => "goroutines (go)",
            Service::TokenFree => "token-free gather (python)",
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
    /// SERVER → CLIENT, concurrent calls of one request: asyncio `gather`.
    Gather,
    /// … Node.js `Promise.all`.
    PromiseAll,
    /// … a handler thread hands the calls to a shared thread pool.
    ThreadPool,
    /// … Java `HttpClient.sendAsync`.
    JavaAsync,
    /// … Go goroutines.
    Goroutines,
    /// … asyncio `gather` of calls that carry no token of their request.
    TokenFree,
}

impl EdgeType {
    pub const ALL: [EdgeType; 10] = [
        EdgeType::ThreadPerRequest,
        EdgeType::EventLoop,
        EdgeType::AsyncRuntime,
        EdgeType::CrossProcess,
        EdgeType::Gather,
        EdgeType::PromiseAll,
        EdgeType::ThreadPool,
        EdgeType::JavaAsync,
        EdgeType::Goroutines,
        EdgeType::TokenFree,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EdgeType::ThreadPerRequest => "thread-per-request",
            EdgeType::EventLoop => "event loop",
            EdgeType::AsyncRuntime => "async runtime",
            EdgeType::CrossProcess => "cross-process",
            EdgeType::Gather => "fan-out: asyncio gather",
            EdgeType::PromiseAll => "fan-out: Promise.all",
            EdgeType::ThreadPool => "fan-out: thread pool",
            EdgeType::JavaAsync => "fan-out: Java sendAsync",
            EdgeType::Goroutines => "fan-out: goroutines",
            EdgeType::TokenFree => "fan-out: token-free",
        }
    }

    /// Recall target (None: reported, not a target) and precision target.
    pub fn targets(self) -> (Option<f64>, f64) {
        match self {
            EdgeType::ThreadPerRequest
            | EdgeType::EventLoop
            | EdgeType::AsyncRuntime
            | EdgeType::CrossProcess => (Some(TARGET_TYPE_RECALL), TARGET_TYPE_PRECISION),
            EdgeType::TokenFree => (None, TARGET_FANOUT_PRECISION),
            _ => (Some(TARGET_FANOUT_RECALL), TARGET_FANOUT_PRECISION),
        }
    }
}

/// A request shape: which service the front nginx hands the request to, and the true tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// nginx → Node.js → (tokio → Python → Redis; Python → Redis), one call after the other.
    Sequential,
    Asyncio,
    NodeAll,
    ThreadPool,
    Java,
    Go,
    TokenFree,
}

/// One span of a shape's true call tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopSpec {
    pub service: Service,
    pub kind: Kind,
    /// The prefix of the span's label that is followed by the request id.
    pub prefix: &'static str,
    /// The true parent (an index into the same tree) and the kind of edge to it.
    pub parent: Option<(usize, EdgeType)>,
}

const fn hop(
    service: Service,
    kind: Kind,
    prefix: &'static str,
    parent: Option<(usize, EdgeType)>,
) -> HopSpec {
    HopSpec {
        service,
        kind,
        prefix,
        parent,
    }
}

const SEQUENTIAL: [HopSpec; 13] = {
    use {EdgeType::*, Kind::*, Service::*};
    [
        hop(Nginx, Server, "/r/", None),
        hop(Nginx, Client, "/r/", Some((0, EventLoop))),
        hop(Node, Server, "/r/", Some((1, CrossProcess))),
        hop(Node, Client, "/a/", Some((2, EventLoop))),
        hop(Async, Server, "/a/", Some((3, CrossProcess))),
        hop(Async, Client, "/b/", Some((4, AsyncRuntime))),
        hop(Threaded, Server, "/b/", Some((5, CrossProcess))),
        hop(Threaded, Client, "SET kb:", Some((6, ThreadPerRequest))),
        hop(Redis, Server, "SET kb:", Some((7, CrossProcess))),
        hop(Node, Client, "/t/", Some((2, EventLoop))),
        hop(Threaded, Server, "/t/", Some((9, CrossProcess))),
        hop(Threaded, Client, "GET kt:", Some((10, ThreadPerRequest))),
        hop(Redis, Server, "GET kt:", Some((11, CrossProcess))),
    ]
};

/// nginx → `svc`, which calls /b/ and /t/ on the Python leaf concurrently (edges of type `ty`).
const fn fanout(svc: Service, ty: EdgeType) -> [HopSpec; 11] {
    use {EdgeType::*, Kind::*, Service::*};
    [
        hop(Nginx, Server, "/r/", None),
        hop(Nginx, Client, "/r/", Some((0, EventLoop))),
        hop(svc, Server, "/r/", Some((1, CrossProcess))),
        hop(svc, Client, "/b/", Some((2, ty))),
        hop(Threaded, Server, "/b/", Some((3, CrossProcess))),
        hop(Threaded, Client, "SET kb:", Some((4, ThreadPerRequest))),
        hop(Redis, Server, "SET kb:", Some((5, CrossProcess))),
        hop(svc, Client, "/t/", Some((2, ty))),
        hop(Threaded, Server, "/t/", Some((7, CrossProcess))),
        hop(Threaded, Client, "GET kt:", Some((8, ThreadPerRequest))),
        hop(Redis, Server, "GET kt:", Some((9, CrossProcess))),
    ]
}

const ASYNCIO: [HopSpec; 11] = fanout(Service::Asyncio, EdgeType::Gather);
const NODE_ALL: [HopSpec; 11] = fanout(Service::NodeAll, EdgeType::PromiseAll);
const THREAD_POOL: [HopSpec; 11] = fanout(Service::Pool, EdgeType::ThreadPool);
const JAVA: [HopSpec; 11] = fanout(Service::Java, EdgeType::JavaAsync);
const GO: [HopSpec; 11] = fanout(Service::Go, EdgeType::Goroutines);
const TOKEN_FREE: [HopSpec; 11] = fanout(Service::TokenFree, EdgeType::TokenFree);

impl Shape {
    pub const ALL: [Shape; 7] = [
        Shape::Sequential,
        Shape::Asyncio,
        Shape::NodeAll,
        Shape::ThreadPool,
        Shape::Java,
        Shape::Go,
        Shape::TokenFree,
    ];

    /// The name `ztrace-eval --shape` takes.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Sequential => "sequential",
            Shape::Asyncio => "asyncio",
            Shape::NodeAll => "node",
            Shape::ThreadPool => "pool",
            Shape::Java => "java",
            Shape::Go => "go",
            Shape::TokenFree => "tokenfree",
        }
    }

    pub fn by_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The letter request ids of this shape start with (sequential ids start with a digit).
    pub fn tag(self) -> &'static str {
        match self {
            Shape::Sequential => "",
            Shape::Asyncio => "a",
            Shape::NodeAll => "n",
            Shape::ThreadPool => "p",
            Shape::Java => "j",
            Shape::Go => "g",
            Shape::TokenFree => "x",
        }
    }

    /// The shape a request id belongs to.
    pub fn of_id(id: &str) -> Option<Shape> {
        let first = id.chars().next()?;
        if first.is_ascii_digit() {
            return Some(Shape::Sequential);
        }
        Shape::ALL
            .into_iter()
            .find(|s| s.tag().starts_with(first) && !s.tag().is_empty())
    }

    /// The true tree of one request, parents before children.
    pub fn hops(self) -> &'static [HopSpec] {
        match self {
            Shape::Sequential => &SEQUENTIAL,
            Shape::Asyncio => &ASYNCIO,
            Shape::NodeAll => &NODE_ALL,
            Shape::ThreadPool => &THREAD_POOL,
            Shape::Java => &JAVA,
            Shape::Go => &GO,
            Shape::TokenFree => &TOKEN_FREE,
        }
    }

    /// Whether the calls of a request carry its id (all but the token-free shape).
    pub fn calls_carry_token(self) -> bool {
        self != Shape::TokenFree
    }
}

/// One span of a request's true call tree: a shape and an index into its [`Shape::hops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hop {
    pub shape: Shape,
    pub index: usize,
}

impl Hop {
    /// Every hop of a shape, parents before children.
    pub fn all(shape: Shape) -> impl Iterator<Item = Hop> {
        (0..shape.hops().len()).map(move |index| Hop { shape, index })
    }

    fn spec(self) -> HopSpec {
        self.shape.hops()[self.index]
    }

    pub fn service(self) -> Service {
        self.spec().service
    }

    pub fn kind(self) -> Kind {
        self.spec().kind
    }

    /// What the span carries, with `<id>` for the request id (`/r/<id>`, `SET kb:<id> ?`).
    pub fn label(self) -> String {
        let prefix = self.spec().prefix;
        if prefix.starts_with('/') {
            format!("{prefix}<id>")
        } else {
            format!("{prefix}<id> …")
        }
    }

    /// The true parent and the kind of edge to it (None: the request's root).
    pub fn parent(self) -> Option<(Hop, EdgeType)> {
        let (index, ty) = self.spec().parent?;
        Some((
            Hop {
                shape: self.shape,
                index,
            },
            ty,
        ))
    }

    /// The hop and request id a span stands for, from its service, kind and label alone;
    /// `aliases` maps the tokens of token-free calls to the id of their request.
    pub fn identify(
        service: Service,
        kind: Kind,
        label: &str,
        aliases: &HashMap<String, String>,
    ) -> Option<(Hop, String)> {
        let mut prefixes: Vec<&str> = Vec::new();
        for shape in Shape::ALL {
            for h in shape.hops() {
                if h.service == service && h.kind == kind && !prefixes.contains(&h.prefix) {
                    prefixes.push(h.prefix);
                }
            }
        }
        prefixes.into_iter().find_map(|prefix| {
            let rest = label.strip_prefix(prefix)?;
            let raw = rest.split([' ', '?', '#', '/']).next().unwrap_or_default();
            if raw.is_empty() {
                return None;
            }
            let id = aliases.get(raw).map_or(raw, String::as_str);
            let shape = Shape::of_id(id)?;
            let index = shape
                .hops()
                .iter()
                .position(|h| h.service == service && h.kind == kind && h.prefix == prefix)?;
            Some((Hop { shape, index }, id.to_string()))
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
    fn identity(&self, aliases: &HashMap<String, String>) -> Option<(Hop, String)> {
        Hop::identify(self.service?, self.kind, &self.label, aliases)
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
    /// Edge types over every shape.
    pub per_type: Vec<(EdgeType, EdgeCounts)>,
    /// Per shape driven: its requests, complete traces, and edge types.
    pub per_shape: Vec<(Shape, ShapeScore)>,
    /// Every edge, plus parents on spans that should have none (true roots, unidentified spans).
    pub overall: EdgeCounts,
    /// The edges of the shapes whose calls carry a token of their request (the recall target).
    pub overall_tokened: EdgeCounts,
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

/// One shape's part of the score.
#[derive(Clone, Debug, Default)]
pub struct ShapeScore {
    pub requests: usize,
    pub complete: usize,
    pub split: usize,
    pub per_type: Vec<(EdgeType, EdgeCounts)>,
}

/// The issues' targets.
pub const TARGET_PRECISION: f64 = 0.99;
pub const TARGET_RECALL: f64 = 0.95;
/// Complete traces, per shape whose calls carry a token of their request.
pub const TARGET_COMPLETE: f64 = 0.95;
pub const TARGET_TYPE_RECALL: f64 = 0.90;
pub const TARGET_TYPE_PRECISION: f64 = 0.99;
pub const TARGET_FANOUT_RECALL: f64 = 0.95;
pub const TARGET_FANOUT_PRECISION: f64 = 0.99;

const EXAMPLES: usize = 10;

/// Scores `spans` (every span exported for the topology's processes) against the requests with
/// ids `ids` (the end-user requests that completed); `aliases` maps the tokens the token-free
/// shape's calls carry to their request's id (the service wrote them down; ztrace never saw it).
pub fn score(spans: &[EvalSpan], ids: &[String], aliases: &HashMap<String, String>) -> Score {
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
        .map(|s| {
            s.identity(aliases)
                .filter(|(_, id)| truth.contains(id.as_str()))
        })
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
    let mut per_type: HashMap<(Shape, EdgeType), EdgeCounts> = HashMap::new();
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
                    let c = per_type.entry((hop.shape, ty)).or_default();
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
    let mut per_shape: HashMap<Shape, ShapeScore> = HashMap::new();
    for id in &truth {
        let Some(shape) = Shape::of_id(id) else {
            continue;
        };
        let mut whole = true;
        let mut all_present = true;
        let mut traces = HashSet::new();
        for hop in Hop::all(shape) {
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
                    let c = per_type.entry((shape, ty)).or_default();
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
        let s = per_shape.entry(shape).or_default();
        s.requests += 1;
        if whole && one_trace {
            score.complete += 1;
            s.complete += 1;
        }
        if all_present && traces.len() > 1 {
            score.split += 1;
            s.split += 1;
        }
    }
    let shapes: Vec<Shape> = Shape::ALL
        .into_iter()
        .filter(|s| per_shape.contains_key(s))
        .collect();
    score.per_hop = shapes
        .iter()
        .flat_map(|&s| Hop::all(s))
        .map(|h| (h, per_hop.get(&h).copied().unwrap_or_default()))
        .collect();
    let types_of = |shape: Shape| -> Vec<EdgeType> {
        EdgeType::ALL
            .into_iter()
            .filter(|t| {
                shape
                    .hops()
                    .iter()
                    .any(|h| h.parent.is_some_and(|(_, x)| x == *t))
            })
            .collect()
    };
    let mut all_types: HashMap<EdgeType, EdgeCounts> = HashMap::new();
    for &shape in &shapes {
        let mut s = per_shape.remove(&shape).unwrap_or_default();
        for ty in types_of(shape) {
            let c = per_type.get(&(shape, ty)).copied().unwrap_or_default();
            all_types.entry(ty).or_default().add(&c);
            if shape.calls_carry_token() {
                score.overall_tokened.add(&c);
            }
            s.per_type.push((ty, c));
        }
        score.per_shape.push((shape, s));
    }
    score.per_type = EdgeType::ALL
        .into_iter()
        .filter_map(|t| Some((t, *all_types.get(&t)?)))
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
        if self.overall_tokened.truth > 0 && below(self.overall_tokened.recall(), TARGET_RECALL) {
            out.push(format!(
                "overall parent-edge recall (shapes whose calls carry a token) {} < {TARGET_RECALL}",
                fmt(self.overall_tokened.recall())
            ));
        }
        for (shape, s) in &self.per_shape {
            let complete = ratio(s.complete, s.requests);
            if shape.calls_carry_token() && below(complete, TARGET_COMPLETE) {
                out.push(format!(
                    "{}: complete traces {} < {TARGET_COMPLETE}",
                    shape.name(),
                    fmt(complete)
                ));
            }
            for (ty, c) in &s.per_type {
                let (recall, precision) = ty.targets();
                if let Some(t) = recall
                    && below(c.recall(), t)
                {
                    out.push(format!(
                        "{}: {} recall {} < {t}",
                        shape.name(),
                        ty.name(),
                        fmt(c.recall())
                    ));
                }
                if c.predicted > 0 && below(c.precision(), precision) {
                    out.push(format!(
                        "{}: {} precision {} < {precision}",
                        shape.name(),
                        ty.name(),
                        fmt(c.precision())
                    ));
                }
            }
        }
        if self.well_formed.total() > 0 {
            out.push(format!(
                "{} well-formedness violations",
                self.well_formed.total()
            ));
        }
        if self.unidentified > 0 {
            out.push(format!(
                "{} unidentified spans (no hop of a completed request)",
                self.unidentified
            ));
        }
        let duplicates: usize = self.per_hop.iter().map(|(_, c)| c.duplicates).sum();
        if duplicates > 0 {
            out.push(format!(
                "{duplicates} duplicate spans (a second span for one request's hop)"
            ));
        }
        out
    }

    fn edge_rows(t: &mut String, rows: &[(EdgeType, EdgeCounts)]) {
        t.push_str("| parent edges | true | found | recall | predicted | correct | precision | target (recall / precision) | meets |\n");
        t.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for (ty, c) in rows {
            let (recall, precision) = ty.targets();
            let ok = recall.is_none_or(|r| c.recall() >= r)
                && (c.predicted == 0 || c.precision() >= precision);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} / ≥ {precision} | {} |",
                ty.name(),
                c.truth,
                c.found,
                fmt(c.recall()),
                c.predicted,
                c.correct,
                fmt(c.precision()),
                recall.map_or("—".to_string(), |r| format!("≥ {r}")),
                mark(ok)
            );
        }
    }

    /// The score as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let complete = ratio(self.complete, self.requests);
        let _ = writeln!(
            t,
            "{} end-user requests, {} spans exported; **complete traces {} / {} = {}**; \
             requests with every span present but split over several trace ids: {}\n",
            self.requests,
            self.spans,
            self.complete,
            self.requests,
            fmt(complete),
            self.split,
        );
        if self.per_shape.len() > 1 {
            t.push_str("### All shapes, by edge type\n\n");
        }
        Self::edge_rows(&mut t, &self.per_type);
        let o = &self.overall;
        let ok = self.overall_tokened.truth == 0 || self.overall_tokened.recall() >= TARGET_RECALL;
        let ok = ok && (o.predicted == 0 || o.precision() >= TARGET_PRECISION);
        let _ = writeln!(
            t,
            "| **overall** | {} | {} | **{}** | {} | {} | **{}** | ≥ {TARGET_RECALL} (shapes with a token: {}) / ≥ {TARGET_PRECISION} | {} |\n",
            o.truth,
            o.found,
            fmt(o.recall()),
            o.predicted,
            o.correct,
            fmt(o.precision()),
            fmt(self.overall_tokened.recall()),
            mark(ok)
        );
        let _ = writeln!(
            t,
            "Overall predictions include {} parent(s) on true roots and {} on unidentified spans (all wrong).\n",
            self.roots_with_parent, self.unidentified_with_parent
        );
        if self.per_shape.len() > 1 {
            for (shape, s) in &self.per_shape {
                let complete = ratio(s.complete, s.requests);
                let target = if shape.calls_carry_token() {
                    format!(
                        "(target ≥ {TARGET_COMPLETE}) {}",
                        mark(!complete.is_nan() && complete >= TARGET_COMPLETE)
                    )
                } else {
                    "(no target: the calls carry no token)".to_string()
                };
                let _ = writeln!(
                    t,
                    "### Shape `{}`\n\n{} requests; complete traces {} / {} = **{}** {target}; split: {}\n",
                    shape.name(),
                    s.requests,
                    s.complete,
                    s.requests,
                    fmt(complete),
                    s.split
                );
                Self::edge_rows(&mut t, &s.per_type);
                t.push('\n');
            }
        }
        t.push_str(
            "| shape | hop | service | kind | spans expected | found | recall | duplicates |\n",
        );
        t.push_str("|---|---|---|---|---|---|---|---|\n");
        for (hop, c) in &self.per_hop {
            let expected = self
                .per_shape
                .iter()
                .find(|(s, _)| *s == hop.shape)
                .map_or(0, |(_, s)| s.requests);
            let _ = writeln!(
                t,
                "| {} | `{}` | {} | {} | {} | {} | {} | {} |",
                hop.shape.name(),
                hop.label(),
                hop.service().name(),
                hop.kind().name(),
                expected,
                c.found,
                fmt(ratio(c.found, expected)),
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

    /// Span ids: request number × 100 + hop index + 1; trace id: the request number. Labels
    /// carry `token(id, hop index)`.
    fn tree_with(ids: &[&str], token: impl Fn(&str, usize) -> String) -> Vec<EvalSpan> {
        let mut out = Vec::new();
        for (r, id) in ids.iter().enumerate() {
            let shape = Shape::of_id(id).unwrap();
            let sid = |h: Hop| {
                ((r as u64 + 1) * 100 + h.index as u64 + 1)
                    .to_be_bytes()
                    .to_vec()
            };
            for (depth, hop) in Hop::all(shape).enumerate() {
                let spec = hop.spec();
                let t = token(id, hop.index);
                let label = if spec.prefix.starts_with('/') {
                    format!("{}{t}", spec.prefix)
                } else {
                    format!("{}{t} ?", spec.prefix)
                };
                out.push(EvalSpan {
                    service: Some(spec.service),
                    kind: spec.kind,
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

    fn tree(ids: &[&str]) -> Vec<EvalSpan> {
        tree_with(ids, |id, _| id.to_string())
    }

    fn score(spans: &[EvalSpan], ids: &[String]) -> Score {
        super::score(spans, ids, &HashMap::new())
    }

    #[test]
    fn fan_out_shapes_and_token_free_calls_are_scored_per_shape() {
        let requests = ["a0-1", "g0-1", "x0-1", "x0-2"];
        // The token-free shape's hops below nginx and its server carry a nonce.
        let nonce = |id: &str, hop: usize| {
            if id.starts_with('x') && hop >= 3 {
                format!(
                    "z{}{}",
                    &id[3..],
                    if (3..7).contains(&hop) { "b" } else { "t" }
                )
            } else {
                id.to_string()
            }
        };
        let spans = tree_with(&requests, nonce);
        let aliases: HashMap<String, String> = [
            ("z1b", "x0-1"),
            ("z1t", "x0-1"),
            ("z2b", "x0-2"),
            ("z2t", "x0-2"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let s = super::score(&spans, &ids(&requests), &aliases);
        assert_eq!(s.unidentified, 0, "{:?}", s.unidentified_examples);
        assert_eq!(s.complete, 4);
        assert_eq!(s.overall.truth, 40);
        let shapes: Vec<_> = s
            .per_shape
            .iter()
            .map(|(sh, x)| (*sh, x.requests))
            .collect();
        assert_eq!(
            shapes,
            [(Shape::Asyncio, 1), (Shape::Go, 1), (Shape::TokenFree, 2)]
        );
        let free = &s.per_shape[2].1;
        assert!(free.per_type.contains(&(
            EdgeType::TokenFree,
            EdgeCounts {
                truth: 4,
                found: 4,
                predicted: 4,
                correct: 4
            }
        )));
        assert_eq!(s.overall_tokened.truth, 20);
        assert!(s.target_failures().is_empty(), "{:?}", s.target_failures());
        // Without the aliases the nonce-carrying spans are strangers: the scorer fails.
        let s = super::score(&spans, &ids(&requests), &HashMap::new());
        assert_eq!(s.unidentified, 16);
        assert!(
            s.target_failures()
                .iter()
                .any(|f| f.contains("unidentified"))
        );
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
                other => panic!("{other:?} is no edge of the sequential shape"),
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
            .find(|(h, _)| {
                *h == Hop {
                    shape: Shape::Sequential,
                    index: 6,
                }
            })
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
        let none = HashMap::new();
        let seq = |index| Hop {
            shape: Shape::Sequential,
            index,
        };
        assert_eq!(
            Hop::identify(Nginx, Client, "/r/3-14", &none),
            Some((seq(1), "3-14".into()))
        );
        assert_eq!(
            Hop::identify(Threaded, Client, "GET kt:3-14", &none),
            Some((seq(11), "3-14".into()))
        );
        assert_eq!(
            Hop::identify(Redis, Server, "SET kb:3-14 ?", &none),
            Some((seq(8), "3-14".into()))
        );
        let go = |index| Hop {
            shape: Shape::Go,
            index,
        };
        assert_eq!(
            Hop::identify(Redis, Server, "SET kb:g3-14 ?", &none),
            Some((go(6), "g3-14".into()))
        );
        assert_eq!(
            Hop::identify(Go, Client, "/t/g3-14", &none),
            Some((go(7), "g3-14".into()))
        );
        assert_eq!(Hop::identify(Go, Client, "/t/3-14", &none), None);
        assert_eq!(Hop::identify(Node, Server, "/a/3-14", &none), None);
        assert_eq!(Hop::identify(Node, Server, "/r/", &none), None);
        assert_eq!(Hop::identify(Redis, Server, "PING", &none), None);
    }
}
