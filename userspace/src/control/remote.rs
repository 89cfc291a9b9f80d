//! A remote configuration, from TOML text to a [`Plan`] the capture loop applies — or a one-line
//! reason why nothing is applied.
//!
//! The remote text is the same TOML as the config file. It is laid over the local file key by key
//! (a key the remote sets wins; keys it does not set keep the file's value), and then:
//! 1. every key whose value would change is checked against the local allow-list
//!    ([`crate::config::Section`]); a key outside it, or one no remote may change at run time, or
//!    one the command line set (flags win over the file, so the change would not take effect)
//!    refuses the whole configuration;
//! 2. the result is resolved by the very resolver the daemon started with (flags, file,
//!    environment), so a value the file would refuse is refused here with the same message;
//! 3. what differs from the settings in force becomes the [`Plan`].
//!
//! Nothing here changes anything; the plan is applied whole by the capture loop or not at all.
//! This module owns that policy and the effective-configuration text reported to the server
//! (with header values redacted: tokens stay home).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::config::{
    AnomalyConfig, ConfigFile, Opamp, Rules, Sampler, Section, TailSampling, Target,
};

/// The parts of a resolved configuration a remote one may change at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub sampler: Sampler,
    pub tail: Option<TailSampling>,
    /// Not changeable at run time (the detector's baselines would be lost): compared only.
    pub anomaly: Option<AnomalyConfig>,
    pub target: Target,
    /// OTTL `[transform]` and `[filter]` (the resolver has compiled them once to check them).
    pub rules: Rules,
}

/// Resolves a whole configuration file (with the daemon's flags and environment) into
/// [`Settings`], with the same checks as at start-up; the error is the start-up error's text.
pub type Resolver = Box<dyn Fn(&ConfigFile) -> Result<Settings, String> + Send + Sync>;

/// What the daemon started with: the local file (or an empty one), the file keys the command
/// line overrides, and the resolver.
pub struct Base {
    pub file: ConfigFile,
    /// File keys a flag set (their file value is not used, so a remote one would not be either).
    pub flag_keys: BTreeSet<String>,
    pub resolver: Resolver,
}

/// The changes to make, each None when unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub sampler: Option<Sampler>,
    /// Some(None): tail sampling off.
    pub tail: Option<Option<TailSampling>>,
    pub target: Option<Target>,
    /// The new rules (compiled by the daemon before anything is applied).
    pub rules: Option<Rules>,
    /// The new policy list has no `anomaly` policy any more, but the detector it turned on
    /// keeps running (log records and metrics) until a restart.
    pub detection_stays: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// `head sampler, tail sampling off`: what the plan changes, for logs and the health
    /// reported to the server (a tail sampling change says what is in force after it).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.sampler.is_some() {
            parts.push("head sampler".to_string());
        }
        if let Some(tail) = &self.tail {
            parts.push(self.describe_tail(tail.as_ref()));
        }
        if self.target.is_some() {
            parts.push("targets".into());
        }
        if self.rules.is_some() {
            parts.push("rules".into());
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }

    /// What tail sampling is after the plan, when it changes it.
    pub fn tail_state(&self) -> Option<String> {
        self.tail.as_ref().map(|t| self.describe_tail(t.as_ref()))
    }

    /// `tail sampling off`, `tail sampling (2 policies: errors, slow)`.
    fn describe_tail(&self, tail: Option<&TailSampling>) -> String {
        let stays = if self.detection_stays {
            "anomaly detection stays on until a restart"
        } else {
            ""
        };
        match tail {
            None if stays.is_empty() => "tail sampling off".into(),
            None => format!("tail sampling off ({stays})"),
            Some(t) => {
                let names: Vec<&str> = t.policies.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "tail sampling ({} polic{}: {}{}{stays})",
                    names.len(),
                    if names.len() == 1 { "y" } else { "ies" },
                    names.join(", "),
                    if stays.is_empty() { "" } else { "; " },
                )
            }
        }
    }
}

/// A validated remote configuration: the plan, and what becomes effective once it is applied.
#[derive(Debug)]
pub struct Accepted {
    pub plan: Plan,
    pub effective: ConfigFile,
    pub settings: Settings,
}

/// Where the remote text is said to come from in error messages.
const REMOTE: &str = "the remote configuration";

/// Checks `text` against the local file, the allow-list and the resolver, and plans the change
/// from `current` (the settings in force, which came from `effective`).
pub fn validate(
    text: &str,
    base: &Base,
    effective: &ConfigFile,
    current: &Settings,
    opamp: &Opamp,
    targets_from_file: bool,
) -> Result<Accepted, String> {
    let remote = ConfigFile::parse(text, Path::new(REMOTE)).map_err(|e| e.0)?;
    let mut merged = base.file.clone();
    merged.values.extend(remote.values);
    // Errors name both: a bad value may come from either layer.
    merged.path = if base.file.path.as_os_str().is_empty() {
        REMOTE.into()
    } else {
        format!("{} with {REMOTE}", base.file.path.display()).into()
    };
    let changed = changed_keys(&effective.values, &merged.values);
    let mut refused = Vec::new();
    for key in &changed {
        let why = match Section::of_key(key) {
            None => Some("no remote configuration may change it".to_string()),
            Some(s) if !opamp.allow.contains(&s) => Some(format!(
                "this host does not allow remote changes to {}; its operator can add \"{}\" to `[opamp] allow`",
                s.name(),
                s.name()
            )),
            Some(Section::Targets) if !targets_from_file => {
                Some("the command line chose what to trace".to_string())
            }
            Some(_) if base.flag_keys.contains(key) => {
                Some("a command-line flag sets it, and flags win".to_string())
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            refused.push(format!("`{key}`: {why}"));
        }
    }
    if !refused.is_empty() {
        return Err(format!("{REMOTE} changes {}", refused.join("; ")));
    }
    let mut settings = (base.resolver)(&merged)?;
    // Only the policy list can turn detection on or off here (`anomaly.*` is refused above).
    // Off: the detector cannot be stopped without a restart, so it keeps running (log records
    // and metrics; no policy asks it any more) and the plan says so. On: refused.
    let detection_stays = settings.anomaly.is_none() && current.anomaly.is_some();
    if detection_stays {
        settings.anomaly = current.anomaly.clone();
    }
    if settings.anomaly != current.anomaly {
        return Err(format!(
            "{REMOTE} changes `tail_sampling.policies`: an `anomaly` policy turns anomaly detection on, which needs a restart"
        ));
    }
    let mut plan = plan(current, &settings);
    plan.detection_stays = detection_stays && plan.tail.is_some();
    Ok(Accepted {
        plan,
        effective: merged,
        settings,
    })
}

fn plan(current: &Settings, new: &Settings) -> Plan {
    Plan {
        sampler: (new.sampler != current.sampler).then_some(new.sampler),
        tail: (new.tail != current.tail).then(|| new.tail.clone()),
        target: (!same_targets(&current.target, &new.target)).then(|| new.target.clone()),
        rules: (!same_rules(&current.rules, &new.rules)).then(|| new.rules.clone()),
        detection_stays: false,
    }
}

/// The same rules (where each was written, which names the file, does not count).
fn same_rules(a: &Rules, b: &Rules) -> bool {
    let bare = |r: &Rules| {
        let mut r = r.clone();
        r.statements.iter_mut().for_each(|(_, g)| g.origin.clear());
        r.filters.iter_mut().for_each(|f| f.origin.clear());
        r
    };
    bare(a) == bare(b)
}

/// The same processes chosen (a selector's origin, which names the file, does not count).
fn same_targets(a: &Target, b: &Target) -> bool {
    let selects = |t: &Target| -> Vec<_> {
        t.select
            .iter()
            .map(|s| (s.selectors.clone(), s.service_name.clone()))
            .collect()
    };
    a.pids == b.pids && selects(a) == selects(b)
}

/// Keys set in one map and not the other, or set to different values.
fn changed_keys(
    old: &HashMap<String, toml::Value>,
    new: &HashMap<String, toml::Value>,
) -> BTreeSet<String> {
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// The effective configuration as TOML, for `EffectiveConfig`: header values (tokens) are
/// replaced by `<redacted>`.
pub fn effective_toml(file: &ConfigFile) -> String {
    let sorted: BTreeMap<&String, &toml::Value> = file.values.iter().collect();
    let mut root = toml::Table::new();
    for (key, value) in sorted {
        let mut value = value.clone();
        if key.ends_with(".headers")
            && let toml::Value::Table(t) = &mut value
        {
            for (_, v) in t.iter_mut() {
                *v = toml::Value::String("<redacted>".into());
            }
        } else if key.ends_with(".headers") {
            value = toml::Value::String("<redacted>".into());
        }
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut table = &mut root;
        for p in parts {
            let entry = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let toml::Value::Table(t) = entry else {
                unreachable!("made a table just above")
            };
            table = t;
        }
        table.insert(last.to_string(), value);
    }
    toml::to_string(&root).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{
        DEFAULT_ALLOW, RootSampler, Sources, resolve, resolve_tail, resolve_target,
    };

    /// The resolver the daemon builds, minus the flags.
    fn resolver() -> Resolver {
        Box::new(|file: &ConfigFile| {
            let src = Sources {
                file: Some(file),
                ..Sources::default()
            };
            let config = resolve(&src).map_err(|e| e.0)?;
            let target = resolve_target(&src).map_err(|e| e.0)?;
            let (tail, anomaly) = resolve_tail(&Default::default(), Some(file)).map_err(|e| e.0)?;
            let rules = crate::config::resolve_rules(Some(file)).map_err(|e| e.0)?;
            Ok(Settings {
                sampler: config.sampler,
                tail,
                anomaly,
                target,
                rules,
            })
        })
    }

    fn opamp(allow: &[Section]) -> Opamp {
        Opamp {
            endpoint: "http://fleet:4320/v1/opamp".parse().unwrap(),
            headers: vec![],
            tls: Default::default(),
            poll_interval: Duration::from_secs(1),
            state_dir: "/nonexistent".into(),
            allow: allow.to_vec(),
        }
    }

    const LOCAL: &str = r#"
[otlp]
endpoint = "http://collector:4317"
headers = { authorization = "Bearer s3cret" }
[[target.select]]
exe = "nginx"
"#;

    struct Case {
        base: Base,
        current: Settings,
    }

    fn case(local: &str, flag_keys: &[&str]) -> Case {
        let file = ConfigFile::parse(local, Path::new("ztrace.toml")).unwrap();
        let base = Base {
            file,
            flag_keys: flag_keys.iter().map(|s| s.to_string()).collect(),
            resolver: resolver(),
        };
        let current = (base.resolver)(&base.file).unwrap();
        Case { base, current }
    }

    fn check(c: &Case, text: &str, allow: &[Section]) -> Result<Accepted, String> {
        validate(text, &c.base, &c.base.file, &c.current, &opamp(allow), true)
    }

    /// Table-driven: remote text → applied plan or the refusal's key words.
    #[test]
    fn the_allow_list_and_the_parser_decide() {
        let c = case(LOCAL, &[]);
        let ok: &[(&str, &[Section], Plan)] = &[
            (
                "[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"0.25\"\n",
                &DEFAULT_ALLOW,
                Plan {
                    sampler: Some(Sampler::TraceIdRatio(0.25)),
                    ..Plan::default()
                },
            ),
            // Repeating the local file's values changes nothing and needs no permission.
            (
                "[otlp]\nendpoint = \"http://collector:4317\"\n",
                &[],
                Plan::default(),
            ),
            (
                "[[target.select]]\nexe = \"python3\"\n",
                &[Section::Targets],
                Plan {
                    // Compared by its selectors below (origins name the file).
                    target: Some(c.current.target.clone()),
                    ..Plan::default()
                },
            ),
        ];
        for (text, allow, want) in ok {
            let got = check(&c, text, allow).unwrap_or_else(|e| panic!("{text}: {e}"));
            if want.target.is_some() {
                // Selector origins name the file; compare what is selected.
                let t = got.plan.target.as_ref().expect("targets change");
                assert_eq!(t.select[0].selectors, [("exe".into(), "python3".into())]);
            } else {
                assert_eq!(&got.plan, want, "{text}");
            }
        }
        let bad: &[(&str, &[Section], &[&str])] = &[
            // Targets are not in the default allow-list.
            (
                "[[target.select]]\nexe = \"python3\"\n",
                &DEFAULT_ALLOW,
                &["`target.select`", "\"targets\""],
            ),
            // Exporter settings are never remote.
            (
                "[otlp]\nendpoint = \"http://evil:4317\"\n",
                &Section::ALL,
                &["`otlp.endpoint`", "no remote configuration"],
            ),
            // Nor is the OpAMP table itself (the allow-list).
            (
                "[opamp]\nallow = [\"targets\"]\n",
                &Section::ALL,
                &["`opamp.allow`"],
            ),
            // The file's own parser: unknown keys, bad TOML, bad values.
            (
                "[traces]\nsampler_rate = 0.5\n",
                &Section::ALL,
                &["unknown key `traces.sampler_rate`"],
            ),
            ("[traces\n", &Section::ALL, &["not valid TOML"]),
            (
                "[traces]\nsampler = \"traceidratio\"\nsampler_arg = \"2\"\n",
                &Section::ALL,
                &["traces.sampler_arg"],
            ),
            // One refused key refuses everything, allowed keys included.
            (
                "[traces]\nsampler = \"always_off\"\n[otlp]\ntimeout = \"1s\"\n",
                &Section::ALL,
                &["`otlp.timeout`"],
            ),
        ];
        for (text, allow, words) in bad {
            let e = check(&c, text, allow).expect_err(text);
            for w in *words {
                assert!(e.contains(w), "{text}: `{w}` not in: {e}");
            }
        }
    }

    #[test]
    fn flags_and_command_line_targets_win() {
        let c = case(LOCAL, &["traces.sampler"]);
        let e = check(&c, "[traces]\nsampler = \"always_off\"\n", &DEFAULT_ALLOW).unwrap_err();
        assert!(e.contains("flags win"), "{e}");
        let e = validate(
            "[[target.select]]\nexe = \"x\"\n",
            &c.base,
            &c.base.file,
            &c.current,
            &opamp(&Section::ALL),
            false,
        )
        .unwrap_err();
        assert!(e.contains("command line chose what to trace"), "{e}");
    }

    #[test]
    fn tail_sampling_changes_and_anomaly_needs_a_restart() {
        let c = case(LOCAL, &[]);
        let a = check(
            &c,
            "[[tail_sampling.policies]]\nname = \"errors\"\ntype = \"status_code\"\nstatus_code = { status_codes = [\"ERROR\"] }\n",
            &DEFAULT_ALLOW,
        )
        .unwrap();
        let tail = a.plan.tail.clone().unwrap().unwrap();
        assert_eq!(tail.policies.len(), 1);
        assert_eq!(a.plan.describe(), "tail sampling (1 policy: errors)");
        let e = check(
            &c,
            "[[tail_sampling.policies]]\nname = \"odd\"\ntype = \"anomaly\"\n",
            &DEFAULT_ALLOW,
        )
        .unwrap_err();
        assert!(e.contains("restart"), "{e}");
        // Removing the remote layer again goes back to the file (sampler back to default).
        let c2 = case(LOCAL, &[]);
        let first = check(&c2, "[traces]\nsampler = \"always_off\"\n", &DEFAULT_ALLOW).unwrap();
        let back = validate(
            "",
            &c2.base,
            &first.effective,
            &first.settings,
            &opamp(&DEFAULT_ALLOW),
            true,
        )
        .unwrap();
        assert_eq!(
            back.plan.sampler,
            Some(Sampler::ParentBased(RootSampler::AlwaysOn))
        );
    }

    /// A local file that tunes tail sampling (`decision_wait`, `num_traces`, `vote_wait`) and
    /// sets policies: the remote `policies = []` switches it off, the other keys staying as they
    /// are; policies sent again later switch it back on with them.
    #[test]
    fn an_empty_policy_list_switches_tail_sampling_off_whatever_the_other_keys() {
        let local = format!(
            "{LOCAL}\n[tail_sampling]\ndecision_wait = \"3s\"\nnum_traces = 500\nvote_wait = \"4s\"\n\n[[tail_sampling.policies]]\nname = \"errors\"\ntype = \"status_code\"\nstatus_code = {{ status_codes = [\"ERROR\"] }}\n"
        );
        let c = case(&local, &[]);
        assert!(c.current.tail.is_some());
        let off = check(&c, "[tail_sampling]\npolicies = []\n", &DEFAULT_ALLOW)
            .unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(off.plan.tail, Some(None), "tail sampling off");
        assert_eq!(off.settings.tail, None);
        assert_eq!(off.plan.describe(), "tail sampling off");
        // The tuning stays in the effective configuration, for when policies come back.
        let text = effective_toml(&off.effective);
        assert!(
            text.contains("decision_wait = \"3s\"") && text.contains("policies = []"),
            "{text}"
        );
        let back = validate(
            "[[tail_sampling.policies]]\nname = \"slow\"\ntype = \"latency\"\nlatency = { threshold_ms = 500 }\n",
            &c.base,
            &off.effective,
            &off.settings,
            &opamp(&DEFAULT_ALLOW),
            true,
        )
        .unwrap();
        let t = back.plan.tail.clone().unwrap().unwrap();
        assert_eq!(
            (t.decision_wait, t.num_traces),
            (Duration::from_secs(3), 500)
        );
        assert_eq!(t.vote_wait, Duration::from_secs(4));
        assert_eq!(back.plan.describe(), "tail sampling (1 policy: slow)");
        // Still refused, naming the key and why: a bad value next to the empty list, and the
        // switch-off when a flag sets the policies.
        let e = check(
            &c,
            "[tail_sampling]\npolicies = []\nnum_traces = 0\n",
            &DEFAULT_ALLOW,
        )
        .unwrap_err();
        assert!(
            e.contains("tail_sampling.num_traces") && e.contains("positive"),
            "{e}"
        );
        let flagged = case(&local, &["tail_sampling.policies"]);
        let e = check(&flagged, "[tail_sampling]\npolicies = []\n", &DEFAULT_ALLOW).unwrap_err();
        assert!(
            e.contains("`tail_sampling.policies`") && e.contains("flags win"),
            "{e}"
        );
    }

    /// Switching off a policy list that holds an `anomaly` policy: tail sampling goes off, the
    /// detector (which cannot be stopped without a restart) stays on, and the plan says so.
    /// Turning detection on still needs a restart, and the refusal names the key.
    #[test]
    fn switching_off_an_anomaly_policy_leaves_detection_running() {
        let local = format!(
            "{LOCAL}\n[tail_sampling]\ndecision_wait = \"3s\"\n\n[[tail_sampling.policies]]\nname = \"odd\"\ntype = \"anomaly\"\n"
        );
        let c = case(&local, &[]);
        assert!(c.current.anomaly.is_some());
        let off = check(&c, "[tail_sampling]\npolicies = []\n", &DEFAULT_ALLOW)
            .unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(off.plan.tail, Some(None));
        assert_eq!(
            off.settings.anomaly, c.current.anomaly,
            "detection stays on"
        );
        assert_eq!(
            off.plan.describe(),
            "tail sampling off (anomaly detection stays on until a restart)"
        );
        let plain = case(LOCAL, &[]);
        let e = check(
            &plain,
            "[[tail_sampling.policies]]\nname = \"odd\"\ntype = \"anomaly\"\n",
            &DEFAULT_ALLOW,
        )
        .unwrap_err();
        assert!(
            e.contains("`tail_sampling.policies`") && e.contains("restart"),
            "{e}"
        );
    }

    #[test]
    fn the_effective_configuration_hides_header_values() {
        let c = case(LOCAL, &[]);
        let text = effective_toml(&c.base.file);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        // It parses back as a config file with the same keys.
        let back = ConfigFile::parse(&text, Path::new("x")).unwrap();
        let mut keys: Vec<_> = back.values.keys().collect();
        keys.sort();
        assert_eq!(keys, ["otlp.endpoint", "otlp.headers", "target.select"]);
    }
}
