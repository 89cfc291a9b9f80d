//! The pinned toolchains, and the one rule that ties the eBPF toolchain to bpf-linker: rustc hands
//! bpf-linker LLVM bitcode, which an older LLVM cannot read ("Invalid record"), so the LLVM major
//! of the pinned nightly must equal the one bpf-linker is built against.
//!
//! Shared by xtask and `userspace/build.rs` (included there with `#[path]`), so that the build
//! and the developer commands read the same pin and say the same thing on a mismatch. It uses
//! only std and toml, reads files and runs `rustup`; it installs nothing.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

/// The eBPF toolchain's pin, relative to the workspace root.
pub const EBPF_PIN_FILE: &str = "ebpf-probes/rust-toolchain.toml";
/// The userspace (stable) toolchain's pin, relative to the workspace root.
pub const USER_PIN_FILE: &str = "xtask/stable-toolchain.toml";

/// A toolchain as a `rust-toolchain.toml` pins it.
#[derive(Debug, PartialEq, Eq)]
pub struct Pin {
    pub channel: String,
    pub components: Vec<String>,
}

/// Reads a pin file below `root`; the error names the file.
pub fn read_pin(root: &Path, file: &str) -> Result<Pin, String> {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_pin(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a `rust-toolchain.toml`, refusing channels that move.
pub fn parse_pin(text: &str) -> Result<Pin, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let toolchain = doc
        .get("toolchain")
        .and_then(toml::Value::as_table)
        .ok_or("no [toolchain] table")?;
    let channel = toolchain
        .get("channel")
        .and_then(toml::Value::as_str)
        .ok_or("no `channel` in [toolchain]")?;
    if !is_pinned(channel) {
        return Err(format!(
            "channel `{channel}` moves from day to day; pin a dated nightly (`nightly-YYYY-MM-DD`) or a stable version (`1.95.0`)"
        ));
    }
    let components = match toolchain.get("components") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .and_then(|a| a.iter().map(|c| c.as_str().map(str::to_owned)).collect())
            .ok_or("`components` must be an array of strings")?,
    };
    Ok(Pin {
        channel: channel.to_owned(),
        components,
    })
}

/// True for names that mean one build forever: `nightly-YYYY-MM-DD`, `beta-YYYY-MM-DD`, `X.Y.Z`
/// (a host triple may follow). `nightly`, `stable`, `beta` and `1.95` move.
pub fn is_pinned(channel: &str) -> bool {
    let dated = |rest: &str| {
        let date = rest.get(..10).unwrap_or("");
        let b = date.as_bytes();
        date.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
            && (rest.len() == 10 || rest.as_bytes()[10] == b'-')
    };
    if let Some(rest) = channel
        .strip_prefix("nightly-")
        .or_else(|| channel.strip_prefix("beta-"))
    {
        return dated(rest);
    }
    let version = channel.split('-').next().unwrap_or("");
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// The LLVM major of a `rustc -vV` report ("LLVM version: 22.1.8").
pub fn rustc_llvm_major(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
}

/// The LLVM a bpf-linker binary is built against, from the name of the LLVM library it loads
/// (`libLLVM.so.22.1`, `libLLVM-22.so`): read from the file's bytes, without running it. `None`
/// for a binary that links LLVM statically.
pub fn linker_llvm_major(binary: &[u8]) -> Option<u32> {
    const NAMES: [&[u8]; 2] = [b"libLLVM.so.", b"libLLVM-"];
    NAMES.iter().find_map(|name| {
        binary
            .windows(name.len())
            .enumerate()
            .filter(|(_, w)| w == name)
            .find_map(|(at, _)| {
                let digits: Vec<u8> = binary[at + name.len()..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .copied()
                    .collect();
                std::str::from_utf8(&digits).ok()?.parse().ok()
            })
    })
}

/// The LLVM major of an installed toolchain, asking its rustc.
pub fn toolchain_llvm_major(channel: &str) -> Result<u32, String> {
    let out = Command::new("rustup")
        .args(["run", channel, "rustc", "-vV"])
        .output()
        .map_err(|e| format!("could not run rustup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the eBPF toolchain {channel} is not installed ({}); run `cargo xtask setup`",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    rustc_llvm_major(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("`rustc -vV` of {channel} names no LLVM version"))
}

/// The first `name` in a `PATH`-style list of folders.
pub fn find_in_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The bpf-linker that a probe build with `path` as PATH would use, and its LLVM major if the
/// binary names it.
pub fn linker_in_path(path: &OsStr) -> Option<(PathBuf, Option<u32>)> {
    let linker = find_in_path("bpf-linker", path)?;
    let major = std::fs::read(&linker)
        .ok()
        .and_then(|b| linker_llvm_major(&b));
    Some((linker, major))
}

/// What to say when the two LLVMs differ: what fails, why, and what to run.
pub fn mismatch_message(channel: &str, toolchain: u32, linker: &Path, linker_llvm: u32) -> String {
    format!(
        "bpf-linker at {} is built against LLVM {linker_llvm}, but the eBPF toolchain {channel} \
         (pinned in {EBPF_PIN_FILE}) emits LLVM {toolchain} bitcode: linking the probes would fail \
         with \"Invalid record\". Run `cargo xtask setup`, which rebuilds bpf-linker with the cargo \
         feature llvm-{toolchain}",
        linker.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_dated_or_versioned() {
        for pinned in [
            "nightly-2026-07-01",
            "beta-2026-07-01",
            "1.95.0",
            "1.95.0-x86_64-unknown-linux-gnu",
            "nightly-2026-07-01-x86_64-unknown-linux-gnu",
        ] {
            assert!(is_pinned(pinned), "{pinned}");
        }
        for moving in [
            "nightly",
            "stable",
            "beta",
            "1.95",
            "nightly-2026-7-01",
            "nightly-2026-07-01x",
            "nightly-latest",
            "",
        ] {
            assert!(!is_pinned(moving), "{moving}");
        }
    }

    #[test]
    fn the_repository_pins_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let ebpf = read_pin(root, EBPF_PIN_FILE).unwrap();
        assert!(ebpf.channel.starts_with("nightly-"));
        for c in ["rust-src", "clippy", "rustfmt"] {
            assert!(ebpf.components.iter().any(|x| x == c), "{c} missing");
        }
        let user = read_pin(root, USER_PIN_FILE).unwrap();
        for c in ["clippy", "rustfmt"] {
            assert!(user.components.iter().any(|x| x == c), "{c} missing");
        }
    }

    #[test]
    fn floating_and_malformed_pins_are_refused_with_a_reason() {
        let e = parse_pin("[toolchain]\nchannel = \"nightly\"\n").unwrap_err();
        assert!(e.contains("moves"), "{e}");
        assert!(parse_pin("[toolchain]\n").unwrap_err().contains("channel"));
        assert!(parse_pin("toolchain = 1").is_err());
        let e = parse_pin("[toolchain]\nchannel = \"1.95.0\"\ncomponents = [1]\n").unwrap_err();
        assert!(e.contains("components"), "{e}");
    }

    #[test]
    fn llvm_majors() {
        let vv =
            "rustc 1.98.0-nightly (f46ec5218 2026-06-30)\nbinary: rustc\nLLVM version: 22.1.8\n";
        assert_eq!(rustc_llvm_major(vv), Some(22));
        assert_eq!(rustc_llvm_major("rustc 1.0"), None);
        assert_eq!(
            linker_llvm_major(b"\0\0libc.so.6\0libLLVM.so.22.1\0libz.so.1\0"),
            Some(22)
        );
        assert_eq!(linker_llvm_major(b"\0libLLVM-23.so\0"), Some(23));
        assert_eq!(linker_llvm_major(b"\0libLLVM.so.\0libLLVM-x\0"), None);
        assert_eq!(linker_llvm_major(b"statically linked"), None);
    }

    #[test]
    fn the_mismatch_message_says_what_to_run() {
        let m = mismatch_message("nightly-2026-12-01", 23, Path::new("/x/bpf-linker"), 22);
        assert!(m.contains("LLVM 22") && m.contains("LLVM 23"), "{m}");
        assert!(
            m.contains("cargo xtask setup") && m.contains("llvm-23"),
            "{m}"
        );
    }
}
