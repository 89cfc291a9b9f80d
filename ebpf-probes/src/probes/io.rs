//! Socket I/O of traced processes, from syscall tracepoints.
//!
//! One `sys_enter` and one `sys_exit` program serve every hooked syscall: the tracepoint record
//! carries the syscall number, so userspace attaches the same program to each
//! `syscalls:sys_{enter,exit}_*` tracepoint. Entry filters (traced TGID, fd is an IP socket) and
//! saves what the exit needs; exit emits one record when bytes actually moved. With
//! `CONFIG.capture_stdio`, writes to fds 1 and 2 that are not sockets are captured the same way
//! as `kind::STDIO` records (log capture).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use ztrace_abi::{ConnEvent, SockTuple, conn, counter, direction, kind, syscall};

use crate::{
    kernel::{IPPROTO_TCP, sock_family_protocol, sock_of_fd, sock_tuple, tcp_seq},
    maps::{
        ARGS, NET_SOCKS, SSL_CALLS, SyscallArgs, config, count, header, is_traced, note_ssl_socket,
        submit, tls_busy, traced_flags,
    },
    probes::{
        record::emit_data,
        tls::{Seq, note_ciphertext},
    },
};

/// Syscall numbers of the hooked syscalls for the architecture the probes are built for.
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) mod nr {
    pub const READ: i32 = 0;
    pub const WRITE: i32 = 1;
    pub const CLOSE: i32 = 3;
    pub const READV: i32 = 19;
    pub const WRITEV: i32 = 20;
    pub const CONNECT: i32 = 42;
    pub const ACCEPT: i32 = 43;
    pub const SENDTO: i32 = 44;
    pub const RECVFROM: i32 = 45;
    pub const SENDMSG: i32 = 46;
    pub const RECVMSG: i32 = 47;
    pub const RECVMMSG: i32 = 299;
    pub const SENDMMSG: i32 = 307;
    pub const ACCEPT4: i32 = 288;
}
#[cfg(bpf_target_arch = "aarch64")]
pub(crate) mod nr {
    pub const CLOSE: i32 = 57;
    pub const READ: i32 = 63;
    pub const WRITE: i32 = 64;
    pub const READV: i32 = 65;
    pub const WRITEV: i32 = 66;
    pub const ACCEPT: i32 = 202;
    pub const CONNECT: i32 = 203;
    pub const SENDTO: i32 = 206;
    pub const RECVFROM: i32 = 207;
    pub const SENDMSG: i32 = 211;
    pub const RECVMSG: i32 = 212;
    pub const RECVMMSG: i32 = 243;
    pub const SENDMMSG: i32 = 269;
    pub const ACCEPT4: i32 = 242;
}

/// Pseudo syscall kind for a pending connect (not a data syscall).
const CONNECT_PENDING: u8 = 0xff;
const EINPROGRESS: i64 = 115;

// Offsets inside `struct trace_event_raw_sys_enter/exit` (stable syscall tracepoint ABI).
const TP_NR: usize = 8;
const TP_ARG0: usize = 16;
const TP_ARG1: usize = 24;
const TP_ARG2: usize = 32;
/// `struct mmsghdr.msg_len`, after the 56-byte `struct user_msghdr` (UAPI layout).
const MMSGHDR_MSG_LEN: u64 = 56;
/// `struct user_msghdr.msg_iovlen` (UAPI layout).
const MSGHDR_IOVLEN: u64 = 24;
const TP_RET: usize = 16;
/// `struct user_msghdr.msg_iov` (UAPI layout).
const MSGHDR_IOV: u64 = 16;

/// How an I/O syscall's arguments look.
#[inline(always)]
pub(crate) fn classify(nr: i32) -> Option<(u8, u8, bool, bool)> {
    // (syscall kind, direction, vectored, buffer behind a msghdr)
    Some(match nr {
        nr::READ => (syscall::READ, direction::INGRESS, false, false),
        nr::WRITE => (syscall::WRITE, direction::EGRESS, false, false),
        nr::READV => (syscall::READV, direction::INGRESS, true, false),
        nr::WRITEV => (syscall::WRITEV, direction::EGRESS, true, false),
        nr::RECVFROM => (syscall::RECVFROM, direction::INGRESS, false, false),
        nr::SENDTO => (syscall::SENDTO, direction::EGRESS, false, false),
        nr::RECVMSG => (syscall::RECVMSG, direction::INGRESS, true, true),
        nr::SENDMSG => (syscall::SENDMSG, direction::EGRESS, true, true),
        // `struct mmsghdr` starts with a `struct user_msghdr`: the first message is read alike.
        nr::RECVMMSG => (syscall::RECVMMSG, direction::INGRESS, true, true),
        nr::SENDMMSG => (syscall::SENDMMSG, direction::EGRESS, true, true),
        _ => return None,
    })
}

#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(flags) = traced_flags((pid_tgid >> 32) as u32) else {
        return 0;
    };
    let _ = on_enter(&ctx, flags, pid_tgid);
    0
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, flags: u8, pid_tgid: u64) -> Option<()> {
    // SAFETY: offsets of the syscall tracepoint record, fixed by the kernel ABI.
    let nr: i32 = unsafe { ctx.read_at(TP_NR).ok()? };
    let fd: u64 = unsafe { ctx.read_at(TP_ARG0).ok()? };
    let fd = fd as i32;
    let cfg = config();
    let off = &cfg.offsets;
    if nr == nr::CLOSE {
        if cfg.socket_mode != 0 {
            return None;
        }
        let sk = sock_of_fd(off, fd)?;
        emit_conn(conn::CLOSE, sk, fd, 0);
        return Some(());
    }
    let mut args = SyscallArgs {
        sock: 0,
        buf: 0,
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd,
        seq: 0,
        syscall: CONNECT_PENDING,
        direction: 0,
        vectored: 0,
        has_seq: 0,
        iovcnt: 0,
        msgvec: 0,
    };
    if nr != nr::CONNECT {
        let (kind, dir, vectored, msghdr) = classify(nr)?;
        // Not a socket: only stdout/stderr writes, and only with `--capture-logs` (sock 0 marks
        // them for the exit).
        let (sk, protocol) = match sock_of_fd(off, fd) {
            // The socket-layer probes have it.
            Some(_) if cfg.socket_mode != 0 => return None,
            Some(sk) => (sk, sock_family_protocol(off, sk)?.1),
            None if cfg.capture_stdio != 0
                && (fd == 1 || fd == 2)
                && (kind == syscall::WRITE || kind == syscall::WRITEV) =>
            {
                (0, 0)
            }
            None => return None,
        };
        // SAFETY: fixed syscall tracepoint layout.
        let arg1: u64 = unsafe { ctx.read_at(TP_ARG1).ok()? };
        let arg2: u64 = unsafe { ctx.read_at(TP_ARG2).ok()? };
        user_buffer(&mut args, arg1, arg2, vectored, msghdr)?;
        args.sock = sk;
        if sk != 0 {
            let _ = note_ssl_socket(flags, pid_tgid, sk);
        }
        args.syscall = kind;
        args.direction = dir;
        args.vectored = vectored as u8;
        if protocol == IPPROTO_TCP
            && let Some(seq) = tcp_seq(off, sk, dir == direction::EGRESS)
        {
            args.seq = seq;
            args.has_seq = 1;
        }
    }
    if ARGS.insert(pid_tgid, args, 0).is_err() {
        count(counter::ARGS_FULL);
    }
    Some(())
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Accept needs no entry state: the new fd is the return value.
    // SAFETY: fixed syscall tracepoint layout.
    let Ok(nr) = (unsafe { ctx.read_at::<i32>(TP_NR) }) else {
        return 0;
    };
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(TP_RET) }) else {
        return 0;
    };
    if nr == nr::ACCEPT || nr == nr::ACCEPT4 {
        if ret >= 0 && is_traced((pid_tgid >> 32) as u32) {
            let off = &config().offsets;
            if let Some(sk) = sock_of_fd(off, ret as i32) {
                // The owner of the accepted socket, for the `sock:`/`tcp:` probes (`net.rs`).
                let _ = NET_SOCKS.insert(sk, (pid_tgid >> 32) as u32, 0);
                emit_conn(conn::ACCEPT, sk, ret as i32, ret as i32);
            }
        }
        return 0;
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { ARGS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = ARGS.remove(pid_tgid);
    if args.syscall == CONNECT_PENDING {
        if ret == 0 || ret == -EINPROGRESS {
            let off = &config().offsets;
            if let Some(sk) = sock_of_fd(off, args.fd) {
                emit_conn(conn::CONNECT, sk, args.fd, ret as i32);
            }
        }
        return 0;
    }
    if ret > 0 {
        // The *mmsg calls return a message count; the first message's byte count is its
        // `msg_len`, which the kernel wrote after the `user_msghdr`.
        let bytes = if args.syscall == syscall::RECVMMSG || args.syscall == syscall::SENDMMSG {
            // SAFETY: user pointer read through the fault-tolerant helper.
            match unsafe { bpf_probe_read_user((args.msgvec + MMSGHDR_MSG_LEN) as *const u32) } {
                Ok(n) => n as u64,
                Err(_) => return 0,
            }
        } else {
            ret as u64
        };
        if bytes > 0 && emit_data(&args, bytes, args.sock).is_some() && args.sock != 0 {
            // Ciphertext of a memory-BIO OpenSSL stack (`probes::tls`); I/O inside an OpenSSL
            // call is that call's own.
            let tgid = (pid_tgid >> 32) as u32;
            if let Some(flags) = traced_flags(tgid)
                // SAFETY: plain map read for presence.
                && (!tls_busy(pid_tgid) || unsafe { SSL_CALLS.get(pid_tgid) }.is_none())
            {
                let seq = Seq {
                    seq: args.seq,
                    has: args.has_seq,
                };
                let egress = args.direction == direction::EGRESS;
                note_ciphertext(flags, pid_tgid, args.sock, seq, egress);
            }
        }
    }
    0
}

/// Where a data syscall's bytes are, from its arguments 1 and 2: the buffer, the iovec array
/// (and its length) or, behind a `msghdr`, the message's iovecs.
#[inline(always)]
pub(crate) fn user_buffer(
    args: &mut SyscallArgs,
    arg1: u64,
    arg2: u64,
    vectored: bool,
    msghdr: bool,
) -> Option<()> {
    let mut buf = arg1;
    if msghdr {
        args.msgvec = buf;
        // SAFETY: user pointers read through the fault-tolerant helper.
        args.iovcnt =
            unsafe { bpf_probe_read_user((buf + MSGHDR_IOVLEN) as *const u64).ok()? } as u32;
        buf = unsafe { bpf_probe_read_user((buf + MSGHDR_IOV) as *const u64).ok()? };
    } else if vectored {
        args.iovcnt = arg2 as u32;
    }
    args.buf = buf;
    args.vectored = vectored as u8;
    Some(())
}

#[inline(always)]
pub(crate) fn emit_conn(op: u8, sk: u64, fd: i32, ret: i32) {
    let off = &config().offsets;
    let Some(tuple) = sock_tuple(off, sk) else {
        return;
    };
    emit_conn_of(op, sk, tuple, fd, ret);
}

/// `emit_conn` for a socket whose tuple the caller has read already.
#[inline(always)]
pub(crate) fn emit_conn_of(op: u8, sk: u64, tuple: SockTuple, fd: i32, ret: i32) {
    let event = ConnEvent {
        header: header(kind::CONN),
        sock_id: sk,
        tuple,
        fd,
        ret,
        op,
        _pad: [0; 7],
    };
    submit(&event);
}
