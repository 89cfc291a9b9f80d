//! The traced processes' family tree as userspace saw it being made, and its reconciliation with
//! `/proc` and the kernel's traced set.
//!
//! Why not the live `PPid` chain alone: when a process exits, the kernel re-parents its children
//! to init or a subreaper, so a daemon that double-forks (parent forks child, child forks the
//! grandchild and exits) no longer descends from the parent in `/proc`. The fork records the
//! probes send say who forked whom; [`Lineage`] keeps them, and keeps an exited process's entry
//! for as long as a live traced process descends through it, so a retarget that keeps the
//! parent keeps the grandchild.
//!
//! Each process is known by its PID *and* its start time (`/proc/PID/stat` field 22): a parent's
//! entry is matched only by the process that really forked the child, never by a later process
//! that got the same PID.
//!
//! Lost records: when the ring buffer was full, fork and exit records are lost (counted). The
//! kernel still marked the child traced, so userspace would never know it: no retarget could
//! untrace it, and the sweep of dead PIDs would never look at it. [`reconcile`] compares one
//! snapshot of `/proc` with what userspace knows and what the kernel marks, and says what to
//! learn, trace, untrace and forget (see its docs).

use std::collections::{HashMap, HashSet};

use super::process::ProcStat;

/// A start time not known (the process was gone before it was read).
pub const UNKNOWN_START: u64 = 0;

/// Longest chain of parents followed (a cycle or a corrupt table must end).
const MAX_ANCESTRY: usize = 4096;

/// One process: who forked it (PID and start time), and its own start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    parent: u32,
    parent_start: u64,
    start: u64,
}

/// What userspace knows of the processes it traces (see the module docs).
#[derive(Debug, Default)]
pub struct Lineage {
    /// Traced processes that live, by PID.
    alive: HashMap<u32, Entry>,
    /// Exited processes (PID, start time) kept because a live one may descend through them.
    exited: HashMap<(u32, u64), Entry>,
}

/// One step up the family tree: a parent process as known to [`Lineage::descends_from`].
#[derive(Clone, Copy)]
struct Node {
    pid: u32,
    /// None: not known to the lineage (the live `/proc` chain goes on from it).
    entry: Option<Entry>,
    /// An exited process: never a root, only a link in the chain.
    exited: bool,
}

fn same_start(a: u64, b: u64) -> bool {
    a == UNKNOWN_START || b == UNKNOWN_START || a == b
}

impl Lineage {
    /// `pid` (started at `start`) is traced, forked by `parent` (started at `parent_start`).
    /// Replaces what was known of an earlier process with the PID.
    pub fn learn(&mut self, pid: u32, start: u64, parent: u32, parent_start: u64) {
        self.alive.insert(
            pid,
            Entry {
                parent,
                parent_start,
                start,
            },
        );
    }

    pub fn knows(&self, pid: u32) -> bool {
        self.alive.contains_key(&pid)
    }

    /// The start time recorded for a live traced process.
    pub fn start_of(&self, pid: u32) -> Option<u64> {
        self.alive.get(&pid).map(|e| e.start)
    }

    /// `pid` exited: its entry stays while a live process descends through it ([`Self::prune`]).
    pub fn exited(&mut self, pid: u32) {
        if let Some(e) = self.alive.remove(&pid) {
            self.exited.insert((pid, e.start), e);
        }
    }

    /// `pid` is no longer traced though it lives (a retarget dropped it): it is forgotten, and
    /// no chain goes through it any more.
    pub fn forget(&mut self, pid: u32) {
        self.alive.remove(&pid);
    }

    /// Live traced processes known, and exited ones kept.
    pub fn sizes(&self) -> (usize, usize) {
        (self.alive.len(), self.exited.len())
    }

    /// Drops the exited entries no live process descends through (one pass over the live ones,
    /// each walking up through exited entries only).
    pub fn prune(&mut self) {
        if self.exited.is_empty() {
            return;
        }
        let mut needed: HashSet<(u32, u64)> = HashSet::new();
        for e in self.alive.values() {
            let mut key = (e.parent, e.parent_start);
            for _ in 0..MAX_ANCESTRY {
                let Some(parent) = self.exited.get(&key) else {
                    break;
                };
                if !needed.insert(key) {
                    break;
                }
                key = (parent.parent, parent.parent_start);
            }
        }
        self.exited.retain(|key, _| needed.contains(key));
    }

    /// The parent of `child` as the lineage knows it, else as `proc_stat` (the live `/proc`)
    /// says. None when the chain ends: no parent, or a parent known by its start time that is
    /// neither a known process nor the live one with the PID.
    fn parent(&self, child: &Node, proc_stat: &impl Fn(u32) -> Option<(u32, u64)>) -> Option<Node> {
        let (parent, parent_start) = match child.entry {
            Some(e) => (e.parent, e.parent_start),
            None => (proc_stat(child.pid)?.0, UNKNOWN_START),
        };
        if parent == 0 || parent == child.pid {
            return None;
        }
        if let Some(e) = self.alive.get(&parent)
            && same_start(e.start, parent_start)
        {
            return Some(Node {
                pid: parent,
                entry: Some(*e),
                exited: false,
            });
        }
        // By the exact key: a parent that exited before userspace read its start time was
        // recorded with an unknown one, and its children name it so. Only for a parent named
        // by a fork record: a live `PPid` is never an exited process.
        if child.entry.is_some()
            && let Some(e) = self.exited.get(&(parent, parent_start))
        {
            return Some(Node {
                pid: parent,
                entry: Some(*e),
                exited: true,
            });
        }
        // Not traced (an ancestor of a root, e.g. the shell that started it): the live chain,
        // if the process with the PID is still the parent.
        let (_, start) = proc_stat(parent)?;
        same_start(start, parent_start).then_some(Node {
            pid: parent,
            entry: None,
            exited: false,
        })
    }

    /// True when `pid` descends from a process of `roots` (live processes), through the
    /// parents recorded at fork — exited ones included — and beyond them the live `/proc`
    /// chain (`proc_stat`: a live process's parent and start time).
    pub fn descends_from(
        &self,
        pid: u32,
        roots: &HashSet<u32>,
        proc_stat: impl Fn(u32) -> Option<(u32, u64)>,
    ) -> bool {
        let mut at = Node {
            pid,
            entry: self.alive.get(&pid).copied(),
            exited: false,
        };
        for _ in 0..MAX_ANCESTRY {
            match self.parent(&at, &proc_stat) {
                Some(parent) => {
                    if !parent.exited && roots.contains(&parent.pid) {
                        return true;
                    }
                    at = parent;
                }
                None => return false,
            }
        }
        false
    }

    /// The live traced PIDs.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.alive.keys().copied()
    }
}

/// What a reconcile found to do (see [`reconcile`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Known processes that are gone (exited, or their PID now names another process): forget
    /// them as exited; clear their byte unless listed in `learn` or `trace` (a new owner).
    pub gone: Vec<u32>,
    /// Traced by the kernel, unknown to userspace, descended from a known traced process (their
    /// fork record was lost): (PID, parent).
    pub learn: Vec<(u32, u32)>,
    /// Not traced by the kernel though descended from a known traced process (the fork probe
    /// did not run for them): trace them, (PID, parent).
    pub trace: Vec<(u32, u32)>,
    /// Traced by the kernel with no known traced ancestor (a byte left by a missed exit, or a
    /// descendant whose chain was lost with the records): untrace them.
    pub untrace: Vec<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.gone.is_empty()
            && self.learn.is_empty()
            && self.trace.is_empty()
            && self.untrace.is_empty()
    }
}

/// Compares one snapshot of `/proc` (`snapshot`, see `process::snapshot`) with `lineage` and
/// the kernel's traced set (`kernel_traced`, asked only about live processes unknown to
/// userspace):
/// - a known process not in the snapshot, a zombie, or one whose start time changed is gone;
/// - an unknown live process with a known traced ancestor on its `/proc` chain (any unknown
///   processes between) is learnt if the kernel traces it, traced if not — when children are
///   followed; without, the kernel traces no child, so an unknown traced process is untraced;
/// - an unknown process the kernel traces with no known ancestor is untraced. Precision first:
///   it may be a double-forked descendant whose fork records were all lost, but nothing left
///   tells it from a stale byte.
///
/// `me` (ztrace) is never traced. Cost: one pass over the snapshot, each chain walked once
/// (memoised).
pub fn reconcile(
    snapshot: &[ProcStat],
    lineage: &Lineage,
    mut kernel_traced: impl FnMut(u32) -> bool,
    follow_children: bool,
    me: u32,
) -> Plan {
    let by_pid: HashMap<u32, &ProcStat> = snapshot
        .iter()
        .filter(|s| s.alive)
        .map(|s| (s.pid, s))
        .collect();
    let mut plan = Plan::default();
    let mut known: HashSet<u32> = HashSet::new();
    for pid in lineage.pids() {
        let start = lineage.start_of(pid).unwrap_or(UNKNOWN_START);
        match by_pid.get(&pid) {
            Some(s) if same_start(s.start, start) => {
                known.insert(pid);
            }
            _ => plan.gone.push(pid),
        }
    }
    // Whether a process descends from a known traced one, by the live chain; memoised.
    let mut descends: HashMap<u32, bool> = HashMap::new();
    let mut descends_from_known = |pid: u32| -> bool {
        let mut path = Vec::new();
        let mut at = pid;
        let answer = loop {
            if let Some(&d) = descends.get(&at) {
                break d;
            }
            if path.len() >= MAX_ANCESTRY {
                break false;
            }
            let Some(s) = by_pid.get(&at) else {
                break false;
            };
            path.push(at);
            if s.ppid == 0 || s.ppid == at {
                break false;
            }
            if known.contains(&s.ppid) {
                break true;
            }
            at = s.ppid;
        };
        for p in path {
            descends.insert(p, answer);
        }
        answer
    };
    let mut live: Vec<&ProcStat> = by_pid.values().copied().collect();
    live.sort_unstable_by_key(|s| s.pid);
    for s in live {
        if s.pid == me || known.contains(&s.pid) {
            continue;
        }
        let traced = kernel_traced(s.pid);
        let descends = follow_children && descends_from_known(s.pid);
        match (traced, descends) {
            (true, true) => plan.learn.push((s.pid, s.ppid)),
            (true, false) => plan.untrace.push(s.pid),
            (false, true) => plan.trace.push((s.pid, s.ppid)),
            (false, false) => {}
        }
    }
    plan.gone.sort_unstable();
    plan
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::capture::process;

    /// The live `/proc` of a test: PID → (parent, start).
    fn table(rows: &[(u32, u32, u64)]) -> impl Fn(u32) -> Option<(u32, u64)> {
        let rows: HashMap<u32, (u32, u64)> = rows.iter().map(|&(p, pp, s)| (p, (pp, s))).collect();
        move |pid| rows.get(&pid).copied()
    }

    fn roots(pids: &[u32]) -> HashSet<u32> {
        pids.iter().copied().collect()
    }

    /// 100 (a root, started at 10) forks 101 (at 20), 101 forks 102 (at 30) and exits: the
    /// kernel re-parents 102 to init. The fork records said who forked whom.
    fn double_fork() -> (Lineage, impl Fn(u32) -> Option<(u32, u64)>) {
        let mut l = Lineage::default();
        l.learn(100, 10, 50, 5);
        l.learn(101, 20, 100, 10);
        l.learn(102, 30, 101, 20);
        l.exited(101);
        let live = table(&[
            (1, 0, 1),
            (50, 1, 5),
            (100, 50, 10),
            (102, 1, 30),
            (200, 1, 40),
        ]);
        (l, live)
    }

    #[test]
    fn a_double_forked_grandchild_descends_from_the_original_through_the_exited_child() {
        let (mut l, live) = double_fork();
        l.prune();
        assert_eq!(l.sizes(), (2, 1), "101 kept: 102 descends through it");
        assert!(l.descends_from(102, &roots(&[100]), &live));
        // By the live chain alone it would not (its PPid is 1).
        assert!(!Lineage::default().descends_from(102, &roots(&[100]), &live));
    }

    /// The usual timing: the child forks the grandchild and exits before userspace handles
    /// its fork record, so its start time is unknown; the grandchild names it the same way.
    #[test]
    fn an_intermediate_gone_before_it_was_read_still_links() {
        let mut l = Lineage::default();
        l.learn(100, 10, 50, 5);
        l.learn(101, UNKNOWN_START, 100, 10);
        l.learn(102, 30, 101, l.start_of(101).unwrap());
        l.exited(101);
        l.prune();
        assert_eq!(l.sizes(), (2, 1));
        let live = table(&[(1, 0, 1), (50, 1, 5), (100, 50, 10), (102, 1, 30)]);
        assert!(l.descends_from(102, &roots(&[100]), &live));
        assert!(!l.descends_from(102, &roots(&[50 + 1]), &live));
    }

    #[test]
    fn a_retarget_that_drops_the_original_drops_the_grandchild() {
        let (l, live) = double_fork();
        assert!(!l.descends_from(102, &roots(&[200]), &live));
        assert!(!l.descends_from(102, &roots(&[]), &live));
        // An exited process is never a root, even when a live root now has its PID.
        assert!(!l.descends_from(102, &roots(&[101]), &live));
        // Beyond the traced ones, the live chain: 100's parent 50 as a root keeps 102.
        assert!(l.descends_from(102, &roots(&[50]), &live));
        assert!(l.descends_from(102, &roots(&[1]), &live));
    }

    #[test]
    fn exited_entries_go_once_no_live_process_descends_through_them() {
        let (mut l, _) = double_fork();
        l.exited(102);
        l.prune();
        assert_eq!(l.sizes(), (1, 0));
        // A dropped process is forgotten, not kept as a link (101 stays: 102 still lives).
        let (mut l, _) = double_fork();
        l.forget(100);
        l.prune();
        assert_eq!(l.sizes(), (1, 1));
        assert!(!l.knows(100));
    }

    #[test]
    fn a_parent_pid_reused_by_another_process_is_not_the_parent() {
        let (mut l, _) = double_fork();
        // 100 exits and its PID goes to an unrelated process (started at 99) that a retarget
        // selects: 102 does not descend from it.
        l.exited(100);
        let live = table(&[(1, 0, 1), (100, 1, 99), (102, 1, 30)]);
        assert!(!l.descends_from(102, &roots(&[100]), &live));
        // The same for a parent never traced whose PID was reused: 100's parent 50 (at 5).
        let (l, _) = double_fork();
        let live = table(&[(1, 0, 1), (50, 1, 77), (100, 50, 10), (102, 1, 30)]);
        assert!(!l.descends_from(102, &roots(&[50]), &live));
    }

    #[test]
    fn a_cycle_ends() {
        let mut l = Lineage::default();
        l.learn(7, 1, 8, 2);
        l.learn(8, 2, 7, 1);
        assert!(!l.descends_from(7, &roots(&[9]), table(&[])));
    }

    fn stat(pid: u32, ppid: u32, start: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            start,
            alive: true,
        }
    }

    #[test]
    fn reconcile_learns_lost_children_and_untraces_strays() {
        let mut l = Lineage::default();
        l.learn(100, 10, 1, 1);
        l.learn(300, 12, 1, 1);
        l.learn(400, 13, 1, 1);
        let mut zombie = stat(400, 1, 13);
        zombie.alive = false;
        let snapshot = [
            stat(1, 0, 1),
            stat(100, 1, 10),
            // 101 and its child 102: fork records lost; the kernel traces both.
            stat(101, 100, 20),
            stat(102, 101, 21),
            // 103: a child of 100 the fork probe missed (not traced by the kernel).
            stat(103, 100, 22),
            // 300's PID now names another process (start 90) the kernel still marks.
            stat(300, 1, 90),
            zombie,
            // 500: marked by the kernel, no traced ancestor (a stale byte).
            stat(500, 1, 30),
            // 600: unrelated and untraced.
            stat(600, 1, 31),
            // ztrace itself, a child of a traced process here: never traced.
            stat(700, 100, 32),
        ];
        let kernel: HashSet<u32> = [101, 102, 300, 500].into();
        let plan = reconcile(&snapshot, &l, |p| kernel.contains(&p), true, 700);
        assert_eq!(
            plan,
            Plan {
                gone: vec![300, 400],
                learn: vec![(101, 100), (102, 101)],
                trace: vec![(103, 100)],
                untrace: vec![300, 500],
            }
        );
        // Without children followed the kernel marks no child: every unknown one is a stray.
        let plan = reconcile(&snapshot, &l, |p| kernel.contains(&p), false, 700);
        assert_eq!(plan.learn, vec![]);
        assert_eq!(plan.trace, vec![]);
        assert_eq!(plan.untrace, vec![101, 102, 300, 500]);
        // Nothing to do when userspace and the kernel agree.
        let quiet = [stat(1, 0, 1), stat(100, 1, 10), stat(600, 1, 31)];
        let mut l = Lineage::default();
        l.learn(100, 10, 1, 1);
        assert!(reconcile(&quiet, &l, |p| p == 100, true, 700).is_empty());
    }

    /// The reconcile path through a `/proc` tree on disk (a temp dir standing in for `/proc`):
    /// the same reader the daemon uses on the real one.
    #[test]
    fn reconcile_reads_a_proc_tree() {
        let root = std::env::temp_dir().join(format!("ztrace-lineage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |pid: u32, ppid: u32, state: &str, start: u64| {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            // The kernel's format: a name in parentheses (here with a space and a parenthesis).
            let text = format!(
                "{pid} (a (b) c) {state} {ppid} {pid} {pid} 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 {start} 3133440 389 18446744073709551615 0 0 0 0 0\n"
            );
            std::fs::write(dir.join("stat"), text).unwrap();
        };
        write(1, 0, "S", 1);
        write(100, 1, "S", 10);
        write(101, 100, "R", 20);
        write(102, 1, "Z", 21);
        write(500, 1, "S", 30);
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::write(root.join("version"), "not a process").unwrap();
        let snapshot = process::snapshot(&root);
        let mut l = Lineage::default();
        l.learn(100, 10, 1, 1);
        l.learn(102, 21, 100, 10);
        let kernel: HashSet<u32> = [100, 101, 500].into();
        let plan = reconcile(&snapshot, &l, |p| kernel.contains(&p), true, 9999);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(snapshot.len(), 5);
        assert_eq!(plan.gone, vec![102], "a zombie has exited");
        assert_eq!(plan.learn, vec![(101, 100)]);
        assert_eq!(plan.untrace, vec![500]);
    }

    /// The cost of a reconcile on a host with many processes: 2,000 `sleep`s started here, all
    /// known as traced children of this process, the rest of the host unknown. Run with
    /// `cargo +1.95.0 test --release -p ztrace -- --ignored reconcile_cost --nocapture`.
    #[test]
    #[ignore]
    fn reconcile_cost() {
        let me = std::process::id();
        let mut children: Vec<std::process::Child> = (0..2000)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut l = Lineage::default();
        for c in &children {
            l.learn(c.id(), UNKNOWN_START, me, UNKNOWN_START);
        }
        // CPU time of this thread (user + system), which the reading costs whatever the load.
        let cpu = || {
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: getrusage writes into the struct it is given.
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            std::time::Duration::from_micros(us(u.ru_utime) + us(u.ru_stime))
        };
        let mut runs = Vec::new();
        for _ in 0..5 {
            let (began, cpu_began) = (std::time::Instant::now(), cpu());
            let snapshot = process::snapshot(process::proc_root());
            let read = began.elapsed();
            let plan = reconcile(&snapshot, &l, |p| l.knows(p), true, me);
            let total = (began.elapsed(), cpu() - cpu_began);
            runs.push((snapshot.len(), read, total, plan.gone.len()));
        }
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (n, read, total, gone) in runs {
            eprintln!(
                "reconcile: {n} processes, /proc read {read:?}, total {total:?}, gone {gone}"
            );
        }
    }

    #[test]
    fn stat_lines_parse_as_the_kernel_writes_them() {
        let line = "13924 (cat) R 13881 13881 11237 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 2473614 3133440 389 18446744073709551615 94083782840320";
        let s = process::parse_stat(13924, line).unwrap();
        assert_eq!((s.ppid, s.start, s.alive), (13881, 2473614, true));
        assert!(process::parse_stat(1, "1 (x) S 0").is_none(), "cut short");
        assert!(process::parse_stat(1, "").is_none());
        // This process, for real.
        let me = process::stat_at(process::proc_root(), std::process::id()).unwrap();
        assert_eq!(me.ppid, process::parent_of(std::process::id()).unwrap());
        assert!(me.alive && me.start > 0);
    }
}
