//! Capture: load the eBPF probes, tell them which processes to trace, attach them to the kernel's
//! tracepoints and hand out the ring buffer of raw records. Owns every kernel object; knows
//! nothing about what the records mean (that is `decode` and beyond).
//!
//! Every program is loaded (verified) in [`Capture::load`], also the OpenSSL ones that are
//! attached only when a process with libssl shows up: the seccomp filter installed after
//! loading refuses `BPF_PROG_LOAD` (see `seccomp.rs`).

use std::{fs, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, RawTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use ztrace_abi::{Config, MAX_PAYLOAD, counter};

use super::{btf, preflight, tls_target::TlsTarget, traced::TracedSet};
use crate::config::SocketProbes;

/// The probe object built by build.rs.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztrace-probes"));

/// Syscalls whose entry the `sys_enter` program sees.
const ENTER: &[&str] = &[
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg",
    "sendmmsg", "connect", "close",
];
/// Syscalls whose exit the `sys_exit` program sees.
const EXIT: &[&str] = &[
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg",
    "sendmmsg", "connect", "accept", "accept4",
];

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub payload_cap: u32,
    /// Entries of `NET_SOCKS`, the socket → owner table (`--max-sockets`).
    pub max_sockets: u32,
    pub follow_children: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Capture writes to stdout/stderr (`--capture-logs`).
    pub capture_stdio: bool,
    /// Use the syscall tracepoints for socket data even where the socket-layer ones work
    /// (`--capture-via-syscalls`).
    pub via_syscalls: bool,
    /// Which form of the socket-layer probes to load (`--socket-probes`).
    pub socket_probes: SocketProbes,
    /// Turn on the kernel's BPF run-time statistics while loaded (`--probe-stats`).
    pub probe_stats: bool,
    /// Report every exec on the host, for selectors (`--exe`, `--port`, …).
    pub report_execs: bool,
}

/// Where socket data is captured (see `probes::sock` for why the socket layer is preferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// `sock:sock_send_length`/`sock_recv_length`: one hook per socket call, none for other
    /// syscalls of any process.
    SocketLayer,
    /// `syscalls:sys_enter_*`/`sys_exit_*` of the socket syscalls (older kernels).
    Syscalls,
}

impl std::fmt::Display for CaptureMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptureMode::SocketLayer => "socket-layer tracepoints",
            CaptureMode::Syscalls => "syscall tracepoints",
        })
    }
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            payload_cap: 512,
            max_sockets: 65536,
            follow_children: true,
            // 8 MiB: ~2.5 s of nginx saturating both cores here (≈ 60k events/s × ~55 bytes).
            // Userspace maps it twice (wrap-around), so it costs twice that in RSS.
            ring_bytes: 8 << 20,
            capture_stdio: false,
            socket_probes: SocketProbes::Auto,
            via_syscalls: false,
            probe_stats: false,
            report_execs: false,
        }
    }
}

/// OpenSSL functions and the program attached to each: (program, function).
const TLS_PROBES: &[(&str, &str)] = &[
    ("ssl_read_enter", "SSL_read"),
    ("ssl_ret", "SSL_read"),
    ("ssl_write_enter", "SSL_write"),
    ("ssl_ret", "SSL_write"),
    ("ssl_read_ex_enter", "SSL_read_ex"),
    ("ssl_ex_ret", "SSL_read_ex"),
    ("ssl_write_ex_enter", "SSL_write_ex"),
    ("ssl_ex_ret", "SSL_write_ex"),
];

/// Loaded and attached probes.
pub struct Capture {
    /// Files with OpenSSL probed, by (device, inode): the same file reached through different
    /// paths is probed once.
    tls_libs: std::collections::HashSet<(u64, u64)>,
    /// Programs that failed to load, with why: optional ones (network metrics, OpenSSL) are
    /// reported when they would be attached.
    unloaded: std::collections::HashMap<&'static str, String>,
    ebpf: Ebpf,
    /// The in-kernel traced set (a byte of flags per TGID), mapped.
    traced: TracedSet,
    counters: PerCpuArray<MapData, u64>,
    pub mode: CaptureMode,
    /// The socket-layer programs are the BTF-typed pair (else the raw pair).
    sock_typed: bool,
    capture_stdio: bool,
    /// Keeps the kernel's BPF run-time statistics on while held (`--probe-stats`).
    _stats: Option<std::os::fd::OwnedFd>,
}

/// What one probe program cost the kernel so far (BPF run-time statistics).
#[derive(Debug, Clone)]
pub struct ProbeCost {
    pub name: String,
    pub runs: u64,
    pub time: std::time::Duration,
}

/// Socket-layer programs and the tracepoints they attach to: BTF-typed (`tp_btf`), whose
/// struct reads are plain loads, and the same code as raw tracepoints, where every struct read
/// is a helper call (the fallback for a kernel that refuses the typed ones).
const SOCK_PROBES: &[(&str, &str)] = &[
    ("sock_send", "sock_send_length"),
    ("sock_recv", "sock_recv_length"),
];
const SOCK_PROBES_RAW: &[(&str, &str)] = &[
    ("sock_send_raw", "sock_send_length"),
    ("sock_recv_raw", "sock_recv_length"),
];
/// Syscalls the `sys_enter`/`sys_exit` programs see in socket-layer mode with `--capture-logs`
/// (stdout/stderr writes only; sockets are left to the socket-layer programs).
const STDIO_SYSCALLS: &[&str] = &["write", "writev"];

/// Kernel-side counters summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    pub submitted: u64,
    pub ringbuf_full: u64,
    pub args_full: u64,
    pub read_failed: u64,
    /// OpenSSL memory-BIO association (`probes::tls`): `SSL *` bound from ciphertext reads,
    /// bound anew after reuse, left unbound as ambiguous, and plaintext calls dropped for want
    /// of a socket.
    pub tls_learnt: u64,
    pub tls_rebound: u64,
    pub tls_ambiguous: u64,
    pub tls_unattributed: u64,
}

/// Offset of `group_dead` in `sched:sched_process_exit` records, from the tracepoint's format;
/// `OFFSET_UNKNOWN` on kernels without the field (it appeared in 6.x; Debian 12's 6.1 lacks
/// it), where the probe reads `task->signal->live` instead.
fn exit_group_dead_offset() -> u32 {
    match tracepoint_field("sched/sched_process_exit", "group_dead") {
        Ok(offset) => offset,
        Err(e) => {
            log::debug!("sched_process_exit: {e:#}; the probe reads task->signal->live instead");
            ztrace_abi::OFFSET_UNKNOWN
        }
    }
}

/// Offset of `field` in the records of tracepoint `event` ("category/name"), from its format file.
fn tracepoint_field(event: &str, field: &str) -> Result<u32> {
    let path = format!("{}/events/{event}/format", preflight::TRACEFS);
    let format = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let decl = format!(" {field};");
    format
        .lines()
        .find(|l| l.contains(&decl))
        .and_then(|l| l.split("offset:").nth(1))
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("{path} has no `{field}` field"))
}

/// Whether this kernel has what the socket-layer probes need; the reason when not.
fn socket_layer_available(config: &Config) -> Result<()> {
    let o = &config.offsets;
    if [o.regs_nr, o.regs_arg0, o.regs_arg1, o.regs_arg2].contains(&ztrace_abi::OFFSET_UNKNOWN) {
        bail!("this kernel's BTF has no known `struct pt_regs` layout");
    }
    for (_, tp) in SOCK_PROBES {
        let path = format!("{}/events/sock/{tp}", preflight::TRACEFS);
        if !std::path::Path::new(&path).exists() {
            bail!("no tracepoint sock:{tp} (Linux 6.3 or later has it)");
        }
    }
    // Connects and closes come from `sock:inet_sock_set_state` in this mode.
    if config.set_state_skaddr_offset == ztrace_abi::OFFSET_UNKNOWN {
        bail!("no usable tracepoint sock:inet_sock_set_state");
    }
    Ok(())
}

/// Program `prog` of the probe object, as its type (`TracePoint`, `RawTracePoint`, `UProbe`).
fn program<'a, P>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog} missing"))?;
    Ok(program.try_into()?)
}

/// The OpenSSL programs (see [`TLS_PROBES`] for where each goes).
const TLS_PROGRAMS: [&str; 6] = [
    "ssl_read_enter",
    "ssl_write_enter",
    "ssl_read_ex_enter",
    "ssl_write_ex_enter",
    "ssl_ret",
    "ssl_ex_ret",
];

/// Loads (verifies) every program [`Capture::attach`] and [`Capture::attach_tls`] attach,
/// before the seccomp filter forbids loading. A required one that fails is an error; optional
/// ones (network metrics outside socket-layer mode, OpenSSL) are returned with why.
fn load_programs(
    ebpf: &mut Ebpf,
    mode: CaptureMode,
    capture_stdio: bool,
) -> Result<std::collections::HashMap<&'static str, String>> {
    let mut unloaded = std::collections::HashMap::new();
    let mut tracepoints = vec![("sched_process_exit", true), ("sched_process_exec", true)];
    if mode == CaptureMode::Syscalls || capture_stdio {
        tracepoints.extend([("sys_enter", true), ("sys_exit", true)]);
    }
    tracepoints.push(("inet_sock_set_state", mode == CaptureMode::SocketLayer));
    tracepoints.push(("tcp_retransmit_skb", false));
    for (prog, required) in tracepoints {
        let program: &mut TracePoint = program(ebpf, prog)?;
        match program.load() {
            Ok(()) => {}
            Err(e) if !required => {
                unloaded.insert(prog, e.to_string());
            }
            Err(e) => return Err(e).with_context(|| format!("verifier rejected {prog}")),
        }
    }
    let fork: &mut RawTracePoint = program(ebpf, "sched_process_fork")?;
    fork.load()
        .context("verifier rejected sched_process_fork")?;
    for prog in TLS_PROGRAMS {
        let program: &mut UProbe = program(ebpf, prog)?;
        if let Err(e) = program.load() {
            log::debug!("{prog}: {e}; OpenSSL will not be probed");
            unloaded.insert(prog, e.to_string());
        }
    }
    Ok(unloaded)
}

/// Loads (verifies) the socket-layer pair `choice` asks for (`auto`: the BTF-typed pair, else the
/// raw pair); `Ok(true)` for the BTF-typed one.
fn load_sock_programs(ebpf: &mut Ebpf, choice: SocketProbes) -> Result<bool> {
    if choice != SocketProbes::Raw {
        match load_sock_typed(ebpf) {
            Ok(()) => return Ok(true),
            Err(e) if choice == SocketProbes::Typed => return Err(e),
            Err(e) => log::info!("socket-layer probes as raw tracepoints ({e:#})"),
        }
    }
    for (prog, _) in SOCK_PROBES_RAW {
        let program: &mut RawTracePoint = program(ebpf, prog)?;
        program
            .load()
            .with_context(|| format!("verifier rejected {prog}"))?;
    }
    Ok(false)
}

fn load_sock_typed(ebpf: &mut Ebpf) -> Result<()> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (prog, tp) in SOCK_PROBES {
        let program: &mut BtfTracePoint = program(ebpf, prog)?;
        program
            .load(tp, &btf)
            .with_context(|| format!("verifier rejected {prog} (tp_btf)"))?;
    }
    Ok(())
}

/// Record offsets the network probes need; unknown ones switch those probes off (reported).
fn net_offsets() -> [u32; 4] {
    let fields = [
        ("sock/inet_sock_set_state", "skaddr"),
        ("sock/inet_sock_set_state", "oldstate"),
        ("sock/inet_sock_set_state", "newstate"),
        ("tcp/tcp_retransmit_skb", "skaddr"),
    ];
    fields.map(|(event, field)| {
        tracepoint_field(event, field).unwrap_or_else(|e| {
            log::warn!("TCP connection/retransmit metrics unavailable: {e:#}");
            ztrace_abi::OFFSET_UNKNOWN
        })
    })
}

impl Capture {
    /// Loads the probes with this kernel's struct offsets. Preflight checks must have passed.
    pub fn load(opts: &CaptureOptions) -> Result<Capture> {
        if opts.payload_cap == 0 || opts.payload_cap as usize > MAX_PAYLOAD {
            bail!("payload cap must be between 1 and {MAX_PAYLOAD} bytes");
        }
        let btf = btf::Btf::from_sys_fs()?;
        let offsets = btf::resolve_offsets(&btf)?;
        let net = net_offsets();
        let mut config = Config {
            payload_cap: opts.payload_cap,
            follow_children: opts.follow_children as u32,
            exit_group_dead_offset: exit_group_dead_offset(),
            capture_stdio: opts.capture_stdio as u32,
            set_state_skaddr_offset: net[0],
            set_state_old_offset: net[1],
            set_state_new_offset: net[2],
            retransmit_skaddr_offset: net[3],
            socket_mode: 0,
            report_execs: opts.report_execs as u32,
            offsets,
        };
        let socket_layer = if opts.via_syscalls {
            Err(anyhow::anyhow!("--capture-via-syscalls"))
        } else {
            socket_layer_available(&config)
        };
        match (&socket_layer, opts.socket_probes) {
            (Err(e), SocketProbes::Typed | SocketProbes::Raw) if !opts.via_syscalls => bail!(
                "--socket-probes {}: the socket-layer tracepoints cannot be used here ({e:#}); \
                 use --socket-probes auto to fall back to the syscall tracepoints",
                opts.socket_probes.name()
            ),
            (Err(e), _) => log::info!("socket data from syscall tracepoints ({e:#})"),
            (Ok(()), _) => {}
        }
        config.socket_mode = socket_layer.is_ok() as u32;
        let mut ebpf = Self::load_object(&config, opts)?;
        let mut mode = CaptureMode::Syscalls;
        let mut sock_typed = false;
        if config.socket_mode != 0 {
            match load_sock_programs(&mut ebpf, opts.socket_probes) {
                Ok(typed) => {
                    mode = CaptureMode::SocketLayer;
                    sock_typed = typed;
                }
                Err(e) if opts.socket_probes != SocketProbes::Auto => {
                    return Err(e.context(format!(
                        "--socket-probes {}: the kernel refused the {} socket-layer probes \
                         (--socket-probes auto falls back to the other form, then to the \
                         syscall tracepoints)",
                        opts.socket_probes.name(),
                        if opts.socket_probes == SocketProbes::Typed {
                            "BTF-typed"
                        } else {
                            "raw"
                        }
                    )));
                }
                Err(e) => {
                    log::warn!(
                        "socket-layer capture unavailable, using syscall tracepoints: {e:#}"
                    );
                    config.socket_mode = 0;
                    ebpf = Self::load_object(&config, opts)?;
                }
            }
        }
        let traced = TracedSet::new(ebpf.take_map("TRACED").context("map TRACED missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("map COUNTERS missing")?)?;
        let unloaded = load_programs(&mut ebpf, mode, opts.capture_stdio)?;
        Ok(Capture {
            tls_libs: Default::default(),
            unloaded,
            ebpf,
            traced,
            counters,
            mode,
            sock_typed,
            capture_stdio: opts.capture_stdio,
            _stats: if opts.probe_stats {
                Some(
                    aya::sys::enable_stats(aya::sys::Stats::RunTime)
                        .context("turning on BPF run-time statistics (--probe-stats)")?,
                )
            } else {
                None
            },
        })
    }

    fn load_object(config: &Config, opts: &CaptureOptions) -> Result<Ebpf> {
        EbpfLoader::new()
            .override_global("CONFIG", config, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("NET_SOCKS", opts.max_sockets)
            .load(PROBES)
            .context("loading the eBPF probes into the kernel")
    }

    /// Adds a process to the in-kernel traced set: before [`Capture::attach`] (seeding), or
    /// later for a process a selector matched (a one-byte atomic store, see `traced.rs`).
    pub fn trace(&mut self, tgid: u32) -> Result<()> {
        if !self.traced.add(tgid)? {
            bail!("PID {tgid} is beyond the largest PID Linux allows");
        }
        Ok(())
    }

    /// Removes a process the kernel's exit probe missed (userspace found it dead): a byte left
    /// set would trace the next process the kernel gives the PID (see `probes::sched`).
    pub fn untrace(&mut self, tgid: u32) -> Result<()> {
        self.traced.remove(tgid)
    }

    /// Whether the kernel traces each of `tgids` (see `TracedSet::traced_of`).
    pub fn traced_of(&mut self, tgids: &[u32]) -> Result<Vec<bool>> {
        self.traced.traced_of(tgids)
    }

    /// Attaches every program. Call after seeding the traced set so nothing is missed in between.
    pub fn attach(&mut self) -> Result<()> {
        let (enter, exit) = match (self.mode, self.capture_stdio) {
            (CaptureMode::Syscalls, _) => (ENTER, EXIT),
            (CaptureMode::SocketLayer, true) => (STDIO_SYSCALLS, STDIO_SYSCALLS),
            (CaptureMode::SocketLayer, false) => (&[][..], &[][..]),
        };
        if !enter.is_empty() {
            let enter: Vec<String> = enter.iter().map(|n| format!("sys_enter_{n}")).collect();
            let exit: Vec<String> = exit.iter().map(|n| format!("sys_exit_{n}")).collect();
            self.attach_tracepoint("sys_enter", "syscalls", &enter)?;
            self.attach_tracepoint("sys_exit", "syscalls", &exit)?;
        }
        if self.mode == CaptureMode::SocketLayer && self.sock_typed {
            for (prog, tp) in SOCK_PROBES {
                let program: &mut BtfTracePoint = program(&mut self.ebpf, prog)?;
                program
                    .attach()
                    .with_context(|| format!("attaching to tp_btf {tp}"))?;
            }
        } else if self.mode == CaptureMode::SocketLayer {
            for (prog, tp) in SOCK_PROBES_RAW {
                let program: &mut RawTracePoint = program(&mut self.ebpf, prog)?;
                program
                    .attach(tp)
                    .with_context(|| format!("attaching to raw tracepoint {tp}"))?;
            }
        }
        for name in ["sched_process_exit", "sched_process_exec"] {
            self.attach_tracepoint(name, "sched", &[name.to_string()])?;
        }
        // Network metrics (and, with socket-layer capture, connects and closes).
        for (prog, category) in [
            ("inet_sock_set_state", "sock"),
            ("tcp_retransmit_skb", "tcp"),
        ] {
            match self.attach_tracepoint(prog, category, &[prog.to_string()]) {
                Err(e)
                    if self.mode == CaptureMode::SocketLayer && prog == "inet_sock_set_state" =>
                {
                    return Err(e);
                }
                Err(e) => log::warn!("TCP connection/retransmit metrics unavailable: {e:#}"),
                Ok(()) => {}
            }
        }
        let fork: &mut RawTracePoint = program(&mut self.ebpf, "sched_process_fork")?;
        fork.attach("sched_process_fork")
            .context("attaching to raw tracepoint sched_process_fork")?;
        Ok(())
    }

    /// Attaches program `prog` (loaded) to each `category:name` tracepoint.
    fn attach_tracepoint(&mut self, prog: &str, category: &str, names: &[String]) -> Result<()> {
        if let Some(e) = self.unloaded.get(prog) {
            bail!("verifier rejected {prog}: {e}");
        }
        let program: &mut TracePoint = program(&mut self.ebpf, prog)?;
        for name in names {
            program
                .attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}:{name}"))?;
        }
        Ok(())
    }

    /// Applies what inspecting `pid` found ([`super::tls_target`]): marks the process as one
    /// whose OpenSSL is probed (or not, after an exec replaced it), and puts the OpenSSL probes
    /// on the file if it is not probed yet (probes on a file fire for every process that maps
    /// it; the in-kernel filter keeps only traced ones). Returns the file newly probed. `pid`
    /// must be in the traced set already ([`Capture::trace`], or the kernel's fork probe); one
    /// that has left it is left alone.
    pub fn attach_tls(
        &mut self,
        pid: u32,
        target: &TlsTarget,
    ) -> Result<Option<std::path::PathBuf>> {
        let probe = match target {
            TlsTarget::Probe(p) => Some(p),
            _ => None,
        };
        // The socket probes look for an OpenSSL call in progress only in processes that map
        // probed OpenSSL (an exec may have replaced one that did).
        let flags = match probe {
            Some(_) => ztrace_abi::traced::YES | ztrace_abi::traced::TLS,
            None => ztrace_abi::traced::YES,
        };
        // Only a process still traced is updated: one that exited before its exec event got
        // here was removed by the kernel, and its PID may already belong to an unrelated
        // process, which must not become traced.
        if !self.traced.update(pid, flags)? {
            return Ok(None);
        }
        let Some(probe) = probe else {
            return Ok(None);
        };
        if !self.tls_libs.insert(probe.id) {
            return Ok(None);
        }
        if let Some((prog, e)) = TLS_PROGRAMS
            .iter()
            .find_map(|p| Some((p, self.unloaded.get(p)?)))
        {
            self.tls_libs.remove(&probe.id);
            bail!("OpenSSL probes unavailable: verifier rejected {prog}: {e}");
        }
        // The file inspected, through our own descriptor: the kernel probes that inode, not
        // whatever a path names by now.
        let path = probe.attach_path();
        let mut attached = 0;
        for (prog, function) in TLS_PROBES {
            // The `_ex` variants exist from OpenSSL 1.1.1 on; a library without one is still
            // covered through the other.
            let Some(&(_, offset)) = probe.functions.iter().find(|(f, _)| f == function) else {
                continue;
            };
            let program: &mut UProbe = program(&mut self.ebpf, prog)?;
            match program.attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                &path,
                UProbeScope::AllProcesses,
            ) {
                Ok(_) => attached += 1,
                Err(e) => log::debug!("{}: no uprobe on {function}: {e}", probe.shown.display()),
            }
        }
        if attached == 0 {
            self.tls_libs.remove(&probe.id);
            anyhow::bail!(
                "{}: none of SSL_read/SSL_write could be probed",
                probe.shown.display()
            );
        }
        Ok(Some(probe.shown.clone()))
    }

    /// The ring buffer of raw records (can be taken once).
    pub fn ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("ring buffer already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Where socket data comes from, for the start-up line and `ztrace check`.
    pub fn source(&self) -> String {
        match (self.mode, self.sock_typed) {
            (CaptureMode::SocketLayer, true) => format!("{} (BTF-typed)", self.mode),
            (CaptureMode::SocketLayer, false) => format!("{} (raw)", self.mode),
            (CaptureMode::Syscalls, _) => self.mode.to_string(),
        }
    }

    /// Runs and run time of every loaded probe program (each counts all its attachments); zero
    /// unless statistics were turned on (`CaptureOptions::probe_stats`) or by someone else.
    pub fn probe_costs(&self) -> Vec<ProbeCost> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(ProbeCost {
                    name: name.to_string(),
                    runs: info.run_count(),
                    time: info.run_time(),
                })
            })
            .filter(|c| c.runs > 0)
            .collect()
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |idx: u32| {
            self.counters
                .get(&idx, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            submitted: sum(counter::SUBMITTED),
            ringbuf_full: sum(counter::RINGBUF_FULL),
            args_full: sum(counter::ARGS_FULL),
            read_failed: sum(counter::READ_FAILED),
            tls_learnt: sum(counter::TLS_LEARNT),
            tls_rebound: sum(counter::TLS_REBOUND),
            tls_ambiguous: sum(counter::TLS_AMBIGUOUS),
            tls_unattributed: sum(counter::TLS_UNATTRIBUTED),
        }
    }
}

/// Lets tokio wait for ring-buffer readiness.
pub struct RingFd(pub RingBuf<MapData>);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
