//! `ztrace record` captures the raw event stream of real processes (as root); `ztrace replay`
//! turns it into the same linked spans without any privilege, identically on every run.

use std::time::Duration;

use anyhow::{Result, ensure};
use ztrace_e2e::{
    harness::{Proc, curl, privileged_or_skip, spawn_service, spawn_ztrace},
    temp::TempDir,
};

fn replay_as_nobody(file: &std::path::Path) -> Result<(i32, String, String)> {
    let out = ztrace_e2e::harness::ztrace_as_nobody()
        .args(["replay", "--output", "json"])
        .arg(file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The two-tier services (frontend → backend), and `ztrace record` of both into `file`, recording.
fn record_two_tier(file: &std::path::Path) -> Result<(Proc, [Proc; 2], u16)> {
    let (backend, backend_port) = spawn_service(&["backend"])?;
    let (frontend, front_port) = spawn_service(&["frontend", &backend_port.to_string()])?;
    let mut recorder = spawn_ztrace(&[
        "record".into(),
        "--pid".into(),
        format!("{},{}", frontend.pid(), backend.pid()),
        "-o".into(),
        file.display().to_string(),
    ])?;
    recorder.wait_stderr("recording raw events", Duration::from_secs(60))?;
    Ok((recorder, [frontend, backend], front_port))
}

#[test]
fn record_then_replay_without_privileges() -> Result<()> {
    if !privileged_or_skip("record_then_replay_without_privileges") {
        return Ok(());
    }
    let dir = TempDir::new("record")?;
    // World-readable so the unprivileged replay can open it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let file = dir.join("capture.zcap");
    let (mut recorder, _services, front_port) = record_two_tier(&file)?;
    let urls: Vec<String> = (0..5)
        .map(|i| format!("http://127.0.0.1:{front_port}/api/r{i}"))
        .collect();
    curl(&urls)?;
    std::thread::sleep(Duration::from_millis(300));
    recorder.signal(libc::SIGINT);
    ensure!(
        recorder.wait_exit(Duration::from_secs(30)) == Some(0),
        "{}",
        recorder.stderr_text()
    );
    ensure!(
        recorder.stderr_text().contains("recorded"),
        "{}",
        recorder.stderr_text()
    );
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;

    let (code, first, stderr) = replay_as_nobody(&file)?;
    ensure!(code == 0, "replay failed ({code}): {stderr}");
    let spans: Vec<serde_json::Value> = first
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        spans.len() == 15,
        "want 5 × (frontend SERVER, CLIENT, backend SERVER), got {}:\n{first}",
        spans.len()
    );
    let parented = spans
        .iter()
        .filter(|s| s["parent_span_id"].as_str().is_some_and(|p| !p.is_empty()))
        .count();
    ensure!(
        parented == 10,
        "10 spans must have parents, {parented} do:\n{first}"
    );
    // Named after the script the interpreter runs (two_tier.py), as recorded.
    ensure!(
        spans
            .iter()
            .all(|s| s["service_name"].as_str() == Some("two_tier"))
    );

    for _ in 0..3 {
        let (_, again, _) = replay_as_nobody(&file)?;
        if let Some((a, b)) = first.lines().zip(again.lines()).find(|(a, b)| a != b) {
            anyhow::bail!("replay is not deterministic: first run\n{a}\nlater run\n{b}");
        }
        ensure!(
            first.lines().count() == again.lines().count(),
            "replay is not deterministic: {} spans, then {}",
            first.lines().count(),
            again.lines().count()
        );
    }

    // A damaged file is a clear error, not a crash.
    let bad = dir.join("bad.zcap");
    std::fs::write(&bad, b"not a recording")?;
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let (code, _, stderr) = replay_as_nobody(&bad)?;
    ensure!(
        code == 2 && stderr.contains("not a ztrace record file"),
        "{code} {stderr}"
    );
    Ok(())
}

/// A record file on a full disk: ztrace says which file and why, stops capturing, prints its
/// summary and exits non-zero; the file replays, with the events written before the disk filled.
#[test]
fn record_on_a_full_disk_stops_cleanly_and_keeps_what_it_wrote() -> Result<()> {
    if !privileged_or_skip("record_on_a_full_disk_stops_cleanly_and_keeps_what_it_wrote") {
        return Ok(());
    }
    let dir = TempDir::new("full")?;
    // A 64 KiB file system of its own: full after a few dozen requests.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(&dir)
        .status()?;
    ensure!(mounted.success(), "mount -t tmpfs failed");
    /// Unmounts before the directory guard (declared earlier, dropped later) removes it.
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&dir);
    let file = dir.join("capture.zcap");
    let (mut recorder, services, front_port) = record_two_tier(&file)?;
    let urls: Vec<String> = (0..300)
        .map(|i| format!("http://127.0.0.1:{front_port}/api/full{i}"))
        .collect();
    curl(&urls)?;
    // It stops by itself: no signal.
    let code = recorder.wait_exit(Duration::from_secs(30));
    let stderr = recorder.stderr_text();
    ensure!(
        code.is_some_and(|c| c != 0),
        "exit {code:?} on a full disk:\n{stderr}"
    );
    for want in [
        "No space left on device",
        "capture.zcap",
        "until a write failed",
        "after it not written",
    ] {
        ensure!(stderr.contains(want), "no `{want}` in:\n{stderr}");
    }
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let (code, out, replay_err) = replay_as_nobody(&file)?;
    ensure!(
        code == 0,
        "the file written before the disk filled does not replay ({code}): {replay_err}"
    );
    let spans = out.lines().count();
    ensure!(
        spans >= 3 && spans < 3 * urls.len(),
        "{spans} spans replayed from a file cut by a full disk (want some, not all)"
    );
    drop(services);
    Ok(())
}
