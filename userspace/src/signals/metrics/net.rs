//! Network metrics of traced processes, from the events capture already produces: bytes moved by
//! socket syscalls (their return values), connections accepted (accept) and opened or failed
//! (`sock:inet_sock_set_state`), and retransmits (`tcp:tcp_retransmit_skb`).
//!
//! Names: bytes use the conventions' `process.network.io` (a process-level counter with
//! `network.io.direction`), with the peer address and transport added so the traffic can be told
//! apart per peer. The conventions have no per-process connection or retransmit counters
//! (`system.network.*` are host/interface level), so those are ztrace's own, prefixed `ztrace.`.
//! Peer *ports* are never attributes (a server's clients use ephemeral ones); the server's port is.

use std::net::IpAddr;

use opentelemetry_semantic_conventions::{attribute as sc, metric as m};
use rustc_hash::FxHashMap as HashMap;
use ztrace_abi::{ConnEvent, DataEvent, NetEvent, conn, direction, net, syscall};

use super::series::{AttrSet, Descriptor, Instrument, Shape};
use crate::conntrack::endpoints;

/// Which end of a connection the traced process is (`client` connected, `server` accepted).
pub const CONNECTION_SIDE: &str = "ztrace.connection.side";

pub const INSTRUMENTS: [Descriptor; 4] = [
    sum(
        m::PROCESS_NETWORK_IO,
        "By",
        "Bytes the process moved through sockets, per peer.",
    ),
    sum(
        "ztrace.tcp.connections.opened",
        "{connection}",
        "TCP connections the process opened (client) or accepted (server).",
    ),
    sum(
        "ztrace.tcp.connections.failed",
        "{connection}",
        "Outgoing TCP connection attempts that failed (refused, reset, timed out).",
    ),
    sum(
        "ztrace.tcp.retransmits",
        "{segment}",
        "TCP segments the kernel retransmitted on the process's connections.",
    ),
];

pub const IO: usize = 0;
pub const OPENED: usize = 1;
pub const FAILED: usize = 2;
pub const RETRANSMITS: usize = 3;

const fn sum(name: &'static str, unit: &'static str, description: &'static str) -> Descriptor {
    Descriptor {
        name,
        unit,
        description,
        shape: Shape::Sum,
    }
}

fn transport(protocol: u16) -> &'static str {
    match protocol {
        17 => "udp",
        _ => "tcp",
    }
}

/// Bytes per (process, direction, peer, transport), summed between collections with a key that
/// needs no allocation: the data path sees every socket syscall, so building attribute sets there
/// would cost more than the counting itself.
///
/// In front of the table, one running sum per direction: a traced server's reads and writes
/// mostly come from one peer in a row (a proxy's upstream, loopback), so most syscalls add to it
/// without hashing; a different key moves it to the table.
#[derive(Default)]
pub struct IoBytes {
    pending: HashMap<IoKey, u64>,
    /// The last key of each direction (ingress, egress) and its bytes not yet in `pending`.
    last: [Option<(IoKey, u64)>; 2],
}

type IoKey = (u32, bool, IpAddr, u16);

/// Distinct keys summed between two collections before bytes go straight to the instrument.
const MAX_PENDING: usize = 4096;

impl IoBytes {
    /// Bytes of one socket syscall. TLS plaintext (uprobes) is not counted: its ciphertext was.
    pub fn on_data(&mut self, inst: &mut [Instrument], ev: &DataEvent) {
        if ev.syscall == syscall::SSL_READ || ev.syscall == syscall::SSL_WRITE {
            return;
        }
        let (_, peer) = endpoints(&ev.tuple);
        let key = (
            ev.header.tgid,
            ev.direction == direction::EGRESS,
            peer.addr,
            ev.tuple.protocol,
        );
        let slot = &mut self.last[usize::from(key.1)];
        match slot {
            Some((k, n)) if *k == key => *n += ev.bytes,
            _ => {
                if let Some((k, n)) = slot.replace((key, ev.bytes)) {
                    self.fold(inst, k, n);
                }
            }
        }
    }

    /// Adds `n` bytes of `key` to the table (or, when it is full, to the instrument).
    fn fold(&mut self, inst: &mut [Instrument], key: IoKey, n: u64) {
        let room = self.pending.len() < MAX_PENDING;
        match self.pending.get_mut(&key) {
            Some(sum) => *sum += n,
            None if room => {
                self.pending.insert(key, n);
            }
            None => add_io(inst, key, n),
        }
    }

    /// Moves the sums into the instrument (before a collection).
    pub fn flush(&mut self, inst: &mut [Instrument]) {
        for (key, n) in self.last.iter_mut().filter_map(Option::take) {
            add_io(inst, key, n);
        }
        for (key, n) in self.pending.drain() {
            add_io(inst, key, n);
        }
    }
}

fn add_io(inst: &mut [Instrument], (pid, egress, peer, protocol): IoKey, n: u64) {
    let dir = if egress { "transmit" } else { "receive" };
    let attrs: AttrSet = vec![
        (sc::NETWORK_IO_DIRECTION, dir.into()),
        (sc::NETWORK_PEER_ADDRESS, peer.to_string().into()),
        (sc::NETWORK_TRANSPORT, transport(protocol).into()),
    ];
    inst[IO].add(pid, attrs, n);
}

/// Accepted connections (the server side of "opened").
pub fn on_conn(inst: &mut [Instrument], ev: &ConnEvent) {
    if ev.op != conn::ACCEPT || ev.tuple.protocol == 17 {
        return;
    }
    let (local, peer) = endpoints(&ev.tuple);
    inst[OPENED].add(
        ev.header.tgid,
        vec![
            (
                sc::NETWORK_PEER_ADDRESS,
                crate::semconv::attributes::addr_text(peer.addr).into(),
            ),
            (sc::SERVER_PORT, i64::from(local.port).into()),
            (CONNECTION_SIDE, "server".into()),
        ],
        1,
    );
}

/// Outgoing connection outcomes and retransmits.
pub fn on_net(inst: &mut [Instrument], ev: &NetEvent) {
    let (_, peer) = endpoints(&ev.tuple);
    let peer_addr = (
        sc::NETWORK_PEER_ADDRESS,
        crate::semconv::attributes::addr_text(peer.addr).into(),
    );
    let server_port = (sc::SERVER_PORT, i64::from(peer.port).into());
    let pid = ev.header.tgid;
    match ev.op {
        net::CONNECTED => inst[OPENED].add(
            pid,
            vec![peer_addr, server_port, (CONNECTION_SIDE, "client".into())],
            1,
        ),
        net::CONNECT_FAILED => inst[FAILED].add(pid, vec![peer_addr, server_port], 1),
        net::RETRANSMIT => inst[RETRANSMITS].add(pid, vec![peer_addr], 1),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use ztrace_abi::{AF_INET, EventHeader, SockTuple};

    use super::*;
    use crate::signals::metrics::series::{Point, Val};

    fn data(pid: u32, peer: u8, egress: bool, bytes: u64, syscall: u8) -> DataEvent {
        let mut tuple = SockTuple {
            family: AF_INET,
            protocol: 6,
            local_port: 80,
            remote_port: 40000 + u16::from(peer),
            ..Default::default()
        };
        tuple.remote_addr[..4].copy_from_slice(&[10, 0, 0, peer]);
        DataEvent {
            header: EventHeader {
                tgid: pid,
                ..Default::default()
            },
            bytes,
            tuple,
            syscall,
            direction: if egress {
                direction::EGRESS
            } else {
                direction::INGRESS
            },
            ..Default::default()
        }
    }

    fn instruments() -> Vec<Instrument> {
        INSTRUMENTS
            .iter()
            .map(|d| Instrument::new(*d, 100))
            .collect()
    }

    #[test]
    fn bytes_are_summed_per_process_direction_and_peer_address() {
        let mut inst = instruments();
        let mut io = IoBytes::default();
        io.on_data(&mut inst, &data(1, 2, false, 100, syscall::READ));
        io.on_data(&mut inst, &data(1, 2, false, 50, syscall::RECVFROM));
        io.on_data(&mut inst, &data(1, 2, true, 7, syscall::WRITE));
        io.on_data(&mut inst, &data(1, 3, true, 9, syscall::WRITE));
        // TLS plaintext is the same traffic again.
        io.on_data(&mut inst, &data(1, 2, false, 999, syscall::SSL_READ));
        io.flush(&mut inst);
        let out = inst[IO].collect(false);
        let get = |dir: &str, peer: &str| {
            out.iter()
                .find(|(_, a, _)| {
                    a.contains(&(sc::NETWORK_IO_DIRECTION, Val::from(dir)))
                        && a.contains(&(sc::NETWORK_PEER_ADDRESS, Val::from(peer)))
                })
                .map(|(_, _, p)| p.clone())
        };
        assert_eq!(get("receive", "10.0.0.2"), Some(Point::Sum(150)));
        assert_eq!(get("transmit", "10.0.0.2"), Some(Point::Sum(7)));
        assert_eq!(get("transmit", "10.0.0.3"), Some(Point::Sum(9)));
        assert_eq!(out.len(), 3);
    }

    /// The running sum per direction in front of the table: keys interleaved at random, over
    /// two collections, sum exactly as a plain map of every syscall does.
    #[test]
    fn interleaved_keys_sum_as_a_plain_map_does() {
        let mut inst = instruments();
        let mut io = IoBytes::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2 {
            let mut want: std::collections::BTreeMap<(u32, bool, u8), u64> = Default::default();
            for _ in 0..5_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Long runs of one key, as a server's syscalls come, and switches.
                let (pid, peer, egress) = ((x % 3) as u32, ((x >> 8) % 4) as u8, x & 1 << 20 != 0);
                let (pid, peer) = if x % 5 < 3 { (1, 2) } else { (pid, peer) };
                let bytes = (x >> 32) % 1000;
                io.on_data(&mut inst, &data(pid, peer, egress, bytes, syscall::WRITE));
                *want.entry((pid, egress, peer)).or_default() += bytes;
            }
            io.flush(&mut inst);
            let mut got: std::collections::BTreeMap<(u32, bool, u8), u64> = Default::default();
            for (pid, attrs, point) in inst[IO].collect(true) {
                let egress = attrs.contains(&(sc::NETWORK_IO_DIRECTION, Val::from("transmit")));
                let peer = (0..4u8)
                    .find(|p| {
                        attrs
                            .contains(&(sc::NETWORK_PEER_ADDRESS, Val::from(format!("10.0.0.{p}"))))
                    })
                    .unwrap();
                let Point::Sum(n) = point else { panic!() };
                got.insert((pid, egress, peer), n);
            }
            assert_eq!(got, want, "collection {round}");
        }
    }

    #[test]
    fn connection_outcomes_and_retransmits() {
        let mut inst = instruments();
        let ev = |op| {
            let d = data(5, 9, true, 0, 0);
            NetEvent {
                header: d.header,
                sock_id: 1,
                tuple: d.tuple,
                op,
                _pad: [0; 7],
            }
        };
        on_net(&mut inst, &ev(net::CONNECTED));
        on_net(&mut inst, &ev(net::CONNECT_FAILED));
        on_net(&mut inst, &ev(net::RETRANSMIT));
        on_net(&mut inst, &ev(net::RETRANSMIT));
        let accept = ConnEvent {
            header: data(5, 9, true, 0, 0).header,
            tuple: data(5, 9, true, 0, 0).tuple,
            op: conn::ACCEPT,
            ..Default::default()
        };
        on_conn(&mut inst, &accept);
        let opened = inst[OPENED].collect(false);
        assert_eq!(opened.len(), 2, "client and server side: {opened:?}");
        // The client side names the port it connected to; the server side its own.
        assert!(
            opened
                .iter()
                .any(|(_, a, _)| a.contains(&(CONNECTION_SIDE, "client".into()))
                    && a.contains(&(sc::SERVER_PORT, Val::Int(40009))))
        );
        assert!(
            opened
                .iter()
                .any(|(_, a, _)| a.contains(&(CONNECTION_SIDE, "server".into()))
                    && a.contains(&(sc::SERVER_PORT, Val::Int(80))))
        );
        assert_eq!(inst[FAILED].collect(false)[0].2, Point::Sum(1));
        assert_eq!(inst[RETRANSMITS].collect(false)[0].2, Point::Sum(2));
    }
}
