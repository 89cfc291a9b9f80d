//! The agent-to-agent wire format: length-prefixed binary frames, each authenticated with
//! HMAC-SHA256 under the shared secret.
//!
//! ```text
//! frame   = len:u32 (bytes after it) · body · tag:[u8; 32] (HMAC-SHA256 of len · body)
//! body    = magic "ZTP2" · kind:u8 (1 query, 2 reply, 3 vote) · id:u64 · unix_ms:u64
//!           · nonce:u64 · count:u16 · item*count
//! query   = family:u8 (4|6) · addr:[u8; 16] · port:u16 · seq:u32 · digest:u64
//!           · server_family:u8 · server_addr:[u8; 16] · server_port:u16               (50 bytes)
//! reply   = found:u8 · trace:[u8; 16] · span:[u8; 8] · sampled:u8 (0 no, 1 yes, 2 unset)
//!           · start_unix_ns:u64 · end_unix_ns:u64                                  (42 bytes)
//! vote    = trace:[u8; 16] · keep:u8 (0 drop, 1 keep) · has_th:u8 · th:u64           (26 bytes)
//! ```
//! A query names the client endpoint and the server endpoint as the asking (server) agent saw
//! them; the server endpoint lets the answering agent undo its own host's NAT (`super::nat`).
//! Integers are big-endian. An authenticated frame of another version (ZTP1 had no server
//! endpoint) is refused as such, and both agents say so: the agents of a deployment run the same
//! version. A reply carries its query's `id` and answers its items in order.
//! A vote frame (an agent's tail-sampling verdicts, see `processors::tail::vote`) is sent on the
//! connection the sender asks on and gets no reply.
//! A receiver refuses a frame whose tag does not verify (forged, or another secret), whose
//! timestamp is more than [`MAX_AGE_MS`] from its own clock (stale), whose nonce it saw within
//! that window (replayed), or whose `kind` is not the one it expects (a reply reflected as a
//! query). A reply whose `id` is not the query's is refused too.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ring::hmac;

use crate::link::crosshost::{PeerContext, WireKey};
use crate::model::{Endpoint, SpanId, TraceId, TraceVote};

const MAGIC: &[u8; 4] = b"ZTP2";
pub const KIND_QUERY: u8 = 1;
pub const KIND_REPLY: u8 = 2;
pub const KIND_VOTE: u8 = 3;
const HEADER: usize = 4 + 1 + 8 + 8 + 8 + 2;
const TAG: usize = 32;
const QUERY_ITEM: usize = 50;
const REPLY_ITEM: usize = 42;
const VOTE_ITEM: usize = 26;
/// Most items in one frame (a batch of lookups to one peer).
pub const MAX_ITEMS: usize = 1024;
/// Largest frame accepted.
pub const MAX_FRAME: usize = HEADER + MAX_ITEMS * REPLY_ITEM + TAG;
/// Frames older or newer than this (by the sender's clock) are refused: the clocks of two
/// agents must agree within it.
pub const MAX_AGE_MS: u64 = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub key: WireKey,
    pub digest: u64,
    /// The server endpoint as the asker saw it.
    pub server: Endpoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub ctx: PeerContext,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Query(Vec<Query>),
    Reply(Vec<Option<Found>>),
    Vote(Vec<TraceVote>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub id: u64,
    pub unix_ms: u64,
    pub nonce: u64,
    pub body: Body,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed frame")]
    Malformed,
    #[error("authentication failed")]
    Forged,
    #[error("stale timestamp")]
    Stale,
    #[error("replayed nonce")]
    Replayed,
    #[error("unexpected frame kind")]
    WrongKind,
    /// Authenticated (the same secret) but another version of this protocol.
    #[error(
        "the peer speaks protocol {}, this agent {}: run the same ztrace version on every agent",
        String::from_utf8_lossy(.0),
        String::from_utf8_lossy(MAGIC)
    )]
    Version([u8; 4]),
}

impl Refused {
    /// What an operator can do about a refusal, when it is theirs to mend (another secret,
    /// clocks apart, another version); None for what a broken or hostile peer sends.
    pub fn hint(&self) -> Option<String> {
        match self {
            Refused::Forged => Some("; is the peer secret the same on both agents?".into()),
            Refused::Stale => Some(format!(
                "; are the two hosts' clocks within {} s of each other?",
                MAX_AGE_MS / 1000
            )),
            // The message says it all.
            Refused::Version(_) => Some(String::new()),
            Refused::Malformed | Refused::Replayed | Refused::WrongKind => None,
        }
    }
}

pub struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Self {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

/// The whole frame, length prefix and tag included.
pub fn encode(key: &Key, frame: &Frame) -> Vec<u8> {
    let (kind, count) = match &frame.body {
        Body::Query(q) => (KIND_QUERY, q.len()),
        Body::Reply(r) => (KIND_REPLY, r.len()),
        Body::Vote(v) => (KIND_VOTE, v.len()),
    };
    let mut out = Vec::with_capacity(4 + HEADER + count * REPLY_ITEM + TAG);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&frame.id.to_be_bytes());
    out.extend_from_slice(&frame.unix_ms.to_be_bytes());
    out.extend_from_slice(&frame.nonce.to_be_bytes());
    out.extend_from_slice(&(count.min(MAX_ITEMS) as u16).to_be_bytes());
    match &frame.body {
        Body::Query(items) => {
            for q in items.iter().take(MAX_ITEMS) {
                push_addr(&mut out, q.key.client.addr);
                out.extend_from_slice(&q.key.client.port.to_be_bytes());
                out.extend_from_slice(&q.key.seq.to_be_bytes());
                out.extend_from_slice(&q.digest.to_be_bytes());
                push_addr(&mut out, q.server.addr);
                out.extend_from_slice(&q.server.port.to_be_bytes());
            }
        }
        Body::Reply(items) => {
            for r in items.iter().take(MAX_ITEMS) {
                match r {
                    None => out.extend_from_slice(&[0; REPLY_ITEM]),
                    Some(f) => {
                        out.push(1);
                        out.extend_from_slice(&f.ctx.trace_id.0);
                        out.extend_from_slice(&f.ctx.span_id.0);
                        out.push(match f.ctx.sampled {
                            Some(false) => 0,
                            Some(true) => 1,
                            None => 2,
                        });
                        out.extend_from_slice(&f.start_unix_ns.to_be_bytes());
                        out.extend_from_slice(&f.end_unix_ns.to_be_bytes());
                    }
                }
            }
        }
        Body::Vote(items) => {
            for v in items.iter().take(MAX_ITEMS) {
                out.extend_from_slice(&v.trace_id.0);
                out.push(u8::from(v.keep));
                out.push(u8::from(v.th.is_some()));
                out.extend_from_slice(&v.th.unwrap_or(0).to_be_bytes());
            }
        }
    }
    let len = (out.len() - 4 + TAG) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// family:u8 (4|6) · addr:[u8; 16] (an IPv4 address in the first four bytes).
fn push_addr(out: &mut Vec<u8>, ip: IpAddr) {
    let (family, addr) = match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (4u8, b)
        }
        IpAddr::V6(a) => (6u8, a.octets()),
    };
    out.push(family);
    out.extend_from_slice(&addr);
}

/// The address [`push_addr`] wrote at the start of `it` (17 bytes).
fn read_addr(it: &[u8]) -> Result<IpAddr, Refused> {
    match it[0] {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(it[1], it[2], it[3], it[4]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&it[1..17]).expect("16 bytes"),
        ))),
        _ => Err(Refused::Malformed),
    }
}

/// Reads the body length from a frame's first four bytes.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, Refused> {
    let n = u32::from_be_bytes(prefix) as usize;
    if !(HEADER + TAG..=MAX_FRAME).contains(&n) {
        return Err(Refused::Malformed);
    }
    Ok(n)
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Verifies and decodes a frame of one of the `kinds`: `prefix` is its length prefix, `rest`
/// what followed. Replay and staleness are checked by [`Replay`], after this.
pub fn decode(key: &Key, prefix: [u8; 4], rest: &[u8], kinds: &[u8]) -> Result<Frame, Refused> {
    if rest.len() != frame_len(prefix)? {
        return Err(Refused::Malformed);
    }
    let (body, tag) = rest.split_at(rest.len() - TAG);
    let mut signed = Vec::with_capacity(4 + body.len());
    signed.extend_from_slice(&prefix);
    signed.extend_from_slice(body);
    hmac::verify(&key.0, &signed, tag).map_err(|_| Refused::Forged)?;
    if &body[..4] != MAGIC {
        return Err(if body.starts_with(b"ZTP") {
            Refused::Version(body[..4].try_into().expect("4 bytes"))
        } else {
            Refused::Malformed
        });
    }
    let kind = body[4];
    if !kinds.contains(&kind) {
        return Err(Refused::WrongKind);
    }
    let id = be64(&body[5..]);
    let unix_ms = be64(&body[13..]);
    let nonce = be64(&body[21..]);
    let count = u16::from_be_bytes([body[29], body[30]]) as usize;
    let items = &body[HEADER..];
    let size = match kind {
        KIND_QUERY => QUERY_ITEM,
        KIND_REPLY => REPLY_ITEM,
        KIND_VOTE => VOTE_ITEM,
        _ => return Err(Refused::WrongKind),
    };
    if count > MAX_ITEMS || items.len() != count * size {
        return Err(Refused::Malformed);
    }
    let body = if kind == KIND_VOTE {
        let mut out = Vec::with_capacity(count);
        for it in items.chunks_exact(VOTE_ITEM) {
            let (keep, has_th, th) = (it[16], it[17], be64(&it[18..]));
            // A threshold is at most 2^56 (nothing kept); a drop carries none.
            if keep > 1 || has_th > 1 || (keep == 0 && has_th == 1) || th > 1 << 56 {
                return Err(Refused::Malformed);
            }
            out.push(TraceVote {
                trace_id: TraceId(it[..16].try_into().expect("16 bytes")),
                keep: keep == 1,
                th: (has_th == 1).then_some(th),
            });
        }
        Body::Vote(out)
    } else if kind == KIND_QUERY {
        let mut out = Vec::with_capacity(count);
        for it in items.chunks_exact(QUERY_ITEM) {
            let addr = read_addr(it)?;
            out.push(Query {
                key: WireKey {
                    client: Endpoint {
                        addr,
                        port: u16::from_be_bytes([it[17], it[18]]),
                    },
                    seq: u32::from_be_bytes(it[19..23].try_into().expect("4 bytes")),
                },
                digest: be64(&it[23..]),
                server: Endpoint {
                    addr: read_addr(&it[31..])?,
                    port: u16::from_be_bytes([it[48], it[49]]),
                },
            });
        }
        Body::Query(out)
    } else {
        let mut out = Vec::with_capacity(count);
        for it in items.chunks_exact(REPLY_ITEM) {
            out.push(match it[0] {
                0 => None,
                1 => Some(Found {
                    ctx: PeerContext {
                        trace_id: TraceId(it[1..17].try_into().expect("16 bytes")),
                        span_id: SpanId(it[17..25].try_into().expect("8 bytes")),
                        sampled: match it[25] {
                            0 => Some(false),
                            1 => Some(true),
                            _ => None,
                        },
                    },
                    start_unix_ns: be64(&it[26..]),
                    end_unix_ns: be64(&it[34..]),
                }),
                _ => return Err(Refused::Malformed),
            });
        }
        Body::Reply(out)
    };
    Ok(Frame {
        id,
        unix_ms,
        nonce,
        body,
    })
}

/// Nonces seen within [`MAX_AGE_MS`]: a frame seen before, or too old to tell, is refused.
/// Bounded: when `max` nonces are remembered, frames are refused until old ones expire
/// (fail closed: a flood of valid frames cannot make room for a replay).
pub struct Replay {
    seen: HashSet<u64>,
    order: VecDeque<(u64, u64)>,
    max: usize,
}

impl Replay {
    pub fn new(max: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            max,
        }
    }

    pub fn check(&mut self, frame: &Frame, now_ms: u64) -> Result<(), Refused> {
        if frame.unix_ms.abs_diff(now_ms) > MAX_AGE_MS {
            return Err(Refused::Stale);
        }
        while let Some(&(t, n)) = self.order.front() {
            if t.saturating_add(2 * MAX_AGE_MS) >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        if self.seen.contains(&frame.nonce) || self.seen.len() >= self.max {
            return Err(Refused::Replayed);
        }
        self.seen.insert(frame.nonce);
        self.order.push_back((now_ms, frame.nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> Frame {
        Frame {
            id: 42,
            unix_ms: 1_000_000,
            nonce: 7,
            body: Body::Query(vec![
                Query {
                    key: WireKey {
                        client: Endpoint {
                            addr: "10.0.0.1".parse().unwrap(),
                            port: 40000,
                        },
                        seq: 0xdead_beef,
                    },
                    digest: 99,
                    server: Endpoint {
                        addr: "10.0.0.2".parse().unwrap(),
                        port: 8080,
                    },
                },
                Query {
                    key: WireKey {
                        client: Endpoint {
                            addr: "fd00::1".parse().unwrap(),
                            port: 1,
                        },
                        seq: 1,
                    },
                    digest: 1,
                    server: Endpoint {
                        addr: "fd00::2".parse().unwrap(),
                        port: 443,
                    },
                },
            ]),
        }
    }

    fn split(bytes: &[u8]) -> ([u8; 4], &[u8]) {
        (bytes[..4].try_into().unwrap(), &bytes[4..])
    }

    #[test]
    fn round_trip() {
        let key = Key::new(b"secret");
        let q = query();
        let bytes = encode(&key, &q);
        let (p, rest) = split(&bytes);
        assert_eq!(decode(&key, p, rest, &[KIND_QUERY]).unwrap(), q);
        let r = Frame {
            id: 42,
            unix_ms: 5,
            nonce: 8,
            body: Body::Reply(vec![
                None,
                Some(Found {
                    ctx: PeerContext {
                        trace_id: TraceId([3; 16]),
                        span_id: SpanId([4; 8]),
                        sampled: None,
                    },
                    start_unix_ns: 10,
                    end_unix_ns: 20,
                }),
            ]),
        };
        let bytes = encode(&key, &r);
        let (p, rest) = split(&bytes);
        assert_eq!(decode(&key, p, rest, &[KIND_REPLY]).unwrap(), r);
    }

    #[test]
    fn votes_round_trip_and_bad_ones_are_refused() {
        let key = Key::new(b"secret");
        let v = Frame {
            id: 0,
            unix_ms: 5,
            nonce: 9,
            body: Body::Vote(vec![
                TraceVote {
                    trace_id: TraceId([1; 16]),
                    keep: true,
                    th: Some(0),
                },
                TraceVote {
                    trace_id: TraceId([2; 16]),
                    keep: true,
                    th: None,
                },
                TraceVote {
                    trace_id: TraceId([3; 16]),
                    keep: false,
                    th: None,
                },
            ]),
        };
        let bytes = encode(&key, &v);
        let (p, rest) = split(&bytes);
        assert_eq!(decode(&key, p, rest, &[KIND_QUERY, KIND_VOTE]).unwrap(), v);
        // A vote where only queries are expected (an asker reading a reply).
        assert_eq!(
            decode(&key, p, rest, &[KIND_REPLY]),
            Err(Refused::WrongKind)
        );
        // Correctly signed but impossible items: a drop with a threshold, a threshold above 2^56,
        // a keep flag of 2.
        for bad in [
            TraceVote {
                trace_id: TraceId([4; 16]),
                keep: false,
                th: Some(5),
            },
            TraceVote {
                trace_id: TraceId([4; 16]),
                keep: true,
                th: Some((1 << 56) + 1),
            },
        ] {
            let bytes = encode(
                &key,
                &Frame {
                    body: Body::Vote(vec![bad]),
                    ..v.clone()
                },
            );
            let (p, rest) = split(&bytes);
            assert_eq!(decode(&key, p, rest, &[KIND_VOTE]), Err(Refused::Malformed));
        }
        let mut bytes = encode(&key, &v);
        bytes[4 + super::HEADER + 16] = 2;
        let body_end = bytes.len() - TAG;
        let tag = hmac::sign(&key.0, &bytes[..body_end]);
        bytes[body_end..].copy_from_slice(tag.as_ref());
        let (p, rest) = split(&bytes);
        assert_eq!(decode(&key, p, rest, &[KIND_VOTE]), Err(Refused::Malformed));
    }

    #[test]
    fn forged_and_reflected_refused() {
        let key = Key::new(b"secret");
        let bytes = encode(&key, &query());
        let (p, rest) = split(&bytes);
        // Another secret.
        assert_eq!(
            decode(&Key::new(b"guess"), p, rest, &[KIND_QUERY]),
            Err(Refused::Forged)
        );
        // One bit changed anywhere.
        for i in 0..rest.len() {
            let mut m = rest.to_vec();
            m[i] ^= 1;
            assert_eq!(decode(&key, p, &m, &[KIND_QUERY]), Err(Refused::Forged));
        }
        // A query sent back as a reply.
        assert_eq!(
            decode(&key, p, rest, &[KIND_REPLY]),
            Err(Refused::WrongKind)
        );
        // Truncated.
        assert_eq!(
            decode(&key, p, &rest[..rest.len() - 1], &[KIND_QUERY]),
            Err(Refused::Malformed)
        );
        assert_eq!(frame_len([0xff; 4]), Err(Refused::Malformed));
    }

    #[test]
    fn another_version_is_named() {
        let key = Key::new(b"secret");
        for (magic, want) in [
            (*b"ZTP1", Err(Refused::Version(*b"ZTP1"))),
            (*b"ZTP3", Err(Refused::Version(*b"ZTP3"))),
            (*b"HTTP", Err(Refused::Malformed)),
        ] {
            let mut bytes = encode(&key, &query());
            bytes[4..8].copy_from_slice(&magic);
            let body_end = bytes.len() - TAG;
            let tag = hmac::sign(&key.0, &bytes[..body_end]);
            bytes[body_end..].copy_from_slice(tag.as_ref());
            let (p, rest) = split(&bytes);
            assert_eq!(decode(&key, p, rest, &[KIND_QUERY]).map(|_| ()), want);
        }
        let msg = Refused::Version(*b"ZTP1").to_string();
        assert!(msg.contains("ZTP1") && msg.contains("ZTP2"), "{msg}");
    }

    #[test]
    fn replayed_and_stale_refused() {
        let mut r = Replay::new(2);
        let f = query();
        assert_eq!(r.check(&f, f.unix_ms + 10), Ok(()));
        assert_eq!(r.check(&f, f.unix_ms + 20), Err(Refused::Replayed));
        assert_eq!(r.check(&f, f.unix_ms + MAX_AGE_MS + 1), Err(Refused::Stale));
        let mut g = f.clone();
        g.nonce = 8;
        assert_eq!(r.check(&g, f.unix_ms), Ok(()));
        // Full: refused until old nonces expire.
        g.nonce = 9;
        assert_eq!(r.check(&g, f.unix_ms), Err(Refused::Replayed));
        g.unix_ms += 3 * MAX_AGE_MS;
        assert_eq!(r.check(&g, g.unix_ms), Ok(()));
    }
}
