//! The record sink: the live daemon's other destination. It writes every captured record, and
//! the metadata of every traced process, to a record file for `ztrace replay`, decoding nothing
//! but the process lifecycle events that steer capture (follow children, stop at exit). The file
//! format itself is `record.rs`'s.

use std::{fs::File, io::BufWriter, path::Path, path::PathBuf};

use anyhow::{Context, Result};
use ztrace_abi::{ABI_VERSION, kind};

use crate::{
    capture::KernelCounters,
    decode::{Event, decode, kind_of},
    model::ProcessInfo,
    runtime::pipeline::ProcChange,
    runtime::record,
};

pub(super) struct RecordSink {
    writer: record::Writer<BufWriter<File>>,
    path: PathBuf,
    records: u64,
}

impl RecordSink {
    pub(super) fn create(path: &Path, mono_to_unix: i128, payload_cap: u32) -> Result<Self> {
        let writer = record::Writer::create(
            path,
            record::Header {
                abi_version: ABI_VERSION,
                mono_to_unix_ns: mono_to_unix as i64,
                payload_cap,
            },
        )
        .with_context(|| format!("creating record file {}", path.display()))?;
        Ok(RecordSink {
            writer,
            path: path.to_path_buf(),
            records: 0,
        })
    }

    pub(super) fn process(&mut self, info: &ProcessInfo) -> Result<()> {
        self.writer.process(info)?;
        Ok(())
    }

    pub(super) fn on_record(&mut self, raw: &[u8], changes: &mut Vec<ProcChange>) -> Result<()> {
        self.writer.record(raw)?;
        self.records += 1;
        // Process lifecycle still steers the recorder (follow children, stop at exit).
        if kind_of(raw) == Some(kind::PROC)
            && let Ok(Event::Proc(ev)) = decode(raw)
        {
            changes.extend(ProcChange::from_event(&ev));
        }
        Ok(())
    }

    pub(super) fn finish(mut self, counters: &KernelCounters) -> Result<()> {
        let path = &self.path;
        self.writer
            .flush()
            .with_context(|| format!("writing {}", path.display()))?;
        log::info!(
            "summary: recorded {} kernel events to {} ({} lost in the kernel: ring buffer full {}, arg map full {}); replay with `ztrace replay {}`",
            self.records,
            path.display(),
            counters.ringbuf_full + counters.args_full,
            counters.ringbuf_full,
            counters.args_full,
            path.display()
        );
        Ok(())
    }
}
