//! The network side: a server answering other agents from the [`ClientIndex`] and taking their
//! tail-sampling votes, and one task per peer host that batches this agent's lookups and votes
//! to it.
//!
//! Both sides learn which agents share a trace, for the tail sampler's votes
//! (`processors::tail::vote`): an agent whose question was answered learns that the answering
//! agent holds the caller's part of the trace; an agent that answered learns that the asking
//! agent holds the callee's part. Votes go to a peer's agent port on the address it was asked at
//! (or asked from), like lookups.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{sleep, timeout};

use crate::link::Handle;
use crate::link::crosshost::{ClientSend, CrossHostConfig, Lookup, Outcome, WireKey};
use crate::model::{Endpoint, TraceVote};

use super::asker::ask_peer;
use super::common::{
    Channels, IDLE, Outgoing, PeerEvent, ServerCounters, mono_ns, read_frame, tell, unix_ms,
};
use super::fallback::{self, Fallback, News, Plan};
use super::index::{self, ClientIndex};
use super::nat::NatTable;
use super::protocol::{
    Body, Found, Frame, KIND_QUERY, KIND_VOTE, Key, Query, Refused, Replay, encode,
};

/// `--peer-listen` and friends.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Where this agent answers other agents.
    pub listen: SocketAddr,
    /// The agent port of peer hosts (default: the port of `listen`).
    pub peer_port: u16,
    /// The shared secret (at least 16 bytes).
    pub secret: Vec<u8>,
    pub linker: CrossHostConfig,
    /// This host's connection tracking table, to answer questions about connections whose
    /// client endpoint this host's NAT rewrote (`super::nat`); None when it cannot be asked.
    pub nat: Option<Arc<Mutex<NatTable>>>,
    /// Agents asked, without the caller's endpoint, about callers whose address has no agent (a
    /// NAT gateway between the hosts, `super::fallback`); at most
    /// [`fallback::MAX_FALLBACK_PEERS`].
    pub fallback: Vec<IpAddr>,
}

/// Reads a secret file: its bytes without surrounding whitespace, at least 16 of them.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let secret = raw.trim_ascii().to_vec();
    anyhow::ensure!(
        secret.len() >= 16,
        "{}: the peer secret must be at least 16 bytes",
        path.display()
    );
    Ok(secret)
}

/// Most concurrent connections the server accepts.
const MAX_CONNS: usize = 256;
/// Most peer hosts asked at once (a task each).
const MAX_PEERS: usize = 1024;
/// Lookups queued per peer host.
const PEER_QUEUE: usize = 4096;

/// Events queued for the runtime.
const EVENT_QUEUE: usize = 65_536;

/// The runtime's handle on the peer channel.
pub struct PeerLink {
    index: Arc<Mutex<ClientIndex>>,
    lookups: mpsc::Sender<Outgoing>,
    answers: mpsc::Receiver<(Handle, Outcome)>,
    events: mpsc::Receiver<PeerEvent>,
    pub server: Arc<ServerCounters>,
    pub local: SocketAddr,
    sends: Vec<ClientSend>,
    nat: Option<Arc<Mutex<NatTable>>>,
}

/// The address an agent is reached at: an IPv4-mapped IPv6 address is its IPv4 one.
fn agent_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl PeerLink {
    /// Binds the server and starts the tasks (inside a tokio runtime).
    pub async fn start(cfg: &PeerConfig) -> Result<Self> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("--peer-listen {}", cfg.listen))?;
        let local = listener.local_addr()?;
        let key = Arc::new(Key::new(&cfg.secret));
        let index = Arc::new(Mutex::new(ClientIndex::new(index::DEFAULT_MAX)));
        let server = Arc::new(ServerCounters::default());
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(serve(
            listener,
            Arc::clone(&key),
            (Arc::clone(&index), cfg.nat.clone()),
            Arc::clone(&server),
            events_tx.clone(),
        ));
        let (lookups, rx) = mpsc::channel(PEER_QUEUE);
        let (answers_tx, answers) = mpsc::channel(65_536);
        // Connections to peers leave from the address other agents reach this one at (when one
        // address was given): the agents we ask send their votes back to it.
        let source = (!local.ip().is_unspecified()).then_some(local.ip());
        tokio::spawn(dispatch(
            rx,
            key,
            (cfg.peer_port, source),
            (cfg.nat.clone(), Fallback::new(cfg.fallback.clone())),
            answers_tx,
            Channels {
                events: events_tx,
                counters: Arc::clone(&server),
            },
        ));
        Ok(Self {
            index,
            lookups,
            answers,
            events,
            server,
            local,
            sends: Vec::new(),
            nat: cfg.nat.clone(),
        })
    }

    /// Hands what the linker produced to the network: sends into the index, lookups to peers.
    /// A lookup that cannot be queued is answered at once (`Timeout`).
    pub fn submit(
        &mut self,
        take: impl FnOnce(&mut Vec<ClientSend>, &mut Vec<Lookup>),
        shed: &mut Vec<(Handle, Outcome)>,
    ) {
        let mut lookups = Vec::new();
        take(&mut self.sends, &mut lookups);
        let now = mono_ns();
        {
            let mut ix = self.index.lock().expect("index lock");
            for s in self.sends.drain(..) {
                ix.insert(&s, now);
            }
            ix.expire(now);
        }
        for l in lookups {
            if self.lookups.try_send(Outgoing::Lookup(l)).is_err() {
                shed.push((l.handle, Outcome::Timeout));
            }
        }
    }

    /// Sends a tail-sampling vote to the agent at `to` (batched with its lookups). A full queue
    /// loses it (counted).
    pub fn vote(&mut self, to: IpAddr, vote: TraceVote) {
        if self
            .lookups
            .try_send(Outgoing::Vote(agent_ip(to), vote))
            .is_err()
        {
            self.server.votes_lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes what the channel learnt since the last call.
    pub fn events(&mut self, out: &mut Vec<PeerEvent>) {
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
    }

    /// Waits for answers (forever when there are none) and takes those ready.
    pub async fn answers(&mut self, out: &mut Vec<(Handle, Outcome)>) {
        if let Some(a) = self.answers.recv().await {
            out.push(a);
            while let Ok(a) = self.answers.try_recv() {
                out.push(a);
            }
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// The exit summary of the channel's own side.
    pub fn log_summary(&self) {
        let c = &*self.server;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ix = self.index.lock().map(|ix| ix.stats).unwrap_or_default();
        let nat = match &self.nat {
            Some(t) => {
                let t = t.lock().map(|t| t.stats).unwrap_or_default();
                format!(
                    "{} through this host's NAT table ({} lookups, {} translated, {} failed)",
                    ix.answered_via_nat, t.lookups, t.translated, t.errors
                )
            }
            None => "NAT table not readable".to_string(),
        };
        log::info!(
            "summary (peer channel): answered {} questions in {} frames ({} found, {nat}; {} unknown, {} refused: another request), refused {} frames; asked {} questions about the caller as it was before this host's NAT, {} of fallback peers without the caller's endpoint ({} fanned out to all of them; {} answered so, {} refused as ambiguous); tail sampling votes: {} sent, {} received, {} not sent (peer unreachable or queue full); {} events lost (queue full)",
            n(&c.questions),
            n(&c.frames),
            ix.answered_found,
            ix.answered_unknown,
            ix.digest_mismatch,
            n(&c.refused),
            n(&c.asked_via_nat),
            n(&c.asked_fallback),
            n(&c.fanned_out),
            ix.answered_without_client,
            ix.ambiguous,
            n(&c.votes_out),
            n(&c.votes_in),
            n(&c.votes_lost),
            n(&c.events_lost),
        );
    }

    pub fn index_len(&self) -> usize {
        self.index.lock().map_or(0, |ix| ix.len())
    }
}

async fn serve(
    listener: TcpListener,
    key: Arc<Key>,
    (index, nat): (Arc<Mutex<ClientIndex>>, Option<Arc<Mutex<NatTable>>>),
    counters: Arc<ServerCounters>,
    events: mpsc::Sender<PeerEvent>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNS));
    let replay = Arc::new(Mutex::new(Replay::new(1 << 20)));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("peer: accept: {e}");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            continue;
        };
        let (key, index, nat, replay, counters, events) = (
            Arc::clone(&key),
            Arc::clone(&index),
            nat.clone(),
            Arc::clone(&replay),
            Arc::clone(&counters),
            events.clone(),
        );
        let ch = Channels { events, counters };
        tokio::spawn(async move {
            let tables = (&*index, nat.as_deref());
            if let Err(e) =
                answer_conn(stream, agent_ip(from.ip()), &key, tables, &replay, &ch).await
            {
                refusal_logged(from, &e);
            }
            drop(permit);
        });
    }
}

/// Logs why an asking agent's connection ended: a refusal the operator can act on (another
/// secret, another version, clocks apart) as a warning at most once a minute, anything else at debug level.
fn refusal_logged(from: SocketAddr, e: &anyhow::Error) {
    static LAST_WARN_MS: AtomicU64 = AtomicU64::new(0);
    let hint = e.downcast_ref::<Refused>().and_then(Refused::hint);
    let now = unix_ms();
    let last = LAST_WARN_MS.load(Ordering::Relaxed);
    if let Some(hint) = hint
        && now.saturating_sub(last) >= 60_000
        && LAST_WARN_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!("peer {from}: frame refused: {e}{hint} (logged at most once a minute)");
    } else {
        log::debug!("peer {from}: {e}");
    }
}

/// One asking agent's connection: queries are answered, votes taken.
async fn answer_conn(
    mut stream: TcpStream,
    from: IpAddr,
    key: &Key,
    (index, nat): (&Mutex<ClientIndex>, Option<&Mutex<NatTable>>),
    replay: &Mutex<Replay>,
    ch: &Channels,
) -> Result<()> {
    let counters = &*ch.counters;
    stream.set_nodelay(true)?;
    loop {
        let read = read_frame(&mut stream, key, &[KIND_QUERY, KIND_VOTE]);
        let Ok(frame) = timeout(IDLE, read).await else {
            return Ok(());
        };
        let frame = match frame {
            Ok(Ok(f)) => f,
            Ok(Err(refused)) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(refused.into());
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let checked = replay.lock().expect("replay lock").check(&frame, unix_ms());
        if let Err(refused) = checked {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refused.into());
        }
        let questions = match &frame.body {
            Body::Query(q) => q,
            Body::Vote(votes) => {
                counters
                    .votes_in
                    .fetch_add(votes.len() as u64, Ordering::Relaxed);
                for &vote in votes {
                    tell(&ch.events, PeerEvent::Vote { from, vote }, counters);
                }
                continue;
            }
            Body::Reply(_) => anyhow::bail!("not a query"),
        };
        counters.frames.fetch_add(1, Ordering::Relaxed);
        counters
            .questions
            .fetch_add(questions.len() as u64, Ordering::Relaxed);
        let replies = answer_all(questions, index, nat);
        // The asker holds the callee's part of each trace we found.
        for f in replies.iter().flatten() {
            let trace_id = f.ctx.trace_id;
            tell(
                &ch.events,
                PeerEvent::Participant {
                    trace_id,
                    agent: from,
                },
                counters,
            );
        }
        let reply = Frame {
            id: frame.id,
            unix_ms: unix_ms(),
            nonce: rand::random(),
            body: Body::Reply(replies),
        };
        stream.write_all(&encode(key, &reply)).await?;
    }
}

/// The answers to one frame's questions. The NAT table is asked (outside the index's lock: a
/// netlink round trip) only about questions the index cannot answer as asked: the caller's
/// endpoint before this host's source NAT, and for a fallback peer's question (no caller
/// endpoint) the server a send to a service address of this host's really reached.
fn answer_all(
    questions: &[Query],
    index: &Mutex<ClientIndex>,
    nat: Option<&Mutex<NatTable>>,
) -> Vec<Option<Found>> {
    let mut translated: Vec<Option<Endpoint>> = vec![None; questions.len()];
    let mut reached: HashMap<(WireKey, Endpoint), Endpoint> = HashMap::new();
    if let Some(nat) = nat {
        let (misses, sends): (Vec<usize>, Vec<(WireKey, Endpoint)>) = {
            let ix = index.lock().expect("index lock");
            let misses = (0..questions.len())
                .filter(|&i| {
                    let q = &questions[i];
                    !fallback::is_without_client(&q.key.client) && !ix.contains(&q.key)
                })
                .collect();
            let sends = questions
                .iter()
                .filter(|q| fallback::is_without_client(&q.key.client))
                .flat_map(|q| ix.elsewhere(q))
                .collect();
            (misses, sends)
        };
        if !misses.is_empty() || !sends.is_empty() {
            let mut table = nat.lock().expect("nat lock");
            let now = mono_ns();
            for i in misses {
                let q = &questions[i];
                translated[i] = table
                    .original(q.server, q.key.client, now)
                    .map(|o| o.client)
                    .filter(|c| *c != q.key.client);
            }
            for (key, server) in sends {
                if let Some(real) = table.reached(key.client, server, now) {
                    reached.insert((key, server), real);
                }
            }
        }
    }
    let mut ix = index.lock().expect("index lock");
    questions
        .iter()
        .zip(translated)
        .map(|(q, t)| {
            if fallback::is_without_client(&q.key.client) {
                ix.answer_without_client(q, |key, server| reached.get(&(*key, server)).copied())
            } else {
                ix.answer(q, |_| t)
            }
        })
        .collect()
}

async fn dispatch(
    mut rx: mpsc::Receiver<Outgoing>,
    key: Arc<Key>,
    (port, source): (u16, Option<IpAddr>),
    (nat, mut fallback): (Option<Arc<Mutex<NatTable>>>, Fallback),
    answers: mpsc::Sender<(Handle, Outcome)>,
    ch: Channels,
) {
    let mut peers: HashMap<IpAddr, mpsc::Sender<Outgoing>> = HashMap::new();
    // Lookups the agent at the caller's address did not answer (nothing listens there), back
    // from its task when fallback peers are configured.
    let (back_tx, mut back_rx) = mpsc::channel::<(IpAddr, Lookup)>(PEER_QUEUE);
    let back = (!fallback.is_off()).then_some(back_tx);
    loop {
        let (plan, o) = tokio::select! {
            o = rx.recv() => {
                let Some(mut o) = o else { return };
                let plan = match &mut o {
                    Outgoing::Lookup(l) => {
                        if let Some(nat) = &nat {
                            undo_local_nat(l, nat, &ch.counters);
                        }
                        fallback.plan(agent_ip(l.key.client.addr), l, mono_ns())
                    }
                    _ => Plan::Direct,
                };
                (plan, o)
            }
            Some((ip, l)) = back_rx.recv() => {
                (fallback.no_agent(ip, &l, mono_ns()), Outgoing::Lookup(l))
            }
        };
        let targets = match plan {
            Plan::Direct => {
                let ip = match &o {
                    Outgoing::Lookup(l) | Outgoing::Fanned(l, _) => agent_ip(l.key.client.addr),
                    Outgoing::Vote(to, _) => *to,
                };
                vec![(ip, o)]
            }
            Plan::Answer(outcome) => {
                if let Outgoing::Lookup(l) = o {
                    let _ = answers.send((l.handle, outcome)).await;
                }
                continue;
            }
            Plan::Fan(fan, to) => {
                let Outgoing::Lookup(l) = o else { continue };
                ch.counters.asked_fallback.fetch_add(1, Ordering::Relaxed);
                if to.len() > 1 {
                    ch.counters.fanned_out.fetch_add(1, Ordering::Relaxed);
                }
                let q = fallback::without_client(&l);
                to.into_iter()
                    .map(|ip| (ip, Outgoing::Fanned(q, Arc::clone(&fan))))
                    .collect()
            }
        };
        for (ip, o) in targets {
            if peers.get(&ip).is_none_or(|tx| tx.is_closed()) {
                if peers.len() >= MAX_PEERS {
                    peers.retain(|_, tx| !tx.is_closed());
                }
                if peers.len() >= MAX_PEERS {
                    lost(ip, o, &answers, &ch.counters).await;
                    continue;
                }
                let (tx, prx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(ask_peer(
                    (SocketAddr::new(ip, port), source),
                    Arc::clone(&key),
                    prx,
                    (answers.clone(), back.clone()),
                    ch.clone(),
                ));
                peers.insert(ip, tx);
            }
            if let Err(e) = peers[&ip].try_send(o) {
                lost(ip, e.into_inner(), &answers, &ch.counters).await;
            }
        }
    }
}

/// A lookup about a connection this host's netfilter translated on the way in asks about the
/// connection as the caller made it: the caller's real endpoint (not the host address a
/// node-port SNAT gave it, which would send the question to this agent itself) and the address
/// it called (the host port, not the server's, so the caller's agent can undo its own NAT too).
/// The sequence numbers are not translated. One netlink round trip per connection (cached in
/// the table).
fn undo_local_nat(l: &mut Lookup, nat: &Mutex<NatTable>, counters: &ServerCounters) {
    let Ok(mut table) = nat.lock() else {
        return;
    };
    if let Some(o) = table.original(l.server, l.key.client, mono_ns()) {
        l.key.client = o.client;
        l.server = o.server;
        counters.asked_via_nat.fetch_add(1, Ordering::Relaxed);
    }
}

/// What could not be handed to peer `ip`'s task: a lookup is answered `Timeout` (a fallback
/// peer's part of one counts as that peer's timeout), a vote counted.
async fn lost(
    ip: IpAddr,
    o: Outgoing,
    answers: &mpsc::Sender<(Handle, Outcome)>,
    counters: &ServerCounters,
) {
    match o {
        Outgoing::Lookup(l) => {
            let _ = answers.send((l.handle, Outcome::Timeout)).await;
        }
        Outgoing::Fanned(_, fan) => {
            if let Some((outcome, _)) = fan.settle(ip, News::Ended(Outcome::Timeout), mono_ns()) {
                let _ = answers.send((fan.handle, outcome)).await;
            }
        }
        Outgoing::Vote(..) => {
            counters.votes_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The server endpoint the tests' lookups name (no NAT table in them).
#[cfg(test)]
fn test_server() -> Endpoint {
    Endpoint {
        addr: IpAddr::from([127, 0, 0, 9]),
        port: 80,
    }
}

#[cfg(test)]
mod tests {
    use super::super::protocol::KIND_REPLY;
    use super::*;
    use crate::link::crosshost::{PeerContext, WireKey};
    use crate::model::{Endpoint, SpanId, TraceId};

    fn cfg(listen: &str, peer_port: u16, secret: &[u8]) -> PeerConfig {
        PeerConfig {
            listen: listen.parse().unwrap(),
            peer_port,
            secret: secret.to_vec(),
            linker: CrossHostConfig::default(),
            nat: None,
            fallback: Vec::new(),
        }
    }

    fn key(port: u16) -> WireKey {
        WireKey {
            client: Endpoint {
                addr: "127.0.0.1".parse().unwrap(),
                port,
            },
            seq: 1234,
        }
    }

    async fn ask_one(b: &mut PeerLink, l: Lookup) -> (Handle, Outcome) {
        let mut shed = Vec::new();
        b.submit(|_, ls| ls.push(l), &mut shed);
        assert!(shed.is_empty());
        let mut out = Vec::new();
        timeout(Duration::from_secs(5), b.answers(&mut out))
            .await
            .expect("an answer in time");
        out[0]
    }

    /// A CLIENT send of trace 9…, span 8… (key(40000), digest 77) into `a`'s index; its context.
    fn client_send(a: &mut PeerLink) -> PeerContext {
        let ctx = PeerContext {
            trace_id: TraceId([9; 16]),
            span_id: SpanId([8; 8]),
            sampled: None,
        };
        let send = ClientSend {
            key: key(40000),
            server: test_server(),
            digest: 77,
            ctx,
            start_unix_ns: 1,
            end_unix_ns: 2,
        };
        a.submit(|s, _| s.push(send), &mut Vec::new());
        ctx
    }

    #[tokio::test]
    async fn lookups_over_loopback() {
        let secret = b"0123456789abcdef-shared";
        let mut a = PeerLink::start(&cfg("127.0.0.1:0", 0, secret))
            .await
            .unwrap();
        let port = a.local.port();
        let ctx = client_send(&mut a);
        // Another agent with the same secret asks about it (its peers' agent port is A's).
        let mut b = PeerLink::start(&cfg("127.0.0.2:0", port, secret))
            .await
            .unwrap();
        let soon = mono_ns() + 2_000_000_000;
        let found = ask_one(
            &mut b,
            Lookup {
                handle: 1,
                key: key(40000),
                digest: 77,
                server: test_server(),
                deadline_ns: soon,
            },
        )
        .await;
        assert_eq!(
            found,
            (
                1,
                Outcome::Found {
                    ctx,
                    start_unix_ns: 1,
                    end_unix_ns: 2
                }
            )
        );
        // The right connection but another request: unknown (after its deadline).
        let unknown = ask_one(
            &mut b,
            Lookup {
                handle: 2,
                key: key(40000),
                digest: 78,
                server: test_server(),
                deadline_ns: mono_ns() + 300_000_000,
            },
        )
        .await;
        assert_eq!(unknown, (2, Outcome::Unknown));
        // An agent with another secret is refused.
        let mut c = PeerLink::start(&cfg("127.0.0.3:0", port, b"another-secret-of-16"))
            .await
            .unwrap();
        let refused = ask_one(
            &mut c,
            Lookup {
                handle: 3,
                key: key(40000),
                digest: 77,
                server: test_server(),
                deadline_ns: soon,
            },
        )
        .await;
        assert_eq!(refused, (3, Outcome::Refused));
        assert!(a.server.refused.load(Ordering::Relaxed) >= 1);
        // No agent listens at the peer's address.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);
        let mut d = PeerLink::start(&cfg("127.0.0.4:0", free_port, secret))
            .await
            .unwrap();
        let none = ask_one(
            &mut d,
            Lookup {
                handle: 4,
                key: key(40000),
                digest: 77,
                server: test_server(),
                deadline_ns: soon,
            },
        )
        .await;
        assert_eq!(none, (4, Outcome::NoAgent));
    }

    /// An agent that answered stops and starts again on its port a second later: what was asked
    /// of it meanwhile (a lookup, a vote) waits and reaches the new agent, rather than failing
    /// at once as for an address with no agent (the lookup's deadline is 4 s).
    #[test]
    fn lookups_and_votes_for_a_restarting_agent_wait_for_it() {
        let secret = b"0123456789abcdef-shared";
        let rt = || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a_cfg = cfg(&format!("127.0.0.1:{port}"), port, secret);
        let a_ip: IpAddr = "127.0.0.1".parse().unwrap();
        let lookup = |handle, digest, wait_ms: u64| Lookup {
            handle,
            key: key(40000),
            digest,
            server: test_server(),
            deadline_ns: mono_ns() + wait_ms * 1_000_000,
        };
        let rt_a = rt();
        let mut a = rt_a.block_on(PeerLink::start(&a_cfg)).unwrap();
        let ctx = client_send(&mut a);
        let rt_b = rt();
        let mut b = rt_b
            .block_on(PeerLink::start(&cfg("127.0.0.2:0", port, secret)))
            .unwrap();
        let found = rt_b.block_on(ask_one(&mut b, lookup(1, 77, 2_000)));
        assert!(matches!(found.1, Outcome::Found { .. }), "{found:?}");
        // A's agent stops: its listener and connections close.
        drop(a);
        rt_a.shutdown_timeout(Duration::from_secs(1));
        let mut shed = Vec::new();
        b.submit(|_, ls| ls.push(lookup(2, 79, 4_000)), &mut shed);
        assert!(shed.is_empty());
        let keep = TraceVote {
            trace_id: ctx.trace_id,
            keep: true,
            th: Some(0),
        };
        b.vote(a_ip, keep);
        std::thread::sleep(Duration::from_secs(1));
        // Back on the same port, with the send asked about.
        let rt_a2 = rt();
        let mut a2 = rt_a2.block_on(PeerLink::start(&a_cfg)).unwrap();
        let send = ClientSend {
            key: key(40000),
            server: test_server(),
            digest: 79,
            ctx,
            start_unix_ns: 3,
            end_unix_ns: 4,
        };
        a2.submit(|s, _| s.push(send), &mut Vec::new());
        let mut out = Vec::new();
        rt_b.block_on(async { timeout(Duration::from_secs(5), b.answers(&mut out)).await })
            .expect("an answer in time");
        assert_eq!(
            out,
            [(
                2,
                Outcome::Found {
                    ctx,
                    start_unix_ns: 3,
                    end_unix_ns: 4
                }
            )]
        );
        let mut votes = Vec::new();
        for _ in 0..200 {
            let mut ev = Vec::new();
            a2.events(&mut ev);
            votes.extend(
                ev.into_iter()
                    .filter(|e| matches!(e, PeerEvent::Vote { .. })),
            );
            if !votes.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let b_ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            votes,
            [PeerEvent::Vote {
                from: b_ip,
                vote: keep
            }]
        );
        assert_eq!(b.server.votes_lost.load(Ordering::Relaxed), 0);
    }

    /// Two agents on loopback addresses, one agent port: the asker and the answerer each learn
    /// that the other shares the trace, and votes reach the other side, from the address the
    /// votes must go back to.
    #[tokio::test]
    async fn both_sides_learn_the_trace_is_shared_and_votes_cross() {
        let secret = b"0123456789abcdef-shared";
        // One agent port for both, as in a deployment.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut a = PeerLink::start(&cfg(&format!("127.0.0.1:{port}"), port, secret))
            .await
            .unwrap();
        let ctx = client_send(&mut a);
        let mut b = PeerLink::start(&cfg(&format!("127.0.0.2:{port}"), port, secret))
            .await
            .unwrap();
        let found = ask_one(
            &mut b,
            Lookup {
                handle: 1,
                key: key(40000),
                digest: 77,
                server: test_server(),
                deadline_ns: mono_ns() + 2_000_000_000,
            },
        )
        .await;
        assert!(matches!(found.1, Outcome::Found { .. }));
        let a_ip: IpAddr = "127.0.0.1".parse().unwrap();
        let b_ip: IpAddr = "127.0.0.2".parse().unwrap();
        let trace_id = ctx.trace_id;
        let mut events = Vec::new();
        b.events(&mut events);
        assert_eq!(
            events,
            vec![PeerEvent::Participant {
                trace_id,
                agent: a_ip
            }]
        );
        let wait = |p: &mut PeerLink| {
            let mut out = Vec::new();
            p.events(&mut out);
            out
        };
        let mut got = Vec::new();
        for _ in 0..100 {
            got.extend(wait(&mut a));
            if !got.is_empty() {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            got,
            vec![PeerEvent::Participant {
                trace_id,
                agent: b_ip
            }]
        );
        // Votes both ways, each to the address the other learnt.
        let keep = TraceVote {
            trace_id,
            keep: true,
            th: Some(0),
        };
        let drop = TraceVote {
            keep: false,
            th: None,
            ..keep
        };
        b.vote(a_ip, keep);
        a.vote(b_ip, drop);
        let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            at_a.extend(wait(&mut a));
            at_b.extend(wait(&mut b));
            if !at_a.is_empty() && !at_b.is_empty() {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            at_a,
            vec![PeerEvent::Vote {
                from: b_ip,
                vote: keep
            }]
        );
        assert_eq!(
            at_b,
            vec![PeerEvent::Vote {
                from: a_ip,
                vote: drop
            }]
        );
        for p in [&a, &b] {
            assert_eq!(p.server.votes_in.load(Ordering::Relaxed), 1);
            assert_eq!(p.server.votes_out.load(Ordering::Relaxed), 1);
            assert_eq!(p.server.votes_lost.load(Ordering::Relaxed), 0);
        }
        // A vote to an address where no agent listens is lost, counted.
        b.vote("127.0.0.9".parse().unwrap(), keep);
        for _ in 0..200 {
            if b.server.votes_lost.load(Ordering::Relaxed) == 1 {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.server.votes_lost.load(Ordering::Relaxed), 1);
    }

    /// Callers behind a NAT gateway: nothing answers at the caller's address, so the fallback
    /// peers are asked without its endpoint; one match links, two are ambiguous, and a
    /// connection a peer answered for is asked of that peer alone.
    #[tokio::test]
    async fn fallback_peers_over_loopback() {
        let secret = b"0123456789abcdef-shared";
        let mut a1 = PeerLink::start(&cfg("127.0.0.1:0", 0, secret))
            .await
            .unwrap();
        let port = a1.local.port();
        // Every agent answers on the same port (peers are asked at `peer_port`).
        let mut a2 = PeerLink::start(&cfg(&format!("127.0.0.2:{port}"), port, secret))
            .await
            .unwrap();
        let ctx1 = client_send(&mut a1);
        let mut b_cfg = cfg("127.0.0.3:0", port, secret);
        b_cfg.fallback = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])];
        let mut b = PeerLink::start(&b_cfg).await.unwrap();
        // The caller as B saw it: the gateway's address (no agent) and a port it chose.
        let via_gw = |handle: Handle, port: u16| Lookup {
            handle,
            key: WireKey {
                client: Endpoint {
                    addr: "127.0.0.9".parse().unwrap(),
                    port,
                },
                seq: 1234,
            },
            digest: 77,
            server: test_server(),
            deadline_ns: mono_ns() + 1_000_000_000,
        };
        let found = |ctx| Outcome::Found {
            ctx,
            start_unix_ns: 1,
            end_unix_ns: 2,
        };
        assert_eq!(ask_one(&mut b, via_gw(1, 5555)).await, (1, found(ctx1)));
        // Another request on that connection, or another server: A1 knows no such send.
        let mut other = via_gw(2, 5555);
        other.digest = 78;
        other.deadline_ns = mono_ns() + 300_000_000;
        assert_eq!(ask_one(&mut b, other).await, (2, Outcome::Unknown));
        // A2 now holds a send with the same sequence number and request to the same server:
        // a new connection of the gateway's fans out and finds two candidates.
        let send2 = ClientSend {
            key: WireKey {
                client: Endpoint {
                    addr: "127.0.0.2".parse().unwrap(),
                    port: 40001,
                },
                seq: 1234,
            },
            server: test_server(),
            digest: 77,
            ctx: PeerContext {
                trace_id: TraceId([7; 16]),
                span_id: SpanId([6; 8]),
                sampled: None,
            },
            start_unix_ns: 1,
            end_unix_ns: 2,
        };
        a2.submit(|s, _| s.push(send2), &mut Vec::new());
        assert_eq!(
            ask_one(&mut b, via_gw(3, 5556)).await,
            (3, Outcome::Ambiguous)
        );
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            (n(&b.server.asked_fallback), n(&b.server.fanned_out)),
            (3, 2)
        );
        // A1's agent never saw the caller's endpoint, only its own send's.
        let ix = a1.index.lock().unwrap().stats;
        assert_eq!((ix.answered_without_client, ix.answered_found), (2, 2));
    }

    #[tokio::test]
    async fn replayed_query_refused() {
        let secret = b"0123456789abcdef-shared";
        let a = PeerLink::start(&cfg("127.0.0.1:0", 0, secret))
            .await
            .unwrap();
        let k = Key::new(secret);
        let frame = Frame {
            id: 5,
            unix_ms: unix_ms(),
            nonce: 12345,
            body: Body::Query(vec![Query {
                key: key(1),
                digest: 0,
                server: test_server(),
            }]),
        };
        let bytes = encode(&k, &frame);
        let mut s = TcpStream::connect(a.local).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let reply = read_frame(&mut s, &k, &[KIND_REPLY])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.id, 5);
        assert_eq!(reply.body, Body::Reply(vec![None]));
        // The same bytes again, on a new connection: refused, the connection closed.
        let mut s = TcpStream::connect(a.local).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        assert!(read_frame(&mut s, &k, &[KIND_REPLY]).await.is_err());
        // A stale one too.
        let old = Frame {
            unix_ms: unix_ms() - 120_000,
            nonce: 999,
            ..frame
        };
        let mut s = TcpStream::connect(a.local).await.unwrap();
        s.write_all(&encode(&k, &old)).await.unwrap();
        assert!(read_frame(&mut s, &k, &[KIND_REPLY]).await.is_err());
        assert_eq!(a.server.refused.load(Ordering::Relaxed), 2);
    }
}

/// What one lookup costs the two agents' CPUs, without the network: `cargo test --release -p
/// ztrace -- --ignored --nocapture per_lookup_cost` (docs/benchmarks.md).
#[cfg(test)]
mod cost {
    use super::super::protocol::{KIND_REPLY, decode};
    use super::*;
    use crate::link::crosshost::{PeerContext, WireKey};
    use crate::model::{Endpoint, SpanId, TraceId};

    #[test]
    #[ignore = "a measurement, not a check"]
    fn per_lookup_cost() {
        let key = Key::new(b"0123456789abcdef-shared");
        let mut ix = ClientIndex::new(index::DEFAULT_MAX);
        let wire = |i: u32| WireKey {
            client: Endpoint {
                addr: "10.0.0.1".parse().unwrap(),
                port: (i % 60_000) as u16,
            },
            seq: i,
        };
        for i in 0..100_000u32 {
            ix.insert(
                &ClientSend {
                    key: wire(i),
                    server: test_server(),
                    digest: u64::from(i),
                    ctx: PeerContext {
                        trace_id: TraceId([1; 16]),
                        span_id: SpanId([2; 8]),
                        sampled: None,
                    },
                    start_unix_ns: 0,
                    end_unix_ns: 0,
                },
                0,
            );
        }
        let mut replay = Replay::new(1 << 20);
        println!(
            "| lookups per frame | asker: encode + sign question, verify + decode answer | \
             answerer: verify, nonce, index, sign answer | both | bytes on the wire per lookup \
             (both ways, TCP/IP headers excluded) |"
        );
        for batch in [1usize, 16, 1024] {
            let rounds = 200_000 / batch;
            let (mut ask_ns, mut serve_ns, mut bytes) = (0u128, 0u128, 0usize);
            for r in 0..rounds {
                let t = std::time::Instant::now();
                let questions: Vec<Query> = (0..batch as u32)
                    .map(|i| Query {
                        key: wire(i * 7 + r as u32),
                        digest: u64::from(i * 7 + r as u32),
                        server: test_server(),
                    })
                    .collect();
                let q = Frame {
                    id: r as u64,
                    unix_ms: unix_ms(),
                    nonce: rand::random(),
                    body: Body::Query(questions),
                };
                let bytes_q = encode(&key, &q);
                ask_ns += t.elapsed().as_nanos();
                let t = std::time::Instant::now();
                let got = decode(
                    &key,
                    bytes_q[..4].try_into().unwrap(),
                    &bytes_q[4..],
                    &[KIND_QUERY],
                )
                .unwrap();
                replay.check(&got, unix_ms()).unwrap();
                let Body::Query(qs) = &got.body else { panic!() };
                let replies = qs.iter().map(|q| ix.answer(q, |_| None)).collect();
                let reply = encode(
                    &key,
                    &Frame {
                        id: got.id,
                        unix_ms: unix_ms(),
                        nonce: rand::random(),
                        body: Body::Reply(replies),
                    },
                );
                serve_ns += t.elapsed().as_nanos();
                let t = std::time::Instant::now();
                let back = decode(
                    &key,
                    reply[..4].try_into().unwrap(),
                    &reply[4..],
                    &[KIND_REPLY],
                )
                .unwrap();
                assert!(matches!(back.body, Body::Reply(ref v) if v.len() == batch));
                ask_ns += t.elapsed().as_nanos();
                bytes += bytes_q.len() + reply.len();
            }
            let per = |ns: u128| ns as f64 / (rounds * batch) as f64;
            println!(
                "| {batch} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} |",
                per(ask_ns),
                per(serve_ns),
                per(ask_ns + serve_ns),
                bytes as f64 / (rounds * batch) as f64
            );
        }
    }
}

/// The channel with 1,000 peer hosts on loopback, in one process: `cargo test --release -p
/// ztrace -- --ignored --nocapture thousand_peers` (docs/benchmarks.md). Prints CPU per lookup,
/// how many lookups a frame carried, and the memory the peers' connections and tasks took.
#[cfg(test)]
mod scale {
    use super::*;
    use crate::link::crosshost::{PeerContext, WireKey};
    use crate::model::{Endpoint, SpanId, TraceId};
    use std::net::Ipv4Addr;

    const PEERS: usize = 1000;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    fn cpu_s() -> f64 {
        // SAFETY: getrusage fills the struct we pass.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }

    fn peer_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
    }

    fn wire(i: usize, j: u32) -> WireKey {
        WireKey {
            client: Endpoint {
                addr: peer_ip(i).into(),
                port: 40_000u16.wrapping_add(j as u16),
            },
            seq: j.wrapping_mul(1000),
        }
    }

    fn cfg(listen: String, peer_port: u16) -> PeerConfig {
        PeerConfig {
            listen: listen.parse().unwrap(),
            peer_port,
            secret: b"0123456789abcdef-shared".to_vec(),
            linker: CrossHostConfig::default(),
            nat: None,
            fallback: Vec::new(),
        }
    }

    /// Submits `lookups` in chunks the dispatcher can take, and waits for every answer.
    async fn ask_all(asker: &mut PeerLink, lookups: Vec<Lookup>) -> (usize, usize) {
        let n = lookups.len();
        let (mut found, mut got) = (0, 0);
        let mut out = Vec::new();
        for chunk in lookups.chunks(1024) {
            // The dispatcher's queue holds PEER_QUEUE: wait for room rather than shed.
            while asker.lookups.capacity() < chunk.len() {
                sleep(Duration::from_millis(1)).await;
            }
            let mut shed = Vec::new();
            asker.submit(|_, ls| ls.extend_from_slice(chunk), &mut shed);
            assert!(shed.is_empty());
        }
        while got < n {
            out.clear();
            timeout(Duration::from_secs(30), asker.answers(&mut out))
                .await
                .expect("answers in time");
            got += out.len();
            found += out
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Found { .. }))
                .count();
        }
        (found, got)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn thousand_peers() {
        let rss_start = rss_kib();
        let first = PeerLink::start(&cfg(format!("{}:0", peer_ip(0)), 0))
            .await
            .unwrap();
        let port = first.local.port();
        let mut peers = vec![first];
        for i in 1..PEERS {
            peers.push(
                PeerLink::start(&cfg(format!("{}:{port}", peer_ip(i)), 0))
                    .await
                    .unwrap(),
            );
        }
        for (i, p) in peers.iter_mut().enumerate() {
            let sends: Vec<ClientSend> = (0..64u32)
                .map(|j| ClientSend {
                    key: wire(i, j),
                    server: test_server(),
                    digest: u64::from(j),
                    ctx: PeerContext {
                        trace_id: TraceId([1; 16]),
                        span_id: SpanId([2; 8]),
                        sampled: None,
                    },
                    start_unix_ns: 1,
                    end_unix_ns: 2,
                })
                .collect();
            p.submit(|s, _| s.extend(sends), &mut Vec::new());
        }
        let rss_servers = rss_kib();
        let mut asker = PeerLink::start(&cfg("127.0.0.1:0".into(), port))
            .await
            .unwrap();
        let frames = |peers: &[PeerLink]| -> (u64, u64) {
            peers.iter().fold((0, 0), |(f, q), p| {
                (
                    f + p.server.frames.load(Ordering::Relaxed),
                    q + p.server.questions.load(Ordering::Relaxed),
                )
            })
        };
        println!(
            "{PEERS} answering agents on loopback: RSS {} KiB → {} KiB (listeners, tasks, indexes of 64 sends each)",
            rss_start, rss_servers
        );
        let mut handle = 0;
        // Rounds: `per_peer` lookups for every peer at once (the first round opens the 1,000
        // connections).
        for (round, per_peer) in [(0, 1u32), (1, 1), (2, 4), (3, 16), (4, 64)] {
            let deadline = mono_ns() + 20_000_000_000;
            let lookups: Vec<Lookup> = (0..per_peer)
                .flat_map(|j| (0..PEERS).map(move |i| (i, j)))
                .map(|(i, j)| {
                    handle += 1;
                    Lookup {
                        handle,
                        key: wire(i, j),
                        digest: u64::from(j),
                        server: test_server(),
                        deadline_ns: deadline,
                    }
                })
                .collect();
            let n = lookups.len();
            let (f0, q0) = frames(&peers);
            let (cpu0, t0) = (cpu_s(), std::time::Instant::now());
            let (found, got) = ask_all(&mut asker, lookups).await;
            let (cpu, wall) = (cpu_s() - cpu0, t0.elapsed().as_secs_f64());
            let (f1, q1) = frames(&peers);
            assert_eq!(got, n);
            println!(
                "round {round}: {n:>6} lookups to {PEERS} peers ({per_peer:>2} each): {found} found; \
                 {} frames, {:.1} lookups per frame; CPU {:.1} µs per lookup (both sides, loopback \
                 TCP included), wall {:.2} s; RSS {} KiB",
                f1 - f0,
                (q1 - q0) as f64 / (f1 - f0).max(1) as f64,
                cpu * 1e6 / n as f64,
                wall,
                rss_kib()
            );
        }
        let rss_end = rss_kib();
        println!(
            "asking agent with {PEERS} peers connected: +{} KiB over the answering side alone \
             (≈ {:.1} KiB per peer, both ends of each connection and the asker's per-peer task)",
            rss_end.saturating_sub(rss_servers),
            rss_end.saturating_sub(rss_servers) as f64 / PEERS as f64
        );
    }

    /// What the stated bounds cost when full: the index at its maximum and `max_pending` lookups.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn memory_at_the_bounds() {
        // Pending lookups first: the index's freed growth would otherwise be reused.
        let mut x = crate::link::crosshost::CrossHost::new(CrossHostConfig::default());
        let max = x.config.max_pending;
        let before = rss_kib();
        for h in 0..max as u64 {
            let w = wire(h as usize % PEERS, h as u32);
            x.hold(h, w, w.client, h, 0);
        }
        x.tick(0, |_| true);
        let (mut s, mut l) = (Vec::new(), Vec::new());
        x.take(&mut s, &mut l);
        let after = rss_kib();
        println!(
            "pending lookups full ({} of them, asked): RSS +{} KiB = {:.0} bytes per lookup \
             (the linker's entry, its two queue slots, the lookup handed to the network; \
             size_of Lookup = {} bytes)",
            x.pending(),
            after - before,
            (after - before) as f64 * 1024.0 / max as f64,
            std::mem::size_of::<Lookup>()
        );
        drop((x, l));
        let before = rss_kib();
        let mut ix = ClientIndex::new(index::DEFAULT_MAX);
        for i in 0..index::DEFAULT_MAX {
            ix.insert(
                &ClientSend {
                    key: wire(i % PEERS, i as u32),
                    server: test_server(),
                    digest: i as u64,
                    ctx: PeerContext {
                        trace_id: TraceId([1; 16]),
                        span_id: SpanId([2; 8]),
                        sampled: None,
                    },
                    start_unix_ns: 1,
                    end_unix_ns: 2,
                },
                0,
            );
        }
        let after = rss_kib();
        println!(
            "index full ({} entries): RSS +{} KiB = {:.0} bytes per entry (a table entry is {} \
             bytes, an order slot {}; the table's buckets are a power of two above 8/7 of the \
             entries, and the tables outgrown on the way stay in the allocator)",
            ix.len(),
            after - before,
            (after - before) as f64 * 1024.0 / ix.len() as f64,
            std::mem::size_of::<(WireKey, (u64, super::super::protocol::Found, u64))>(),
            std::mem::size_of::<(u64, WireKey)>()
        );
    }
}
