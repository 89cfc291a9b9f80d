//! `container.id` and `k8s.pod.uid` from a process's cgroup path, as the container runtimes name
//! their cgroups:
//!
//! - Docker: `/system.slice/docker-<id>.scope` (systemd driver) or `/docker/<id>` (cgroupfs);
//! - containerd: `…/cri-containerd-<id>.scope`, or `/kubepods/<qos>/pod<uid>/<id>` (cgroupfs);
//! - CRI-O: `…/crio-<id>.scope` (its `crio-conmon-<id>.scope` monitor is not the container);
//! - Podman: `…/libpod-<id>.scope` or `/libpod_parent/libpod-<id>`;
//! - Kubernetes pods: `kubepods-<qos>-pod<uid with _>.slice` (systemd) or `pod<uid>` (cgroupfs).
//!
//! `<id>` is 64 hex digits. Nothing is guessed from other shapes: a process outside a container
//! has no `container.id`.

/// What a cgroup path says about the container of a process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup`.
pub fn of_process(pid: u32) -> ContainerInfo {
    from_cgroup_file(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default())
}

/// The first line of a `/proc/PID/cgroup` text that names a container (a v1 hierarchy on hybrid
/// hosts, where runtimes may place containers only there), else the cgroup v2 line.
pub fn from_cgroup_file(text: &str) -> ContainerInfo {
    let mut best = ContainerInfo::default();
    for line in text.lines() {
        // `hierarchy-id:controllers:path`; the path may itself contain ':'.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let info = from_cgroup_path(path);
        if info.container_id.is_some() || line.starts_with("0::") {
            best = info;
            if best.container_id.is_some() {
                break;
            }
        }
    }
    best
}

/// Parses one cgroup path.
pub fn from_cgroup_path(path: &str) -> ContainerInfo {
    let mut out = ContainerInfo::default();
    for segment in path.split('/') {
        if let Some(uid) = pod_uid(segment) {
            out.pod_uid = Some(uid);
        }
        if let Some(id) = container_id(segment) {
            out.container_id = Some(id);
        }
    }
    out
}

fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    if s.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))
    .unwrap_or(s);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

fn pod_uid(segment: &str) -> Option<String> {
    // systemd driver: kubepods-burstable-pod0a1b2c3d_….slice; cgroupfs: pod0a1b2c3d-….
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = s.rfind("pod")?;
    if at > 0 && !s[..at].ends_with('-') {
        return None;
    }
    let uid = s[at + 3..].replace('_', "-");
    is_uuid(&uid).then(|| uid.to_ascii_lowercase())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
    const POD: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

    fn id(path: &str) -> Option<String> {
        from_cgroup_path(path).container_id
    }

    #[test]
    fn container_ids_as_runtimes_name_them() {
        assert_eq!(
            id(&format!("/system.slice/docker-{ID}.scope")).as_deref(),
            Some(ID)
        );
        assert_eq!(id(&format!("/docker/{ID}")).as_deref(), Some(ID));
        assert_eq!(
            id(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope", POD.replace('-', "_"))).as_deref(),
            Some(ID)
        );
        assert_eq!(
            id(&format!("/kubepods/burstable/pod{POD}/{ID}")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            id(&format!("/machine.slice/libpod-{ID}.scope")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            id(&format!("/kubepods.slice/crio-{ID}.scope")).as_deref(),
            Some(ID)
        );
        assert_eq!(id(&format!("/kubepods.slice/crio-conmon-{ID}.scope")), None);
        assert_eq!(id("/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(id("/system.slice/docker-abc.scope"), None);
        assert_eq!(id("/"), None);
    }

    #[test]
    fn hybrid_hosts_name_the_container_in_a_v1_hierarchy() {
        let text = format!("12:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n");
        assert_eq!(from_cgroup_file(&text).container_id.as_deref(), Some(ID));
        assert_eq!(
            from_cgroup_file("4:memory:/user.slice\n0::/init.scope\n").container_id,
            None
        );
        assert_eq!(from_cgroup_file("").container_id, None);
    }

    #[test]
    fn pod_uids_from_both_drivers() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            POD.replace('-', "_")
        );
        assert_eq!(from_cgroup_path(&systemd).pod_uid.as_deref(), Some(POD));
        let cgroupfs = format!("/kubepods/besteffort/pod{POD}/{ID}");
        assert_eq!(from_cgroup_path(&cgroupfs).pod_uid.as_deref(), Some(POD));
        assert_eq!(
            from_cgroup_path("/system.slice/ipod-thing.service").pod_uid,
            None
        );
        assert_eq!(
            from_cgroup_path("/kubepods/burstable/podnotauid").pod_uid,
            None
        );
    }

    /// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
    /// hybrid one (from /proc/self/mounts).
    fn cgroup2_mount() -> Option<std::path::PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        mounts.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
    }

    /// A real cgroup v2 directory named as Docker's systemd driver names it, with a real process
    /// moved into it: the id comes from the kernel's /proc/PID/cgroup, not from a string.
    #[test]
    fn real_process_in_a_docker_style_cgroup() {
        let root = cgroup2_mount();
        let writable = root.as_ref().is_some_and(|r| {
            let probe = r.join("ztrace-probe-unit");
            let ok = std::fs::create_dir(&probe).is_ok();
            let _ = std::fs::remove_dir(&probe);
            ok
        });
        let (Some(root), true) = (root, writable) else {
            // Unprivileged unit runs (cargo test as a user) cannot make cgroups; the privileged
            // end-to-end run (as root, in CI) always can, and there this test must run.
            assert!(
                std::env::var_os("ZTRACE_E2E_REQUIRED").is_none(),
                "cgroup v2 is not writable here, but privileged tests are required"
            );
            return;
        };
        let dir = root.join(format!("ztrace-test-{}.slice", std::process::id()));
        let scope = dir.join(format!("docker-{ID}.scope"));
        std::fs::create_dir_all(&scope).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(scope.join("cgroup.procs"), child.id().to_string()).unwrap();
        let info = of_process(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_dir(&scope);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(of_process(std::process::id()).container_id, None);
    }
}
