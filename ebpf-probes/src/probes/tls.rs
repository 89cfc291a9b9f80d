//! OpenSSL plaintext: uprobes on SSL_read/SSL_write (and the `_ex` variants) in a traced process's
//! libssl. Entry remembers the call; the socket is learnt from the read/write syscall OpenSSL makes
//! inside the call (`io::sys_enter` fills it in) or from an earlier call on the same `SSL *`; the
//! return probe emits the plaintext as a data event on a connection id of its own (`sock | 1`), so
//! it never mixes with the ciphertext the syscall probes see on the socket itself.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use ztrace_abi::{direction, syscall, traced};

use crate::{
    maps::{SSL_CALLS, SSL_SOCKS, SslCall, SyscallArgs, traced_flags_mut},
    probes::io::emit_data,
};

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
    let call = SslCall {
        ssl,
        buf,
        out_len,
        sock: 0,
        // SAFETY: plain helper call.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        direction: dir,
        _pad: [0; 7],
    };
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
    let sock = if call.sock != 0 {
        let _ = SSL_SOCKS.insert(call.ssl, call.sock, 0);
        call.sock
    } else {
        // SAFETY: plain map read.
        match unsafe { SSL_SOCKS.get(call.ssl) } {
            Some(s) => *s,
            None => return,
        }
    };
    let args = SyscallArgs {
        sock,
        buf: call.buf,
        enter_ns: call.enter_ns,
        fd: -1,
        seq: 0,
        syscall: if call.direction == direction::INGRESS {
            syscall::SSL_READ
        } else {
            syscall::SSL_WRITE
        },
        direction: call.direction,
        vectored: 0,
        has_seq: 0,
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
