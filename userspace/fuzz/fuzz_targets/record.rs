//! Fuzz the record file decoder and everything `ztrace replay` does with what it decodes
//! (userspace/src/runtime/record.rs, then the pipeline: decode, connection table, parsers,
//! linker), coverage-guided from a real recording (corpus/record). A hostile recording must give
//! an error or spans, never a panic, an overflow or unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let _ = ztrace::runtime::replay::replay_bytes(input);
});
