//! The Python part of `cargo xtask test`: builds the `fastio` module (crates/fastio-py)
//! into a project-local virtual environment, `.venv`, and runs its pytest suite.
//!
//! On a fresh checkout `.venv` does not exist: it is created with `python3 -m venv` and
//! given maturin, numpy and pytest from PyPI. Later runs reuse it (pip then only checks
//! that the requirements are met).

use std::path::Path;

use anyhow::Context as _;

use crate::run_with_env;

const VENV: &str = ".venv";
const REQUIREMENTS: &[&str] = &["maturin>=1.16,<2", "numpy>=1.24", "pytest>=8"];

/// Creates `.venv` if missing, installs the build and test requirements, builds and
/// installs the extension (`maturin develop --release`), and runs pytest on
/// crates/fastio-py/tests.
pub fn test() -> anyhow::Result<()> {
    let venv = Path::new(VENV)
        .canonicalize()
        .or_else(|_| -> anyhow::Result<_> {
            crate::run("python3", &["-m", "venv", VENV])?;
            Path::new(VENV).canonicalize().context("locating .venv")
        })?;
    let bin = venv.join("bin");
    let python = bin.join("python");
    let python = python.to_str().context("non-UTF-8 path to .venv")?;
    let venv_str = venv.to_str().context("non-UTF-8 path to .venv")?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("VIRTUAL_ENV", venv_str), ("PATH", path.as_str())];
    let mut pip = vec![
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    pip.extend_from_slice(REQUIREMENTS);
    run_with_env(python, &pip, &env)?;
    run_with_env(
        python,
        &[
            "-m",
            "maturin",
            "develop",
            "--release",
            "--manifest-path",
            "crates/fastio-py/Cargo.toml",
        ],
        &env,
    )?;
    run_with_env(
        python,
        &["-m", "pytest", "-q", "crates/fastio-py/tests"],
        &env,
    )
}
