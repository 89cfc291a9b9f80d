//! `ztrace record` captures the raw event stream of real processes (as root); `ztrace replay`
//! turns it into the same linked spans without any privilege, identically on every run, through
//! the same processors as the daemon (rules, tail sampling) on the recording's own clock, with
//! the RED metrics of the recorded requests, and (recorded with `--capture-logs`) the lines the
//! services wrote as log records carrying the ids of the request being served.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, metric::Data};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ztrace_e2e::{
    harness::{
        Proc, curl, ensure_whole_error_traces, errors_only_tail_sampling, privileged_or_skip,
        runtime_with_receiver, spawn_service_with, spawn_ztrace, stop_ztrace,
    },
    receiver::{ReceivedSpan, Receiver},
    signals::{ReceivedLog, ReceivedMetric, attr_int, attr_str},
    temp::TempDir,
};

fn replay_as_nobody(file: &std::path::Path) -> Result<(i32, String, String)> {
    let out = ztrace_e2e::harness::ztrace_as_nobody()
        .args(["replay", "--output", "json"])
        .arg(file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The two-tier services (frontend → backend), and `ztrace record` of both into `file`, recording.
/// With `logs`, each service writes a line to stderr per request it serves (`frontend GET
/// /api/p1`, `backend GET /item/p1`) and the recorder captures them (`--capture-logs`).
fn record_two_tier(file: &std::path::Path, logs: bool) -> Result<(Proc, [Proc; 2], u16)> {
    let env: &[(&str, &str)] = if logs { &[("LOG_REQUESTS", "1")] } else { &[] };
    let (backend, backend_port) = spawn_service_with(&["backend"], env)?;
    let (frontend, front_port) = spawn_service_with(&["frontend", &backend_port.to_string()], env)?;
    let mut args = vec![
        "record".into(),
        "--pid".into(),
        format!("{},{}", frontend.pid(), backend.pid()),
        "-o".into(),
        file.display().to_string(),
    ];
    if logs {
        args.push("--capture-logs".into());
    }
    let mut recorder = spawn_ztrace(&args)?;
    recorder.wait_stderr("recording raw events", Duration::from_secs(60))?;
    Ok((recorder, [frontend, backend], front_port))
}

/// Requests `urls` while `recorder` records, then stops it (SIGINT) and expects a clean exit.
fn record_requests(recorder: &mut Proc, urls: &[String]) -> Result<()> {
    curl(urls)?;
    std::thread::sleep(Duration::from_millis(300));
    stop_ztrace(recorder)
}

#[test]
fn record_then_replay_without_privileges() -> Result<()> {
    if !privileged_or_skip("record_then_replay_without_privileges") {
        return Ok(());
    }
    let dir = TempDir::new("record")?;
    // World-readable so the unprivileged replay can open it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let file = dir.join("capture.zcap");
    let (mut recorder, _services, front_port) = record_two_tier(&file, false)?;
    let urls: Vec<String> = (0..5)
        .map(|i| format!("http://127.0.0.1:{front_port}/api/r{i}"))
        .collect();
    record_requests(&mut recorder, &urls)?;
    ensure!(
        recorder.stderr_text().contains("recorded"),
        "{}",
        recorder.stderr_text()
    );
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;

    let (code, first, stderr) = replay_as_nobody(&file)?;
    ensure!(code == 0, "replay failed ({code}): {stderr}");
    let spans: Vec<serde_json::Value> = first
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        spans.len() == 15,
        "want 5 × (frontend SERVER, CLIENT, backend SERVER), got {}:\n{first}",
        spans.len()
    );
    let parented = spans
        .iter()
        .filter(|s| s["parent_span_id"].as_str().is_some_and(|p| !p.is_empty()))
        .count();
    ensure!(
        parented == 10,
        "10 spans must have parents, {parented} do:\n{first}"
    );
    // Named after the script the interpreter runs (two_tier.py), as recorded.
    ensure!(
        spans
            .iter()
            .all(|s| s["service_name"].as_str() == Some("two_tier"))
    );

    for _ in 0..3 {
        let (_, again, _) = replay_as_nobody(&file)?;
        if let Some((a, b)) = first.lines().zip(again.lines()).find(|(a, b)| a != b) {
            anyhow::bail!("replay is not deterministic: first run\n{a}\nlater run\n{b}");
        }
        ensure!(
            first.lines().count() == again.lines().count(),
            "replay is not deterministic: {} spans, then {}",
            first.lines().count(),
            again.lines().count()
        );
    }

    // A damaged file is a clear error, not a crash.
    let bad = dir.join("bad.zcap");
    std::fs::write(&bad, b"not a recording")?;
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let (code, _, stderr) = replay_as_nobody(&bad)?;
    ensure!(
        code == 2 && stderr.contains("not a ztrace record file"),
        "{code} {stderr}"
    );
    Ok(())
}

/// A record file on a full disk: ztrace says which file and why, stops capturing, prints its
/// summary and exits non-zero; the file replays, with the events written before the disk filled.
#[test]
fn record_on_a_full_disk_stops_cleanly_and_keeps_what_it_wrote() -> Result<()> {
    if !privileged_or_skip("record_on_a_full_disk_stops_cleanly_and_keeps_what_it_wrote") {
        return Ok(());
    }
    let dir = TempDir::new("full")?;
    // A 64 KiB file system of its own: full after a few dozen requests.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(&dir)
        .status()?;
    ensure!(mounted.success(), "mount -t tmpfs failed");
    /// Unmounts before the directory guard (declared earlier, dropped later) removes it.
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&dir);
    let file = dir.join("capture.zcap");
    let (mut recorder, services, front_port) = record_two_tier(&file, false)?;
    let urls: Vec<String> = (0..300)
        .map(|i| format!("http://127.0.0.1:{front_port}/api/full{i}"))
        .collect();
    curl(&urls)?;
    // It stops by itself: no signal.
    let code = recorder.wait_exit(Duration::from_secs(30));
    let stderr = recorder.stderr_text();
    ensure!(
        code.is_some_and(|c| c != 0),
        "exit {code:?} on a full disk:\n{stderr}"
    );
    for want in [
        "No space left on device",
        "capture.zcap",
        "until a write failed",
        "after it not written",
    ] {
        ensure!(stderr.contains(want), "no `{want}` in:\n{stderr}");
    }
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let (code, out, replay_err) = replay_as_nobody(&file)?;
    ensure!(
        code == 0,
        "the file written before the disk filled does not replay ({code}): {replay_err}"
    );
    let spans = out.lines().count();
    ensure!(
        spans >= 3 && spans < 3 * urls.len(),
        "{spans} spans replayed from a file cut by a full disk (want some, not all)"
    );
    drop(services);
    Ok(())
}

/// What one replay exported: spans, metrics and log records.
type Exported = (Vec<ReceivedSpan>, Vec<ReceivedMetric>, Vec<ReceivedLog>);

/// `ztrace replay ARGS… FILE` as nobody, exporting to `receiver` (running on the caller's
/// runtime); every span, metric and log record it received once the replay has exited (it
/// flushes before it exits).
fn replay_to(receiver: &Receiver, file: &Path, args: &[&str]) -> Result<Exported> {
    let out = ztrace_e2e::harness::ztrace_as_nobody()
        .arg("replay")
        .args(args)
        .args(["--otlp-endpoint", &receiver.endpoint()])
        .arg(file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "replay {args:?} failed ({:?}): {stderr}",
        out.status.code()
    );
    // Exported before the process exited; a moment for the receiver's side of the last call.
    std::thread::sleep(Duration::from_millis(200));
    eprintln!("replay {args:?} stderr:\n{stderr}");
    let signals = receiver.signals();
    Ok((receiver.spans(), signals.all_metrics(), signals.all_logs()))
}

/// The metrics of a replay as exported, for comparing two replays: every metric with its data
/// points, timestamps included, under its process (ztrace's own Resource is the replaying
/// process's, so it is named only).
fn exported_metrics(metrics: &[ReceivedMetric]) -> Vec<String> {
    let mut v: Vec<String> = metrics
        .iter()
        .map(|m| {
            let owner = match attr_str(&m.resource, "service.name").as_deref() {
                Some("ztrace") => "ztrace".to_string(),
                _ => format!("{:?}", m.resource),
            };
            format!("{owner} {:?}", m.metric)
        })
        .collect();
    v.sort();
    v
}

/// The histogram points of `name` in the last export of process `pid` (cumulative: its totals).
fn last_histogram(metrics: &[ReceivedMetric], name: &str, pid: u32) -> Vec<HistogramDataPoint> {
    metrics
        .iter()
        .rev()
        .find(|m| {
            m.metric.name == name && attr_int(&m.resource, "process.pid") == Some(i64::from(pid))
        })
        .map_or_else(Vec::new, |m| match &m.metric.data {
            Some(Data::Histogram(h)) => h.data_points.clone(),
            _ => Vec::new(),
        })
}

/// The count of `points` with HTTP status `status`.
fn count_with_status(points: &[HistogramDataPoint], status: i64) -> u64 {
    points
        .iter()
        .filter(|p| attr_int(&p.attributes, "http.response.status_code") == Some(status))
        .map(|p| p.count)
        .sum()
}

/// The log records of a replay as exported, for comparing two replays: each record, ids and
/// timestamps included, with its Resource.
fn exported_logs(logs: &[ReceivedLog]) -> Vec<String> {
    let mut v: Vec<String> = logs
        .iter()
        .map(|l| format!("{:?} {:?}", l.resource, l.record))
        .collect();
    v.sort();
    v
}

/// Two replays' exports of one signal (as [`exported_metrics`] or [`exported_logs`] sort them)
/// are the same; else the first difference.
fn ensure_same(what: &str, first: &[String], again: &[String]) -> Result<()> {
    if let Some((x, y)) = first.iter().zip(again).find(|(x, y)| x != y) {
        anyhow::bail!("two replays export different {what}: first\n{x}\nthen\n{y}");
    }
    ensure!(
        first.len() == again.len(),
        "two replays export different {what}: {} then {}",
        first.len(),
        again.len()
    );
    Ok(())
}

/// The lines the services wrote while serving (recorded with `--capture-logs`), as replayed
/// with every span exported: each SERVER span has exactly one record, `<role> GET <its path>`,
/// from its process, with its trace and span ids, written within it; no other record.
fn ensure_lines_of_the_requests(
    spans: &[ReceivedSpan],
    logs: &[ReceivedLog],
    [frontend, backend]: [u32; 2],
) -> Result<()> {
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Server as i32)
        .collect();
    ensure!(
        logs.len() == servers.len(),
        "{} log records for {} SERVER spans (one line per request served): {:#?}",
        logs.len(),
        servers.len(),
        logs.iter().map(ReceivedLog::body).collect::<Vec<_>>()
    );
    for s in servers {
        let pid = attr_int(&s.resource, "process.pid").context("a span without process.pid")?;
        let role = if pid == i64::from(frontend) {
            "frontend"
        } else if pid == i64::from(backend) {
            "backend"
        } else {
            anyhow::bail!("a SERVER span of process {pid}");
        };
        let path = s
            .attr_str("url.path")
            .context("a SERVER span without url.path")?;
        let found: Vec<&ReceivedLog> = logs
            .iter()
            .filter(|l| l.span_id_hex() == s.span_id_hex())
            .collect();
        ensure!(
            found.len() == 1,
            "{} log records with the span id of {role}'s SERVER span for {path}: {found:#?}",
            found.len()
        );
        let l = found[0];
        ensure!(
            l.body() == format!("{role} GET {path}")
                && l.trace_id_hex() == s.trace_id_hex()
                && attr_int(&l.resource, "process.pid") == Some(pid)
                && l.attr_str("log.iostream").as_deref() == Some("stderr"),
            "{role} {path}: span {}/{}, log record {:?}",
            s.trace_id_hex(),
            s.span_id_hex(),
            l
        );
        ensure!(
            l.record.time_unix_nano >= s.span.start_time_unix_nano
                && l.record.time_unix_nano <= s.span.end_time_unix_nano,
            "{role} {path}: the line's time is not within its request's span: {l:?}"
        );
        ensure!(
            !l.resource.iter().any(|kv| kv.key == "process.command_args"),
            "command lines stay home by default: {:?}",
            l.resource
        );
    }
    Ok(())
}

/// A span as exported, for comparing two replays: its resource and every field, ids included.
fn exported(spans: &[ReceivedSpan]) -> Vec<String> {
    let mut v: Vec<String> = spans
        .iter()
        .map(|s| format!("{:?} {:?}", s.resource, s.span))
        .collect();
    v.sort();
    v
}

/// A recording of the two-tier services under real probes, with some error responses, replayed
/// (unprivileged) with the config file's `probabilistic 0` + `status_code ERROR` tail policies:
/// exactly the error traces reach the collector, each whole (frontend SERVER and CLIENT, backend
/// SERVER), the same every time; and with a `[transform]` rule, every replayed span carries its
/// changes. Every replay exports the RED metrics of all the recorded requests (aggregated before
/// tail sampling, as the daemon does), collected every `--metric-export-interval` of the
/// recording's time: the same points, timestamps included, on every run; a metric rule of the
/// config file applies to them. Recorded with `--capture-logs`, every replay exports the line
/// each service wrote per request (tail sampling keeps spans, not lines: all of them, as the
/// daemon does) with the trace and span ids of the request whose handler wrote it, the same
/// records on every run.
#[test]
fn replay_applies_tail_sampling_and_rules_from_the_config_file() -> Result<()> {
    if !privileged_or_skip("replay_applies_tail_sampling_and_rules_from_the_config_file") {
        return Ok(());
    }
    const REQUESTS: usize = 120;
    const FAIL_EVERY: usize = 12;
    let dir = TempDir::new("replay-proc")?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let write = |name: &str, text: &str| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        Ok(path.display().to_string())
    };
    let errors_only = write("errors.toml", &errors_only_tail_sampling("500ms"))?;
    let rules = write(
        "rules.toml",
        r#"
[[transform.trace_statements]]
context = "span"
statements = [
  'set(attributes["replay.note"], "rewritten")',
  'delete_key(attributes, "url.path")',
]

[[transform.metric_statements]]
context = "datapoint"
statements = ['set(attributes["replay.rule"], "on") where metric.name == "http.server.request.duration"']
"#,
    )?;
    let file = dir.join("capture.zcap");
    let (mut recorder, services, front_port) = record_two_tier(&file, true)?;
    let urls: Vec<String> = (0..REQUESTS)
        .map(|i| {
            if i % FAIL_EVERY == 0 {
                format!("http://127.0.0.1:{front_port}/api/fail")
            } else {
                format!("http://127.0.0.1:{front_port}/api/p{i}")
            }
        })
        .collect();
    record_requests(&mut recorder, &urls)?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let [frontend, backend] = &services;
    let failures = REQUESTS.div_ceil(FAIL_EVERY);

    // Metrics every 100 ms of the recording's time (the requests take several of them).
    let args = [
        "--config",
        errors_only.as_str(),
        "--metric-export-interval",
        "100ms",
    ];
    let (rt, first) = runtime_with_receiver()?;
    let (spans, metrics, logs) = replay_to(&first, &file, &args)?;
    ensure_whole_error_traces(&spans, failures, frontend.pid(), backend.pid())
        .context("the replay with the errors-only tail sampling")?;
    // The RED metrics of every recorded request, not only of the traces tail sampling kept: per
    // process and status, the server duration histograms count the requests (the frontend
    // answers a backend 500 with 502), and the frontend's client histogram its calls.
    let ok = (REQUESTS - failures) as u64;
    let server = "http.server.request.duration";
    let front = last_histogram(&metrics, server, frontend.pid());
    let back = last_histogram(&metrics, server, backend.pid());
    let calls = last_histogram(&metrics, "http.client.request.duration", frontend.pid());
    let got = [
        (
            count_with_status(&front, 200),
            count_with_status(&front, 502),
        ),
        (count_with_status(&back, 200), count_with_status(&back, 500)),
        (
            count_with_status(&calls, 200),
            count_with_status(&calls, 500),
        ),
    ];
    ensure!(
        got == [(ok, failures as u64); 3],
        "replayed RED counts (frontend server, backend server, frontend client) by (ok, error) status: {got:?}, want ({ok}, {failures}) each; metrics {:#?}",
        metrics
            .iter()
            .map(|m| (&m.metric.name, attr_int(&m.resource, "process.pid")))
            .collect::<Vec<_>>()
    );
    let collections = first.signals().metrics.len();
    ensure!(
        collections >= 2,
        "{collections} metric exports: want one per 100 ms of the recording and one at the end"
    );

    // The same file and config, again: the same spans, field for field, and the same metric
    // points, timestamps included.
    let second = rt.block_on(Receiver::start())?;
    let (again, metrics_again, logs_again) = replay_to(&second, &file, &args)?;
    ensure!(
        exported(&spans) == exported(&again),
        "two replays with the same config differ: {} spans, then {}",
        spans.len(),
        again.len()
    );
    ensure_same(
        "metrics",
        &exported_metrics(&metrics),
        &exported_metrics(&metrics_again),
    )?;
    // A line per request and service, whatever tail sampling kept; the same records again.
    ensure!(
        logs.len() == 2 * REQUESTS,
        "{} log records, want {} (a line per request from each service)",
        logs.len(),
        2 * REQUESTS
    );
    ensure_same(
        "log records",
        &exported_logs(&logs),
        &exported_logs(&logs_again),
    )?;

    // A transform rule: set on every span, and `url.path` (every SERVER span has one) gone;
    // the metric rule marks every server duration point.
    let third = rt.block_on(Receiver::start())?;
    let (rewritten, rewritten_metrics, _) = replay_to(&third, &file, &["--config", &rules])?;
    let marked: Vec<_> = rewritten_metrics
        .iter()
        .filter(|m| m.metric.name == server)
        .flat_map(|m| match &m.metric.data {
            Some(Data::Histogram(h)) => h.data_points.clone(),
            _ => Vec::new(),
        })
        .collect();
    ensure!(
        !marked.is_empty()
            && marked
                .iter()
                .all(|p| attr_str(&p.attributes, "replay.rule").as_deref() == Some("on")),
        "server duration points without the metric rule's attribute: {marked:#?}"
    );
    ensure!(
        rewritten.len() == 3 * REQUESTS,
        "{} spans with the rules (no sampling), want {}",
        rewritten.len(),
        3 * REQUESTS
    );
    for s in &rewritten {
        ensure!(
            s.attr_str("replay.note").as_deref() == Some("rewritten") && !s.has_attr("url.path"),
            "a replayed span without the rule's changes: {:?}",
            s.span
        );
    }

    // Every span exported: each line carries the ids of the request whose handler wrote it.
    let fourth = rt.block_on(Receiver::start())?;
    let (all, _, lines) = replay_to(&fourth, &file, &[])?;
    ensure!(all.len() == 3 * REQUESTS, "{} spans replayed", all.len());
    ensure_lines_of_the_requests(&all, &lines, [frontend.pid(), backend.pid()])?;
    drop(services);
    Ok(())
}
