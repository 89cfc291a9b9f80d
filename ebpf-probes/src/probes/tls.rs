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
//!   (counted `TLS_AMBIGUOUS`); a bound `SSL *` seen after another socket's records was freed
//!   and reused by a new connection, whose handshake reads always come first (`TLS_REBOUND`).
//!   Writes use the binding only. Plaintext with no known socket is dropped and counted
//!   (`TLS_UNATTRIBUTED`): a wrong connection is worse than none.
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
use ztrace_abi::{counter, direction, syscall, traced};

use crate::{
    kernel::{IPPROTO_TCP, sock_family_protocol, tcp_seq},
    maps::{
        SSL_CALLS, SSL_SOCKS, SslCall, SyscallArgs, TLS_READS, TlsReads, config, count,
        traced_flags_mut,
    },
    probes::io::{emit_data, scratch},
};

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

/// A read of socket `sk` by thread `pid_tgid` of a process with probed OpenSSL, outside any
/// OpenSSL call; its bytes are in the record just emitted from `scratch`. `seq` is the TCP
/// sequence number of its first byte.
#[inline(always)]
pub(crate) fn note_ciphertext_read(flags: u8, pid_tgid: u64, sk: u64, seq: Option<u32>) {
    if flags & traced::TLS == 0 {
        return;
    }
    let Some(buf) = scratch() else {
        return;
    };
    if buf.event.cap_len < 5 {
        return;
    }
    let head = [
        buf.payload[0],
        buf.payload[1],
        buf.payload[2],
        buf.payload[3],
        buf.payload[4],
    ];
    if !looks_like_tls_record(&head) {
        return;
    }
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
                seq: seq.unwrap_or(0),
                has_seq: seq.is_some() as u8,
                several: 0,
                _pad: [0; 2],
            };
            let _ = TLS_READS.insert(pid_tgid, reads, 0);
        }
    }
}

/// An `SSL_read` of `ssl` after the thread's reads `reads`: bind `ssl` to their socket when
/// they name one, and give the call the sequence number its plaintext starts at.
#[inline(always)]
fn learn(ssl: u64, reads: &TlsReads, call: &mut SslCall) {
    // SAFETY: plain map read, copied out.
    let known = unsafe { SSL_SOCKS.get(ssl) }.copied();
    if reads.several != 0 {
        if known.is_none() {
            count(counter::TLS_AMBIGUOUS);
        }
        return;
    }
    if known != Some(reads.sock) {
        let _ = SSL_SOCKS.insert(ssl, reads.sock, 0);
        count(if known.is_some() {
            counter::TLS_REBOUND
        } else {
            counter::TLS_LEARNT
        });
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
    let _ = SSL_CALLS.insert(pid_tgid, call, 0);
}

#[inline(always)]
fn exit(ctx: &RetProbeContext, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { SSL_CALLS.get(pid_tgid) }).copied() else {
        return;
    };
    let _ = SSL_CALLS.remove(pid_tgid);
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
        let _ = SSL_SOCKS.insert(call.ssl, call.sock, 0);
        (call.sock, None)
    } else {
        // SAFETY: plain map read.
        let Some(sock) = (unsafe { SSL_SOCKS.get(call.ssl) }).copied() else {
            count(counter::TLS_UNATTRIBUTED);
            return;
        };
        let seq = if call.direction == direction::INGRESS {
            (call.has_seq != 0).then_some(call.seq)
        } else {
            // Memory BIO: the records just made go out next, where the socket's writes are.
            let off = &config().offsets;
            match sock_family_protocol(off, sock) {
                Some((_, IPPROTO_TCP)) => tcp_seq(off, sock, true),
                _ => None,
            }
        };
        (sock, seq)
    };
    let args = SyscallArgs {
        sock,
        buf: call.buf,
        enter_ns: call.enter_ns,
        fd: -1,
        seq: seq.unwrap_or(0),
        syscall: if call.direction == direction::INGRESS {
            syscall::SSL_READ
        } else {
            syscall::SSL_WRITE
        },
        direction: call.direction,
        vectored: 0,
        has_seq: seq.is_some() as u8,
        iovcnt: 0,
        msgvec: 0,
    };
    let _ = emit_data(&args, bytes, sock | 1);
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
