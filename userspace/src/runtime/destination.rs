//! Where the live daemon's captured records go: the span pipeline, the processors and the
//! exporter (with the daemon's own telemetry), or a record file. The capture loop (`live`) calls
//! these at its turns — a process seen, a record read, a poll, a remote reconfiguration, the peer
//! channel's traffic, the end — and never reaches into the stages itself.

use std::{sync::Arc, time::Duration};

use anyhow::Result;

use crate::{
    capture::KernelCounters,
    export::{ExportStats, Exporter},
    model::ProcessInfo,
    peer::{PeerEvent, PeerLink},
    processors::chain::Processors,
    runtime::pipeline::{Pipeline, PipelineStats, ProcChange},
    runtime::record_sink::RecordSink,
    runtime::telemetry::Telemetry,
};

/// A peer's answer to one of the linker's lookups.
pub(super) type PeerAnswer = (crate::link::Handle, crate::link::crosshost::Outcome);

/// Where captured records go.
pub(super) enum Destination {
    Trace {
        pipeline: Box<Pipeline>,
        processors: Box<Processors>,
        exporter: Exporter,
        /// Released by the linker, then what the processors let through.
        released: Vec<crate::model::Span>,
        spans: Vec<crate::model::Span>,
        telemetry: Box<Telemetry>,
    },
    Record(RecordSink),
}

impl Destination {
    pub(super) fn process(&mut self, info: ProcessInfo) -> Result<()> {
        match self {
            Destination::Trace {
                exporter,
                telemetry,
                processors,
                ..
            } => {
                processors.process_info(&info);
                let info = Arc::new(info);
                telemetry.process(Arc::clone(&info));
                exporter.process(info);
            }
            Destination::Record(sink) => sink.process(&info)?,
        }
        Ok(())
    }

    pub(super) fn on_record(&mut self, raw: &[u8], changes: &mut Vec<ProcChange>) -> Result<()> {
        match self {
            Destination::Trace { pipeline, .. } => pipeline.on_record(raw, changes),
            Destination::Record(sink) => sink.on_record(raw, changes)?,
        }
        Ok(())
    }

    pub(super) fn poll(&mut self, now_ns: u64) -> Result<()> {
        if let Destination::Trace {
            pipeline,
            processors,
            exporter,
            released,
            spans,
            telemetry,
        } = self
        {
            // The pipeline measured every released span (metrics) before the processors decide
            // what is exported: metrics stay exact whatever is sampled.
            pipeline.poll(now_ns, released);
            processors.run(released, now_ns, spans);
            exporter.submit_all(spans);
            telemetry.poll(pipeline, processors, exporter, false);
        }
        Ok(())
    }

    /// A remote configuration's sampling and rules. Traces the tail sampler holds stay with the
    /// old policies until their due time (only those of a list still retiring from an earlier
    /// change are decided now, and submitted under the old head sampler); the rules (compiled by
    /// the caller) apply from the next batch.
    pub(super) fn reconfigure(
        &mut self,
        plan: &crate::control::Plan,
        rules: Option<crate::processors::ottl::Program>,
        now_ns: u64,
    ) {
        if let Destination::Trace {
            processors,
            exporter,
            spans,
            ..
        } = self
        {
            if let Some(tail) = &plan.tail {
                processors.set_tail(tail.as_ref(), now_ns, spans);
                exporter.submit_all(spans);
            }
            if let Some(sampler) = plan.sampler {
                exporter.set_sampler(sampler);
            }
            if let Some(rules) = rules {
                processors.set_rules(rules);
            }
        }
    }

    /// Cross-host links: applies peers' answers, hands the linker's sends and lookups over; the
    /// tail sampler learns which agents share its traces, takes their votes and sends its own.
    pub(super) fn peer_io(&mut self, peer: &mut Option<PeerLink>, answers: &mut Vec<PeerAnswer>) {
        let (
            Some(peer),
            Destination::Trace {
                pipeline,
                processors,
                exporter,
                spans,
                ..
            },
        ) = (peer, self)
        else {
            return;
        };
        for (h, o) in answers.drain(..) {
            pipeline.peer_answer(h, o);
        }
        peer.submit(|s, l| pipeline.take_peer_io(s, l), answers);
        for (h, o) in answers.drain(..) {
            pipeline.peer_answer(h, o);
        }
        let mut events = Vec::new();
        peer.events(&mut events);
        for e in events {
            match e {
                PeerEvent::Participant { trace_id, agent } => {
                    processors.participant(trace_id, agent);
                }
                PeerEvent::Vote { from, vote } => processors.vote(from, vote, spans),
            }
        }
        exporter.submit_all(spans);
        let mut votes = Vec::new();
        processors.take_votes(&mut votes);
        for (to, vote) in votes {
            peer.vote(to, vote);
        }
    }

    /// Each second: the record file gets what is buffered.
    pub(super) fn flush_record(&mut self) {
        if let Destination::Record(sink) = self {
            sink.flush();
        }
    }

    /// Whether recording failed (a full disk): capture stops.
    pub(super) fn record_failed(&self) -> bool {
        matches!(self, Destination::Record(sink) if sink.failed())
    }

    pub(super) fn kernel_counters(&mut self, counters: KernelCounters) {
        if let Destination::Trace { telemetry, .. } = self {
            telemetry.kernel(counters);
        }
    }

    pub(super) fn export_stats(&self) -> ExportStats {
        match self {
            Destination::Trace { exporter, .. } => exporter.stats(),
            Destination::Record(_) => ExportStats::default(),
        }
    }

    pub(super) async fn finish(self, now_ns: u64, counters: &KernelCounters) -> Result<()> {
        match self {
            Destination::Trace {
                mut pipeline,
                mut processors,
                exporter,
                mut released,
                mut spans,
                mut telemetry,
            } => {
                pipeline.drain(now_ns, &mut released);
                processors.drain(&mut released, now_ns, &mut spans);
                exporter.submit_all(&mut spans);
                // The last log lines and a final collection of the metrics.
                telemetry.kernel(*counters);
                telemetry.poll(&mut pipeline, &mut processors, &exporter, true);
                exporter.flush_signals(Duration::from_secs(5)).await;
                let stats = exporter.shutdown(Duration::from_secs(5)).await;
                telemetry.summary(&pipeline, &processors, &stats);
                summary(&pipeline.stats(), counters, &stats);
                if let Some(x) = pipeline.crosshost_stats() {
                    log::info!("summary: cross-host links: {x}");
                }
            }
            Destination::Record(sink) => sink.finish(counters)?,
        }
        Ok(())
    }
}

/// The exit summary of a run: what was captured, linked, exported and lost.
pub(super) fn summary(p: &PipelineStats, k: &KernelCounters, e: &ExportStats) {
    log::info!(
        "summary: {} kernel events ({} lost: ring buffer full {}, arg map full {}; {} payload reads failed), {} records decoded ({} undecodable), \
         {} connections with a recognised protocol, {} spans ({} exported, {} dropped: queue {}, export failures {}; {} sampled out), \
         links: {} traceparent, {} in-process ({} confirmed by the response, {} from the response alone), {} cross-process ({} requests answered by another thread than read them), {} by content ({} of them overruling the thread's context; content also agreed with {} thread links), {} ambiguous left unlinked ({} contradicted by the response, {} outlived the parent, {} written after inputs of several requests, {} with several requests in progress and no evidence; {} connect-time and {} thread causes not taken while another request waited), cross-process timestamps: {} adjusted to the caller's window (largest {} µs), {} disagreements beyond {} µs left; {} desyncs, {} exchanges without response, {} connections still open; parser memory: peak {} KiB of the {} KiB budget, {} connections shed",
        k.submitted + k.ringbuf_full,
        k.ringbuf_full + k.args_full,
        k.ringbuf_full,
        k.args_full,
        k.read_failed,
        p.records,
        p.decode_errors,
        p.assemble.http_connections,
        p.link.spans_released,
        e.spans_exported,
        e.spans_dropped_queue_full + e.spans_dropped_failed,
        e.spans_dropped_queue_full,
        e.spans_dropped_failed,
        e.spans_sampled_out,
        p.link.traceparent_links,
        p.link.thread_links + p.link.response_links,
        p.link.confirmed_links,
        p.link.response_links,
        p.link.cross_process_links,
        p.link.moved_threads,
        p.link.content_links,
        p.link.content_overrode_thread,
        p.link.content_confirmed,
        p.link.ambiguous(),
        p.link.contradicted,
        p.link.outlived_parent,
        p.link.abstained_mixed_inputs,
        p.link.abstained_no_evidence,
        p.link.connect_causes_refused,
        p.link.thread_causes_refused,
        p.link.stamps_adjusted,
        p.link.max_stamp_adjust_ns / 1000,
        p.link.stamps_left,
        crate::link::MAX_STAMP_ADJUST_NS / 1000,
        p.assemble.desyncs,
        p.assemble.aborted_exchanges,
        p.assemble.open_connections,
        p.assemble.parser_bytes_peak >> 10,
        p.assemble.parser_budget >> 10,
        p.assemble.budget_shed,
    );
}
