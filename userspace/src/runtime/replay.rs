//! `ztrace replay`: runs a record file through the same pipeline and exporter as the live daemon,
//! without the kernel, so it needs no privileges and the same file gives the same spans (ids
//! included) every time. It owns the replay loop only; it must not touch the kernel or the
//! record file format (that is `record`).

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};

use crate::{
    capture::KernelCounters,
    config::Privacy,
    export::{ExportConfig, Exporter},
    runtime::destination::summary,
    runtime::live::runtime,
    runtime::pipeline::Pipeline,
    runtime::record::{self, Frame},
};

/// Runs a record file through the pipeline and exporter. Needs no privileges; the same file
/// gives the same spans (ids included) every time.
pub fn replay(
    path: &std::path::Path,
    export: ExportConfig,
    service_name: Option<String>,
    db_query_text: bool,
    privacy: &Privacy,
    parser_budget: usize,
    seccomp: bool,
) -> Result<()> {
    let mut reader =
        record::Reader::open(path).with_context(|| format!("reading {}", path.display()))?;
    // A recording may come from anyone (a bug report): its frames are parsed under the
    // daemon's allow-list, installed before any thread starts.
    if seccomp {
        let n = crate::capture::seccomp::install().map_err(|e| {
            anyhow::anyhow!(
                "installing the seccomp allow-list failed: {e} (--no-seccomp runs without it)"
            )
        })?;
        log::debug!("seccomp: allow-list of {n} system calls");
    }
    // Batches close by size only (and at the end), and no span is dropped for a full queue: the
    // same file gives the same batches, hence the same output, however fast the machine is.
    let export = ExportConfig {
        batch_delay: crate::export::FOREVER,
        ..export
    };
    runtime()?.block_on(async move {
        let exporter = Exporter::spawn(export);
        // Seeded from the recording so ids are reproducible.
        let mut pipeline = Pipeline::new(
            reader.header.mono_to_unix_ns as i128,
            Some(reader.header.mono_to_unix_ns as u64),
        );
        pipeline.set_db_query_text(db_query_text);
        pipeline.set_privacy(privacy);
        pipeline.set_parser_budget(parser_budget);
        let (mut spans, mut changes) = (Vec::new(), Vec::new());
        let mut records = 0u64;
        while let Some(frame) = reader
            .next_frame()
            .with_context(|| format!("reading {}", path.display()))?
        {
            match frame {
                Frame::Process(mut info) => {
                    if let Some(name) = &service_name {
                        info.service_name = name.clone();
                    }
                    if !privacy.command_args {
                        info.command_args.clear(); // recordings made before the opt-in existed
                    }
                    exporter.process(Arc::from(info));
                }
                Frame::Record(raw) => {
                    pipeline.on_record(&raw, &mut changes);
                    changes.clear();
                    records += 1;
                    if records.is_multiple_of(1024) {
                        pipeline.poll(0, &mut spans);
                        for span in spans.drain(..) {
                            exporter.submit_waiting(span).await;
                        }
                    }
                }
            }
        }
        if reader.truncated {
            log::warn!(
                "{} ends inside a frame (the recording was cut off); replayed every whole frame",
                path.display()
            );
        }
        pipeline.drain(0, &mut spans);
        for span in spans.drain(..) {
            exporter.submit_waiting(span).await;
        }
        let stats = exporter.shutdown(Duration::from_secs(10)).await;
        summary(
            &pipeline.stats(),
            &KernelCounters {
                submitted: records,
                ..Default::default()
            },
            &stats,
        );
        Ok(())
    })
}

/// The replay path over a recording in memory, without an exporter: every frame the reader gives
/// goes into a pipeline, which is then drained; the number of spans made, or the reader's error.
/// What the `record` fuzz target (userspace/fuzz) and the hostile-file test drive.
pub fn replay_bytes(bytes: &[u8]) -> std::result::Result<usize, record::RecordError> {
    let mut reader = record::Reader::new(bytes)?;
    let mut pipeline = Pipeline::new(reader.header.mono_to_unix_ns as i128, Some(1));
    let (mut spans, mut changes) = (Vec::new(), Vec::new());
    while let Some(frame) = reader.next_frame()? {
        if let Frame::Record(raw) = frame {
            pipeline.on_record(&raw, &mut changes);
            changes.clear();
        }
    }
    pipeline.poll(u64::MAX / 2, &mut spans);
    pipeline.drain(u64::MAX / 2, &mut spans);
    Ok(spans.len())
}

/// Hostile record files: a real-looking recording (process metadata, then a client's HTTP
/// exchanges with a server on one connection) mutated many thousand ways — bytes flipped, frames
/// cut, lengths forged, pieces repeated — goes through the same reader and pipeline `ztrace
/// replay` uses. Nothing may panic; a bad frame is an error, a cut one the end. (A deterministic
/// mutation loop that runs with the unit tests; the coverage-guided fuzzer of the same path is
/// userspace/fuzz, `cargo xtask fuzz --only record`.)
#[cfg(test)]
mod hostile_files {
    use super::*;
    use crate::runtime::pipeline::testdata::{Io, record as data_record};

    fn data(egress: bool, ts: u64, seq: u32, bytes: &[u8]) -> Vec<u8> {
        let io = Io {
            pid: 7,
            tid: 7,
            sock: 0xabc,
            local: 8080,
            remote: 40_000,
        };
        data_record(&io, egress, ts, seq, bytes)
    }

    fn recording() -> Vec<u8> {
        let mut w = record::Writer::new(
            Vec::new(),
            record::Header {
                abi_version: ztrace_abi::ABI_VERSION,
                mono_to_unix_ns: 1_700_000_000_000_000_000,
                payload_cap: 256,
            },
        )
        .unwrap();
        w.process(&crate::model::ProcessInfo {
            pid: 7,
            service_name: "svc".into(),
            executable_name: "python3".into(),
            command_args: vec!["python3".into(), "app.py".into()],
            ..Default::default()
        })
        .unwrap();
        let (mut rx, mut tx) = (1u32, 1u32);
        for i in 0..20u64 {
            let req = format!("GET /item/{i}?token=x HTTP/1.1\r\nHost: a\r\nCookie: s=1\r\n\r\n");
            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            w.record(&data(false, 1_000_000 * (2 * i + 1), rx, req.as_bytes()))
                .unwrap();
            w.record(&data(true, 1_000_000 * (2 * i + 2), tx, resp))
                .unwrap();
            rx = rx.wrapping_add(req.len() as u32);
            tx = tx.wrapping_add(resp.len() as u32);
        }
        w.flush().unwrap();
        w.into_inner()
    }

    /// Writes the recording above where `ZTRACE_FUZZ_SEED` says: the seed of the coverage-guided
    /// `record` fuzz target (`cargo xtask fuzz --only record`).
    #[test]
    #[ignore = "writes a file; run by hand to refresh the fuzz seed"]
    fn write_fuzz_seed() {
        let path = std::env::var_os("ZTRACE_FUZZ_SEED").expect("ZTRACE_FUZZ_SEED=FILE");
        std::fs::write(path, recording()).unwrap();
    }

    #[test]
    fn mutated_recordings_never_panic_the_replay_path() {
        let base = recording();
        assert_eq!(replay_bytes(&base).unwrap(), 20, "the unmutated recording");
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut errors, mut spans) = (0, 0);
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % b.len().max(1);
                match next() % 6 {
                    0 => b[at] ^= 1 << (next() % 8),
                    1 => b[at] = if next() % 2 == 0 { 0 } else { 0xff },
                    2 => b.truncate(at),
                    // A forged 4-byte length (frame lengths and event fields alike).
                    3 if at + 4 <= b.len() => {
                        b[at..at + 4].copy_from_slice(&(next() as u32).to_le_bytes())
                    }
                    4 => {
                        let end = (at + (next() as usize % 200)).min(b.len());
                        let piece = b[at..end].to_vec();
                        let to = (next() as usize) % b.len().max(1);
                        b.splice(to..to, piece);
                    }
                    _ => {
                        let end = (at + (next() as usize % 64)).min(b.len());
                        b.drain(at..end);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            match replay_bytes(&b) {
                Ok(n) => spans += n,
                Err(_) => errors += 1,
            }
        }
        // Both outcomes happen: the mutations reach the pipeline, and the reader refuses some.
        assert!(spans > 0 && errors > 0, "spans {spans}, errors {errors}");
    }
}
