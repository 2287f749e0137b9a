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

/// `cargo xtask clib`: builds libfastio.so / libfastio.a in release mode, adds the
/// drop-in name libnvclara.so (a symlink) and builds the C operators of examples/c beside
/// them, then prints the flags to build against them.
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
    for program in c_operators(root, &dir)? {
        eprintln!("built {}", program.display());
    }
    eprintln!(
        "\nbuilt {lib}/libfastio.so, {lib}/libfastio.a and the drop-in {lib}/libnvclara.so\n\
         build a Clara operator with:\n  \
         cc -I{inc} my_operator.c -L{lib} -lnvclara -Wl,-rpath,{lib}",
        lib = dir.display(),
        inc = include.display()
    );
    Ok(dir)
}

/// Compiles each examples/c/*.c with the system C compiler (`$CC`, else `cc`) against
/// clara.h and libnvclara.so in `dir`, into `dir` (where `fastio run` looks for operator
/// programs first). Warnings are errors.
pub fn c_operators(root: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let include = root.join(FFI_CRATE).join("include");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join("examples/c"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    sources.retain(|p| p.extension().is_some_and(|e| e == "c"));
    sources.sort();
    let mut programs = Vec::new();
    for source in sources {
        let stem = source.file_stem().context("a source file has a name")?;
        let program = dir.join(stem);
        let args: Vec<String> = [
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O2",
            "-I",
            &include.to_string_lossy(),
            &source.to_string_lossy(),
            "-L",
            &dir.to_string_lossy(),
            "-lnvclara",
            "-Wl,-rpath,$ORIGIN",
            "-o",
            &program.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::run(&compiler, &args)?;
        programs.push(program);
    }
    Ok(programs)
}

/// The second part of `cargo xtask demo`: the demo pipeline with an operator written in C
/// (examples/demo/pipeline-c.yaml), built by [`clib`] beside `fastio`.
pub fn demo() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    clib(&root)?;
    eprintln!(
        "\nRunning examples/demo/pipeline-c.yaml: the same pipeline, with two more operators \
         written in C against clara.h and -lnvclara: slice-range (examples/c/slice_range.c) \
         reads the Rust threshold's foreground-slices and writes slice-range, which \
         voxel-report (examples/c/voxel_report.c) reads.\n"
    );
    crate::run(
        "target/release/fastio",
        &["run", "examples/demo/pipeline-c.yaml"],
    )?;
    let report = "fastio-output/demo-c/latest/voxel-report/voxel-report/voxel-report.txt";
    println!("\n{report}:\n{}", std::fs::read_to_string(report)?);
    Ok(())
}
