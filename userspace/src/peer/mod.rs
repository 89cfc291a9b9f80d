//! The agent-to-agent channel for cross-host links (the linker's rule 7; see
//! `crate::link::crosshost` for the evidence and the fail-safe rules).
//!
//! Off unless configured (`--peer-listen ADDR --peer-secret-file FILE`). Each agent
//! - serves: answers other agents' questions about its own CLIENT sends from a bounded,
//!   time-windowed [`index::ClientIndex`];
//! - asks: one task per peer host batches the lookups of held SERVER roots into one frame per
//!   round, over one kept-alive TCP connection, and asks again about "unknown" sends until the
//!   lookup's deadline.
//!
//! # Security model
//! - Every frame carries an HMAC-SHA256 tag under a secret shared by the agents of one
//!   deployment; frames with a bad tag, a timestamp more than 30 s off, a nonce seen before or
//!   the wrong kind are refused and the connection is closed ([`protocol`]).
//! - An answer is given only for a question naming this agent's client address and port, the
//!   TCP sequence number of a request's first byte, and a digest of that request: what only an
//!   endpoint of the connection saw. The answer is a trace id, a span id, the sampled flag and
//!   the span's times — no payload, no process details. A fallback peer's question
//!   ([`fallback`]) names the server endpoint instead of the client's, and is answered only when
//!   exactly one send has that sequence number, digest and destination.
//! - Agents talk only over the network; nothing is shared between hosts but the secret.
//! - Not encrypted: a passive observer of the agents' network learns which trace ids belong to
//!   which connections (it sees those connections anyway). Mutual TLS is a possible follow-up.
//! - Only client addresses in private, shared and link-local ranges are asked (never arbitrary
//!   internet clients).
//!
//! # NAT on the client's host
//! When the client's host rewrote the connection's source port or address on the way out
//! (MASQUERADE/SNAT, conntrack clash remapping), the server agent asks about an endpoint the
//! client process never had; the answering agent then looks the connection up in its host's
//! connection tracking table by the reply tuple the question names ([`nat`]).
//!
//! # A NAT gateway between the hosts
//! When a gateway that runs no agent rewrote the caller's address, nothing answers there; the
//! configured fallback peers are asked without the caller's endpoint ([`fallback`]).

mod asker;
mod common;
pub mod fallback;
pub mod index;
pub mod nat;
pub mod protocol;
mod service;

pub use crate::link::crosshost::{CrossHostConfig, CrossHostStats};
pub use common::{PeerEvent, ServerCounters, mono_ns};
pub use service::{PeerConfig, PeerLink, read_secret};
