//! The TOML config file: loading, unknown-key checks, and its values as raw settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::defs::{Raw, TABLE_KEYS, file_keys};
use super::error::{ConfigError, Origin};

// ---------------------------------------------------------------------------------------------
// The config file.

/// A parsed config file: its path and every setting by dotted key.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub values: HashMap<String, toml::Value>,
}

impl ConfigFile {
    /// Reads and checks a TOML config file: unknown keys are errors (a typo must not be
    /// silently ignored).
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "--config: cannot read {}: {e}",
                path.to_string_lossy()
            ))
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = e.message().replace('\n', " ");
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError(format!(
                "{} is not valid TOML{at}: {msg}",
                path.to_string_lossy()
            ))
        })?;
        let known = file_keys();
        let mut values = HashMap::new();
        flatten("", table, &known, path, &mut values)?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            values,
        })
    }

    /// The value of `key` with where it came from.
    pub fn get(&self, key: &str) -> Option<(&toml::Value, Origin)> {
        self.values.get(key).map(|v| {
            (
                v,
                Origin::File {
                    key: key.to_string(),
                    path: self.path.clone(),
                },
            )
        })
    }
}

pub(super) fn flatten(
    prefix: &str,
    table: toml::Table,
    known: &[String],
    path: &Path,
    out: &mut HashMap<String, toml::Value>,
) -> Result<(), ConfigError> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        let leaf_table = TABLE_KEYS.iter().any(|t| key.ends_with(&format!(".{t}")));
        match v {
            toml::Value::Table(t) if !leaf_table => flatten(&key, t, known, path, out)?,
            v => {
                if !known.contains(&key) {
                    return Err(ConfigError(format!(
                        "unknown key `{key}` in {} (see the Configuration section of the README)",
                        path.to_string_lossy()
                    )));
                }
                out.insert(key, v);
            }
        }
    }
    Ok(())
}

pub(super) fn raw_of_toml(v: &toml::Value, origin: &Origin) -> Result<Raw, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => Raw::Str(s.clone()),
        toml::Value::Integer(i) => Raw::Int(*i),
        toml::Value::Float(f) => Raw::Float(*f),
        toml::Value::Boolean(b) => Raw::Bool(*b),
        toml::Value::Table(t) => {
            let mut pairs = Vec::new();
            for (k, v) in t {
                match v {
                    toml::Value::String(s) => pairs.push((k.clone(), s.clone())),
                    other => {
                        return Err(ConfigError(format!(
                            "{origin}: the value of `{k}` must be a string, not {}",
                            other.type_str()
                        )));
                    }
                }
            }
            Raw::Pairs(pairs)
        }
        other => {
            return Err(ConfigError(format!(
                "{origin}: unexpected {}",
                other.type_str()
            )));
        }
    })
}
