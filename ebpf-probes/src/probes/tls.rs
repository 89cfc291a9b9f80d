//! OpenSSL plaintext: uprobes on SSL_read/SSL_write (and the `_ex` variants) in a traced process's
//! libssl, or in its executable when that exports them (Node.js). Entry remembers the call; the
//! return probe emits the plaintext as a data event on a connection id of its own (`sock | 1`),
//! so it never mixes with the ciphertext the socket probes see on the socket itself.
//!
//! Which socket an `SSL *` talks over is learnt two ways, both cached in `SSL_SOCKS`:
//! - **Socket BIO** (curl, Python, nginx): OpenSSL reads and writes the socket inside the call;
//!   the socket probes note it for the call in progress (`maps::note_ssl_socket`).
//! - **Memory BIO** (Node.js): the calls do no I/O. On its one thread, Node reads ciphertext
//!   from a socket, feeds it to the `SSL *`'s BIO and calls `SSL_read` until it runs dry; it
//!   calls `SSL_write`, then writes the ciphertext out. So a thread's reads *outside* OpenSSL
//!   calls since its last one are evidence (`TLS_READS`): an `SSL_read` after TLS-looking reads
//!   on exactly one socket reads that socket's records. Reads on several sockets bind nothing
//!   (counted `TLS_AMBIGUOUS`); a bound `SSL *` seen after another socket's handshake records
//!   was freed and reused by a new connection, whose handshake reads come first
//!   (`TLS_REBOUND`); after another socket's other records the evidence is doubted, not the
//!   binding (`TLS_AMBIGUOUS`). A binding whose socket no longer carries a connection (its
//!   `SSL *` was freed with it) counts as none: the reused `SSL *`'s first write waits.
//!   A client's first request is written before its socket is known (Node runs `SSL_write` on
//!   the pending request as soon as the server's handshake flight is fed in, before `SSL_read`):
//!   its plaintext record waits in `PENDING_WRITES` until the `SSL *` is bound by the evidence
//!   rule, or until the thread writes TLS records to a socket outside OpenSSL calls (the
//!   ciphertext going out), whichever comes first; an OpenSSL call on another `SSL *` first
//!   drops it. Plaintext with no known socket is dropped and counted (`TLS_UNATTRIBUTED`): a
//!   wrong connection is worse than none.
//!
//! Memory-BIO plaintext also carries the TCP sequence number of its ciphertext, so cross-process
//! links work as for clear text: an `SSL_read` right after the evidence read starts at that
//! read's first byte (the read began with a record header, so no partial record was pending);
//! an `SSL_write`'s records go out next, at the socket's `write_seq` when the call returns.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use ztrace_abi::{SockTuple, counter, direction, kind, syscall, traced};

use crate::{
    kernel::{IPPROTO_TCP, read, sock_ports, sock_tuple, tcp_connected, tcp_seq},
    maps::{
        DataBuf, PENDING_WRITES, SSL_CALLS, SSL_SOCKS, SslCall, SslSock, SyscallArgs, TLS_READS,
        TlsReads, config, count, header, tls_busy, tls_busy_add, tls_busy_remove, traced_flags_mut,
    },
    probes::record::{emit_data, prepare, scratch, submit_buf},
};

/// A TCP sequence number, if known (`has` 1). Not an `Option<u32>`: the code generated for one
/// can leave the number's register unset on the `None` path, which the verifier rejects.
#[derive(Clone, Copy)]
pub(crate) struct Seq {
    pub seq: u32,
    pub has: u8,
}

impl Seq {
    pub const NONE: Seq = Seq { seq: 0, has: 0 };
}

/// `bpf_map_update_elem` flag: fail when the key exists.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = -17;

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;

/// Largest TLS record body (2^14 plus the most any version adds for padding and the MAC).
const MAX_RECORD: u16 = (1 << 14) + 2048;

/// Whether `h` starts with a TLS record header: content type 20–24 (change_cipher_spec, alert,
/// handshake, application_data, heartbeat), version 3.0–3.4, a record length in range. A read
/// that starts inside a record (the rest of one split over reads) does not pass, so the BIO had
/// no partial record pending when such a read was fed to it.
#[inline(always)]
fn looks_like_tls_record(h: &[u8; 5]) -> bool {
    (20..=24).contains(&h[0])
        && h[1] == 3
        && h[2] <= 4
        && u16::from_be_bytes([h[3], h[4]]) <= MAX_RECORD
}

/// Socket I/O of thread `pid_tgid` of a process with probed OpenSSL, outside any OpenSSL call;
/// its bytes are in the record just emitted from `scratch`. `seq` is the TCP sequence number of
/// its first byte.
#[inline(always)]
pub(crate) fn note_ciphertext(flags: u8, pid_tgid: u64, sk: u64, seq: Seq, egress: bool) {
    if flags & traced::TLS == 0 {
        return;
    }
    if egress {
        // Only a thread holding a write whose socket is unknown cares.
        if tls_busy(pid_tgid)
            && let Some(p) = PENDING_WRITES.get_ptr_mut(pid_tgid)
            && record_type() != 0
        {
            // SAFETY: our own map value, written only by this thread's programs.
            let ssl = unsafe { (*p).event.sock_id };
            bind(ssl, sk);
            count(counter::TLS_LEARNT);
            release(pid_tgid, p, sk, seq);
        }
        return;
    }
    let content = record_type();
    if content == 0 {
        return;
    }
    note_read(pid_tgid, sk, seq, content == HANDSHAKE);
}

/// The content type of the TLS record the record just emitted from `scratch` starts with; 0
/// when it does not start with one.
#[inline(always)]
fn record_type() -> u8 {
    let Some(buf) = scratch() else {
        return 0;
    };
    if buf.event.cap_len < 5 {
        return 0;
    }
    let head = [
        buf.payload[0],
        buf.payload[1],
        buf.payload[2],
        buf.payload[3],
        buf.payload[4],
    ];
    if looks_like_tls_record(&head) {
        head[0]
    } else {
        0
    }
}

#[inline(always)]
fn note_read(pid_tgid: u64, sk: u64, seq: Seq, handshake: bool) {
    match TLS_READS.get_ptr_mut(pid_tgid) {
        // SAFETY: our own map value, written only by this thread's programs.
        Some(r) => unsafe {
            if (*r).sock != sk {
                (*r).several = 1;
            }
        },
        None => {
            let reads = TlsReads {
                sock: sk,
                seq: seq.seq,
                has_seq: seq.has,
                several: 0,
                handshake: handshake as u8,
                _pad: 0,
            };
            let _ = TLS_READS.insert(pid_tgid, reads, 0);
        }
    }
}

/// Binds `ssl` to socket `sock` and the connection it carries now.
#[inline(always)]
fn bind(ssl: u64, sock: u64) {
    let b = SslSock {
        sock,
        ports: sock_ports(&config().offsets, sock),
        _pad: 0,
    };
    let _ = SSL_SOCKS.insert(ssl, b, 0);
}

/// The socket `ssl` is bound to, unless that socket no longer carries that connection (closed,
/// or its struct reused by another connection: `stale`): then the `SSL *` was freed with it and its memory may serve a new one, whose
/// first write comes before its first read names the new socket.
struct Bound {
    sock: Option<u64>,
    stale: bool,
}

#[inline(always)]
fn bound(ssl: u64) -> Bound {
    // SAFETY: plain map read, copied out.
    match unsafe { SSL_SOCKS.get(ssl) }.copied() {
        Some(b)
            if tcp_connected(&config().offsets, b.sock)
                && sock_ports(&config().offsets, b.sock) == b.ports =>
        {
            Bound {
                sock: Some(b.sock),
                stale: false,
            }
        }
        Some(_) => Bound {
            sock: None,
            stale: true,
        },
        None => Bound {
            sock: None,
            stale: false,
        },
    }
}

/// An `SSL_read` of `ssl` after the thread's reads `reads`: bind `ssl` to their socket when
/// they name one, and give the call the sequence number its plaintext starts at.
#[inline(always)]
fn learn(ssl: u64, reads: &TlsReads, call: &mut SslCall) {
    let Bound { sock: known, stale } = bound(ssl);
    if reads.several != 0 {
        if known.is_none() {
            count(counter::TLS_AMBIGUOUS);
        }
        return;
    }
    match known {
        Some(sock) if sock == reads.sock => {}
        // A bound `SSL *` reads another socket's records only when its memory went to a new
        // connection, whose first records are handshake ones. Without that the evidence is
        // doubted (another connection's reader may not have run yet), not the binding.
        Some(_) if reads.handshake == 0 => {
            count(counter::TLS_AMBIGUOUS);
            return;
        }
        Some(_) => {
            bind(ssl, reads.sock);
            count(counter::TLS_REBOUND);
        }
        None => {
            bind(ssl, reads.sock);
            count(if stale {
                counter::TLS_REBOUND
            } else {
                counter::TLS_LEARNT
            });
        }
    }
    call.seq = reads.seq;
    call.has_seq = reads.has_seq;
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u8, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(flags) = traced_flags_mut((pid_tgid >> 32) as u32) else {
        return;
    };
    // The process calls into a probed libssl, so from now on its socket calls must note their
    // socket for the call in progress (`note_ssl_socket`). The call itself says so, before the
    // socket I/O inside it: userspace learns of a libssl from /proc/PID/maps when it handles the
    // exec event, which is often before the dynamic loader has mapped the library; the flag then
    // stayed clear and the process's plaintext was lost.
    // SAFETY: a value of our own map, valid while the program runs; a byte store.
    unsafe {
        if *flags & traced::TLS == 0 {
            *flags |= traced::TLS;
        }
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let out_len = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let mut call = SslCall {
        ssl,
        buf,
        out_len,
        sock: 0,
        // SAFETY: plain helper call.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        direction: dir,
        has_seq: 0,
        _pad: [0; 2],
        seq: 0,
    };
    // Any OpenSSL call closes the thread's window of evidence; an `SSL_read` may learn from it.
    // SAFETY: plain map read, copied out before the entry is removed.
    if let Some(reads) = unsafe { TLS_READS.get(pid_tgid) }.copied() {
        let _ = TLS_READS.remove(pid_tgid);
        if dir == direction::INGRESS {
            learn(ssl, &reads, &mut call);
        }
    }
    if let Some(p) = PENDING_WRITES.get_ptr_mut(pid_tgid) {
        // SAFETY: our own map value, written only by this thread's programs.
        let pending_ssl = unsafe { (*p).event.sock_id };
        if pending_ssl != ssl {
            // Another connection's turn: which socket the held write goes to is unknowable.
            if PENDING_WRITES.remove(pid_tgid).is_ok() {
                tls_busy_remove(pid_tgid);
            }
            count(counter::TLS_UNATTRIBUTED);
        } else if let Some(sock) = bound(ssl).sock {
            // Bound just now: its records have not gone out yet (the thread writes them next).
            release(pid_tgid, p, sock, write_seq(sock));
        }
    }
    // Counted once per entry (`TLS_BUSY`): a call entered again before its return replaces the
    // entry, which was counted when it was made.
    match SSL_CALLS.insert(pid_tgid, call, BPF_NOEXIST) {
        Ok(()) => tls_busy_add(pid_tgid),
        Err(EEXIST) => {
            let _ = SSL_CALLS.insert(pid_tgid, call, 0);
        }
        Err(_) => {
            if SSL_CALLS.insert(pid_tgid, call, 0).is_ok() {
                tls_busy_add(pid_tgid);
            }
        }
    }
}

#[inline(always)]
fn exit(ctx: &RetProbeContext, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { SSL_CALLS.get(pid_tgid) }).copied() else {
        return;
    };
    if SSL_CALLS.remove(pid_tgid).is_ok() {
        tls_busy_remove(pid_tgid);
    }
    // SSL_read/SSL_write(_ex) return a C `int`: only the low 32 bits of the register count.
    let ret = ctx.ret::<u64>() as u32 as i32 as i64;
    let bytes = if ex {
        if ret != 1 || call.out_len == 0 {
            return;
        }
        // SAFETY: user pointer read through the fault-tolerant helper.
        match unsafe { bpf_probe_read_user(call.out_len as *const u64) } {
            Ok(n) => n,
            Err(_) => return,
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return;
    };
    let (sock, seq) = if call.sock != 0 {
        // Socket BIO: the call's own I/O named the socket. Its records may have been read
        // ahead or written in pieces: no sequence number.
        bind(call.ssl, call.sock);
        (call.sock, Seq::NONE)
    } else {
        let Some(sock) = bound(call.ssl).sock else {
            if call.direction == direction::EGRESS {
                hold_write(pid_tgid, &call, bytes);
            } else {
                count(counter::TLS_UNATTRIBUTED);
            }
            return;
        };
        let seq = if call.direction == direction::INGRESS {
            Seq {
                seq: call.seq,
                has: call.has_seq,
            }
        } else {
            // Memory BIO: the records just made go out next, where the socket's writes are.
            write_seq(sock)
        };
        (sock, seq)
    };
    let args = SyscallArgs {
        sock,
        buf: call.buf,
        enter_ns: call.enter_ns,
        fd: -1,
        seq: seq.seq,
        syscall: if call.direction == direction::INGRESS {
            syscall::SSL_READ
        } else {
            syscall::SSL_WRITE
        },
        direction: call.direction,
        vectored: 0,
        has_seq: seq.has,
        iovcnt: 0,
        msgvec: 0,
    };
    let _ = emit_data(&args, bytes, sock | 1);
}

/// Where the next bytes written to TCP socket `sock` go.
#[inline(always)]
fn write_seq(sock: u64) -> Seq {
    let off = &config().offsets;
    // One field read to a definite value: matching `sock_family_protocol`'s pair here left a
    // register unset on its early-return path, which the verifier rejects.
    let protocol: u16 = read(sock, off.sk_protocol).unwrap_or(0);
    if protocol != IPPROTO_TCP {
        return Seq::NONE;
    }
    match tcp_seq(off, sock, true) {
        Some(seq) => Seq { seq, has: 1 },
        None => Seq::NONE,
    }
}

/// Holds the plaintext of `call` (an `SSL_write` whose socket is not known yet) for the thread.
#[inline(always)]
fn hold_write(pid_tgid: u64, call: &SslCall, bytes: u64) {
    let Some(buf) = scratch() else {
        return;
    };
    buf.event.tuple = SockTuple::default();
    let args = SyscallArgs {
        sock: 0,
        buf: call.buf,
        enter_ns: call.enter_ns,
        fd: -1,
        seq: 0,
        syscall: syscall::SSL_WRITE,
        direction: direction::EGRESS,
        vectored: 0,
        has_seq: 0,
        iovcnt: 0,
        msgvec: 0,
    };
    prepare(buf, header(kind::DATA), &args, bytes, call.ssl);
    // SAFETY: plain map read for presence.
    if unsafe { PENDING_WRITES.get(pid_tgid) }.is_some() {
        count(counter::TLS_UNATTRIBUTED);
        let _ = PENDING_WRITES.insert(pid_tgid, buf, 0);
    } else if PENDING_WRITES.insert(pid_tgid, buf, BPF_NOEXIST).is_ok() {
        tls_busy_add(pid_tgid);
    }
}

/// Emits the write held for the thread as plaintext of socket `sock`, and forgets it.
#[inline(always)]
fn release(pid_tgid: u64, p: *mut DataBuf, sock: u64, seq: Seq) {
    if let Some(tuple) = sock_tuple(&config().offsets, sock) {
        // SAFETY: our own map value, written only by this thread's programs.
        let buf = unsafe { &mut *p };
        buf.event.tuple = tuple;
        buf.event.sock_id = sock | 1;
        buf.event.seq = seq.seq;
        buf.event.has_seq = seq.has;
        let _ = submit_buf(buf);
    }
    if PENDING_WRITES.remove(pid_tgid).is_ok() {
        tls_busy_remove(pid_tgid);
    }
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, true);
    0
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, false);
    0
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, true);
    0
}

#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    exit(&ctx, false);
    0
}

#[uretprobe]
pub fn ssl_ex_ret(ctx: RetProbeContext) -> u32 {
    exit(&ctx, true);
    0
}
