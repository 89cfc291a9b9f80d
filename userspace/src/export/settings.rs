//! What the export stage is asked to do: where spans go ([`Output`]) and the resolved settings
//! of every output ([`ExportConfig`]). Owns no runtime state.

use std::time::Duration;

use crate::config::{Batching, Config, OtlpTarget, Sampler, Temporality, Terminal};

/// Where finished spans go.
#[derive(Clone, Debug)]
pub enum Output {
    /// OTLP (gRPC or HTTP/protobuf) to a collector.
    Otlp(Box<OtlpTarget>),
    /// One readable line per span on stdout.
    Console,
    /// One JSON object per span per line on stdout.
    Json,
}

/// Tuning of the export stage.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub output: Output,
    /// Spans waiting for export; beyond this, `submit` drops (and counts) new spans.
    pub max_queue: usize,
    /// Spans per export call.
    pub max_batch: usize,
    /// Longest a span waits for its batch to fill.
    pub batch_delay: Duration,
    /// Which finished spans are exported.
    pub sampler: Sampler,
    /// Added to (and overriding) the Resource of every process, for every signal.
    pub resource_attributes: Vec<(String, String)>,
    /// Where metrics go (None: discarded).
    pub metrics: Option<OtlpTarget>,
    /// Where logs go (None: discarded).
    pub logs: Option<OtlpTarget>,
    /// Queue bound (in log records), batch size and delay of logs.
    pub log_batching: Batching,
    /// Queue bound of metrics, in data points.
    pub metrics_max_queue: usize,
    /// For the metrics producer (the exporter only ships what it is given): how often to export
    /// (`OTEL_METRIC_EXPORT_INTERVAL`), and the temporality the collector prefers.
    pub metric_export_interval: Duration,
    pub temporality: Temporality,
    /// The most one metrics export may take, retries included (`OTEL_METRIC_EXPORT_TIMEOUT`);
    /// None: `3 × timeout`, as for the other signals. Collection itself is synchronous and does
    /// no I/O, so bounding the export bounds the collection+export cycle.
    pub metric_export_timeout: Option<Duration>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        let spans = crate::config::DEFAULT_SPAN_BATCHING;
        ExportConfig {
            output: Output::Console,
            max_queue: spans.max_queue,
            max_batch: spans.max_batch,
            batch_delay: spans.delay,
            sampler: Sampler::ParentBased(crate::config::RootSampler::AlwaysOn),
            resource_attributes: Vec::new(),
            metrics: None,
            logs: None,
            log_batching: crate::config::DEFAULT_LOG_BATCHING,
            metrics_max_queue: 64 * 1024,
            metric_export_interval: Duration::from_secs(60),
            temporality: Temporality::Cumulative,
            metric_export_timeout: None,
        }
    }
}

impl ExportConfig {
    /// The export stage as `config` says.
    pub fn from_config(config: &Config) -> ExportConfig {
        let terminal = match config.terminal {
            Terminal::Console => Output::Console,
            Terminal::Json => Output::Json,
        };
        ExportConfig {
            output: config
                .traces
                .clone()
                .map_or(terminal, |t| Output::Otlp(Box::new(t))),
            max_queue: config.span_batching.max_queue,
            max_batch: config.span_batching.max_batch,
            batch_delay: config.span_batching.delay,
            sampler: config.sampler,
            resource_attributes: config.resource_attributes.clone(),
            metrics: config.metrics.clone(),
            logs: config.logs.clone(),
            log_batching: config.log_batching,
            metric_export_interval: config.metric_export_interval,
            metric_export_timeout: Some(config.metric_export_timeout),
            temporality: config.temporality,
            ..ExportConfig::default()
        }
    }

    /// The OTLP target of spans, if they go to a collector.
    fn trace_target(&self) -> Option<&OtlpTarget> {
        match &self.output {
            Output::Otlp(t) => Some(t),
            _ => None,
        }
    }

    /// The longest single export attempt of any signal (the grace of an unannounced shutdown).
    pub(super) fn longest_timeout(&self) -> Duration {
        [
            self.trace_target(),
            self.metrics.as_ref(),
            self.logs.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.timeout)
        .max()
        .unwrap_or(crate::config::DEFAULT_TIMEOUT)
    }
}
