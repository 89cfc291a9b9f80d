//! The binary contract between the kernel probes and the userspace decoder.
//!
//! Every record in the ring buffer starts with an [`EventHeader`]; its `kind` says which struct
//! follows. Structs are `#[repr(C)]`, fixed-layout and free of pointers, so the decoder can read
//! them with bounds checks only. Data events are variable length: the payload head that follows
//! [`DataEvent`] is exactly `cap_len` bytes. Bump [`ABI_VERSION`] on any layout change.
#![no_std]

/// Layout version of everything in this crate (also written into record files).
pub const ABI_VERSION: u32 = 1;

/// Largest payload head a probe can copy per syscall; the runtime cap (`Config::payload_cap`)
/// is at most this. A power of two so the kernel can bound lengths with a mask.
pub const MAX_PAYLOAD: usize = 4096;

/// Ring-buffer record kinds.
pub mod kind {
    pub const DATA: u32 = 1;
    pub const CONN: u32 = 2;
    pub const PROC: u32 = 3;
    /// A write of a traced process to its stdout or stderr (not a socket), with `--capture-logs`:
    /// a [`DataEvent`](super::DataEvent) layout with an all-zero tuple, `fd` 1 or 2, and the
    /// payload head.
    pub const STDIO: u32 = 4;
    /// A TCP state change or retransmit on a socket owned by a traced process: [`NetEvent`](super::NetEvent).
    pub const NET: u32 = 5;
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Process id (thread-group id) of the task that caused the event.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was recorded.
    pub ts_ns: u64,
}

/// Address family values as the kernel uses them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A socket's identity: addresses are in network byte order, IPv4 in the first 4 bytes;
/// ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 when the kernel offers no offset for it.
    pub protocol: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Which syscall produced a data event.
pub mod syscall {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const READV: u8 = 2;
    pub const WRITEV: u8 = 3;
    pub const RECVFROM: u8 = 4;
    pub const SENDTO: u8 = 5;
    pub const RECVMSG: u8 = 6;
    pub const SENDMSG: u8 = 7;
    /// First message of the call only.
    pub const RECVMMSG: u8 = 8;
    pub const SENDMMSG: u8 = 9;
    /// Plaintext returned by OpenSSL's SSL_read/SSL_read_ex (uretprobe).
    pub const SSL_READ: u8 = 10;
    /// Plaintext passed to OpenSSL's SSL_write/SSL_write_ex (uretprobe).
    pub const SSL_WRITE: u8 = 11;
}

/// Data direction, from the traced process's point of view.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// Bytes moved through a socket by one syscall, followed by `cap_len` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub header: EventHeader,
    /// Kernel address of the `struct sock`: stable for the connection's life, unique among live sockets.
    pub sock_id: u64,
    /// Monotonic time when the syscall was entered.
    pub enter_ns: u64,
    /// Bytes the syscall moved (its return value, > 0).
    pub bytes: u64,
    pub tuple: SockTuple,
    pub fd: i32,
    /// TCP sequence number of the first byte moved (sender's `write_seq` before a write,
    /// receiver's `copied_seq` before a read); 0 for non-TCP sockets.
    pub seq: u32,
    /// Payload bytes that follow this struct.
    pub cap_len: u32,
    pub syscall: u8,
    pub direction: u8,
    /// 1 when `seq` is meaningful.
    pub has_seq: u8,
    pub _pad: u8,
}

/// Connection lifecycle kinds.
pub mod conn {
    pub const CONNECT: u8 = 1;
    pub const ACCEPT: u8 = 2;
    pub const CLOSE: u8 = 3;
}

/// A socket connected, accepted or closed by a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub sock_id: u64,
    pub tuple: SockTuple,
    pub fd: i32,
    /// Syscall result (0 or -errno for connect; fd for accept).
    pub ret: i32,
    pub op: u8,
    pub _pad: [u8; 7],
}

/// TCP events seen from `sock:`/`tcp:` tracepoints.
pub mod net {
    /// SYN_SENT → ESTABLISHED: an outgoing connection of a traced process was opened.
    pub const CONNECTED: u8 = 1;
    /// SYN_SENT → CLOSE: an outgoing connection attempt failed (refused, timed out, reset).
    pub const CONNECT_FAILED: u8 = 2;
    /// The kernel retransmitted a segment of the connection.
    pub const RETRANSMIT: u8 = 3;
}

/// A TCP event on a socket a traced process owns. These tracepoints fire in softirq and timer
/// context, where the current task is not the socket's owner: `header.tgid` is the owner the
/// probes recorded when the process connected or accepted the socket; `header.tid` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetEvent {
    pub header: EventHeader,
    pub sock_id: u64,
    pub tuple: SockTuple,
    pub op: u8,
    pub _pad: [u8; 7],
}

/// Process lifecycle kinds.
pub mod proc {
    pub const FORK: u8 = 1;
    pub const EXIT: u8 = 2;
    pub const EXEC: u8 = 3;
    /// A process that is not traced exec'd (only while `Config::report_execs` is set): userspace
    /// matches it against the selectors (`--exe`, `--port`, …).
    pub const EXEC_UNTRACED: u8 = 4;
}

/// A traced process forked a child (now traced too), exec'd, or exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcEvent {
    pub header: EventHeader,
    /// The process the event is about (the child for FORK).
    pub pid: u32,
    /// The parent for FORK; the exit code for EXIT.
    pub other: u32,
    pub op: u8,
    pub _pad: [u8; 7],
}

/// Kernel struct member offsets (bytes), read from the running kernel's BTF by userspace.
/// A value of `u32::MAX` means "unknown": the probe then skips what needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_tgid: u32,
    /// `task_struct.signal` and `signal_struct.live`: whether an exiting thread is the last of
    /// its process, on kernels whose `sched_process_exit` has no `group_dead` field (before 6.x).
    pub task_signal: u32,
    pub signal_live: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_mode: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_protocol: u32,
    /// `sock_common.skc_state` (TCP state, u8): whether a socket an `SSL *` was bound to still
    /// carries a connection (`probes::tls`).
    pub sk_state: u32,
    pub tcp_write_seq: u32,
    pub tcp_copied_seq: u32,
    /// `struct pt_regs` members holding the syscall number and its first three arguments as the
    /// task entered the kernel (x86_64: `orig_ax`, `di`, `si`, `dx`). The socket-layer probes read
    /// the user buffers from them.
    pub regs_nr: u32,
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    /// Start of a [`SOCK_HEAD_BYTES`] window of `struct sock` holding family, ports and IPv4
    /// addresses, read with one helper call instead of five; [`OFFSET_UNKNOWN`] when they do not
    /// fit in one (each is then read on its own).
    pub sk_head: u32,
    /// Start of a [`REGS_HEAD_BYTES`] window of `struct pt_regs` holding the four `regs_*`
    /// members, likewise.
    pub regs_head: u32,
}

pub const OFFSET_UNKNOWN: u32 = u32::MAX;
/// See [`KernelOffsets::sk_head`].
pub const SOCK_HEAD_BYTES: usize = 24;
/// See [`KernelOffsets::regs_head`].
pub const REGS_HEAD_BYTES: usize = 32;

/// The smallest offset of `fields` ((offset, size) pairs) when all of them lie within `span`
/// bytes from it, else [`OFFSET_UNKNOWN`]: where one read can fetch them all.
pub fn common_window(fields: &[(u32, u32)], span: usize) -> u32 {
    let mut base = OFFSET_UNKNOWN;
    for &(off, _) in fields {
        if off == OFFSET_UNKNOWN {
            return OFFSET_UNKNOWN;
        }
        base = base.min(off);
    }
    let fits = fields
        .iter()
        .all(|&(off, size)| (off - base) as usize + size as usize <= span);
    if fits { base } else { OFFSET_UNKNOWN }
}

impl KernelOffsets {
    pub const UNKNOWN: Self = Self {
        task_files: OFFSET_UNKNOWN,
        task_tgid: OFFSET_UNKNOWN,
        task_signal: OFFSET_UNKNOWN,
        signal_live: OFFSET_UNKNOWN,
        files_fdt: OFFSET_UNKNOWN,
        fdt_max_fds: OFFSET_UNKNOWN,
        fdt_fd: OFFSET_UNKNOWN,
        file_f_inode: OFFSET_UNKNOWN,
        file_private_data: OFFSET_UNKNOWN,
        inode_i_mode: OFFSET_UNKNOWN,
        socket_sk: OFFSET_UNKNOWN,
        sk_family: OFFSET_UNKNOWN,
        sk_num: OFFSET_UNKNOWN,
        sk_dport: OFFSET_UNKNOWN,
        sk_rcv_saddr: OFFSET_UNKNOWN,
        sk_daddr: OFFSET_UNKNOWN,
        sk_v6_rcv_saddr: OFFSET_UNKNOWN,
        sk_v6_daddr: OFFSET_UNKNOWN,
        sk_protocol: OFFSET_UNKNOWN,
        sk_state: OFFSET_UNKNOWN,
        tcp_write_seq: OFFSET_UNKNOWN,
        tcp_copied_seq: OFFSET_UNKNOWN,
        regs_nr: OFFSET_UNKNOWN,
        regs_arg0: OFFSET_UNKNOWN,
        regs_arg1: OFFSET_UNKNOWN,
        regs_arg2: OFFSET_UNKNOWN,
        sk_head: OFFSET_UNKNOWN,
        regs_head: OFFSET_UNKNOWN,
    };
}

/// Run-time settings, written into the probes' read-only global `CONFIG` at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Payload head bytes to copy per syscall (≤ [`MAX_PAYLOAD`]).
    pub payload_cap: u32,
    /// 1: children of traced processes are traced too.
    pub follow_children: u32,
    /// Offset of `group_dead` in the `sched:sched_process_exit` record (from its format file).
    pub exit_group_dead_offset: u32,
    /// 1: writes of traced processes to fds 1 and 2 that are not sockets become `kind::STDIO`
    /// records (`--capture-logs`).
    pub capture_stdio: u32,
    /// Offsets in the `sock:inet_sock_set_state` record of `skaddr`, `oldstate`, `newstate`, and
    /// in `tcp:tcp_retransmit_skb` of `skaddr` (from the tracepoints' format files; `u32::MAX`
    /// when unknown, which disables the network probes).
    pub set_state_skaddr_offset: u32,
    pub set_state_old_offset: u32,
    pub set_state_new_offset: u32,
    pub retransmit_skaddr_offset: u32,
    /// 1: socket data comes from the socket-layer probes (`probes::sock`); the syscall probes,
    /// if attached at all (for `--capture-logs`), leave sockets alone.
    pub socket_mode: u32,
    /// 1: every exec on the host is reported (`proc::EXEC_UNTRACED`), for selectors.
    pub report_execs: u32,
    pub offsets: KernelOffsets,
}

impl Config {
    pub const DEFAULT: Self = Self {
        payload_cap: 512,
        follow_children: 1,
        exit_group_dead_offset: 32,
        capture_stdio: 0,
        set_state_skaddr_offset: OFFSET_UNKNOWN,
        set_state_old_offset: OFFSET_UNKNOWN,
        set_state_new_offset: OFFSET_UNKNOWN,
        retransmit_skaddr_offset: OFFSET_UNKNOWN,
        socket_mode: 0,
        report_execs: 0,
        offsets: KernelOffsets::UNKNOWN,
    };
}

/// The traced set: one byte per TGID in the `TRACED` array, holding the process's flags
/// ([`YES`](traced::YES), [`TLS`](traced::TLS)); 0 = not traced. Eight bytes to a map entry (an
/// array's entries are 8-byte aligned in the kernel: a one-byte value would take eight), so the
/// byte of `tgid` is byte `tgid` of the map's memory, which userspace maps (`BPF_F_MMAPABLE`).
/// A byte, not a bit, and no separate hash map: every writer stores one whole byte (the probes
/// with a plain store, userspace with an atomic one through the mapping), so no writer can undo
/// a neighbour's byte stored at the same time on another CPU, and the probes' question "is this
/// process traced, and how" is one inlined array load, never a helper call.
pub mod traced {
    /// Traced.
    pub const YES: u8 = 1;
    /// Its libssl is probed: socket calls note their socket for an OpenSSL call in progress.
    pub const TLS: u8 = 2;

    pub const PER_WORD: u32 = 8;
    /// Entries for the largest `pid_max` Linux allows (`PID_MAX_LIMIT`, 2^22): the map covers
    /// every TGID the kernel can hand out, even after `pid_max` is raised while ztrace runs
    /// (4 MiB of kernel memory).
    pub const WORDS: u32 = (1 << 22) / PER_WORD;
    /// Bytes of the map's memory.
    pub const BYTES: usize = WORDS as usize * PER_WORD as usize;

    /// Entry index of `tgid`, and the shift of its byte in that entry's value (little-endian, as
    /// BPF and its hosts are).
    pub const fn slot(tgid: u32) -> (u32, u32) {
        (tgid / PER_WORD, 8 * (tgid % PER_WORD))
    }
}

/// Indexes of the per-CPU drop/health counters array.
pub mod counter {
    /// Ring buffer full: an event was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The per-thread syscall-argument map was full at syscall entry.
    pub const ARGS_FULL: u32 = 1;
    /// A kernel struct read failed (socket lookup or payload copy).
    pub const READ_FAILED: u32 = 2;
    /// Events submitted.
    pub const SUBMITTED: u32 = 3;
    /// OpenSSL plaintext dropped: the call's `SSL *` had no known socket (a memory-BIO stack
    /// such as Node.js before its first unambiguous ciphertext read; see `probes::tls`).
    pub const TLS_UNATTRIBUTED: u32 = 4;
    /// An `SSL *` bound to its socket from the ciphertext read before its `SSL_read`.
    pub const TLS_LEARNT: u32 = 5;
    /// An `SSL_read` after ciphertext reads on several sockets (of an `SSL *` with no known
    /// socket), or after another socket's non-handshake records (of a bound one): nothing is
    /// bound (a wrong connection is worse than none).
    pub const TLS_AMBIGUOUS: u32 = 6;
    /// A known `SSL *` seen reading another socket's ciphertext (its address was reused by a
    /// new connection): bound anew.
    pub const TLS_REBOUND: u32 = 7;
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid, no padding bytes left implicit.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
