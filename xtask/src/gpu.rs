//! `cargo xtask gpu-test` and `cargo xtask gpu-bench`: build the stripped GPU bundle of the
//! `cuda-streams` crate, and run it when this machine has a GPU.
//!
//! The bundle holds three release programs, statically free of CUDA (the driver is loaded at
//! run time), so they run on a GPU machine without a Rust toolchain:
//! `./bundle/cuda-streams-acceptance test|bench|all [--out DIR]`, `./bundle/fastio-gpu-handoff
//! [device|device-kill|copy|peer|copy-bench]` (hand-offs through the Fast I/O context;
//! `--run` of `gpu-bench` also runs its `copy-bench`) and `./bundle/fastio-gpu-c` (the C
//! API's host <-> device copies, `crates/fastio-ffi/tests/c/gpu_copies.c` linked statically
//! with libfastio.a); the GPU examples (`examples/gpu-pipeline/`) and the Python GPU tests
//! (`crates/fastio-py/tests/`, at the same paths); and `./bundle/gpu-checks [LOGDIR]`, which
//! runs every GPU check of the project and prints one table: the acceptance scenarios, each
//! hand-off mode, the C copies, and, where the `fastio` Python module (the wheel of
//! `cargo xtask dist`), PyTorch and CuPy are installed, the examples under `fastio run` and
//! the Python GPU tests under pytest (skipped, and said so, where they are not).
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
        "bundle: {} (run it alone, and with `device`, `device-kill`, `copy`, `peer`: PASS or FAIL)",
        dest.join(HANDOFF).display()
    );
    build_c_copies(&root, &target_dir, dest)?;
    copy_tree(
        &root.join("examples/gpu-pipeline"),
        &dest.join("examples/gpu-pipeline"),
    )?;
    copy_tree(
        &root.join("crates/fastio-py/tests"),
        &dest.join("crates/fastio-py/tests"),
    )?;
    let checks = dest.join(CHECKS);
    std::fs::write(&checks, CHECKS_SCRIPT).context("writing gpu-checks")?;
    std::fs::set_permissions(&checks, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .context("making gpu-checks executable")?;
    println!("bundle: {} (every GPU check, one table)", checks.display());
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "bundle: {} ({:.1} MiB, release profile: stripped)",
        out.display(),
        size as f64 / 1048576.0
    );
    Ok(out)
}

/// The C program of the bundle.
const C_COPIES: &str = "fastio-gpu-c";
/// The script of the bundle that runs every GPU check.
const CHECKS: &str = "gpu-checks";

/// `gpu_copies.c` compiled against the committed header and linked statically with the
/// release libfastio.a, so it needs nothing but libc and the CUDA driver there.
fn build_c_copies(root: &Path, target_dir: &Path, dest: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "fastio-ffi", "--lib"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of fastio-ffi failed ({status})");
    }
    let ffi = root.join("crates/fastio-ffi");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c11",
            "-O2",
            "-s",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .arg("-D_DEFAULT_SOURCE")
        .arg("-I")
        .arg(ffi.join("include"))
        .arg("-I")
        .arg(ffi.join("tests/c"))
        .arg(ffi.join("tests/c/gpu_copies.c"))
        .arg(target_dir.join("release/libfastio.a"))
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
            "-o",
        ])
        .arg(dest.join(C_COPIES))
        .status()
        .context("running the C compiler")?;
    if !status.success() {
        bail!("compiling {C_COPIES} failed ({status})");
    }
    println!("bundle: {}", dest.join(C_COPIES).display());
    Ok(())
}

/// Copies the files of `from` (not its subfolders, nor caches) into `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().context("a file without a name")?;
            std::fs::copy(&path, to.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// `gpu-checks`: every GPU check, in the bundle's folder, with a log each and one table.
const CHECKS_SCRIPT: &str = r#"#!/usr/bin/env bash
# Every GPU check of fastio (written by `cargo xtask gpu-test`): ./gpu-checks [LOGDIR]
# Exit 0 when nothing failed. A check that finds no GPU (or no second GPU) is SKIP.
# The Python checks need the fastio module (its wheel), PyTorch and CuPy.
cd "$(dirname "$0")" || exit 1
logs=${1:-gpu-check-logs}
mkdir -p "$logs"
failed=0
rows=""
check() {
    local name=$1
    shift
    local started=$SECONDS
    timeout 600 "$@" >"$logs/$name.log" 2>&1
    local rc=$? result
    case $rc in
        0) result=PASS ;;
        2) result=SKIP ;;
        *) result=FAIL; failed=1 ;;
    esac
    local said table
    # A table of scenarios (printed as they run, and again in the report): each row once.
    table=$(grep -E '^\| [0-9]+ \|' "$logs/$name.log" | sort -u -t'|' -k2,2n)
    if [ -n "$table" ]; then
        said="$(grep -c '| PASS |' <<<"$table") PASS, $(grep -c '| SKIP |' <<<"$table") SKIP, $(grep -c '| FAIL |' <<<"$table") FAIL of $(wc -l <<<"$table") scenarios"
    else
        said=$(grep -E '^(PASS|FAIL|NO |job |gpu copies ok|[0-9]+ (passed|failed))|no CUDA|: OK$' "$logs/$name.log" | tail -1 | cut -c1-150)
    fi
    rows+="| $name | $result | $((SECONDS - started)) s | ${said//|//} |"$'
'
    echo "$name: $result ($rc)"
}
check acceptance ./cuda-streams-acceptance test --out "$logs"
check event-handoff ./fastio-gpu-handoff
check device-handoff ./fastio-gpu-handoff device
check device-kill ./fastio-gpu-handoff device-kill
check copy ./fastio-gpu-handoff copy
check peer ./fastio-gpu-handoff peer
check c-copies ./fastio-gpu-c
if python3 -c 'import fastio, torch, cupy' 2>/dev/null; then
    check py-device-memory python3 examples/gpu-pipeline/device_memory.py
    check pipeline fastio run --output "$logs/runs" examples/gpu-pipeline/pipeline.yaml
    check dynamic-pipeline fastio run --output "$logs/runs" examples/gpu-pipeline/dynamic.yaml
    # The tests find the command where a build would put it.
    mkdir -p target/release && ln -sf "$(command -v fastio)" target/release/fastio
    check pytest-gpu python3 -m pytest -q -p no:cacheprovider crates/fastio-py/tests/test_gpu.py crates/fastio-py/tests/test_copies.py crates/fastio-py/tests/test_dlpack.py
else
    rows+="| python (examples, pytest) | SKIP | - | the fastio module, torch or cupy is not importable |"$'
'
fi
printf '
| check | result | time | last word |
|---|---|---|---|
%s' "$rows"
exit $failed
"#;

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

/// `cargo xtask gpu-test [--dest DIR] [--run]`: builds the bundle; with `--run`, runs
/// `gpu-checks` here: every GPU check (the acceptance scenarios, each hand-off mode of
/// `fastio-gpu-handoff`, the C copies, and the Python examples and GPU tests where the
/// module is installed), with one table at the end.
///
/// # Errors
/// A failed build, copy or run.
pub fn gpu_test(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    build_bundle(&o.dest)?;
    let checks = o.dest.join(CHECKS);
    if o.run {
        let status = Command::new(&checks)
            .status()
            .with_context(|| format!("running {}", checks.display()))?;
        if !status.success() {
            bail!("{CHECKS} found a failure ({status})");
        }
    } else {
        println!("run it on the GPU machine: ./bundle/{CHECKS} \"$OUT\"");
    }
    Ok(())
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
