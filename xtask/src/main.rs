//! `cargo xtask …`: everything a fresh Debian machine needs to build, run and test ztrace.
//! Every step says what it does and skips what is already in place, so each command can be run
//! again at any time.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain: LLVM 22 dev packages, nightly rust-src, bpf-linker.
    Setup,
    /// Set up, then build the ztrace binary (release).
    Build,
    /// Set up, build and run ztrace as root. With no arguments: a live demo that traces two small
    /// Python services while curl drives them, printing linked spans to the terminal.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run every check and test: fmt, clippy (userspace and eBPF), unit tests and the
    /// privileged end-to-end tests (as root, loading real probes).
    Test,
    /// Formatting and clippy for the userspace and eBPF crates.
    Lint,
    /// Fuzz every protocol parser (cargo-fuzz, nightly) for a while each, growing the corpus
    /// under userspace/protocols/fuzz/corpus, and print executions per parser.
    Fuzz {
        /// Seconds per parser.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Measure what tracing costs the traced application (nginx, a Python server) and bystanders:
    /// untraced and traced rounds side by side, as root; prints a table and writes it to
    /// target/bench/overhead.md.
    Bench {
        /// Short rounds, for a smoke run.
        #[arg(long)]
        quick: bool,
    },
    /// The ground-truth linking evaluation at benchmark scale, as root: nginx → Node.js →
    /// tokio/hyper → Python → Redis traced by ztrace, every end-user request with a unique id;
    /// prints parent-edge precision/recall, complete traces and well-formedness, and writes the
    /// table to target/eval/linking.md (the CI-scale run with assertions is tests/e2e_linking.rs).
    Eval {
        /// End-user requests in all.
        #[arg(long, default_value_t = 4000)]
        requests: usize,
        /// Concurrent keep-alive clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
}

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "curl",
    "python3",
];
const BPF_LINKER_VERSION: &str = "0.13";
const BPF_RUSTFLAGS: &str = "--cfg=bpf_target_arch=\"x86_64\"";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    say(&format!("running {cmd:?}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output_ok(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Debian packages the end-to-end tests drive: real servers and clients.
const TEST_PACKAGES: &[&str] = &[
    "redis-server",
    "redis-tools",
    "util-linux",
    "postgresql",
    "mariadb-server",
    "mariadb-client",
    "dnsmasq-base",
    "openssl",
    "bind9-dnsutils",
    // The linking evaluation's topology (tests/src/topology.rs), its fan-out shapes included.
    "nginx",
    "nodejs",
    "default-jdk-headless",
    "golang-go",
];

/// Python modules the end-to-end test services import, by (module, PyPI package).
const TEST_PYTHON_MODULES: &[(&str, &str)] = &[("grpc", "grpcio"), ("aiohttp", "aiohttp")];

/// Installs the PyPI packages whose modules `python3` cannot import yet.
fn pip_install(modules: &[(&str, &str)]) -> Result<()> {
    for (module, package) in modules {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if present {
            say(&format!("python module {module}: present"));
        } else {
            say(&format!(
                "installing PyPI package {package} for the test services"
            ));
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    Ok(())
}

fn setup() -> Result<()> {
    apt_install(APT_PACKAGES)?;
    setup_rust()
}

/// Installs whichever of `packages` are missing (idempotent; says what it does).
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        say(&format!("Debian packages {packages:?}: all present"));
    } else {
        if !is_root() {
            bail!(
                "Debian packages {missing:?} are missing; run this as root so they can be installed"
            );
        }
        say(&format!("installing Debian packages {missing:?}"));
        let had_nginx_pid = Path::new("/run/nginx.pid").exists();
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        // Where no policy-rc.d stops it, the package starts the system's nginx on port 80: the
        // tests run their own, so stop that one again.
        if missing.contains(&"nginx") && !had_nginx_pid && Path::new("/run/nginx.pid").exists() {
            say("stopping the nginx service the package started (the tests run their own)");
            let _ = Command::new("nginx").args(["-s", "quit"]).status();
        }
    }
    Ok(())
}

fn setup_rust() -> Result<()> {
    let nightly_src = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if nightly_src {
        say("nightly toolchain with rust-src: present");
    } else {
        say("installing the nightly toolchain's rust-src (the eBPF side builds core from source)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let linker = cargo_bin_dir().join("bpf-linker");
    let have = output_ok(Command::new(&linker).arg("--version"))
        .is_some_and(|v| v.contains(&format!(" {BPF_LINKER_VERSION}.")));
    if have {
        say(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
    } else {
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes, once)"
        ));
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(args);
    // bpf-linker is found by the nightly build of the probes through PATH.
    let path = format!(
        "{}:{}",
        cargo_bin_dir().display(),
        env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path);
    cmd
}

/// The binary as shipped (profile `dist`, see Cargo.toml): what `run`, `test`, `eval` and
/// `bench` run.
fn build() -> Result<PathBuf> {
    setup()?;
    build_dist()
}

fn build_dist() -> Result<PathBuf> {
    run(&mut cargo(&[
        "build",
        "--profile",
        "dist",
        "--package",
        "ztrace",
    ]))?;
    Ok(root().join("target/dist/ztrace"))
}

fn lint() -> Result<()> {
    run(&mut cargo(&["fmt", "--all", "--check"]))?;
    run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The probe crate checked as what it is: a no_std program for the BPF target.
    let mut probes = cargo(&[
        "+nightly",
        "clippy",
        "--package",
        "ztrace-probes",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    probes
        .env("RUSTFLAGS", BPF_RUSTFLAGS)
        .env("CARGO_TARGET_DIR", root().join("target/bpf-clippy"));
    run(&mut probes)
}

fn test() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("the end-to-end tests load eBPF probes and must run as root (sudo cargo xtask test)");
    }
    apt_install(TEST_PACKAGES)?;
    pip_install(TEST_PYTHON_MODULES)?;
    lint()?;
    // Build the binaries the end-to-end tests run, then every test in the workspace.
    let ztrace = build_dist()?;
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ztrace-eval-async-svc",
    ]))?;
    run(
        cargo(&["test", "--workspace", "--release", "--", "--test-threads=1"])
            .env("ZTRACE_BIN", ztrace)
            .env("ZTRACE_E2E_REQUIRED", "1"),
    )
}

const FUZZ_TARGETS: &[&str] = &["http1", "http2", "redis", "postgres", "mysql", "sql", "dns"];

fn fuzz(seconds: u64) -> Result<()> {
    setup_rust()?;
    if output_ok(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        say("installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz"]))?;
    }
    let dir = root().join("userspace/protocols/fuzz");
    let mut table = vec![
        "| parser | seconds | executions | exec/s |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for target in FUZZ_TARGETS {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        say(&format!("fuzzing {target} for {seconds}s"));
        let out = Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", "-O", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "fuzzing {target} found a failure (see userspace/protocols/fuzz/artifacts/{target}):\n{}",
                log.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| {
                    l.strip_prefix(name)
                        .map(|v| v.trim().trim_start_matches(':').trim().to_string())
                })
                .unwrap_or_else(|| "?".into())
        };
        table.push(format!(
            "| {target} | {seconds} | {} | {} |",
            stat("stat::number_of_executed_units"),
            stat("stat::average_exec_per_sec")
        ));
    }
    println!("{}", table.join("\n"));
    Ok(())
}

/// What `cargo xtask eval` runs: the topology's servers, the fan-out shapes' runtimes included
/// (aiohttp from Debian here: the eval installs no PyPI packages).
const EVAL_PACKAGES: &[&str] = &[
    "nginx",
    "nodejs",
    "redis-server",
    "python3",
    "python3-aiohttp",
    "default-jdk-headless",
    "golang-go",
];

fn eval(requests: usize, clients: usize) -> Result<()> {
    if !is_root() {
        bail!(
            "the evaluation loads eBPF probes and installs nginx, Node.js and Redis: run it as root (sudo cargo xtask eval)"
        );
    }
    apt_install(EVAL_PACKAGES)?;
    let ztrace = build()?;
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ztrace-eval-async-svc",
        "--package",
        "ztrace-e2e",
    ]))?;
    let out = root().join("target/eval/linking.md");
    run(Command::new(root().join("target/release/ztrace-eval"))
        .args(["--requests", &requests.to_string()])
        .args(["--clients", &clients.to_string()])
        .arg("--out")
        .arg(&out)
        .env("ZTRACE_BIN", ztrace))
}

fn demo(bin: &Path) -> Result<()> {
    let script = root().join("tests/apps/demo.sh");
    run(Command::new("bash").arg(script).env("ZTRACE_BIN", bin))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup(),
        Task::Build => build().map(|_| ()),
        Task::Lint => setup().and_then(|_| lint()),
        Task::Test => test(),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Bench { quick } => bench::bench(quick),
        Task::Eval { requests, clients } => eval(requests, clients),
        Task::Run { args } => build().and_then(|bin| {
            if !is_root() {
                bail!("ztrace loads eBPF programs: run as root (sudo cargo xtask run …)");
            }
            if args.is_empty() {
                demo(&bin)
            } else {
                run(Command::new(&bin).args(&args))
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
