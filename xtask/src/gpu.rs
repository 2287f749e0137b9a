//! `cargo xtask gpu-test` and `cargo xtask gpu-bench`: build the stripped GPU bundle of the
//! `cuda-streams` crate, and run it when this machine has a GPU.
//!
//! The bundle is two release binaries, statically free of CUDA (the driver is loaded at run
//! time), so they run on a GPU machine without a Rust toolchain:
//! `./bundle/cuda-streams-acceptance test|bench|all [--out DIR]` and `./bundle/fastio-gpu-handoff
//! [device|device-kill|copy|copy-bench]` (hand-offs through the Fast I/O context; `--run`
//! of `gpu-bench` also runs its `copy-bench`).
//!
//! Options: `--dest DIR` (default: `bundle/` at the workspace root, which git ignores) and
//! `--run` (also run it here; needs a CUDA driver).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const BIN: &str = "cuda-streams-acceptance";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

struct Options {
    dest: PathBuf,
    run: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        dest: workspace_root().join("bundle"),
        run: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dest" => o.dest = PathBuf::from(it.next().context("--dest needs a directory")?),
            "--run" => o.run = true,
            other => bail!("unknown option {other:?} (expected --dest DIR, --run)"),
        }
    }
    Ok(o)
}

/// Builds the release, stripped acceptance binary and copies it to `dest`.
/// The second program of the bundle.
const HANDOFF: &str = "fastio-gpu-handoff";

fn build_bundle(dest: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "cuda-streams", "--bin", BIN])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {BIN} failed ({status})");
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let built = target_dir.join("release").join(BIN);
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let out = dest.join(BIN);
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    // The cross-process hand-off through the Fast I/O context (a publication carries an
    // interprocess event): tests/src/bin/fastio-gpu-handoff.rs.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--release", "-p", "fastio-tests", "--bin", HANDOFF])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {HANDOFF} failed ({status})");
    }
    std::fs::copy(target_dir.join("release").join(HANDOFF), dest.join(HANDOFF))
        .with_context(|| format!("copying {HANDOFF}"))?;
    println!(
        "bundle: {} (run it alone, and with `device`, `device-kill`, `copy`: PASS or FAIL)",
        dest.join(HANDOFF).display()
    );
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "bundle: {} ({:.1} MiB, release profile: stripped)",
        out.display(),
        size as f64 / 1048576.0
    );
    Ok(out)
}

fn run_or_explain(bin: &Path, mode: &str, run: bool) -> Result<()> {
    if run {
        let status = Command::new(bin)
            .arg(mode)
            .status()
            .with_context(|| format!("running {}", bin.display()))?;
        if !status.success() {
            bail!("{BIN} {mode} failed ({status})");
        }
    } else {
        println!("run it on the GPU machine: ./bundle/{BIN} {mode} --out \"$OUT\"");
    }
    Ok(())
}

/// `cargo xtask gpu-test [--dest DIR] [--run]`: builds the bundle; with `--run`, runs the
/// acceptance scenarios here (25 of stream semantics, the two-process event test, and 27-31:
/// device memory across processes, kill -9 of a holder, read-only and peer access, host
/// registration) and prints the pass/fail table.
///
/// # Errors
/// A failed build, copy or run.
pub fn gpu_test(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = build_bundle(&o.dest)?;
    run_or_explain(&bin, "test", o.run)
}

/// `cargo xtask gpu-bench [--dest DIR] [--run]`: builds the bundle; with `--run`, runs the
/// benchmarks here (pool vs create/destroy, receive_cuda_stream vs bare event record + wait,
/// condition vs bare host function; device hand-over 1 MiB-8 GiB against legacy IPC and a host
/// round trip, copies from registered shared memory against pinned and pageable memory, the
/// interprocess event wait; then `fastio-gpu-handoff copy-bench`: copies between a Fast I/O
/// allocation and device memory). Results go to docs/cuda-streams.md and docs/benchmarks.md by
/// hand.
///
/// # Errors
/// A failed build, copy or run.
pub fn gpu_bench(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let bin = build_bundle(&o.dest)?;
    run_or_explain(&bin, "bench", o.run)?;
    // Copies between a real Fast I/O allocation and device memory.
    let handoff = o.dest.join(HANDOFF);
    if o.run {
        let status = Command::new(&handoff)
            .arg("copy-bench")
            .status()
            .with_context(|| format!("running {}", handoff.display()))?;
        if !status.success() {
            bail!("{HANDOFF} copy-bench failed ({status})");
        }
    } else {
        println!("and: ./bundle/{HANDOFF} copy-bench");
    }
    Ok(())
}
