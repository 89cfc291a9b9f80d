//! Capture: the kernel side of the data path, as seen from userspace.

pub mod btf;
mod loader;
pub mod preflight;
pub mod privdrop;
pub mod process;

pub use loader::*;
