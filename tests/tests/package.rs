//! The Debian package (`cargo xtask package`, which `cargo xtask test` builds and names in
//! ZTRACE_DEB): installed with dpkg on this machine, the installed binary runs `ztrace check`,
//! systemd verifies the unit, the man page and completions are well-formed, and `dpkg --purge`
//! leaves nothing behind.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail, ensure};
use ztrace_e2e::harness::privileged_or_skip;

/// What the package installs (xtask/src/package.rs `INSTALLED`).
const FILES: &[&str] = &[
    "/usr/bin/ztrace",
    "/lib/systemd/system/ztrace.service",
    "/etc/ztrace/config.toml",
    "/usr/share/man/man1/ztrace.1.gz",
    "/usr/share/bash-completion/completions/ztrace",
    "/usr/share/zsh/vendor-completions/_ztrace",
    "/usr/share/fish/vendor_completions.d/ztrace.fish",
    "/usr/share/doc/ztrace/copyright",
];

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "ztrace"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

#[test]
fn deb_installs_verifies_and_purges_cleanly() -> Result<()> {
    if !privileged_or_skip("deb_installs_verifies_and_purges_cleanly") {
        return Ok(());
    }
    let deb = std::env::var("ZTRACE_DEB")
        .context("ZTRACE_DEB names the package to test (cargo xtask test builds it)")?;
    // A package left by an interrupted earlier run.
    if installed() {
        run(Command::new("dpkg").args(["--purge", "ztrace"]))?;
    }
    for f in FILES {
        ensure!(
            !Path::new(f).exists(),
            "{f} exists before the package is installed"
        );
    }
    run(Command::new("dpkg").arg("-i").arg(&deb))?;
    let result = check_installed();
    // Removed whatever happened, so a failed check leaves no package behind.
    let purge = run(Command::new("dpkg").args(["--purge", "ztrace"]));
    result?;
    purge?;
    ensure!(!installed(), "ztrace is still installed after dpkg --purge");
    for f in FILES {
        ensure!(!Path::new(f).exists(), "{f} is left after dpkg --purge");
    }
    ensure!(
        !Path::new("/etc/ztrace").exists(),
        "/etc/ztrace is left after dpkg --purge"
    );
    Ok(())
}

fn check_installed() -> Result<()> {
    ensure!(installed(), "dpkg does not list ztrace as installed");
    let listed = run(Command::new("dpkg").args(["-L", "ztrace"]))?;
    for f in FILES {
        ensure!(Path::new(f).is_file(), "{f} is not installed");
        ensure!(listed.lines().any(|l| l == *f), "dpkg -L does not list {f}");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "ztrace"]))?;
    ensure!(
        conffiles.contains("/etc/ztrace/config.toml"),
        "the config file is not a conffile: {conffiles}"
    );
    // The installed binary, not the build tree's.
    let check = run(Command::new("/usr/bin/ztrace").arg("check"))?;
    ensure!(check.contains("BTF"), "ztrace check said:\n{check}");
    // The shipped config is valid as shipped: everything is commented out, so it names nothing
    // to trace, and ztrace says so (exit 2) instead of complaining about the file.
    let out = Command::new("/usr/bin/ztrace")
        .args(["--config", "/etc/ztrace/config.toml"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && stderr.contains("nothing to trace"),
        "the shipped config: {:?} {stderr}",
        out.status
    );
    let verify = run(Command::new("systemd-analyze").args([
        "verify",
        "--man=no",
        "/lib/systemd/system/ztrace.service",
    ]))?;
    ensure!(
        !verify.to_lowercase().contains("ztrace.service:"),
        "systemd-analyze has remarks on the unit:\n{verify}"
    );
    let man = run(Command::new("sh").args(["-c", "zcat /usr/share/man/man1/ztrace.1.gz"]))?;
    ensure!(
        man.contains(".TH ztrace") && man.contains("otlp\\-endpoint"),
        "not the ztrace man page"
    );
    run(Command::new("bash").args(["-n", "/usr/share/bash-completion/completions/ztrace"]))?;
    let completions = run(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/ztrace && complete -p ztrace",
    ]))?;
    ensure!(completions.contains("ztrace"), "{completions}");
    Ok(())
}
