//! The asking side's per-peer task: one kept-alive connection to one peer host, its lookups
//! batched into one frame per round and asked again until found or due, the votes for it
//! written before each round's question, and the parts of fallback fan-outs settled
//! (`super::fallback`).
//!
//! # A peer that cannot be reached
//! A peer that never answered (nothing listens at its agent port: a load generator, a host
//! without ztrace) is not tried again for [`DOWN_FOR`], and its lookups end at once as "no
//! agent" (so the server spans are not held, and go to the fallback peers when configured).
//! A peer that answered within [`KNOWN_FOR`] runs an agent: a refused connection, a reset or a
//! timeout is taken for that agent restarting. Connecting is tried again after
//! [`RETRY_FIRST`], doubling up to [`DOWN_FOR`], its lookups wait for it until their own
//! deadlines (then end "no agent" or "timeout", as the last attempt failed), and its votes are
//! held for [`VOTE_HOLD`] (at most [`HELD_VOTES`]). When it has not answered for
//! [`KNOWN_FOR`], it is treated as one that never did. [`Reach`] is that state.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use crate::link::Handle;
use crate::link::crosshost::{Lookup, Outcome};
use crate::model::TraceVote;

use super::common::{
    CONNECT_TIMEOUT, Channels, DOWN_FOR, HELD_VOTES, IDLE, KNOWN_FOR, Outgoing, PeerEvent,
    REPLY_TIMEOUT, RETRY_FIRST, ROUND, ServerCounters, VOTE_HOLD, mono_ns, read_frame, tell,
    unix_ms,
};
use super::fallback::{Fan, News};
use super::protocol::{Body, Frame, KIND_REPLY, Key, MAX_ITEMS, Query, Refused, encode};

struct Waiting {
    lookup: Lookup,
    /// The peer answered "unknown" at least once.
    unknown: bool,
    /// A fallback peer's part of a fan-out (`super::fallback`), and whether its fan heard the
    /// first "unknown".
    fan: Option<(Arc<Fan>, bool)>,
}

impl Waiting {
    fn new(lookup: Lookup, fan: Option<Arc<Fan>>) -> Self {
        Self {
            lookup,
            unknown: false,
            fan: fan.map(|f| (f, false)),
        }
    }
}

/// Whether a peer's agent can be asked now, and what its lookups get when it cannot (times in
/// monotonic ns).
#[derive(Debug)]
struct Reach {
    /// When the peer last answered: a connection it took, a round it answered.
    answered_ns: Option<u64>,
    /// Since a connection failed: no connection is tried before this, and why it failed.
    down: Option<(u64, Outcome)>,
    /// The wait after the next failure of a peer that answered before.
    backoff: Duration,
}

impl Reach {
    fn new() -> Self {
        Self {
            answered_ns: None,
            down: None,
            backoff: RETRY_FIRST,
        }
    }

    /// The peer took a connection or answered a round.
    fn answered(&mut self, now_ns: u64) {
        self.answered_ns = Some(now_ns);
        self.down = None;
        self.backoff = RETRY_FIRST;
    }

    /// Whether the peer answered lately (an agent runs there).
    fn known(&self, now_ns: u64) -> bool {
        self.answered_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < KNOWN_FOR.as_nanos() as u64)
    }

    /// A connection failed (`why`: `NoAgent` refused, `Timeout` not taken in time). True when
    /// the lookups wait for the next attempt (the peer answered lately); false when they end now.
    fn failed(&mut self, now_ns: u64, why: Outcome) -> bool {
        let known = self.known(now_ns);
        let wait = if known {
            let wait = self.backoff;
            self.backoff = (self.backoff * 2).min(DOWN_FOR);
            wait
        } else {
            DOWN_FOR
        };
        self.down = Some((now_ns.saturating_add(wait.as_nanos() as u64), why));
        known
    }

    /// Whether a connection may be tried now.
    fn may_connect(&self, now_ns: u64) -> bool {
        self.down.is_none_or(|(at, _)| now_ns >= at)
    }

    /// While a peer that did not answer lately is down: its lookups end at once, "no agent".
    fn ends_now(&self, now_ns: u64) -> Option<Outcome> {
        match self.down {
            Some((at, _)) if now_ns < at && !self.known(now_ns) => Some(Outcome::NoAgent),
            _ => None,
        }
    }

    /// The earliest a lookup waiting now can be asked again: the next round, or while the peer
    /// is down, its next connection attempt. A lookup due before then ends now (its answer
    /// reaches the linker before the linker's own deadline, even on a busy machine).
    fn asked_again_by(&self, now_ns: u64) -> u64 {
        let next_round = now_ns.saturating_add(ROUND.as_nanos() as u64);
        self.down.map_or(next_round, |(at, _)| at.max(next_round))
    }

    /// What a lookup the peer never answered ends as at its deadline: why the last connection
    /// failed while the peer is unreachable, else a timeout.
    fn at_deadline(&self) -> Outcome {
        self.down.map_or(Outcome::Timeout, |(_, why)| why)
    }
}

/// A vote and when it was queued (monotonic ns).
type HeldVote = (TraceVote, u64);

/// Votes past [`VOTE_HOLD`], and the oldest beyond [`HELD_VOTES`], are lost (counted).
fn expire_votes(votes: &mut Vec<HeldVote>, now_ns: u64, counters: &ServerCounters) {
    let before = votes.len();
    let hold = VOTE_HOLD.as_nanos() as u64;
    votes.retain(|(_, at)| now_ns.saturating_sub(*at) < hold);
    let over = votes.len().saturating_sub(HELD_VOTES);
    votes.drain(..over);
    counters
        .votes_lost
        .fetch_add((before - votes.len()) as u64, Ordering::Relaxed);
}

/// Where a peer task's finished lookups go: the runtime, and (when fallback peers are
/// configured) the dispatcher, for lookups the agent at the caller's address did not answer.
pub(super) type Sinks = (
    mpsc::Sender<(Handle, Outcome)>,
    Option<mpsc::Sender<(IpAddr, Lookup)>>,
);

/// One peer host: batches of lookups over one connection, asked again until found or due, and
/// the votes for it, written before each round's question.
pub(super) async fn ask_peer(
    (addr, source): (SocketAddr, Option<IpAddr>),
    key: Arc<Key>,
    mut rx: mpsc::Receiver<Outgoing>,
    (answers, back): Sinks,
    ch: Channels,
) {
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut votes: Vec<HeldVote> = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut reach = Reach::new();
    let take = |o: Outgoing, waiting: &mut Vec<Waiting>, votes: &mut Vec<HeldVote>| match o {
        Outgoing::Lookup(l) => waiting.push(Waiting::new(l, None)),
        Outgoing::Fanned(l, fan) => waiting.push(Waiting::new(l, Some(fan))),
        Outgoing::Vote(_, v) => votes.push((v, mono_ns())),
    };
    loop {
        if waiting.is_empty() && votes.is_empty() {
            match timeout(IDLE, rx.recv()).await {
                Ok(Some(o)) => take(o, &mut waiting, &mut votes),
                _ => return,
            }
        }
        sleep(ROUND).await;
        while let Ok(o) = rx.try_recv() {
            take(o, &mut waiting, &mut votes);
        }
        let mut done = Vec::new();
        // Parts of fan-outs another peer's answer settled are not asked any more.
        waiting.retain(|w| !w.fan.as_ref().is_some_and(|(f, _)| f.is_done()));
        let now = mono_ns();
        end_due(&mut waiting, now, reach.at_deadline(), &mut done);
        expire_votes(&mut votes, now, &ch.counters);
        if let Some(why) = reach.ends_now(now) {
            done.extend(waiting.drain(..).map(|w| (w, why)));
            lose_votes(&mut votes, &ch.counters);
        } else if (!waiting.is_empty() || !votes.is_empty()) && reach.may_connect(now) {
            // Votes written to a kept connection the peer has closed (its idle timeout, its
            // agent stopping) would be lost without a word: such a connection is made again.
            if conn.as_ref().is_some_and(|s| !still_open(s)) {
                conn = None;
            }
            let fresh = conn.is_none();
            if fresh {
                let failed = match timeout(CONNECT_TIMEOUT, connect(addr, source)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        conn = Some(s);
                        reach.answered(mono_ns());
                        None
                    }
                    Ok(Err(e)) => {
                        log::debug!("peer {addr}: {e}");
                        Some(Outcome::NoAgent)
                    }
                    Err(_) => Some(Outcome::Timeout),
                };
                // A peer that answered lately is restarting: its lookups and votes wait for the
                // next attempt; one that did not has no agent.
                if let Some(why) = failed
                    && !reach.failed(mono_ns(), why)
                {
                    done.extend(waiting.drain(..).map(|w| (w, why)));
                    lose_votes(&mut votes, &ch.counters);
                }
            }
            if let Some(stream) = &mut conn {
                let sent = send_votes(stream, &key, &mut votes, &ch.counters).await;
                let asked = match sent {
                    Ok(()) if waiting.is_empty() => Ok(()),
                    Ok(()) => ask(stream, &key, &mut waiting, &mut done).await,
                    Err(e) => Err(AskError::Io(e)),
                };
                match asked {
                    Ok(()) => reach.answered(mono_ns()),
                    // On a connection just made, a close is a refusal; on an older one it may
                    // be the peer's idle timeout: ask again on a new connection.
                    Err(AskError::Closed) if !fresh => conn = None,
                    Err(AskError::Closed) => {
                        log::warn!(
                            "peer {addr}: closed the connection on our query: another peer secret or another ztrace version (the peer's log says which)"
                        );
                        conn = None;
                        done.extend(waiting.drain(..).map(|w| (w, Outcome::Refused)));
                    }
                    Err(AskError::Refused(r)) => {
                        let hint = r.hint().unwrap_or_default();
                        log::warn!("peer {addr}: reply refused: {r}{hint}");
                        conn = None;
                        done.extend(waiting.drain(..).map(|w| (w, Outcome::Refused)));
                    }
                    Err(AskError::Io(e)) => {
                        log::debug!("peer {addr}: {e}");
                        conn = None;
                    }
                }
            }
        }
        // What no later round can ask before its deadline ends now: the linker hears "unknown"
        // (the peer answered, it knows no such send) or why the peer is unreachable, rather
        // than timing the lookup out itself.
        let now = mono_ns();
        end_due(
            &mut waiting,
            reach.asked_again_by(now),
            reach.at_deadline(),
            &mut done,
        );
        // A peer that answered lately has an agent: what ends unanswered there is not asked of
        // the fallback peers (nor is its address taken for agent-less).
        let back = back.as_ref().filter(|_| !reach.known(now));
        let finals = settle(addr.ip(), &mut waiting, done, back);
        // The answering agent holds the caller's part of each trace it found.
        for (_, o, agent) in &finals {
            if let Outcome::Found { ctx, .. } = o {
                let ev = PeerEvent::Participant {
                    trace_id: ctx.trace_id,
                    agent: *agent,
                };
                tell(&ch.events, ev, &ch.counters);
            }
        }
        for (h, o, _) in finals {
            if answers.send((h, o)).await.is_err() {
                return;
            }
        }
    }
}

/// The round's finished lookups of peer `from` as the runtime's answers (with the agent each
/// came from): a fallback peer's parts settle their fans (the first "unknown" of a part still
/// waiting too), and a lookup nothing answered at the caller's address goes `back` to the
/// dispatcher for the fallback peers.
fn settle(
    from: IpAddr,
    waiting: &mut [Waiting],
    done: Vec<(Waiting, Outcome)>,
    back: Option<&mpsc::Sender<(IpAddr, Lookup)>>,
) -> Vec<(Handle, Outcome, IpAddr)> {
    let now = mono_ns();
    let mut finals = Vec::new();
    for w in waiting.iter_mut().filter(|w| w.unknown) {
        if let Some((fan, told @ false)) = &mut w.fan {
            *told = true;
            if let Some((o, agent)) = fan.settle(from, News::Heard, now) {
                finals.push((fan.handle, o, agent));
            }
        }
    }
    for (w, o) in done {
        match (w.fan, o, back) {
            (Some((fan, _)), o, _) => {
                if let Some((o, agent)) = fan.settle(from, News::Ended(o), now) {
                    finals.push((fan.handle, o, agent));
                }
            }
            (None, Outcome::NoAgent, Some(back)) => {
                if back.try_send((from, w.lookup)).is_err() {
                    finals.push((w.lookup.handle, Outcome::NoAgent, from));
                }
            }
            (None, o, _) => finals.push((w.lookup.handle, o, from)),
        }
    }
    finals
}

/// Ends the lookups due by `by_ns`: "unknown" when the peer answered so, else `unanswered`.
fn end_due(
    waiting: &mut Vec<Waiting>,
    by_ns: u64,
    unanswered: Outcome,
    done: &mut Vec<(Waiting, Outcome)>,
) {
    let (due, keep) = std::mem::take(waiting)
        .into_iter()
        .partition(|w| w.lookup.deadline_ns <= by_ns);
    *waiting = keep;
    for w in due {
        let why = if w.unknown {
            Outcome::Unknown
        } else {
            unanswered
        };
        done.push((w, why));
    }
}

/// A connection to `addr`, from `source` when given (same address family only).
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Whether a kept connection is still open: the peer says nothing between our questions, so
/// anything to read (its close, a reset, a stray byte) ends it.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own, on the stream's open descriptor; MSG_PEEK leaves any
    // data in place and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

fn lose_votes(votes: &mut Vec<HeldVote>, counters: &ServerCounters) {
    counters
        .votes_lost
        .fetch_add(votes.len() as u64, Ordering::Relaxed);
    votes.clear();
}

/// Writes the queued votes (no reply comes back). Written votes are counted sent; when the write
/// fails they are kept for the next connection.
async fn send_votes(
    stream: &mut TcpStream,
    key: &Key,
    votes: &mut Vec<HeldVote>,
    counters: &ServerCounters,
) -> io::Result<()> {
    while !votes.is_empty() {
        let n = votes.len().min(MAX_ITEMS);
        let frame = Frame {
            id: 0,
            unix_ms: unix_ms(),
            nonce: rand::random(),
            body: Body::Vote(votes[..n].iter().map(|(v, _)| *v).collect()),
        };
        stream.write_all(&encode(key, &frame)).await?;
        votes.drain(..n);
        counters.votes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

enum AskError {
    Refused(Refused),
    /// The peer closed the connection instead of answering.
    Closed,
    Io(io::Error),
}

/// One round trip for up to [`MAX_ITEMS`] of `waiting`; found ones move to `done`.
async fn ask(
    stream: &mut TcpStream,
    key: &Key,
    waiting: &mut Vec<Waiting>,
    done: &mut Vec<(Waiting, Outcome)>,
) -> Result<(), AskError> {
    let n = waiting.len().min(MAX_ITEMS);
    let id: u64 = rand::random();
    let query = Frame {
        id,
        unix_ms: unix_ms(),
        nonce: rand::random(),
        body: Body::Query(
            waiting[..n]
                .iter()
                .map(|w| Query {
                    key: w.lookup.key,
                    digest: w.lookup.digest,
                    server: w.lookup.server,
                })
                .collect(),
        ),
    };
    stream
        .write_all(&encode(key, &query))
        .await
        .map_err(AskError::Io)?;
    let reply = match timeout(REPLY_TIMEOUT, read_frame(stream, key, &[KIND_REPLY])).await {
        Ok(Ok(Ok(f))) => f,
        Ok(Ok(Err(r))) => return Err(AskError::Refused(r)),
        // A peer closes the connection on a query it refuses (it sends nothing signed to
        // whoever fails authentication).
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(AskError::Closed);
        }
        Ok(Err(e)) => return Err(AskError::Io(e)),
        Err(_) => return Err(AskError::Io(io::ErrorKind::TimedOut.into())),
    };
    let Body::Reply(items) = reply.body else {
        return Err(AskError::Refused(Refused::WrongKind));
    };
    if reply.id != id
        || items.len() != n
        || reply.unix_ms.abs_diff(unix_ms()) > super::protocol::MAX_AGE_MS
    {
        return Err(AskError::Refused(Refused::Stale));
    }
    let asked: Vec<Waiting> = waiting.drain(..n).collect();
    let mut still = Vec::with_capacity(n);
    for (mut w, item) in asked.into_iter().zip(items) {
        match item {
            Some(f) => done.push((
                w,
                Outcome::Found {
                    ctx: f.ctx,
                    start_unix_ns: f.start_unix_ns,
                    end_unix_ns: f.end_unix_ns,
                },
            )),
            None => {
                w.unknown = true;
                still.push(w);
            }
        }
    }
    waiting.splice(0..0, still);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::crosshost::WireKey;
    use crate::model::TraceId;
    use crate::testkit::endpoint as ep;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn ns(d: Duration) -> u64 {
        d.as_nanos() as u64
    }

    fn waiting(handle: u64, deadline_ns: u64, unknown: bool) -> Waiting {
        let mut w = Waiting::new(
            Lookup {
                handle,
                key: WireKey {
                    client: ep("10.0.1.1:40000"),
                    seq: 99,
                },
                digest: 5,
                server: ep("10.0.2.1:8080"),
                deadline_ns,
            },
            None,
        );
        w.unknown = unknown;
        w
    }

    #[test]
    fn a_peer_that_never_answered_is_down_for_down_for_and_its_lookups_end_at_once() {
        let mut r = Reach::new();
        assert!(r.may_connect(0) && r.ends_now(0).is_none());
        assert!(!r.failed(S, Outcome::NoAgent), "the lookups end now");
        assert_eq!(r.ends_now(S + 1), Some(Outcome::NoAgent));
        assert_eq!(r.ends_now(S + ns(DOWN_FOR) - 1), Some(Outcome::NoAgent));
        assert!(!r.may_connect(S + ns(DOWN_FOR) - 1));
        assert!(r.may_connect(S + ns(DOWN_FOR)));
        assert_eq!(r.ends_now(S + ns(DOWN_FOR)), None);
        // Refused again: another DOWN_FOR, no backoff.
        assert!(!r.failed(S + ns(DOWN_FOR), Outcome::Timeout));
        assert!(!r.may_connect(S + 2 * ns(DOWN_FOR) - 1));
    }

    #[test]
    fn a_peer_that_answered_is_tried_again_with_a_doubling_backoff_and_its_lookups_wait() {
        let mut r = Reach::new();
        r.answered(0);
        let mut t = S;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(r.failed(t, Outcome::NoAgent), "the lookups wait");
            assert_eq!(r.ends_now(t + 1), None);
            assert_eq!(r.at_deadline(), Outcome::NoAgent);
            let next = (t..)
                .step_by(MS as usize)
                .find(|&x| r.may_connect(x))
                .unwrap();
            waits.push((next - t) / MS);
            t = next;
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        // Down until its next attempt: a lookup due before then cannot be asked, it ends now.
        assert!(r.failed(t, Outcome::NoAgent));
        assert_eq!(r.asked_again_by(t), t + ns(DOWN_FOR));
        t += ns(DOWN_FOR);
        // A connection that times out is a timeout at the deadline.
        assert!(r.failed(t, Outcome::Timeout));
        assert_eq!(r.at_deadline(), Outcome::Timeout);
        // Back: no wait, and the backoff starts over.
        r.answered(t + S);
        assert!(r.may_connect(t + S) && r.ends_now(t + S).is_none());
        assert_eq!(r.at_deadline(), Outcome::Timeout);
        assert!(r.failed(t + 2 * S, Outcome::NoAgent));
        assert!(!r.may_connect(t + 2 * S + ns(RETRY_FIRST) - 1));
        assert!(r.may_connect(t + 2 * S + ns(RETRY_FIRST)));
    }

    #[test]
    fn an_agent_restarting_for_a_second_is_asked_again_within_the_backoff() {
        // The peer answered until its agent stopped at 10 s; it listens again from 11.5 s.
        let mut r = Reach::new();
        r.answered(10 * S);
        let back_at = 11_500 * MS;
        let (mut t, mut attempts) = (10 * S, 0);
        while t < 20 * S {
            if r.may_connect(t) {
                attempts += 1;
                if t >= back_at {
                    r.answered(t);
                    break;
                }
                assert!(r.failed(t, Outcome::NoAgent));
            }
            t += ns(ROUND);
        }
        // Tried at 10, 10.2, 10.6, 11.4 and 13 s: late by less than the outage lasted, not
        // DOWN_FOR after the last refusal; five attempts in three seconds, not one a round.
        assert_eq!((t - back_at) / MS, 1_500);
        assert_eq!(attempts, 5);
        assert!(r.known(t) && r.down.is_none());
    }

    #[test]
    fn a_peer_silent_for_known_for_is_treated_as_one_that_never_answered() {
        let mut r = Reach::new();
        r.answered(S);
        assert!(r.known(S + ns(KNOWN_FOR) - 1));
        let t = S + ns(KNOWN_FOR);
        assert!(!r.known(t));
        assert!(!r.failed(t, Outcome::NoAgent));
        assert_eq!(r.ends_now(t + 1), Some(Outcome::NoAgent));
        assert!(!r.may_connect(t + ns(DOWN_FOR) - 1));
    }

    #[test]
    fn lookups_end_at_their_deadline_as_the_peer_failed_or_unknown_when_it_said_so() {
        let mut w = vec![
            waiting(1, 100, false),
            waiting(2, 100, true),
            waiting(3, 200, false),
        ];
        let mut done = Vec::new();
        end_due(&mut w, 150, Outcome::NoAgent, &mut done);
        let ended: Vec<(u64, Outcome)> = done.iter().map(|(w, o)| (w.lookup.handle, *o)).collect();
        assert_eq!(ended, [(1, Outcome::NoAgent), (2, Outcome::Unknown)]);
        assert_eq!(w.len(), 1);
        end_due(&mut w, 200, Outcome::Timeout, &mut done);
        assert_eq!(
            done.last().map(|(w, o)| (w.lookup.handle, *o)),
            Some((3, Outcome::Timeout))
        );
    }

    #[test]
    fn held_votes_are_lost_past_vote_hold_and_beyond_held_votes() {
        // README: 48 bytes each, ≤ 192 KiB per peer host.
        assert_eq!(std::mem::size_of::<HeldVote>(), 48);
        let counters = ServerCounters::default();
        let vote = |b: u8| TraceVote {
            trace_id: TraceId([b; 16]),
            keep: true,
            th: Some(0),
        };
        let mut votes: Vec<HeldVote> = vec![(vote(1), 0), (vote(2), S)];
        expire_votes(&mut votes, ns(VOTE_HOLD), &counters);
        assert_eq!(votes, [(vote(2), S)]);
        assert_eq!(counters.votes_lost.load(Ordering::Relaxed), 1);
        votes.extend((0..HELD_VOTES).map(|_| (vote(3), 2 * S)));
        expire_votes(&mut votes, 2 * S, &counters);
        assert_eq!(votes.len(), HELD_VOTES);
        assert_eq!(votes[0].0, vote(3), "the oldest went first");
        assert_eq!(counters.votes_lost.load(Ordering::Relaxed), 2);
    }
}
