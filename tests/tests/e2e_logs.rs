//! The logs signal end to end, as root: an uninstrumented Python server that prints a line per
//! request (stdout), a warning (stderr), an over-long line, and background "tick" lines, traced
//! with `--capture-logs`. Every line written while serving a request must reach the receiver as a
//! log record carrying the trace and span ids of that request's exported SERVER span (an incoming
//! `traceparent` included); lines written outside requests carry none; without the flag there are
//! no log records at all.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ztrace_e2e::{
    harness::{Proc, apps_dir, curl, privileged_or_skip, runtime_with_receiver, spawn_ztrace},
    receiver::ReceivedSpan,
    signals::{ReceivedLog, attr_int},
};

const TRACEPARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Starts tests/apps/log_app.py and keeps reading its stdout (a closed pipe would make its
/// writes fail, and failed writes are not logs).
fn log_app() -> Result<(Proc, u16)> {
    let mut child = Command::new("python3")
        .arg(apps_dir().join("log_app.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting log_app.py")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut first = String::new();
    out.read_line(&mut first)?;
    let port = first
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("log_app.py printed `{first}`"))?;
    let (stdout, stderr) = (Arc::new(Mutex::new(String::new())), Arc::default());
    for (pipe, sink) in [
        (
            Box::new(out) as Box<dyn BufRead + Send>,
            Arc::clone(&stdout),
        ),
        (
            Box::new(BufReader::new(child.stderr.take().context("stderr")?)),
            Arc::clone(&stderr),
        ),
    ] {
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
    }
    Ok((
        Proc {
            child,
            stderr,
            stdout,
        },
        port,
    ))
}

/// Traces the app, drives `paths` (one connection each; `/ctx` with a traceparent), stops ztrace;
/// returns the spans and log records received.
fn run(capture_logs: bool, paths: &[&str]) -> Result<(Proc, Vec<ReceivedSpan>, Vec<ReceivedLog>)> {
    let (app, port) = log_app()?;
    let (rt, receiver) = runtime_with_receiver()?;
    let mut args = vec![
        "--pid".to_string(),
        app.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ];
    if capture_logs {
        args.push("--capture-logs".into());
    }
    let mut ztrace = spawn_ztrace(&args)?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    // Some ticks while nothing is being served.
    std::thread::sleep(Duration::from_millis(700));
    for path in paths {
        let mut a = vec![format!("http://127.0.0.1:{port}{path}")];
        if *path == "/ctx" {
            a.push("-H".into());
            a.push(format!(
                "traceparent: 00-{TRACEPARENT_TRACE}-00f067aa0ba902b7-01"
            ));
        }
        ensure!(curl(&a)? == "ok", "{path} answered badly");
    }
    std::thread::sleep(Duration::from_millis(500));
    ztrace.signal(libc::SIGINT);
    if ztrace.wait_exit(Duration::from_secs(30)) != Some(0) {
        bail!("ztrace failed:\n{}", ztrace.stderr_text());
    }
    eprintln!("{}", ztrace.stderr_text());
    let spans = rt.block_on(receiver.wait_for_spans(paths.len(), Duration::from_secs(10)));
    let logs = receiver.signals().all_logs();
    Ok((app, spans, logs))
}

#[test]
fn printed_lines_carry_the_ids_of_the_request_being_served() -> Result<()> {
    if !privileged_or_skip("printed_lines_carry_the_ids_of_the_request_being_served") {
        return Ok(());
    }
    let paths = [
        "/r1", "/r2", "/r3", "/warn1", "/long1", "/ctx", "/r4", "/r5",
    ];
    let (app, spans, logs) = run(true, &paths)?;
    ensure!(
        app.stdout_text().contains("handling /r5"),
        "the app's own stdout still works: {}",
        app.stdout_text()
    );
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Server as i32)
        .collect();
    ensure!(
        servers.len() == paths.len(),
        "{} server spans",
        servers.len()
    );
    let one = |body: &str| -> Result<&ReceivedLog> {
        let found: Vec<&ReceivedLog> = logs.iter().filter(|l| l.body() == body).collect();
        ensure!(
            found.len() == 1,
            "{} records `{body}` among {logs:#?}",
            found.len()
        );
        Ok(found[0])
    };
    for path in paths {
        let span = servers
            .iter()
            .find(|s| s.attr_str("url.path").as_deref() == Some(path))
            .with_context(|| format!("no server span for {path}"))?;
        let log = one(&format!("handling {path}"))?;
        ensure!(
            log.trace_id_hex() == span.trace_id_hex() && log.span_id_hex() == span.span_id_hex(),
            "{path}: log ids {}/{} != span ids {}/{}",
            log.trace_id_hex(),
            log.span_id_hex(),
            span.trace_id_hex(),
            span.span_id_hex()
        );
        ensure!(log.attr_str("log.iostream").as_deref() == Some("stdout"));
        ensure!(log.record.flags & 1 == 1, "sampled flag");
        ensure!(attr_int(&log.resource, "process.pid") == Some(i64::from(app.pid())));
        ensure!(log.record.time_unix_nano >= span.span.start_time_unix_nano);
        ensure!(log.record.time_unix_nano <= span.span.end_time_unix_nano);
    }
    ensure!(one("handling /ctx")?.trace_id_hex() == TRACEPARENT_TRACE);
    let warn = one("warning while serving /warn1")?;
    ensure!(warn.attr_str("log.iostream").as_deref() == Some("stderr"));
    ensure!(warn.span_id_hex() == one("handling /warn1")?.span_id_hex());
    // 1000 characters and a newline, captured up to the 512-byte payload cap: cut and marked.
    let long = logs
        .iter()
        .find(|l| l.body().starts_with("LLLL"))
        .context("no record of the long line")?;
    ensure!(
        long.body() == "L".repeat(512),
        "long body of {} bytes",
        long.body().len()
    );
    ensure!(
        long.record
            .attributes
            .iter()
            .any(|kv| kv.key == "ztrace.log.truncated"),
        "truncation mark"
    );
    ensure!(long.span_id_hex() == one("handling /long1")?.span_id_hex());
    let ticks: Vec<&ReceivedLog> = logs.iter().filter(|l| l.body() == "tick").collect();
    ensure!(ticks.len() >= 2, "{} tick records", ticks.len());
    ensure!(
        ticks
            .iter()
            .all(|t| t.record.trace_id.is_empty() && t.record.span_id.is_empty()),
        "lines written outside any request carry no trace"
    );
    Ok(())
}

#[test]
fn without_capture_logs_nothing_is_logged() -> Result<()> {
    if !privileged_or_skip("without_capture_logs_nothing_is_logged") {
        return Ok(());
    }
    let (app, spans, logs) = run(false, &["/r1", "/warn1"])?;
    ensure!(spans.len() >= 2, "spans still flow: {}", spans.len());
    ensure!(app.stdout_text().contains("tick"), "the app did print");
    ensure!(
        logs.is_empty(),
        "{} log records without --capture-logs",
        logs.len()
    );
    Ok(())
}
