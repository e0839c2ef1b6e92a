//! The user documentation cites tests as proof of what it promises: a cited test that was
//! renamed or deleted would leave a promise with no proof behind it. This checks that every
//! test `doc/SEMANTICS.md` names exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` and `.py` file under `dir`, recursively (build output and VCS data skipped).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(
                name.as_ref(),
                "target" | ".git" | "node_modules" | "__pycache__"
            ) {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".py") {
            out.push(path);
        }
    }
}

/// Names in backticks that look like test functions: lower snake case with three underscores
/// or more (`a_slow_cold_lookup_holds_up_neither_the_listing_nor_other_names`). Option names,
/// paths and constants in the document have fewer, or other characters.
fn cited_tests(doc: &str) -> Vec<String> {
    let mut names: Vec<String> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && s.matches('_').count() >= 3
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `text` defines a function called `name` (`fn name` in Rust, `def name` in Python).
fn defines(text: &str, name: &str) -> bool {
    ["fn ", "def "].iter().any(|kw| {
        let needle = format!("{kw}{name}");
        text.match_indices(&needle).any(|(at, _)| {
            let after = text[at + needle.len()..].chars().next();
            !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn every_test_semantics_md_cites_exists() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("doc/SEMANTICS.md")).expect("doc/SEMANTICS.md");
    let cited = cited_tests(&doc);
    assert!(
        cited.len() >= 20,
        "expected SEMANTICS.md to cite its tests; found {cited:?}"
    );
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("tests"), &mut files);
    let text: String = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&String> = cited.iter().filter(|n| !defines(&text, n)).collect();
    assert!(
        missing.is_empty(),
        "doc/SEMANTICS.md cites tests that do not exist: {missing:?}"
    );
}

#[test]
fn the_citation_scan_tells_test_names_from_other_words() {
    let doc = "see `a_cold_read_waits_once` and `--cache-ttl`, `max_stale`, `fs::cache`, \
               `a_cold_read_waits_once` again, `NOT_A_TEST_NAME_HERE`";
    assert_eq!(cited_tests(doc), vec!["a_cold_read_waits_once".to_string()]);
    assert!(defines("fn a_b_c_d() {}", "a_b_c_d"));
    assert!(defines("    def a_b_c_d(self):", "a_b_c_d"));
    assert!(!defines("fn a_b_c_d_e() {}", "a_b_c_d"));
}
