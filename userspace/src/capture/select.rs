//! Which processes to trace besides the PIDs given: selectors by executable, command line,
//! listening port, container or cgroup (`--exe`, `--cmdline`, `--port`, `--container`,
//! `--cgroup`, or `[[select]]` tables in the config file). A rule matches a process when all of
//! its selectors do; a process matching any rule is traced, under the rule's service name if it
//! has one.
//!
//! Processes are matched once at start (a walk of /proc) and then as they exec: the exec probe
//! reports every exec while selectors are set, and [`Facts::read`] reads only that process.
//! A process that starts before it listens is watched for a short while (`PORT_WATCH`) for a
//! port rule, by reading its own socket table, not all of /proc.

use std::{collections::HashSet, fs, time::Duration};

use regex::Regex;

use super::{container, process};
use crate::config::SelectSpec;

/// How long a new process that may still open its port is checked against `--port` rules.
pub const PORT_WATCH: Duration = Duration::from_secs(10);

/// One selector; see the module docs.
#[derive(Debug, Clone)]
pub enum Selector {
    /// A glob over the executable's file name (`python3*`), or over its path when the pattern
    /// has a `/` (`/opt/shop/**/bin/*`). `*` and `?` stop at `/`; `**` crosses it.
    Exe(Glob),
    /// A regular expression searched in the command line (arguments joined by spaces).
    Cmdline(Regex),
    /// Processes listening on this TCP port (IPv4 or IPv6).
    Port(u16),
    /// A container id, or an unambiguous prefix of one (as `docker ps` shows 12 digits).
    Container(String),
    /// A cgroup v2 path (`/system.slice/shop.service`): processes in it or below it.
    Cgroup(String),
}

#[derive(Debug, Clone)]
pub struct Glob {
    pattern: String,
    regex: Regex,
    whole_path: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("an empty --exe pattern matches nothing".into());
        }
        let mut re = String::from("^");
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Ok(Glob {
            pattern: pattern.to_string(),
            regex: Regex::new(&re).map_err(|e| format!("--exe `{pattern}`: {e}"))?,
            whole_path: pattern.contains('/'),
        })
    }

    fn matches(&self, name: &str, path: &str) -> bool {
        self.regex
            .is_match(if self.whole_path { path } else { name })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Exe(g) => write!(f, "--exe {}", g.pattern),
            Selector::Cmdline(r) => write!(f, "--cmdline {}", r.as_str()),
            Selector::Port(p) => write!(f, "--port {p}"),
            Selector::Container(c) => write!(f, "--container {c}"),
            Selector::Cgroup(c) => write!(f, "--cgroup {c}"),
        }
    }
}

impl Selector {
    /// Parses one selector as the flags and the file write it (`kind` is the flag's name).
    pub fn parse(kind: &str, value: &str) -> Result<Selector, String> {
        let value = value.trim();
        match kind {
            "exe" => Glob::new(value).map(Selector::Exe),
            "cmdline" => Regex::new(value)
                .map(Selector::Cmdline)
                .map_err(|e| format!("--cmdline `{value}` is not a regular expression: {e}")),
            "port" => match value.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Selector::Port(p)),
                _ => Err(format!("--port `{value}` is not a TCP port (1-65535)")),
            },
            "container" => {
                let id = value.to_ascii_lowercase();
                if id.len() < 4 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Err(format!(
                        "--container `{value}` is not a container id (4 to 64 hex digits)"
                    ))
                } else {
                    Ok(Selector::Container(id))
                }
            }
            "cgroup" => {
                if !value.starts_with('/') {
                    return Err(format!(
                        "--cgroup `{value}` must be a cgroup path starting with / (as in /proc/PID/cgroup)"
                    ));
                }
                Ok(Selector::Cgroup(value.trim_end_matches('/').to_string()))
            }
            other => Err(format!("unknown selector `{other}`")),
        }
    }

    fn matches(&self, f: &Facts) -> bool {
        match self {
            Selector::Exe(g) => g.matches(&f.exe_name, &f.exe_path),
            Selector::Cmdline(r) => r.is_match(&f.cmdline),
            Selector::Port(p) => f.ports.contains(p),
            Selector::Container(id) => f.container_id.as_deref().is_some_and(|c| c.starts_with(id)),
            Selector::Cgroup(path) => {
                f.cgroup == *path
                    || f.cgroup
                        .strip_prefix(path.as_str())
                        .is_some_and(|rest| rest.starts_with('/') || path == "/")
            }
        }
    }
}

/// A set of selectors that must all match, and the service name of what they select.
#[derive(Debug, Clone)]
pub struct Rule {
    pub selectors: Vec<Selector>,
    pub service_name: Option<String>,
}

impl Rule {
    /// The selectors of the flags and the file, checked: a bad glob, regex or port is an error
    /// naming where it was written.
    pub fn compile(specs: &[SelectSpec]) -> Result<Vec<Rule>, String> {
        specs
            .iter()
            .map(|spec| {
                let selectors = spec
                    .selectors
                    .iter()
                    .map(|(kind, value)| {
                        Selector::parse(kind, value).map_err(|e| {
                            if spec.origin.starts_with("--") {
                                e
                            } else {
                                format!("{}: {e}", spec.origin)
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Rule {
                    selectors,
                    service_name: spec.service_name.clone(),
                })
            })
            .collect()
    }

    pub fn matches(&self, f: &Facts) -> bool {
        !self.selectors.is_empty() && self.selectors.iter().all(|s| s.matches(f))
    }

    pub fn needs_ports(&self) -> bool {
        self.selectors
            .iter()
            .any(|s| matches!(s, Selector::Port(_)))
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.selectors.iter().map(|s| s.to_string()).collect();
        write!(f, "{}", parts.join(" "))?;
        if let Some(n) = &self.service_name {
            write!(f, " (service {n})")?;
        }
        Ok(())
    }
}

/// What the selectors look at, read from /proc for one process.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub exe_name: String,
    pub exe_path: String,
    pub cmdline: String,
    pub cgroup: String,
    pub container_id: Option<String>,
    pub ports: HashSet<u16>,
}

impl Facts {
    /// None when the process is gone (or is a kernel thread: no executable).
    pub fn read(pid: u32, with_ports: bool) -> Option<Facts> {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let cmdline = process::command_args(pid).join(" ");
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let cgroup = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            .unwrap_or_default();
        let container_id = container::from_cgroup_file(&cgroups).container_id;
        Some(Facts {
            exe_name: exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            exe_path: exe.to_string_lossy().into_owned(),
            cmdline,
            cgroup,
            container_id,
            ports: if with_ports {
                listening_ports(pid)
            } else {
                HashSet::new()
            },
        })
    }
}

/// The TCP ports `pid` listens on: its socket inodes (from /proc/PID/fd) looked up in its
/// network namespace's tables (/proc/PID/net/tcp{,6}, state 0A = LISTEN).
pub fn listening_ports(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = fs::read_link(entry.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    let mut ports = HashSet::new();
    if inodes.is_empty() {
        return ports;
    }
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for (port, inode) in text.lines().skip(1).filter_map(listen_entry) {
            if inodes.contains(&inode) {
                ports.insert(port);
            }
        }
    }
    ports
}

/// `sl local_address rem_address st … inode` → (local port, inode) of a LISTEN row.
fn listen_entry(line: &str) -> Option<(u16, u64)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.get(3) != Some(&"0A") {
        return None;
    }
    let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
    let inode = cols.get(9)?.parse().ok()?;
    Some((port, inode))
}

/// Every live process matching a rule, with that rule: the start-up walk of /proc.
pub fn scan(rules: &[Rule]) -> Vec<(u32, usize)> {
    let with_ports = rules.iter().any(Rule::needs_ports);
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(facts) = Facts::read(pid, with_ports)
            && let Some(i) = rules.iter().position(|r| r.matches(&facts))
        {
            out.push((pid, i));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(exe_path: &str, cmdline: &str) -> Facts {
        Facts {
            exe_name: exe_path.rsplit('/').next().unwrap().to_string(),
            exe_path: exe_path.to_string(),
            cmdline: cmdline.to_string(),
            ..Facts::default()
        }
    }

    fn rule(sel: &[(&str, &str)]) -> Rule {
        Rule {
            selectors: sel
                .iter()
                .map(|(k, v)| Selector::parse(k, v).unwrap())
                .collect(),
            service_name: None,
        }
    }

    #[test]
    fn exe_globs_by_name_or_path() {
        let py = facts("/usr/bin/python3.11", "python3 -m app");
        assert!(rule(&[("exe", "python3*")]).matches(&py));
        assert!(rule(&[("exe", "python?.??")]).matches(&py));
        assert!(!rule(&[("exe", "python")]).matches(&py));
        assert!(rule(&[("exe", "/usr/bin/*")]).matches(&py));
        assert!(!rule(&[("exe", "/usr/*")]).matches(&py), "* stops at /");
        assert!(rule(&[("exe", "/usr/**")]).matches(&py));
        assert!(rule(&[("exe", "*.11")]).matches(&py));
        assert!(!rule(&[("exe", "node")]).matches(&py));
        assert!(rule(&[("exe", "a.b")]).matches(&facts("/x/a.b", "")));
        assert!(
            !rule(&[("exe", "a.b")]).matches(&facts("/x/aXb", "")),
            ". is literal"
        );
    }

    #[test]
    fn all_selectors_of_a_rule_must_match() {
        let f = facts("/usr/bin/python3.11", "python3 -m orders.api --port 8080");
        assert!(rule(&[("exe", "python3*"), ("cmdline", r"-m orders\.")]).matches(&f));
        assert!(!rule(&[("exe", "python3*"), ("cmdline", "cart")]).matches(&f));
        assert!(
            !Rule {
                selectors: vec![],
                service_name: None
            }
            .matches(&f)
        );
    }

    #[test]
    fn container_and_cgroup_selectors() {
        let mut f = facts("/usr/sbin/nginx", "nginx");
        f.cgroup = "/system.slice/docker-5e1f0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f.scope".into();
        f.container_id = container::from_cgroup_path(&f.cgroup).container_id;
        assert!(rule(&[("container", "5E1F0C2A9B8D")]).matches(&f));
        assert!(!rule(&[("container", "5e1f0c2a9b8e")]).matches(&f));
        assert!(rule(&[("cgroup", "/system.slice")]).matches(&f));
        assert!(rule(&[("cgroup", "/system.slice/")]).matches(&f));
        assert!(
            !rule(&[("cgroup", "/system.sli")]).matches(&f),
            "a path, not a prefix"
        );
        assert!(rule(&[("cgroup", "/")]).matches(&f));
    }

    #[test]
    fn bad_selectors_are_clear_errors() {
        for (k, v, want) in [
            ("port", "0", "not a TCP port"),
            ("port", "http", "not a TCP port"),
            ("cmdline", "(", "not a regular expression"),
            ("container", "xyz", "not a container id"),
            ("cgroup", "system.slice", "must be a cgroup path"),
            ("exe", "", "matches nothing"),
        ] {
            let err = Selector::parse(k, v).unwrap_err();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
    }

    #[test]
    fn listen_rows_from_the_kernel_format() {
        let row = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listen_entry(row), Some((8080, 4242)));
        let established = row.replace(" 0A ", " 01 ");
        assert_eq!(listen_entry(&established), None);
    }

    /// A real listening socket of this process is found by its port, and a real child process
    /// is found by a start-up scan.
    #[test]
    fn real_ports_and_scan() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
        let mut child = std::process::Command::new("sleep")
            .arg("30.5151")
            .spawn()
            .unwrap();
        let rules = [rule(&[("exe", "sleep"), ("cmdline", r"30\.5151")])];
        let found = scan(&rules);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found, vec![(child.id(), 0)]);
    }
}
