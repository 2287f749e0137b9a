//! Rules about the code base itself.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Layer of each workspace crate: a crate may depend only on crates of lower layers.
fn layer(package: &str) -> Option<u32> {
    Some(match package {
        "fastio-shm" | "fastio-meta" => 0,
        "cuda-streams" => 1,
        "fastio-context" => 2,
        "fastio-job" => 3,
        "fastio-pipeline" => 4,
        "fastio-operator" => 5,
        "fastio-driver" | "fastio-ffi" => 6,
        "fastio" => 7,
        // The Python extension also runs the `fastio` command (`fastio::cli`).
        "fastio-py" => 8,
        "fastio-tests" | "fastio-benches" | "xtask" => 9,
        _ => return None,
    })
}

#[test]
fn lower_layers_never_depend_on_higher_ones() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours: Vec<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut violations = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let Some(rank) = layer(name) else {
            violations.push(format!("{name} has no layer in tests/tests/tidy.rs"));
            continue;
        };
        for dep in p["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let normal = dep["kind"].is_null();
            if normal && ours.contains(&dep_name) && layer(dep_name).is_none_or(|r| r >= rank) {
                violations.push(format!("{name} (layer {rank}) depends on {dep_name}"));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && name != ".git" {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_test_is_ignored_or_expects_a_panic() {
    let mut files = Vec::new();
    for dir in ["crates", "tests", "benches", "xtask"] {
        let dir = root().join(dir);
        if dir.exists() {
            rust_files(&dir, &mut files);
        }
    }
    assert!(files.len() > 10);
    let banned = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            banned.iter().any(|b| text.contains(b))
        })
        .collect();
    assert!(offenders.is_empty(), "{offenders:?}");
}

/// Text a user reads: the README, docs, examples, and the shipped sources (crate docs,
/// docstrings, stubs, messages, the C header). Tests, benches and xtask are not shipped.
fn product_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !matches!(name.as_ref(), "target" | "__pycache__" | "tests") {
                    walk(&path, out);
                }
            } else if [
                ".rs", ".md", ".py", ".pyi", ".h", ".c", ".toml", ".yaml", ".yml",
            ]
            .iter()
            .any(|ext| name.ends_with(ext))
            {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    walk(&root.join("examples"), &mut files);
    walk(&root.join("crates"), &mut files);
    files
}

/// Where `line` names a note of the team's own (a seed, a numbered case of a private
/// test list, an issue, a section of a reference outside the repository, a path of the
/// shared folder), the name found.
fn internal_note_name(line: &str) -> Option<String> {
    let lower = line.to_lowercase();
    const PATHS: &[&str] = &[
        "shared/",
        "/work/",
        "clara-fastio.md",
        "holoscan-streams.md",
        "cpu-limits.md",
        "gpu-limits.md",
        "peers.md",
        "rust-ecosystem.md",
        "scale-out.md",
        "handover-floor.md",
        "design.md",
        "style.md",
    ];
    if let Some(p) = PATHS.iter().find(|p| lower.contains(*p)) {
        return Some((*p).to_owned());
    }
    // A word followed by a number: "seed 002", "cases 8", "issue #15", "section 12".
    const WORDS: &[&str] = &[
        "seed", "seeds", "case", "cases", "issue", "issues", "section", "sections",
    ];
    let bytes = lower.as_bytes();
    for word in WORDS {
        for (at, _) in lower.match_indices(word) {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                continue;
            }
            let rest = &lower[at + word.len()..];
            let rest = rest.strip_prefix([' ', '_', '-', '[']).unwrap_or(rest);
            let rest = rest.strip_prefix('#').unwrap_or(rest);
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return Some(format!("{word} {number}"));
            }
        }
    }
    None
}

#[test]
fn the_product_never_names_internal_notes() {
    let files = product_files();
    assert!(files.len() > 50, "{}", files.len());
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if let Some(name) = internal_note_name(line) {
                let file = file.strip_prefix(root()).unwrap_or(file);
                offenders.push(format!(
                    "{}:{}: {name:?} in {:?}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "README, docs, docstrings and messages speak of the project alone (cite Clara or \
         Holoscan by name where behaviour follows them):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_internal_note_check_finds_what_it_looks_for() {
    for hit in [
        "as seed 002 says",
        "[seed 000; signature inferred]",
        "(cases 8 and 9)",
        "see issue #15",
        "holoscan-streams.md section 5",
        "(section 12)",
        "the target is `shared/DESIGN.md`",
    ] {
        assert!(internal_note_name(hit).is_some(), "{hit}");
    }
    for clean in [
        "a seed of 42",
        "in the worst case, one copy",
        "lowercase 3",
        "Clara's documentation says so",
        "shared memory",
    ] {
        assert_eq!(internal_note_name(clean), None, "{clean}");
    }
}
