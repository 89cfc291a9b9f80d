//! Address translation on either end's host, undone from the kernel's connection tracking table.
//!
//! The cross-host key is the client endpoint and sequence number as *both* processes saw them;
//! netfilter can make the two ends see different endpoints. Sequence numbers are never rewritten,
//! only ports and addresses, and each host's conntrack entry records the translation it made: an
//! entry's *original* tuple is the connection as its client made it, its *reply* tuple the
//! connection as the server answers it. Both ends ask with the reply tuple (the server's
//! endpoint → the client endpoint the server saw) and read the original tuple:
//!
//! - **The client's host** rewrote the client's port or address on the way out: MASQUERADE or
//!   SNAT with `--random-fully` (container network plugins do this for traffic leaving a node),
//!   or the implicit port remapping netfilter does when a DNAT'd connection's reply tuple would
//!   clash with another connection's (one to a service address and one straight to the server,
//!   from the same local port). When a question names no send of this agent, the answering agent
//!   looks the send up under the original source (`super::service::answer_all`).
//! - **The server's host** DNAT'd a host port to the server and, as kube-proxy does for node
//!   ports, SNAT'd the caller to one of the host's own addresses: the server process sees a
//!   caller on its own host, and a question to that address would reach this agent itself. The
//!   asking agent asks about the original source instead, and names the original destination as
//!   the server endpoint, so the client's agent can undo its own NAT against it
//!   (`super::service` `undo_local_nat`).
//!
//! This is the kernel's own record of the translation it made, not a guess: an entry exists
//! only for a connection this host's netfilter tracked, and the question must still match the
//! send's sequence number and request digest. No entry (no NAT, conntrack not in use in this
//! network namespace, an entry already expired) leaves the question as it was.
//!
//! The lookup is a ctnetlink `IPCTNL_MSG_CT_GET` on a `NETLINK_NETFILTER` socket. The kernel
//! checks CAP_NET_ADMIN against the credentials the socket was opened with and against the
//! current task, so ztrace opens it at start-up and keeps CAP_NET_ADMIN when `--peer-listen` is
//! set (`capture::privdrop`). Results are cached per (server, client) pair (an entry, translated
//! or not, for [`HIT_TTL_NS`], "no entry" for [`MISS_TTL_NS`]) in at most [`MAX_CACHED`]
//! entries: one netlink round trip per connection and side, not one per question.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rustc_hash::FxHashMap as HashMap;

use crate::model::Endpoint;

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// How long a found entry (translated or not) is reused: as long as a send stays answerable.
pub const HIT_TTL_NS: u64 = super::index::WINDOW_NS;
/// How long "no entry" is reused (the asker asks again every round meanwhile).
pub const MISS_TTL_NS: u64 = 1_000_000_000;
/// Most cached (server, client) pairs (≈ 80 bytes each with the expiry order: ≤ 6 MiB).
pub const MAX_CACHED: usize = 65_536;

/// Which tuple of an entry a lookup names (the other one is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum By {
    /// The reply tuple (server → client as the server answers): read the original tuple.
    Reply,
    /// The original tuple (client → server as the client made it): read the reply tuple.
    Orig,
}

/// A tracked connection's endpoints, as (client, server): the original tuple's source and
/// destination (read by [`NatTable::original`]), or the reply tuple's destination and source
/// (read by [`NatTable::reached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Original {
    /// Its source: the endpoint the client's process had.
    pub client: Endpoint,
    /// Its destination: the endpoint the client's process connected to.
    pub server: Endpoint,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Netlink round trips made.
    pub lookups: u64,
    /// Of those, entries whose original tuple differs from the one asked about.
    pub translated: u64,
    /// Failed round trips other than "no such entry" (counted, the question left unanswered).
    pub errors: u64,
}

/// This host's connection tracking table, asked about reply tuples.
#[derive(Debug)]
pub struct NatTable {
    fd: OwnedFd,
    seq: u32,
    cache: HashMap<(By, Endpoint, Endpoint), (Option<Original>, u64)>,
    order: VecDeque<(u64, (By, Endpoint, Endpoint))>,
    buf: Vec<u8>,
    pub stats: NatStats,
}

impl NatTable {
    /// Opens the netlink socket (needs CAP_NET_ADMIN now, not later).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed means "kernel assigns the port id".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid pointer and length of a sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // A lost answer must not stall the peer task: wait at most 100 ms.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid pointer and length of a timeval.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut table = Self {
            fd,
            seq: 0,
            cache: HashMap::default(),
            order: VecDeque::new(),
            buf: vec![0; 8192],
            stats: NatStats::default(),
        };
        // A first lookup that cannot match tells whether the kernel lets us ask at all
        // (EPERM without CAP_NET_ADMIN, EOPNOTSUPP/EPROTONOSUPPORT without ctnetlink).
        let probe = Endpoint {
            addr: IpAddr::from([127, 0, 0, 1]),
            port: 0,
        };
        table.ask(By::Reply, probe, probe)?;
        table.stats = NatStats::default();
        Ok(table)
    }

    /// The connection as this host's netfilter first saw it, for the TCP connection a local or
    /// remote server endpoint `server` had with `client`, when this host translated either
    /// end; None when it did not (or nothing is known).
    ///
    /// Asked on both sides of a link: the client's agent learns the endpoint its process had
    /// (MASQUERADE/SNAT on its host), the server's agent the caller's real endpoint and the
    /// address it called (DNAT to a host port, plus SNAT to the node's address as kube-proxy
    /// does for node ports).
    pub fn original(
        &mut self,
        server: Endpoint,
        client: Endpoint,
        now_ns: u64,
    ) -> Option<Original> {
        self.cached(
            By::Reply,
            (server, client),
            Original { client, server },
            now_ns,
        )
    }

    /// The server endpoint a connection this host's process made from `client` to `server`
    /// (as the process saw them) really reached, when this host translated the destination (a
    /// service address DNAT'd to a server); None when it did not (or nothing is known). Asked by
    /// a fallback peer's agent (`super::fallback`), whose question names the server endpoint as
    /// the server saw it.
    pub fn reached(&mut self, client: Endpoint, server: Endpoint, now_ns: u64) -> Option<Endpoint> {
        self.cached(
            By::Orig,
            (client, server),
            Original { client, server },
            now_ns,
        )
        .map(|o| o.server)
        .filter(|s| *s != server)
    }

    /// The entry named by tuple `(src, dst)` of kind `by`, when it differs from `asked`.
    fn cached(
        &mut self,
        by: By,
        (src, dst): (Endpoint, Endpoint),
        asked: Original,
        now_ns: u64,
    ) -> Option<Original> {
        self.expire(now_ns);
        let key = (by, src, dst);
        if let Some(&(found, until)) = self.cache.get(&key)
            && until > now_ns
        {
            return found;
        }
        // An entry's translation is fixed for the connection's life: an untranslated entry is
        // kept as long as a translated one; no entry (yet) for a short while.
        let (found, ttl) = match self.ask(by, src, dst) {
            Ok(Some(o)) if o != asked => (Some(o), HIT_TTL_NS),
            Ok(Some(_)) => (None, HIT_TTL_NS),
            Ok(None) => (None, MISS_TTL_NS),
            Err(_) => {
                self.stats.errors += 1;
                (None, MISS_TTL_NS)
            }
        };
        if found.is_some() {
            self.stats.translated += 1;
        }
        while self.cache.len() >= MAX_CACHED {
            let Some((_, k)) = self.order.pop_front() else {
                break;
            };
            self.cache.remove(&k);
        }
        let until = now_ns + ttl;
        self.cache.insert(key, (found, until));
        self.order.push_back((until, key));
        found
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(&(until, k)) = self.order.front() {
            if until > now_ns {
                break;
            }
            self.order.pop_front();
            if self.cache.get(&k).is_some_and(|e| e.1 <= now_ns) {
                self.cache.remove(&k);
            }
        }
    }

    /// One round trip: the other tuple of the entry whose tuple `by` is (`src` → `dst`);
    /// Ok(None) when there is no such entry.
    fn ask(&mut self, by: By, src: Endpoint, dst: Endpoint) -> io::Result<Option<Original>> {
        self.stats.lookups += 1;
        self.seq = self.seq.wrapping_add(1);
        let Some(msg) = request(self.seq, by, src, dst) else {
            return Ok(None);
        };
        // SAFETY: sockaddr_nl is plain data; zeroed is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid buffer, address and lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: valid buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse_answer(&self.buf[..n as usize], self.seq, by) {
                // An answer to an earlier question that timed out: read on.
                Answer::Stale => continue,
                Answer::Entry(orig) => return Ok(orig),
                Answer::Error(0 | libc::ENOENT) => return Ok(None),
                Answer::Error(e) => return Err(io::Error::from_raw_os_error(e)),
                Answer::Malformed => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed ctnetlink answer",
                    ));
                }
            }
        }
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A nested attribute: `fill` appends its members.
fn push_nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// The CT_GET request for the entry whose tuple `by` is `server` → `client` (TCP); None when
/// the two are of different families.
fn request(seq: u32, by: By, server: Endpoint, client: Endpoint) -> Option<Vec<u8>> {
    let (family, src_kind, dst_kind, src, dst): (u8, u16, u16, Vec<u8>, Vec<u8>) =
        match (server.addr, client.addr) {
            (IpAddr::V4(s), IpAddr::V4(c)) => (
                libc::AF_INET as u8,
                CTA_IP_V4_SRC,
                CTA_IP_V4_DST,
                s.octets().to_vec(),
                c.octets().to_vec(),
            ),
            (IpAddr::V6(s), IpAddr::V6(c)) => (
                libc::AF_INET6 as u8,
                CTA_IP_V6_SRC,
                CTA_IP_V6_DST,
                s.octets().to_vec(),
                c.octets().to_vec(),
            ),
            _ => return None,
        };
    let mut out = vec![0u8; NLMSG_HDRLEN];
    out.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, NFNETLINK_V0, res_id 0
    let tuple = match by {
        By::Reply => CTA_TUPLE_REPLY,
        By::Orig => CTA_TUPLE_ORIG,
    };
    push_nested(&mut out, tuple, |t| {
        push_nested(t, CTA_TUPLE_IP, |ip| {
            push_attr(ip, src_kind, &src);
            push_attr(ip, dst_kind, &dst);
        });
        push_nested(t, CTA_TUPLE_PROTO, |p| {
            push_attr(p, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
            push_attr(p, CTA_PROTO_SRC_PORT, &server.port.to_be_bytes());
            push_attr(p, CTA_PROTO_DST_PORT, &client.port.to_be_bytes());
        });
    });
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    out[4..6].copy_from_slice(&kind.to_ne_bytes());
    out[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // out[12..16]: port id 0, the kernel fills in ours.
    Some(out)
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Entry(Option<Original>),
    /// An errno (0: an acknowledgement without an entry).
    Error(i32),
    Stale,
    Malformed,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b`: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((kind, payload))
    })
}

fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// The source and destination endpoints of a tuple attribute's payload.
fn tuple_endpoints(tuple: &[u8]) -> Option<Original> {
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let proto = find(tuple, CTA_TUPLE_PROTO)?;
    let end = |v4: u16, v6: u16, port: u16| -> Option<Endpoint> {
        let addr = if let Some(a) = find(ip, v4) {
            IpAddr::from(<[u8; 4]>::try_from(a).ok()?)
        } else {
            IpAddr::from(<[u8; 16]>::try_from(find(ip, v6)?).ok()?)
        };
        let port = u16::from_be_bytes(find(proto, port)?.try_into().ok()?);
        Some(Endpoint { addr, port })
    };
    Some(Original {
        client: end(CTA_IP_V4_SRC, CTA_IP_V6_SRC, CTA_PROTO_SRC_PORT)?,
        server: end(CTA_IP_V4_DST, CTA_IP_V6_DST, CTA_PROTO_DST_PORT)?,
    })
}

/// What one datagram from the kernel says about question `seq`, asked `by` one tuple: the
/// other one, as (client, server).
fn parse_answer(b: &[u8], seq: u32, by: By) -> Answer {
    let (Some(len), Some(kind), Some(got)) = (u32_at(b, 0), u16_at(b, 4), u32_at(b, 8)) else {
        return Answer::Malformed;
    };
    let len = len as usize;
    if len < NLMSG_HDRLEN || len > b.len() {
        return Answer::Malformed;
    }
    if got != seq {
        return Answer::Stale;
    }
    let body = &b[NLMSG_HDRLEN..len];
    if kind == NLMSG_ERROR {
        return match body.get(..4) {
            Some(e) => Answer::Error(-i32::from_ne_bytes(e.try_into().expect("4 bytes"))),
            None => Answer::Malformed,
        };
    }
    if kind >> 8 != NFNL_SUBSYS_CTNETLINK || body.len() < NFGENMSG_LEN {
        return Answer::Malformed;
    }
    let read = match by {
        By::Reply => CTA_TUPLE_ORIG,
        By::Orig => CTA_TUPLE_REPLY,
    };
    match find(&body[NFGENMSG_LEN..], read) {
        Some(t) => match (tuple_endpoints(t), by) {
            (Some(ep), By::Reply) => Answer::Entry(Some(ep)),
            // A reply tuple runs server → client.
            (Some(ep), By::Orig) => Answer::Entry(Some(Original {
                client: ep.server,
                server: ep.client,
            })),
            (None, _) => Answer::Malformed,
        },
        None => Answer::Entry(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testkit::endpoint as ep;

    /// An answer as the kernel builds it: header, nfgenmsg, then the original tuple.
    fn kernel_answer(seq: u32, orig_src: Endpoint, orig_dst: Endpoint) -> Vec<u8> {
        kernel_tuple(seq, CTA_TUPLE_ORIG, orig_src, orig_dst)
    }

    /// An answer carrying tuple `kind` (source, destination).
    fn kernel_tuple(seq: u32, kind: u16, orig_src: Endpoint, orig_dst: Endpoint) -> Vec<u8> {
        let mut out = vec![0u8; NLMSG_HDRLEN];
        out.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        let (IpAddr::V4(s), IpAddr::V4(d)) = (orig_src.addr, orig_dst.addr) else {
            unreachable!()
        };
        push_nested(&mut out, kind, |t| {
            push_nested(t, CTA_TUPLE_IP, |ip| {
                push_attr(ip, CTA_IP_V4_SRC, &s.octets());
                push_attr(ip, CTA_IP_V4_DST, &d.octets());
            });
            push_nested(t, CTA_TUPLE_PROTO, |p| {
                push_attr(p, CTA_PROTO_NUM, &[6]);
                push_attr(p, CTA_PROTO_SRC_PORT, &orig_src.port.to_be_bytes());
                push_attr(p, CTA_PROTO_DST_PORT, &orig_dst.port.to_be_bytes());
            });
        });
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out[4..6].copy_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8).to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        out
    }

    #[test]
    fn parses_the_original_source() {
        let a = kernel_answer(7, ep("10.0.0.1:40000"), ep("10.96.0.10:80"));
        assert_eq!(
            parse_answer(&a, 7, By::Reply),
            Answer::Entry(Some(Original {
                client: ep("10.0.0.1:40000"),
                server: ep("10.96.0.10:80"),
            }))
        );
        assert_eq!(parse_answer(&a, 8, By::Reply), Answer::Stale);
    }

    #[test]
    fn errors_and_garbage() {
        let mut e = vec![0u8; NLMSG_HDRLEN + 4];
        let n = e.len() as u32;
        e[0..4].copy_from_slice(&n.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[8..12].copy_from_slice(&3u32.to_ne_bytes());
        e[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_answer(&e, 3, By::Reply), Answer::Error(libc::ENOENT));
        assert_eq!(parse_answer(&e[..10], 3, By::Reply), Answer::Malformed);
        // Every cut and every flipped byte of a real answer: no panic.
        let a = kernel_answer(1, ep("10.0.0.1:40000"), ep("10.96.0.10:80"));
        for cut in 0..a.len() {
            let _ = parse_answer(&a[..cut], 1, By::Reply);
            let _ = parse_answer(&a[..cut], 1, By::Orig);
        }
        for i in 0..a.len() {
            for v in [0u8, 1, 3, 4, 0x80, 0xff] {
                let mut m = a.clone();
                m[i] = v;
                let _ = parse_answer(&m, 1, By::Orig);
            }
        }
    }

    #[test]
    fn request_names_the_reply_tuple() {
        let r = request(5, By::Reply, ep("10.0.0.2:8080"), ep("10.0.0.1:55555")).unwrap();
        assert_eq!(u32_at(&r, 0).unwrap() as usize, r.len());
        let reply = find(&r[NLMSG_HDRLEN + NFGENMSG_LEN..], CTA_TUPLE_REPLY).unwrap();
        assert_eq!(
            tuple_endpoints(reply),
            Some(Original {
                client: ep("10.0.0.2:8080"),
                server: ep("10.0.0.1:55555"),
            })
        );
        assert!(request(5, By::Reply, ep("10.0.0.2:1"), ep("[::1]:2")).is_none());
        // By the original tuple: the client's view, client → service address.
        let r = request(6, By::Orig, ep("10.0.0.1:40000"), ep("10.96.0.10:80")).unwrap();
        let orig = find(&r[NLMSG_HDRLEN + NFGENMSG_LEN..], CTA_TUPLE_ORIG).unwrap();
        assert_eq!(
            tuple_endpoints(orig),
            Some(Original {
                client: ep("10.0.0.1:40000"),
                server: ep("10.96.0.10:80"),
            })
        );
    }

    /// Asked by the original tuple, the reply tuple is read: the server the connection reached
    /// and the client endpoint it answers (after this host's NAT), as (client, server).
    #[test]
    fn parses_the_reached_server() {
        let a = kernel_tuple(
            4,
            CTA_TUPLE_REPLY,
            ep("10.0.2.1:8080"),
            ep("10.0.1.1:40000"),
        );
        assert_eq!(
            parse_answer(&a, 4, By::Orig),
            Answer::Entry(Some(Original {
                client: ep("10.0.1.1:40000"),
                server: ep("10.0.2.1:8080"),
            }))
        );
        // An answer without the tuple asked for names no entry.
        assert_eq!(parse_answer(&a, 4, By::Reply), Answer::Entry(None));
    }
}
