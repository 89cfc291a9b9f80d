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
    runtime::live::{runtime, summary},
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
) -> Result<()> {
    let mut reader =
        record::Reader::open(path).with_context(|| format!("reading {}", path.display()))?;
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
