//! A rule's regular expression with a literal prefilter. Patterns anchored at the start of the
//! text (`^/api/v[0-9]+/`) can only match text that begins with one of a few literals; the
//! `regex` crate runs its automaton on every search all the same (prefilters serve it for
//! unanchored searches), ~250 instructions on a short path. The literals are taken from the
//! pattern's syntax tree (`regex-syntax`, which `regex` itself uses) when it is compiled, and
//! tested with `starts_with` before the regular expression.

use regex::Regex;
use regex_syntax::hir::Look;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

/// More literals than this: no prefilter (testing them would cost what the search costs).
const MAX_PREFIXES: usize = 8;

#[derive(Clone, Debug)]
pub struct Pattern {
    re: Regex,
    /// Every match begins at the start of the text with one of these (None: no such set).
    prefixes: Option<Vec<Box<[u8]>>>,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let re = Regex::new(source)?;
        Ok(Pattern {
            prefixes: anchored_prefixes(source),
            re,
        })
    }

    /// As [`Regex::is_match`].
    pub fn is_match(&self, text: &str) -> bool {
        if let Some(p) = &self.prefixes
            && !p.iter().any(|p| text.as_bytes().starts_with(p))
        {
            return false;
        }
        self.re.is_match(text)
    }

    pub fn regex(&self) -> &Regex {
        &self.re
    }
}

/// The literals every match of `source` begins with, when every match is anchored at the start
/// of the text and there are few, none of them empty.
fn anchored_prefixes(source: &str) -> Option<Vec<Box<[u8]>>> {
    // The `regex` crate's own defaults (Unicode, UTF-8), so the tree is the one it compiles.
    let hir = regex_syntax::Parser::new().parse(source).ok()?;
    if !hir.properties().look_set_prefix().contains(Look::Start) {
        return None;
    }
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    if literals.len() <= MAX_PREFIXES {
        return Some(literals.iter().map(|l| l.as_bytes().into()).collect());
    }
    // Many (`/api/v0` … `/api/v9`): what they all begin with.
    match seq.longest_common_prefix() {
        Some(p) if !p.is_empty() => Some(vec![p.into()]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn prefixes_of_anchored_patterns() {
        let p = |s: &str| {
            anchored_prefixes(s).map(|v| {
                v.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(p("^/api/v[0-9]+/"), Some(vec!["/api/v".to_string()]));
        assert_eq!(
            p("^(GET|POST) "),
            Some(vec!["GET ".to_string(), "POST ".to_string()])
        );
        // Not anchored, anchored only on one side of an alternation, or per line: none.
        assert_eq!(p("/api/v[0-9]+/"), None);
        assert_eq!(p("^a|b"), None);
        assert_eq!(p("(?m)^abc"), None);
        // Anchored but nothing literal first.
        assert_eq!(p("^.*token"), None);
        assert_eq!(p("^"), None);
    }

    /// The prefilter never changes an answer: random texts over the patterns' alphabet.
    #[test]
    fn prefilter_agrees_with_the_regex() {
        let patterns = [
            "^/api/v[0-9]+/",
            "^(GET|POST) ",
            "^(?i)/HEALTH",
            "^/a?b",
            "^ab*c",
            "^a|b",
            "^[ab]c",
            "^/api/v1$",
            "^\\d",
            "^(/x|/y)+z",
            "(?m)^/a",
            "^$",
        ];
        let alphabet: Vec<char> = "/apiv01GETPOS xyzbcHEALTHhealth\n".chars().collect();
        let mut rng = StdRng::seed_from_u64(19);
        for src in patterns {
            let pat = Pattern::new(src).unwrap();
            for _ in 0..20_000 {
                let len = rng.random_range(0..12);
                let text: String = (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect();
                for t in [text.clone(), format!("/api/v{text}"), format!("GET {text}")] {
                    assert_eq!(pat.is_match(&t), pat.regex().is_match(&t), "{src} on {t:?}");
                }
            }
        }
    }
}
