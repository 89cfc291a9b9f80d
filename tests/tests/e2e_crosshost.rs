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
//!
//! The second test runs the cross-host evaluation (`ztrace_e2e::xeval`) at CI scale: a
//! thread-per-request Python server on A calling a Node.js event loop on B (per-thread keep-alive
//! connections, a pool shared by the threads, a DNAT'd service address, one whose source ports A
//! masquerades, B's node port with both hosts' NAT, a NAT gateway without an agent), calls back
//! from B to A, and a third host without an agent; it asserts the issue's targets per shape.
//!
//! Another restarts host A's agent mid-run (killed, started again a second later with the same
//! flags) while A's clients keep calling B: the requests made once it is back are linked, none
//! wrongly (B's agent asks A's again within its backoff, not after `DOWN_FOR`).
//!
//! A fourth puts a NAT gateway that runs no agent between client hosts A and C and server host
//! B (B's agent asks its `--peer-fallback` agents without the caller's endpoint), A and C making
//! the same requests: no wrong parent, recall ≥ 0.95.

use std::{collections::HashMap, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use ztrace_e2e::{
    harness::{Proc, apps_dir, privileged_or_skip, spawn_app},
    netns::{
        A_IP, B_IP, GW_A_SIDE, GW_B_SIDE, GW_HOST_A, GW_HOST_B, GW_HOST_C, Gateway, Hosts, VIP,
        crosshost_summary, receiver_in, spawn_agent, spawn_collecting, stop,
    },
    receiver::ReceivedSpan,
    temp::TempDir,
    xeval::{self, XShape},
    xtopology,
};

const CLIENTS: usize = 16;
const REQUESTS: usize = 20;
const NO_AGENT_REQUESTS: usize = 5;

/// A scratch directory (removed when the test ends) holding the secret both agents share.
fn peer_secret(tag: &str) -> Result<(TempDir, std::path::PathBuf)> {
    let dir = TempDir::new(tag)?;
    let secret = dir.join("peer-secret");
    std::fs::write(&secret, "a-test-secret-shared-by-both-agents\n")?;
    Ok((dir, secret))
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

/// `xhost.py server` bound to `bind`, run by `cmd` (a namespace's `exec`).
fn xhost_server(mut cmd: Command, bind: &str) -> Command {
    cmd.args(["python3"])
        .arg(apps_dir().join("xhost.py"))
        .arg("server")
        .env("BIND", bind);
    cmd
}

/// A server span's parent against the client span of the same path.
enum Parented {
    Root,
    /// That client span, in its trace.
    Right,
    /// Another span, or another trace.
    Wrong,
}

fn parented(s: &ReceivedSpan, clients_by_path: &HashMap<String, &ReceivedSpan>) -> Parented {
    let parent = s.parent_span_id_hex();
    match clients_by_path.get(&path(s)) {
        _ if parent.is_empty() => Parented::Root,
        Some(c) if c.span_id_hex() == parent && c.trace_id_hex() == s.trace_id_hex() => {
            Parented::Right
        }
        _ => Parented::Wrong,
    }
}

/// Waits (up to 120 s) for a clients script to finish, which must succeed.
fn clients_done(clients: &mut Proc, what: &str) -> Result<()> {
    let code = clients.wait_exit(Duration::from_secs(120));
    ensure!(
        code == Some(0),
        "{what} exited with {code:?}: {}",
        clients.stderr_text()
    );
    Ok(())
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
    let hosts = Hosts::create(false)?;
    let (_dir, secret) = peer_secret("xhost")?;
    let (rt, receiver) = receiver_in(&hosts.b, B_IP)?;

    // Host A's server, which B's server calls back for /call/ requests.
    let (a_server, a_port) = spawn_app(xhost_server(hosts.exec(&hosts.a), A_IP))?;

    // Host B: the server and its agent.
    let mut server_cmd = xhost_server(hosts.exec(&hosts.b), B_IP);
    server_cmd.env("CALLBACK", format!("{A_IP}:{a_port}"));
    let (server, port) = spawn_app(server_cmd)?;
    let b_pid = server.pid().to_string();
    let mut agent_b = spawn_agent(&hosts.b, Some(B_IP), &b_pid, &receiver, &secret, &[])?;

    // Host A: traced clients, keep-alive, concurrent.
    hosts.dnat(80, &format!("{B_IP}:{port}"))?;
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
    let mut agent_a = spawn_agent(&hosts.a, Some(A_IP), &a_pids, &receiver, &secret, &[])?;
    clients_done(&mut traced, "traced clients")?;
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
        match parented(s, &clients_by_path) {
            Parented::Root => {
                roots += 1;
                eprintln!(
                    "left a root: {p} (start {} ns)",
                    s.span.start_time_unix_nano
                );
            }
            Parented::Right => {
                right += 1;
                via_vip += usize::from(p.starts_with("/item/v"));
            }
            Parented::Wrong => {
                wrong += 1;
                eprintln!(
                    "wrong parent for {p}: {parent} ({:?})",
                    by_id.get(&parent).map(|x| path(x))
                );
            }
        }
    }
    let summary = crosshost_summary;
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
        crosshost_summary(&b_log).contains("cross-host links:") && !b_log.contains(" 0 no agent"),
        "B did not count the agent-less lookups\n{report}"
    );
    Ok(())
}

/// Host A's agent is killed while A's paced clients call B, and started again with the same
/// flags a second later. B's agent had been asking it: it must ask it again as soon as it is
/// back, not take A for agent-less for `DOWN_FOR` (5 s). Of the requests made once A's agent
/// is back (its "tracing" line), ≥ 95% are linked, in the first 5 s too; no wrong parent at all.
#[test]
fn crosshost_links_resume_as_soon_as_a_restarted_agent_is_back() -> Result<()> {
    if !privileged_or_skip("crosshost_links_resume_as_soon_as_a_restarted_agent_is_back") {
        return Ok(());
    }
    const PER_CLIENT: usize = 250;
    let hosts = Hosts::create(false)?;
    let (_dir, secret) = peer_secret("xrestart")?;
    let (rt, receiver) = receiver_in(&hosts.b, B_IP)?;
    let (server, port) = spawn_app(xhost_server(hosts.exec(&hosts.b), B_IP))?;
    let mut agent_b = spawn_agent(
        &hosts.b,
        Some(B_IP),
        &server.pid().to_string(),
        &receiver,
        &secret,
        &[],
    )?;
    // A's clients: a request every 50 ms per client, about 13 s in all, from 3 s on.
    let mut cmd = hosts.exec(&hosts.a);
    cmd.args(["bash", "-c"])
        .arg(format!(
            "set -e; sleep 3; python3 {} clients {B_IP} {port} /item/r {CLIENTS} {PER_CLIENT}",
            apps_dir().join("xhost.py").display()
        ))
        .env("PAUSE", "0.05");
    let mut traced = spawn_collecting(cmd)?;
    let pids = traced.pid().to_string();
    let mut agent_a = spawn_agent(&hosts.a, Some(A_IP), &pids, &receiver, &secret, &[])?;
    // Let B ask A for a while, then A's agent dies (no exit path) and comes back.
    std::thread::sleep(Duration::from_secs(5));
    agent_a.signal(libc::SIGKILL);
    agent_a.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let mut agent_a = spawn_agent(&hosts.a, Some(A_IP), &pids, &receiver, &secret, &[])?;
    let back_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    clients_done(&mut traced, "traced clients")?;
    std::thread::sleep(Duration::from_secs(4));
    let a_log = stop(&mut agent_a, "ztrace on host A (restarted)")?;
    let b_log = stop(&mut agent_b, "ztrace on host B")?;
    drop(server);

    let spans = rt.block_on(receiver.wait_for_spans(usize::MAX, Duration::from_secs(3)));
    let clients_by_path: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.span.kind == 3)
        .map(|s| (path(s), s))
        .collect();
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.span.kind == 2 && path(s).starts_with("/item/r"))
        .collect();
    // (right, wrong, roots) of the server spans, all of them and those started after `from_ns`
    // (and before `to_ns`).
    let count = |from_ns: u64, to_ns: u64| {
        let (mut right, mut wrong, mut roots) = (0usize, 0usize, 0usize);
        for s in servers
            .iter()
            .filter(|s| (from_ns..to_ns).contains(&s.span.start_time_unix_nano))
        {
            match parented(s, &clients_by_path) {
                Parented::Root => roots += 1,
                Parented::Right => right += 1,
                Parented::Wrong => wrong += 1,
            }
        }
        (right, wrong, roots)
    };
    let all = count(0, u64::MAX);
    let after = count(back_ns, u64::MAX);
    let first5 = count(back_ns, back_ns + 5_000_000_000);
    let report = format!(
        "server spans (right, wrong, roots): all {all:?} of {} requests; made after A's agent \
         was back {after:?}; in its first 5 s {first5:?}\nA: {}\nB: {}",
        CLIENTS * PER_CLIENT,
        crosshost_summary(&a_log),
        crosshost_summary(&b_log)
    );
    eprintln!("{report}");
    ensure!(all.1 == 0, "wrong cross-host parents\n{report}");
    for (what, (right, _, roots)) in [("after the restart", after), ("in its first 5 s", first5)] {
        let n = right + roots;
        ensure!(
            n >= CLIENTS * 40,
            "too few requests {what} to tell ({n})\n{report}"
        );
        ensure!(
            right * 100 >= n * 95,
            "{right} of {n} requests {what} linked\n{report}"
        );
    }
    Ok(())
}

/// The cross-host evaluation's shapes at CI scale, its targets asserted.
#[test]
fn crosshost_eval_shapes_meet_the_targets() -> Result<()> {
    if !privileged_or_skip("crosshost_eval_shapes_meet_the_targets") {
        return Ok(());
    }
    let run = xtopology::run(xeval::Config {
        requests: 320,
        clients: CLIENTS,
        shapes: XShape::ALL.to_vec(),
    })?;
    let report = run.markdown();
    eprintln!("{report}");
    let misses = run.target_failures();
    ensure!(misses.is_empty(), "targets missed: {misses:?}\n{report}");
    // Every link an agent counted as outside its caller's window is marked on its span.
    for (shape, s) in &run.shapes {
        let counted: u64 = s.agents.iter().map(|(_, a)| a.skewed).sum();
        ensure!(
            s.marked_skew as u64 == counted,
            "{}: {} spans marked with a clock skew, the agents counted {counted}\n{report}",
            shape.name(),
            s.marked_skew
        );
    }
    // The agent-less host's lookups were asked and answered "no agent", not lost.
    let (_, none) = run
        .shapes
        .iter()
        .find(|(s, _)| *s == XShape::NoAgent)
        .context("the no-agent shape ran")?;
    let b = none.agents.iter().map(|(_, a)| a.no_agent).sum::<u64>();
    ensure!(
        b as usize >= none.requests * 95 / 100,
        "{b} lookups counted `no agent` of {}\n{report}",
        none.requests
    );
    Ok(())
}

/// Tail sampling across hosts: both agents run the same policy list, each of whose rules can only
/// match on one host — "backend" (B's server, `--pid PID=backend`) requests to `/item/b…`, and
/// "frontend" (A's clients) requests to `/item/a…`. On its own, each agent would keep its half of
/// those traces and drop the other half; with the votes over the peer channel, every trace either
/// host keeps is exported whole (A's CLIENT span and B's SERVER span, linked), and `/item/n…`
/// requests, which no rule keeps, are exported by neither.
#[test]
fn tail_sampling_votes_keep_cross_host_traces_whole() -> Result<()> {
    if !privileged_or_skip("tail_sampling_votes_keep_cross_host_traces_whole") {
        return Ok(());
    }
    const PER_BATCH: usize = 10;
    let hosts = Hosts::create(false)?;
    let (dir, secret) = peer_secret("xvote")?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        r#"
[tail_sampling]
decision_wait = "500ms"
vote_wait = "5s"

[[tail_sampling.policies]]
name = "backend-b"
type = "and"
[[tail_sampling.policies.and.and_sub_policy]]
name = "service"
type = "string_attribute"
string_attribute = { key = "service.name", values = ["backend"] }
[[tail_sampling.policies.and.and_sub_policy]]
name = "path"
type = "string_attribute"
string_attribute = { key = "url.path", values = ["/item/b.*"], enabled_regex_matching = true }

[[tail_sampling.policies]]
name = "frontend-a"
type = "and"
[[tail_sampling.policies.and.and_sub_policy]]
name = "service"
type = "string_attribute"
string_attribute = { key = "service.name", values = ["frontend"] }
[[tail_sampling.policies.and.and_sub_policy]]
name = "url"
type = "string_attribute"
string_attribute = { key = "url.full", values = [".*/item/a.*"], enabled_regex_matching = true }
"#,
    )?;
    let config_arg = config.to_string_lossy().to_string();
    let (rt, receiver) = receiver_in(&hosts.b, B_IP)?;

    let (server, port) = spawn_app(xhost_server(hosts.exec(&hosts.b), B_IP))?;
    let b_pids = format!("{}=backend", server.pid());
    let mut agent_b = spawn_agent(
        &hosts.b,
        Some(B_IP),
        &b_pids,
        &receiver,
        &secret,
        &["--config", &config_arg],
    )?;
    let mut traced = clients(
        &hosts,
        &[
            (B_IP, port, "/item/a"),
            (B_IP, port, "/item/b"),
            (B_IP, port, "/item/n"),
        ],
        PER_BATCH,
        3,
    )?;
    // An idle process keeps A's agent up after the clients exit (B asks it, and votes come late).
    let mut idle_cmd = hosts.exec(&hosts.a);
    idle_cmd.args(["sleep", "300"]);
    let idle = spawn_collecting(idle_cmd)?;
    let a_pids = format!("{}=frontend,{}", traced.pid(), idle.pid());
    let mut agent_a = spawn_agent(
        &hosts.a,
        Some(A_IP),
        &a_pids,
        &receiver,
        &secret,
        &["--config", &config_arg],
    )?;
    clients_done(&mut traced, "traced clients")?;
    // Decision wait, vote wait and the linker's holding, with room to spare.
    std::thread::sleep(Duration::from_secs(8));
    let a_log = stop(&mut agent_a, "ztrace on host A")?;
    let b_log = stop(&mut agent_b, "ztrace on host B")?;
    drop((server, idle));

    let batch = CLIENTS * PER_BATCH;
    let spans = rt.block_on(receiver.wait_for_spans(4 * batch, Duration::from_secs(10)));
    let by_id: HashMap<String, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id_hex(), s)).collect();
    let mut whole: HashMap<&str, usize> = HashMap::new();
    let (mut halves, mut unkept_exported) = (Vec::new(), 0);
    for s in &spans {
        let p = path(s);
        let prefix = &p[..p.len().min(7)];
        if prefix == "/item/n" {
            unkept_exported += 1;
            continue;
        }
        match s.span.kind {
            // B's server span: whole when its parent, A's client span, was exported too.
            2 => match by_id.get(&s.parent_span_id_hex()) {
                Some(c) if c.span.kind == 3 && c.trace_id_hex() == s.trace_id_hex() => {
                    *whole
                        .entry(if prefix == "/item/a" { "a" } else { "b" })
                        .or_default() += 1;
                }
                _ => halves.push(format!("server span {p} without its client")),
            },
            // A's client span: whole when a server span names it as parent.
            3 => {
                let id = s.span_id_hex();
                if !spans.iter().any(|x| x.parent_span_id_hex() == id) {
                    halves.push(format!("client span {p} without its server"));
                }
            }
            _ => {}
        }
    }
    let vote_line = |log: &str| {
        log.lines()
            .find(|l| l.contains("summary (tail sampling votes)"))
            .unwrap_or("no vote summary")
            .to_string()
    };
    let report = format!(
        "{} spans; whole traces kept by A's rule {}, by B's rule {} (of {batch} each); {} halves; \
         {unkept_exported} spans of requests no rule keeps\nA: {}\nB: {}",
        spans.len(),
        whole.get("a").unwrap_or(&0),
        whole.get("b").unwrap_or(&0),
        halves.len(),
        vote_line(&a_log),
        vote_line(&b_log),
    );
    eprintln!("{report}");
    for h in halves.iter().take(10) {
        eprintln!("  {h}");
    }
    ensure!(
        unkept_exported == 0,
        "requests no rule keeps were exported\n{report}"
    );
    for side in ["a", "b"] {
        ensure!(
            whole.get(side).copied().unwrap_or(0) >= batch * 98 / 100,
            "traces kept by {side}'s rule not whole on both hosts\n{report}"
        );
    }
    ensure!(
        halves.len() <= batch * 2 / 100,
        "traces exported by one host only\n{report}"
    );
    // Each agent kept the other's traces because of a vote, and said so.
    for (who, log) in [("A", &a_log), ("B", &b_log)] {
        let line = vote_line(log);
        let kept_by_peer: usize = line
            .split(", ")
            .find_map(|p| {
                p.split(" kept here because")
                    .next()?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        ensure!(
            kept_by_peer >= batch * 95 / 100,
            "{who} kept {kept_by_peer} traces for the other host's vote\n{report}"
        );
    }
    Ok(())
}

/// A NAT gateway between the hosts that runs no agent ([`Gateway`]): the clients of A and of a
/// second host C behind it call B's server through GW, which masquerades them, so B's server sees
/// GW's address and a port GW chose for every call, and the translation is in a conntrack table
/// neither agent can read. B's agent asks GW's address, finds no agent there, and asks its
/// fallback peers (`--peer-fallback`: A's and C's agents, and GW's A-side address, where no agent
/// listens either) without the caller's endpoint. A's and C's direct calls are the *same*
/// requests (same paths, so the same digests): only the sequence numbers tell them apart. A also
/// calls a service address it DNATs to B (A's agent then matches the server through its
/// conntrack table). Asserts: no server span on B gets a wrong parent (another path, another
/// trace, or a client span already parent of another server span), ≥ 95 % of each batch are
/// linked, and B reports how it asked.
#[test]
fn crosshost_through_a_nat_gateway_without_an_agent() -> Result<()> {
    if !privileged_or_skip("crosshost_through_a_nat_gateway_without_an_agent") {
        return Ok(());
    }
    let g = Gateway::create(true)?;
    let c_ns = g.c.clone().context("host C behind the gateway")?;
    let (_dir, secret) = peer_secret("xgw")?;
    let (rt, receiver) = receiver_in(&g.b, GW_HOST_B)?;

    let (server, port) = spawn_app(xhost_server(g.exec(&g.b), GW_HOST_B))?;
    let fallback = format!("{GW_HOST_A},{GW_HOST_C},{GW_A_SIDE}");
    let mut agent_b = spawn_agent(
        &g.b,
        Some(GW_HOST_B),
        &server.pid().to_string(),
        &receiver,
        &secret,
        &["--peer-fallback", &fallback],
    )?;
    let app = apps_dir().join("xhost.py");
    g.dnat_in_a(80, &format!("{GW_HOST_B}:{port}"))?;
    // Per client host: traced clients (after a delay, so its agent attaches to the shell first),
    // an idle process that keeps the agent up while B asks after the calls, and the agent.
    let client_host = |ns: &str, ip: &str, script: String| -> Result<(Proc, Proc, Proc)> {
        let mut cmd = g.exec(ns);
        cmd.args(["bash", "-c", &format!("set -e; sleep 3; {script}")]);
        let traced = spawn_collecting(cmd)?;
        let mut idle_cmd = g.exec(ns);
        idle_cmd.args(["sleep", "300"]);
        let idle = spawn_collecting(idle_cmd)?;
        let agent = spawn_agent(
            ns,
            Some(ip),
            &format!("{},{}", traced.pid(), idle.pid()),
            &receiver,
            &secret,
            &[],
        )?;
        Ok((traced, idle, agent))
    };
    let direct = format!(
        "python3 {} clients {GW_HOST_B} {port} /item/g {CLIENTS} {REQUESTS}",
        app.display()
    );
    let (mut traced_a, idle_a, mut agent_a) = client_host(
        &g.a,
        GW_HOST_A,
        format!(
            "{direct}; python3 {} clients {VIP} 80 /item/v {CLIENTS} {REQUESTS}",
            app.display()
        ),
    )?;
    let (mut traced_c, idle_c, mut agent_c) = client_host(&c_ns, GW_HOST_C, direct.clone())?;
    clients_done(&mut traced_a, "A's traced clients")?;
    clients_done(&mut traced_c, "C's traced clients")?;
    // A's and C's agents stay up while B asks (B holds its spans up to a few seconds).
    std::thread::sleep(Duration::from_secs(4));
    let a_log = stop(&mut agent_a, "ztrace on host A")?;
    let c_log = stop(&mut agent_c, "ztrace on host C")?;
    let b_log = stop(&mut agent_b, "ztrace on host B")?;
    drop((server, idle_a, idle_c));

    let per_batch = CLIENTS * REQUESTS;
    let n = 3 * per_batch;
    let spans = rt.block_on(receiver.wait_for_spans(2 * n, Duration::from_secs(15)));
    let mut clients_by_path: HashMap<String, Vec<&ReceivedSpan>> = HashMap::new();
    for s in spans.iter().filter(|s| s.span.kind == 3) {
        clients_by_path.entry(path(s)).or_default().push(s);
    }
    let client_spans: usize = clients_by_path.values().map(Vec::len).sum();
    let servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.span.kind == 2).collect();
    // The gateway really translated: B's server spans name GW's address as the caller.
    let via_gw = servers
        .iter()
        .filter(|s| {
            s.span
                .attributes
                .iter()
                .any(|kv| format!("{:?}", kv.value).contains(GW_B_SIDE))
        })
        .count();
    let (mut right, mut wrong, mut roots, mut via_vip) = (0, 0, 0, 0);
    let mut parents_taken = std::collections::HashSet::new();
    for s in &servers {
        let p = path(s);
        let parent = s.parent_span_id_hex();
        if parent.is_empty() {
            roots += 1;
            continue;
        }
        let candidate = clients_by_path.get(&p).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.span_id_hex() == parent && c.trace_id_hex() == s.trace_id_hex())
        });
        // One client span is the parent of one server span: A's and C's requests of one path
        // must not share a parent.
        if candidate && parents_taken.insert(parent.clone()) {
            right += 1;
            via_vip += usize::from(p.starts_with("/item/v"));
        } else {
            wrong += 1;
            eprintln!("wrong parent for {p}: {parent}");
        }
    }
    let recall = right as f64 / n as f64;
    let report = format!(
        "through the gateway: {client_spans} client spans, {} server spans ({via_gw} naming the \
         gateway as the caller): {right} linked right ({via_vip} through A's DNAT), {wrong} \
         wrong, {roots} roots (of {n} requests, {per_batch} of them the same requests from A \
         and C): recall {recall:.3}\nA: {}\nC: {}\nB: {}\nA: {}\nC: {}\nB: {}",
        servers.len(),
        crosshost_summary(&a_log),
        crosshost_summary(&c_log),
        crosshost_summary(&b_log),
        channel_summary(&a_log),
        channel_summary(&c_log),
        channel_summary(&b_log)
    );
    eprintln!("{report}");
    ensure!(
        client_spans >= n * 95 / 100 && servers.len() >= n * 95 / 100,
        "spans missing\n{report}"
    );
    ensure!(
        via_gw >= n * 95 / 100,
        "the gateway did not translate\n{report}"
    );
    ensure!(wrong == 0, "wrong cross-host parents\n{report}");
    ensure!(
        recall >= 0.95,
        "cross-host recall through the gateway {recall:.3} < 0.95\n{report}"
    );
    ensure!(
        via_vip >= per_batch * 95 / 100,
        "calls through A's service address not linked\n{report}"
    );
    ensure!(
        channel_summary(&b_log).contains("of fallback peers without the caller's endpoint"),
        "B did not say how it asked\n{report}"
    );
    Ok(())
}

/// The `summary (peer channel)` line of an agent's exit summary.
fn channel_summary(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("summary (peer channel)"))
        .unwrap_or("no peer channel summary")
}
