//! `ztrace check --pid …/--exe …`: for each process the flags select, what tracing it would
//! capture — the service name ztrace will use and why, its runtime and container, its TLS
//! library and whether ztrace can see into it, and the ports it listens on — without loading a
//! probe.

use crate::capture::{TlsTarget, process, select, tls_target};

/// Protocols are recognised from the bytes on each connection, on any port.
const PROTOCOLS: &str = "HTTP/1.x, HTTP/2 and gRPC, Redis, PostgreSQL, MySQL/MariaDB, DNS";

/// Prints the plan for `pids` and the processes `rules` select; false when one given PID is
/// not a process ztrace can trace.
pub fn report(pids: &[(u32, Option<String>)], rules: &[select::Rule]) -> bool {
    let mut ok = true;
    let mut chosen: Vec<(u32, Option<String>, String)> = Vec::new();
    for (pid, name) in pids {
        match process::validate(*pid) {
            Ok(()) => chosen.push((*pid, name.clone(), format!("--pid {pid}"))),
            Err(e) => {
                println!("FAIL  --pid {pid}: {e}");
                ok = false;
            }
        }
    }
    if !rules.is_empty() {
        let found = select::scan(rules);
        for rule in rules {
            let n = found
                .iter()
                .filter(|(_, r)| rules[*r].to_string() == rule.to_string())
                .count();
            println!(
                "{}  {rule}: {n} running process(es) match; processes that start later and match are traced from their exec",
                if n == 0 { "note" } else { "ok  " }
            );
        }
        for (pid, r) in found {
            if !chosen.iter().any(|(p, ..)| *p == pid) {
                chosen.push((pid, rules[r].service_name.clone(), rules[r].to_string()));
            }
        }
    }
    println!("protocols: {PROTOCOLS}, recognised from the traffic on any port");
    let mut tls_cache = tls_target::Cache::default();
    for (pid, name, why) in &chosen {
        let info = process::info(*pid, name.as_deref(), "");
        let how = if name.is_some() {
            "given"
        } else if info.service_name != info.executable_name && !info.runtime_name.is_empty() {
            "the program the interpreter runs"
        } else {
            "the process name"
        };
        println!(
            "process {pid} ({}), selected by {why}:",
            info.executable_path
        );
        println!("  service.name: {} ({how})", info.service_name);
        if !info.runtime_name.is_empty() {
            println!(
                "  runtime: {} {}",
                info.runtime_name,
                if info.runtime_version.is_empty() {
                    "(version unknown)"
                } else {
                    &info.runtime_version
                }
            );
        }
        if !info.container_id.is_empty() {
            println!("  container.id: {}", info.container_id);
        }
        let tls = match tls_cache.inspect(*pid) {
            Ok(TlsTarget::Probe(p)) => format!(
                "OpenSSL {}{} (probed: plaintext is decoded)",
                p.shown.display(),
                if p.executable {
                    ", exported by the executable"
                } else {
                    ""
                }
            ),
            Ok(TlsTarget::Uncovered(stack)) => {
                format!("{stack}: not decoded, its TLS traffic will not appear as spans")
            }
            Ok(TlsTarget::Nothing) => "no TLS library (plaintext traffic only)".into(),
            Err(e) => format!("not known ({e})"),
        };
        println!("  TLS: {tls}");
        let mut ports: Vec<u16> = select::listening_ports(*pid).into_iter().collect();
        ports.sort_unstable();
        if ports.is_empty() {
            println!("  listening: no TCP port (client spans only, unless it listens later)");
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            println!("  listening: TCP {} (server spans)", list.join(", "));
        }
    }
    if chosen.is_empty() && rules.is_empty() && pids.is_empty() {
        return ok;
    }
    if chosen.is_empty() {
        println!("no running process is selected yet");
    }
    ok
}
