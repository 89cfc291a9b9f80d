//! The command-line flags of cross-host links (`crate::peer`). Off unless `--peer-listen` is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::parse_duration;
use crate::peer::{CrossHostConfig, PeerConfig, read_secret};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PeerArgs {
    /// Cross-host links: answer other ztrace agents on this address (e.g. 0.0.0.0:4390) and ask
    /// the agents of calling hosts for the trace context of their calls. Needs
    /// --peer-secret-file; every agent of a deployment uses the same secret and port.
    #[arg(long, value_name = "ADDR", requires = "peer_secret_file")]
    pub peer_listen: Option<SocketAddr>,
    /// The secret shared by the agents (at least 16 bytes; surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", requires = "peer_listen")]
    pub peer_secret_file: Option<PathBuf>,
    /// The agent port of other hosts [default: the port of --peer-listen].
    #[arg(long, value_name = "PORT", requires = "peer_listen")]
    pub peer_port: Option<u16>,
    /// How long a server span whose caller is on another host waits for that host's agent,
    /// after the local grace period [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "peer_listen")]
    pub peer_wait: Option<Duration>,
}

impl PeerArgs {
    /// The channel's settings, None when off.
    pub fn config(&self) -> Result<Option<PeerConfig>, String> {
        let (Some(listen), Some(file)) = (self.peer_listen, &self.peer_secret_file) else {
            return Ok(None);
        };
        let secret = read_secret(file).map_err(|e| format!("--peer-secret-file: {e:#}"))?;
        let mut linker = CrossHostConfig::default();
        if let Some(w) = self.peer_wait {
            linker.wait_ns = w.as_nanos().min(u128::from(u64::MAX)) as u64;
        }
        Ok(Some(PeerConfig {
            listen,
            peer_port: self.peer_port.unwrap_or(listen.port()),
            secret,
            linker,
        }))
    }
}
