//! Process lifecycle, as root: a traced process that has exited must leave the kernel's traced
//! set. If it stayed, the next process the kernel gives its PID would be traced, and its payloads
//! (and with `--capture-logs` its output) exported: PID reuse tracing the wrong process.
//!
//! The kernel's set is read with bpftool, from the `TRACED` map of this test's own ztrace.

use std::{collections::HashSet, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use ztrace_e2e::harness::{Proc, privileged_or_skip, spawn_ztrace};

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
    let shell = Proc {
        child: Command::new("bash").args(["-c", &script]).spawn()?,
        stderr: Default::default(),
        stdout: Default::default(),
    };
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        shell.pid().to_string(),
        "--duration".into(),
        "90s".into(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
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

/// The TGIDs in the `TRACED` map that process `owner` holds (its map fds name their map ids in
/// /proc/PID/fdinfo; bpftool says which of them is `TRACED`).
fn traced_set(owner: u32) -> Result<HashSet<u32>> {
    let mut held = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{owner}/fdinfo"))? {
        let info = std::fs::read_to_string(fd?.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u64>().ok())
        {
            held.insert(id);
        }
    }
    let maps = bpftool(&["map", "show"])?;
    let id = maps
        .as_array()
        .context("bpftool map show: not a list")?
        .iter()
        .filter(|m| m["name"] == "TRACED")
        .filter_map(|m| m["id"].as_u64())
        .find(|id| held.contains(id))
        .with_context(|| format!("no TRACED map held by ztrace {owner}"))?;
    let entries = bpftool(&["map", "dump", "id", &id.to_string()])?;
    let mut set = HashSet::new();
    for e in entries.as_array().context("bpftool map dump: not a list")? {
        let key: Vec<u8> = e["key"]
            .as_array()
            .context("entry without key bytes")?
            .iter()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        let key: [u8; 4] = key.try_into().ok().context("a TRACED key is 4 bytes")?;
        set.insert(u32::from_le_bytes(key));
    }
    Ok(set)
}

fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool (Debian package bpftool)")?;
    ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
