//! The index of this agent's CLIENT sends that other agents ask about.
//!
//! Keyed by (client address, client port, sequence number of the request's first byte); an
//! entry answers only a question that also carries the request's digest. Entries are kept for
//! [`WINDOW_NS`] after the span's release and at most `max` of them (the oldest go first).
//! Memory: an entry is 88 bytes in the table (whose buckets are the power of two above 8/7 of
//! the entries: 262,144 for the default 131,072) plus a 32-byte slot in the expiry order, so
//! ≤ 31 MiB when full; filling it from empty grew RSS by 40 MiB (the outgrown tables stay in the
//! allocator; `memory_at_the_bounds` in `service.rs`). At 10,000 cross-host calls a second the
//! window holds 100,000.
//!
//! A second table, by (sequence number, digest), answers the questions fallback peers are asked
//! without the caller's endpoint (`super::fallback`): a send matches when its destination as its
//! process saw it is the question's server endpoint, and only a single match is answered. It
//! holds one 32-byte entry per send (a list only when sends share a sequence number and digest).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use crate::link::crosshost::{ClientSend, WireKey};
use crate::model::Endpoint;

use super::protocol::{Found, Query};

/// How long a client send stays answerable: longer than any asker holds its span.
pub const WINDOW_NS: u64 = 10_000_000_000;
pub const DEFAULT_MAX: usize = 131_072;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub inserted: u64,
    pub evicted_full: u64,
    pub answered_found: u64,
    pub answered_unknown: u64,
    /// The connection and sequence number matched but the request did not: refused.
    pub digest_mismatch: u64,
    /// Of `answered_found`, those found under the client endpoint this host's NAT table named.
    pub answered_via_nat: u64,
    /// Of `answered_found`, those asked without the caller's endpoint (a fallback peer).
    pub answered_without_client: u64,
    /// Questions without the caller's endpoint that two or more sends matched: refused.
    pub ambiguous: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    digest: u64,
    found: Found,
    /// The send's destination as its process saw it.
    server: Endpoint,
    at_ns: u64,
}

/// The sends sharing a (sequence number, digest).
#[derive(Clone, Debug)]
enum Same {
    One(WireKey),
    Many(Vec<WireKey>),
}

impl Same {
    fn keys(&self) -> &[WireKey] {
        match self {
            Same::One(k) => std::slice::from_ref(k),
            Same::Many(v) => v,
        }
    }
}

/// An endpoint with an IPv4-mapped IPv6 address as its IPv4 one (a dual-stack socket's view).
fn plain(e: Endpoint) -> Endpoint {
    match e.addr {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(e, |v4| Endpoint {
            addr: v4.into(),
            port: e.port,
        }),
        _ => e,
    }
}

pub struct ClientIndex {
    map: HashMap<WireKey, Entry>,
    by_seq: HashMap<(u32, u64), Same>,
    order: VecDeque<(u64, WireKey)>,
    max: usize,
    pub stats: IndexStats,
}

impl ClientIndex {
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::default(),
            by_seq: HashMap::default(),
            order: VecDeque::new(),
            max,
            stats: IndexStats::default(),
        }
    }

    /// `now_ns`: any monotonic clock, the same for [`ClientIndex::expire`].
    pub fn insert(&mut self, send: &ClientSend, now_ns: u64) {
        while self.map.len() >= self.max {
            let Some((_, k)) = self.order.pop_front() else {
                break;
            };
            if self.remove(&k) {
                self.stats.evicted_full += 1;
            }
        }
        let found = Found {
            ctx: send.ctx,
            start_unix_ns: send.start_unix_ns,
            end_unix_ns: send.end_unix_ns,
        };
        self.remove(&send.key);
        let entry = Entry {
            digest: send.digest,
            found,
            server: plain(send.server),
            at_ns: now_ns,
        };
        self.map.insert(send.key, entry);
        match self.by_seq.entry((send.key.seq, send.digest)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Same::One(send.key));
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let keys = o.get().keys().iter().copied().chain([send.key]).collect();
                *o.get_mut() = Same::Many(keys);
            }
        }
        self.order.push_back((now_ns, send.key));
        self.stats.inserted += 1;
    }

    /// Removes the send under `key` from both tables; whether there was one.
    fn remove(&mut self, key: &WireKey) -> bool {
        let Some(e) = self.map.remove(key) else {
            return false;
        };
        let by = (key.seq, e.digest);
        if let Some(same) = self.by_seq.get_mut(&by) {
            match same {
                Same::One(_) => {
                    self.by_seq.remove(&by);
                }
                Same::Many(v) => {
                    v.retain(|k| k != key);
                    if let [only] = v.as_slice() {
                        *same = Same::One(*only);
                    }
                }
            }
        }
        true
    }

    pub fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(WINDOW_NS);
        while let Some(&(t, k)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|e| e.at_ns < cutoff) {
                self.remove(&k);
            }
        }
    }

    /// The answer to one question: only for a send of this agent with the same request. When no
    /// send has the question's client endpoint, `translate` may name the one this host's process
    /// had (its NAT undone, `super::nat`), and the send is looked for under that.
    pub fn answer(
        &mut self,
        q: &Query,
        translate: impl FnOnce(&Query) -> Option<Endpoint>,
    ) -> Option<Found> {
        let mut entry = self.map.get(&q.key);
        let mut via_nat = false;
        if entry.is_none()
            && let Some(client) = translate(q)
        {
            entry = self.map.get(&WireKey {
                client,
                seq: q.key.seq,
            });
            via_nat = true;
        }
        match entry {
            Some(e) if e.digest == q.digest => {
                let found = e.found;
                self.stats.answered_found += 1;
                self.stats.answered_via_nat += u64::from(via_nat);
                Some(found)
            }
            Some(_) => {
                self.stats.digest_mismatch += 1;
                None
            }
            None => {
                self.stats.answered_unknown += 1;
                None
            }
        }
    }

    /// The answer to a question without the caller's endpoint (a fallback peer's,
    /// `super::fallback`): the one send with the question's sequence number and digest whose
    /// destination is the question's server endpoint — as its process saw it, or as `reached`
    /// names it (the server a service address of this host was DNAT'd to, from the host's
    /// conntrack table: the send's key and destination → the server reached). None when there
    /// is none, or more than one (counted ambiguous).
    pub fn answer_without_client(
        &mut self,
        q: &Query,
        reached: impl Fn(&WireKey, Endpoint) -> Option<Endpoint>,
    ) -> Option<Found> {
        let server = plain(q.server);
        let mut hits = self
            .by_seq
            .get(&(q.key.seq, q.digest))
            .map(Same::keys)
            .unwrap_or_default()
            .iter()
            .filter_map(|k| Some((k, self.map.get(k)?)))
            .filter(|(k, e)| {
                e.server == server || reached(k, e.server).is_some_and(|r| plain(r) == server)
            });
        match (hits.next(), hits.next()) {
            (Some((_, e)), None) => {
                let found = e.found;
                self.stats.answered_found += 1;
                self.stats.answered_without_client += 1;
                Some(found)
            }
            (Some(_), Some(_)) => {
                self.stats.ambiguous += 1;
                None
            }
            (None, _) => {
                self.stats.answered_unknown += 1;
                None
            }
        }
    }

    /// The sends a question without the caller's endpoint names by sequence number and digest
    /// but whose destination as their process saw it is another server (a service address,
    /// maybe): (key, destination), for [`ClientIndex::answer_without_client`]'s `reached`.
    pub fn elsewhere(&self, q: &Query) -> Vec<(WireKey, Endpoint)> {
        let server = plain(q.server);
        self.by_seq
            .get(&(q.key.seq, q.digest))
            .map(Same::keys)
            .unwrap_or_default()
            .iter()
            .filter_map(|k| Some((*k, self.map.get(k)?.server)))
            .filter(|(_, s)| *s != server)
            .collect()
    }

    /// Whether a send is indexed under `key` (whatever its request).
    pub fn contains(&self, key: &WireKey) -> bool {
        self.map.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::crosshost::PeerContext;
    use crate::model::{Endpoint, SpanId, TraceId};

    fn send(port: u16, seq: u32, digest: u64) -> ClientSend {
        ClientSend {
            key: WireKey {
                client: Endpoint {
                    addr: "10.0.0.1".parse().unwrap(),
                    port,
                },
                seq,
            },
            server: Endpoint {
                addr: "10.0.0.2".parse().unwrap(),
                port: 80,
            },
            digest,
            ctx: PeerContext {
                trace_id: TraceId([1; 16]),
                span_id: SpanId([port as u8; 8]),
                sampled: Some(true),
            },
            start_unix_ns: 1,
            end_unix_ns: 2,
        }
    }

    fn q(s: &ClientSend, digest: u64) -> Query {
        Query {
            key: s.key,
            digest,
            server: Endpoint {
                addr: "10.0.0.2".parse().unwrap(),
                port: 80,
            },
        }
    }

    impl ClientIndex {
        fn answer_plain(&mut self, q: &Query) -> Option<Found> {
            self.answer(q, |_| None)
        }
    }

    #[test]
    fn answers_only_matching_sends() {
        let mut ix = ClientIndex::new(10);
        let a = send(1, 100, 7);
        ix.insert(&a, 0);
        assert_eq!(ix.answer_plain(&q(&a, 7)).unwrap().ctx, a.ctx);
        // Same connection and sequence number, another request: refused.
        assert!(ix.answer_plain(&q(&a, 8)).is_none());
        // Unknown connection.
        assert!(ix.answer_plain(&q(&send(2, 100, 7), 7)).is_none());
        assert!(ix.answer_plain(&q(&send(1, 101, 7), 7)).is_none());
        assert_eq!(ix.stats.answered_found, 1);
        assert_eq!(ix.stats.digest_mismatch, 1);
        assert_eq!(ix.stats.answered_unknown, 2);
    }

    /// A question about a port this host's NAT gave the connection: found under the port the
    /// process had, only when the translation names it, and still only for the same request.
    #[test]
    fn answers_through_the_nat_translation() {
        let mut ix = ClientIndex::new(10);
        let sent = send(40_000, 100, 7);
        ix.insert(&sent, 0);
        let seen = send(61_234, 100, 7); // the port the server saw
        let orig = Some(sent.key.client);
        assert!(ix.answer(&q(&seen, 7), |_| None).is_none());
        assert_eq!(ix.answer(&q(&seen, 7), |_| orig).unwrap().ctx, sent.ctx);
        // Another request, or another sequence number, on the translated connection: no answer.
        assert!(ix.answer(&q(&seen, 8), |_| orig).is_none());
        assert!(ix.answer(&q(&send(61_234, 101, 7), 7), |_| orig).is_none());
        // A question that matches as asked never consults the table.
        let exact = ix.answer(&q(&sent, 7), |_| panic!("asked the NAT table"));
        assert!(exact.is_some());
        assert_eq!(ix.stats.answered_found, 2);
        assert_eq!(ix.stats.answered_via_nat, 1);
        assert_eq!(ix.stats.digest_mismatch, 1);
        assert_eq!(ix.stats.answered_unknown, 2);
    }

    /// Without the caller's endpoint: the one send of that sequence number and request to that
    /// server; two such sends answer nothing.
    #[test]
    fn answers_without_the_client_endpoint() {
        let mut ix = ClientIndex::new(10);
        let a = send(40_000, 100, 7);
        ix.insert(&a, 0);
        ix.insert(&send(40_001, 101, 7), 0);
        let any = |seq: u32, digest: u64, server: &str| Query {
            key: WireKey {
                client: Endpoint {
                    addr: "0.0.0.0".parse().unwrap(),
                    port: 0,
                },
                seq,
            },
            digest,
            server: Endpoint {
                addr: server.parse().unwrap(),
                port: 80,
            },
        };
        assert_eq!(
            ix.answer_without_client(&any(100, 7, "10.0.0.2"), |_, _| None)
                .unwrap()
                .ctx,
            a.ctx
        );
        // A send to a service address this host DNAT'd to the asked server: found through the
        // translation only (and only for that send).
        let elsewhere = any(100, 7, "10.0.0.3");
        assert_eq!(ix.elsewhere(&elsewhere), vec![(a.key, a.server)]);
        let via =
            |k: &WireKey, s: Endpoint| (*k == a.key && s == a.server).then_some(elsewhere.server);
        assert_eq!(
            ix.answer_without_client(&elsewhere, via).unwrap().ctx,
            a.ctx
        );
        // Another server, another request, another sequence number: no answer.
        assert!(
            ix.answer_without_client(&any(100, 7, "10.0.0.3"), |_, _| None)
                .is_none()
        );
        assert!(
            ix.answer_without_client(&any(100, 8, "10.0.0.2"), |_, _| None)
                .is_none()
        );
        assert!(
            ix.answer_without_client(&any(102, 7, "10.0.0.2"), |_, _| None)
                .is_none()
        );
        // A dual-stack server socket's view of the same server.
        let mut mapped = any(100, 7, "10.0.0.2");
        mapped.server.addr = "::ffff:10.0.0.2".parse().unwrap();
        assert!(ix.answer_without_client(&mapped, |_, _| None).is_some());
        // A second send with the same sequence number and request to the same server: ambiguous.
        ix.insert(&send(40_002, 100, 7), 1);
        assert!(
            ix.answer_without_client(&any(100, 7, "10.0.0.2"), |_, _| None)
                .is_none()
        );
        assert_eq!(ix.stats.ambiguous, 1);
        // Once one of them is gone, the other is answered again.
        assert!(ix.remove(&send(40_002, 100, 7).key));
        assert!(
            ix.answer_without_client(&any(100, 7, "10.0.0.2"), |_, _| None)
                .is_some()
        );
        ix.expire(WINDOW_NS + 10);
        assert!(ix.is_empty() && ix.by_seq.is_empty());
        assert_eq!(
            (ix.stats.answered_without_client, ix.stats.answered_unknown),
            (4, 3)
        );
    }

    #[test]
    fn bounded_and_windowed() {
        let mut ix = ClientIndex::new(3);
        for i in 0..5 {
            ix.insert(&send(i, 0, 0), u64::from(i));
        }
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.stats.evicted_full, 2);
        assert!(ix.answer_plain(&q(&send(0, 0, 0), 0)).is_none());
        assert!(ix.answer_plain(&q(&send(4, 0, 0), 0)).is_some());
        ix.expire(WINDOW_NS + 3);
        assert_eq!(ix.len(), 2);
        ix.expire(WINDOW_NS + 100);
        assert!(ix.is_empty());
    }
}
