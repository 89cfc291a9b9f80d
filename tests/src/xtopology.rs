//! The cross-host evaluation, run for real (the truth and the score are [`crate::xeval`]'s):
//! hosts A, B and C as network namespaces ([`crate::netns`]), host A's Python service, host B's
//! Node.js service, and per shape fresh agents in A and B, the driver, and the agents' exit
//! summaries and CPU. One OTLP receiver, inside host B, takes both agents' spans.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    harness::{Proc, apps_dir, spawn_app},
    netns::{
        A_IP, B_IP, B_IP_C, GW_HOST_B, Hosts, NODE_PORT, VIP, VIP_MASQ, crosshost_summary,
        receiver_in, spawn_agent, spawn_collecting, stop,
    },
    temp::TempDir,
    topology::eval_span,
    xeval::{AgentStats, Config, Host, Run, ShapeScore, XShape, XSpan, identify, score_shape},
};

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may contain spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Host A's service listens on this port (its namespace is fresh: the port is free).
const A_PORT: u16 = 8080;

/// Builds the hosts, drives every shape of `config` and scores what the agents exported.
pub fn run(config: Config) -> Result<Run> {
    let mut hosts = Hosts::create(config.shapes.contains(&XShape::NoAgent))?;
    if config.shapes.contains(&XShape::Gateway) {
        hosts.add_gateway()?;
    }
    let dir = TempDir::new("xeval")?;
    let secret = dir.join("peer-secret");
    std::fs::write(&secret, "the-evaluation's-shared-peer-secret\n")?;
    let (rt, receiver) = receiver_in(&hosts.b, B_IP)?;

    // B: the event loop, calling back A's service.
    let mut node = hosts.exec(&hosts.b);
    node.arg("node")
        .arg(apps_dir().join("xhost_node.js"))
        .env("BIND", "0.0.0.0")
        .env("CALLBACK", format!("{A_IP}:{A_PORT}"));
    let (b_svc, b_port) = spawn_app(node).context("the Node.js service on B")?;
    // A: the thread-per-request service, calling B directly, pooled, and through the VIPs.
    hosts.dnat(80, &format!("{B_IP}:{b_port}"))?;
    hosts.masquerade(80, &format!("{B_IP}:{b_port}"))?;
    hosts.node_port(b_port)?;
    let mut py = hosts.exec(&hosts.a);
    py.arg("python3")
        .arg(apps_dir().join("xhost.py"))
        .arg("server")
        .env("BIND", "0.0.0.0")
        .env("PORT", A_PORT.to_string())
        .env("NEXT", format!("{B_IP}:{b_port}"))
        .env("VIA", format!("{VIP}:80"))
        .env("VIA_MASQ", format!("{VIP_MASQ}:80"))
        .env("VIA_NODE", format!("{B_IP}:{NODE_PORT}"))
        .env("VIA_GW", format!("{GW_HOST_B}:{b_port}"))
        .env("POOL", "4");
    let (a_svc, _) = spawn_app(py).context("the Python service on A")?;

    let mut shapes = Vec::new();
    for &shape in &config.shapes {
        let s = drive_shape(
            &hosts, shape, &config, &secret, &receiver, &a_svc, &b_svc, b_port,
        )
        .with_context(|| format!("shape {}", shape.name()))?;
        shapes.push((shape, s));
    }
    let (a_pid, b_pid) = (a_svc.pid(), b_svc.pid());
    drop((a_svc, b_svc));
    let received = rt.block_on(receiver.wait_for_spans(usize::MAX, Duration::from_secs(2)));
    let spans: Vec<XSpan> = received
        .iter()
        .map(|s| {
            let pid = s.resource_int("process.pid").unwrap_or(-1) as u32;
            let host = if pid == a_pid {
                Some(Host::A)
            } else if pid == b_pid {
                Some(Host::B)
            } else {
                None
            };
            XSpan {
                host,
                span: eval_span(s, None),
                clock_skew_ns: s.attr_int("ztrace.link.clock_skew_ns"),
            }
        })
        .collect();
    let mut run = Run {
        config,
        shapes: Vec::new(),
        unidentified: 0,
        unidentified_examples: Vec::new(),
        spans: spans.len(),
    };
    let mut all_ids = HashSet::new();
    for (shape, (ids, mut score)) in shapes {
        let scored = score_shape(shape, &spans, &ids);
        score = ShapeScore {
            failed: score.failed,
            agents: score.agents,
            drive_secs: score.drive_secs,
            ..scored
        };
        all_ids.extend(ids);
        run.shapes.push((shape, score));
    }
    for x in &spans {
        let known = x
            .host
            .and_then(|h| identify(h, x.span.kind, &x.span.label))
            .is_some_and(|(_, _, id)| all_ids.contains(&id));
        if !known {
            run.unidentified += 1;
            if run.unidentified_examples.len() < 5 {
                run.unidentified_examples.push(format!(
                    "{:?} {} `{}`",
                    x.host,
                    x.span.kind.name(),
                    x.span.label
                ));
            }
        }
    }
    Ok(run)
}

/// One shape: fresh agents, the driver, the agents' summaries. Returns the ids answered 200
/// and a partial score (failures, agents, time).
#[allow(clippy::too_many_arguments)]
fn drive_shape(
    hosts: &Hosts,
    shape: XShape,
    config: &Config,
    secret: &std::path::Path,
    receiver: &crate::receiver::Receiver,
    a_svc: &Proc,
    b_svc: &Proc,
    b_port: u16,
) -> Result<(Vec<String>, ShapeScore)> {
    let listen = |ip: &str| shape.peers().then(|| ip.to_string());
    // Behind the gateway, B's agent asks A's agent (at its address on the direct link) when
    // nothing answers at the gateway's.
    let fallback: &[&str] = if shape == XShape::Gateway {
        &["--peer-fallback", A_IP]
    } else {
        &[]
    };
    let mut agent_b = spawn_agent(
        &hosts.b,
        listen("0.0.0.0").as_deref(),
        &b_svc.pid().to_string(),
        receiver,
        secret,
        fallback,
    )?;
    let mut agent_a = if shape != XShape::NoAgent {
        Some(spawn_agent(
            &hosts.a,
            listen(A_IP).as_deref(),
            &a_svc.pid().to_string(),
            receiver,
            secret,
            &[],
        )?)
    } else {
        None
    };
    // CPU from here on: what tracing the shape cost, start-up (BTF, probe loading) excluded.
    let cpu_b = cpu_seconds(agent_b.pid());
    let cpu_a = agent_a.as_ref().map_or(0.0, |a| cpu_seconds(a.pid()));
    let per_client = config.requests.div_ceil(config.clients.max(1));
    let op = shape.hops()[0].prefix;
    let (ns, host, port) = match shape {
        XShape::NoAgent => (
            hosts.c.clone().context("host C was not made")?,
            B_IP_C.to_string(),
            b_port,
        ),
        _ => (hosts.a.clone(), "127.0.0.1".to_string(), A_PORT),
    };
    let mut cmd = hosts.exec(&ns);
    cmd.args(["python3"])
        .arg(apps_dir().join("xhost.py"))
        .arg("drive")
        .arg(&host)
        .arg(port.to_string())
        .arg(format!("{op}{}", shape.tag()))
        .arg(config.clients.to_string())
        .arg(per_client.to_string());
    let started = Instant::now();
    let mut driver = spawn_collecting(cmd)?;
    let code = driver.wait_exit(Duration::from_secs(1800));
    let drive_secs = started.elapsed().as_secs_f64();
    ensure!(
        code == Some(0),
        "driver exited with {code:?}: {}",
        driver.stderr_text()
    );
    // The driver prints at exit; let the collecting thread take it all.
    std::thread::sleep(Duration::from_millis(200));
    let out = driver.stdout_text();
    let ids: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .map(str::to_string)
        .collect();
    let failed = out.lines().filter(|l| l.starts_with("failed ")).count();
    // B holds spans up to the grace period + --peer-wait; A must answer meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    let mut agents = Vec::new();
    let mut stop_agent = |p: &mut Proc, host: Host, since: f64| -> Result<()> {
        let cpu = cpu_seconds(p.pid()) - since;
        let log = stop(
            p,
            if host == Host::A {
                "agent A"
            } else {
                "agent B"
            },
        )?;
        let mut stats = AgentStats::from_log(&log, &crosshost_summary(&log));
        stats.cpu_s = cpu;
        agents.push((host, stats));
        Ok(())
    };
    stop_agent(&mut agent_b, Host::B, cpu_b)?;
    if let Some(a) = &mut agent_a {
        stop_agent(a, Host::A, cpu_a)?;
    }
    Ok((
        ids,
        ShapeScore {
            failed,
            agents,
            drive_secs,
            ..ShapeScore::default()
        },
    ))
}
