//! `[opamp]`: remote management over OpAMP — where the server is, how to reach it, and the local
//! allow-list of what a remote configuration may change. Also which part of the configuration
//! ([`Section`]) every file key belongs to, which the allow-list is written in.
//!
//! `[opamp]` itself (endpoint, credentials, allow-list) comes from the local file and the flags
//! only: a remote configuration that touches it is refused (see `control::remote`).

use std::path::PathBuf;
use std::time::Duration;

use super::defs::{Raw, Tls};
use super::error::{ConfigError, Origin};
use super::file::{ConfigFile, raw_of_toml};
use super::parse::{duration, endpoint, headers, read_pem, string};

/// A part of the configuration a remote server may be allowed to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// Head sampling (`traces.sampler`, `traces.sampler_arg`) and tail sampling
    /// (`[tail_sampling]`).
    Sampling,
    /// OTTL transform and filter statements.
    Rules,
    /// What to trace (`target.pids`, `[[target.select]]`): starts tracing new processes, so a
    /// host's operator must opt in.
    Targets,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Sampling, Section::Rules, Section::Targets];

    pub fn name(self) -> &'static str {
        match self {
            Section::Sampling => "sampling",
            Section::Rules => "rules",
            Section::Targets => "targets",
        }
    }

    fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The section of a file key; None for keys no remote configuration may change at run time
    /// (exporter endpoints, privacy opt-ins, `[opamp]`, …).
    pub fn of_key(key: &str) -> Option<Section> {
        if matches!(key, "traces.sampler" | "traces.sampler_arg")
            || key.starts_with("tail_sampling.")
        {
            return Some(Section::Sampling);
        }
        if matches!(key, "target.pids" | "target.select") {
            return Some(Section::Targets);
        }
        if RULE_KEY_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return Some(Section::Rules);
        }
        None
    }
}

/// File keys of the OTTL rules (`[transform]`, `[filter]`) start with one of these.
pub const RULE_KEY_PREFIXES: [&str; 2] = ["transform.", "filter."];

/// What a remote server may change when nothing says otherwise: sampling and rules, never what
/// is traced.
pub const DEFAULT_ALLOW: [Section; 2] = [Section::Sampling, Section::Rules];
/// The specification's suggested polling interval for the plain-HTTP transport.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Where the instance uid is kept (the systemd unit's `StateDirectory=ztrace`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ztrace";

/// `[opamp]`, resolved: present when an endpoint is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opamp {
    /// `http(s)://host:port/v1/opamp`: OpAMP over plain HTTP, polled.
    pub endpoint: http::Uri,
    /// Sent with every request (e.g. `authorization = "Bearer …"`).
    pub headers: Vec<(String, String)>,
    pub tls: Tls,
    pub poll_interval: Duration,
    /// Where the instance uid is kept across restarts.
    pub state_dir: PathBuf,
    /// What a remote configuration may change.
    pub allow: Vec<Section>,
}

/// The `--opamp-*` flags (each also a `ZTRACE_OPAMP_*` variable), as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpampFlags {
    pub endpoint: Option<String>,
    pub headers: Option<String>,
    pub allow: Option<String>,
    pub poll_interval: Option<Duration>,
    pub state_dir: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
}

/// `[opamp]` from the flags (first) and the file; None when no endpoint is configured.
pub fn resolve_opamp(
    flags: &OpampFlags,
    file: Option<&ConfigFile>,
) -> Result<Option<Opamp>, ConfigError> {
    let get = |key: &'static str, flag: Option<String>, name: &'static str| {
        if let Some(v) = flag {
            return Ok(Some((Raw::Str(v), Origin::Flag(name))));
        }
        match file.and_then(|f| f.get(key)) {
            Some((v, origin)) => raw_of_toml(v, &origin).map(|r| Some((r, origin))),
            None => Ok::<_, ConfigError>(None),
        }
    };
    let path_flag = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    let Some((raw, origin)) = get("opamp.endpoint", flags.endpoint.clone(), "--opamp-endpoint")?
    else {
        return Ok(None);
    };
    // The OTLP endpoint rules (http/https, a host, no query); the message is about OpAMP.
    let endpoint = endpoint(&raw, &origin).map_err(|e| {
        ConfigError(e.0.replace("OTLP endpoint", "OpAMP endpoint").replace(
            "http://localhost:4317",
            "https://fleet.example:4320/v1/opamp",
        ))
    })?;
    let headers = match get("opamp.headers", flags.headers.clone(), "--opamp-headers")? {
        Some((raw, origin)) => headers(&raw, &origin)?,
        None => Vec::new(),
    };
    let mut tls = Tls::default();
    if let Some((raw, origin)) = get(
        "opamp.certificate",
        path_flag(&flags.certificate),
        "--opamp-certificate",
    )? {
        tls.ca_pem = Some(read_pem(&raw, &origin, "CA certificate")?);
    }
    match (
        get("opamp.client_certificate", None, "")?,
        get("opamp.client_key", None, "")?,
    ) {
        (Some((c, co)), Some((k, ko))) => {
            tls.client_identity = Some((
                read_pem(&c, &co, "client certificate")?,
                read_pem(&k, &ko, "client key")?,
            ));
        }
        (Some((_, origin)), None) | (None, Some((_, origin))) => {
            return Err(ConfigError(format!(
                "{origin}: mutual TLS needs both opamp.client_certificate and opamp.client_key"
            )));
        }
        (None, None) => {}
    }
    let poll_interval = match flags.poll_interval {
        Some(d) => d,
        None => match get("opamp.poll_interval", None, "")? {
            Some((raw, origin)) => duration(&raw, &origin)?,
            None => DEFAULT_POLL_INTERVAL,
        },
    };
    if poll_interval.is_zero() {
        return Err(ConfigError(
            "opamp.poll_interval must be more than 0".into(),
        ));
    }
    let state_dir = match get(
        "opamp.state_dir",
        path_flag(&flags.state_dir),
        "--opamp-state-dir",
    )? {
        Some((raw, origin)) => PathBuf::from(string(&raw, &origin)?),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let allow = match (&flags.allow, file.and_then(|f| f.get("opamp.allow"))) {
        (Some(s), _) => allow_list(
            s.split(',').map(str::trim).filter(|s| !s.is_empty()),
            &Origin::Flag("--opamp-allow"),
        )?,
        (None, Some((toml::Value::Array(items), origin))) => {
            let mut names = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) => names.push(s),
                    None => {
                        return Err(ConfigError(format!(
                            "{origin}: must be a list of strings, e.g. [\"sampling\", \"rules\"]"
                        )));
                    }
                }
            }
            allow_list(names.into_iter(), &origin)?
        }
        (None, Some((_, origin))) => {
            return Err(ConfigError(format!(
                "{origin}: must be a list, e.g. [\"sampling\", \"rules\"]"
            )));
        }
        (None, None) => DEFAULT_ALLOW.to_vec(),
    };
    Ok(Some(Opamp {
        endpoint,
        headers,
        tls,
        poll_interval,
        state_dir,
        allow,
    }))
}

fn allow_list<'a>(
    names: impl Iterator<Item = &'a str>,
    origin: &Origin,
) -> Result<Vec<Section>, ConfigError> {
    let mut out = Vec::new();
    for name in names {
        let Some(s) = Section::parse(name) else {
            return Err(ConfigError(format!(
                "{origin}: `{name}` is not a part a remote server may be allowed to change; use any of sampling, rules, targets (or an empty list)"
            )));
        };
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(text, Path::new("ztrace.toml")).unwrap()
    }

    #[test]
    fn off_without_an_endpoint_and_defaults_with_one() {
        assert_eq!(resolve_opamp(&OpampFlags::default(), None), Ok(None));
        let o = resolve_opamp(
            &OpampFlags::default(),
            Some(&file(
                "[opamp]\nendpoint = \"http://fleet:4320/v1/opamp\"\n",
            )),
        )
        .unwrap()
        .unwrap();
        assert_eq!(o.endpoint.to_string(), "http://fleet:4320/v1/opamp");
        assert_eq!(o.allow, DEFAULT_ALLOW.to_vec());
        assert_eq!(o.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(o.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn flags_win_and_the_allow_list_is_checked() {
        let f = file(
            "[opamp]\nendpoint = \"http://a:1\"\nallow = [\"targets\"]\npoll_interval = \"5s\"\nheaders = { authorization = \"Bearer x\" }\n",
        );
        let o = resolve_opamp(&OpampFlags::default(), Some(&f))
            .unwrap()
            .unwrap();
        assert_eq!(o.allow, vec![Section::Targets]);
        assert_eq!(o.poll_interval, Duration::from_secs(5));
        assert_eq!(o.headers, vec![("authorization".into(), "Bearer x".into())]);
        let flags = OpampFlags {
            endpoint: Some("https://b:2/v1/opamp".into()),
            allow: Some("sampling, targets".into()),
            ..OpampFlags::default()
        };
        let o = resolve_opamp(&flags, Some(&f)).unwrap().unwrap();
        assert_eq!(o.endpoint.to_string(), "https://b:2/v1/opamp");
        assert_eq!(o.allow, vec![Section::Sampling, Section::Targets]);
        let none = OpampFlags {
            allow: Some(String::new()),
            ..flags.clone()
        };
        assert_eq!(resolve_opamp(&none, None).unwrap().unwrap().allow, vec![]);
        let bad = OpampFlags {
            allow: Some("sampling,exporters".into()),
            ..flags
        };
        let e = resolve_opamp(&bad, None).unwrap_err().0;
        assert!(
            e.contains("--opamp-allow") && e.contains("`exporters`"),
            "{e}"
        );
        let e = resolve_opamp(
            &OpampFlags::default(),
            Some(&file("[opamp]\nendpoint = \"ftp://x\"\n")),
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("opamp.endpoint") && e.contains("OpAMP endpoint"),
            "{e}"
        );
    }

    #[test]
    fn sections_of_keys() {
        assert_eq!(
            Section::of_key("traces.sampler_arg"),
            Some(Section::Sampling)
        );
        assert_eq!(
            Section::of_key("tail_sampling.policies"),
            Some(Section::Sampling)
        );
        assert_eq!(Section::of_key("target.select"), Some(Section::Targets));
        assert_eq!(Section::of_key("otlp.endpoint"), None);
        assert_eq!(Section::of_key("opamp.allow"), None);
        assert_eq!(Section::of_key("privacy.command_args"), None);
    }
}
