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
}

pub struct ClientIndex {
    map: HashMap<WireKey, (u64, Found, u64)>,
    order: VecDeque<(u64, WireKey)>,
    max: usize,
    pub stats: IndexStats,
}

impl ClientIndex {
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::default(),
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
            if self.map.remove(&k).is_some() {
                self.stats.evicted_full += 1;
            }
        }
        let found = Found {
            ctx: send.ctx,
            start_unix_ns: send.start_unix_ns,
            end_unix_ns: send.end_unix_ns,
        };
        self.map.insert(send.key, (send.digest, found, now_ns));
        self.order.push_back((now_ns, send.key));
        self.stats.inserted += 1;
    }

    pub fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(WINDOW_NS);
        while let Some(&(t, k)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|e| e.2 < cutoff) {
                self.map.remove(&k);
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
            Some((digest, found, _)) if *digest == q.digest => {
                let found = *found;
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
