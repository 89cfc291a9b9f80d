//! ztrace's memory under connection churn and slowloris heads, as root: a real nginx (master and
//! worker traced) gets CHURN short connections (one request each, then closed) and then SLOW
//! connections that each send 15 KB of an unfinished request head and stay open. ztrace's
//! peak resident set (VmHWM) must stay under RSS_BOUND_MIB, the bound the README states.
//!
//! The parser memory budget: the same slowloris heads, and HTTP/2 CONTINUATION floods (h2c, a
//! header block never ended), against ztrace with the default budget (64 MiB: they fit, nothing
//! is shed) and with a 4 MiB one from a config file (most are shed). Each prints resident memory
//! before and after the flood, side by side; the small budget must shed, count what it shed in
//! the exit summary and the self metrics, hold no more than the budget, and still trace requests
//! on new connections while the flood stays open.

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
    let dir = ztrace_e2e::temp::TempDir::new("memory")?;
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
    let slow = slowloris(addr, Flood::Heads)?;
    let pid = ztrace.pid();
    let (rss, peak) = (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?);
    drop(slow);
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    drop(nginx);
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

/// What the slow connections send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flood {
    /// HTTP/1 request heads, 15 KB in header lines of 5 KB (nginx answers a line over 8 KiB with
    /// 400 and closes).
    Heads,
    /// HTTP/2 (h2c): a HEADERS frame without END_HEADERS, then CONTINUATION frames of valid
    /// header fields, 12 KB in all (under nginx's 16 KiB header limit), never ended.
    Continuation,
}

/// An HTTP/2 frame.
fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([ty, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// SLOW connections that each send the start of a request, about 500 bytes per write, to
/// 12–15 KB, and stay open: returned, to be dropped when done.
fn slowloris(addr: std::net::SocketAddr, flood: Flood) -> Result<Vec<TcpStream>> {
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut c = TcpStream::connect(addr)?;
        match flood {
            Flood::Heads => c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: ")?,
            Flood::Continuation => {
                let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                start.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
                // HEADERS on stream 1, no END_HEADERS: :method GET, :path /, :scheme http.
                start.extend(h2_frame(1, 0, 1, &[0x82, 0x84, 0x86]));
                c.write_all(&start)?;
            }
        }
        slow.push(c);
    }
    // Four literal fields (without indexing, new name `x-p`, 100-byte value) per CONTINUATION.
    let field = [&[0x00, 3][..], b"x-p", &[100], &[b'a'; 100]].concat();
    let continuation = h2_frame(9, 0, 1, &field.repeat(4));
    let pad = vec![b'a'; 500];
    for i in 0..30 {
        for c in &mut slow {
            match flood {
                Flood::Heads => {
                    c.write_all(&pad)?;
                    if i % 10 == 9 {
                        write!(c, "\r\nX-Pad-{i}: ")?;
                    }
                }
                Flood::Continuation if i < 28 => c.write_all(&continuation)?,
                Flood::Continuation => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Still open: nginx is waiting for the rest of each request (over HTTP/2 it has sent its
    // SETTINGS, but no GOAWAY and no RST_STREAM).
    for c in &slow {
        c.set_nonblocking(true)?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match (&*c).read(&mut buf) {
                Ok(0) => anyhow::bail!("nginx closed a slow {flood:?} connection"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let refused = match flood {
            Flood::Heads => !got.is_empty(),
            Flood::Continuation => {
                let (mut p, mut bad) = (0, false);
                while let Some(h) = got.get(p..p + 9) {
                    bad |= h[3] == 7 || h[3] == 3; // GOAWAY, RST_STREAM
                    p += 9 + u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                }
                bad
            }
        };
        ensure!(!refused, "nginx answered a slow {flood:?} connection");
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

/// nginx serving HTTP/2 in clear (h2c, prior knowledge).
fn nginx_h2(dir: &std::path::Path) -> Result<Nginx> {
    std::fs::create_dir_all(dir)?;
    let template = dir.join("h2.conf.template");
    let conf = std::fs::read_to_string(apps_dir().join("eval_nginx.conf.template"))?.replace(
        "listen 127.0.0.1:{{PORT}};",
        "listen 127.0.0.1:{{PORT}} http2;",
    );
    std::fs::write(&template, conf)?;
    spawn_nginx(
        &template,
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

/// `n` requests `/{prefix}-0` … over new connections (HTTP/1: one each) or one HTTP/2
/// connection (curl, prior knowledge), all answered.
fn requests(addr: std::net::SocketAddr, flood: Flood, prefix: &str, n: usize) -> Result<()> {
    match flood {
        Flood::Heads => (0..n).try_for_each(|i| get(addr, &format!("/{prefix}-{i}"))),
        // One curl per request: curl 7.88 does not send a second request on a reused
        // prior-knowledge connection.
        Flood::Continuation => (0..n).try_for_each(|i| {
            let out = std::process::Command::new("curl")
                .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null"])
                .args(["-w", "%{http_code}"])
                .arg(format!("http://{addr}/{prefix}-{i}"))
                .output()?;
            let code = String::from_utf8_lossy(&out.stdout);
            ensure!(code == "200", "HTTP/2 /{prefix}-{i} answered {code}");
            Ok(())
        }),
    }
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
fn slowloris_run(flood: Flood, config: Option<&str>) -> Result<Run> {
    let (rt, receiver) = runtime_with_receiver()?;
    let tag = format!("{flood:?}-{}", config.map_or("default", |_| "small"));
    let dir = ztrace_e2e::temp::TempDir::new(&format!("budget-{tag}"))?;
    let nginx = match flood {
        Flood::Heads => nginx_ok(&dir)?,
        Flood::Continuation => nginx_h2(&dir)?,
    };
    let mut args = vec![
        "--pid".to_string(),
        nginx.master.pid().to_string(),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
        // nginx may read several of a connection's writes at once: capture all of them, so that
        // every head or header block reaches the parser whole (past the cap it has a gap, and
        // the parser drops what it can no longer decode).
        "--payload-cap".into(),
        "4096".into(),
    ];
    if let Some(text) = config {
        let path = dir.join("ztrace.toml");
        std::fs::write(&path, text)?;
        args.extend(["--config".into(), path.to_string_lossy().into_owned()]);
    }
    let mut ztrace = spawn_ztrace(&args)?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
    requests(addr, flood, "warm", WARM)?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = ztrace.pid();
    let rss_before_kib = status_kib(pid, "VmRSS:")?;
    let slow = slowloris(addr, flood)?;
    let (rss_after_kib, peak_kib) = (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?);
    requests(addr, flood, "after", AFTER)?;
    std::thread::sleep(Duration::from_secs(2));
    drop(slow);
    ztrace.signal(libc::SIGINT);
    ensure!(ztrace.wait_exit(Duration::from_secs(30)) == Some(0));
    drop(nginx);
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
    default_and_small_budget(Flood::Heads)
}

#[test]
fn a_small_parser_budget_sheds_http2_continuation_floods_counts_them_and_keeps_tracing()
-> Result<()> {
    if !privileged_or_skip(
        "a_small_parser_budget_sheds_http2_continuation_floods_counts_them_and_keeps_tracing",
    ) {
        return Ok(());
    }
    default_and_small_budget(Flood::Continuation)
}

/// The same flood under the default budget and a 4 MiB one, side by side.
fn default_and_small_budget(flood: Flood) -> Result<()> {
    let default = slowloris_run(flood, None)?;
    let small = slowloris_run(flood, Some("[memory]\nparser_budget = \"4MiB\"\n"))?;
    for (name, r) in [("default budget", &default), ("4 MiB budget", &small)] {
        eprintln!(
            "{flood:?}, {name}: VmRSS {} MiB before {SLOW} slow connections, {} MiB after (+{} MiB), VmHWM {} MiB; \
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
    ensure!(
        default.shed == 0,
        "the default budget holds {SLOW} slow connections"
    );
    ensure!(
        default.parser_peak_kib > 2 * small.budget_kib,
        "{SLOW} slow connections of 12-15 KB held only {} KiB: the budget measured nothing",
        default.parser_peak_kib
    );
    // How many: those whose buffer grew while the budget was full (270 to 656 seen).
    ensure!(
        small.shed >= SLOW as u64 / 10 && small.shed_metric == small.shed as i64,
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
