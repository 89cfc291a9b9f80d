//! Socket I/O of traced processes from the socket layer: raw tracepoints `sock_send_length` and
//! `sock_recv_length`, which fire once per `sock_sendmsg`/`sock_recvmsg` — only for sockets.
//!
//! Why not the syscall tracepoints (`probes::io`, still the fallback): enabling *any*
//! `syscalls:` tracepoint marks every task of the host for the syscall slow path, so every
//! syscall of every process pays for it, traced or not (KERNEL.md measured 0.85 of untraced
//! throughput for a process ztrace does not even trace). These tracepoints cost nothing to
//! processes that do no socket I/O and one early-exit program run per socket call to untraced
//! ones — and one hook per call instead of an enter and an exit.
//!
//! They fire after the data moved, with the socket and the byte count but not the user buffer.
//! The buffer is where the syscall's own arguments say: the registers the task entered the
//! kernel with (`pt_regs`, located by `bpf_task_pt_regs`, members at offsets from BTF) hold the
//! syscall number and arguments, and `probes::io::classify` knows which argument is the buffer,
//! the iovec array or the `msghdr`. A socket call that is not one of those syscalls
//! (sendfile, splice, io_uring, the kernel itself) is reported with its byte count and no
//! payload, so stream offsets stay right. The TCP sequence number of the first byte is the
//! socket's `write_seq`/`copied_seq` minus the bytes just moved.
//!
//! Limitations: `recvmmsg`/`sendmmsg` fire once per message with the same registers; the payload
//! is always read from the first message's buffers. Accepts are seen at the first socket call on
//! an accepted socket (a connection open before ztrace started counts as accepted when first
//! used).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use ztrace_abi::{EventHeader, conn, direction, kind, syscall};

use crate::{
    kernel::{IPPROTO_TCP, sock_tuple, syscall_regs, tcp_seq},
    maps::{NET_SOCKS, SyscallArgs, config, note_ssl_socket, traced_flags},
    probes::{
        io::{classify, emit_conn, user_buffer},
        record::{emit_prepared, scratch},
        tls::{Seq, note_ciphertext},
    },
};

const MSG_PEEK: i32 = 2;

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    let _ = on_io(&ctx, direction::EGRESS);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    let _ = on_io(&ctx, direction::INGRESS);
    0
}

#[inline(always)]
fn on_io(ctx: &RawTracePointContext, dir: u8) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let traced = traced_flags(tgid)?;
    // TP_PROTO(struct sock *sk, int ret, int flags).
    let sk: u64 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if ret <= 0 || sk == 0 || (dir == direction::INGRESS && flags & MSG_PEEK != 0) {
        return None;
    }
    let cfg = config();
    let off = &cfg.offsets;
    // The tuple goes straight into the record being built (a copy on the BPF stack would not
    // fit), read once for both the checks here and the record.
    let buf = scratch()?;
    buf.event.tuple = sock_tuple(off, sk)?;
    let protocol = buf.event.tuple.protocol;
    let egress = dir == direction::EGRESS;
    let mut args = SyscallArgs {
        sock: sk,
        buf: 0,
        // SAFETY: plain helper call.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        seq: 0,
        syscall: if egress {
            syscall::WRITE
        } else {
            syscall::READ
        },
        direction: dir,
        vectored: 0,
        has_seq: 0,
        iovcnt: 0,
        msgvec: 0,
    };
    if let Some((nr, arg0, arg1, arg2)) = syscall_regs(off)
        && let Some((kind, d, vectored, msghdr)) = classify(nr as i32)
        && d == dir
    {
        args.fd = arg0 as i32;
        args.syscall = kind;
        user_buffer(&mut args, arg1, arg2, vectored, msghdr)?;
    }
    let in_ssl_call = note_ssl_socket(traced, pid_tgid, sk);
    if protocol == IPPROTO_TCP {
        if let Some(after) = tcp_seq(off, sk, egress) {
            args.seq = after.wrapping_sub(ret as u32);
            args.has_seq = 1;
        }
        // Remember the owner for the TCP state and retransmit tracepoints (`probes::net`),
        // which fire where the owner is not current. Looked up first: most calls find it. A
        // socket this process did not connect (those are recorded at SYN_SENT) and touches for
        // the first time is one it accepted: reported as such, as `accept` would be.
        // SAFETY: plain map read for presence.
        if unsafe { NET_SOCKS.get(sk) }.is_none() {
            let _ = NET_SOCKS.insert(sk, tgid, 0);
            emit_conn(conn::ACCEPT, sk, args.fd, args.fd);
        }
    }
    // The record is stamped when the probe ran, like `enter_ns`: one clock read.
    let header = EventHeader {
        kind: kind::DATA,
        tgid,
        tid: pid_tgid as u32,
        _pad: 0,
        ts_ns: args.enter_ns,
    };
    emit_prepared(buf, header, &args, ret as u64, sk)?;
    if !in_ssl_call {
        let seq = Seq {
            seq: args.seq,
            has: args.has_seq,
        };
        note_ciphertext(traced, pid_tgid, sk, seq, egress);
    }
    Some(())
}
