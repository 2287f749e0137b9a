//! Project automation, reached as `cargo xtask <command>`:
//!
//! - `test`: the whole test run (what the README and CI run): formatting, clippy with
//!   warnings as errors, every test of the workspace, doctests;
//! - `demo`: the demo: two processes share a volume through a `fastio serve` context;
//! - `bench`: the criterion benchmarks; writes the table into docs/benchmarks.md;
//! - `gpu-test` / `gpu-bench`: build the stripped cuda-streams bundle for the GPU machine.
//! - `codegen [--check]`: the C header of fastio-ffi, generated with cbindgen;
//! - `clib`: libfastio.so / libfastio.a and the drop-in name libnvclara.so.

mod bench;
mod capi;
mod gpu;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("bench") => bench::bench(&args[1..]),
        Some("gpu-test") => gpu::gpu_test(&args[1..]),
        Some("gpu-bench") => gpu::gpu_bench(&args[1..]),
        Some("codegen") => capi::codegen(&root, &args[1..]),
        Some("clib") => capi::clib(&root).map(drop),
        _ => {
            eprintln!("usage: cargo xtask <test|demo|bench|gpu-test|gpu-bench|codegen|clib>");
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
    eprintln!("\n$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
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
    if has_nextest() {
        run(
            "cargo",
            &["nextest", "run", "--workspace", "--no-fail-fast"],
        )?;
        run("cargo", &["test", "--workspace", "--doc"])?;
    } else {
        run("cargo", &["test", "--workspace", "--no-fail-fast"])?;
    }
    eprintln!("\nall checks and tests passed");
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    run(
        "cargo",
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "fastio",
            "--bins",
            "--examples",
        ],
    )?;
    // The C operators of the demo pipeline, with libfastio.so as libnvclara.so.
    capi::clib(&workspace_root())?;
    let bin = Path::new("target/release");
    eprintln!("\nStarting `fastio serve`, then two processes that share a volume through it.\n");
    let mut server = Command::new(bin.join("fastio"))
        .args(["serve", "--until-stdin-closes"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting fastio serve")?;
    let mut first = String::new();
    BufReader::new(server.stdout.take().context("no stdout")?).read_line(&mut first)?;
    let address = first
        .trim()
        .strip_prefix("FASTIO_CONTEXT=")
        .with_context(|| format!("unexpected first line from fastio serve: {first:?}"))?
        .to_owned();
    let result = ["produce", "consume"].iter().try_for_each(|role| {
        let status = Command::new(bin.join("examples/share"))
            .arg(role)
            .env("FASTIO_CONTEXT", &address)
            .status()?;
        if !status.success() {
            bail!("share {role} failed with {status}");
        }
        Ok(())
    });
    drop(server.stdin.take());
    server.wait()?;
    result?;
    eprintln!("\nThe server has exited; its memory went with it, and it left no file behind.");
    eprintln!("\nNow the demo pipeline, whose last operator is written in C:\n");
    run(
        &bin.join("fastio").to_string_lossy(),
        &["run", "examples/demo/pipeline.yaml"],
    )?;
    Ok(())
}
