//! The userspace data path after the ring buffer, with no I/O of its own:
//! raw record → `decode` → `conntrack`/`assemble` (protocol parsing, exchanges) → `link` → spans.
//! The daemon feeds it live records; tests (and replay) feed it records they made.

use ztrace_abi::{conn, proc};

use crate::{
    assemble::{AssembleStats, Assembler},
    decode::{Event, decode},
    link::{LinkStats, Linker},
    model::Span,
};

/// Connections idle this long are forgotten (their close was never seen).
const CONN_IDLE_NS: u64 = 300_000_000_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    pub records: u64,
    pub decode_errors: u64,
    pub assemble: AssembleStats,
    pub link: LinkStats,
}

/// A process-level change the daemon must act on (read /proc, stop when all are gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcChange {
    Forked { pid: u32, parent: u32 },
    Exited { pid: u32 },
    Execed { pid: u32 },
}

pub struct Pipeline {
    assembler: Assembler,
    linker: Linker,
    records: u64,
    decode_errors: u64,
    last_ns: u64,
}

impl Pipeline {
    pub fn new(mono_to_unix: i128) -> Self {
        Self {
            assembler: Assembler::new(65_536),
            linker: Linker::new(mono_to_unix, 200_000),
            records: 0,
            decode_errors: 0,
            last_ns: 0,
        }
    }

    /// Processes one raw ring-buffer record.
    pub fn on_record(&mut self, raw: &[u8], changes: &mut Vec<ProcChange>) {
        self.records += 1;
        let event = match decode(raw) {
            Ok(e) => e,
            Err(e) => {
                self.decode_errors += 1;
                if self.decode_errors.is_power_of_two() {
                    log::warn!("undecodable record ({e}); {} so far", self.decode_errors);
                }
                return;
            }
        };
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("{event:?}");
        }
        match event {
            Event::Data(ev, payload) => {
                self.last_ns = self.last_ns.max(ev.header.ts_ns);
                self.assembler.on_data(&ev, payload, &mut self.linker);
            }
            Event::Conn(ev) => {
                self.last_ns = self.last_ns.max(ev.header.ts_ns);
                if ev.op == conn::CLOSE {
                    self.assembler.on_close(ev.header.tgid, ev.sock_id, ev.header.ts_ns, &mut self.linker);
                }
            }
            Event::Proc(ev) => match ev.op {
                proc::FORK => changes.push(ProcChange::Forked { pid: ev.pid, parent: ev.other }),
                proc::EXIT => {
                    self.assembler.on_exit(ev.pid, ev.header.ts_ns, &mut self.linker);
                    changes.push(ProcChange::Exited { pid: ev.pid });
                }
                proc::EXEC => changes.push(ProcChange::Execed { pid: ev.pid }),
                _ => {}
            },
        }
    }

    /// Releases settled spans. `now_ns` is monotonic time (the kernel's clock).
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let now_ns = now_ns.max(self.last_ns);
        self.assembler
            .expire(now_ns.saturating_sub(CONN_IDLE_NS), &mut self.linker);
        self.linker.poll(now_ns, out);
    }

    /// Shutdown: everything still held is finished and released.
    pub fn drain(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        let now_ns = now_ns.max(self.last_ns);
        for key in self.assembler.conns.all_keys() {
            self.assembler.on_close(key.tgid, key.sock_id, now_ns, &mut self.linker);
        }
        self.linker.drain(now_ns, out);
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            records: self.records,
            decode_errors: self.decode_errors,
            assemble: self.assembler.stats,
            link: self.linker.stats,
        }
    }
}
