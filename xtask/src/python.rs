//! The Python parts of `cargo xtask test` and `cargo xtask bench`: build the `fastio`
//! module (crates/fastio-py) into a project-local virtual environment, `.venv`, then run
//! its pytest suite or the Python benchmark (benches/python/bench_fastio.py).
//!
//! On a fresh checkout `.venv` does not exist: it is created with `python3 -m venv` and
//! given maturin, numpy and pytest from PyPI. Later runs reuse it (pip then only checks
//! that the requirements are met).

use std::path::Path;

use anyhow::Context as _;

use crate::run_with_env;

const VENV: &str = ".venv";
const REQUIREMENTS: &[&str] = &["maturin>=1.16,<2", "numpy>=1.24", "pytest>=8"];

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

/// Creates `.venv` if missing, installs the build and test requirements, and builds and
/// installs the extension (`maturin develop --release`).
fn setup() -> anyhow::Result<Venv> {
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
    venv.run(&[
        "-m",
        "maturin",
        "develop",
        "--release",
        "--manifest-path",
        "crates/fastio-py/Cargo.toml",
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
