//! Bad input gets a one-line message that says what to do, and exit code 2 — and environments
//! that are only half ready are fixed (tracefs) or named (BTF, privileges).

use std::{
    process::{Command, Output},
    time::Duration,
};

use ztrace_e2e::harness::{privileged_or_skip, spawn_ztrace, ztrace_bin};

fn ztrace(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ztrace_bin());
    cmd.args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ztrace")
}

fn assert_usage_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "error must be one line: {stderr}"
    );
}

fn own_pid() -> String {
    std::process::id().to_string()
}

#[test]
fn bad_pids_are_rejected() {
    assert_usage_error(
        &ztrace(&["--pid", "999999999"], &[]),
        "no process with PID 999999999",
    );
    assert_usage_error(&ztrace(&["--pid", "2"], &[]), "kernel thread");
    assert_usage_error(&ztrace(&[], &[]), "nothing to trace");
    let out = ztrace(&["--pid", "abc"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn socket_probes_must_be_one_choice() {
    let pid = own_pid();
    assert_usage_error(
        &ztrace(
            &[
                "--pid",
                &pid,
                "--socket-probes",
                "raw",
                "--capture-via-syscalls",
            ],
            &[],
        ),
        "--capture-via-syscalls and --socket-probes raw",
    );
    let out = ztrace(&["--pid", &pid, "--socket-probes", "btf"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not one of auto, typed, raw"), "{stderr}");
}

#[test]
fn ztrace_refuses_itself_and_a_foreign_pid_namespace() {
    // `exec`: the shell's `$$` becomes ztrace's own PID.
    let bin = ztrace_bin();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {} --pid $$ --duration 10s", bin.display()))
        .output()
        .expect("run ztrace");
    assert_usage_error(&out, "is ztrace itself");
    if !privileged_or_skip("ztrace_refuses_itself_and_a_foreign_pid_namespace") {
        return;
    }
    // In a new PID namespace with its own /proc, PID 1 there is another process than the
    // kernel's PID 1: ztrace must refuse, not trace whatever has that number on the host.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(&bin)
        .args(["--pid", "1"])
        .output()
        .expect("run unshare (util-linux)");
    assert_usage_error(&out, "PID namespace other than the host's");
}

#[test]
fn an_ancestor_is_traced_but_not_ztrace_itself() {
    if !privileged_or_skip("an_ancestor_is_traced_but_not_ztrace_itself") {
        return;
    }
    // ztrace is a child of the shell it is told to trace with its descendants.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} --pid $$ --duration 2s & echo \"ZTRACE $!\"; wait",
            ztrace_bin().display()
        ))
        .env("RUST_LOG", "info")
        .output()
        .expect("run ztrace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let me: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ZTRACE "))
        .and_then(|p| p.trim().parse().ok())
        .expect("ztrace's pid");
    assert!(
        stderr.contains("ztrace descends from it; ztrace itself is not traced"),
        "{stderr}"
    );
    let traced = stderr
        .lines()
        .find_map(|l| l.split_once("process(es): [").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_once(']'))
        .map(|(list, _)| list.to_string())
        .unwrap_or_else(|| panic!("no tracing line in {stderr}"));
    let pids: Vec<u32> = traced
        .split(", ")
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    assert!(!pids.is_empty(), "{stderr}");
    assert!(!pids.contains(&me), "ztrace {me} traces itself: {stderr}");
}

#[test]
fn thread_ids_are_rejected_with_the_process_id() {
    // A thread of this test process.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = done_rx.recv();
    });
    let tid = rx.recv().unwrap().to_string();
    assert_usage_error(&ztrace(&["--pid", &tid], &[]), "is a thread of process");
    done_tx.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn malformed_endpoints_name_their_source() {
    let pid = own_pid();
    assert_usage_error(
        &ztrace(&["--pid", &pid, "--otlp-endpoint", "localhost:4317"], &[]),
        "--otlp-endpoint",
    );
    assert_usage_error(
        &ztrace(
            &["--pid", &pid],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x:1")],
        ),
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    assert_usage_error(
        &ztrace(
            &["--pid", &pid],
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://")],
        ),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    );
}

#[test]
fn unprivileged_user_is_told_what_to_grant() {
    if !privileged_or_skip("unprivileged_user_is_told_what_to_grant") {
        return;
    }
    // Drop to nobody with no capabilities.
    let out = ztrace_e2e::harness::ztrace_as_nobody()
        .args(["--pid", &own_pid()])
        .output()
        .expect("setpriv (util-linux)");
    assert_usage_error(&out, "run as root");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_BPF+CAP_PERFMON"));
}

/// Runs `prepare` and then ztrace (tracing this test process, plus `args`) in a private mount
/// namespace, so changes to /sys mounts stay invisible to the rest of the machine.
fn in_private_mount_namespace(prepare: &str, args: &str) -> Output {
    let script = format!(
        "{prepare}; exec {} --pid {} {args}",
        ztrace_bin().display(),
        own_pid()
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)")
}

#[test]
fn missing_btf_is_named() {
    if !privileged_or_skip("missing_btf_is_named") {
        return;
    }
    // Hide the kernel's BTF.
    let out = in_private_mount_namespace("mount -t tmpfs none /sys/kernel/btf", "");
    assert_usage_error(&out, "CONFIG_DEBUG_INFO_BTF");
}

#[test]
fn unmounted_tracefs_is_mounted_by_ztrace() {
    if !privileged_or_skip("unmounted_tracefs_is_mounted_by_ztrace") {
        return;
    }
    let out = in_private_mount_namespace(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         if test -d /sys/kernel/tracing/events; then echo STILL_MOUNTED; fi",
        "--no-children --duration 1s",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("STILL_MOUNTED"),
        "could not unmount tracefs for the test"
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("mounted tracefs"), "{stderr}");
    assert!(stderr.contains("tracing 1 process(es)"), "{stderr}");
}

#[test]
fn unreachable_collector_does_not_stop_capture() {
    if !privileged_or_skip("unreachable_collector_does_not_stop_capture") {
        return;
    }
    let (_backend, port) = ztrace_e2e::harness::spawn_service(&["backend"]).expect("backend");
    let mut zt = spawn_ztrace(&[
        "--pid".into(),
        _backend.pid().to_string(),
        "--otlp-endpoint".into(),
        "http://127.0.0.1:9".into(),
    ])
    .expect("ztrace");
    zt.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))
        .unwrap();
    for i in 0..5 {
        ztrace_e2e::harness::curl(&[format!("http://127.0.0.1:{port}/item/{i}")]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    zt.signal(libc::SIGTERM);
    let code = zt.wait_exit(Duration::from_secs(30));
    let stderr = zt.stderr_text();
    assert_eq!(code, Some(0), "{stderr}");
    // The five spans could not be delivered, and the summary says so.
    assert!(stderr.contains("5 spans"), "{stderr}");
    assert!(stderr.contains("0 exported"), "{stderr}");
}

#[test]
fn check_reports_every_item() {
    let out = Command::new(ztrace_bin())
        .arg("check")
        .output()
        .expect("ztrace check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for item in [
        "kernel",
        "privileges",
        "tracefs",
        "kernel BTF",
        "ring buffer map",
        "tracepoint programs",
    ] {
        assert!(stdout.contains(item), "`{item}` missing from:\n{stdout}");
    }
    if ztrace_e2e::harness::is_root() {
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        // Where socket data would come from, for each choice of socket-layer probes.
        assert!(
            stdout.contains("socket data            from "),
            "no socket data line:\n{stdout}"
        );
        let raw = Command::new(ztrace_bin())
            .args(["check", "--socket-probes", "raw"])
            .output()
            .expect("ztrace check --socket-probes raw");
        let raw = String::from_utf8_lossy(&raw.stdout);
        assert!(
            raw.contains("from socket-layer tracepoints (raw) (--socket-probes raw)"),
            "{raw}"
        );
    }
}

#[test]
fn bad_tail_sampling_settings_name_the_key_and_stop_start_up() {
    let pid = own_pid();
    let path = ztrace_e2e::temp::TempFile::new(
        "bad-tail",
        "ztrace.toml",
        "[[tail_sampling.policies]]\nname = \"slow\"\ntype = \"latency\"\nlatency = { threshold = 500 }\n",
    )
    .unwrap();
    let file = path.display().to_string();
    assert_usage_error(
        &ztrace(&["--pid", &pid, "--config", &file], &[]),
        "tail_sampling.policies[0].latency.threshold: unknown setting",
    );
    assert_usage_error(
        &ztrace(&["--pid", &pid, "--sample-healthy", "150%"], &[]),
        "--sample-healthy: `150%` is not a percentage",
    );
}

/// `[opamp]` is checked at start-up like every setting: a bad endpoint or allow-list entry (or
/// a missing CA file) stops ztrace with one line naming the flag, variable or key.
#[test]
fn bad_opamp_settings_stop_start_up() {
    let pid = own_pid();
    assert_usage_error(
        &ztrace(&["--pid", &pid, "--opamp-endpoint", "fleet:4320"], &[]),
        "--opamp-endpoint",
    );
    assert_usage_error(
        &ztrace(
            &[
                "--pid",
                &pid,
                "--opamp-endpoint",
                "http://fleet:4320/v1/opamp",
            ],
            &[("ZTRACE_OPAMP_ALLOW", "sampling,exporters")],
        ),
        "`exporters` is not a part a remote server may be allowed to change",
    );
    assert_usage_error(
        &ztrace(
            &[
                "--pid",
                &pid,
                "--opamp-endpoint",
                "https://fleet:4320/v1/opamp",
                "--opamp-certificate",
                "/nonexistent/ca.pem",
            ],
            &[],
        ),
        "--opamp-certificate",
    );
}

/// `ztrace replay` resolves the processors as the daemon does: a bad tail sampling setting or a
/// broken rule stops it before the file is read, with the same one line; a file that is not there
/// is named once, with its error once.
#[test]
fn replay_checks_tail_sampling_and_rules_like_the_daemon() {
    use ztrace_e2e::temp::{TempDir, TempFile};
    let tail = TempFile::new(
        "replay-bad-tail",
        "ztrace.toml",
        "[[tail_sampling.policies]]\nname = \"slow\"\ntype = \"latency\"\nlatency = { threshold = 500 }\n",
    )
    .unwrap();
    let rules = TempFile::new(
        "replay-bad-rule",
        "ztrace.toml",
        "[[transform.trace_statements]]\ncontext = \"span\"\nstatements = ['set(attributes[\"a\"] \"b\")']\n",
    )
    .unwrap();
    let empty = TempDir::new("replay-missing").unwrap();
    let missing = empty.join("no-such-file.zcap").display().to_string();
    assert_usage_error(
        &ztrace(
            &["replay", "--config", &tail.display().to_string(), &missing],
            &[],
        ),
        "tail_sampling.policies[0].latency.threshold: unknown setting",
    );
    assert_usage_error(
        &ztrace(&["replay", "--sample-healthy", "150%", &missing], &[]),
        "--sample-healthy: `150%` is not a percentage",
    );
    assert_usage_error(
        &ztrace(
            &["replay", "--config", &rules.display().to_string(), &missing],
            &[],
        ),
        "expected `,` or `)`",
    );
    let out = ztrace(&["replay", &missing], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("reading {missing}")), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the error once: {stderr}"
    );
}
