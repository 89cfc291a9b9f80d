//! A seccomp allow-list for the daemon: once the probes are loaded (and the record file is
//! open), before the daemon starts a thread or reads a byte of captured data, collector
//! answer, peer message or ELF file, ztrace tells the kernel which system calls it may still
//! make. A compromise of a parser then cannot exec a program, ptrace or write into another
//! process, load a kernel module or a new BPF program, mount, change namespaces, kexec …
//!
//! The list is what ztrace does after start-up in every mode, found with `strace -f` over the
//! end-to-end tests (live tracing with TLS probes put on processes that appear later, OTLP over
//! gRPC and HTTP with TLS, cross-host peers, OpAMP, recording, log capture, SIGHUP reload, the
//! exit path) and by reading what tokio, rustls, aya and glibc's resolver call. Each entry says
//! which path needs it. Some entries look at an argument too:
//! - `openat` only without a write flag: after start-up ztrace writes only to descriptors it
//!   already holds (the record file, stdout/stderr, sockets), so no file on the host — not
//!   `/proc/PID/mem`, not `/etc` — can be opened for writing;
//! - `bpf` only the commands that attaching loaded programs, map access and statistics need:
//!   no `BPF_PROG_LOAD` (a new program could write user memory), no map creation, no getting
//!   another tool's programs or maps by id;
//! - `clone` only for threads (no fork, no new namespaces); `clone3` fails with ENOSYS, so
//!   glibc falls back to `clone`, whose flags a filter can read;
//! - `socket` only for IPv4, IPv6 and Unix sockets (the conntrack netlink socket of cross-host
//!   links is opened before the privilege drop); `ioctl` only the few requests used;
//!   `prctl` only thread names and mapping names; `tgkill` only on ztrace itself.
//!
//! Anything else fails with EPERM (`SECCOMP_RET_ERRNO`) rather than killing the daemon: a path
//! the list missed (a rare resolver configuration, a newer glibc) then surfaces as an error
//! ztrace reports ("Operation not permitted") while it goes on tracing, instead of a dead
//! tracer and lost telemetry on a production host. The kernel logs each refused call (audit
//! type 1326, `SECCOMP_FILTER_FLAG_LOG`) with its number, which is what a bug report needs;
//! that includes one `clone3` (435) per new thread, refused on purpose.
//! A system call of another ABI (32-bit `int 0x80`, x32) is never made by ztrace, so one can
//! only come from injected code: that kills the process.
//!
//! The filter is installed with `SECCOMP_FILTER_FLAG_TSYNC` (every thread, should a library
//! have started one) and needs no_new_privs, which [`super::privdrop`] sets. `--no-seccomp`
//! turns it off for debugging.

use std::io;

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

// struct seccomp_data (linux/seccomp.h): nr, arch, instruction_pointer, args[6].
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (both supported architectures are little-endian). Every
/// argument looked at is an `int` or `unsigned int` for the kernel, or a flags word whose
/// upper half the system call ignores (`clone`), so the low half is the whole value.
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
#[cfg(not(target_endian = "little"))]
compile_error!("the seccomp filter reads argument words as little-endian");

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("ztrace's seccomp allow-list knows x86_64 and aarch64");
/// x32 system calls are x86_64 numbers with this bit set, under the x86_64 audit arch.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const fn ret_errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// What one listed system call may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Allow,
    /// Fails with this errno without running (a call with a fallback ztrace prefers).
    Errno(i32),
    /// Allowed when argument `arg` is one of `values`.
    OneOf {
        arg: u32,
        values: &'static [u32],
    },
    /// Allowed when argument `arg` masked with `mask` equals `value`.
    Masked {
        arg: u32,
        mask: u32,
        value: u32,
    },
    /// Allowed when argument `arg` is ztrace's own process id (or 0, "this process").
    OwnPid {
        arg: u32,
    },
}

/// A system call ztrace makes after start-up, by number and name, and the path that needs it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub nr: libc::c_long,
    pub name: &'static str,
    pub rule: Rule,
    pub why: &'static str,
}

macro_rules! entry {
    ($sys:ident, $rule:expr, $why:literal) => {
        Entry {
            nr: libc::$sys,
            name: stringify!($sys),
            rule: $rule,
            why: $why,
        }
    };
}

use Rule::{Allow, Errno, Masked, OneOf, OwnPid};

// `bpf` commands (linux/bpf.h) used after the probes are loaded.
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;
const BPF_LINK_CREATE: u32 = 28;

// `ioctl` requests used (asm-generic/ioctls.h, linux/perf_event.h).
const TCGETS: u32 = 0x5401;
const TIOCGWINSZ: u32 = 0x5413;
const FIONREAD: u32 = 0x541B;
const FIONBIO: u32 = 0x5421;
const FIOCLEX: u32 = 0x5451;
const PERF_EVENT_IOC_ENABLE: u32 = 0x2400;
const PERF_EVENT_IOC_DISABLE: u32 = 0x2401;
const PERF_EVENT_IOC_SET_BPF: u32 = 0x4004_2408;

const PR_SET_NAME: u32 = 15;
const PR_GET_NAME: u32 = 16;
const PR_SET_VMA: u32 = 0x5356_4d41;

/// `clone` flags that make something other than a thread of this process.
const CLONE_THREAD: u32 = libc::CLONE_THREAD as u32;
const CLONE_NEW: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
/// `open` flags that write.
const O_WRITE: u32 = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u32;

/// The allow-list, the most frequent calls first (the kernel caches the verdict of calls whose
/// arguments the filter does not read, so order matters only for the others).
pub const LIST: &[Entry] = &[
    entry!(SYS_futex, Allow, "tokio's parking, locks"),
    entry!(SYS_read, Allow, "sockets, /proc, ELF files, BTF"),
    entry!(SYS_write, Allow, "sockets, stderr, the record file"),
    #[cfg(target_arch = "x86_64")]
    entry!(SYS_epoll_wait, Allow, "tokio's reactor"),
    entry!(
        SYS_epoll_pwait,
        Allow,
        "tokio's reactor (aarch64 has no epoll_wait)"
    ),
    entry!(SYS_recvfrom, Allow, "OTLP, peer and OpAMP sockets"),
    entry!(SYS_sendto, Allow, "OTLP, peer and OpAMP sockets"),
    entry!(SYS_writev, Allow, "hyper's vectored writes"),
    entry!(
        SYS_sendmmsg,
        Allow,
        "glibc's resolver (A and AAAA queries at once)"
    ),
    entry!(
        SYS_openat,
        Masked {
            arg: 2,
            mask: O_WRITE,
            value: 0
        },
        "/proc/PID/*, executables and libssl, config reload; read only"
    ),
    entry!(SYS_close, Allow, "every descriptor"),
    entry!(
        SYS_statx,
        Allow,
        "std's metadata (/proc, ELF files, device+inode checks)"
    ),
    entry!(SYS_newfstatat, Allow, "glibc's stat"),
    entry!(SYS_lseek, Allow, "file reads"),
    entry!(SYS_pread64, Allow, "ELF sections of executables and libssl"),
    entry!(SYS_readlinkat, Allow, "/proc/PID/exe, /proc/PID/fd/N"),
    #[cfg(target_arch = "x86_64")]
    entry!(SYS_readlink, Allow, "/proc/PID/exe, /proc/PID/fd/N"),
    entry!(SYS_getdents64, Allow, "listing /proc (selectors, children)"),
    entry!(SYS_faccessat, Allow, "glibc, mimalloc (NUMA nodes)"),
    #[cfg(target_arch = "x86_64")]
    entry!(SYS_access, Allow, "mimalloc (NUMA nodes)"),
    entry!(SYS_madvise, Allow, "mimalloc purges freed pages"),
    entry!(SYS_mmap, Allow, "memory; the ring buffer; the traced set"),
    entry!(SYS_munmap, Allow, "memory"),
    entry!(
        SYS_mprotect,
        Allow,
        "thread stack guards; glibc loading NSS modules"
    ),
    entry!(SYS_mremap, Allow, "realloc of large buffers"),
    entry!(SYS_brk, Allow, "glibc's malloc (libraries that use it)"),
    entry!(SYS_getrandom, Allow, "rustls, hash map seeds, span ids"),
    entry!(SYS_epoll_ctl, Allow, "tokio's reactor"),
    entry!(SYS_epoll_create1, Allow, "tokio's reactor"),
    entry!(SYS_eventfd2, Allow, "tokio's waker"),
    entry!(
        SYS_clone,
        Masked {
            arg: 0,
            mask: CLONE_THREAD | CLONE_NEW,
            value: CLONE_THREAD
        },
        "threads (tokio workers and blocking pool, TLS inspection); no fork"
    ),
    entry!(
        SYS_clone3,
        Errno(libc::ENOSYS),
        "glibc falls back to clone, whose flags the filter can see"
    ),
    entry!(SYS_set_robust_list, Allow, "new threads"),
    entry!(SYS_rseq, Allow, "new threads (glibc)"),
    entry!(
        SYS_sigaltstack,
        Allow,
        "new threads (Rust's stack overflow handler)"
    ),
    entry!(SYS_rt_sigprocmask, Allow, "new threads, signals"),
    entry!(
        SYS_rt_sigaction,
        Allow,
        "tokio's SIGINT/SIGTERM/SIGHUP handlers"
    ),
    entry!(SYS_rt_sigreturn, Allow, "return from a signal handler"),
    entry!(SYS_restart_syscall, Allow, "a call interrupted by a signal"),
    entry!(SYS_sched_getaffinity, Allow, "std's available_parallelism"),
    entry!(SYS_sched_yield, Allow, "spin locks"),
    entry!(SYS_gettid, Allow, "threads"),
    entry!(SYS_getpid, Allow, "never tracing itself"),
    entry!(SYS_exit, Allow, "a thread ends"),
    entry!(SYS_exit_group, Allow, "ztrace ends"),
    entry!(SYS_clock_gettime, Allow, "clocks (when the vDSO cannot)"),
    entry!(SYS_clock_nanosleep, Allow, "sleeps"),
    entry!(SYS_nanosleep, Allow, "sleeps"),
    entry!(
        SYS_tgkill,
        OwnPid { arg: 0 },
        "abort() signals its own thread; nothing else"
    ),
    entry!(
        SYS_prctl,
        OneOf {
            arg: 0,
            values: &[PR_SET_NAME, PR_GET_NAME, PR_SET_VMA]
        },
        "thread names (tokio), mimalloc's mapping names"
    ),
    entry!(
        SYS_ioctl,
        OneOf {
            arg: 1,
            values: &[
                TCGETS,
                TIOCGWINSZ,
                FIONREAD,
                FIONBIO,
                FIOCLEX,
                PERF_EVENT_IOC_ENABLE,
                PERF_EVENT_IOC_DISABLE,
                PERF_EVENT_IOC_SET_BPF,
            ]
        },
        "is stderr a terminal, non-blocking sockets, perf events (kernels without BPF links); no TIOCSTI"
    ),
    entry!(
        SYS_fcntl,
        Allow,
        "descriptor flags (non-blocking, close-on-exec, dup)"
    ),
    entry!(
        SYS_socket,
        OneOf {
            arg: 0,
            values: &[
                libc::AF_INET as u32,
                libc::AF_INET6 as u32,
                libc::AF_UNIX as u32
            ]
        },
        "OTLP, peer and OpAMP connections, the resolver (nscd, systemd-resolved); no raw or netlink sockets"
    ),
    entry!(
        SYS_socketpair,
        OneOf {
            arg: 0,
            values: &[libc::AF_UNIX as u32]
        },
        "tokio's signal driver"
    ),
    entry!(SYS_connect, Allow, "OTLP, peers, OpAMP, the resolver"),
    entry!(SYS_bind, Allow, "--peer-listen"),
    entry!(SYS_listen, Allow, "--peer-listen"),
    entry!(SYS_accept4, Allow, "--peer-listen"),
    entry!(SYS_shutdown, Allow, "closing connections"),
    entry!(SYS_setsockopt, Allow, "TCP_NODELAY, keep-alive"),
    entry!(SYS_getsockopt, Allow, "SO_ERROR after a connect"),
    entry!(SYS_getsockname, Allow, "the peer listener's address"),
    #[cfg(target_arch = "x86_64")]
    entry!(SYS_poll, Allow, "glibc's resolver waits for answers"),
    entry!(SYS_ppoll, Allow, "glibc's resolver waits for answers"),
    entry!(SYS_uname, Allow, "kernel version (aya, host facts)"),
    entry!(
        SYS_perf_event_open,
        Allow,
        "uprobes on libssl of processes that appear later"
    ),
    entry!(
        SYS_bpf,
        OneOf {
            arg: 0,
            values: &[
                BPF_MAP_LOOKUP_ELEM,
                BPF_MAP_UPDATE_ELEM,
                BPF_OBJ_GET_INFO_BY_FD,
                BPF_RAW_TRACEPOINT_OPEN,
                BPF_LINK_CREATE,
            ]
        },
        "the traced set, counters, attaching loaded programs, --probe-stats costs; no program loads"
    ),
    entry!(
        SYS_ftruncate,
        Allow,
        "OpAMP: a uid the server assigns, into the file opened at start"
    ),
    entry!(
        SYS_pwrite64,
        Allow,
        "OpAMP: a uid the server assigns, into the file opened at start"
    ),
];

/// System calls the list must never hold, with what they would let a compromised parser do.
/// The filter refuses them like anything unlisted; a test keeps them out of [`LIST`].
pub const DENIED: &[(libc::c_long, &str)] = &[
    (libc::SYS_execve, "run a program"),
    (libc::SYS_execveat, "run a program"),
    (libc::SYS_ptrace, "control another process"),
    (
        libc::SYS_process_vm_writev,
        "write another process's memory",
    ),
    (libc::SYS_process_vm_readv, "read another process's memory"),
    (libc::SYS_pidfd_getfd, "steal another process's descriptors"),
    (libc::SYS_init_module, "load a kernel module"),
    (libc::SYS_finit_module, "load a kernel module"),
    (libc::SYS_delete_module, "unload a kernel module"),
    (libc::SYS_kexec_load, "boot another kernel"),
    (libc::SYS_kexec_file_load, "boot another kernel"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "unmount"),
    (libc::SYS_pivot_root, "change the root"),
    (libc::SYS_chroot, "change the root"),
    (libc::SYS_open_by_handle_at, "open a file outside its mount"),
    (libc::SYS_setns, "enter another namespace"),
    (libc::SYS_unshare, "make namespaces"),
    (libc::SYS_swapon, "swap"),
    (libc::SYS_swapoff, "swap"),
    (libc::SYS_keyctl, "the kernel keyring"),
    (libc::SYS_add_key, "the kernel keyring"),
    (libc::SYS_request_key, "the kernel keyring"),
    (libc::SYS_userfaultfd, "race the kernel"),
    (libc::SYS_io_uring_setup, "bypass this filter"),
    (libc::SYS_io_uring_enter, "bypass this filter"),
    (libc::SYS_io_uring_register, "bypass this filter"),
    (libc::SYS_personality, "change the ABI"),
    (libc::SYS_kill, "signal other processes"),
    (libc::SYS_setuid, "change user"),
    (libc::SYS_setgid, "change group"),
    (libc::SYS_capset, "change capabilities"),
    (libc::SYS_seccomp, "change this filter's view"),
    (libc::SYS_unlinkat, "remove files"),
    (libc::SYS_renameat2, "move files"),
    (libc::SYS_fchmodat, "change file modes"),
    (libc::SYS_fchownat, "change file owners"),
];

/// How many system calls the filter lets through (some with argument checks).
pub fn allowed_count() -> usize {
    LIST.iter().filter(|e| !matches!(e.rule, Errno(_))).count()
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The instructions that decide a listed call, run once its number matched; each path ends in
/// a return, so the next entry never sees this one's loads.
fn decide(rule: Rule, own_pid: u32) -> Vec<libc::sock_filter> {
    let one_of = |arg: u32, values: &[u32]| {
        let mut out = vec![stmt(LD_W_ABS, arg_low(arg))];
        for &v in values {
            out.push(jump(JEQ_K, v, 0, 1));
            out.push(stmt(RET_K, RET_ALLOW));
        }
        out.push(stmt(RET_K, ret_errno(libc::EPERM)));
        out
    };
    match rule {
        Allow => vec![stmt(RET_K, RET_ALLOW)],
        Errno(e) => vec![stmt(RET_K, ret_errno(e))],
        OneOf { arg, values } => one_of(arg, values),
        OwnPid { arg } => one_of(arg, &[0, own_pid]),
        Masked { arg, mask, value } => vec![
            stmt(LD_W_ABS, arg_low(arg)),
            stmt(AND_K, mask),
            jump(JEQ_K, value, 0, 1),
            stmt(RET_K, RET_ALLOW),
            stmt(RET_K, ret_errno(libc::EPERM)),
        ],
    }
}

/// The filter program for `list`, for a process whose id is `own_pid`.
pub fn program(list: &[Entry], own_pid: u32) -> Vec<libc::sock_filter> {
    let mut prog = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, RET_KILL),
        stmt(LD_W_ABS, DATA_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        prog.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(RET_K, RET_KILL));
    }
    for e in list {
        let body = decide(e.rule, own_pid);
        // Every body is a handful of instructions: far below the 255 a jump can skip.
        let skip = u8::try_from(body.len()).expect("a rule's body fits a BPF jump");
        prog.push(jump(JEQ_K, e.nr as u32, 0, skip));
        prog.extend(body);
    }
    prog.push(stmt(RET_K, ret_errno(libc::EPERM)));
    prog
}

/// Installs the allow-list on every thread of this process (no_new_privs is set first, as
/// the kernel requires without CAP_SYS_ADMIN; [`super::privdrop`] has set it already).
/// Returns how many system calls it allows.
pub fn install() -> Result<usize, String> {
    let prog = program(LIST, std::process::id());
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| "filter too long".to_string())?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            io::Error::last_os_error()
        ));
    }
    let flags = libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG;
    // SAFETY: the kernel reads `fprog` and the instructions it points to, both alive here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(allowed_count()),
        r if r > 0 => Err(format!(
            "thread {r} could not take the filter (it has one of its own)"
        )),
        _ => Err(format!(
            "seccomp(SECCOMP_SET_MODE_FILTER): {}",
            io::Error::last_os_error()
        )),
    }
}

/// `Seccomp:` and `Seccomp_filters:` of a `/proc/PID/status` text.
pub fn status_of(status: &str) -> (Option<u32>, Option<u32>) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the filter decides for `nr` with `args` under `arch`: runs the program the way the
    /// kernel does (the few classic BPF instructions it is made of).
    fn decide_for(arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let prog = program(LIST, 4242);
        let mut data = Vec::with_capacity(64);
        data.extend(nr.to_le_bytes());
        data.extend(arch.to_le_bytes());
        data.extend(0u64.to_le_bytes());
        for a in args {
            data.extend(a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                AND_K => acc &= i.k,
                JEQ_K | JGE_K => {
                    let taken = if i.code == JEQ_K {
                        acc == i.k
                    } else {
                        acc >= i.k
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn call(nr: libc::c_long, args: [u64; 6]) -> u32 {
        decide_for(AUDIT_ARCH, nr as u32, args)
    }

    const EPERM: u32 = ret_errno(libc::EPERM);

    #[test]
    fn nothing_denied_is_listed_and_nothing_twice() {
        for (nr, what) in DENIED {
            assert!(
                LIST.iter().all(|e| e.nr != *nr),
                "syscall {nr} is listed but would let a parser {what}"
            );
            assert_eq!(call(*nr, [0; 6]), EPERM, "syscall {nr}");
        }
        let mut seen = std::collections::HashSet::new();
        for e in LIST {
            assert!(seen.insert(e.nr), "{} listed twice", e.name);
            assert!(!e.why.is_empty());
        }
        assert_eq!(
            allowed_count(),
            LIST.len() - 1,
            "clone3 is the one errno entry"
        );
    }

    #[test]
    fn the_program_decides_as_the_list_says() {
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let fork = libc::SIGCHLD as u64;
        let ro = libc::O_RDONLY as u64 | libc::O_CLOEXEC as u64;
        let cases: &[(&str, libc::c_long, [u64; 6], u32)] = &[
            ("read", libc::SYS_read, [0; 6], RET_ALLOW),
            ("execve", libc::SYS_execve, [0; 6], EPERM),
            ("an unknown number", 999, [0; 6], EPERM),
            (
                "a thread",
                libc::SYS_clone,
                [thread, 0, 0, 0, 0, 0],
                RET_ALLOW,
            ),
            ("a fork", libc::SYS_clone, [fork, 0, 0, 0, 0, 0], EPERM),
            (
                "a thread in a new namespace",
                libc::SYS_clone,
                [thread | libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0],
                EPERM,
            ),
            ("clone3", libc::SYS_clone3, [0; 6], ret_errno(libc::ENOSYS)),
            (
                "openat to read",
                libc::SYS_openat,
                [0, 0, ro, 0, 0, 0],
                RET_ALLOW,
            ),
            (
                "openat to write",
                libc::SYS_openat,
                [0, 0, libc::O_WRONLY as u64, 0, 0, 0],
                EPERM,
            ),
            (
                "openat read-write",
                libc::SYS_openat,
                [0, 0, libc::O_RDWR as u64, 0, 0, 0],
                EPERM,
            ),
            (
                "openat to create",
                libc::SYS_openat,
                [0, 0, ro | libc::O_CREAT as u64, 0, 0, 0],
                EPERM,
            ),
            (
                "bpf map update",
                libc::SYS_bpf,
                [2, 0, 0, 0, 0, 0],
                RET_ALLOW,
            ),
            (
                "bpf link create",
                libc::SYS_bpf,
                [28, 0, 0, 0, 0, 0],
                RET_ALLOW,
            ),
            ("bpf program load", libc::SYS_bpf, [5, 0, 0, 0, 0, 0], EPERM),
            ("bpf map create", libc::SYS_bpf, [0, 0, 0, 0, 0, 0], EPERM),
            (
                "bpf program by id",
                libc::SYS_bpf,
                [13, 0, 0, 0, 0, 0],
                EPERM,
            ),
            (
                "tgkill of itself",
                libc::SYS_tgkill,
                [4242, 7, 6, 0, 0, 0],
                RET_ALLOW,
            ),
            (
                "tgkill of another",
                libc::SYS_tgkill,
                [1, 1, 9, 0, 0, 0],
                EPERM,
            ),
            ("prlimit64", libc::SYS_prlimit64, [0; 6], EPERM),
            (
                "an IPv6 socket",
                libc::SYS_socket,
                [10, 1, 0, 0, 0, 0],
                RET_ALLOW,
            ),
            (
                "a netlink socket",
                libc::SYS_socket,
                [16, 3, 0, 0, 0, 0],
                EPERM,
            ),
            (
                "a packet socket",
                libc::SYS_socket,
                [17, 3, 0, 0, 0, 0],
                EPERM,
            ),
            (
                "TCGETS",
                libc::SYS_ioctl,
                [2, 0x5401, 0, 0, 0, 0],
                RET_ALLOW,
            ),
            ("TIOCSTI", libc::SYS_ioctl, [0, 0x5412, 0, 0, 0, 0], EPERM),
            (
                "a thread name",
                libc::SYS_prctl,
                [15, 0, 0, 0, 0, 0],
                RET_ALLOW,
            ),
            (
                "PR_SET_DUMPABLE",
                libc::SYS_prctl,
                [4, 1, 0, 0, 0, 0],
                EPERM,
            ),
        ];
        for (what, nr, args, want) in cases {
            assert_eq!(call(*nr, *args), *want, "{what}");
        }
        // Another ABI's numbers mean other calls: the process dies rather than guess.
        assert_eq!(decide_for(0x4000_0003, 1, [0; 6]), RET_KILL, "i386");
        if cfg!(target_arch = "x86_64") {
            let x32_read = X32_SYSCALL_BIT;
            assert_eq!(decide_for(AUDIT_ARCH, x32_read, [0; 6]), RET_KILL, "x32");
        }
    }

    #[test]
    fn status_fields_are_read() {
        let s = "Name:\tztrace\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(status_of(s), (Some(2), Some(1)));
        assert_eq!(status_of("Name:\tx\n"), (None, None));
    }

    /// Runs test `name` of this binary in a child process with `ZTRACE_SECCOMP_CHILD=mode`.
    fn in_child(name: &str, mode: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                name,
            ])
            .env("ZTRACE_SECCOMP_CHILD", mode)
            .output()
            .unwrap()
    }

    const CHILD: &str = "capture::seccomp::tests::under_the_filter";

    #[test]
    fn the_installed_filter_refuses_exec_and_lets_the_daemon_work() {
        let out = in_child(CHILD, "calls");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn calls_of_another_abi_kill_the_process() {
        use std::os::unix::process::ExitStatusExt;
        for mode in ["x32", "int80"] {
            let out = in_child(CHILD, mode);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGSYS),
                "{mode}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r == -1 {
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    /// A system call made for the test; returns its errno (0: it succeeded).
    type Refused = Box<dyn Fn() -> i32>;

    /// Calls the filter must refuse, each with a result other than EPERM when unfiltered (for
    /// any user), so a filter that let it through fails the test.
    fn refused_calls() -> Vec<(&'static str, Refused)> {
        // SAFETY (every closure): system calls with integer arguments, null or valid pointers;
        // unfiltered, none changes anything (an empty unshare, a signal 0 to itself, writes
        // of zero bytes).
        vec![
            (
                "execve",
                Box::new(|| {
                    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                    let envp = [std::ptr::null()];
                    errno_of(unsafe {
                        libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr())
                    } as libc::c_long)
                }),
            ),
            (
                "fork through Command",
                Box::new(|| match std::process::Command::new("/bin/true").status() {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                }),
            ),
            (
                "unshare",
                Box::new(|| errno_of(unsafe { libc::unshare(0) } as libc::c_long)),
            ),
            (
                "process_vm_writev",
                Box::new(|| {
                    errno_of(unsafe {
                        libc::process_vm_writev(
                            libc::getpid(),
                            std::ptr::null(),
                            0,
                            std::ptr::null(),
                            0,
                            0,
                        )
                    } as libc::c_long)
                }),
            ),
            (
                "kill",
                Box::new(|| errno_of(unsafe { libc::kill(libc::getpid(), 0) } as libc::c_long)),
            ),
            (
                "open for writing",
                Box::new(
                    || match std::fs::OpenOptions::new().write(true).open("/dev/null") {
                        Ok(_) => 0,
                        Err(e) => e.raw_os_error().unwrap_or(-1),
                    },
                ),
            ),
            (
                "a netlink socket",
                Box::new(|| {
                    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
                    if fd >= 0 {
                        unsafe { libc::close(fd) };
                    }
                    errno_of(fd as libc::c_long)
                }),
            ),
            (
                "TIOCSTI",
                Box::new(|| {
                    let c = 0u8;
                    errno_of(unsafe { libc::ioctl(1, libc::TIOCSTI, &c) } as libc::c_long)
                }),
            ),
            (
                "PR_SET_DUMPABLE",
                Box::new(|| {
                    errno_of(
                        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } as libc::c_long
                    )
                }),
            ),
        ]
    }

    /// The child's side: only under `in_child` (ignored otherwise).
    #[test]
    #[ignore = "run in a child process by the tests above"]
    fn under_the_filter() {
        let Ok(mode) = std::env::var("ZTRACE_SECCOMP_CHILD") else {
            return;
        };
        // Unfiltered, execve would replace this process: it is tried under the filter only.
        let before: Vec<i32> = refused_calls()
            .iter()
            .map(|(what, f)| if *what == "execve" { 0 } else { f() })
            .collect();
        // A name only DNS can answer (NXDOMAIN, or no server): glibc's resolver must reach
        // the same answer under the filter.
        let lookup = || {
            use std::net::ToSocketAddrs;
            ("ztrace-seccomp-test.invalid", 80)
                .to_socket_addrs()
                .map(|a| a.count())
                .map_err(|e| e.to_string())
        };
        let dns_before = if mode == "calls" { lookup() } else { Ok(0) };
        let n = install().unwrap();
        assert_eq!(n, allowed_count());
        match mode.as_str() {
            #[cfg(target_arch = "x86_64")]
            "x32" => {
                // SAFETY: getpid by its x32 number; the filter kills the process first.
                unsafe { libc::syscall(libc::SYS_getpid | X32_SYSCALL_BIT as libc::c_long) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            "int80" => {
                // SAFETY: the 32-bit ABI's getpid (20); the filter kills the process first.
                unsafe { std::arch::asm!("int 0x80", inlateout("eax") 20 => _) };
                return;
            }
            _ => {}
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let (mode, filters) = status_of(&status);
        assert_eq!(mode, Some(2), "Seccomp:");
        assert!(filters >= Some(1), "Seccomp_filters: {filters:?}");
        let mut wrong = Vec::new();
        for ((what, f), was) in refused_calls().iter().zip(before) {
            let now = f();
            if now != libc::EPERM {
                wrong.push(format!("{what}: errno {now}, not EPERM"));
            }
            if was == libc::EPERM {
                wrong.push(format!("{what}: EPERM even without the filter"));
            }
        }
        // What the daemon does keeps working: threads, sockets, reading files, the resolver.
        let t = std::thread::spawn(|| 7).join().unwrap();
        assert_eq!(t, 7);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        use std::net::ToSocketAddrs;
        assert!(
            ("localhost", 80)
                .to_socket_addrs()
                .unwrap()
                .next()
                .is_some()
        );
        assert_eq!(lookup(), dns_before, "a DNS lookup");
        // SAFETY: signal 0 to this very thread.
        let own = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), 0) };
        assert_eq!(own, 0, "tgkill of itself");
        assert_eq!(
            // SAFETY: clone3 with a null argument: refused before the kernel reads it.
            errno_of(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) }),
            libc::ENOSYS
        );
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
