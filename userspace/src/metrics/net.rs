//! Network metrics of traced processes, from the events capture already produces: bytes moved by
//! socket syscalls (their return values), connections accepted (accept) and opened or failed
//! (`sock:inet_sock_set_state`), and retransmits (`tcp:tcp_retransmit_skb`).
//!
//! Names: bytes use the conventions' `process.network.io` (a process-level counter with
//! `network.io.direction`), with the peer address and transport added so the traffic can be told
//! apart per peer. The conventions have no per-process connection or retransmit counters
//! (`system.network.*` are host/interface level), so those are ztrace's own, prefixed `ztrace.`.
//! Peer *ports* are never attributes (a server's clients use ephemeral ones); the server's port is.

use opentelemetry_semantic_conventions::{attribute as sc, metric as m};
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

/// Bytes of one socket syscall. TLS plaintext (uprobes) is not counted: its ciphertext already was.
pub fn on_data(inst: &mut [Instrument], ev: &DataEvent) {
    if ev.syscall == syscall::SSL_READ || ev.syscall == syscall::SSL_WRITE {
        return;
    }
    let (_, peer) = endpoints(&ev.tuple);
    let dir = if ev.direction == direction::EGRESS {
        "transmit"
    } else {
        "receive"
    };
    let attrs: AttrSet = vec![
        (sc::NETWORK_IO_DIRECTION, dir.into()),
        (sc::NETWORK_PEER_ADDRESS, peer.addr.to_string().into()),
        (sc::NETWORK_TRANSPORT, transport(ev.tuple.protocol).into()),
    ];
    inst[IO].add(ev.header.tgid, attrs, ev.bytes);
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
            (sc::NETWORK_PEER_ADDRESS, peer.addr.to_string().into()),
            (sc::SERVER_PORT, i64::from(local.port).into()),
            (CONNECTION_SIDE, "server".into()),
        ],
        1,
    );
}

/// Outgoing connection outcomes and retransmits.
pub fn on_net(inst: &mut [Instrument], ev: &NetEvent) {
    let (_, peer) = endpoints(&ev.tuple);
    let peer_addr = (sc::NETWORK_PEER_ADDRESS, peer.addr.to_string().into());
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
