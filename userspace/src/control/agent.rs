//! The OpAMP agent's side of the conversation, without I/O: which `AgentToServer` to send next
//! and what a `ServerToAgent` asks for.
//!
//! The first message after (re)connecting carries the full state — AgentDescription,
//! capabilities, health, effective configuration and the last remote-config status — and later
//! ones only what changed, as the specification allows; a server that lost track (it sets
//! `ReportFullState`) gets the full state again. A remote configuration is handed out once per
//! hash: the server keeps offering it until the status reports that hash.

use ztrace_opamp::{
    AgentCapabilities, AgentConfigFile, AgentConfigMap, AgentDescription, AgentToServer, AnyValue,
    ComponentHealth, EffectiveConfig, KeyValue, RemoteConfigStatus, RemoteConfigStatuses,
    ServerErrorResponseType, ServerToAgent, ServerToAgentFlags, any_value, bits,
    server_error_response,
};

/// What ztrace reports it can do.
pub const CAPABILITIES: [AgentCapabilities; 5] = [
    AgentCapabilities::ReportsStatus,
    AgentCapabilities::AcceptsRemoteConfig,
    AgentCapabilities::ReportsEffectiveConfig,
    AgentCapabilities::ReportsHealth,
    AgentCapabilities::ReportsRemoteConfig,
];

/// The MIME type of ztrace's configuration, in `AgentConfigFile.content_type`.
pub const CONTENT_TYPE: &str = "application/toml";

/// Who this agent is, for AgentDescription.
#[derive(Clone, Debug)]
pub struct Identity {
    pub instance_uid: [u8; 16],
    pub host_name: String,
    pub os_version: String,
}

/// A remote configuration to validate and apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub hash: Vec<u8>,
    /// The TOML text, or why the offer cannot be read at all (reported FAILED as is).
    pub text: Result<String, String>,
}

/// What the server said besides offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub offer: Option<Offer>,
    /// The server asked to wait before the next message (ServerErrorResponse UNAVAILABLE).
    pub retry_after: Option<std::time::Duration>,
    /// A server error to log (BAD_REQUEST, …).
    pub error: Option<String>,
    /// The server gave this agent a new instance uid (to persist).
    pub new_uid: Option<[u8; 16]>,
}

pub struct Agent {
    id: Identity,
    seq: u64,
    effective: String,
    health: ComponentHealth,
    /// The daemon's own health text, and what the last applied remote configuration put in force
    /// that the server should see in it (e.g. `tail sampling off`); reported as `status; note`.
    base_status: String,
    note: String,
    status: Option<RemoteConfigStatus>,
    /// Hashes already handed out (the one being applied, the last decided).
    seen_hash: Option<Vec<u8>>,
    full_state: bool,
    dirty_effective: bool,
    dirty_health: bool,
    dirty_status: bool,
}

impl Agent {
    pub fn new(id: Identity, start_unix_ns: u64, effective: String) -> Agent {
        Agent {
            id,
            seq: 0,
            effective,
            health: ComponentHealth {
                healthy: true,
                start_time_unix_nano: start_unix_ns,
                status: "running".into(),
                ..ComponentHealth::default()
            },
            base_status: "running".into(),
            note: String::new(),
            status: None,
            seen_hash: None,
            full_state: true,
            dirty_effective: true,
            dirty_health: true,
            dirty_status: true,
        }
    }

    pub fn instance_uid(&self) -> [u8; 16] {
        self.id.instance_uid
    }

    /// The connection was lost: the next message carries everything again (the server may have
    /// restarted and forgotten this agent).
    pub fn reconnecting(&mut self) {
        self.full_state = true;
    }

    /// Health as the daemon sees it (`status` is a short human text), at `now_unix_ns`.
    pub fn set_health(&mut self, healthy: bool, status: String, error: String, now_unix_ns: u64) {
        self.base_status = status;
        let status = self.status_text();
        if self.health.healthy != healthy
            || self.health.status != status
            || self.health.last_error != error
        {
            self.health.healthy = healthy;
            self.health.status = status;
            self.health.last_error = error;
            self.health.status_time_unix_nano = now_unix_ns;
            self.dirty_health = true;
        }
    }

    /// What a remote configuration put in force, told with the health from now on (empty:
    /// nothing to tell).
    pub fn set_note(&mut self, note: String, now_unix_ns: u64) {
        self.note = note;
        let (healthy, error) = (self.health.healthy, self.health.last_error.clone());
        self.set_health(healthy, self.base_status.clone(), error, now_unix_ns);
    }

    fn status_text(&self) -> String {
        if self.note.is_empty() {
            self.base_status.clone()
        } else {
            format!("{}; {}", self.base_status, self.note)
        }
    }

    /// The offer with `hash` was applied; `effective` is the configuration now in force.
    pub fn applied(&mut self, hash: Vec<u8>, effective: String) {
        self.set_status(hash, RemoteConfigStatuses::Applied, String::new());
        if effective != self.effective {
            self.effective = effective;
            self.dirty_effective = true;
        }
    }

    /// The offer with `hash` was refused; the configuration in force is unchanged.
    pub fn failed(&mut self, hash: Vec<u8>, error: String) {
        self.set_status(hash, RemoteConfigStatuses::Failed, error);
    }

    fn set_status(&mut self, hash: Vec<u8>, status: RemoteConfigStatuses, error: String) {
        self.status = Some(RemoteConfigStatus {
            last_remote_config_hash: hash,
            status: status as i32,
            error_message: error,
        });
        self.dirty_status = true;
    }

    /// The next message to send.
    pub fn message(&mut self) -> AgentToServer {
        let full = std::mem::take(&mut self.full_state);
        let mut m = AgentToServer {
            instance_uid: self.id.instance_uid.to_vec(),
            sequence_num: self.seq,
            capabilities: bits(&CAPABILITIES),
            ..AgentToServer::default()
        };
        self.seq += 1;
        if full {
            m.agent_description = Some(self.description());
        }
        if std::mem::take(&mut self.dirty_health) | full {
            m.health = Some(self.health.clone());
        }
        if std::mem::take(&mut self.dirty_effective) | full {
            m.effective_config = Some(EffectiveConfig {
                config_map: Some(config_map(&self.effective)),
            });
        }
        if std::mem::take(&mut self.dirty_status) | full {
            m.remote_config_status = self.status.clone();
        }
        m
    }

    /// The last message, sent on the way out.
    pub fn goodbye(&mut self) -> AgentToServer {
        let mut m = self.message();
        m.agent_disconnect = Some(Default::default());
        m
    }

    /// Reads the server's answer.
    pub fn on_response(&mut self, r: ServerToAgent) -> Reply {
        let mut reply = Reply::default();
        if let Some(e) = r.error_response {
            match ServerErrorResponseType::try_from(e.r#type) {
                Ok(ServerErrorResponseType::Unavailable) => {
                    reply.retry_after = Some(match e.details {
                        Some(server_error_response::Details::RetryInfo(i)) => {
                            std::time::Duration::from_nanos(i.retry_after_nanoseconds)
                        }
                        None => std::time::Duration::ZERO,
                    });
                    reply.error = Some(format!("server unavailable: {}", e.error_message));
                }
                _ => reply.error = Some(format!("server error: {}", e.error_message)),
            }
            // An error response carries nothing else; the server has not taken this message in.
            self.full_state = true;
            return reply;
        }
        if r.flags & ServerToAgentFlags::ReportFullState as u64 != 0 {
            self.full_state = true;
        }
        if let Some(id) = r.agent_identification
            && let Ok(uid) = <[u8; 16]>::try_from(id.new_instance_uid.as_slice())
        {
            self.id.instance_uid = uid;
            reply.new_uid = Some(uid);
        }
        if let Some(rc) = r.remote_config
            && self.seen_hash.as_ref() != Some(&rc.config_hash)
        {
            self.seen_hash = Some(rc.config_hash.clone());
            reply.offer = Some(Offer {
                hash: rc.config_hash,
                text: config_text(rc.config.unwrap_or_default()),
            });
        }
        reply
    }

    fn description(&self) -> AgentDescription {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        };
        use opentelemetry_semantic_conventions::attribute as a;
        AgentDescription {
            identifying_attributes: vec![
                kv(a::SERVICE_NAME, "ztrace"),
                kv(a::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
                kv(a::SERVICE_INSTANCE_ID, &uuid_text(&self.id.instance_uid)),
            ],
            non_identifying_attributes: vec![
                kv(a::HOST_NAME, &self.id.host_name),
                kv(a::OS_TYPE, "linux"),
                kv(a::OS_VERSION, &self.id.os_version),
                kv(a::HOST_ARCH, std::env::consts::ARCH),
            ],
        }
    }
}

fn config_map(toml: &str) -> AgentConfigMap {
    let mut m = AgentConfigMap::default();
    m.config_map.insert(
        String::new(),
        AgentConfigFile {
            body: toml.as_bytes().to_vec(),
            content_type: CONTENT_TYPE.into(),
        },
    );
    m
}

/// The one TOML file of an offer (an empty map: no remote layer).
fn config_text(map: AgentConfigMap) -> Result<String, String> {
    let mut files: Vec<_> = map.config_map.into_iter().collect();
    match files.len() {
        0 => Ok(String::new()),
        1 => {
            let (name, file) = files.remove(0);
            String::from_utf8(file.body).map_err(|_| {
                format!("the remote configuration `{name}` is not UTF-8 text (ztrace expects TOML)")
            })
        }
        n => Err(format!(
            "the remote configuration has {n} files; ztrace expects one TOML file (the same as its config file)"
        )),
    }
}

/// `0190a4c2-…`: the uid as `service.instance.id`.
pub fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztrace_opamp::{AgentIdentification, AgentRemoteConfig, RetryInfo, ServerErrorResponse};

    fn agent() -> Agent {
        Agent::new(
            Identity {
                instance_uid: [7; 16],
                host_name: "web-1".into(),
                os_version: "6.1.0".into(),
            },
            1_700_000_000_000_000_000,
            "[traces]\nsampler = \"always_on\"\n".into(),
        )
    }

    fn offer(hash: &[u8], body: &str) -> ServerToAgent {
        let mut m = AgentConfigMap::default();
        m.config_map.insert(
            "ztrace.toml".into(),
            AgentConfigFile {
                body: body.as_bytes().to_vec(),
                content_type: CONTENT_TYPE.into(),
            },
        );
        ServerToAgent {
            remote_config: Some(AgentRemoteConfig {
                config: Some(m),
                config_hash: hash.to_vec(),
            }),
            ..ServerToAgent::default()
        }
    }

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        kvs.iter()
            .find(|k| k.key == key)
            .and_then(|k| match k.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
    }

    #[test]
    fn full_state_first_then_only_changes() {
        let mut a = agent();
        let first = a.message();
        assert_eq!(first.sequence_num, 0);
        assert_eq!(first.instance_uid, vec![7; 16]);
        let d = first.agent_description.expect("description");
        assert_eq!(
            attr(&d.identifying_attributes, "service.name"),
            Some("ztrace")
        );
        assert_eq!(
            attr(&d.non_identifying_attributes, "host.name"),
            Some("web-1")
        );
        assert_eq!(
            attr(&d.non_identifying_attributes, "os.type"),
            Some("linux")
        );
        let caps = first.capabilities;
        for c in CAPABILITIES {
            assert_ne!(caps & c as u64, 0, "{c:?}");
        }
        assert_eq!(caps & AgentCapabilities::AcceptsPackages as u64, 0);
        let h = first.health.expect("health");
        assert!(h.healthy);
        assert_eq!(h.start_time_unix_nano, 1_700_000_000_000_000_000);
        let body = &first
            .effective_config
            .unwrap()
            .config_map
            .unwrap()
            .config_map[""]
            .body;
        assert!(String::from_utf8_lossy(body).contains("always_on"));
        // Nothing changed: a bare status message.
        let second = a.message();
        assert_eq!(second.sequence_num, 1);
        assert!(second.agent_description.is_none() && second.health.is_none());
        assert!(second.effective_config.is_none() && second.remote_config_status.is_none());
        // Health is sent when it changes, only then.
        a.set_health(
            false,
            "tracing 1 process(es)".into(),
            "export failed".into(),
            5,
        );
        let h = a.message().health.expect("changed health");
        assert!(!h.healthy && h.last_error == "export failed" && h.status_time_unix_nano == 5);
        a.set_health(
            false,
            "tracing 1 process(es)".into(),
            "export failed".into(),
            6,
        );
        assert!(a.message().health.is_none());
        // The server lost track: everything again.
        a.on_response(ServerToAgent {
            flags: ServerToAgentFlags::ReportFullState as u64,
            ..ServerToAgent::default()
        });
        assert!(a.message().agent_description.is_some());
        // So does a reconnection.
        a.reconnecting();
        assert!(a.message().effective_config.is_some());
        assert!(a.message().effective_config.is_none());
    }

    /// What a remote configuration put in force (tail sampling off) is told with the health,
    /// after the daemon's own text, and stays there as that text changes.
    #[test]
    fn the_health_says_what_a_remote_configuration_put_in_force() {
        let mut a = agent();
        a.set_health(true, "tracing 1 process(es)".into(), String::new(), 1);
        a.message();
        a.set_note("tail sampling off".into(), 2);
        let h = a.message().health.expect("changed health");
        assert_eq!(h.status, "tracing 1 process(es); tail sampling off");
        assert_eq!(h.status_time_unix_nano, 2);
        a.set_health(true, "tracing 2 process(es)".into(), String::new(), 3);
        let h = a.message().health.expect("changed health");
        assert_eq!(h.status, "tracing 2 process(es); tail sampling off");
    }

    #[test]
    fn offers_once_per_hash_and_statuses() {
        let mut a = agent();
        a.message();
        let r = a.on_response(offer(b"h1", "[traces]\nsampler = \"always_off\"\n"));
        let o = r.offer.expect("offer");
        assert_eq!(o.hash, b"h1");
        assert_eq!(
            o.text.as_deref(),
            Ok("[traces]\nsampler = \"always_off\"\n")
        );
        // Offered again while being applied: not handed out twice.
        assert_eq!(a.on_response(offer(b"h1", "x")).offer, None);
        a.applied(b"h1".to_vec(), "new".into());
        let m = a.message();
        let s = m.remote_config_status.expect("status");
        assert_eq!(s.status, RemoteConfigStatuses::Applied as i32);
        assert_eq!(s.last_remote_config_hash, b"h1");
        assert!(m.effective_config.is_some());
        // A broken one: FAILED, and the effective config is not re-sent (unchanged).
        let o = a.on_response(offer(b"h2", "[")).offer.unwrap();
        a.failed(o.hash, "not valid TOML".into());
        let m = a.message();
        let s = m.remote_config_status.unwrap();
        assert_eq!(s.status, RemoteConfigStatuses::Failed as i32);
        assert_eq!(s.error_message, "not valid TOML");
        assert!(m.effective_config.is_none());
        // Two files, or bytes that are not text, are refused as such.
        let mut two = offer(b"h3", "a");
        if let Some(rc) = &mut two.remote_config {
            let map = rc.config.as_mut().unwrap();
            map.config_map
                .insert("b".into(), AgentConfigFile::default());
        }
        let e = a.on_response(two).offer.unwrap().text.unwrap_err();
        assert!(e.contains("2 files"), "{e}");
    }

    #[test]
    fn errors_new_uid_and_goodbye() {
        let mut a = agent();
        a.message();
        let r = a.on_response(ServerToAgent {
            error_response: Some(ServerErrorResponse {
                r#type: ServerErrorResponseType::Unavailable as i32,
                error_message: "busy".into(),
                details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: 3_000_000_000,
                })),
            }),
            ..ServerToAgent::default()
        });
        assert_eq!(r.retry_after, Some(std::time::Duration::from_secs(3)));
        assert!(a.message().agent_description.is_some(), "resent in full");
        let r = a.on_response(ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: vec![9; 16],
            }),
            ..ServerToAgent::default()
        });
        assert_eq!(r.new_uid, Some([9; 16]));
        assert_eq!(a.message().instance_uid, vec![9; 16]);
        assert!(a.goodbye().agent_disconnect.is_some());
        assert_eq!(uuid_text(&[0xab; 16]).len(), 36);
    }
}
