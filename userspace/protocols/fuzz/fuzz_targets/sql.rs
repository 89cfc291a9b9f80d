//! Fuzz the SQL text helpers with arbitrary (lossily decoded) text: `sanitize`,
//! `sanitize_mysql` and `summarize` must never panic, and each sanitiser's output stays within
//! its bound and is a fixed point of that sanitiser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ztrace_protocols::sql;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let clean = sql::sanitize(&text);
    assert!(clean.len() <= sql::MAX_SANITIZED);
    assert_eq!(sql::sanitize(&clean), clean);
    let clean = sql::sanitize_mysql(&text);
    assert!(clean.len() <= sql::MAX_SANITIZED);
    assert_eq!(sql::sanitize_mysql(&clean), clean);
    let _ = sql::summarize(&text);
});
