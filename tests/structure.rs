//! The crate's structure, read from its own source: no import circle among the files under `src/`,
//! and the runtime floor (context, tensors, pool, recording, dtypes, the kernel contract, tuning)
//! imports nothing from the ops, the models or serving above it.
//!
//! An import is a `crate::…` or `super::…` path in code (comments are skipped), resolved to the file
//! of the longest module prefix it names; a module's declaration and re-exports of its own children
//! (`mod x; pub use x::…`) are not imports of the parent by the child.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (["ops", "conv"]) → file, for every file under `src/`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The module paths a file's code names through `crate::` and `super::`.
fn imports(file: &Path, module: &[String]) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(file).expect("readable source");
    let mut out = Vec::new();
    for line in text.lines() {
        // Unit tests (an inline `mod tests` whose `super` is the file itself) are not structure.
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        for (start, prefix) in [("crate::", None), ("super::", Some(()))] {
            let mut rest = code;
            while let Some(at) = rest.find(start) {
                let before = rest[..at].chars().last();
                rest = &rest[at + start.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let path: Vec<String> = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                // `super` is the parent module: of `ops::conv` (a leaf file) `ops`, of `nn` (a
                // mod.rs) the crate root.
                let base: Vec<String> = match prefix {
                    None => Vec::new(),
                    Some(()) => module[..module.len().saturating_sub(1)].to_vec(),
                };
                out.push([base, path].concat());
            }
        }
    }
    out
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let mut to = BTreeSet::new();
        for path in imports(file, module) {
            // The longest prefix that is a module file.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .unwrap_or_default();
            if &target != module {
                to.insert(target);
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

#[test]
fn no_import_circle_among_the_files_of_src() {
    let edges = graph();
    // Depth-first search with colours; a grey node met again closes a circle.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                0 => visit(next, edges, state, stack),
                1 => {
                    let from = stack.iter().position(|m| m == next).unwrap_or(0);
                    let circle: Vec<String> = stack[from..].iter().map(|m| name(m)).collect();
                    panic!("import circle: {} -> {}", circle.join(" -> "), name(next));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            visit(node, &edges, &mut state, &mut Vec::new());
        }
    }
}

#[test]
fn the_runtime_floor_imports_nothing_above_it() {
    let floor = [
        "error", "dtype", "pool", "shaders", "tune", "gpu", "tensor", "batch",
    ];
    let above = ["ops", "nn", "infer", "reference", "data"];
    for (module, to) in graph() {
        let Some(first) = module.first() else {
            continue;
        };
        if !floor.contains(&first.as_str()) {
            continue;
        }
        for target in to {
            let top = target.first().map(String::as_str).unwrap_or("lib");
            assert!(
                !above.contains(&top) && top != "lib",
                "{} (the runtime floor) imports {}",
                name(&module),
                name(&target)
            );
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    // The graph is not empty where imports are known to be: a check that cannot fail is none.
    let edges = graph();
    let ops_conv = edges
        .get(&vec!["ops".to_string(), "conv".to_string()])
        .expect("src/ops/conv.rs");
    assert!(ops_conv.contains(&vec!["ops".to_string(), "matmul".to_string()]));
    assert!(ops_conv.contains(&vec!["tensor".to_string()]));
}
