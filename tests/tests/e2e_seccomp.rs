//! The seccomp allow-list, as root with real probes: once started, every thread of ztrace runs
//! under the filter (`Seccomp: 2` in /proc), and the riskiest path after it still works — a
//! process that starts later and uses OpenSSL (`openssl s_client`) gets uprobes put on its libssl
//! (perf_event_open, BPF links, /proc/PID/map_files, the ELF read), and its HTTPS exchange
//! reaches the OTLP receiver over TLS; so does a process with a PID above 65,535 that a selector
//! picks later (a new piece of the traced set mapped under the filter). `--no-seccomp` leaves
//! the filter off; `ztrace check` says which.

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

/// `kernel.pid_max` raised to at least `want` for the life of the value, then put back.
struct PidMax(Option<String>);

impl PidMax {
    const PATH: &str = "/proc/sys/kernel/pid_max";

    fn at_least(want: u32) -> Result<Self> {
        let old = std::fs::read_to_string(Self::PATH).context("reading kernel.pid_max")?;
        if old.trim().parse::<u32>().is_ok_and(|v| v >= want) {
            return Ok(Self(None));
        }
        std::fs::write(Self::PATH, want.to_string()).context("raising kernel.pid_max")?;
        Ok(Self(Some(old)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(Self::PATH, old.trim());
        }
    }
}

/// Hosts with many CPUs, and container hosts, hand out PIDs up to 4,194,304. ztrace maps the
/// kernel's traced set in 64 KiB pieces, each when userspace first writes a TGID in it, so a
/// process with a PID of 65,536 or more that a selector picks after the filter is on makes
/// ztrace map a piece under seccomp: that process is traced and its requests exported.
#[test]
fn under_the_filter_a_later_process_with_a_large_pid_is_traced() -> Result<()> {
    if !privileged_or_skip("under_the_filter_a_later_process_with_a_large_pid_is_traced") {
        return Ok(());
    }
    let _pid_max = PidMax::at_least(1 << 22)?;
    let dir = ztrace_e2e::temp::TempDir::new("bigpid")?;
    let pid_file = dir.join("pid");
    let port = ztrace_e2e::harness::free_port()?;
    // The shell (not traced) waits for ztrace, asks the kernel for PIDs from 100,000 on
    // (others on the machine may take that one first: any PID from there on serves) and
    // starts a server, which the command-line selector picks at its exec by the directory it
    // serves. The shell's own command line spells that name differently (`large${t}…`), so
    // the selector cannot pick the shell.
    let served = format!("largepid{port}");
    std::fs::create_dir(dir.join(&served))?;
    let script = format!(
        "sleep 3; t=pid; echo 99999 > /proc/sys/kernel/ns_last_pid; \
         exec python3 -m http.server {port} --bind 127.0.0.1 --directory {}/large${{t}}{port} \
         >/dev/null 2>&1 & echo $! > {}; wait",
        dir.display(),
        pid_file.display()
    );
    let (rt, receiver) = ztrace_e2e::harness::runtime_with_receiver()?;
    let mut ztrace = spawn_ztrace(&[
        "--cmdline".into(),
        served.clone(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("selecting processes by", Duration::from_secs(60))?;
    ensure!(
        ztrace.stderr_text().contains("seccomp: allow-list of "),
        "the filter is not on before the server starts:\n{}",
        ztrace.stderr_text()
    );
    let pieces_before = bpf_map_mappings(ztrace.pid())?;
    let shell = Proc::new(Command::new("bash").args(["-c", &script]).spawn()?);
    let server = ztrace_e2e::harness::wait_pid_file(&pid_file, "the shell's server")?;
    // Stopped with the test, whatever happens (it is the shell's child, not ours).
    let _server = kill_on_drop(server);
    ensure!(
        server >= 65_536,
        "the server got PID {server}, want ≥ 65,536"
    );
    ztrace.wait_stderr(
        &format!("tracing process {server}: it matches a selector"),
        Duration::from_secs(10),
    )?;
    // The server's byte lies in a piece of the traced set no PID had used: mapped just now,
    // under the filter.
    let pieces_after = bpf_map_mappings(ztrace.pid())?;
    ensure!(
        pieces_after > pieces_before,
        "no new mapping of a BPF map after tracing PID {server} ({pieces_before} before, \
         {pieces_after} after)"
    );
    let url = |i: usize| format!("http://127.0.0.1:{port}/large-pid-{i}");
    let listening = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    ensure!(listening, "the server never listened on port {port}");
    for i in 0..5 {
        ztrace_e2e::harness::curl(&["-o".into(), "/dev/null".into(), url(i)])?;
    }
    for (path, mode, _) in seccomp_of_threads(ztrace.pid())? {
        ensure!(mode == 2, "{path}: Seccomp: {mode}, want 2 (filter)");
    }
    stop_ztrace(&mut ztrace)?;
    let log = ztrace.stderr_text();
    let spans = rt.block_on(receiver.wait_for_spans(5, Duration::from_secs(10)));
    for i in 0..5 {
        let path = format!("/large-pid-{i}");
        let found = spans.iter().any(|s| {
            s.attr_str("url.path").as_deref() == Some(path.as_str())
                && s.resource_int("process.pid") == Some(i64::from(server))
        });
        ensure!(
            found,
            "no span of {path} from the server (PID {server}); ztrace said:\n{log}"
        );
    }
    ensure!(
        !log.contains("Operation not permitted"),
        "a call the filter refused:\n{log}"
    );
    drop(shell);
    Ok(())
}

/// How many mappings of BPF maps `pid` has (the ring buffer's and the traced set's pieces).
fn bpf_map_mappings(pid: u32) -> Result<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps
        .lines()
        .filter(|l| l.ends_with("anon_inode:bpf-map"))
        .count())
}

/// Kills `pid` when dropped.
fn kill_on_drop(pid: u32) -> impl Drop {
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: plain kill(2) of a PID this test started (through its shell).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    Kill(pid)
}
