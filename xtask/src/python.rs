//! The Python parts of `cargo xtask test`, `dist` and `bench`: build the `fastio` wheel
//! (crates/fastio-py: the module and the `fastio` command) into `dist/`, install it into a
//! project-local virtual environment, `.venv`, then run its pytest suite or the Python
//! benchmark (benches/python/bench_fastio.py).
//!
//! On a fresh checkout `.venv` does not exist: it is created with `python3 -m venv` and
//! given maturin, numpy, pytest and kubernetes-validate from PyPI. Later runs reuse it (pip then only checks
//! that the requirements are met).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::run_with_env;

const VENV: &str = ".venv";
/// Where `cargo xtask dist` puts the wheel (the pytest suite installs it from there).
pub const DIST: &str = "dist";
/// Programs the wheel carries inside the package (gitignored; filled only during a build).
const PROGRAMS: &str = "crates/fastio-py/python/fastio/_programs";
const REQUIREMENTS: &[&str] = &[
    "maturin>=1.16,<2",
    "numpy>=1.24",
    "pytest>=8",
    // Kubernetes' schemas, offline: the tests validate the manifests `fastio k8s render` writes.
    "kubernetes-validate>=1.30",
];

/// The virtual environment's Python, and the environment to run it in.
struct Venv {
    python: String,
    env: Vec<(&'static str, String)>,
}

impl Venv {
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_with_env(&self.python, args, &env)
    }
}

/// Creates `.venv` if missing and installs the build and test requirements.
fn venv() -> anyhow::Result<Venv> {
    if !Path::new(VENV).join("bin/python").exists() {
        crate::run("python3", &["-m", "venv", VENV])?;
    }
    let venv = Path::new(VENV).canonicalize().context("locating .venv")?;
    let bin = venv.join("bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let venv = Venv {
        python: bin
            .join("python")
            .to_str()
            .context("non-UTF-8 path to .venv")?
            .to_owned(),
        env: vec![("VIRTUAL_ENV", venv.display().to_string()), ("PATH", path)],
    };
    let mut pip = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    pip.extend_from_slice(REQUIREMENTS);
    venv.run(&pip)?;
    Ok(venv)
}

/// Builds the wheel into `dist/` and returns its path.
///
/// maturin checks which glibc symbol versions the extension needs and tags the wheel
/// `manylinux_2_N` accordingly (`--compatibility pypi` refuses a wheel that links
/// anything outside the manylinux policy), so pip on any Linux with that glibc or newer
/// installs it, and nothing of Rust is needed there. Earlier fastio wheels in `dist/` are
/// removed first, so that it holds exactly this build's.
///
/// The wheel also carries the demo's operator program, `fastio-demo-op`, in
/// `fastio/_programs/` (not on PATH: the console script tells `fastio run` to look there),
/// so `fastio run examples/demo/pipeline.yaml` works from the wheel alone. It is copied in
/// only for this build and removed after, so a source install never ships a stale copy.
pub fn dist() -> anyhow::Result<PathBuf> {
    build_wheel(&venv()?)
}

fn build_wheel(venv: &Venv) -> anyhow::Result<PathBuf> {
    let dist = Path::new(DIST);
    if dist.exists() {
        for entry in std::fs::read_dir(dist)? {
            let path = entry?.path();
            if is_fastio_wheel(&path) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "fastio",
            "--bin",
            "fastio-demo-op",
        ],
    )?;
    let programs = Path::new(PROGRAMS);
    std::fs::create_dir_all(programs)?;
    std::fs::copy(
        "target/release/fastio-demo-op",
        programs.join("fastio-demo-op"),
    )
    .context("copying fastio-demo-op into the wheel's programs")?;
    let built = venv.run(&[
        "-m",
        "maturin",
        "build",
        "--release",
        "--compatibility",
        "pypi",
        "--manifest-path",
        "crates/fastio-py/Cargo.toml",
        "--out",
        DIST,
    ]);
    std::fs::remove_dir_all(programs).context("removing the wheel's programs folder")?;
    built?;
    let mut wheels = Vec::new();
    for entry in std::fs::read_dir(dist)? {
        let path = entry?.path();
        if is_fastio_wheel(&path) {
            wheels.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => {
            eprintln!("\nbuilt {}", wheel.display());
            Ok(wheel)
        }
        Err(wheels) => bail!("expected one fastio wheel in {DIST}/, found {wheels:?}"),
    }
}

fn is_fastio_wheel(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("fastio-") && n.ends_with(".whl"))
}

/// Builds the wheel into `dist/` and installs it (with the requirements) into `.venv`.
fn setup() -> anyhow::Result<Venv> {
    let venv = venv()?;
    let wheel = build_wheel(&venv)?;
    let wheel = wheel.to_str().context("non-UTF-8 path to the wheel")?;
    venv.run(&[
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--force-reinstall",
        "--no-deps",
        wheel,
    ])?;
    Ok(venv)
}

/// Builds the module into `.venv` and runs pytest on crates/fastio-py/tests.
pub fn test() -> anyhow::Result<()> {
    setup()?.run(&["-m", "pytest", "-q", "crates/fastio-py/tests"])
}

/// Builds the module into `.venv` and runs the Python benchmark, which writes its table
/// into docs/benchmarks.md (between markers of its own).
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let venv = setup()?;
    let mut argv = vec![
        "benches/python/bench_fastio.py",
        "--doc",
        "docs/benchmarks.md",
    ];
    argv.extend(args.iter().map(String::as_str));
    venv.run(&argv)
}

/// Builds the module into `.venv` and runs the in-place handover benchmark
/// (benches/python/bench_inplace.py), which writes target/fastio-bench/python.json.
pub fn bench_inplace(args: &[&str]) -> anyhow::Result<()> {
    let venv = setup()?;
    let mut argv = vec!["benches/python/bench_inplace.py"];
    argv.extend_from_slice(args);
    venv.run(&argv)
}
