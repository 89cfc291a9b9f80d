//! ztrace's kernel side. It captures and filters, nothing more: only processes in the `TRACED`
//! map produce events, and every event is a fixed-layout record from `ztrace-abi` pushed into one
//! ring buffer. Decoding, protocol parsing and everything else happens in userspace.
//!
//! - `probes::sock` — socket I/O from the socket layer (`sock_send_length`/`sock_recv_length`)
//! - `probes::io` — socket I/O, connect/accept/close from syscall tracepoints (the fallback), and
//!   stdout/stderr writes for `--capture-logs`
//! - `probes::net` — TCP connection outcomes and retransmits (`sock:`/`tcp:` tracepoints)
//! - `probes::sched` — fork/exit of traced processes (follow children, stop tracing the dead)
//! - `kernel` — reads of kernel structs at offsets userspace found in BTF
//! - `maps` — every map and the run-time configuration
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `maps::atomic_add`: `core` has no atomic read-modify-write for the BPF target.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Host builds (clippy, `cargo test` of the workspace) see an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
