//! The crate's structure, read from its own source: no import circle among the files under `src/`
//! nor among its top-level modules (folders), and every import goes down the floors the README's
//! map lists (`FLOORS`): the runtime, then the ops, the data sets, the model API, the CPU
//! reference, inference and generation, serving and distributed training.
//!
//! An import is a `crate::…` or `super::…` path in code (comments are skipped), resolved to the file
//! of the longest module prefix it names; a name the crate root re-exports (`crate::Tensor`) is
//! resolved to the module it comes from; a module's declaration and re-exports of its own children
//! (`mod x; pub use x::…`) are not imports of the parent by the child. Between folders, a `mod.rs`
//! re-export counts like any other import: `nn/mod.rs` naming `generate` makes `nn` import it.

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

/// The floors, lowest first: a module imports only from its own floor or below.
const FLOORS: &[&[&str]] = &[
    &[
        "error", "dtype", "pool", "shaders", "tune", "gpu", "tensor", "batch",
    ],
    &["ops"],
    &["data"],
    &["nn"],
    &["reference"],
    &["infer", "generate"],
    &["serve", "distributed"],
    // The server's binary: a crate of its own over the library (it names `wgnn::`, not `crate::`).
    &["bin"],
];

fn floor_of(top: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&top))
}

/// Names the crate root re-exports (`pub use module::{A, B}` in `lib.rs`) → their module.
fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let mut out = BTreeMap::new();
    for statement in text.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        let rest = statement[at + "pub use ".len()..].trim();
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim().trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn graph_of(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules(src);
    let reexports = root_reexports(src);
    let mut edges = BTreeMap::new();
    for (module, file) in &modules {
        let mut to = BTreeSet::new();
        for mut path in imports(file, module) {
            // A root re-export names the module it comes from.
            if let Some(from) = path.first().and_then(|n| reexports.get(n)) {
                path = vec![from.clone()];
            }
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
fn the_checker_sees_imports() {
    // The graph is not empty where imports are known to be: a check that cannot fail is none.
    let edges = graph();
    let ops_conv = edges
        .get(&vec!["ops".to_string(), "conv".to_string()])
        .expect("src/ops/conv.rs");
    assert!(ops_conv.contains(&vec!["ops".to_string(), "matmul".to_string()]));
    assert!(ops_conv.contains(&vec!["tensor".to_string()]));
}

/// Each top-level module's imports of other top-level modules (the root, `lib.rs`, left out: it
/// declares every module).
fn folders(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, to) in edges {
        let Some(from) = module.first() else {
            continue;
        };
        let entry = out.entry(from.clone()).or_default();
        for target in to {
            if let Some(top) = target.first().filter(|t| *t != from) {
                entry.insert(top.clone());
            }
        }
    }
    out
}

/// Every import that goes up a floor, or names a module the map does not list, as messages.
fn upward_imports(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (from, to) in folders(&graph_of(src)) {
        let Some(own) = floor_of(&from) else {
            problems.push(format!("{from} is on no floor of the map (FLOORS, README)"));
            continue;
        };
        for target in to {
            match floor_of(&target) {
                Some(f) if f <= own => {}
                Some(_) => problems.push(format!("{from} imports {target}, a floor above it")),
                None => problems.push(format!("{from} imports {target}, which is on no floor")),
            }
        }
    }
    problems
}

/// A circle among the top-level modules, if any, as `a -> b -> a`.
fn folder_circle(src: &Path) -> Option<String> {
    let edges = folders(&graph_of(src));
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            return Some(format!("{} -> {node}", stack[at..].join(" -> ")));
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, &edges, &mut Vec::new(), &mut done))
}

#[test]
fn every_import_goes_down_the_floors_of_the_map() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = upward_imports(&src);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        folder_circle(&src),
        None,
        "an import circle among the folders"
    );
}

#[test]
fn the_map_lists_every_module() {
    // Every top-level module is on a floor, and the README's map names each.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    for module in modules(&src).keys().filter_map(|m| m.first()) {
        assert!(floor_of(module).is_some(), "{module} is on no floor");
        let named = readme.contains(&format!("src/{module}/"))
            || readme.contains(&format!("src/{module}.rs"))
            || readme.contains(&format!("{module}.rs"));
        assert!(named, "the README's map does not name src/{module}");
    }
}

#[test]
fn the_floor_checker_sees_an_upward_import_and_a_circle() {
    // A tree where the model floor imports generation, which imports the model floor: both
    // checks must fail on it (what `src/nn/language_model.rs` and `src/generate/mod.rs` did).
    let dir = std::env::temp_dir().join(format!("wgnn-structure-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
        std::fs::write(path, text).expect("written");
    };
    write(
        "lib.rs",
        "pub mod nn;\npub mod generate;\npub use nn::Model;\n",
    );
    write("nn/mod.rs", "mod lm;\npub struct Model;\n");
    write("nn/lm.rs", "use crate::generate::Decoder;\n");
    write(
        "generate/mod.rs",
        "use crate::Model;\npub struct Decoder;\n",
    );
    let problems = upward_imports(&dir);
    let circle = folder_circle(&dir);
    std::fs::remove_dir_all(&dir).expect("removed");
    assert_eq!(problems, ["nn imports generate, a floor above it"]);
    assert!(circle.is_some_and(|c| c.contains("generate") && c.contains("nn")));
}

/// Test files (`tests/*.rs`) whose f16 branch returns without an assertion or a counted skip
/// (`common::skip`): such a test is green on an adapter without f16 while checking nothing.
fn silent_f16_returns(tests: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(tests)
        .expect("tests/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("rs"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.trim();
            if !(code.starts_with("if !") && code.contains("supports_f16()") && code.ends_with('{'))
            {
                continue;
            }
            // The branch: up to the line that closes it, at the `if`'s indentation.
            let indent = line.len() - line.trim_start().len();
            let body: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !(l.trim() == "}" && l.len() - l.trim_start().len() == indent))
                .copied()
                .collect();
            let returns = body.iter().any(|l| l.trim_start().starts_with("return"));
            let counted = body
                .iter()
                .any(|l| l.contains("skip(") || l.contains("assert") || l.contains("SKIPPED"));
            if returns && !counted {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                found.push(format!("{name}:{}", i + 1));
            }
        }
    }
    found
}

#[test]
fn no_test_returns_green_without_f16() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let found = silent_f16_returns(&tests);
    assert!(
        found.is_empty(),
        "these f16 branches return without an assertion or a counted skip: {found:?}"
    );
}
