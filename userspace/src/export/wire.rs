//! OTLP trace requests encoded straight from model spans into protobuf bytes — no intermediate
//! `opentelemetry-proto` structs, no per-attribute `String` keys — and a tonic codec that sends
//! those bytes as they are. Field numbers follow `opentelemetry/proto/trace/v1/trace.proto` and
//! friends; the tests decode the output with `opentelemetry-proto` and compare it with the
//! struct-built request, so the two cannot drift apart.

use prost::encoding::{WireType, encoded_len_varint};

use std::borrow::Cow;
use std::net::IpAddr;

use crate::model::{Span, SpanKind, SpanStatus};
use crate::processors::tail::threshold::trace_state;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use crate::model::Endpoint;
use crate::semconv::attributes::{AddrText, AttrSink, AttrValue, EndpointsKey, visit_attributes};
use crate::semconv::names::span_name;
use crate::semconv::resource::{ProcessTable, SCOPE_NAME, SCOPE_VERSION};

/// A protobuf varint, written with one bounds check instead of one per byte (prost's
/// `encode_varint` goes through `BufMut` a byte at a time: 8 % of a replay's instructions).
#[inline]
fn encode_varint(v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        let mut h = Head::default();
        h.varint(v);
        h.flush(out);
    }
}

/// Tags and varints gathered on the stack and appended with one copy: a `KeyValue`'s framing is
/// four of them around its key and again around its value (one `Vec` push each cost more than
/// the bytes they wrote).
struct Head {
    buf: [u8; 40],
    len: usize,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            buf: [0; 40],
            len: 0,
        }
    }
}

impl Head {
    /// At most 10 bytes; a `Head` takes at most four calls.
    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 && self.len < self.buf.len() {
            self.buf[self.len] = (v as u8) | 0x80;
            v >>= 7;
            self.len += 1;
        }
        if let Some(b) = self.buf.get_mut(self.len) {
            *b = v as u8;
            self.len += 1;
        }
    }

    #[inline]
    fn tag(&mut self, field: u32, wire: WireType) {
        self.varint(u64::from(field << 3 | wire as u32));
    }

    #[inline]
    fn flush(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf[..self.len]);
    }
}

fn key(field: u32, wire: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(field << 3 | wire as u32), out);
}

fn bytes_field(field: u32, value: &[u8], out: &mut Vec<u8>) {
    key(field, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// A trace or span id: its size is a constant, so the copy is two stores, not a `memcpy` call
/// (three per span).
#[inline]
fn id_field<const N: usize>(field: u32, id: &[u8; N], out: &mut Vec<u8>) {
    const { assert!(N < 0x80) };
    debug_assert!(field < 16);
    out.extend_from_slice(&[
        (field << 3 | WireType::LengthDelimited as u32) as u8,
        N as u8,
    ]);
    out.extend_from_slice(id);
}

fn varint_field(field: u32, value: u64, out: &mut Vec<u8>) {
    key(field, WireType::Varint, out);
    encode_varint(value, out);
}

fn fixed64_field(field: u32, value: u64, out: &mut Vec<u8>) {
    key(field, WireType::SixtyFourBit, out);
    out.extend_from_slice(&value.to_le_bytes());
}

fn fixed32_field(field: u32, value: u32, out: &mut Vec<u8>) {
    key(field, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes a length-delimited sub-message built by `body` (which appends to `out`) in place, its
/// length prefix guessed to take `width` bytes: when the guess holds (the callers' guesses fit
/// nearly every span and batch), nothing moves; otherwise the body is moved once to fit. (A
/// scratch buffer per span and per batch copied every byte of a request twice more.)
fn message(field: u32, width: usize, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    key(field, WireType::LengthDelimited, out);
    let len_at = out.len();
    out.resize(len_at + width, 0);
    let start = out.len();
    body(out);
    let (end, len) = (out.len(), out.len() - start);
    let mut prefix = Head::default();
    prefix.varint(len as u64);
    let n = prefix.len;
    if n != width {
        if n > width {
            out.resize(end + (n - width), 0);
        }
        out.copy_within(start..end, len_at + n);
        out.truncate(len_at + n + len);
    }
    out[len_at..len_at + n].copy_from_slice(&prefix.buf[..n]);
}

fn len_delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Encoded size of an `AnyValue` body, so attributes need no back-patched length prefixes.
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => len_delimited_len(s.len()),
        AttrValue::Int(i) => 1 + encoded_len_varint(*i as u64),
        AttrValue::Double(_) => 9,
        AttrValue::Bool(_) => 2,
        AttrValue::StrArray(items) => len_delimited_len(
            items
                .iter()
                .map(|s| len_delimited_len(len_delimited_len(s.len())))
                .sum(),
        ),
    }
}

fn any_value(v: &AttrValue, out: &mut Vec<u8>) {
    match v {
        AttrValue::Str(s) => bytes_field(1, s.as_bytes(), out),
        AttrValue::Int(i) => varint_field(3, *i as u64, out),
        AttrValue::Double(d) => fixed64_field(4, d.0.to_bits(), out),
        AttrValue::Bool(b) => varint_field(2, u64::from(*b), out),
        AttrValue::StrArray(items) => message(5, 1, out, |out| {
            for s in items {
                message(1, 1, out, |out| bytes_field(1, s.as_bytes(), out));
            }
        }),
    }
}

fn key_values<K: AsRef<str>>(field: u32, attrs: &[(K, AttrValue)], out: &mut Vec<u8>) {
    for (k, v) in attrs {
        let k = k.as_ref();
        match v {
            AttrValue::Str(s) => key_str(field, k, s.as_bytes(), out),
            AttrValue::Int(i) => key_int(field, k, *i, out),
            _ => key_any(field, k, v, out),
        }
    }
}

/// A `KeyValue` of any value type (the uncommon ones).
fn key_any(field: u32, k: &str, v: &AttrValue, out: &mut Vec<u8>) {
    let value_len = any_value_len(v);
    key_head(field, k, value_len, out);
    key(2, WireType::LengthDelimited, out);
    encode_varint(value_len as u64, out);
    any_value(v, out);
}

/// A `KeyValue` (in field `field`) up to its `AnyValue`, whose encoded size is `value_len`:
/// lengths computed, not back-patched. Most are short: the four framing bytes before the key
/// are then one fixed-size store.
#[inline]
fn key_head(field: u32, k: &str, value_len: usize, out: &mut Vec<u8>) {
    let total = len_delimited_len(k.len()) + len_delimited_len(value_len);
    if let Some(tag) = short_tag(field, total) {
        out.reserve(total + 2);
        out.extend_from_slice(&[tag, total as u8, 0x0A, k.len() as u8]);
    } else {
        let mut h = Head::default();
        h.tag(field, WireType::LengthDelimited);
        h.varint(total as u64);
        h.tag(1, WireType::LengthDelimited);
        h.varint(k.len() as u64);
        h.flush(out);
    }
    out.extend_from_slice(k.as_bytes());
}

/// The tag byte of a length-delimited field below 16, when a message of `total` bytes in it and
/// everything inside have lengths below 128 (each framing varint one byte).
#[inline]
fn short_tag(field: u32, total: usize) -> Option<u8> {
    (field < 16 && total < 0x80).then_some((field << 3 | WireType::LengthDelimited as u32) as u8)
}

/// A string-valued `KeyValue`.
fn key_str(field: u32, k: &str, v: &[u8], out: &mut Vec<u8>) {
    let value_len = len_delimited_len(v.len());
    key_head(field, k, value_len, out);
    if value_len < 0x80 {
        out.extend_from_slice(&[0x12, value_len as u8, 0x0A, v.len() as u8]);
    } else {
        let mut h = Head::default();
        h.tag(2, WireType::LengthDelimited);
        h.varint(value_len as u64);
        h.tag(1, WireType::LengthDelimited);
        h.varint(v.len() as u64);
        h.flush(out);
    }
    out.extend_from_slice(v);
}

/// An integer-valued `KeyValue` (its `AnyValue` is at most 11 bytes: one-byte framing).
fn key_int(field: u32, k: &str, v: i64, out: &mut Vec<u8>) {
    let value_len = 1 + encoded_len_varint(v as u64);
    key_head(field, k, value_len, out);
    out.extend_from_slice(&[0x12, value_len as u8, 0x18]); // AnyValue.int_value = 3
    encode_varint(v as u64, out);
}

/// Span attributes written as they are visited: no list of them, no `String` per address.
struct KeyValues<'o> {
    field: u32,
    out: &'o mut Vec<u8>,
    cache: Option<&'o mut EndpointCache>,
}

/// Encoded endpoint attributes by what they are made of (see `AttrSink::endpoints`): the spans
/// of a keep-alive connection share them, nine attributes and about 1.5k instructions a span.
/// A key is stored at its second sighting (a connection that carries one request would only
/// pay for the copy), and both sets are bounded.
#[derive(Default)]
pub(crate) struct EndpointCache {
    seen: FxHashSet<u64>,
    entries: FxHashMap<u64, (CachedKey, Vec<u8>)>,
}

/// What the encoder keeps from one batch to the next: the endpoint attributes (see
/// [`EndpointCache`]).
#[derive(Default)]
pub(crate) struct WireState {
    endpoints: EndpointCache,
}

/// Most keys remembered; beyond it the cache starts afresh.
const MAX_CACHED: usize = 1024;

struct CachedKey {
    field: u32,
    host: Option<Box<str>>,
    local: Endpoint,
    peer: Endpoint,
    version: &'static str,
}

impl CachedKey {
    fn new(field: u32, k: &EndpointsKey) -> Self {
        CachedKey {
            field,
            host: k.host.map(Box::from),
            local: k.local,
            peer: k.peer,
            version: k.version,
        }
    }

    fn is(&self, field: u32, k: &EndpointsKey) -> bool {
        self.field == field
            && self.host.as_deref() == k.host
            && self.local == k.local
            && self.peer == k.peer
            && self.version == k.version
    }
}

impl<'a> AttrSink<'a> for KeyValues<'_> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        key_str(self.field, key, value.into().as_bytes(), self.out);
    }

    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        key_int(self.field, key, value.into(), self.out);
    }

    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        key_str(self.field, key, AddrText::new(addr).as_bytes(), self.out);
    }

    fn endpoints(&mut self, key: EndpointsKey<'a>, visit: impl FnOnce(&mut Self)) {
        let Some(cache) = self.cache.take() else {
            return visit(self);
        };
        let hash = std::hash::BuildHasher::hash_one(&FxBuildHasher, (self.field, key));
        match cache.entries.get(&hash) {
            Some((k, bytes)) if k.is(self.field, &key) => self.out.extend_from_slice(bytes),
            _ => {
                let start = self.out.len();
                visit(self);
                if cache.seen.len() >= MAX_CACHED {
                    cache.seen.clear();
                }
                if !cache.seen.insert(hash) {
                    if cache.entries.len() >= MAX_CACHED {
                        cache.entries.clear();
                    }
                    let bytes = self.out[start..].to_vec();
                    cache
                        .entries
                        .insert(hash, (CachedKey::new(self.field, &key), bytes));
                }
            }
        }
        self.cache = Some(cache);
    }

    fn edited(&mut self, key: &'a str, value: &'a crate::model::AttrVal) {
        match AttrValue::edited(value) {
            AttrValue::Str(s) => key_str(self.field, key, s.as_bytes(), self.out),
            AttrValue::Int(i) => key_int(self.field, key, i, self.out),
            v => key_any(self.field, key, &v, self.out),
        }
    }
}

fn span(s: &Span, cache: &mut EndpointCache, out: &mut Vec<u8>) {
    id_field(1, &s.trace_id.0, out);
    id_field(2, &s.span_id.0, out);
    if let Some(state) = trace_state(s.tracestate.as_deref(), s.sampling) {
        bytes_field(3, state.as_bytes(), out);
    }
    if let Some(parent) = s.parent_span_id {
        id_field(4, &parent.0, out);
    }
    bytes_field(5, span_name(s).as_bytes(), out);
    let kind = match s.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    };
    varint_field(6, kind, out);
    fixed64_field(7, s.start_unix_ns, out);
    fixed64_field(8, s.end_unix_ns.max(s.start_unix_ns), out);
    visit_attributes(
        s,
        &mut KeyValues {
            field: 9,
            out,
            cache: Some(cache),
        },
    );
    if let SpanStatus::Error(msg) = &s.status {
        message(15, 1, out, |out| {
            if !msg.is_empty() {
                bytes_field(2, msg.as_bytes(), out);
            }
            varint_field(3, 2, out); // STATUS_CODE_ERROR
        });
    }
    fixed32_field(16, span_flags(s), out);
}

/// Encodes `spans` as an `ExportTraceServiceRequest` into `out` (cleared first): one
/// `ResourceSpans` per pid in order of first appearance, one `ScopeSpans` "ztrace" in each.
/// Each span is written to a scratch buffer and each process's spans to another, so every
/// length prefix is known when written: a back-patched prefix moved the whole message behind it
/// (each span, and twice the whole batch) — a fifth of the encoder's instructions.
#[cfg(test)]
pub(crate) fn encode_request(spans: &[Span], table: &ProcessTable, out: &mut Vec<u8>) {
    encode_request_cached(spans, table, &mut WireState::default(), out);
}

/// [`encode_request`] with what earlier batches left at hand (`state`).
pub(crate) fn encode_request_cached(
    spans: &[Span],
    table: &ProcessTable,
    state: &mut WireState,
    out: &mut Vec<u8>,
) {
    out.clear();
    let mut pids: Vec<u32> = Vec::new();
    for s in spans {
        if !pids.contains(&s.pid) {
            pids.push(s.pid);
        }
    }
    let cache = &mut state.endpoints;
    // Written in place (see `message`): a span's prefix is guessed at two bytes (128 B to
    // 16 KiB), a process's span list at three (to 2 MiB); a batch's spans are about 0.5 KiB each.
    out.reserve(spans.len() * 512);
    let mut scope = Vec::new();
    bytes_field(1, SCOPE_NAME.as_bytes(), &mut scope);
    bytes_field(2, SCOPE_VERSION.as_bytes(), &mut scope);
    let mut resource = Vec::new();
    for pid in pids {
        resource.clear();
        key_values(1, &table.resource(pid), &mut resource);
        // ExportTraceServiceRequest.resource_spans
        message(1, 3, out, |out| {
            bytes_field(1, &resource, out); // ResourceSpans.resource
            message(2, 3, out, |out| {
                // ResourceSpans.scope_spans
                bytes_field(1, &scope, out); // ScopeSpans.scope
                for s in spans.iter().filter(|s| s.pid == pid) {
                    message(2, 2, out, |out| span(s, cache, out)); // ScopeSpans.spans
                }
            });
        });
    }
}

/// gRPC codec whose requests and responses are protobuf bytes, encoded and decoded by the caller
/// (requests by this module or prost, responses by the signal's own response type).
#[derive(Clone, Copy, Default)]
pub(crate) struct RawCodec;

pub(crate) struct RawEncoder;
pub(crate) struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, Self::Error> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// `Span.flags`: whether the parent is remote is always known here.
pub(crate) fn span_flags(span: &Span) -> u32 {
    let has = opentelemetry_proto::tonic::trace::v1::SpanFlags::ContextHasIsRemoteMask as u32;
    if span.parent_is_remote {
        has | opentelemetry_proto::tonic::trace::v1::SpanFlags::ContextIsRemoteMask as u32
    } else {
        has
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;
    use crate::export::reference::build_request;
    use crate::model::{SpanId, SpanStatus};
    use crate::testkit::*;

    #[test]
    fn varints_match_prost() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            super::encode_varint(v, &mut ours);
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
        }
        // A sub-message keeps its exact prost encoding whatever the guess of its prefix's width
        // (too small, right, too large), its length one to three varint bytes.
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            for width in 1..=4 {
                let mut out = vec![9u8; 3]; // something before it stays
                super::message(3, width, &mut out, |o| o.resize(o.len() + len, 7));
                let mut want = vec![9u8; 3];
                prost::encoding::bytes::encode(3, &vec![7u8; len], &mut want);
                assert!(out == want, "{len} bytes, width {width}");
            }
        }
    }

    #[test]
    fn direct_encoding_matches_the_struct_built_request() {
        let mut table = ProcessTable::new(Some("host-a".into()));
        table.upsert(Arc::new(process(10, "python3")));
        let mut error = client_span();
        error.status = SpanStatus::Error("503".into());
        error.http_mut().unwrap().status = Some(503);
        let mut remote = server_span();
        remote.parent_is_remote = true;
        remote.parent_span_id = Some(SpanId([9; 8]));
        let mut other_pid = server_span();
        other_pid.pid = 77;
        // Kept by tail sampling: the sampling threshold travels in `trace_state`.
        let mut sampled = client_span();
        sampled.sampling =
            crate::model::Sampling::Threshold(crate::processors::tail::threshold::threshold(0.25));
        let spans = vec![server_span(), error, remote, other_pid, sampled];
        let mut out = Vec::new();
        encode_request(&spans, &table, &mut out);
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("valid protobuf");
        assert_eq!(decoded, build_request(&spans, &table));
        // Re-encoding with prost gives a message of the same size: no stray or missing fields.
        assert_eq!(decoded.encoded_len(), out.len());
        let last = decoded.resource_spans[0].scope_spans[0]
            .spans
            .last()
            .unwrap();
        assert_eq!(last.trace_state, "ot=th:c");
        encode_request(&[], &table, &mut out);
        assert!(out.is_empty());
    }

    /// Batches whose span lists need one to four length bytes (the encoder guesses three) decode
    /// to the struct-built request, with minimal prefixes (prost's re-encoding has their size).
    #[test]
    fn batches_of_any_size_are_written_in_place_exactly() {
        let table = ProcessTable::new(None);
        for n in [1, 30, 400, 12_000] {
            let spans: Vec<Span> = (0..n)
                .map(|i| {
                    let mut s = [server_span(), client_span()][i % 2].clone();
                    s.pid = 10 + (i % 3 == 0) as u32;
                    s
                })
                .collect();
            let mut out = Vec::new();
            encode_request(&spans, &table, &mut out);
            let decoded = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
            assert_eq!(decoded.encoded_len(), out.len(), "{n} spans");
            assert!(
                n < 12_000 || out.len() > 3 << 20,
                "a list over 2 MiB: four length bytes"
            );
            assert!(decoded == build_request(&spans, &table), "{n} spans");
        }
    }

    /// Endpoint attributes taken from the cache are the bytes encoding them afresh gives, for
    /// spans whose keys differ in each part (host, ports, addresses, version, IPv6, mapped IPv4).
    #[test]
    fn cached_endpoint_attributes_are_the_fresh_encoding() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let table = ProcessTable::new(None);
        let mut spans = Vec::new();
        for i in 0..40u16 {
            let mut s = if i % 5 == 4 {
                client_span()
            } else {
                server_span()
            };
            s.peer.port = 40_000 + i % 3;
            s.local.port = 8080 + i % 2;
            if i % 4 == 1 {
                s.peer.addr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i));
            }
            if i % 6 == 2 {
                s.peer.addr = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
            }
            let h = s.http_mut().unwrap();
            h.host = match i % 4 {
                0 => None,
                1 => Some("example.com".into()),
                2 => Some("example.com:81".into()),
                _ => Some("[::1]:82".into()),
            };
            h.version = if i % 7 == 3 { "1.0" } else { "1.1" };
            spans.push(s);
        }
        let mut cache = WireState::default();
        let (mut warm, mut cold) = (Vec::new(), Vec::new());
        // Three rounds: unseen, seen once (stored), stored (taken from the cache).
        for round in 0..3 {
            encode_request_cached(&spans, &table, &mut cache, &mut warm);
            encode_request(&spans, &table, &mut cold);
            assert_eq!(warm, cold, "round {round}");
        }
        assert!(!cache.endpoints.entries.is_empty());
        let decoded = ExportTraceServiceRequest::decode(warm.as_slice()).unwrap();
        assert_eq!(decoded, build_request(&spans, &table));
    }

    #[test]
    fn large_attribute_values_get_wide_length_prefixes() {
        let table = ProcessTable::new(None);
        let mut s = server_span();
        s.http_mut().unwrap().target = format!("/{}", "x".repeat(70_000));
        let mut out = Vec::new();
        encode_request(&[s.clone()], &table, &mut out);
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        assert_eq!(decoded, build_request(&[s], &table));
        // Around 128 bytes, where a KeyValue's framing varints go from one byte to two (the
        // key's, the value's, each on its own), and around 16 KiB (three bytes).
        for n in (80..150).chain(16_370..16_400) {
            let mut s = server_span();
            s.http_mut().unwrap().target = format!("/{}", "y".repeat(n));
            s.http_mut().unwrap().user_agent = Some("u".repeat(n / 2));
            encode_request(&[s.clone()], &table, &mut out);
            let decoded = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
            assert_eq!(decoded.encoded_len(), out.len(), "minimal framing at {n}");
            assert_eq!(decoded, build_request(&[s], &table), "at {n}");
        }
    }
}
