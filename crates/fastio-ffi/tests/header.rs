//! The committed header is what cbindgen makes of the sources now.

use std::path::Path;

#[test]
fn committed_header_matches_the_sources() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .unwrap();
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let committed = std::fs::read(crate_dir.join("include/clara_cpd.h")).unwrap();
    assert!(
        fresh == committed,
        "include/clara_cpd.h is stale: run `cargo xtask codegen` and commit the result"
    );
}

#[test]
fn clara_h_includes_the_generated_header() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clara = std::fs::read_to_string(crate_dir.join("include/clara.h")).unwrap();
    assert!(clara.contains("#include \"clara_cpd.h\""), "{clara}");
}
