//! The metrics signal end to end, as root on the real kernel: Python's `http.server` and curl
//! clients (followed children of a traced shell) traced by ztrace with a 1 s export interval;
//! the receiver in this process must get RED histograms with the right counts, buckets and
//! low-cardinality attributes, connection counters from accept and `sock:inet_sock_set_state`
//! (opened and refused), bytes per peer, and ztrace's own health metrics under its own Resource.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Result, ensure};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, metric::Data};
use ztrace_e2e::{
    harness::{
        Proc, closed_port, curl, free_port, privileged_or_skip, runtime_with_receiver,
        trace_server_and_clients,
    },
    signals::{ReceivedMetric, attr_int, attr_str},
};

const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Python's http.server on a free loopback port, serving `dir` (an index page written there);
/// waits until it answers.
fn http_server(dir: &Path) -> Result<(Proc, u16)> {
    let port = free_port()?;
    std::fs::write(dir.join("index.html"), "hello\n")?;
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Proc::new(child);
    for _ in 0..100 {
        if curl(&[format!("http://127.0.0.1:{port}/")]).is_ok() {
            return Ok((server, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("python3 -m http.server did not answer on port {port}")
}

fn pid_of(m: &ReceivedMetric) -> i64 {
    attr_int(&m.resource, "process.pid").unwrap_or(-1)
}

/// Cumulative temporality: each process's latest report of `name` holds its totals.
fn latest(metrics: &[ReceivedMetric], name: &str) -> HashMap<i64, ReceivedMetric> {
    metrics
        .iter()
        .filter(|m| m.metric.name == name)
        .map(|m| (pid_of(m), m.clone()))
        .collect()
}

fn hist_points(m: &ReceivedMetric) -> Vec<HistogramDataPoint> {
    match &m.metric.data {
        Some(Data::Histogram(h)) => {
            assert_eq!(h.aggregation_temporality, 2, "cumulative by default");
            h.data_points.clone()
        }
        _ => vec![],
    }
}

fn is(key: &'static str, want: &'static str) -> impl Fn(&[KeyValue]) -> bool {
    move |a: &[KeyValue]| attr_str(a, key).as_deref() == Some(want)
}

#[test]
fn red_network_and_self_metrics_reach_the_collector() -> Result<()> {
    if !privileged_or_skip("red_network_and_self_metrics_reach_the_collector") {
        return Ok(());
    }
    let site = ztrace_e2e::temp::TempDir::new("metrics")?;
    let (server, port) = http_server(&site)?;
    let (_refusing, closed) = closed_port()?;
    let (rt, receiver) = runtime_with_receiver()?;
    let base = format!("http://127.0.0.1:{port}");
    let script = format!(
        "sleep 4; for i in 1 2 3 4 5; do curl -s -o /dev/null {base}/; done; \
         for i in 1 2 3; do curl -s -o /dev/null {base}/missing$i; done; \
         curl -s -o /dev/null --max-time 2 http://127.0.0.1:{closed}/ ; sleep 1.5"
    );
    let spans = trace_server_and_clients(
        &rt,
        &receiver,
        server.pid(),
        &script,
        &["--metric-export-interval", "1s"],
        16,
    )?;
    ensure!(
        spans.len() >= 16,
        "expected 16 HTTP spans, got {}",
        spans.len()
    );
    let (requests, metrics) = {
        let got = receiver.signals();
        (got.metrics.len(), got.all_metrics())
    };
    ensure!(
        requests >= 3,
        "a 1 s interval over several seconds must give several metric exports, got {requests}"
    );
    let server_pid = i64::from(server.pid());

    // RED: server histogram of the traced server, per status.
    let srv = latest(&metrics, "http.server.request.duration");
    let srv = srv
        .get(&server_pid)
        .ok_or_else(|| anyhow::anyhow!("no http.server.request.duration for the server"))?;
    ensure!(srv.metric.unit == "s", "unit {}", srv.metric.unit);
    let points = hist_points(srv);
    let count_of = |status: i64| -> u64 {
        points
            .iter()
            .filter(|p| attr_int(&p.attributes, "http.response.status_code") == Some(status))
            .map(|p| p.count)
            .sum()
    };
    ensure!(
        count_of(200) == 5 && count_of(404) == 3,
        "server histogram counts: 200 → {}, 404 → {}; points {points:#?}",
        count_of(200),
        count_of(404)
    );
    for p in &points {
        ensure!(
            p.explicit_bounds == HTTP_BUCKETS,
            "bounds {:?}",
            p.explicit_bounds
        );
        ensure!(
            p.bucket_counts.iter().sum::<u64>() == p.count,
            "buckets {:?}",
            p.bucket_counts
        );
        ensure!(p.sum.unwrap_or(-1.0) > 0.0 && p.min.is_some() && p.max.is_some());
        ensure!(attr_str(&p.attributes, "http.request.method").as_deref() == Some("GET"));
        ensure!(attr_str(&p.attributes, "url.scheme").as_deref() == Some("http"));
        for forbidden in [
            "url.path",
            "url.full",
            "client.address",
            "client.port",
            "http.route",
        ] {
            ensure!(
                !p.attributes.iter().any(|kv| kv.key == forbidden),
                "high-cardinality attribute {forbidden} on {:?}",
                p.attributes
            );
        }
    }
    ensure!(
        attr_str(&srv.resource, "service.name").is_some_and(|s| !s.is_empty()),
        "the server's Resource"
    );

    // RED: the curl clients' histogram (several short-lived processes).
    let clients: u64 = latest(&metrics, "http.client.request.duration")
        .values()
        .flat_map(hist_points)
        .filter(|p| attr_int(&p.attributes, "server.port") == Some(i64::from(port)))
        .map(|p| p.count)
        .sum();
    ensure!(clients == 8, "client histogram count {clients}, want 8");

    // Network: accepted by the server, opened by the clients, one refused.
    let opened = latest(&metrics, "ztrace.tcp.connections.opened");
    let accepted = opened
        .get(&server_pid)
        .map_or(0, |m| m.sum_where(is("ztrace.connection.side", "server")));
    let connected: i64 = opened
        .values()
        .map(|m| {
            m.sum_where(|a| {
                is("ztrace.connection.side", "client")(a)
                    && attr_int(a, "server.port") == Some(i64::from(port))
            })
        })
        .sum();
    ensure!(
        accepted == 8 && connected == 8,
        "connections: server accepted {accepted}, clients opened {connected}; want 8 and 8"
    );
    let failed: i64 = latest(&metrics, "ztrace.tcp.connections.failed")
        .values()
        .map(|m| m.sum_where(|a| attr_int(a, "server.port") == Some(i64::from(closed))))
        .sum();
    ensure!(failed == 1, "refused connections: {failed}, want 1");
    let io = latest(&metrics, "process.network.io");
    let io = io
        .get(&server_pid)
        .ok_or_else(|| anyhow::anyhow!("no process.network.io for the server"))?;
    let peer = |a: &[KeyValue]| attr_str(a, "network.peer.address").as_deref() == Some("127.0.0.1");
    let received = io.sum_where(|a| is("network.io.direction", "receive")(a) && peer(a));
    let sent = io.sum_where(|a| is("network.io.direction", "transmit")(a) && peer(a));
    // Eight requests of at least 70 bytes in, eight responses with headers out.
    ensure!(
        received >= 8 * 70 && sent >= 8 * 100,
        "server bytes: received {received}, sent {sent}"
    );

    // Self metrics under ztrace's own Resource.
    let own: Vec<&ReceivedMetric> = metrics
        .iter()
        .filter(|m| attr_str(&m.resource, "service.name").as_deref() == Some("ztrace"))
        .collect();
    let own_latest = |name: &str| own.iter().rev().find(|m| m.metric.name == name).copied();
    let read = own_latest("ztrace.events.read").map_or(0, |m| m.sum_where(|_| true));
    ensure!(read > 50, "ztrace.events.read = {read}");
    let exported = own_latest("ztrace.spans.exported").map_or(-1, |m| m.sum_where(|_| true));
    ensure!(exported >= 1, "ztrace.spans.exported = {exported}");
    for name in [
        "ztrace.events.dropped",
        "ztrace.queue.dropped",
        "ztrace.export.failures",
        "ztrace.queue.depth",
        "ztrace.metrics.exported",
        "ztrace.link.timestamps",
    ] {
        ensure!(own_latest(name).is_some(), "self metric {name} missing");
    }
    // The curl clients' calls reached the server: linked by sequence number, and no
    // abstention (one request at a time per process).
    let links = own_latest("ztrace.links")
        .ok_or_else(|| anyhow::anyhow!("self metric ztrace.links missing"))?;
    let cross = links.sum_where(is("ztrace.link.outcome", "cross_process"));
    let abstained = links.sum_where(|a| {
        attr_str(a, "ztrace.link.outcome").is_some_and(|o| o.starts_with("abstained_"))
    });
    ensure!(
        cross >= 1 && abstained == 0,
        "ztrace.links: {cross} cross_process, {abstained} abstained"
    );
    ensure!(
        own_latest("ztrace.events.dropped").map_or(-1, |m| m.sum_where(|_| true)) == 0,
        "no kernel drops expected at this rate"
    );
    Ok(())
}

/// Runs `args` inside network namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Deletes the namespace when the test ends, however it ends.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

const RTX_SERVER: &str = "import socket, sys, time
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
print('PORT', s.getsockname()[1], flush=True)
c, _ = s.accept(); c.recv(16); time.sleep(1.0)
c.sendall(b'x' * 262144); c.close()
time.sleep(60)";

/// The retransmit server, busy meanwhile: it answers the client's pings on one connection while
/// a thread opens 2,000 connections (to the listener on 127.0.0.2 given as argv[1]) and holds
/// them, 80 every 100 ms: the kernel's socket → owner table of 1,024 turns over twice. Then, on
/// `go`, it answers as `RTX_SERVER` does.
const CHURN_SERVER: &str = "import resource, socket, sys, threading, time
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
print('PORT', s.getsockname()[1], flush=True)
c, _ = s.accept()
held = []
def churn():
    for _ in range(25):
        for _ in range(80): held.append(socket.create_connection(('127.0.0.2', int(sys.argv[1]))))
        time.sleep(0.1)
t = threading.Thread(target=churn); t.start()
while c.recv(16) != b'go': c.sendall(b'pong')
t.join(); time.sleep(1.0)
c.sendall(b'x' * 262144); c.close()
time.sleep(60)";

/// Pings for argv[2] seconds (one at a time, 20 ms apart), then sends `go`, says so, and counts
/// what the server sends until it closes.
const RTX_CLIENT: &str = "import socket, sys, time
c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
end = time.time() + float(sys.argv[2])
while time.time() < end:
    c.sendall(b'ping'); c.recv(16); time.sleep(0.02)
c.sendall(b'go'); print('go', flush=True)
n = 0
while True:
    b = c.recv(65536)
    if not b: break
    n += len(b)
print(n)";

/// What a retransmit case counted for the server's process (peer 127.0.0.1 only).
struct RtxCounts {
    retransmits: i64,
    accepted: i64,
    ztrace_stderr: String,
}

/// A retransmit on demand: inside a namespace of its own, `server` (traced, with ztrace's
/// `extra` flags) answers a second after the client's `go`; meanwhile the namespace's loopback
/// goes down, so the answer's segments are lost and TCP must retransmit them once it is back
/// up. `tcp:tcp_retransmit_skb` fires in timer context, where the current task is not the
/// server: the count must still land on the server's process. `filler` starts a listener on
/// 127.0.0.2 whose port the server gets as its argument. (The server stays alive afterwards:
/// ztrace stops by itself once every traced process is gone.)
fn retransmit_case(
    server: &str,
    filler: bool,
    ping_secs: &str,
    extra: &[&str],
) -> Result<RtxCounts> {
    use std::io::{BufRead, BufReader};
    let ns = Netns(format!("ztrace-rtx-{}", std::process::id()));
    ztrace_e2e::harness::run_ok(Command::new("ip").args(["netns", "add", &ns.0]))?;
    ztrace_e2e::harness::run_ok(&mut in_ns(&ns.0, &["ip", "link", "set", "lo", "up"]))?;
    let mut server_cmd = in_ns(&ns.0, &["python3", "-c", server]);
    let _listener = if filler {
        let (listener, port) = ztrace_e2e::harness::spawn_app(in_ns(
            &ns.0,
            &[
                "python3",
                "-c",
                "import socket, time
s = socket.socket(); s.bind(('127.0.0.2', 0)); s.listen(4096)
print('PORT', s.getsockname()[1], flush=True); time.sleep(120)",
            ],
        ))?;
        server_cmd.arg(port.to_string());
        Some(listener)
    } else {
        None
    };
    let (server, port) = ztrace_e2e::harness::spawn_app(server_cmd)?;
    let (rt, receiver) = runtime_with_receiver()?;
    let mut args = vec![
        "--pid".to_string(),
        server.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut ztrace = ztrace_e2e::harness::spawn_ztrace(&args)?;
    ztrace.wait_stderr("tracing 1 process(es)", Duration::from_secs(60))?;
    let mut client = in_ns(
        &ns.0,
        &["python3", "-c", RTX_CLIENT, &port.to_string(), ping_secs],
    )
    .stdout(Stdio::piped())
    .spawn()?;
    let mut out = BufReader::new(client.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    ensure!(line.trim() == "go", "the client said `{line}`");
    std::thread::sleep(Duration::from_millis(100));
    ztrace_e2e::harness::run_ok(&mut in_ns(&ns.0, &["ip", "link", "set", "lo", "down"]))?;
    std::thread::sleep(Duration::from_millis(1800));
    ztrace_e2e::harness::run_ok(&mut in_ns(&ns.0, &["ip", "link", "set", "lo", "up"]))?;
    line.clear();
    out.read_line(&mut line)?;
    client.wait()?;
    ensure!(
        line.trim() == "262144",
        "the client received `{line}` bytes"
    );
    ztrace.signal(libc::SIGINT);
    ensure!(
        ztrace.wait_exit(Duration::from_secs(30)) == Some(0),
        "ztrace failed:\n{}",
        ztrace.stderr_text()
    );
    let metrics = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        receiver.signals().all_metrics()
    });
    let server_pid = i64::from(server.pid());
    let count = |name: &str, side: Option<&'static str>| {
        latest(&metrics, name).get(&server_pid).map_or(0, |m| {
            m.sum_where(|a| {
                attr_str(a, "network.peer.address").as_deref() == Some("127.0.0.1")
                    && side.is_none_or(|side| is("ztrace.connection.side", side)(a))
            })
        })
    };
    Ok(RtxCounts {
        retransmits: count("ztrace.tcp.retransmits", None),
        accepted: count("ztrace.tcp.connections.opened", Some("server")),
        ztrace_stderr: ztrace.stderr_text(),
    })
}

#[test]
fn retransmits_are_attributed_to_the_owning_process() -> Result<()> {
    if !privileged_or_skip("retransmits_are_attributed_to_the_owning_process") {
        return Ok(());
    }
    let got = retransmit_case(RTX_SERVER, false, "0", &[])?;
    ensure!(
        got.retransmits >= 1,
        "no retransmit counted for the server; ztrace:\n{}",
        got.ztrace_stderr
    );
    ensure!(got.accepted == 1, "accepted {}", got.accepted);
    Ok(())
}

/// The kernel's socket → owner table (`--max-sockets`, least recently used out) must keep a
/// busy connection while new ones turn it over: its later retransmits still count for the
/// server, and it is not taken for a second accepted connection. The probes skip the table
/// lookup on a connection seen before; were the entry never looked up again, the table would
/// take it for unused and evict it first.
#[test]
fn a_busy_connection_keeps_its_owner_while_new_ones_turn_the_socket_table_over() -> Result<()> {
    if !privileged_or_skip(
        "a_busy_connection_keeps_its_owner_while_new_ones_turn_the_socket_table_over",
    ) {
        return Ok(());
    }
    let got = retransmit_case(CHURN_SERVER, true, "4", &["--max-sockets", "1024"])?;
    ensure!(
        got.retransmits >= 1,
        "no retransmit counted for the busy connection: its owner was forgotten; ztrace:\n{}",
        got.ztrace_stderr
    );
    ensure!(got.accepted == 1, "accepted {}", got.accepted);
    Ok(())
}

/// Bad metric settings are usage errors (exit code 2) naming the setting; no root needed.
#[test]
fn bad_metric_settings_are_usage_errors() {
    let pid = std::process::id().to_string();
    let cases: [(&[&str], (&str, &str), &str); 3] = [
        (
            &[],
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "sometimes",
            ),
            "cumulative, delta or lowmemory",
        ),
        (
            &[],
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
            "OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (
            &["--metric-export-interval", "0s"],
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            "positive duration",
        ),
    ];
    for (args, (var, value), needle) in cases {
        let out = Command::new(ztrace_e2e::harness::ztrace_bin())
            .args(["--pid", &pid])
            .args(args)
            .env(var, value)
            .output()
            .expect("run ztrace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(needle), "`{needle}` not in {stderr}");
        if args.is_empty() {
            // Ours are one line; flag values are checked by clap, in its own format.
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        }
    }
}
