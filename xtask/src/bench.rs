//! `cargo xtask bench [--quick]`: what tracing costs the traced application (and everything else
//! on the host), measured side by side in one run.
//!
//! Every scenario runs the same load in rounds that alternate the conditions (untraced, traced,
//! and for nginx "bystander": ztrace tracing another, idle process), reversing the order every
//! other round, because these machines are noisy. Each round gives a ratio condition ÷ untraced;
//! the table shows the median ratio and its spread (min–max) over the rounds. Nothing here passes
//! or fails on the numbers: targets are printed beside them.
//!
//! For nginx saturated, a "CPU control" condition runs no tracer at all while a thread burns as
//! much CPU as ztrace did: what that CPU costs the server on this machine, whoever spends it.
//! Then one traced run with `--probe-stats` gives the kernel-side cost per probe, one bystander
//! run with it what an untraced process pays per request (from the kernel's statistics: nginx's
//! CPU time varies too much between rounds to show 1 %), and a recording of each server is
//! replayed on one core (`ztrace replay --throughput`) for the userspace pipeline's speed.
//!
//! All traffic stays on 127.0.0.1; every server and ztrace started here is stopped on the way
//! out, error or not (see [`Proc`]).

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{is_root, output_ok, root, run, say};

/// Round length and count: `--quick` is a smoke run; the default stays under ~6 minutes.
#[derive(Clone, Copy)]
struct Plan {
    rounds: usize,
    secs: u32,
    warmup_secs: u32,
}

const FULL: Plan = Plan {
    rounds: 5,
    secs: 7,
    warmup_secs: 2,
};
const QUICK: Plan = Plan {
    rounds: 3,
    secs: 3,
    warmup_secs: 1,
};

/// What the targets say (printed, never asserted).
const TARGET_THROUGHPUT: f64 = 0.95;
const TARGET_P99: f64 = 1.10;
const TARGET_BYSTANDER: f64 = 0.99;
const TARGET_RSS_MIB: f64 = 64.0;

/// A run during which other processes used more than this share of the CPUs is flagged.
const BUSY_PCT: f64 = 10.0;

pub fn bench(quick: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads eBPF probes and installs nginx and wrk: run it as root (sudo cargo xtask bench)"
        );
    }
    install()?;
    let ztrace = crate::build()?;
    let plan = if quick { QUICK } else { FULL };
    let started = Instant::now();
    let work = TempDir::new()?;
    let clk_tck = output_ok(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    let load_before = loadavg();
    // Run a copy: others may rebuild target/dist/ztrace while the benchmark runs, and every
    // round must measure the same binary.
    let copy = work.0.join("ztrace");
    fs::copy(&ztrace, &copy)
        .with_context(|| format!("copying {} to {}", ztrace.display(), copy.display()))?;
    let ctx = Ctx {
        ztrace: copy,
        dir: work.0.clone(),
        plan,
        clk_tck,
        bench_dir: root().join("bench"),
        out_dir: root().join("target/bench"),
        sink: start_null_collector()?,
    };
    // What failing ztraces of an earlier run left behind would be taken for this run's.
    if let Ok(old) = fs::read_dir(&ctx.out_dir) {
        for f in old.filter_map(|e| e.ok()).map(|e| e.path()) {
            if f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ztrace-failure-"))
            {
                let _ = fs::remove_file(f);
            }
        }
    }
    let per_round = 11; // nginx saturated 6 + nginx paced 3 + python 2
    say(&format!(
        "benchmark: {} rounds × {} s per condition, {} runs (about {} min)",
        plan.rounds,
        plan.secs,
        plan.rounds * per_round,
        (plan.rounds * per_round * (plan.secs as usize + 2) + 30).div_ceil(60)
    ));

    // The bystander: an idle process that ztrace traces while nginx is under load.
    let idle = Proc::spawn(
        "sleep (bystander target)",
        Command::new("sleep").arg("3600"),
    )?;

    let nginx = start_nginx(&ctx)?;
    let nginx_sat = scenario(
        &ctx,
        &nginx,
        "nginx, saturated",
        Load::Saturated,
        &[
            Mode::Untraced,
            Mode::Traced,
            Mode::CpuControl,
            Mode::Bystander(idle.pid),
            Mode::TracedSyscalls,
            Mode::BystanderSyscalls(idle.pid),
        ],
    )?;
    say("nginx, saturated: one more traced run with --probe-stats (kernel cost per probe)");
    let probes = probe_costs(&ctx, &nginx, nginx.proc.pid, "probe-stats")?;
    say(
        "nginx, saturated: one more bystander run with --probe-stats (what an untraced process pays)",
    );
    let bystander = probe_costs(&ctx, &nginx, idle.pid, "probe-stats-bystander")?;
    let mut replays = vec![replay_bench(&ctx, &nginx, "nginx")?];
    let nginx_paced = scenario(
        &ctx,
        &nginx,
        "nginx, paced",
        Load::Paced,
        &[Mode::Untraced, Mode::Traced, Mode::TracedStopped],
    )?;
    drop(nginx);
    let python = start_python(&ctx)?;
    let python_sat = scenario(
        &ctx,
        &python,
        "Python ThreadingHTTPServer, saturated",
        Load::Saturated,
        &[Mode::Untraced, Mode::Traced],
    )?;
    replays.push(replay_bench(&ctx, &python, "python")?);
    drop(python);
    drop(idle);

    let mut table = render(
        &ctx,
        &[&nginx_sat, &nginx_paced, &python_sat],
        started.elapsed(),
        (load_before, loadavg()),
    );
    table.push_str(&render_probes(&probes, &bystander, &nginx_sat));
    table.push_str(&render_replays(&replays));
    fs::create_dir_all(&ctx.out_dir)
        .with_context(|| format!("creating {}", ctx.out_dir.display()))?;
    let out = ctx.out_dir.join("overhead.md");
    fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    println!("{table}");
    say(&format!(
        "wrote {} ({:.0} s in all)",
        out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Installing what the benchmark needs

fn install() -> Result<()> {
    let mut missing = Vec::new();
    if find_binary("nginx").is_none() {
        missing.push("nginx");
    }
    if find_binary("wrk").is_none() {
        missing.push("wrk");
    }
    if find_binary("python3").is_none() {
        missing.push("python3");
    }
    if missing.is_empty() {
        say("benchmark tools nginx, wrk, python3: present");
        return Ok(());
    }
    let had_pid_file = Path::new("/run/nginx.pid").exists();
    say(&format!(
        "installing Debian packages {missing:?} for the benchmark"
    ));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // Where no policy-rc.d stops it, the package starts the system's nginx on port 80: the
    // benchmark runs its own, so stop that one again.
    if !had_pid_file && Path::new("/run/nginx.pid").exists() {
        say("stopping the nginx service the package started (the benchmark runs its own)");
        let _ = Command::new("nginx").args(["-s", "quit"]).status();
    }
    for tool in ["nginx", "wrk", "python3"] {
        if find_binary(tool).is_none() {
            bail!("{tool} is still missing after installing {missing:?}");
        }
    }
    Ok(())
}

/// The 1-minute load average: other work on the machine shows up here (and in the spread).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Processes: started here, always stopped here

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, whatever happened.
struct Proc {
    what: String,
    child: Child,
    pid: u32,
    /// Processes it started that must not outlive it (nginx workers), stopped after it.
    also: Vec<u32>,
    done: bool,
}

impl Proc {
    fn spawn(what: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {what}: {cmd:?}"))?;
        Ok(Proc {
            what: what.to_owned(),
            pid: child.id(),
            child,
            also: Vec::new(),
            done: false,
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    fn stop(&mut self, grace: Duration) {
        if self.done {
            return;
        }
        self.done = true;
        if self.running() {
            signal(self.pid, "TERM");
            let deadline = Instant::now() + grace;
            while self.running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if self.running() {
                say(&format!(
                    "{} (pid {}) ignored SIGTERM; killing it",
                    self.what, self.pid
                ));
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        for &pid in &self.also {
            if comm(pid).is_some_and(|c| self.what.starts_with(&c)) {
                signal(pid, "KILL");
            }
        }
    }

    /// SIGTERM, then wait up to `grace` for the process to exit without reaping it, so that
    /// its final CPU time can be read from the zombie's /proc entry. Returns utime+stime ticks
    /// and whether it exited; the caller reaps it (or kills it) with [`Proc::stop`].
    fn terminate_measured(&mut self, grace: Duration) -> (Option<u64>, bool) {
        signal(self.pid, "TERM");
        let deadline = Instant::now() + grace;
        let mut last = None;
        while Instant::now() < deadline {
            match stat(self.pid) {
                Some((state, ticks)) => {
                    last = Some(ticks);
                    if state == 'Z' || state == 'X' {
                        return (last, true);
                    }
                }
                None => return (last, true),
            }
            thread::sleep(Duration::from_millis(20));
        }
        (last, false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// State and utime+stime (clock ticks, whole process) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    stat_file(&format!("/proc/{pid}/stat"))
}

/// (state, utime+stime ticks) from a `/proc/…/stat` file.
fn stat_file(path: &str) -> Option<(char, u64)> {
    let s = fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state (field 3), ppid (4), …, utime (14), stime (15).
    let state = f.first()?.chars().next()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// user+nice+system ticks of all CPUs, from /proc/stat.
fn busy_ticks() -> Result<u64> {
    let s = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    Ok(cpu
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum())
}

/// CPU ticks of this process's children that it has waited for (cutime+cstime): wrk's.
fn reaped_children_ticks() -> Result<u64> {
    let s = fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let rest = &s[s.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17.
    Ok(f.get(13..15)
        .map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum()))
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    stat(pid)
        .map(|(_, t)| t)
        .ok_or_else(|| anyhow!("could not read /proc/{pid}/stat"))
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("ztrace-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The servers under load

struct Ctx {
    ztrace: PathBuf,
    dir: PathBuf,
    plan: Plan,
    clk_tck: f64,
    bench_dir: PathBuf,
    /// target/bench: the table, and what a failing ztrace left behind.
    out_dir: PathBuf,
    /// OTLP/HTTP endpoint of the null collector ztrace exports to.
    sink: String,
}

/// A collector that accepts OTLP/HTTP requests and throws them away, so the traced rounds
/// measure the product path (encoding and sending OTLP) rather than terminal output, while
/// costing the machine as little as a collector can: read the body, answer 200 with an empty
/// `Export*ServiceResponse`. One thread per connection (ztrace keeps one per signal).
fn start_null_collector() -> Result<String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding the null collector")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || null_collector_conn(conn));
        }
    });
    Ok(format!("http://127.0.0.1:{port}"))
}

fn null_collector_conn(conn: std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        // Request line and headers, up to the blank line.
        let mut length = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(reply).is_err() {
            return;
        }
    }
}

struct Server {
    proc: Proc,
    port: u16,
    /// The process whose CPU time is the server's work (the nginx worker; the Python process).
    worker: u32,
    describe: String,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

fn wait_listening(proc: &mut Proc, port: u16, log: &Path) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !proc.running() || Instant::now() > deadline {
            bail!(
                "{} did not start listening on 127.0.0.1:{port}; its log ({}):\n{}",
                proc.what,
                log.display(),
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_nginx(ctx: &Ctx) -> Result<Server> {
    let port = free_port()?;
    let dir = ctx.dir.join("nginx");
    fs::create_dir_all(&dir)?;
    let template = ctx.bench_dir.join("nginx.conf.template");
    let conf = fs::read_to_string(&template)
        .with_context(|| format!("reading {}", template.display()))?
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{PORT}}", &port.to_string());
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let log = dir.join("error.log");
    let mut proc = Proc::spawn(
        "nginx",
        Command::new(find_binary("nginx").unwrap_or_else(|| "nginx".into()))
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log"))?),
    )?;
    wait_listening(&mut proc, port, &log)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let worker = loop {
        let kids = children(proc.pid);
        if let Some(&w) = kids.first() {
            proc.also = kids.clone();
            if kids.len() > 1 {
                bail!(
                    "nginx started {} workers; the benchmark wants one",
                    kids.len()
                );
            }
            break w;
        }
        if Instant::now() > deadline {
            bail!("nginx (pid {}) has no worker process", proc.pid);
        }
        thread::sleep(Duration::from_millis(50));
    };
    say(&format!(
        "nginx master {} (worker {worker}) on 127.0.0.1:{port}",
        proc.pid
    ));
    Ok(Server {
        proc,
        port,
        worker,
        describe: format!(
            "nginx {} (1 worker, `return 200 \"ok\"`, access_log off), ztrace given the master's PID",
            nginx_version()
        ),
    })
}

fn nginx_version() -> String {
    // `nginx -v` prints "nginx version: nginx/1.22.1" on stderr.
    Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .split('/')
                .nth(1)
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

fn start_python(ctx: &Ctx) -> Result<Server> {
    let port = free_port()?;
    let script = ctx.bench_dir.join("http_server.py");
    let log = ctx.dir.join("python.log");
    let mut proc = Proc::spawn(
        "python3 http_server.py",
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?),
    )?;
    wait_listening(&mut proc, port, &log)?;
    let worker = proc.pid;
    say(&format!("Python server {} on 127.0.0.1:{port}", proc.pid));
    Ok(Server {
        proc,
        port,
        worker,
        describe: "Python http.server.ThreadingHTTPServer (a thread per connection, HTTP/1.1 keep-alive, bench/http_server.py)".into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Load: wrk

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// `wrk -t1 -c32`, as fast as it goes.
    Saturated,
    /// `wrk -t1 -c4` with a 1 ms pause after every response on each connection (bench/paced.lua).
    Paced,
}

impl Load {
    fn describe(self) -> &'static str {
        match self {
            Load::Saturated => "`wrk -t1 -c32`, unthrottled (saturated)",
            Load::Paced => {
                "`wrk -t1 -c4 -s bench/paced.lua`: each connection pauses 1 ms after every response (light load, far below saturation)"
            }
        }
    }
}

struct Wrk {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    socket_errors: u64,
}

fn wrk(ctx: &Ctx, port: u16, load: Load, secs: u32) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-d{secs}s"));
    match load {
        Load::Saturated => {
            cmd.arg("-c32");
        }
        Load::Paced => {
            // wrk runs unpaced, saying so only on stderr, when its script is missing.
            let script = ctx.bench_dir.join("paced.lua");
            if !script.is_file() {
                bail!("the wrk script {} is missing", script.display());
            }
            cmd.arg("-c4").arg("-s").arg(script);
        }
    }
    cmd.arg(format!("http://127.0.0.1:{port}/"));
    let out = cmd
        .output()
        .with_context(|| format!("could not run {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("could not parse the output of {cmd:?}:\n{text}"))
}

fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut socket_errors = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = Some(duration_us(v)?),
            ["99%", v] => p99 = Some(duration_us(v)?),
            ["Requests/sec:", v] => rps = Some(v.parse::<f64>()?),
            [n, "requests", "in", ..] => requests = Some(n.parse::<u64>()?),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                bail!("the server answered {n} requests with an error status")
            }
            ["Socket", "errors:", rest @ ..] => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let (Some(requests), Some(rps), Some(p50_us), Some(p99_us)) = (requests, rps, p50, p99) else {
        bail!("missing the request count, Requests/sec or the 50%/99% latency lines");
    };
    if requests == 0 {
        bail!("wrk completed no request");
    }
    Ok(Wrk {
        requests,
        rps,
        p50_us,
        p99_us,
        socket_errors,
    })
}

/// wrk's durations: "570.00us", "1.87ms", "1.02s", "2.00m".
fn duration_us(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in duration {v:?}"))?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("duration {v:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in duration {v:?}"),
    };
    Ok(num * scale)
}

// ---------------------------------------------------------------------------------------------
// ztrace under measurement

#[derive(Default, Clone, Copy)]
struct Summary {
    events: u64,
    ring_full: u64,
    arg_full: u64,
    spans: u64,
    exported: u64,
    dropped: u64,
}

/// The last whole number in `line` before the first `pat`.
fn number_before(line: &str, pat: &str) -> Option<u64> {
    line[..line.find(pat)?]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// Parses ztrace's exit summary: "summary: N kernel events (L lost: ring buffer full R, arg map
/// full A), …, S spans (E exported, D dropped: …), …".
fn parse_summary(stderr: &str) -> Result<Summary> {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once("summary: ").map(|(_, s)| s))
        .ok_or_else(|| anyhow!("ztrace printed no summary line"))?;
    let before = |pat: &str| -> Result<u64> {
        number_before(line, pat)
            .ok_or_else(|| anyhow!("no number before {pat:?} in the summary {line:?}"))
    };
    let after = |pat: &str| -> Result<u64> {
        let tail = &line[line
            .find(pat)
            .ok_or_else(|| anyhow!("no {pat:?} in the summary {line:?}"))?
            + pat.len()..];
        tail.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| anyhow!("no number after {pat:?} in the summary {line:?}"))
    };
    Ok(Summary {
        events: before(" kernel events")?,
        ring_full: after("ring buffer full ")?,
        arg_full: after("arg map full ")?,
        spans: before(" spans (")?,
        exported: before(" exported")?,
        dropped: before(" dropped")?,
    })
}

struct Ztrace {
    proc: Proc,
    log: PathBuf,
}

fn start_ztrace(ctx: &Ctx, target: u32, tag: &str, extra: &[&str]) -> Result<Ztrace> {
    let log = ctx.dir.join(format!("ztrace-{tag}.log"));
    let proc = spawn_until_logged(
        &format!("ztrace tracing pid {target}"),
        Command::new(&ctx.ztrace)
            .args(["--pid", &target.to_string()])
            .args([
                "--otlp-endpoint",
                &ctx.sink,
                "--otlp-protocol",
                "http/protobuf",
            ])
            .args(["--metric-export-interval", "1s"])
            .args(extra),
        &log,
        &["] tracing ", " tracing "],
    )?;
    Ok(Ztrace { proc, log })
}

/// Starts a ztrace command with its log (`RUST_LOG=info`, stderr) in `log` and waits, at most
/// 30 s, until the log says one of `ready`; an exit or the time-out is an error quoting the log.
fn spawn_until_logged(what: &str, cmd: &mut Command, log: &Path, ready: &[&str]) -> Result<Proc> {
    let mut proc = Proc::spawn(
        what,
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log)?),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if ready.iter().any(|r| text.contains(r)) {
            return Ok(proc);
        }
        if !proc.running() || Instant::now() > deadline {
            bail!("{what} did not start (log {}):\n{text}", log.display());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The userspace pipeline alone: a recording of the server under load, replayed from memory on
/// one core (`ztrace replay --throughput`: decode → connection tracking → parsing → assembly →
/// linking → OTLP encoding, nothing sent).
struct ReplayResult {
    what: String,
    records: u64,
    spans: u64,
    passes: u64,
    events_per_s: Spread,
    spans_per_s: Spread,
}

/// Replay runs per recording; the table shows their median and spread.
const REPLAY_RUNS: usize = 5;

fn replay_bench(ctx: &Ctx, server: &Server, label: &str) -> Result<ReplayResult> {
    let file = ctx.dir.join(format!("{label}.zcap"));
    let log = ctx.dir.join(format!("record-{label}.log"));
    say(&format!(
        "{label}: recording 4 s under `wrk -t1 -c4` for the replay benchmark"
    ));
    let mut rec = spawn_until_logged(
        "ztrace record",
        Command::new(&ctx.ztrace)
            .args(["record", "--pid", &server.proc.pid.to_string(), "-o"])
            .arg(&file),
        &log,
        &["recording raw events"],
    )?;
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c4", "-d4s"])
        .arg(format!("http://127.0.0.1:{}/", server.port));
    run(&mut cmd)?;
    rec.terminate_measured(STOP_GRACE);
    rec.stop(Duration::from_secs(2));
    let replay = |passes: u64| -> Result<(u64, u64, f64, f64)> {
        let out = Command::new(&ctx.ztrace)
            .args(["replay", "--throughput", &passes.to_string()])
            .arg(&file)
            .output()
            .context("running ztrace replay --throughput")?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_replay(&text).ok_or_else(|| {
            anyhow!(
                "unexpected ztrace replay output:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    // One pass to size the runs: about 300k spans each.
    let (records, spans, _, _) = replay(1)?;
    if spans == 0 {
        bail!("the {label} recording ({records} records) gave no spans");
    }
    let passes = (300_000 / spans).clamp(1, 200);
    let (mut events, mut per_s) = (Vec::new(), Vec::new());
    for _ in 0..REPLAY_RUNS {
        let (_, _, e, s) = replay(passes)?;
        events.push(e);
        per_s.push(s);
    }
    Ok(ReplayResult {
        what: format!("{}, 4 s under `wrk -t1 -c4`", server.describe),
        records,
        spans,
        passes,
        events_per_s: spread(events),
        spans_per_s: spread(per_s),
    })
}

/// "replay throughput: P passes, R records, S spans, … on one core: E events/s, N spans/s":
/// (records and spans of one pass, events/s, spans/s).
fn parse_replay(text: &str) -> Option<(u64, u64, f64, f64)> {
    let line = text.lines().find(|l| l.starts_with("replay throughput:"))?;
    let number = |pat: &str| number_before(line, pat);
    let passes = number(" passes")?.max(1);
    Some((
        number(" records")? / passes,
        number(" spans,")? / passes,
        number(" events/s")? as f64,
        number(" spans/s")? as f64,
    ))
}

fn render_replays(r: &[ReplayResult]) -> String {
    let mut t = String::from("## Userspace pipeline on replay (one core)\n\n");
    t.push_str(
        "`ztrace replay --throughput PASSES FILE`: decode → connection tracking → parsing → \
         assembly → linking → OTLP protobuf encoding over a recording held in memory, on one \
         thread, nothing sent; ",
    );
    t.push_str(&format!(
        "{REPLAY_RUNS} runs per recording, median (min–max).\n\n\
         | recording | records / spans per pass | passes | events/s | spans/s | target |\n\
         |---|---|---|---|---|---|\n"
    ));
    for x in r {
        t.push_str(&format!(
            "| {} | {} / {} | {} | {:.0}k ({:.0}k–{:.0}k) | **{:.0}k** ({:.0}k–{:.0}k) | ≥ 250k spans/s: {} |\n",
            x.what,
            x.records,
            x.spans,
            x.passes,
            x.events_per_s.median / 1e3,
            x.events_per_s.min / 1e3,
            x.events_per_s.max / 1e3,
            x.spans_per_s.median / 1e3,
            x.spans_per_s.min / 1e3,
            x.spans_per_s.max / 1e3,
            verdict(x.spans_per_s.median >= 250_000.0),
        ));
    }
    t.push('\n');
    t
}

/// One traced run with `--probe-stats`: what each probe cost the kernel.
struct ProbeReport {
    requests: u64,
    /// Server CPU seconds per request in this run.
    server_cpu_per_req: f64,
    /// (probe, runs, CPU seconds), costliest first.
    probes: Vec<(String, u64, f64)>,
}

/// ztrace with `--probe-stats` traces `target` (the server, or the idle bystander) while the
/// server is saturated.
fn probe_costs(ctx: &Ctx, server: &Server, target: u32, tag: &str) -> Result<ProbeReport> {
    thread::sleep(Duration::from_millis(300));
    let mut z = start_ztrace(ctx, target, tag, &["--probe-stats"])?;
    let before = cpu_ticks(server.worker)?;
    let w = wrk(ctx, server.port, Load::Saturated, ctx.plan.secs)?;
    let server_ticks = cpu_ticks(server.worker)?.saturating_sub(before);
    thread::sleep(Duration::from_millis(300));
    z.proc.terminate_measured(STOP_GRACE);
    z.proc.stop(Duration::from_secs(2));
    let log = fs::read_to_string(&z.log).unwrap_or_default();
    let probes = parse_probe_costs(&log);
    if probes.is_empty() {
        bail!("ztrace --probe-stats reported no probe costs:\n{log}");
    }
    Ok(ProbeReport {
        requests: w.requests,
        server_cpu_per_req: server_ticks as f64 / ctx.clk_tck / w.requests as f64,
        probes,
    })
}

/// "ztrace: probe cost: NAME ran RUNS times, N ns per run, S CPU s in all" lines.
fn parse_probe_costs(log: &str) -> Vec<(String, u64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once("probe cost: ")?.1;
            let (name, rest) = rest.split_once(" ran ")?;
            let runs = rest.split_whitespace().next()?.parse().ok()?;
            let secs = rest
                .split(", ")
                .find(|p| p.ends_with("CPU s in all"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), runs, secs))
        })
        .collect()
}

/// The probes of the traced run, one row each, then what the bystander run's probes cost nginx.
fn render_probes(p: &ProbeReport, bystander: &ProbeReport, sat: &ScenarioResult) -> String {
    let untraced = sat.median(Mode::Untraced, |s| s.server_cpu_per_req);
    let mut t = String::from("## Kernel-side cost per probe (nginx, saturated)\n\n");
    t.push_str(&format!(
        "One more traced run with `--probe-stats` (the kernel's BPF run-time statistics, which \
         themselves add two clock reads per probe run): {} requests. nginx CPU per request: {} \
         untraced (median of the rounds above), {} in this run.\n\n",
        p.requests,
        fmt_us(untraced * 1e6),
        fmt_us(p.server_cpu_per_req * 1e6),
    ));
    t.push_str("| probe | runs per request | ns per run | ns per request |\n|---|---|---|---|\n");
    let mut total = 0.0;
    for (name, runs, secs) in &p.probes {
        let per_req = secs * 1e9 / p.requests as f64;
        total += per_req;
        t.push_str(&format!(
            "| {name} | {:.2} | {:.0} | {per_req:.0} |\n",
            *runs as f64 / p.requests as f64,
            secs * 1e9 / (*runs).max(1) as f64,
        ));
    }
    t.push_str(&format!(
        "| **all probes** | | | **{total:.0}** ({:.0} % of untraced nginx CPU per request) |\n\n",
        total / (untraced * 1e9) * 100.0
    ));
    t.push_str(&render_bystander(bystander, untraced));
    t
}

/// The bystander's cost per request, from the kernel's statistics rather than from nginx's CPU
/// time, whose spread between rounds (±20 % on these machines) hides a 1 % effect. An untraced
/// process's socket call runs each socket-layer probe to its early exit. nginx makes one send
/// and one receive per request, and wrk (as untraced) the other of each: at the same early exit,
/// nginx's share is one run of each.
fn render_bystander(p: &ProbeReport, untraced_cpu_per_req: f64) -> String {
    let per_run = |name: &str| {
        let (_, runs, secs) = p.probes.iter().find(|(n, ..)| n == name)?;
        Some((
            *runs as f64 / p.requests as f64,
            secs * 1e9 / (*runs).max(1) as f64,
        ))
    };
    let (Some((send_runs, send_ns)), Some((recv_runs, recv_ns))) =
        (per_run("sock_send"), per_run("sock_recv"))
    else {
        return "The bystander run reported no `sock_send`/`sock_recv` statistics (socket-layer \
                probes not loaded?).\n\n"
            .into();
    };
    let nginx_ns = send_ns + recv_ns;
    let ratio = 1.0 + nginx_ns / (untraced_cpu_per_req * 1e9);
    format!(
        "**Bystander** (one more run, ztrace tracing the idle `sleep`, `--probe-stats`; {} \
         requests): `sock_send` ran {send_runs:.2} times per request at {send_ns:.0} ns, \
         `sock_recv` {recv_runs:.2} times at {recv_ns:.0} ns. nginx's own share, one run of \
         each per request, is **{nginx_ns:.0} ns** per request: nginx CPU per request \
         **{ratio:.3}×** untraced, an upper bound (the statistics add two clock reads to every \
         run). Target ≤ 1.01: {}.\n\n",
        p.requests,
        if ratio <= 1.01 { "met" } else { "not met" },
    )
}

// ---------------------------------------------------------------------------------------------
// Rounds

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    /// ztrace traces the server.
    Traced,
    /// As `Traced`, with ztrace stopped (SIGSTOP) while the load runs: the probes run as traced,
    /// the daemon does nothing. The latency that is left is the probes' share (for at most
    /// `STOPPED_SECS`, which the ring buffer holds at the paced rate).
    TracedStopped,
    /// ztrace traces this other process while the server is under load.
    Bystander(u32),
    /// As `Traced` and `Bystander`, with socket data from syscall tracepoints
    /// (`--capture-via-syscalls`, the fallback for kernels without the socket-layer ones).
    TracedSyscalls,
    BystanderSyscalls(u32),
    /// Untraced, while a thread of the benchmark burns as much CPU as ztrace used in the traced
    /// runs so far, in 10 ms periods: what any process taking that much CPU costs the server on
    /// this machine, tracer or not.
    CpuControl,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Traced => "traced",
            Mode::TracedStopped => "traced, daemon stopped",
            Mode::Bystander(_) => "bystander",
            Mode::TracedSyscalls => "traced (syscall tracepoints)",
            Mode::BystanderSyscalls(_) => "bystander (syscall tracepoints)",
            Mode::CpuControl => "CPU control",
        }
    }
}

/// Longest load of a `TracedStopped` run: the paced rate fills ~2.2 MB of the 8 MiB ring
/// buffer a second, and a full ring would make the probes' later runs cheaper.
const STOPPED_SECS: u32 = 3;

/// How long ztrace may take to flush and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The threads of a process that will not stop: state, CPU, kernel wait channel, and (where gdb
/// is installed) each thread's backtrace.
fn diagnose(pid: u32) -> String {
    let mut d = String::from("== threads: tid comm state utime+stime(ticks) wchan ==\n");
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.filter_map(|e| e.ok()) {
            let p = t.path();
            let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
            let tid = t.file_name().to_string_lossy().into_owned();
            let stat = read("stat");
            let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let state = f.first().copied().unwrap_or("?");
            let ticks: u64 = f
                .get(11..13)
                .map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
            d.push_str(&format!(
                "{tid} {} {state} {ticks} {}\n",
                read("comm").trim(),
                read("wchan").trim()
            ));
        }
    }
    if find_binary("gdb").is_some() {
        let bt = Command::new("timeout")
            .args(["20", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
            .args(["-ex", "thread apply all bt"])
            .output();
        if let Ok(o) = bt {
            d.push_str("\n== gdb: thread apply all bt ==\n");
            d.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    d
}

struct ZtraceCost {
    /// Why this run's ztrace did not stop cleanly, if it did not.
    failure: Option<String>,
    cpu_s: f64,
    /// CPU seconds while the load ran (from attach to the end of the load).
    cpu_under_load_s: f64,
    hwm_kib: u64,
    /// None when ztrace printed none.
    summary: Option<Summary>,
}

struct Sample {
    wrk: Wrk,
    /// Server CPU seconds per request.
    server_cpu_per_req: f64,
    /// CPU time of everything else on the machine during the load, % of all cores.
    other_cpu_pct: f64,
    ztrace: Option<ZtraceCost>,
    /// CPU seconds the control thread burned (`Mode::CpuControl`).
    control_cpu_s: Option<f64>,
}

struct ScenarioResult {
    title: &'static str,
    server: String,
    load: Load,
    modes: Vec<Mode>,
    /// `samples[m][round]` for `modes[m]`.
    samples: Vec<Vec<Sample>>,
}

fn scenario(
    ctx: &Ctx,
    server: &Server,
    title: &'static str,
    load: Load,
    modes: &[Mode],
) -> Result<ScenarioResult> {
    say(&format!("{title}: warm-up"));
    wrk(ctx, server.port, load, ctx.plan.warmup_secs)?;
    let mut samples: Vec<Vec<Sample>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 0..ctx.plan.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..modes.len()).collect()
        } else {
            (0..modes.len()).rev().collect()
        };
        for m in order {
            // The control burns what ztrace used while the load ran, median of the traced
            // runs so far (the modes list puts the control after `Traced`).
            let duty = modes
                .iter()
                .position(|&x| x == Mode::Traced)
                .map(|t| {
                    spread(
                        samples[t]
                            .iter()
                            .filter_map(|s| s.ztrace.as_ref())
                            .map(|z| z.cpu_under_load_s / ctx.plan.secs as f64)
                            .collect(),
                    )
                    .median
                })
                .filter(|d| d.is_finite())
                .unwrap_or(0.0);
            let s = measure(ctx, server, load, modes[m], &format!("{round}-{m}"), duty)?;
            say(&format!(
                "{title}, round {}/{}, {}: {:.0} req/s, p50 {}, p99 {}, other processes {:.0} % CPU{}",
                round + 1,
                ctx.plan.rounds,
                modes[m].label(),
                s.wrk.rps,
                fmt_us(s.wrk.p50_us),
                fmt_us(s.wrk.p99_us),
                s.other_cpu_pct,
                s.ztrace
                    .as_ref()
                    .map(|z| match (&z.summary, &z.failure) {
                        (Some(sum), None) => format!(
                            "; ztrace {:.2} CPU s, {} kernel events ({} lost), {} spans exported ({} dropped)",
                            z.cpu_s,
                            sum.events,
                            sum.ring_full + sum.arg_full,
                            sum.exported,
                            sum.dropped
                        ),
                        _ => format!("; ztrace FAILED: {}", z.failure.as_deref().unwrap_or("?")),
                    })
                    .unwrap_or_default()
                    + &s
                        .control_cpu_s
                        .map(|c| format!(
                            "; control thread burned {:.0} % of a core",
                            c / ctx.plan.secs as f64 * 100.0
                        ))
                        .unwrap_or_default()
            ));
            samples[m].push(s);
        }
    }
    Ok(ScenarioResult {
        title,
        server: server.describe.clone(),
        load,
        modes: modes.to_vec(),
        samples,
    })
}

const SYSCALLS: &[&str] = &["--capture-via-syscalls"];

/// A thread that keeps one core busy `duty` of every 10 ms until stopped.
struct Burner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<f64>,
}

impl Burner {
    const PERIOD: Duration = Duration::from_millis(10);

    fn start(duty: f64, clk_tck: f64) -> Burner {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let busy = Self::PERIOD.mul_f64(duty.clamp(0.0, 1.0));
            let before = thread_cpu_s(clk_tck);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                while t0.elapsed() < busy {
                    std::hint::spin_loop();
                }
                thread::sleep(Self::PERIOD.saturating_sub(t0.elapsed()));
            }
            thread_cpu_s(clk_tck) - before
        });
        Burner { stop, thread }
    }

    /// CPU seconds it burned.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(f64::NAN)
    }
}

/// CPU seconds of the calling thread so far.
fn thread_cpu_s(clk_tck: f64) -> f64 {
    stat_file("/proc/thread-self/stat").map_or(f64::NAN, |(_, ticks)| ticks as f64 / clk_tck)
}

fn measure(
    ctx: &Ctx,
    server: &Server,
    load: Load,
    mode: Mode,
    tag: &str,
    control_duty: f64,
) -> Result<Sample> {
    thread::sleep(Duration::from_millis(300));
    let mut z = match mode {
        Mode::Untraced | Mode::CpuControl => None,
        Mode::Traced | Mode::TracedStopped => Some(start_ztrace(ctx, server.proc.pid, tag, &[])?),
        Mode::Bystander(pid) => Some(start_ztrace(ctx, pid, tag, &[])?),
        Mode::TracedSyscalls => Some(start_ztrace(ctx, server.proc.pid, tag, SYSCALLS)?),
        Mode::BystanderSyscalls(pid) => Some(start_ztrace(ctx, pid, tag, SYSCALLS)?),
    };
    let burner = (mode == Mode::CpuControl).then(|| Burner::start(control_duty, ctx.clk_tck));
    let z_before = z.as_ref().map(|z| cpu_ticks(z.proc.pid)).transpose()?;
    let server_before = cpu_ticks(server.worker)?;
    let (busy_before, wrk_before) = (busy_ticks()?, reaped_children_ticks()?);
    let stopped = z.as_ref().filter(|_| mode == Mode::TracedStopped);
    let secs = if let Some(z) = stopped {
        signal(z.proc.pid, "STOP");
        ctx.plan.secs.min(STOPPED_SECS)
    } else {
        ctx.plan.secs
    };
    let started = Instant::now();
    let w = wrk(ctx, server.port, load, secs);
    let wall = started.elapsed().as_secs_f64();
    if let Some(z) = stopped {
        signal(z.proc.pid, "CONT");
    }
    let control_cpu_s = burner.map(Burner::stop);
    let w = w?;
    let (busy_after, wrk_after) = (busy_ticks()?, reaped_children_ticks()?);
    let server_after = cpu_ticks(server.worker)?;
    let z_under_load = z.as_ref().map(|z| cpu_ticks(z.proc.pid)).transpose()?;
    let server_ticks = server_after.saturating_sub(server_before);
    let server_cpu_per_req = server_ticks as f64 / ctx.clk_tck / w.requests as f64;
    // Whatever else kept the CPUs busy meanwhile: all user+system time less the server's,
    // wrk's and ztrace's.
    let ours = server_ticks
        + wrk_after.saturating_sub(wrk_before)
        + control_cpu_s.map_or(0, |s| (s * ctx.clk_tck) as u64)
        + z_under_load
            .zip(z_before)
            .map_or(0, |(a, b)| a.saturating_sub(b));
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let other_cpu_pct = busy_after.saturating_sub(busy_before).saturating_sub(ours) as f64
        / ctx.clk_tck
        / (wall * cores)
        * 100.0;
    let ztrace = match (z.as_mut(), z_before, z_under_load) {
        (Some(z), Some(before), Some(under_load)) => {
            // Let it catch up with what the load left in the ring buffer before stopping it.
            thread::sleep(Duration::from_millis(300));
            let hwm_kib = vm_hwm_kib(z.proc.pid).unwrap_or(0);
            let (end, exited) = z.proc.terminate_measured(STOP_GRACE);
            // A ztrace that does not stop, or stops without its summary, is a finding: keep
            // what it says about itself for whoever debugs it, and go on with the benchmark.
            let mut failure = None;
            let mut diagnosis = String::new();
            if !exited {
                failure = Some(format!(
                    "did not exit within {} s of SIGTERM (killed)",
                    STOP_GRACE.as_secs()
                ));
                diagnosis = diagnose(z.proc.pid);
            }
            z.proc.stop(Duration::from_secs(2));
            let log = fs::read_to_string(&z.log).unwrap_or_default();
            let summary = match parse_summary(&log) {
                Ok(s) => Some(s),
                Err(e) => {
                    failure.get_or_insert_with(|| format!("{e:#}"));
                    None
                }
            };
            let failure = failure.map(|why| {
                let path = ctx.out_dir.join(format!("ztrace-failure-{tag}.txt"));
                let text = format!("ztrace {why}\n\n== its log ==\n{log}\n{diagnosis}");
                let saved = fs::create_dir_all(&ctx.out_dir).and_then(|()| fs::write(&path, text));
                let where_ = match saved {
                    Ok(()) => path.display().to_string(),
                    Err(e) => format!("could not save it: {e}"),
                };
                say(&format!("ztrace {why}; its log and state: {where_}"));
                format!("{why}: see {where_}")
            });
            let end = end.unwrap_or(under_load);
            Some(ZtraceCost {
                cpu_s: end.saturating_sub(before) as f64 / ctx.clk_tck,
                cpu_under_load_s: under_load.saturating_sub(before) as f64 / ctx.clk_tck,
                hwm_kib,
                summary,
                failure,
            })
        }
        _ => None,
    };
    Ok(Sample {
        wrk: w,
        server_cpu_per_req,
        other_cpu_pct,
        ztrace,
        control_cpu_s,
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table

#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

impl ScenarioResult {
    fn of(&self, mode: Mode) -> &[Sample] {
        let i = self
            .modes
            .iter()
            .position(|&m| m.label() == mode.label())
            .expect("mode measured");
        &self.samples[i]
    }

    fn median(&self, mode: Mode, f: impl Fn(&Sample) -> f64) -> f64 {
        spread(self.of(mode).iter().map(f).collect()).median
    }

    /// Per-round ratios mode ÷ untraced of the same round.
    fn ratio(&self, mode: Mode, f: impl Fn(&Sample) -> f64) -> Spread {
        let base = self.of(Mode::Untraced);
        spread(
            self.of(mode)
                .iter()
                .zip(base)
                .map(|(s, b)| f(s) / f(b))
                .collect(),
        )
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_ratio(s: Spread) -> String {
    format!("**{:.3}** ({:.3}–{:.3})", s.median, s.min, s.max)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn render(
    ctx: &Ctx,
    results: &[&ScenarioResult],
    elapsed: Duration,
    load: (String, String),
) -> String {
    let mut t = String::new();
    let kernel = output_ok(Command::new("uname").arg("-r")).unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    t.push_str("# ztrace: application overhead\n\n");
    t.push_str(&format!(
        "`cargo xtask bench` — Linux {}, {cores} cores; {} rounds × {} s per condition, conditions \
         alternating within each round (order reversed every other round); {:.0} s in all; \
         1-minute load average {} at the start, {} at the end.  \n\
         Ratio = condition ÷ untraced of the same round: **median** (min–max over the rounds). \
         ztrace runs as `ztrace --pid PID --otlp-endpoint SINK --otlp-protocol http/protobuf \
         --metric-export-interval 1s` (SINK: a null OTLP/HTTP collector in the benchmark process), \
         started afresh for every \
         traced round. Targets are printed, not asserted.\n\n",
        kernel.trim(),
        ctx.plan.rounds,
        ctx.plan.secs,
        elapsed.as_secs_f64(),
        load.0,
        load.1,
    ));

    let other = spread(
        results
            .iter()
            .flat_map(|r| r.samples.iter().flatten())
            .map(|s| s.other_cpu_pct)
            .collect(),
    );
    t.push_str(&format!(
        "Other processes on the machine used **{:.0} %** of all CPUs during a typical run \
         (median; {:.0}–{:.0} %).\n\n",
        other.median, other.min, other.max
    ));
    let all_runs = results
        .iter()
        .map(|r| r.samples.iter().flatten().count())
        .sum::<usize>();
    let disturbed = results
        .iter()
        .flat_map(|r| r.samples.iter().flatten())
        .filter(|s| s.other_cpu_pct > BUSY_PCT)
        .count();
    if disturbed > 0 {
        t.push_str(&format!(
            "**Warning: in {disturbed} of {all_runs} runs other processes used more than \
             {BUSY_PCT:.0} % of the CPUs: the ratios of those rounds are unreliable (the progress \
             lines on stderr say which); run again on a quiet machine.**\n\n"
        ));
    }
    t.push_str("## Application overhead\n\n");
    t.push_str("| scenario | metric | untraced (median) | with ztrace (median) | ratio | target | meets |\n");
    t.push_str("|---|---|---|---|---|---|---|\n");
    let mut notes = Vec::new();
    for r in results {
        for &mode in r.modes.iter().filter(|&&m| m != Mode::Untraced) {
            let who = match mode {
                Mode::Bystander(_) => {
                    format!("{}, **bystander** (ztrace traces an idle `sleep`)", r.title)
                }
                Mode::BystanderSyscalls(_) => format!(
                    "{}, bystander, syscall tracepoints (`--capture-via-syscalls`)",
                    r.title
                ),
                Mode::TracedSyscalls => format!(
                    "{}, traced, syscall tracepoints (`--capture-via-syscalls`)",
                    r.title
                ),
                Mode::TracedStopped => format!(
                    "{}, traced, **ztrace's daemon stopped** (SIGSTOP while wrk ran, {} s): the \
                     probes' share",
                    r.title,
                    ctx.plan.secs.min(STOPPED_SECS)
                ),
                Mode::CpuControl => {
                    let burned = spread(
                        r.of(mode)
                            .iter()
                            .filter_map(|s| s.control_cpu_s)
                            .map(|c| c / ctx.plan.secs as f64 * 100.0)
                            .collect(),
                    );
                    format!(
                        "{}, **untraced, CPU control**: a thread burns {:.0} % of a core (ztrace's \
                         share when tracing) in 10 ms periods",
                        r.title, burned.median
                    )
                }
                _ => format!("{}, traced", r.title),
            };
            let rps = r.ratio(mode, |s| s.wrk.rps);
            let p50 = r.ratio(mode, |s| s.wrk.p50_us);
            let p99 = r.ratio(mode, |s| s.wrk.p99_us);
            let cpu = r.ratio(mode, |s| s.server_cpu_per_req);
            let nginx_sat = r.title.starts_with("nginx") && r.load == Load::Saturated;
            let (rps_target, rps_ok) = match mode {
                Mode::Bystander(_) | Mode::BystanderSyscalls(_) => (
                    format!("≥ {TARGET_BYSTANDER}"),
                    Some(rps.median >= TARGET_BYSTANDER),
                ),
                Mode::CpuControl => ("—".into(), None),
                _ if nginx_sat => (
                    format!("≥ {TARGET_THROUGHPUT}"),
                    Some(rps.median >= TARGET_THROUGHPUT),
                ),
                _ => ("—".into(), None),
            };
            let traced = matches!(mode, Mode::Traced | Mode::TracedSyscalls);
            let (p99_target, p99_ok) = if nginx_sat && traced {
                (format!("≤ {TARGET_P99:.2}"), Some(p99.median <= TARGET_P99))
            } else {
                ("—".into(), None)
            };
            let rows = [
                (
                    "throughput (req/s)",
                    format!("{:.0}", r.median(Mode::Untraced, |s| s.wrk.rps)),
                    format!("{:.0}", r.median(mode, |s| s.wrk.rps)),
                    rps,
                    rps_target,
                    rps_ok,
                ),
                (
                    "p50 latency",
                    fmt_us(r.median(Mode::Untraced, |s| s.wrk.p50_us)),
                    fmt_us(r.median(mode, |s| s.wrk.p50_us)),
                    p50,
                    "—".into(),
                    None,
                ),
                (
                    "p99 latency",
                    fmt_us(r.median(Mode::Untraced, |s| s.wrk.p99_us)),
                    fmt_us(r.median(mode, |s| s.wrk.p99_us)),
                    p99,
                    p99_target,
                    p99_ok,
                ),
                (
                    "server CPU per request",
                    fmt_us(r.median(Mode::Untraced, |s| s.server_cpu_per_req * 1e6)),
                    fmt_us(r.median(mode, |s| s.server_cpu_per_req * 1e6)),
                    cpu,
                    "—".into(),
                    None,
                ),
            ];
            for (metric, base, with, ratio, target, ok) in rows {
                t.push_str(&format!(
                    "| {who} | {metric} | {base} | {with} | {} | {target} | {} |\n",
                    fmt_ratio(ratio),
                    ok.map_or("", verdict)
                ));
            }
        }
        let errors: u64 = r
            .samples
            .iter()
            .flatten()
            .map(|s| s.wrk.socket_errors)
            .sum();
        if errors > 0 {
            notes.push(format!(
                "{}: wrk reported {errors} socket errors over all rounds.",
                r.title
            ));
        }
    }
    t.push('\n');
    for r in results {
        t.push_str(&format!(
            "- **{}**: {}; load {}.\n",
            r.title,
            r.server,
            r.load.describe()
        ));
    }
    t.push_str(
        "- Server CPU per request: utime+stime of the nginx worker (of the whole Python process) \
         during the load ÷ requests completed.\n\
         - CPU control: no tracing; a thread of the benchmark burns as much CPU as ztrace used \
         while the load ran (median of the traced runs so far). With both cores already busy \
         (the server and wrk), this is what taking that much CPU costs the server on this \
         machine whatever does it: the floor for any tracer that spends it.\n\
         - wrk is a closed loop: under saturation latency ≈ connections ÷ throughput, so the \
         saturated latency ratios mostly mirror throughput; the paced rows compare latency at \
         (nearly) the same rate.\n\
         - Daemon stopped: ztrace attaches, then is stopped (SIGSTOP) while wrk runs, so the \
         probes run as traced while the daemon does nothing; the latency left is the probes' \
         share of the traced row's (docs/benchmarks.md: with four connections a request waits \
         for the others' probe time too).\n\n",
    );

    t.push_str("## ztrace's own cost\n\n");
    t.push_str("| measurement |");
    let mut cols = Vec::new();
    for r in results {
        // A stopped daemon's CPU, memory and ring are not its cost.
        for &mode in r
            .modes
            .iter()
            .filter(|&&m| !matches!(m, Mode::Untraced | Mode::CpuControl | Mode::TracedStopped))
        {
            t.push_str(&format!(" {}, {} |", r.title, mode.label()));
            cols.push((*r, mode));
        }
    }
    t.push_str(" target | meets |\n|---|");
    t.push_str(&"---|".repeat(cols.len() + 2));
    t.push('\n');
    let per_million =
        |s: &Sample| s.ztrace.as_ref().map_or(f64::NAN, |z| z.cpu_s) / s.wrk.requests as f64 * 1e6;
    let all_z = || {
        cols.iter()
            .flat_map(|(r, m)| r.of(*m).iter())
            .filter_map(|s| s.ztrace.as_ref())
    };
    let peak_rss = all_z().map(|z| z.hwm_kib).max().unwrap_or(0) as f64 / 1024.0;
    let lost: u64 = all_z()
        .filter_map(|z| z.summary.as_ref())
        .map(|z| z.ring_full + z.arg_full)
        .sum();
    let failures: Vec<String> = cols
        .iter()
        .flat_map(|(r, m)| {
            r.of(*m).iter().enumerate().filter_map(move |(round, s)| {
                let why = s.ztrace.as_ref()?.failure.as_ref()?;
                Some(format!(
                    "ztrace failed in {}, {}, round {}: {why}",
                    r.title,
                    m.label(),
                    round + 1
                ))
            })
        })
        .collect();
    type Cell<'a> = Box<dyn Fn(&[Sample]) -> String + 'a>;
    let rows: Vec<(&str, Cell, String, String)> = vec![
        (
            "ztrace runs that did not stop cleanly (exit with a summary within 30 s of SIGTERM)",
            Box::new(|v: &[Sample]| {
                let n = v
                    .iter()
                    .filter(|s| s.ztrace.as_ref().is_some_and(|z| z.failure.is_some()))
                    .count();
                format!("{n} of {}", v.len())
            }),
            "0".into(),
            verdict(failures.is_empty()).into(),
        ),
        (
            "CPU seconds per million requests (attach → exit, incl. final flush)",
            Box::new(|v: &[Sample]| {
                let s = spread(v.iter().map(per_million).collect());
                format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
            }),
            "—".into(),
            String::new(),
        ),
        (
            "CPU while the load ran, % of one core",
            Box::new(|v: &[Sample]| {
                let s = spread(
                    v.iter()
                        .filter_map(|s| s.ztrace.as_ref())
                        .map(|z| z.cpu_under_load_s / ctx.plan.secs as f64 * 100.0)
                        .collect(),
                );
                format!("{:.1} %", s.median)
            }),
            "—".into(),
            String::new(),
        ),
        (
            "peak RSS (VmHWM, max over rounds)",
            Box::new(|v: &[Sample]| {
                let kib = v
                    .iter()
                    .filter_map(|s| s.ztrace.as_ref())
                    .map(|z| z.hwm_kib)
                    .max()
                    .unwrap_or(0);
                format!("{:.1} MiB", kib as f64 / 1024.0)
            }),
            format!("≤ {TARGET_RSS_MIB:.0} MiB"),
            verdict(peak_rss <= TARGET_RSS_MIB).into(),
        ),
        (
            "kernel events lost (ring buffer full + arg map full, all rounds)",
            Box::new(|v: &[Sample]| {
                let (ring, arg) = v
                    .iter()
                    .filter_map(|s| s.ztrace.as_ref()?.summary.as_ref())
                    .fold((0, 0), |(r, a), z| (r + z.ring_full, a + z.arg_full));
                format!("{} ({ring} + {arg})", ring + arg)
            }),
            "0".into(),
            verdict(lost == 0).into(),
        ),
        (
            "kernel events seen per request (median)",
            Box::new(|v: &[Sample]| {
                let s = spread(
                    v.iter()
                        .filter_map(|s| {
                            let z = s.ztrace.as_ref()?.summary.as_ref()?;
                            Some(z.events as f64 / s.wrk.requests as f64)
                        })
                        .collect(),
                );
                format!("{:.2}", s.median)
            }),
            "—".into(),
            String::new(),
        ),
        (
            "kernel events seen (median per round)",
            Box::new(|v: &[Sample]| {
                let s = spread(
                    v.iter()
                        .filter_map(|s| Some(s.ztrace.as_ref()?.summary.as_ref()?.events as f64))
                        .collect(),
                );
                format!("{:.0}", s.median)
            }),
            "—".into(),
            String::new(),
        ),
        (
            "spans exported per request (median)",
            Box::new(|v: &[Sample]| {
                let s = spread(
                    v.iter()
                        .filter_map(|s| {
                            let z = s.ztrace.as_ref()?.summary.as_ref()?;
                            Some(z.exported as f64 / s.wrk.requests as f64)
                        })
                        .collect(),
                );
                format!("{:.3}", s.median)
            }),
            "—".into(),
            String::new(),
        ),
        (
            "spans made / exported / dropped (all rounds)",
            Box::new(|v: &[Sample]| {
                let (m, e, d) = v
                    .iter()
                    .filter_map(|s| s.ztrace.as_ref()?.summary.as_ref())
                    .fold((0, 0, 0), |(m, e, d), z| {
                        (m + z.spans, e + z.exported, d + z.dropped)
                    });
                format!("{m} / {e} / {d}")
            }),
            "—".into(),
            String::new(),
        ),
    ];
    for (name, cell, target, meets) in rows {
        t.push_str(&format!("| {name} |"));
        for (r, m) in &cols {
            t.push_str(&format!(" {} |", cell(r.of(*m))));
        }
        t.push_str(&format!(" {target} | {meets} |\n"));
    }
    t.push('\n');
    notes.extend(failures);
    for n in notes {
        t.push_str(&format!("- {n}\n"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let out = "Running 3s test @ http://127.0.0.1:18765/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.45ms    1.82ms  13.03ms   85.35%
    Req/Sec    28.78k     9.90k   50.89k    60.00%
  Latency Distribution
     50%  570.00us
     75%    1.87ms
     90%    4.06ms
     99%    8.39ms
  86047 requests in 3.02s, 12.23MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  28528.01
Transfer/sec:      4.05MB
";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.requests, 86047);
        assert_eq!(w.rps, 28528.01);
        assert_eq!(w.p50_us, 570.0);
        assert_eq!(w.p99_us, 8390.0);
        assert_eq!(w.socket_errors, 3);
        assert!(parse_wrk("garbage").is_err());
        assert!(parse_wrk(&format!("{out}  Non-2xx or 3xx responses: 5\n")).is_err());
    }

    #[test]
    fn parses_replay_throughput() {
        let out = "replay throughput: 200 passes, 217600 records, 71200 spans, 21.3 MB of OTLP \
                   in 0.23s on one core: 945000 events/s, 313000 spans/s\n";
        assert_eq!(parse_replay(out), Some((1088, 356, 945000.0, 313000.0)));
        assert_eq!(parse_replay("nothing"), None);
    }

    #[test]
    fn bystander_share_is_one_run_of_each_socket_probe() {
        let p = ProbeReport {
            requests: 1_000_000,
            server_cpu_per_req: 8e-6,
            // 2 runs per request each (nginx's and wrk's): 25 and 15 ns per run.
            probes: vec![
                ("sock_send".into(), 2_000_000, 0.05),
                ("sock_recv".into(), 2_000_000, 0.03),
            ],
        };
        let t = render_bystander(&p, 8e-6);
        assert!(t.contains("**40 ns** per request"), "{t}");
        assert!(t.contains("**1.005×**") && t.contains("≤ 1.01: met"), "{t}");
        let t = render_bystander(&p, 2e-6);
        assert!(
            t.contains("**1.020×**") && t.contains("≤ 1.01: not met"),
            "{t}"
        );
        let none = ProbeReport {
            probes: vec![],
            ..p
        };
        assert!(render_bystander(&none, 8e-6).contains("no `sock_send`"));
    }

    #[test]
    fn parses_probe_costs() {
        let log = "[x INFO ] tracing 1 process(es)\n\
                   ztrace: probe cost: sock_send ran 408409 times, 1218 ns per run, 0.497 CPU s in all\n\
                   ztrace: probe cost: sock_recv ran 12 times, 838 ns per run, 0.000 CPU s in all\n\
                   ztrace: probe cost: all probes 0.497 CPU s\n";
        let p = parse_probe_costs(log);
        assert_eq!(
            p,
            vec![
                ("sock_send".to_string(), 408409, 0.497),
                ("sock_recv".to_string(), 12, 0.0)
            ]
        );
    }

    #[test]
    fn parses_summary() {
        let log = "[2026-11-27T17:15:33Z INFO ] summary: 102712 kernel events (7 lost: ring buffer full 5, arg map full 2), 102712 records decoded (0 undecodable), 32 HTTP connections, 51323 spans (33668 exported, 17655 dropped: queue 17655, export failures 0), links: 0 traceparent";
        let s = parse_summary(log).unwrap();
        assert_eq!(s.events, 102712);
        assert_eq!(s.ring_full, 5);
        assert_eq!(s.arg_full, 2);
        assert_eq!(s.spans, 51323);
        assert_eq!(s.exported, 33668);
        assert_eq!(s.dropped, 17655);
        assert!(parse_summary("nothing").is_err());
    }

    #[test]
    fn a_process_ignoring_sigterm_is_diagnosed_then_killed() {
        let mut p = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "trap '' TERM; while :; do sleep 1; done"]),
        )
        .unwrap();
        thread::sleep(Duration::from_millis(200));
        let (ticks, exited) = p.terminate_measured(Duration::from_millis(500));
        assert!(!exited);
        assert!(ticks.is_some());
        let d = diagnose(p.pid);
        assert!(d.contains(&format!("{} sh ", p.pid)), "{d}");
        p.stop(Duration::from_millis(200));
        assert!(stat(p.pid).is_none());
    }

    #[test]
    fn medians() {
        let s = spread(vec![3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(vec![1.0, 2.0]).median, 1.5);
    }
}
