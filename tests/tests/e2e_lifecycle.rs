//! Process lifecycle, as root: a traced process that has exited must leave the kernel's traced
//! set. If it stayed, the next process the kernel gives its PID would be traced, and its payloads
//! (and with `--capture-logs` its output) exported: PID reuse tracing the wrong process.
//!
//! The kernel's set is read from the `TRACED` map of this test's own ztrace (a byte of flags per
//! TGID; bpftool names the map, the test maps it read-only).

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use ztrace_e2e::{
    harness::{Proc, privileged_or_skip, spawn_ztrace},
    kernel::traced_set,
};

/// Short-lived children: each is forked (the kernel marks it traced), execs (an event userspace
/// handles when it gets to it, often after the child has exited) and exits (the kernel removes
/// it).
const CHILDREN: usize = 300;

#[test]
fn exited_processes_leave_the_traced_set() -> Result<()> {
    if !privileged_or_skip("exited_processes_leave_the_traced_set") {
        return Ok(());
    }
    let script = format!("sleep 2; for i in $(seq {CHILDREN}); do /bin/true; done; sleep 60");
    let (shell, mut ztrace) = trace_shell(&script)?;
    // Every child's exit has been seen once ztrace has logged it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exits = |log: &str| {
        log.lines()
            .filter(|l| l.contains("traced process ") && l.ends_with(" exited"))
            .count()
    };
    while exits(&ztrace.stderr_text()) < CHILDREN {
        if std::time::Instant::now() > deadline {
            bail!(
                "ztrace saw {} of {CHILDREN} exits:\n{}",
                exits(&ztrace.stderr_text()),
                ztrace.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let traced = traced_set(ztrace.pid())?;
    let stale: Vec<u32> = traced
        .iter()
        .copied()
        .filter(|&pid| pid != shell.pid())
        .collect();
    ensure!(
        traced.contains(&shell.pid()),
        "the traced shell {} is missing from the traced set {traced:?}",
        shell.pid()
    );
    ensure!(
        stale.is_empty(),
        "{} exited process(es) still in the kernel's traced set, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    Ok(())
}

/// A traced process exits and the kernel hands its PID to a process ztrace has no reason to
/// trace (not a descendant of a traced one): that process must not be traced. The new owner
/// execs, so userspace's late answers about the old process (its exec inspection) race with it.
#[test]
fn a_pid_reused_after_a_traced_exit_is_not_traced() -> Result<()> {
    if !privileged_or_skip("a_pid_reused_after_a_traced_exit_is_not_traced") {
        return Ok(());
    }
    let dir = ztrace_e2e::temp::TempDir::new("reuse")?;
    let pid_file = dir.join("pid");
    let script = format!(
        "sleep 2; sleep 1 & echo $! > {}; wait $!; sleep 60",
        pid_file.display()
    );
    let (shell, mut ztrace) = trace_shell(&script)?;
    let child = ztrace_e2e::harness::wait_pid_file(&pid_file, "the shell's fork")?;
    ztrace.wait_stderr(
        &format!("following new child process {child} of"),
        Duration::from_secs(10),
    )?;
    ztrace.wait_stderr(
        &format!("traced process {child} exited"),
        Duration::from_secs(30),
    )?;
    // Ask the kernel for PID `child` next (root may set the last PID handed out); processes
    // elsewhere on the machine may take it first, so try a few times.
    let mut reused = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (child - 1).to_string())
            .context("writing /proc/sys/kernel/ns_last_pid")?;
        let mut p = Command::new("sleep").arg("30").spawn()?;
        if p.id() == child {
            reused = Some(p);
            break;
        }
        let _ = p.kill();
        let _ = p.wait();
    }
    let mut reused = reused.with_context(|| format!("PID {child} was never handed out again"))?;
    std::thread::sleep(Duration::from_millis(1500));
    let traced = traced_set(ztrace.pid())?;
    let _ = reused.kill();
    let _ = reused.wait();
    ensure!(
        traced.contains(&shell.pid()),
        "the traced shell {} is missing from the traced set {traced:?}",
        shell.pid()
    );
    ensure!(
        !traced.contains(&child),
        "PID {child}, exited and reused by an untraced process, is traced; ztrace said:\n{}",
        ztrace.stderr_text()
    );
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    Ok(())
}

/// A bash running `script`, traced (with its children) by a ztrace that has started.
fn trace_shell(script: &str) -> Result<(Proc, Proc)> {
    let shell = Proc::new(Command::new("bash").args(["-c", script]).spawn()?);
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        shell.pid().to_string(),
        "--duration".into(),
        "90s".into(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    Ok((shell, ztrace))
}
