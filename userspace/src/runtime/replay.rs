//! `ztrace replay`: runs a record file through the same pipeline, processors (rules, tail
//! sampling, anomaly detection) and exporter as the live daemon, without the kernel, so it needs
//! no privileges and the same file with the same configuration gives the same output (ids
//! included) every time. Time, for the linker and the processors alike, is the recording's own
//! clock: the latest record's monotonic timestamp, never the wall clock. The metrics signal is
//! aggregated from the same records as the daemon aggregates it and collected every export
//! interval of the recording's time (and once at the end). The logs signal too: a recording made
//! with `--capture-logs` holds the traced processes' stdout/stderr writes, and from the first of
//! them the pipeline turns them into log records as the daemon does with the flag. It owns the
//! replay loop only; it must not touch the kernel or the record file format (that is `record`).

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use ztrace_abi::kind;

use crate::{
    capture::KernelCounters,
    config::{AnomalyConfig, Privacy, TailSampling},
    export::{ExportConfig, Exporter},
    model::{ProcessInfo, Span},
    processors::{chain::Processors, ottl::Program},
    runtime::destination::summary,
    runtime::live::runtime,
    runtime::pipeline::{Pipeline, ProcChange},
    runtime::record::{self, Frame},
    runtime::telemetry::Telemetry,
    signals::logs::{LogConfig, Logs},
    signals::metrics::{Metrics, MetricsConfig},
};

/// The pipeline and the processors take a turn (release, decide) every this many records, and
/// whenever the recording's clock has moved this far since the last turn (the daemon's drain
/// tick): both depend on the records only, so turns fall at the same records on every run, and
/// sparse traffic is decided when it would have been live, not thousands of records later.
const TURN_EVERY: u64 = 1024;
const TURN_NS: u64 = 10_000_000;

/// What a replay applies: the settings the daemon resolves from the same flags, environment and
/// config file (the head sampler is in `export`).
pub struct ReplayConfig {
    pub export: ExportConfig,
    pub service_name: Option<String>,
    pub db_query_text: bool,
    pub privacy: Privacy,
    pub parser_budget: usize,
    /// Under the daemon's seccomp allow-list.
    pub seccomp: bool,
    pub tail: Option<TailSampling>,
    pub anomaly: Option<AnomalyConfig>,
    pub rules: Program,
    /// The metrics signal (interval, temporality, cardinality cap), as the daemon resolves it.
    pub metrics: MetricsConfig,
}

/// The stages between the file and the exporter: the pipeline, then the processors, both on the
/// recording's clock ([`Pipeline::clock_ns`]).
struct Stages {
    pipeline: Pipeline,
    processors: Processors,
    /// Released by the linker, not yet through the processors.
    released: Vec<Span>,
    changes: Vec<ProcChange>,
    records: u64,
    /// The recording's clock at the last turn.
    turned_ns: u64,
}

impl Stages {
    fn new(mono_to_unix_ns: i64, cfg: &ReplayConfig, rules: Program) -> Stages {
        // Seeded from the recording so ids are reproducible.
        let mut pipeline = Pipeline::new(mono_to_unix_ns as i128, Some(mono_to_unix_ns as u64));
        pipeline.set_db_query_text(cfg.db_query_text);
        pipeline.set_privacy(&cfg.privacy);
        pipeline.set_parser_budget(cfg.parser_budget);
        // Its series start at the recording's first record with a time (the telemetry's clock
        // moves the start there); until then, the recording's clock at 0.
        pipeline.metrics = Some(Metrics::new(
            cfg.metrics,
            mono_to_unix_ns.clamp(0, i64::MAX) as u64,
        ));
        let mut processors = Processors::new(cfg.tail.as_ref(), cfg.anomaly.as_ref());
        processors.set_rules(rules);
        Stages {
            pipeline,
            processors,
            released: Vec::new(),
            changes: Vec::new(),
            records: 0,
            turned_ns: 0,
        }
    }

    fn process(&mut self, info: &ProcessInfo) {
        self.processors.process_info(info);
    }

    /// What the recorder ran with, as its file's header says: `--capture-logs` turns the logs
    /// signal on from the start, so a recording without a single line still reports its logs.
    fn recorded_with(&mut self, header: &record::Header) {
        if header.flags & record::FLAG_CAPTURE_LOGS != 0 {
            self.logs_on();
        }
    }

    /// The logs signal, as `--capture-logs` turns it on live.
    fn logs_on(&mut self) {
        if self.pipeline.logs.is_none() {
            self.pipeline.logs = Some(Logs::new(LogConfig::default()));
        }
    }

    /// One record; at a turn (true) what may be exported now goes to `out`.
    fn record(&mut self, raw: &[u8], out: &mut Vec<Span>) -> bool {
        // The recorder captured stdout/stderr writes only with `--capture-logs`, which the
        // header says (`FLAG_CAPTURE_LOGS`). A file written before that flag existed says it by
        // its first such record. (Before it, log capture has nothing to do, so the lines are the
        // same as had it been on from the start.)
        if self.pipeline.logs.is_none() && crate::decode::kind_of(raw) == Some(kind::STDIO) {
            self.logs_on();
        }
        self.pipeline.on_record(raw, &mut self.changes);
        self.changes.clear();
        self.records += 1;
        let now = self.pipeline.clock_ns();
        if !self.records.is_multiple_of(TURN_EVERY) && now.saturating_sub(self.turned_ns) < TURN_NS
        {
            return false;
        }
        self.turned_ns = now;
        // 0: the pipeline's own clock, the latest record's time.
        self.pipeline.poll(0, &mut self.released);
        self.processors.run(&mut self.released, now, out);
        true
    }

    /// The end of the file: everything still held is finished, every pending trace decided.
    fn finish(&mut self, out: &mut Vec<Span>) {
        self.pipeline.drain(0, &mut self.released);
        let now = self.pipeline.clock_ns();
        self.processors.drain(&mut self.released, now, out);
    }
}

/// Runs a record file through the pipeline, the processors and the exporter. Needs no
/// privileges; the same file and configuration give the same output (ids included) every time.
pub fn replay(path: &std::path::Path, mut cfg: ReplayConfig) -> Result<()> {
    let mut reader =
        record::Reader::open(path).with_context(|| format!("reading {}", path.display()))?;
    // A recording may come from anyone (a bug report): its frames are parsed under the
    // daemon's allow-list, installed before any thread starts.
    if cfg.seccomp {
        let n = crate::capture::seccomp::install().map_err(|e| {
            anyhow::anyhow!(
                "installing the seccomp allow-list failed: {e} (--no-seccomp runs without it)"
            )
        })?;
        log::debug!("seccomp: allow-list of {n} system calls");
    }
    // Batches close by size only (and at the end), and no span is dropped for a full queue: the
    // same file gives the same batches, hence the same output, however fast the machine is.
    let export = ExportConfig {
        batch_delay: crate::export::FOREVER,
        ..cfg.export.clone()
    };
    let rules = std::mem::take(&mut cfg.rules);
    runtime()?.block_on(async move {
        let exporter = Exporter::spawn(export);
        let mono_to_unix = reader.header.mono_to_unix_ns;
        let mut stages = Stages::new(mono_to_unix, &cfg, rules);
        stages.recorded_with(&reader.header);
        // Anomaly records, shipped as the daemon ships them, and the processors' summary.
        // Metrics too, collected on the recording's clock.
        let mut telemetry = Telemetry::on_recording(
            cfg.metrics.interval,
            mono_to_unix as i128,
            &crate::capture::process::host_name(),
        );
        let mut spans = Vec::new();
        while let Some(frame) = reader
            .next_frame()
            .with_context(|| format!("reading {}", path.display()))?
        {
            match frame {
                Frame::Process(mut info) => {
                    if let Some(name) = &cfg.service_name {
                        info.service_name = name.clone();
                    }
                    if !cfg.privacy.command_args {
                        info.command_args.clear(); // recordings made before the opt-in existed
                    }
                    stages.process(&info);
                    let info = Arc::from(info);
                    telemetry.process(Arc::clone(&info));
                    exporter.process(info);
                }
                Frame::Record(raw) => {
                    if stages.record(&raw, &mut spans) {
                        for span in spans.drain(..) {
                            exporter.submit_waiting(span).await;
                        }
                        telemetry
                            .poll_waiting(
                                &mut stages.pipeline,
                                &mut stages.processors,
                                &exporter,
                                false,
                            )
                            .await;
                    }
                }
            }
        }
        if reader.truncated {
            log::warn!(
                "{} ends inside a frame (the recording was cut off); replayed every whole frame",
                path.display()
            );
        }
        stages.finish(&mut spans);
        for span in spans.drain(..) {
            exporter.submit_waiting(span).await;
        }
        telemetry.kernel(KernelCounters {
            submitted: stages.records,
            ..Default::default()
        });
        telemetry
            .poll_waiting(
                &mut stages.pipeline,
                &mut stages.processors,
                &exporter,
                true,
            )
            .await;
        exporter.flush_signals(Duration::from_secs(10)).await;
        let stats = exporter.shutdown(Duration::from_secs(10)).await;
        telemetry.summary(&stages.pipeline, &stages.processors, &stats);
        summary(
            &stages.pipeline.stats(),
            &KernelCounters {
                submitted: stages.records,
                ..Default::default()
            },
            &stats,
        );
        Ok(())
    })
}

/// The replay path over a recording in memory, without an exporter: every frame the reader gives
/// goes into a pipeline, which is then drained; the number of spans made, or the reader's error.
/// What the `record` fuzz target (userspace/fuzz) and the hostile-file test drive.
pub fn replay_bytes(bytes: &[u8]) -> std::result::Result<usize, record::RecordError> {
    let mut reader = record::Reader::new(bytes)?;
    let mut pipeline = Pipeline::new(reader.header.mono_to_unix_ns as i128, Some(1));
    let (mut spans, mut changes) = (Vec::new(), Vec::new());
    while let Some(frame) = reader.next_frame()? {
        if let Frame::Record(raw) = frame {
            pipeline.on_record(&raw, &mut changes);
            changes.clear();
        }
    }
    pipeline.poll(u64::MAX / 2, &mut spans);
    pipeline.drain(u64::MAX / 2, &mut spans);
    Ok(spans.len())
}

/// Hostile record files: a real-looking recording (process metadata, then a client's HTTP
/// exchanges with a server on one connection) mutated many thousand ways — bytes flipped, frames
/// cut, lengths forged, pieces repeated — goes through the same reader and pipeline `ztrace
/// replay` uses. Nothing may panic; a bad frame is an error, a cut one the end. (A deterministic
/// mutation loop that runs with the unit tests; the coverage-guided fuzzer of the same path is
/// userspace/fuzz, `cargo xtask fuzz --only record`.)
#[cfg(test)]
mod hostile_files {
    use super::*;
    use crate::runtime::pipeline::testdata::conversation;

    fn recording() -> Vec<u8> {
        let mut w = record::Writer::new(
            Vec::new(),
            record::Header {
                abi_version: ztrace_abi::ABI_VERSION,
                mono_to_unix_ns: 1_700_000_000_000_000_000,
                payload_cap: 256,
                flags: 0,
            },
        )
        .unwrap();
        w.process(&crate::model::ProcessInfo {
            pid: 7,
            service_name: "svc".into(),
            executable_name: "python3".into(),
            command_args: vec!["python3".into(), "app.py".into()],
            ..Default::default()
        })
        .unwrap();
        let exchanges = (0..20u64).map(|i| {
            let req = format!("GET /item/{i}?token=x HTTP/1.1\r\nHost: a\r\nCookie: s=1\r\n\r\n");
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            let at = 1_000_000 * (2 * i + 1);
            (at, req.into_bytes(), at + 1_000_000, resp.to_vec())
        });
        for r in conversation(exchanges) {
            w.record(&r).unwrap();
        }
        w.flush().unwrap();
        w.into_inner()
    }

    /// Writes the recording above where `ZTRACE_FUZZ_SEED` says: the seed of the coverage-guided
    /// `record` fuzz target (`cargo xtask fuzz --only record`).
    #[test]
    #[ignore = "writes a file; run by hand to refresh the fuzz seed"]
    fn write_fuzz_seed() {
        let path = std::env::var_os("ZTRACE_FUZZ_SEED").expect("ZTRACE_FUZZ_SEED=FILE");
        std::fs::write(path, recording()).unwrap();
    }

    #[test]
    fn mutated_recordings_never_panic_the_replay_path() {
        let base = recording();
        assert_eq!(replay_bytes(&base).unwrap(), 20, "the unmutated recording");
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut errors, mut spans) = (0, 0);
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % b.len().max(1);
                match next() % 6 {
                    0 => b[at] ^= 1 << (next() % 8),
                    1 => b[at] = if next() % 2 == 0 { 0 } else { 0xff },
                    2 => b.truncate(at),
                    // A forged 4-byte length (frame lengths and event fields alike).
                    3 if at + 4 <= b.len() => {
                        b[at..at + 4].copy_from_slice(&(next() as u32).to_le_bytes())
                    }
                    4 => {
                        let end = (at + (next() as usize % 200)).min(b.len());
                        let piece = b[at..end].to_vec();
                        let to = (next() as usize) % b.len().max(1);
                        b.splice(to..to, piece);
                    }
                    _ => {
                        let end = (at + (next() as usize % 64)).min(b.len());
                        b.drain(at..end);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            match replay_bytes(&b) {
                Ok(n) => spans += n,
                Err(_) => errors += 1,
            }
        }
        // Both outcomes happen: the mutations reach the pipeline, and the reader refuses some.
        assert!(spans > 0 && errors > 0, "spans {spans}, errors {errors}");
    }
}

/// The processors in a replay: the daemon's configuration resolved from a config file, applied
/// on the recording's clock.
#[cfg(test)]
mod processors_on_the_recording_clock {
    use super::*;
    use crate::config::{self, ConfigFile, Sources, TailFlags};
    use crate::model::AttrVal;
    use crate::runtime::pipeline::testdata::conversation;

    const MS: u64 = 1_000_000;
    /// Exchanges in the recording (two records each: more than one turn).
    const EXCHANGES: u64 = 1500;

    /// One client's `n` HTTP exchanges with a server on one connection, `gap` ns apart; every
    /// 25th is answered 500.
    fn records(n: u64, gap: u64) -> Vec<Vec<u8>> {
        conversation((0..n).map(|i| {
            let req = format!("GET /item/{i}?ticket=t{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            let resp: &[u8] = if i % 25 == 0 {
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nno"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            let t = 1_000 * MS + gap * i;
            (t, req.into_bytes(), t + MS, resp.to_vec())
        }))
    }

    pub(super) fn config(text: &str) -> ReplayConfig {
        let file = ConfigFile::parse(text, std::path::Path::new("test.toml")).unwrap();
        let resolved = config::resolve(&Sources {
            file: Some(&file),
            ..Sources::default()
        })
        .unwrap();
        let (tail, anomaly) = config::resolve_tail(&TailFlags::default(), Some(&file)).unwrap();
        ReplayConfig {
            export: ExportConfig::default(),
            service_name: None,
            db_query_text: false,
            privacy: resolved.privacy.clone(),
            parser_budget: resolved.parser_budget,
            seccomp: false,
            tail,
            anomaly,
            rules: Program::compile(&resolved.rules).unwrap(),
            metrics: crate::signals::metrics::MetricsConfig::from_config(&resolved),
        }
    }

    /// The stages and telemetry of a replay with the config `text`, on a recording whose clock
    /// is `mono_to_unix` ns behind the wall clock, that knows process 7 as service "svc".
    pub(super) fn stages_of(text: &str, mono_to_unix: i64) -> (Stages, Telemetry) {
        let mut cfg = config(text);
        let rules = std::mem::take(&mut cfg.rules);
        let mut stages = Stages::new(mono_to_unix, &cfg, rules);
        let mut telemetry =
            Telemetry::on_recording(cfg.metrics.interval, mono_to_unix as i128, "host");
        let info = crate::model::ProcessInfo {
            pid: 7,
            service_name: "svc".into(),
            ..Default::default()
        };
        stages.process(&info);
        telemetry.process(Arc::new(info));
        (stages, telemetry)
    }

    /// The spans a replay of `records` exports, and how many came out before the end of the file.
    fn replay(mut cfg: ReplayConfig, records: &[Vec<u8>]) -> (Vec<Span>, usize) {
        let rules = std::mem::take(&mut cfg.rules);
        let mut stages = Stages::new(1_700_000_000_000_000_000, &cfg, rules);
        stages.process(&crate::model::ProcessInfo {
            pid: 7,
            service_name: "svc".into(),
            ..Default::default()
        });
        let mut out = Vec::new();
        for r in records {
            stages.record(r, &mut out);
        }
        let before_end = out.len();
        stages.finish(&mut out);
        (out, before_end)
    }

    fn errors_only() -> String {
        ztrace_e2e::harness::errors_only_tail_sampling("100ms")
    }

    /// `probabilistic 0` + `status_code ERROR`: exactly the error traces, decided as the
    /// recording's clock passes their decision wait (not only at the end, and not by the wall
    /// clock, which hardly moves here); the same output on every run.
    #[test]
    fn tail_sampling_keeps_the_error_traces_by_the_recording_clock() {
        let records = records(EXCHANGES, 2 * MS);
        let (spans, before_end) = replay(config(&errors_only()), &records);
        let errors = EXCHANGES.div_ceil(25) as usize;
        assert_eq!(spans.len(), errors, "{spans:#?}");
        assert!(
            spans
                .iter()
                .all(|s| s.http().and_then(|h| h.status) == Some(500)),
            "{spans:#?}"
        );
        // Decided as the recording's clock passed 100 ms after each: all but the last few before
        // the end of the file.
        assert!(
            before_end > 0 && before_end < errors,
            "{before_end} of {errors} before the end"
        );
        let (again, again_before) = replay(config(&errors_only()), &records);
        assert_eq!(before_end, again_before);
        let ids = |s: &[Span]| {
            s.iter()
                .map(|s| (s.trace_id, s.span_id, s.sampling))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&spans), ids(&again), "the same output on every run");
    }

    /// Sparse traffic (a request a second, far fewer records than a turn's count): each trace
    /// is decided once the recording's clock is past its decision wait, not at the end.
    #[test]
    fn sparse_traffic_is_decided_as_the_recording_clock_passes() {
        let (spans, before_end) = replay(config(&errors_only()), &records(100, 1_000 * MS));
        assert_eq!(spans.len(), 4, "requests 0, 25, 50, 75");
        assert_eq!(
            before_end, 4,
            "each decided a second later, by the next request"
        );
    }

    /// A transform rule of the config file rewrites the replayed spans; without tail sampling
    /// every span comes out.
    #[test]
    fn transform_rules_apply_to_replayed_spans() {
        let (spans, _) = replay(
            config(
                r#"
[[transform.trace_statements]]
context = "span"
statements = [
  'set(attributes["url.query"], "redacted")',
  'delete_key(attributes, "url.path")',
]
"#,
            ),
            &records(EXCHANGES, 2 * MS),
        );
        assert_eq!(spans.len() as u64, EXCHANGES);
        for s in &spans {
            let edits = s.edits.as_deref().expect("edited by the rule");
            assert_eq!(
                edits.get("url.query"),
                Some(Some(&AttrVal::Str("redacted".into())))
            );
            assert_eq!(edits.get("url.path"), Some(None));
        }
    }
}

/// The metrics signal in a replay: aggregated from the records as the daemon aggregates them,
/// collected every export interval of the recording's own time and once at the end, with the
/// metric rules applied; the same points, timestamps included, on every run.
#[cfg(test)]
mod metrics_on_the_recording_clock {
    use super::*;
    use crate::runtime::pipeline::testdata::conversation;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, metric::Data};

    const MS: u64 = 1_000_000;
    const MONO_TO_UNIX: i64 = 1_700_000_000_000_000_000;
    const EXCHANGES: u64 = 1500;

    /// `EXCHANGES` HTTP exchanges 2 ms apart from 1 s of the recording's clock (to about 4 s),
    /// each answered 1 ms later; every 10th 404.
    fn records() -> Vec<Vec<u8>> {
        conversation((0..EXCHANGES).map(|i| {
            let req = format!("GET /item/{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            let resp: &[u8] = if i % 10 == 0 {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            let t = 1_000 * MS + 2 * MS * i;
            (t, req.into_bytes(), t + MS, resp.to_vec())
        }))
    }

    /// Every metrics request a replay of `records` exports, as the replay loop makes them.
    fn replay(text: &str, records: &[Vec<u8>]) -> Vec<ExportMetricsServiceRequest> {
        let (mut stages, mut telemetry) =
            super::processors_on_the_recording_clock::stages_of(text, MONO_TO_UNIX);
        let exporter = Exporter::spawn(ExportConfig::default());
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        for r in records {
            if stages.record(r, &mut spans) {
                spans.clear();
                out.extend(telemetry.collect(
                    &mut stages.pipeline,
                    &mut stages.processors,
                    &exporter,
                    false,
                ));
            }
        }
        stages.finish(&mut spans);
        out.extend(telemetry.collect(
            &mut stages.pipeline,
            &mut stages.processors,
            &exporter,
            true,
        ));
        out
    }

    fn metric<'a>(
        req: &'a ExportMetricsServiceRequest,
        name: &str,
    ) -> Option<&'a opentelemetry_proto::tonic::metrics::v1::Metric> {
        req.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .find(|m| m.name == name)
    }

    fn server_points(req: &ExportMetricsServiceRequest) -> Vec<HistogramDataPoint> {
        match metric(req, "http.server.request.duration").and_then(|m| m.data.as_ref()) {
            Some(Data::Histogram(h)) => h.data_points.clone(),
            _ => Vec::new(),
        }
    }

    fn count(points: &[HistogramDataPoint], status: i64) -> u64 {
        points
            .iter()
            .filter(|p| {
                p.attributes.iter().any(|kv| {
                    kv.key == "http.response.status_code"
                        && kv.value.as_ref().and_then(|v| v.value.as_ref())
                            == Some(&Any::IntValue(status))
                })
            })
            .map(|p| p.count)
            .sum()
    }

    /// The recording's time (ms) a point's Unix time stands for.
    fn at_ms(unix: u64) -> u64 {
        (unix - MONO_TO_UNIX as u64) / MS
    }

    #[test]
    fn collected_every_interval_of_the_recording_clock_and_at_the_end() {
        let records = records();
        let reqs = replay("[metrics]\nexport_interval = \"1s\"\n", &records);
        // About 3 s of recording: a collection after each second of it, and the final one.
        assert!((3..=4).contains(&reqs.len()), "{} collections", reqs.len());
        let times: Vec<u64> = reqs
            .iter()
            .map(|r| server_points(r)[0].time_unix_nano)
            .collect();
        for (i, pair) in times.windows(2).enumerate() {
            assert!(pair[1] > pair[0], "collection times {times:?}");
            if i + 2 < times.len() {
                assert!(
                    pair[1] - pair[0] >= 1_000 * MS,
                    "an interval apart: {times:?}"
                );
            }
        }
        assert!(
            at_ms(times[0]) >= 2_000,
            "the first a second after the start: {times:?}"
        );
        // The last at the end of the recording (the last response, 1 ms after the last request).
        assert_eq!(
            at_ms(*times.last().unwrap()),
            1_000 + 2 * (EXCHANGES - 1) + 1
        );
        // Cumulative: every point starts at the recording's first record, and the counts grow to
        // every exchange, by status.
        for r in &reqs {
            for p in server_points(r) {
                assert_eq!(at_ms(p.start_time_unix_nano), 1_000);
            }
        }
        let mut before = 0;
        for r in &reqs {
            let points = server_points(r);
            let n = count(&points, 200) + count(&points, 404);
            assert!(n > before, "counts grow: {n} after {before}");
            before = n;
        }
        let last = server_points(reqs.last().unwrap());
        assert_eq!(count(&last, 200), EXCHANGES - EXCHANGES / 10);
        assert_eq!(count(&last, 404), EXCHANGES / 10);
        // Self metrics: what the recording says (records read), not the replaying exporter's pace.
        let own = reqs.last().unwrap();
        assert!(metric(own, "ztrace.events.read").is_some());
        for name in ["ztrace.spans.exported", "ztrace.queue.depth"] {
            assert!(metric(own, name).is_none(), "{name} in a replay");
        }
        assert_eq!(
            reqs,
            replay("[metrics]\nexport_interval = \"1s\"\n", &records),
            "the same points every run"
        );
    }

    #[test]
    fn metric_rules_and_delta_temporality_apply() {
        let text = r#"
[metrics]
export_interval = "500ms"
temporality_preference = "delta"

[[transform.metric_statements]]
context = "datapoint"
statements = ['set(attributes["replay.rule"], "on") where metric.name == "http.server.request.duration"']
"#;
        let reqs = replay(text, &records());
        assert!(reqs.len() >= 6, "{} collections", reqs.len());
        let mut total = 0;
        let mut previous_end = None;
        for r in &reqs {
            let points = server_points(r);
            for p in &points {
                assert!(
                    p.attributes.iter().any(|kv| kv.key == "replay.rule"),
                    "a point without the rule's attribute: {p:?}"
                );
                if let Some(end) = previous_end {
                    assert_eq!(
                        p.start_time_unix_nano, end,
                        "delta: from the previous collection"
                    );
                }
            }
            total += count(&points, 200) + count(&points, 404);
            previous_end = points.first().map(|p| p.time_unix_nano).or(previous_end);
        }
        assert_eq!(total, EXCHANGES, "each exchange in exactly one delta");
    }
}

/// The logs signal in a replay: a recording made with `--capture-logs` holds the traced
/// processes' stdout/stderr writes, and the replay turns them into log records as the daemon
/// does — each line written while serving a request stamped with that request's trace and span,
/// timed by the recording, the log rules applied — the same records on every run. A recording
/// without such writes gives none.
#[cfg(test)]
mod logs_on_the_recording_clock {
    use super::*;
    use crate::decode::encode_data;
    use crate::runtime::pipeline::testdata::conversation;
    use crate::testkit::stdio_write;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;

    const MS: u64 = 1_000_000;
    const MONO_TO_UNIX: i64 = 1_700_000_000_000_000_000;
    const EXCHANGES: u64 = 1500;

    /// A write of `text` to `fd` by thread `tid` of the server (process 7) at `ts`.
    fn write(tid: u32, fd: i32, ts: u64, text: &[u8]) -> Vec<u8> {
        encode_data(&stdio_write(7, tid, fd, ts, text.len() as u64), text)
    }

    /// When exchange `i`'s request is read.
    fn request_at(i: u64) -> u64 {
        1_000 * MS + 2 * MS * i
    }

    /// `EXCHANGES` HTTP exchanges of the server's thread 7, 2 ms apart, each answered 1 ms after
    /// its request; with `logs`, a line on stdout before any request, and half a millisecond
    /// into each exchange the serving thread writes `handling /item/<i>` (every 100th on stderr,
    /// in two writes).
    fn records(logs: bool) -> Vec<Vec<u8>> {
        let exchanges = conversation((0..EXCHANGES).map(|i| {
            let req = format!("GET /item/{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            let t = request_at(i);
            (
                t,
                req.into_bytes(),
                t + MS,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            )
        }));
        let mut out = Vec::new();
        if logs {
            out.push(write(7, 1, 500 * MS, b"listening\n"));
        }
        for (i, pair) in (0..).zip(exchanges.chunks(2)) {
            out.push(pair[0].clone());
            let at = request_at(i) + MS / 2;
            let line = format!("handling /item/{i}\n");
            if logs && i.is_multiple_of(100) {
                let (a, b) = line.as_bytes().split_at(5);
                out.push(write(7, 2, at, a));
                out.push(write(7, 2, at + 1_000, b));
            } else if logs {
                out.push(write(7, 1, at, line.as_bytes()));
            }
            out.push(pair[1].clone());
        }
        out
    }

    /// What a replay of `records` with the config `text` exports: its spans, and every logs
    /// request as the replay loop makes them, with how many came before the end of the file.
    fn replay(
        text: &str,
        records: &[Vec<u8>],
    ) -> (Vec<Span>, Vec<ExportLogsServiceRequest>, usize) {
        let (mut stages, mut telemetry) =
            super::processors_on_the_recording_clock::stages_of(text, MONO_TO_UNIX);
        let (mut spans, mut logs) = (Vec::new(), Vec::new());
        for r in records {
            if stages.record(r, &mut spans) {
                logs.extend(telemetry.logs(&mut stages.pipeline, &mut stages.processors));
            }
        }
        let before_end = logs.len();
        stages.finish(&mut spans);
        logs.extend(telemetry.logs(&mut stages.pipeline, &mut stages.processors));
        (spans, logs, before_end)
    }

    fn log_records(reqs: &[ExportLogsServiceRequest]) -> Vec<&LogRecord> {
        reqs.iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .collect()
    }

    fn body(r: &LogRecord) -> &str {
        match r.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Any::StringValue(s)) => s,
            _ => "",
        }
    }

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Any> {
        r.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn lines_carry_the_ids_of_the_request_served_and_the_recording_time() {
        let records = records(true);
        let (spans, reqs, before_end) = replay("", &records);
        assert_eq!(spans.len() as u64, EXCHANGES);
        let logs = log_records(&reqs);
        assert_eq!(logs.len() as u64, EXCHANGES + 1, "every line, once");
        // Shipped as the recording's clock passes the spans' release, not all at the end.
        assert!(before_end > 0 && before_end < reqs.len(), "{before_end}");
        let listening = logs.iter().find(|r| body(r) == "listening").unwrap();
        assert!(listening.trace_id.is_empty() && listening.span_id.is_empty());
        assert_eq!(listening.time_unix_nano, MONO_TO_UNIX as u64 + 500 * MS);
        for s in &spans {
            let target = &s.http().unwrap().target;
            let i: u64 = target.rsplit('/').next().unwrap().parse().unwrap();
            let want = format!("handling {target}");
            let found: Vec<_> = logs.iter().filter(|r| body(r) == want).collect();
            assert_eq!(found.len(), 1, "{want}");
            let r = found[0];
            assert_eq!(r.trace_id, s.trace_id.0.to_vec(), "{want}");
            assert_eq!(r.span_id, s.span_id.0.to_vec(), "{want}");
            assert_eq!(r.flags, 1);
            assert_eq!(
                r.time_unix_nano,
                MONO_TO_UNIX as u64 + request_at(i) + MS / 2
            );
            assert_eq!(r.observed_time_unix_nano, r.time_unix_nano);
            let stream = if i.is_multiple_of(100) {
                "stderr"
            } else {
                "stdout"
            };
            assert_eq!(
                attr(r, "log.iostream"),
                Some(&Any::StringValue(stream.into()))
            );
        }
        assert_eq!(
            reqs,
            replay("", &records).1,
            "the same log records on every run"
        );
    }

    #[test]
    fn log_rules_apply_and_a_recording_without_lines_gives_none() {
        let text = r#"
[[transform.log_statements]]
context = "log"
statements = ['set(attributes["replay.rule"], "on")']
"#;
        let (_, reqs, _) = replay(text, &records(true));
        let logs = log_records(&reqs);
        assert_eq!(logs.len() as u64, EXCHANGES + 1);
        for r in logs {
            assert_eq!(attr(r, "replay.rule"), Some(&Any::StringValue("on".into())));
        }
        // Recorded without --capture-logs: no logs signal at all (its summary line included).
        let (mut stages, _) = super::processors_on_the_recording_clock::stages_of("", MONO_TO_UNIX);
        let mut spans = Vec::new();
        for r in &records(false) {
            stages.record(r, &mut spans);
        }
        stages.finish(&mut spans);
        assert_eq!(spans.len() as u64, EXCHANGES);
        assert!(stages.pipeline.logs.is_none());
        // Recorded with --capture-logs while nothing was written: the header says so, and the
        // logs signal is on (its summary says 0 lines), with no record made up.
        let (mut stages, mut telemetry) =
            super::processors_on_the_recording_clock::stages_of("", MONO_TO_UNIX);
        stages.recorded_with(&record::Header {
            abi_version: ztrace_abi::ABI_VERSION,
            mono_to_unix_ns: MONO_TO_UNIX,
            payload_cap: 256,
            flags: record::FLAG_CAPTURE_LOGS,
        });
        let mut spans = Vec::new();
        for r in &records(false) {
            stages.record(r, &mut spans);
        }
        stages.finish(&mut spans);
        assert_eq!(spans.len() as u64, EXCHANGES);
        let logs = stages
            .pipeline
            .logs
            .as_ref()
            .expect("the logs signal is on");
        assert_eq!(logs.stats.lines, 0);
        assert!(
            log_records(&telemetry.logs(&mut stages.pipeline, &mut stages.processors)).is_empty()
        );
    }
}
