//! The export stage's counters: the live atomics the workers bump ([`Counters`]) and the
//! snapshots handed out ([`ExportStats`], [`SignalStats`]). Counting only; no I/O.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters of the export stage (a snapshot).
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the output accepted (collector acknowledged / line written).
    pub spans_exported: u64,
    /// Spans refused by `submit` because the queue was full (or the exporter had shut down).
    pub spans_dropped_queue_full: u64,
    /// Spans given up on: failed batches, spans the collector rejected, spans unsent at the
    /// shutdown deadline.
    pub spans_dropped_failed: u64,
    /// Batches given up on.
    pub batches_failed: u64,
    /// Export attempts that were retries.
    pub retries: u64,
    /// Spans the sampler decided not to export (not a loss).
    pub spans_sampled_out: u64,
    /// Metrics, counted in data points.
    pub metrics: SignalStats,
    /// Logs, counted in log records.
    pub logs: SignalStats,
}

/// Counters of the metrics or logs export (a snapshot), in data points or log records.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct SignalStats {
    /// Acknowledged by the collector.
    pub exported: u64,
    /// Refused because the queue was full (or the exporter had shut down).
    pub dropped_queue_full: u64,
    /// Given up on: failed batches, rejected items, unsent at the shutdown deadline.
    pub dropped_failed: u64,
    pub batches_failed: u64,
    pub retries: u64,
    /// Discarded because the signal has no OTLP target (terminal output).
    pub not_exported: u64,
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_failed: AtomicU64,
    pub(crate) batches_failed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) sampled_out: AtomicU64,
    pub(crate) not_exported: AtomicU64,
    /// Items waiting in a request queue (metrics, logs), whose channel counts requests.
    pub(crate) queued: AtomicUsize,
    /// Items queued (metrics, logs) and not yet accounted for as exported or failed: queued,
    /// held for a batch or in flight. Zero means everything submitted so far was settled.
    pub(crate) outstanding: AtomicUsize,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ExportStats {
        ExportStats {
            spans_exported: self.exported.load(Ordering::Relaxed),
            spans_dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            spans_dropped_failed: self.dropped_failed.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            spans_sampled_out: self.sampled_out.load(Ordering::Relaxed),
            ..ExportStats::default()
        }
    }
    pub(crate) fn signal_snapshot(&self) -> SignalStats {
        SignalStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_failed: self.dropped_failed.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            not_exported: self.not_exported.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn dequeued(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
    /// `n` items taken off a request queue were accounted for (exported, failed or lost).
    pub(crate) fn settled(&self, n: usize) {
        self.outstanding.fetch_sub(n, Ordering::Relaxed);
    }
    pub(crate) fn exported(&self, n: usize) {
        self.exported.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// `n` spans were given up on; `batch` says whether that counts as a failed batch.
    pub(crate) fn failed(&self, n: usize, batch: bool) {
        self.dropped_failed.fetch_add(n as u64, Ordering::Relaxed);
        if batch {
            self.batches_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}
