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

/// The variants of the `thiserror` types in `text` that say a cause in their message and
/// also return it from `source()`: a `#[from]` or `#[source]` field, or a field named
/// `source` (which thiserror makes the source by itself), in a variant that is not
/// `#[error(transparent)]`. Each as `Type::Variant.field`.
fn causes_said_twice(text: &str) -> Vec<String> {
    use syn::visit::Visit;

    fn derives_error(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|a| {
            a.path().is_ident("derive")
                && a.parse_args_with(
                    syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|paths| {
                    paths
                        .iter()
                        .any(|p| p.segments.last().is_some_and(|s| s.ident == "Error"))
                })
        })
    }
    fn transparent(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|a| {
            a.path().is_ident("error")
                && matches!(&a.meta, syn::Meta::List(l) if l.tokens.to_string() == "transparent")
        })
    }
    fn check(name: String, attrs: &[syn::Attribute], fields: &syn::Fields, out: &mut Vec<String>) {
        if transparent(attrs) {
            return;
        }
        for (i, field) in fields.iter().enumerate() {
            let marked = field
                .attrs
                .iter()
                .any(|a| a.path().is_ident("from") || a.path().is_ident("source"));
            let named_source = field.ident.as_ref().is_some_and(|i| i == "source");
            if marked || named_source {
                let field = field
                    .ident
                    .as_ref()
                    .map_or(i.to_string(), ToString::to_string);
                out.push(format!("{name}.{field}"));
            }
        }
    }
    struct Finder(Vec<String>);
    impl<'a> Visit<'a> for Finder {
        fn visit_item_enum(&mut self, e: &'a syn::ItemEnum) {
            if derives_error(&e.attrs) {
                for v in &e.variants {
                    check(
                        format!("{}::{}", e.ident, v.ident),
                        &v.attrs,
                        &v.fields,
                        &mut self.0,
                    );
                }
            }
        }
        fn visit_item_struct(&mut self, s: &'a syn::ItemStruct) {
            if derives_error(&s.attrs) {
                check(s.ident.to_string(), &s.attrs, &s.fields, &mut self.0);
            }
        }
    }
    let file = syn::parse_file(text).unwrap();
    let mut finder = Finder(Vec::new());
    finder.visit_file(&file);
    finder.0
}

/// Every error says its cause once. `fastio` prints an error with its whole `source()`
/// chain (`error: {e:#}`), while the C API's last error message, the Python exceptions
/// and the context server's replies say the message (`Display`) alone. So an error's
/// message says its cause, and does not also return it from `source()` (which would print
/// it twice in the chain); only `#[error(transparent)]` variants pass a source on, since
/// they have the inner error's message and source both.
#[test]
fn errors_say_their_cause_once() {
    // The check finds each way of making a source, and passes the ways without one.
    let sample = r#"
        #[derive(Debug, thiserror::Error)]
        pub enum Sample {
            #[error("{path}: {source}")]
            Named { path: String, source: std::io::Error },
            #[error("cannot read: {0}")]
            From(#[from] std::fmt::Error),
            #[error("cannot write: {cause}")]
            Marked { #[source] cause: std::io::Error },
            #[error(transparent)]
            Passed(#[from] std::num::ParseIntError),
            #[error("{path}: {cause}")]
            Said { path: String, cause: std::io::Error },
        }
        mod inner {
            #[derive(Debug, Error)]
            #[error("bad: {source}")]
            pub struct Alone { source: std::io::Error }
        }
    "#;
    assert_eq!(
        causes_said_twice(sample),
        [
            "Sample::Named.source",
            "Sample::From.0",
            "Sample::Marked.cause",
            "Alone.source"
        ]
    );

    let mut files = Vec::new();
    for dir in ["crates", "tests", "benches", "xtask"] {
        let dir = root().join(dir);
        if dir.exists() {
            rust_files(&dir, &mut files);
        }
    }
    let mut offenders = Vec::new();
    let mut types = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        types += text.matches("thiserror::Error").count();
        for found in causes_said_twice(&text) {
            offenders.push(format!("{}: {found}", file.display()));
        }
    }
    // The workspace's libraries have their error types (the scan sees them).
    assert!(types > 10, "{types}");
    assert!(
        offenders.is_empty(),
        "these errors say their cause in the message and also return it from source(); \
         rename the field (`cause`) or make the variant transparent: {offenders:#?}"
    );
}
