//! The OpenTelemetry environment variables (`OTEL_*`): which variable carries which setting.

use std::collections::HashMap;

use super::defs::{GLOBAL_SETTINGS, SIGNAL_SETTINGS, Signal};

/// The environment variable of a file key.
pub(super) fn env_name(key: &str) -> Option<String> {
    if let Some((_, env)) = GLOBAL_SETTINGS.iter().find(|(k, _)| *k == key) {
        return env.map(str::to_string);
    }
    let rest = key.strip_prefix("otlp.")?;
    let (signal, name) = match rest.split_once('.') {
        Some((sig, name)) => (
            Signal::ALL
                .into_iter()
                .find(|s| s.key() == sig)
                .map(Signal::env_infix),
            name,
        ),
        None => (None, rest),
    };
    if !SIGNAL_SETTINGS.contains(&name) {
        return None;
    }
    let name = name.to_ascii_uppercase();
    Some(match signal {
        Some(infix) => format!("OTEL_EXPORTER_OTLP_{infix}_{name}"),
        None => format!("OTEL_EXPORTER_OTLP_{name}"),
    })
}

/// The process environment's `OTEL_*` variables.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("OTEL_"))
        .collect()
}
