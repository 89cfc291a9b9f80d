//! Facts about traced processes from /proc: validation of user-given PIDs, descendants, and the
//! Resource description (executable, command line) each exported span carries.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use super::{container, naming};
use crate::model::ProcessInfo;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PidError {
    #[error("no process with PID {0}: check the PID (e.g. `pgrep -a NAME`)")]
    NotFound(u32),
    #[error("PID {0} is a kernel thread; ztrace traces user-space processes only")]
    KernelThread(u32),
    #[error("PID {0} is a thread of process {1}: pass the process id {1} instead")]
    Thread(u32, u32),
    #[error("PID {0} is ztrace itself: pass the PIDs of the processes to trace")]
    Ztrace(u32),
    #[error(
        "ztrace runs in a PID namespace other than the host's, but the kernel names traced \
         processes by their host PIDs, so --pid and every process ztrace follows would name \
         other processes: run ztrace in the host PID namespace (docker run --pid=host, \
         Kubernetes hostPID: true)"
    )]
    PidNamespace,
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO` in the kernel, fixed since 3.8).
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// Checks that ztrace runs in the initial PID namespace: the probes filter and report by the
/// kernel's TGIDs as the initial namespace numbers them, and ztrace reads `/proc/PID` with
/// those numbers. From a nested namespace no translation is possible in general (its `/proc`
/// shows only its own numbering), so ztrace refuses rather than trace another process.
pub fn check_pid_namespace() -> Result<(), PidError> {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata("/proc/self/ns/pid") {
        Ok(m) if m.ino() != INIT_PID_NS_INODE => Err(PidError::PidNamespace),
        _ => Ok(()),
    }
}

/// True when `pid` is ztrace's parent, grandparent … (tracing it with children would follow
/// into ztrace itself).
pub fn is_ancestor_of_self(pid: u32) -> bool {
    let mut cur = std::process::id();
    for _ in 0..4096 {
        match parent_of(cur) {
            Some(p) if p == pid => return true,
            Some(p) if p != 0 && p != cur => cur = p,
            _ => return false,
        }
    }
    false
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .map(|v| v.trim().to_string())
}

/// Checks that `pid` names a live user-space process (not a thread, not a kernel thread).
pub fn validate(pid: u32) -> Result<(), PidError> {
    if pid == 0 {
        return Err(PidError::NotFound(pid));
    }
    if pid == std::process::id() {
        return Err(PidError::Ztrace(pid));
    }
    let tgid = status_field(pid, "Tgid").ok_or(PidError::NotFound(pid))?;
    if let Ok(tgid) = tgid.parse::<u32>()
        && tgid != pid
    {
        return Err(PidError::Thread(pid, tgid));
    }
    // Kernel threads have no memory map and PF_KTHREAD (0x00200000) in their flags.
    let flags = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    if flags & 0x0020_0000 != 0 {
        return Err(PidError::KernelThread(pid));
    }
    Ok(())
}

/// Whether `pid` runs (a zombie has exited: only its exit status waits to be reaped).
pub fn is_alive(pid: u32) -> bool {
    stat_at(proc_root(), pid).is_some_and(|s| s.alive)
}

pub fn parent_of(pid: u32) -> Option<u32> {
    stat_at(proc_root(), pid).map(|s| s.ppid)
}

/// All live descendants of `roots` (children of children…), from each process's PPid, each with
/// its parent, parents before their children.
pub fn descendants_with_parents(roots: &[u32]) -> Vec<(u32, u32)> {
    let by_parent: Vec<(u32, u32)> = snapshot(proc_root())
        .into_iter()
        .map(|s| (s.ppid, s.pid))
        .collect();
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    let mut frontier: Vec<u32> = roots.to_vec();
    let mut out = Vec::new();
    while let Some(parent) = frontier.pop() {
        for &(ppid, pid) in &by_parent {
            if ppid == parent && seen.insert(pid) {
                out.push((pid, parent));
                frontier.push(pid);
            }
        }
    }
    out
}

/// What `/proc/PID/stat` says about a process that lineage needs: its parent, whether it still
/// runs (not a zombie) and its start time (field 22, clock ticks after boot), which tells a
/// process from a later one given the same PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    pub start: u64,
    pub alive: bool,
}

/// Parses the text of `/proc/PID/stat` (the command name in parentheses may hold anything,
/// spaces and parentheses included: the fields start after the last `)`).
pub fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Field 22 is the 20th after the name (state is field 3).
    let start = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        start,
        alive: !state.starts_with('Z') && !state.starts_with('X'),
    })
}

/// `/proc/PID/stat` of one process under `root` (the real `/proc`, or a tree in a test). None
/// when it is gone or unreadable.
pub fn stat_at(root: &Path, pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(pid, &text)
}

/// The stat of every process under `root`: one directory listing and one small read per
/// process, the cost of a reconcile (see `lineage.rs`).
pub fn snapshot(root: &Path) -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir(root) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat_at(root, pid))
        .collect()
}

/// The real `/proc`.
pub fn proc_root() -> &'static Path {
    Path::new("/proc")
}

pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The arguments of `pid`'s command line (/proc/PID/cmdline), empty when it is gone.
pub fn command_args(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads what the Resource says about `pid`. `service_name` (given by the operator) wins over
/// the derived name: for an interpreter the program it runs (see [`naming`]), else the name the
/// process goes by.
pub fn info(pid: u32, service_name: Option<&str>, host_name: &str) -> ProcessInfo {
    let exe: Option<PathBuf> = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let command_args = command_args(pid);
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let executable_name = exe
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| comm.clone());
    let executable_path = exe
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let interpreter = naming::Interpreter::from_executable(&executable_name);
    let program = interpreter.and_then(|i| naming::program_name(i, &command_args));
    // The name the process goes by: multi-call binaries reached through a symlink (redis-server →
    // redis-check-rdb, busybox) keep their own name here, unlike the resolved executable.
    let default_service = match program {
        Some(p) => p,
        None if comm.is_empty() => executable_name.clone(),
        None => comm,
    };
    let container = container::of_process(pid);
    ProcessInfo {
        pid,
        parent_pid: parent_of(pid),
        service_name: service_name.map(str::to_string).unwrap_or(default_service),
        runtime_name: interpreter
            .map(|i| i.runtime_name(&executable_name).to_string())
            .unwrap_or_default(),
        runtime_version: interpreter
            .and_then(|i| naming::runtime_version(i, &executable_path))
            .unwrap_or_default(),
        executable_path,
        executable_name,
        command_args,
        host_name: host_name.to_string(),
        container_id: container.container_id.unwrap_or_default(),
        pod_uid: container.pod_uid.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_processes_and_rejects_bad_pids() {
        let me = std::process::id();
        // The tests run inside ztrace's crate: this process stands in for ztrace itself.
        assert_eq!(validate(me), Err(PidError::Ztrace(me)));
        assert_eq!(validate(parent_of(me).unwrap()), Ok(()));
        assert!(is_ancestor_of_self(parent_of(me).unwrap()));
        assert!(is_ancestor_of_self(1));
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!is_ancestor_of_self(child.id()));
        assert_eq!(validate(child.id()), Ok(()));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(validate(0), Err(PidError::NotFound(0)));
        assert_eq!(
            validate(u32::MAX - 1),
            Err(PidError::NotFound(u32::MAX - 1))
        );
        // PID 2 is kthreadd on Linux.
        assert_eq!(validate(2), Err(PidError::KernelThread(2)));
    }

    #[test]
    fn reads_own_info_and_children() {
        let me = std::process::id();
        let info = info(me, None, "h");
        assert_eq!(info.pid, me);
        assert!(!info.executable_name.is_empty());
        assert!(!info.command_args.is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(descendants_with_parents(&[me]).contains(&(child.id(), me)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
