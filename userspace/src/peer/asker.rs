//! The asking side's per-peer task: one kept-alive connection to one peer host, its lookups
//! batched into one frame per round and asked again until found or due, the votes for it
//! written before each round's question, and the parts of fallback fan-outs settled
//! (`super::fallback`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

use crate::link::Handle;
use crate::link::crosshost::{Lookup, Outcome};
use crate::model::TraceVote;

use super::common::{
    CONNECT_TIMEOUT, Channels, DOWN_FOR, IDLE, Outgoing, PeerEvent, REPLY_TIMEOUT, ROUND,
    ServerCounters, mono_ns, read_frame, tell, unix_ms,
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
    let mut votes: Vec<TraceVote> = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut down_until: Option<Instant> = None;
    let take = |o: Outgoing, waiting: &mut Vec<Waiting>, votes: &mut Vec<TraceVote>| match o {
        Outgoing::Lookup(l) => waiting.push(Waiting::new(l, None)),
        Outgoing::Fanned(l, fan) => waiting.push(Waiting::new(l, Some(fan))),
        Outgoing::Vote(_, v) => votes.push(v),
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
        end_due(&mut waiting, mono_ns(), &mut done);
        if down_until.is_some_and(|t| Instant::now() < t) {
            done.extend(waiting.drain(..).map(|w| (w, Outcome::NoAgent)));
            lose_votes(&mut votes, &ch.counters);
        } else if !waiting.is_empty() || !votes.is_empty() {
            let fresh = conn.is_none();
            if fresh {
                match timeout(CONNECT_TIMEOUT, connect(addr, source)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        conn = Some(s);
                    }
                    Ok(Err(e)) => {
                        log::debug!("peer {addr}: {e}");
                        down_until = Some(Instant::now() + DOWN_FOR);
                        done.extend(waiting.drain(..).map(|w| (w, Outcome::NoAgent)));
                        lose_votes(&mut votes, &ch.counters);
                    }
                    Err(_) => {
                        down_until = Some(Instant::now() + DOWN_FOR);
                        done.extend(waiting.drain(..).map(|w| (w, Outcome::Timeout)));
                        lose_votes(&mut votes, &ch.counters);
                    }
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
                    Ok(()) => {}
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
        // (the peer answered, it knows no such send) rather than timing the lookup out itself.
        end_due(&mut waiting, mono_ns() + ROUND.as_nanos() as u64, &mut done);
        let finals = settle(addr.ip(), &mut waiting, done, back.as_ref());
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

/// Ends the lookups due by `by_ns`: "unknown" when the peer answered so, else "timeout".
fn end_due(waiting: &mut Vec<Waiting>, by_ns: u64, done: &mut Vec<(Waiting, Outcome)>) {
    let (due, keep) = std::mem::take(waiting)
        .into_iter()
        .partition(|w| w.lookup.deadline_ns <= by_ns);
    *waiting = keep;
    for w in due {
        let why = if w.unknown {
            Outcome::Unknown
        } else {
            Outcome::Timeout
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

fn lose_votes(votes: &mut Vec<TraceVote>, counters: &ServerCounters) {
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
    votes: &mut Vec<TraceVote>,
    counters: &ServerCounters,
) -> io::Result<()> {
    while !votes.is_empty() {
        let n = votes.len().min(MAX_ITEMS);
        let frame = Frame {
            id: 0,
            unix_ms: unix_ms(),
            nonce: rand::random(),
            body: Body::Vote(votes[..n].to_vec()),
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
