//! Service names and container facts end to end, as root on the real kernel: real interpreters
//! (Python run as a module, a Node.js script, a JDK jar), a server named by the operator with
//! `--pid PID=NAME`, and a server inside a cgroup named as Docker's systemd driver names it.
//! Each one's server spans must carry the name a person would choose, its runtime, and the
//! container id the kernel's /proc/PID/cgroup gives.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ztrace_e2e::{
    harness::{apps_dir, curl, privileged_or_skip, run_ok, spawn_app, spawn_ztrace, stop_ztrace},
    receiver::ReceivedSpan,
};

const CONTAINER_ID: &str = "5e1f0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

/// A cgroup v2 directory named like Docker's (`docker-<id>.scope`), removed on drop.
struct DockerStyleCgroup {
    slice: PathBuf,
    scope: PathBuf,
}

impl DockerStyleCgroup {
    fn create() -> Result<Self> {
        // /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .context("cgroup v2 is not mounted")?;
        let slice = root.join(format!("ztrace-e2e-{}.slice", std::process::id()));
        let scope = slice.join(format!("docker-{CONTAINER_ID}.scope"));
        std::fs::create_dir_all(&scope).with_context(|| format!("creating {}", scope.display()))?;
        Ok(DockerStyleCgroup { slice, scope })
    }

    fn enter(&self, pid: u32) -> Result<()> {
        std::fs::write(self.scope.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.scope.display()))
    }
}

impl Drop for DockerStyleCgroup {
    fn drop(&mut self) {
        // Empty by now (its process was killed first, see the test's order of drops).
        let _ = std::fs::remove_dir(&self.scope);
        let _ = std::fs::remove_dir(&self.slice);
    }
}

/// Compiles tests/apps/naming/Orders.java and packs it as `orders-1.0.jar` (a versioned jar
/// name, as build tools write them), in `dir`.
fn orders_jar(dir: &Path) -> Result<PathBuf> {
    run_ok(
        Command::new("javac")
            .arg("-d")
            .arg(dir)
            .arg(apps_dir().join("naming/Orders.java")),
    )
    .context("javac (apt-get install default-jdk-headless)")?;
    let jar = dir.join("orders-1.0.jar");
    run_ok(
        Command::new("jar")
            .arg("cfe")
            .arg(&jar)
            .arg("Orders")
            .arg("-C")
            .arg(dir)
            .arg("Orders.class"),
    )?;
    Ok(jar)
}

#[test]
fn services_are_named_as_people_name_them() -> Result<()> {
    if !privileged_or_skip("services_are_named_as_people_name_them") {
        return Ok(());
    }
    let (rt, receiver) = ztrace_e2e::harness::runtime_with_receiver()?;
    let cgroup = DockerStyleCgroup::create()?;
    let jar_dir = ztrace_e2e::temp::TempDir::new("naming")?;
    let jar = orders_jar(&jar_dir)?;

    let mut python_module = Command::new("python3");
    python_module
        .args(["-m", "two_tier", "backend"])
        .env("PYTHONPATH", apps_dir());
    let (python, python_port) = spawn_app(python_module)?;
    cgroup.enter(python.pid())?;
    let mut node_cmd = Command::new("node");
    node_cmd.arg(apps_dir().join("naming/pricing.js"));
    let (node, node_port) = spawn_app(node_cmd)?;
    let mut java_cmd = Command::new("java");
    java_cmd.arg("-jar").arg(&jar);
    let (java, java_port) = spawn_app(java_cmd)?;
    let mut named_cmd = Command::new("python3");
    named_cmd.arg(apps_dir().join("two_tier.py")).arg("backend");
    let (named, named_port) = spawn_app(named_cmd)?;

    // `ztrace check` tells the same names before anything is loaded, for PIDs and selectors.
    let check = Command::new(ztrace_e2e::harness::ztrace_bin())
        .args(["check", "--pid"])
        .arg(format!("{}={}", named.pid(), "checkout"))
        .arg("--pid")
        .arg(node.pid().to_string())
        .arg("--port")
        .arg(java_port.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&check.stdout);
    for want in [
        format!("process {}", named.pid()),
        "service.name: checkout (given)".to_string(),
        "service.name: pricing (the program the interpreter runs)".to_string(),
        format!("--port {java_port}: 1 running process(es) match"),
        "service.name: orders".to_string(),
        format!("listening: TCP {java_port} (server spans)"),
        "TLS: ".to_string(),
    ] {
        ensure!(text.contains(&want), "ztrace check lacks `{want}`:\n{text}");
    }
    let mut ztrace = spawn_ztrace(&[
        "--pid".into(),
        format!(
            "{},{},{},{}=checkout",
            python.pid(),
            node.pid(),
            java.pid(),
            named.pid()
        ),
        "--otlp-endpoint".into(),
        receiver.endpoint(),
    ])?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    for (port, path) in [
        (python_port, "/item/1"),
        (node_port, "/"),
        (java_port, "/"),
        (named_port, "/item/2"),
    ] {
        for _ in 0..3 {
            curl(&[format!("http://127.0.0.1:{port}{path}")])?;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_ztrace(&mut ztrace)?;
    let spans = rt.block_on(receiver.wait_for_spans(12, Duration::from_secs(10)));

    let server_of = |pid: u32| -> Result<ReceivedSpan> {
        spans
            .iter()
            .find(|s| {
                s.span.kind == SpanKind::Server as i32
                    && s.resource_int("process.pid") == Some(pid as i64)
            })
            .cloned()
            .with_context(|| {
                format!(
                    "no server span of pid {pid} among {} spans; ztrace said:\n{}",
                    spans.len(),
                    ztrace.stderr_text()
                )
            })
    };
    let py = server_of(python.pid())?;
    let js = server_of(node.pid())?;
    let jv = server_of(java.pid())?;
    let nm = server_of(named.pid())?;
    let attr = |s: &ReceivedSpan, k: &str| s.resource_str(k);

    ensure!(
        attr(&py, "service.name").as_deref() == Some("two_tier"),
        "{:?}",
        attr(&py, "service.name")
    );
    ensure!(
        attr(&js, "service.name").as_deref() == Some("pricing"),
        "{:?}",
        attr(&js, "service.name")
    );
    ensure!(
        attr(&jv, "service.name").as_deref() == Some("orders"),
        "{:?}",
        attr(&jv, "service.name")
    );
    ensure!(
        attr(&nm, "service.name").as_deref() == Some("checkout"),
        "{:?}",
        attr(&nm, "service.name")
    );

    ensure!(attr(&py, "process.runtime.name").as_deref() == Some("CPython"));
    ensure!(attr(&js, "process.runtime.name").as_deref() == Some("nodejs"));
    ensure!(attr(&jv, "process.runtime.name").as_deref() == Some("OpenJDK Runtime Environment"));
    let java_version = attr(&jv, "process.runtime.version").unwrap_or_default();
    ensure!(
        java_version.starts_with(|c: char| c.is_ascii_digit()),
        "process.runtime.version of the JDK: `{java_version}`"
    );
    // Python's executable resolves to python3.N: its version is in the name.
    let py_version = attr(&py, "process.runtime.version").unwrap_or_default();
    ensure!(
        py_version.starts_with("3."),
        "python version `{py_version}`"
    );

    ensure!(
        attr(&py, "container.id").as_deref() == Some(CONTAINER_ID),
        "container.id of the process in docker-{CONTAINER_ID}.scope: {:?}",
        attr(&py, "container.id")
    );
    for s in [&js, &jv, &nm] {
        ensure!(
            attr(s, "container.id").is_none(),
            "a process outside any container has container.id {:?}",
            attr(s, "container.id")
        );
    }
    // Kill the servers before the cgroup is removed (a cgroup with a process can't be).
    drop((python, node, java, named));
    std::thread::sleep(Duration::from_millis(200));
    drop(cgroup);
    Ok(())
}
