//! The ground-truth linking evaluation, run for real: a topology of uninstrumented services,
//! traced by the ztrace binary under test, driven by concurrent end-user clients whose requests
//! each carry a unique id; the spans ztrace exports are scored by [`crate::eval`].
//!
//! The request *shapes* ([`Shape`]) share one nginx, one Python leaf service and one Redis, and
//! one ztrace traces them all; the driver drives the shapes one after the other, each with all
//! its clients. The sequential shape:
//!
//! ```text
//! driver (untraced, C keep-alive clients, GET /r/<client>-<n>, no traceparent)
//!   → nginx, 1 worker: event-loop reverse proxy, upstream keep-alive pool      (tests/apps/eval_nginx.conf.template)
//!     → Node.js: event loop, keep-alive http.Agent; per request, one after the other:
//!         → GET /a/<id>: hyper on a 4-worker tokio runtime, pooled hyper-util client (tests/apps/async-svc)
//!             → GET /b/<id>: Python ThreadingHTTPServer              (tests/apps/eval_threaded.py)
//!                 → SET kb:<id> v on redis-server, through a pool shared by the threads
//!         → GET /t/<id>: the same Python service
//!             → GET kt:<id> on redis-server
//! ```
//!
//! Each concurrent fan-out shape (ids `<letter><client>-<n>`; nginx routes on the letter):
//!
//! ```text
//! driver → nginx → fan-out service, GET /r/<id>; concurrently:
//!     → GET /b/<id>: the Python service → SET kb:<id> v on redis-server
//!     → GET /t/<id>: the Python service → GET kt:<id> on redis-server
//! ```
//!
//! with the fan-out service one of: aiohttp `gather` (tests/apps/eval_fanout_asyncio.py), Node.js
//! `Promise.all` (eval_fanout_node.js), a ThreadingHTTPServer handing both calls to a shared
//! `ThreadPoolExecutor` (eval_fanout_pool.py), Java `HttpClient.sendAsync` (EvalFanout.java, run
//! from source), Go goroutines + WaitGroup (eval_fanout.go, built here from the one file), and the
//! aiohttp service again with calls that carry a nonce instead of the request id (token-free: it
//! writes the nonce → id pairs to a file only the scorer reads).
//!
//! Every service is listening (port announced or connectable) before ztrace attaches, ztrace has
//! attached before the first request, and nothing talks to a service before the driver: so
//! every connection between the services is opened under the tracer's eyes, and every span of
//! the services belongs to an end-user request. Used by the CI test (tests/e2e_linking.rs) and
//! by the benchmark-scale run (`cargo xtask eval`, the `ztrace-eval` binary).

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::{
    eval::{EvalSpan, Kind, Score, Service, Shape},
    harness::{
        Nginx, Proc, apps_dir, free_port, runtime_with_receiver, spawn_app, spawn_nginx,
        spawn_ztrace, ztrace_bin,
    },
    receiver::ReceivedSpan,
    temp::TempDir,
};

/// How hard to drive the topology.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// End-user requests per shape.
    pub requests: usize,
    /// Concurrent clients, each on its own keep-alive connection to nginx.
    pub clients: usize,
    /// The shapes to drive, one after the other.
    pub shapes: &'static [Shape],
}

/// What one run produced.
pub struct Run {
    pub config: Config,
    /// Every span ztrace exported, reduced for scoring.
    pub spans: Vec<EvalSpan>,
    /// Ids of the end-user requests that completed with 200 (the truth).
    pub ids: Vec<String>,
    /// End-user requests that failed, with why (at most a few kept) and how many.
    pub failed: usize,
    pub failures: Vec<String>,
    /// Seconds the driver ran, in all.
    pub drive_secs: f64,
    /// Per shape: seconds driven, requests completed.
    pub per_shape: Vec<(Shape, f64, usize)>,
    /// Token-free calls: the nonce each carried → its request's id (from the service).
    pub aliases: HashMap<String, String>,
    /// ztrace's exit summary line.
    pub ztrace_summary: String,
}

impl Run {
    pub fn score(&self) -> Score {
        crate::eval::score(&self.spans, &self.ids, &self.aliases)
    }

    /// The run and its score as Markdown.
    pub fn report(&self, score: &Score) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## ztrace linking evaluation\n\n\
             {} end-user requests per shape from {} concurrent keep-alive clients (no \
             `traceparent`), shapes driven one after the other: {} completed, {} failed, in {:.1} s.\n",
            self.config.requests,
            self.config.clients,
            self.ids.len(),
            self.failed,
            self.drive_secs,
        );
        for (shape, secs, ok) in &self.per_shape {
            let _ = writeln!(
                t,
                "- `{}`: {ok} completed in {secs:.1} s ({:.0} requests/s)",
                shape.name(),
                *ok as f64 / secs.max(1e-9)
            );
        }
        t.push('\n');
        for f in &self.failures {
            let _ = writeln!(t, "- failed: {f}");
        }
        let _ = writeln!(t, "ztrace: `{}`\n", self.ztrace_summary);
        let _ = writeln!(t, "Spans exported: {}\n", census(&self.spans));
        t.push_str(&score.markdown());
        t
    }
}

/// The async service binary: $ZTRACE_EVAL_ASYNC_SVC, else next to the ztrace binary under test,
/// else the workspace's release build.
pub fn async_svc_bin() -> PathBuf {
    const NAME: &str = "ztrace-eval-async-svc";
    if let Some(p) = std::env::var_os("ZTRACE_EVAL_ASYNC_SVC") {
        return PathBuf::from(p);
    }
    let beside = ztrace_bin().with_file_name(NAME);
    if beside.is_file() {
        return beside;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release")).join(NAME)
}

/// The services, stopped when dropped (nginx first: it is the front door).
struct Services {
    nginx: Nginx,
    /// The sequential shape's Node.js and tokio services.
    sequential: Option<(Proc, Proc)>,
    /// The fan-out services, by shape.
    fanouts: Vec<(Shape, Proc)>,
    threaded: Proc,
    redis: Proc,
    /// Where the token-free service writes its nonces.
    truth_file: PathBuf,
}

/// The Go fan-out service, built from its one file into `dir` (standard library only: nothing
/// is fetched).
fn build_go(dir: &std::path::Path) -> Result<PathBuf> {
    let out = dir.join("eval_fanout");
    let mut go = Command::new("go");
    go.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(apps_dir().join("eval_fanout.go"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local");
    if std::env::var_os("GOCACHE").is_none() && std::env::var_os("HOME").is_none() {
        go.env("GOCACHE", std::env::temp_dir().join("ztrace-eval-go-cache"));
    }
    let o = go
        .output()
        .context("running `go build` (apt-get install golang-go)")?;
    if !o.status.success() {
        bail!(
            "go build eval_fanout.go failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

impl Services {
    fn start(dir: &std::path::Path, shapes: &[Shape]) -> Result<Services> {
        let redis_port = free_port()?;
        let redis = Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let redis = Proc::new(redis);
        wait_redis(redis_port)?;
        let mut py = Command::new("python3");
        py.arg(apps_dir().join("eval_threaded.py"))
            .arg(redis_port.to_string());
        let (threaded, threaded_port) = spawn_app(py).context("the Python service")?;
        let leaf = threaded_port.to_string();
        let truth_file = dir.join("token-free-truth.txt");
        let mut sequential = None;
        let mut fanouts = Vec::new();
        let mut upstreams = String::new();
        let mut locations = String::new();
        for &shape in shapes {
            let port = if shape == Shape::Sequential {
                let bin = async_svc_bin();
                if !bin.is_file() {
                    bail!(
                        "{} is missing: build it with `cargo build --release -p ztrace-eval-async-svc` \
                         (or point ZTRACE_EVAL_ASYNC_SVC at it)",
                        bin.display()
                    );
                }
                let mut rs = Command::new(&bin);
                rs.arg(&leaf);
                let (async_svc, async_port) = spawn_app(rs).context("the tokio service")?;
                let mut node = Command::new("node");
                node.arg(apps_dir().join("eval_node.js"))
                    .arg(async_port.to_string())
                    .arg(&leaf);
                let (node, node_port) =
                    spawn_app(node).context("the Node.js app (apt-get install nodejs)")?;
                sequential = Some((node, async_svc));
                node_port
            } else {
                let (cmd, what) = match shape {
                    Shape::Asyncio | Shape::TokenFree => {
                        let mut c = Command::new("python3");
                        c.arg(apps_dir().join("eval_fanout_asyncio.py")).arg(&leaf);
                        if shape == Shape::TokenFree {
                            c.arg(&truth_file);
                        }
                        (c, "the aiohttp service (pip install aiohttp)")
                    }
                    Shape::NodeAll => {
                        let mut c = Command::new("node");
                        c.arg(apps_dir().join("eval_fanout_node.js")).arg(&leaf);
                        (c, "the Node.js fan-out service")
                    }
                    Shape::ThreadPool => {
                        let mut c = Command::new("python3");
                        c.arg(apps_dir().join("eval_fanout_pool.py")).arg(&leaf);
                        (c, "the thread-pool service")
                    }
                    Shape::Java => {
                        let mut c = Command::new("java");
                        // The JDK server closes idle connections after 30 s by default: nginx
                        // keeps its upstream connections for the whole run.
                        c.arg("-Dsun.net.httpserver.idleInterval=600")
                            .arg(apps_dir().join("EvalFanout.java"))
                            .arg(&leaf);
                        (c, "the Java service (apt-get install default-jdk-headless)")
                    }
                    Shape::Go => {
                        let mut c = Command::new(build_go(dir)?);
                        c.arg(&leaf);
                        (c, "the Go service")
                    }
                    Shape::Sequential => unreachable!(),
                };
                let (proc, port) = spawn_app(cmd).context(what)?;
                fanouts.push((shape, proc));
                port
            };
            let name = format!("up_{}", shape.name());
            let _ = writeln!(
                upstreams,
                "    upstream {name} {{\n        server 127.0.0.1:{port};\n        keepalive 16;\n    }}"
            );
            let location = if shape.tag().is_empty() {
                "/r/".to_string()
            } else {
                format!("^~ /r/{}", shape.tag())
            };
            let _ = writeln!(
                locations,
                "        location {location} {{\n            proxy_pass http://{name};\n            \
                 proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}"
            );
        }
        let nginx = spawn_nginx(
            &apps_dir().join("eval_nginx.conf.template"),
            &dir.join("nginx"),
            &[("UPSTREAMS", upstreams), ("LOCATIONS", locations)],
        )?;
        Ok(Services {
            nginx,
            sequential,
            fanouts,
            threaded,
            redis,
            truth_file,
        })
    }

    /// The process ids ztrace is given (nginx's master: its workers are followed).
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![
            self.nginx.master.pid(),
            self.threaded.pid(),
            self.redis.pid(),
        ];
        if let Some((node, async_svc)) = &self.sequential {
            pids.extend([node.pid(), async_svc.pid()]);
        }
        pids.extend(self.fanouts.iter().map(|(_, p)| p.pid()));
        pids
    }

    fn service_of(&self, pid: u32, parent: Option<u32>) -> Option<Service> {
        let nginx = self.nginx.master.pid();
        if pid == nginx || parent == Some(nginx) || self.nginx.workers.contains(&pid) {
            return Some(Service::Nginx);
        }
        let mut known = vec![
            (self.threaded.pid(), Service::Threaded),
            (self.redis.pid(), Service::Redis),
        ];
        if let Some((node, async_svc)) = &self.sequential {
            known.extend([
                (node.pid(), Service::Node),
                (async_svc.pid(), Service::Async),
            ]);
        }
        for (shape, p) in &self.fanouts {
            known.push((p.pid(), shape.hops()[2].service));
        }
        known.into_iter().find_map(|(p, s)| (p == pid).then_some(s))
    }

    /// The token-free service's nonce → request id pairs.
    fn aliases(&self) -> HashMap<String, String> {
        std::fs::read_to_string(&self.truth_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (nonce, id) = l.split_once(' ')?;
                Some((nonce.to_string(), id.to_string()))
            })
            .collect()
    }
}

fn wait_redis(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        });
        if pong.is_ok_and(|p| p) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the topology, attaches ztrace to it, drives it and returns what ztrace exported.
pub fn run(config: Config) -> Result<Run> {
    if config.clients == 0 || config.requests == 0 || config.shapes.is_empty() {
        bail!("the evaluation needs at least one shape, one client and one request");
    }
    let dir = TempDir::new("eval")?;
    let (rt, receiver) = runtime_with_receiver()?;
    let services = Services::start(&dir, config.shapes)?;
    let pids = services.pids();
    let mut args = vec![
        "--pid".to_string(),
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ];
    args.extend(["--otlp-endpoint".into(), receiver.endpoint()]);
    args.push("--db-query-text".into());
    let mut ztrace = spawn_ztrace(&args)?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;

    let started = Instant::now();
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    let mut per_shape = Vec::new();
    for &shape in config.shapes {
        let t = Instant::now();
        let (ok, failed) = drive(services.nginx.port, config, shape.tag());
        per_shape.push((shape, t.elapsed().as_secs_f64(), ok.len()));
        ids.extend(ok);
        failures.extend(failed);
    }
    let drive_secs = started.elapsed().as_secs_f64();

    // Let the last spans through the pipeline, then stop ztrace: it flushes on the way out.
    std::thread::sleep(Duration::from_secs(1));
    ztrace.signal(libc::SIGINT);
    let code = ztrace.wait_exit(Duration::from_secs(60));
    if code != Some(0) {
        bail!("ztrace exited with {code:?}:\n{}", ztrace.stderr_text());
    }
    let stderr = ztrace.stderr_text();
    // ZTRACE_EVAL_STDERR=FILE keeps ztrace's whole log of the run (with ZTRACE_TEST_LOG).
    if let Some(path) = std::env::var_os("ZTRACE_EVAL_STDERR") {
        std::fs::write(path, &stderr).context("writing ZTRACE_EVAL_STDERR")?;
    }
    let ztrace_summary = stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once("summary: ").map(|(_, s)| s.to_string()))
        .unwrap_or_else(|| "(no summary line)".into());
    let expected = ids
        .iter()
        .filter_map(|id| Shape::of_id(id))
        .map(|s| s.hops().len())
        .sum();
    let received = rt.block_on(receiver.wait_for_spans(expected, Duration::from_secs(5)));
    let spans = received
        .iter()
        .map(|s| {
            let pid = s.resource_int("process.pid").unwrap_or(-1) as u32;
            let parent = s.resource_int("process.parent_pid").map(|p| p as u32);
            eval_span(s, services.service_of(pid, parent))
        })
        .collect();
    let aliases = services.aliases();
    drop(services);
    let failed = failures.len();
    Ok(Run {
        config,
        spans,
        ids,
        failed,
        failures: failures.into_iter().take(10).collect(),
        drive_secs,
        per_shape,
        aliases,
        ztrace_summary,
    })
}

/// Reduces a received span to what the scorer reads: the label that carries the request id.
pub fn eval_span(s: &ReceivedSpan, service: Option<Service>) -> EvalSpan {
    let kind = match SpanKind::try_from(s.span.kind) {
        Ok(SpanKind::Server) => Kind::Server,
        Ok(SpanKind::Client) => Kind::Client,
        _ => Kind::Other,
    };
    let label = s
        .attr_str("db.query.text")
        .or_else(|| s.attr_str("url.path"))
        .or_else(|| s.attr_str("url.full").map(|u| url_path(&u).to_string()))
        .unwrap_or_else(|| s.span.name.clone());
    EvalSpan {
        service,
        kind,
        label,
        trace_id: s.span.trace_id.clone(),
        span_id: s.span.span_id.clone(),
        parent_span_id: s.span.parent_span_id.clone(),
        start_ns: s.span.start_time_unix_nano,
        end_ns: s.span.end_time_unix_nano,
    }
}

/// The path (and query) of an absolute URL: `http://h:1/a/b?c` → `/a/b?c`.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// The end-user clients: `config.clients` threads, each with a keep-alive connection to nginx,
/// sending `GET /r/<tag><client>-<n>` one after the other. Returns the ids answered 200 with the
/// id in the body, and a description of every failure.
fn drive(port: u16, config: Config, tag: &'static str) -> (Vec<String>, Vec<String>) {
    let threads: Vec<_> = (0..config.clients)
        .map(|c| {
            let n = config.requests / config.clients
                + usize::from(c < config.requests % config.clients);
            std::thread::spawn(move || client(port, tag, c, n))
        })
        .collect();
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for t in threads {
        match t.join() {
            Ok((ok, failed)) => {
                ids.extend(ok);
                failures.extend(failed);
            }
            Err(_) => failures.push("a client thread panicked".into()),
        }
    }
    (ids, failures)
}

fn client(port: u16, tag: &str, c: usize, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::with_capacity(n);
    let mut failed = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for i in 0..n {
        let id = format!("{tag}{c}-{i}");
        let result = (|| -> Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                s.set_nodelay(true)?;
                conn = Some(BufReader::new(s));
            }
            let r = conn.as_mut().expect("connected above");
            r.get_mut().write_all(
                format!("GET /r/{id} HTTP/1.1\r\nHost: eval\r\nUser-Agent: ztrace-eval\r\n\r\n")
                    .as_bytes(),
            )?;
            let (status, body) = read_response(r)?;
            if status != 200 || !body.contains(&id) {
                bail!("status {status}, body {body:?}");
            }
            Ok(())
        })();
        match result {
            Ok(()) => ok.push(id),
            Err(e) => {
                failed.push(format!("/r/{id}: {e:#}"));
                conn = None;
            }
        }
    }
    (ok, failed)
}

/// Reads one HTTP/1.1 response with a Content-Length body (what nginx sends here).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, String)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            bail!("connection closed in the headers");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                bail!("unexpected Transfer-Encoding {v}");
            }
        }
    }
    let mut body = vec![0u8; length.context("no Content-Length")?];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Spans per service and kind, for a quick look when something is off.
pub fn census(spans: &[EvalSpan]) -> String {
    let mut counts: HashMap<(String, &str), usize> = HashMap::new();
    for s in spans {
        let svc = s
            .service
            .map_or("unknown".to_string(), |s| s.name().to_string());
        *counts.entry((svc, s.kind.name())).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort();
    v.into_iter()
        .map(|((s, k), n)| format!("{s} {k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths() {
        assert_eq!(url_path("http://node_app/r/1-2"), "/r/1-2");
        assert_eq!(url_path("http://127.0.0.1:80/a/x?y"), "/a/x?y");
        assert_eq!(url_path("http://h"), "/");
    }
}
