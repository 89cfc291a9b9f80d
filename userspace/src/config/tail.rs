//! Settings of tail sampling (`[tail_sampling]`, `[[tail_sampling.policies]]`) and anomaly
//! detection (`[anomaly]`): the resolved types, their defaults, and their resolution from the
//! file and the common-case flags. The policy vocabulary is the OpenTelemetry Collector
//! `tail_sampling` processor's (type names and field names), so an operator's existing policy
//! list reads the same here; `anomaly` is ztrace's own policy type.
//!
//! Every error names the key it is about (`tail_sampling.policies[2].latency.threshold_ms`), and
//! start-up stops on it. This module reads no files but the config file already parsed.

use std::time::Duration;

use super::defs::{ANOMALY_MAX_OPERATIONS_KEY, TAIL_FILE_KEYS};
use super::error::ConfigError;
use super::file::ConfigFile;

/// How one policy decides.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyRule {
    /// Keep every trace.
    AlwaysSample,
    /// Keep traces with a span whose status is one of these.
    StatusCode(Vec<StatusCodeName>),
    /// Keep traces whose duration (earliest start to latest end) is at least `threshold_ms` and,
    /// when set, at most `upper_threshold_ms`.
    Latency {
        threshold_ms: u64,
        upper_threshold_ms: Option<u64>,
    },
    /// Keep this percentage of traces, chosen by the trace id's randomness (consistent with the
    /// `traceidratio` head sampler, so every agent keeps the same traces).
    Probabilistic { sampling_percentage: f64 },
    /// Keep traces while fewer than this many spans were kept in the current second.
    RateLimiting { spans_per_second: u64 },
    /// Keep traces with a span (or its process's resource) whose string attribute `key` equals
    /// (or, with regexes, matches) one of `values`. `invert_match`: such traces are dropped
    /// whatever the other policies say, and the others count as kept by this policy.
    StringAttribute {
        key: String,
        values: Vec<String>,
        enabled_regex_matching: bool,
        invert_match: bool,
    },
    /// Keep traces with a span whose integer attribute `key` lies in `[min_value, max_value]`.
    NumericAttribute {
        key: String,
        min_value: Option<i64>,
        max_value: Option<i64>,
        invert_match: bool,
    },
    /// Keep traces every sub-policy keeps.
    And(Vec<PolicyConfig>),
    /// Keep traces that touch an operation in an anomalous window (see [`AnomalyConfig`]).
    Anomaly,
}

/// `status_code.status_codes` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCodeName {
    Error,
    Ok,
    Unset,
}

/// One named policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub name: String,
    pub rule: PolicyRule,
}

/// Tail sampling, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct TailSampling {
    /// How long a local trace whose root span has ended waits for more spans before it is
    /// decided (the linker has already held each span until its links settled).
    pub decision_wait: Duration,
    /// The longest any trace is held (a trace whose root never ends here, e.g. a client call
    /// whose server is on another host, is decided after this).
    pub max_hold: Duration,
    /// Most traces held; beyond it the oldest trace is decided early (counted).
    pub num_traces: usize,
    /// Most spans held; beyond it the oldest trace is decided early (counted).
    pub max_spans: usize,
    /// How long a trace this agent would drop waits for the votes of the agents on other hosts
    /// that share it (cross-host links): a keep from any of them keeps it here too.
    pub vote_wait: Duration,
    pub policies: Vec<PolicyConfig>,
}

pub const DEFAULT_DECISION_WAIT: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(30);
pub const DEFAULT_NUM_TRACES: usize = 50_000;
pub const DEFAULT_MAX_SPANS: usize = 500_000;
pub const DEFAULT_VOTE_WAIT: Duration = Duration::from_secs(2);

/// Anomaly detection, resolved. See the README ("Anomaly detection") for how to tune it.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyConfig {
    /// Length of one measurement window.
    pub window: Duration,
    /// EWMA smoothing of the baselines (weight of the newest window), 0 < alpha <= 1.
    pub alpha: f64,
    /// Z-score at which a signal leaves its baseline.
    pub threshold: f64,
    /// Z-score under which an anomaly ends (hysteresis: below `threshold`).
    pub end_threshold: f64,
    /// Consecutive windows under `end_threshold` that end an anomaly.
    pub end_windows: u32,
    /// Windows of baseline an operation needs before it can alarm.
    pub cold_start_windows: u32,
    /// Consecutive windows beyond `threshold` that start an anomaly.
    pub start_windows: u32,
    /// Requests a window needs to be judged (quieter windows neither alarm nor teach).
    pub min_requests: u64,
    /// Smallest relative latency change that can alarm: the latency deviation is at least this
    /// fraction of the baseline.
    pub latency_min_change: f64,
    /// Most operations tracked (service × operation); more are ignored and counted.
    pub max_operations: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            window: Duration::from_secs(10),
            alpha: 0.2,
            threshold: 4.0,
            end_threshold: 2.0,
            end_windows: 2,
            cold_start_windows: 5,
            start_windows: 1,
            min_requests: 20,
            latency_min_change: 0.25,
            max_operations: 1000,
        }
    }
}

/// The common-case flags, as the command line parsed them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TailFlags {
    /// `--keep-errors`: a `status_code ERROR` policy.
    pub keep_errors: bool,
    /// `--keep-slower-than 500ms`: a `latency` policy.
    pub keep_slower_than: Option<Duration>,
    /// `--sample-healthy 1%` (or `0.01`): a `probabilistic` policy.
    pub sample_healthy: Option<String>,
    /// `--keep-anomalous`: an `anomaly` policy.
    pub keep_anomalous: bool,
    /// `--anomaly`: detection on without a policy (log records and metrics only).
    pub anomaly: bool,
    /// `--anomaly-window 10s`.
    pub anomaly_window: Option<Duration>,
}

/// What the flags and the file resolve to: tail sampling (None: off, every span goes on to the
/// head sampler as before) and anomaly detection (None: off).
pub fn resolve_tail(
    flags: &TailFlags,
    file: Option<&ConfigFile>,
) -> Result<(Option<TailSampling>, Option<AnomalyConfig>), ConfigError> {
    let mut policies = Vec::new();
    let file_policies = match file.and_then(|f| f.get("tail_sampling.policies")) {
        Some((v, _)) => policy_list(v, "tail_sampling.policies")?,
        None => Vec::new(),
    };
    policies.extend(file_policies);
    if flags.keep_errors {
        policies.push(PolicyConfig {
            name: "keep-errors".into(),
            rule: PolicyRule::StatusCode(vec![StatusCodeName::Error]),
        });
    }
    if let Some(d) = flags.keep_slower_than {
        policies.push(PolicyConfig {
            name: "keep-slower-than".into(),
            rule: PolicyRule::Latency {
                threshold_ms: d.as_millis().min(u128::from(u64::MAX)) as u64,
                upper_threshold_ms: None,
            },
        });
    }
    if let Some(s) = &flags.sample_healthy {
        policies.push(PolicyConfig {
            name: "sample-healthy".into(),
            rule: PolicyRule::Probabilistic {
                sampling_percentage: percentage(s)
                    .map_err(|e| ConfigError(format!("--sample-healthy: `{s}` {e}")))?,
            },
        });
    }
    if flags.keep_anomalous {
        policies.push(PolicyConfig {
            name: "keep-anomalous".into(),
            rule: PolicyRule::Anomaly,
        });
    }
    let get = |k: &str| file.and_then(|f| f.get(k)).map(|(v, _)| v);
    // `policies = []` given on purpose (a remote configuration switching tail sampling off):
    // off, whatever the other keys say; they are still checked, and kept for when policies
    // come back.
    let switched_off =
        matches!(get("tail_sampling.policies"), Some(toml::Value::Array(a)) if a.is_empty());
    let file_tail_keys = TAIL_FILE_KEYS[..4].iter().any(|k| get(k).is_some());
    if policies.is_empty() && file_tail_keys && !switched_off {
        return Err(ConfigError(
            "tail_sampling: settings are given but no policy: add [[tail_sampling.policies]] \
             or --keep-errors / --keep-slower-than / --sample-healthy (or `policies = []` to \
             switch tail sampling off and keep the settings)"
                .into(),
        ));
    }
    // The settings are checked whenever one is given, so a bad one is refused by its key.
    let tail = if policies.is_empty() && !TAIL_FILE_KEYS[..5].iter().any(|k| get(k).is_some()) {
        None
    } else {
        let mut t = TailSampling {
            decision_wait: DEFAULT_DECISION_WAIT,
            max_hold: DEFAULT_MAX_HOLD,
            num_traces: DEFAULT_NUM_TRACES,
            max_spans: DEFAULT_MAX_SPANS,
            vote_wait: DEFAULT_VOTE_WAIT,
            policies,
        };
        if let Some(v) = get("tail_sampling.decision_wait") {
            t.decision_wait = duration(v, "tail_sampling.decision_wait")?;
        }
        if let Some(v) = get("tail_sampling.max_hold") {
            t.max_hold = duration(v, "tail_sampling.max_hold")?;
        }
        if let Some(v) = get("tail_sampling.num_traces") {
            t.num_traces = positive(v, "tail_sampling.num_traces")? as usize;
        }
        if let Some(v) = get("tail_sampling.max_spans") {
            t.max_spans = positive(v, "tail_sampling.max_spans")? as usize;
        }
        if let Some(v) = get("tail_sampling.vote_wait") {
            t.vote_wait = duration(v, "tail_sampling.vote_wait")?;
        }
        if t.max_hold < t.decision_wait {
            return Err(ConfigError(format!(
                "tail_sampling.max_hold ({:?}) must not be shorter than tail_sampling.decision_wait ({:?})",
                t.max_hold, t.decision_wait
            )));
        }
        (!t.policies.is_empty()).then_some(t)
    };
    let wants_anomaly = flags.anomaly
        || flags.anomaly_window.is_some()
        || tail
            .as_ref()
            .is_some_and(|t| t.policies.iter().any(uses_anomaly))
        || match get("anomaly.enabled") {
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                return Err(ConfigError(format!(
                    "anomaly.enabled: `{v}` is not a boolean"
                )));
            }
            None => false,
        };
    let anomaly = if wants_anomaly {
        let mut a = AnomalyConfig::default();
        if let Some(v) = get("anomaly.window") {
            a.window = duration(v, "anomaly.window")?;
        }
        if let Some(w) = flags.anomaly_window {
            a.window = w;
        }
        if let Some(v) = get("anomaly.alpha") {
            a.alpha = float(v, "anomaly.alpha")?;
            if !(a.alpha > 0.0 && a.alpha <= 1.0) {
                return Err(ConfigError(format!(
                    "anomaly.alpha: `{v}` must be in (0, 1]"
                )));
            }
        }
        if let Some(v) = get("anomaly.threshold") {
            a.threshold = float(v, "anomaly.threshold")?;
        }
        if let Some(v) = get("anomaly.end_threshold") {
            a.end_threshold = float(v, "anomaly.end_threshold")?;
        }
        if a.threshold <= 0.0 || a.end_threshold < 0.0 || a.end_threshold >= a.threshold {
            return Err(ConfigError(format!(
                "anomaly.end_threshold ({}) must be below anomaly.threshold ({}), both positive",
                a.end_threshold, a.threshold
            )));
        }
        if let Some(v) = get("anomaly.end_windows") {
            a.end_windows = positive(v, "anomaly.end_windows")? as u32;
        }
        if let Some(v) = get("anomaly.start_windows") {
            a.start_windows = positive(v, "anomaly.start_windows")? as u32;
        }
        if let Some(v) = get("anomaly.cold_start_windows") {
            a.cold_start_windows = positive(v, "anomaly.cold_start_windows")? as u32;
        }
        if let Some(v) = get("anomaly.min_requests") {
            a.min_requests = positive(v, "anomaly.min_requests")?;
        }
        if let Some(v) = get("anomaly.latency_min_change") {
            a.latency_min_change = float(v, "anomaly.latency_min_change")?;
            if a.latency_min_change < 0.0 {
                return Err(ConfigError(format!(
                    "anomaly.latency_min_change: `{v}` must not be negative"
                )));
            }
        }
        if let Some(v) = get(ANOMALY_MAX_OPERATIONS_KEY) {
            a.max_operations = positive(v, ANOMALY_MAX_OPERATIONS_KEY)? as usize;
        }
        Some(a)
    } else {
        None
    };
    Ok((tail, anomaly))
}

fn uses_anomaly(p: &PolicyConfig) -> bool {
    match &p.rule {
        PolicyRule::Anomaly => true,
        PolicyRule::And(subs) => subs.iter().any(uses_anomaly),
        _ => false,
    }
}

/// `1%`, `0.5%` or a fraction `0.01` → a percentage.
fn percentage(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, scale) = match s.strip_suffix('%') {
        Some(n) => (n.trim(), 1.0),
        None => (s, 100.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100.0).contains(&(v * scale)) => Ok(v * scale),
        _ => Err("is not a percentage such as 1% (or a fraction such as 0.01)".into()),
    }
}

fn duration(v: &toml::Value, key: &str) -> Result<Duration, ConfigError> {
    match v {
        toml::Value::String(s) => {
            super::parse::parse_duration(s).map_err(|e| ConfigError(format!("{key}: {e}")))
        }
        toml::Value::Integer(ms) if *ms > 0 => Ok(Duration::from_millis(*ms as u64)),
        other => Err(ConfigError(format!(
            "{key}: `{other}` is not a duration such as 2s or 500ms"
        ))),
    }
}

fn positive(v: &toml::Value, key: &str) -> Result<u64, ConfigError> {
    match v.as_integer() {
        Some(i) if i > 0 => Ok(i as u64),
        _ => Err(ConfigError(format!(
            "{key}: `{v}` must be a positive integer"
        ))),
    }
}

fn non_negative(v: &toml::Value, key: &str) -> Result<u64, ConfigError> {
    match v.as_integer() {
        Some(i) if i >= 0 => Ok(i as u64),
        _ => Err(ConfigError(format!(
            "{key}: `{v}` must be a non-negative integer"
        ))),
    }
}

fn float(v: &toml::Value, key: &str) -> Result<f64, ConfigError> {
    match v {
        toml::Value::Float(f) if f.is_finite() => Ok(*f),
        toml::Value::Integer(i) => Ok(*i as f64),
        other => Err(ConfigError(format!("{key}: `{other}` is not a number"))),
    }
}

fn boolean(v: &toml::Value, key: &str) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| ConfigError(format!("{key}: `{v}` is not a boolean; use true or false")))
}

fn text(v: &toml::Value, key: &str) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| ConfigError(format!("{key}: `{v}` is not a string")))
}

/// A list of policies (the top-level list or an `and` policy's sub-policies).
fn policy_list(v: &toml::Value, key: &str) -> Result<Vec<PolicyConfig>, ConfigError> {
    let toml::Value::Array(items) = v else {
        return Err(ConfigError(format!(
            "{key}: must be a list of policies ([[tail_sampling.policies]] tables)"
        )));
    };
    let mut out: Vec<PolicyConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let p = policy(item, &at)?;
        if out.iter().any(|o| o.name == p.name) {
            return Err(ConfigError(format!(
                "{at}.name: `{}` is used by another policy; names must be unique",
                p.name
            )));
        }
        out.push(p);
    }
    Ok(out)
}

/// The fields each policy type's table may hold.
fn allowed_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "always_sample" | "anomaly" => &[],
        "status_code" => &["status_codes"],
        "latency" => &["threshold_ms", "upper_threshold_ms"],
        "probabilistic" => &["sampling_percentage", "hash_salt"],
        "rate_limiting" => &["spans_per_second"],
        "string_attribute" => &[
            "key",
            "values",
            "enabled_regex_matching",
            "invert_match",
            "cache_max_size",
        ],
        "numeric_attribute" => &["key", "min_value", "max_value", "invert_match"],
        "and" => &["and_sub_policy"],
        _ => return None,
    })
}

fn policy(v: &toml::Value, at: &str) -> Result<PolicyConfig, ConfigError> {
    let toml::Value::Table(t) = v else {
        return Err(ConfigError(format!(
            "{at}: must be a table with name and type"
        )));
    };
    let name = match t.get("name") {
        Some(n) => text(n, &format!("{at}.name"))?,
        None => return Err(ConfigError(format!("{at}: needs a name"))),
    };
    let kind = match t.get("type") {
        Some(k) => text(k, &format!("{at}.type"))?,
        None => return Err(ConfigError(format!("{at}: needs a type"))),
    };
    let Some(fields) = allowed_fields(&kind) else {
        return Err(ConfigError(format!(
            "{at}.type: `{kind}` is not a policy type; use always_sample, status_code, latency, \
             probabilistic, rate_limiting, string_attribute, numeric_attribute, and or anomaly"
        )));
    };
    for k in t.keys() {
        if k != "name" && k != "type" && k != &kind {
            return Err(ConfigError(format!(
                "{at}.{k}: unknown key for a `{kind}` policy (its settings go in a `{kind}` table)"
            )));
        }
    }
    let empty = toml::Table::new();
    let body = match t.get(&kind) {
        None => &empty,
        Some(toml::Value::Table(b)) => b,
        Some(other) => {
            return Err(ConfigError(format!(
                "{at}.{kind}: `{other}` must be a table"
            )));
        }
    };
    let sub = |f: &str| format!("{at}.{kind}.{f}");
    for k in body.keys() {
        if !fields.contains(&k.as_str()) {
            return Err(ConfigError(format!(
                "{}: unknown setting; a `{kind}` policy takes {}",
                sub(k),
                if fields.is_empty() {
                    "none".to_string()
                } else {
                    fields.join(", ")
                }
            )));
        }
    }
    let need = |f: &str| {
        body.get(f)
            .ok_or_else(|| ConfigError(format!("{}: is required", sub(f))))
    };
    let invert = |f: &str| match body.get(f) {
        Some(v) => boolean(v, &sub(f)),
        None => Ok(false),
    };
    let rule = match kind.as_str() {
        "always_sample" => PolicyRule::AlwaysSample,
        "anomaly" => PolicyRule::Anomaly,
        "status_code" => {
            let key = sub("status_codes");
            let toml::Value::Array(codes) = need("status_codes")? else {
                return Err(ConfigError(format!(
                    "{key}: must be a list such as [\"ERROR\"]"
                )));
            };
            let mut out = Vec::new();
            for c in codes {
                out.push(match c.as_str() {
                    Some("ERROR") => StatusCodeName::Error,
                    Some("OK") => StatusCodeName::Ok,
                    Some("UNSET") => StatusCodeName::Unset,
                    _ => {
                        return Err(ConfigError(format!(
                            "{key}: `{c}` is not a status code; use ERROR, OK or UNSET"
                        )));
                    }
                });
            }
            if out.is_empty() {
                return Err(ConfigError(format!("{key}: must not be empty")));
            }
            PolicyRule::StatusCode(out)
        }
        "latency" => {
            let threshold_ms = non_negative(need("threshold_ms")?, &sub("threshold_ms"))?;
            let upper_threshold_ms = match body.get("upper_threshold_ms") {
                Some(v) => Some(positive(v, &sub("upper_threshold_ms"))?),
                None => None,
            };
            if upper_threshold_ms.is_some_and(|u| u < threshold_ms) {
                return Err(ConfigError(format!(
                    "{}: must not be below threshold_ms",
                    sub("upper_threshold_ms")
                )));
            }
            PolicyRule::Latency {
                threshold_ms,
                upper_threshold_ms,
            }
        }
        "probabilistic" => {
            let key = sub("sampling_percentage");
            let p = float(need("sampling_percentage")?, &key)?;
            if !(0.0..=100.0).contains(&p) {
                return Err(ConfigError(format!("{key}: `{p}` must be from 0 to 100")));
            }
            if body.contains_key("hash_salt") {
                log::warn!(
                    "{}: ignored; ztrace samples on the trace id's randomness (W3C level 2), the same in every agent",
                    sub("hash_salt")
                );
            }
            PolicyRule::Probabilistic {
                sampling_percentage: p,
            }
        }
        "rate_limiting" => PolicyRule::RateLimiting {
            spans_per_second: positive(need("spans_per_second")?, &sub("spans_per_second"))?,
        },
        "string_attribute" => {
            let key = text(need("key")?, &sub("key"))?;
            let toml::Value::Array(vals) = need("values")? else {
                return Err(ConfigError(format!(
                    "{}: must be a list of strings",
                    sub("values")
                )));
            };
            let values = vals
                .iter()
                .map(|v| text(v, &sub("values")))
                .collect::<Result<Vec<_>, _>>()?;
            let enabled_regex_matching = match body.get("enabled_regex_matching") {
                Some(v) => boolean(v, &sub("enabled_regex_matching"))?,
                None => false,
            };
            if enabled_regex_matching {
                for v in &values {
                    regex::Regex::new(v).map_err(|e| {
                        ConfigError(format!(
                            "{}: `{v}` is not a regular expression: {}",
                            sub("values"),
                            e.to_string().replace('\n', " ")
                        ))
                    })?;
                }
            }
            PolicyRule::StringAttribute {
                key,
                values,
                enabled_regex_matching,
                invert_match: invert("invert_match")?,
            }
        }
        "numeric_attribute" => {
            let key = text(need("key")?, &sub("key"))?;
            let bound = |f: &str| match body.get(f) {
                Some(v) => v
                    .as_integer()
                    .map(Some)
                    .ok_or_else(|| ConfigError(format!("{}: `{v}` is not an integer", sub(f)))),
                None => Ok(None),
            };
            let (min_value, max_value) = (bound("min_value")?, bound("max_value")?);
            if min_value.is_none() && max_value.is_none() {
                return Err(ConfigError(format!(
                    "{at}.{kind}: needs min_value, max_value or both"
                )));
            }
            PolicyRule::NumericAttribute {
                key,
                min_value,
                max_value,
                invert_match: invert("invert_match")?,
            }
        }
        "and" => {
            let subs = policy_list(need("and_sub_policy")?, &sub("and_sub_policy"))?;
            if subs.is_empty() {
                return Err(ConfigError(format!(
                    "{}: must not be empty",
                    sub("and_sub_policy")
                )));
            }
            PolicyRule::And(subs)
        }
        _ => unreachable!("allowed_fields knows every type"),
    };
    Ok(PolicyConfig { name, rule })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn file(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(text, Path::new("z.toml"))
    }

    fn resolve(text: &str) -> Result<(Option<TailSampling>, Option<AnomalyConfig>), ConfigError> {
        resolve_tail(&TailFlags::default(), Some(&file(text)?))
    }

    #[test]
    fn collector_style_policy_list() {
        let (tail, anomaly) = resolve(
            r#"
[tail_sampling]
decision_wait = "2s"
num_traces = 100

[[tail_sampling.policies]]
name = "errors"
type = "status_code"
status_code = { status_codes = ["ERROR"] }

[[tail_sampling.policies]]
name = "slow"
type = "latency"
latency = { threshold_ms = 500, upper_threshold_ms = 10000 }

[[tail_sampling.policies]]
name = "both"
type = "and"
[[tail_sampling.policies.and.and_sub_policy]]
name = "get"
type = "string_attribute"
string_attribute = { key = "http.request.method", values = ["G.T"], enabled_regex_matching = true }
[[tail_sampling.policies.and.and_sub_policy]]
name = "some"
type = "probabilistic"
probabilistic = { sampling_percentage = 10 }

[[tail_sampling.policies]]
name = "odd"
type = "anomaly"
"#,
        )
        .unwrap();
        let tail = tail.unwrap();
        assert_eq!(tail.decision_wait, Duration::from_secs(2));
        assert_eq!(tail.num_traces, 100);
        assert_eq!(tail.policies.len(), 4);
        assert_eq!(
            tail.policies[1].rule,
            PolicyRule::Latency {
                threshold_ms: 500,
                upper_threshold_ms: Some(10_000)
            }
        );
        let PolicyRule::And(subs) = &tail.policies[2].rule else {
            panic!("{:?}", tail.policies[2]);
        };
        assert_eq!(
            subs[1].rule,
            PolicyRule::Probabilistic {
                sampling_percentage: 10.0
            }
        );
        // An anomaly policy turns detection on.
        assert_eq!(anomaly, Some(AnomalyConfig::default()));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"latency\"\nlatency = { threshold = 5 }\n",
                "tail_sampling.policies[0].latency.threshold: unknown setting",
            ),
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"latency\"\n",
                "tail_sampling.policies[0].latency.threshold_ms: is required",
            ),
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"fancy\"\n",
                "tail_sampling.policies[0].type: `fancy` is not a policy type",
            ),
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"probabilistic\"\nprobabilistic = { sampling_percentage = 120 }\n",
                "tail_sampling.policies[0].probabilistic.sampling_percentage: `120` must be from 0 to 100",
            ),
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"status_code\"\nstatus_code = { status_codes = [\"BAD\"] }\n",
                "tail_sampling.policies[0].status_code.status_codes: `\"BAD\"` is not a status code",
            ),
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"string_attribute\"\nstring_attribute = { key = \"k\", values = [\"(\"], enabled_regex_matching = true }\n",
                "tail_sampling.policies[0].string_attribute.values: `(` is not a regular expression",
            ),
            (
                "[[tail_sampling.policies]]\nname = \"a\"\ntype = \"always_sample\"\n[[tail_sampling.policies]]\nname = \"a\"\ntype = \"anomaly\"\n",
                "tail_sampling.policies[1].name: `a` is used by another policy",
            ),
            (
                "[tail_sampling]\ndecision_wait = \"1s\"\n",
                "tail_sampling: settings are given but no policy",
            ),
            (
                "[anomaly]\nenabled = true\nthreshold = 2\nend_threshold = 3\n",
                "anomaly.end_threshold (3) must be below anomaly.threshold (2)",
            ),
            (
                "[anomaly]\nenabled = true\nalpha = 0\n",
                "anomaly.alpha: `0` must be in (0, 1]",
            ),
        ];
        for (text, want) in cases {
            let err = resolve(text).unwrap_err().0;
            assert!(err.starts_with(want), "{text}\n got: {err}\nwant: {want}");
        }
    }

    /// `policies = []` switches tail sampling off whatever the other keys say (they are still
    /// checked); without it, settings and no policy are refused as before.
    #[test]
    fn an_empty_policy_list_is_off_and_the_settings_are_still_checked() {
        let off = "[tail_sampling]\ndecision_wait = \"2s\"\nnum_traces = 100\nvote_wait = \"3s\"\npolicies = []\n";
        assert_eq!(resolve(off).unwrap(), (None, None));
        let e = resolve("[tail_sampling]\nmax_hold = \"soon\"\npolicies = []\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("tail_sampling.max_hold:"), "{e}");
        let e =
            resolve("[tail_sampling]\ndecision_wait = \"2s\"\nmax_hold = \"1s\"\npolicies = []\n")
                .unwrap_err()
                .0;
        assert!(e.contains("must not be shorter"), "{e}");
        let e = resolve("[tail_sampling]\nnum_traces = 100\n")
            .unwrap_err()
            .0;
        assert!(e.contains("`policies = []`"), "{e}");
        // A flag's policy keeps it on.
        let flags = TailFlags {
            keep_errors: true,
            ..TailFlags::default()
        };
        let (tail, _) = resolve_tail(&flags, Some(&file(off).unwrap())).unwrap();
        assert_eq!(tail.unwrap().num_traces, 100);
    }

    #[test]
    fn common_case_flags() {
        let flags = TailFlags {
            keep_errors: true,
            keep_slower_than: Some(Duration::from_millis(500)),
            sample_healthy: Some("1%".into()),
            ..TailFlags::default()
        };
        let (tail, anomaly) = resolve_tail(&flags, None).unwrap();
        let rules: Vec<PolicyRule> = tail.unwrap().policies.into_iter().map(|p| p.rule).collect();
        assert_eq!(
            rules,
            vec![
                PolicyRule::StatusCode(vec![StatusCodeName::Error]),
                PolicyRule::Latency {
                    threshold_ms: 500,
                    upper_threshold_ms: None
                },
                PolicyRule::Probabilistic {
                    sampling_percentage: 1.0
                },
            ]
        );
        assert_eq!(anomaly, None);
        for (given, pct) in [("0", 0.0), ("0.5%", 0.5), ("0.25", 25.0), ("100%", 100.0)] {
            assert_eq!(percentage(given), Ok(pct), "{given}");
        }
        for bad in ["101%", "-1", "lots", "2"] {
            assert!(percentage(bad).is_err(), "{bad}");
        }
        // Nothing asked: off.
        assert_eq!(
            resolve_tail(&TailFlags::default(), None).unwrap(),
            (None, None)
        );
    }
}
