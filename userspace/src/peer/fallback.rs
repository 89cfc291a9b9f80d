//! Callers behind a NAT gateway that runs no agent: asking the configured fallback peers
//! without the caller's endpoint.
//!
//! A gateway between the hosts (a third machine routing A ↔ B that masquerades or SNATs A's
//! traffic) gives the server the gateway's address and a port the gateway chose. Neither agent
//! can read the gateway's conntrack table, so [`super::nat`] cannot undo it, and the server
//! agent's question goes to an address where no agent listens.
//!
//! # What is asked
//! When the agent at the caller's address does not answer the connection (no agent there:
//! [`Outcome::NoAgent`]) and fallback peers are configured (`--peer-fallback`, at most
//! [`MAX_FALLBACK_PEERS`]), the lookup is asked again of those peers *without the caller's
//! endpoint*: the question names the unspecified address and port 0 (an agent of an older
//! version finds no such send and answers "unknown"), the sequence number of the request's first
//! byte, the request's digest and the server endpoint as this agent saw it. An answering agent
//! takes a send of its own only when exactly one send in its index has that sequence number and
//! digest and was made to that server endpoint (its destination as its process saw it; see
//! `super::index`); two or more: no answer, counted ambiguous. Sequence numbers and the server's
//! address survive the gateway's source NAT untouched, which is why they can stand in for the
//! client endpoint; the sequence number is the connection's random initial one plus the bytes
//! sent, so a 32-bit match of the same request to the same server from two hosts within the
//! index's window is rare, and then refused rather than guessed.
//!
//! # Precision
//! The asking agent links only when exactly one peer found a send, and every other peer it asked
//! has answered at least once (said "unknown", ended or failed); a second peer's match makes the
//! lookup [`Outcome::Ambiguous`] (left a root, counted). A second candidate that appears only
//! after every other peer said "unknown" once (the same 32-bit sequence number of the same
//! request to the same server, sent from another host, released later) is not seen, nor is one
//! held by a peer that cannot be reached (it counts as having answered): the limits of this
//! rule.
//!
//! # Cost
//! - Only after the direct question failed: the caller's address is remembered as agent-less for
//!   [`NO_AGENT_NS`] (its later lookups go straight to the fallback peers), and then asked
//!   directly again.
//! - About one fan-out per connection: the agent that answered is remembered per (caller
//!   endpoint as seen, server endpoint) for [`ROUTE_NS`] after its last answer, and later
//!   requests on that connection are asked of it alone (requests asked before the first answer
//!   came back fan out too: 64 fan-outs for 16 connections × 20 requests in the e2e test); if
//!   it no longer knows the connection (the gateway gave the port to another host's connection)
//!   the route is dropped and the next request fans out again; a connection no peer knew is not asked again for
//!   [`NOBODY_NS`] (its lookups end "unknown" at once). At most [`MAX_ROUTES`] connections are
//!   remembered (the oldest go first).
//! - At most [`MAX_FALLBACK_PEERS`] peers, each asked in the same batched frames as every other
//!   lookup to it.
//!
//! # The client's own DNAT
//! A client that called a service address its host DNATs to the server saw the service address,
//! not the server's; the answering agent then asks its host's conntrack table which server that
//! send's connection reached (`super::nat::NatTable::reached`: by the original tuple, reading
//! the reply tuple), only for sends whose sequence number and digest already match.
//!
//! # Limits
//! The peers must be reachable from this agent (a management network or VPN around the
//! gateway). A gateway that also rewrote the destination (DNAT on the gateway itself) leaves the
//! server endpoint unmatched: no link, never a wrong one. A gateway that runs an agent of its
//! own answers "unknown" for callers behind it, and the fallback peers are not asked (only an
//! address where nothing answers is).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap as HashMap;

use crate::link::Handle;
use crate::link::crosshost::{Lookup, Outcome, WireKey};
use crate::model::Endpoint;

/// Most fallback peers (each fan-out asks all of them).
pub const MAX_FALLBACK_PEERS: usize = 16;
/// How long an address where no agent answered is asked via the fallback peers only.
pub const NO_AGENT_NS: u64 = 5_000_000_000;
/// How long a connection is asked of the peer that answered for it, after its last answer.
pub const ROUTE_NS: u64 = 60_000_000_000;
/// How long a connection that no peer knew is not asked again.
pub const NOBODY_NS: u64 = 5_000_000_000;
/// Most connections remembered (≈ 90 bytes each with the expiry order: ≤ 6 MiB).
pub const MAX_ROUTES: usize = 65_536;
/// Most caller addresses remembered as agent-less.
const MAX_NO_AGENT: usize = 4096;

/// A connection as this agent saw it: (caller endpoint, server endpoint).
type Conn = (Endpoint, Endpoint);

/// The question asked of a fallback peer: `l` without the caller's endpoint.
pub fn without_client(l: &Lookup) -> Lookup {
    let addr = match l.server.addr {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u8; 16]),
    };
    Lookup {
        key: WireKey {
            client: Endpoint { addr, port: 0 },
            seq: l.key.seq,
        },
        ..*l
    }
}

/// Whether a question names no caller endpoint (asked of a fallback peer).
pub fn is_without_client(client: &Endpoint) -> bool {
    client.addr.is_unspecified() && client.port == 0
}

/// Which peer answered for which connection, and which connections no peer knew.
#[derive(Debug, Default)]
pub struct Routes {
    map: HashMap<Conn, (Option<IpAddr>, u64)>,
    order: VecDeque<(u64, Conn)>,
}

impl Routes {
    /// Some(Some(peer)): ask that peer; Some(None): no peer knew it lately; None: not known.
    pub fn get(&mut self, conn: &Conn, now_ns: u64) -> Option<Option<IpAddr>> {
        self.expire(now_ns);
        self.map.get(conn).map(|e| e.0)
    }

    fn put(&mut self, conn: Conn, peer: Option<IpAddr>, until: u64) {
        while self.map.len() >= MAX_ROUTES && !self.map.contains_key(&conn) {
            let Some((_, k)) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&k);
        }
        self.map.insert(conn, (peer, until));
        self.order.push_back((until, conn));
    }

    fn forget(&mut self, conn: &Conn) {
        self.map.remove(conn);
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(until, k)) = self.order.front() {
            if until > now_ns {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|e| e.1 <= now_ns) {
                self.map.remove(&k);
            }
        }
    }
}

/// What a fallback peer's task learnt about its part of a fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum News {
    /// The peer answered "unknown" (it may still find the send before the deadline).
    Heard,
    /// The peer's part ended: found, or why not.
    Ended(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    Asked,
    Heard,
    Ended(Outcome),
}

/// One lookup asked of several fallback peers; settled once.
#[derive(Debug)]
pub struct Fan {
    pub handle: Handle,
    conn: Conn,
    /// Asked of the one peer a route named (not a fan-out).
    routed: bool,
    routes: Arc<Mutex<Routes>>,
    state: Mutex<(Vec<(IpAddr, PeerState)>, bool)>,
}

impl Fan {
    pub fn is_done(&self) -> bool {
        self.state.lock().map_or(true, |s| s.1)
    }

    /// Takes `news` from peer `from`; the lookup's final outcome, and the agent it came from,
    /// the first time it is settled.
    pub fn settle(&self, from: IpAddr, news: News, now_ns: u64) -> Option<(Outcome, IpAddr)> {
        let mut st = self.state.lock().ok()?;
        let (peers, done) = &mut *st;
        if *done {
            return None;
        }
        if let Some((_, p)) = peers.iter_mut().find(|(ip, _)| *ip == from) {
            *p = match (news, *p) {
                (News::Heard, PeerState::Asked) => PeerState::Heard,
                (News::Heard, p) => p,
                (News::Ended(o), _) => PeerState::Ended(o),
            };
        }
        let found: Vec<(IpAddr, Outcome)> = peers
            .iter()
            .filter_map(|&(ip, p)| match p {
                PeerState::Ended(o @ Outcome::Found { .. }) => Some((ip, o)),
                _ => None,
            })
            .collect();
        let all_heard = peers.iter().all(|(_, p)| *p != PeerState::Asked);
        let all_ended = peers.iter().all(|(_, p)| matches!(p, PeerState::Ended(_)));
        let outcome = match found.as_slice() {
            [_, _, ..] => (Outcome::Ambiguous, from),
            [(ip, o)] if all_heard => (*o, *ip),
            [] if all_ended => {
                let ended = peers.iter().filter_map(|(_, p)| match p {
                    PeerState::Ended(o) => Some(*o),
                    _ => None,
                });
                let mut why = Outcome::NoAgent;
                for o in ended {
                    why = match (why, o) {
                        (_, Outcome::Unknown) | (Outcome::Unknown, _) => Outcome::Unknown,
                        (Outcome::NoAgent, o) => o,
                        (w, _) => w,
                    };
                }
                (why, from)
            }
            _ => return None,
        };
        *done = true;
        drop(st);
        if let Ok(mut routes) = self.routes.lock() {
            match outcome.0 {
                Outcome::Found { .. } => routes.put(self.conn, Some(outcome.1), now_ns + ROUTE_NS),
                // The route's peer no longer knows the connection (the gateway may have given
                // its port to another host's): fan out again next time.
                _ if self.routed => routes.forget(&self.conn),
                Outcome::Ambiguous => routes.forget(&self.conn),
                _ => routes.put(self.conn, None, now_ns + NOBODY_NS),
            }
        }
        Some(outcome)
    }
}

/// What to do with a lookup.
#[derive(Debug)]
pub enum Plan {
    /// Ask the agent at the caller's address.
    Direct,
    /// Ask these peers without the caller's endpoint (`without_client`), each with the fan.
    Fan(Arc<Fan>, Vec<IpAddr>),
    /// Answer at once.
    Answer(Outcome),
}

/// The asking side's fallback state (owned by the dispatcher).
#[derive(Debug)]
pub struct Fallback {
    peers: Vec<IpAddr>,
    no_agent: HashMap<IpAddr, u64>,
    routes: Arc<Mutex<Routes>>,
    /// Lookups asked of fallback peers (fan-outs and routed), and the fan-outs among them.
    pub asked: u64,
    pub fanned: u64,
}

impl Fallback {
    pub fn new(peers: Vec<IpAddr>) -> Self {
        Self {
            peers,
            no_agent: HashMap::default(),
            routes: Arc::default(),
            asked: 0,
            fanned: 0,
        }
    }

    pub fn is_off(&self) -> bool {
        self.peers.is_empty()
    }

    /// A new lookup for the agent at `ip` (the caller's address).
    pub fn plan(&mut self, ip: IpAddr, l: &Lookup, now_ns: u64) -> Plan {
        if self.is_off() {
            return Plan::Direct;
        }
        let conn = (l.key.client, l.server);
        let route = self
            .routes
            .lock()
            .ok()
            .and_then(|mut r| r.get(&conn, now_ns));
        match route {
            Some(Some(peer)) => return self.fan(l, vec![peer], true),
            Some(None) => return Plan::Answer(Outcome::Unknown),
            None => {}
        }
        if self.no_agent.get(&ip).is_some_and(|&until| until > now_ns) {
            return self.fan_out(ip, l);
        }
        Plan::Direct
    }

    /// The agent at `ip` did not answer lookup `l` (nothing listens there).
    pub fn no_agent(&mut self, ip: IpAddr, l: &Lookup, now_ns: u64) -> Plan {
        if self.is_off() {
            return Plan::Answer(Outcome::NoAgent);
        }
        if self.no_agent.len() >= MAX_NO_AGENT {
            self.no_agent.retain(|_, until| *until > now_ns);
        }
        if self.no_agent.len() < MAX_NO_AGENT {
            self.no_agent.insert(ip, now_ns + NO_AGENT_NS);
        }
        self.fan_out(ip, l)
    }

    fn fan_out(&mut self, ip: IpAddr, l: &Lookup) -> Plan {
        let peers: Vec<IpAddr> = self.peers.iter().copied().filter(|p| *p != ip).collect();
        if peers.is_empty() {
            return Plan::Answer(Outcome::NoAgent);
        }
        self.fanned += 1;
        self.fan(l, peers, false)
    }

    fn fan(&mut self, l: &Lookup, peers: Vec<IpAddr>, routed: bool) -> Plan {
        self.asked += 1;
        let fan = Fan {
            handle: l.handle,
            conn: (l.key.client, l.server),
            routed,
            routes: Arc::clone(&self.routes),
            state: Mutex::new((
                peers.iter().map(|&p| (p, PeerState::Asked)).collect(),
                false,
            )),
        };
        Plan::Fan(Arc::new(fan), peers)
    }

    #[cfg(test)]
    fn routes(&self) -> usize {
        self.routes.lock().map_or(0, |r| r.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::crosshost::PeerContext;
    use crate::model::{SpanId, TraceId};

    use crate::testkit::endpoint as ep;

    fn lookup(client: &str) -> Lookup {
        Lookup {
            handle: 7,
            key: WireKey {
                client: ep(client),
                seq: 99,
            },
            digest: 5,
            server: ep("10.0.2.1:8080"),
            deadline_ns: 1_000,
        }
    }

    fn found(span: u8) -> Outcome {
        Outcome::Found {
            ctx: PeerContext {
                trace_id: TraceId([1; 16]),
                span_id: SpanId([span; 8]),
                sampled: None,
            },
            start_unix_ns: 1,
            end_unix_ns: 2,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fan_of(p: Plan) -> (Arc<Fan>, Vec<IpAddr>) {
        match p {
            Plan::Fan(f, peers) => (f, peers),
            other => panic!("not a fan-out: {other:?}"),
        }
    }

    #[test]
    fn asks_without_the_client_endpoint() {
        let q = without_client(&lookup("10.0.2.254:40000"));
        assert!(is_without_client(&q.key.client));
        assert_eq!(
            (q.key.seq, q.digest, q.server),
            (99, 5, ep("10.0.2.1:8080"))
        );
        assert!(!is_without_client(&ep("10.0.2.254:40000")));
    }

    #[test]
    fn off_without_peers() {
        let mut f = Fallback::new(vec![]);
        let l = lookup("10.0.2.254:40000");
        assert!(matches!(f.plan(ip("10.0.2.254"), &l, 0), Plan::Direct));
        assert!(matches!(
            f.no_agent(ip("10.0.2.254"), &l, 0),
            Plan::Answer(Outcome::NoAgent)
        ));
    }

    /// Direct first; after "no agent" the peers (never the agent-less address itself); the
    /// answering peer is then asked alone about that connection.
    #[test]
    fn fans_out_after_no_agent_then_follows_the_route() {
        let (a, c, gw) = (ip("10.0.1.1"), ip("10.0.3.1"), ip("10.0.2.254"));
        let mut f = Fallback::new(vec![a, c, gw]);
        let l = lookup("10.0.2.254:40000");
        assert!(matches!(f.plan(gw, &l, 0), Plan::Direct));
        let (fan, peers) = fan_of(f.no_agent(gw, &l, 0));
        assert_eq!(peers, vec![a, c]);
        // Agent-less now: the next lookup fans out at once.
        let other = lookup("10.0.2.254:40001");
        assert!(matches!(f.plan(gw, &other, 1), Plan::Fan(..)));
        // A found it; C has not answered yet: not settled.
        assert_eq!(fan.settle(a, News::Ended(found(1)), 2), None);
        assert_eq!(fan.settle(c, News::Heard, 3), Some((found(1), a)));
        assert!(fan.is_done());
        assert_eq!(
            fan.settle(c, News::Ended(found(2)), 4),
            None,
            "settled once"
        );
        // The connection is A's now; another connection of the gateway's is not.
        let (_, peers) = fan_of(f.plan(gw, &l, 5));
        assert_eq!(peers, vec![a]);
        // After the address's agent-less time: direct again for unknown connections.
        assert!(matches!(f.plan(gw, &other, NO_AGENT_NS + 1), Plan::Direct));
        assert_eq!((f.asked, f.fanned, f.routes()), (3, 2, 1));
    }

    #[test]
    fn two_candidates_are_ambiguous() {
        let (a, c, gw) = (ip("10.0.1.1"), ip("10.0.3.1"), ip("10.0.2.254"));
        let mut f = Fallback::new(vec![a, c]);
        let l = lookup("10.0.2.254:40000");
        let (fan, _) = fan_of(f.no_agent(gw, &l, 0));
        assert_eq!(fan.settle(a, News::Ended(found(1)), 1), None);
        assert_eq!(
            fan.settle(c, News::Ended(found(2)), 2),
            Some((Outcome::Ambiguous, c))
        );
        // Not remembered: the next lookup on the connection fans out again.
        assert!(matches!(f.plan(gw, &l, 3), Plan::Fan(_, ref p) if p.len() == 2));
    }

    #[test]
    fn nobody_knew_it_then_not_asked_for_a_while() {
        let (a, c, gw) = (ip("10.0.1.1"), ip("10.0.3.1"), ip("10.0.2.254"));
        let mut f = Fallback::new(vec![a, c]);
        let l = lookup("10.0.2.254:40000");
        let (fan, _) = fan_of(f.no_agent(gw, &l, 0));
        assert_eq!(fan.settle(a, News::Ended(Outcome::NoAgent), 1), None);
        assert_eq!(
            fan.settle(c, News::Ended(Outcome::Unknown), 2),
            Some((Outcome::Unknown, c))
        );
        assert!(matches!(f.plan(gw, &l, 3), Plan::Answer(Outcome::Unknown)));
        // Asked again afterwards (directly: the address's agent-less time has passed too).
        assert!(matches!(f.plan(gw, &l, 2 + NOBODY_NS + 1), Plan::Direct));
    }

    /// A route whose peer no longer knows the connection is dropped, not kept as "nobody".
    #[test]
    fn a_stale_route_is_forgotten() {
        let (a, c, gw) = (ip("10.0.1.1"), ip("10.0.3.1"), ip("10.0.2.254"));
        let mut f = Fallback::new(vec![a, c]);
        let l = lookup("10.0.2.254:40000");
        let (fan, _) = fan_of(f.no_agent(gw, &l, 0));
        fan.settle(a, News::Ended(found(1)), 0);
        fan.settle(c, News::Ended(Outcome::Unknown), 0);
        let (fan, peers) = fan_of(f.plan(gw, &l, 1));
        assert_eq!(peers, vec![a]);
        assert_eq!(
            fan.settle(a, News::Ended(Outcome::Unknown), 2),
            Some((Outcome::Unknown, a))
        );
        assert!(matches!(f.plan(gw, &l, 3), Plan::Fan(_, ref p) if p.len() == 2));
    }
}
