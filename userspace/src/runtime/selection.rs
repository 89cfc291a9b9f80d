//! What to trace beyond the PIDs given: the selector rules (`--exe`, `--port`,
//! `[[target.select]]`), matched at start and at each exec, and their replacement while running
//! — by SIGHUP (the config file re-read) or by a remote configuration (OpAMP). Processes already
//! traced stay traced when the rules change.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::capture::{process, select};
use crate::config::Target;

/// SIGHUP: re-reads `[target] pids` and `[[target.select]]` from `path`, replaces the selectors
/// and returns the processes to trace now (named where the file names them). Processes already
/// traced stay traced; an invalid file changes nothing.
pub(super) fn reload(
    path: &std::path::Path,
    selection: &mut Selection,
) -> Result<Vec<(u32, Option<String>)>> {
    let file = crate::config::ConfigFile::load(path).map_err(|e| anyhow::anyhow!(e.0))?;
    let target = crate::config::resolve_target(&crate::config::Sources {
        file: Some(&file),
        ..crate::config::Sources::default()
    })
    .map_err(|e| anyhow::anyhow!(e.0))?;
    let out = selection.retarget(&target)?;
    log::info!(
        "SIGHUP: re-read {}: {} selector rule(s){}{}",
        path.display(),
        selection.rules.len(),
        if selection.rules.is_empty() { "" } else { ": " },
        selection.describe()
    );
    Ok(out)
}

/// Processes chosen by selectors: matched at start, then at each exec; a process that may still
/// open its port is re-checked (its own sockets only) for [`select::PORT_WATCH`].
pub(super) struct Selection {
    pub(super) rules: Vec<select::Rule>,
    needs_ports: bool,
    /// New processes not matched yet that a port rule may still match, with their deadline.
    watching: Vec<(u32, Instant)>,
    /// Matched since the last [`Selection::matched`].
    pub(super) found: Vec<(u32, Option<String>)>,
    last_watch: Instant,
}

/// New processes watched for a port at once; more are not watched (and counted in the log).
const MAX_PORT_WATCH: usize = 1024;

impl Selection {
    /// Replaces the rules with `target`'s and returns the processes to trace now: its PIDs
    /// (those alive) and the running processes the new rules match. An invalid rule changes
    /// nothing.
    pub(super) fn retarget(&mut self, target: &Target) -> Result<Vec<(u32, Option<String>)>> {
        let rules = select::Rule::compile(&target.select).map_err(|e| anyhow::anyhow!(e))?;
        *self = Selection::new(rules);
        let mut out: Vec<(u32, Option<String>)> = target
            .pids
            .iter()
            .filter(|p| process::validate(p.pid).is_ok())
            .map(|p| (p.pid, p.service_name.clone()))
            .collect();
        out.extend(self.initial());
        Ok(out)
    }

    pub(super) fn new(rules: Vec<select::Rule>) -> Self {
        Selection {
            needs_ports: rules.iter().any(select::Rule::needs_ports),
            rules,
            watching: Vec::new(),
            found: Vec::new(),
            last_watch: Instant::now(),
        }
    }

    pub(super) fn describe(&self) -> String {
        let rules: Vec<String> = self.rules.iter().map(|r| r.to_string()).collect();
        rules.join("; ")
    }

    fn name_of(&self, rule: usize) -> Option<String> {
        self.rules[rule].service_name.clone()
    }

    pub(super) fn initial(&self) -> Vec<(u32, Option<String>)> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        select::scan(&self.rules)
            .into_iter()
            .map(|(pid, rule)| (pid, self.name_of(rule)))
            .collect()
    }

    fn check(&mut self, pid: u32) -> bool {
        let Some(facts) = select::Facts::read(pid, self.needs_ports) else {
            return true; // gone: nothing to watch
        };
        match self.rules.iter().position(|r| r.matches(&facts)) {
            Some(rule) => {
                let name = self.name_of(rule);
                self.found.push((pid, name));
                true
            }
            None => false,
        }
    }

    pub(super) fn on_exec(&mut self, pid: u32) {
        if self.rules.is_empty() || pid == std::process::id() {
            return;
        }
        if !self.check(pid) && self.needs_ports {
            if self.watching.len() < MAX_PORT_WATCH {
                self.watching
                    .push((pid, Instant::now() + select::PORT_WATCH));
            } else {
                log::debug!("not watching process {pid} for a port: {MAX_PORT_WATCH} already are");
            }
        }
    }

    /// What matched since the last call; re-checks the watched processes every 200 ms.
    pub(super) fn matched(&mut self) -> Vec<(u32, Option<String>)> {
        if !self.watching.is_empty() && self.last_watch.elapsed() >= Duration::from_millis(200) {
            self.last_watch = Instant::now();
            let now = Instant::now();
            let mut watching = std::mem::take(&mut self.watching);
            watching.retain(|&(pid, deadline)| now < deadline && !self.check(pid));
            self.watching = watching;
        }
        std::mem::take(&mut self.found)
    }
}
