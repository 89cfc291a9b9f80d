//! Ring-buffer records → typed events. Records come from the kernel, but the decoder still
//! trusts nothing: every length is checked, unknown kinds are reported, nothing panics.

use ztrace_abi::{ConnEvent, DataEvent, EventHeader, NetEvent, ProcEvent, kind};

/// One decoded record. Payload bytes are borrowed from the record.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Data(DataEvent, &'a [u8]),
    Conn(ConnEvent),
    Proc(ProcEvent),
    /// A write to stdout/stderr (`--capture-logs`) and its payload head.
    Stdio(DataEvent, &'a [u8]),
    /// A TCP state change or retransmit on a traced process's socket.
    Net(NetEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record of kind {kind} has {len} bytes, expected at least {want}")]
    Truncated { kind: u32, len: usize, want: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a plain repr(C) struct of integers (any bit pattern is
    // valid); read_unaligned copes with the record's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn need<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    read(bytes).ok_or(DecodeError::Truncated {
        kind,
        len: bytes.len(),
        want: size_of::<T>(),
    })
}

/// The kind of a raw record (its first field), without decoding the rest; `None` when the
/// record is too short to hold one. The record sink uses it to pick out process events.
pub fn kind_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    match header.kind {
        kind::DATA | kind::STDIO => {
            let ev: DataEvent = need(bytes, header.kind)?;
            let start = size_of::<DataEvent>();
            let end = start.saturating_add(ev.cap_len as usize);
            let payload = bytes.get(start..end).ok_or(DecodeError::Truncated {
                kind: header.kind,
                len: bytes.len(),
                want: end,
            })?;
            Ok(if header.kind == kind::DATA {
                Event::Data(ev, payload)
            } else {
                Event::Stdio(ev, payload)
            })
        }
        kind::NET => Ok(Event::Net(need(bytes, header.kind)?)),
        kind::CONN => Ok(Event::Conn(need(bytes, header.kind)?)),
        kind::PROC => Ok(Event::Proc(need(bytes, header.kind)?)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Inverse of [`decode`] for data events: used by tests and replay files.
pub fn encode_data(ev: &DataEvent, payload: &[u8]) -> Vec<u8> {
    let mut ev = *ev;
    ev.cap_len = payload.len() as u32;
    let mut out = as_bytes(&ev).to_vec();
    out.extend_from_slice(payload);
    out
}

/// The raw bytes of a plain repr(C) ABI struct.
pub fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is one of the ABI structs: repr(C), integer fields, explicit padding fields.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_of_short_records_is_none_not_a_panic() {
        for len in 0..4 {
            assert_eq!(kind_of(&[kind::PROC as u8, 0, 0, 0][..len]), None);
        }
        assert_eq!(kind_of(&kind::PROC.to_le_bytes()), Some(kind::PROC));
    }

    fn data_event(cap: u32) -> DataEvent {
        DataEvent {
            header: EventHeader {
                kind: kind::DATA,
                tgid: 7,
                tid: 8,
                ..Default::default()
            },
            bytes: 100,
            cap_len: cap,
            ..Default::default()
        }
    }

    #[test]
    fn data_round_trip() {
        let raw = encode_data(&data_event(0), b"GET / HTTP/1.1\r\n");
        match decode(&raw).unwrap() {
            Event::Data(ev, payload) => {
                assert_eq!(ev.header.tgid, 7);
                assert_eq!(payload, b"GET / HTTP/1.1\r\n");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_records_are_errors() {
        let raw = encode_data(&data_event(0), b"abcdef");
        assert!(matches!(
            decode(&raw[..raw.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short(3))));
        let mut bad = vec![0u8; 64];
        bad[0] = 99;
        assert!(matches!(decode(&bad), Err(DecodeError::UnknownKind(99))));
        // A lying cap_len must not read past the record.
        let mut lying = data_event(0);
        lying.cap_len = u32::MAX;
        let raw = as_bytes(&lying).to_vec();
        assert!(decode(&raw).is_err());
        for len in 0..raw.len() {
            let _ = decode(&raw[..len]);
        }
    }
}
