//! Builds the eBPF probes (ebpf-probes/) for `bpfel-unknown-none` with the toolchain pinned in
//! ebpf-probes/rust-toolchain.toml and places the object in OUT_DIR, where `capture` embeds it
//! with `include_bytes_aligned!`. Before building, it compares that toolchain's LLVM with the one
//! bpf-linker is built against, so that a mismatch is a sentence saying what to run instead of
//! bpf-linker's "Invalid record".

use std::{env, path::Path};

use anyhow::{Context, anyhow, bail};
use aya_build::{Package, Toolchain};

#[allow(dead_code)] // shared with xtask, which uses all of it
#[path = "../xtask/src/toolchain.rs"]
mod toolchain;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!(
        "cargo:rerun-if-changed={}",
        root.join(toolchain::EBPF_PIN_FILE).display()
    );
    println!("cargo:rerun-if-env-changed=PATH");
    let pin = toolchain::read_pin(&root, toolchain::EBPF_PIN_FILE).map_err(|e| anyhow!(e))?;
    // Only a mismatch both sides name stops the build here; anything unknown (no rustup, a
    // statically linked bpf-linker) is left to the build itself, whose errors are then extended
    // with what to run.
    if let (Ok(llvm), Some((linker, Some(linker_llvm)))) = (
        toolchain::toolchain_llvm_major(&pin.channel),
        env::var_os("PATH").and_then(|p| toolchain::linker_in_path(&p)),
    ) && llvm != linker_llvm
    {
        bail!(toolchain::mismatch_message(
            &pin.channel,
            llvm,
            &linker,
            linker_llvm
        ));
    }
    let probes = root.join("ebpf-probes");
    aya_build::build_ebpf(
        [Package {
            name: "ztrace-probes",
            root_dir: probes.to_str().context("non-UTF-8 source path")?,
            ..Default::default()
        }],
        Toolchain::Custom(&pin.channel),
    )
    .with_context(|| {
        format!(
            "building the eBPF probes with {} (pinned in {}): `cargo xtask setup` installs that \
             toolchain with rust-src and a bpf-linker built for its LLVM",
            pin.channel,
            toolchain::EBPF_PIN_FILE
        )
    })
}
