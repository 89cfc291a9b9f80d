//! What a setting is: the resolved types and their defaults, and the tables that give every
//! setting its file key, flag and (see `env.rs`) environment variable. Adding a setting starts here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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

    pub(super) fn env_infix(self) -> &'static str {
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

    pub(super) fn default_port(self) -> u16 {
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
    /// Where spans go when no collector is configured for traces.
    pub terminal: Terminal,
    /// Export database statements as `db.query.text`.
    pub db_query_text: bool,
    /// Most distinct attribute sets per metric.
    pub metric_max_series: usize,
    /// What sensitive data may leave ztrace (each an opt-in) and what else to redact.
    pub privacy: Privacy,
    /// OTTL rules (`[transform]`, `[filter]`), compiled by `processors::ottl`.
    pub rules: Rules,
    /// `memory.parser_budget`: the most bytes all protocol parsers may hold together.
    pub parser_budget: usize,
}

/// `[privacy]`: sensitive data stays home unless asked for. Every field is off (empty) by
/// default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Privacy {
    /// Export database servers' error messages verbatim (they quote values: MySQL's
    /// `Duplicate entry 'alice@example.com'`); else only the code and a generic message.
    pub db_error_text: bool,
    /// Export `process.command_args` (command lines carry passwords and DSNs).
    pub command_args: bool,
    /// Let `RUST_LOG=ztrace=trace` print captured payload bytes.
    pub log_payloads: bool,
    /// Query parameters whose values are redacted and headers not exported, beyond the built-in
    /// list: folded (ASCII lowercase, without `-` and `_`), as they are compared.
    pub redact: Vec<String>,
}

/// `traces.output`: the terminal format of spans when no collector is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminal {
    Console,
    Json,
}

/// `target.socket_probes` / `--socket-probes`: which form of the socket-layer probes to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketProbes {
    /// BTF-typed tracepoints, else raw tracepoints, else the syscall tracepoints.
    #[default]
    Auto,
    /// BTF-typed tracepoints only: start-up fails if the kernel refuses them.
    Typed,
    /// Raw tracepoints only (skips the typed pair, e.g. around a verifier problem).
    Raw,
}

impl SocketProbes {
    pub const NAMES: [&'static str; 3] = ["auto", "typed", "raw"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl std::str::FromStr for SocketProbes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "typed" => Ok(Self::Typed),
            "raw" => Ok(Self::Raw),
            _ => Err(format!("`{s}` is not one of {}", Self::NAMES.join(", "))),
        }
    }
}

/// A PID to trace, with the service name the operator gave it (`--pid 1234=checkout`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidSpec {
    pub pid: u32,
    pub service_name: Option<String>,
}

/// Processes chosen by what they are rather than by PID: one `--exe`/`--cmdline`/`--port`/
/// `--container`/`--cgroup` flag, or one `[[target.select]]` table whose selectors must all
/// match. Checked and compiled by the capture stage (`capture/select.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectSpec {
    /// (kind, value): kind is one of [`SELECTOR_KINDS`].
    pub selectors: Vec<(String, String)>,
    pub service_name: Option<String>,
    /// Where it was written, for error messages (`--port`, `[[target.select]] #2 in FILE`).
    pub origin: String,
}

/// The selector kinds, as flags (`--exe`) and as `[[target.select]]` keys (`exe = "…"`).
pub const SELECTOR_KINDS: [&str; 5] = ["exe", "cmdline", "port", "container", "cgroup"];

/// What to trace, and how, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pids: Vec<PidSpec>,
    pub select: Vec<SelectSpec>,
    pub no_children: bool,
    pub duration: Option<Duration>,
    pub payload_cap: u32,
    /// Size of the kernel's socket → owner table (`target.max_sockets`).
    pub max_sockets: u32,
    pub capture_logs: bool,
    pub capture_via_syscalls: bool,
    pub socket_probes: SocketProbes,
    /// Flag only (a measurement, not a setting).
    pub probe_stats: bool,
}

/// The command line's typed flags, parsed by the application shell and handed over as plain
/// data. String-valued export flags travel in [`super::Sources::flags`], by file key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CliFlags {
    pub pids: Vec<PidSpec>,
    pub select: Vec<SelectSpec>,
    pub no_children: bool,
    pub duration: Option<Duration>,
    pub payload_cap: Option<u32>,
    pub max_sockets: Option<u32>,
    pub capture_logs: bool,
    pub capture_via_syscalls: bool,
    pub socket_probes: Option<SocketProbes>,
    pub probe_stats: bool,
    pub output: Option<Terminal>,
    pub db_query_text: bool,
    pub metric_max_series: Option<u32>,
    pub peer_listen: Option<SocketAddr>,
    pub peer_secret_file: Option<PathBuf>,
    pub peer_port: Option<u16>,
    pub peer_wait: Option<Duration>,
    pub peer_fallback: Vec<IpAddr>,
    pub db_error_text: bool,
    pub command_args: bool,
    pub log_payloads: bool,
    /// `--redact`, as given (comma-separated lists).
    pub redact: Vec<String>,
    /// `--parser-budget`, in bytes.
    pub parser_budget: Option<usize>,
}

/// Cross-host links (`crate::peer`), resolved: on when a listen address is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    /// Where this agent answers the others.
    pub listen: SocketAddr,
    /// The secret every agent of the deployment shares (read when the channel starts).
    pub secret_file: PathBuf,
    /// The agent port of other hosts (default: the port of `listen`).
    pub port: u16,
    /// How long a server span whose caller is on another host waits for that host's agent
    /// (None: the linker's default).
    pub wait: Option<Duration>,
    /// Agents asked about callers whose address has no agent (a NAT gateway between the hosts).
    pub fallback: Vec<IpAddr>,
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

/// Bytes of payload captured per syscall when nothing says otherwise.
pub const DEFAULT_PAYLOAD_CAP: u32 = 512;
/// The largest `target.payload_cap`.
pub const MAX_PAYLOAD_CAP: u32 = 4096;
/// TCP sockets whose owner the kernel keeps when nothing says otherwise, and the bounds of
/// `target.max_sockets`: below 1024 a busy host's table would turn over faster than its
/// connections; 4M is 320 MiB of kernel memory (80 bytes each, as `bpftool map show` counts).
pub const DEFAULT_MAX_SOCKETS: u32 = 65536;
pub const MIN_MAX_SOCKETS: u32 = 1024;
pub const MAX_MAX_SOCKETS: u32 = 4 << 20;
pub const DEFAULT_MAX_SERIES: usize = 2000;
/// The largest `metrics.max_series`.
pub const MAX_SERIES_LIMIT: u32 = 1_000_000;
/// `memory.parser_budget` when nothing says otherwise: what every connection's parser may hold
/// together (partial heads, header blocks, HPACK tables, prepared statements).
pub const DEFAULT_PARSER_BUDGET: usize = 64 << 20;
/// Its bounds: below 1 MiB a few slow heads would stop all parsing; 64 GiB is no bound at all.
pub const MIN_PARSER_BUDGET: usize = 1 << 20;
pub const MAX_PARSER_BUDGET: usize = 64 << 30;

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

// ---------------------------------------------------------------------------------------------
// Names of every setting.

/// Settings that exist per signal (`otlp.<signal>.<name>`) and generically (`otlp.<name>`).
pub(super) const SIGNAL_SETTINGS: [&str; 9] = [
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
pub(super) const GLOBAL_SETTINGS: [(&str, Option<&str>); 13] = [
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

/// File keys of cross-host links (`[peers]`), resolved with their flags into [`Peers`].
pub const PEER_FILE_KEYS: [&str; 5] = [
    "peers.listen",
    "peers.secret_file",
    "peers.port",
    "peers.wait",
    "peers.fallback",
];

/// File keys with no environment variable (what to trace, terminal output, series limit).
pub const NO_ENV_KEYS: [&str; 17] = [
    "target.pids",
    "target.select",
    "target.no_children",
    "target.duration",
    "target.payload_cap",
    "target.max_sockets",
    "target.capture_logs",
    "target.capture_via_syscalls",
    "target.socket_probes",
    "traces.output",
    "traces.db_query_text",
    "metrics.max_series",
    "privacy.db_error_text",
    "privacy.command_args",
    "privacy.log_payloads",
    "privacy.redact",
    "memory.parser_budget",
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

pub(super) fn flag_name(key: &str) -> Option<&'static str> {
    FLAGS.iter().find(|(k, _)| *k == key).map(|(_, f)| *f)
}

/// File keys of `[tail_sampling]` and `[anomaly]` (resolved in `tail.rs`).
pub const TAIL_FILE_KEYS: [&str; 16] = [
    "tail_sampling.decision_wait",
    "tail_sampling.max_hold",
    "tail_sampling.num_traces",
    "tail_sampling.max_spans",
    "tail_sampling.vote_wait",
    "tail_sampling.policies",
    "anomaly.enabled",
    "anomaly.window",
    "anomaly.alpha",
    "anomaly.threshold",
    "anomaly.end_threshold",
    "anomaly.end_windows",
    "anomaly.cold_start_windows",
    "anomaly.start_windows",
    "anomaly.min_requests",
    "anomaly.latency_min_change",
];
/// (`anomaly.max_operations` is listed apart to keep the table above a readable size.)
pub const ANOMALY_MAX_OPERATIONS_KEY: &str = "anomaly.max_operations";

/// File keys of `[opamp]` (resolved in `opamp.rs`).
pub const OPAMP_FILE_KEYS: [&str; 8] = [
    "opamp.endpoint",
    "opamp.headers",
    "opamp.certificate",
    "opamp.client_certificate",
    "opamp.client_key",
    "opamp.poll_interval",
    "opamp.state_dir",
    "opamp.allow",
];

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
    keys.extend(NO_ENV_KEYS.iter().map(|k| k.to_string()));
    keys.extend(PEER_FILE_KEYS.iter().map(|k| k.to_string()));
    keys.extend(TAIL_FILE_KEYS.iter().map(|k| k.to_string()));
    keys.push(ANOMALY_MAX_OPERATIONS_KEY.to_string());
    keys.extend(RULE_FILE_KEYS.iter().map(|k| k.to_string()));
    keys.extend(OPAMP_FILE_KEYS.iter().map(|k| k.to_string()));
    keys
}

/// Keys whose TOML value may be a table (of strings).
pub(super) const TABLE_KEYS: [&str; 2] = ["headers", "attributes"];

// ---------------------------------------------------------------------------------------------
// Rules (`[transform]`, `[filter]`), resolved in `rules.rs`.

/// What a statement that fails on one record does (the Collector's `error_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorMode {
    /// The record is dropped (counted and logged): the Collector's default.
    #[default]
    Propagate,
    /// The error is logged (rate-limited) and the next statement runs.
    Ignore,
    /// As `ignore`, without logging.
    Silent,
}

impl ErrorMode {
    pub(super) fn parse(s: &str) -> Option<ErrorMode> {
        match s {
            "propagate" => Some(ErrorMode::Propagate),
            "ignore" => Some(ErrorMode::Ignore),
            "silent" => Some(ErrorMode::Silent),
            _ => None,
        }
    }
}

/// One `[[transform.<signal>_statements]]` entry (or the plain list form of one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementGroup {
    /// `span`, `datapoint`, `log` (checked when compiled).
    pub context: String,
    /// The group runs on a record when any of these holds (all records when empty).
    pub conditions: Vec<String>,
    pub statements: Vec<String>,
    /// The group's own `error_mode`, else `[transform] error_mode`.
    pub error_mode: Option<ErrorMode>,
    /// Where the group was written (`transform.trace_statements[0]` in FILE), for errors.
    pub origin: String,
}

/// One list of `[filter.<signal>]` conditions: a record any of them matches is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterList {
    pub signal: Signal,
    /// `span`, `spanevent`, `metric`, `datapoint`, `log_record` (checked when compiled).
    pub context: String,
    pub conditions: Vec<String>,
    pub origin: String,
}

/// Rules, resolved (empty: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub transform_error_mode: ErrorMode,
    /// Per signal, in order: traces, metrics, logs.
    pub statements: Vec<(Signal, StatementGroup)>,
    pub filter_error_mode: ErrorMode,
    pub filters: Vec<FilterList>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.filters.is_empty()
    }
}

/// File keys of rules.
pub const RULE_FILE_KEYS: [&str; 10] = [
    "transform.error_mode",
    "transform.trace_statements",
    "transform.metric_statements",
    "transform.log_statements",
    "filter.error_mode",
    "filter.traces.span",
    "filter.traces.spanevent",
    "filter.metrics.metric",
    "filter.metrics.datapoint",
    "filter.logs.log_record",
];
