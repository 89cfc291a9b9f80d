//! What to trace beyond the PIDs given: the selector rules (`--exe`, `--port`,
//! `[[target.select]]`), matched at start and at each exec, and their replacement while running
//! — by SIGHUP (the config file re-read) or by a remote configuration (OpAMP).
//!
//! A replacement (a *retarget*) makes the traced set what the new configuration selects:
//! - what it adds is traced at once: the PIDs it names (those alive) and the running processes
//!   its rules match;
//! - what it no longer selects is untraced [`DESELECT_GRACE`] later. Kept then are the PIDs it
//!   names, the running processes its rules match at that moment, and — unless
//!   `--no-children`/`target.no_children` — their descendants (from the fork records, see
//!   below: a child inherits tracing in the kernel at fork). Every other traced process leaves
//!   the kernel's traced set (its byte is cleared), and the log says how many did (which ones at
//!   debug level). See [`no_longer_selected`].
//!
//! Why a grace and not at once: a request in progress on a dropped process when the reload
//! comes would lose its response (or the rest of its body) and turn into a broken span. Two
//! seconds let nearly every request finish while the probes still feed the assembler; the cost
//! is that the dropped processes' traffic in those two seconds is still exported. Waiting for
//! the assembler to have nothing open for a process instead would need per-process bookkeeping
//! in the assembler and could wait forever on a busy keep-alive connection. An exchange still
//! open when the grace ends is ended as for a connection that goes quiet. A second retarget
//! within the grace starts it again, and the decision is then made for the newest configuration.
//!
//! Processes are judged by what they are when the grace ends, as a fresh start with the new
//! configuration would judge them: a process that was traced because it matched `--exe X` and
//! has since exec'd Y is kept only if Y matches a rule, its PID is named, or it descends from a
//! kept process. (Between retargets nothing is re-judged: a traced process that execs stays
//! traced, as before.) The decision reads /proc at that moment and looks only at processes
//! traced then — the exit events and the 1 s sweep of dead PIDs have removed the exited ones —
//! so a PID reused in between is judged as its new owner, never untraced for its old one.
//! Ancestry is what the fork records said (`capture::lineage`), not only the live `PPid` chain: a
//! descendant whose chain to a kept process passes through one that has exited (it was
//! re-parented, e.g. a daemon that double-forked) still descends from it and is kept; an exited
//! process is never a root itself, and a parent is recognised by its start time, so a process
//! that got an exited parent's PID does not adopt its descendants. Above the traced processes
//! (the shell that started a root) the live chain is followed. Whether children are followed is the running daemon's
//! setting (the kernel's, chosen at start): `target.no_children` takes a restart to change.
//!
//! A child a dropped process forked just before it was untraced inherited the traced byte; its
//! fork is reported afterwards, and the daemon untraces it then (`live.rs`, `Processes::dropped`).
//!
//! An invalid configuration — and one that names no process and no rule — changes nothing.
//! `--pid` PIDs are never dropped: a command line that chooses what to trace leaves SIGHUP no
//! file to re-read and the OpAMP server no right to change the targets.

use std::{collections::HashSet, time::Duration};

use anyhow::Result;
use tokio::time::Instant;

use crate::capture::{lineage::Lineage, process, select};
use crate::config::Target;

/// SIGHUP: re-reads `[target] pids` and `[[target.select]]` from `path`, replaces the selectors
/// and returns the processes to trace now (named where the file names them). Processes no longer
/// selected are untraced after the grace (see the module docs); an invalid file changes nothing.
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
    /// Those of `found` that were running before they matched (a retarget's, a late port's),
    /// so may have children already: those are traced too. A process matched at its exec is
    /// not listed: it forks its children after, and walking /proc for every exec a selector
    /// matches would cost a busy host dearly.
    pub(super) running: Vec<u32>,
    last_watch: Instant,
    /// The PIDs the configuration names (kept by [`Selection::due_drops`]).
    pids: Vec<u32>,
    /// When the processes a retarget no longer selects are untraced.
    prune_at: Option<Instant>,
}

/// How long processes a retarget no longer selects stay traced (see the module docs).
pub(super) const DESELECT_GRACE: Duration = Duration::from_secs(2);

/// The processes of `traced` a configuration no longer selects: neither in `roots` (the PIDs it
/// names and the processes its rules match) nor, when `follow_children`, a descendant of one —
/// by the parents `lineage` recorded at fork (exited ones included), and beyond them by
/// `proc_stat` (a live process's parent and start time; None when gone). Sorted.
pub(super) fn no_longer_selected(
    traced: &HashSet<u32>,
    roots: &HashSet<u32>,
    follow_children: bool,
    lineage: &Lineage,
    proc_stat: impl Fn(u32) -> Option<(u32, u64)>,
) -> Vec<u32> {
    let selected = |pid: u32| {
        roots.contains(&pid) || (follow_children && lineage.descends_from(pid, roots, &proc_stat))
    };
    let mut out: Vec<u32> = traced.iter().copied().filter(|&p| !selected(p)).collect();
    out.sort_unstable();
    out
}

/// A live process's parent and start time, from `/proc`.
pub(super) fn live_parent(pid: u32) -> Option<(u32, u64)> {
    process::stat_at(process::proc_root(), pid)
        .filter(|s| s.alive)
        .map(|s| (s.ppid, s.start))
}

/// New processes watched for a port at once; more are not watched (and counted in the log).
const MAX_PORT_WATCH: usize = 1024;

impl Selection {
    /// Replaces the rules with `target`'s and returns the processes to trace now: its PIDs
    /// (those alive) and the running processes the new rules match; what it no longer selects
    /// is due [`DESELECT_GRACE`] later ([`Selection::due_drops`]). An invalid rule, or a target
    /// naming no PID and no rule, changes nothing.
    pub(super) fn retarget(&mut self, target: &Target) -> Result<Vec<(u32, Option<String>)>> {
        let rules = select::Rule::compile(&target.select).map_err(|e| anyhow::anyhow!(e))?;
        if rules.is_empty() && target.pids.is_empty() {
            anyhow::bail!(
                "it selects no process (no [target] pids, no [[target.select]] rule); ztrace would trace nothing"
            );
        }
        *self = Selection::new(rules);
        self.pids = target.pids.iter().map(|p| p.pid).collect();
        self.prune_at = Some(Instant::now() + DESELECT_GRACE);
        let mut out: Vec<(u32, Option<String>)> = target
            .pids
            .iter()
            .filter(|p| process::validate(p.pid).is_ok())
            .map(|p| (p.pid, p.service_name.clone()))
            .collect();
        out.extend(self.initial());
        self.running = out.iter().map(|&(pid, _)| pid).collect();
        Ok(out)
    }

    pub(super) fn new(rules: Vec<select::Rule>) -> Self {
        Selection {
            needs_ports: rules.iter().any(select::Rule::needs_ports),
            rules,
            watching: Vec::new(),
            found: Vec::new(),
            running: Vec::new(),
            last_watch: Instant::now(),
            pids: Vec::new(),
            prune_at: None,
        }
    }

    /// Once the grace after a retarget is over: the processes of `traced` the configuration no
    /// longer selects, judged by /proc now (see the module docs). None before, or without a
    /// retarget.
    pub(super) fn due_drops(
        &mut self,
        traced: &HashSet<u32>,
        follow_children: bool,
        lineage: &Lineage,
    ) -> Option<Vec<u32>> {
        if Instant::now() < self.prune_at? {
            return None;
        }
        self.prune_at = None;
        let mut roots: HashSet<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|&p| process::is_alive(p))
            .collect();
        if !self.rules.is_empty() {
            roots.extend(select::scan(&self.rules).into_iter().map(|(pid, _)| pid));
        }
        Some(no_longer_selected(
            traced,
            &roots,
            follow_children,
            lineage,
            live_parent,
        ))
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
            let from = self.found.len();
            watching.retain(|&(pid, deadline)| now < deadline && !self.check(pid));
            self.watching = watching;
            let late = self.found[from..].iter().map(|&(pid, _)| pid);
            self.running.extend(late);
        }
        std::mem::take(&mut self.found)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::no_longer_selected;
    use crate::capture::lineage::{Lineage, UNKNOWN_START};

    /// A process table: 1 is init; 100 a matched server with workers 101, 102 and a grandchild
    /// 103 (of 102); 200 a server no longer selected with worker 201; 300 a process named by PID
    /// with child 301; 400 re-parented to init (its parent, a child of 100, exited).
    fn table() -> HashMap<u32, u32> {
        HashMap::from([
            (1, 0),
            (100, 1),
            (101, 100),
            (102, 100),
            (103, 102),
            (200, 1),
            (201, 200),
            (300, 1),
            (301, 300),
            (400, 1),
        ])
    }

    fn drops(traced: &[u32], roots: &[u32], follow_children: bool) -> Vec<u32> {
        let table = table();
        let traced: HashSet<u32> = traced.iter().copied().collect();
        let roots: HashSet<u32> = roots.iter().copied().collect();
        no_longer_selected(
            &traced,
            &roots,
            follow_children,
            &Lineage::default(),
            |pid| table.get(&pid).map(|&p| (p, UNKNOWN_START)),
        )
    }

    const ALL: [u32; 9] = [100, 101, 102, 103, 200, 201, 300, 301, 400];

    #[test]
    fn keeps_roots_and_their_descendants_and_drops_the_rest() {
        assert_eq!(drops(&ALL, &[100, 300], true), vec![200, 201, 400]);
    }

    #[test]
    fn without_children_only_the_roots_stay() {
        assert_eq!(
            drops(&ALL, &[100, 300], false),
            vec![101, 102, 103, 200, 201, 301, 400]
        );
    }

    #[test]
    fn a_descendant_that_is_itself_selected_keeps_its_own_children() {
        // 102 matches now though its parent 100 does not: 102 and 103 stay, 100 and 101 go.
        assert_eq!(
            drops(&ALL, &[102], true),
            vec![100, 101, 200, 201, 300, 301, 400]
        );
    }

    #[test]
    fn only_traced_processes_are_dropped_and_unknown_parents_end_the_chain() {
        // 500 is not in the table (gone): nothing to follow, it is dropped; untraced processes
        // (here 200) are never in the answer.
        assert_eq!(drops(&[101, 201, 500], &[100], true), vec![201, 500]);
        assert!(drops(&[], &[100], true).is_empty());
    }

    #[test]
    fn init_as_a_root_keeps_everything_and_no_root_keeps_nothing() {
        assert!(drops(&ALL, &[1], true).is_empty());
        assert_eq!(drops(&ALL, &[], true), ALL.to_vec());
    }

    #[test]
    fn a_target_selecting_nothing_changes_nothing_and_one_that_does_starts_the_grace() {
        let mut target =
            crate::config::resolve_target(&crate::config::Sources::default()).expect("target");
        let mut selection = super::Selection::new(Vec::new());
        let err = selection.retarget(&target).expect_err("nothing selected");
        assert!(err.to_string().contains("selects no process"), "{err}");
        assert!(selection.prune_at.is_none() && selection.pids.is_empty());
        target.pids.push(crate::config::PidSpec {
            pid: std::process::id(),
            service_name: None,
        });
        selection.retarget(&target).expect("a PID selected");
        assert_eq!(selection.pids, vec![std::process::id()]);
        // A running process it names (not this one: ztrace refuses to trace itself) was running
        // before it was selected: its existing children are to be traced too.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        target.pids[0].pid = sleeper.id();
        selection.retarget(&target).expect("a PID selected");
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(selection.running, vec![sleeper.id()]);
        assert!(selection.prune_at.is_some());
        // Not due before the grace is over.
        assert!(
            selection
                .due_drops(&HashSet::new(), true, &Lineage::default())
                .is_none()
        );
    }

    #[test]
    fn a_cycle_in_the_table_ends() {
        let traced = HashSet::from([7]);
        let got = no_longer_selected(
            &traced,
            &HashSet::from([9]),
            true,
            &Lineage::default(),
            |pid| Some((if pid == 7 { 8 } else { 7 }, UNKNOWN_START)),
        );
        assert_eq!(got, vec![7]);
    }

    /// 100 forks 110, which forks 111 and exits (111 is re-parented to init, 1): the fork
    /// records keep 111 in 100's tree, so a retarget that keeps 100 keeps 111, and one that
    /// drops 100 drops 111.
    #[test]
    fn a_double_forked_grandchild_follows_its_original_ancestor() {
        let mut table = table();
        table.insert(111, 1);
        let mut lineage = Lineage::default();
        lineage.learn(100, 10, 1, UNKNOWN_START);
        lineage.learn(110, 20, 100, 10);
        lineage.learn(111, 30, 110, 20);
        lineage.exited(110);
        lineage.prune();
        let traced: HashSet<u32> = [100, 111, 200].into();
        let live = |pid: u32| table.get(&pid).map(|&p| (p, UNKNOWN_START));
        let drops = |roots: &[u32]| {
            let roots: HashSet<u32> = roots.iter().copied().collect();
            no_longer_selected(&traced, &roots, true, &lineage, live)
        };
        assert_eq!(drops(&[100]), vec![200], "100 kept: 111 kept with it");
        assert_eq!(drops(&[200]), vec![100, 111], "100 dropped: 111 with it");
        // By the live chain alone (the old behaviour) 111 was dropped with 100 kept.
        let by_ppid = no_longer_selected(&traced, &[100].into(), true, &Lineage::default(), live);
        assert_eq!(by_ppid, vec![111, 200]);
    }
}
