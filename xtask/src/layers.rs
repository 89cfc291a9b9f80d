//! The layering check of `cargo xtask lint`: reads every `crate::`, `super::` and `self::` path in
//! the userspace and eBPF crates, maps each file to its layer (the first folder or file under
//! `src/`) and fails, naming `file:line`, when
//! - a layer imports one its entry in [`USERSPACE`] / [`PROBES`] does not allow, or
//! - modules import each other in a circle (at any depth, inside a layer too). A file is a
//!   module; an inline `mod tests { … }` is a module of its own, which nothing imports, so a
//!   test exercising its parent through the public API closes no circle.
//!
//! This module owns the allow-lists and the source scanning; it must not build or run anything.
//! It reads Rust source text only (comments and string literals are blanked first), so it needs no
//! compiler and runs in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One layer: a folder (or single file) under `src/`, and the layers it may import.
pub struct Layer {
    pub name: &'static str,
    pub may_import: &'static [&'static str],
}

const fn layer(name: &'static str, may_import: &'static [&'static str]) -> Layer {
    Layer { name, may_import }
}

/// The userspace daemon, in data-path order. The shared leaves (`config`, `model`, `semconv`,
/// `testkit`) may be imported by every layer; everything else only as listed. Most edges point
/// upstream (a stage reads the types of the stage feeding it, e.g. `export` → `processors`);
/// `assemble` → `link` points downstream because the assembler hands each exchange to the
/// linker by calling it, and the shell layers (`app`, `runtime`) wire all stages together.
/// Nothing imports `app`.
pub const USERSPACE: &[Layer] = &[
    layer(
        "app",
        &[
            "runtime",
            "capture",
            "signals",
            "export",
            "peer",
            "processors",
            "control",
        ],
    ),
    layer(
        "runtime",
        &[
            "capture",
            "decode",
            "conntrack",
            "assemble",
            "link",
            "processors",
            "signals",
            "export",
            "peer",
            "control",
        ],
    ),
    layer("capture", &[]),
    layer("decode", &[]),
    layer("conntrack", &[]),
    layer("assemble", &["conntrack", "link"]),
    layer("link", &[]),
    // The agent-to-agent channel of cross-host links: carries the linker's lookups and sends.
    layer("peer", &["link"]),
    layer("processors", &[]),
    // Anomaly records and tail-sampling self-metrics are built from the processors' output.
    layer("signals", &["conntrack", "processors"]),
    layer("export", &["processors"]),
    // The control plane (OpAMP): beside the data path; it sends over export's HTTP transport
    // and hands validated plans to the runtime, which applies them.
    layer("control", &["export"]),
    // Leaves.
    layer("config", &[]),
    layer("model", &[]),
    layer("semconv", &["model", "config"]),
    // `#[cfg(test)]` spans and processes for the unit tests of every layer.
    layer("testkit", &["model", "semconv"]),
];

/// Layers every userspace layer may import.
const USERSPACE_LEAVES: &[&str] = &["config", "model", "semconv", "testkit"];

/// The eBPF crate: probe families use the maps and the kernel helpers, never the other way round.
pub const PROBES: &[Layer] = &[
    layer("probes", &["maps", "kernel"]),
    layer("maps", &["kernel"]),
    layer("kernel", &[]),
];

/// The crates checked: (source folder, layers, leaves).
fn crates(root: &Path) -> [(PathBuf, &'static [Layer], &'static [&'static str]); 2] {
    [
        (root.join("userspace/src"), USERSPACE, USERSPACE_LEAVES),
        (root.join("ebpf-probes/src"), PROBES, &[]),
    ]
}

/// Crate roots: they declare the layers and may import any of them; nothing imports them.
const ROOTS: &[&str] = &["lib.rs", "main.rs"];

/// Checks both crates; the error lists every violation.
pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (src, layers, leaves) in crates(root) {
        let files = read_tree(&src)?;
        let shown =
            |rel: &str| format!("{}/{rel}", src.strip_prefix(root).unwrap_or(&src).display());
        problems.extend(
            check_files(&files, layers, leaves)
                .into_iter()
                .map(|p| p.show(&shown)),
        );
    }
    if problems.is_empty() {
        println!(
            "xtask: layering: no import breaks the allow-lists in xtask/src/layers.rs, no cycles"
        );
        return Ok(());
    }
    bail!(
        "the module layering is broken (allow-lists and data-path order: xtask/src/layers.rs):\n{}",
        problems.join("\n")
    )
}

/// Every `.rs` file under `src`, as (path relative to `src` with `/`, text).
fn read_tree(src: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let rel = path.strip_prefix(src).expect("under src");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>();
                out.push((rel.join("/"), text));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A problem found, with the file it is in (relative to the crate's `src/`).
#[derive(Debug)]
pub struct Problem {
    file: String,
    line: usize,
    message: String,
}

impl Problem {
    fn show(&self, path: &dyn Fn(&str) -> String) -> String {
        format!("  {}:{}: {}", path(&self.file), self.line, self.message)
    }
}

/// The module path of a file: `a/b.rs` → `[a, b]`, `a/mod.rs` → `[a]`, `lib.rs` → `[]`.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The layer of a file: its first folder or its file stem; `None` for a crate root.
fn layer_of(file: &str) -> Option<String> {
    if ROOTS.contains(&file) {
        return None;
    }
    module_of(file).into_iter().next()
}

/// One import found: the line it is on and the module path it names (after `crate`).
#[derive(Debug, PartialEq)]
struct Import {
    line: usize,
    path: Vec<String>,
    /// The inline module (`mod tests { … }`) the import is in, if any: a node of its own in the
    /// module graph (nothing can import it, so it closes no cycle).
    inline: Vec<String>,
}

/// Checks a set of files (path relative to `src/`, text) against `layers`.
pub fn check_files(files: &[(String, String)], layers: &[Layer], leaves: &[&str]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let allowed: BTreeMap<&str, &[&str]> = layers.iter().map(|l| (l.name, l.may_import)).collect();
    let modules: BTreeMap<Vec<String>, &str> = files
        .iter()
        .map(|(f, _)| (module_of(f), f.as_str()))
        .collect();
    // module (a file, or an inline module in it) → (imported file → first line importing it)
    let mut edges: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (file, text) in files {
        let from_layer = layer_of(file);
        if let Some(l) = &from_layer
            && !allowed.contains_key(l.as_str())
        {
            problems.push(Problem {
                file: file.clone(),
                line: 1,
                message: format!("`{l}` is not a known layer: add it to the allow-lists"),
            });
            continue;
        }
        for import in imports(&module_of(file), text) {
            // The longest prefix of the path that is a file of this crate.
            let Some(target) = (0..=import.path.len())
                .rev()
                .find_map(|n| modules.get(&import.path[..n]).copied())
            else {
                continue;
            };
            if target == file.as_str() {
                continue;
            }
            let from = std::iter::once(file.as_str())
                .chain(import.inline.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("::");
            edges
                .entry(from)
                .or_default()
                .entry(target.to_string())
                .or_insert(import.line);
            let to_layer = layer_of(target);
            let shown = format!("crate::{}", import.path.join("::"));
            match (&from_layer, &to_layer) {
                (_, None) => problems.push(Problem {
                    file: file.clone(),
                    line: import.line,
                    message: format!("imports the crate root ({shown})"),
                }),
                (Some(from), Some(to))
                    if from != to
                        && !leaves.contains(&to.as_str())
                        && !allowed[from.as_str()].contains(&to.as_str()) =>
                {
                    let may = allowed[from.as_str()];
                    problems.push(Problem {
                        file: file.clone(),
                        line: import.line,
                        message: format!(
                            "`{from}` may not import `{to}` ({shown}); `{from}` may import {}",
                            list(may.iter().chain(leaves).copied()),
                        ),
                    })
                }
                _ => {}
            }
        }
    }
    let edges: BTreeMap<&str, BTreeMap<&str, usize>> = edges
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.iter().map(|(t, l)| (t.as_str(), *l)).collect(),
            )
        })
        .collect();
    for cycle in cycles(&edges) {
        let (first, line) = (cycle[0], edges[cycle[0]][cycle[1]]);
        problems.push(Problem {
            file: first.to_string(),
            line,
            message: format!("import cycle: {}", cycle.join(" → ")),
        });
    }
    problems
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(|i| format!("`{i}`")).collect();
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}

/// One cycle per strongly connected component with more than one file, as a closed path.
fn cycles<'a>(edges: &BTreeMap<&'a str, BTreeMap<&'a str, usize>>) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    let mut in_cycle: BTreeSet<&str> = BTreeSet::new();
    for &start in edges.keys() {
        if in_cycle.contains(start) {
            continue;
        }
        // Shortest path from a successor of `start` back to `start` (BFS).
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closed = None;
        while let Some(at) = queue.pop_front() {
            for &next in edges.get(at).map(|e| e.keys()).into_iter().flatten() {
                if next == start {
                    closed = Some(at);
                    break;
                }
                if !prev.contains_key(next) {
                    prev.insert(next, at);
                    queue.push_back(next);
                }
            }
            if closed.is_some() {
                break;
            }
        }
        if let Some(mut at) = closed {
            let mut path = vec![start];
            while at != start {
                path.push(at);
                at = prev[at];
            }
            path[1..].reverse();
            path.push(start);
            in_cycle.extend(path.iter().copied());
            found.push(path);
        }
    }
    found
}

/// Every `crate::`/`super::`/`self::` path in `text`, resolved to a path from the crate root.
/// `module` is the file's module path; inline `mod x { … }` blocks are followed for `super`.
fn imports(module: &[String], text: &str) -> Vec<Import> {
    let code = blank(text);
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    // Inline modules open at a brace depth: (name, depth).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut line = 1usize;
    // Child modules declared in this file (`mod x;`): `use x::Y` names them relatively.
    let children: BTreeSet<&str> = code
        .split(';')
        .filter_map(|s| s.trim().rsplit_once("mod ").map(|(_, n)| n.trim()))
        .filter(|n| !n.is_empty() && n.bytes().all(is_ident))
        .collect();
    let mut i = 0usize;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => line += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let word_start = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if word_start && is_ident(c) {
            let end = (i..bytes.len())
                .find(|&j| !is_ident(bytes[j]))
                .unwrap_or(bytes.len());
            let word = &code[i..end];
            if word == "mod" {
                // `mod name {` opens an inline module.
                let rest = code[end..].trim_start();
                let name_len = rest.bytes().take_while(|b| is_ident(*b)).count();
                if rest[name_len..].trim_start().starts_with('{') {
                    inline.push((rest[..name_len].to_string(), depth));
                }
            } else if word == "use" && inline.is_empty() {
                let rest = code[end..].trim_start();
                let name_len = rest.bytes().take_while(|b| is_ident(*b)).count();
                if children.contains(&rest[..name_len]) {
                    let mut p = Parser { s: bytes, at: end };
                    for path in p.tree() {
                        let mut resolved = module.to_vec();
                        resolved.extend(path);
                        out.push(Import {
                            line,
                            path: resolved,
                            inline: Vec::new(),
                        });
                    }
                }
            } else if matches!(word, "crate" | "super" | "self") && code[end..].starts_with("::") {
                let mut base: Vec<String> = module.to_vec();
                base.extend(inline.iter().map(|(n, _)| n.clone()));
                let mut p = Parser { s: bytes, at: i };
                for path in p.tree() {
                    if let Some(resolved) = resolve(&base, &path) {
                        out.push(Import {
                            line,
                            path: resolved,
                            inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                        });
                    }
                }
            }
            i = end;
            continue;
        }
        i += 1;
    }
    out
}

/// `crate::a::b` → `[a, b]`; `super::x` from `[m, n]` → `[m, x]`; `self::x` → `[m, n, x]`.
fn resolve(base: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut segs = path.iter().peekable();
    let mut out: Vec<String> = match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
            Vec::new()
        }
        _ => base.to_vec(),
    };
    for s in segs {
        match s.as_str() {
            "super" => {
                out.pop()?;
            }
            "self" => {}
            _ => out.push(s.clone()),
        }
    }
    Some(out)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A use-tree reader: `a::b::{c, d::{e, f as g}, *}` → every path.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.at;
        while self.at < self.s.len() && is_ident(self.s[self.at]) {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.at..].starts_with(tok.as_bytes()) {
            self.at += tok.len();
            true
        } else {
            false
        }
    }

    /// Paths of the tree starting here (without a trailing `*`).
    fn tree(&mut self) -> Vec<Vec<String>> {
        if self.eat("{") {
            let mut out = Vec::new();
            loop {
                if self.eat("}") {
                    break;
                }
                let before = self.at;
                out.extend(self.tree());
                self.eat(",");
                if self.at == before {
                    break; // not a use tree after all
                }
            }
            return out;
        }
        if self.eat("*") {
            return vec![Vec::new()];
        }
        let Some(seg) = self.ident() else {
            return vec![Vec::new()];
        };
        // Turbofish or generics end the path, as does anything that is not `::`.
        let save = self.at;
        if self.eat("::") && !self.eat("<") {
            let subs = self.tree();
            return subs
                .into_iter()
                .map(|mut p| {
                    p.insert(0, seg.clone());
                    p
                })
                .collect();
        }
        self.at = save;
        vec![vec![seg]]
    }
}

/// `text` with comments, string and char literals replaced by spaces (newlines kept).
fn blank(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let wipe = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            wipe(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            wipe(&mut out, i, j);
            i = j;
        } else if (b[i] == b'r' || b[i..].starts_with(b"br"))
            && (i == 0 || !is_ident(b[i - 1]))
            && {
                let k = i + if b[i] == b'b' { 2 } else { 1 };
                let hashes = b[k..].iter().take_while(|&&c| c == b'#').count();
                b.get(k + hashes) == Some(&b'"')
            }
        {
            let k = i + if b[i] == b'b' { 2 } else { 1 };
            let hashes = b[k..].iter().take_while(|&&c| c == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = k + hashes + 1;
            let end = b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |p| body + p + close.len());
            wipe(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            wipe(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a) which is left alone.
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p + 1)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 3)
            } else {
                // A multi-byte char: up to 4 bytes before the closing quote.
                (2..=5)
                    .find(|&n| b.get(i + n) == Some(&b'\'') && !b[i + 1].is_ascii())
                    .map(|n| i + n + 1)
            };
            match end {
                Some(end) => {
                    wipe(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect()
    }

    fn paths(module: &[&str], text: &str) -> Vec<String> {
        let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        imports(&module, text)
            .into_iter()
            .map(|i| format!("{}:{}", i.line, i.path.join("::")))
            .collect()
    }

    #[test]
    fn reads_use_trees_paths_and_inline_modules() {
        let text = "use crate::{a::{B, c::D}, e};\n\
                    // use crate::comment;\n\
                    let s = \"crate::string\"; let c = '{';\n\
                    fn f() { crate::f::g(); }\n\
                    #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::x::Y;\n}\n\
                    use self::m::N;\n";
        assert_eq!(
            paths(&["p", "q"], text),
            [
                "1:a::B",
                "1:a::c::D",
                "1:e",
                "4:f::g",
                "7:p::q",
                "8:p::x::Y",
                "10:p::q::m::N"
            ]
        );
    }

    #[test]
    fn a_forbidden_import_fails_with_file_and_line() {
        let problems = check_files(
            &files(&[
                ("lib.rs", "pub mod link;\npub mod export;\n"),
                ("link/mod.rs", "mod linker;\n"),
                ("link/linker.rs", "\n\nuse crate::export::Exporter;\n"),
                ("export/mod.rs", "use crate::model::Span;\n"),
                ("model.rs", ""),
            ]),
            &[
                layer("link", &[]),
                layer("export", &[]),
                layer("model", &[]),
            ],
            &["model"],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            (problems[0].file.as_str(), problems[0].line),
            ("link/linker.rs", 3)
        );
        assert!(
            problems[0]
                .message
                .contains("`link` may not import `export`"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_cycle_inside_a_layer_fails() {
        let problems = check_files(
            &files(&[
                (
                    "export/mod.rs",
                    "mod otlp;\npub use otlp::Encoder;\npub struct Attr;\n",
                ),
                ("export/otlp.rs", "use super::Attr;\npub struct Encoder;\n"),
            ]),
            &[layer("export", &[])],
            &[],
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("import cycle"), "{problems:?}");
    }

    #[test]
    fn a_test_module_importing_its_importer_is_no_cycle() {
        let console = "pub struct Console;\n#[cfg(test)]\nmod tests {\n    use crate::export::exporter::X;\n}\n";
        let problems = check_files(
            &files(&[
                ("export/mod.rs", "mod console;\nmod exporter;\n"),
                (
                    "export/exporter.rs",
                    "use super::console::Console;\npub struct X;\n",
                ),
                ("export/console.rs", console),
            ]),
            &[layer("export", &[])],
            &[],
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn unknown_layers_and_root_imports_fail() {
        let problems = check_files(
            &files(&[("lib.rs", "pub mod x;\n"), ("x.rs", "use crate::ALLOC;\n")]),
            &[],
            &[],
        );
        assert!(
            problems[0].message.contains("not a known layer"),
            "{problems:?}"
        );
    }

    #[test]
    fn allow_lists_are_acyclic_and_name_known_layers() {
        for layers in [USERSPACE, PROBES] {
            let names: BTreeSet<&str> = layers.iter().map(|l| l.name).collect();
            let mut edges: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
            for l in layers {
                for m in l.may_import {
                    assert!(names.contains(m), "{} allows unknown layer {m}", l.name);
                    edges.entry(l.name).or_default().insert(m, 0);
                }
            }
            assert!(cycles(&edges).is_empty(), "{:?}", cycles(&edges));
            assert!(!layers.iter().any(|l| l.may_import.contains(&"app")));
        }
    }

    #[test]
    fn the_real_tree_passes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        if let Err(e) = check(root) {
            panic!("{e:#}");
        }
    }
}
