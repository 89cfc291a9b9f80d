//! The common-case flags of tail sampling and anomaly detection (each with a `ZTRACE_*`
//! variable); the full policy list and every tuning knob are file settings
//! (`[tail_sampling]`, `[[tail_sampling.policies]]`, `[anomaly]`), resolved by
//! `config::resolve_tail` together with these flags.

use std::time::Duration;

use crate::config::{self, AnomalyConfig, ConfigFile, TailFlags, TailSampling, parse_duration};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TailArgs {
    /// Tail sampling: keep every trace with an error span (a `status_code ERROR` policy).
    /// Traces are decided when complete; with any tail policy, traces no policy keeps are dropped.
    #[arg(long, env = "ZTRACE_KEEP_ERRORS")]
    pub keep_errors: bool,
    /// Tail sampling: keep every trace at least this long (a `latency` policy), e.g. 500ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "ZTRACE_KEEP_SLOWER_THAN")]
    pub keep_slower_than: Option<Duration>,
    /// Tail sampling: keep this share of the other traces (a `probabilistic` policy), e.g. 1%
    /// or 0.01; 0 keeps none.
    #[arg(long, value_name = "PERCENT", env = "ZTRACE_SAMPLE_HEALTHY")]
    pub sample_healthy: Option<String>,
    /// Tail sampling: keep the traces of operations in an anomalous window (an `anomaly`
    /// policy; turns anomaly detection on).
    #[arg(long, env = "ZTRACE_KEEP_ANOMALOUS")]
    pub keep_anomalous: bool,
    /// Anomaly detection: per service and operation, latency p95 and error rate against EWMA
    /// baselines; starts and ends are logged here and exported as `ztrace.anomaly` log records.
    #[arg(long, env = "ZTRACE_ANOMALY")]
    pub anomaly: bool,
    /// Anomaly detection window [default: 10s; file: anomaly.window].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "ZTRACE_ANOMALY_WINDOW")]
    pub anomaly_window: Option<Duration>,
}

impl TailArgs {
    /// Whether any of these flags is given (they then shape `[tail_sampling]`).
    pub fn any(&self) -> bool {
        self.keep_errors
            || self.keep_slower_than.is_some()
            || self.sample_healthy.is_some()
            || self.keep_anomalous
            || self.anomaly
            || self.anomaly_window.is_some()
    }

    /// Tail sampling and anomaly detection settings (None: off).
    pub fn config(
        &self,
        file: Option<&ConfigFile>,
    ) -> Result<(Option<TailSampling>, Option<AnomalyConfig>), String> {
        config::resolve_tail(
            &TailFlags {
                keep_errors: self.keep_errors,
                keep_slower_than: self.keep_slower_than,
                sample_healthy: self.sample_healthy.clone(),
                keep_anomalous: self.keep_anomalous,
                anomaly: self.anomaly,
                anomaly_window: self.anomaly_window,
            },
            file,
        )
        .map_err(|e| e.0)
    }
}
