//! The kernel's side of a running ztrace, read as the tests' ground truth: its traced set.

use std::{collections::HashSet, process::Command};

use anyhow::{Context, Result, ensure};

/// The TGIDs whose byte is set in the `TRACED` map that process `owner` holds (its map fds
/// name their map ids in /proc/PID/fdinfo; bpftool says which of them is `TRACED`).
pub fn traced_set(owner: u32) -> Result<HashSet<u32>> {
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
    let map = maps
        .as_array()
        .context("bpftool map show: not a list")?
        .iter()
        .filter(|m| m["name"] == "TRACED")
        .find(|m| m["id"].as_u64().is_some_and(|id| held.contains(&id)))
        .with_context(|| format!("no TRACED map held by ztrace {owner}"))?;
    let id = map["id"].as_u64().context("map without id")? as u32;
    let size = map["max_entries"]
        .as_u64()
        .context("map without max_entries")? as usize
        * map["bytes_value"]
            .as_u64()
            .context("map without bytes_value")? as usize;
    // BPF_MAP_GET_FD_BY_ID: { map_id, next_id, open_flags }.
    let attr: [u32; 3] = [id, 0, 0];
    // SAFETY: bpf(2) with an attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            14,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    ensure!(
        fd >= 0,
        "opening map {id}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a read-only shared mapping of the whole map (created `BPF_F_MMAPABLE`), unmapped
    // below; the fd is ours.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd as i32,
            0,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(fd as i32) };
    ensure!(ptr != libc::MAP_FAILED, "mapping map {id}: {err}");
    // SAFETY: `size` readable bytes, read while the mapping lives.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, size) };
    let set = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &flags)| flags != 0)
        .map(|(tgid, _)| tgid as u32)
        .collect();
    // SAFETY: the mapping made above; `bytes` is not used after this.
    unsafe { libc::munmap(ptr, size) };
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
