//! Export configuration: one resolved [`Config`] from command-line flags, an optional TOML config
//! file and the OpenTelemetry environment variables, following the OpenTelemetry specification's
//! "OTLP Exporter Configuration" and "SDK environment variables" pages, so that ztrace can be
//! pointed at a collector exactly like any other OpenTelemetry component.
//!
//! Precedence, most specific source first: **flag > config file > per-signal variable > generic
//! variable > default**. Within the flags and within the file, a per-signal setting
//! (`--otlp-traces-endpoint`, `[otlp.traces] endpoint`) beats the generic one.
//!
//! This module owns the names (flag, file key, variable) of every setting and turns a bad value
//! into a one-line [`ConfigError`] that names where the value came from. It does no I/O except
//! reading the config file and the TLS files it is pointed at (so that a missing certificate is a
//! start-up error, not a failed export an hour later). Resolution takes its inputs as maps, never
//! the process environment, so it is unit-tested table by table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::defs::{
    Batching, CliFlags, Compression, Config, DEFAULT_LOG_BATCHING, DEFAULT_MAX_SERIES,
    DEFAULT_MAX_SOCKETS, DEFAULT_PARSER_BUDGET, DEFAULT_PAYLOAD_CAP, DEFAULT_SPAN_BATCHING,
    DEFAULT_TIMEOUT, MAX_MAX_SOCKETS, MAX_PAYLOAD_CAP, MAX_SERIES_LIMIT, MIN_MAX_SOCKETS,
    OtlpTarget, Peers, PidSpec, Privacy, Protocol, Raw, RootSampler, SELECTOR_KINDS, Sampler,
    SelectSpec, Signal, Target, Temporality, Terminal, Tls, flag_name,
};
use super::env::env_name;
use super::error::{ConfigError, Origin, bad};
use super::file::{ConfigFile, raw_of_toml};
use super::parse::{
    append_path, boolean, compression, count, default_endpoint, duration, endpoint, file_string,
    headers, key_value_list, parse_duration, parse_pid_spec, port, protocol, ratio, read_pem,
    socket_addr, string,
};

// ---------------------------------------------------------------------------------------------
// Resolution.

/// The inputs of resolution.
#[derive(Default)]
pub struct Sources<'a> {
    /// Flags given on the command line, by file key (see [`FLAGS`]).
    pub flags: HashMap<&'static str, String>,
    /// The typed flags: what to trace, terminal output, series limit.
    pub cli: CliFlags,
    pub file: Option<&'a ConfigFile>,
    /// The environment (only `OTEL_*` variables matter).
    pub env: HashMap<String, String>,
}

impl Sources<'_> {
    fn flag(&self, key: &str) -> Option<(Raw, Origin)> {
        let name = flag_name(key)?;
        self.flags
            .get(key)
            .map(|v| (Raw::Str(v.clone()), Origin::Flag(name)))
    }

    fn file(&self, key: &str) -> Result<Option<(Raw, Origin)>, ConfigError> {
        match self.file.and_then(|f| f.get(key)) {
            Some((v, origin)) => Ok(Some((raw_of_toml(v, &origin)?, origin))),
            None => Ok(None),
        }
    }

    /// Empty variables count as unset, per the specification.
    fn env(&self, key: &str) -> Option<(Raw, Origin)> {
        let name = env_name(key)?;
        let v = self.env.get(&name)?;
        if v.trim().is_empty() {
            return None;
        }
        Some((Raw::Str(v.clone()), Origin::Env(name)))
    }

    /// A setting that is not per signal: flag, file, environment.
    fn global(&self, key: &str) -> Result<Option<(Raw, Origin)>, ConfigError> {
        if let Some(v) = self.flag(key) {
            return Ok(Some(v));
        }
        if let Some(v) = self.file(key)? {
            return Ok(Some(v));
        }
        Ok(self.env(key))
    }

    /// A per-signal setting, and whether the generic variant supplied it.
    fn for_signal(
        &self,
        signal: Signal,
        name: &str,
    ) -> Result<Option<(Raw, Origin, bool)>, ConfigError> {
        let specific = format!("otlp.{}.{name}", signal.key());
        let generic = format!("otlp.{name}");
        let tag = |v: Option<(Raw, Origin)>, generic: bool| v.map(|(r, o)| (r, o, generic));
        if let Some(v) = tag(self.flag(&specific), false).or(tag(self.flag(&generic), true)) {
            return Ok(Some(v));
        }
        if let Some(v) = tag(self.file(&specific)?, false).or(tag(self.file(&generic)?, true)) {
            return Ok(Some(v));
        }
        Ok(tag(self.env(&specific), false).or(tag(self.env(&generic), true)))
    }
}

fn signal_target(src: &Sources<'_>, signal: Signal) -> Result<OtlpTarget, ConfigError> {
    let protocol = match src.for_signal(signal, "protocol")? {
        Some((raw, origin, _)) => protocol(&raw, &origin)?,
        None => Protocol::Grpc,
    };
    let endpoint = match src.for_signal(signal, "endpoint")? {
        Some((raw, origin, generic)) => {
            let uri = endpoint(&raw, &origin)?;
            if generic && protocol == Protocol::HttpProtobuf {
                append_path(&uri, signal.http_path())
            } else {
                uri
            }
        }
        None => default_endpoint(protocol, signal),
    };
    let headers = match src.for_signal(signal, "headers")? {
        Some((raw, origin, _)) => headers(&raw, &origin)?,
        None => Vec::new(),
    };
    let compression = match src.for_signal(signal, "compression")? {
        Some((raw, origin, _)) => compression(&raw, &origin)?,
        None => Compression::None,
    };
    let timeout = match src.for_signal(signal, "timeout")? {
        Some((raw, origin, _)) => duration(&raw, &origin)?,
        None => DEFAULT_TIMEOUT,
    };
    // Only meaningful for scheme-less gRPC endpoints, which ztrace rejects (a scheme says it
    // all); still validated so that a typo is not silently ignored.
    if let Some((raw, origin, _)) = src.for_signal(signal, "insecure")? {
        boolean(&raw, &origin)?;
    }
    let mut tls = Tls::default();
    if let Some((raw, origin, _)) = src.for_signal(signal, "certificate")? {
        tls.ca_pem = Some(read_pem(&raw, &origin, "CA certificate")?);
    }
    let cert = src.for_signal(signal, "client_certificate")?;
    let key = src.for_signal(signal, "client_key")?;
    match (cert, key) {
        (Some((c, co, _)), Some((k, ko, _))) => {
            tls.client_identity = Some((
                read_pem(&c, &co, "client certificate")?,
                read_pem(&k, &ko, "client key")?,
            ));
        }
        (Some((_, origin, _)), None) | (None, Some((_, origin, _))) => {
            return Err(ConfigError(format!(
                "{origin}: mutual TLS needs both a client certificate and a client key"
            )));
        }
        (None, None) => {}
    }
    if endpoint.scheme_str() == Some("http")
        && (tls.ca_pem.is_some() || tls.client_identity.is_some())
    {
        log::warn!(
            "TLS files are configured for {} but its endpoint {endpoint} is plain http; they are not used",
            signal.key()
        );
    }
    Ok(OtlpTarget {
        signal,
        protocol,
        endpoint,
        headers,
        compression,
        timeout,
        tls,
    })
}

/// Whether any endpoint (generic or for `signal`) is configured anywhere.
fn endpoint_configured(src: &Sources<'_>, signal: Signal) -> Result<bool, ConfigError> {
    Ok(src.for_signal(signal, "endpoint")?.is_some())
}

fn sampler(src: &Sources<'_>) -> Result<Sampler, ConfigError> {
    let Some((raw, origin)) = src.global("traces.sampler")? else {
        return Ok(Sampler::ParentBased(RootSampler::AlwaysOn));
    };
    let arg = src.global("traces.sampler_arg")?;
    Ok(match string(&raw, &origin)?.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio(arg)?),
        "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(RootSampler::TraceIdRatio(ratio(arg)?)),
        _ => {
            return Err(bad(
                &origin,
                &raw,
                "is not a supported sampler; use always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

fn batching(src: &Sources<'_>, table: &str, default: Batching) -> Result<Batching, ConfigError> {
    let mut b = default;
    let queue = src.global(&format!("{table}.max_queue_size"))?;
    if let Some((raw, origin)) = &queue {
        b.max_queue = count(raw, origin)?;
    }
    let batch = src.global(&format!("{table}.max_export_batch_size"))?;
    if let Some((raw, origin)) = &batch {
        b.max_batch = count(raw, origin)?;
        if b.max_batch > b.max_queue {
            let queue_name = queue
                .as_ref()
                .map(|(_, o)| o.to_string())
                .unwrap_or_else(|| format!("the default queue size {}", b.max_queue));
            return Err(ConfigError(format!(
                "{origin}: the batch size {} must not exceed {queue_name} ({})",
                b.max_batch, b.max_queue
            )));
        }
    }
    b.max_batch = b.max_batch.min(b.max_queue);
    if let Some((raw, origin)) = src.global(&format!("{table}.schedule_delay"))? {
        b.delay = duration(&raw, &origin)?;
    }
    Ok(b)
}

/// Resolves every export setting.
pub fn resolve(src: &Sources<'_>) -> Result<Config, ConfigError> {
    let mut targets = Vec::new();
    for signal in Signal::ALL {
        // Validate every signal's settings even when it is not exported: a typo anywhere is an
        // error, not a surprise later.
        let target = signal_target(src, signal)?;
        targets.push(endpoint_configured(src, signal)?.then_some(target));
    }
    let logs = targets.pop().flatten();
    let metrics = targets.pop().flatten();
    let traces = targets.pop().flatten();

    let mut resource_attributes = match src.global("resource.attributes")? {
        Some((raw, origin)) => key_value_list(&raw, &origin, true)?,
        None => Vec::new(),
    };
    let from_attributes = resource_attributes
        .iter()
        .rev()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    resource_attributes.retain(|(k, _)| k != "service.name");
    let service_name = match src.global("resource.service_name")? {
        Some((raw, origin)) => Some(string(&raw, &origin)?),
        None => from_attributes,
    }
    .filter(|s| !s.is_empty());

    let temporality = match src.global("metrics.temporality_preference")? {
        Some((raw, origin)) => match string(&raw, &origin)?.to_ascii_lowercase().as_str() {
            "cumulative" => Temporality::Cumulative,
            "delta" => Temporality::Delta,
            "lowmemory" => Temporality::LowMemory,
            _ => {
                return Err(bad(
                    &origin,
                    &raw,
                    "is not a temporality preference; use cumulative, delta or lowmemory",
                ));
            }
        },
        None => Temporality::Cumulative,
    };
    let metric_export_interval = match src.global("metrics.export_interval")? {
        Some((raw, origin)) => duration(&raw, &origin)?,
        None => Duration::from_secs(60),
    };
    let metric_export_timeout = match src.global("metrics.export_timeout")? {
        Some((raw, origin)) => duration(&raw, &origin)?,
        None => Duration::from_secs(30),
    };
    let sampler = sampler(src)?;
    let span_batching = batching(src, "traces", DEFAULT_SPAN_BATCHING)?;
    let log_batching = batching(src, "logs", DEFAULT_LOG_BATCHING)?;
    // After every OTLP setting, in the order the command line used to check them, so that the
    // first error reported stays the same.
    let terminal = terminal(src)?;
    let db_query_text = src.cli.db_query_text || file_bool(src.file, "traces.db_query_text")?;
    let metric_max_series = max_series(src)?;
    let privacy = privacy(src)?;
    let parser_budget = parser_budget(src)?;
    Ok(Config {
        traces,
        metrics,
        logs,
        service_name,
        resource_attributes,
        sampler,
        span_batching,
        log_batching,
        metric_export_interval,
        metric_export_timeout,
        temporality,
        terminal,
        db_query_text,
        metric_max_series,
        privacy,
        rules: super::rules::resolve_rules(src.file)?,
        parser_budget,
    })
}

/// `memory.parser_budget`: a byte count, or a size with a unit (`"64MiB"`).
fn parser_budget(src: &Sources<'_>) -> Result<usize, ConfigError> {
    if let Some(n) = src.cli.parser_budget {
        return Ok(n);
    }
    match src.file.and_then(|f| f.get("memory.parser_budget")) {
        Some((v, origin)) => {
            let text = match v {
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            super::parse::parse_size(&text).map_err(|e| ConfigError(format!("{origin}: {e}")))
        }
        None => Ok(DEFAULT_PARSER_BUDGET),
    }
}

/// `[privacy]`: each opt-in is on when its flag or its file key says so; the redaction list is
/// the flag's names and the file's together.
fn privacy(src: &Sources<'_>) -> Result<Privacy, ConfigError> {
    let mut redact = Vec::new();
    for list in &src.cli.redact {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            redact.push(redact_name(name, "--redact")?);
        }
    }
    if let Some((v, origin)) = src.file.and_then(|f| f.get("privacy.redact")) {
        let items = match v {
            toml::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for item in items {
            match item.as_str() {
                Some(name) => redact.push(redact_name(name, &origin.to_string())?),
                None => {
                    return Err(ConfigError(format!(
                        "{origin}: `{item}` is not a name; use an array of strings"
                    )));
                }
            }
        }
    }
    redact.sort();
    redact.dedup();
    Ok(Privacy {
        db_error_text: src.cli.db_error_text || file_bool(src.file, "privacy.db_error_text")?,
        command_args: src.cli.command_args || file_bool(src.file, "privacy.command_args")?,
        log_payloads: src.cli.log_payloads || file_bool(src.file, "privacy.log_payloads")?,
        redact,
    })
}

/// `--redact` lists as the redaction list holds them (folded, sorted, deduplicated).
pub fn fold_redact_names(lists: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for list in lists {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            out.push(redact_name(name, "--redact")?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A query parameter or header name to redact, folded as it is compared: ASCII lowercase,
/// without `-` and `_`.
fn redact_name(name: &str, origin: &str) -> Result<String, ConfigError> {
    let folded: String = name
        .trim()
        .bytes()
        .filter(|b| !matches!(b, b'-' | b'_'))
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect();
    let valid = |b: u8| b.is_ascii_graphic() && !matches!(b, b'=' | b'&' | b',' | b':');
    if folded.is_empty() || !name.trim().bytes().all(valid) {
        return Err(ConfigError(format!(
            "{origin}: `{name}` is not a query parameter or header name"
        )));
    }
    Ok(folded)
}

// ---------------------------------------------------------------------------------------------
// Settings with a flag and a file key but no environment variable: flag > file > default.

fn terminal(src: &Sources<'_>) -> Result<Terminal, ConfigError> {
    if let Some(t) = src.cli.output {
        return Ok(t);
    }
    match src.file.and_then(|f| f.get("traces.output")) {
        Some((toml::Value::String(s), _)) if s == "console" => Ok(Terminal::Console),
        Some((toml::Value::String(s), _)) if s == "json" => Ok(Terminal::Json),
        Some((v, origin)) => Err(ConfigError(format!(
            "{origin}: `{v}` is not an output; use console or json"
        ))),
        None => Ok(Terminal::Console),
    }
}

fn max_series(src: &Sources<'_>) -> Result<usize, ConfigError> {
    if let Some(n) = src.cli.metric_max_series {
        return Ok(n as usize);
    }
    match src.file.and_then(|f| f.get("metrics.max_series")) {
        Some((v, origin)) => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
            Some(n) if (1..=MAX_SERIES_LIMIT).contains(&n) => Ok(n as usize),
            _ => Err(ConfigError(format!(
                "{origin}: `{v}` must be a series count from 1 to {MAX_SERIES_LIMIT}"
            ))),
        },
        None => Ok(DEFAULT_MAX_SERIES),
    }
}

/// A boolean file key (false when absent).
fn file_bool(file: Option<&ConfigFile>, key: &str) -> Result<bool, ConfigError> {
    match file.and_then(|f| f.get(key)) {
        None => Ok(false),
        Some((toml::Value::Boolean(b), _)) => Ok(*b),
        Some((v, origin)) => Err(ConfigError(format!(
            "{origin}: `{v}` is not a boolean; use true or false"
        ))),
    }
}

/// `[[target.select]]` tables: each a set of selectors (all must match) and a service name.
fn select_tables(v: &toml::Value, origin: &Origin) -> Result<Vec<SelectSpec>, ConfigError> {
    let toml::Value::Array(tables) = v else {
        return Err(ConfigError(format!(
            "{origin}: write selectors as [[target.select]] tables"
        )));
    };
    let mut out = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let at = format!("{origin}, table #{}", i + 1);
        let toml::Value::Table(t) = t else {
            return Err(ConfigError(format!("{at}: not a table")));
        };
        let mut spec = SelectSpec {
            selectors: Vec::new(),
            service_name: None,
            origin: at.clone(),
        };
        for (k, v) in t {
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) if k == "port" => i.to_string(),
                other => {
                    return Err(ConfigError(format!(
                        "{at}: `{k}` must be a string, not {}",
                        other.type_str()
                    )));
                }
            };
            if k == "service_name" {
                spec.service_name = Some(value);
            } else if SELECTOR_KINDS.contains(&k.as_str()) {
                spec.selectors.push((k.clone(), value));
            } else {
                return Err(ConfigError(format!(
                    "{at}: unknown key `{k}` (use {} or service_name)",
                    SELECTOR_KINDS.join(", ")
                )));
            }
        }
        if spec.selectors.is_empty() {
            return Err(ConfigError(format!(
                "{at}: no selector ({})",
                SELECTOR_KINDS.join(", ")
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Resolves what to trace: flags, then the file where the flags left it open, then defaults.
/// Separate from [`resolve`] because only a live run traces (replay ignores `target.*`).
pub fn resolve_target(src: &Sources<'_>) -> Result<Target, ConfigError> {
    let cli = &src.cli;
    let mut target = Target {
        pids: cli.pids.clone(),
        select: cli.select.clone(),
        no_children: cli.no_children,
        duration: cli.duration,
        payload_cap: DEFAULT_PAYLOAD_CAP,
        max_sockets: cli.max_sockets.unwrap_or(DEFAULT_MAX_SOCKETS),
        capture_logs: cli.capture_logs,
        capture_via_syscalls: cli.capture_via_syscalls,
        socket_probes: cli.socket_probes.unwrap_or_default(),
        probe_stats: cli.probe_stats,
    };
    let Some(file) = src.file else {
        target.payload_cap = cli.payload_cap.unwrap_or(DEFAULT_PAYLOAD_CAP);
        return Ok(target);
    };
    if target.pids.is_empty()
        && let Some((v, origin)) = file.get("target.pids")
    {
        let list = match v {
            toml::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for item in list {
            let spec = match &item {
                toml::Value::Integer(i) => u32::try_from(*i).ok().map(|pid| PidSpec {
                    pid,
                    service_name: None,
                }),
                toml::Value::String(s) => parse_pid_spec(s).ok(),
                _ => None,
            };
            match spec {
                Some(spec) => target.pids.push(spec),
                None => {
                    return Err(ConfigError(format!(
                        "{origin}: `{item}` is not a PID (or \"PID=SERVICE_NAME\")"
                    )));
                }
            }
        }
    }
    if target.select.is_empty()
        && let Some((v, origin)) = file.get("target.select")
    {
        target.select = select_tables(v, &origin)?;
    }
    target.no_children |= file_bool(Some(file), "target.no_children")?;
    target.capture_logs |= file_bool(Some(file), "target.capture_logs")?;
    target.capture_via_syscalls |= file_bool(Some(file), "target.capture_via_syscalls")?;
    if cli.socket_probes.is_none()
        && let Some((v, origin)) = file.get("target.socket_probes")
    {
        // A value of another type is refused as one more unknown name.
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        target.socket_probes = text
            .parse()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
    }
    if target.duration.is_none()
        && let Some((v, origin)) = file.get("target.duration")
    {
        let s = v
            .as_str()
            .ok_or_else(|| ConfigError(format!("{origin}: `{v}` is not a duration such as 30s")))?;
        target.duration =
            Some(parse_duration(s).map_err(|e| ConfigError(format!("{origin}: {e}")))?);
    }
    target.payload_cap = match cli.payload_cap {
        Some(n) => n,
        None => match file.get("target.payload_cap") {
            Some((v, origin)) => match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
                Some(n) if (1..=MAX_PAYLOAD_CAP).contains(&n) => n,
                _ => {
                    return Err(ConfigError(format!(
                        "{origin}: `{v}` must be a byte count from 1 to {MAX_PAYLOAD_CAP}"
                    )));
                }
            },
            None => DEFAULT_PAYLOAD_CAP,
        },
    };
    if cli.max_sockets.is_none()
        && let Some((v, origin)) = file.get("target.max_sockets")
    {
        target.max_sockets = match v.as_integer().and_then(|i| u32::try_from(i).ok()) {
            Some(n) if (MIN_MAX_SOCKETS..=MAX_MAX_SOCKETS).contains(&n) => n,
            _ => {
                return Err(ConfigError(format!(
                    "{origin}: `{v}` must be a socket count from {MIN_MAX_SOCKETS} to {MAX_MAX_SOCKETS}"
                )));
            }
        };
    }
    Ok(target)
}

/// Addresses from a file value: an array of strings, or one string of comma-separated ones.
fn ip_list(v: &toml::Value, origin: &Origin) -> Result<Vec<IpAddr>, ConfigError> {
    let items: Vec<&str> = match v {
        toml::Value::String(s) => s.split(',').map(str::trim).collect(),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| ConfigError(format!("{origin}: `{x}` is not a string")))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ConfigError(format!(
                "{origin}: `{v}` is not a list of addresses"
            )));
        }
    };
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| ConfigError(format!("{origin}: `{s}` is not an IP address")))
        })
        .collect()
}

/// Resolves cross-host links (`crate::peer`): flags, then the file's `[peers]` keys where the
/// flags left them open. None when off; half a configuration is an error, not silently off.
pub fn resolve_peers(src: &Sources<'_>) -> Result<Option<Peers>, ConfigError> {
    let cli = &src.cli;
    let mut listen = cli.peer_listen;
    let mut secret_file = cli.peer_secret_file.clone();
    let mut port_flag = cli.peer_port;
    let mut wait = cli.peer_wait;
    let mut fallback = cli.peer_fallback.clone();
    if let Some(file) = src.file {
        if fallback.is_empty()
            && let Some((v, origin)) = file.get("peers.fallback")
        {
            fallback = ip_list(v, &origin)?;
        }
        if listen.is_none()
            && let Some(s) = file_string(file, "peers.listen")?
        {
            listen = Some(socket_addr(&s, "peers.listen")?);
        }
        if secret_file.is_none() {
            secret_file = file_string(file, "peers.secret_file")?.map(PathBuf::from);
        }
        if wait.is_none()
            && let Some(s) = file_string(file, "peers.wait")?
        {
            wait = Some(parse_duration(&s).map_err(|e| ConfigError(format!("peers.wait: {e}")))?);
        }
        if port_flag.is_none()
            && let Some((v, origin)) = file.get("peers.port")
        {
            port_flag = Some(port(v, &origin)?);
        }
    }
    match (listen, secret_file) {
        (Some(listen), Some(secret_file)) => Ok(Some(Peers {
            listen,
            secret_file,
            port: port_flag.unwrap_or(listen.port()),
            wait,
            fallback,
        })),
        (None, None) if port_flag.is_none() && wait.is_none() && fallback.is_empty() => Ok(None),
        (Some(_), None) => Err(ConfigError(
            "--peer-listen needs --peer-secret-file (or peers.secret_file)".into(),
        )),
        _ => Err(ConfigError(
            "cross-host link settings need --peer-listen (or peers.listen)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::defs::file_keys;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        resolve(&Sources {
            env: env(pairs),
            ..Sources::default()
        })
    }

    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn endpoint_of(c: &Config, s: Signal) -> Option<String> {
        c.target(s).map(|t| t.endpoint.to_string())
    }

    #[test]
    fn nothing_configured_means_no_otlp() {
        let c = resolve_env(&[]).unwrap();
        assert_eq!(c.traces, None);
        assert_eq!(c.metrics, None);
        assert_eq!(c.logs, None);
        assert_eq!(c.sampler, Sampler::ParentBased(RootSampler::AlwaysOn));
        assert_eq!(c.span_batching, DEFAULT_SPAN_BATCHING);
        assert_eq!(c.metric_export_interval, Duration::from_secs(60));
        assert_eq!(c.temporality, Temporality::Cumulative);
        assert_eq!(c.service_name, None);
    }

    #[test]
    fn endpoints_per_protocol_and_signal() {
        // (env, signal, expected endpoint)
        let cases: &[(Vars<'_>, Signal, Option<&str>)] = &[
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")],
                Signal::Traces,
                Some("http://c:4317/"),
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                Signal::Traces,
                Some("http://c:4318/v1/traces"),
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                Signal::Metrics,
                Some("http://c:4318/base/v1/metrics"),
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                Signal::Logs,
                Some("http://c:4318/v1/logs"),
            ),
            // Per-signal endpoints are used as they are, and beat the generic one.
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                Signal::Traces,
                Some("http://t:9999/custom"),
            ),
            // Only a traces endpoint: metrics are not exported.
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317")],
                Signal::Metrics,
                None,
            ),
            // A per-signal protocol.
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
                ],
                Signal::Logs,
                Some("http://c:4318/v1/logs"),
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
                ],
                Signal::Traces,
                Some("http://c:4318/"),
            ),
            // Empty means unset.
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", " "),
                ],
                Signal::Traces,
                Some("http://c:4317/"),
            ),
        ];
        for (vars, signal, want) in cases {
            let c = resolve_env(vars).unwrap();
            assert_eq!(
                endpoint_of(&c, *signal).as_deref(),
                *want,
                "{vars:?} {signal:?}"
            );
        }
    }

    #[test]
    fn protocol_defaults_and_values() {
        let c = resolve_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1")]).unwrap();
        assert_eq!(c.traces.as_ref().unwrap().protocol, Protocol::Grpc);
        assert_eq!(
            default_endpoint(Protocol::HttpProtobuf, Signal::Traces).to_string(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            default_endpoint(Protocol::Grpc, Signal::Logs).to_string(),
            "http://localhost:4317/"
        );
        let err = resolve_env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert!(
            err.0
                .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: `http/json`"),
            "{err}"
        );
        assert!(err.0.contains("not supported"));
        let err = resolve_env(&[("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp")]).unwrap_err();
        assert!(
            err.0.starts_with("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
            "{err}"
        );
    }

    #[test]
    fn headers_are_baggage_like_and_percent_decoded() {
        let c = resolve_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=secret%20value, X-Tenant = a%2Cb ,,",
            ),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "only=logs"),
        ])
        .unwrap();
        let t = c.traces.unwrap();
        assert_eq!(
            t.headers,
            vec![
                ("api-key".to_string(), "secret value".to_string()),
                ("x-tenant".to_string(), "a,b".to_string())
            ]
        );
        assert_eq!(
            c.logs.unwrap().headers,
            vec![("only".to_string(), "logs".to_string())]
        );
        for (bad_value, needle) in [
            ("novalue", "is not key=value"),
            ("=v", "empty key"),
            ("k=%zz", "percent-encoding"),
            ("bad key=v", "not a valid header name"),
            ("k=%0A", "printable ASCII"),
        ] {
            let err = resolve_env(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", bad_value)]).unwrap_err();
            assert!(
                err.0.starts_with("OTEL_EXPORTER_OTLP_TRACES_HEADERS: ") && err.0.contains(needle),
                "{bad_value}: {err}"
            );
        }
    }

    #[test]
    fn timeout_compression_and_booleans() {
        let c = resolve_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "100"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE"),
        ])
        .unwrap();
        let t = c.traces.unwrap();
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert_eq!(t.compression, Compression::Gzip);
        assert_eq!(c.metrics.unwrap().timeout, Duration::from_millis(100));
        assert_eq!(c.logs.unwrap().compression, Compression::None);
        let cases = [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0", "positive"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-5", "milliseconds"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "yes", "true or false"),
        ];
        for (var, value, needle) in cases {
            let err = resolve_env(&[(var, value)]).unwrap_err();
            assert!(
                err.0.starts_with(&format!("{var}: `{value}`")) && err.0.contains(needle),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn endpoint_errors_name_their_variable() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "localhost:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://h:1/p?q=1"),
        ] {
            let err = resolve_env(&[(var, value)]).unwrap_err();
            assert!(err.0.starts_with(&format!("{var}: `{value}`")), "{err}");
        }
    }

    #[test]
    fn resource_attributes_and_service_name() {
        let c = resolve_env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=prod,service.name=from-attrs,team=a%3Db%2Cc,k%20x=1",
        )])
        .unwrap();
        assert_eq!(c.service_name.as_deref(), Some("from-attrs"));
        assert_eq!(
            c.resource_attributes,
            vec![
                ("deployment.environment.name".into(), "prod".into()),
                ("team".into(), "a=b,c".into()),
                ("k x".into(), "1".into()),
            ]
        );
        // OTEL_SERVICE_NAME beats service.name in the attributes.
        let c = resolve_env(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "checkout"),
        ])
        .unwrap();
        assert_eq!(c.service_name.as_deref(), Some("checkout"));
        let err = resolve_env(&[("OTEL_RESOURCE_ATTRIBUTES", "a=1,b")]).unwrap_err();
        assert!(err.0.starts_with("OTEL_RESOURCE_ATTRIBUTES: `b`"), "{err}");
    }

    #[test]
    fn samplers() {
        let cases: &[(Vars<'_>, Result<Sampler, &str>)] = &[
            (
                &[("OTEL_TRACES_SAMPLER", "always_on")],
                Ok(Sampler::AlwaysOn),
            ),
            (
                &[("OTEL_TRACES_SAMPLER", "always_off")],
                Ok(Sampler::AlwaysOff),
            ),
            (
                &[("OTEL_TRACES_SAMPLER", "traceidratio")],
                Ok(Sampler::TraceIdRatio(1.0)),
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ],
                Ok(Sampler::TraceIdRatio(0.25)),
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0"),
                ],
                Ok(Sampler::ParentBased(RootSampler::TraceIdRatio(0.0))),
            ),
            (
                &[("OTEL_TRACES_SAMPLER", "parentbased_always_off")],
                Ok(Sampler::ParentBased(RootSampler::AlwaysOff)),
            ),
            (
                &[("OTEL_TRACES_SAMPLER", "parentbased_always_on")],
                Ok(Sampler::ParentBased(RootSampler::AlwaysOn)),
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                Err("OTEL_TRACES_SAMPLER_ARG: `1.5`"),
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "half"),
                ],
                Err("OTEL_TRACES_SAMPLER_ARG: `half`"),
            ),
            (
                &[("OTEL_TRACES_SAMPLER", "jaeger_remote")],
                Err("OTEL_TRACES_SAMPLER: `jaeger_remote`"),
            ),
        ];
        for (vars, want) in cases {
            match (resolve_env(vars), want) {
                (Ok(c), Ok(s)) => assert_eq!(c.sampler, *s, "{vars:?}"),
                (Err(e), Err(prefix)) => assert!(e.0.starts_with(prefix), "{vars:?}: {e}"),
                (got, _) => panic!("{vars:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn batching_metrics_and_temporality() {
        let c = resolve_env(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "50"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        ])
        .unwrap();
        assert_eq!(
            c.span_batching,
            Batching {
                max_queue: 100,
                max_batch: 10,
                delay: Duration::from_millis(250)
            }
        );
        assert_eq!(c.log_batching.delay, Duration::from_millis(50));
        assert_eq!(c.metric_export_interval, Duration::from_secs(5));
        assert_eq!(c.temporality, Temporality::Delta);
        for (var, value, needle) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "positive integer"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "9000", "must not exceed"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1m", "milliseconds"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "sometimes",
                "cumulative, delta or lowmemory",
            ),
        ] {
            let err = resolve_env(&[(var, value)]).unwrap_err();
            assert!(
                err.0.starts_with(&format!("{var}: ")) && err.0.contains(needle),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn precedence_flag_file_signal_env_generic_env() {
        let file = ConfigFile::parse(
            r#"
            [otlp]
            endpoint = "http://file-generic:1"
            timeout = "3s"
            headers = { "x-from" = "file" }
            [otlp.metrics]
            endpoint = "http://file-metrics:1"
            timeout = 1500
            [resource]
            service_name = "file-svc"
            [traces]
            sampler = "always_off"
            "#,
            Path::new("ztrace.toml"),
        )
        .unwrap();
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env-generic:1"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://env-logs:1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "9000"),
            ("OTEL_SERVICE_NAME", "env-svc"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ]);
        // File beats env (even the per-signal variable); file per-signal beats file generic.
        let c = resolve(&Sources {
            flags: HashMap::new(),
            file: Some(&file),
            env: vars.clone(),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            endpoint_of(&c, Signal::Traces).as_deref(),
            Some("http://file-generic:1/")
        );
        assert_eq!(
            endpoint_of(&c, Signal::Metrics).as_deref(),
            Some("http://file-metrics:1/")
        );
        assert_eq!(
            endpoint_of(&c, Signal::Logs).as_deref(),
            Some("http://file-generic:1/")
        );
        assert_eq!(c.traces.as_ref().unwrap().timeout, Duration::from_secs(3));
        assert_eq!(
            c.metrics.as_ref().unwrap().timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            c.traces.as_ref().unwrap().headers,
            vec![("x-from".to_string(), "file".to_string())]
        );
        assert_eq!(c.service_name.as_deref(), Some("file-svc"));
        assert_eq!(c.sampler, Sampler::AlwaysOff);
        // Flags beat the file; a per-signal flag beats the generic flag.
        let flags = HashMap::from([
            ("otlp.endpoint", "http://flag-generic:1".to_string()),
            ("otlp.logs.endpoint", "http://flag-logs:1".to_string()),
            ("resource.service_name", "flag-svc".to_string()),
            ("otlp.timeout", "700ms".to_string()),
        ]);
        let c = resolve(&Sources {
            flags,
            file: Some(&file),
            env: vars.clone(),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            endpoint_of(&c, Signal::Metrics).as_deref(),
            Some("http://flag-generic:1/")
        );
        assert_eq!(
            endpoint_of(&c, Signal::Logs).as_deref(),
            Some("http://flag-logs:1/")
        );
        assert_eq!(c.traces.unwrap().timeout, Duration::from_millis(700));
        assert_eq!(c.service_name.as_deref(), Some("flag-svc"));
        // Without file and flags: the per-signal variable beats the generic one.
        let c = resolve(&Sources {
            env: vars,
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            endpoint_of(&c, Signal::Logs).as_deref(),
            Some("http://env-logs:1/")
        );
        assert_eq!(
            endpoint_of(&c, Signal::Traces).as_deref(),
            Some("http://env-generic:1/")
        );
        assert_eq!(c.traces.unwrap().timeout, Duration::from_secs(9));
    }

    #[test]
    fn flag_and_file_errors_name_their_source() {
        let flags = HashMap::from([("otlp.timeout", "10".to_string())]);
        let err = resolve(&Sources {
            flags,
            ..Sources::default()
        })
        .unwrap_err();
        assert!(
            err.0.starts_with("--otlp-timeout: `10` needs a unit"),
            "{err}"
        );
        let flags = HashMap::from([("otlp.protocol", "http".to_string())]);
        let err = resolve(&Sources {
            flags,
            ..Sources::default()
        })
        .unwrap_err();
        assert!(err.0.starts_with("--otlp-protocol: `http`"), "{err}");
        let file = ConfigFile::parse(
            "[otlp.traces]\ncompression = \"lz4\"\n",
            Path::new("/etc/ztrace.toml"),
        )
        .unwrap();
        let err = resolve(&Sources {
            file: Some(&file),
            ..Sources::default()
        })
        .unwrap_err();
        assert_eq!(
            err.0,
            "`otlp.traces.compression` in /etc/ztrace.toml: `lz4` is not a supported compression; use gzip or none"
        );
        let file = ConfigFile::parse("[otlp]\ntimeout = true\n", Path::new("z.toml")).unwrap();
        let err = resolve(&Sources {
            file: Some(&file),
            ..Sources::default()
        })
        .unwrap_err();
        assert!(err.0.starts_with("`otlp.timeout` in z.toml"), "{err}");
    }

    #[test]
    fn privacy_is_off_by_default_and_opted_into() {
        let cfg = resolve(&Sources::default()).unwrap();
        assert_eq!(cfg.privacy, Privacy::default());
        let file = ConfigFile::parse(
            "[privacy]\ndb_error_text = true\nredact = [\"Session-Token\", \"x_tenant\"]\n",
            Path::new("z.toml"),
        )
        .unwrap();
        let cfg = resolve(&Sources {
            file: Some(&file),
            cli: CliFlags {
                command_args: true,
                redact: vec!["ticket, X-Tenant".into()],
                ..CliFlags::default()
            },
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            cfg.privacy,
            Privacy {
                db_error_text: true,
                command_args: true,
                log_payloads: false,
                redact: vec!["sessiontoken".into(), "ticket".into(), "xtenant".into()],
            }
        );
        let bad = |cli: CliFlags, file: Option<&ConfigFile>| {
            resolve(&Sources {
                cli,
                file,
                ..Sources::default()
            })
            .unwrap_err()
            .0
        };
        let err = bad(
            CliFlags {
                redact: vec!["a=b".into()],
                ..CliFlags::default()
            },
            None,
        );
        assert_eq!(
            err,
            "--redact: `a=b` is not a query parameter or header name"
        );
        let file = ConfigFile::parse("[privacy]\nredact = [1]\n", Path::new("z.toml")).unwrap();
        let err = bad(CliFlags::default(), Some(&file));
        assert!(
            err.starts_with("`privacy.redact` in z.toml: `1` is not a name"),
            "{err}"
        );
    }

    #[test]
    fn select_tables_and_named_pids_from_the_file() {
        let file = ConfigFile::parse(
            "[target]\npids = [7, \"8=cart\"]\n[[target.select]]\nexe = \"python3*\"\ncmdline = 'orders'\nservice_name = \"orders\"\n[[target.select]]\nport = 6379\n",
            Path::new("z.toml"),
        )
        .unwrap();
        let t = resolve_target(&Sources {
            file: Some(&file),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            t.pids,
            vec![
                PidSpec {
                    pid: 7,
                    service_name: None
                },
                PidSpec {
                    pid: 8,
                    service_name: Some("cart".into())
                }
            ]
        );
        assert_eq!(t.select.len(), 2);
        assert_eq!(
            t.select[0].selectors,
            vec![
                ("cmdline".to_string(), "orders".to_string()),
                ("exe".to_string(), "python3*".to_string())
            ]
        );
        assert_eq!(t.select[0].service_name.as_deref(), Some("orders"));
        assert_eq!(
            t.select[1].selectors,
            vec![("port".to_string(), "6379".to_string())]
        );
        for (text, want) in [
            ("[[target.select]]\nexe = 1\n", "`exe` must be a string"),
            ("[[target.select]]\nexee = \"x\"\n", "unknown key `exee`"),
            ("[[target.select]]\nservice_name = \"x\"\n", "no selector"),
            (
                "[target]\nselect = \"x\"\n",
                "write selectors as [[target.select]] tables",
            ),
            ("[target]\npids = [\"8=\"]\n", "is not a PID"),
        ] {
            let file = ConfigFile::parse(text, Path::new("z.toml")).unwrap();
            let err = resolve_target(&Sources {
                file: Some(&file),
                ..Sources::default()
            })
            .unwrap_err();
            assert!(err.0.contains(want), "{text}: {err}");
            assert!(err.0.contains("z.toml"), "{err}");
        }
    }

    #[test]
    fn config_file_rejects_unknown_keys_and_bad_toml() {
        let err = ConfigFile::parse("[otlp]\nendpont = \"x\"\n", Path::new("z.toml")).unwrap_err();
        assert!(
            err.0.contains("unknown key `otlp.endpont` in z.toml"),
            "{err}"
        );
        let err = ConfigFile::parse("[otlp\n", Path::new("z.toml")).unwrap_err();
        assert!(
            err.0.starts_with("z.toml is not valid TOML (line 1)"),
            "{err}"
        );
        assert!(!err.0.contains('\n'));
        let err = ConfigFile::parse("[otlp]\nheaders = { a = 1 }\n", Path::new("z.toml"))
            .and_then(|f| {
                resolve(&Sources {
                    file: Some(&f),
                    flags: HashMap::from([("otlp.endpoint", "http://x:1".to_string())]),
                    ..Sources::default()
                })
            })
            .unwrap_err();
        assert!(err.0.contains("`a` must be a string"), "{err}");
        // Every documented key parses.
        let all = file_keys();
        assert!(all.contains(&"otlp.logs.client_key".to_string()));
        assert!(all.contains(&"target.pids".to_string()));
    }

    #[test]
    fn env_names_follow_the_specification() {
        assert_eq!(
            env_name("otlp.traces.client_certificate").as_deref(),
            Some("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE")
        );
        assert_eq!(
            env_name("otlp.compression").as_deref(),
            Some("OTEL_EXPORTER_OTLP_COMPRESSION")
        );
        assert_eq!(
            env_name("metrics.temporality_preference").as_deref(),
            Some("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
        );
        assert_eq!(env_name("target.pids"), None);
    }

    #[test]
    fn tls_files_are_read_and_checked() {
        let dir = ztrace_e2e::temp::TempDir::new("config").unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.join("x.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let ca_s = ca.to_string_lossy().to_string();
        let c = resolve_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_s),
        ])
        .unwrap();
        assert!(c.traces.unwrap().tls.ca_pem.is_some());
        let err = resolve_env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", &not_pem.to_string_lossy())])
            .unwrap_err();
        assert!(err.0.contains("is not a PEM file"), "{err}");
        let err = resolve_env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/nonexistent/ca.pem",
        )])
        .unwrap_err();
        assert!(
            err.0
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: cannot read"),
            "{err}"
        );
        let err = resolve_env(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", &ca_s)]).unwrap_err();
        assert!(err.0.contains("needs both"), "{err}");
    }

    #[test]
    fn peers_from_flags_then_file_keys() {
        let file = |text: &str| ConfigFile::parse(text, Path::new("z.toml")).unwrap();
        let peers = |cli: CliFlags, file: Option<&ConfigFile>| {
            resolve_peers(&Sources {
                cli,
                file,
                ..Sources::default()
            })
        };
        assert_eq!(peers(CliFlags::default(), None), Ok(None), "off by default");
        let f = file("[peers]\nlisten = \"10.0.0.1:4390\"\nsecret_file = \"/s\"\nwait = \"3s\"\n");
        let want = Peers {
            listen: "10.0.0.1:4390".parse().unwrap(),
            secret_file: "/s".into(),
            port: 4390,
            wait: Some(Duration::from_secs(3)),
            fallback: Vec::new(),
        };
        assert_eq!(peers(CliFlags::default(), Some(&f)), Ok(Some(want)));
        let flags = CliFlags {
            peer_listen: Some("10.0.0.2:1".parse().unwrap()),
            peer_port: Some(5000),
            ..CliFlags::default()
        };
        let p = peers(flags, Some(&f)).unwrap().unwrap();
        assert_eq!((p.listen.port(), p.port), (1, 5000), "flags win");
        for (text, want) in [
            (
                "[peers]\nlisten = \"nowhere\"",
                "peers.listen: `nowhere` is not an address such as 0.0.0.0:4390",
            ),
            ("[peers]\nlisten = 4390", "`4390` is not a string"),
            ("[peers]\nport = 70000", "`70000` is not a port"),
            ("[peers]\nwait = \"soon\"", "peers.wait: "),
            (
                "[peers]\nfallback = [\"10.0.0.1\", 7]",
                "`7` is not a string",
            ),
            (
                "[peers]\nfallback = \"10.0.0.1:4390\"",
                "`10.0.0.1:4390` is not an IP address",
            ),
            (
                "[peers]\nfallback = \"10.0.0.1\"",
                "cross-host link settings need --peer-listen (or peers.listen)",
            ),
            (
                "[peers]\nlisten = \"10.0.0.1:4390\"",
                "--peer-listen needs --peer-secret-file (or peers.secret_file)",
            ),
            (
                "[peers]\nport = 4390",
                "cross-host link settings need --peer-listen (or peers.listen)",
            ),
        ] {
            let err = peers(CliFlags::default(), Some(&file(text))).unwrap_err();
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }
}
