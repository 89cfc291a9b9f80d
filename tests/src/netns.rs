//! "Hosts" for the cross-host tests and evaluation: network namespaces joined by veth pairs,
//! made and removed by the test (addresses only inside them), and the plumbing to run a
//! process, an agent or the OTLP receiver inside one of them.
//!
//! ```text
//!   host A 10.231.0.1 ── veth ── 10.231.0.2 host B 10.232.0.2 ── veth ── 10.232.0.1 host C
//!   (optional) host A 10.235.1.1 ── GW ── 10.235.2.1 host B      (GW masquerades, no agent)
//! ```
//!
//! Host C (optional) is a client host that runs no agent. Host A can reach a virtual service
//! address ([`VIP`]) that the caller DNATs to a server on B (iptables in A, Kubernetes-style),
//! and a second one ([`VIP_MASQ`]) whose connections also leave with a new, random source port
//! (MASQUERADE `--random-fully`, as container network plugins do for traffic leaving a node).
//! Host B can forward a node port ([`NODE_PORT`]) to its server and give the caller one of its
//! own addresses ([`B_NODE_SNAT`]) on the way, as kube-proxy does for node ports, while A
//! masquerades its connections to that port ([`Hosts::node_port`]).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    harness::{Proc, run_ok, ztrace_bin},
    receiver::Receiver,
};

pub const A_IP: &str = "10.231.0.1";
pub const B_IP: &str = "10.231.0.2";
/// Host B's address on the link to host C.
pub const B_IP_C: &str = "10.232.0.2";
pub const C_IP: &str = "10.232.0.1";
/// A virtual service address reachable from host A, DNAT'd by [`Hosts::dnat`].
pub const VIP: &str = "10.96.0.10";
/// A virtual service address reachable from host A, DNAT'd and masqueraded by
/// [`Hosts::masquerade`].
pub const VIP_MASQ: &str = "10.96.0.11";
pub const PEER_PORT: u16 = 4390;
/// Host B's node port, forwarded by [`Hosts::node_port`].
pub const NODE_PORT: u16 = 30080;
/// The address of host B's own that callers of [`NODE_PORT`] are given.
pub const B_NODE_SNAT: &str = "10.231.0.3";

/// The namespaces and veth pairs; removed on drop.
pub struct Hosts {
    pub a: String,
    pub b: String,
    /// The agent-less client host, when made.
    pub c: Option<String>,
    /// A NAT gateway without an agent on a second path from A to B, when made
    /// ([`Hosts::add_gateway`]).
    pub gw: Option<String>,
}

impl Hosts {
    /// Hosts A and B, and C when `with_c`.
    pub fn create(with_c: bool) -> Result<Self> {
        let id = std::process::id();
        let mut hosts = Hosts {
            a: format!("ztxa{id}"),
            b: format!("ztxb{id}"),
            c: None,
            gw: None,
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&["netns", "add", &hosts.a]).context("ip netns add (install iproute2)")?;
        ip(&["netns", "add", &hosts.b])?;
        let short = |s: String| s[..s.len().min(15)].to_string();
        let (va, vb) = (short(format!("zva{id}")), short(format!("zvb{id}")));
        veth(&hosts.a, &va, A_IP, &hosts.b, &vb, B_IP)?;
        // The service addresses, routed out of A's veth (DNAT rewrites them before they leave).
        for vip in [VIP, VIP_MASQ] {
            ip(&[
                "-n",
                &hosts.a,
                "route",
                "add",
                &format!("{vip}/32"),
                "dev",
                &va,
            ])?;
        }
        if with_c {
            let c = format!("ztxc{id}");
            ip(&["netns", "add", &c])?;
            hosts.c = Some(c.clone());
            let (vc, vbc) = (short(format!("zvc{id}")), short(format!("zvd{id}")));
            veth(&c, &vc, C_IP, &hosts.b, &vbc, B_IP_C)?;
        }
        Ok(hosts)
    }

    /// A command that runs inside namespace `ns`.
    pub fn exec(&self, ns: &str) -> Command {
        exec_in(ns)
    }

    /// A second path from A to B through a NAT gateway that runs no agent (as [`Gateway`]):
    /// A reaches B at [`GW_HOST_B`] through it, and B's server sees [`GW_B_SIDE`] as the caller.
    pub fn add_gateway(&mut self) -> Result<()> {
        let gw = format!("ztxg{}", std::process::id());
        self.gw = Some(gw.clone());
        gateway_between(&self.a, &gw, &self.b, "h")
    }

    /// In host A: TCP to `VIP:vport` goes to `to` instead (the client sees the VIP, the server
    /// its own address).
    pub fn dnat(&self, vport: u16, to: &str) -> Result<()> {
        self.dnat_from(VIP, vport, to)
    }

    /// In host A: TCP to `VIP_MASQ:vport` goes to `to` instead, from a random source port (the
    /// client sees the VIP and its own port, the server A's address and another port).
    pub fn masquerade(&self, vport: u16, to: &str) -> Result<()> {
        self.dnat_from(VIP_MASQ, vport, to)?;
        self.masquerade_in_a(&["-m", "conntrack", "--ctorigdst", VIP_MASQ])
    }

    /// In host A: TCP connections `matching` leave from random source ports.
    fn masquerade_in_a(&self, matching: &[&str]) -> Result<()> {
        let rule = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp"];
        let action = ["-j", "MASQUERADE", "--random-fully"];
        run_ok(self.exec(&self.a).args(rule).args(matching).args(action))
            .context("iptables MASQUERADE in host A")
    }

    /// In host B: TCP to `B_IP:NODE_PORT` goes to B's port `to_port`, and its caller gets a
    /// random port of [`B_NODE_SNAT`] (kube-proxy's node port with masquerading): B's server
    /// sees a caller on its own host and its own port, A's client B's address and the node port.
    /// A's connections to the node port also leave from random source ports (MASQUERADE in A).
    pub fn node_port(&self, to_port: u16) -> Result<()> {
        let b = |args: &[&str]| run_ok(self.exec(&self.b).args(args));
        b(&[
            "ip",
            "addr",
            "add",
            &format!("{B_NODE_SNAT}/32"),
            "dev",
            "lo",
        ])?;
        let node_port = NODE_PORT.to_string();
        b(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            B_IP,
            "-p",
            "tcp",
            "--dport",
            &node_port,
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{B_IP}:{to_port}"),
        ])
        .context("iptables DNAT in host B")?;
        b(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "-m",
            "conntrack",
            "--ctorigdstport",
            &node_port,
            "-j",
            "SNAT",
            "--to-source",
            B_NODE_SNAT,
            "--random-fully",
        ])
        .context("iptables SNAT in host B")?;
        // And A's connections to it leave from random source ports (a pod's traffic leaving its
        // node): both ends' NAT must be undone.
        self.masquerade_in_a(&["-d", B_IP, "--dport", &node_port])
    }

    fn dnat_from(&self, vip: &str, vport: u16, to: &str) -> Result<()> {
        run_ok(self.exec(&self.a).args([
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            vip,
            "-p",
            "tcp",
            "--dport",
            &vport.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ]))
        .context("iptables DNAT in host A (install iptables)")
    }
}

/// Host A's address behind the NAT gateway ([`Gateway`]).
pub const GW_HOST_A: &str = "10.235.1.1";
/// The gateway's address on A's link (A's default route).
pub const GW_A_SIDE: &str = "10.235.1.254";
/// The gateway's address on B's link: the caller B's server sees for every call from A.
pub const GW_B_SIDE: &str = "10.235.2.254";
/// Host B's address behind the gateway.
pub const GW_HOST_B: &str = "10.235.2.1";
/// A second client host behind the gateway ([`Gateway::create`] with `with_c`).
pub const GW_HOST_C: &str = "10.235.3.1";
/// The gateway's address on C's link.
pub const GW_C_SIDE: &str = "10.235.3.254";

/// Hosts A and B with a NAT gateway between them that runs no agent:
///
/// ```text
///   host A 10.235.1.1 ── veth ── 10.235.1.254 GW 10.235.2.254 ── veth ── 10.235.2.1 host B
/// ```
///
/// GW forwards between its links and masquerades what leaves towards B (`iptables -t nat -A
/// POSTROUTING -o <B's link> -j MASQUERADE`): B's server sees GW's address and a port GW chose,
/// and the translation is in GW's conntrack table, which neither host's agent can read. B routes
/// A's network through GW (untranslated), so B's agent can reach A's. Removed on drop.
pub struct Gateway {
    pub a: String,
    pub gw: String,
    pub b: String,
    /// A second client host behind the gateway (10.235.3.1), when made: B sees both A's and
    /// C's calls come from [`GW_B_SIDE`].
    pub c: Option<String>,
}

impl Gateway {
    /// A, GW and B, and C behind GW too when `with_c`.
    pub fn create(with_c: bool) -> Result<Self> {
        let id = std::process::id();
        let mut g = Gateway {
            a: format!("ztga{id}"),
            gw: format!("ztgg{id}"),
            b: format!("ztgb{id}"),
            c: None,
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        for ns in [&g.a, &g.b] {
            ip(&["netns", "add", ns]).context("ip netns add (install iproute2)")?;
        }
        gateway_between(&g.a, &g.gw, &g.b, "g")?;
        if with_c {
            let c = format!("ztgc{id}");
            ip(&["netns", "add", &c])?;
            g.c = Some(c.clone());
            let short = |s: String| s[..s.len().min(15)].to_string();
            let (vc, vgc) = (short(format!("zgc{id}")), short(format!("zgz{id}")));
            veth(&c, &vc, GW_HOST_C, &g.gw, &vgc, GW_C_SIDE)?;
            ip(&["-n", &c, "route", "add", "10.235.2.0/24", "via", GW_C_SIDE])?;
            ip(&[
                "-n",
                &g.b,
                "route",
                "add",
                "10.235.3.0/24",
                "via",
                GW_B_SIDE,
            ])?;
        }
        // The service address A DNATs ([`Gateway::dnat_in_a`]) leaves through the gateway.
        run_ok(Command::new("ip").args([
            "-n",
            &g.a,
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            GW_A_SIDE,
        ]))?;
        Ok(g)
    }

    /// A command that runs inside namespace `ns`.
    pub fn exec(&self, ns: &str) -> Command {
        exec_in(ns)
    }

    /// In host A: TCP to `VIP:vport` goes to `to` instead (DNAT in A's OUTPUT chain, then out
    /// through the gateway): A's client sees the VIP, B's server its own address and GW's.
    pub fn dnat_in_a(&self, vport: u16, to: &str) -> Result<()> {
        run_ok(self.exec(&self.a).args([
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
            &vport.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ]))
        .context("iptables DNAT in host A (install iptables)")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for ns in [
            Some(&self.a),
            Some(&self.gw),
            Some(&self.b),
            self.c.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Makes namespace `gw` (no agent) between existing namespaces `a` and `b`: A's 10.235.1.0/24
/// link and B's 10.235.2.0/24 link (each routed to the other through GW), forwarding on, and
/// what leaves towards B masqueraded. `tag` tells its veth devices from other gateways'.
fn gateway_between(a: &str, gw: &str, b: &str, tag: &str) -> Result<()> {
    let id = std::process::id();
    let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
    ip(&["netns", "add", gw]).context("ip netns add (install iproute2)")?;
    let short = |s: String| s[..s.len().min(15)].to_string();
    let (va, vga) = (short(format!("z{tag}a{id}")), short(format!("z{tag}x{id}")));
    let (vb, vgb) = (short(format!("z{tag}b{id}")), short(format!("z{tag}y{id}")));
    veth(a, &va, GW_HOST_A, gw, &vga, GW_A_SIDE)?;
    veth(b, &vb, GW_HOST_B, gw, &vgb, GW_B_SIDE)?;
    ip(&["-n", a, "route", "add", "10.235.2.0/24", "via", GW_A_SIDE])?;
    ip(&["-n", b, "route", "add", "10.235.1.0/24", "via", GW_B_SIDE])?;
    let in_gw = |args: &[&str]| run_ok(exec_in(gw).args(args));
    in_gw(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    in_gw(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        &vgb,
        "-j",
        "MASQUERADE",
    ])
    .context("iptables MASQUERADE in the gateway (install iptables)")
}

/// A command that runs inside namespace `ns`.
pub fn exec_in(ns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    cmd
}

/// A veth pair from `ns1` (device `d1`, address `ip1`/24) to `ns2` (`d2`, `ip2`/24), up.
fn veth(ns1: &str, d1: &str, ip1: &str, ns2: &str, d2: &str, ip2: &str) -> Result<()> {
    let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
    ip(&[
        "link", "add", d1, "netns", ns1, "type", "veth", "peer", "name", d2, "netns", ns2,
    ])?;
    for (ns, dev, addr) in [(ns1, d1, ip1), (ns2, d2, ip2)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [
            Some(&self.a),
            Some(&self.b),
            self.c.as_ref(),
            self.gw.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A tokio runtime and an OTLP receiver listening on `ip` inside namespace `ns`: the thread that
/// builds them enters it first (a socket keeps the namespace it was made in).
pub fn receiver_in(ns: &str, ip: &str) -> Result<(tokio::runtime::Runtime, Receiver)> {
    let path = format!("/var/run/netns/{ns}");
    let addr = format!("{ip}:0").parse()?;
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

/// A ztrace agent inside namespace `ns`, tracing `pids`, answering other agents on
/// `listen_ip:PEER_PORT` (None: peer channel off), exporting to `receiver`; returns once its
/// probes are attached.
pub fn spawn_agent(
    ns: &str,
    listen_ip: Option<&str>,
    pids: &str,
    receiver: &Receiver,
    secret: &Path,
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = exec_in(ns);
    cmd.arg(ztrace_bin())
        .args(["--pid", pids, "--otlp-endpoint", &receiver.endpoint()])
        .args(extra);
    if let Some(ip) = listen_ip {
        cmd.args(["--peer-listen", &format!("{ip}:{PEER_PORT}")])
            .arg("--peer-secret-file")
            .arg(secret);
    }
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
pub fn spawn_collecting(mut cmd: Command) -> Result<Proc> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let collect = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let buf = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = pipe {
            let sink = Arc::clone(&buf);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        buf
    };
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    Ok(Proc {
        child,
        stderr,
        stdout,
    })
}

/// SIGINT, then waits for a clean exit; returns stderr (the exit summary is in it).
pub fn stop(p: &mut Proc, what: &str) -> Result<String> {
    p.signal(libc::SIGINT);
    let code = p.wait_exit(Duration::from_secs(30));
    let text = p.stderr_text();
    if code != Some(0) {
        bail!("{what} exited with {code:?}:\n{text}");
    }
    Ok(text)
}

/// The `summary: cross-host links:` line of an agent's exit summary (empty when absent).
pub fn crosshost_summary(log: &str) -> String {
    log.lines()
        .find_map(|l| {
            l.find("summary: cross-host links:")
                .map(|i| l[i + "summary: ".len()..].to_string())
        })
        .unwrap_or_default()
}
