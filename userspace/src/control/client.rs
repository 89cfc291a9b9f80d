//! The OpAMP client task: polls the server over plain HTTP (`POST`, `application/x-protobuf`,
//! the specification's plain-HTTP transport; TLS and headers as the OTLP/HTTP exporter has them)
//! and hands every validated remote configuration to the capture loop, which applies it whole
//! and answers.
//!
//! An unreachable server changes nothing in force: the client retries with a doubling delay
//! (1 s up to [`MAX_BACKOFF`]), logs once when the server goes away and once when it is back, and
//! then reports its full state again (the server may have restarted).
//!
//! It owns the connection, the timing and the hand-over; the protocol is `agent.rs`'s and the
//! validation `remote.rs`'s. It must not touch the data path itself.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::agent::{Agent, Identity, Offer};
use super::identity;
use super::remote::{self, Base, Plan, Settings};
use crate::config::{ConfigFile, Opamp, OtlpTarget, Protocol, Signal};
use crate::export::Transport;

/// The longest wait between attempts while the server is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One exchange's time limit.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A validated remote configuration for the capture loop to apply; it answers on `reply`
/// (`Err`: nothing was applied).
pub struct Pending {
    pub plan: Plan,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// The daemon's health as the capture loop sees it, for `ComponentHealth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// A short text, e.g. `tracing 3 process(es)`.
    pub status: String,
    /// Why it is not healthy (empty when it is).
    pub last_error: String,
}

/// The capture loop's end of the OpAMP client.
pub struct Control {
    offers: mpsc::Receiver<Pending>,
    stop: watch::Sender<bool>,
    health: watch::Sender<Health>,
    task: JoinHandle<()>,
}

/// What the client needs from the daemon.
pub struct Start {
    pub opamp: Opamp,
    pub base: Base,
    /// False when flags chose what to trace (then `target.*` is not the file's to change).
    pub targets_from_file: bool,
    pub host_name: String,
    /// The instance uid's file, opened by [`Start::keep_identity`] (else by [`Control::start`]).
    pub identity: Option<identity::Kept>,
}

impl Start {
    /// Opens (creates) the instance uid's file now: call it before the seccomp filter is
    /// installed, which forbids opening files for writing.
    pub fn keep_identity(&mut self, now_unix_ms: u64) {
        self.identity = Some(identity::Kept::open(&self.opamp.state_dir, now_unix_ms));
    }
}

impl Control {
    /// Spawns the client on the current tokio runtime. Fails only when the configuration in force
    /// does not resolve (it did a moment ago, at start-up) or the transport cannot be set up
    /// (unreadable TLS material).
    pub fn start(s: Start, start_unix_ns: u64) -> Result<Control, String> {
        let current = (s.base.resolver)(&s.base.file)?;
        let transport = Transport::new(&OtlpTarget {
            signal: Signal::Traces,
            protocol: Protocol::HttpProtobuf,
            endpoint: s.opamp.endpoint.clone(),
            headers: s.opamp.headers.clone(),
            compression: crate::config::Compression::None,
            timeout: TIMEOUT,
            tls: s.opamp.tls.clone(),
        })
        .map_err(|e| format!("OpAMP: {e}"))?;
        let mut s = s;
        let dir = &s.opamp.state_dir;
        let uid = s
            .identity
            .get_or_insert_with(|| identity::Kept::open(dir, start_unix_ns / 1_000_000))
            .uid;
        let agent = Agent::new(
            Identity {
                instance_uid: uid,
                host_name: s.host_name.clone(),
                os_version: os_release(),
            },
            start_unix_ns,
            remote::effective_toml(&s.base.file),
        );
        let (tx, rx) = mpsc::channel(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (health_tx, health_rx) = watch::channel(Health {
            healthy: true,
            status: "running".into(),
            last_error: String::new(),
        });
        log::info!(
            "OpAMP: managed by {} (polling every {:?}; a remote configuration may change: {})",
            s.opamp.endpoint,
            s.opamp.poll_interval,
            allowed(&s.opamp)
        );
        let client = Client {
            effective: s.base.file.clone(),
            current,
            agent,
            transport,
            offers: tx,
            health: health_rx,
            start: s,
        };
        let task = tokio::spawn(client.run(stop_rx));
        Ok(Control {
            offers: rx,
            stop: stop_tx,
            health: health_tx,
            task,
        })
    }

    /// Updates the health reported with the next message (when it changed).
    pub fn health(&self, h: Health) {
        self.health.send_if_modified(|old| {
            let changed = *old != h;
            *old = h;
            changed
        });
    }

    /// The next configuration to apply.
    pub async fn next(&mut self) -> Option<Pending> {
        self.offers.recv().await
    }

    /// Says goodbye to the server (AgentDisconnect), waiting at most `limit`.
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            log::debug!("OpAMP: no goodbye within {limit:?}");
        }
    }
}

/// Waits for the next configuration; never resolves without a client.
pub async fn next_pending(control: &mut Option<Control>) -> Pending {
    match control {
        Some(c) => match c.next().await {
            Some(p) => p,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn allowed(o: &Opamp) -> String {
    if o.allow.is_empty() {
        return "nothing".into();
    }
    let names: Vec<&str> = o.allow.iter().map(|s| s.name()).collect();
    names.join(", ")
}

/// `uname -r`.
fn os_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

struct Client {
    start: Start,
    /// The configuration file in force (local file + the applied remote layer) and what it
    /// resolved to.
    effective: ConfigFile,
    current: Settings,
    agent: Agent,
    transport: Transport,
    offers: mpsc::Sender<Pending>,
    health: watch::Receiver<Health>,
}

/// Whether the server answered the last attempt (logged on change only).
#[derive(PartialEq)]
enum Link {
    Starting,
    Up,
    Down,
}

impl Client {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut link = Link::Starting;
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.health.has_changed().unwrap_or(false) {
                let h = self.health.borrow_and_update().clone();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                self.agent
                    .set_health(h.healthy, h.status, h.last_error, now);
            }
            let message = self.agent.message();
            let wait = match self.exchange(message).await {
                Ok(reply) => {
                    if link != Link::Up {
                        if link == Link::Down {
                            log::info!(
                                "OpAMP: {} answers again; reported the full state",
                                self.start.opamp.endpoint
                            );
                        }
                        link = Link::Up;
                    }
                    backoff = Duration::from_secs(1);
                    if let Some(uid) = reply.new_uid
                        && let Some(kept) = &mut self.start.identity
                    {
                        kept.store(&uid);
                    }
                    if let Some(e) = &reply.error {
                        log::warn!("OpAMP: {e}");
                    }
                    match reply.offer {
                        // Report the outcome at once rather than a poll interval later.
                        Some(offer) => {
                            self.decide(offer).await;
                            Duration::ZERO
                        }
                        None => reply.retry_after.unwrap_or(self.start.opamp.poll_interval),
                    }
                }
                Err(e) => {
                    if link != Link::Down {
                        log::warn!(
                            "OpAMP: {} unreachable ({e}); the configuration in force stays, retrying with backoff (up to every {MAX_BACKOFF:?})",
                            self.start.opamp.endpoint
                        );
                        link = Link::Down;
                    }
                    self.agent.reconnecting();
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        if link == Link::Up {
            let bye = self.agent.goodbye();
            let _ = self.exchange(bye).await;
        }
    }

    async fn exchange(
        &mut self,
        message: ztrace_opamp::AgentToServer,
    ) -> Result<super::agent::Reply, String> {
        let body = Bytes::from(message.encode_to_vec());
        let bytes = match tokio::time::timeout(TIMEOUT, self.transport.send(body)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {TIMEOUT:?}")),
        };
        let response = ztrace_opamp::ServerToAgent::decode(bytes)
            .map_err(|e| format!("the answer is not an OpAMP ServerToAgent message: {e}"))?;
        Ok(self.agent.on_response(response))
    }

    /// Validates an offer, has the capture loop apply it, and records the outcome.
    async fn decide(&mut self, offer: Offer) {
        let outcome = match offer.text {
            Err(e) => Err(e),
            Ok(text) => match remote::validate(
                &text,
                &self.start.base,
                &self.effective,
                &self.current,
                &self.start.opamp,
                self.start.targets_from_file,
            ) {
                Err(e) => Err(e),
                Ok(accepted) => {
                    let (reply, answer) = oneshot::channel();
                    let what = (accepted.plan.describe(), accepted.plan.tail_state());
                    let sent = self
                        .offers
                        .send(Pending {
                            plan: accepted.plan,
                            reply,
                        })
                        .await;
                    let result = match sent {
                        Ok(()) => answer
                            .await
                            .unwrap_or_else(|_| Err("ztrace is stopping".into())),
                        Err(_) => Err("ztrace is stopping".into()),
                    };
                    result.map(|()| {
                        self.effective = accepted.effective;
                        self.current = accepted.settings;
                        what
                    })
                }
            },
        };
        match outcome {
            Ok((what, tail)) => {
                log::info!("OpAMP: remote configuration applied (changed: {what})");
                self.agent
                    .applied(offer.hash, remote::effective_toml(&self.effective));
                // The health tells the server what tail sampling is now (off, or which policies).
                if let Some(tail) = tail {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    self.agent.set_note(tail, now);
                }
            }
            Err(e) => {
                log::warn!("OpAMP: remote configuration FAILED, nothing applied: {e}");
                self.agent
                    .failed(offer.hash, format!("{e} (nothing was applied)"));
            }
        }
    }
}
