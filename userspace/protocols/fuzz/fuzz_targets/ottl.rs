//! Fuzz the OTTL grammar (userspace/src/processors/ottl/grammar.rs, compiled in here as it is:
//! it depends on winnow alone) with arbitrary (lossily decoded) text: parsing a statement or a
//! condition must never panic, and every error's offset lies within the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../src/processors/ottl/grammar.rs"]
mod grammar;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    if let Err(e) = grammar::parse_statement(&text) {
        assert!(e.at <= text.len());
    }
    if let Err(e) = grammar::parse_condition(&text) {
        assert!(e.at <= text.len());
    }
});
