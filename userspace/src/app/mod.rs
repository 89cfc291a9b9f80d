//! The application shell: the command line and the allocator set-up. Nothing imports it.

pub mod alloc;
pub mod cli;
pub mod peer_args;
pub mod tail_args;
