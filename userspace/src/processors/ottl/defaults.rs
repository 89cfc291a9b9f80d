//! ztrace's default redaction, written as OTTL: what `ztrace rules --default` prints, so a user
//! can read what leaves and extend it with rules of their own.
//!
//! The redaction itself is enforced in code, before any rule runs, and no rule can undo it:
//! query values of credential-like parameters become `REDACTED` (`semconv::attributes`, where
//! `url.query` and `url.full` are built), user information is cut from absolute URLs, SQL
//! literals are replaced before a statement is exported (`ztrace-protocols`, while parsing: the
//! text never reaches a rule), database error messages are replaced by their code's generic
//! message and command lines are dropped (`assemble::redact`, `runtime`), unless opted into in
//! `[privacy]`. The statements here are generated from the same list of parameter names
//! (`SENSITIVE_QUERY_KEYS` plus `privacy.redact`), and a test checks that they redact exactly
//! what the code does, so the two cannot drift apart.

use crate::semconv::attributes::{REDACTED, SENSITIVE_QUERY_KEYS};

/// A regular expression matching a parameter name as ztrace compares them: ASCII case-insensitive
/// (the pattern carries `(?i)`), `-` and `_` anywhere ignored.
fn folded_name(name: &str) -> String {
    let mut out = String::from("[-_]*");
    for c in name.chars() {
        out.push_str(&regex::escape(&c.to_string()));
        out.push_str("[-_]*");
    }
    out
}

/// The redaction statements (span context), with the folded names of `privacy.redact`.
pub fn redaction_statements(extra: &[String]) -> Vec<String> {
    let names: Vec<String> = SENSITIVE_QUERY_KEYS
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().filter(|n| *n != "useragent").cloned())
        .map(|n| folded_name(&n))
        .collect();
    let alternatives = names.join("|");
    let mut out = vec![
        format!(
            r#"replace_pattern(attributes["url.query"], "(?i)(^|&)((?:{alternatives})=)[^&]*", "${{1}}${{2}}{REDACTED}")"#
        ),
        format!(
            r#"replace_pattern(attributes["url.full"], "(?i)([?&])((?:{alternatives})=)[^&#]*", "${{1}}${{2}}{REDACTED}")"#
        ),
        r#"replace_pattern(attributes["url.full"], "^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@", "$1")"#
            .to_string(),
    ];
    if extra.iter().any(|n| n == "useragent") {
        out.push(format!(
            r#"set(attributes["user_agent.original"], "{REDACTED}") where attributes["user_agent.original"] != nil"#
        ));
    }
    out
}

/// The redaction rules as a config file section (`ztrace rules --default`).
pub fn redaction_toml(extra: &[String]) -> String {
    let mut s = String::from(
        "# ztrace's default redaction, written as OTTL (span context). It is enforced in code\n\
         # before any rule runs, so these statements are what it does, not a switch: rules can\n\
         # add to it, never undo it. Not expressible as a rule, and also enforced: SQL literals\n\
         # are replaced while statements are parsed (db.query.text, off unless\n\
         # [privacy]/--db-query-text), database error messages keep only their code, command\n\
         # lines are not exported, Authorization and Cookie headers are never captured.\n\
         # As in Collector files, `$$` stands for `$`.\n\
         [[transform.trace_statements]]\n\
         context = \"span\"\n\
         statements = [\n",
    );
    for st in redaction_statements(extra) {
        s.push_str("  '");
        s.push_str(&st.replace('$', "$$"));
        s.push_str("',\n");
    }
    s.push_str("]\n");
    s
}
