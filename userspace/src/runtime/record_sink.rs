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
    /// The first write that failed (a full disk, an I/O error): nothing is written after it, so
    /// the file holds whole frames up to it, and capture stops.
    failed: Option<std::io::Error>,
    /// Records that came after the failure (not written).
    not_written: u64,
}

impl RecordSink {
    pub(super) fn create(
        path: &Path,
        mono_to_unix: i128,
        opts: &crate::capture::CaptureOptions,
    ) -> Result<Self> {
        let writer = record::Writer::create(
            path,
            record::Header {
                abi_version: ABI_VERSION,
                mono_to_unix_ns: mono_to_unix as i64,
                payload_cap: opts.payload_cap,
                flags: match opts.capture_stdio {
                    true => record::FLAG_CAPTURE_LOGS,
                    false => 0,
                },
            },
        )
        .with_context(|| format!("creating record file {}", path.display()))?;
        Ok(RecordSink {
            writer,
            path: path.to_path_buf(),
            records: 0,
            failed: None,
            not_written: 0,
        })
    }

    pub(super) fn process(&mut self, info: &ProcessInfo) -> Result<()> {
        if self.failed.is_none()
            && let Err(e) = self.writer.process(info)
        {
            self.fail(e);
        }
        Ok(())
    }

    pub(super) fn on_record(&mut self, raw: &[u8], changes: &mut Vec<ProcChange>) -> Result<()> {
        if self.failed.is_some() {
            self.not_written += 1;
        } else if let Err(e) = self.writer.record(raw) {
            self.fail(e);
            self.not_written += 1;
        } else {
            self.records += 1;
        }
        // Process lifecycle still steers the recorder (follow children, stop at exit), and a
        // TLS handshake may mean OpenSSL to probe (`super::tls_watch`).
        if matches!(kind_of(raw), Some(kind::PROC | kind::DATA)) {
            match decode(raw) {
                Ok(Event::Proc(ev)) => changes.extend(ProcChange::from_event(&ev)),
                Ok(Event::Data(ev, payload)) => changes.extend(ProcChange::from_data(&ev, payload)),
                _ => {}
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: std::io::Error) {
        log::error!(
            "writing {}: {e}; stopping capture (the file keeps the whole events written before)",
            self.path.display(),
        );
        self.failed = Some(e);
    }

    /// Writes out what is buffered (each second: a recording cut short by a crash or a full
    /// disk loses at most the last second, and a full disk is noticed within one).
    pub(super) fn flush(&mut self) {
        if self.failed.is_none()
            && let Err(e) = self.writer.flush()
        {
            self.fail(e);
        }
    }

    /// Whether a write failed (the capture loop stops on it).
    pub(super) fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Flushes and prints the summary; an error when a write failed (after the summary).
    pub(super) fn finish(mut self, counters: &KernelCounters) -> Result<()> {
        self.flush();
        let path = &self.path;
        let lost = format!(
            "{} lost in the kernel: ring buffer full {}, arg map full {}",
            counters.ringbuf_full + counters.args_full,
            counters.ringbuf_full,
            counters.args_full
        );
        if self.failed.is_some() {
            log::info!(
                "summary: {} kernel events captured for {} until a write failed (the file keeps the whole events written before it), {} after it not written ({lost}); replay with `ztrace replay {}`",
                self.records,
                path.display(),
                self.not_written,
                path.display()
            );
        } else {
            log::info!(
                "summary: recorded {} kernel events to {} ({lost}); replay with `ztrace replay {}`",
                self.records,
                path.display(),
                path.display()
            );
        }
        match self.failed {
            // A buffered tail may hold part of a frame: replay reads whole frames and stops
            // at a cut one.
            Some(e) => Err(anyhow::Error::new(e).context(format!(
                "writing record file {} (it keeps {} bytes of whole events written before the \
                 failure; `ztrace replay` reads them)",
                path.display(),
                std::fs::metadata(path).map_or(0, |m| m.len()),
            ))),
            None => Ok(()),
        }
    }
}
