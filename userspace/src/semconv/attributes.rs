//! What a span says, in OpenTelemetry semantic-convention attributes: one mapping from the
//! model onto attribute names and values ([`span_attributes`], [`visit_attributes`]) shared by
//! every output, so OTLP, console, JSON and metrics say the same thing, plus the URL and address
//! helpers it needs. Attribute names come from `opentelemetry-semantic-conventions`. It must
//! not know how anything is sent (queues, transports, wire formats belong to `export`).

use std::borrow::Cow;
use std::net::IpAddr;

use opentelemetry_semantic_conventions::attribute as semconv;

use super::names::{http_of, known_method};
use crate::model::{
    AttrEdits, AttrVal, DbExchange, DnsExchange, Endpoint, Exchange, F64, HttpExchange,
    RpcExchange, Span, SpanKind, SpanStatus,
};

/// An attribute value, before it is written in an output's own format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttrValue<'a> {
    /// Borrowed from the span where it can be: building a span's attributes allocated a
    /// `String` for each one, a good part of the export thread's malloc/free.
    Str(Cow<'a, str>),
    Int(i64),
    StrArray(Vec<String>),
    /// Only rules write these (see [`AttrVal`]).
    Double(F64),
    Bool(bool),
}

impl<'a> AttrValue<'a> {
    /// A value a rule wrote, borrowed from the span.
    pub(crate) fn edited(v: &'a AttrVal) -> AttrValue<'a> {
        match v {
            AttrVal::Str(s) => AttrValue::Str(Cow::Borrowed(s)),
            AttrVal::Int(i) => AttrValue::Int(*i),
            AttrVal::Double(d) => AttrValue::Double(*d),
            AttrVal::Bool(b) => AttrValue::Bool(*b),
            AttrVal::StrArray(a) => AttrValue::StrArray(a.clone()),
        }
    }
}

/// Keys are static but for those rules added (borrowed from the span's [`AttrEdits`]).
pub(crate) type Attrs<'a> = Vec<(&'a str, AttrValue<'a>)>;

/// Resource attributes: detected ones have static keys, configured ones do not.
pub(crate) type ResourceAttrs = Vec<(Cow<'static, str>, AttrValue<'static>)>;

pub(crate) fn str_attr<'a>(
    key: &'static str,
    v: impl Into<Cow<'a, str>>,
) -> (&'static str, AttrValue<'a>) {
    (key, AttrValue::Str(v.into()))
}

pub(crate) fn int_attr(key: &'static str, v: impl Into<i64>) -> (&'static str, AttrValue<'static>) {
    (key, AttrValue::Int(v.into()))
}

/// Query parameters whose values are redacted, compared without ASCII case, `-` and `_`
/// (`api_key`, `API-Key` and `apikey` are one key). The first four are the ones the semantic
/// conventions name; the rest are the credentials that travel in query strings in practice:
/// S3/SigV4 and GCS presigned URLs, OAuth 2.0 tokens and authorization codes, API keys.
pub(crate) const SENSITIVE_QUERY_KEYS: [&str; 24] = [
    "awsaccesskeyid",
    "signature",
    "sig",
    "xgoogsignature",
    "xamzsignature",
    "xamzcredential",
    "xamzsecuritytoken",
    "xgoogcredential",
    "accesstoken",
    "refreshtoken",
    "idtoken",
    "token",
    "code",
    "clientsecret",
    "apikey",
    "key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "auth",
    "authorization",
    "sessionid",
    "jwt",
];

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "REDACTED";

/// `key` folded as keys are compared (ASCII lowercase, without `-` and `_`) into `buf`; None
/// when longer than `buf`.
fn fold_key<'b>(key: &str, buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    let mut n = 0;
    for b in key.bytes().filter(|b| !matches!(b, b'-' | b'_')) {
        *buf.get_mut(n)? = b.to_ascii_lowercase();
        n += 1;
    }
    Some(&buf[..n])
}

/// True when `key` names a credential (see [`SENSITIVE_QUERY_KEYS`]) or one of `extra` (folded
/// names, as `config::Privacy::redact` holds them).
fn sensitive_query_key(key: &str, extra: &[String]) -> bool {
    let mut buf = [0u8; 64];
    let Some(folded) = fold_key(key, &mut buf) else {
        return false; // longer than every listed key
    };
    SENSITIVE_QUERY_KEYS.iter().any(|k| k.as_bytes() == folded)
        || extra.iter().any(|k| k.as_bytes() == folded)
}

fn redact_query(query: &str) -> Cow<'_, str> {
    redact_query_with(query, &[])
}

/// `query` with the values of credential-like parameters, and of those named in `extra`,
/// replaced by `REDACTED`.
pub(crate) fn redact_query_with<'q>(query: &'q str, extra: &[String]) -> Cow<'q, str> {
    let sensitive = |pair: &str| {
        pair.split_once('=')
            .is_some_and(|(key, _)| sensitive_query_key(key, extra))
    };
    if !query.split('&').any(sensitive) {
        return Cow::Borrowed(query);
    }
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if sensitive(pair) => Cow::Owned(format!("{k}={REDACTED}")),
            _ => Cow::Borrowed(pair),
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// `scheme://authority` prefix of an absolute-form request target.
fn absolute_prefix(target: &str) -> Option<(&str, &str, &str)> {
    if target.starts_with('/') {
        return None; // origin-form, nearly every request
    }
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

/// Splits a request target into path and query (fragment dropped; absolute-form reduced to its
/// path).
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    let t = match absolute_prefix(target) {
        Some((_, _, rest)) => rest,
        None => target,
    };
    let t = t.split('#').next().unwrap_or(t);
    let (path, query) = match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    };
    let path = if path.is_empty() && target != t {
        "/"
    } else {
        path
    };
    (path, query)
}

/// Host and optional port of a `Host` header value (`name`, `name:80`, `[::1]:80`). Byte
/// searches, and `trim` only when an end is not plainly visible ASCII: the `char` searches cost
/// ~390 instructions per span (3 % of the userspace path), this ~60.
pub(crate) fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let plain = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    let h = if plain(host.as_bytes().first()) && plain(host.as_bytes().last()) {
        host
    } else {
        host.trim()
    };
    if h.is_empty() {
        return None;
    }
    if let Some(rest) = h.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if inner.is_empty() {
            return None;
        }
        return Some((inner, after.strip_prefix(':').and_then(parse_port)));
    }
    let bytes = h.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        // ':' is ASCII: both sides are on char boundaries.
        Some(i) if !bytes[..i].contains(&b':') => {
            if i == 0 {
                None
            } else {
                Some((&h[..i], parse_port(&h[i + 1..])))
            }
        }
        // A bare IPv6 address: no port.
        Some(_) => Some((h, None)),
        None => Some((h, None)),
    }
}

/// A port as `str::parse::<u16>` reads it (an optional leading '+', decimal digits, in range).
fn parse_port(p: &str) -> Option<u16> {
    let digits = p.strip_prefix('+').unwrap_or(p).as_bytes();
    if digits.is_empty() || digits.len() > 5 {
        // `parse` also accepts leading zeros beyond five digits: leave those rare cases to it.
        return if digits.len() > 5 {
            p.parse().ok()
        } else {
            None
        };
    }
    let mut v: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(d - b'0');
    }
    u16::try_from(v).ok()
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) are reported as the IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// Every octet as text followed by '.', padded to four bytes, and the length with the '.'.
const OCTET_TEXT: [([u8; 4], usize); 256] = {
    let mut t = [([0u8; 4], 0usize); 256];
    let mut o = 0;
    while o < 256 {
        let (h, d, u) = ((o / 100) as u8, (o / 10 % 10) as u8, (o % 10) as u8);
        t[o] = if o >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u, b'.'], 4)
        } else if o >= 10 {
            ([b'0' + d, b'0' + u, b'.', 0], 3)
        } else {
            ([b'0' + u, b'.', 0, 0], 2)
        };
        o += 1;
    }
    t
};

/// An address as text, in place: IPv4-mapped IPv6 shown as IPv4. Dotted quads are written digit
/// by digit: through `Display` they cost ~5 % of the export thread's time with nginx saturated
/// (2–3 addresses per span), and a `String` for each was one more allocation per address.
pub(crate) struct AddrText {
    /// IPv6 text takes at most 39 bytes (`ffff:…:ffff`; mapped IPv4 is shown as IPv4).
    buf: [u8; 48],
    len: usize,
}

impl AddrText {
    pub(crate) fn new(addr: IpAddr) -> Self {
        let mut t = AddrText {
            buf: [0; 48],
            len: 0,
        };
        match canonical(addr) {
            IpAddr::V4(v4) => {
                // Each octet's digits from a table, stored as four bytes at once (the fourth a
                // '.' or overwritten): no division, no bounds check per digit.
                let mut at = 0;
                for o in v4.octets() {
                    let (digits, n) = OCTET_TEXT[usize::from(o)];
                    t.buf[at..at + 4].copy_from_slice(&digits);
                    at += n;
                }
                t.len = at - 1; // the last octet's '.'
            }
            v6 => {
                // Cannot overflow; an error would leave the text cut short.
                let _ = std::fmt::Write::write_fmt(&mut t, format_args!("{v6}"));
            }
        }
        t
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `addr` as text, IPv4-mapped IPv6 shown as IPv4.
pub(crate) fn addr_text(addr: IpAddr) -> String {
    AddrText::new(addr).as_str().to_owned()
}

fn url_host(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// `server.address`/`server.port` as a client sees them: the `Host` header, else the peer.
pub(crate) fn client_side_server(span: &Span) -> (String, u16) {
    match http_of(span).host.as_deref().and_then(split_host) {
        Some((host, port)) => (host.to_string(), port.unwrap_or(span.peer.port)),
        None => (addr_text(span.peer.addr), span.peer.port),
    }
}

/// `url.full` of a client span: `http://{host}:{port}{target}`, credentials stripped and
/// sensitive query values redacted.
pub(crate) fn full_url(span: &Span) -> String {
    let target = http_of(span).target.as_str();
    let (base, rest) = match absolute_prefix(target) {
        Some((scheme, authority, rest)) => {
            let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
            (
                format!("{}://{authority}", scheme.to_ascii_lowercase()),
                rest,
            )
        }
        None => {
            let (host, port) = client_side_server(span);
            let rest = if target.starts_with('/') { target } else { "" };
            let scheme = if http_of(span).tls { "https" } else { "http" };
            (format!("{scheme}://{}:{port}", url_host(&host)), rest)
        }
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    match rest.split_once('?') {
        Some((path, query)) => format!("{base}{path}?{}", redact_query(query)),
        None => format!("{base}{rest}"),
    }
}

/// What the console shows as the request: the target for server spans, `url.full` for client
/// spans (query values redacted either way).
pub(crate) fn display_target(span: &Span) -> String {
    match span.kind {
        SpanKind::Client => full_url(span),
        SpanKind::Server => {
            let t = http_of(span).target.as_str();
            match t.split_once('?') {
                Some((path, query)) => format!("{path}?{}", redact_query(query)),
                None => t.to_string(),
            }
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Where a span's attributes go: a list ([`span_attributes`], for the console and the
/// reference encoder) or straight into an encoding (the OTLP writer, which so needs no list, no
/// `String` per address and no second pass).
pub(crate) trait AttrSink<'a> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>);
    fn int(&mut self, key: &'static str, value: impl Into<i64>);
    /// An address as text (IPv4-mapped IPv6 as IPv4).
    fn addr(&mut self, key: &'static str, addr: IpAddr);
    /// An attribute a rule set (its key may be one of the rule's own).
    fn edited(&mut self, key: &'a str, value: &'a AttrVal);
    /// Whether the sink takes `key` at all: attributes that cost work to build (redacted
    /// queries, full URLs) are skipped when it does not (rules read a few keys per span).
    fn wants(&self, _key: &'static str) -> bool {
        true
    }
    /// A run of attributes that `visit` produces from `key` alone: a sink may reuse what it
    /// made of an equal key before (every span of a keep-alive connection has the same). By
    /// default they are visited.
    fn endpoints(&mut self, key: EndpointsKey<'a>, visit: impl FnOnce(&mut Self))
    where
        Self: Sized,
    {
        let _ = key;
        visit(self);
    }
}

/// Everything an HTTP server span's endpoint attributes (`server.*`, `client.*`,
/// `network.peer.*`, protocol version, transport, type) are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EndpointsKey<'a> {
    pub host: Option<&'a str>,
    pub local: Endpoint,
    pub peer: Endpoint,
    pub version: &'static str,
    /// The client a PROXY protocol header named, when a load balancer relays.
    pub client: Option<std::net::SocketAddr>,
}

impl<'a> AttrSink<'a> for Attrs<'a> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        self.push((key, AttrValue::Str(value.into())));
    }
    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        self.push((key, AttrValue::Int(value.into())));
    }
    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        self.str(key, addr_text(addr));
    }
    fn edited(&mut self, key: &'a str, value: &'a AttrVal) {
        self.push((key, AttrValue::edited(value)));
    }
}

/// The span's own attributes minus those rules changed or deleted (see [`visit_attributes`]).
struct Unedited<'s, S> {
    edits: &'s AttrEdits,
    sink: &'s mut S,
}

impl<'a, S: AttrSink<'a>> AttrSink<'a> for Unedited<'_, S> {
    fn str(&mut self, key: &'static str, value: impl Into<Cow<'a, str>>) {
        if self.edits.get(key).is_none() {
            self.sink.str(key, value);
        }
    }
    fn int(&mut self, key: &'static str, value: impl Into<i64>) {
        if self.edits.get(key).is_none() {
            self.sink.int(key, value);
        }
    }
    fn addr(&mut self, key: &'static str, addr: IpAddr) {
        if self.edits.get(key).is_none() {
            self.sink.addr(key, addr);
        }
    }
    fn edited(&mut self, key: &'a str, value: &'a AttrVal) {
        self.sink.edited(key, value);
    }
    fn wants(&self, key: &'static str) -> bool {
        self.sink.wants(key)
    }
}

/// The span's attributes per the OpenTelemetry semantic conventions of its protocol.
pub(crate) fn span_attributes(span: &Span) -> Attrs<'_> {
    let mut a = Vec::with_capacity(20);
    visit_attributes(span, &mut a);
    a
}

/// [`span_attributes`], each handed to `a` in order, with the changes rules made
/// ([`Span::edits`]): the span's own attributes that no rule touched, then those rules set.
pub(crate) fn visit_attributes<'a>(span: &'a Span, a: &mut impl AttrSink<'a>) {
    match span.edits.as_deref() {
        None => visit_own_attributes(span, a),
        Some(edits) => {
            visit_own_attributes(span, &mut Unedited { edits, sink: a });
            for (k, v) in &edits.0 {
                if let Some(v) = v {
                    a.edited(k, v);
                }
            }
        }
    }
}

/// What the span itself says, before any rule (what rules read through).
pub(crate) fn visit_own_attributes<'a>(span: &'a Span, a: &mut impl AttrSink<'a>) {
    match &span.exchange {
        Exchange::Http(http) => http_attributes(span, http, a),
        Exchange::Db(db) => db_attributes(span, db, a),
        Exchange::Rpc(rpc) => rpc_attributes(span, rpc, a),
        Exchange::Dns(dns) => dns_attributes(span, dns, a),
    }
    if let Some(skew) = span.clock_skew_ns {
        a.int(CLOCK_SKEW, to_i64(skew.get()));
    }
}

/// ztrace's own: how far a span lies outside its remote caller's window by the two hosts'
/// clocks (cross-host links keep such a link and say so; no semantic convention exists).
pub(crate) const CLOCK_SKEW: &str = "ztrace.link.clock_skew_ns";

/// `server.*`, `network.peer.*`, transport and thread: what every non-HTTP span carries.
fn endpoint_attributes<'a>(span: &'a Span, transport: &'static str, a: &mut impl AttrSink<'a>) {
    let server = match span.kind {
        SpanKind::Client => span.peer,
        SpanKind::Server => span.local,
    };
    a.addr(semconv::SERVER_ADDRESS, server.addr);
    a.int(semconv::SERVER_PORT, server.port);
    a.addr(semconv::NETWORK_PEER_ADDRESS, span.peer.addr);
    a.int(semconv::NETWORK_PEER_PORT, span.peer.port);
    a.str(semconv::NETWORK_TRANSPORT, transport);
    if span.tid != 0 {
        a.int(semconv::THREAD_ID, span.tid);
    }
}

/// gRPC spans (RPC semantic conventions).
fn rpc_attributes<'a>(span: &'a Span, rpc: &'a RpcExchange, a: &mut impl AttrSink<'a>) {
    a.str(semconv::RPC_SYSTEM, "grpc");
    a.str(semconv::RPC_SERVICE, rpc.service.as_str());
    a.str(semconv::RPC_METHOD, rpc.method.as_str());
    if let Some(code) = rpc.grpc_status {
        a.int(semconv::RPC_GRPC_STATUS_CODE, code);
    }
    a.str(semconv::NETWORK_PROTOCOL_NAME, "http");
    a.str(semconv::NETWORK_PROTOCOL_VERSION, "2");
    endpoint_attributes(span, "tcp", a);
    // Behind a load balancer's PROXY header, the client it named (as HTTP server spans); the
    // balancer stays the network peer.
    if let (SpanKind::Server, Some(c)) = (span.kind, rpc.client) {
        a.addr(semconv::CLIENT_ADDRESS, c.ip());
        a.int(semconv::CLIENT_PORT, c.port());
    }
    if let SpanStatus::Error(e) = &span.status {
        a.str(semconv::ERROR_TYPE, e.as_str());
    }
}

/// DNS spans: the question and, when it failed, the response code as `error.type`.
fn dns_attributes<'a>(span: &'a Span, dns: &'a DnsExchange, a: &mut impl AttrSink<'a>) {
    a.str(semconv::DNS_QUESTION_NAME, dns.name.as_str());
    endpoint_attributes(span, "udp", a);
    if let SpanStatus::Error(e) = &span.status {
        a.str(semconv::ERROR_TYPE, e.as_str());
    }
}

/// Database client/server spans (database semantic conventions).
fn db_attributes<'a>(span: &'a Span, db: &'a DbExchange, a: &mut impl AttrSink<'a>) {
    a.str(semconv::DB_SYSTEM_NAME, db.system.name());
    if let Some(op) = &db.operation {
        a.str(semconv::DB_OPERATION_NAME, op.as_str());
    }
    if let Some(coll) = &db.collection {
        a.str(semconv::DB_COLLECTION_NAME, coll.as_str());
    }
    if let Some(ns) = &db.namespace {
        a.str(semconv::DB_NAMESPACE, ns.as_str());
    }
    if let Some(q) = &db.query_text {
        a.str(semconv::DB_QUERY_TEXT, q.as_str());
    }
    if let Some((code, _)) = &db.error {
        a.str(semconv::DB_RESPONSE_STATUS_CODE, code.as_str());
        a.str(semconv::ERROR_TYPE, code.as_str());
    }
    if let Some(rows) = db.rows {
        a.int(semconv::DB_RESPONSE_RETURNED_ROWS, to_i64(rows));
    }
    let (server, peer) = match span.kind {
        SpanKind::Client => (span.peer, span.peer),
        SpanKind::Server => (span.local, span.peer),
    };
    a.addr(semconv::SERVER_ADDRESS, server.addr);
    a.int(semconv::SERVER_PORT, server.port);
    a.addr(semconv::NETWORK_PEER_ADDRESS, peer.addr);
    a.int(semconv::NETWORK_PEER_PORT, peer.port);
    a.str(semconv::NETWORK_TRANSPORT, "tcp");
    if span.tid != 0 {
        a.int(semconv::THREAD_ID, span.tid);
    }
}

/// HTTP spans (HTTP semantic conventions).
/// `network.*` of an HTTP span: peer, protocol version, transport and address type.
fn http_network<'a>(peer: Endpoint, version: &'static str, a: &mut impl AttrSink<'a>) {
    let addr = canonical(peer.addr);
    a.addr(semconv::NETWORK_PEER_ADDRESS, addr);
    a.int(semconv::NETWORK_PEER_PORT, peer.port);
    let version = version.trim();
    let version = version.strip_prefix("HTTP/").unwrap_or(version);
    if !version.is_empty() {
        a.str(semconv::NETWORK_PROTOCOL_VERSION, version);
    }
    a.str(semconv::NETWORK_TRANSPORT, "tcp");
    let network_type = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    a.str(semconv::NETWORK_TYPE, network_type);
}

fn http_attributes<'a>(span: &'a Span, http: &'a HttpExchange, a: &mut impl AttrSink<'a>) {
    let method = http.method.as_str();
    if known_method(method) {
        a.str(semconv::HTTP_REQUEST_METHOD, method);
    } else {
        a.str(semconv::HTTP_REQUEST_METHOD, "_OTHER");
        if !method.is_empty() {
            a.str(semconv::HTTP_REQUEST_METHOD_ORIGINAL, method);
        }
    }
    if let Some(code) = http.status {
        a.int(semconv::HTTP_RESPONSE_STATUS_CODE, code);
    }
    match span.kind {
        SpanKind::Server => {
            let (path, query) = split_target(&http.target);
            a.str(semconv::URL_PATH, path);
            if let Some(q) = query.filter(|q| !q.is_empty())
                && a.wants(semconv::URL_QUERY)
            {
                a.str(semconv::URL_QUERY, redact_query(q));
            }
            a.str(semconv::URL_SCHEME, if http.tls { "https" } else { "http" });
            let key = EndpointsKey {
                host: http.host.as_deref(),
                local: span.local,
                peer: span.peer,
                version: http.version,
                client: http.client,
            };
            a.endpoints(key, |a| {
                if a.wants(semconv::SERVER_ADDRESS) || a.wants(semconv::SERVER_PORT) {
                    let port = match key.host.and_then(split_host) {
                        Some((host, port)) => {
                            a.str(semconv::SERVER_ADDRESS, host);
                            port.unwrap_or(key.local.port)
                        }
                        None => {
                            a.addr(semconv::SERVER_ADDRESS, key.local.addr);
                            key.local.port
                        }
                    };
                    a.int(semconv::SERVER_PORT, port);
                }
                // The original client when a load balancer's PROXY header named it; the
                // balancer stays the network peer.
                let (addr, port) = key
                    .client
                    .map_or((key.peer.addr, key.peer.port), |c| (c.ip(), c.port()));
                a.addr(semconv::CLIENT_ADDRESS, addr);
                a.int(semconv::CLIENT_PORT, port);
                http_network(key.peer, key.version, a);
            });
        }
        SpanKind::Client => {
            if a.wants(semconv::URL_FULL) || a.wants(semconv::URL_SCHEME) {
                let full = full_url(span);
                let scheme = full
                    .split_once("://")
                    .map_or("http", |(s, _)| s)
                    .to_string();
                a.str(semconv::URL_FULL, full);
                a.str(semconv::URL_SCHEME, scheme);
            }
            if a.wants(semconv::SERVER_ADDRESS) || a.wants(semconv::SERVER_PORT) {
                let (address, port) = client_side_server(span);
                a.str(semconv::SERVER_ADDRESS, address);
                a.int(semconv::SERVER_PORT, port);
            }
            http_network(span.peer, http.version, a);
        }
    }
    if let Some(ua) = &http.user_agent {
        a.str(semconv::USER_AGENT_ORIGINAL, ua.as_str());
    }
    if let Some(n) = http.request_body_size {
        a.int(semconv::HTTP_REQUEST_BODY_SIZE, to_i64(n));
    }
    if let Some(n) = http.response_body_size {
        a.int(semconv::HTTP_RESPONSE_BODY_SIZE, to_i64(n));
    }
    if span.tid != 0 {
        a.int(semconv::THREAD_ID, span.tid);
    }
    if let SpanStatus::Error(msg) = &span.status {
        let error_type = match http.status {
            Some(code) => code.to_string(),
            None if !msg.is_empty() => msg.clone(),
            None => "_OTHER".to_string(),
        };
        a.str(semconv::ERROR_TYPE, error_type);
    }
}

/// Reading attribute lists in the tests of this folder.
#[cfg(test)]
pub(crate) mod testutil {
    use super::{AttrValue, Attrs};

    pub fn get<'a, 'b>(attrs: &'a Attrs<'b>, key: &str) -> Option<&'a AttrValue<'b>> {
        attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn s(v: &str) -> AttrValue<'static> {
        AttrValue::Str(v.to_string().into())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::testutil::{get, s};
    use super::*;
    use crate::semconv::names::span_name;
    use crate::testkit::*;

    /// A cross-host link outside its caller's window says by how much; other spans say nothing.
    #[test]
    fn clock_skew_is_marked_on_the_span() {
        let mut span = server_span();
        assert_eq!(get(&span_attributes(&span), CLOCK_SKEW), None);
        span.clock_skew_ns = std::num::NonZeroU64::new(2_500_000);
        assert_eq!(
            get(&span_attributes(&span), CLOCK_SKEW),
            Some(&AttrValue::Int(2_500_000))
        );
    }

    #[test]
    fn addresses_as_text_match_display() {
        for v4 in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(10, 0, 100, 9),
            Ipv4Addr::new(1, 20, 3, 199),
            Ipv4Addr::new(127, 0, 0, 1),
        ] {
            assert_eq!(addr_text(IpAddr::V4(v4)), v4.to_string());
            assert_eq!(addr_text(IpAddr::V6(v4.to_ipv6_mapped())), v4.to_string());
        }
        for o in 0..=255u8 {
            let v4 = Ipv4Addr::new(o, 255 - o, o / 3, o % 10);
            assert_eq!(addr_text(IpAddr::V4(v4)), v4.to_string());
        }
        assert_eq!(addr_text(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::1");
        assert_eq!(
            addr_text(
                "2001:db8::1"
                    .parse()
                    .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            ),
            "2001:db8::1"
        );
        // The longest texts fit the in-place buffer whole.
        for v6 in [
            Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xfffe,
            ),
            Ipv6Addr::new(0x1, 0, 0, 0, 0, 0xffff, 0xffff, 0xffff),
            Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0xffff, 0xffff),
        ] {
            assert_eq!(addr_text(IpAddr::V6(v6)), v6.to_string());
        }
    }

    /// The byte-level `split_host` against the `str`-method version it replaced.
    #[test]
    fn split_host_agrees_with_the_char_version() {
        fn reference(host: &str) -> Option<(&str, Option<u16>)> {
            let h = host.trim();
            if h.is_empty() {
                return None;
            }
            if let Some(rest) = h.strip_prefix('[') {
                let (inner, after) = rest.split_once(']')?;
                if inner.is_empty() {
                    return None;
                }
                return Some((inner, after.strip_prefix(':').and_then(|p| p.parse().ok())));
            }
            match h.rsplit_once(':') {
                Some((name, port)) if !name.contains(':') => {
                    if name.is_empty() {
                        None
                    } else {
                        Some((name, port.parse().ok()))
                    }
                }
                Some(_) => Some((h, None)),
                None => Some((h, None)),
            }
        }
        let parts = [
            "",
            " ",
            "\t",
            "\u{a0}",
            "\u{2003}",
            "a",
            "é",
            "example.com",
            "[",
            "]",
            ":",
            "::1",
            "1",
            "80",
            "+80",
            "++8",
            "65535",
            "65536",
            "000000080",
            "-1",
            "x",
            "[::1]",
            "ü:",
        ];
        let mut n = 0;
        for a in parts {
            for b in parts {
                for c in parts {
                    let h = format!("{a}{b}{c}");
                    assert_eq!(split_host(&h), reference(&h), "{h:?}");
                    n += 1;
                }
            }
        }
        assert_eq!(n, parts.len().pow(3));
    }

    #[test]
    fn host_header_parsing() {
        assert_eq!(split_host("example.com"), Some(("example.com", None)));
        assert_eq!(
            split_host(" example.com:8080 "),
            Some(("example.com", Some(8080)))
        );
        assert_eq!(split_host("[::1]:80"), Some(("::1", Some(80))));
        assert_eq!(split_host("[::1]"), Some(("::1", None)));
        assert_eq!(split_host("::1"), Some(("::1", None)));
        assert_eq!(split_host("host:notaport"), Some(("host", None)));
        assert_eq!(split_host(""), None);
        assert_eq!(split_host("[]:80"), None);
        assert_eq!(split_host("[::1"), None);
        assert_eq!(split_host(":80"), None);
    }

    #[test]
    fn target_splitting() {
        assert_eq!(split_target("/a/b?x=1&y"), ("/a/b", Some("x=1&y")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(split_target("/a#frag"), ("/a", None));
        assert_eq!(split_target("http://h:1/p?q"), ("/p", Some("q")));
        assert_eq!(split_target("http://h:1"), ("/", None));
        assert_eq!(split_target("*"), ("*", None));
        assert_eq!(split_target(""), ("", None));
    }

    #[test]
    fn sensitive_query_values_are_redacted() {
        assert_eq!(redact_query("a=1&sig=abc&b"), "a=1&sig=REDACTED&b");
        // Presigned S3 (SigV4) and GCS URLs, OAuth, API keys: any case, `-`/`_` or neither.
        assert_eq!(
            redact_query(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261204&X-Amz-Signature=ab12&X-Amz-Security-Token=tok"
            ),
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED"
        );
        for key in [
            "access_token",
            "ACCESS_TOKEN",
            "token",
            "api_key",
            "Api-Key",
            "apikey",
            "code",
            "client_secret",
            "password",
            "X-Goog-Signature",
            "AWSAccessKeyId",
        ] {
            assert_eq!(
                redact_query(&format!("page=2&{key}=s3cr3t")),
                format!("page=2&{key}=REDACTED"),
                "{key}"
            );
        }
        // Look-alikes and non-credentials pass.
        for pair in [
            "tokens=3",
            "keyword=rust",
            "codec=h264",
            "id=42",
            "secretary=x",
        ] {
            assert_eq!(redact_query(pair), pair);
        }
        assert_eq!(
            redact_query(&format!("{}=1", "k".repeat(40))),
            format!("{}=1", "k".repeat(40))
        );
        assert_eq!(redact_query("a=1"), "a=1");
        assert_eq!(redact_query("sig"), "sig");
    }

    /// Behind a load balancer that sent a PROXY header: `client.*` is the client it named,
    /// `network.peer.*` the balancer.
    #[test]
    fn proxied_client() {
        let mut span = server_span();
        if let Exchange::Http(h) = &mut span.exchange {
            h.client = Some("203.0.113.7:40001".parse().unwrap());
        }
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), Some(&s("203.0.113.7")));
        assert_eq!(get(&a, semconv::CLIENT_PORT), Some(&AttrValue::Int(40001)));
        assert_eq!(get(&a, semconv::NETWORK_PEER_ADDRESS), Some(&s("10.0.0.2")));
        assert_eq!(
            get(&a, semconv::NETWORK_PEER_PORT),
            Some(&AttrValue::Int(51234))
        );
    }

    /// A gRPC call behind such a header: its SERVER span has the same `client.*`; a CLIENT
    /// span (the balancer's own call) and a call without a header have none.
    #[test]
    fn proxied_grpc_client() {
        let mut span = server_span();
        let client = "203.0.113.7:40001".parse().ok();
        span.exchange = Exchange::Rpc(RpcExchange {
            service: "demo.Greeter".into(),
            method: "SayHello".into(),
            client,
            ..Default::default()
        });
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), Some(&s("203.0.113.7")));
        assert_eq!(get(&a, semconv::CLIENT_PORT), Some(&AttrValue::Int(40001)));
        assert_eq!(get(&a, semconv::NETWORK_PEER_ADDRESS), Some(&s("10.0.0.2")));
        span.kind = SpanKind::Client;
        assert_eq!(get(&span_attributes(&span), semconv::CLIENT_ADDRESS), None);
        span.kind = SpanKind::Server;
        if let Exchange::Rpc(r) = &mut span.exchange {
            r.client = None;
        }
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), None);
        assert_eq!(get(&a, semconv::CLIENT_PORT), None);
    }

    #[test]
    fn server_span_attributes() {
        let span = server_span();
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD), Some(&s("GET")));
        assert_eq!(
            get(&a, semconv::HTTP_RESPONSE_STATUS_CODE),
            Some(&AttrValue::Int(200))
        );
        assert_eq!(get(&a, semconv::URL_PATH), Some(&s("/api/orders")));
        assert_eq!(get(&a, semconv::URL_QUERY), Some(&s("limit=10")));
        assert_eq!(get(&a, semconv::URL_SCHEME), Some(&s("http")));
        assert_eq!(get(&a, semconv::URL_FULL), None);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("shop.example")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(8080)));
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), Some(&s("10.0.0.2")));
        assert_eq!(get(&a, semconv::CLIENT_PORT), Some(&AttrValue::Int(51234)));
        assert_eq!(get(&a, semconv::NETWORK_PEER_ADDRESS), Some(&s("10.0.0.2")));
        assert_eq!(
            get(&a, semconv::NETWORK_PEER_PORT),
            Some(&AttrValue::Int(51234))
        );
        assert_eq!(get(&a, semconv::NETWORK_PROTOCOL_VERSION), Some(&s("1.1")));
        assert_eq!(get(&a, semconv::NETWORK_TRANSPORT), Some(&s("tcp")));
        assert_eq!(get(&a, semconv::NETWORK_TYPE), Some(&s("ipv4")));
        assert_eq!(
            get(&a, semconv::USER_AGENT_ORIGINAL),
            Some(&s("curl/8.5.0"))
        );
        assert_eq!(get(&a, semconv::HTTP_REQUEST_BODY_SIZE), None);
        assert_eq!(
            get(&a, semconv::HTTP_RESPONSE_BODY_SIZE),
            Some(&AttrValue::Int(512))
        );
        assert_eq!(get(&a, semconv::ERROR_TYPE), None);
        // No key twice.
        let mut keys: Vec<_> = a.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), a.len());
    }

    #[test]
    fn server_address_falls_back_to_local_socket() {
        let mut span = server_span();
        span.http_mut().unwrap().host = None;
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("10.0.0.1")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(8080)));
        span.http_mut().unwrap().host = Some("shop.example".into());
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("shop.example")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(8080)));
    }

    #[test]
    fn client_span_attributes() {
        let span = client_span();
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD), Some(&s("POST")));
        assert_eq!(
            get(&a, semconv::URL_FULL),
            Some(&s("http://payments:5000/charge"))
        );
        assert_eq!(get(&a, semconv::URL_PATH), None);
        assert_eq!(get(&a, semconv::CLIENT_ADDRESS), None);
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("payments")));
        assert_eq!(get(&a, semconv::SERVER_PORT), Some(&AttrValue::Int(5000)));
        assert_eq!(get(&a, semconv::NETWORK_PEER_ADDRESS), Some(&s("10.0.0.3")));
        assert_eq!(
            get(&a, semconv::HTTP_REQUEST_BODY_SIZE),
            Some(&AttrValue::Int(42))
        );
        assert_eq!(get(&a, semconv::ERROR_TYPE), Some(&s("503")));
    }

    #[test]
    fn client_url_from_peer_ipv6_and_absolute_targets() {
        let mut span = client_span();
        span.http_mut().unwrap().host = None;
        span.peer.addr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        span.http_mut().unwrap().target = "/x?sig=secret".into();
        let a = span_attributes(&span);
        assert_eq!(
            get(&a, semconv::URL_FULL),
            Some(&s("http://[::1]:5000/x?sig=REDACTED"))
        );
        assert_eq!(get(&a, semconv::SERVER_ADDRESS), Some(&s("::1")));
        assert_eq!(get(&a, semconv::NETWORK_TYPE), Some(&s("ipv6")));
        span.http_mut().unwrap().target = "http://user:pw@proxy.example:3128/p?q=1".into();
        assert_eq!(full_url(&span), "http://proxy.example:3128/p?q=1");
        // v4-mapped peers are reported as IPv4.
        span.peer.addr = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let a = span_attributes(&span);
        assert_eq!(
            get(&a, semconv::NETWORK_PEER_ADDRESS),
            Some(&s("127.0.0.1"))
        );
        assert_eq!(get(&a, semconv::NETWORK_TYPE), Some(&s("ipv4")));
    }
    #[test]
    fn unknown_method_is_other() {
        let mut span = server_span();
        span.http_mut().unwrap().method = "PURGE".into();
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD), Some(&s("_OTHER")));
        assert_eq!(
            get(&a, semconv::HTTP_REQUEST_METHOD_ORIGINAL),
            Some(&s("PURGE"))
        );
        assert_eq!(span_name(&span), "HTTP");
        // Methods are case-sensitive.
        span.http_mut().unwrap().method = "get".into();
        assert_eq!(span_name(&span), "HTTP");
        span.http_mut().unwrap().method = "DELETE".into();
        assert_eq!(span_name(&span), "DELETE");
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::HTTP_REQUEST_METHOD_ORIGINAL), None);
    }

    #[test]
    fn error_type_without_status_uses_message() {
        let mut span = client_span();
        span.http_mut().unwrap().status = None;
        span.status = SpanStatus::Error("connection reset".into());
        let a = span_attributes(&span);
        assert_eq!(get(&a, semconv::ERROR_TYPE), Some(&s("connection reset")));
        assert_eq!(get(&a, semconv::HTTP_RESPONSE_STATUS_CODE), None);
    }
}
