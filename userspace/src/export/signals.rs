//! STOP-GAP metrics and logs transport, to be replaced at merge by the OTLP transport for all
//! signals (the `otlp` branch), which provides the same two methods. Kept apart and small on
//! purpose: requests are prost-encoded and sent over plain OTLP/gRPC (the `MetricsService` and
//! `LogsService` `Export` calls) on a channel of their own, one attempt each, from a bounded queue
//! so that the capture loop never waits; everything is counted. Console/JSON outputs print
//! neither signal (the daemon's summary says what there was).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::{Exporter, Output, wire::RawCodec};

const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
/// Requests waiting to be sent (each is a whole interval of metrics or a batch of log lines).
const QUEUE: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the metrics and logs signals (totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalStats {
    pub metric_points_exported: u64,
    pub logs_exported: u64,
    pub metrics_queue_dropped: u64,
    pub logs_queue_dropped: u64,
    pub metrics_failed: u64,
    pub logs_failed: u64,
}

#[derive(Default, Debug)]
struct Counters([AtomicU64; 6]);

enum Job {
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
pub(crate) struct Signals {
    tx: Option<mpsc::Sender<Job>>,
    counters: Arc<Counters>,
}

impl Signals {
    /// Spawns the sender task for an OTLP output (inside a tokio runtime; otherwise, and for
    /// console/JSON, requests are not sent).
    pub(crate) fn new(output: &Output) -> Signals {
        let counters = Arc::new(Counters::default());
        let tx = match (output, tokio::runtime::Handle::try_current()) {
            (Output::Otlp { endpoint }, Ok(rt)) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                rt.spawn(run(endpoint.clone(), rx, Arc::clone(&counters)));
                Some(tx)
            }
            _ => None,
        };
        Signals { tx, counters }
    }
}

async fn run(endpoint: tonic::transport::Uri, mut rx: mpsc::Receiver<Job>, c: Arc<Counters>) {
    let channel = tonic::transport::Endpoint::from(super::otlp::with_scheme(endpoint.clone()))
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect_lazy();
    let client = tonic::client::Grpc::new(channel);
    let mut failing = false;
    while let Some(job) = rx.recv().await {
        let (result, n, ok_idx, fail_idx) = match job {
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Job::Metrics(req) => {
                let n = points(&req);
                let r = call::<ExportMetricsServiceResponse>(
                    &client,
                    req.encode_to_vec(),
                    METRICS_PATH,
                )
                .await;
                (r, n, 0, 4)
            }
            Job::Logs(req) => {
                let n = req
                    .resource_logs
                    .iter()
                    .flat_map(|r| &r.scope_logs)
                    .map(|s| s.log_records.len())
                    .sum();
                let r = call::<ExportLogsServiceResponse>(&client, req.encode_to_vec(), LOGS_PATH)
                    .await;
                (r, n, 1, 5)
            }
        };
        match result {
            Ok(()) => {
                c.0[ok_idx].fetch_add(n as u64, Relaxed);
                failing = false;
            }
            Err(e) => {
                c.0[fail_idx].fetch_add(n as u64, Relaxed);
                if !failing {
                    log::warn!("OTLP export of metrics/logs to {endpoint} failed: {e}");
                }
                failing = true;
            }
        }
    }
}

async fn call<R: Message + Default + Send + 'static>(
    client: &tonic::client::Grpc<tonic::transport::Channel>,
    body: Vec<u8>,
    path: &'static str,
) -> Result<(), String> {
    let mut client = client.clone();
    let send = async move {
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client
            .unary(
                tonic::Request::new(bytes::Bytes::from(body)),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec::<R>::default(),
            )
            .await
    };
    match tokio::time::timeout(TIMEOUT, send).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

fn points(req: &ExportMetricsServiceRequest) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            _ => 0,
        })
        .sum()
}

impl Exporter {
    fn queue_job(&self, job: Job, dropped_idx: usize) {
        let Some(tx) = &self.signals.tx else {
            return;
        };
        if tx.try_send(job).is_err() {
            self.signals.counters.0[dropped_idx].fetch_add(1, Relaxed);
        }
    }

    /// Non-blocking: queues a metrics request (a full queue drops it, counted).
    pub fn export_metrics(&self, req: ExportMetricsServiceRequest) {
        self.queue_job(Job::Metrics(req), 2);
    }

    /// Non-blocking: queues a logs request (a full queue drops it, counted).
    pub fn export_logs(&self, req: ExportLogsServiceRequest) {
        self.queue_job(Job::Logs(req), 3);
    }

    /// Waits (at most `deadline`) until every metrics/logs request queued so far was sent.
    pub async fn flush_signals(&self, deadline: Duration) {
        let (done, wait) = oneshot::channel();
        if let Some(tx) = &self.signals.tx
            && tokio::time::timeout(deadline, tx.send(Job::Flush(done)))
                .await
                .is_ok_and(|r| r.is_ok())
        {
            let _ = tokio::time::timeout(deadline, wait).await;
        }
    }

    pub fn signal_stats(&self) -> SignalStats {
        let c = &self.signals.counters.0;
        SignalStats {
            metric_points_exported: c[0].load(Relaxed),
            logs_exported: c[1].load(Relaxed),
            metrics_queue_dropped: c[2].load(Relaxed),
            logs_queue_dropped: c[3].load(Relaxed),
            metrics_failed: c[4].load(Relaxed),
            logs_failed: c[5].load(Relaxed),
        }
    }

    /// Spans waiting in the export queue now.
    pub fn queue_depth(&self) -> u64 {
        let tx = &self.handle.spans;
        (tx.max_capacity() - tx.capacity()) as u64
    }
}
