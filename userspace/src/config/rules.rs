//! Settings of rules (`[transform]`, `[filter]`): OTTL statements and conditions, shaped like the
//! OpenTelemetry Collector's `transform` and `filter` processors so that a rule list written for
//! the Collector reads the same here:
//!
//! ```toml
//! [transform]
//! error_mode = "ignore"
//! [[transform.trace_statements]]
//! context = "span"
//! statements = ['set(attributes["env"], "prod")']
//! [filter.traces]
//! span = ['attributes["url.path"] == "/healthz"']
//! ```
//!
//! This module checks the shape (tables, lists of strings, error modes) and says where each
//! statement came from; the statements themselves are compiled by `processors::ottl`, which
//! reports errors with that origin and a column.
//!
//! As in Collector configuration files, `$$` stands for a literal `$` (`"$$1"` is the first
//! capture group in a replacement); `${env:…}` references are not expanded.

use super::defs::{ErrorMode, FilterList, RULE_FILE_KEYS, Rules, Signal, StatementGroup};
use super::error::ConfigError;
use super::file::ConfigFile;

/// `$$` → `$`, as Collector configuration files have it.
fn unescape(s: &str) -> String {
    s.replace("$$", "$")
}

fn strings(v: &toml::Value, origin: &str) -> Result<Vec<String>, ConfigError> {
    let Some(items) = v.as_array() else {
        return Err(ConfigError(format!(
            "{origin}: expected a list of strings, found {}",
            v.type_str()
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(n, i)| match i.as_str() {
            Some(s) => Ok(unescape(s)),
            None => Err(ConfigError(format!(
                "{origin}[{n}]: expected a string, found {}",
                i.type_str()
            ))),
        })
        .collect()
}

fn error_mode(v: &toml::Value, origin: &str) -> Result<ErrorMode, ConfigError> {
    v.as_str().and_then(ErrorMode::parse).ok_or_else(|| {
        ConfigError(format!(
            "{origin}: `{v}` is not an error mode; use \"propagate\", \"ignore\" or \"silent\""
        ))
    })
}

fn groups(
    v: &toml::Value,
    key: &str,
    default_context: &str,
    file: &str,
) -> Result<Vec<StatementGroup>, ConfigError> {
    let Some(items) = v.as_array() else {
        return Err(ConfigError(format!(
            "`{key}` in {file}: expected a list of statement groups ([[{key}]]) or of statements"
        )));
    };
    // The Collector's basic form: a plain list of statements, context inferred.
    if items.iter().all(toml::Value::is_str) {
        return Ok(vec![StatementGroup {
            context: default_context.to_string(),
            conditions: Vec::new(),
            statements: strings(v, &format!("`{key}` in {file}"))?,
            error_mode: None,
            origin: format!("`{key}` in {file}"),
        }]);
    }
    let mut out = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let here = format!("`{key}[{n}]` in {file}");
        let Some(t) = item.as_table() else {
            return Err(ConfigError(format!(
                "{here}: expected a table with `context` and `statements`"
            )));
        };
        for k in t.keys() {
            if !["context", "statements", "conditions", "error_mode"].contains(&k.as_str()) {
                return Err(ConfigError(format!(
                    "{here}: unknown key `{k}` (a statement group has context, statements, conditions, error_mode)"
                )));
            }
        }
        let context = match t.get("context") {
            Some(c) => c
                .as_str()
                .ok_or_else(|| ConfigError(format!("{here}: `context` must be a string")))?
                .to_string(),
            None => default_context.to_string(),
        };
        let statements = match t.get("statements") {
            Some(s) => strings(s, &format!("`{key}[{n}].statements` in {file}"))?,
            None => return Err(ConfigError(format!("{here}: `statements` is missing"))),
        };
        let conditions = match t.get("conditions") {
            Some(s) => strings(s, &format!("`{key}[{n}].conditions` in {file}"))?,
            None => Vec::new(),
        };
        let error_mode = t
            .get("error_mode")
            .map(|m| error_mode(m, &format!("`{key}[{n}].error_mode` in {file}")))
            .transpose()?;
        out.push(StatementGroup {
            context,
            conditions,
            statements,
            error_mode,
            origin: here,
        });
    }
    Ok(out)
}

/// The rules a config file holds (none without a file).
pub fn resolve_rules(file: Option<&ConfigFile>) -> Result<Rules, ConfigError> {
    let mut rules = Rules::default();
    let Some(file) = file else {
        return Ok(rules);
    };
    let path = file.path.to_string_lossy().to_string();
    if let Some((v, origin)) = file.get("transform.error_mode") {
        rules.transform_error_mode = error_mode(v, &origin.to_string())?;
    }
    if let Some((v, origin)) = file.get("filter.error_mode") {
        rules.filter_error_mode = error_mode(v, &origin.to_string())?;
    }
    for (signal, key, context) in [
        (Signal::Traces, "transform.trace_statements", "span"),
        (Signal::Metrics, "transform.metric_statements", "datapoint"),
        (Signal::Logs, "transform.log_statements", "log"),
    ] {
        if let Some((v, _)) = file.get(key) {
            for g in groups(v, key, context, &path)? {
                rules.statements.push((signal, g));
            }
        }
    }
    for key in &RULE_FILE_KEYS[5..] {
        let Some((v, origin)) = file.get(key) else {
            continue;
        };
        let mut parts = key.split('.').skip(1);
        let signal = match parts.next() {
            Some("traces") => Signal::Traces,
            Some("metrics") => Signal::Metrics,
            _ => Signal::Logs,
        };
        rules.filters.push(FilterList {
            signal,
            context: parts.next().unwrap_or_default().to_string(),
            conditions: strings(v, &origin.to_string())?,
            origin: origin.to_string(),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn rules(text: &str) -> Result<Rules, ConfigError> {
        resolve_rules(Some(&ConfigFile::parse(text, Path::new("z.toml"))?))
    }

    #[test]
    fn collector_shaped_tables_resolve() {
        let r = rules(
            r#"
[transform]
error_mode = "ignore"
[[transform.trace_statements]]
context = "span"
conditions = ['kind == SPAN_KIND_SERVER']
statements = ['set(attributes["a"], "$$1")']
[[transform.log_statements]]
context = "log"
statements = ['set(severity_text, "INFO")']
[filter]
error_mode = "silent"
[filter.traces]
span = ['attributes["url.path"] == "/healthz"']
[filter.metrics]
datapoint = ['metric.name == "x"']
"#,
        )
        .unwrap();
        assert_eq!(r.transform_error_mode, ErrorMode::Ignore);
        assert_eq!(r.filter_error_mode, ErrorMode::Silent);
        assert_eq!(r.statements.len(), 2);
        let (signal, g) = &r.statements[0];
        assert_eq!(*signal, Signal::Traces);
        assert_eq!(g.statements, ["set(attributes[\"a\"], \"$1\")"]);
        assert_eq!(g.conditions.len(), 1);
        assert_eq!(g.origin, "`transform.trace_statements[0]` in z.toml");
        assert_eq!(r.filters.len(), 2);
        assert!(
            r.filters
                .iter()
                .any(|f| f.context == "span" && f.signal == Signal::Traces)
        );
        assert!(
            r.filters
                .iter()
                .any(|f| f.context == "datapoint" && f.signal == Signal::Metrics)
        );
    }

    #[test]
    fn the_plain_list_form_infers_the_context() {
        let r = rules("[transform]\ntrace_statements = ['set(name, \"x\")']\n").unwrap();
        assert_eq!(r.statements[0].1.context, "span");
    }

    #[test]
    fn bad_shapes_name_their_key() {
        for (text, want) in [
            (
                "[transform]\nerror_mode = \"loud\"\n",
                "transform.error_mode",
            ),
            (
                "[[transform.trace_statements]]\ncontext = \"span\"\n",
                "`statements` is missing",
            ),
            (
                "[[transform.trace_statements]]\nstatements = [1]\n",
                "transform.trace_statements[0].statements",
            ),
            (
                "[[transform.trace_statements]]\nstatements = []\nwhere = 1\n",
                "unknown key `where`",
            ),
            ("[filter.traces]\nspan = \"x\"\n", "filter.traces.span"),
            (
                "[filter.traces]\nspans = []\n",
                "unknown key `filter.traces.spans`",
            ),
        ] {
            let e = rules(text).unwrap_err().0;
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
