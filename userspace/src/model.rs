//! The finished product of the pipeline: spans with typed protocol details, and the processes
//! they belong to. Exporters turn these into OTLP, console lines or JSON; nothing upstream of the
//! exporters knows about attribute names.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, valid (non-zero) id.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        loop {
            // Two draws of 64 bits, little-endian: the bytes `fill_bytes` gives (so seeded ids
            // are unchanged), without its loop; `random::<[u8; 16]>()` draws each byte alone.
            let (a, b) = (rng.next_u64().to_le_bytes(), rng.next_u64().to_le_bytes());
            let mut id = TraceId::default();
            id.0[..8].copy_from_slice(&a);
            id.0[8..].copy_from_slice(&b);
            if id != TraceId::default() {
                return id;
            }
        }
    }
}

impl TraceId {
    /// The 56 random bits of W3C Trace Context Level 2: the last seven bytes, big-endian.
    pub fn randomness(&self) -> u64 {
        let b = &self.0;
        u64::from_be_bytes([0, b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
    }
}

impl SpanId {
    /// A random, valid (non-zero) id.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        loop {
            let id = SpanId(rng.next_u64().to_le_bytes());
            if id != SpanId::default() {
                return id;
            }
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// The process received the request.
    Server,
    /// The process sent the request.
    Client,
}

/// One endpoint of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// The exchange types live with the parsers that produce them.
pub use ztrace_protocols::exchange::{
    DbExchange, DbSystem, DnsExchange, Exchange, HttpExchange, RpcExchange,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error(String),
}

/// A finished span, ready to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Set when the parent came from an incoming `traceparent` (it lives outside this export).
    pub parent_is_remote: bool,
    /// For a span linked to a caller on another host: how far (ns) it lies outside the caller's
    /// window by the two hosts' clocks, when it does (`ztrace.link.clock_skew_ns`). Never 0:
    /// non-zero, it takes 8 bytes, the room [`Span::tracestate`] needs (spans stay 376 bytes).
    pub clock_skew_ns: Option<std::num::NonZeroU64>,
    /// For a trace continued from an incoming `traceparent`: that header's `sampled` flag (what
    /// `parentbased_*` samplers follow). None for traces that start here.
    pub remote_sampled: Option<bool>,
    /// For a trace continued from an incoming `traceparent` that came with a valid `tracestate`:
    /// that list, shared by every span of the trace (None, no cost, for all others).
    pub tracestate: Option<Arc<TraceState>>,
    pub kind: SpanKind,
    /// Static for the common names (HTTP methods): no allocation per span.
    pub name: Cow<'static, str>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The traced process (resource key).
    pub pid: u32,
    pub tid: u32,
    /// The traced process's own socket address.
    pub local: Endpoint,
    /// The other end of the connection.
    pub peer: Endpoint,
    pub exchange: Exchange,
    pub status: SpanStatus,
    /// What the sampling stages that kept this span (tail, then head) say about its probability:
    /// the `th` it is exported with, if any.
    pub sampling: Sampling,
    /// Attribute changes made by rules (`processors::ottl`), laid over what the span says: None
    /// (no cost) unless a rule changed an attribute of this span.
    pub edits: Option<Box<AttrEdits>>,
}

/// An incoming W3C `tracestate`, checked and bounded (`link::tracestate`): its list members
/// joined with commas, without optional white space, and what its OpenTelemetry `ot` entry
/// says about sampling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceState {
    /// `key=value` members, joined with `,`: at most 32 of them and 512 characters.
    pub members: Box<str>,
    /// `ot=th:…`: the rejection threshold the upstream sampled with (56 bits).
    pub th: Option<u64>,
    /// `ot=rv:…`: explicit randomness (56 bits), which replaces the trace id's.
    pub rv: Option<u64>,
}

/// The sampling a span went through before export, for the `th` (rejection threshold of the
/// W3C `tracestate` `ot` entry: see `processors::tail::threshold`) it is exported with. "Not
/// sampled" and "kept with an unknown probability" both export no `th`, but a later sampler
/// treats them differently: it gives the first its own threshold and leaves the second unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sampling {
    /// No sampler has decided on this span's trace yet (every trace is kept so far).
    #[default]
    Unsampled,
    /// Kept by consistent probability sampling with this rejection threshold (0: probability 1).
    Threshold(u64),
    /// Kept with a probability nobody knows (rate limiting, an upstream's decision): no later
    /// stage can say what it is.
    Unknown,
}

impl Sampling {
    /// A tail sampling keep: its threshold, or None for a keep of unknown probability.
    pub fn kept(th: Option<u64>) -> Self {
        th.map_or(Sampling::Unknown, Sampling::Threshold)
    }

    /// A tail sampling keep of a span's trace (see [`Sampling::kept`]), composed with the
    /// threshold the upstream kept it at ([`Span::upstream_th`]), if known: the larger one, as
    /// for any further stage. Unknown stays unknown.
    pub fn kept_after(th: Option<u64>, upstream: Option<u64>) -> Self {
        let kept = Sampling::kept(th);
        upstream.map_or(kept, |x| kept.raised(x))
    }

    /// The `th` to export, if the probability is known and something sampled.
    pub fn th(self) -> Option<u64> {
        match self {
            Sampling::Threshold(t) => Some(t),
            Sampling::Unsampled | Sampling::Unknown => None,
        }
    }

    /// After a further consistent sampling stage with threshold `t` kept the span: the larger
    /// threshold (stages on the same randomness compose by their maximum; a later stage can
    /// raise a threshold, never lower it). Unknown stays unknown.
    pub fn raised(self, t: u64) -> Self {
        match self {
            Sampling::Unsampled => Sampling::Threshold(t),
            Sampling::Threshold(x) => Sampling::Threshold(x.max(t)),
            Sampling::Unknown => Sampling::Unknown,
        }
    }
}

/// A float that compares by its bits, so the types holding it stay `Eq`.
#[derive(Clone, Copy, Debug)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64 {}

/// An attribute value a rule wrote. Strings a rule names literally are shared with the
/// compiled rules (`Cow::Borrowed`): writing one allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrVal {
    Str(Cow<'static, str>),
    Int(i64),
    Double(F64),
    Bool(bool),
    StrArray(Vec<String>),
}

/// Attribute changes by key, in the order first made: `Some` sets (adds or replaces) the
/// attribute, `None` deletes it. Every output reads a span's attributes through
/// `semconv::attributes::visit_attributes`, which applies them.
/// Keys a rule names are shared with the compiled rules (`Cow::Borrowed`), so a write allocates
/// no key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
/// The first two changes are stored in the box itself (one allocation for a span's changes).
pub struct AttrEdits(pub SmallVec<[(Cow<'static, str>, Option<AttrVal>); 2]>);

impl AttrEdits {
    /// The change made to `key`: None when untouched, `Some(None)` when deleted.
    pub fn get(&self, key: &str) -> Option<Option<&AttrVal>> {
        self.0
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| v.as_ref())
    }

    pub fn put(&mut self, key: &str, value: Option<AttrVal>) {
        match self.0.iter_mut().find(|(k, _)| &**k == key) {
            Some(e) => e.1 = value,
            None => self.0.push((Cow::Owned(key.to_owned()), value)),
        }
    }
}

impl Span {
    /// The 56 bits of randomness consistent probability sampling compares with a threshold:
    /// the upstream's explicit `rv` when its `tracestate` has one, else the trace id's last
    /// seven bytes (W3C Trace Context Level 2).
    pub fn randomness(&self) -> u64 {
        match self.tracestate.as_ref().and_then(|t| t.rv) {
            Some(rv) => rv,
            None => self.trace_id.randomness(),
        }
    }

    /// The threshold the upstream sampled this span's trace with, when it is known: its
    /// `sampled` flag was set, its `tracestate` said `th`, and that `th` agrees with the flag
    /// (randomness at least the threshold; otherwise it is taken as unknown, as the
    /// specification asks of a parent-based sampler).
    pub fn upstream_th(&self) -> Option<u64> {
        if self.remote_sampled != Some(true) {
            return None;
        }
        let th = self.tracestate.as_ref()?.th?;
        (self.randomness() >= th).then_some(th)
    }

    pub fn http(&self) -> Option<&HttpExchange> {
        match &self.exchange {
            Exchange::Http(h) => Some(h),
            _ => None,
        }
    }

    pub fn http_mut(&mut self) -> Option<&mut HttpExchange> {
        match &mut self.exchange {
            Exchange::Http(h) => Some(h),
            _ => None,
        }
    }

    pub fn db(&self) -> Option<&DbExchange> {
        match &self.exchange {
            Exchange::Db(d) => Some(d),
            _ => None,
        }
    }
}

/// One agent's tail-sampling verdict on a trace that crosses hosts, sent over the peer channel to
/// the other agents on the trace's path (keep-if-any-keeps: see `processors::tail::vote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceVote {
    pub trace_id: TraceId,
    pub keep: bool,
    /// With `keep`: the sampling threshold the trace was kept with (see [`Span::th`]).
    pub th: Option<u64>,
}

/// What the exported Resource says about a traced process.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent_pid: Option<u32>,
    pub service_name: String,
    pub executable_name: String,
    pub executable_path: String,
    pub command_args: Vec<String>,
    pub host_name: String,
    /// `process.runtime.name` / `.version` of an interpreter (empty when not one, or unknown).
    pub runtime_name: String,
    pub runtime_version: String,
    /// `container.id` and `k8s.pod.uid` from the cgroup path (empty outside a container).
    pub container_id: String,
    pub pod_uid: String,
}
