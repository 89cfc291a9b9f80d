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
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The three OTLP signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// `traces`, `metrics`, `logs`: the file's table name and the flag infix.
    pub fn key(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    fn env_infix(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
            Signal::Logs => "LOGS",
        }
    }

    /// The path OTLP/HTTP appends to a generic endpoint.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
            Signal::Logs => "v1/logs",
        }
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Protocol::Grpc => 4317,
            Protocol::HttpProtobuf => 4318,
        }
    }
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Transport security settings of one signal's exporter.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tls {
    /// PEM of the CA certificate(s) that verify the collector (else the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate and key, for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where and how one signal is exported over OTLP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    pub signal: Signal,
    pub protocol: Protocol,
    /// The full URL: for OTLP/HTTP including the signal's path; for gRPC the path is unused.
    pub endpoint: http::Uri,
    /// Extra request headers (gRPC metadata), lower-case names.
    pub headers: Vec<(String, String)>,
    pub compression: Compression,
    /// One export attempt's limit.
    pub timeout: Duration,
    pub tls: Tls,
}

impl OtlpTarget {
    /// A plaintext OTLP/gRPC target with the defaults (tests, simple callers).
    pub fn grpc(signal: Signal, endpoint: http::Uri) -> OtlpTarget {
        OtlpTarget {
            signal,
            protocol: Protocol::Grpc,
            endpoint,
            headers: Vec::new(),
            compression: Compression::None,
            timeout: DEFAULT_TIMEOUT,
            tls: Tls::default(),
        }
    }

    /// `grpc http://host:4317` / `http/protobuf http://host:4318/v1/traces (gzip)`, for logs.
    pub fn describe(&self) -> String {
        let mut s = format!("OTLP {} to {}", self.protocol.name(), self.endpoint);
        if self.compression == Compression::Gzip {
            s.push_str(" (gzip)");
        }
        s
    }
}

/// The spec's sampler names (`OTEL_TRACES_SAMPLER`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBased(RootSampler),
}

/// The root sampler of a `parentbased_*` sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
    LowMemory,
}

/// Batching of one signal: queue bound, batch size and how long a batch may wait to fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
}

/// Everything the export side needs, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Per signal: its OTLP target, or None when no endpoint was configured for it (traces then
    /// go to the terminal; metrics and logs are not exported).
    pub traces: Option<OtlpTarget>,
    pub metrics: Option<OtlpTarget>,
    pub logs: Option<OtlpTarget>,
    /// `service.name` for every traced process (else each process's executable name).
    pub service_name: Option<String>,
    /// Extra Resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), `service.name` excluded.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    pub span_batching: Batching,
    pub log_batching: Batching,
    pub metric_export_interval: Duration,
    pub metric_export_timeout: Duration,
    pub temporality: Temporality,
}

impl Config {
    pub fn target(&self, signal: Signal) -> Option<&OtlpTarget> {
        match signal {
            Signal::Traces => self.traces.as_ref(),
            Signal::Metrics => self.metrics.as_ref(),
            Signal::Logs => self.logs.as_ref(),
        }
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// ztrace's span queue is larger than the SDK default (2048): capture bursts are common.
pub const DEFAULT_SPAN_BATCHING: Batching = Batching {
    max_queue: 8192,
    max_batch: 512,
    delay: Duration::from_secs(1),
};
pub const DEFAULT_LOG_BATCHING: Batching = Batching {
    max_queue: 2048,
    max_batch: 512,
    delay: Duration::from_secs(1),
};

/// A bad value, said in one line that names its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A raw setting as a source gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML table of strings (headers, resource attributes), taken literally.
    Pairs(Vec<(String, String)>),
}

/// Where a value came from: what an error message names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    File { key: String, path: PathBuf },
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => f.write_str(name),
            Origin::File { key, path } => write!(f, "`{key}` in {}", path.display()),
            Origin::Env(name) => f.write_str(name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names of every setting.

/// Settings that exist per signal (`otlp.<signal>.<name>`) and generically (`otlp.<name>`).
const SIGNAL_SETTINGS: [&str; 9] = [
    "endpoint",
    "protocol",
    "headers",
    "compression",
    "timeout",
    "certificate",
    "client_certificate",
    "client_key",
    "insecure",
];

/// Settings that are not per signal: (file key, environment variable).
const GLOBAL_SETTINGS: [(&str, Option<&str>); 13] = [
    ("resource.service_name", Some("OTEL_SERVICE_NAME")),
    ("resource.attributes", Some("OTEL_RESOURCE_ATTRIBUTES")),
    ("traces.sampler", Some("OTEL_TRACES_SAMPLER")),
    ("traces.sampler_arg", Some("OTEL_TRACES_SAMPLER_ARG")),
    ("traces.max_queue_size", Some("OTEL_BSP_MAX_QUEUE_SIZE")),
    (
        "traces.max_export_batch_size",
        Some("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
    ),
    ("traces.schedule_delay", Some("OTEL_BSP_SCHEDULE_DELAY")),
    (
        "metrics.export_interval",
        Some("OTEL_METRIC_EXPORT_INTERVAL"),
    ),
    ("metrics.export_timeout", Some("OTEL_METRIC_EXPORT_TIMEOUT")),
    (
        "metrics.temporality_preference",
        Some("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"),
    ),
    ("logs.max_queue_size", Some("OTEL_BLRP_MAX_QUEUE_SIZE")),
    (
        "logs.max_export_batch_size",
        Some("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"),
    ),
    ("logs.schedule_delay", Some("OTEL_BLRP_SCHEDULE_DELAY")),
];

/// File keys the command line reads itself (what to trace, terminal output).
pub const CLI_FILE_KEYS: [&str; 9] = [
    "target.pids",
    "target.no_children",
    "target.duration",
    "target.payload_cap",
    "target.capture_logs",
    "target.capture_via_syscalls",
    "traces.output",
    "traces.db_query_text",
    "metrics.max_series",
];

/// File keys of cross-host links (`[peers]`), read with their flags (`app/peer_args.rs`).
pub const PEER_FILE_KEYS: [&str; 4] = [
    "peers.listen",
    "peers.secret_file",
    "peers.port",
    "peers.wait",
];

/// Flags of the settings resolved here: file key → flag.
pub const FLAGS: [(&str, &str); 20] = [
    ("otlp.endpoint", "--otlp-endpoint"),
    ("otlp.traces.endpoint", "--otlp-traces-endpoint"),
    ("otlp.metrics.endpoint", "--otlp-metrics-endpoint"),
    ("otlp.logs.endpoint", "--otlp-logs-endpoint"),
    ("otlp.protocol", "--otlp-protocol"),
    ("otlp.headers", "--otlp-headers"),
    ("otlp.compression", "--otlp-compression"),
    ("otlp.timeout", "--otlp-timeout"),
    ("otlp.certificate", "--otlp-certificate"),
    ("otlp.client_certificate", "--otlp-client-certificate"),
    ("otlp.client_key", "--otlp-client-key"),
    ("resource.service_name", "--service-name"),
    ("resource.attributes", "--resource-attributes"),
    ("traces.sampler", "--sampler"),
    ("traces.sampler_arg", "--sampler-arg"),
    ("traces.max_queue_size", "--max-queue-size"),
    ("traces.max_export_batch_size", "--max-export-batch-size"),
    ("traces.schedule_delay", "--schedule-delay"),
    ("metrics.export_interval", "--metric-export-interval"),
    ("metrics.temporality_preference", "--metrics-temporality"),
];

fn flag_name(key: &str) -> Option<&'static str> {
    FLAGS.iter().find(|(k, _)| *k == key).map(|(_, f)| *f)
}

/// The environment variable of a file key.
fn env_name(key: &str) -> Option<String> {
    if let Some((_, env)) = GLOBAL_SETTINGS.iter().find(|(k, _)| *k == key) {
        return env.map(str::to_string);
    }
    let rest = key.strip_prefix("otlp.")?;
    let (signal, name) = match rest.split_once('.') {
        Some((sig, name)) => (
            Signal::ALL
                .into_iter()
                .find(|s| s.key() == sig)
                .map(Signal::env_infix),
            name,
        ),
        None => (None, rest),
    };
    if !SIGNAL_SETTINGS.contains(&name) {
        return None;
    }
    let name = name.to_ascii_uppercase();
    Some(match signal {
        Some(infix) => format!("OTEL_EXPORTER_OTLP_{infix}_{name}"),
        None => format!("OTEL_EXPORTER_OTLP_{name}"),
    })
}

/// Every key a config file may hold.
pub fn file_keys() -> Vec<String> {
    let mut keys: Vec<String> = SIGNAL_SETTINGS
        .iter()
        .map(|s| format!("otlp.{s}"))
        .collect();
    for signal in Signal::ALL {
        keys.extend(
            SIGNAL_SETTINGS
                .iter()
                .map(|s| format!("otlp.{}.{s}", signal.key())),
        );
    }
    keys.extend(GLOBAL_SETTINGS.iter().map(|(k, _)| k.to_string()));
    keys.extend(CLI_FILE_KEYS.iter().map(|k| k.to_string()));
    keys.extend(PEER_FILE_KEYS.iter().map(|k| k.to_string()));
    keys
}

/// Keys whose TOML value may be a table (of strings).
const TABLE_KEYS: [&str; 2] = ["headers", "attributes"];

// ---------------------------------------------------------------------------------------------
// The config file.

/// A parsed config file: its path and every setting by dotted key.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub values: HashMap<String, toml::Value>,
}

impl ConfigFile {
    /// Reads and checks a TOML config file: unknown keys are errors (a typo must not be
    /// silently ignored).
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "--config: cannot read {}: {e}",
                path.to_string_lossy()
            ))
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = e.message().replace('\n', " ");
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError(format!(
                "{} is not valid TOML{at}: {msg}",
                path.to_string_lossy()
            ))
        })?;
        let known = file_keys();
        let mut values = HashMap::new();
        flatten("", table, &known, path, &mut values)?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            values,
        })
    }

    /// The value of `key` with where it came from.
    pub fn get(&self, key: &str) -> Option<(&toml::Value, Origin)> {
        self.values.get(key).map(|v| {
            (
                v,
                Origin::File {
                    key: key.to_string(),
                    path: self.path.clone(),
                },
            )
        })
    }
}

fn flatten(
    prefix: &str,
    table: toml::Table,
    known: &[String],
    path: &Path,
    out: &mut HashMap<String, toml::Value>,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        let leaf_table = TABLE_KEYS.iter().any(|t| key.ends_with(&format!(".{t}")));
        match v {
            toml::Value::Table(t) if !leaf_table => flatten(&key, t, known, path, out)?,
            v => {
                if !known.contains(&key) {
                    return Err(ConfigError(format!(
                        "unknown key `{key}` in {} (see the Configuration section of the README)",
                        path.to_string_lossy()
                    )));
                }
                out.insert(key, v);
            }
        }
    }
    Ok(())
}

fn raw_of_toml(v: &toml::Value, origin: &Origin) -> Result<Raw, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => Raw::Str(s.clone()),
        toml::Value::Integer(i) => Raw::Int(*i),
        toml::Value::Float(f) => Raw::Float(*f),
        toml::Value::Boolean(b) => Raw::Bool(*b),
        toml::Value::Table(t) => {
            let mut pairs = Vec::new();
            for (k, v) in t {
                match v {
                    toml::Value::String(s) => pairs.push((k.clone(), s.clone())),
                    other => {
                        return Err(ConfigError(format!(
                            "{origin}: the value of `{k}` must be a string, not {}",
                            other.type_str()
                        )));
                    }
                }
            }
            Raw::Pairs(pairs)
        }
        other => {
            return Err(ConfigError(format!(
                "{origin}: unexpected {}",
                other.type_str()
            )));
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Resolution.

/// The inputs of resolution.
#[derive(Default)]
pub struct Sources<'a> {
    /// Flags given on the command line, by file key (see [`FLAGS`]).
    pub flags: HashMap<&'static str, String>,
    pub file: Option<&'a ConfigFile>,
    /// The environment (only `OTEL_*` variables matter).
    pub env: HashMap<String, String>,
}

impl Sources<'_> {
    /// The process environment's `OTEL_*` variables.
    pub fn process_env() -> HashMap<String, String> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("OTEL_"))
            .collect()
    }

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

fn bad(origin: &Origin, raw: &Raw, why: &str) -> ConfigError {
    let shown = match raw {
        Raw::Str(s) => format!("`{s}`"),
        Raw::Int(i) => format!("`{i}`"),
        Raw::Float(f) => format!("`{f}`"),
        Raw::Bool(b) => format!("`{b}`"),
        Raw::Pairs(_) => "the table".to_string(),
    };
    ConfigError(format!("{origin}: {shown} {why}"))
}

fn string(raw: &Raw, origin: &Origin) -> Result<String, ConfigError> {
    match raw {
        Raw::Str(s) => Ok(s.trim().to_string()),
        other => Err(bad(origin, other, "must be a string")),
    }
}

fn boolean(raw: &Raw, origin: &Origin) -> Result<bool, ConfigError> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Raw::Str(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        other => Err(bad(origin, other, "is not a boolean; use true or false")),
    }
}

/// A positive integer count.
fn count(raw: &Raw, origin: &Origin) -> Result<usize, ConfigError> {
    let n = match raw {
        Raw::Int(i) => usize::try_from(*i).ok(),
        Raw::Str(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n > 0 => Ok(n),
        _ => Err(bad(origin, raw, "must be a positive integer")),
    }
}

/// A duration: environment variables hold milliseconds (as the specification says); flags and
/// file strings carry a unit (`10s`, `500ms`); a bare file integer is milliseconds.
fn duration(raw: &Raw, origin: &Origin) -> Result<Duration, ConfigError> {
    let positive = |d: Duration| {
        if d.is_zero() {
            Err(bad(origin, raw, "must be a positive duration"))
        } else {
            Ok(d)
        }
    };
    match (raw, origin) {
        (Raw::Int(ms), _) => match u64::try_from(*ms) {
            Ok(ms) => positive(Duration::from_millis(ms)),
            Err(_) => Err(bad(origin, raw, "must be a positive duration")),
        },
        (Raw::Str(s), Origin::Env(_)) => match s.trim().parse::<u64>() {
            Ok(ms) => positive(Duration::from_millis(ms)),
            Err(_) => Err(bad(
                origin,
                raw,
                "is not a number of milliseconds (e.g. 10000)",
            )),
        },
        (Raw::Str(s), _) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(origin, raw, "needs a unit, e.g. 10s or 500ms"));
            }
            parse_duration(s).map_err(|e| ConfigError(format!("{origin}: {e}")))
        }
        (other, _) => Err(bad(origin, other, "must be a duration such as 10s")),
    }
}

/// A duration as the command line and the file write it: `30s`, `5m`, `1h`, `250ms`, `2`
/// (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; use e.g. 30s, 5m, 1h, 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Decodes `%XX` escapes; a malformed escape or invalid UTF-8 is an error.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A W3C-baggage-like list `k=v,k2=v2` (no properties), values percent-decoded; with
/// `decode_keys` keys too (`OTEL_RESOURCE_ATTRIBUTES`). Empty members are skipped.
fn key_value_list(
    raw: &Raw,
    origin: &Origin,
    decode_keys: bool,
) -> Result<Vec<(String, String)>, ConfigError> {
    let s = match raw {
        Raw::Pairs(p) => return Ok(p.clone()),
        Raw::Str(s) => s,
        other => {
            return Err(bad(
                origin,
                other,
                "must be a list like key1=value1,key2=value2",
            ));
        }
    };
    let mut out = Vec::new();
    for member in s.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let Some((k, v)) = member.split_once('=') else {
            return Err(ConfigError(format!(
                "{origin}: `{member}` is not key=value (the list is key1=value1,key2=value2)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        let key = if decode_keys {
            percent_decode(k)
        } else {
            Some(k.to_string())
        };
        let (Some(key), Some(value)) = (key, percent_decode(v)) else {
            return Err(ConfigError(format!(
                "{origin}: `{member}` has a malformed percent-encoding (use %XX for , = and %)"
            )));
        };
        if key.is_empty() {
            return Err(ConfigError(format!(
                "{origin}: `{member}` has an empty key"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Header names must be valid HTTP/gRPC metadata keys, values visible ASCII.
fn headers(raw: &Raw, origin: &Origin) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in key_value_list(raw, origin, false)? {
        let name = k.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.ends_with("-bin") {
            return Err(ConfigError(format!(
                "{origin}: `{k}` is not a valid header name"
            )));
        }
        if http::HeaderValue::from_str(&v).is_err() || !v.is_ascii() {
            return Err(ConfigError(format!(
                "{origin}: the value of header `{k}` must be printable ASCII (percent-encode other bytes)"
            )));
        }
        out.push((name, v));
    }
    Ok(out)
}

fn protocol(raw: &Raw, origin: &Origin) -> Result<Protocol, ConfigError> {
    match string(raw, origin)?.as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(bad(
            origin,
            raw,
            "is not supported by ztrace; use http/protobuf or grpc",
        )),
        _ => Err(bad(
            origin,
            raw,
            "is not an OTLP protocol; use grpc or http/protobuf",
        )),
    }
}

fn compression(raw: &Raw, origin: &Origin) -> Result<Compression, ConfigError> {
    match string(raw, origin)?.to_ascii_lowercase().as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(bad(
            origin,
            raw,
            "is not a supported compression; use gzip or none",
        )),
    }
}

/// An endpoint URL: http or https, a host, no query or fragment.
fn endpoint(raw: &Raw, origin: &Origin) -> Result<http::Uri, ConfigError> {
    let s = string(raw, origin)?;
    let why = |w: &str| {
        ConfigError(format!(
            "{origin}: `{s}` is not a valid OTLP endpoint ({w}); use e.g. http://localhost:4317"
        ))
    };
    let uri: http::Uri = s.parse().map_err(|e| why(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        None => return Err(why("scheme must be http (plaintext) or https (TLS)")),
        Some(_) => return Err(why("scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(why("no host"));
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(why("no query or fragment allowed"));
    }
    Ok(uri)
}

/// `base` with `path` appended to its path (the OTLP/HTTP rule for the generic endpoint).
fn append_path(base: &http::Uri, path: &str) -> http::Uri {
    let mut parts = base.clone().into_parts();
    let old = base.path().trim_end_matches('/');
    let joined = format!("{old}/{path}");
    parts.path_and_query = joined.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// `host:port` default endpoint for a protocol, with the signal path for HTTP.
fn default_endpoint(protocol: Protocol, signal: Signal) -> http::Uri {
    let base: http::Uri = format!("http://localhost:{}", protocol.default_port())
        .parse()
        .unwrap_or_default();
    match protocol {
        Protocol::Grpc => base,
        Protocol::HttpProtobuf => append_path(&base, signal.http_path()),
    }
}

fn read_pem(raw: &Raw, origin: &Origin, what: &str) -> Result<Vec<u8>, ConfigError> {
    let path = string(raw, origin)?;
    let pem = std::fs::read(&path)
        .map_err(|e| ConfigError(format!("{origin}: cannot read {what} file `{path}`: {e}")))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ConfigError(format!(
            "{origin}: `{path}` is not a PEM file (no -----BEGIN line)"
        )));
    }
    Ok(pem)
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

fn ratio(raw: Option<(Raw, Origin)>) -> Result<f64, ConfigError> {
    let Some((raw, origin)) = raw else {
        return Ok(1.0);
    };
    let r = match &raw {
        Raw::Float(f) => Some(*f),
        Raw::Int(i) => Some(*i as f64),
        Raw::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match r {
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(bad(
            &origin,
            &raw,
            "is not a sampling ratio; use a number from 0 to 1, e.g. 0.25",
        )),
    }
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
    Ok(Config {
        traces,
        metrics,
        logs,
        service_name,
        resource_attributes,
        sampler: sampler(src)?,
        span_batching: batching(src, "traces", DEFAULT_SPAN_BATCHING)?,
        log_batching: batching(src, "logs", DEFAULT_LOG_BATCHING)?,
        metric_export_interval,
        metric_export_timeout,
        temporality,
    })
}

#[cfg(test)]
mod tests {
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
        let dir = std::env::temp_dir().join(format!("ztrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
