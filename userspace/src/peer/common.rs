//! What the channel's server, dispatcher and per-peer tasks share: its timings, counters and
//! events, what goes to a peer's task, and reading one frame.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::link::crosshost::Lookup;
use crate::model::{TraceId, TraceVote};

use super::fallback::Fan;
use super::protocol::{Frame, Key, Refused, decode, frame_len};

/// A peer that never answered and refused a connection (or did not take it in time) is not
/// tried again for this long: no agent runs there, its lookups fail at once.
pub(super) const DOWN_FOR: Duration = Duration::from_secs(5);
/// A peer that answered within this long and now fails is taken to be an agent restarting (or a
/// transient refusal or reset): connecting is tried again after [`RETRY_FIRST`], doubling up to
/// [`DOWN_FOR`], and its lookups wait until their own deadlines.
pub(super) const KNOWN_FOR: Duration = Duration::from_secs(30);
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Votes for a peer that cannot be reached now are held at most this long and this many (the
/// oldest go first, counted lost); a keep arriving much later than the other agent's
/// `vote_wait` would only be counted late.
pub(super) const VOTE_HOLD: Duration = DOWN_FOR;
pub(super) const HELD_VOTES: usize = 4096;
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Batching: lookups to one peer gathered this long go in one frame; unknowns are asked again
/// after it (the caller's span may not be released yet).
pub(super) const ROUND: Duration = Duration::from_millis(50);
pub(super) const IDLE: Duration = Duration::from_secs(60);

/// Server-side counters, and the votes this agent sent.
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub frames: AtomicU64,
    pub questions: AtomicU64,
    pub refused: AtomicU64,
    /// Votes received from other agents.
    pub votes_in: AtomicU64,
    /// Votes written to a peer's connection.
    pub votes_out: AtomicU64,
    /// Votes not sent: the peer's agent could not be reached, or a queue was full.
    pub votes_lost: AtomicU64,
    /// What the channel learnt that the runtime had no room for (a full queue).
    pub events_lost: AtomicU64,
    /// This agent's lookups asked about the caller's endpoint before this host's NAT (a host
    /// port DNAT'd to the server, the caller's address rewritten to this host's).
    pub asked_via_nat: AtomicU64,
    /// This agent's lookups asked of fallback peers without the caller's endpoint, and of those
    /// the fan-outs to every fallback peer (the rest went to the one peer that answered for
    /// the connection before).
    pub asked_fallback: AtomicU64,
    pub fanned_out: AtomicU64,
}

/// What the peer channel tells the tail sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// The agent at `agent` holds another part of trace `trace_id` (it answered our question
    /// about the caller's send, or asked us about our own send).
    Participant { trace_id: TraceId, agent: IpAddr },
    /// The agent at `from` voted on a trace.
    Vote { from: IpAddr, vote: TraceVote },
}

/// What goes to a peer host's task.
#[derive(Clone, Debug)]
pub(super) enum Outgoing {
    Lookup(Lookup),
    /// A lookup asked of a fallback peer without the caller's endpoint, one part of `Fan`.
    Fanned(Lookup, Arc<Fan>),
    Vote(IpAddr, TraceVote),
}

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Queues an event for the runtime; a full queue loses it (counted).
pub(super) fn tell(events: &mpsc::Sender<PeerEvent>, ev: PeerEvent, counters: &ServerCounters) {
    if events.try_send(ev).is_err() {
        counters.events_lost.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) async fn read_frame(
    stream: &mut TcpStream,
    key: &Key,
    kinds: &[u8],
) -> io::Result<Result<Frame, Refused>> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await?;
    let n = match frame_len(prefix) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let mut rest = vec![0u8; n];
    stream.read_exact(&mut rest).await?;
    Ok(decode(key, prefix, &rest, kinds))
}

/// The runtime's side of the channel, as the tasks see it.
#[derive(Clone)]
pub(super) struct Channels {
    pub(super) events: mpsc::Sender<PeerEvent>,
    pub(super) counters: Arc<ServerCounters>,
}
