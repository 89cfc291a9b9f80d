//! The flags of cross-host links (`crate::peer`). The flags and the file keys under `[peers]` are
//! resolved in `config` (flags win); this module hands the flags over and turns the result into
//! the channel's settings. Off unless a listen address is given.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, CliFlags, ConfigFile, Sources, parse_duration};
use std::sync::{Arc, Mutex};

use crate::peer::fallback::MAX_FALLBACK_PEERS;
use crate::peer::nat::NatTable;
use crate::peer::{CrossHostConfig, PeerConfig, read_secret};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PeerArgs {
    /// Cross-host links: answer other ztrace agents on this address (e.g. 0.0.0.0:4390) and ask
    /// the agents of calling hosts for the trace context of their calls. Needs
    /// --peer-secret-file; every agent of a deployment uses the same secret and port.
    /// [file: peers.listen]
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// The secret shared by the agents (at least 16 bytes; surrounding whitespace ignored).
    /// [file: peers.secret_file]
    #[arg(long, value_name = "FILE")]
    pub peer_secret_file: Option<PathBuf>,
    /// The agent port of other hosts [default: the port of --peer-listen; file: peers.port].
    #[arg(long, value_name = "PORT")]
    pub peer_port: Option<u16>,
    /// How long a server span whose caller is on another host waits for that host's agent,
    /// after the local grace period [default: 2s; file: peers.wait].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub peer_wait: Option<Duration>,
    /// Agents to ask about a caller whose address has no agent, e.g. a NAT gateway between
    /// the hosts that gives every caller its own address: they are asked without the caller's
    /// endpoint (the request's TCP sequence number, its digest and the server endpoint) and a
    /// single match links. Comma-separated IP addresses, at most 16; their agent port is
    /// --peer-port's. [file: peers.fallback]
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub peer_fallback: Vec<IpAddr>,
}

impl PeerArgs {
    /// The cross-host flags, for [`config::resolve_peers`].
    fn cli_flags(&self) -> CliFlags {
        CliFlags {
            peer_listen: self.peer_listen,
            peer_secret_file: self.peer_secret_file.clone(),
            peer_port: self.peer_port,
            peer_wait: self.peer_wait,
            peer_fallback: self.peer_fallback.clone(),
            ..CliFlags::default()
        }
    }

    /// The channel's settings, None when off: the flags and `file` resolved by
    /// [`config::resolve_peers`], and the shared secret read.
    pub fn config(&self, file: Option<&ConfigFile>) -> Result<Option<PeerConfig>, String> {
        let sources = Sources {
            cli: self.cli_flags(),
            file,
            ..Sources::default()
        };
        let Some(peers) = config::resolve_peers(&sources).map_err(|e| e.0)? else {
            return Ok(None);
        };
        let mut fallback = peers.fallback.clone();
        fallback.sort_unstable();
        fallback.dedup();
        if fallback.len() > MAX_FALLBACK_PEERS {
            return Err(format!(
                "--peer-fallback: {} addresses, at most {MAX_FALLBACK_PEERS} (each is asked about \
                 every caller whose address has no agent)",
                fallback.len()
            ));
        }
        if let Some(bad) = fallback
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(format!(
                "--peer-fallback: `{bad}` is not an agent's address"
            ));
        }
        let secret = read_secret(&peers.secret_file).map_err(|e| format!("peer secret: {e:#}"))?;
        let mut linker = CrossHostConfig::default();
        if let Some(w) = peers.wait {
            linker.wait_ns = w.as_nanos().min(u128::from(u64::MAX)) as u64;
        }
        // Opened now, before the seccomp allow-list (which refuses netlink sockets); the kernel
        // checks CAP_NET_ADMIN on every lookup too, so the privilege drop keeps it when this
        // table is open (`privdrop::Needs`).
        let nat = match NatTable::open() {
            Ok(t) => Some(Arc::new(Mutex::new(t))),
            Err(e) => {
                log::warn!(
                    "cross-host links: cannot read this host's connection tracking table ({e}); \
                     calls whose source port or address this host rewrites (MASQUERADE, SNAT) \
                     will not be linked"
                );
                None
            }
        };
        Ok(Some(PeerConfig {
            listen: peers.listen,
            peer_port: peers.port,
            secret,
            linker,
            nat,
            fallback,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_keys() {
        let dir = ztrace_e2e::temp::TempDir::new("peer-args").unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "  0123456789abcdef\n").unwrap();
        // Off by default.
        assert!(PeerArgs::default().config(None).unwrap().is_none());
        let mut file = ConfigFile::default();
        let put = |f: &mut ConfigFile, k: &str, v: toml::Value| {
            f.values.insert(k.to_string(), v);
        };
        put(&mut file, "peers.listen", "10.0.0.1:4390".into());
        put(
            &mut file,
            "peers.secret_file",
            secret.display().to_string().into(),
        );
        put(&mut file, "peers.wait", "3s".into());
        let c = PeerArgs::default().config(Some(&file)).unwrap().unwrap();
        assert_eq!(c.listen, "10.0.0.1:4390".parse().unwrap());
        assert_eq!((c.peer_port, c.linker.wait_ns), (4390, 3_000_000_000));
        assert_eq!(c.secret, b"0123456789abcdef");
        // Flags win.
        let flags = PeerArgs {
            peer_port: Some(5000),
            ..Default::default()
        };
        assert_eq!(flags.config(Some(&file)).unwrap().unwrap().peer_port, 5000);
        // Half a configuration is an error, not silently off.
        assert!(flags.config(None).is_err());
        let listen_only = PeerArgs {
            peer_listen: Some("10.0.0.1:1".parse().unwrap()),
            ..Default::default()
        };
        assert!(listen_only.config(None).is_err());
        // Fallback peers: from the file (an array, or a comma-separated string), bounded.
        put(
            &mut file,
            "peers.fallback",
            toml::Value::Array(vec!["10.0.1.2".into(), "10.0.1.1".into()]),
        );
        let c = PeerArgs::default().config(Some(&file)).unwrap().unwrap();
        assert_eq!(
            c.fallback,
            vec![
                "10.0.1.1".parse::<IpAddr>().unwrap(),
                "10.0.1.2".parse().unwrap()
            ]
        );
        let many: Vec<IpAddr> = (1..=17).map(|i| IpAddr::from([10, 0, 1, i])).collect();
        let too_many = PeerArgs {
            peer_fallback: many,
            ..Default::default()
        };
        assert!(
            too_many
                .config(Some(&file))
                .unwrap_err()
                .contains("at most 16")
        );
        put(&mut file, "peers.fallback", "10.0.1.1, nowhere".into());
        assert!(PeerArgs::default().config(Some(&file)).is_err());
        file.values.remove("peers.fallback");
        std::fs::write(&secret, "short").unwrap();
        assert!(PeerArgs::default().config(Some(&file)).is_err());
    }
}
