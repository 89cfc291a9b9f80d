//! The incoming W3C `tracestate` that comes with a `traceparent` (linker docs, rule 1): checked
//! as W3C Trace Context says, bounded, and its OpenTelemetry `ot` entry read (`th`, `rv`).
//!
//! - A list is up to 32 members `key=value`, separated by commas with optional spaces or tabs
//!   around them; empty members are skipped. A key is a simple key (`a-z` first, then up to 255
//!   of `a-z 0-9 _ - * /`) or a multi-tenant one (`tenant@system`); a value 1–256 printable
//!   ASCII characters but `,` and `=`, not ending in a space.
//! - Anything else — a malformed member, a key seen twice, more than 32 members, a byte outside
//!   ASCII — makes the whole header invalid: it is dropped (and counted), as W3C allows.
//! - What is kept is at most 512 characters (what W3C asks participants to pass on): beyond that,
//!   members longer than 128 characters go first, then members from the end.
//! - In the `ot` entry, `th` (1–14 hex digits, trailing zeros implied) and `rv` (exactly 14 hex
//!   digits) are read; a malformed one is ignored (the entry is kept as it came). Other sub-keys
//!   are kept untouched.

use crate::model::TraceState;

/// Most members a list may have.
const MAX_MEMBERS: usize = 32;
/// Most characters kept of a list (members and the commas between them).
const MAX_KEPT: usize = 512;
/// Members longer than this are the first to go when the list is too long.
const LONG_MEMBER: usize = 128;

/// Why a `tracestate` was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

/// Parses a `tracestate` header value (several headers joined with commas). `Ok(None)` when
/// it holds no member.
pub fn parse_tracestate(v: &str) -> Result<Option<TraceState>, Invalid> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in v.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=').ok_or(Invalid)?;
        if !valid_key(key) || !valid_value(value) || members.iter().any(|(k, _)| *k == key) {
            return Err(Invalid);
        }
        if members.len() == MAX_MEMBERS {
            return Err(Invalid);
        }
        members.push((key, value));
    }
    if members.is_empty() {
        return Ok(None);
    }
    bound(&mut members);
    let (mut th, mut rv) = (None, None);
    if let Some((_, ot)) = members.iter().find(|(k, _)| *k == "ot") {
        (th, rv) = read_ot(ot);
    }
    let mut joined = String::with_capacity(MAX_KEPT);
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            joined.push(',');
        }
        joined.push_str(k);
        joined.push('=');
        joined.push_str(v);
    }
    Ok(Some(TraceState {
        members: joined.into_boxed_str(),
        th,
        rv,
    }))
}

/// The length of the members joined with commas.
fn joined_len(members: &[(&str, &str)]) -> usize {
    members
        .iter()
        .map(|(k, v)| k.len() + 1 + v.len())
        .sum::<usize>()
        + members.len()
        - 1
}

/// Drops members until the list is at most [`MAX_KEPT`] characters: the long ones first, then
/// from the end (W3C's truncation order).
fn bound(members: &mut Vec<(&str, &str)>) {
    let long = |(k, v): &(&str, &str)| k.len() + 1 + v.len() > LONG_MEMBER;
    while !members.is_empty() && joined_len(members) > MAX_KEPT {
        match members.iter().position(long) {
            Some(i) => _ = members.remove(i),
            None => _ = members.pop(),
        }
    }
}

/// `a-z 0-9 _ - * /`: what a key may hold after its first character.
fn key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

fn valid_key(key: &str) -> bool {
    let k = key.as_bytes();
    match key.split_once('@') {
        None => {
            (1..=256).contains(&k.len())
                && k[0].is_ascii_lowercase()
                && k.iter().all(|&b| key_char(b))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            (1..=241).contains(&t.len())
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().all(|&b| key_char(b))
                && (1..=14).contains(&s.len())
                && s[0].is_ascii_lowercase()
                && s.iter().all(|&b| key_char(b))
        }
    }
}

fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    (1..=256).contains(&v.len())
        && v.iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && v[v.len() - 1] != b' '
}

/// `th` and `rv` of an `ot` entry's value (`key:value` pairs separated by `;`).
fn read_ot(ot: &str) -> (Option<u64>, Option<u64>) {
    let (mut th, mut rv) = (None, None);
    for pair in ot.split(';') {
        match pair.split_once(':') {
            Some(("th", v)) => th = hex56(v, false),
            Some(("rv", v)) => rv = hex56(v, true),
            _ => {}
        }
    }
    (th, rv)
}

/// A 56-bit value from 1–14 hex digits, implicitly followed by zeros to 14 (`exact`: exactly 14).
fn hex56(v: &str, exact: bool) -> Option<u64> {
    let ok = match exact {
        true => v.len() == 14,
        false => (1..=14).contains(&v.len()),
    };
    if !ok || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let n = u64::from_str_radix(v, 16).ok()?;
    Some(n << (4 * (14 - v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(v: &str) -> TraceState {
        parse_tracestate(v).unwrap().unwrap()
    }

    #[test]
    fn members_are_checked_and_rejoined_without_white_space() {
        let t = parsed(" a=1 ,\t,b@c=x y, ,0t@s-1=~!\t");
        assert_eq!(&*t.members, "a=1,b@c=x y,0t@s-1=~!");
        assert_eq!((t.th, t.rv), (None, None));
        for empty in ["", "  ", ",, ,\t"] {
            assert_eq!(parse_tracestate(empty), Ok(None), "{empty:?}");
        }
        for bad in [
            "a",
            "a=",
            "=1",
            "A=1",
            "1a=1",
            "a=1=2",
            "a b=1",
            "a=\u{e9}",
            "a=\u{7f}",
            "@s=1",
            "t@=1",
            "t@S=1",
            "t@s15charslong123=1",
            "a=1,a=2",
            "a=1;b=2,c",
        ] {
            assert_eq!(parse_tracestate(bad), Err(Invalid), "{bad:?}");
        }
        // Key and value lengths at their limits.
        let key = format!("k{}", "x".repeat(255));
        let value = "v".repeat(256);
        assert!(parse_tracestate(&format!("{key}={value}")).is_ok());
        assert!(parse_tracestate(&format!("{key}x=1")).is_err());
        assert!(parse_tracestate(&format!("a={value}v")).is_err());
    }

    #[test]
    fn more_than_32_members_is_invalid_and_what_is_kept_is_bounded() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(parsed(&list(32)).members.split(',').count(), 32);
        assert_eq!(parse_tracestate(&list(33)), Err(Invalid));
        // 600 characters: the long members go first, then members from the end.
        let long = format!("long={}", "l".repeat(200));
        let short: Vec<String> = (0..20)
            .map(|i| format!("s{i:02}={}", "x".repeat(16)))
            .collect();
        let mut all = vec![short[0].clone(), long.clone()];
        all.extend(short[1..].iter().cloned());
        let t = parsed(&all.join(","));
        assert!(t.members.len() <= 512);
        assert!(!t.members.contains("long="), "the long member goes first");
        assert_eq!(&*t.members, short.join(","), "20 short members fit in 419");
        let many: Vec<String> = (0..30)
            .map(|i| format!("s{i:02}={}", "x".repeat(16)))
            .collect();
        let t = parsed(&many.join(","));
        assert_eq!(
            &*t.members,
            many[..24].join(","),
            "then from the end: 24 × 20 + 23 = 503"
        );
    }

    #[test]
    fn the_ot_entry_gives_th_and_rv_and_keeps_unknown_sub_keys() {
        let t = parsed("v=x,ot=th:8;rv:0123456789abcd;zz:q-1,w=y");
        assert_eq!(t.th, Some(0x80_0000_0000_0000));
        assert_eq!(t.rv, Some(0x01_2345_6789_abcd));
        assert_eq!(&*t.members, "v=x,ot=th:8;rv:0123456789abcd;zz:q-1,w=y");
        assert_eq!(parsed("ot=th:0").th, Some(0));
        assert_eq!(parsed("ot=th:fd70a4").th, Some(0xfd_70a4_0000_0000));
        assert_eq!(parsed("ot=th:ffffffffffffff").th, Some((1 << 56) - 1));
        // Malformed sub-keys are not read; the entry stays as it came.
        for ot in [
            "ot=th:",
            "ot=th:fffffffffffffff",
            "ot=th:xyz",
            "ot=rv:0123",
            "ot=th",
            "ot=foo:bar",
        ] {
            let t = parsed(ot);
            assert_eq!((t.th, t.rv), (None, None), "{ot}");
            assert_eq!(&*t.members, ot);
        }
        // Only the entry keyed `ot` counts.
        assert_eq!(parsed("x@ot=th:8").th, None);
    }
}
