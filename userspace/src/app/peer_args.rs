//! The settings of cross-host links (`crate::peer`): flags, or file keys under `[peers]` (flags
//! win). Off unless a listen address is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigFile, parse_duration};
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
}

impl PeerArgs {
    /// The channel's settings, None when off.
    pub fn config(&self, file: Option<&ConfigFile>) -> Result<Option<PeerConfig>, String> {
        let mut a = self.clone();
        if let Some(file) = file {
            a.fill_from(file)?;
        }
        let (listen, secret_file) = match (a.peer_listen, &a.peer_secret_file) {
            (Some(l), Some(f)) => (l, f),
            (None, None) if a.peer_port.is_none() && a.peer_wait.is_none() => return Ok(None),
            (Some(_), None) => {
                return Err("--peer-listen needs --peer-secret-file (or peers.secret_file)".into());
            }
            _ => {
                return Err(
                    "cross-host link settings need --peer-listen (or peers.listen)".to_string(),
                );
            }
        };
        let secret = read_secret(secret_file).map_err(|e| format!("peer secret: {e:#}"))?;
        let mut linker = CrossHostConfig::default();
        if let Some(w) = a.peer_wait {
            linker.wait_ns = w.as_nanos().min(u128::from(u64::MAX)) as u64;
        }
        Ok(Some(PeerConfig {
            listen,
            peer_port: a.peer_port.unwrap_or(listen.port()),
            secret,
            linker,
        }))
    }

    /// Settings the flags left open, from the file's `[peers]` table.
    fn fill_from(&mut self, file: &ConfigFile) -> Result<(), String> {
        let text = |key: &str| -> Result<Option<String>, String> {
            match file.get(key) {
                None => Ok(None),
                Some((toml::Value::String(s), _)) => Ok(Some(s.clone())),
                Some((v, origin)) => Err(format!("{origin}: `{v}` is not a string")),
            }
        };
        if self.peer_listen.is_none()
            && let Some(s) = text("peers.listen")?
        {
            let addr = s.parse().map_err(|_| {
                format!("peers.listen: `{s}` is not an address such as 0.0.0.0:4390")
            })?;
            self.peer_listen = Some(addr);
        }
        if self.peer_secret_file.is_none() {
            self.peer_secret_file = text("peers.secret_file")?.map(PathBuf::from);
        }
        if self.peer_wait.is_none()
            && let Some(s) = text("peers.wait")?
        {
            self.peer_wait = Some(parse_duration(&s).map_err(|e| format!("peers.wait: {e}"))?);
        }
        if self.peer_port.is_none()
            && let Some((v, origin)) = file.get("peers.port")
        {
            let port = v
                .as_integer()
                .and_then(|i| u16::try_from(i).ok())
                .ok_or_else(|| format!("{origin}: `{v}` is not a port"))?;
            self.peer_port = Some(port);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_keys() {
        let dir = std::env::temp_dir().join(format!("ztrace-peer-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
        std::fs::write(&secret, "short").unwrap();
        assert!(PeerArgs::default().config(Some(&file)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
