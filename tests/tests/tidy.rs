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
        "fastio-pipeline" => 3,
        "fastio-operator" => 4,
        "fastio-driver" | "fastio-ffi" => 5,
        "fastio" => 6,
        // The Python extension also runs the `fastio` command (`fastio::cli`).
        "fastio-py" => 7,
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
