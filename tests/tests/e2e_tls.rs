//! TLS end to end, as root: an HTTPS server (Python's ssl module → OpenSSL's SSL_read_ex /
//! SSL_write_ex) and curl (→ SSL_read / SSL_write), both traced. The plaintext comes from uprobes
//! on the libssl each process maps, so HTTPS spans look like HTTP ones with `url.scheme` https.
//! A process with a TLS stack ztrace cannot probe is reported, not skipped silently.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ztrace_e2e::harness::{
    Proc, apps_dir, privileged_or_skip, runtime_with_receiver, self_signed, spawn_app,
    spawn_https_server, spawn_ztrace, trace_server_and_clients,
};

#[test]
fn https_traffic_becomes_spans_through_openssl_uprobes() -> Result<()> {
    if !privileged_or_skip("https_traffic_becomes_spans_through_openssl_uprobes") {
        return Ok(());
    }
    let dir = ztrace_e2e::temp::TempDir::new("tls")?;
    let (server, port, _cert) = spawn_https_server(&dir)?;
    let (rt, receiver) = runtime_with_receiver()?;
    let script = format!(
        "sleep 3; curl -sk https://127.0.0.1:{port}/a https://127.0.0.1:{port}/b >/dev/null"
    );
    let spans = trace_server_and_clients(&rt, &receiver, server.pid(), &script, &[], 4)?;

    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Server as i32)
        .collect();
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Client as i32)
        .collect();
    for path in ["/a", "/b"] {
        let s = servers
            .iter()
            .find(|s| s.attr_str("url.path").as_deref() == Some(path))
            .with_context(|| {
                format!(
                    "no HTTPS server span for {path} among {} spans",
                    spans.len()
                )
            })?;
        ensure!(
            s.attr_str("url.scheme").as_deref() == Some("https"),
            "scheme {:?}",
            s.attr_str("url.scheme")
        );
        ensure!(s.attr_int("http.response.status_code") == Some(200));
        let c = clients
            .iter()
            .find(|c| c.attr_str("url.full").is_some_and(|u| u.ends_with(path)))
            .with_context(|| format!("no HTTPS client span for {path}"))?;
        ensure!(
            c.attr_str("url.full")
                .is_some_and(|u| u.starts_with("https://")),
            "{:?}",
            c.attr_str("url.full")
        );
        ensure!(c.attr_int("http.response.status_code") == Some(200));
        ensure!(c.resource_str("process.executable.name").as_deref() == Some("curl"));
    }
    Ok(())
}

#[test]
fn tls_stacks_that_cannot_be_probed_are_reported() -> Result<()> {
    if !privileged_or_skip("tls_stacks_that_cannot_be_probed_are_reported") {
        return Ok(());
    }
    // An executable carrying Go's crypto/tls marker and no libssl: a stand-in for a Go service.
    let dir = ztrace_e2e::temp::TempDir::new("gotls")?;
    let exe = dir.join("gotls");
    let mut bytes = std::fs::read("/bin/sleep")?;
    bytes.extend_from_slice(b"\0crypto/tls.(*Conn).Read\0");
    std::fs::write(&exe, bytes)?;
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let child = Command::new(&exe).arg("30").spawn()?;
    let child = Proc::new(child);
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        child.pid().to_string(),
        "--duration".into(),
        "2s".into(),
    ])?;
    let code = ztrace.wait_exit(Duration::from_secs(60));
    let stderr = ztrace.stderr_text();
    ensure!(code == Some(0), "{stderr}");
    ensure!(
        stderr.contains("uses Go crypto/tls, which ztrace cannot decode"),
        "{stderr}"
    );
    Ok(())
}

/// A client that loads OpenSSL after it started — Python imports `ssl` when the program asks
/// for it, well after the exec where ztrace first looks at the process — is probed once it
/// starts a TLS handshake: its later HTTPS requests are CLIENT spans with the https scheme. The
/// server is Node.js, whose OpenSSL is its own executable: nothing else probes the client's
/// libssl first.
#[test]
fn openssl_loaded_after_start_is_probed_at_the_first_handshake() -> Result<()> {
    if !privileged_or_skip("openssl_loaded_after_start_is_probed_at_the_first_handshake") {
        return Ok(());
    }
    let dir = ztrace_e2e::temp::TempDir::new("tls-late")?;
    let (cert, key) = self_signed(&dir)?;
    let mut node = Command::new("node");
    node.arg(apps_dir().join("https_node.js"))
        .arg("server")
        .arg(&cert)
        .arg(&key);
    let (server, port) = spawn_app(node).context("the Node.js HTTPS server")?;
    let (rt, receiver) = runtime_with_receiver()?;
    // The Node.js server answers /item/N with status 210 + N % 40.
    let client = format!(
        r#"
import time
time.sleep(1)
import http.client, ssl
ctx = ssl._create_unverified_context()
def get(n):
    c = http.client.HTTPSConnection("127.0.0.1", {port}, context=ctx)
    c.request("GET", "/item/%d" % n)
    r = c.getresponse()
    r.read()
    assert r.status == 210 + n % 40, r.status
    c.close()
get(1)
time.sleep(1)
get(2)
get(3)
"#
    );
    let script = format!("sleep 3; python3 -c '{}'", client.replace('\'', "'\\''"));
    let spans = trace_server_and_clients(&rt, &receiver, server.pid(), &script, &[], 4)?;
    for n in [2, 3] {
        let path = format!("/item/{n}");
        let c = spans
            .iter()
            .find(|c| {
                c.span.kind == SpanKind::Client as i32
                    && c.attr_str("url.full").is_some_and(|u| u.ends_with(&path))
            })
            .with_context(|| {
                format!(
                    "no client span for {path} among {} spans: {:?}",
                    spans.len(),
                    spans
                        .iter()
                        .map(|s| (s.span.kind, s.attr_str("url.full"), s.attr_str("url.path")))
                        .collect::<Vec<_>>()
                )
            })?;
        ensure!(
            c.attr_str("url.full")
                .is_some_and(|u| u.starts_with("https://")),
            "{:?}",
            c.attr_str("url.full")
        );
        ensure!(c.attr_int("http.response.status_code") == Some(210 + n));
        ensure!(
            c.resource_str("process.executable.name")
                .is_some_and(|e| e.starts_with("python3")),
            "{:?}",
            c.resource_str("process.executable.name")
        );
    }
    Ok(())
}

/// Runs `openssl s_client` to 127.0.0.1:argv[1] held at its exec (PTRACE_TRACEME: stopped before
/// the dynamic loader maps libssl) for 1.5 s, then lets it go; it writes its request two seconds
/// after the handshake.
const HELD_AT_EXEC: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_TRACEME, PTRACE_DETACH = 0, 17
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(r, 0)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    libc.ptrace(PTRACE_TRACEME, 0, None, None)
    os.execvp("openssl", ["openssl", "s_client", "-quiet", "-ign_eof", "-connect", "127.0.0.1:" + sys.argv[1]])
os.close(r)
_, status = os.waitpid(pid, 0)
assert os.WIFSTOPPED(status), status
time.sleep(1.5)
assert libc.ptrace(PTRACE_DETACH, pid, None, 0) == 0, ctypes.get_errno()
time.sleep(2)
os.write(w, b"GET /after-the-loader HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
_, status = os.waitpid(pid, 0)
"#;

/// A program linked to libssl carries OpenSSL's version strings in its own executable too
/// (`openssl`, `curl`). Inspected right at its exec — before the dynamic loader maps libssl,
/// which this test makes certain by holding `openssl s_client` at its exec — it must not be
/// taken for a statically linked OpenSSL that can never be probed: its handshake asks again,
/// its libssl is probed, and its request becomes an HTTPS CLIENT span. The server is not traced,
/// so nothing else probes that libssl first.
#[test]
fn a_program_inspected_before_its_loader_mapped_libssl_is_probed_at_its_handshake() -> Result<()> {
    if !privileged_or_skip(
        "a_program_inspected_before_its_loader_mapped_libssl_is_probed_at_its_handshake",
    ) {
        return Ok(());
    }
    let dir = ztrace_e2e::temp::TempDir::new("tls-held")?;
    let (_server, port, _cert) = spawn_https_server(&dir)?;
    let (rt, receiver) = runtime_with_receiver()?;
    let script = format!(
        "sleep 3; python3 -c '{}' {port}",
        HELD_AT_EXEC.replace('\'', "'\\''")
    );
    let mut shell = Proc::new(Command::new("bash").args(["-c", &script]).spawn()?);
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        shell.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let code = shell.wait_exit(Duration::from_secs(60));
    ensure!(code == Some(0), "the client script exited with {code:?}");
    std::thread::sleep(Duration::from_millis(500));
    ztrace_e2e::harness::stop_ztrace(&mut ztrace)?;
    let log = ztrace.stderr_text();
    let spans = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(10)));
    ztrace_e2e::harness::https_client_span(&spans, "/after-the-loader", &log)?;
    ensure!(
        !log.contains("statically linked"),
        "openssl taken for a static OpenSSL:\n{log}"
    );
    Ok(())
}
