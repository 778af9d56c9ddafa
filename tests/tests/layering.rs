//! No module of a crate depends, directly or through others, on itself (issue 11): the edges
//! are the `crate::…` paths each module's code names (comments and unit tests left out), with
//! items re-exported by `lib.rs` resolved to the module that defines them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → code of every file of that module (`foo.rs` and `foo/**.rs`).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if e.is_dir() {
                stack.push(e);
                continue;
            }
            let rel = e.strip_prefix(src).unwrap();
            let top = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let name = top.trim_end_matches(".rs").to_string();
            if name == "lib" || e.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            // each file without its comments and unit tests, so a module's later files still count
            out.entry(name).or_default().push_str(&code(&std::fs::read_to_string(&e).unwrap()));
        }
    }
    out
}

/// The code without comments and without the `#[cfg(test)] mod tests` block.
fn code(src: &str) -> String {
    let src = src.split("#[cfg(test)]\nmod tests").next().unwrap();
    src.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// Identifiers right after `crate::`, and inside `use crate::{…}` groups.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        let group = rest.strip_prefix('{').map(|g| &g[..g.find('}').unwrap_or(g.len())]);
        let text = group.unwrap_or(rest);
        let idents = text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|s| !s.is_empty());
        match group {
            Some(_) => out.extend(idents.map(String::from)),
            None => out.extend(idents.take(1).map(String::from)),
        }
    }
    out
}

/// Item → module, from `pub use module::{A, B};` / `pub use module::A;` in lib.rs.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in code(lib).lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        for item in items.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|s| !s.is_empty()) {
            out.insert(item.to_string(), module.to_string());
        }
    }
    out
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        path.push(u.to_string());
        for v in &edges[u] {
            match state.get(v) {
                Some(1) => {
                    let at = path.iter().position(|p| p == v).unwrap();
                    let mut cycle = path[at..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, edges, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in edges.keys() {
        if !state.contains_key(u) {
            if let Some(c) = visit(u, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_cycle_in_any_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut checked = 0;
    for krate in std::fs::read_dir(&crates).unwrap().map(|e| e.unwrap().path()) {
        let src = krate.join("src");
        let mods = modules(&src);
        let lib = reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (m, text) in &mods {
            let targets = crate_refs(text)
                .into_iter()
                .filter_map(|r| if mods.contains_key(&r) { Some(r) } else { lib.get(&r).cloned() })
                .filter(|t| t != m && mods.contains_key(t));
            edges.entry(m.clone()).or_default().extend(targets);
        }
        assert!(edges.len() > 1, "{}: no modules found", krate.display());
        if let Some(cycle) = find_cycle(&edges) {
            panic!("{}: module cycle {}", krate.display(), cycle.join(" → "));
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} crates checked");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.insert("a".into(), ["b".to_string()].into());
    edges.insert("b".into(), ["c".to_string()].into());
    edges.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&edges), None);
    edges.get_mut("c").unwrap().insert("a".into());
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(crate_refs("use crate::{x::Y, z};\nlet q = crate::w::f();"), ["x", "Y", "z", "w"]);
}
