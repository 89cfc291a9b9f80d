//! ztrace's memory under connection churn and slowloris heads, as root: a real nginx (master and
//! worker traced) gets CHURN short connections (one request each, then closed) and then SLOW
//! connections that each send 15 KB of an unfinished request head and stay open. ztrace's
//! peak resident set (VmHWM) must stay under RSS_BOUND_MIB, the bound the README states.
//!
//! The parser memory budget: the same slowloris heads against ztrace with the default budget
//! (64 MiB: the heads fit, nothing is shed) and with a 4 MiB one from a config file (most heads
//! are shed). Both print resident memory before and after the heads, side by side; the small
//! budget must shed, count what it shed in the exit summary and the self metrics, hold no more
//! than the budget, and still trace requests on new connections while the heads stay open.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use ztrace_e2e::harness::{
    Nginx, apps_dir, privileged_or_skip, runtime_with_receiver, spawn_nginx, spawn_ztrace,
};

const CHURN: usize = 50_000;
const SLOW: usize = 900;
/// The README's bound on ztrace's resident memory for this load.
const RSS_BOUND_MIB: u64 = 128;

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} of {pid}"))
}

#[test]
fn rss_stays_bounded_under_churn_and_slowloris() -> Result<()> {
    if !privileged_or_skip("rss_stays_bounded_under_churn_and_slowloris") {
        return Ok(());
    }
    let (_rt, receiver) = runtime_with_receiver()?;
    let dir = std::env::temp_dir().join(format!("ztrace-memory-{}", std::process::id()));
    let nginx = nginx_ok(&dir)?;
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        nginx.master.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || -> Result<()> {
                let mut buf = [0u8; 512];
                for _ in 0..CHURN / 4 {
                    let mut c = TcpStream::connect(addr)?;
                    c.write_all(b"GET /churn HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
                    while c.read(&mut buf)? > 0 {}
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().expect("churn thread")?;
    }
    let churn_took = started.elapsed();
    let slow = slowloris(addr)?;
    let pid = ztrace.pid();
    let (rss, peak) = (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?);
    drop(slow);
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "ztrace after {CHURN} churned connections ({churn_took:?}) and {SLOW} slowloris heads: \
         VmRSS {} MiB, VmHWM {} MiB (bound {RSS_BOUND_MIB} MiB)",
        rss / 1024,
        peak / 1024
    );
    let summary = ztrace
        .stderr_text()
        .lines()
        .find(|l| l.contains("summary: "))
        .map(str::to_string)
        .unwrap_or_default();
    eprintln!("{summary}");
    ensure!(
        peak / 1024 < RSS_BOUND_MIB,
        "ztrace peaked at {} MiB resident, over the {RSS_BOUND_MIB} MiB bound",
        peak / 1024
    );
    Ok(())
}

/// SLOW connections that each send most of a request head, 500 bytes per write (one captured
/// syscall each) to 15 KB in header lines of 5 KB (nginx answers a line over 8 KiB with 400 and
/// closes), and stay open: returned, to be dropped when done.
fn slowloris(addr: std::net::SocketAddr) -> Result<Vec<TcpStream>> {
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: ")?;
        slow.push(c);
    }
    let pad = vec![b'a'; 500];
    for i in 0..30 {
        for c in &mut slow {
            c.write_all(&pad)?;
            if i % 10 == 9 {
                write!(c, "\r\nX-Pad-{i}: ")?;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Still open: nginx is waiting for the rest of each head.
    let mut byte = [0u8; 1];
    for c in &slow {
        c.set_nonblocking(true)?;
        match (&*c).read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => anyhow::bail!("nginx answered or closed a slowloris head: {other:?}"),
        }
    }
    Ok(slow)
}

fn nginx_ok(dir: &std::path::Path) -> Result<Nginx> {
    spawn_nginx(
        &apps_dir().join("eval_nginx.conf.template"),
        dir,
        &[
            ("UPSTREAMS", String::new()),
            (
                "LOCATIONS",
                "        location / { return 200 \"ok\"; }\n".to_string(),
            ),
        ],
    )
}

/// One request on a new connection, answered.
fn get(addr: std::net::SocketAddr, path: &str) -> Result<()> {
    let mut c = TcpStream::connect(addr)?;
    // One write, as clients send a head (`write!` would send it in pieces).
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    c.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    c.read_to_end(&mut answer)?;
    ensure!(answer.starts_with(b"HTTP/1.1 200"), "{path} not answered");
    Ok(())
}

/// What one slowloris run showed.
struct Run {
    rss_before_kib: u64,
    rss_after_kib: u64,
    peak_kib: u64,
    /// From the exit summary: the parsers' peak, the budget, connections shed.
    parser_peak_kib: u64,
    budget_kib: u64,
    shed: u64,
    /// `ztrace.connections.shed`, last exported value.
    shed_metric: i64,
    /// Server spans of the requests sent before and after the heads.
    warm: usize,
    after: usize,
}

const WARM: usize = 50;
const AFTER: usize = 20;

/// SLOW slowloris heads against a traced nginx, then AFTER requests on new connections while the
/// heads stay open; `config` is the text of a config file to run ztrace with.
fn slowloris_run(config: Option<&str>) -> Result<Run> {
    let (rt, receiver) = runtime_with_receiver()?;
    let tag = if config.is_some() { "small" } else { "default" };
    let dir = std::env::temp_dir().join(format!("ztrace-budget-{tag}-{}", std::process::id()));
    let nginx = nginx_ok(&dir)?;
    let mut args = vec![
        "--pid".to_string(),
        nginx.master.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ];
    if let Some(text) = config {
        let path = dir.join("ztrace.toml");
        std::fs::write(&path, text)?;
        args.extend(["--config".into(), path.to_string_lossy().into_owned()]);
    }
    let mut ztrace = spawn_ztrace(&args)?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
    for i in 0..WARM {
        get(addr, &format!("/warm-{i}"))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = ztrace.pid();
    let rss_before_kib = status_kib(pid, "VmRSS:")?;
    let slow = slowloris(addr)?;
    let (rss_after_kib, peak_kib) = (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?);
    for i in 0..AFTER {
        get(addr, &format!("/after-{i}"))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(slow);
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = ztrace.stderr_text();
    let summary = stderr
        .lines()
        .find(|l| l.contains("summary: "))
        .context("no exit summary")?;
    // "parser memory: peak P KiB of the B KiB budget, N connections shed"
    let numbers: Vec<u64> = summary
        .split("parser memory: ")
        .nth(1)
        .context("no parser memory in the summary")?
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [parser_peak_kib, budget_kib, shed] = numbers[..] else {
        anyhow::bail!("parser memory numbers: {numbers:?} in {summary}");
    };
    rt.block_on(receiver.wait_until(Duration::from_secs(10), |r| {
        !r.metrics_requests().is_empty()
    }));
    let shed_metric = receiver
        .signals()
        .all_metrics()
        .iter()
        .filter(|m| m.metric.name == "ztrace.connections.shed")
        .map(|m| m.sum_where(|_| true))
        .next_back()
        .context("no ztrace.connections.shed metric")?;
    let paths: Vec<String> = receiver
        .spans()
        .iter()
        .filter_map(|s| s.attr_str("url.path"))
        .collect();
    let after = paths.iter().filter(|p| p.starts_with("/after-")).count();
    let warm = paths.iter().filter(|p| p.starts_with("/warm-")).count();
    Ok(Run {
        rss_before_kib,
        rss_after_kib,
        peak_kib,
        parser_peak_kib,
        budget_kib,
        shed,
        shed_metric,
        warm,
        after,
    })
}

#[test]
fn a_small_parser_budget_sheds_slowloris_heads_counts_them_and_keeps_tracing() -> Result<()> {
    if !privileged_or_skip(
        "a_small_parser_budget_sheds_slowloris_heads_counts_them_and_keeps_tracing",
    ) {
        return Ok(());
    }
    let default = slowloris_run(None)?;
    let small = slowloris_run(Some("[memory]\nparser_budget = \"4MiB\"\n"))?;
    for (name, r) in [("default budget", &default), ("4 MiB budget", &small)] {
        eprintln!(
            "{name}: VmRSS {} MiB before {SLOW} slowloris heads, {} MiB after (+{} MiB), VmHWM {} MiB; \
             parsers held at most {} KiB of {} KiB, {} connections shed ({} in the self metric); \
             {}/{WARM} requests traced before, {}/{AFTER} while they were open",
            r.rss_before_kib / 1024,
            r.rss_after_kib / 1024,
            r.rss_after_kib.saturating_sub(r.rss_before_kib) / 1024,
            r.peak_kib / 1024,
            r.parser_peak_kib,
            r.budget_kib,
            r.shed,
            r.shed_metric,
            r.warm,
            r.after,
        );
    }
    ensure!(default.budget_kib == 64 * 1024 && small.budget_kib == 4 * 1024);
    ensure!(default.shed == 0, "the default budget holds {SLOW} heads");
    ensure!(
        default.parser_peak_kib > 8 * 1024,
        "{SLOW} heads of 15 KB held only {} KiB: the budget measured nothing",
        default.parser_peak_kib
    );
    ensure!(
        small.shed >= SLOW as u64 / 2 && small.shed_metric == small.shed as i64,
        "shed {} (metric {}) of {SLOW}",
        small.shed,
        small.shed_metric
    );
    // One push past the limit at most: a buffer doubling to 32 KiB.
    ensure!(small.parser_peak_kib <= small.budget_kib + 32);
    for r in [&default, &small] {
        ensure!(
            (r.warm, r.after) == (WARM, AFTER),
            "{}/{WARM} requests traced before the heads, {}/{AFTER} after",
            r.warm,
            r.after
        );
        ensure!(r.peak_kib / 1024 < RSS_BOUND_MIB);
    }
    let grew = |r: &Run| r.rss_after_kib.saturating_sub(r.rss_before_kib);
    ensure!(
        grew(&small) < grew(&default),
        "the heads cost as much resident memory under a 4 MiB budget (+{} KiB) as under 64 MiB (+{} KiB)",
        grew(&small),
        grew(&default)
    );
    Ok(())
}
