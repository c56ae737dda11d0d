//! The host's layers point down: reads the `use crate::…` lines (and every
//! other `crate::` path) of `host/src` and fails on an import that runs up a
//! layer, on a cycle between the top-level modules, on a module missing from
//! the layer list, and on a plugin (`sink/<kind>/`, `source/<kind>/`) that
//! reaches into another plugin. The layer list is written once, in
//! ARCHITECTURE.md ("## Layers"); this test reads it from there.
//!
//! Comments, string literals and `#[cfg(test)] mod … { … }` blocks are left
//! out: unit tests may use anything, and a doc link is not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layer list: module → layer number (1 is the bottom).
fn layers() -> BTreeMap<String, usize> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&doc).expect("ARCHITECTURE.md");
    let section = text
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let mut layers = BTreeMap::new();
    for line in section.lines().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        let line = line.trim();
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(n) = number.parse::<usize>() else {
            continue;
        };
        // `1. record flow … — what they are`: module names up to the dash.
        let names = rest.split('—').next().unwrap_or_default();
        for name in names.split_whitespace() {
            let name = name.trim_matches('`').trim_end_matches(',');
            if !name.is_empty() {
                layers.insert(name.to_string(), n);
            }
        }
    }
    assert!(
        layers.len() > 5,
        "no layer list found in ARCHITECTURE.md: {layers:?}"
    );
    layers
}

/// The code of a file without comments, string and char literals, and
/// `#[cfg(test)] mod … { … }` blocks.
fn code_of(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{..}'), else a lifetime.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    strip_test_modules(&out)
}

fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        if trimmed.starts_with("mod ") && trimmed.find('{') < trimmed.find(';') {
            let open = after.find('{').unwrap_or(after.len());
            let mut depth = 0usize;
            let mut end = after.len();
            for (k, ch) in after[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The paths `crate::a::b…` a piece of code names, as lists of segments
/// (`use crate::{a::b, c}` gives `[a, b]` and `[c]`).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `$crate::` or `some_crate::`
        }
        let (found, _) = path_tree(rest, Vec::new());
        paths.extend(found);
    }
    paths
}

/// Parses `a::b::{c, d::e}` at the start of `s` into full paths.
fn path_tree(s: &str, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let s_trim = s.trim_start();
    let skipped = s.len() - s_trim.len();
    if let Some(inner) = s_trim.strip_prefix('{') {
        let mut out = Vec::new();
        let mut used = 1;
        let mut body = inner;
        loop {
            let (found, n) = path_tree(body, prefix.clone());
            out.extend(found);
            body = &body[n..];
            used += n;
            let t = body.trim_start();
            used += body.len() - t.len();
            body = t;
            if let Some(r) = body.strip_prefix(',') {
                body = r;
                used += 1;
            } else if let Some(r) = body.strip_prefix('}') {
                let _ = r;
                used += 1;
                break;
            } else {
                break;
            }
        }
        return (out, skipped + used);
    }
    let ident: String = s_trim
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        let out = if prefix.is_empty() {
            Vec::new()
        } else {
            vec![prefix]
        };
        return (out, skipped);
    }
    let mut path = prefix;
    path.push(ident.clone());
    let after = &s_trim[ident.len()..];
    if let Some(r) = after.strip_prefix("::") {
        let (found, n) = path_tree(r, path);
        (found, skipped + ident.len() + 2 + n)
    } else {
        (vec![path], skipped + ident.len())
    }
}

struct File {
    path: PathBuf,
    /// Module path below `src`: `["sink", "kafka", "mod"]`.
    module: Vec<String>,
    code: String,
}

fn files() -> Vec<File> {
    let root = src();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&root).expect("under src");
                let module: Vec<String> = rel
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let text = std::fs::read_to_string(&p).expect("read file");
                out.push(File {
                    path: p.clone(),
                    module,
                    code: code_of(&text),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Top-level module → modules it uses, with one file that does, per edge.
fn graph(files: &[File]) -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mut edges: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for f in files {
        let top = &f.module[0];
        if top == "lib" || top == "main" {
            continue;
        }
        edges.entry(top.clone()).or_default();
        for path in crate_paths(&f.code) {
            let used = &path[0];
            if used != top {
                edges
                    .entry(top.clone())
                    .or_default()
                    .entry(used.clone())
                    .or_insert_with(|| f.path.clone());
            }
        }
    }
    edges
}

/// Problems with the imports of `files` against `layers`.
fn problems(files: &[File], layers: &BTreeMap<String, usize>) -> Vec<String> {
    let mut problems = Vec::new();
    let edges = graph(files);
    let rel = |p: &Path| {
        p.strip_prefix(src().parent().unwrap_or(Path::new("")))
            .unwrap_or(p)
            .display()
            .to_string()
    };
    for (from, to) in &edges {
        let Some(&lf) = layers.get(from) else {
            problems.push(format!(
                "module `{from}` is not in ARCHITECTURE.md's layer list: add it to its layer"
            ));
            continue;
        };
        for (used, file) in to {
            match layers.get(used) {
                None => {}
                Some(&lu) if lu > lf => problems.push(format!(
                    "upward import: {} (`{from}`, layer {lf}) uses `crate::{used}` (layer {lu})",
                    rel(file)
                )),
                Some(_) => {}
            }
        }
    }
    // No cycle between modules (imports within one layer included).
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeMap<String, PathBuf>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        found: &mut Vec<String>,
    ) {
        match state.get(n) {
            Some(2) => return,
            Some(1) => {
                let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[from..].to_vec();
                cycle.push(n);
                found.push(format!("import cycle: {}", cycle.join(" -> ")));
                return;
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        if let Some(next) = edges.get(n) {
            for m in next.keys() {
                if edges.contains_key(m) {
                    visit(m, edges, state, stack, found);
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    for n in edges.keys() {
        visit(n, &edges, &mut state, &mut Vec::new(), &mut problems);
    }
    // A plugin reaches no other plugin of its kind.
    for kind in ["sink", "source"] {
        let plugins: BTreeSet<String> = files
            .iter()
            .filter(|f| f.module.len() >= 3 && f.module[0] == kind)
            .map(|f| f.module[1].clone())
            .collect();
        for f in files
            .iter()
            .filter(|f| f.module.len() >= 3 && f.module[0] == kind)
        {
            let own = &f.module[1];
            for path in crate_paths(&f.code) {
                if path.len() >= 2
                    && path[0] == kind
                    && plugins.contains(&path[1])
                    && &path[1] != own
                {
                    problems.push(format!(
                        "{}: the `{own}` {kind} uses the `{}` {kind} (`crate::{}`): share through `{kind}/` instead",
                        rel(&f.path),
                        path[1],
                        path.join("::")
                    ));
                }
            }
        }
    }
    problems
}

#[test]
fn the_host_s_imports_only_point_down_and_never_in_a_cycle() {
    let layers = layers();
    let files = files();
    assert!(files.len() > 50, "read {} files", files.len());
    let problems = problems(&files, &layers);
    assert!(
        problems.is_empty(),
        "the layers of host/src (ARCHITECTURE.md, \"## Layers\"):\n  {}",
        problems.join("\n  ")
    );
    // Every module of the list exists (a renamed module updates the list).
    let tops: BTreeSet<&str> = files.iter().map(|f| f.module[0].as_str()).collect();
    let missing: Vec<&String> = layers
        .keys()
        .filter(|m| !tops.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md lists modules that do not exist: {missing:?}"
    );
}

/// The check itself fails where it must: an upward import, a cycle, a
/// module not in the list, one plugin using another — and not on a
/// comment, a string or a unit test.
#[test]
fn the_check_finds_upward_imports_cycles_strays_and_plugins_reaching_across() {
    let layers: BTreeMap<String, usize> = [("record", 1), ("sink", 2), ("config", 3)]
        .into_iter()
        .map(|(m, n)| (m.to_string(), n))
        .collect();
    let file = |path: &str, text: &str| File {
        path: src().join(path),
        module: path
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect(),
        code: code_of(text),
    };
    let clean = vec![
        file(
            "record.rs",
            "// crate::config is only named here\nconst S: &str = \"crate::sink\";\nconst C: char = '\"';\n#[cfg(test)]\nmod tests { use crate::config::X; }\n",
        ),
        file("sink/mod.rs", "use crate::record::{Record, json::{a, b}};"),
        file("sink/kafka/mod.rs", "use crate::sink::{Sink, objects};"),
        file("config.rs", "pub use crate::sink::SinkConfig;"),
    ];
    assert_eq!(problems(&clean, &layers), Vec::<String>::new());

    let mut upward = clean;
    upward.push(file(
        "record/extra.rs",
        "fn f(c: &crate::config::PipelineConfig) {}",
    ));
    upward.push(file("stray.rs", "use crate::record::Record;"));
    upward.push(file(
        "sink/lake/mod.rs",
        "use crate::sink::kafka::Producer;",
    ));
    let found = problems(&upward, &layers);
    let text = found.join("\n");
    assert!(
        text.contains(
            "upward import: src/record/extra.rs (`record`, layer 1) uses `crate::config` (layer 3)"
        ),
        "{text}"
    );
    assert!(text.contains("import cycle: "), "{text}");
    assert!(text.contains("module `stray` is not in"), "{text}");
    assert!(
        text.contains("the `lake` sink uses the `kafka` sink"),
        "{text}"
    );
}

#[test]
fn paths_are_read_from_nested_use_groups() {
    let paths = crate_paths("use crate::{a::{b, c::d}, e};\nlet x = crate::f::g(1);");
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["a::b", "a::c::d", "e", "f::g"]);
}
