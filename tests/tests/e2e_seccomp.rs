//! The seccomp allow-list, as root with real probes: once started, every thread of ztrace runs
//! under the filter (`Seccomp: 2` in /proc), and the riskiest path after it still works — a
//! process that starts later and uses OpenSSL (`openssl s_client`) gets uprobes put on its libssl
//! (perf_event_open, BPF links, /proc/PID/map_files, the ELF read), and its HTTPS exchange
//! reaches the OTLP receiver over TLS. `--no-seccomp` leaves the filter off; `ztrace check` says which.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use ztrace_e2e::{
    harness::{Proc, privileged_or_skip, spawn_https_server, spawn_ztrace, stop_ztrace},
    receiver::{Options, Receiver, test_certificates},
};

/// `Seccomp:` and `Seccomp_filters:` of each thread of `pid`.
fn seccomp_of_threads(pid: u32) -> Result<Vec<(String, u32, u32)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("status");
        let status = std::fs::read_to_string(&path)?;
        let field = |name: &str| -> Result<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{}: no {name}", path.display()))
        };
        out.push((
            path.display().to_string(),
            field("Seccomp:")?,
            field("Seccomp_filters:")?,
        ));
    }
    Ok(out)
}

#[test]
fn under_the_filter_a_later_tls_process_is_still_traced() -> Result<()> {
    if !privileged_or_skip("under_the_filter_a_later_tls_process_is_still_traced") {
        return Ok(());
    }
    let dir = ztrace_e2e::temp::TempDir::new("seccomp")?;
    // The server is not traced; the client is `openssl s_client` (linked to libssl), which the
    // traced shell starts after ztrace is up: inspecting it and putting uprobes on its libssl
    // happen under the filter. It writes its request two seconds after the handshake, once the
    // probes are on (probing follows an exec by a few milliseconds: curl would be done).
    let (_server, port, _cert) = spawn_https_server(&dir)?;
    let script = format!(
        "sleep 3; (sleep 2; printf 'GET /after-seccomp HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nConnection: close\\r\\n\\r\\n') \
         | openssl s_client -quiet -ign_eof -connect 127.0.0.1:{port} >/dev/null 2>&1; true"
    );
    let mut shell = Proc::new(Command::new("bash").args(["-c", &script]).spawn()?);
    // Export over TLS (rustls, the CA file read after the filter is on).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tls = test_certificates(&dir.join("tls"))?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem)?;
    let receiver = rt.block_on(Receiver::start_with(Options {
        tls: Some(tls),
        ..Options::default()
    }))?;
    ensure!(receiver.endpoint().starts_with("https://"));
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        shell.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        "--otlp-certificate".into(),
        ca.display().to_string(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    ensure!(
        ztrace.stderr_text().contains("seccomp: allow-list of "),
        "no seccomp line in the log:\n{}",
        ztrace.stderr_text()
    );
    let threads = seccomp_of_threads(ztrace.pid())?;
    ensure!(threads.len() >= 3, "ztrace runs {} threads", threads.len());
    for (path, mode, filters) in &threads {
        ensure!(*mode == 2, "{path}: Seccomp: {mode}, want 2 (filter)");
        ensure!(*filters >= 1, "{path}: Seccomp_filters: {filters}");
    }
    let code = shell.wait_exit(Duration::from_secs(60));
    ensure!(code == Some(0), "the client script exited with {code:?}");
    ztrace.wait_stderr("TLS: probing OpenSSL in", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    // Threads started later (tokio's blocking pool, the TLS inspector) have the filter too.
    for (path, mode, _) in seccomp_of_threads(ztrace.pid())? {
        ensure!(mode == 2, "{path}: Seccomp: {mode} after tracing");
    }
    stop_ztrace(&mut ztrace)?;
    let log = ztrace.stderr_text();
    let spans = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(10)));
    ztrace_e2e::harness::https_client_span(&spans, "/after-seccomp", &log)?;
    ensure!(
        !log.contains("Operation not permitted"),
        "a call the filter refused:\n{log}"
    );
    Ok(())
}

#[test]
fn no_seccomp_leaves_the_filter_off_and_check_says_so() -> Result<()> {
    if !privileged_or_skip("no_seccomp_leaves_the_filter_off_and_check_says_so") {
        return Ok(());
    }
    let check = |extra: &[&str]| -> Result<String> {
        let out = Command::new(ztrace_e2e::harness::ztrace_bin())
            .arg("check")
            .args(extra)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let on = check(&[])?;
    ensure!(on.contains("seccomp: allow-list of "), "{on}");
    let off = check(&["--no-seccomp"])?;
    ensure!(off.contains("seccomp: off"), "{off}");
    let sleeper = Proc::new(Command::new("sleep").arg("60").spawn()?);
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        sleeper.pid().to_string(),
        "--no-seccomp".into(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    for (path, mode, _) in seccomp_of_threads(ztrace.pid())? {
        ensure!(mode == 0, "{path}: Seccomp: {mode} with --no-seccomp");
    }
    ensure!(ztrace.stderr_text().contains("seccomp: off"));
    stop_ztrace(&mut ztrace)?;
    Ok(())
}
