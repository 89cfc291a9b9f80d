//! Incoming W3C trace context (linker docs, rule 1).

use crate::model::{SpanId, TraceId};

/// An incoming W3C trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The `sampled` trace flag (bit 0): the upstream's sampling decision.
    pub sampled: bool,
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
}
