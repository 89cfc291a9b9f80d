//! ztrace's memory under connection churn and slowloris heads, as root: a real nginx (master and
//! worker traced) gets CHURN short connections (one request each, then closed) and then SLOW
//! connections that each send most of an unfinished 16 KiB request head and stay open. ztrace's
//! peak resident set (VmHWM) must stay under RSS_BOUND_MIB, the bound the README states.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use ztrace_e2e::harness::{
    apps_dir, privileged_or_skip, runtime_with_receiver, spawn_nginx, spawn_ztrace,
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
    let nginx = spawn_nginx(
        &apps_dir().join("eval_nginx.conf.template"),
        &dir,
        &[
            ("UPSTREAMS", String::new()),
            (
                "LOCATIONS",
                "        location / { return 200 \"ok\"; }\n".to_string(),
            ),
        ],
    )?;
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
    let mut slow = Vec::with_capacity(SLOW);
    let pad = vec![b'a'; 500];
    for _ in 0..SLOW {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: ")?;
        slow.push(c);
    }
    // Each head grows by 500 bytes at a time (one captured syscall each), to 15 KiB.
    for _ in 0..30 {
        for c in &mut slow {
            c.write_all(&pad)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
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
