//! Cross-host links (rule 7 of the linker's module docs): the linker's side, free of I/O.
//!
//! Two things leave the linker and one comes back in; the runtime carries them over the network
//! (`crate::peer`):
//! - [`ClientSend`]: a released CLIENT span whose request's first byte has a known TCP sequence
//!   number — its trace context, to be indexed for other agents' questions;
//! - [`Lookup`]: a SERVER root whose request came from a remote address that no local traced
//!   process sent — the question "who sent the byte at `seq` from `client`?";
//! - [`Outcome`]: the answer (or why there is none), fed back with [`super::Linker::peer_answer`].
//!
//! # Why this evidence
//! Both ends of a TCP connection see the client's address and port and the same sequence numbers;
//! address translation of a service address (DNAT) changes the destination only, and a source
//! translation on the client's host (MASQUERADE, SNAT, conntrack's clash remapping) is undone by
//! the client's agent from its host's conntrack table (`crate::peer::nat`; the question carries
//! the server endpoint for that). So
//! (client address, client port, sequence number of the request's first byte) names one request
//! on both hosts without a byte of application traffic changed. A digest of the parsed request
//! (method and target, command, …) must match too: it is what an endpoint of that connection saw,
//! so an agent cannot learn trace context for a connection it did not see by guessing ports.
//!
//! # Rejected alternatives
//! - **TCP header options** written by a cgroup `sock_ops` program on the client (a span id in an
//!   experimental option) and parsed by a second program on the server. On this kernel the
//!   program type is reported available but was never loaded; it changes bytes on the wire
//!   (middleboxes strip or drop unknown options, the options eat into the MSS), needs a cgroup
//!   attachment on every host, and still cannot tell which request of a keep-alive connection a
//!   segment belongs to without the sequence numbers used here.
//! - **`traceparent` injection** into HTTP headers (OBI's way): changes application bytes, only
//!   works for HTTP, and needs write access to the traced process's traffic. Possible later as
//!   an opt-in extra, never the default.
//! - **Joining at query time** in a backend (DeepFlow): the OTLP that leaves the agents stays
//!   unlinked, so every existing collector and backend sees broken traces.
//! - **Timing alone** (the server's request arrived just after some client's send): ambiguous as
//!   soon as two requests cross the link within the clock error; a wrong parent is worse than
//!   none.
//! - **The 4-tuple alone**: a keep-alive or pooled connection carries many requests (and many
//!   traces); the sequence number of the request's first byte names one of them.
//! - **Shared state** (one map, file or kernel between agents): real hosts share nothing; the
//!   tests run both agents on one kernel but give them only the network.
//!
//! # Holding and failing safe
//! A SERVER root that qualifies waits `LINK_GRACE_NS` for a local client as always; only then is
//! the question asked (a local traced client, the common case on one host, costs no lookup).
//! It and its subtree are then held until an answer or `wait_ns` passes. Anything but a matching
//! answer — no agent at that address, no answer in time, "unknown", a refused or malformed reply,
//! too many lookups pending — leaves the span a root, counted by reason in [`CrossHostStats`].
//!
//! # Clock skew
//! The remote parent's times come from another host's clock. A linked span that starts before
//! its remote parent or ends after it keeps the link; it is counted (`skewed`, the largest
//! amount in `max_skew_ns`) and the span says by how much (`ztrace.link.clock_skew_ns`, see
//! [`CrossHost::skew`]), rather than being moved or unlinked.
//!
//! # Memory
//! Pending lookups: at most `max_pending` (default 16,384), about 110 bytes each with their
//! queue slots and the lookup handed to the network (≈ 1.8 MiB; `memory_at_the_bounds` in
//! `crate::peer` measures it). Remote parents' windows of linked spans awaiting release: at most
//! as many, 40 bytes each.
//! The index of client sends lives in `crate::peer` (its bound is stated there).

use std::collections::{VecDeque, hash_map::Entry};
use std::net::IpAddr;

use rustc_hash::FxHashMap as HashMap;

/// The linker's span handle (`super::Handle`; the linker imports this module, not the reverse).
type Handle = u64;
use crate::model::{Endpoint, Exchange, SpanId, TraceId};

/// Settings of the linker's cross-host side.
#[derive(Clone, Debug)]
pub struct CrossHostConfig {
    /// How long a SERVER root is held for an answer after its local grace period.
    pub wait_ns: u64,
    /// At most this many lookups pending; more are not asked (counted `overflow`).
    pub max_pending: usize,
    /// Client addresses worth asking (address, prefix length). Other remote clients (end users
    /// on the internet) are never asked.
    pub networks: Vec<(IpAddr, u8)>,
}

impl Default for CrossHostConfig {
    fn default() -> Self {
        Self {
            wait_ns: 2_000_000_000,
            max_pending: 16_384,
            networks: default_networks(),
        }
    }
}

/// Private, shared and link-local ranges: where other agents of one deployment live.
pub fn default_networks() -> Vec<(IpAddr, u8)> {
    [
        ("10.0.0.0", 8),
        ("172.16.0.0", 12),
        ("192.168.0.0", 16),
        ("100.64.0.0", 10),
        ("169.254.0.0", 16),
        ("fc00::", 7),
        ("fe80::", 10),
    ]
    .iter()
    .map(|(a, l)| (a.parse().expect("valid literal"), *l))
    .collect()
}

/// Whether `ip` lies in `net`/`len`.
pub fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|a| in_network(IpAddr::V4(a), net, len)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// One request on the wire as both ends see it, through DNAT: the client's endpoint and the
/// sequence number of the request's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WireKey {
    pub client: Endpoint,
    pub seq: u32,
}

/// The trace context a CLIENT span was exported with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The trace's `sampled` flag from a remote root, if it has one; otherwise sampling is
    /// decided on the trace id, which both agents share.
    pub sampled: Option<bool>,
}

/// A released CLIENT span, for the index other agents ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSend {
    pub key: WireKey,
    /// The server endpoint as the client's process saw it (its destination before any NAT of
    /// its host: a service address when its host DNATs one).
    pub server: Endpoint,
    pub digest: u64,
    pub ctx: PeerContext,
    /// Unix ns.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

/// A question for the agent at `key.client.addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub handle: Handle,
    pub key: WireKey,
    pub digest: u64,
    /// This agent's server endpoint of the connection (the asked agent may need it to undo its
    /// host's NAT).
    pub server: Endpoint,
    /// Monotonic ns after which the answer is no longer wanted.
    pub deadline_ns: u64,
}

/// The answer to a [`Lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Found {
        ctx: PeerContext,
        start_unix_ns: u64,
        end_unix_ns: u64,
    },
    /// The peer agent answered, and knows no such client send (until the deadline).
    Unknown,
    /// Nothing listens at the peer's agent port (the client host runs no agent).
    NoAgent,
    /// The peer did not answer in time.
    Timeout,
    /// The exchange failed authentication or was malformed.
    Refused,
    /// Asked without the caller's endpoint (`crate::peer` fallback peers): more than one agent,
    /// or more than one send of one agent, matched; none is taken.
    Ambiguous,
}

/// Cross-host link counters, by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrossHostStats {
    /// CLIENT sends handed to the index.
    pub client_sends: u64,
    /// SERVER roots asked about.
    pub lookups: u64,
    /// … linked to a remote CLIENT span.
    pub linked: u64,
    pub unknown: u64,
    pub no_agent: u64,
    pub timeout: u64,
    pub refused: u64,
    /// More than one candidate caller (asked without the caller's endpoint): left a root.
    pub ambiguous: u64,
    /// Not asked: `max_pending` lookups were pending.
    pub overflow: u64,
    /// Linked spans that lie partly outside their remote parent's window (clock skew between
    /// the hosts, or the network's delay on a tight call): the link is kept, the amount counted.
    pub skewed: u64,
    pub max_skew_ns: u64,
}

impl std::fmt::Display for CrossHostStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} client sends indexed; {} server roots asked about: {} linked, {} unknown, {} no agent, {} timeout, {} refused, {} ambiguous; {} not asked (too many pending); {} linked outside the caller's window (by at most {:.1} µs)",
            self.client_sends,
            self.lookups,
            self.linked,
            self.unknown,
            self.no_agent,
            self.timeout,
            self.refused,
            self.ambiguous,
            self.overflow,
            self.skewed,
            self.max_skew_ns as f64 / 1e3
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    key: WireKey,
    server: Endpoint,
    digest: u64,
    ask_at: u64,
    deadline: u64,
    asked: bool,
}

/// The linker's cross-host state: pending lookups and what waits to leave.
#[derive(Debug)]
pub struct CrossHost {
    pub config: CrossHostConfig,
    pending: HashMap<Handle, Pending>,
    /// (ask_at, handle), nearly in order.
    asks: VecDeque<(u64, Handle)>,
    /// (deadline, handle) of asked lookups.
    deadlines: VecDeque<(u64, Handle)>,
    lookups_out: Vec<Lookup>,
    sends_out: Vec<ClientSend>,
    /// Remote parents' windows (unix ns) of linked spans not yet released: at most
    /// `max_pending`, as they were pending lookups a moment ago.
    parent_windows: HashMap<Handle, (u64, u64)>,
    pub stats: CrossHostStats,
}

/// How often a held subtree is looked at while its answer is awaited.
pub const PEER_RETRY_NS: u64 = 25_000_000;

impl CrossHost {
    pub fn new(config: CrossHostConfig) -> Self {
        Self {
            config,
            pending: HashMap::default(),
            asks: VecDeque::new(),
            deadlines: VecDeque::new(),
            lookups_out: Vec::new(),
            sends_out: Vec::new(),
            parent_windows: HashMap::default(),
            stats: CrossHostStats::default(),
        }
    }

    /// Whether a SERVER request from `client` to `server` may come from another agent's host.
    pub fn remote(&self, client: &Endpoint, server: &Endpoint) -> bool {
        let ip = client.addr;
        !ip.is_loopback()
            && !ip.is_unspecified()
            && ip != server.addr
            && self
                .config
                .networks
                .iter()
                .any(|&(n, l)| in_network(ip, n, l))
    }

    /// A SERVER root that may have a remote caller: asked about at `ask_at` unless linked by then.
    pub fn hold(&mut self, h: Handle, key: WireKey, server: Endpoint, digest: u64, ask_at: u64) {
        if self.pending.len() >= self.config.max_pending {
            self.stats.overflow += 1;
            return;
        }
        self.pending.insert(
            h,
            Pending {
                key,
                server,
                digest,
                ask_at,
                deadline: ask_at.saturating_add(self.config.wait_ns),
                asked: false,
            },
        );
        self.asks.push_back((ask_at, h));
    }

    /// Until when the root `h` is held (0: not held).
    pub fn held_until(&self, h: Handle, now_ns: u64) -> u64 {
        match self.pending.get(&h) {
            Some(p) if p.asked && now_ns < p.deadline => {
                now_ns.saturating_add(PEER_RETRY_NS).min(p.deadline)
            }
            Some(p) if !p.asked => p.ask_at,
            _ => 0,
        }
    }

    /// Asks what is due (`still_root`: the span is held and has no parent yet) and gives up on
    /// lookups past their deadline.
    pub fn tick(&mut self, now_ns: u64, still_root: impl Fn(Handle) -> bool) {
        while let Some(&(at, h)) = self.asks.front() {
            if at > now_ns {
                break;
            }
            self.asks.pop_front();
            let Some(p) = self.pending.get_mut(&h) else {
                continue;
            };
            if !still_root(h) {
                self.pending.remove(&h);
                continue;
            }
            p.asked = true;
            self.stats.lookups += 1;
            self.lookups_out.push(Lookup {
                handle: h,
                key: p.key,
                digest: p.digest,
                server: p.server,
                deadline_ns: p.deadline,
            });
            self.deadlines.push_back((p.deadline, h));
        }
        while let Some(&(at, h)) = self.deadlines.front() {
            if at > now_ns {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.remove(&h).is_some() {
                self.stats.timeout += 1;
            }
        }
    }

    /// The answer for `h`: its context if it is still wanted and found.
    pub fn answer(&mut self, h: Handle, outcome: Outcome) -> Option<(PeerContext, u64, u64)> {
        let Entry::Occupied(e) = self.pending.entry(h) else {
            return None;
        };
        e.remove();
        match outcome {
            Outcome::Found {
                ctx,
                start_unix_ns,
                end_unix_ns,
            } => return Some((ctx, start_unix_ns, end_unix_ns)),
            Outcome::Unknown => self.stats.unknown += 1,
            Outcome::NoAgent => self.stats.no_agent += 1,
            Outcome::Timeout => self.stats.timeout += 1,
            Outcome::Refused => self.stats.refused += 1,
            Outcome::Ambiguous => self.stats.ambiguous += 1,
        }
        None
    }

    /// `h` was linked to a remote parent whose span ran from `start` to `end` (unix ns, the
    /// other host's clock).
    pub fn linked(&mut self, h: Handle, start_unix_ns: u64, end_unix_ns: u64) {
        self.stats.linked += 1;
        if self.parent_windows.len() < self.config.max_pending {
            self.parent_windows.insert(h, (start_unix_ns, end_unix_ns));
        }
    }

    /// A released span is no longer waited for. For a span linked to a remote parent: how far
    /// (ns) its final times lie outside the parent's window, counted when not zero — the clock
    /// skew between the hosts (plus the network's delay on a tight call), marked on the span by
    /// the caller rather than hidden.
    pub fn released(&mut self, h: Handle, start_unix_ns: u64, end_unix_ns: u64) -> Option<u64> {
        self.pending.remove(&h);
        let (p_start, p_end) = self.parent_windows.remove(&h)?;
        let skew = Self::skew(start_unix_ns, end_unix_ns, p_start, p_end);
        if skew == 0 {
            return None;
        }
        self.stats.skewed += 1;
        self.stats.max_skew_ns = self.stats.max_skew_ns.max(skew);
        Some(skew)
    }

    /// How far the window `start..end` sticks out of the parent's `p_start..p_end` (0: inside).
    pub fn skew(start: u64, end: u64, p_start: u64, p_end: u64) -> u64 {
        p_start.saturating_sub(start).max(end.saturating_sub(p_end))
    }

    pub fn sent(&mut self, send: ClientSend) {
        self.stats.client_sends += 1;
        self.sends_out.push(send);
    }

    pub fn take(&mut self, sends: &mut Vec<ClientSend>, lookups: &mut Vec<Lookup>) {
        sends.append(&mut self.sends_out);
        lookups.append(&mut self.lookups_out);
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// A digest of what both ends parse from a request's bytes (FNV-1a, stable across builds): the
/// method and target of an HTTP request, a database command, an RPC's method, a DNS question.
pub fn request_digest(exchange: &Exchange) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match exchange {
        Exchange::Http(x) => {
            add(b"http");
            add(x.method.as_bytes());
            add(x.target.as_bytes());
        }
        Exchange::Db(x) => {
            add(x.system.name().as_bytes());
            add(x.operation.as_deref().unwrap_or("").as_bytes());
            add(x.collection.as_deref().unwrap_or("").as_bytes());
        }
        Exchange::Rpc(x) => {
            add(b"rpc");
            add(x.service.as_bytes());
            add(x.method.as_bytes());
        }
        Exchange::Dns(x) => {
            add(b"dns");
            add(&x.id.to_be_bytes());
            add(x.name.as_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, port: u16) -> Endpoint {
        Endpoint {
            addr: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn networks() {
        let x = CrossHost::new(CrossHostConfig::default());
        assert!(x.remote(&ep("10.1.2.3", 40000), &ep("10.9.0.1", 80)));
        assert!(!x.remote(&ep("127.0.0.1", 40000), &ep("127.0.0.1", 80)));
        assert!(!x.remote(&ep("10.1.2.3", 40000), &ep("10.1.2.3", 80)));
        assert!(!x.remote(&ep("8.8.8.8", 40000), &ep("10.1.2.3", 80)));
        assert!(x.remote(&ep("::ffff:192.168.1.4", 1), &ep("10.1.2.3", 80)));
        assert!(x.remote(&ep("fd00::1", 1), &ep("fd00::2", 80)));
        assert!(in_network(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
    }

    #[test]
    fn asks_after_grace_and_times_out() {
        let mut x = CrossHost::new(CrossHostConfig {
            wait_ns: 1000,
            ..Default::default()
        });
        let key = WireKey {
            client: ep("10.0.0.1", 5000),
            seq: 7,
        };
        x.hold(1, key, key.client, 9, 100);
        x.hold(2, key, key.client, 9, 100);
        assert_eq!(x.held_until(1, 50), 100);
        x.tick(50, |_| true);
        let (mut s, mut l) = (Vec::new(), Vec::new());
        x.take(&mut s, &mut l);
        assert!(l.is_empty());
        // Span 2 found a local parent meanwhile: not asked.
        x.tick(100, |h| h == 1);
        x.take(&mut s, &mut l);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].handle, 1);
        assert_eq!(l[0].deadline_ns, 1100);
        assert!(x.held_until(1, 200) > 200);
        x.tick(1100, |_| true);
        assert_eq!(x.held_until(1, 1100), 0);
        assert_eq!(x.stats.timeout, 1);
        // A late answer changes nothing.
        assert!(x.answer(1, Outcome::Unknown).is_none());
        assert_eq!(x.stats.unknown, 0);
    }

    /// Clock skew between hosts: a child outside its remote parent's window keeps its link, is
    /// counted, and the amount comes back for the span's attribute; one inside is not marked.
    #[test]
    fn skew_outside_the_parents_window_is_counted_and_returned() {
        let mut x = CrossHost::new(CrossHostConfig::default());
        // Parent (host A's clock): 1_000..5_000. Child 1 starts 300 ns early (B's clock behind).
        x.linked(1, 1_000, 5_000);
        x.linked(2, 1_000, 5_000);
        x.linked(3, 1_000, 5_000);
        assert_eq!(x.released(1, 700, 4_000), Some(300));
        // Child 2 lies inside: nothing to mark.
        assert_eq!(x.released(2, 1_100, 4_900), None);
        // Child 3 ends 2 ms after its parent (B's clock ahead).
        assert_eq!(x.released(3, 1_500, 2_005_000), Some(2_000_000));
        // A span that was never linked remotely has no skew.
        assert_eq!(x.released(4, 0, u64::MAX), None);
        assert_eq!(x.stats.linked, 3);
        assert_eq!((x.stats.skewed, x.stats.max_skew_ns), (2, 2_000_000));
        assert!(
            x.stats
                .to_string()
                .contains("2 linked outside the caller's window (by at most 2000.0 µs)")
        );
    }

    #[test]
    fn bounded() {
        let mut x = CrossHost::new(CrossHostConfig {
            max_pending: 2,
            ..Default::default()
        });
        let key = WireKey {
            client: ep("10.0.0.1", 5000),
            seq: 7,
        };
        for h in 0..5 {
            x.hold(h, key, key.client, 0, 0);
        }
        assert_eq!(x.pending(), 2);
        assert_eq!(x.stats.overflow, 3);
    }

    #[test]
    fn digest_is_stable() {
        let e = Exchange::Http(crate::model::HttpExchange {
            method: "GET".into(),
            target: "/a".into(),
            ..Default::default()
        });
        assert_eq!(request_digest(&e), request_digest(&e.clone()));
        let f = Exchange::Http(crate::model::HttpExchange {
            method: "GET".into(),
            target: "/b".into(),
            ..Default::default()
        });
        assert_ne!(request_digest(&e), request_digest(&f));
    }
}
