//! Socket I/O of traced processes from the socket layer: tracepoints `sock_send_length` and
//! `sock_recv_length` (BTF-typed, raw as the fallback), which fire once per
//! `sock_sendmsg`/`sock_recvmsg` — only for sockets.
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
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use ztrace_abi::{EventHeader, conn, direction, kind, syscall};

use crate::{
    kernel::{
        IPPROTO_TCP, sock_tuple, sock_tuple_btf, syscall_regs, syscall_regs_btf, tcp_seq,
        tcp_seq_btf,
    },
    maps::{
        NET_SOCKS, SyscallArgs, config, epoch, note_ssl_socket, owner_known, owner_noted,
        traced_flags,
    },
    probes::{
        io::{classify, emit_conn_of, user_buffer},
        record::{emit_prepared, scratch},
        tls::{Seq, note_ciphertext},
    },
};

const MSG_PEEK: i32 = 2;

// Two programs per tracepoint. `tp_btf` (BTF-typed, the default): `sk` arrives typed, so the
// socket's and the registers' members are plain loads. Raw tracepoints (the fallback where the
// kernel refuses the typed ones): every member is a `bpf_probe_read_kernel` call. Userspace
// loads the first pair that verifies. Same records either way.

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk, int ret, int flags).
    let _ = on_io::<true>(ctx.arg(0), ctx.arg::<u64>(1) as i32, 0, direction::EGRESS);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> i32 {
    let flags = ctx.arg::<u64>(2) as i32;
    let _ = on_io::<true>(
        ctx.arg(0),
        ctx.arg::<u64>(1) as i32,
        flags,
        direction::INGRESS,
    );
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_raw(ctx: RawTracePointContext) -> i32 {
    let _ = on_io::<false>(ctx.arg(0), ctx.arg::<u64>(1) as i32, 0, direction::EGRESS);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_raw(ctx: RawTracePointContext) -> i32 {
    let flags = ctx.arg::<u64>(2) as i32;
    let _ = on_io::<false>(
        ctx.arg(0),
        ctx.arg::<u64>(1) as i32,
        flags,
        direction::INGRESS,
    );
    0
}

/// One socket call that moved `ret` bytes (or failed: `ret` ≤ 0) on socket `sk_arg`; `BTF` when
/// `sk_arg` is a BTF-typed pointer (see above).
#[inline(always)]
fn on_io<const BTF: bool>(sk_arg: u64, ret: i32, flags: i32, dir: u8) -> Option<()> {
    // Calls that moved nothing (EAGAIN reads) and peeks leave before any helper call.
    if ret <= 0 || sk_arg == 0 || (dir == direction::INGRESS && flags & MSG_PEEK != 0) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let traced = traced_flags(tgid)?;
    let cfg = config();
    let off = &cfg.offsets;
    // The tuple goes straight into the record being built (a copy on the BPF stack would not
    // fit), read once for both the checks here and the record.
    let buf = scratch()?;
    // The socket's address as a number, for map keys and records: the verifier forbids
    // arithmetic on a typed pointer (`tls` tags it), and a value read back from a map is a
    // number. Volatile, so that the compiler keeps the round trip.
    // SAFETY: a field of our per-CPU scratch record, overwritten when the record is built.
    let sk = unsafe {
        core::ptr::write_volatile(&mut buf.event.sock_id, sk_arg);
        core::ptr::read_volatile(&buf.event.sock_id)
    };
    buf.event.tuple = if BTF {
        sock_tuple_btf(off, sk_arg)?
    } else {
        sock_tuple(off, sk)?
    };
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
    let regs = if BTF {
        syscall_regs_btf(off)
    } else {
        syscall_regs(off)
    };
    if let Some((nr, arg0, arg1, arg2)) = regs
        && let Some((kind, d, vectored, msghdr)) = classify(nr as i32)
        && d == dir
    {
        args.fd = arg0 as i32;
        args.syscall = kind;
        user_buffer(&mut args, arg1, arg2, vectored, msghdr)?;
    }
    let in_ssl_call = note_ssl_socket(traced, pid_tgid, sk);
    if protocol == IPPROTO_TCP {
        let after = if BTF {
            tcp_seq_btf(off, sk_arg, egress)
        } else {
            tcp_seq(off, sk, egress)
        };
        if let Some(after) = after {
            args.seq = after.wrapping_sub(ret as u32);
            args.has_seq = 1;
        }
        // Remember the owner for the TCP state and retransmit tracepoints (`probes::net`),
        // which fire where the owner is not current. Looked up first (in `KNOWN_SOCKS`, then
        // `NET_SOCKS`, at least once an epoch so that its LRU keeps busy connections): most
        // calls find it. A socket this process did not connect (those are recorded at
        // SYN_SENT) and touches for the first time is one it accepted: reported as such, as
        // `accept` would be.
        let t = buf.event.tuple;
        let ports = u32::from(t.local_port) | (u32::from(t.remote_port) << 16);
        let now = epoch(args.enter_ns);
        if !owner_known(sk, ports, now) {
            // SAFETY: plain map read for presence.
            if unsafe { NET_SOCKS.get(sk) }.is_none() {
                let _ = NET_SOCKS.insert(sk, tgid, 0);
                emit_conn_of(conn::ACCEPT, sk, t, args.fd, args.fd);
            }
            owner_noted(sk, ports, now);
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
