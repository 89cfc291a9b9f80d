//! Cross-host links, as root: two "hosts" as network namespaces joined by a veth pair (made and
//! removed by the test, addresses only inside them), one ztrace per namespace running inside it
//! and tracing that host's processes, both exporting to one OTLP receiver that listens inside
//! host B. Host A's clients (16 threads, one keep-alive connection each, many requests) call a
//! thread-per-request server on host B.
//!
//! Shapes: calls straight to B's address; calls to a service address DNAT'd (iptables in A) to
//! B's; calls whose handling on B calls back to a server on A in the same request. Asserts: every
//! cross-host server span is the child of the other host's CLIENT span for that request, in its
//! trace (no wrong parent at all, recall ≥ 0.95), call-backs end in the first caller's trace;
//! then, with A's agent stopped (a client host without an agent), B's server spans stay roots —
//! zero wrong links — and B counts them by reason.

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use ztrace_e2e::{
    harness::{Proc, apps_dir, privileged_or_skip, run_ok, spawn_app, ztrace_bin},
    receiver::{ReceivedSpan, Receiver},
};

const A_IP: &str = "10.231.0.1";
/// A virtual service address on host A, DNAT'd to the server on host B.
const VIP: &str = "10.96.0.10";
const B_IP: &str = "10.231.0.2";
const PEER_PORT: u16 = 4390;
const CLIENTS: usize = 16;
const REQUESTS: usize = 20;
const NO_AGENT_REQUESTS: usize = 5;

/// Two namespaces and a veth pair between them; removed on drop.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn create() -> Result<Self> {
        let id = std::process::id();
        let hosts = Hosts {
            a: format!("ztxa{id}"),
            b: format!("ztxb{id}"),
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&["netns", "add", &hosts.a]).context("ip netns add (install iproute2)")?;
        ip(&["netns", "add", &hosts.b])?;
        let (va, vb) = (format!("zva{id}"), format!("zvb{id}"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        ip(&[
            "link", "add", va, "netns", &hosts.a, "type", "veth", "peer", "name", vb, "netns",
            &hosts.b,
        ])?;
        for (ns, dev, addr) in [(&hosts.a, va, A_IP), (&hosts.b, vb, B_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // A service address on host A, translated to the server's (Kubernetes-style DNAT).
        ip(&[
            "-n",
            &hosts.a,
            "route",
            "add",
            &format!("{VIP}/32"),
            "dev",
            va,
        ])?;
        Ok(hosts)
    }

    fn exec(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A tokio runtime and an OTLP receiver whose socket lives in namespace `ns`: the thread that
/// builds them enters it first (a socket keeps the namespace it was made in).
fn receiver_in(ns: &str) -> Result<(tokio::runtime::Runtime, Receiver)> {
    let path = format!("/var/run/netns/{ns}");
    let addr = format!("{B_IP}:0").parse()?;
    std::thread::spawn(move || -> Result<_> {
        let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a namespace fd we own.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let receiver = rt.block_on(Receiver::start_on(addr))?;
        Ok((rt, receiver))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
}

fn spawn_agent(
    hosts: &Hosts,
    ns: &str,
    listen_ip: &str,
    pids: &str,
    receiver: &Receiver,
    secret: &Path,
) -> Result<Proc> {
    let mut cmd = hosts.exec(ns);
    cmd.arg(ztrace_bin()).args([
        "--pid".to_string(),
        pids.to_string(),
        "--otlp-endpoint".to_string(),
        receiver.endpoint(),
        "--peer-listen".to_string(),
        format!("{listen_ip}:{PEER_PORT}"),
        "--peer-secret-file".to_string(),
        secret.display().to_string(),
    ]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env(
        "RUST_LOG",
        std::env::var("ZTRACE_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    let mut p = spawn_collecting(cmd)?;
    p.wait_stderr("process(es)", Duration::from_secs(60))?;
    Ok(p)
}

/// Starts `cmd` with stdout and stderr collected (like the harness's ztrace).
fn spawn_collecting(mut cmd: Command) -> Result<Proc> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr);
    let pipe = child.stderr.take().context("stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    Ok(Proc {
        child,
        stderr,
        stdout: Arc::default(),
    })
}

/// Client batches in namespace A, started after `delay_s` (so a ztrace can attach to the shell
/// first and follow the clients as its children): `CLIENTS` threads, `requests` each, for every
/// (host, port, path) of `to`, one batch after the other.
fn clients(hosts: &Hosts, to: &[(&str, u16, &str)], requests: usize, delay_s: u32) -> Result<Proc> {
    let app = apps_dir().join("xhost.py");
    let mut script = format!("set -e; sleep {delay_s}");
    for (host, port, prefix) in to {
        script += &format!(
            "; python3 {} clients {host} {port} {prefix} {CLIENTS} {requests}",
            app.display()
        );
    }
    let mut cmd = hosts.exec(&hosts.a);
    cmd.args(["bash", "-c", &script]);
    spawn_collecting(cmd)
}

fn stop(p: &mut Proc, what: &str) -> Result<String> {
    p.signal(libc::SIGINT);
    let code = p.wait_exit(Duration::from_secs(30));
    let text = p.stderr_text();
    if code != Some(0) {
        bail!("{what} exited with {code:?}:\n{text}");
    }
    Ok(text)
}

fn path(s: &ReceivedSpan) -> String {
    s.attr_str("url.path")
        .or_else(|| {
            s.attr_str("url.full").map(|u| {
                u.splitn(4, '/')
                    .nth(3)
                    .map(|p| format!("/{p}"))
                    .unwrap_or(u)
            })
        })
        .unwrap_or_default()
}

#[test]
fn crosshost_links_client_spans_to_remote_server_spans() -> Result<()> {
    if !privileged_or_skip("crosshost_links_client_spans_to_remote_server_spans") {
        return Ok(());
    }
    let hosts = Hosts::create()?;
    let dir = std::env::temp_dir().join(format!("ztrace-xhost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join("peer-secret");
    std::fs::write(&secret, "a-test-secret-shared-by-both-agents\n")?;
    let (rt, receiver) = receiver_in(&hosts.b)?;

    // Host A's server, which B's server calls back for /call/ requests.
    let mut a_server_cmd = hosts.exec(&hosts.a);
    a_server_cmd
        .args(["python3"])
        .arg(apps_dir().join("xhost.py"))
        .arg("server")
        .env("BIND", A_IP);
    let (a_server, a_port) = spawn_app(a_server_cmd)?;

    // Host B: the server and its agent.
    let mut server_cmd = hosts.exec(&hosts.b);
    server_cmd
        .args(["python3"])
        .arg(apps_dir().join("xhost.py"))
        .arg("server")
        .env("BIND", B_IP)
        .env("CALLBACK", format!("{A_IP}:{a_port}"));
    let (server, port) = spawn_app(server_cmd)?;
    let b_pid = server.pid().to_string();
    let mut agent_b = spawn_agent(&hosts, &hosts.b, B_IP, &b_pid, &receiver, &secret)?;

    // Host A: traced clients, keep-alive, concurrent.
    run_ok(hosts.exec(&hosts.a).args([
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        VIP,
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{B_IP}:{port}"),
    ]))
    .context("iptables DNAT in host A (install iptables)")?;
    let mut traced = clients(
        &hosts,
        &[
            (B_IP, port, "/item/t"),
            (VIP, 80, "/item/v"),
            (B_IP, port, "/call/c"),
        ],
        REQUESTS,
        3,
    )?;
    // Host A's agent traces its server and the clients (and so outlives them: it stops by
    // itself when everything it traces has exited).
    let a_pids = format!("{},{}", traced.pid(), a_server.pid());
    let mut agent_a = spawn_agent(&hosts, &hosts.a, A_IP, &a_pids, &receiver, &secret)?;
    let code = traced.wait_exit(Duration::from_secs(120));
    ensure!(
        code == Some(0),
        "traced clients exited with {code:?}: {}",
        traced.stderr_text()
    );
    // A's agent must stay up while B asks (B holds its spans up to a few seconds).
    std::thread::sleep(Duration::from_secs(4));
    let a_log = stop(&mut agent_a, "ztrace on host A")?;
    drop(a_server);

    // Host A without an agent: B's agent finds nobody to ask.
    let mut untraced = clients(&hosts, &[(B_IP, port, "/item/n")], NO_AGENT_REQUESTS, 0)?;
    let code = untraced.wait_exit(Duration::from_secs(120));
    ensure!(code == Some(0), "untraced clients exited with {code:?}");
    std::thread::sleep(Duration::from_secs(4));
    let b_log = stop(&mut agent_b, "ztrace on host B")?;
    drop(server);

    // Direct, through the service address, and calls whose handling on B calls back to A
    // (two cross-host server spans each).
    let traced_n = 4 * CLIENTS * REQUESTS;
    let untraced_n = CLIENTS * NO_AGENT_REQUESTS;
    let spans =
        rt.block_on(receiver.wait_for_spans(2 * traced_n + untraced_n, Duration::from_secs(15)));
    let clients_by_path: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.span.kind == 3 && !path(s).starts_with("/item/n"))
        .map(|s| (path(s), s))
        .collect();
    let by_id: HashMap<String, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    let servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.kind == 2).collect();
    let (mut right, mut wrong, mut roots) = (0, 0, 0);
    let (mut no_agent_roots, mut no_agent_linked, mut via_vip) = (0, 0, 0);
    for s in &servers {
        let p = path(s);
        let parent = s.parent_span_id_hex();
        if p.starts_with("/item/n") {
            if parent.is_empty() {
                no_agent_roots += 1;
            } else {
                no_agent_linked += 1;
            }
            continue;
        }
        match (parent.is_empty(), clients_by_path.get(&p)) {
            (true, _) => {
                roots += 1;
                eprintln!(
                    "left a root: {p} (start {} ns)",
                    s.span.start_time_unix_nano
                );
            }
            (false, Some(c))
                if c.span_id_hex() == parent && c.trace_id_hex() == s.trace_id_hex() =>
            {
                right += 1;
                via_vip += usize::from(p.starts_with("/item/v"));
            }
            _ => {
                wrong += 1;
                eprintln!(
                    "wrong parent for {p}: {parent} ({:?})",
                    by_id.get(&parent).map(|x| path(x))
                );
            }
        }
    }
    let summary = |log: &str| {
        log.lines()
            .filter(|l| l.contains("cross-host links"))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let report = format!(
        "client spans: {}; cross-host server spans: {} linked right ({via_vip} through \
         DNAT), {} wrong, {} roots (of {traced_n} requests); with no agent on A: {no_agent_roots} roots, {no_agent_linked} \
         linked (of {untraced_n})\nA: {}\nB: {}",
        clients_by_path.len(),
        right,
        wrong,
        roots,
        summary(&a_log),
        summary(&b_log)
    );
    eprintln!("{report}");
    // The outcomes as self-metrics too (`ztrace.links`, cumulative): the largest value any
    // agent reported for an outcome.
    let metrics = receiver.signals().all_metrics();
    let outcome = |name: &str| {
        metrics
            .iter()
            .filter(|m| m.metric.name == "ztrace.links")
            .map(|m| {
                m.sum_where(|a| {
                    a.iter().any(|kv| {
                        kv.key == "ztrace.link.outcome" && format!("{:?}", kv.value).contains(name)
                    })
                })
            })
            .max()
            .unwrap_or(0)
    };
    let (metric_linked, metric_no_agent) = (outcome("\"cross_host\""), outcome("no_peer_agent"));
    let report = format!(
        "{report}\nself-metrics: ztrace.links cross_host {metric_linked}, unlinked_no_peer_agent \
         {metric_no_agent}"
    );
    eprintln!("{}", report.lines().last().unwrap_or_default());
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        clients_by_path.len() >= traced_n * 95 / 100,
        "A's client spans missing\n{report}"
    );
    ensure!(wrong == 0, "wrong cross-host parents\n{report}");
    let recall = right as f64 / traced_n as f64;
    ensure!(
        recall >= 0.95,
        "cross-host recall {recall:.3} < 0.95\n{report}"
    );
    // Calls back from B to A: A's client → B's server → B's call → A's server, one trace.
    let call_traces: HashMap<String, String> = clients_by_path
        .iter()
        .filter(|(p, _)| p.starts_with("/call/c"))
        .map(|(p, c)| (p.trim_start_matches("/call/").to_string(), c.trace_id_hex()))
        .collect();
    let callback_whole = servers
        .iter()
        .filter(|s| {
            let p = path(s);
            p.ends_with("-cb")
                && call_traces
                    .get(p.trim_start_matches("/item/").trim_end_matches("-cb"))
                    .is_some_and(|t| *t == s.trace_id_hex())
        })
        .count();
    ensure!(
        callback_whole >= CLIENTS * REQUESTS * 95 / 100,
        "{callback_whole} call-backs from B to A in the caller's trace\n{report}"
    );
    // The DNAT really happened: A's calls name the service address, B saw the server's own.
    let named_vip = clients_by_path
        .iter()
        .filter(|(p, c)| {
            p.starts_with("/item/v")
                && c.span
                    .attributes
                    .iter()
                    .any(|kv| format!("{:?}", kv.value).contains(VIP))
        })
        .count();
    ensure!(
        named_vip == CLIENTS * REQUESTS,
        "{named_vip} calls through the service address name it\n{report}"
    );
    ensure!(
        via_vip >= CLIENTS * REQUESTS * 95 / 100,
        "DNAT'd calls not linked\n{report}"
    );
    ensure!(
        no_agent_linked == 0,
        "links made without an agent on A\n{report}"
    );
    ensure!(
        no_agent_roots >= untraced_n * 95 / 100,
        "server spans of the agent-less host missing\n{report}"
    );
    ensure!(
        metric_linked as usize >= 3 * CLIENTS * REQUESTS * 95 / 100
            && metric_no_agent as usize >= untraced_n * 95 / 100,
        "cross-host outcomes missing from the self-metrics\n{report}"
    );
    ensure!(
        b_log.contains("cross-host links:") && !b_log.contains(" 0 no agent"),
        "B did not count the agent-less lookups\n{report}"
    );
    Ok(())
}
