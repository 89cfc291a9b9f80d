//! `cargo xtask …`: everything a fresh Debian machine needs to build, run and test ztrace.
//! Every step says what it does and skips what is already in place, so each command can be run
//! again at any time.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};

mod bench;
mod kernels;
mod layers;
mod package;
mod toolchain;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs: the pinned stable and eBPF toolchains (rust-toolchain.toml,
    /// ebpf-probes/rust-toolchain.toml) with their components, Debian's LLVM dev packages of the
    /// eBPF toolchain's LLVM major, and bpf-linker built against them; then check that the two
    /// LLVMs agree.
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
    /// The kernel matrix, as root: boot each kernel of xtask/src/kernels.rs (Debian 12's stock
    /// 6.1) under QEMU and run the HTTP smoke test inside it with the real probes. `test` runs it.
    Kernels,
    /// Set up, build, and make a Debian package (target/package/ztrace_VERSION_ARCH.deb): the
    /// binary, a hardened systemd unit, a commented /etc/ztrace/config.toml, man page and
    /// shell completions.
    Package,
    /// Prove the set-up from scratch: in throwaway RUSTUP_HOME and CARGO_HOME folders under
    /// target/fresh, with no toolchain, crate or bpf-linker in them, run `cargo xtask setup` and
    /// build the probes the way `cargo build` does (userspace/build.rs); print how long each took.
    /// Debian packages are the machine's (setup installs what is missing). CI runs it.
    Fresh,
    /// Fuzz every protocol parser, the OTTL grammar and the record file replay path (cargo-fuzz,
    /// the pinned nightly) for a while each, growing the corpus under
    /// userspace/protocols/fuzz/corpus (userspace/fuzz/corpus for `record`), and print executions
    /// per target.
    Fuzz {
        /// Seconds per parser.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Fuzz only this target (e.g. `ottl`).
        #[arg(long)]
        only: Option<String>,
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
    /// With --cross-host: hosts as network namespaces, one ztrace each, linked through their
    /// peer channel; table in target/eval/crosshost.md (CI scale: tests/e2e_crosshost.rs).
    Eval {
        /// The cross-host variant (shapes thread, pool, dnat, masq, nodeport, gateway, callback,
        /// noagent, and a control with the peer channel off).
        #[arg(long)]
        cross_host: bool,
        /// End-user requests in all.
        #[arg(long, default_value_t = 4000)]
        requests: usize,
        /// Concurrent keep-alive clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Instead: the fault-injection evaluation of tail sampling and anomaly detection
        /// (tests/src/faults.rs): detection delays, false alarms, error/slow/healthy traces kept,
        /// export volume; writes target/eval/faults.md.
        #[arg(long)]
        faults: bool,
        /// Length of the fault evaluation (three steady phases, two faults).
        #[arg(long, default_value_t = 6.0)]
        minutes: f64,
    },
}

/// Debian packages `cargo xtask run`'s demo uses.
const APT_PACKAGES: &[&str] = &["curl", "python3"];
/// bpf-linker, built from crates.io against Debian's LLVM of the same major as the pinned eBPF
/// toolchain (the cargo feature `llvm-N`; 0.13.0 has llvm-21, llvm-22 and llvm-23).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, for `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
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
    // Reads the kernel's traced set (tests/e2e_lifecycle.rs).
    "bpftool",
    // The linking evaluation's topology (tests/src/topology.rs), its fan-out shapes included.
    "nginx",
    "nodejs",
    "default-jdk-headless",
    "golang-go",
    // The cross-host test (tests/tests/e2e_crosshost.rs): network namespaces, veth pairs, DNAT.
    "iproute2",
    "iptables",
    // The package test (tests/tests/package.rs): systemd-analyze verifies the unit.
    "systemd",
];

/// PyPI packages the end-to-end test services import, pinned: (distribution, version).
const TEST_PYTHON_PACKAGES: &[(&str, &str)] = &[("grpcio", "1.85.3"), ("aiohttp", "3.14.5")];

/// Installs each pinned PyPI package whose installed version (if any) is not the pinned one.
fn pip_install(packages: &[(&str, &str)]) -> Result<()> {
    for (package, version) in packages {
        let installed = output_ok(Command::new("python3").args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version('{package}'))"),
        ]));
        if installed.as_deref().map(str::trim) == Some(*version) {
            say(&format!("PyPI package {package} {version}: present"));
        } else {
            say(&format!(
                "installing PyPI package {package}=={version} for the test services{}",
                installed.map_or(String::new(), |v| format!(" (found {})", v.trim()))
            ));
            run(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                &format!("{package}=={version}"),
            ]))?;
        }
    }
    Ok(())
}

/// Everything the build needs, installed where missing: the pinned stable and eBPF toolchains
/// with their components, Debian's LLVM dev packages of the eBPF toolchain's LLVM major, and a
/// bpf-linker built against them. Ends with the LLVM check that every build relies on.
fn setup() -> Result<()> {
    apt_install(APT_PACKAGES)?;
    let pin = setup_rust()?;
    check_ebpf_toolchain(&pin.channel).map(|_| ())
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

/// The eBPF toolchain's pin (ebpf-probes/rust-toolchain.toml).
fn ebpf_pin() -> Result<toolchain::Pin> {
    toolchain::read_pin(&root(), toolchain::EBPF_PIN_FILE).map_err(|e| anyhow!(e))
}

/// Installs both pinned toolchains and bpf-linker; returns the eBPF pin.
fn setup_rust() -> Result<toolchain::Pin> {
    let user = toolchain::read_pin(&root(), toolchain::USER_PIN_FILE).map_err(|e| anyhow!(e))?;
    ensure_toolchain(&user, "userspace, xtask and tests")?;
    let pin = ebpf_pin()?;
    ensure_toolchain(&pin, "the eBPF probes: builds `core` from source")?;
    let llvm = toolchain::toolchain_llvm_major(&pin.channel).map_err(|e| anyhow!(e))?;
    say(&format!(
        "the eBPF toolchain {} is on LLVM {llvm}",
        pin.channel
    ));
    let llvm_packages = [
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
        "zlib1g-dev".into(),
    ];
    apt_install(&llvm_packages.each_ref().map(String::as_str)).with_context(|| {
        format!(
            "bpf-linker must be built against the LLVM of the eBPF toolchain ({llvm}), from \
             Debian's llvm-{llvm}-dev. If the package sources have none, move the pin in {} to a \
             nightly whose `rustc -vV` names an LLVM they have (Debian 12: 22)",
            toolchain::EBPF_PIN_FILE
        )
    })?;
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = output_ok(Command::new(&linker).arg("--version"));
    let linker_llvm = std::fs::read(&linker)
        .ok()
        .and_then(|b| toolchain::linker_llvm_major(&b));
    let wanted_version = version
        .as_deref()
        .is_some_and(|v| v.trim() == format!("bpf-linker {BPF_LINKER_VERSION}"));
    if wanted_version && linker_llvm == Some(llvm) {
        say(&format!(
            "bpf-linker {BPF_LINKER_VERSION} on LLVM {llvm}: present"
        ));
    } else {
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute, once){}",
            match (version, linker_llvm) {
                (None, _) => String::new(),
                (Some(v), l) => format!(
                    "; replacing {} on LLVM {}",
                    v.trim(),
                    l.map_or("?".into(), |l| l.to_string())
                ),
            }
        ));
        let path = format!(
            "/usr/lib/llvm-{llvm}/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                &format!("={BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ])
            .env("PATH", path))?;
    }
    Ok(pin)
}

/// Installs a pinned toolchain, or the components it lacks (a `--profile minimal` install has no
/// clippy or rustfmt).
fn ensure_toolchain(pin: &toolchain::Pin, what: &str) -> Result<()> {
    let installed = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        &pin.channel,
        "--installed",
    ]));
    let Some(installed) = installed else {
        say(&format!(
            "installing the Rust toolchain {} with {:?} ({what})",
            pin.channel, pin.components
        ));
        return run(Command::new("rustup")
            .args(["toolchain", "install", &pin.channel, "--profile", "minimal"])
            .args(
                pin.components
                    .iter()
                    .flat_map(|c| ["--component", c.as_str()]),
            ));
    };
    let missing: Vec<&str> = pin
        .components
        .iter()
        .map(String::as_str)
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        say(&format!(
            "Rust toolchain {} with {:?}: present",
            pin.channel, pin.components
        ));
        Ok(())
    } else {
        say(&format!(
            "adding {missing:?} to the Rust toolchain {} ({what})",
            pin.channel
        ));
        run(Command::new("rustup")
            .args(["component", "add", "--toolchain", &pin.channel])
            .args(&missing))
    }
}

/// The check in front of every probe build: the bpf-linker the build will find and the eBPF
/// toolchain must be on one LLVM major. Says what to run otherwise.
fn check_ebpf_toolchain(channel: &str) -> Result<u32> {
    let llvm = toolchain::toolchain_llvm_major(channel).map_err(|e| anyhow!(e))?;
    let path = build_path();
    match toolchain::linker_in_path(path.as_ref()) {
        None => bail!(
            "no bpf-linker in {}; run `cargo xtask setup`",
            cargo_bin_dir().display()
        ),
        Some((linker, Some(l))) if l != llvm => {
            bail!(toolchain::mismatch_message(channel, llvm, &linker, l))
        }
        Some((linker, Some(_))) => say(&format!(
            "LLVM check: {channel} and {} are both on LLVM {llvm}",
            linker.display()
        )),
        Some((linker, None)) => say(&format!(
            "LLVM check: cannot tell which LLVM {} links (statically linked?); the eBPF toolchain is on LLVM {llvm}",
            linker.display()
        )),
    }
    Ok(llvm)
}

/// PATH for builds: cargo's bin folder first, where setup puts bpf-linker.
fn build_path() -> String {
    let bin = cargo_bin_dir();
    let path = env::var("PATH").unwrap_or_default();
    if env::split_paths(&path).next() == Some(bin.clone()) {
        path
    } else {
        format!("{}:{path}", bin.display())
    }
}

/// cargo on the pinned stable toolchain, in the workspace.
fn cargo(args: &[&str]) -> Result<Command> {
    let pin = toolchain::read_pin(&root(), toolchain::USER_PIN_FILE).map_err(|e| anyhow!(e))?;
    Ok(cargo_on(&pin.channel, args))
}

/// cargo on `channel`, in the workspace, with bpf-linker on PATH (the eBPF build of the probes
/// finds it there).
fn cargo_on(channel: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .arg(format!("+{channel}"))
        .args(args)
        .env("PATH", build_path());
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
    ])?)?;
    Ok(root().join("target/dist/ztrace"))
}

fn lint() -> Result<()> {
    layers::check(&root())?;
    run(&mut cargo(&["fmt", "--all", "--check"])?)?;
    run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?)?;
    // The probe crate checked as what it is: a no_std program for the BPF target, with its own
    // pinned toolchain.
    let mut probes = cargo_on(
        &ebpf_pin()?.channel,
        &[
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
        ],
    );
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
    pip_install(TEST_PYTHON_PACKAGES)?;
    lint()?;
    // Build the binaries the end-to-end tests run, then every test in the workspace.
    let ztrace = build_dist()?;
    let deb = package::package(&root(), &ztrace)?;
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ztrace-eval-async-svc",
    ])?)?;
    run(
        cargo(&["test", "--workspace", "--release", "--", "--test-threads=1"])?
            .env("ZTRACE_BIN", &ztrace)
            .env("ZTRACE_DEB", deb)
            .env("ZTRACE_E2E_REQUIRED", "1"),
    )?;
    // The kernel matrix: the smoke test on the other kernels (this one ran everything above).
    apt_install(kernels::PACKAGES)?;
    kernels::kernels(&root(), &ztrace)
}

/// See [`Task::Fresh`].
fn fresh() -> Result<()> {
    let dir = root().join("target/fresh");
    if dir.exists() {
        say(&format!("removing the previous {}", dir.display()));
        std::fs::remove_dir_all(&dir)?;
    }
    let (rustup_home, cargo_home) = (dir.join("rustup"), dir.join("cargo"));
    std::fs::create_dir_all(&cargo_home)?;
    // Nothing of this machine's Rust set-up may be found: not its cargo folder (bpf-linker,
    // cargo-fuzz, proxies), nor its toolchains.
    let real_cargo_bin = cargo_bin_dir();
    let system_path: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .filter(|p| *p != real_cargo_bin && !p.starts_with(&real_cargo_bin))
        .collect();
    let path = env::join_paths(std::iter::once(cargo_home.join("bin")).chain(system_path))?;
    // rustup-init is rustup under that name: the machine's rustup installs itself there.
    let rustup =
        toolchain::find_in_path("rustup", env::var_os("PATH").unwrap_or_default().as_ref())
            .context(
                "rustup is not on PATH: install it first (it is how the toolchains are pinned)",
            )?;
    let init = dir.join("rustup-init");
    std::fs::copy(&rustup, &init)?;
    let env = |cmd: &mut Command| {
        cmd.current_dir(root())
            .env("RUSTUP_HOME", &rustup_home)
            .env("CARGO_HOME", &cargo_home)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env("PATH", &path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("CARGO");
    };
    let start = std::time::Instant::now();
    let mut cmd = Command::new(&init);
    cmd.args([
        "-y",
        "--no-modify-path",
        "--profile",
        "minimal",
        "--default-toolchain",
        "stable",
    ]);
    env(&mut cmd);
    run(&mut cmd)?;
    // A new machine has one stable toolchain, whichever was current when it was made: so does
    // this rustup now. It compiles xtask; setup installs the pinned toolchains.
    let mut cmd = Command::new("cargo");
    cmd.args(["xtask", "setup"]);
    env(&mut cmd);
    run(&mut cmd)?;
    let setup = start.elapsed();
    // What `cargo xtask build` does to the probes: userspace/build.rs, on the pinned stable.
    let user = toolchain::read_pin(&root(), toolchain::USER_PIN_FILE).map_err(|e| anyhow!(e))?;
    let mut cmd = cargo_on(&user.channel, &["check", "--package", "ztrace"]);
    env(&mut cmd);
    run(&mut cmd)?;
    let all = start.elapsed();
    say(&format!(
        "from scratch: set-up {:.0} s (toolchains, xtask, bpf-linker), then the probes built through \
         userspace/build.rs with the userspace checked {:.0} s; {:.0} s in all",
        setup.as_secs_f64(),
        (all - setup).as_secs_f64(),
        all.as_secs_f64()
    ));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

const FUZZ_TARGETS: &[&str] = &[
    "http1", "http2", "redis", "postgres", "mysql", "sql", "dns", "ottl", "record",
];

/// The cargo-fuzz crate of a target: the parsers' own, or the daemon's (whose build builds the
/// eBPF probes, as any build of it does).
fn fuzz_crate(target: &str) -> &'static str {
    if target == "record" {
        "userspace/fuzz"
    } else {
        "userspace/protocols/fuzz"
    }
}

fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    if let Some(o) = only
        && !FUZZ_TARGETS.contains(&o)
    {
        bail!("no fuzz target `{o}`; targets: {}", FUZZ_TARGETS.join(", "));
    }
    let toolchain = format!("+{}", setup_rust()?.channel);
    let have = output_ok(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.trim().ends_with(CARGO_FUZZ_VERSION));
    if !have {
        say(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION}"));
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--force",
            "--version",
            &format!("={CARGO_FUZZ_VERSION}"),
        ]))?;
    }
    let mut table = vec![
        "| parser | seconds | executions | exec/s |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    for target in FUZZ_TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == **t))
    {
        let krate = fuzz_crate(target);
        let dir = root().join(krate);
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        say(&format!("fuzzing {target} for {seconds}s"));
        let out = Command::new("cargo")
            .current_dir(&dir)
            .args([&toolchain, "fuzz", "run", "-O", target])
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
                "fuzzing {target} found a failure (see {krate}/artifacts/{target}):\n{}",
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
/// (aiohttp comes from PyPI, pinned in `TEST_PYTHON_PACKAGES`).
const EVAL_PACKAGES: &[&str] = &[
    "nginx",
    "nodejs",
    "redis-server",
    "python3",
    "default-jdk-headless",
    "golang-go",
];

/// What `cargo xtask eval --cross-host` adds: namespaces, veth pairs and DNAT.
const CROSS_HOST_EVAL_PACKAGES: &[&str] = &["iproute2", "iptables"];

fn eval(requests: usize, clients: usize, cross_host: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the evaluation loads eBPF probes and installs nginx, Node.js and Redis: run it as root (sudo cargo xtask eval)"
        );
    }
    apt_install(EVAL_PACKAGES)?;
    if cross_host {
        apt_install(CROSS_HOST_EVAL_PACKAGES)?;
    }
    // The asyncio shapes import aiohttp into the `python3` on PATH, which need not be Debian's.
    pip_install(TEST_PYTHON_PACKAGES)?;
    let ztrace = build()?;
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ztrace-eval-async-svc",
        "--package",
        "ztrace-e2e",
    ])?)?;
    let out = root().join(if cross_host {
        "target/eval/crosshost.md"
    } else {
        "target/eval/linking.md"
    });
    let mut cmd = Command::new(root().join("target/release/ztrace-eval"));
    if cross_host {
        cmd.arg("--cross-host");
    }
    run(cmd
        .args(["--requests", &requests.to_string()])
        .args(["--clients", &clients.to_string()])
        .arg("--out")
        .arg(&out)
        .env("ZTRACE_BIN", ztrace))
}

/// `cargo xtask eval --faults`: two Python services and curl, nothing else to install.
fn eval_faults(minutes: f64) -> Result<()> {
    if !is_root() {
        bail!("the evaluation loads eBPF probes: run it as root (sudo cargo xtask eval --faults)");
    }
    apt_install(&["python3", "curl"])?;
    let ztrace = build()?;
    run(&mut cargo(&[
        "build",
        "--release",
        "--package",
        "ztrace-e2e",
    ])?)?;
    let out = root().join("target/eval/faults.md");
    run(
        Command::new(root().join("target/release/ztrace-fault-eval"))
            .args(["--minutes", &minutes.to_string()])
            .arg("--out")
            .arg(&out)
            .env("ZTRACE_BIN", ztrace),
    )
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
        Task::Kernels => build().and_then(|bin| {
            if !is_root() {
                bail!("the kernel matrix loads eBPF programs in a VM: run as root");
            }
            apt_install(kernels::PACKAGES)?;
            kernels::kernels(&root(), &bin)
        }),
        Task::Package => build().and_then(|bin| package::package(&root(), &bin).map(|_| ())),
        Task::Fresh => fresh(),
        Task::Test => test(),
        Task::Fuzz { seconds, only } => fuzz(seconds, only.as_deref()),
        Task::Bench { quick } => bench::bench(quick),
        Task::Eval {
            faults: true,
            minutes,
            ..
        } => eval_faults(minutes),
        Task::Eval {
            requests,
            clients,
            cross_host,
            ..
        } => eval(requests, clients, cross_host),
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
