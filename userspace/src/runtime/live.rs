//! The live daemon: loads the probes, seeds the traced set, then runs one loop that drains the
//! ring buffer into a sink — the span pipeline and its exporter, or a record file — until
//! Ctrl-C/SIGTERM, `--duration`, or the exit of every traced process. On the way out it detaches,
//! flushes everything pending and prints what was captured and what was lost.
//!
//! It owns the capture loop and the traced-process set; where captured records go is
//! `destination.rs` (the pipeline, processors and exporter, or a record file);
//! replay (`replay.rs`) and the throughput benchmark (`bench.rs`) reuse its runtime and summary
//! but never its loop. It must not parse, link or encode anything itself (that is the pipeline's
//! and the exporter's job).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::Instant};

use crate::{
    capture::{
        Capture, CaptureOptions, KernelCounters, RingFd, TlsTarget,
        lineage::{self, Lineage, UNKNOWN_START},
        process, select,
        tls_target::Inspector,
    },
    export::{ExportConfig, ExportStats, Exporter, Output, sleep_until},
    peer::PeerLink,
    processors::chain::Processors,
    runtime::destination::{Destination, PeerAnswer},
    runtime::record_sink::RecordSink,
    runtime::selection::{Selection, reload},
    runtime::telemetry::Telemetry,
    runtime::{
        pipeline::{Pipeline, ProcChange},
        tls_watch::TlsWatch,
    },
    signals::logs::{LogConfig, Logs},
    signals::metrics::{Metrics, MetricsConfig},
};

pub struct DaemonConfig {
    /// The config file SIGHUP re-reads `[target]` PIDs and `[[target.select]]` from (None when
    /// flags chose what to trace: they win over the file).
    pub reload_from: Option<PathBuf>,
    pub pids: Vec<u32>,
    /// Service names the operator gave by PID (`--pid 1234=checkout`); children inherit them.
    pub pid_service_names: HashMap<u32, String>,
    /// Selectors (`--exe`, `--port`, `[[target.select]]`): matching processes are traced, now
    /// and when they start later; with any, ztrace keeps running when no process is traced.
    pub select: Vec<select::Rule>,
    pub follow_children: bool,
    pub service_name: Option<String>,
    pub duration: Option<Duration>,
    pub payload_cap: u32,
    /// Size of the kernel's socket → owner table.
    pub max_sockets: u32,
    pub db_query_text: bool,
    /// What sensitive data may leave (all opt-ins off by default).
    pub privacy: crate::config::Privacy,
    /// The most bytes all protocol parsers may hold together (`memory.parser_budget`).
    pub parser_budget: usize,
    pub mode: Mode,
    /// The metrics signal (interval, temporality, cardinality cap).
    pub metrics: MetricsConfig,
    /// `--capture-logs`: stdout/stderr of traced processes become log records.
    pub capture_logs: bool,
    /// `--capture-via-syscalls`: socket data from syscall tracepoints, not the socket layer.
    pub capture_via_syscalls: bool,
    /// `--socket-probes`: which form of the socket-layer probes to load.
    pub socket_probes: crate::config::SocketProbes,
    /// `--probe-stats`: kernel BPF statistics on, each probe's cost printed on exit.
    pub probe_stats: bool,
    /// Cross-host links (`--peer-listen`): None when off.
    pub peer: Option<crate::peer::PeerConfig>,
    /// Tail sampling (None: off) and anomaly detection (None: off).
    pub tail: Option<crate::config::TailSampling>,
    pub anomaly: Option<crate::config::AnomalyConfig>,
    /// Rules (OTTL `[transform]` and `[filter]`), compiled; empty when none.
    pub rules: crate::processors::ottl::Program,
    /// Remote management (OpAMP): None when off.
    pub control: Option<crate::control::Start>,
    /// The seccomp allow-list after start-up (`--no-seccomp` turns it off).
    pub seccomp: bool,
}

pub enum Mode {
    /// Spans to an exporter.
    Trace(Box<ExportConfig>),
    /// Raw events to a record file.
    Record(PathBuf),
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Monotonic now, the clock of `bpf_ktime_get_ns`.
pub fn mono_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: the exporter keeps flushing on one while the capture loop (on the calling
    // thread) is busy draining the ring buffer.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// What start-up ([`super::startup`]) leaves for the daemon's loop.
struct Started {
    capture: Capture,
    record: Option<RecordSink>,
    mono_to_unix: i128,
}

pub fn run(mut cfg: DaemonConfig) -> Result<()> {
    let mono_to_unix = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC);
    let opts = CaptureOptions {
        payload_cap: cfg.payload_cap,
        max_sockets: cfg.max_sockets,
        follow_children: cfg.follow_children,
        capture_stdio: cfg.capture_logs,
        via_syscalls: cfg.capture_via_syscalls,
        socket_probes: cfg.socket_probes,
        probe_stats: cfg.probe_stats,
        // With a file SIGHUP may re-read, selectors can appear later: execs are reported from
        // the start (one small event per exec on the host, ignored while no rule is set).
        report_execs: !cfg.select.is_empty()
            || cfg.reload_from.is_some()
            || cfg
                .control
                .as_ref()
                .is_some_and(|c| c.opamp.allow.contains(&crate::config::Section::Targets)),
        ..CaptureOptions::default()
    };
    let (record, control) = match &cfg.mode {
        Mode::Record(path) => (Some(path.as_path()), None),
        Mode::Trace(_) => (None, cfg.control.as_mut()),
    };
    let (capture, record) =
        super::startup::start(&opts, record, mono_to_unix, control, cfg.seccomp)?;
    let started = Started {
        capture,
        record,
        mono_to_unix,
    };
    runtime()?.block_on(run_async(cfg, started))
}

struct Processes {
    alive: HashSet<u32>,
    /// `--service-name`: every process's name unless it has its own.
    service_name: Option<String>,
    /// Names by PID (`--pid 1234=checkout`), handed down to children as they fork.
    names: HashMap<u32, String>,
    host_name: String,
    /// `--command-args`: keep `process.command_args` (command lines carry passwords).
    command_args: bool,
    /// Untraced by a retarget, when: a child it forked just before inherited the traced byte
    /// and is reported after, so it is untraced too (see [`DROPPED_FORKS`]).
    dropped: HashMap<u32, std::time::Instant>,
    /// Who forked whom, as the fork records said (see `capture::lineage`): retargets judge
    /// descent by it, and a reconcile compares it with `/proc`.
    lineage: Lineage,
}

/// What the capture loop works on when a process starts or stops being traced, in one place
/// (`t` in [`run_async`]): the probes and the kernel's traced set, the traced processes, where
/// records go, and the TLS inspection.
struct Tracer {
    capture: Capture,
    procs: Processes,
    sink: Destination,
    inspector: Inspector,
    tls_watch: TlsWatch,
    reconciling: Option<Reconciling>,
}

/// How long after a process was untraced by a retarget its reported forks are untraced too.
const DROPPED_FORKS: Duration = Duration::from_secs(2);

/// How often the traced set is reconciled with `/proc` when no event was lost (see
/// [`Tracer::finish_reconcile`]); after a loss it is started within a second.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

impl Processes {
    /// `pid` is traced: `parent` forked it (None: whatever `/proc` says, for a process found
    /// there rather than reported at fork). Describes it to the sink.
    fn add(&mut self, pid: u32, parent: Option<u32>, sink: &mut Destination) -> Result<()> {
        self.alive.insert(pid);
        self.dropped.remove(&pid);
        if parent.is_some() || !self.lineage.knows(pid) {
            self.learn(pid, parent);
        }
        let name = self.names.get(&pid).or(self.service_name.as_ref());
        let mut info = process::info(pid, name.map(String::as_str), &self.host_name);
        if !self.command_args {
            info.command_args.clear();
        }
        sink.process(info)
    }

    /// A child takes the name its parent was given, if any.
    fn inherit(&mut self, pid: u32, parent: u32) {
        if let Some(name) = self.names.get(&parent).cloned() {
            self.names.insert(pid, name);
        }
    }

    /// Records who forked `pid`, each process with its start time.
    fn learn(&mut self, pid: u32, parent: Option<u32>) {
        let root = process::proc_root();
        let stat = process::stat_at(root, pid);
        let start = stat.map_or(UNKNOWN_START, |s| s.start);
        let Some(parent) = parent.or(stat.map(|s| s.ppid)) else {
            return; // gone already: its exit follows
        };
        let parent_start = self
            .lineage
            .start_of(parent)
            .or_else(|| process::stat_at(root, parent).map(|s| s.start))
            .unwrap_or(UNKNOWN_START);
        self.lineage.learn(pid, start, parent, parent_start);
    }

    /// `pid` is no longer traced: it `exited` (its descendants still descend through it), or
    /// a retarget dropped it.
    fn remove(&mut self, pid: u32, exited: bool) {
        self.alive.remove(&pid);
        self.names.remove(&pid);
        if exited {
            self.lineage.exited(pid);
        } else {
            self.lineage.forget(pid);
        }
    }
}

async fn run_async(mut cfg: DaemonConfig, started: Started) -> Result<()> {
    let Started {
        capture,
        record,
        mono_to_unix,
    } = started;
    let (mut sink, what) = match &cfg.mode {
        Mode::Trace(export) => (
            Destination::Trace {
                pipeline: {
                    let mut p = Box::new(Pipeline::new(mono_to_unix, None));
                    p.set_db_query_text(cfg.db_query_text);
                    p.set_privacy(&cfg.privacy);
                    p.set_parser_budget(cfg.parser_budget);
                    let now_unix = clock_ns(libc::CLOCK_REALTIME).max(0) as u64;
                    p.metrics = Some(Metrics::new(cfg.metrics, now_unix));
                    if cfg.capture_logs {
                        p.logs = Some(Logs::new(LogConfig::default()));
                    }
                    p
                },
                processors: {
                    let mut p = Box::new(Processors::new(cfg.tail.as_ref(), cfg.anomaly.as_ref()));
                    p.set_rules(std::mem::take(&mut cfg.rules));
                    p
                },
                exporter: Exporter::spawn((**export).clone()),
                released: Vec::new(),
                spans: Vec::new(),
                telemetry: Box::new(Telemetry::new(
                    cfg.metrics.interval,
                    mono_to_unix,
                    &process::host_name(),
                )),
            },
            describe(export),
        ),
        Mode::Record(path) => (
            Destination::Record(record.context("the record file was not created")?),
            format!("recording raw events to {}", path.display()),
        ),
    };
    let mut peer = match (&cfg.peer, &mut sink) {
        (Some(pc), Destination::Trace { pipeline, .. }) => {
            pipeline.enable_crosshost(pc.linker.clone());
            let link = PeerLink::start(pc).await?;
            log::info!(
                "cross-host links: answering agents on {}, asking peers on port {}",
                link.local,
                pc.peer_port
            );
            Some(link)
        }
        _ => None,
    };
    let mut answers = Vec::new();
    // Where each process's OpenSSL is, found off this loop (executables can be 100 MB).
    let inspector = Inspector::start().context("starting the TLS inspection thread")?;
    let mut procs = Processes {
        alive: HashSet::new(),
        service_name: cfg.service_name.clone(),
        names: cfg.pid_service_names.clone(),
        host_name: process::host_name(),
        // A recording keeps them (the file is private to root); replay applies the opt-in.
        command_args: cfg.privacy.command_args || matches!(cfg.mode, Mode::Record(_)),
        dropped: HashMap::new(),
        lineage: Lineage::default(),
    };
    let mut targets = cfg.pids.clone();
    let mut selection = Selection::new(cfg.select.clone());
    for (pid, name) in selection.initial() {
        if !targets.contains(&pid) {
            if let Some(name) = name {
                procs.names.entry(pid).or_insert(name);
            }
            targets.push(pid);
        }
    }
    if !selection.rules.is_empty() {
        log::info!(
            "selecting processes by {}: {} running now; new ones are traced as they start",
            selection.describe(),
            targets.len().saturating_sub(cfg.pids.len())
        );
    }
    if cfg.follow_children {
        // The children that exist already, of the PIDs given and of what the selectors
        // matched: the kernel passes tracing on only at fork.
        let roots = targets.clone();
        for (child, parent) in process::descendants_with_parents(&roots) {
            if !targets.contains(&child) {
                procs.inherit(child, parent);
                targets.push(child);
            }
        }
        // ztrace descends from an ancestor given or selected (`--pid 1`, `--pid $$`): never
        // trace itself, or its exports would be captured, exported, captured …
        let me = std::process::id();
        if targets.contains(&me) {
            let ancestors: Vec<u32> = roots
                .iter()
                .copied()
                .filter(|&p| process::is_ancestor_of_self(p))
                .collect();
            log::info!("{ancestors:?}: ztrace descends from it; ztrace itself is not traced");
            targets.retain(|&p| p != me);
        }
    }
    let mut t = Tracer {
        capture,
        procs,
        sink,
        inspector,
        tls_watch: TlsWatch::default(),
        reconciling: None,
    };
    for &pid in &targets {
        t.start_tracing(pid, None)?;
    }
    t.capture.attach()?;
    // SAFETY: RingFd owns the ring buffer's fd; it lives inside the AsyncFd until deregistered.
    let mut ring = unsafe { AsyncFd::register(RingFd(t.capture.ring()?)) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    log::info!(
        "tracing {} process(es): {:?}{} (socket data from {}); {what}",
        targets.len(),
        targets,
        if cfg.follow_children {
            " and their future children"
        } else {
            ""
        },
        t.capture.source(),
    );

    let mut control = match (cfg.control.take(), &t.sink) {
        (Some(start), Destination::Trace { .. }) => {
            let now_unix = clock_ns(libc::CLOCK_REALTIME).max(0) as u64;
            Some(crate::control::Control::start(start, now_unix).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let mut changes = Vec::new();
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    // The probes wake us only when a backlog builds up (maps.rs `submit`): drain on this tick.
    let mut tick = tokio::time::interval(DRAIN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report = Instant::now();
    let mut reported = (KernelCounters::default(), ExportStats::default());
    // The ring-buffer loss count at the last reconcile with /proc, and when it was.
    let mut reconciled = (0u64, Instant::now());

    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                // A ring that never empties must not starve signals, timers and exits: take a
                // bounded batch per turn and stay "ready" when records are left.
                if drain(&mut guard.get_inner_mut().0, &mut t.sink, &mut changes, DRAIN_BATCH)? {
                    guard.clear_ready();
                }
            }
            _ = tick.tick() => {
                drain(&mut ring.get_mut().0, &mut t.sink, &mut changes, DRAIN_BATCH)?;
            }
            _ = peer_answers(&mut peer, &mut answers) => {}
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
            _ = sighup.recv() => {
                match &cfg.reload_from {
                    Some(path) => match reload(path, &mut selection) {
                        Ok(pids) => selection.found.extend(pids),
                        Err(e) => log::warn!("SIGHUP: keeping the current targets: {e}"),
                    },
                    None => log::warn!(
                        "SIGHUP: nothing to re-read (the command line chose what to trace, not a config file)"
                    ),
                }
            }
            pending = crate::control::next_pending(&mut control) => {
                let result = apply_remote(&pending.plan, &mut t.sink, &mut selection);
                let _ = pending.reply.send(result);
            }
            _ = sleep_until(deadline) => break "--duration elapsed",
        }
        for change in changes.drain(..) {
            match change {
                ProcChange::Forked { pid, parent } if t.procs.dropped.contains_key(&parent) => {
                    log::debug!("untracing child {pid} of {parent}, which is no longer selected");
                    if let Err(e) = t.capture.untrace(pid) {
                        log::warn!("process {pid} is no longer selected but stays traced: {e:#}");
                    }
                    // Its own children, forked before this, are reported after it.
                    t.procs.dropped.insert(pid, std::time::Instant::now());
                }
                ProcChange::Forked { pid, parent } => {
                    log::info!("following new child process {pid} of {parent}");
                    t.procs.inherit(pid, parent);
                    t.procs.add(pid, Some(parent), &mut t.sink)?;
                }
                ProcChange::Execed { pid } => {
                    t.procs.add(pid, None, &mut t.sink)?;
                    t.inspector.ask(pid);
                    t.tls_watch.inspected(pid);
                }
                ProcChange::Exited { pid } => {
                    log::info!("traced process {pid} exited");
                    t.procs.remove(pid, true);
                    t.tls_watch.exited(pid);
                }
                ProcChange::ExecedUntraced { pid } => selection.on_exec(pid),
                ProcChange::TlsHandshake { pid } => {
                    if t.procs.alive.contains(&pid)
                        && t.tls_watch.handshake(pid, std::time::Instant::now())
                    {
                        log::debug!("TLS: process {pid} began a handshake; inspecting it again");
                        t.inspector.ask(pid);
                    }
                }
            }
        }
        let mut matched = Vec::new();
        for (pid, name) in selection.matched() {
            if t.procs.alive.contains(&pid) {
                // Traced already: a service name a reload or remote change now gives it is
                // its Resource's from here on.
                if let Some(name) = name
                    && t.procs.names.get(&pid) != Some(&name)
                {
                    log::info!("process {pid} is now service {name:?}");
                    t.procs.names.insert(pid, name);
                    t.procs.add(pid, None, &mut t.sink)?;
                }
                continue;
            }
            log::info!("tracing process {pid}: it matches a selector");
            if let Some(name) = name {
                t.procs.names.insert(pid, name);
            }
            t.start_tracing(pid, None)?;
            matched.push(pid);
        }
        // Children a process had before it matched (a rule added by SIGHUP or OpAMP, a port
        // opened late) are followed as a traced parent's children are: one /proc walk per turn.
        let running = std::mem::take(&mut selection.running);
        matched.retain(|pid| running.contains(pid));
        if cfg.follow_children && !matched.is_empty() {
            let me = std::process::id();
            for (child, parent) in process::descendants_with_parents(&matched) {
                if child == me || t.procs.alive.contains(&child) {
                    continue;
                }
                log::info!(
                    "tracing process {child}: a child of {parent}, which matches a selector"
                );
                t.procs.inherit(child, parent);
                t.start_tracing(child, Some(parent))?;
            }
        }
        if let Some(dropped) =
            selection.due_drops(&t.procs.alive, cfg.follow_children, &t.procs.lineage)
        {
            t.deselect(&dropped);
        }
        t.finish_reconcile(cfg.follow_children)?;
        for (pid, answer) in t.inspector.answers() {
            apply_tls(&mut t.capture, pid, answer, &mut t.tls_watch);
        }
        t.sink.poll(mono_now_ns())?;
        t.sink.peer_io(&mut peer, &mut answers);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            t.procs.dropped.retain(|_, at| at.elapsed() < DROPPED_FORKS);
            // A missed exit event (e.g. the ring was full) must not keep us running forever, and
            // a missed exit in the kernel (see `probes::sched`) must not leave the PID traced
            // for its next owner. A PID whose process has another start time than the one
            // traced names a new process: the old one exited unseen, and a reconcile decides
            // about the new one (traced only if it descends from a traced process).
            let mut reused = false;
            for pid in t.procs.alive.iter().copied().collect::<Vec<_>>() {
                let stat = process::stat_at(process::proc_root(), pid).filter(|s| s.alive);
                let start = t.procs.lineage.start_of(pid).unwrap_or(UNKNOWN_START);
                match stat {
                    Some(s) if start == UNKNOWN_START || s.start == start => continue,
                    Some(_) => {
                        log::debug!("process {pid} exited unseen; its PID names another process");
                        reused = true;
                    }
                    None => {
                        if let Err(e) = t.capture.untrace(pid) {
                            log::warn!(
                                "process {pid} exited unseen; leaving the traced set: {e:#}"
                            );
                        }
                    }
                }
                t.procs.remove(pid, true);
                t.tls_watch.exited(pid);
            }
            t.procs.lineage.prune();
            let now = (t.capture.counters(), t.sink.export_stats());
            // Lost records may have been forks and exits: reconcile with /proc at once; else
            // now and then, at low cost, for what the kernel does without a record.
            let lost = now.0.ringbuf_full != reconciled.0;
            if lost || reused || reconciled.1.elapsed() >= RECONCILE_EVERY {
                let why = if lost {
                    "kernel events were lost"
                } else if reused {
                    "a traced PID names another process"
                } else {
                    "periodic"
                };
                reconciled = (now.0.ringbuf_full, Instant::now());
                t.start_reconcile(why);
            }
            t.sink.kernel_counters(now.0);
            t.sink.flush_record();
            report_losses(&reported, &now);
            if let Some(c) = &control {
                c.health(health(t.procs.alive.len(), &reported, &now));
            }
            reported = now;
        }
        if t.procs.alive.is_empty() && selection.rules.is_empty() {
            break "every traced process has exited";
        }
        if t.sink.record_failed() {
            break "the record file cannot be written";
        }
    };
    log::info!("stopping: {reason}; detaching and flushing");
    if t.tls_watch.rechecks > 0 {
        log::info!(
            "TLS: {} processes inspected again after a TLS handshake (OpenSSL loaded after they started)",
            t.tls_watch.rechecks
        );
    }
    let counters = t.capture.counters();
    if counters.tls_learnt + counters.tls_ambiguous + counters.tls_unattributed > 0 {
        log::info!(
            "TLS sockets learnt from ciphertext reads (memory-BIO OpenSSL such as Node.js): {} bound, {} bound anew after reuse, {} left unbound as ambiguous; {} OpenSSL calls' plaintext dropped for want of a socket",
            counters.tls_learnt,
            counters.tls_rebound,
            counters.tls_ambiguous,
            counters.tls_unattributed
        );
    }
    if cfg.probe_stats {
        report_probe_costs(&t.capture.probe_costs());
    }
    // Detach every probe first, so the ring stops filling; then take what it still holds, then
    // everything the sink holds.
    drop(t.capture);
    drain(&mut ring.get_mut().0, &mut t.sink, &mut changes, usize::MAX)?;
    drop(ring);
    if let Some(p) = &peer {
        p.log_summary();
    }
    if let Some(c) = control {
        c.stop(Duration::from_secs(2)).await;
    }
    t.sink.finish(mono_now_ns(), &counters).await
}

/// Applies a validated remote configuration whole: everything that can fail (compiling the
/// selectors and the rules) is done before anything changes, so a failure leaves the configuration in force.
/// New targets are traced from the loop's next turn and processes no longer selected are
/// untraced after a grace, as after SIGHUP (see `selection.rs`).
fn apply_remote(
    plan: &crate::control::Plan,
    sink: &mut Destination,
    selection: &mut Selection,
) -> std::result::Result<(), String> {
    let mut retargeted = None;
    if let Some(target) = &plan.target {
        let mut next = Selection::new(Vec::new());
        let pids = next.retarget(target).map_err(|e| format!("{e:#}"))?;
        retargeted = Some((next, pids));
    }
    let rules = match &plan.rules {
        Some(r) => Some(crate::processors::ottl::Program::compile(r).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some((next, pids)) = retargeted {
        *selection = next;
        log::info!(
            "OpAMP: now selecting {} rule(s){}{}; {} process(es) to trace now",
            selection.rules.len(),
            if selection.rules.is_empty() { "" } else { ": " },
            selection.describe(),
            pids.len()
        );
        // Named as the new configuration names them, traced or not (see the loop's `matched`).
        selection.found.extend(pids);
    }
    sink.reconfigure(plan, rules, mono_now_ns());
    Ok(())
}

impl Tracer {
    /// Starts tracing `pid` (a child of `parent`, or what `/proc` says when None): adds it to
    /// the kernel's traced set, describes it (its Resource) and looks for the TLS library it
    /// loaded.
    fn start_tracing(&mut self, pid: u32, parent: Option<u32>) -> Result<()> {
        self.capture.trace(pid)?;
        self.procs.add(pid, parent, &mut self.sink)?;
        self.inspector.ask(pid);
        self.tls_watch.inspected(pid);
        Ok(())
    }

    /// A retarget's grace is over: the processes it no longer selects leave the kernel's traced
    /// set (see `selection.rs`).
    fn deselect(&mut self, dropped: &[u32]) {
        for &pid in dropped {
            if let Err(e) = self.capture.untrace(pid) {
                log::warn!("process {pid} is no longer selected but stays traced: {e:#}");
                continue;
            }
            self.procs.remove(pid, false);
            self.procs.dropped.insert(pid, std::time::Instant::now());
            self.tls_watch.exited(pid);
        }
        log::info!(
            "retarget: untraced {} process(es) no longer selected; tracing {}",
            dropped.len(),
            self.procs.alive.len()
        );
        if !dropped.is_empty() {
            log::debug!("retarget: untraced {dropped:?}");
        }
    }
}

/// A reconcile under way: the `/proc` snapshot read off the capture loop, with how long the
/// read took, and why it was asked for.
struct Reconciling {
    snapshot: std::sync::mpsc::Receiver<(Vec<process::ProcStat>, Duration)>,
    why: &'static str,
}

impl Tracer {
    /// Starts a reconcile (see [`Tracer::finish_reconcile`]) unless one is under way: the
    /// snapshot of `/proc` is read on a blocking thread, so the capture loop goes on draining
    /// the ring buffer meanwhile.
    fn start_reconcile(&mut self, why: &'static str) {
        if self.reconciling.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        tokio::task::spawn_blocking(move || {
            let began = std::time::Instant::now();
            let snapshot = process::snapshot(process::proc_root());
            let _ = tx.send((snapshot, began.elapsed()));
        });
        self.reconciling = Some(Reconciling { snapshot: rx, why });
    }

    /// Once the snapshot is read: makes the traced set agree with `/proc` and the kernel's marks
    /// (see `capture::lineage::reconcile`). It learns the traced processes whose fork record was
    /// lost, traces children of traced processes the fork probe missed, untraces what the kernel
    /// marks with no traced ancestor, and forgets the known processes that are gone. What
    /// changed since the snapshot is checked again first: a process learnt since is not gone
    /// and not untraced, and one that exited since is not traced.
    fn finish_reconcile(&mut self, follow_children: bool) -> Result<()> {
        let Some(pending) = &self.reconciling else {
            return Ok(());
        };
        let (snapshot, read) = match pending.snapshot.try_recv() {
            Ok(got) => got,
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.reconciling = None;
                return Ok(());
            }
        };
        let why = pending.why;
        self.reconciling = None;
        let began = std::time::Instant::now();
        let pids: Vec<u32> = snapshot.iter().filter(|s| s.alive).map(|s| s.pid).collect();
        let marked: HashSet<u32> = pids
            .iter()
            .zip(self.capture.traced_of(&pids)?)
            .filter_map(|(&pid, traced)| traced.then_some(pid))
            .collect();
        let mut plan = lineage::reconcile(
            &snapshot,
            &self.procs.lineage,
            |pid| marked.contains(&pid),
            follow_children,
            std::process::id(),
        );
        let root = process::proc_root();
        let start_then: HashMap<u32, u64> = snapshot.iter().map(|s| (s.pid, s.start)).collect();
        let lineage = &self.procs.lineage;
        let live_start = |pid: u32| {
            process::stat_at(root, pid)
                .filter(|s| s.alive)
                .map(|s| s.start)
        };
        plan.gone.retain(|&pid| {
            let known = lineage.start_of(pid).unwrap_or(UNKNOWN_START);
            live_start(pid).is_none_or(|now| known != UNKNOWN_START && now != known)
        });
        let unchanged = |&(pid, _): &(u32, u32)| {
            !lineage.knows(pid)
                && live_start(pid).is_some_and(|now| start_then.get(&pid) == Some(&now))
        };
        plan.learn.retain(unchanged);
        plan.trace.retain(unchanged);
        plan.untrace.retain(|&pid| !lineage.knows(pid));
        for &pid in &plan.gone {
            if !plan.learn.iter().any(|&(p, _)| p == pid)
                && let Err(e) = self.capture.untrace(pid)
            {
                log::warn!("process {pid} exited unseen; leaving the traced set: {e:#}");
            }
            self.procs.remove(pid, true);
            self.tls_watch.exited(pid);
        }
        for &(pid, parent) in plan.learn.iter().chain(&plan.trace) {
            self.procs.inherit(pid, parent);
            self.start_tracing(pid, Some(parent))?;
        }
        for &pid in &plan.untrace {
            if let Err(e) = self.capture.untrace(pid) {
                log::warn!("process {pid} has no traced ancestor but stays traced: {e:#}");
            }
        }
        let took = began.elapsed();
        if plan.is_empty() {
            log::debug!(
                "reconcile with /proc ({why}): nothing to do; {} processes read in {read:?} (off the capture loop), compared in {took:?}",
                snapshot.len()
            );
        } else {
            log::info!(
                "reconcile with /proc ({why}): {} traced process(es) learnt (fork record lost), {} child(ren) of traced processes traced, {} process(es) with no traced ancestor untraced, {} gone; {} processes read in {read:?} (off the capture loop), compared in {took:?}",
                plan.learn.len(),
                plan.trace.len(),
                plan.untrace.len(),
                plan.gone.len(),
                snapshot.len()
            );
            log::debug!("reconcile: {plan:?}");
        }
        Ok(())
    }
}

/// Plaintext of OpenSSL traffic: probe the OpenSSL the inspection found (once per file).
fn apply_tls(
    capture: &mut Capture,
    pid: u32,
    answer: std::io::Result<TlsTarget>,
    watch: &mut TlsWatch,
) {
    let target = match answer {
        Ok(t) => t,
        // Gone before it was looked at.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::debug!("TLS: process {pid}: {e}");
            return;
        }
        Err(e) => {
            log::warn!("TLS traffic of process {pid} will not be decoded: {e}");
            TlsTarget::Nothing
        }
    };
    watch.answered(pid, &target);
    match capture.attach_tls(pid, &target) {
        Ok(Some(file)) => log::info!(
            "TLS: probing OpenSSL in {}{} (for process {pid})",
            file.display(),
            match &target {
                TlsTarget::Probe(p) if p.executable => ", which the executable exports",
                _ => "",
            }
        ),
        // No OpenSSL to probe: a TLS stack it cannot probe is reported, never skipped silently.
        Ok(None) => {
            if let TlsTarget::Uncovered(stack) = target {
                log::warn!(
                    "TLS: process {pid} uses {stack}, which ztrace cannot decode: its TLS traffic will not appear as spans"
                );
            }
        }
        Err(e) => log::warn!("TLS traffic of process {pid} will not be decoded: {e:#}"),
    }
}

/// Waits for peers' answers; never resolves when cross-host links are off.
async fn peer_answers(peer: &mut Option<PeerLink>, out: &mut Vec<PeerAnswer>) {
    match peer {
        Some(p) => p.answers(out).await,
        None => std::future::pending().await,
    }
}

/// `--probe-stats`: one line per probe that ran, costliest first, and the total.
fn report_probe_costs(costs: &[crate::capture::ProbeCost]) {
    let mut costs = costs.to_vec();
    costs.sort_by_key(|c| std::cmp::Reverse(c.time));
    let total: Duration = costs.iter().map(|c| c.time).sum();
    for c in &costs {
        eprintln!(
            "ztrace: probe cost: {} ran {} times, {:.0} ns per run, {:.3} CPU s in all",
            c.name,
            c.runs,
            c.time.as_nanos() as f64 / c.runs.max(1) as f64,
            c.time.as_secs_f64()
        );
    }
    eprintln!(
        "ztrace: probe cost: all probes {:.3} CPU s",
        total.as_secs_f64()
    );
}

/// Records handled per turn of the capture loop before it looks at signals and timers again.
const DRAIN_BATCH: usize = 4096;
/// How often the ring buffer is drained when the probes have not woken us (see `submit` in the
/// probes' maps.rs): the delay a record may wait, and a bound on wake-ups per second.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// Feeds up to `max` records to the sink; true when the ring is empty.
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    sink: &mut Destination,
    changes: &mut Vec<ProcChange>,
    max: usize,
) -> Result<bool> {
    for _ in 0..max {
        match ring.next() {
            Some(item) => sink.on_record(&item, changes)?,
            None => return Ok(true),
        }
    }
    Ok(false)
}

fn describe(export: &ExportConfig) -> String {
    let mut s = match &export.output {
        Output::Otlp(target) => format!("exporting {}", target.describe()),
        Output::Console => "printing spans here (set --otlp-endpoint to export)".into(),
        Output::Json => "printing spans as JSON lines".into(),
    };
    for (name, target) in [("metrics", &export.metrics), ("logs", &export.logs)] {
        if let Some(t) = target {
            s.push_str(&format!("; {name}: {}", t.describe()));
        }
    }
    s
}

/// What the OpAMP server is told: unhealthy while spans fail to export.
fn health(
    traced: usize,
    before: &(KernelCounters, ExportStats),
    now: &(KernelCounters, ExportStats),
) -> crate::control::Health {
    let failed = now.1.spans_dropped_failed - before.1.spans_dropped_failed;
    crate::control::Health {
        healthy: failed == 0,
        status: format!("tracing {traced} process(es)"),
        last_error: if failed == 0 {
            String::new()
        } else {
            format!("{failed} spans could not be exported in the last second")
        },
    }
}

fn report_losses(before: &(KernelCounters, ExportStats), now: &(KernelCounters, ExportStats)) {
    let ring = now.0.ringbuf_full - before.0.ringbuf_full;
    let queue = now.1.spans_dropped_queue_full - before.1.spans_dropped_queue_full;
    let failed = now.1.spans_dropped_failed - before.1.spans_dropped_failed;
    if ring + queue + failed > 0 {
        log::warn!(
            "lost in the last second: {ring} kernel events (ring buffer full), {queue} spans (export queue full), {failed} spans (export failed)"
        );
    }
}
