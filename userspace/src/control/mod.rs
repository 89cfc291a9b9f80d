//! The control plane beside the data path: remote management over OpAMP. A server sees this
//! agent's description, health and effective configuration, and may send a new configuration
//! (the same TOML as the config file), which is validated against the local allow-list and the
//! file's own parser and applied without a restart, whole or not at all.
//!
//! - [`agent`]: the protocol, without I/O (which message next, what an answer asks for);
//! - [`remote`]: a remote configuration → a [`remote::Plan`], or why not;
//! - [`client`]: the polling task and the hand-over to the capture loop;
//! - [`identity`]: the instance uid kept across restarts.

pub mod agent;
pub mod client;
pub mod identity;
pub mod remote;

pub use client::{Control, Health, Pending, Start, next_pending};
pub use remote::{Base, Plan, Resolver, Settings};
