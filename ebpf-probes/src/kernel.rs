//! Reads of kernel structs. Member offsets come from the running kernel's BTF (userspace resolves
//! them and writes them into `CONFIG.offsets`), so nothing here depends on one kernel build.

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_skc_to_tcp_sock,
    bpf_task_pt_regs,
};
use ztrace_abi::{
    AF_INET, AF_INET6, KernelOffsets, OFFSET_UNKNOWN, REGS_HEAD_BYTES, SOCK_HEAD_BYTES, SockTuple,
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
pub const IPPROTO_TCP: u16 = 6;

#[inline(always)]
pub(crate) fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == OFFSET_UNKNOWN {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses (returns an error).
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The `T` at kernel offset `offset` inside `window`, a copy of the bytes from offset `base`.
#[inline(always)]
fn at<T: Copy, const N: usize>(window: &[u8; N], base: u32, offset: u32) -> Option<T> {
    let rel = offset.wrapping_sub(base) as usize;
    if rel > N - core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: in bounds (checked above); the window has no alignment, hence read_unaligned.
    Some(unsafe { core::ptr::read_unaligned(window.as_ptr().add(rel) as *const T) })
}

/// The `struct sock *` behind file descriptor `fd` of the current task, or None when the fd is
/// not a socket (checked via the inode mode, the cheapest test that needs no symbol address).
#[inline(always)]
pub fn sock_of_fd(off: &KernelOffsets, fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: returns the current task pointer; only used as a base for probe reads.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off.task_files)?;
    let fdt: u64 = read(files, off.files_fdt)?;
    let max_fds: u32 = read(fdt, off.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt, off.fdt_fd)?;
    let file: u64 = read(fd_array, (fd as u32).checked_mul(8)?)?;
    let inode: u64 = read(file, off.file_f_inode)?;
    let mode: u16 = read(inode, off.inode_i_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = read(file, off.file_private_data)?;
    let sk: u64 = read(socket, off.socket_sk)?;
    if sk == 0 { None } else { Some(sk) }
}

/// The socket's 4-tuple as the kernel sees it now; None for non-IP sockets. Family, ports and
/// IPv4 addresses come from one read of the head of `struct sock_common` where this kernel's
/// layout allows (`KernelOffsets::sk_head`): helper calls are most of a probe's cost.
#[inline(always)]
pub fn sock_tuple(off: &KernelOffsets, sk: u64) -> Option<SockTuple> {
    let mut t = SockTuple::default();
    let base = off.sk_head;
    if base != OFFSET_UNKNOWN {
        // Read as a value: the helper fills uninitialised stack, where a zeroed array cost a
        // call to a byte-at-a-time `memset` subprogram first (1.5 % of the socket probes' time).
        let head: [u8; SOCK_HEAD_BYTES] = read(sk, base)?;
        t.family = at(&head, base, off.sk_family)?;
        t.local_port = at(&head, base, off.sk_num)?;
        t.remote_port = u16::from_be(at(&head, base, off.sk_dport)?);
        if t.family == AF_INET {
            let l = off.sk_rcv_saddr.wrapping_sub(base) as usize;
            let r = off.sk_daddr.wrapping_sub(base) as usize;
            t.local_addr[..4].copy_from_slice(head.get(l..l + 4)?);
            t.remote_addr[..4].copy_from_slice(head.get(r..r + 4)?);
        }
    } else {
        t.family = read(sk, off.sk_family)?;
        t.local_port = read(sk, off.sk_num)?;
        t.remote_port = u16::from_be(read(sk, off.sk_dport)?);
        if t.family == AF_INET {
            t.local_addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.sk_rcv_saddr)?);
            t.remote_addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.sk_daddr)?);
        }
    }
    if t.family == AF_INET6 {
        t.local_addr = read::<[u8; 16]>(sk, off.sk_v6_rcv_saddr)?;
        t.remote_addr = read::<[u8; 16]>(sk, off.sk_v6_daddr)?;
    } else if t.family != AF_INET {
        return None;
    }
    t.protocol = read(sk, off.sk_protocol).unwrap_or(0);
    Some(t)
}

/// Address family and protocol of a socket; None for non-IP sockets.
#[inline(always)]
pub fn sock_family_protocol(off: &KernelOffsets, sk: u64) -> Option<(u16, u16)> {
    let family: u16 = read(sk, off.sk_family)?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let protocol: u16 = read(sk, off.sk_protocol).unwrap_or(0);
    Some((family, protocol))
}

/// The connection's local and remote ports (`skc_num << 16 | skc_dport`): which connection a
/// socket struct carries now.
#[inline(always)]
pub fn sock_ports(off: &KernelOffsets, sk: u64) -> u32 {
    let local: u16 = read(sk, off.sk_num).unwrap_or(0);
    let remote: u16 = read(sk, off.sk_dport).unwrap_or(0);
    ((local as u32) << 16) | remote as u32
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

/// Whether TCP socket `sk` still carries a connection the application can write to
/// (established, or closed by the peer only). True when this kernel's layout is unknown.
#[inline(always)]
pub fn tcp_connected(off: &KernelOffsets, sk: u64) -> bool {
    if off.sk_state == OFFSET_UNKNOWN {
        return true;
    }
    let state: u8 = read(sk, off.sk_state).unwrap_or(0);
    state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT
}

/// TCP sequence number of the next byte the application writes (egress) or reads (ingress).
/// `struct tcp_sock` begins with `struct sock`, so its offsets apply to the same pointer.
#[inline(always)]
pub fn tcp_seq(off: &KernelOffsets, sk: u64, egress: bool) -> Option<u32> {
    read(
        sk,
        if egress {
            off.tcp_write_seq
        } else {
            off.tcp_copied_seq
        },
    )
}

/// The syscall the current task is in, from the registers it entered the kernel with:
/// (number, arg0, arg1, arg2), read at once where they are adjacent (`KernelOffsets::regs_head`).
/// None when this kernel's `pt_regs` layout is unknown.
#[inline(always)]
pub fn syscall_regs(off: &KernelOffsets) -> Option<(i64, u64, u64, u64)> {
    // SAFETY: helper calls; the task pointer comes from the kernel itself and the registers are
    // read through the fault-tolerant helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let base = off.regs_head;
    if base != OFFSET_UNKNOWN {
        let w: [u8; REGS_HEAD_BYTES] = read(regs, base)?;
        return Some((
            at(&w, base, off.regs_nr)?,
            at(&w, base, off.regs_arg0)?,
            at(&w, base, off.regs_arg1)?,
            at(&w, base, off.regs_arg2)?,
        ));
    }
    Some((
        read::<i64>(regs, off.regs_nr)?,
        read(regs, off.regs_arg0)?,
        read(regs, off.regs_arg1)?,
        read(regs, off.regs_arg2)?,
    ))
}

/// The `T` at `offset` in a BTF-typed kernel object, by one plain load: `base` must be a pointer
/// the verifier knows the type of (a `tp_btf` argument, or what `bpf_task_pt_regs` or
/// `bpf_skc_to_tcp_sock` return), and `offset` a value of `CONFIG`, which lives in a frozen
/// read-only map, so the verifier reads it as a constant. It then checks the access against the
/// type and makes it a fault-tolerant load (a null or stale pointer reads zeros): no helper
/// call, where `read` costs one (`bpf_probe_read_kernel`, ~100 ns in this VM).
#[inline(always)]
fn load<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if offset == OFFSET_UNKNOWN {
        return None;
    }
    // SAFETY: the verifier turns this into a checked, fault-tolerant load (see above); it
    // rejects the program at load time when `base` is not typed or `offset` not constant.
    Some(unsafe { core::ptr::read_volatile((base as *const u8).add(offset as usize) as *const T) })
}

/// [`sock_tuple`] for a BTF-typed `struct sock *` (a `tp_btf` argument): plain loads.
#[inline(always)]
pub fn sock_tuple_btf(off: &KernelOffsets, sk: u64) -> Option<SockTuple> {
    let mut t = SockTuple {
        family: load(sk, off.sk_family)?,
        local_port: load(sk, off.sk_num)?,
        remote_port: u16::from_be(load(sk, off.sk_dport)?),
        ..SockTuple::default()
    };
    if t.family == AF_INET {
        t.local_addr[..4].copy_from_slice(&load::<u32>(sk, off.sk_rcv_saddr)?.to_ne_bytes());
        t.remote_addr[..4].copy_from_slice(&load::<u32>(sk, off.sk_daddr)?.to_ne_bytes());
    } else if t.family == AF_INET6 {
        t.local_addr = load16(sk, off.sk_v6_rcv_saddr)?;
        t.remote_addr = load16(sk, off.sk_v6_daddr)?;
    } else {
        return None;
    }
    t.protocol = load(sk, off.sk_protocol).unwrap_or(0);
    Some(t)
}

/// A 16-byte member (`struct in6_addr`) as two 8-byte loads.
#[inline(always)]
fn load16(base: u64, offset: u32) -> Option<[u8; 16]> {
    let lo: u64 = load(base, offset)?;
    let hi: u64 = load(base, offset.checked_add(8)?)?;
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&lo.to_ne_bytes());
    a[8..].copy_from_slice(&hi.to_ne_bytes());
    Some(a)
}

/// [`tcp_seq`] for a BTF-typed `struct sock *`; None when it is not a TCP socket.
#[inline(always)]
pub fn tcp_seq_btf(off: &KernelOffsets, sk: u64, egress: bool) -> Option<u32> {
    // SAFETY: helper call; it checks the socket is a full TCP socket and returns it typed as
    // `struct tcp_sock *`, or null.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) } as u64;
    if tp == 0 {
        return None;
    }
    load(
        tp,
        if egress {
            off.tcp_write_seq
        } else {
            off.tcp_copied_seq
        },
    )
}

/// [`syscall_regs`] by plain loads: `bpf_task_pt_regs` of the BTF-typed current task returns
/// a typed `struct pt_regs *`.
#[inline(always)]
pub fn syscall_regs_btf(off: &KernelOffsets) -> Option<(i64, u64, u64, u64)> {
    // SAFETY: helper calls; both return typed kernel pointers the verifier checks loads from.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    Some((
        load::<i64>(regs, off.regs_nr)?,
        load(regs, off.regs_arg0)?,
        load(regs, off.regs_arg1)?,
        load(regs, off.regs_arg2)?,
    ))
}

/// TGID of a `struct task_struct *`.
#[inline(always)]
pub fn task_tgid(off: &KernelOffsets, task: u64) -> Option<u32> {
    read(task, off.task_tgid)
}

/// Whether `task`'s process has no live thread left (`task->signal->live == 0`): in
/// `sched_process_exit`, the exiting thread was the last one (the kernel decremented `live`
/// just before the tracepoint, in `do_exit`).
#[inline(always)]
pub fn task_group_dead(off: &KernelOffsets, task: u64) -> Option<bool> {
    let signal: u64 = read(task, off.task_signal)?;
    let live: i32 = read(signal, off.signal_live)?;
    Some(live == 0)
}
