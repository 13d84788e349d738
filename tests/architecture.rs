//! The shape of the tree, checked: agent code never imports the server, the leaf modules
//! (wire types, signed metadata, encoding, the clock, versions, hashing) depend on no other part of the
//! crate, and no two sibling modules import each other, directly or round a loop.
//!
//! The graph is read from the source: every `crate::a::b` and `super::a` path in a module
//! file (comments stripped) is an edge to the deepest module that path names. An edge
//! between two modules counts between their ancestors that are siblings (so
//! `server::training::job -> server::repository::read` is `training -> repository` under
//! `server`); a child naming its own parent is not a sibling edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Module path of a source file under `src/` (`server/mod.rs` -> `server`).
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Module = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src folder") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments (doc links name modules without importing them).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every identifier chain that follows `prefix::` in `text`.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("{prefix}::");
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let before = rest[..i].chars().last();
        rest = &rest[i + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let chain: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<String> = chain
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        out.push(parts);
    }
    out
}

struct Tree {
    modules: BTreeMap<Module, String>,
    is_dir_module: BTreeMap<Module, bool>,
}

impl Tree {
    fn read() -> Tree {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut modules = BTreeMap::new();
        let mut is_dir_module = BTreeMap::new();
        for f in files {
            if f.starts_with(src.join("bin")) {
                continue;
            }
            let m = module_of(&src, &f);
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            is_dir_module.insert(m.clone(), name == "mod.rs" || name == "lib.rs");
            let text = std::fs::read_to_string(&f).expect("readable source");
            modules.insert(m, strip_comments(&text));
        }
        Tree {
            modules,
            is_dir_module,
        }
    }

    /// The deepest module `base ++ parts[..i]` that exists.
    fn resolve(&self, base: &[String], parts: &[String]) -> Option<Module> {
        (0..=parts.len()).rev().find_map(|i| {
            let mut c = base.to_vec();
            c.extend_from_slice(&parts[..i]);
            self.modules.contains_key(&c).then_some(c)
        })
    }

    /// (from, to) for every module path a module names.
    fn edges(&self) -> BTreeSet<(Module, Module)> {
        let mut edges = BTreeSet::new();
        for (m, text) in &self.modules {
            for parts in paths_after(text, "crate") {
                if let Some(t) = self.resolve(&[], &parts) {
                    edges.insert((m.clone(), t));
                }
            }
            for mut parts in paths_after(text, "super") {
                let mut base = m.clone();
                if !self.is_dir_module[m] {
                    base.pop();
                }
                base.pop();
                while parts.first().is_some_and(|p| p == "super") {
                    parts.remove(0);
                    base.pop();
                }
                if let Some(t) = self.resolve(&base, &parts) {
                    edges.insert((m.clone(), t));
                }
            }
        }
        // The crate root is where `super::` in an inline `mod tests` of a top-level file
        // lands when read as text; nothing depends on lib.rs itself.
        edges.retain(|(a, b)| a != b && !b.is_empty());
        edges
    }
}

#[test]
fn agent_code_never_imports_the_server() {
    let tree = Tree::read();
    let offenders: Vec<String> = tree
        .edges()
        .into_iter()
        .filter(|(a, b)| {
            a.first().map(String::as_str) != Some("server")
                && b.first().map(String::as_str) == Some("server")
        })
        .map(|(a, b)| format!("{} -> {}", a.join("::"), b.join("::")))
        .collect();
    assert!(
        offenders.is_empty(),
        "agent modules import the server: {offenders:?}"
    );
    // The agent's binary neither.
    let bin = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bin/outpost.rs"),
    )
    .expect("the agent binary's source");
    assert!(
        paths_after(&strip_comments(&bin), "outpost")
            .iter()
            .all(|p| p.first().map(String::as_str) != Some("server")),
        "src/bin/outpost.rs imports outpost::server"
    );
}

#[test]
fn leaf_modules_depend_only_on_leaves() {
    // `trust` (the signed metadata formats and their checks) is a leaf too: the wire types
    // carry signed device assignments in its envelope.
    const LEAVES: [&str; 7] = [
        "clock",
        "encoding",
        "hash",
        "protocol",
        "trust",
        "version",
        "vocabulary",
    ];
    let tree = Tree::read();
    for leaf in LEAVES {
        assert!(
            tree.modules.contains_key(&vec![leaf.to_string()]),
            "the leaf module {leaf} is missing"
        );
    }
    let offenders: Vec<String> = tree
        .edges()
        .into_iter()
        .filter(|(a, b)| {
            let top = |m: &Module| m.first().cloned().unwrap_or_default();
            LEAVES.contains(&top(a).as_str()) && !LEAVES.contains(&top(b).as_str())
        })
        .map(|(a, b)| format!("{} -> {}", a.join("::"), b.join("::")))
        .collect();
    assert!(
        offenders.is_empty(),
        "leaf modules import upward: {offenders:?}"
    );
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        out: Vec<Vec<String>>,
    }
    fn visit(t: &mut T, v: &str) {
        let n = t.index.len();
        t.index.insert(v.into(), n);
        t.low.insert(v.into(), n);
        t.stack.push(v.into());
        t.on.insert(v.into());
        let next: Vec<String> = t.g.get(v).into_iter().flatten().cloned().collect();
        for w in next {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<String> = graph
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a.clone()).chain(bs.iter().cloned()))
        .collect();
    for v in nodes {
        if !t.index.contains_key(&v) {
            visit(&mut t, &v);
        }
    }
    t.out
}

#[test]
fn no_two_sibling_modules_import_each_other() {
    let tree = Tree::read();
    let mut by_parent: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (a, b) in tree.edges() {
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        if common >= a.len() || common >= b.len() {
            continue; // a module naming its ancestor or descendant
        }
        by_parent
            .entry(a[..common].to_vec())
            .or_default()
            .entry(a[common].clone())
            .or_default()
            .insert(b[common].clone());
    }
    let found: Vec<String> = by_parent
        .iter()
        .flat_map(|(parent, g)| {
            cycles(g)
                .into_iter()
                .map(move |c| format!("under `{}`: {}", parent.join("::"), c.join(" <-> ")))
        })
        .collect();
    assert!(found.is_empty(), "import cycles: {found:?}");
    // The graph is not empty: the check reads real edges (analyze uses the store).
    assert!(by_parent[&Vec::new()]["analyze"].contains("store"));
}
