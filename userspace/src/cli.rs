//! Command line: argument parsing, configuration from flags and the OpenTelemetry environment
//! variables, and the user-facing error policy (one line saying what to do, exit code 2).

use std::{env, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    capture::preflight,
    daemon,
    export::Output,
    metrics::{MetricsConfig, Temporality},
    process,
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
    /// Report whether this host can run ztrace: kernel features, BTF, tracefs, privileges.
    Check,
    /// Capture the raw event stream of processes to a file, for `ztrace replay` (and bug reports).
    Record {
        #[command(flatten)]
        target: TargetArgs,
        /// The record file to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        file: PathBuf,
    },
    /// Run a record file through the span pipeline and exporters. Needs no privileges.
    Replay {
        /// A file written by `ztrace record`.
        file: PathBuf,
        #[command(flatten)]
        export: ExportArgs,
        /// Benchmark instead: run the whole userspace path (decode → … → OTLP encoding) N times
        /// over the file on one core, send nothing, and print events/s and spans/s.
        #[arg(long, value_name = "PASSES")]
        throughput: Option<u32>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub export: ExportArgs,
}

/// What to trace, and how.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Process to trace (repeatable, or comma-separated). Its descendants are traced too.
    #[arg(short, long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Do not follow existing or future child processes of the traced PIDs.
    #[arg(long)]
    pub no_children: bool,
    /// Stop after this long (e.g. 30s, 5m, 1h); default: until Ctrl-C or all traced processes exit.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Bytes of payload captured per syscall (the head that protocol parsing sees), 1..=4096.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub payload_cap: u32,
    /// Turn what traced processes write to stdout/stderr into OTLP log records, each carrying the
    /// trace and span of the request the writing thread was serving.
    #[arg(long)]
    pub capture_logs: bool,
}

/// Where spans go.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// OTLP/gRPC collector endpoint, e.g. http://localhost:4317. Default: the
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT variables; with neither,
    /// spans are printed to the terminal.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// service.name of every traced process (default: OTEL_SERVICE_NAME, else the executable name).
    #[arg(long)]
    pub service_name: Option<String>,
    /// Where spans go when no collector is configured.
    #[arg(long, value_enum, default_value_t = Format::Console)]
    pub output: Format,
    /// Export database statements as `db.query.text`, with literals removed. Off by default:
    /// query text stays home unless you ask for it.
    #[arg(long)]
    pub db_query_text: bool,
    /// How often metrics are exported (e.g. 10s). Default: OTEL_METRIC_EXPORT_INTERVAL
    /// (milliseconds), else 60s. Temporality: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
    /// (cumulative, delta or lowmemory; default cumulative).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub metric_export_interval: Option<Duration>,
    /// Most distinct attribute sets per metric; beyond it, measurements fold into one overflow
    /// series (otel.metric.overflow=true) and are counted.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub metric_max_series: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One readable line per finished span, grouped by trace.
    Console,
    /// One JSON object per span per line.
    Json,
}

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

/// Validates an OTLP/gRPC endpoint URL.
pub fn parse_endpoint(raw: &str, source: &str) -> Result<tonic::transport::Uri, String> {
    let bad = |why: &str| {
        format!(
            "{source}: `{raw}` is not a valid OTLP endpoint ({why}); use e.g. http://localhost:4317"
        )
    };
    let uri: tonic::transport::Uri = raw.trim().parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// Where spans go: flag, then the per-signal variable, then the generic one, then the terminal.
pub fn resolve_output(args: &ExportArgs) -> Result<Output, String> {
    let from_env = |name: &str| {
        env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, name.to_string()))
    };
    let endpoint = args
        .otlp_endpoint
        .clone()
        .map(|v| (v, "--otlp-endpoint".to_string()))
        .or_else(|| from_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| from_env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    Ok(match endpoint {
        Some((raw, source)) => Output::Otlp {
            endpoint: parse_endpoint(&raw, &source)?,
        },
        None => match args.output {
            Format::Console => Output::Console,
            Format::Json => Output::Json,
        },
    })
}

/// The metrics signal's settings: flags, then the OpenTelemetry variables, then the defaults.
pub fn resolve_metrics(args: &ExportArgs) -> Result<MetricsConfig, String> {
    let var = |name: &str| env::var(name).ok().filter(|v| !v.trim().is_empty());
    let interval = match (
        args.metric_export_interval,
        var("OTEL_METRIC_EXPORT_INTERVAL"),
    ) {
        (Some(d), _) => d,
        (None, Some(ms)) => match ms.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(format!(
                    "OTEL_METRIC_EXPORT_INTERVAL: `{ms}` is not a positive number of milliseconds"
                ));
            }
        },
        (None, None) => MetricsConfig::default().interval,
    };
    let temporality = match var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
        Some(v) => v
            .parse::<Temporality>()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: {e}"))?,
        None => Temporality::default(),
    };
    Ok(MetricsConfig {
        interval,
        temporality,
        max_series: args.metric_max_series as usize,
    })
}

pub fn service_name(args: &ExportArgs) -> Option<String> {
    args.service_name
        .clone()
        .or_else(|| env::var("OTEL_SERVICE_NAME").ok())
        .filter(|s| !s.trim().is_empty())
}

fn usage_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("ztrace: {msg}");
    2
}

fn check() -> i32 {
    let items = preflight::full_report();
    for item in &items {
        println!("{item}");
    }
    if items.iter().any(|i| i.problem.is_some()) {
        println!("\nztrace cannot run here until the FAIL lines above are fixed.");
        1
    } else {
        println!("\nAll checks passed: ztrace can trace processes on this host.");
        0
    }
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let mut metrics = MetricsConfig::default();
    let (target, mode, service, db_query_text) = match cli.command {
        Some(Command::Check) => return check(),
        Some(Command::Replay {
            file,
            throughput: Some(passes),
            ..
        }) => {
            return match daemon::replay_throughput(&file, passes.max(1)) {
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
        Some(Command::Replay { file, export, .. }) => {
            let output = match resolve_output(&export) {
                Ok(o) => o,
                Err(e) => return usage_error(e),
            };
            return match daemon::replay(&file, output, service_name(&export), export.db_query_text)
            {
                Ok(()) => 0,
                Err(e) => usage_error(format!("{e:#}")),
            };
        }
        Some(Command::Record { target, file }) => (target, daemon::Mode::Record(file), None, false),
        None => {
            let output = match resolve_output(&cli.run.export) {
                Ok(o) => o,
                Err(e) => return usage_error(e),
            };
            let service = service_name(&cli.run.export);
            let db_query_text = cli.run.export.db_query_text;
            metrics = match resolve_metrics(&cli.run.export) {
                Ok(m) => m,
                Err(e) => return usage_error(e),
            };
            (
                cli.run.target,
                daemon::Mode::Trace(output),
                service,
                db_query_text,
            )
        }
    };
    if target.pids.is_empty() {
        return usage_error("nothing to trace: pass --pid PID (see `ztrace --help`)");
    }
    for &pid in &target.pids {
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
    let config = daemon::DaemonConfig {
        pids: target.pids.clone(),
        follow_children: !target.no_children,
        service_name: service,
        duration: target.duration,
        payload_cap: target.payload_cap,
        db_query_text,
        mode,
        metrics,
        capture_logs: target.capture_logs,
    };
    match daemon::run(config) {
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
    fn endpoints() {
        assert!(parse_endpoint("http://localhost:4317", "x").is_ok());
        assert!(parse_endpoint("https://collector.example:4317", "x").is_ok());
        for bad in ["localhost:4317", "ftp://a:1", "http://", "not a url", ""] {
            let err = parse_endpoint(bad, "--otlp-endpoint").unwrap_err();
            assert!(err.contains("--otlp-endpoint"), "{err}");
        }
    }

    #[test]
    fn pid_lists_are_comma_separated_and_repeatable() {
        let cli = Cli::try_parse_from(["ztrace", "--pid", "1,2", "-p", "3"]).unwrap();
        assert_eq!(cli.run.target.pids, vec![1, 2, 3]);
        assert!(Cli::try_parse_from(["ztrace", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["ztrace", "--payload-cap", "0"]).is_err());
        let cli = Cli::try_parse_from(["ztrace", "--metric-export-interval", "2s"]).unwrap();
        assert_eq!(
            cli.run.export.metric_export_interval,
            Some(Duration::from_secs(2))
        );
        assert!(Cli::try_parse_from(["ztrace", "--metric-max-series", "0"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["ztrace", "check"]).unwrap().command,
            Some(Command::Check)
        ));
    }
}
