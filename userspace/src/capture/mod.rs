//! Capture: the kernel side of the data path, as seen from userspace.

pub mod btf;
pub mod container;
mod loader;
pub mod naming;
pub mod preflight;
pub mod privdrop;
pub mod process;
pub mod select;

pub use loader::*;
