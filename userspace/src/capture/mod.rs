//! Capture: the kernel side of the data path, as seen from userspace.

pub mod btf;
pub mod container;
mod elf;
pub mod lineage;
mod loader;
pub mod naming;
pub mod preflight;
pub mod privdrop;
pub mod process;
pub mod seccomp;
pub mod select;
pub mod tls_target;
mod traced;

pub use loader::*;
pub use tls_target::TlsTarget;
