//! The layering rule of ARCHITECTURE.md, checked: a module of the library uses only modules of
//! its own layer or of layers below it. Layers, lowest first:
//!
//! util · storage · format · error · model · keys · db · store · (audit, attachments, index,
//! watch, import) · lib.rs
//!
//! Every `crate::…` path in the code of `src/` (not in comments, not in `#[cfg(test)]` code
//! or modules declared under it, which may build whole stores) is checked against the layer of
//! the file it is in.

use std::path::{Path, PathBuf};

const LAYERS: &[&[&str]] = &[
    &["util"],
    &["storage"],
    &["format"],
    &["error"],
    &["model"],
    &["keys"],
    &["db"],
    &["store"],
    &["audit", "attachments", "index", "watch", "import"],
    &["lib"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// The top-level module a source file belongs to (`src/db/mod.rs` → `db`, `src/keys.rs` →
/// `keys`, `src/lib.rs` → `lib`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::X` top-level modules a file's code names (outside comments and tests), with
/// the line of each.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break; // test code from here on (kiln keeps tests at the end of a file)
        }
        if t.starts_with("//") {
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().unwrap().is_ascii_lowercase() {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let tests = test_module_files(&files);
    let mut bad = Vec::new();
    for f in files
        .iter()
        .filter(|f| !tests.iter().any(|t| f.starts_with(t)))
    {
        let top = top_module(&src, f);
        let Some(mine) = layer_of(&top) else {
            bad.push(format!("{}: module `{top}` is in no layer", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (line, used) in uses(&text) {
            match layer_of(&used) {
                None => bad.push(format!(
                    "{}:{line}: `crate::{used}` is in no layer",
                    f.display()
                )),
                Some(l) if l > mine => bad.push(format!(
                    "{}:{line}: `{top}` (layer {mine}) uses `crate::{used}` (layer {l})",
                    f.display()
                )),
                _ => {}
            }
        }
    }
    assert!(files.len() > 20, "found {} files", files.len());
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

/// The files (or folders) of modules declared right after `#[cfg(test)]` (`#[cfg(test)] mod
/// tests;` keeps a module's tests in `tests.rs` beside it): test code, like a `#[cfg(test)]`
/// block, which may build whole stores.
fn test_module_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        // A `mod.rs` (or `lib.rs`) declares modules beside it; `x.rs` declares them in `x/`.
        let name = f.file_name().unwrap().to_string_lossy();
        let dir = if name == "mod.rs" || name == "lib.rs" {
            f.parent().unwrap().to_path_buf()
        } else {
            f.with_extension("")
        };
        for w in lines.windows(2) {
            if w[0] != "#[cfg(test)]" {
                continue;
            }
            if let Some(m) = w[1].strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                out.push(dir.join(format!("{m}.rs")));
                out.push(dir.join(m));
            }
        }
    }
    out
}

/// Test modules in files of their own are found (and only those declared under
/// `#[cfg(test)]`), so the rule skips them as it skips `#[cfg(test)]` blocks.
#[test]
fn test_modules_in_their_own_files_are_found() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tests = test_module_files(&files);
    assert!(
        tests.contains(&src.join("db").join("tests.rs")),
        "{tests:?}"
    );
    assert!(!tests
        .iter()
        .any(|t| t.ends_with("db/read.rs") || t.ends_with("db/read")));
}

/// The checker itself: it sees what it must and skips comments and tests.
#[test]
fn the_checker_finds_paths_in_code_only() {
    let text = "use crate::db::Env;\n// crate::store in a comment\nlet x = crate::store::y; // crate::audit\n#[cfg(test)]\nmod tests { use crate::store::Store; }\n";
    let found: Vec<String> = uses(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["db", "store"]);
}
