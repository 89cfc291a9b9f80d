//! Turning one raw value into a typed setting, with an error that names the value's source.

use std::net::SocketAddr;
use std::time::Duration;

use super::defs::{
    Compression, MAX_PARSER_BUDGET, MIN_PARSER_BUDGET, PidSpec, Protocol, Raw, Signal,
};
use super::error::{ConfigError, Origin, bad};

pub(super) fn string(raw: &Raw, origin: &Origin) -> Result<String, ConfigError> {
    match raw {
        Raw::Str(s) => Ok(s.trim().to_string()),
        other => Err(bad(origin, other, "must be a string")),
    }
}

pub(super) fn boolean(raw: &Raw, origin: &Origin) -> Result<bool, ConfigError> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Raw::Str(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        other => Err(bad(origin, other, "is not a boolean; use true or false")),
    }
}

/// A positive integer count.
pub(super) fn count(raw: &Raw, origin: &Origin) -> Result<usize, ConfigError> {
    let n = match raw {
        Raw::Int(i) => usize::try_from(*i).ok(),
        Raw::Str(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n > 0 => Ok(n),
        _ => Err(bad(origin, raw, "must be a positive integer")),
    }
}

/// A duration: environment variables hold milliseconds (as the specification says); flags and
/// file strings carry a unit (`10s`, `500ms`); a bare file integer is milliseconds.
pub(super) fn duration(raw: &Raw, origin: &Origin) -> Result<Duration, ConfigError> {
    let positive = |d: Duration| {
        if d.is_zero() {
            Err(bad(origin, raw, "must be a positive duration"))
        } else {
            Ok(d)
        }
    };
    match (raw, origin) {
        (Raw::Int(ms), _) => match u64::try_from(*ms) {
            Ok(ms) => positive(Duration::from_millis(ms)),
            Err(_) => Err(bad(origin, raw, "must be a positive duration")),
        },
        (Raw::Str(s), Origin::Env(_)) => match s.trim().parse::<u64>() {
            Ok(ms) => positive(Duration::from_millis(ms)),
            Err(_) => Err(bad(
                origin,
                raw,
                "is not a number of milliseconds (e.g. 10000)",
            )),
        },
        (Raw::Str(s), _) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(origin, raw, "needs a unit, e.g. 10s or 500ms"));
            }
            parse_duration(s).map_err(|e| ConfigError(format!("{origin}: {e}")))
        }
        (other, _) => Err(bad(origin, other, "must be a duration such as 10s")),
    }
}

/// A duration as the command line and the file write it: `30s`, `5m`, `1h`, `250ms`, `2`
/// (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; use e.g. 30s, 5m, 1h, 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A byte size as the command line and the file write it: `67108864`, `64MiB`, `64 MiB`,
/// `512KiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`: all powers of 1024), within
/// [`MIN_PARSER_BUDGET`]..=[`MAX_PARSER_BUDGET`].
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; use e.g. 64MiB, 512KiB or a byte count"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown unit in `{s}`; use KiB, MiB or GiB")),
    };
    let bytes = n
        .checked_mul(1 << shift)
        .and_then(|b| usize::try_from(b).ok());
    match bytes {
        Some(b) if (MIN_PARSER_BUDGET..=MAX_PARSER_BUDGET).contains(&b) => Ok(b),
        _ => Err(format!(
            "`{s}` must be a size from {} KiB to {} GiB",
            MIN_PARSER_BUDGET >> 10,
            MAX_PARSER_BUDGET >> 30
        )),
    }
}

/// A PID to trace as the command line and the file write it: `1234`, or `1234=checkout` to name
/// its service (the name also goes to the children it forks).
pub fn parse_pid_spec(s: &str) -> Result<PidSpec, String> {
    let (pid, name) = match s.split_once('=') {
        Some((pid, name)) => (pid, Some(name.trim())),
        None => (s, None),
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a PID (or PID=SERVICE_NAME)"))?;
    match name {
        Some("") => Err(format!("`{s}`: the service name after `=` is empty")),
        Some(n) if n.chars().any(char::is_control) => {
            Err(format!("`{s}`: the service name has control characters"))
        }
        name => Ok(PidSpec {
            pid,
            service_name: name.map(str::to_string),
        }),
    }
}

/// Decodes `%XX` escapes; a malformed escape or invalid UTF-8 is an error.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A W3C-baggage-like list `k=v,k2=v2` (no properties), values percent-decoded; with
/// `decode_keys` keys too (`OTEL_RESOURCE_ATTRIBUTES`). Empty members are skipped.
pub(super) fn key_value_list(
    raw: &Raw,
    origin: &Origin,
    decode_keys: bool,
) -> Result<Vec<(String, String)>, ConfigError> {
    let s = match raw {
        Raw::Pairs(p) => return Ok(p.clone()),
        Raw::Str(s) => s,
        other => {
            return Err(bad(
                origin,
                other,
                "must be a list like key1=value1,key2=value2",
            ));
        }
    };
    let mut out = Vec::new();
    for member in s.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let Some((k, v)) = member.split_once('=') else {
            return Err(ConfigError(format!(
                "{origin}: `{member}` is not key=value (the list is key1=value1,key2=value2)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        let key = if decode_keys {
            percent_decode(k)
        } else {
            Some(k.to_string())
        };
        let (Some(key), Some(value)) = (key, percent_decode(v)) else {
            return Err(ConfigError(format!(
                "{origin}: `{member}` has a malformed percent-encoding (use %XX for , = and %)"
            )));
        };
        if key.is_empty() {
            return Err(ConfigError(format!(
                "{origin}: `{member}` has an empty key"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Header names must be valid HTTP/gRPC metadata keys, values visible ASCII.
pub(super) fn headers(raw: &Raw, origin: &Origin) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in key_value_list(raw, origin, false)? {
        let name = k.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.ends_with("-bin") {
            return Err(ConfigError(format!(
                "{origin}: `{k}` is not a valid header name"
            )));
        }
        if http::HeaderValue::from_str(&v).is_err() || !v.is_ascii() {
            return Err(ConfigError(format!(
                "{origin}: the value of header `{k}` must be printable ASCII (percent-encode other bytes)"
            )));
        }
        out.push((name, v));
    }
    Ok(out)
}

pub(super) fn protocol(raw: &Raw, origin: &Origin) -> Result<Protocol, ConfigError> {
    match string(raw, origin)?.as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(bad(
            origin,
            raw,
            "is not supported by ztrace; use http/protobuf or grpc",
        )),
        _ => Err(bad(
            origin,
            raw,
            "is not an OTLP protocol; use grpc or http/protobuf",
        )),
    }
}

pub(super) fn compression(raw: &Raw, origin: &Origin) -> Result<Compression, ConfigError> {
    match string(raw, origin)?.to_ascii_lowercase().as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(bad(
            origin,
            raw,
            "is not a supported compression; use gzip or none",
        )),
    }
}

/// An endpoint URL: http or https, a host, no query or fragment.
pub(super) fn endpoint(raw: &Raw, origin: &Origin) -> Result<http::Uri, ConfigError> {
    let s = string(raw, origin)?;
    let why = |w: &str| {
        ConfigError(format!(
            "{origin}: `{s}` is not a valid OTLP endpoint ({w}); use e.g. http://localhost:4317"
        ))
    };
    let uri: http::Uri = s.parse().map_err(|e| why(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        None => return Err(why("scheme must be http (plaintext) or https (TLS)")),
        Some(_) => return Err(why("scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(why("no host"));
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(why("no query or fragment allowed"));
    }
    Ok(uri)
}

/// `base` with `path` appended to its path (the OTLP/HTTP rule for the generic endpoint).
pub(super) fn append_path(base: &http::Uri, path: &str) -> http::Uri {
    let mut parts = base.clone().into_parts();
    let old = base.path().trim_end_matches('/');
    let joined = format!("{old}/{path}");
    parts.path_and_query = joined.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// `host:port` default endpoint for a protocol, with the signal path for HTTP.
pub(super) fn default_endpoint(protocol: Protocol, signal: Signal) -> http::Uri {
    let base: http::Uri = format!("http://localhost:{}", protocol.default_port())
        .parse()
        .unwrap_or_default();
    match protocol {
        Protocol::Grpc => base,
        Protocol::HttpProtobuf => append_path(&base, signal.http_path()),
    }
}

pub(super) fn read_pem(raw: &Raw, origin: &Origin, what: &str) -> Result<Vec<u8>, ConfigError> {
    let path = string(raw, origin)?;
    let pem = std::fs::read(&path)
        .map_err(|e| ConfigError(format!("{origin}: cannot read {what} file `{path}`: {e}")))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ConfigError(format!(
            "{origin}: `{path}` is not a PEM file (no -----BEGIN line)"
        )));
    }
    Ok(pem)
}

pub(super) fn ratio(raw: Option<(Raw, Origin)>) -> Result<f64, ConfigError> {
    let Some((raw, origin)) = raw else {
        return Ok(1.0);
    };
    let r = match &raw {
        Raw::Float(f) => Some(*f),
        Raw::Int(i) => Some(*i as f64),
        Raw::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match r {
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(bad(
            &origin,
            &raw,
            "is not a sampling ratio; use a number from 0 to 1, e.g. 0.25",
        )),
    }
}

/// A socket address given as a string under file key `key`.
pub(super) fn socket_addr(s: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError(format!(
            "{key}: `{s}` is not an address such as 0.0.0.0:4390"
        ))
    })
}

/// A TCP port given as a file integer.
pub(super) fn port(v: &toml::Value, origin: &Origin) -> Result<u16, ConfigError> {
    v.as_integer()
        .and_then(|i| u16::try_from(i).ok())
        .ok_or_else(|| ConfigError(format!("{origin}: `{v}` is not a port")))
}

/// A file key that must be a string, if present.
pub(super) fn file_string(
    file: &super::file::ConfigFile,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match file.get(key) {
        None => Ok(None),
        Some((toml::Value::String(s), _)) => Ok(Some(s.clone())),
        Some((v, origin)) => Err(ConfigError(format!("{origin}: `{v}` is not a string"))),
    }
}
