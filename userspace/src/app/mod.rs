//! The application shell: the command line and the allocator set-up. Nothing imports it.

pub mod alloc;
pub mod check_targets;
pub mod cli;
pub mod generate;
pub mod opamp_args;
pub mod peer_args;
pub mod tail_args;
