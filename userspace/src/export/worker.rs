//! The span worker: drains the bounded span queue in batches (up to `max_batch` spans or
//! `batch_delay`, whichever comes first) into the configured output, and flushes at shutdown.
//! It must not block the submitting side, and it knows nothing about attribute mapping (that is
//! `semconv`) or wire formats (`otlp`, `wire`, `console`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::control::{Control, FOREVER, sleep_until};
use super::settings::Output;
use super::spare::SpareChunks;
use super::stats::Counters;
use super::{console, otlp};
use crate::model::{ProcessInfo, Span};
use crate::semconv::resource::ProcessTable;

/// How long the span worker lets a partial batch gather before taking more off the queue.
const GATHER: Duration = Duration::from_millis(10);

/// The export task's state.
pub(super) struct Worker {
    /// Chunks of spans (see `ExportHandle::submit_all`); `queued` counts the spans in them.
    pub(super) rx: mpsc::Receiver<Vec<Span>>,
    /// Where emptied chunks go back to the submitters.
    pub(super) spare: Arc<SpareChunks>,
    pub(super) queued: Arc<AtomicUsize>,
    /// Chunks just received, emptied into `carry` at once.
    pub(super) chunks: Vec<Vec<Span>>,
    /// Chunks received and not yet wholly in a batch (larger than a batch's room), in order. A
    /// full batch's worth at the front of the first one is exported where it lies (a chunk is
    /// usually a few times a batch: no span copied); only what tops up a partial batch moves.
    /// Each chunk only shrinks from its front, so it stays one contiguous slice.
    pub(super) carry: VecDeque<VecDeque<Span>>,
    /// Spans in `carry`.
    pub(super) carried: usize,
    pub(super) processes: mpsc::UnboundedReceiver<Arc<ProcessInfo>>,
    pub(super) table: ProcessTable,
    pub(super) output: Output,
    pub(super) destination: console::Destination,
    pub(super) counters: Arc<Counters>,
    pub(super) ctl: Control,
    /// Spans taken off the queue and not yet accounted for.
    pub(super) batch: Vec<Span>,
    pub(super) max_batch: usize,
    pub(super) batch_delay: Duration,
    pub(super) queue_drops_reported: u64,
    pub(super) queue_drops_reported_at: Option<Instant>,
}

enum Sink {
    Otlp(Box<otlp::OtlpSink>),
    Stdout(console::StdoutSink),
}

impl Worker {
    pub(super) async fn run(mut self) {
        let mut sink = match &self.output {
            Output::Otlp(target) => Sink::Otlp(Box::new(otlp::OtlpSink::new(target))),
            Output::Console => Sink::Stdout(console::StdoutSink::new(
                console::Format::Console,
                self.destination.clone(),
            )),
            Output::Json => Sink::Stdout(console::StdoutSink::new(
                console::Format::Json,
                self.destination.clone(),
            )),
        };
        // When the oldest span of the batch arrived (None: the batch is empty).
        let mut oldest: Option<Instant> = None;
        while self.ctl.deadline().is_none() {
            if self.fill() {
                // Received spans fill the batch already.
                self.export_batch(&mut sink).await;
                oldest = None;
                continue;
            }
            let flush_at = oldest.map(|t| t.checked_add(self.batch_delay).unwrap_or(t + FOREVER));
            let got = tokio::select! {
                biased;
                // The batch is completed from the queue and exported by `drain`: batch
                // boundaries then do not depend on when shutdown came (replay output is the
                // same on every run).
                _ = self.ctl.requested() => break,
                n = self.rx.recv_many(&mut self.chunks, 64) => n,
                _ = sleep_until(flush_at) => 0,
            };
            self.receive();
            let full = self.fill();
            if got == 0 && flush_at.is_none_or(|at| Instant::now() < at) {
                // Closed and empty: every sender is gone, so the Exporter was dropped.
                break;
            }
            let now = Instant::now();
            oldest = oldest.or(Some(now));
            if !full && flush_at.is_none_or(|at| now < at) {
                // Not full yet: let spans gather for a moment instead of being woken by each
                // one (spans arrive in bursts; thousands of wake-ups a second, each taking a
                // core from the traced application for a moment, was what the loop cost).
                let pause = now + GATHER;
                let until = flush_at.map_or(pause, |at| at.min(pause));
                tokio::select! {
                    biased;
                    _ = self.ctl.requested() => break,
                    _ = tokio::time::sleep_until(until) => {}
                }
                if flush_at.is_none_or(|at| Instant::now() < at) {
                    continue;
                }
            }
            self.export_batch(&mut sink).await;
            oldest = None;
        }
        self.drain(&mut sink).await;
    }

    /// Takes the chunks just received: into the batch while they fit (an empty batch becomes
    /// the chunk itself, no copy), the rest into `carry`, in order. What is left empty goes
    /// back to the submitters.
    fn receive(&mut self) {
        for mut chunk in self.chunks.drain(..) {
            self.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
            let fits = self.carry.is_empty() && self.batch.len() + chunk.len() <= self.max_batch;
            if fits && self.batch.is_empty() {
                std::mem::swap(&mut self.batch, &mut chunk);
            } else if fits {
                self.batch.append(&mut chunk);
            } else if !chunk.is_empty() {
                self.carried += chunk.len();
                self.carry.push_back(VecDeque::from(chunk));
                continue;
            }
            self.spare.put(chunk);
        }
    }

    /// Drops the first carried chunk, emptied, handing its room back.
    fn carried_out(&mut self) {
        if let Some(front) = self.carry.pop_front() {
            self.spare.put(Vec::from(front));
        }
    }

    /// The whole batch lying at the front of `carry`, to be exported in place: when the batch
    /// is empty and the first carried chunk holds at least a batch.
    fn batch_in_place(&self) -> Option<&[Span]> {
        let front = self.carry.front()?;
        let spans = front.as_slices().0;
        (self.batch.is_empty() && spans.len() == front.len() && spans.len() >= self.max_batch)
            .then(|| &spans[..self.max_batch])
    }

    /// Moves received spans into the batch, up to its size; true when a full batch is ready (in
    /// the batch, or in place at the front of `carry`).
    fn fill(&mut self) -> bool {
        if self.batch_in_place().is_some() {
            return true;
        }
        while self.batch.len() < self.max_batch {
            let Some(front) = self.carry.front_mut() else {
                break;
            };
            let n = (self.max_batch - self.batch.len()).min(front.len());
            self.batch.extend(front.drain(..n));
            self.carried -= n;
            if front.is_empty() {
                self.carried_out();
            }
        }
        self.batch.len() >= self.max_batch
    }

    /// Shutdown: take no more spans, export what is queued until the deadline.
    async fn drain(&mut self, sink: &mut Sink) {
        self.rx.close();
        let deadline = self.ctl.deadline().unwrap_or_else(Instant::now);
        loop {
            while !self.fill() {
                match self.rx.try_recv() {
                    Ok(chunk) => {
                        self.chunks.push(chunk);
                        self.receive();
                    }
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() && self.carry.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let mut unsent = self.batch.len() + self.carried;
                self.batch.clear();
                self.carry.clear();
                self.carried = 0;
                while let Ok(chunk) = self.rx.try_recv() {
                    self.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                    unsent += chunk.len();
                }
                self.counters.failed(unsent, true);
                log::warn!("export shutdown deadline reached: {unsent} spans were not sent");
                break;
            }
            self.export_batch(sink).await;
        }
        self.report_queue_drops(true);
    }

    /// Exports the batch ready in place at the front of `carry` (see `fill`), or else the
    /// batch, full or not.
    async fn export_batch(&mut self, sink: &mut Sink) {
        while let Ok(info) = self.processes.try_recv() {
            self.table.upsert(info);
        }
        let in_place = self.batch_in_place().map(<[Span]>::len);
        let spans = match in_place {
            Some(n) => &self.carry[0].as_slices().0[..n],
            None => &self.batch[..],
        };
        self.table.touch(spans);
        match sink {
            Sink::Otlp(s) => {
                s.export(spans, &self.table, &self.counters, &mut self.ctl)
                    .await
            }
            Sink::Stdout(s) => s.export(spans, &self.table, &self.counters).await,
        }
        // The sink accounted for every span; nothing can cancel us between that and this.
        match in_place {
            Some(n) => {
                self.carry[0].drain(..n);
                self.carried -= n;
                if self.carry[0].is_empty() {
                    self.carried_out();
                }
            }
            None => self.batch.clear(),
        }
        self.report_queue_drops(false);
    }

    /// Warns about queue-full drops, at most every 10 s.
    fn report_queue_drops(&mut self, force: bool) {
        let total = self.counters.dropped_queue_full.load(Ordering::Relaxed);
        if total == self.queue_drops_reported {
            return;
        }
        let now = Instant::now();
        let due = self
            .queue_drops_reported_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10));
        if due || force {
            log::warn!(
                "export queue full: dropped {} spans ({total} in all)",
                total - self.queue_drops_reported
            );
            self.queue_drops_reported = total;
            self.queue_drops_reported_at = Some(now);
        }
    }
}

impl Drop for Worker {
    /// Aborted or torn down with its runtime: whatever it still held is lost; count it.
    fn drop(&mut self) {
        let queued = self.queued.load(Ordering::Relaxed);
        let lost = self.batch.len() + self.carried + queued;
        if lost > 0 {
            self.counters.failed(lost, !self.batch.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Semantic conventions: one mapping for every output.
