//! Process lifecycle of traced processes: children of a traced process become traced (unless
//! userspace disabled following), and a process whose last thread exits leaves the traced set
//! (`maps::TRACED`, a byte per TGID).
//!
//! Why the set stays exact, race by race:
//! - PID reuse: the byte is cleared at the exit of a process's last thread (`group_dead`), so a
//!   PID the kernel hands out again starts untraced, unless its new owner is the child of a
//!   traced process (then the fork stores the parent's flags: traced, rightly). A stale byte
//!   needs a missed exit, and the ways to miss one are: the kernel skipping this program
//!   (a tracepoint program does not run nested inside another BPF program on the same CPU: it
//!   counts a recursion miss instead), the `group_dead` read failing on a kernel without the
//!   field (then the process stays marked), a process userspace seeded exiting before this
//!   program was attached, or userspace adding a process after its exit ran (a selector matched
//!   an exec, and the process exited before userspace stored its byte). Userspace covers the
//!   last three: once a second it checks that every process it traces is alive and clears the
//!   byte of one that is not (`Capture::untrace`). A PID reused within that second is told
//!   apart by its start time (`/proc/PID/stat`), which userspace keeps for every traced
//!   process: it then reconciles with `/proc` and untraces the new owner unless it descends from
//!   a traced process (userspace `capture::lineage`).
//! - Exec keeps the TGID and the byte: nothing to do here (userspace re-inspects the process
//!   and may clear `TLS`).
//! - Fork: the tracepoint fires before the child first runs, so the child cannot exit before
//!   its byte is stored. A fork racing with the parent's last thread exiting (another thread
//!   forks meanwhile) copies the flags the parent had: the child is alive, so traced is right.
//!   Userspace never removes a live process, so there is no removal for a fork to race with;
//!   an update of the parent's flags by userspace (`TLS`) may miss the child, which userspace
//!   inspects on its own fork event.
//! - Seeding: userspace stores the bytes of the processes it starts with before attaching any
//!   program, so nothing runs concurrently with those stores.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use ztrace_abi::{ProcEvent, counter, kind, proc};

use crate::{
    kernel::{task_group_dead, task_tgid},
    maps::{config, count, header, is_traced, set_traced, submit, traced_flags},
};

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`. Fires for new
/// threads too; those share the parent's TGID and are skipped.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The child maps what its parent did (libssl included): it inherits the flags.
    let Some(flags) = traced_flags(parent_tgid) else {
        return 0;
    };
    let cfg = config();
    if cfg.follow_children == 0 {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    let Some(child_tgid) = task_tgid(&cfg.offsets, child) else {
        count(counter::READ_FAILED);
        return 0;
    };
    if child_tgid == parent_tgid {
        return 0;
    }
    set_traced(child_tgid, flags);
    emit(proc::FORK, child_tgid, parent_tgid);
    0
}

/// `sched:sched_process_exit`; userspace stores the offset of its `group_dead` field (read from
/// the tracepoint's format file) in `CONFIG.exit_group_dead_offset`.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_traced(tgid) {
        return 0;
    }
    let cfg = config();
    let group_dead = if cfg.exit_group_dead_offset != ztrace_abi::OFFSET_UNKNOWN {
        // SAFETY: offset comes from the tracepoint's own format description.
        unsafe { ctx.read_at::<u8>(cfg.exit_group_dead_offset as usize) }.unwrap_or(0) != 0
    } else {
        // Kernels before the field existed (Debian 12's 6.1): ask the task itself.
        // SAFETY: plain helper call; the pointer is only read through probe-read helpers.
        let task = unsafe { bpf_get_current_task() };
        task_group_dead(&cfg.offsets, task).unwrap_or(false)
    };
    if !group_dead {
        return 0;
    }
    set_traced(tgid, 0);
    emit(proc::EXIT, tgid, 0);
    0
}

/// `sched:sched_process_exec`: a traced process replaced its program; userspace re-reads what its
/// Resource says (executable, command line). With selectors, any other process's exec is
/// reported too, so that one started later is matched and traced from its first request.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_traced(tgid) {
        emit(proc::EXEC, tgid, 0);
    } else if config().report_execs != 0 {
        emit(proc::EXEC_UNTRACED, tgid, 0);
    }
    0
}

#[inline(always)]
fn emit(op: u8, pid: u32, other: u32) {
    submit(&ProcEvent {
        header: header(kind::PROC),
        pid,
        other,
        op,
        _pad: [0; 7],
    });
}
