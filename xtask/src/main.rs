//! Project automation, reached as `cargo xtask <command>`:
//!
//! - `test`: the whole test run (what the README and CI run): formatting, clippy with
//!   warnings as errors, the API docs (rustdoc warnings as errors: broken links), every
//!   test of the workspace, doctests, then the Python module
//!   built into `.venv` and its pytest suite;
//! - `dist`: the Python wheel (the `fastio` module and the `fastio` command), tagged
//!   manylinux for the glibc it needs, into `dist/`;
//! - `demo`: runs the demo pipeline (examples/demo/pipeline.yaml) with `fastio run`;
//! - `bench`: the handover benchmarks (`bench-handover`: floor, steady and cold handover
//!   1 MiB..1 GiB against files, Python in place, the I/O-bound chain pipeline, with the
//!   plot docs/handover.svg), the criterion benchmarks, the pipeline benchmark and the
//!   Python benchmark;
//!   writes their tables into docs/benchmarks.md (`bench-pipeline`: only the demo
//!   pipeline, shared memory vs files; `bench-python`: only fastio's Python module against
//!   multiprocessing.shared_memory and np.save/np.load);
//! - `gpu-test` / `gpu-bench [--dest DIR] [--run]`: build the stripped GPU bundle
//!   (`cuda-streams-acceptance` and `fastio-gpu-handoff`) for the GPU machine;
//! - `codegen [--check]`: the C header of fastio-ffi, generated with cbindgen;
//! - `clib`: libfastio.so / libfastio.a and the drop-in name libnvclara.so;
//! - `fuzz <target> [--count N]`: a long property-based fuzz run (`protocol`);
//! - `chaos [--rounds N] [--seed S] [--debug]`: the fault suite: random kill -9 of
//!   operators, drivers, clients and servers, with leak checks (`test` runs 24 rounds).
//! - `image [--operator] [--demo]`: the container images (`fastio`, the operator base, the
//!   demo's operators), built with podman from `packaging/` (docs/kubernetes.md);
//! - `k8s-play [--remove-images]`: the demo rendered as a Pod and as an Indexed Job of three
//!   studies, run under `podman kube play` (as root), each checked against a local run.

mod bench;
mod capi;
mod chaos;
mod fuzz;
mod gpu;
mod handover_bench;
mod image;
mod k8s_play;
mod pipeline_bench;
mod python;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("dist") => python::dist().map(drop),
        Some("demo") => demo(),
        Some("bench") => {
            handover_bench::bench(&[])?;
            bench::bench(&args[1..])?;
            pipeline_bench::bench_pipeline()?;
            python::bench(&[])
        }
        Some("bench-handover") => handover_bench::bench(&args[1..]),
        Some("bench-pipeline") => pipeline_bench::bench_pipeline(),
        Some("bench-python") => python::bench(&args[1..]),
        Some("gpu-test") => gpu::gpu_test(&args[1..]),
        Some("gpu-bench") => gpu::gpu_bench(&args[1..]),
        Some("codegen") => capi::codegen(&root, &args[1..]),
        Some("chaos") => chaos::chaos(&args[1..]),
        Some("clib") => capi::clib(&root).map(drop),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("image") => image::image(&root, &args[1..]),
        Some("k8s-play") => k8s_play::k8s_play(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|dist|demo|bench|bench-handover|bench-pipeline|bench-python|gpu-test|gpu-bench|codegen|clib|fuzz|chaos|image|k8s-play>"
            );
            bail!("unknown or missing command")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Runs a command, echoing it, and fails if it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_with_env(program, args, &[])
}

/// [`run`] with extra environment variables.
fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    eprintln!("\n$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn test() -> anyhow::Result<()> {
    // The jobs of the tests lease and start a warm-reserve keeper of their own, never the
    // user's, and it is stopped when the run ends, however it ends.
    let keeper = format!("xtask-test-{}", std::process::id());
    // SAFETY: set before any thread is started; every command run from here inherits it.
    unsafe { std::env::set_var("FASTIO_WARM_NAME", &keeper) };
    let _stop = StopKeeper;
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // Broken intra-doc links fail the run too (about 15 s once the workspace is built).
    run_with_env(
        "cargo",
        &["doc", "--no-deps", "--workspace", "--quiet"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    if has_nextest() {
        run(
            "cargo",
            &["nextest", "run", "--workspace", "--no-fail-fast"],
        )?;
        run("cargo", &["test", "--workspace", "--doc"])?;
    } else {
        run("cargo", &["test", "--workspace", "--no-fail-fast"])?;
    }
    python::test()?;
    // The short fault suite: every kind of kill -9, with the leak checks.
    chaos::chaos(&["--rounds".into(), "24".into(), "--debug".into()])?;
    eprintln!("\nall checks and tests passed");
    Ok(())
}

/// Stops the warm-reserve keeper named by `FASTIO_WARM_NAME`, if one runs, when dropped.
struct StopKeeper;

impl Drop for StopKeeper {
    fn drop(&mut self) {
        let _ = Command::new("target/debug/fastio")
            .args(["keep-warm", "--stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn demo() -> anyhow::Result<()> {
    run(
        "cargo",
        &["build", "--release", "--quiet", "-p", "fastio", "--bins"],
    )?;
    eprintln!(
        "\nRunning examples/demo/pipeline.yaml: four operator processes pass a 128 MiB CT-like \
         volume, its mask and a summary through shared memory; the last writes a report.\n"
    );
    let status = Command::new("target/release/fastio")
        .args(["run", "examples/demo/pipeline.yaml"])
        .status()
        .context("cannot start target/release/fastio")?;
    if !status.success() {
        bail!("the demo pipeline failed: {status}");
    }
    let report = Path::new("fastio-output/demo/latest/write-report/report/report.txt");
    println!(
        "\n{}:\n{}",
        report.display(),
        std::fs::read_to_string(report)?
    );
    capi::demo()
}
