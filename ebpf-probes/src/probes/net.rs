//! TCP connection outcomes and retransmits of traced processes, from `sock:inet_sock_set_state`
//! and `tcp:tcp_retransmit_skb`.
//!
//! Both tracepoints mostly fire where the current task is *not* the socket's owner: the SYN-ACK
//! that moves a connecting socket to ESTABLISHED (or the RST/timeout that closes it) is handled in
//! softirq on whatever task the CPU was running, and retransmits run from the TCP timers. So the
//! filter cannot be "is the current TGID traced". Instead the owner is recorded while it *is*
//! current — when a traced process's `connect` moves its socket to SYN_SENT (process context),
//! and when it accepts one (`io.rs`) — in `NET_SOCKS` (socket → TGID), and the events look the
//! socket up there. Sockets opened before tracing started are not in the map: their retransmits
//! are not seen (the price of keeping host-wide TCP noise out of the ring buffer).
//! Record offsets come from the tracepoints' format files (userspace reads them into `CONFIG`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, helpers::bpf_ktime_get_ns, macros::tracepoint,
    programs::TracePointContext,
};
use ztrace_abi::{ConnEvent, EventHeader, NetEvent, OFFSET_UNKNOWN, conn, kind, net};

use crate::{
    kernel::sock_tuple,
    maps::{NET_SOCKS, config, forget_owner, is_traced, submit},
    probes::io::emit_conn,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == OFFSET_UNKNOWN {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's own format description.
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = on_set_state(&ctx);
    0
}

#[inline(always)]
fn on_set_state(ctx: &TracePointContext) -> Option<()> {
    let cfg = config();
    let sk: u64 = field(ctx, cfg.set_state_skaddr_offset)?;
    let old: i32 = field(ctx, cfg.set_state_old_offset)?;
    let new: i32 = field(ctx, cfg.set_state_new_offset)?;
    if new == TCP_SYN_SENT {
        // `connect` itself moves the socket to SYN_SENT: the owner is current.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if is_traced(tgid) {
            let _ = NET_SOCKS.insert(sk, tgid, 0);
            if cfg.socket_mode != 0 {
                // Without syscall probes this is where connects are seen (on the connecting
                // thread, which the linker needs).
                emit_conn(conn::CONNECT, sk, -1, 0);
            }
        }
        return Some(());
    }
    // SAFETY: plain map read; the value is copied.
    let owner = unsafe { NET_SOCKS.get(sk) }.copied();
    if new == TCP_CLOSE {
        let _ = NET_SOCKS.remove(sk);
        forget_owner(sk);
    }
    let owner = owner?;
    // Without syscall probes, `close` is seen as the socket leaving the open states: the owner
    // closing it (FIN_WAIT1, LAST_ACK) or a reset/abort (CLOSE).
    if cfg.socket_mode != 0
        && matches!(new, TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSE)
        && matches!(
            old,
            TCP_ESTABLISHED | TCP_SYN_SENT | TCP_SYN_RECV | TCP_CLOSE_WAIT
        )
    {
        emit_close(sk, owner);
    }
    if old != TCP_SYN_SENT {
        return Some(());
    }
    match new {
        TCP_ESTABLISHED => emit(net::CONNECTED, sk, owner),
        TCP_CLOSE => emit(net::CONNECT_FAILED, sk, owner),
        _ => None,
    }
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let Some(sk) = field::<u64>(&ctx, cfg.retransmit_skaddr_offset) else {
        return 0;
    };
    // SAFETY: plain map read; the value is copied.
    if let Some(owner) = unsafe { NET_SOCKS.get(sk) }.copied() {
        let _ = emit(net::RETRANSMIT, sk, owner);
    }
    0
}

/// Header of a record about a socket's owner, who is not the current task (`tid` 0).
#[inline(always)]
fn owner_header(kind: u32, owner: u32) -> EventHeader {
    EventHeader {
        kind,
        tgid: owner,
        tid: 0,
        _pad: 0,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// A CLOSE connection record for the socket's owner (not the current task).
#[inline(always)]
fn emit_close(sk: u64, owner: u32) -> Option<()> {
    let tuple = sock_tuple(&config().offsets, sk)?;
    submit(&ConnEvent {
        header: owner_header(kind::CONN, owner),
        sock_id: sk,
        tuple,
        fd: -1,
        ret: 0,
        op: conn::CLOSE,
        _pad: [0; 7],
    });
    Some(())
}

#[inline(always)]
fn emit(op: u8, sk: u64, owner: u32) -> Option<()> {
    let tuple = sock_tuple(&config().offsets, sk)?;
    submit(&NetEvent {
        header: owner_header(kind::NET, owner),
        sock_id: sk,
        tuple,
        op,
        _pad: [0; 7],
    });
    Some(())
}
