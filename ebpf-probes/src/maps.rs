//! Maps shared by the probes, and the read-only configuration userspace writes at load time.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use ztrace_abi::{Config, DataEvent, EventHeader, MAX_PAYLOAD, counter, traced};

#[unsafe(no_mangle)]
pub static CONFIG: Global<Config> = Global::new(Config::DEFAULT);

/// `BPF_F_MMAPABLE`: userspace maps `TRACED` and stores single bytes through the mapping.
const BPF_F_MMAPABLE: u32 = 1024;

/// The traced set: the `ztrace_abi::traced` flags of every TGID, a byte each (0 = not traced).
/// Userspace seeds it before the probes attach and adds processes a selector matches later;
/// fork copies the parent's byte to the child, exit of the last thread clears it, the OpenSSL
/// probes add `TLS`. The verifier inlines an array lookup into a load: asking whether a process
/// is traced costs no helper call (a `TRACED` hash lookup, ~75 ns per traced socket call, was
/// the previous design).
///
/// Exact because every process that leaves the set passes through `sched_process_exit` with
/// `group_dead` (see `probes::sched` for when that can be missed, and what userspace does).
#[map]
pub static TRACED: Array<u64> = Array::with_max_entries(traced::WORDS, BPF_F_MMAPABLE);

/// What a syscall's exit needs from its entry, per thread (pid_tgid). LRU so a thread that dies
/// inside a syscall cannot leak an entry forever.
#[map]
pub static ARGS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(65536, 0);

/// All events. Userspace may resize it before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU health counters, indexed by `ztrace_abi::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU scratch space where a data event is built before it is copied into the ring buffer
/// at its real (variable) length; too large for the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<DataBuf> = PerCpuArray::with_max_entries(1, 0);

/// The payload area is twice the largest capture so that a copy at any offset below
/// `MAX_PAYLOAD` of at most `MAX_PAYLOAD` bytes is provably in bounds for the verifier.
#[repr(C)]
pub struct DataBuf {
    pub event: DataEvent,
    pub payload: [u8; 2 * MAX_PAYLOAD],
}

/// Saved at syscall entry for the matching exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    /// `struct sock *` of the fd (0 for syscalls that do not need it yet, e.g. connect).
    pub sock: u64,
    /// User buffer, or first `struct iovec` for vectored I/O.
    pub buf: u64,
    pub enter_ns: u64,
    pub fd: i32,
    pub seq: u32,
    pub syscall: u8,
    pub direction: u8,
    pub vectored: u8,
    pub has_seq: u8,
    /// Number of iovecs (vectored I/O only).
    pub iovcnt: u32,
    /// The `user_msghdr` (or first `mmsghdr`) of sendmsg/recvmsg/sendmmsg/recvmmsg.
    pub msgvec: u64,
}

/// The configuration, by reference: copying it (as `Global::load` does) put ~150 bytes on the
/// 512-byte BPF stack at every use.
#[inline(always)]
pub fn config() -> &'static Config {
    let ptr = core::ptr::addr_of!(CONFIG) as *const Config;
    // SAFETY: `Global<Config>` is a single `MaybeUninit<Config>` that the loader always fills.
    // The address passes through a volatile read so that the compiler cannot fold the fields to
    // their build-time defaults (the loader rewrites them).
    unsafe { &*core::ptr::read_volatile(&ptr) }
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *ptr += 1 };
    }
}

/// The byte of `tgid` in `TRACED`; None past the end (cannot happen: the map covers
/// `PID_MAX_LIMIT`).
#[inline(always)]
fn traced_byte(tgid: u32) -> Option<*mut u8> {
    let (word, shift) = traced::slot(tgid);
    let ptr = TRACED.get_ptr_mut(word)?;
    // SAFETY: `shift / 8` < 8 is inside the 8-byte map value `ptr` points to, valid while the
    // program runs.
    Some(unsafe { (ptr as *mut u8).add((shift / 8) as usize) })
}

/// Stores `tgid`'s flags (0: no longer traced): a one-byte store, which cannot disturb the
/// neighbouring bytes other CPUs or userspace write meanwhile.
#[inline(always)]
pub fn set_traced(tgid: u32, flags: u8) {
    if let Some(byte) = traced_byte(tgid) {
        // SAFETY: see `traced_byte`.
        unsafe { core::ptr::write_volatile(byte, flags) };
    }
}

/// The flags of a traced process (`ztrace_abi::traced`), None when it is not traced.
#[inline(always)]
pub fn traced_flags(tgid: u32) -> Option<u8> {
    let (word, shift) = traced::slot(tgid);
    // One load of the entry, then a shift: the same instructions as testing a pre-filter.
    let flags = (*TRACED.get(word)? >> shift) as u8;
    (flags != 0).then_some(flags)
}

/// The flags of a traced process, writable (a byte of `TRACED`); None when it is not traced.
#[inline(always)]
pub fn traced_flags_mut(tgid: u32) -> Option<*mut u8> {
    let byte = traced_byte(tgid)?;
    // SAFETY: see `traced_byte`.
    (unsafe { core::ptr::read_volatile(byte) } != 0).then_some(byte)
}

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    traced_flags(tgid).is_some()
}

/// Header of a record about the current task.
#[inline(always)]
pub fn header(kind: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        _pad: 0,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Bytes a CPU submits between two records that wake the reader.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Per-CPU count of bytes submitted since this CPU last woke the reader (see `submit`).
#[map]
pub static SINCE_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Copies a record into the ring buffer, counting it as submitted or lost. Records do not wake
/// the reader one by one (each wake-up is an interrupt-work item and a context switch, paid
/// partly by the traced process's CPU): userspace drains on a short timer, and a CPU wakes it
/// once per `WAKEUP_BYTES` it submitted. The count is a per-CPU array slot (an inlined load),
/// where asking the ring for its backlog (`bpf_ringbuf_query`) was a helper call per record.
#[inline(always)]
pub fn submit<T: ?Sized>(record: &T) {
    let mut flags = BPF_RB_NO_WAKEUP;
    if let Some(since) = SINCE_WAKEUP.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe {
            *since += core::mem::size_of_val(record) as u64;
            if *since >= WAKEUP_BYTES {
                *since = 0;
                flags = BPF_RB_FORCE_WAKEUP;
            }
        }
    }
    match EVENTS.output::<T>(record, flags) {
        Ok(()) => count(counter::SUBMITTED),
        Err(_) => count(counter::RINGBUF_FULL),
    }
}

/// An OpenSSL call in progress on a thread (pid_tgid → call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    pub ssl: u64,
    pub buf: u64,
    /// `size_t *` of the `_ex` variants (bytes moved), 0 for SSL_read/SSL_write.
    pub out_len: u64,
    /// The socket the call's own read/write syscall used, when it made one.
    pub sock: u64,
    pub enter_ns: u64,
    pub direction: u8,
    /// `seq` is the TCP sequence number of the ciphertext this call's plaintext travels in
    /// (memory-BIO stacks only, see `probes::tls`).
    pub has_seq: u8,
    pub _pad: [u8; 2],
    pub seq: u32,
}

#[map]
pub static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// Threads with OpenSSL state, by slot (a thread's slot is its TID modulo `TLS_BUSY_SLOTS`): how
/// many `SSL_CALLS` and `PENDING_WRITES` entries the threads of the slot hold. A socket call of a
/// TLS process asks the slot first, an inlined array load, and skips those hash lookups (one on
/// a receive, two on a send, ~30 ns each) when it holds 0: a process that links libssl but talks
/// plain TCP on most sockets (nginx, a proxy) does not pay for them.
///
/// Exact in the direction that matters: a count rises before its entry can be looked up (same
/// thread) and falls only when our program deleted the entry it counted. An entry the LRU
/// evicts, or one a thread that died inside an OpenSSL call left, keeps its slot above 0: the
/// lookups of that slot's threads then run as before, never skipped wrongly.
#[map]
pub static TLS_BUSY: Array<u64> = Array::with_max_entries(TLS_BUSY_SLOTS, 0);
const TLS_BUSY_SLOTS: u32 = 4096;

/// A new `SSL_CALLS` or `PENDING_WRITES` entry of thread `pid_tgid` (see `TLS_BUSY`).
#[inline(always)]
pub(crate) fn tls_busy_add(pid_tgid: u64) {
    if let Some(n) = TLS_BUSY.get_ptr_mut(pid_tgid as u32 & (TLS_BUSY_SLOTS - 1)) {
        // SAFETY: a slot of our array; threads of other CPUs may share it, hence atomic.
        unsafe { atomic_add(n, 1) };
    }
}

/// An entry counted by `tls_busy_add` was deleted by this thread's program.
#[inline(always)]
pub(crate) fn tls_busy_remove(pid_tgid: u64) {
    if let Some(n) = TLS_BUSY.get_ptr_mut(pid_tgid as u32 & (TLS_BUSY_SLOTS - 1)) {
        // SAFETY: as in `tls_busy_add`; adding 2^64 - 1 subtracts 1.
        unsafe { atomic_add(n, u64::MAX) };
    }
}

/// `*dst += v` as one atomic instruction (BPF `lock xadd`, which every kernel the probes load on
/// has). `core`'s atomic types offer no read-modify-write on this target, hence the intrinsic.
///
/// # Safety
/// `dst` points into a map value.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, v: u64) {
    // SAFETY: the caller's pointer; the result is not used, so no BPF_FETCH is needed.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, v,
        )
    };
}

/// False when thread `pid_tgid` certainly holds no `SSL_CALLS` or `PENDING_WRITES` entry.
#[inline(always)]
pub(crate) fn tls_busy(pid_tgid: u64) -> bool {
    match TLS_BUSY.get_ptr(pid_tgid as u32 & (TLS_BUSY_SLOTS - 1)) {
        // SAFETY: a slot of our array, read once.
        Some(n) => (unsafe { core::ptr::read_volatile(n) }) != 0,
        None => true,
    }
}

/// Which socket an `SSL *` talks over, learnt from syscalls made inside SSL calls or, for
/// memory-BIO stacks, from the ciphertext read before an `SSL_read` (`probes::tls`).
#[map]
pub static SSL_SOCKS: LruHashMap<u64, SslSock> = LruHashMap::with_max_entries(65536, 0);

/// The socket of an `SSL *`, and the connection's ports when it was bound: a socket struct
/// freed and reused by another connection has other ports.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslSock {
    pub sock: u64,
    pub ports: u32,
    pub _pad: u32,
}

/// What a thread of a TLS process read outside OpenSSL calls since its last one: the evidence a
/// memory-BIO stack (Node.js) leaves of which socket its next `SSL_read` decrypts.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsReads {
    /// The socket of the first read that looked like TLS records.
    pub sock: u64,
    /// TCP sequence number of that read's first byte (valid when `has_seq`).
    pub seq: u32,
    pub has_seq: u8,
    /// Set once a TLS-looking read came from another socket too: the evidence names no socket.
    pub several: u8,
    /// The first read began with a handshake record (a connection starting).
    pub handshake: u8,
    pub _pad: u8,
}

#[map]
pub static TLS_READS: LruHashMap<u64, TlsReads> = LruHashMap::with_max_entries(16384, 0);

/// Per thread, the plaintext record of an `SSL_write` whose `SSL *` had no known socket yet,
/// held until the socket shows (`probes::tls`); `event.sock_id` holds the `SSL *` meanwhile.
/// One per thread that writes before its first read (a TLS client's first request); LRU, 8 KiB
/// each, so small.
#[map]
pub static PENDING_WRITES: LruHashMap<u64, DataBuf> = LruHashMap::with_max_entries(256, 0);

/// Owner (TGID) of each TCP socket a traced process connected or accepted, for the `sock:`/`tcp:`
/// tracepoints that fire outside the owner's context (see `probes::net`). LRU: bounded.
#[map]
pub static NET_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Sockets whose owner `NET_SOCKS` is known to hold, direct-mapped by address, so that a socket
/// call on a connection seen before costs an inlined array load instead of a `NET_SOCKS` lookup
/// (a helper call, ~40 ns per traced TCP call here). A slot holds the socket and its ports: a
/// socket struct freed and reused by another connection has other ports (and its slot is
/// cleared when the first reaches TCP_CLOSE, `forget_owner`). Two sockets sharing a slot take
/// turns: the other one is looked up in `NET_SOCKS` as before. Slots are written without
/// atomics; a torn slot (two CPUs writing it at once) matches neither socket, or at worst skips
/// one `NET_SOCKS` insert for a socket whose ports equal the other's.
///
/// A slot also holds the epoch (~134 ms, `EPOCH_SHIFT`) of its last `NET_SOCKS` lookup, and in a
/// later epoch the lookup runs again. `NET_SOCKS` is an LRU map, and only lookups mark an entry
/// as used: without them a busy connection's entry would age like an idle one's, and once the
/// map is full it would be evicted first, taking the attribution of its retransmits and close
/// with it. A lookup per connection every ~134 ms keeps it marked, as every call did before,
/// unless the map turns over faster than that (a new connection per entry in 134 ms).
#[map]
pub static KNOWN_SOCKS: Array<KnownSock> = Array::with_max_entries(KNOWN_SOCK_SLOTS, 0);

const KNOWN_SOCK_SLOTS: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct KnownSock {
    pub sock: u64,
    /// Local port, and the remote port shifted 16 bits up.
    pub ports: u32,
    /// The epoch of the last `NET_SOCKS` lookup for this socket (`epoch`).
    pub epoch: u32,
}

/// A `KNOWN_SOCKS` epoch is 2^27 ns, about 134 ms.
const EPOCH_SHIFT: u32 = 27;

/// The `KNOWN_SOCKS` epoch of monotonic time `ns`.
#[inline(always)]
pub fn epoch(ns: u64) -> u32 {
    (ns >> EPOCH_SHIFT) as u32
}

/// The slot of socket `sk`: socket structs lie a few KiB apart in their slab, so the low bits
/// carry nothing.
#[inline(always)]
fn known_slot(sk: u64) -> u32 {
    ((sk >> 8) ^ (sk >> 20)) as u32 & (KNOWN_SOCK_SLOTS - 1)
}

/// Whether `NET_SOCKS` is known to hold the owner of `sk` (with these ports), as looked up in
/// this epoch.
#[inline(always)]
pub fn owner_known(sk: u64, ports: u32, epoch: u32) -> bool {
    KNOWN_SOCKS
        .get(known_slot(sk))
        .is_some_and(|k| k.sock == sk && k.ports == ports && k.epoch == epoch)
}

/// Notes that `NET_SOCKS` holds the owner of `sk`, looked up in `epoch`.
#[inline(always)]
pub fn owner_noted(sk: u64, ports: u32, epoch: u32) {
    if let Some(k) = KNOWN_SOCKS.get_ptr_mut(known_slot(sk)) {
        // SAFETY: a map value, valid while the program runs (see the map for races).
        unsafe {
            (*k).sock = sk;
            (*k).ports = ports;
            (*k).epoch = epoch;
        }
    }
}

/// `sk` is closing: its struct may soon be another socket's.
#[inline(always)]
pub fn forget_owner(sk: u64) {
    if let Some(k) = KNOWN_SOCKS.get_ptr_mut(known_slot(sk)) {
        // SAFETY: as in `owner_noted`.
        unsafe {
            if (*k).sock == sk {
                (*k).sock = 0;
            }
        }
    }
}

/// A socket call on thread `pid_tgid`: if the thread is inside an OpenSSL call, that call talks
/// over socket `sk` (how plaintext is tied to its connection). True when it was inside one.
#[inline(always)]
pub(crate) fn note_ssl_socket(flags: u8, pid_tgid: u64, sk: u64) -> bool {
    // Only processes whose libssl is probed can have a call in progress, and only a thread whose
    // `TLS_BUSY` slot counts an entry: the others skip the map lookup (one of the costlier steps
    // of a socket probe).
    if flags & traced::TLS == 0 || !tls_busy(pid_tgid) {
        return false;
    }
    match SSL_CALLS.get_ptr_mut(pid_tgid) {
        Some(call) => {
            // SAFETY: our own map value, written only by this thread's programs.
            unsafe { (*call).sock = sk };
            true
        }
        None => false,
    }
}
