//! Incoming W3C trace context (linker docs, rule 1).

use std::sync::Arc;

use super::tracestate::parse_tracestate;
use crate::model::{SpanId, TraceId, TraceState};

/// An incoming W3C trace context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The `sampled` trace flag (bit 0): the upstream's sampling decision.
    pub sampled: bool,
    /// The `tracestate` that came with it, when there was a valid one with members.
    pub tracestate: Option<Arc<TraceState>>,
}

/// An incoming trace context: `traceparent` and, only when that is valid, `tracestate` (W3C:
/// a `tracestate` without a valid `traceparent` is not read). The second value is true when a
/// `tracestate` was there but invalid, and dropped.
pub fn parse_trace_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> (Option<Traceparent>, bool) {
    let Some(mut tp) = traceparent.and_then(parse_traceparent) else {
        return (None, false);
    };
    let mut dropped = false;
    if let Some(ts) = tracestate {
        match parse_tracestate(ts) {
            Ok(ts) => tp.tracestate = ts.map(Arc::new),
            Err(_) => dropped = true,
        }
    }
    (Some(tp), dropped)
}

/// Parses a W3C `traceparent` header (version 00 rules; future versions read leniently).
pub fn parse_traceparent(v: &str) -> Option<Traceparent> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    let (mut t, mut s) = ([0u8; 16], [0u8; 8]);
    hex(trace, &mut t)?;
    hex(span, &mut s)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if t == [0; 16] || s == [0; 8] {
        return None;
    }
    Some(Traceparent {
        trace_id: TraceId(t),
        span_id: SpanId(s),
        sampled: flags & 1 == 1,
        tracestate: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tracestate_is_read_only_with_a_valid_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (got, dropped) = parse_trace_context(Some(tp), Some("ot=th:8,v=1"));
        let ts = got.unwrap().tracestate.unwrap();
        assert_eq!(
            (&*ts.members, ts.th, dropped),
            ("ot=th:8,v=1", Some(1 << 55), false)
        );
        // Without a valid traceparent the tracestate is ignored (not counted as dropped).
        for bad in [None, Some("00-zz")] {
            assert_eq!(parse_trace_context(bad, Some("ot=th:8")), (None, false));
        }
        // An invalid tracestate is dropped and counted; the traceparent still holds.
        let (got, dropped) = parse_trace_context(Some(tp), Some("a=1,a=2"));
        assert!(dropped && got.as_ref().is_some_and(|t| t.tracestate.is_none()));
        // An empty one is no tracestate.
        let (got, dropped) = parse_trace_context(Some(tp), Some(" , "));
        assert!(!dropped && got.is_some_and(|t| t.tracestate.is_none()));
    }
}
