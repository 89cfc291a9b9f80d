//! What the host must offer before probes can load: privileges, tracefs, BTF, kernel features.
//! `ztrace check` prints the whole report; `ztrace --pid` stops at the first missing piece with
//! a message that says what to do.

use std::{fmt, fs, path::Path};

use aya::{maps::MapType, programs::ProgramType, sys};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: &'static str,
    /// None when fine; otherwise what is wrong and what to do.
    pub problem: Option<String>,
    pub detail: String,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(f, "OK    {:<22} {}", self.name, self.detail),
            Some(p) => write!(f, "FAIL  {:<22} {}", self.name, p),
        }
    }
}

fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

pub fn privileges() -> Item {
    let caps = effective_caps();
    let (bpf, perfmon) = (has_cap(caps, CAP_BPF), has_cap(caps, CAP_PERFMON));
    let admin = has_cap(caps, CAP_SYS_ADMIN);
    let problem = if (bpf && perfmon) || admin {
        None
    } else {
        Some("missing privileges: run as root (sudo ztrace …) or grant CAP_BPF+CAP_PERFMON".into())
    };
    Item {
        name: "privileges",
        problem,
        detail: format!("CAP_BPF={bpf} CAP_PERFMON={perfmon} CAP_SYS_ADMIN={admin}"),
    }
}

fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events/syscalls").is_dir()
}

/// Checks tracefs; with `mount` set, mounts it when missing (needs CAP_SYS_ADMIN).
pub fn tracefs(mount: bool) -> Item {
    let name = "tracefs";
    if tracefs_mounted() {
        return Item {
            name,
            problem: None,
            detail: format!("mounted at {TRACEFS}"),
        };
    }
    if mount {
        let ok = std::ffi::CString::new(TRACEFS).ok().is_some_and(|target| {
            // SAFETY: valid NUL-terminated strings; failure is reported through the return value.
            unsafe {
                libc::mount(
                    c"tracefs".as_ptr(),
                    target.as_ptr(),
                    c"tracefs".as_ptr(),
                    0,
                    std::ptr::null(),
                ) == 0
            }
        });
        if ok && tracefs_mounted() {
            return Item {
                name,
                problem: None,
                detail: format!("mounted tracefs at {TRACEFS}"),
            };
        }
    }
    Item {
        name,
        problem: Some(format!(
            "tracefs is not mounted: run `mount -t tracefs tracefs {TRACEFS}` as root"
        )),
        detail: String::new(),
    }
}

pub fn btf() -> Item {
    let name = "kernel BTF";
    match super::btf::Btf::from_sys_fs().and_then(|b| super::btf::resolve_offsets(&b)) {
        Ok(_) => Item {
            name,
            problem: None,
            detail: format!("{BTF_PATH}: socket and task offsets found"),
        },
        Err(e) => Item {
            name,
            problem: Some(format!(
                "{e}; ztrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            )),
            detail: String::new(),
        },
    }
}

fn feature(name: &'static str, supported: Result<bool, String>, what: &str) -> Item {
    match supported {
        Ok(true) => Item {
            name,
            problem: None,
            detail: "supported".into(),
        },
        Ok(false) => Item {
            name,
            problem: Some(format!("not supported by this kernel: {what}")),
            detail: String::new(),
        },
        Err(e) => Item {
            name,
            problem: Some(format!("could not probe ({e}); run as root to check")),
            detail: String::new(),
        },
    }
}

pub fn kernel_features() -> Vec<Item> {
    vec![
        feature(
            "ring buffer map",
            sys::is_map_supported(MapType::RingBuf).map_err(|e| e.to_string()),
            "BPF ring buffers need Linux 5.8+",
        ),
        feature(
            "tracepoint programs",
            sys::is_program_supported(ProgramType::TracePoint).map_err(|e| e.to_string()),
            "needs CONFIG_BPF_EVENTS",
        ),
        feature(
            "raw tracepoints",
            sys::is_program_supported(ProgramType::RawTracePoint).map_err(|e| e.to_string()),
            "needs Linux 4.17+",
        ),
    ]
}

/// Everything `ztrace check` reports, in order (`seccomp`: whether the daemon would install
/// its allow-list, i.e. no `--no-seccomp`).
pub fn full_report(seccomp: bool) -> Vec<Item> {
    let mut items = vec![privileges(), tracefs(false), btf()];
    // A kernel without seccomp has no `Seccomp:` line in /proc/PID/status.
    let no_seccomp = seccomp
        && super::seccomp::status_of(
            &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        )
        .0
        .is_none();
    items.push(Item {
        name: "after start",
        problem: no_seccomp.then(|| {
            "this kernel has no seccomp filters (CONFIG_SECCOMP_FILTER): run with --no-seccomp"
                .to_string()
        }),
        detail: format!(
            "ztrace keeps only {}, no_new_privs (and CAP_NET_ADMIN with cross-host links, for \
             lookups in the connection tracking table); {}",
            super::privdrop::names(super::privdrop::kept_mask()),
            if seccomp {
                format!(
                    "seccomp: allow-list of {} system calls",
                    super::seccomp::allowed_count()
                )
            } else {
                "seccomp: off (--no-seccomp)".to_string()
            }
        ),
    });
    let kernel = {
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct it is given.
        unsafe { libc::uname(&mut u) };
        let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
        release.to_string_lossy().into_owned()
    };
    items.insert(
        0,
        Item {
            name: "kernel",
            problem: None,
            detail: kernel,
        },
    );
    items.extend(kernel_features());
    items
}
