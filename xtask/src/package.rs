//! `cargo xtask package`: a Debian package of the release binary, its systemd unit
//! (packaging/ztrace.service), a commented config file installed as a conffile
//! (packaging/config.toml), and the man page and shell completions the binary itself generates
//! from its clap definitions (`ztrace generate …`). Built with dpkg-deb only: no debhelper.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Everything the package installs, as (path in the package, mode). The package test checks
/// each is installed and gone after `dpkg -r`/`--purge`.
pub const INSTALLED: &[(&str, u32)] = &[
    ("usr/bin/ztrace", 0o755),
    ("lib/systemd/system/ztrace.service", 0o644),
    ("etc/ztrace/config.toml", 0o644),
    ("usr/share/man/man1/ztrace.1.gz", 0o644),
    ("usr/share/bash-completion/completions/ztrace", 0o644),
    ("usr/share/zsh/vendor-completions/_ztrace", 0o644),
    ("usr/share/fish/vendor_completions.d/ztrace.fish", 0o644),
    ("usr/share/doc/ztrace/copyright", 0o644),
];

/// Builds target/package/ztrace_VERSION_ARCH.deb from the release binary `bin`.
pub fn package(root: &Path, bin: &Path) -> Result<PathBuf> {
    let version = workspace_version(root)?;
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("dpkg (this command builds a Debian package)")?
            .stdout,
    )?
    .trim()
    .to_string();
    let out = root.join("target/package");
    let tree = out.join("tree");
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = tree.join(rel);
        fs::create_dir_all(path.parent().expect("a file in a folder"))?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let generated = |args: &[&str]| -> Result<Vec<u8>> {
        let o = Command::new(bin).args(args).output()?;
        if !o.status.success() {
            bail!(
                "{} {args:?} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(o.stdout)
    };
    let mode_of = |rel: &str| {
        INSTALLED
            .iter()
            .find(|(p, _)| *p == rel)
            .map(|(_, m)| *m)
            .expect("listed in INSTALLED")
    };
    put("usr/bin/ztrace", &fs::read(bin)?, mode_of("usr/bin/ztrace"))?;
    put(
        "lib/systemd/system/ztrace.service",
        &fs::read(root.join("packaging/ztrace.service"))?,
        0o644,
    )?;
    put(
        "etc/ztrace/config.toml",
        &fs::read(root.join("packaging/config.toml"))?,
        0o644,
    )?;
    put(
        "usr/share/man/man1/ztrace.1.gz",
        &gzip(&generated(&["generate", "man"])?)?,
        0o644,
    )?;
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/ztrace"),
        ("zsh", "usr/share/zsh/vendor-completions/_ztrace"),
        ("fish", "usr/share/fish/vendor_completions.d/ztrace.fish"),
    ] {
        put(rel, &generated(&["generate", "completions", shell])?, 0o644)?;
    }
    put(
        "usr/share/doc/ztrace/copyright",
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: ztrace\n\nFiles: *\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    let size_kib = dir_size(&tree)? / 1024;
    put(
        "DEBIAN/control",
        format!(
            "Package: ztrace\nVersion: {version}\nArchitecture: {arch}\nMaintainer: ztrace developers <ztrace@localhost>\n\
             Installed-Size: {size_kib}\nDepends: libc6\nRecommends: systemd\nSection: admin\nPriority: optional\n\
             Description: zero-instrumentation tracing of running processes\n \
             eBPF probes capture the socket I/O of chosen processes; ztrace turns it into\n \
             causally linked OpenTelemetry spans, metrics and logs, exported over OTLP.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    put("DEBIAN/conffiles", b"/etc/ztrace/config.toml\n", 0o644)?;
    // The unit is installed, not enabled: the config names nothing to trace until edited.
    put(
        "DEBIAN/postinst",
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )?;
    put(
        "DEBIAN/prerm",
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then systemctl stop ztrace.service || true; fi\n",
        0o755,
    )?;
    put(
        "DEBIAN/postrm",
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\nif [ \"$1\" = purge ]; then rm -rf /var/lib/ztrace; fi\n",
        0o755,
    )?;
    let deb = out.join(format!("ztrace_{version}_{arch}.deb"));
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&tree)
            .arg(&deb),
    )?;
    crate::say(&format!("package: {}", deb.display()));
    Ok(deb)
}

fn workspace_version(root: &Path) -> Result<String> {
    let text = fs::read_to_string(root.join("Cargo.toml"))?;
    let table: toml::Table = text.parse()?;
    table
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .context("no [workspace.package] version in Cargo.toml")
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("gzip")?;
    child.stdin.take().expect("piped stdin").write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
