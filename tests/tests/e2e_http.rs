//! End to end, as root on the real kernel: two uninstrumented Python services (a frontend that
//! calls a backend for every request), ztrace attached by PID exporting OTLP/gRPC to a receiver in
//! this process, curl driving keep-alive and concurrent traffic. Asserts the spans, their
//! attributes, timing and the three kinds of causal links.

use std::{collections::HashMap, thread, time::Duration};

use anyhow::{Result, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::{
    harness::{
        curl, ensure_proxied_client, privileged_or_skip, spawn_service, spawn_ztrace, stop_ztrace,
        trace_behind_a_balancer,
    },
    receiver::{ReceivedSpan, Receiver},
};

const TRACEPARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT_SPAN: &str = "00f067aa0ba902b7";
const CONCURRENT_CLIENTS: usize = 8;
const REQUESTS_PER_CLIENT: usize = 4;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn two_tier_http_spans_are_linked() -> Result<()> {
    if !privileged_or_skip("two_tier_http_spans_are_linked") {
        return Ok(());
    }
    let stderr = two_tier(
        &["--probe-stats"],
        "socket data from socket-layer tracepoints",
    )?;
    // `--probe-stats`: the kernel measured both socket-layer probes, and ztrace reported them.
    probes_ran(&stderr, &["sock_send", "sock_recv"])
}

/// `--socket-probes raw` (what an operator uses around a verifier problem with the BTF-typed
/// pair, and what `auto` falls back to): the raw-tracepoint programs alone capture, and give the
/// same spans and links.
#[test]
fn two_tier_http_spans_are_linked_via_raw_socket_probes() -> Result<()> {
    if !privileged_or_skip("two_tier_http_spans_are_linked_via_raw_socket_probes") {
        return Ok(());
    }
    let stderr = two_tier(
        &["--socket-probes", "raw", "--probe-stats"],
        "socket data from socket-layer tracepoints (raw)",
    )?;
    probes_ran(&stderr, &["sock_send_raw", "sock_recv_raw"])?;
    for typed in ["sock_send", "sock_recv"] {
        ensure!(
            !stderr.contains(&format!("probe cost: {typed} ran ")),
            "the typed {typed} ran with --socket-probes raw:\n{stderr}"
        );
    }
    Ok(())
}

/// Each of `probes` ran once per request or more (`--probe-stats`' report on exit).
fn probes_ran(stderr: &str, probes: &[&str]) -> Result<()> {
    for probe in probes {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("probe cost: {probe} ran ")))
            .ok_or_else(|| anyhow::anyhow!("no cost reported for {probe}:\n{stderr}"))?;
        let runs: u64 = line
            .split(" ran ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        ensure!(
            runs >= 40,
            "{probe} ran {runs} times for 40+ requests: {line}"
        );
    }
    Ok(())
}

/// The fallback capture path (kernels without the socket-layer tracepoints) gives the same
/// spans and links.
#[test]
fn two_tier_http_spans_are_linked_via_syscall_tracepoints() -> Result<()> {
    if !privileged_or_skip("two_tier_http_spans_are_linked_via_syscall_tracepoints") {
        return Ok(());
    }
    two_tier(
        &["--capture-via-syscalls"],
        "socket data from syscall tracepoints",
    )
    .map(drop)
}

/// Returns ztrace's stderr.
fn two_tier(extra_args: &[&str], capture: &str) -> Result<String> {
    let rt = runtime();
    let receiver = rt.block_on(Receiver::start())?;
    let (backend, backend_port) = spawn_service(&["backend"])?;
    let (frontend, front_port) = spawn_service(&["frontend", &backend_port.to_string()])?;
    let mut args = vec![
        "--pid".into(),
        format!("{},{}", frontend.pid(), backend.pid()),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let mut ztrace = spawn_ztrace(&args)?;
    ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
    ensure!(
        ztrace.stderr_text().contains(capture),
        "expected {capture}:\n{}",
        ztrace.stderr_text()
    );
    let traffic_start = std::time::Instant::now();

    let base = format!("http://127.0.0.1:{front_port}");
    // Keep-alive: three requests on one connection.
    let body = curl(&[
        format!("{base}/api/k1"),
        format!("{base}/api/k2"),
        format!("{base}/api/k3"),
    ])?;
    ensure!(
        body.contains("\"item\": \"k3\""),
        "frontend answered {body}"
    );
    // Incoming W3C context.
    curl(&[
        "-H".into(),
        format!("traceparent: 00-{TRACEPARENT_TRACE}-{TRACEPARENT_SPAN}-01"),
        format!("{base}/api/ctx"),
    ])?;
    // A request body larger than the capture cap, and an upstream failure.
    curl(&[
        "--data-binary".into(),
        "x".repeat(10_000),
        format!("{base}/api/echo"),
    ])?;
    curl(&[format!("{base}/api/fail")])?;
    // Concurrent keep-alive clients.
    let clients: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|c| {
            let urls: Vec<String> = (0..REQUESTS_PER_CLIENT)
                .map(|r| format!("{base}/api/c{c}r{r}"))
                .collect();
            thread::spawn(move || curl(&urls))
        })
        .collect();
    for c in clients {
        c.join().expect("client thread")?;
    }
    let expected = 3 + 1 + 1 + 1 + CONCURRENT_CLIENTS * REQUESTS_PER_CLIENT;
    // Every exchange must have reached the collector by the time ztrace exits.
    thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(3 * expected, Duration::from_secs(10)));
    let stderr = ztrace.stderr_text();
    eprintln!("ztrace stderr:\n{stderr}");
    // What the closing notes quote: events seen per second of traffic, and losses.
    if let Some(summary) = stderr.lines().find(|l| l.contains("summary:")) {
        let events: f64 = summary
            .split("summary: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let secs = traffic_start.elapsed().as_secs_f64();
        eprintln!(
            "e2e: {events} kernel events over {secs:.1}s of traffic ({:.0} events/s); {summary}",
            events / secs
        );
    }

    let pid = |s: &ReceivedSpan| s.resource_int("process.pid").unwrap_or(-1) as u32;
    let kind = |s: &ReceivedSpan| s.span.kind;
    let front_server: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) == frontend.pid() && kind(s) == SpanKind::Server as i32)
        .collect();
    let front_client: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) == frontend.pid() && kind(s) == SpanKind::Client as i32)
        .collect();
    let back_server: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| pid(s) == backend.pid() && kind(s) == SpanKind::Server as i32)
        .collect();
    ensure!(
        front_server.len() == expected
            && front_client.len() == expected
            && back_server.len() == expected,
        "expected {expected} spans of each kind, got frontend SERVER {}, frontend CLIENT {}, backend SERVER {} ({} in all)",
        front_server.len(),
        front_client.len(),
        back_server.len(),
        spans.len()
    );

    // Well-formed: unique span ids, sane times.
    let by_id: HashMap<Vec<u8>, &ReceivedSpan> =
        spans.iter().map(|s| (s.span.span_id.clone(), s)).collect();
    ensure!(by_id.len() == spans.len(), "duplicate span ids");
    for s in &spans {
        ensure!(
            s.span.trace_id.len() == 16 && s.span.span_id.len() == 8,
            "bad ids"
        );
        ensure!(
            s.span.end_time_unix_nano >= s.span.start_time_unix_nano,
            "span ends before it starts"
        );
    }

    // Links: backend SERVER ← frontend CLIENT (cross-process), frontend CLIENT ← frontend SERVER (thread).
    let parent_of =
        |child: &ReceivedSpan, want_pid: u32, want_kind: SpanKind| -> Result<ReceivedSpan> {
            let parent = by_id.get(&child.span.parent_span_id).copied();
            let Some(parent) = parent else {
                anyhow::bail!(
                    "span {} ({} {:?}) has no exported parent (parent id {})",
                    hex(&child.span.span_id),
                    child.span.name,
                    child.attr_str("url.path").or(child.attr_str("url.full")),
                    hex(&child.span.parent_span_id)
                );
            };
            ensure!(
                pid(parent) == want_pid && kind(parent) == want_kind as i32,
                "parent has the wrong kind/process"
            );
            ensure!(
                parent.span.trace_id == child.span.trace_id,
                "child in another trace than its parent"
            );
            ensure!(
                parent.span.start_time_unix_nano <= child.span.start_time_unix_nano
                    && child.span.end_time_unix_nano <= parent.span.end_time_unix_nano,
                "child [{}, {}] not inside parent [{}, {}]",
                child.span.start_time_unix_nano,
                child.span.end_time_unix_nano,
                parent.span.start_time_unix_nano,
                parent.span.end_time_unix_nano
            );
            Ok(parent.clone())
        };
    for b in &back_server {
        let client = parent_of(b, frontend.pid(), SpanKind::Client)?;
        // The backend saw the same request the frontend sent.
        let item = b.attr_str("url.path").unwrap_or_default();
        ensure!(
            client
                .attr_str("url.full")
                .is_some_and(|u| u.ends_with(&item)),
            "backend {item} linked to client {:?}",
            client.attr_str("url.full")
        );
        let server = parent_of(&client, frontend.pid(), SpanKind::Server)?;
        let front_path = server.attr_str("url.path").unwrap_or_default();
        let want = match front_path.as_str() {
            "/api/fail" => "/fail".to_string(),
            "/api/echo" => "/echo".to_string(),
            p => format!("/item/{}", p.rsplit('/').next().unwrap_or_default()),
        };
        ensure!(
            item == want,
            "frontend {front_path} linked to backend {item}"
        );
    }
    for s in &front_server {
        let path = s.attr_str("url.path").unwrap_or_default();
        if path == "/api/ctx" {
            ensure!(
                hex(&s.span.trace_id) == TRACEPARENT_TRACE,
                "traceparent trace id not honoured"
            );
            ensure!(
                hex(&s.span.parent_span_id) == TRACEPARENT_SPAN,
                "traceparent parent not honoured"
            );
            ensure!(
                s.span.flags & 0x300 == 0x300,
                "remote parent not flagged: flags {:#x}",
                s.span.flags
            );
        } else {
            ensure!(
                s.span.parent_span_id.is_empty(),
                "frontend span {path} has a parent"
            );
        }
    }
    let ctx_trace: Vec<_> = spans
        .iter()
        .filter(|s| hex(&s.span.trace_id) == TRACEPARENT_TRACE)
        .collect();
    ensure!(
        ctx_trace.len() == 3,
        "traceparent trace has {} spans, want 3",
        ctx_trace.len()
    );

    // Attributes and resources.
    let k1 = front_server
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/api/k1"))
        .expect("span for /api/k1");
    ensure!(k1.span.name == "GET", "name {}", k1.span.name);
    ensure!(k1.attr_str("http.request.method").as_deref() == Some("GET"));
    ensure!(k1.attr_int("http.response.status_code") == Some(200));
    ensure!(k1.attr_str("network.protocol.version").as_deref() == Some("1.1"));
    ensure!(k1.attr_int("server.port") == Some(front_port as i64));
    ensure!(k1.attr_str("client.address").as_deref() == Some("127.0.0.1"));
    ensure!(
        k1.attr_int("network.peer.port")
            .is_some_and(|p| p > 0 && p != front_port as i64)
    );
    ensure!(k1.resource_str("telemetry.sdk.name").as_deref() == Some("ztrace"));
    ensure!(
        k1.resource_str("process.executable.name")
            .is_some_and(|n| n.starts_with("python3"))
    );
    // The script the interpreter runs names the service, not the interpreter.
    ensure!(k1.resource_str("service.name").as_deref() == Some("two_tier"));
    ensure!(k1.resource_str("process.runtime.name").as_deref() == Some("CPython"));
    ensure!(k1.resource_str("host.name").is_some_and(|n| !n.is_empty()));
    let client_k1 = front_client
        .iter()
        .find(|s| {
            s.attr_str("url.full")
                .is_some_and(|u| u.ends_with("/item/k1"))
        })
        .expect("client span for /item/k1");
    ensure!(client_k1.attr_int("server.port") == Some(backend_port as i64));
    ensure!(client_k1.attr_int("http.response.status_code") == Some(200));

    let echo = front_server
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/api/echo"))
        .expect("span for /api/echo");
    ensure!(echo.span.name == "POST");
    ensure!(echo.attr_int("http.request.body.size") == Some(10_000));

    let error = |s: &ReceivedSpan| {
        s.span.status.as_ref().map(|st| st.code) == Some(StatusCode::Error as i32)
    };
    let fail_back = back_server
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/fail"))
        .expect("backend /fail span");
    ensure!(fail_back.attr_int("http.response.status_code") == Some(500) && error(fail_back));
    let fail_front = front_server
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/api/fail"))
        .expect("frontend /api/fail span");
    ensure!(fail_front.attr_int("http.response.status_code") == Some(502) && error(fail_front));
    ensure!(!error(k1), "a 200 must not be an error");

    ensure!(stderr.contains("summary:"), "no exit summary");
    ensure!(stderr.contains("(0 lost"), "kernel events lost: {stderr}");
    Ok(stderr)
}

#[test]
fn follows_children_and_exits_when_all_traced_processes_are_gone() -> Result<()> {
    if !privileged_or_skip("follows_children_and_exits_when_all_traced_processes_are_gone") {
        return Ok(());
    }
    let rt = runtime();
    let receiver = rt.block_on(Receiver::start())?;
    // A shell that starts the service only after ztrace is attached: a future child.
    let script = format!(
        "sleep 2; python3 {} backend; true",
        ztrace_e2e::harness::apps_dir()
            .join("two_tier.py")
            .display()
    );
    let mut parent = std::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let parent_pid = parent.id();
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        parent_pid.to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    // The shell and its `sleep` (an existing descendant) are traced from the start.
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().expect("stdout")),
        &mut line,
    )?;
    let port: u16 = line.trim().trim_start_matches("PORT ").parse()?;
    curl(&[format!("http://127.0.0.1:{port}/item/child")])?;
    ztrace.wait_stderr("following new child process", Duration::from_secs(10))?;
    // Kill the service and the shell: ztrace must notice and exit by itself.
    let child_pids =
        std::fs::read_to_string(format!("/proc/{parent_pid}/task/{parent_pid}/children"))
            .unwrap_or_default();
    for pid in child_pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) of processes this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = parent.kill();
    let _ = parent.wait();
    let code = ztrace.wait_exit(Duration::from_secs(30));
    ensure!(
        code == Some(0),
        "ztrace exit {code:?}; stderr:\n{}",
        ztrace.stderr_text()
    );
    ensure!(
        ztrace
            .stderr_text()
            .contains("every traced process has exited")
    );
    let spans = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(5)));
    let span = spans
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/item/child"))
        .ok_or_else(|| anyhow::anyhow!("no span from the child process; got {}", spans.len()))?;
    let child_pid = span.resource_int("process.pid").unwrap_or_default() as u32;
    ensure!(
        child_pid != parent_pid,
        "span attributed to the shell, not its child"
    );
    Ok(())
}

#[test]
fn ipv6_loopback_spans_as_json_lines_without_a_collector() -> Result<()> {
    if !privileged_or_skip("ipv6_loopback_spans_as_json_lines_without_a_collector") {
        return Ok(());
    }
    let (backend, port) = ztrace_e2e::harness::spawn_service_on("::1", &["backend"])?;
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        backend.pid().to_string(),
        "--output".into(),
        "json".into(),
        "--service-name".into(),
        "inventory".into(),
    ])?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    curl(&["-g".into(), format!("http://[::1]:{port}/item/v6")])?;
    thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let stdout = ztrace.stdout_text();
    let spans: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("stdout is not JSON lines ({e}):\n{stdout}"))?;
    ensure!(spans.len() == 1, "want 1 span, got:\n{stdout}");
    let span = &spans[0];
    let attr = |k: &str| span["attributes"][k].clone();
    ensure!(
        span["kind"] == "SERVER" && span["service_name"] == "inventory",
        "{span}"
    );
    ensure!(attr("url.path") == "/item/v6", "{span}");
    ensure!(
        attr("client.address") == "::1" && attr("network.type") == "ipv6",
        "{span}"
    );
    ensure!(attr("server.port") == port, "{span}");
    Ok(())
}

/// A client that writes its request a few bytes at a time (an unbuffered `write!`, here Python
/// with TCP_NODELAY and pauses so every piece is its own write and read): both its CLIENT span
/// and the backend's SERVER span have the request's path, and the server span is the client
/// span's child by TCP sequence number — so both sides counted the request from its first
/// piece.
#[test]
fn a_request_written_in_pieces_is_traced_on_both_sides() -> Result<()> {
    if !privileged_or_skip("a_request_written_in_pieces_is_traced_on_both_sides") {
        return Ok(());
    }
    let rt = runtime();
    let receiver = rt.block_on(Receiver::start())?;
    let (backend, port) = ztrace_e2e::harness::spawn_service_on("127.0.0.1", &["backend"])?;
    let client = format!(
        r#"
import socket, time
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for piece in [b"GE", b"T /item/pie", b"ces HTTP", b"/1.1\r\nHost: x\r\n", b"Connection: close\r\n\r\n"]:
    s.sendall(piece)
    time.sleep(0.05)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
assert data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n")[0], data[:80]
"#
    );
    let script = format!("sleep 3; python3 -c '{}'", client.replace('\'', "'\\''"));
    let spans = ztrace_e2e::harness::trace_server_and_clients(
        &rt,
        &receiver,
        backend.pid(),
        &script,
        &[],
        2,
    )?;
    // A server span says `url.path`, a client span `url.full`.
    let with_path: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.attr_str("url.path").as_deref() == Some("/item/pieces")
                || s.attr_str("url.full")
                    .is_some_and(|u| u.ends_with("/item/pieces"))
        })
        .collect();
    let of = |kind: SpanKind| with_path.iter().find(|s| s.span.kind == kind as i32);
    let (Some(c), Some(srv)) = (of(SpanKind::Client), of(SpanKind::Server)) else {
        anyhow::bail!("want a CLIENT and a SERVER span of /item/pieces, got: {spans:#?}");
    };
    ensure!(
        srv.parent_span_id_hex() == c.span_id_hex() && srv.trace_id_hex() == c.trace_id_hex(),
        "the server span is not the client span's child: {srv:#?}\n{c:#?}"
    );
    Ok(())
}

/// What nginx behind the balancer answers: the client the PROXY protocol header named
/// (`$proxy_protocol_addr`), so a client knows nginx really parsed it.
const ECHO_CLIENT: &str = r#"return 200 "client $proxy_protocol_addr\n";"#;

/// HTTP/2 (cleartext, prior knowledge) behind a load balancer's PROXY protocol header: nginx
/// with `listen … http2 proxy_protocol` (it answers with `$proxy_protocol_addr`, so it really
/// parsed the header), a Python client writing the header and then its frames by hand: a v1
/// header in the same write as the preface, and a v2 header alone before it. The SERVER span of
/// each request has the header's client as `client.address`/`client.port`.
#[test]
fn http2_behind_a_proxy_protocol_header_is_traced() -> Result<()> {
    if !privileged_or_skip("http2_behind_a_proxy_protocol_header_is_traced") {
        return Ok(());
    }
    let spans = trace_behind_a_balancer("h2", "http2 proxy_protocol", ECHO_CLIENT, &[], 2, "http")?;
    for (path, addr, port) in [
        ("/lb/h2-v1", "203.0.113.7", 51234),
        ("/lb/h2-v2", "203.0.113.8", 51235),
    ] {
        let Some(srv) = spans.iter().find(|s| {
            s.span.kind == SpanKind::Server as i32
                && s.attr_str("url.path").as_deref() == Some(path)
        }) else {
            anyhow::bail!("want a SERVER span of {path}, got: {spans:#?}");
        };
        ensure!(
            srv.attr_int("http.response.status_code") == Some(200)
                && srv.attr_str("network.protocol.version").as_deref() == Some("2"),
            "{path}: {srv:#?}"
        );
        ensure_proxied_client(srv, path, addr, port)?;
    }
    Ok(())
}

/// nginx behind a load balancer (`listen … proxy_protocol`): every connection starts with a
/// PROXY protocol header before its first request. A Python client plays the balancer: one
/// keep-alive connection whose version 1 header is written alone at connect (as HAProxy does)
/// and then two requests, and two connections whose version 2 or version 1 header comes in one
/// write with the request (the previous binary traced neither of those two requests). nginx
/// answers 200 only if it parsed the header (it echoes the header's client address). Every
/// request gets its SERVER span, the client's CLIENT span, and the server span is the client
/// span's child by TCP sequence number: both ends start the request after the header. The
/// server span's `client.*` is the client the header named, `network.peer.*` the balancer.
#[test]
fn requests_behind_a_proxy_protocol_header_are_traced() -> Result<()> {
    if !privileged_or_skip("requests_behind_a_proxy_protocol_header_are_traced") {
        return Ok(());
    }
    let spans = trace_behind_a_balancer("http1", "proxy_protocol", ECHO_CLIENT, &[], 8, "http1")?;
    for path in ["/lb/v1-3", "/lb/v1-1", "/lb/v1-2", "/lb/v2-1"] {
        let of = |kind: SpanKind| {
            spans.iter().find(|s| {
                s.span.kind == kind as i32
                    && (s.attr_str("url.path").as_deref() == Some(path)
                        || s.attr_str("url.full").is_some_and(|u| u.ends_with(path)))
            })
        };
        let (Some(c), Some(srv)) = (of(SpanKind::Client), of(SpanKind::Server)) else {
            anyhow::bail!("want a CLIENT and a SERVER span of {path}, got: {spans:#?}");
        };
        ensure!(
            srv.attr_int("http.response.status_code") == Some(200),
            "{path}: {srv:#?}"
        );
        let port = if path == "/lb/v1-3" { 51235 } else { 51234 };
        ensure_proxied_client(srv, path, "203.0.113.7", port)?;
        ensure!(
            srv.parent_span_id_hex() == c.span_id_hex() && srv.trace_id_hex() == c.trace_id_hex(),
            "{path}: the server span is not the client span's child: {srv:#?}\n{c:#?}"
        );
    }
    Ok(())
}
