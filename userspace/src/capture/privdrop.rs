//! Least privilege once the host is ready: before the daemon starts any thread (capabilities
//! are per thread in Linux, and threads inherit the creating thread's), ztrace keeps only the
//! capabilities that loading and attaching probes — also later, on processes that appear —
//! and reading other users' processes in /proc need, drops the rest from its effective,
//! permitted, inheritable, ambient and bounding sets, and sets no_new_privs so no exec can get
//! them back. It parses hostile bytes, ELF files and collector answers after this point.
//! With cross-host links on, CAP_NET_ADMIN stays too: the kernel checks it on each lookup in
//! the connection tracking table that undoes this host's NAT for other agents' questions.
//! CAP_SYS_ADMIN stays (uprobes need it), so this narrows what a compromise could do (no
//! setuid, module loading, network administration, raw I/O …) rather than removing root.

use std::fmt::Write as _;

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What each kept capability is for.
const KEPT: [(u32, &str); 8] = [
    (CAP_BPF, "CAP_BPF"),         // programs, maps, links (uprobes on new processes)
    (CAP_PERFMON, "CAP_PERFMON"), // tracepoint and uprobe perf events, kernel reads
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"), // /proc/PID/{exe,maps,root} of other users
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"), // their executables and libssl
    (CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"), // a record file in a directory root does not own
    (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"), // --peer-listen on a port below 1024
    (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"), // locked memory for maps on older kernels
    // uprobe perf events (TLS on processes that appear later): perf_event_open of an uprobe
    // fails with CAP_PERFMON alone on this kernel (6.18, tested); also --probe-stats.
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
];

/// Kept only when the feature that needs it is on.
const ONLY_WHEN_NEEDED: [(u32, &str); 1] = [
    // Cross-host links (--peer-listen): the kernel checks it on every ctnetlink lookup in the
    // host's connection tracking table (`peer::nat`), not only when the socket is opened.
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
];

/// What the daemon needs beyond [`kept_mask`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Lookups in the connection tracking table (cross-host links).
    pub conntrack: bool,
}

/// The capabilities ztrace keeps after start-up (without [`Needs`]).
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0u64, |m, (c, _)| m | (1 << c))
}

/// Names of the capabilities in `mask` that ztrace knows by name.
pub fn names(mask: u64) -> String {
    let mut out = String::new();
    for (cap, name) in KEPT.into_iter().chain(ONLY_WHEN_NEEDED) {
        if mask & (1 << cap) != 0 {
            let _ = write!(out, "{}{name}", if out.is_empty() { "" } else { "," });
        }
    }
    out
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability outside [`kept_mask`] from the calling thread (call it before any
/// other thread exists) and sets no_new_privs. Returns the effective set left.
pub fn drop_privileges(needs: Needs) -> Result<u64, String> {
    let mut keep = kept_mask();
    if needs.conntrack {
        keep |= 1 << CAP_NET_ADMIN;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData structs for version 3, which `data` holds.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    let joined = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    let permitted = joined(|d| d.permitted) & keep;
    let effective = joined(|d| d.effective) & keep;
    // Bounding set: needs CAP_SETPCAP, dropped below; an unknown capability number ends it.
    for cap in 0..64u32 {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    let split = |m: u64| [m as u32, (m >> 32) as u32];
    let (p, e) = (split(permitted), split(effective));
    let new = [0, 1].map(|i| CapData {
        effective: e[i],
        permitted: p[i],
        inheritable: 0,
    });
    // SAFETY: capset reads the header and two CapData structs for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, new.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_small_and_named() {
        let m = kept_mask();
        assert_eq!(m.count_ones(), 8);
        for dropped in [0, 3, 5, 6, 7, 12, 13, 16, 17] {
            // CHOWN, FOWNER, KILL, SETGID, SETUID, NET_ADMIN, NET_RAW, SYS_MODULE, SYS_RAWIO
            assert_eq!(m & (1 << dropped), 0, "capability {dropped} kept");
        }
        assert_eq!(
            names(m),
            "CAP_BPF,CAP_PERFMON,CAP_SYS_PTRACE,CAP_DAC_READ_SEARCH,CAP_DAC_OVERRIDE,CAP_NET_BIND_SERVICE,CAP_SYS_RESOURCE,CAP_SYS_ADMIN"
        );
    }
}
