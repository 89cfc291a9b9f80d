//! Builds the eBPF probes (ebpf-probes/) with the nightly toolchain for `bpfel-unknown-none` and
//! places the object in OUT_DIR, where `capture` embeds it with `include_bytes_aligned!`.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf-probes");
    aya_build::build_ebpf(
        [Package {
            name: "ztrace-probes",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
