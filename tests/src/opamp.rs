//! An OpAMP server for the tests, on the same messages as ztrace's client (`ztrace-opamp`): the
//! plain-HTTP transport (POST of an `AgentToServer`, a `ServerToAgent` back), one remote
//! configuration at a time offered until the agent reports its hash, and every message received
//! kept for the test to read. Optionally it requires a bearer token and speaks TLS.
//!
//! Like a real server it forgets everything when restarted ([`OpampServer::stop`] then
//! [`OpampServer::start_on`] the same port) and, when an agent it does not know sends no
//! description, asks for the full state (`ReportFullState`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::receiver::{TlsIdentity, tls_acceptor};
use ztrace_opamp::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, RemoteConfigStatuses,
    ServerCapabilities, ServerToAgent, ServerToAgentFlags, bits,
};

#[derive(Default)]
struct State {
    received: Vec<AgentToServer>,
    /// The configuration offered: (hash, TOML).
    offer: Option<(Vec<u8>, String)>,
    /// Agents that sent their description since this server started.
    known: Vec<Vec<u8>>,
    token: Option<String>,
    unauthorized: usize,
    /// The hash the agent last reported a status for.
    acked: Option<Vec<u8>>,
}

pub struct OpampServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    https: bool,
}

impl OpampServer {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<OpampServer> {
        Self::start_on("127.0.0.1:0".parse()?, None, None).await
    }

    /// Starts on `addr`; with `token`, requests without `authorization: Bearer TOKEN` get 401;
    /// with `tls`, it is an https server with that certificate.
    pub async fn start_on(
        addr: SocketAddr,
        token: Option<&str>,
        tls: Option<&TlsIdentity>,
    ) -> anyhow::Result<OpampServer> {
        let tls = tls.map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            token: token.map(str::to_string),
            ..State::default()
        }));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(serve(listener, Arc::clone(&state), tls.clone(), stopped));
        Ok(OpampServer {
            addr,
            state,
            stop: Some(stop),
            https: tls.is_some(),
        })
    }

    /// Stops listening and drops every connection (what a server crash looks like).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint for `--opamp-endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/v1/opamp", self.addr)
    }

    /// Offers `toml` (hash: its bytes' FNV-1a) from the next poll on.
    pub fn offer(&self, toml: &str) -> Vec<u8> {
        let hash = fnv1a(toml.as_bytes()).to_be_bytes().to_vec();
        self.state.lock().unwrap().offer = Some((hash.clone(), toml.to_string()));
        hash
    }

    pub fn received(&self) -> Vec<AgentToServer> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn unauthorized(&self) -> usize {
        self.state.lock().unwrap().unauthorized
    }

    /// Waits until a message satisfies `pred`; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&AgentToServer) -> bool,
    ) -> anyhow::Result<AgentToServer> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.received().into_iter().find(|m| pred(m)) {
                return Ok(m);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "no OpAMP message with {what} within {timeout:?}; got {} message(s)",
                    self.received().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the remote-config status of `hash`; returns (status, error message).
    pub async fn wait_status(
        &self,
        hash: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<(RemoteConfigStatuses, String)> {
        let m = self
            .wait_for("the status of the offered configuration", timeout, |m| {
                m.remote_config_status.as_ref().is_some_and(|s| {
                    s.last_remote_config_hash == hash
                        && s.status != RemoteConfigStatuses::Unset as i32
                })
            })
            .await?;
        let s = m.remote_config_status.unwrap_or_default();
        Ok((
            RemoteConfigStatuses::try_from(s.status).unwrap_or(RemoteConfigStatuses::Unset),
            s.error_message,
        ))
    }
}

impl Drop for OpampServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The effective configuration's text in a message, if it carries one.
pub fn effective_text(m: &AgentToServer) -> Option<String> {
    let map = m.effective_config.as_ref()?.config_map.as_ref()?;
    let file = map.config_map.values().next()?;
    Some(String::from_utf8_lossy(&file.body).into_owned())
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn serve(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let status = |code: u16| {
        let mut r = hyper::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
        Ok(r)
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/opamp" {
        return status(404);
    }
    let token = state.lock().unwrap().token.clone();
    if let Some(t) = token {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {t}"));
        if !ok {
            state.lock().unwrap().unauthorized += 1;
            return status(401);
        }
    }
    let Ok(body) = req.into_body().collect().await else {
        return status(400);
    };
    let Ok(msg) = AgentToServer::decode(body.to_bytes()) else {
        return status(400);
    };
    let reply = {
        let mut s = state.lock().unwrap();
        let mut reply = ServerToAgent {
            instance_uid: msg.instance_uid.clone(),
            capabilities: bits(&[
                ServerCapabilities::AcceptsStatus,
                ServerCapabilities::OffersRemoteConfig,
                ServerCapabilities::AcceptsEffectiveConfig,
            ]),
            ..ServerToAgent::default()
        };
        if msg.agent_description.is_some() {
            s.known.push(msg.instance_uid.clone());
        } else if !s.known.contains(&msg.instance_uid) {
            reply.flags |= ServerToAgentFlags::ReportFullState as u64;
        }
        if let Some(r) = &msg.remote_config_status {
            s.acked = Some(r.last_remote_config_hash.clone());
        }
        if let Some((hash, toml)) = &s.offer
            && s.acked.as_ref() != Some(hash)
        {
            let mut map = AgentConfigMap::default();
            map.config_map.insert(
                String::new(),
                AgentConfigFile {
                    body: toml.as_bytes().to_vec(),
                    content_type: "application/toml".into(),
                },
            );
            reply.remote_config = Some(AgentRemoteConfig {
                config: Some(map),
                config_hash: hash.clone(),
            });
        }
        s.received.push(msg);
        reply
    };
    let mut r = hyper::Response::new(Full::new(Bytes::from(reply.encode_to_vec())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ztrace_opamp::CONTENT_TYPE),
    );
    Ok(r)
}
