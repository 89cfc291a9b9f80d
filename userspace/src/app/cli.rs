//! Command line: argument parsing, the hand-over of export flags, config file and environment to
//! [`crate::config`], and the user-facing error policy (one line saying what to do, exit code 2).

use std::{collections::HashMap, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    capture::{self, preflight, privdrop, process, select},
    config::{
        self, CliFlags, ConfigFile, MAX_SERIES_LIMIT, Sources, parse_duration, parse_pid_spec,
    },
    export::ExportConfig,
    processors::ottl::Program,
    runtime::{bench, live, replay},
    signals::metrics::MetricsConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "ztrace",
    version,
    about = "Zero-instrumentation tracing: linked OpenTelemetry spans for running processes, from eBPF",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the man page or shell completions to stdout (used by `cargo xtask package`).
    #[command(hide = true, subcommand)]
    Generate(super::generate::What),
    /// Report whether this host can run ztrace: kernel features, BTF, tracefs, privileges. With
    /// --pid or selectors, also what tracing each selected process would capture.
    Check {
        #[command(flatten)]
        target: Box<TargetArgs>,
    },
    /// Capture the raw event stream of processes to a file, for `ztrace replay` (and bug reports).
    Record {
        #[command(flatten)]
        target: TargetArgs,
        /// The record file to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        file: PathBuf,
    },
    /// Run a record file through the span pipeline, the metrics, the processors (rules, tail
    /// sampling, anomaly detection: the same flags and config file as the daemon) and the
    /// exporters; a recording made with --capture-logs gives its log records too. Time is the
    /// recording's own clock, so the same file and settings give the same output (spans, metric
    /// points and log records) every time. Needs no privileges.
    Replay {
        /// A file written by `ztrace record`.
        file: PathBuf,
        #[command(flatten)]
        export: Box<ExportArgs>,
        #[command(flatten)]
        tail: Box<super::tail_args::TailArgs>,
        /// Benchmark instead: run the userspace path (decode → … → linking → OTLP encoding) N
        /// times over the file on one core, send nothing, and print events/s and spans/s. The
        /// processors (rules, tail sampling, anomaly detection) are not part of it.
        #[arg(long, value_name = "PASSES")]
        throughput: Option<u32>,
        /// Replay without the seccomp allow-list (a recording is hostile input: by default,
        /// once the file is open, replay runs under the same filter as the daemon).
        #[arg(long)]
        no_seccomp: bool,
    },
    /// Rules (OTTL): print the default redaction as rules (--default), or check the
    /// `[transform]` and `[filter]` rules of a config file (--config FILE).
    Rules {
        /// Print ztrace's default redaction, written as OTTL statements in config-file form.
        #[arg(long)]
        default: bool,
        /// The config file whose rules to check.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// More names to redact, as `--redact` takes them (shown in the --default rules).
        #[arg(long, value_delimiter = ',')]
        redact: Vec<String>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub peer: super::peer_args::PeerArgs,
    #[command(flatten)]
    pub tail: super::tail_args::TailArgs,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub opamp: super::opamp_args::OpampArgs,
}

/// What to trace, and how.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Process to trace (repeatable, or comma-separated). Its descendants are traced too.
    /// `PID=NAME` names its service (and its children's); otherwise the name is derived: the
    /// program an interpreter runs (`python3 -m app.main` → app.main), else the process name.
    #[arg(short, long = "pid", value_name = "PID[=NAME]", value_delimiter = ',', value_parser = parse_pid_spec)]
    pub pids: Vec<config::PidSpec>,
    /// Trace processes whose executable matches this glob: its file name (`python3*`), or its
    /// path when the glob has a `/`. Processes that start later are traced from their exec.
    /// Repeatable; each selector flag selects on its own (use `[[target.select]]` to combine).
    #[arg(long = "exe", value_name = "GLOB")]
    pub exe: Vec<String>,
    /// Trace processes whose command line (arguments joined by spaces) matches this regex.
    #[arg(long = "cmdline", value_name = "REGEX")]
    pub cmdline: Vec<String>,
    /// Trace the processes listening on this TCP port.
    #[arg(long = "port", value_name = "PORT")]
    pub port: Vec<String>,
    /// Trace the processes of this container (its id, or a prefix of it as `docker ps` shows).
    #[arg(long = "container", value_name = "ID")]
    pub container: Vec<String>,
    /// Trace the processes in this cgroup v2 path or below it (e.g. /system.slice/shop.service).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroup: Vec<String>,
    /// Do not follow existing or future child processes of the traced PIDs.
    #[arg(long)]
    pub no_children: bool,
    /// Stop after this long (e.g. 30s, 5m, 1h); default: until Ctrl-C or all traced processes exit.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Bytes of payload captured per syscall (the head that protocol parsing sees), 1..=4096
    /// [default: 512].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=config::MAX_PAYLOAD_CAP as i64))]
    pub payload_cap: Option<u32>,
    /// TCP sockets of traced processes whose owner the kernel keeps, so that retransmits and
    /// connection state changes (seen outside the owner's context) count for the right process,
    /// 1024..=4194304 [default: 65536]. Beyond it the least recently used are forgotten. About
    /// 80 bytes of kernel memory each.
    #[arg(long, value_parser = clap::value_parser!(u32).range(config::MIN_MAX_SOCKETS as i64..=config::MAX_MAX_SOCKETS as i64))]
    pub max_sockets: Option<u32>,
    /// Turn what traced processes write to stdout/stderr into OTLP log records, each carrying the
    /// trace and span of the request the writing thread was serving.
    #[arg(long)]
    pub capture_logs: bool,
    /// Capture socket data from syscall tracepoints even where the socket-layer tracepoints
    /// work (they are the default: no overhead for processes ztrace does not trace). For
    /// comparison and for kernels where the socket-layer probes misbehave.
    #[arg(long)]
    pub capture_via_syscalls: bool,
    /// Which form of the socket-layer probes to load: `auto` (BTF-typed tracepoints, else raw
    /// tracepoints, else the syscall tracepoints), `typed` or `raw` (start-up fails if the
    /// kernel refuses that form). `raw` works around a verifier problem with the typed pair.
    #[arg(long, value_name = "auto|typed|raw", value_parser = parse_socket_probes)]
    pub socket_probes: Option<config::SocketProbes>,
    /// Measure what each probe costs the kernel (BPF run-time statistics: every probe run then
    /// also reads the clock twice) and print runs, mean time per run and total CPU per probe on
    /// exit.
    #[arg(long)]
    pub probe_stats: bool,
    /// Run without the seccomp allow-list (for debugging: when ztrace reports "Operation not
    /// permitted" and works with this flag, please report it with the kernel log's
    /// `type=1326` line). By default, once the probes are loaded, ztrace can no longer exec,
    /// ptrace, load BPF programs or modules, mount, or open files for writing.
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Where spans, metrics and logs go. Every setting can also come from the config file or the
/// OpenTelemetry environment variables (README, "Configuration"); flags win.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ExportArgs {
    /// A TOML config file with any of the settings below (and what to trace).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OTLP collector base endpoint, e.g. http://localhost:4317 (gRPC) or http://localhost:4318
    /// (HTTP, where /v1/traces etc. are appended). Without any endpoint, spans are printed here.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Endpoint for traces only, used as is.
    #[arg(long, value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,
    /// Endpoint for metrics only, used as is.
    #[arg(long, value_name = "URL")]
    pub otlp_metrics_endpoint: Option<String>,
    /// Endpoint for logs only, used as is.
    #[arg(long, value_name = "URL")]
    pub otlp_logs_endpoint: Option<String>,
    /// OTLP transport: grpc [default] or http/protobuf.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Extra request headers, key1=value1,key2=value2 (values percent-decoded).
    #[arg(long, value_name = "LIST")]
    pub otlp_headers: Option<String>,
    /// gzip or none [default].
    #[arg(long, value_name = "ALGORITHM")]
    pub otlp_compression: Option<String>,
    /// One export attempt's limit, e.g. 10s [default] or 500ms.
    #[arg(long, value_name = "DURATION")]
    pub otlp_timeout: Option<String>,
    /// PEM file of the CA that signed the collector's certificate (https endpoints).
    #[arg(long, value_name = "FILE")]
    pub otlp_certificate: Option<String>,
    /// PEM client certificate for mutual TLS (with --otlp-client-key).
    #[arg(long, value_name = "FILE")]
    pub otlp_client_certificate: Option<String>,
    /// PEM client key for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<String>,
    /// service.name of every traced process (default: OTEL_SERVICE_NAME, else the executable name).
    #[arg(long)]
    pub service_name: Option<String>,
    /// Extra Resource attributes, key1=value1,key2=value2 (like OTEL_RESOURCE_ATTRIBUTES).
    #[arg(long, value_name = "LIST")]
    pub resource_attributes: Option<String>,
    /// always_on, always_off, traceidratio, parentbased_always_on [default],
    /// parentbased_always_off or parentbased_traceidratio.
    #[arg(long, value_name = "SAMPLER")]
    pub sampler: Option<String>,
    /// The sampling ratio of the *traceidratio samplers, 0..=1 [default: 1].
    #[arg(long, value_name = "RATIO")]
    pub sampler_arg: Option<String>,
    /// Spans waiting for export; beyond this new spans are dropped and counted [default: 8192].
    #[arg(long, value_name = "SPANS")]
    pub max_queue_size: Option<String>,
    /// Spans per export request [default: 512].
    #[arg(long, value_name = "SPANS")]
    pub max_export_batch_size: Option<String>,
    /// Longest a span waits for its batch to fill [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub schedule_delay: Option<String>,
    /// How often metrics are exported [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub metric_export_interval: Option<String>,
    /// cumulative [default], delta or lowmemory.
    #[arg(long, value_name = "PREFERENCE")]
    pub metrics_temporality: Option<String>,
    /// Where spans go when no collector is configured [default: console].
    #[arg(long, value_enum)]
    pub output: Option<Format>,
    /// Export database statements as `db.query.text`, with literals removed. Off by default:
    /// query text stays home unless you ask for it.
    #[arg(long)]
    pub db_query_text: bool,
    /// Most distinct attribute sets per metric, 1..=1000000; beyond it, measurements fold into
    /// one overflow series (otel.metric.overflow=true) and are counted [default: 2000].
    #[arg(long, value_name = "SERIES", value_parser = clap::value_parser!(u32).range(1..=MAX_SERIES_LIMIT as i64))]
    pub metric_max_series: Option<u32>,
    /// Export database servers' error messages verbatim. Off by default: they quote values
    /// (`Duplicate entry 'alice@example.com'`), so only the code and a generic message leave.
    #[arg(long)]
    pub db_error_text: bool,
    /// Export `process.command_args`. Off by default: command lines carry passwords and DSNs.
    #[arg(long)]
    pub command_args: bool,
    /// Let `RUST_LOG=ztrace=trace` print captured payload bytes (requests, credentials).
    #[arg(long)]
    pub log_payloads: bool,
    /// More query parameters (values replaced by REDACTED) and headers (not exported) to redact,
    /// name1,name2, compared without case, `-` and `_`; added to the built-in list.
    #[arg(long, value_name = "LIST")]
    pub redact: Vec<String>,
    /// The most memory all protocol parsers may hold together (partial heads, header blocks,
    /// HPACK tables), e.g. 64MiB; a connection that would take them over it is no longer parsed,
    /// counted [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    pub parser_budget: Option<usize>,
}

impl ExportArgs {
    /// The given flags by config key (see [`config::FLAGS`]).
    fn flag_values(&self) -> HashMap<&'static str, String> {
        let given = [
            ("otlp.endpoint", &self.otlp_endpoint),
            ("otlp.traces.endpoint", &self.otlp_traces_endpoint),
            ("otlp.metrics.endpoint", &self.otlp_metrics_endpoint),
            ("otlp.logs.endpoint", &self.otlp_logs_endpoint),
            ("otlp.protocol", &self.otlp_protocol),
            ("otlp.headers", &self.otlp_headers),
            ("otlp.compression", &self.otlp_compression),
            ("otlp.timeout", &self.otlp_timeout),
            ("otlp.certificate", &self.otlp_certificate),
            ("otlp.client_certificate", &self.otlp_client_certificate),
            ("otlp.client_key", &self.otlp_client_key),
            ("resource.service_name", &self.service_name),
            ("resource.attributes", &self.resource_attributes),
            ("traces.sampler", &self.sampler),
            ("traces.sampler_arg", &self.sampler_arg),
            ("traces.max_queue_size", &self.max_queue_size),
            ("traces.max_export_batch_size", &self.max_export_batch_size),
            ("traces.schedule_delay", &self.schedule_delay),
            ("metrics.export_interval", &self.metric_export_interval),
            ("metrics.temporality_preference", &self.metrics_temporality),
        ];
        given
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect()
    }

    /// The typed export flags, for [`config::resolve`].
    fn cli_flags(&self) -> CliFlags {
        CliFlags {
            output: self.output.map(|f| match f {
                Format::Console => config::Terminal::Console,
                Format::Json => config::Terminal::Json,
            }),
            db_query_text: self.db_query_text,
            metric_max_series: self.metric_max_series,
            db_error_text: self.db_error_text,
            command_args: self.command_args,
            log_payloads: self.log_payloads,
            redact: self.redact.clone(),
            parser_budget: self.parser_budget,
            ..CliFlags::default()
        }
    }
}

impl TargetArgs {
    /// The what-to-trace flags, for [`config::resolve_target`].
    fn cli_flags(&self) -> CliFlags {
        let flags = [
            ("exe", &self.exe),
            ("cmdline", &self.cmdline),
            ("port", &self.port),
            ("container", &self.container),
            ("cgroup", &self.cgroup),
        ];
        let select = flags
            .into_iter()
            .flat_map(|(kind, values)| {
                values.iter().map(move |v| config::SelectSpec {
                    selectors: vec![(kind.to_string(), v.clone())],
                    service_name: None,
                    origin: format!("--{kind}"),
                })
            })
            .collect();
        CliFlags {
            pids: self.pids.clone(),
            select,
            no_children: self.no_children,
            duration: self.duration,
            payload_cap: self.payload_cap,
            max_sockets: self.max_sockets,
            capture_logs: self.capture_logs,
            capture_via_syscalls: self.capture_via_syscalls,
            socket_probes: self.socket_probes,
            probe_stats: self.probe_stats,
            ..CliFlags::default()
        }
    }
}

/// What the export flags, the config file and the environment resolve to.
pub struct Resolved {
    pub export: ExportConfig,
    /// The metrics producer's settings (interval and temporality as `export` has them).
    pub metrics: MetricsConfig,
    pub config: config::Config,
    pub service_name: Option<String>,
    pub db_query_text: bool,
    pub file: Option<ConfigFile>,
}

/// Resolves the export settings with `env` as the environment.
pub fn resolve_export(args: &ExportArgs, env: HashMap<String, String>) -> Result<Resolved, String> {
    let file = match &args.config {
        Some(path) => Some(ConfigFile::load(path).map_err(|e| e.0)?),
        None => None,
    };
    let resolved = config::resolve(&Sources {
        flags: args.flag_values(),
        cli: args.cli_flags(),
        file: file.as_ref(),
        env,
    })
    .map_err(|e| e.0)?;
    Ok(Resolved {
        export: ExportConfig::from_config(&resolved),
        metrics: MetricsConfig::from_config(&resolved),
        service_name: resolved.service_name.clone(),
        db_query_text: resolved.db_query_text,
        config: resolved,
        file,
    })
}

/// Resolves what to trace from the flags and, where they leave it open, the config file.
fn resolve_target(
    target: &TargetArgs,
    file: Option<&ConfigFile>,
) -> Result<config::Target, String> {
    config::resolve_target(&Sources {
        cli: target.cli_flags(),
        file,
        ..Sources::default()
    })
    .map_err(|e| e.0)
    .and_then(|t| {
        if t.capture_via_syscalls && t.socket_probes != config::SocketProbes::Auto {
            return Err(format!(
                "--capture-via-syscalls and --socket-probes {} (flag or config file) ask for \
                 different socket probes: keep one",
                t.socket_probes.name()
            ));
        }
        Ok(t)
    })
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One readable line per finished span, grouped by trace.
    Console,
    /// One JSON object per span per line.
    Json,
}

/// `ztrace rules`: the default redaction as rules, or a check of a file's rules.
fn rules_command(default: bool, file: Option<&std::path::Path>, redact: &[String]) -> i32 {
    if default {
        let names = match config::fold_redact_names(redact) {
            Ok(n) => n,
            Err(e) => return usage_error(e),
        };
        print!(
            "{}",
            crate::processors::ottl::defaults::redaction_toml(&names)
        );
        return 0;
    }
    let Some(path) = file else {
        return usage_error("ztrace rules: pass --default, or --config FILE to check its rules");
    };
    let rules = match ConfigFile::load(path).and_then(|f| config::resolve_rules(Some(&f))) {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    match Program::compile(&rules) {
        Ok(p) => {
            println!("{}: rules compile: {p:?}", path.display());
            0
        }
        Err(e) => usage_error(e),
    }
}

fn parse_socket_probes(s: &str) -> Result<config::SocketProbes, String> {
    s.parse()
}

fn usage_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("ztrace: {msg}");
    2
}

fn check(target: &TargetArgs) -> i32 {
    let mut items = preflight::full_report(!target.no_seccomp);
    let flags = target.cli_flags();
    if items.iter().all(|i| i.problem.is_none()) {
        items.push(socket_source(&flags));
    }
    for item in &items {
        println!("{item}");
    }
    let mut targets_ok = true;
    if !flags.pids.is_empty() || !flags.select.is_empty() {
        println!();
        let rules = match select::Rule::compile(&flags.select) {
            Ok(r) => r,
            Err(e) => return usage_error(e),
        };
        let pids: Vec<(u32, Option<String>)> = flags
            .pids
            .iter()
            .map(|p| (p.pid, p.service_name.clone()))
            .collect();
        targets_ok = super::check_targets::report(&pids, &rules);
    }
    if !targets_ok {
        println!("\nA --pid above cannot be traced (FAIL).");
        1
    } else if items.iter().any(|i| i.problem.is_some()) {
        println!("\nztrace cannot run here until the FAIL lines above are fixed.");
        1
    } else {
        println!("\nAll checks passed: ztrace can trace processes on this host.");
        0
    }
}

/// `ztrace check`'s "socket data" line: loads the probes as a run with these flags would (not
/// attached) and names where socket data would come from.
fn socket_source(flags: &CliFlags) -> preflight::Item {
    let name = "socket data";
    let socket_probes = flags.socket_probes.unwrap_or_default();
    let opts = capture::CaptureOptions {
        via_syscalls: flags.capture_via_syscalls,
        socket_probes,
        ..Default::default()
    };
    match capture::Capture::load(&opts) {
        Ok(c) => preflight::Item {
            name,
            problem: None,
            detail: if flags.capture_via_syscalls {
                format!("from {} (--capture-via-syscalls)", c.source())
            } else {
                format!(
                    "from {} (--socket-probes {})",
                    c.source(),
                    socket_probes.name()
                )
            },
        },
        Err(e) => preflight::Item {
            name,
            problem: Some(format!("{e:#}")),
            detail: String::new(),
        },
    }
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let mut metrics = MetricsConfig::default();
    let mut peer = None;
    let mut privacy = config::Privacy::default();
    let mut parser_budget = config::DEFAULT_PARSER_BUDGET;
    // SIGHUP re-reads the selectors and PIDs from the file, when the file is where they come from.
    let mut config_file = None;
    let (mut tail, mut anomaly) = (None, None);
    let mut rules = Program::default();
    let mut control = None;
    let no_seccomp = match &cli.command {
        Some(Command::Record { target, .. }) => target.no_seccomp,
        _ => cli.run.target.no_seccomp,
    };
    let (target, mode, service, db_query_text) = match cli.command {
        Some(Command::Check { target }) => return check(&target),
        Some(Command::Rules {
            default,
            config,
            redact,
        }) => return rules_command(default, config.as_deref(), &redact),
        Some(Command::Generate(what)) => {
            return super::generate::run(&what, <Cli as clap::CommandFactory>::command());
        }
        Some(Command::Replay {
            file,
            throughput: Some(passes),
            tail,
            ..
        }) => {
            if tail.any() {
                log::warn!(
                    "--throughput measures the pipeline and encoding only: the tail sampling and anomaly flags are not applied"
                );
            }
            return match bench::replay_throughput(&file, passes.max(1)) {
                Ok(t) => {
                    println!(
                        "replay throughput: {} passes, {} records, {} spans, {:.1} MB of OTLP in {:.2}s on one core: {:.0} events/s, {:.0} spans/s",
                        t.passes,
                        t.records,
                        t.spans,
                        t.otlp_bytes as f64 / 1e6,
                        t.seconds,
                        t.records as f64 / t.seconds,
                        t.spans as f64 / t.seconds
                    );
                    0
                }
                Err(e) => usage_error(format!("{e:#}")),
            };
        }
        Some(Command::Replay {
            file,
            export,
            tail,
            no_seccomp,
            ..
        }) => {
            let r = match resolve_export(&export, config::process_env()) {
                Ok(r) => r,
                Err(e) => return usage_error(e),
            };
            // The processors as the daemon resolves them from the same flags and file.
            let (tail, anomaly) = match tail.config(r.file.as_ref()) {
                Ok(t) => t,
                Err(e) => return usage_error(e),
            };
            let rules = match Program::compile(&r.config.rules) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            return match replay::replay(
                &file,
                replay::ReplayConfig {
                    privacy: r.config.privacy.clone(),
                    parser_budget: r.config.parser_budget,
                    export: r.export,
                    service_name: r.service_name,
                    db_query_text: r.db_query_text,
                    seccomp: !no_seccomp,
                    tail,
                    anomaly,
                    rules,
                    metrics: r.metrics,
                },
            ) {
                Ok(()) => 0,
                Err(e) => usage_error(format!("{e:#}")),
            };
        }
        Some(Command::Record { target, file }) => match resolve_target(&target, None) {
            Ok(target) => (target, live::Mode::Record(file), None, false),
            Err(e) => return usage_error(e),
        },
        None => {
            let r = match resolve_export(&cli.run.export, config::process_env()) {
                Ok(r) => r,
                Err(e) => return usage_error(e),
            };
            let target = match resolve_target(&cli.run.target, r.file.as_ref()) {
                Ok(t) => t,
                Err(e) => return usage_error(e),
            };
            peer = match cli.run.peer.config(r.file.as_ref()) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            let t = &cli.run.target;
            let flags_select = [&t.exe, &t.cmdline, &t.port, &t.container, &t.cgroup]
                .iter()
                .any(|v| !v.is_empty());
            if !flags_select && t.pids.is_empty() {
                config_file = r.file.as_ref().map(|f| f.path.clone());
            }
            (tail, anomaly) = match cli.run.tail.config(r.file.as_ref()) {
                Ok(t) => t,
                Err(e) => return usage_error(e),
            };
            control = match cli.run.opamp.start(super::opamp_args::Inputs {
                file: r.file.as_ref(),
                export_flags: cli.run.export.flag_values(),
                export_cli: cli.run.export.cli_flags(),
                target_cli: cli.run.target.cli_flags(),
                tail: &cli.run.tail,
                env: config::process_env(),
                targets_from_file: config_file.is_some(),
            }) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            metrics = r.metrics;
            privacy = r.config.privacy.clone();
            parser_budget = r.config.parser_budget;
            rules = match Program::compile(&r.config.rules) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            (
                target,
                live::Mode::Trace(Box::new(r.export)),
                r.service_name,
                r.db_query_text,
            )
        }
    };
    if target.pids.is_empty() && target.select.is_empty() {
        return usage_error(
            "nothing to trace: pass --pid PID, or a selector such as --exe, --port (see `ztrace --help`)",
        );
    }
    if let Err(e) = process::check_pid_namespace() {
        return usage_error(e);
    }
    let select = match select::Rule::compile(&target.select) {
        Ok(rules) => rules,
        Err(e) => return usage_error(e),
    };
    for pid in target.pids.iter().map(|p| p.pid) {
        if let Err(e) = process::validate(pid) {
            return usage_error(e);
        }
    }
    if let Some(p) = preflight::privileges().problem {
        return usage_error(p);
    }
    let tracefs = preflight::tracefs(true);
    if tracefs.problem.is_none() && tracefs.detail.starts_with("mounted tracefs") {
        log::info!("{}", tracefs.detail);
    }
    for item in [tracefs, preflight::btf()] {
        match item.problem {
            Some(p) => return usage_error(p),
            None => log::debug!("{item}"),
        }
    }
    // Before the daemon starts a thread: threads inherit the creating thread's capabilities.
    let needs = privdrop::Needs {
        conntrack: peer.as_ref().is_some_and(|p| p.nat.is_some()),
    };
    match privdrop::drop_privileges(needs) {
        Ok(kept) => log::info!(
            "privileges: kept {} only, no_new_privs set",
            privdrop::names(kept)
        ),
        Err(e) => return usage_error(format!("dropping privileges failed: {e}")),
    }
    let config = live::DaemonConfig {
        reload_from: config_file,
        pids: target.pids.iter().map(|p| p.pid).collect(),
        select,
        pid_service_names: target
            .pids
            .iter()
            .filter_map(|p| Some((p.pid, p.service_name.clone()?)))
            .collect(),
        follow_children: !target.no_children,
        service_name: service,
        duration: target.duration,
        payload_cap: target.payload_cap,
        max_sockets: target.max_sockets,
        db_query_text,
        privacy,
        parser_budget,
        mode,
        metrics,
        capture_logs: target.capture_logs,
        capture_via_syscalls: target.capture_via_syscalls,
        socket_probes: target.socket_probes,
        probe_stats: target.probe_stats,
        peer,
        tail,
        anomaly,
        rules,
        control,
        seccomp: !no_seccomp,
    };
    match live::run(config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ztrace: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Output;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn parser_budget_sizes_from_flag_and_file() {
        use config::parse_size;
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4 MiB"), Ok(4 << 20));
        assert_eq!(parse_size("2048k"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "1KiB",
            "65GiB",
            "-4MiB",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        let r = resolve_export(&export_args(&[]), HashMap::new()).unwrap();
        assert_eq!(r.config.parser_budget, config::DEFAULT_PARSER_BUDGET);
        let args = export_args(&["--parser-budget", "8MiB"]);
        let r = resolve_export(&args, HashMap::new()).unwrap();
        assert_eq!(r.config.parser_budget, 8 << 20);
        let dir = ztrace_e2e::temp::TempDir::new("budget").unwrap();
        let path = dir.join("ztrace.toml");
        let path_s = path.to_string_lossy().to_string();
        for (text, want) in [
            ("[memory]\nparser_budget = \"4MiB\"\n", Ok(4 << 20)),
            ("[memory]\nparser_budget = 2097152\n", Ok(2 << 20)),
            (
                "[memory]\nparser_budget = \"lots\"\n",
                Err("`memory.parser_budget` in "),
            ),
            (
                "[memory]\nparser_budget = 5\n",
                Err("`memory.parser_budget` in "),
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let args = export_args(&["--config", &path_s]);
            match (resolve_export(&args, HashMap::new()), want) {
                (Ok(r), Ok(n)) => assert_eq!(r.config.parser_budget, n),
                (Err(e), Err(start)) => assert!(e.starts_with(start), "{e}"),
                (Ok(_), Err(_)) => panic!("{text} accepted"),
                (Err(e), Ok(_)) => panic!("{text}: {e}"),
            }
        }
        // The flag wins over the file.
        let args = export_args(&["--config", &path_s, "--parser-budget", "3MiB"]);
        let r = resolve_export(&args, HashMap::new()).unwrap();
        assert_eq!(r.config.parser_budget, 3 << 20);
    }

    fn export_args(argv: &[&str]) -> ExportArgs {
        let mut all = vec!["ztrace"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).unwrap().run.export
    }

    #[test]
    fn endpoints() {
        let env = HashMap::new;
        for ok in ["http://localhost:4317", "https://collector.example:4317"] {
            assert!(resolve_export(&export_args(&["--otlp-endpoint", ok]), env()).is_ok());
        }
        for bad in ["localhost:4317", "ftp://a:1", "http://", "not a url"] {
            let err = resolve_export(&export_args(&["--otlp-endpoint", bad]), env())
                .err()
                .unwrap();
            assert!(err.starts_with("--otlp-endpoint: "), "{err}");
        }
    }

    #[test]
    fn flags_reach_the_export_config() {
        let r = resolve_export(
            &export_args(&[
                "--otlp-endpoint",
                "http://c:4318",
                "--otlp-protocol",
                "http/protobuf",
                "--otlp-compression",
                "gzip",
                "--otlp-headers",
                "a=1",
                "--sampler",
                "always_off",
                "--max-queue-size",
                "100",
                "--resource-attributes",
                "env=prod",
            ]),
            HashMap::from([(
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
                "grpc".to_string(),
            )]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Output::Otlp(t) = &r.export.output else {
            panic!("not OTLP")
        };
        assert_eq!(t.endpoint.to_string(), "http://c:4318/v1/traces");
        assert_eq!(t.compression, config::Compression::Gzip);
        assert_eq!(r.export.max_queue, 100);
        assert_eq!(r.export.sampler, config::Sampler::AlwaysOff);
        assert_eq!(
            r.export.resource_attributes,
            vec![("env".to_string(), "prod".to_string())]
        );
        assert_eq!(
            r.export.metrics.as_ref().map(|m| m.endpoint.to_string()),
            Some("http://c:4318/v1/metrics".to_string())
        );
        let r = resolve_export(&export_args(&["--output", "json"]), HashMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(r.export.output, Output::Json));
    }

    #[test]
    fn metric_settings_reach_the_metrics_producer() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let r = resolve_export(&export_args(&[]), env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.metrics, MetricsConfig::default());
        let vars = env(&[
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ]);
        let r = resolve_export(&export_args(&[]), vars.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.metrics.interval, Duration::from_secs(5));
        assert_eq!(r.metrics.temporality, config::Temporality::Delta);
        let r = resolve_export(
            &export_args(&[
                "--metric-export-interval",
                "2s",
                "--metrics-temporality",
                "lowmemory",
                "--metric-max-series",
                "7",
            ]),
            vars,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.metrics,
            MetricsConfig {
                interval: Duration::from_secs(2),
                temporality: config::Temporality::LowMemory,
                max_series: 7,
            }
        );
        assert_eq!(r.metrics.interval, r.export.metric_export_interval);
        let err = resolve_export(&export_args(&["--metric-export-interval", "0s"]), env(&[]))
            .err()
            .unwrap();
        assert!(err.starts_with("--metric-export-interval: "), "{err}");
    }

    #[test]
    fn config_file_fills_what_flags_leave_open() {
        let dir = ztrace_e2e::temp::TempDir::new("cli").unwrap();
        let path = dir.join("ztrace.toml");
        std::fs::write(
            &path,
            "[target]\npids = [1, \"2=checkout\"]\nduration = \"5s\"\npayload_cap = 64\nmax_sockets = 200000\ncapture_logs = true\n[traces]\noutput = \"json\"\ndb_query_text = true\n[metrics]\nmax_series = 50\n",
        )
        .unwrap();
        let path_s = path.to_string_lossy().to_string();
        let cli = Cli::try_parse_from(["ztrace", "--config", &path_s, "--duration", "1s"]).unwrap();
        let r = resolve_export(&cli.run.export, HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(r.export.output, Output::Json));
        assert!(r.db_query_text);
        let target = resolve_target(&cli.run.target, r.file.as_ref()).unwrap();
        assert_eq!(target.pids, vec![pid(1, None), pid(2, Some("checkout"))]);
        assert_eq!(target.duration, Some(Duration::from_secs(1)));
        assert_eq!(target.payload_cap, 64);
        assert_eq!(target.max_sockets, 200_000);
        assert!(target.capture_logs);
        assert_eq!(r.metrics.max_series, 50);
        std::fs::write(&path, "[metrics]\nmax_series = 0\n").unwrap();
        let err = resolve_export(&cli.run.export, HashMap::new())
            .err()
            .unwrap();
        assert!(err.starts_with("`metrics.max_series` in "), "{err}");
        std::fs::write(&path, "[target]\npayload_cap = 0\n").unwrap();
        let r = resolve_export(&cli.run.export, HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let target = TargetArgs {
            pids: vec![],
            exe: vec![],
            cmdline: vec![],
            port: vec![],
            container: vec![],
            cgroup: vec![],
            no_children: false,
            duration: None,
            payload_cap: None,
            max_sockets: None,
            capture_logs: false,
            capture_via_syscalls: false,
            socket_probes: None,
            probe_stats: false,
            no_seccomp: false,
        };
        let err = resolve_target(&target, r.file.as_ref()).unwrap_err();
        assert!(err.starts_with("`target.payload_cap` in "), "{err}");
        for bad in ["100", "5000000", "\"lots\""] {
            std::fs::write(&path, format!("[target]\nmax_sockets = {bad}\n")).unwrap();
            let r =
                resolve_export(&cli.run.export, HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
            let err = resolve_target(&target, r.file.as_ref()).unwrap_err();
            assert!(
                err.starts_with("`target.max_sockets` in ")
                    && err.ends_with("must be a socket count from 1024 to 4194304"),
                "{err}"
            );
        }
        // The flag wins over the file (its bad value last written above), and the flag's range
        // is checked where it is parsed.
        let r = resolve_export(&cli.run.export, HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
        let flag = TargetArgs {
            max_sockets: Some(4096),
            ..target
        };
        let got = resolve_target(&flag, r.file.as_ref()).unwrap();
        assert_eq!(got.max_sockets, 4096);
        assert!(Cli::try_parse_from(["ztrace", "--max-sockets", "1023"]).is_err());
        assert!(Cli::try_parse_from(["ztrace", "--max-sockets", "4194305"]).is_err());
    }

    fn pid(pid: u32, name: Option<&str>) -> config::PidSpec {
        config::PidSpec {
            pid,
            service_name: name.map(str::to_string),
        }
    }

    #[test]
    fn man_page_and_completions_name_the_real_flags() {
        use clap::CommandFactory;
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH ztrace"), "{}", &man[..40]);
        for flag in ["otlp\\-endpoint", "exe", "pid"] {
            assert!(man.contains(flag), "the man page lacks --{flag}");
        }
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "ztrace",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("--otlp-endpoint") && bash.contains("--exe"));
    }

    #[test]
    fn socket_probes_from_flag_and_file() {
        use config::SocketProbes;
        let parse = |args: &[&str]| {
            let mut v = vec!["ztrace", "--pid", "1"];
            v.extend(args);
            Cli::try_parse_from(v).map(|c| resolve_target(&c.run.target, None))
        };
        assert_eq!(
            parse(&[]).unwrap().unwrap().socket_probes,
            SocketProbes::Auto
        );
        for (arg, want) in [
            ("auto", SocketProbes::Auto),
            ("typed", SocketProbes::Typed),
            ("raw", SocketProbes::Raw),
        ] {
            let t = parse(&["--socket-probes", arg]).unwrap().unwrap();
            assert_eq!(t.socket_probes, want);
            assert_eq!(want.name(), arg);
        }
        let err = parse(&["--socket-probes", "btf"]).unwrap_err().to_string();
        assert!(err.contains("not one of auto, typed, raw"), "{err}");
        let err = parse(&["--socket-probes", "raw", "--capture-via-syscalls"])
            .unwrap()
            .unwrap_err();
        assert!(err.contains("--socket-probes raw"), "{err}");
        // `auto` leaves the choice to --capture-via-syscalls: no contradiction.
        assert!(
            parse(&["--socket-probes", "auto", "--capture-via-syscalls"])
                .unwrap()
                .is_ok()
        );

        let dir = ztrace_e2e::temp::TempDir::new("sockp").unwrap();
        let path = dir.join("ztrace.toml");
        let path_s = path.to_string_lossy().to_string();
        let from_file = |text: &str, args: &[&str]| {
            std::fs::write(&path, text).unwrap();
            let mut v = vec!["ztrace", "--config", &path_s];
            v.extend(args);
            let cli = Cli::try_parse_from(v).unwrap();
            let r =
                resolve_export(&cli.run.export, HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
            resolve_target(&cli.run.target, r.file.as_ref())
        };
        let raw = "[target]\npids = [1]\nsocket_probes = \"raw\"\n";
        assert_eq!(
            from_file(raw, &[]).unwrap().socket_probes,
            SocketProbes::Raw
        );
        // The flag wins over the file.
        assert_eq!(
            from_file(raw, &["--socket-probes", "typed"])
                .unwrap()
                .socket_probes,
            SocketProbes::Typed
        );
        let err = from_file("[target]\nsocket_probes = \"both\"\n", &[]).unwrap_err();
        assert!(
            err.starts_with("`target.socket_probes` in ") && err.contains("`both` is not one of"),
            "{err}"
        );
        let err = from_file("[target]\nsocket_probes = 1\n", &[]).unwrap_err();
        assert!(err.contains("not one of auto, typed, raw"), "{err}");
        let err = from_file(
            "[target]\nsocket_probes = \"typed\"\ncapture_via_syscalls = true\n",
            &[],
        )
        .unwrap_err();
        assert!(err.contains("different socket probes"), "{err}");
    }

    #[test]
    fn pid_lists_are_comma_separated_and_repeatable() {
        let cli = Cli::try_parse_from(["ztrace", "--pid", "1,2", "-p", "3"]).unwrap();
        assert_eq!(
            cli.run.target.pids,
            vec![pid(1, None), pid(2, None), pid(3, None)]
        );
        let cli = Cli::try_parse_from(["ztrace", "--pid", "1=checkout,2", "-p", "3=cart"]).unwrap();
        assert_eq!(
            cli.run.target.pids,
            vec![pid(1, Some("checkout")), pid(2, None), pid(3, Some("cart"))]
        );
        assert!(Cli::try_parse_from(["ztrace", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["ztrace", "--pid", "1="]).is_err());
        assert!(Cli::try_parse_from(["ztrace", "--pid", "=a"]).is_err());
        assert!(Cli::try_parse_from(["ztrace", "--payload-cap", "0"]).is_err());
        assert!(Cli::try_parse_from(["ztrace", "--metric-max-series", "0"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["ztrace", "check"]).unwrap().command,
            Some(Command::Check { .. })
        ));
        match Cli::try_parse_from(["ztrace", "check", "--pid", "1=init", "--exe", "nginx"])
            .unwrap()
            .command
        {
            Some(Command::Check { target }) => {
                assert_eq!(target.pids, vec![pid(1, Some("init"))]);
                assert_eq!(target.exe, vec!["nginx".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }
}
