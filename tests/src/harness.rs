//! Process plumbing for the end-to-end tests: the ztrace binary under test, the services it
//! traces, and the privilege policy (as root the privileged tests must run; a run that loads no
//! probe is a failure, not a skip).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether privileged tests can run. Without root they are skipped loudly — unless
/// ZTRACE_E2E_REQUIRED is set (as `cargo xtask test` and CI do), where that is a failure.
pub fn privileged_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("ZTRACE_E2E_REQUIRED").is_some() {
        panic!("{test}: end-to-end tests must run as root (they load eBPF probes)");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF probes (run `sudo cargo xtask test`)");
    false
}

/// The ztrace binary: $ZTRACE_BIN, else the workspace's shipped build (`cargo xtask build`),
/// else its release build.
pub fn ztrace_bin() -> PathBuf {
    std::env::var_os("ZTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"));
            let dist = target.join("dist/ztrace");
            if dist.exists() {
                dist
            } else {
                target.join("release/ztrace")
            }
        })
}

pub fn apps_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/apps"))
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
    /// Collected stdout, when the process was started with stdout capture.
    pub stdout: Arc<Mutex<String>>,
}

impl Proc {
    /// `child`, its output not collected (empty stdout and stderr buffers).
    pub fn new(child: Child) -> Self {
        Proc {
            child,
            stderr: Arc::default(),
            stdout: Arc::default(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit; returns the exit code (None if killed by a signal or timed out).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr_text().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "process exited ({status}) before printing `{needle}`; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out waiting for `{needle}`; stderr:\n{}",
            self.stderr_text()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    collect(child.stderr.take())
}

fn collect(pipe: Option<impl std::io::Read + Send + 'static>) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    if let Some(pipe) = pipe {
        let sink = buf.clone();
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
}

/// Stops ztrace as an operator does (SIGINT) and requires a clean exit (code 0) within 30 s.
pub fn stop_ztrace(ztrace: &mut Proc) -> Result<()> {
    ztrace.signal(libc::SIGINT);
    let code = ztrace.wait_exit(Duration::from_secs(30));
    if code != Some(0) {
        bail!(
            "ztrace exited with {code:?}; stderr:\n{}",
            ztrace.stderr_text()
        );
    }
    Ok(())
}

/// Starts ztrace with `args`, collecting its stdout and stderr.
pub fn spawn_ztrace(args: &[String]) -> Result<Proc> {
    spawn_ztrace_env(args, &[])
}

/// Starts ztrace with `args` and exactly the `OTEL_*` variables in `env` (none inherited);
/// `env` may also set `RUST_LOG`.
pub fn spawn_ztrace_env(args: &[String], env: &[(&str, &str)]) -> Result<Proc> {
    let mut cmd = Command::new(ztrace_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    // ZTRACE_TEST_LOG: ztrace's log filter in tests (e.g. `info,ztrace::link=debug`).
    cmd.env(
        "RUST_LOG",
        std::env::var("ZTRACE_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", ztrace_bin().display()))?;
    let stderr = collect_stderr(&mut child);
    let stdout = collect(child.stdout.take());
    Ok(Proc {
        child,
        stderr,
        stdout,
    })
}

/// Starts a service of tests/apps/two_tier.py and returns it with the port it listens on.
pub fn spawn_service(args: &[&str]) -> Result<(Proc, u16)> {
    spawn_service_on("127.0.0.1", args)
}

/// Like [`spawn_service`], listening on `bind` (e.g. "::1").
pub fn spawn_service_on(bind: &str, args: &[&str]) -> Result<(Proc, u16)> {
    spawn_service_with(args, &[("BIND", bind)])
}

/// Like [`spawn_service`], with `env` set: `BIND`, or `LOG_REQUESTS=1` for a line on stderr per
/// request its handler serves (see two_tier.py).
pub fn spawn_service_with(args: &[&str], env: &[(&str, &str)]) -> Result<(Proc, u16)> {
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("two_tier.py"))
        .args(args)
        .envs(env.iter().copied());
    spawn_app(cmd)
}

/// Starts a test app of tests/apps that prints "PORT <n>" once listening; returns it and the port.
pub fn spawn_app(mut cmd: Command) -> Result<(Proc, u16)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("service stdout")?;
    let stderr = collect_stderr(&mut child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| {
            format!(
                "service printed `{line}` instead of its port; stderr:\n{}",
                stderr.lock().map(|s| s.clone()).unwrap_or_default()
            )
        })?;
    Ok((
        Proc {
            child,
            stderr,
            stdout: Arc::default(),
        },
        port,
    ))
}

/// Runs curl with `args`, failing on a non-zero exit.
pub fn curl(args: &[String]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .context("running curl (install it: apt-get install curl)")?;
    if !out.status.success() {
        bail!("curl {args:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Traces `server_pid` and a shell running `client_script` (which starts its clients after a
/// pause, so they are future children ztrace must follow) with OTLP export to `receiver`;
/// waits for the script, stops ztrace with SIGINT and returns every span the receiver got
/// (waiting for at least `min_spans`).
pub fn trace_server_and_clients(
    rt: &tokio::runtime::Runtime,
    receiver: &crate::receiver::Receiver,
    server_pid: u32,
    client_script: &str,
    extra_args: &[&str],
    min_spans: usize,
) -> Result<Vec<crate::receiver::ReceivedSpan>> {
    let clients = Command::new("bash").args(["-c", client_script]).spawn()?;
    let mut clients = Proc::new(clients);
    let mut args = vec![
        "--pid".to_string(),
        format!("{server_pid},{}", clients.pid()),
        "--otlp-endpoint".to_string(),
        receiver.endpoint(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let mut ztrace = spawn_ztrace(&args)?;
    ztrace.wait_stderr("process(es)", Duration::from_secs(60))?;
    let code = clients.wait_exit(Duration::from_secs(90));
    if code != Some(0) {
        bail!("client script exited with {code:?}: {client_script}");
    }
    std::thread::sleep(Duration::from_millis(500));
    ztrace.signal(libc::SIGINT);
    let code = ztrace.wait_exit(Duration::from_secs(30));
    if code != Some(0) {
        bail!("ztrace exited with {code:?}:\n{}", ztrace.stderr_text());
    }
    eprintln!("{}", ztrace.stderr_text());
    Ok(rt.block_on(receiver.wait_for_spans(min_spans, Duration::from_secs(10))))
}

/// The PID a script wrote to `path` (`echo $! > path`), once it is there; an error naming
/// `what` after 30 s.
pub fn wait_pid_file(path: &Path, what: &str) -> Result<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(pid);
        }
        if std::time::Instant::now() >= deadline {
            bail!("{what}: no PID in {} after 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on loopback (bound and released; good enough for test servers).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A loopback port that refuses connections for as long as the returned socket lives: the
/// socket holds the port bound without listening, so no server of this or another test can be
/// given it (a port from [`free_port`] is free only until the next bind to port 0 — once it went
/// to this process's own OTLP receiver and a "refused" connection was answered).
pub fn closed_port() -> Result<(tokio::net::TcpSocket, u16)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}

/// A self-signed certificate for `localhost` and its key, written into `dir` (cert.pem,
/// key.pem).
pub fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok((cert, key))
}

/// The HTTPS test server (tests/apps/https_server.py: Python's ssl module, so OpenSSL) with a
/// fresh self-signed certificate in `dir`: the server, its port and the certificate.
pub fn spawn_https_server(dir: &Path) -> Result<(Proc, u16, PathBuf)> {
    let (cert, key) = self_signed(dir)?;
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("https_server.py"))
        .arg(&cert)
        .arg(&key);
    let (server, port) = spawn_app(cmd)?;
    Ok((server, port, cert))
}

/// Runs `cmd`, failing with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `ztrace` run as user `nobody` with no capabilities (via util-linux `setpriv`).
pub fn ztrace_as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(ztrace_bin());
    cmd
}

/// A two-worker runtime with an OTLP receiver running on it.
pub fn runtime_with_receiver() -> Result<(tokio::runtime::Runtime, crate::receiver::Receiver)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let receiver = rt.block_on(crate::receiver::Receiver::start())?;
    Ok((rt, receiver))
}

/// A running nginx: its master (ztrace is given this one; workers are its children) and the
/// workers it had once listening. Dropping it stops all of them: SIGQUIT to the master, and the
/// workers killed by pid if they outlive it (a killed master leaves its workers serving).
pub struct Nginx {
    pub master: Proc,
    pub workers: Vec<u32>,
    pub port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.master.signal(libc::SIGQUIT);
        if self.master.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.master.child.kill();
        }
        for &w in &self.workers {
            let still_nginx = std::fs::read_to_string(format!("/proc/{w}/comm"))
                .is_ok_and(|c| c.trim() == "nginx");
            if still_nginx {
                // SAFETY: kill(2) on a worker of the nginx this test started (checked by name).
                unsafe { libc::kill(w as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Writes `dir/nginx.conf.template`: one worker in the foreground, its files under `{{DIR}}`,
/// no access log, and `server` (an nginx `server { … }` block, `{{PORT}}` its port) as its only
/// site; for [`spawn_nginx`].
pub fn nginx_template(dir: &std::path::Path, server: &str) -> Result<PathBuf> {
    let text = format!(
        r#"worker_processes 1;
daemon off;
master_process on;
pid {{{{DIR}}}}/nginx.pid;
error_log {{{{DIR}}}}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {{{{DIR}}}}/client_body;
    proxy_temp_path {{{{DIR}}}}/proxy;
    fastcgi_temp_path {{{{DIR}}}}/fastcgi;
    uwsgi_temp_path {{{{DIR}}}}/uwsgi;
    scgi_temp_path {{{{DIR}}}}/scgi;
{server}
}}
"#
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("nginx.conf.template");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts nginx in the foreground (`daemon off` in the config) from the config `template`, with
/// `{{DIR}}` (its private prefix, temp and log directory: `dir`), `{{PORT}}` (a free loopback
/// port it must listen on) and each of `vars` filled in; waits until it accepts connections and
/// has its workers.
pub fn spawn_nginx(
    template: &std::path::Path,
    dir: &std::path::Path,
    vars: &[(&str, String)],
) -> Result<Nginx> {
    let port = free_port()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut conf = std::fs::read_to_string(template)
        .with_context(|| format!("reading {}", template.display()))?
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{PORT}}", &port.to_string());
    for (k, v) in vars {
        conf = conf.replace(&format!("{{{{{k}}}}}"), v);
    }
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = dir.join("error.log");
    // Debian puts nginx in /usr/sbin, which a user's PATH may lack.
    let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("nginx");
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nginx (apt-get install nginx)")?;
    let stderr = collect_stderr(&mut child);
    let mut nginx = Nginx {
        master: Proc {
            child,
            stderr,
            stdout: Arc::default(),
        },
        workers: Vec::new(),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            nginx.workers = children_of(nginx.master.pid());
            if !nginx.workers.is_empty() {
                return Ok(nginx);
            }
        }
        let exited = nginx.master.child.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            bail!(
                "nginx did not start on 127.0.0.1:{port}: {}{}",
                nginx.master.stderr_text(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // After "pid (comm)": state, then the parent pid.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// nginx behind a load balancer: it listens with `listen 127.0.0.1:{{PORT}} {listen}` (a
/// `proxy_protocol` listener, which closes a connection that does not start with a PROXY
/// protocol header) and serves `location / { {location} }` (`{{NAME}}` filled from `vars`);
/// nginx and the balancer `apps/proxy_client.py {mode}` (it writes the PROXY headers and its
/// requests itself, and checks the answers) are traced until `min_spans` arrive.
pub fn trace_behind_a_balancer(
    tag: &str,
    listen: &str,
    location: &str,
    vars: &[(&str, String)],
    min_spans: usize,
    mode: &str,
) -> Result<Vec<crate::receiver::ReceivedSpan>> {
    let (rt, receiver) = runtime_with_receiver()?;
    let dir = crate::temp::TempDir::new(&format!("proxy-{tag}"))?;
    let server = format!(
        r#"    server {{
        listen 127.0.0.1:{{{{PORT}}}} {listen};
        location / {{ {location} }}
    }}"#
    );
    let template = nginx_template(&dir, &server)?;
    let nginx = spawn_nginx(&template, &dir, vars)?;
    let script = format!(
        "sleep 3; python3 '{}' {mode} {}",
        apps_dir().join("proxy_client.py").display(),
        nginx.port
    );
    trace_server_and_clients(&rt, &receiver, nginx.master.pid(), &script, &[], min_spans)
}

/// The HTTPS CLIENT span of `path` among `spans` (its `url.full` starts with `https://` and ends
/// with `path`), answered with status 200; the error lists how many spans came, and `log`.
pub fn https_client_span<'a>(
    spans: &'a [crate::receiver::ReceivedSpan],
    path: &str,
    log: &str,
) -> Result<&'a crate::receiver::ReceivedSpan> {
    let client = spans
        .iter()
        .find(|s| {
            s.span.kind == opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32
                && s.attr_str("url.full")
                    .is_some_and(|u| u.starts_with("https://") && u.ends_with(path))
        })
        .with_context(|| {
            format!(
                "no HTTPS client span of {path} among {} spans:\n{log}",
                spans.len()
            )
        })?;
    anyhow::ensure!(
        client.attr_int("http.response.status_code") == Some(200),
        "{path}: {client:#?}"
    );
    Ok(client)
}

/// A SERVER span behind the balancer of [`trace_behind_a_balancer`]: `client.*` is the client
/// the PROXY header named, the balancer (on loopback) the network peer.
pub fn ensure_proxied_client(
    srv: &crate::receiver::ReceivedSpan,
    what: &str,
    addr: &str,
    port: i64,
) -> Result<()> {
    anyhow::ensure!(
        srv.attr_str("client.address").as_deref() == Some(addr)
            && srv.attr_int("client.port") == Some(port)
            && srv.attr_str("network.peer.address").as_deref() == Some("127.0.0.1"),
        "{what}: client.* should be the PROXY header's client: {srv:#?}"
    );
    Ok(())
}

/// A config file's tail sampling that keeps exactly the error traces (`probabilistic 0` +
/// `status_code ERROR`), deciding `decision_wait` (e.g. "500ms") after a trace's last span.
pub fn errors_only_tail_sampling(decision_wait: &str) -> String {
    format!(
        r#"
[tail_sampling]
decision_wait = "{decision_wait}"

[[tail_sampling.policies]]
name = "healthy"
type = "probabilistic"
probabilistic = {{ sampling_percentage = 0 }}

[[tail_sampling.policies]]
name = "errors"
type = "status_code"
status_code = {{ status_codes = ["ERROR"] }}
"#
    )
}

/// `spans` are exactly `want` whole error traces of the two-tier services (frontend SERVER and
/// CLIENT, backend SERVER), every span an error kept with probability 1 (`ot=th:0`), as
/// [`errors_only_tail_sampling`] keeps them.
pub fn ensure_whole_error_traces(
    spans: &[crate::receiver::ReceivedSpan],
    want: usize,
    frontend: u32,
    backend: u32,
) -> Result<()> {
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
    let mut traces: std::collections::HashMap<String, Vec<&crate::receiver::ReceivedSpan>> =
        Default::default();
    for s in spans {
        traces.entry(s.trace_id_hex()).or_default().push(s);
    }
    anyhow::ensure!(
        traces.len() == want,
        "{} traces, want the {want} error traces; spans: {:#?}",
        traces.len(),
        spans
            .iter()
            .map(|s| (
                s.trace_id_hex(),
                s.span.name.clone(),
                s.attr_str("url.path")
            ))
            .collect::<Vec<_>>()
    );
    let mut whole = vec![
        (frontend, SpanKind::Server as i32),
        (frontend, SpanKind::Client as i32),
        (backend, SpanKind::Server as i32),
    ];
    whole.sort();
    for (id, t) in &traces {
        let mut shape: Vec<(u32, i32)> = t
            .iter()
            .map(|s| {
                (
                    s.resource_int("process.pid").unwrap_or(-1) as u32,
                    s.span.kind,
                )
            })
            .collect();
        shape.sort();
        anyhow::ensure!(shape == whole, "trace {id} is not whole: {shape:?}");
        for s in t {
            anyhow::ensure!(
                s.span.trace_state == "ot=th:0",
                "trace {id}: tracestate `{}`, want ot=th:0 (kept with probability 1)",
                s.span.trace_state
            );
            anyhow::ensure!(
                s.span.status.as_ref().map(|st| st.code) == Some(StatusCode::Error as i32),
                "trace {id}: a span of an error trace that is not an error: {:?}",
                s.span
            );
        }
    }
    Ok(())
}
