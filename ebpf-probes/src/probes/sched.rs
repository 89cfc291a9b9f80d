//! Process lifecycle of traced processes: children of a traced process become traced (unless
//! userspace disabled following), and a process whose last thread exits leaves the map.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use ztrace_abi::{ProcEvent, counter, kind, proc};

use crate::{
    kernel::task_tgid,
    maps::{TRACED, config, count, header, is_traced, mark_traced, submit, traced_flags},
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
    mark_traced(child_tgid);
    let _ = TRACED.insert(child_tgid, flags, 0);
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
    let offset = config().exit_group_dead_offset as usize;
    // SAFETY: offset comes from the tracepoint's own format description.
    let group_dead: u8 = unsafe { ctx.read_at(offset).unwrap_or(0) };
    if group_dead == 0 {
        return 0;
    }
    let _ = TRACED.remove(tgid);
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
