//! The C API: `codegen` (the generated header) and `clib` (the library under both names).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

const FFI_CRATE: &str = "crates/fastio-ffi";
/// The generated header, relative to the workspace root.
pub const HEADER: &str = "crates/fastio-ffi/include/clara_cpd.h";

/// The header cbindgen makes from the fastio-ffi sources and `cbindgen.toml`.
/// crates/fastio-ffi/tests/header.rs does the same to find a stale committed header.
pub fn generate_header(root: &Path) -> anyhow::Result<String> {
    let crate_dir = root.join(FFI_CRATE);
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| anyhow::anyhow!("reading cbindgen.toml: {e}"))?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .context("generating the C header")?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    Ok(String::from_utf8(out)?)
}

/// `cargo xtask codegen [--check]`: writes the header, or with `--check` fails if the
/// committed one differs.
pub fn codegen(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let check = args.iter().any(|a| a == "--check");
    let fresh = generate_header(root)?;
    let path = root.join(HEADER);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == fresh {
        eprintln!("{HEADER} is up to date");
    } else if check {
        bail!("{HEADER} is stale: run `cargo xtask codegen`");
    } else {
        std::fs::write(&path, fresh).with_context(|| format!("writing {HEADER}"))?;
        eprintln!("wrote {HEADER}");
    }
    Ok(())
}

/// `cargo xtask clib`: builds libfastio.so / libfastio.a in release mode and adds the
/// drop-in name libnvclara.so (a symlink), then prints the flags to build against them.
pub fn clib(root: &Path) -> anyhow::Result<PathBuf> {
    crate::run(
        "cargo",
        &["build", "--release", "--quiet", "-p", "fastio-ffi"],
    )?;
    let dir = root.join("target/release");
    let drop_in = dir.join("libnvclara.so");
    let _ = std::fs::remove_file(&drop_in);
    std::os::unix::fs::symlink("libfastio.so", &drop_in)
        .with_context(|| format!("linking {}", drop_in.display()))?;
    let include = root.join(FFI_CRATE).join("include");
    eprintln!(
        "\nbuilt {lib}/libfastio.so, {lib}/libfastio.a and the drop-in {lib}/libnvclara.so\n\
         build a Clara operator with:\n  \
         cc -I{inc} my_operator.c -L{lib} -lnvclara -Wl,-rpath,{lib}",
        lib = dir.display(),
        inc = include.display()
    );
    Ok(dir)
}
