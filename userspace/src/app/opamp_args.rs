//! The `--opamp-*` flags (each with a `ZTRACE_OPAMP_*` variable) and what the OpAMP client is
//! started with: `[opamp]` resolved, the local file, and a resolver that turns a whole
//! configuration file into settings through the same flags, environment and checks as start-up
//! (so a remote configuration is judged exactly like the file).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use super::tail_args::TailArgs;
use crate::capture::select;
use crate::config::{
    self, CliFlags, ConfigFile, OpampFlags, Sources, TAIL_FILE_KEYS, parse_duration,
};
use crate::control::{Base, Resolver, Settings, Start};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct OpampArgs {
    /// Remote management: the OpAMP server's plain-HTTP endpoint, e.g.
    /// https://fleet.example:4320/v1/opamp [file: opamp.endpoint]
    #[arg(long, value_name = "URL", env = "ZTRACE_OPAMP_ENDPOINT")]
    pub opamp_endpoint: Option<String>,
    /// Headers for the OpAMP server, e.g. `authorization=Bearer TOKEN` [file: opamp.headers]
    #[arg(
        long,
        value_name = "K=V,...",
        env = "ZTRACE_OPAMP_HEADERS",
        hide_env_values = true
    )]
    pub opamp_headers: Option<String>,
    /// What a remote configuration may change: any of sampling, rules, targets, comma-separated;
    /// empty for nothing [default: sampling,rules; file: opamp.allow]
    #[arg(long, value_name = "PARTS", env = "ZTRACE_OPAMP_ALLOW")]
    pub opamp_allow: Option<String>,
    /// How often the OpAMP server is polled [default: 30s; file: opamp.poll_interval]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "ZTRACE_OPAMP_POLL_INTERVAL")]
    pub opamp_poll_interval: Option<Duration>,
    /// Where the agent's OpAMP instance uid is kept [default: /var/lib/ztrace; file:
    /// opamp.state_dir]
    #[arg(long, value_name = "DIR", env = "ZTRACE_OPAMP_STATE_DIR")]
    pub opamp_state_dir: Option<PathBuf>,
    /// CA certificate (PEM) that verifies an https OpAMP server [file: opamp.certificate]
    #[arg(long, value_name = "FILE")]
    pub opamp_certificate: Option<PathBuf>,
}

/// Everything the daemon's own configuration was resolved from.
pub struct Inputs<'a> {
    pub file: Option<&'a ConfigFile>,
    /// The export flags by file key, and the typed ones.
    pub export_flags: HashMap<&'static str, String>,
    pub export_cli: CliFlags,
    /// The what-to-trace flags.
    pub target_cli: CliFlags,
    pub tail: &'a TailArgs,
    pub env: HashMap<String, String>,
    /// What to trace comes from the file (no target flags).
    pub targets_from_file: bool,
}

impl OpampArgs {
    /// None when no OpAMP endpoint is configured.
    pub fn start(&self, i: Inputs<'_>) -> Result<Option<Start>, String> {
        let flags = OpampFlags {
            endpoint: self.opamp_endpoint.clone(),
            headers: self.opamp_headers.clone(),
            allow: self.opamp_allow.clone(),
            poll_interval: self.opamp_poll_interval,
            state_dir: self.opamp_state_dir.clone(),
            certificate: self.opamp_certificate.clone(),
        };
        let Some(opamp) = config::resolve_opamp(&flags, i.file).map_err(|e| e.0)? else {
            return Ok(None);
        };
        let export_flags = i.export_flags;
        let mut flag_keys: BTreeSet<String> = export_flags.keys().map(|k| k.to_string()).collect();
        if i.tail.any() {
            flag_keys.extend(TAIL_FILE_KEYS.iter().map(|k| k.to_string()));
        }
        let (cli, target_cli, tail, env) = (i.export_cli, i.target_cli, i.tail.clone(), i.env);
        let resolver: Resolver = Box::new(move |file: &ConfigFile| {
            let config = config::resolve(&Sources {
                flags: export_flags.clone(),
                cli: cli.clone(),
                file: Some(file),
                env: env.clone(),
            })
            .map_err(|e| e.0)?;
            let target = config::resolve_target(&Sources {
                cli: target_cli.clone(),
                file: Some(file),
                ..Sources::default()
            })
            .map_err(|e| e.0)?;
            select::Rule::compile(&target.select)?;
            let (tail, anomaly) = tail.config(Some(file))?;
            // Rules are compiled here to check them (the error names statement and column); the
            // daemon compiles them again when it applies them.
            let rules = config::resolve_rules(Some(file)).map_err(|e| e.0)?;
            crate::processors::ottl::Program::compile(&rules).map_err(|e| e.to_string())?;
            Ok(Settings {
                sampler: config.sampler,
                tail,
                anomaly,
                target,
                rules,
            })
        });
        Ok(Some(Start {
            opamp,
            base: Base {
                file: i.file.cloned().unwrap_or_default(),
                flag_keys,
                resolver,
            },
            targets_from_file: i.targets_from_file,
            host_name: crate::capture::process::host_name(),
            identity: None,
        }))
    }
}
