//! Connection tracker: one entry per socket of a traced process, keyed by (TGID, kernel socket
//! address). It remembers the 4-tuple and, per direction, where each captured syscall's bytes
//! sit in the byte stream, so later stages can turn a stream offset back into the time, thread and
//! TCP sequence number of the syscall that moved that byte. Bounded: idle and excess connections
//! are evicted and counted.

use std::{
    collections::{BTreeSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

// Keys are kernel addresses and ids we chose, not attacker-controlled strings: a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;

use ztrace_abi::{AF_INET, SockTuple};

use crate::model::Endpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub tgid: u32,
    pub sock_id: u64,
}

/// One syscall's worth of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Stream offset of the first byte this syscall moved.
    pub start: u64,
    pub len: u64,
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub tid: u32,
    /// TCP sequence number of the first byte, when known.
    pub seq: Option<u32>,
}

/// Where one direction of a connection stands.
#[derive(Debug, Default)]
pub struct Stream {
    pub pos: u64,
    marks: VecDeque<Mark>,
}

/// Enough history to locate the start of any message still being assembled: heads are capped at
/// 16 KiB by the parser, but a message body can span many syscalls, so keep a generous window
/// and fall back to the oldest mark.
const MAX_MARKS: usize = 256;

impl Stream {
    /// Records a syscall that moved `len` bytes and returns its mark.
    pub fn advance(
        &mut self,
        len: u64,
        enter_ns: u64,
        exit_ns: u64,
        tid: u32,
        seq: Option<u32>,
    ) -> Mark {
        let mark = Mark {
            start: self.pos,
            len,
            enter_ns,
            exit_ns,
            tid,
            seq,
        };
        self.pos = self.pos.saturating_add(len);
        if self.marks.len() == MAX_MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back(mark);
        mark
    }

    /// The syscall that moved the byte at `offset`, with the byte's own sequence number.
    pub fn locate(&self, offset: u64) -> Option<(Mark, Option<u32>)> {
        // Marks are contiguous and mostly the newest is wanted: look there before searching.
        let idx = match self.marks.back() {
            Some(last) if offset >= last.start => {
                self.marks.len() - usize::from(offset < last.start + last.len)
            }
            _ => self.marks.partition_point(|m| m.start + m.len <= offset),
        };
        let mark = *self.marks.get(idx).or_else(|| self.marks.front())?;
        let seq = if offset >= mark.start && offset < mark.start + mark.len.max(1) {
            mark.seq
                .map(|s| s.wrapping_add((offset - mark.start) as u32))
        } else {
            None
        };
        Some((mark, seq))
    }
}

/// Addresses of a connection as the traced process sees them.
pub fn endpoints(t: &SockTuple) -> (Endpoint, Endpoint) {
    let addr = |raw: &[u8; 16]| -> IpAddr {
        if t.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        } else {
            let v6 = Ipv6Addr::from(*raw);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
    };
    (
        Endpoint {
            addr: addr(&t.local_addr),
            port: t.local_port,
        },
        Endpoint {
            addr: addr(&t.remote_addr),
            port: t.remote_port,
        },
    )
}

/// A tracked connection; `T` is the protocol state later stages keep with it.
#[derive(Debug)]
pub struct Conn<T> {
    pub local: Endpoint,
    pub peer: Endpoint,
    pub ingress: Stream,
    pub egress: Stream,
    pub last_ns: u64,
    /// The activity time under which the connection sits in [`ConnTable`]'s order: `last_ns`
    /// rounded down to at most [`ORDER_GRANULARITY_NS`] behind.
    ordered_ns: u64,
    pub state: T,
}

/// How far a connection's place in the least-recently-used order may lag its last activity.
/// Moving it on every record was a B-tree removal and insertion per socket call (~250
/// instructions, 4 % of the userspace path); idle expiry (minutes) and eviction of a full table
/// need no finer order than this.
pub const ORDER_GRANULARITY_NS: u64 = 100_000_000;

pub struct ConnTable<T> {
    conns: HashMap<ConnKey, Conn<T>>,
    /// Every connection by (last activity, key), activity to within [`ORDER_GRANULARITY_NS`]:
    /// the least recently used is the first, and the idle ones a prefix, so a full table evicts
    /// and a poll expires without scanning the table (65,536 connections scanned per new one
    /// when full, and per poll, before).
    order: BTreeSet<(u64, ConnKey)>,
    max: usize,
    pub evicted: u64,
}

/// A connection a full table gave up to make room, with its key (see [`ConnTable::entry`]).
pub type Evicted<T> = Option<Box<(ConnKey, Conn<T>)>>;

impl<T: Default> ConnTable<T> {
    pub fn new(max: usize) -> Self {
        Self {
            conns: HashMap::default(),
            order: BTreeSet::new(),
            max,
            evicted: 0,
        }
    }

    /// The connection for `key`, created on first sight. Returns the evicted connection's state
    /// when the table was full, so its owner can finish what it held. Boxed: eviction is rare,
    /// and an `Option` of a whole connection returned by value was copied out on every record
    /// (~2 % of replay, in `memmove`), `None` or not.
    pub fn entry(
        &mut self,
        key: ConnKey,
        tuple: &SockTuple,
        now_ns: u64,
    ) -> (&mut Conn<T>, Evicted<T>) {
        let mut evicted = None;
        // One probe of the table per record: whether the key is new is asked apart only when
        // the table is full.
        if self.conns.len() >= self.max
            && !self.conns.contains_key(&key)
            && let Some((_, oldest)) = self.order.pop_first()
        {
            evicted = self.conns.remove(&oldest).map(|c| Box::new((oldest, c)));
            self.evicted += 1;
        }
        let mut known = true;
        let conn = self.conns.entry(key).or_insert_with(|| {
            known = false;
            let (local, peer) = endpoints(tuple);
            Conn {
                local,
                peer,
                ingress: Stream::default(),
                egress: Stream::default(),
                last_ns: now_ns,
                ordered_ns: now_ns,
                state: T::default(),
            }
        });
        // A connection first seen at connect time may not have its local port yet (TCP
        // picks it after SYN_SENT): complete the endpoints from the first tuple that has it.
        if conn.local.port == 0 || conn.peer.port == 0 {
            let (local, peer) = endpoints(tuple);
            (conn.local, conn.peer) = (local, peer);
        }
        conn.last_ns = now_ns;
        if !known {
            self.order.insert((now_ns, key));
        } else if now_ns >= conn.ordered_ns.saturating_add(ORDER_GRANULARITY_NS) {
            self.order.remove(&(conn.ordered_ns, key));
            conn.ordered_ns = now_ns;
            self.order.insert((now_ns, key));
        }
        (conn, evicted)
    }

    pub fn get(&self, key: &ConnKey) -> Option<&Conn<T>> {
        self.conns.get(key)
    }

    pub fn remove(&mut self, key: &ConnKey) -> Option<Conn<T>> {
        let conn = self.conns.remove(key)?;
        self.order.remove(&(conn.ordered_ns, *key));
        Some(conn)
    }

    /// Connections of `tgid` (for process exit).
    pub fn keys_of(&self, tgid: u32) -> Vec<ConnKey> {
        self.conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect()
    }

    /// Connections idle since before `cutoff_ns`, least recently used first; costs what it
    /// returns (nothing allocated when none is idle). A connection the order holds as idle but
    /// that was active since (within the order's granularity) moves to its true place instead.
    pub fn idle(&mut self, cutoff_ns: u64) -> Vec<ConnKey> {
        let first_kept = (
            cutoff_ns,
            ConnKey {
                tgid: 0,
                sock_id: 0,
            },
        );
        let mut idle = Vec::new();
        while let Some(&(at, key)) = self.order.range(..first_kept).next() {
            self.order.remove(&(at, key));
            match self.conns.get_mut(&key) {
                Some(c) if c.last_ns >= cutoff_ns => {
                    c.ordered_ns = c.last_ns;
                    self.order.insert((c.last_ns, key));
                }
                _ => idle.push((at, key)),
            }
        }
        // Still in the order until removed (the caller closes them).
        for &(at, key) in &idle {
            self.order.insert((at, key));
        }
        idle.into_iter().map(|(_, k)| k).collect()
    }

    pub fn all_keys(&self) -> Vec<ConnKey> {
        self.conns.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_maps_offsets_to_syscalls_and_sequence_numbers() {
        let mut s = Stream::default();
        s.advance(10, 1, 2, 100, Some(1000));
        s.advance(5, 3, 4, 101, Some(1010));
        s.advance(7, 5, 6, 102, None);
        let (m, seq) = s.locate(0).unwrap();
        assert_eq!((m.tid, seq), (100, Some(1000)));
        let (m, seq) = s.locate(12).unwrap();
        assert_eq!((m.tid, seq), (101, Some(1012)));
        let (m, seq) = s.locate(16).unwrap();
        assert_eq!((m.tid, seq), (102, None));
        // Sequence numbers wrap like TCP's.
        let mut w = Stream::default();
        w.advance(10, 0, 0, 1, Some(u32::MAX - 1));
        assert_eq!(w.locate(3).unwrap().1, Some(1));
    }

    #[test]
    fn locate_finds_the_same_mark_as_a_search() {
        let mut s = Stream::default();
        for (i, len) in [3u64, 0, 1, 7, 0, 2, 5]
            .into_iter()
            .cycle()
            .take(300)
            .enumerate()
        {
            s.advance(len, 0, 0, i as u32, None);
        }
        for offset in 0..s.pos + 3 {
            let idx = s.marks.partition_point(|m| m.start + m.len <= offset);
            let want = s.marks.get(idx).or_else(|| s.marks.front()).map(|m| m.tid);
            assert_eq!(
                s.locate(offset).map(|(m, _)| m.tid),
                want,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn table_is_bounded() {
        let mut t: ConnTable<u8> = ConnTable::new(2);
        let tuple = SockTuple {
            family: AF_INET,
            ..Default::default()
        };
        for i in 0..3u64 {
            let (_, ev) = t.entry(
                ConnKey {
                    tgid: 1,
                    sock_id: i,
                },
                &tuple,
                i,
            );
            assert_eq!(ev.is_some(), i == 2);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.evicted, 1);
    }

    fn key(i: u64) -> ConnKey {
        ConnKey {
            tgid: 1 + (i % 7) as u32,
            sock_id: i,
        }
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_and_idle_is_a_prefix() {
        let tuple = SockTuple {
            family: AF_INET,
            ..Default::default()
        };
        let mut t: ConnTable<u8> = ConnTable::new(3);
        // Times in steps of the order's granularity, so every use moves a connection.
        const G: u64 = ORDER_GRANULARITY_NS;
        t.entry(key(1), &tuple, 10 * G);
        t.entry(key(2), &tuple, 20 * G);
        t.entry(key(3), &tuple, 30 * G);
        t.entry(key(1), &tuple, 40 * G); // 1 is used again: 2 is now the least recently used
        let (_, ev) = t.entry(key(4), &tuple, 50 * G);
        assert_eq!(ev.map(|e| e.0), Some(key(2)));
        assert_eq!(t.idle(41 * G), vec![key(3), key(1)]);
        assert_eq!(t.idle(30 * G), Vec::<ConnKey>::new());
        assert!(t.remove(&key(3)).is_some());
        assert_eq!(t.idle(100 * G), vec![key(1), key(4)]);
        assert_eq!((t.order.len(), t.len()), (2, 2));
    }

    /// Activity within the granularity leaves the order alone, but never makes a busy
    /// connection look idle.
    #[test]
    fn the_order_lags_by_at_most_its_granularity_and_idle_checks_the_truth() {
        let tuple = SockTuple {
            family: AF_INET,
            ..Default::default()
        };
        const G: u64 = ORDER_GRANULARITY_NS;
        let mut t: ConnTable<u8> = ConnTable::new(8);
        t.entry(key(1), &tuple, G);
        t.entry(key(2), &tuple, G + 1);
        t.entry(key(1), &tuple, G + G / 2); // within the granularity: not moved
        assert_eq!(t.order.first(), Some(&(G, key(1))));
        assert_eq!(t.get(&key(1)).map(|c| c.last_ns), Some(G + G / 2));
        // key(1) sits before the cutoff in the order but was active after it.
        assert_eq!(t.idle(G + 2), vec![key(2)]);
        assert_eq!(t.order.first(), Some(&(G + 1, key(2))));
        assert_eq!(t.idle(2 * G), vec![key(2), key(1)]);
        t.entry(key(1), &tuple, 3 * G); // a granularity later: moved
        assert_eq!(t.order.last(), Some(&(3 * G, key(1))));
        assert!(t.remove(&key(1)).is_some() && t.remove(&key(2)).is_some());
        assert!(t.order.is_empty());
    }

    /// The eviction of a full table and the idle scan cost what they return, not the table
    /// size: churning 200,000 connections through a full 65,536-entry table, with an idle poll
    /// after each, took minutes when both scanned the table; here it is well under a second in
    /// a release build (the bound is loose for a loaded 2-core machine).
    #[test]
    fn churn_through_a_full_table_does_not_scan_it() {
        let tuple = SockTuple {
            family: AF_INET,
            ..Default::default()
        };
        const MAX: usize = 65_536;
        let mut t: ConnTable<u8> = ConnTable::new(MAX);
        for i in 0..MAX as u64 {
            t.entry(key(i), &tuple, i);
        }
        let start = std::time::Instant::now();
        let mut evicted = 0;
        for i in MAX as u64..MAX as u64 + 200_000 {
            let (_, ev) = t.entry(key(i), &tuple, i);
            evicted += usize::from(ev.is_some());
            assert!(t.idle(0).is_empty());
        }
        let took = start.elapsed();
        assert_eq!((evicted, t.len(), t.order.len()), (200_000, MAX, MAX));
        let budget = if cfg!(debug_assertions) { 20 } else { 3 };
        assert!(
            took < std::time::Duration::from_secs(budget),
            "200,000 new connections into a full table took {took:?}"
        );
    }
}
