//! SQL text helpers shared by the database protocol parsers.
//!
//! This module owns what ztrace does with SQL *text*, whichever wire protocol carried it:
//! [`sanitize`] (literals and comments removed, for `db.query.text`) and [`summarize`]
//! (operation and main table, for `db.operation.name` / `db.collection.name`), plus the
//! bounded text helpers the PostgreSQL and MySQL parsers use to keep query texts.
//! Everything here is pure, never panics and bounds its output.
//!
//! The lexer is dialect-tolerant rather than exact: single-quoted strings honour both `''`
//! and backslash escapes (MySQL's `\'`, common in client-side interpolation, must not end a
//! string early; the price: a standard-conforming PostgreSQL string ending in a backslash,
//! `'C:\'`, runs on to the next quote and may shift redaction after it), `E'…'`, `N'…'`,
//! `X'…'`, `B'…'`, `U&'…'` and `$tag$…$tag$` are literals, `"…"` and `` `…` `` are
//! identifiers, `--` and (nested) `/* */` are comments. `#` is not a comment (it is an
//! operator in PostgreSQL). MySQL is the one dialect told apart ([`sanitize_mysql`]): there
//! `"…"` is a string (its `ANSI_QUOTES` mode is off by default), so it is removed as a literal.

use std::{borrow::Borrow, sync::Arc};

use crate::exchange::{DbExchange, DbSystem, Exchange};
use crate::parser::Step;

/// Longest output of [`sanitize`], in bytes.
pub const MAX_SANITIZED: usize = 1024;
/// Longest collection name [`summarize`] returns, in bytes.
const MAX_NAME: usize = 256;
/// Longest operation keyword [`summarize`] accepts.
const MAX_OP: usize = 32;
/// Parenthesis nesting tracked by [`sanitize`] to collapse value lists.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    /// Whitespace or a comment.
    Space,
    /// Keyword or bare identifier.
    Word,
    /// `"identifier"` or `` `identifier` ``.
    Quoted,
    /// String, number, hex/bit string, dollar-quoted string.
    Literal,
    /// Positional parameter: `$1`.
    Param,
    /// Any other single (ASCII) character.
    Punct,
}

fn word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Tokens of `s`; every token boundary is at an ASCII byte, so slices are valid `str`s.
struct Lexer<'a> {
    s: &'a str,
    i: usize,
    /// `"…"` is a string literal (MySQL), not an identifier.
    dq_strings: bool,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Self {
        Lexer {
            s,
            i: 0,
            dq_strings: false,
        }
    }
}

/// End of a single-quoted string whose body starts at `i`.
fn string_end(b: &[u8], i: usize) -> usize {
    quoted_string_end(b, i, b'\'')
}

/// End of a string quoted with `q` whose body starts at `i` (backslash escapes, `q` doubled).
fn quoted_string_end(b: &[u8], mut i: usize, q: u8) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == q && b.get(i + 1) == Some(&q) => i += 2,
            c if c == q => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// End of a quoted identifier whose body starts at `i` (`q` doubled is an escape).
fn quoted_end(b: &[u8], mut i: usize, q: u8) -> usize {
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) != Some(&q) {
                return i + 1;
            }
            i += 1;
        }
        i += 1;
    }
    b.len()
}

/// End of a number starting at `i`: decimal with fraction/exponent, or `0x…`/`0b…`.
fn number_end(b: &[u8], mut i: usize) -> usize {
    let radix = b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'b' | b'B'));
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
        i += 1;
        let exp = !radix && b[i - 1] | 0x20 == b'e';
        if exp && matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
    }
    i
}

/// End of a (possibly nested) block comment starting at `i` (on `/*`).
fn comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0u32;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => (depth, i) = (depth + 1, i + 2),
            (b'*', b'/') if depth == 1 => return i + 2,
            (b'*', b'/') => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    b.len()
}

/// `$1` parameter, `$tag$…$tag$` literal, or a lone `$`.
fn dollar(s: &str, i: usize) -> (Tok, usize) {
    let b = s.as_bytes();
    let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 {
        return (Tok::Param, i + 1 + digits);
    }
    let tag = b[i + 1..]
        .iter()
        .take_while(|&&c| word_char(c) && c != b'$');
    let close = i + 1 + tag.count();
    if b.get(close) != Some(&b'$') {
        return (Tok::Punct, i + 1);
    }
    let delim = &s[i..=close];
    let end = s[close + 1..].find(delim);
    (
        Tok::Literal,
        end.map_or(b.len(), |e| close + 1 + e + delim.len()),
    )
}

impl<'a> Iterator for Lexer<'a> {
    type Item = (Tok, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (s, b, i) = (self.s, self.s.as_bytes(), self.i);
        let c = *b.get(i)?;
        let next = b.get(i + 1).copied().unwrap_or(0);
        let after_word = i > 0 && (word_char(b[i - 1]) || matches!(b[i - 1], b'"' | b'`' | b')'));
        let (tok, end) = match c {
            c if c.is_ascii_whitespace() => {
                let n = b[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_whitespace())
                    .count();
                (Tok::Space, i + n)
            }
            b'-' if next == b'-' => {
                let n = b[i..].iter().position(|&c| c == b'\n');
                (Tok::Space, n.map_or(b.len(), |n| i + n + 1))
            }
            b'/' if next == b'*' => (Tok::Space, comment_end(b, i)),
            b'\'' => (Tok::Literal, string_end(b, i + 1)),
            b'"' if self.dq_strings => (Tok::Literal, quoted_string_end(b, i + 1, c)),
            b'"' | b'`' => (Tok::Quoted, quoted_end(b, i + 1, c)),
            b'0'..=b'9' => (Tok::Literal, number_end(b, i)),
            b'.' if next.is_ascii_digit() && !after_word => (Tok::Literal, number_end(b, i)),
            b'$' => dollar(s, i),
            c if matches!(c | 0x20, b'e' | b'n' | b'x' | b'b') && next == b'\'' => {
                (Tok::Literal, string_end(b, i + 2))
            }
            c if c | 0x20 == b'u' && next == b'&' && b.get(i + 2) == Some(&b'\'') => {
                (Tok::Literal, string_end(b, i + 3))
            }
            c if word_start(c) => {
                let n = b[i..].iter().take_while(|&&c| word_char(c)).count();
                (Tok::Word, i + n)
            }
            _ => (Tok::Punct, i + 1),
        };
        let end = end.min(b.len());
        self.i = end;
        Some((tok, &s[i..end]))
    }
}

/// `sql` with every literal replaced by `?`: strings (all quotings above), numbers, hex and
/// bit literals, `TRUE`/`FALSE`. Comments are removed and whitespace runs become one space.
/// Inside parentheses a run of `?`s collapses to one (`IN (1, 2, 3)` → `IN (?)`,
/// `(1, 2, a)` → `(?, a)`), and repeated `(?)` rows after `VALUES` collapse to one
/// (`VALUES (1, 2), (3, 4)` → `VALUES (?)`). Identifiers, keywords, operators and
/// placeholders (`?`, `$1`, `:name`) are kept as written. The output stops at a token
/// boundary before [`MAX_SANITIZED`] bytes.
pub fn sanitize(sql: &str) -> String {
    sanitize_tokens(sql, Lexer::new(sql))
}

/// [`sanitize`] for MySQL, where `"…"` is a string literal, not an identifier.
pub fn sanitize_mysql(sql: &str) -> String {
    let mut lexer = Lexer::new(sql);
    lexer.dq_strings = true;
    sanitize_tokens(sql, lexer)
}

fn sanitize_tokens(sql: &str, lexer: Lexer<'_>) -> String {
    let mut out = String::with_capacity(sql.len().min(MAX_SANITIZED));
    // Per open parenthesis: its offset in `out`, and whether it holds only `?` and commas.
    let mut opens = [(0usize, false); MAX_DEPTH];
    let (mut depth, mut space, mut comma) = (0usize, false, false);
    for (tok, text) in lexer {
        let text = match tok {
            Tok::Space => {
                space = !out.is_empty();
                continue;
            }
            Tok::Literal => "?",
            Tok::Word
                if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") =>
            {
                "?"
            }
            _ => text,
        };
        if std::mem::take(&mut comma) {
            if text == "?" {
                space = false; // `?, ?` → `?`
                continue;
            }
            if out.len() >= MAX_SANITIZED {
                break;
            }
            out.push(',');
        }
        let group = depth.checked_sub(1).and_then(|d| opens.get_mut(d));
        match text {
            "," if depth > 0 && out.ends_with('?') => {
                (space, comma) = (false, true); // held back until what follows is known
                continue;
            }
            "?" | "," | ")" => {}
            _ => {
                if let Some(g) = group {
                    g.1 = false;
                }
            }
        }
        if matches!(text, ")" | ",") || out.ends_with('(') {
            space = false; // `( a , b )` → `(a, b)`
        }
        if out.len() + usize::from(space) + text.len() > MAX_SANITIZED {
            break;
        }
        if std::mem::take(&mut space) {
            out.push(' ');
        }
        match (tok, text) {
            (Tok::Punct, "(") => {
                if let Some(o) = opens.get_mut(depth) {
                    *o = (out.len(), true);
                }
                depth += 1;
                out.push('(');
            }
            (Tok::Punct, ")") if depth > 0 => {
                depth -= 1;
                out.push(')');
                if let Some(&(o, true)) = opens.get(depth) {
                    dedup_row(&mut out, o);
                }
            }
            _ => out.push_str(text),
        }
    }
    if comma && out.len() < MAX_SANITIZED {
        out.push(','); // `(1,` stays `(?,`
    }
    out
}

/// `out[open..]` is a `(?)` group just closed: drop it if it repeats the row before it in
/// a `VALUES` list.
fn dedup_row(out: &mut String, open: usize) {
    if &out[open..] != "(?)" {
        return;
    }
    let before = out[..open].trim_end();
    let Some(prev) = before.strip_suffix(',').map(str::trim_end) else {
        return;
    };
    if let Some(head) = prev.strip_suffix("(?)") {
        let head = head.trim_end();
        let n = head.len().saturating_sub(6);
        let values = head
            .get(n..)
            .is_some_and(|w| w.eq_ignore_ascii_case("values"));
        if head.ends_with(',') || values {
            out.truncate(prev.len());
        }
    }
}

/// Non-space tokens of `sql`.
fn tokens(sql: &str) -> impl Iterator<Item = (Tok, &str)> {
    Lexer::new(sql).filter(|&(t, _)| t != Tok::Space)
}

type Tokens<I> = std::iter::Peekable<I>;

fn is_word(t: Option<&(Tok, &str)>, kw: &str) -> bool {
    t.is_some_and(|&(tok, s)| tok == Tok::Word && s.eq_ignore_ascii_case(kw))
}

/// Skip the words in `kws` at the cursor.
fn skip_words<'a, I: Iterator<Item = (Tok, &'a str)>>(toks: &mut Tokens<I>, kws: &[&str]) {
    while kws.iter().any(|kw| is_word(toks.peek(), kw)) {
        toks.next();
    }
}

/// Advance past the keyword `kw` at parenthesis depth 0 (stopping at `;`).
fn find_kw<'a, I: Iterator<Item = (Tok, &'a str)>>(toks: &mut Tokens<I>, kw: &str) -> bool {
    let mut depth = 0i64;
    for (tok, s) in toks.by_ref() {
        match (tok, s) {
            (Tok::Punct, "(") => depth += 1,
            (Tok::Punct, ")") => depth -= 1,
            (Tok::Punct, ";") if depth <= 0 => return false,
            (Tok::Word, w) if depth <= 0 && w.eq_ignore_ascii_case(kw) => return true,
            _ => {}
        }
    }
    false
}

/// An identifier without its quotes (a doubled quote is one quote).
fn unquote(tok: Tok, s: &str, out: &mut String) {
    match tok {
        Tok::Quoted if s.len() >= 2 && s.ends_with(&s[..1]) => {
            let q = &s[..1];
            let inner = &s[1..s.len() - 1];
            for (i, part) in inner.split(&[q, q].concat()).enumerate() {
                if i > 0 {
                    out.push_str(q);
                }
                out.push_str(part);
            }
        }
        Tok::Quoted => out.push_str(s.get(1..).unwrap_or_default()),
        _ => out.push_str(s),
    }
}

/// A possibly schema-qualified name at the cursor: `a`, `s.a`, `"S"."a b"`.
fn name<'a, I: Iterator<Item = (Tok, &'a str)>>(toks: &mut Tokens<I>) -> Option<String> {
    skip_words(toks, &["ONLY"]);
    let mut out = String::new();
    loop {
        match toks.next() {
            Some((tok @ (Tok::Word | Tok::Quoted), s)) => unquote(tok, s, &mut out),
            _ => return None,
        }
        if toks
            .next_if(|&(t, s)| t == Tok::Punct && s == ".")
            .is_none()
        {
            break;
        }
        out.push('.');
    }
    let mut n = out.len().min(MAX_NAME);
    while !out.is_char_boundary(n) {
        n -= 1;
    }
    out.truncate(n);
    (!out.is_empty()).then_some(out)
}

/// The table a DDL statement acts on, after its first keyword.
fn ddl<'a, I: Iterator<Item = (Tok, &'a str)>>(toks: &mut Tokens<I>) -> Option<String> {
    const MODIFIERS: [&str; 11] = [
        "OR",
        "REPLACE",
        "TEMP",
        "TEMPORARY",
        "UNLOGGED",
        "GLOBAL",
        "LOCAL",
        "UNIQUE",
        "MATERIALIZED",
        "FOREIGN",
        "RECURSIVE",
    ];
    skip_words(toks, &MODIFIERS);
    let (Tok::Word, kind) = toks.next()? else {
        return None;
    };
    match kind.to_ascii_uppercase().as_str() {
        "TABLE" | "VIEW" | "SEQUENCE" => {
            skip_words(toks, &["IF", "NOT", "EXISTS"]);
            name(toks)
        }
        "INDEX" => find_kw(toks, "ON").then(|| name(toks)).flatten(),
        _ => None,
    }
}

/// Operation and main collection of a statement: the first keyword, upper-cased (for
/// `WITH …`, the keyword of the statement after the common table expressions), and the
/// table it acts on: `FROM x` for SELECT and DELETE, `INTO x` for INSERT, REPLACE and
/// MERGE, `UPDATE x`, `CREATE/ALTER/DROP TABLE|VIEW|SEQUENCE x`, `CREATE INDEX … ON x`,
/// `TRUNCATE x`, `COPY x`, `LOCK x`. Names keep their schema (`s.t`) and lose their quotes.
/// Leading comments and parentheses are skipped; either part is `None` when not found.
pub fn summarize(sql: &str) -> (Option<String>, Option<String>) {
    let mut toks = tokens(sql).peekable();
    while toks
        .next_if(|&(t, s)| t == Tok::Punct && s == "(")
        .is_some()
    {}
    let Some((Tok::Word, first)) = toks.next() else {
        return (None, None);
    };
    if first.len() > MAX_OP {
        return (None, None);
    }
    let mut op = first.to_ascii_uppercase();
    if op == "WITH" {
        let mut depth = 0i64;
        for (tok, s) in toks.by_ref() {
            match (tok, s) {
                (Tok::Punct, "(") => depth += 1,
                (Tok::Punct, ")") => depth -= 1,
                (Tok::Word, w) if depth <= 0 => {
                    const MAIN: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"];
                    if let Some(m) = MAIN.iter().find(|m| w.eq_ignore_ascii_case(m)) {
                        op = (*m).to_owned();
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let table = match op.as_str() {
        "SELECT" | "DELETE" => find_kw(&mut toks, "FROM").then(|| name(&mut toks)),
        "INSERT" | "REPLACE" | "MERGE" => find_kw(&mut toks, "INTO").then(|| name(&mut toks)),
        "UPDATE" => {
            skip_words(&mut toks, &["LOW_PRIORITY", "IGNORE"]);
            Some(name(&mut toks))
        }
        "CREATE" | "ALTER" | "DROP" => Some(ddl(&mut toks)),
        "TRUNCATE" | "LOCK" | "COPY" => {
            skip_words(&mut toks, &["TABLE"]);
            Some(name(&mut toks))
        }
        _ => None,
    };
    (Some(op), table.flatten())
}

/// `bytes` as text: lossy UTF-8, at most `max` bytes. When `cut` (the bytes are the head of
/// a longer text), a character cut short at the end is dropped instead of becoming U+FFFD.
pub(crate) fn text(bytes: &[u8], max: usize, cut: bool) -> String {
    let mut b = &bytes[..bytes.len().min(max)];
    if cut || b.len() < bytes.len() {
        // Drop an incomplete multi-byte sequence at the end.
        for k in 1..=b.len().min(3) {
            let c = b[b.len() - k];
            if c & 0xc0 == 0x80 {
                continue; // continuation byte
            }
            let need = match c {
                0xf0.. => 4,
                0xe0.. => 3,
                0xc0.. => 2,
                _ => 1,
            };
            if need > k {
                b = &b[..b.len() - k];
            }
            break;
        }
    }
    let mut s = String::from_utf8_lossy(b).into_owned();
    if s.len() > max {
        let mut n = max;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
    s
}

/// `b` up to its first NUL, and whether a NUL was found.
pub(crate) fn cstr(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    match b.iter().position(|&c| c == 0) {
        Some(n) => (&b[..n], Some(&b[n + 1..])),
        None => (b, None),
    }
}

/// Most prepared statements (or portals) the database parsers remember per connection.
pub const MAX_CACHED: usize = 512;
/// Most bytes of query text they keep for them.
pub const MAX_CACHED_BYTES: usize = 256 * 1024;

/// A bounded map of names (prepared statements, portals) to query texts: at most
/// [`MAX_CACHED`] entries and [`MAX_CACHED_BYTES`] of text, the oldest dropped first.
pub(crate) struct TextCache<K> {
    items: Vec<(K, Arc<str>)>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

impl<K> Default for TextCache<K> {
    fn default() -> Self {
        let (items, bytes) = (Vec::new(), 0);
        let (max_items, max_bytes) = (MAX_CACHED, MAX_CACHED_BYTES);
        TextCache {
            items,
            bytes,
            max_items,
            max_bytes,
        }
    }
}

impl<K: PartialEq> TextCache<K> {
    pub(crate) fn get<Q: PartialEq + ?Sized>(&self, key: &Q) -> Option<&Arc<str>>
    where
        K: Borrow<Q>,
    {
        let item = self.items.iter().rev().find(|(k, _)| k.borrow() == key);
        item.map(|(_, v)| v)
    }

    pub(crate) fn remove<Q: PartialEq + ?Sized>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
    {
        if let Some(i) = self.items.iter().position(|(k, _)| k.borrow() == key) {
            self.bytes -= self.items.remove(i).1.len();
        }
    }

    pub(crate) fn insert(&mut self, key: K, text: Arc<str>) {
        if let Some(i) = self.items.iter().position(|(k, _)| *k == key) {
            self.bytes -= self.items.remove(i).1.len();
        }
        while !self.items.is_empty()
            && (self.items.len() >= self.max_items || self.bytes + text.len() > self.max_bytes)
        {
            self.bytes -= self.items.remove(0).1.len();
        }
        self.bytes += text.len();
        self.items.push((key, text));
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Heap bytes held: the texts (with their reference counts) and the list's slots.
    pub(crate) fn held(&self) -> usize {
        self.bytes + 16 * self.items.len() + crate::slots::<(K, Arc<str>)>(self.items.capacity())
    }
}

/// A SQL statement as the request of a database exchange: operation and table from the text,
/// which itself is kept only sanitised.
pub(crate) fn request_step(
    system: DbSystem,
    start: u64,
    query: &str,
    database: Option<&str>,
) -> Step {
    let (operation, collection) = summarize(query);
    Step::Request {
        key: None,
        start,
        context: None,
        exchange: Exchange::Db(DbExchange {
            system,
            operation,
            collection,
            namespace: database.map(str::to_string),
            query_text: (!query.is_empty()).then(|| match system {
                DbSystem::Mysql => sanitize_mysql(query),
                _ => sanitize(query),
            }),
            error: None,
            rows: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn s(sql: &str) -> String {
        sanitize(sql)
    }

    #[test]
    fn literals_become_placeholders() {
        let cases = [
            (
                "SELECT * FROM t WHERE a = 'x''y' AND b = 42",
                "SELECT * FROM t WHERE a = ? AND b = ?",
            ),
            (
                "select 1.5e-3, .5, 0x1F, 0b101, -7",
                "select ?, ?, ?, ?, -?",
            ),
            (
                "SELECT E'a\\'b', N'n', X'ff', b'01', U&'d\\0061'",
                "SELECT ?, ?, ?, ?, ?",
            ),
            ("SELECT 'it\\'s', name FROM u", "SELECT ?, name FROM u"),
            (
                "SELECT $$a 'b' c$$, $tag$x$$y$tag$ || $1",
                "SELECT ?, ? || $1",
            ),
            ("WHERE flag = TRUE OR f = false", "WHERE flag = ? OR f = ?"),
            (
                "WHERE x IS NULL AND t1.c2 = ?",
                "WHERE x IS NULL AND t1.c2 = ?",
            ),
            (
                "SELECT \"it's\", `a``b` FROM \"T\"",
                "SELECT \"it's\", `a``b` FROM \"T\"",
            ),
            (
                "SELECT _utf8mb4'x', :name, @v",
                "SELECT _utf8mb4?, :name, @v",
            ),
            ("SELECT a$b, $ FROM t", "SELECT a$b, $ FROM t"),
            ("SELECT 'unterminated", "SELECT ?"),
            ("SELECT $q$ never closed", "SELECT ?"),
            (
                "SELECT x::int, a->>'k', j #> '{a}'",
                "SELECT x::int, a->>?, j #> ?",
            ),
            ("SELECT 'é', 'naïve' AS ü FROM ŧ", "SELECT ?, ? AS ü FROM ŧ"),
        ];
        for (sql, want) in cases {
            assert_eq!(s(sql), want, "{sql:?}");
        }
    }

    #[test]
    fn mysql_double_quotes_are_strings() {
        // MySQL's default (ANSI_QUOTES off): "…" is a string, so its value must go.
        let cases = [
            (
                r#"SELECT * FROM users WHERE email = "alice@example.com" AND pw = "s3\"cr""et""#,
                "SELECT * FROM users WHERE email = ? AND pw = ?",
            ),
            (
                r#"INSERT INTO `t` (a, `b c`) VALUES ("x", 'y'), ("z", 'w')"#,
                "INSERT INTO `t` (a, `b c`) VALUES (?)",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(sanitize_mysql(sql), want, "{sql:?}");
        }
        // Elsewhere "…" is an identifier and stays.
        assert_eq!(
            s(r#"SELECT "Name" FROM "Users" WHERE a = 'x'"#),
            r#"SELECT "Name" FROM "Users" WHERE a = ?"#
        );
        let Step::Request {
            exchange: Exchange::Db(db),
            ..
        } = request_step(
            DbSystem::Mysql,
            0,
            r#"SELECT 1 FROM t WHERE p = "hunter2""#,
            None,
        )
        else {
            panic!()
        };
        assert_eq!(
            db.query_text.as_deref(),
            Some("SELECT ? FROM t WHERE p = ?")
        );
    }

    #[test]
    fn comments_and_whitespace() {
        let sql = "  /* traceparent='00-ab' */ SELECT\n\t a -- secret 'x'\n \
            FROM /* a /* nested */ b */ t ;  ";
        assert_eq!(s(sql), "SELECT a FROM t ;");
        assert_eq!(s("SELECT 1 -- no newline"), "SELECT ?");
        assert_eq!(
            s("SELECT a/b, a-b, a - -1 /* open"),
            "SELECT a/b, a-b, a - -?"
        );
        assert_eq!(s(""), "");
        assert_eq!(s(" \n-- only\n"), "");
    }

    #[test]
    fn lists_collapse() {
        let cases = [
            ("WHERE id IN (1, 2, 3)", "WHERE id IN (?)"),
            (
                "WHERE id IN (?,?,?) AND b IN ('a')",
                "WHERE id IN (?) AND b IN (?)",
            ),
            ("WHERE id IN ($1, $2)", "WHERE id IN ($1, $2)"),
            ("SELECT (1, 2,", "SELECT (?,"),
            (
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'),(3,'z')",
                "INSERT INTO t (a, b) VALUES (?)",
            ),
            (
                "INSERT INTO t VALUES (?, ?), (?, ?) RETURNING id",
                "INSERT INTO t VALUES (?) RETURNING id",
            ),
            ("SELECT f(1), (2)", "SELECT f(?), (?)"),
            (
                "SELECT COALESCE(a, 1), ((1, 2), (3))",
                "SELECT COALESCE(a, ?), ((?), (?))",
            ),
            ("SELECT f(g(1, 2), 'x')", "SELECT f(g(?), ?)"),
            (
                "SELECT f(1, 2, a, 3, 4), (1,), (1, )",
                "SELECT f(?, a, ?), (?,), (?,)",
            ),
            ("SELECT ())) (", "SELECT ())) ("),
        ];
        for (sql, want) in cases {
            assert_eq!(s(sql), want, "{sql:?}");
        }
        let deep = format!("SELECT {}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(
            s(&deep),
            format!("SELECT {}?{}", "(".repeat(100), ")".repeat(100))
        );
        assert_eq!(s("( 1 , 2 ) x VALUES ( 1 ) , ( 2 )"), "(?) x VALUES (?)");
    }

    #[test]
    fn output_is_bounded() {
        let long = format!("SELECT {} FROM t", vec!["col"; 1000].join(", "));
        let out = s(&long);
        assert!(
            out.len() <= MAX_SANITIZED && out.ends_with("col,"),
            "{}",
            out.len()
        );
        let big = format!("SELECT 'x{}', ŧŧŧ{}", "a".repeat(5000), "é".repeat(2000));
        assert_eq!(s(&big), "SELECT ?,");
        let list = format!("WHERE a IN ({})", vec!["1"; 5000].join(","));
        assert_eq!(s(&list), "WHERE a IN (?)");
    }

    #[test]
    fn summaries() {
        let cases = [
            ("SELECT a FROM users WHERE id = 1", "SELECT", "users"),
            (
                "  /* c */ select * from public.\"Order Items\" o join x",
                "SELECT",
                "public.Order Items",
            ),
            (
                "SELECT EXTRACT(YEAR FROM d) FROM `db`.`t``x`",
                "SELECT",
                "db.t`x",
            ),
            ("SELECT * FROM (SELECT 1) s", "SELECT", ""),
            ("SELECT 1; SELECT * FROM later", "SELECT", ""),
            (
                "(SELECT a FROM t1) UNION (SELECT a FROM t2)",
                "SELECT",
                "t1",
            ),
            ("insert into t(a) values (1)", "INSERT", "t"),
            ("INSERT IGNORE INTO s.t SET a = 1", "INSERT", "s.t"),
            ("REPLACE INTO t VALUES (1)", "REPLACE", "t"),
            ("UPDATE ONLY accounts SET x = 1", "UPDATE", "accounts"),
            ("update LOW_PRIORITY `a b` set x = 1", "UPDATE", "a b"),
            ("DELETE FROM ONLY t WHERE a = 1", "DELETE", "t"),
            (
                "WITH a AS (SELECT * FROM x), b(c) AS (SELECT 1) DELETE FROM y USING a",
                "DELETE",
                "y",
            ),
            (
                "WITH RECURSIVE r AS (SELECT 1 UNION SELECT n FROM r) SELECT * FROM r",
                "SELECT",
                "r",
            ),
            ("CREATE TABLE IF NOT EXISTS s.t (a int)", "CREATE", "s.t"),
            ("create or replace temp view v as select 1", "CREATE", "v"),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY i ON ONLY t (a)",
                "CREATE",
                "t",
            ),
            ("CREATE FUNCTION f() RETURNS int", "CREATE", ""),
            ("DROP TABLE IF EXISTS a, b", "DROP", "a"),
            ("ALTER TABLE ONLY t ADD COLUMN c int", "ALTER", "t"),
            ("TRUNCATE TABLE t", "TRUNCATE", "t"),
            ("COPY t (a) FROM STDIN", "COPY", "t"),
            ("MERGE INTO tgt USING src ON true", "MERGE", "tgt"),
            ("begin", "BEGIN", ""),
            ("SHOW search_path", "SHOW", ""),
            ("WITH x AS (SELECT 1)", "WITH", ""),
        ];
        for (sql, op, table) in cases {
            let (o, t) = summarize(sql);
            assert_eq!(o.as_deref(), Some(op), "{sql:?}");
            assert_eq!(t.as_deref().unwrap_or(""), table, "{sql:?}");
        }
        for sql in ["", "  -- x", "'lit'", "123", "(", "?"] {
            assert_eq!(summarize(sql), (None, None), "{sql:?}");
        }
        assert_eq!(summarize(&"x".repeat(100)), (None, None));
        let long = format!("SELECT * FROM {}", "t".repeat(1000));
        assert_eq!(summarize(&long).1.map(|t| t.len()), Some(MAX_NAME));
    }

    #[test]
    fn text_helpers() {
        assert_eq!(text(b"abc", 10, false), "abc");
        assert_eq!(text("é".as_bytes(), 1, false), "");
        assert_eq!(text("aé".as_bytes(), 10, true), "aé");
        assert_eq!(text(&"aé".as_bytes()[..2], 10, true), "a");
        assert_eq!(text(&"a€".as_bytes()[..3], 10, true), "a");
        assert_eq!(text(b"a\xff", 10, false), "a\u{fffd}");
        assert!(text(&[0xff; 10], 10, false).len() <= 10);
        assert_eq!(cstr(b"ab\0cd"), (&b"ab"[..], Some(&b"cd"[..])));
        assert_eq!(cstr(b"ab"), (&b"ab"[..], None));
        let mut c = TextCache::<Box<str>> {
            max_items: 3,
            max_bytes: 10,
            ..Default::default()
        };
        for (k, v) in [("a", "12345"), ("b", "67890"), ("c", "9")] {
            c.insert(k.into(), v.into());
        }
        assert!(c.get("a").is_none(), "bytes bound");
        c.insert("d".into(), "".into());
        c.insert("e".into(), "".into());
        assert!(c.get("b").is_none() && c.len() == 3, "count bound");
        c.insert("c".into(), "x".into());
        assert_eq!(c.get("c").map(|v| &**v), Some("x"));
        c.remove("c");
        assert_eq!((c.get("c"), c.len(), c.bytes), (None, 2, 0));
    }

    #[test]
    fn random_text_never_panics_and_never_leaks() {
        let bits = [
            "'", "\"", "`", "$", "$$", "$a$", "--", "/*", "*/", "\\", "\n", " ", "(", ")", ",",
            "1", "0x", "e", "E'", "U&'", ".", "é", "SELECT", "FROM", "WITH", "t", "INTO", "?",
        ];
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let sql: String = (0..rng.below(30))
                .map(|_| bits[rng.below(bits.len())])
                .collect();
            let out = sanitize(&sql);
            assert!(out.len() <= MAX_SANITIZED);
            assert_eq!(sanitize(&out), out, "idempotent: {sql:?}");
            let out = sanitize_mysql(&sql);
            assert!(out.len() <= MAX_SANITIZED);
            assert_eq!(sanitize_mysql(&out), out, "idempotent (MySQL): {sql:?}");
            let _ = summarize(&sql);
        }
        // A secret inside any string literal never survives.
        for q in ["'", "E'", "$$", "$x$"] {
            let close = if q.starts_with('$') { q } else { "'" };
            for pre in ["SELECT ", "a IN (", "x=", "/**/", "'a'||"] {
                let sql = format!("{pre}{q}SECRET\\'' 1{close} AND b = 2");
                assert!(!sanitize(&sql).contains("SECRET"), "{sql}");
            }
        }
        for pre in ["SELECT ", "a IN (", "x=", "/**/", "'a'||"] {
            let sql = format!("{pre}\"SECRET\\\" \"\" 1\" AND b = 2");
            assert!(!sanitize_mysql(&sql).contains("SECRET"), "{sql}");
        }
    }
}
