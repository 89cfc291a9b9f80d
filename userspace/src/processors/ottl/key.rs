//! Attribute keys as compiled: a [`Key`] is a key a statement names, its text shared with what
//! rules write ([`intern`]), and, for span attributes, the [`Known`] key the span answers from
//! its typed fields (`known.rs`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Mutex;

use opentelemetry_semantic_conventions::attribute as semconv;

use crate::semconv::attributes::CLOCK_SKEW;

/// Text the compiled program keeps for as long as the process runs (attribute keys and string
/// literals), so what a rule writes can share it instead of copying it per record. Each
/// distinct text is kept once; past `LIMIT` bytes in all (rules replaced over and over with
/// ever new keys) texts are no longer kept and writes copy them.
pub fn intern(text: &str) -> Cow<'static, str> {
    const LIMIT: usize = 1 << 20;
    static KEPT: Mutex<(Option<HashSet<&'static str>>, usize)> = Mutex::new((None, 0));
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let (set, bytes) = &mut *kept;
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(s) = set.get(text) {
        return Cow::Borrowed(s);
    }
    if *bytes + text.len() > LIMIT {
        return Cow::Owned(text.to_owned());
    }
    *bytes += text.len();
    let s: &'static str = Box::leak(text.into());
    set.insert(s);
    Cow::Borrowed(s)
}

/// An attribute key a statement names, resolved when it is compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// Shared with what the statement writes (see [`intern`]).
    pub name: Cow<'static, str>,
    /// For span attributes: the key a span answers from its typed fields (see `known.rs`).
    pub known: Option<Known>,
}

impl Key {
    /// `name`; `direct` when it names an attribute of a span (which may be [`Known`]).
    pub fn new(name: &str, direct: bool) -> Key {
        #[cfg(test)]
        let direct = direct && !WALK_ONLY.with(std::cell::Cell::get);
        match Known::lookup(name) {
            Some((k, name)) if direct => Key {
                name: Cow::Borrowed(name),
                known: Some(k),
            },
            _ => Key {
                name: intern(name),
                known: None,
            },
        }
    }
}

/// An attribute key read directly from a span's typed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Method,
    MethodOriginal,
    StatusCode,
    UrlPath,
    UrlQuery,
    UrlScheme,
    UserAgent,
    RequestBodySize,
    ResponseBodySize,
    ThreadId,
    ServerAddress,
    ServerPort,
    ClientAddress,
    ClientPort,
    PeerAddress,
    PeerPort,
    ProtocolVersion,
    Transport,
    NetworkType,
    ErrorType,
    ClockSkew,
}

/// Every known key with its name (the semantic conventions' constants).
pub const ALL: [(Known, &str); 21] = [
    (Known::Method, semconv::HTTP_REQUEST_METHOD),
    (Known::MethodOriginal, semconv::HTTP_REQUEST_METHOD_ORIGINAL),
    (Known::StatusCode, semconv::HTTP_RESPONSE_STATUS_CODE),
    (Known::UrlPath, semconv::URL_PATH),
    (Known::UrlQuery, semconv::URL_QUERY),
    (Known::UrlScheme, semconv::URL_SCHEME),
    (Known::UserAgent, semconv::USER_AGENT_ORIGINAL),
    (Known::RequestBodySize, semconv::HTTP_REQUEST_BODY_SIZE),
    (Known::ResponseBodySize, semconv::HTTP_RESPONSE_BODY_SIZE),
    (Known::ThreadId, semconv::THREAD_ID),
    (Known::ServerAddress, semconv::SERVER_ADDRESS),
    (Known::ServerPort, semconv::SERVER_PORT),
    (Known::ClientAddress, semconv::CLIENT_ADDRESS),
    (Known::ClientPort, semconv::CLIENT_PORT),
    (Known::PeerAddress, semconv::NETWORK_PEER_ADDRESS),
    (Known::PeerPort, semconv::NETWORK_PEER_PORT),
    (Known::ProtocolVersion, semconv::NETWORK_PROTOCOL_VERSION),
    (Known::Transport, semconv::NETWORK_TRANSPORT),
    (Known::NetworkType, semconv::NETWORK_TYPE),
    (Known::ErrorType, semconv::ERROR_TYPE),
    (Known::ClockSkew, CLOCK_SKEW),
];

impl Known {
    /// The known key named `key`, with its static name.
    pub fn lookup(key: &str) -> Option<(Known, &'static str)> {
        ALL.iter().find(|(_, name)| *name == key).copied()
    }
}

#[cfg(test)]
thread_local! {
    /// Programs compiled meanwhile read every key by the walk (the differential tests'
    /// reference); checked when a key is compiled, never per span.
    pub static WALK_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
