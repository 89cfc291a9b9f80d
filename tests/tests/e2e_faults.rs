//! Faults, as root, with real probes:
//! - ztrace killed with SIGKILL (no chance to detach) leaves no BPF program, link or map of its
//!   own in the kernel: every one it held (read from /proc/PID/fdinfo while it ran) is gone from
//!   the kernel's lists (bpftool) soon after;
//! - a traced server killed while a request is in flight: the server's and the client's spans
//!   end with an error, and the connections are forgotten (the exit summary counts none open);
//! - least privilege: once started, every thread of ztrace has only the capabilities it keeps
//!   (no CAP_SETUID, CAP_NET_ADMIN, CAP_SYS_MODULE, …) and no_new_privs, and still makes spans.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use ztrace_e2e::harness::{
    Proc, privileged_or_skip, runtime_with_receiver, spawn_app, spawn_ztrace,
};

/// The BPF objects (programs, links, maps) process `pid` holds, by kind and id.
fn held_bpf_objects(pid: u32) -> Result<BTreeSet<(&'static str, u64)>> {
    let mut held = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(fd?.path()).unwrap_or_default();
        for (field, kind) in [
            ("prog_id:", "prog"),
            ("link_id:", "link"),
            ("map_id:", "map"),
        ] {
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|id| id.trim().parse::<u64>().ok())
            {
                held.insert((kind, id));
            }
        }
    }
    Ok(held)
}

/// Whether the kernel still has BPF object `kind` `id` (bpftool fails for an unknown id).
fn exists(kind: &str, id: u64) -> Result<bool> {
    let out = Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .context("running bpftool (Debian package bpftool)")?;
    Ok(out.status.success())
}

#[test]
fn sigkill_leaves_no_probe_attached() -> Result<()> {
    if !privileged_or_skip("sigkill_leaves_no_probe_attached") {
        return Ok(());
    }
    let shell = Proc::new(Command::new("sleep").arg("120").spawn()?);
    let mut ztrace = spawn_ztrace(&["--pid".into(), shell.pid().to_string()])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let held = held_bpf_objects(ztrace.pid())?;
    let progs = held.iter().filter(|(k, _)| *k == "prog").count();
    let links = held.iter().filter(|(k, _)| *k == "link").count();
    ensure!(
        progs >= 5 && links >= 5,
        "ztrace holds {progs} programs and {links} links: {held:?}"
    );
    for &(kind, id) in &held {
        ensure!(exists(kind, id)?, "bpftool does not list {kind} {id}");
    }
    ztrace.signal(libc::SIGKILL);
    ztrace.wait_exit(Duration::from_secs(10));
    // The kernel frees them once the last reference (the killed process's fds) is gone; that
    // is deferred work, so allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut left = Vec::new();
        for &(kind, id) in &held {
            if exists(kind, id)? {
                left.push(format!("{kind} {id}"));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still in the kernel 15 s after SIGKILL: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Says "HANDLING" on stderr when a request for /slow arrives, then takes 30 s to answer.
const SLOW_SERVER: &str = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            print("HANDLING", file=sys.stderr, flush=True)
            time.sleep(30)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("PORT", s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn a_server_killed_mid_request_ends_its_spans_with_an_error() -> Result<()> {
    if !privileged_or_skip("a_server_killed_mid_request_ends_its_spans_with_an_error") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let (mut server, port) = spawn_app({
        let mut c = Command::new("python3");
        c.args(["-c", SLOW_SERVER]);
        c
    })?;
    let script = format!(
        "sleep 3; curl -s -o /dev/null --max-time 40 http://127.0.0.1:{port}/fast; \
         curl -s -o /dev/null --max-time 40 http://127.0.0.1:{port}/slow; true"
    );
    let mut clients = Proc::new(
        Command::new("bash")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        format!("{},{}", server.pid(), clients.pid()),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    server.wait_stderr("HANDLING", Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    let code = clients.wait_exit(Duration::from_secs(60));
    ensure!(code == Some(0), "client script exited with {code:?}");
    std::thread::sleep(Duration::from_millis(500));
    ztrace.signal(libc::SIGINT);
    ensure!(
        ztrace.wait_exit(Duration::from_secs(30)) == Some(0),
        "{}",
        ztrace.stderr_text()
    );
    let spans = rt.block_on(receiver.wait_for_spans(4, Duration::from_secs(10)));
    let on = |path: &str, kind: SpanKind| {
        spans.iter().find(|s| {
            s.span.kind == kind as i32
                && (s.attr_str("url.path").as_deref() == Some(path)
                    || s.attr_str("url.full")
                        .is_some_and(|u| u.ends_with(&format!(":{port}{path}"))))
        })
    };
    let names: Vec<_> = spans.iter().map(|s| &s.span.name).collect();
    for kind in [SpanKind::Server, SpanKind::Client] {
        let fast = on("/fast", kind).with_context(|| format!("no {kind:?} /fast in {names:?}"))?;
        ensure!(
            fast.attr_int("http.response.status_code") == Some(200),
            "{fast:?}"
        );
        let slow = on("/slow", kind).with_context(|| format!("no {kind:?} /slow in {names:?}"))?;
        let status = slow.span.status.clone().unwrap_or_default();
        ensure!(
            status.code == StatusCode::Error as i32
                && status.message.contains("before the response")
                && slow.attr_int("http.response.status_code").is_none(),
            "{kind:?} /slow: {slow:?}"
        );
    }
    let log = ztrace.stderr_text();
    let summary = log
        .lines()
        .find(|l| l.contains("summary: ") && l.contains("connections still open"))
        .with_context(|| format!("no summary in {log}"))?;
    ensure!(
        summary.contains(" 0 connections still open"),
        "connections left behind: {summary}"
    );
    Ok(())
}

/// CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_NET_BIND_SERVICE, CAP_SYS_PTRACE, CAP_SYS_ADMIN,
/// CAP_SYS_RESOURCE, CAP_PERFMON, CAP_BPF: what ztrace keeps after start-up.
const KEPT_CAPS: u64 = 1 << 1 | 1 << 2 | 1 << 10 | 1 << 19 | 1 << 21 | 1 << 24 | 1 << 38 | 1 << 39;

fn status_hex(path: &std::path::Path, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .with_context(|| format!("{field} in {}", path.display()))
}

#[test]
fn after_start_every_thread_keeps_only_the_needed_capabilities() -> Result<()> {
    if !privileged_or_skip("after_start_every_thread_keeps_only_the_needed_capabilities") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let (server, port) = spawn_app({
        let mut c = Command::new("python3");
        c.args(["-c", SLOW_SERVER]);
        c
    })?;
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        server.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    // ztrace starts with this test's capabilities (a container may lack some it would keep).
    let own = std::path::Path::new("/proc/self/status");
    let want = KEPT_CAPS & status_hex(own, "CapEff:")?;
    ensure!(
        want & (1 << 39 | 1 << 38) != 0,
        "this test runs without CAP_BPF/CAP_PERFMON"
    );
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", ztrace.pid()))? {
        let status = task?.path().join("status");
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let caps = status_hex(&status, field)?;
            ensure!(
                caps == want,
                "{}: {field} {caps:#x}, want {want:#x}",
                status.display()
            );
        }
        ensure!(status_hex(&status, "CapInh:")? == 0 && status_hex(&status, "CapAmb:")? == 0);
        ensure!(
            status_hex(&status, "NoNewPrivs:")? == 1,
            "no_new_privs not set"
        );
        threads += 1;
    }
    ensure!(threads >= 3, "ztrace runs {threads} threads");
    // Still working with what it kept: a request to the traced server becomes a span.
    ztrace_e2e::harness::curl(&[format!("http://127.0.0.1:{port}/fast")])?;
    let spans = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(10)));
    ensure!(!spans.is_empty(), "no span after the privilege drop");
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    drop(server);
    Ok(())
}
