//! Fuzz the SQL text helpers with arbitrary (lossily decoded) text: `sanitize` and
//! `summarize` must never panic, and `sanitize`'s output stays within its bound and is a
//! fixed point of `sanitize`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::sql;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let clean = sql::sanitize(&text);
    assert!(clean.len() <= sql::MAX_SANITIZED);
    assert_eq!(sql::sanitize(&clean), clean);
    let _ = sql::summarize(&text);
});
