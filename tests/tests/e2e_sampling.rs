//! Tail sampling and anomaly detection end to end, as root, with real probes on the two-tier
//! Python services of tests/apps/two_tier.py and the in-process OTLP receiver.
//!
//! - Errors kept whole: the backend answers 500 on 4% of the requests; with the policies
//!   `probabilistic 0` + `status_code ERROR` (from a TOML policy list) every error trace reaches
//!   the collector with all its spans across both processes (frontend SERVER, frontend CLIENT,
//!   backend SERVER), marked `ot=th:0`, and no healthy span does; the RED metrics still count
//!   every request, and the tail self-metrics count the decisions.
//! - A latency fault: the backend's one route slows tenfold for a few seconds under steady load;
//!   one `ztrace.anomaly` log record says so (latency p95, with exemplar trace ids), the terminal
//!   shows its start and end, and with the `anomaly` policy the exemplar traces are exported.
//! - Head sampling says its probability: with `--sampler traceidratio --sampler-arg 0.25` every
//!   exported span carries `ot=th:c` (25%) and its trace id's randomness passes that threshold,
//!   traces whole; with the error policies and the head sampler at 50% after them, the error
//!   traces kept carry the head's `ot=th:8`, not the tail's `ot=th:0`.
//! - An upstream's `tracestate` is carried on: a client sends `traceparent` and
//!   `tracestate: vendor=x,ot=th:8;rv:…`; under the default sampler (`parentbased_always_on`)
//!   every span of the trace (frontend SERVER and CLIENT, backend SERVER) carries the upstream's
//!   `th:8` and `rv` in the `ot` entry, moved to the front, and the vendor entry after it. An
//!   invalid `tracestate` (a key twice) is dropped while its `traceparent` holds; one without a
//!   `traceparent` is ignored; one without `th` is carried as it came.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use ztrace_e2e::{
    harness::{
        curl, ensure_whole_error_traces, errors_only_tail_sampling, privileged_or_skip,
        runtime_with_receiver, spawn_service, spawn_ztrace, stop_ztrace,
    },
    receiver::ReceivedSpan,
    signals::{ReceivedLog, attr_str},
    temp::TempFile,
};

const REQUESTS: usize = 200;
/// Every 25th request fails: 4%.
const FAIL_EVERY: usize = 25;
const CLIENTS: usize = 4;

fn config_file(name: &str, text: &str) -> Result<TempFile> {
    TempFile::new(name, "ztrace.toml", text)
}

#[test]
fn error_traces_are_exported_whole_and_nothing_else() -> Result<()> {
    if !privileged_or_skip("error_traces_are_exported_whole_and_nothing_else") {
        return Ok(());
    }
    let config = config_file("errors", &errors_only_tail_sampling("500ms"))?;
    let (rt, receiver) = runtime_with_receiver()?;
    let (backend, backend_port) = spawn_service(&["backend"])?;
    let (frontend, front_port) = spawn_service(&["frontend", &backend_port.to_string()])?;
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        format!("{},{}", frontend.pid(), backend.pid()),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        "--config".into(),
        config.display().to_string(),
    ])?;
    ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
    let base = format!("http://127.0.0.1:{front_port}");
    // Keep-alive clients; request i of the whole run fails when i % FAIL_EVERY == 0.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let urls: Vec<String> = (0..REQUESTS / CLIENTS)
                .map(|r| r * CLIENTS + c)
                .map(|i| {
                    if i % FAIL_EVERY == 0 {
                        format!("{base}/api/fail")
                    } else {
                        format!("{base}/api/{i}")
                    }
                })
                .collect();
            thread::spawn(move || curl(&urls))
        })
        .collect();
    for c in clients {
        c.join().expect("client thread")?;
    }
    let failures = REQUESTS.div_ceil(FAIL_EVERY);
    thread::sleep(Duration::from_millis(1500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(3 * failures, Duration::from_secs(10)));
    // Nothing more may come: wait a little and take the final set.
    thread::sleep(Duration::from_millis(300));
    let spans = if receiver.span_count() > spans.len() {
        receiver.spans()
    } else {
        spans
    };
    let stderr = ztrace.stderr_text();
    eprintln!("ztrace stderr:\n{stderr}");

    ensure_whole_error_traces(&spans, failures, frontend.pid(), backend.pid())?;
    // Metrics stay exact: the frontend's RED histogram counted every request.
    let signals = receiver.signals();
    let metrics = signals.all_metrics();
    let counted: u64 = metrics
        .iter()
        .filter(|m| m.metric.name == "http.server.request.duration")
        .filter(|m| attr_int_of(&m.resource, "process.pid") == Some(i64::from(frontend.pid())))
        .filter_map(|m| match &m.metric.data {
            Some(Data::Histogram(h)) => Some(h.data_points.iter().map(|p| p.count).sum::<u64>()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    ensure!(
        counted == REQUESTS as u64,
        "http.server.request.duration of the frontend counted {counted} requests, want {REQUESTS} (every request, sampled or not)"
    );
    let decided = |decision: &str| {
        metrics
            .iter()
            .filter(|m| m.metric.name == "ztrace.tail.traces")
            .map(|m| {
                m.sum_where(|a| attr_str(a, "ztrace.tail.decision").as_deref() == Some(decision))
            })
            .max()
            .unwrap_or(-1)
    };
    ensure!(
        decided("kept") == failures as i64 && decided("dropped") == (REQUESTS - failures) as i64,
        "ztrace.tail.traces: kept {}, dropped {}",
        decided("kept"),
        decided("dropped")
    );
    ensure!(
        stderr.contains("summary (tail sampling):"),
        "no tail sampling summary"
    );
    Ok(())
}

fn attr_int_of(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<i64> {
    ztrace_e2e::signals::attr_int(attrs, key)
}

/// Drives `/slow/<ms>/<n>` from `clients` keep-alive clients until `stop`; `ms` is read per
/// batch. Each client returns how many of its requests were slow (`ms` ≥ 100).
fn load(
    port: u16,
    clients: usize,
    ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Result<u64>>> {
    (0..clients)
        .map(|c| {
            let (ms, stop) = (Arc::clone(&ms), Arc::clone(&stop));
            thread::spawn(move || {
                let (mut n, mut slow) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let delay = ms.load(Ordering::Relaxed);
                    if delay >= 100 {
                        slow += 5;
                    }
                    let urls: Vec<String> = (0..5)
                        .map(|_| {
                            n += 1;
                            format!(
                                "http://127.0.0.1:{port}/slow/{delay}/{}",
                                1000 * c as u64 + n
                            )
                        })
                        .collect();
                    curl(&urls)?;
                }
                Ok(slow)
            })
        })
        .collect()
}

#[test]
fn a_latency_fault_is_reported_with_exemplars_and_its_traces_kept() -> Result<()> {
    if !privileged_or_skip("a_latency_fault_is_reported_with_exemplars_and_its_traces_kept") {
        return Ok(());
    }
    let config = config_file(
        "anomaly",
        r#"
[tail_sampling]
decision_wait = "2500ms"

[[tail_sampling.policies]]
name = "odd"
type = "anomaly"

[anomaly]
window = "1s"
cold_start_windows = 4
min_requests = 5
"#,
    )?;
    let (rt, receiver) = runtime_with_receiver()?;
    let (backend, port) = spawn_service(&["backend"])?;
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        backend.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        "--config".into(),
        config.display().to_string(),
    ])?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    let ms = Arc::new(AtomicU64::new(20));
    let stop_load = Arc::new(AtomicBool::new(false));
    let clients = load(port, 4, Arc::clone(&ms), Arc::clone(&stop_load));
    // Steady, then ten times slower, then steady again.
    thread::sleep(Duration::from_secs(8));
    let fault_start = Instant::now();
    ms.store(200, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(4));
    ms.store(20, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(6));
    stop_load.store(true, Ordering::Relaxed);
    let mut slow_sent = 0;
    for c in clients {
        slow_sent += c.join().expect("client thread")?;
    }
    let fault_seen = fault_start.elapsed();
    thread::sleep(Duration::from_secs(3));
    stop_ztrace(&mut ztrace)?;
    let stderr = ztrace.stderr_text();
    eprintln!("ztrace stderr:\n{stderr}");
    let records: Vec<ReceivedLog> = receiver
        .signals()
        .all_logs()
        .into_iter()
        .filter(|l| l.record.event_name == "ztrace.anomaly")
        .collect();
    let state = |l: &ReceivedLog| l.attr_str("ztrace.anomaly.state").unwrap_or_default();
    let double = |l: &ReceivedLog, k: &str| {
        l.record
            .attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match v.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::DoubleValue(d)) => {
                    Some(d)
                }
                _ => None,
            })
            .unwrap_or(f64::NAN)
    };
    let starts: Vec<&ReceivedLog> = records.iter().filter(|l| state(l) == "start").collect();
    let shown: Vec<String> = records.iter().map(ReceivedLog::body).collect();
    let latency: Vec<&&ReceivedLog> = starts
        .iter()
        .filter(|l| l.attr_str("ztrace.anomaly.signal").as_deref() == Some("latency.p95"))
        .collect();
    ensure!(
        latency.len() == 1,
        "want one latency anomaly start, got {} (fault of {fault_seen:?}); records: {shown:#?}",
        latency.len()
    );
    let start = latency[0];
    ensure!(
        start.attr_str("ztrace.anomaly.operation").as_deref() == Some("GET /slow/{id}/{id}"),
        "operation {:?}",
        start.attr_str("ztrace.anomaly.operation")
    );
    ensure!(
        double(start, "ztrace.anomaly.observed") >= 0.15
            && double(start, "ztrace.anomaly.baseline") < 0.1
            && double(start, "ztrace.anomaly.score") >= 4.0,
        "observed/baseline/score: {shown:#?}"
    );
    // No false alarm in the steady phases: every start is the fault's.
    ensure!(
        starts
            .iter()
            .all(|l| double(l, "ztrace.anomaly.observed") >= 0.15
                || l.attr_str("ztrace.anomaly.signal").as_deref() != Some("latency.p95")),
        "a latency alarm outside the fault: {shown:#?}"
    );
    ensure!(
        records.iter().any(|l| state(l) == "end"),
        "the anomaly never ended: {shown:#?}"
    );
    let exemplars: Vec<String> = start
        .record
        .attributes
        .iter()
        .find(|a| a.key == "ztrace.anomaly.exemplar_trace_ids")
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::ArrayValue(a)) => Some(
                a.values
                    .iter()
                    .filter_map(|v| match &v.value {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    ensure!(!exemplars.is_empty(), "no exemplar trace ids");
    ensure!(
        start.trace_id_hex() == exemplars[0],
        "the record's trace id is its first exemplar"
    );
    // The anomaly policy kept the traces of the anomalous window, exemplars included.
    let spans = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(5)));
    let exported: HashSet<String> = spans.iter().map(ReceivedSpan::trace_id_hex).collect();
    for e in &exemplars {
        ensure!(
            exported.contains(e),
            "exemplar trace {e} was not exported ({} traces exported)",
            exported.len()
        );
    }
    // Every slow request's trace (the whole fault is anomalous windows), and the healthy ones
    // only while the alarm was on (the end needs two quiet windows).
    let slow = spans
        .iter()
        .filter(|s| s.span.end_time_unix_nano - s.span.start_time_unix_nano >= 150_000_000)
        .count() as u64;
    ensure!(
        slow as f64 >= 0.95 * slow_sent as f64,
        "{slow} slow traces exported of {slow_sent} slow requests ({} spans exported)",
        spans.len()
    );
    eprintln!(
        "e2e_sampling: {slow} of {slow_sent} slow requests exported; {} spans exported in all",
        spans.len()
    );
    ensure!(
        stderr.contains("anomaly START") && stderr.contains("anomaly END"),
        "the terminal did not show the anomaly's start and end"
    );
    Ok(())
}

/// The 56 random bits of a trace id (its last seven bytes).
fn randomness(trace_id: &[u8]) -> u64 {
    trace_id[9..16]
        .iter()
        .fold(0u64, |r, b| (r << 8) | u64::from(*b))
}

/// Runs the two-tier services under ztrace with `args`, drives `paths` (one keep-alive client),
/// stops ztrace and returns what the collector received (at least `min_spans` spans, if they
/// come) with the pids of the frontend and backend.
fn head_sampled_run(
    args: &[&str],
    config: Option<&str>,
    paths: &[String],
    min_spans: usize,
) -> Result<(Vec<ReceivedSpan>, u32, u32)> {
    let drive = |base: &str| {
        let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
        curl(&urls).map(drop)
    };
    traced_run(args, config, drive, min_spans)
}

/// Runs the two-tier services under ztrace with `args`, lets `drive` send requests to the
/// frontend's base URL, stops ztrace and returns what the collector received (at least
/// `min_spans` spans, if they come) with the pids of the frontend and backend.
fn traced_run(
    args: &[&str],
    config: Option<&str>,
    drive: impl FnOnce(&str) -> Result<()>,
    min_spans: usize,
) -> Result<(Vec<ReceivedSpan>, u32, u32)> {
    let (rt, receiver) = runtime_with_receiver()?;
    let (backend, backend_port) = spawn_service(&["backend"])?;
    let (frontend, front_port) = spawn_service(&["frontend", &backend_port.to_string()])?;
    let config = match config {
        Some(text) => Some(config_file("head", text)?),
        None => None,
    };
    let mut cmd: Vec<String> = vec![
        "--pid".into(),
        format!("{},{}", frontend.pid(), backend.pid()),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ];
    cmd.extend(args.iter().map(|a| a.to_string()));
    if let Some(c) = &config {
        cmd.extend(["--config".into(), c.display().to_string()]);
    }
    let mut ztrace = spawn_ztrace(&cmd)?;
    ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
    drive(&format!("http://127.0.0.1:{front_port}"))?;
    thread::sleep(Duration::from_millis(1500));
    stop_ztrace(&mut ztrace)?;
    let _ = rt.block_on(receiver.wait_for_spans(min_spans, Duration::from_secs(10)));
    thread::sleep(Duration::from_millis(300));
    eprintln!("ztrace stderr:\n{}", ztrace.stderr_text());
    Ok((receiver.spans(), frontend.pid(), backend.pid()))
}

/// Every span says `want` as its tracestate, its trace passes the threshold `t` and its trace is
/// whole (frontend SERVER and CLIENT, backend SERVER); returns the number of traces.
fn ensure_head_sampled(spans: &[ReceivedSpan], want: &str, t: u64) -> Result<usize> {
    let mut traces: std::collections::HashMap<String, usize> = Default::default();
    for s in spans {
        ensure!(
            s.span.trace_state == want,
            "span {} of trace {}: tracestate `{}`, want `{want}`",
            s.span.name,
            s.trace_id_hex(),
            s.span.trace_state
        );
        ensure!(
            randomness(&s.span.trace_id) >= t,
            "trace {} kept below the threshold {t:#x}",
            s.trace_id_hex()
        );
        *traces.entry(s.trace_id_hex()).or_default() += 1;
    }
    ensure!(
        traces.values().all(|n| *n == 3),
        "traces not whole: {traces:?}"
    );
    Ok(traces.len())
}

#[test]
fn head_sampling_says_its_threshold_alone_and_after_tail_sampling() -> Result<()> {
    if !privileged_or_skip("head_sampling_says_its_threshold_alone_and_after_tail_sampling") {
        return Ok(());
    }
    // Head sampling alone at 25%: T = 0xc0… (`th:c`).
    let paths: Vec<String> = (0..120).map(|i| format!("/api/{i}")).collect();
    let (spans, _, _) = head_sampled_run(
        &["--sampler", "traceidratio", "--sampler-arg", "0.25"],
        None,
        &paths,
        3,
    )?;
    let kept = ensure_head_sampled(&spans, "ot=th:c", 0xc0 << 48)?;
    // 120 traces at 25%: 30 expected; 10..=55 is more than five standard deviations wide.
    ensure!(
        (10..=55).contains(&kept),
        "{kept} of 120 traces kept at 25%"
    );
    // Tail sampling keeps every error trace with probability 1, then the head sampler keeps
    // half of them: they say 50% (`th:8`), the head's threshold, not the tail's `th:0`.
    let failing: Vec<String> = (0..60).map(|_| "/api/fail".to_string()).collect();
    let (spans, _, _) = head_sampled_run(
        &[
            "--sampler",
            "parentbased_traceidratio",
            "--sampler-arg",
            "0.5",
        ],
        Some(&errors_only_tail_sampling("500ms")),
        &failing,
        3,
    )?;
    let kept_after_tail = ensure_head_sampled(&spans, "ot=th:8", 0x80 << 48)?;
    ensure!(
        (12..=48).contains(&kept_after_tail),
        "{kept_after_tail} of 60 error traces kept at 50%"
    );
    eprintln!(
        "e2e_sampling: head 25%: {kept} of 120 traces, each span ot=th:c; tail errors + head 50%: {kept_after_tail} of 60 error traces, each span ot=th:8"
    );
    Ok(())
}

#[test]
fn an_upstream_tracestate_is_carried_on_with_its_threshold() -> Result<()> {
    if !privileged_or_skip("an_upstream_tracestate_is_carried_on_with_its_threshold") {
        return Ok(());
    }
    // The trace ids' own randomness (last 7 bytes) is below th:8's 2^55: only the upstream's
    // rv (c0…) makes its th:8 agree with the sampled flag, so the spans carrying th:8 show that
    // rv is the randomness read.
    const WITH_TH: &str = "0af7651916cd43dd0048eb211c80319c";
    const INVALID: &str = "0af7651916cd43dd0148eb211c80319c";
    const NO_TH: &str = "0af7651916cd43dd0248eb211c80319c";
    let sends: [(&str, Option<&str>, &str); 4] = [
        (
            "/api/ts-th",
            Some(WITH_TH),
            "vendor=x,ot=th:8;rv:c0000000000000",
        ),
        ("/api/ts-invalid", Some(INVALID), "vendor=x,vendor=y"),
        ("/api/ts-alone", None, "vendor=x,ot=th:8"),
        ("/api/ts-no-th", Some(NO_TH), "vendor=z , other@t=1"),
    ];
    let drive = |base: &str| {
        for (path, trace, state) in sends {
            let mut args = vec!["-H".to_string(), format!("tracestate: {state}")];
            if let Some(trace) = trace {
                args.extend([
                    "-H".into(),
                    format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
                ]);
            }
            args.push(format!("{base}{path}"));
            curl(&args)?;
        }
        Ok(())
    };
    let (spans, _, _) = traced_run(&[], None, drive, 12)?;
    // Each request's trace: its frontend SERVER span (by path), then every span of that trace.
    let trace_of = |path: &str| -> Result<Vec<&ReceivedSpan>> {
        let root = spans
            .iter()
            .find(|s| s.attr_str("url.path").as_deref() == Some(path))
            .ok_or_else(|| anyhow::anyhow!("no SERVER span for {path}"))?;
        let id = root.trace_id_hex();
        Ok(spans.iter().filter(|s| s.trace_id_hex() == id).collect())
    };
    let want = [
        (
            "/api/ts-th",
            Some(WITH_TH),
            "ot=th:8;rv:c0000000000000,vendor=x",
        ),
        ("/api/ts-invalid", Some(INVALID), ""),
        ("/api/ts-alone", None, ""),
        ("/api/ts-no-th", Some(NO_TH), "vendor=z,other@t=1"),
    ];
    for (path, trace, state) in want {
        let got = trace_of(path)?;
        ensure!(
            got.len() == 3,
            "{path}: {} spans in its trace, want 3 (frontend SERVER and CLIENT, backend SERVER)",
            got.len()
        );
        if let Some(trace) = trace {
            ensure!(
                got[0].trace_id_hex() == trace,
                "{path}: trace {} does not follow the traceparent's {trace}",
                got[0].trace_id_hex()
            );
        }
        for s in &got {
            ensure!(
                s.span.trace_state == state,
                "{path}: span {} carries tracestate `{}`, want `{state}`",
                s.span.name,
                s.span.trace_state
            );
        }
    }
    eprintln!(
        "e2e_sampling: upstream tracestate carried on by all 3 spans of its trace (th:8 and rv in ot, vendor entry kept); invalid dropped, lone ignored, no-th kept as it came"
    );
    Ok(())
}
