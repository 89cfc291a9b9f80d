//! OTLP done right, end to end: the real ztrace binary traces a real HTTP server (tests/apps
//! two_tier.py backend, driven by curl) and exports to the in-process receiver, configured the
//! way operators configure any OpenTelemetry component — environment variables, flags, a config
//! file. Covers OTLP/HTTP with and without gzip, OTLP/gRPC with gzip, headers and resource
//! attributes arriving, samplers, and the faults a collector has: not running at start, killed
//! and restarted, slow, erroring. Counts are checked against ztrace's own exit summary: every
//! span is exported, dropped (and counted) or sampled out — never lost silently.
//! Invalid settings are a one-line error naming the variable, exit code 2.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ztrace_e2e::harness::{Proc, privileged_or_skip, spawn_service, spawn_ztrace_env, ztrace_bin};
use ztrace_e2e::receiver::{Options, Protocol, Receiver};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn receiver(rt: &tokio::runtime::Runtime, protocol: Protocol) -> Result<Receiver> {
    rt.block_on(Receiver::start_with(Options {
        protocol,
        ..Options::default()
    }))
}

/// The backend service and ztrace tracing it with `args` and `env`.
struct Traced {
    backend: Proc,
    port: u16,
    ztrace: Proc,
}

fn trace_backend(args: &[&str], env: &[(&str, &str)]) -> Result<Traced> {
    let (backend, port) = spawn_service(&["backend"])?;
    let mut all = vec!["--pid".to_string(), backend.pid().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let mut ztrace = spawn_ztrace_env(&all, env)?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    Ok(Traced {
        backend,
        port,
        ztrace,
    })
}

impl Traced {
    /// `n` GET requests, each its own trace (one SERVER span each).
    fn drive(&self, n: usize) -> Result<()> {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}/item/{i}", self.port))
            .collect();
        for chunk in urls.chunks(50) {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "30"])
                .args(chunk)
                .stdout(std::process::Stdio::null())
                .status()
                .context("curl")?;
            ensure!(out.success(), "curl failed: {out}");
        }
        Ok(())
    }

    /// SIGINT, wait for exit 0, return stderr.
    fn finish(mut self) -> Result<String> {
        // Let the last exchanges reach the linker before stopping.
        std::thread::sleep(Duration::from_millis(500));
        self.ztrace.signal(libc::SIGINT);
        let code = self.ztrace.wait_exit(Duration::from_secs(30));
        let stderr = self.ztrace.stderr_text();
        eprintln!("{stderr}");
        drop(self.backend);
        if code != Some(0) {
            bail!("ztrace exited with {code:?}:\n{stderr}");
        }
        Ok(stderr)
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.ztrace.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// The span counts of ztrace's exit summary.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    spans: u64,
    exported: u64,
    dropped: u64,
    queue: u64,
    failed: u64,
    sampled_out: u64,
}

/// Parses "N spans (E exported, D dropped: queue Q, export failures F; S sampled out)".
fn summary(stderr: &str) -> Result<Summary> {
    let line = stderr
        .lines()
        .find(|l| l.contains("summary:") && l.contains("sampled out"))
        .context("no summary line")?;
    let (head, rest) = line
        .split_once(" spans (")
        .context("summary without span counts")?;
    let spans = head
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .context("span total")?;
    let rest = rest.split(')').next().unwrap_or("");
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    let [exported, dropped, queue, failed, sampled_out] = numbers[..] else {
        bail!("unexpected summary: {line}");
    };
    Ok(Summary {
        spans,
        exported,
        dropped,
        queue,
        failed,
        sampled_out,
    })
}

/// Every span the backend produced: exported, dropped or sampled out.
fn check_accounting(s: &Summary, received: usize) -> Result<()> {
    ensure!(
        s.exported == received as u64,
        "{s:?} vs {received} received"
    );
    ensure!(s.dropped == s.queue + s.failed, "{s:?}");
    ensure!(
        s.exported + s.dropped + s.sampled_out == s.spans,
        "counts do not add up: {s:?}"
    );
    Ok(())
}

#[test]
fn http_protobuf_gzip_headers_and_resource_attributes() -> Result<()> {
    if !privileged_or_skip("http_protobuf_gzip_headers_and_resource_attributes") {
        return Ok(());
    }
    let rt = runtime()?;
    let receiver = receiver(&rt, Protocol::Http)?;
    let endpoint = receiver.endpoint();
    let traced = trace_backend(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-tenant=acme,authorization=Bearer%20t0ken",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=e2e,team=a%2Cb",
            ),
            ("OTEL_SERVICE_NAME", "checkout"),
        ],
    )?;
    traced.drive(5)?;
    let s = summary(&traced.finish()?)?;
    let spans = rt.block_on(receiver.wait_for_spans(5, Duration::from_secs(5)));
    ensure!(spans.len() == 5, "{} spans: {s:?}", spans.len());
    check_accounting(&s, spans.len())?;
    for span in &spans {
        ensure!(span.resource_str("service.name").as_deref() == Some("checkout"));
        ensure!(span.resource_str("deployment.environment.name").as_deref() == Some("e2e"));
        ensure!(span.resource_str("team").as_deref() == Some("a,b"));
        ensure!(
            span.attr_str("url.path")
                .is_some_and(|p| p.starts_with("/item/"))
        );
    }
    let calls = receiver.calls();
    ensure!(!calls.is_empty());
    for call in &calls {
        ensure!(call.gzip, "not gzip: {call:?}");
        ensure!(call.header("x-tenant") == Some("acme"), "{call:?}");
        ensure!(
            call.header("authorization") == Some("Bearer t0ken"),
            "{call:?}"
        );
        ensure!(call.header("content-type") == Some("application/x-protobuf"));
    }
    Ok(())
}

#[test]
fn http_protobuf_without_gzip_from_flags() -> Result<()> {
    if !privileged_or_skip("http_protobuf_without_gzip_from_flags") {
        return Ok(());
    }
    let rt = runtime()?;
    let receiver = receiver(&rt, Protocol::Http)?;
    let traces = format!("{}/v1/traces", receiver.endpoint());
    // The flags win over the environment, which says gRPC to nowhere.
    let traced = trace_backend(
        &[
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-traces-endpoint",
            &traces,
            "--otlp-headers",
            "x-from=flag",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-from=env"),
        ],
    )?;
    traced.drive(3)?;
    let s = summary(&traced.finish()?)?;
    let spans = rt.block_on(receiver.wait_for_spans(3, Duration::from_secs(5)));
    ensure!(spans.len() == 3, "{} spans: {s:?}", spans.len());
    check_accounting(&s, spans.len())?;
    for call in receiver.calls() {
        ensure!(!call.gzip, "{call:?}");
        ensure!(call.header("x-from") == Some("flag"), "{call:?}");
    }
    Ok(())
}

#[test]
fn grpc_with_gzip_from_a_config_file() -> Result<()> {
    if !privileged_or_skip("grpc_with_gzip_from_a_config_file") {
        return Ok(());
    }
    let rt = runtime()?;
    let receiver = receiver(&rt, Protocol::Grpc)?;
    let dir = ztrace_e2e::temp::TempDir::new("otlp")?;
    let file = dir.join("ztrace.toml");
    std::fs::write(
        &file,
        format!(
            "[otlp]\nendpoint = \"{}\"\nprotocol = \"grpc\"\ncompression = \"gzip\"\n\
             headers = {{ \"x-api-key\" = \"k1\" }}\ntimeout = \"5s\"\n\
             [resource]\nattributes = {{ \"deployment.environment.name\" = \"file\" }}\n",
            receiver.endpoint()
        ),
    )?;
    let traced = trace_backend(&["--config", &file.to_string_lossy()], &[])?;
    traced.drive(4)?;
    let s = summary(&traced.finish()?)?;
    let spans = rt.block_on(receiver.wait_for_spans(4, Duration::from_secs(5)));
    ensure!(spans.len() == 4, "{} spans: {s:?}", spans.len());
    check_accounting(&s, spans.len())?;
    ensure!(
        spans
            .iter()
            .all(|s| s.resource_str("deployment.environment.name").as_deref() == Some("file"))
    );
    for call in receiver.calls() {
        ensure!(call.gzip, "{call:?}");
        ensure!(call.header("x-api-key") == Some("k1"), "{call:?}");
    }
    Ok(())
}

#[test]
fn sampler_always_off_exports_nothing() -> Result<()> {
    if !privileged_or_skip("sampler_always_off_exports_nothing") {
        return Ok(());
    }
    let rt = runtime()?;
    let receiver = receiver(&rt, Protocol::Grpc)?;
    let endpoint = receiver.endpoint();
    let traced = trace_backend(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
    )?;
    traced.drive(10)?;
    let s = summary(&traced.finish()?)?;
    ensure!(receiver.span_count() == 0);
    ensure!(s.spans >= 10 && s.sampled_out == s.spans, "{s:?}");
    check_accounting(&s, 0)?;
    Ok(())
}

#[test]
fn sampler_traceidratio_keeps_about_the_ratio() -> Result<()> {
    if !privileged_or_skip("sampler_traceidratio_keeps_about_the_ratio") {
        return Ok(());
    }
    let rt = runtime()?;
    let receiver = receiver(&rt, Protocol::Grpc)?;
    let endpoint = receiver.endpoint();
    let traced = trace_backend(
        &["--sampler", "traceidratio", "--sampler-arg", "0.25"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )?;
    let n = 400;
    traced.drive(n)?;
    let s = summary(&traced.finish()?)?;
    let received = rt
        .block_on(receiver.wait_for_spans(1, Duration::from_secs(3)))
        .len();
    check_accounting(&s, received)?;
    ensure!(s.spans >= n as u64, "{s:?}");
    // 400 independent traces at 0.25: mean 100, standard deviation about 8.7.
    let share = received as f64 / s.spans as f64;
    ensure!(
        (0.15..=0.35).contains(&share),
        "kept {received} of {}",
        s.spans
    );
    eprintln!(
        "traceidratio 0.25: kept {received} of {} spans ({share:.3})",
        s.spans
    );
    Ok(())
}

#[test]
fn collector_not_running_at_start() -> Result<()> {
    if !privileged_or_skip("collector_not_running_at_start") {
        return Ok(());
    }
    let rt = runtime()?;
    let port = ztrace_e2e::harness::free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let traced = trace_backend(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )?;
    traced.drive(5)?;
    // Spans are released and their export is retried against the closed port.
    std::thread::sleep(Duration::from_secs(3));
    let receiver = rt.block_on(Receiver::start_with(Options {
        protocol: Protocol::Http,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        ..Options::default()
    }))?;
    let got = rt.block_on(receiver.wait_for_spans(5, Duration::from_secs(20)));
    ensure!(
        got.len() == 5,
        "{} spans arrived after the collector started",
        got.len()
    );
    let s = summary(&traced.finish()?)?;
    check_accounting(&s, receiver.span_count())?;
    ensure!(s.dropped == 0, "{s:?}");
    Ok(())
}

#[test]
fn collector_killed_mid_run_and_restarted() -> Result<()> {
    if !privileged_or_skip("collector_killed_mid_run_and_restarted") {
        return Ok(());
    }
    let rt = runtime()?;
    let mut receiver = receiver(&rt, Protocol::Grpc)?;
    let endpoint = receiver.endpoint();
    let traced = trace_backend(
        &[
            "--max-queue-size",
            "20",
            "--max-export-batch-size",
            "5",
            "--schedule-delay",
            "50ms",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    )?;
    traced.drive(10)?;
    ensure!(
        rt.block_on(receiver.wait_until(Duration::from_secs(15), |r| r.span_count() == 10)),
        "first spans did not arrive"
    );
    rt.block_on(receiver.kill());
    traced.drive(200)?;
    // Long enough for the linker to release every span (queue overflows meanwhile), short of
    // the 30 s retry budget of the batch in flight.
    std::thread::sleep(Duration::from_secs(5));
    rt.block_on(receiver.restart())?;
    let queued_arrived =
        rt.block_on(receiver.wait_until(Duration::from_secs(20), |r| r.span_count() >= 10 + 20));
    let s = summary(&traced.finish()?)?;
    let received = receiver.span_count();
    eprintln!("killed and restarted: {s:?}, received {received}");
    check_accounting(&s, received)?;
    ensure!(
        queued_arrived,
        "the queued spans did not arrive: {received}"
    );
    ensure!(s.spans >= 210, "{s:?}");
    ensure!(
        s.queue > 0,
        "nothing dropped although 200 spans met a queue of 20: {s:?}"
    );
    Ok(())
}

#[test]
fn slow_and_erroring_collector_never_stalls_capture() -> Result<()> {
    if !privileged_or_skip("slow_and_erroring_collector_never_stalls_capture") {
        return Ok(());
    }
    let rt = runtime()?;
    for (protocol, slow) in [(Protocol::Http, true), (Protocol::Grpc, false)] {
        let receiver = receiver(&rt, protocol)?;
        if slow {
            receiver.set_delay(Duration::from_secs(5));
        } else {
            receiver.fail_next(usize::MAX, tonic::Code::Unavailable);
        }
        let endpoint = receiver.endpoint();
        let proto = match protocol {
            Protocol::Http => "http/protobuf",
            Protocol::Grpc => "grpc",
        };
        let traced = trace_backend(
            &["--otlp-timeout", "300ms", "--max-queue-size", "100"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", proto),
            ],
        )?;
        let started = Instant::now();
        let mut max_rss = 0;
        for _ in 0..4 {
            traced.drive(75)?;
            max_rss = max_rss.max(traced.rss_kib().unwrap_or(0));
        }
        let drive_time = started.elapsed();
        let s = summary(&traced.finish()?)?;
        let received = receiver.span_count();
        let calls = receiver.calls().len();
        eprintln!(
            "{proto} {}: {s:?}, {calls} calls, max RSS {max_rss} KiB, 300 requests in {drive_time:?}",
            if slow { "slow" } else { "erroring" }
        );
        check_accounting(&s, received)?;
        ensure!(s.spans >= 300, "capture stalled: {s:?}");
        ensure!(calls >= 2, "no retries seen by the collector: {calls}");
        ensure!(s.dropped > 0, "{s:?}");
        ensure!(max_rss > 0 && max_rss < 200 * 1024, "RSS {max_rss} KiB");
    }
    Ok(())
}

fn assert_usage_error(env: &[(&str, &str)], args: &[&str], needle: &str) {
    let mut cmd = Command::new(ztrace_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["--pid", &std::process::id().to_string()])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ztrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
}

/// Environment, extra flags, what the error must say.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);

#[test]
fn invalid_settings_name_their_source() {
    let cases: &[Case<'_>] = &[
        (
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            &[],
            "OTEL_EXPORTER_OTLP_PROTOCOL: `http/json`",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "10s")],
            &[],
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: `10s`",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
            &[],
            "OTEL_EXPORTER_OTLP_HEADERS: `novalue` is not key=value",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")],
            &[],
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            &[],
            "OTEL_TRACES_SAMPLER_ARG: `2`",
        ),
        (
            &[("OTEL_TRACES_SAMPLER", "sometimes")],
            &[],
            "OTEL_TRACES_SAMPLER: `sometimes`",
        ),
        (
            &[("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")],
            &[],
            "OTEL_RESOURCE_ATTRIBUTES",
        ),
        (
            &[("OTEL_METRIC_EXPORT_INTERVAL", "-1")],
            &[],
            "OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")],
            &[],
            "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ok:4317")],
            &["--otlp-compression", "lz4"],
            "--otlp-compression: `lz4`",
        ),
        (
            &[],
            &["--config", "/nonexistent/ztrace.toml"],
            "--config: cannot read",
        ),
    ];
    for (env, args, needle) in cases {
        assert_usage_error(env, args, needle);
    }
    // A typo in a config file is named with the file.
    let dir = ztrace_e2e::temp::TempDir::new("badcfg").expect("temp dir");
    let file = dir.join("ztrace.toml");
    std::fs::write(&file, "[otlp]\nendpont = \"http://x:1\"\n").expect("write");
    assert_usage_error(
        &[],
        &["--config", &file.to_string_lossy()],
        "unknown key `otlp.endpont`",
    );
}
