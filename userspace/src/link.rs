//! Causality linker: owns every span from the moment its request is seen until it is exported,
//! decides each span's parent and trace, and releases spans whose trace is settled.
//!
//! Evidence, strongest first:
//! 1. **Incoming W3C `traceparent`** on a SERVER request: the span joins that trace, its parent is
//!    the remote span.
//! 2. **Same bytes on both ends of a TCP connection** (cross-process, one host): a CLIENT span's
//!    request starts at TCP sequence number S on the client socket; the SERVER span that reads the
//!    request starting at the same S on the other end of the same 4-tuple is its child. Sequence
//!    numbers make the match exact even for keep-alive and pipelined connections, and whatever the
//!    order in which the two processes' events reach us.
//! 3. **Thread-per-request**: a CLIENT request written by a thread that is, at that moment, serving
//!    exactly one SERVER exchange (it read that request and has not finished the response) is a
//!    child of it. A thread serving several exchanges at once (an event loop) is ambiguous: no link,
//!    counted in `ambiguous_thread`. Wrong links are worse than missing ones.
//!
//! Trace ids are not fixed when a span starts: a SERVER span may learn of its cross-process CLIENT
//! parent a little later than its own request (two CPUs race into the ring buffer). So parents are
//! kept as handles and the trace id is resolved by walking to the root when a span is released. A
//! root SERVER span without a traceparent is *settled* once `LINK_GRACE` has passed since its
//! request; CLIENT roots and remote-parented roots are settled at once. A finished span is released
//! when its root is settled. Released spans stay as tombstones for `RETAIN` so late children still
//! find their trace; everything is bounded by `max_spans`.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use rand::{SeedableRng, rngs::StdRng};

use crate::model::{Endpoint, Exchange, Span, SpanId, SpanKind, SpanStatus, TraceId};

pub type Handle = u64;

/// How long a root SERVER span waits for evidence of a traced CLIENT parent.
pub const LINK_GRACE_NS: u64 = 300_000_000;
/// How long released spans stay resolvable for late children, and seq-match entries live.
const RETAIN_NS: u64 = 10_000_000_000;
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    None,
    Local(Handle),
    Remote { trace_id: TraceId, span_id: SpanId },
}

/// Identity of one request's first byte on one TCP connection, the same on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub client: Endpoint,
    pub server: Endpoint,
    pub seq: u32,
}

/// What is known when a request starts.
#[derive(Clone, Debug)]
pub struct Start {
    pub kind: SpanKind,
    pub pid: u32,
    pub tid: u32,
    /// Monotonic kernel time.
    pub start_ns: u64,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub exchange: Exchange,
    pub traceparent: Option<(TraceId, SpanId)>,
    pub seq_key: Option<SeqKey>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub spans_started: u64,
    pub spans_released: u64,
    pub traceparent_links: u64,
    pub thread_links: u64,
    pub cross_process_links: u64,
    pub ambiguous_thread: u64,
    /// Spans dropped because the store was full.
    pub evicted: u64,
    /// Parents that were gone when a child was released (child exported as a root).
    pub orphaned: u64,
    /// Spans still open at shutdown, exported with an error status.
    pub unfinished_at_shutdown: u64,
}

#[derive(Debug)]
struct Rec {
    span_id: SpanId,
    own_trace: TraceId,
    parent: Parent,
    kind: SpanKind,
    pid: u32,
    tid: u32,
    start_ns: u64,
    end_ns: Option<u64>,
    local: Endpoint,
    peer: Endpoint,
    exchange: Exchange,
    error: Option<String>,
}

/// What stays of a released span so late children still find their parent and trace.
#[derive(Clone, Copy)]
struct Tomb {
    span_id: SpanId,
    trace: TraceId,
}

pub struct Linker {
    /// Spans not yet released.
    recs: HashMap<Handle, Rec>,
    /// Finished spans waiting for their trace to settle.
    finished: Vec<Handle>,
    /// Released spans, kept small, with their release times in order for expiry.
    tombs: HashMap<Handle, Tomb>,
    tomb_order: VecDeque<(u64, Handle)>,
    /// When each seq-match entry was made, in order, for expiry.
    seq_order: VecDeque<(u64, SeqKey)>,
    /// Spans in creation order, for eviction when the store is full (released ones are skipped
    /// lazily): eviction costs O(1) amortised instead of a scan of everything held.
    live_order: VecDeque<Handle>,
    next: Handle,
    /// Open SERVER exchanges per (pid, tid).
    serving: HashMap<(u32, u32), Vec<Handle>>,
    clients_by_seq: HashMap<SeqKey, (Handle, u64)>,
    servers_by_seq: HashMap<SeqKey, (Handle, u64)>,
    /// Add to monotonic ns to get Unix ns.
    mono_to_unix: i128,
    max_spans: usize,
    /// Span and trace ids: seeded for replay, so a replay exports the same ids every time.
    rng: StdRng,
    pub stats: LinkStats,
}

impl Linker {
    /// `seed`: None for live capture (ids from OS entropy), Some for reproducible ids.
    pub fn new(mono_to_unix: i128, max_spans: usize, seed: Option<u64>) -> Self {
        Self {
            recs: HashMap::default(),
            finished: Vec::new(),
            tombs: HashMap::default(),
            tomb_order: VecDeque::new(),
            seq_order: VecDeque::new(),
            live_order: VecDeque::new(),
            next: 1,
            serving: HashMap::default(),
            clients_by_seq: HashMap::default(),
            servers_by_seq: HashMap::default(),
            mono_to_unix,
            max_spans,
            rng: match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            },
            stats: LinkStats::default(),
        }
    }

    pub fn start(&mut self, s: Start) -> Handle {
        let h = self.next;
        self.next += 1;
        self.stats.spans_started += 1;
        if self.recs.len() >= self.max_spans {
            self.evict_oldest();
        }
        let mut parent = Parent::None;
        match s.kind {
            SpanKind::Server => {
                if let Some((trace_id, span_id)) = s.traceparent {
                    parent = Parent::Remote { trace_id, span_id };
                    self.stats.traceparent_links += 1;
                } else if let Some(key) = s.seq_key {
                    if let Some(&(c, _)) = self.clients_by_seq.get(&key) {
                        if self.recs.contains_key(&c) || self.tombs.contains_key(&c) {
                            parent = Parent::Local(c);
                            self.stats.cross_process_links += 1;
                        }
                    } else {
                        self.servers_by_seq.insert(key, (h, s.start_ns));
                        self.seq_order.push_back((s.start_ns, key));
                    }
                }
                self.serving.entry((s.pid, s.tid)).or_default().push(h);
            }
            SpanKind::Client => {
                match self.serving.get(&(s.pid, s.tid)).map(Vec::as_slice) {
                    Some([only]) => {
                        parent = Parent::Local(*only);
                        self.stats.thread_links += 1;
                    }
                    Some([_, _, ..]) => self.stats.ambiguous_thread += 1,
                    _ => {}
                }
                if let Some(key) = s.seq_key {
                    self.clients_by_seq.insert(key, (h, s.start_ns));
                    self.seq_order.push_back((s.start_ns, key));
                    // Only a span not yet released (still in `recs`) can take a parent.
                    if let Some((server, _)) = self.servers_by_seq.remove(&key)
                        && let Some(rec) = self.recs.get_mut(&server)
                        && rec.parent == Parent::None
                    {
                        rec.parent = Parent::Local(h);
                        self.stats.cross_process_links += 1;
                    }
                }
            }
        }
        self.live_order.push_back(h);
        self.recs.insert(
            h,
            Rec {
                span_id: SpanId::random(&mut self.rng),
                own_trace: TraceId::random(&mut self.rng),
                parent,
                kind: s.kind,
                pid: s.pid,
                tid: s.tid,
                start_ns: s.start_ns,
                end_ns: None,
                local: s.local,
                peer: s.peer,
                exchange: s.exchange,
                error: None,
            },
        );
        h
    }

    /// Adds what the response (or the rest of the request) told about the exchange.
    pub fn update(&mut self, h: Handle, f: impl FnOnce(&mut Exchange)) {
        if let Some(rec) = self.recs.get_mut(&h) {
            f(&mut rec.exchange);
        }
    }

    /// The exchange ended (response complete, or aborted with `error`).
    pub fn finish(&mut self, h: Handle, end_ns: u64, error: Option<String>) {
        let Some(rec) = self.recs.get_mut(&h) else {
            return;
        };
        if rec.end_ns.is_some() {
            return;
        }
        rec.end_ns = Some(end_ns.max(rec.start_ns));
        rec.error = error;
        self.finished.push(h);
        if rec.kind == SpanKind::Server {
            let key = (rec.pid, rec.tid);
            if let Some(list) = self.serving.get_mut(&key) {
                list.retain(|x| *x != h);
                if list.is_empty() {
                    self.serving.remove(&key);
                }
            }
        }
    }

    fn evict_oldest(&mut self) {
        let victim = self
            .recs
            .iter()
            .min_by_key(|(_, r)| r.start_ns)
            .map(|(h, _)| *h);
        if let Some(h) = victim {
            self.stats.evicted += 1;
            self.remove(h);
        }
    }

    fn remove(&mut self, h: Handle) -> Option<Rec> {
        let rec = self.recs.remove(&h)?;
        if rec.kind == SpanKind::Server
            && let Some(list) = self.serving.get_mut(&(rec.pid, rec.tid))
        {
            list.retain(|x| *x != h);
            if list.is_empty() {
                self.serving.remove(&(rec.pid, rec.tid));
            }
        }
        Some(rec)
    }

    /// Trace id of `h` and whether it can no longer change.
    fn resolve(&self, h: Handle, now_ns: u64) -> Option<(TraceId, bool)> {
        let mut cur = self.recs.get(&h)?;
        for _ in 0..MAX_DEPTH {
            match cur.parent {
                Parent::Remote { trace_id, .. } => return Some((trace_id, true)),
                Parent::Local(p) => match (self.recs.get(&p), self.tombs.get(&p)) {
                    (Some(parent), _) => cur = parent,
                    (None, Some(tomb)) => return Some((tomb.trace, true)),
                    // Parent evicted or forgotten: this subtree becomes its own trace.
                    (None, None) => return Some((cur.own_trace, true)),
                },
                Parent::None => {
                    let settled = cur.kind == SpanKind::Client
                        || now_ns >= cur.start_ns.saturating_add(LINK_GRACE_NS);
                    return Some((cur.own_trace, settled));
                }
            }
        }
        None
    }

    /// Releases finished spans whose trace is settled, and forgets old state. Costs time in
    /// proportion to the finished spans waiting, not to everything held.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let mut waiting = std::mem::take(&mut self.finished);
        // Parents before children, so a tombstone exists for every released parent.
        waiting.sort_unstable_by_key(|h| self.recs.get(h).map_or(0, |r| r.start_ns));
        for h in waiting {
            match self.resolve(h, now_ns) {
                Some((trace, true)) => self.release(h, trace, now_ns, out),
                Some((_, false)) => self.finished.push(h),
                // Evicted meanwhile (or a parent cycle, which cannot be settled).
                None => {}
            }
        }
        while let Some(h) = self.live_order.front() {
            if self.recs.contains_key(h) {
                break;
            }
            self.live_order.pop_front();
        }
        // A long-lived span at the front keeps released handles queued behind it: compact now
        // and then, so the queue stays proportional to what is held.
        if self.live_order.len() > 4 * self.max_spans.max(1024) {
            let recs = &self.recs;
            self.live_order.retain(|h| recs.contains_key(h));
        }
        let cutoff = now_ns.saturating_sub(RETAIN_NS);
        while let Some(&(t, h)) = self.tomb_order.front() {
            if t >= cutoff {
                break;
            }
            self.tomb_order.pop_front();
            self.tombs.remove(&h);
        }
        while let Some(&(t, key)) = self.seq_order.front() {
            if t >= cutoff {
                break;
            }
            self.seq_order.pop_front();
            if self
                .clients_by_seq
                .get(&key)
                .is_some_and(|(_, at)| *at < cutoff)
            {
                self.clients_by_seq.remove(&key);
            }
            if self
                .servers_by_seq
                .get(&key)
                .is_some_and(|(_, at)| *at < cutoff)
            {
                self.servers_by_seq.remove(&key);
            }
        }
    }

    fn release(&mut self, h: Handle, trace: TraceId, now_ns: u64, out: &mut Vec<Span>) {
        let Some(rec) = self.remove(h) else {
            return;
        };
        let (parent_span_id, parent_is_remote) = match rec.parent {
            Parent::Local(p) => match (self.recs.get(&p), self.tombs.get(&p)) {
                (Some(pr), _) => (Some(pr.span_id), false),
                (None, Some(tomb)) => (Some(tomb.span_id), false),
                (None, None) => {
                    self.stats.orphaned += 1;
                    (None, false)
                }
            },
            Parent::Remote { span_id, .. } => (Some(span_id), true),
            Parent::None => (None, false),
        };
        self.tombs.insert(
            h,
            Tomb {
                span_id: rec.span_id,
                trace,
            },
        );
        self.tomb_order.push_back((now_ns, h));
        self.stats.spans_released += 1;
        let end_ns = rec.end_ns.unwrap_or(rec.start_ns);
        let status = status_of(&rec.exchange, rec.kind, rec.error.as_deref());
        let to_unix = |ns: u64| (ns as i128 + self.mono_to_unix).max(0) as u64;
        out.push(Span {
            trace_id: trace,
            span_id: rec.span_id,
            parent_span_id,
            parent_is_remote,
            kind: rec.kind,
            name: exchange_name(&rec.exchange),
            start_unix_ns: to_unix(rec.start_ns),
            end_unix_ns: to_unix(end_ns),
            pid: rec.pid,
            tid: rec.tid,
            local: rec.local,
            peer: rec.peer,
            exchange: rec.exchange,
            status,
        });
    }

    /// Shutdown: finish what is open (so every parent is exported) and release everything.
    pub fn drain(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let open: Vec<Handle> = self
            .recs
            .iter()
            .filter(|(_, r)| r.end_ns.is_none())
            .map(|(h, _)| *h)
            .collect();
        for h in open {
            self.stats.unfinished_at_shutdown += 1;
            self.finish(
                h,
                now_ns,
                Some("tracer stopped before the exchange ended".into()),
            );
        }
        self.poll(u64::MAX / 2, out);
    }

    /// Spans held: not yet released.
    pub fn open_spans(&self) -> usize {
        self.recs.len()
    }

    /// Log/trace correlation (`logs`): the span id of the one SERVER exchange thread (`pid`,
    /// `tid`) is serving now, if exactly one. The trace id is final only at the span's release.
    pub fn serving_span(&self, pid: u32, tid: u32) -> Option<SpanId> {
        match self.serving.get(&(pid, tid)).map(Vec::as_slice) {
            Some([only]) => self.recs.get(only).map(|r| r.span_id),
            _ => None,
        }
    }
}

const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Span status per the conventions: HTTP servers fail on 5xx, clients on 4xx and 5xx; a database
/// call fails when the server answered with an error; any exchange fails when it was cut off.
fn status_of(exchange: &Exchange, kind: SpanKind, error: Option<&str>) -> SpanStatus {
    if let Some(e) = error {
        return SpanStatus::Error(e.to_string());
    }
    match exchange {
        Exchange::Http(h) => match (h.status, kind) {
            (Some(code), SpanKind::Server) if code >= 500 => SpanStatus::Error(code.to_string()),
            (Some(code), SpanKind::Client) if code >= 400 => SpanStatus::Error(code.to_string()),
            _ => SpanStatus::Unset,
        },
        Exchange::Rpc(r) => match (r.grpc_status, kind) {
            // Server side: only codes that mean the server failed (RPC conventions).
            (Some(code @ (2 | 4 | 12 | 13 | 14 | 15)), SpanKind::Server) => {
                SpanStatus::Error(grpc_code_name(code).to_string())
            }
            (Some(code), SpanKind::Client) if code != 0 => {
                SpanStatus::Error(grpc_code_name(code).to_string())
            }
            (None, _) if r.http_status.is_some_and(|s| s >= 400) => {
                SpanStatus::Error(format!("HTTP {}", r.http_status.unwrap_or_default()))
            }
            _ => SpanStatus::Unset,
        },
        Exchange::Dns(d) => match d.rcode.as_deref() {
            Some("NOERROR") | None => SpanStatus::Unset,
            Some(rcode) if kind == SpanKind::Client || rcode != "NXDOMAIN" => {
                SpanStatus::Error(rcode.to_string())
            }
            Some(_) => SpanStatus::Unset,
        },
        Exchange::Db(d) => match &d.error {
            Some((code, message)) => SpanStatus::Error(if message.is_empty() {
                code.clone()
            } else {
                format!("{code} {message}")
            }),
            None => SpanStatus::Unset,
        },
    }
}

/// Span name per the conventions: HTTP — the method; databases — "{operation} {collection}",
/// falling back to the operation, then the system.
pub fn exchange_name(exchange: &Exchange) -> String {
    match exchange {
        Exchange::Http(h) => span_name(&h.method),
        Exchange::Rpc(r) => format!("{}/{}", r.service, r.method),
        Exchange::Dns(d) => format!("DNS {} {}", d.qtype, d.name),
        Exchange::Db(d) => match (&d.operation, &d.collection) {
            (Some(op), Some(coll)) => format!("{op} {coll}"),
            (Some(op), None) => op.clone(),
            _ => d.system.name().to_string(),
        },
    }
}

/// Name of a gRPC status code.
pub fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Span name per the HTTP conventions when no route is known: the method, or "HTTP".
pub fn span_name(method: &str) -> String {
    if KNOWN_METHODS.contains(&method) {
        method.to_string()
    } else {
        "HTTP".to_string()
    }
}

/// Parses a W3C `traceparent` header (version 00 rules; future versions read leniently).
pub fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId)> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    let (mut t, mut s) = ([0u8; 16], [0u8; 8]);
    hex(trace, &mut t)?;
    hex(span, &mut s)?;
    u8::from_str_radix(flags, 16).ok()?;
    if t == [0; 16] || s == [0; 8] {
        return None;
    }
    Some((TraceId(t), SpanId(s)))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::HttpExchange;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }
    }

    fn start(kind: SpanKind, pid: u32, tid: u32, t: u64) -> Start {
        Start {
            kind,
            pid,
            tid,
            start_ns: t,
            local: ep(1),
            peer: ep(2),
            exchange: Exchange::Http(HttpExchange {
                method: "GET".into(),
                ..Default::default()
            }),
            traceparent: None,
            seq_key: None,
        }
    }

    fn key(seq: u32) -> SeqKey {
        SeqKey {
            client: ep(40000),
            server: ep(8080),
            seq,
        }
    }

    fn by_id(spans: &[Span], kind: SpanKind, pid: u32) -> &Span {
        spans
            .iter()
            .find(|s| s.kind == kind && s.pid == pid)
            .unwrap()
    }

    #[test]
    fn thread_per_request_and_cross_process_in_either_order() {
        for server_first in [false, true] {
            let mut l = Linker::new(0, 1000, None);
            // Frontend (pid 1) serves a request on thread 11, calls the backend (pid 2).
            let front = l.start(start(SpanKind::Server, 1, 11, 100));
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
        s.traceparent = Some(tp);
        let h = l.start(s);
        l.finish(h, 9, None);
        let mut out = Vec::new();
        l.poll(10, &mut out);
        assert_eq!(out.len(), 1, "remote-parented spans need no grace period");
        assert_eq!(out[0].trace_id, tp.0);
        assert_eq!(out[0].parent_span_id, Some(tp.1));
        assert!(out[0].parent_is_remote);
        assert_eq!((out[0].start_unix_ns, out[0].end_unix_ns), (1_005, 1_009));
    }

    #[test]
    fn event_loop_thread_is_ambiguous_not_wrong() {
        let mut l = Linker::new(0, 10, None);
        let a = l.start(start(SpanKind::Server, 1, 1, 1));
        let b = l.start(start(SpanKind::Server, 1, 1, 2));
        let c = l.start(start(SpanKind::Client, 1, 1, 3));
        for h in [a, b, c] {
            l.finish(h, 4, None);
        }
        let mut out = Vec::new();
        l.poll(LINK_GRACE_NS + 10, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| s.parent_span_id.is_none()));
        assert_eq!(l.stats.ambiguous_thread, 1);
    }

    #[test]
    fn finished_server_no_longer_parents_new_clients() {
        let mut l = Linker::new(0, 10, None);
        let a = l.start(start(SpanKind::Server, 1, 1, 1));
        l.finish(a, 2, None);
        let c = l.start(start(SpanKind::Client, 1, 1, 3));
        l.finish(c, 4, None);
        let mut out = Vec::new();
        l.poll(LINK_GRACE_NS + 10, &mut out);
        assert!(out.iter().all(|s| s.parent_span_id.is_none()));
    }

    #[test]
    fn drain_exports_open_parents_with_error() {
        let mut l = Linker::new(0, 10, None);
        let a = l.start(start(SpanKind::Server, 1, 1, 1));
        let c = l.start(start(SpanKind::Client, 1, 1, 3));
        l.finish(c, 4, None);
        let mut out = Vec::new();
        l.drain(5, &mut out);
        assert_eq!(out.len(), 2);
        let parent = out.iter().find(|s| s.kind == SpanKind::Server).unwrap();
        assert!(matches!(parent.status, SpanStatus::Error(_)));
        let _ = a;
        assert_eq!(l.stats.unfinished_at_shutdown, 1);
    }

    #[test]
    fn store_is_bounded() {
        let mut l = Linker::new(0, 4, None);
        for i in 0..10 {
            l.start(start(SpanKind::Client, 1, 1, i));
        }
        assert!(l.open_spans() <= 4);
        assert_eq!(l.stats.evicted, 6);
    }

    #[test]
    fn traceparent_parsing() {
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
