//! Selectors end to end, as root on the real kernel: processes chosen by what they are, not by
//! PID. `--exe` catches a server started after ztrace; `--port` picks the right one of two
//! servers; a `[[target.select]]` rule with a service name keeps that name across a supervisor's
//! restart of its service (a new PID, traced from its exec); SIGHUP adds a service the file now
//! selects and untraces one it no longer selects (a request in flight on it still completes).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ztrace_e2e::{
    harness::{
        Proc, apps_dir, curl, privileged_or_skip, runtime_with_receiver, spawn_app, spawn_ztrace,
        stop_ztrace,
    },
    kernel::traced_set,
    receiver::ReceivedSpan,
    temp::TempDir,
};

fn server_spans_of(spans: &[ReceivedSpan], pid: u32) -> Vec<&ReceivedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.span.kind == SpanKind::Server as i32
                && s.resource_int("process.pid") == Some(pid as i64)
        })
        .collect()
}

/// A `two_tier.py` backend run from a copy named `{name}_{pid}.py` in `dir`, so that a `cmdline`
/// rule (`cmdline_rule`) selects it alone.
fn named_service(dir: &Path, name: &str) -> Result<(Proc, u16)> {
    let path = dir.join(format!("{name}_{}.py", std::process::id()));
    std::fs::copy(apps_dir().join("two_tier.py"), &path)?;
    let mut cmd = Command::new("python3");
    cmd.arg(path).arg("backend");
    spawn_app(cmd)
}

/// A `[[target.select]]` rule that selects `named_service(_, name)`, named `service` if given.
fn cmdline_rule(name: &str, service: Option<&str>) -> String {
    let named = service.map_or(String::new(), |s| format!("service_name = \"{s}\"\n"));
    format!(
        "[[target.select]]\ncmdline = \"{name}_{}\\\\.py\"\n{named}",
        std::process::id()
    )
}

/// ztrace run with `--config config`, exporting to `endpoint`.
fn ztrace_with_config(config: &Path, endpoint: String) -> Result<Proc> {
    spawn_ztrace(&[
        "--config".into(),
        config.display().to_string(),
        "--otlp-endpoint".into(),
        endpoint,
    ])
}

/// The Python interpreter under a name of its own (a hard link, else a copy), so that an
/// `--exe` glob can select it and nothing else on the machine.
fn renamed_python(dir: &Path) -> Result<PathBuf> {
    // The interpreter itself, not a launcher script (pyenv's `python3` is a shell shim).
    let which = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3 is not on PATH")?;
    let python = std::fs::canonicalize(String::from_utf8_lossy(&which.stdout).trim())?;
    let renamed = dir.join(format!("ztsel-python-{}", std::process::id()));
    let _ = std::fs::remove_file(&renamed);
    if std::fs::hard_link(&python, &renamed).is_err() {
        std::fs::copy(&python, &renamed)?;
    }
    Ok(renamed)
}

#[test]
fn exe_selector_traces_a_process_started_later() -> Result<()> {
    if !privileged_or_skip("exe_selector_traces_a_process_started_later") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("select-exe")?;
    let python = renamed_python(&dir)?;
    let glob = format!("ztsel-python-{}*", std::process::id());
    let mut ztrace = spawn_ztrace(&[
        "--exe".into(),
        glob.clone(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    ensure!(
        ztrace.stderr_text().contains(&format!("--exe {glob}")),
        "ztrace does not say what it selects:\n{}",
        ztrace.stderr_text()
    );
    // Started after ztrace attached: only the exec probe can have told ztrace about it.
    let started = Instant::now();
    let mut cmd = Command::new(&python);
    cmd.arg(apps_dir().join("two_tier.py")).arg("backend");
    let (server, port) = spawn_app(cmd)?;
    ztrace.wait_stderr(
        &format!("tracing process {}", server.pid()),
        Duration::from_secs(5),
    )?;
    let delay = started.elapsed();
    ensure!(
        delay < Duration::from_secs(2),
        "the new process was traced {delay:?} after it started"
    );
    for i in 0..3 {
        curl(&[format!("http://127.0.0.1:{port}/item/{i}")])?;
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(3, Duration::from_secs(10)));
    let mine = server_spans_of(&spans, server.pid());
    ensure!(
        mine.len() == 3,
        "want 3 server spans of the late process, got {} of {} spans; ztrace:\n{}",
        mine.len(),
        spans.len(),
        ztrace.stderr_text()
    );
    ensure!(
        spans
            .iter()
            .all(|s| s.resource_int("process.pid") == Some(server.pid() as i64)),
        "spans of a process the selector does not match"
    );
    ensure!(
        mine[0].resource_str("process.executable.name").as_deref()
            == python.file_name().and_then(|n| n.to_str()),
        "process.executable.name {:?}",
        mine[0].resource_str("process.executable.name")
    );
    drop(server);
    Ok(())
}

/// A server run as the child of `parent-{tag}-{pid}` (a Python parent whose command line a
/// `cmdline` rule can select; the child's, plain `python3 two_tier.py backend`, matches no
/// rule): (parent, the child's PID, its port). The child dies with its parent
/// (PR_SET_PDEATHSIG, SIGKILL) when the test drops it.
fn parent_with_a_server_child(tag: &str) -> Result<(Proc, u32, u16)> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import ctypes, subprocess, sys; sys.exit(subprocess.call(['python3', sys.argv[1], 'backend'], \
         preexec_fn=lambda: ctypes.CDLL(None).prctl(1, 9)))",
    ])
    .arg(apps_dir().join("two_tier.py"))
    .arg(format!("parent-{tag}-{}", std::process::id()));
    let (parent, port) = spawn_app(cmd)?;
    let child = pid_listening_on(port)?;
    ensure!(child != parent.pid(), "the server is not a child");
    Ok((parent, child, port))
}

/// A selected process's children are traced as a `--pid`'s are, also those it had before it
/// was selected (the kernel passes tracing on only at fork): parent `a` is selected at start,
/// parent `b` by a rule a SIGHUP adds; each runs its server as a child that no rule matches,
/// started before ztrace. Both children's requests must become spans.
#[test]
fn a_selected_process_s_existing_children_are_traced() -> Result<()> {
    if !privileged_or_skip("a_selected_process_s_existing_children_are_traced") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("select-children")?;
    let (_a, a_child, a_port) = parent_with_a_server_child("a")?;
    let (_b, b_child, b_port) = parent_with_a_server_child("b")?;
    let rule = |tag: &str| {
        format!(
            "[[target.select]]\ncmdline = \"parent-{tag}-{}\"\n",
            std::process::id()
        )
    };
    let config = dir.join("ztrace.toml");
    std::fs::write(&config, rule("a"))?;
    let mut ztrace = ztrace_with_config(&config, receiver.endpoint())?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    std::fs::write(&config, rule("a") + &rule("b"))?;
    ztrace.signal(libc::SIGHUP);
    ztrace.wait_stderr(
        &format!("tracing process {b_child}: a child of"),
        Duration::from_secs(10),
    )?;
    for port in [a_port, b_port] {
        for i in 0..3 {
            curl(&[format!("http://127.0.0.1:{port}/item/{i}")])?;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(6, Duration::from_secs(10)));
    for (when, child) in [("at start", a_child), ("by SIGHUP", b_child)] {
        let got = server_spans_of(&spans, child).len();
        ensure!(
            got == 3,
            "want 3 server spans of the child {child} of the parent selected {when}, got {got} \
             of {} spans; ztrace:\n{}",
            spans.len(),
            ztrace.stderr_text()
        );
    }
    Ok(())
}

#[test]
fn port_selector_picks_the_right_server() -> Result<()> {
    if !privileged_or_skip("port_selector_picks_the_right_server") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let backend = || -> Result<(Proc, u16)> {
        let mut cmd = Command::new("python3");
        cmd.arg(apps_dir().join("two_tier.py")).arg("backend");
        spawn_app(cmd)
    };
    let (wanted, wanted_port) = backend()?;
    let (other, other_port) = backend()?;
    let mut ztrace = spawn_ztrace(&[
        "--port".into(),
        wanted_port.to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    for port in [wanted_port, other_port] {
        for i in 0..2 {
            curl(&[format!("http://127.0.0.1:{port}/item/{i}")])?;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(2, Duration::from_secs(10)));
    ensure!(
        server_spans_of(&spans, wanted.pid()).len() == 2,
        "want 2 server spans of the server on port {wanted_port}; got {} spans; ztrace:\n{}",
        spans.len(),
        ztrace.stderr_text()
    );
    ensure!(
        server_spans_of(&spans, other.pid()).is_empty(),
        "the server on port {other_port} was traced too"
    );
    Ok(())
}

/// Reads the `PORT <n>` lines the supervised service appends to `ports`, waiting for the n-th.
fn nth_port(ports: &Path, n: usize) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(ports).unwrap_or_default();
        if let Some(line) = text.lines().filter(|l| l.starts_with("PORT ")).nth(n) {
            return Ok(line[5..].trim().parse()?);
        }
        if Instant::now() > deadline {
            bail!(
                "the supervised service did not start a {}th time: {text}",
                n + 1
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_listening_on(port: u16) -> Result<u32> {
    let out = Command::new("ss")
        .args(["-Htlnp", &format!("sport = :{port}")])
        .output()
        .context("ss (apt-get install iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("pid=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no process listens on {port}: {text}"))
}

/// Kills the processes running the script at this path (whatever PID the supervisor gave the
/// service last) when dropped: also when the test fails before its end.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-f", &self.0.display().to_string()])
            .status();
    }
}

#[test]
fn a_restarted_service_keeps_its_name() -> Result<()> {
    if !privileged_or_skip("a_restarted_service_keeps_its_name") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("select-restart")?;
    // The service's file name is the marker the rule selects on; the supervisor's own command
    // line (`bash supervise.sh`) does not contain it.
    let service = dir.join(format!("inventory_svc_{}.py", std::process::id()));
    std::fs::copy(apps_dir().join("two_tier.py"), &service)?;
    let ports = dir.join("ports.txt");
    let script = dir.join("supervise.sh");
    std::fs::write(
        &script,
        format!(
            "while true; do python3 {} backend >> {}; sleep 0.2; done\n",
            service.display(),
            ports.display()
        ),
    )?;
    let config = dir.join("ztrace.toml");
    std::fs::write(
        &config,
        format!(
            "[[target.select]]\nexe = \"python3*\"\ncmdline = \"inventory_svc_{}\\\\.py\"\nservice_name = \"inventory\"\n",
            std::process::id()
        ),
    )?;
    // Declared before the supervisor, so dropped after it: nothing restarts the service then.
    let service_guard = KillOnDrop(service.clone());
    let supervisor = Command::new("bash")
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let supervisor = Proc::new(supervisor);
    let first_port = nth_port(&ports, 0)?;
    let first = pid_listening_on(first_port)?;
    let mut ztrace = spawn_ztrace(&[
        "--config".into(),
        config.display().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    curl(&[format!("http://127.0.0.1:{first_port}/item/1")])?;
    // The supervisor restarts the service: a new process, a new PID.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let second_port = nth_port(&ports, 1)?;
    let second = pid_listening_on(second_port)?;
    ztrace.wait_stderr(&format!("tracing process {second}"), Duration::from_secs(5))?;
    curl(&[format!("http://127.0.0.1:{second_port}/item/2")])?;
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    drop(supervisor);
    drop(service_guard);
    let spans = rt.block_on(receiver.wait_for_spans(2, Duration::from_secs(10)));
    for (pid, what) in [(first, "before"), (second, "after")] {
        let mine = server_spans_of(&spans, pid);
        ensure!(
            mine.len() == 1,
            "want 1 server span {what} the restart (pid {pid}), got {}; ztrace:\n{}",
            mine.len(),
            ztrace.stderr_text()
        );
        ensure!(
            mine[0].resource_str("service.name").as_deref() == Some("inventory"),
            "service.name {what} the restart: {:?}",
            mine[0].resource_str("service.name")
        );
    }
    Ok(())
}

#[test]
fn sighup_adds_a_target_without_dropping_data() -> Result<()> {
    if !privileged_or_skip("sighup_adds_a_target_without_dropping_data") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("select-sighup")?;
    let (first, first_port) = named_service(&dir, "first_svc")?;
    let (second, second_port) = named_service(&dir, "second_svc")?;
    let rule = |name: &str, service: &str| cmdline_rule(name, Some(service));
    let config = dir.join("ztrace.toml");
    std::fs::write(&config, rule("first_svc", "first"))?;
    let mut ztrace = ztrace_with_config(&config, receiver.endpoint())?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let get = |port: u16, i: u32| curl(&[format!("http://127.0.0.1:{port}/item/{i}")]);
    get(first_port, 1)?;
    get(second_port, 1)?; // not traced yet
    // The first request's span is sent before the reload renames its service (a span's
    // Resource is the one its process has when its batch is sent).
    let sent = rt.block_on(receiver.wait_for_spans(1, Duration::from_secs(10)));
    ensure!(sent.len() == 1, "before the reload: {} spans", sent.len());
    // An invalid file changes nothing and says why.
    std::fs::write(&config, "[[target.select]]\nport = \"http\"\n")?;
    ztrace.signal(libc::SIGHUP);
    ztrace.wait_stderr(
        "SIGHUP: keeping the current targets",
        Duration::from_secs(5),
    )?;
    // The reload also renames the first service, which stays traced.
    std::fs::write(
        &config,
        rule("first_svc", "first-renamed") + &rule("second_svc", "second"),
    )?;
    ztrace.signal(libc::SIGHUP);
    ztrace.wait_stderr("SIGHUP: re-read", Duration::from_secs(5))?;
    ztrace.wait_stderr(
        &format!("tracing process {}", second.pid()),
        Duration::from_secs(5),
    )?;
    get(first_port, 2)?;
    get(second_port, 2)?;
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(3, Duration::from_secs(10)));
    let first_spans = server_spans_of(&spans, first.pid());
    let second_spans = server_spans_of(&spans, second.pid());
    ensure!(
        first_spans.len() == 2,
        "the first service lost spans across the reload: {} of 2; ztrace:\n{}",
        first_spans.len(),
        ztrace.stderr_text()
    );
    ensure!(
        second_spans.len() == 1,
        "the added service: {} server spans, want 1 (after the reload only); ztrace:\n{}",
        second_spans.len(),
        ztrace.stderr_text()
    );
    ensure!(second_spans[0].resource_str("service.name").as_deref() == Some("second"));
    let names: Vec<Option<String>> = first_spans
        .iter()
        .map(|s| s.resource_str("service.name"))
        .collect();
    ensure!(
        names == [Some("first".into()), Some("first-renamed".into())],
        "the first service's names before and after the reload: {names:?}"
    );
    Ok(())
}

/// Two services selected by the file; the file is rewritten to select one and ztrace gets
/// SIGHUP while a slow request to the other is in flight. That request still becomes a whole
/// span (the grace), then the dropped service leaves the kernel's traced set and its later
/// requests are not traced; the kept one loses nothing.
#[test]
fn sighup_untraces_a_service_no_longer_selected() -> Result<()> {
    if !privileged_or_skip("sighup_untraces_a_service_no_longer_selected") {
        return Ok(());
    }
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = TempDir::new("select-deselect")?;
    let (kept, kept_port) = named_service(&dir, "kept_svc")?;
    let (dropped, dropped_port) = named_service(&dir, "dropped_svc")?;
    let rule = |name: &str| cmdline_rule(name, None);
    let config = dir.join("ztrace.toml");
    std::fs::write(&config, rule("kept_svc") + &rule("dropped_svc"))?;
    let mut ztrace = ztrace_with_config(&config, receiver.endpoint())?;
    ztrace.wait_stderr("tracing 2 process(es)", Duration::from_secs(60))?;
    let get = |port: u16, path: &str| curl(&[format!("http://127.0.0.1:{port}{path}")]);
    get(kept_port, "/item/1")?;
    get(dropped_port, "/item/1")?;
    let before = traced_set(ztrace.pid())?;
    ensure!(
        before.contains(&kept.pid()) && before.contains(&dropped.pid()),
        "both services should be in the kernel's traced set: {before:?}"
    );
    // A request in flight when the reload comes: the server answers it 800 ms later.
    let slow = std::thread::spawn(move || get(dropped_port, "/slow/800"));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&config, rule("kept_svc"))?;
    ztrace.signal(libc::SIGHUP);
    ztrace.wait_stderr("SIGHUP: re-read", Duration::from_secs(5))?;
    slow.join()
        .map_err(|_| anyhow::anyhow!("the slow request panicked"))??;
    ztrace.wait_stderr(
        "retarget: untraced 1 process(es) no longer selected",
        Duration::from_secs(10),
    )?;
    let after = traced_set(ztrace.pid())?;
    ensure!(
        after.contains(&kept.pid()) && !after.contains(&dropped.pid()),
        "after the reload the kernel's traced set should hold {} and not {}: {after:?}",
        kept.pid(),
        dropped.pid()
    );
    get(kept_port, "/item/2")?;
    get(dropped_port, "/item/2")?;
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(4, Duration::from_secs(10)));
    let paths = |pid: u32| -> Vec<(Option<String>, Option<i64>)> {
        let mut p: Vec<_> = server_spans_of(&spans, pid)
            .iter()
            .map(|s| {
                (
                    s.attr_str("url.path"),
                    s.attr_int("http.response.status_code"),
                )
            })
            .collect();
        p.sort();
        p
    };
    let ok = |path: &str| (Some(path.to_string()), Some(200));
    ensure!(
        paths(kept.pid()) == vec![ok("/item/1"), ok("/item/2")],
        "the kept service: {:?}; ztrace:\n{}",
        paths(kept.pid()),
        ztrace.stderr_text()
    );
    ensure!(
        paths(dropped.pid()) == vec![ok("/item/1"), ok("/slow/800")],
        "the dropped service: want its request before the reload and the one in flight, whole, \
         and nothing after; got {:?}; ztrace:\n{}",
        paths(dropped.pid()),
        ztrace.stderr_text()
    );
    Ok(())
}
