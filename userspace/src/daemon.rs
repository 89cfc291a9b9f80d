//! The live daemon: loads the probes, seeds the traced set, then runs one loop that drains the
//! ring buffer into the pipeline and the pipeline's spans into the exporter, until Ctrl-C/SIGTERM,
//! `--duration`, or the exit of every traced process. On the way out it detaches, flushes every
//! pending span and prints what was captured and what was lost.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::Instant};

use crate::{
    capture::{Capture, CaptureOptions, KernelCounters, RingFd},
    export::{ExportConfig, ExportStats, Exporter, Output},
    pipeline::{Pipeline, PipelineStats, ProcChange},
    process,
};

pub struct DaemonConfig {
    pub pids: Vec<u32>,
    pub follow_children: bool,
    pub service_name: Option<String>,
    pub duration: Option<Duration>,
    pub output: Output,
    pub payload_cap: u32,
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

pub fn run(cfg: DaemonConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(cfg))
}

struct Processes {
    alive: HashSet<u32>,
    service_name: Option<String>,
    host_name: String,
}

impl Processes {
    fn add(&mut self, pid: u32, exporter: &Exporter) {
        self.alive.insert(pid);
        exporter.process(Arc::new(process::info(
            pid,
            self.service_name.as_deref(),
            &self.host_name,
        )));
    }
}

async fn run_async(cfg: DaemonConfig) -> Result<()> {
    let exporter = Exporter::spawn(ExportConfig {
        output: cfg.output.clone(),
        ..ExportConfig::default()
    });
    let mut capture = Capture::load(&CaptureOptions {
        payload_cap: cfg.payload_cap,
        follow_children: cfg.follow_children,
        ..CaptureOptions::default()
    })?;
    let mut procs = Processes {
        alive: HashSet::new(),
        service_name: cfg.service_name.clone(),
        host_name: process::host_name(),
    };
    let mut targets = cfg.pids.clone();
    if cfg.follow_children {
        targets.extend(process::descendants(&cfg.pids));
    }
    for &pid in &targets {
        capture.trace(pid)?;
        procs.add(pid, &exporter);
    }
    capture.attach()?;
    // SAFETY: RingFd owns the ring buffer's fd; it lives inside the AsyncFd until deregistered.
    let mut ring = unsafe { AsyncFd::register(RingFd(capture.ring()?)) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    log::info!(
        "tracing {} process(es): {:?}{}; {}",
        targets.len(),
        targets,
        if cfg.follow_children {
            " and their future children"
        } else {
            ""
        },
        describe(&cfg.output)
    );

    let mut pipeline =
        Pipeline::new(clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC));
    let mut spans = Vec::new();
    let mut changes = Vec::new();
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_report = Instant::now();
    let mut reported = (KernelCounters::default(), ExportStats::default());

    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                drain(&mut guard.get_inner_mut().0, &mut pipeline, &mut changes);
                guard.clear_ready();
            }
            _ = tick.tick() => {}
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
            _ = sleep_until(deadline) => break "--duration elapsed",
        }
        for change in changes.drain(..) {
            match change {
                ProcChange::Forked { pid, parent } => {
                    log::info!("following new child process {pid} of {parent}");
                    procs.add(pid, &exporter);
                }
                ProcChange::Execed { pid } => procs.add(pid, &exporter),
                ProcChange::Exited { pid } => {
                    log::info!("traced process {pid} exited");
                    procs.alive.remove(&pid);
                }
            }
        }
        pipeline.poll(mono_now_ns(), &mut spans);
        for span in spans.drain(..) {
            exporter.submit(span);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            // A missed exit event (e.g. the ring was full) must not keep us running forever.
            procs.alive.retain(|&pid| process::is_alive(pid));
            let now = (capture.counters(), exporter.stats());
            report_losses(&reported, &now);
            reported = now;
        }
        if procs.alive.is_empty() {
            break "every traced process has exited";
        }
    };
    log::info!("stopping: {reason}; detaching and flushing");
    // Last records already in the ring, then everything the pipeline still holds.
    drain(&mut ring.get_mut().0, &mut pipeline, &mut changes);
    let counters = capture.counters();
    drop(ring);
    drop(capture); // detaches every probe
    pipeline.drain(mono_now_ns(), &mut spans);
    for span in spans.drain(..) {
        exporter.submit(span);
    }
    let stats = exporter.shutdown(Duration::from_secs(5)).await;
    summary(&pipeline.stats(), &counters, &stats);
    Ok(())
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    pipeline: &mut Pipeline,
    changes: &mut Vec<ProcChange>,
) {
    while let Some(item) = ring.next() {
        pipeline.on_record(&item, changes);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn describe(output: &Output) -> String {
    match output {
        Output::Otlp { endpoint } => format!("exporting OTLP/gRPC to {endpoint}"),
        Output::Console => "printing spans here (set --otlp-endpoint to export)".into(),
        Output::Json => "printing spans as JSON lines".into(),
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

fn summary(p: &PipelineStats, k: &KernelCounters, e: &ExportStats) {
    log::info!(
        "summary: {} kernel events ({} lost: ring buffer full {}, arg map full {}), {} records decoded ({} undecodable), \
         {} HTTP connections, {} spans ({} exported, {} dropped: queue {}, export failures {}), \
         links: {} traceparent, {} thread, {} cross-process, {} ambiguous left unlinked; {} desyncs, {} exchanges without response",
        k.submitted + k.ringbuf_full,
        k.ringbuf_full + k.args_full,
        k.ringbuf_full,
        k.args_full,
        p.records,
        p.decode_errors,
        p.assemble.http_connections,
        p.link.spans_released,
        e.spans_exported,
        e.spans_dropped_queue_full + e.spans_dropped_failed,
        e.spans_dropped_queue_full,
        e.spans_dropped_failed,
        p.link.traceparent_links,
        p.link.thread_links,
        p.link.cross_process_links,
        p.link.ambiguous_thread,
        p.assemble.desyncs,
        p.assemble.aborted_exchanges,
    );
}
